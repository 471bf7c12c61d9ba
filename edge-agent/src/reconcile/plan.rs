//! The pure reconcile decision: `plan(desired, observed, now, policy) -> Plan`.
//!
//! No I/O and no clock: everything the decision needs is passed in (`now_ms` is
//! the agent's monotonic time, see `crate::clock`), so the same inputs always
//! give the same actions (BTreeMap order). Boot, a new manifest, a crashed
//! container and the periodic resync all go through this one function; the
//! executor (`execute.rs`) carries the actions out.

use crate::driver::{ContainerStatus, ObservedContainer};
use outpost_protocol::{AppSpec, Digest, ImageRef, RestartPolicy, UpdateStrategy};
use std::collections::{BTreeMap, BTreeSet};

/// One app the manifest wants, with the container name derived from its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredApp {
    pub spec: AppSpec,
    /// `outpost-<app>-<spec hash>`: a changed spec gets a new name, so an update is
    /// "remove the old name, create the new one" and re-adoption after a crash of
    /// the agent is a plain lookup by name.
    pub container: String,
}

/// Restart and error bookkeeping for one app, kept by the reconcile loop
/// (`book.rs`). Times are the agent's monotonic milliseconds (`crate::clock`),
/// which a wall-clock step does not move.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppBook {
    /// Restarts since the agent first ran this app (reported in status).
    pub restarts: u32,
    /// Restarts without a stable run in between; drives the exponential backoff
    /// and the on-failure retry limit.
    pub consecutive: u32,
    /// When the loop first saw the current container exited.
    pub exited_at_ms: Option<u64>,
    /// An action for this app failed (pull, create…); don't retry before this.
    pub retry_at_ms: Option<u64>,
    /// Consecutive failed actions, for the retry delay.
    pub failures: u32,
    /// When the current container was started or first seen running.
    pub started_at_ms: Option<u64>,
    /// The running container with this pid failed its health check after it
    /// had been ready and is being replaced (`liveness.rs`): the plan stops
    /// it, and its exit counts as a failure whatever its code (a stopped app
    /// may well exit 0). Cleared when the replacement is created.
    pub unhealthy_pid: Option<u32>,
}

/// What the agent sees on the device right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Outpost containers known to the runtime, by container name.
    pub containers: BTreeMap<String, ObservedContainer>,
    /// Image digests present in the local store (no network needed to run them).
    pub images: BTreeSet<Digest>,
    pub books: BTreeMap<String, AppBook>,
    /// Apps whose desired container passed its health check (the verdict is
    /// about that very container: a hand-over waits for it).
    pub ready: BTreeSet<String>,
}

/// Tunables of the restart backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            base_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
        }
    }
}

impl Policy {
    /// Delay before restart number `consecutive + 1`: base * 2^consecutive, capped.
    pub fn backoff_ms(&self, consecutive: u32) -> u64 {
        let factor = 1u64 << consecutive.min(20);
        self.base_backoff_ms
            .saturating_mul(factor)
            .min(self.max_backoff_ms)
    }
}

/// Why a container is being created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateReason {
    /// First container for this spec (new app, update, or after a reboot).
    Initial,
    /// The previous container of the same spec exited and the policy restarts it.
    Restart,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Pull {
        app: String,
        image: ImageRef,
    },
    Create {
        app: String,
        container: String,
        reason: CreateReason,
    },
    Start {
        app: String,
        container: String,
    },
    Stop {
        app: String,
        container: String,
    },
    Remove {
        app: String,
        container: String,
    },
    /// Delete every local image that no remaining container and no desired
    /// app uses, before `app`'s new image is pulled (`delete-then-download`:
    /// a device short of storage makes room first).
    FreeImages {
        app: String,
    },
    /// Nothing to do: the container is where it should be.
    Keep {
        app: String,
        container: String,
    },
}

impl Action {
    pub fn app(&self) -> &str {
        match self {
            Action::Pull { app, .. }
            | Action::Create { app, .. }
            | Action::Start { app, .. }
            | Action::Stop { app, .. }
            | Action::Remove { app, .. }
            | Action::FreeImages { app }
            | Action::Keep { app, .. } => app,
        }
    }

    pub fn is_keep(&self) -> bool {
        matches!(self, Action::Keep { .. })
    }
}

/// The actions of one pass, in execution order, and when to look again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Earliest moment a waiting decision (backoff, error retry) becomes due.
    pub requeue_after_ms: Option<u64>,
}

