//! Secret values at rest on the hub: the at-rest key (`secrets.key`, 32
//! random bytes, mode 0600, in the data dir but outside `hub.redb`) and the
//! ChaCha20-Poly1305 encryption of each value under it.
//!
//! The database holds only ciphertext, a SHA-256 and a size: a copy of
//! `hub.redb` (a backup, a support bundle) reveals no secret without the key
//! file. The AEAD's associated data binds the secret's name and version, so a
//! stored ciphertext cannot be moved to another secret's record.
//!
//! [`rotate`] replaces the key (`keys rotate-secrets`, hub stopped): the new
//! key is written as `secrets.key.next`, every value re-encrypted in one
//! store transaction, then the file renamed over the old one; [`settle`]
//! completes or discards a rotation a crash cut short, by which key opens
//! the stored values.

use crate::store::{SecretRecord, Store, StoreError};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// File name of the at-rest key inside the hub's data dir.
pub const KEY_FILE: &str = "secrets.key";
/// A new key being rotated in ([`rotate`]).
pub const NEXT_KEY_FILE: &str = "secrets.key.next";

#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("secret key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret key file {path} is {len} bytes; expected 32")]
    BadLength { path: PathBuf, len: usize },
    #[error("secret key file {path} is readable by others (mode {mode:o}); chmod 600 it")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("could not gather randomness for {what}")]
    Random { what: &'static str },
    #[error("stored secret {name:?} (version {version}) does not decrypt with {path}: wrong key file or corrupt record")]
    Decrypt {
        name: String,
        version: u64,
        path: PathBuf,
    },
    #[error("stored secret {name:?}: {field} is not valid hex")]
    BadRecord { name: String, field: &'static str },
}

/// The key that encrypts secret values in the store.
pub struct SecretKey {
    key: LessSafeKey,
    path: PathBuf,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.path.display())
    }
}

/// A value encrypted for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtRest {
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

fn aad(name: &str, version: u64) -> Vec<u8> {
    let mut a = b"outpost hub secret\0".to_vec();
    a.extend_from_slice(name.as_bytes());
    a.push(0);
    a.extend_from_slice(&version.to_be_bytes());
    a
}

impl SecretKey {
    /// Read `path`, or create it with fresh random bytes (mode 0600) when it
    /// does not exist. A key readable by group or others is refused.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, SecretKeyError> {
        match Self::load(path)? {
            Some(k) => Ok(k),
            None => {
                let k = Self::create(path)?;
                tracing::info!(path = %path.display(), "created the hub's secret key");
                Ok(k)
            }
        }
    }

    /// Read `path`; `None` when it does not exist. A key readable by group
    /// or others is refused.
    pub fn load(path: &Path) -> Result<Option<SecretKey>, SecretKeyError> {
        let io = |source| SecretKeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read(path) {
            Ok(b) => {
                let b = Zeroizing::new(b);
                let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(SecretKeyError::Permissions {
                        path: path.to_path_buf(),
                        mode,
                    });
                }
                Self::from_bytes(&b, path).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// Write a fresh random key to `path` (mode 0600, synced, never over an
    /// existing file).
    pub fn create(path: &Path) -> Result<SecretKey, SecretKeyError> {
        let io = |source| SecretKeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut b = Zeroizing::new(vec![0u8; 32]);
        SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| SecretKeyError::Random {
                what: "the secret key",
            })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(&b).and_then(|()| f.sync_all()).map_err(io)?;
        Self::from_bytes(&b, path)
    }

    fn from_bytes(bytes: &[u8], path: &Path) -> Result<SecretKey, SecretKeyError> {
        let unbound =
            UnboundKey::new(&CHACHA20_POLY1305, bytes).map_err(|_| SecretKeyError::BadLength {
                path: path.to_path_buf(),
                len: bytes.len(),
            })?;
        Ok(SecretKey {
            key: LessSafeKey::new(unbound),
            path: path.to_path_buf(),
        })
    }

    /// Encrypt `value` as version `version` of secret `name`.
    pub fn encrypt(
        &self,
        name: &str,
        version: u64,
        value: &[u8],
    ) -> Result<AtRest, SecretKeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretKeyError::Random { what: "a nonce" })?;
        let mut buf = value.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(name, version)),
                &mut buf,
            )
            .map_err(|_| SecretKeyError::Random { what: "sealing" })?;
        Ok(AtRest {
            nonce,
            ciphertext: buf,
        })
    }

    /// The value of a stored record; zeroed when dropped.
    pub fn decrypt(&self, rec: &SecretRecord) -> Result<Zeroizing<Vec<u8>>, SecretKeyError> {
        let bad = |field| SecretKeyError::BadRecord {
            name: rec.name.clone(),
            field,
        };
        let mut nonce = [0u8; NONCE_LEN];
        hex::decode_to_slice(&rec.nonce, &mut nonce).map_err(|_| bad("nonce"))?;
        let mut buf = Zeroizing::new(hex::decode(&rec.ciphertext).map_err(|_| bad("ciphertext"))?);
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&rec.name, rec.version)),
                &mut buf,
            )
            .map_err(|_| SecretKeyError::Decrypt {
                name: rec.name.clone(),
                version: rec.version,
                path: self.path.clone(),
            })?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Why a rotation of the at-rest key failed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Key(#[from] SecretKeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no secret key at {path}: nothing to rotate (the hub makes it at its first start)")]
    NoKey { path: PathBuf },
    #[error(
        "stored secret {name:?} (version {version}) opens with neither {current} nor {next}; \
         restore the key file from a backup"
    )]
    Neither {
        name: String,
        version: u64,
        current: PathBuf,
        next: PathBuf,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`settle`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// No rotation was under way.
    Nothing,
    /// The store had not been re-encrypted: the new key was discarded.
    Discarded,
    /// The store was re-encrypted: the new key replaced the old one.
    Completed,
}

