//! The inbox: what the hub sends this device. Manifests, key sets, root
//! rotation links and hub heartbeats go through the trust gate
//! ([`crate::trust`]) and [`decide`] turns the gate's verdict into a
//! [`Delivery`]; event watermarks go to [`crate::delivery`].
//!
//! The inbox owns three parts of the view (see [`crate::view`]): the desired
//! manifest (and with it `applied`), the rejection counters, which it also
//! persists, and the hub contact (heartbeat, time floor). It holds a manifest
//! refused for an unknown key or epoch until a newer key set arrives (see
//! [`Inbox`]'s `held`), a key set signed by a root it does not know yet until
//! a root rotation arrives, and root links that arrive ahead of their turn;
//! it reports refusals through the [`Throttle`] of [`crate::rejections`].
//!
//! A message is acknowledged to the broker unless its decision could not be
//! made durable: the broker then redelivers it.

use crate::delivery::{self, HubAck};
use crate::outbox::Outbox;
use crate::rejections::{OnReject, Throttle};
use crate::state::{StateError, Store};
use crate::trust::{HeartbeatOutcome, KeySetOutcome, ManifestOutcome, RootOutcome, TrustGate};
use crate::view::{Desired, HubContact, Rejections, Writer};
use outpost_protocol::{
    topics, DeviceId, EventKind, KeySetError, Manifest, RejectCounters, RejectReason, RootError,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Which kind of message a topic carries, for this device. (Pure.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The hub's signed event watermark.
    Watermark,
    Manifest,
    KeySet,
    /// A root rotation link (one retained topic per root version).
    Root,
    /// The hub's signed heartbeat.
    Heartbeat,
    /// A hub-signed request for an app's logs (`crate::logstream`).
    LogRequest,
    /// Nothing this agent subscribes to: ignored (and acknowledged).
    Other,
}

pub fn route(topic: &str, device: &DeviceId) -> Route {
    let roots = topics::roots();
    let roots_prefix = roots.trim_end_matches('+');
    if topic == topics::acks(device) {
        Route::Watermark
    } else if topic == topics::manifest(device) {
        Route::Manifest
    } else if topic == topics::keyset() {
        Route::KeySet
    } else if topic == topics::heartbeat() {
        Route::Heartbeat
    } else if topic == topics::log_requests(device) {
        Route::LogRequest
    } else if topic
        .strip_prefix(roots_prefix)
        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    {
        Route::Root
    } else {
        Route::Other
    }
}

/// What the trust gate made of a message: a manifest's or a key set's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gated {
    Manifest(ManifestOutcome),
    KeySet(KeySetOutcome),
    Root(RootOutcome),
    Heartbeat(HeartbeatOutcome),
}

/// What the inbox does with a gated message (see [`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A newer manifest, committed: it becomes the desired state and
    /// `ManifestApplied` is queued.
    Accepted(Manifest),
    /// A newer key set, committed: `KeySetAccepted` is queued and a held
    /// manifest is verified again.
    KeySetAdopted { version: u64 },
    /// A newer root, committed: `RootAdopted` is queued, a key set held for
    /// it and the next held link are verified again.
    RootAdopted { version: u64 },
    /// A root link ahead of the device's root (several rotations while it was
    /// away; retained links arrive in any order): kept until its turn, not a
    /// refusal.
    RootAhead { version: u64 },
    /// A verified hub heartbeat: the hub contact moves.
    Heartbeat { issued_at: u64, time_floor: u64 },
    /// What the device already has (a retained manifest or key set delivered
    /// again): nothing to do.
    Duplicate,
    /// Refused for a key or epoch that a newer key set may bring (after a
    /// rotation the manifest can arrive first), or a key set signed by a root
    /// that a root rotation may bring: counted and reported like any refusal,
    /// and kept to be verified again.
    Held {
        reason: String,
        counters: RejectCounters,
    },
    /// Refused: counted and reported; the running apps are untouched.
    Rejected {
        reason: String,
        counters: RejectCounters,
    },
    /// A held manifest (or key set) refused again after a newer key set (or
    /// root): it was counted when it arrived, so it is only logged.
    StillRefused { reason: String },
}

