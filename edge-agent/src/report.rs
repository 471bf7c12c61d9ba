//! What the device tells about itself: signed `StatusReport`s built from the
//! composed view (see [`crate::view`] for its parts and their writers), and the
//! local status file read by `outpost-agent status`.
//!
//! Status is a latest-wins snapshot rebuilt from the view whenever it is sent, so it
//! is not written to disk (SD-card wear). Events are history and live in the
//! outbox ([`crate::outbox`]); the reporter only reads how many are pending.
//! The reporter writes no part of the view: it only reads and seals it.

use crate::outbox::Outbox;
use crate::view::{Parts, View};
use outpost_protocol::{DeviceId, SigningKey, StatusReport};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Milliseconds since the Unix epoch by the device clock (0 if it is before 1970).
pub fn now_ms() -> u64 {
    crate::clock::wall_ms()
}

/// Events queued but not yet acknowledged by the broker, plus what the local
/// status command shows on top of the view.
#[derive(Debug, Serialize)]
struct LocalStatus<'a> {
    device_id: &'a str,
    /// Lets a reader tell this run's file from one left by a crashed run.
    agent_pid: u32,
    boots: u64,
    #[serde(flatten)]
    view: &'a View,
    /// Seconds since the newest signed word from the hub, when over the
    /// threshold (`hub_silent_after_secs`).
    hub_silent_secs: Option<u64>,
    /// Logs on demand (`crate::logstream`).
    log_streams: Option<&'a crate::logstream::LogCounters>,
    outbox_pending: u64,
    written_at_ms: u64,
}

pub struct Reporter {
    /// For the device id and the pending count in the local status file.
    outbox: Outbox,
    key: Arc<SigningKey>,
    parts: Parts,
    /// The persisted boot counter: with `status_seq` it orders status reports
    /// across restarts (the hub accepts only a greater `(boot, seq)`) without
    /// persisting each status.
    boots: u64,
    /// Status reports sealed in this boot.
    status_seq: AtomicU64,
    /// Milliseconds after `started` when the last status was sealed for
    /// sending, plus one (0: none yet); for `/metrics`.
    last_sealed: AtomicU64,
    started: Instant,
    status_file: PathBuf,
    /// How long without signed word from the hub before it counts as silent.
    hub_silent_after: std::time::Duration,
    log_counters: Option<Arc<crate::logstream::LogCounters>>,
}

/// Default of `hub_silent_after_secs`: five heartbeats of the hub's default
/// interval.
pub const DEFAULT_HUB_SILENT_AFTER_SECS: u64 = 300;

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reporter({})", self.outbox.device_id())
    }
}

impl Reporter {
    pub fn new(
        outbox: Outbox,
        key: Arc<SigningKey>,
        parts: Parts,
        boots: u64,
        status_file: PathBuf,
    ) -> Reporter {
        Reporter {
            outbox,
            key,
            parts,
            boots,
            status_seq: AtomicU64::new(0),
            last_sealed: AtomicU64::new(0),
            started: Instant::now(),
            status_file,
            hub_silent_after: std::time::Duration::from_secs(DEFAULT_HUB_SILENT_AFTER_SECS),
            log_counters: None,
        }
    }

    /// Show what the log streams did in the local status file.
    pub fn with_log_counters(mut self, c: Arc<crate::logstream::LogCounters>) -> Reporter {
        self.log_counters = Some(c);
        self
    }

    /// Set how long without signed word from the hub counts as silence.
    pub fn with_hub_silent_after(mut self, after: std::time::Duration) -> Reporter {
        self.hub_silent_after = after;
        self
    }

    /// Seconds the hub has been silent, if past the threshold (see
    /// [`crate::freshness::silence`]).
    pub fn hub_silent_secs(&self) -> Option<u64> {
        let contact = self.parts.hub_contact();
        let since_heard = contact
            .heard_at
            .map_or_else(|| self.started.elapsed(), |t| t.elapsed());
        crate::freshness::silence(
            &contact,
            now_ms() / 1000,
            since_heard,
            self.hub_silent_after,
        )
    }

    pub fn device_id(&self) -> &DeviceId {
        self.outbox.device_id()
    }

    /// The view as of now, composed from its parts.
    pub fn view(&self) -> View {
        self.parts.view()
    }

