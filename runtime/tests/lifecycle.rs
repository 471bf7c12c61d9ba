//! End-to-end lifecycle of real containers through libcontainer (run as root):
//! running, volumes, limits, devices, seccomp, stop semantics, logs.

// Tests may unwrap; this also covers the shared `common` fixtures.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use outpost_protocol::{DeviceNode, VolumeMount};
use outpost_runtime::{ContainerStatus, Rootfs};
use outpost_test_support::process::pid_alive;
use std::io::{Read, Write};
use std::time::Duration;

fn http_get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn container_writes_to_its_volume_and_serves_http_on_host_network() {
    let f = Fixture::new();
    // Port 0: httpd binds a free port itself; the fixture reads it back.
    let mut app = sh_app(
        "web",
        "echo written-by-$(hostname) > /data/out; exec httpd -f -p 127.0.0.1:0 -h /www",
    );
    app.volumes = vec![VolumeMount {
        name: "state".into(),
        container_path: "/data".into(),
        read_only: false,
    }];
    let info = f.run("web-1", &app);
    assert_eq!(info.app, "web");
    let port = f.listening_port("web-1");
    eventually(PATIENCE, "http answer", || {
        http_get(port).is_some_and(|r| r.contains("hello from outpost"))
    });
    let out = std::fs::read_to_string(f.rt.volume_path("web", "state").join("out")).unwrap();
    assert_eq!(out, "written-by-web\n", "hostname is the app name");
    let listed = f.rt.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, ContainerStatus::Running);
    assert_eq!(
        listed[0].labels.get("test").map(String::as_str),
        Some("web-1")
    );
    assert_eq!(
        f.rt.stop("web-1", Duration::from_secs(1)).unwrap(),
        ContainerStatus::Stopped
    );
    f.rt.delete("web-1").unwrap();
    assert!(f.rt.list().unwrap().is_empty());
}

fn volume(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        container_path: path.into(),
        read_only: false,
    }
}

#[test]
fn named_volume_survives_stop_delete_and_recreate() {
    let f = Fixture::new();
    let mut app = sh_app(
        "keeper",
        "echo run-$RUN >> /data/history; cat /data/history; sleep 1000",
    );
    app.volumes = vec![volume("data", "/data")];
    app.env.insert("RUN".into(), "one".into());
    f.run("keeper-1", &app);
    f.wait_log("keeper-1", "run-one");
    f.rt.stop("keeper-1", Duration::from_secs(1)).unwrap();
    f.rt.delete("keeper-1").unwrap();

    app.env.insert("RUN".into(), "two".into());
    f.run("keeper-2", &app);
    f.wait_log("keeper-2", "run-two");
    // The app's log spans its containers: the first run printed its history,
    // the second run printed the history the volume kept.
    assert_eq!(f.log("keeper-2"), "run-one\nrun-one\nrun-two\n");
    let on_host =
        std::fs::read_to_string(f.rt.volume_path("keeper", "data").join("history")).unwrap();
    assert_eq!(on_host, "run-one\nrun-two\n");
}

