//! Key material on disk: the offline-capable root key, the manifest-signing key,
//! the root-signed key set, and the API token; plus sealing manifests.
//!
//! The root key only signs key sets and the link to its successor. It is
//! needed at `init` and to rotate the signing key (`keys rotate`) or itself
//! (`keys rotate-root`), never by `serve`, so an operator can export it and
//! delete it from the hub (`keys export-root --remove`) and bring it back only
//! to rotate (`keys rotate --root-key FILE`).
//!
//! Key sets expire (a year by default): `keys rotate` issues a fresh one.
//! Root rotation links are kept in `roots/<version>.bin` and published by
//! `serve`, so a device provisioned under any earlier root walks the chain.

use crate::config::DataDir;
use outpost_protocol::envelope::{self, Kind};
use outpost_protocol::{KeySet, Manifest, PublicKey, RootRotation, SignedKeySet, SigningKey};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why key material could not be created, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite key material")]
    Exists { path: PathBuf },
    #[error("{path} does not hold a valid key: {source}")]
    BadKey {
        path: PathBuf,
        source: outpost_protocol::KeyError,
    },
    #[error("{path} does not hold a key set signed by the root key: {source}")]
    BadKeySet {
        path: PathBuf,
        source: outpost_protocol::KeySetError,
    },
    #[error("the signing key {key_id} is not listed in the key set {path}")]
    SignerNotInKeySet { key_id: String, path: PathBuf },
    #[error("could not generate a key: {0}")]
    Generate(outpost_protocol::KeyError),
    #[error("the system random source failed")]
    Random,
    #[error("the root key is not in this data directory ({path}); it was exported")]
    RootKeyAbsent { path: PathBuf },
    #[error("{path} is not the root key of this hub: its public key differs from root.pub")]
    WrongRootKey { path: PathBuf },
    #[error("the key set version cannot go past {version}")]
    EpochExhausted { version: u64 },
    #[error("manifest could not be encoded: {0}")]
    Encode(String),
    #[error("the root key was given with --root-key {root_key}, so the new root needs a place outside the data directory: pass --new-root-out FILE")]
    NewRootOutMissing { root_key: PathBuf },
    #[error("root rotation link {path}: {detail}")]
    BadRootLink { path: PathBuf, detail: String },
}

/// How long a key set is adopted as new by devices: renewing it needs the
/// root key, which is meant to be offline, so this is long.
pub const KEYSET_VALID_SECS: u64 = 365 * 86_400;

/// Write `bytes` to a new file with mode 0600; never overwrites.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                KeyFileError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|source| KeyFileError::Write {
            path: path.to_path_buf(),
            source,
        })
}

fn read(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    std::fs::read(path).map_err(|source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn load_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    SigningKey::from_pkcs8(&read(path)?).map_err(|source| KeyFileError::BadKey {
        path: path.to_path_buf(),
        source,
    })
}

/// A fresh random API token: 32 bytes from the system RNG, hex.
pub fn new_token() -> Result<String, KeyFileError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| KeyFileError::Random)?;
    Ok(hex::encode(b))
}

/// What `init` created.
#[derive(Debug)]
pub struct Created {
    pub root_public: PublicKey,
    pub signing_key_id: String,
    pub token: String,
}

/// Create root key, signing key, key set version 1, and token in `dir`.
pub fn create_keys(dir: &DataDir, now: u64) -> Result<Created, KeyFileError> {
    let root = SigningKey::generate().map_err(KeyFileError::Generate)?;
    let signer = SigningKey::generate().map_err(KeyFileError::Generate)?;
    let set = KeySet {
        version: 1,
        issued_at: now,
        keys: vec![signer.public_key()],
        expires_at: now.saturating_add(KEYSET_VALID_SECS),
        root_version: 1,
    };
    let signed = SignedKeySet::sign(&set, &root);
    let token = new_token()?;
    write_private(&dir.root_key(), root.pkcs8())?;
    write_private(&dir.signing_key(), signer.pkcs8())?;
    write_private(&dir.token(), token.as_bytes())?;
    std::fs::write(dir.root_pub(), format!("{}\n", root.public_key())).map_err(|source| {
        KeyFileError::Write {
            path: dir.root_pub(),
            source,
        }
    })?;
    std::fs::write(dir.keyset(), &signed.0).map_err(|source| KeyFileError::Write {
        path: dir.keyset(),
        source,
    })?;
    Ok(Created {
        root_public: root.public_key(),
        signing_key_id: signer.key_id().0,
        token,
    })
}

