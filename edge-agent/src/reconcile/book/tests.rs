//! Tables for each bookkeeping decision (properties of their sequences are in
//! `props.rs`).

use super::*;
use crate::driver::{container_name, DriverError};
use outpost_oci::OciError;
use outpost_protocol::{AppSpec, HealthCheck, ImageRef, Probe};

pub(super) fn spec(app: &str, restart: RestartPolicy) -> AppSpec {
    let image: ImageRef = format!("reg/{app}@sha256:{}", hex::encode([7u8; 32]))
        .parse()
        .unwrap();
    let mut s = AppSpec::new(app, image);
    s.restart = restart;
    s
}

pub(super) fn desired(specs: &[AppSpec]) -> BTreeMap<String, DesiredApp> {
    specs
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                DesiredApp {
                    spec: s.clone(),
                    container: container_name(s),
                },
            )
        })
        .collect()
}

fn one(app: &str) -> BTreeMap<String, DesiredApp> {
    desired(&[spec(app, RestartPolicy::Always)])
}

fn containers_of(d: &BTreeMap<String, DesiredApp>, status: ContainerStatus) -> Containers {
    d.values()
        .map(|a| {
            (
                a.container.clone(),
                ObservedContainer {
                    name: a.container.clone(),
                    app: a.spec.name.clone(),
                    status,
                },
            )
        })
        .collect()
}

fn pull_failure(e: OciError) -> DriverError {
    DriverError::new("pull", "reg/web", e)
}

pub(super) fn unreachable() -> DriverError {
    pull_failure(OciError::Registry {
        reference: "reg/web".into(),
        detail: "connection refused".into(),
    })
}

pub(super) const POLICY: Policy = Policy {
    base_backoff_ms: 1_000,
    max_backoff_ms: 60_000,
};

#[test]
fn observing_notices_exits_adopts_and_resets_the_streak_after_a_stable_run() {
    use ContainerStatus::*;
    let d = one("web");
    let name = d["web"].container.clone();
    let running_book = |consecutive, started| AppBook {
        consecutive,
        started_at_ms: started,
        ..AppBook::default()
    };
    // (what the ledger knew, what the runtime shows (None: gone), now)
    //   -> (exit code noticed (None: no exit), book after, pid remembered)
    type Case = (
        Option<u32>,
        AppBook,
        Option<ContainerStatus>,
        u64,
        Option<Option<i32>>,
        AppBook,
        Option<u32>,
    );
    let cases: &[Case] = &[
        // Adopted after an agent restart: stability counts from now.
        (
            None,
            AppBook::default(),
            Some(Running { pid: 5 }),
            700,
            None,
            running_book(0, Some(700)),
            Some(5),
        ),
        // Still running under the same pid: nothing happens.
        (
            Some(5),
            running_book(2, Some(100)),
            Some(Running { pid: 5 }),
            100 + STABLE_AFTER_MS - 1,
            None,
            running_book(2, Some(100)),
            Some(5),
        ),
        // Stable for STABLE_AFTER_MS: the streak resets, restarts stay.
        (
            Some(5),
            AppBook {
                restarts: 4,
                ..running_book(2, Some(100))
            },
            Some(Running { pid: 5 }),
            100 + STABLE_AFTER_MS,
            None,
            AppBook {
                restarts: 4,
                ..running_book(0, Some(100))
            },
            Some(5),
        ),
        // Exited with a code: noticed once, exit time recorded.
        (
            Some(5),
            running_book(1, Some(100)),
            Some(Exited { code: Some(137) }),
            900,
            Some(Some(137)),
            AppBook {
                consecutive: 1,
                exited_at_ms: Some(900),
                ..AppBook::default()
            },
            None,
        ),
        // Already known exited: the first exit time is kept.
        (
            None,
            AppBook {
                exited_at_ms: Some(50),
                ..AppBook::default()
            },
            Some(Exited { code: Some(1) }),
            900,
            None,
            AppBook {
                exited_at_ms: Some(50),
                ..AppBook::default()
            },
            None,
        ),
        // Gone from the runtime: an exit with an unknown code.
        (
            Some(5),
            running_book(0, Some(100)),
            None,
            900,
            Some(None),
            running_book(0, Some(100)),
            None,
        ),
        // Running under another pid (restarted behind our back): an exit of
        // the old process, then adopted afresh.
        (
            Some(5),
            running_book(1, None),
            Some(Running { pid: 6 }),
            900,
            Some(None),
            running_book(1, Some(900)),
            Some(6),
        ),
        // Created, not started: nothing to book.
        (
            None,
            AppBook::default(),
            Some(Created),
            900,
            None,
            AppBook::default(),
            None,
        ),
    ];
    for (i, (known, book, status, now, exit, book_after, pid_after)) in cases.iter().enumerate() {
        let mut l = Ledger::default();
        l.books.insert("web".into(), book.clone());
        if let Some(pid) = known {
            l.running.insert(name.clone(), *pid);
        }
        let seen = status.map_or_else(Containers::new, |s| containers_of(&d, s));
        let exits = l.observe(&d, &seen, *now);
        let want: Vec<Exit> = exit
            .iter()
            .map(|code| Exit {
                app: "web".into(),
                container: name.clone(),
                code: *code,
            })
            .collect();
        assert_eq!(exits, want, "case {i}");
        assert_eq!(l.books["web"], *book_after, "case {i}");
        assert_eq!(l.running.get(&name).copied(), *pid_after, "case {i}");
    }
}

