//! HTTP API handlers driven with `router().oneshot(..)` (no server), over a real
//! redb store; image resolution against a real `docker-registry`.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::status_report;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use outpost_hub::api::{self, ApiState};
use outpost_hub::clock::{Clock, ManualClock, SystemClock};
use outpost_hub::config::DataDir;
use outpost_hub::hub::Hub;
use outpost_hub::publish::{Outbox, PublishStats};
use outpost_hub::resolve::{ImageResolver, OciResolver, PinnedOnly};
use outpost_hub::signing::{self, Signer};
use outpost_hub::store::Store;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::mpsc;
use tower::ServiceExt;

const TOKEN: &str = "test-token";

struct Fixture {
    state: ApiState,
    _outbox: mpsc::UnboundedReceiver<Outbox>,
    _tmp: tempfile::TempDir,
}

fn fixture(resolver: Arc<dyn ImageResolver>) -> Fixture {
    fixture_on(resolver, Arc::new(SystemClock))
}

fn fixture_on(resolver: Arc<dyn ImageResolver>, clock: Arc<dyn Clock>) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path());
    signing::create_keys(&dir, 0).unwrap();
    let signer = Signer::load(&dir).unwrap();
    let store = Store::open(&dir.database()).unwrap();
    // TOKEN is the admin token, as `init` makes the token file one.
    std::fs::write(dir.token(), TOKEN).unwrap();
    outpost_hub::tokens::bootstrap(&store, &dir, 0).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let hub = Arc::new(Hub::new(store, signer, resolver, tx).with_clock(clock));
    Fixture {
        state: ApiState {
            hub,
            publish: Arc::new(PublishStats::default()),
            broker: None,
            ingest: Default::default(),
            tls: true,
            links: Default::default(),
        },
        _outbox: rx,
        _tmp: tmp,
    }
}

async fn call(f: &Fixture, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    call_with(f, method, path, body, Some(TOKEN)).await
}

async fn call_with(
    f: &Fixture,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .header("content-type", "application/json")
        .body(match body {
            Some(b) => Body::from(b.to_string()),
            None => Body::empty(),
        })
        .unwrap();
    let resp = api::router(f.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, v)
}

fn key_hex() -> String {
    outpost_protocol::SigningKey::generate()
        .unwrap()
        .public_key()
        .to_string()
}

fn deployment(apps: Value) -> Value {
    json!({ "name": "web", "selector": { "site": "lab" }, "apps": apps })
}

fn app(name: &str, image: &str) -> Value {
    json!({ "name": name, "image": image })
}

async fn nothing_changed(f: &Fixture) {
    let (s, deps) = call(f, "GET", "/v1/deployments", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(deps, json!([]));
    let (_, audit) = call(f, "GET", "/v1/audit", None).await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] != "deployment.apply"),
        "{audit}"
    );
}

