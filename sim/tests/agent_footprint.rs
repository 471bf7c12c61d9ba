//! Agent footprint and flash wear, measured on the real release agent with five
//! real containers of the sample image. A benchmark, not a test: `#[ignore]`d so
//! it never runs in the default suite. Run (as root, with docker-registry and
//! skopeo installed, after building the release agent and its create helper):
//!
//! ```text
//! cargo build --release -p outpost-edge-agent -p outpost-runtime --bins
//! cargo test -p outpost-sim --test agent_footprint -- --ignored --nocapture
//! ```
//!
//! `OUTPOST_WEAR_SECS` sets the steady-state window (default 3600 s);
//! `OUTPOST_AGENT_BIN` the agent binary (default `target/release/outpost-agent`).
//!
//! Registry, hub and agent come from the `outpost-e2e` fixtures; only the agent
//! process is started here, from the release binary, with its run directory on
//! tmpfs (as `/run/outpost-agent` is on a device) and its data directory on disk.
//! Its stdout/stderr go to tmpfs too (on a device they go to journald, whose
//! writes are not the agent's). Numbers are read from `/proc/PID/{status,io}`.

// Test code: a failed step should stop the benchmark with its error.
#![allow(clippy::unwrap_used)]

use outpost_e2e::{eventually, unique, Agent, AppDef, Hub, Registry, PATIENCE};
use outpost_sim::{agent, machine, procstat};
use outpost_test_support::ProcessGuard;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn agent_bin() -> PathBuf {
    std::env::var_os("OUTPOST_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| outpost_e2e::workspace().join("target/release/outpost-agent"))
}

fn set_key(config: &std::path::Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{key} = ")) {
                found = true;
                format!("{key} = \"{value}\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.insert(0, format!("{key} = \"{value}\""));
    }
    std::fs::write(config, out.join("\n") + "\n").unwrap();
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored (needs root, docker-registry, skopeo)"]
fn agent_footprint_and_flash_wear_with_five_sample_apps() {
    let bin = agent_bin();
    assert!(
        bin.exists(),
        "{} not found: cargo build --release -p outpost-edge-agent -p outpost-runtime --bins",
        bin.display()
    );
    let wear_secs: u64 = std::env::var("OUTPOST_WEAR_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3600);

    // Run dir (status file, container state) on tmpfs as on a device. Declared
    // before the agent fixture so it outlives the fixture's cleanup (stop-all).
    let run_dir = tempfile::Builder::new()
        .prefix("outpost-footprint-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let registry = Registry::start().unwrap();
    let image = registry.push_sample("v1").unwrap();
    let hub = Hub::start(&registry).unwrap();
    let device = unique("footprint");
    let agent = Agent::init(&hub, &device, hub.mqtt_port, &registry).unwrap();
    hub.add_device(&device, &agent.public_key).unwrap();

    set_key(
        &agent.config(),
        "run_dir",
        &run_dir.path().display().to_string(),
    );
    let mut running = ProcessGuard::spawn(
        "the release agent",
        Command::new(&bin)
            .arg("--config")
            .arg(agent.config())
            .arg("run"),
        &run_dir.path().join("agent.log"),
    )
    .unwrap();
    let pid = running.pid();

    eventually(PATIENCE, "the release agent to connect", || {
        agent.connected().filter(|c| *c)
    });
    std::thread::sleep(Duration::from_secs(10));
    let idle = agent::footprint(pid).unwrap();

    let mut apps: Vec<AppDef> = (0..5)
        .map(|i| AppDef::hello(&unique(&format!("fp{i}")), &image))
        .collect();
    // One app logs a line a second, as a real app does: its log is part of
    // the device's flash writes (appends by the app, rotation copies by the
    // agent).
    apps[0].extra_env = vec![("TICK_MS".into(), "1000".into())];
    let before_deploy = procstat::write_bytes(pid).unwrap();
    let t = Instant::now();
    let gen_before = agent.applied_generation().unwrap_or(0);
    hub.deploy(&device, &apps).unwrap();
    eventually(PATIENCE, "the agent to apply the deployment", || {
        agent.applied_generation().filter(|g| *g > gen_before)
    });
    for a in &apps {
        eventually(PATIENCE, &format!("app {} to answer", a.name), || {
            a.get("/")
        });
    }
    let deploy_time = t.elapsed();
    std::thread::sleep(Duration::from_secs(15));
    let deploy_writes = procstat::write_bytes(pid).unwrap() - before_deploy;
    let busy = agent::footprint(pid).unwrap();

    let ticker_pid = eventually(PATIENCE, "the logging app's pid", || {
        agent.app_pid(&apps[0].name)
    }) as u32;
    let logs_dir = agent.dir.path().join("data/logs");
    let ticker_log = logs_dir.join(format!("{}.log", apps[0].name));
    let ticker_before = procstat::write_bytes(ticker_pid).unwrap();
    let log_len_before = std::fs::metadata(&ticker_log).map_or(0, |m| m.len());
    let wear = agent::wear(
        pid,
        Duration::from_secs(wear_secs),
        Duration::from_secs(60.min(wear_secs.max(1))),
        |t, b| {
            eprintln!(
                "  steady state {:>5.0} s: {b} bytes written",
                t.as_secs_f64()
            )
        },
    )
    .unwrap();
    let ticker_written = procstat::write_bytes(ticker_pid).unwrap() - ticker_before;
    let log_growth = std::fs::metadata(&ticker_log).map_or(0, |m| m.len()) - log_len_before;
    // Still 5 apps, still connected: the window was steady state.
    assert_eq!(agent.connected(), Some(true));
    for a in &apps {
        assert!(a.get("/").is_some(), "app {} stopped answering", a.name);
    }
    let (built, stripped) = agent::binary_size(&bin).unwrap();

    println!("machine: {}", machine::describe());
    println!(
        "agent binary {}: {:.2} MiB as built, {:.2} MiB stripped",
        bin.display(),
        built as f64 / 1048576.0,
        stripped as f64 / 1048576.0
    );
    println!(
        "agent RSS idle (connected, 0 apps): {} (peak {})",
        procstat::mib(idle.agent.rss_kib),
        procstat::mib(idle.agent.hwm_kib)
    );
    println!(
        "agent RSS with 5 sample apps running: {} (peak {}, incl. pulling and starting them)",
        procstat::mib(busy.agent.rss_kib),
        procstat::mib(busy.agent.hwm_kib)
    );
    for (c, name, rss) in &busy.children {
        println!(
            "  child of the agent: pid {c} ({name}) RSS {}",
            procstat::mib(*rss)
        );
    }
    println!(
        "deploy of 5 apps (pull + create + start, until all answer): {:.2} s; agent wrote {} bytes",
        deploy_time.as_secs_f64(),
        deploy_writes
    );
    println!(
        "steady state (5 apps, link up, nothing changing): {} bytes written by the agent in {:.0} s = {:.1} KiB/h = {:.3} MiB/day extrapolated",
        wear.written,
        wear.window.as_secs_f64(),
        wear.written as f64 * 3600.0 / wear.window.as_secs_f64() / 1024.0,
        wear.per_day / 1048576.0
    );
    let per_day = |b: u64| b as f64 * 86_400.0 / wear.window.as_secs_f64() / 1048576.0;
    println!(
        "app logging a line a second: its log grew {log_growth} bytes, the app's write_bytes {ticker_written} in {:.0} s",
        wear.window.as_secs_f64()
    );
    println!(
        "flash writes per day, agent state + logs: agent {:.3} MiB + app log {:.3} MiB; rotation copies each log byte once more (at 1 MiB per file), so logs cost ≈ {:.3} MiB/day",
        per_day(wear.written),
        per_day(log_growth),
        2.0 * per_day(log_growth)
    );
    running.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20));
    agent.stop_all().unwrap();
}
