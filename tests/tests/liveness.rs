//! Liveness on a real container: an app that was ready and then fails its
//! health check is restarted (new process, counted, reported to the hub) and
//! becomes ready again. (An app that never becomes ready is no longer left
//! alone forever: its release does not pass its trial and is rolled back,
//! which tests/tests/releases.rs shows; liveness never restarts it, which the
//! table tests of edge-agent/src/reconcile/liveness.rs show.)

use outpost_e2e::{eventually, World, PATIENCE};

#[test]
fn agent_restarts_an_app_whose_health_fails_after_it_was_ready() -> anyhow::Result<()> {
    let w = World::start("liveness")?;
    let mut app = w.app("sickly");
    app.health = true;
    // Committed first: a health failure during the release's trial rolls the
    // release back instead (tests/tests/releases.rs).
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let ready =
        |name: &str| -> Option<bool> { w.agent.status().ok()?["apps"][name]["ready"].as_bool() };
    eventually(PATIENCE, "the app to be ready", || {
        ready(&app.name)?.then_some(())
    });
    let pid = eventually(PATIENCE, "app pid", || w.agent.app_pid(&app.name));

    // The app's own health endpoint fails from now on (this process only).
    app.get("/sick").expect("the app answers /sick");
    let t = std::time::Instant::now();
    let error = eventually(PATIENCE, "the health failure in the status", || {
        let st = w.agent.status().ok()?;
        let e = st["apps"][&app.name]["last_error"].as_str()?.to_string();
        e.contains("health check failed").then_some(e)
    });
    assert!(
        error.contains("after the app was ready") && error.contains("503"),
        "{error}"
    );
    let new_pid = eventually(PATIENCE, "the agent to restart the unhealthy app", || {
        w.agent.app_pid(&app.name).filter(|p| *p != pid)
    });
    eventually(PATIENCE, "the new container to be ready", || {
        let st = w.agent.status().ok()?;
        let a = &st["apps"][&app.name];
        (a["ready"].as_bool()? && a["state"]["Running"]["pid"].as_u64()? == new_pid).then_some(())
    });
    eprintln!(
        "measured: /sick -> restarted and ready again: {:?}",
        t.elapsed()
    );
    let st = w.agent.status()?;
    assert_eq!(st["apps"][&app.name]["restarts"].as_u64(), Some(1));
    eventually(PATIENCE, "the reason to clear once ready again", || {
        w.agent.status().ok()?["apps"][&app.name]["last_error"]
            .is_null()
            .then_some(())
    });
    assert_eq!(w.agent.volume_starts(&app.name), 2, "one restart, no more");
    assert_eq!(
        app.get("/health").as_deref(),
        Some("ok\n"),
        "the new process is healthy"
    );

    // Reported: the hub has the health restart, then the usual stop, start
    // and restart events of this app, in that order.
    let events = eventually(PATIENCE, "the health restart's events at the hub", || {
        let ev = w.hub.events(&w.agent.device_id).ok()?;
        ev.iter()
            .any(|e| e.1 == "AppRestarted" && e.2.contains(&app.name))
            .then_some(ev)
    });
    let mine: Vec<&(u64, String, String)> = events
        .iter()
        .filter(|e| e.2.contains(&format!("\"{}\"", app.name)))
        .collect();
    let pos = |k: &str| mine.iter().position(|e| e.1 == k);
    let unhealthy = pos("AppUnhealthyRestarted").expect("AppUnhealthyRestarted missing");
    let line = &mine[unhealthy].2;
    assert!(
        line.contains("\"restarts\":1") && line.contains("503"),
        "{line}"
    );
    let after: Vec<&str> = mine[unhealthy..].iter().map(|e| e.1.as_str()).collect();
    let at = |k: &str| after.iter().position(|x| *x == k);
    let (stopped, started, restarted) = (
        at("AppStopped").expect("AppStopped missing"),
        at("AppStarted").expect("AppStarted missing"),
        at("AppRestarted").expect("AppRestarted missing"),
    );
    assert!(stopped < started && started < restarted, "{after:?}");
    assert!(mine
        .iter()
        .any(|e| e.1 == "AppStarted" && e.2.contains(&new_pid.to_string())));
    Ok(())
}
