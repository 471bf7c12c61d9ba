//! Command-line interface: `init`, `run`, `status`, `stop-all`.
//!
//! Each command returns `anyhow::Result` (this is the binary's edge); the work is
//! done by the library modules.

use crate::agent;
use crate::config::{Config, RegistryConfig};
use crate::driver::ContainerDriver;
use crate::state::{StateError, Store};
use crate::trust::initial_trust;
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use outpost_protocol::Digest;
use outpost_protocol::{DeviceId, PublicKey, SigningKey};
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Outpost edge agent: verifies signed manifests and runs their apps as containers.
#[derive(Parser, Debug)]
#[command(name = "outpost-agent", version, about)]
pub struct Cli {
    /// Path of the agent's config file.
    #[arg(
        long,
        short,
        global = true,
        env = "OUTPOST_AGENT_CONFIG",
        default_value = "/etc/outpost/agent.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate the device key (kept on the device, mode 0600) and write the config.
    Init(Box<InitArgs>),
    /// Run the agent until SIGTERM/Ctrl-C (apps keep running after it exits).
    Run,
    /// Print the local view: applied generation, apps, rejections.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop and remove every Outpost container (decommissioning). The agent must
    /// not be running. Volumes are kept.
    StopAll,
    /// List the images on the device with their sizes and the release using each;
    /// `images prune` removes those no release needs (safe while the agent runs).
    Images {
        #[command(subcommand)]
        command: Option<ImagesCommand>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Print an app's output (stdout and stderr), across rotations and reboots.
    Logs {
        app: String,
        /// Keep printing what the app writes until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// Remove every image neither the current nor the previous release, the
    /// desired manifest nor a container uses.
    Prune,
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    #[arg(long)]
    pub device_id: String,
    /// `mqtt://host:port` or `mqtts://host:port`.
    #[arg(long)]
    pub broker: String,
    /// PEM CA bundle that signed the broker's certificate (`mqtts://` only;
    /// default: the system bundle).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for this device's key from the hub's CA
    /// (`outpost-hub device add --cert-out`), presented over `mqtts://` to
    /// an external Mosquitto. Run `init` first to get the key, register the
    /// device, then run `init` again with this flag (the key is kept).
    #[arg(long)]
    pub broker_cert: Option<PathBuf>,
    /// Root public key: 64 hex characters, or a file containing them (`root.pub`).
    #[arg(long)]
    pub root_key: String,
    /// The hub's `keyset.bin` (a key set signed by the root key).
    #[arg(long)]
    pub keyset: PathBuf,
    #[arg(long, default_value = "/var/lib/outpost-agent")]
    pub data_dir: PathBuf,
    /// Volatile directory (tmpfs): container state and the local status file.
    #[arg(long, default_value = "/run/outpost-agent")]
    pub run_dir: PathBuf,
    /// `host:port` of a registry reached over plain HTTP (repeatable).
    #[arg(long = "registry-insecure")]
    pub registry_insecure: Vec<String>,
    /// PEM CA bundle trusted for registries besides the system roots.
    #[arg(long)]
    pub registry_ca_file: Option<PathBuf>,
    /// Docker's `config.json` whose `auths` entries give registry credentials.
    #[arg(long)]
    pub registry_docker_config: Option<PathBuf>,
    /// `HOST=USERNAME:PASSWORD_FILE`: basic credentials for one registry, the
    /// password read from the file at start (repeatable).
    #[arg(long = "registry-auth", value_name = "HOST=USERNAME:PASSWORD_FILE")]
    pub registry_auth: Vec<String>,
    /// `HOST=TOKEN_FILE`: a bearer token for one registry, read from the file
    /// at start (repeatable).
    #[arg(long = "registry-token", value_name = "HOST=TOKEN_FILE")]
    pub registry_token: Vec<String>,
}

/// The `[registry]` section from `init`'s flags. Only paths go into the config.
fn registry_section(a: &InitArgs) -> Result<RegistryConfig> {
    let mut registry = RegistryConfig {
        insecure: a.registry_insecure.clone(),
        ca_file: a.registry_ca_file.clone(),
        docker_config: a.registry_docker_config.clone(),
        ..RegistryConfig::default()
    };
    for spec in &a.registry_auth {
        let (host, login) = spec.split_once('=').with_context(|| {
            format!("--registry-auth {spec:?} must be HOST=USERNAME:PASSWORD_FILE")
        })?;
        let (username, file) = login.split_once(':').with_context(|| {
            format!("--registry-auth {spec:?} must be HOST=USERNAME:PASSWORD_FILE")
        })?;
        let entry = registry.auth.entry(host.to_string()).or_default();
        entry.username = Some(username.to_string());
        entry.password_file = Some(PathBuf::from(file));
    }
    for spec in &a.registry_token {
        let (host, file) = spec
            .split_once('=')
            .with_context(|| format!("--registry-token {spec:?} must be HOST=TOKEN_FILE"))?;
        registry
            .auth
            .entry(host.to_string())
            .or_default()
            .token_file = Some(PathBuf::from(file));
    }
    // Read the files now so a typo fails here rather than at the first pull.
    registry.load().context("checking the --registry-* flags")?;
    Ok(registry)
}

pub fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init(args) => init(&cli.config, *args),
        Command::Run => run(&cli.config),
        Command::Status { json } => status(&cli.config, json),
        Command::StopAll => stop_all(&cli.config),
        Command::Images { command, json } => images(&cli.config, command, json),
        Command::Logs { app, follow, tail } => {
            let cfg = Config::load(&cli.config)?;
            crate::logview::show(&cfg.logs_dir(), &app, tail, follow)?;
            Ok(())
        }
    }
}

