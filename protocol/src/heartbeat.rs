//! The hub's heartbeat: "the hub was alive and publishing at `issued_at`",
//! signed with its manifest-signing key and retained on `topics::heartbeat`.
//!
//! It does two jobs on the device (TUF's timestamp role, reduced to what a
//! single hub needs). It moves the device's trusted-time floor forward (a
//! device without a real-time clock learns a time no one but the hub can
//! forge), and its absence is visible: a broker or network path that withholds
//! updates cannot also produce fresh heartbeats, so the device reports "hub
//! silent for N" instead of believing it is up to date (freeze detection).
//! A replayed old heartbeat only shows an older time: it cannot hide silence.

use crate::envelope::{self, Kind, OpenError};
use crate::keys::SigningKey;
use crate::keyset::KeySet;
use serde::{Deserialize, Serialize};

/// One heartbeat of the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Hub clock, unix seconds, when signed.
    pub issued_at: u64,
    /// How often the hub publishes one (informational for the device: how
    /// stale a heartbeat may get before it is overdue).
    pub interval_secs: u32,
}

/// Why a heartbeat was refused by an agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("hub heartbeat signed by key {key_id}, which is not in the trusted key set")]
    UnknownKey { key_id: String },
    #[error("bad signature on the hub heartbeat")]
    BadSignature,
}

impl Heartbeat {
    /// Seal with the hub's manifest-signing key.
    pub fn seal(&self, key: &SigningKey) -> Vec<u8> {
        envelope::seal_value(Kind::Heartbeat, key, self)
            .expect("postcard encodes a Heartbeat into a Vec infallibly")
    }

    /// Verify the received bytes against the trusted key set, then decode.
    pub fn open(bytes: &[u8], keyset: &KeySet) -> Result<Heartbeat, HeartbeatError> {
        let opened = envelope::open(Kind::Heartbeat, bytes)?;
        let key = keyset
            .find(&opened.key_id)
            .ok_or_else(|| HeartbeatError::UnknownKey {
                key_id: opened.key_id.0.clone(),
            })?;
        if !opened.signed_by(key) {
            return Err(HeartbeatError::BadSignature);
        }
        Ok(envelope::decode_body("hub heartbeat", opened.body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_heartbeat_signed_by_a_trusted_key_opens() {
        let signer = SigningKey::generate().unwrap();
        let stranger = SigningKey::generate().unwrap();
        let set = KeySet::of_one(&signer);
        let hb = Heartbeat {
            issued_at: 1_000,
            interval_secs: 60,
        };
        assert_eq!(Heartbeat::open(&hb.seal(&signer), &set), Ok(hb));
        assert!(matches!(
            Heartbeat::open(&hb.seal(&stranger), &set),
            Err(HeartbeatError::UnknownKey { .. })
        ));
        let mut flipped = hb.seal(&signer);
        let n = flipped.len();
        flipped[n - 1] ^= 1;
        assert_eq!(
            Heartbeat::open(&flipped, &set),
            Err(HeartbeatError::BadSignature)
        );
        // A watermark signed by the same key is not a heartbeat.
        let other_kind = envelope::seal(Kind::Watermark, &signer, b"x");
        assert!(matches!(
            Heartbeat::open(&other_kind, &set),
            Err(HeartbeatError::Open(OpenError::WrongKind { .. }))
        ));
    }
}
