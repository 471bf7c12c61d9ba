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

/// The rumqttd configuration the hub uses, serving `listener` (already bound to
/// `listen`), with logins and topics checked by `access`.
pub fn config(
    listen: SocketAddr,
    listener: TcpListener,
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
    let server = rumqttd::ServerSettings {
        name: "outpost-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
        listener: Some(rumqttd::BoundListener::new(listener)),
    };
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
        v4: Some(HashMap::from([("1".to_string(), server)])),
        console: None,
        ..Default::default()
    }
}

/// Start the broker on `listen` (port 0 picks a free port) and wait until it
/// accepts MQTT connections; returns the address it listens on. rumqttd runs on
/// its own threads for the rest of the process: it has no shutdown API.
pub fn start_embedded(
    listen: SocketAddr,
    max_connections: usize,
    access: Arc<BrokerAccess>,
) -> Result<SocketAddr, BrokerError> {
    // The hub binds the socket and rumqttd serves it (our patch, see
    // third_party/README.md): an address in use is reported by name (rumqttd
    // only logs it), and the bound port is known without a window in which
    // another process could take it.
    let listener = TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    let probe = (
        access.hub_id().to_string(),
        access.hub_password().to_string(),
    );
    let cfg = config(addr, listener, max_connections, access);
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(cfg);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let connect_to = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let mut last = String::new();
    for _ in 0..200 {
        match mqtt_ping(connect_to, &probe.0, &probe.1) {
            Ok(()) => {
                tracing::info!(%addr, "embedded MQTT broker listening");
                return Ok(addr);
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
