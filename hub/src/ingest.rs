//! Status and event ingestion: verify every device message against the device's
//! registered key, keep the last good status (only a strictly newer signed
//! `(boot, seq)`: an older one is a replay), append events (deduplicated by
//! `seq`) and move each device's event watermark, count what was refused, and
//! notice devices that are behind.
//!
//! The watermark is published (signed, retained, by the publisher) only after
//! the batch's durable commit: the device deletes an event once the watermark
//! covers it, so the watermark must never promise more than the disk holds.
//!
//! Messages are handled in batches, one redb transaction per batch, and acked
//! only after that commit (QoS 1: an unacked message is redelivered). Forged or
//! malformed messages are acked too (redelivery would not make them valid) and
//! counted by reason.
//!
//! Acks and subscriptions go out on the ingest link, which publishes nothing, by
//! the [`sender`] task; never on the publish link, where they would queue behind
//! manifests (the rumqttd deadlock described in [`crate::link`]).

use crate::hub::Hub;
use crate::outbox::Outbox;
use crate::store::{EventRecord, StatusRecord, StoreError, Tx};
use outpost_protocol::topics::{self, DeviceTopic};
use outpost_protocol::{DeviceId, DeviceMessageError, Event, OpenError, StatusReport};
use rumqttc::{AsyncClient, Publish, QoS, SubscribeFilter};
use std::collections::{BTreeMap, BTreeSet};
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

/// What the ingest task measures, for `/metrics` (its only writer is [`run`]).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Messages received from the broker and waiting for a batch, as of the
    /// latest batch taken.
    pub backlog: std::sync::atomic::AtomicU64,
}

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

/// One SUBSCRIBE for every filter, so its one SUBACK tells the driver that the
/// hub now hears devices (it then announces itself, see `publish`). Log
/// chunks at QoS 0: they are for someone watching now (`logs.rs`).
async fn subscribe(client: &AsyncClient) -> Result<(), rumqttc::ClientError> {
    client
        .subscribe_many([
            SubscribeFilter::new(topics::all_status(), QoS::AtLeastOnce),
            SubscribeFilter::new(topics::all_events(), QoS::AtLeastOnce),
            SubscribeFilter::new(topics::all_logs(), QoS::AtMostOnce),
        ])
        .await?;
    tracing::info!("subscribing to device status and events");
    Ok(())
}

/// A log chunk goes straight to its waiting stream (`logs.rs`), never into a
/// durable batch: `None` when `p` was one.
fn relay_log(hub: &Hub, p: Publish) -> Option<Publish> {
    let Some(DeviceTopic::Logs(id)) = topics::parse(&p.topic) else {
        return Some(p);
    };
    let key = match hub.store.device(&id) {
        Ok(Some(d)) => d.public_key,
        Ok(None) => {
            tracing::debug!(device_id = %id, "log chunk from an unregistered device dropped");
            return None;
        }
        Err(e) => {
            tracing::warn!(device_id = %id, error = %e, "log chunk dropped: reading the device");
            return None;
        }
    };
    match outpost_protocol::LogChunk::open(&p.payload, &id, &key) {
        Ok(chunk) => hub.logs.deliver(&id, chunk),
        Err(e) => tracing::warn!(device_id = %id, error = %e, "log chunk refused"),
    }
    None
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

/// Where a status stands against the last accepted one, by `(boot, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOrder {
    /// Strictly newer: accept.
    Newer,
    /// The same report again (a QoS 1 redelivery): ignore quietly.
    Same,
    /// Older: late, or a captured report replayed. Refused and counted.
    Older,
}

/// Order a status by its `(boot, seq)` against the last accepted one. The boot
/// counter is persisted by the device and signed inside the report, so neither
/// a restart of the device nor one of the hub reopens a replay window. (Pure.)
pub fn status_order(last: Option<(u64, u64)>, new: (u64, u64)) -> StatusOrder {
    match last {
        None => StatusOrder::Newer,
        Some(last) if new > last => StatusOrder::Newer,
        Some(last) if new == last => StatusOrder::Same,
        Some(_) => StatusOrder::Older,
    }
}

/// Is an event new to the hub?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventVerdict {
    New,
    /// At or below the watermark, or already stored: a re-send (after a lost
    /// watermark, a reconnect or a broker restart) or a QoS 1 redelivery.
    Duplicate,
}

/// Decide whether event `seq` is new, given the device's watermark and
/// whether an event with that seq is stored. (Pure.)
pub fn event_verdict(acked: u64, seq: u64, stored: bool) -> EventVerdict {
    if seq <= acked || stored {
        EventVerdict::Duplicate
    } else {
        EventVerdict::New
    }
}

/// The new watermark: from `acked` (or the device's `floor - 1`, below which
/// it will never send anything again because it was acknowledged or dropped
/// by its bounded outbox), forward over every contiguous stored seq. A gap (an
/// event the broker lost) holds the watermark, so the device keeps that event
/// and sends it again. (Pure: `present` answers "is this seq stored?".)
pub fn advance_watermark<E>(
    acked: u64,
    floor: u64,
    mut present: impl FnMut(u64) -> Result<bool, E>,
) -> Result<u64, E> {
    let mut at = acked.max(floor.saturating_sub(1));
    while at < u64::MAX && present(at + 1)? {
        at += 1;
    }
    Ok(at)
}

