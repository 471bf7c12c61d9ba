//! Root key rotation: a new root key, announced by the old one.
//!
//! The root key signs key sets and stays offline. Replacing it (it is old,
//! or its holder left) must not need a visit to every device: the operator
//! signs a [`RootRotation`] naming the next root with the *current* root, and
//! the new root countersigns it (proof that whoever announced it holds it).
//! Rotations are numbered: the device's root is version 1 at provisioning and
//! it adopts version N+1 only from version N, so a device offline through
//! several rotations walks the chain link by link (each retained on
//! `topics::root`), and a link can never be skipped or replayed backwards.

use crate::envelope::{self, Kind, OpenError};
use crate::keys::{KeyId, PublicKey, SigningKey};
use serde::{Deserialize, Serialize};

const NEW_ROOT_TAG: &[u8] = b"outpost new root\0";

/// "Root version `version` is `new_root`", signed by root `version - 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRotation {
    /// The version the new root gets (the first root is version 1).
    pub version: u64,
    pub new_root: PublicKey,
    /// Hub clock, unix seconds, when signed.
    pub issued_at: u64,
    /// The new root's signature over [`countersigned_bytes`]: the old root
    /// cannot name a key nobody holds.
    #[serde(with = "serde_bytes")]
    pub new_root_signature: Vec<u8>,
}

/// Why a rotation link was not adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    #[error("root rotation envelope: {0}")]
    Open(#[from] OpenError),
    #[error("root rotation to version {version} is signed by key {found}, not by the current root {current}")]
    NotCurrentRoot {
        version: u64,
        found: KeyId,
        current: KeyId,
    },
    #[error("root rotation signature does not verify against the current root key")]
    BadSignature,
    #[error("root rotation to version {got} does not follow the current root version {current}")]
    NotNext { current: u64, got: u64 },
    #[error(
        "root rotation to version {version}: the new root key's countersignature does not verify"
    )]
    BadCountersignature { version: u64 },
}

impl RootError {
    /// A link the device already walked past (a retained re-delivery): not an
    /// attack, nothing to report.
    pub fn is_already_known(&self) -> bool {
        matches!(self, RootError::NotNext { current, got } if got <= current)
    }
}

/// What the new root countersigns.
fn countersigned_bytes(version: u64, old_root: &PublicKey, new_root: &PublicKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(NEW_ROOT_TAG.len() + 8 + 64);
    m.extend_from_slice(NEW_ROOT_TAG);
    m.extend_from_slice(&version.to_be_bytes());
    m.extend_from_slice(&old_root.0);
    m.extend_from_slice(&new_root.0);
    m
}

impl RootRotation {
    /// The link from `old` (at version `version - 1`) to `new`, signed by both.
    pub fn sign(version: u64, old: &SigningKey, new: &SigningKey, issued_at: u64) -> Vec<u8> {
        let rotation = RootRotation {
            version,
            new_root: new.public_key(),
            issued_at,
            new_root_signature: new
                .sign(&countersigned_bytes(
                    version,
                    &old.public_key(),
                    &new.public_key(),
                ))
                .to_vec(),
        };
        envelope::seal_value(Kind::RootRotation, old, &rotation)
            .expect("postcard encodes a RootRotation into a Vec infallibly")
    }

    /// Verify one link against the device's current root (at `current_version`).
    pub fn verify(
        bytes: &[u8],
        current: &PublicKey,
        current_version: u64,
    ) -> Result<RootRotation, RootError> {
        let opened = envelope::open(Kind::RootRotation, bytes)?;
        let rotation = envelope::decode_body::<RootRotation>("root rotation", opened.body)
            .map_err(RootError::Open)
            .and_then(|r| {
                // Check the position before the signer: a link signed by an
                // older root (already walked past) is a re-delivery.
                if r.version != current_version.saturating_add(1) {
                    return Err(RootError::NotNext {
                        current: current_version,
                        got: r.version,
                    });
                }
                Ok(r)
            })?;
        if opened.key_id != current.key_id() {
            return Err(RootError::NotCurrentRoot {
                version: rotation.version,
                found: opened.key_id.clone(),
                current: current.key_id(),
            });
        }
        if !opened.signed_by(current) {
            return Err(RootError::BadSignature);
        }
        let counter = countersigned_bytes(rotation.version, current, &rotation.new_root);
        if rotation.new_root_signature.len() != 64
            || !rotation
                .new_root
                .verify(&counter, &rotation.new_root_signature)
        {
            return Err(RootError::BadCountersignature {
                version: rotation.version,
            });
        }
        Ok(rotation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_walked_link_by_link_and_never_skipped_or_reversed() {
        let r1 = SigningKey::generate().unwrap();
        let r2 = SigningKey::generate().unwrap();
        let r3 = SigningKey::generate().unwrap();
        let l2 = RootRotation::sign(2, &r1, &r2, 10);
        let l3 = RootRotation::sign(3, &r2, &r3, 20);

        // Out of order: link 3 before link 2 is not next.
        assert_eq!(
            RootRotation::verify(&l3, &r1.public_key(), 1),
            Err(RootError::NotNext { current: 1, got: 3 })
        );
        let a = RootRotation::verify(&l2, &r1.public_key(), 1).unwrap();
        assert_eq!(a.new_root, r2.public_key());
        let b = RootRotation::verify(&l3, &a.new_root, a.version).unwrap();
        assert_eq!((b.version, b.new_root), (3, r3.public_key()));
        // Re-delivery of an old link is recognised as such.
        let again = RootRotation::verify(&l2, &b.new_root, 3).unwrap_err();
        assert!(again.is_already_known(), "{again:?}");
    }

    #[test]
    fn each_forgery_has_its_own_reason() {
        let r1 = SigningKey::generate().unwrap();
        let r2 = SigningKey::generate().unwrap();
        let mallory = SigningKey::generate().unwrap();
        // Signed by someone who is not the current root.
        let by_mallory = RootRotation::sign(2, &mallory, &r2, 10);
        assert!(matches!(
            RootRotation::verify(&by_mallory, &r1.public_key(), 1),
            Err(RootError::NotCurrentRoot { version: 2, .. })
        ));
        // The current root names a key whose holder did not countersign.
        let rotation = RootRotation {
            version: 2,
            new_root: mallory.public_key(),
            issued_at: 10,
            new_root_signature: r2
                .sign(&countersigned_bytes(
                    2,
                    &r1.public_key(),
                    &mallory.public_key(),
                ))
                .to_vec(),
        };
        let bad_counter = envelope::seal_value(Kind::RootRotation, &r1, &rotation).unwrap();
        assert_eq!(
            RootRotation::verify(&bad_counter, &r1.public_key(), 1),
            Err(RootError::BadCountersignature { version: 2 })
        );
        let mut flipped = RootRotation::sign(2, &r1, &r2, 10);
        let n = flipped.len();
        flipped[n - 1] ^= 1;
        assert!(RootRotation::verify(&flipped, &r1.public_key(), 1).is_err());
        // A key set signed by the root is not a rotation.
        let other_kind = envelope::seal(Kind::KeySet, &r1, b"x");
        assert!(matches!(
            RootRotation::verify(&other_kind, &r1.public_key(), 1),
            Err(RootError::Open(OpenError::WrongKind { .. }))
        ));
    }
}
