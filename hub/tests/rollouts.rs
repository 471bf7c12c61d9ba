//! Staged rollouts through the real hub binary, its embedded broker over TCP
//! and its redb store: fake devices publish device-signed statuses with their
//! release state filled in (as agents of protocol format version 2 do), and
//! the rollout advances only as they commit, pauses when too many roll back,
//! keeps devices it has not admitted on their generation, survives a SIGKILL
//! of the hub mid-rollout, and obeys pause, resume and abort (abort re-issues
//! the previous release as a new generation to the devices already updated).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use outpost_hub::api::DeviceSummary;
use outpost_hub::hub::rollouts::view::RolloutView;
use outpost_hub::rollout::{PauseReason, Phase};
use outpost_hub::store::AuditEntry;
use outpost_protocol::status::{ReleasePhase, ReleaseStatus};
use outpost_protocol::{topics, DeviceId, Manifest, SigningKey, StatusReport, Verdict};
use outpost_test_support::eventually_async;
use reqwest::Method;
use rumqttc::QoS;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const FLEET: usize = 8;

struct Device {
    id: DeviceId,
    key: SigningKey,
    seq: u64,
}

fn release_file(dir: &Path, image: &str, rollout: bool) -> String {
    let mut s = format!(
        "name = \"web\"\nselector = {{ site = \"a\" }}\n\n[[apps]]\nname = \"web\"\nimage = \"{image}\"\n\n\
         [release]\nstable_secs = 5\ntrial_deadline_secs = 60\n"
    );
    if rollout {
        s.push_str("\n[rollout]\ncanary = 1\nwaves = [4, 6, \"100%\"]\nmax_failure_ratio = 0.25\n");
    }
    let path = dir.join(format!("web-{}.toml", usize::from(rollout)));
    std::fs::write(&path, s).unwrap();
    path.to_str().unwrap().to_string()
}

/// Each device's desired `(epoch, generation)` as the API says.
async fn desired(hub: &HubProc) -> BTreeMap<String, (u64, u64)> {
    let ds: Vec<DeviceSummary> = hub.api.get("/v1/devices").await.unwrap();
    ds.into_iter()
        .map(|d| {
            let g = d.desired.unwrap();
            (d.id.to_string(), (g.epoch, g.generation))
        })
        .collect()
}

/// The device's retained manifest, verified as an agent provisioned from
/// this hub would.
/// The broker lets a device read only its own manifest, with its own login:
/// the device's status link (if any) is closed first, as one client id holds
/// one connection.
async fn manifest_of(hub: &HubProc, links: &mut Links, d: &Device) -> Manifest {
    let id = &d.id;
    links.links.remove(id);
    let topic = topics::manifest(id);
    let mut sub =
        Subscriber::device(id, &d.key, hub.mqtt_port(), std::slice::from_ref(&topic)).await;
    let p = sub.next_on(&topic).await;
    match verifier(&hub.dir, id)
        .verify(&p.payload, outpost_hub::clock::now_secs())
        .unwrap()
    {
        Verdict::Accept(a) => a.manifest,
        other => panic!("{other:?}"),
    }
}

/// Each device's own broker connection (the broker lets a device publish only
/// its own status, logged in as itself).
struct Links {
    port: u16,
    links: std::collections::HashMap<DeviceId, Subscriber>,
}

impl Links {
    fn new(port: u16) -> Links {
        Links {
            port,
            links: Default::default(),
        }
    }

    async fn of(&mut self, d: &Device) -> &Subscriber {
        if !self.links.contains_key(&d.id) {
            let sub = Subscriber::device(&d.id, &d.key, self.port, &[]).await;
            self.links.insert(d.id.clone(), sub);
        }
        &self.links[&d.id]
    }
}

/// Publish a device-signed status saying `release`.
async fn report(links: &mut Links, d: &mut Device, applied: (u64, u64), release: ReleaseStatus) {
    d.seq += 1;
    let st = StatusReport {
        release: Some(release),
        ..status_report(&d.id, d.seq, Some(applied))
    };
    links
        .of(d)
        .await
        .client
        .publish(
            topics::status(&d.id),
            QoS::AtLeastOnce,
            false,
            st.seal(&d.key),
        )
        .await
        .unwrap();
}

async fn commit(pub_: &mut Links, d: &mut Device, g: (u64, u64)) {
    let r = ReleaseStatus {
        target: g,
        phase: ReleasePhase::Committed,
        committed: Some(g),
    };
    report(pub_, d, g, r).await;
}

