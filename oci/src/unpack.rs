//! Turns one layer tarball (plain, gzip or zstd) into a directory that overlayfs
//! can use as a lowerdir, and refuses layers that try to write outside it.
//!
//! Rules, each enforced before anything is written for the entry:
//! - entry paths and hardlink targets must be relative and free of `..`
//!   (a `../x` or `/etc/x` entry fails the whole layer; we do not "fix" it);
//! - no entry is written through a symlink: every parent directory inside the
//!   layer must be a real directory, so a `lib -> /usr/lib` symlink followed by
//!   `lib/x` is refused instead of writing to the host;
//! - symlink targets may be absolute (they resolve inside the container's root,
//!   as `/bin/sh -> /bin/busybox` does) but a relative target that climbs above
//!   the layer root (`../../../etc`) is refused;
//! - OCI whiteouts become overlayfs whiteouts: `.wh.NAME` → a 0/0 character
//!   device `NAME`, `.wh..wh..opq` → the `trusted.overlay.opaque=y` xattr on its
//!   directory.
//!
//! The uncompressed stream is capped ([`unpack_layer_limited`]): a gzip or zstd
//! bomb (kilobytes that inflate to gigabytes) stops at the cap instead of
//! filling the disk, so at most `limit` bytes are ever written.
//!
//! The caller unpacks into a fresh private directory and publishes it only when
//! this returns `Ok` and the digests match; a refused layer is deleted whole.

use crate::blobs::HashingReader;
use outpost_protocol::Digest;
use std::cell::Cell;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Why a layer was refused or could not be unpacked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    #[error("reading the layer tarball failed: {0}")]
    Read(#[source] std::io::Error),
    #[error("layer is not valid {format}: {reason}")]
    Decompress {
        format: &'static str,
        reason: String,
    },
    #[error("entry {entry:?} would write outside the rootfs: {why}")]
    PathEscape { entry: String, why: &'static str },
    #[error("symlink {entry:?} -> {target:?} points outside the rootfs")]
    SymlinkEscape { entry: String, target: String },
    #[error("hardlink {entry:?} -> {target:?} is invalid: {why}")]
    BadHardlink {
        entry: String,
        target: String,
        why: &'static str,
    },
    #[error("entry {entry:?} would be written through {parent:?}, which is a symlink or not a directory")]
    UnsafeParent { entry: String, parent: String },
    #[error("entry {entry:?} has a uid or gid that does not fit 32 bits")]
    BadOwner { entry: String },
    #[error("it unpacks to more than {limit} bytes, its size limit (a decompression bomb, or a layer too large for this store)")]
    TooLarge { limit: u64 },
    #[error("writing {path} failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What unpacking saw, plus the digests the caller must check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 of the blob as stored (compressed).
    pub blob_digest: Digest,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
}

/// Clean an archive path: strip `./` and trailing `/`, refuse absolute paths and
/// `..`. An empty result means the root directory itself.
pub fn clean_path(raw: &[u8]) -> Result<PathBuf, &'static str> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("it contains a '..' component"),
            Component::RootDir | Component::Prefix(_) => return Err("it is an absolute path"),
        }
    }
    Ok(out)
}

/// Does a symlink at `entry` (clean, relative to the rootfs) with `target` climb
/// above the rootfs? Absolute targets are resolved from the rootfs, as the
/// container sees them.
pub fn symlink_escapes(entry: &Path, target: &Path) -> bool {
    let mut depth: usize = if target.is_absolute() {
        0
    } else {
        entry.parent().map_or(0, |p| p.components().count())
    };
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    false
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Unpack the layer blob read from `blob` into `dest` (an existing, empty
/// directory), with no size limit beyond the disk's: for trusted input only.
pub fn unpack_layer(blob: impl Read, dest: &Path) -> Result<Unpacked, UnpackError> {
    unpack_layer_limited(blob, dest, u64::MAX)
}

/// Like [`unpack_layer`], but refuse ([`UnpackError::TooLarge`]) a layer whose
/// uncompressed tar stream is longer than `limit` bytes.
pub fn unpack_layer_limited(
    blob: impl Read,
    dest: &Path,
    limit: u64,
) -> Result<Unpacked, UnpackError> {
    let exceeded = Cell::new(false);
    let result = unpack_capped(blob, dest, limit, &exceeded);
    // The tar reader may wrap or replace our I/O error; the flag is the truth.
    if exceeded.get() {
        return Err(UnpackError::TooLarge { limit });
    }
    result
}

fn unpack_capped(
    blob: impl Read,
    dest: &Path,
    limit: u64,
    exceeded: &Cell<bool>,
) -> Result<Unpacked, UnpackError> {
    let mut blob_hash = HashingReader::new(blob);
    let (diff_id, stats) = {
        let mut buffered = BufReader::new(&mut blob_hash);
        let head = buffered.fill_buf().map_err(UnpackError::Read)?;
        // Sniff instead of trusting the media type: some registries and tools
        // label zstd or plain tar layers as gzip.
        let decoder: Box<dyn Read + '_> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::MultiGzDecoder::new(buffered))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(
                ruzstd::decoding::StreamingDecoder::new(buffered).map_err(|e| {
                    UnpackError::Decompress {
                        format: "zstd",
                        reason: e.to_string(),
                    }
                })?,
            )
        } else {
            Box::new(buffered)
        };
        let capped = Capped {
            inner: decoder,
            remaining: limit,
            exceeded,
        };
        let mut diff_hash = HashingReader::new(capped);
        let stats = unpack_tar(&mut diff_hash, dest)?;
        // Hash the tar's trailing padding too: the diff id covers the whole stream.
        std::io::copy(&mut diff_hash, &mut std::io::sink()).map_err(UnpackError::Read)?;
        (diff_hash.finish().0, stats)
    };
    std::io::copy(&mut blob_hash, &mut std::io::sink()).map_err(UnpackError::Read)?;
    let (blob_digest, _) = blob_hash.finish();
    Ok(Unpacked {
        blob_digest,
        diff_id,
        ..stats
    })
}