/// `action` on `path` failed.
fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RotateError {
    let path = path.to_path_buf();
    move |source| RotateError::Io {
        action,
        path,
        source,
    }
}

fn rename_synced(from: &Path, to: &Path) -> Result<(), RotateError> {
    std::fs::rename(from, to).map_err(io("rename", from))?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", dir))?;
    }
    Ok(())
}

/// Finish or undo a rotation a crash cut short: with `next` present, the key
/// that opens the stored values is kept as `current`. Called at every hub
/// start and before a rotation.
pub fn settle(current: &Path, next: &Path, store: &Store) -> Result<Settled, RotateError> {
    let Some(new) = SecretKey::load(next)? else {
        return Ok(Settled::Nothing);
    };
    let old = SecretKey::load(current)?;
    let Some(sample) = store.secrets()?.into_iter().next() else {
        // Nothing stored: either key does; keep the one already in place.
        std::fs::remove_file(next).map_err(io("remove", next))?;
        return Ok(Settled::Discarded);
    };
    if old.as_ref().is_some_and(|k| k.decrypt(&sample).is_ok()) {
        std::fs::remove_file(next).map_err(io("remove", next))?;
        tracing::warn!(path = %next.display(), "discarded a secret key rotation that did not complete");
        return Ok(Settled::Discarded);
    }
    if new.decrypt(&sample).is_ok() {
        rename_synced(next, current)?;
        tracing::warn!(path = %current.display(), "completed a secret key rotation cut short");
        return Ok(Settled::Completed);
    }
    Err(RotateError::Neither {
        name: sample.name,
        version: sample.version,
        current: current.to_path_buf(),
        next: next.to_path_buf(),
    })
}

/// Replace the at-rest key at `current` with a fresh one and re-encrypt
/// every stored value under it (one transaction); returns how many values.
/// Values, versions and manifests are unchanged: devices see nothing.
pub fn rotate(current: &Path, next: &Path, store: &Store) -> Result<usize, RotateError> {
    settle(current, next, store)?;
    let old = SecretKey::load(current)?.ok_or_else(|| RotateError::NoKey {
        path: current.to_path_buf(),
    })?;
    let new = SecretKey::create(next)?;
    let n = store.write(|tx| {
        let records = tx.secrets()?;
        for rec in &records {
            let value = old.decrypt(rec)?;
            let at = new.encrypt(&rec.name, rec.version, &value)?;
            tx.put_secret(&SecretRecord {
                nonce: hex::encode(at.nonce),
                ciphertext: hex::encode(&at.ciphertext),
                ..rec.clone()
            })?;
        }
        Ok::<_, RotateError>(records.len())
    });
    let n = match n {
        Ok(n) => n,
        Err(e) => {
            // Nothing was committed: the new key opens nothing.
            let _ = std::fs::remove_file(next);
            return Err(e);
        }
    };
    rename_synced(next, current)?;
    Ok(n)
}

