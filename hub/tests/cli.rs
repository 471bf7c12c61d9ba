//! The command line against a running hub: labels re-render, deployment delete,
//! device removal clears the retained manifest, status output, root key export,
//! key rotations (signing, root, the secrets' at-rest key).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use outpost_hub::api::DeviceDetail;
use outpost_protocol::{topics, DeviceId, SigningKey};
use outpost_test_support::eventually_async;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_delete_remove_and_root_export_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let hub = HubProc::start(&dir, None).await;
    let key = SigningKey::generate().unwrap();
    hub.cli(&[
        "device",
        "add",
        "c-1",
        "--public-key",
        &key.public_key().to_string(),
    ]);
    let f = deployment_file(
        tmp.path(),
        "db",
        "role = \"db\"",
        &[("pg", &pinned("reg/pg", 9))],
    );
    let out = hub.cli(&["apply", "-f", f.to_str().unwrap()]);
    assert!(out.contains("0 device(s) matched"), "{out}");

    let id: DeviceId = "c-1".parse().unwrap();
    let topic = topics::manifest(&id);
    let mut sub =
        Subscriber::device(&id, &key, hub.mqtt_port(), std::slice::from_ref(&topic)).await;
    let mut v = verifier(&dir, &id);
    let (first, _) = manifest_where(&mut sub, &topic, &mut v, |_| true).await;
    assert!(first.apps.is_empty());

    // Labelling the device into the selector issues a manifest with the app.
    hub.cli(&["device", "label", "c-1", "role=db"]);
    let (second, _) = manifest_where(&mut sub, &topic, &mut v, |m| !m.apps.is_empty()).await;
    assert_eq!(second.apps[0].name, "pg");
    let status = hub.cli(&["status", "c-1"]);
    assert!(
        status.contains("role=db") && status.contains("generation 2: pg"),
        "{status}"
    );

    // Deleting the deployment takes the app away again.
    hub.cli(&["delete", "deployment", "db"]);
    let (third, _) = manifest_where(&mut sub, &topic, &mut v, |m| {
        m.generation > second.generation
    })
    .await;
    assert!(third.apps.is_empty());
    let err = hub.cli_err(&["delete", "deployment", "db"]);
    assert!(err.contains("not found"), "{err}");

    // An invalid file is refused before anything is sent, naming the field.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nselector = {}\n").unwrap();
    let err = hub.cli_err(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("selector"), "{err}");

    // Removing the device clears its retained manifest (an empty retained publish).
    hub.cli(&["device", "remove", "c-1"]);
    let gone: Result<DeviceDetail, _> = hub.api.get("/v1/devices/c-1").await;
    assert!(gone.is_err());
    let cleared = eventually_async(
        DEADLINE,
        "empty retained publish clears the manifest",
        || {
            let p = sub.rx.try_recv().ok();
            let topic = topic.clone();
            async move { p.filter(|p| p.topic == topic && p.payload.is_empty()) }
        },
    )
    .await;
    assert!(cleared.payload.is_empty());

    // The audit log says who did it: the token the CLI used (`init` made
    // the data directory's token file the `admin` token).
    let audit = hub.cli(&["audit"]);
    assert!(
        audit
            .lines()
            .any(|l| l.contains("token:admin") && l.contains("deployment.delete")),
        "{audit}"
    );

    // Root key export: the hub keeps serving without it.
    let out = tmp.path().join("root-offline.key");
    hub.cli(&[
        "keys",
        "export-root",
        "--out",
        out.to_str().unwrap(),
        "--remove",
    ]);
    assert!(out.exists() && !dir.join("root.key").exists());
    let devices = hub.cli(&["devices"]);
    // (The only device was removed above.)
    assert_eq!(devices, "no devices\n");
}

