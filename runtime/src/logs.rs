//! Container stdout/stderr capture into size-bounded files, rotated without
//! losing a byte.
//!
//! The container gets a file descriptor of its app's log opened `O_APPEND` as its
//! stdout and stderr, so it never depends on the agent being alive to drain a
//! pipe, and the file outlives containers (an update, a restart, a reboot all
//! append to the same `<app>.log`).
//!
//! Rotation cannot rename the live file (the container keeps writing to the
//! inode it was given) and copy-then-truncate drops whatever the app writes
//! between the copy and the truncate. Instead the head of the live file is
//! copied into `<app>.log.1` (older copies shift up) and then *removed from the
//! file in place*: `fallocate(FALLOC_FL_COLLAPSE_RANGE)` cuts a block-aligned
//! prefix and shifts the rest down (ext4, xfs), and where a file system cannot
//! collapse (tmpfs, btrfs) `FALLOC_FL_PUNCH_HOLE` frees the prefix's blocks and
//! leaves a hole that readers skip. Either way the kernel serialises it with the
//! app's appends, so every byte the app wrote is in exactly one file. The
//! unaligned tail (less than one block) stays in the live file.
//!
//! [`enforce_total`] caps all apps' logs together, dropping the oldest rotated
//! copies first.

use nix::fcntl::{fallocate, FallocateFlags};
use nix::libc::off_t;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("log file {path:?}: {action}: {source}")]
pub struct LogError {
    pub path: PathBuf,
    pub action: &'static str,
    #[source]
    pub source: std::io::Error,
}

fn err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError {
        path,
        action,
        source,
    }
}

/// How big logs may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPolicy {
    /// Rotate an app's live log once it holds more than this.
    pub max_file_bytes: u64,
    /// Files per app, the live one included (≥ 1).
    pub files: usize,
    /// Cap over every app's files together.
    pub total_bytes: u64,
}

impl Default for LogPolicy {
    fn default() -> Self {
        LogPolicy {
            max_file_bytes: 1 << 20,
            files: 2,
            total_bytes: 32 << 20,
        }
    }
}

/// Open (creating) a log file for appending.
pub fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err("open for append", path))
}

/// Path of the `n`th rotated copy (`<app>.log.1` is the newest).
pub fn rotated_path(live: &Path, n: usize) -> PathBuf {
    let mut s = live.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Offset of the first byte of data at or after `from` (holes punched by a
/// rotation are skipped); the file's length when only a hole follows.
fn data_start(f: &mut File, from: u64, len: u64) -> u64 {
    // SEEK_DATA: ENXIO when no data follows; unsupported file systems treat
    // the whole file as data.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&*f);
    // off_t is 32 bits on armv7: an offset past it is read as data.
    let Ok(offset) = off_t::try_from(from) else {
        return from;
    };
    match nix::unistd::lseek(fd, offset, nix::unistd::Whence::SeekData) {
        Ok(off) => u64::try_from(off).unwrap_or(from),
        Err(nix::Error::ENXIO) => len,
        Err(_) => from,
    }
}

/// The bytes of `path` that are data (holes skipped), from offset `from`.
pub fn read_data(path: &Path, from: u64) -> Result<Vec<u8>, LogError> {
    let mut f = File::open(path).map_err(err("open", path))?;
    let len = f.metadata().map_err(err("stat", path))?.len();
    let start = data_start(&mut f, from, len);
    f.seek(SeekFrom::Start(start)).map_err(err("seek", path))?;
    let mut out = Vec::with_capacity(len.saturating_sub(start) as usize);
    f.read_to_end(&mut out).map_err(err("read", path))?;
    Ok(out)
}

/// Bytes of data in a log file (its length minus a punched prefix).
pub fn data_len(path: &Path) -> u64 {
    let Ok(mut f) = File::open(path) else {
        return 0;
    };
    let len = f.metadata().map_or(0, |m| m.len());
    len - data_start(&mut f, 0, len).min(len)
}

/// Cut `[0, cut)` out of the live file: collapse where the file system can,
/// else punch a hole. `cut` is a multiple of the block size.
fn drop_prefix(live: &Path, cut: u64) -> Result<(), LogError> {
    let f = OpenOptions::new()
        .write(true)
        .open(live)
        .map_err(err("open for rotation", live))?;
    // off_t is 32 bits on armv7; a log file is far below 2 GiB, but a cut
    // that does not fit is refused rather than truncated to a wrong range.
    let len = off_t::try_from(cut).map_err(|_| {
        err("collapse range", live)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cut of {cut} bytes does not fit this platform's file offsets"),
        ))
    })?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    match fallocate(fd, FallocateFlags::FALLOC_FL_COLLAPSE_RANGE, 0, len) {
        Ok(()) => Ok(()),
        // EOPNOTSUPP: tmpfs, btrfs; EINVAL: the range reaches EOF (a racing
        // reader cannot cause it: we cut below the length we measured).
        Err(nix::Error::EOPNOTSUPP) | Err(nix::Error::EINVAL) => fallocate(
            fd,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            len,
        )
        .map_err(|e| err("punch hole", live)(e.into())),
        Err(e) => Err(err("collapse range", live)(e.into())),
    }
}

