//! Releases through the reconcile loop on the fake device: trial, commit,
//! rollback of the whole release, an interrupted trial, download-then-kill
//! and hand-over. The real thing runs in tests/tests/releases.rs.

use super::*;
use outpost_protocol::{HealthCheck, Probe, ReleasePhase, ReleasePolicy, UpdateStrategy};

const STABLE: ReleasePolicy = ReleasePolicy {
    stable_secs: 5,
    trial_deadline_secs: 30,
};

fn release(generation: u64, apps: Vec<AppSpec>) -> Arc<Manifest> {
    let mut m = (*manifest(generation, apps)).clone();
    m.release = STABLE;
    Arc::new(m)
}

fn phase(r: &Rig) -> ReleasePhase {
    r.reporter.view().release.expect("a release state").phase
}

fn images_of(r: &Rig) -> Vec<String> {
    r.world
        .containers
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, (_, s))| s.is_running())
        .map(|(n, _)| n.clone())
        .collect()
}

/// Pass, advance `secs` one second at a time, pass again each second.
async fn run_for(r: &mut Rig, secs: u64) {
    for _ in 0..secs {
        r.rec.pass().await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    r.rec.pass().await;
}

async fn commit_v1(r: &mut Rig) -> String {
    r.desired_tx
        .send_replace(Some(release(1, vec![app("web", 1), app("db", 1)])));
    run_for(r, 6).await;
    assert_eq!(phase(r), ReleasePhase::Committed);
    container_name(&app("web", 1))
}

#[tokio::test(start_paused = true)]
async fn a_release_commits_after_stable_secs_and_a_crashing_one_rolls_back_whole() {
    let mut r = rig();
    let v1_web = commit_v1(&mut r).await;
    let v1_db = container_name(&app("db", 1));
    assert!(images_of(&r).contains(&v1_web));

    // v2 changes both apps; its web exits at start.
    r.desired_tx
        .send_replace(Some(release(2, vec![app("web", 2), app("db", 2)])));
    r.rec.pass().await;
    assert_eq!(phase(&r), ReleasePhase::Trial);
    let v2_web = container_name(&app("web", 2));
    crash(&r.world, &v2_web, 1);
    r.rec.pass().await;
    let back = ReleasePhase::RolledBack {
        to: (1, 1),
        app: "web".into(),
        reason: "exited with code 1".into(),
    };
    assert_eq!(phase(&r), back);
    // The whole release went back: db too, though it was fine.
    run_for(&mut r, 1).await;
    let mut up = images_of(&r);
    up.sort();
    let mut want = vec![v1_web.clone(), v1_db];
    want.sort();
    assert_eq!(up, want);
    // Not retried: more passes leave v1 alone.
    run_for(&mut r, 40).await;
    assert_eq!(phase(&r), back);
    assert!(images_of(&r).contains(&v1_web));
    let rec: release::Record =
        serde_json::from_slice(&r.store.load().unwrap().release.unwrap()).unwrap();
    assert_eq!(rec.failed.map(|f| f.id), Some((1, 2)));
    // A newer release is tried.
    r.desired_tx
        .send_replace(Some(release(3, vec![app("web", 3), app("db", 3)])));
    run_for(&mut r, 6).await;
    assert_eq!(phase(&r), ReleasePhase::Committed);
    assert!(images_of(&r).contains(&container_name(&app("web", 3))));
}

#[tokio::test(start_paused = true)]
async fn a_health_check_that_never_passes_rolls_back_at_the_deadline() {
    let mut r = rig();
    commit_v1(&mut r).await;
    let mut sick = app("web", 2);
    sick.health = Some(HealthCheck {
        probe: Probe::Tcp { port: 9 },
        interval_secs: 1,
        timeout_secs: 1,
        retries: 1,
    });
    r.desired_tx
        .send_replace(Some(release(2, vec![sick, app("db", 1)])));
    run_for(&mut r, 29).await;
    assert_eq!(
        phase(&r),
        ReleasePhase::Trial,
        "no verdict is not a failure yet"
    );
    run_for(&mut r, 1).await;
    match phase(&r) {
        ReleasePhase::RolledBack { to, app, reason } => {
            assert_eq!((to, app.as_str()), ((1, 1), "web"));
            assert!(reason.contains("30 s trial deadline"), "{reason}");
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_agent_restarted_during_the_trial_rolls_back_and_one_after_commit_keeps_it() {
    let mut r = rig();
    commit_v1(&mut r).await;
    r.desired_tx
        .send_replace(Some(release(2, vec![app("web", 2), app("db", 2)])));
    r.rec.pass().await;
    assert_eq!(phase(&r), ReleasePhase::Trial);
    // kill -9: the containers and the record stay; the process is new.
    let saved = r.store.load().unwrap().release;
    let world = r.world.clone();
    let mut r2 = rig_on(
        Policy::default(),
        Arc::new(SystemClock::new()),
        world.clone(),
        saved,
    );
    r2.desired_tx
        .send_replace(Some(release(2, vec![app("web", 2), app("db", 2)])));
    run_for(&mut r2, 2).await;
    assert!(matches!(
        phase(&r2),
        ReleasePhase::RolledBack { ref reason, .. } if reason == release::INTERRUPTED
    ));
    let up = images_of(&r2);
    assert!(up.contains(&container_name(&app("web", 1))), "{up:?}");
    assert!(!up.contains(&container_name(&app("web", 2))), "{up:?}");

    // After a commit, a restart keeps the release.
    r2.desired_tx
        .send_replace(Some(release(3, vec![app("web", 3)])));
    run_for(&mut r2, 6).await;
    assert_eq!(phase(&r2), ReleasePhase::Committed);
    let saved = r2.store.load().unwrap().release;
    let mut r3 = rig_on(
        Policy::default(),
        Arc::new(SystemClock::new()),
        world,
        saved,
    );
    r3.desired_tx
        .send_replace(Some(release(3, vec![app("web", 3)])));
    run_for(&mut r3, 1).await;
    assert_eq!(phase(&r3), ReleasePhase::Committed);
    assert_eq!(images_of(&r3), vec![container_name(&app("web", 3))]);
}

#[tokio::test(start_paused = true)]
async fn download_then_kill_keeps_the_old_app_while_the_registry_is_down() {
    let mut r = rig();
    let v1 = commit_v1(&mut r).await;
    *r.world.fail_pulls.lock().unwrap() = true;
    r.desired_tx
        .send_replace(Some(release(2, vec![app("web", 2), app("db", 1)])));
    run_for(&mut r, 20).await;
    assert_eq!(phase(&r), ReleasePhase::Downloading);
    assert!(images_of(&r).contains(&v1), "v1 serves throughout");
    let web = &r.reporter.view().apps["web"];
    assert!(web.state.is_running());
    assert!(web
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("registry unreachable")));
    *r.world.fail_pulls.lock().unwrap() = false;
    run_for(&mut r, 70).await;
    assert_eq!(phase(&r), ReleasePhase::Committed);
    assert!(images_of(&r).contains(&container_name(&app("web", 2))));
    assert!(!images_of(&r).contains(&v1));
}

#[tokio::test(start_paused = true)]
async fn kill_then_download_stops_the_old_app_before_pulling() {
    let mut r = rig();
    let v1 = commit_v1(&mut r).await;
    *r.world.fail_pulls.lock().unwrap() = true;
    let mut v2 = app("web", 2);
    v2.update = UpdateStrategy::KillThenDownload;
    r.desired_tx
        .send_replace(Some(release(2, vec![v2, app("db", 1)])));
    r.rec.pass().await;
    assert_eq!(phase(&r), ReleasePhase::Trial);
    assert!(!images_of(&r).contains(&v1), "stopped first");
    // The registry stays down: the trial's deadline brings v1 back (its
    // image was kept).
    run_for(&mut r, 31).await;
    assert!(matches!(phase(&r), ReleasePhase::RolledBack { .. }));
    assert!(images_of(&r).contains(&v1));
}

#[tokio::test(start_paused = true)]
async fn hand_over_stops_the_old_container_after_its_timeout() {
    let mut r = rig();
    let v1 = commit_v1(&mut r).await;
    let mut v2 = app("web", 2);
    v2.update = UpdateStrategy::HandOver;
    v2.handover_timeout_secs = 3;
    v2.health = Some(HealthCheck {
        probe: Probe::Tcp { port: 9 },
        interval_secs: 1,
        timeout_secs: 1,
        retries: 1,
    });
    r.desired_tx
        .send_replace(Some(release(2, vec![v2.clone(), app("db", 1)])));
    run_for(&mut r, 2).await;
    let up = images_of(&r);
    assert!(
        up.contains(&v1) && up.contains(&container_name(&v2)),
        "both run: {up:?}"
    );
    run_for(&mut r, 2).await;
    let up = images_of(&r);
    assert!(
        !up.contains(&v1) && up.contains(&container_name(&v2)),
        "{up:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_lock_defers_the_release_until_released_or_overridden() {
    let mut r = rig();
    let v1 = commit_v1(&mut r).await;
    r.world.locked.lock().unwrap().insert("web".into());
    r.desired_tx
        .send_replace(Some(release(2, vec![app("web", 2), app("db", 1)])));
    run_for(&mut r, 10).await;
    assert_eq!(
        phase(&r),
        ReleasePhase::WaitingForLock { app: "web".into() }
    );
    assert!(images_of(&r).contains(&v1), "not replaced while locked");
    assert!(
        r.world
            .images
            .lock()
            .unwrap()
            .contains(&app("web", 2).image.digest),
        "downloaded meanwhile"
    );
    r.world.locked.lock().unwrap().clear();
    run_for(&mut r, 6).await;
    assert_eq!(phase(&r), ReleasePhase::Committed);
    assert!(images_of(&r).contains(&container_name(&app("web", 2))));

    // The override replaces a locked app at once.
    r.world.locked.lock().unwrap().insert("web".into());
    let mut forced = app("web", 3);
    forced.override_lock = true;
    r.desired_tx
        .send_replace(Some(release(3, vec![forced.clone(), app("db", 1)])));
    r.rec.pass().await;
    assert_eq!(phase(&r), ReleasePhase::Trial);
    assert!(images_of(&r).contains(&container_name(&forced)));
}
