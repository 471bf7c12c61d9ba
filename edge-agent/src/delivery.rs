//! End-to-end delivery of status and events: the sender task, and the pure
//! decisions it runs on.
//!
//! A broker's PUBACK only says the broker took a message. A broker without
//! persistence (Mosquitto's default; the embedded broker always) that restarts
//! while the hub is away loses what it had queued for the hub, and a status
//! sent while the hub is not subscribed reaches nobody. So:
//!
//! - an event leaves the outbox only when the hub's signed event watermark
//!   (`outpost_protocol::EventWatermark`, retained on `topics::acks`) covers
//!   it; the inbox verifies the watermark, deletes what it covers and hands it
//!   to the sender through a [`HubAck`] watch;
//! - on every connection the sender sends a status, then every unacknowledged
//!   event from the watermark up, one QoS 1 publish in flight at a time (the
//!   broker's PUBACK paces us and keeps the order);
//! - when a watermark with a new `hub_session` arrives the hub has just
//!   (re)subscribed and may have missed what we sent: status and every
//!   unacknowledged event again ([`hub_returned`]);
//! - while the watermark lags behind what was sent, everything unacknowledged
//!   is sent again after [`resend_after`] (30 s, doubling while nothing moves,
//!   capped), which repairs a lost watermark or an event the broker dropped
//!   while the hub stayed subscribed.
//!
//! The hub drops duplicates by `seq`, so re-sending is always safe.

use crate::link::AckEvent;
use crate::outbox::Outbox;
use crate::report::Reporter;
use outpost_protocol::{topics, EventWatermark, KeySet};
use rumqttc::{AsyncClient, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// A publish not acknowledged by the broker within this time is treated as a
/// dead link.
const ACK_TIMEOUT: Duration = Duration::from_secs(20);
/// Smallest gap between two status reports sent because the view changed.
const MIN_STATUS_GAP: Duration = Duration::from_secs(1);
/// First wait for the watermark to cover what was sent before sending it all
/// again. The hub answers a batch within milliseconds when it is there, so 30 s
/// means something was lost, not that the hub is slow.
pub const RESEND_FIRST: Duration = Duration::from_secs(30);
/// Longest wait between two re-sends while the watermark does not move: with
/// the hub away for hours, re-sending a full outbox every 30 s would only
/// spend a metered link (the hub's return is announced anyway, see
/// [`hub_returned`]).
pub const RESEND_MAX: Duration = Duration::from_secs(600);

/// The latest verified watermark, as the inbox hands it to the sender.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubAck {
    /// Every event up to this seq is stored at the hub.
    pub acked_through: u64,
    /// `hub_session` of the watermark; `None` before the first one.
    pub session: Option<u64>,
}

/// How long to wait for the watermark before re-sending, after `rounds`
/// re-sends that did not move it: [`RESEND_FIRST`] doubling up to
/// [`RESEND_MAX`]. (Pure.)
pub fn resend_after(rounds: u32) -> Duration {
    RESEND_FIRST
        .saturating_mul(1u32 << rounds.min(16))
        .min(RESEND_MAX)
}

/// Should everything unacknowledged be sent again now? Only if something sent
/// is still not covered by the watermark and we have waited long enough since
/// the watermark last moved (or since the last re-send). (Pure.)
pub fn resend_due(acked: u64, sent_through: u64, waited: Duration, rounds: u32) -> bool {
    sent_through > acked && waited >= resend_after(rounds)
}

/// How long until the next status is due, `since_last` the last one was
/// sent: a view change is reported at once, but no sooner than
/// [`MIN_STATUS_GAP`] after the last status (a pull or a backoff countdown
/// changes the view often); without a change, when `interval` has passed.
/// Zero: send now. (Pure.)
pub fn next_status_in(changed: bool, since_last: Duration, interval: Duration) -> Duration {
    let periodic = interval.saturating_sub(since_last);
    if changed {
        periodic.min(MIN_STATUS_GAP.saturating_sub(since_last))
    } else {
        periodic
    }
}

/// Did the hub (re)subscribe since we last heard from it? A watermark with a
/// session we have not seen says so. (Pure.)
pub fn hub_returned(last_seen: Option<u64>, now: Option<u64>) -> bool {
    now.is_some() && now != last_seen
}

