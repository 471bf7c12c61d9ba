//! `outpost-image-build`: turn static binaries into a reproducible multi-arch OCI
//! image layout, without Docker. Prints `<layout dir> <index digest>`.
//!
//! ```text
//! outpost-image-build --out target/images/hello --tag latest --path /hello \
//!     --binary amd64=target/.../hello --binary arm64=... --binary arm/v7=... \
//!     --dir /data --env PORT=8080
//! ```

use anyhow::{bail, Context};
use clap::Parser;
use outpost_oci::build::{build_static_image, PlatformBinary};
use outpost_oci::spec::{OciPlatform, RuntimeConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Build a reproducible multi-arch OCI image layout from static binaries")]
struct Args {
    /// Output layout directory (replaced).
    #[arg(long)]
    out: PathBuf,
    /// Tag recorded in index.json (`org.opencontainers.image.ref.name`).
    #[arg(long, default_value = "latest")]
    tag: String,
    /// Where the binary goes in the image; also the entrypoint.
    #[arg(long, default_value = "/app")]
    path: String,
    /// `ARCH[/VARIANT]=FILE`, e.g. `amd64=target/x86_64-unknown-linux-musl/release/hello`.
    #[arg(long = "binary", required = true)]
    binaries: Vec<String>,
    /// Empty directories to create in the image (e.g. a volume mount point).
    #[arg(long = "dir")]
    dirs: Vec<String>,
    /// `KEY=VALUE` environment defaults.
    #[arg(long = "env")]
    env: Vec<String>,
}

fn parse_binary(spec: &str) -> anyhow::Result<PlatformBinary> {
    let (platform, file) = spec
        .split_once('=')
        .with_context(|| format!("--binary {spec:?} is not ARCH[/VARIANT]=FILE"))?;
    let (architecture, variant) = match platform.split_once('/') {
        Some((a, v)) => (a, Some(v.to_string())),
        None => (platform, None),
    };
    if architecture.is_empty() {
        bail!("--binary {spec:?} has an empty architecture");
    }
    Ok(PlatformBinary {
        platform: OciPlatform {
            architecture: architecture.into(),
            os: "linux".into(),
            variant,
        },
        binary: PathBuf::from(file),
    })
}

fn main_inner(args: Args) -> anyhow::Result<()> {
    let binaries = args
        .binaries
        .iter()
        .map(|b| parse_binary(b))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = RuntimeConfig {
        entrypoint: Some(vec![args.path.clone()]),
        env: Some(
            std::iter::once("PATH=/usr/local/bin:/usr/bin:/bin".to_string())
                .chain(args.env.iter().cloned())
                .collect(),
        ),
        working_dir: Some("/".into()),
        ..RuntimeConfig::default()
    };
    let index = build_static_image(
        &args.out, &args.tag, &args.path, &args.dirs, config, &binaries,
    )
    .with_context(|| format!("building image layout {}", args.out.display()))?;
    println!("{} {}", args.out.display(), index.digest);
    Ok(())
}

fn main() -> ExitCode {
    match main_inner(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-image-build: {e:#}");
            ExitCode::FAILURE
        }
    }
}
