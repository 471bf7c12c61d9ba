//! Table tests of the release decisions (`route`, `judge`, `apply`).

use super::*;
use outpost_protocol::{AppSpec, KeyId};

fn manifest(generation: u64) -> Manifest {
    let image = format!("reg/web@sha256:{}", "11".repeat(32))
        .parse()
        .unwrap();
    Manifest {
        device_id: "pi-1".parse().unwrap(),
        epoch: 1,
        generation,
        issued_at: 0,
        key_id: KeyId("k".into()),
        apps: vec![AppSpec::new("web", image)],
        release: ReleasePolicy::default(),
        expires_at: outpost_protocol::NEVER,
    }
}

fn committed(generation: u64) -> Option<Committed> {
    Some(Committed {
        id: (1, generation),
        manifest: manifest(generation),
    })
}

fn failure(generation: u64) -> Option<Failure> {
    Some(Failure {
        id: (1, generation),
        app: "web".into(),
        reason: "exited with code 1".into(),
    })
}

/// (case, record, trial running in this process, gate, run, transition, phase)
type RouteCase = (
    &'static str,
    Record,
    bool,
    Gate,
    Run,
    Option<Transition>,
    ReleasePhase,
);
/// (case, apps, now, judgement)
type JudgeCase = (&'static str, Vec<(&'static str, AppFacts)>, u64, Judgement);

#[test]
fn route_table() {
    let rolled_back = ReleasePhase::RolledBack {
        to: (1, 1),
        app: "web".into(),
        reason: "exited with code 1".into(),
    };
    let interrupted = ReleasePhase::RolledBack {
        to: (1, 1),
        app: WHOLE_RELEASE.into(),
        reason: INTERRUPTED.into(),
    };
    let locked = Gate::Locked { app: "db".into() };
    // (case, record, trial running in this process, gate) -> (run, transition?, phase)
    let cases: Vec<RouteCase> = vec![
        (
            "committed target runs",
            Record {
                committed: committed(2),
                ..Record::default()
            },
            false,
            Gate::Open,
            Run::Target,
            None,
            ReleasePhase::Committed,
        ),
        (
            "a new release with its images starts its trial",
            Record {
                committed: committed(1),
                ..Record::default()
            },
            false,
            Gate::Open,
            Run::Target,
            Some(Transition::StartTrial),
            ReleasePhase::Trial,
        ),
        (
            "missing images: the committed release keeps serving",
            Record {
                committed: committed(1),
                ..Record::default()
            },
            false,
            Gate::Downloading,
            Run::Committed,
            None,
            ReleasePhase::Downloading,
        ),
        (
            "a held lock defers the switch",
            Record {
                committed: committed(1),
                ..Record::default()
            },
            false,
            locked.clone(),
            Run::Committed,
            None,
            ReleasePhase::WaitingForLock { app: "db".into() },
        ),
        (
            "a running trial goes on",
            Record {
                committed: committed(1),
                trial: Some((1, 2)),
                ..Record::default()
            },
            true,
            Gate::Open,
            Run::Target,
            None,
            ReleasePhase::Trial,
        ),
        (
            "a trial found at start was interrupted: roll back",
            Record {
                committed: committed(1),
                trial: Some((1, 2)),
                ..Record::default()
            },
            false,
            Gate::Open,
            Run::Committed,
            Some(Transition::RollBack {
                app: WHOLE_RELEASE.into(),
                reason: INTERRUPTED.into(),
            }),
            interrupted,
        ),
        (
            "an interrupted first release has nothing to go back to: retried",
            Record {
                trial: Some((1, 2)),
                ..Record::default()
            },
            false,
            Gate::Open,
            Run::Target,
            Some(Transition::StartTrial),
            ReleasePhase::Trial,
        ),
        (
            "a failed release is not retried",
            Record {
                committed: committed(1),
                failed: failure(2),
                ..Record::default()
            },
            false,
            Gate::Open,
            Run::Committed,
            None,
            rolled_back,
        ),
        (
            "a failed first release stays as it is",
            Record {
                failed: failure(2),
                ..Record::default()
            },
            false,
            Gate::Open,
            Run::Target,
            None,
            ReleasePhase::Failed {
                app: "web".into(),
                reason: "exited with code 1".into(),
            },
        ),
        (
            "a newer release after a failed one is tried",
            Record {
                committed: committed(1),
                failed: failure(2),
                ..Record::default()
            },
            false,
            Gate::Open,
            Run::Target,
            Some(Transition::StartTrial),
            ReleasePhase::Trial,
        ),
        (
            "a newer release supersedes a running trial without waiting",
            Record {
                committed: committed(1),
                trial: Some((1, 2)),
                ..Record::default()
            },
            true,
            Gate::Downloading,
            Run::Target,
            Some(Transition::StartTrial),
            ReleasePhase::Trial,
        ),
    ];
    for (case, record, running, gate, run, transition, phase) in cases {
        let target = if case.starts_with("a newer") {
            (1, 3)
        } else {
            (1, 2)
        };
        let target = if case == "committed target runs" {
            (1, 2)
        } else {
            target
        };
        let got = route(&record, target, running, &gate);
        assert_eq!(
            (got.run, got.transition, got.phase),
            (run, transition, phase),
            "{case}"
        );
    }
}

