//! The publisher task: the only place that sends on the publish link (the hub's
//! MQTT connection that never subscribes, see [`crate::link`]).
//!
//! It works through a FIFO outbox: publish the key set and republish everything
//! after each CONNACK of the publish link, publish manifests of devices whose
//! generation changed, and clear the retained manifest of removed devices.
//! Manifests are read from the store when sent, so a queued request always
//! publishes the latest committed bytes.
//!
//! It publishes the hub's signed heartbeat (retained, `topics::heartbeat`)
//! when the heartbeat task asks and after each CONNACK, and the root rotation
//! links (retained, `topics::root`) with the key set.
//!
//! It also publishes each device's signed event watermark (retained, on
//! `topics::acks`), read from the store when sent, after ingest's durable
//! commit. Each time the ingest link (re)subscribes it picks a new random
//! `hub_session` and publishes every device's watermark with it
//! ([`Outbox::Announce`]): a device that sees a new session knows the hub is
//! back and may have missed its status and events, and re-sends them. That
//! repairs a status sent while the hub was away (a non-persistent broker
//! delivers it to nobody) within a round trip instead of the next heartbeat. Acks of incoming messages do not pass
//! through here: they go out on the ingest link ([`crate::ingest::sender`]), so
//! they never queue behind manifests waiting for the broker.

use crate::hub::Hub;
use crate::store::Store;
use outpost_protocol::{topics, DeviceId, EventWatermark, Heartbeat};
use rumqttc::{AsyncClient, QoS};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::outbox::{Outbox, PublishStats};

/// What the publisher sends after every CONNACK besides the manifests.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The root-signed key set.
    pub keyset: Vec<u8>,
    /// Root rotation links by root version (`signing::root_links`).
    pub roots: Vec<(u64, Vec<u8>)>,
    /// `[freshness] heartbeat_secs`, stated in each heartbeat.
    pub heartbeat_secs: u32,
}

pub async fn run(
    client: AsyncClient,
    hub: Arc<Hub>,
    trust: Trust,
    mut rx: mpsc::UnboundedReceiver<Outbox>,
    stats: Arc<PublishStats>,
    shutdown: CancellationToken,
) {
    let store = hub.store.clone();
    let mut session = fastrand::u64(..);
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = rx.recv() => match m { Some(m) => m, None => break },
        };
        let result = match msg {
            Outbox::Connected => match connected(&client, &store, &trust, &stats).await {
                Ok(()) => heartbeat(&client, &hub, trust.heartbeat_secs, &stats).await,
                Err(e) => Err(e),
            },
            Outbox::Heartbeat => heartbeat(&client, &hub, trust.heartbeat_secs, &stats).await,
            Outbox::LogRequest(id, bytes) => client
                .publish(topics::log_requests(&id), QoS::AtLeastOnce, false, bytes)
                .await
                .map_err(|e| e.to_string()),
            Outbox::Manifests(ids) => manifests(&client, &store, ids, &stats).await,
            Outbox::Clear(id) => clear(&client, &id).await,
            Outbox::Watermarks(ids) => watermarks(&client, &hub, Some(ids), session, &stats).await,
            Outbox::Announce => {
                session = fastrand::u64(..);
                watermarks(&client, &hub, None, session, &stats).await
            }
        };
        if let Err(e) = result {
            stats.publish_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "publish failed");
        }
    }
    // Best effort: tell the broker we are leaving so it does not wait for keep-alive.
    let _ = client.try_disconnect();
}

async fn clear(client: &AsyncClient, id: &DeviceId) -> Result<(), String> {
    for topic in [topics::manifest(id), topics::acks(id)] {
        client
            .publish(topic, QoS::AtLeastOnce, true, Vec::new())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Publish the signed watermark of `ids` (`None`: every registered device).
async fn watermarks(
    client: &AsyncClient,
    hub: &Arc<Hub>,
    ids: Option<Vec<DeviceId>>,
    session: u64,
    stats: &PublishStats,
) -> Result<(), String> {
    let h = Arc::clone(hub);
    let all = ids.is_none();
    let marks = tokio::task::spawn_blocking(move || match ids {
        None => h.store.registered_marks(),
        Some(ids) => ids
            .into_iter()
            .filter_map(|id| match h.store.device_marks(&id) {
                Ok(Some(m)) => Some(Ok((id, m))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            })
            .collect(),
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let now = hub.now();
    let n = marks.len();
    for (id, m) in marks {
        let sealed = hub.signer.seal_watermark(&EventWatermark {
            device_id: id.clone(),
            acked_through: m.events_acked,
            hub_session: session,
            issued_at: now,
        });
        client
            .publish(topics::acks(&id), QoS::AtLeastOnce, true, sealed)
            .await
            .map_err(|e| e.to_string())?;
        stats.watermarks_published.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(device_id = %id, acked_through = m.events_acked, "event watermark published");
    }
    if all {
        tracing::info!(
            devices = n,
            "announced: new hub session, every event watermark published"
        );
    }
    Ok(())
}

/// Sign and publish a heartbeat at the hub's time now.
async fn heartbeat(
    client: &AsyncClient,
    hub: &Hub,
    interval_secs: u32,
    stats: &PublishStats,
) -> Result<(), String> {
    let sealed = hub.signer.seal_heartbeat(&Heartbeat {
        issued_at: hub.now(),
        interval_secs,
    });
    client
        .publish(topics::heartbeat(), QoS::AtLeastOnce, true, sealed)
        .await
        .map_err(|e| e.to_string())?;
    stats.heartbeats_published.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn connected(
    client: &AsyncClient,
    store: &Store,
    trust: &Trust,
    stats: &PublishStats,
) -> Result<(), String> {
    // Root links before the key set they lead to (devices hold a key set
    // signed by a root they do not know yet, but need not).
    for (version, link) in &trust.roots {
        client
            .publish(topics::root(*version), QoS::AtLeastOnce, true, link.clone())
            .await
            .map_err(|e| e.to_string())?;
    }
    client
        .publish(
            topics::keyset(),
            QoS::AtLeastOnce,
            true,
            trust.keyset.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let store = store.clone();
    let all = tokio::task::spawn_blocking(move || store.all_manifest_bytes())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let n = all.len();
    for (id, bytes) in all {
        client
            .publish(topics::manifest(&id), QoS::AtLeastOnce, true, bytes)
            .await
            .map_err(|e| e.to_string())?;
        stats.manifests_published.fetch_add(1, Ordering::Relaxed);
    }
    stats.republish_all.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        manifests = n,
        "published the key set and republished all manifests"
    );
    Ok(())
}

async fn manifests(
    client: &AsyncClient,
    store: &Store,
    ids: Vec<DeviceId>,
    stats: &PublishStats,
) -> Result<(), String> {
    let store = store.clone();
    let found = tokio::task::spawn_blocking(move || {
        ids.into_iter()
            .map(|id| {
                let registered = store.device(&id)?.is_some();
                let bytes = if registered {
                    store.manifest_bytes(&id)?
                } else {
                    None
                };
                Ok((id, bytes))
            })
            .collect::<Result<Vec<_>, crate::store::StoreError>>()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    for (id, bytes) in found {
        let Some(bytes) = bytes else { continue };
        client
            .publish(topics::manifest(&id), QoS::AtLeastOnce, true, bytes)
            .await
            .map_err(|e| e.to_string())?;
        stats.manifests_published.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(device_id = %id, "manifest published");
    }
    Ok(())
}
