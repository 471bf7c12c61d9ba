//! `outpost-agent run`: loads state, then runs the link, the trust gate, the
//! reconcile loop, health probes and the outbox sender until cancelled.
//!
//! Start-up never waits for the network: the persisted manifest (if any) is
//! reconciled at once, while the link connects in the background. Cancelling (on
//! SIGTERM) stops the tasks and leaves every container running.

use crate::config::{Config, ConfigError};
use crate::delivery::{self, HubAck, Sender};
use crate::driver::{ContainerDriver, ImageProvider};
use crate::health::{self, HealthTarget};
use crate::link::{self, Inbound};
use crate::reconcile::execute::Executor;
use crate::reconcile::plan::Policy;
use crate::reconcile::Reconciler;
use crate::rejections::{OnReject, Throttle};
use crate::report::{Reporter, View};
use crate::state::{StateError, Store};
use crate::trust::{initial_trust, KeySetOutcome, ManifestOutcome, TrustError, TrustGate};
use outpost_protocol::{topics, EventKind, Manifest, RejectReason, SigningKey};
use rumqttc::AsyncClient;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for tasks before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("device key {path}: {detail}")]
    DeviceKey { path: PathBuf, detail: String },
    #[error("initial key set {path}: {source}")]
    KeySetFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Read the device's private key (PKCS#8, written by `init`).
