//! Resource usage of a process read from `/proc`: resident memory, CPU time and
//! bytes written to storage.
//!
//! Used for the hub during a fleet run, for the simulator itself, and for the real
//! agent (footprint, flash wear). Linux only.

use std::path::PathBuf;
use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` times. `USER_HZ` is part of the
/// Linux ABI and is 100 on x86_64 and arm64 regardless of the kernel's `HZ`.
const USER_HZ: u64 = 100;

/// Why a `/proc` file could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has no field {field}")]
    Missing { path: PathBuf, field: &'static str },
}

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// User plus system CPU time of all threads so far.
    pub cpu: Duration,
    /// Bytes this process caused to be sent to the storage layer (`write_bytes` in
    /// `/proc/PID/io`); `None` when the kernel does not expose it.
    pub write_bytes: Option<u64>,
}

fn read(path: PathBuf) -> Result<String, ProcError> {
    std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

/// `VmRSS` / `VmHWM` style line: value in KiB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime from the text of `/proc/PID/stat`. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after the last ')'.
pub fn cpu_from_stat(text: &str) -> Option<Duration> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

fn io_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Read the counters of `pid` (use `std::process::id()` for this process).
pub fn sample(pid: u32) -> Result<ProcSample, ProcError> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let status_path = base.join("status");
    let status = read(status_path.clone())?;
    let rss_kib = kib_field(&status, "VmRSS").ok_or(ProcError::Missing {
        path: status_path.clone(),
        field: "VmRSS",
    })?;
    let hwm_kib = kib_field(&status, "VmHWM").ok_or(ProcError::Missing {
        path: status_path,
        field: "VmHWM",
    })?;
    let stat_path = base.join("stat");
    let cpu = cpu_from_stat(&read(stat_path.clone())?).ok_or(ProcError::Missing {
        path: stat_path,
        field: "utime/stime",
    })?;
    let write_bytes = read(base.join("io"))
        .ok()
        .and_then(|t| io_field(&t, "write_bytes"));
    Ok(ProcSample {
        rss_kib,
        hwm_kib,
        cpu,
        write_bytes,
    })
}

/// Bytes the process wrote to storage, or an error naming why it is unknown.
pub fn write_bytes(pid: u32) -> Result<u64, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/io"));
    let text = read(path.clone())?;
    io_field(&text, "write_bytes").ok_or(ProcError::Missing {
        path,
        field: "write_bytes",
    })
}

/// CPU time per thread name (`/proc/PID/task/*/comm`), summed over threads of
/// the same name, largest first: a coarse profile that needs no symbols.
pub fn threads(pid: u32) -> Vec<(String, Duration)> {
    let mut by_name: std::collections::BTreeMap<String, Duration> = Default::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    for t in tasks.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cpu = std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| cpu_from_stat(&s))
            .unwrap_or_default();
        *by_name.entry(name).or_default() += cpu;
    }
    let mut out: Vec<(String, Duration)> = by_name.into_iter().collect();
    out.sort_by_key(|t| std::cmp::Reverse(t.1));
    out
}

/// Resident memory per mapping (`/proc/PID/smaps`), summed by path (`[anon]` for
/// anonymous mappings: malloc arenas, thread stacks, caches), largest first, KiB.
pub fn rss_by_mapping(pid: u32) -> Result<Vec<(String, u64)>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/smaps"));
    let text = read(path)?;
    let mut by_name: std::collections::BTreeMap<String, u64> = Default::default();
    let mut current = String::from("[anon]");
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // Header: address perms offset dev inode [path]
            current = parts.nth(4).unwrap_or("[anon]").to_string();
        } else if first == "Rss:" {
            let kib: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *by_name.entry(current.clone()).or_default() += kib;
        }
    }
    let mut out: Vec<(String, u64)> = by_name.into_iter().filter(|(_, k)| *k > 0).collect();
    out.sort_by_key(|t| std::cmp::Reverse(t.1));
    Ok(out)
}

/// KiB as MiB with one decimal, for tables.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        let stat = "42 (we ird) (x)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0 0";
        assert_eq!(cpu_from_stat(stat), Some(Duration::from_millis(3000)));
        assert_eq!(cpu_from_stat("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
        assert_eq!(kib_field("VmRSS:\t  1234 kB\n", "VmRSS"), Some(1234));
        assert_eq!(
            io_field("rchar: 1\nwrite_bytes: 4096\n", "write_bytes"),
            Some(4096)
        );
    }
}
