//! Table tests of the scheduler and the rollout's transitions: one scenario
//! each, driven through `next_action` and `RolloutState::after` the way the
//! hub will drive them.

use super::*;
use outpost_protocol::DeviceId;

fn id(s: &str) -> DeviceId {
    s.parse().unwrap()
}

fn fleet(n: usize) -> Vec<DeviceProgress> {
    (0..n)
        .map(|i| DeviceProgress {
            id: id(&format!("d{i:03}")),
            outcome: Outcome::NotTargeted,
            last_seen_at: None,
        })
        .collect()
}

fn policy(toml_text: &str) -> RolloutPolicy {
    toml::from_str::<RolloutDef>(toml_text)
        .unwrap()
        .policy()
        .unwrap()
}

/// What the hub will do with an action: targeted devices become pending at
/// `now`, and the state records the step.
fn carry(
    state: &RolloutState,
    devices: &mut [DeviceProgress],
    action: &Action,
    now: u64,
) -> RolloutState {
    if let Action::Target {
        devices: picked, ..
    } = action
    {
        for d in devices.iter_mut() {
            if picked.contains(&d.id) {
                assert_eq!(d.outcome, Outcome::NotTargeted, "{} targeted twice", d.id);
                d.outcome = Outcome::Pending { targeted_at: now };
            }
        }
    }
    state.after(action, now)
}

fn pending(devices: &[DeviceProgress]) -> Vec<usize> {
    (0..devices.len())
        .filter(|&i| matches!(devices[i].outcome, Outcome::Pending { .. }))
        .collect()
}

fn set_all_pending(devices: &mut [DeviceProgress], outcome: Outcome) {
    for i in pending(devices) {
        devices[i].outcome = outcome.clone();
    }
}

fn targeted_count(devices: &[DeviceProgress]) -> usize {
    devices
        .iter()
        .filter(|d| d.outcome != Outcome::NotTargeted)
        .count()
}

#[test]
fn a_failed_canary_pauses_before_any_further_device() {
    let p = policy("canary = 1\nwaves = [\"50%\", \"100%\"]\nmax_failure_ratio = 0.05");
    let mut devices = fleet(10);
    let mut s = RolloutState::new("sensors@2", 100);
    let a = next_action(&s, &devices, &p, 100);
    assert!(
        matches!(&a, Action::Target { wave: 0, devices } if devices.len() == 1),
        "{a:?}"
    );
    s = carry(&s, &mut devices, &a, 100);
    set_all_pending(
        &mut devices,
        Outcome::RolledBack {
            reason: "health check failed".into(),
        },
    );
    let a = next_action(&s, &devices, &p, 130);
    let reason = PauseReason::FailureRatio {
        failed: 1,
        counted: 1,
        max_failure_ppm: 50_000,
    };
    assert_eq!(
        a,
        Action::Pause {
            reason: reason.clone()
        }
    );
    s = carry(&s, &mut devices, &a, 130);
    assert_eq!(s.phase, Phase::Paused { reason });
    // Paused: nothing more is targeted, however long it waits.
    for now in [131, 10_000, 1_000_000] {
        assert_eq!(
            next_action(&s, &devices, &p, now),
            Action::Wait { recheck_at: None }
        );
    }
    assert_eq!(targeted_count(&devices), 1);
    assert!(
        s.phase
            .to_string()
            .contains("1 of 1 updated devices failed"),
        "{}",
        s.phase
    );
}

#[test]
fn waves_are_targeted_in_order_and_the_rollout_completes_when_all_commit() {
    let p = policy("canary = 1\nwaves = [\"10%\", \"50%\", \"100%\"]\noffline_grace_secs = 60");
    let mut devices = fleet(20);
    let mut s = RolloutState::new("sensors@3", 0);
    let mut now = 1000;
    let mut targets = Vec::new();
    loop {
        let a = next_action(&s, &devices, &p, now);
        match &a {
            Action::Target { wave, devices: d } => targets.push((*wave, d.len())),
            Action::Complete => break,
            other => panic!("unexpected {other:?} after {targets:?}"),
        }
        s = carry(&s, &mut devices, &a, now);
        // While the wave is out, the scheduler waits, and says until when.
        now += 10;
        assert_eq!(
            next_action(&s, &devices, &p, now),
            Action::Wait {
                recheck_at: Some(now - 10 + 60)
            }
        );
        set_all_pending(&mut devices, Outcome::Committed);
        now += 10;
    }
    // 20 devices: canary 1, 10% = 2, 50% = 10, 100% = 20 (cumulative).
    assert_eq!(targets, vec![(0, 1), (1, 1), (2, 8), (3, 10)]);
    s = carry(&s, &mut devices, &Action::Complete, now);
    assert_eq!(s.phase, Phase::Completed);
    assert_eq!(s.wave, Some(3));
    assert_eq!(
        next_action(&s, &devices, &p, now),
        Action::Wait { recheck_at: None }
    );
}

