//! The signed, versioned envelope every Outpost message travels in.
//!
//! ```text
//! "OPST" | format version (u8) | kind (u8) | postcard{ key_id, signature[64], body }
//! ```
//!
//! The fixed header lets an old agent tell a future format apart and refuse it by
//! name instead of failing somewhere inside the decoder. The signature covers a
//! domain-separation tag, the format version and the kind, then the body bytes exactly
//! as received: a status report can never be presented as a manifest, and nothing is
//! re-encoded to verify (TUF's "verify what you received").

use crate::keys::{KeyId, PublicKey, SigningKey};
use serde::{Deserialize, Serialize};

/// First four bytes of every Outpost message.
pub const MAGIC: [u8; 4] = *b"OPST";
/// The envelope/body format this build writes. Version 2 added the release
/// policy and update-strategy fields to manifests and the release state to
/// status reports; version 3 added expiry to manifests and key sets, the
/// `expired` reject counter and the hub-contact fields of status reports
/// (`legacy.rs` and `status.rs` read the older bodies).
pub const FORMAT_VERSION: u8 = 3;
/// The oldest format this build still reads: a device upgraded before its hub
/// keeps accepting the hub's messages, and its persisted manifest stays
/// readable across the upgrade.
pub const MIN_FORMAT_VERSION: u8 = 1;
/// Largest message accepted, checked before any decoding. Broker and client
/// packet limits are derived from this so the limits agree end to end.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

const HEADER_LEN: usize = MAGIC.len() + 2;
const DOMAIN_TAG: &[u8] = b"outpost signed message\0";

/// What a message is; part of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Manifest = 1,
    KeySet = 2,
    Status = 3,
    Event = 4,
    /// The hub's signed event watermark (`watermark.rs`); its own kind so a
    /// watermark can never be presented as a manifest signed by the same key.
    Watermark = 5,
    /// The hub's signed, time-stamped heartbeat (`heartbeat.rs`).
    Heartbeat = 6,
    /// A new root key signed by the previous one (`root.rs`).
    RootRotation = 7,
    /// The hub asks a device for an app's logs (`logs.rs`).
    LogRequest = 8,
    /// A piece of an app's logs, device-signed (`logs.rs`).
    LogChunk = 9,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Manifest,
            2 => Kind::KeySet,
            3 => Kind::Status,
            4 => Kind::Event,
            5 => Kind::Watermark,
            6 => Kind::Heartbeat,
            7 => Kind::RootRotation,
            8 => Kind::LogRequest,
            9 => Kind::LogChunk,
            _ => return None,
        })
    }
}

/// Why bytes could not be opened as an envelope of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("message is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("message does not start with the Outpost magic bytes \"OPST\"")]
    BadMagic,
    #[error(
        "message uses format version {found}; this build reads versions {MIN_FORMAT_VERSION} to {supported}"
    )]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("expected a {expected:?} message, got message kind {found}")]
    WrongKind { expected: Kind, found: u8 },
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("{count} unexpected trailing bytes after the {what}")]
    TrailingBytes { what: &'static str, count: usize },
}

#[derive(Serialize, Deserialize)]
struct Parts<'a> {
    #[serde(borrow)]
    key_id: &'a str,
    #[serde(with = "serde_bytes")]
    signature: &'a [u8],
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
}

/// An envelope whose framing is valid but whose signature is not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The format version the sender wrote; decides how the body decodes.
    pub version: u8,
    pub kind: Kind,
    pub key_id: KeyId,
    signature: &'a [u8],
    /// The body exactly as received; verify before decoding it.
    pub body: &'a [u8],
}

impl Opened<'_> {
    /// Does `key` sign this envelope?
    pub fn signed_by(&self, key: &PublicKey) -> bool {
        self.signature.len() == 64
            && key.verify(
                &signed_bytes(self.version, self.kind, self.body),
                self.signature,
            )
    }
}

fn signed_bytes(version: u8, kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN_TAG.len() + 2 + body.len());
    m.extend_from_slice(DOMAIN_TAG);
    m.push(version);
    m.push(kind as u8);
    m.extend_from_slice(body);
    m
}

/// Sign `body` as a message of `kind`.
pub fn seal(kind: Kind, key: &SigningKey, body: &[u8]) -> Vec<u8> {
    seal_version(FORMAT_VERSION, kind, key, body)
}

/// Sign `body` under an explicit format `version` (tests of old peers).
pub fn seal_version(version: u8, kind: Kind, key: &SigningKey, body: &[u8]) -> Vec<u8> {
    let signature = key.sign(&signed_bytes(version, kind, body));
    let key_id = key.key_id();
    let parts = Parts {
        key_id: &key_id.0,
        signature: &signature,
        body,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + 96);
    out.extend_from_slice(&MAGIC);
    out.push(version);
    out.push(kind as u8);
    postcard::to_extend(&parts, out)
        .expect("postcard serializes a str and byte slices into a Vec infallibly")
}

/// Encode `value` with postcard and sign it as a message of `kind`.
pub fn seal_value<T: Serialize>(
    kind: Kind,
    key: &SigningKey,
    value: &T,
) -> Result<Vec<u8>, postcard::Error> {
    Ok(seal(kind, key, &postcard::to_stdvec(value)?))
}

