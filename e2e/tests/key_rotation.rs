//! Rotating the hub's signing key (`outpost-hub keys rotate`): a running agent
//! adopts the new root-signed key set and the manifest re-signed under the new
//! epoch, without being re-provisioned, and its app keeps running untouched.

use outpost_e2e::{wait_for, World};

#[test]
fn a_rotated_signing_key_reaches_the_agent_without_reprovisioning() -> anyhow::Result<()> {
    let mut w = World::start("rotate")?;
    let app = w.app("hello");
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    // The agent's local status file trails the app answering by a moment.
    let pid = wait_for("app pid", || w.agent.app_pid(&app.name))?;

    let t = std::time::Instant::now();
    w.hub.stop();
    let out = w.hub.cli(&["keys", "rotate"])?;
    assert!(out.contains("is now 2"), "{out}");
    w.hub.serve()?;

    let status = wait_for("the agent to apply its manifest under epoch 2", || {
        let st = w.agent.status().ok()?;
        (st["applied"][0].as_u64()? == 2).then_some(st)
    })?;
    eprintln!(
        "measured: hub stop, key rotation, restart -> agent applied epoch 2: {:?}",
        t.elapsed()
    );
    assert_eq!(status["applied"][1].as_u64(), Some(1), "{status}");
    wait_for("the hub to see epoch 2 applied", || {
        let d = w.hub.device(&w.agent.device_id).ok()?;
        (d["applied"]["epoch"].as_u64()? == 2).then_some(())
    })?;
    // Same desired apps: nothing restarted, the app still answers.
    assert_eq!(w.agent.app_pid(&app.name), Some(pid));
    assert!(app.get("/").is_some(), "app stopped answering");
    Ok(())
}
