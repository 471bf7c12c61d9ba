//! What a device tells the hub: `StatusReport`s and `Event`s, both device-signed.
//!
//! Each device signs with its own ed25519 key (generated on the device), so the hub
//! can tell a forged status from a real one whatever the broker lets clients publish.

use crate::envelope::{self, Kind, OpenError};
use crate::image::Digest;
use crate::keys::{PublicKey, SigningKey};
use crate::topics::DeviceId;
use serde::{Deserialize, Serialize};

const MAX_ITEMS: usize = crate::manifest::MAX_APPS;

/// The device's view of itself at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub device_id: DeviceId,
    /// `(epoch, generation)` of the last accepted manifest; `None` before the first.
    pub applied: Option<(u64, u64)>,
    /// The device's boot counter (persisted, +1 at every agent start). With
    /// `seq` it orders reports: the hub accepts only a strictly greater
    /// `(boot, seq)`, so a captured older report cannot be replayed.
    /// (`default` lets the hub read status records it stored before this field
    /// existed; postcard always carries it.)
    #[serde(default)]
    pub boot: u64,
    /// Counter within `boot`, from 1; a late or replayed report has a lower one.
    pub seq: u64,
    /// Every event with a lower `seq` was acknowledged by the hub or dropped by
    /// the bounded outbox: the device will never send it (again). Lets the hub
    /// move its event watermark over outbox drops instead of waiting forever.
    #[serde(default)]
    pub event_floor: u64,
    /// Device clock, unix seconds (may be wrong on devices without an RTC).
    pub reported_at: u64,
    pub agent_version: String,
    pub uptime_secs: u64,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_ITEMS>")]
    pub apps: Vec<AppStatus>,
    pub rejected: RejectCounters,
    /// Human-readable reason of the latest rejected manifest or key set.
    pub last_rejection: Option<String>,
    /// Where the newest accepted manifest is as a release (downloading, in
    /// trial, committed, rolled back); `None` before the first manifest.
    /// `default` lets the hub read records stored before the field existed.
    #[serde(default)]
    pub release: Option<ReleaseStatus>,
    /// `issued_at` (hub clock) of the newest verified hub heartbeat; `None`
    /// if none arrived since provisioning (format version 3).
    #[serde(default)]
    pub last_heartbeat: Option<u64>,
    /// Set when the device has heard nothing signed from the hub for longer
    /// than its threshold: seconds since the newest hub time it trusts. The
    /// device decides (it is the one that may be cut off or fed stale data).
    #[serde(default)]
    pub hub_silent_secs: Option<u64>,
    /// The device's trusted-time floor (`verify.rs`).
    #[serde(default)]
    pub time_floor: u64,
}

/// The device's release state: what it is working towards and what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStatus {
    /// `(epoch, generation)` of the newest accepted manifest.
    pub target: (u64, u64),
    pub phase: ReleasePhase,
    /// The newest release that passed its trial (what a rollback returns to).
    pub committed: Option<(u64, u64)>,
}

/// Where a release is on the device. Encoded by index: new phases go last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleasePhase {
    /// Pulling the release's images; the previous release's apps still serve.
    Downloading,
    /// Images present; `app` holds its update lock, so nothing is replaced yet.
    WaitingForLock { app: String },
    /// Being applied or proving itself: not yet stable for `stable_secs`.
    Trial,
    /// Passed its trial; a later restart keeps it.
    Committed,
    /// Failed its trial (`app`, `reason`); the device went back to `to` and
    /// will not retry the target until a newer manifest arrives.
    RolledBack {
        to: (u64, u64),
        app: String,
        reason: String,
    },
    /// Failed its trial with no earlier committed release to go back to: the
    /// apps stay as they are (their restart policies keep running).
    Failed { app: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub state: AppState,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub image_digest: Option<Digest>,
    /// Result of the health check; `None` when the app has none.
    pub ready: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppState {
    Pending,
    Pulling { done: u64, total: u64 },
    Starting,
    Running { pid: u32 },
    Exited { code: i32 },
    BackingOff { retry_in_secs: u64 },
    Failed,
    Stopped,
}

impl AppState {
    pub fn is_running(&self) -> bool {
        matches!(self, AppState::Running { .. })
    }
}

/// How many manifests (and key sets) were refused, per reason. Counters only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectCounters {
    pub too_large: u64,
    pub malformed: u64,
    pub unsupported_version: u64,
    pub unknown_key: u64,
    pub bad_signature: u64,
    pub wrong_device: u64,
    pub rollback: u64,
    pub conflicting_generation: u64,
    pub invalid_spec: u64,
    pub keyset: u64,
    /// Expired on arrival (format version 3). `default`: records stored
    /// before the counter existed read as zero.
    #[serde(default)]
    pub expired: u64,
    /// Hub heartbeats that did not verify (format version 3).
    #[serde(default)]
    pub heartbeat: u64,
    /// Root rotation links that did not verify (format version 3).
    #[serde(default)]
    pub root: u64,
}