#[test]
fn containers_of_other_specs_are_watched_for_exits_but_not_booked() {
    let d = one("web");
    let old = "outpost-web-0000beef".to_string();
    let mut l = Ledger::default();
    l.running.insert(old.clone(), 3);
    let seen = Containers::from([(
        old.clone(),
        ObservedContainer {
            name: old.clone(),
            app: "web".into(),
            status: ContainerStatus::Running { pid: 3 },
        },
    )]);
    assert!(l.observe(&d, &seen, 10).is_empty());
    assert!(l.books.is_empty(), "{l:?}");
    // Not desired, so no longer followed once it stops.
    let exits = l.observe(&d, &Containers::new(), 20);
    assert_eq!(
        exits,
        vec![Exit {
            app: "web".into(),
            container: old,
            code: None
        }]
    );
    assert!(l.running.is_empty());
}

#[test]
fn outcomes_update_books_errors_and_the_picture_of_the_containers() {
    let d = one("web");
    let name = d["web"].container.clone();
    let mut l = Ledger::default();
    let mut after = Containers::new();

    // A failed pull: retry after base * 2^failures, counted from `now`.
    l.record(
        Outcome::Failed {
            app: "web".into(),
            error: unreachable(),
        },
        &d,
        &mut after,
        1_000,
        &POLICY,
    );
    assert_eq!(l.books["web"].retry_at_ms, Some(2_000));
    assert_eq!(l.books["web"].failures, 1);
    assert_eq!(
        l.errors["web"],
        LastError {
            message:
                "pull of reg/web failed: registry request for reg/web failed: connection refused"
                    .into(),
            retryable: true,
        }
    );
    l.record(
        Outcome::Failed {
            app: "web".into(),
            error: pull_failure(OciError::NotFound {
                reference: "reg/web".into(),
            }),
        },
        &d,
        &mut after,
        2_000,
        &POLICY,
    );
    assert_eq!(l.books["web"].retry_at_ms, Some(4_000));
    assert_eq!(l.books["web"].failures, 2);
    assert!(!l.errors["web"].retryable);

    // A restart's create counts a restart and clears the exit time.
    l.books.get_mut("web").unwrap().exited_at_ms = Some(3_000);
    l.record(
        Outcome::Created {
            app: "web".into(),
            reason: CreateReason::Restart,
        },
        &d,
        &mut after,
        4_000,
        &POLICY,
    );
    assert_eq!(after[&name].status, ContainerStatus::Created);
    let b = &l.books["web"];
    assert_eq!((b.restarts, b.consecutive, b.exited_at_ms), (1, 1, None));

    // An initial create counts nothing.
    l.record(
        Outcome::Created {
            app: "web".into(),
            reason: CreateReason::Initial,
        },
        &d,
        &mut after,
        4_000,
        &POLICY,
    );
    assert_eq!(
        (l.books["web"].restarts, l.books["web"].consecutive),
        (1, 1)
    );

    // The start clears failures and the error, and is followed for exits.
    l.record(
        Outcome::Started {
            app: "web".into(),
            container: name.clone(),
            pid: 42,
        },
        &d,
        &mut after,
        4_500,
        &POLICY,
    );
    let b = &l.books["web"];
    assert_eq!(
        (b.started_at_ms, b.failures, b.retry_at_ms),
        (Some(4_500), 0, None)
    );
    assert!(l.errors.is_empty());
    assert_eq!(l.running[&name], 42);
    assert_eq!(after[&name].status, ContainerStatus::Running { pid: 42 });

    // Stop forgets the pid; remove forgets the container too.
    l.record(
        Outcome::Stopped {
            app: "web".into(),
            container: name.clone(),
        },
        &d,
        &mut after,
        5_000,
        &POLICY,
    );
    assert!(l.running.is_empty());
    assert!(after.contains_key(&name));
    l.running.insert(name.clone(), 42);
    l.record(
        Outcome::Removed {
            app: "web".into(),
            container: name.clone(),
        },
        &d,
        &mut after,
        5_000,
        &POLICY,
    );
    assert!(l.running.is_empty());
    assert!(after.is_empty());

    // Pulled and Kept change nothing.
    let before = l.clone();
    for o in [
        Outcome::Pulled { app: "web".into() },
        Outcome::Kept { app: "web".into() },
    ] {
        l.record(o, &d, &mut after, 6_000, &POLICY);
    }
    assert_eq!(l, before);
}

