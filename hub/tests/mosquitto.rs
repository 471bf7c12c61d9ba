//! The hub against a real Mosquitto (Debian package) via `--broker`.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use outpost_hub::api::DeviceDetail;
use outpost_protocol::{topics, DeviceId, SigningKey};
use outpost_test_support::eventually_async;
use outpost_test_support::hub::HubServe;
use outpost_test_support::mosquitto::{Mosquitto, MosquittoConfig};
use outpost_test_support::{listening_addrs, PortLease};
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_with_external_mosquitto_delivers_manifests_and_ingests_status() {
    let tmp = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start().unwrap();
    let port = mosquitto.port().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let broker = format!("mqtt://127.0.0.1:{port}");
    // An embedded broker, were one started, would listen on this reserved port.
    let unused = PortLease::new().unwrap();
    let hub = HubProc::start_with(
        HubServe::new(std::path::Path::new(BIN), &dir)
            .mqtt_listen(unused.addr())
            .broker(&broker),
    )
    .await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", unused.port())).is_err(),
        "no embedded broker may run when --broker is given"
    );
    assert_eq!(hub.addrs.mqtt, None, "the ready file reports no broker");
    assert_eq!(
        listening_addrs(hub.proc.pid()).unwrap(),
        vec![hub.addrs.http],
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
    let mut v = verifier(&dir, &id);
    let (m, _) = manifest_where(&mut sub, &topic, &mut v, |m| !m.apps.is_empty()).await;
    assert_eq!(m.apps[0].name, "app");

    // Status through Mosquitto reaches the hub and is stored.
    let r = status_report(&id, 1, Some((1, 1)));
    sub.client
        .publish(topics::status(&id), QoS::AtLeastOnce, false, r.seal(&key))
        .await
        .unwrap();
    let d = eventually_async(DEADLINE, "status via mosquitto", || async {
        let d: DeviceDetail = hub.api.get("/v1/devices/m-1").await.ok()?;
        d.summary.online.then_some(d)
    })
    .await;
    assert_eq!(d.summary.applied.unwrap().generation, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_reaches_mosquitto_over_mqtts_with_a_configured_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // A plain and a TLS listener; the TLS one with a server certificate for
    // localhost from a throwaway CA (rcgen).
    let mosquitto = Mosquitto::start_with(MosquittoConfig {
        plain: true,
        tls: true,
        ..MosquittoConfig::default()
    })
    .unwrap();
    let (plain, tls) = (mosquitto.port().unwrap(), mosquitto.tls_port().unwrap());

    let dir = t.join("hub");
    init(&dir);
    let cfg = std::fs::read_to_string(dir.join("hub.toml")).unwrap();
    let cfg = cfg.replace(
        "[mqtt]\n",
        &format!("[mqtt]\nca_file = \"{}\"\n", mosquitto.ca_file().display()),
    );
    std::fs::write(dir.join("hub.toml"), cfg).unwrap();
    let hub = HubProc::start(&dir, Some(&format!("mqtts://localhost:{tls}"))).await;

    let key = SigningKey::generate().unwrap();
    hub.cli(&[
        "device",
        "add",
        "s-1",
        "--public-key",
        &key.public_key().to_string(),
        "-l",
        "tls=yes",
    ]);
    let f = deployment_file(t, "tls", "tls = \"yes\"", &[("app", &pinned("reg/app", 5))]);
    hub.cli(&["apply", "-f", f.to_str().unwrap()]);
    let id: DeviceId = "s-1".parse().unwrap();
    let topic = topics::manifest(&id);
    let mut sub = Subscriber::connect("s-1", plain, std::slice::from_ref(&topic)).await;
    let mut v = verifier(&dir, &id);
    let (m, _) = manifest_where(&mut sub, &topic, &mut v, |m| !m.apps.is_empty()).await;
    assert_eq!(m.apps[0].name, "app");
    assert!(hub.proc.log_text().contains("connected to MQTT broker"));
}
