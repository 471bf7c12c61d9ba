//! Benchmark (not a test): create+start latency through `outpost-runtime` versus
//! `runc run -d` on the same bundle (same `config.json`, same busybox rootfs).
//!
//! `cargo run --release -p outpost-runtime --example start_latency [-- RUNS]`
//! (as root, with Debian's `runc` and `busybox-static` installed). Prints the
//! median of each and their ratio. This binary also hosts the create helper
//! (`start_latency __helper create <json>`), as an agent binary could.

use anyhow::{bail, Context, Result};
use outpost_protocol::{AppSpec, Digest, ImageConfig, ImageRef};
use outpost_runtime::{ContainerRequest, HelperCommand, Rootfs, Runtime, RuntimeConfig};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HELPER_ARG: &str = "__helper";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(HELPER_ARG) {
        return outpost_runtime::helper::run(&args[2..]).context("helper");
    }
    let runs: usize = match args.get(1) {
        Some(n) => n.parse().context("RUNS must be a number")?,
        None => 25,
    };
    if runs < 1 {
        bail!("need at least one run");
    }
    let tmp = tempfile::Builder::new()
        .prefix("outpost-bench-")
        .tempdir()?;
    let rootfs = busybox_rootfs(tmp.path())?;

    let mut config = RuntimeConfig::new(tmp.path().join("state"), tmp.path().join("data"));
    config.helper = HelperCommand {
        program: std::env::current_exe()?,
        args_prefix: vec![HELPER_ARG.into()],
    };
    let rt = Runtime::new(config)?;
    let image: ImageRef = format!("localhost/busybox@{}", Digest([1; 32])).parse()?;
    let mut app = AppSpec::new("bench", image);
    app.command = vec!["/bin/sleep".into(), "1000".into()];
    let image_config = ImageConfig::default();

    let runc_root = tmp.path().join("runc-state");
    let bundle = tmp.path().join("runc-bundle");
    std::fs::create_dir_all(&bundle)?;
    let mut ours = Vec::with_capacity(runs);
    let mut theirs = Vec::with_capacity(runs);
    // Alternate the two sides so load from other processes hits both alike.
    for i in 0..runs {
        let id = format!("bench-{i}");
        let t0 = Instant::now();
        rt.create(&ContainerRequest {
            id: &id,
            app: &app,
            image: &image_config,
            image_digest: Digest([1; 32]),
            rootfs: Rootfs::Dir(rootfs.clone()),
            labels: Default::default(),
        })?;
        rt.start(&id)?;
        ours.push(t0.elapsed());
        // runc gets the very config.json our runtime generated, under its own
        // cgroup path.
        let config = tmp
            .path()
            .join(format!("data/containers/{id}/bundle/config.json"));
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(config)?)?;
        rt.stop(&id, Duration::ZERO)?;
        rt.delete(&id)?;

        let id = format!("runc-bench-{i}");
        spec["linux"]["cgroupsPath"] = format!("/outpost-runc/{id}").into();
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
        let t0 = Instant::now();
        runc(
            &runc_root,
            &["run", "-d", "--bundle", path_str(&bundle)?, &id],
        )?;
        theirs.push(t0.elapsed());
        runc(&runc_root, &["delete", "--force", &id])?;
    }

    let (m_ours, m_runc) = (median(&mut ours), median(&mut theirs));
    println!("runs per side:                  {runs}");
    println!(
        "outpost-runtime create+start:   median {:>8.2} ms",
        ms(m_ours)
    );
    println!(
        "runc run -d:                    median {:>8.2} ms",
        ms(m_runc)
    );
    println!(
        "fastest:                        outpost {:.2} ms, runc {:.2} ms",
        ms(ours[0]),
        ms(theirs[0])
    );
    println!(
        "ratio outpost/runc (medians):   {:>8.2}",
        m_ours.as_secs_f64() / m_runc.as_secs_f64()
    );
    Ok(())
}

fn runc(root: &Path, args: &[&str]) -> Result<()> {
    // `runc run -d` hands its own stdio to the container: a pipe here would stay
    // open for the container's lifetime, so stderr goes to a file.
    let err_path = root.with_extension("stderr");
    let err_file = std::fs::File::create(&err_path)?;
    let status = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .status()
        .context("running runc (apt-get install runc)")?;
    if !status.success() {
        bail!("runc {args:?}: {}", std::fs::read_to_string(&err_path)?);
    }
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn busybox_rootfs(dir: &Path) -> Result<std::path::PathBuf> {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (apt-get install busybox-static)")?;
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    Ok(root)
}