impl RejectCounters {
    /// Every counter with its name (as metrics label it), in field order.
    pub fn by_reason(&self) -> [(&'static str, u64); 13] {
        [
            ("too_large", self.too_large),
            ("malformed", self.malformed),
            ("unsupported_version", self.unsupported_version),
            ("unknown_key", self.unknown_key),
            ("bad_signature", self.bad_signature),
            ("wrong_device", self.wrong_device),
            ("rollback", self.rollback),
            ("conflicting_generation", self.conflicting_generation),
            ("invalid_spec", self.invalid_spec),
            ("keyset", self.keyset),
            ("expired", self.expired),
            ("heartbeat", self.heartbeat),
            ("root", self.root),
        ]
    }

    pub fn total(&self) -> u64 {
        self.too_large
            + self.malformed
            + self.unsupported_version
            + self.unknown_key
            + self.bad_signature
            + self.wrong_device
            + self.rollback
            + self.conflicting_generation
            + self.invalid_spec
            + self.keyset
            + self.expired
            + self.heartbeat
            + self.root
    }
}

/// Something that happened on the device, in device order (`seq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub device_id: DeviceId,
    /// Strictly increasing per device, persisted: gaps mean the bounded outbox
    /// dropped events (also counted in `dropped_before`).
    pub seq: u64,
    pub at: u64,
    /// Events the outbox discarded (oldest first) before this one was queued.
    pub dropped_before: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    ManifestApplied {
        epoch: u64,
        generation: u64,
    },
    ManifestRejected {
        reason: String,
    },
    KeySetAccepted {
        version: u64,
    },
    AppStarted {
        app: String,
        pid: u32,
    },
    AppExited {
        app: String,
        code: i32,
    },
    AppRestarted {
        app: String,
        restarts: u32,
    },
    AppStopped {
        app: String,
    },
    AppFailed {
        app: String,
        error: String,
    },
    PullProgress {
        app: String,
        done: u64,
        total: u64,
    },
    AppHealth {
        app: String,
        ready: bool,
    },
    /// The agent is replacing the app's container because its health check
    /// failed `retries` times in a row after it had been ready; `restarts` is
    /// the number the replacement will have (its `AppRestarted` repeats it).
    /// Variants are postcard-encoded by index, so new ones go at the end:
    /// events stored in a device's outbox or at the hub stay readable.
    AppUnhealthyRestarted {
        app: String,
        restarts: u32,
        reason: String,
    },
    /// A new release started its trial: its first container is about to be
    /// stopped or started. `(epoch, generation)`.
    ReleaseTrial {
        release: (u64, u64),
    },
    /// The release stayed stable through its trial; it is the new fallback.
    ReleaseCommitted {
        release: (u64, u64),
    },
    /// `app` failed the trial of release `from` (`reason`); the whole release
    /// went back to `to`, the last committed one.
    RolledBack {
        from: (u64, u64),
        to: (u64, u64),
        app: String,
        reason: String,
    },
    /// The release waits: `app` holds its update lock.
    WaitingForLock {
        app: String,
        release: (u64, u64),
    },
    /// The device adopted root key `version` through a rotation link signed by
    /// the previous root (`root.rs`).
    RootAdopted {
        version: u64,
    },
}

