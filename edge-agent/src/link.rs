//! The MQTT link to the hub's broker: rumqttc with our own reconnect backoff and
//! the subscriptions. Delivery of status and the outbox is `delivery.rs`.
//!
//! rumqttc reconnects only while its event loop is polled and without any delay,
//! auto-acks by default, forgets subscriptions on a fresh session and keeps unacked
//! publishes only in memory. So: one task polls and does nothing else (no
//! publishing from it), with jittered exponential backoff after errors that is
//! reset only after a connection stayed up ([`STABLE_CONNECTION`]); incoming
//! publishes are acked by the handler after its durable commit; on every CONNACK
//! we re-subscribe; rumqttc's in-memory retransmission queue is cleared after
//! each disconnect because the outbox in redb is the only source of truth, and the
//! sender re-sends every unacknowledged entry on each new connection.

use crate::config::BrokerAddr;
use outpost_protocol::keys::SigningKey;
use outpost_protocol::{login, topics, DeviceId, MAX_MESSAGE_BYTES};
use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish, QoS,
    TlsConfiguration, Transport,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Incoming packets up to this size are read and then judged by the verifier
/// (a 1 MiB junk manifest is counted as "too large" rather than killing the
/// connection, which would make the broker redeliver it forever).
pub const MAX_INCOMING_PACKET: usize = 4 * 1024 * 1024;
/// Our own messages never exceed the protocol limit plus MQTT framing.
pub const MAX_OUTGOING_PACKET: usize = MAX_MESSAGE_BYTES + 4096;
/// A connection must stay up this long before the reconnect backoff starts
/// again from its first step. A broker that sends CONNACK and then drops us
/// (an auth plugin refusing after the handshake, a duplicate client id kicking
/// us, a retained message over its size limit) would otherwise be hammered
/// every 0.25-0.5 s forever, by every device of a fleet at once. 30 s is far
/// longer than any such accept-then-drop and still short enough that a single
/// drop after a long-lived connection is retried at once.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// How long a connection attempt (TCP, TLS, CONNECT until CONNACK) may take;
/// rumqttc also bounds each socket flush by it. Not rumqttc's default of 5 s:
/// when a fleet connects at once (10,000 devices after a hub restart, the
/// embedded broker on 2 cores) CONNACKs take up to ~18 s. A device that gives
/// up leaves its CONNECT queued in the broker, which later takes over the
/// client id and drops the device's newer, live connection: every timeout
/// adds load instead of shedding it (`docs/benchmarks.md`: at 5 s, 10,000
/// devices needed ~13,600 CONNACKs and saw ~10,000 connection errors). A
/// broker at its connection limit sends no CONNACK at all; waiting 30 s for it
/// is no worse than the backoff's own 30 s cap, and a dead peer is noticed by
/// the 15 s keep-alive in about the same time.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Reconnect delay: exponential from `base`, capped at `max`, with "full jitter"
/// (uniform in [delay/2, delay]) so a fleet coming back from a hub outage does not
/// reconnect in lockstep. `unit` in [0, 1) is the random draw (passed in: pure).
pub fn backoff(attempt: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let half = exp / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// The backoff attempt number after a connection ends: back to 0 only if it
/// had been up (CONNACK received) for at least [`STABLE_CONNECTION`]; `up_for`
/// is `None` when no CONNACK came since the last error. (Pure.)
pub fn attempt_after_disconnect(attempt: u32, up_for: Option<Duration>) -> u32 {
    match up_for {
        Some(d) if d >= STABLE_CONNECTION => 0,
        _ => attempt,
    }
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
    #[error("reading the broker certificate {path}: {source}")]
    BrokerCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the broker certificate {path} is not for this device's key: {why}")]
    WrongBrokerCert { path: PathBuf, why: String },
}

/// The DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410), followed
/// by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Whether the PEM certificate `pem` certifies the ed25519 `public_key`:
/// its DER holds the key's SubjectPublicKeyInfo (44 bytes that do not occur
/// by chance). (Pure.)
pub fn cert_is_for_key(pem: &str, public_key: &[u8; 32]) -> Result<(), String> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| format!("bad PEM: {e}"))?;
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(public_key);
    if der.windows(spki.len()).any(|w| w == spki.as_slice()) {
        Ok(())
    } else {
        Err("it certifies another key (issue one with `outpost-hub device cert`)".into())
    }
}

