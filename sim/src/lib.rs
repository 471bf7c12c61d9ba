//! Fleet simulator and benchmarks for Outpost.
//!
//! Simulated devices are real MQTT clients with real ed25519 keys, the real
//! manifest [`outpost_protocol::Verifier`] and device-signed
//! [`outpost_protocol::StatusReport`]s; only the container runtime is simulated
//! ([`runtime::SimRuntime`]). They talk to a real hub (`outpost-hub serve`, run as
//! a child process) through its HTTP API and its embedded MQTT broker.
//!
//! Commands (`cargo run --release -p outpost-sim -- <command>`) are documented in
//! `docs/benchmarks.md`.
//!
//! # Layout
//! - [`fleet`]: the convergence benchmark (register, connect, deploy, measure).
//! - [`device`]: one simulated device (poller + handler tasks) and the shared
//!   progress [`device::Board`].
//! - [`runtime`]: the simulated container runtime.
//! - [`hub`]: starting a real hub as a child process; provisioning files.
//! - [`mosquitto`]: an external Mosquitto broker, for comparison runs.
//! - [`agent`]: measurements of a real agent process (footprint, flash wear).
//! - [`procstat`]: RSS, CPU time and disk writes from `/proc/PID`.
//! - [`limits`]: raising `RLIMIT_NOFILE`.
//! - [`stats`]: percentiles of latency samples.
//! - [`machine`]: the machine description printed with every result.

pub mod agent;
pub mod device;
pub mod fleet;
pub mod hub;
pub mod limits;
pub mod machine;
pub mod mosquitto;
pub mod procstat;
pub mod runtime;
pub mod stats;
