//! A device's disk over months: images collected as releases come and go under
//! a budget, app logs rotated and capped, both visible through `outpost-agent
//! images` and `outpost-agent logs`. Real registry, real containers.

use anyhow::Result;
use outpost_e2e::{eventually, unique, AppDef, World, PATIENCE};
use serde_json::Value;
use std::collections::BTreeSet;

/// Each version adds a layer of its own this big on top of the shared base.
const EXTRA: usize = 4 << 20;

fn held(w: &World) -> Result<Value> {
    Ok(serde_json::from_str(&w.agent.cli(&["images", "--json"])?)?)
}

fn held_digests(v: &Value) -> BTreeSet<String> {
    v["images"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| Some(i["digest"].as_str()?.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A digest as the status file has it (32 numbers) → `sha256:<hex>`.
fn digest_text(v: &Value) -> Option<String> {
    let bytes: Vec<u8> = v
        .as_array()?
        .iter()
        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect::<Option<_>>()?;
    Some(format!(
        "sha256:{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Whether process `pid` is inside a sleep system call (`/proc/PID/syscall`).
fn in_sleep(pid: u32) -> bool {
    use nix::libc::{SYS_clock_nanosleep, SYS_nanosleep};
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok())
        .is_some_and(|n| n == SYS_clock_nanosleep || n == SYS_nanosleep)
}

fn deploy_version(w: &World, app: &mut AppDef, image: &str, version: u32) -> Result<String> {
    app.image = image.to_string();
    app.version = version.to_string();
    w.deploy_and_wait(std::slice::from_ref(app))?;
    Ok(eventually(
        PATIENCE,
        "the agent to report the new image",
        || {
            let st = w.agent.status().ok()?;
            let d = digest_text(&st["apps"][&app.name]["image_digest"])?;
            let h = held(w).ok()?;
            // The release settled once the listing names it current.
            let current = h["images"].as_array()?.iter().any(|i| {
                i["digest"] == d.as_str()
                    && i["used_by"].as_array().is_some_and(|u| {
                        u.iter()
                            .any(|s| s.as_str().is_some_and(|s| s.starts_with("current")))
                    })
            });
            current.then_some(d)
        },
    ))
}

/// Three successive versions under a budget that fits three: once the third
/// settles, the first (neither current nor previous) is collected; the shared
/// base layer stays. Then, under a budget that fits only two, a fourth version
/// is pulled after the previous release's images make room.
#[test]
fn releases_under_a_small_budget_keep_current_and_previous_and_shared_layers() -> Result<()> {
    let mut w = World::start("gc")?;
    w.agent.stop();
    w.agent.set_config("images", "budget", "\"28MiB\"")?;
    w.agent.start()?;
    let versions: Vec<String> = (1..=4)
        .map(|i| w.registry.push_variant(&format!("gc{i}"), EXTRA))
        .collect::<Result<_>>()?;
    let mut app = AppDef::hello(&unique("gc"), &versions[0]);
    let d1 = deploy_version(&w, &mut app, &versions[0], 1)?;
    let d2 = deploy_version(&w, &mut app, &versions[1], 2)?;
    assert_eq!(
        held_digests(&held(&w)?),
        BTreeSet::from([d1.clone(), d2.clone()])
    );
    let d3 = deploy_version(&w, &mut app, &versions[2], 3)?;
    let h = eventually(PATIENCE, "the oldest image to be collected", || {
        let h = held(&w).ok()?;
        (held_digests(&h) == BTreeSet::from([d2.clone(), d3.clone()])).then_some(h)
    });
    // Shared: each image is larger than what only it uses (the base layer).
    for i in h["images"].as_array().unwrap() {
        assert!(i["unique_bytes"].as_u64() < i["bytes"].as_u64(), "{i}");
        assert!(i["unique_bytes"].as_u64() >= Some(EXTRA as u64), "{i}");
    }
    assert!(
        h["used_bytes"].as_u64() <= h["budget_bytes"].as_u64(),
        "{h}"
    );
    let human = w.agent.cli(&["images"])?;
    assert!(human.contains("current release (generation"), "{human}");
    assert!(human.contains("previous release (generation"), "{human}");

    // A budget that holds only two versions: the previous release gives way
    // to the update instead of blocking it.
    w.agent.stop();
    w.agent.set_config("images", "budget", "\"19MiB\"")?;
    w.agent.start()?;
    let d4 = deploy_version(&w, &mut app, &versions[3], 4)?;
    assert!(
        w.agent
            .logs()
            .contains("collected the previous release to make room"),
        "no collection before the pull"
    );
    eventually(
        PATIENCE,
        "only the current and the new version to remain",
        || {
            let h = held(&w).ok()?;
            (held_digests(&h) == BTreeSet::from([d3.clone(), d4.clone()])).then_some(())
        },
    );
    // `images prune` keeps what is in use.
    let out = w.agent.cli(&["images", "prune"])?;
    assert!(out.contains("removed 0 image(s)"), "{out}");
    assert!(held_digests(&held(&w)?).contains(&d4));
    Ok(())
}

/// An app that writes fast: its log is rotated by size while it runs and kept
/// under the total cap, no line is lost at a rotation (the numbered lines kept
/// are contiguous and end with the last one written), and `outpost-agent
/// logs` shows them, `--tail` the newest, `--follow` new ones as they come.
#[test]
fn a_chatty_app_log_is_rotated_without_losing_lines_and_shown_by_logs() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut w = World::start("logs")?;
    w.agent.stop();
    w.agent.set_config("logs", "max_file_bytes", "\"64KiB\"")?;
    w.agent.set_config("logs", "files", "3")?;
    w.agent.set_config("logs", "total_bytes", "\"256KiB\"")?;
    w.agent.start()?;
    let app = w.app("chatty");
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let logs_dir = w.agent.dir.path().join("data/logs");
    let used = || -> u64 {
        std::fs::read_dir(&logs_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.metadata().map_or(0, |m| m.blocks() * 512))
                    .sum()
            })
            .unwrap_or(0)
    };
    // About 1.5 MB of numbered lines, in bursts, while the agent rotates.
    let (bursts, per_burst) = (100u64, 1000u64);
    for _ in 0..bursts {
        app.get(&format!("/say?n={per_burst}"))
            .ok_or_else(|| anyhow::anyhow!("the app stopped answering"))?;
    }
    let last = bursts * per_burst;
    let listing = || -> String {
        std::fs::read_dir(&logs_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let m = e.metadata().ok();
                        format!(
                            "{:?} len {} allocated {}\n",
                            e.file_name(),
                            m.as_ref().map_or(0, |m| m.len()),
                            m.as_ref().map_or(0, |m| m.blocks() * 512)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    eventually(PATIENCE, "rotation to bring the logs under the cap", || {
        // The listing is the last observation in the failure message.
        (used() <= 256 << 10 && logs_dir.join(format!("{}.log.1", app.name)).exists())
            .then_some(())
            .ok_or_else(listing)
    });
    let shown = w.agent.cli(&["logs", &app.name])?;
    let seen: Vec<u64> = shown
        .lines()
        .filter_map(|l| l.strip_prefix("say ")?.parse().ok())
        .collect();
    assert!(seen.len() > 5_000, "too few lines kept: {}", seen.len());
    for pair in seen.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "a line was lost or repeated at a rotation"
        );
    }
    assert_eq!(seen.last().copied(), Some(last));
    let tail = w.agent.cli(&["logs", &app.name, "--tail", "2"])?;
    assert_eq!(tail, format!("say {}\nsay {last}\n", last - 1));

    // --follow prints what the app writes next.
    let mut follow = std::process::Command::new(&outpost_e2e::bins().agent)
        .arg("--config")
        .arg(w.agent.config())
        .args(["logs", &app.name, "--follow", "--tail", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = follow.stdout.take().expect("piped");
    // Following from the end once it sleeps in its poll loop (it measured
    // the file's end just before): then what the app writes is new to it.
    let follower = follow.id();
    eventually(PATIENCE, "logs --follow to wait for new lines", || {
        in_sleep(follower)
    });
    app.get("/say?n=3");
    let (done, finished) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 4096];
        let mut got = String::new();
        while !got.contains(&format!("say {}", last + 3)) {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        let _ = done.send(());
        got
    });
    // Bounded: without the lines, the assertion below shows what came.
    let _ = finished.recv_timeout(std::time::Duration::from_secs(30));
    let _ = follow.kill();
    let _ = follow.wait();
    let got = reader.join().expect("reader thread");
    assert_eq!(
        got,
        format!("say {}\nsay {}\nsay {}\n", last + 1, last + 2, last + 3)
    );
    Ok(())
}
