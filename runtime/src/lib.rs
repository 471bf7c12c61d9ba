//! Container runtime for Outpost apps: OCI runtime spec generation from an `AppSpec`
//! and lifecycle (create, start, stop, delete, adopt) through youki's libcontainer,
//! with no container daemon.
//!
//! # Layout
//! - [`spec`]: pure `AppSpec` + `ImageConfig` → OCI runtime spec (process merge,
//!   mounts, volumes, devices and device cgroup rules, limits, capabilities,
//!   masked paths) and [`spec::spec_hash`] identifying what a container runs.
//! - [`seccomp`]: the default seccomp profile (an allowlist with Docker's default
//!   profile semantics).
//! - [`caps`]: the default capability set (read by `spec` and `seccomp`).
//! - [`host`]: [`check_host`] (cgroup version, memory limits, seccomp) and the pure
//!   admission rule [`host::admit`] that fails closed without seccomp.
//! - [`rootfs`]: overlayfs over unpacked layers, or a plain directory.
//! - [`logs`]: per-app `O_APPEND` log files, rotation that loses no byte
//!   (collapse or punch the copied head), a cap over all apps' logs.
//! - [`process`]: observing/reaping init processes robustly to PID reuse.
//! - [`meta`]: the per-container side file.
//! - [`orphans`]: killing what still runs in a container's cgroup after its
//!   runtime state was lost (reclaiming a leftover container).
//! - [`helper`]: the single-threaded helper process that runs libcontainer's
//!   create (binary `outpost-runtime-helper`).
//! - [`runtime`]: [`Runtime`] with `create`, `start`, `delete`, `remove_leftovers`,
//!   `log_path`, `rotate_logs`; [`runtime::observe`]: `stop`, `list`, `info`.
//!
//! # Public API (sync; call from `spawn_blocking`)
//! ```text
//! let rt = Runtime::new(RuntimeConfig::new("/run/outpost/containers", "/var/lib/outpost"))?;
//! rt.host();                 // HostReport { cgroup, memory_limits, seccomp_unavailable }
//! rt.remove_leftovers()?;    // once at start: dirs a reboot or crashed create left
//! rt.create(&ContainerRequest { id, app, image, image_digest, rootfs: Rootfs::Layers(dirs), labels })?;
//! rt.start(id)?;  rt.stop(id, grace)?;  rt.delete(id)?;
//! rt.list()?  // Vec<ContainerInfo { id, app, image_digest, spec_hash, pid, status, exit_code, labels }>
//! rt.info(id)?; rt.log_path(id); rt.app_log_path(app); rt.volume_path(app, volume);
//! rt.rotate_logs()?;         // RuntimeConfig::log_policy, periodically
//! spec::spec_hash(app, image, digest)  // compare with ContainerInfo::spec_hash to detect drift
//! ```
//! `RuntimeConfig` also sets the create helper, the memory-limit policy on hosts
//! that cannot enforce limits, and the cgroup parent (default `/outpost`).
//!
//! # Processes and detachment
//! `create` execs the helper ([`RuntimeConfig::helper`], by default
//! `outpost-runtime-helper` next to the current executable) because libcontainer
//! clones the calling process, which is unsafe from a multi-threaded tokio agent.
//! `start`/`stop`/`delete`/`list` only signal processes and edit files, so they run
//! in-process. Container inits are orphaned when the helper exits: they belong to
//! the agent only if it called [`become_subreaper`] (then exit codes are
//! reported), otherwise to PID 1. Either way, killing the agent (even with
//! SIGKILL) leaves containers running, and a new `Runtime` finds them in
//! `state_dir`. Exit codes of containers that ended while not our children are
//! reported as `Exited(None)`.
//!
//! # Directories
//! - `state_dir/<id>/`: libcontainer's state (put it on tmpfs).
//! - `data_dir/containers/<id>/`: `bundle/config.json`, `meta.json`, overlay
//!   `upper/`, `work/`, `rootfs/` mount point.
//! - `logs_dir/<app>.log[.N]` (default `data_dir/logs`): each app's output,
//!   across containers and reboots.
//! - `data_dir/volumes/<app>/<volume>/`: named volumes, never removed by the runtime.
//!
//! # Cgroups
//! Containers live under `/outpost/<id>` in every hierarchy (v1, hybrid or v2;
//! v2 device rules through eBPF via libcontainer's `cgroupsv2_devices`). No
//! systemd driver.

pub mod caps;
pub mod helper;
pub mod host;
pub mod logs;
pub mod meta;
pub mod orphans;
pub mod process;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod spec;

pub use host::{check_host, CgroupVersion, HostReport, MemoryLimitPolicy};
pub use logs::LogPolicy;
pub use process::become_subreaper;
pub use rootfs::Rootfs;
pub use runtime::{
    ContainerInfo, ContainerRequest, ContainerStatus, HelperCommand, Runtime, RuntimeConfig,
    RuntimeError,
};
