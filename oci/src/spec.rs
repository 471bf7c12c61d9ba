//! The OCI JSON documents we read and write (image index, image manifest, image
//! config, descriptors) and the pure decisions made on them: what kind of
//! manifest a blob is, which index entry fits a platform, how a layer is
//! compressed. No I/O here.
//!
//! We keep our own small serde structs instead of a full OCI model: they parse
//! exactly the fields Outpost uses (unknown fields are ignored, as the spec asks)
//! and serialize with a fixed field order, which keeps built images reproducible.

use crate::OciError;
use outpost_protocol::{Digest, ImageConfig, Platform};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Manifest media types we ask a registry for, index types first.
pub const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_LIST,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_MANIFEST,
];

/// Largest manifest or config we read into memory. Registries cap manifests at
/// 4 MiB; a larger document is hostile or broken.
pub const MAX_DOCUMENT_BYTES: u64 = 4 * 1024 * 1024;

/// The `ref.name` annotation of an OCI layout's `index.json` entries.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<OciPlatform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The descriptor's digest, refusing anything but well-formed sha256.
    pub fn parsed_digest(&self, parent: &Digest) -> Result<Digest, OciError> {
        self.digest.parse().map_err(|_| OciError::BadManifest {
            digest: *parent,
            reason: format!(
                "descriptor digest {:?} is not sha256:<64 lowercase hex>",
                self.digest
            ),
        })
    }
}

/// `platform` of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for OciPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image index (or Docker manifest list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The image config document, reduced to what Outpost uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: RuntimeConfig,
    pub rootfs: RootFs,
}

/// `config.config`: how a container of this image starts. Capitalised keys are
/// the spec's, inherited from Docker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `config.rootfs`: digests of the uncompressed layer tars.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

impl ConfigFile {
    /// The part of the config the runtime needs.
    pub fn image_config(&self) -> ImageConfig {
        let rc = &self.config;
        ImageConfig {
            entrypoint: rc.entrypoint.clone().unwrap_or_default(),
            cmd: rc.cmd.clone().unwrap_or_default(),
            env: rc.env.clone().unwrap_or_default(),
            working_dir: rc.working_dir.clone().filter(|w| !w.is_empty()),
            user: rc.user.clone().filter(|u| !u.is_empty()),
        }
    }
}

/// A parsed manifest blob: either an index of per-platform manifests or one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Index(ImageIndex),
    Image(ImageManifest),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
}

/// Decide whether `bytes` (the blob with digest `digest`) is an index or an image
/// manifest, by its `mediaType` or, when absent (allowed by the spec), its shape.
pub fn parse_document(digest: &Digest, bytes: &[u8]) -> Result<Document, OciError> {
    let bad = |reason: String| OciError::BadManifest {
        digest: *digest,
        reason,
    };
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON manifest: {e}")))?;
    let is_index = match probe.media_type.as_deref() {
        Some(MEDIA_OCI_INDEX) | Some(MEDIA_DOCKER_LIST) => true,
        Some(MEDIA_OCI_MANIFEST) | Some(MEDIA_DOCKER_MANIFEST) => false,
        Some(other) => return Err(bad(format!("unsupported manifest media type {other:?}"))),
        None if probe.manifests.is_some() && probe.layers.is_none() => true,
        None if probe.layers.is_some() => false,
        None => return Err(bad("neither an image index nor an image manifest".into())),
    };
    let doc = if is_index {
        Document::Index(
            serde_json::from_slice(bytes).map_err(|e| bad(format!("bad image index: {e}")))?,
        )
    } else {
        Document::Image(
            serde_json::from_slice(bytes).map_err(|e| bad(format!("bad image manifest: {e}")))?,
        )
    };
    Ok(doc)
}

/// Parse an image config blob.
pub fn parse_config(digest: &Digest, bytes: &[u8]) -> Result<ConfigFile, OciError> {
    serde_json::from_slice(bytes).map_err(|e| OciError::BadManifest {
        digest: *digest,
        reason: format!("bad image config: {e}"),
    })
}

/// arm64's `v8` variant is the default and may be written or left out.
fn normalized_variant(architecture: &str, variant: Option<&str>) -> Option<String> {
    match (architecture, variant) {
        ("arm64", Some("v8")) | (_, Some("")) => None,
        (_, v) => v.map(str::to_string),
    }
}

