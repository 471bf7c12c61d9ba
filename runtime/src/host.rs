//! What the host can enforce (cgroup layout, memory controller, seccomp) and the
//! admission rule that refuses apps the host cannot confine.
//!
//! Probing reads `/proc` and `/sys`; the parsing and the admission decision are
//! pure functions, so fail-closed behaviour is tested by handing [`admit`] a
//! [`HostReport`] that says "no seccomp" instead of breaking the test host.

use outpost_protocol::AppSpec;
use serde::{Deserialize, Serialize};
use std::path::Path;

// Referencing libcontainer's seccomp module makes this crate fail to compile if
// libcontainer is ever built without its `libseccomp` feature, in which case it
// would only *warn* and run containers unfiltered (docs/dependencies.md).
#[allow(unused_imports)]
use libcontainer::seccomp::is_notify as _libseccomp_is_linked;

/// How the cgroup hierarchies are mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    /// Only v1 controllers.
    V1,
    /// v1 controllers plus a v2 mount with no controllers (systemd's "hybrid").
    Hybrid,
    /// Unified hierarchy only.
    V2,
}

/// Host facts the runtime relies on. Gathered once by [`check_host`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    pub cgroup: CgroupVersion,
    /// Whether a memory limit would be enforced by the kernel. False on
    /// Raspberry Pi OS's default `cgroup_disable=memory`.
    pub memory_limits: bool,
    /// Whether the pids controller is there to hold the default pids limit
    /// (`spec::DEFAULT_PIDS_LIMIT`). Missing on kernels without
    /// `CONFIG_CGROUP_PIDS` and on a v2 hierarchy the host did not hand it to;
    /// containers then run without the limit (a warning is logged) rather than
    /// not at all.
    #[serde(default)]
    pub pids_limits: bool,
    /// `None` when seccomp filters can be applied, otherwise why not.
    pub seccomp_unavailable: Option<String>,
}

impl HostReport {
    pub fn seccomp_available(&self) -> bool {
        self.seccomp_unavailable.is_none()
    }
}

/// What to do with an app's memory limit on a host that cannot enforce it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemoryLimitPolicy {
    /// Refuse to run the app (the default: a limit that silently does nothing
    /// is a lie to the operator).
    #[default]
    Refuse,
    /// Run it without the limit and log a warning.
    RunWithoutLimit,
}

/// The host could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot determine the cgroup setup: {0}")]
    Cgroup(String),
}

/// Why an app may not run on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("app {app:?}: refusing to run without seccomp: {why}")]
    SeccompUnavailable { app: String, why: String },
    #[error(
        "app {app:?}: asks for a {bytes}-byte memory limit but the host cannot enforce memory \
         limits (memory cgroup controller disabled; add `cgroup_enable=memory` to the kernel \
         command line)"
    )]
    MemoryLimitUnenforceable { app: String, bytes: u64 },
    #[error("app {app:?}: generated spec has no seccomp profile; refusing to run it")]
    SpecWithoutSeccomp { app: String },
}

/// The outcome of admission: how to build the spec for this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub apply_memory_limit: bool,
    /// Set the default pids limit (false where the host has no pids controller).
    pub apply_pids_limit: bool,
}

/// Decide whether `app` may run on a host described by `host`. Pure.
pub fn admit(
    app: &AppSpec,
    host: &HostReport,
    memory_policy: MemoryLimitPolicy,
) -> Result<Admission, AdmitError> {
    if let Some(why) = &host.seccomp_unavailable {
        return Err(AdmitError::SeccompUnavailable {
            app: app.name.clone(),
            why: why.clone(),
        });
    }
    let apply_memory_limit = match (app.resources.memory_bytes, host.memory_limits) {
        (Some(bytes), false) => match memory_policy {
            MemoryLimitPolicy::Refuse => {
                return Err(AdmitError::MemoryLimitUnenforceable {
                    app: app.name.clone(),
                    bytes,
                })
            }
            MemoryLimitPolicy::RunWithoutLimit => {
                tracing::warn!(
                    app = %app.name,
                    bytes,
                    "host cannot enforce memory limits; running app without one"
                );
                false
            }
        },
        _ => true,
    };
    if !host.pids_limits {
        tracing::warn!(app = %app.name, "host has no pids cgroup controller; running app without a pids limit");
    }
    Ok(Admission {
        apply_memory_limit,
        apply_pids_limit: host.pids_limits,
    })
}

/// Whether `/proc/cgroups` lists the memory controller as enabled.
pub fn memory_enabled_in_proc_cgroups(proc_cgroups: &str) -> bool {
    controller_enabled_in_proc_cgroups(proc_cgroups, "memory")
}

/// Whether `/proc/cgroups` lists `controller` as enabled.
pub fn controller_enabled_in_proc_cgroups(proc_cgroups: &str, controller: &str) -> bool {
    proc_cgroups.lines().any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.first() == Some(&controller) && cols.get(3) == Some(&"1")
    })
}

/// Whether the cgroup hierarchies the runtime will use offer `controller`:
/// its v1 mount (`v1_probe` exists) or the v2 root's `cgroup.controllers`.
fn controller_usable(
    cgroup: CgroupVersion,
    proc_cgroups: &str,
    controller: &str,
    v1_probe: &str,
) -> bool {
    controller_enabled_in_proc_cgroups(proc_cgroups, controller)
        && match cgroup {
            CgroupVersion::V1 | CgroupVersion::Hybrid => Path::new(v1_probe).exists(),
            CgroupVersion::V2 => std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
                .map(|c| c.split_whitespace().any(|x| x == controller))
                .unwrap_or(false),
        }
}

