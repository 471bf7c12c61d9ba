//! Processes a container left behind when its runtime state was lost.
//!
//! libcontainer's state lives in the run dir (tmpfs). When that dir is lost but
//! the container's processes are not — the agent's own container restarted on
//! balenaOS (`pid: host`, a fresh tmpfs), or someone emptied the run dir — those
//! processes can no longer be stopped, observed or adopted through libcontainer.
//! They still sit in the container's cgroup (`<parent>/<id>` in every hierarchy),
//! which is named after the container id and so can be found from the id alone.
//! Reclaiming such a container kills them (a replacement is about to start
//! with the same id, ports and volumes) and removes the empty cgroups.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Mount points of every cgroup hierarchy (v1 controllers, v2 or hybrid).
fn cgroup_mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    cgroup_mounts_in(&text)
}

/// Pure part of [`cgroup_mounts`]: mount points whose file-system type is
/// `cgroup` or `cgroup2` in a mountinfo text.
fn cgroup_mounts_in(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(dash + 1)?;
            let point = fields.get(4)?;
            (*fstype == "cgroup" || *fstype == "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

fn procs(cgroup: &Path) -> Vec<i32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILL every process in the cgroup `relative` (e.g. `/outpost/<id>`) of every
/// hierarchy, wait (bounded) for them to leave, and remove the cgroup
/// directories. Returns how many processes were killed. Best effort: a cgroup
/// that does not exist is fine; one that cannot be emptied is reported.
pub fn kill_and_remove(relative: &str) -> Result<usize, std::io::Error> {
    let rel = relative.trim_start_matches('/');
    let dirs: Vec<PathBuf> = cgroup_mounts()
        .into_iter()
        .map(|m| m.join(rel))
        .filter(|d| d.is_dir())
        .collect();
    let mut killed = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live: Vec<i32> = dirs.iter().flat_map(|d| procs(d)).collect();
        if live.is_empty() {
            break;
        }
        for pid in live {
            if killed.insert(pid) {
                tracing::warn!(
                    pid,
                    cgroup = relative,
                    "killing a process of a container whose runtime state was lost"
                );
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "processes of cgroup {relative} survived SIGKILL for 10 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Child cgroups first (libcontainer creates none, but an app might).
    for d in &dirs {
        remove_tree(d);
    }
    Ok(killed.len())
}

fn remove_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    // Emptied just above; a cgroup with a zombie still being reaped may refuse
    // for a moment, which only leaves an empty directory behind.
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_v2_and_hybrid_cgroup_mounts_only() {
        let text = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/memory rw shared:9 - cgroup cgroup rw,memory
28 30 0:25 / /proc rw - proc proc rw
";
        assert_eq!(
            cgroup_mounts_in(text),
            [
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/memory")
            ]
        );
        assert!(cgroup_mounts_in("garbage\n\n").is_empty());
    }
}
