//! Child processes a test starts: [`ProcessGuard`] owns one (its output in a log
//! file, in a process group of its own) and on drop kills the whole group and
//! reaps the child, so a failing test leaves nothing running. [`run`] runs a
//! command that must succeed and says why it did not.
//!
//! Containers started by an agent under a guard are not in its group (their
//! init starts a session of its own), so killing an agent's group is what a
//! crash does, not a cleanup of its apps.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A running child process with its stdout and stderr in a log file.
#[derive(Debug)]
pub struct ProcessGuard {
    /// `None` once reaped.
    child: Option<Child>,
    pid: u32,
    name: String,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl ProcessGuard {
    /// Spawn `cmd` (named `name` in messages) in a new process group, stdin
    /// from /dev/null, stdout and stderr to `log` (created, or emptied: the log
    /// of this run only).
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<ProcessGuard> {
        let out = std::fs::File::create(log)
            .with_context(|| format!("creating the log file {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("duplicating the handle of {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(ProcessGuard {
            pid: child.id(),
            child: Some(child),
            name: name.to_string(),
            log: log.to_path_buf(),
            exit: None,
        })
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The log so far (empty if unreadable).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send `sig` to the child only (not its group): what a crash or an
    /// operator's `kill` does.
    pub fn signal(&self, sig: Signal) {
        if self.child.is_some() {
            let _ = kill(self.nix_pid(), sig);
        }
    }

    /// The exit status if the child has ended (reaping it), without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exit = Some(status);
                    self.child = None;
                }
            }
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Send `sig` to the child and wait up to `grace` for it to end; then kill
    /// its group. Returns once the child is reaped.
    pub fn stop(&mut self, sig: Signal, grace: Duration) -> Option<ExitStatus> {
        self.signal(sig);
        let start = Instant::now();
        while self.try_exit().is_none() && start.elapsed() < grace {
            // Waiting for an exit that may never come within `grace` is not a
            // failure here but the cue to escalate, so not `eventually`.
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_group();
        self.exit
    }

    /// SIGKILL the child's whole process group and reap the child.
    pub fn kill_group(&mut self) {
        // The group outlives a reaped leader while members remain, and its id
        // is not reused meanwhile, so this is safe after the child ended too.
        let _ = killpg(self.nix_pid(), Signal::SIGKILL);
        if let Some(mut child) = self.child.take() {
            if let Ok(status) = child.wait() {
                self.exit = Some(status);
            }
        }
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX))
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Run `cmd` to completion; an error with its output unless it succeeded.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Whether `pid` is a live process (a zombie waiting to be reaped is not).
pub fn pid_alive(pid: impl std::fmt::Display) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The last `n` lines of `text` (for logs in failure messages).
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_kills_the_whole_group_and_reaps() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("sh.log");
        // A shell with a background grandchild that reports its pid.
        let guard = ProcessGuard::spawn(
            "sh",
            Command::new("sh").args(["-c", "sleep 300 & echo $!; wait"]),
            &log,
        )?;
        let pid = guard.pid();
        let grandchild: u32 = crate::eventually(Duration::from_secs(10), "the pid line", || {
            std::fs::read_to_string(&log).ok()?.trim().parse().ok()
        });
        assert!(pid_alive(pid) && pid_alive(grandchild));
        drop(guard);
        crate::eventually(Duration::from_secs(10), "the group to be gone", || {
            !pid_alive(grandchild)
        });
        assert!(!pid_alive(pid));
        Ok(())
    }

    #[test]
    fn stop_escalates_after_the_grace_period() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut guard = ProcessGuard::spawn(
            "stubborn",
            Command::new("sh").args(["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"]),
            &dir.path().join("stubborn.log"),
        )?;
        crate::eventually(Duration::from_secs(10), "the trap to be set", || {
            guard.log_text().contains("ready")
        });
        let status = guard.stop(Signal::SIGTERM, Duration::from_millis(200));
        assert!(!guard.is_running());
        assert!(status.is_some_and(|s| !s.success()), "{status:?}");
        Ok(())
    }

    #[test]
    fn run_names_the_failed_command_and_its_output() {
        let err = run(Command::new("sh").args(["-c", "echo broken >&2; exit 3"]))
            .expect_err("exit 3 is a failure");
        let text = format!("{err:#}");
        assert!(
            text.contains("broken") && text.contains("exit status: 3"),
            "{text}"
        );
    }
}
