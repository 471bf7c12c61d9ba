//! Rotation of manifest-signing keys under a root key that can stay offline.
//!
//! Devices are provisioned with the root public key and an initial [`KeySet`]. The
//! hub publishes newer key sets (retained); an agent adopts one only if the root key
//! signed it and its version is higher than the one it holds. The key-set version
//! is also the manifest *epoch* (see [`crate::Manifest::epoch`]).

use crate::envelope::{self, Kind, OpenError};
use crate::keys::{KeyId, PublicKey, SigningKey};
use serde::{Deserialize, Serialize};

/// Most keys one key set may list.
pub const MAX_KEYS: usize = 16;

/// The manifest-signing keys trusted at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySet {
    pub version: u64,
    pub issued_at: u64,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_KEYS>")]
    pub keys: Vec<PublicKey>,
    /// Unix seconds (hub clock) after which an agent no longer adopts this key
    /// set as *new*; one it holds stays trusted (an offline device keeps
    /// working). Renewing needs the root key, so this is long (a year by
    /// default, `outpost-hub keys rotate --valid-days`). `NEVER` before format
    /// version 3.
    #[serde(default = "crate::manifest::never")]
    pub expires_at: u64,
    /// Version of the root key that signs this set (`root.rs`): a device
    /// provisioned after root rotations learns where in the chain it starts.
    /// 1 before format version 3.
    #[serde(default = "first_root")]
    pub root_version: u64,
}

fn first_root() -> u64 {
    1
}

/// Why a key set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("key set envelope: {0}")]
    Open(#[from] OpenError),
    #[error("key set is signed by key {found}, not by the root key {root}")]
    NotRootKey { found: KeyId, root: KeyId },
    #[error("key set signature does not verify against the root key")]
    BadSignature,
    #[error("key set version {got} is not newer than the trusted version {current}")]
    NotNewer { current: u64, got: u64 },
    #[error("key set version {0} lists no keys")]
    Empty(u64),
    #[error("key set version {version} expired at {expires_at} (unix seconds), trusted time is {now}: a stale key set is not adopted")]
    Expired {
        version: u64,
        expires_at: u64,
        now: u64,
    },
}

impl KeySet {
    pub fn find(&self, id: &KeyId) -> Option<&PublicKey> {
        self.keys.iter().find(|k| &k.key_id() == id)
    }

    /// Version 1 listing `key` alone, never expiring (the tests' trusted set).
    #[cfg(test)]
    pub(crate) fn of_one(key: &SigningKey) -> KeySet {
        KeySet {
            version: 1,
            issued_at: 0,
            keys: vec![key.public_key()],
            expires_at: crate::manifest::NEVER,
            root_version: 1,
        }
    }
}

/// A key set as published: sealed bytes signed by the root key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedKeySet(pub Vec<u8>);

impl SignedKeySet {
    pub fn sign(set: &KeySet, root: &SigningKey) -> Self {
        SignedKeySet(
            envelope::seal_value(Kind::KeySet, root, set)
                .expect("postcard encodes a KeySet into a Vec infallibly"),
        )
    }

    /// Verify against `root` and return the key set if it is newer than `current`
    /// (pass `None` when provisioning the first one) and not expired at `now`
    /// (the caller's trusted time, unix seconds).
    pub fn verify(
        bytes: &[u8],
        root: &PublicKey,
        current: Option<u64>,
        now: u64,
    ) -> Result<KeySet, KeySetError> {
        let opened = envelope::open(Kind::KeySet, bytes)?;
        if opened.key_id != root.key_id() {
            return Err(KeySetError::NotRootKey {
                found: opened.key_id.clone(),
                root: root.key_id(),
            });
        }
        if !opened.signed_by(root) {
            return Err(KeySetError::BadSignature);
        }
        let set = decode_keyset(opened.version, opened.body)?;
        if set.keys.is_empty() {
            return Err(KeySetError::Empty(set.version));
        }
        if let Some(current) = current {
            if set.version <= current {
                return Err(KeySetError::NotNewer {
                    current,
                    got: set.version,
                });
            }
        }
        if set.expires_at <= now {
            return Err(KeySetError::Expired {
                version: set.version,
                expires_at: set.expires_at,
                now,
            });
        }
        Ok(set)
    }
}

