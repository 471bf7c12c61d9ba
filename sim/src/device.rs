//! One simulated device: the agent's own link, inbox and delivery code with a
//! real ed25519 device key, and a [`SimRuntime`] in place of containers.
//!
//! What is the agent's (`outpost-edge-agent`), wired as `edge-agent/src/agent.rs`
//! wires it:
//! - the MQTT link: [`link::options`] (client id = device id, persistent
//!   session, manual acks, packet limits; only the keep-alive may be changed)
//!   and [`link::LinkDriver`], the polling task with the agent's jittered
//!   reconnect backoff and connect timeout;
//! - the link task [`agent::link_events`]: subscriptions by [`link::subscribe`]
//!   after every CONNACK, the link part of the view, and every message through
//!   the agent's [`Inbox`]: manifests and key sets verified by the
//!   [`TrustGate`] and committed to the device's redb store before the manual
//!   ack, held manifests, throttled refusals, the hub's signed watermark;
//! - the outbox and delivery: events sealed into the store's outbox by the
//!   [`Outbox`], status sealed by the [`Reporter`] from the view's parts, and
//!   the agent's [`delivery::Sender`] sending both, one QoS 1 publish in
//!   flight, re-sending until the hub's watermark covers them.
//!
//! What is not: the store is redb in memory ([`Store::open_in_memory`]; a file
//! and an fsync per device would measure the simulator's one disk and cost a
//! file descriptor per device next to its socket), and the reconciler and the
//! container runtime are one [`SimRuntime`] that follows the desired manifest
//! and writes the apps part at once (so no app events: only the manifest and
//! key set events the inbox queues), with no health checks. Release trials are
//! decided by [`SimRuntime::verdict`] after a configured trial time and written
//! to the release part, which the agent's reporter sends as the real agent's
//! (so the hub's rollout driver sees commits and rollbacks as from real
//! devices).
//!
//! What every device did is recorded on a shared [`Board`] of atomics, so a
//! 10,000-device run has no lock on its hot path.

use crate::runtime::SimRuntime;
use outpost_edge_agent::agent;
use outpost_edge_agent::config::BrokerAddr;
use outpost_edge_agent::delivery::{self, HubAck};
use outpost_edge_agent::inbox::Inbox;
use outpost_edge_agent::link::{self, LinkError};
use outpost_edge_agent::outbox::Outbox;
use outpost_edge_agent::report::Reporter;
use outpost_edge_agent::state::{StateError, Store};
use outpost_edge_agent::trust::TrustGate;
use outpost_edge_agent::view::{self, Apps, Desired, Rejections, Release, Writer};
use outpost_protocol::status::{ReleasePhase, ReleaseStatus};
use outpost_protocol::topics;
use outpost_protocol::{DeviceId, KeySet, PublicKey, SigningKey, TrustState};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest MQTT packet a device sends: the agent's limit (the protocol's plus
/// MQTT framing). The Mosquitto comparison broker is configured with it.
pub const MAX_PACKET: usize = link::MAX_OUTGOING_PACKET;

/// SUBSCRIBE packets [`link::subscribe`] sends after each CONNACK (one, with
/// every filter). A device is ready once all are acked.
const SUBSCRIBE_PACKETS: usize = 1;

/// Most events a device keeps while its hub is away: the agent's default
/// (`outbox_limit` in its config).
const OUTBOX_LIMIT: u64 = 10_000;

/// What every device is provisioned with: the hub's root key and first key set.
#[derive(Debug, Clone)]
pub struct Provisioning {
    pub root: PublicKey,
    pub keyset: KeySet,
}

/// How devices connect and behave.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub broker_host: String,
    pub broker_port: u16,
    /// MQTT keep-alive; the agent's is 15 s.
    pub keep_alive: Duration,
    /// Periodic status, as the agent's `status_interval_secs`; `None` reports
    /// only on changes and on connect.
    pub status_interval: Option<Duration>,
    /// Simulated create+start time per app.
    pub app_start: Duration,
    /// How long a release stays in trial before its verdict (the agent's
    /// `stable_secs`); zero decides at once.
    pub trial: Duration,
}

/// Why a device could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {device}: {source}")]
    State {
        device: DeviceId,
        #[source]
        source: StateError,
    },
    #[error("device {device}: {source}")]
    Link {
        device: DeviceId,
        #[source]
        source: LinkError,
    },
}

