//! Staged rollouts: the pure core that decides which devices get a
//! deployment's new generation, and when.
//!
//! This module owns the `[rollout]` policy of a deployment (parsing, checks,
//! defaults: [`policy`]) and the scheduler with the rollout's state machine
//! ([`schedule`]): `next_action(state, devices, policy, now) -> Action`, and
//! the operator's pause, resume and abort as transitions of that state. It
//! does no I/O and reads no clock; the hub (`hub/src/hub/rollouts/mod.rs`: store,
//! driver task, operator commands) keeps the state, feeds in device reports
//! and carries out the actions.
//!
//! # Layout
//! - [`policy`]: `RolloutDef` (the `[rollout]` table), `RolloutPolicy` (checked),
//!   `PolicyError`, cumulative wave sizes.
//! - [`schedule`]: `RolloutState`, `DeviceProgress`, `Action`, `next_action`,
//!   pause/resume/abort.
//! - [`progress`]: device statuses → outcomes and the scheduler's fleet.
//! - [`view`]: what `rollout status` shows (API body and the CLI's table).
//! - `tests` (table tests of the scheduler) and `props` (property tests that
//!   drive it against a model fleet).

pub mod policy;
pub mod schedule;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

pub use policy::{PolicyError, PolicyProblem, Ratio, RolloutDef, RolloutPolicy, WaveSize};
pub use schedule::{
    next_action, Action, DeviceProgress, Outcome, PauseReason, Phase, RolloutState, Standing,
    Tally, TransitionError,
};
