//! The agent's trust decision for a manifest: accept, duplicate, or reject with reason.
//!
//! [`Verifier::verify`] is pure: it looks at the received bytes and the persisted
//! [`TrustState`] and decides. The caller persists an accepted manifest durably and
//! only then calls [`Verifier::commit`], so a crash between the two re-verifies the
//! same bytes rather than skipping ahead. Checks run in this order, each with its
//! own reason: size (before any decoding), framing and format version, key id,
//! signature over the exact received bytes, decoding without trailing bytes, device
//! binding, key epoch, generation, expiry, spec validation.
//!
//! Freshness (TUF's time floor): the state keeps `time_floor`, the highest
//! hub time the device has seen in anything signed (an accepted manifest, an
//! adopted key set, a hub heartbeat). It never moves back. Trusted time is the
//! later of the device clock and the floor, so a Raspberry Pi booting in 1970
//! still refuses a manifest that expired before the last heartbeat it saw.
//! Expiry is checked only for *new* manifests: the one already accepted (a
//! duplicate) keeps running after it expires, and so does the persisted one.

use crate::envelope::{self, Kind, OpenError, MAX_MESSAGE_BYTES};
use crate::heartbeat::{Heartbeat, HeartbeatError};
use crate::image::Digest;
use crate::keys::{KeyId, PublicKey};
use crate::keyset::{KeySet, KeySetError, SignedKeySet};
use crate::manifest::{Manifest, ValidationError};
use crate::root::{RootError, RootRotation};
use crate::status::RejectCounters;
use crate::topics::DeviceId;
use serde::{Deserialize, Serialize};

/// Why a manifest was refused. Every variant is a distinct rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("manifest is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("manifest uses format version {found}, which this agent does not understand")]
    UnsupportedVersion { found: u8 },
    #[error("malformed manifest: {0}")]
    Malformed(String),
    #[error("manifest signed by unknown key {key_id}")]
    UnknownKey { key_id: KeyId },
    #[error("manifest signature does not verify against key {key_id}")]
    BadSignature { key_id: KeyId },
    #[error("manifest is for device {found}, this is device {expected}")]
    WrongDevice { expected: DeviceId, found: DeviceId },
    #[error("manifest names signing key {inner} but is signed by {outer}")]
    KeyIdMismatch { inner: KeyId, outer: KeyId },
    #[error("manifest epoch {epoch} is newer than the trusted key set version {known}")]
    UnknownEpoch { epoch: u64, known: u64 },
    #[error("manifest (epoch {}, generation {}) is older than the accepted (epoch {}, generation {}): replay or rollback", got.0, got.1, last.0, last.1)]
    Rollback { last: (u64, u64), got: (u64, u64) },
    #[error("manifest (epoch {epoch}, generation {generation}) has the generation of the accepted one but different content")]
    ConflictingGeneration { epoch: u64, generation: u64 },
    #[error("manifest breaks a spec rule: {0}")]
    Invalid(#[from] ValidationError),
    #[error("manifest (epoch {epoch}, generation {generation}) expired at {expires_at} (unix seconds); trusted time is {now}: stale or withheld")]
    Expired {
        epoch: u64,
        generation: u64,
        expires_at: u64,
        now: u64,
    },
}

impl RejectReason {
    /// Bump the counter that matches this reason.
    pub fn count_into(&self, c: &mut RejectCounters) {
        let slot = match self {
            RejectReason::TooLarge { .. } => &mut c.too_large,
            RejectReason::UnsupportedVersion { .. } => &mut c.unsupported_version,
            RejectReason::Malformed(_) | RejectReason::KeyIdMismatch { .. } => &mut c.malformed,
            RejectReason::UnknownKey { .. } | RejectReason::UnknownEpoch { .. } => {
                &mut c.unknown_key
            }
            RejectReason::BadSignature { .. } => &mut c.bad_signature,
            RejectReason::WrongDevice { .. } => &mut c.wrong_device,
            RejectReason::Rollback { .. } => &mut c.rollback,
            RejectReason::ConflictingGeneration { .. } => &mut c.conflicting_generation,
            RejectReason::Invalid(_) => &mut c.invalid_spec,
            RejectReason::Expired { .. } => &mut c.expired,
        };
        *slot += 1;
    }
}

