//! The runtime's side file per container (`meta.json` in the container dir):
//! what the runtime needs beyond libcontainer's state to recognise and report a
//! container after the agent restarts.

use crate::rootfs::Rootfs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMeta {
    pub id: String,
    pub app: String,
    /// `sha256:<hex>` of the image manifest the container runs.
    pub image_digest: String,
    /// [`crate::spec::spec_hash`] of the inputs it was created from.
    pub spec_hash: String,
    pub labels: BTreeMap<String, String>,
    pub rootfs: Rootfs,
    /// Start time of the init process (see [`crate::process`]), set after create.
    pub init_start_time: Option<u64>,
    /// Exit code, once known (only when this process reaped the init).
    pub exit_code: Option<i32>,
    /// Set by `stop()` before signalling: the runtime, not the app, ended it.
    pub stopped_by_runtime: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("container side file {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container side file {path:?} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub const META_FILE: &str = "meta.json";

impl ContainerMeta {
    pub fn load(dir: &Path) -> Result<Self, MetaError> {
        let path = dir.join(META_FILE);
        let bytes = std::fs::read(&path).map_err(|source| MetaError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| MetaError::Corrupt { path, source })
    }

    /// Write atomically (temp file + rename) so a crash never leaves half a file.
    pub fn save(&self, dir: &Path) -> Result<(), MetaError> {
        let path = dir.join(META_FILE);
        let tmp = dir.join(".meta.json.tmp");
        let io = |source| MetaError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| MetaError::Corrupt {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}
