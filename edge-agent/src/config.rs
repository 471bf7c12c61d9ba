//! The agent's configuration file (TOML) and the paths derived from it.
//!
//! Written once by `outpost-agent init`, read by every other command. Holds no
//! secret: the device key lives in its own 0600 file next to the state.

use outpost_protocol::{DeviceId, PublicKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is not valid: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("writing config {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("broker URL {url:?}: {why}")]
    BadBroker { url: String, why: &'static str },
    #[error("root key {value:?} is not a 64-hex-character ed25519 public key")]
    BadRootKey { value: String },
    #[error("[images] budget {value:?}: {why}")]
    BadBudget { value: String, why: String },
    #[error("[logs] {field}: {why}")]
    BadLogs { field: &'static str, why: String },
    #[error("metrics_listen {addr}: must be a loopback address (127.0.0.1 or ::1); the metrics listener has no login")]
    MetricsNotLoopback { addr: std::net::SocketAddr },
}

/// Registry access of the image provider: the `[registry]` section shared with
/// the hub (insecure hosts, CA file, Docker config, per-registry credentials
/// files), defined and loaded by `outpost-oci`. It holds only paths to the
/// secrets, so this file stays secret-free.
pub use outpost_oci::RegistrySettings as RegistryConfig;

/// A byte count written as a number or as text (`"1MiB"`, `"500MB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => crate::retention::parse_bytes(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The image store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Disk the image store may use: `"40%"` of the data dir's file system,
    /// `"2GiB"`, or bytes. Unset: 40 % of that file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
}

/// Container logs (stdout and stderr of every app).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    /// Where app logs live. Unset: `DATA/logs`. A tmpfs path (e.g. under the
    /// run dir) spares the flash at the price of losing logs at a reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Size at which an app's live log is rotated.
    #[serde(default = "default_log_file_bytes")]
    pub max_file_bytes: ByteSize,
    /// Files kept per app, the live one included (2: live + one rotated).
    #[serde(default = "default_log_files")]
    pub files: u32,
    /// Cap over every app's logs together; the oldest rotated files go first.
    #[serde(default = "default_log_total_bytes")]
    pub total_bytes: ByteSize,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            dir: None,
            max_file_bytes: default_log_file_bytes(),
            files: default_log_files(),
            total_bytes: default_log_total_bytes(),
        }
    }
}

