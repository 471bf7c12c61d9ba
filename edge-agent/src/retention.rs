//! Which images the device keeps, and the disk budget they may use.
//!
//! A device keeps the images of its current release and of the release before
//! it (what a rollback needs), plus whatever a container still uses and whatever
//! the desired manifest names; everything else is garbage. The decisions here
//! are pure ([`Releases::settled`], [`keep_set`], [`Budget::resolve`]); the record
//! of releases is one small JSON file, `DATA/images/releases.json`, written only
//! when a release settles (a few hundred bytes per release, not per pass) and
//! read by `outpost-agent images` while the agent runs.

use outpost_protocol::{Digest, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("release record {path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("release record {path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One release as it ran: the generation and the image of each app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub epoch: u64,
    pub generation: u64,
    /// App name → pinned image (`repo@sha256:…`).
    pub images: BTreeMap<String, String>,
}

impl Release {
    pub fn of(m: &Manifest) -> Release {
        Release {
            epoch: m.epoch,
            generation: m.generation,
            images: m
                .apps
                .iter()
                .map(|a| (a.name.clone(), a.image.to_string()))
                .collect(),
        }
    }

    /// Digests of this release's images.
    pub fn digests(&self) -> BTreeSet<Digest> {
        self.images
            .values()
            .filter_map(|i| i.parse::<outpost_protocol::ImageRef>().ok())
            .map(|i| i.digest)
            .collect()
    }
}

/// The last two releases that settled (every app as desired).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Releases {
    pub current: Option<Release>,
    pub previous: Option<Release>,
}

impl Releases {
    /// After `release` settled: it becomes current and the one before it
    /// previous. `None` when nothing changes (the same release settling again
    /// on every pass), so the caller writes and collects once per release.
    pub fn settled(&self, release: &Release) -> Option<Releases> {
        let same = |r: &Release| (r.epoch, r.generation) == (release.epoch, release.generation);
        if self.current.as_ref().is_some_and(same) {
            return None;
        }
        Some(Releases {
            current: Some(release.clone()),
            previous: self.current.clone(),
        })
    }

    pub fn digests(&self) -> BTreeSet<Digest> {
        self.current
            .iter()
            .chain(&self.previous)
            .flat_map(Release::digests)
            .collect()
    }

    /// The file the record lives in.
    pub fn path(images_dir: &Path) -> PathBuf {
        images_dir.join("releases.json")
    }

    /// Read the record; a missing file is an empty record.
    pub fn load(images_dir: &Path) -> Result<Releases, RetentionError> {
        let path = Self::path(images_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| RetentionError::Parse { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Releases::default()),
            Err(source) => Err(RetentionError::Io {
                path,
                action: "read",
                source,
            }),
        }
    }

    /// Replace the record atomically (temp file, fsync, rename).
    pub fn save(&self, images_dir: &Path) -> Result<(), RetentionError> {
        let path = Self::path(images_dir);
        let tmp = images_dir.join("releases.json.tmp");
        let io = |action: &'static str, p: &Path| {
            let path = p.to_path_buf();
            move |source| RetentionError::Io {
                path,
                action,
                source,
            }
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| RetentionError::Parse {
            path: path.clone(),
            source: e,
        })?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(&json).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))
    }
}

/// Images garbage collection must keep: the desired manifest's, the current and
/// previous releases', and any a container still runs on (its overlay uses the
/// unpacked layers).
pub fn keep_set(
    releases: &Releases,
    desired: &BTreeSet<Digest>,
    in_use: &BTreeSet<Digest>,
) -> BTreeSet<Digest> {
    releases
        .digests()
        .into_iter()
        .chain(desired.iter().copied())
        .chain(in_use.iter().copied())
        .collect()
}

/// How much disk the image store may use: bytes, or a share of the file system
/// holding it. Written in `agent.toml` as `budget = "40%"`, `"2GiB"`, `"500MB"`
/// or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Bytes(u64),
    Percent(f64),
}

