//! The hub's configuration file (`hub.toml`) and the layout of its data directory.
//!
//! Everything the hub needs to find on disk is named here, so `init`, `serve` and the
//! CLI agree on paths.

use crate::admission::{AdmissionPolicy, AdmissionRule, PolicyError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default data directory when neither `--data-dir` nor `OUTPOST_HUB_DIR` is given.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/outpost-hub";

/// Why the configuration could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write config file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("broker URL {url:?} is invalid: {problem}")]
    BrokerUrl { url: String, problem: String },
    #[error("config file {path}: {source}")]
    Admission { path: PathBuf, source: PolicyError },
}

/// `hub.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Where the HTTP API listens.
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub registry: RegistryConfig,
    /// The admission policy's rules (`[[admission]]` tables), in file order;
    /// see `admission` and docs/security.md. Kept in this file, not in the
    /// database behind the API, so that holding the API token (enough to
    /// apply deployments) is not enough to grant a deployment more privilege.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admission: Vec<AdmissionRule>,
    /// TLS of the HTTP API (`[api]`); the address stays `http_listen`.
    #[serde(default)]
    pub api: ApiConfig,
    /// Heartbeat and manifest expiry (`[freshness]`).
    #[serde(default)]
    pub freshness: FreshnessConfig,
}

/// `[freshness]`: how often the hub signs a heartbeat, and how long a
/// manifest is adopted as new by a device. The hub re-issues a manifest (a
/// new generation, same content) once half its validity has passed, so a
/// device that is online never holds one close to expiry; a device offline
/// past the expiry keeps running what it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshnessConfig {
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    #[serde(default = "default_manifest_valid_secs")]
    pub manifest_valid_secs: u64,
}

fn default_heartbeat_secs() -> u64 {
    60
}

fn default_manifest_valid_secs() -> u64 {
    30 * 86_400
}

impl Default for FreshnessConfig {
    fn default() -> Self {
        FreshnessConfig {
            heartbeat_secs: default_heartbeat_secs(),
            manifest_valid_secs: default_manifest_valid_secs(),
        }
    }
}

/// `[api]`: how the HTTP API is served. TLS is on unless `tls = false`; the
/// certificate and key are the data directory's `api.crt` / `api.key`
/// (self-signed, made by `init`) unless `tls_cert` / `tls_key` name the
/// operator's own (PEM; the certificate file may hold the chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `false` serves plain HTTP: bearer tokens then cross the network in
    /// clear. Only for a hub whose API is reachable on loopback alone, or
    /// behind a TLS-terminating proxy; the hub says so loudly at start.
    #[serde(default = "default_true")]
    pub tls: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            tls: true,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl ApiConfig {
    /// The certificate (chain) the API serves: `tls_cert`, else `DATA_DIR/api.crt`.
    pub fn cert_path(&self, dir: &DataDir) -> PathBuf {
        self.tls_cert.clone().unwrap_or_else(|| dir.api_cert())
    }

    /// Its private key: `tls_key`, else `DATA_DIR/api.key`.
    pub fn key_path(&self, dir: &DataDir) -> PathBuf {
        self.tls_key.clone().unwrap_or_else(|| dir.api_key())
    }

    /// `https` or `http`, as clients must say it.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// How the hub reaches MQTT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Listen address of the embedded broker; ignored when `broker` is set.
    #[serde(default = "default_mqtt_listen")]
    pub listen: SocketAddr,
    /// External broker (`mqtt://host:port` or `mqtts://host:port`). When set, no
    /// embedded broker is started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// PEM CA bundle for `mqtts://`; the system roots are used when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Stable client id: with `clean_session = false` the broker keeps the hub's
    /// subscriptions and queued QoS 1 messages across reconnects under this id.
    /// The default contains ':', which no device id can, so a device can never
    /// take over the hub's session (brokers kick the older of two equal ids).
    /// This id is the ingest connection's; manifests are published on a second
    /// connection with `-pub` appended (`outpost:hub-pub`), see `link`.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Connection limit of the embedded broker. At the limit rumqttd silently
    /// withholds CONNACK, so it is set well above the expected fleet size.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Serve the embedded broker over TLS with this certificate (PEM, chain
    /// included) and `tls_key`; devices then use `mqtts://` and trust it
    /// (e.g. the API's own `api.crt` / `api.key`, which name localhost and
    /// this machine). Without them the broker speaks plain MQTT, which is
    /// why it listens on loopback unless `listen` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Client certificates the hub's two links present to an external broker
    /// (`outpost-hub broker-config mosquitto` makes them and prints this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<LinkCerts>,
    /// Command run (no shell) after the hub rewrote the broker CRL
    /// (`device remove`), e.g. `["systemctl", "reload", "mosquitto"]`:
    /// Mosquitto rereads its CRL at start and on SIGHUP (docs/security.md).
    /// Its failure fails the removal's request with the command's output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_revoke: Vec<String>,
    /// Where the hub also writes the broker CRL (the file Mosquitto's
    /// `crlfile` names): Mosquitto rereads it as its own user, which cannot
    /// read the hub's private data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_file: Option<PathBuf>,
}