/// The device key (PKCS#8 DER, as ring made it) as the PEM rumqttc's
/// rustls loads (`PRIVATE KEY`; ring's ed25519 PKCS#8 v2 is accepted).
pub fn key_pem(pkcs8: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// Client id = device id (stable, so the broker keeps our session), persistent
/// session, manual acks, explicit packet limits; the device's broker login
/// (username = device id, password signed by `key`, see
/// `outpost_protocol::login`); TLS (rustls with ring) for `mqtts://`,
/// verifying the broker against `ca_file` or the system bundle.
pub fn options(
    device: &DeviceId,
    key: &SigningKey,
    broker: &BrokerAddr,
    ca_file: Option<&Path>,
) -> Result<MqttOptions, LinkError> {
    options_with_cert(device, key, broker, ca_file, None)
}

/// [`options`], and with `broker_cert` (a PEM client certificate the hub CA
/// issued for this device's key) a `mqtts://` link presents it with the
/// device key: how an external Mosquitto knows the device. The password
/// login is still sent; such a Mosquitto ignores it (the certificate's name
/// is the username).
pub fn options_with_cert(
    device: &DeviceId,
    key: &SigningKey,
    broker: &BrokerAddr,
    ca_file: Option<&Path>,
    broker_cert: Option<&Path>,
) -> Result<MqttOptions, LinkError> {
    let mut o = MqttOptions::new(device.as_str(), broker.host.clone(), broker.port);
    o.set_credentials(device.as_str(), login::device_password(key, device));
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(15))
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
        .set_inflight(16);
    if broker.tls {
        let path = ca_file.map_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE), Path::to_path_buf);
        let ca = std::fs::read(&path).map_err(|source| LinkError::CaFile { path, source })?;
        let client_auth = match broker_cert {
            None => None,
            Some(p) => {
                let pem = std::fs::read_to_string(p).map_err(|source| LinkError::BrokerCert {
                    path: p.to_path_buf(),
                    source,
                })?;
                cert_is_for_key(&pem, &key.public_key().0).map_err(|why| {
                    LinkError::WrongBrokerCert {
                        path: p.to_path_buf(),
                        why,
                    }
                })?;
                Some((pem.into_bytes(), key_pem(key.pkcs8()).into_bytes()))
            }
        };
        // rumqttc's rustls needs a process-wide provider: ring (no aws-lc-rs).
        let _ = rustls::crypto::ring::default_provider().install_default();
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
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
    key: &SigningKey,
    broker: &BrokerAddr,
    ca_file: Option<&Path>,
    broker_cert: Option<&Path>,
) -> Result<(AsyncClient, LinkDriver), LinkError> {
    Ok(connect_with(
        device,
        options_with_cert(device, key, broker, ca_file, broker_cert)?,
    ))
}

/// [`connect`] with options the caller built with [`options`]: the fleet
/// simulator (`sim/src/device.rs`) runs the agent's link and may only change the
/// keep-alive of them.
pub fn connect_with(device: &DeviceId, options: MqttOptions) -> (AsyncClient, LinkDriver) {
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    eventloop
        .network_options
        .set_connection_timeout(CONNECT_TIMEOUT.as_secs());
    (
        client,
        LinkDriver {
            eventloop,
            device: device.clone(),
        },
    )
}

impl LinkDriver {
    /// Poll until cancelled. Channels are unbounded so this task never waits on a
    /// consumer that may itself be waiting on the client's request channel.
    pub async fn run(
        self,
        inbound: mpsc::UnboundedSender<Inbound>,
        acks: mpsc::UnboundedSender<AckEvent>,
        cancel: CancellationToken,
    ) {
        self.run_observed(inbound, acks, cancel, |_| {}).await
    }

