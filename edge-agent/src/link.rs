//! The MQTT link to the hub's broker: rumqttc with our own reconnect backoff, the
//! subscriptions, and in-order at-least-once delivery of the redb outbox.
//!
//! rumqttc reconnects only while its event loop is polled and without any delay,
//! auto-acks by default, forgets subscriptions on a fresh session and keeps unacked
//! publishes only in memory (see PITFALLS.md). So: one task polls and does nothing
//! else (no publishing from it), with jittered exponential backoff after errors;
//! incoming publishes are acked by the handler after its durable commit; on every
//! CONNACK we re-subscribe; rumqttc's in-memory retransmission queue is cleared after
//! each disconnect because the outbox in redb is the only source of truth, and the
//! sender re-sends from the oldest undelivered entry on each new connection.

use crate::config::BrokerAddr;
use crate::report::Reporter;
use outpost_protocol::{topics, DeviceId, MAX_MESSAGE_BYTES};
use rand::Rng;
use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish, QoS, TlsConfiguration,
    Transport,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Incoming packets up to this size are read and then judged by the verifier
/// (a 1 MiB junk manifest is counted as "too large" rather than killing the
/// connection, which would make the broker redeliver it forever).
pub const MAX_INCOMING_PACKET: usize = 4 * 1024 * 1024;
/// Our own messages never exceed the protocol limit plus MQTT framing.
pub const MAX_OUTGOING_PACKET: usize = MAX_MESSAGE_BYTES + 4096;
/// A publish not acknowledged within this time is treated as a dead link.
const ACK_TIMEOUT: Duration = Duration::from_secs(20);
/// Smallest gap between two status reports sent because the view changed.
const MIN_STATUS_GAP: Duration = Duration::from_secs(1);

/// Reconnect delay: exponential from `base`, capped at `max`, with "full jitter"
/// (uniform in [delay/2, delay]) so a fleet coming back from a hub outage does not
/// reconnect in lockstep. `unit` in [0, 1) is the random draw (passed in: pure).
pub fn backoff(attempt: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let half = exp / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// What the link tells the agent.
#[derive(Debug)]
pub enum Inbound {
    Connected { session_present: bool },
    Disconnected,
    Message(Publish),
}

/// Packet ids seen by the poller, for the sender's ack matching.
#[derive(Debug, Clone, Copy)]
pub enum AckEvent {
    Sent(u16),
    Acked(u16),
}

/// Default CA bundle for `mqtts://` (Debian's ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("reading the broker CA bundle {path}: {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Client id = device id (stable, so the broker keeps our session), persistent
/// session, manual acks, explicit packet limits; TLS (rustls with ring) for
/// `mqtts://`, verifying the broker against `ca_file` or the system bundle.
pub fn options(
    device: &DeviceId,
    broker: &BrokerAddr,
    ca_file: Option<&Path>,
) -> Result<MqttOptions, LinkError> {
    let mut o = MqttOptions::new(device.as_str(), broker.host.clone(), broker.port);
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(15))
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
        .set_inflight(16);
    if broker.tls {
        let path = ca_file.map_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE), Path::to_path_buf);
        let ca = std::fs::read(&path).map_err(|source| LinkError::CaFile { path, source })?;
        // rumqttc's rustls needs a process-wide provider: ring (no aws-lc-rs).
        let _ = rustls::crypto::ring::default_provider().install_default();
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: None,
        }));
    }
    Ok(o)
}

/// The polling half. Owns the event loop; never publishes.
pub struct LinkDriver {
    eventloop: EventLoop,
    device: DeviceId,
}

pub fn connect(
    device: &DeviceId,
    broker: &BrokerAddr,
    ca_file: Option<&Path>,
) -> Result<(AsyncClient, LinkDriver), LinkError> {
    let (client, mut eventloop) = AsyncClient::new(options(device, broker, ca_file)?, 64);
    eventloop.network_options.set_connection_timeout(5);
    Ok((
        client,
        LinkDriver {
            eventloop,
            device: device.clone(),
        },
    ))
}