/// Digests of the images the desired manifest names: from the running agent's
/// status file, else from the persisted manifest (verified as at boot).
fn desired_images(cfg: &Config) -> Result<BTreeSet<Digest>> {
    if let Some(text) = live_status_file(cfg) {
        let v: serde_json::Value = serde_json::from_str(&text)?;
        return Ok(v["apps"]
            .as_object()
            .map(|apps| {
                apps.values()
                    .filter_map(|a| serde_json::from_value(a["image_digest"].clone()).ok())
                    .collect()
            })
            .unwrap_or_default());
    }
    let store = match Store::open(&cfg.state_file()) {
        Err(StateError::Locked { .. }) => bail!(
            "the agent is starting (it holds {}); try again in a moment",
            cfg.state_file().display()
        ),
        other => other?,
    };
    let loaded = store.load()?;
    let (Some(trust), Some(bytes)) = (loaded.trust, loaded.manifest) else {
        return Ok(BTreeSet::new());
    };
    let gate = crate::trust::TrustGate::new(cfg.device_id.clone(), trust, Arc::new(store));
    Ok(gate
        .persisted_manifest(&bytes, loaded.manifest_key.as_ref())
        .map(|m| m.apps.iter().map(|a| a.image.digest).collect())
        .unwrap_or_default())
}

