//! A flood of junk and forged manifests on a device's topic, from a client on
//! a broker that lets it publish there (the embedded broker lets only the hub,
//! so this is a broker an attacker took over, `World::start_on_open_broker`): every one that reaches the device is refused and counted, the flood costs the device a
//! bounded amount of flash (measured from the kernel's `write_bytes` of the agent
//! process), it adds at most a couple of events to the outbox, and the app runs
//! on untouched.

use anyhow::Result;
use outpost_e2e::{eventually, mqtt, pid_alive, World, PATIENCE};
use outpost_protocol::envelope::{seal_value, Kind};
use outpost_protocol::{topics, DeviceId, Manifest, SigningKey};

/// Bytes the process caused to be written to storage (`/proc/PID/io`).
fn write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn ten_thousand_refused_manifests_cost_bounded_flash_and_no_real_event() -> Result<()> {
    const N: usize = 10_000;
    let w = World::start_on_open_broker("flood")?;
    let app = w.app("steady");
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let app_pid = eventually(PATIENCE, "app pid", || w.agent.app_pid(&app.name));
    let agent_pid = w.agent.pid().expect("agent running");
    let device: DeviceId = w.agent.device_id.parse()?;
    let events_before = w.hub.events(&w.agent.device_id)?.len();

    // Half junk, half well-formed manifests signed by a key nobody trusts.
    let forger = SigningKey::generate()?;
    let payloads: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            if i % 2 == 0 {
                format!("junk {i} {}", "x".repeat(100)).into_bytes()
            } else {
                let m = Manifest {
                    device_id: device.clone(),
                    epoch: 1,
                    generation: 1_000 + i as u64,
                    issued_at: 0,
                    key_id: forger.key_id(),
                    apps: vec![],
                    release: Default::default(),
                    expires_at: outpost_protocol::NEVER,
                };
                seal_value(Kind::Manifest, &forger, &m).unwrap_or_default()
            }
        })
        .collect();
    let written_before = write_bytes(agent_pid);
    let t = std::time::Instant::now();
    assert_eq!(
        mqtt::flood(w.hub.mqtt_addr(), &topics::manifest(&device), payloads)?,
        N
    );
    // The embedded broker drops what a lagging subscriber cannot take (its
    // cursor jumps to the head): the device counts what reached it. Wait for
    // the count to settle.
    let mut last = (0, std::time::Instant::now());
    let counted = eventually(PATIENCE, "the agent's refusal count to settle", || {
        let n = w.agent.rejected_total();
        if n != last.0 {
            last = (n, std::time::Instant::now());
        }
        (n > 0 && last.1.elapsed() > std::time::Duration::from_secs(3)).then_some(n)
    });
    let elapsed = t.elapsed();
    let written = write_bytes(agent_pid) - written_before;
    eprintln!(
        "measured: {N} published, {counted} reached the agent and were refused in {elapsed:?}; agent write_bytes {written} ({} bytes per refusal)",
        written / counted.max(1)
    );
    assert!(
        counted >= 1_000,
        "only {counted} refusals: the flood did not reach the agent"
    );
    assert!(
        written < 1 << 20,
        "the flood cost {written} bytes of writes"
    );
    // The app is untouched; the hub saw at most the first refusal (the rest
    // are summarised when the window ends), not one event each.
    assert!(pid_alive(app_pid));
    assert_eq!(w.agent.app_pid(&app.name), Some(app_pid));
    let flood_events = eventually(PATIENCE, "the first refusal to reach the hub", || {
        let ev = w.hub.events(&w.agent.device_id).ok()?;
        let rejected = ev
            .iter()
            .filter(|(_, k, _)| k.contains("ManifestRejected") || k.contains("rejected"))
            .count();
        (rejected >= 1).then_some(ev.len() - events_before)
    });
    assert!(flood_events <= 3, "the flood queued {flood_events} events");
    // A real event after the flood still gets through.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(app_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    eventually(PATIENCE, "the hub to hear of the app's exit", || {
        w.hub
            .events(&w.agent.device_id)
            .ok()?
            .iter()
            .any(|(_, k, l)| {
                (k.contains("Exited") || k.contains("exited")) && l.contains(&app.name)
            })
            .then_some(())
    });
    Ok(())
}
