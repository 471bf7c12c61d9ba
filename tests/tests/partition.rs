//! Link cuts between agent and broker: offline restarts, ordered event delivery
//! after the link returns, and no restart of healthy apps on reconnect.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use outpost_e2e::{eventually, World, PATIENCE};

#[test]
fn agent_restarts_crashed_app_while_partitioned_and_hub_gets_every_event_in_order(
) -> anyhow::Result<()> {
    let w = World::start("partition")?;
    let app = w.app("crashy");
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let pid = eventually(PATIENCE, "app pid", || w.agent.app_pid(&app.name));
    eventually(PATIENCE, "events before the cut to reach the hub", || {
        (w.agent.outbox_pending()? == 0).then_some(())
    });
    let before_cut = w.hub.events(&w.agent.device_id)?;
    let last_seq_before = before_cut.last().map_or(0, |e| e.0);

    w.proxy.cut();
    eventually(PATIENCE, "the agent to notice the cut", || {
        (!w.agent.connected()?).then_some(())
    });
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
    let t = std::time::Instant::now();
    let new_pid = eventually(PATIENCE, "the agent to restart the app offline", || {
        w.agent.app_pid(&app.name).filter(|p| *p != pid)
    });
    eprintln!(
        "measured: kill -9 of the app -> restarted offline: {:?}",
        t.elapsed()
    );
    eventually(PATIENCE, "the restarted app to answer", || app.get("/"));
    assert_eq!(w.agent.volume_starts(&app.name), 2);
    assert!(
        w.agent.outbox_pending().unwrap() > 0,
        "nothing queued offline"
    );
    let during = w.hub.events(&w.agent.device_id)?;
    assert_eq!(during.len(), before_cut.len(), "events crossed a cut link");

    w.proxy.restore();
    let t = std::time::Instant::now();
    let events = eventually(PATIENCE, "the hub to receive the events of the cut", || {
        let ev = w.hub.events(&w.agent.device_id).ok()?;
        ev.iter()
            .any(|e| e.1 == "AppRestarted" && e.2.contains(&app.name))
            .then_some(ev)
    });
    eprintln!(
        "measured: link restored -> hub has the cut's events: {:?}",
        t.elapsed()
    );
    eventually(PATIENCE, "the outbox to drain", || {
        (w.agent.outbox_pending()? == 0).then_some(())
    });
    let events = {
        let all = w.hub.events(&w.agent.device_id)?;
        if all.len() >= events.len() {
            all
        } else {
            events
        }
    };
    // None lost, in order: the device's seqs are contiguous from 1.
    let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "events lost or out of order: {events:#?}");
    let after: Vec<&str> = events
        .iter()
        .filter(|e| e.0 > last_seq_before)
        .map(|e| e.1.as_str())
        .collect();
    let pos = |k: &str| after.iter().position(|x| *x == k);
    let (exited, started, restarted) = (
        pos("AppExited").expect("AppExited missing"),
        pos("AppStarted").expect("AppStarted missing"),
        pos("AppRestarted").expect("AppRestarted missing"),
    );
    assert!(exited < started && started < restarted, "{after:?}");
    assert!(events
        .iter()
        .any(|e| e.1 == "AppStarted" && e.2.contains(&new_pid.to_string())));
    Ok(())
}

#[test]
fn reconnect_after_partition_restarts_no_healthy_app() -> anyhow::Result<()> {
    let w = World::start("reconnect")?;
    let mut app = w.app("steady");
    app.health = true;
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    eventually(PATIENCE, "the app to be ready", || {
        let st = w.agent.status().ok()?;
        (st["apps"][&app.name]["ready"].as_bool()?).then_some(())
    });
    let pid = eventually(PATIENCE, "app pid", || w.agent.app_pid(&app.name));
    let status_seq = |w: &World| -> Option<u64> {
        w.hub.device(&w.agent.device_id).ok()?["status"]["seq"].as_u64()
    };
    let seq_before = eventually(PATIENCE, "a status at the hub", || status_seq(&w));

    w.proxy.cut();
    eventually(PATIENCE, "the agent to notice the cut", || {
        (!w.agent.connected()?).then_some(())
    });
    w.proxy.restore();
    eventually(PATIENCE, "the agent to reconnect", || {
        (w.agent.connected()?).then_some(())
    });
    eventually(PATIENCE, "a status sent after the reconnect", || {
        status_seq(&w).filter(|s| *s > seq_before)
    });
    // Let the agent process the re-delivered manifest, then compare.
    eventually(PATIENCE, "the outbox to drain", || {
        (w.agent.outbox_pending()? == 0).then_some(())
    });
    assert_eq!(
        w.agent.app_pid(&app.name),
        Some(pid),
        "app restarted on reconnect"
    );
    assert_eq!(w.agent.volume_starts(&app.name), 1);
    let st = w.agent.status()?;
    assert_eq!(st["apps"][&app.name]["restarts"].as_u64(), Some(0));
    assert_eq!(st["apps"][&app.name]["ready"].as_bool(), Some(true));
    Ok(())
}
