//! The agent's trust gate: every manifest and key set goes through the protocol's
//! `Verifier`, and an accepted one is persisted before the verifier's high-water mark
//! moves and before anything acts on it.
//!
//! Decision and bookkeeping only; the caller acks the MQTT message after this
//! returns (so a crash before the commit makes the broker redeliver).

use crate::state::{StateError, Store};
use outpost_protocol::envelope::{self, Kind};
use outpost_protocol::{DeviceId, Digest};
use outpost_protocol::{
    KeySet, KeySetError, Manifest, PublicKey, RejectReason, SignedKeySet, TrustState, Verdict,
    Verifier,
};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("initial key set {path}: {source}")]
    InitialKeySet {
        path: String,
        #[source]
        source: KeySetError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("persisted manifest cannot be used: {0}")]
    PersistedManifest(String),
}

/// What became of one manifest message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestOutcome {
    /// New desired state, durably stored.
    Applied(Manifest),
    /// Same bytes as the one already accepted (retained re-delivery).
    Duplicate,
    Rejected(RejectReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySetOutcome {
    Adopted(u64),
    /// Not newer than the one held (the retained set re-delivered): not an attack.
    AlreadyKnown,
    Rejected(KeySetError),
}

pub struct TrustGate {
    verifier: Verifier,
    store: Arc<Store>,
}

impl std::fmt::Debug for TrustGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustGate({})", self.verifier.device_id())
    }
}

/// Trust state for a first start: the root key from the config and the
/// provisioned key set, which must be signed by that root.
pub fn initial_trust(
    root: PublicKey,
    keyset_bytes: &[u8],
    keyset_path: &str,
) -> Result<TrustState, TrustError> {
    let keyset: KeySet = SignedKeySet::verify(keyset_bytes, &root, None).map_err(|source| {
        TrustError::InitialKeySet {
            path: keyset_path.to_string(),
            source,
        }
    })?;
    Ok(TrustState {
        root,
        keyset,
        last: None,
    })
}

impl TrustGate {
    pub fn new(device_id: DeviceId, state: TrustState, store: Arc<Store>) -> TrustGate {
        TrustGate {
            verifier: Verifier::new(device_id, state),
            store,
        }
    }

    pub fn state(&self) -> &TrustState {
        self.verifier.state()
    }

    /// Re-open the manifest accepted earlier (boot, offline): its signature is
    /// checked again, as the disk is not trusted more than the network, and its
    /// body must be the one the high-water mark records.
    ///
    /// The key is looked up in the current key set, else it must be
    /// `accepted_key`, the key that verified it when it was accepted. After a
    /// key rotation the device adopts the new key set (which lists only the new
    /// key) before the re-signed manifest reaches it, or never if it is cut off
    /// from then on: a manifest accepted under an older key set stays runnable
    /// from disk, and only new manifests must verify under the current set.
    pub fn persisted_manifest(
        &self,
        bytes: &[u8],
        accepted_key: Option<&PublicKey>,
    ) -> Result<Manifest, TrustError> {
        let bad = |e: String| TrustError::PersistedManifest(e);
        let opened = envelope::open(Kind::Manifest, bytes).map_err(|e| bad(e.to_string()))?;
        let key = self
            .state()
            .keyset
            .find(&opened.key_id)
            .or_else(|| accepted_key.filter(|k| k.key_id() == opened.key_id))
            .ok_or_else(|| {
                bad(format!(
                    "signing key {} is neither in the key set nor the key it was accepted under",
                    opened.key_id
                ))
            })?;
        if !opened.signed_by(key) {
            return Err(bad("signature does not verify".into()));
        }
        if let Some(last) = self.state().last {
            if Digest::of(opened.body) != last.body_digest {
                return Err(bad(format!(
                    "it is not the manifest accepted last (epoch {}, generation {})",
                    last.epoch, last.generation
                )));
            }
        }
        let m = outpost_protocol::legacy::decode_manifest(opened.version, opened.body)
            .map_err(|e| bad(e.to_string()))?;
        if &m.device_id != self.verifier.device_id() {
            return Err(bad(format!("it is for device {}", m.device_id)));
        }
        m.validate().map_err(|e| bad(e.to_string()))?;
        Ok(m)
    }