#[test]
fn without_a_rollout_table_every_device_is_targeted_at_once() {
    let p = RolloutPolicy::default();
    let mut devices = fleet(5);
    let s = RolloutState::new("plain@1", 0);
    let a = next_action(&s, &devices, &p, 0);
    assert!(
        matches!(&a, Action::Target { wave: 1, devices } if devices.len() == 5),
        "{a:?}"
    );
    let s = carry(&s, &mut devices, &a, 0);
    set_all_pending(&mut devices, Outcome::Committed);
    assert_eq!(next_action(&s, &devices, &p, 1), Action::Complete);
    // A deployment that matches nothing completes at once.
    assert_eq!(next_action(&s, &[], &p, 1), Action::Complete);
}

#[test]
fn an_offline_device_is_skipped_after_the_grace_and_does_not_block() {
    let p = policy("waves = [\"50%\", \"100%\"]\noffline_grace_secs = 60\nwave_timeout_secs = 600");
    let mut devices = fleet(4);
    let s = RolloutState::new("r", 0);
    let a = next_action(&s, &devices, &p, 1000);
    let s = carry(&s, &mut devices, &a, 1000);
    let out = pending(&devices);
    assert_eq!(out.len(), 2);
    devices[out[0]].outcome = Outcome::Committed;
    // The other never reports: waited for until 60 s after it was targeted.
    assert_eq!(
        next_action(&s, &devices, &p, 1059),
        Action::Wait {
            recheck_at: Some(1060)
        }
    );
    // A status (of any kind) restarts its grace.
    devices[out[1]].last_seen_at = Some(1050);
    assert_eq!(
        next_action(&s, &devices, &p, 1060),
        Action::Wait {
            recheck_at: Some(1110)
        }
    );
    devices[out[1]].last_seen_at = None;
    assert_eq!(
        devices[out[1]].standing(&s, &p, 1060),
        Standing::Skipped,
        "silent for the whole grace"
    );
    let a = next_action(&s, &devices, &p, 1060);
    assert!(
        matches!(&a, Action::Target { wave: 2, devices } if devices.len() == 2),
        "{a:?}"
    );
    let s = carry(&s, &mut devices, &a, 1060);
    for i in pending(&devices) {
        if i != out[1] {
            devices[i].outcome = Outcome::Committed;
        }
    }
    // The skipped device does not hold back completion.
    assert_eq!(next_action(&s, &devices, &p, 1061), Action::Complete);
    let t = Tally::of(&devices, &s, &p, 1061);
    assert_eq!((t.committed, t.skipped, t.pending), (3, 1, 0));
    // Skipping is re-derived: once it reports, it counts as what it reports.
    devices[out[1]].outcome = Outcome::Committed;
    assert_eq!(Tally::of(&devices, &s, &p, 1062).committed, 4);
}

#[test]
fn skipped_devices_are_left_out_of_the_failure_ratio() {
    let p = policy("waves = [\"50%\", \"100%\"]\nmax_failure_ratio = 0.1\noffline_grace_secs = 60");
    let mut devices = fleet(20);
    let s = RolloutState::new("r", 0);
    let a = next_action(&s, &devices, &p, 0);
    let s = carry(&s, &mut devices, &a, 0);
    let out = pending(&devices);
    assert_eq!(out.len(), 10);
    devices[out[0]].outcome = Outcome::Committed;
    devices[out[1]].outcome = Outcome::Failed {
        reason: "image pull".into(),
    };
    // Eight silent devices: skipped at 60 s. 1 failed of 2 counted is over
    // 10%; had the eight counted, 1 of 10 would not be.
    assert_eq!(
        next_action(&s, &devices, &p, 60),
        Action::Pause {
            reason: PauseReason::FailureRatio {
                failed: 1,
                counted: 2,
                max_failure_ppm: 100_000
            }
        }
    );
}