/// Why a status or event from a device was refused by the hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceMessageError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(
        "message signed by key {found}, but device {device} is registered with key {expected}"
    )]
    WrongKey {
        device: DeviceId,
        found: String,
        expected: String,
    },
    #[error("bad signature on message from device {device}")]
    BadSignature { device: DeviceId },
    #[error("message on the topic of device {topic_device} claims to be from device {claimed}")]
    DeviceMismatch {
        topic_device: DeviceId,
        claimed: DeviceId,
    },
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn open_device<'a, T: Deserialize<'a>>(
    kind: Kind,
    what: &'static str,
    bytes: &'a [u8],
    device: &DeviceId,
    key: &PublicKey,
    claimed: impl Fn(&T) -> &DeviceId,
    decode: impl Fn(u8, &'static str, &'a [u8]) -> Result<T, OpenError>,
) -> Result<T, DeviceMessageError> {
    let opened = envelope::open(kind, bytes)?;
    if opened.key_id != key.key_id() {
        return Err(DeviceMessageError::WrongKey {
            device: device.clone(),
            found: opened.key_id.0.clone(),
            expected: key.key_id().0,
        });
    }
    if !opened.signed_by(key) {
        return Err(DeviceMessageError::BadSignature {
            device: device.clone(),
        });
    }
    let value: T = decode(opened.version, what, opened.body)?;
    if claimed(&value) != device {
        return Err(DeviceMessageError::DeviceMismatch {
            topic_device: device.clone(),
            claimed: claimed(&value).clone(),
        });
    }
    Ok(value)
}

impl StatusReport {
    /// A report of `device_id` at `(boot, seq)` that says nothing else: no
    /// manifest applied, no app, no rejection, no release, no heartbeat.
    /// Callers set what they know with struct update syntax.
    pub fn blank(device_id: DeviceId, boot: u64, seq: u64) -> StatusReport {
        StatusReport {
            device_id,
            applied: None,
            boot,
            seq,
            event_floor: 0,
            reported_at: 0,
            agent_version: String::new(),
            uptime_secs: 0,
            apps: vec![],
            rejected: RejectCounters::default(),
            last_rejection: None,
            release: None,
            last_heartbeat: None,
            hub_silent_secs: None,
            time_floor: 0,
        }
    }

    pub fn seal(&self, device_key: &SigningKey) -> Vec<u8> {
        envelope::seal_value(Kind::Status, device_key, self)
            .expect("postcard encodes a StatusReport into a Vec infallibly")
    }

    /// Verify a status that arrived on `device`'s topic against that device's key.
    pub fn open(
        bytes: &[u8],
        device: &DeviceId,
        key: &PublicKey,
    ) -> Result<Self, DeviceMessageError> {
        open_device(
            Kind::Status,
            "status report",
            bytes,
            device,
            key,
            |s: &StatusReport| &s.device_id,
            |version, what, body| match version {
                1 => v1::decode_status(body),
                2 => v1::decode_status_v2(body),
                _ => envelope::decode_body(what, body),
            },
        )
    }
}

impl Event {
    pub fn seal(&self, device_key: &SigningKey) -> Vec<u8> {
        envelope::seal_value(Kind::Event, device_key, self)
            .expect("postcard encodes an Event into a Vec infallibly")
    }

    pub fn open(
        bytes: &[u8],
        device: &DeviceId,
        key: &PublicKey,
    ) -> Result<Self, DeviceMessageError> {
        // Events kept their layout in format version 2 (new kinds were appended).
        open_device(
            Kind::Event,
            "event",
            bytes,
            device,
            key,
            |e: &Event| &e.device_id,
            |_, what, body| envelope::decode_body(what, body),
        )
    }
}

/// Status bodies as format versions 1 and 2 wrote them (before `release`, and
/// before the hub-contact fields and the `expired` counter), for a hub
/// upgraded after some of its devices. Frozen: never edit.
pub(crate) mod v1 {
    use super::*;

