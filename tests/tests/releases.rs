//! Releases that cannot brick a device, end to end on real containers, a real
//! broker and a real registry: a release that crashes or never becomes
//! healthy rolls back on the device while it is cut off from the hub; an
//! agent killed during the trial rolls back on restart; download-then-kill
//! keeps the old app serving through a registry outage; delete-then-download
//! deletes the old image before it pulls the new one; an update lock defers
//! a release until released, and the override replaces the app anyway; a
//! staged rollout over five real devices pauses after a broken canary and
//! completes a good release across a crash of the hub.

use outpost_e2e::firewall::PortCut;
use outpost_e2e::{eventually, unique, Agent, AppDef, Hub, Registry, World, PATIENCE};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The release phase's name and fields, once it is `want`.
fn phase_is(w: &World, want: &str) -> Option<Value> {
    w.agent
        .release_phase()
        .filter(|(name, _)| name == want)
        .map(|(_, fields)| fields)
}

/// Deploy `v2`, wait for the device to accept it, cut the device's link to
/// the broker, and wait for the rollback to v1 on the device alone. Then
/// restore the link and wait for the hub to hear of it.
fn rolls_back_offline(
    w: &World,
    v1: &outpost_e2e::AppDef,
    v2: &outpost_e2e::AppDef,
    release: &str,
) {
    let committed = w.agent.committed_generation().expect("v1 committed");
    w.hub
        .deploy_with(&w.agent.device_id, std::slice::from_ref(v2), release)
        .expect("deploying v2");
    let target = eventually(PATIENCE, "the device to accept v2", || {
        w.agent.applied_generation().filter(|g| *g > committed)
    });
    w.proxy.cut();
    eventually(PATIENCE, "the agent to notice the cut", || {
        (!w.agent.connected()?).then_some(())
    });
    let t = Instant::now();
    let fields = eventually(PATIENCE, "the device to roll back on its own", || {
        phase_is(w, "RolledBack")
    });
    eprintln!(
        "measured: v2 accepted -> rolled back offline: {:?}",
        t.elapsed()
    );
    assert_eq!(fields["to"][1].as_u64(), Some(committed), "{fields}");
    assert_eq!(fields["app"].as_str(), Some(v1.name.as_str()), "{fields}");
    eventually(PATIENCE, "v1 to serve again", || {
        v1.get("/").filter(|b| b.contains("version 1"))
    });
    assert_eq!(w.agent.committed_generation(), Some(committed));
    assert_eq!(w.agent.applied_generation(), Some(target));
    let events = w.hub.events(&w.agent.device_id).expect("hub events");
    assert!(events.iter().all(|e| e.1 != "RolledBack"), "{events:?}");

    w.proxy.restore();
    let line = eventually(PATIENCE, "the hub to receive the rollback", || {
        w.hub
            .events(&w.agent.device_id)
            .ok()?
            .into_iter()
            .find(|e| e.1 == "RolledBack")
            .map(|e| e.2)
    });
    assert!(line.contains(&v1.name), "{line}");
    // The failed generation is not retried: v1 keeps serving.
    std::thread::sleep(Duration::from_secs(3));
    assert!(phase_is(w, "RolledBack").is_some());
    assert!(v1.get("/").is_some_and(|b| b.contains("version 1")));
}

#[test]
fn a_v2_that_crashes_rolls_back_to_v1_while_cut_off_from_the_hub() -> anyhow::Result<()> {
    let w = World::start("rb-crash")?;
    let v1 = w.app("web");
    w.deploy_and_wait(std::slice::from_ref(&v1))?;
    let mut v2 = v1.clone();
    v2.version = "2".into();
    // Up for a moment (time to cut the link), then exit 3.
    v2.extra_env.push(("EXIT_AFTER_MS".into(), "3000".into()));
    rolls_back_offline(&w, &v1, &v2, "stable_secs = 20\ntrial_deadline_secs = 60\n");
    Ok(())
}

#[test]
fn a_v2_whose_health_never_passes_rolls_back_at_its_deadline_while_cut_off() -> anyhow::Result<()> {
    let w = World::start("rb-sick")?;
    let mut v1 = w.app("web");
    v1.health = true;
    w.deploy_and_wait(std::slice::from_ref(&v1))?;
    let mut v2 = v1.clone();
    v2.version = "2".into();
    v2.extra_env.push(("SICK".into(), "1".into()));
    rolls_back_offline(&w, &v1, &v2, "stable_secs = 2\ntrial_deadline_secs = 8\n");
    Ok(())
}