pub fn load_device_key(path: &Path) -> Result<SigningKey, AgentError> {
    let bytes = std::fs::read(path).map_err(|e| AgentError::DeviceKey {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    SigningKey::from_pkcs8(&bytes).map_err(|e| AgentError::DeviceKey {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Open the state database, waiting a little while another short-lived process
/// (`outpost-agent status` or `stop-all`) holds it.
async fn open_store(path: &Path) -> Result<Store, StateError> {
    let mut tries = 0;
    loop {
        match Store::open(path) {
            Err(StateError::Locked { .. }) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// Run the agent until `cancel` fires.
pub async fn run(
    cfg: Config,
    images: Arc<dyn ImageProvider>,
    driver: Arc<dyn ContainerDriver>,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    let device = cfg.device_id.clone();
    let key = load_device_key(&cfg.key_file())?;
    let store = Arc::new(open_store(&cfg.state_file()).await?);
    let loaded = store.load()?;
    let boots = store.bump_boots()?;
    let trust = match loaded.trust.clone() {
        Some(t) => t,
        None => {
            let bytes =
                std::fs::read(&cfg.keyset_file).map_err(|source| AgentError::KeySetFile {
                    path: cfg.keyset_file.clone(),
                    source,
                })?;
            let t = initial_trust(
                cfg.root_public_key()?,
                &bytes,
                &cfg.keyset_file.display().to_string(),
            )?;
            store.save_trust(&t)?;
            t
        }
    };
    let gate = TrustGate::new(device.clone(), trust, store.clone());
    let manifest: Option<Arc<Manifest>> = match &loaded.manifest {
        None => None,
        Some(bytes) => match gate.persisted_manifest(bytes, loaded.manifest_key.as_ref()) {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                // Don't act on a manifest we cannot trust; don't tear anything
                // down either: wait for the hub to send a good one.
                tracing::error!(device_id = %device, error = %e, "ignoring persisted manifest");
                None
            }
        },
    };
    tracing::info!(
        device_id = %device,
        boots,
        generation = manifest.as_ref().map(|m| m.generation),
        outbox = loaded.outbox_len,
        "agent starting"
    );
    let view = View {
        applied: manifest.as_ref().map(|m| (m.epoch, m.generation)),
        rejected: loaded.rejected.clone(),
        last_rejection: loaded.last_rejection.clone(),
        ..View::default()
    };
    let reporter = Arc::new(Reporter::new(
        device.clone(),
        key,
        store.clone(),
        cfg.outbox_limit,
        boots,
        view,
        cfg.status_file(),
    ));

    let tracker = TaskTracker::new();
    let (desired_tx, desired_rx) = watch::channel(manifest);
    let (targets_tx, targets_rx) = watch::channel(BTreeMap::<String, HealthTarget>::new());
    let (ready_tx, ready_rx) = watch::channel(BTreeSet::<String>::new());

    tracker.spawn(log_keeper(driver.clone(), cancel.clone()));
    let exec = Executor {
        images,
        driver,
        reporter: reporter.clone(),
        volumes_dir: cfg.volumes_dir(),
        stop_grace: Duration::from_secs(10),
    };
    let reconciler = Reconciler::new(
        exec,
        reporter.clone(),
        Policy::default(),
        Duration::from_millis(cfg.resync_interval_ms.max(100)),
        desired_rx,
        targets_tx,
        ready_rx,
        loaded.restarts.clone(),
    )
    .with_retention(cfg.images_dir());
    tracker.spawn(reconciler.run(cancel.clone()));
    tracker.spawn(health::run(
        targets_rx,
        reporter.clone(),
        ready_tx,
        cancel.clone(),
    ));
    tracker.spawn(status_file_writer(reporter.clone(), cancel.clone()));

    // The link.
    let broker = cfg.broker_addr()?;
    match link::connect(&device, &broker, cfg.ca_file.as_deref()) {
        Err(e) => {
            // Apps keep running from the persisted manifest; only the link is off.
            tracing::error!(device_id = %device, broker = %cfg.broker, error = %e, "cannot set up the broker link; running offline");
        }
        Ok((client, driver)) => {
            let (in_tx, in_rx) = mpsc::unbounded_channel();
            let (ack_tx, ack_rx) = mpsc::unbounded_channel();
            let (conn_tx, conn_rx) = watch::channel(None);
            let (hub_tx, hub_rx) = watch::channel(HubAck::default());
            tracker.spawn(driver.run(in_tx, ack_tx, cancel.clone()));
            let sender = Sender {
                client: client.clone(),
                reporter: reporter.clone(),
                conn: conn_rx,
                acks: ack_rx,
                hub: hub_rx,
                status_interval: Duration::from_secs(cfg.status_interval_secs.max(1)),
            };
            tracker.spawn(sender.run(cancel.clone()));
            let inbox = Inbox {
                client,
                gate: Some(gate),
                reporter: reporter.clone(),
                desired: desired_tx,
                conn: conn_tx,
                hub: hub_tx,
                epoch: 0,
                held: None,
                throttle: Throttle::default(),
                started: tokio::time::Instant::now(),
            };
            tracker.spawn(inbox.run(in_rx, cancel.clone()));
        }
    }

    cancel.cancelled().await;
    tracing::info!(device_id = %device, "shutting down; apps keep running");
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(device_id = %device, "some tasks did not stop within the grace period");
    }
    let _ = reporter.write_local_status();
    Ok(())
}

/// How often app logs are checked for rotation. An app writing 100 KB/s
/// overshoots the file size by at most this much worth of output.
const LOG_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Rotates app logs and keeps them under their cap (see `outpost_runtime::logs`).
async fn log_keeper(driver: Arc<dyn ContainerDriver>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(LOG_CHECK_INTERVAL) => {}
        }
        let d = driver.clone();
        match tokio::task::spawn_blocking(move || d.maintain_logs()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "maintaining app logs"),
            Err(e) => tracing::warn!(error = %e, "maintaining app logs"),
        }
    }
}

/// Keeps `<run_dir>/status.json` current for `outpost-agent status`.
async fn status_file_writer(reporter: Arc<Reporter>, cancel: CancellationToken) {
    let mut changes = reporter.subscribe();
    loop {
        let r = reporter.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || r.write_local_status()).await {
            tracing::warn!(error = %e, "writing local status file");
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = changes.changed() => if r.is_err() { break },
            // Refresh now and then even without changes (outbox count).
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        // Coalesce bursts of changes into one write.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Handles what arrives over the link: connection changes and messages.
struct Inbox {
    client: AsyncClient,
    /// `Option` so it can move into `spawn_blocking` for the durable commit.
    gate: Option<TrustGate>,
    reporter: Arc<Reporter>,
    desired: watch::Sender<Option<Arc<Manifest>>>,
    conn: watch::Sender<Option<u64>>,
    /// The hub's verified event watermark, for the sender.
    hub: watch::Sender<HubAck>,
    epoch: u64,
    /// The last manifest refused for an unknown key or epoch: after a key
    /// rotation it may arrive before the new key set (two topics), so it is
    /// verified once more when a newer key set is adopted instead of waiting
    /// for the hub to notice and resend it.
    held: Option<Vec<u8>>,
    /// Reports refusals without a write per refusal (see [`crate::rejections`]).
    throttle: Throttle,
    /// Origin of the throttle's monotonic clock.
    started: tokio::time::Instant,
}

impl Inbox {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Persist the counters and queue one `ManifestRejected` event.
    async fn report_rejection(&self, text: String) {
        let device = self.reporter.device_id().clone();
        let counters = self.reporter.view().rejected;
        let store = self.reporter.store().clone();
        let t = text.clone();
        match tokio::task::spawn_blocking(move || store.save_rejection(&counters, &t)).await {
            Ok(Ok(())) => {}
            _ => tracing::error!(device_id = %device, "could not persist the rejection counters"),
        }
        self.reporter
            .event(EventKind::ManifestRejected { reason: text })
            .await;
    }

    /// The end of a window with deferred refusals: one summary for all.
    async fn flush_rejections(&mut self) {
        let now = self.now_ms();
        if let Some(summary) = self.throttle.flush(now) {
            let device = self.reporter.device_id();
            tracing::warn!(device_id = %device, refused = summary.count, last = %summary.last_reason, "refused messages in the last window");
            self.report_rejection(summary.text()).await;
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Inbound>, cancel: CancellationToken) {
        let device = self.reporter.device_id().clone();
        loop {
            let due = self
                .throttle
                .due_at()
                .map(|at| self.started + Duration::from_millis(at));
            let msg = tokio::select! {
                _ = cancel.cancelled() => break,
                m = rx.recv() => match m { Some(m) => m, None => break },
                _ = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.flush_rejections().await;
                    continue;
                }
            };
            match msg {
                Inbound::Connected { .. } => {
                    // Re-subscribe on every CONNACK: a fresh session has none.
                    if let Err(e) = link::subscribe(&self.client, &device).await {
                        tracing::warn!(device_id = %device, error = %e, "subscribe failed");
                    }
                    self.epoch += 1;
                    self.conn.send_replace(Some(self.epoch));
                    self.reporter.update(|v| v.connected = true);
                }
                Inbound::Disconnected => {
                    if self.conn.borrow().is_some() {
                        self.conn.send_replace(None);
                    }
                    self.reporter.update(|v| v.connected = false);
                }
                Inbound::Message(p) => {
                    let ack = self.handle(&p.topic, p.payload.to_vec()).await;
                    if ack {
                        if let Err(e) = self.client.ack(&p).await {
                            tracing::warn!(device_id = %device, error = %e, "ack failed");
                        }
                    }
                }
            }
        }
    }

    /// Returns whether to ack (false only when the decision could not be
    /// persisted: the broker then redelivers).
    async fn handle(&mut self, topic: &str, payload: Vec<u8>) -> bool {
        self.process(topic, payload, false).await
    }

    /// `handle`; with `retry` (a held manifest verified again) a second refusal
    /// is only logged, as it was counted when it first arrived.
    async fn process(&mut self, topic: &str, payload: Vec<u8>, retry: bool) -> bool {
        let device = self.reporter.device_id().clone();
        if topic == topics::acks(&device) {
            if let Some(gate) = &self.gate {
                let keyset = gate.state().keyset.clone();
                delivery::on_watermark(&self.reporter, &keyset, payload, &self.hub).await;
            }
            return true;
        }
        let is_manifest = topic == topics::manifest(&device);
        let is_keyset = topic == topics::keyset();
        if !is_manifest && !is_keyset {
            tracing::debug!(device_id = %device, topic, "message on an unexpected topic ignored");
            return true;
        }
        let Some(mut gate) = self.gate.take() else {
            return false;
        };
        let size = payload.len();
        // Only a manifest can be held for a later key set (see `held`).
        let held_copy = if is_manifest {
            payload.clone()
        } else {
            Vec::new()
        };
        let (gate, result) = match tokio::task::spawn_blocking(move || {
            let r = if is_manifest {
                gate.manifest(&payload).map(Ok)
            } else {
                gate.keyset(&payload).map(Err)
            };
            (gate, r)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(device_id = %device, error = %e, "trust task failed");
                return false;
            }
        };
        self.gate = Some(gate);
        let rejection = match result {
            Err(e) => {
                tracing::error!(device_id = %device, error = %e, "could not persist; not acking so the broker redelivers");
                return false;
            }
            Ok(Ok(ManifestOutcome::Applied(m))) => {
                tracing::info!(device_id = %device, epoch = m.epoch, generation = m.generation, apps = m.apps.len(), "manifest accepted and persisted");
                let (epoch, generation) = (m.epoch, m.generation);
                self.desired.send_replace(Some(Arc::new(m)));
                self.reporter
                    .update(|v| v.applied = Some((epoch, generation)));
                self.reporter
                    .event(EventKind::ManifestApplied { epoch, generation })
                    .await;
                None
            }
            Ok(Ok(ManifestOutcome::Duplicate)) => {
                tracing::debug!(device_id = %device, "manifest re-delivered; already applied");
                None
            }
            Ok(Ok(ManifestOutcome::Rejected(reason))) if retry => {
                tracing::warn!(device_id = %device, reason = %reason, "held manifest still refused after the new key set");
                None
            }
            Ok(Ok(ManifestOutcome::Rejected(reason))) => {
                if matches!(
                    reason,
                    RejectReason::UnknownKey { .. } | RejectReason::UnknownEpoch { .. }
                ) {
                    self.held = Some(held_copy);
                }
                let text = reason.to_string();
                let mut counters = self.reporter.view().rejected;
                reason.count_into(&mut counters);
                Some((counters, text))
            }
            Ok(Err(KeySetOutcome::Adopted(version))) => {
                tracing::info!(device_id = %device, version, "key set adopted");
                self.reporter
                    .event(EventKind::KeySetAccepted { version })
                    .await;
                if let Some(held) = self.held.take() {
                    tracing::info!(device_id = %device, "re-verifying the manifest held for a newer key set");
                    return Box::pin(self.process(&topics::manifest(&device), held, true)).await;
                }
                None
            }
            Ok(Err(KeySetOutcome::AlreadyKnown)) => None,
            Ok(Err(KeySetOutcome::Rejected(e))) => {
                let text = format!("key set: {e}");
                let mut counters = self.reporter.view().rejected;
                counters.keyset += 1;
                Some((counters, text))
            }
        };
        if let Some((counters, text)) = rejection {
            self.reporter.update(|v| {
                v.rejected = counters;
                v.last_rejection = Some(text.clone());
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
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::initial_trust;
    use outpost_protocol::envelope::{seal_value, Kind};
    use outpost_protocol::{AppSpec, KeySet, RejectCounters, SignedKeySet};

    struct Rig {
        inbox: Inbox,
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
            },
            &root,
        );
        let trust = initial_trust(root.public_key(), &ks.0, "keyset.bin").unwrap();
        let device: outpost_protocol::DeviceId = "pi-1".parse().unwrap();
        let reporter = Arc::new(Reporter::new(
            device.clone(),
            SigningKey::generate().unwrap(),
            store.clone(),
            100,
            1,
            View::default(),
            dir.path().join("status.json"),
        ));
        let (client, _driver) = link::connect(
            &device,
            &crate::config::parse_broker("mqtt://127.0.0.1:1").unwrap(),
            None,
        )
        .unwrap();
        let (desired_tx, desired) = watch::channel(None);
        let (conn, _) = watch::channel(None);
        let (hub, _) = watch::channel(HubAck::default());
        Rig {
            inbox: Inbox {
                client,
                gate: Some(TrustGate::new(device, trust, store.clone())),
                reporter,
                desired: desired_tx,
                conn,
                hub,
                epoch: 0,
                held: None,
                throttle: Throttle::default(),
                started: tokio::time::Instant::now(),
            },
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
        assert_eq!(r.inbox.reporter.view().applied, Some((1, 2)));

        // Duplicate: silent.
        r.desired.mark_unchanged();
        assert!(r.inbox.handle(&topic, good.clone()).await);
        assert!(!r.desired.has_changed().unwrap());
        assert_eq!(r.inbox.reporter.view().rejected, RejectCounters::default());

        // Replay, tamper, junk: acked (no redelivery loop), counted, persisted,
        // desired state untouched.
        let mut flipped = good.clone();
        let n = flipped.len();
        flipped[n - 1] ^= 1;
        for bad in [sealed(&r.signer, 1), flipped, vec![7u8; 1 << 20]] {
            assert!(r.inbox.handle(&topic, bad).await);
        }
        assert!(!r.desired.has_changed().unwrap());
        let v = r.inbox.reporter.view();
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
        let v = r.inbox.reporter.view();
        assert_eq!((v.applied, v.rejected.total()), (Some((1, 3)), 1));
        let ks = SignedKeySet::sign(
            &KeySet {
                version: 2,
                issued_at: 0,
                keys: vec![next.public_key()],
            },
            &r.root,
        );
        assert!(r.inbox.handle(&topics::keyset(), ks.0).await);
        let v = r.inbox.reporter.view();
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
            },
            &r.root,
        );
        assert!(r.inbox.handle(&topics::keyset(), ks3.0).await);
        let v = r.inbox.reporter.view();
        assert_eq!((v.applied, v.rejected.total()), (Some((2, 1)), 2));
    }
}