fn default_log_file_bytes() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_log_files() -> u32 {
    2
}
fn default_log_total_bytes() -> ByteSize {
    ByteSize(32 << 20)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub device_id: DeviceId,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub broker: String,
    /// PEM CA bundle for `mqtts://`; the system bundle when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for this device's key, issued by the hub's CA
    /// (`outpost-hub device add --cert-out`): presented with `mqtts://` to a
    /// Mosquitto that knows devices by certificate. Unset: password login only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_cert: Option<PathBuf>,
    /// Hex ed25519 root public key that signs key sets.
    pub root_key: String,
    /// The initial `SignedKeySet` (copied into the data dir by `init`).
    pub keyset_file: PathBuf,
    /// Persistent state: redb file, device key, images, volumes.
    pub data_dir: PathBuf,
    /// Volatile state (tmpfs on a real device): container state, local status file.
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    #[serde(default)]
    pub registry: RegistryConfig,
    #[serde(default)]
    pub images: ImagesConfig,
    #[serde(default)]
    pub logs: LogsConfig,
    /// Most events kept while offline; beyond it the oldest are dropped and counted.
    #[serde(default = "default_outbox_limit")]
    pub outbox_limit: u64,
    /// Status is re-sent this often even when nothing changed.
    #[serde(default = "default_status_interval")]
    pub status_interval_secs: u64,
    /// How often the runtime is polled for exited containers.
    #[serde(default = "default_resync")]
    pub resync_interval_ms: u64,
    /// The cgroup (under the cgroup v2 root) that holds the apps' cgroups.
    /// Containers are named after their app and spec, so two agents on one
    /// host (a lab rack, a test machine) need a parent each, or one agent's
    /// orphan sweep would stop the other's apps.
    #[serde(default = "default_cgroup_parent")]
    pub cgroup_parent: String,
    /// Without signed word from the hub (a heartbeat, a manifest) for this
    /// long, the hub counts as silent: reported in the status and logged.
    /// The hub sends a heartbeat every minute by default.
    #[serde(default = "default_hub_silent_after")]
    pub hub_silent_after_secs: u64,
    /// Serve `/metrics` (Prometheus text format) on this loopback address,
    /// e.g. `127.0.0.1:9464`; off when unset. Loopback only: the figures are
    /// for a collector on the device, and the listener has no login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

fn default_hub_silent_after() -> u64 {
    crate::report::DEFAULT_HUB_SILENT_AFTER_SECS
}

/// Where the apps' cgroups go unless `cgroup_parent` says otherwise.
pub const DEFAULT_CGROUP_PARENT: &str = "/outpost";

fn default_cgroup_parent() -> String {
    DEFAULT_CGROUP_PARENT.to_string()
}

fn default_run_dir() -> PathBuf {
    PathBuf::from("/run/outpost-agent")
}
fn default_outbox_limit() -> u64 {
    10_000
}
fn default_status_interval() -> u64 {
    30
}
fn default_resync() -> u64 {
    1_000
}

/// Where a broker lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        if cfg.broker_cert.is_some() && !cfg.broker_addr()?.tls {
            return Err(ConfigError::BadBroker {
                url: cfg.broker.clone(),
                why: "broker_cert is set: a client certificate needs mqtts://",
            });
        }
        cfg.root_public_key()?;
        cfg.budget()?;
        if let Some(addr) = cfg.metrics_listen.filter(|a| !a.ip().is_loopback()) {
            return Err(ConfigError::MetricsNotLoopback { addr });
        }
        if cfg.logs.files == 0 {
            return Err(ConfigError::BadLogs {
                field: "files",
                why: "must be at least 1 (the live file)".into(),
            });
        }
        if cfg.logs.max_file_bytes.0 < 4096 {
            return Err(ConfigError::BadLogs {
                field: "max_file_bytes",
                why: "must be at least 4 KiB".into(),
            });
        }
        Ok(cfg)
    }

    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ConfigError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(path, text).map_err(|source| ConfigError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn root_public_key(&self) -> Result<PublicKey, ConfigError> {
        self.root_key.parse().map_err(|_| ConfigError::BadRootKey {
            value: self.root_key.clone(),
        })
    }

    pub fn broker_addr(&self) -> Result<BrokerAddr, ConfigError> {
        parse_broker(&self.broker)
    }

    /// The image budget as written (default: a share of the disk).
    pub fn budget(&self) -> Result<crate::retention::Budget, ConfigError> {
        match &self.images.budget {
            None => Ok(crate::retention::Budget::Percent(
                crate::retention::DEFAULT_BUDGET_PERCENT,
            )),
            Some(v) => v.parse().map_err(|why| ConfigError::BadBudget {
                value: v.clone(),
                why,
            }),
        }
    }

    /// The image budget in bytes, for the file system holding the data dir.
    pub fn budget_bytes(&self) -> Result<u64, ConfigError> {
        let budget = self.budget()?;
        // The data dir may not exist yet on a first start: measure the
        // nearest existing ancestor, which is on the same file system.
        let mut probe = self.data_dir.as_path();
        while !probe.exists() {
            match probe.parent() {
                Some(p) => probe = p,
                None => break,
            }
        }
        let fs = crate::retention::filesystem_bytes(probe).map_err(|e| ConfigError::BadBudget {
            value: format!("{budget:?}"),
            why: format!("cannot measure the file system of {}: {e}", probe.display()),
        })?;
        Ok(budget.resolve(fs))
    }

    /// The runtime's log rotation settings.
    pub fn log_policy(&self) -> outpost_runtime::LogPolicy {
        outpost_runtime::LogPolicy {
            max_file_bytes: self.logs.max_file_bytes.0,
            files: self.logs.files as usize,
            total_bytes: self.logs.total_bytes.0,
        }
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.logs
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("logs"))
    }

    pub fn key_file(&self) -> PathBuf {
        self.data_dir.join("device.key")
    }
    /// The device's X25519 key secrets are sealed to (0600, made by `init`).
    pub fn encryption_key_file(&self) -> PathBuf {
        self.data_dir.join("encryption.key")
    }
    /// Opened secrets, one dir per container: under the run dir (tmpfs),
    /// never the data dir.
    pub fn secrets_dir(&self) -> PathBuf {
        self.run_dir.join("secrets")
    }
    pub fn state_file(&self) -> PathBuf {
        self.data_dir.join("state.redb")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.data_dir.join("volumes")
    }
    pub fn containers_dir(&self) -> PathBuf {
        self.run_dir.join("containers")
    }
    pub fn status_file(&self) -> PathBuf {
        self.run_dir.join("status.json")
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`.
pub fn parse_broker(url: &str) -> Result<BrokerAddr, ConfigError> {
    let bad = |why| ConfigError::BadBroker {
        url: url.to_string(),
        why,
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(bad("must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(bad("must be scheme://host[:port] with nothing else"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| bad("port is not a number 1-65535"))?;
            (h, port)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || port == 0 {
        return Err(bad("host must not be empty and port must not be 0"));
    }
    Ok(BrokerAddr {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let ok = |u: &str| parse_broker(u).unwrap();
        assert_eq!(
            ok("mqtt://127.0.0.1:1884"),
            BrokerAddr {
                host: "127.0.0.1".into(),
                port: 1884,
                tls: false
            }
        );
        assert_eq!(ok("mqtts://hub.example").port, 8883);
        assert_eq!(ok("mqtt://hub").port, 1883);
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://u@h",
            "mqtt://h/p",
        ] {
            assert!(parse_broker(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_round_trips_and_names_the_bad_field() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            device_id: "pi-1".parse().unwrap(),
            broker: "mqtt://127.0.0.1:1883".into(),
            ca_file: None,
            broker_cert: None,
            root_key: "ab".repeat(32),
            keyset_file: dir.path().join("keyset.bin"),
            data_dir: dir.path().into(),
            run_dir: dir.path().join("run"),
            registry: RegistryConfig::default(),
            images: ImagesConfig {
                budget: Some("25%".into()),
            },
            logs: LogsConfig::default(),
            outbox_limit: 5,
            status_interval_secs: 30,
            resync_interval_ms: 1000,
            hub_silent_after_secs: 300,
            cgroup_parent: DEFAULT_CGROUP_PARENT.into(),
            metrics_listen: None,
        };
        let p = dir.path().join("agent.toml");
        cfg.save(&p).unwrap();
        assert_eq!(Config::load(&p).unwrap(), cfg);
        // Sizes as text or numbers; bad ones name the field.
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("max_file_bytes = 1048576"), "{text}");
        std::fs::write(
            &p,
            text.replace("max_file_bytes = 1048576", "max_file_bytes = \"2MiB\"")
                .replace("total_bytes = 33554432", "total_bytes = 10000000"),
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.logs.max_file_bytes, ByteSize(2 << 20));
        assert_eq!(c.logs.total_bytes, ByteSize(10_000_000));
        assert!(c.budget_bytes().unwrap() > 0);
        std::fs::write(&p, text.replace("25%", "lots")).unwrap();
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(err.contains("budget") && err.contains("lots"), "{err}");
        std::fs::write(&p, "device_id = \"a/b\"\n").unwrap();
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(err.contains("agent.toml"), "{err}");
        // The metrics listener is loopback only: its figures have no login.
        let open = format!("metrics_listen = \"0.0.0.0:9464\"\n{text}");
        std::fs::write(&p, open).unwrap();
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("0.0.0.0:9464") && err.contains("loopback"),
            "{err}"
        );
        std::fs::write(&p, format!("metrics_listen = \"127.0.0.1:9464\"\n{text}")).unwrap();
        assert!(Config::load(&p).unwrap().metrics_listen.is_some());
    }
}
