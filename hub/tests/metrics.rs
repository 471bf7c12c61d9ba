//! `/metrics` of a real hub binary, scraped over TLS with a viewer token and
//! parsed with a Prometheus text-format parser: devices by state (a device
//! reporting over the embedded broker is online, another never seen), a
//! rollout in progress (its canary pending, the rest not yet updated), the
//! manifests published and the device messages the hub took in.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use outpost_hub::client::ApiClient;
use outpost_hub::config::DataDir;
use outpost_protocol::status::{ReleasePhase, ReleaseStatus};
use outpost_protocol::{topics, DeviceId, RejectCounters, SigningKey, StatusReport};
use outpost_test_support::eventually_async;
use reqwest::Method;
use rumqttc::QoS;

struct Device {
    id: DeviceId,
    key: SigningKey,
    seq: u64,
}

/// Publish a device-signed status: `applied` committed, with one manifest
/// refused as a rollback (the device's own counter).
async fn commit(sub: &Subscriber, d: &mut Device, applied: (u64, u64)) {
    d.seq += 1;
    let st = StatusReport {
        rejected: RejectCounters {
            rollback: 1,
            ..Default::default()
        },
        last_rejection: Some("generation 1 is older than 2".into()),
        release: Some(ReleaseStatus {
            target: applied,
            phase: ReleasePhase::Committed,
            committed: Some(applied),
        }),
        ..status_report(&d.id, d.seq, Some(applied))
    };
    sub.client
        .publish(
            topics::status(&d.id),
            QoS::AtLeastOnce,
            false,
            st.seal(&d.key),
        )
        .await
        .unwrap();
}

fn release_file(dir: &std::path::Path, byte: u8, rollout: bool) -> String {
    let mut s = format!(
        "name = \"web\"\nselector = {{ site = \"a\" }}\n\n[[apps]]\nname = \"web\"\nimage = \"{}\"\n",
        pinned("reg/web", byte)
    );
    if rollout {
        s.push_str("\n[rollout]\ncanary = 1\nwaves = [\"100%\"]\n");
    }
    let path = dir.join(format!("web-{byte}.toml"));
    std::fs::write(&path, s).unwrap();
    path.to_str().unwrap().to_string()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: unexpected {other:?}"),
        })
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_devices_by_state_and_a_rollout_in_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let hub = HubProc::start(&dir, None).await;

    let mut devices: Vec<Device> = (0..3)
        .map(|i| Device {
            id: format!("m-{i}").parse().unwrap(),
            key: SigningKey::generate().unwrap(),
            seq: 0,
        })
        .collect();
    for d in &devices {
        hub.cli(&[
            "device",
            "add",
            d.id.as_str(),
            "--public-key",
            &d.key.public_key().to_string(),
            "-l",
            "site=a",
        ]);
    }
    // A fourth device, registered and never heard from.
    let silent = SigningKey::generate().unwrap();
    hub.cli(&[
        "device",
        "add",
        "m-silent",
        "--public-key",
        &silent.public_key().to_string(),
    ]);

    // Scraping needs a token; a viewer's is enough.
    let made: serde_json::Value = serde_json::from_str(
        &hub.cli(&["token", "create", "scraper", "--role", "viewer", "--json"]),
    )
    .unwrap();
    let secret = made["secret"].as_str().unwrap().to_string();
    let scraper = ApiClient::with_trust(
        hub.addrs.url(),
        secret,
        outpost_hub::client::Trust::choose(None, &DataDir::new(&dir)),
    )
    .unwrap();
    let anonymous = ApiClient::new(hub.addrs.url(), "not-a-token");
    assert!(anonymous.get_text("/metrics").await.is_err());

    // Revision 1 everywhere; every device commits it.
    hub.cli(&["apply", "-f", &release_file(tmp.path(), 1, false)]);
    let links: Vec<Subscriber> = {
        let mut v = Vec::new();
        for d in &devices {
            v.push(Subscriber::device(&d.id, &d.key, hub.mqtt_port(), &[]).await);
        }
        v
    };
    let g1 = {
        let ds: Vec<outpost_hub::api::DeviceSummary> = hub.api.get("/v1/devices").await.unwrap();
        let g = ds.iter().find(|d| d.id == "m-0").unwrap().desired.unwrap();
        (g.epoch, g.generation)
    };
    for (d, link) in devices.iter_mut().zip(&links) {
        commit(link, d, g1).await;
    }

    // Revision 2 with a rollout: the canary is admitted and stays pending.
    let out = hub.cli(&["apply", "-f", &release_file(tmp.path(), 2, true)]);
    assert!(out.contains("rollout started"), "{out}");

    let scrape = eventually_async(DEADLINE, "metrics show 3 online devices", || async {
        let text = scraper.get_text("/metrics").await.unwrap();
        let s = parse(&text);
        (sample(&s, "outpost_hub_devices", &[("state", "online")]) == Some(3.0)).then_some(s)
    })
    .await;

    let want = [
        ("outpost_hub_devices", vec![("state", "online")], 3.0),
        ("outpost_hub_devices", vec![("state", "never_seen")], 1.0),
        ("outpost_hub_devices", vec![("state", "offline")], 0.0),
        ("outpost_hub_rollouts", vec![("phase", "running")], 1.0),
        ("outpost_hub_rollouts", vec![("phase", "completed")], 0.0),
        (
            "outpost_hub_rollout_phase",
            vec![("deployment", "web"), ("phase", "running")],
            1.0,
        ),
        (
            "outpost_hub_rollout_devices",
            vec![("deployment", "web"), ("standing", "pending")],
            1.0,
        ),
        (
            "outpost_hub_rollout_devices",
            vec![("deployment", "web"), ("standing", "not_updated")],
            2.0,
        ),
        ("outpost_hub_deployments", vec![], 1.0),
        (
            "outpost_hub_device_manifest_rejections",
            vec![("reason", "rollback")],
            3.0,
        ),
        (
            "outpost_hub_device_messages_total",
            vec![("kind", "status"), ("outcome", "accepted")],
            3.0,
        ),
        ("outpost_hub_broker_logins_refused_total", vec![], 0.0),
    ];
    for (name, labels, value) in want {
        assert_eq!(
            sample(&scrape, name, &labels),
            Some(value),
            "{name} {labels:?}"
        );
    }
    // 4 registrations, the apply to 3 devices, the canary's new generation
    // and the republish at connect: at least 8 manifests went out.
    let published = sample(&scrape, "outpost_hub_manifests_published_total", &[]).unwrap();
    assert!(published >= 8.0, "{published}");
    assert!(sample(&scrape, "outpost_hub_ingest_last_status_age_seconds", &[]).is_some());

    // The operator pauses: the scrape follows.
    hub.api
        .call::<(), serde_json::Value>(Method::POST, "/v1/rollouts/web/pause", None)
        .await
        .unwrap();
    let text = scraper.get_text("/metrics").await.unwrap();
    let s = parse(&text);
    assert_eq!(
        sample(&s, "outpost_hub_rollouts", &[("phase", "paused")]),
        Some(1.0),
        "{text}"
    );
    drop(links);
}