/// A reader that fails once more than `remaining` bytes would come out of it,
/// and says so through `exceeded`.
struct Capped<'a, R> {
    inner: R,
    remaining: u64,
    exceeded: &'a Cell<bool>,
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            // At the cap: the stream is fine only if it ends here.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.exceeded.set(true);
                    Err(std::io::Error::other("layer exceeds its size limit"))
                }
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn unpack_tar(tar_stream: impl Read, dest: &Path) -> Result<Unpacked, UnpackError> {
    let mut stats = Unpacked {
        blob_digest: Digest([0; 32]),
        diff_id: Digest([0; 32]),
        entries: 0,
        whiteouts: 0,
        opaque_dirs: 0,
    };
    let mut archive = tar::Archive::new(tar_stream);
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let rel = clean_path(&raw).map_err(|why| UnpackError::PathEscape {
            entry: shown.clone(),
            why,
        })?;
        stats.entries += 1;
        let Some(name) = rel.file_name().map(|n| n.to_os_string()) else {
            // The root directory itself ("./"): nothing to create.
            continue;
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            let dir = ensure_parents(dest, &rel, &shown)?;
            rustix::fs::lsetxattr(&dir, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
                .map_err(|e| write_err(&dir)(e.into()))?;
            stats.opaque_dirs += 1;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // Other `.wh..wh.` names are aufs bookkeeping with no meaning here.
                continue;
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
                return Err(UnpackError::PathEscape {
                    entry: shown,
                    why: "it is a whiteout of an invalid name",
                });
            }
            let target_rel = parent.join(OsStr::from_bytes(hidden));
            ensure_parents(dest, &target_rel, &shown)?;
            let target = dest.join(&target_rel);
            remove_existing(&target)?;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &target,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| write_err(&target)(e.into()))?;
            stats.whiteouts += 1;
            continue;
        }

        ensure_parents(dest, &rel, &shown)?;
        let path = dest.join(&rel);
        let header = entry.header();
        let mode = header.mode().map_err(UnpackError::Read)? & 0o7777;
        // Some producers leave uid/gid blank; blank means root, as in GNU tar.
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let (uid, gid) = match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(u), Ok(g)) => (u, g),
            _ => return Err(UnpackError::BadOwner { entry: shown }),
        };
        let kind = header.entry_type();
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_existing(&path)?;
                        fs::create_dir(&path).map_err(write_err(&path))?;
                    }
                    Err(_) => fs::create_dir(&path).map_err(write_err(&path))?,
                }
                set_owner_mode(&path, uid, gid, Some(mode))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_existing(&path)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(write_err(&path))?;
                std::io::copy(&mut entry, &mut f).map_err(UnpackError::Read)?;
                drop(f);
                set_owner_mode(&path, uid, gid, Some(mode))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_path = Path::new(OsStr::from_bytes(&target));
                if target.is_empty() || symlink_escapes(&rel, target_path) {
                    return Err(UnpackError::SymlinkEscape {
                        entry: shown,
                        target: String::from_utf8_lossy(&target).into_owned(),
                    });
                }
                remove_existing(&path)?;
                std::os::unix::fs::symlink(target_path, &path).map_err(write_err(&path))?;
                set_owner_mode(&path, uid, gid, None)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let bad = |why| UnpackError::BadHardlink {
                    entry: shown.clone(),
                    target: String::from_utf8_lossy(&target).into_owned(),
                    why,
                };
                let target_rel = clean_path(&target).map_err(bad)?;
                if target_rel.as_os_str().is_empty() {
                    return Err(bad("it links to the root directory"));
                }
                ensure_parents(dest, &target_rel, &shown)?;
                let source = dest.join(&target_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.is_dir() => {}
                    Ok(_) => return Err(bad("it links to a directory")),
                    Err(_) => return Err(bad("its target is not earlier in this layer")),
                }
                if source != path {
                    remove_existing(&path)?;
                    // link(2) does not follow a symlink source: the link is to the
                    // symlink itself, which stays inside the layer.
                    fs::hard_link(&source, &path).map_err(write_err(&path))?;
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let file_type = match kind {
                    tar::EntryType::Char => rustix::fs::FileType::CharacterDevice,
                    tar::EntryType::Block => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Fifo,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                remove_existing(&path)?;
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    file_type,
                    rustix::fs::Mode::from_raw_mode(mode),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| write_err(&path)(e.into()))?;
                set_owner_mode(&path, uid, gid, Some(mode))?;
            }
            other => {
                tracing::warn!(entry = %shown, kind = ?other, "skipping unsupported tar entry type");
            }
        }
    }
    Ok(stats)
}

