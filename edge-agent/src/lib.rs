//! Outpost edge agent: verifies signed manifests from the hub, persists them, and
//! keeps the device's containers in the desired state, online or not.
//!
//! # Layout
//! - [`cli`]: the `init`, `run`, `status`, `stop-all`, `images [prune]` and
//!   `logs` commands.
//! - [`logstream`]: logs on demand: the streams the hub asked for, bounded
//!   and rate limited.
//! - [`logview`]: reading an app's log files for `logs [--follow] [--tail N]`.
//! - [`config`]: the TOML config file and derived paths.
//! - [`trust`]: the verifier gate (verify → persist → commit) for manifests,
//!   key sets, root rotations and hub heartbeats.
//! - [`freshness`]: what the device heard from the hub, and when the hub
//!   counts as silent.
//! - [`state`]: the redb file (accepted manifest, trust state, counters, outbox).
//! - [`link`]: MQTT (rumqttc) with own jittered backoff and subscriptions.
//! - [`inbox`]: what the hub sends: manifests and key sets through the trust
//!   gate to a [`inbox::Delivery`] decision, held manifests, watermarks.
//! - [`outbox`]: device-signed events committed to the outbox, read back by
//!   the sender.
//! - [`delivery`]: the status and outbox sender; events leave the outbox only
//!   when the hub's signed watermark covers them.
//! - [`reconcile`]: pure `plan`, per-app books and the liveness decision +
//!   executor + the loop that observes the runtime.
//! - [`clock`]: the one reader of the wall clock, and the monotonic clock every
//!   delay and deadline is measured on.
//! - [`driver`]: the image-provider and container-driver traits (the seams).
//! - [`images`], [`runtime`]: the real adapters over `outpost-oci` and
//!   `outpost-runtime`.
//! - [`health`]: exec/HTTP/TCP probes and per-container readiness verdicts.
//! - [`rejections`]: refusals counted at once, reported without a write per
//!   refusal (a flood costs bounded flash and leaves the outbox alone).
//! - [`retention`]: which images are kept (current and previous release) and
//!   the image disk budget.
//! - [`view`]: the status view as parts with one writer each, and its pure
//!   composition.
//! - [`metrics`]: the optional loopback `/metrics` listener (`metrics_listen`),
//!   a pure rendering of the view and a minimal HTTP responder.
//! - [`report`]: signed status reports from the view, the local status file.
//! - [`agent`]: wires the tasks of `outpost-agent run` together (and runs the
//!   link task, the writer of the link state).

pub mod agent;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod driver;
pub mod freshness;
pub mod health;
pub mod images;
pub mod inbox;
pub mod link;
pub mod locks;
pub mod logstream;
pub mod logview;
pub mod metrics;
pub mod outbox;
pub mod reconcile;
pub mod rejections;
pub mod report;
pub mod retention;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod trust;
pub mod view;