impl Plan {
    /// True when everything is as desired (only `Keep`s).
    pub fn is_settled(&self) -> bool {
        self.actions.iter().all(Action::is_keep)
    }

    fn requeue(&mut self, in_ms: u64) {
        self.requeue_after_ms = Some(self.requeue_after_ms.map_or(in_ms, |r| r.min(in_ms)));
    }
}

/// Decide what to do so that `observed` moves towards `desired`.
///
/// Order: containers that belong to no desired spec are stopped and removed first
/// (so a recreate-style update frees ports and devices before the new container
/// starts), then each desired app in name order.
pub fn plan(
    desired: &BTreeMap<String, DesiredApp>,
    observed: &Observed,
    now_ms: u64,
    policy: &Policy,
) -> Plan {
    let mut out = Plan::default();

    // Old or orphaned containers.
    for (name, c) in &observed.containers {
        let wanted = desired.get(&c.app).is_some_and(|d| &d.container == name);
        if wanted {
            continue;
        }
        if let Some(d) = desired.get(&c.app) {
            // Hand-over: keep the old one serving until the new one runs and
            // is ready (with a health check), or `handover_timeout_secs` after
            // the new one started.
            let new_running = observed
                .containers
                .get(&d.container)
                .is_some_and(|n| n.status.is_running());
            let timeout_ms = u64::from(d.spec.handover_timeout_secs) * 1000;
            let new_since = observed.books.get(&c.app).and_then(|b| b.started_at_ms);
            let timed_out = new_since.is_some_and(|s| now_ms >= s.saturating_add(timeout_ms));
            let new_up = new_running
                && (d.spec.health.is_none() || observed.ready.contains(&c.app) || timed_out);
            if d.spec.update == UpdateStrategy::HandOver && c.status.is_running() && !new_up {
                if let Some(s) = new_since.filter(|_| new_running) {
                    out.requeue(s.saturating_add(timeout_ms).saturating_sub(now_ms));
                }
                out.actions.push(Action::Keep {
                    app: c.app.clone(),
                    container: name.clone(),
                });
                continue;
            }
        }
        if !matches!(c.status, ContainerStatus::Exited { .. }) {
            out.actions.push(Action::Stop {
                app: c.app.clone(),
                container: name.clone(),
            });
        }
        out.actions.push(Action::Remove {
            app: c.app.clone(),
            container: name.clone(),
        });
    }

    for (app, d) in desired {
        let book = observed.books.get(app).cloned().unwrap_or_default();
        if let Some(at) = book.retry_at_ms {
            if now_ms < at {
                out.requeue(at - now_ms);
                continue;
            }
        }
        let current = observed.containers.get(&d.container);
        // Before any create: the image must be local. Create follows the pull in
        // the same pass (the executor stops an app's chain at its first failure).
        let pull = (!observed.images.contains(&d.spec.image.digest)).then(|| Action::Pull {
            app: app.clone(),
            image: d.spec.image.clone(),
        });
        let create = |reason| Action::Create {
            app: app.clone(),
            container: d.container.clone(),
            reason,
        };
        let start = Action::Start {
            app: app.clone(),
            container: d.container.clone(),
        };
        // Delete-then-download: the old container went above, in this pass;
        // its image goes before the new one is fetched.
        let replaced = observed
            .containers
            .values()
            .any(|c| c.app == *app && c.name != d.container);
        if pull.is_some() && replaced && d.spec.update == UpdateStrategy::DeleteThenDownload {
            out.actions.push(Action::FreeImages { app: app.clone() });
        }
        match current.map(|c| c.status) {
            None => {
                out.actions.extend(pull);
                out.actions.push(create(CreateReason::Initial));
                out.actions.push(start);
            }
            Some(ContainerStatus::Created) => out.actions.push(start),
            // Liveness asked for a replacement: stopping it is the first step;
            // the exit is then restarted below like a crash, with its backoff.
            Some(ContainerStatus::Running { pid }) if book.unhealthy_pid == Some(pid) => {
                out.actions.push(Action::Stop {
                    app: app.clone(),
                    container: d.container.clone(),
                })
            }
            Some(ContainerStatus::Running { .. }) => out.actions.push(Action::Keep {
                app: app.clone(),
                container: d.container.clone(),
            }),
            Some(ContainerStatus::Exited { code }) => {
                let restart = match d.spec.restart {
                    RestartPolicy::Always => true,
                    RestartPolicy::Never => false,
                    RestartPolicy::OnFailure { max_retries } => {
                        (code != Some(0) || book.unhealthy_pid.is_some())
                            && book.consecutive < max_retries
                    }
                };
                if !restart {
                    out.actions.push(Action::Keep {
                        app: app.clone(),
                        container: d.container.clone(),
                    });
                    continue;
                }
                let due = book.exited_at_ms.map_or(now_ms, |t| {
                    t.saturating_add(policy.backoff_ms(book.consecutive))
                });
                if now_ms < due {
                    out.requeue(due - now_ms);
                    continue;
                }
                // A stopped libcontainer container cannot be started again: delete
                // it and create a fresh one under the same name.
                out.actions.extend(pull);
                out.actions.push(Action::Remove {
                    app: app.clone(),
                    container: d.container.clone(),
                });
                out.actions.push(create(CreateReason::Restart));
                out.actions.push(start);
            }
        }
    }
    out
}

