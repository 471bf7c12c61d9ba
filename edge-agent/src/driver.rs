//! The two seams between the agent's logic and the machine: an image provider and a
//! container driver.
//!
//! Both traits are synchronous on purpose: the real implementations (registry
//! pulls, tar unpacking, libcontainer) block, and the reconcile executor runs them
//! in `spawn_blocking`. Unit and property tests plug in fakes; the binary uses the
//! adapters over `outpost-oci` and `outpost-runtime`.

use outpost_oci::{GcReport, OciError};
use outpost_protocol::{AppSpec, Digest, ImageConfig, ImageRef};
use outpost_runtime::RuntimeError;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// Prefix of every container the agent owns; anything else on the host is ignored.
pub const CONTAINER_PREFIX: &str = "outpost-";

/// `outpost-<app>-<first 8 hex of sha256(canonical spec bytes)>`.
///
/// Deterministic, so a restarted agent re-adopts its containers by name, and any
/// change in the spec yields a new name (an update is a replacement). The
/// canonical bytes (`AppSpec::canonical_bytes`) leave out the sealed secret
/// blobs: a renewed manifest re-seals every secret with fresh randomness,
/// and only a new secret version may replace the container.
pub fn container_name(spec: &AppSpec) -> String {
    let d = Digest::of(&spec.canonical_bytes());
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

/// A failed operation at a seam: what was done to what, and the typed cause.
///
/// `Display` shows the cause's text too (what the status's `last_error` and
/// the logs have always shown); `source()` keeps the typed cause, so callers
/// can ask [`DriverError::retryable`] or walk the chain with [`error_chain`].
#[derive(Debug, thiserror::Error)]
#[error("{op} of {target} failed: {cause}")]
pub struct DriverError {
    pub op: &'static str,
    pub target: String,
    #[source]
    pub cause: DriverCause,
}

impl DriverError {
    pub fn new(op: &'static str, target: impl Into<String>, cause: impl Into<DriverCause>) -> Self {
        DriverError {
            op,
            target: target.into(),
            cause: cause.into(),
        }
    }

    /// Might the same action succeed later with nothing changed on the
    /// device or in the manifest? See [`DriverCause::retryable`].
    pub fn retryable(&self) -> bool {
        self.cause.retryable()
    }
}

/// Why an operation at a seam failed, by the layer that failed. The crates'
/// errors are boxed to keep every `Result<_, DriverError>` small.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverCause {
    /// The image store or the registry (`outpost-oci`).
    #[error(transparent)]
    Image(Box<OciError>),
    /// The container runtime (`outpost-runtime`, libcontainer).
    #[error(transparent)]
    Runtime(Box<RuntimeError>),
    /// A file or directory of the agent's own (volume dirs, the store lock file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A system call of the agent's own (the image store's `flock`).
    #[error(transparent)]
    Sys(#[from] nix::errno::Errno),
    /// The blocking task running the operation panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// The app left the manifest between planning and doing.
    #[error("app is no longer desired")]
    NotDesired,
    /// A secret could not be opened into its file: sealed to another key,
    /// or no key on this device. Only a new manifest can fix it.
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretFileError),
}

impl From<OciError> for DriverCause {
    fn from(e: OciError) -> Self {
        DriverCause::Image(Box::new(e))
    }
}

impl From<RuntimeError> for DriverCause {
    fn from(e: RuntimeError) -> Self {
        DriverCause::Runtime(Box::new(e))
    }
}

impl DriverCause {
    /// Is the failure worth retrying as is? Yes for what passes on its own (a
    /// registry timeout or refused connection, a cut download, a busy or full
    /// disk, a container in a transient state); no for what only the operator
    /// can fix (a manifest for another platform, an invalid spec, refused
    /// credentials, an image that is not in the registry). Failures of either
    /// kind are retried with backoff (an operator's fix may arrive without a
    /// new manifest); the verdict is for people reading logs.
    pub fn retryable(&self) -> bool {
        match self {
            DriverCause::Image(e) => image_retryable(e),
            DriverCause::Runtime(e) => runtime_retryable(e),
            DriverCause::Io(e) => io_retryable(e.kind()),
            DriverCause::Sys(e) => io_retryable(std::io::Error::from(*e).kind()),
            // A panic in a driver is a bug that the same input will hit again;
            // a cancelled task only met the agent shutting down.
            DriverCause::Task(e) => !e.is_panic(),
            DriverCause::NotDesired => false,
            DriverCause::Secret(crate::secrets::SecretFileError::Io { source, .. }) => {
                io_retryable(source.kind())
            }
            DriverCause::Secret(_) => false,
        }
    }
}

