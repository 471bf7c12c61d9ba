//! Shared fixtures for Outpost's end-to-end tests: the real `outpost-hub` and
//! `outpost-agent` binaries, a real `docker-registry` holding the sample image
//! (open over HTTP, or private: TLS from a test CA plus htpasswd auth), real
//! Mosquitto brokers, a cuttable TCP proxy between agent and broker, and a
//! faithful power cut.
//!
//! Every fixture owns what it starts and tears it down in `Drop`, so a failing
//! test still stops its processes and removes its containers (the agent guard
//! runs `outpost-agent stop-all`). Tests run as root (real containers).
//! Processes, polling, ports and TLS material come from `outpost-test-support`;
//! no fixture picks a "free" port and hopes it stays free.
//!
//! Binaries are built once per test process with `cargo build` (the same target
//! dir as the tests), so `cargo test -p outpost-e2e` is all a developer runs.
//!
//! # Layout
//! - [`bins`]: the binaries under test and the sample image, built once.
//! - [`registry`]: the registry and the `[registry]` config sections that reach it.
//! - [`hub`]: the hub process and the operator's command line.
//! - [`agent`]: the agent process, its status and config, stops and crashes.
//! - [`apps`]: the sample-image apps a scenario deploys and HTTP to them.
//! - [`netns`]: a device booting with its network down.
//! - [`reboot`]: a faithful power cut, done from outside.
//! - [`proxy`]: a cuttable link between agent and broker.
//! - [`broker`]: external Mosquitto brokers (plain, TLS).
//! - [`mqtt`]: a client on the broker, as an attacker or observer.
//! - [`world`]: the usual setup, all of the above wired together.

pub mod agent;
pub mod apps;
pub mod bins;
pub mod broker;
pub mod firewall;
pub mod hub;
pub mod mqtt;
pub mod netns;
pub mod proxy;
pub mod reboot;
pub mod registry;
pub mod world;

pub use agent::Agent;
pub use apps::{http_get, AppDef};
pub use bins::{bins, sample_layout, workspace, Bins};
pub use broker::{Mosquitto, TlsBroker};
pub use hub::Hub;
pub use outpost_test_support::eventually;
pub use outpost_test_support::process::pid_alive;
pub use proxy::Proxy;
pub use registry::{PrivateAccess, Registry};
pub use world::World;

use std::time::Duration;

/// Upper bound for any wait; only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A short unique suffix for device and app names (tests run in parallel and
/// container cgroups are host-global).
pub fn unique(prefix: &str) -> String {
    let n: u32 = rand::random();
    format!("{prefix}-{:06x}", n & 0xff_ffff)
}

/// Unix seconds by this machine's clock (which hub and agents under test
/// share): for wall-time facts such as an expiry in the past.
pub fn wall_secs() -> u64 {
    // The one reading of the wall clock in the e2e harness (see clippy.toml).
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
