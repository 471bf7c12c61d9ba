//! The container lifecycle: create, start, stop, delete, list (re-adoption) and
//! log rotation, on top of libcontainer's state directory. `stop`, `list` and
//! `info` live in [`mod@observe`].
//!
//! All calls are blocking; the agent runs them in `spawn_blocking`. Nothing here
//! keeps per-container state in memory: every call reads libcontainer's state
//! directory and the runtime's side files, so a freshly started agent sees
//! exactly what a killed one left behind.

use crate::helper::{CreateRequest, CREATE_ARG};
use crate::host::{admit, Admission, AdmitError, HostReport, MemoryLimitPolicy};
use crate::meta::{ContainerMeta, MetaError};
use crate::process::{observe, read_stat};
use crate::rootfs::{self, Rootfs, RootfsError};
use crate::spec::{self, DeviceKind, ResolvedDevice, SpecError, SpecInputs};
use libcontainer::container::Container;
use libcontainer::error::LibcontainerError;
use outpost_protocol::{AppSpec, Digest, ImageConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the runtime keeps things.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// libcontainer's state root (one dir per container). Best on tmpfs
    /// (`/run/outpost/containers`): containers do not survive a reboot either.
    pub state_dir: PathBuf,
    /// Persistent data: `containers/<id>/` (bundle, overlay upper, logs, side
    /// file) and `volumes/<app>/<volume>/`.
    pub data_dir: PathBuf,
    /// The helper that performs create (see [`crate::helper`]).
    pub helper: HelperCommand,
    pub memory_policy: MemoryLimitPolicy,
    /// Where each app's stdout/stderr go (`<app>.log`, rotated `<app>.log.N`),
    /// kept across container replacements and reboots. Default `data_dir/logs`.
    pub logs_dir: PathBuf,
    /// Rotation sizes for [`Runtime::rotate_logs`].
    pub log_policy: crate::logs::LogPolicy,
    /// Parent of every container's cgroup (`<parent>/<id>` in each hierarchy).
    /// Two runtimes on one host (tests) need different parents, or equal ids
    /// would share a cgroup.
    pub cgroup_parent: String,
    /// Where the agent writes each container's opened secrets
    /// (`<dir>/<container id>/<secret name>`); must be a tmpfs. `None`: an
    /// app with secrets is refused.
    pub secrets_dir: Option<PathBuf>,
}

/// How to run the create helper: `program args_prefix.. create <json>`.
#[derive(Debug, Clone)]
pub struct HelperCommand {
    pub program: PathBuf,
    /// Arguments before `create`, for binaries hosting the helper as a subcommand.
    pub args_prefix: Vec<String>,
}

impl HelperCommand {
    /// `outpost-runtime-helper` installed next to the current executable.
    pub fn next_to_current_exe() -> Self {
        let program = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("outpost-runtime-helper")))
            .unwrap_or_else(|| PathBuf::from("outpost-runtime-helper"));
        HelperCommand {
            program,
            args_prefix: vec![],
        }
    }
}

impl RuntimeConfig {
    pub fn new(state_dir: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        RuntimeConfig {
            state_dir: state_dir.into(),
            logs_dir: data_dir.join("logs"),
            log_policy: crate::logs::LogPolicy::default(),
            data_dir,
            helper: HelperCommand::next_to_current_exe(),
            memory_policy: MemoryLimitPolicy::default(),
            cgroup_parent: "/outpost".to_string(),
            secrets_dir: None,
        }
    }
}

/// What to create.
#[derive(Debug, Clone)]
pub struct ContainerRequest<'a> {
    /// Container id: 1-128 of `[A-Za-z0-9_.-]`, not starting with '.'.
    pub id: &'a str,
    pub app: &'a AppSpec,
    pub image: &'a ImageConfig,
    pub image_digest: Digest,
    pub rootfs: Rootfs,
    /// Free-form labels stored with the container (e.g. generation).
    pub labels: BTreeMap<String, String>,
}

