//! The rollout scenario of the fleet benchmark: once every simulated device
//! runs its first (committed) release, apply the benchmark deployment with a
//! `[rollout]` policy while a share of the devices fail every new release
//! (they roll it back and say so in their signed status, see `device.rs`), and
//! watch the hub's rollout driver through `GET /v1/rollouts/bench` until it
//! pauses, completes or is aborted. Then check, from the devices' side, which
//! of them ever ran the new release: a paused rollout must have left every
//! device it did not target on its previous generation.

use crate::device::Board;
use crate::hub::HubProcess;
use crate::procstat::{self, ProcSample};
use crate::stats::secs;
use outpost_hub::client::ClientError;
use outpost_hub::hub::rollouts::view::RolloutView;
use outpost_hub::hub::ApplyOutcome;
use outpost_hub::rollout::schedule::Phase;
use reqwest::Method;
use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Which devices fail their releases: `round(share × n)` of them, spread
/// evenly over the device indices (the hub picks devices for waves in its own
/// hashed order, so an even spread here is a random one there). (Pure.)
pub fn failing(idx: usize, n: usize, share: f64) -> bool {
    let share = share.clamp(0.0, 1.0);
    let before = (idx as f64 * share).floor();
    let after = ((idx + 1) as f64 * share).floor();
    after > before && idx < n
}

/// Why the scenario could not be followed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("applying deployment {deployment:?} with [rollout] {policy} did not start a rollout")]
    NotStarted {
        deployment: String,
        policy: serde_json::Value,
    },
}

/// What the rollout scenario saw.
#[derive(Debug, Clone)]
pub struct RolloutReport {
    /// The `[rollout]` table applied (as JSON).
    pub policy: serde_json::Value,
    /// Devices marked as failing every new release.
    pub failing_devices: usize,
    /// Duration of the `PUT /v1/deployments` call that started the rollout.
    pub apply_call: Duration,
    /// Devices the apply targeted at once (the canary, or the first wave).
    pub first_targeted: usize,
    /// From the apply until the rollout stopped running (paused, completed,
    /// aborted); `None` when it still ran at the timeout.
    pub settled_after: Option<Duration>,
    /// The hub's view once every targeted device had reported (or at the timeout).
    pub view: Option<RolloutView>,
    /// Devices whose simulated runtime ever applied the new release.
    pub reached: usize,
    /// Of those, devices marked as failing.
    pub reached_failing: usize,
    /// Devices that rolled the new release back (device side).
    pub rolled_back: usize,
    pub hub_cpu: Duration,
}

impl RolloutReport {
    /// Did the rollout stop by itself (paused or completed) within the timeout?
    pub fn settled(&self) -> bool {
        self.settled_after.is_some()
    }
}

fn stopped(phase: &Phase) -> bool {
    !matches!(phase, Phase::Running)
}

