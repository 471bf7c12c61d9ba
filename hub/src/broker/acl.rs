//! Who may use which topic on the broker: the pure rule behind the embedded
//! broker's topic authorization (`access.rs`) and the Mosquitto ACL the hub
//! generates (`mosquitto.rs`).
//!
//! A device reads its own manifest, ack watermark and log requests, the
//! fleet's key set, the hub heartbeat and the root rotation links, and writes
//! its own status, events and log chunks; nothing else. The one wildcard is the root links' filter
//! (`outpost/v1/roots/+`), which covers only hub-signed links. The hub's
//! two links (their client ids contain ':', which no device id can) use every
//! Outpost topic. Any other client id is nobody.

use outpost_protocol::topics::{self, DeviceId};
use rumqttd::AclAccess;

/// A client, as its (authenticated) client id makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Hub,
    Device(DeviceId),
    Nobody,
}

/// Classify `client_id` given the hub's two client ids.
pub fn who(client_id: &str, hub_ids: &[String; 2]) -> Who {
    if hub_ids.iter().any(|h| h == client_id) {
        return Who::Hub;
    }
    match client_id.parse::<DeviceId>() {
        Ok(id) => Who::Device(id),
        Err(_) => Who::Nobody,
    }
}

/// One thing every device may do with its own topics or the key set: the
/// single list both the embedded broker's check ([`may`]) and the Mosquitto
/// ACL (`mosquitto.rs`, one `pattern` line each) are made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceGrant {
    ReadManifest,
    ReadAcks,
    ReadKeySet,
    ReadHeartbeat,
    ReadRoots,
    ReadLogRequests,
    WriteStatus,
    WriteEvents,
    WriteLogs,
}

/// Everything a device may do; nothing else.
pub const DEVICE_GRANTS: [DeviceGrant; 9] = [
    DeviceGrant::ReadManifest,
    DeviceGrant::ReadAcks,
    DeviceGrant::ReadKeySet,
    DeviceGrant::ReadHeartbeat,
    DeviceGrant::ReadRoots,
    DeviceGrant::ReadLogRequests,
    DeviceGrant::WriteStatus,
    DeviceGrant::WriteEvents,
    DeviceGrant::WriteLogs,
];

impl DeviceGrant {
    /// Subscribe (read) or publish (write).
    pub fn access(self) -> AclAccess {
        match self {
            DeviceGrant::ReadManifest
            | DeviceGrant::ReadAcks
            | DeviceGrant::ReadKeySet
            | DeviceGrant::ReadHeartbeat
            | DeviceGrant::ReadRoots
            | DeviceGrant::ReadLogRequests => AclAccess::Subscribe,
            DeviceGrant::WriteStatus | DeviceGrant::WriteEvents | DeviceGrant::WriteLogs => {
                AclAccess::Publish
            }
        }
    }

    /// The topic this grant covers for device `me`.
    pub fn topic(self, me: &DeviceId) -> String {
        match self {
            DeviceGrant::ReadManifest => topics::manifest(me),
            DeviceGrant::ReadAcks => topics::acks(me),
            DeviceGrant::ReadKeySet => topics::keyset(),
            DeviceGrant::ReadHeartbeat => topics::heartbeat(),
            DeviceGrant::ReadRoots => topics::roots(),
            DeviceGrant::ReadLogRequests => topics::log_requests(me),
            DeviceGrant::WriteStatus => topics::status(me),
            DeviceGrant::WriteEvents => topics::events(me),
            DeviceGrant::WriteLogs => topics::logs(me),
        }
    }

    /// Whether this grant covers `topic` for `me`: the grant's topic itself,
    /// or for the root links' filter, one concrete link (`roots/<version>`),
    /// as Mosquitto's pattern matching would have it.
    pub fn covers(self, me: &DeviceId, topic: &str) -> bool {
        let t = self.topic(me);
        if t == topic {
            return true;
        }
        self == DeviceGrant::ReadRoots
            && topic
                .strip_prefix(t.trim_end_matches('+'))
                .is_some_and(|v| !v.is_empty() && !v.contains(['/', '+', '#']))
    }
}

/// Whether `who` may `access` `topic` (a topic name for a publish, a filter
/// for a subscription).
pub fn may(who: &Who, access: AclAccess, topic: &str) -> bool {
    match who {
        Who::Hub => topic == topics::PREFIX || topic.starts_with(&format!("{}/", topics::PREFIX)),
        Who::Nobody => false,
        Who::Device(me) => DEVICE_GRANTS
            .iter()
            .any(|g| g.access() == access && g.covers(me, topic)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AclAccess::{Publish, Subscribe};

    fn hub_ids() -> [String; 2] {
        ["outpost:hub".into(), "outpost:hub-pub".into()]
    }

    #[test]
    fn clients_are_classified_by_their_id() {
        assert_eq!(who("outpost:hub", &hub_ids()), Who::Hub);
        assert_eq!(who("outpost:hub-pub", &hub_ids()), Who::Hub);
        assert_eq!(
            who("pi-1", &hub_ids()),
            Who::Device("pi-1".parse().unwrap())
        );
        assert_eq!(who("outpost:other", &hub_ids()), Who::Nobody);
        assert_eq!(who("", &hub_ids()), Who::Nobody);
    }

    #[test]
    fn a_device_reaches_only_its_own_topics_and_the_key_set() {
        let a = Who::Device("a".parse().unwrap());
        let b: DeviceId = "b".parse().unwrap();
        let me: DeviceId = "a".parse().unwrap();
        let allowed = [
            (Subscribe, topics::manifest(&me)),
            (Subscribe, topics::acks(&me)),
            (Subscribe, topics::keyset()),
            (Publish, topics::status(&me)),
            (Publish, topics::events(&me)),
        ];
        for (access, topic) in &allowed {
            assert!(may(&a, *access, topic), "{access:?} {topic}");
        }
        let refused = [
            (Subscribe, topics::manifest(&b)),
            (Subscribe, topics::acks(&b)),
            (Subscribe, topics::status(&me)),
            (Subscribe, topics::all_status()),
            (Subscribe, "outpost/v1/dev/+/manifest".to_string()),
            (Subscribe, "#".to_string()),
            (Subscribe, "outpost/v1/#".to_string()),
            (Publish, topics::status(&b)),
            (Publish, topics::events(&b)),
            (Publish, topics::manifest(&me)),
            (Publish, topics::acks(&me)),
            (Publish, topics::keyset()),
            (Publish, "elsewhere".to_string()),
        ];
        for (access, topic) in &refused {
            assert!(!may(&a, *access, topic), "{access:?} {topic}");
        }
    }

    #[test]
    fn the_hub_uses_outpost_topics_and_nobody_uses_anything() {
        assert!(may(&Who::Hub, Publish, &topics::keyset()));
        assert!(may(&Who::Hub, Subscribe, &topics::all_events()));
        assert!(!may(&Who::Hub, Publish, "outpost/v1x"));
        assert!(!may(&Who::Hub, Subscribe, "#"));
        assert!(!may(&Who::Nobody, Subscribe, &topics::keyset()));
    }
}
