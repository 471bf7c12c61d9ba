//! The publisher task: the only place that sends on the publish link (the hub's
//! MQTT connection that never subscribes, see [`crate::link`]).
//!
//! It works through a FIFO outbox: publish the key set and republish everything
//! after each CONNACK of the publish link, publish manifests of devices whose
//! generation changed, and clear the retained manifest of removed devices.
//! Manifests are read from the store when sent, so a queued request always
//! publishes the latest committed bytes. Acks of incoming messages do not pass
//! through here: they go out on the ingest link ([`crate::ingest::sender`]), so
//! they never queue behind manifests waiting for the broker.

use crate::store::Store;
use outpost_protocol::{topics, DeviceId};
use rumqttc::{AsyncClient, QoS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Work for the publisher.
#[derive(Debug)]
pub enum Outbox {
    /// The publish link (re)connected: publish the key set, republish all.
    Connected,
    /// Publish the current manifest of these devices (retained, QoS 1).
    Manifests(Vec<DeviceId>),
    /// The device was removed: clear its retained manifest.
    Clear(DeviceId),
}

/// Counters the API exposes.
#[derive(Debug, Default)]
pub struct PublishStats {
    pub manifests_published: AtomicU64,
    pub republish_all: AtomicU64,
    pub publish_errors: AtomicU64,
}

pub async fn run(
    client: AsyncClient,
    store: Store,
    keyset: Vec<u8>,
    mut rx: mpsc::UnboundedReceiver<Outbox>,
    stats: Arc<PublishStats>,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = rx.recv() => match m { Some(m) => m, None => break },
        };
        let result = match msg {
            Outbox::Connected => connected(&client, &store, &keyset, &stats).await,
            Outbox::Manifests(ids) => manifests(&client, &store, ids, &stats).await,
            Outbox::Clear(id) => client
                .publish(topics::manifest(&id), QoS::AtLeastOnce, true, Vec::new())
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            stats.publish_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "publish failed");
        }
    }
    // Best effort: tell the broker we are leaving so it does not wait for keep-alive.
    let _ = client.try_disconnect();
}

async fn connected(
    client: &AsyncClient,
    store: &Store,
    keyset: &[u8],
    stats: &PublishStats,
) -> Result<(), String> {
    client
        .publish(topics::keyset(), QoS::AtLeastOnce, true, keyset.to_vec())
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
