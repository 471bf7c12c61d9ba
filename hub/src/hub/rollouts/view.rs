//! What `rollout status` shows: [`RolloutView`] (the API's JSON body, built
//! purely from a stored rollout, the fleet and the time) and its human form
//! ([`RolloutView::human`], [`summary`]): aligned tables, states in words,
//! times relative to the hub's clock.

use crate::rollout::policy::{RolloutDef, RolloutPolicy};
use crate::rollout::schedule::{DeviceProgress, Outcome, Phase, Standing, Tally};
use crate::store::RolloutRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One rollout as the API serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutView {
    pub deployment: String,
    /// The revision being rolled out.
    pub revision: u64,
    /// The revision devices not yet updated keep; `None` on a first apply.
    pub from_revision: Option<u64>,
    pub phase: Phase,
    /// `phase` in words, e.g. `paused (2 of 5 updated devices failed, …)`.
    pub state: String,
    pub started_at: u64,
    /// The hub's clock when this view was built: times above are relative to it.
    pub now: u64,
    /// Devices the deployment selects now.
    pub matched: usize,
    pub tally: Tally,
    pub waves: Vec<WaveView>,
    /// Devices that failed or rolled back, with their reasons.
    pub failed: Vec<FailedDevice>,
    pub policy: RolloutDef,
}

/// Progress of one wave (0 is the canary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveView {
    pub wave: usize,
    /// Devices updated once this wave is done (cumulative, for the fleet now).
    pub reach: usize,
    /// Devices this wave admitted.
    pub targeted: usize,
    pub committed: usize,
    pub failed: usize,
    pub pending: usize,
    pub skipped: usize,
    /// When its first device was admitted.
    pub started_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedDevice {
    pub device: String,
    pub wave: usize,
    /// `failed` (no release to go back to) or `rolled back`.
    pub outcome: String,
    pub reason: String,
    pub at: Option<u64>,
}

impl RolloutView {
    /// `fleet` is every device the deployment selects now (see
    /// `progress::fleet`); admitted devices no longer selected still count in
    /// their wave.
    pub fn build(
        record: &RolloutRecord,
        fleet: &[DeviceProgress],
        policy: &RolloutPolicy,
        now: u64,
    ) -> RolloutView {
        let state = &record.state;
        let seen: BTreeMap<&str, Option<u64>> = fleet
            .iter()
            .map(|d| (d.id.as_str(), d.last_seen_at))
            .collect();
        let reach = policy.cumulative(fleet.len());
        let mut waves: Vec<WaveView> = reach
            .iter()
            .enumerate()
            .map(|(wave, &reach)| WaveView {
                wave,
                reach,
                targeted: 0,
                committed: 0,
                failed: 0,
                pending: 0,
                skipped: 0,
                started_at: None,
            })
            .collect();
        let mut failed = Vec::new();
        for (id, d) in &record.devices {
            let Some(w) = waves.get_mut(d.wave) else {
                continue;
            };
            w.targeted += 1;
            w.started_at = Some(w.started_at.map_or(d.targeted_at, |s| s.min(d.targeted_at)));
            let Ok(device) = id.parse() else {
                continue;
            };
            let progress = DeviceProgress {
                id: device,
                outcome: d.outcome.clone(),
                last_seen_at: seen.get(id.as_str()).copied().flatten(),
            };
            match progress.standing(state, policy, now) {
                Standing::Committed => w.committed += 1,
                Standing::Failed => w.failed += 1,
                Standing::Pending => w.pending += 1,
                Standing::Skipped => w.skipped += 1,
                Standing::Untargeted => {}
            }
            let (outcome, reason) = match &d.outcome {
                Outcome::Failed { reason } => ("failed", reason),
                Outcome::RolledBack { reason } => ("rolled back", reason),
                _ => continue,
            };
            failed.push(FailedDevice {
                device: id.clone(),
                wave: d.wave,
                outcome: outcome.into(),
                reason: reason.clone(),
                at: d.decided_at,
            });
        }
        RolloutView {
            deployment: record.deployment.clone(),
            revision: record.revision,
            from_revision: record.previous.as_ref().map(|p| p.revision),
            phase: state.phase.clone(),
            state: state.phase.to_string(),
            started_at: record.started_at,
            now,
            matched: fleet.len(),
            tally: Tally::of(fleet, state, policy, now),
            waves,
            failed,
            policy: record.def.clone(),
        }
    }

