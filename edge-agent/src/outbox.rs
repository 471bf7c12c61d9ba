//! The event outbox: device-signed events, each committed to the redb outbox
//! (see [`crate::state`]) before anything tries to send it.
//!
//! Events are history, unlike the status view (a latest-wins snapshot, see
//! [`crate::view`]), so every task that has something to tell appends to the
//! same ordered log: the inbox (manifest applied or refused, key set adopted),
//! the reconciler and its executor (app started, stopped, exited, failed, pull
//! progress) and the health task (readiness changed). The sender in
//! [`crate::delivery`] reads it in order and deletes entries only when the hub's
//! signed watermark covers them.
//!
//! [`Outbox`] is a cheap, cloneable handle; the order of events is the order of
//! their commits (the store hands out the sequence numbers).

use crate::clock::wall_ms;
use crate::state::{StateError, Store};
use outpost_protocol::{DeviceId, Event, EventKind, SigningKey};
use std::sync::Arc;
use tokio::sync::Notify;

/// Seals device events and queues them in the outbox; reads them back for the
/// sender.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    device_id: DeviceId,
    key: Arc<SigningKey>,
    store: Arc<Store>,
    /// Entries kept at most; the oldest are dropped (and counted) beyond it.
    limit: u64,
    /// Woken when an event was queued, so the sender need not poll.
    wake: Notify,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbox({})", self.inner.device_id)
    }
}

impl Outbox {
    pub fn new(device_id: DeviceId, key: Arc<SigningKey>, store: Arc<Store>, limit: u64) -> Outbox {
        Outbox {
            inner: Arc::new(Inner {
                device_id,
                key,
                store,
                limit,
                wake: Notify::new(),
            }),
        }
    }

    /// The device the events are signed for.
    pub fn device_id(&self) -> &DeviceId {
        &self.inner.device_id
    }

    /// Seal `kind` as the next event and commit it to the outbox (blocking: fsync).
    pub fn event_blocking(&self, kind: EventKind) -> Result<u64, StateError> {
        let at = wall_ms() / 1000;
        let device_id = self.inner.device_id.clone();
        let key = &self.inner.key;
        let k = kind.clone();
        let seq = self
            .inner
            .store
            .push_event(self.inner.limit, |seq, dropped_before| {
                Event {
                    device_id,
                    seq,
                    at,
                    dropped_before,
                    kind: k,
                }
                .seal(key)
            })?;
        tracing::debug!(device_id = %self.inner.device_id, seq, event = ?kind, "event queued");
        self.inner.wake.notify_one();
        Ok(seq)
    }

    /// [`Self::event_blocking`] off the async threads; failures are logged, since
    /// an event that cannot be stored must not stop the agent from running apps.
    pub async fn event(&self, kind: EventKind) {
        let me = self.clone();
        let res = tokio::task::spawn_blocking(move || me.event_blocking(kind)).await;
        let device = &self.inner.device_id;
        match res {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(device_id = %device, error = %e, "could not queue event"),
            Err(e) => tracing::error!(device_id = %device, error = %e, "event task failed"),
        }
    }

    /// Resolves once an event was queued after the last wake-up.
    pub async fn queued(&self) {
        self.inner.wake.notified().await
    }

    /// The oldest entry with a seq greater than `after` (blocking).
    pub fn next_after(&self, after: u64) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        self.inner.store.outbox_next(after)
    }

    /// Delete every entry the hub's verified watermark covers (blocking).
    /// Returns how many were deleted.
    pub fn ack_through(&self, acked: u64) -> Result<u64, StateError> {
        self.inner.store.outbox_ack_through(acked)
    }

    /// The seq below which no event will be sent again (see
    /// [`Store::event_floor`]; blocking).
    pub fn floor(&self) -> Result<u64, StateError> {
        self.inner.store.event_floor()
    }

    /// Entries not yet covered by a watermark (blocking).
    pub fn pending(&self) -> Result<u64, StateError> {
        self.inner.store.outbox_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_sealed_in_order_wake_the_sender_and_leave_only_when_acked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let key = SigningKey::generate().unwrap();
        let pk = key.public_key();
        let id: DeviceId = "d1".parse().unwrap();
        let outbox = Outbox::new(id.clone(), Arc::new(key), store, 2);
        outbox
            .event(EventKind::AppStopped { app: "a".into() })
            .await;
        // The permit left by the first event wakes a sender that waits later.
        tokio::time::timeout(std::time::Duration::from_secs(5), outbox.queued())
            .await
            .unwrap();
        for app in ["b", "c"] {
            outbox
                .event_blocking(EventKind::AppStopped { app: app.into() })
                .unwrap();
        }
        // Bounded at 2: the oldest was dropped and the next event says so.
        assert_eq!(outbox.pending().unwrap(), 2);
        let (seq, bytes) = outbox.next_after(0).unwrap().unwrap();
        let ev = Event::open(&bytes, &id, &pk).unwrap();
        assert_eq!((seq, ev.seq, ev.dropped_before), (2, 2, 0));
        let (seq, bytes) = outbox.next_after(2).unwrap().unwrap();
        let ev = Event::open(&bytes, &id, &pk).unwrap();
        assert_eq!((seq, ev.seq, ev.dropped_before), (3, 3, 1));
        assert_eq!(outbox.floor().unwrap(), 2);
        assert_eq!(outbox.ack_through(2).unwrap(), 1);
        assert_eq!(outbox.next_after(0).unwrap().unwrap().0, 3);
        assert_eq!(outbox.floor().unwrap(), 3);
    }
}
