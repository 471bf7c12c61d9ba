//! Apply on the hub → the agent pulls, runs, and the hub sees it.

use outpost_e2e::{eventually, World, PATIENCE};

#[test]
fn applied_deployment_runs_and_hub_sees_generation_and_running_app() -> anyhow::Result<()> {
    let w = World::start("deploy")?;
    let app = w.app("hello");
    let t = std::time::Instant::now();
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    eprintln!(
        "measured: apply -> app answering (pull + create + start): {:?}",
        t.elapsed()
    );
    let generation = w.agent.applied_generation().unwrap();
    let view = eventually(
        PATIENCE,
        "the hub to show the app running at the applied generation",
        || {
            let d = w.hub.device(&w.agent.device_id).ok()?;
            let applied = d["applied"]["generation"].as_u64()?;
            let running = d["status"]["apps"]
                .as_array()?
                .iter()
                .any(|a| a["name"] == app.name.as_str() && a["state"]["Running"]["pid"].is_u64());
            (applied == generation && running).then_some(d)
        },
    );
    assert_eq!(view["desired"]["generation"].as_u64(), Some(generation));
    Ok(())
}
