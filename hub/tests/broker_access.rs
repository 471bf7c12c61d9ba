//! The embedded broker's doors, tried from outside with real MQTT clients
//! against a real `outpost-hub serve`: who may log in, which client id a
//! login may use, which topics a device may read and write, and what a
//! removed device can still do.
#![allow(clippy::unwrap_used)]

mod common;

use common::{init, mqtt_connect, HubProc, DEADLINE};
use outpost_hub::api::Stats;
use outpost_protocol::{login, topics, DeviceId, SigningKey};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Packet, QoS,
};
use std::time::Duration;

/// How long a refused client gets to show it got nothing.
const QUIET: Duration = Duration::from_secs(2);

struct Dev {
    id: DeviceId,
    key: SigningKey,
}

impl Dev {
    fn new(id: &str) -> Dev {
        Dev {
            id: id.parse().unwrap(),
            key: SigningKey::generate().unwrap(),
        }
    }
    fn password(&self) -> String {
        login::device_password(&self.key, &self.id)
    }
}

fn options(port: u16, client_id: &str, login: Option<(&str, String)>) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    if let Some((user, password)) = login {
        o.set_credentials(user, password);
    }
    o
}

fn refused_with(r: Result<(AsyncClient, EventLoop), ConnectionError>, code: ConnectReturnCode) {
    match r {
        Err(ConnectionError::ConnectionRefused(got)) => assert_eq!(got, code),
        Err(e) => panic!("expected a CONNACK refusing with {code:?}, got {e}"),
        Ok(_) => panic!("expected a CONNACK refusing with {code:?}, was accepted"),
    }
}

/// Poll until the broker closes the connection (an error); the publishes
/// that arrived before.
async fn until_closed(el: &mut EventLoop) -> Vec<rumqttc::Publish> {
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => got.push(p),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await
    .expect("the broker did not close the connection");
    got
}

