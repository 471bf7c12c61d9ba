//! The real sample image, end to end through the runtime (run as root): built by
//! `images/build.sh`, imported into an `ImageStore`, prepared for this host's
//! platform and run from its unpacked layers. It answers HTTP, counts its starts
//! in a named volume that survives stop/delete/recreate, is OOM-killed by its
//! cgroup above its memory limit, and sees a declared device node but not an
//! undeclared one. `lifecycle.rs` shows the same with busybox scripts.

// Tests may unwrap; this also covers the shared `common` fixtures.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use outpost_oci::{ImageStore, PreparedImage};
use outpost_protocol::{AppSpec, DeviceNode, Digest, Platform, VolumeMount};
use outpost_runtime::{ContainerInfo, ContainerRequest, ContainerStatus, Rootfs};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Run `images/build.sh` into `out`; returns the layout directory and the index
/// digest from its last stdout line. The script serializes concurrent runs
/// itself (a lock), so a failure is a real one: no retry.
fn build_sample_layout(out: &Path) -> (PathBuf, Digest) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/build.sh");
    let output = Command::new("bash").arg(&script).arg(out).output().unwrap();
    assert!(
        output.status.success(),
        "images/build.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or_default();
    let (layout, digest) = last
        .split_once(' ')
        .unwrap_or_else(|| panic!("unexpected last line of build.sh: {last:?}"));
    (PathBuf::from(layout), digest.trim().parse().unwrap())
}

/// A runtime fixture (deletes its containers on drop, even when the test fails)
/// plus the sample image built, imported and prepared inside its temp dir. The
/// fixture's temp dir, holding the store and so the overlay lowerdirs, is
/// removed only after the containers are deleted.
struct Sample {
    f: Fixture,
    image: PreparedImage,
}

impl Sample {
    fn new() -> Sample {
        // Ended containers report their exit code only to a subreaper.
        outpost_runtime::become_subreaper().unwrap();
        let f = Fixture::new();
        let (layout, digest) = build_sample_layout(&f.tmp.path().join("layout"));
        let store = ImageStore::open(f.tmp.path().join("images"), 1 << 30).unwrap();
        let imported = store.import_layout(&layout).unwrap();
        assert!(
            imported.iter().any(|i| i.digest == digest),
            "{digest} not among the imported images {imported:?}"
        );
        let image = store.prepare(&digest, &Platform::current()).unwrap();
        assert_eq!(image.digest, digest);
        assert!(!image.layers.is_empty());
        Sample { f, image }
    }

    /// The sample app with host networking, told to listen on port 0 (it binds
    /// a free port itself; see [`Fixture::listening_port`]), its start log in
    /// the named volume `data` at `/data` (the image's `DATA_DIR`).
    fn app(&self, name: &str, version: &str) -> AppSpec {
        let image = format!("localhost/outpost/hello@{}", self.image.digest)
            .parse()
            .unwrap();
        let mut app = AppSpec::new(name, image);
        app.env.insert("PORT".into(), "0".into());
        app.env.insert("HELLO_VERSION".into(), version.into());
        app.volumes = vec![VolumeMount {
            name: "data".into(),
            container_path: "/data".into(),
            read_only: false,
        }];
        app
    }

    fn create(&self, id: &str, app: &AppSpec) -> ContainerInfo {
        self.f
            .rt
            .create(&ContainerRequest {
                id,
                app,
                image: &self.image.config,
                image_digest: self.image.digest,
                rootfs: Rootfs::Layers(self.image.layers.clone()),
                labels: BTreeMap::from([("test".to_string(), id.to_string())]),
            })
            .unwrap()
    }

    /// Start `id`, find the port it bound and wait until it answers `/health`
    /// there; returns the port. Fails with the container's log if it ends
    /// first or does not answer within [`PATIENCE`].
    fn start_and_wait_ready(&self, id: &str) -> u16 {
        self.f.rt.start(id).unwrap();
        let port = self.f.listening_port(id);
        let body = eventually(
            PATIENCE,
            &format!("{id} to answer /health on port {port}"),
            || {
                let status = self.f.status(id);
                assert!(
                    matches!(status, ContainerStatus::Running | ContainerStatus::Created),
                    "{id} ended ({status:?}) before answering; log:\n{}",
                    self.f.log(id)
                );
                match http_get(port, "/health") {
                    Some((200, body)) => Ok(body),
                    other => Err(format!("{other:?}; log:\n{}", self.f.log(id))),
                }
            },
        );
        assert_eq!(body, "ok\n");
        port
    }
}

/// `GET path` on 127.0.0.1:`port`: `(status code, body)`, or `None` when the
/// connection is refused or drops before a complete response.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(PATIENCE)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