/// Rotate `live` if it holds more than `max_bytes` of data, keeping `files`
/// files in all (the live one included). Returns whether it rotated.
pub fn rotate_if_larger(live: &Path, max_bytes: u64, files: usize) -> Result<bool, LogError> {
    let meta = match std::fs::metadata(live) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err("stat", live)(e)),
    };
    let mut f = File::open(live).map_err(err("open", live))?;
    let len = meta.len();
    let start = data_start(&mut f, 0, len);
    if len.saturating_sub(start) <= max_bytes {
        return Ok(false);
    }
    let block = meta.blksize().max(512);
    let cut = len / block * block;
    if cut <= start {
        return Ok(false);
    }
    if files > 1 {
        // The head [start, cut) goes into copies of at most `max_bytes` each,
        // newest in `.1`: `k` new copies, the old ones shift up by `k`. A burst
        // larger than all copies together keeps only its newest part and
        // drops every older copy, so what is kept is always one contiguous
        // stretch of the app's output.
        let slots = files - 1;
        let m = max_bytes.max(1);
        let k = usize::try_from((cut - start).div_ceil(m))
            .unwrap_or(usize::MAX)
            .min(slots);
        for n in (slots + 1 - k)..=slots {
            let p = rotated_path(live, n);
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(err("remove old copy", &p)(e));
                }
            }
        }
        for n in (1..=slots - k).rev() {
            let from = rotated_path(live, n);
            if from.exists() {
                let to = rotated_path(live, n + k);
                std::fs::rename(&from, &to).map_err(err("shift rotated copy", &from))?;
            }
        }
        for i in 1..=k as u64 {
            let end = cut - (i - 1) * m;
            let begin = end.saturating_sub(m).max(start);
            let tmp = rotated_path(live, 0);
            let mut dst = File::create(&tmp).map_err(err("create rotated copy", &tmp))?;
            f.seek(SeekFrom::Start(begin)).map_err(err("seek", live))?;
            std::io::copy(&mut (&mut f).take(end - begin), &mut dst).map_err(err("copy", &tmp))?;
            dst.flush().map_err(err("write", &tmp))?;
            // Each copy is complete before the live file loses those bytes.
            let to = rotated_path(live, i as usize);
            std::fs::rename(&tmp, &to).map_err(err("rename rotated copy", &to))?;
        }
    }
    drop_prefix(live, cut)?;
    Ok(true)
}

/// Bytes a file occupies on disk (holes free).
fn allocated(meta: &std::fs::Metadata) -> u64 {
    meta.blocks() * 512
}

