//! Reconcile loop against an in-memory device (fake image store and runtime),
//! on tokio's paused clock: time moves only when a test advances it.

use super::*;
use crate::clock::SteppableClock;
use crate::driver::{ContainerStatus, CreateRequest, ObservedContainer, PreparedImage};
use crate::report::Reporter;
use crate::state::Store;
use outpost_oci::OciError;
use outpost_protocol::{AppSpec, AppState, Digest, ImageRef, KeyId};
use outpost_runtime::RuntimeError;
use std::sync::Mutex;

#[derive(Default)]
pub struct FakeWorld {
    pub images: Mutex<BTreeSet<Digest>>,
    pub containers: Mutex<BTreeMap<String, (String, ContainerStatus)>>,
    pub next_pid: Mutex<u32>,
    /// Pulls fail as an unreachable registry makes them fail.
    pub fail_pulls: Mutex<bool>,
    /// Pulls fail as an image without a manifest for this platform does.
    pub wrong_platform: Mutex<bool>,
    pub pull_attempts: Mutex<u32>,
    /// Apps holding their update lock.
    pub locked: Mutex<BTreeSet<String>>,
}

pub struct FakeImages(pub Arc<FakeWorld>);
pub struct FakeDriver(pub Arc<FakeWorld>);

impl ImageProvider for FakeImages {
    fn present(&self, image: &ImageRef) -> bool {
        self.0.images.lock().unwrap().contains(&image.digest)
    }
    fn pull(
        &self,
        image: &ImageRef,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), DriverError> {
        *self.0.pull_attempts.lock().unwrap() += 1;
        if *self.0.fail_pulls.lock().unwrap() {
            return Err(DriverError::new(
                "pull",
                image.to_string(),
                OciError::Registry {
                    reference: image.to_string(),
                    detail: "registry unreachable".into(),
                },
            ));
        }
        if *self.0.wrong_platform.lock().unwrap() {
            return Err(DriverError::new(
                "pull",
                image.to_string(),
                OciError::NoPlatform {
                    image: image.digest,
                    wanted: "linux/riscv64".into(),
                    available: "linux/amd64, linux/arm64".into(),
                },
            ));
        }
        progress(0, 10);
        progress(10, 10);
        self.0.images.lock().unwrap().insert(image.digest);
        Ok(())
    }
    fn prepare(&self, image: &ImageRef) -> Result<PreparedImage, DriverError> {
        if !self.present(image) {
            return Err(DriverError::new(
                "prepare",
                image.to_string(),
                OciError::UnknownImage(image.digest),
            ));
        }
        Ok(PreparedImage {
            image: image.clone(),
            layers: vec![],
            config: Default::default(),
        })
    }
}

impl ContainerDriver for FakeDriver {
    fn list(&self) -> Result<Vec<ObservedContainer>, DriverError> {
        Ok(self
            .0
            .containers
            .lock()
            .unwrap()
            .iter()
            .map(|(name, (app, status))| ObservedContainer {
                name: name.clone(),
                app: app.clone(),
                status: *status,
            })
            .collect())
    }
    fn create(&self, req: &CreateRequest) -> Result<(), DriverError> {
        let mut c = self.0.containers.lock().unwrap();
        if c.contains_key(&req.container) {
            return Err(DriverError::new(
                "create",
                req.container.clone(),
                RuntimeError::Exists(req.container.clone()),
            ));
        }
        c.insert(
            req.container.clone(),
            (req.spec.name.clone(), ContainerStatus::Created),
        );
        Ok(())
    }
    fn start(&self, container: &str) -> Result<u32, DriverError> {
        let mut pid = self.0.next_pid.lock().unwrap();
        *pid += 1;
        let mut c = self.0.containers.lock().unwrap();
        let e = c.get_mut(container).ok_or_else(|| {
            DriverError::new("start", container, RuntimeError::NotFound(container.into()))
        })?;
        e.1 = ContainerStatus::Running { pid: *pid };
        Ok(*pid)
    }
    fn stop(&self, container: &str, _grace: Duration) -> Result<(), DriverError> {
        if let Some(e) = self.0.containers.lock().unwrap().get_mut(container) {
            e.1 = ContainerStatus::Exited { code: Some(143) };
        }
        Ok(())
    }
    fn remove(&self, container: &str) -> Result<(), DriverError> {
        self.0.containers.lock().unwrap().remove(container);
        Ok(())
    }
    fn lock_held(&self, app: &str) -> Result<bool, DriverError> {
        Ok(self.0.locked.lock().unwrap().contains(app))
    }
}

