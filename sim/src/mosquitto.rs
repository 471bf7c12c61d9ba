//! An external Mosquitto broker for the fleet benchmark (`--broker mosquitto`):
//! the hub's `mqtt.broker` mode. Used to tell apart what the embedded rumqttd
//! costs or breaks from what the hub and the protocol cost.
//!
//! Mosquitto cannot bind port 0 (`listener 0 ADDR` is a Unix socket), so its
//! port is a lease from `outpost-test-support` (below the kernel's ephemeral
//! range, locked against other leases), held as long as the broker runs.

use crate::device::MAX_PACKET;
use outpost_test_support::PortLease;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Why Mosquitto could not be started.
#[derive(Debug, thiserror::Error)]
pub enum MosquittoError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reserve a port for mosquitto: {0:#}")]
    Port(anyhow::Error),
    #[error("cannot run mosquitto (apt-get install mosquitto): {0}")]
    Spawn(std::io::Error),
    #[error("mosquitto did not listen on {addr} within {waited:?}; see {log}")]
    NotListening {
        addr: SocketAddr,
        waited: Duration,
        log: PathBuf,
    },
}

/// A running Mosquitto.
#[derive(Debug)]
pub struct Mosquitto {
    child: tokio::process::Child,
    pub pid: u32,
    pub addr: SocketAddr,
    _port: PortLease,
}

/// The configuration used: no connection limit, no per-client queue limit (the
/// hub may be sent a burst of 10,000 statuses), packet limit as the protocol's.
pub fn config(port: u16, log: &Path) -> String {
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         max_connections -1\n\
         max_queued_messages 0\n\
         max_packet_size {MAX_PACKET}\n\
         set_tcp_nodelay true\n\
         log_dest file {}\n\
         log_type error\n\
         log_type warning\n",
        log.display()
    )
}

impl Mosquitto {
    /// Start Mosquitto on a leased 127.0.0.1 port with its files in `dir`.
    pub async fn start(dir: &Path) -> Result<Mosquitto, MosquittoError> {
        let lease = PortLease::new().map_err(MosquittoError::Port)?;
        let port = lease.port();
        std::fs::create_dir_all(dir).map_err(|source| MosquittoError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        std::fs::write(&conf, config(port, &log)).map_err(|source| MosquittoError::Write {
            path: conf.clone(),
            source,
        })?;
        let child = tokio::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(MosquittoError::Spawn)?;
        let pid = child.id().unwrap_or(0);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let waited = Duration::from_secs(10);
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if started.elapsed() > waited {
                return Err(MosquittoError::NotListening { addr, waited, log });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Mosquitto {
            child,
            pid,
            addr,
            _port: lease,
        })
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
