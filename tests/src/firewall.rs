//! Cutting a TCP port with the kernel's firewall, for as long as a guard lives:
//! a registry that becomes unreachable as a real network makes it (every
//! connection refused by the kernel, not by our code).

use anyhow::{bail, Context, Result};
use std::process::Command;

/// An iptables rule rejecting new TCP connections to `127.0.0.1:port`;
/// removed on drop.
#[derive(Debug)]
pub struct PortCut {
    port: u16,
}

fn rule(op: &str, port: u16) -> Result<()> {
    let out = Command::new("iptables")
        .args([
            "-w",
            op,
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "127.0.0.1",
            "--dport",
        ])
        .arg(port.to_string())
        .args(["-j", "REJECT", "--reject-with", "tcp-reset"])
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {op} for port {port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl PortCut {
    pub fn new(port: u16) -> Result<PortCut> {
        rule("-I", port)?;
        Ok(PortCut { port })
    }
}

impl Drop for PortCut {
    fn drop(&mut self) {
        if let Err(e) = rule("-D", self.port) {
            eprintln!("removing the firewall rule: {e}");
        }
    }
}