/// Per-device progress, written by the device's tasks, read by the fleet driver.
#[derive(Debug, Default)]
pub struct Slot {
    pub connected: AtomicBool,
    /// Microseconds since [`Board::start`] when the first connection had all
    /// its SUBSCRIBEs acked; 0 = not yet.
    pub ready_at_us: AtomicU64,
    /// Generation of the last manifest applied.
    pub applied_generation: AtomicU64,
    /// Microseconds since [`Board::start`] when it was applied.
    pub applied_at_us: AtomicU64,
    /// Generation of the last release that passed its trial (0 = none).
    pub committed_generation: AtomicU64,
    /// Releases this device rolled back.
    pub rollbacks: AtomicU64,
}

/// Fleet-wide counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub connacks: AtomicU64,
    /// Every time the link went down or a connection attempt failed.
    pub connection_errors: AtomicU64,
    /// Manifest publishes the link delivered (duplicates and redeliveries
    /// included).
    pub manifests_received: AtomicU64,
    /// Accepted manifests the simulated runtime applied. A manifest replaced
    /// before the runtime saw it is skipped, as the agent's reconciler skips
    /// it.
    pub manifests_accepted: AtomicU64,
    /// Refusals the inbox counted in the view.
    pub manifests_rejected: AtomicU64,
    pub keysets_rejected: AtomicU64,
    /// Signed event watermarks the hub sent.
    pub watermarks_received: AtomicU64,
    /// QoS 1 publishes (status and events) written to the broker, and the
    /// PUBACKs the broker returned for them.
    pub publishes_sent: AtomicU64,
    pub publishes_acked: AtomicU64,
    /// Statuses an independent subscriber (`spawn_observer`) saw on the broker.
    pub observer_statuses: AtomicU64,
    /// Release trials that ended committed, and rolled back.
    pub releases_committed: AtomicU64,
    pub releases_rolled_back: AtomicU64,
}

/// Shared record of what every device did.
#[derive(Debug)]
pub struct Board {
    pub start: Instant,
    pub slots: Box<[Slot]>,
    pub counters: Counters,
}

impl Board {
    pub fn new(devices: usize) -> Arc<Board> {
        Arc::new(Board {
            start: Instant::now(),
            slots: (0..devices).map(|_| Slot::default()).collect(),
            counters: Counters::default(),
        })
    }

    /// Microseconds since `start` (never 0, so 0 can mean "not yet").
    pub fn now_us(&self) -> u64 {
        (self.start.elapsed().as_micros() as u64).max(1)
    }

    pub fn ready_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.ready_at_us.load(Ordering::Relaxed) != 0)
            .count()
    }

    pub fn connected_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.connected.load(Ordering::Relaxed))
            .count()
    }

    /// How many devices have applied at least `target[i]`.
    pub fn applied_count(&self, target: &[u64]) -> usize {
        self.slots
            .iter()
            .zip(target)
            .filter(|(s, t)| s.applied_generation.load(Ordering::Relaxed) >= **t)
            .count()
    }
}

/// A device's identity: id and private key (generated here, like `outpost-agent init`).
#[derive(Debug)]
pub struct Identity {
    pub id: DeviceId,
    pub key: SigningKey,
}

/// The agent's MQTT options for `id` (its login signed by `key`), with the
/// simulator's keep-alive.
pub fn options(
    id: &DeviceId,
    key: &SigningKey,
    cfg: &DeviceConfig,
) -> Result<MqttOptions, LinkError> {
    let broker = BrokerAddr {
        host: cfg.broker_host.clone(),
        port: cfg.broker_port,
        tls: false,
    };
    let mut o = link::options(id, key, &broker, None)?;
    o.set_keep_alive(cfg.keep_alive);
    Ok(o)
}

/// Are all of a connection's SUBSCRIBEs acked? Fed every result of the event
/// loop; a CONNACK or an error starts the count again.
#[derive(Debug, Default)]
struct Subscriptions {
    acked: usize,
}

