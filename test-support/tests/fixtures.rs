//! The process fixtures against the real programs: each is found where it
//! actually listens, Mosquitto comes back on its ports after a kill, and a
//! dropped fixture leaves no process behind.

use anyhow::Result;
use outpost_test_support::mosquitto::{Mosquitto, MosquittoConfig};
use outpost_test_support::registry::Registry;
use outpost_test_support::{eventually, listening_addrs};
use std::net::TcpStream;
use std::time::Duration;

fn gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn docker_registry_on_port_0_is_found_and_answers() -> Result<()> {
    let registry = Registry::start()?;
    let pid = registry.pid();
    assert_ne!(registry.addr.port(), 0);
    assert_eq!(listening_addrs(pid)?, vec![registry.addr]);
    TcpStream::connect(registry.addr)?;
    drop(registry);
    eventually(Duration::from_secs(10), "the registry to be gone", || {
        gone(pid)
    });
    Ok(())
}

#[test]
fn mosquitto_comes_back_on_the_same_ports_after_a_kill() -> Result<()> {
    let mut m = Mosquitto::start_with(MosquittoConfig {
        plain: true,
        tls: true,
        ..MosquittoConfig::default()
    })?;
    let (plain, tls) = (m.port(), m.tls_port());
    let first = m.pid().unwrap_or(0);
    TcpStream::connect(("127.0.0.1", plain.unwrap_or(0)))?;
    m.kill();
    assert!(TcpStream::connect(("127.0.0.1", plain.unwrap_or(0))).is_err());
    m.restart()?;
    assert_eq!((m.port(), m.tls_port()), (plain, tls));
    let second = m.pid().unwrap_or(0);
    assert_ne!(first, second);
    TcpStream::connect(("127.0.0.1", tls.unwrap_or(0)))?;
    drop(m);
    eventually(Duration::from_secs(10), "mosquitto to be gone", || {
        gone(second)
    });
    Ok(())
}