/// The inbox's decision on a gated message; `retry` says it is the held
/// manifest verified again, `counters` are the refusals so far. (Pure.)
pub fn decide(gated: Gated, retry: bool, counters: &RejectCounters) -> Delivery {
    let mut counters = counters.clone();
    match gated {
        Gated::Manifest(ManifestOutcome::Applied(m)) => Delivery::Accepted(m),
        Gated::Manifest(ManifestOutcome::Duplicate)
        | Gated::KeySet(KeySetOutcome::AlreadyKnown) => Delivery::Duplicate,
        Gated::Manifest(ManifestOutcome::Rejected(reason)) if retry => Delivery::StillRefused {
            reason: reason.to_string(),
        },
        Gated::Manifest(ManifestOutcome::Rejected(reason)) => {
            reason.count_into(&mut counters);
            let held = matches!(
                reason,
                RejectReason::UnknownKey { .. } | RejectReason::UnknownEpoch { .. }
            );
            let reason = reason.to_string();
            if held {
                Delivery::Held { reason, counters }
            } else {
                Delivery::Rejected { reason, counters }
            }
        }
        Gated::KeySet(KeySetOutcome::Adopted(version)) => Delivery::KeySetAdopted { version },
        Gated::KeySet(KeySetOutcome::Rejected(e)) if retry => Delivery::StillRefused {
            reason: format!("key set: {e}"),
        },
        Gated::KeySet(KeySetOutcome::Rejected(e)) => {
            counters.keyset += 1;
            let held = matches!(e, KeySetError::NotRootKey { .. });
            let reason = format!("key set: {e}");
            if held {
                Delivery::Held { reason, counters }
            } else {
                Delivery::Rejected { reason, counters }
            }
        }
        Gated::Root(RootOutcome::Adopted(version)) => Delivery::RootAdopted { version },
        Gated::Root(RootOutcome::AlreadyKnown) => Delivery::Duplicate,
        Gated::Root(RootOutcome::Rejected(RootError::NotNext { got, .. })) => {
            Delivery::RootAhead { version: got }
        }
        Gated::Root(RootOutcome::Rejected(e)) if retry => Delivery::StillRefused {
            reason: format!("root rotation: {e}"),
        },
        Gated::Root(RootOutcome::Rejected(e)) => {
            counters.root += 1;
            Delivery::Rejected {
                reason: format!("root rotation: {e}"),
                counters,
            }
        }
        Gated::Heartbeat(HeartbeatOutcome::Fresh {
            issued_at,
            time_floor,
        }) => Delivery::Heartbeat {
            issued_at,
            time_floor,
        },
        Gated::Heartbeat(HeartbeatOutcome::Rejected(e)) => {
            counters.heartbeat += 1;
            Delivery::Rejected {
                reason: format!("hub heartbeat: {e}"),
                counters,
            }
        }
    }
}

/// Most root links kept ahead of their turn (the whole chain a device could
/// have missed; more would be an attack on memory).
const MAX_ROOTS_AHEAD: usize = 16;

/// Why a manifest or key set could not be decided (it is then not
/// acknowledged, and the broker delivers it again).
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("the trust gate was lost when an earlier verification task failed")]
    GateLost,
    #[error("verification task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("persisting the decision: {0}")]
    Persist(#[source] StateError),
}

/// Where verified log requests go, each with the trusted time it was checked at.
pub type LogRequests = mpsc::UnboundedSender<(outpost_protocol::LogRequest, u64)>;

