//! `outpost-agent run`: loads state, then runs the link, the inbox (trust
//! gate), the reconcile loop, health probes and the outbox sender until
//! cancelled. It makes the view's parts and hands each writer to the one task
//! that owns it (see [`crate::view`]); the link task here owns the link state.
//!
//! Start-up never waits for the network: the persisted manifest (if any) is
//! reconciled at once, while the link connects in the background. Cancelling (on
//! SIGTERM) stops the tasks and leaves every container running.

use crate::config::{Config, ConfigError};
use crate::delivery::{HubAck, Sender};
use crate::driver::{ContainerDriver, ImageProvider};
use crate::health::{self, HealthTarget};
use crate::inbox::Inbox;
use crate::link::{self, Inbound};
use crate::outbox::Outbox;
use crate::reconcile::execute::Executor;
use crate::reconcile::plan::Policy;
use crate::reconcile::Reconciler;
use crate::report::Reporter;
use crate::state::{ReleaseLog, RestartLog, StateError, Store};
use crate::trust::{initial_trust, TrustError, TrustGate};
use crate::view::{self, Link, Rejections, Writer};
use outpost_protocol::{Manifest, SigningKey};
use rumqttc::AsyncClient;
use std::collections::BTreeMap;
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
                crate::clock::wall_ms() / 1000,
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
    let key = Arc::new(key);
    let outbox = Outbox::new(device.clone(), key.clone(), store.clone(), cfg.outbox_limit);
    // Every part of the view, each writer handed below to the task that owns it.
    let (writers, parts) = view::parts(
        manifest,
        Rejections {
            counters: loaded.rejected.clone(),
            last: loaded.last_rejection.clone(),
        },
    );
    let view::Writers {
        desired,
        rejections,
        link: link_state,
        apps,
        pulls,
        readiness,
        release,
        hub: hub_contact,
    } = writers;
    let log_counters = Arc::new(crate::logstream::LogCounters::default());
    let reporter = Arc::new(
        Reporter::new(outbox.clone(), key.clone(), parts, boots, cfg.status_file())
            .with_hub_silent_after(Duration::from_secs(cfg.hub_silent_after_secs))
            .with_log_counters(log_counters.clone()),
    );

    let tracker = TaskTracker::new();
    let desired_rx = desired.subscribe();
    let (targets_tx, targets_rx) = watch::channel(BTreeMap::<String, HealthTarget>::new());
    let (verdicts_tx, verdicts_rx) = watch::channel(health::Verdicts::new());

    tracker.spawn(log_keeper(driver.clone(), cancel.clone()));
    let exec = Executor {
        images,
        driver,
        outbox: outbox.clone(),
        pulls: Arc::new(pulls),
        volumes_dir: cfg.volumes_dir(),
        stop_grace: Duration::from_secs(10),
    };
    let reconciler = Reconciler::new(
        exec,
        outbox.clone(),
        apps,
        RestartLog::new(store.clone()),
        Policy::default(),
        Duration::from_millis(cfg.resync_interval_ms.max(100)),
        desired_rx,
        targets_tx,
        verdicts_rx,
        loaded.restarts.clone(),
    )
    .with_retention(cfg.images_dir())
    .with_releases(
        ReleaseLog::new(store.clone()),
        loaded.release.as_deref(),
        release,
    );
    tracker.spawn(reconciler.run(cancel.clone()));
    tracker.spawn(health::run(
        targets_rx,
        readiness,
        outbox.clone(),
        verdicts_tx,
        cancel.clone(),
    ));
    tracker.spawn(status_file_writer(reporter.clone(), cancel.clone()));
    if let Some(addr) = cfg.metrics_listen {
        // A taken port is logged, not fatal: apps matter more than figures.
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(device_id = %device, %addr, "serving /metrics");
                tracker.spawn(crate::metrics::serve(
                    listener,
                    reporter.clone(),
                    cancel.clone(),
                ));
            }
            Err(e) => {
                tracing::error!(device_id = %device, %addr, error = %e, "cannot listen for /metrics (metrics_listen); running without")
            }
        }
    }

    // The link.
    let broker = cfg.broker_addr()?;
    match link::connect(
        &device,
        &key,
        &broker,
        cfg.ca_file.as_deref(),
        cfg.broker_cert.as_deref(),
    ) {
        Err(e) => {
            // Apps keep running from the persisted manifest; only the link is off.
            // The inbox's and the link's writers stay unused in this scope until
            // shutdown: their readers (the reconciler follows `desired`) keep
            // the start values.
            tracing::error!(device_id = %device, broker = %cfg.broker, error = %e, "cannot set up the broker link; running offline");
        }
        Ok((client, driver)) => {
            let (in_tx, in_rx) = mpsc::unbounded_channel();
            let (ack_tx, ack_rx) = mpsc::unbounded_channel();
            let conn_rx = link_state.subscribe();
            let (hub_tx, hub_rx) = watch::channel(HubAck::default());
            tracker.spawn(driver.run(in_tx, ack_tx, cancel.clone()));
            let sender = Sender {
                client: client.clone(),
                reporter: reporter.clone(),
                outbox: outbox.clone(),
                conn: conn_rx,
                acks: ack_rx,
                hub: hub_rx,
                status_interval: Duration::from_secs(cfg.status_interval_secs.max(1)),
            };
            tracker.spawn(sender.run(cancel.clone()));
            let (log_tx, log_rx) = mpsc::unbounded_channel();
            tracker.spawn(
                crate::logstream::LogStreams::new(
                    client.clone(),
                    device.clone(),
                    key.clone(),
                    cfg.logs_dir(),
                    log_counters.clone(),
                )
                .run(log_rx, cancel.clone()),
            );
            let inbox = Inbox::new(
                gate,
                outbox.clone(),
                store.clone(),
                (desired, rejections, hub_contact),
                hub_tx,
            )
            .with_log_requests(log_tx, log_counters.clone());
            tracker.spawn(link_events(
                client,
                link_state,
                inbox,
                in_rx,
                cancel.clone(),
            ));
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

/// The link task: the only writer of the link state (the connection number
/// the sender waits on, `connected` in the view). It re-subscribes on every
/// connection and hands messages to the inbox, acknowledging those the inbox
/// decided. Public for the fleet simulator (`sim/src/device.rs`), whose
/// devices run this task as the agent does.
pub async fn link_events(
    client: AsyncClient,
    link_state: Writer<Link>,
    mut inbox: Inbox,
    mut rx: mpsc::UnboundedReceiver<Inbound>,
    cancel: CancellationToken,
) {
    let device = inbox.device_id().clone();
    let mut connections = 0u64;
    loop {
        let due = inbox.flush_due();
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            m = rx.recv() => match m { Some(m) => m, None => break },
            _ = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                inbox.flush_rejections().await;
                continue;
            }
        };
        match msg {
            Inbound::Connected { .. } => {
                // Re-subscribe on every CONNACK: a fresh session has none.
                if let Err(e) = link::subscribe(&client, &device, inbox.next_root()).await {
                    tracing::warn!(device_id = %device, error = %e, "subscribe failed");
                }
                connections += 1;
                link_state.send_replace(Some(connections));
            }
            Inbound::Disconnected => {
                link_state.send_replace(None);
            }
            Inbound::Message(p) => {
                let next_root = inbox.next_root();
                let handled = inbox.handle(&p.topic, p.payload.to_vec()).await;
                if inbox.next_root() != next_root {
                    // A root adopted: the link after it, if there is one.
                    let topic = outpost_protocol::topics::root(inbox.next_root());
                    if let Err(e) = client.subscribe(topic, rumqttc::QoS::AtLeastOnce).await {
                        tracing::warn!(device_id = %device, error = %e, "subscribe failed");
                    }
                }
                if handled {
                    if let Err(e) = client.ack(&p).await {
                        tracing::warn!(device_id = %device, error = %e, "ack failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{parts, Rejections};
    use outpost_protocol::{KeySet, SignedKeySet};

    async fn next(conn: &mut watch::Receiver<Link>) -> Link {
        tokio::time::timeout(Duration::from_secs(5), conn.changed())
            .await
            .unwrap()
            .unwrap();
        *conn.borrow_and_update()
    }

    /// The link task alone moves `connected` and the connection number, and
    /// hands messages to the inbox.
    #[tokio::test]
    async fn the_link_task_owns_the_link_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let root = SigningKey::generate().unwrap();
        let ks = SignedKeySet::sign(
            &KeySet {
                version: 1,
                issued_at: 0,
                keys: vec![root.public_key()],
                expires_at: outpost_protocol::NEVER,
                root_version: 1,
            },
            &root,
        );
        let trust = initial_trust(root.public_key(), &ks.0, "keyset.bin", 0).unwrap();
        let device: outpost_protocol::DeviceId = "pi-1".parse().unwrap();
        let key = Arc::new(SigningKey::generate().unwrap());
        let outbox = Outbox::new(device.clone(), key.clone(), store.clone(), 100);
        let (w, parts) = parts(None, Rejections::default());
        let reporter = Reporter::new(
            outbox.clone(),
            key.clone(),
            parts,
            1,
            dir.path().join("s.json"),
        );
        let mut conn = w.link.subscribe();
        let (hub, _) = watch::channel(HubAck::default());
        let gate = TrustGate::new(device.clone(), trust, store.clone());
        let inbox = Inbox::new(
            gate,
            outbox,
            store.clone(),
            (w.desired, w.rejections, w.hub),
            hub,
        );
        // A client whose event loop is never polled: subscribing only queues.
        let (client, _driver) = link::connect(
            &device,
            &key,
            &crate::config::parse_broker("mqtt://127.0.0.1:1").unwrap(),
            None,
            None,
        )
        .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(link_events(client, w.link, inbox, rx, cancel.clone()));
        tx.send(Inbound::Connected {
            session_present: false,
        })
        .unwrap();
        assert_eq!(next(&mut conn).await, Some(1));
        assert!(reporter.view().connected);
        tx.send(Inbound::Disconnected).unwrap();
        assert_eq!(next(&mut conn).await, None);
        assert!(!reporter.view().connected);
        tx.send(Inbound::Connected {
            session_present: true,
        })
        .unwrap();
        assert_eq!(
            next(&mut conn).await,
            Some(2),
            "a new number for a new session"
        );
        // Junk on the manifest topic reaches the inbox, which counts it.
        let mut publish = rumqttc::Publish::new(
            outpost_protocol::topics::manifest(&device),
            rumqttc::QoS::AtLeastOnce,
            vec![1u8, 2, 3],
        );
        publish.pkid = 1;
        tx.send(Inbound::Message(publish)).unwrap();
        for _ in 0..500 {
            if reporter.view().rejected.total() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(reporter.view().rejected.total(), 1);
        cancel.cancel();
        task.await.unwrap();
    }
}
