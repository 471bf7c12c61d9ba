//! OCI images for Outpost: one registry client shared by the hub (tag → digest
//! resolution) and the agent (resumable pulls), a content-addressed blob store,
//! safe layer unpacking, OCI image layout import, and a reproducible image builder.
//!
//! # Layout
//! - [`client`]: [`Client::new`]`(`[`RegistryConfig`]`)` and
//!   [`Client::resolve`]`("repo:tag") -> ImageRef` (pinned by the digest of the index
//!   for multi-arch images). Used by the hub at apply time and by the store to pull.
//!   Manifests and indexes are read up to [`spec::MAX_DOCUMENT_BYTES`] (4 MiB).
//! - [`settings`]: the `[registry]` section of `hub.toml` and `agent.toml`
//!   ([`RegistrySettings`]: insecure hosts, CA file, Docker `config.json`,
//!   per-registry username + password file or token file) and
//!   [`RegistrySettings::load`], which reads those files into a [`RegistryConfig`].
//! - [`spec`]: the OCI JSON documents and the pure decisions on them (platform
//!   selection from an index, manifest kind, layer compression).
//! - [`blobs`]: the content-addressed blob store: verified, crash-safe writes
//!   (temp file, fsync, rename) and resumable partial downloads.
//! - [`store`]: [`ImageStore`], the agent's API:
//!   - `ImageStore::open(dir, budget_bytes)`
//!   - `store.pull(&client, &image_ref, &platform, &progress) -> PulledImage`
//!     (resumes interrupted downloads with HTTP `Range`, never re-fetches a
//!     complete blob, reports [`PullProgress`] bytes done/total)
//!   - `store.import_layout(path)` for an OCI image layout directory or its tar
//!     (air-gapped bundles)
//!   - `store.prepare(&digest, &platform) -> PreparedImage { layers, config, .. }`:
//!     unpacked layer directories, bottom layer first, ready to be overlayfs
//!     lowerdirs (whiteouts already in overlayfs form), plus the
//!     `outpost_protocol::ImageConfig` the runtime merges an `AppSpec` over.
//!   - `store.gc(&keep) -> GcReport`: removes images, blobs and unpacked layers
//!     that no kept image references; `store.describe() -> Vec<HeldImage>`: each
//!     held image with its size and the part only it uses.
//!   - `store.with_layer_limits(LayerLimits { .. })`: how large a layer may
//!     unpack to (absolute, and relative to its compressed size), so a
//!     decompression bomb is refused instead of filling the disk.
//!
//!   Layout import lives in `store/import.rs`, garbage collection in `store/gc.rs`.
//! - [`unpack`]: turns a layer tarball (plain, gzip or zstd) into a directory,
//!   refusing path escapes and layers over their size limit, and converting OCI
//!   whiteouts for overlayfs.
//! - [`build`]: writes reproducible OCI image layouts from static binaries (used by
//!   `outpost-image-build` and tests).
//!
//! Data directory of an [`ImageStore`]:
//! ```text
//! DIR/blobs/sha256/<hex>   verified blobs (indexes, manifests, configs, layers)
//! DIR/partial/<hex>        downloads in progress; resumed from their length
//! DIR/layers/<hex>/        unpacked layer (named by the layer blob's digest)
//! DIR/images/<hex>         one file per image held (named by its pinned digest)
//! DIR/tmp/                 temp files and half-unpacked layers (cleared by gc)
//! ```
//!
//! # Trust
//! Nothing is used before its sha256 is checked: manifests against the digest
//! that named them, blobs on commit, layer blobs again (and their uncompressed
//! diff ids) while unpacking. An unpacked layer is published by rename only after
//! it verified, so `layers/<hex>` is always complete.

pub mod blobs;
pub mod build;
pub mod client;
mod error;
pub mod settings;
pub mod spec;
pub mod store;
pub mod unpack;

pub use client::{Client, Credentials, RegistryConfig};
pub use error::OciError;
pub use settings::{AuthSettings, RegistrySettings, SettingsError};
pub use store::{
    GcReport, HeldImage, ImageStore, ImportedImage, LayerLimits, PreparedImage, PullProgress,
    PulledImage,
};