impl Subscriptions {
    /// True on the SUBACK that completes the connection's subscriptions. (Pure.)
    fn on(&mut self, ev: &Result<Event, ConnectionError>) -> bool {
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) | Err(_) => {
                self.acked = 0;
                false
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                self.acked += 1;
                self.acked == SUBSCRIBE_PACKETS
            }
            Ok(_) => false,
        }
    }
}

/// Start device `idx` on `tracker`; it runs until `shutdown`. A device that
/// `fails_releases` rolls back every release after its first.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    idx: usize,
    identity: Identity,
    fails_releases: bool,
    prov: &Provisioning,
    cfg: &DeviceConfig,
    board: Arc<Board>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<(), DeviceError> {
    let id = identity.id;
    let state_err = |source| DeviceError::State {
        device: id.clone(),
        source,
    };
    let opts = options(&id, &identity.key, cfg).map_err(|source| DeviceError::Link {
        device: id.clone(),
        source,
    })?;
    let (client, driver) = link::connect_with(&id, opts);
    let store = Arc::new(Store::open_in_memory().map_err(state_err)?);
    let trust = TrustState {
        root: prov.root,
        time_floor: prov.keyset.issued_at,
        keyset: prov.keyset.clone(),
        last: None,
        root_version: prov.keyset.root_version,
    };
    // As the agent's first start: the provisioned trust is persisted first.
    store.save_trust(&trust).map_err(state_err)?;
    let key = Arc::new(identity.key);
    let outbox = Outbox::new(id.clone(), key.clone(), store.clone(), OUTBOX_LIMIT);
    let (writers, parts) = view::parts(None, Rejections::default());
    let view::Writers {
        desired,
        rejections,
        link: link_state,
        apps,
        // No pulls and no health checks: their parts stay empty.
        pulls: _,
        readiness: _,
        release,
        hub: hub_contact,
    } = writers;
    let reporter = Arc::new(Reporter::new(
        outbox.clone(),
        key,
        parts,
        // A fresh boot per run: the hub accepts only a greater (boot, seq), and
        // a simulator run may follow another against the same hub.
        outpost_hub::hub::now_secs(),
        // Never written: the local status file is the agent's status writer's.
        std::path::PathBuf::new(),
    ));
    let (hub_tx, hub_rx) = watch::channel(HubAck::default());
    let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let sender = delivery::Sender {
        client: client.clone(),
        reporter,
        outbox: outbox.clone(),
        conn: link_state.subscribe(),
        acks: acks_rx,
        hub: hub_rx,
        // `None`: a status interval no run reaches.
        status_interval: cfg.status_interval.unwrap_or(Duration::MAX),
    };
    let runtime = Runtime {
        idx,
        board: Arc::clone(&board),
        runtime: SimRuntime::new(cfg.app_start),
        desired: desired.subscribe(),
        rejections: rejections.subscribe(),
        apps,
        release,
        trial: cfg.trial,
        fails_releases,
        committed: None,
        applied: None,
        refused: (0, 0),
    };
    let inbox = Inbox::new(
        TrustGate::new(id.clone(), trust, store.clone()),
        outbox,
        store,
        (desired, rejections, hub_contact),
        hub_tx,
    );
    let observe = observer(&id, idx, board);
    tracker.spawn(driver.run_observed(inbound_tx, acks_tx, shutdown.clone(), observe));
    tracker.spawn(sender.run(shutdown.clone()));
    tracker.spawn(agent::link_events(
        client,
        link_state,
        inbox,
        inbound_rx,
        shutdown.clone(),
    ));
    tracker.spawn(runtime.run(shutdown));
    Ok(())
}

