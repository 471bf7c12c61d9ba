//! Mosquitto (Debian package `mosquitto`), without persistence (its default):
//! killed and started again it has lost every retained message, session and
//! queued message, as a real broker restart does.
//!
//! Mosquitto cannot bind port 0: `listener 0 ADDR` means a Unix socket at path
//! ADDR, and `-p 0` is refused. Its listeners therefore use [`PortLease`]s,
//! which also keep their ports across [`Mosquitto::restart`] (clients are
//! configured with them). A lease only collides with a program outside the
//! tests that listens on that very port; Mosquitto then exits with "Address
//! already in use" in its log, and the fixture starts again on fresh leases.

use crate::net::{listening_addrs, PortLease};
use crate::process::{tail, ProcessGuard};
use crate::tls::TestCa;
use crate::{eventually, STARTUP};
use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How often a start is retried when a leased port turns out to be taken.
const BIND_ATTEMPTS: usize = 3;

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct MosquittoConfig {
    /// A plain MQTT listener on 127.0.0.1.
    pub plain: bool,
    /// A TLS listener on 127.0.0.1 with a server certificate (for `127.0.0.1`
    /// and `localhost`) from a CA made for this broker; clients verify
    /// against [`Mosquitto::ca_file`].
    pub tls: bool,
    /// More configuration lines, appended (listener options among them apply
    /// to the last listener).
    pub extra: String,
    /// A whole configuration of one listener instead (e.g. one `outpost-hub
    /// broker-config mosquitto` wrote), with `LEASED_PORT` where its port
    /// goes; the fixture adds `user root` (its files may be in a private
    /// temp dir) and leases the port, reported as [`Mosquitto::tls_port`].
    pub custom: Option<String>,
}

/// The token [`MosquittoConfig::custom`] has in place of the port.
pub const LEASED_PORT: &str = "LEASED_PORT";

/// A running (or killed, see [`Mosquitto::kill`]) Mosquitto.
#[derive(Debug)]
pub struct Mosquitto {
    plain: Option<PortLease>,
    tls: Option<PortLease>,
    config: MosquittoConfig,
    proc: Option<ProcessGuard>,
    starts: u32,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// A plain listener, anonymous access.
    pub fn start() -> Result<Mosquitto> {
        Mosquitto::start_with(MosquittoConfig {
            plain: true,
            ..MosquittoConfig::default()
        })
    }

    pub fn start_with(config: MosquittoConfig) -> Result<Mosquitto> {
        if !config.plain && !config.tls && config.custom.is_none() {
            bail!("a Mosquitto without listeners");
        }
        let dir = tempfile::tempdir()?;
        if config.tls {
            let ca = TestCa::new("outpost test broker CA")?;
            ca.write_cert(&dir.path().join("ca.pem"))?;
            ca.server_cert(&["127.0.0.1", "localhost"])?
                .write(dir.path(), "server")?;
        }
        let mut m = Mosquitto {
            plain: None,
            tls: None,
            config,
            proc: None,
            starts: 0,
            dir,
        };
        m.start_on_fresh_leases()?;
        Ok(m)
    }

    fn start_on_fresh_leases(&mut self) -> Result<()> {
        let mut last = None;
        for _ in 0..BIND_ATTEMPTS {
            self.plain = self.config.plain.then(PortLease::new).transpose()?;
            self.tls = (self.config.tls || self.config.custom.is_some())
                .then(PortLease::new)
                .transpose()?;
            match self.spawn()? {
                Ok(()) => return Ok(()),
                Err(log) => last = Some(log),
            }
        }
        Err(anyhow!(
            "mosquitto found its leased ports taken {BIND_ATTEMPTS} times; last log:\n{}",
            last.unwrap_or_default()
        ))
    }

    /// Start on the current ports. `Ok(Err(log))` when a port was taken.
    fn spawn(&mut self) -> Result<std::result::Result<(), String>> {
        self.starts += 1;
        let d = self.dir.path();
        let conf = d.join("mosquitto.conf");
        std::fs::write(&conf, self.config_text())?;
        let log = d.join(format!("mosquitto-{}.log", self.starts));
        let mut proc = ProcessGuard::spawn(
            "mosquitto",
            Command::new("mosquitto").arg("-c").arg(&conf),
            &log,
        )
        .context("mosquitto must be installed (Debian package mosquitto)")?;
        let pid = proc.pid();
        let want: Vec<SocketAddr> = self.leases().map(PortLease::addr).collect();
        let started = eventually(STARTUP, "mosquitto to listen", || {
            if proc.try_exit().is_some() {
                let text = proc.log_text();
                return Ok(Err(text));
            }
            let have = listening_addrs(pid).map_err(|e| format!("{e:#}"))?;
            if want.iter().all(|a| have.contains(a)) {
                Ok(Ok(()))
            } else {
                Err(format!("listening on {have:?}, want {want:?}"))
            }
        });
        match started {
            Ok(()) => {
                self.proc = Some(proc);
                Ok(Ok(()))
            }
            Err(log) if log.contains("Address already in use") => Ok(Err(log)),
            Err(log) => bail!("mosquitto exited; log:\n{}", tail(&log, 20)),
        }
    }

    fn config_text(&self) -> String {
        let d = self.dir.path().display();
        // Started as root, Mosquitto drops to its own user unless told not to;
        // the files here are in a private temp dir.
        if let (Some(custom), Some(l)) = (&self.config.custom, &self.tls) {
            return format!(
                "user root\n{}",
                custom.replace(LEASED_PORT, &l.port().to_string())
            );
        }
        let mut c = String::from(
            "user root\nper_listener_settings false\nallow_anonymous true\npersistence false\n",
        );
        if let Some(l) = &self.plain {
            let _ = writeln!(c, "listener {} 127.0.0.1", l.port());
        }
        if let Some(l) = &self.tls {
            let _ = writeln!(
                c,
                "listener {} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key",
                l.port()
            );
        }
        // Last: listener options among them apply to the last listener.
        c.push_str(&self.config.extra);
        c
    }

    fn leases(&self) -> impl Iterator<Item = &PortLease> {
        self.plain.iter().chain(self.tls.iter())
    }

    /// SIGKILL: whatever the broker held in memory is gone.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Signal::SIGKILL, Duration::ZERO);
        }
    }

    /// Start again (after [`Mosquitto::kill`], or killing it first) on the same
    /// ports with the same configuration.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()?
            .map_err(|log| anyhow!("mosquitto could not take its ports back; log:\n{log}"))
    }

    /// The plain listener's port.
    pub fn port(&self) -> Option<u16> {
        self.plain.as_ref().map(PortLease::port)
    }

    /// The TLS listener's port.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls.as_ref().map(PortLease::port)
    }

    /// The CA that signed the TLS listener's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(ProcessGuard::pid)
    }

    /// The fixture's temp dir (config, certificates, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log of the current (or last) run.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("mosquitto-{}.log", self.starts)),
        )
        .unwrap_or_default()
    }
}
