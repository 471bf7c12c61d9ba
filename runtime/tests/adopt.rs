//! Containers outlive the process that created them: kill -9 the creator, and a
//! fresh runtime re-adopts the running container exactly once and can stop it.

// Tests may unwrap; this also covers the shared `common` fixtures.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use outpost_protocol::VolumeMount;
use outpost_runtime::{ContainerStatus, Runtime};
use outpost_test_support::process::pid_alive;
use outpost_test_support::ProcessGuard;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const CHILD_ENV: &str = "OUTPOST_RUNTIME_TEST_CHILD_DIR";
const LAYER_ENV: &str = "OUTPOST_RUNTIME_TEST_LAYER";

fn heartbeat(rt: &Runtime) -> PathBuf {
    rt.volume_path("beater", "beat").join("count")
}

/// Child half, run by the parent test in its own process: becomes a subreaper
/// (so the container is really its child), creates and starts a container, says
/// so, then waits to be killed.
#[test]
#[ignore = "run only as the child process of killed_creator_leaves_container_running_and_a_new_process_adopts_it"]
fn child_creates_a_container_and_waits_to_be_killed() {
    let Some(base) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let base = PathBuf::from(base);
    let layer = PathBuf::from(std::env::var_os(LAYER_ENV).unwrap());
    outpost_runtime::become_subreaper().unwrap();
    let rt = Runtime::new(config(&base)).unwrap();
    let mut app = sh_app(
        "beater",
        "i=0; while true; do i=$((i+1)); echo $i > /beat/count; usleep 20000; done",
    );
    app.volumes = vec![VolumeMount {
        name: "beat".into(),
        container_path: "/beat".into(),
        read_only: false,
    }];
    rt.create(&outpost_runtime::ContainerRequest {
        id: "beater-1",
        app: &app,
        image: &image_config(),
        image_digest: digest(),
        rootfs: outpost_runtime::Rootfs::Layers(vec![layer]),
        labels: Default::default(),
    })
    .unwrap();
    rt.start("beater-1").unwrap();
    std::fs::write(base.join("ready"), "").unwrap();
    // Until killed: nothing to poll for.
    loop {
        std::thread::park();
    }
}

fn read_count(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn killed_creator_leaves_container_running_and_a_new_process_adopts_it() {
    // The fixture's Drop deletes whatever the runtime lists, so the container is
    // cleaned up even if an assertion below fails.
    let f = Fixture::new();
    let base = f.tmp.path();
    let mut child = ProcessGuard::spawn(
        "the creating child",
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_creates_a_container_and_waits_to_be_killed",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, base)
            .env(LAYER_ENV, &f.layer),
        &base.join("child.log"),
    )
    .unwrap();
    let child_pid = child.pid() as i32;
    eventually(
        PATIENCE,
        "the child to create and start the container",
        || base.join("ready").exists() || child.try_exit().is_some(),
    );
    assert!(
        base.join("ready").exists(),
        "child failed before starting the container; log:\n{}",
        child.log_text()
    );

    let before = f.rt.list().unwrap();
    assert_eq!(before.len(), 1);
    let pid = before[0].pid.unwrap();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap(),
        child_pid.to_string(),
        "the container init is the creator's child before the kill"
    );

    // SIGKILL of the creator alone (the container's init has a session of its
    // own, so the guard's group kill after the exit does not reach it).
    child.stop(nix::sys::signal::SIGKILL, PATIENCE);

    // Still running: its heartbeat keeps advancing after the creator died.
    let beat = heartbeat(&f.rt);
    let seen = read_count(&beat).unwrap_or(0);
    eventually(PATIENCE, "the heartbeat to advance after the kill", || {
        read_count(&beat).is_some_and(|n| n > seen + 2)
    });
    assert!(pid_alive(pid));

    // A fresh runtime (as a restarted agent would build) adopts it exactly once.
    let fresh = Runtime::new(config(base)).unwrap();
    let listed = fresh.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, "beater-1");
    assert_eq!(listed[0].app, "beater");
    assert_eq!(listed[0].status, ContainerStatus::Running);
    assert_eq!(listed[0].pid, Some(pid));
    assert_eq!(listed[0].image_digest, digest().to_string());

    assert_eq!(
        fresh.stop("beater-1", Duration::from_secs(1)).unwrap(),
        ContainerStatus::Stopped
    );
    assert!(!pid_alive(pid));
    let after = fresh.list().unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].status, ContainerStatus::Stopped);
    // It was not our child when it died: the exit code is honestly unknown.
    assert_eq!(after[0].exit_code, None);
    fresh.delete("beater-1").unwrap();
    assert!(fresh.list().unwrap().is_empty());
}