impl From<OpenError> for RejectReason {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::TooLarge { size, limit } => RejectReason::TooLarge { size, limit },
            OpenError::UnsupportedVersion { found, .. } => {
                RejectReason::UnsupportedVersion { found }
            }
            other => RejectReason::Malformed(other.to_string()),
        }
    }
}

/// The last manifest accepted: enough to detect replay and conflicting content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastAccepted {
    pub epoch: u64,
    pub generation: u64,
    /// sha256 of the signed body bytes.
    pub body_digest: Digest,
}

/// Everything the verifier must persist between runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustState {
    pub root: PublicKey,
    pub keyset: KeySet,
    pub last: Option<LastAccepted>,
    /// Highest hub time (unix seconds) seen in a verified message; never
    /// moves back (see the module docs).
    pub time_floor: u64,
    /// Version of `root`: 1 as provisioned, +1 per adopted rotation.
    pub root_version: u64,
}

impl TrustState {
    /// The later of the device clock `now` and the time floor.
    pub fn trusted_now(&self, now: u64) -> u64 {
        now.max(self.time_floor)
    }
}

/// The trust state as agents before format version 3 persisted it
/// (postcard): no time floor, no root version. Frozen.
#[derive(Deserialize)]
struct TrustStateV2 {
    root: PublicKey,
    keyset: crate::keyset::KeySetV2,
    last: Option<LastAccepted>,
}

/// Read a trust state persisted by an agent before format version 3.
pub fn decode_trust_state_v2(bytes: &[u8]) -> Result<TrustState, OpenError> {
    let t: TrustStateV2 = envelope::decode_body("trust state (format version 2)", bytes)?;
    Ok(TrustState {
        root: t.root,
        keyset: t.keyset.into(),
        last: t.last,
        time_floor: 0,
        root_version: 1,
    })
}

/// A manifest that passed every rule, not yet committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub manifest: Manifest,
    pub body_digest: Digest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// New content: persist it, then [`Verifier::commit`], then act.
    Accept(Accepted),
    /// The manifest already accepted, byte for byte (e.g. a retained re-delivery).
    Duplicate { epoch: u64, generation: u64 },
}

/// Holds the trusted keys and the high-water mark for one device.
#[derive(Debug, Clone)]
pub struct Verifier {
    device_id: DeviceId,
    state: TrustState,
}

impl Verifier {
    pub fn new(device_id: DeviceId, state: TrustState) -> Self {
        Verifier { device_id, state }
    }