#[test]
fn undesired_apps_are_forgotten_with_their_errors_and_restart_counts_persist_when_nonzero() {
    let mut l = Ledger::with_restarts(&BTreeMap::from([("web".into(), 3), ("gone".into(), 2)]));
    l.books.insert("db".into(), AppBook::default());
    l.errors.insert(
        "gone".into(),
        LastError {
            message: "x".into(),
            retryable: true,
        },
    );
    assert_eq!(
        l.restarts(),
        BTreeMap::from([("db".into(), 0), ("gone".into(), 2), ("web".into(), 3)])
    );
    l.forget_undesired(&desired(&[
        spec("web", RestartPolicy::Always),
        spec("db", RestartPolicy::Always),
    ]));
    assert!(l.errors.is_empty());
    assert_eq!(l.persisted_restarts(), BTreeMap::from([("web".into(), 3)]));
}

#[test]
fn statuses_follow_container_state_backoff_and_errors() {
    use ContainerStatus::*;
    let on_failure = RestartPolicy::OnFailure { max_retries: 3 };
    // (restart policy, container status, exited at, error?) at now = 10_000
    //   -> state
    type Case = (
        RestartPolicy,
        Option<ContainerStatus>,
        Option<u64>,
        bool,
        AppState,
    );
    let cases: &[Case] = &[
        (
            RestartPolicy::Always,
            Some(Running { pid: 9 }),
            None,
            false,
            AppState::Running { pid: 9 },
        ),
        (
            RestartPolicy::Always,
            Some(Created),
            None,
            false,
            AppState::Starting,
        ),
        // Exited 200 ms ago, backoff 1 s: retry in 0.8 s, shown rounded up.
        (
            RestartPolicy::Always,
            Some(Exited { code: Some(1) }),
            Some(9_800),
            false,
            AppState::BackingOff { retry_in_secs: 1 },
        ),
        (
            RestartPolicy::Always,
            Some(Exited { code: Some(1) }),
            Some(9_000),
            false,
            AppState::Exited { code: 1 },
        ),
        (
            on_failure,
            Some(Exited { code: Some(2) }),
            Some(1_000),
            false,
            AppState::Failed,
        ),
        (
            on_failure,
            Some(Exited { code: Some(0) }),
            Some(1_000),
            false,
            AppState::Exited { code: 0 },
        ),
        (
            RestartPolicy::Never,
            Some(Exited { code: None }),
            Some(1_000),
            false,
            AppState::Exited { code: -1 },
        ),
        (RestartPolicy::Always, None, None, true, AppState::Failed),
        (RestartPolicy::Always, None, None, false, AppState::Pending),
    ];
    for (i, (restart, status, exited_at, error, want)) in cases.iter().enumerate() {
        let d = desired(&[spec("web", *restart)]);
        let mut l = Ledger::default();
        l.books.insert(
            "web".into(),
            AppBook {
                restarts: 2,
                exited_at_ms: *exited_at,
                ..AppBook::default()
            },
        );
        if *error {
            l.errors.insert(
                "web".into(),
                LastError {
                    message: "pull of reg/web failed: boom".into(),
                    retryable: false,
                },
            );
        }
        let after = status.map_or_else(Containers::new, |s| containers_of(&d, s));
        let apps = app_statuses(&d, &after, &l, 10_000, &POLICY);
        let a = &apps["web"];
        assert_eq!(a.state, *want, "case {i}");
        assert_eq!(a.restarts, 2, "case {i}");
        assert_eq!(a.ready, None);
        assert_eq!(a.image_digest, Some(d["web"].spec.image.digest));
        assert_eq!(
            a.last_error.as_deref(),
            error.then_some("pull of reg/web failed: boom"),
            "case {i}"
        );
    }
}

