//! The embedded MQTT broker (rumqttd), started in-process by `serve` unless an
//! external broker is configured. Who may log in and use which topic is
//! `access.rs` (rules in `acl.rs`). For an external Mosquitto: the hub's
//! certificate authority (`ca.rs`: client and server certificates, the CRL)
//! and the configuration the hub generates (`mosquitto.rs`).
//!
//! rumqttd keeps retained messages and sessions in memory only, which is why the
//! hub republishes every manifest whenever it (re)connects. Its payload limit is
//! derived from `MAX_MESSAGE_BYTES` so an oversized manifest is refused by the hub
//! long before the broker would drop connections over it. No console is started
//! (rumqttd's console is unauthenticated).

pub mod access;
pub mod acl;
pub mod ca;
pub mod mosquitto;

use access::BrokerAccess;
use outpost_protocol::{topics, MAX_MESSAGE_BYTES};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Room for MQTT headers and topic names on top of the largest message.
pub const PACKET_OVERHEAD: usize = 4096;

/// Size of one segment of a per-device commit log in the embedded broker: the
/// smallest rumqttd accepts (see `config`).
pub const DEVICE_SEGMENT_BYTES: usize = 1024;

/// Largest MQTT packet hub and broker accept.
pub const MAX_PACKET_BYTES: usize = MAX_MESSAGE_BYTES + PACKET_OVERHEAD;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded broker did not start listening on {addr}: {detail}")]
    NotListening { addr: SocketAddr, detail: String },
    #[error("could not start the broker thread: {0}")]
    Thread(std::io::Error),
}

/// One socket the broker serves: bound by the hub, with TLS or without.
pub struct Listener {
    pub addr: SocketAddr,
    pub socket: TcpListener,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The rumqttd configuration the hub uses, serving `listeners` (already
/// bound), with logins and topics checked by `access`.
pub fn config(
    listeners: Vec<Listener>,
    max_connections: usize,
    access: Arc<BrokerAccess>,
) -> rumqttd::Config {
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: MAX_PACKET_BYTES,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
        acl: None,
    };
    {
        let access = Arc::clone(&access);
        connections.set_auth_handler(move |client_id, username, password| {
            std::future::ready(access.login(&client_id, &username, &password))
        });
    }
    connections.acl = Some(Arc::new(move |client_id, what, topic| {
        access.allows(client_id, what, topic)
    }));
    let servers: HashMap<String, rumqttd::ServerSettings> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let server = rumqttd::ServerSettings {
                name: format!("outpost-v4-{i}"),
                listen: l.addr,
                tls: None,
                next_connection_delay_ms: 0,
                connections: connections.clone(),
                listener: Some(rumqttd::BoundListener::new(l.socket)),
                acceptor: l.tls.map(tls_acceptor),
            };
            (i.to_string(), server)
        })
        .collect();
    // rumqttd keeps one in-memory commit log per subscription filter, and a
    // log keeps every packet until its segments are full. Each device
    // subscribes to its own manifest and acks topics, so with room for a few
    // manifests per device the hub's RSS grew by one manifest per device and
    // deploy round until those logs filled (+50 MiB a round at 10,000
    // devices; bound 10,000 × 192 KiB). Everything a device reads is
    // latest-wins (manifest, key set, ack watermark), so its logs keep only
    // the packet being delivered and the one before it: segments of the
    // smallest size rumqttd allows (1 KiB; a segment overflows by one packet,
    // so one manifest fills one) and two of them. A device that was away
    // reads from the head of its log, which is the latest manifest.
    // The hub's two wildcard filters carry the whole fleet's status and
    // events. rumqttd moves a reader that fell behind the log's head to the
    // head (silent loss), so they get room for a burst well beyond what the
    // hub lags by: 16 MiB holds well over 10,000 statuses (a signed status
    // with five apps is under 1 KiB), a whole fleet's answer to a deploy
    // round. A loss past that heals: statuses are re-sent every 30 s
    // and events until the hub acknowledges them. The log is held in memory
    // whether or not the hub needs it, so it is not larger (64 MiB a filter
    // was the hub's biggest cost after the connections themselves).
    let fleet = rumqttd::SegmentConfig {
        max_segment_size: 4 * 1024 * 1024,
        max_segment_count: 4,
    };
    let router = rumqttd::RouterConfig {
        max_connections,
        max_outgoing_packet_count: 200,
        max_segment_size: DEVICE_SEGMENT_BYTES,
        max_segment_count: 2,
        custom_segment: Some(HashMap::from([
            (topics::all_status(), fleet.clone()),
            (topics::all_events(), fleet),
        ])),
        ..Default::default()
    };
    rumqttd::Config {
        id: 0,
        router,
        v4: Some(servers),
        console: None,
        ..Default::default()
    }
}

