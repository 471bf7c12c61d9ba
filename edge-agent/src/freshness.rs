//! What the device has heard from its hub, and when the hub counts as silent.
//!
//! The inbox writes [`HubContact`] (its one writer) whenever something signed
//! by the hub moves the trusted-time floor: an accepted manifest, an adopted key
//! set or root, a hub heartbeat (`outpost_protocol::heartbeat`). The reporter
//! reads it and decides, with [`silence`], whether to report "hub silent for
//! N" in the status. The decisions here are pure functions of their inputs.
//!
//! Silence is measured twice and the larger counts: by the wall clock (now
//! minus the floor: right across reboots, wrong if the clock is) and by the
//! monotonic clock since the last signed message of this run (right on a
//! device whose clock is stuck in 1970, blind across a reboot).

use std::time::Duration;
use tokio::time::Instant;

/// The hub's newest signed word, as this device knows it. A part of the view
/// that does not wake the status sender: a heartbeat alone is no reason to
/// send a report (10,000 devices would answer every heartbeat at once); the
/// periodic report carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubContact {
    /// `issued_at` of the newest verified heartbeat (hub clock, unix seconds).
    pub last_heartbeat: Option<u64>,
    /// The trust state's time floor (highest signed hub time seen).
    pub time_floor: u64,
    /// When (monotonic) the floor last moved in this run.
    pub heard_at: Option<Instant>,
}

/// How long the hub has been silent, if longer than `threshold`: the larger
/// of `wall_now - time_floor` and `since_heard` (monotonic time since the
/// floor last moved in this run, or since the agent started). (Pure.)
pub fn silence(
    contact: &HubContact,
    wall_now: u64,
    since_heard: Duration,
    threshold: Duration,
) -> Option<u64> {
    let by_wall = wall_now.saturating_sub(contact.time_floor);
    let silent = by_wall.max(since_heard.as_secs());
    (silent >= threshold.as_secs()).then_some(silent)
}

/// A heartbeat moves the floor every minute; persisting each would write the
/// flash 1,440 times a day. The floor on disk may lag the one in memory by
/// this much: it is a lower bound, so a lag costs nothing but that much of
/// freshness after a reboot.
pub const FLOOR_PERSIST_STEP_SECS: u64 = 3600;

/// Whether a floor raised to `floor` by a heartbeat should be written now,
/// given the one on disk. (Pure.)
pub fn persist_floor(on_disk: u64, floor: u64) -> bool {
    floor > on_disk && floor >= on_disk.saturating_add(FLOOR_PERSIST_STEP_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(floor: u64) -> HubContact {
        HubContact {
            last_heartbeat: Some(floor),
            time_floor: floor,
            heard_at: None,
        }
    }

    #[test]
    fn silence_is_the_longer_of_wall_and_monotonic_time_past_the_threshold() {
        let t = Duration::from_secs(300);
        // Heard 10 s ago by both clocks: not silent.
        assert_eq!(
            silence(&contact(1_000), 1_010, Duration::from_secs(10), t),
            None
        );
        // Wall clock says 2 h since the floor (e.g. after a reboot).
        assert_eq!(
            silence(&contact(1_000), 8_200, Duration::from_secs(5), t),
            Some(7_200)
        );
        // Clock stuck in 1970, but nothing heard for 10 min of uptime.
        assert_eq!(
            silence(&contact(1_000), 0, Duration::from_secs(600), t),
            Some(600)
        );
        // Exactly at the threshold counts as silent.
        assert_eq!(
            silence(&contact(1_000), 1_300, Duration::ZERO, t),
            Some(300)
        );
    }

    #[test]
    fn the_floor_is_written_at_most_once_an_hour_of_hub_time() {
        assert!(!persist_floor(10_000, 10_060));
        assert!(!persist_floor(10_000, 13_599));
        assert!(persist_floor(10_000, 13_600));
        assert!(
            persist_floor(0, 1_780_000_000),
            "first heartbeat after provisioning"
        );
        assert!(!persist_floor(u64::MAX, u64::MAX));
    }
}
