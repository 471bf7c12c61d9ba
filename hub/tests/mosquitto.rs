//! The hub against a real Mosquitto (Debian package) via `--broker`.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use outpost_hub::api::DeviceDetail;
use outpost_protocol::{topics, DeviceId, RejectCounters, SigningKey, StatusReport};
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
    let mut v = verifier(&dir, &id);
    let (m, _) = manifest_where(&mut sub, &topic, &mut v, |m| !m.apps.is_empty()).await;
    assert_eq!(m.apps[0].name, "app");

    // Status through Mosquitto reaches the hub and is stored.
    let r = StatusReport {
        device_id: id.clone(),
        applied: Some((1, 1)),
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

fn sh(dir: &std::path::Path, cmd: &str) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_reaches_mosquitto_over_mqtts_with_a_configured_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // A throwaway CA and a server certificate for localhost (openssl CLI).
    sh(t, "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=outpost-test-ca");
    sh(t, "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj /CN=localhost");
    std::fs::write(
        t.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    sh(t, "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf");
    // Mosquitto started as root drops to its own user before reading the key.
    sh(t, "chmod 0644 server.key server.pem ca.pem && chmod 0755 .");

    let plain = free_port();
    let tls = free_port();
    let conf = t.join("mosquitto-tls.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings false\nallow_anonymous true\npersistence false\nlistener {plain} 127.0.0.1\nlistener {tls} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
            d = t.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(t.join("mosquitto-tls.log")).unwrap();
    let child = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _guard = Proc {
        child,
        log: t.join("mosquitto-tls.log"),
    };
    eventually("mosquitto TLS listener", || async {
        std::net::TcpStream::connect(("127.0.0.1", tls))
            .ok()
            .map(|_| ())
    })
    .await;

    let dir = t.join("hub");
    init(&dir);
    let cfg = std::fs::read_to_string(dir.join("hub.toml")).unwrap();
    let cfg = cfg.replace(
        "[mqtt]\n",
        &format!("[mqtt]\nca_file = \"{}/ca.pem\"\n", t.display()),
    );
    std::fs::write(dir.join("hub.toml"), cfg).unwrap();
    let hub = HubProc::start(
        &dir,
        free_port(),
        free_port(),
        Some(&format!("mqtts://localhost:{tls}")),
    )
    .await;

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
