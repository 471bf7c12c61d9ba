//! JSON views the API returns (and the CLI reads back).

pub use crate::fleet::{counts, AppCounts, DeviceState};
use crate::ingest::ONLINE_WINDOW_SECS;
use crate::store::{DeviceRecord, ManifestMeta, StatusRecord};
use outpost_protocol::StatusReport;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Online if a verified status arrived within [`ONLINE_WINDOW_SECS`].
pub fn is_online(received_at: u64, now: u64) -> bool {
    now.saturating_sub(received_at) <= ONLINE_WINDOW_SECS
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationView {
    pub epoch: u64,
    pub generation: u64,
}

/// One row of `GET /v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSummary {
    pub id: String,
    pub public_key: String,
    pub labels: BTreeMap<String, String>,
    pub registered_at: u64,
    pub online: bool,
    /// Hub time (unix seconds) of the last verified status.
    pub last_seen: Option<u64>,
    pub desired: Option<GenerationView>,
    pub applied: Option<GenerationView>,
    pub apps: AppCounts,
}

impl DeviceSummary {
    /// Online, degraded, offline or never seen.
    pub fn state(&self) -> DeviceState {
        DeviceState::of(self.online, self.last_seen, self.apps.failing)
    }
}

impl DeviceSummary {
    pub fn new(
        d: &DeviceRecord,
        meta: Option<&ManifestMeta>,
        status: Option<&StatusRecord>,
        now: u64,
    ) -> Self {
        DeviceSummary {
            id: d.id.to_string(),
            public_key: d.public_key.to_string(),
            labels: d.labels.clone(),
            registered_at: d.registered_at,
            online: status.is_some_and(|s| is_online(s.received_at, now)),
            last_seen: status.map(|s| s.received_at),
            desired: meta.map(|m| GenerationView {
                epoch: m.epoch,
                generation: m.generation,
            }),
            applied: status
                .and_then(|s| s.report.applied)
                .map(|(epoch, generation)| GenerationView { epoch, generation }),
            apps: status.map(|s| counts(&s.report)).unwrap_or_default(),
        }
    }
}

/// `GET /v1/devices/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub summary: DeviceSummary,
    /// App names in the desired manifest.
    pub desired_apps: Vec<String>,
    /// The last verified status report, as the device sent it.
    pub status: Option<StatusReport>,
}

impl DeviceDetail {
    pub fn new(
        d: &DeviceRecord,
        meta: Option<ManifestMeta>,
        status: Option<StatusRecord>,
        now: u64,
    ) -> Self {
        DeviceDetail {
            summary: DeviceSummary::new(d, meta.as_ref(), status.as_ref(), now),
            desired_apps: meta.map(|m| m.apps).unwrap_or_default(),
            status: status.map(|s| s.report),
        }
    }
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Registered devices inside the token's scope.
    pub devices: usize,
    /// Of those, online.
    pub online: usize,
    /// The scope `devices` and `online` count over (`""`: the whole fleet).
    #[serde(default)]
    pub scope: String,
    /// Ingest counters: `status_accepted`, `status_rejected.<reason>`, …
    pub counters: BTreeMap<String, u64>,
    pub manifests_published: u64,
    pub republish_all: u64,
    pub publish_errors: u64,
    /// Signed event watermarks published (after ingest commits, and to every
    /// device when the hub (re)subscribes).
    #[serde(default)]
    pub watermarks_published: u64,
    /// Logins the embedded broker refused since the hub started (`None`
    /// with an external broker, whose own logs tell).
    #[serde(default)]
    pub broker_logins_refused: Option<u64>,
    /// Connections the embedded broker closed over a topic they may not use.
    #[serde(default)]
    pub broker_topics_refused: Option<u64>,
}