/// What a batch decided.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Devices whose status shows them behind their desired manifest.
    pub behind: Vec<DeviceId>,
    /// Devices that accepted a generation above the hub's (with that generation).
    pub ahead: Vec<(DeviceId, u64)>,
    /// Devices whose event watermark should be (re)published: it moved, or the
    /// device re-sent events the hub already had (it may have missed it).
    pub watermarks: BTreeSet<DeviceId>,
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
        let mut marks = tx.marks(&id, &device.public_key)?;
        match status_order(marks.status, (report.boot, report.seq)) {
            StatusOrder::Newer => {}
            StatusOrder::Same => return Ok("status_duplicate".into()),
            StatusOrder::Older => {
                tracing::warn!(
                    device_id = %id,
                    boot = report.boot,
                    seq = report.seq,
                    last = ?marks.status,
                    "status older than the last accepted one refused (late or replayed)"
                );
                return Ok("status_rejected.replayed".into());
            }
        }
        marks.status = Some((report.boot, report.seq));
        let acked = advance_watermark(marks.events_acked, report.event_floor, |s| {
            tx.has_event(&id, s)
        })?;
        if acked != marks.events_acked {
            marks.events_acked = acked;
            out.watermarks.insert(id.clone());
        }
        tx.put_marks(&id, &marks)?;
        let desired = tx.manifest_meta(&id)?.map(|m| (m.epoch, m.generation));
        if is_behind(report.applied, desired) {
            out.behind.push(id.clone());
        }
        if let Some(generation) = is_ahead(report.applied, desired) {
            out.ahead.push((id.clone(), generation));
        }
        tracing::debug!(device_id = %id, boot = report.boot, seq = report.seq, applied = ?report.applied, "status accepted");
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
        let mut marks = tx.marks(&id, &device.public_key)?;
        let stored = seq > marks.events_acked && tx.has_event(&id, seq)?;
        // Either way the device gets the watermark again: a re-send means it
        // has not seen the current one.
        out.watermarks.insert(id.clone());
        match event_verdict(marks.events_acked, seq, stored) {
            EventVerdict::Duplicate => Ok("events_duplicate".into()),
            EventVerdict::New => {
                tx.insert_event(
                    &id,
                    &EventRecord {
                        received_at: now,
                        event,
                    },
                )?;
                let acked = advance_watermark(marks.events_acked, 0, |s| tx.has_event(&id, s))?;
                if acked != marks.events_acked {
                    marks.events_acked = acked;
                    tx.put_marks(&id, &marks)?;
                }
                tracing::debug!(device_id = %id, seq, acked, "event stored");
                Ok("events_accepted".into())
            }
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
    stats: Arc<IngestStats>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let Some(first) = relay_log(&hub, first) else {
            continue;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => {
                    if let Some(m) = relay_log(&hub, m) {
                        batch.push(m);
                    }
                }
                Err(_) => break,
            }
        }
        stats
            .backlog
            .store(rx.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let h = Arc::clone(&hub);
        let result = tokio::task::spawn_blocking(move || {
            let now = h.now();
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
                // After the durable commit: the watermark promises storage.
                if !outcome.watermarks.is_empty() {
                    hub.send(Outbox::Watermarks(outcome.watermarks.into_iter().collect()));
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
    fn status_order_table() {
        use StatusOrder::*;
        let cases = [
            (None, (1, 1), Newer),
            (Some((1, 5)), (1, 6), Newer),
            // The agent restarted: a new boot, seq from 1 again.
            (Some((1, 5)), (2, 1), Newer),
            (Some((1, 5)), (1, 5), Same),
            (Some((1, 5)), (1, 4), Older),
            // The old rule let a lower uptime through: a replayed report from an
            // earlier boot is refused whatever its uptime or seq.
            (Some((3, 1)), (2, 999), Older),
            (Some((3, 1)), (0, u64::MAX), Older),
        ];
        for (last, new, want) in cases {
            assert_eq!(status_order(last, new), want, "{last:?} {new:?}");
        }
    }

    #[test]
    fn event_verdict_table() {
        use EventVerdict::*;
        let cases = [
            (0, 1, false, New),
            (5, 6, false, New),
            (5, 9, false, New),
            (5, 5, false, Duplicate),
            (5, 3, false, Duplicate),
            (5, 7, true, Duplicate),
        ];
        for (acked, seq, stored, want) in cases {
            assert_eq!(
                event_verdict(acked, seq, stored),
                want,
                "{acked} {seq} {stored}"
            );
        }
    }

    #[test]
    fn watermark_advances_over_contiguous_events_and_the_device_floor_only() {
        let run = |acked: u64, floor: u64, stored: &[u64]| {
            let set: BTreeSet<u64> = stored.iter().copied().collect();
            advance_watermark::<()>(acked, floor, |s| Ok(set.contains(&s))).unwrap()
        };
        assert_eq!(run(0, 0, &[]), 0);
        assert_eq!(run(0, 0, &[1, 2, 3]), 3);
        // A gap (the broker lost seq 3) holds it: the device keeps 3 and resends.
        assert_eq!(run(0, 0, &[1, 2, 4, 5]), 2);
        assert_eq!(run(2, 0, &[1, 2, 3, 4, 5]), 5);
        // The device's outbox dropped 3 (bounded): its floor says so.
        assert_eq!(run(2, 4, &[1, 2, 4, 5]), 5);
        // A floor never moves it back.
        assert_eq!(run(7, 2, &[]), 7);
        assert_eq!(run(0, 1, &[]), 0);
        assert_eq!(run(u64::MAX, 0, &[]), u64::MAX);
    }
}