#[test]
fn an_agent_killed_during_the_trial_rolls_back_on_restart() -> anyhow::Result<()> {
    let mut w = World::start("rb-kill9")?;
    let v1 = w.app("web");
    let other = w.app("side");
    w.deploy_and_wait(&[v1.clone(), other.clone()])?;
    let committed = w.agent.committed_generation().expect("committed");
    let mut v2 = v1.clone();
    v2.version = "2".into();
    let mut other2 = other.clone();
    other2.version = "2".into();
    // A healthy v2 with a long trial: the kill lands inside it.
    w.hub.deploy_with(
        &w.agent.device_id,
        &[v2.clone(), other2.clone()],
        "stable_secs = 60\ntrial_deadline_secs = 120\n",
    )?;
    eventually(PATIENCE, "v2 to serve in its trial", || {
        v2.get("/").filter(|b| b.contains("version 2"))
    });
    eventually(PATIENCE, "the status to show the trial", || {
        phase_is(&w, "Trial")
    });
    w.agent.kill9();
    w.agent.start()?;
    let fields = eventually(PATIENCE, "the restarted agent to roll back", || {
        phase_is(&w, "RolledBack")
    });
    assert_eq!(fields["to"][1].as_u64(), Some(committed), "{fields}");
    // The whole release went back: no app is left on v2.
    for a in [&v1, &other] {
        eventually(PATIENCE, &format!("{} back on v1", a.name), || {
            a.get("/").filter(|b| b.contains("version 1"))
        });
    }
    Ok(())
}

/// Deploy `v2` (an image the device does not have) with the registry out of
/// the device's reach. The hub resolves v2's tag at apply, so it applies
/// while the device is cut off from the broker; the registry becomes
/// unreachable (iptables) before the device's link, and so v2, comes back.
/// Returns once the device accepted v2; dropping the cut restores the registry.
fn deploy_with_the_registry_cut(
    w: &World,
    v2: &outpost_e2e::AppDef,
    committed: u64,
) -> anyhow::Result<PortCut> {
    w.proxy.cut();
    eventually(PATIENCE, "the agent to notice the cut", || {
        (!w.agent.connected()?).then_some(())
    });
    w.hub.deploy(&w.agent.device_id, std::slice::from_ref(v2))?;
    let cut = PortCut::new(w.registry.port)?;
    w.proxy.restore();
    eventually(PATIENCE, "the device to accept v2", || {
        w.agent.applied_generation().filter(|g| *g > committed)
    });
    Ok(cut)
}