fn image_retryable(e: &OciError) -> bool {
    match e {
        // Connection refused or reset, timeouts, TLS handshakes, HTTP 5xx: the
        // client folds them all into `Registry` with the cause chain as text.
        OciError::Registry { .. } | OciError::Transfer { .. } => true,
        // A download that arrived short or altered: a fresh one may not be.
        OciError::SizeMismatch { .. } | OciError::DigestMismatch { .. } => true,
        // The store lost a blob or image: the next pass pulls it again.
        OciError::UnknownImage(_) | OciError::MissingBlob(_) => true,
        OciError::Io { source, .. } => io_retryable(source.kind()),
        OciError::Task(_) => true,
        OciError::InvalidReference { .. }
        | OciError::NotFound { .. }
        | OciError::Unauthorized { .. }
        | OciError::ManifestTooLarge { .. }
        | OciError::BadManifest { .. }
        | OciError::NoPlatform { .. }
        | OciError::UnsupportedMediaType { .. }
        | OciError::Layer { .. }
        | OciError::BudgetExceeded { .. }
        | OciError::Layout { .. }
        | OciError::Config(_) => false,
        // A kind added to `outpost-oci` later: retrying is what the agent did
        // before it could tell kinds apart.
        _ => true,
    }
}

fn runtime_retryable(e: &RuntimeError) -> bool {
    use outpost_runtime::rootfs::RootfsError;
    match e {
        RuntimeError::BadCgroupParent(_)
        | RuntimeError::BadId(_)
        | RuntimeError::InvalidApp(_)
        | RuntimeError::Admit(_)
        | RuntimeError::Spec(_)
        | RuntimeError::NoSecretsDir { .. }
        | RuntimeError::SecretNotText { .. } => false,
        // The agent writes the files just before create; a vanished one is
        // written again on the next attempt.
        RuntimeError::SecretMissing { .. } => true,
        RuntimeError::Rootfs(RootfsError::NoLayers | RootfsError::TooManyLayers { .. }) => false,
        // A missing device node may be plugged in later; the runtime reports
        // "missing" and "not a device node" alike.
        RuntimeError::Device { .. } => true,
        // The container appeared or vanished under us: the next observation
        // sees the truth and plans from it.
        RuntimeError::Exists(_) | RuntimeError::NotFound(_) => true,
        RuntimeError::Io { source, .. } => io_retryable(source.kind()),
        RuntimeError::Rootfs(_)
        | RuntimeError::Meta(_)
        | RuntimeError::Log(_)
        | RuntimeError::Helper { .. }
        | RuntimeError::Libcontainer { .. }
        | RuntimeError::Unkillable { .. } => true,
    }
}

/// I/O fails for good when the request itself is wrong (permissions, a bad
/// path or argument, an unsupported operation); anything else (a full or busy
/// disk, an interrupted call, a refused connection) may pass.
fn io_retryable(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    !matches!(
        kind,
        PermissionDenied | InvalidInput | InvalidData | Unsupported
    )
}

