//! Level-triggered reconciliation: observe the runtime, book what it shows
//! (`book.rs`, pure), `plan` (`plan.rs`, pure), execute (`execute.rs`), book the
//! outcomes (pure again), publish.
//!
//! One loop runs a pass on every accepted manifest, on every change of the
//! health task's verdicts (readiness for start-first updates, liveness: an app
//! failing its check after it was ready is replaced, `liveness.rs`), every `resync` interval (which
//! is how container exits are noticed: the runtime is polled, since a container
//! whose parent agent died reports no exit to us) and whenever a backoff is due.
//! With no manifest yet it does nothing at all, so containers are never removed
//! because state is missing.
//!
//! Every time the loop decides with (backoff, retries, stability) is the
//! injected clock's monotonic reading, never the wall clock (`crate::clock`).

pub mod book;
pub mod execute;
pub mod liveness;
pub mod plan;

use crate::clock::{Clock, SystemClock};
use crate::driver::{container_name, ContainerDriver, DriverError, ImageProvider};
use crate::health::{HealthTarget, Verdicts};
use crate::outbox::Outbox;
use crate::retention::{self, Release, Releases};
use crate::state::RestartLog;
use crate::view::{Apps, Writer};
use book::{Exit, Ledger};
use execute::Executor;
use outpost_protocol::{Digest, EventKind, Manifest};
use plan::{DesiredApp, Observed, Policy};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct Reconciler {
    pub exec: Executor,
    pub outbox: Outbox,
    /// The `apps` part of the view; the reconciler is its only writer.
    pub apps: Writer<Apps>,
    restart_log: RestartLog,
    pub policy: Policy,
    pub resync: Duration,
    pub desired: watch::Receiver<Option<Arc<Manifest>>>,
    pub health_targets: watch::Sender<BTreeMap<String, HealthTarget>>,
    /// The health task's verdicts per app (readiness of start-first
    /// replacements, liveness).
    pub verdicts: watch::Receiver<Verdicts>,
    /// Per-app books, failed actions, containers seen running (`book.rs`).
    ledger: Ledger,
    /// Restart counts as last persisted, to write only on change.
    saved_restarts: BTreeMap<String, u32>,
    /// Monotonic time for every decision; `SystemClock` from construction
    /// (agent start) unless a test injects another.
    clock: Arc<dyn Clock>,
    /// Where the record of settled releases lives (the image store's dir), and
    /// the record; `None` until [`Reconciler::with_retention`] (tests).
    retention: Option<(PathBuf, Releases)>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reconciler")
    }
}

