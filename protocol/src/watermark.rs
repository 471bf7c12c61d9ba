//! The hub's event watermark: "I have durably stored every event of device D
//! with `seq <= acked_through`", signed with the hub's manifest-signing key.
//!
//! This makes event delivery end to end. A broker's PUBACK only says the broker
//! took a message; a broker without persistence (Mosquitto's default, the
//! embedded broker always) that restarts while the hub is away loses it. So the
//! agent keeps every event in its outbox until a watermark covers it, and
//! re-sends what is not covered.
//!
//! The watermark travels in its own envelope kind ([`Kind::Watermark`]): it is
//! signed by the same key as manifests, and the kind in the signed bytes keeps
//! one from ever being taken for the other. The agent verifies it against its
//! trusted key set (like a manifest, minus the generation rules: a watermark
//! only ever moves the agent forward over events it sent, and an older one is
//! harmless).

use crate::envelope::{self, Kind, OpenError};
use crate::keys::SigningKey;
use crate::keyset::KeySet;
use crate::topics::DeviceId;
use serde::{Deserialize, Serialize};

/// How far the hub has durably stored a device's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventWatermark {
    pub device_id: DeviceId,
    /// Every event with `seq <= acked_through` is stored at the hub (or was
    /// reported dropped by the device's bounded outbox): the device may delete it.
    pub acked_through: u64,
    /// Random, new each time the hub (re)subscribes to device messages. A device
    /// that sees a value it has not seen before knows the hub (re)appeared and may
    /// have missed what was sent while it was away, so it re-sends its status and
    /// its unacknowledged events.
    pub hub_session: u64,
    /// Hub clock, unix seconds (informational).
    pub issued_at: u64,
}

/// Why a watermark was refused by an agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatermarkError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("event watermark signed by key {key_id}, which is not in the trusted key set")]
    UnknownKey { key_id: String },
    #[error("bad signature on the event watermark")]
    BadSignature,
    #[error("event watermark is for device {found}, not this device ({expected})")]
    WrongDevice { expected: DeviceId, found: DeviceId },
}

impl EventWatermark {
    /// Seal with the hub's manifest-signing key.
    pub fn seal(&self, key: &SigningKey) -> Vec<u8> {
        envelope::seal_value(Kind::Watermark, key, self)
            .expect("postcard encodes an EventWatermark into a Vec infallibly")
    }

    /// Verify the received bytes against the trusted key set, then decode and
    /// check the device. Nothing is re-encoded.
    pub fn open(
        bytes: &[u8],
        device: &DeviceId,
        keyset: &KeySet,
    ) -> Result<EventWatermark, WatermarkError> {
        let opened = envelope::open(Kind::Watermark, bytes)?;
        let key = keyset
            .find(&opened.key_id)
            .ok_or_else(|| WatermarkError::UnknownKey {
                key_id: opened.key_id.0.clone(),
            })?;
        if !opened.signed_by(key) {
            return Err(WatermarkError::BadSignature);
        }
        let w: EventWatermark = envelope::decode_body("event watermark", opened.body)?;
        if &w.device_id != device {
            return Err(WatermarkError::WrongDevice {
                expected: device.clone(),
                found: w.device_id,
            });
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wm(device: &str, n: u64) -> EventWatermark {
        EventWatermark {
            device_id: device.parse().unwrap(),
            acked_through: n,
            hub_session: 9,
            issued_at: 1,
        }
    }

    #[test]
    fn each_refusal_has_its_own_reason() {
        let signer = SigningKey::generate().unwrap();
        let stranger = SigningKey::generate().unwrap();
        let set = KeySet::of_one(&signer);
        let me: DeviceId = "pi-1".parse().unwrap();
        let good = wm("pi-1", 5).seal(&signer);
        assert_eq!(EventWatermark::open(&good, &me, &set), Ok(wm("pi-1", 5)));

        let unknown = wm("pi-1", 5).seal(&stranger);
        assert!(matches!(
            EventWatermark::open(&unknown, &me, &set),
            Err(WatermarkError::UnknownKey { .. })
        ));
        let mut flipped = good.clone();
        let n = flipped.len();
        flipped[n - 1] ^= 1;
        assert_eq!(
            EventWatermark::open(&flipped, &me, &set),
            Err(WatermarkError::BadSignature)
        );
        let other = wm("pi-2", 5).seal(&signer);
        assert!(matches!(
            EventWatermark::open(&other, &me, &set),
            Err(WatermarkError::WrongDevice { .. })
        ));
        // A manifest-kind message signed by the same key is not a watermark.
        let manifest_kind = envelope::seal(Kind::Manifest, &signer, b"x");
        assert!(matches!(
            EventWatermark::open(&manifest_kind, &me, &set),
            Err(WatermarkError::Open(OpenError::WrongKind { .. }))
        ));
    }
}
