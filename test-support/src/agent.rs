//! `outpost-agent` as the tests run it: `init` (provisioning against a hub's
//! root key and key set) and `run` under a [`ProcessGuard`]. The agent listens
//! on nothing, so there is no address to report; its apps' ports are the
//! tests' business (leases, see [`crate::net`]).

use crate::process::{run, ProcessGuard};
use anyhow::{Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Arguments of `outpost-agent init`.
#[derive(Debug, Clone)]
pub struct AgentInit {
    pub bin: PathBuf,
    pub config: PathBuf,
    pub device_id: String,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub broker: String,
    /// The hub's `root.pub` and `keyset.bin`.
    pub root_key: PathBuf,
    pub keyset: PathBuf,
    pub data_dir: PathBuf,
    pub run_dir: Option<PathBuf>,
    /// CA file for an `mqtts://` broker.
    pub ca_file: Option<PathBuf>,
    /// More arguments (registry settings).
    pub extra: Vec<OsString>,
}

impl AgentInit {
    /// Run `init`; returns the device's public key (the line it prints).
    pub fn run(&self) -> Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&self.config)
            .args([
                "init",
                "--device-id",
                &self.device_id,
                "--broker",
                &self.broker,
            ])
            .arg("--root-key")
            .arg(&self.root_key)
            .arg("--keyset")
            .arg(&self.keyset)
            .arg("--data-dir")
            .arg(&self.data_dir);
        if let Some(dir) = &self.run_dir {
            cmd.arg("--run-dir").arg(dir);
        }
        if let Some(ca) = &self.ca_file {
            cmd.arg("--ca-file").arg(ca);
        }
        cmd.args(&self.extra);
        let out = run(&mut cmd)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        Ok(stdout
            .lines()
            .find_map(|l| l.strip_prefix("public-key: "))
            .with_context(|| format!("outpost-agent init printed no public key: {stdout}"))?
            .trim()
            .to_string())
    }
}

/// Start `outpost-agent --config CONFIG run` with `RUST_LOG=rust_log`, its
/// output in `log`. `wrapper` is a command line the agent is appended to (e.g.
/// `unshare --net …`; it must exec the agent so the guard's pid is the agent's).
pub fn run_agent(
    bin: &Path,
    config: &Path,
    rust_log: &str,
    wrapper: &[&str],
    log: &Path,
) -> Result<ProcessGuard> {
    let mut cmd = match wrapper {
        [program, args @ ..] => {
            let mut c = Command::new(program);
            c.args(args).arg(bin);
            c
        }
        [] => Command::new(bin),
    };
    cmd.env("RUST_LOG", rust_log)
        .arg("--config")
        .arg(config)
        .arg("run");
    ProcessGuard::spawn("outpost-agent", &mut cmd, log)
}
