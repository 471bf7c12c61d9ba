//! Outpost's wire protocol and trust rules, shared by the hub and the edge agent.
//!
//! Everything that crosses MQTT is defined here, together with the rules an agent
//! applies before it acts on a manifest. This crate does no I/O and spawns nothing:
//! it turns bytes into verified values (or a precise reason for refusing them) and
//! values into signed bytes.
//!
//! # Layout
//! - [`envelope`]: the versioned, signed container every message travels in
//!   (magic prefix, format version, message kind, key id, signature, body).
//! - [`keys`]: ed25519 signing keys and key ids (ring).
//! - [`manifest`]: the desired state of one device (`Manifest`, `AppSpec`, …) and
//!   its validation rules.
//! - [`image`]: image references pinned by sha256 digest.
//! - [`status`]: device-signed `StatusReport`s and `Event`s.
//! - [`keyset`]: rotation of manifest-signing keys under an offline root key.
//! - [`root`]: rotation of the root key itself (a chain of links, each signed
//!   by the previous root).
//! - [`heartbeat`]: the hub's signed, time-stamped heartbeat (freshness).
//! - [`logs`]: logs on demand (hub-signed requests, device-signed chunks).
//! - [`watermark`]: the hub-signed event watermark (`EventWatermark`) that lets
//!   an agent delete an event only once the hub has stored it.
//! - [`verify`]: the agent-side `Verifier` (accept / duplicate / reject with reason).
//! - [`topics`]: MQTT topic names and device-id validation.
//! - [`login`]: the broker login (username, password) of a device.
//! - [`secret`]: secrets sealed to one device (HPKE, X25519 + ChaCha20-Poly1305),
//!   the device's encryption key, and the sealed form manifests carry.
//! - [`sample`]: a representative 5-app manifest for examples, benches and fuzz seeds.
//! - [`bounded`]: decoding helpers that cap collection sizes so hostile input
//!   cannot make the decoder allocate more than the message size limit.

pub mod bounded;
pub mod envelope;
pub mod heartbeat;
pub mod image;
pub mod keys;
pub mod keyset;
pub mod legacy;
pub mod login;
pub mod logs;
pub mod manifest;
pub mod root;
pub mod sample;
pub mod secret;
pub mod status;
pub mod topics;
pub mod verify;
pub mod watermark;

pub use envelope::{
    Kind, OpenError, Opened, FORMAT_VERSION, MAGIC, MAX_MESSAGE_BYTES, MIN_FORMAT_VERSION,
};
pub use heartbeat::{Heartbeat, HeartbeatError};
pub use image::{Digest, ImageConfig, ImageRef, Platform};
pub use keys::{KeyError, KeyId, PublicKey, SigningKey};
pub use keyset::{KeySet, KeySetError, SignedKeySet};
pub use logs::{LogChunk, LogRequest, LogRequestError};
pub use manifest::{
    AppSpec, DeviceNode, HealthCheck, Manifest, NetworkMode, PortMapping, Probe, Protocol,
    ReleasePolicy, Resources, RestartPolicy, UpdateStrategy, ValidationError, VolumeMount, NEVER,
};
pub use root::{RootError, RootRotation};
pub use secret::{
    DecryptionKey, EncryptionKey, SealedSecret, SecretContext, SecretError, SecretMount,
    MAX_SECRET_BYTES, SECRET_ENV_PREFIX,
};
pub use status::{
    AppState, AppStatus, DeviceMessageError, Event, EventKind, RejectCounters, ReleasePhase,
    ReleaseStatus, StatusReport,
};
pub use topics::{DeviceId, DeviceIdError};
pub use verify::{Accepted, LastAccepted, RejectReason, TrustState, Verdict, Verifier};
pub use watermark::{EventWatermark, WatermarkError};
