//! The agent's trust gate: every manifest, key set, root rotation and hub
//! heartbeat goes through the protocol's `Verifier`, and an accepted one is
//! persisted before the verifier's high-water mark moves and before anything
//! acts on it. (A heartbeat's time floor is persisted at most hourly, see
//! [`crate::freshness::persist_floor`].)
//!
//! Decision and bookkeeping only; the caller acks the MQTT message after this
//! returns (so a crash before the commit makes the broker redeliver).

use crate::state::{StateError, Store};
use outpost_protocol::envelope::{self, Kind};
use outpost_protocol::{DeviceId, Digest};
use outpost_protocol::{
    HeartbeatError, KeySet, KeySetError, Manifest, PublicKey, RejectReason, RootError,
    SignedKeySet, TrustState, Verdict, Verifier,
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

/// What became of one root rotation link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootOutcome {
    /// The device's root is now this version (persisted).
    Adopted(u64),
    /// A link already walked past (retained re-delivery).
    AlreadyKnown,
    Rejected(RootError),
}

/// What became of one hub heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// Verified: the hub's time `issued_at`; the floor is now `time_floor`.
    Fresh {
        issued_at: u64,
        time_floor: u64,
    },
    Rejected(HeartbeatError),
}

pub struct TrustGate {
    verifier: Verifier,
    store: Arc<Store>,
    /// The time floor last written to the store (see `heartbeat`).
    floor_on_disk: u64,
}

impl std::fmt::Debug for TrustGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustGate({})", self.verifier.device_id())
    }
}

/// Trust state for a first start: the root key from the config and the
/// provisioned key set, which must be signed by that root.
/// `now` is the device clock (unix seconds): an expired provisioning key set
/// is refused.
pub fn initial_trust(
    root: PublicKey,
    keyset_bytes: &[u8],
    keyset_path: &str,
    now: u64,
) -> Result<TrustState, TrustError> {
    let keyset: KeySet =
        SignedKeySet::verify(keyset_bytes, &root, None, now).map_err(|source| {
            TrustError::InitialKeySet {
                path: keyset_path.to_string(),
                source,
            }
        })?;
    Ok(TrustState {
        root,
        time_floor: keyset.issued_at,
        root_version: keyset.root_version,
        keyset,
        last: None,
    })
}

