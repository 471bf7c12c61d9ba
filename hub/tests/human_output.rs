//! The CLI's human output, through the real `outpost-hub` binary against a
//! real hub with devices reporting over its embedded broker: `devices`,
//! `status`, `events` (and `--follow`), `rollout status` say states, times
//! and generations in words, in aligned tables; `--json` gives the API's JSON.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use outpost_hub::api::DeviceSummary;
use outpost_protocol::status::{ReleasePhase, ReleaseStatus};
use outpost_protocol::{AppState, EventKind};
use outpost_test_support::eventually_async;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};

/// Kills the child when dropped, so a failing test leaves nothing running.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn row<'a>(text: &'a str, first: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first} in\n{text}"))
}

/// The column where `word` starts in `line`.
fn column(line: &str, word: &str) -> usize {
    line.find(word)
        .unwrap_or_else(|| panic!("{word} not in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_status_events_and_rollout_status_read_as_words_in_aligned_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let hub = HubProc::start(&dir, None).await;

    let mut d1 = FakeDevice::register(&hub, "d-1", &["site=a"]).await;
    let mut d2 = FakeDevice::register(&hub, "d-2", &["site=a"]).await;
    let _d3 = FakeDevice::register(&hub, "d-3-quiet", &["site=b"]).await;
    hub.cli(&["apply", "-f", &web_file(tmp.path(), 1, false)]);
    let g1 = desired_of(&hub, "d-1").await;
    let committed = Some(ReleaseStatus {
        target: g1,
        phase: ReleasePhase::Committed,
        committed: Some(g1),
    });
    d1.report(
        g1,
        vec![app("web", AppState::Running { pid: 2110 })],
        committed.clone(),
    )
    .await;
    d2.report(
        g1,
        vec![app("web", AppState::Exited { code: 3 })],
        committed,
    )
    .await;
    d1.event(
        1,
        EventKind::ManifestApplied {
            epoch: g1.0,
            generation: g1.1,
        },
    )
    .await;
    d1.event(
        2,
        EventKind::AppStarted {
            app: "web".into(),
            pid: 2110,
        },
    )
    .await;
    eventually_async(DEADLINE, "both devices reported", || async {
        let ds: Vec<DeviceSummary> = hub.api.get("/v1/devices").await.ok()?;
        (ds.iter().filter(|d| d.online).count() == 2).then_some(())
    })
    .await;
    eventually_async(DEADLINE, "both events stored", || async {
        let es: Vec<serde_json::Value> = hub.api.get("/v1/devices/d-1/events").await.ok()?;
        (es.len() == 2).then_some(())
    })
    .await;
    // A rollout of a new image: its canary is pending.
    hub.cli(&["apply", "-f", &web_file(tmp.path(), 2, true)]);

    // devices: one row each, states in words, generations spelled out,
    // columns aligned.
    let devices = hub.cli(&["devices"]);
    let header = devices.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("STATE"),
        "{devices}"
    );
    let (r1, r2, r3) = (
        row(&devices, "d-1"),
        row(&devices, "d-2"),
        row(&devices, "d-3-quiet"),
    );
    assert!(r2.contains("degraded"), "{devices}");
    assert!(
        r3.contains("never seen") && r3.contains("never"),
        "{devices}"
    );
    assert!(
        r1.contains("site=a")
            && (r1.contains(" ago") || r1.contains("just now"))
            && r1.contains("epoch 1, generation"),
        "{devices}"
    );
    assert_eq!(column(header, "STATE"), column(r2, "degraded"), "{devices}");
    assert_eq!(
        column(header, "STATE"),
        column(r3, "never seen"),
        "{devices}"
    );
    let json: Vec<DeviceSummary> = serde_json::from_str(&hub.cli(&["devices", "--json"])).unwrap();
    assert_eq!(json.len(), 3);

    // status: no "1/2" for epoch and generation, app states in words.
    let status = hub.cli(&["status", "d-1"]);
    assert!(
        status.contains("desired:")
            && status.contains("epoch 1, generation")
            && status.contains(": web"),
        "{status}"
    );
    assert!(
        !status.contains(&format!("{}/{}", g1.0, g1.1)),
        "epoch/generation as a fraction: {status}"
    );
    assert!(status.contains("online (last report"), "{status}");
    assert!(status.contains("running (pid 2110)"), "{status}");
    assert!(status.contains("up 3 min"), "{status}");
    assert!(
        status.contains("generation 2 committed") || status.contains("committed"),
        "{status}"
    );
    assert!(!status.contains("Running {"), "Rust debug output: {status}");
    let degraded = hub.cli(&["status", "d-2"]);
    assert!(
        degraded.contains("degraded") && degraded.contains("exited with code 3"),
        "{degraded}"
    );

    // events: words and relative times, no Rust debug values, no raw
    // Unix timestamps.
    let events = hub.cli(&["events", "d-1"]);
    assert!(events.starts_with("SEQ"), "{events}");
    assert!(
        events.contains(&format!(
            "manifest accepted: epoch {}, generation {}",
            g1.0, g1.1
        )) && events.contains("web started (pid 2110)"),
        "{events}"
    );
    assert!(
        !events.contains("ManifestApplied") && !events.contains('{'),
        "{events}"
    );
    assert!(
        events
            .lines()
            .skip(1)
            .all(|l| l.contains(" ago") || l.contains("just now")),
        "{events}"
    );

    // rollout status: the canary pending, the rest not yet updated.
    let rollout = hub.cli(&["rollout", "status", "web"]);
    assert!(
        rollout.contains("running") && rollout.contains("1 pending") && rollout.contains("canary"),
        "{rollout}"
    );
    let summary = hub.cli(&["rollout", "status"]);
    assert!(row(&summary, "web").contains("running"), "{summary}");

    // events --follow prints a new event as it arrives.
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(&dir)
        .arg("--url")
        .arg(hub.addrs.url())
        .args(["events", "d-1", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Killed(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let wait_for = |want: &str| {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(want) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line with {want:?} from events --follow: {e}"),
            }
        }
    };
    wait_for("web started (pid 2110)");
    d1.event(3, EventKind::AppStopped { app: "web".into() })
        .await;
    let line = wait_for("web stopped");
    assert!(line.trim_start().starts_with('3'), "{line}");
}
