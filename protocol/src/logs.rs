//! Logs on demand: the hub asks a device for an app's output
//! ([`LogRequest`], hub-signed) and the device streams it back in bounded
//! chunks ([`LogChunk`], device-signed), only while asked.
//!
//! A request carries a deadline (`until`, hub time): a device streams until
//! then and stops by itself, so a hub that disappears (or an operator who
//! closes the terminal) costs the device at most that long. A following
//! request is renewed by the hub while someone reads; `stop` ends it at once.
//! A captured request cannot be replayed to start a stream later: its
//! deadline is compared with the device's trusted time (`verify.rs`).

use crate::envelope::{self, Kind, OpenError};
use crate::keys::{PublicKey, SigningKey};
use crate::keyset::KeySet;
use crate::status::{open_device, DeviceMessageError};
use crate::topics::DeviceId;
use serde::{Deserialize, Serialize};

/// Most bytes of log data in one chunk.
pub const MAX_CHUNK_BYTES: usize = 16 * 1024;

/// "Send me `app`'s output", from the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    pub device_id: DeviceId,
    /// Names the stream; chunks carry it back.
    pub request_id: u64,
    pub app: String,
    /// The last this many lines first (`None`: everything kept).
    pub tail: Option<u32>,
    /// Keep sending what the app writes next, until `until`.
    pub follow: bool,
    /// Hub clock, unix seconds: the device stops streaming then.
    pub until: u64,
    /// End the stream `request_id` now.
    pub stop: bool,
}

/// A piece of an app's output, from the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub device_id: DeviceId,
    pub request_id: u64,
    /// From 0 within the stream: the hub notices a lost chunk.
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Bytes the device's rate limit dropped before this chunk.
    pub dropped_bytes: u64,
    /// Set on the last chunk: why the stream ended ("stopped", "deadline",
    /// "no logs for app …").
    pub end: Option<String>,
}

/// Why a log request was refused by a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogRequestError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("log request signed by key {key_id}, which is not in the trusted key set")]
    UnknownKey { key_id: String },
    #[error("bad signature on the log request")]
    BadSignature,
    #[error("log request is for device {found}, not this device ({expected})")]
    WrongDevice { expected: DeviceId, found: DeviceId },
    #[error("log request {request_id} ran out at {until} (unix seconds); trusted time is {now}")]
    Expired {
        request_id: u64,
        until: u64,
        now: u64,
    },
    #[error("log request names {app:?}, which is not an app name")]
    AppName { app: String },
}

impl LogRequest {
    /// Seal with the hub's manifest-signing key.
    pub fn seal(&self, key: &SigningKey) -> Vec<u8> {
        envelope::seal_value(Kind::LogRequest, key, self)
            .expect("postcard encodes a LogRequest into a Vec infallibly")
    }

    /// Verify against the trusted key set, check the device and that the
    /// deadline is after `trusted_now` (a stop request is always taken).
    pub fn open(
        bytes: &[u8],
        device: &DeviceId,
        keyset: &KeySet,
        trusted_now: u64,
    ) -> Result<LogRequest, LogRequestError> {
        let opened = envelope::open(Kind::LogRequest, bytes)?;
        let key = keyset
            .find(&opened.key_id)
            .ok_or_else(|| LogRequestError::UnknownKey {
                key_id: opened.key_id.0.clone(),
            })?;
        if !opened.signed_by(key) {
            return Err(LogRequestError::BadSignature);
        }
        let r: LogRequest = envelope::decode_body("log request", opened.body)?;
        if &r.device_id != device {
            return Err(LogRequestError::WrongDevice {
                expected: device.clone(),
                found: r.device_id,
            });
        }
        // The name becomes part of a file path on the device.
        if !crate::manifest::is_app_name(&r.app) {
            return Err(LogRequestError::AppName { app: r.app });
        }
        if !r.stop && r.until <= trusted_now {
            return Err(LogRequestError::Expired {
                request_id: r.request_id,
                until: r.until,
                now: trusted_now,
            });
        }
        Ok(r)
    }
}