struct Rig {
    world: Arc<FakeWorld>,
    rec: Reconciler,
    desired_tx: Writer<crate::view::Desired>,
    reporter: Arc<Reporter>,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

fn rig() -> Rig {
    rig_with(
        Policy {
            base_backoff_ms: 1,
            max_backoff_ms: 1,
        },
        Arc::new(SystemClock::new()),
    )
}

fn rig_with(policy: Policy, clock: Arc<dyn Clock>) -> Rig {
    rig_on(policy, clock, Arc::new(FakeWorld::default()), None)
}

/// A rig on an existing device (`world`: containers and images survive, as
/// on a disk) whose agent starts with the release record `saved`.
fn rig_on(
    policy: Policy,
    clock: Arc<dyn Clock>,
    world: Arc<FakeWorld>,
    saved: Option<Vec<u8>>,
) -> Rig {
    let crate::report::ReporterRig {
        dir,
        store,
        outbox,
        writers,
        reporter,
        ..
    } = crate::report::ReporterRig::new("pi-1", 1);
    let exec = Executor {
        images: Arc::new(FakeImages(world.clone())),
        driver: Arc::new(FakeDriver(world.clone())),
        outbox: outbox.clone(),
        pulls: Arc::new(writers.pulls),
        volumes_dir: dir.path().join("volumes"),
        stop_grace: Duration::from_secs(1),
    };
    let desired_tx = writers.desired;
    let desired_rx = desired_tx.subscribe();
    let (health_tx, _) = watch::channel(BTreeMap::new());
    let (_verdicts_tx, verdicts_rx) = watch::channel(crate::health::Verdicts::new());
    let rec = Reconciler::new(
        exec,
        outbox,
        writers.apps,
        RestartLog::new(store.clone()),
        policy,
        Duration::from_secs(1),
        desired_rx,
        health_tx,
        verdicts_rx,
        BTreeMap::new(),
    )
    .with_clock(clock)
    .with_releases(
        crate::state::ReleaseLog::new(store.clone()),
        saved.as_deref(),
        writers.release,
    );
    Rig {
        world,
        rec,
        desired_tx,
        reporter,
        store,
        _dir: dir,
    }
}

fn manifest(generation: u64, apps: Vec<AppSpec>) -> Arc<Manifest> {
    Arc::new(Manifest {
        device_id: "pi-1".parse().unwrap(),
        epoch: 1,
        generation,
        issued_at: 0,
        key_id: KeyId("k".into()),
        apps,
        release: Default::default(),
        expires_at: outpost_protocol::NEVER,
    })
}

fn app(name: &str, img: u8) -> AppSpec {
    let image: ImageRef = format!("reg/{name}@sha256:{}", hex::encode([img; 32]))
        .parse()
        .unwrap();
    AppSpec::new(name, image)
}

fn running(w: &FakeWorld) -> Vec<(String, u32)> {
    w.containers
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(n, (_, s))| match s {
            ContainerStatus::Running { pid } => Some((n.clone(), *pid)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn without_a_manifest_nothing_is_touched() {
    let mut r = rig();
    r.world.containers.lock().unwrap().insert(
        "outpost-old-00000000".into(),
        ("old".into(), ContainerStatus::Running { pid: 5 }),
    );
    r.rec.pass().await;
    assert_eq!(running(&r.world).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn deploys_restarts_a_crash_and_replaces_on_update() {
    let mut r = rig();
    r.desired_tx
        .send_replace(Some(manifest(1, vec![app("web", 1)])));
    r.rec.pass().await;
    let first = running(&r.world);
    assert_eq!(first.len(), 1);
    assert_eq!(r.reporter.view().applied, Some((1, 1)));
    assert!(r.reporter.view().apps["web"].state.is_running());

    // A pass with nothing changed touches nothing.
    r.rec.pass().await;
    assert_eq!(running(&r.world), first);

    // Crash: the loop notices, then restarts after the (1 ms) backoff.
    r.world
        .containers
        .lock()
        .unwrap()
        .get_mut(&first[0].0)
        .unwrap()
        .1 = ContainerStatus::Exited { code: Some(137) };
    for _ in 0..3 {
        tokio::time::advance(Duration::from_millis(5)).await;
        r.rec.pass().await;
    }
    let second = running(&r.world);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].0, first[0].0);
    assert_ne!(second[0].1, first[0].1);
    assert_eq!(r.reporter.view().apps["web"].restarts, 1);

    // Update: a new spec replaces the container.
    r.desired_tx
        .send_replace(Some(manifest(2, vec![app("web", 2)])));
    r.rec.pass().await;
    let third = running(&r.world);
    assert_eq!(third.len(), 1);
    assert_ne!(third[0].0, first[0].0);
    assert_eq!(r.world.containers.lock().unwrap().len(), 1);

    // The events went to the outbox in order.
    let store = r.store.clone();
    let mut kinds = vec![];
    let mut after = 0;
    while let Some((seq, _)) = store.outbox_next(after).unwrap() {
        kinds.push(seq);
        after = seq;
    }
    assert!(kinds.windows(2).all(|w| w[0] < w[1]));
    assert!(kinds.len() >= 6, "{kinds:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_pull_is_reported_and_retried_without_touching_other_apps() {
    let mut r = rig();
    r.desired_tx
        .send_replace(Some(manifest(1, vec![app("a", 1)])));
    r.rec.pass().await;
    let a = running(&r.world);
    *r.world.fail_pulls.lock().unwrap() = true;
    r.desired_tx
        .send_replace(Some(manifest(2, vec![app("a", 1), app("b", 2)])));
    r.rec.pass().await;
    let v = r.reporter.view();
    assert_eq!(v.apps["b"].state, AppState::Failed);
    assert!(v.apps["b"]
        .last_error
        .as_deref()
        .unwrap()
        .contains("registry unreachable"));
    assert_eq!(running(&r.world), a);
    *r.world.fail_pulls.lock().unwrap() = false;
    tokio::time::advance(Duration::from_millis(5)).await;
    r.rec.pass().await;
    assert_eq!(running(&r.world).len(), 2);
}

const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;

fn crash(w: &FakeWorld, container: &str, code: i32) {
    w.containers.lock().unwrap().get_mut(container).unwrap().1 =
        ContainerStatus::Exited { code: Some(code) };
}

/// A device without a real-time clock boots in 1970 and is stepped by decades
/// when NTP answers (and may be set back by hand): the restart backoff, and
/// the `BackingOff` countdown the status shows, run on monotonic time and
/// ignore both steps.
#[tokio::test(start_paused = true)]
async fn restart_backoff_and_its_status_ignore_wall_clock_steps() {
    let clock = Arc::new(SteppableClock::new(0));
    let policy = Policy {
        base_backoff_ms: 10_000,
        max_backoff_ms: 60_000,
    };
    let mut r = rig_with(policy, clock.clone());
    r.desired_tx
        .send_replace(Some(manifest(1, vec![app("web", 1)])));
    r.rec.pass().await;
    let first = running(&r.world);
    assert_eq!(first.len(), 1);
    let state = |r: &Rig| r.reporter.view().apps["web"].state.clone();

    crash(&r.world, &first[0].0, 137);
    assert_eq!(r.rec.pass().await, Duration::from_secs(10));
    assert_eq!(state(&r), AppState::BackingOff { retry_in_secs: 10 });

    // NTP answers: 1970 becomes 2026. Nothing is due yet.
    clock.step_wall(56 * YEAR_MS);
    assert_eq!(r.rec.pass().await, Duration::from_secs(10));
    assert_eq!(state(&r), AppState::BackingOff { retry_in_secs: 10 });
    assert!(running(&r.world).is_empty());

    // 4 s later someone sets the clock back 30 years: 6 s still to wait.
    tokio::time::advance(Duration::from_secs(4)).await;
    clock.step_wall(-30 * YEAR_MS);
    assert_eq!(r.rec.pass().await, Duration::from_secs(6));
    assert_eq!(state(&r), AppState::BackingOff { retry_in_secs: 6 });
    assert!(running(&r.world).is_empty());

    tokio::time::advance(Duration::from_millis(5_999)).await;
    r.rec.pass().await;
    assert!(running(&r.world).is_empty(), "restarted before the backoff");
    tokio::time::advance(Duration::from_millis(1)).await;
    r.rec.pass().await;
    let second = running(&r.world);
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].1, first[0].1);
    assert!(state(&r).is_running());
    assert_eq!(r.reporter.view().apps["web"].restarts, 1);
}

/// The retry delay after a failed pull runs on monotonic time too: wall-clock
/// steps neither bring the retry forward nor push it back.
#[tokio::test(start_paused = true)]
async fn a_failed_pull_is_retried_after_its_delay_whatever_the_wall_clock_does() {
    let clock = Arc::new(SteppableClock::new(1_700_000_000_000));
    let policy = Policy {
        base_backoff_ms: 10_000,
        max_backoff_ms: 60_000,
    };
    let mut r = rig_with(policy, clock.clone());
    *r.world.fail_pulls.lock().unwrap() = true;
    r.desired_tx
        .send_replace(Some(manifest(1, vec![app("web", 1)])));
    r.rec.pass().await;
    assert_eq!(*r.world.pull_attempts.lock().unwrap(), 1);
    assert_eq!(r.reporter.view().apps["web"].state, AppState::Failed);
    // A release still downloading keeps its failures apart from the apps'
    // books (`download_errors`), so they never delay a running app's restart.
    assert!(r.rec.download_errors["web"].retryable);

    clock.step_wall(YEAR_MS);
    assert_eq!(r.rec.pass().await, Duration::from_secs(10));
    clock.step_wall(-2 * YEAR_MS);
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert_eq!(r.rec.pass().await, Duration::from_millis(1));
    assert_eq!(*r.world.pull_attempts.lock().unwrap(), 1);

    *r.world.fail_pulls.lock().unwrap() = false;
    tokio::time::advance(Duration::from_millis(1)).await;
    r.rec.pass().await;
    assert_eq!(*r.world.pull_attempts.lock().unwrap(), 2);
    assert_eq!(running(&r.world).len(), 1);
    assert_eq!(r.reporter.view().apps["web"].last_error, None);
}

/// A crash loop backs off harder with each restart; a run stable for
/// `STABLE_AFTER_MS` of monotonic time (not of wall time) ends the streak.
#[tokio::test(start_paused = true)]
async fn a_crash_loop_backs_off_harder_until_a_stable_run() {
    let clock = Arc::new(SteppableClock::new(0));
    let mut r = rig_with(Policy::default(), clock.clone());
    r.desired_tx
        .send_replace(Some(manifest(1, vec![app("web", 1)])));
    r.rec.pass().await;
    let name = running(&r.world)[0].0.clone();
    let state = |r: &Rig| r.reporter.view().apps["web"].state.clone();

    for (restarts, backoff_secs) in [(1, 1), (2, 2), (3, 4)] {
        crash(&r.world, &name, 1);
        r.rec.pass().await;
        assert_eq!(
            state(&r),
            AppState::BackingOff {
                retry_in_secs: backoff_secs
            }
        );
        tokio::time::advance(Duration::from_secs(backoff_secs)).await;
        r.rec.pass().await;
        assert!(state(&r).is_running());
        assert_eq!(r.reporter.view().apps["web"].restarts, restarts);
    }

    // A forward wall step is not a stable run.
    clock.step_wall(YEAR_MS);
    r.rec.pass().await;
    crash(&r.world, &name, 1);
    r.rec.pass().await;
    assert_eq!(state(&r), AppState::BackingOff { retry_in_secs: 8 });
    tokio::time::advance(Duration::from_secs(8)).await;
    r.rec.pass().await;
    assert!(state(&r).is_running());

    // Ten seconds of running is.
    tokio::time::advance(Duration::from_millis(book::STABLE_AFTER_MS)).await;
    r.rec.pass().await;
    crash(&r.world, &name, 1);
    r.rec.pass().await;
    assert_eq!(state(&r), AppState::BackingOff { retry_in_secs: 1 });
    assert_eq!(r.reporter.view().apps["web"].restarts, 4);
}

/// An image without a manifest for this platform is a failure no retry will
/// fix: the ledger (and the log) says so, the status shows the error's text as
/// always, and the app is still retried with the same backoff as any failure.
#[tokio::test(start_paused = true)]
async fn a_pull_for_another_platform_fails_as_not_retryable_and_still_backs_off() {
    let mut r = rig_with(Policy::default(), Arc::new(SystemClock::new()));
    *r.world.wrong_platform.lock().unwrap() = true;
    r.desired_tx
        .send_replace(Some(manifest(1, vec![app("web", 1)])));
    r.rec.pass().await;
    let v = r.reporter.view();
    assert_eq!(v.apps["web"].state, AppState::Failed);
    let shown = v.apps["web"].last_error.clone().unwrap();
    assert!(
        shown.starts_with("pull of reg/web@sha256:")
            && shown.contains("no manifest for platform linux/riscv64"),
        "{shown}"
    );
    let e = &r.rec.download_errors["web"];
    assert!(!e.retryable);
    assert_eq!(e.message, shown);
    assert_eq!(r.rec.pass().await, Duration::from_secs(1));
    tokio::time::advance(Duration::from_secs(1)).await;
    r.rec.pass().await;
    assert_eq!(*r.world.pull_attempts.lock().unwrap(), 2);
}

mod releases;