/// Lowercase hex SHA-256 of `bytes` (what the API shows of a value).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, version: u64, at: &AtRest) -> SecretRecord {
        SecretRecord {
            name: name.into(),
            scope: Default::default(),
            version,
            sha256: String::new(),
            size: 0,
            nonce: hex::encode(at.nonce),
            ciphertext: hex::encode(&at.ciphertext),
            updated_at: 0,
            updated_by: String::new(),
        }
    }

    #[test]
    fn values_round_trip_and_are_bound_to_name_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let key = SecretKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let at = key.encrypt("db", 2, b"pw-marker").unwrap();
        assert!(!at.ciphertext.windows(9).any(|w| w == b"pw-marker"));
        assert_eq!(
            key.decrypt(&record("db", 2, &at)).unwrap().as_slice(),
            b"pw-marker"
        );
        assert!(key.decrypt(&record("api", 2, &at)).is_err(), "moved name");
        assert!(key.decrypt(&record("db", 1, &at)).is_err(), "moved version");
        // The same file again: the same key.
        let again = SecretKey::load_or_create(&path).unwrap();
        assert_eq!(
            again.decrypt(&record("db", 2, &at)).unwrap().as_slice(),
            b"pw-marker"
        );
        // A key readable by others is refused, by path.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains(KEY_FILE), "{err}");
    }

    /// A rotation cut short is completed or undone by which key opens the
    /// stored values; a store neither opens is an error naming both files.
    #[test]
    fn a_rotation_cut_short_is_settled_by_which_key_opens_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join(KEY_FILE);
        let next = dir.path().join(NEXT_KEY_FILE);
        let store = Store::open(&dir.path().join("hub.redb")).unwrap();
        let old = SecretKey::load_or_create(&current).unwrap();
        let put = |key: &SecretKey| {
            let at = key.encrypt("db", 1, b"value").unwrap();
            store
                .write(|tx| tx.put_secret(&record("db", 1, &at)))
                .unwrap();
        };
        put(&old);
        assert_eq!(settle(&current, &next, &store).unwrap(), Settled::Nothing);
        // Cut before the store was re-encrypted: the new key goes.
        SecretKey::create(&next).unwrap();
        assert_eq!(settle(&current, &next, &store).unwrap(), Settled::Discarded);
        assert!(!next.exists());
        // Cut after the commit, before the rename: the new key stays.
        let new = SecretKey::create(&next).unwrap();
        put(&new);
        let new_bytes = std::fs::read(&next).unwrap();
        assert_eq!(settle(&current, &next, &store).unwrap(), Settled::Completed);
        assert_eq!(std::fs::read(&current).unwrap(), new_bytes);
        let rec = store.secrets().unwrap().remove(0);
        let k = SecretKey::load(&current).unwrap().unwrap();
        assert_eq!(k.decrypt(&rec).unwrap().as_slice(), b"value");
        // A whole rotation: a third key, the value kept.
        assert_eq!(rotate(&current, &next, &store).unwrap(), 1);
        assert_ne!(std::fs::read(&current).unwrap(), new_bytes);
        let rec = store.secrets().unwrap().remove(0);
        let k = SecretKey::load(&current).unwrap().unwrap();
        assert_eq!(k.decrypt(&rec).unwrap().as_slice(), b"value");
        // Neither key opens the store: refused, naming both files.
        let stranger = SecretKey::create(&dir.path().join("x.key")).unwrap();
        put(&stranger);
        SecretKey::create(&next).unwrap();
        let e = settle(&current, &next, &store).unwrap_err().to_string();
        assert!(e.contains(KEY_FILE) && e.contains(NEXT_KEY_FILE), "{e}");
    }
}