async fn stats(hub: &HubProc) -> Stats {
    hub.api.get("/v1/stats").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_admits_devices_only_as_themselves_and_only_to_their_topics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let hub = HubProc::start(&dir, None).await;
    let port = hub.mqtt_port();
    let (a, b) = (Dev::new("dev-a"), Dev::new("dev-b"));
    for d in [&a, &b] {
        hub.cli(&[
            "device",
            "add",
            d.id.as_str(),
            "--public-key",
            &d.key.public_key().to_string(),
        ]);
    }
    let keyset = std::fs::read(dir.join("keyset.bin")).unwrap();

    // Anonymous, a made-up password, someone else's password, someone else's
    // client id, the hub's client id, an unregistered device: all refused at
    // CONNECT, with a CONNACK that says so.
    let bad = ConnectReturnCode::BadUserNamePassword;
    refused_with(mqtt_connect(options(port, "dev-a", None)).await, bad);
    refused_with(
        mqtt_connect(options(port, "dev-a", Some(("dev-a", "v1.00".into())))).await,
        bad,
    );
    refused_with(
        mqtt_connect(options(port, "dev-a", Some(("dev-a", b.password())))).await,
        bad,
    );
    refused_with(
        mqtt_connect(options(port, "dev-b", Some(("dev-a", a.password())))).await,
        bad,
    );
    refused_with(
        mqtt_connect(options(port, "outpost:hub", Some(("dev-a", a.password())))).await,
        bad,
    );
    refused_with(
        mqtt_connect(options(
            port,
            "outpost:hub",
            Some(("outpost:hub", a.password())),
        ))
        .await,
        bad,
    );
    let stranger = Dev::new("dev-x");
    refused_with(
        mqtt_connect(options(port, "dev-x", Some(("dev-x", stranger.password())))).await,
        bad,
    );
    // A last will on another device's status topic would have the broker
    // publish it in A's name: refused too.
    let mut with_will = options(port, "dev-a", Some(("dev-a", a.password())));
    with_will.set_last_will(LastWill::new(
        topics::status(&b.id),
        b"forged".to_vec(),
        QoS::AtLeastOnce,
        false,
    ));
    refused_with(
        mqtt_connect(with_will).await,
        ConnectReturnCode::NotAuthorized,
    );

    // B, as itself, reads its manifest and the key set.
    let (b_client, mut b_el) = mqtt_connect(options(port, "dev-b", Some(("dev-b", b.password()))))
        .await
        .unwrap();
    b_client
        .subscribe(topics::manifest(&b.id), QoS::AtLeastOnce)
        .await
        .unwrap();
    b_client
        .subscribe(topics::keyset(), QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    tokio::time::timeout(DEADLINE, async {
        while seen.len() < 2 {
            if let Event::Incoming(Packet::Publish(p)) = b_el.poll().await.unwrap() {
                seen.insert(p.topic.clone());
            }
        }
    })
    .await
    .expect("B did not get its manifest and the key set");
    drop(b_client);
    drop(b_el);

    // A, as itself, asks for B's manifest: the connection is closed and
    // nothing of B's arrives.
    let before = stats(&hub).await;
    let (c, mut el) = mqtt_connect(options(port, "dev-a", Some(("dev-a", a.password()))))
        .await
        .unwrap();
    c.subscribe(topics::manifest(&b.id), QoS::AtLeastOnce)
        .await
        .unwrap();
    let got = until_closed(&mut el).await;
    assert!(got.is_empty(), "A read {got:?}");
    // A wildcard over every device's manifest: the same.
    let (c, mut el) = mqtt_connect(options(port, "dev-a", Some(("dev-a", a.password()))))
        .await
        .unwrap();
    c.subscribe("outpost/v1/dev/+/manifest", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(until_closed(&mut el).await.is_empty());

    // A publishes B's status, then the key set: closed each time, and
    // neither reaches anyone.
    for (topic, payload) in [
        (topics::status(&b.id), b"not b".to_vec()),
        (topics::keyset(), b"not a key set".to_vec()),
    ] {
        let (c, mut el) = mqtt_connect(options(port, "dev-a", Some(("dev-a", a.password()))))
            .await
            .unwrap();
        c.publish(&topic, QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
        until_closed(&mut el).await;
    }
    let after = stats(&hub).await;
    assert_eq!(
        after.counters.get("status_rejected.malformed"),
        before.counters.get("status_rejected.malformed"),
        "A's publish on B's status topic reached the hub"
    );
    // Every refusal so far is counted: 7 logins (the will is a topic), the
    // will and 4 topics.
    assert_eq!(after.broker_logins_refused, Some(7), "{after:?}");
    assert_eq!(after.broker_topics_refused, Some(5), "{after:?}");
    // The retained key set is still the hub's.
    let (c, mut el) = mqtt_connect(options(port, "dev-b", Some(("dev-b", b.password()))))
        .await
        .unwrap();
    c.subscribe(topics::keyset(), QoS::AtLeastOnce)
        .await
        .unwrap();
    let retained = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = el.poll().await.unwrap() {
                return p.payload.to_vec();
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(retained, keyset);
    drop(c);
    drop(el);

    // A device removed while connected: its next packet closes the
    // connection, and it cannot log in again.
    let (c, mut el) = mqtt_connect(options(port, "dev-a", Some(("dev-a", a.password()))))
        .await
        .unwrap();
    let poller = tokio::spawn(async move { until_closed(&mut el).await });
    hub.cli(&["device", "remove", "dev-a"]);
    c.publish(
        topics::status(&a.id),
        QoS::AtLeastOnce,
        false,
        b"x".to_vec(),
    )
    .await
    .unwrap();
    poller.await.unwrap();
    refused_with(
        mqtt_connect(options(port, "dev-a", Some(("dev-a", a.password())))).await,
        bad,
    );
    // Nothing above disturbed B: it still logs in.
    tokio::time::sleep(QUIET).await;
    mqtt_connect(options(port, "dev-b", Some(("dev-b", b.password()))))
        .await
        .unwrap();
    assert!(hub.proc.log_text().contains("broker login refused"));
}