#[test]
fn memory_limit_is_enforced_by_the_cgroup() {
    outpost_runtime::become_subreaper().unwrap();
    let f = Fixture::new();
    assert!(
        f.rt.host().memory_limits,
        "this host must support memory limits"
    );
    let limit: u64 = 32 << 20;
    // dd's 64 MiB buffer is filled from /dev/zero: twice the limit.
    let mut app = sh_app(
        "hog",
        "echo allocating; exec dd if=/dev/zero of=/dev/null bs=64M count=1",
    );
    app.resources.memory_bytes = Some(limit);
    f.create("hog-1", &app);
    let set: u64 = std::fs::read_to_string(cgroup_file(
        "memory",
        "memory.max",
        "memory.limit_in_bytes",
        &f.rt.cgroup_path("hog-1"),
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    assert_eq!(set, limit);
    f.rt.start("hog-1").unwrap();
    let status = f.wait_exit("hog-1");
    let log = f.log("hog-1");
    assert!(log.contains("allocating"), "{log}");
    // dd is the container's init: the OOM killer's SIGKILL is its exit status.
    assert_eq!(status, ContainerStatus::Exited(Some(128 + 9)), "{log}");
}

#[test]
fn declared_device_is_visible_and_usable_undeclared_is_not() {
    let f = Fixture::new();
    let mut app = sh_app(
        "serial",
        "test -b /dev/loop0 && echo loop0-present; \
         (exec 3</dev/loop0) && echo loop0-opened; \
         test -e /dev/loop1 || echo loop1-absent; \
         mknod /dev/sneaky b 7 1 && echo mknod-ok; \
         (exec 3</dev/sneaky) 2>/dev/null || echo sneaky-denied; \
         echo finished",
    );
    app.devices = vec![DeviceNode {
        host_path: "/dev/loop0".into(),
        container_path: "/dev/loop0".into(),
        permissions: "rw".into(),
    }];
    f.run("serial-1", &app);
    f.wait_log("serial-1", "finished");
    let log = f.log("serial-1");
    for want in [
        "loop0-present",
        "loop0-opened",
        "loop1-absent",
        "mknod-ok",
        "sneaky-denied",
    ] {
        assert!(log.contains(want), "{want} missing from:\n{log}");
    }
}

#[test]
fn seccomp_no_new_privs_and_docker_capabilities_are_applied() {
    let f = Fixture::new();
    let app = sh_app(
        "locked",
        "grep -E '^(Seccomp|NoNewPrivs|CapBnd|CapAmb):' /proc/self/status; \
         unshare -U true 2>/dev/null || echo unshare-denied; \
         echo 1 > /proc/sys/kernel/panic 2>/dev/null || echo procsys-readonly; \
         echo finished",
    );
    f.run("locked-1", &app);
    f.wait_log("locked-1", "finished");
    let log = f.log("locked-1");
    for want in [
        "Seccomp:\t2",
        "NoNewPrivs:\t1",
        // Docker's default bounding set.
        "CapBnd:\t00000000a80425fb",
        "CapAmb:\t0000000000000000",
        "unshare-denied",
        "procsys-readonly",
    ] {
        assert!(log.contains(want), "{want:?} missing from:\n{log}");
    }
}

/// The seccomp profile is an allowlist (default: EPERM); an everyday shell
/// workload (forks, pipes, background jobs, files, archives, checksums,
/// signals) must run under it unchanged.
#[test]
fn busybox_workload_runs_under_the_seccomp_allowlist() {
    outpost_runtime::become_subreaper().unwrap();
    let f = Fixture::new();
    let app = sh_app(
        "everyday",
        "set -e; grep '^Seccomp:' /proc/self/status; \
         mkdir -p /tmp/w/sub; cd /tmp/w; echo hello > a; cp a b; mv b c; ln -s c d; chmod 600 c; \
         test \"$(cat d)\" = hello; stat -c %a c; \
         printf '3\\n1\\n3\\n2\\n' | sort | uniq | tr '\\n' ' '; echo; \
         seq 1 100 | awk '{s+=$1} END {print \"sum\", s}'; \
         sed -n 's/hel/HEL/p' a; find /tmp/w -type f | wc -l; \
         tar cf /tmp/x.tar a c && tar tf /tmp/x.tar | wc -l; \
         gzip -c a > a.gz && gunzip -c a.gz; sha256sum a | head -c 16; echo; \
         date +%Y > /dev/null; ps > /dev/null; id -u; \
         sleep 30 & pid=$!; kill $pid; wait $pid || echo killed-bg; \
         timeout 1 sleep 5 || echo timed-out; \
         (echo from-subshell); echo finished",
    );
    f.run("everyday-1", &app);
    assert_eq!(
        f.wait_exit("everyday-1"),
        ContainerStatus::Exited(Some(0)),
        "log:\n{}",
        f.log("everyday-1")
    );
    let log = f.log("everyday-1");
    for want in [
        "Seccomp:\t2",
        "600",
        "1 2 3 ",
        "sum 5050",
        "HELlo",
        "hello\n",
        "5891b5b522d5df08",
        "killed-bg",
        "timed-out",
        "from-subshell",
        "finished",
    ] {
        assert!(log.contains(want), "{want:?} missing from:\n{log}");
    }
}

/// Every container gets the default pids limit, whatever its resources say.
#[test]
fn default_pids_limit_is_written_to_the_cgroup() {
    let f = Fixture::new();
    assert!(
        f.rt.host().pids_limits,
        "this host must have the pids controller"
    );
    f.create("forker-1", &sh_app("forker", "sleep 1000"));
    let file = cgroup_file(
        "pids",
        "pids.max",
        "pids.max",
        &f.rt.cgroup_path("forker-1"),
    );
    let max = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        max.trim(),
        outpost_runtime::spec::DEFAULT_PIDS_LIMIT.to_string(),
        "{}",
        file.display()
    );
}

#[test]
fn runtime_refuses_to_create_when_seccomp_is_unavailable() {
    let mut host = outpost_runtime::check_host().unwrap();
    host.seccomp_unavailable = Some("kernel without CONFIG_SECCOMP_FILTER (test seam)".into());
    let f = Fixture::with_host(host);
    let app = sh_app("unsafe", "echo should-never-run");
    let err =
        f.rt.create(&outpost_runtime::ContainerRequest {
            id: "unsafe-1",
            app: &app,
            image: &image_config(),
            image_digest: digest(),
            rootfs: Rootfs::Layers(vec![f.layer.clone()]),
            labels: Default::default(),
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("seccomp") && msg.contains("unsafe"), "{msg}");
    assert!(f.rt.list().unwrap().is_empty());
    assert!(!f.rt.log_path("unsafe-1").parent().unwrap().exists());
}

#[test]
fn stop_sends_sigterm_then_sigkill_after_the_grace_period() {
    outpost_runtime::become_subreaper().unwrap();
    let f = Fixture::new();
    let graceful = sh_app(
        "graceful",
        "trap 'echo got-term; exit 0' TERM; echo ready; while true; do usleep 20000; done",
    );
    let stubborn = sh_app(
        "stubborn",
        "trap '' TERM; echo ready; while true; do usleep 20000; done",
    );
    f.run("graceful-1", &graceful);
    f.run("stubborn-1", &stubborn);
    f.wait_log("graceful-1", "ready");
    f.wait_log("stubborn-1", "ready");
    let stubborn_pid = f.rt.info("stubborn-1").unwrap().pid.unwrap();

    let status = f.rt.stop("graceful-1", Duration::from_secs(30)).unwrap();
    assert_eq!(status, ContainerStatus::Stopped);
    assert!(f.log("graceful-1").contains("got-term"));
    assert_eq!(f.rt.info("graceful-1").unwrap().exit_code, Some(0));

    let status = f.rt.stop("stubborn-1", Duration::from_millis(300)).unwrap();
    assert_eq!(status, ContainerStatus::Stopped);
    assert!(!pid_alive(stubborn_pid));
    let info = f.rt.info("stubborn-1").unwrap();
    assert_eq!(info.status, ContainerStatus::Stopped);
    assert_eq!(info.exit_code, Some(128 + 9), "ended by SIGKILL");
    // Stopping again is a no-op.
    assert_eq!(
        f.rt.stop("stubborn-1", Duration::from_secs(1)).unwrap(),
        ContainerStatus::Stopped
    );
}

#[test]
fn exit_code_is_reported_and_persisted() {
    outpost_runtime::become_subreaper().unwrap();
    let f = Fixture::new();
    f.run("quitter-1", &sh_app("quitter", "echo bye; exit 7"));
    assert_eq!(f.wait_exit("quitter-1"), ContainerStatus::Exited(Some(7)));
    // A fresh runtime over the same directories still knows the code.
    let again =
        outpost_runtime::Runtime::with_host(config(f.tmp.path()), f.rt.host().clone()).unwrap();
    assert_eq!(
        again.info("quitter-1").unwrap().status,
        ContainerStatus::Exited(Some(7))
    );
}

#[test]
fn logs_are_captured_and_bounded_by_rotation() {
    let f = Fixture::new();
    // The app writes one 10 kB burst per go-file the test creates, so the test
    // controls when bytes arrive and sizes are exact.
    let mut app = sh_app(
        "chatty",
        "n=0; while [ $n -lt 5 ]; do \
           while [ ! -e /ctl/go-$n ]; do usleep 5000; done; \
           head -c 10000 /dev/zero | tr '\\0' x; echo; echo burst-$n >&2; n=$((n+1)); \
         done; sleep 1000",
    );
    app.volumes = vec![volume("ctl", "/ctl")];
    f.run("chatty-1", &app);
    let ctl = f.rt.volume_path("chatty", "ctl");
    let live = f.rt.log_path("chatty-1");
    let rotated = |n: usize| outpost_runtime::logs::rotated_path(&live, n);
    let data = |p: &std::path::Path| {
        String::from_utf8(outpost_runtime::logs::read_data(p, 0).unwrap_or_default()).unwrap()
    };
    for n in 0..5 {
        std::fs::write(ctl.join(format!("go-{n}")), "").unwrap();
        f.wait_log("chatty-1", &format!("burst-{n}"));
        f.rt.rotate_logs().unwrap();
        // The writer is idle: rotation moved the burst's whole blocks into the
        // newest copy and left only the unaligned tail in the live file;
        // together they hold every byte, in order.
        assert!(outpost_runtime::logs::data_len(&live) < 4096, "round {n}");
        let both = data(&rotated(1)) + &data(&live);
        assert!(both.ends_with(&format!("burst-{n}\n")), "round {n}");
    }
    assert!(rotated(1).exists());
    assert!(!rotated(2).exists(), "only `files` files are retained");
}

#[test]
fn read_only_plain_directory_rootfs_keeps_tmp_writable() {
    let f = Fixture::new();
    let mut app = sh_app(
        "frozen",
        "touch /newfile 2>/dev/null && echo root-writable || echo root-readonly; \
         touch /tmp/scratch && echo tmp-writable; echo finished",
    );
    app.read_only_rootfs = true;
    f.rt.create(&outpost_runtime::ContainerRequest {
        id: "frozen-1",
        app: &app,
        image: &image_config(),
        image_digest: digest(),
        rootfs: Rootfs::Dir(f.layer.clone()),
        labels: Default::default(),
    })
    .unwrap();
    f.rt.start("frozen-1").unwrap();
    f.wait_log("frozen-1", "finished");
    let log = f.log("frozen-1");
    assert!(
        log.contains("root-readonly") && log.contains("tmp-writable"),
        "{log}"
    );
    assert!(!f.layer.join("newfile").exists());
}

#[test]
fn cpu_quota_is_written_to_the_cgroup() {
    let f = Fixture::new();
    let mut app = sh_app("sipper", "sleep 1000");
    app.resources.cpu_millis = Some(250);
    f.create("sipper-1", &app);
    let file = cgroup_file(
        "cpu",
        "cpu.max",
        "cpu.cfs_quota_us",
        &f.rt.cgroup_path("sipper-1"),
    );
    let quota = std::fs::read_to_string(file).unwrap();
    assert!(quota.starts_with("25000"), "{quota}");
}

#[test]
fn isolated_network_has_only_loopback() {
    let f = Fixture::new();
    let mut app = sh_app("hermit", "cat /proc/net/dev; echo finished");
    app.network = outpost_protocol::NetworkMode::Isolated;
    f.run("hermit-1", &app);
    f.wait_log("hermit-1", "finished");
    let log = f.log("hermit-1");
    let ifaces: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .filter(|n| !n.contains('|'))
        .collect();
    assert_eq!(ifaces, ["lo"], "{log}");
}

#[test]
fn leftovers_without_libcontainer_state_are_removed_and_live_containers_kept() {
    let f = Fixture::new();
    f.create("alive-1", &sh_app("alive", "sleep 1000"));
    // What a reboot leaves: a container directory whose state (tmpfs) is gone.
    let ghost = f.rt.log_path("ghost-1").parent().unwrap().to_path_buf();
    std::fs::create_dir_all(ghost.join("upper")).unwrap();
    std::fs::write(ghost.join("console.log"), "old").unwrap();
    assert_eq!(f.rt.remove_leftovers().unwrap(), ["ghost-1"]);
    assert!(!ghost.exists());
    assert!(f.rt.container_dir("alive-1").exists());
    assert_eq!(f.rt.list().unwrap().len(), 1);
}

#[test]
fn concurrent_creates_from_many_threads_all_run() {
    // The test harness is multi-threaded like the tokio agent; creates go
    // through the single-threaded helper, so parallel calls are safe.
    let f = Fixture::new();
    std::thread::scope(|s| {
        for i in 0..4 {
            let f = &f;
            s.spawn(move || {
                f.run(
                    &format!("crowd-{i}"),
                    &sh_app("crowd", &format!("echo member-{i}; sleep 1000")),
                );
            });
        }
    });
    for i in 0..4 {
        f.wait_log(&format!("crowd-{i}"), &format!("member-{i}"));
    }
    let listed = f.rt.list().unwrap();
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|c| c.status == ContainerStatus::Running));
}

