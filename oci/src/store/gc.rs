//! Garbage collection: mark what the kept images reference, sweep the rest
//! (images, blobs, partial downloads, unpacked layers, temp files); and the
//! per-image accounting (`describe`) the same marking gives.

use super::{disk_usage, GcReport, HeldImage, ImageStore};
use crate::blobs::list_hex_names;
use crate::spec::{self, Document};
use crate::OciError;
use outpost_protocol::Digest;
use std::collections::BTreeSet;
use std::fs;

impl ImageStore {
    /// Remove every image not in `keep`, and every blob, partial download and
    /// unpacked layer that no kept image references. Blocking.
    pub fn gc(&self, keep: &[Digest]) -> Result<GcReport, OciError> {
        let keep: BTreeSet<Digest> = keep.iter().copied().collect();
        let mut live_blobs = BTreeSet::new();
        for d in &keep {
            self.mark(d, &mut live_blobs, 0);
        }
        let mut report = GcReport {
            budget_bytes: self.budget_bytes,
            ..GcReport::default()
        };
        for image in self.images()? {
            if !keep.contains(&image) {
                let path = self.images_dir().join(image.hex());
                fs::remove_file(&path).map_err(OciError::io("remove", &path))?;
                report.removed_images.push(image);
            }
        }
        for blob in self.blobs.list()? {
            if !live_blobs.contains(&blob) {
                report.freed_bytes += self.blobs.remove(&blob)?;
                report.removed_blobs += 1;
            }
        }
        for partial in list_hex_names(&self.blobs.partial_dir())? {
            if !live_blobs.contains(&partial) {
                let path = self.blobs.partial_path(&partial);
                report.freed_bytes += fs::metadata(&path).map_or(0, |m| m.len());
                fs::remove_file(&path).map_err(OciError::io("remove", &path))?;
            }
        }
        for layer in list_hex_names(&self.layers_dir())? {
            if !live_blobs.contains(&layer) {
                let path = self.layer_dir(&layer);
                report.freed_bytes += disk_usage(&path)?;
                fs::remove_dir_all(&path).map_err(OciError::io("remove", &path))?;
                report.removed_layers += 1;
            }
        }
        // Leftovers of interrupted writes and unpacks.
        let tmp = self.blobs.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(OciError::io("list", &tmp))? {
            let path = entry.map_err(OciError::io("list", &tmp))?.path();
            report.freed_bytes += disk_usage(&path)?;
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(OciError::io("remove", &path))?;
        }
        report.used_bytes = self.usage_bytes()?;
        tracing::info!(?report, "image garbage collection done");
        Ok(report)
    }

    /// Every held image with what it costs on disk: all its blobs and unpacked
    /// layers (`bytes`), and the part no other held image shares
    /// (`unique_bytes`: what removing it alone would free). Blocking.
    pub fn describe(&self) -> Result<Vec<HeldImage>, OciError> {
        let images = self.images()?;
        let marks: Vec<BTreeSet<Digest>> = images
            .iter()
            .map(|d| {
                let mut live = BTreeSet::new();
                self.mark(d, &mut live, 0);
                live
            })
            .collect();
        let mut refs: std::collections::BTreeMap<Digest, usize> = Default::default();
        for m in &marks {
            for d in m {
                *refs.entry(*d).or_default() += 1;
            }
        }
        let cost = |d: &Digest| -> Result<u64, OciError> {
            Ok(self.blobs.size(d).unwrap_or(0) + disk_usage(&self.layer_dir(d))?)
        };
        let mut out = Vec::with_capacity(images.len());
        for (digest, live) in images.into_iter().zip(marks) {
            let mut bytes = 0;
            let mut unique_bytes = 0;
            for d in &live {
                let c = cost(d)?;
                bytes += c;
                if refs.get(d) == Some(&1) {
                    unique_bytes += c;
                }
            }
            let label =
                fs::read_to_string(self.images_dir().join(digest.hex())).unwrap_or_default();
            out.push(HeldImage {
                digest,
                repository: label.trim().to_string(),
                bytes,
                unique_bytes,
            });
        }
        Ok(out)
    }

    /// Mark `digest` and what it references (only blobs present locally).
    fn mark(&self, digest: &Digest, live: &mut BTreeSet<Digest>, depth: u8) {
        if depth > 2 || !self.blobs.contains(digest) {
            return;
        }
        live.insert(*digest);
        // A corrupt or unparsable manifest marks nothing further; its children
        // are collected and a later pull fetches them again.
        let Ok(bytes) = self.blobs.read_verified(digest) else {
            return;
        };
        match spec::parse_document(digest, &bytes) {
            Ok(Document::Index(index)) => {
                for child in &index.manifests {
                    if let Ok(d) = child.parsed_digest(digest) {
                        self.mark(&d, live, depth + 1);
                    }
                }
            }
            Ok(Document::Image(m)) => {
                for blob in std::iter::once(&m.config).chain(&m.layers) {
                    if let Ok(d) = blob.parsed_digest(digest) {
                        live.insert(d);
                    }
                }
            }
            Err(_) => {}
        }
    }
}