#[test]
fn download_then_kill_keeps_v1_serving_while_the_registry_is_unreachable() -> anyhow::Result<()> {
    let w = World::start("rb-dl")?;
    let v1 = w.app("web");
    w.deploy_and_wait(std::slice::from_ref(&v1))?;
    let committed = w.agent.committed_generation().expect("committed");
    // v2 is an image the device does not have (a layer of its own).
    let mut v2 = v1.clone();
    v2.version = "2".into();
    v2.image = w.registry.push_variant("v2", 64 * 1024)?;
    let cut = deploy_with_the_registry_cut(&w, &v2, committed)?;
    // For several seconds of failed pulls, v1 answers every request.
    let until = Instant::now() + Duration::from_secs(6);
    let mut answered = 0;
    while Instant::now() < until {
        let body = v1
            .get("/")
            .expect("v1 stopped answering during the download");
        assert!(body.contains("version 1"), "{body}");
        answered += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(phase_is(&w, "Downloading").is_some());
    let status = w.agent.status()?;
    let err = status["apps"][v1.name.as_str()]["last_error"]
        .as_str()
        .unwrap_or("");
    assert!(
        !err.is_empty(),
        "the failed download is not shown: {status}"
    );
    drop(cut);
    eventually(PATIENCE, "v2 to serve once the registry is back", || {
        v2.get("/").filter(|b| b.contains("version 2"))
    });
    eventually(PATIENCE, "v2 to commit", || {
        w.agent.committed_generation().filter(|g| *g > committed)
    });
    eprintln!("measured: {answered} requests answered by v1 during the outage, none failed");
    Ok(())
}

/// Digests of the images in the agent's store (`outpost-agent images --json`).
fn held_images(w: &World) -> Vec<String> {
    let out = w.agent.cli(&["images", "--json"]).unwrap_or_default();
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v["images"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["digest"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Delete-then-download, for devices short of storage: the old container
/// stops and its image is deleted before the new image is pulled. Shown with
/// the registry unreachable, so the order is visible: v1 is down and its
/// image gone while the pull fails; v2 comes once the registry is back.
#[test]
fn delete_then_download_deletes_the_old_image_before_it_pulls_the_new_one() -> anyhow::Result<()> {
    let w = World::start("rb-del")?;
    let v1 = w.app("web");
    w.deploy_and_wait(std::slice::from_ref(&v1))?;
    let committed = w.agent.committed_generation().expect("committed");
    let before = held_images(&w);
    assert!(!before.is_empty(), "v1's image is in the store");
    let mut v2 = v1.clone();
    v2.version = "2".into();
    v2.image = w.registry.push_variant("v2-del", 64 * 1024)?;
    v2.extra_toml
        .push("update = \"delete-then-download\"".into());
    let cut = deploy_with_the_registry_cut(&w, &v2, committed)?;
    eventually(PATIENCE, "v1's image to be deleted before the pull", || {
        let now = held_images(&w);
        before.iter().all(|d| !now.contains(d)).then_some(())
    });
    assert!(
        v1.get("/").is_none(),
        "v1 still serves after its image went"
    );
    let err = eventually(PATIENCE, "the failing pull to be shown", || {
        let status = w.agent.status().ok()?;
        let e = status["apps"][v1.name.as_str()]["last_error"]
            .as_str()?
            .to_string();
        (!e.is_empty()).then_some(e)
    });
    eprintln!("while the registry is cut: {err}");
    drop(cut);
    eventually(PATIENCE, "v2 to serve once the registry is back", || {
        v2.get("/").filter(|b| b.contains("version 2"))
    });
    eventually(PATIENCE, "v2 to commit", || {
        w.agent.committed_generation().filter(|g| *g > committed)
    });
    let after = held_images(&w);
    assert_eq!(after.len(), 1, "only v2's image is kept: {after:?}");
    assert!(!before.contains(&after[0]));
    Ok(())
}

#[test]
fn a_held_update_lock_defers_the_release_and_the_override_forces_it() -> anyhow::Result<()> {
    let w = World::start("rb-lock")?;
    let v1 = w.app("web");
    w.deploy_and_wait(std::slice::from_ref(&v1))?;
    let body = v1.get("/lock").expect("the app takes its lock");
    assert!(body.contains("locked"), "{body}");
    let mut v2 = v1.clone();
    v2.version = "2".into();
    w.hub
        .deploy(&w.agent.device_id, std::slice::from_ref(&v2))?;
    let fields = eventually(PATIENCE, "the release to wait for the lock", || {
        phase_is(&w, "WaitingForLock")
    });
    assert_eq!(fields["app"].as_str(), Some(v1.name.as_str()));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        v1.get("/").is_some_and(|b| b.contains("version 1")),
        "replaced while locked"
    );
    assert!(phase_is(&w, "WaitingForLock").is_some());
    v1.get("/unlock").expect("the app lets its lock go");
    eventually(PATIENCE, "v2 once the lock is released", || {
        v2.get("/").filter(|b| b.contains("version 2"))
    });
    eventually(PATIENCE, "v2 to commit", || phase_is(&w, "Committed"));

    // v2 holds the lock; v3 overrides it.
    v2.get("/lock").expect("v2 takes its lock");
    let mut v3 = v1.clone();
    v3.version = "3".into();
    v3.extra_toml.push("override_lock = true".into());
    w.hub
        .deploy(&w.agent.device_id, std::slice::from_ref(&v3))?;
    eventually(PATIENCE, "v3 to replace the locked v2", || {
        v3.get("/").filter(|b| b.contains("version 3"))
    });
    Ok(())
}

/// Benchmark (ignored in the suite): how long the app does not answer during
/// an update, per strategy, with a new image of ~32 MiB (random, incompressible) to pull each time.
/// Every version listens with `SO_REUSEPORT` (the sample's `$REUSEPORT`), so
/// that the hand-over can run old and new on the one host port.
/// `cargo nextest run -p outpost-e2e --test releases --run-ignored only --no-capture`
#[test]
#[ignore]
fn update_downtime_per_strategy() -> anyhow::Result<()> {
    let w = World::start("downtime")?;
    let mut app = w.app("web");
    app.extra_env.push(("REUSEPORT".into(), "1".into()));
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let strategies = [
        "download-then-kill",
        "kill-then-download",
        "delete-then-download",
        "hand-over",
    ];
    for (i, strategy) in strategies.iter().enumerate() {
        let version = (i + 2).to_string();
        let mut next = app.clone();
        next.version = version.clone();
        next.image = w.registry.push_variant(&format!("v{version}"), 32 << 20)?;
        next.extra_toml = vec![format!("update = \"{strategy}\"")];
        // The hand-over waits for the new copy to be ready: a real probe.
        next.health = *strategy == "hand-over";
        w.hub
            .deploy(&w.agent.device_id, std::slice::from_ref(&next))?;
        // Poll every 5 ms until only the new version answers (200 answers in
        // a row, 1 s: during a hand-over old and new answer in turn until the
        // old one is stopped); the longest run of failed requests is the
        // downtime.
        let start = Instant::now();
        let (mut longest, mut down_since) = (Duration::ZERO, None::<Instant>);
        let (mut new_in_a_row, mut first_new) = (0u32, None::<Duration>);
        let mut failed = 0u32;
        while new_in_a_row < 200 {
            match app.get("/") {
                Some(b) => {
                    if let Some(d) = down_since.take() {
                        longest = longest.max(d.elapsed());
                    }
                    if b.contains(&format!("version {version}")) {
                        first_new.get_or_insert_with(|| start.elapsed());
                        new_in_a_row += 1;
                    } else {
                        new_in_a_row = 0;
                    }
                }
                None => {
                    failed += 1;
                    new_in_a_row = 0;
                    down_since.get_or_insert_with(Instant::now);
                }
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{strategy}: v{version} never answered alone"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!(
            "measured: {strategy}: downtime {} ms, {failed} failed requests (apply -> new version answering {} ms)",
            longest.as_millis(),
            first_new.unwrap_or_default().as_millis()
        );
        eventually(PATIENCE, "the release to commit", || {
            w.agent
                .committed_generation()
                .filter(|g| Some(*g) >= w.agent.applied_generation())
        });
        app = next;
    }
    Ok(())
}

/// The deployment of `app` to every device labelled `fleet=<fleet>`, with a
/// `[rollout]` table when `rollout` is set.
fn fleet_deployment(fleet: &str, app: &AppDef, rollout: Option<&str>) -> String {
    let mut toml = format!(
        "name = \"{fleet}\"\nselector = {{ fleet = \"{fleet}\" }}\n\
         [release]\nstable_secs = 3\ntrial_deadline_secs = 60\n"
    );
    if let Some(r) = rollout {
        toml.push_str(&format!("[rollout]\n{r}"));
    }
    toml.push_str(&app.to_toml());
    toml
}

/// Every device's (applied, committed) generation, from its own status file.
fn generations(agents: &[Agent]) -> Vec<(Option<u64>, Option<u64>)> {
    agents
        .iter()
        .map(|a| (a.applied_generation(), a.committed_generation()))
        .collect()
}

/// Wait until every agent committed a generation above `floor[i]` and runs `app`.
fn wait_all_committed(agents: &[Agent], floor: &[u64], what: &str, app: &str) -> Vec<u64> {
    eventually(PATIENCE * 2, what, || {
        let gens = agents
            .iter()
            .zip(floor)
            .map(|(a, f)| {
                let c = a.committed_generation().filter(|c| c > f)?;
                (a.applied_generation() == Some(c) && a.app_pid(app).is_some()).then_some(c)
            })
            .collect::<Option<Vec<u64>>>()?;
        Some(gens)
    })
}

/// Five real devices (agents running real containers against the hub's
/// embedded broker and a real registry) and staged rollouts with a canary:
/// a broken release (its app exits at start) fails on the canary, which
/// rolls back on its own; the rollout pauses with the other four devices
/// untouched; abort gives the canary its previous release back as a new
/// generation. A good release then goes through every wave, and a SIGKILL of
/// the hub in the middle of it does not stop it.
#[test]
fn a_rollout_over_five_devices_pauses_after_a_broken_canary_and_a_good_one_completes_across_a_hub_crash(
) -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let image = registry.push_sample("v1")?;
    let mut hub = Hub::start(&registry)?;
    let fleet = unique("fleet");
    let mut agents = Vec::new();
    for i in 0..5 {
        let id = unique(&format!("ro{i}"));
        let mut a = Agent::init(&hub, &id, hub.mqtt_port, &registry)?;
        hub.cli(&[
            "device",
            "add",
            &id,
            "--public-key",
            &a.public_key,
            "--label",
            &format!("fleet={fleet}"),
        ])?;
        a.start()?;
        agents.push(a);
    }
    // Five copies of one app on one machine: each in its own network
    // namespace, so they do not fight over the port.
    let mut v1 = AppDef::hello("web", &image);
    v1.extra_toml.push("network = \"isolated\"".into());

    // v1 everywhere at once (no [rollout]).
    hub.apply_toml("v1.toml", &fleet_deployment(&fleet, &v1, None))?;
    let g1 = wait_all_committed(&agents, &[0; 5], "v1 committed on all five", &v1.name);
    let policy = "canary = 1\nwaves = [\"50%\", \"100%\"]\nmax_failure_ratio = 0.2\n";

    // v2 is broken: its app exits 300 ms after it starts, every time.
    let mut v2 = v1.clone();
    v2.version = "2".into();
    v2.extra_env.push(("EXIT_AFTER_MS".into(), "300".into()));
    let out = hub.apply_toml("v2.toml", &fleet_deployment(&fleet, &v2, Some(policy)))?;
    eprintln!("{out}");
    let paused = eventually(PATIENCE * 2, "the rollout to pause", || {
        let v = hub.rollout(&fleet).ok()?;
        v["phase"]["Paused"]["reason"]["FailureRatio"]
            .is_object()
            .then_some(v)
    });
    eprintln!("{}", hub.cli(&["rollout", "status", &fleet])?);
    assert_eq!(paused["tally"]["failed"], 1, "{paused}");
    assert_eq!(paused["tally"]["untargeted"], 4, "{paused}");
    let failed = paused["failed"].as_array().cloned().unwrap_or_default();
    assert_eq!(failed.len(), 1, "{paused}");
    assert_eq!(failed[0]["outcome"], "rolled back", "{paused}");
    let canary = failed[0]["device"].as_str().unwrap_or_default().to_string();
    let c = agents
        .iter()
        .position(|a| a.device_id == canary)
        .expect("the canary is one of the five");
    // The canary rolled back on its own and runs v1 again; the others never
    // heard of v2, and do not while the rollout stays paused.
    let (name, fields) = agents[c].release_phase().expect("canary release state");
    assert_eq!(name, "RolledBack", "{fields}");
    assert_eq!(fields["to"][1].as_u64(), Some(g1[c]), "{fields}");
    assert_eq!(agents[c].committed_generation(), Some(g1[c]));
    std::thread::sleep(Duration::from_secs(3));
    for (i, (applied, committed)) in generations(&agents).into_iter().enumerate() {
        if i != c {
            assert_eq!(
                (applied, committed),
                (Some(g1[i]), Some(g1[i])),
                "device {i}"
            );
        }
    }
    let still = hub.rollout(&fleet)?;
    assert_eq!(still["tally"]["untargeted"], 4, "{still}");

    // Abort: the canary gets v1 back as a newer generation and commits it.
    hub.cli(&["rollout", "abort", &fleet])?;
    let mut floor = g1.clone();
    floor[c] = agents[c].applied_generation().unwrap_or(0);
    eventually(PATIENCE, "the canary to commit v1 re-issued", || {
        agents[c].committed_generation().filter(|g| *g > floor[c])
    });
    let base: Vec<u64> = generations(&agents)
        .into_iter()
        .map(|(a, _)| a.unwrap_or(0))
        .collect();

    // v3 is good: canary, then 50 %, then everyone, with the hub killed
    // once the first wave after the canary is under way.
    let mut v3 = v1.clone();
    v3.version = "3".into();
    hub.apply_toml("v3.toml", &fleet_deployment(&fleet, &v3, Some(policy)))?;
    eventually(PATIENCE * 2, "wave 1 to be targeted", || {
        let v = hub.rollout(&fleet).ok()?;
        let targeted = v["waves"][1]["targeted"].as_u64()?;
        (targeted > 0 && v["phase"] == "Running").then_some(())
    });
    hub.kill9();
    std::thread::sleep(Duration::from_secs(1));
    hub.serve()?;
    let done = eventually(PATIENCE * 3, "the rollout to complete", || {
        let v = hub.rollout(&fleet).ok()?;
        (v["phase"] == "Completed").then_some(v)
    });
    eprintln!("{}", hub.cli(&["rollout", "status", &fleet])?);
    assert_eq!(done["tally"]["committed"], 5, "{done}");
    assert_eq!(done["tally"]["failed"], 0, "{done}");
    let g3 = wait_all_committed(&agents, &base, "v3 committed on all five", &v3.name);
    eprintln!("generations: v1 {g1:?}, after abort {base:?}, v3 {g3:?}");
    Ok(())
}