/// A TLS handshake must finish within this, or the connection is dropped
/// (a client that opens a socket and sends nothing holds no slot for long).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Our rustls (ring) in front of rumqttd (our patch 10,
/// third_party/README.md): the handshake runs in the connection's own task.
fn tls_acceptor(config: Arc<rustls::ServerConfig>) -> rumqttd::Acceptor {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    rumqttd::Acceptor(Arc::new(move |stream: tokio::net::TcpStream| {
        let acceptor = acceptor.clone();
        Box::pin(async move {
            let peer = stream.peer_addr().ok();
            let tls =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::warn!(?peer, error = %e, "broker TLS handshake failed");
                        return Err(e);
                    }
                    Err(_) => {
                        tracing::warn!(?peer, "broker TLS handshake timed out");
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "TLS handshake timed out",
                        ));
                    }
                };
            Ok(Box::new(tls) as Box<dyn rumqttd::NetworkStream>)
        })
    }))
}

/// Where a started embedded broker listens.
#[derive(Debug, Clone, Copy)]
pub struct Embedded {
    /// The address devices connect to (TLS when the broker has a certificate).
    pub addr: SocketAddr,
    /// Where the hub's own links connect: `addr` without TLS, or a second,
    /// plaintext listener on loopback when `addr` speaks TLS (so the links do
    /// not depend on the names in the operator's certificate).
    pub local: SocketAddr,
}

fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BrokerError> {
    let socket = TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
    let bound = socket
        .local_addr()
        .map_err(|source| BrokerError::Bind { addr, source })?;
    Ok((socket, bound))
}

/// Start the broker on `listen` (port 0 picks a free port), with TLS when
/// `tls` is given, and wait until it accepts MQTT connections. rumqttd runs
/// on its own threads for the rest of the process: it has no shutdown API.
pub fn start_embedded(
    listen: SocketAddr,
    max_connections: usize,
    access: Arc<BrokerAccess>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Embedded, BrokerError> {
    // The hub binds the sockets and rumqttd serves them (our patch, see
    // third_party/README.md): an address in use is reported by name (rumqttd
    // only logs it), and the bound port is known without a window in which
    // another process could take it.
    let (socket, addr) = bind(listen)?;
    let mut listeners = Vec::new();
    let local = if tls.is_some() {
        let (local_socket, local) = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        listeners.push(Listener {
            addr: local,
            socket: local_socket,
            tls: None,
        });
        local
    } else if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let with_tls = tls.is_some();
    listeners.push(Listener { addr, socket, tls });
    let probe = (
        access.hub_id().to_string(),
        access.hub_password().to_string(),
    );
    let cfg = config(listeners, max_connections, access);
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(cfg);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let mut last = String::new();
    for _ in 0..200 {
        match mqtt_ping(local, &probe.0, &probe.1) {
            Ok(()) => {
                tracing::info!(%addr, tls = with_tls, %local, "embedded MQTT broker listening");
                return Ok(Embedded { addr, local });
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(BrokerError::NotListening { addr, detail: last })
}

/// Readiness check that speaks MQTT: CONNECT with the hub's login, expect an
/// accepting CONNACK, then DISCONNECT. (A bare TCP connect makes rumqttd log
/// an error for every start.)
fn mqtt_ping(addr: SocketAddr, client_id: &str, password: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    // protocol name "MQTT", level 4 (3.1.1), username + password + clean
    // session, keep-alive 10 s; then client id, username, password.
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 10];
    for field in [client_id, client_id, password] {
        let len = u16::try_from(field.len()).map_err(std::io::Error::other)?;
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut pkt = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        pkt.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    pkt.extend_from_slice(&body);
    s.write_all(&pkt)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    if ack != [0x20, 0x02, 0x00, 0x00] {
        return Err(std::io::Error::other(format!(
            "unexpected CONNACK {ack:02x?}"
        )));
    }
    s.write_all(&[0xE0, 0x00])
}
