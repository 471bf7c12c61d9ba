//! The real image provider: `outpost-oci`'s content-addressed store and registry
//! client behind the agent's [`ImageProvider`] seam, with garbage collection
//! under a disk budget.
//!
//! `present` and `prepare` only read the local store, so a device with its images
//! already pulled starts its apps with no registry or DNS round-trip.
//!
//! Every store operation holds an exclusive `flock` on `DATA/images/lock`, so
//! `outpost-agent images prune` can run beside a live agent: a collection never
//! sweeps the temp files of a pull in progress, and a pull never finds a blob
//! vanishing under it.

use crate::driver::{DriverError, ImageProvider, PreparedImage};
use nix::fcntl::{Flock, FlockArg};
use outpost_oci::{Client, GcReport, ImageStore, OciError, PullProgress, RegistryConfig};
use outpost_protocol::{Digest, ImageRef, Platform};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

pub struct OciImages {
    store: ImageStore,
    client: Client,
    platform: Platform,
    /// The agent's tokio runtime: pulls are async, the seam is blocking (it is
    /// called from `spawn_blocking`, where `Handle::block_on` is allowed).
    handle: tokio::runtime::Handle,
    /// What a collection before a pull keeps, and what it keeps at the least
    /// (see [`ImageProvider::protect`]).
    protected: Mutex<(BTreeSet<Digest>, BTreeSet<Digest>)>,
}

impl std::fmt::Debug for OciImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OciImages({})", self.store.root().display())
    }
}

/// Hold the store's cross-process lock (blocking until free).
pub fn lock_store(dir: &Path) -> Result<Flock<std::fs::File>, DriverError> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| DriverError::new("open image store lock", path.display().to_string(), e))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| DriverError::new("lock image store", path.display().to_string(), e))
}

impl OciImages {
    /// Open the store in `dir` with a budget of `budget_bytes`; `registry`: the
    /// loaded `[registry]` section (credentials and CA already read from their
    /// files).
    pub fn open(
        dir: &Path,
        budget_bytes: u64,
        registry: RegistryConfig,
        handle: tokio::runtime::Handle,
    ) -> Result<OciImages, DriverError> {
        let store = ImageStore::open(dir, budget_bytes)
            .map_err(|e| DriverError::new("open image store", dir.display().to_string(), e))?;
        let client = Client::try_new(registry)
            .map_err(|e| DriverError::new("configure registry client", "[registry]", e))?;
        Ok(OciImages {
            store,
            client,
            platform: Platform::current(),
            handle,
            protected: Mutex::new((BTreeSet::new(), BTreeSet::new())),
        })
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    fn gc_locked(&self, keep: &BTreeSet<Digest>) -> Result<GcReport, DriverError> {
        let keep: Vec<Digest> = keep.iter().copied().collect();
        self.store.gc(&keep).map_err(|e| {
            DriverError::new("collect images", self.store.root().display().to_string(), e)
        })
    }

    fn pull_locked(
        &self,
        image: &ImageRef,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), OciError> {
        let report = |p: PullProgress| progress(p.done_bytes, p.total_bytes);
        self.handle
            .block_on(
                self.store
                    .pull(&self.client, image, &self.platform, &report),
            )
            .map(|_| ())
    }
}

impl ImageProvider for OciImages {
    fn present(&self, image: &ImageRef) -> bool {
        self.store.contains_image(&image.digest)
    }

    fn pull(
        &self,
        image: &ImageRef,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), DriverError> {
        let _lock = lock_store(self.store.root())?;
        let over_budget =
            |r: &Result<(), OciError>| matches!(r, Err(OciError::BudgetExceeded { .. }));
        let mut result = self.pull_locked(image, progress);
        if over_budget(&result) {
            let (keep, essential) = self
                .protected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            // Make room from what nothing needs; if the kept images alone fill
            // the budget, let the previous release's images go rather than
            // refuse the update. A refusal after that is the operator's error.
            for (tier, mut set) in [("unused images", keep), ("the previous release", essential)] {
                set.insert(image.digest);
                let report = self.gc_locked(&set)?;
                tracing::warn!(
                    image = %image,
                    freed = report.freed_bytes,
                    removed = report.removed_images.len(),
                    used = report.used_bytes,
                    budget = report.budget_bytes,
                    "pull over the image budget: collected {tier} to make room"
                );
                result = self.pull_locked(image, progress);
                if !over_budget(&result) {
                    break;
                }
            }
        }
        result.map_err(|e| DriverError::new("pull", image.to_string(), e))
    }

    fn prepare(&self, image: &ImageRef) -> Result<PreparedImage, DriverError> {
        let _lock = lock_store(self.store.root())?;
        let p = self
            .store
            .prepare(&image.digest, &self.platform)
            .map_err(|e| DriverError::new("prepare image", image.to_string(), e))?;
        Ok(PreparedImage {
            image: image.clone(),
            layers: p.layers,
            config: p.config,
        })
    }

    fn protect(&self, keep: &BTreeSet<Digest>, essential: &BTreeSet<Digest>) {
        let mut p = self.protected.lock().unwrap_or_else(|p| p.into_inner());
        if p.0 != *keep || p.1 != *essential {
            *p = (keep.clone(), essential.clone());
        }
    }

    fn collect(&self, keep: &BTreeSet<Digest>) -> Result<Option<GcReport>, DriverError> {
        let _lock = lock_store(self.store.root())?;
        self.gc_locked(keep).map(Some)
    }
}
