//! One simulated device: a real MQTT client (client id = device id, persistent
//! session, manual acks), a real ed25519 device key, the real manifest
//! [`Verifier`], device-signed [`StatusReport`]s, and a [`SimRuntime`].
//!
//! Like the agent, each device runs two tasks: a poller that only drives the
//! rumqttc event loop (with its own jittered backoff; publishing from the polling
//! task can deadlock) and a handler that verifies, "applies", reports and acks.
//! What every device did is recorded on a shared [`Board`] of atomics, so a
//! 10,000-device run has no lock on its hot path.

use crate::runtime::SimRuntime;
use outpost_protocol::topics::{self, DeviceTopic};
use outpost_protocol::{
    AppStatus, DeviceId, KeySet, KeySetError, PublicKey, RejectCounters, SigningKey, StatusReport,
    TrustState, Verdict, Verifier, MAX_MESSAGE_BYTES,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeFilter};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest MQTT packet a simulated device sends or accepts (the protocol limit
/// plus room for MQTT framing, as the agent does).
pub const MAX_PACKET: usize = MAX_MESSAGE_BYTES + 4096;

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
    pub keep_alive: Duration,
    /// Periodic status like the agent's heartbeat; `None` reports only on changes
    /// and on connect.
    pub status_interval: Option<Duration>,
    /// Simulated create+start time per app.
    pub app_start: Duration,
    /// How long a CONNECT may wait for its CONNACK.
    pub connect_timeout: Duration,
}

/// Per-device progress, written by the device's tasks, read by the fleet driver.
#[derive(Debug, Default)]
pub struct Slot {
    pub connected: AtomicBool,
    /// Microseconds since [`Board::start`] of the first SUBACK; 0 = not yet.
    pub ready_at_us: AtomicU64,
    /// Generation of the last manifest applied.
    pub applied_generation: AtomicU64,
    /// Microseconds since [`Board::start`] when it was applied.
    pub applied_at_us: AtomicU64,
}

/// Fleet-wide counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub connacks: AtomicU64,
    pub connection_errors: AtomicU64,
    pub manifests_accepted: AtomicU64,
    pub manifests_duplicate: AtomicU64,
    pub manifests_rejected: AtomicU64,
    pub keysets_rejected: AtomicU64,
    pub statuses_sent: AtomicU64,
    /// PUBACKs the broker returned for statuses (it has taken them over).
    pub statuses_acked: AtomicU64,
    /// Statuses an independent subscriber (`spawn_observer`) saw on the broker.
    pub observer_statuses: AtomicU64,
    pub client_errors: AtomicU64,
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