    /// [`Self::run`], also showing `observe` every result of the event loop
    /// before it is handled. The fleet simulator counts SUBACKs and PUBACKs this
    /// way for its measurements; `observe` must return at once (it runs on the
    /// polling task).
    pub async fn run_observed(
        mut self,
        inbound: mpsc::UnboundedSender<Inbound>,
        acks: mpsc::UnboundedSender<AckEvent>,
        cancel: CancellationToken,
        mut observe: impl FnMut(&Result<Event, ConnectionError>) + Send,
    ) {
        let mut attempt: u32 = 0;
        // When the current connection's CONNACK arrived.
        let mut connected_at: Option<tokio::time::Instant> = None;
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break,
                ev = self.eventloop.poll() => ev,
            };
            observe(&ev);
            match ev {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    // Not `attempt = 0`: see `STABLE_CONNECTION`.
                    connected_at = Some(tokio::time::Instant::now());
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
                    let up_for = connected_at.take().map(|t| t.elapsed());
                    attempt = attempt_after_disconnect(attempt, up_for);
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

/// Subscribe, in ONE SUBSCRIBE (one SUBACK, retained messages delivered in
/// this order), to the next root rotation link, the key set, the hub
/// heartbeat, the device's manifest, its event watermark and its log requests
/// (after every ConnAck). Roots and key set first: a retained manifest signed
/// under a new key then finds its key already adopted (if not, the inbox
/// holds it). The root link is a concrete topic, `roots/<next_root>`, not a
/// wildcard: a broker matches a wildcard subscription against every topic it
/// knows, which at 10,000 devices cost the embedded broker's router a minute
/// of CPU at connect. The link task subscribes to the following one after
/// each adoption (`crate::agent::link_events`).
pub async fn subscribe(
    client: &AsyncClient,
    device: &DeviceId,
    next_root: u64,
) -> Result<(), rumqttc::ClientError> {
    let topics = [
        topics::root(next_root),
        topics::keyset(),
        topics::heartbeat(),
        topics::manifest(device),
        topics::acks(device),
        topics::log_requests(device),
    ];
    client
        .subscribe_many(
            topics
                .into_iter()
                .map(|t| rumqttc::SubscribeFilter::new(t, QoS::AtLeastOnce)),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::generate().unwrap()
    }

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
    fn attempts_reset_only_after_a_stable_connection() {
        let s = Duration::from_secs;
        // (attempt, up for, next attempt)
        let cases = [
            (0, None, 0),          // never connected: keep counting
            (5, None, 5),          // refused / timed out again
            (5, Some(s(0)), 5),    // CONNACK then dropped at once: no reset
            (5, Some(s(29)), 5),   // still too short
            (5, Some(s(30)), 0),   // up long enough: start over
            (9, Some(s(3600)), 0), // a long-lived connection dropped
        ];
        for (attempt, up, want) in cases {
            assert_eq!(
                attempt_after_disconnect(attempt, up),
                want,
                "{attempt} {up:?}"
            );
        }
    }

    #[test]
    fn a_broker_certificate_must_certify_this_devices_key() {
        use base64::Engine;
        let k = key();
        let pk = k.public_key().0;
        let pem_of = |der: &[u8]| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
        };
        // A certificate's DER holds the key's SubjectPublicKeyInfo.
        let mut der = vec![0x30, 0x82, 0x01, 0x00];
        der.extend_from_slice(&ED25519_SPKI_PREFIX);
        der.extend_from_slice(&pk);
        der.extend_from_slice(&[0xa3, 0x00]);
        assert_eq!(cert_is_for_key(&pem_of(&der), &pk), Ok(()));
        let other = SigningKey::generate().unwrap().public_key().0;
        assert!(cert_is_for_key(&pem_of(&der), &other).is_err());
        assert!(cert_is_for_key("not a pem", &pk).is_err());
        // The key PEM rustls loads: PKCS#8 under PRIVATE KEY.
        let pem = key_pem(k.pkcs8());
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
    }

    #[test]
    fn tls_needs_a_readable_ca_bundle_and_names_it() {
        let broker = BrokerAddr {
            host: "h".into(),
            port: 8883,
            tls: true,
        };
        let missing = Path::new("/nonexistent/ca.pem");
        let err = options(&"pi-1".parse().unwrap(), &key(), &broker, Some(missing)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let o = options(&"pi-1".parse().unwrap(), &key(), &broker, Some(&ca)).unwrap();
        assert!(matches!(o.transport(), Transport::Tls(_)));
    }

    #[test]
    fn a_connection_attempt_waits_for_a_loaded_brokers_connack() {
        let device: DeviceId = "pi-1".parse().unwrap();
        let broker = BrokerAddr {
            host: "h".into(),
            port: 1,
            tls: false,
        };
        let (_client, driver) = connect(&device, &key(), &broker, None, None).unwrap();
        let o = options(&device, &key(), &broker, None).unwrap();
        let (_client, with) = connect_with(&device, o);
        for d in [driver, with] {
            assert_eq!(
                d.eventloop.network_options.connection_timeout(),
                CONNECT_TIMEOUT.as_secs()
            );
        }
        // Longer than rumqttc's 5 s, no longer than the backoff's cap.
        assert!(CONNECT_TIMEOUT > Duration::from_secs(5));
        assert!(CONNECT_TIMEOUT <= Duration::from_secs(30));
    }

    #[test]
    fn options_replace_rumqttc_defaults() {
        let o = options(
            &"pi-1".parse().unwrap(),
            &key(),
            &BrokerAddr {
                host: "h".into(),
                port: 1,
                tls: false,
            },
            None,
        )
        .unwrap();
        assert_eq!(o.client_id(), "pi-1");
        let login = o.credentials().unwrap();
        assert_eq!(login.username, "pi-1");
        assert!(login.password.starts_with("v1."), "{}", login.password);
        assert!(!o.clean_session());
        assert!(o.manual_acks());
        assert!(o.max_packet_size() > MAX_MESSAGE_BYTES);
    }

    /// `run_observed` shows the observer each event-loop result before the link
    /// acts on it, and otherwise runs as `run` (the fleet simulator counts
    /// SUBACKs and PUBACKs this way). Against a server that answers CONNECT with
    /// a CONNACK and hangs up: no real broker, no sleeps.
    #[tokio::test]
    async fn run_observed_shows_each_result_before_the_link_handles_it() {
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                if sock.read(&mut buf).await.unwrap_or(0) > 0 {
                    let _ = sock.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                }
                let _ = sock.shutdown().await;
            }
        });
        let device: DeviceId = "pi-1".parse().unwrap();
        let broker = BrokerAddr {
            host: "127.0.0.1".into(),
            port,
            tls: false,
        };
        let mut o = options(&device, &key(), &broker, None).unwrap();
        o.set_keep_alive(Duration::from_secs(40));
        let (_client, driver) = connect_with(&device, o);
        // (CONNACKs, errors) the observer saw.
        let seen = Arc::new(Mutex::new((0u32, 0u32)));
        let counts = seen.clone();
        let observe = move |ev: &Result<Event, ConnectionError>| {
            let mut c = counts.lock().unwrap();
            match ev {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => c.0 += 1,
                Err(_) => c.1 += 1,
                Ok(_) => {}
            }
        };
        let (in_tx, mut in_rx) = mpsc::unbounded_channel();
        let (ack_tx, _ack_rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let run = tokio::spawn(driver.run_observed(in_tx, ack_tx, cancel.clone(), observe));
        let within = Duration::from_secs(10);
        let first = tokio::time::timeout(within, in_rx.recv()).await.unwrap();
        assert!(matches!(first, Some(Inbound::Connected { .. })));
        assert_eq!(seen.lock().unwrap().0, 1, "the CONNACK was observed first");
        let second = tokio::time::timeout(within, in_rx.recv()).await.unwrap();
        assert!(matches!(second, Some(Inbound::Disconnected)));
        assert_eq!(*seen.lock().unwrap(), (1, 1), "and then the error");
        cancel.cancel();
        run.await.unwrap();
        server.abort();
    }
}