impl LinkDriver {
    /// Poll until cancelled. Channels are unbounded so this task never waits on a
    /// consumer that may itself be waiting on the client's request channel.
    pub async fn run(
        mut self,
        inbound: mpsc::UnboundedSender<Inbound>,
        acks: mpsc::UnboundedSender<AckEvent>,
        cancel: CancellationToken,
    ) {
        let mut attempt: u32 = 0;
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break,
                ev = self.eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    attempt = 0;
                    tracing::info!(device_id = %self.device, session_present = ack.session_present, "connected to broker");
                    let _ = inbound.send(Inbound::Connected {
                        session_present: ack.session_present,
                    });
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let _ = inbound.send(Inbound::Message(p));
                }
                Ok(Event::Incoming(Incoming::PubAck(a))) => {
                    let _ = acks.send(AckEvent::Acked(a.pkid));
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let _ = acks.send(AckEvent::Sent(pkid));
                }
                Ok(_) => {}
                Err(e) => {
                    // rumqttc moved unacked packets into `pending` for replay; the
                    // outbox replays instead (and subscriptions are redone on ConnAck).
                    self.eventloop.pending.clear();
                    let _ = inbound.send(Inbound::Disconnected);
                    let delay = backoff(
                        attempt,
                        Duration::from_millis(500),
                        Duration::from_secs(30),
                        rand::thread_rng().gen::<f64>(),
                    );
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(device_id = %self.device, error = %e, attempt, retry_in_ms = delay.as_millis() as u64, "broker link down");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Subscribe to the device's manifest and the key set (after every ConnAck).
pub async fn subscribe(
    client: &AsyncClient,
    device: &DeviceId,
) -> Result<(), rumqttc::ClientError> {
    client.subscribe(topics::keyset(), QoS::AtLeastOnce).await?;
    client
        .subscribe(topics::manifest(device), QoS::AtLeastOnce)
        .await
}

/// Delivers status and the outbox, one message in flight at a time so the
/// broker's PUBACK identifies exactly what may be deleted, in seq order.
pub struct Sender {
    pub client: AsyncClient,
    pub reporter: Arc<Reporter>,
    /// Connection number while connected, `None` while down.
    pub conn: watch::Receiver<Option<u64>>,
    pub acks: mpsc::UnboundedReceiver<AckEvent>,
    pub status_interval: Duration,
}

#[derive(Debug)]
struct Lost;

impl Sender {
    async fn publish_and_wait(&mut self, topic: &str, payload: Vec<u8>) -> Result<(), Lost> {
        while self.acks.try_recv().is_ok() {}
        let epoch = *self.conn.borrow();
        if self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            return Err(Lost);
        }
        let mut pkid = None;
        let deadline = tokio::time::sleep(ACK_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return Err(Lost),
                changed = self.conn.changed() => {
                    if changed.is_err() || *self.conn.borrow() != epoch {
                        return Err(Lost);
                    }
                }
                ev = self.acks.recv() => match ev {
                    None => return Err(Lost),
                    Some(AckEvent::Sent(p)) if pkid.is_none() => pkid = Some(p),
                    Some(AckEvent::Acked(p)) if Some(p) == pkid => return Ok(()),
                    Some(_) => {}
                },
            }
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let device = self.reporter.device_id().clone();
        let status_topic = topics::status(&device);
        let events_topic = topics::events(&device);
        let mut changes = self.reporter.subscribe();
        'outer: loop {
            // Wait for a connection.
            while self.conn.borrow().is_none() {
                tokio::select! {
                    _ = cancel.cancelled() => break 'outer,
                    r = self.conn.changed() => if r.is_err() { break 'outer },
                }
            }
            // Status first on every (re)connect: the hub re-sends the manifest if
            // our applied generation is behind.
            changes.borrow_and_update();
            if self
                .publish_and_wait(&status_topic, self.reporter.sealed_status())
                .await
                .is_err()
            {
                continue;
            }
            let mut last_status = tokio::time::Instant::now();
            loop {
                // Drain the outbox in order.
                let mut after = 0;
                loop {
                    if cancel.is_cancelled() {
                        break 'outer;
                    }
                    let store = self.reporter.store().clone();
                    let next = tokio::task::spawn_blocking(move || store.outbox_next(after)).await;
                    let (seq, bytes) = match next {
                        Ok(Ok(Some(e))) => e,
                        Ok(Ok(None)) => break,
                        Ok(Err(e)) => {
                            tracing::error!(device_id = %device, error = %e, "reading outbox");
                            break;
                        }
                        Err(_) => break,
                    };
                    if self.publish_and_wait(&events_topic, bytes).await.is_err() {
                        continue 'outer;
                    }
                    let store = self.reporter.store().clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Err(e) = store.outbox_remove(seq) {
                            tracing::error!(seq, error = %e, "deleting delivered event");
                        }
                    })
                    .await;
                    tracing::debug!(device_id = %device, seq, "event delivered");
                    after = seq;
                }
                if changes.has_changed().unwrap_or(false)
                    || last_status.elapsed() >= self.status_interval
                {
                    // At most one change-driven status per second (a pull or a
                    // backoff countdown changes the view often).
                    let since = last_status.elapsed();
                    if since < MIN_STATUS_GAP {
                        tokio::select! {
                            _ = cancel.cancelled() => break 'outer,
                            _ = tokio::time::sleep(MIN_STATUS_GAP - since) => {}
                        }
                    }
                    changes.borrow_and_update();
                    last_status = tokio::time::Instant::now();
                    if self
                        .publish_and_wait(&status_topic, self.reporter.sealed_status())
                        .await
                        .is_err()
                    {
                        continue 'outer;
                    }
                    continue;
                }
                let wait = self.status_interval.saturating_sub(last_status.elapsed());
                tokio::select! {
                    _ = cancel.cancelled() => break 'outer,
                    _ = self.reporter.outbox_wake.notified() => {}
                    r = changes.changed() => if r.is_err() { break 'outer },
                    _ = tokio::time::sleep(wait) => {}
                    r = self.conn.changed() => {
                        if r.is_err() { break 'outer }
                        continue 'outer;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_bounds() {
        let (b, m) = (Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(backoff(0, b, m, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(0, b, m, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(3, b, m, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(40, b, m, 1.0), m);
        for unit in [0.0, 0.3, 0.99] {
            let d = backoff(10, b, m, unit);
            assert!(d >= m / 2 && d <= m);
        }
    }

    #[test]
    fn tls_needs_a_readable_ca_bundle_and_names_it() {
        let broker = BrokerAddr {
            host: "h".into(),
            port: 8883,
            tls: true,
        };
        let missing = Path::new("/nonexistent/ca.pem");
        let err = options(&"pi-1".parse().unwrap(), &broker, Some(missing)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let o = options(&"pi-1".parse().unwrap(), &broker, Some(&ca)).unwrap();
        assert!(matches!(o.transport(), Transport::Tls(_)));
    }

    #[test]
    fn options_follow_the_pitfalls() {
        let o = options(
            &"pi-1".parse().unwrap(),
            &BrokerAddr {
                host: "h".into(),
                port: 1,
                tls: false,
            },
            None,
        )
        .unwrap();
        assert_eq!(o.client_id(), "pi-1");
        assert!(!o.clean_session());
        assert!(o.manual_acks());
        assert!(o.max_packet_size() > MAX_MESSAGE_BYTES);
    }
}