/// Reconnect delay: exponential from `base`, capped at `max`, uniform in
/// [delay/2, delay] so a fleet does not reconnect in lockstep. `unit` in [0, 1].
pub fn backoff(attempt: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let half = exp / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// A device's identity: id and private key (generated here, like `outpost-agent init`).
#[derive(Debug)]
pub struct Identity {
    pub id: DeviceId,
    pub key: SigningKey,
}

enum Inbound {
    Connected,
    Message(Publish),
}

fn options(id: &DeviceId, cfg: &DeviceConfig) -> MqttOptions {
    let mut o = MqttOptions::new(id.as_str(), cfg.broker_host.clone(), cfg.broker_port);
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(cfg.keep_alive)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_request_channel_capacity(16);
    o
}

/// Start device `idx` on `tracker`; it runs until `shutdown`.
pub fn spawn(
    idx: usize,
    identity: Identity,
    prov: &Provisioning,
    cfg: &DeviceConfig,
    board: Arc<Board>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let (client, mut eventloop) = AsyncClient::new(options(&identity.id, cfg), 16);
    let mut net = eventloop.network_options();
    net.set_connection_timeout(cfg.connect_timeout.as_secs().max(1));
    eventloop.set_network_options(net);
    let (tx, rx) = mpsc::unbounded_channel();
    let state = TrustState {
        root: prov.root,
        keyset: prov.keyset.clone(),
        last: None,
    };
    let handler = Handler {
        idx,
        verifier: Verifier::new(identity.id.clone(), state),
        id: identity.id,
        key: identity.key,
        client,
        runtime: SimRuntime::new(cfg.app_start),
        board: Arc::clone(&board),
        // A fresh boot per run: the hub accepts only a greater (boot, seq), and a
        // simulator run may follow another against the same hub.
        boot: outpost_hub::hub::now_secs(),
        seq: 0,
        started: Instant::now(),
        apps: Vec::new(),
        rejected: RejectCounters::default(),
        last_rejection: None,
    };
    tracker.spawn(poll(eventloop, tx, board, idx, shutdown.clone()));
    tracker.spawn(handler.run(rx, cfg.status_interval, shutdown));
}

/// Drive the event loop; forward what the handler needs; back off after errors.
async fn poll(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<Inbound>,
    board: Arc<Board>,
    idx: usize,
    shutdown: CancellationToken,
) {
    let slot = &board.slots[idx];
    let mut attempt = 0u32;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = eventloop.poll() => ev,
        };
        let forward = match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                attempt = 0;
                slot.connected.store(true, Ordering::Relaxed);
                board.counters.connacks.fetch_add(1, Ordering::Relaxed);
                Some(Inbound::Connected)
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = slot.ready_at_us.compare_exchange(
                    0,
                    board.now_us(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                None
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Some(Inbound::Message(p)),
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                board
                    .counters
                    .statuses_acked
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
            Ok(_) => None,
            Err(e) => {
                slot.connected.store(false, Ordering::Relaxed);
                board
                    .counters
                    .connection_errors
                    .fetch_add(1, Ordering::Relaxed);
                let wait = backoff(
                    attempt,
                    Duration::from_millis(250),
                    Duration::from_secs(10),
                    fastrand::f64(),
                );
                attempt = attempt.saturating_add(1);
                tracing::debug!(device = idx, error = %e, retry_in_ms = wait.as_millis() as u64, "connection error");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                None
            }
        };
        if let Some(m) = forward {
            if tx.send(m).is_err() {
                return;
            }
        }
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

struct Handler {
    idx: usize,
    id: DeviceId,
    key: SigningKey,
    verifier: Verifier,
    client: AsyncClient,
    runtime: SimRuntime,
    board: Arc<Board>,
    boot: u64,
    seq: u64,
    started: Instant,
    apps: Vec<AppStatus>,
    rejected: RejectCounters,
    last_rejection: Option<String>,
}

async fn next_tick(tick: &mut Option<Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Handler {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Inbound>,
        status_interval: Option<Duration>,
        shutdown: CancellationToken,
    ) {
        // Heartbeats start at a random offset so 10,000 devices do not report in step.
        let mut tick = status_interval.map(|every| {
            let first = tokio::time::Instant::now() + every.mul_f64(fastrand::f64());
            let mut t = tokio::time::interval_at(first, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut connected = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                m = rx.recv() => match m {
                    None => break,
                    Some(Inbound::Connected) => {
                        connected = true;
                        self.subscribe().await;
                        // Like the agent: report the applied generation on every
                        // connect, so a hub that lost track re-sends if we are behind.
                        self.send_status().await;
                    }
                    Some(Inbound::Message(p)) => self.on_publish(p).await,
                },
                _ = next_tick(&mut tick) => if connected && self.board.slots[self.idx].connected.load(Ordering::Relaxed) {
                    self.send_status().await;
                },
            }
        }
        let _ = self.client.try_disconnect();
    }

    fn client_error(&self, what: &str, e: rumqttc::ClientError) {
        self.board
            .counters
            .client_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(device_id = %self.id, error = %e, "{what} failed");
    }

    async fn subscribe(&self) {
        // Re-subscribe after every CONNACK: a fresh session restores nothing.
        let filters = [
            SubscribeFilter::new(topics::keyset(), QoS::AtLeastOnce),
            SubscribeFilter::new(topics::manifest(&self.id), QoS::AtLeastOnce),
        ];
        if let Err(e) = self.client.subscribe_many(filters).await {
            self.client_error("subscribe", e);
        }
    }

    async fn on_publish(&mut self, p: Publish) {
        match topics::parse(&p.topic) {
            Some(DeviceTopic::Manifest(id)) if id == self.id && !p.payload.is_empty() => {
                self.on_manifest(&p.payload).await;
            }
            _ if p.topic == topics::keyset() => match self.verifier.verify_keyset(&p.payload) {
                Ok(set) => self.verifier.adopt_keyset(set),
                Err(KeySetError::NotNewer { .. }) => {}
                Err(e) => {
                    self.board
                        .counters
                        .keysets_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    self.rejected.keyset += 1;
                    tracing::warn!(device_id = %self.id, error = %e, "key set rejected");
                }
            },
            _ => {}
        }
        // Ack after handling (the agent acks after its durable commit).
        if let Err(e) = self.client.ack(&p).await {
            self.client_error("ack", e);
        }
    }

    async fn on_manifest(&mut self, bytes: &[u8]) {
        let counters = &self.board.counters;
        match self.verifier.verify(bytes) {
            Ok(Verdict::Accept(accepted)) => {
                let delay = self.runtime.apply_time(&accepted.manifest);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                self.apps = self.runtime.apply(&accepted.manifest);
                self.verifier.commit(&accepted);
                let slot = &self.board.slots[self.idx];
                slot.applied_at_us
                    .store(self.board.now_us(), Ordering::Relaxed);
                slot.applied_generation
                    .store(accepted.manifest.generation, Ordering::Relaxed);
                counters.manifests_accepted.fetch_add(1, Ordering::Relaxed);
                self.send_status().await;
            }
            Ok(Verdict::Duplicate { .. }) => {
                counters.manifests_duplicate.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                counters.manifests_rejected.fetch_add(1, Ordering::Relaxed);
                reason.count_into(&mut self.rejected);
                tracing::warn!(device_id = %self.id, %reason, "manifest rejected");
                self.last_rejection = Some(reason.to_string());
                self.send_status().await;
            }
        }
    }

    async fn send_status(&mut self) {
        self.seq += 1;
        let report = StatusReport {
            device_id: self.id.clone(),
            applied: self.verifier.state().last.map(|l| (l.epoch, l.generation)),
            boot: self.boot,
            seq: self.seq,
            // The simulator sends no events.
            event_floor: 0,
            reported_at: outpost_hub::hub::now_secs(),
            agent_version: concat!("outpost-sim/", env!("CARGO_PKG_VERSION")).into(),
            uptime_secs: self.started.elapsed().as_secs(),
            apps: self.apps.clone(),
            rejected: self.rejected.clone(),
            last_rejection: self.last_rejection.clone(),
        };
        let sealed = report.seal(&self.key);
        match self
            .client
            .publish(topics::status(&self.id), QoS::AtLeastOnce, false, sealed)
            .await
        {
            Ok(()) => {
                self.board
                    .counters
                    .statuses_sent
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.client_error("status publish", e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let base = Duration::from_millis(250);
        let max = Duration::from_secs(10);
        assert_eq!(backoff(0, base, max, 1.0), base);
        assert_eq!(backoff(0, base, max, 0.0), base / 2);
        assert_eq!(backoff(30, base, max, 1.0), max);
    }
}