/// Handles manifests, key sets and watermarks (see the module docs).
pub struct Inbox {
    outbox: Outbox,
    /// Where the rejection counters are persisted.
    store: Arc<Store>,
    /// `Option` so it can move into `spawn_blocking` for the durable commit.
    gate: Option<TrustGate>,
    /// The desired manifest (`applied` in the view); only the inbox writes it.
    desired: Writer<Desired>,
    /// Refusals in the view; only the inbox writes them.
    rejections: Writer<Rejections>,
    /// What the device heard from the hub; only the inbox writes it.
    contact: Writer<HubContact>,
    /// The hub's verified event watermark, for the sender.
    hub: watch::Sender<HubAck>,
    /// The last manifest refused for an unknown key or epoch: after a key
    /// rotation it may arrive before the new key set (two topics), so it is
    /// verified once more when a newer key set is adopted instead of waiting
    /// for the hub to notice and resend it.
    held: Option<Vec<u8>>,
    /// The last key set refused as signed by an unknown root: after a root
    /// rotation it may arrive before the rotation link (two topics).
    held_keyset: Option<Vec<u8>>,
    /// Root links ahead of the device's root, by version, until their turn.
    roots_ahead: BTreeMap<u64, Vec<u8>>,
    /// Where verified log requests go, with trusted time (`None`: the agent
    /// serves no logs, e.g. the fleet simulator).
    logs: Option<(LogRequests, Arc<crate::logstream::LogCounters>)>,
    /// Reports refusals without a write per refusal (see [`crate::rejections`]).
    throttle: Throttle,
    /// Origin of the throttle's monotonic clock.
    started: tokio::time::Instant,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inbox({})", self.outbox.device_id())
    }
}

impl Inbox {
    pub fn new(
        gate: TrustGate,
        outbox: Outbox,
        store: Arc<Store>,
        (desired, rejections, contact): (Writer<Desired>, Writer<Rejections>, Writer<HubContact>),
        hub: watch::Sender<HubAck>,
    ) -> Inbox {
        contact.send_modify(|c| c.time_floor = gate.state().time_floor);
        Inbox {
            outbox,
            store,
            gate: Some(gate),
            desired,
            rejections,
            contact,
            hub,
            held: None,
            held_keyset: None,
            roots_ahead: BTreeMap::new(),
            logs: None,
            throttle: Throttle::default(),
            started: tokio::time::Instant::now(),
        }
    }

    /// Hand verified log requests to `tx` (`crate::logstream`).
    pub fn with_log_requests(
        mut self,
        tx: LogRequests,
        counters: Arc<crate::logstream::LogCounters>,
    ) -> Inbox {
        self.logs = Some((tx, counters));
        self
    }

    pub fn device_id(&self) -> &DeviceId {
        self.outbox.device_id()
    }

    /// The root version whose rotation link this device waits for.
    pub fn next_root(&self) -> u64 {
        self.gate
            .as_ref()
            .map_or(2, |g| g.state().root_version.saturating_add(1))
    }

