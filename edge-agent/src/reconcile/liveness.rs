//! Liveness: whether an app whose health check fails after it was ready is
//! restarted, as a pure function of (desired app, its container, the health
//! task's verdict on that container, the app's book).
//!
//! Only a container that passed its check at least once since it started is
//! ever restarted for failing it: one still starting up is left alone (how
//! long an app may take to become ready is the business of update trials, not
//! of liveness). A verdict about another container or pid (the health task
//! trails the reconciler by a pass) is ignored, so a replacement never
//! inherits its predecessor's "was ready" or its failure.
//!
//! The decision only marks the container (`AppBook::unhealthy_pid`): the plan
//! (`plan.rs`) then stops it, the next pass sees it exited, and it is restarted
//! exactly like a crashed container, after the same backoff
//! (`Policy::backoff_ms` of the consecutive-restart count) and counted in the
//! same `restarts`. There is no second backoff.
//!
//! Restart policies:
//! - `always`: restarted.
//! - `on-failure`: a health failure is a failure (whatever exit code the stop
//!   produces), so restarted while the consecutive-restart count is below
//!   `max_retries`, like a crash; once the retries are spent the app is left
//!   running and reported unhealthy, not killed with no replacement.
//! - `never`: never restarted, so never stopped either: a `never` app is
//!   typically a job, and killing it would only lose its work. Left running
//!   and reported unhealthy.

use super::plan::{AppBook, DesiredApp};
use crate::driver::{ContainerStatus, ObservedContainer};
use crate::health::Verdict;
use outpost_protocol::RestartPolicy;

/// What liveness asks for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Nothing: no check, not running, not judged yet, ready, or not ready
    /// but never ready since it started (still starting up).
    Alive,
    /// The running container `pid` failed its check after being ready and the
    /// restart policy restarts it: replace it.
    Restart { pid: u32, reason: String },
    /// It failed its check after being ready, but the restart policy does not
    /// restart it (now): left running, reported.
    Kept { reason: String },
}

