//! Property tests of the scheduler: a model fleet where devices commit, fail,
//! roll back, report or fall silent, devices join and leave, time passes and the
//! operator pauses, resumes and aborts, in any order. Every decision is
//! checked against rules recomputed here from the policy as written (not
//! through the scheduler's own helpers), then carried out on the model.

use super::*;
use outpost_protocol::DeviceId;
use proptest::prelude::*;
use std::collections::BTreeSet;

#[derive(Debug, Clone)]
enum Report {
    Commit,
    Fail,
    RollBack,
    /// A status that says nothing about the rollout: resets the silence.
    Seen,
}

#[derive(Debug, Clone)]
enum Op {
    Pause,
    Resume,
    Abort,
}

#[derive(Debug, Clone)]
struct Step {
    advance: u64,
    reports: Vec<(usize, Report)>,
    op: Option<Op>,
    join: bool,
    /// A device leaves the fleet (removed, or relabelled out of the selector).
    leave: Option<usize>,
}

fn arb_report() -> impl Strategy<Value = Report> {
    prop_oneof![
        4 => Just(Report::Commit),
        1 => Just(Report::Fail),
        1 => Just(Report::RollBack),
        2 => Just(Report::Seen),
    ]
}

fn arb_step() -> impl Strategy<Value = Step> {
    (
        0u64..25,
        prop::collection::vec((0usize..64, arb_report()), 0..4),
        prop::option::weighted(
            0.1,
            prop_oneof![
                3 => Just(Op::Pause),
                4 => Just(Op::Resume),
                1 => Just(Op::Abort),
            ],
        ),
        prop::bool::weighted(0.05),
        prop::option::weighted(0.03, 0usize..64),
    )
        .prop_map(|(advance, reports, op, join, leave)| Step {
            advance,
            reports,
            op,
            join,
            leave,
        })
}

/// Valid policies by construction: a canary, maybe one absolute wave above
/// it, increasing percentages, then "100%". `max_failure_ratio` as whole
/// percent so the oracle compares integers.
fn arb_policy() -> impl Strategy<Value = (RolloutDef, u32)> {
    (
        0u64..4,
        prop::option::of(1u64..8),
        prop::collection::btree_set(1u32..100, 0..4),
        prop::sample::select(vec![0u32, 10, 34, 50, 100]),
        (2u64..60).prop_flat_map(|timeout| (Just(timeout), 1..timeout)),
    )
        .prop_map(|(canary, count, percents, pct, (timeout, grace))| {
            let mut waves: Vec<WaveSize> = count
                .map(|c| WaveSize::Count(canary + c))
                .into_iter()
                .collect();
            waves.extend(percents.into_iter().map(WaveSize::Percent));
            waves.push(WaveSize::Percent(100));
            let def = RolloutDef {
                canary,
                waves,
                max_failure_ratio: Ratio(f64::from(pct) / 100.0),
                wave_timeout_secs: timeout,
                offline_grace_secs: grace,
            };
            (def, pct)
        })
}

fn device(i: usize) -> DeviceProgress {
    DeviceProgress {
        id: format!("dev-{i}").parse::<DeviceId>().unwrap(),
        outcome: Outcome::NotTargeted,
        last_seen_at: None,
    }
}

/// Devices targeted once wave `wave` is, recomputed from the policy as written.
fn reach(def: &RolloutDef, fleet: usize, wave: usize) -> usize {
    let n = fleet as u64;
    let mut most = def.canary.min(n);
    for w in def.waves.iter().take(wave) {
        let size = match *w {
            WaveSize::Percent(p) => (n * u64::from(p)).div_ceil(100),
            WaveSize::Count(c) => c.min(n),
        };
        most = most.max(size);
    }
    most as usize
}

