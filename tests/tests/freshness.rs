//! Freshness (docs/security.md): the hub signs a heartbeat, manifests expire,
//! the device keeps a trusted-time floor and says when the hub has gone
//! silent. Faults as the field has them: the hub's machine stopped and the
//! device power-cut into a network namespace with loopback only; a broker
//! whose ACL withholds the heartbeat topic (Mosquitto, configured by the hub
//! and then edited). The expired-manifest replay is in attacks.rs.

use outpost_e2e::PATIENCE;
use outpost_e2e::{eventually, pid_alive, unique, wall_secs, Agent, AppDef, Hub, Registry, World};

/// A device that heard the hub (heartbeats verified, not silent) loses it,
/// says so, outlives its manifest's expiry offline and comes back from a
/// power cut running the expired manifest: expiry only stops a *new*
/// manifest from being installed.
#[test]
fn a_device_offline_past_its_manifests_expiry_says_the_hub_is_silent_and_keeps_its_app_through_a_power_cut(
) -> anyhow::Result<()> {
    let mut w = World::start("expiry")?;
    // Heartbeat every second; manifests valid 20 s (renewed every 10 s).
    const VALID: u64 = 20;
    w.hub.stop();
    w.hub.set_freshness(1, VALID)?;
    w.hub.serve()?;
    w.agent.stop();
    w.agent.set_setting("hub_silent_after_secs", "4")?;
    w.agent.start()?;
    let app = w.app("fresh");
    w.deploy_and_wait(std::slice::from_ref(&app))?;

    // Online: heartbeats arrive and verify; the hub is not silent, on either side.
    eventually(
        PATIENCE,
        "a verified heartbeat in the device status",
        || {
            let st = w.agent.status().ok()?;
            (st["last_heartbeat"].as_u64().is_some() && st["hub_silent_secs"].is_null())
                .then_some(())
        },
    );
    eventually(PATIENCE, "the hub to show the device hears it", || {
        let d = w.hub.device(&w.agent.device_id).ok()?;
        (d["status"]["last_heartbeat"].as_u64().is_some()
            && d["status"]["hub_silent_secs"].is_null())
        .then_some(())
    });
    // A renewal (same apps, new generation) commits without a trial and
    // without touching the app.
    let pid = eventually(PATIENCE, "app pid", || w.agent.app_pid(&app.name));
    let first = w.agent.applied_generation().unwrap_or(0);
    eventually(PATIENCE, "a renewed manifest to commit", || {
        let c = w.agent.committed_generation()?;
        (c > first).then_some(())
    });
    assert_eq!(
        w.agent.app_pid(&app.name),
        Some(pid),
        "a renewal restarted the app"
    );

    // The hub goes away: within the threshold the device reports it silent.
    w.hub.stop();
    let st = eventually(PATIENCE, "the device to call the hub silent", || {
        let st = w.agent.status().ok()?;
        (st["hub_silent_secs"].as_u64()? >= 4).then_some(st)
    });
    let floor = st["time_floor"].as_u64().expect("a time floor");
    let generation = w.agent.applied_generation().expect("an applied generation");
    // Past the expiry of anything the hub signed (expiry <= issued + VALID <= floor + VALID).
    eventually(PATIENCE, "the persisted manifest to expire", || {
        (wall_secs() > floor + VALID + 1).then_some(())
    });

    w.agent.power_cut()?;
    assert!(!pid_alive(pid), "the power cut left the app running");
    w.agent.start_without_network()?;
    eventually(
        PATIENCE,
        "the expired manifest's app to come back offline",
        || w.agent.http_get_in_netns(app.port, "/"),
    );
    let st = w.agent.status()?;
    assert_eq!(st["applied"][1].as_u64(), Some(generation));
    assert_eq!(st["rejected"]["expired"].as_u64(), Some(0));
    eventually(
        PATIENCE,
        "the rebooted device to call the hub silent",
        || {
            let st = w.agent.status().ok()?;
            (st["hub_silent_secs"].as_u64()? > VALID).then_some(())
        },
    );
    let text = w.agent.cli(&["status"])?;
    assert!(text.contains("hub: SILENT for"), "{text}");
    Ok(())
}

/// A broker that delivers manifests but withholds the heartbeat (its ACL no
/// longer grants the topic): the device cannot tell the hub is alive, says
/// "hub silent", and the hub shows the device's verdict.
#[test]
fn a_broker_withholding_the_heartbeat_shows_the_hub_silent_on_the_device_and_the_hub(
) -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let image = registry.push_sample("v1")?;
    let (mut hub, _mosquitto, ca) = Hub::start_with_locked_mosquitto_acl(&registry, |acl| {
        assert!(acl.contains("pattern read outpost/v1/heartbeat\n"), "{acl}");
        acl.replace("pattern read outpost/v1/heartbeat\n", "")
    })?;
    hub.stop();
    hub.set_freshness(1, 3_600)?;
    hub.serve()?;
    let device = unique("withheld");
    let url = format!("mqtts://127.0.0.1:{}", hub.mqtt_port);
    let mut agent = Agent::init_with(&hub, &device, &url, Some(&ca), &registry)?;
    let cert = agent.dir.path().join("broker-cert.pem");
    hub.add_device_with_cert(&device, &agent.public_key, &cert)?;
    agent.provision_broker_cert(&cert)?;
    agent.set_setting("hub_silent_after_secs", "3")?;
    agent.start()?;
    let app = AppDef::hello(&unique("withheld-app"), &image);
    hub.deploy(&device, std::slice::from_ref(&app))?;
    // Manifests still flow: the app runs.
    eventually(PATIENCE, "the app to answer", || app.get("/"));

    let st = eventually(PATIENCE, "the device to call the hub silent", || {
        let st = agent.status().ok()?;
        (st["hub_silent_secs"].as_u64()? >= 3).then_some(st)
    });
    assert!(st["last_heartbeat"].is_null(), "{st}");
    assert_eq!(st["connected"].as_bool(), Some(true));
    let text = agent.cli(&["status"])?;
    assert!(text.contains("hub: SILENT for"), "{text}");

    eventually(PATIENCE, "the hub to show the device's verdict", || {
        let d = hub.device(&device).ok()?;
        d["status"]["hub_silent_secs"].as_u64().map(|_| ())
    });
    let text = hub.cli(&["status", &device])?;
    assert!(text.contains("SILENT for the device"), "{text}");
    Ok(())
}
