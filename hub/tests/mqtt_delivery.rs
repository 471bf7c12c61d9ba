//! Manifests over real MQTT with the embedded broker: delivery to a plain MQTT
//! client that verifies them like an agent, no new generation on an unchanged
//! re-apply, durability across a hub restart, and forged status rejection.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use outpost_hub::api::{DeviceDetail, DeviceSummary, Stats};
use outpost_protocol::{topics, DeviceId, SigningKey, StatusReport, Verdict};
use outpost_test_support::eventually_async;
use rumqttc::QoS;

fn device_key() -> SigningKey {
    SigningKey::generate().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_device_receives_a_verifiable_manifest_and_unchanged_reapply_adds_no_generation()
{
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let hub = HubProc::start(&dir, None).await;
    let key = device_key();
    hub.cli(&[
        "device",
        "add",
        "pi-1",
        "--public-key",
        &key.public_key().to_string(),
        "-l",
        "site=lab",
    ]);

    let file = deployment_file(
        tmp.path(),
        "web",
        "site = \"lab\"",
        &[("hello", &pinned("localhost:5000/hello", 1))],
    );
    let out = hub.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.contains("1 device(s) matched"), "{out}");

    // A plain MQTT client, subscribed as the device.
    let id: DeviceId = "pi-1".parse().unwrap();
    let topic = topics::manifest(&id);
    let mut sub =
        Subscriber::device(&id, &key, hub.mqtt_port(), std::slice::from_ref(&topic)).await;
    let mut verifier = verifier(&dir, &id);
    let (manifest, got) =
        manifest_where(&mut sub, &topic, &mut verifier, |m| !m.apps.is_empty()).await;
    assert!(got.retain, "manifest must be retained");
    assert_eq!(manifest.device_id, id);
    assert_eq!(manifest.epoch, 1);
    assert_eq!(manifest.apps.len(), 1);
    assert_eq!(
        manifest.apps[0].image.to_string(),
        pinned("localhost:5000/hello", 1)
    );
    let gen_after_apply = manifest.generation;

    // Re-apply the same file: nothing new.
    let before: Stats = hub.api.get("/v1/stats").await.unwrap();
    let out = hub.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(
        out.contains("(unchanged)") && out.contains("0 new manifest(s)"),
        "{out}"
    );
    let d: DeviceDetail = hub.api.get("/v1/devices/pi-1").await.unwrap();
    assert_eq!(d.summary.desired.unwrap().generation, gen_after_apply);
    let after: Stats = hub.api.get("/v1/stats").await.unwrap();
    assert_eq!(before.manifests_published, after.manifests_published);

    // A real change: the very next manifest the device sees is the next generation
    // (had the re-apply published one, it would arrive first).
    let changed = deployment_file(
        tmp.path(),
        "web",
        "site = \"lab\"",
        &[("hello", &pinned("localhost:5000/hello", 2))],
    );
    hub.cli(&["apply", "-f", changed.to_str().unwrap()]);
    let (next, _) = manifest_where(&mut sub, &topic, &mut verifier, |m| {
        m.generation > gen_after_apply
    })
    .await;
    assert_eq!(next.generation, gen_after_apply + 1);

    // The table shows the device.
    let table = hub.cli(&["devices"]);
    assert!(
        table.contains("pi-1") && table.contains("site=lab"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restart_keeps_devices_deployments_generations_and_republishes_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let hub = HubProc::start(&dir, None).await;
    let key = device_key();
    hub.cli(&[
        "device",
        "add",
        "gw-7",
        "--public-key",
        &key.public_key().to_string(),
        "-l",
        "site=a",
    ]);
    let f1 = deployment_file(
        tmp.path(),
        "svc",
        "site = \"a\"",
        &[("svc", &pinned("reg/svc", 1))],
    );
    hub.cli(&["apply", "-f", f1.to_str().unwrap()]);
    let f2 = deployment_file(
        tmp.path(),
        "svc",
        "site = \"a\"",
        &[("svc", &pinned("reg/svc", 2))],
    );
    hub.cli(&["apply", "-f", f2.to_str().unwrap()]);
    let before: DeviceDetail = hub.api.get("/v1/devices/gw-7").await.unwrap();
    let desired = before.summary.desired.unwrap();
    // 1 at registration (no apps yet), then one per changing apply.
    assert_eq!(desired.generation, 3);
    hub.kill();

    // Same data dir (fresh ports: nothing here is configured with the old
    // ones): a fresh embedded broker with no retained messages.
    let hub = HubProc::start(&dir, None).await;
    let devices: Vec<DeviceSummary> = hub.api.get("/v1/devices").await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].id, "gw-7");
    assert_eq!(devices[0].labels.get("site").map(String::as_str), Some("a"));
    assert_eq!(devices[0].desired, Some(desired));
    let deps = hub.cli(&["deployments"]);
    assert!(
        deps.contains("svc") && deps.contains(&pinned("reg/svc", 2)),
        "{deps}"
    );

    let id: DeviceId = "gw-7".parse().unwrap();
    let topic = topics::manifest(&id);
    let mut sub =
        Subscriber::device(&id, &key, hub.mqtt_port(), std::slice::from_ref(&topic)).await;
    let got = sub.next_on(&topic).await;
    let v = verifier(&dir, &id);
    match v
        .verify(&got.payload, outpost_hub::clock::now_secs())
        .unwrap()
    {
        Verdict::Accept(a) => {
            assert_eq!(a.manifest.generation, desired.generation);
            assert_eq!(a.manifest.apps[0].image.to_string(), pinned("reg/svc", 2));
        }
        other => panic!("{other:?}"),
    }
    // Unchanged re-apply after restart still issues nothing.
    let out = hub.cli(&["apply", "-f", f2.to_str().unwrap()]);
    assert!(out.contains("0 new manifest(s)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_signing_key_reissues_every_manifest_under_the_new_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let hub = HubProc::start(&dir, None).await;
    let key = device_key();
    hub.cli(&[
        "device",
        "add",
        "rot-1",
        "--public-key",
        &key.public_key().to_string(),
        "-l",
        "site=r",
    ]);
    let f = deployment_file(
        tmp.path(),
        "svc",
        "site = \"r\"",
        &[("svc", &pinned("reg/svc", 1))],
    );
    hub.cli(&["apply", "-f", f.to_str().unwrap()]);
    let id: DeviceId = "rot-1".parse().unwrap();
    let topic = topics::manifest(&id);
    // The device as provisioned: trusts the root key and key set version 1.
    let mut verifier = verifier(&dir, &id);
    {
        let mut sub =
            Subscriber::device(&id, &key, hub.mqtt_port(), std::slice::from_ref(&topic)).await;
        let (m, _) = manifest_where(&mut sub, &topic, &mut verifier, |m| !m.apps.is_empty()).await;
        assert_eq!((m.epoch, m.generation), (1, 2));
    }
    let d = outpost_hub::config::DataDir::new(&dir);
    let old_key = SigningKey::from_pkcs8(&std::fs::read(d.signing_key()).unwrap()).unwrap();
    // The root key kept offline, as recommended.
    let offline = tmp.path().join("root.key");
    hub.cli(&[
        "keys",
        "export-root",
        "--out",
        offline.to_str().unwrap(),
        "--remove",
    ]);
    hub.kill();

    // `keys rotate` works on the data directory with the hub stopped.
    let rotate = |extra: &[&str]| {
        std::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(&dir)
            .args(["keys", "rotate"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = rotate(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("root key is not in this data directory"),
        "{err}"
    );
    let wrong = tmp.path().join("wrong.key");
    outpost_hub::signing::write_private(&wrong, SigningKey::generate().unwrap().pkcs8()).unwrap();
    let out = rotate(&["--root-key", wrong.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not the root key of this hub"),
        "{err}"
    );
    let out = rotate(&["--root-key", offline.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("is now 2"), "{text}");

    // Restart: the new key set, then the manifest re-signed under epoch 2.
    let hub = HubProc::start(&dir, None).await;
    let mut sub = Subscriber::device(
        &id,
        &key,
        hub.mqtt_port(),
        &[topics::keyset(), topic.clone()],
    )
    .await;
    let set = verifier
        .verify_keyset(
            &sub.next_on(&topics::keyset()).await.payload,
            outpost_hub::clock::now_secs(),
        )
        .unwrap();
    assert_eq!(set.version, 2);
    verifier.adopt_keyset(set);
    let (m, _) = manifest_where(&mut sub, &topic, &mut verifier, |m| m.epoch == 2).await;
    assert_eq!(m.generation, 1, "generations restart in a new epoch");
    assert_eq!(m.apps[0].image.to_string(), pinned("reg/svc", 1));

    // The old key is revoked: what it signs now is refused, even for the new epoch.
    let mut forged = m.clone();
    forged.generation = 50;
    let bytes = outpost_protocol::envelope::seal_value(
        outpost_protocol::envelope::Kind::Manifest,
        &old_key,
        &forged,
    )
    .unwrap();
    let err = verifier
        .verify(&bytes, outpost_hub::clock::now_secs())
        .unwrap_err();
    assert!(
        matches!(err, outpost_protocol::RejectReason::UnknownKey { .. }),
        "{err:?}"
    );

    // The hub shows it, audits it, and a second restart re-issues nothing.
    let summary: DeviceDetail = hub.api.get("/v1/devices/rot-1").await.unwrap();
    let desired = summary.summary.desired.unwrap();
    assert_eq!((desired.epoch, desired.generation), (2, 1));
    let audit = hub.cli(&["audit"]);
    assert!(audit.contains("keys.epoch"), "{audit}");
    hub.kill();
    let hub = HubProc::start(&dir, None).await;
    let again: DeviceDetail = hub.api.get("/v1/devices/rot-1").await.unwrap();
    assert_eq!(again.summary.desired.unwrap(), desired);
}

fn report(id: &str, seq: u64, applied: Option<(u64, u64)>) -> StatusReport {
    StatusReport {
        reported_at: 1,
        uptime_secs: 100 + seq,
        ..status_report(&id.parse().unwrap(), seq, applied)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_signed_by_another_devices_key_is_rejected_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let hub = HubProc::start(&dir, None).await;
    let k1 = device_key();
    let k2 = device_key();
    hub.cli(&[
        "device",
        "add",
        "d1",
        "--public-key",
        &k1.public_key().to_string(),
        "-l",
        "site=x",
    ]);
    hub.cli(&[
        "device",
        "add",
        "d2",
        "--public-key",
        &k2.public_key().to_string(),
        "-l",
        "site=x",
    ]);
    let d1: DeviceId = "d1".parse().unwrap();

    // Logged in as d1: the broker lets only d1 publish on d1's status topic,
    // so what the hub's own checks must catch there is what d1's connection
    // carries (and, behind a broker without topic rules, anyone's).
    let publisher = Subscriber::device(&d1, &k1, hub.mqtt_port(), &[]).await;
    // A genuine report first.
    publisher
        .client
        .publish(
            topics::status(&d1),
            QoS::AtLeastOnce,
            false,
            report("d1", 1, Some((1, 1))).seal(&k1),
        )
        .await
        .unwrap();
    eventually_async(DEADLINE, "genuine status stored", || async {
        let d: DeviceDetail = hub.api.get("/v1/devices/d1").await.ok()?;
        d.status.filter(|s| s.seq == 1).map(|_| ())
    })
    .await;
    let before: DeviceDetail = hub.api.get("/v1/devices/d1").await.unwrap();

    // A newer report for d1 signed with d2's key.
    publisher
        .client
        .publish(
            topics::status(&d1),
            QoS::AtLeastOnce,
            false,
            report("d1", 99, Some((1, 7))).seal(&k2),
        )
        .await
        .unwrap();
    // And garbage.
    publisher
        .client
        .publish(
            topics::status(&d1),
            QoS::AtLeastOnce,
            false,
            b"not an envelope".to_vec(),
        )
        .await
        .unwrap();
    let stats = eventually_async(DEADLINE, "forged and malformed status counted", || async {
        let s: Stats = hub.api.get("/v1/stats").await.ok()?;
        (s.counters.get("status_rejected.wrong_key") == Some(&1)
            && s.counters.get("status_rejected.malformed") == Some(&1))
        .then_some(s)
    })
    .await;
    assert_eq!(stats.counters.get("status_accepted"), Some(&1));
    let after: DeviceDetail = hub.api.get("/v1/devices/d1").await.unwrap();
    assert_eq!(
        after, before,
        "the forged report must not change the device"
    );
    assert_eq!(after.status.unwrap().seq, 1);
    assert!(hub.proc.log_text().contains("status rejected"));
}