    /// The reject counters before format version 3.
    #[derive(Deserialize)]
    pub(crate) struct RejectCountersV2 {
        too_large: u64,
        malformed: u64,
        unsupported_version: u64,
        unknown_key: u64,
        bad_signature: u64,
        wrong_device: u64,
        rollback: u64,
        conflicting_generation: u64,
        invalid_spec: u64,
        keyset: u64,
    }

    impl From<RejectCountersV2> for RejectCounters {
        fn from(c: RejectCountersV2) -> RejectCounters {
            RejectCounters {
                too_large: c.too_large,
                malformed: c.malformed,
                unsupported_version: c.unsupported_version,
                unknown_key: c.unknown_key,
                bad_signature: c.bad_signature,
                wrong_device: c.wrong_device,
                rollback: c.rollback,
                conflicting_generation: c.conflicting_generation,
                invalid_spec: c.invalid_spec,
                keyset: c.keyset,
                expired: 0,
                heartbeat: 0,
                root: 0,
            }
        }
    }

    /// Counters persisted by an agent before format version 3 (postcard).
    pub fn decode_counters_v2(bytes: &[u8]) -> Result<RejectCounters, OpenError> {
        let c: RejectCountersV2 =
            envelope::decode_body("reject counters (format version 2)", bytes)?;
        Ok(c.into())
    }

    #[derive(Deserialize)]
    struct StatusReportV1 {
        device_id: DeviceId,
        applied: Option<(u64, u64)>,
        boot: u64,
        seq: u64,
        event_floor: u64,
        reported_at: u64,
        agent_version: String,
        uptime_secs: u64,
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_ITEMS>")]
        apps: Vec<AppStatus>,
        rejected: RejectCountersV2,
        last_rejection: Option<String>,
    }

    #[derive(Deserialize)]
    struct StatusReportV2 {
        device_id: DeviceId,
        applied: Option<(u64, u64)>,
        boot: u64,
        seq: u64,
        event_floor: u64,
        reported_at: u64,
        agent_version: String,
        uptime_secs: u64,
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_ITEMS>")]
        apps: Vec<AppStatus>,
        rejected: RejectCountersV2,
        last_rejection: Option<String>,
        release: Option<ReleaseStatus>,
    }

    /// A version-1 status body: an agent that knows no release states.
    pub fn decode_status(body: &[u8]) -> Result<StatusReport, OpenError> {
        let s: StatusReportV1 = envelope::decode_body("status report (format version 1)", body)?;
        Ok(StatusReport {
            device_id: s.device_id,
            applied: s.applied,
            boot: s.boot,
            seq: s.seq,
            event_floor: s.event_floor,
            reported_at: s.reported_at,
            agent_version: s.agent_version,
            uptime_secs: s.uptime_secs,
            apps: s.apps,
            rejected: s.rejected.into(),
            last_rejection: s.last_rejection,
            release: None,
            last_heartbeat: None,
            hub_silent_secs: None,
            time_floor: 0,
        })
    }