#[test]
fn sample_image_serves_http_and_its_volume_survives_stop_delete_recreate() {
    let s = Sample::new();
    let rt = &s.f.rt;

    let app = s.app("hello", "one");
    s.create("hello-1", &app);
    let port = s.start_and_wait_ready("hello-1");
    assert_eq!(
        http_get(port, "/"),
        Some((200, "hello from outpost version one\n".into()))
    );
    assert_eq!(http_get(port, "/count"), Some((200, "1\n".into())));
    assert_eq!(
        rt.stop("hello-1", Duration::from_secs(10)).unwrap(),
        ContainerStatus::Stopped
    );
    // The image's SIGTERM handler exits 0 (as PID 1 the default would be ignored).
    assert_eq!(rt.info("hello-1").unwrap().exit_code, Some(0));
    rt.delete("hello-1").unwrap();
    assert!(rt.list().unwrap().is_empty());

    // Recreated (a new version, as an update would) with the same named volume.
    let app = s.app("hello", "two");
    s.create("hello-2", &app);
    let port = s.start_and_wait_ready("hello-2");
    assert_eq!(
        http_get(port, "/"),
        Some((200, "hello from outpost version two\n".into()))
    );
    assert_eq!(http_get(port, "/count"), Some((200, "2\n".into())));
    let on_host =
        std::fs::read_to_string(rt.volume_path("hello", "data").join("starts.log")).unwrap();
    assert_eq!(on_host.lines().count(), 2, "{on_host}");
    println!("starts.log in the volume:\n{on_host}");
}

