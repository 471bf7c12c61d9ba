//! What the publisher is asked to do ([`Outbox`]) and what it counts
//! ([`PublishStats`]): the contract between the modules that commit changes
//! (`hub.rs`, `ingest.rs`) and the publisher task (`publish.rs`), kept apart
//! so that neither side depends on the other.

use outpost_protocol::DeviceId;
use std::sync::atomic::AtomicU64;

/// Work for the publisher.
#[derive(Debug)]
pub enum Outbox {
    /// The publish link (re)connected: publish the key set, republish all.
    Connected,
    /// Publish the current manifest of these devices (retained, QoS 1).
    Manifests(Vec<DeviceId>),
    /// The device was removed: clear its retained manifest and watermark.
    Clear(DeviceId),
    /// Publish these devices' current event watermarks (retained, QoS 1).
    Watermarks(Vec<DeviceId>),
    /// The ingest link (re)subscribed: new `hub_session`, every watermark.
    Announce,
    /// Time for the signed heartbeat (`serve::heartbeats`).
    Heartbeat,
    /// A sealed log request for the device (`logs.rs`), not retained.
    LogRequest(DeviceId, Vec<u8>),
}

/// Counters the API exposes.
#[derive(Debug, Default)]
pub struct PublishStats {
    pub manifests_published: AtomicU64,
    pub republish_all: AtomicU64,
    pub publish_errors: AtomicU64,
    pub watermarks_published: AtomicU64,
    pub heartbeats_published: AtomicU64,
}