fn images(config_path: &Path, command: Option<ImagesCommand>, json: bool) -> Result<()> {
    use crate::retention::{keep_set, Releases};
    let cfg = Config::load(config_path)?;
    let dir = cfg.images_dir();
    let store = outpost_oci::ImageStore::open(&dir, cfg.budget_bytes()?)
        .with_context(|| format!("opening the image store {}", dir.display()))?;
    let releases = Releases::load(&dir)?;
    match command {
        Some(ImagesCommand::Prune) => {
            let driver = runtime_driver(&cfg)?;
            let keep = keep_set(&releases, &desired_images(&cfg)?, &driver.images_in_use()?);
            let _lock = crate::images::lock_store(&dir)?;
            let keep: Vec<Digest> = keep.into_iter().collect();
            let r = store.gc(&keep)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "removed_images": r.removed_images.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                        "freed_bytes": r.freed_bytes,
                        "used_bytes": r.used_bytes,
                        "budget_bytes": r.budget_bytes,
                    })
                );
            } else {
                println!(
                    "removed {} image(s), freed {}; the store uses {} of its {} budget",
                    r.removed_images.len(),
                    human_bytes(r.freed_bytes),
                    human_bytes(r.used_bytes),
                    human_bytes(r.budget_bytes)
                );
            }
        }
        None => {
            let held = {
                let _lock = crate::images::lock_store(&dir)?;
                store.describe()?
            };
            let used_by = |d: &Digest| -> Vec<String> {
                [
                    ("current", &releases.current),
                    ("previous", &releases.previous),
                ]
                .into_iter()
                .filter_map(|(which, r)| {
                    let r = r.as_ref()?;
                    let apps: Vec<&str> = r
                        .images
                        .iter()
                        .filter(|(_, i)| i.ends_with(&d.to_string()))
                        .map(|(a, _)| a.as_str())
                        .collect();
                    (!apps.is_empty()).then(|| {
                        format!(
                            "{which} release (generation {}): {}",
                            r.generation,
                            apps.join(", ")
                        )
                    })
                })
                .collect()
            };
            let used = store.usage_bytes()?;
            if json {
                let rows: Vec<_> = held
                    .iter()
                    .map(|h| {
                        serde_json::json!({
                            "digest": h.digest.to_string(),
                            "repository": h.repository,
                            "bytes": h.bytes,
                            "unique_bytes": h.unique_bytes,
                            "used_by": used_by(&h.digest),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "images": rows,
                        "used_bytes": used,
                        "budget_bytes": store.budget_bytes(),
                    }))?
                );
            } else {
                let mut t = comfy_table::Table::new();
                t.load_preset(comfy_table::presets::NOTHING);
                t.set_header(["IMAGE", "SIZE", "ONLY IT USES", "USED BY"]);
                for h in &held {
                    let by = used_by(&h.digest);
                    t.add_row([
                        format!("{}@{}", h.repository, &h.digest.to_string()[..19]),
                        human_bytes(h.bytes),
                        human_bytes(h.unique_bytes),
                        if by.is_empty() {
                            "unused (pruned after the next release or by `images prune`)".into()
                        } else {
                            by.join("; ")
                        },
                    ]);
                }
                println!("{t}");
                println!(
                    "store: {} of a {} budget ({})",
                    human_bytes(used),
                    human_bytes(store.budget_bytes()),
                    dir.display()
                );
            }
        }
    }
    Ok(())
}

/// `1.5 MiB`-style sizes for people.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn init(config_path: &Path, a: InitArgs) -> Result<()> {
    let device_id: DeviceId = a
        .device_id
        .parse()
        .with_context(|| format!("--device-id {:?}", a.device_id))?;
    crate::config::parse_broker(&a.broker)?;
    let root_hex = if Path::new(&a.root_key).is_file() {
        std::fs::read_to_string(&a.root_key)
            .with_context(|| format!("reading --root-key file {}", a.root_key))?
    } else {
        a.root_key.clone()
    };
    let root: PublicKey = root_hex.trim().parse().with_context(|| {
        format!(
            "--root-key {:?} is not a hex ed25519 public key",
            a.root_key
        )
    })?;
    let keyset = std::fs::read(&a.keyset)
        .with_context(|| format!("reading --keyset {}", a.keyset.display()))?;
    initial_trust(
        root,
        &keyset,
        &a.keyset.display().to_string(),
        crate::clock::wall_ms() / 1000,
    )?;
    let registry = registry_section(&a)?;

    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating data dir {}", a.data_dir.display()))?;
    std::fs::set_permissions(&a.data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", a.data_dir.display()))?;
    let keyset_file = a.data_dir.join("keyset.bin");
    std::fs::write(&keyset_file, &keyset)
        .with_context(|| format!("writing {}", keyset_file.display()))?;

    let cfg = Config {
        device_id: device_id.clone(),
        broker: a.broker,
        ca_file: a.ca_file,
        broker_cert: a.broker_cert.clone(),
        root_key: root.to_string(),
        keyset_file,
        data_dir: a.data_dir,
        run_dir: a.run_dir,
        registry,
        images: Default::default(),
        logs: Default::default(),
        outbox_limit: 10_000,
        status_interval_secs: 30,
        resync_interval_ms: 1_000,
        cgroup_parent: crate::config::DEFAULT_CGROUP_PARENT.into(),
        hub_silent_after_secs: crate::report::DEFAULT_HUB_SILENT_AFTER_SECS,
        metrics_listen: None,
    };
    // Keep an existing key: re-running init must not change the device identity.
    let key_path = cfg.key_file();
    let key = if key_path.exists() {
        agent::load_device_key(&key_path)?
    } else {
        let key = SigningKey::generate()?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .with_context(|| format!("creating device key {}", key_path.display()))?;
        f.write_all(key.pkcs8())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing device key {}", key_path.display()))?;
        key
    };
    // The same for the encryption key: secrets sealed to it stay readable.
    let enc_path = cfg.encryption_key_file();
    let enc = match crate::secrets::load_decryption_key(&enc_path)? {
        Some(k) => k,
        None => crate::secrets::create_decryption_key(&enc_path)?,
    };
    if let Some(path) = &a.broker_cert {
        if !cfg.broker_addr()?.tls {
            bail!("--broker-cert needs an mqtts:// --broker");
        }
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading --broker-cert {}", path.display()))?;
        crate::link::cert_is_for_key(&pem, &key.public_key().0)
            .map_err(|why| anyhow::anyhow!("--broker-cert {}: {why}", path.display()))?;
    }
    cfg.save(config_path)?;
    let pk = key.public_key();
    println!("device-id: {device_id}");
    let ek = enc.public_key();
    println!("public-key: {pk}");
    println!("encryption-key: {ek}");
    println!("config: {}", config_path.display());
    println!(
        "register it with: outpost-hub device add {device_id} --public-key {pk} --encryption-key {ek}"
    );
    Ok(())
}

