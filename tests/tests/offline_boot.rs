//! Booting without the hub, from the persisted manifest alone. Every reboot here
//! is a faithful one (`Agent::power_cut`): SIGKILL of the agent and of every
//! container process, overlays and the tmpfs run dir gone, cgroups gone, the data
//! dir kept; the agent then boots in a fresh network namespace with only
//! loopback. No Outpost command cleans up in between.

use outpost_e2e::{eventually, pid_alive, World, PATIENCE};

/// SIGTERM leaves apps running; a power cut with the hub down brings them back
/// from the persisted manifest.
#[test]
fn agent_restarted_while_offline_reconciles_from_persisted_manifest() -> anyhow::Result<()> {
    let mut w = World::start("reboot")?;
    let app = w.app("persisted");
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let generation = w.agent.applied_generation().unwrap();
    let pid = eventually(PATIENCE, "app pid", || w.agent.app_pid(&app.name));

    w.agent.stop();
    assert!(pid_alive(pid), "graceful shutdown stopped the app");
    assert!(app.get("/").is_some());

    w.hub.stop();
    w.agent.power_cut()?;
    assert!(!pid_alive(pid), "the power cut left the app running");
    assert!(app.get("/").is_none());
    w.agent.start_without_network()?;
    eventually(PATIENCE, "the app to come back offline", || {
        w.agent.http_get_in_netns(app.port, "/")
    });
    let st = w.agent.status()?;
    assert_eq!(st["applied"][1].as_u64(), Some(generation));
    assert_eq!(st["connected"].as_bool(), Some(false));
    assert_eq!(w.agent.volume_starts(&app.name), 2);
    Ok(())
}

/// Cold boot in a fresh network namespace (loopback only, no route, so no DNS
/// either), broker configured by a host name: every app of the persisted
/// manifest comes up without any network round-trip, and again after a second
/// power cut (the leftovers of the first boot are reclaimed too).
#[test]
fn cold_boot_without_network_or_dns_brings_up_every_app() -> anyhow::Result<()> {
    let mut w = World::start("coldboot")?;
    let apps = [w.app("one"), w.app("two")];
    w.deploy_and_wait(&apps)?;
    w.hub.stop();
    w.agent
        .set_broker("mqtt://outpost-hub.example.invalid:1883")?;
    for boot in 2..=3 {
        w.agent.reboot_offline()?;
        for a in &apps {
            let pid = eventually(
                PATIENCE,
                &format!("{} to run (boot {boot})", a.name),
                || w.agent.app_pid(&a.name),
            );
            assert!(pid_alive(pid));
            eventually(
                PATIENCE,
                &format!("{} to answer (boot {boot})", a.name),
                || w.agent.http_get_in_netns(a.port, "/"),
            );
            assert_eq!(w.agent.volume_starts(&a.name), boot);
        }
        assert!(w.agent.is_running());
        assert_eq!(w.agent.connected(), Some(false));
    }
    Ok(())
}

/// balenaOS: the agent runs in a container of its own with `pid: host` and a
/// tmpfs run dir. When that container restarts, the agent dies and its run dir
/// (libcontainer's state) is gone, but the apps' processes live on and its
/// overlay mounts leave with its mount namespace. The new agent cannot manage
/// the old processes through libcontainer any more: it must reclaim them and
/// bring every app back, exactly once.
#[test]
fn balena_agent_container_restart_with_a_fresh_tmpfs_brings_every_app_back_once(
) -> anyhow::Result<()> {
    let mut w = World::start("balena")?;
    let app = w.app("svc");
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let old = eventually(PATIENCE, "app pid", || w.agent.app_pid(&app.name));

    w.agent.kill9();
    w.agent.lose_run_dir_and_mounts()?;
    assert!(
        pid_alive(old),
        "the app should outlive its agent's container"
    );
    w.agent.start()?;
    let new = eventually(PATIENCE, "a new app process", || {
        w.agent.app_pid(&app.name).filter(|p| *p != old)
    });
    eventually(PATIENCE, "the old process to be gone", || {
        (!pid_alive(old)).then_some(())
    });
    eventually(PATIENCE, "the app to answer", || app.get("/"));
    assert!(pid_alive(new));
    assert_eq!(w.agent.volume_starts(&app.name), 2);
    Ok(())
}
