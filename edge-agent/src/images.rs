//! The real image provider: `outpost-oci`'s content-addressed store and registry
//! client behind the agent's [`ImageProvider`] seam.
//!
//! `present` and `prepare` only read the local store, so a device with its images
//! already pulled starts its apps with no registry or DNS round-trip.

use crate::driver::{DriverError, ImageProvider, PreparedImage};
use outpost_oci::{Client, ImageStore, PullProgress, RegistryConfig};
use outpost_protocol::{ImageRef, Platform};
use std::path::Path;

/// Budget for blobs and unpacked layers together.
const DEFAULT_BUDGET_BYTES: u64 = 8 * 1024 * 1024 * 1024;

pub struct OciImages {
    store: ImageStore,
    client: Client,
    platform: Platform,
    /// The agent's tokio runtime: pulls are async, the seam is blocking (it is
    /// called from `spawn_blocking`, where `Handle::block_on` is allowed).
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for OciImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OciImages({})", self.store.root().display())
    }
}

impl OciImages {
    /// `registry`: the loaded `[registry]` section (credentials and CA already
    /// read from their files).
    pub fn open(
        dir: &Path,
        registry: RegistryConfig,
        handle: tokio::runtime::Handle,
    ) -> Result<OciImages, DriverError> {
        let store = ImageStore::open(dir, DEFAULT_BUDGET_BYTES)
            .map_err(|e| DriverError::new("open image store", dir.display().to_string(), e))?;
        let client = Client::try_new(registry)
            .map_err(|e| DriverError::new("configure registry client", "[registry]", e))?;
        Ok(OciImages {
            store,
            client,
            platform: Platform::current(),
            handle,
        })
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
        let report = |p: PullProgress| progress(p.done_bytes, p.total_bytes);
        self.handle
            .block_on(
                self.store
                    .pull(&self.client, image, &self.platform, &report),
            )
            .map_err(|e| DriverError::new("pull", image.to_string(), e))?;
        Ok(())
    }

    fn prepare(&self, image: &ImageRef) -> Result<PreparedImage, DriverError> {
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
}