/// Lifecycle state as the runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Created, process waiting to be started.
    Created,
    Running,
    /// Ended after the runtime's `stop()`.
    Stopped,
    /// Ended on its own. `None`: the exit code is unknown because the process
    /// was not our child when it died (e.g. the agent restarted meanwhile or is
    /// not a subreaper).
    Exited(Option<i32>),
}

/// One container the runtime knows about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub app: String,
    pub image_digest: String,
    pub spec_hash: String,
    /// Host PID of the init process, while it may be running.
    pub pid: Option<i32>,
    pub status: ContainerStatus,
    /// Exit code once ended, if known (also for `Stopped`: 137 means SIGKILL).
    pub exit_code: Option<i32>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cgroup parent {0:?} must be an absolute path of safe segments, e.g. /outpost")]
    BadCgroupParent(String),
    #[error("container id {0:?} is invalid: use 1-128 of A-Z a-z 0-9 _ . - not starting with '.'")]
    BadId(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error(transparent)]
    InvalidApp(#[from] outpost_protocol::ValidationError),
    #[error(transparent)]
    Admit(#[from] AdmitError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Log(#[from] crate::logs::LogError),
    #[error("app {app:?}: device {path:?}: {why}")]
    Device {
        app: String,
        path: String,
        why: String,
    },
    #[error("app {app:?}: secret {secret:?} has no opened file at {path:?}")]
    SecretMissing {
        app: String,
        secret: String,
        path: PathBuf,
    },
    #[error(
        "secret {secret:?} of app {app:?} cannot be the environment variable {var:?}: \
         its value is not UTF-8 text without NUL; mount it as a file"
    )]
    SecretNotText {
        app: String,
        secret: String,
        var: String,
    },
    #[error("app {app:?} mounts secrets, but this runtime has no secrets dir")]
    NoSecretsDir { app: String },
    #[error("{action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("create helper {program:?} for container {id:?} failed: {detail}")]
    Helper {
        program: PathBuf,
        id: String,
        detail: String,
    },
    #[error("container {id:?}: libcontainer {action} failed: {source}")]
    Libcontainer {
        id: String,
        action: &'static str,
        #[source]
        source: Box<LibcontainerError>,
    },
    #[error("container {id:?} still has a live init process {pid} after SIGKILL")]
    Unkillable { id: String, pid: i32 },
}

type Result<T, E = RuntimeError> = std::result::Result<T, E>;

pub mod observe;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Io {
        action,
        path,
        source,
    }
}

/// Validate an id before it becomes a path component and a cgroup name.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// The container runtime. Cheap to construct; holds no container state.
#[derive(Debug, Clone)]
pub struct Runtime {
    config: RuntimeConfig,
    host: HostReport,
}

