//! Container stdout/stderr capture into size-bounded files.
//!
//! The container gets a file descriptor of `console.log` opened `O_APPEND` as its
//! stdout and stderr, so it never depends on the agent being alive to drain a
//! pipe. Rotation is copy-truncate: the live file is copied to `console.log.1`
//! (older copies shift up) and truncated in place; `O_APPEND` writers continue at
//! the new end of file without being told.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("log file {path:?}: {action}: {source}")]
pub struct LogError {
    pub path: PathBuf,
    pub action: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Open (creating) a log file for appending.
pub fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError {
            path: path.to_path_buf(),
            action: "open for append",
            source,
        })
}

/// Path of the `n`th rotated copy (`console.log.1` is the newest).
pub fn rotated_path(live: &Path, n: usize) -> PathBuf {
    let mut s = live.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Rotate `live` if it holds more than `max_bytes`, keeping `keep` old copies.
/// Returns whether it rotated.
pub fn rotate_if_larger(live: &Path, max_bytes: u64, keep: usize) -> Result<bool, LogError> {
    let err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| LogError {
            path,
            action,
            source,
        }
    };
    let size = match std::fs::metadata(live) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err("stat", live)(e)),
    };
    if size <= max_bytes {
        return Ok(false);
    }
    if keep == 0 {
        File::options()
            .write(true)
            .open(live)
            .and_then(|f| f.set_len(0))
            .map_err(err("truncate", live))?;
        return Ok(true);
    }
    for n in (1..keep).rev() {
        let from = rotated_path(live, n);
        if from.exists() {
            let to = rotated_path(live, n + 1);
            std::fs::rename(&from, &to).map_err(err("shift rotated copy", &from))?;
        }
    }
    let first = rotated_path(live, 1);
    // Copy only the first `size` bytes: anything written after the stat stays in
    // the live file's tail, which the truncate below drops. Losing those few
    // bytes is the documented price of copy-truncate.
    let mut src = File::open(live).map_err(err("open for copy", live))?;
    let mut dst = File::create(&first).map_err(err("create rotated copy", &first))?;
    std::io::copy(&mut std::io::Read::take(&mut src, size), &mut dst)
        .map_err(err("copy", &first))?;
    File::options()
        .write(true)
        .open(live)
        .and_then(|f| f.set_len(0))
        .map_err(err("truncate", live))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotates_keeps_n_copies_and_writer_continues() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("console.log");
        let mut writer = open_append(&live).unwrap();
        for round in 0..4u8 {
            writer.write_all(&[b'a' + round; 100]).unwrap();
            assert!(rotate_if_larger(&live, 50, 2).unwrap());
        }
        assert!(!rotate_if_larger(&live, 50, 2).unwrap());
        writer.write_all(b"tail").unwrap();
        // O_APPEND: the writer continued at offset 0 of the truncated file.
        assert_eq!(std::fs::read(&live).unwrap(), b"tail");
        assert_eq!(std::fs::read(rotated_path(&live, 1)).unwrap(), [b'd'; 100]);
        assert_eq!(std::fs::read(rotated_path(&live, 2)).unwrap(), [b'c'; 100]);
        assert!(!rotated_path(&live, 3).exists());
    }
}
