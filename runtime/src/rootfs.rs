//! The container's root filesystem: an overlayfs over unpacked image layers
//! (upper and work dirs in the container's own directory), or a plain directory.
//!
//! Layers come from the image store bottom first, with whiteouts already in
//! overlayfs form, so they are passed to the kernel untouched and shared by every
//! container of the same image.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rootfs {
    /// Unpacked layer directories, bottom (base) layer first.
    Layers(Vec<PathBuf>),
    /// An existing directory used as is (writes go straight into it).
    Dir(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs has no layers")]
    NoLayers,
    #[error("layer directory {path:?} is unusable: {why}")]
    BadLayer { path: PathBuf, why: String },
    #[error("rootfs directory {path:?} is unusable: {source}")]
    BadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "overlay option string for {count} layers is {len} bytes; the kernel accepts at most 4095"
    )]
    TooManyLayers { count: usize, len: usize },
    #[error("cannot create {path:?}: {source}")]
    Mkdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount overlay at {target:?} (lowerdir={lower}): {source}")]
    Mount {
        target: PathBuf,
        lower: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot unmount {target:?}: {source}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// The overlay `lowerdir=` value: the kernel wants the top layer first. Pure.
pub fn lowerdir_option(layers_bottom_first: &[PathBuf]) -> Result<String, RootfsError> {
    if layers_bottom_first.is_empty() {
        return Err(RootfsError::NoLayers);
    }
    let mut parts = Vec::with_capacity(layers_bottom_first.len());
    for layer in layers_bottom_first.iter().rev() {
        let s = layer.to_str().ok_or_else(|| RootfsError::BadLayer {
            path: layer.clone(),
            why: "path is not UTF-8".into(),
        })?;
        // ':' separates layers and ',' separates mount options.
        if !layer.is_absolute() || s.contains(':') || s.contains(',') {
            return Err(RootfsError::BadLayer {
                path: layer.clone(),
                why: "must be absolute and contain no ':' or ','".into(),
            });
        }
        parts.push(s);
    }
    Ok(parts.join(":"))
}

/// Mount an overlay of `layers` at `target` with `upper`/`work` as its writable
/// layer. All three directories are created if missing.
pub fn mount_overlay(
    layers_bottom_first: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RootfsError> {
    let lower = lowerdir_option(layers_bottom_first)?;
    for layer in layers_bottom_first {
        if !layer.is_dir() {
            return Err(RootfsError::BadLayer {
                path: layer.clone(),
                why: "not a directory".into(),
            });
        }
    }
    for dir in [upper, work, target] {
        std::fs::create_dir_all(dir).map_err(|source| RootfsError::Mkdir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if data.len() > 4095 {
        return Err(RootfsError::TooManyLayers {
            count: layers_bottom_first.len(),
            len: data.len(),
        });
    }
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|source| RootfsError::Mount {
        target: target.to_path_buf(),
        lower,
        source,
    })
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(parent)) = (std::fs::metadata(path), path.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != me.dev())
}

/// Detach the overlay at `target` if one is mounted there.
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    if !is_mount_point(target) {
        return Ok(());
    }
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(RootfsError::Unmount {
            target: target.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_is_top_first_and_refuses_separators() {
        let layers = vec![PathBuf::from("/l/base"), PathBuf::from("/l/top")];
        assert_eq!(lowerdir_option(&layers).unwrap(), "/l/top:/l/base");
        assert!(matches!(lowerdir_option(&[]), Err(RootfsError::NoLayers)));
        for bad in ["relative", "/a:b", "/a,b"] {
            let err = lowerdir_option(&[PathBuf::from(bad)]).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
