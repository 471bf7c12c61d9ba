//! A faithful power cut and boot of a device, done to the agent from outside, the
//! way the field does it: every process of the device dies by SIGKILL (the agent,
//! its create helper, every container process), the kernel's state goes (overlay
//! mounts, the tmpfs run dir, the containers' cgroups) and only the disk (the data
//! dir) is kept. Nothing here calls Outpost code: if an app comes back, it is the
//! agent's recovery that did it, not a cleanup command.
//!
//! The agent's run dir is a real tmpfs (mounted by [`mount_tmpfs`] when the fixture
//! is created), so a power cut loses it exactly as a device's `/run` does.

use anyhow::{Context, Result};
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use outpost_test_support::eventually;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Mount a fresh, empty tmpfs at `dir` (created if missing).
pub fn mount_tmpfs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("mode=0755,size=64m"),
    )
    .with_context(|| format!("mounting a tmpfs at {}", dir.display()))
}

/// Every mount point at or below `root`, deepest first (from `/proc/self/mountinfo`).
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let root = root.to_string_lossy().to_string();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces etc. as octal; our temp paths have none.
        .filter(|p| *p == root || p.starts_with(&format!("{root}/")))
        .map(PathBuf::from)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    out.dedup();
    out
}

/// Detach every mount at or below `root` (what a power cut does to the kernel's
/// mount table).
pub fn unmount_all_under(root: &Path) {
    // Stacked mounts on one point need one detach each.
    for _ in 0..4 {
        let mounts = mounts_under(root);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
    }
}

/// Pids whose command line mentions `needle` (the agent, its create helper).
fn pids_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Pids in a cgroup whose last path segment is one of `ids` (any hierarchy).
fn pids_in_cgroups(ids: &BTreeSet<String>) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .map(|t| {
                    t.lines()
                        .any(|l| l.rsplit('/').next().is_some_and(|last| ids.contains(last)))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Cgroup directories named after one of `ids`, in every mounted hierarchy.
fn cgroup_dirs(ids: &BTreeSet<String>) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: u8, ids: &BTreeSet<String>, out: &mut Vec<PathBuf>) {
        if depth == 0 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let p = e.path();
            if e.file_name().to_str().is_some_and(|n| ids.contains(n)) {
                out.push(p);
            } else {
                walk(&p, depth - 1, ids, out);
            }
        }
    }
    let mut out = vec![];
    walk(Path::new("/sys/fs/cgroup"), 4, ids, &mut out);
    out
}

/// Cut the power of the device whose files live in `device_dir` (agent config,
/// data dir, tmpfs run dir) and whose containers are `containers` (their ids):
/// SIGKILL every process, drop the kernel state, keep the disk. The tmpfs run
/// dir comes back empty, as at boot. Call with the agent's own process handle
/// already killed or not: every process is found from outside.
pub fn power_cut(device_dir: &Path, run_dir: &Path, containers: &BTreeSet<String>) -> Result<()> {
    let needle = device_dir.to_string_lossy().to_string();
    eventually(
        Duration::from_secs(30),
        "every process of the device to die by SIGKILL",
        || {
            let mut victims = pids_mentioning(&needle);
            victims.extend(pids_in_cgroups(containers));
            for pid in &victims {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            if victims.is_empty() {
                Ok(())
            } else {
                Err(format!("processes {victims:?} survived SIGKILL"))
            }
        },
    );
    // Killed processes leave the cgroup once reaped; the test harness reaps the
    // agent, PID 1 or the agent's subreaper the rest. Cgroups do not survive a
    // reboot, so remove them (retry while the last zombies go). Best effort, so
    // not `eventually`: a cgroup that stays is left to the agent's cleanup.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<PathBuf> = cgroup_dirs(containers)
            .into_iter()
            .filter(|d| std::fs::remove_dir(d).is_err())
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unmount_all_under(device_dir);
    mount_tmpfs(run_dir)?;
    Ok(())
}
