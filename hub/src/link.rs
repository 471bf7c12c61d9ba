//! The hub's MQTT connections (rumqttc): options, and the driver task that polls
//! an event loop with our own reconnect backoff.
//!
//! The hub holds **two** connections, each with its own stable client id:
//! - the ingest link (`client_id`, default `outpost:hub`) subscribes to status and
//!   events and sends nothing but SUBSCRIBEs and the manual PUBACKs ingest issues
//!   after its redb commit;
//! - the publish link (`<client_id>-pub`, see [`publisher_client_id`]) publishes
//!   the key set and the manifests and never subscribes.
//!
//! One shared connection deadlocked against rumqttd (docs/benchmarks.md): rumqttd
//! stops forwarding to a client with 100 unacked QoS 1 forwards and, while that
//! client is paused, does not ack its publishes either (only an incoming PUBACK
//! wakes it). The hub's status PUBACKs then queued in rumqttc's FIFO behind
//! manifest publishes that waited for the broker's PUBACKs. Split, the ingest
//! link's PUBACKs never wait behind a publish (it has no publish in flight), and
//! the broker keeps acking the publish link (it never has forwards in flight to
//! it, so its tracker is only ever paused as caught up, which fresh data wakes).
//!
//! A driver never publishes (publishing from the polling task can deadlock on
//! rumqttc's bounded request channel). It forwards incoming publishes to ingest
//! and reports every CONNACK, after which the ingest side re-subscribes and the
//! publisher republishes: after `session_present = false` rumqttc restores
//! nothing.

use crate::broker::MAX_PACKET_BYTES;
use crate::config::BrokerUrl;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, TlsConfiguration, Transport,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Capacity of rumqttc's request channel. Large so bursts of manifest publishes
/// (an apply over the fleet) queue instead of stalling.
pub const REQUEST_CAPACITY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot read the MQTT CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the MQTT client certificate or key {path}: {source}")]
    ClientAuth {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Client id of the publish link: the ingest link's id with `-pub` appended.
/// It keeps the ':' of the default, so no device id can take it over either.
pub fn publisher_client_id(client_id: &str) -> String {
    format!("{client_id}-pub")
}

/// Build client options: stable id, persistent session, manual acks, packet
/// limits that match the broker's. Used for both links. With `password`, the
/// link logs in with its client id as username (the embedded broker's hub
/// login, `broker::access`). With `client_auth` (PEM certificate and key
/// paths, `[mqtt.client_auth]`), a `mqtts://` link presents that certificate
/// (an external Mosquitto that takes the client's identity from it).
pub fn options(
    client_id: &str,
    broker: &BrokerUrl,
    ca_file: Option<&Path>,
    password: Option<&str>,
    client_auth: Option<(&Path, &Path)>,
) -> Result<MqttOptions, LinkError> {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    if let Some(password) = password {
        o.set_credentials(client_id, password);
    }
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_request_channel_capacity(REQUEST_CAPACITY)
        .set_inflight(200);
    if broker.tls {
        let path = ca_file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
        let ca = std::fs::read(&path).map_err(|source| LinkError::CaFile { path, source })?;
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| LinkError::ClientAuth {
                path: p.to_path_buf(),
                source,
            })
        };
        let client_auth = match client_auth {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        // rumqttc's rustls needs a process-wide provider; ring, never aws-lc-rs.
        let _ = rustls::crypto::ring::default_provider().install_default();
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

/// What a driver tells the rest of the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// A CONNACK arrived: re-subscribe (ingest link) or republish (publish link).
    Connected { session_present: bool },
    /// A SUBACK arrived (only the ingest link subscribes): the hub hears device
    /// messages again, so it tells devices to re-send what it may have missed.
    Subscribed,
}

/// Exponential backoff with full jitter, capped.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let max = exp.min(cap);
    max.mul_f64(jitter.clamp(0.0, 1.0)).max(base / 2)
}

/// Poll the event loop of the link named `link` until `shutdown`. Incoming
/// publishes go to `incoming` (bounded: a slow ingest pushes back on the broker,
/// not on memory); a link without `incoming` (the publish link, which never
/// subscribes) drops and logs any. Every CONNACK is handed to `on_event`, which
/// must not block and returns `false` once its receiver is gone.
pub async fn drive(
    link: &'static str,
    mut eventloop: EventLoop,
    incoming: Option<mpsc::Sender<Publish>>,
    mut on_event: impl FnMut(LinkEvent) -> bool + Send,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    loop {
        let polled = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = eventloop.poll() => p,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                attempt = 0;
                tracing::info!(
                    link,
                    session_present = ack.session_present,
                    "connected to MQTT broker"
                );
                if !on_event(LinkEvent::Connected {
                    session_present: ack.session_present,
                }) {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if !on_event(LinkEvent::Subscribed) {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => match &incoming {
                Some(incoming) => {
                    if incoming.send(p).await.is_err() {
                        return;
                    }
                }
                None => {
                    tracing::warn!(link, topic = %p.topic, "unexpected publish on a link that does not subscribe; dropped")
                }
            },
            Ok(_) => {}
            Err(e) => {
                let wait = backoff(
                    attempt,
                    Duration::from_millis(200),
                    Duration::from_secs(30),
                    fastrand::f64(),
                );
                attempt = attempt.saturating_add(1);
                tracing::warn!(link, error = %e, retry_in_ms = wait.as_millis() as u64, "MQTT connection lost");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Create the client and its event loop.
pub fn client(options: MqttOptions) -> (AsyncClient, EventLoop) {
    AsyncClient::new(options, REQUEST_CAPACITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_link_has_its_own_id_no_device_can_take() {
        let id = publisher_client_id("outpost:hub");
        assert_eq!(id, "outpost:hub-pub");
        assert!(id.parse::<outpost_protocol::DeviceId>().is_err());
    }

    #[test]
    fn backoff_grows_is_capped_and_never_zero() {
        let base = Duration::from_millis(200);
        let cap = Duration::from_secs(30);
        assert_eq!(backoff(0, base, cap, 1.0), base);
        assert_eq!(backoff(3, base, cap, 1.0), base * 8);
        assert_eq!(backoff(40, base, cap, 1.0), cap);
        assert_eq!(backoff(5, base, cap, 0.0), base / 2);
    }
}
