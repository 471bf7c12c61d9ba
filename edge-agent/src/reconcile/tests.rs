//! Reconcile loop against an in-memory device (fake image store and runtime).

use super::*;
use crate::driver::{CreateRequest, ObservedContainer, PreparedImage};
use crate::report::Reporter;
use crate::state::Store;
use crate::view::{parts, Rejections};
use outpost_protocol::{AppSpec, Digest, ImageRef, KeyId, SigningKey};
use std::sync::Mutex;

#[derive(Default)]
pub struct FakeWorld {
    pub images: Mutex<BTreeSet<Digest>>,
    pub containers: Mutex<BTreeMap<String, (String, ContainerStatus)>>,
    pub next_pid: Mutex<u32>,
    pub fail_pulls: Mutex<bool>,
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
        if *self.0.fail_pulls.lock().unwrap() {
            return Err(DriverError::new(
                "pull",
                image.to_string(),
                "registry unreachable",
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
                "not present",
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
            return Err(DriverError::new("create", req.container.clone(), "exists"));
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
        let e = c
            .get_mut(container)
            .ok_or_else(|| DriverError::new("start", container, "missing"))?;
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
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
    let key = Arc::new(SigningKey::generate().unwrap());
    let outbox = Outbox::new("pi-1".parse().unwrap(), key.clone(), store.clone(), 100);
    let (writers, parts) = parts(None, Rejections::default());
    let reporter = Arc::new(Reporter::new(
        outbox.clone(),
        key,
        parts,
        1,
        dir.path().join("status.json"),
    ));
    let world = Arc::new(FakeWorld::default());
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
    let (_ready_tx, ready_rx) = watch::channel(BTreeSet::new());
    let policy = Policy {
        base_backoff_ms: 1,
        max_backoff_ms: 1,
    };
    let rec = Reconciler::new(
        exec,
        outbox,
        writers.apps,
        RestartLog::new(store.clone()),
        policy,
        Duration::from_secs(1),
        desired_rx,
        health_tx,
        ready_rx,
        BTreeMap::new(),
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

#[tokio::test]
async fn without_a_manifest_nothing_is_touched() {
    let mut r = rig();
    r.world.containers.lock().unwrap().insert(
        "outpost-old-00000000".into(),
        ("old".into(), ContainerStatus::Running { pid: 5 }),
    );
    r.rec.pass().await;
    assert_eq!(running(&r.world).len(), 1);
}

#[tokio::test]
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
        tokio::time::sleep(Duration::from_millis(5)).await;
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

#[tokio::test]
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
    tokio::time::sleep(Duration::from_millis(5)).await;
    r.rec.pass().await;
    assert_eq!(running(&r.world).len(), 2);
}
