//! What the hub says about a device's health, from its last status report:
//! its [`DeviceState`] in one word and its [`AppCounts`]. Pure; shared by the
//! API's views, the CLI, the dashboard and `/metrics`.

use outpost_protocol::{AppState, StatusReport};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCounts {
    pub total: usize,
    pub running: usize,
    pub failing: usize,
}

/// A device's state in one word, as the CLI, the dashboard and `/metrics`
/// say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// No verified status ever arrived.
    NeverSeen,
    /// No verified status within the online window.
    Offline,
    /// Online, with at least one app failing (failed, backing off, exited
    /// or not ready).
    Degraded,
    /// Online and every app it reported is healthy.
    Online,
}

impl DeviceState {
    pub const ALL: [DeviceState; 4] = [
        DeviceState::Online,
        DeviceState::Degraded,
        DeviceState::Offline,
        DeviceState::NeverSeen,
    ];

    /// Pure: from what the summary holds.
    pub fn of(online: bool, last_seen: Option<u64>, failing: usize) -> DeviceState {
        match (online, last_seen, failing) {
            (_, None, _) => DeviceState::NeverSeen,
            (false, Some(_), _) => DeviceState::Offline,
            (true, Some(_), 0) => DeviceState::Online,
            (true, Some(_), _) => DeviceState::Degraded,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::NeverSeen => "never seen",
            DeviceState::Offline => "offline",
            DeviceState::Degraded => "degraded",
            DeviceState::Online => "online",
        }
    }

    /// The `state` label value in `/metrics` (no spaces).
    pub fn label(self) -> &'static str {
        match self {
            DeviceState::NeverSeen => "never_seen",
            s => s.as_str(),
        }
    }
}

impl std::fmt::Display for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many of a report's apps run, and how many fail. (Pure.)
pub fn counts(report: &StatusReport) -> AppCounts {
    AppCounts {
        total: report.apps.len(),
        running: report.apps.iter().filter(|a| a.state.is_running()).count(),
        failing: report
            .apps
            .iter()
            .filter(|a| {
                matches!(
                    a.state,
                    AppState::Failed | AppState::BackingOff { .. } | AppState::Exited { .. }
                ) || a.ready == Some(false)
            })
            .count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_state_table() {
        let cases = [
            (false, None, 0, DeviceState::NeverSeen),
            (true, None, 3, DeviceState::NeverSeen),
            (false, Some(5), 0, DeviceState::Offline),
            (false, Some(5), 2, DeviceState::Offline),
            (true, Some(5), 0, DeviceState::Online),
            (true, Some(5), 1, DeviceState::Degraded),
        ];
        for (online, seen, failing, want) in cases {
            assert_eq!(
                DeviceState::of(online, seen, failing),
                want,
                "{online} {seen:?} {failing}"
            );
        }
        assert_eq!(DeviceState::NeverSeen.label(), "never_seen");
        assert_eq!(DeviceState::NeverSeen.to_string(), "never seen");
    }
}
