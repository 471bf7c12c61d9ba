//! Observing a container's init process from outside: alive, zombie or gone,
//! robust to PID reuse, and reaping it when it happens to be our child.
//!
//! libcontainer's own status check trusts the PID in its state file; after a
//! reboot-free week a recycled PID would make a dead container look alive. We
//! record the init's start time (field 22 of `/proc/<pid>/stat`) at create and
//! treat a different start time as "gone".

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
    /// Clock ticks since boot at which the process started.
    pub start_time: u64,
}

/// Parse `/proc/<pid>/stat`. The command name may contain spaces and ')' so
/// fields are counted from the last ')'. Pure.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub fn read_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// What became of an init process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Alive,
    /// It ended. `exit_code` is known only if we reaped it ourselves.
    Ended {
        exit_code: Option<i32>,
    },
}

/// Observe `pid`, which had `start_time` when created (`None`: unknown, trust
/// the PID). Reaps it if it is a zombie child of this process.
pub fn observe(pid: i32, start_time: Option<u64>) -> Observed {
    let Some(stat) = read_stat(pid) else {
        return Observed::Ended { exit_code: None };
    };
    if start_time.is_some_and(|t| t != stat.start_time) {
        return Observed::Ended { exit_code: None };
    }
    if stat.state != 'Z' && stat.state != 'X' {
        return Observed::Alive;
    }
    if stat.ppid == std::process::id() as i32 {
        return reap(pid);
    }
    Observed::Ended { exit_code: None }
}

/// `waitpid` a zombie child; shell convention for signals (128+n). A
/// multi-threaded init's leader shows as a zombie while its other threads are
/// still exiting (e.g. after an OOM kill) and cannot be reaped until they are
/// gone: that is still alive, not "ended with an unknown code".
fn reap(pid: i32) -> Observed {
    let exit_code = match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => return Observed::Alive,
        Ok(WaitStatus::Exited(_, code)) => Some(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
        _ => None,
    };
    Observed::Ended { exit_code }
}

/// Make this process the reaper of orphaned descendants, so a container whose
/// creating helper exits is re-parented here and its exit status can be read.
/// Call once at agent start; without it exit codes are reported as unknown.
pub fn become_subreaper() -> Result<(), nix::Error> {
    nix::sys::prctl::set_child_subreaper(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_hostile_comm() {
        let line = "1234 (we ird) (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                ppid: 1,
                start_time: 98765
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn own_process_is_alive_and_start_time_mismatch_is_gone() {
        let me = std::process::id() as i32;
        let st = read_stat(me).unwrap();
        assert_eq!(observe(me, Some(st.start_time)), Observed::Alive);
        assert_eq!(
            observe(me, Some(st.start_time + 1)),
            Observed::Ended { exit_code: None }
        );
    }
}
