//! Level-triggered reconciliation: observe the runtime, book what it shows
//! (`book.rs`, pure), `plan` (`plan.rs`, pure), execute (`execute.rs`), book the
//! outcomes (pure again), publish.
//!
//! One loop runs a pass on every accepted manifest, on every change of the
//! health task's verdicts (readiness for hand-over updates, liveness: an app
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
pub mod release;

use crate::clock::{Clock, SystemClock};
use crate::driver::{container_name, ContainerDriver, DriverError, ImageProvider};
use crate::health::{HealthTarget, Verdicts};
use crate::outbox::Outbox;
use crate::retention::{self, Release, Releases};
use crate::state::{ReleaseLog, RestartLog};
use crate::view::{Apps, Release as ReleaseView, Writer};
use book::{Exit, Ledger};
use execute::Executor;
use outpost_protocol::{
    AppState, AppStatus, Digest, EventKind, ImageRef, Manifest, ReleasePhase, ReleaseStatus,
    RestartPolicy,
};
use plan::{DesiredApp, Observed, Policy};
use release::{AppFacts, Gate, Judgement, Record, ReleaseId, Run, Transition};
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
    /// The health task's verdicts per app (readiness of hand-over
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
    /// Trial, commit and rollback of releases (`release.rs`): the record as
    /// persisted, where it is persisted (`None`: memory only), the trial this
    /// process runs, and the release part of the view.
    record: Record,
    release_log: Option<ReleaseLog>,
    trial: Option<TrialRun>,
    release_view: Option<Writer<ReleaseView>>,
    /// Pulls of a release still downloading, retried apart from the apps'
    /// own books so a registry outage never delays a crashed app's restart.
    downloads: BTreeMap<Digest, (u32, u64)>,
    /// The last failed download per app of the release downloading (shown as
    /// its `last_error`).
    download_errors: BTreeMap<String, book::LastError>,
    /// The release and app last reported as waiting for a lock (one event).
    waiting_for: Option<(ReleaseId, String)>,
}

/// The trial this process started.
#[derive(Debug, Clone)]
struct TrialRun {
    id: ReleaseId,
    started_ms: u64,
    /// Containers ready without a break since (monotonic ms).
    ready_since: BTreeMap<String, u64>,
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
    /// Wanted images (the target's and the committed release's) present in
    /// the store.
    present: BTreeSet<Digest>,
    /// Images existing containers were created from.
    in_use: BTreeSet<Digest>,
}

