//! Importing OCI image layouts (a directory, or a tar of one): the base of
//! air-gapped bundles. Every blob is verified against its digest on the way in.

use super::{ImageStore, ImportedImage};
use crate::spec::{self, Descriptor, Document, ImageIndex};
use crate::OciError;
use outpost_protocol::Digest;
use std::fs;
use std::io::Read;
use std::path::Path;

impl ImageStore {
    /// Import every image listed in an OCI image layout's `index.json`, from a
    /// directory or a tar of one. All blobs reachable from the listed images
    /// (every platform) are verified and stored. Blocking.
    pub fn import_layout(&self, path: &Path) -> Result<Vec<ImportedImage>, OciError> {
        let layout_err = |reason: String| OciError::Layout {
            path: path.to_path_buf(),
            reason,
        };
        let meta = fs::metadata(path).map_err(OciError::io("open image layout", path))?;
        let (source_dir, index_bytes) = if meta.is_dir() {
            let index_path = path.join("index.json");
            let bytes = read_limited(&index_path)?;
            (Some(path.to_path_buf()), bytes)
        } else {
            (None, self.ingest_layout_tar(path)?)
        };
        let index: ImageIndex = serde_json::from_slice(&index_bytes)
            .map_err(|e| layout_err(format!("index.json is not an image index: {e}")))?;
        let mut out = Vec::new();
        for entry in &index.manifests {
            let digest: Digest = entry.digest.parse().map_err(|_| {
                layout_err(format!("index.json lists bad digest {:?}", entry.digest))
            })?;
            self.import_tree(source_dir.as_deref(), path, entry, &digest, 0)?;
            let name = entry.annotations.get(spec::ANNOTATION_REF_NAME).cloned();
            self.record_image(&digest, name.as_deref().unwrap_or(""))?;
            out.push(ImportedImage { digest, name });
        }
        Ok(out)
    }

    /// Store every blob of a layout tar under `blobs/sha256/` (verified against
    /// its file name) and return its `index.json`.
    fn ingest_layout_tar(&self, path: &Path) -> Result<Vec<u8>, OciError> {
        let layout_err = |reason: String| OciError::Layout {
            path: path.to_path_buf(),
            reason,
        };
        let file = fs::File::open(path).map_err(OciError::io("open", path))?;
        let mut archive = tar::Archive::new(file);
        let mut index = None;
        let read_err = OciError::io("read image layout tar", path);
        let entries = archive.entries().map_err(read_err)?;
        for entry in entries {
            let mut entry = entry.map_err(OciError::io("read image layout tar", path))?;
            let raw = entry.path_bytes().into_owned();
            let Ok(rel) = crate::unpack::clean_path(&raw) else {
                return Err(layout_err(format!(
                    "entry {:?} is not a relative path",
                    String::from_utf8_lossy(&raw)
                )));
            };
            let rel = rel.to_string_lossy().into_owned();
            if rel == "index.json" {
                let mut bytes = Vec::new();
                (&mut entry)
                    .take(spec::MAX_DOCUMENT_BYTES + 1)
                    .read_to_end(&mut bytes)
                    .map_err(OciError::io("read index.json in", path))?;
                if bytes.len() as u64 > spec::MAX_DOCUMENT_BYTES {
                    return Err(layout_err("index.json is too large".into()));
                }
                index = Some(bytes);
            } else if let Some(hex) = rel.strip_prefix("blobs/sha256/") {
                if entry.header().entry_type() != tar::EntryType::Regular {
                    continue;
                }
                let digest: Digest = format!("sha256:{hex}").parse().map_err(|_| {
                    layout_err(format!("blob file name {rel:?} is not a sha256 digest"))
                })?;
                if !self.blobs.contains(&digest) {
                    let source = format!("{} ({rel})", path.display());
                    self.blobs.write_from(&digest, None, &mut entry, &source)?;
                }
            }
        }
        index.ok_or_else(|| layout_err("no index.json in the tar".into()))
    }

    /// Make sure `digest` and everything it references are in the store.
    fn import_tree(
        &self,
        source_dir: Option<&Path>,
        layout: &Path,
        desc: &Descriptor,
        digest: &Digest,
        depth: u8,
    ) -> Result<(), OciError> {
        if depth > 2 {
            return Err(OciError::Layout {
                path: layout.to_path_buf(),
                reason: "indexes nested more than two deep".into(),
            });
        }
        self.import_blob(source_dir, layout, digest, desc.size)?;
        let bytes = self.blobs.read_verified(digest)?;
        match spec::parse_document(digest, &bytes)? {
            Document::Index(index) => {
                for child in &index.manifests {
                    let d = child.parsed_digest(digest)?;
                    self.import_tree(source_dir, layout, child, &d, depth + 1)?;
                }
            }
            Document::Image(m) => {
                for blob in std::iter::once(&m.config).chain(&m.layers) {
                    let d = blob.parsed_digest(digest)?;
                    self.import_blob(source_dir, layout, &d, blob.size)?;
                }
            }
        }
        Ok(())
    }

    fn import_blob(
        &self,
        source_dir: Option<&Path>,
        layout: &Path,
        digest: &Digest,
        size: u64,
    ) -> Result<(), OciError> {
        if let Some(have) = self.blobs.size(digest) {
            if have == size {
                return Ok(());
            }
            return Err(OciError::SizeMismatch {
                what: format!("blob {digest} in {}", layout.display()),
                expected: size,
                actual: have,
            });
        }
        let Some(dir) = source_dir else {
            return Err(OciError::Layout {
                path: layout.to_path_buf(),
                reason: format!("blob {digest} is referenced but not in the tar"),
            });
        };
        let src = dir.join("blobs").join("sha256").join(digest.hex());
        let file = fs::File::open(&src).map_err(OciError::io("open layout blob", &src))?;
        self.blobs
            .write_from(digest, Some(size), file, &src.display().to_string())?;
        Ok(())
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, OciError> {
    let file = fs::File::open(path).map_err(OciError::io("open", path))?;
    let mut bytes = Vec::new();
    file.take(spec::MAX_DOCUMENT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(OciError::io("read", path))?;
    if bytes.len() as u64 > spec::MAX_DOCUMENT_BYTES {
        return Err(OciError::Layout {
            path: path.to_path_buf(),
            reason: "file is too large".into(),
        });
    }
    Ok(bytes)
}