#[tokio::test]
async fn requests_without_the_bearer_token_are_refused() {
    let f = fixture(Arc::new(PinnedOnly));
    let (s, _) = call_with(&f, "GET", "/v1/devices", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call_with(&f, "GET", "/v1/devices", None, Some("wrong")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call_with(&f, "GET", "/v1/health", None, None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn bad_deployments_get_400_naming_the_field_and_change_nothing() {
    let f = fixture(Arc::new(PinnedOnly));
    let good = common::pinned("reg/web", 1);
    let cases: Vec<(&str, Value, Option<&str>, &str)> = vec![
        (
            "unknown field in an app",
            deployment(json!([{ "name": "web", "image": good, "enviroment": {} }])),
            Some("apps[0]"),
            "enviroment",
        ),
        (
            "unknown top-level field",
            json!({ "name": "web", "selector": { "site": "lab" }, "apps": [], "replicas": 3 }),
            None,
            "replicas",
        ),
        (
            "empty selector",
            json!({ "name": "web", "selector": {}, "apps": [app("web", &good)] }),
            Some("selector"),
            "at least one label",
        ),
        (
            "duplicate app names",
            deployment(json!([app("web", &good), app("web", &good)])),
            Some("apps[1].name"),
            "more than once",
        ),
        (
            "tag with no registry reachable",
            deployment(json!([app("web", "reg/web:1.0")])),
            Some("apps[0].image"),
            "reg/web:1.0",
        ),
        (
            "bad digest",
            deployment(json!([app("web", "reg/web@sha256:1234")])),
            Some("apps[0].image"),
            "sha256",
        ),
        (
            "bad env",
            deployment(json!([{ "name": "web", "image": good, "env": { "A=B": "x" } }])),
            Some("apps[0].env"),
            "A=B",
        ),
        (
            "wrong type",
            deployment(json!([{ "name": "web", "image": 7 }])),
            Some("apps[0].image"),
            "invalid type",
        ),
    ];
    for (what, body, field, needle) in cases {
        let (s, v) = call(&f, "PUT", "/v1/deployments", Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{what}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{what}: {msg:?} should mention {needle:?}"
        );
        if let Some(field) = field {
            assert!(
                v["field"].as_str().is_some_and(|f| f.starts_with(field)),
                "{what}: field {:?}, expected {field}",
                v["field"]
            );
        }
    }
    nothing_changed(&f).await;
}

#[tokio::test]
async fn apps_claimed_by_two_deployments_on_one_device_are_refused() {
    let f = fixture(Arc::new(PinnedOnly));
    let (s, _) = call(
        &f,
        "POST",
        "/v1/devices",
        Some(json!({ "id": "d1", "public_key": key_hex(), "labels": { "site": "lab", "role": "gw" } })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let image = common::pinned("reg/web", 1);
    let (s, out) = call(
        &f,
        "PUT",
        "/v1/deployments",
        Some(deployment(json!([app("web", &image)]))),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert_eq!(out["updated"][0]["device"], "d1");
    let other =
        json!({ "name": "other", "selector": { "role": "gw" }, "apps": [app("web", &image)] });
    let (s, v) = call(&f, "PUT", "/v1/deployments", Some(other)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("both"), "{v}");
    let (_, deps) = call(&f, "GET", "/v1/deployments", None).await;
    assert_eq!(deps.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn device_registration_validates_input() {
    let f = fixture(Arc::new(PinnedOnly));
    let cases = [
        (json!({ "id": "bad/id", "public_key": key_hex() }), "id"),
        (json!({ "id": "ok", "public_key": "zz" }), "public_key"),
        (
            json!({ "id": "ok", "public_key": key_hex(), "labels": { "bad key": "x" } }),
            "labels",
        ),
        (
            json!({ "id": "ok", "public_key": key_hex(), "colour": "red" }),
            "",
        ),
    ];
    for (body, field) in cases {
        let (s, v) = call(&f, "POST", "/v1/devices", Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        if !field.is_empty() {
            assert_eq!(
                v["field"].as_str().map(|f| f.starts_with(field)),
                Some(true),
                "{body}: {v}"
            );
        }
    }
    let k = key_hex();
    let (s, _) = call(
        &f,
        "POST",
        "/v1/devices",
        Some(json!({ "id": "ok", "public_key": k })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = call(
        &f,
        "POST",
        "/v1/devices",
        Some(json!({ "id": "ok", "public_key": k })),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = call(
        &f,
        "PATCH",
        "/v1/devices/ok/labels",
        Some(json!({ "set": { "site": "lab" } })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["labels"]["site"], "lab");
    let (s, _) = call(&f, "GET", "/v1/devices/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&f, "DELETE", "/v1/devices/ok", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&f, "DELETE", "/v1/deployments/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_write_of_an_operation_carries_the_hubs_clock() {
    let clock = Arc::new(ManualClock::new(1_000));
    let f = fixture_on(Arc::new(PinnedOnly), clock.clone());
    let (s, v) = call(
        &f,
        "POST",
        "/v1/devices",
        Some(json!({ "id": "d1", "public_key": key_hex(), "labels": { "site": "lab" } })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["registered_at"], 1_000, "{v}");
    clock.set(5_000);
    let digest = format!("sha256:{}", "ab".repeat(32));
    let (s, v) = call(
        &f,
        "PUT",
        "/v1/deployments",
        Some(deployment(json!([app(
            "web",
            &format!("reg.example/web@{digest}")
        )]))),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let meta = f
        .state
        .hub
        .store
        .manifest_meta(&"d1".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(meta.issued_at, 5_000);
    let (_, audit) = call(&f, "GET", "/v1/audit", None).await;
    let at: Vec<(String, u64)> = audit
        .as_array()
        .unwrap()
        .iter()
        // The fixture's admin token was made before the clock was set.
        .filter(|e| e["action"] != "token.create")
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["at"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        at,
        [
            ("deployment.apply".to_string(), 5_000),
            ("device.add".to_string(), 1_000)
        ],
        "{audit}"
    );
}

#[tokio::test]
async fn a_batch_naming_a_device_twice_is_a_conflict_that_stores_nothing() {
    let f = fixture(Arc::new(PinnedOnly));
    let body = json!({ "devices": [
        { "id": "a", "public_key": key_hex() },
        { "id": "b", "public_key": key_hex() },
        { "id": "a", "public_key": key_hex() },
    ] });
    let (s, v) = call(&f, "POST", "/v1/devices/batch", Some(body)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v.to_string().contains("device a appears more than once"),
        "{v}"
    );
    let (s, devices) = call(&f, "GET", "/v1/devices", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(devices, json!([]));
}

/// Push a one-layer image to the registry with skopeo; returns its digest.
fn push_image(dir: &std::path::Path, dest: &str) -> String {
    use outpost_oci::build::{reproducible_tar, Entry, Layer, LayoutWriter};
    use outpost_oci::spec::{OciPlatform, RuntimeConfig};
    let layout = dir.join("layout");
    let w = LayoutWriter::create(&layout).unwrap();
    let layer = Layer::gzip(
        &reproducible_tar(&[Entry::File {
            path: "hello.txt".into(),
            mode: 0o644,
            contents: b"hello".to_vec(),
        }])
        .unwrap(),
    )
    .unwrap();
    let platform = OciPlatform {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
    };
    let desc = w
        .add_image(&platform, &[layer], RuntimeConfig::default())
        .unwrap();
    w.finish("latest", &desc).unwrap();
    outpost_test_support::registry::skopeo_copy(&layout, "latest", dest, &Default::default())
        .unwrap();
    desc.digest
}

#[tokio::test]
async fn tags_resolve_to_digests_through_a_real_registry_and_unknown_tags_are_400() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = outpost_test_support::registry::Registry::start().unwrap();
    let host = registry.host();
    let f = fixture(Arc::new(OciResolver::new(vec![host.clone()])));

    let (s, v) = call(
        &f,
        "PUT",
        "/v1/deployments",
        Some(deployment(json!([app(
            "web",
            &format!("{host}/outpost/missing:1.0")
        )]))),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], "apps[0].image");
    assert!(
        v["error"].as_str().unwrap().contains("outpost/missing:1.0"),
        "{v}"
    );
    nothing_changed(&f).await;

    let digest = push_image(tmp.path(), &format!("{host}/outpost/hello:latest"));
    let (s, _) = call(
        &f,
        "POST",
        "/v1/devices",
        Some(json!({ "id": "d1", "public_key": key_hex(), "labels": { "site": "lab" } })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = call(
        &f,
        "PUT",
        "/v1/deployments",
        Some(deployment(json!([app(
            "web",
            &format!("{host}/outpost/hello:latest")
        )]))),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, dep) = call(&f, "GET", "/v1/deployments/web", None).await;
    assert_eq!(
        dep["spec"]["apps"][0]["image"],
        format!("{host}/outpost/hello:latest"),
        "the operator's spec keeps the tag"
    );
    let (_, dev) = call(&f, "GET", "/v1/devices/d1", None).await;
    assert_eq!(dev["desired"]["generation"], 2, "{dev}");
    // The pinned digest is what the manifest carries.
    let rec = f.state.hub.store.deployment("web").unwrap().unwrap();
    assert_eq!(rec.apps[0].image.digest.to_string(), digest);
}

fn pinned_app(name: &str, byte: u8) -> Value {
    app(
        name,
        &format!("reg.example/{name}@sha256:{}", hex::encode([byte; 32])),
    )
}

async fn desired_generation(f: &Fixture, id: &str) -> u64 {
    f.state
        .hub
        .store
        .manifest_meta(&id.parse().unwrap())
        .unwrap()
        .unwrap()
        .generation
}

#[tokio::test]
async fn a_release_change_is_a_new_generation_and_a_changed_apply_waits_for_the_running_rollout() {
    let f = fixture(Arc::new(PinnedOnly));
    let (s, v) = call(
        &f,
        "POST",
        "/v1/devices",
        Some(json!({ "id": "d1", "public_key": key_hex(), "labels": { "site": "lab" } })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = call(
        &f,
        "PUT",
        "/v1/deployments",
        Some(deployment(json!([pinned_app("web", 1)]))),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let g = desired_generation(&f, "d1").await;

    // Same apps, a [release] table: content changed, new revision and generation.
    let mut with_release = deployment(json!([pinned_app("web", 1)]));
    with_release["release"] = json!({ "stable_secs": 10, "trial_deadline_secs": 100 });
    let (s, v) = call(&f, "PUT", "/v1/deployments", Some(with_release.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["changed"].clone(), v["revision"].clone()),
        (json!(true), json!(2)),
        "{v}"
    );
    assert_eq!(desired_generation(&f, "d1").await, g + 1);
    let (s, v) = call(&f, "PUT", "/v1/deployments", Some(with_release.clone())).await;
    assert_eq!(
        (s, v["changed"].clone()),
        (StatusCode::OK, json!(false)),
        "{v}"
    );
    assert_eq!(desired_generation(&f, "d1").await, g + 1);
    // A bad one is refused naming the field.
    let mut bad = with_release.clone();
    bad["release"]["stable_secs"] = json!(101);
    let (s, v) = call(&f, "PUT", "/v1/deployments", Some(bad)).await;
    assert_eq!(
        (s, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("release.stable_secs")),
        "{v}"
    );

    // A new image with [rollout]: the canary (the only device) gets it with the apply.
    let mut staged = deployment(json!([pinned_app("web", 2)]));
    staged["rollout"] = json!({ "canary": 1, "waves": ["100%"] });
    let (s, v) = call(&f, "PUT", "/v1/deployments", Some(staged.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rollout_started"], json!(true), "{v}");
    assert_eq!(v["updated"].as_array().unwrap().len(), 1, "{v}");
    // While it runs, a changed apply is a conflict naming the rollout; the same content is fine.
    let mut next = staged.clone();
    next["apps"] = json!([pinned_app("web", 3)]);
    let (s, v) = call(&f, "PUT", "/v1/deployments", Some(next)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("rollout abort web"),
        "{v}"
    );
    let (s, v) = call(&f, "PUT", "/v1/deployments", Some(staged)).await;
    assert_eq!(
        (s, v["changed"].clone()),
        (StatusCode::OK, json!(false)),
        "{v}"
    );
    // Commands on a deployment without a rollout are 404; unknown commands too.
    let (s, _) = call(&f, "POST", "/v1/rollouts/nope/pause", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&f, "POST", "/v1/rollouts/web/restart", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_silent_device_is_skipped_and_a_stuck_wave_times_out_on_the_hubs_clock() {
    use outpost_hub::store::StatusRecord;
    use outpost_protocol::status::{ReleasePhase, ReleaseStatus};
    let clock = Arc::new(ManualClock::new(1_000));
    let f = fixture_on(Arc::new(PinnedOnly), clock.clone());
    for id in ["d1", "d2", "d3"] {
        let (s, v) = call(
            &f,
            "POST",
            "/v1/devices",
            Some(json!({ "id": id, "public_key": key_hex(), "labels": { "site": "lab" } })),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let mut staged = deployment(json!([pinned_app("web", 1)]));
    staged["rollout"] = json!({
        "canary": 1, "waves": ["100%"], "wave_timeout_secs": 1000, "offline_grace_secs": 100
    });
    let (s, v) = call(&f, "PUT", "/v1/deployments", Some(staged)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let canary = v["updated"][0]["device"].as_str().unwrap().to_string();
    let hub = Arc::clone(&f.state.hub);
    let status = |id: &str, at: u64| {
        let id: outpost_protocol::DeviceId = id.parse().unwrap();
        let meta = hub.store.manifest_meta(&id).unwrap().unwrap();
        let report = outpost_protocol::StatusReport {
            reported_at: at,
            release: Some(ReleaseStatus {
                target: (meta.epoch, meta.generation),
                phase: ReleasePhase::Downloading,
                committed: None,
            }),
            ..status_report(&id, at, Some((meta.epoch, meta.generation)))
        };
        hub.store
            .write(|tx| {
                tx.put_status(
                    &id,
                    &StatusRecord {
                        received_at: at,
                        report,
                    },
                )
            })
            .unwrap();
    };

    // The canary never reports: within the grace it holds the rollout...
    clock.set(1_099);
    outpost_hub::hub::rollouts::tick(&f.state.hub)
        .await
        .unwrap();
    let (_, v) = call(&f, "GET", "/v1/rollouts/web", None).await;
    assert_eq!(
        (
            v["tally"]["pending"].clone(),
            v["tally"]["untargeted"].clone()
        ),
        (json!(1), json!(2)),
        "{v}"
    );
    // ...after it, it is skipped and the next wave goes out.
    clock.set(1_100);
    outpost_hub::hub::rollouts::tick(&f.state.hub)
        .await
        .unwrap();
    let (_, v) = call(&f, "GET", "/v1/rollouts/web", None).await;
    assert_eq!(
        (v["tally"]["skipped"].clone(), v["tally"]["pending"].clone()),
        (json!(1), json!(2)),
        "{v}"
    );

    // The wave's devices keep reporting (still downloading): not skipped, but
    // the wave times out 1000 s after it started.
    let others: Vec<String> = ["d1", "d2", "d3"]
        .iter()
        .filter(|d| **d != canary)
        .map(|d| d.to_string())
        .collect();
    for t in [
        1_150, 1_240, 1_330, 1_420, 1_510, 1_600, 1_690, 1_780, 1_870, 1_960, 2_050, 2_099,
    ] {
        clock.set(t);
        for id in &others {
            status(id, t);
        }
        outpost_hub::hub::rollouts::tick(&f.state.hub)
            .await
            .unwrap();
    }
    let (_, v) = call(&f, "GET", "/v1/rollouts/web", None).await;
    assert_eq!(v["phase"], json!("Running"), "{v}");
    clock.set(2_100);
    outpost_hub::hub::rollouts::tick(&f.state.hub)
        .await
        .unwrap();
    let (_, v) = call(&f, "GET", "/v1/rollouts/web", None).await;
    assert_eq!(
        v["phase"],
        json!({ "Paused": { "reason": { "WaveTimeout": { "wave": 1, "pending": 2, "timeout_secs": 1000 } } } }),
        "{v}"
    );
    assert!(
        v["state"]
            .as_str()
            .unwrap()
            .contains("wave 1 timed out after 1000 s with 2 device(s) pending"),
        "{v}"
    );
    // Nothing is stored by a step that changes nothing: the audit log has
    // the two waves and the pause only.
    let (_, audit) = call(&f, "GET", "/v1/audit", None).await;
    let rollout_actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str().filter(|a| a.starts_with("rollout.")))
        .collect();
    assert_eq!(
        rollout_actions,
        ["rollout.pause", "rollout.wave", "rollout.wave"],
        "{audit}"
    );
}
