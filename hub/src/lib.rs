//! Outpost hub: keeps desired state in redb, renders one signed manifest per
//! device, delivers it over MQTT (retained, QoS 1), ingests device-signed status
//! and events, and serves an HTTP API with a CLI on top.
//!
//! # Layout
//! - [`config`]: `hub.toml` and the data-directory layout.
//! - [`signing`]: root key, signing key, key set, API token; sealing manifests.
//! - [`deploy`]: the declarative deployment format and its field-level checks.
//! - [`admission`]: the admission policy (`[[admission]]` in `hub.toml`): which
//!   capabilities, devices, host networking, writable rootfs and root users a
//!   deployment may ask for per scope; a pure `admit(deployment, policy)`.
//! - [`scope`]: label scopes (`site=plant-a`) and the one pure rule for
//!   whether a selector falls inside one.
//! - [`render`]: pure rendering of deployments × devices into per-device apps and
//!   generation decisions.
//! - [`vars`]: configuration variables: their scopes and the one pure
//!   precedence rule (most specific wins); `hub::vars` stores and changes
//!   them, [`render`] applies them to every app it renders.
//! - [`resolve`]: the image-resolution seam (tag → digest).
//! - [`rollout`]: staged rollouts' pure core: the `[rollout]` policy, the wave
//!   scheduler and the rollout's state machine.
//!   `hub::rollouts` wires them in: the step carried out in a store
//!   transaction, device outcomes, status views, the periodic driver,
//!   pause/resume/abort (a part of the hub: it runs inside its transactions).
//! - [`store`]: the redb tables and typed transactions.
//! - [`hub`]: operations (register, label, apply, delete) = validate, render,
//!   sign, persist in one transaction, then hand off to the publisher.
//! - [`broker`]: the embedded rumqttd broker, its login and topic rules, and
//!   for an external Mosquitto the hub's CA and the generated configuration.
//! - [`link`]: rumqttc options and the event-loop driver with its own backoff,
//!   for the hub's two connections (ingest: subscribe + acks; publish: manifests).
//! - [`outbox`]: what the publisher is asked to do, so committers and the
//!   publisher do not depend on each other.
//! - [`publish`]: the single task that publishes (on the publish link).
//! - [`ingest`]: verification and storage of device status and events, and the
//!   single task that subscribes and acks (on the ingest link).
//! - [`api`]: the axum HTTP API, served over TLS (`api::server`), its
//!   human form for the CLI (`api::human`) and the web dashboard
//!   (`api::dashboard`).
//! - [`access`]: token roles and scopes, and the pure authorization decision
//!   `decide(caller, request)` every API handler asks.
//! - [`secrets`]: the at-rest key (`secrets.key`) and encryption of secret
//!   values in the store; `hub::secrets` seals them per device into manifests.
//! - [`tokens`]: API tokens (hashed secrets in the store): create, revoke,
//!   authenticate, the first admin token.
//! - [`tls`]: the API's certificate (self-signed at `init`, or the
//!   operator's), the server configuration and the client's pinned trust.
//! - [`serve`]: wiring it all together; [`serve::start`] runs a hub in-process
//!   (used by tests and the fleet simulator).
//! - [`cli`] and [`client`]: the command line and its HTTP client (TLS,
//!   the data directory's certificate pinned); [`cli_tokens`]: `token …`;
//!   [`cli_config`]: `config …`; [`cli_broker`]: its broker-credential commands (`broker-config`,
//!   device certificates).
//! - [`metrics`]: `/metrics` in the Prometheus text format, a pure
//!   rendering of facts other modules own.
//! - [`text`]: tables and relative times for people (no fleet knowledge).
//! - [`fleet`]: a device's state in one word and its app counts.
//! - [`memory`]: allocator settings for a long-running hub process.
//! - [`clock`]: the one reader of the wall clock; operations take time from
//!   the hub's clock.

pub mod access;
pub mod admission;
pub mod api;
pub mod broker;
pub mod cli;
pub mod cli_broker;
pub mod cli_config;
pub mod cli_secrets;
pub mod cli_tokens;
pub mod client;
pub mod clock;
pub mod config;
pub mod deploy;
pub mod fleet;
pub mod hub;
pub mod ingest;
pub mod link;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod outbox;
pub mod progress;
pub mod publish;
pub mod render;
pub mod resolve;
pub mod rollout;
pub mod scope;
pub mod secrets;
pub mod serve;
pub mod signing;
pub mod store;
pub mod text;
pub mod tls;
pub mod tokens;
pub mod vars;