/// Check size, magic, version, kind and framing. Does not check the signature.
pub fn open(expected: Kind, bytes: &[u8]) -> Result<Opened<'_>, OpenError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(OpenError::TooLarge {
            size: bytes.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(OpenError::BadMagic);
    }
    let version = *bytes.get(MAGIC.len()).ok_or(OpenError::Malformed {
        what: "envelope",
        detail: "truncated header".into(),
    })?;
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(OpenError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let kind_byte = *bytes.get(MAGIC.len() + 1).ok_or(OpenError::Malformed {
        what: "envelope",
        detail: "truncated header".into(),
    })?;
    let kind = Kind::from_u8(kind_byte)
        .filter(|k| *k == expected)
        .ok_or(OpenError::WrongKind {
            expected,
            found: kind_byte,
        })?;
    let (parts, rest): (Parts, _) =
        postcard::take_from_bytes(&bytes[HEADER_LEN..]).map_err(|e| OpenError::Malformed {
            what: "envelope",
            detail: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(OpenError::TrailingBytes {
            what: "envelope",
            count: rest.len(),
        });
    }
    if parts.signature.len() != 64 {
        return Err(OpenError::Malformed {
            what: "envelope",
            detail: format!("signature is {} bytes, expected 64", parts.signature.len()),
        });
    }
    Ok(Opened {
        version,
        kind,
        key_id: KeyId(parts.key_id.to_string()),
        signature: parts.signature,
        body: parts.body,
    })
}

/// Decode a verified body; trailing bytes are an error, not ignored.
pub fn decode_body<'a, T: Deserialize<'a>>(
    what: &'static str,
    body: &'a [u8],
) -> Result<T, OpenError> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| OpenError::Malformed {
        what,
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(OpenError::TrailingBytes {
            what,
            count: rest.len(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_verifies_with_the_right_key_only() {
        let k = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let msg = seal(Kind::Status, &k, b"body");
        let o = open(Kind::Status, &msg).unwrap();
        assert_eq!(o.body, b"body");
        assert_eq!(o.key_id, k.key_id());
        assert!(o.signed_by(&k.public_key()));
        assert!(!o.signed_by(&other.public_key()));
    }

    #[test]
    fn the_version_is_bound_into_the_signature_and_version_1_still_opens() {
        let k = SigningKey::generate().unwrap();
        let old = seal_version(1, Kind::Manifest, &k, b"body");
        let o = open(Kind::Manifest, &old).unwrap();
        assert_eq!(o.version, 1);
        assert!(o.signed_by(&k.public_key()));
        let mut relabelled = old.clone();
        relabelled[4] = FORMAT_VERSION;
        let o = open(Kind::Manifest, &relabelled).unwrap();
        assert!(
            !o.signed_by(&k.public_key()),
            "a v1 body cannot pass as current"
        );
    }

    #[test]
    fn kind_is_bound_into_the_signature() {
        let k = SigningKey::generate().unwrap();
        let mut msg = seal(Kind::Status, &k, b"body");
        msg[5] = Kind::Manifest as u8;
        let o = open(Kind::Manifest, &msg).unwrap();
        assert!(!o.signed_by(&k.public_key()));
    }

    #[test]
    fn a_watermark_cannot_pass_for_a_manifest_signed_by_the_same_key() {
        let k = SigningKey::generate().unwrap();
        let msg = seal(Kind::Watermark, &k, b"body");
        assert!(matches!(
            open(Kind::Manifest, &msg),
            Err(OpenError::WrongKind { found: 5, .. })
        ));
        let mut relabelled = msg.clone();
        relabelled[5] = Kind::Manifest as u8;
        let o = open(Kind::Manifest, &relabelled).unwrap();
        assert!(!o.signed_by(&k.public_key()));
    }

    #[test]
    fn framing_errors_are_distinct() {
        let k = SigningKey::generate().unwrap();
        let msg = seal(Kind::Manifest, &k, b"x");
        assert_eq!(open(Kind::Manifest, b"NOPE"), Err(OpenError::BadMagic));
        let mut future = msg.clone();
        future[4] = FORMAT_VERSION + 1;
        assert_eq!(
            open(Kind::Manifest, &future),
            Err(OpenError::UnsupportedVersion {
                found: FORMAT_VERSION + 1,
                supported: FORMAT_VERSION
            })
        );
        let mut v0 = msg.clone();
        v0[4] = 0;
        assert!(matches!(
            open(Kind::Manifest, &v0),
            Err(OpenError::UnsupportedVersion { found: 0, .. })
        ));
        assert!(matches!(
            open(Kind::Status, &msg),
            Err(OpenError::WrongKind { .. })
        ));
        let mut trailing = msg.clone();
        trailing.push(0);
        assert!(matches!(
            open(Kind::Manifest, &trailing),
            Err(OpenError::TrailingBytes { .. })
        ));
        assert!(matches!(
            open(Kind::Manifest, &msg[..msg.len() - 1]),
            Err(OpenError::Malformed { .. })
        ));
        let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            open(Kind::Manifest, &big),
            Err(OpenError::TooLarge { .. })
        ));
    }
}
