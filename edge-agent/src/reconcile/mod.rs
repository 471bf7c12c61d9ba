//! Level-triggered reconciliation: observe the runtime, `plan` (pure), execute.
//!
//! One loop runs a pass on every accepted manifest, every `resync` interval (which
//! is how container exits are noticed: the runtime is polled, since a container
//! whose parent agent died reports no exit to us) and whenever a backoff is due.
//! With no manifest yet it does nothing at all, so containers are never removed
//! because state is missing.

pub mod execute;
pub mod plan;

use crate::driver::{container_name, ContainerDriver, ContainerStatus, DriverError, ImageProvider};
use crate::health::HealthTarget;
use crate::outbox::Outbox;
use crate::report::now_ms;
use crate::retention::{self, Release, Releases};
use crate::state::RestartLog;
use crate::view::{Apps, Writer};
use execute::{Executor, Outcome};
use outpost_protocol::{AppState, AppStatus, Digest, EventKind, Manifest, RestartPolicy};
use plan::{AppBook, CreateReason, DesiredApp, Observed, Policy};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A container running this long resets its app's consecutive-restart count.
const STABLE_AFTER_MS: u64 = 10_000;

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
    pub ready: watch::Receiver<BTreeSet<String>>,
    books: BTreeMap<String, AppBook>,
    last_errors: BTreeMap<String, String>,
    /// Containers we last saw (or made) running, to notice exits.
    running: BTreeMap<String, u32>,
    saved_restarts: BTreeMap<String, u32>,
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
        ready: watch::Receiver<BTreeSet<String>>,
        restarts: BTreeMap<String, u32>,
    ) -> Reconciler {
        let books = restarts
            .iter()
            .map(|(app, n)| {
                (
                    app.clone(),
                    AppBook {
                        restarts: *n,
                        ..AppBook::default()
                    },
                )
            })
            .collect();
        Reconciler {
            exec,
            outbox,
            apps,
            restart_log,
            policy,
            resync,
            desired,
            health_targets,
            ready,
            books,
            last_errors: BTreeMap::new(),
            running: BTreeMap::new(),
            saved_restarts: restarts,
            retention: None,
        }
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
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.desired.changed() => if r.is_err() { break },
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
        let now = now_ms();

        // Notice exits: containers we saw running that are now exited or gone.
        let mut exits = vec![];
        for (name, pid) in &self.running {
            let status = containers.get(name).map(|c| c.status);
            if !matches!(status, Some(ContainerStatus::Running { pid: p }) if p == *pid) {
                let code = match status {
                    Some(ContainerStatus::Exited { code }) => code,
                    _ => None,
                };
                exits.push((name.clone(), code));
            }
        }
        for (name, code) in exits {
            self.running.remove(&name);
            let app = crate::driver::app_of(&name).unwrap_or("?").to_string();
            tracing::warn!(device_id = %device, app = %app, container = %name, code, "app exited");
            self.outbox
                .event(EventKind::AppExited {
                    app: app.clone(),
                    code: code.unwrap_or(-1),
                })
                .await;
        }
        for (name, c) in &containers {
            let Some(d) = desired.get(&c.app).filter(|d| &d.container == name) else {
                continue;
            };
            let book = self.books.entry(d.spec.name.clone()).or_default();
            match c.status {
                ContainerStatus::Running { pid } => {
                    if self.running.insert(name.clone(), pid).is_none() {
                        // Adopted (agent restart) or started elsewhere: count
                        // stability from now.
                        book.started_at_ms.get_or_insert(now);
                    }
                    if book.consecutive > 0
                        && book
                            .started_at_ms
                            .is_some_and(|t| now.saturating_sub(t) >= STABLE_AFTER_MS)
                    {
                        book.consecutive = 0;
                    }
                }
                ContainerStatus::Exited { .. } => {
                    book.exited_at_ms.get_or_insert(now);
                    book.started_at_ms = None;
                }
                ContainerStatus::Created => {}
            }
        }

        let observed = Observed {
            containers: containers.clone(),
            images,
            books: self.books.clone(),
            ready: self.ready.borrow().clone(),
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
        let restarts = self
            .books
            .iter()
            .map(|(k, b)| (k.clone(), b.restarts))
            .collect();
        let outcomes = self.exec.run(&plan.actions, &specs, &restarts).await;
        let mut after = containers;
        for o in outcomes {
            let now = now_ms();
            match o {
                Outcome::Started {
                    app,
                    container,
                    pid,
                } => {
                    self.running.insert(container.clone(), pid);
                    if let Some(c) = after.get_mut(&container) {
                        c.status = ContainerStatus::Running { pid };
                    }
                    let b = self.books.entry(app.clone()).or_default();
                    b.started_at_ms = Some(now);
                    b.failures = 0;
                    b.retry_at_ms = None;
                    self.last_errors.remove(&app);
                }
                Outcome::Created { app, reason } => {
                    let b = self.books.entry(app.clone()).or_default();
                    b.exited_at_ms = None;
                    if reason == CreateReason::Restart {
                        b.restarts += 1;
                        b.consecutive += 1;
                    }
                    if let Some(d) = desired.get(&app) {
                        after.insert(
                            d.container.clone(),
                            crate::driver::ObservedContainer {
                                name: d.container.clone(),
                                app: app.clone(),
                                status: ContainerStatus::Created,
                            },
                        );
                    }
                }
                Outcome::Stopped { container, .. } => {
                    self.running.remove(&container);
                }
                Outcome::Removed { container, .. } => {
                    self.running.remove(&container);
                    after.remove(&container);
                }
                Outcome::Failed { app, error } => {
                    let b = self.books.entry(app.clone()).or_default();
                    b.retry_at_ms = Some(now + self.policy.backoff_ms(b.failures));
                    b.failures = b.failures.saturating_add(1);
                    self.last_errors.insert(app, error);
                }
                Outcome::Pulled { .. } | Outcome::Kept { .. } => {}
            }
        }
        self.books.retain(|app, _| desired.contains_key(app));
        self.persist_restarts().await;
        let settled = !acted
            && self.last_errors.is_empty()
            && desired.values().all(|d| {
                after.get(&d.container).is_some_and(|c| {
                    c.status.is_running()
                        || matches!(c.status, ContainerStatus::Exited { code: Some(0) })
                })
            });
        if settled {
            self.release_settled(&manifest, &desired, &in_use).await;
        }
        self.publish_view(&desired, &after, now);
        let targets = desired
            .values()
            .filter_map(|d| {
                let check = d.spec.health.clone()?;
                match after.get(&d.container)?.status {
                    ContainerStatus::Running { pid } => Some((
                        d.spec.name.clone(),
                        HealthTarget {
                            container: d.container.clone(),
                            pid,
                            check,
                            isolated: d.spec.network == outpost_protocol::NetworkMode::Isolated,
                        },
                    )),
                    _ => None,
                }
            })
            .collect::<BTreeMap<_, _>>();
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
        let now: BTreeMap<String, u32> = self
            .books
            .iter()
            .filter(|(_, b)| b.restarts > 0)
            .map(|(k, b)| (k.clone(), b.restarts))
            .collect();
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
        containers: &BTreeMap<String, crate::driver::ObservedContainer>,
        now: u64,
    ) {
        let observed = Observed {
            containers: containers.clone(),
            books: self.books.clone(),
            ..Observed::default()
        };
        let mut apps = BTreeMap::new();
        for (name, d) in desired {
            let book = self.books.get(name).cloned().unwrap_or_default();
            let state = match containers.get(&d.container).map(|c| c.status) {
                Some(ContainerStatus::Running { pid }) => AppState::Running { pid },
                Some(ContainerStatus::Created) => AppState::Starting,
                Some(ContainerStatus::Exited { code }) => {
                    if let Some(ms) = plan::backoff_remaining(d, &observed, now, &self.policy) {
                        AppState::BackingOff {
                            retry_in_secs: ms.div_ceil(1000),
                        }
                    } else {
                        match d.spec.restart {
                            RestartPolicy::OnFailure { .. } if code != Some(0) => AppState::Failed,
                            _ => AppState::Exited {
                                code: code.unwrap_or(-1),
                            },
                        }
                    }
                }
                None if self.last_errors.contains_key(name) => AppState::Failed,
                None => AppState::Pending,
            };
            apps.insert(
                name.clone(),
                AppStatus {
                    name: name.clone(),
                    state,
                    restarts: book.restarts,
                    last_error: self.last_errors.get(name).cloned(),
                    image_digest: Some(d.spec.image.digest),
                    ready: None,
                },
            );
        }
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
