//! Rotation of manifest-signing keys under a root key that can stay offline.
//!
//! Devices are provisioned with the root public key and an initial [`KeySet`]. The
//! hub publishes newer key sets (retained); an agent adopts one only if the root key
//! signed it and its version is higher than the one it holds. The key-set version
//! is also the manifest *epoch* (see [`crate::Manifest::epoch`]).

use crate::envelope::{self, Kind, OpenError};
use crate::keys::{KeyId, PublicKey, SigningKey};
use serde::{Deserialize, Serialize};

const MAX_KEYS: usize = 16;

/// The manifest-signing keys trusted at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySet {
    pub version: u64,
    pub issued_at: u64,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_KEYS>")]
    pub keys: Vec<PublicKey>,
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
}

impl KeySet {
    pub fn find(&self, id: &KeyId) -> Option<&PublicKey> {
        self.keys.iter().find(|k| &k.key_id() == id)
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
    /// (pass `None` when provisioning the first one).
    pub fn verify(
        bytes: &[u8],
        root: &PublicKey,
        current: Option<u64>,
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
        let set: KeySet = envelope::decode_body("key set", opened.body)?;
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
        Ok(set)
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
        };
        let signed = SignedKeySet::sign(&set, &root);
        assert_eq!(
            SignedKeySet::verify(&signed.0, &root.public_key(), Some(1)).unwrap(),
            set
        );
        assert!(matches!(
            SignedKeySet::verify(&signed.0, &root.public_key(), Some(2)),
            Err(KeySetError::NotNewer { current: 2, got: 2 })
        ));
        let by_signer = SignedKeySet::sign(&set, &signer);
        assert!(matches!(
            SignedKeySet::verify(&by_signer.0, &root.public_key(), Some(1)),
            Err(KeySetError::NotRootKey { .. })
        ));
        let mut tampered = signed.0.clone();
        let n = tampered.len();
        tampered[n - 1] ^= 1;
        assert!(SignedKeySet::verify(&tampered, &root.public_key(), Some(1)).is_err());
        let empty = SignedKeySet::sign(
            &KeySet {
                version: 3,
                issued_at: 0,
                keys: vec![],
            },
            &root,
        );
        assert!(matches!(
            SignedKeySet::verify(&empty.0, &root.public_key(), None),
            Err(KeySetError::Empty(3))
        ));
    }
}
