//! The `outpost-hub` command line: `init` and `serve` run locally; every other
//! command talks to a running hub over the HTTP API.

use crate::api::{DeviceDetail, DeviceSummary, Stats};
use crate::client::ApiClient;
use crate::config::{BrokerUrl, DataDir, HubConfig, DEFAULT_DATA_DIR};
use crate::deploy::DeploymentSpec;
use crate::hub::{now_secs, ApplyOutcome};
use crate::resolve::{ImageResolver, OciResolver};
use crate::serve::{self, ServeOptions};
use crate::signing;
use crate::store::{AuditEntry, DeploymentRecord, EventRecord, Store};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use reqwest::Method;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Outpost hub: holds desired state and publishes signed manifests.
#[derive(Parser, Debug)]
#[command(name = "outpost-hub", version, about)]
pub struct Cli {
    /// Data directory (keys, database, config, token).
    #[arg(long, global = true, env = "OUTPOST_HUB_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Hub API URL (default: from the data directory's hub.toml).
    #[arg(long, global = true, env = "OUTPOST_HUB_URL")]
    pub url: Option<String>,
    /// API token (default: the data directory's `token` file).
    #[arg(long, global = true, env = "OUTPOST_HUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate(s) (PEM) to trust for the hub's TLS, e.g. a remote
    /// hub's api.crt (default: pin the data directory's certificate, else the
    /// system's roots).
    #[arg(long, global = true, env = "OUTPOST_HUB_CA")]
    pub ca_file: Option<PathBuf>,
    /// Print the API's answer as JSON (for scripts) instead of the human
    /// form; with `--watch`/`--follow`, one JSON document per line.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the data directory: database, root and signing keys, key set, token, hub.toml.
    Init {
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        #[arg(long)]
        mqtt_listen: Option<SocketAddr>,
        /// Use an external broker (mqtt://host:port or mqtts://host:port).
        #[arg(long)]
        broker: Option<String>,
    },
    /// Run the hub.
    Serve {
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Listen address of the embedded broker.
        #[arg(long)]
        mqtt_listen: Option<SocketAddr>,
        /// Use an external broker instead of the embedded one.
        #[arg(long)]
        broker: Option<String>,
        /// Once listening, write the addresses actually bound (JSON:
        /// `http_addr`, `mqtt_addr`) to this file, so the hub can be started
        /// on port 0 by a supervisor or a test and found.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Key management.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Register, remove and label devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Apply a deployment file (TOML).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List devices.
    Devices {
        /// Print again every 2 seconds until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Show one device.
    Status {
        device: String,
        /// Print again every 2 seconds until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Events a device reported.
    Events {
        device: String,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep printing new events as they arrive (polls every second)
        /// until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// An app's output, fetched from the device on demand (nothing is kept
    /// on the hub). Needs an operator or admin token.
    Logs {
        device: String,
        app: String,
        /// Only the last N lines first.
        #[arg(long)]
        tail: Option<u32>,
        /// Keep printing what the app writes until interrupted (the device
        /// streams only while this runs).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// List deployments.
    Deployments,
    /// Delete something.
    #[command(subcommand)]
    Delete(DeleteCommand),
    /// Device counts, ingest and publish counters.
    Stats,
    /// The audit log, newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Print a one-time link that logs a browser in to the web dashboard
    /// with this CLI's token (valid 2 minutes, works once).
    Dashboard {
        /// The page to open, e.g. /ui/devices/pi-01 (default: the fleet).
        #[arg(long)]
        page: Option<String>,
    },
    /// Staged rollouts (`[rollout]` in a deployment): progress, pause, resume, abort.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// API tokens with roles and scopes (needs an admin token).
    #[command(subcommand)]
    Token(crate::cli_tokens::TokenCommand),
    /// Secrets sealed to each device: set, list (never a value), remove
    /// (needs an unscoped admin token).
    #[command(subcommand)]
    Secret(crate::cli_secrets::SecretCommand),
    /// Configuration variables at fleet, selector, deployment, device and
    /// app level (the most specific wins): set, unset, list.
    #[command(subcommand)]
    Config(crate::cli_config::ConfigCommand),
    /// Write an external broker's configuration (runs locally: it uses the
    /// data directory's broker CA).
    #[command(subcommand)]
    BrokerConfig(BrokerConfigCommand),
}

#[derive(Subcommand, Debug)]
pub enum BrokerConfigCommand {
    /// Mosquitto: TLS with client certificates from the hub CA, per-device
    /// ACL, the hub's CRL; prints what hub.toml and agent.toml need.
    Mosquitto {
        /// The name (DNS or IP) clients dial; the server certificate's name.
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 8883)]
        port: u16,
        /// Directory for mosquitto.conf, acl, ca.pem, server.pem, server.key.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Progress of a deployment's latest rollout (per wave, failed devices
    /// with reasons); without DEPLOYMENT, one line per rollout.
    Status {
        deployment: Option<String>,
        /// Print again every 2 seconds until the rollout completes or is aborted.
        #[arg(long)]
        watch: bool,
    },
    /// Stop admitting devices; those already admitted carry on.
    Pause { deployment: String },
    /// Go on after a pause (failures known now are accepted).
    Resume { deployment: String },
    /// Stop for good and re-issue the previous release to devices already updated.
    Abort { deployment: String },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Copy the root key out of the data directory (for offline keeping).
    ExportRoot {
        #[arg(long)]
        out: PathBuf,
        /// Delete the root key from the data directory after a verified export.
        #[arg(long)]
        remove: bool,
    },
    /// Replace the manifest-signing key (e.g. after a compromise): a new key in a
    /// new root-signed key set that revokes the old one. Run with the hub
    /// stopped; on its next start the hub publishes the key set and re-signs
    /// every device's manifest. Devices are not re-provisioned.
    Rotate {
        /// The root key, if it was exported from the data directory.
        #[arg(long)]
        root_key: Option<PathBuf>,
    },
    /// Replace the root key itself: a new root announced by a link signed by
    /// the old one, and a new signing key under it. Run with the hub stopped;
    /// on its next start the hub publishes the link and the new key set, and
    /// every device walks from its root to the new one. Devices provisioned
    /// from now on use the new root.pub and keyset.bin.
    RotateRoot {
        /// The current root key, if it was exported from the data directory.
        #[arg(long)]
        root_key: Option<PathBuf>,
        /// Where to write the new root key (required with --root-key; by
        /// default it replaces the data directory's root.key).
        #[arg(long)]
        new_root_out: Option<PathBuf>,
    },
    /// Replace `secrets.key`, the key the stored secret values are
    /// encrypted under, and re-encrypt every value (run with the hub
    /// stopped). Values, versions and devices are unchanged; back the new
    /// key up.
    RotateSecrets,
}

#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// Register a device with the public key printed by `outpost-agent init`.
    Add {
        id: String,
        #[arg(long)]
        public_key: String,
        /// KEY=VALUE, repeatable.
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
        /// The device's X25519 encryption key (hex, printed by
        /// `outpost-agent init`): needed to deploy secrets to it.
        #[arg(long)]
        encryption_key: Option<String>,
        /// Write the device's broker certificate (PEM, for an external
        /// Mosquitto) to this file.
        #[arg(long)]
        cert_out: Option<PathBuf>,
    },
    /// Issue a new broker certificate for a registered device.
    Cert {
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Unregister a device and clear its retained manifest.
    Remove { id: String },
    /// Change labels: KEY=VALUE sets, KEY- removes.
    Label {
        id: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeleteCommand {
    Deployment { name: String },
}

fn parse_label(s: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("label {s:?} must be KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

/// Run the CLI.
pub async fn run(cli: Cli) -> Result<()> {
    let dir = DataDir::new(&cli.data_dir);
    match cli.command {
        Command::Init {
            http_listen,
            mqtt_listen,
            broker,
        } => init(&dir, http_listen, mqtt_listen, broker),
        Command::Serve {
            http_listen,
            mqtt_listen,
            broker,
            ready_file,
        } => {
            let mut config = HubConfig::load(&dir.config()).with_context(|| {
                format!(
                    "run `outpost-hub init --data-dir {}` first",
                    dir.root.display()
                )
            })?;
            if let Some(a) = http_listen {
                config.http_listen = a;
            }
            if let Some(a) = mqtt_listen {
                config.mqtt.listen = a;
            }
            if let Some(b) = broker {
                BrokerUrl::parse(&b)?;
                config.mqtt.broker = Some(b);
            }
            // Credentials and CA files are read once, here: a bad one stops the
            // hub with an error naming the file.
            let registry = config
                .registry
                .load()
                .context("hub.toml [registry] section")?;
            let resolver: Arc<dyn ImageResolver> = Arc::new(
                OciResolver::with_config(registry).context("hub.toml [registry] section")?,
            );
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone());
            serve::serve(
                ServeOptions {
                    data_dir: dir,
                    config,
                    resolver,
                },
                ready_file.as_deref(),
                shutdown,
            )
            .await?;
            Ok(())
        }
        Command::Keys(KeysCommand::ExportRoot { out, remove }) => {
            signing::export_root(&dir, &out, remove)?;
            if cli.json {
                return print_json(&serde_json::json!({
                    "written": out, "removed_from_data_dir": remove
                }));
            }
            println!("root key written to {}", out.display());
            if remove {
                println!("root key removed from {}", dir.root.display());
            }
            Ok(())
        }
        Command::BrokerConfig(BrokerConfigCommand::Mosquitto { host, port, out }) => {
            crate::cli_broker::mosquitto_config(&dir, &host, port, &out)
        }
        Command::Keys(KeysCommand::Rotate { root_key }) => {
            let r = signing::rotate(&dir, root_key.as_deref(), crate::hub::now_secs())?;
            if cli.json {
                return print_json(&serde_json::json!({
                    "previous_key_id": r.previous_key_id,
                    "signing_key_id": r.signing_key_id,
                    "epoch": r.epoch,
                }));
            }
            println!(
                "signing key {} replaced by {}; key set version (manifest epoch) is now {}",
                r.previous_key_id, r.signing_key_id, r.epoch
            );
            println!(
                "start (or restart) the hub: it publishes the new key set and re-signs every device's manifest"
            );
            Ok(())
        }
        Command::Keys(KeysCommand::RotateSecrets) => {
            let store = crate::store::Store::open(&dir.database()).with_context(|| {
                format!(
                    "opening {} (is the hub running? stop it first)",
                    dir.database().display()
                )
            })?;
            let n = crate::secrets::rotate(&dir.secret_key(), &dir.secret_key_next(), &store)?;
            if cli.json {
                return print_json(&serde_json::json!({
                    "key": dir.secret_key(),
                    "values": n,
                }));
            }
            println!(
                "{} replaced; {n} stored secret value(s) re-encrypted under it; back it up",
                dir.secret_key().display()
            );
            Ok(())
        }
        Command::Keys(KeysCommand::RotateRoot {
            root_key,
            new_root_out,
        }) => {
            let r = signing::rotate_root(
                &dir,
                root_key.as_deref(),
                new_root_out.as_deref(),
                crate::hub::now_secs(),
            )?;
            if cli.json {
                return print_json(&serde_json::json!({
                    "previous_root": r.previous_root.to_string(),
                    "new_root": r.new_root.to_string(),
                    "root_version": r.root_version,
                    "epoch": r.epoch,
                    "new_root_path": r.new_root_path,
                }));
            }
            println!(
                "root key {} replaced by {} (root version {}); new signing key in key set version (manifest epoch) {}",
                r.previous_root.key_id(),
                r.new_root.key_id(),
                r.root_version,
                r.epoch
            );
            println!("new root key written to {}", r.new_root_path.display());
            if root_key.is_some() {
                println!("destroy the old root key file once the new one is safe");
            }
            println!(
                "start (or restart) the hub: it publishes the rotation link and the new key set, and re-signs every device's manifest"
            );
            Ok(())
        }
        Command::Token(cmd) => {
            let client = api_client(&dir, cli.url, cli.token, cli.ca_file)?;
            crate::cli_tokens::run(cmd, &client, cli.json).await
        }
        Command::Secret(cmd) => {
            let client = api_client(&dir, cli.url, cli.token, cli.ca_file)?;
            crate::cli_secrets::run(cmd, &client, cli.json).await
        }
        Command::Config(cmd) => {
            let client = api_client(&dir, cli.url, cli.token, cli.ca_file)?;
            crate::cli_config::run(cmd, &client, cli.json).await
        }
        cmd => {
            let client = api_client(&dir, cli.url, cli.token, cli.ca_file)?;
            remote(cmd, &client, cli.json).await
        }
    }
}

/// The API client: `--url`/`--token`/`--ca-file` when given, else from the
/// data directory (its hub.toml's address over https, its token, its
/// certificate pinned).
fn api_client(
    dir: &DataDir,
    url: Option<String>,
    token: Option<String>,
    ca_file: Option<PathBuf>,
) -> Result<ApiClient> {
    let url = match url {
        Some(u) => u,
        None => crate::client::base_url(dir).with_context(|| {
            format!(
                "no --url given and no hub config in {} (use --data-dir or --url)",
                dir.root.display()
            )
        })?,
    };
    let token = match token {
        Some(t) => t,
        None => std::fs::read_to_string(dir.token()).with_context(|| {
            format!("no --token given and cannot read {}", dir.token().display())
        })?,
    };
    if let Some(ca) = &ca_file {
        if !ca.exists() {
            bail!(
                "the CA file {} (--ca-file / OUTPOST_HUB_CA) for {url} does not exist",
                ca.display()
            );
        }
    }
    let trust = crate::client::Trust::choose(ca_file, dir);
    Ok(ApiClient::with_trust(url, token.trim(), trust)?)
}

fn init(
    dir: &DataDir,
    http_listen: Option<SocketAddr>,
    mqtt_listen: Option<SocketAddr>,
    broker: Option<String>,
) -> Result<()> {
    if dir.config().exists() {
        bail!(
            "{} already exists: this data directory is initialised",
            dir.config().display()
        );
    }
    std::fs::create_dir_all(&dir.root)
        .with_context(|| format!("cannot create {}", dir.root.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir.root, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.root.display()))?;
    }
    let mut config = HubConfig::default();
    if let Some(a) = http_listen {
        config.http_listen = a;
    }
    if let Some(a) = mqtt_listen {
        config.mqtt.listen = a;
    }
    if let Some(b) = broker {
        BrokerUrl::parse(&b)?;
        config.mqtt.broker = Some(b);
    }
    let created = signing::create_keys(dir, now_secs())?;
    let cert = crate::tls::create_self_signed(
        dir,
        crate::tls::default_names(crate::tls::hostname().as_deref()),
    )?;
    let store = Store::open(&dir.database())?;
    crate::tokens::bootstrap(&store, dir, now_secs())?;
    config.save(&dir.config())?;
    println!("initialised {}", dir.root.display());
    crate::cli_broker::init_ca(dir, &config)?;
    println!(
        "  root public key:   {} ({})",
        created.root_public,
        dir.root_pub().display()
    );
    println!("  signing key id:    {}", created.signing_key_id);
    println!("  key set (epoch 1): {}", dir.keyset().display());
    println!(
        "  API token:         {} (token \"{}\", role admin)",
        dir.token().display(),
        crate::tokens::FIRST_ADMIN
    );
    println!(
        "  API certificate:   {} for {}",
        cert.cert.display(),
        cert.names.join(", ")
    );
    println!("  SHA-256 fingerprint: {}", cert.fingerprint);
    println!(
        "the CLI on this machine pins that certificate; elsewhere copy it and use --ca-file (OUTPOST_HUB_CA)"
    );
    println!("provision agents with root.pub and keyset.bin; then keep the root key offline:");
    println!("  outpost-hub keys export-root --out /media/offline/root.key --remove");
    Ok(())
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    });
}

/// Print `v` as pretty JSON.
fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// How often `--watch` prints again and `--follow` asks for new events.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Run `show` once, or (with `watch`) every [`WATCH_EVERY`] until
/// interrupted, a blank line between.
async fn watching<F, Fut>(watch: bool, mut show: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    loop {
        show().await?;
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(WATCH_EVERY).await;
        println!();
    }
}

async fn remote(cmd: Command, c: &ApiClient, json: bool) -> Result<()> {
    use crate::api::human;
    match cmd {
        Command::Device(DeviceCommand::Add {
            id,
            public_key,
            labels: ls,
            encryption_key,
            cert_out,
        }) => {
            let labels: BTreeMap<String, String> =
                ls.iter().map(|l| parse_label(l)).collect::<Result<_>>()?;
            let mut body =
                serde_json::json!({ "id": id, "public_key": public_key.trim(), "labels": labels });
            if let Some(k) = &encryption_key {
                body["encryption_key"] = serde_json::Value::String(k.trim().to_string());
            }
            let added: crate::api::AddedDevice =
                c.call(Method::POST, "/v1/devices", Some(&body)).await?;
            if let Some(out) = &cert_out {
                let cert = added
                    .broker_cert
                    .clone()
                    .context("the hub sent no broker certificate")?;
                crate::cli_broker::write_cert(&cert, out)?;
            }
            if json {
                return print_json(&added);
            }
            let d = &added.device;
            println!(
                "registered {} (desired {})",
                d.id,
                d.desired
                    .map_or("none".into(), |g| human::generation(g.epoch, g.generation))
            );
        }
        Command::Device(DeviceCommand::Cert { id, out }) => {
            crate::cli_broker::device_cert(c, &id, &out).await?;
        }
        Command::Device(DeviceCommand::Remove { id }) => {
            c.call::<(), ()>(Method::DELETE, &format!("/v1/devices/{id}"), None)
                .await?;
            if json {
                return print_json(&serde_json::json!({ "removed": id }));
            }
            println!("removed {id}");
        }
        Command::Device(DeviceCommand::Label { id, changes }) => {
            let mut set = BTreeMap::new();
            let mut remove = Vec::new();
            for ch in &changes {
                if let Some(k) = ch.strip_suffix('-').filter(|_| !ch.contains('=')) {
                    remove.push(k.to_string());
                } else {
                    let (k, v) = parse_label(ch)?;
                    set.insert(k, v);
                }
            }
            let body = serde_json::json!({ "set": set, "remove": remove });
            let d: DeviceSummary = c
                .call(
                    Method::PATCH,
                    &format!("/v1/devices/{id}/labels"),
                    Some(&body),
                )
                .await?;
            if json {
                return print_json(&d);
            }
            println!(
                "{}: {} (desired {})",
                d.id,
                human::labels(&d.labels),
                d.desired
                    .map_or("none".into(), |g| human::generation(g.epoch, g.generation))
            );
        }
        Command::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let spec = DeploymentSpec::from_toml(&text)
                .with_context(|| format!("{} is invalid", file.display()))?;
            let out: ApplyOutcome = c.call(Method::PUT, "/v1/deployments", Some(&spec)).await?;
            if json {
                return print_json(&out);
            }
            println!(
                "deployment {} revision {}{}: {} device(s) matched, {} new manifest(s)",
                out.name,
                out.revision,
                if out.changed { "" } else { " (unchanged)" },
                out.matched_devices,
                out.updated.len()
            );
            if out.rollout_started {
                println!(
                    "rollout started: the other devices keep their release until their wave; \
                     follow it with `outpost-hub rollout status {}`",
                    out.name
                );
            }
            for w in &out.warnings {
                eprintln!("warning: {w}");
            }
        }
        Command::Devices { watch } => {
            watching(watch, || async {
                let ds: Vec<DeviceSummary> = c.get("/v1/devices").await?;
                if json {
                    println!("{}", serde_json::to_string(&ds)?);
                } else {
                    print!("{}", human::devices(&ds, now_secs()));
                }
                Ok(())
            })
            .await?;
        }
        Command::Status { device, watch } => {
            let path = format!("/v1/devices/{device}");
            // On a terminal, image pulls under way are drawn as bars below
            // the table (indicatif; hidden when stderr is not a terminal).
            let bars = std::sync::Mutex::new(crate::progress::Bars::new(true));
            watching(watch, || async {
                let d: DeviceDetail = c.get(&path).await?;
                if json && watch {
                    println!("{}", serde_json::to_string(&d)?);
                } else if json {
                    print_json(&d)?;
                } else {
                    print!("{}", human::status(&d, now_secs()));
                    if watch {
                        let want = d
                            .status
                            .as_ref()
                            .map(crate::progress::pull_bars)
                            .unwrap_or_default();
                        if let Ok(mut b) = bars.lock() {
                            b.show(&want);
                        }
                    }
                }
                Ok(())
            })
            .await?;
        }
        Command::Events {
            device,
            after,
            follow,
        } => events(c, &device, after, follow, json).await?,
        Command::Logs {
            device,
            app,
            tail,
            follow,
        } => {
            let mut path = format!("/v1/devices/{device}/logs/{app}?follow={follow}");
            if let Some(n) = tail {
                path.push_str(&format!("&tail={n}"));
            }
            let mut out = std::io::stdout().lock();
            let mut pending = Vec::new();
            c.stream(&path, |bytes| {
                use std::io::Write;
                if !json {
                    out.write_all(bytes)?;
                    return out.flush();
                }
                // One JSON object per complete line.
                pending.extend_from_slice(bytes);
                while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).to_string();
                    writeln!(out, "{}", serde_json::json!({ "line": text }))?;
                }
                out.flush()
            })
            .await?;
        }
        Command::Deployments => {
            let ds: Vec<DeploymentRecord> = c.get("/v1/deployments").await?;
            if json {
                return print_json(&ds);
            }
            print!("{}", human::deployments(&ds, now_secs()));
        }
        Command::Delete(DeleteCommand::Deployment { name }) => {
            let out: ApplyOutcome = c
                .call::<(), _>(Method::DELETE, &format!("/v1/deployments/{name}"), None)
                .await?;
            if json {
                return print_json(&out);
            }
            println!(
                "deleted deployment {}: {} new manifest(s)",
                out.name,
                out.updated.len()
            );
        }
        Command::Stats => {
            let s: Stats = c.get("/v1/stats").await?;
            if json {
                return print_json(&s);
            }
            print!("{}", human::stats(&s));
        }
        Command::Audit { limit } => {
            let es: Vec<AuditEntry> = c.get(&format!("/v1/audit?limit={limit}")).await?;
            if json {
                return print_json(&es);
            }
            print!("{}", human::audit(&es, now_secs()));
        }
        Command::Rollout(cmd) => rollout(cmd, c, json).await?,
        Command::Dashboard { page } => {
            let body = serde_json::json!({ "next": page });
            let link: serde_json::Value = c.call(Method::POST, "/v1/ui/links", Some(&body)).await?;
            if json {
                return print_json(&link);
            }
            let path = link["path"]
                .as_str()
                .context("the hub's answer to POST /v1/ui/links has no path")?;
            println!("{}{path}", c.base());
            println!(
                "open it in a browser within {} s; it works once (the CLI's certificate check does not apply to the browser)",
                link["expires_in_secs"]
            );
        }
        Command::Init { .. }
        | Command::Serve { .. }
        | Command::Keys(_)
        | Command::Token(_)
        | Command::Secret(_)
        | Command::Config(_)
        | Command::BrokerConfig(_) => {
            bail!("internal: local command routed to the API client")
        }
    }
    Ok(())
}

/// `events DEVICE [--after SEQ] [--follow]`: a table (or a JSON array), and
/// with `--follow` new rows (or one JSON object per line) as they arrive.
async fn events(c: &ApiClient, device: &str, after: u64, follow: bool, json: bool) -> Result<()> {
    let mut after = after;
    let mut first = true;
    loop {
        let es: Vec<EventRecord> = c
            .get(&format!("/v1/devices/{device}/events?after={after}"))
            .await?;
        if let Some(last) = es.last() {
            after = last.event.seq;
        }
        match (json, follow) {
            (true, false) => return print_json(&es),
            (true, true) => {
                for e in &es {
                    println!("{}", serde_json::to_string(e)?);
                }
            }
            (false, _) if first && es.is_empty() && !follow => {
                println!("no events");
            }
            (false, _) if !es.is_empty() || first => {
                print!("{}", crate::api::human::events(&es, now_secs(), first));
            }
            (false, _) => {}
        }
        if !follow {
            return Ok(());
        }
        first = false;
        // Flushed per batch so a pipe sees each event as it arrives.
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

async fn rollout(cmd: RolloutCommand, c: &ApiClient, json: bool) -> Result<()> {
    use crate::hub::rollouts::view::{summary, RolloutView};
    use crate::rollout::Phase;
    use std::io::IsTerminal;
    let (deployment, verb) = match cmd {
        RolloutCommand::Status {
            deployment: Some(name),
            watch: true,
        } if !json && std::io::stdout().is_terminal() => {
            // A bar while it runs, the table when it is done.
            let mut bars = crate::progress::Bars::new(false);
            loop {
                let v: RolloutView = c.get(&format!("/v1/rollouts/{name}")).await?;
                let done = matches!(v.phase, Phase::Completed | Phase::Aborted);
                bars.show(&[crate::progress::rollout_bar(&v)]);
                if done {
                    bars.finish();
                    print!("{}", v.human());
                    return Ok(());
                }
                tokio::time::sleep(WATCH_EVERY).await;
            }
        }
        RolloutCommand::Status { deployment, watch } => loop {
            let done = match &deployment {
                Some(name) => {
                    let v: RolloutView = c.get(&format!("/v1/rollouts/{name}")).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        print!("{}", v.human());
                    }
                    matches!(v.phase, Phase::Completed | Phase::Aborted)
                }
                None => {
                    let vs: Vec<RolloutView> = c.get("/v1/rollouts").await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&vs)?);
                    } else {
                        print!("{}", summary(&vs));
                    }
                    vs.iter()
                        .all(|v| matches!(v.phase, Phase::Completed | Phase::Aborted))
                }
            };
            if !watch || done {
                return Ok(());
            }
            tokio::time::sleep(WATCH_EVERY).await;
            println!();
        },
        RolloutCommand::Pause { deployment } => (deployment, "pause"),
        RolloutCommand::Resume { deployment } => (deployment, "resume"),
        RolloutCommand::Abort { deployment } => (deployment, "abort"),
    };
    let v: RolloutView = c
        .call::<(), _>(
            Method::POST,
            &format!("/v1/rollouts/{deployment}/{verb}"),
            None,
        )
        .await?;
    if json {
        return print_json(&v);
    }
    println!(
        "rollout of {} revision {}: {}",
        v.deployment, v.revision, v.state
    );
    Ok(())
}
