//! [`ImageStore`]: the agent's images on disk. Pulls (resumable, verified),
//! imports from OCI layouts, prepares unpacked layer directories for the runtime
//! (each layer capped by [`LayerLimits`]), enforces a disk budget and
//! garbage-collects what no kept image references.
//!
//! `pull` is async (network); `import_layout`, `prepare` and `gc` do blocking
//! file-system work: call them from `spawn_blocking` or a dedicated thread. The
//! store assumes one agent process uses a data directory at a time, and that
//! `gc` does not run concurrently with `pull`/`prepare` (the agent serialises
//! image work).

mod gc;
mod import;

use crate::blobs::{list_hex_names, sync_dir, BlobStore};
use crate::client::Client;
use crate::spec::{self, Document};
use crate::unpack::unpack_layer_limited;
use crate::OciError;
use futures_util::StreamExt;
use outpost_protocol::{Digest, ImageConfig, ImageRef, Platform};
use std::fs;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// Bytes of a pull done so far, out of the total (config + layers). Blobs
/// already on disk count as done from the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullProgress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// What a pull produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    pub image: ImageRef,
    /// The platform-specific image manifest (equal to `image.digest` for a
    /// single-platform image).
    pub manifest: Digest,
    pub config: ImageConfig,
    /// Layer blob digests, bottom first.
    pub layers: Vec<Digest>,
    /// Bytes actually received from the registry for blobs in this call.
    pub downloaded_bytes: u64,
}

/// An image ready for the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedImage {
    /// The digest the image is held under (index digest for multi-arch images).
    pub digest: Digest,
    pub manifest: Digest,
    /// Unpacked layer directories, bottom layer first, whiteouts in overlayfs
    /// form: pass them as overlayfs lowerdirs (overlayfs lists the *top* first).
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
}

/// An image found in an imported OCI layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    pub digest: Digest,
    /// The layout's `org.opencontainers.image.ref.name` annotation, if any.
    pub name: Option<String>,
}

/// What `gc` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed_images: Vec<Digest>,
    pub removed_blobs: usize,
    pub removed_layers: usize,
    pub freed_bytes: u64,
    /// Bytes used by the store after collection.
    pub used_bytes: u64,
    pub budget_bytes: u64,
}

/// One held image and its disk cost (see [`ImageStore::describe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldImage {
    pub digest: Digest,
    /// The repository it was pulled from (as recorded at pull or import).
    pub repository: String,
    /// Blobs and unpacked layers it references, shared ones included.
    pub bytes: u64,
    /// What removing only this image would free.
    pub unique_bytes: u64,
}

/// How large one layer may get once decompressed. A layer over either cap is
/// refused while unpacking (nothing of it is kept), so a small gzip or zstd
/// bomb cannot fill the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerLimits {
    /// Absolute cap on a layer's uncompressed size. Default: the store's budget
    /// (a layer larger than that could never be kept anyway).
    pub max_bytes: u64,
    /// Cap relative to the compressed blob: uncompressed ≤ `max_ratio` × blob
    /// size, but never below [`LayerLimits::RATIO_FLOOR_BYTES`] (small layers
    /// compress far better than large ones). Real layers stay under ~20×; gzip
    /// bombs reach ~1000×, zstd ones more.
    pub max_ratio: u64,
}

impl LayerLimits {
    pub const DEFAULT_MAX_RATIO: u64 = 100;
    pub const RATIO_FLOOR_BYTES: u64 = 64 * 1024 * 1024;

    /// The defaults for a store with `budget_bytes`.
    pub fn for_budget(budget_bytes: u64) -> LayerLimits {
        LayerLimits {
            max_bytes: budget_bytes,
            max_ratio: Self::DEFAULT_MAX_RATIO,
        }
    }

    /// The cap for a layer blob of `compressed_bytes`.
    pub fn limit_for(&self, compressed_bytes: u64) -> u64 {
        let relative = compressed_bytes
            .saturating_mul(self.max_ratio)
            .max(Self::RATIO_FLOOR_BYTES);
        self.max_bytes.min(relative)
    }
}

/// Images on disk; cheap to clone (it is just paths).
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    blobs: BlobStore,
    budget_bytes: u64,
    layer_limits: LayerLimits,
}