/// `e` and its causes on one line, `outer: inner: ...`, leaving out a cause
/// whose text its parent already shows (`DriverError`, `OciError` and
/// `RuntimeError` print their source and also return it from `source()`).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
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
    /// Does `app` hold its update lock (`crate::locks`)? Drivers without
    /// locks say no.
    fn lock_held(&self, _app: &str) -> Result<bool, DriverError> {
        Ok(false)
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

    fn digest() -> Digest {
        Digest([1; 32])
    }

    /// Each kind of cause: the text people see (unchanged from when causes
    /// were flattened to strings: `op of target failed: cause`), and whether
    /// a retry may help.
    #[test]
    fn causes_keep_their_text_and_say_whether_to_retry() {
        use std::io::{Error as IoError, ErrorKind};
        let io = |kind, text: &str| IoError::new(kind, text.to_string());
        let cases: Vec<(DriverError, &str, bool)> = vec![
            (
                DriverError::new(
                    "pull",
                    "reg/web",
                    OciError::Registry {
                        reference: "reg/web".into(),
                        detail: "error sending request: connection refused".into(),
                    },
                ),
                "pull of reg/web failed: registry request for reg/web failed: error sending request: connection refused",
                true,
            ),
            (
                DriverError::new(
                    "pull",
                    "reg/web",
                    OciError::Transfer {
                        reference: "reg/web".into(),
                        digest: digest(),
                        reason: "operation timed out".into(),
                    },
                ),
                "pull of reg/web failed: download of sha256:0101010101010101010101010101010101010101010101010101010101010101 from reg/web failed: operation timed out",
                true,
            ),
            (
                DriverError::new(
                    "pull",
                    "reg/web",
                    OciError::NoPlatform {
                        image: digest(),
                        wanted: "linux/arm/v7".into(),
                        available: "linux/amd64".into(),
                    },
                ),
                "pull of reg/web failed: image sha256:0101010101010101010101010101010101010101010101010101010101010101 has no manifest for platform linux/arm/v7; it offers: linux/amd64",
                false,
            ),
            (
                DriverError::new(
                    "pull",
                    "reg/web",
                    OciError::NotFound {
                        reference: "reg/web".into(),
                    },
                ),
                "pull of reg/web failed: image reg/web was not found in the registry (unknown repository, tag or digest)",
                false,
            ),
            (
                DriverError::new(
                    "prepare image",
                    "reg/web",
                    OciError::Io {
                        action: "read",
                        path: "/data/images/blobs/x".into(),
                        source: io(ErrorKind::Other, "Input/output error"),
                    },
                ),
                "prepare image of reg/web failed: read /data/images/blobs/x: Input/output error",
                true,
            ),
            (
                DriverError::new(
                    "create",
                    "outpost-web-1",
                    RuntimeError::Spec(outpost_runtime::spec::SpecError::NoCommand {
                        app: "web".into(),
                    }),
                ),
                "create of outpost-web-1 failed: app \"web\": neither the app nor the image defines a command to run",
                false,
            ),
            (
                DriverError::new(
                    "create",
                    "outpost-web-1",
                    RuntimeError::Exists("outpost-web-1".into()),
                ),
                "create of outpost-web-1 failed: container \"outpost-web-1\" already exists",
                true,
            ),
            (
                DriverError::new(
                    "create volume dir",
                    "/data/volumes/web",
                    io(ErrorKind::PermissionDenied, "Permission denied (os error 13)"),
                ),
                "create volume dir of /data/volumes/web failed: Permission denied (os error 13)",
                false,
            ),
            (
                DriverError::new("lock image store", "/data/images/lock", nix::errno::Errno::EINTR),
                "lock image store of /data/images/lock failed: EINTR: Interrupted system call",
                true,
            ),
            (
                DriverError::new("create", "outpost-web-1", DriverCause::NotDesired),
                "create of outpost-web-1 failed: app is no longer desired",
                false,
            ),
        ];
        for (e, text, retryable) in cases {
            assert_eq!(e.to_string(), text);
            assert_eq!(error_chain(&e), text, "a cause shown twice");
            assert_eq!(e.retryable(), retryable, "{text}");
        }
    }

    /// The typed cause survives the seam: it can be reached through
    /// `source()`, and a cause whose text its parent leaves out is still shown.
    #[test]
    fn the_source_chain_is_kept_and_shown_once() {
        let e = DriverError::new(
            "pull",
            "reg/web",
            OciError::Layer {
                digest: digest(),
                source: outpost_oci::unpack::UnpackError::PathEscape {
                    entry: "../etc/passwd".into(),
                    why: "a .. component",
                },
            },
        );
        let cause = std::error::Error::source(&e).unwrap();
        assert!(cause.downcast_ref::<DriverCause>().is_some());
        assert!(matches!(&e.cause, DriverCause::Image(o) if matches!(**o, OciError::Layer { .. })));
        assert!(!e.retryable());

        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let hidden = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&hidden), "outer: inner");
    }

    #[tokio::test]
    async fn a_panicked_task_is_not_retryable_a_cancelled_one_is() {
        let panicked = tokio::task::spawn_blocking(|| panic!("driver bug"))
            .await
            .unwrap_err();
        assert!(!DriverError::new("task", "executor", panicked).retryable());
        let pending = tokio::spawn(std::future::pending::<()>());
        pending.abort();
        let cancelled = pending.await.unwrap_err();
        assert!(DriverError::new("task", "executor", cancelled).retryable());
    }
}