#[test]
fn health_targets_are_running_apps_with_a_check() {
    let check = HealthCheck {
        probe: Probe::Tcp { port: 80 },
        interval_secs: 5,
        timeout_secs: 1,
        retries: 3,
    };
    let mut checked = spec("web", RestartPolicy::Always);
    checked.health = Some(check.clone());
    checked.network = NetworkMode::Isolated;
    let mut starting = spec("api", RestartPolicy::Always);
    starting.health = Some(check.clone());
    let unchecked = spec("db", RestartPolicy::Always);
    let d = desired(&[checked, starting, unchecked]);
    let mut after = containers_of(&d, ContainerStatus::Running { pid: 4 });
    after.get_mut(&d["api"].container).unwrap().status = ContainerStatus::Created;
    let targets = health_targets(&d, &after);
    assert_eq!(
        targets,
        BTreeMap::from([(
            "web".to_string(),
            HealthTarget {
                container: d["web"].container.clone(),
                pid: 4,
                check,
                isolated: true,
            }
        )])
    );
    assert!(health_targets(&d, &Containers::new()).is_empty());
}

#[test]
fn a_release_settles_when_nothing_is_planned_failed_or_down() {
    use ContainerStatus::*;
    let d = one("web");
    let failed = Ledger {
        errors: BTreeMap::from([(
            "web".to_string(),
            LastError {
                message: "x".into(),
                retryable: true,
            },
        )]),
        ..Ledger::default()
    };
    let clean = Ledger::default();
    // (acted, ledger, status) -> settled
    let cases: &[(bool, &Ledger, Option<ContainerStatus>, bool)] = &[
        (false, &clean, Some(Running { pid: 1 }), true),
        (false, &clean, Some(Exited { code: Some(0) }), true),
        (true, &clean, Some(Running { pid: 1 }), false),
        (false, &failed, Some(Running { pid: 1 }), false),
        (false, &clean, Some(Exited { code: Some(1) }), false),
        (false, &clean, Some(Exited { code: None }), false),
        (false, &clean, Some(Created), false),
        (false, &clean, None, false),
    ];
    for (i, (acted, ledger, status, want)) in cases.iter().enumerate() {
        let after = status.map_or_else(Containers::new, |s| containers_of(&d, s));
        assert_eq!(settled(*acted, ledger, &d, &after), *want, "case {i}");
    }
}
