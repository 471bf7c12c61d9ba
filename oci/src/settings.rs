//! The `[registry]` section shared by `hub.toml` and `agent.toml`, and turning
//! it into a [`RegistryConfig`] by reading the files it names.
//!
//! ```toml
//! [registry]
//! insecure = ["localhost:5000"]                  # plain HTTP (lab setups)
//! ca_file = "/etc/outpost/registry-ca.pem"      # extra trusted roots (PEM bundle)
//! docker_config = "/root/.docker/config.json"   # Docker's `auths` format
//! [registry.auth."registry.example:5000"]
//! username = "pi"
//! password_file = "/etc/outpost/registry.pass"  # or: token_file = "..." (bearer)
//! ```
//!
//! The section holds only *paths*: secrets stay in their own files, so a config
//! file that is printed, saved back by `init` or attached to a bug report leaks
//! nothing. The files are read once, at start ([`RegistrySettings::load`]); an
//! unreadable or malformed file is an error naming the file (never its
//! contents: a parse error of a credentials file could quote the secret).
//! `[registry.auth]` entries win over `docker_config` entries for the same host.

use crate::client::{pem_certificates, Credentials, RegistryConfig};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why the registry section could not be turned into a client configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    #[error("cannot read registry {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry {what} {path} is invalid: {reason}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("[registry.auth.\"{host}\"]: {reason}")]
    Auth { host: String, reason: &'static str },
}

/// The `[registry]` section of `hub.toml` / `agent.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// `host:port` registries reached over plain HTTP instead of HTTPS.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// PEM file of CA certificates trusted besides the system's (a private
    /// registry's CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Docker's `config.json` (`docker login` writes it): its `auths` entries
    /// are used. Credential helpers (`credsStore`, `credHelpers`) are not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_config: Option<PathBuf>,
    /// Credentials by registry `host[:port]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub auth: BTreeMap<String, AuthSettings>,
}