/// Handle a message on the device's acks topic: verify the watermark with the
/// trusted key set, delete the outbox entries it covers, and hand it to the
/// sender. A refused one is logged and otherwise ignored (it cannot make us
/// delete anything); an empty one is the hub clearing it (device removed).
pub async fn on_watermark(
    outbox: &Outbox,
    keyset: &KeySet,
    payload: Vec<u8>,
    hub: &watch::Sender<HubAck>,
) {
    let device = outbox.device_id();
    if payload.is_empty() {
        return;
    }
    let w = match EventWatermark::open(&payload, device, keyset) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(device_id = %device, error = %e, "event watermark refused");
            return;
        }
    };
    let acked = w.acked_through;
    let o = outbox.clone();
    match tokio::task::spawn_blocking(move || o.ack_through(acked)).await {
        Ok(Ok(n)) if n > 0 => {
            tracing::debug!(device_id = %device, acked_through = acked, deleted = n, "events acknowledged by the hub");
        }
        Ok(Ok(_)) => {}
        // The entries stay and are sent again; the hub drops them as duplicates.
        Ok(Err(e)) => {
            tracing::error!(device_id = %device, error = %e, "deleting acknowledged events")
        }
        Err(e) => tracing::error!(device_id = %device, error = %e, "outbox task failed"),
    }
    hub.send_replace(HubAck {
        acked_through: w.acked_through,
        session: Some(w.hub_session),
    });
}

/// Delivers status and the outbox (see the module docs).
pub struct Sender {
    pub client: AsyncClient,
    /// Seals status from the view.
    pub reporter: Arc<Reporter>,
    pub outbox: Outbox,
    /// Connection number while connected, `None` while down.
    pub conn: watch::Receiver<Option<u64>>,
    pub acks: mpsc::UnboundedReceiver<AckEvent>,
    /// The hub's watermark, from the inbox.
    pub hub: watch::Receiver<HubAck>,
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