async fn observe(
    driver: Arc<dyn ContainerDriver>,
    images: Arc<dyn ImageProvider>,
    wanted: Vec<ImageRef>,
) -> Result<Observation, DriverError> {
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
            record: Record::default(),
            release_log: None,
            trial: None,
            release_view: None,
            downloads: BTreeMap::new(),
            download_errors: BTreeMap::new(),
            waiting_for: None,
        }
    }

    /// Persist the release record through `log` (starting from `saved`, the
    /// bytes loaded at start) and publish the release state in `view`.
    pub fn with_releases(
        mut self,
        log: ReleaseLog,
        saved: Option<&[u8]>,
        view: Writer<ReleaseView>,
    ) -> Reconciler {
        self.record = match saved.map(serde_json::from_slice::<Record>) {
            None => Record::default(),
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                // Without the record a rollback has nowhere to go; the
                // accepted manifest still runs, and its trial starts over.
                tracing::error!(device_id = %self.outbox.device_id(), error = %e, "the release record is unreadable; starting without one");
                Record::default()
            }
        };
        self.release_log = Some(log);
        self.release_view = Some(view);
        self
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
    fn keep(&self, wanted: &BTreeSet<Digest>, in_use: &BTreeSet<Digest>) -> BTreeSet<Digest> {
        let releases = self
            .retention
            .as_ref()
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        retention::keep_set(&releases, wanted, in_use)
    }

    /// What it keeps at the least: everything but the previous release.
    fn essential(&self, wanted: &BTreeSet<Digest>, in_use: &BTreeSet<Digest>) -> BTreeSet<Digest> {
        let current = Releases {
            current: self.retention.as_ref().and_then(|(_, r)| r.current.clone()),
            previous: None,
        };
        retention::keep_set(&current, wanted, in_use)
    }

    /// A release settled (every app as desired, nothing left to do): record it
    /// once and collect what neither it nor the one before it uses.
    async fn release_settled(
        &mut self,
        manifest: &Manifest,
        wanted: &BTreeSet<Digest>,
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
        let keep = self.keep(wanted, in_use);
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

    /// One observe → route → plan → execute pass; returns when the next is
    /// due.
    pub async fn pass(&mut self) -> Duration {
        let Some(manifest) = self.desired.borrow_and_update().clone() else {
            return self.resync;
        };
        let device = self.outbox.device_id().clone();
        let id = manifest.release_id();
        let target = desired_apps(&manifest);
        let committed_apps = self
            .record
            .committed
            .as_ref()
            .map(|c| desired_apps(&c.manifest));
        let wanted_refs: Vec<ImageRef> = target
            .values()
            .chain(committed_apps.iter().flat_map(|c| c.values()))
            .map(|d| d.spec.image.clone())
            .collect();
        let wanted: BTreeSet<Digest> = wanted_refs.iter().map(|i| i.digest).collect();
        let Observation {
            containers,
            present: images,
            in_use,
        } = match observe(
            self.exec.driver.clone(),
            self.exec.images.clone(),
            wanted_refs,
        )
        .await
        {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(device_id = %device, error = %e, "cannot observe the runtime");
                return self.resync;
            }
        };
        self.exec.images.protect(
            &self.keep(&wanted, &in_use),
            &self.essential(&wanted, &in_use),
        );
        let now = self.clock.mono_ms();

        // Which release to work towards (`release.rs`).
        let mut images = images;
        let trial_running = self.trial.as_ref().is_some_and(|t| t.id == id);
        let mut gate = download_gate(&target, &containers, &images);
        let mut route = if release::is_renewal(&self.record, &manifest) {
            release::renewed()
        } else {
            release::route(&self.record, id, trial_running, &gate)
        };
        if route.phase == ReleasePhase::Downloading {
            // Pull now; if that completes the release's images, it starts in
            // this very pass.
            self.download(&target, &images, now).await;
            images = self.recheck(&target, images).await;
            gate = download_gate(&target, &containers, &images);
            route = release::route(&self.record, id, trial_running, &gate);
        } else {
            self.download_errors.clear();
        }
        // Images here and the release about to start: a held update lock of an
        // app it would stop defers it (the check costs a flock per app, made
        // only while a release waits to start).
        if route.transition == Some(Transition::StartTrial) && self.record.trial.is_none() {
            if let Some(app) = self.held_lock(&target, &containers).await {
                gate = Gate::Locked { app };
                route = release::route(&self.record, id, trial_running, &gate);
            }
        }
        if let ReleasePhase::WaitingForLock { app } = &route.phase {
            if self.waiting_for != Some((id, app.clone())) {
                self.waiting_for = Some((id, app.clone()));
                tracing::info!(device_id = %device, app = %app, generation = id.1, "release waits: the app holds its update lock");
                self.outbox
                    .event(EventKind::WaitingForLock {
                        app: app.clone(),
                        release: id,
                    })
                    .await;
            }
        } else {
            self.waiting_for = None;
        }
        if let Some(t) = route.transition.clone() {
            self.transition(&t, &manifest, now).await;
        }

        let mut run = match route.run {
            Run::Target => Some(target.clone()),
            Run::Committed => committed_apps.clone(),
        };
        let empty = BTreeMap::new();
        let exits = self
            .ledger
            .observe(run.as_ref().unwrap_or(&empty), &containers, now);
        for Exit {
            app,
            container: name,
            code,
        } in &exits
        {
            tracing::warn!(device_id = %device, app = %app, container = %name, code, "app exited");
            // The status keeps the last exit (code or signal, and when) until
            // the app has run stably again.
            let at = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(self.clock.wall_ms()),
            );
            self.ledger
                .note_exit(app, format!("{} at {at}", book::describe_exit(*code)));
            self.outbox
                .event(EventKind::AppExited {
                    app: app.clone(),
                    code: code.unwrap_or(-1),
                })
                .await;
        }

        let verdicts = self.verdicts.borrow_and_update().clone();
        let unhealthy =
            self.ledger
                .judge_liveness(run.as_ref().unwrap_or(&empty), &containers, &verdicts);
        for u in &unhealthy {
            match u.restart {
                Some(restarts) => {
                    tracing::warn!(device_id = %device, app = %u.app, generation = manifest.generation, restarts, reason = %u.reason, "app unhealthy after it was ready; restarting it");
                    self.outbox
                        .event(EventKind::AppUnhealthyRestarted {
                            app: u.app.clone(),
                            restarts,
                            reason: u.reason.clone(),
                        })
                        .await;
                }
                None => {
                    tracing::warn!(device_id = %device, app = %u.app, generation = manifest.generation, reason = %u.reason, "app unhealthy after it was ready; its restart policy leaves it running");
                }
            }
        }

        // A trial this process runs: judge it.
        if route.run == Run::Target && self.trial.as_ref().is_some_and(|t| t.id == id) {
            let facts = self.trial_facts(&target, &containers, &verdicts, &exits, &unhealthy, now);
            let started = self.trial.as_ref().map_or(now, |t| t.started_ms);
            let t = match release::judge(&facts, &manifest.release, started, now) {
                Judgement::Pending => None,
                Judgement::Stable => Some(Transition::Commit),
                Judgement::Failed { app, reason } if self.record.committed.is_some() => {
                    Some(Transition::RollBack { app, reason })
                }
                Judgement::Failed { app, reason } => Some(Transition::Fail { app, reason }),
            };
            if let Some(t) = t {
                self.transition(&t, &manifest, now).await;
                route = release::route(&self.record, id, false, &gate);
                if route.run == Run::Committed {
                    run = committed_apps.clone();
                }
            }
        }

        let Some(desired) = run else {
            // Nothing committed to run while the first release downloads (or
            // waits): containers are left exactly as they are.
            self.publish_view(
                &BTreeMap::new(),
                &containers,
                now,
                waiting(&route.phase).then_some(&target),
            );
            self.publish_release(id, &route.phase);
            return self.download_wait(now).unwrap_or(self.resync);
        };

        let observed = Observed {
            containers: containers.clone(),
            images,
            books: self.ledger.books.clone(),
            // Readiness of the container the plan would hand over to, never a
            // verdict about another container of the same app.
            ready: verdicts
                .iter()
                .filter(|(app, v)| {
                    v.ready == Some(true)
                        && desired
                            .get(*app)
                            .is_some_and(|d| d.container == v.container)
                })
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
        // Images are recorded (and the unused collected) only for a committed
        // release: during a trial the committed one's images must stay.
        if route.phase == ReleasePhase::Committed
            && book::settled(acted, &self.ledger, &desired, &after)
        {
            self.release_settled(&manifest, &wanted, &in_use).await;
        }
        // The status uses the instant the plan was made at, so an app the plan
        // left backing off shows `BackingOff`, not a state its next pass changes.
        self.publish_view(
            &desired,
            &after,
            now,
            waiting(&route.phase).then_some(&target),
        );
        self.publish_release(id, &route.phase);
        let targets = book::health_targets(&desired, &after);
        self.health_targets.send_if_modified(|t| {
            let changed = *t != targets;
            *t = targets;
            changed
        });
        let mut wait = if acted {
            Duration::from_millis(100)
        } else {
            plan.requeue_after_ms
                .map_or(self.resync, Duration::from_millis)
        };
        // A trial is looked at every second, so it commits or rolls back on
        // time even when nothing else wakes the loop.
        if route.phase == ReleasePhase::Trial {
            wait = wait.min(Duration::from_secs(1));
        }
        if let Some(d) = self.download_wait(now) {
            wait = wait.min(d);
        }
        wait
    }

    /// The first app whose running container the target would stop and that
    /// holds its update lock (unless the target overrides its lock).
    async fn held_lock(
        &self,
        target: &BTreeMap<String, DesiredApp>,
        containers: &book::Containers,
    ) -> Option<String> {
        let apps: BTreeSet<String> = containers
            .values()
            .filter(|c| c.status.is_running())
            .filter(|c| {
                target
                    .get(&c.app)
                    .is_none_or(|d| d.container != c.name && !d.spec.override_lock)
            })
            .map(|c| c.app.clone())
            .collect();
        if apps.is_empty() {
            return None;
        }
        let driver = self.exec.driver.clone();
        let device = self.outbox.device_id().clone();
        tokio::task::spawn_blocking(move || {
            apps.into_iter().find(|app| match driver.lock_held(app) {
                Ok(held) => held,
                Err(e) => {
                    // An unreadable lock is not a held one: updates must not
                    // stall on a broken file.
                    tracing::warn!(device_id = %device, app = %app, error = %e, "probing the update lock");
                    false
                }
            })
        })
        .await
        .ok()
        .flatten()
    }

    /// When the next download retry is due, while a release downloads.
    fn download_wait(&self, now: u64) -> Option<Duration> {
        self.downloads
            .values()
            .map(|(_, at)| Duration::from_millis(at.saturating_sub(now)))
            .min()
    }

    /// Which of the target's images are present now (after a download).
    async fn recheck(
        &self,
        target: &BTreeMap<String, DesiredApp>,
        mut present: BTreeSet<Digest>,
    ) -> BTreeSet<Digest> {
        let images = self.exec.images.clone();
        let refs: Vec<ImageRef> = target.values().map(|d| d.spec.image.clone()).collect();
        if let Ok(found) = tokio::task::spawn_blocking(move || {
            refs.into_iter()
                .filter(|i| images.present(i))
                .map(|i| i.digest)
                .collect::<Vec<_>>()
        })
        .await
        {
            present.extend(found);
        }
        present
    }

    /// Each app of the release under trial, as `release::judge` needs it.
    fn trial_facts(
        &mut self,
        target: &BTreeMap<String, DesiredApp>,
        containers: &book::Containers,
        verdicts: &crate::health::Verdicts,
        exits: &[Exit],
        unhealthy: &[book::Unhealthy],
        now: u64,
    ) -> BTreeMap<String, AppFacts> {
        let Some(trial) = self.trial.as_mut() else {
            return BTreeMap::new();
        };
        let mut facts = BTreeMap::new();
        for (app, d) in target {
            let book = self.ledger.books.get(app);
            let status = containers.get(&d.container).map(|c| c.status);
            let verdict = verdicts.get(app).filter(|v| {
                v.container == d.container
                    && status == Some(crate::driver::ContainerStatus::Running { pid: v.pid })
            });
            if verdict.is_some_and(|v| v.ready == Some(true)) {
                trial.ready_since.entry(d.container.clone()).or_insert(now);
            } else {
                trial.ready_since.remove(&d.container);
            }
            let failed_exit = exits
                .iter()
                .find(|e| e.container == d.container && exit_fails(d.spec.restart, e.code));
            let failure = if let Some(e) = failed_exit {
                Some(book::describe_exit(e.code))
            } else if let Some(u) = unhealthy.iter().find(|u| &u.app == app) {
                Some(format!(
                    "health check failed after it was ready: {}",
                    u.reason
                ))
            } else {
                self.ledger
                    .errors
                    .get(app)
                    .filter(|e| !e.retryable)
                    .map(|e| e.message.clone())
            };
            let up_since = match status {
                Some(crate::driver::ContainerStatus::Running { .. }) => {
                    book.and_then(|b| b.started_at_ms)
                }
                // Finished as its policy allows (a one-shot app).
                Some(crate::driver::ContainerStatus::Exited { code })
                    if !exit_fails(d.spec.restart, code) =>
                {
                    Some(0)
                }
                _ => None,
            };
            let waiting = self
                .ledger
                .errors
                .get(app)
                .map(|e| e.message.clone())
                .or_else(|| {
                    verdicts
                        .get(app)
                        .and_then(|v| v.failure.as_ref())
                        .map(|(n, why)| format!("health check failed {n} times: {why}"))
                });
            facts.insert(
                app.clone(),
                AppFacts {
                    up_since,
                    checked: d.spec.health.is_some(),
                    ready_since: trial.ready_since.get(&d.container).copied(),
                    failure,
                    waiting,
                },
            );
        }
        facts
    }

    /// Carry out a release transition: persist the record first (durably:
    /// the containers it announces change only after), then report it.
    async fn transition(&mut self, t: &Transition, manifest: &Manifest, now: u64) {
        let device = self.outbox.device_id().clone();
        let id = manifest.release_id();
        let next = release::apply(&self.record, t, manifest);
        if let Some(log) = &self.release_log {
            let log = log.clone();
            let bytes = serde_json::to_vec(&next).unwrap_or_default();
            match tokio::task::spawn_blocking(move || log.save(&bytes)).await {
                Ok(Ok(())) => {}
                // Going on is the lesser evil: a device whose disk refuses
                // writes would otherwise never update again. The log says
                // that a power cut now would not roll back.
                Ok(Err(e)) => {
                    tracing::error!(device_id = %device, generation = id.1, error = %e, "persisting the release record")
                }
                Err(e) => {
                    tracing::error!(device_id = %device, generation = id.1, error = %e, "persisting the release record")
                }
            }
        }
        let to = self.record.committed.as_ref().map(|c| c.id);
        self.record = next;
        match t {
            Transition::StartTrial => {
                tracing::info!(device_id = %device, epoch = id.0, generation = id.1, "release trial started");
                self.trial = Some(TrialRun {
                    id,
                    started_ms: now,
                    ready_since: BTreeMap::new(),
                });
                self.outbox
                    .event(EventKind::ReleaseTrial { release: id })
                    .await;
            }
            Transition::Commit => {
                tracing::info!(device_id = %device, epoch = id.0, generation = id.1, "release committed");
                self.trial = None;
                self.outbox
                    .event(EventKind::ReleaseCommitted { release: id })
                    .await;
            }
            Transition::RollBack { app, reason } => {
                let to = to.unwrap_or(id);
                tracing::warn!(device_id = %device, app = %app, generation = id.1, to_generation = to.1, reason = %reason, "release failed its trial; rolling back");
                self.trial = None;
                self.outbox
                    .event(EventKind::RolledBack {
                        from: id,
                        to,
                        app: app.clone(),
                        reason: reason.clone(),
                    })
                    .await;
            }
            Transition::Fail { app, reason } => {
                tracing::error!(device_id = %device, app = %app, generation = id.1, reason = %reason, "release failed its trial and there is no committed release to go back to; leaving it running");
                self.trial = None;
                self.outbox
                    .event(EventKind::AppFailed {
                        app: app.clone(),
                        error: format!("release failed its trial: {reason}"),
                    })
                    .await;
            }
        }
    }

    /// Pull what the downloading release still misses, each image retried
    /// with its own backoff.
    async fn download(
        &mut self,
        target: &BTreeMap<String, DesiredApp>,
        present: &BTreeSet<Digest>,
        now: u64,
    ) {
        self.downloads.retain(|d, _| !present.contains(d));
        let actions: Vec<plan::Action> = target
            .values()
            .filter(|d| d.spec.update.downloads_first() && !present.contains(&d.spec.image.digest))
            .filter(|d| {
                self.downloads
                    .get(&d.spec.image.digest)
                    .is_none_or(|(_, at)| now >= *at)
            })
            .map(|d| plan::Action::Pull {
                app: d.spec.name.clone(),
                image: d.spec.image.clone(),
            })
            .collect();
        if actions.is_empty() {
            return;
        }
        let specs = target
            .iter()
            .map(|(k, d)| (k.clone(), d.spec.clone()))
            .collect();
        let outcomes = self.exec.run(&actions, &specs, &BTreeMap::new()).await;
        let done = self.clock.mono_ms();
        for o in outcomes {
            match o {
                execute::Outcome::Failed { app, error } => {
                    if let Some(d) = target.get(&app) {
                        let e = self.downloads.entry(d.spec.image.digest).or_default();
                        e.1 = done.saturating_add(self.policy.backoff_ms(e.0));
                        e.0 = e.0.saturating_add(1);
                    }
                    self.download_errors.insert(
                        app,
                        book::LastError {
                            message: crate::driver::error_chain(&error),
                            retryable: error.retryable(),
                        },
                    );
                }
                execute::Outcome::Pulled { app } => {
                    self.download_errors.remove(&app);
                }
                _ => {}
            }
        }
    }

    fn publish_release(&self, target: ReleaseId, phase: &ReleasePhase) {
        if let Some(view) = &self.release_view {
            view.send_replace(Some(ReleaseStatus {
                target,
                phase: phase.clone(),
                committed: self.record.committed.as_ref().map(|c| c.id),
            }));
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

    /// Publish the apps being run (`desired`); while a target waits
    /// (`waiting_target`), its apps the running set lacks show as pending and a failed download is
    /// each app's `last_error`.
    fn publish_view(
        &self,
        desired: &BTreeMap<String, DesiredApp>,
        containers: &book::Containers,
        now: u64,
        waiting_target: Option<&BTreeMap<String, DesiredApp>>,
    ) {
        let mut apps = book::app_statuses(desired, containers, &self.ledger, now, &self.policy);
        for (name, a) in apps.iter_mut() {
            // Readiness belongs to the health task: `Some(false)` only says the
            // app has a check; the view shows the task's verdict (`crate::view`).
            if d_has_health(desired, name) {
                a.ready = Some(false);
            }
        }
        let Some(target) = waiting_target else {
            self.apps.send_replace(apps);
            return;
        };
        for (name, e) in &self.download_errors {
            let Some(d) = target.get(name) else { continue };
            let a = apps.entry(name.clone()).or_insert_with(|| AppStatus {
                name: name.clone(),
                state: AppState::Failed,
                restarts: 0,
                last_error: None,
                image_digest: Some(d.spec.image.digest),
                ready: None,
            });
            // The error names the pull and the image already.
            a.last_error.get_or_insert_with(|| e.message.clone());
        }
        for (name, d) in target {
            apps.entry(name.clone()).or_insert_with(|| AppStatus {
                name: name.clone(),
                state: AppState::Pending,
                restarts: 0,
                last_error: None,
                image_digest: Some(d.spec.image.digest),
                ready: d.spec.health.as_ref().map(|_| false),
            });
        }
        // `applied` is the inbox's (it accepted the manifest), not written here.
        self.apps.send_replace(apps);
    }
}

/// Is the target waiting (downloading, locked)? Then the status lists its
/// apps the running set lacks; a rolled-back release's apps are not shown.
fn waiting(phase: &ReleasePhase) -> bool {
    matches!(
        phase,
        ReleasePhase::Downloading | ReleasePhase::WaitingForLock { .. }
    )
}

/// Does this exit fail a release in trial? Any exit of an app its policy
/// keeps running, and a non-zero exit of any app.
fn exit_fails(restart: RestartPolicy, code: Option<i32>) -> bool {
    matches!(restart, RestartPolicy::Always) || code != Some(0)
}

/// Can the release start replacing containers, as far as images go? Every
/// download-first app whose container does not exist yet needs its image
/// here first.
fn download_gate(
    target: &BTreeMap<String, DesiredApp>,
    containers: &book::Containers,
    present: &BTreeSet<Digest>,
) -> Gate {
    let missing = target.values().any(|d| {
        d.spec.update.downloads_first()
            && !containers.contains_key(&d.container)
            && !present.contains(&d.spec.image.digest)
    });
    if missing {
        Gate::Downloading
    } else {
        Gate::Open
    }
}

fn d_has_health(desired: &BTreeMap<String, DesiredApp>, app: &str) -> bool {
    desired.get(app).is_some_and(|d| d.spec.health.is_some())
}

#[cfg(test)]
mod tests;
