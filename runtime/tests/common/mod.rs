//! Shared fixtures for the runtime's end-to-end tests: a busybox root filesystem,
//! a runtime rooted in a temp dir that deletes its containers on drop, and
//! waits on containers (polling with `outpost-test-support`'s `eventually`).
#![allow(dead_code)]

use outpost_protocol::{AppSpec, Digest, ImageConfig, ImageRef};
use outpost_runtime::{
    check_host, ContainerInfo, ContainerRequest, ContainerStatus, HelperCommand, HostReport,
    Rootfs, Runtime, RuntimeConfig,
};
pub use outpost_test_support::eventually;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upper bound of every wait: only keeps a broken test from hanging; nothing
/// asserts on how long it took.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh",
    "sleep",
    "cat",
    "echo",
    "httpd",
    "dd",
    "head",
    "ls",
    "test",
    "true",
    "false",
    "mknod",
    "touch",
    "grep",
    "mount",
    "printf",
    "seq",
    "wc",
    "mkdir",
    "id",
    "hostname",
    "kill",
    "tail",
    "unshare",
    "usleep",
    "tr",
    "rm",
    "cp",
    "mv",
    "chmod",
    "sort",
    "uniq",
    "date",
    "ps",
    "find",
    "tar",
    "gzip",
    "gunzip",
    "sha256sum",
    "sed",
    "awk",
    "stat",
    "ln",
    "nice",
    "timeout",
];

/// A minimal root filesystem: static busybox plus applet symlinks.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("busybox-layer");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "www", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox"))
        .expect("busybox-static must be installed (apt-get install busybox-static)");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("www/index.html"), "hello from outpost\n").unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    root
}

pub fn image_config() -> ImageConfig {
    ImageConfig {
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
        env: vec!["PATH=/bin".into()],
        working_dir: None,
        user: None,
    }
}

pub fn digest() -> Digest {
    Digest([0x42; 32])
}

/// An app running `script` under `/bin/sh -c`.
pub fn sh_app(name: &str, script: &str) -> AppSpec {
    let image: ImageRef = format!("localhost/busybox@{}", digest()).parse().unwrap();
    let mut app = AppSpec::new(name, image);
    app.command = vec!["/bin/sh".into(), "-c".into(), script.into()];
    app
}

pub fn helper() -> HelperCommand {
    HelperCommand {
        program: PathBuf::from(env!("CARGO_BIN_EXE_outpost-runtime-helper")),
        args_prefix: vec![],
    }
}

/// A runtime config rooted at `base`, with a cgroup parent unique to `base` so
/// tests (and other runtimes on the host) never share a cgroup.
pub fn config(base: &Path) -> RuntimeConfig {
    let mut c = RuntimeConfig::new(base.join("state"), base.join("data"));
    c.helper = helper();
    let unique = base
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .replace('.', "-");
    c.cgroup_parent = format!("/outpost-test/{unique}");
    // Small enough that a test's few kilobytes of output rotate.
    c.log_policy = outpost_runtime::LogPolicy {
        max_file_bytes: 4096,
        files: 2,
        total_bytes: 1 << 20,
    };
    c
}

/// The directory of cgroup `path` in the hierarchy that holds `file` (v1
/// controller dir or the v2 root).
pub fn cgroup_file(v1_controller: &str, v2_file: &str, v1_file: &str, path: &str) -> PathBuf {
    let v1 = PathBuf::from(format!("/sys/fs/cgroup/{v1_controller}{path}/{v1_file}"));
    if v1.exists() {
        v1
    } else {
        PathBuf::from(format!("/sys/fs/cgroup{path}/{v2_file}"))
    }
}

/// A runtime in a temp dir; deletes every container it can see on drop, so a
/// failing test leaves no process, mount or cgroup behind.
pub struct Fixture {
    pub rt: Runtime,
    pub layer: PathBuf,
    pub tmp: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        Self::with_host(check_host().unwrap())
    }

    pub fn with_host(host: HostReport) -> Fixture {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("outpost_runtime=debug")
            .try_init();
        let tmp = tempfile::Builder::new()
            .prefix("outpost-rt-")
            .tempdir()
            .unwrap();
        let layer = busybox_rootfs(tmp.path());
        let rt = Runtime::with_host(config(tmp.path()), host).unwrap();
        Fixture { rt, layer, tmp }
    }

    pub fn create(&self, id: &str, app: &AppSpec) -> ContainerInfo {
        self.rt
            .create(&ContainerRequest {
                id,
                app,
                image: &image_config(),
                image_digest: digest(),
                rootfs: Rootfs::Layers(vec![self.layer.clone()]),
                labels: BTreeMap::from([("test".to_string(), id.to_string())]),
            })
            .unwrap()
    }

    pub fn run(&self, id: &str, app: &AppSpec) -> ContainerInfo {
        let info = self.create(id, app);
        self.rt.start(id).unwrap();
        info
    }

    pub fn status(&self, id: &str) -> ContainerStatus {
        self.rt.info(id).unwrap().status
    }

    /// Wait until the container is no longer running; returns its status.
    pub fn wait_exit(&self, id: &str) -> ContainerStatus {
        eventually(
            PATIENCE,
            &format!("container {id} to exit"),
            || match self.status(id) {
                s @ (ContainerStatus::Running | ContainerStatus::Created) => Err(format!("{s:?}")),
                s => Ok(s),
            },
        )
    }

    /// The port container `id` listens on: its app was told to bind port 0,
    /// and the bound port is read from `/proc` through the container's init.
    /// Fails with the container's log if it ends first.
    pub fn listening_port(&self, id: &str) -> u16 {
        eventually(PATIENCE, &format!("{id} to listen"), || {
            let info = self.rt.info(id).unwrap();
            assert!(
                matches!(
                    info.status,
                    ContainerStatus::Running | ContainerStatus::Created
                ),
                "{id} ended ({:?}) before listening; log:\n{}",
                info.status,
                self.log(id)
            );
            let pid = u32::try_from(info.pid.ok_or("no pid yet")?).map_err(|e| e.to_string())?;
            let addrs = outpost_test_support::listening_addrs(pid).map_err(|e| format!("{e:#}"))?;
            addrs
                .first()
                .map(|a| a.port())
                .ok_or_else(|| "not listening yet".to_string())
        })
    }

    pub fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.rt.log_path(id)).unwrap_or_default()
    }

    /// Wait until the container's log contains `needle`.
    pub fn wait_log(&self, id: &str, needle: &str) {
        eventually(PATIENCE, &format!("{needle:?} in the log of {id}"), || {
            self.log(id).contains(needle)
        });
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(list) = self.rt.list() {
            for c in list {
                if let Err(e) = self.rt.delete(&c.id) {
                    eprintln!("cleanup of {} failed: {e}", c.id);
                }
            }
        }
        // The per-fixture cgroup parent is empty now; remove it everywhere.
        let parent = self.rt.cgroup_path("x");
        let parent = parent.trim_end_matches("/x");
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir(format!("{}{parent}", e.path().display()));
            }
        }
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup{parent}"));
    }
}
