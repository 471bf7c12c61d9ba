//! A real hub for the simulator: `outpost-hub init` + `outpost-hub serve` run as a
//! child process (the hub's own CLI, re-executed through `outpost-sim hub …`), so
//! the hub's memory and CPU time can be read from `/proc/PID` apart from the
//! simulator's.
//!
//! The simulator talks to it only through its public interfaces: the HTTP API,
//! MQTT, and the provisioning files an agent is given (`root.pub`, `keyset.bin`).
//! The hub binds port 0 for both listeners and reports what it got in its ready
//! file (`serve --ready-file`), so nothing here picks a port and hopes it stays
//! free.

use crate::device::Provisioning;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use outpost_hub::client::{ApiClient, ClientError};
use outpost_hub::config::{ConfigError, DataDir, HubConfig};
use outpost_hub::serve::ReadyFile;
use outpost_protocol::{KeyError, KeySetError, PublicKey, SignedKeySet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Why the hub could not be started or provisioned from.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
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
    #[error("hub wrote no ready file within {0:?}")]
    NotReady(Duration),
    #[error("hub ready file {path} names no embedded broker")]
    NoBroker { path: PathBuf },
    #[error("broker URL {url} is not an IP address and port (the simulator dials it)")]
    BrokerAddr { url: String },
    #[error("hub ready file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Api(#[from] ClientError),
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
    /// Run under `OUTPOST_SIM_HUB_WRAPPER`: `pid` is the wrapper's.
    wrapped: bool,
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
        // Time 0: the simulator checks the signature, not the expiry.
        SignedKeySet::verify(&read(keyset_path.clone())?, &root, None, 0).map_err(|source| {
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
        let data_dir = DataDir::new(dir);
        let dir_arg = dir.display().to_string();
        let spawn_err = |source| HubError::Spawn {
            exe: exe.to_path_buf(),
            source,
        };
        let init = tokio::process::Command::new(exe)
            .args(["hub", "--data-dir", &dir_arg, "init"])
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
        let ready_path = dir.join("ready.json");
        // OUTPOST_SIM_HUB_WRAPPER (e.g. `heaptrack`) runs the hub under a
        // profiler (docs/benchmarks.md); the RSS and CPU figures are then the
        // wrapper's, not the hub's. The hub gets its own process group so that
        // stopping it reaches the hub behind the wrapper too.
        let wrapper = std::env::var_os("OUTPOST_SIM_HUB_WRAPPER");
        let wrapped = wrapper.is_some();
        let mut command = match wrapper {
            Some(wrapper) => {
                let mut c = tokio::process::Command::new(wrapper);
                c.arg(exe);
                c
            }
            None => tokio::process::Command::new(exe),
        };
        let mut child = command
            .args(["hub", "--data-dir", &dir_arg, "serve"])
            .args([
                "--http-listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
            ])
            .arg("--ready-file")
            .arg(&ready_path)
            .env(
                "RUST_LOG",
                std::env::var("OUTPOST_SIM_HUB_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(spawn_err)?;
        let pid = child.id().unwrap_or(0);
        // The ready file appears, whole, once both listeners are up.
        let deadline = Duration::from_secs(30);
        let started = Instant::now();
        let ready: ReadyFile = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(HubError::Exited {
                    status: status.to_string(),
                    log,
                });
            }
            if let Ok(bytes) = std::fs::read(&ready_path) {
                break serde_json::from_slice(&bytes).map_err(|source| HubError::ReadyFile {
                    path: ready_path.clone(),
                    source,
                })?;
            }
            if started.elapsed() > deadline {
                return Err(HubError::NotReady(deadline));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let http = ready.http_addr;
        // TLS, pinning the certificate `init` made in the data directory.
        let api = ApiClient::for_data_dir(format!("https://{http}"), &data_dir)?;
        let mqtt = match (&broker, ready.mqtt_addr) {
            (None, Some(addr)) => addr,
            (None, None) => return Err(HubError::NoBroker { path: ready_path }),
            (Some(url), _) => {
                let b = outpost_hub::config::BrokerUrl::parse(url)?;
                format!("{}:{}", b.host, b.port)
                    .parse()
                    .map_err(|_| HubError::BrokerAddr { url: url.clone() })?
            }
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
            wrapped,
        })
    }

    /// Stop the hub (SIGKILL: its data directory is thrown away anyway). A
    /// wrapped hub gets SIGTERM first, so a profiler can finish its recording.
    pub async fn stop(mut self) {
        if self.wrapped {
            self.signal_group(Signal::SIGTERM);
            let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
            // The wrapper may exit before the hub it started.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        self.signal_group(Signal::SIGKILL);
        let _ = self.child.wait().await;
    }

    fn signal_group(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.pid) {
            if pid > 0 {
                let _ = killpg(Pid::from_raw(pid), signal);
            }
        }
    }
}

impl Drop for HubProcess {
    /// A hub dropped without `stop` (an error path) takes its whole process
    /// group with it, wrapper or not.
    fn drop(&mut self) {
        self.signal_group(Signal::SIGKILL);
    }
}