    /// Verify, and on acceptance persist (manifest + trust state, one durable
    /// transaction) and only then move the verifier's high-water mark.
    pub fn manifest(&mut self, bytes: &[u8]) -> Result<ManifestOutcome, StateError> {
        match self.verifier.verify(bytes) {
            Err(reason) => Ok(ManifestOutcome::Rejected(reason)),
            Ok(Verdict::Duplicate { .. }) => Ok(ManifestOutcome::Duplicate),
            Ok(Verdict::Accept(accepted)) => {
                // `verify` found the key in the key set; keep it with the
                // manifest (see `persisted_manifest`).
                let Some(key) = self.state().keyset.find(&accepted.manifest.key_id).copied() else {
                    return Ok(ManifestOutcome::Rejected(RejectReason::UnknownKey {
                        key_id: accepted.manifest.key_id,
                    }));
                };
                let mut next = self.verifier.clone();
                next.commit(&accepted);
                self.store.save_accepted(next.state(), bytes, &key)?;
                self.verifier = next;
                Ok(ManifestOutcome::Applied(accepted.manifest))
            }
        }
    }

    pub fn keyset(&mut self, bytes: &[u8]) -> Result<KeySetOutcome, StateError> {
        match self.verifier.verify_keyset(bytes) {
            Err(KeySetError::NotNewer { .. }) => Ok(KeySetOutcome::AlreadyKnown),
            Err(e) => Ok(KeySetOutcome::Rejected(e)),
            Ok(set) => {
                let version = set.version;
                let mut next = self.verifier.clone();
                next.adopt_keyset(set);
                self.store.save_trust(next.state())?;
                self.verifier = next;
                Ok(KeySetOutcome::Adopted(version))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::envelope::seal_value;
    use outpost_protocol::{AppSpec, SigningKey};

    struct World {
        root: SigningKey,
        signer: SigningKey,
        gate: TrustGate,
        store: Arc<Store>,
        _dir: tempfile::TempDir,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let root = SigningKey::generate().unwrap();
        let signer = SigningKey::generate().unwrap();
        let ks = SignedKeySet::sign(
            &KeySet {
                version: 1,
                issued_at: 0,
                keys: vec![signer.public_key()],
            },
            &root,
        );
        let trust = initial_trust(root.public_key(), &ks.0, "keyset.bin").unwrap();
        World {
            gate: TrustGate::new("pi-1".parse().unwrap(), trust, store.clone()),
            root,
            signer,
            store,
            _dir: dir,
        }
    }

    fn manifest(w: &World, generation: u64) -> Vec<u8> {
        let image = format!("reg/app@sha256:{}", "11".repeat(32))
            .parse()
            .unwrap();
        let m = Manifest {
            device_id: "pi-1".parse().unwrap(),
            epoch: 1,
            generation,
            issued_at: 0,
            key_id: w.signer.key_id(),
            apps: vec![AppSpec::new("web", image)],
            release: Default::default(),
        };
        seal_value(Kind::Manifest, &w.signer, &m).unwrap()
    }

    /// Key set `version` listing only `key`, signed by the root.
    fn rotated_keyset(w: &World, version: u64, key: &SigningKey) -> SignedKeySet {
        SignedKeySet::sign(
            &KeySet {
                version,
                issued_at: 0,
                keys: vec![key.public_key()],
            },
            &w.root,
        )
    }

    #[test]
    fn accepted_manifest_is_persisted_before_it_is_returned() {
        let mut w = world();
        let b = manifest(&w, 3);
        assert!(matches!(
            w.gate.manifest(&b).unwrap(),
            ManifestOutcome::Applied(_)
        ));
        let loaded = w.store.load().unwrap();
        assert_eq!(loaded.manifest.as_deref(), Some(b.as_slice()));
        assert_eq!(loaded.trust.unwrap().last.unwrap().generation, 3);
        assert_eq!(w.gate.manifest(&b).unwrap(), ManifestOutcome::Duplicate);
        assert_eq!(w.gate.persisted_manifest(&b, None).unwrap().generation, 3);
    }

    /// After a key rotation the device holds the new key set (new key only)
    /// while its persisted manifest is still signed by the old key: it must
    /// stay runnable from disk, under the key it was accepted with only.
    #[test]
    fn a_manifest_accepted_under_an_older_key_set_stays_runnable_after_a_rotation() {
        let mut w = world();
        let b = manifest(&w, 4);
        w.gate.manifest(&b).unwrap();
        let k2 = SigningKey::generate().unwrap();
        let set = rotated_keyset(&w, 2, &k2);
        assert_eq!(w.gate.keyset(&set.0).unwrap(), KeySetOutcome::Adopted(2));
        // A reboot: everything comes from the store.
        let loaded = w.store.load().unwrap();
        let gate = TrustGate::new(
            "pi-1".parse().unwrap(),
            loaded.trust.unwrap(),
            w.store.clone(),
        );
        let key = loaded.manifest_key;
        assert_eq!(key, Some(w.signer.public_key()));
        let m = gate
            .persisted_manifest(&loaded.manifest.unwrap(), key.as_ref())
            .unwrap();
        assert_eq!(m.generation, 4);
        // Without the recorded key it is refused, naming the key.
        let err = gate.persisted_manifest(&b, None).unwrap_err().to_string();
        assert!(err.contains("neither in the key set"), "{err}");
        // The recorded key does not vouch for anything else it signed.
        let other = manifest(&w, 5);
        let err = gate
            .persisted_manifest(&other, key.as_ref())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not the manifest accepted last"), "{err}");
        // New manifests under the old key are refused.
        let mut gate = gate;
        assert!(matches!(
            gate.manifest(&manifest(&w, 6)).unwrap(),
            ManifestOutcome::Rejected(RejectReason::UnknownKey { .. })
        ));
    }

    #[test]
    fn tampered_and_replayed_manifests_change_nothing() {
        let mut w = world();
        let old = manifest(&w, 1);
        let new = manifest(&w, 2);
        w.gate.manifest(&new).unwrap();
        let before = w.store.load().unwrap();
        let mut flipped = new.clone();
        let n = flipped.len();
        flipped[n - 3] ^= 0x40;
        for bad in [old, flipped, vec![0xAB; 1 << 20]] {
            assert!(matches!(
                w.gate.manifest(&bad).unwrap(),
                ManifestOutcome::Rejected(_)
            ));
        }
        let after = w.store.load().unwrap();
        assert_eq!(after.manifest, before.manifest);
        assert_eq!(after.trust, before.trust);
    }

    #[test]
    fn newer_keysets_are_adopted_and_redelivery_is_silent() {
        let mut w = world();
        let k2 = SigningKey::generate().unwrap();
        let set = rotated_keyset(&w, 2, &k2);
        assert_eq!(w.gate.keyset(&set.0).unwrap(), KeySetOutcome::Adopted(2));
        assert_eq!(w.gate.keyset(&set.0).unwrap(), KeySetOutcome::AlreadyKnown);
        let forged = SignedKeySet::sign(
            &KeySet {
                version: 3,
                issued_at: 0,
                keys: vec![k2.public_key()],
            },
            &k2,
        );
        assert!(matches!(
            w.gate.keyset(&forged.0).unwrap(),
            KeySetOutcome::Rejected(_)
        ));
        assert_eq!(w.store.load().unwrap().trust.unwrap().keyset.version, 2);
    }
}
