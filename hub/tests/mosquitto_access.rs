//! A real Mosquitto run with the configuration `outpost-hub broker-config
//! mosquitto` wrote (only the port is leased), a real `outpost-hub serve`
//! using it over TLS with its link certificates, and devices holding the
//! certificates the hub issued at `device add`: who gets in, under which
//! client id, what each may read and write, and that a removed device is
//! shut out once the hub's `on_revoke` command made Mosquitto reread its CRL.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use outpost_hub::api::DeviceDetail;
use outpost_protocol::{topics, DeviceId, Manifest, SigningKey, StatusReport, Verdict, Verifier};
use outpost_test_support::eventually_async;
use outpost_test_support::mosquitto::{Mosquitto, MosquittoConfig, LEASED_PORT};
use rumqttc::{Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// How long a client gets to show it received nothing it may not read.
const QUIET: Duration = Duration::from_secs(2);

struct Dev {
    id: DeviceId,
    key: SigningKey,
    cert: Vec<u8>,
}

impl Dev {
    /// The device's certificate and its own key (ring's PKCS#8, as PEM).
    fn auth(&self) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::try_from(self.key.pkcs8()).unwrap();
        (self.cert.clone(), key.serialize_pem().into_bytes())
    }
}

fn options(port: u16, client_id: &str, ca: &[u8], auth: Option<(Vec<u8>, Vec<u8>)>) -> MqttOptions {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca: ca.to_vec(),
            alpn: None,
            client_auth: auth,
        }));
    o
}

/// Topic → payload of every publish that arrives within `quiet` of the last.
async fn collect(el: &mut EventLoop, quiet: Duration) -> BTreeMap<String, Vec<u8>> {
    let mut got = BTreeMap::new();
    while let Ok(ev) = tokio::time::timeout(quiet, el.poll()).await {
        if let Event::Incoming(Packet::Publish(p)) = ev.unwrap() {
            got.insert(p.topic.clone(), p.payload.to_vec());
        }
    }
    got
}

/// Read until a manifest on `topic` that `v` accepts and `pred` likes
/// arrives (committing each like an agent); the key set if it came too.
async fn manifest_where(
    el: &mut EventLoop,
    topic: &str,
    v: &mut Verifier,
    pred: impl Fn(&Manifest) -> bool,
) -> (Manifest, Option<Vec<u8>>) {
    let mut keyset = None;
    tokio::time::timeout(DEADLINE, async {
        loop {
            let Event::Incoming(Packet::Publish(p)) = el.poll().await.unwrap() else {
                continue;
            };
            if p.topic == topics::keyset() {
                keyset = Some(p.payload.to_vec());
            } else if p.topic == topic {
                if let Ok(Verdict::Accept(a)) = v.verify(&p.payload, outpost_hub::clock::now_secs())
                {
                    v.commit(&a);
                    if pred(&a.manifest) {
                        return a.manifest;
                    }
                }
            }
        }
    })
    .await
    .map(|m| (m, keyset.clone()))
    .expect("no such manifest arrived")
}

fn status(id: &DeviceId, seq: u64) -> StatusReport {
    status_report(id, seq, Some((1, 1)))
}