    pub fn state(&self) -> &TrustState {
        &self.state
    }

    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    /// Decide about `bytes` without changing anything; `now` is the device
    /// clock (unix seconds), used through [`TrustState::trusted_now`].
    pub fn verify(&self, bytes: &[u8], now: u64) -> Result<Verdict, RejectReason> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(RejectReason::TooLarge {
                size: bytes.len(),
                limit: MAX_MESSAGE_BYTES,
            });
        }
        let opened = envelope::open(Kind::Manifest, bytes)?;
        let key =
            self.state
                .keyset
                .find(&opened.key_id)
                .ok_or_else(|| RejectReason::UnknownKey {
                    key_id: opened.key_id.clone(),
                })?;
        if !opened.signed_by(key) {
            return Err(RejectReason::BadSignature {
                key_id: opened.key_id.clone(),
            });
        }
        let body_digest = Digest::of(opened.body);
        let manifest = crate::legacy::decode_manifest(opened.version, opened.body)?;
        if manifest.device_id != self.device_id {
            return Err(RejectReason::WrongDevice {
                expected: self.device_id.clone(),
                found: manifest.device_id,
            });
        }
        if manifest.key_id != opened.key_id {
            return Err(RejectReason::KeyIdMismatch {
                inner: manifest.key_id,
                outer: opened.key_id,
            });
        }
        if manifest.epoch > self.state.keyset.version {
            return Err(RejectReason::UnknownEpoch {
                epoch: manifest.epoch,
                known: self.state.keyset.version,
            });
        }
        let got = (manifest.epoch, manifest.generation);
        if let Some(last) = self.state.last {
            let have = (last.epoch, last.generation);
            if got < have {
                return Err(RejectReason::Rollback { last: have, got });
            }
            if got == have {
                return if body_digest == last.body_digest {
                    Ok(Verdict::Duplicate {
                        epoch: got.0,
                        generation: got.1,
                    })
                } else {
                    Err(RejectReason::ConflictingGeneration {
                        epoch: got.0,
                        generation: got.1,
                    })
                };
            }
        }
        let trusted = self.state.trusted_now(now);
        if manifest.expires_at <= trusted {
            return Err(RejectReason::Expired {
                epoch: manifest.epoch,
                generation: manifest.generation,
                expires_at: manifest.expires_at,
                now: trusted,
            });
        }
        manifest.validate()?;
        Ok(Verdict::Accept(Accepted {
            manifest,
            body_digest,
        }))
    }

    /// Record `accepted` as the new high-water mark (after it was persisted).
    pub fn commit(&mut self, accepted: &Accepted) {
        self.state.last = Some(LastAccepted {
            epoch: accepted.manifest.epoch,
            generation: accepted.manifest.generation,
            body_digest: accepted.body_digest,
        });
        self.raise_floor(accepted.manifest.issued_at);
    }

    /// Move the time floor to `t` if that is later; it never moves back.
    pub fn raise_floor(&mut self, t: u64) {
        self.state.time_floor = self.state.time_floor.max(t);
    }

    /// Check a published key set; the caller persists it and then calls
    /// [`Verifier::adopt_keyset`].
    pub fn verify_keyset(&self, bytes: &[u8], now: u64) -> Result<KeySet, KeySetError> {
        SignedKeySet::verify(
            bytes,
            &self.state.root,
            Some(self.state.keyset.version),
            self.state.trusted_now(now),
        )
    }

    pub fn adopt_keyset(&mut self, set: KeySet) {
        if set.version > self.state.keyset.version {
            self.raise_floor(set.issued_at);
            self.state.keyset = set;
        }
    }

    /// Check a hub heartbeat against the trusted key set; the caller raises
    /// the floor with its `issued_at` (and decides when to persist it).
    pub fn verify_heartbeat(&self, bytes: &[u8]) -> Result<Heartbeat, HeartbeatError> {
        Heartbeat::open(bytes, &self.state.keyset)
    }

    /// Check one root rotation link against the current root; the caller
    /// persists and then calls [`Verifier::adopt_root`].
    pub fn verify_root(&self, bytes: &[u8]) -> Result<RootRotation, RootError> {
        RootRotation::verify(bytes, &self.state.root, self.state.root_version)
    }

    pub fn adopt_root(&mut self, rotation: &RootRotation) {
        if rotation.version == self.state.root_version.saturating_add(1) {
            self.state.root = rotation.new_root;
            self.state.root_version = rotation.version;
            self.raise_floor(rotation.issued_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::seal_value;
    use crate::keys::SigningKey;
    use crate::manifest::AppSpec;

    struct World {
        root: SigningKey,
        signer: SigningKey,
        verifier: Verifier,
    }

    fn world() -> World {
        let root = SigningKey::generate().unwrap();
        let signer = SigningKey::generate().unwrap();
        let keyset = KeySet {
            version: 1,
            issued_at: 0,
            keys: vec![signer.public_key()],
            expires_at: crate::manifest::NEVER,
            root_version: 1,
        };
        let state = TrustState {
            root: root.public_key(),
            keyset,
            last: None,
            time_floor: 0,
            root_version: 1,
        };
        World {
            verifier: Verifier::new("pi-1".parse().unwrap(), state),
            root,
            signer,
        }
    }

    fn manifest(
        signer: &SigningKey,
        device: &str,
        epoch: u64,
        generation: u64,
        app: &str,
    ) -> Manifest {
        let image = format!("reg/app@sha256:{}", "11".repeat(32))
            .parse()
            .unwrap();
        Manifest {
            device_id: device.parse().unwrap(),
            epoch,
            generation,
            issued_at: 100,
            key_id: signer.key_id(),
            apps: vec![AppSpec::new(app, image)],
            release: Default::default(),
            expires_at: 1_000,
        }
    }

    /// The device clock in these tests: before every test manifest expires.
    const NOW: u64 = 500;

    fn sealed(signer: &SigningKey, m: &Manifest) -> Vec<u8> {
        seal_value(Kind::Manifest, signer, m).unwrap()
    }

    fn accept(w: &mut World, bytes: &[u8]) {
        match w.verifier.verify(bytes, NOW).unwrap() {
            Verdict::Accept(a) => w.verifier.commit(&a),
            other => panic!("expected accept, got {other:?}"),
        }
    }

    #[test]
    fn accepts_then_reports_duplicate_for_the_same_bytes() {
        let mut w = world();
        let bytes = sealed(&w.signer, &manifest(&w.signer, "pi-1", 1, 1, "web"));
        accept(&mut w, &bytes);
        assert_eq!(
            w.verifier.verify(&bytes, NOW),
            Ok(Verdict::Duplicate {
                epoch: 1,
                generation: 1
            })
        );
    }

    /// One row per reject rule; each must produce its own distinct error.
    #[test]
    fn every_reject_reason_is_distinct() {
        type Case = (
            &'static str,
            fn(&mut World) -> Vec<u8>,
            fn(&RejectReason) -> bool,
        );
        let cases: Vec<Case> = vec![
            (
                "size limit before decoding",
                |_| vec![0xAA; MAX_MESSAGE_BYTES + 1],
                |r| matches!(r, RejectReason::TooLarge { .. }),
            ),
            (
                "unknown format version",
                |w| {
                    let mut b = sealed(&w.signer, &manifest(&w.signer, "pi-1", 1, 1, "web"));
                    b[4] = 9;
                    b
                },
                |r| matches!(r, RejectReason::UnsupportedVersion { found: 9 }),
            ),
            (
                "garbage",
                |_| b"OPST\x01\x01\xff\xff\xff".to_vec(),
                |r| matches!(r, RejectReason::Malformed(_)),
            ),
            (
                "unknown key id",
                |_| {
                    let stranger = SigningKey::generate().unwrap();
                    sealed(&stranger, &manifest(&stranger, "pi-1", 1, 1, "web"))
                },
                |r| matches!(r, RejectReason::UnknownKey { .. }),
            ),
            (
                "bad signature (one flipped body byte)",
                |w| {
                    let mut b = sealed(&w.signer, &manifest(&w.signer, "pi-1", 1, 1, "web"));
                    let n = b.len();
                    b[n - 1] ^= 0x01;
                    b
                },
                |r| matches!(r, RejectReason::BadSignature { .. }),
            ),
            (
                "manifest for another device",
                |w| sealed(&w.signer, &manifest(&w.signer, "pi-2", 1, 1, "web")),
                |r| matches!(r, RejectReason::WrongDevice { .. }),
            ),
            (
                "generation lower than accepted",
                |w| {
                    let newer = sealed(&w.signer, &manifest(&w.signer, "pi-1", 1, 5, "web"));
                    accept(w, &newer);
                    sealed(&w.signer, &manifest(&w.signer, "pi-1", 1, 4, "web"))
                },
                |r| {
                    matches!(
                        r,
                        RejectReason::Rollback {
                            last: (1, 5),
                            got: (1, 4)
                        }
                    )
                },
            ),
            (
                "equal generation, different content",
                |w| {
                    let first = sealed(&w.signer, &manifest(&w.signer, "pi-1", 1, 5, "web"));
                    accept(w, &first);
                    sealed(&w.signer, &manifest(&w.signer, "pi-1", 1, 5, "api"))
                },
                |r| {
                    matches!(
                        r,
                        RejectReason::ConflictingGeneration {
                            epoch: 1,
                            generation: 5
                        }
                    )
                },
            ),
            (
                "epoch from the future",
                |w| sealed(&w.signer, &manifest(&w.signer, "pi-1", 7, 1, "web")),
                |r| matches!(r, RejectReason::UnknownEpoch { epoch: 7, known: 1 }),
            ),
            (
                "expired",
                |w| {
                    let mut m = manifest(&w.signer, "pi-1", 1, 1, "web");
                    m.expires_at = NOW;
                    sealed(&w.signer, &m)
                },
                |r| {
                    matches!(
                        r,
                        RejectReason::Expired {
                            expires_at: NOW,
                            now: NOW,
                            ..
                        }
                    )
                },
            ),
            (
                "invalid spec",
                |w| sealed(&w.signer, &manifest(&w.signer, "pi-1", 1, 1, "Not A Label")),
                |r| matches!(r, RejectReason::Invalid(_)),
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        for (name, make, check) in cases {
            let mut w = world();
            let bytes = make(&mut w);
            let before = w.verifier.state().clone();
            let reason = w.verifier.verify(&bytes, NOW).expect_err(name);
            assert!(check(&reason), "{name}: unexpected {reason:?}");
            assert_eq!(
                w.verifier.state(),
                &before,
                "{name}: verify must not change state"
            );
            let mut counters = RejectCounters::default();
            reason.count_into(&mut counters);
            assert_eq!(counters.total(), 1, "{name}");
            seen.insert(std::mem::discriminant(&reason));
        }
        assert_eq!(seen.len(), 11, "each rule must map to its own reason");
    }

    #[test]
    fn a_new_epoch_recovers_from_a_huge_forged_generation() {
        let mut w = world();
        let huge = sealed(&w.signer, &manifest(&w.signer, "pi-1", 1, u64::MAX, "evil"));
        accept(&mut w, &huge);
        let fresh_signer = SigningKey::generate().unwrap();
        let set = KeySet {
            version: 2,
            issued_at: 0,
            keys: vec![fresh_signer.public_key()],
            expires_at: crate::manifest::NEVER,
            root_version: 1,
        };
        let signed = SignedKeySet::sign(&set, &w.root);
        let adopted = w.verifier.verify_keyset(&signed.0, NOW).unwrap();
        w.verifier.adopt_keyset(adopted);
        let recovered = sealed(&fresh_signer, &manifest(&fresh_signer, "pi-1", 2, 1, "web"));
        accept(&mut w, &recovered);
        // The compromised key is gone from the key set.
        let again = sealed(&w.signer, &manifest(&w.signer, "pi-1", 2, 2, "evil"));
        assert!(matches!(
            w.verifier.verify(&again, NOW),
            Err(RejectReason::UnknownKey { .. })
        ));
    }

    #[test]
    fn the_time_floor_only_rises_and_makes_a_stale_manifest_expire_on_a_clock_in_1970() {
        let mut w = world();
        let first = manifest(&w.signer, "pi-1", 1, 1, "web");
        let first_bytes = sealed(&w.signer, &first);
        accept(&mut w, &first_bytes);
        assert_eq!(
            w.verifier.state().time_floor,
            100,
            "the manifest's issued_at"
        );
        // A heartbeat from later moves the floor; an older one does not.
        let signer = SigningKey::from_pkcs8(w.signer.pkcs8()).unwrap();
        let hb = |t| {
            Heartbeat {
                issued_at: t,
                interval_secs: 60,
            }
            .seal(&signer)
        };
        let late = w.verifier.verify_heartbeat(&hb(2_000)).unwrap();
        w.verifier.raise_floor(late.issued_at);
        let early = w.verifier.verify_heartbeat(&hb(50)).unwrap();
        w.verifier.raise_floor(early.issued_at);
        assert_eq!(w.verifier.state().time_floor, 2_000);
        // The device clock says 1970 (0); the floor says 2000: a manifest
        // that expired at 1000 is refused as new...
        let stale = manifest(&w.signer, "pi-1", 1, 2, "web");
        assert!(matches!(
            w.verifier.verify(&sealed(&w.signer, &stale), 0),
            Err(RejectReason::Expired { now: 2_000, .. })
        ));
        // ...while the one already accepted is still a duplicate, not refused.
        assert!(matches!(
            w.verifier.verify(&first_bytes, 0),
            Ok(Verdict::Duplicate { .. })
        ));
    }

    #[test]
    fn a_new_root_adopted_through_the_chain_signs_the_next_key_set() {
        let mut w = world();
        let root2 = SigningKey::generate().unwrap();
        let link = RootRotation::sign(2, &w.root, &root2, 300);
        let rotation = w.verifier.verify_root(&link).unwrap();
        w.verifier.adopt_root(&rotation);
        assert_eq!(w.verifier.state().root_version, 2);
        assert_eq!(w.verifier.state().time_floor, 300);
        let set = KeySet {
            version: 2,
            issued_at: 310,
            keys: vec![w.signer.public_key()],
            expires_at: crate::manifest::NEVER,
            root_version: 1,
        };
        // The old root no longer signs key sets; the new one does.
        let by_old = SignedKeySet::sign(&set, &w.root);
        assert!(matches!(
            w.verifier.verify_keyset(&by_old.0, NOW),
            Err(KeySetError::NotRootKey { .. })
        ));
        let by_new = SignedKeySet::sign(&set, &root2);
        assert_eq!(w.verifier.verify_keyset(&by_new.0, NOW), Ok(set));
    }
}