/// Why seccomp filtering is unavailable, judged from `/proc/self/status` and
/// `/proc/sys/kernel/seccomp/actions_avail` (absent on kernels without
/// `CONFIG_SECCOMP_FILTER`). `None` means usable.
pub fn seccomp_problem(status: &str, actions_avail: Option<&str>) -> Option<String> {
    if !status.lines().any(|l| l.starts_with("Seccomp:")) {
        return Some(
            "kernel built without CONFIG_SECCOMP (no Seccomp: in /proc/self/status)".into(),
        );
    }
    let Some(actions) = actions_avail else {
        return Some(
            "kernel has no seccomp filter support (/proc/sys/kernel/seccomp/actions_avail missing)"
                .into(),
        );
    };
    let actions: Vec<&str> = actions.split_whitespace().collect();
    for needed in ["errno", "allow"] {
        if !actions.contains(&needed) {
            return Some(format!("kernel seccomp lacks the {needed:?} action"));
        }
    }
    None
}

/// Inspect the running host.
pub fn check_host() -> Result<HostReport, HostError> {
    use libcgroups::common::CgroupSetup;
    let cgroup = match libcgroups::common::get_cgroup_setup()
        .map_err(|e| HostError::Cgroup(e.to_string()))?
    {
        CgroupSetup::Legacy => CgroupVersion::V1,
        CgroupSetup::Hybrid => CgroupVersion::Hybrid,
        CgroupSetup::Unified => CgroupVersion::V2,
    };
    let proc_cgroups = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    let memory_limits = controller_usable(
        cgroup,
        &proc_cgroups,
        "memory",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    );
    let pids_limits = controller_usable(
        cgroup,
        &proc_cgroups,
        "pids",
        "/sys/fs/cgroup/pids/cgroup.procs",
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let actions = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").ok();
    let report = HostReport {
        cgroup,
        memory_limits,
        pids_limits,
        seccomp_unavailable: seccomp_problem(&status, actions.as_deref()),
    };
    tracing::info!(?report, "host checked");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::ImageRef;

    fn app(memory: Option<u64>) -> AppSpec {
        let image: ImageRef = format!("r/x@sha256:{}", "ab".repeat(32)).parse().unwrap();
        let mut a = AppSpec::new("sensor", image);
        a.resources.memory_bytes = memory;
        a
    }

    fn host(memory_limits: bool, seccomp: bool) -> HostReport {
        HostReport {
            cgroup: CgroupVersion::V2,
            memory_limits,
            pids_limits: true,
            seccomp_unavailable: (!seccomp).then(|| "test says no".to_string()),
        }
    }

    #[test]
    fn admission_table() {
        use MemoryLimitPolicy::*;
        let mb = Some(64 << 20);
        // (memory asked, host memory, host seccomp, policy, expected)
        type Case = (
            Option<u64>,
            bool,
            bool,
            MemoryLimitPolicy,
            Result<bool, &'static str>,
        );
        let cases: &[Case] = &[
            (None, true, true, Refuse, Ok(true)),
            (mb, true, true, Refuse, Ok(true)),
            (mb, false, true, Refuse, Err("cgroup_enable=memory")),
            (mb, false, true, RunWithoutLimit, Ok(false)),
            (None, false, true, Refuse, Ok(true)),
            (None, true, false, Refuse, Err("without seccomp")),
            (mb, false, false, RunWithoutLimit, Err("without seccomp")),
        ];
        for (i, (mem, host_mem, sc, policy, want)) in cases.iter().enumerate() {
            let got = admit(&app(*mem), &host(*host_mem, *sc), *policy);
            match (got, want) {
                (Ok(a), Ok(apply)) => assert_eq!(a.apply_memory_limit, *apply, "case {i}"),
                (Err(e), Err(needle)) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(needle) && msg.contains("sensor"),
                        "case {i}: {msg}"
                    );
                }
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_pids_limit_follows_the_hosts_pids_controller() {
        for pids in [true, false] {
            let h = HostReport {
                pids_limits: pids,
                ..host(true, true)
            };
            let a = admit(&app(None), &h, MemoryLimitPolicy::Refuse).unwrap();
            assert_eq!(a.apply_pids_limit, pids);
        }
        let proc_cgroups =
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\npids\t5\t10\t1\nmemory\t0\t1\t0\n";
        assert!(controller_enabled_in_proc_cgroups(proc_cgroups, "pids"));
        assert!(!controller_enabled_in_proc_cgroups(proc_cgroups, "memory"));
        assert!(!controller_enabled_in_proc_cgroups(proc_cgroups, "hugetlb"));
    }

    #[test]
    fn parses_proc_cgroups() {
        let enabled =
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t2\t1\t1\nmemory\t4\t10\t1\n";
        let disabled = "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t0\t1\t0\n";
        assert!(memory_enabled_in_proc_cgroups(enabled));
        assert!(!memory_enabled_in_proc_cgroups(disabled));
        assert!(!memory_enabled_in_proc_cgroups(""));
    }

    #[test]
    fn judges_seccomp_support() {
        let status = "Name:\tx\nSeccomp:\t0\n";
        let full = "kill_process kill_thread trap errno user_notif trace log allow";
        assert_eq!(seccomp_problem(status, Some(full)), None);
        assert!(seccomp_problem("Name:\tx\n", Some(full)).is_some());
        assert!(seccomp_problem(status, None)
            .unwrap()
            .contains("actions_avail"));
        assert!(seccomp_problem(status, Some("kill allow"))
            .unwrap()
            .contains("errno"));
    }
}
