//! Rotating the hub's signing key (`outpost-hub keys rotate`): a running agent
//! adopts the new root-signed key set and the manifest re-signed under the new
//! epoch, without being re-provisioned, and its app keeps running untouched.

use outpost_e2e::{eventually, mqtt, World, PATIENCE};

#[test]
fn a_rotated_signing_key_reaches_the_agent_without_reprovisioning() -> anyhow::Result<()> {
    let mut w = World::start("rotate")?;
    let app = w.app("hello");
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    // The agent's local status file trails the app answering by a moment.
    let pid = eventually(PATIENCE, "app pid", || w.agent.app_pid(&app.name));

    let t = std::time::Instant::now();
    w.hub.stop();
    let out = w.hub.cli(&["keys", "rotate"])?;
    assert!(out.contains("is now 2"), "{out}");
    w.hub.serve()?;

    let status = eventually(
        PATIENCE,
        "the agent to apply its manifest under epoch 2",
        || {
            let st = w.agent.status().ok()?;
            (st["applied"][0].as_u64()? == 2).then_some(st)
        },
    );
    eprintln!(
        "measured: hub stop, key rotation, restart -> agent applied epoch 2: {:?}",
        t.elapsed()
    );
    assert_eq!(status["applied"][1].as_u64(), Some(1), "{status}");
    eventually(PATIENCE, "the hub to see epoch 2 applied", || {
        let d = w.hub.device(&w.agent.device_id).ok()?;
        (d["applied"]["epoch"].as_u64()? == 2).then_some(())
    });
    // Same desired apps: nothing restarted, the app still answers.
    assert_eq!(w.agent.app_pid(&app.name), Some(pid));
    assert!(app.get("/").is_some(), "app stopped answering");
    Ok(())
}

/// A device adopts a rotated key set (which lists only the new key) and then
/// loses power while cut off from the hub, before any manifest re-signed with
/// the new key reaches it: the manifest it accepted under the old key set must
/// still run from disk after a faithful reboot.
#[test]
fn a_device_that_adopted_a_rotated_key_set_reboots_offline_with_every_app() -> anyhow::Result<()> {
    let mut w = World::start_on_open_broker("rotboot")?;
    let apps = [w.app("a"), w.app("b")];
    w.deploy_and_wait(&apps)?;
    // Rotate on disk only: the running hub keeps its old key and publishes
    // nothing re-signed; the test publishes the new key set on its topic
    // (hence the open broker: on the embedded one only the hub may).
    let out = w.hub.cli(&["keys", "rotate"])?;
    assert!(out.contains("is now 2"), "{out}");
    let keyset = std::fs::read(w.hub.dir.path().join("keyset.bin"))?;
    assert!(mqtt::publish(
        w.hub.mqtt_addr(),
        &outpost_protocol::topics::keyset(),
        keyset
    )?);
    eventually(PATIENCE, "the device to adopt key set 2", || {
        w.agent.logs().contains("key set adopted").then_some(())
    });
    w.hub.stop();
    w.agent.reboot_offline()?;
    for a in &apps {
        eventually(
            PATIENCE,
            &format!("{} to answer after the reboot", a.name),
            || w.agent.http_get_in_netns(a.port, "/"),
        );
    }
    let st = w.agent.status()?;
    assert_eq!(st["applied"][0].as_u64(), Some(1), "{st}");
    assert!(
        !w.agent.logs().contains("ignoring persisted manifest"),
        "the persisted manifest was refused"
    );
    Ok(())
}

/// Two root rotations (`outpost-hub keys rotate-root`) while the device is
/// off: when both come back, the device walks the chain link by link (each
/// signed by the root before it, countersigned by the next), adopts the key
/// set signed by the newest root and the manifest re-signed under it, and its
/// app keeps running untouched. Nobody re-provisions it.
#[test]
fn a_device_walks_two_root_rotations_made_while_it_was_off() -> anyhow::Result<()> {
    let mut w = World::start("rootrot")?;
    let app = w.app("hello");
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let pid = eventually(PATIENCE, "app pid", || w.agent.app_pid(&app.name));

    w.agent.stop();
    w.hub.stop();
    for (version, epoch) in [(2, 2), (3, 3)] {
        let out = w.hub.cli(&["keys", "rotate-root"])?;
        assert!(
            out.contains(&format!("(root version {version})"))
                && out.contains(&format!("manifest epoch) {epoch}")),
            "{out}"
        );
    }
    w.hub.serve()?;
    w.agent.start()?;

    let st = eventually(PATIENCE, "the agent to apply under epoch 3", || {
        let st = w.agent.status().ok()?;
        (st["applied"][0].as_u64()? == 3).then_some(st)
    });
    assert_eq!(st["rejected"]["root"].as_u64(), Some(0), "{st}");
    eventually(PATIENCE, "the hub to see both root adoptions", || {
        let kinds: Vec<String> = w
            .hub
            .events(&w.agent.device_id)
            .ok()?
            .into_iter()
            .filter(|(_, kind, _)| kind == "RootAdopted")
            .map(|(_, _, json)| json)
            .collect();
        (kinds.len() == 2).then_some(())
    });
    assert!(
        w.agent
            .logs()
            .contains("root key adopted through its rotation link"),
        "no root adoption in the agent's log"
    );
    assert_eq!(
        w.agent.app_pid(&app.name),
        Some(pid),
        "the app was restarted"
    );
    assert!(app.get("/").is_some(), "app stopped answering");
    Ok(())
}
