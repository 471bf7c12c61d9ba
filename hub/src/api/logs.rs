//! The relay behind `GET /v1/devices/{id}/logs/{app}`: asks the device for an
//! app's output (a hub-signed `LogRequest`), passes what it sends to the
//! caller, renews the request while the caller reads and says stop when it
//! goes away (`crate::logs` has the waiting streams and the limits).

use crate::hub::Hub;
use crate::logs::{DEADLINE_SECS, FIRST_CHUNK_SECS, MAX_FOLLOW_SECS, RENEW_SECS};
use crate::outbox::Outbox;
use outpost_protocol::{DeviceId, LogRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a relay was asked for.
#[derive(Debug, Clone)]
pub struct Ask {
    pub device: DeviceId,
    pub app: String,
    pub tail: Option<u32>,
    pub follow: bool,
}

fn request(hub: &Hub, ask: &Ask, request_id: u64, stop: bool) -> Vec<u8> {
    hub.signer.seal_log_request(&LogRequest {
        device_id: ask.device.clone(),
        request_id,
        app: ask.app.clone(),
        tail: ask.tail,
        follow: ask.follow,
        until: hub.now().saturating_add(DEADLINE_SECS),
        stop,
    })
}

/// Ask the device and pass what it sends to `out` until the stream ends, the
/// caller goes away (`out` closed) or the follow limit; then tell the device
/// to stop. Runs as its own task.
pub async fn relay(hub: Arc<Hub>, ask: Ask, out: mpsc::Sender<Vec<u8>>) {
    let (id, mut rx) = hub.logs.open(ask.device.clone());
    hub.send(Outbox::LogRequest(
        ask.device.clone(),
        request(&hub, &ask, id, false),
    ));
    tracing::info!(device_id = %ask.device, app = %ask.app, request_id = id, follow = ask.follow, "log stream requested");
    let started = tokio::time::Instant::now();
    let mut renew = tokio::time::interval_at(
        started + Duration::from_secs(RENEW_SECS),
        Duration::from_secs(RENEW_SECS),
    );
    let first_deadline = started + Duration::from_secs(FIRST_CHUNK_SECS);
    let limit = started + Duration::from_secs(MAX_FOLLOW_SECS);
    let mut heard = false;
    let mut next_seq = 0u64;
    let why: Option<String> = loop {
        tokio::select! {
            _ = out.closed() => break None,
            _ = tokio::time::sleep_until(first_deadline), if !heard => {
                break Some(format!("device {} did not answer within {FIRST_CHUNK_SECS} s (offline, or an agent without logs on demand)", ask.device));
            }
            _ = tokio::time::sleep_until(limit) => {
                break Some(format!("following stops after {MAX_FOLLOW_SECS} s; ask again"));
            }
            _ = renew.tick(), if ask.follow => {
                hub.send(Outbox::LogRequest(ask.device.clone(), request(&hub, &ask, id, false)));
            }
            c = rx.recv() => {
                let Some(c) = c else { break None };
                heard = true;
                let mut text = Vec::new();
                if c.seq > next_seq || c.dropped_bytes > 0 {
                    let lost = c.seq.saturating_sub(next_seq);
                    text.extend(format!(
                        "[outpost: {} chunk(s) lost in transit, {} bytes dropped by the device's rate limit]\n",
                        lost, c.dropped_bytes
                    ).into_bytes());
                }
                next_seq = c.seq.saturating_add(1);
                text.extend(c.data);
                if !text.is_empty() && out.send(text).await.is_err() {
                    break None;
                }
                if let Some(end) = c.end {
                    break match end.as_str() {
                        "done" | "stopped" | "deadline" => None,
                        other => Some(other.to_string()),
                    };
                }
            }
        }
    };
    hub.logs.close(id);
    hub.send(Outbox::LogRequest(
        ask.device.clone(),
        request(&hub, &ask, id, true),
    ));
    if let Some(why) = why {
        tracing::info!(device_id = %ask.device, app = %ask.app, request_id = id, reason = %why, "log stream ended");
        let _ = out
            .send(format!("[outpost: log stream ended: {why}]\n").into_bytes())
            .await;
    } else {
        tracing::info!(device_id = %ask.device, app = %ask.app, request_id = id, "log stream ended");
    }
}