#[test]
fn check_host_reports_this_hosts_cgroup_layout_and_seccomp() {
    let host = outpost_runtime::check_host().unwrap();
    // Set by the `layout_*` tests below, which hide or swap mounts.
    let forced = std::env::var(LAYOUT_ENV).ok();
    let expected = if forced.as_deref() == Some("v1") {
        outpost_runtime::CgroupVersion::V1
    } else if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        outpost_runtime::CgroupVersion::V2
    } else if std::path::Path::new("/sys/fs/cgroup/unified").exists() {
        outpost_runtime::CgroupVersion::Hybrid
    } else {
        outpost_runtime::CgroupVersion::V1
    };
    assert_eq!(host.cgroup, expected);
    assert!(host.seccomp_available(), "{host:?}");
}

/// Tells `check_host_reports_this_hosts_cgroup_layout_and_seccomp` which
/// layout the `layout_*` tests arranged.
const LAYOUT_ENV: &str = "OUTPOST_TEST_CGROUP_LAYOUT";

/// Run this test binary again, all tests but the `layout_cgroup_*` ones (and `skip`),
/// inside a private mount namespace prepared by `setup` (a shell snippet), and
/// return libtest's summary line. `None` on a host that is not hybrid: the
/// layouts are carved out of a hybrid host, and on any other the plain tests
/// already run on that host's own layout.
fn rerun_under_layout(layout: &str, setup: &str, skip: &[&str]) -> Option<String> {
    if !std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        println!("not a hybrid cgroup host; the plain lifecycle tests cover this one");
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("{setup} && exec \"$0\" \"$@\""))
        .arg(&exe)
        .args(["--skip", "layout_cgroup_"]);
    for s in skip {
        cmd.args(["--skip", s]);
    }
    let out = cmd.env(LAYOUT_ENV, layout).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lifecycle tests under the {layout} layout failed:\n{stdout}\n{stderr}"
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("test result: ok"))
        .unwrap_or_default()
        .to_string();
    println!("{layout}: {summary}");
    Some(summary)
}

