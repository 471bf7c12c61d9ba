//! The rollout scheduler and the rollout's state machine, both pure.
//!
//! [`next_action`] looks at the rollout's [`RolloutState`], every matched
//! device's [`DeviceProgress`], the [`RolloutPolicy`] and the time passed in,
//! and names the one next step ([`Action`]). The hub does the step (stores the
//! newly targeted devices, renders and publishes their manifests) and records
//! it with [`RolloutState::after`]. The operator's `pause`, `resume` and
//! `abort` are transitions of the same state ([`RolloutState::pause`], …).
//! Nothing here reads a clock or does I/O, so the same inputs always give the
//! same answer, and a hub restarted mid-rollout continues where it stopped.
//!
//! # Rules
//! - Each device is, at a given time, untargeted, pending, committed, failed
//!   (failed or rolled back), or skipped ([`Standing`]). *Skipped*: pending
//!   and silent (no status at all) for `offline_grace_secs`, counted from
//!   when it was targeted or last seen, whichever is later; or pending since
//!   before the operator resumed a wave that had timed out. A skipped device
//!   is neither a success nor a failure: it does not hold its wave back.
//!   Skipping is re-derived at every call, so a skipped device that comes
//!   back and reports is counted by what it reports.
//! - A wave is done when none of its devices is pending.
//! - Failure ratio: `failed / counted`, where *counted* is the targeted
//!   devices that are not skipped (pending + committed + failed). It is
//!   checked at every call, before anything else, so it is always checked
//!   before a new wave is targeted (when, the wave being done, nothing counted
//!   is pending). The rollout pauses when `failed > max_failure_ratio ×
//!   counted`; with a canary of 1 a single failure pauses it unless the ratio
//!   is 1. Failures the operator accepted by resuming do not pause it again;
//!   one more failure does, if the ratio is still exceeded.
//! - Wave timeout: a wave still pending `wave_timeout_secs` after it was
//!   targeted (or the rollout last resumed) pauses the rollout.
//! - Devices are picked in a fixed order: by SHA-256 of the rollout id and
//!   the device id, then by device id. The same fleet and the same targeted
//!   set always give the same next devices; a different rollout starts with
//!   different canaries.
//! - Waves are cumulative ([`RolloutPolicy::cumulative`]), computed on the
//!   fleet as passed in, so devices matched mid-rollout are picked up by the
//!   next wave (or by the last one, as a top-up, once it is done).
//! - Complete when every device is targeted and none is pending.

use super::policy::RolloutPolicy;
use outpost_protocol::DeviceId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Why a rollout is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PauseReason {
    /// `rollout pause`.
    Operator,
    /// More devices failed than `max_failure_ratio` allows.
    FailureRatio {
        failed: usize,
        counted: usize,
        max_failure_ppm: u32,
    },
    /// Wave `wave` still had `pending` devices after `timeout_secs`.
    WaveTimeout {
        wave: usize,
        pending: usize,
        timeout_secs: u64,
    },
}

impl fmt::Display for PauseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PauseReason::Operator => f.write_str("paused by the operator"),
            PauseReason::FailureRatio {
                failed,
                counted,
                max_failure_ppm,
            } => write!(
                f,
                "{failed} of {counted} updated devices failed, more than max_failure_ratio {}",
                f64::from(*max_failure_ppm) / 1_000_000.0
            ),
            PauseReason::WaveTimeout {
                wave,
                pending,
                timeout_secs,
            } => write!(
                f,
                "wave {wave} timed out after {timeout_secs} s with {pending} device(s) pending"
            ),
        }
    }
}

/// Where a rollout is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Running,
    /// Targets nothing until resumed.
    Paused {
        reason: PauseReason,
    },
    /// Stopped for good: untargeted devices keep their current generation.
    Aborted,
    /// Every device was targeted and none is pending.
    Completed,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Running => f.write_str("running"),
            Phase::Paused { reason } => write!(f, "paused ({reason})"),
            Phase::Aborted => f.write_str("aborted"),
            Phase::Completed => f.write_str("completed"),
        }
    }
}

/// What the hub keeps per rollout besides each device's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutState {
    /// Names the rollout (e.g. deployment name and revision); seeds the order
    /// in which devices are picked.
    pub id: String,
    pub phase: Phase,
    /// The highest wave targeted so far; `None` before the first.
    pub wave: Option<usize>,
    /// When devices were last targeted or the rollout last resumed: the wave
    /// timeout counts from here, so time spent paused is not held against it.
    pub wave_started_at: u64,
    /// Failed devices at the last resume: the operator has seen these, so only
    /// a failure beyond them can pause the rollout again.
    pub accepted_failures: usize,
    /// Pending devices targeted before this time do not hold a wave back: set
    /// when the operator resumes a timed-out wave ("go on without them").
    pub waived_before: u64,
}

/// One device's outcome for this rollout's target generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Not picked yet: keeps its current generation.
    NotTargeted,
    /// Picked at `targeted_at`; no result reported yet.
    Pending { targeted_at: u64 },
    /// Reported the target generation committed.
    Committed,
    /// Reported that the target generation failed.
    Failed { reason: String },
    /// Went back to its previous generation: counts as a failure.
    RolledBack { reason: String },
}

