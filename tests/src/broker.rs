//! External brokers for the scenarios, from `outpost-test-support`: a plain
//! Mosquitto without persistence (killed and started again on the same port
//! it has lost every retained message, session and queued message, as a real
//! restart does) and a Mosquitto with a TLS listener whose CA clients must be
//! given. Both listen on leased ports: Mosquitto cannot bind port 0.

use anyhow::{Context, Result};
use outpost_test_support::mosquitto::{self as fixture, MosquittoConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A plain Mosquitto on a loopback port.
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    inner: fixture::Mosquitto,
}

impl Mosquitto {
    pub fn start() -> Result<Mosquitto> {
        let inner = fixture::Mosquitto::start()?;
        let port = inner.port().context("a plain listener")?;
        Ok(Mosquitto { port, inner })
    }

    /// SIGKILL: whatever the broker held in memory is gone.
    pub fn kill(&mut self) {
        self.inner.kill();
    }

    /// Start (again) on the same port, with the same config.
    pub fn restart(&mut self) -> Result<()> {
        self.inner.restart()
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The fixture's temp dir (a place for a test's own files).
    pub fn dir(&self) -> &Path {
        self.inner.dir()
    }
}

/// Mosquitto with only a TLS listener on a loopback port; its certificate is
/// signed by a throwaway CA ([`TlsBroker::ca`]).
#[derive(Debug)]
pub struct TlsBroker {
    pub port: u16,
    pub ca: PathBuf,
    _inner: fixture::Mosquitto,
}

impl TlsBroker {
    pub fn start() -> Result<TlsBroker> {
        let inner = fixture::Mosquitto::start_with(MosquittoConfig {
            tls: true,
            ..MosquittoConfig::default()
        })?;
        Ok(TlsBroker {
            port: inner.tls_port().context("a TLS listener")?,
            ca: inner.ca_file(),
            _inner: inner,
        })
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }
}