impl ImageStore {
    /// Open (creating if needed) a store in `dir` that may use at most
    /// `budget_bytes` for blobs and unpacked layers together.
    pub fn open(dir: impl AsRef<Path>, budget_bytes: u64) -> Result<ImageStore, OciError> {
        let root = dir.as_ref().to_path_buf();
        let blobs = BlobStore::open(&root)?;
        for d in [root.join("layers"), root.join("images")] {
            fs::create_dir_all(&d).map_err(OciError::io("create directory", &d))?;
        }
        Ok(ImageStore {
            root,
            blobs,
            budget_bytes,
            layer_limits: LayerLimits::for_budget(budget_bytes),
        })
    }

    /// Replace the default [`LayerLimits`] (see there).
    pub fn with_layer_limits(mut self, limits: LayerLimits) -> ImageStore {
        self.layer_limits = limits;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Directory an unpacked layer lives in.
    pub fn layer_dir(&self, layer: &Digest) -> PathBuf {
        self.layers_dir().join(layer.hex())
    }

    /// Digests of the images held.
    pub fn images(&self) -> Result<Vec<Digest>, OciError> {
        list_hex_names(&self.images_dir())
    }

    pub fn contains_image(&self, digest: &Digest) -> bool {
        self.images_dir().join(digest.hex()).is_file()
    }

    /// Bytes used on disk by blobs, partial downloads and unpacked layers.
    pub fn usage_bytes(&self) -> Result<u64, OciError> {
        disk_usage(&self.root)
    }

    fn record_image(&self, digest: &Digest, label: &str) -> Result<(), OciError> {
        let path = self.images_dir().join(digest.hex());
        if path.is_file() {
            return Ok(());
        }
        let tmp = self.blobs.tmp_path("image");
        fs::write(&tmp, label).map_err(OciError::io("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(OciError::io("rename into place", &path))?;
        sync_dir(&self.images_dir())
    }

    /// Pull `image` for `platform` from its registry: index (if any), platform
    /// manifest, config and layers. Complete blobs already in the store are not
    /// fetched again; a partial download continues from where it stopped (HTTP
    /// `Range`). Every blob is verified against its digest before it is kept.
    /// A failed pull can simply be retried. Layers are unpacked by [`Self::prepare`].
    ///
    /// `progress` is called from the pulling task after every chunk; to observe a
    /// pull from elsewhere, feed a watch channel:
    /// `let (tx, rx) = tokio::sync::watch::channel(PullProgress::default());`
    /// `store.pull(&client, &image, &platform, &move |p| { tx.send_replace(p); })`.
    pub async fn pull(
        &self,
        client: &Client,
        image: &ImageRef,
        platform: &Platform,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<PulledImage, OciError> {
        let top = self.ensure_document(client, image, &image.digest).await?;
        let (manifest_digest, manifest_bytes) = match spec::parse_document(&image.digest, &top)? {
            Document::Index(index) => {
                let d = spec::select_platform(&image.digest, &index, platform)?
                    .parsed_digest(&image.digest)?;
                let bytes = self.ensure_document(client, image, &d).await?;
                (d, bytes)
            }
            Document::Image(_) => (image.digest, top),
        };
        let manifest =
            match spec::parse_document(&manifest_digest, &manifest_bytes)? {
                Document::Image(m) => m,
                Document::Index(_) => return Err(OciError::BadManifest {
                    digest: manifest_digest,
                    reason:
                        "an index entry points to another index; nested indexes are not supported"
                            .into(),
                }),
            };
        let config_digest = manifest.config.parsed_digest(&manifest_digest)?;
        if manifest.config.size > spec::MAX_DOCUMENT_BYTES {
            return Err(OciError::BadManifest {
                digest: manifest_digest,
                reason: format!("config size {} is too large", manifest.config.size),
            });
        }
        let mut wanted = vec![(config_digest, manifest.config.size)];
        let mut layers = Vec::new();
        for layer in &manifest.layers {
            let d = layer.parsed_digest(&manifest_digest)?;
            if spec::layer_compression(&layer.media_type).is_none() {
                return Err(OciError::UnsupportedMediaType {
                    digest: d,
                    media_type: layer.media_type.clone(),
                });
            }
            layers.push(d);
            wanted.push((d, layer.size));
        }

        let total_bytes = wanted.iter().map(|(_, s)| s).sum();
        let mut done_bytes = 0;
        let mut needed = 0;
        for (d, size) in &wanted {
            if self.blobs.contains(d) {
                done_bytes += size;
            } else {
                let have = fs::metadata(self.blobs.partial_path(d)).map_or(0, |m| m.len());
                needed += size.saturating_sub(have);
            }
        }
        let used = self.usage_bytes()?;
        if used.saturating_add(needed) > self.budget_bytes {
            return Err(OciError::BudgetExceeded {
                needed,
                used,
                budget: self.budget_bytes,
            });
        }
        progress(PullProgress {
            done_bytes,
            total_bytes,
        });

        let mut downloaded_bytes = 0;
        for (d, size) in &wanted {
            if self.blobs.contains(d) {
                continue;
            }
            let base = done_bytes;
            let report = |have: u64| {
                progress(PullProgress {
                    done_bytes: base + have,
                    total_bytes,
                })
            };
            downloaded_bytes += self.download_blob(client, image, d, *size, &report).await?;
            done_bytes += size;
        }

        let config_bytes = self.blobs.read_verified(&config_digest)?;
        let config = spec::parse_config(&config_digest, &config_bytes)?;
        if config.rootfs.diff_ids.len() != layers.len() {
            return Err(OciError::BadManifest {
                digest: config_digest,
                reason: format!(
                    "config lists {} layer diff ids but the manifest has {} layers",
                    config.rootfs.diff_ids.len(),
                    layers.len()
                ),
            });
        }
        self.record_image(&image.digest, &image.repository)?;
        tracing::info!(image = %image, downloaded_bytes, "pulled image");
        Ok(PulledImage {
            image: image.clone(),
            manifest: manifest_digest,
            config: config.image_config(),
            layers,
            downloaded_bytes,
        })
    }

    /// A manifest or index, from the store if present and intact, else the registry.
    async fn ensure_document(
        &self,
        client: &Client,
        image: &ImageRef,
        digest: &Digest,
    ) -> Result<Vec<u8>, OciError> {
        if self.blobs.contains(digest) {
            match self.blobs.read_verified(digest) {
                Ok(bytes) => return Ok(bytes),
                Err(OciError::DigestMismatch { .. }) => {
                    tracing::warn!(%digest, "stored manifest is corrupt; fetching it again");
                    self.blobs.remove(digest)?;
                }
                Err(e) => return Err(e),
            }
        }
        let bytes = client.fetch_manifest(image, digest).await?;
        self.blobs.write(digest, &bytes)?;
        Ok(bytes)
    }

    /// Download one blob into `partial/`, resuming, then verify and commit it.
    /// Returns the bytes received.
    async fn download_blob(
        &self,
        client: &Client,
        image: &ImageRef,
        digest: &Digest,
        size: u64,
        report: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, OciError> {
        let (file, mut have) = self.blobs.open_partial(digest)?;
        let partial = self.blobs.partial_path(digest);
        if have > size {
            tracing::warn!(%digest, have, size, "partial download is longer than the blob; restarting it");
            file.set_len(0)
                .map_err(OciError::io("truncate", &partial))?;
            have = 0;
        }
        let mut received = 0;
        if have < size {
            if have > 0 {
                tracing::info!(%digest, have, size, "resuming blob download");
            }
            let body = client.fetch_blob(image, digest, have).await?;
            if !body.resumed && have > 0 {
                tracing::info!(%digest, "registry ignored the range request; downloading from the start");
                file.set_len(0)
                    .map_err(OciError::io("truncate", &partial))?;
                have = 0;
            }
            let mut out = tokio::fs::File::from_std(file);
            let mut stream = body.stream;
            let transfer = |reason: String| OciError::Transfer {
                reference: image.to_string(),
                digest: *digest,
                reason,
            };
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        // tokio's File hands writes to a blocking thread; flush so
                        // the partial file holds every byte we counted before the
                        // caller (or the next pull) looks at its length.
                        out.flush().await.map_err(OciError::io("write", &partial))?;
                        return Err(transfer(format!(
                            "connection failed after {have} of {size} bytes ({e}); the next pull resumes from there"
                        )));
                    }
                };
                if have + chunk.len() as u64 > size {
                    drop(out);
                    self.blobs.discard_partial(digest)?;
                    return Err(OciError::SizeMismatch {
                        what: format!("blob {digest} served by the registry"),
                        expected: size,
                        actual: have + chunk.len() as u64,
                    });
                }
                out.write_all(&chunk)
                    .await
                    .map_err(OciError::io("write", &partial))?;
                have += chunk.len() as u64;
                received += chunk.len() as u64;
                report(have);
            }
            out.flush().await.map_err(OciError::io("write", &partial))?;
            if have < size {
                return Err(transfer(format!(
                    "stream ended after {have} of {size} bytes; the next pull resumes from there"
                )));
            }
        }
        let blobs = self.blobs.clone();
        let d = *digest;
        tokio::task::spawn_blocking(move || blobs.commit_partial(&d, size))
            .await
            .map_err(|e| OciError::Task(e.to_string()))??;
        Ok(received)
    }

    /// Unpack (once) and return the layers and config of a held image for
    /// `platform`. Blocking: run it in `spawn_blocking`.
    pub fn prepare(&self, digest: &Digest, platform: &Platform) -> Result<PreparedImage, OciError> {
        if !self.contains_image(digest) {
            return Err(OciError::UnknownImage(*digest));
        }
        let top = self.blobs.read_verified(digest)?;
        let manifest_digest = match spec::parse_document(digest, &top)? {
            Document::Index(index) => {
                spec::select_platform(digest, &index, platform)?.parsed_digest(digest)?
            }
            Document::Image(_) => *digest,
        };
        let manifest = match spec::parse_document(
            &manifest_digest,
            &self.blobs.read_verified(&manifest_digest)?,
        )? {
            Document::Image(m) => m,
            Document::Index(_) => {
                return Err(OciError::BadManifest {
                    digest: manifest_digest,
                    reason: "nested indexes are not supported".into(),
                })
            }
        };
        let config_digest = manifest.config.parsed_digest(&manifest_digest)?;
        let config =
            spec::parse_config(&config_digest, &self.blobs.read_verified(&config_digest)?)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(OciError::BadManifest {
                digest: config_digest,
                reason: "number of diff ids and layers differ".into(),
            });
        }
        let mut layers = Vec::new();
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let d = layer.parsed_digest(&manifest_digest)?;
            let diff_id: Digest = diff_id.parse().map_err(|_| OciError::BadManifest {
                digest: config_digest,
                reason: format!("diff id {diff_id:?} is not a sha256 digest"),
            })?;
            layers.push(self.ensure_unpacked(&d, &diff_id)?);
        }
        Ok(PreparedImage {
            digest: *digest,
            manifest: manifest_digest,
            layers,
            config: config.image_config(),
        })
    }

