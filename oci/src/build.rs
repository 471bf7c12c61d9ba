//! Writes OCI image layouts from static binaries, reproducibly and without
//! Docker: the same inputs always give the same blobs and the same index digest.
//!
//! Reproducibility comes from: tar entries sorted by path with mtime 0, uid/gid
//! 0 and no user/group names; gzip with no file name and mtime 0 at a fixed
//! level; JSON written from structs with a fixed field order and no timestamps.

use crate::spec::{
    ConfigFile, Descriptor, ImageIndex, ImageManifest, OciPlatform, RootFs, RuntimeConfig,
    ANNOTATION_REF_NAME, MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX, MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_TAR, MEDIA_OCI_LAYER_ZSTD, MEDIA_OCI_MANIFEST,
};
use crate::OciError;
use outpost_protocol::Digest;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One file or directory to put in a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        contents: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// A reproducible tar of `entries` (sorted by path; parents need not be listed).
pub fn reproducible_tar(entries: &[Entry]) -> Result<Vec<u8>, OciError> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path().cmp(b.path()));
    let mut builder = tar::Builder::new(Vec::new());
    let tar_err = |path: &str, e: std::io::Error| OciError::Io {
        action: "add to layer tar",
        path: PathBuf::from(path),
        source: e,
    };
    for entry in sorted {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let path = entry.path().trim_start_matches('/');
        match entry {
            Entry::Dir { mode, .. } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{path}/"), std::io::empty())
                    .map_err(|e| tar_err(path, e))?;
            }
            Entry::File { mode, contents, .. } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(contents.len() as u64);
                builder
                    .append_data(&mut header, path, contents.as_slice())
                    .map_err(|e| tar_err(path, e))?;
            }
            Entry::Symlink { target, .. } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder
                    .append_link(&mut header, path, target)
                    .map_err(|e| tar_err(path, e))?;
            }
        }
    }
    builder
        .into_inner()
        .map_err(|e| tar_err("(end of archive)", e))
}

/// A layer blob and the digest of its uncompressed tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub media_type: String,
    pub blob: Vec<u8>,
    pub diff_id: Digest,
}

impl Layer {
    pub fn plain(tar: Vec<u8>) -> Layer {
        Layer {
            media_type: MEDIA_OCI_LAYER_TAR.into(),
            diff_id: Digest::of(&tar),
            blob: tar,
        }
    }

    /// gzip with an empty header (no name, mtime 0) at level 9.
    pub fn gzip(tar: &[u8]) -> Result<Layer, OciError> {
        let mut enc = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        let gz_err = |e| OciError::Io {
            action: "gzip",
            path: PathBuf::from("(layer)"),
            source: e,
        };
        enc.write_all(tar).map_err(gz_err)?;
        let blob = enc.finish().map_err(gz_err)?;
        Ok(Layer {
            media_type: MEDIA_OCI_LAYER_GZIP.into(),
            diff_id: Digest::of(tar),
            blob,
        })
    }

