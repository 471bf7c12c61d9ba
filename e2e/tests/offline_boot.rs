//! Starting without the hub: from the persisted manifest alone.

use outpost_e2e::{pid_alive, wait_for, World};

/// SIGTERM leaves apps running; a "reboot" (containers gone) with the broker down
/// brings them back from the persisted manifest.
#[test]
fn agent_restarted_while_offline_reconciles_from_persisted_manifest() -> anyhow::Result<()> {
    let mut w = World::start("reboot")?;
    let app = w.app("persisted");
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let generation = w.agent.applied_generation().unwrap();
    let pid = wait_for("app pid", || w.agent.app_pid(&app.name))?;

    w.agent.stop();
    assert!(pid_alive(pid), "graceful shutdown stopped the app");
    assert!(app.get("/").is_some());

    // Reboot: containers are gone and the hub (with its broker) is down.
    w.agent.stop_all()?;
    assert!(app.get("/").is_none());
    w.hub.stop();
    w.agent.start()?;
    wait_for("the app to come back offline", || app.get("/"))?;
    let st = w.agent.status()?;
    assert_eq!(st["applied"][1].as_u64(), Some(generation));
    assert_eq!(st["connected"].as_bool(), Some(false));
    assert_eq!(w.agent.volume_starts(&app.name), 2);
    Ok(())
}

/// Cold boot in an empty network namespace (no route, loopback down, so no DNS
/// either), broker configured by a host name: every app of the persisted manifest
/// comes up without any network round-trip.
#[test]
fn cold_boot_without_network_or_dns_brings_up_every_app() -> anyhow::Result<()> {
    let mut w = World::start("coldboot")?;
    let apps = [w.app("one"), w.app("two")];
    w.deploy_and_wait(&apps)?;
    w.agent.stop();
    w.agent.stop_all()?;
    w.hub.stop();
    w.agent
        .set_broker("mqtt://outpost-hub.example.invalid:1883")?;
    w.agent.start_without_network()?;
    for a in &apps {
        let pid = wait_for(&format!("{} to run", a.name), || w.agent.app_pid(&a.name))?;
        assert!(pid_alive(pid));
        wait_for(&format!("{} to record its start", a.name), || {
            (w.agent.volume_starts(&a.name) == 2).then_some(())
        })?;
    }
    assert!(w.agent.is_running());
    assert_eq!(w.agent.connected(), Some(false));
    Ok(())
}
