//! Liveness through the ledger and the plan: an app failing its health check
//! after it was ready is stopped, then restarted by the crash path (same
//! backoff, same count), reported once per container, and its reason stays in
//! the status until a container of the app is ready again.

use super::tests::{desired, spec, POLICY};
use super::*;
use crate::health::Verdict;
use crate::reconcile::plan::Action;
use outpost_protocol::{HealthCheck, Probe};
use proptest::prelude::*;

fn checked(restart: RestartPolicy) -> BTreeMap<String, DesiredApp> {
    let mut s = spec("web", restart);
    s.health = Some(HealthCheck {
        probe: Probe::Http {
            port: 8080,
            path: "/health".into(),
        },
        interval_secs: 1,
        timeout_secs: 1,
        retries: 2,
    });
    desired(&[s])
}

fn containers(d: &BTreeMap<String, DesiredApp>, status: ContainerStatus) -> Containers {
    let c = &d["web"].container;
    BTreeMap::from([(
        c.clone(),
        ObservedContainer {
            name: c.clone(),
            app: "web".into(),
            status,
        },
    )])
}

fn verdicts(
    d: &BTreeMap<String, DesiredApp>,
    pid: u32,
    ready: Option<bool>,
    was_ready: bool,
) -> Verdicts {
    BTreeMap::from([(
        "web".to_string(),
        Verdict {
            container: d["web"].container.clone(),
            pid,
            ready,
            was_ready,
            failure: (ready == Some(false)).then(|| (2, "http /health: status 503".into())),
        },
    )])
}

fn plan_at(
    ledger: &Ledger,
    d: &BTreeMap<String, DesiredApp>,
    c: &Containers,
    now: u64,
) -> plan::Plan {
    let observed = Observed {
        containers: c.clone(),
        images: d.values().map(|a| a.spec.image.digest).collect(),
        books: ledger.books.clone(),
        ready: Default::default(),
    };
    plan::plan(d, &observed, now, &POLICY)
}

const REASON: &str =
    "health check failed 2 times in a row after the app was ready: http /health: status 503";

#[test]
fn a_health_restart_takes_the_crash_path_and_is_reported_once() {
    use ContainerStatus::*;
    let d = checked(RestartPolicy::Always);
    let mut l = Ledger::default();
    let c = containers(&d, Running { pid: 7 });
    l.observe(&d, &c, 0);
    // Starting up: not ready and never was, for as long as it takes.
    assert!(l
        .judge_liveness(&d, &c, &verdicts(&d, 7, Some(false), false))
        .is_empty());
    assert!(plan_at(&l, &d, &c, 50_000).is_settled());
    assert!(l
        .judge_liveness(&d, &c, &verdicts(&d, 7, Some(true), true))
        .is_empty());

    // Ready once, then failing: one report, restart number 1 under way.
    let sick = verdicts(&d, 7, Some(false), true);
    assert_eq!(
        l.judge_liveness(&d, &c, &sick),
        vec![Unhealthy {
            app: "web".into(),
            reason: REASON.into(),
            restart: Some(1),
        }]
    );
    assert!(l.judge_liveness(&d, &c, &sick).is_empty(), "reported twice");
    let status = &app_statuses(&d, &c, &l, 60_000, &POLICY)["web"];
    assert_eq!(status.last_error.as_deref(), Some(REASON));
    assert_eq!(
        status.restarts, 0,
        "counted when the replacement is created"
    );
    // The plan stops it (until it is stopped).
    let p = plan_at(&l, &d, &c, 60_000);
    assert_eq!(
        p.actions,
        vec![Action::Stop {
            app: "web".into(),
            container: d["web"].container.clone()
        }]
    );
    let mut after = c.clone();
    l.record(
        Outcome::Stopped {
            app: "web".into(),
            container: d["web"].container.clone(),
        },
        &d,
        &mut after,
        60_000,
        &POLICY,
    );
    // The stopped app exits 0 (the sample does on SIGTERM): still restarted,
    // after the crash backoff counted from the exit that was seen.
    let exited = containers(&d, Exited { code: Some(0) });
    assert!(
        l.observe(&d, &exited, 60_100).is_empty(),
        "a stop of ours is not an unexpected exit"
    );
    let waiting = plan_at(&l, &d, &exited, 60_100);
    assert!(waiting.actions.is_empty());
    assert_eq!(waiting.requeue_after_ms, Some(POLICY.backoff_ms(0)));
    let due = plan_at(&l, &d, &exited, 60_100 + POLICY.backoff_ms(0));
    assert!(due.actions.contains(&Action::Create {
        app: "web".into(),
        container: d["web"].container.clone(),
        reason: CreateReason::Restart,
    }));
    let mut after = exited.clone();
    l.record(
        Outcome::Created {
            app: "web".into(),
            reason: CreateReason::Restart,
        },
        &d,
        &mut after,
        61_200,
        &POLICY,
    );
    l.record(
        Outcome::Started {
            app: "web".into(),
            container: d["web"].container.clone(),
            pid: 8,
        },
        &d,
        &mut after,
        61_200,
        &POLICY,
    );
    assert_eq!(l.books["web"].restarts, 1);
    assert_eq!(l.books["web"].consecutive, 1, "the backoff streak grows");
    assert_eq!(l.books["web"].unhealthy_pid, None);
    // The health task still speaks of the old container: nothing happens, and
    // the reason stays visible while the replacement starts.
    let c8 = containers(&d, Running { pid: 8 });
    assert!(l.judge_liveness(&d, &c8, &sick).is_empty());
    assert!(plan_at(&l, &d, &c8, 61_300).is_settled());
    // The replacement starts not ready: still nothing, the reason still shown.
    assert!(l
        .judge_liveness(&d, &c8, &verdicts(&d, 8, Some(false), false))
        .is_empty());
    assert_eq!(
        app_statuses(&d, &c8, &l, 61_300, &POLICY)["web"]
            .last_error
            .as_deref(),
        Some(REASON)
    );
    // Ready again: the reason is gone; the count stays.
    assert!(l
        .judge_liveness(&d, &c8, &verdicts(&d, 8, Some(true), true))
        .is_empty());
    let status = &app_statuses(&d, &c8, &l, 61_400, &POLICY)["web"];
    assert_eq!((status.last_error.as_deref(), status.restarts), (None, 1));
    // Failing again later: restart number 2.
    let found = l.judge_liveness(&d, &c8, &verdicts(&d, 8, Some(false), true));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].restart, Some(2));
}