    pub fn zstd(tar: &[u8]) -> Layer {
        Layer {
            media_type: MEDIA_OCI_LAYER_ZSTD.into(),
            diff_id: Digest::of(tar),
            blob: ruzstd::encoding::compress_to_vec(
                tar,
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
        }
    }
}

/// Writes blobs and `index.json` of an OCI image layout directory.
pub struct LayoutWriter {
    dir: PathBuf,
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs into a Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl LayoutWriter {
    /// Start a layout in `dir` (created if needed).
    pub fn create(dir: &Path) -> Result<LayoutWriter, OciError> {
        let blobs = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(OciError::io("create directory", &blobs))?;
        let marker = dir.join("oci-layout");
        fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(OciError::io("write", &marker))?;
        Ok(LayoutWriter {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Store a blob and describe it.
    pub fn add_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor, OciError> {
        let digest = Digest::of(bytes);
        let path = self.dir.join("blobs").join("sha256").join(digest.hex());
        fs::write(&path, bytes).map_err(OciError::io("write", &path))?;
        Ok(Descriptor {
            media_type: media_type.into(),
            digest: digest.to_string(),
            size: bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        })
    }

    /// Store a single-platform image; returns its manifest descriptor with the
    /// platform set, ready for an index.
    pub fn add_image(
        &self,
        platform: &OciPlatform,
        layers: &[Layer],
        config: RuntimeConfig,
    ) -> Result<Descriptor, OciError> {
        let config_file = ConfigFile {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            config,
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: layers.iter().map(|l| l.diff_id.to_string()).collect(),
            },
        };
        let config_desc = self.add_blob(MEDIA_OCI_CONFIG, &json(&config_file))?;
        let mut layer_descs = Vec::new();
        for layer in layers {
            layer_descs.push(self.add_blob(&layer.media_type, &layer.blob)?);
        }
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_MANIFEST.into()),
            config: config_desc,
            layers: layer_descs,
        };
        let mut desc = self.add_blob(MEDIA_OCI_MANIFEST, &json(&manifest))?;
        desc.platform = Some(platform.clone());
        Ok(desc)
    }

    /// Store an image index over `manifests`.
    pub fn add_index(&self, manifests: Vec<Descriptor>) -> Result<Descriptor, OciError> {
        let index = ImageIndex {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_INDEX.into()),
            manifests,
        };
        self.add_blob(MEDIA_OCI_INDEX, &json(&index))
    }

    /// Write `index.json` listing `root` under the tag `name`.
    pub fn finish(&self, name: &str, root: &Descriptor) -> Result<(), OciError> {
        let mut entry = root.clone();
        entry.platform = None;
        entry
            .annotations
            .insert(ANNOTATION_REF_NAME.into(), name.into());
        let index = ImageIndex {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_INDEX.into()),
            manifests: vec![entry],
        };
        let path = self.dir.join("index.json");
        fs::write(&path, json(&index)).map_err(OciError::io("write", &path))
    }
}

/// One platform's binary for [`build_static_image`].
#[derive(Debug, Clone)]
pub struct PlatformBinary {
    pub platform: OciPlatform,
    pub binary: PathBuf,
}

/// Build a multi-arch image of one static binary: a single layer holding the
/// binary at `binary_path` plus `extra_dirs`, an image per platform, and an index
/// tagged `tag`. Replaces `out` atomically. Returns the index descriptor.
pub fn build_static_image(
    out: &Path,
    tag: &str,
    binary_path: &str,
    extra_dirs: &[String],
    config: RuntimeConfig,
    binaries: &[PlatformBinary],
) -> Result<Descriptor, OciError> {
    let parent = out.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(OciError::io("create directory", parent))?;
    let staging = parent.join(format!(
        ".{}.tmp-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("layout"),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&staging);
    let writer = LayoutWriter::create(&staging)?;
    let mut manifests = Vec::new();
    for pb in binaries {
        let contents = fs::read(&pb.binary).map_err(OciError::io("read binary", &pb.binary))?;
        let mut entries = vec![Entry::File {
            path: binary_path.trim_start_matches('/').into(),
            mode: 0o755,
            contents,
        }];
        for d in extra_dirs {
            entries.push(Entry::Dir {
                path: d.trim_start_matches('/').into(),
                mode: 0o755,
            });
        }
        let layer = Layer::gzip(&reproducible_tar(&entries)?)?;
        manifests.push(writer.add_image(&pb.platform, &[layer], config.clone())?);
    }
    let index = writer.add_index(manifests)?;
    writer.finish(tag, &index)?;
    let _ = fs::remove_dir_all(out);
    fs::rename(&staging, out).map_err(OciError::io("rename into place", out))?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_is_sorted_and_independent_of_input_order() {
        let a = Entry::File {
            path: "b".into(),
            mode: 0o644,
            contents: b"x".to_vec(),
        };
        let b = Entry::Dir {
            path: "a".into(),
            mode: 0o755,
        };
        let t1 = reproducible_tar(&[a.clone(), b.clone()]).unwrap();
        let t2 = reproducible_tar(&[b, a]).unwrap();
        assert_eq!(t1, t2);
        let g1 = Layer::gzip(&t1).unwrap();
        let g2 = Layer::gzip(&t2).unwrap();
        assert_eq!(g1, g2);
    }
}