    /// Unpack layer `digest` into `layers/<hex>` unless already there. The layer
    /// is unpacked in `tmp/` and published by rename only once the blob digest and
    /// diff id both verified, after a `syncfs` so a crash cannot leave a
    /// half-written layer under its final name.
    fn ensure_unpacked(&self, digest: &Digest, diff_id: &Digest) -> Result<PathBuf, OciError> {
        let dir = self.layer_dir(digest);
        if dir.is_dir() {
            return Ok(dir);
        }
        let blob = self.blobs.path(digest);
        let file = match fs::File::open(&blob) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OciError::MissingBlob(*digest))
            }
            Err(e) => return Err(OciError::io("open", &blob)(e)),
        };
        let compressed = file.metadata().map_err(OciError::io("stat", &blob))?.len();
        let limit = self.layer_limits.limit_for(compressed);
        let tmp = self.blobs.tmp_path("layer");
        fs::create_dir(&tmp).map_err(OciError::io("create directory", &tmp))?;
        let result = (|| {
            let unpacked =
                unpack_layer_limited(file, &tmp, limit).map_err(|source| OciError::Layer {
                    digest: *digest,
                    source,
                })?;
            if unpacked.blob_digest != *digest {
                // The stored blob rotted; drop it so the next pull fetches it again.
                self.blobs.remove(digest)?;
                return Err(OciError::DigestMismatch {
                    what: format!("stored layer blob {}", blob.display()),
                    expected: *digest,
                    actual: unpacked.blob_digest,
                });
            }
            if unpacked.diff_id != *diff_id {
                return Err(OciError::DigestMismatch {
                    what: format!("uncompressed content (diff id) of layer {digest}"),
                    expected: *diff_id,
                    actual: unpacked.diff_id,
                });
            }
            let d = fs::File::open(&tmp).map_err(OciError::io("open", &tmp))?;
            rustix::fs::syncfs(&d).map_err(|e| OciError::io("syncfs", &tmp)(e.into()))?;
            tracing::debug!(layer = %digest, entries = unpacked.entries, whiteouts = unpacked.whiteouts, "unpacked layer");
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, &dir) {
            let _ = fs::remove_dir_all(&tmp);
            // Someone else published the same layer first: theirs is as good.
            if !dir.is_dir() {
                return Err(OciError::io("rename into place", &dir)(e));
            }
        }
        sync_dir(&self.layers_dir())?;
        Ok(dir)
    }
}

/// Sum of file sizes under `path` (not following symlinks).
fn disk_usage(path: &Path) -> Result<u64, OciError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(OciError::io("stat", path)(e)),
    };
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in fs::read_dir(path).map_err(OciError::io("list", path))? {
        let entry = entry.map_err(OciError::io("list", path))?;
        total += disk_usage(&entry.path())?;
    }
    Ok(total)
}