/// Is the app waiting for a restart backoff? Returns the remaining milliseconds.
pub fn backoff_remaining(
    d: &DesiredApp,
    observed: &Observed,
    now_ms: u64,
    policy: &Policy,
) -> Option<u64> {
    let c = observed.containers.get(&d.container)?;
    if !matches!(c.status, ContainerStatus::Exited { .. }) {
        return None;
    }
    let book = observed.books.get(&d.spec.name)?;
    let due = book
        .exited_at_ms?
        .saturating_add(policy.backoff_ms(book.consecutive));
    (now_ms < due).then(|| due - now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::container_name;
    use proptest::prelude::*;

    fn spec(app: &str, img: u8, restart: RestartPolicy) -> AppSpec {
        let image: ImageRef = format!("reg/{app}@sha256:{}", hex::encode([img; 32]))
            .parse()
            .unwrap();
        let mut s = AppSpec::new(app, image);
        s.restart = restart;
        s
    }

    fn desired(specs: &[AppSpec]) -> BTreeMap<String, DesiredApp> {
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

    fn observed_with(c: &[(&str, &str, ContainerStatus)], images: &[Digest]) -> Observed {
        Observed {
            containers: c
                .iter()
                .map(|(name, app, status)| {
                    (
                        name.to_string(),
                        ObservedContainer {
                            name: name.to_string(),
                            app: app.to_string(),
                            status: *status,
                        },
                    )
                })
                .collect(),
            images: images.iter().copied().collect(),
            ..Observed::default()
        }
    }

    #[test]
    fn empty_device_pulls_creates_and_starts() {
        let s = spec("web", 1, RestartPolicy::Always);
        let d = desired(std::slice::from_ref(&s));
        let p = plan(&d, &Observed::default(), 0, &Policy::default());
        let c = container_name(&s);
        assert_eq!(
            p.actions,
            vec![
                Action::Pull {
                    app: "web".into(),
                    image: s.image.clone()
                },
                Action::Create {
                    app: "web".into(),
                    container: c.clone(),
                    reason: CreateReason::Initial
                },
                Action::Start {
                    app: "web".into(),
                    container: c
                },
            ]
        );
    }

    #[test]
    fn running_app_is_kept_and_an_update_removes_the_old_container_first() {
        let v1 = spec("web", 1, RestartPolicy::Always);
        let v2 = spec("web", 2, RestartPolicy::Always);
        let o = observed_with(
            &[(
                &container_name(&v1),
                "web",
                ContainerStatus::Running { pid: 7 },
            )],
            &[v1.image.digest, v2.image.digest],
        );
        assert!(plan(
            &desired(std::slice::from_ref(&v1)),
            &o,
            0,
            &Policy::default()
        )
        .is_settled());
        let p = plan(
            &desired(std::slice::from_ref(&v2)),
            &o,
            0,
            &Policy::default(),
        );
        let kinds: Vec<_> = p.actions.iter().map(std::mem::discriminant).collect();
        assert_eq!(kinds.len(), 4);
        assert!(
            matches!(&p.actions[0], Action::Stop { container, .. } if *container == container_name(&v1))
        );
        assert!(
            matches!(&p.actions[1], Action::Remove { container, .. } if *container == container_name(&v1))
        );
        assert!(
            matches!(&p.actions[2], Action::Create { container, .. } if *container == container_name(&v2))
        );
    }

    /// Delete-then-download frees images after the old container is removed
    /// and before the new image is pulled, only when there is something to
    /// pull; the other strategies never delete before a pull.
    #[test]
    fn delete_then_download_frees_images_between_removing_the_old_container_and_pulling() {
        let v1 = spec("web", 1, RestartPolicy::Always);
        let mut v2 = spec("web", 2, RestartPolicy::Always);
        v2.update = UpdateStrategy::DeleteThenDownload;
        let running = [(
            container_name(&v1),
            "web",
            ContainerStatus::Running { pid: 7 },
        )];
        let running: Vec<(&str, &str, ContainerStatus)> = running
            .iter()
            .map(|(n, a, s)| (n.as_str(), *a, *s))
            .collect();
        let steps = |v2: &AppSpec, images: &[Digest]| -> Vec<String> {
            plan(
                &desired(std::slice::from_ref(v2)),
                &observed_with(&running, images),
                0,
                &Policy::default(),
            )
            .actions
            .iter()
            .map(|a| {
                format!("{a:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
        };
        assert_eq!(
            steps(&v2, &[v1.image.digest]),
            ["Stop", "Remove", "FreeImages", "Pull", "Create", "Start"]
        );
        // The new image is already here: nothing to make room for.
        assert_eq!(
            steps(&v2, &[v1.image.digest, v2.image.digest]),
            ["Stop", "Remove", "Create", "Start"]
        );
        // A first install has no old container: nothing is deleted.
        let first = plan(
            &desired(std::slice::from_ref(&v2)),
            &observed_with(&[], &[]),
            0,
            &Policy::default(),
        );
        assert!(!first
            .actions
            .iter()
            .any(|a| matches!(a, Action::FreeImages { .. })));
        for other in [
            UpdateStrategy::KillThenDownload,
            UpdateStrategy::DownloadThenKill,
        ] {
            let mut v = v2.clone();
            v.update = other;
            assert!(
                !steps(&v, &[v1.image.digest]).contains(&"FreeImages".to_string()),
                "{other:?}"
            );
        }
    }

    #[test]
    fn restart_policies_and_backoff() {
        let pol = Policy::default();
        type Case = (RestartPolicy, Option<i32>, u32, bool);
        let cases: &[Case] = &[
            (RestartPolicy::Always, Some(0), 0, true),
            (RestartPolicy::Always, None, 5, true),
            (RestartPolicy::Never, Some(1), 0, false),
            (
                RestartPolicy::OnFailure { max_retries: 2 },
                Some(0),
                0,
                false,
            ),
            (
                RestartPolicy::OnFailure { max_retries: 2 },
                Some(1),
                1,
                true,
            ),
            (
                RestartPolicy::OnFailure { max_retries: 2 },
                Some(1),
                2,
                false,
            ),
        ];
        for (policy, code, consecutive, restarts) in cases {
            let s = spec("job", 1, *policy);
            let mut o = observed_with(
                &[(
                    &container_name(&s),
                    "job",
                    ContainerStatus::Exited { code: *code },
                )],
                &[s.image.digest],
            );
            o.books.insert(
                "job".into(),
                AppBook {
                    consecutive: *consecutive,
                    exited_at_ms: Some(1_000),
                    ..AppBook::default()
                },
            );
            let d = desired(&[s]);
            let wait = pol.backoff_ms(*consecutive);
            let early = plan(&d, &o, 1_000, &pol);
            let late = plan(&d, &o, 1_000 + wait, &pol);
            if *restarts {
                assert!(early.actions.is_empty(), "{policy:?}");
                assert_eq!(early.requeue_after_ms, Some(wait));
                assert!(late.actions.iter().any(|a| matches!(
                    a,
                    Action::Create {
                        reason: CreateReason::Restart,
                        ..
                    }
                )));
            } else {
                assert!(late.is_settled(), "{policy:?} {code:?}");
            }
        }
        assert_eq!(pol.backoff_ms(0), 1_000);
        assert_eq!(pol.backoff_ms(3), 8_000);
        assert_eq!(pol.backoff_ms(30), 60_000);
    }

    #[test]
    fn orphans_are_removed_and_failed_apps_wait_for_their_retry() {
        let s = spec("web", 1, RestartPolicy::Always);
        let mut o = observed_with(
            &[(
                "outpost-gone-0000",
                "gone",
                ContainerStatus::Exited { code: Some(0) },
            )],
            &[],
        );
        o.books.insert(
            "web".into(),
            AppBook {
                retry_at_ms: Some(500),
                ..AppBook::default()
            },
        );
        let p = plan(&desired(&[s]), &o, 100, &Policy::default());
        assert_eq!(
            p.actions,
            vec![Action::Remove {
                app: "gone".into(),
                container: "outpost-gone-0000".into()
            }]
        );
        assert_eq!(p.requeue_after_ms, Some(400));
    }

    /// A model of the device: applying an action changes it the way the real
    /// executor would.
    fn apply(o: &mut Observed, d: &BTreeMap<String, DesiredApp>, a: &Action) {
        match a {
            Action::Pull { image, .. } => {
                o.images.insert(image.digest);
            }
            // What the executor keeps: the desired release's images (and the
            // remaining containers', which in this model are desired ones).
            Action::FreeImages { .. } => {
                o.images
                    .retain(|i| d.values().any(|x| x.spec.image.digest == *i));
            }
            Action::Create {
                app,
                container,
                reason,
            } => {
                assert!(
                    !o.containers.contains_key(container),
                    "create over existing"
                );
                let spec = &d[app].spec;
                assert!(o.images.contains(&spec.image.digest), "create before pull");
                o.containers.insert(
                    container.clone(),
                    ObservedContainer {
                        name: container.clone(),
                        app: app.clone(),
                        status: ContainerStatus::Created,
                    },
                );
                if *reason == CreateReason::Restart {
                    let b = o.books.entry(app.clone()).or_default();
                    b.restarts += 1;
                    b.consecutive += 1;
                    b.exited_at_ms = None;
                }
            }
            Action::Start { container, .. } => {
                let c = o
                    .containers
                    .get_mut(container)
                    .expect("start of a missing container");
                assert_eq!(c.status, ContainerStatus::Created);
                c.status = ContainerStatus::Running { pid: 1 };
            }
            Action::Stop { container, .. } => {
                let c = o
                    .containers
                    .get_mut(container)
                    .expect("stop of a missing container");
                c.status = ContainerStatus::Exited { code: Some(143) };
            }
            Action::Remove { container, .. } => {
                let c = o
                    .containers
                    .remove(container)
                    .expect("remove of a missing container");
                assert!(!c.status.is_running(), "remove of a running container");
            }
            Action::Keep { .. } => {}
        }
    }

    fn arb_status() -> impl Strategy<Value = ContainerStatus> {
        prop_oneof![
            Just(ContainerStatus::Created),
            Just(ContainerStatus::Running { pid: 9 }),
            prop::option::of(0i32..3).prop_map(|code| ContainerStatus::Exited { code }),
        ]
    }

    fn arb_policy() -> impl Strategy<Value = RestartPolicy> {
        prop_oneof![
            Just(RestartPolicy::Always),
            Just(RestartPolicy::Never),
            (0u32..3).prop_map(|max_retries| RestartPolicy::OnFailure { max_retries }),
        ]
    }

    proptest! {
        /// From any device state, repeatedly planning and applying converges within
        /// a few passes and then plans nothing but `Keep`.
        #[test]
        fn planning_converges_then_plans_nothing(
            wanted in prop::collection::btree_map("[a-e]", (1u8..4, arb_policy(), any::<bool>()), 0..5),
            present in prop::collection::vec(("[a-g]", 1u8..4, arb_status()), 0..8),
            images in prop::collection::btree_set(1u8..4, 0..4),
        ) {
            let specs: Vec<AppSpec> = wanted
                .iter()
                .map(|(name, (img, policy, start_first))| {
                    let mut s = spec(name, *img, *policy);
                    if *start_first {
                        s.update = UpdateStrategy::HandOver;
                    }
                    s
                })
                .collect();
            let d = desired(&specs);
            let mut o = Observed::default();
            for (app, img, status) in present {
                let s = spec(&app, img, RestartPolicy::Always);
                let name = container_name(&s);
                o.containers.insert(name.clone(), ObservedContainer { name, app, status });
            }
            for i in images {
                o.images.insert(Digest([i; 32]));
            }
            let pol = Policy::default();
            let now = 10_000_000;
            let mut settled = false;
            for _ in 0..6 {
                let p = plan(&d, &o, now, &pol);
                if p.is_settled() {
                    settled = true;
                    break;
                }
                for a in &p.actions {
                    apply(&mut o, &d, a);
                }
            }
            prop_assert!(settled, "did not converge: {o:?}");
            // Every desired app has exactly its own container, nothing else remains
            // except exited containers the policy leaves alone.
            for (app, da) in &d {
                prop_assert!(o.containers.contains_key(&da.container), "{app} missing");
            }
            for c in o.containers.values() {
                prop_assert!(d.get(&c.app).is_some_and(|da| da.container == c.name));
            }
            let again = plan(&d, &o, now, &pol);
            prop_assert!(again.is_settled());
        }
    }
}