#[test]
fn policies_that_do_not_restart_leave_the_app_running_and_report_it() {
    use ContainerStatus::*;
    let sick = |d: &BTreeMap<String, DesiredApp>| verdicts(d, 7, Some(false), true);
    for (restart, consecutive) in [
        (RestartPolicy::Never, 0),
        (RestartPolicy::OnFailure { max_retries: 2 }, 2),
    ] {
        let d = checked(restart);
        let c = containers(&d, Running { pid: 7 });
        let mut l = Ledger::default();
        l.books.entry("web".into()).or_default().consecutive = consecutive;
        assert_eq!(
            l.judge_liveness(&d, &c, &sick(&d)),
            vec![Unhealthy {
                app: "web".into(),
                reason: REASON.into(),
                restart: None,
            }],
            "{restart:?}"
        );
        assert!(l.judge_liveness(&d, &c, &sick(&d)).is_empty());
        assert!(plan_at(&l, &d, &c, 1_000).is_settled(), "{restart:?}");
        let status = &app_statuses(&d, &c, &l, 1_000, &POLICY)["web"];
        assert_eq!(status.last_error.as_deref(), Some(REASON));
        assert_eq!(status.restarts, 0);
    }
    // On-failure with retries left restarts, and its stop's exit 0 counts as
    // a failure (state `Failed`, not `Exited`, once the retries are spent).
    let d = checked(RestartPolicy::OnFailure { max_retries: 1 });
    let c = containers(&d, Running { pid: 7 });
    let mut l = Ledger::default();
    assert_eq!(l.judge_liveness(&d, &c, &sick(&d))[0].restart, Some(1));
    let exited = containers(&d, Exited { code: Some(0) });
    l.observe(&d, &exited, 10);
    let p = plan_at(&l, &d, &exited, 10 + POLICY.backoff_ms(0));
    assert!(p.actions.iter().any(|a| matches!(
        a,
        Action::Create {
            reason: CreateReason::Restart,
            ..
        }
    )));
    l.books.get_mut("web").unwrap().consecutive = 1;
    assert_eq!(
        app_statuses(&d, &exited, &l, 100_000, &POLICY)["web"].state,
        AppState::Failed
    );
}