/// The keys `serve` needs: the signing key and the verified key set it belongs to.
pub struct Signer {
    key: SigningKey,
    keyset: KeySet,
    keyset_bytes: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key.key_id())
            .field("epoch", &self.keyset.version)
            .finish()
    }
}

impl Signer {
    /// Load and cross-check `signing.key`, `root.pub` and `keyset.bin`.
    pub fn load(dir: &DataDir) -> Result<Signer, KeyFileError> {
        finish_rotation(dir)?;
        let key = load_key(&dir.signing_key())?;
        let root_text = String::from_utf8_lossy(&read(&dir.root_pub())?).to_string();
        let root: PublicKey = root_text
            .trim()
            .parse()
            .map_err(|source| KeyFileError::BadKey {
                path: dir.root_pub(),
                source,
            })?;
        let keyset_bytes = read(&dir.keyset())?;
        // Time 0: the hub keeps serving its own key set after it expired
        // (devices holding it keep working); `serve` warns, `keys rotate`
        // renews it.
        let keyset = SignedKeySet::verify(&keyset_bytes, &root, None, 0).map_err(|source| {
            KeyFileError::BadKeySet {
                path: dir.keyset(),
                source,
            }
        })?;
        if keyset.find(&key.key_id()).is_none() {
            return Err(KeyFileError::SignerNotInKeySet {
                key_id: key.key_id().0,
                path: dir.keyset(),
            });
        }
        Ok(Signer {
            key,
            keyset,
            keyset_bytes,
        })
    }

    /// Build from parts (tests, simulators).
    pub fn from_parts(key: SigningKey, keyset: KeySet, keyset_bytes: Vec<u8>) -> Signer {
        Signer {
            key,
            keyset,
            keyset_bytes,
        }
    }

    /// The manifest epoch: the version of the key set the signing key belongs to.
    pub fn epoch(&self) -> u64 {
        self.keyset.version
    }

    pub fn key_id(&self) -> outpost_protocol::KeyId {
        self.key.key_id()
    }

    /// The root-signed key set as published on `topics::keyset()`.
    pub fn keyset_bytes(&self) -> &[u8] {
        &self.keyset_bytes
    }

    /// When devices stop adopting this key set as new (unix seconds).
    pub fn keyset_expires_at(&self) -> u64 {
        self.keyset.expires_at
    }

    /// Seal a log request (its own envelope kind, same key).
    pub fn seal_log_request(&self, r: &outpost_protocol::LogRequest) -> Vec<u8> {
        r.seal(&self.key)
    }

    /// Seal the hub heartbeat (its own envelope kind, same key).
    pub fn seal_heartbeat(&self, h: &outpost_protocol::Heartbeat) -> Vec<u8> {
        h.seal(&self.key)
    }

    /// Seal a device's event watermark (its own envelope kind, same key).
    pub fn seal_watermark(&self, w: &outpost_protocol::EventWatermark) -> Vec<u8> {
        w.seal(&self.key)
    }

    /// Seal a manifest for the wire.
    pub fn seal(&self, manifest: &Manifest) -> Result<Vec<u8>, KeyFileError> {
        envelope::seal_value(Kind::Manifest, &self.key, manifest)
            .map_err(|e| KeyFileError::Encode(e.to_string()))
    }
}

/// Copy the root key to `out` (mode 0600) and, with `remove`, delete it from the
/// data directory. `serve` never needs it.
pub fn export_root(dir: &DataDir, out: &Path, remove: bool) -> Result<(), KeyFileError> {
    let path = dir.root_key();
    if !path.exists() {
        return Err(KeyFileError::RootKeyAbsent { path });
    }
    let key = load_key(&path)?;
    write_private(out, key.pkcs8())?;
    // Read back before deleting, so a failed write never loses the only copy.
    let again = load_key(out)?;
    if again.public_key() != key.public_key() {
        return Err(KeyFileError::Write {
            path: out.to_path_buf(),
            source: std::io::Error::other("exported key does not read back identically"),
        });
    }
    if remove {
        std::fs::remove_file(&path).map_err(|source| KeyFileError::Write { path, source })?;
    }
    Ok(())
}

/// What `keys rotate` did.
#[derive(Debug)]
pub struct Rotated {
    pub previous_key_id: String,
    pub signing_key_id: String,
    /// The new key set's version: the epoch of every manifest from now on.
    pub epoch: u64,
}

fn next_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

