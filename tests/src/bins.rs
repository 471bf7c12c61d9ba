//! What the end-to-end tests run and deploy, built once per test process: the
//! `outpost-hub`, `outpost-agent` and runtime helper binaries (`cargo build`,
//! the same target dir as the tests) and the sample image as an OCI layout
//! (`images/build.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Workspace root (parent of this crate).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Paths of the binaries under test, built once.
#[derive(Debug, Clone)]
pub struct Bins {
    pub hub: PathBuf,
    pub agent: PathBuf,
}

pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace())
            .args([
                "build",
                "-p",
                "outpost-hub",
                "-p",
                "outpost-edge-agent",
                "-p",
                "outpost-runtime",
                "--bins",
            ])
            .status()
            .expect("running cargo build for the e2e binaries");
        assert!(status.success(), "cargo build of the binaries failed");
        let dir = target_dir().join("debug");
        Bins {
            hub: dir.join("outpost-hub"),
            agent: dir.join("outpost-agent"),
        }
    })
}

/// The sample image as an OCI layout (built once by `images/build.sh`).
pub fn sample_layout() -> &'static PathBuf {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        // build.sh serializes concurrent runs itself (a lock in the output
        // dir), so a failure here is a real one: no retry.
        let out = Command::new("bash")
            .arg(workspace().join("images/build.sh"))
            .arg(target_dir().join("images"))
            .output()
            .expect("running images/build.sh");
        assert!(
            out.status.success(),
            "images/build.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        PathBuf::from(last.split_whitespace().next().unwrap_or_default())
    })
}