#[test]
fn removed_apps_and_apps_without_a_check_forget_the_reason() {
    let d = checked(RestartPolicy::Always);
    let c = containers(&d, ContainerStatus::Running { pid: 7 });
    let mut l = Ledger::default();
    l.judge_liveness(&d, &c, &verdicts(&d, 7, Some(false), true));
    assert!(l.unhealthy.contains_key("web"));
    // The next spec drops its check.
    let unchecked = desired(&[spec("web", RestartPolicy::Always)]);
    l.judge_liveness(&unchecked, &c, &Verdicts::new());
    assert!(!l.unhealthy.contains_key("web"));
    l.judge_liveness(&d, &c, &verdicts(&d, 7, Some(false), true));
    l.books.get_mut("web").unwrap().unhealthy_pid = None;
    l.forget_undesired(&BTreeMap::new());
    assert!(l.unhealthy.is_empty() && l.books.is_empty());
}

/// What happens to the one app between two passes.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// A probe verdict on the running container.
    Probe(Option<bool>),
    /// The container dies on its own.
    Crash,
    /// Time passes.
    Wait(u64),
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        prop::option::of(any::<bool>()).prop_map(Event::Probe),
        Just(Event::Crash),
        (0u64..5_000).prop_map(Event::Wait),
    ]
}

proptest! {
    /// A model device driven by the real ledger and plan, with the health task
    /// played by the events: whatever happens, a container is stopped for its
    /// health only after it was ready and while its verdict says not ready,
    /// each container is reported at most once, every replacement is counted
    /// exactly once (health stops and crashes alike), and a `never` app is
    /// never stopped.
    #[test]
    fn health_restarts_are_counted_like_crashes(
        policy in prop_oneof![
            Just(RestartPolicy::Always),
            Just(RestartPolicy::Never),
            (0u32..3).prop_map(|max_retries| RestartPolicy::OnFailure { max_retries }),
        ],
        events in prop::collection::vec(arb_event(), 1..40),
    ) {
        use ContainerStatus::*;
        let d = checked(policy);
        let name = d["web"].container.clone();
        let mut l = Ledger::default();
        let mut now = 0u64;
        let mut pid = 1u32;
        let mut status = Running { pid };
        // The health task's state for the current container.
        let (mut ready, mut was_ready) = (None::<bool>, false);
        let (mut replacements, mut reported, mut health_stops) = (0u32, 0u32, 0u32);
        let mut restart_pids = std::collections::BTreeSet::new();
        for e in events {
            match e {
                Event::Probe(v) => if status.is_running() {
                    ready = v;
                    was_ready |= v == Some(true);
                },
                Event::Crash => if status.is_running() {
                    status = Exited { code: Some(1) };
                },
                Event::Wait(ms) => now += ms,
            }
            // One reconcile pass.
            let c = containers(&d, status);
            l.observe(&d, &c, now);
            let v = verdicts(&d, pid, ready, was_ready);
            for u in l.judge_liveness(&d, &c, &v) {
                reported += 1;
                prop_assert!(was_ready && ready == Some(false));
                if let Some(n) = u.restart {
                    prop_assert!(restart_pids.insert(pid), "pid {} restarted twice", pid);
                    prop_assert_eq!(n, l.books["web"].restarts + 1);
                }
            }
            let p = plan_at(&l, &d, &c, now);
            let mut after = c.clone();
            for a in &p.actions {
                let outcome = match a {
                    Action::Stop { .. } => {
                        prop_assert!(policy != RestartPolicy::Never, "a never app was stopped");
                        prop_assert!(was_ready && ready == Some(false), "stopped a healthy or starting container");
                        health_stops += 1;
                        status = Exited { code: Some(0) };
                        Outcome::Stopped { app: "web".into(), container: name.clone() }
                    }
                    Action::Remove { .. } => Outcome::Removed { app: "web".into(), container: name.clone() },
                    Action::Create { reason, .. } => {
                        if *reason == CreateReason::Restart {
                            replacements += 1;
                        }
                        Outcome::Created { app: "web".into(), reason: *reason }
                    }
                    Action::Start { .. } => {
                        pid += 1;
                        status = Running { pid };
                        // A new container: judged afresh.
                        (ready, was_ready) = (None, false);
                        Outcome::Started { app: "web".into(), container: name.clone(), pid }
                    }
                    Action::Pull { .. } | Action::Keep { .. } | Action::FreeImages { .. } => continue,
                };
                l.record(outcome, &d, &mut after, now, &POLICY);
            }
        }
        prop_assert_eq!(l.books.get("web").map_or(0, |b| b.restarts), replacements);
        prop_assert!(health_stops <= reported);
    }
}
