//! Measurements of a real, running agent process (`outpost-agent`), by pid:
//! memory footprint, binary size, and bytes written to storage (flash wear).
//!
//! These read `/proc/PID/{status,stat,io}` of a process started by the operator
//! (see `docs/benchmarks.md` for the setup with 5 sample containers); nothing here
//! is simulated.

use crate::procstat::{self, ProcError, ProcSample};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("cannot read {path}: {source}")]
    Binary {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`strip` failed on {path}: {detail}")]
    Strip { path: PathBuf, detail: String },
    #[error("process {0} exited during the measurement")]
    Gone(u32),
}

/// RSS of the agent and of its descendants (container processes are not the
/// agent's memory, but they are listed so the reader sees what runs).
#[derive(Debug, Clone)]
pub struct Footprint {
    pub agent: ProcSample,
    /// (pid, command name, RSS KiB) of every direct child (e.g. the containers'
    /// init processes, if the runtime keeps them as children).
    pub children: Vec<(u32, String, u64)>,
}

fn children_of(pid: u32) -> Vec<u32> {
    // /proc/PID/task/TID/children lists the children of each thread.
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|s| s.parse::<u32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Sample the agent `pid` and list its children.
pub fn footprint(pid: u32) -> Result<Footprint, AgentError> {
    let agent = procstat::sample(pid)?;
    let children = children_of(pid)
        .into_iter()
        .filter_map(|c| {
            let name = std::fs::read_to_string(format!("/proc/{c}/comm")).ok()?;
            let s = procstat::sample(c).ok()?;
            Some((c, name.trim().to_string(), s.rss_kib))
        })
        .collect();
    Ok(Footprint { agent, children })
}

/// Size of `binary` as built, and after `strip` (a copy; the file is untouched).
pub fn binary_size(binary: &Path) -> Result<(u64, u64), AgentError> {
    let meta = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|source| AgentError::Binary {
                path: p.to_path_buf(),
                source,
            })
    };
    let built = meta(binary)?;
    let dir = tempfile::tempdir().map_err(|source| AgentError::Binary {
        path: binary.to_path_buf(),
        source,
    })?;
    let stripped = dir.path().join("stripped");
    let out = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(binary)
        .output()
        .map_err(|e| AgentError::Strip {
            path: binary.to_path_buf(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(AgentError::Strip {
            path: binary.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).to_string(),
        });
    }
    Ok((built, meta(&stripped)?))
}

/// Bytes written by the agent over a window.
#[derive(Debug, Clone, Copy)]
pub struct Wear {
    pub window: Duration,
    pub written: u64,
    /// Linear extrapolation to 24 h.
    pub per_day: f64,
    /// Readings taken (one per `every`), to show the rate is steady.
    pub readings: usize,
}

/// Read `write_bytes` of `pid` every `every` for `window`; call `progress` with
/// (elapsed, bytes so far) after each reading.
pub fn wear(
    pid: u32,
    window: Duration,
    every: Duration,
    mut progress: impl FnMut(Duration, u64),
) -> Result<Wear, AgentError> {
    let start_bytes = procstat::write_bytes(pid)?;
    let start = Instant::now();
    let mut readings = 1;
    let mut last = start_bytes;
    while start.elapsed() < window {
        std::thread::sleep(
            every
                .min(window.saturating_sub(start.elapsed()))
                .max(Duration::from_millis(1)),
        );
        last = procstat::write_bytes(pid).map_err(|_| AgentError::Gone(pid))?;
        readings += 1;
        progress(start.elapsed(), last.saturating_sub(start_bytes));
    }
    let elapsed = start.elapsed();
    let written = last.saturating_sub(start_bytes);
    Ok(Wear {
        window: elapsed,
        written,
        per_day: written as f64 * 86_400.0 / elapsed.as_secs_f64().max(1e-9),
        readings,
    })
}
