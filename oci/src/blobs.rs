//! The content-addressed blob store: `blobs/sha256/<hex>` holds only blobs whose
//! sha256 was checked, written crash-safely (temp file, fsync, rename, fsync of
//! the directory), so a power cut leaves either the whole blob or nothing.
//! Downloads in progress live in `partial/<hex>` and are resumed from their length.

use crate::OciError;
use outpost_protocol::Digest;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Incremental sha256.
pub struct Hasher(ring::digest::Context);

impl Default for Hasher {
    fn default() -> Self {
        Hasher(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Digest {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        Digest(out)
    }
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::default(),
            count: 0,
        }
    }

    /// Digest and byte count of everything read so far.
    pub fn finish(self) -> (Digest, u64) {
        (self.hasher.finish(), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Hash a whole file.
pub fn hash_file(path: &Path) -> Result<(Digest, u64), OciError> {
    let file = File::open(path).map_err(OciError::io("open", path))?;
    let mut r = HashingReader::new(file);
    std::io::copy(&mut r, &mut std::io::sink()).map_err(OciError::io("read", path))?;
    Ok(r.finish())
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The blob part of a store directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Open (creating if needed) the blob directories under `root`.
    pub fn open(root: &Path) -> Result<BlobStore, OciError> {
        let store = BlobStore {
            root: root.to_path_buf(),
        };
        for dir in [store.blob_dir(), store.partial_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(OciError::io("create directory", &dir))?;
        }
        Ok(store)
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where blob `digest` lives once verified.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    /// Where a download of `digest` accumulates.
    pub fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.partial_dir().join(digest.hex())
    }

    /// A fresh, unique path under `tmp/`.
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Is a complete blob present? (Contents are verified again when read.)
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Size of a present blob.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// Read a small blob (manifest, config) and verify it before returning it.
    pub fn read_verified(&self, digest: &Digest) -> Result<Vec<u8>, OciError> {
        let path = self.path(digest);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OciError::MissingBlob(*digest))
            }
            Err(e) => return Err(OciError::io("stat", &path)(e)),
        };
        if meta.len() > crate::spec::MAX_DOCUMENT_BYTES {
            return Err(OciError::BadManifest {
                digest: *digest,
                reason: format!("{} bytes is too large for a manifest or config", meta.len()),
            });
        }
        let bytes = fs::read(&path).map_err(OciError::io("read", &path))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(OciError::DigestMismatch {
                what: format!("stored blob {}", path.display()),
                expected: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Verify `bytes` against `digest` and store them.
    pub fn write(&self, digest: &Digest, bytes: &[u8]) -> Result<(), OciError> {
        let actual = Digest::of(bytes);
        if actual != *digest {
            return Err(OciError::DigestMismatch {
                what: "blob".to_string(),
                expected: *digest,
                actual,
            });
        }
        if self.contains(digest) {
            return Ok(());
        }
        let tmp = self.tmp_path("blob");
        let result = (|| {
            let mut f = File::create(&tmp).map_err(OciError::io("create", &tmp))?;
            f.write_all(bytes).map_err(OciError::io("write", &tmp))?;
            f.sync_all().map_err(OciError::io("fsync", &tmp))?;
            self.publish(&tmp, digest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Copy a blob from `reader` into the store, verifying digest (and size if
    /// known). Used for imports; nothing is published unless it verifies.
    pub fn write_from(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        reader: impl Read,
        source: &str,
    ) -> Result<u64, OciError> {
        let tmp = self.tmp_path("import");
        let result = (|| {
            let mut f = File::create(&tmp).map_err(OciError::io("create", &tmp))?;
            let mut r = HashingReader::new(reader);
            std::io::copy(&mut r, &mut f).map_err(|e| OciError::Io {
                action: "copy blob from",
                path: PathBuf::from(source),
                source: e,
            })?;
            let (actual, size) = r.finish();
            if actual != *digest {
                return Err(OciError::DigestMismatch {
                    what: source.to_string(),
                    expected: *digest,
                    actual,
                });
            }
            if let Some(expected) = expected_size.filter(|e| *e != size) {
                return Err(OciError::SizeMismatch {
                    what: source.to_string(),
                    expected,
                    actual: size,
                });
            }
            f.sync_all().map_err(OciError::io("fsync", &tmp))?;
            self.publish(&tmp, digest)?;
            Ok(size)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Open (creating) the partial download of `digest` for appending; returns
    /// the file and how many bytes it already holds.
    pub fn open_partial(&self, digest: &Digest) -> Result<(File, u64), OciError> {
        let path = self.partial_path(digest);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(OciError::io("open partial download", &path))?;
        let len = f
            .metadata()
            .map_err(OciError::io("stat partial download", &path))?
            .len();
        Ok((f, len))
    }

    /// Throw away a partial download (the registry ignored our `Range`, or its
    /// content turned out wrong).
    pub fn discard_partial(&self, digest: &Digest) -> Result<(), OciError> {
        let path = self.partial_path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(OciError::io("remove", &path)(e))
            }
            _ => Ok(()),
        }
    }

    /// A partial download is complete: verify it and move it into the store. A
    /// wrong digest deletes it so the next attempt starts clean.
    pub fn commit_partial(&self, digest: &Digest, expected_size: u64) -> Result<(), OciError> {
        let path = self.partial_path(digest);
        let (actual, size) = hash_file(&path)?;
        if actual != *digest || size != expected_size {
            let _ = fs::remove_file(&path);
            return Err(if actual != *digest {
                OciError::DigestMismatch {
                    what: format!("downloaded blob ({size} bytes)"),
                    expected: *digest,
                    actual,
                }
            } else {
                OciError::SizeMismatch {
                    what: format!("downloaded blob {digest}"),
                    expected: expected_size,
                    actual: size,
                }
            });
        }
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(OciError::io("fsync", &path))?;
        self.publish(&path, digest)
    }

    /// Rename a verified, fsynced file into place and make the rename durable.
    fn publish(&self, from: &Path, digest: &Digest) -> Result<(), OciError> {
        let to = self.path(digest);
        fs::rename(from, &to).map_err(OciError::io("rename into place", &to))?;
        sync_dir(&self.blob_dir())
    }

    /// Digests of all complete blobs.
    pub fn list(&self) -> Result<Vec<Digest>, OciError> {
        list_hex_names(&self.blob_dir())
    }

    /// Remove a blob; returns the bytes freed.
    pub fn remove(&self, digest: &Digest) -> Result<u64, OciError> {
        let path = self.path(digest);
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(OciError::io("remove", &path)(e))
            }
            _ => Ok(size),
        }
    }
}

/// fsync a directory so a rename or create inside it survives a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), OciError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(OciError::io("fsync directory", dir))
}

/// Entries of `dir` whose names are 64 hex characters, as digests; others ignored.
pub fn list_hex_names(dir: &Path) -> Result<Vec<Digest>, OciError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(OciError::io("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(OciError::io("list", dir))?;
        if let Some(d) = entry
            .file_name()
            .to_str()
            .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
        {
            out.push(d);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_refuses_wrong_digest_and_read_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = b"hello blob";
        let d = Digest::of(data);
        let wrong = Digest::of(b"other");
        assert!(matches!(
            store.write(&wrong, data),
            Err(OciError::DigestMismatch { .. })
        ));
        assert!(!store.contains(&wrong));
        store.write(&d, data).unwrap();
        assert_eq!(store.read_verified(&d).unwrap(), data);
        std::fs::write(store.path(&d), b"tampered").unwrap();
        assert!(matches!(
            store.read_verified(&d),
            Err(OciError::DigestMismatch { .. })
        ));
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn partial_downloads_resume_and_commit_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = vec![7u8; 10_000];
        let d = Digest::of(&data);
        let (mut f, have) = store.open_partial(&d).unwrap();
        assert_eq!(have, 0);
        f.write_all(&data[..4000]).unwrap();
        drop(f);
        let (mut f, have) = store.open_partial(&d).unwrap();
        assert_eq!(have, 4000);
        f.write_all(&data[4000..]).unwrap();
        drop(f);
        store.commit_partial(&d, 10_000).unwrap();
        assert!(store.contains(&d));
        assert!(!store.partial_path(&d).exists());
        assert_eq!(store.list().unwrap(), vec![d]);
    }

    #[test]
    fn a_corrupt_partial_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(b"right");
        let (mut f, _) = store.open_partial(&d).unwrap();
        f.write_all(b"wrong").unwrap();
        assert!(store.commit_partial(&d, 5).is_err());
        assert!(!store.partial_path(&d).exists());
        assert!(!store.contains(&d));
    }
}
