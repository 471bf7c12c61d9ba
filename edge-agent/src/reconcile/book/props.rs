//! Properties of sequences of bookkeeping steps: whatever the runtime shows
//! and the executor does, in any order and at any pace.

use super::tests::{desired, spec, unreachable, POLICY};
use super::*;
use crate::driver::{DriverCause, DriverError};
use outpost_protocol::AppSpec;
use proptest::prelude::*;

fn arb_status() -> impl Strategy<Value = ContainerStatus> {
    prop_oneof![
        Just(ContainerStatus::Created),
        (1u32..4).prop_map(|pid| ContainerStatus::Running { pid }),
        prop::option::of(0i32..3).prop_map(|code| ContainerStatus::Exited { code }),
    ]
}

fn arb_restart() -> impl Strategy<Value = RestartPolicy> {
    prop_oneof![
        Just(RestartPolicy::Always),
        Just(RestartPolicy::Never),
        (0u32..3).prop_map(|max_retries| RestartPolicy::OnFailure { max_retries }),
    ]
}

/// One thing that can happen to the ledger: the runtime observed with some
/// statuses (`None`: container gone), or one action's outcome; each after
/// `wait` more milliseconds.
#[derive(Debug, Clone)]
enum Step {
    Observe(BTreeMap<String, Option<ContainerStatus>>),
    Outcome(String, OutcomeKind),
}

#[derive(Debug, Clone, Copy)]
enum OutcomeKind {
    Created(CreateReason),
    Started(u32),
    Stopped,
    Removed,
    Failed(bool),
}

fn outcome(app: &str, container: &str, kind: OutcomeKind) -> Outcome {
    let (app, container) = (app.to_string(), container.to_string());
    match kind {
        OutcomeKind::Created(reason) => Outcome::Created { app, reason },
        OutcomeKind::Started(pid) => Outcome::Started {
            app,
            container,
            pid,
        },
        OutcomeKind::Stopped => Outcome::Stopped { app, container },
        OutcomeKind::Removed => Outcome::Removed { app, container },
        OutcomeKind::Failed(retryable) => Outcome::Failed {
            app,
            error: if retryable {
                unreachable()
            } else {
                DriverError::new("create", container, DriverCause::NotDesired)
            },
        },
    }
}

const APPS: [&str; 3] = ["a", "b", "c"];

fn arb_step() -> impl Strategy<Value = (u64, Step)> {
    let observe = prop::collection::btree_map(
        prop::sample::select(APPS.to_vec()).prop_map(String::from),
        prop::option::of(arb_status()),
        0..4,
    )
    .prop_map(Step::Observe);
    let kind = prop_oneof![
        Just(OutcomeKind::Created(CreateReason::Initial)),
        Just(OutcomeKind::Created(CreateReason::Restart)),
        (1u32..4).prop_map(OutcomeKind::Started),
        Just(OutcomeKind::Stopped),
        Just(OutcomeKind::Removed),
        any::<bool>().prop_map(OutcomeKind::Failed),
    ];
    let act = (
        prop::sample::select(APPS.to_vec()).prop_map(String::from),
        kind,
    )
        .prop_map(|(app, k)| Step::Outcome(app, k));
    (0u64..20_000, prop_oneof![observe, act])
}

/// The world a step sequence plays in: apps `a`..`c`, each with a policy.
fn world(policies: &[RestartPolicy]) -> BTreeMap<String, DesiredApp> {
    let specs: Vec<AppSpec> = APPS
        .iter()
        .zip(policies)
        .map(|(app, p)| spec(app, *p))
        .collect();
    desired(&specs)
}

/// Apply one step at `now`: an observation first changes the runtime's
/// containers as it says, then is folded in; an outcome is recorded.
fn apply(
    d: &BTreeMap<String, DesiredApp>,
    l: &mut Ledger,
    seen: &mut Containers,
    now: u64,
    step: &Step,
) {
    match step {
        Step::Observe(statuses) => {
            for (app, status) in statuses {
                let name = d[app].container.clone();
                match status {
                    Some(s) => {
                        seen.insert(
                            name.clone(),
                            ObservedContainer {
                                name,
                                app: app.clone(),
                                status: *s,
                            },
                        );
                    }
                    None => {
                        seen.remove(&name);
                    }
                }
            }
            l.observe(d, seen, now);
        }
        Step::Outcome(app, kind) => {
            let o = outcome(app, &d[app].container, *kind);
            l.record(o, d, seen, now, &POLICY);
        }
    }
}

/// Apply `steps` starting at monotonic time `origin`; returns the ledger, the
/// containers as last pictured and the final time.
fn play(
    d: &BTreeMap<String, DesiredApp>,
    steps: &[(u64, Step)],
    origin: u64,
) -> (Ledger, Containers, u64) {
    let mut l = Ledger::default();
    let mut seen = Containers::new();
    let mut now = origin;
    for (wait, step) in steps {
        now += wait;
        apply(d, &mut l, &mut seen, now, step);
    }
    (l, seen, now)
}

