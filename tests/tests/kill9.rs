//! SIGKILL the agent: apps keep running; the restarted agent re-adopts them.

use outpost_e2e::{eventually, pid_alive, World, PATIENCE};

#[test]
fn agent_killed_with_sigkill_leaves_apps_running_and_readopts_them() -> anyhow::Result<()> {
    let mut w = World::start("kill9")?;
    let app = w.app("survivor");
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let pid = eventually(PATIENCE, "app pid", || w.agent.app_pid(&app.name));
    let starts = app.get("/count").unwrap();

    w.agent.kill9();
    assert!(pid_alive(pid));
    assert!(
        app.get("/").is_some(),
        "app stopped answering with the agent dead"
    );

    w.agent.start()?;
    // Re-adopted: the same pid is reported running by the new agent process...
    eventually(
        PATIENCE,
        "the restarted agent to report the adopted app",
        || {
            let st = w.agent.status().ok()?;
            let running = st["apps"][&app.name]["state"]["Running"]["pid"].as_u64()?;
            (running == pid && st["agent_running"].is_null()).then_some(())
        },
    );
    // ...after a few reconcile passes nothing was started twice.
    let containers = std::fs::read_dir(w.agent.dir.path().join("run/containers"))?.count();
    assert_eq!(containers, 1, "duplicate containers");
    assert_eq!(
        app.get("/count").unwrap(),
        starts,
        "the app was started again"
    );
    assert_eq!(w.agent.app_pid(&app.name), Some(pid));
    Ok(())
}
