//! Logs on demand (`outpost-hub logs`): the device streams an app's output
//! from the real container's log files through the real broker, only while
//! someone reads. Stopping the reader stops the device's stream (its own
//! counters say so). The same agent serves its loopback `/metrics`
//! (`metrics_listen`), read here through the binary.

use outpost_e2e::{eventually, World, PATIENCE};
use std::io::BufRead;
use std::time::Instant;

fn active_streams(w: &World) -> Option<u64> {
    w.agent.status().ok()?["log_streams"]["active"].as_u64()
}

#[test]
fn logs_follow_prints_a_containers_new_lines_and_stopping_it_stops_the_device_stream(
) -> anyhow::Result<()> {
    let mut w = World::start("logs")?;
    let metrics = outpost_test_support::PortLease::new()?;
    w.agent.stop();
    w.agent.set_setting(
        "metrics_listen",
        &format!("\"127.0.0.1:{}\"", metrics.port()),
    )?;
    w.agent.start()?;
    let app = w.app("talk");
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let device = w.agent.device_id.clone();

    // The tail, once: the app's start line is in it.
    let out = w.hub.cli(&["logs", &device, &app.name, "--tail", "5"])?;
    assert!(out.contains("listening on port"), "{out}");

    // Follow: a line the app writes now shows up.
    let mut child = w
        .hub
        .spawn_cli(&["logs", &device, &app.name, "--tail", "0", "--follow"])?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send((line, Instant::now())).is_err() {
                break;
            }
        }
    });
    eventually(PATIENCE, "the device to run one log stream", || {
        (active_streams(&w)? == 1).then_some(())
    });
    let said = app.get("/say?n=3").expect("the app answers /say");
    let n: u64 = said
        .trim()
        .strip_prefix("said ")
        .and_then(|v| v.parse().ok())
        .expect("said N");
    let asked = Instant::now();
    let want = format!("say {n}");
    let seen_at = loop {
        let (line, at) = rx
            .recv_timeout(PATIENCE)
            .map_err(|_| anyhow::anyhow!("no line {want:?} from `logs --follow`"))?;
        if line == want {
            break at;
        }
    };
    eprintln!(
        "measured: app line -> `outpost-hub logs --follow` output in {:?}",
        seen_at.duration_since(asked)
    );

    // The reader goes away: the hub says stop and the device's stream ends.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let _ = child.wait();
    let t = Instant::now();
    eventually(PATIENCE, "the device to stop streaming", || {
        (active_streams(&w)? == 0).then_some(())
    });
    eprintln!(
        "measured: reader stopped -> device stream ended within {:?}",
        t.elapsed()
    );
    let st = w.agent.status()?;
    assert_eq!(st["log_streams"]["started"].as_u64(), Some(2), "{st}");
    assert!(st["log_streams"]["bytes_sent"].as_u64() > Some(0), "{st}");
    // Ended by the hub's stop, not by running out its deadline.
    let logs = w.agent.logs();
    assert!(logs.contains("log stream stopped by the hub"), "{logs}");

    // The agent's own figures, from the running binary.
    let text = eventually(PATIENCE, "the agent's /metrics", || {
        outpost_e2e::http_get(metrics.port(), "/metrics")
    });
    for want in [
        "outpost_agent_apps{state=\"running\"} 1",
        "outpost_agent_broker_connected 1",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    Ok(())
}