/// Decide for one app. `current` is the app's desired container as observed,
/// `verdict` the health task's last verdict for the app (whichever container
/// it is about).
pub fn decide(
    d: &DesiredApp,
    current: Option<&ObservedContainer>,
    verdict: Option<&Verdict>,
    book: &AppBook,
) -> Liveness {
    if d.spec.health.is_none() {
        return Liveness::Alive;
    }
    let Some(ContainerStatus::Running { pid }) = current.map(|c| c.status) else {
        return Liveness::Alive;
    };
    let Some(v) = verdict.filter(|v| v.container == d.container && v.pid == pid) else {
        return Liveness::Alive;
    };
    if v.ready != Some(false) || !v.was_ready {
        return Liveness::Alive;
    }
    let reason = match &v.failure {
        Some((n, why)) => {
            format!("health check failed {n} times in a row after the app was ready: {why}")
        }
        None => "health check failing after the app was ready".to_string(),
    };
    let restart = match d.spec.restart {
        RestartPolicy::Always => true,
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure { max_retries } => book.consecutive < max_retries,
    };
    if restart {
        Liveness::Restart { pid, reason }
    } else {
        Liveness::Kept { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::container_name;
    use outpost_protocol::{AppSpec, HealthCheck, ImageRef, Probe};
    use proptest::prelude::*;

    fn app(restart: RestartPolicy, health: bool) -> DesiredApp {
        let image: ImageRef = format!("reg/web@sha256:{}", hex::encode([1u8; 32]))
            .parse()
            .unwrap();
        let mut s = AppSpec::new("web", image);
        s.restart = restart;
        s.health = health.then_some(HealthCheck {
            probe: Probe::Tcp { port: 80 },
            interval_secs: 1,
            timeout_secs: 1,
            retries: 3,
        });
        DesiredApp {
            container: container_name(&s),
            spec: s,
        }
    }

    fn container(d: &DesiredApp, status: ContainerStatus) -> ObservedContainer {
        ObservedContainer {
            name: d.container.clone(),
            app: "web".into(),
            status,
        }
    }

    fn verdict(d: &DesiredApp, pid: u32, ready: Option<bool>, was_ready: bool) -> Verdict {
        Verdict {
            container: d.container.clone(),
            pid,
            ready,
            was_ready,
            failure: (ready == Some(false)).then(|| (3, "http /health: status 503".into())),
        }
    }

    const RUNNING: ContainerStatus = ContainerStatus::Running { pid: 7 };

    #[test]
    fn decision_table() {
        let always = app(RestartPolicy::Always, true);
        let on_failure = app(RestartPolicy::OnFailure { max_retries: 2 }, true);
        let never = app(RestartPolicy::Never, true);
        let unchecked = app(RestartPolicy::Always, false);
        let book = |consecutive| AppBook {
            consecutive,
            ..AppBook::default()
        };
        let failed = |d: &DesiredApp| verdict(d, 7, Some(false), true);
        let mut other_container = failed(&always);
        other_container.container = "outpost-web-old".into();
        let reason =
            "health check failed 3 times in a row after the app was ready: http /health: status 503";
        let restart = Liveness::Restart {
            pid: 7,
            reason: reason.into(),
        };
        let kept = Liveness::Kept {
            reason: reason.into(),
        };
        // (what, app, container status, verdict, consecutive restarts, expected)
        type Case<'a> = (
            &'a str,
            &'a DesiredApp,
            Option<ContainerStatus>,
            Option<Verdict>,
            u32,
            Liveness,
        );
        let cases: Vec<Case> = vec![
            (
                "ready once, failing now",
                &always,
                Some(RUNNING),
                Some(failed(&always)),
                0,
                restart.clone(),
            ),
            (
                "backoff streak does not matter to always",
                &always,
                Some(RUNNING),
                Some(failed(&always)),
                9,
                restart.clone(),
            ),
            (
                "still starting up: never ready",
                &always,
                Some(RUNNING),
                Some(verdict(&always, 7, Some(false), false)),
                0,
                Liveness::Alive,
            ),
            (
                "not judged yet",
                &always,
                Some(RUNNING),
                Some(verdict(&always, 7, None, false)),
                0,
                Liveness::Alive,
            ),
            (
                "ready",
                &always,
                Some(RUNNING),
                Some(verdict(&always, 7, Some(true), true)),
                0,
                Liveness::Alive,
            ),
            (
                "no verdict",
                &always,
                Some(RUNNING),
                None,
                0,
                Liveness::Alive,
            ),
            (
                "verdict on an earlier pid",
                &always,
                Some(ContainerStatus::Running { pid: 8 }),
                Some(failed(&always)),
                0,
                Liveness::Alive,
            ),
            (
                "verdict on another container",
                &always,
                Some(RUNNING),
                Some(other_container),
                0,
                Liveness::Alive,
            ),
            (
                "exited: the crash path's business",
                &always,
                Some(ContainerStatus::Exited { code: Some(1) }),
                Some(failed(&always)),
                0,
                Liveness::Alive,
            ),
            (
                "created, not started",
                &always,
                Some(ContainerStatus::Created),
                Some(failed(&always)),
                0,
                Liveness::Alive,
            ),
            (
                "no container",
                &always,
                None,
                Some(failed(&always)),
                0,
                Liveness::Alive,
            ),
            (
                "no health check",
                &unchecked,
                Some(RUNNING),
                Some(failed(&unchecked)),
                0,
                Liveness::Alive,
            ),
            (
                "on-failure with retries left",
                &on_failure,
                Some(RUNNING),
                Some(failed(&on_failure)),
                1,
                restart.clone(),
            ),
            (
                "on-failure with retries spent",
                &on_failure,
                Some(RUNNING),
                Some(failed(&on_failure)),
                2,
                kept.clone(),
            ),
            (
                "never restarts, so never stops",
                &never,
                Some(RUNNING),
                Some(failed(&never)),
                0,
                kept.clone(),
            ),
        ];
        for (what, d, status, v, consecutive, expected) in cases {
            let c = status.map(|s| container(d, s));
            assert_eq!(
                decide(d, c.as_ref(), v.as_ref(), &book(consecutive)),
                expected,
                "{what}"
            );
        }
        // A verdict without the failure's detail still says what happened.
        let mut bare = failed(&always);
        bare.failure = None;
        assert_eq!(
            decide(
                &always,
                Some(&container(&always, RUNNING)),
                Some(&bare),
                &book(0)
            ),
            Liveness::Restart {
                pid: 7,
                reason: "health check failing after the app was ready".into()
            }
        );
    }

    fn arb_policy() -> impl Strategy<Value = RestartPolicy> {
        prop_oneof![
            Just(RestartPolicy::Always),
            Just(RestartPolicy::Never),
            (0u32..4).prop_map(|max_retries| RestartPolicy::OnFailure { max_retries }),
        ]
    }

    fn arb_status() -> impl Strategy<Value = Option<ContainerStatus>> {
        prop::option::of(prop_oneof![
            Just(ContainerStatus::Created),
            (1u32..4).prop_map(|pid| ContainerStatus::Running { pid }),
            prop::option::of(0i32..3).prop_map(|code| ContainerStatus::Exited { code }),
        ])
    }

    proptest! {
        /// Whatever the inputs: a restart is only ever asked for the running
        /// container the verdict is about, after it was ready and is not now,
        /// and only when the policy would restart a crash of it too; anything
        /// that is not a restart of a failing app is left alone.
        #[test]
        fn restarts_only_a_running_container_that_was_ready_and_the_policy_allows(
            policy in arb_policy(),
            health in any::<bool>(),
            status in arb_status(),
            v in prop::option::of((any::<bool>(), 1u32..4, prop::option::of(any::<bool>()), any::<bool>())),
            consecutive in 0u32..5,
        ) {
            let d = app(policy, health);
            let c = status.map(|s| container(&d, s));
            let v = v.map(|(same, pid, ready, was_ready)| {
                let mut v = verdict(&d, pid, ready, was_ready);
                if !same {
                    v.container = "outpost-web-other".into();
                }
                v
            });
            let book = AppBook { consecutive, ..AppBook::default() };
            let got = decide(&d, c.as_ref(), v.as_ref(), &book);
            let failing_after_ready = health
                && v.as_ref().is_some_and(|v| {
                    v.container == d.container
                        && v.ready == Some(false)
                        && v.was_ready
                        && c.as_ref().is_some_and(|c| c.status == ContainerStatus::Running { pid: v.pid })
                });
            match &got {
                Liveness::Restart { pid, reason } => {
                    prop_assert!(failing_after_ready);
                    prop_assert_eq!(c.as_ref().map(|c| c.status), Some(ContainerStatus::Running { pid: *pid }));
                    prop_assert!(policy != RestartPolicy::Never);
                    if let RestartPolicy::OnFailure { max_retries } = policy {
                        prop_assert!(consecutive < max_retries);
                    }
                    prop_assert!(reason.contains("after the app was ready"));
                }
                Liveness::Kept { .. } => {
                    prop_assert!(failing_after_ready);
                    let kept_by_policy = matches!(policy, RestartPolicy::Never | RestartPolicy::OnFailure { .. });
                    prop_assert!(kept_by_policy);
                }
                Liveness::Alive => prop_assert!(!failing_after_ready),
            }
            // Readiness is per container: the same facts about a never-ready
            // container ask for nothing.
            if let Some(mut fresh) = v.clone() {
                fresh.was_ready = false;
                prop_assert_eq!(decide(&d, c.as_ref(), Some(&fresh), &book), Liveness::Alive);
            }
        }
    }
}