impl Runtime {
    /// Probe the host and prepare the directories.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let host = crate::host::check_host().map_err(|e| RuntimeError::Io {
            action: "check host",
            path: PathBuf::from("/sys/fs/cgroup"),
            source: std::io::Error::other(e.to_string()),
        })?;
        Self::with_host(config, host)
    }

    /// Use host facts gathered elsewhere. The seam for testing fail-closed
    /// behaviour: a report saying "no seccomp" makes every create refuse.
    pub fn with_host(config: RuntimeConfig, host: HostReport) -> Result<Self> {
        let parent = &config.cgroup_parent;
        if !outpost_protocol::manifest::is_safe_abs_path(parent)
            || parent.split('/').skip(1).any(|seg| !valid_id(seg))
        {
            return Err(RuntimeError::BadCgroupParent(parent.clone()));
        }
        for dir in [
            &config.state_dir,
            &config.data_dir.join("containers"),
            &config.data_dir.join("volumes"),
            &config.logs_dir,
        ] {
            std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        Ok(Runtime { config, host })
    }

    /// The container's cgroup path relative to each hierarchy's root.
    pub fn cgroup_path(&self, id: &str) -> String {
        format!("{}/{id}", self.config.cgroup_parent)
    }

    pub fn host(&self) -> &HostReport {
        &self.host
    }

    /// The container's directory: bundle, side file, overlay upper/work dirs.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("containers").join(id)
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.config.state_dir.join(id)
    }

    /// Where `app`'s stdout/stderr go (rotated copies `<app>.log.1`…).
    pub fn app_log_path(&self, app: &str) -> PathBuf {
        self.config.logs_dir.join(format!("{app}.log"))
    }

    /// The log of container `id` (its app's log); for a container without a
    /// side file, where a create that failed early would have logged.
    pub fn log_path(&self, id: &str) -> PathBuf {
        match ContainerMeta::load(&self.container_dir(id)) {
            Ok(meta) => self.app_log_path(&meta.app),
            Err(_) => self.container_dir(id).join("console.log"),
        }
    }

    /// Directory holding `app`'s named volume `volume`.
    pub fn volume_path(&self, app: &str, volume: &str) -> PathBuf {
        self.config.data_dir.join("volumes").join(app).join(volume)
    }

    /// The host side of `app`'s update-lock directory, mounted read-write at
    /// [`crate::spec::LOCK_MOUNT`] in each of its containers: the app takes
    /// the update lock by flocking [`crate::spec::LOCK_FILE`] in it. Keyed by
    /// app, so the lock outlives container replacement.
    pub fn lock_dir(&self, app: &str) -> PathBuf {
        self.config.data_dir.join("locks").join(app)
    }

    /// Create a container (not started). On failure nothing is left behind.
    pub fn create(&self, req: &ContainerRequest<'_>) -> Result<ContainerInfo> {
        let id = req.id;
        if !valid_id(id) {
            return Err(RuntimeError::BadId(id.to_string()));
        }
        let dir = self.container_dir(id);
        if self.state_path(id).join("state.json").exists() {
            return Err(RuntimeError::Exists(id.to_string()));
        }
        if dir.exists() || self.state_path(id).exists() {
            // No live state but a directory: what a reboot (state dir on tmpfs,
            // container dirs on disk), a killed agent container on balenaOS or
            // a create cut short leaves. Nothing runs there; reclaim it so the
            // same container can be created again.
            tracing::info!(app = %req.app.name, container = id, "reclaiming a leftover container directory without live state");
            self.delete(id)?;
        }
        // The agent validated the manifest already; checking again here keeps a
        // hand-built AppSpec from putting '..' paths into mounts.
        req.app.validate()?;
        let admission = admit(req.app, &self.host, self.config.memory_policy)?;
        let devices = resolve_devices(req.app)?;
        std::fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let result = self.create_in(req, &dir, &devices, admission);
        if result.is_err() {
            // Undo everything, including a container libcontainer may already
            // have created. Best effort: the error being returned is the one
            // that matters.
            if let Err(e) = self.delete(id) {
                tracing::warn!(app = %req.app.name, container = id, error = %e, "cleanup after failed create");
            }
        }
        result
    }

    fn create_in(
        &self,
        req: &ContainerRequest<'_>,
        dir: &Path,
        devices: &[ResolvedDevice],
        admission: Admission,
    ) -> Result<ContainerInfo> {
        let app = req.app;
        let id = req.id;
        for v in &app.volumes {
            let path = self.volume_path(&app.name, &v.name);
            std::fs::create_dir_all(&path).map_err(io_err("create volume", &path))?;
        }
        let lock_dir = self.lock_dir(&app.name);
        std::fs::create_dir_all(&lock_dir).map_err(io_err("create lock dir", &lock_dir))?;
        let rootfs_path = match &req.rootfs {
            Rootfs::Layers(layers) => {
                let target = dir.join("rootfs");
                rootfs::mount_overlay(layers, &dir.join("upper"), &dir.join("work"), &target)?;
                target
            }
            Rootfs::Dir(path) => {
                std::fs::canonicalize(path).map_err(|source| RootfsError::BadDir {
                    path: path.clone(),
                    source,
                })?
            }
        };
        let secrets_dir = self.container_secrets_dir(app, id)?;
        let secret_env = secret_env(app, secrets_dir.as_deref())?;
        let cgroups_path = self.cgroup_path(id);
        let spec = spec::generate(&SpecInputs {
            app,
            image: req.image,
            image_digest: &req.image_digest,
            rootfs: &rootfs_path,
            volumes_dir: &self.config.data_dir.join("volumes").join(&app.name),
            lock_dir: Some(&lock_dir),
            secrets_dir: secrets_dir.as_deref(),
            secret_env: &secret_env,
            devices,
            cgroups_path: &cgroups_path,
            labels: &req.labels,
            apply_memory_limit: admission.apply_memory_limit,
            apply_pids_limit: admission.apply_pids_limit,
        })?;
        // Fail closed: never hand libcontainer a spec without a filter.
        if spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .is_none()
        {
            return Err(AdmitError::SpecWithoutSeccomp {
                app: app.name.clone(),
            }
            .into());
        }
        // A spec holding a secret's value (an environment variable) is kept
        // on the secrets tmpfs, next to the secret files, never on the data
        // disk; it goes with them when the container is deleted. Secret
        // names are DNS labels, so `.bundle` is never one of them.
        let bundle = match (&secrets_dir, secret_env.is_empty()) {
            (Some(s), false) => s.join(".bundle"),
            _ => dir.join("bundle"),
        };
        std::fs::create_dir_all(&bundle).map_err(io_err("create directory", &bundle))?;
        let config_path = bundle.join("config.json");
        let json = serde_json::to_vec_pretty(&spec).map_err(|e| RuntimeError::Io {
            action: "serialize",
            path: config_path.clone(),
            source: e.into(),
        })?;
        std::fs::write(&config_path, json).map_err(io_err("write", &config_path))?;

        let mut meta = ContainerMeta {
            id: id.to_string(),
            app: app.name.clone(),
            image_digest: req.image_digest.to_string(),
            spec_hash: spec::spec_hash(app, req.image, &req.image_digest)?,
            labels: req.labels.clone(),
            rootfs: req.rootfs.clone(),
            init_start_time: None,
            exit_code: None,
            stopped_by_runtime: false,
        };
        meta.save(dir)?;

        self.run_helper(&CreateRequest {
            state_dir: self.config.state_dir.clone(),
            id: id.to_string(),
            bundle,
            log: self.app_log_path(&app.name),
        })?;
        let container = self.load(id)?;
        let pid = container.pid().map(|p| p.as_raw());
        meta.init_start_time = pid.and_then(read_stat).map(|s| s.start_time);
        meta.save(dir)?;
        tracing::info!(app = %app.name, container = id, ?pid, "container created");
        Ok(ContainerInfo {
            id: id.to_string(),
            app: meta.app,
            image_digest: meta.image_digest,
            spec_hash: meta.spec_hash,
            pid,
            status: ContainerStatus::Created,
            exit_code: None,
            labels: meta.labels,
        })
    }

    fn run_helper(&self, req: &CreateRequest) -> Result<()> {
        let helper = &self.config.helper;
        let fail = |detail: String| RuntimeError::Helper {
            program: helper.program.clone(),
            id: req.id.clone(),
            detail,
        };
        let json = serde_json::to_string(req).map_err(|e| fail(e.to_string()))?;
        // The app's log holds earlier runs too: only what this create adds
        // explains its failure.
        let log_before = std::fs::metadata(&req.log).map_or(0, |m| m.len());
        let out = std::process::Command::new(&helper.program)
            .args(&helper.args_prefix)
            .arg(CREATE_ARG)
            .arg(json)
            .stdin(std::process::Stdio::null())
            // Never inherit a transient working directory (see `start`).
            .current_dir("/")
            .output()
            .map_err(|e| fail(format!("cannot run it: {e}")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            tracing::debug!(container = %req.id, %stderr, "create helper failed");
            // The helper's summary ("error:" / "caused by:") plus libcontainer's
            // own ERROR log lines, which name the step that failed.
            // The container's init logs its own failure (e.g. a mount it could
            // not do) into the container log, not the helper's stderr.
            let console = crate::logs::read_data(&req.log, log_before)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let summary: Vec<&str> = stderr
                .lines()
                .chain(console.lines().filter(|l| l.contains("libcontainer")))
                .filter(|l| {
                    l.starts_with("error:")
                        || l.trim_start().starts_with("caused by:")
                        || l.contains("ERROR")
                })
                .collect();
            let detail = if summary.is_empty() {
                format!("{}: {}", out.status, stderr.trim())
            } else {
                summary.join(" ")
            };
            return Err(fail(detail));
        }
        Ok(())
    }

    fn load(&self, id: &str) -> Result<Container> {
        let path = self.state_path(id);
        if !path.join("state.json").exists() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        Container::load(path).map_err(|source| RuntimeError::Libcontainer {
            id: id.to_string(),
            action: "load state",
            source: Box::new(source),
        })
    }

    /// Start a created container.
    pub fn start(&self, id: &str) -> Result<()> {
        let mut container = self.load(id)?;
        {
            // libcontainer's start chdirs into the container's state directory
            // to reach its notify socket by a short relative name, then back.
            // The working directory is process-wide: two concurrent starts
            // could each connect to the other's socket (one container started
            // twice, the other never), and a helper spawned meanwhile would
            // inherit a directory that is deleted later. One start at a time.
            static START: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one_at_a_time = START.lock().unwrap_or_else(|p| p.into_inner());
            container
                .start()
                .map_err(|source| RuntimeError::Libcontainer {
                    id: id.to_string(),
                    action: "start",
                    source: Box::new(source),
                })?;
        }
        tracing::info!(container = id, "container started");
        Ok(())
    }

    /// Remove a container: kill what still runs, delete libcontainer's state and
    /// cgroup, unmount the overlay and remove the container directory (logs
    /// included; volumes stay). Deleting an unknown id is a no-op.
    /// `<secrets_dir>/<id>` when the app mounts secrets, after checking
    /// every file is there (the agent writes them before `create`).
    fn container_secrets_dir(&self, app: &AppSpec, id: &str) -> Result<Option<PathBuf>> {
        if app.secrets.is_empty() {
            return Ok(None);
        }
        let dir = self
            .config
            .secrets_dir
            .as_ref()
            .ok_or_else(|| RuntimeError::NoSecretsDir {
                app: app.name.clone(),
            })?
            .join(id);
        for s in &app.secrets {
            let path = dir.join(&s.name);
            if !path.is_file() {
                return Err(RuntimeError::SecretMissing {
                    app: app.name.clone(),
                    secret: s.name.clone(),
                    path,
                });
            }
        }
        Ok(Some(dir))
    }

    pub fn delete(&self, id: &str) -> Result<()> {
        if !valid_id(id) {
            return Err(RuntimeError::BadId(id.to_string()));
        }
        let dir = self.container_dir(id);
        if self.state_path(id).join("state.json").exists() {
            let mut container = self.load(id)?;
            if let (Some(pid), Ok(meta)) = (container.pid(), ContainerMeta::load(&dir)) {
                // Reap our zombie child first so it does not linger.
                let _ = observe(pid.as_raw(), meta.init_start_time);
            }
            container
                .delete(true)
                .map_err(|source| RuntimeError::Libcontainer {
                    id: id.to_string(),
                    action: "delete",
                    source: Box::new(source),
                })?;
        } else {
            if self.state_path(id).exists() {
                // A create that died before libcontainer wrote its state.
                let p = self.state_path(id);
                std::fs::remove_dir_all(&p).map_err(io_err("remove", &p))?;
            }
            // No live state: whatever still runs in the container's cgroup is
            // beyond libcontainer's reach (see `crate::orphans`).
            if dir.exists() {
                crate::orphans::kill_and_remove(&self.cgroup_path(id))
                    .map_err(io_err("reclaim cgroup of", &dir))?;
            }
        }
        rootfs::unmount(&dir.join("rootfs"))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
        }
        if let Some(secrets) = self.config.secrets_dir.as_ref().map(|d| d.join(id)) {
            if secrets.exists() {
                std::fs::remove_dir_all(&secrets).map_err(io_err("remove", &secrets))?;
            }
        }
        tracing::info!(container = id, "container deleted");
        Ok(())
    }

    /// Remove container directories that have no libcontainer state, i.e. left
    /// by a reboot (the state dir is on tmpfs) or a crash in the middle of
    /// `create`. Call at agent start, before any `create`: a create in progress
    /// looks exactly like such a leftover. Returns the removed ids.
    pub fn remove_leftovers(&self) -> Result<Vec<String>> {
        let root = self.config.data_dir.join("containers");
        let entries = std::fs::read_dir(&root).map_err(io_err("list", &root))?;
        let mut removed = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let Ok(id) = entry.file_name().into_string() else {
                continue;
            };
            if !valid_id(&id) || self.state_path(&id).join("state.json").exists() {
                continue;
            }
            tracing::info!(container = %id, "removing leftover container directory");
            self.delete(&id)?;
            removed.push(id);
        }
        Ok(removed)
    }

    /// Rotate every app log over the policy's file size (without losing a
    /// byte, see [`crate::logs`]) and keep all logs under its total. Call
    /// periodically; cheap when nothing is due (one `stat` per app).
    pub fn rotate_logs(&self) -> Result<()> {
        let policy = self.config.log_policy;
        let root = &self.config.logs_dir;
        let entries = std::fs::read_dir(root).map_err(io_err("list", root))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                if let Err(e) =
                    crate::logs::rotate_if_larger(&path, policy.max_file_bytes, policy.files)
                {
                    tracing::warn!(error = %e, "log rotation failed");
                }
            }
        }
        crate::logs::enforce_total(root, policy.total_bytes)?;
        Ok(())
    }
}