    /// A version-2 status body: an agent that knows no hub heartbeat.
    pub fn decode_status_v2(body: &[u8]) -> Result<StatusReport, OpenError> {
        let s: StatusReportV2 = envelope::decode_body("status report (format version 2)", body)?;
        Ok(StatusReport {
            device_id: s.device_id,
            applied: s.applied,
            boot: s.boot,
            seq: s.seq,
            event_floor: s.event_floor,
            reported_at: s.reported_at,
            agent_version: s.agent_version,
            uptime_secs: s.uptime_secs,
            apps: s.apps,
            rejected: s.rejected.into(),
            last_rejection: s.last_rejection,
            release: s.release,
            last_heartbeat: None,
            hub_silent_secs: None,
            time_floor: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str) -> StatusReport {
        StatusReport {
            applied: Some((1, 3)),
            event_floor: 1,
            reported_at: 1,
            agent_version: "0.1.0".into(),
            uptime_secs: 5,
            last_heartbeat: Some(3),
            time_floor: 3,
            ..StatusReport::blank(id.parse().unwrap(), 2, 7)
        }
    }

    #[test]
    fn a_status_signed_by_another_device_is_refused() {
        let d1 = SigningKey::generate().unwrap();
        let d2 = SigningKey::generate().unwrap();
        let id: DeviceId = "d1".parse().unwrap();
        let good = report("d1").seal(&d1);
        assert_eq!(
            StatusReport::open(&good, &id, &d1.public_key()).unwrap(),
            report("d1")
        );
        let forged = report("d1").seal(&d2);
        assert!(matches!(
            StatusReport::open(&forged, &id, &d1.public_key()),
            Err(DeviceMessageError::WrongKey { .. })
        ));
        // A device replaying its own report on another device's topic.
        let other: DeviceId = "d2".parse().unwrap();
        let crossed = report("d1").seal(&d2);
        assert!(matches!(
            StatusReport::open(&crossed, &other, &d2.public_key()),
            Err(DeviceMessageError::DeviceMismatch { .. })
        ));
    }

    /// Postcard encodes an enum variant by its index: the events a device or the
    /// hub stored before a variant was added must decode to the same thing, so
    /// every existing variant keeps its index and new ones are appended.
    #[test]
    fn event_kind_variant_indexes_never_move() {
        let cases = [
            (
                EventKind::AppHealth {
                    app: "a".into(),
                    ready: true,
                },
                9u8,
            ),
            (
                EventKind::AppUnhealthyRestarted {
                    app: "a".into(),
                    restarts: 1,
                    reason: "r".into(),
                },
                10,
            ),
        ];
        for (kind, index) in cases {
            let bytes = postcard::to_stdvec(&kind).unwrap();
            assert_eq!(bytes[0], index, "{kind:?}");
            assert_eq!(postcard::from_bytes::<EventKind>(&bytes).unwrap(), kind);
        }
        // An `AppHealth` encoded by a build that did not know the new variant.
        let old = [9u8, 1, b'a', 0];
        assert_eq!(
            postcard::from_bytes::<EventKind>(&old).unwrap(),
            EventKind::AppHealth {
                app: "a".into(),
                ready: false
            }
        );
    }
    #[test]
    fn a_version_1_status_opens_without_release_state() {
        #[derive(Serialize)]
        struct OldStatus<'a> {
            device_id: &'a DeviceId,
            applied: Option<(u64, u64)>,
            boot: u64,
            seq: u64,
            event_floor: u64,
            reported_at: u64,
            agent_version: &'a str,
            uptime_secs: u64,
            apps: Vec<AppStatus>,
            rejected: [u64; 10],
            last_rejection: Option<String>,
        }
        let key = SigningKey::generate().unwrap();
        let device: DeviceId = "pi-1".parse().unwrap();
        let old = OldStatus {
            device_id: &device,
            applied: Some((1, 2)),
            boot: 3,
            seq: 4,
            event_floor: 5,
            reported_at: 6,
            agent_version: "0.1.0",
            uptime_secs: 7,
            apps: vec![],
            rejected: [0, 1, 0, 0, 0, 0, 0, 0, 0, 2],
            last_rejection: None,
        };
        let bytes =
            envelope::seal_version(1, Kind::Status, &key, &postcard::to_stdvec(&old).unwrap());
        let s = StatusReport::open(&bytes, &device, &key.public_key()).unwrap();
        assert_eq!(
            (s.applied, s.boot, s.seq, s.event_floor),
            (Some((1, 2)), 3, 4, 5)
        );
        assert_eq!(s.release, None);
        assert_eq!((s.rejected.malformed, s.rejected.keyset), (1, 2));

        // Version 2 appended the release state; version 3 the hub contact.
        let mut v2 = postcard::to_stdvec(&old).unwrap();
        let release = Some(ReleaseStatus {
            target: (1, 2),
            phase: ReleasePhase::Committed,
            committed: Some((1, 2)),
        });
        v2.extend(postcard::to_stdvec(&release).unwrap());
        let bytes = envelope::seal_version(2, Kind::Status, &key, &v2);
        let s = StatusReport::open(&bytes, &device, &key.public_key()).unwrap();
        assert_eq!(s.release, release);
        assert_eq!((s.last_heartbeat, s.hub_silent_secs), (None, None));
        assert_eq!(s.rejected.expired, 0);
    }
}
