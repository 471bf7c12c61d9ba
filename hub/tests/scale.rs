//! Fleet-scale behaviour of one apply: N devices registered in one batch, one
//! deployment applied over all of them, then re-applied unchanged. Prints the
//! time taken (for the report; nothing asserts on time). N defaults to 2,000;
//! set OUTPOST_SCALE_DEVICES=10000 for the simulator's size.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;
use common::InProcessHub;

use outpost_hub::config::DataDir;
use outpost_hub::deploy::DeploymentSpec;
use outpost_hub::hub::{Hub, NewDevice};
use outpost_hub::publish::Outbox;
use outpost_hub::resolve::PinnedOnly;
use outpost_hub::signing::{self, Signer};
use outpost_hub::store::Store;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_apply_over_a_large_fleet_renders_each_device_once() {
    let n: usize = std::env::var("OUTPOST_SCALE_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path());
    signing::create_keys(&dir, 0).unwrap();
    let store = Store::open(&dir.database()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let hub = Arc::new(Hub::new(
        store,
        Signer::load(&dir).unwrap(),
        Arc::new(PinnedOnly),
        tx,
    ));
    let key = outpost_protocol::SigningKey::generate()
        .unwrap()
        .public_key();
    let devices: Vec<NewDevice> = (0..n)
        .map(|i| NewDevice {
            id: format!("sim-{i:05}").parse().unwrap(),
            public_key: key,
            labels: BTreeMap::from([("fleet".to_string(), "sim".to_string())]),
            encryption_key: None,
        })
        .collect();

    let t = Instant::now();
    hub.add_devices(devices, "test".into()).await.unwrap();
    let register = t.elapsed();

    let spec = DeploymentSpec::from_toml(&format!(
        "name = \"fleet\"\nselector = {{ fleet = \"sim\" }}\n[[apps]]\nname = \"app\"\nimage = \"reg/app@sha256:{}\"\n",
        "ab".repeat(32)
    ))
    .unwrap();
    let t = Instant::now();
    let out = hub.apply(spec.clone(), "test".into()).await.unwrap();
    let apply = t.elapsed();
    assert_eq!(out.matched_devices, n);
    assert_eq!(out.updated.len(), n);
    assert!(out.updated.iter().all(|u| u.generation == 2));

    let t = Instant::now();
    let again = hub.apply(spec, "test".into()).await.unwrap();
    let reapply = t.elapsed();
    assert!(again.updated.is_empty());

    // The publisher is told once per operation, not once per device.
    let mut batches = 0;
    while let Ok(m) = rx.try_recv() {
        if let Outbox::Manifests(ids) = m {
            assert_eq!(ids.len(), n);
            batches += 1;
        }
    }
    assert_eq!(batches, 2, "registration and the changing apply");
    println!(
        "scale: {n} devices: register {register:?}, apply {apply:?}, unchanged re-apply {reapply:?}"
    );
}

/// N devices each send one status through the embedded broker; all are verified
/// and stored. Prints the time until the last one is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_from_every_device_is_ingested() {
    use crate::common::status_report;
    use outpost_protocol::topics;
    use rumqttc::{AsyncClient, MqttOptions, QoS};

    let n: usize = std::env::var("OUTPOST_SCALE_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let InProcessHub {
        running, shutdown, ..
    } = InProcessHub::start().await;
    let key = outpost_protocol::SigningKey::generate().unwrap();
    let ids: Vec<outpost_protocol::DeviceId> = (0..n)
        .map(|i| format!("st-{i:05}").parse().unwrap())
        .collect();
    running
        .hub
        .add_devices(
            ids.iter()
                .map(|id| NewDevice {
                    id: id.clone(),
                    public_key: key.public_key(),
                    labels: BTreeMap::new(),
                    encryption_key: None,
                })
                .collect(),
            "test".into(),
        )
        .await
        .unwrap();
    let payloads: Vec<(String, Vec<u8>)> = ids
        .iter()
        .map(|id| {
            let r = status_report(id, 1, Some((1, 1)));
            (topics::status(id), r.seal(&key))
        })
        .collect();

    // Each device publishes its own status logged in as itself (the broker
    // lets nobody publish for another device), 200 connections at a time.
    let port = running.embedded_broker.unwrap().port();
    let t = Instant::now();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
    let mut sent = tokio::task::JoinSet::new();
    for (id, (topic, bytes)) in ids.iter().zip(payloads) {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let mut o = MqttOptions::new(id.as_str(), "127.0.0.1", port);
        o.set_max_packet_size(1 << 20, 1 << 20).set_credentials(
            id.as_str(),
            outpost_protocol::login::device_password(&key, id),
        );
        sent.spawn(async move {
            let (client, mut eventloop) = AsyncClient::new(o, 10);
            client
                .publish(topic, QoS::AtLeastOnce, false, bytes)
                .await
                .unwrap();
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => panic!("status publish failed: {e}"),
                }
            }
            drop(permit);
        });
    }
    while let Some(r) = sent.join_next().await {
        r.unwrap();
    }
    let store = running.hub.store.clone();
    outpost_test_support::eventually_async(common::DEADLINE, "every status stored", || {
        let store = store.clone();
        async move {
            let c = store.counters().ok()?;
            (c.get("status_accepted").copied().unwrap_or(0) as usize == n).then_some(())
        }
    })
    .await;
    let took = t.elapsed();
    assert_eq!(running.hub.store.statuses().unwrap().len(), n);
    println!("scale: {n} status reports ingested in {took:?}");
    shutdown.cancel();
    running.wait().await;
}
