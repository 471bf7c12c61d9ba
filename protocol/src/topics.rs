//! MQTT topic names, and the device id rules that keep them safe.
//!
//! A device id ends up inside topic names and file paths, so it is validated once,
//! here, into a [`DeviceId`]: a crafted id cannot contain MQTT wildcards (`+`, `#`),
//! topic separators, path segments or control characters.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

/// Prefix of every Outpost topic; the version lets a future protocol live beside it.
pub const PREFIX: &str = "outpost/v1";
/// Longest device id accepted.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Where the hub publishes the retained key set.
pub fn keyset() -> String {
    format!("{PREFIX}/keyset")
}

/// Retained, QoS 1: the hub's signed heartbeat (`heartbeat.rs`), one for the
/// whole fleet.
pub fn heartbeat() -> String {
    format!("{PREFIX}/heartbeat")
}

/// Retained, QoS 1: the root rotation link to root `version` (`root.rs`).
pub fn root(version: u64) -> String {
    format!("{PREFIX}/roots/{version}")
}

/// What a device subscribes to for every root rotation link.
pub fn roots() -> String {
    format!("{PREFIX}/roots/+")
}

/// Retained, QoS 1: the device's current signed manifest.
pub fn manifest(device: &DeviceId) -> String {
    format!("{PREFIX}/dev/{device}/manifest")
}

/// Device-signed status reports.
pub fn status(device: &DeviceId) -> String {
    format!("{PREFIX}/dev/{device}/status")
}

/// Device-signed events.
pub fn events(device: &DeviceId) -> String {
    format!("{PREFIX}/dev/{device}/events")
}

/// Retained, QoS 1: the hub-signed event watermark of the device (how far the
/// hub has durably stored its events).
pub fn acks(device: &DeviceId) -> String {
    format!("{PREFIX}/dev/{device}/acks")
}

/// Hub → device, not retained: log requests (`logs.rs`).
pub fn log_requests(device: &DeviceId) -> String {
    format!("{PREFIX}/dev/{device}/logreq")
}

/// Device → hub, not retained: log chunks (`logs.rs`).
pub fn logs(device: &DeviceId) -> String {
    format!("{PREFIX}/dev/{device}/logs")
}

/// Every device's log chunks, for the hub.
pub fn all_logs() -> String {
    format!("{PREFIX}/dev/+/logs")
}

/// Subscription filters the hub uses for all devices.
pub fn all_status() -> String {
    format!("{PREFIX}/dev/+/status")
}

pub fn all_events() -> String {
    format!("{PREFIX}/dev/+/events")
}

/// Which device and which channel a device topic belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceTopic {
    Manifest(DeviceId),
    Status(DeviceId),
    Events(DeviceId),
    Acks(DeviceId),
    Logs(DeviceId),
}

/// Parse a concrete topic back into a device topic; `None` for anything else.
pub fn parse(topic: &str) -> Option<DeviceTopic> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix("/dev/")?;
    let (id, channel) = rest.split_once('/')?;
    let id: DeviceId = id.parse().ok()?;
    match channel {
        "manifest" => Some(DeviceTopic::Manifest(id)),
        "status" => Some(DeviceTopic::Status(id)),
        "events" => Some(DeviceTopic::Events(id)),
        "acks" => Some(DeviceTopic::Acks(id)),
        "logs" => Some(DeviceTopic::Logs(id)),
        _ => None,
    }
}

/// Why a device id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device id must not be empty")]
    Empty,
    #[error("device id {id:?} is {len} characters; the limit is {MAX_DEVICE_ID_LEN}")]
    TooLong { id: String, len: usize },
    #[error(
        "device id {id:?} contains {bad:?}; allowed are ASCII letters, digits, '-', '_' and '.'"
    )]
    BadChar { id: String, bad: char },
    #[error("device id {id:?} must start with a letter or digit")]
    BadStart { id: String },
}

/// A validated device id: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let first = s.chars().next().ok_or(DeviceIdError::Empty)?;
        if s.len() > MAX_DEVICE_ID_LEN {
            return Err(DeviceIdError::TooLong {
                id: s.chars().take(80).collect(),
                len: s.len(),
            });
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
        {
            return Err(DeviceIdError::BadChar {
                id: s.to_string(),
                bad,
            });
        }
        if !first.is_ascii_alphanumeric() {
            return Err(DeviceIdError::BadStart { id: s.to_string() });
        }
        Ok(DeviceId(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for ok in ["pi-01", "gw_7.site-a", "A", &"x".repeat(64)] {
            assert!(ok.parse::<DeviceId>().is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_ids_that_could_inject_topics_or_paths() {
        type Check = fn(&DeviceIdError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, DeviceIdError::Empty)),
            ("a/b", |e| {
                matches!(e, DeviceIdError::BadChar { bad: '/', .. })
            }),
            ("+", |e| {
                matches!(e, DeviceIdError::BadChar { bad: '+', .. })
            }),
            ("dev#", |e| {
                matches!(e, DeviceIdError::BadChar { bad: '#', .. })
            }),
            ("..", |e| matches!(e, DeviceIdError::BadStart { .. })),
            ("-x", |e| matches!(e, DeviceIdError::BadStart { .. })),
            ("a\0b", |e| matches!(e, DeviceIdError::BadChar { .. })),
            ("é", |e| matches!(e, DeviceIdError::BadChar { .. })),
        ];
        for (id, check) in cases {
            let err = id.parse::<DeviceId>().unwrap_err();
            assert!(check(&err), "{id:?}: {err}");
        }
        assert!(matches!(
            "a".repeat(65).parse::<DeviceId>(),
            Err(DeviceIdError::TooLong { .. })
        ));
    }

    #[test]
    fn topics_round_trip() {
        let id: DeviceId = "pi-01".parse().unwrap();
        assert_eq!(manifest(&id), "outpost/v1/dev/pi-01/manifest");
        assert_eq!(parse(&status(&id)), Some(DeviceTopic::Status(id.clone())));
        assert_eq!(parse(&acks(&id)), Some(DeviceTopic::Acks(id.clone())));
        assert_eq!(parse(&events(&id)), Some(DeviceTopic::Events(id)));
        assert_eq!(parse("outpost/v1/dev/+/status"), None);
        assert_eq!(parse("other/topic"), None);
    }
}