/// One matched device as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProgress {
    pub id: DeviceId,
    pub outcome: Outcome,
    /// Hub time of the device's last verified status, whatever it said.
    pub last_seen_at: Option<u64>,
}

/// A device's standing at one instant (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Untargeted,
    Pending,
    Committed,
    Failed,
    Skipped,
}

/// When a pending device counts as unreachable, if it stays silent.
fn silent_until(targeted_at: u64, last_seen_at: Option<u64>, policy: &RolloutPolicy) -> u64 {
    targeted_at
        .max(last_seen_at.unwrap_or(0))
        .saturating_add(policy.offline_grace_secs())
}

impl DeviceProgress {
    pub fn standing(&self, state: &RolloutState, policy: &RolloutPolicy, now: u64) -> Standing {
        match &self.outcome {
            Outcome::NotTargeted => Standing::Untargeted,
            Outcome::Committed => Standing::Committed,
            Outcome::Failed { .. } | Outcome::RolledBack { .. } => Standing::Failed,
            Outcome::Pending { targeted_at } => {
                if *targeted_at < state.waived_before
                    || now >= silent_until(*targeted_at, self.last_seen_at, policy)
                {
                    Standing::Skipped
                } else {
                    Standing::Pending
                }
            }
        }
    }
}

/// Devices per standing, for the scheduler and for `rollout status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub untargeted: usize,
    pub pending: usize,
    pub committed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Tally {
    /// Counts each device id once (the first entry wins), like [`next_action`].
    pub fn of(
        devices: &[DeviceProgress],
        state: &RolloutState,
        policy: &RolloutPolicy,
        now: u64,
    ) -> Tally {
        let mut t = Tally::default();
        for d in fleet(devices).values() {
            match d.standing(state, policy, now) {
                Standing::Untargeted => t.untargeted += 1,
                Standing::Pending => t.pending += 1,
                Standing::Committed => t.committed += 1,
                Standing::Failed => t.failed += 1,
                Standing::Skipped => t.skipped += 1,
            }
        }
        t
    }
    pub fn targeted(&self) -> usize {
        self.pending + self.committed + self.failed + self.skipped
    }
    /// The failure ratio's denominator: targeted and not skipped.
    pub fn counted(&self) -> usize {
        self.pending + self.committed + self.failed
    }
}

/// The scheduler's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Target these devices (never empty) as part of wave `wave`: render and
    /// publish their manifests, mark them pending at `now`.
    Target { wave: usize, devices: Vec<DeviceId> },
    /// Nothing to do until a device reports or `recheck_at` (hub time) comes;
    /// `None`: only a report or an operator command can change the answer.
    Wait { recheck_at: Option<u64> },
    /// Pause the rollout for `reason`.
    Pause { reason: PauseReason },
    /// Mark the rollout completed.
    Complete,
}

/// A pause, resume or abort the rollout's phase does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rollout {id} is {phase}; cannot {verb} it")]
pub struct TransitionError {
    pub id: String,
    pub phase: String,
    pub verb: &'static str,
}

impl RolloutState {
    /// A rollout that has targeted nothing yet.
    pub fn new(id: impl Into<String>, now: u64) -> RolloutState {
        RolloutState {
            id: id.into(),
            phase: Phase::Running,
            wave: None,
            wave_started_at: now,
            accepted_failures: 0,
            waived_before: 0,
        }
    }

    /// The state once the hub has carried out `action` at `now`. Only a
    /// running rollout moves; `Wait` changes nothing.
    pub fn after(&self, action: &Action, now: u64) -> RolloutState {
        let mut next = self.clone();
        if self.phase != Phase::Running {
            return next;
        }
        match action {
            Action::Target { wave, .. } => {
                next.wave = Some(self.wave.map_or(*wave, |w| w.max(*wave)));
                next.wave_started_at = now;
            }
            Action::Pause { reason } => {
                next.phase = Phase::Paused {
                    reason: reason.clone(),
                }
            }
            Action::Complete => next.phase = Phase::Completed,
            Action::Wait { .. } => {}
        }
        next
    }

    fn refuse(&self, verb: &'static str) -> TransitionError {
        TransitionError {
            id: self.id.clone(),
            phase: self.phase.to_string(),
            verb,
        }
    }

    /// `rollout pause`: a running rollout stops targeting. Pausing a paused
    /// rollout keeps its first reason.
    pub fn pause(&self) -> Result<RolloutState, TransitionError> {
        match self.phase {
            Phase::Running => Ok(RolloutState {
                phase: Phase::Paused {
                    reason: PauseReason::Operator,
                },
                ..self.clone()
            }),
            Phase::Paused { .. } => Ok(self.clone()),
            Phase::Aborted | Phase::Completed => Err(self.refuse("pause")),
        }
    }