async fn roll_back(pub_: &mut Links, d: &mut Device, g: (u64, u64), to: (u64, u64)) {
    let r = ReleaseStatus {
        target: g,
        phase: ReleasePhase::RolledBack {
            to,
            app: "web".into(),
            reason: "exited with status 3".into(),
        },
        committed: Some(to),
    };
    report(pub_, d, g, r).await;
}

async fn view(hub: &HubProc) -> RolloutView {
    hub.api.get("/v1/rollouts/web").await.unwrap()
}

/// Devices whose desired generation is `g`.
async fn at(hub: &HubProc, g: (u64, u64)) -> Vec<String> {
    desired(hub)
        .await
        .into_iter()
        .filter(|(_, d)| *d == g)
        .map(|(id, _)| id)
        .collect()
}

async fn wait_for_count(hub: &HubProc, g: (u64, u64), n: usize) -> Vec<String> {
    eventually_async(DEADLINE, &format!("{n} device(s) at {g:?}"), || async {
        let ids = at(hub, g).await;
        (ids.len() == n).then_some(ids)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_advances_as_devices_commit_pauses_on_rollbacks_survives_a_restart_and_aborts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let mut hub = HubProc::start(&dir, None).await;

    let mut devices: Vec<Device> = (0..FLEET)
        .map(|i| Device {
            id: format!("ro-{i}").parse().unwrap(),
            key: SigningKey::generate().unwrap(),
            seq: 0,
        })
        .collect();
    let batch = serde_json::json!({
        "devices": devices.iter().map(|d| serde_json::json!({
            "id": d.id.as_str(),
            "public_key": d.key.public_key().to_string(),
            "labels": { "site": "a" },
        })).collect::<Vec<_>>()
    });
    hub.api
        .call::<_, serde_json::Value>(Method::POST, "/v1/devices/batch", Some(&batch))
        .await
        .unwrap();

    let mut pub_ = Links::new(hub.mqtt_port());
    // Device `ro-N` is `devices[N]`.
    let idx = |id: &str| -> usize { id.trim_start_matches("ro-").parse().unwrap() };

    // Revision 1, no rollout: everyone at once, with the [release] policy.
    let v1 = pinned("reg/web", 1);
    hub.cli(&["apply", "-f", &release_file(tmp.path(), &v1, false)]);
    let first = desired(&hub).await;
    let g1 = first["ro-0"];
    assert!(first.values().all(|g| *g == g1), "{first:?}");
    let m = manifest_of(&hub, &mut pub_, &devices[0]).await;
    assert_eq!(m.release.stable_secs, 5);
    assert_eq!(m.release.trial_deadline_secs, 60);
    assert_eq!(m.apps[0].image.to_string(), v1);
    for d in devices.iter_mut() {
        commit(&mut pub_, d, g1).await;
    }

    // Revision 2 with [rollout]: only the canary gets it.
    let v2 = pinned("reg/web", 2);
    let out = hub.cli(&["apply", "-f", &release_file(tmp.path(), &v2, true)]);
    assert!(out.contains("rollout started"), "{out}");
    let g2 = (g1.0, g1.1 + 1);
    let canary = wait_for_count(&hub, g2, 1).await;
    // It stays alone while it has not committed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(at(&hub, g2).await, canary);
    assert_eq!(at(&hub, g1).await.len(), FLEET - 1);
    let m = manifest_of(&hub, &mut pub_, &devices[idx(&canary[0])]).await;
    assert_eq!(m.apps[0].image.to_string(), v2);
    let v = view(&hub).await;
    assert_eq!(
        (v.phase.clone(), v.waves[0].targeted, v.tally.pending),
        (Phase::Running, 1, 1)
    );

    // The canary commits: wave 1 takes the rollout to 4 devices.
    commit(&mut pub_, &mut devices[idx(&canary[0])], g2).await;
    let updated = wait_for_count(&hub, g2, 4).await;
    let wave1: Vec<String> = updated.into_iter().filter(|id| *id != canary[0]).collect();

    // The hub dies (SIGKILL) mid-rollout and comes back: same progress.
    hub.kill();
    hub = HubProc::start(&dir, None).await;
    drop(pub_);
    pub_ = Links::new(hub.mqtt_port());
    let v = view(&hub).await;
    assert_eq!(v.phase, Phase::Running);
    assert_eq!(
        (
            v.waves[0].committed,
            v.waves[1].targeted,
            v.tally.untargeted
        ),
        (1, 3, 4)
    );
    assert_eq!(at(&hub, g1).await.len(), FLEET - 4);

    // Two of wave 1 roll back: 2 of 4 counted failed, over 0.25: paused.
    roll_back(&mut pub_, &mut devices[idx(&wave1[0])], g2, g1).await;
    roll_back(&mut pub_, &mut devices[idx(&wave1[1])], g2, g1).await;
    let v = eventually_async(DEADLINE, "rollout paused", || async {
        let v = view(&hub).await;
        matches!(v.phase, Phase::Paused { .. }).then_some(v)
    })
    .await;
    assert!(
        matches!(
            v.phase,
            Phase::Paused {
                reason: PauseReason::FailureRatio {
                    failed: 2,
                    counted: 4,
                    ..
                }
            }
        ),
        "{:?}",
        v.phase
    );
    assert_eq!(v.failed.len(), 2);
    assert!(v
        .failed
        .iter()
        .all(|f| f.reason.contains("app web: exited with status 3")));
    let human = hub.cli(&["rollout", "status", "web"]);
    for want in [
        "deployment web: revision 2 (from revision 1), paused (2 of 4 updated devices failed",
        "WAVE    UPDATES  ADMITTED  COMMITTED  FAILED  PENDING  SKIPPED  STARTED",
        "canary     to 1         1          1       0        0        0",
        "1          to 4         3          0       2        1        0",
        "3          to 8         0          0       0        0        0  not started",
        "FAILED DEVICE",
        "rolled back",
        "app web: exited with status 3 (rolled back to generation",
        &wave1[0],
        &wave1[1],
    ] {
        assert!(human.contains(want), "missing {want:?} in:\n{human}");
    }
    let all = hub.cli(&["rollout", "status"]);
    assert!(all.contains("web") && all.contains("paused"), "{all}");

    // Paused: the last of wave 1 commits, nobody new is admitted, and the
    // devices not admitted still have revision 1's generation.
    commit(&mut pub_, &mut devices[idx(&wave1[2])], g2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(at(&hub, g2).await.len(), 4);
    assert_eq!(at(&hub, g1).await.len(), FLEET - 4);

    // Resume: wave 2 (6 devices). Then the operator pauses; the new ones
    // commit, and still nobody else is admitted.
    let out = hub.cli(&["rollout", "resume", "web"]);
    assert!(out.contains("running"), "{out}");
    let now_at_g2 = wait_for_count(&hub, g2, 6).await;
    hub.cli(&["rollout", "pause", "web"]);
    for id in now_at_g2
        .iter()
        .filter(|id| !wave1.contains(id) && **id != canary[0])
    {
        commit(&mut pub_, &mut devices[idx(id)], g2).await;
    }
    eventually_async(DEADLINE, "wave 2 committed", || async {
        (view(&hub).await.waves[2].committed == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = view(&hub).await;
    assert_eq!(
        v.phase,
        Phase::Paused {
            reason: PauseReason::Operator
        }
    );
    assert_eq!(v.tally.untargeted, 2);

    // Abort: the 6 admitted devices get revision 1's apps again, as a new
    // generation; the 2 never admitted keep theirs.
    let out = hub.cli(&["rollout", "abort", "web"]);
    assert!(out.contains("aborted"), "{out}");
    let g3 = (g1.0, g1.1 + 2);
    let reissued = wait_for_count(&hub, g3, 6).await;
    assert_eq!(at(&hub, g1).await.len(), 2);
    let m = manifest_of(&hub, &mut pub_, &devices[idx(&reissued[0])]).await;
    assert_eq!(m.apps[0].image.to_string(), v1);
    assert_eq!(m.generation, g3.1);
    let untouched = at(&hub, g1).await;
    let m = manifest_of(&hub, &mut pub_, &devices[idx(&untouched[0])]).await;
    assert_eq!(
        (m.generation, m.apps[0].image.to_string()),
        (g1.1, v1.clone())
    );
    let err = hub.cli_err(&["rollout", "resume", "web"]);
    assert!(err.contains("aborted; cannot resume"), "{err}");

    // Every step is in the audit log: waves admitted by an operator's apply or
    // resume carry that operator, the others the hub's driver.
    let audit: Vec<AuditEntry> = hub.api.get("/v1/audit?limit=100").await.unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e.action.starts_with("rollout."))
        .map(|e| (e.action.as_str(), e.who.split(':').next().unwrap_or("")))
        .rev()
        .collect();
    assert_eq!(
        actions,
        vec![
            ("rollout.wave", "token"),
            ("rollout.wave", "hub"),
            ("rollout.pause", "hub"),
            ("rollout.resume", "token"),
            ("rollout.wave", "token"),
            ("rollout.pause", "token"),
            ("rollout.abort", "token"),
        ]
    );
    hub.kill();
}