/// One `[registry.auth."host:port"]` table: `username` + `password_file`, or
/// `token_file` alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (one trailing newline is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// File holding a bearer token obtained out of band.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl RegistrySettings {
    /// Read the files this section names and build the client configuration.
    pub fn load(&self) -> Result<RegistryConfig, SettingsError> {
        let mut config = RegistryConfig {
            insecure_hosts: self.insecure.clone(),
            ..RegistryConfig::default()
        };
        if let Some(path) = &self.ca_file {
            let pem = read(path, "CA file")?;
            pem_certificates(&pem).map_err(|reason| SettingsError::Invalid {
                what: "CA file",
                path: path.clone(),
                reason,
            })?;
            config.extra_root_certificates_pem.push(pem);
        }
        if let Some(path) = &self.docker_config {
            let text = read(path, "Docker config")?;
            config.credentials =
                parse_docker_config(&text).map_err(|reason| SettingsError::Invalid {
                    what: "Docker config",
                    path: path.clone(),
                    reason,
                })?;
        }
        for (host, auth) in &self.auth {
            let bad = |reason| SettingsError::Auth {
                host: host.clone(),
                reason,
            };
            let key = normalize_host(host);
            if key.is_empty() || key.contains(['/', '@', ' ']) {
                return Err(bad("the key must be a registry host[:port]"));
            }
            let credentials = match (&auth.username, &auth.password_file, &auth.token_file) {
                (Some(username), Some(password_file), None) => {
                    if username.is_empty() || username.contains(':') {
                        return Err(bad("username must be non-empty and contain no ':'"));
                    }
                    Credentials::Basic {
                        username: username.clone(),
                        password: read_secret(password_file, "password file")?,
                    }
                }
                (None, None, Some(token_file)) => {
                    Credentials::Bearer(read_secret(token_file, "token file")?)
                }
                (_, _, Some(_)) => {
                    return Err(bad(
                        "token_file cannot be combined with username or password_file",
                    ))
                }
                _ => return Err(bad("set username and password_file, or token_file")),
            };
            config.credentials.insert(key, credentials);
        }
        for host in config.credentials.keys() {
            if self.insecure.contains(host) {
                tracing::warn!(registry = %host, "credentials for an insecure (plain HTTP) registry travel unencrypted");
            }
        }
        Ok(config)
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, SettingsError> {
    std::fs::read(path).map_err(|source| SettingsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// A password or token file: UTF-8, one trailing newline dropped, not empty.
fn read_secret(path: &Path, what: &'static str) -> Result<String, SettingsError> {
    let invalid = |reason: &str| SettingsError::Invalid {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let bytes = read(path, what)?;
    let text = String::from_utf8(bytes).map_err(|_| invalid("it is not UTF-8 text"))?;
    let secret = text
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(&text);
    if secret.is_empty() {
        return Err(invalid("it is empty"));
    }
    if secret.contains('\n') {
        return Err(invalid("it holds more than one line"));
    }
    Ok(secret.to_string())
}

/// The registry host a credentials key names, as image references spell it:
/// Docker writes `https://index.docker.io/v1/` for Docker Hub and may write a
/// scheme or path for others.
pub fn normalize_host(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

/// One entry of Docker's `auths` (other fields, such as `email`, are ignored).
#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

/// Credentials from Docker's `config.json`. The error never quotes the file:
/// serde's messages can contain the offending value, which may be a secret.
fn parse_docker_config(bytes: &[u8]) -> Result<BTreeMap<String, Credentials>, String> {
    let config: DockerConfig = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "not Docker's config.json format ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    if config.creds_store.is_some() || !config.cred_helpers.is_empty() {
        tracing::warn!("Docker credential helpers (credsStore, credHelpers) are not run; only `auths` entries are used");
    }
    let mut out = BTreeMap::new();
    for (key, entry) in config.auths {
        let host = normalize_host(&key);
        let credentials = if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| format!("the auth of {key:?} is not base64 of \"user:password\""))?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or_else(|| format!("the auth of {key:?} is not base64 of \"user:password\""))?;
            Credentials::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }
        } else if let (Some(username), Some(password)) = (entry.username, entry.password) {
            Credentials::Basic { username, password }
        } else if let Some(token) = entry.registrytoken.filter(|t| !t.is_empty()) {
            Credentials::Bearer(token)
        } else {
            if entry.identitytoken.is_some() {
                tracing::warn!(registry = %host, "Docker identity tokens (OAuth refresh tokens) are not supported; set username and password_file for this registry");
            }
            // `{}`: a host whose secret lives in a credential helper.
            continue;
        };
        out.insert(host, credentials);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn basic(u: &str, p: &str) -> Credentials {
        Credentials::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn docker_config_auths_in_every_shape() {
        let json = br#"{
            "auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOmh1YnB3"},
                "registry.example:5000": {"auth": "cGk6czNjcjN0OndpdGg6Y29sb25z", "email": "x"},
                "https://other.example/v2/": {"username": "u", "password": "p"},
                "tok.example": {"registrytoken": "T"},
                "helper.example": {},
                "oauth.example": {"identitytoken": "R"}
            },
            "credsStore": "desktop"
        }"#;
        let got = parse_docker_config(json).unwrap();
        let want: BTreeMap<String, Credentials> = [
            ("docker.io".to_string(), basic("hub", "hubpw")),
            (
                "registry.example:5000".to_string(),
                basic("pi", "s3cr3t:with:colons"),
            ),
            ("other.example".to_string(), basic("u", "p")),
            ("tok.example".to_string(), Credentials::Bearer("T".into())),
        ]
        .into();
        assert_eq!(got, want);
    }

    #[test]
    fn malformed_docker_configs_are_refused_without_quoting_secrets() {
        for (json, needle) in [
            (
                &br#"{"auths": {"r": {"auth": "!!!secret!!!"}}}"#[..],
                "base64",
            ),
            (
                br#"{"auths": {"r": {"auth": "c2VjcmV0"}}}"#,
                "user:password",
            ),
            (br#"{"auths": {"r": {"auth": 12345}}}"#, "line 1"),
            (br#"{"auths": "secret"#, "line 1"),
        ] {
            let err = parse_docker_config(json).unwrap_err();
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains("secret") && !err.contains("12345"), "{err}");
        }
    }

    #[test]
    fn load_reads_files_and_names_the_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::File::create(&p)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            p
        };
        let pass = file("pass", "hunter2\n");
        let token = file("token", "tok\r\n");
        let docker = file(
            "config.json",
            r#"{"auths": {"r.example:5000": {"auth": "ZDpkb2NrZXI="}, "both.example": {"auth": "ZDpkb2NrZXI="}}}"#,
        );
        let settings = RegistrySettings {
            insecure: vec!["lab:5000".into()],
            ca_file: None,
            docker_config: Some(docker),
            auth: [
                (
                    "both.example".to_string(),
                    AuthSettings {
                        username: Some("pi".into()),
                        password_file: Some(pass.clone()),
                        token_file: None,
                    },
                ),
                (
                    "https://t.example/".to_string(),
                    AuthSettings {
                        token_file: Some(token),
                        ..AuthSettings::default()
                    },
                ),
            ]
            .into(),
        };
        let config = settings.load().unwrap();
        assert_eq!(config.insecure_hosts, vec!["lab:5000".to_string()]);
        assert_eq!(
            config.credentials,
            [
                ("r.example:5000".to_string(), basic("d", "docker")),
                ("both.example".to_string(), basic("pi", "hunter2")),
                ("t.example".to_string(), Credentials::Bearer("tok".into())),
            ]
            .into()
        );
        // Debug of the loaded config never shows a secret.
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("docker\""),
            "{shown}"
        );

        let missing = dir.path().join("nope.pem");
        let cases: Vec<(RegistrySettings, &str)> = vec![
            (
                RegistrySettings {
                    ca_file: Some(missing.clone()),
                    ..RegistrySettings::default()
                },
                "nope.pem",
            ),
            (
                RegistrySettings {
                    ca_file: Some(pass.clone()),
                    ..RegistrySettings::default()
                },
                "CA file",
            ),
            (
                RegistrySettings {
                    auth: [(
                        "h".to_string(),
                        AuthSettings {
                            username: Some("u".into()),
                            password_file: Some(file("empty", "\n")),
                            token_file: None,
                        },
                    )]
                    .into(),
                    ..RegistrySettings::default()
                },
                "empty",
            ),
            (
                RegistrySettings {
                    auth: [(
                        "h".to_string(),
                        AuthSettings {
                            username: Some("u".into()),
                            ..AuthSettings::default()
                        },
                    )]
                    .into(),
                    ..RegistrySettings::default()
                },
                "password_file",
            ),
        ];
        for (settings, needle) in cases {
            let err = settings.load().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
