//! Status and event ingestion: verify every device message against the device's
//! registered key, keep the last good status, append events (deduplicated by
//! `seq`), count what was refused, and notice devices that are behind.
//!
//! Messages are handled in batches, one redb transaction per batch, and acked
//! only after that commit (QoS 1: an unacked message is redelivered). Forged or
//! malformed messages are acked too (redelivery would not make them valid) and
//! counted by reason.
//!
//! Acks and subscriptions go out on the ingest link, which publishes nothing, by
//! the [`sender`] task; never on the publish link, where they would queue behind
//! manifests (the rumqttd deadlock described in [`crate::link`]).

use crate::hub::{now_secs, Hub};
use crate::publish::Outbox;
use crate::store::{EventRecord, StatusRecord, StoreError, Tx};
use outpost_protocol::topics::{self, DeviceTopic};
use outpost_protocol::{DeviceId, DeviceMessageError, Event, OpenError, StatusReport};
use rumqttc::{AsyncClient, Publish, QoS};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most messages handled in one transaction.
pub const BATCH: usize = 512;
/// Minimum seconds between "you are behind" republishes to one device.
pub const REPUBLISH_INTERVAL_SECS: u64 = 20;
/// A device is online if a status arrived within this many seconds (agents send
/// one every 30 s).
pub const ONLINE_WINDOW_SECS: u64 = 90;

/// Work for the ingest link's [`sender`].
#[derive(Debug)]
pub enum Inbox {
    /// The ingest link (re)connected: subscribe to status and events again.
    Connected,
    /// Acknowledge an incoming QoS 1 message (after its redb commit).
    Ack(Box<Publish>),
}

/// The only task that sends on the ingest link: (re)subscribes after every
/// CONNACK and acks committed messages, in order. It runs apart from the
/// driver (publishing from the polling task can deadlock) and from [`run`], so
/// ingest keeps draining the driver while an ack waits for room in rumqttc's
/// request channel.
pub async fn sender(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<Inbox>,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = rx.recv() => match m { Some(m) => m, None => break },
        };
        let result = match msg {
            Inbox::Connected => subscribe(&client).await,
            Inbox::Ack(p) => client.ack(&p).await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "ingest link request failed");
        }
    }
    // Best effort: tell the broker we are leaving so it does not wait for keep-alive.
    let _ = client.try_disconnect();
}

async fn subscribe(client: &AsyncClient) -> Result<(), rumqttc::ClientError> {
    client
        .subscribe(topics::all_status(), QoS::AtLeastOnce)
        .await?;
    client
        .subscribe(topics::all_events(), QoS::AtLeastOnce)
        .await?;
    tracing::info!("subscribed to device status and events");
    Ok(())
}

/// Counter name for a refused device message.
pub fn reject_reason(e: &DeviceMessageError) -> &'static str {
    match e {
        DeviceMessageError::WrongKey { .. } => "wrong_key",
        DeviceMessageError::BadSignature { .. } => "bad_signature",
        DeviceMessageError::DeviceMismatch { .. } => "device_mismatch",
        DeviceMessageError::Open(OpenError::TooLarge { .. }) => "too_large",
        DeviceMessageError::Open(_) => "malformed",
    }
}

/// Is `applied` behind `desired`? (Pure.)
pub fn is_behind(applied: Option<(u64, u64)>, desired: Option<(u64, u64)>) -> bool {
    match (applied, desired) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(a), Some(d)) => a < d,
    }
}

/// Has the device accepted a generation above what the hub issued, in the same
/// epoch? That happens when the hub's database was restored from an older backup:
/// the agent would refuse every lower generation as a rollback. (Pure.)
pub fn is_ahead(applied: Option<(u64, u64)>, desired: Option<(u64, u64)>) -> Option<u64> {
    match (applied, desired) {
        (Some((ae, ag)), Some((de, dg))) if ae == de && ag > dg => Some(ag),
        _ => None,
    }
}

/// Should a report with `new_seq` replace the stored one? Older or equal seqs are
/// stale (late or redelivered), unless the agent restarted with lost state
/// (uptime went down).
pub fn is_newer(stored: Option<&StatusReport>, new: &StatusReport) -> bool {
    match stored {
        None => true,
        Some(old) => new.seq > old.seq || (new.uptime_secs < old.uptime_secs && new.seq != old.seq),
    }
}

/// What a batch decided.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Devices whose status shows them behind their desired manifest.
    pub behind: Vec<DeviceId>,
    /// Devices that accepted a generation above the hub's (with that generation).
    pub ahead: Vec<(DeviceId, u64)>,
    pub counters: BTreeMap<String, u64>,
}

/// Verify and store one batch in one transaction.
pub fn process_batch(hub: &Hub, msgs: &[Publish], now: u64) -> Result<BatchOutcome, StoreError> {
    hub.store.write(|tx| {
        let mut out = BatchOutcome::default();
        for p in msgs {
            let counter = handle(tx, p, now, &mut out)?;
            *out.counters.entry(counter).or_insert(0) += 1;
        }
        for (name, n) in &out.counters {
            tx.add_counter(name, *n)?;
        }
        Ok(out)
    })
}

