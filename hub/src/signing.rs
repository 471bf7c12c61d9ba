//! Key material on disk: the offline-capable root key, the manifest-signing key,
//! the root-signed key set, and the API token; plus sealing manifests.
//!
//! The root key only signs key sets. It is needed at `init` (and for a future
//! rotation), never by `serve`, so an operator can export it and delete it from the
//! hub (`keys export-root --remove`).

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
}