fn desired_apps(m: &Manifest) -> BTreeMap<String, DesiredApp> {
    m.apps
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

/// What one observation of the machine found.
struct Observation {
    containers: BTreeMap<String, crate::driver::ObservedContainer>,
    /// Desired images present in the store.
    present: BTreeSet<Digest>,
    /// Images existing containers were created from.
    in_use: BTreeSet<Digest>,
}

async fn observe(
    driver: Arc<dyn ContainerDriver>,
    images: Arc<dyn ImageProvider>,
    desired: &BTreeMap<String, DesiredApp>,
) -> Result<Observation, DriverError> {
    let wanted: Vec<_> = desired.values().map(|d| d.spec.image.clone()).collect();
    tokio::task::spawn_blocking(move || {
        let containers = driver
            .list()?
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        let present = wanted
            .iter()
            .filter(|i| images.present(i))
            .map(|i| i.digest)
            .collect();
        Ok(Observation {
            containers,
            present,
            in_use: driver.images_in_use()?,
        })
    })
    .await
    .map_err(|e| DriverError::new("task", "observe", e))?
}

impl Reconciler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        exec: Executor,
        outbox: Outbox,
        apps: Writer<Apps>,
        restart_log: RestartLog,
        policy: Policy,
        resync: Duration,
        desired: watch::Receiver<Option<Arc<Manifest>>>,
        health_targets: watch::Sender<BTreeMap<String, HealthTarget>>,
        verdicts: watch::Receiver<Verdicts>,
        restarts: BTreeMap<String, u32>,
    ) -> Reconciler {
        Reconciler {
            exec,
            outbox,
            apps,
            restart_log,
            policy,
            resync,
            desired,
            health_targets,
            verdicts,
            ledger: Ledger::with_restarts(&restarts),
            saved_restarts: restarts,
            clock: Arc::new(SystemClock::new()),
            retention: None,
        }
    }

    /// Decide with `clock`'s monotonic time instead of the system's (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Reconciler {
        self.clock = clock;
        self
    }

    /// Keep the record of settled releases in `images_dir` and collect images
    /// no longer needed once a new release settles (see [`crate::retention`]).
    pub fn with_retention(mut self, images_dir: PathBuf) -> Reconciler {
        let releases = Releases::load(&images_dir).unwrap_or_else(|e| {
            // Losing the record only means the previous release's images may
            // be collected once; the current one is the desired manifest.
            tracing::warn!(error = %e, "starting with an empty release record");
            Releases::default()
        });
        self.retention = Some((images_dir, releases));
        self
    }

    /// Images garbage collection must keep right now.
    fn keep(
        &self,
        desired: &BTreeMap<String, DesiredApp>,
        in_use: &BTreeSet<Digest>,
    ) -> BTreeSet<Digest> {
        let wanted = desired.values().map(|d| d.spec.image.digest).collect();
        let releases = self
            .retention
            .as_ref()
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        retention::keep_set(&releases, &wanted, in_use)
    }

    /// What it keeps at the least: everything but the previous release.
    fn essential(
        &self,
        desired: &BTreeMap<String, DesiredApp>,
        in_use: &BTreeSet<Digest>,
    ) -> BTreeSet<Digest> {
        let wanted = desired.values().map(|d| d.spec.image.digest).collect();
        let current = Releases {
            current: self.retention.as_ref().and_then(|(_, r)| r.current.clone()),
            previous: None,
        };
        retention::keep_set(&current, &wanted, in_use)
    }

    /// A release settled (every app as desired, nothing left to do): record it
    /// once and collect what neither it nor the one before it uses.
    async fn release_settled(
        &mut self,
        manifest: &Manifest,
        desired: &BTreeMap<String, DesiredApp>,
        in_use: &BTreeSet<Digest>,
    ) {
        let Some((dir, releases)) = &self.retention else {
            return;
        };
        let Some(next) = releases.settled(&Release::of(manifest)) else {
            return;
        };
        let device = self.outbox.device_id().clone();
        let dir = dir.clone();
        let saved = {
            let (dir, next) = (dir.clone(), next.clone());
            tokio::task::spawn_blocking(move || next.save(&dir)).await
        };
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(device_id = %device, error = %e, "recording the settled release")
            }
            Err(e) => {
                tracing::error!(device_id = %device, error = %e, "recording the settled release")
            }
        }
        self.retention = Some((dir, next));
        let keep = self.keep(desired, in_use);
        let images = self.exec.images.clone();
        let generation = manifest.generation;
        match tokio::task::spawn_blocking(move || images.collect(&keep)).await {
            Ok(Ok(Some(r))) => tracing::info!(
                device_id = %device, generation,
                removed_images = r.removed_images.len(), freed_bytes = r.freed_bytes,
                used_bytes = r.used_bytes, budget_bytes = r.budget_bytes,
                "release settled; unused images collected"
            ),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(device_id = %device, error = %e, "collecting images"),
            Err(e) => tracing::warn!(device_id = %device, error = %e, "collecting images"),
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut wait = Duration::ZERO;
        // The health task may end before this loop (shutdown): then only the
        // other wake-ups remain.
        let mut verdicts_open = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.desired.changed() => if r.is_err() { break },
                r = self.verdicts.changed(), if verdicts_open => verdicts_open = r.is_ok(),
                _ = tokio::time::sleep(wait) => {}
            }
            if cancel.is_cancelled() {
                break;
            }
            wait = self.pass().await.min(self.resync);
        }
        tracing::info!(device_id = %self.outbox.device_id(), "reconcile loop stopped; containers left running");
    }

    /// One observe → plan → execute pass; returns when the next is due.
    pub async fn pass(&mut self) -> Duration {
        let Some(manifest) = self.desired.borrow_and_update().clone() else {
            return self.resync;
        };
        let device = self.outbox.device_id().clone();
        let desired = desired_apps(&manifest);
        let Observation {
            containers,
            present: images,
            in_use,
        } = match observe(self.exec.driver.clone(), self.exec.images.clone(), &desired).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(device_id = %device, error = %e, "cannot observe the runtime");
                return self.resync;
            }
        };
        self.exec.images.protect(
            &self.keep(&desired, &in_use),
            &self.essential(&desired, &in_use),
        );
        let now = self.clock.mono_ms();

        for Exit {
            app,
            container: name,
            code,
        } in self.ledger.observe(&desired, &containers, now)
        {
            tracing::warn!(device_id = %device, app = %app, container = %name, code, "app exited");
            self.outbox
                .event(EventKind::AppExited {
                    app: app.clone(),
                    code: code.unwrap_or(-1),
                })
                .await;
        }

        let verdicts = self.verdicts.borrow_and_update().clone();
        for u in self.ledger.judge_liveness(&desired, &containers, &verdicts) {
            match u.restart {
                Some(restarts) => {
                    tracing::warn!(device_id = %device, app = %u.app, generation = manifest.generation, restarts, reason = %u.reason, "app unhealthy after it was ready; restarting it");
                    self.outbox
                        .event(EventKind::AppUnhealthyRestarted {
                            app: u.app,
                            restarts,
                            reason: u.reason,
                        })
                        .await;
                }
                None => {
                    tracing::warn!(device_id = %device, app = %u.app, generation = manifest.generation, reason = %u.reason, "app unhealthy after it was ready; its restart policy leaves it running");
                }
            }
        }

        let observed = Observed {
            containers: containers.clone(),
            images,
            books: self.ledger.books.clone(),
            ready: verdicts
                .iter()
                .filter(|(_, v)| v.ready == Some(true))
                .map(|(app, _)| app.clone())
                .collect(),
        };
        let plan = plan::plan(&desired, &observed, now, &self.policy);
        let acted = !plan.is_settled();
        if acted {
            tracing::debug!(device_id = %device, generation = manifest.generation, actions = ?plan.actions, "reconcile plan");
        }
        let specs = desired
            .iter()
            .map(|(k, d)| (k.clone(), d.spec.clone()))
            .collect();
        let outcomes = self
            .exec
            .run(&plan.actions, &specs, &self.ledger.restarts())
            .await;
        // Outcomes are booked when execution is over (a pull may take minutes):
        // a start counts toward stability, a failure's retry delay, from then.
        let done = self.clock.mono_ms();
        let mut after = containers;
        for o in outcomes {
            self.ledger
                .record(o, &desired, &mut after, done, &self.policy);
        }
        self.ledger.forget_undesired(&desired);
        self.persist_restarts().await;
        if book::settled(acted, &self.ledger, &desired, &after) {
            self.release_settled(&manifest, &desired, &in_use).await;
        }
        // The status uses the instant the plan was made at, so an app the plan
        // left backing off shows `BackingOff`, not a state its next pass changes.
        self.publish_view(&desired, &after, now);
        let targets = book::health_targets(&desired, &after);
        self.health_targets.send_if_modified(|t| {
            let changed = *t != targets;
            *t = targets;
            changed
        });
        if acted {
            Duration::from_millis(100)
        } else {
            plan.requeue_after_ms
                .map_or(self.resync, Duration::from_millis)
        }
    }

    async fn persist_restarts(&mut self) {
        let now = self.ledger.persisted_restarts();
        if now == self.saved_restarts {
            return;
        }
        let log = self.restart_log.clone();
        let copy = now.clone();
        match tokio::task::spawn_blocking(move || log.save(&copy)).await {
            Ok(Ok(())) => self.saved_restarts = now,
            Ok(Err(e)) => tracing::error!(error = %e, "persisting restart counters"),
            Err(e) => tracing::error!(error = %e, "persisting restart counters"),
        }
    }

    fn publish_view(
        &self,
        desired: &BTreeMap<String, DesiredApp>,
        containers: &book::Containers,
        now: u64,
    ) {
        let mut apps = book::app_statuses(desired, containers, &self.ledger, now, &self.policy);
        for (name, a) in apps.iter_mut() {
            // Readiness belongs to the health task: `Some(false)` only says the
            // app has a check; the view shows the task's verdict (`crate::view`).
            if d_has_health(desired, name) {
                a.ready = Some(false);
            }
        }
        // `applied` is the inbox's (it accepted the manifest), not written here.
        self.apps.send_replace(apps);
    }
}

fn d_has_health(desired: &BTreeMap<String, DesiredApp>, app: &str) -> bool {
    desired.get(app).is_some_and(|d| d.spec.health.is_some())
}

#[cfg(test)]
mod tests;