    /// Bumped on every change of any part; the sender and the status-file
    /// writer watch it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.parts.subscribe()
    }

    /// A fresh signed status built from the view; `event_floor` is
    /// [`Outbox::floor`], read by the caller off the async threads.
    pub fn sealed_status(&self, event_floor: u64) -> Vec<u8> {
        let v = self.view();
        let since_start = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_sealed
            .store(since_start.saturating_add(1), Ordering::Relaxed);
        let report = StatusReport {
            device_id: self.device_id().clone(),
            applied: v.applied,
            boot: self.boots,
            seq: self.status_seq.fetch_add(1, Ordering::Relaxed) + 1,
            event_floor,
            reported_at: now_ms() / 1000,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            apps: v.apps.values().cloned().collect(),
            rejected: v.rejected.clone(),
            last_rejection: v.last_rejection.clone(),
            release: v.release.clone(),
            last_heartbeat: v.last_heartbeat,
            hub_silent_secs: self.hub_silent_secs(),
            time_floor: v.time_floor,
        };
        report.seal(&self.key)
    }

    /// Status reports sealed for sending in this boot.
    pub fn reports_sent(&self) -> u64 {
        self.status_seq.load(Ordering::Relaxed)
    }

    /// Seconds since the last status report was sealed for sending, on the
    /// monotonic clock; `None` before the first.
    pub fn last_report_age_secs(&self) -> Option<u64> {
        let at = self.last_sealed.load(Ordering::Relaxed).checked_sub(1)?;
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(now.saturating_sub(at) / 1000)
    }

    /// Write the local status file atomically (write + rename) for the `status`
    /// command. Lives in the run dir (tmpfs on a device).
    pub fn write_local_status(&self) -> std::io::Result<()> {
        let v = self.view();
        let outbox_pending = self.outbox.pending().unwrap_or(0);
        let local = LocalStatus {
            device_id: self.device_id().as_str(),
            agent_pid: std::process::id(),
            boots: self.boots,
            view: &v,
            hub_silent_secs: self.hub_silent_secs(),
            log_streams: self.log_counters.as_deref(),
            outbox_pending,
            written_at_ms: now_ms(),
        };
        let json = serde_json::to_vec_pretty(&local).map_err(std::io::Error::other)?;
        if let Some(dir) = self.status_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.status_file.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &self.status_file)
    }
}

/// The parts every reporter test needs, wired as the agent wires them: a
/// store in a temporary directory, a signing key, the outbox, the view's
/// writers and a reporter reading its parts.
#[cfg(test)]
pub(crate) struct ReporterRig {
    pub dir: tempfile::TempDir,
    pub store: Arc<crate::state::Store>,
    pub key: Arc<SigningKey>,
    pub outbox: Outbox,
    pub writers: crate::view::Writers,
    pub reporter: Arc<Reporter>,
}

#[cfg(test)]
impl ReporterRig {
    pub(crate) fn new(device: &str, status_file_interval: u64) -> ReporterRig {
        use crate::view::{parts, Rejections};
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Arc::new(
            crate::state::Store::open(&dir.path().join("s.redb")).expect("open the test store"),
        );
        let key = Arc::new(SigningKey::generate().expect("generate a key"));
        let device: DeviceId = device.parse().expect("a valid device id");
        let outbox = Outbox::new(device, key.clone(), store.clone(), 100);
        let (writers, parts) = parts(None, Rejections::default());
        let reporter = Arc::new(Reporter::new(
            outbox.clone(),
            key.clone(),
            parts,
            status_file_interval,
            dir.path().join("status.json"),
        ));
        ReporterRig {
            dir,
            store,
            key,
            outbox,
            writers,
            reporter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::{Event, EventKind, KeyId, Manifest};

    #[test]
    fn events_are_signed_sequenced_and_views_notify_only_on_change() {
        let ReporterRig {
            dir,
            store,
            key,
            outbox,
            writers,
            reporter: r,
        } = ReporterRig::new("d1", 3);
        let pk = key.public_key();
        let id: DeviceId = "d1".parse().unwrap();
        let rx = r.subscribe();
        let accepted = Arc::new(Manifest {
            device_id: id.clone(),
            epoch: 1,
            generation: 2,
            issued_at: 0,
            key_id: KeyId("k".into()),
            apps: vec![],
            release: Default::default(),
            expires_at: outpost_protocol::NEVER,
        });
        writers.desired.send_replace(Some(accepted.clone()));
        writers.desired.send_replace(Some(accepted));
        assert_eq!(*rx.borrow(), 1);
        outbox
            .event_blocking(EventKind::AppStopped { app: "a".into() })
            .unwrap();
        let (seq, bytes) = store.outbox_next(0).unwrap().unwrap();
        let ev = Event::open(&bytes, &id, &pk).unwrap();
        assert_eq!((seq, ev.seq), (1, 1));
        let st = StatusReport::open(&r.sealed_status(1), &id, &pk).unwrap();
        assert_eq!((st.boot, st.seq, st.event_floor), (3, 1, 1));
        let st = StatusReport::open(&r.sealed_status(1), &id, &pk).unwrap();
        assert_eq!((st.boot, st.seq), (3, 2));
        assert_eq!(st.applied, Some((1, 2)));
        r.write_local_status().unwrap();
        let text = std::fs::read_to_string(dir.path().join("status.json")).unwrap();
        assert!(text.contains("\"outbox_pending\": 1"), "{text}");
    }
}
