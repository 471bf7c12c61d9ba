//! Outpost hub: keeps desired state in redb, renders one signed manifest per
//! device, delivers it over MQTT (retained, QoS 1), ingests device-signed status
//! and events, and serves an HTTP API with a CLI on top.
//!
//! # Layout
//! - [`config`]: `hub.toml` and the data-directory layout.
//! - [`signing`]: root key, signing key, key set, API token; sealing manifests.
//! - [`deploy`]: the declarative deployment format and its field-level checks.
//! - [`render`]: pure rendering of deployments × devices into per-device apps and
//!   generation decisions.
//! - [`store`]: the redb tables and typed transactions.
pub mod config;
pub mod deploy;
pub mod render;
pub mod signing;
pub mod store;