    /// Verify a log request against the trusted key set and time; pass it on.
    fn log_request(&self, payload: &[u8]) {
        let device = self.device_id();
        let (Some(gate), Some((tx, counters))) = (&self.gate, &self.logs) else {
            tracing::debug!(device_id = %device, "log request ignored: this agent serves no logs");
            return;
        };
        let now = gate.state().trusted_now(crate::clock::wall_ms() / 1000);
        match outpost_protocol::LogRequest::open(payload, device, &gate.state().keyset, now) {
            Ok(req) => {
                let _ = tx.send((req, now));
            }
            Err(e) => {
                counters
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(device_id = %device, error = %e, "log request refused");
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// When the summary of deferred refusals is due, if one is.
    pub fn flush_due(&self) -> Option<tokio::time::Instant> {
        self.throttle
            .due_at()
            .map(|at| self.started + std::time::Duration::from_millis(at))
    }

    /// Persist the counters and queue one `ManifestRejected` event.
    async fn report_rejection(&self, text: String) {
        let device = self.device_id().clone();
        let counters = self.rejections.borrow().counters.clone();
        let store = self.store.clone();
        let t = text.clone();
        match tokio::task::spawn_blocking(move || store.save_rejection(&counters, &t)).await {
            Ok(Ok(())) => {}
            _ => tracing::error!(device_id = %device, "could not persist the rejection counters"),
        }
        self.outbox
            .event(EventKind::ManifestRejected { reason: text })
            .await;
    }

    /// The end of a window with deferred refusals: one summary for all.
    pub async fn flush_rejections(&mut self) {
        let now = self.now_ms();
        if let Some(summary) = self.throttle.flush(now) {
            let device = self.device_id();
            tracing::warn!(device_id = %device, refused = summary.count, last = %summary.last_reason, "refused messages in the last window");
            self.report_rejection(summary.text()).await;
        }
    }

    /// Returns whether to ack (false only when the decision could not be
    /// persisted: the broker then redelivers).
    pub async fn handle(&mut self, topic: &str, payload: Vec<u8>) -> bool {
        self.process(topic, payload, false).await
    }

    /// Run the trust gate off the async threads. The device clock is read
    /// here, at the edge; the verifier gets it as an input.
    async fn gate(&mut self, route: Route, payload: Vec<u8>) -> Result<Gated, InboxError> {
        let mut gate = self.gate.take().ok_or(InboxError::GateLost)?;
        let now = crate::clock::wall_ms() / 1000;
        let (gate, result) = tokio::task::spawn_blocking(move || {
            let r = match route {
                Route::Manifest => gate.manifest(&payload, now).map(Gated::Manifest),
                Route::Root => gate.root(&payload).map(Gated::Root),
                Route::Heartbeat => gate.heartbeat(&payload).map(Gated::Heartbeat),
                _ => gate.keyset(&payload, now).map(Gated::KeySet),
            };
            (gate, r)
        })
        .await
        .map_err(InboxError::Task)?;
        let floor = gate.state().time_floor;
        self.gate = Some(gate);
        // Anything signed that moved the floor is word from the hub.
        if floor > self.contact.borrow().time_floor {
            self.contact.send_modify(|c| {
                c.time_floor = floor;
                c.heard_at = Some(tokio::time::Instant::now());
            });
        }
        result.map_err(InboxError::Persist)
    }

    /// `handle`; with `retry` (a held manifest verified again) a second refusal
    /// is only logged, as it was counted when it first arrived.
    async fn process(&mut self, topic: &str, payload: Vec<u8>, retry: bool) -> bool {
        let device = self.device_id().clone();
        let route = route(topic, &device);
        match route {
            Route::Watermark => {
                if let Some(gate) = &self.gate {
                    let keyset = gate.state().keyset.clone();
                    delivery::on_watermark(&self.outbox, &keyset, payload, &self.hub).await;
                }
                return true;
            }
            Route::Other => {
                tracing::debug!(device_id = %device, topic, "message on an unexpected topic ignored");
                return true;
            }
            Route::LogRequest => {
                self.log_request(&payload);
                return true;
            }
            Route::Manifest | Route::KeySet | Route::Root | Route::Heartbeat => {}
        }
        let size = payload.len();
        // A manifest can be held for a later key set, a key set for a later
        // root, a root link for its turn (see `held`).
        let held_copy =
            matches!(route, Route::Manifest | Route::KeySet | Route::Root).then(|| payload.clone());
        let gated = match self.gate(route, payload).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(device_id = %device, error = %e, "could not decide; not acking so the broker redelivers");
                return false;
            }
        };
        let counters = self.rejections.borrow().counters.clone();
        match decide(gated, retry, &counters) {
            Delivery::Accepted(m) => {
                tracing::info!(device_id = %device, epoch = m.epoch, generation = m.generation, apps = m.apps.len(), "manifest accepted and persisted");
                let (epoch, generation) = (m.epoch, m.generation);
                self.desired.send_replace(Some(Arc::new(m)));
                self.outbox
                    .event(EventKind::ManifestApplied { epoch, generation })
                    .await;
            }
            Delivery::KeySetAdopted { version } => {
                tracing::info!(device_id = %device, version, "key set adopted");
                self.outbox
                    .event(EventKind::KeySetAccepted { version })
                    .await;
                if let Some(held) = self.held.take() {
                    tracing::info!(device_id = %device, "re-verifying the manifest held for a newer key set");
                    return Box::pin(self.process(&topics::manifest(&device), held, true)).await;
                }
            }
            Delivery::RootAdopted { version } => {
                tracing::info!(device_id = %device, version, "root key adopted through its rotation link");
                self.outbox.event(EventKind::RootAdopted { version }).await;
                let next = version.saturating_add(1);
                if let Some(link) = self.roots_ahead.remove(&next) {
                    self.roots_ahead.retain(|v, _| *v > next);
                    return Box::pin(self.process(&topics::root(next), link, true)).await;
                }
                self.roots_ahead.clear();
                if let Some(held) = self.held_keyset.take() {
                    tracing::info!(device_id = %device, "re-verifying the key set held for a newer root");
                    return Box::pin(self.process(&topics::keyset(), held, true)).await;
                }
            }
            Delivery::RootAhead { version } => {
                tracing::debug!(device_id = %device, version, "root link ahead of its turn; kept");
                if let Some(link) = held_copy {
                    if self.roots_ahead.len() < MAX_ROOTS_AHEAD
                        || self.roots_ahead.contains_key(&version)
                    {
                        self.roots_ahead.insert(version, link);
                    }
                }
            }
            Delivery::Heartbeat {
                issued_at,
                time_floor,
            } => {
                tracing::debug!(device_id = %device, issued_at, time_floor, "hub heartbeat");
                // `heard_at` moved in `gate` if the floor did: a replayed old
                // heartbeat does not count as word from the hub.
                self.contact.send_modify(|c| {
                    c.last_heartbeat = Some(c.last_heartbeat.unwrap_or(0).max(issued_at));
                });
            }
            Delivery::Duplicate => {
                tracing::debug!(device_id = %device, "re-delivered; already have it");
            }
            Delivery::StillRefused { reason } => {
                if route == Route::KeySet {
                    // Signed by a root further down the chain than the one
                    // just adopted: keep it for the next link.
                    tracing::info!(device_id = %device, reason = %reason, "held key set still waits for a newer root");
                    self.held_keyset = held_copy;
                } else {
                    tracing::warn!(device_id = %device, reason = %reason, "held manifest still refused after the new key set");
                }
            }
            Delivery::Held { reason, counters } => {
                if route == Route::KeySet {
                    self.held_keyset = held_copy;
                } else {
                    self.held = held_copy;
                }
                self.refused(reason, counters, size).await;
            }
            Delivery::Rejected { reason, counters } => {
                self.refused(reason, counters, size).await;
            }
        }
        true
    }

    /// Count a refusal in the view at once; persist and report it now or in
    /// the window's summary.
    async fn refused(&mut self, text: String, counters: RejectCounters, size: usize) {
        let device = self.device_id().clone();
        self.rejections.send_replace(Rejections {
            counters,
            last: Some(text.clone()),
        });
        let now = self.now_ms();
        match self.throttle.on_reject(now, &text) {
            OnReject::Report => {
                tracing::warn!(device_id = %device, size, reason = %text, "refused; running apps untouched");
                self.report_rejection(text).await;
            }
            OnReject::Defer => {
                // trace, not debug: a flood must not become a flood of log lines.
                tracing::trace!(device_id = %device, size, reason = %text, "refused; counted, summarised at the end of the window");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Reporter;
    use crate::trust::initial_trust;
    use crate::view::parts;
    use outpost_protocol::envelope::{seal_value, Kind};
    use outpost_protocol::{AppSpec, KeyId, KeySet, KeySetError, SignedKeySet, SigningKey};
    use std::time::Duration;

    struct Rig {
        inbox: Inbox,
        reporter: Reporter,
        root: SigningKey,
        signer: SigningKey,
        desired: watch::Receiver<Option<Arc<Manifest>>>,
        store: Arc<Store>,
        _dir: tempfile::TempDir,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let root = SigningKey::generate().unwrap();
        let signer = SigningKey::generate().unwrap();
        let ks = SignedKeySet::sign(
            &KeySet {
                version: 1,
                issued_at: 0,
                keys: vec![signer.public_key()],
                expires_at: outpost_protocol::NEVER,
                root_version: 1,
            },
            &root,
        );
        let trust = initial_trust(root.public_key(), &ks.0, "keyset.bin", 0).unwrap();
        let device: DeviceId = "pi-1".parse().unwrap();
        let key = Arc::new(SigningKey::generate().unwrap());
        let outbox = Outbox::new(device.clone(), key.clone(), store.clone(), 100);
        let (writers, parts) = parts(None, Rejections::default());
        let reporter = Reporter::new(
            outbox.clone(),
            key,
            parts,
            1,
            dir.path().join("status.json"),
        );
        let desired = writers.desired.subscribe();
        let (hub, _) = watch::channel(HubAck::default());
        Rig {
            inbox: Inbox::new(
                TrustGate::new(device, trust, store.clone()),
                outbox,
                store.clone(),
                (writers.desired, writers.rejections, writers.hub),
                hub,
            ),
            reporter,
            root,
            signer,
            desired,
            store,
            _dir: dir,
        }
    }

    fn sealed(signer: &SigningKey, generation: u64) -> Vec<u8> {
        sealed_at(signer, 1, generation)
    }

    fn sealed_at(signer: &SigningKey, epoch: u64, generation: u64) -> Vec<u8> {
        let image = format!("reg/app@sha256:{}", "11".repeat(32))
            .parse()
            .unwrap();
        let m = Manifest {
            device_id: "pi-1".parse().unwrap(),
            epoch,
            generation,
            issued_at: 0,
            key_id: signer.key_id(),
            apps: vec![AppSpec::new("web", image)],
            release: Default::default(),
            expires_at: outpost_protocol::NEVER,
        };
        seal_value(Kind::Manifest, signer, &m).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn accepted_manifests_become_desired_and_rejections_are_counted_persisted_and_inert() {
        let mut r = rig();
        let topic = topics::manifest(&"pi-1".parse().unwrap());
        let good = sealed(&r.signer, 2);
        assert!(r.inbox.handle(&topic, good.clone()).await);
        assert_eq!(r.desired.borrow().as_ref().unwrap().generation, 2);
        assert_eq!(r.reporter.view().applied, Some((1, 2)));

        // Duplicate: silent.
        r.desired.mark_unchanged();
        assert!(r.inbox.handle(&topic, good.clone()).await);
        assert!(!r.desired.has_changed().unwrap());
        assert_eq!(r.reporter.view().rejected, RejectCounters::default());

        // Replay, tamper, junk: acked (no redelivery loop), counted, persisted,
        // desired state untouched.
        let mut flipped = good.clone();
        let n = flipped.len();
        flipped[n - 1] ^= 1;
        for bad in [sealed(&r.signer, 1), flipped, vec![7u8; 1 << 20]] {
            assert!(r.inbox.handle(&topic, bad).await);
        }
        assert!(!r.desired.has_changed().unwrap());
        let v = r.reporter.view();
        assert_eq!(
            (
                v.rejected.rollback,
                v.rejected.bad_signature,
                v.rejected.too_large
            ),
            (1, 1, 1)
        );
        assert!(v.last_rejection.unwrap().contains("over the"));
        let loaded = r.store.load().unwrap();
        assert_eq!(loaded.manifest.as_deref(), Some(good.as_slice()));
        // The first refusal is persisted and reported at once, the next two
        // only counted until the window ends (a flood costs no write each).
        assert_eq!(loaded.rejected.total(), 1);
        assert_eq!(loaded.event_seq, 2);
        tokio::time::advance(Duration::from_millis(crate::rejections::WINDOW_MS)).await;
        r.inbox.flush_rejections().await;
        let loaded = r.store.load().unwrap();
        assert_eq!(loaded.rejected.total(), 3);
        // Applied + first refusal + one summary of the other two.
        assert_eq!(loaded.event_seq, 3);

        // Other topics are ignored (and acked).
        assert!(r.inbox.handle("outpost/v1/dev/pi-1/other", vec![1]).await);
        assert_eq!(r.store.load().unwrap().event_seq, 3);
    }

    #[tokio::test]
    async fn a_manifest_that_arrives_before_its_key_set_is_applied_when_the_key_set_comes() {
        let mut r = rig();
        let topic = topics::manifest(&"pi-1".parse().unwrap());
        assert!(r.inbox.handle(&topic, sealed(&r.signer, 3)).await);
        // After a rotation: the re-signed manifest first, then its key set.
        let next = SigningKey::generate().unwrap();
        assert!(r.inbox.handle(&topic, sealed_at(&next, 2, 1)).await);
        let v = r.reporter.view();
        assert_eq!((v.applied, v.rejected.total()), (Some((1, 3)), 1));
        let ks = SignedKeySet::sign(
            &KeySet {
                version: 2,
                issued_at: 0,
                keys: vec![next.public_key()],
                expires_at: outpost_protocol::NEVER,
                root_version: 1,
            },
            &r.root,
        );
        assert!(r.inbox.handle(&topics::keyset(), ks.0).await);
        let v = r.reporter.view();
        assert_eq!(v.applied, Some((2, 1)));
        assert_eq!(
            v.rejected.total(),
            1,
            "the held manifest is not counted twice"
        );
        assert_eq!(r.desired.borrow().as_ref().unwrap().epoch, 2);
        // Junk signed by a key nobody trusts is held too, and stays refused
        // (logged, not counted again) when a later key set arrives.
        let stranger = SigningKey::generate().unwrap();
        assert!(r.inbox.handle(&topic, sealed_at(&stranger, 3, 1)).await);
        let ks3 = SignedKeySet::sign(
            &KeySet {
                version: 3,
                issued_at: 0,
                keys: vec![next.public_key()],
                expires_at: outpost_protocol::NEVER,
                root_version: 1,
            },
            &r.root,
        );
        assert!(r.inbox.handle(&topics::keyset(), ks3.0).await);
        let v = r.reporter.view();
        assert_eq!((v.applied, v.rejected.total()), (Some((2, 1)), 2));
    }

    /// Two root rotations while the device was away: the links and the key
    /// set signed by the newest root arrive in the worst order, and the
    /// device still ends on the new root with the new key set, nothing
    /// counted as refused but the key set's first arrival.
    #[tokio::test]
    async fn a_root_chain_and_its_key_set_are_adopted_in_any_order() {
        let mut r = rig();
        let r2 = SigningKey::generate().unwrap();
        let r3 = SigningKey::generate().unwrap();
        let l2 = outpost_protocol::RootRotation::sign(2, &r.root, &r2, 5);
        let l3 = outpost_protocol::RootRotation::sign(3, &r2, &r3, 6);
        let ks = SignedKeySet::sign(
            &KeySet {
                version: 2,
                issued_at: 7,
                keys: vec![r.signer.public_key()],
                expires_at: outpost_protocol::NEVER,
                root_version: 1,
            },
            &r3,
        );
        assert!(r.inbox.handle(&topics::keyset(), ks.0).await);
        assert!(r.inbox.handle(&topics::root(3), l3).await);
        assert!(r.inbox.handle(&topics::root(2), l2.clone()).await);
        let state = r.store.load().unwrap().trust.unwrap();
        assert_eq!(
            (state.root, state.root_version, state.keyset.version),
            (r3.public_key(), 3, 2)
        );
        assert_eq!(state.time_floor, 7);
        let v = r.reporter.view();
        assert_eq!((v.rejected.keyset, v.rejected.total()), (1, 1));
        assert_eq!(v.time_floor, 7);
        // A re-delivered old link is nothing.
        assert!(r.inbox.handle(&topics::root(2), l2).await);
        assert_eq!(r.reporter.view().rejected.total(), 1);
    }

    #[tokio::test]
    async fn heartbeats_move_the_hub_contact_and_forged_ones_are_counted() {
        let mut r = rig();
        let hb = |t| {
            outpost_protocol::Heartbeat {
                issued_at: t,
                interval_secs: 60,
            }
            .seal(&r.signer)
        };
        assert!(r.inbox.handle(&topics::heartbeat(), hb(1_000)).await);
        let v = r.reporter.view();
        assert_eq!((v.last_heartbeat, v.time_floor), (Some(1_000), 1_000));
        let stranger = SigningKey::generate().unwrap();
        let forged = outpost_protocol::Heartbeat {
            issued_at: 9_999,
            interval_secs: 60,
        }
        .seal(&stranger);
        assert!(r.inbox.handle(&topics::heartbeat(), forged).await);
        let v = r.reporter.view();
        assert_eq!((v.last_heartbeat, v.time_floor), (Some(1_000), 1_000));
        assert_eq!(v.rejected.heartbeat, 1);
    }

    #[test]
    fn route_table() {
        let device: DeviceId = "pi-1".parse().unwrap();
        let other: DeviceId = "pi-2".parse().unwrap();
        let cases = [
            (topics::acks(&device), Route::Watermark),
            (topics::manifest(&device), Route::Manifest),
            (topics::keyset(), Route::KeySet),
            (topics::heartbeat(), Route::Heartbeat),
            (topics::root(2), Route::Root),
            (topics::log_requests(&device), Route::LogRequest),
            (topics::log_requests(&other), Route::Other),
            ("outpost/v1/roots/".to_string(), Route::Other),
            ("outpost/v1/roots/2/x".to_string(), Route::Other),
            // Another device's topics are not ours, whatever arrives on them.
            (topics::manifest(&other), Route::Other),
            (topics::acks(&other), Route::Other),
            ("outpost/v1/dev/pi-1/other".to_string(), Route::Other),
            (String::new(), Route::Other),
        ];
        for (topic, want) in cases {
            assert_eq!(route(&topic, &device), want, "{topic}");
        }
    }

    #[test]
    fn decide_table() {
        let manifest = Manifest {
            device_id: "pi-1".parse().unwrap(),
            epoch: 1,
            generation: 2,
            issued_at: 0,
            key_id: KeyId("k".into()),
            apps: vec![],
            release: Default::default(),
            expires_at: outpost_protocol::NEVER,
        };
        let before = RejectCounters {
            rollback: 4,
            keyset: 1,
            ..RejectCounters::default()
        };
        let counted = |f: fn(&mut RejectCounters)| {
            let mut c = before.clone();
            f(&mut c);
            c
        };
        let unknown_key = RejectReason::UnknownKey {
            key_id: KeyId("new".into()),
        };
        let unknown_epoch = RejectReason::UnknownEpoch { epoch: 3, known: 2 };
        let rollback = RejectReason::Rollback {
            last: (1, 2),
            got: (1, 1),
        };
        let bad_keyset = KeySetError::BadSignature;
        use Gated::{KeySet as K, Manifest as M};
        // (gated, retry, decision)
        let cases = [
            (
                M(ManifestOutcome::Applied(manifest.clone())),
                false,
                Delivery::Accepted(manifest.clone()),
            ),
            (M(ManifestOutcome::Duplicate), false, Delivery::Duplicate),
            (K(KeySetOutcome::AlreadyKnown), false, Delivery::Duplicate),
            (
                K(KeySetOutcome::Adopted(3)),
                false,
                Delivery::KeySetAdopted { version: 3 },
            ),
            (
                M(ManifestOutcome::Rejected(unknown_key.clone())),
                false,
                Delivery::Held {
                    reason: unknown_key.to_string(),
                    counters: counted(|c| c.unknown_key += 1),
                },
            ),
            (
                M(ManifestOutcome::Rejected(unknown_epoch.clone())),
                false,
                Delivery::Held {
                    reason: unknown_epoch.to_string(),
                    counters: counted(|c| c.unknown_key += 1),
                },
            ),
            (
                M(ManifestOutcome::Rejected(rollback.clone())),
                false,
                Delivery::Rejected {
                    reason: rollback.to_string(),
                    counters: counted(|c| c.rollback += 1),
                },
            ),
            // The held manifest verified again: counted when it arrived.
            (
                M(ManifestOutcome::Rejected(unknown_key.clone())),
                true,
                Delivery::StillRefused {
                    reason: unknown_key.to_string(),
                },
            ),
            (
                M(ManifestOutcome::Rejected(rollback.clone())),
                true,
                Delivery::StillRefused {
                    reason: rollback.to_string(),
                },
            ),
            (
                K(KeySetOutcome::Rejected(bad_keyset.clone())),
                false,
                Delivery::Rejected {
                    reason: format!("key set: {bad_keyset}"),
                    counters: counted(|c| c.keyset += 1),
                },
            ),
        ];
        for (gated, retry, want) in cases {
            let label = format!("{gated:?} retry={retry}");
            assert_eq!(decide(gated, retry, &before), want, "{label}");
        }
    }
}
