//! From the store's facts to the scheduler's inputs, purely: what a device's
//! latest status says about the release a rollout issued to it
//! ([`decide`]), and every matched device's [`DeviceProgress`] ([`fleet`]).

use crate::rollout::schedule::{DeviceProgress, Outcome};
use crate::store::{RolloutRecord, StatusRecord};
use outpost_protocol::status::ReleasePhase;
use outpost_protocol::{DeviceId, StatusReport};
use std::collections::BTreeMap;

/// What `report` says about release `issued` (`(epoch, generation)`), or
/// `None` while it says nothing final.
///
/// - Committed: the device committed `issued` or a later release (a later
///   one carries this revision too: it was rendered from it).
/// - Rolled back / failed: its newest release (`target`) is `issued` or later
///   and its trial failed; the reason names the app.
/// - An agent that reports no release state at all (before protocol format
///   version 2) has no trial: it counts as committed once it applied `issued`.
pub fn decide(issued: (u64, u64), report: &StatusReport) -> Option<Outcome> {
    let Some(release) = &report.release else {
        return report
            .applied
            .is_some_and(|a| a >= issued)
            .then_some(Outcome::Committed);
    };
    if release.committed.is_some_and(|c| c >= issued) {
        return Some(Outcome::Committed);
    }
    if release.target < issued {
        return None;
    }
    match &release.phase {
        ReleasePhase::RolledBack { to, app, reason } => Some(Outcome::RolledBack {
            reason: format!(
                "app {app}: {reason} (rolled back to generation {}/{})",
                to.0, to.1
            ),
        }),
        ReleasePhase::Failed { app, reason } => Some(Outcome::Failed {
            reason: format!("app {app}: {reason}"),
        }),
        _ => None,
    }
}

/// The scheduler's view of the fleet: every device in `matched` (the devices
/// the deployment selects now), with its outcome from `rollout` (not
/// targeted when it was not admitted) and when its last status arrived.
pub fn fleet(
    rollout: &RolloutRecord,
    matched: &[DeviceId],
    statuses: &BTreeMap<String, StatusRecord>,
) -> Vec<DeviceProgress> {
    matched
        .iter()
        .map(|id| DeviceProgress {
            id: id.clone(),
            outcome: rollout
                .devices
                .get(id.as_str())
                .map_or(Outcome::NotTargeted, |d| d.outcome.clone()),
            last_seen_at: statuses.get(id.as_str()).map(|s| s.received_at),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::status::ReleaseStatus;

    fn report(applied: Option<(u64, u64)>, release: Option<ReleaseStatus>) -> StatusReport {
        StatusReport {
            applied,
            release,
            ..StatusReport::blank("d1".parse().unwrap(), 1, 1)
        }
    }

    fn rel(target: (u64, u64), phase: ReleasePhase, committed: Option<(u64, u64)>) -> ReportCase {
        Some(ReleaseStatus {
            target,
            phase,
            committed,
        })
    }
    type ReportCase = Option<ReleaseStatus>;

    #[test]
    fn what_a_status_says_about_an_issued_release() {
        let issued = (1, 5);
        let back = ReleasePhase::RolledBack {
            to: (1, 4),
            app: "web".into(),
            reason: "exited with 3".into(),
        };
        let failed = ReleasePhase::Failed {
            app: "db".into(),
            reason: "not ready".into(),
        };
        let cases: Vec<(&str, StatusReport, Option<Outcome>)> = vec![
            (
                "downloading",
                report(
                    Some((1, 5)),
                    rel((1, 5), ReleasePhase::Downloading, Some((1, 4))),
                ),
                None,
            ),
            (
                "in trial",
                report(Some((1, 5)), rel((1, 5), ReleasePhase::Trial, Some((1, 4)))),
                None,
            ),
            (
                "committed",
                report(
                    Some((1, 5)),
                    rel((1, 5), ReleasePhase::Committed, Some((1, 5))),
                ),
                Some(Outcome::Committed),
            ),
            (
                "a later one committed",
                report(
                    Some((1, 6)),
                    rel((1, 6), ReleasePhase::Committed, Some((1, 6))),
                ),
                Some(Outcome::Committed),
            ),
            (
                "still on the old one",
                report(
                    Some((1, 4)),
                    rel((1, 4), ReleasePhase::Committed, Some((1, 4))),
                ),
                None,
            ),
            (
                "rolled back",
                report(Some((1, 5)), rel((1, 5), back.clone(), Some((1, 4)))),
                Some(Outcome::RolledBack {
                    reason: "app web: exited with 3 (rolled back to generation 1/4)".into(),
                }),
            ),
            (
                "an older rollback",
                report(Some((1, 4)), rel((1, 4), back, Some((1, 3)))),
                None,
            ),
            (
                "failed with nothing to go back to",
                report(Some((1, 5)), rel((1, 5), failed, None)),
                Some(Outcome::Failed {
                    reason: "app db: not ready".into(),
                }),
            ),
            (
                "old agent, applied",
                report(Some((1, 5)), None),
                Some(Outcome::Committed),
            ),
            ("old agent, behind", report(Some((1, 4)), None), None),
            ("old agent, nothing", report(None, None), None),
        ];
        for (name, r, want) in cases {
            assert_eq!(decide(issued, &r), want, "{name}");
        }
    }
}
