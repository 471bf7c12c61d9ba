//! The hub against a real Mosquitto (Debian package) via `--broker`.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use outpost_hub::api::DeviceDetail;
use outpost_protocol::{topics, DeviceId, RejectCounters, SigningKey, StatusReport, Verdict};
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_with_external_mosquitto_delivers_manifests_and_ingests_status() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _mosquitto = mosquitto(tmp.path(), port);
    let dir = tmp.path().join("hub");
    init(&dir);
    let broker = format!("mqtt://127.0.0.1:{port}");
    let hub = HubProc::start(&dir, free_port(), free_port(), Some(&broker)).await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", hub.mqtt_port)).is_err(),
        "no embedded broker may run when --broker is given"
    );

    let key = SigningKey::generate().unwrap();
    hub.cli(&[
        "device",
        "add",
        "m-1",
        "--public-key",
        &key.public_key().to_string(),
        "-l",
        "tier=edge",
    ]);
    let f = deployment_file(
        tmp.path(),
        "edge",
        "tier = \"edge\"",
        &[("app", &pinned("reg/app", 3))],
    );
    hub.cli(&["apply", "-f", f.to_str().unwrap()]);

    let id: DeviceId = "m-1".parse().unwrap();
    let topic = topics::manifest(&id);
    let mut sub = Subscriber::connect("m-1", port, std::slice::from_ref(&topic)).await;
    let got = sub.next_on(&topic).await;
    match verifier(&dir, &id).verify(&got.payload).unwrap() {
        Verdict::Accept(a) => assert_eq!(a.manifest.apps[0].name, "app"),
        other => panic!("{other:?}"),
    }

    // Status through Mosquitto reaches the hub and is stored.
    let r = StatusReport {
        device_id: id.clone(),
        applied: Some((1, 1)),
        seq: 1,
        reported_at: 0,
        agent_version: "t".into(),
        uptime_secs: 1,
        apps: vec![],
        rejected: RejectCounters::default(),
        last_rejection: None,
    };
    sub.client
        .publish(topics::status(&id), QoS::AtLeastOnce, false, r.seal(&key))
        .await
        .unwrap();
    let d = eventually("status via mosquitto", || async {
        let d: DeviceDetail = hub.api.get("/v1/devices/m-1").await.ok()?;
        d.summary.online.then_some(d)
    })
    .await;
    assert_eq!(d.summary.applied.unwrap().generation, 1);
}
