//! The hub started in-process with `serve::start` on port 0 (how tests and the
//! fleet simulator embed it): events are stored once per seq, a device whose
//! status shows it behind gets its manifest republished, and the signed event
//! watermark covers only what is stored.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use outpost_hub::store::EventRecord;
use outpost_protocol::{topics, DeviceId, Event, EventKind, SigningKey, StatusReport, Verdict};
use outpost_test_support::eventually_async;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_deduplicated_and_a_device_behind_gets_its_manifest_again() {
    let InProcessHub {
        tmp,
        running,
        shutdown,
        api,
        ..
    } = InProcessHub::start().await;
    let mqtt_port = running.embedded_broker.unwrap().port();

    let key = SigningKey::generate().unwrap();
    let id: DeviceId = "ev-1".parse().unwrap();
    running
        .hub
        .add_device(
            id.clone(),
            key.public_key(),
            Default::default(),
            "test".into(),
        )
        .await
        .unwrap();

    let topic = topics::manifest(&id);
    let mut dev = Subscriber::device(&id, &key, mqtt_port, std::slice::from_ref(&topic)).await;
    let first = dev.next_on(&topic).await;
    let generation = match verifier(tmp.path(), &id)
        .verify(&first.payload, outpost_hub::clock::now_secs())
        .unwrap()
    {
        Verdict::Accept(a) => a.manifest.generation,
        other => panic!("{other:?}"),
    };

    // The same event twice (a QoS 1 redelivery), then another.
    let ev = |seq| Event {
        device_id: id.clone(),
        seq,
        at: 5,
        dropped_before: 0,
        kind: EventKind::AppStarted {
            app: "a".into(),
            pid: 7,
        },
    };
    for e in [ev(1), ev(1), ev(2)] {
        dev.client
            .publish(topics::events(&id), QoS::AtLeastOnce, false, e.seal(&key))
            .await
            .unwrap();
    }
    let events = eventually_async(DEADLINE, "two events stored", || async {
        let es: Vec<EventRecord> = api.get("/v1/devices/ev-1/events").await.ok()?;
        (es.len() == 2).then_some(es)
    })
    .await;
    assert_eq!(events[0].event.seq, 1);
    assert_eq!(events[1].event.seq, 2);
    let later: Vec<EventRecord> = api.get("/v1/devices/ev-1/events?after=1").await.unwrap();
    assert_eq!(later.len(), 1);

    // The device says it has applied nothing: the hub sends the manifest again.
    let behind = status_report(&id, 1, None);
    dev.client
        .publish(
            topics::status(&id),
            QoS::AtLeastOnce,
            false,
            behind.seal(&key),
        )
        .await
        .unwrap();
    let again = dev.next_on(&topic).await;
    assert_eq!(again.payload, first.payload, "same generation, same bytes");
    match verifier(tmp.path(), &id)
        .verify(&again.payload, outpost_hub::clock::now_secs())
        .unwrap()
    {
        Verdict::Accept(a) => assert_eq!(a.manifest.generation, generation),
        other => panic!("{other:?}"),
    }
    // The device reports a generation above the hub's (as after restoring the
    // hub's database from an old backup): the hub reissues above it.
    let ahead = StatusReport {
        applied: Some((1, generation + 40)),
        seq: 2,
        uptime_secs: 2,
        ..behind.clone()
    };
    dev.client
        .publish(
            topics::status(&id),
            QoS::AtLeastOnce,
            false,
            ahead.seal(&key),
        )
        .await
        .unwrap();
    let mut v = verifier(tmp.path(), &id);
    let (reissued, _) =
        manifest_where(&mut dev, &topic, &mut v, |m| m.generation > generation).await;
    assert_eq!(reissued.generation, generation + 41);

    let stats: outpost_hub::api::Stats = api.get("/v1/stats").await.unwrap();
    assert_eq!(stats.counters.get("events_duplicate"), Some(&1));

    shutdown.cancel();
    running.wait().await;
}