/// PEM certificate and key paths of the hub's two MQTT links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkCerts {
    pub ingest_cert: PathBuf,
    pub ingest_key: PathBuf,
    pub publish_cert: PathBuf,
    pub publish_key: PathBuf,
}

/// Registry access for resolving image tags to digests: the `[registry]`
/// section shared with the agent (insecure hosts, CA file, Docker config,
/// per-registry credentials files), defined and loaded by `outpost-oci`. It
/// holds only paths, so saving or printing `hub.toml` never writes a secret.
pub use outpost_oci::RegistrySettings as RegistryConfig;

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8480))
}
fn default_mqtt_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_client_id() -> String {
    "outpost:hub".to_string()
}
fn default_max_connections() -> usize {
    20_000
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: default_mqtt_listen(),
            broker: None,
            ca_file: None,
            client_id: default_client_id(),
            max_connections: default_max_connections(),
            tls_cert: None,
            tls_key: None,
            client_auth: None,
            on_revoke: Vec::new(),
            crl_file: None,
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            http_listen: default_http_listen(),
            mqtt: MqttConfig::default(),
            registry: RegistryConfig::default(),
            admission: Vec::new(),
            api: ApiConfig::default(),
            freshness: FreshnessConfig::default(),
        }
    }
}

impl HubConfig {
    pub fn load(path: &Path) -> Result<HubConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: HubConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if let Some(url) = &config.mqtt.broker {
            BrokerUrl::parse(url)?;
        }
        if config.api.tls_cert.is_some() != config.api.tls_key.is_some() {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: "[api] tls_cert and tls_key go together: give both or neither".into(),
            });
        }
        if config.mqtt.tls_cert.is_some() != config.mqtt.tls_key.is_some() {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: "[mqtt] tls_cert and tls_key go together: give both or neither".into(),
            });
        }
        config
            .admission_policy()
            .map_err(|source| ConfigError::Admission {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(config)
    }

    /// The admission policy of the `[[admission]]` tables, each rule checked.
    pub fn admission_policy(&self) -> Result<AdmissionPolicy, PolicyError> {
        AdmissionPolicy::new(self.admission.clone())
    }

    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text).map_err(|source| ConfigError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// A parsed external broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, ConfigError> {
        let bad = |problem: &str| ConfigError::BrokerUrl {
            url: url.to_string(),
            problem: problem.to_string(),
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(bad("scheme must be mqtt:// or mqtts://"));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') {
            return Err(bad("only host[:port] is allowed after the scheme"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("port must be a number from 1 to 65535"))?,
            ),
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("host is empty"));
        }
        if port == 0 {
            return Err(bad("port must be a number from 1 to 65535"));
        }
        Ok(BrokerUrl {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

/// Paths inside the data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("hub.toml")
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("hub.redb")
    }
    pub fn root_key(&self) -> PathBuf {
        self.root.join("root.key")
    }
    pub fn root_pub(&self) -> PathBuf {
        self.root.join("root.pub")
    }
    pub fn signing_key(&self) -> PathBuf {
        self.root.join("signing.key")
    }
    /// The key that encrypts secret values at rest (0600; apart from the
    /// database so a copy of `hub.redb` reveals no secret).
    pub fn secret_key(&self) -> PathBuf {
        self.root.join(crate::secrets::KEY_FILE)
    }
    /// A new at-rest key while `keys rotate-secrets` runs.
    pub fn secret_key_next(&self) -> PathBuf {
        self.root.join(crate::secrets::NEXT_KEY_FILE)
    }
    pub fn keyset(&self) -> PathBuf {
        self.root.join("keyset.bin")
    }
    pub fn token(&self) -> PathBuf {
        self.root.join("token")
    }
    /// Root rotation links (`signing::rotate_root`), one file per version.
    pub fn roots(&self) -> PathBuf {
        self.root.join("roots")
    }
    /// The link that introduced root `version`.
    pub fn root_link(&self, version: u64) -> PathBuf {
        self.roots().join(format!("{version}.bin"))
    }
    /// The API's self-signed certificate (PEM), made by `init`; clients on
    /// this machine pin it.
    pub fn api_cert(&self) -> PathBuf {
        self.root.join("api.crt")
    }
    /// The private key of [`DataDir::api_cert`] (PEM, mode 0600).
    pub fn api_key(&self) -> PathBuf {
        self.root.join("api.key")
    }
    /// The broker CA's directory (`broker::ca::CaFiles`).
    pub fn broker_ca(&self) -> PathBuf {
        self.root.join("broker-ca")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let ok = [
            ("mqtt://127.0.0.1:1884", ("127.0.0.1", 1884, false)),
            ("mqtts://broker.example", ("broker.example", 8883, true)),
            ("mqtt://localhost", ("localhost", 1883, false)),
            ("mqtt://[::1]:1885", ("::1", 1885, false)),
        ];
        for (url, (host, port, tls)) in ok {
            let b = BrokerUrl::parse(url).unwrap();
            assert_eq!((b.host.as_str(), b.port, b.tls), (host, port, tls), "{url}");
        }
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u@h",
            "mqtt://h/x",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let c: HubConfig = toml::from_str(include_str!("../../examples/hub.toml")).unwrap();
        assert_eq!(c.registry.insecure, vec!["localhost:5000".to_string()]);
    }

    #[test]
    fn registry_credentials_section_parses_and_refuses_inline_secrets() {
        let c: HubConfig = toml::from_str(
            r#"
[registry]
insecure = ["lab:5000"]
ca_file = "/etc/outpost/registry-ca.pem"
docker_config = "/root/.docker/config.json"
[registry.auth."registry.example:5000"]
username = "pi"
password_file = "/etc/outpost/registry.pass"
[registry.auth."tok.example"]
token_file = "/etc/outpost/registry.token"
"#,
        )
        .unwrap();
        let auth = &c.registry.auth["registry.example:5000"];
        assert_eq!(auth.username.as_deref(), Some("pi"));
        assert_eq!(
            c.registry.ca_file.as_deref(),
            Some(Path::new("/etc/outpost/registry-ca.pem"))
        );
        let text = toml::to_string_pretty(&c).unwrap();
        assert_eq!(toml::from_str::<HubConfig>(&text).unwrap(), c);
        // Secrets live in files only: an inline password is a config error.
        let err = toml::from_str::<HubConfig>(
            "[registry.auth.\"r:5000\"]\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");
    }

    #[test]
    fn admission_tables_parse_round_trip_and_bad_ones_fail_the_load() {
        let text = r#"
http_listen = "127.0.0.1:8480"

[[admission]]
scope = "site=plant-a"
allow_capabilities = ["CAP_SYS_ADMIN"]
allow_devices = ["/dev/mem", "/dev/sd*"]

[[admission]]
scope = { site = "plant-b" }
deny_host_network = true
require_read_only_rootfs = true
run_as_non_root = true
"#;
        let c: HubConfig = toml::from_str(text).unwrap();
        let p = c.admission_policy().unwrap();
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.rules[0].allow_devices, ["/dev/mem", "/dev/sd*"]);
        assert!(p.rules[1].run_as_non_root && p.rules[1].deny_host_network);
        let back = toml::to_string_pretty(&c).unwrap();
        assert_eq!(toml::from_str::<HubConfig>(&back).unwrap(), c);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, text).unwrap();
        assert_eq!(HubConfig::load(&path).unwrap(), c);
        std::fs::write(&path, text.replace("CAP_SYS_ADMIN", "SYS_ADMIN")).unwrap();
        let e = HubConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("[[admission]] #1") && e.contains("allow_capabilities"),
            "{e}"
        );
        std::fs::write(&path, text.replace("deny_host_network", "deny_host_net")).unwrap();
        let e = HubConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("deny_host_net"), "{e}");
    }

    #[test]
    fn api_tls_is_on_by_default_and_cert_and_key_go_together() {
        let c: HubConfig = toml::from_str("http_listen = \"127.0.0.1:8480\"").unwrap();
        assert!(c.api.tls);
        let dir = DataDir::new("/d");
        assert_eq!(c.api.cert_path(&dir), Path::new("/d/api.crt"));
        assert_eq!(c.api.key_path(&dir), Path::new("/d/api.key"));
        let c: HubConfig =
            toml::from_str("[api]\ntls_cert = \"/etc/c.pem\"\ntls_key = \"/etc/k.pem\"\n").unwrap();
        assert_eq!(c.api.cert_path(&dir), Path::new("/etc/c.pem"));
        let c: HubConfig = toml::from_str("[api]\ntls = false\n").unwrap();
        assert_eq!(c.api.scheme(), "http");

        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("hub.toml");
        std::fs::write(&path, "[api]\ntls_cert = \"/etc/c.pem\"\n").unwrap();
        let e = HubConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("tls_key"), "{e}");
    }

    #[test]
    fn config_round_trips_and_refuses_unknown_fields() {
        let c = HubConfig::default();
        let text = toml::to_string_pretty(&c).unwrap();
        assert_eq!(toml::from_str::<HubConfig>(&text).unwrap(), c);
        let err = toml::from_str::<HubConfig>("htp_listen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("htp_listen"), "{err}");
    }
}