fn handle(
    tx: &mut Tx,
    p: &Publish,
    now: u64,
    out: &mut BatchOutcome,
) -> Result<String, StoreError> {
    let (id, is_status) = match topics::parse(&p.topic) {
        Some(DeviceTopic::Status(id)) => (id, true),
        Some(DeviceTopic::Events(id)) => (id, false),
        _ => return Ok("unexpected_topic".into()),
    };
    let kind = if is_status { "status" } else { "events" };
    let Some(device) = tx.device(&id)? else {
        tracing::warn!(device_id = %id, kind, "message from an unregistered device dropped");
        return Ok(format!("{kind}_rejected.unknown_device"));
    };
    if is_status {
        let report = match StatusReport::open(&p.payload, &id, &device.public_key) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(device_id = %id, error = %e, "status rejected");
                return Ok(format!("status_rejected.{}", reject_reason(&e)));
            }
        };
        let stored = tx.status(&id)?;
        if !is_newer(stored.as_ref().map(|s| &s.report), &report) {
            return Ok("status_stale".into());
        }
        let desired = tx.manifest_meta(&id)?.map(|m| (m.epoch, m.generation));
        if is_behind(report.applied, desired) {
            out.behind.push(id.clone());
        }
        if let Some(generation) = is_ahead(report.applied, desired) {
            out.ahead.push((id.clone(), generation));
        }
        tracing::debug!(device_id = %id, seq = report.seq, applied = ?report.applied, "status accepted");
        tx.put_status(
            &id,
            &StatusRecord {
                received_at: now,
                report,
            },
        )?;
        Ok("status_accepted".into())
    } else {
        let event: Event = match Event::open(&p.payload, &id, &device.public_key) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(device_id = %id, error = %e, "event rejected");
                return Ok(format!("events_rejected.{}", reject_reason(&e)));
            }
        };
        let seq = event.seq;
        if tx.insert_event(
            &id,
            &EventRecord {
                received_at: now,
                event,
            },
        )? {
            tracing::debug!(device_id = %id, seq, "event stored");
            Ok("events_accepted".into())
        } else {
            Ok("events_duplicate".into())
        }
    }
}

/// Pick the devices to republish now, and remember when.
fn due_republish(hub: &Hub, behind: Vec<DeviceId>, now: u64) -> Vec<DeviceId> {
    let Ok(mut last) = hub.republished.lock() else {
        return behind;
    };
    behind
        .into_iter()
        .filter(|id| {
            let due = last
                .get(id)
                .is_none_or(|t| now.saturating_sub(*t) >= REPUBLISH_INTERVAL_SECS);
            if due {
                last.insert(id.clone(), now);
            }
            due
        })
        .collect()
}

/// Drain incoming messages until `shutdown`; acks go to the [`sender`] via `acks`.
pub async fn run(
    hub: Arc<Hub>,
    mut rx: mpsc::Receiver<Publish>,
    acks: mpsc::UnboundedSender<Inbox>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let h = Arc::clone(&hub);
        let result = tokio::task::spawn_blocking(move || {
            let now = now_secs();
            let r = process_batch(&h, &batch, now);
            (r, batch, now)
        })
        .await;
        let (result, batch, now) = match result {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "ingest task panicked");
                continue;
            }
        };
        match result {
            Ok(outcome) => {
                for p in batch {
                    if acks.send(Inbox::Ack(Box::new(p))).is_err() {
                        // The sender stopped: only during shutdown.
                        tracing::debug!("ingest link sender stopped; ack dropped");
                    }
                }
                // No rate limit needed: once reissued the device is no longer ahead.
                for (id, generation) in outcome.ahead {
                    tracing::warn!(device_id = %id, generation, "device is ahead of the hub (restored database?); reissuing above it");
                    if let Err(e) = hub.reissue_above(id.clone(), generation).await {
                        tracing::error!(device_id = %id, error = %e, "could not reissue manifest");
                    }
                }
                let due = due_republish(&hub, outcome.behind, now);
                if !due.is_empty() {
                    tracing::info!(
                        devices = due.len(),
                        "republishing manifests to devices that are behind"
                    );
                    hub.send(Outbox::Manifests(due));
                }
            }
            // Not acked: the broker redelivers after our next reconnect.
            Err(e) => {
                tracing::error!(error = %e, messages = batch.len(), "could not store device messages")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::RejectCounters;

    fn report(seq: u64, uptime: u64) -> StatusReport {
        StatusReport {
            device_id: "d".parse().unwrap(),
            applied: None,
            seq,
            reported_at: 0,
            agent_version: "x".into(),
            uptime_secs: uptime,
            apps: vec![],
            rejected: RejectCounters::default(),
            last_rejection: None,
        }
    }

    #[test]
    fn behind_table() {
        let cases = [
            (None, None, false),
            (None, Some((1, 1)), true),
            (Some((1, 1)), Some((1, 2)), true),
            (Some((1, 2)), Some((1, 2)), false),
            (Some((1, 3)), Some((1, 2)), false),
            (Some((1, 9)), Some((2, 1)), true),
        ];
        for (a, d, want) in cases {
            assert_eq!(is_behind(a, d), want, "{a:?} {d:?}");
        }
    }

    #[test]
    fn ahead_table() {
        assert_eq!(is_ahead(Some((1, 9)), Some((1, 3))), Some(9));
        assert_eq!(is_ahead(Some((1, 3)), Some((1, 3))), None);
        assert_eq!(is_ahead(Some((1, 2)), Some((1, 3))), None);
        assert_eq!(is_ahead(Some((1, 9)), Some((2, 1))), None);
        assert_eq!(is_ahead(None, Some((1, 1))), None);
    }

    #[test]
    fn stale_reports_are_not_stored() {
        assert!(is_newer(None, &report(1, 10)));
        assert!(is_newer(Some(&report(1, 10)), &report(2, 40)));
        assert!(!is_newer(Some(&report(2, 40)), &report(2, 40)));
        assert!(!is_newer(Some(&report(5, 40)), &report(4, 50)));
        // Agent lost its state and restarted: lower seq, lower uptime.
        assert!(is_newer(Some(&report(5, 400)), &report(1, 3)));
    }
}