/// What the fleet driver learns from the link's event loop (it runs on the
/// polling task, so it only counts): readiness (every SUBSCRIBE of the first
/// connection acked), connections and their errors, manifests and watermarks
/// received, publishes and their PUBACKs.
fn observer(
    id: &DeviceId,
    idx: usize,
    board: Arc<Board>,
) -> impl FnMut(&Result<Event, ConnectionError>) + Send + 'static {
    let manifest_topic = topics::manifest(id);
    let acks_topic = topics::acks(id);
    let mut subscriptions = Subscriptions::default();
    move |ev| {
        let (c, slot) = (&board.counters, &board.slots[idx]);
        if subscriptions.on(ev) {
            let _ = slot.ready_at_us.compare_exchange(
                0,
                board.now_us(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        let counter = match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                slot.connected.store(true, Ordering::Relaxed);
                &c.connacks
            }
            Err(_) => {
                slot.connected.store(false, Ordering::Relaxed);
                &c.connection_errors
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == manifest_topic => {
                &c.manifests_received
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == acks_topic => {
                &c.watermarks_received
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) => &c.publishes_sent,
            Ok(Event::Incoming(Packet::PubAck(_))) => &c.publishes_acked,
            Ok(_) => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A plain MQTT client subscribed to every device's status topic, counting what
/// the broker delivers; tells broker-side loss from hub-side loss.
pub fn spawn_observer(
    cfg: &DeviceConfig,
    board: Arc<Board>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let mut o = MqttOptions::new(
        "outpost-sim-observer",
        cfg.broker_host.clone(),
        cfg.broker_port,
    );
    o.set_keep_alive(cfg.keep_alive)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    tracker.spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Err(e) = client.try_subscribe(topics::all_status(), QoS::AtLeastOnce) {
                        tracing::warn!(error = %e, "observer cannot subscribe");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    board
                        .counters
                        .observer_statuses
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "observer connection error");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
}

/// The simulated reconciler and container runtime: follows the desired
/// manifest the inbox writes, as the agent's reconciler does, "starts" its
/// apps with [`SimRuntime`] and writes the apps part of the view (the sender
/// then reports it). Also counts the inbox's refusals for the [`Board`].
struct Runtime {
    idx: usize,
    board: Arc<Board>,
    runtime: SimRuntime,
    desired: watch::Receiver<Desired>,
    rejections: watch::Receiver<Rejections>,
    /// The one writer of the apps part.
    apps: Writer<Apps>,
    /// The one writer of the release part.
    release: Writer<Release>,
    trial: Duration,
    fails_releases: bool,
    /// The last release that passed its trial: what a rollback runs again.
    committed: Option<Arc<outpost_protocol::Manifest>>,
    /// (epoch, generation) of the manifest applied last.
    applied: Option<(u64, u64)>,
    /// Refused (manifests, key sets) counted on the board so far.
    refused: (u64, u64),
}

impl Runtime {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            // Level-triggered: whichever woke us, both are read again below.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.desired.changed() => if r.is_err() { break },
                r = self.rejections.changed() => if r.is_err() { break },
            }
            self.count_refusals();
            let desired = self.desired.borrow_and_update().clone();
            if let Some(m) = desired {
                if self.applied != Some((m.epoch, m.generation)) {
                    self.apply(&m).await;
                }
            }
        }
    }

    fn count_refusals(&mut self) {
        let counters = self.rejections.borrow_and_update().counters.clone();
        let keysets = counters.keyset;
        let manifests = counters.total().saturating_sub(keysets);
        let c = &self.board.counters;
        c.manifests_rejected
            .fetch_add(manifests.saturating_sub(self.refused.0), Ordering::Relaxed);
        c.keysets_rejected
            .fetch_add(keysets.saturating_sub(self.refused.1), Ordering::Relaxed);
        self.refused = (manifests, keysets);
    }

    /// "Start" the manifest's apps with the simulated runtime, keep the
    /// release in trial for the configured time, then commit it or roll back
    /// to the committed release (its apps "start" again).
    async fn apply(&mut self, m: &Arc<outpost_protocol::Manifest>) {
        let delay = self.runtime.apply_time(m);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.start_apps(m);
        self.applied = Some((m.epoch, m.generation));
        let committed = self.committed.as_ref().map(|c| (c.epoch, c.generation));
        let board = Arc::clone(&self.board);
        let slot = &board.slots[self.idx];
        slot.applied_at_us.store(board.now_us(), Ordering::Relaxed);
        slot.applied_generation
            .store(m.generation, Ordering::Relaxed);
        board
            .counters
            .manifests_accepted
            .fetch_add(1, Ordering::Relaxed);
        if !self.trial.is_zero() {
            self.release.send_replace(Some(ReleaseStatus {
                target: (m.epoch, m.generation),
                phase: ReleasePhase::Trial,
                committed,
            }));
            tokio::time::sleep(self.trial).await;
        }
        let verdict = SimRuntime::verdict(m, committed, self.fails_releases);
        let c = &board.counters;
        if verdict.phase == ReleasePhase::Committed {
            self.committed = Some(Arc::clone(m));
            slot.committed_generation
                .store(m.generation, Ordering::Relaxed);
            c.releases_committed.fetch_add(1, Ordering::Relaxed);
        } else {
            if let Some(back) = self.committed.clone() {
                self.start_apps(&back);
            }
            slot.rollbacks.fetch_add(1, Ordering::Relaxed);
            c.releases_rolled_back.fetch_add(1, Ordering::Relaxed);
        }
        self.release.send_replace(Some(verdict));
    }

    fn start_apps(&mut self, m: &outpost_protocol::Manifest) {
        let apps = self.runtime.apply(m);
        self.apps
            .send_replace(apps.into_iter().map(|a| (a.name.clone(), a)).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{ConnAck, ConnectReturnCode, PubAck, SubAck, SubscribeReasonCode};

    #[test]
    fn ready_once_every_subscribe_of_the_connection_is_acked() {
        let connack = || {
            Event::Incoming(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::Success,
                false,
            )))
        };
        let suback = || {
            Event::Incoming(Packet::SubAck(SubAck::new(
                1,
                vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            )))
        };
        let puback = || Event::Incoming(Packet::PubAck(PubAck::new(1)));
        let mut s = Subscriptions::default();
        // (event, ready after it)
        let steps: Vec<(Result<Event, ConnectionError>, bool)> = vec![
            (Ok(connack()), false),
            (Ok(puback()), false),
            (Ok(suback()), true),  // the one SUBSCRIBE (every filter) acked
            (Ok(suback()), false), // only the completing SUBACK says so
            (Err(ConnectionError::RequestsDone), false),
            (Ok(puback()), false),
            (Ok(connack()), false), // counting starts again after a drop
            (Ok(suback()), true),
            (Ok(suback()), false), // a later SUBSCRIBE (the next root link)
        ];
        for (i, (ev, want)) in steps.into_iter().enumerate() {
            assert_eq!(s.on(&ev), want, "step {i}");
        }
    }

    #[test]
    fn devices_connect_with_the_agents_options_and_the_simulators_keep_alive() {
        let cfg = DeviceConfig {
            broker_host: "127.0.0.1".into(),
            broker_port: 1883,
            keep_alive: Duration::from_secs(40),
            status_interval: None,
            app_start: Duration::ZERO,
            trial: Duration::ZERO,
        };
        let id: DeviceId = "sim-00001".parse().unwrap();
        let key = SigningKey::generate().unwrap();
        let o = options(&id, &key, &cfg).unwrap();
        let agent = link::options(
            &id,
            &key,
            &BrokerAddr {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false,
            },
            None,
        )
        .unwrap();
        assert_eq!(o.client_id(), "sim-00001");
        assert_eq!(o.keep_alive(), Duration::from_secs(40));
        assert_eq!(o.clean_session(), agent.clean_session());
        assert_eq!(o.manual_acks(), agent.manual_acks());
        assert_eq!(o.max_packet_size(), agent.max_packet_size());
        assert_eq!(o.inflight(), agent.inflight());
        assert_eq!(o.broker_address(), agent.broker_address());
    }

    /// The simulated runtime follows the desired manifest the inbox writes,
    /// writes the apps part the sender reports, records the device on the
    /// board, and counts the inbox's refusals once each.
    #[tokio::test(start_paused = true)]
    async fn the_runtime_applies_each_desired_manifest_and_counts_refusals() {
        use outpost_protocol::sample::gateway_manifest;
        use outpost_protocol::{KeyId, RejectCounters};
        let board = Board::new(2);
        let (w, parts) = view::parts(None, Rejections::default());
        let rt = Runtime {
            idx: 1,
            board: Arc::clone(&board),
            runtime: SimRuntime::new(Duration::from_millis(10)),
            desired: w.desired.subscribe(),
            rejections: w.rejections.subscribe(),
            apps: w.apps,
            release: w.release,
            trial: Duration::ZERO,
            fails_releases: false,
            committed: None,
            applied: None,
            refused: (0, 0),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(rt.run(shutdown.clone()));
        let id: DeviceId = "sim-00001".parse().unwrap();
        let manifest = |g| Arc::new(gateway_manifest(id.clone(), KeyId("k".into()), g));
        let settle = || tokio::time::sleep(Duration::from_secs(1));

        w.desired.send_replace(Some(manifest(2)));
        settle().await;
        let slot = &board.slots[1];
        assert_eq!(slot.applied_generation.load(Ordering::Relaxed), 2);
        assert_ne!(slot.applied_at_us.load(Ordering::Relaxed), 0);
        let v = parts.view();
        assert_eq!(v.apps.len(), 5);
        assert!(v.apps.values().all(|a| a.state.is_running()));
        assert_eq!(board.slots[0].applied_generation.load(Ordering::Relaxed), 0);

        // Refusals: counted by kind, each once however often the part changes.
        for (rollback, keyset) in [(1, 0), (2, 1), (2, 1)] {
            w.rejections.send_replace(Rejections {
                counters: RejectCounters {
                    rollback,
                    keyset,
                    ..RejectCounters::default()
                },
                last: Some(format!("{rollback} {keyset}")),
            });
            settle().await;
        }
        w.desired.send_replace(Some(manifest(3)));
        settle().await;
        let c = &board.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(
            (
                load(&c.manifests_accepted),
                load(&c.manifests_rejected),
                load(&c.keysets_rejected)
            ),
            (2, 2, 1)
        );
        assert_eq!(slot.applied_generation.load(Ordering::Relaxed), 3);
        shutdown.cancel();
        task.await.unwrap();
    }

    /// A failing device commits its first release, then keeps each later one
    /// in trial for the trial time, rolls it back (the apps part shows the
    /// committed release's images again) and reports it in the release part.
    #[tokio::test(start_paused = true)]
    async fn a_failing_device_trials_then_rolls_back_each_new_release() {
        use outpost_protocol::sample::gateway_manifest;
        use outpost_protocol::KeyId;
        let board = Board::new(1);
        let (w, parts) = view::parts(None, Rejections::default());
        let rt = Runtime {
            idx: 0,
            board: Arc::clone(&board),
            runtime: SimRuntime::new(Duration::ZERO),
            desired: w.desired.subscribe(),
            rejections: w.rejections.subscribe(),
            apps: w.apps,
            release: w.release,
            trial: Duration::from_secs(10),
            fails_releases: true,
            committed: None,
            applied: None,
            refused: (0, 0),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(rt.run(shutdown.clone()));
        let id: DeviceId = "sim-00001".parse().unwrap();
        let v1 = Arc::new(gateway_manifest(id.clone(), KeyId("k".into()), 1));
        let mut v2 = gateway_manifest(id, KeyId("k".into()), 2);
        v2.apps[0].image.digest = outpost_protocol::Digest([7; 32]);
        let v2 = Arc::new(v2);
        let epoch = v1.epoch;

        w.desired.send_replace(Some(Arc::clone(&v1)));
        tokio::time::sleep(Duration::from_secs(11)).await;
        let release = parts.view().release.unwrap();
        assert_eq!(release.phase, ReleasePhase::Committed);
        assert_eq!(release.committed, Some((epoch, 1)));

        w.desired.send_replace(Some(Arc::clone(&v2)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let v = parts.view();
        let release = v.release.unwrap();
        assert_eq!(release.phase, ReleasePhase::Trial);
        assert_eq!(release.target, (epoch, 2));
        assert_eq!(
            v.apps[&v2.apps[0].name].image_digest,
            Some(v2.apps[0].image.digest)
        );

        tokio::time::sleep(Duration::from_secs(6)).await;
        let v = parts.view();
        let release = v.release.unwrap();
        assert!(
            matches!(&release.phase, ReleasePhase::RolledBack { to, app, .. } if *to == (epoch, 1) && *app == v2.apps[0].name),
            "{release:?}"
        );
        assert_eq!(release.committed, Some((epoch, 1)));
        assert_eq!(
            v.apps[&v1.apps[0].name].image_digest,
            Some(v1.apps[0].image.digest)
        );
        let slot = &board.slots[0];
        assert_eq!(slot.committed_generation.load(Ordering::Relaxed), 1);
        assert_eq!(slot.rollbacks.load(Ordering::Relaxed), 1);
        assert_eq!(slot.applied_generation.load(Ordering::Relaxed), 2);
        shutdown.cancel();
        task.await.unwrap();
    }
}
