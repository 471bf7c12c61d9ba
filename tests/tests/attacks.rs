//! Hostile input on the manifest topic: each attack is rejected, counted, visible
//! in status, and leaves the running app untouched. One of them is a replay of
//! a genuine, validly signed manifest past its expiry (freshness): the device
//! refuses it as new although the signature is the hub's own. The attacker needs a broker
//! that lets it publish there (the embedded broker lets only the hub): an open
//! Mosquitto stands for a broker taken over (`World::start_on_open_broker`).

use outpost_e2e::{eventually, mqtt, pid_alive, World, PATIENCE};
use outpost_protocol::envelope::{seal_value, Kind};
use outpost_protocol::{topics, DeviceId, Manifest, SigningKey};

#[test]
fn tampered_replayed_foreign_unknown_key_and_junk_manifests_are_rejected_apps_untouched(
) -> anyhow::Result<()> {
    let w = World::start_on_open_broker("attack")?;
    let device: DeviceId = w.agent.device_id.parse()?;
    let topic = topics::manifest(&device);
    let mut app = w.app("victim");
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let old = mqtt::retained(w.hub.mqtt_addr(), &topic)?;
    app.version = "2".into();
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let current = mqtt::retained(w.hub.mqtt_addr(), &topic)?;
    let generation = w.agent.applied_generation().unwrap();
    let pid = eventually(PATIENCE, "app pid", || w.agent.app_pid(&app.name));
    let starts = app.get("/count").unwrap();

    let signer = w.hub.signing_key()?;
    let stranger = SigningKey::generate()?;
    let forged_until =
        |key: &SigningKey, device: &str, expires_at: u64| -> anyhow::Result<Vec<u8>> {
            let m = Manifest {
                device_id: device.parse()?,
                epoch: 1,
                generation: generation + 100,
                issued_at: 0,
                key_id: key.key_id(),
                apps: vec![],
                release: Default::default(),
                expires_at,
            };
            Ok(seal_value(Kind::Manifest, key, &m)?)
        };
    let forged =
        |key: &SigningKey, device: &str| forged_until(key, device, outpost_protocol::NEVER);
    // Signed by the hub's own key for this device, newer than what it runs,
    // but expired an hour ago: what a broker holding back an old release
    // could deliver.
    let an_hour_ago = outpost_e2e::wall_secs() - 3_600;
    let mut flipped = current.clone();
    let n = flipped.len();
    flipped[n - 2] ^= 0x01;
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("bad_signature", flipped),
        ("rollback", old),
        ("wrong_device", forged(&signer, "some-other-device")?),
        ("unknown_key", forged(&stranger, device.as_str())?),
        (
            "expired",
            forged_until(&signer, device.as_str(), an_hour_ago)?,
        ),
    ];
    for (counter, bytes) in &attacks {
        let before = w.agent.status()?["rejected"][counter].as_u64().unwrap_or(0);
        assert!(mqtt::publish(w.hub.mqtt_addr(), &topic, bytes.clone())?);
        eventually(
            PATIENCE,
            &format!("the agent to count a {counter} rejection"),
            || {
                let st = w.agent.status().ok()?;
                (st["rejected"][counter].as_u64()? > before).then_some(())
            },
        );
    }
    // 1 MiB of random bytes: the broker may refuse it (then the attacker is
    // disconnected); if it gets through, the agent counts it as too large.
    let junk: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
    let delivered = mqtt::publish(w.hub.mqtt_addr(), &topic, junk)?;
    if delivered {
        eventually(PATIENCE, "the agent to count the oversized message", || {
            let st = w.agent.status().ok()?;
            (st["rejected"]["too_large"].as_u64()? >= 1).then_some(())
        });
    }
    // A legitimate update still goes through afterwards (the agent is not wedged).
    let st = w.agent.status()?;
    assert_eq!(st["applied"][1].as_u64(), Some(generation));
    assert_eq!(w.agent.app_pid(&app.name), Some(pid));
    assert!(pid_alive(pid));
    assert_eq!(app.get("/count").unwrap(), starts, "the app was restarted");
    assert!(st["last_rejection"].as_str().is_some());

    // The hub sees the rejections in the device's status.
    eventually(PATIENCE, "the hub to see the rejections", || {
        let d = w.hub.device(&w.agent.device_id).ok()?;
        let r = d["status"]["rejected"].as_object()?;
        let total: u64 = r.values().filter_map(|v| v.as_u64()).sum();
        (total >= 4).then_some(())
    });
    let mut w = w;
    assert!(w.agent.is_running(), "agent died under attack");
    app.version = "3".into();
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    Ok(())
}