/// Default share of the file system when `agent.toml` names no budget: leaves
/// the rest for volumes, logs, the state database and the OS.
pub const DEFAULT_BUDGET_PERCENT: f64 = 40.0;

impl Budget {
    /// Bytes for a file system of `fs_bytes`.
    pub fn resolve(self, fs_bytes: u64) -> u64 {
        match self {
            Budget::Bytes(b) => b,
            Budget::Percent(p) => (fs_bytes as f64 * p / 100.0) as u64,
        }
    }
}

impl std::str::FromStr for Budget {
    type Err = String;

    fn from_str(s: &str) -> Result<Budget, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: not a percentage"))?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(format!("{s:?}: a percentage must be in (0, 100]"));
            }
            return Ok(Budget::Percent(v));
        }
        parse_bytes(t).map(Budget::Bytes)
    }
}

/// `"1048576"`, `"512KiB"`, `"2 GiB"`, `"500MB"` → bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size like 1048576, 512KiB, 2GiB or 500MB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("{s:?}: unknown unit {other:?}")),
    };
    Ok((n * mult as f64) as u64)
}

/// Size of the file system holding `path`.
pub fn filesystem_bytes(path: &Path) -> Result<u64, std::io::Error> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(st.blocks() as u64 * st.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(generation: u64, images: &[(&str, u8)]) -> Release {
        Release {
            epoch: 1,
            generation,
            images: images
                .iter()
                .map(|(app, b)| {
                    (
                        app.to_string(),
                        format!("reg/{app}@sha256:{}", format!("{b:02x}").repeat(32)),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_settled_release_becomes_current_and_the_last_one_previous_once() {
        let r = Releases::default();
        let r1 = r.settled(&release(1, &[("a", 1)])).unwrap();
        assert_eq!(r1.settled(&release(1, &[("a", 1)])), None);
        let r2 = r1.settled(&release(2, &[("a", 2)])).unwrap();
        let r3 = r2.settled(&release(3, &[("a", 3)])).unwrap();
        assert_eq!(r3.current.as_ref().map(|r| r.generation), Some(3));
        assert_eq!(r3.previous.as_ref().map(|r| r.generation), Some(2));
        let d = |b: u8| -> Digest {
            format!("sha256:{}", format!("{b:02x}").repeat(32))
                .parse()
                .unwrap()
        };
        assert_eq!(r3.digests(), BTreeSet::from([d(2), d(3)]));
        let keep = keep_set(&r3, &BTreeSet::from([d(4)]), &BTreeSet::from([d(1)]));
        assert_eq!(keep, BTreeSet::from([d(1), d(2), d(3), d(4)]));
    }

    #[test]
    fn the_record_round_trips_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Releases::load(dir.path()).unwrap(), Releases::default());
        let r = Releases::default()
            .settled(&release(7, &[("a", 1), ("b", 2)]))
            .unwrap();
        r.save(dir.path()).unwrap();
        assert_eq!(Releases::load(dir.path()).unwrap(), r);
        std::fs::write(Releases::path(dir.path()), "{").unwrap();
        let err = Releases::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("releases.json"), "{err}");
    }

    #[test]
    fn budgets_parse_as_bytes_or_a_share_of_the_disk() {
        let gib = 1u64 << 30;
        for (text, fs, want) in [
            ("40%", 100 * gib, 40 * gib),
            ("100%", 10, 10),
            ("2GiB", 0, 2 * gib),
            ("2 GiB", 0, 2 * gib),
            ("500MB", 0, 500_000_000),
            ("1048576", 0, 1 << 20),
            ("1.5KiB", 0, 1536),
        ] {
            let b: Budget = text.parse().unwrap();
            assert_eq!(b.resolve(fs), want, "{text}");
        }
        for bad in ["", "x", "0%", "101%", "12 parsecs", "-5"] {
            assert!(bad.parse::<Budget>().is_err(), "{bad}");
        }
    }
}