/// Build the real adapters (image store + libcontainer runtime).
fn adapters(
    cfg: &Config,
    handle: tokio::runtime::Handle,
) -> Result<(
    Arc<crate::images::OciImages>,
    Arc<crate::runtime::RuntimeDriver>,
)> {
    // Credentials and CA are read once, at start; a bad file stops the agent
    // with an error naming it.
    let registry = cfg
        .registry
        .load()
        .context("agent config [registry] section")?;
    let images =
        crate::images::OciImages::open(&cfg.images_dir(), cfg.budget_bytes()?, registry, handle)?;
    Ok((Arc::new(images), Arc::new(runtime_driver(cfg)?)))
}

/// The libcontainer driver with this config's directories and log policy.
fn runtime_driver(cfg: &Config) -> Result<crate::runtime::RuntimeDriver> {
    Ok(crate::runtime::RuntimeDriver::open_with_logs(
        &cfg.containers_dir(),
        &cfg.data_dir,
        &cfg.logs_dir(),
        cfg.log_policy(),
        &cfg.cgroup_parent,
        Some(crate::secrets::SecretFiles {
            dir: cfg.secrets_dir(),
            device: cfg.device_id.clone(),
            key: crate::secrets::load_decryption_key(&cfg.encryption_key_file())?,
            key_path: cfg.encryption_key_file(),
        }),
    )?)
}

fn run(config_path: &Path) -> Result<()> {
    let cfg = Config::load(config_path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // Become the subreaper of our containers so their exit codes reach us.
    if let Err(e) = outpost_runtime::become_subreaper() {
        tracing::warn!(error = %e, "cannot become child subreaper; exit codes may be unknown");
    }
    let (images, driver) = adapters(&cfg, rt.handle().clone())?;
    // Before any create: container dirs without live state are what a reboot
    // or a lost run dir left (see `outpost_runtime::orphans`). A create
    // reclaims its own id too; this also frees the disk of apps that are no
    // longer desired.
    match driver.runtime().remove_leftovers() {
        Ok(ids) if !ids.is_empty() => {
            tracing::info!(containers = ?ids, "reclaimed leftover containers of an earlier boot")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "reclaiming leftover containers"),
    }
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            c.cancel();
        });
        agent::run(cfg, images, driver, cancel).await
    })?;
    // Blocking pulls may still be running; don't wait for them on shutdown.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn status(config_path: &Path, json: bool) -> Result<()> {
    let cfg = Config::load(config_path)?;
    // While the agent runs it holds the database and keeps a status file in the
    // run dir for us: read that without touching the database (opening it would
    // lock out an agent that is just starting). Otherwise read the database.
    if let Some(text) = live_status_file(&cfg) {
        if json {
            println!("{text}");
        } else {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            print_status_text(&v, true);
        }
        return Ok(());
    }
    match Store::open(&cfg.state_file()) {
        Err(StateError::Locked { .. }) => {
            let path = cfg.status_file();
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("agent is running but {} is unreadable", path.display())
            })?;
            if json {
                println!("{text}");
            } else {
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                print_status_text(&v, true);
            }
        }
        Err(e) => return Err(e.into()),
        Ok(store) => {
            let l = store.load()?;
            let applied = l
                .trust
                .as_ref()
                .and_then(|t| t.last)
                .map(|a| (a.epoch, a.generation));
            let floor = l.trust.as_ref().map_or(0, |t| t.time_floor);
            let silent = crate::freshness::silence(
                &crate::freshness::HubContact {
                    last_heartbeat: None,
                    time_floor: floor,
                    heard_at: None,
                },
                crate::clock::wall_ms() / 1000,
                Duration::ZERO,
                Duration::from_secs(cfg.hub_silent_after_secs),
            );
            let v = serde_json::json!({
                "device_id": cfg.device_id.as_str(),
                "agent_running": false,
                "applied": applied,
                "time_floor": floor,
                "hub_silent_secs": silent,
                "rejected": l.rejected,
                "last_rejection": l.last_rejection,
                "outbox_pending": l.outbox_len,
                "restarts": l.restarts,
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status_text(&v, false);
            }
        }
    }
    Ok(())
}

