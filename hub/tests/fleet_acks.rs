//! Regression test for the embedded-broker deadlock the fleet simulator found at
//! 1,000 devices (docs/benchmarks.md): rumqttd stops forwarding to a client with
//! 100 unacked QoS 1 messages and, while paused, does not ack that client's
//! publishes either. When the hub acked statuses on the connection it also
//! published manifests on, its acks queued behind manifests waiting for the
//! broker's acks, and both directions stopped for good.
//!
//! Here 1,000 real MQTT devices (one rumqttc client each) answer every
//! manifest with a device-signed status, so statuses pour in while the hub
//! publishes the whole fleet's manifests, on registration and on each of
//! [`ROUNDS`] applies.
//! Every device must get its newest manifest and the hub must record every
//! device at it. A hang fails after [`HANG_GUARD`]; nothing asserts on time.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{status_report, verifier, InProcessHub};
use outpost_hub::api::DeviceSummary;
use outpost_hub::broker::MAX_PACKET_BYTES;
use outpost_hub::client::ApiClient;
use outpost_hub::deploy::DeploymentSpec;
use outpost_protocol::{topics, DeviceId, SigningKey, Verdict, Verifier};
use outpost_test_support::eventually_async;
use reqwest::Method;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Devices in the fleet: well above rumqttd's 100 forwards in flight to one
/// client and rumqttc's 200 publishes in flight from the hub.
const DEVICES: usize = 1000;

/// Applies that change every device's manifest.
const ROUNDS: usize = 3;

/// A hang guard, not a performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// One simulated device: applies (verifies) every manifest it receives and
/// reports it in a device-signed status. The highest applied generation is
/// published on `applied`.
fn spawn_device(
    id: DeviceId,
    key: SigningKey,
    mut v: Verifier,
    port: u16,
    applied: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut o = MqttOptions::new(id.as_str(), "127.0.0.1", port);
    o.set_credentials(
        id.as_str(),
        outpost_protocol::login::device_password(&key, &id),
    )
    .set_keep_alive(Duration::from_secs(30))
    .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    let topic = topics::manifest(&id);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Poll in one task, publish from another (publishing from the polling
    // task can deadlock on rumqttc's bounded request channel).
    {
        let stop = stop.clone();
        let client = client.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => return,
                    ev = eventloop.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if client.try_subscribe(&topic, QoS::AtLeastOnce).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic == topic && !p.payload.is_empty() && tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
    }
    tokio::spawn(async move {
        let mut seq = 0;
        loop {
            let p = tokio::select! {
                _ = stop.cancelled() => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            };
            let (epoch, generation) = match v.verify(&p.payload, outpost_hub::clock::now_secs()) {
                Ok(Verdict::Accept(a)) => {
                    v.commit(&a);
                    (a.manifest.epoch, a.manifest.generation)
                }
                Ok(Verdict::Duplicate { epoch, generation }) => (epoch, generation),
                Err(e) => panic!("{id}: manifest refused: {e}"),
            };
            seq += 1;
            let report = status_report(&id, seq, Some((epoch, generation)));
            if client
                .publish(
                    topics::status(&id),
                    QoS::AtLeastOnce,
                    false,
                    report.seal(&key),
                )
                .await
                .is_err()
            {
                return;
            }
            applied.send_if_modified(|g| {
                let newer = generation > *g;
                if newer {
                    *g = generation;
                }
                newer
            });
        }
    });
}

/// Wait until every device has applied at least `generation`, then until the
/// hub's API shows every device applied at its desired generation, which must be
/// at least `generation`.
async fn converged(api: &ApiClient, applied: &[watch::Receiver<u64>], generation: u64) {
    let devices = async {
        for rx in applied {
            let mut rx = rx.clone();
            rx.wait_for(|g| *g >= generation).await.unwrap();
        }
    };
    if tokio::time::timeout(HANG_GUARD, devices).await.is_err() {
        let behind = applied
            .iter()
            .filter(|rx| *rx.borrow() < generation)
            .count();
        panic!(
            "fleet did not converge on generation {generation}: {behind} of {} devices \
             never received it (hub/broker MQTT stall?)",
            applied.len()
        );
    }
    let what = format!("the hub to record every device at generation {generation}");
    eventually_async(HANG_GUARD, &what, || async {
        let devices: Vec<DeviceSummary> = api.get("/v1/devices").await.unwrap();
        assert_eq!(devices.len(), applied.len());
        let behind = devices
            .iter()
            .filter(|d| {
                !(d.desired.is_some_and(|x| x.generation >= generation) && d.applied == d.desired)
            })
            .count();
        if behind == 0 {
            Ok(())
        } else {
            Err(format!(
                "{behind} of {} devices not recorded at it",
                devices.len()
            ))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_answering_every_manifest_gets_an_apply_through_the_embedded_broker() {
    let InProcessHub {
        tmp,
        running,
        shutdown,
        api,
        ..
    } = InProcessHub::start().await;
    let port = running.embedded_broker.unwrap().port();

    let fleet: Vec<(DeviceId, SigningKey)> = (0..DEVICES)
        .map(|i| {
            (
                format!("fa-{i:04}").parse().unwrap(),
                SigningKey::generate().unwrap(),
            )
        })
        .collect();
    let body = serde_json::json!({
        "devices": fleet
            .iter()
            .map(|(id, key)| serde_json::json!({
                "id": id.as_str(),
                "public_key": key.public_key().to_string(),
                "labels": { "fleet": "acks" },
            }))
            .collect::<Vec<_>>(),
    });
    let _: serde_json::Value = api
        .call(Method::POST, "/v1/devices/batch", Some(&body))
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let mut applied = Vec::with_capacity(DEVICES);
    for (id, key) in fleet {
        let (tx, rx) = watch::channel(0);
        let v = verifier(tmp.path(), &id);
        spawn_device(id, key, v, port, tx, stop.clone());
        applied.push(rx);
    }
    converged(&api, &applied, 1).await;

    // One apply changes every device's manifest: the hub publishes the whole
    // fleet while every device answers with a status.
    for round in 0..ROUNDS {
        let spec = DeploymentSpec::from_toml(&format!(
            "name = \"fleet\"\nselector = {{ fleet = \"acks\" }}\n[[apps]]\nname = \"app\"\nimage = \"reg/app@sha256:{}\"\n",
            format!("{:02x}", round).repeat(32)
        ))
        .unwrap();
        let out = running.hub.apply(spec, "test".into()).await.unwrap();
        assert_eq!(out.updated.len(), DEVICES);
        let generation = out.updated.iter().map(|u| u.generation).min().unwrap();
        converged(&api, &applied, generation).await;
    }

    let stats: outpost_hub::api::Stats = api.get("/v1/stats").await.unwrap();
    assert!(
        stats.counters.get("status_accepted").copied().unwrap_or(0)
            >= (1 + ROUNDS * DEVICES) as u64,
        "{:?}",
        stats.counters
    );

    stop.cancel();
    shutdown.cancel();
    running.wait().await;
}