    /// A fresh signed status (the event floor read off the async threads).
    async fn status(&self) -> Vec<u8> {
        let outbox = self.outbox.clone();
        let floor = match tokio::task::spawn_blocking(move || outbox.floor()).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                // 0 claims nothing; the hub then just waits for the events.
                tracing::warn!(error = %e, "reading the outbox floor");
                0
            }
            Err(_) => 0,
        };
        self.reporter.sealed_status(floor)
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let device = self.outbox.device_id().clone();
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
            let mut seen = *self.hub.borrow_and_update();
            let status = self.status().await;
            if self.publish_and_wait(&status_topic, status).await.is_err() {
                continue;
            }
            let mut last_status = tokio::time::Instant::now();
            // Everything not covered by the watermark goes out again on each
            // connection: the broker may have lost it.
            let mut sent_through = seen.acked_through;
            let mut progress_at = tokio::time::Instant::now();
            let mut rounds = 0u32;
            // A view change not reported yet. The wait below wakes on
            // `changes.changed()`, which marks the change as seen (so
            // `changes.has_changed()` is false after it), and a change seen
            // while the status waits out `MIN_STATUS_GAP` is marked seen so
            // that wait does not wake for it again: the flag remembers both.
            let mut view_changed = false;
            loop {
                // Drain the outbox in order, from what is neither acked nor sent.
                loop {
                    if cancel.is_cancelled() {
                        break 'outer;
                    }
                    let after = sent_through.max(self.hub.borrow().acked_through);
                    let outbox = self.outbox.clone();
                    let next = tokio::task::spawn_blocking(move || outbox.next_after(after)).await;
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
                    tracing::debug!(device_id = %device, seq, "event sent");
                    sent_through = seq;
                }
                let hub = *self.hub.borrow_and_update();
                if hub.acked_through > seen.acked_through {
                    progress_at = tokio::time::Instant::now();
                    rounds = 0;
                }
                let returned = hub_returned(seen.session, hub.session);
                seen = hub;
                if returned {
                    tracing::info!(device_id = %device, acked_through = hub.acked_through, "the hub (re)subscribed: sending status and unacknowledged events again");
                    sent_through = hub.acked_through;
                    progress_at = tokio::time::Instant::now();
                    changes.borrow_and_update();
                    view_changed = false;
                    last_status = tokio::time::Instant::now();
                    let status = self.status().await;
                    if self.publish_and_wait(&status_topic, status).await.is_err() {
                        continue 'outer;
                    }
                    continue;
                }
                if resend_due(
                    hub.acked_through,
                    sent_through,
                    progress_at.elapsed(),
                    rounds,
                ) {
                    tracing::info!(device_id = %device, acked_through = hub.acked_through, sent_through, "hub watermark lags: sending unacknowledged events again");
                    sent_through = hub.acked_through;
                    progress_at = tokio::time::Instant::now();
                    rounds = rounds.saturating_add(1);
                    continue;
                }
                if changes.has_changed().unwrap_or(false) {
                    changes.borrow_and_update();
                    view_changed = true;
                }
                let status_in =
                    next_status_in(view_changed, last_status.elapsed(), self.status_interval);
                if status_in.is_zero() {
                    view_changed = false;
                    last_status = tokio::time::Instant::now();
                    let status = self.status().await;
                    if self.publish_and_wait(&status_topic, status).await.is_err() {
                        continue 'outer;
                    }
                    continue;
                }
                // A status waiting out the gap is waited for here, where
                // events queued meanwhile still wake us and go out first.
                let mut wait = status_in;
                if sent_through > hub.acked_through {
                    wait = wait.min(resend_after(rounds).saturating_sub(progress_at.elapsed()));
                }
                tokio::select! {
                    _ = cancel.cancelled() => break 'outer,
                    _ = self.outbox.queued() => {}
                    r = changes.changed() => {
                        if r.is_err() { break 'outer }
                        view_changed = true;
                    }
                    r = self.hub.changed() => if r.is_err() { break 'outer },
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
    use outpost_protocol::StatusReport;

    #[test]
    fn resend_waits_grow_while_nothing_moves_and_are_capped() {
        assert_eq!(resend_after(0), Duration::from_secs(30));
        assert_eq!(resend_after(1), Duration::from_secs(60));
        assert_eq!(resend_after(4), Duration::from_secs(480));
        assert_eq!(resend_after(5), RESEND_MAX);
        assert_eq!(resend_after(u32::MAX), RESEND_MAX);
    }

    #[test]
    fn resend_due_table() {
        let s = Duration::from_secs;
        // (acked, sent_through, waited, rounds, due)
        let cases = [
            (5, 5, s(3600), 0, false), // everything sent is acked
            (0, 0, s(3600), 0, false), // nothing sent
            (7, 5, s(3600), 0, false), // watermark ahead (events sent before a restart)
            (4, 5, s(29), 0, false),   // not waited long enough
            (4, 5, s(30), 0, true),
            (4, 5, s(59), 1, false), // second round waits twice as long
            (4, 5, s(60), 1, true),
            (4, 5, s(600), 9, true), // capped
        ];
        for (acked, sent, waited, rounds, due) in cases {
            assert_eq!(
                resend_due(acked, sent, waited, rounds),
                due,
                "acked {acked} sent {sent} waited {waited:?} rounds {rounds}"
            );
        }
    }

    #[tokio::test]
    async fn only_a_verified_watermark_deletes_outbox_entries() {
        use crate::state::Store;
        use outpost_protocol::{EventKind, SigningKey};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let device: outpost_protocol::DeviceId = "pi-1".parse().unwrap();
        let outbox = Outbox::new(
            device.clone(),
            Arc::new(SigningKey::generate().unwrap()),
            store.clone(),
            100,
        );
        for _ in 0..3 {
            outbox
                .event_blocking(EventKind::AppStopped { app: "a".into() })
                .unwrap();
        }
        let hub_key = SigningKey::generate().unwrap();
        let keyset = KeySet {
            version: 1,
            issued_at: 0,
            keys: vec![hub_key.public_key()],
            expires_at: outpost_protocol::NEVER,
            root_version: 1,
        };
        let (tx, rx) = watch::channel(HubAck::default());
        let wm = |n: u64, device: &str| EventWatermark {
            device_id: device.parse().unwrap(),
            acked_through: n,
            hub_session: 7,
            issued_at: 0,
        };
        // Forged (unknown key), for another device, junk: nothing deleted.
        let forged = wm(3, "pi-1").seal(&SigningKey::generate().unwrap());
        for bad in [forged, wm(3, "pi-2").seal(&hub_key), vec![1, 2, 3], vec![]] {
            on_watermark(&outbox, &keyset, bad, &tx).await;
        }
        assert_eq!(store.outbox_len().unwrap(), 3);
        assert_eq!(*rx.borrow(), HubAck::default());
        on_watermark(&outbox, &keyset, wm(2, "pi-1").seal(&hub_key), &tx).await;
        assert_eq!(store.outbox_next(0).unwrap().unwrap().0, 3);
        assert_eq!(
            *rx.borrow(),
            HubAck {
                acked_through: 2,
                session: Some(7)
            }
        );
    }

    /// A sender wired to a rumqttc client without an event loop: the test
    /// reads each publish from the client's request channel and plays the
    /// poller's part (`Sent`, then the broker's `Acked`).
    struct SenderRig {
        requests: flume::Receiver<rumqttc::Request>,
        acks: mpsc::UnboundedSender<AckEvent>,
        writers: crate::view::Writers,
        outbox: Outbox,
        /// Held so the sender's watch stays open (no watermark is sent).
        _hub: watch::Sender<HubAck>,
        device: outpost_protocol::DeviceId,
        device_key: outpost_protocol::PublicKey,
        cancel: CancellationToken,
        pkid: u16,
        _dir: tempfile::TempDir,
    }

    fn sender_rig(status_interval: Duration) -> SenderRig {
        let crate::report::ReporterRig {
            dir,
            key,
            outbox,
            writers,
            reporter,
            ..
        } = crate::report::ReporterRig::new("pi-1", 1);
        let device: outpost_protocol::DeviceId = "pi-1".parse().unwrap();
        let device_key = key.public_key();
        let (request_tx, requests) = flume::bounded(16);
        let (acks, acks_rx) = mpsc::unbounded_channel();
        let (hub_tx, hub) = watch::channel(HubAck::default());
        let sender = Sender {
            client: AsyncClient::from_senders(request_tx),
            reporter,
            outbox: outbox.clone(),
            conn: writers.link.subscribe(),
            acks: acks_rx,
            hub,
            status_interval,
        };
        let cancel = CancellationToken::new();
        tokio::spawn(sender.run(cancel.clone()));
        SenderRig {
            requests,
            acks,
            writers,
            outbox,
            _hub: hub_tx,
            device,
            device_key,
            cancel,
            pkid: 0,
            _dir: dir,
        }
    }

    impl SenderRig {
        /// The next publish within `within`, acknowledged like a broker would:
        /// its topic and payload, or `None` if nothing was published in time.
        async fn next_publish(&mut self, within: Duration) -> Option<(String, Vec<u8>)> {
            let req = tokio::time::timeout(within, self.requests.recv_async())
                .await
                .ok()?
                .unwrap();
            let rumqttc::Request::Publish(p) = req else {
                panic!("the sender only publishes, got {req:?}");
            };
            self.pkid += 1;
            self.acks.send(AckEvent::Sent(self.pkid)).unwrap();
            self.acks.send(AckEvent::Acked(self.pkid)).unwrap();
            Some((p.topic, p.payload.to_vec()))
        }

        /// The next publish within `within`, which must be a status.
        async fn next_status(&mut self, within: Duration) -> Option<StatusReport> {
            let (topic, payload) = self.next_publish(within).await?;
            assert_eq!(topic, topics::status(&self.device));
            Some(StatusReport::open(&payload, &self.device, &self.device_key).unwrap())
        }
    }

    fn manifest(generation: u64) -> Arc<outpost_protocol::Manifest> {
        Arc::new(outpost_protocol::Manifest {
            device_id: "pi-1".parse().unwrap(),
            epoch: 1,
            generation,
            issued_at: 0,
            key_id: outpost_protocol::KeyId("k".into()),
            apps: vec![],
            release: Default::default(),
            expires_at: outpost_protocol::NEVER,
        })
    }

    /// A view change while the sender waits idle (the hub's watermark and the
    /// periodic status are far off) is reported at once, or [`MIN_STATUS_GAP`]
    /// after the previous status; not with the next periodic one.
    #[tokio::test(start_paused = true)]
    async fn a_view_change_that_wakes_an_idle_sender_is_reported_promptly() {
        let interval = Duration::from_secs(30);
        let mut rig = sender_rig(interval);
        rig.writers.link.send_replace(Some(1));
        let first = rig.next_status(Duration::from_secs(1)).await.unwrap();
        assert_eq!(first.applied, None, "the status of every connection");
        // Idle: nothing to send until the periodic status.
        assert!(rig.next_publish(Duration::from_secs(5)).await.is_none());

        let changed_at = tokio::time::Instant::now();
        rig.writers.desired.send_replace(Some(manifest(2)));
        let st = rig
            .next_status(interval)
            .await
            .expect("a status within the interval");
        assert_eq!(st.applied, Some((1, 2)));
        assert!(
            changed_at.elapsed() < MIN_STATUS_GAP,
            "sent {:?} after the change",
            changed_at.elapsed()
        );

        // A second change right after that status waits out the gap, no more.
        let sent_at = tokio::time::Instant::now();
        rig.writers.desired.send_replace(Some(manifest(3)));
        let st = rig
            .next_status(interval)
            .await
            .expect("a status within the interval");
        assert_eq!(st.applied, Some((1, 3)));
        assert!(
            (MIN_STATUS_GAP..MIN_STATUS_GAP * 2).contains(&sent_at.elapsed()),
            "sent {:?} after the previous status",
            sent_at.elapsed()
        );

        // And with no change, the periodic one.
        let last = tokio::time::Instant::now();
        let st = rig.next_status(interval * 2).await.unwrap();
        assert_eq!(st.applied, Some((1, 3)));
        assert!(last.elapsed() >= interval, "{:?}", last.elapsed());
        rig.cancel.cancel();
    }

    /// An event queued while a change-driven status waits out
    /// [`MIN_STATUS_GAP`] goes out at once, not after that status: a
    /// manifest's `ManifestApplied` and the pull and start events that
    /// follow it must not wait for the status the change asked for.
    #[tokio::test(start_paused = true)]
    async fn events_are_not_held_back_while_a_status_waits_out_the_gap() {
        let mut rig = sender_rig(Duration::from_secs(30));
        rig.writers.link.send_replace(Some(1));
        rig.next_status(Duration::from_secs(1)).await.unwrap();
        let first_status_at = tokio::time::Instant::now();
        // Right after that status a change, whose status must wait for the
        // gap; once the sender waits for it, an event.
        rig.writers.desired.send_replace(Some(manifest(2)));
        tokio::time::sleep(MIN_STATUS_GAP / 10).await;
        rig.outbox
            .event(outpost_protocol::EventKind::ManifestApplied {
                epoch: 1,
                generation: 2,
            })
            .await;
        let (topic, _) = rig
            .next_publish(Duration::from_secs(30))
            .await
            .expect("a publish");
        assert_eq!(topic, topics::events(&rig.device), "the event first");
        assert!(
            first_status_at.elapsed() < MIN_STATUS_GAP,
            "the event waited {:?}",
            first_status_at.elapsed()
        );
        let st = rig.next_status(Duration::from_secs(30)).await.unwrap();
        assert_eq!(st.applied, Some((1, 2)));
        assert!(first_status_at.elapsed() >= MIN_STATUS_GAP);
        rig.cancel.cancel();
    }

    #[test]
    fn next_status_in_table() {
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        let gap = MIN_STATUS_GAP;
        // (changed, since the last status, interval, due in)
        let cases = [
            (true, s(5), s(30), ms(0)), // a change, last status long ago: now
            (true, ms(300), s(30), gap - ms(300)), // a change right after a status: the gap
            (true, gap, s(30), ms(0)),
            (false, s(5), s(30), s(25)), // no change: the periodic status
            (false, s(30), s(30), ms(0)),
            (false, s(31), s(30), ms(0)),
            (true, ms(300), ms(500), ms(200)), // an interval shorter than the gap wins
            (false, ms(0), Duration::MAX, Duration::MAX), // no periodic status
        ];
        for (changed, since, interval, want) in cases {
            assert_eq!(
                next_status_in(changed, since, interval),
                want,
                "changed {changed} since {since:?} interval {interval:?}"
            );
        }
    }

    #[test]
    fn hub_returned_table() {
        let cases = [
            (None, None, false),       // no watermark yet
            (None, Some(1), true),     // first watermark this run
            (Some(1), Some(1), false), // the same session (watermark moved, or retained re-delivery)
            (Some(1), Some(2), true),  // the hub re-subscribed
            (Some(1), None, false),
        ];
        for (last, now, want) in cases {
            assert_eq!(hub_returned(last, now), want, "{last:?} {now:?}");
        }
    }
}