/// How well an index entry fits `wanted`: `None` if it cannot run, lower is better.
fn fit(wanted: &Platform, offered: &OciPlatform) -> Option<u8> {
    if offered.os != "linux" || offered.architecture != wanted.architecture {
        return None;
    }
    let w = normalized_variant(&wanted.architecture, wanted.variant.as_deref());
    let o = normalized_variant(&offered.architecture, offered.variant.as_deref());
    if w == o {
        return Some(0);
    }
    // A 32-bit ARM CPU runs code built for older ARM variants (v7 runs v6 and v5).
    if wanted.architecture == "arm" {
        let level = |v: &Option<String>| {
            v.as_deref()
                .and_then(|s| s.strip_prefix('v'))
                .and_then(|n| n.parse::<u8>().ok())
        };
        if let (Some(w), Some(o)) = (level(&w), level(&o)) {
            if o < w {
                return Some(w - o);
            }
        }
    }
    None
}

/// Pick the index entry for `wanted`; the error lists what the index offers.
pub fn select_platform<'a>(
    index_digest: &Digest,
    index: &'a ImageIndex,
    wanted: &Platform,
) -> Result<&'a Descriptor, OciError> {
    index
        .manifests
        .iter()
        .filter_map(|d| {
            d.platform
                .as_ref()
                .and_then(|p| fit(wanted, p))
                .map(|f| (f, d))
        })
        .min_by_key(|(f, _)| *f)
        .map(|(_, d)| d)
        .ok_or_else(|| OciError::NoPlatform {
            image: *index_digest,
            wanted: platform_name(wanted),
            available: index
                .manifests
                .iter()
                .map(|d| {
                    d.platform
                        .as_ref()
                        .map_or_else(|| "(no platform)".to_string(), |p| p.to_string())
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// `linux/arm/v7`-style name of a platform.
pub fn platform_name(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("linux/{}/{v}", p.architecture),
        None => format!("linux/{}", p.architecture),
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Compression named by a layer media type; `None` for types we do not unpack
/// (foreign/non-distributable layers, encrypted layers, …).
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        MEDIA_OCI_LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => {
            Some(Compression::None)
        }
        MEDIA_OCI_LAYER_GZIP | MEDIA_DOCKER_LAYER_GZIP => Some(Compression::Gzip),
        MEDIA_OCI_LAYER_ZSTD | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            Some(Compression::Zstd)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 1,
            platform: Some(OciPlatform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
            annotations: BTreeMap::new(),
        }
    }

    fn platform(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn selects_the_matching_platform() {
        let index = ImageIndex {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_INDEX.into()),
            manifests: vec![
                entry("amd64", None),
                entry("arm64", Some("v8")),
                entry("arm", Some("v6")),
                entry("arm", Some("v7")),
            ],
        };
        let d = Digest([0; 32]);
        let cases = [
            (platform("amd64", None), 0),
            (platform("arm64", None), 1),
            (platform("arm64", Some("v8")), 1),
            (platform("arm", Some("v7")), 3),
            (platform("arm", Some("v6")), 2),
        ];
        for (wanted, expected) in cases {
            let got = select_platform(&d, &index, &wanted).unwrap();
            assert!(std::ptr::eq(got, &index.manifests[expected]), "{wanted:?}");
        }
        let err = select_platform(&d, &index, &platform("riscv64", None)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("linux/riscv64") && msg.contains("linux/arm/v7"),
            "{msg}"
        );
    }

    #[test]
    fn armv7_falls_back_to_v6_but_not_the_reverse() {
        let index = ImageIndex {
            schema_version: 2,
            media_type: None,
            manifests: vec![entry("arm", Some("v6"))],
        };
        let d = Digest([0; 32]);
        assert!(select_platform(&d, &index, &platform("arm", Some("v7"))).is_ok());
        let only_v7 = ImageIndex {
            manifests: vec![entry("arm", Some("v7"))],
            ..index
        };
        assert!(select_platform(&d, &only_v7, &platform("arm", Some("v6"))).is_err());
    }

    #[test]
    fn documents_are_told_apart_by_media_type_or_shape() {
        let d = Digest([0; 32]);
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse_document(&d, index), Ok(Document::Index(_))));
        let image = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":1},"layers":[]}"#;
        assert!(matches!(parse_document(&d, image), Ok(Document::Image(_))));
        let weird = br#"{"schemaVersion":2,"mediaType":"text/plain"}"#;
        assert!(parse_document(&d, weird)
            .unwrap_err()
            .to_string()
            .contains("text/plain"));
        assert!(parse_document(&d, b"not json").is_err());
    }

    #[test]
    fn config_maps_to_the_protocol_image_config() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/hello"],"Env":["A=1"],"WorkingDir":""},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = parse_config(&Digest([0; 32]), json).unwrap().image_config();
        assert_eq!(c.entrypoint, vec!["/hello"]);
        assert_eq!(c.env, vec!["A=1"]);
        assert_eq!(c.working_dir, None);
    }
}