/// Apply `deployment` (JSON, as `PUT /v1/deployments` takes it) with `policy`
/// as its `[rollout]` and follow the rollout. `before[i]` is the generation
/// device `i` ran before; `fails[i]` whether it fails new releases.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    deployment: serde_json::Value,
    policy: &serde_json::Value,
    failing_devices: usize,
    hub: &HubProcess,
    board: &Board,
    before: &[u64],
    fails: &[bool],
    timeout: Duration,
) -> Result<RolloutReport, RolloutError> {
    let hub_before: Option<ProcSample> = procstat::sample(hub.pid).ok();
    let mut body = deployment;
    if let Some(obj) = body.as_object_mut() {
        obj.insert("rollout".into(), policy.clone());
    }
    let t0 = Instant::now();
    let outcome: ApplyOutcome = hub
        .api
        .call(Method::PUT, "/v1/deployments", Some(&body))
        .await?;
    let apply_call = t0.elapsed();
    if !outcome.rollout_started {
        return Err(RolloutError::NotStarted {
            deployment: outcome.name,
            policy: policy.clone(),
        });
    }
    let path = format!("/v1/rollouts/{}", outcome.name);
    let mut settled_after = None;
    let mut view: Option<RolloutView> = None;
    // Phase 1: until the driver stops targeting (paused, completed, aborted).
    while t0.elapsed() < timeout {
        let v: RolloutView = hub.api.get(&path).await?;
        let done = stopped(&v.phase);
        view = Some(v);
        if done {
            settled_after = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Phase 2: the devices already targeted finish their trials, so the
    // counts below are final for this pause.
    if settled_after.is_some() {
        while t0.elapsed() < timeout {
            let v: RolloutView = hub.api.get(&path).await?;
            let pending = v.tally.pending;
            view = Some(v);
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut reached = 0;
    let mut reached_failing = 0;
    let mut rolled_back = 0;
    for (i, slot) in board.slots.iter().enumerate() {
        if slot.applied_generation.load(Ordering::Relaxed) > before[i] {
            reached += 1;
            if fails[i] {
                reached_failing += 1;
            }
        }
        if slot.rollbacks.load(Ordering::Relaxed) > 0 {
            rolled_back += 1;
        }
    }
    let hub_after = procstat::sample(hub.pid).ok();
    Ok(RolloutReport {
        policy: policy.clone(),
        failing_devices,
        apply_call,
        first_targeted: outcome.updated.len(),
        settled_after,
        view,
        reached,
        reached_failing,
        rolled_back,
        hub_cpu: match (hub_after, hub_before) {
            (Some(a), Some(b)) => a.cpu.saturating_sub(b.cpu),
            _ => Duration::ZERO,
        },
    })
}

impl fmt::Display for RolloutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rollout: [rollout] {}; {} devices fail every new release",
            self.policy, self.failing_devices
        )?;
        writeln!(
            f,
            "apply call {}, {} device(s) targeted at once; rollout stopped running after {}",
            secs(self.apply_call),
            self.first_targeted,
            self.settled_after
                .map(secs)
                .unwrap_or_else(|| "(still running at the timeout)".into())
        )?;
        if let Some(v) = &self.view {
            writeln!(f, "state: {}", v.state)?;
            let t = &v.tally;
            writeln!(
                f,
                "devices: {} matched, {} targeted ({} committed, {} failed, {} pending, {} skipped), {} not targeted",
                v.matched,
                t.targeted(),
                t.committed,
                t.failed,
                t.pending,
                t.skipped,
                t.untargeted
            )?;
            writeln!(f)?;
            writeln!(
                f,
                "| wave | reach | targeted | committed | failed | pending |"
            )?;
            writeln!(f, "|---|---|---|---|---|---|")?;
            for w in &v.waves {
                writeln!(
                    f,
                    "| {} | {} | {} | {} | {} | {} |",
                    if w.wave == 0 {
                        "canary".to_string()
                    } else {
                        w.wave.to_string()
                    },
                    w.reach,
                    w.targeted,
                    w.committed,
                    w.failed,
                    w.pending
                )?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "device side: {} device(s) ever ran the new release ({} of them failing), {} rolled it back; hub CPU {}",
            self.reached,
            self.reached_failing,
            self.rolled_back,
            secs(self.hub_cpu)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failing_share_is_spread_evenly_and_rounds_to_whole_devices() {
        let count = |n: usize, share: f64| (0..n).filter(|i| failing(*i, n, share)).count();
        assert_eq!(count(1000, 0.03), 30);
        assert_eq!(count(1000, 0.0), 0);
        assert_eq!(count(1000, 1.0), 1000);
        assert_eq!(count(10, 0.25), 2);
        // Evenly: every block of 100 holds 3.
        for block in 0..10 {
            let n = (block * 100..(block + 1) * 100)
                .filter(|i| failing(*i, 1000, 0.03))
                .count();
            assert_eq!(n, 3, "block {block}");
        }
    }
}
