//! Fleet simulator and benchmarks for Outpost.
//!
//! Simulated devices run the agent's own code (`outpost-edge-agent`) between
//! the broker and the containers: its MQTT link (options, backoff, manual
//! acks), link task and inbox (trust gate, commit before ack), outbox and
//! status sender, with real ed25519 keys. Simulated are the reconciler with
//! the container runtime ([`runtime::SimRuntime`]) and the disk (each
//! device's redb is in memory); see `sim/src/device.rs`. They talk to a real
//! hub (`outpost-hub serve`, run as a child process) through its HTTP API and
//! its embedded MQTT broker (or Mosquitto).
//!
//! Commands (`cargo run --release -p outpost-sim -- <command>`) are documented in
//! `docs/benchmarks.md`.
//!
//! # Layout
//! - [`fleet`]: the convergence benchmark (register, connect, deploy, measure).
//! - [`device`]: one simulated device (the agent's link driver, link task,
//!   inbox and sender, and a simulated runtime) and the shared progress
//!   [`device::Board`].
//! - [`rollout`]: the rollout scenario (a share of devices failing new
//!   releases; the hub's rollout followed until it pauses or completes).
//! - [`runtime`]: the simulated container runtime and its release verdicts.
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
pub mod rollout;
pub mod runtime;
pub mod stats;