    /// The human form of `rollout status DEPLOYMENT`.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let from = self
            .from_revision
            .map_or("first apply".to_string(), |r| format!("from revision {r}"));
        let _ = writeln!(
            out,
            "deployment {}: revision {} ({from}), {}",
            self.deployment, self.revision, self.state
        );
        let t = &self.tally;
        let _ = writeln!(
            out,
            "started {}; {} matched device(s): {} committed, {} failed, {} pending, {} skipped (offline), {} not yet updated",
            ago(self.started_at, self.now),
            self.matched,
            t.committed,
            t.failed,
            t.pending,
            t.skipped,
            t.untargeted
        );
        out.push('\n');
        let mut rows = vec![[
            "WAVE",
            "UPDATES",
            "ADMITTED",
            "COMMITTED",
            "FAILED",
            "PENDING",
            "SKIPPED",
            "STARTED",
        ]
        .map(String::from)
        .to_vec()];
        for w in &self.waves {
            rows.push(vec![
                if w.wave == 0 {
                    "canary".to_string()
                } else {
                    w.wave.to_string()
                },
                format!("to {}", w.reach),
                w.targeted.to_string(),
                w.committed.to_string(),
                w.failed.to_string(),
                w.pending.to_string(),
                w.skipped.to_string(),
                w.started_at
                    .map_or("not started".to_string(), |t| ago(t, self.now)),
            ]);
        }
        out.push_str(&table(
            &rows,
            &[false, true, true, true, true, true, true, false],
        ));
        if !self.failed.is_empty() {
            out.push('\n');
            let mut rows = vec![["FAILED DEVICE", "WAVE", "OUTCOME", "WHEN", "REASON"]
                .map(String::from)
                .to_vec()];
            for f in &self.failed {
                rows.push(vec![
                    f.device.clone(),
                    f.wave.to_string(),
                    f.outcome.clone(),
                    f.at.map_or("-".to_string(), |t| ago(t, self.now)),
                    f.reason.clone(),
                ]);
            }
            out.push_str(&table(&rows, &[false, true, false, false, false]));
        }
        out
    }
}

/// The human form of `rollout status` without a deployment: one line each.
pub fn summary(views: &[RolloutView]) -> String {
    if views.is_empty() {
        return "no rollouts\n".into();
    }
    let mut rows = vec![[
        "DEPLOYMENT",
        "REVISION",
        "STATE",
        "COMMITTED",
        "FAILED",
        "PENDING",
        "NOT UPDATED",
        "STARTED",
    ]
    .map(String::from)
    .to_vec()];
    for v in views {
        let state = match &v.phase {
            Phase::Paused { .. } => "paused".to_string(),
            p => p.to_string(),
        };
        rows.push(vec![
            v.deployment.clone(),
            v.revision.to_string(),
            state,
            v.tally.committed.to_string(),
            v.tally.failed.to_string(),
            v.tally.pending.to_string(),
            v.tally.untargeted.to_string(),
            ago(v.started_at, v.now),
        ]);
    }
    table(&rows, &[false, true, false, true, true, true, true, false])
}

pub use crate::text::ago;

/// Rows (the first is the header) as aligned columns; `right[i]`:
/// right-align column `i`.
fn table(rows: &[Vec<String>], right: &[bool]) -> String {
    let Some((header, rows)) = rows.split_first() else {
        return String::new();
    };
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let right: Vec<usize> = right
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.then_some(i))
        .collect();
    crate::text::table(&header, rows, &right)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_take_their_header_from_the_first_row() {
        let rows = vec![
            vec!["A".to_string(), "N".into()],
            vec!["long-name".to_string(), "12".into()],
            vec!["b".to_string(), "3".into()],
        ];
        assert_eq!(
            table(&rows, &[false, true]),
            "A           N\nlong-name  12\nb           3\n"
        );
    }
}
