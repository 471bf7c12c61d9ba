//! Fixtures shared by every Outpost test crate (`hub/tests`, `oci/tests`,
//! `runtime/tests`, the end-to-end crate in `tests/`, the simulator's tests), so
//! each exists once: a guard that stops a child process and everything it
//! started, one polling helper, addresses without port races, throwaway TLS
//! material, and the processes the tests run: the hub, the agent, a Docker
//! registry and Mosquitto.
//!
//! Ports: a server started here binds port 0 itself and the fixture reads back
//! the address it got (the hub writes a ready file; for programs we do not
//! control the address is read from `/proc`). No fixture picks a "free" port,
//! releases it and hopes the server gets it. Where a port must be known before
//! the server starts, or kept across its restarts (Mosquitto accepts no port 0;
//! an app's port is written into its manifest), a [`net::PortLease`] reserves
//! one outside the kernel's ephemeral range.
//!
//! # Layout
//! - [`eventually`]: poll a condition until it holds, or fail naming what was
//!   awaited and what was last seen.
//! - [`process`]: [`process::ProcessGuard`] (a logged child in its own process
//!   group, killed and reaped on drop) and [`process::run`] (a command that must
//!   succeed).
//! - [`net`]: the addresses a process listens on (from `/proc`) and port leases.
//! - [`tls`]: a throwaway CA with server, client and signing certificates (rcgen).
//! - [`hub`]: `outpost-hub serve` on port 0, found through its ready file.
//! - [`agent`]: `outpost-agent init` and `outpost-agent run`.
//! - [`registry`]: `docker-registry` (open, TLS, htpasswd or token auth) and
//!   `skopeo` pushes.
//! - [`mosquitto`]: Mosquitto on leased ports (plain and TLS listeners),
//!   restartable on the same ports.
//!
//! Test code: failures panic or return `anyhow` errors with the command, file
//! or log that explains them.

pub mod agent;
pub mod eventually;
pub mod hub;
pub mod mosquitto;
pub mod net;
pub mod process;
pub mod registry;
pub mod tls;

pub use eventually::{eventually, eventually_async, Observation};
pub use net::{listening_addrs, PortLease};
pub use process::ProcessGuard;

/// How long a fixture waits for a process it started to be ready: a hang
/// guard for a broken build or host, not a performance bound.
pub const STARTUP: std::time::Duration = std::time::Duration::from_secs(60);