/// Keep all logs in `dir` under `total_bytes` together: remove the oldest
/// rotated copies first; if live files alone exceed it, drop the head of the
/// largest one (without keeping a copy). Returns the bytes freed.
pub fn enforce_total(dir: &Path, total_bytes: u64) -> Result<u64, LogError> {
    let mut freed = 0;
    for _ in 0..1000 {
        let mut total = 0;
        let mut rotated: Vec<(std::time::SystemTime, PathBuf, u64)> = vec![];
        let mut live: Vec<(u64, PathBuf)> = vec![];
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(err("list", dir)(e)),
        };
        for e in rd.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let size = allocated(&meta);
            total += size;
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".log") {
                live.push((size, e.path()));
            } else if name.contains(".log.") {
                let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                rotated.push((mtime, e.path(), size));
            }
        }
        if total <= total_bytes {
            return Ok(freed);
        }
        rotated.sort();
        if let Some((_, path, size)) = rotated.first() {
            std::fs::remove_file(path).map_err(err("remove", path))?;
            freed += size;
            continue;
        }
        live.sort();
        let Some((size, path)) = live.last() else {
            return Ok(freed);
        };
        // Halve the largest live file; a rotation with one file keeps no copy.
        if !rotate_if_larger(path, size / 2, 1)? {
            return Ok(freed);
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_data(live: &Path, files: usize) -> Vec<u8> {
        let mut out = vec![];
        for n in (1..files).rev() {
            let p = rotated_path(live, n);
            if p.exists() {
                out.extend(read_data(&p, 0).unwrap());
            }
        }
        out.extend(read_data(live, 0).unwrap());
        out
    }

    #[test]
    fn rotation_keeps_every_byte_and_n_files_while_the_writer_continues() {
        for dir in dirs() {
            rotation_keeps_every_byte_in(dir.path());
        }
    }

    fn rotation_keeps_every_byte_in(dir: &Path) {
        let live = dir.join("app.log");
        let mut writer = open_append(&live).unwrap();
        let mut written = vec![];
        for round in 0..6u8 {
            let chunk: Vec<u8> = (0..20_000u32)
                .map(|i| b'a' + ((i as u8).wrapping_add(round)) % 26)
                .collect();
            writer.write_all(&chunk).unwrap();
            written.extend(&chunk);
            assert!(rotate_if_larger(&live, 8192, 3).unwrap(), "round {round}");
            // Only `files` files, and the newest of what was written is all there.
            assert!(!rotated_path(&live, 3).exists());
            let kept = all_data(&live, 3);
            assert!(
                written.ends_with(&kept),
                "round {round}: bytes lost or reordered"
            );
            assert!(data_len(&live) < 8192 + 4096, "round {round}");
        }
        writer.write_all(b"tail").unwrap();
        written.extend(b"tail");
        assert!(written.ends_with(&all_data(&live, 3)));
        assert!(read_data(&live, 0).unwrap().ends_with(b"tail"));
        assert!(!rotate_if_larger(&live, 1 << 20, 3).unwrap());
    }

    /// The disk (collapse range on ext4) and tmpfs (punched holes), where
    /// this machine has one.
    fn dirs() -> Vec<tempfile::TempDir> {
        let mut d = vec![tempfile::tempdir().unwrap()];
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
            d.push(shm);
        }
        d
    }

    #[test]
    fn concurrent_appends_during_rotations_lose_nothing() {
        for dir in dirs() {
            concurrent_appends_in(dir.path());
        }
    }

    fn concurrent_appends_in(dir: &Path) {
        let live = dir.join("busy.log");
        let mut writer = open_append(&live).unwrap();
        let lines = 20_000;
        let t = std::thread::spawn(move || {
            for i in 0..lines {
                writer
                    .write_all(format!("line {i:08}\n").as_bytes())
                    .unwrap();
            }
        });
        // Many files so nothing ages out while we rotate as fast as we can.
        let files = 200;
        while !t.is_finished() {
            rotate_if_larger(&live, 4096, files).unwrap();
        }
        t.join().unwrap();
        let text = String::from_utf8(all_data(&live, files)).unwrap();
        let got: Vec<&str> = text.lines().collect();
        assert_eq!(got.len(), lines);
        for (i, l) in got.iter().enumerate() {
            assert_eq!(*l, format!("line {i:08}"));
        }
    }

    #[test]
    fn the_total_cap_drops_the_oldest_rotated_copies_first() {
        let dir = tempfile::tempdir().unwrap();
        for app in ["a", "b"] {
            let live = dir.path().join(format!("{app}.log"));
            let mut w = open_append(&live).unwrap();
            for _ in 0..3 {
                w.write_all(&vec![b'x'; (64 << 10) + 100]).unwrap();
                w.sync_all().unwrap();
                rotate_if_larger(&live, 64 << 10, 3).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let used = |d: &Path| -> u64 {
            std::fs::read_dir(d)
                .unwrap()
                .flatten()
                .map(|e| allocated(&e.metadata().unwrap()))
                .sum()
        };
        let before = used(dir.path());
        assert!(before > 200 << 10, "{before}");
        enforce_total(dir.path(), 100 << 10).unwrap();
        assert!(used(dir.path()) <= 100 << 10);
        // The newest copy of the app rotated last survives longest.
        assert!(dir.path().join("b.log.1").exists());
        // Live files alone over the cap get their heads dropped.
        enforce_total(dir.path(), 8 << 10).unwrap();
        assert!(used(dir.path()) <= 8 << 10);
    }
}