#[test]
fn sample_image_is_oom_killed_by_its_cgroup_memory_limit() {
    let s = Sample::new();
    let rt = &s.f.rt;
    assert!(
        rt.host().memory_limits,
        "this host must support memory limits"
    );
    let limit: u64 = 32 << 20;
    let mut app = s.app("hog", "hog");
    app.resources.memory_bytes = Some(limit);
    s.create("hog-1", &app);
    let cgroup = rt.cgroup_path("hog-1");
    let set: u64 = std::fs::read_to_string(cgroup_file(
        "memory",
        "memory.max",
        "memory.limit_in_bytes",
        &cgroup,
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    assert_eq!(set, limit);

    let port = s.start_and_wait_ready("hog-1");
    assert_eq!(
        http_get(port, "/alloc?mb=4"),
        Some((200, "allocated 4 MiB\n".into())),
        "well under the limit"
    );
    assert_eq!(s.f.status("hog-1"), ContainerStatus::Running);

    // Twice the limit: the OOM killer ends the server mid-request, so no
    // successful answer arrives (the connection just drops).
    let answer = http_get(port, "/alloc?mb=64");
    assert!(
        !matches!(answer, Some((200, _))),
        "allocated 64 MiB under a {limit} byte limit: {answer:?}"
    );
    // The server is the container's init: SIGKILL is its exit status. It is
    // multi-threaded, so it is reaped only once every thread is gone
    // (`process::reap`); the first status seen after that carries the code.
    let status = s.f.wait_exit("hog-1");
    assert_eq!(
        status,
        ContainerStatus::Exited(Some(128 + 9)),
        "{}",
        s.f.log("hog-1")
    );
    // And the kill was the cgroup's OOM killer (the cgroup lives until delete).
    let file = cgroup_file("memory", "memory.events", "memory.oom_control", &cgroup);
    let counters = std::fs::read_to_string(&file).unwrap();
    let oom_kills: u64 = counters
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no oom_kill counter in {file:?}:\n{counters}"));
    assert!(oom_kills >= 1, "{file:?}:\n{counters}");
    println!(
        "memory limit {set} bytes; /alloc?mb=64 -> {answer:?}; {status:?}; oom_kill {oom_kills}"
    );
}

#[test]
fn sample_image_sees_its_declared_device_node_and_not_an_undeclared_one() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let s = Sample::new();
    let (declared, undeclared) = ("/dev/loop0", "/dev/loop1");
    let host_declared = std::fs::metadata(declared).unwrap();
    assert!(host_declared.file_type().is_block_device());
    assert!(
        Path::new(undeclared).exists(),
        "{undeclared} must exist on the host for the negative check to mean anything"
    );

    let mut app = s.app("devices", "dev");
    app.devices = vec![DeviceNode {
        host_path: declared.into(),
        container_path: declared.into(),
        permissions: "rw".into(),
    }];
    s.create("devices-1", &app);
    s.start_and_wait_ready("devices-1");

    // The image has no shell: look into the container's mount namespace from
    // the host through its init's root.
    let pid = s.f.rt.info("devices-1").unwrap().pid.unwrap();
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(
        root.join("hello").is_file(),
        "{root:?} is not the sample image's root"
    );
    let inside = std::fs::metadata(root.join("dev/loop0")).unwrap();
    assert!(inside.file_type().is_block_device());
    assert_eq!(inside.rdev(), host_declared.rdev(), "same device number");
    let missing = std::fs::symlink_metadata(root.join("dev/loop1"));
    assert_eq!(
        missing.as_ref().map_err(std::io::Error::kind).err(),
        Some(std::io::ErrorKind::NotFound),
        "{undeclared} is visible inside: {missing:?}"
    );
    println!(
        "inside pid {pid}: {declared} rdev {:#x}, {undeclared}: {missing:?}",
        inside.rdev()
    );
}

/// This architecture's numbers of the syscalls the seccomp test calls.
struct Nr {
    getpid: i64,
    socket: i64,
    personality: i64,
    keyctl: i64,
}

#[cfg(target_arch = "x86_64")]
const NR: Nr = Nr {
    getpid: 39,
    socket: 41,
    personality: 135,
    keyctl: 250,
};
#[cfg(target_arch = "aarch64")]
const NR: Nr = Nr {
    getpid: 172,
    socket: 198,
    personality: 92,
    keyctl: 219,
};
#[cfg(target_arch = "arm")]
const NR: Nr = Nr {
    getpid: 20,
    socket: 281,
    personality: 136,
    keyctl: 311,
};
/// The same number on every architecture (the unified table from 5.1 on).
const NR_CLONE3: i64 = 435;
const NR_PROCESS_MADVISE: i64 = 440;
const EPERM: i64 = 1;
const ENOSYS: i64 = 38;

/// `(ret, errno)` of one raw syscall made inside the sample app.
fn syscall_in(port: u16, query: &str) -> (i64, i64) {
    let (code, body) = http_get(port, &format!("/syscall?{query}")).unwrap();
    assert_eq!(code, 200, "{body}");
    let mut words = body.split_whitespace();
    let mut field = |name: &str| {
        assert_eq!(words.next(), Some(name), "{body}");
        words.next().and_then(|v| v.parse::<i64>().ok()).unwrap()
    };
    let ret = field("ret");
    (ret, field("errno"))
}

/// The seccomp profile is an allowlist with a default of EPERM: a Rust static
/// binary runs and serves under it, everyday syscalls work, and syscalls off
/// the list fail with EPERM (process_madvise, which the old deny-list profile
/// let through; AF_ALG sockets and personality(ADDR_NO_RANDOMIZE), filtered
/// by argument; keyctl), while clone3 answers ENOSYS so libc falls back to
/// clone.
#[test]
fn sample_image_gets_eperm_for_syscalls_outside_the_seccomp_allowlist() {
    let s = Sample::new();
    let app = s.app("probe", "probe");
    s.create("probe-1", &app);
    let port = s.start_and_wait_ready("probe-1");

    // Allowed: getpid (PID 1 in its namespace), an AF_INET socket, the
    // personality query.
    assert_eq!(syscall_in(port, &format!("nr={}", NR.getpid)), (1, 0));
    let (fd, errno) = syscall_in(port, &format!("nr={}&a=2&b=2", NR.socket));
    assert!(fd >= 0 && errno == 0, "socket(AF_INET): {fd} {errno}");
    let (persona, errno) = syscall_in(port, &format!("nr={}&a=4294967295", NR.personality));
    assert!(persona >= 0 && errno == 0, "{persona} {errno}");

    // Denied with EPERM before the kernel looks at the arguments (without the
    // filter these would fail with EBADF, or succeed).
    for (what, query) in [
        ("process_madvise", format!("nr={NR_PROCESS_MADVISE}&a=-1")),
        ("socket(AF_ALG)", format!("nr={}&a=38&b=5", NR.socket)),
        (
            "personality(ADDR_NO_RANDOMIZE)",
            format!("nr={}&a=262144", NR.personality),
        ),
        ("keyctl", format!("nr={}&a=0&b=-3", NR.keyctl)),
        ("an unassigned syscall number", "nr=1999".to_string()),
    ] {
        assert_eq!(syscall_in(port, &query), (-1, EPERM), "{what}");
    }
    assert_eq!(
        syscall_in(port, &format!("nr={NR_CLONE3}")),
        (-1, ENOSYS),
        "clone3"
    );
    // Still serving: nothing above hurt the app.
    assert_eq!(
        http_get(port, "/"),
        Some((200, "hello from outpost version probe\n".into()))
    );
}