/// A device that keeps reporting but never commits: the wave times out.
fn timed_out_wave() -> (RolloutPolicy, Vec<DeviceProgress>, RolloutState, usize) {
    let p = policy("waves = [\"50%\", \"100%\"]\nwave_timeout_secs = 300\noffline_grace_secs = 60");
    let mut devices = fleet(4);
    let s = RolloutState::new("r", 0);
    let a = next_action(&s, &devices, &p, 1000);
    let mut s = carry(&s, &mut devices, &a, 1000);
    let out = pending(&devices);
    devices[out[0]].outcome = Outcome::Committed;
    let stuck = out[1];
    for now in (1030..1300).step_by(30) {
        devices[stuck].last_seen_at = Some(now);
        let a = next_action(&s, &devices, &p, now);
        assert!(
            matches!(
                a,
                Action::Wait {
                    recheck_at: Some(_)
                }
            ),
            "{now}: {a:?}"
        );
        s = carry(&s, &mut devices, &a, now);
    }
    devices[stuck].last_seen_at = Some(1290);
    let a = next_action(&s, &devices, &p, 1300);
    let reason = PauseReason::WaveTimeout {
        wave: 1,
        pending: 1,
        timeout_secs: 300,
    };
    assert_eq!(
        a,
        Action::Pause {
            reason: reason.clone()
        }
    );
    assert_eq!(
        reason.to_string(),
        "wave 1 timed out after 300 s with 1 device(s) pending"
    );
    let s = carry(&s, &mut devices, &a, 1300);
    assert_eq!(s.phase, Phase::Paused { reason });
    (p, devices, s, stuck)
}

#[test]
fn a_wave_that_does_not_finish_in_time_pauses_with_its_reason() {
    let (p, devices, s, _) = timed_out_wave();
    assert_eq!(
        next_action(&s, &devices, &p, 5000),
        Action::Wait { recheck_at: None }
    );
}

#[test]
fn resuming_a_timed_out_wave_goes_on_without_its_stuck_devices() {
    let (p, mut devices, s, stuck) = timed_out_wave();
    let s = s.resume(&devices, 1400).unwrap();
    assert_eq!(s.phase, Phase::Running);
    assert_eq!(s.wave_started_at, 1400);
    assert_eq!(devices[stuck].standing(&s, &p, 1400), Standing::Skipped);
    let a = next_action(&s, &devices, &p, 1400);
    assert!(
        matches!(&a, Action::Target { wave: 2, devices } if devices.len() == 2),
        "{a:?}"
    );
    let s = carry(&s, &mut devices, &a, 1400);
    // The devices targeted at the resume itself are not waived.
    assert_eq!(Tally::of(&devices, &s, &p, 1400).pending, 2);
    set_all_pending(&mut devices, Outcome::Committed);
    assert_eq!(next_action(&s, &devices, &p, 1401), Action::Complete);
}

#[test]
fn resuming_accepts_the_known_failures_and_a_new_one_pauses_again() {
    let p = policy("canary = 2\nwaves = [4, \"100%\"]");
    let mut devices = fleet(10);
    let s = RolloutState::new("r", 0);
    let a = next_action(&s, &devices, &p, 0);
    let s = carry(&s, &mut devices, &a, 0);
    let canaries = pending(&devices);
    devices[canaries[0]].outcome = Outcome::Failed {
        reason: "exit 1".into(),
    };
    devices[canaries[1]].outcome = Outcome::Committed;
    let a = next_action(&s, &devices, &p, 10);
    assert!(matches!(a, Action::Pause { .. }), "{a:?}");
    let s = carry(&s, &mut devices, &a, 10);
    let s = s.resume(&devices, 20).unwrap();
    assert_eq!(s.accepted_failures, 1);
    let a = next_action(&s, &devices, &p, 20);
    assert!(
        matches!(&a, Action::Target { wave: 1, devices } if devices.len() == 2),
        "{a:?}"
    );
    let s = carry(&s, &mut devices, &a, 20);
    let wave1 = pending(&devices);
    devices[wave1[0]].outcome = Outcome::RolledBack {
        reason: "crash loop".into(),
    };
    assert_eq!(
        next_action(&s, &devices, &p, 30),
        Action::Pause {
            reason: PauseReason::FailureRatio {
                failed: 2,
                counted: 4,
                max_failure_ppm: 0
            }
        }
    );
}

