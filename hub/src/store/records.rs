//! The record types stored in the hub's tables.

use crate::deploy::DeploymentSpec;
use crate::rollout::{Outcome, Phase, RolloutDef, RolloutState};
use outpost_protocol::{AppSpec, DeviceId, Digest, Event, PublicKey, StatusReport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A registered device. Its private key never leaves the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: DeviceId,
    pub public_key: PublicKey,
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub registered_at: u64,
    /// The device's X25519 key secrets are sealed to (`--encryption-key`);
    /// `None`: no secret can be deployed to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<outpost_protocol::EncryptionKey>,
}

/// A deployment as applied: the operator's spec (tags as written) plus the
/// pinned apps the manifests were rendered from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub spec: DeploymentSpec,
    pub apps: Vec<AppSpec>,
    /// Bumped whenever the pinned content changes.
    pub revision: u64,
    pub updated_at: u64,
}

/// What was last issued to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMeta {
    pub epoch: u64,
    pub generation: u64,
    pub apps_digest: Digest,
    pub issued_at: u64,
    pub apps: Vec<String>,
    /// When the manifest stops being adopted as new (unix seconds); 0 in
    /// records written before manifests expired, which makes them due for
    /// renewal at once.
    #[serde(default)]
    pub expires_at: u64,
}

/// The last status that verified, with the hub's clock at arrival (devices
/// without an RTC may report nonsense times; online/last-seen uses this one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub received_at: u64,
    pub report: StatusReport,
}

/// Per-device delivery bookkeeping: the last accepted status order and the
/// event watermark. Kept when a device is removed (re-adding it with the same
/// key must not reopen the replay window), and bound to the device's key: a
/// re-provisioned device (new key, counters from zero) starts from zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMarks {
    pub key: PublicKey,
    /// `(boot, seq)` of the last accepted status; only a strictly greater one
    /// is accepted.
    pub status: Option<(u64, u64)>,
    /// Every event with a seq at or below this is stored (or was reported
    /// dropped by the device's outbox): what the signed watermark says.
    pub events_acked: u64,
}

impl DeviceMarks {
    pub fn new(key: PublicKey) -> DeviceMarks {
        DeviceMarks {
            key,
            status: None,
            events_acked: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub received_at: u64,
    pub event: Event,
}

/// One line of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Assigned on append.
    pub seq: u64,
    pub at: u64,
    /// Who asked (`api` for bearer-token calls, `hub` for the hub itself).
    pub who: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

/// The latest rollout of a deployment (table `rollouts`, keyed by deployment
/// name): kept after it completes or is aborted, for `rollout status`, until
/// the deployment's next rollout replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub deployment: String,
    /// The deployment revision being rolled out.
    pub revision: u64,
    /// The deployment as it was before this revision: what devices not yet
    /// admitted keep, and what `rollout abort` re-issues. `None`: the
    /// deployment's first apply (devices not admitted get nothing from it).
    pub previous: Option<DeploymentRecord>,
    /// The `[rollout]` table this rollout runs by.
    pub def: RolloutDef,
    pub state: RolloutState,
    pub started_at: u64,
    /// Admitted devices by id. A device not listed is not targeted yet.
    pub devices: BTreeMap<String, AdmittedDevice>,
}

impl RolloutRecord {
    /// Running or paused: the deployment renders staged (see `render::Staged`).
    pub fn is_active(&self) -> bool {
        matches!(self.state.phase, Phase::Running | Phase::Paused { .. })
    }
}

/// A device a rollout admitted, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmittedDevice {
    /// The wave that admitted it (0: canary).
    pub wave: usize,
    pub targeted_at: u64,
    /// `(epoch, generation)` of the manifest issued to it with the new
    /// revision: the release it must commit.
    pub issued: (u64, u64),
    /// Pending until its status says committed, failed or rolled back; then
    /// kept as it was first decided (a later report does not undo it).
    pub outcome: Outcome,
    /// When the outcome was decided (hub time).
    pub decided_at: Option<u64>,
}

/// An API token (table `tokens`, keyed by name). Only the SHA-256 of its
/// secret is stored; the secret is shown once, when it is made. Revoked
/// tokens stay listed (their name is not reused, so `token:<name>` in the
/// audit log means one token) but no longer authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: crate::access::Role,
    /// Empty: the whole fleet.
    pub scope: crate::scope::Scope,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    pub created_at: u64,
    /// The `token:<name>` that made it (`hub` for the first admin token).
    pub created_by: String,
    /// Hub time of the last request it authenticated, written at most every
    /// few minutes (see `tokens::LAST_USED_EVERY_SECS`).
    #[serde(default)]
    pub last_used: Option<u64>,
    #[serde(default)]
    pub revoked_at: Option<u64>,
}