impl TrustGate {
    pub fn new(device_id: DeviceId, state: TrustState, store: Arc<Store>) -> TrustGate {
        TrustGate {
            floor_on_disk: state.time_floor,
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
    /// `now`: the device clock, unix seconds.
    pub fn manifest(&mut self, bytes: &[u8], now: u64) -> Result<ManifestOutcome, StateError> {
        match self.verifier.verify(bytes, now) {
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
                self.floor_on_disk = next.state().time_floor;
                self.verifier = next;
                Ok(ManifestOutcome::Applied(accepted.manifest))
            }
        }
    }

    pub fn keyset(&mut self, bytes: &[u8], now: u64) -> Result<KeySetOutcome, StateError> {
        match self.verifier.verify_keyset(bytes, now) {
            Err(KeySetError::NotNewer { .. }) => Ok(KeySetOutcome::AlreadyKnown),
            Err(e) => Ok(KeySetOutcome::Rejected(e)),
            Ok(set) => {
                let version = set.version;
                let mut next = self.verifier.clone();
                next.adopt_keyset(set);
                self.commit_state(next)?;
                Ok(KeySetOutcome::Adopted(version))
            }
        }
    }

    /// One root rotation link: adopted (and persisted) if it follows the
    /// current root.
    pub fn root(&mut self, bytes: &[u8]) -> Result<RootOutcome, StateError> {
        match self.verifier.verify_root(bytes) {
            Err(e) if e.is_already_known() => Ok(RootOutcome::AlreadyKnown),
            Err(e) => Ok(RootOutcome::Rejected(e)),
            Ok(rotation) => {
                let mut next = self.verifier.clone();
                next.adopt_root(&rotation);
                self.commit_state(next)?;
                Ok(RootOutcome::Adopted(rotation.version))
            }
        }
    }

    /// A hub heartbeat: verified, raises the time floor in memory, and on
    /// disk when it moved far enough (bounded flash writes).
    pub fn heartbeat(&mut self, bytes: &[u8]) -> Result<HeartbeatOutcome, StateError> {
        let hb = match self.verifier.verify_heartbeat(bytes) {
            Ok(hb) => hb,
            Err(e) => return Ok(HeartbeatOutcome::Rejected(e)),
        };
        let mut next = self.verifier.clone();
        next.raise_floor(hb.issued_at);
        let floor = next.state().time_floor;
        if crate::freshness::persist_floor(self.floor_on_disk, floor) {
            self.commit_state(next)?;
        } else {
            self.verifier = next;
        }
        Ok(HeartbeatOutcome::Fresh {
            issued_at: hb.issued_at,
            time_floor: floor,
        })
    }

    /// Persist `next`'s state, then make it the verifier.
    fn commit_state(&mut self, next: Verifier) -> Result<(), StateError> {
        self.store.save_trust(next.state())?;
        self.floor_on_disk = next.state().time_floor;
        self.verifier = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::envelope::seal_value;
    use outpost_protocol::{AppSpec, SigningKey};

    /// The device clock in these tests (unix seconds).
    const NOW: u64 = 1_000;

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
                expires_at: outpost_protocol::NEVER,
                root_version: 1,
            },
            &root,
        );
        let trust = initial_trust(root.public_key(), &ks.0, "keyset.bin", NOW).unwrap();
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
            expires_at: outpost_protocol::NEVER,
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
                expires_at: outpost_protocol::NEVER,
                root_version: 1,
            },
            &w.root,
        )
    }

    #[test]
    fn accepted_manifest_is_persisted_before_it_is_returned() {
        let mut w = world();
        let b = manifest(&w, 3);
        assert!(matches!(
            w.gate.manifest(&b, NOW).unwrap(),
            ManifestOutcome::Applied(_)
        ));
        let loaded = w.store.load().unwrap();
        assert_eq!(loaded.manifest.as_deref(), Some(b.as_slice()));
        assert_eq!(loaded.trust.unwrap().last.unwrap().generation, 3);
        assert_eq!(
            w.gate.manifest(&b, NOW).unwrap(),
            ManifestOutcome::Duplicate
        );
        assert_eq!(w.gate.persisted_manifest(&b, None).unwrap().generation, 3);
    }

    /// After a key rotation the device holds the new key set (new key only)
    /// while its persisted manifest is still signed by the old key: it must
    /// stay runnable from disk, under the key it was accepted with only.
    #[test]
    fn a_manifest_accepted_under_an_older_key_set_stays_runnable_after_a_rotation() {
        let mut w = world();
        let b = manifest(&w, 4);
        w.gate.manifest(&b, NOW).unwrap();
        let k2 = SigningKey::generate().unwrap();
        let set = rotated_keyset(&w, 2, &k2);
        assert_eq!(
            w.gate.keyset(&set.0, NOW).unwrap(),
            KeySetOutcome::Adopted(2)
        );
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
            gate.manifest(&manifest(&w, 6), NOW).unwrap(),
            ManifestOutcome::Rejected(RejectReason::UnknownKey { .. })
        ));
    }

    #[test]
    fn tampered_and_replayed_manifests_change_nothing() {
        let mut w = world();
        let old = manifest(&w, 1);
        let new = manifest(&w, 2);
        w.gate.manifest(&new, NOW).unwrap();
        let before = w.store.load().unwrap();
        let mut flipped = new.clone();
        let n = flipped.len();
        flipped[n - 3] ^= 0x40;
        for bad in [old, flipped, vec![0xAB; 1 << 20]] {
            assert!(matches!(
                w.gate.manifest(&bad, NOW).unwrap(),
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
        assert_eq!(
            w.gate.keyset(&set.0, NOW).unwrap(),
            KeySetOutcome::Adopted(2)
        );
        assert_eq!(
            w.gate.keyset(&set.0, NOW).unwrap(),
            KeySetOutcome::AlreadyKnown
        );
        let forged = SignedKeySet::sign(
            &KeySet {
                version: 3,
                issued_at: 0,
                keys: vec![k2.public_key()],
                expires_at: outpost_protocol::NEVER,
                root_version: 1,
            },
            &k2,
        );
        assert!(matches!(
            w.gate.keyset(&forged.0, NOW).unwrap(),
            KeySetOutcome::Rejected(_)
        ));
        assert_eq!(w.store.load().unwrap().trust.unwrap().keyset.version, 2);
    }

    #[test]
    fn heartbeats_raise_the_floor_at_once_and_on_disk_only_hourly() {
        let mut w = world();
        let hb = |t: u64| {
            outpost_protocol::Heartbeat {
                issued_at: t,
                interval_secs: 60,
            }
            .seal(&w.signer)
        };
        let start = 1_780_000_000;
        for (i, t) in [start, start + 60, start + 120].into_iter().enumerate() {
            assert_eq!(
                w.gate.heartbeat(&hb(t)).unwrap(),
                HeartbeatOutcome::Fresh {
                    issued_at: t,
                    time_floor: t
                },
                "heartbeat {i}"
            );
        }
        // Only the first moved the floor on disk by an hour or more.
        assert_eq!(w.store.load().unwrap().trust.unwrap().time_floor, start);
        w.gate.heartbeat(&hb(start + 3_600)).unwrap();
        assert_eq!(
            w.store.load().unwrap().trust.unwrap().time_floor,
            start + 3_600
        );
        // An older heartbeat (replayed) verifies but moves nothing back.
        assert!(matches!(
            w.gate.heartbeat(&hb(start)).unwrap(),
            HeartbeatOutcome::Fresh { time_floor, .. } if time_floor == start + 3_600
        ));
        // A stranger's heartbeat is refused.
        let stranger = SigningKey::generate().unwrap();
        let forged = outpost_protocol::Heartbeat {
            issued_at: u64::MAX,
            interval_secs: 60,
        }
        .seal(&stranger);
        assert!(matches!(
            w.gate.heartbeat(&forged).unwrap(),
            HeartbeatOutcome::Rejected(_)
        ));
        assert_eq!(w.gate.state().time_floor, start + 3_600);
    }

    /// A device offline through two root rotations walks the chain when it
    /// returns, in whatever order the retained links arrive, and then trusts a
    /// key set signed by the newest root only.
    #[test]
    fn root_rotations_are_walked_in_order_and_persisted() {
        let mut w = world();
        let r2 = SigningKey::generate().unwrap();
        let r3 = SigningKey::generate().unwrap();
        let l2 = outpost_protocol::RootRotation::sign(2, &w.root, &r2, NOW);
        let l3 = outpost_protocol::RootRotation::sign(3, &r2, &r3, NOW);
        assert!(matches!(
            w.gate.root(&l3).unwrap(),
            RootOutcome::Rejected(RootError::NotNext { current: 1, got: 3 })
        ));
        assert_eq!(w.gate.root(&l2).unwrap(), RootOutcome::Adopted(2));
        assert_eq!(w.gate.root(&l3).unwrap(), RootOutcome::Adopted(3));
        assert_eq!(w.gate.root(&l2).unwrap(), RootOutcome::AlreadyKnown);
        let loaded = w.store.load().unwrap().trust.unwrap();
        assert_eq!((loaded.root, loaded.root_version), (r3.public_key(), 3));
        let k2 = SigningKey::generate().unwrap();
        let set = |root: &SigningKey| {
            SignedKeySet::sign(
                &KeySet {
                    version: 2,
                    issued_at: NOW,
                    keys: vec![k2.public_key()],
                    expires_at: outpost_protocol::NEVER,
                    root_version: 1,
                },
                root,
            )
        };
        assert!(matches!(
            w.gate.keyset(&set(&w.root).0, NOW).unwrap(),
            KeySetOutcome::Rejected(KeySetError::NotRootKey { .. })
        ));
        assert_eq!(
            w.gate.keyset(&set(&r3).0, NOW).unwrap(),
            KeySetOutcome::Adopted(2)
        );
    }
}