fn root_public(dir: &DataDir) -> Result<PublicKey, KeyFileError> {
    String::from_utf8_lossy(&read(&dir.root_pub())?)
        .trim()
        .parse()
        .map_err(|source| KeyFileError::BadKey {
            path: dir.root_pub(),
            source,
        })
}

/// Replace the manifest-signing key: a new key, in a new key set (version + 1,
/// listing only the new key, so a compromised old key is revoked) signed by the
/// root key from `root_key` or the data directory. Takes effect when the hub
/// next starts: it publishes the new key set and re-signs every device's
/// manifest under the new epoch. Agents adopt a key set only if the root key
/// signed it and it is newer than theirs, so no device is re-provisioned.
///
/// The root key both rotations sign with: `root_key` (exported) or the data
/// directory's, present and matching the data directory's `root.pub`.
fn current_root_key(dir: &DataDir, root_key: Option<&Path>) -> Result<SigningKey, KeyFileError> {
    let path = root_key.map_or_else(|| dir.root_key(), Path::to_path_buf);
    if !path.exists() {
        return Err(KeyFileError::RootKeyAbsent { path });
    }
    let key = load_key(&path)?;
    if key.public_key() != root_public(dir)? {
        return Err(KeyFileError::WrongRootKey { path });
    }
    Ok(key)
}

/// Crash-safe: both new files are written and synced as `*.next` before either
/// replaces its original, and `Signer::load` finishes (or discards) a rotation
/// that was cut short.
pub fn rotate(dir: &DataDir, root_key: Option<&Path>, now: u64) -> Result<Rotated, KeyFileError> {
    let current = Signer::load(dir)?;
    let root = current_root_key(dir, root_key)?;
    let version = current
        .keyset
        .version
        .checked_add(1)
        .ok_or(KeyFileError::EpochExhausted {
            version: current.keyset.version,
        })?;
    let next = SigningKey::generate().map_err(KeyFileError::Generate)?;
    let set = KeySet {
        version,
        issued_at: now,
        keys: vec![next.public_key()],
        expires_at: now.saturating_add(KEYSET_VALID_SECS),
        root_version: current.keyset.root_version,
    };
    let signed = SignedKeySet::sign(&set, &root);
    let (key_next, set_next) = (next_path(&dir.signing_key()), next_path(&dir.keyset()));
    write_private(&key_next, next.pkcs8())?;
    write_private(&set_next, &signed.0)?;
    finish_rotation(dir)?;
    Ok(Rotated {
        previous_key_id: current.key.key_id().0,
        signing_key_id: next.key_id().0,
        epoch: version,
    })
}

/// What `keys rotate-root` did.
#[derive(Debug)]
pub struct RootRotated {
    pub previous_root: PublicKey,
    pub new_root: PublicKey,
    /// The new root's version (the first root is 1).
    pub root_version: u64,
    /// The key set version (manifest epoch) signed by the new root.
    pub epoch: u64,
    /// Where the new root key was written.
    pub new_root_path: PathBuf,
}

/// Replace the root key: a new root, announced by a link signed by the old
/// root and countersigned by the new one (`outpost_protocol::root`), and a new
/// signing key in a key set signed by the new root. Devices walk the link
/// when the hub next starts and publishes it; none is re-provisioned.
///
/// With the root key in the data directory the new one replaces it there;
/// with `root_key` (exported) the new one goes to `new_root_out`, and the old
/// file is the operator's to destroy. Crash-safe like [`rotate`]: everything
/// is written as `*.next` first and [`finish_rotation`] completes or discards
/// it as a whole, so a link is never published without the key set it leads
/// to.
pub fn rotate_root(
    dir: &DataDir,
    root_key: Option<&Path>,
    new_root_out: Option<&Path>,
    now: u64,
) -> Result<RootRotated, KeyFileError> {
    let current = Signer::load(dir)?;
    let old = current_root_key(dir, root_key)?;
    let new_root_path = match (root_key, new_root_out) {
        (_, Some(out)) => out.to_path_buf(),
        (None, None) => dir.root_key(),
        (Some(r), None) => {
            return Err(KeyFileError::NewRootOutMissing {
                root_key: r.to_path_buf(),
            })
        }
    };
    let root_version = current.keyset.root_version.saturating_add(1);
    let epoch = current
        .keyset
        .version
        .checked_add(1)
        .ok_or(KeyFileError::EpochExhausted {
            version: current.keyset.version,
        })?;
    let new_root = SigningKey::generate().map_err(KeyFileError::Generate)?;
    let signer = SigningKey::generate().map_err(KeyFileError::Generate)?;
    let link = RootRotation::sign(root_version, &old, &new_root, now);
    let set = KeySet {
        version: epoch,
        issued_at: now,
        keys: vec![signer.public_key()],
        expires_at: now.saturating_add(KEYSET_VALID_SECS),
        root_version,
    };
    let signed = SignedKeySet::sign(&set, &new_root);
    std::fs::create_dir_all(dir.roots()).map_err(|source| KeyFileError::Write {
        path: dir.roots(),
        source,
    })?;
    // The new root first, where the operator keeps it: everything after it
    // can be redone, a lost new root could not.
    if new_root_path == dir.root_key() {
        write_private(&next_path(&dir.root_key()), new_root.pkcs8())?;
    } else {
        write_private(&new_root_path, new_root.pkcs8())?;
    }
    write_private(&next_path(&dir.root_link(root_version)), &link)?;
    write_private(
        &next_path(&dir.root_pub()),
        format!(
            "{}
",
            new_root.public_key()
        )
        .as_bytes(),
    )?;
    write_private(&next_path(&dir.signing_key()), signer.pkcs8())?;
    write_private(&next_path(&dir.keyset()), &signed.0)?;
    finish_rotation(dir)?;
    Ok(RootRotated {
        previous_root: old.public_key(),
        new_root: new_root.public_key(),
        root_version,
        epoch,
        new_root_path,
    })
}

