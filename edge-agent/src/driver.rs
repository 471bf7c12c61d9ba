//! The two seams between the agent's logic and the machine: an image provider and a
//! container driver.
//!
//! Both traits are synchronous on purpose: the real implementations (registry
//! pulls, tar unpacking, libcontainer) block, and the reconcile executor runs them
//! in `spawn_blocking`. Unit and property tests plug in fakes; the binary uses the
//! adapters over `outpost-oci` and `outpost-runtime`.

use outpost_oci::GcReport;
use outpost_protocol::{AppSpec, Digest, ImageConfig, ImageRef};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// Prefix of every container the agent owns; anything else on the host is ignored.
pub const CONTAINER_PREFIX: &str = "outpost-";

/// `outpost-<app>-<first 8 hex of sha256(postcard(spec))>`.
///
/// Deterministic, so a restarted agent re-adopts its containers by name, and any
/// change in the spec yields a new name (an update is a replacement).
pub fn container_name(spec: &AppSpec) -> String {
    // postcard encoding of an in-memory AppSpec cannot fail; fall back to the
    // debug form so this stays total without an unwrap.
    let bytes = postcard::to_stdvec(spec).unwrap_or_else(|_| format!("{spec:?}").into_bytes());
    let d = Digest::of(&bytes);
    format!("{CONTAINER_PREFIX}{}-{}", spec.name, &d.hex()[..8])
}

/// The app a container name belongs to, or `None` if the name is not ours.
pub fn app_of(container: &str) -> Option<&str> {
    let rest = container.strip_prefix(CONTAINER_PREFIX)?;
    let (app, hash) = rest.rsplit_once('-')?;
    (hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && !app.is_empty())
        .then_some(app)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Created but its process not started yet.
    Created,
    Running {
        pid: u32,
    },
    /// Not running. `code` is `None` when the exit status is unknown (the process
    /// was not our child, e.g. after the agent itself restarted).
    Exited {
        code: Option<i32>,
    },
}

impl ContainerStatus {
    pub fn is_running(&self) -> bool {
        matches!(self, ContainerStatus::Running { .. })
    }
}

/// One Outpost container as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub name: String,
    pub app: String,
    pub status: ContainerStatus,
}

/// An image unpacked locally and ready to be a container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedImage {
    pub image: ImageRef,
    /// Read-only unpacked layer directories, bottom (base) layer first.
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
}

/// Everything the driver needs to create one container.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub container: String,
    pub spec: AppSpec,
    pub image: PreparedImage,
    /// Directory holding this app's named volumes (`<dir>/<volume name>`); keyed
    /// by app name, not container, so data survives updates.
    pub volumes_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("{op} of {target} failed: {detail}")]
pub struct DriverError {
    pub op: &'static str,
    pub target: String,
    pub detail: String,
}

impl DriverError {
    pub fn new(op: &'static str, target: impl Into<String>, detail: impl ToString) -> Self {
        DriverError {
            op,
            target: target.into(),
            detail: detail.to_string(),
        }
    }
}

/// Local image store plus registry client.
pub trait ImageProvider: Send + Sync + 'static {
    /// Is the image complete in the local store? Must not touch the network.
    fn present(&self, image: &ImageRef) -> bool;
    /// Fetch the image from its registry; `progress(done_bytes, total_bytes)`.
    fn pull(
        &self,
        image: &ImageRef,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), DriverError>;
    /// Unpack (or find unpacked) a present image. Must not touch the network.
    fn prepare(&self, image: &ImageRef) -> Result<PreparedImage, DriverError>;
    /// What a collection forced by a pull over budget keeps: `keep` if that
    /// makes room, else only `essential` (the previous release's images go
    /// before an update is refused). Updated on every reconcile pass, in memory.
    fn protect(&self, _keep: &BTreeSet<Digest>, _essential: &BTreeSet<Digest>) {}
    /// Remove every image not in `keep` and what only they use. `None` when
    /// this provider has nothing to collect.
    fn collect(&self, _keep: &BTreeSet<Digest>) -> Result<Option<GcReport>, DriverError> {
        Ok(None)
    }
}

/// The container runtime.
pub trait ContainerDriver: Send + Sync + 'static {
    /// All Outpost containers (names starting with [`CONTAINER_PREFIX`]).
    fn list(&self) -> Result<Vec<ObservedContainer>, DriverError>;
    fn create(&self, req: &CreateRequest) -> Result<(), DriverError>;
    /// Start a created container; returns the pid of its process.
    fn start(&self, container: &str) -> Result<u32, DriverError>;
    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&self, container: &str, grace: Duration) -> Result<(), DriverError>;
    /// Delete a stopped container (state and rootfs overlay, not volumes).
    fn remove(&self, container: &str) -> Result<(), DriverError>;
    /// Rotate app logs and keep them under their cap; called every few seconds.
    fn maintain_logs(&self) -> Result<(), DriverError> {
        Ok(())
    }
    /// Images existing containers were created from (garbage collection keeps
    /// them: a container's overlay uses their unpacked layers).
    fn images_in_use(&self) -> Result<BTreeSet<Digest>, DriverError> {
        Ok(BTreeSet::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_change_with_the_spec() {
        let img: ImageRef = format!("r/x@sha256:{}", "ab".repeat(32)).parse().unwrap();
        let a = AppSpec::new("my-app", img.clone());
        let mut b = a.clone();
        b.args.push("--v2".into());
        let (na, nb) = (container_name(&a), container_name(&b));
        assert_ne!(na, nb);
        assert_eq!(app_of(&na), Some("my-app"));
        assert_eq!(container_name(&a), na);
        assert_eq!(app_of("other-thing"), None);
        assert_eq!(app_of("outpost-x-zz"), None);
    }
}