    /// `rollout resume` at `now`: running again, with a fresh wave timeout.
    /// The failures known now are accepted (they alone will not pause it
    /// again); after a wave timeout, the devices still pending are waived.
    /// Resuming a running rollout changes nothing.
    pub fn resume(
        &self,
        devices: &[DeviceProgress],
        now: u64,
    ) -> Result<RolloutState, TransitionError> {
        let Phase::Paused { reason } = &self.phase else {
            return match self.phase {
                Phase::Running => Ok(self.clone()),
                _ => Err(self.refuse("resume")),
            };
        };
        let failed = fleet(devices)
            .values()
            .filter(|d| {
                matches!(
                    d.outcome,
                    Outcome::Failed { .. } | Outcome::RolledBack { .. }
                )
            })
            .count();
        let waived_before = match reason {
            PauseReason::WaveTimeout { .. } => now,
            _ => self.waived_before,
        };
        Ok(RolloutState {
            phase: Phase::Running,
            wave_started_at: now,
            accepted_failures: self.accepted_failures.max(failed),
            waived_before,
            ..self.clone()
        })
    }

    /// `rollout abort`: stops for good; devices already targeted keep the new
    /// generation, the others their current one. Aborting twice is a no-op;
    /// a completed rollout cannot be aborted.
    pub fn abort(&self) -> Result<RolloutState, TransitionError> {
        match self.phase {
            Phase::Running | Phase::Paused { .. } => Ok(RolloutState {
                phase: Phase::Aborted,
                ..self.clone()
            }),
            Phase::Aborted => Ok(self.clone()),
            Phase::Completed => Err(self.refuse("abort")),
        }
    }
}

/// The devices by id, each once (the first entry wins): the fleet.
fn fleet(devices: &[DeviceProgress]) -> BTreeMap<&DeviceId, &DeviceProgress> {
    let mut out = BTreeMap::new();
    for d in devices {
        out.entry(&d.id).or_insert(d);
    }
    out
}

/// The key devices are picked by: a hash of rollout and device, so canaries
/// differ between rollouts, then the id itself to break (unlikely) ties.
fn pick_key<'a>(rollout_id: &str, device: &'a DeviceId) -> (u64, &'a DeviceId) {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // Length prefix: ("ab", "c") and ("a", "bc") must not hash alike.
    ctx.update(&(rollout_id.len() as u64).to_le_bytes());
    ctx.update(rollout_id.as_bytes());
    ctx.update(device.as_str().as_bytes());
    let digest = ctx.finish();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_be_bytes(head), device)
}

/// The next step of the rollout (see the module doc for the rules).
/// `devices` is every device the deployment matches now, one entry each
/// (a repeated id is counted once); `now` is hub time in unix seconds.
pub fn next_action(
    rollout: &RolloutState,
    devices: &[DeviceProgress],
    policy: &RolloutPolicy,
    now: u64,
) -> Action {
    if rollout.phase != Phase::Running {
        return Action::Wait { recheck_at: None };
    }
    let fleet = fleet(devices);
    let tally = Tally::of(devices, rollout, policy, now);

    if tally.failed > rollout.accepted_failures
        && policy.failures_exceed(tally.failed, tally.counted())
    {
        return Action::Pause {
            reason: PauseReason::FailureRatio {
                failed: tally.failed,
                counted: tally.counted(),
                max_failure_ppm: policy.max_failure_ppm(),
            },
        };
    }

    if tally.pending > 0 {
        let deadline = rollout
            .wave_started_at
            .saturating_add(policy.wave_timeout_secs());
        if now >= deadline {
            return Action::Pause {
                reason: PauseReason::WaveTimeout {
                    wave: rollout.wave.unwrap_or(0),
                    pending: tally.pending,
                    timeout_secs: policy.wave_timeout_secs(),
                },
            };
        }
        // The earliest time a pending device may become skipped; until then
        // only a report changes the answer.
        let first_silence = fleet
            .values()
            .filter(|d| d.standing(rollout, policy, now) == Standing::Pending)
            .filter_map(|d| match d.outcome {
                Outcome::Pending { targeted_at } => {
                    Some(silent_until(targeted_at, d.last_seen_at, policy))
                }
                _ => None,
            })
            .min()
            .unwrap_or(deadline);
        return Action::Wait {
            recheck_at: Some(deadline.min(first_silence)),
        };
    }

    let targeted = tally.targeted();
    let cumulative = policy.cumulative(fleet.len());
    let from = rollout.wave.unwrap_or(0);
    let next = cumulative
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, &reach)| reach > targeted);
    let Some((wave, &reach)) = next else {
        // The last wave reaches the whole fleet, so nothing left to reach
        // means every device is targeted, and none is pending.
        return Action::Complete;
    };
    let mut candidates: Vec<(u64, &DeviceId)> = fleet
        .values()
        .filter(|d| d.outcome == Outcome::NotTargeted)
        .map(|d| pick_key(&rollout.id, &d.id))
        .collect();
    candidates.sort_unstable();
    Action::Target {
        wave,
        devices: candidates
            .into_iter()
            .take(reach - targeted)
            .map(|(_, id)| id.clone())
            .collect(),
    }
}