/// The root rotation links in `roots/`, by version, each checked to lead
/// from the previous one (the chain devices will walk).
pub fn root_links(dir: &DataDir) -> Result<Vec<(u64, Vec<u8>)>, KeyFileError> {
    let mut links = Vec::new();
    let entries = match std::fs::read_dir(dir.roots()) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(links),
        Err(source) => {
            return Err(KeyFileError::Read {
                path: dir.roots(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(v) = name
            .strip_suffix(".bin")
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        links.push((v, read(&entry.path())?));
    }
    links.sort_by_key(|(v, _)| *v);
    Ok(links)
}

/// Complete a rotation whose `*.next` files are both present and consistent
/// (the key set verifies with `root.pub` and lists the key); otherwise throw
/// the leftovers away, leaving the current keys in charge.
fn finish_rotation(dir: &DataDir) -> Result<(), KeyFileError> {
    let (key_next, set_next) = (next_path(&dir.signing_key()), next_path(&dir.keyset()));
    let (pub_next, root_next) = (next_path(&dir.root_pub()), next_path(&dir.root_key()));
    let links_next: Vec<PathBuf> = std::fs::read_dir(dir.roots())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "next"))
                .collect()
        })
        .unwrap_or_default();
    if !key_next.exists() && !set_next.exists() {
        // A root rotation cut short before its key set: nothing leads there.
        for p in links_next.iter().chain([&pub_next, &root_next]) {
            if p.exists() {
                tracing::warn!(path = %p.display(), "discarding a leftover of an incomplete root rotation");
                std::fs::remove_file(p).map_err(|source| KeyFileError::Write {
                    path: p.to_path_buf(),
                    source,
                })?;
            }
        }
        return Ok(());
    }
    // A root rotation: the pending key set is signed by the pending root.
    let root_pub_path = if pub_next.exists() {
        pub_next.clone()
    } else {
        dir.root_pub()
    };
    // After the first rename only `signing.key.next` is left, and the key set
    // to check it against is the (already new) `keyset.bin`.
    let set_path = if set_next.exists() {
        set_next.clone()
    } else {
        dir.keyset()
    };
    let complete = (|| {
        let key = load_key(&key_next).ok()?;
        let bytes = std::fs::read(&set_path).ok()?;
        let root: PublicKey = String::from_utf8_lossy(&std::fs::read(&root_pub_path).ok()?)
            .trim()
            .parse()
            .ok()?;
        let set = SignedKeySet::verify(&bytes, &root, None, 0).ok()?;
        set.find(&key.key_id()).map(|_| ())
    })()
    .is_some();
    if complete {
        // Root material and links first, then the key set, then the key: a
        // crash between the renames leaves later `.next` files pending, which
        // the next load completes here (the key set verifies against the
        // already renamed root.pub).
        let mut renames: Vec<(PathBuf, PathBuf)> = links_next
            .iter()
            .map(|p| (p.clone(), p.with_extension("")))
            .collect();
        renames.push((root_next.clone(), dir.root_key()));
        renames.push((pub_next.clone(), dir.root_pub()));
        for (from, to) in renames {
            if from.exists() {
                std::fs::rename(&from, &to).map_err(|source| KeyFileError::Write {
                    path: to.clone(),
                    source,
                })?;
            }
        }
        for (from, to) in [(&set_next, dir.keyset()), (&key_next, dir.signing_key())] {
            if from.exists() {
                std::fs::rename(from, &to).map_err(|source| KeyFileError::Write {
                    path: to.clone(),
                    source,
                })?;
            }
        }
        tracing::info!("signing key rotation completed");
    } else if set_next.exists() || key_next.exists() {
        tracing::warn!("discarding an incomplete signing key rotation");
        for p in [&key_next, &set_next, &pub_next, &root_next]
            .into_iter()
            .chain(links_next.iter())
        {
            if p.exists() {
                std::fs::remove_file(p).map_err(|source| KeyFileError::Write {
                    path: p.to_path_buf(),
                    source,
                })?;
            }
        }
    }
    if let Ok(d) = std::fs::File::open(dir.keyset().parent().unwrap_or(Path::new("."))) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_keys_load_and_root_exports() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let created = create_keys(&dir, 7).unwrap();
        let signer = Signer::load(&dir).unwrap();
        assert_eq!(signer.epoch(), 1);
        assert_eq!(signer.key_id().0, created.signing_key_id);
        let mode = std::fs::metadata(dir.root_key())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            create_keys(&dir, 7),
            Err(KeyFileError::Exists { .. })
        ));
        let out = tmp.path().join("exported.key");
        export_root(&dir, &out, true).unwrap();
        assert!(!dir.root_key().exists());
        // serve does not need the root key
        Signer::load(&dir).unwrap();
        assert!(matches!(
            export_root(&dir, &tmp.path().join("again"), false),
            Err(KeyFileError::RootKeyAbsent { .. })
        ));
    }

    #[test]
    fn rotation_replaces_the_key_and_bumps_the_epoch() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let created = create_keys(&dir, 7).unwrap();
        let r = rotate(&dir, None, 8).unwrap();
        assert_eq!(r.previous_key_id, created.signing_key_id);
        assert_eq!(r.epoch, 2);
        let signer = Signer::load(&dir).unwrap();
        assert_eq!((signer.epoch(), signer.key_id().0), (2, r.signing_key_id));
        assert_eq!(signer.keyset.keys.len(), 1, "the old key is revoked");
        assert!(!next_path(&dir.signing_key()).exists());
        assert!(!next_path(&dir.keyset()).exists());
        let mode = std::fs::metadata(dir.signing_key())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_rotation_cut_short_is_finished_or_discarded_on_load() {
        // Cut after the key set was renamed, before the key: finished.
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        create_keys(&dir, 7).unwrap();
        let root = load_key(&dir.root_key()).unwrap();
        let next = SigningKey::generate().unwrap();
        let set = KeySet {
            version: 2,
            issued_at: 8,
            keys: vec![next.public_key()],
            expires_at: outpost_protocol::NEVER,
            root_version: 1,
        };
        write_private(&next_path(&dir.signing_key()), next.pkcs8()).unwrap();
        std::fs::write(dir.keyset(), SignedKeySet::sign(&set, &root).0).unwrap();
        let signer = Signer::load(&dir).unwrap();
        assert_eq!((signer.epoch(), signer.key_id()), (2, next.key_id()));

        // Cut while writing the new files: discarded, the old keys stay.
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let created = create_keys(&dir, 7).unwrap();
        write_private(&next_path(&dir.signing_key()), next.pkcs8()).unwrap();
        std::fs::write(next_path(&dir.keyset()), b"trunc").unwrap();
        let signer = Signer::load(&dir).unwrap();
        assert_eq!(
            (signer.epoch(), signer.key_id().0),
            (1, created.signing_key_id)
        );
        assert!(!next_path(&dir.signing_key()).exists());
        assert!(!next_path(&dir.keyset()).exists());
    }

    #[test]
    fn rotation_needs_this_hubs_root_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        create_keys(&dir, 7).unwrap();
        let other = tmp.path().join("other.key");
        write_private(&other, SigningKey::generate().unwrap().pkcs8()).unwrap();
        assert!(matches!(
            rotate(&dir, Some(&other), 8),
            Err(KeyFileError::WrongRootKey { .. })
        ));
        assert_eq!(Signer::load(&dir).unwrap().epoch(), 1);
    }
}