fn broker_config(dir: &Path, out: &Path) -> String {
    let o = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(["broker-config", "mosquitto", "--host", "127.0.0.1"])
        .args(["--port", "8883", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_configured_by_the_hub_admits_devices_only_as_themselves_and_only_to_their_topics(
) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let out = tmp.path().join("mosquitto");
    let printed = broker_config(&dir, &out);
    // The generated file, on a leased port of loopback instead of 8883 of
    // every address.
    let conf = std::fs::read_to_string(out.join("mosquitto.conf")).unwrap();
    assert!(conf.contains("\nlistener 8883\n"), "{conf}");
    let conf = conf.replace(
        "\nlistener 8883\n",
        &format!("\nlistener {LEASED_PORT} 127.0.0.1\n"),
    );
    let mosquitto = Mosquitto::start_with(MosquittoConfig {
        custom: Some(conf),
        ..MosquittoConfig::default()
    })
    .unwrap();
    let port = mosquitto.tls_port().unwrap();
    let pid = mosquitto.pid().unwrap();

    // hub.toml as `broker-config` printed it, the reload command pointed at
    // this Mosquitto (what `systemctl reload mosquitto` does).
    let snippet = printed
        .split("hub.toml (then restart the hub):\n")
        .nth(1)
        .and_then(|s| {
            s.split("\n\n[mqtt.client_auth]")
                .next()
                .map(|mqtt| (mqtt, s))
        })
        .map(|(mqtt, all)| {
            let auth = all.split("[mqtt.client_auth]\n").nth(1).unwrap();
            let auth: String = auth.lines().take(4).map(|l| format!("{l}\n")).collect();
            (mqtt.to_string(), auth)
        })
        .unwrap();
    let (mqtt, auth) = snippet;
    let mqtt = mqtt
        .lines()
        .filter(|l| {
            !(l.starts_with("[mqtt]") || l.starts_with("broker") || l.starts_with("on_revoke"))
        })
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + &format!("on_revoke = [\"kill\", \"-HUP\", \"{pid}\"]\n");
    let cfg = std::fs::read_to_string(dir.join("hub.toml")).unwrap();
    let cfg = cfg.replacen("[mqtt]\n", &format!("[mqtt]\n{mqtt}"), 1)
        + &format!("\n[mqtt.client_auth]\n{auth}");
    std::fs::write(dir.join("hub.toml"), cfg).unwrap();
    let hub = HubProc::start(&dir, Some(&format!("mqtts://127.0.0.1:{port}"))).await;
    let ca = std::fs::read(out.join("ca.pem")).unwrap();

    // Two devices, registered with `--cert-out`.
    let mut devs = Vec::new();
    for id in ["dev-a", "dev-b"] {
        let key = SigningKey::generate().unwrap();
        let path = tmp.path().join(format!("{id}.pem"));
        hub.cli(&[
            "device",
            "add",
            id,
            "--public-key",
            &key.public_key().to_string(),
            "-l",
            &format!("name={id}"),
            "--cert-out",
            path.to_str().unwrap(),
        ]);
        devs.push(Dev {
            id: id.parse().unwrap(),
            key,
            cert: std::fs::read(&path).unwrap(),
        });
    }
    let (a, b) = (&devs[0], &devs[1]);
    for d in &devs {
        let f = deployment_file(
            tmp.path(),
            d.id.as_str(),
            &format!("name = \"{}\"", d.id),
            &[("app", &pinned("reg/app", 1))],
        );
        hub.cli(&["apply", "-f", f.to_str().unwrap()]);
    }
    let keyset = std::fs::read(dir.join("keyset.bin")).unwrap();

    // No certificate: refused during the TLS handshake.
    assert!(mqtt_connect(options(port, "dev-a", &ca, None))
        .await
        .is_err());

    // B, as itself, gets its manifest (delivered by the hub through this
    // Mosquitto) and the key set.
    let (b_client, mut b_el) = mqtt_connect(options(port, "dev-b", &ca, Some(b.auth())))
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
    let mut v = verifier(&dir, &b.id);
    let (m, mut got_keyset) = manifest_where(&mut b_el, &topics::manifest(&b.id), &mut v, |m| {
        !m.apps.is_empty()
    })
    .await;
    assert_eq!(m.apps[0].name, "app");
    if got_keyset.is_none() {
        got_keyset = collect(&mut b_el, QUIET).await.remove(&topics::keyset());
    }
    assert_eq!(got_keyset, Some(keyset.clone()));
    drop((b_client, b_el));

    // A subscribes to everything and B's manifest by name: it reads its own
    // manifest and ack watermark, the hub heartbeat and the key set, nothing
    // of B's (Mosquitto checks read rights per message delivered).
    let (a_client, mut a_el) = mqtt_connect(options(port, "dev-a", &ca, Some(a.auth())))
        .await
        .unwrap();
    for f in [
        "#".to_string(),
        topics::manifest(&b.id),
        "outpost/v1/dev/+/manifest".into(),
    ] {
        a_client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
    }
    let got = collect(&mut a_el, QUIET).await;
    let topics_read: Vec<&String> = got.keys().collect();
    assert_eq!(
        topics_read,
        [
            &topics::acks(&a.id),
            &topics::manifest(&a.id),
            &topics::heartbeat(),
            &topics::keyset()
        ],
        "A read {topics_read:?}"
    );

    // A publishes B's status and a key set of its own: neither arrives.
    let before: DeviceDetail = hub.api.get("/v1/devices/dev-b").await.unwrap();
    assert!(before.status.is_none());
    a_client
        .publish(
            topics::status(&b.id),
            QoS::AtLeastOnce,
            false,
            status(&b.id, 1).seal(&a.key),
        )
        .await
        .unwrap();
    a_client
        .publish(
            topics::keyset(),
            QoS::AtLeastOnce,
            true,
            b"not a key set".to_vec(),
        )
        .await
        .unwrap();
    collect(&mut a_el, QUIET).await;
    let after: DeviceDetail = hub.api.get("/v1/devices/dev-b").await.unwrap();
    assert!(after.status.is_none(), "A's status in B's name arrived");
    let (c, mut el) = mqtt_connect(options(port, "dev-b", &ca, Some(b.auth())))
        .await
        .unwrap();
    c.subscribe(topics::keyset(), QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        collect(&mut el, QUIET).await.get(&topics::keyset()),
        Some(&keyset)
    );
    drop((c, el));

    // A asks for B's client id, then the hub's: Mosquitto names it dev-a
    // each time (use_username_as_clientid), so neither B nor the hub is
    // kicked.
    let (b_client, mut b_el) = mqtt_connect(options(port, "dev-b", &ca, Some(b.auth())))
        .await
        .unwrap();
    b_client
        .subscribe(topics::manifest(&b.id), QoS::AtLeastOnce)
        .await
        .unwrap();
    collect(&mut b_el, QUIET).await;
    let log_before = mosquitto.log_text().len();
    let mut impostors = Vec::new();
    for id in ["dev-b", "outpost:hub", "outpost:hub-pub"] {
        impostors.push(
            mqtt_connect(options(port, id, &ca, Some(a.auth())))
                .await
                .unwrap(),
        );
    }
    let log = mosquitto.log_text()[log_before..].to_string();
    // Each impostor is dev-a: it only ever takes over A's own connections.
    assert_eq!(log.matches(" as dev-a (").count(), 3, "{log}");
    for kicked in ["dev-b", "outpost:hub", "outpost:hub-pub"] {
        assert!(
            !log.contains(&format!("Client {kicked} already connected")),
            "{kicked} was kicked:\n{log}"
        );
    }
    // B still hears the hub: a new deployment reaches it on the same
    // connection, and its status reaches the hub.
    let f = deployment_file(
        tmp.path(),
        "dev-b",
        "name = \"dev-b\"",
        &[("app", &pinned("reg/app", 2))],
    );
    hub.cli(&["apply", "-f", f.to_str().unwrap()]);
    let second = hex::encode([2u8; 32]);
    manifest_where(&mut b_el, &topics::manifest(&b.id), &mut v, |m| {
        format!("{:?}", m.apps).contains(&second)
    })
    .await;
    b_client
        .publish(
            topics::status(&b.id),
            QoS::AtLeastOnce,
            false,
            status(&b.id, 1).seal(&b.key),
        )
        .await
        .unwrap();
    let poller = tokio::spawn(async move { while b_el.poll().await.is_ok() {} });
    let d = eventually_async(DEADLINE, "B's status through Mosquitto", || async {
        let d: DeviceDetail = hub.api.get("/v1/devices/dev-b").await.ok()?;
        d.summary.online.then_some(d)
    })
    .await;
    assert_eq!(d.status.unwrap().seq, 1);
    poller.abort();
    drop(impostors);

    // A removed: the hub revokes its certificate, rewrites the CRL and runs
    // on_revoke (SIGHUP). Mosquitto then refuses A's new connections; B
    // still gets in.
    drop((a_client, a_el));
    // One connection of A's stays open across the removal.
    let (a_open, mut a_open_el) = mqtt_connect(options(port, "dev-a", &ca, Some(a.auth())))
        .await
        .unwrap();
    hub.cli(&["device", "remove", "dev-a"]);
    let crl = std::fs::read_to_string(out.join("crl.pem")).unwrap();
    assert!(crl.contains("BEGIN X509 CRL"));
    eventually_async(
        DEADLINE,
        "Mosquitto to refuse the removed device",
        || async {
            mqtt_connect(options(port, "dev-a", &ca, Some(a.auth())))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    assert!(mosquitto.log_text().contains("Reloading config"));
    // What the reload does not do (docs/security.md): cut the connection A
    // opened before. It is still served (its publish is acknowledged); only
    // a restart of Mosquitto would close it.
    a_open
        .publish(
            topics::status(&a.id),
            QoS::AtLeastOnce,
            false,
            b"x".to_vec(),
        )
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            match a_open_el.poll().await.unwrap() {
                Event::Incoming(Packet::PubAck(_)) => return,
                _ => continue,
            }
        }
    })
    .await
    .expect("no PUBACK on the connection opened before the removal");
    mqtt_connect(options(port, "dev-b", &ca, Some(b.auth())))
        .await
        .unwrap();
    assert!(mosquitto.pid() == Some(pid), "Mosquitto was not restarted");
}
