//! The hub started in-process with `serve::start` on port 0 (how tests and the
//! fleet simulator embed it): events are stored once per seq, and a device whose
//! status shows it behind gets its manifest republished.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use outpost_hub::store::EventRecord;
use outpost_protocol::{
    topics, DeviceId, Event, EventKind, RejectCounters, SigningKey, StatusReport, Verdict,
};
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
    let mut dev = Subscriber::connect("ev-1", mqtt_port, std::slice::from_ref(&topic)).await;
    let first = dev.next_on(&topic).await;
    let generation = match verifier(tmp.path(), &id).verify(&first.payload).unwrap() {
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
    let events = eventually("two events stored", || async {
        let es: Vec<EventRecord> = api.get("/v1/devices/ev-1/events").await.ok()?;
        (es.len() == 2).then_some(es)
    })
    .await;
    assert_eq!(events[0].event.seq, 1);
    assert_eq!(events[1].event.seq, 2);
    let later: Vec<EventRecord> = api.get("/v1/devices/ev-1/events?after=1").await.unwrap();
    assert_eq!(later.len(), 1);

    // The device says it has applied nothing: the hub sends the manifest again.
    let behind = StatusReport {
        device_id: id.clone(),
        applied: None,
        boot: 1,
        seq: 1,
        event_floor: 0,
        reported_at: 0,
        agent_version: "t".into(),
        uptime_secs: 1,
        apps: vec![],
        rejected: RejectCounters::default(),
        last_rejection: None,
    };
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
    match verifier(tmp.path(), &id).verify(&again.payload).unwrap() {
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