#[test]
fn pause_resume_and_abort_follow_the_phase_table() {
    let timeout = PauseReason::WaveTimeout {
        wave: 1,
        pending: 1,
        timeout_secs: 60,
    };
    let paused = |reason: PauseReason| Phase::Paused { reason };
    type Op = fn(&RolloutState) -> Result<RolloutState, TransitionError>;
    let pause: Op = |s| s.pause();
    let resume: Op = |s| s.resume(&[], 500);
    let abort: Op = |s| s.abort();
    let cases: Vec<(Phase, &str, Op, Option<Phase>)> = vec![
        (
            Phase::Running,
            "pause",
            pause,
            Some(paused(PauseReason::Operator)),
        ),
        (Phase::Running, "resume", resume, Some(Phase::Running)),
        (Phase::Running, "abort", abort, Some(Phase::Aborted)),
        (
            paused(timeout.clone()),
            "pause",
            pause,
            Some(paused(timeout.clone())),
        ),
        (
            paused(timeout.clone()),
            "resume",
            resume,
            Some(Phase::Running),
        ),
        (
            paused(PauseReason::Operator),
            "abort",
            abort,
            Some(Phase::Aborted),
        ),
        (Phase::Aborted, "pause", pause, None),
        (Phase::Aborted, "resume", resume, None),
        (Phase::Aborted, "abort", abort, Some(Phase::Aborted)),
        (Phase::Completed, "pause", pause, None),
        (Phase::Completed, "resume", resume, None),
        (Phase::Completed, "abort", abort, None),
    ];
    for (phase, verb, op, want) in cases {
        let s = RolloutState {
            phase: phase.clone(),
            ..RolloutState::new("sensors@4", 0)
        };
        match (op(&s), want) {
            (Ok(next), Some(want)) => assert_eq!(next.phase, want, "{phase} {verb}"),
            (Err(e), None) => {
                assert_eq!(e.verb, verb);
                assert_eq!(
                    e.to_string(),
                    format!("rollout sensors@4 is {phase}; cannot {verb} it")
                );
            }
            (got, want) => panic!("{phase} {verb}: got {got:?}, want {want:?}"),
        }
    }
    // Only a running rollout targets.
    let devices = fleet(3);
    let p = RolloutPolicy::default();
    for phase in [
        paused(PauseReason::Operator),
        Phase::Aborted,
        Phase::Completed,
    ] {
        let s = RolloutState {
            phase,
            ..RolloutState::new("r", 0)
        };
        assert_eq!(
            next_action(&s, &devices, &p, 1),
            Action::Wait { recheck_at: None }
        );
        assert_eq!(s.after(&Action::Complete, 1), s);
    }
}

#[test]
fn devices_are_picked_in_a_fixed_order_seeded_by_the_rollout() {
    let p = policy("canary = 5");
    let devices = fleet(50);
    let s = RolloutState::new("sensors@7", 0);
    let a = next_action(&s, &devices, &p, 0);
    // The order the store lists devices in does not matter…
    let mut reversed = devices.clone();
    reversed.reverse();
    assert_eq!(next_action(&s, &reversed, &p, 0), a);
    // …nor a restart: the state as stored gives the same next devices.
    let mut devices = devices;
    let s = carry(&s, &mut devices, &a, 0);
    set_all_pending(&mut devices, Outcome::Committed);
    let stored = serde_json::to_string(&s).unwrap();
    let restored: RolloutState = serde_json::from_str(&stored).unwrap();
    assert_eq!(restored, s);
    assert_eq!(
        next_action(&restored, &devices, &p, 5),
        next_action(&s, &devices, &p, 5)
    );
    // Another rollout starts with other canaries (fixed by SHA-256, not luck).
    let other = next_action(&RolloutState::new("sensors@8", 0), &fleet(50), &p, 0);
    assert_ne!(other, a);
}

#[test]
fn devices_matched_mid_rollout_join_the_next_wave_and_repeats_count_once() {
    let p = RolloutPolicy::default();
    let mut devices = fleet(4);
    let s = RolloutState::new("r", 0);
    let a = next_action(&s, &devices, &p, 0);
    let s = carry(&s, &mut devices, &a, 0);
    set_all_pending(&mut devices, Outcome::Committed);
    devices.extend(fleet(6).into_iter().skip(4));
    // The same device listed twice is one device.
    devices.push(devices[5].clone());
    match next_action(&s, &devices, &p, 10) {
        Action::Target { wave: 1, devices } => {
            let mut d = devices;
            d.sort();
            assert_eq!(d, vec![id("d004"), id("d005")]);
        }
        other => panic!("{other:?}"),
    }
}
