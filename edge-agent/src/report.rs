//! What the device tells about itself: the in-memory view behind `StatusReport`s,
//! device-signed events queued in the redb outbox, and the local status file read by
//! `outpost-agent status`.
//!
//! Status is a latest-wins snapshot rebuilt from the view whenever it is sent, so it
//! is not written to disk (SD-card wear); events are history, so each one is
//! committed to the outbox before anything tries to send it.

use crate::state::{StateError, Store};
use outpost_protocol::{
    AppStatus, DeviceId, Event, EventKind, RejectCounters, SigningKey, StatusReport,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{watch, Notify};

/// Milliseconds since the Unix epoch by the device clock (0 if it is before 1970).
pub fn now_ms() -> u64 {
    crate::clock::wall_ms()
}

/// The device's current view of itself, shared by the tasks that change it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct View {
    pub applied: Option<(u64, u64)>,
    pub apps: BTreeMap<String, AppStatus>,
    pub rejected: RejectCounters,
    pub last_rejection: Option<String>,
    /// Is the MQTT link up (local view only).
    pub connected: bool,
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
    outbox_pending: u64,
    written_at_ms: u64,
}

pub struct Reporter {
    device_id: DeviceId,
    key: SigningKey,
    store: Arc<Store>,
    outbox_limit: u64,
    view: Mutex<View>,
    /// Bumped on every view change; the sender and the status-file writer watch it.
    changed: watch::Sender<u64>,
    /// Woken when an event was queued.
    pub outbox_wake: Notify,
    /// The persisted boot counter: with `status_seq` it orders status reports
    /// across restarts (the hub accepts only a greater `(boot, seq)`) without
    /// persisting each status.
    boots: u64,
    /// Status reports sealed in this boot.
    status_seq: AtomicU64,
    started: Instant,
    status_file: PathBuf,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reporter({})", self.device_id)
    }
}

impl Reporter {
    pub fn new(
        device_id: DeviceId,
        key: SigningKey,
        store: Arc<Store>,
        outbox_limit: u64,
        boots: u64,
        initial: View,
        status_file: PathBuf,
    ) -> Reporter {
        let (changed, _) = watch::channel(0);
        Reporter {
            device_id,
            key,
            store,
            outbox_limit,
            view: Mutex::new(initial),
            changed,
            outbox_wake: Notify::new(),
            boots,
            status_seq: AtomicU64::new(0),
            started: Instant::now(),
            status_file,
        }
    }

    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn lock(&self) -> MutexGuard<'_, View> {
        // A panic while holding the lock leaves a view that is still plain data.
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn view(&self) -> View {
        self.lock().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Change the view; observers are woken only if something actually changed.
    pub fn update(&self, f: impl FnOnce(&mut View)) {
        let mut v = self.lock();
        let before = v.clone();
        f(&mut v);
        if *v != before {
            drop(v);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Seal `kind` as the next event and commit it to the outbox (blocking: fsync).
    pub fn event_blocking(&self, kind: EventKind) -> Result<u64, StateError> {
        let at = now_ms() / 1000;
        let device_id = self.device_id.clone();
        let key = &self.key;
        let k = kind.clone();
        let seq = self
            .store
            .push_event(self.outbox_limit, |seq, dropped_before| {
                Event {
                    device_id,
                    seq,
                    at,
                    dropped_before,
                    kind: k,
                }
                .seal(key)
            })?;
        tracing::debug!(device_id = %self.device_id, seq, event = ?kind, "event queued");
        self.outbox_wake.notify_one();
        Ok(seq)
    }

    /// [`Self::event_blocking`] off the async threads; failures are logged, since
    /// an event that cannot be stored must not stop the agent from running apps.
    pub async fn event(self: &Arc<Self>, kind: EventKind) {
        let me = Arc::clone(self);
        let res = tokio::task::spawn_blocking(move || me.event_blocking(kind)).await;
        match res {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(device_id = %self.device_id, error = %e, "could not queue event")
            }
            Err(e) => tracing::error!(device_id = %self.device_id, error = %e, "event task failed"),
        }
    }

    /// A fresh signed status built from the view; `event_floor` is
    /// [`Store::event_floor`], read by the caller off the async threads.
    pub fn sealed_status(&self, event_floor: u64) -> Vec<u8> {
        let v = self.view();
        let report = StatusReport {
            device_id: self.device_id.clone(),
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
        };
        report.seal(&self.key)
    }

    /// Write the local status file atomically (write + rename) for the `status`
    /// command. Lives in the run dir (tmpfs on a device).
    pub fn write_local_status(&self) -> std::io::Result<()> {
        let v = self.view();
        let outbox_pending = self.store.outbox_len().unwrap_or(0);
        let local = LocalStatus {
            device_id: self.device_id.as_str(),
            agent_pid: std::process::id(),
            boots: self.boots,
            view: &v,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_signed_sequenced_and_views_notify_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let key = SigningKey::generate().unwrap();
        let pk = key.public_key();
        let id: DeviceId = "d1".parse().unwrap();
        let r = Reporter::new(
            id.clone(),
            key,
            store.clone(),
            100,
            3,
            View::default(),
            dir.path().join("status.json"),
        );
        let rx = r.subscribe();
        r.update(|v| v.applied = Some((1, 2)));
        r.update(|v| v.applied = Some((1, 2)));
        assert_eq!(*rx.borrow(), 1);
        r.event_blocking(EventKind::AppStopped { app: "a".into() })
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