fn up(since: u64) -> AppFacts {
    AppFacts {
        up_since: Some(since),
        ..AppFacts::default()
    }
}

#[test]
fn judge_table() {
    let policy = ReleasePolicy {
        stable_secs: 10,
        trial_deadline_secs: 60,
    };
    let ready = |up: u64, ready: Option<u64>| AppFacts {
        up_since: Some(up),
        checked: true,
        ready_since: ready,
        ..AppFacts::default()
    };
    let failing = AppFacts {
        failure: Some("exited with code 1".into()),
        ..up(0)
    };
    let never = AppFacts {
        checked: true,
        waiting: Some("health: connection refused".into()),
        ..up(0)
    };
    // (case, apps, now) -> judgement; the trial started at 0.
    let cases: Vec<JudgeCase> = vec![
        ("up 10 s: stable", vec![("web", up(0))], 10_000, Judgement::Stable),
        ("up 9.9 s: pending", vec![("web", up(100))], 10_000, Judgement::Pending),
        (
            "checked apps must also be ready for the whole time",
            vec![("web", ready(0, Some(5_000)))],
            10_000,
            Judgement::Pending,
        ),
        ("ready 10 s: stable", vec![("web", ready(0, Some(0)))], 10_000, Judgement::Stable),
        (
            "a failure ends the trial at once",
            vec![("a", up(0)), ("web", failing)],
            1_000,
            Judgement::Failed { app: "web".into(), reason: "exited with code 1".into() },
        ),
        (
            "never ready by the deadline",
            vec![("a", up(0)), ("web", never.clone())],
            60_000,
            Judgement::Failed {
                app: "web".into(),
                reason: "not stable within the 60 s trial deadline: health: connection refused".into(),
            },
        ),
        ("never ready before the deadline: pending", vec![("web", never)], 59_999, Judgement::Pending),
        (
            "never up by the deadline",
            vec![("web", AppFacts::default())],
            60_000,
            Judgement::Failed {
                app: "web".into(),
                reason: "not stable within the 60 s trial deadline: it never ran".into(),
            },
        ),
        (
            "up, but restarted late: the deadline still counts from the trial's start",
            vec![("web", up(55_000))],
            60_000,
            Judgement::Failed {
                app: "web".into(),
                reason: "not stable within the 60 s trial deadline: it did not stay up for 10 s in a row".into(),
            },
        ),
        ("no apps: stable at once", vec![], 0, Judgement::Stable),
    ];
    for (case, apps, now, want) in cases {
        let apps: BTreeMap<String, AppFacts> =
            apps.into_iter().map(|(a, f)| (a.to_string(), f)).collect();
        assert_eq!(judge(&apps, &policy, 0, now), want, "{case}");
    }
}

#[test]
fn apply_moves_the_record_and_it_survives_json() {
    let r = Record {
        committed: committed(1),
        ..Record::default()
    };
    let trial = apply(&r, &Transition::StartTrial, &manifest(2));
    assert_eq!(trial.trial, Some((1, 2)));
    let done = apply(&trial, &Transition::Commit, &manifest(2));
    assert_eq!(done.committed, committed(2));
    assert_eq!((done.trial, done.failed.clone()), (None, None));
    let back = apply(
        &trial,
        &Transition::RollBack {
            app: "web".into(),
            reason: "exited with code 1".into(),
        },
        &manifest(2),
    );
    assert_eq!(back.committed, committed(1), "the committed release stays");
    assert_eq!((back.trial, back.failed.clone()), (None, failure(2)));
    let json = serde_json::to_vec(&back).unwrap();
    assert_eq!(serde_json::from_slice::<Record>(&json).unwrap(), back);
    // A record written before a field existed still reads.
    assert_eq!(
        serde_json::from_slice::<Record>(b"{}").unwrap(),
        Record::default()
    );
}

/// A renewal (same apps and policy, newer generation, the hub re-issuing
/// before expiry) commits at once; anything else, or a renewal while a trial
/// runs, goes through `route`.
#[test]
fn a_renewed_manifest_commits_without_a_trial() {
    let record = Record {
        committed: committed(3),
        ..Record::default()
    };
    assert!(is_renewal(&record, &manifest(4)));
    assert_eq!(renewed().transition, Some(Transition::Commit));
    assert!(!is_renewal(&record, &manifest(3)), "not newer");
    let mut changed = manifest(4);
    changed.apps[0].env.insert("A".into(), "1".into());
    assert!(!is_renewal(&record, &changed), "other apps");
    let mut policy = manifest(4);
    policy.release.stable_secs += 1;
    assert!(!is_renewal(&record, &policy), "other release policy");
    let in_trial = Record {
        trial: Some((1, 4)),
        ..record.clone()
    };
    assert!(!is_renewal(&in_trial, &manifest(5)));
    assert!(
        !is_renewal(&Record::default(), &manifest(1)),
        "nothing committed"
    );
}