/// `keys rotate-root` and `keys rotate` with `--json`, through the binary:
/// the root version and the epoch move, the chain file is written, and the
/// hub starts on the new keys (its `Signer` checks the key set against the
/// new root.pub).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_and_signing_key_rotations_report_in_json_and_the_hub_starts_on_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let run = |args: &[&str]| local_json(&dir, args);
    let old_root = std::fs::read_to_string(dir.join("root.pub")).unwrap();
    let r = run(&["keys", "rotate-root"]);
    assert_eq!(
        (r["root_version"].as_u64(), r["epoch"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(r["previous_root"].as_str(), Some(old_root.trim()));
    let new_root = std::fs::read_to_string(dir.join("root.pub")).unwrap();
    assert_eq!(r["new_root"].as_str(), Some(new_root.trim()));
    assert!(dir.join("roots/2.bin").exists());
    let k = run(&["keys", "rotate"]);
    assert_eq!(k["epoch"].as_u64(), Some(3));
    // The hub serves on the rotated keys and still has the link to publish.
    let hub = HubProc::start(&dir, None).await;
    let out = hub.cli(&["stats", "--json"]);
    assert!(out.contains('{'), "{out}");
    let links = outpost_hub::signing::root_links(&outpost_hub::config::DataDir::new(&dir)).unwrap();
    assert_eq!(links.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [2]);
}

/// `keys rotate-secrets` with the hub stopped: a new `secrets.key`, every
/// stored value re-encrypted under it; the restarted hub seals the same value
/// into a device's manifest, which the device opens; the old key file no
/// longer opens the database's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_secret_key_keeps_every_value() {
    use outpost_protocol::secret::{open, SecretContext};
    use outpost_protocol::DecryptionKey;
    use reqwest::Method;
    use serde_json::{json, Value};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let hub = HubProc::start(&dir, None).await;
    let id: DeviceId = "pi-rekey".parse().unwrap();
    let key = SigningKey::generate().unwrap();
    let enc = DecryptionKey::generate().unwrap();
    let _: Value = hub
        .api
        .call(
            Method::POST,
            "/v1/devices",
            Some(&json!({
                "id": id.as_str(),
                "public_key": key.public_key().to_string(),
                "encryption_key": enc.public_key().to_string(),
                "labels": { "site": "x" },
            })),
        )
        .await
        .unwrap();
    let marker = b"rekey-marker-0f3c".to_vec();
    let _: Value = hub
        .api
        .put_bytes("/v1/secrets/db", marker.clone())
        .await
        .unwrap();
    let apply = |byte: u8| {
        json!({
            "name": "web",
            "selector": { "site": "x" },
            "apps": [{ "name": "web", "image": pinned("reg/web", byte), "secrets": [{ "name": "db" }] }],
        })
    };
    let _: Value = hub
        .api
        .call(Method::PUT, "/v1/deployments", Some(&apply(1)))
        .await
        .unwrap();
    hub.kill();

    let key_file = dir.join("secrets.key");
    let before = std::fs::read(&key_file).unwrap();
    let r = local_json(&dir, &["keys", "rotate-secrets"]);
    assert_eq!(r["values"].as_u64(), Some(1), "{r}");
    let after = std::fs::read(&key_file).unwrap();
    assert_ne!(before, after, "the key file was not replaced");
    assert!(!dir.join("secrets.key.next").exists());
    // The old key opens nothing any more.
    let store = outpost_hub::store::Store::open(&dir.join("hub.redb")).unwrap();
    let old_copy = tmp.path().join("old.key");
    std::fs::write(&old_copy, &before).unwrap();
    std::fs::set_permissions(
        &old_copy,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let old = outpost_hub::secrets::SecretKey::load(&old_copy)
        .unwrap()
        .unwrap();
    let rec = store.secrets().unwrap().remove(0);
    assert!(old.decrypt(&rec).is_err());
    drop(store);

    // The restarted hub seals the value anew (an apply re-renders the
    // device) and the device opens it.
    let hub = HubProc::start(&dir, None).await;
    let topic = manifest_topic(id.as_str());
    let mut sub =
        Subscriber::device(&id, &key, hub.mqtt_port(), std::slice::from_ref(&topic)).await;
    let mut v = verifier(&dir, &id);
    let _: Value = hub
        .api
        .call(Method::PUT, "/v1/deployments", Some(&apply(2)))
        .await
        .unwrap();
    let (m, _) = manifest_where(&mut sub, &topic, &mut v, |m| {
        m.apps
            .first()
            .is_some_and(|a| a.image.to_string().contains(&"02".repeat(32)))
    })
    .await;
    let s = &m.apps[0].secrets[0];
    let ctx = SecretContext {
        device: &id,
        app: "web",
        name: "db",
        version: s.version,
    };
    assert_eq!(
        open(&enc, &ctx, &s.sealed).unwrap().as_slice(),
        marker.as_slice()
    );
}

/// `apply` warns, without refusing, about a variable an app takes that no
/// level sets; one set for the fleet is no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_warns_about_a_variable_set_nowhere() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let hub = HubProc::start(&dir, None).await;
    hub.cli(&["config", "set", "SET_HERE=1"]);
    let file = tmp.path().join("web.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"web\"\nselector = {{ site = \"x\" }}\n\n[[apps]]\nname = \"web\"\n\
             image = \"{}\"\nconfig = [\"SET_HERE\", \"NOWHERE\"]\n",
            pinned("reg/web", 1)
        ),
    )
    .unwrap();
    let out = hub.cli_output(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: app \"web\" takes \"NOWHERE\", which no level sets"),
        "{stderr}"
    );
    assert!(!stderr.contains("SET_HERE"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&hub.cli(&["apply", "-f", file.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(json["warnings"].as_array().map(Vec::len), Some(1), "{json}");
}