/// The status file, if the agent process that wrote it is still alive.
fn live_status_file(cfg: &Config) -> Option<String> {
    let text = std::fs::read_to_string(cfg.status_file()).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = v["agent_pid"].as_u64()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(text)
}

fn print_status_text(v: &serde_json::Value, running: bool) {
    println!("device: {}", v["device_id"].as_str().unwrap_or("?"));
    println!("agent: {}", if running { "running" } else { "not running" });
    match v["applied"].as_array() {
        Some(a) if a.len() == 2 => println!("applied: epoch {} generation {}", a[0], a[1]),
        _ => println!("applied: none"),
    }
    if running {
        println!("connected: {}", v["connected"]);
    }
    println!("hub: {}", hub_line(v));
    if let Some(apps) = v["apps"].as_object() {
        for (name, a) in apps {
            println!(
                "app {name}: {} restarts={} ready={} {}",
                a["state"],
                a["restarts"],
                a["ready"],
                a["last_error"].as_str().unwrap_or("")
            );
        }
    }
    let total: u64 = v["rejected"]
        .as_object()
        .map(|o| o.values().filter_map(|x| x.as_u64()).sum())
        .unwrap_or(0);
    println!("rejected: {total} {}", v["rejected"]);
    if let Some(r) = v["last_rejection"].as_str() {
        println!("last rejection: {r}");
    }
    println!("outbox pending: {}", v["outbox_pending"]);
}

/// The hub's freshness in words, from the status JSON. (Pure.)
fn hub_line(v: &serde_json::Value) -> String {
    let heartbeat = match v["last_heartbeat"].as_u64() {
        Some(t) => format!("last heartbeat signed at {t} (unix seconds)"),
        None => "no heartbeat received in this run".to_string(),
    };
    match v["hub_silent_secs"].as_u64() {
        Some(s) => format!("SILENT for {}; {heartbeat}", human_secs(s)),
        None => heartbeat,
    }
}

/// `3 d 4 h`, `2 h 5 min`, `7 min`, `42 s`. (Pure.)
fn human_secs(s: u64) -> String {
    let (d, h, m) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

fn stop_all(config_path: &Path) -> Result<()> {
    let cfg = Config::load(config_path)?;
    // Holding the database proves the agent is not running (it would restart
    // what we stop).
    let _store = match Store::open(&cfg.state_file()) {
        Err(StateError::Locked { .. }) => {
            bail!("the agent is running; stop it first (e.g. systemctl stop outpost-agent)")
        }
        other => other?,
    };
    let driver = runtime_driver(&cfg)?;
    let mut failures = 0;
    for c in driver.list()? {
        let res = driver
            .stop(&c.name, Duration::from_secs(10))
            .and_then(|()| driver.remove(&c.name));
        match res {
            Ok(()) => println!("removed {} (app {})", c.name, c.app),
            Err(e) => {
                failures += 1;
                eprintln!("{e}");
            }
        }
    }
    if failures > 0 {
        bail!("{failures} container(s) could not be removed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_line_says_silent_in_words() {
        let v = serde_json::json!({"last_heartbeat": 100, "hub_silent_secs": 7_500});
        assert_eq!(
            hub_line(&v),
            "SILENT for 2 h 5 min; last heartbeat signed at 100 (unix seconds)"
        );
        let v = serde_json::json!({"last_heartbeat": null, "hub_silent_secs": null});
        assert_eq!(hub_line(&v), "no heartbeat received in this run");
        assert_eq!(human_secs(42), "42 s");
        assert_eq!(human_secs(3 * 86_400 + 4 * 3_600), "3 d 4 h");
    }
}
