//! The crate's error type: every failure names the image, blob, file or registry
//! reference it concerns, so an operator can tell bad input from a broken store.

use outpost_protocol::Digest;
use std::path::PathBuf;

use crate::unpack::UnpackError;

/// Why a registry, store, import or build operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    #[error("image reference {reference:?} is invalid: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("image {reference} was not found in the registry (unknown repository, tag or digest)")]
    NotFound { reference: String },
    /// `anonymous`: no credentials are configured for `registry`, so none were
    /// sent (the usual cause); otherwise the configured ones were refused.
    #[error("{}", unauthorized_message(registry, reference, *anonymous))]
    Unauthorized {
        reference: String,
        registry: String,
        anonymous: bool,
    },
    #[error("manifest {reference} is larger than the {limit}-byte limit: {detail}")]
    ManifestTooLarge {
        reference: String,
        limit: u64,
        detail: String,
    },
    /// `detail` is the whole cause chain (e.g. the TLS error under reqwest's
    /// "error sending request"), since callers often log only `to_string()`.
    #[error("registry request for {reference} failed: {detail}")]
    Registry { reference: String, detail: String },
    #[error("download of {digest} from {reference} failed: {reason}")]
    Transfer {
        reference: String,
        digest: Digest,
        reason: String,
    },
    #[error("{what} has digest {actual}, expected {expected}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} is {actual} bytes, expected {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("manifest or config {digest} is malformed: {reason}")]
    BadManifest { digest: Digest, reason: String },
    #[error("image {image} has no manifest for platform {wanted}; it offers: {available}")]
    NoPlatform {
        image: Digest,
        wanted: String,
        available: String,
    },
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    UnsupportedMediaType { digest: Digest, media_type: String },
    #[error("image {0} is not in the store (pull or import it first)")]
    UnknownImage(Digest),
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    #[error("layer {digest} was refused: {source}")]
    Layer {
        digest: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("pulling needs {needed} more bytes but the store uses {used} of its {budget}-byte budget; garbage-collect unused images first")]
    BudgetExceeded { needed: u64, used: u64, budget: u64 },
    #[error("OCI image layout {path}: {reason}")]
    Layout { path: PathBuf, reason: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry client configuration is unusable: {0}")]
    Config(String),
    #[error("background task failed: {0}")]
    Task(String),
}

fn unauthorized_message(registry: &str, reference: &str, anonymous: bool) -> String {
    if anonymous {
        format!("registry {registry} refused anonymous access to {reference}: it needs credentials; configure them for {registry} ([registry.auth] or docker_config)")
    } else {
        format!("registry {registry} refused the credentials configured for it (accessing {reference}): check the username and password or token")
    }
}

impl OciError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> OciError {
        let path = path.into();
        move |source| OciError::Io {
            action,
            path,
            source,
        }
    }
}