/// Number of passed tests in a libtest summary line.
fn passed(summary: &str) -> usize {
    summary
        .split(". ")
        .nth(1)
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The CI machine is a hybrid host: v1 controllers plus an empty cgroup2 at
/// `/sys/fs/cgroup/unified`. Hidden in a private mount namespace, libcgroups
/// sees a pure cgroup v1 (legacy) host, so every lifecycle test runs again on
/// the v1-only code path.
#[test]
fn layout_cgroup_v1_only_runs_every_lifecycle_test() {
    let Some(summary) = rerun_under_layout("v1", "umount /sys/fs/cgroup/unified", &[]) else {
        return;
    };
    assert!(passed(&summary) >= 15, "{summary}");
}

/// The same hybrid host seen as a pure cgroup v2 host (Raspberry Pi OS'
/// layout): its cgroup2 hierarchy mounted over `/sys/fs/cgroup`. Containers
/// are created, placed and frozen through the v2 manager and device access
/// goes through the eBPF device filter. This hierarchy has no memory, cpu or
/// pids controller here (the host binds them to v1), so the three limit tests
/// are skipped; on a real v2 host the plain tests run them.
#[test]
fn layout_cgroup_v2_runs_the_lifecycle_tests_but_limits() {
    let Some(summary) = rerun_under_layout(
        "v2",
        "umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup",
        &[
            "memory_limit_is_enforced_by_the_cgroup",
            "cpu_quota_is_written_to_the_cgroup",
            "default_pids_limit_is_written_to_the_cgroup",
        ],
    ) else {
        return;
    };
    assert!(passed(&summary) >= 13, "{summary}");
}