/// The next verified watermark on the device's acks topic covering at least `n`.
async fn watermark_at_least(
    dev: &mut Subscriber,
    id: &DeviceId,
    keyset: &outpost_protocol::KeySet,
    n: u64,
) -> outpost_protocol::EventWatermark {
    loop {
        let p = dev.next_on(&topics::acks(id)).await;
        let w = outpost_protocol::EventWatermark::open(&p.payload, id, keyset).unwrap();
        if w.acked_through >= n {
            return w;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signed_event_watermark_covers_only_contiguous_stored_events_and_the_device_floor() {
    let InProcessHub {
        tmp,
        running,
        shutdown,
        api,
        ..
    } = InProcessHub::start().await;
    let mqtt_port = running.embedded_broker.unwrap().port();
    let key = SigningKey::generate().unwrap();
    let id: DeviceId = "wm-1".parse().unwrap();
    running
        .hub
        .add_device(
            id.clone(),
            key.public_key(),
            Default::default(),
            "test".into(),
        )
        .await
        .unwrap();
    let acks = topics::acks(&id);
    let mut dev = Subscriber::device(&id, &key, mqtt_port, std::slice::from_ref(&acks)).await;
    // The agent's view: the provisioned key set verifies the watermark.
    let keyset = verifier(tmp.path(), &id).state().keyset.clone();
    let first = watermark_at_least(&mut dev, &id, &keyset, 0).await;
    assert_eq!(first.acked_through, 0, "published with nothing stored yet");

    let ev = |seq| Event {
        device_id: id.clone(),
        seq,
        at: 5,
        dropped_before: 0,
        kind: EventKind::AppStopped { app: "a".into() },
    };
    // 3 is "lost by the broker": the watermark must stop at 2.
    for seq in [1, 2, 4, 5] {
        dev.client
            .publish(
                topics::events(&id),
                QoS::AtLeastOnce,
                false,
                ev(seq).seal(&key),
            )
            .await
            .unwrap();
    }
    let w2 = watermark_at_least(&mut dev, &id, &keyset, 2).await;
    assert_eq!(w2.acked_through, 2);
    eventually_async(DEADLINE, "four events stored", || async {
        let es: Vec<EventRecord> = api.get("/v1/devices/wm-1/events").await.ok()?;
        (es.len() == 4).then_some(())
    })
    .await;
    // No pause needed: the watermark moves in the transaction that stores the
    // event (hub/src/ingest.rs), so four stored events are four decisions made.
    let d = running.hub.store.device_marks(&id).unwrap().unwrap();
    assert_eq!(d.events_acked, 2, "a gap holds the watermark");

    // The re-sent 3 fills the gap: the watermark jumps over 4 and 5.
    dev.client
        .publish(
            topics::events(&id),
            QoS::AtLeastOnce,
            false,
            ev(3).seal(&key),
        )
        .await
        .unwrap();
    let w = watermark_at_least(&mut dev, &id, &keyset, 5).await;
    assert_eq!(w.acked_through, 5);
    // Compared with a watermark published after events arrived, i.e. after
    // the ingest link subscribed: `first` may be the one published at
    // registration, before the hub announced its session.
    assert_eq!(w.hub_session, w2.hub_session, "same hub session");

    // 7 arrives but 6 was dropped by the device's bounded outbox: its status
    // says it will never send anything below 7 again.
    dev.client
        .publish(
            topics::events(&id),
            QoS::AtLeastOnce,
            false,
            ev(7).seal(&key),
        )
        .await
        .unwrap();
    let status = StatusReport {
        event_floor: 7,
        ..status_report(&id, 1, None)
    };
    dev.client
        .publish(
            topics::status(&id),
            QoS::AtLeastOnce,
            false,
            status.seal(&key),
        )
        .await
        .unwrap();
    let w = watermark_at_least(&mut dev, &id, &keyset, 7).await;
    assert_eq!(w.acked_through, 7);

    shutdown.cancel();
    running.wait().await;
}