impl LogChunk {
    pub fn seal(&self, device_key: &SigningKey) -> Vec<u8> {
        envelope::seal_value(Kind::LogChunk, device_key, self)
            .expect("postcard encodes a LogChunk into a Vec infallibly")
    }

    /// Verify a chunk that arrived on `device`'s log topic against its key.
    pub fn open(
        bytes: &[u8],
        device: &DeviceId,
        key: &PublicKey,
    ) -> Result<LogChunk, DeviceMessageError> {
        let chunk = open_device(
            Kind::LogChunk,
            "log chunk",
            bytes,
            device,
            key,
            |c: &LogChunk| &c.device_id,
            |_, what, body| envelope::decode_body(what, body),
        )?;
        if chunk.data.len() > MAX_CHUNK_BYTES {
            return Err(DeviceMessageError::Open(OpenError::Malformed {
                what: "log chunk",
                detail: format!("{} bytes of data, over {MAX_CHUNK_BYTES}", chunk.data.len()),
            }));
        }
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(device: &str, until: u64, stop: bool) -> LogRequest {
        LogRequest {
            device_id: device.parse().unwrap(),
            request_id: 7,
            app: "web".into(),
            tail: Some(10),
            follow: true,
            until,
            stop,
        }
    }

    #[test]
    fn a_request_opens_only_signed_for_this_device_and_before_its_deadline() {
        let hub = SigningKey::generate().unwrap();
        let stranger = SigningKey::generate().unwrap();
        let set = KeySet::of_one(&hub);
        let me: DeviceId = "pi-1".parse().unwrap();
        let good = request("pi-1", 100, false);
        assert_eq!(LogRequest::open(&good.seal(&hub), &me, &set, 50), Ok(good));
        assert!(matches!(
            LogRequest::open(&request("pi-1", 100, false).seal(&stranger), &me, &set, 50),
            Err(LogRequestError::UnknownKey { .. })
        ));
        assert!(matches!(
            LogRequest::open(&request("pi-2", 100, false).seal(&hub), &me, &set, 50),
            Err(LogRequestError::WrongDevice { .. })
        ));
        // A replayed request past its deadline starts nothing; a stop is
        // always honoured.
        assert!(matches!(
            LogRequest::open(&request("pi-1", 100, false).seal(&hub), &me, &set, 100),
            Err(LogRequestError::Expired { until: 100, .. })
        ));
        assert!(LogRequest::open(&request("pi-1", 100, true).seal(&hub), &me, &set, 500).is_ok());
        let mut traversal = request("pi-1", 100, false);
        traversal.app = "../../etc/shadow".into();
        assert!(matches!(
            LogRequest::open(&traversal.seal(&hub), &me, &set, 50),
            Err(LogRequestError::AppName { .. })
        ));
        // A manifest-kind message by the same key is not a request.
        let other = envelope::seal(Kind::Manifest, &hub, b"x");
        assert!(matches!(
            LogRequest::open(&other, &me, &set, 0),
            Err(LogRequestError::Open(OpenError::WrongKind { .. }))
        ));
    }

    #[test]
    fn chunks_verify_against_the_device_key_and_are_bounded() {
        let dev = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let me: DeviceId = "pi-1".parse().unwrap();
        let chunk = LogChunk {
            device_id: me.clone(),
            request_id: 7,
            seq: 0,
            data: b"line\n".to_vec(),
            dropped_bytes: 0,
            end: None,
        };
        assert_eq!(
            LogChunk::open(&chunk.seal(&dev), &me, &dev.public_key()),
            Ok(chunk.clone())
        );
        assert!(LogChunk::open(&chunk.seal(&other), &me, &dev.public_key()).is_err());
        let big = LogChunk {
            data: vec![b'x'; MAX_CHUNK_BYTES + 1],
            ..chunk
        };
        assert!(LogChunk::open(&big.seal(&dev), &me, &dev.public_key()).is_err());
    }
}