/// Key sets before format version 3: no expiry, root version 1. Frozen.
#[derive(Deserialize)]
pub(crate) struct KeySetV2 {
    version: u64,
    issued_at: u64,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_KEYS>")]
    keys: Vec<PublicKey>,
}

impl From<KeySetV2> for KeySet {
    fn from(k: KeySetV2) -> KeySet {
        KeySet {
            version: k.version,
            issued_at: k.issued_at,
            keys: k.keys,
            expires_at: crate::manifest::NEVER,
            root_version: 1,
        }
    }
}

/// Decode a key set body written in envelope format `version`.
pub fn decode_keyset(version: u8, body: &[u8]) -> Result<KeySet, OpenError> {
    match version {
        1 | 2 => Ok(envelope::decode_body::<KeySetV2>("key set (format version 2)", body)?.into()),
        _ => envelope::decode_body("key set", body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_newer_root_signed_sets_are_adopted() {
        let root = SigningKey::generate().unwrap();
        let signer = SigningKey::generate().unwrap();
        let set = KeySet {
            version: 2,
            issued_at: 0,
            keys: vec![signer.public_key()],
            expires_at: 1000,
            root_version: 1,
        };
        let signed = SignedKeySet::sign(&set, &root);
        assert_eq!(
            SignedKeySet::verify(&signed.0, &root.public_key(), Some(1), 10).unwrap(),
            set
        );
        assert!(matches!(
            SignedKeySet::verify(&signed.0, &root.public_key(), Some(2), 10),
            Err(KeySetError::NotNewer { current: 2, got: 2 })
        ));
        let by_signer = SignedKeySet::sign(&set, &signer);
        assert!(matches!(
            SignedKeySet::verify(&by_signer.0, &root.public_key(), Some(1), 10),
            Err(KeySetError::NotRootKey { .. })
        ));
        let mut tampered = signed.0.clone();
        let n = tampered.len();
        tampered[n - 1] ^= 1;
        assert!(SignedKeySet::verify(&tampered, &root.public_key(), Some(1), 10).is_err());
        assert!(matches!(
            SignedKeySet::verify(&signed.0, &root.public_key(), Some(1), 1000),
            Err(KeySetError::Expired {
                version: 2,
                expires_at: 1000,
                now: 1000
            })
        ));
        let empty = SignedKeySet::sign(
            &KeySet {
                version: 3,
                issued_at: 0,
                keys: vec![],
                expires_at: 1000,
                root_version: 1,
            },
            &root,
        );
        assert!(matches!(
            SignedKeySet::verify(&empty.0, &root.public_key(), None, 10),
            Err(KeySetError::Empty(3))
        ));
    }
}

#[cfg(test)]
mod legacy_tests {
    use super::*;
    use serde::Serialize;

    #[test]
    fn a_version_2_key_set_opens_and_never_expires() {
        #[derive(Serialize)]
        struct Old {
            version: u64,
            issued_at: u64,
            keys: Vec<PublicKey>,
        }
        let root = SigningKey::generate().unwrap();
        let old = Old {
            version: 4,
            issued_at: 7,
            keys: vec![root.public_key()],
        };
        let bytes =
            envelope::seal_version(2, Kind::KeySet, &root, &postcard::to_stdvec(&old).unwrap());
        let set = SignedKeySet::verify(&bytes, &root.public_key(), None, u64::MAX - 1).unwrap();
        assert_eq!((set.version, set.issued_at), (4, 7));
        assert_eq!(set.expires_at, crate::manifest::NEVER);
    }
}
