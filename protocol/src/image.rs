//! Image references as they appear in a manifest: always pinned by sha256 digest.
//!
//! The hub resolves tags at apply time; the agent only ever sees a digest, so every
//! device in a deployment runs the same bits and a registry that moves a tag later
//! cannot change what runs.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A sha256 content digest (`sha256:<64 hex>`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Digest(out)
    }

    /// The 64 lowercase hex characters, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a digest or image reference string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("digest {0:?} is not of the form sha256:<64 lowercase hex characters>")]
    BadDigest(String),
    #[error("image reference {0:?} is not pinned by digest (expected NAME@sha256:<hex>)")]
    NotPinned(String),
    #[error("image reference {reference:?} has an invalid repository name: {why}")]
    BadRepository {
        reference: String,
        why: &'static str,
    },
}

impl FromStr for Digest {
    type Err = ImageRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ImageRefError::BadDigest(s.to_string());
        let hex_part = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| bad())?;
        Ok(Digest(out))
    }
}

/// `repository@sha256:…`, where repository may include a registry host
/// (`registry.example:5000/team/app`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageRef {
    pub repository: String,
    pub digest: Digest,
}

impl ImageRef {
    /// Check the repository part: what the OCI distribution spec allows, plus an
    /// optional `host[:port]/` prefix.
    pub fn validate_repository(repository: &str) -> Result<(), &'static str> {
        if repository.is_empty() || repository.len() > 255 {
            return Err("must be 1 to 255 characters");
        }
        if repository.starts_with('/') || repository.ends_with('/') || repository.contains("//") {
            return Err("must not start or end with '/' or contain '//'");
        }
        if repository.split('/').any(|seg| seg == "." || seg == "..") {
            return Err("must not contain '.' or '..' path segments");
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || "._-/:".contains(c);
        if !repository.chars().all(ok) {
            return Err("may only contain letters, digits and . _ - / :");
        }
        Ok(())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repository, self.digest)
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (repository, digest) = s
            .rsplit_once('@')
            .ok_or_else(|| ImageRefError::NotPinned(s.to_string()))?;
        ImageRef::validate_repository(repository).map_err(|why| ImageRefError::BadRepository {
            reference: s.to_string(),
            why,
        })?;
        Ok(ImageRef {
            repository: repository.to_string(),
            digest: digest.parse()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_pinned_references() {
        let s = format!("localhost:5000/outpost/hello@sha256:{}", "ab".repeat(32));
        let r: ImageRef = s.parse().unwrap();
        assert_eq!(r.repository, "localhost:5000/outpost/hello");
        assert_eq!(r.to_string(), s);
    }

    #[test]
    fn refuses_tags_and_bad_digests() {
        assert!(matches!(
            "hello:latest".parse::<ImageRef>(),
            Err(ImageRefError::NotPinned(_))
        ));
        assert!(matches!(
            "hello@sha256:abc".parse::<ImageRef>(),
            Err(ImageRefError::BadDigest(_))
        ));
        let upper = format!("hello@sha256:{}", "AB".repeat(32));
        assert!(upper.parse::<ImageRef>().is_err());
        let dots = format!("../etc@sha256:{}", "ab".repeat(32));
        assert!(matches!(
            dots.parse::<ImageRef>(),
            Err(ImageRefError::BadRepository { .. })
        ));
    }
}

/// The parts of an OCI image config that decide how a container starts. The image
/// store reads it from the registry or a layout; the runtime merges an `AppSpec`
/// over it (the `AppSpec` wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` strings, as in the OCI image config.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// The platform an agent pulls from a multi-arch index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// OCI `architecture`: `amd64`, `arm64`, `arm`.
    pub architecture: String,
    /// OCI `variant`, e.g. `v7` for 32-bit ARM, `v8` (optional) for arm64.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary was compiled for.
    pub fn current() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            other => (other, None),
        };
        Platform {
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }
}
