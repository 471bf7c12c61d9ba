//! A real `docker-registry` (Debian package `docker-registry`, the CNCF
//! distribution registry 2.x) with storage in a temp dir: open over HTTP, or
//! with TLS, htpasswd users or bearer-token auth. It is given `127.0.0.1:0` and
//! the port it bound is read from `/proc` ([`crate::net::listening_addrs`]);
//! it accepts port 0 like any Go `net.Listen`.
//!
//! [`skopeo_copy`] pushes an OCI layout into it.

use crate::net::listening_addrs;
use crate::process::{run, tail, ProcessGuard};
use crate::{eventually, STARTUP};
use anyhow::{anyhow, Context, Result};
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bearer-token auth: where clients get tokens and whose signatures count.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// The token endpoint, e.g. `http://127.0.0.1:PORT/token`.
    pub realm: String,
    pub service: String,
    pub issuer: String,
    /// PEM certificate(s) of the token signer.
    pub root_cert_bundle: PathBuf,
}

/// What the registry requires.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Serve HTTPS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Require HTTP basic auth for these `(user, password)`s.
    pub users: Vec<(String, String)>,
    /// Require bearer tokens (instead of `users`).
    pub token: Option<TokenAuth>,
}

/// A running registry; stopped and its storage removed on drop.
#[derive(Debug)]
pub struct Registry {
    /// Where it listens (127.0.0.1 and the port it bound).
    pub addr: SocketAddr,
    proc: ProcessGuard,
    dir: tempfile::TempDir,
}

impl Registry {
    /// An open registry over HTTP.
    pub fn start() -> Result<Registry> {
        Registry::start_with(&RegistryConfig::default())
    }

    pub fn start_with(config: &RegistryConfig) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            d.join("data").display()
        );
        if let Some((cert, key)) = &config.tls {
            let _ = write!(
                yaml,
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        if !config.users.is_empty() {
            let mut htpasswd = String::new();
            for (user, password) in &config.users {
                // Cost 4: the minimum; the registry checks it on every request.
                let hash = bcrypt::hash(password, 4)?;
                let _ = writeln!(htpasswd, "{user}:{hash}");
            }
            let path = d.join("htpasswd");
            std::fs::write(&path, htpasswd)?;
            let _ = write!(
                yaml,
                "auth:\n  htpasswd:\n    realm: outpost-test\n    path: {}\n",
                path.display()
            );
        }
        if let Some(t) = &config.token {
            let _ = write!(
                yaml,
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm,
                t.service,
                t.issuer,
                t.root_cert_bundle.display()
            );
        }
        let conf = d.join("config.yml");
        std::fs::write(&conf, yaml)?;
        let mut proc = ProcessGuard::spawn(
            "docker-registry",
            Command::new("docker-registry").arg("serve").arg(&conf),
            &d.join("registry.log"),
        )
        .context("docker-registry must be installed (Debian package docker-registry)")?;
        let pid = proc.pid();
        let addr = eventually(STARTUP, "docker-registry to listen", || {
            if let Some(status) = proc.try_exit() {
                return Ok(Err(anyhow!(
                    "docker-registry exited ({status}); log:\n{}",
                    tail(&proc.log_text(), 20)
                )));
            }
            match listening_addrs(pid) {
                Ok(addrs) => addrs
                    .first()
                    .copied()
                    .map(Ok)
                    .ok_or_else(|| "no socket yet".to_string()),
                Err(e) => Err(format!("{e:#}")),
            }
        })?;
        Ok(Registry { addr, proc, dir })
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// The registry's own temp dir (config, storage, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// How [`skopeo_copy`] reaches the destination.
#[derive(Debug, Clone, Default)]
pub struct CopyTo {
    /// `user:password`.
    pub creds: Option<String>,
    /// A directory of `*.crt` CA files to verify the registry with; without
    /// it, TLS is not verified (and plain HTTP is allowed).
    pub cert_dir: Option<PathBuf>,
}

/// `skopeo copy --all --preserve-digests` of `oci:LAYOUT:TAG` to
/// `docker://DEST` (`host/repo:tag`).
pub fn skopeo_copy(layout: &Path, tag: &str, dest: &str, to: &CopyTo) -> Result<()> {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "copy",
        "--quiet",
        "--all",
        "--preserve-digests",
        "--insecure-policy",
    ]);
    match &to.cert_dir {
        Some(dir) => cmd.arg("--dest-cert-dir").arg(dir),
        None => cmd.arg("--dest-tls-verify=false"),
    };
    if let Some(creds) = &to.creds {
        cmd.arg("--dest-creds").arg(creds);
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"));
    run(&mut cmd).context("skopeo must be installed (Debian package skopeo)")?;
    Ok(())
}