/// Make sure every parent directory of `rel` exists under `dest` as a real
/// directory (never a symlink), creating missing ones. Returns the full path of
/// `rel`'s parent (for an opaque marker: the directory it marks).
fn ensure_parents(dest: &Path, rel: &Path, shown: &str) -> Result<PathBuf, UnpackError> {
    let mut current = dest.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(current);
    };
    for part in parent.components() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(UnpackError::UnsafeParent {
                    entry: shown.to_string(),
                    parent: current
                        .strip_prefix(dest)
                        .unwrap_or(&current)
                        .display()
                        .to_string(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(write_err(&current))?;
                fs::set_permissions(&current, fs::Permissions::from_mode(0o755))
                    .map_err(write_err(&current))?;
            }
            Err(e) => return Err(write_err(&current)(e)),
        }
    }
    Ok(current)
}

/// Remove whatever is at `path` (without following symlinks) so a later entry
/// replaces an earlier one, as tar does.
fn remove_existing(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(write_err(path)),
        Ok(_) => fs::remove_file(path).map_err(write_err(path)),
        Err(_) => Ok(()),
    }
}

fn set_owner_mode(path: &Path, uid: u32, gid: u32, mode: Option<u32>) -> Result<(), UnpackError> {
    // chown first: it clears setuid/setgid bits, which chmod then restores.
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(write_err(path))?;
    if let Some(mode) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(write_err(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_refuses_escapes() {
        assert_eq!(clean_path(b"./usr/bin/").unwrap(), PathBuf::from("usr/bin"));
        assert_eq!(clean_path(b"./").unwrap(), PathBuf::new());
        assert_eq!(clean_path(b"a/./b").unwrap(), PathBuf::from("a/b"));
        assert!(clean_path(b"../x").is_err());
        assert!(clean_path(b"a/../../x").is_err());
        assert!(clean_path(b"/etc/passwd").is_err());
    }

    #[test]
    fn the_uncompressed_stream_is_capped_for_every_compression() {
        use std::io::Write;
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_path("zeros").unwrap();
        header.set_size(2 << 20);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append(&header, std::io::Read::take(std::io::repeat(0), 2 << 20))
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blobs = [
            ("gzip", gz.finish().unwrap()),
            (
                "zstd",
                ruzstd::encoding::compress_to_vec(
                    &tar[..],
                    ruzstd::encoding::CompressionLevel::Fastest,
                ),
            ),
            ("plain", tar.clone()),
        ];
        for (kind, blob) in blobs {
            let dir = tempfile::tempdir().unwrap();
            let err = unpack_layer_limited(&blob[..], dir.path(), 1 << 20).unwrap_err();
            assert!(
                matches!(err, UnpackError::TooLarge { limit } if limit == 1 << 20),
                "{kind}: {err:?}"
            );
            // A cap equal to the stream's length is not exceeded.
            let dir = tempfile::tempdir().unwrap();
            let unpacked = unpack_layer_limited(&blob[..], dir.path(), tar.len() as u64)
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(unpacked.diff_id, Digest::of(&tar), "{kind}");
        }
    }

    #[test]
    fn symlink_escape_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("bin/sh", "/bin/busybox", false),
            ("bin/sh", "busybox", false),
            ("usr/lib/x", "../../etc/y", false),
            ("usr/lib/x", "../../../etc/y", true),
            ("x", "..", true),
            ("a/x", "..", false),
            ("a/x", "/../etc", true),
            ("a/x", "/etc/../..", true),
        ];
        for (entry, target, escapes) in cases {
            assert_eq!(
                symlink_escapes(Path::new(entry), Path::new(target)),
                *escapes,
                "{entry} -> {target}"
            );
        }
    }
}