/// What the oracle sees at `now`: (pending, failed, counted, skipped).
fn standings(
    devices: &[DeviceProgress],
    state: &RolloutState,
    def: &RolloutDef,
    now: u64,
) -> (usize, usize, usize, usize) {
    let (mut pending, mut failed, mut committed, mut skipped) = (0, 0, 0, 0);
    for d in devices {
        match d.outcome {
            Outcome::NotTargeted => {}
            Outcome::Committed => committed += 1,
            Outcome::Failed { .. } | Outcome::RolledBack { .. } => failed += 1,
            Outcome::Pending { targeted_at } => {
                let since = targeted_at.max(d.last_seen_at.unwrap_or(0));
                if targeted_at < state.waived_before || now - since >= def.offline_grace_secs {
                    skipped += 1;
                } else {
                    pending += 1;
                }
            }
        }
    }
    (pending, failed, pending + committed + failed, skipped)
}

fn targeted(devices: &[DeviceProgress]) -> BTreeSet<DeviceId> {
    devices
        .iter()
        .filter(|d| d.outcome != Outcome::NotTargeted)
        .map(|d| d.id.clone())
        .collect()
}

/// Checks one decision against the rules; returns what the hub would store.
fn check_and_carry(
    def: &RolloutDef,
    pct: u32,
    state: &RolloutState,
    devices: &mut [DeviceProgress],
    action: &Action,
    now: u64,
) -> Result<RolloutState, TestCaseError> {
    let fleet: BTreeSet<DeviceId> = devices.iter().map(|d| d.id.clone()).collect();
    let before = targeted(devices);
    let (pending, failed, counted, _) = standings(devices, state, def, now);
    let exceeded = failed > state.accepted_failures && failed * 100 > pct as usize * counted;
    let running = state.phase == Phase::Running;
    if !running {
        prop_assert_eq!(action, &Action::Wait { recheck_at: None });
    }
    match action {
        Action::Target {
            wave,
            devices: picked,
        } => {
            prop_assert!(running);
            prop_assert!(!picked.is_empty());
            prop_assert!(!exceeded, "targeted with {failed} of {counted} failed");
            prop_assert_eq!(pending, 0, "targeted while a wave is pending");
            prop_assert!(*wave <= def.waves.len());
            prop_assert!(*wave >= state.wave.unwrap_or(0), "went back a wave");
            let unique: BTreeSet<&DeviceId> = picked.iter().collect();
            prop_assert_eq!(unique.len(), picked.len());
            for id in picked {
                prop_assert!(fleet.contains(id), "{id} is not in the fleet");
                prop_assert!(!before.contains(id), "{id} targeted twice");
            }
            prop_assert!(
                before.len() + picked.len() <= reach(def, fleet.len(), *wave),
                "wave {wave} exceeded: {} + {} > {}",
                before.len(),
                picked.len(),
                reach(def, fleet.len(), *wave)
            );
        }
        Action::Pause {
            reason: PauseReason::FailureRatio { .. },
        } => prop_assert!(exceeded),
        Action::Pause {
            reason: PauseReason::WaveTimeout { .. },
        } => {
            prop_assert!(pending > 0);
            prop_assert!(now >= state.wave_started_at + def.wave_timeout_secs);
        }
        Action::Pause {
            reason: PauseReason::Operator,
        } => prop_assert!(false, "the scheduler never pauses as the operator"),
        Action::Complete => {
            prop_assert!(running);
            prop_assert_eq!(pending, 0);
            prop_assert_eq!(&before, &fleet, "completed with untargeted devices");
        }
        Action::Wait { recheck_at } => {
            if let Some(t) = recheck_at {
                prop_assert!(*t > now);
                prop_assert!(pending > 0);
            }
        }
    }
    // Completion, the other way round: nothing left to do and nothing wrong
    // must complete.
    if running && !exceeded && pending == 0 && before == fleet {
        prop_assert_eq!(action, &Action::Complete);
    }
    if running && !exceeded && pending == 0 && before != fleet {
        prop_assert!(matches!(action, Action::Target { .. }), "{action:?}");
    }
    if let Action::Target {
        devices: picked, ..
    } = action
    {
        for d in devices.iter_mut() {
            if picked.contains(&d.id) {
                d.outcome = Outcome::Pending { targeted_at: now };
            }
        }
    }
    let after = targeted(devices);
    prop_assert!(before.is_subset(&after), "the targeted set shrank");
    prop_assert!(after.is_subset(&fleet));
    Ok(state.after(action, now))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_scheduler_keeps_every_rule_whatever_happens(
        (def, pct) in arb_policy(),
        fleet_size in 0usize..30,
        steps in prop::collection::vec(arb_step(), 0..60),
    ) {
        let policy = def.policy().unwrap();
        let mut devices: Vec<DeviceProgress> = (0..fleet_size).map(device).collect();
        let mut state = RolloutState::new("prop@1", 0);
        let mut now = 1_000u64;
        let mut joined = fleet_size;
        for step in &steps {
            now += step.advance;
            // A device matched after the rollout ended is the next rollout's
            // (the one ended is never reopened).
            let ended = matches!(state.phase, Phase::Aborted | Phase::Completed);
            if step.join && !ended {
                devices.push(device(joined));
                joined += 1;
            }
            if let Some(i) = step.leave {
                if !devices.is_empty() {
                    devices.remove(i % devices.len());
                }
            }
            let out: Vec<usize> = (0..devices.len())
                .filter(|&i| devices[i].outcome != Outcome::NotTargeted)
                .collect();
            for (pick, report) in &step.reports {
                let Some(&i) = out.get(pick % out.len().max(1)) else { continue };
                let d = &mut devices[i];
                let is_pending = matches!(d.outcome, Outcome::Pending { .. });
                match report {
                    Report::Seen => d.last_seen_at = Some(now),
                    Report::Commit if is_pending => d.outcome = Outcome::Committed,
                    Report::Fail if is_pending => {
                        d.outcome = Outcome::Failed { reason: "exit 1".into() }
                    }
                    Report::RollBack if is_pending => {
                        d.outcome = Outcome::RolledBack { reason: "unhealthy".into() }
                    }
                    _ => {}
                }
            }
            let result = match step.op {
                None => Ok(state.clone()),
                Some(Op::Pause) => state.pause(),
                Some(Op::Resume) => state.resume(&devices, now),
                Some(Op::Abort) => state.abort(),
            };
            state = match result {
                Ok(next) => next,
                Err(e) => {
                    // Refused only for a rollout that has ended.
                    prop_assert!(ended, "{e}");
                    state
                }
            };
            let action = next_action(&state, &devices, &policy, now);
            state = check_and_carry(&def, pct, &state, &mut devices, &action, now)?;
        }

        // Then every device commits promptly and the operator resumes any
        // pause: unless aborted, the rollout completes, within one pass per
        // wave plus one per device joining late.
        let mut passes = 0;
        while !matches!(state.phase, Phase::Aborted | Phase::Completed) {
            passes += 1;
            prop_assert!(passes <= 2 * (def.waves.len() + 2) + devices.len(), "no progress");
            now += 1;
            for d in devices.iter_mut() {
                if matches!(d.outcome, Outcome::Pending { .. }) {
                    d.outcome = Outcome::Committed;
                }
            }
            state = state.resume(&devices, now).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let action = next_action(&state, &devices, &policy, now);
            state = check_and_carry(&def, pct, &state, &mut devices, &action, now)?;
        }
        if state.phase == Phase::Completed {
            prop_assert!(devices.iter().all(|d| d.outcome != Outcome::NotTargeted));
        }
    }

    #[test]
    fn cumulative_sizes_never_decrease_and_end_at_the_fleet(
        (def, _) in arb_policy(),
        fleet_size in 0usize..5_000,
    ) {
        let policy = def.policy().unwrap();
        let reach_all = policy.cumulative(fleet_size);
        prop_assert_eq!(reach_all.len(), def.waves.len() + 1);
        for (w, pair) in reach_all.windows(2).enumerate() {
            prop_assert!(pair[0] <= pair[1], "wave {} shrinks", w + 1);
        }
        prop_assert_eq!(reach_all.last().copied(), Some(fleet_size));
        for (w, &r) in reach_all.iter().enumerate() {
            prop_assert_eq!(r, reach(&def, fleet_size, w));
        }
    }
}
