//! `outpost-agent logs APP`: an app's output read from its log files (rotated
//! copies oldest first, then the live file; see `outpost_runtime::logs`), the
//! last N lines, and following new output as the app writes it, across
//! rotations.

use outpost_runtime::logs::{read_data, rotated_path};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LogViewError {
    #[error("no logs for app {app:?} in {dir} (apps with logs: {known})")]
    UnknownApp {
        app: String,
        dir: PathBuf,
        known: String,
    },
    #[error(transparent)]
    Read(#[from] outpost_runtime::logs::LogError),
    #[error("writing to stdout: {0}")]
    Out(#[source] std::io::Error),
}

/// How often `--follow` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Apps that have a log in `dir`.
pub fn apps_with_logs(dir: &Path) -> Vec<String> {
    let mut apps: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".log")
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    apps.sort();
    apps
}

/// Everything kept of `app`'s output, oldest first.
pub fn read_all(dir: &Path, app: &str) -> Result<Vec<u8>, LogViewError> {
    let live = dir.join(format!("{app}.log"));
    if !live.exists() {
        return Err(LogViewError::UnknownApp {
            app: app.to_string(),
            dir: dir.to_path_buf(),
            known: apps_with_logs(dir).join(", "),
        });
    }
    let mut copies: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.to_string();
                    let n = name.strip_prefix(&format!("{app}.log."))?.parse().ok()?;
                    (n > 0).then_some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    // Highest number = oldest.
    copies.sort_by_key(|c| std::cmp::Reverse(c.0));
    let mut out = Vec::new();
    for (_, p) in copies {
        match read_data(&p, 0) {
            Ok(b) => out.extend(b),
            // Rotated away or dropped by the cap while we read: skip it.
            Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    out.extend(read_data(&live, 0)?);
    Ok(out)
}

/// The last `n` lines of `bytes` (all of them for `None`). Pure.
pub fn tail(bytes: &[u8], n: Option<usize>) -> &[u8] {
    let Some(n) = n else { return bytes };
    if n == 0 {
        return &bytes[bytes.len()..];
    }
    // Skip the final newline so "a\nb\n" has two lines, not three.
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &bytes[i + 1..];
            }
        }
    }
    bytes
}

/// Print `app`'s log (its last `lines` lines), then with `follow` keep
/// printing what the app writes until the process is stopped.
pub fn show(dir: &Path, app: &str, lines: Option<usize>, follow: bool) -> Result<(), LogViewError> {
    let all = read_all(dir, app)?;
    let mut out = std::io::stdout().lock();
    out.write_all(tail(&all, lines))
        .map_err(LogViewError::Out)?;
    out.flush().map_err(LogViewError::Out)?;
    if !follow {
        return Ok(());
    }
    let mut follower = Follower::new(dir, app);
    loop {
        std::thread::sleep(FOLLOW_POLL);
        let bytes = follower.poll()?;
        if !bytes.is_empty() {
            out.write_all(&bytes).map_err(LogViewError::Out)?;
            out.flush().map_err(LogViewError::Out)?;
        }
    }
}

/// Reads what an app writes after the moment it was made, across rotations:
/// `outpost-agent logs --follow` and the hub's `logs --follow`
/// (`crate::logstream`) share it.
#[derive(Debug)]
pub struct Follower {
    live: PathBuf,
    first: PathBuf,
    pos: u64,
    first_stamp: Option<std::time::SystemTime>,
}

fn len_of(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn stamp_of(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).ok().and_then(|m| m.modified().ok())
}

impl Follower {
    /// Start at the current end of `app`'s live log in `dir`.
    pub fn new(dir: &Path, app: &str) -> Follower {
        let live = dir.join(format!("{app}.log"));
        let first = rotated_path(&live, 1);
        Follower {
            pos: len_of(&live),
            first_stamp: stamp_of(&first),
            live,
            first,
        }
    }

    /// What was written since the last call (empty if nothing).
    pub fn poll(&mut self) -> Result<Vec<u8>, LogViewError> {
        let now = len_of(&self.live);
        let s = stamp_of(&self.first);
        if s != self.first_stamp {
            // A rotation moved the head of the live file into `.1`: with a
            // collapse the offsets shifted down by what `.1` now holds (with
            // punched holes nothing moved, and the file did not shrink).
            self.first_stamp = s;
            if now < self.pos {
                self.pos = self.pos.saturating_sub(len_of(&self.first));
            }
        }
        if now < self.pos {
            self.pos = 0;
        }
        if now <= self.pos {
            return Ok(Vec::new());
        }
        let bytes = match read_data(&self.live, self.pos) {
            Ok(b) => b,
            Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        self.pos += bytes.len() as u64;
        // Data may start past `pos` (a punched hole): count from the end.
        self.pos = self.pos.max(now);
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_counts_lines_from_the_end() {
        let t = |s: &str, n| String::from_utf8(tail(s.as_bytes(), n).to_vec()).unwrap();
        assert_eq!(t("a\nb\nc\n", Some(2)), "b\nc\n");
        assert_eq!(t("a\nb\nc", Some(2)), "b\nc");
        assert_eq!(t("a\nb\n", Some(5)), "a\nb\n");
        assert_eq!(t("a\nb\n", Some(0)), "");
        assert_eq!(t("a\nb\n", None), "a\nb\n");
        assert_eq!(t("", Some(3)), "");
    }

    #[test]
    fn rotated_copies_come_first_and_unknown_apps_name_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.log.2"), "one\n").unwrap();
        std::fs::write(dir.path().join("web.log.1"), "two\n").unwrap();
        std::fs::write(dir.path().join("web.log"), "three\n").unwrap();
        std::fs::write(dir.path().join("db.log"), "x\n").unwrap();
        assert_eq!(read_all(dir.path(), "web").unwrap(), b"one\ntwo\nthree\n");
        let err = read_all(dir.path(), "nope").unwrap_err().to_string();
        assert!(err.contains("\"nope\"") && err.contains("db, web"), "{err}");
    }
}
