//! Key material on disk: the offline-capable root key, the manifest-signing key,
//! the root-signed key set, and the API token; plus sealing manifests.
//!
//! The root key only signs key sets. It is needed at `init` and to rotate the
//! signing key (`keys rotate`), never by `serve`, so an operator can export it
//! and delete it from the hub (`keys export-root --remove`) and bring it back
//! only to rotate (`keys rotate --root-key FILE`).

use crate::config::DataDir;
use outpost_protocol::envelope::{self, Kind};
use outpost_protocol::{KeySet, Manifest, PublicKey, SignedKeySet, SigningKey};
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
}

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
        let keyset = SignedKeySet::verify(&keyset_bytes, &root, None).map_err(|source| {
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
/// Crash-safe: both new files are written and synced as `*.next` before either
/// replaces its original, and `Signer::load` finishes (or discards) a rotation
/// that was cut short.
pub fn rotate(dir: &DataDir, root_key: Option<&Path>, now: u64) -> Result<Rotated, KeyFileError> {
    let current = Signer::load(dir)?;
    let root_path = root_key.map_or_else(|| dir.root_key(), Path::to_path_buf);
    if !root_path.exists() {
        return Err(KeyFileError::RootKeyAbsent { path: root_path });
    }
    let root = load_key(&root_path)?;
    if root.public_key() != root_public(dir)? {
        return Err(KeyFileError::WrongRootKey { path: root_path });
    }
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

/// Complete a rotation whose `*.next` files are both present and consistent
/// (the key set verifies with `root.pub` and lists the key); otherwise throw
/// the leftovers away, leaving the current keys in charge.
fn finish_rotation(dir: &DataDir) -> Result<(), KeyFileError> {
    let (key_next, set_next) = (next_path(&dir.signing_key()), next_path(&dir.keyset()));
    if !key_next.exists() && !set_next.exists() {
        return Ok(());
    }
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
        let set = SignedKeySet::verify(&bytes, &root_public(dir).ok()?, None).ok()?;
        set.find(&key.key_id()).map(|_| ())
    })()
    .is_some();
    if complete {
        // The key set first: a crash between the renames leaves the new key
        // set with `signing.key.next` still pending, which the next load
        // completes here.
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
        for p in [&key_next, &set_next] {
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