/// Stat each declared host device node.
fn resolve_devices(app: &AppSpec) -> Result<Vec<ResolvedDevice>> {
    use nix::sys::stat::{major, minor, stat, SFlag};
    app.devices
        .iter()
        .map(|d| {
            let bad = |why: String| RuntimeError::Device {
                app: app.name.clone(),
                path: d.host_path.clone(),
                why,
            };
            let st = stat(d.host_path.as_str()).map_err(|e| bad(e.to_string()))?;
            let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            let kind = if fmt == SFlag::S_IFCHR {
                DeviceKind::Char
            } else if fmt == SFlag::S_IFBLK {
                DeviceKind::Block
            } else {
                return Err(bad("is not a character or block device".into()));
            };
            Ok(ResolvedDevice {
                container_path: d.container_path.clone(),
                kind,
                major: major(st.st_rdev),
                minor: minor(st.st_rdev),
                file_mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                access: d.permissions.clone(),
            })
        })
        .collect()
}

/// The values of `app`'s secrets that are environment variables
/// (`env:NAME`), read from the files the agent opened into `dir` (tmpfs).
fn secret_env(app: &AppSpec, dir: Option<&Path>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Some(dir) = dir else {
        return Ok(out);
    };
    for s in &app.secrets {
        let Some(var) = s.env_var() else { continue };
        let path = dir.join(&s.name);
        let bytes = std::fs::read(&path).map_err(io_err("read secret", &path))?;
        let text = String::from_utf8(bytes)
            .ok()
            .filter(|t| !t.contains('\0'))
            .ok_or_else(|| RuntimeError::SecretNotText {
                app: app.name.clone(),
                secret: s.name.clone(),
                var: var.to_string(),
            })?;
        out.insert(var.to_string(), text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_path_components() {
        for ok in ["web-1", "a", "A_b.c", &"x".repeat(128)] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            &"x".repeat(129),
            "é",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