proptest! {
    /// Observing the same runtime twice at one instant notices nothing new and
    /// changes nothing; afterwards the ledger follows exactly the desired
    /// containers that run, with their pids.
    #[test]
    fn observing_is_idempotent_and_follows_running_containers(
        policies in prop::collection::vec(arb_restart(), 3),
        steps in prop::collection::vec(arb_step(), 0..12),
        last in prop::collection::btree_map(
            prop::sample::select(APPS.to_vec()).prop_map(String::from),
            arb_status(),
            0..4,
        ),
    ) {
        let d = world(&policies);
        let (mut l, _, now) = play(&d, &steps, 0);
        let seen: Containers = last
            .iter()
            .map(|(app, s)| {
                let name = d[app].container.clone();
                (name.clone(), ObservedContainer { name, app: app.clone(), status: *s })
            })
            .collect();
        let before = l.running.clone();
        let exits = l.observe(&d, &seen, now);
        // Exactly the containers that ran and no longer run under that pid.
        let stopped: Vec<&String> = before
            .iter()
            .filter(|(name, pid)| {
                !matches!(
                    seen.get(*name).map(|c| c.status),
                    Some(ContainerStatus::Running { pid: p }) if p == **pid
                )
            })
            .map(|(name, _)| name)
            .collect();
        prop_assert_eq!(exits.iter().map(|e| &e.container).collect::<Vec<_>>(), stopped);
        for (name, c) in &seen {
            if let ContainerStatus::Running { pid } = c.status {
                prop_assert_eq!(l.running.get(name), Some(&pid));
            } else {
                prop_assert!(!l.running.contains_key(name));
            }
        }
        let once = l.clone();
        prop_assert!(l.observe(&d, &seen, now).is_empty());
        prop_assert_eq!(l, once);
    }

    /// Whatever happens, an app's restart count never goes down, its streak
    /// never exceeds it, and a failed action's retry comes within the policy's
    /// bounds.
    #[test]
    fn restart_counts_only_grow_and_retries_stay_within_the_policy(
        policies in prop::collection::vec(arb_restart(), 3),
        steps in prop::collection::vec(arb_step(), 0..24),
    ) {
        let d = world(&policies);
        let mut l = Ledger::default();
        let mut seen = Containers::new();
        let mut now = 0;
        for (wait, step) in &steps {
            now += wait;
            let before = l.restarts();
            apply(&d, &mut l, &mut seen, now, step);
            if let Step::Outcome(app, OutcomeKind::Failed(retryable)) = step {
                let at = l.books[app].retry_at_ms.unwrap_or(0);
                prop_assert!(at >= now + POLICY.base_backoff_ms.min(POLICY.max_backoff_ms));
                prop_assert!(at <= now + POLICY.max_backoff_ms);
                prop_assert_eq!(l.errors[app].retryable, *retryable);
            }
            for (app, n) in &before {
                prop_assert!(l.books[app].restarts >= *n);
            }
            for b in l.books.values() {
                prop_assert!(b.consecutive <= b.restarts, "{b:?}");
            }
        }
    }

    /// Only elapsed time matters: the same history played from any origin of
    /// the monotonic clock gives the same counts, statuses and plan. (A
    /// wall-clock step moves no reading these functions see.)
    #[test]
    fn bookkeeping_depends_on_elapsed_time_not_on_the_clock_origin(
        policies in prop::collection::vec(arb_restart(), 3),
        steps in prop::collection::vec(arb_step(), 0..16),
        origin in 0u64..(1 << 45),
        later in 0u64..70_000,
    ) {
        let d = world(&policies);
        let (a, seen_a, now_a) = play(&d, &steps, 0);
        let (b, seen_b, now_b) = play(&d, &steps, origin);
        prop_assert_eq!(&seen_a, &seen_b);
        prop_assert_eq!(a.restarts(), b.restarts());
        prop_assert_eq!(&a.errors, &b.errors);
        prop_assert_eq!(
            app_statuses(&d, &seen_a, &a, now_a + later, &POLICY),
            app_statuses(&d, &seen_b, &b, now_b + later, &POLICY)
        );
        let observed = |l: &Ledger, seen: &Containers| Observed {
            containers: seen.clone(),
            books: l.books.clone(),
            ..Observed::default()
        };
        prop_assert_eq!(
            plan::plan(&d, &observed(&a, &seen_a), now_a + later, &POLICY),
            plan::plan(&d, &observed(&b, &seen_b), now_b + later, &POLICY)
        );
    }

    /// The status has exactly the desired apps; a backoff never shows longer
    /// than the policy's cap, and `last_error` is there exactly when an
    /// action failed.
    #[test]
    fn statuses_cover_the_desired_apps_and_backoff_is_bounded(
        policies in prop::collection::vec(arb_restart(), 3),
        steps in prop::collection::vec(arb_step(), 0..16),
        later in 0u64..70_000,
    ) {
        let d = world(&policies);
        let (l, seen, now) = play(&d, &steps, 0);
        let apps = app_statuses(&d, &seen, &l, now + later, &POLICY);
        prop_assert_eq!(apps.keys().collect::<Vec<_>>(), d.keys().collect::<Vec<_>>());
        for (name, a) in &apps {
            if let AppState::BackingOff { retry_in_secs } = a.state {
                prop_assert!(retry_in_secs >= 1);
                prop_assert!(retry_in_secs <= POLICY.max_backoff_ms.div_ceil(1000));
            }
            prop_assert_eq!(a.last_error.is_some(), l.errors.contains_key(name));
            prop_assert_eq!(a.restarts, l.books.get(name).map_or(0, |b| b.restarts));
        }
    }
}
