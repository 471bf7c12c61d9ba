//! A real hub for the simulator: `outpost-hub init` + `outpost-hub serve` run as a
//! child process (the hub's own CLI, re-executed through `outpost-sim hub …`), so
//! the hub's memory and CPU time can be read from `/proc/PID` apart from the
//! simulator's.
//!
//! The simulator talks to it only through its public interfaces: the HTTP API,
//! MQTT, and the provisioning files an agent is given (`root.pub`, `keyset.bin`).

use crate::device::Provisioning;
use outpost_hub::client::{ApiClient, ClientError};
use outpost_hub::config::{ConfigError, DataDir, HubConfig};
use outpost_protocol::{KeyError, KeySetError, PublicKey, SignedKeySet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Why the hub could not be started or provisioned from.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot pick a free local port: {0}")]
    Port(std::io::Error),
    #[error("cannot run {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("`outpost-hub init` failed ({status}): {stderr}")]
    Init { status: String, stderr: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    RootKey { path: PathBuf, source: KeyError },
    #[error("{path}: {source}")]
    KeySet { path: PathBuf, source: KeySetError },
    #[error("hub exited before it was ready ({status}); see {log}")]
    Exited { status: String, log: PathBuf },
    #[error("hub did not answer /v1/health within {0:?}")]
    NotReady(Duration),
    #[error(transparent)]
    Api(#[from] ClientError),
}

/// Pick a free port on 127.0.0.1 (bind, read, release).
pub fn free_port() -> Result<u16, HubError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(HubError::Port)?;
    Ok(l.local_addr().map_err(HubError::Port)?.port())
}

/// A hub running as a child process.
#[derive(Debug)]
pub struct HubProcess {
    child: tokio::process::Child,
    pub pid: u32,
    pub api: ApiClient,
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    pub data_dir: DataDir,
    pub log: PathBuf,
}

fn read(path: PathBuf) -> Result<Vec<u8>, HubError> {
    std::fs::read(&path).map_err(|source| HubError::Read { path, source })
}

/// The root key and key set an agent is provisioned with, from the hub's data dir.
pub fn provisioning(dir: &DataDir) -> Result<Provisioning, HubError> {
    let root_path = dir.root_pub();
    let root_text = String::from_utf8_lossy(&read(root_path.clone())?).to_string();
    let root: PublicKey = root_text
        .trim()
        .parse()
        .map_err(|source| HubError::RootKey {
            path: root_path,
            source,
        })?;
    let keyset_path = dir.keyset();
    let keyset =
        SignedKeySet::verify(&read(keyset_path.clone())?, &root, None).map_err(|source| {
            HubError::KeySet {
                path: keyset_path,
                source,
            }
        })?;
    Ok(Provisioning { root, keyset })
}

impl HubProcess {
    /// `init` a fresh data directory at `dir` and `serve` it with the embedded
    /// broker accepting `max_connections`. `exe` is a binary whose `hub`
    /// subcommand is the hub CLI (this crate's `outpost-sim`).
    /// `broker` is an external broker URL (`mqtt://host:port`); `None` starts the
    /// embedded one.
    pub async fn launch(
        exe: &Path,
        dir: &Path,
        max_connections: usize,
        broker: Option<String>,
    ) -> Result<Self, HubError> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mqtt = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let data_dir = DataDir::new(dir);
        let dir_arg = dir.display().to_string();
        let spawn_err = |source| HubError::Spawn {
            exe: exe.to_path_buf(),
            source,
        };
        let init = tokio::process::Command::new(exe)
            .args(["hub", "--data-dir", &dir_arg, "init"])
            .args(["--http-listen", &http.to_string()])
            .args(["--mqtt-listen", &mqtt.to_string()])
            .args(broker.iter().flat_map(|b| ["--broker", b.as_str()]))
            .output()
            .await
            .map_err(spawn_err)?;
        if !init.status.success() {
            return Err(HubError::Init {
                status: init.status.to_string(),
                stderr: String::from_utf8_lossy(&init.stderr).to_string(),
            });
        }
        let mut config = HubConfig::load(&data_dir.config())?;
        config.mqtt.max_connections = config.mqtt.max_connections.max(max_connections);
        config.save(&data_dir.config())?;

        let log = dir.join("hub.log");
        let log_file = std::fs::File::create(&log).map_err(|source| HubError::Read {
            path: log.clone(),
            source,
        })?;
        let log_err = log_file.try_clone().map_err(|source| HubError::Read {
            path: log.clone(),
            source,
        })?;
        let mut child = tokio::process::Command::new(exe)
            .args(["hub", "--data-dir", &dir_arg, "serve"])
            .env(
                "RUST_LOG",
                std::env::var("OUTPOST_SIM_HUB_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        let pid = child.id().unwrap_or(0);
        let token = String::from_utf8_lossy(&read(data_dir.token())?)
            .trim()
            .to_string();
        let api = ApiClient::new(format!("http://{http}"), token);

        let deadline = Duration::from_secs(30);
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(HubError::Exited {
                    status: status.to_string(),
                    log,
                });
            }
            if api.get::<serde_json::Value>("/v1/health").await.is_ok() {
                break;
            }
            if started.elapsed() > deadline {
                return Err(HubError::NotReady(deadline));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mqtt = match &broker {
            Some(url) => {
                let b = outpost_hub::config::BrokerUrl::parse(url)?;
                format!("{}:{}", b.host, b.port).parse().unwrap_or(mqtt)
            }
            None => mqtt,
        };
        tracing::info!(pid, %http, %mqtt, dir = %dir.display(), "hub started");
        Ok(HubProcess {
            child,
            pid,
            api,
            http,
            mqtt,
            data_dir,
            log,
        })
    }

    /// Stop the hub (SIGKILL: its data directory is thrown away anyway).
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
