//! The declarative deployment format (TOML file / JSON API body) and its checks.
//!
//! A `DeploymentSpec` is what an operator writes: apps with images named by tag or
//! digest and a label selector. [`DeploymentSpec::check`] validates everything that
//! needs no network and converts to protocol `AppSpec`s once images are pinned.
//! Every error names the field path (`apps[1].image`) and the problem.

use crate::rollout::{RolloutDef, RolloutPolicy};
use outpost_protocol::manifest::{
    AppSpec, DeviceNode, HealthCheck, NetworkMode, PortMapping, Probe, Protocol, ReleasePolicy,
    Resources, RestartPolicy, UpdateStrategy, VolumeMount, DEFAULT_STABLE_SECS,
    DEFAULT_TRIAL_DEADLINE_SECS, MAX_APPS,
};
use outpost_protocol::ImageRef;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A bad field in a deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct SpecError {
    pub field: String,
    pub problem: String,
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// One deployment: which devices (selector) run which apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    pub name: String,
    /// Every label listed must match exactly; must not be empty (an empty selector
    /// would silently target the whole fleet).
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub apps: Vec<AppDef>,
    /// How an apply is spread over the matched devices (`[rollout]`). Absent:
    /// every matched device at once, as before rollouts existed. Checked by
    /// [`DeploymentSpec::check`]; carried out by the hub's rollout driver
    /// (`hub/src/hub/rollouts/mod.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutDef>,
    /// How devices trial this deployment's releases (`[release]`): rendered
    /// into each matched device's `Manifest.release`. Absent: the protocol's
    /// defaults, unless another deployment on the device says more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseDef>,
}

/// The optional `[release]` table: the on-device trial of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseDef {
    /// Every app must run (and be ready) this long without a break before
    /// the device commits the release.
    #[serde(default = "default_stable_secs")]
    pub stable_secs: u32,
    /// A release not stable this long after its trial started is rolled back.
    #[serde(default = "default_trial_deadline_secs")]
    pub trial_deadline_secs: u32,
}

fn default_stable_secs() -> u32 {
    DEFAULT_STABLE_SECS
}
fn default_trial_deadline_secs() -> u32 {
    DEFAULT_TRIAL_DEADLINE_SECS
}

impl ReleaseDef {
    /// Check both fields; errors name the field as written (`release.…`).
    pub fn policy(&self) -> Result<ReleasePolicy, SpecError> {
        if self.trial_deadline_secs == 0 {
            return Err(err(
                "release.trial_deadline_secs",
                "0 s: a release needs at least 1 second to prove itself",
            ));
        }
        if self.stable_secs > self.trial_deadline_secs {
            return Err(err(
                "release.stable_secs",
                format!(
                    "{} s is longer than trial_deadline_secs = {} s: no release could pass its trial",
                    self.stable_secs, self.trial_deadline_secs
                ),
            ));
        }
        Ok(ReleasePolicy {
            stable_secs: self.stable_secs,
            trial_deadline_secs: self.trial_deadline_secs,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppDef {
    pub name: String,
    /// `repo:tag` (resolved to a digest at apply time) or `repo@sha256:…`.
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Configuration variables (`outpost-hub config set`) this app takes into
    /// its environment besides the keys of `env`, whose values they may
    /// override: `config = ["LOG_LEVEL"]`. Precedence: `crate::vars`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeDef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceDef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    #[serde(default)]
    pub restart: RestartDef,
    /// Only with `restart = "on-failure"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthDef>,
    #[serde(default)]
    pub update: UpdateDef,
    /// With `update = "hand-over"`: stop the old container after this long
    /// even when the new one is not ready (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover_timeout_secs: Option<u32>,
    /// Replace the app even while it holds its update lock.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub override_lock: bool,
    #[serde(default)]
    pub read_only_rootfs: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub network: NetworkDef,
    /// Secrets (`outpost-hub secret set`) mounted as read-only files:
    /// `secrets = [{ name = "db", path = "/run/secrets/db" }]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretDef>,
}

/// One secret an app reads as a file at `path` (default `/run/secrets/NAME`)
/// or, with `env`, as that environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDef {
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDef {
    pub host_path: String,
    /// Defaults to `host_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_path: Option<String>,
    #[serde(default = "default_perms")]
    pub permissions: String,
}

fn default_perms() -> String {
    "rw".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortDef {
    pub container: u16,
    /// Defaults to `container`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u16>,
    #[serde(default)]
    pub protocol: ProtocolDef,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolDef {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartDef {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateDef {
    /// Pull every image of the release, then replace the old container.
    #[default]
    DownloadThenKill,
    /// Stop the old container first (`recreate` is its old name).
    #[serde(alias = "recreate")]
    KillThenDownload,
    /// Low storage: remove the old container and image, then pull.
    DeleteThenDownload,
    /// Start the new container beside the old (`start-first` is its old name).
    #[serde(alias = "start-first")]
    HandOver,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkDef {
    #[default]
    Host,
    Isolated,
}

/// Exactly one of `exec`, `http_path` (+ `port`), or `tcp_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
    #[serde(default = "default_interval")]
    pub interval_secs: u32,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u32,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_interval() -> u32 {
    10
}
fn default_timeout() -> u32 {
    3
}
fn default_retries() -> u32 {
    3
}

/// DNS-label: 1-63 lowercase letters, digits, '-', not at either end.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The longest configuration variable name.
pub const MAX_VAR_NAME: usize = 128;
/// The largest configuration variable value, in bytes.
pub const MAX_VAR_VALUE: usize = 4096;

/// A configuration variable's name (an environment variable name): 1-128
/// ASCII letters, digits, '_', '.' or '-', not starting with a digit.
pub fn check_var_name(field: &str, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_VAR_NAME
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!(
                "variable name {name:?} must be 1-{MAX_VAR_NAME} ASCII letters, digits, '_', '.' \
                 or '-', not starting with a digit"
            ),
        ))
    }
}

/// A configuration variable's value: at most [`MAX_VAR_VALUE`] bytes, no NUL
/// (it becomes an environment variable).
pub fn check_var_value(field: &str, name: &str, value: &str) -> Result<(), SpecError> {
    if value.len() > MAX_VAR_VALUE {
        return Err(err(
            field,
            format!(
                "the value of {name:?} is {} bytes; the limit is {MAX_VAR_VALUE}",
                value.len()
            ),
        ));
    }
    if value.contains('\0') {
        return Err(err(field, format!("the value of {name:?} contains NUL")));
    }
    Ok(())
}

/// Label keys and values: 1-63 ASCII letters, digits, '-', '_', '.', '/'.
pub fn check_label(field: &str, key: &str, value: &str) -> Result<(), SpecError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    };
    if !ok(key) {
        return Err(err(
            field,
            format!("label key {key:?} must be 1-63 letters, digits, '-', '_', '.' or '/'"),
        ));
    }
    if !ok(value) {
        return Err(err(
            format!("{field}.{key}"),
            format!("label value {value:?} must be 1-63 letters, digits, '-', '_', '.' or '/'"),
        ));
    }
    Ok(())
}

impl DeploymentSpec {
    /// Parse the TOML deployment file format. Errors name the field path
    /// (`apps[0].image`) and the line.
    pub fn from_toml(text: &str) -> Result<DeploymentSpec, SpecError> {
        let line_of = |e: &toml::de::Error| {
            e.span()
                .map(|s| text.get(..s.start).unwrap_or(text).matches('\n').count() + 1)
        };
        let de = toml::Deserializer::parse(text).map_err(|e| {
            err(
                line_of(&e).map_or("file".into(), |l| format!("line {l}")),
                e.message().to_string(),
            )
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let line = line_of(e.inner());
            let field = match (path.as_str(), line) {
                (".", Some(l)) => format!("line {l}"),
                (".", None) => "file".into(),
                (p, Some(l)) => format!("{p} (line {l})"),
                (p, None) => p.to_string(),
            };
            err(field, e.inner().message().to_string())
        })
    }

    /// Everything checkable without the network: names, selector, app fields, and
    /// unique app names. Image references are checked for syntax only.
    pub fn check(&self) -> Result<(), SpecError> {
        if !is_dns_label(&self.name) {
            return Err(err(
                "name",
                format!(
                    "{:?} must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'",
                    self.name
                ),
            ));
        }
        if self.selector.is_empty() {
            return Err(err(
                "selector",
                "must name at least one label (an empty selector would target every device)",
            ));
        }
        for (k, v) in &self.selector {
            check_label("selector", k, v)?;
        }
        if self.apps.len() > MAX_APPS {
            return Err(err(
                "apps",
                format!("{} apps; the limit is {MAX_APPS}", self.apps.len()),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            if !names.insert(app.name.as_str()) {
                return Err(err(
                    format!("apps[{i}].name"),
                    format!("app name {:?} is used more than once", app.name),
                ));
            }
            if app.image.trim().is_empty() {
                return Err(err(format!("apps[{i}].image"), "must not be empty"));
            }
            // Build with a placeholder digest to run the protocol's own rules now,
            // before any registry round trip.
            let placeholder = ImageRef {
                repository: "placeholder".into(),
                digest: outpost_protocol::Digest([0; 32]),
            };
            app.to_app_spec(i, placeholder)?;
            let mut taken = BTreeSet::new();
            for (j, name) in app.config.iter().enumerate() {
                let field = format!("apps[{i}].config[{j}]");
                check_var_name(&field, name)?;
                if !taken.insert(name) {
                    return Err(err(field, format!("{name:?} is listed more than once")));
                }
            }
        }
        self.rollout_policy()?;
        self.release_policy()?;
        Ok(())
    }

    /// The checked `[release]` policy; `None` when the deployment has none.
    pub fn release_policy(&self) -> Result<Option<ReleasePolicy>, SpecError> {
        self.release.as_ref().map(ReleaseDef::policy).transpose()
    }

    /// The checked `[rollout]` policy; the default (one wave of every matched
    /// device) when the deployment has none.
    pub fn rollout_policy(&self) -> Result<RolloutPolicy, SpecError> {
        match &self.rollout {
            None => Ok(RolloutPolicy::default()),
            Some(def) => def
                .policy()
                .map_err(|e| err(e.field, e.problem.to_string())),
        }
    }
}

impl AppDef {
    /// Convert to the wire form with `image` already pinned; runs the protocol's
    /// validation and maps its error onto this app's field path.
    pub fn to_app_spec(&self, index: usize, image: ImageRef) -> Result<AppSpec, SpecError> {
        let at = |f: &str| format!("apps[{index}].{f}");
        let restart = match (self.restart, self.max_retries) {
            (RestartDef::Always, None) => RestartPolicy::Always,
            (RestartDef::Never, None) => RestartPolicy::Never,
            (RestartDef::OnFailure, n) => RestartPolicy::OnFailure {
                max_retries: n.unwrap_or(5),
            },
            (_, Some(_)) => {
                return Err(err(
                    at("max_retries"),
                    "is only allowed with restart = \"on-failure\"",
                ))
            }
        };
        let health = match &self.health {
            None => None,
            Some(h) => {
                let probe = match (&h.exec, &h.http_path, h.port, h.tcp_port) {
                    (Some(cmd), None, None, None) => Probe::Exec {
                        command: cmd.clone(),
                    },
                    (None, Some(path), Some(port), None) => Probe::Http {
                        port,
                        path: path.clone(),
                    },
                    (None, None, None, Some(port)) => Probe::Tcp { port },
                    _ => {
                        return Err(err(
                            at("health"),
                            "set exactly one of `exec`, `http_path` with `port`, or `tcp_port`",
                        ))
                    }
                };
                Some(HealthCheck {
                    probe,
                    interval_secs: h.interval_secs,
                    timeout_secs: h.timeout_secs,
                    retries: h.retries,
                })
            }
        };
        let spec = AppSpec {
            name: self.name.clone(),
            image,
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            working_dir: self.working_dir.clone(),
            user: self.user.clone(),
            volumes: self
                .volumes
                .iter()
                .map(|v| VolumeMount {
                    name: v.name.clone(),
                    container_path: v.path.clone(),
                    read_only: v.read_only,
                })
                .collect(),
            devices: self
                .devices
                .iter()
                .map(|d| DeviceNode {
                    host_path: d.host_path.clone(),
                    container_path: d.container_path.clone().unwrap_or(d.host_path.clone()),
                    permissions: d.permissions.clone(),
                })
                .collect(),
            ports: self
                .ports
                .iter()
                .map(|p| PortMapping {
                    container_port: p.container,
                    host_port: p.host.unwrap_or(p.container),
                    protocol: match p.protocol {
                        ProtocolDef::Tcp => Protocol::Tcp,
                        ProtocolDef::Udp => Protocol::Udp,
                    },
                })
                .collect(),
            resources: Resources {
                memory_bytes: self.memory_bytes,
                cpu_millis: self.cpu_millis,
            },
            restart,
            health,
            update: match self.update {
                UpdateDef::DownloadThenKill => UpdateStrategy::DownloadThenKill,
                UpdateDef::KillThenDownload => UpdateStrategy::KillThenDownload,
                UpdateDef::DeleteThenDownload => UpdateStrategy::DeleteThenDownload,
                UpdateDef::HandOver => UpdateStrategy::HandOver,
            },
            handover_timeout_secs: self
                .handover_timeout_secs
                .unwrap_or(outpost_protocol::manifest::DEFAULT_HANDOVER_TIMEOUT_SECS),
            override_lock: self.override_lock,
            read_only_rootfs: self.read_only_rootfs,
            capabilities: self.capabilities.clone(),
            network: match self.network {
                NetworkDef::Host => NetworkMode::Host,
                NetworkDef::Isolated => NetworkMode::Isolated,
            },
            // Versions are filled in at render time and values sealed per
            // device when its manifest is signed (`hub/secrets.rs`).
            secrets: self
                .secrets
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    let path = match (&s.path, &s.env) {
                        (Some(_), Some(_)) => {
                            return Err(err(
                                at(&format!("secrets[{j}]")),
                                "give `path` (a file) or `env` (a variable), not both",
                            ))
                        }
                        (Some(p), None) if !p.starts_with('/') => {
                            return Err(err(
                                at(&format!("secrets[{j}].path")),
                                format!(
                                    "{p:?} must be an absolute path; `env = \"NAME\"` makes the \
                                     secret an environment variable"
                                ),
                            ))
                        }
                        (Some(p), None) => p.clone(),
                        (None, Some(var)) => {
                            check_var_name(&at(&format!("secrets[{j}].env")), var)?;
                            format!("{}{var}", outpost_protocol::SECRET_ENV_PREFIX)
                        }
                        (None, None) => format!("/run/secrets/{}", s.name),
                    };
                    Ok(outpost_protocol::SecretMount {
                        name: s.name.clone(),
                        path,
                        version: 0,
                        sealed: Default::default(),
                    })
                })
                .collect::<Result<_, SpecError>>()?,
        };
        spec.validate().map_err(|e| match e {
            outpost_protocol::ValidationError::Field { field, problem, .. } => {
                err(at(field), problem)
            }
            other => err(format!("apps[{index}]"), other.to_string()),
        })?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "sensors"
selector = { site = "lab", role = "gateway" }

[[apps]]
name = "web"
image = "localhost:5000/hello:1.0"
env = { MODE = "prod" }
ports = [{ container = 8080 }]

[[apps]]
name = "logger"
image = "localhost:5000/logger@sha256:abababababababababababababababababababababababababababababababab"
restart = "on-failure"
max_retries = 3
"#;

    #[test]
    fn parses_the_documented_format() {
        let d = DeploymentSpec::from_toml(GOOD).unwrap();
        d.check().unwrap();
        assert_eq!(d.apps.len(), 2);
        assert_eq!(d.selector["site"], "lab");
    }

    #[test]
    fn each_bad_input_names_its_field() {
        type Mutate = fn(&mut DeploymentSpec);
        let cases: &[(&str, Mutate)] = &[
            ("name", |d| d.name = "Bad Name".into()),
            ("selector", |d| d.selector.clear()),
            ("selector", |d| {
                d.selector.insert("bad key".into(), "x".into());
            }),
            ("apps[1].name", |d| d.apps[1].name = "web".into()),
            ("apps[0].image", |d| d.apps[0].image = " ".into()),
            ("apps[0].env", |d| {
                d.apps[0].env.insert("A=B".into(), "x".into());
            }),
            ("apps[0].max_retries", |d| d.apps[0].max_retries = Some(1)),
            ("apps[0].config[1]", |d| {
                d.apps[0].config = vec!["LOG".into(), "LOG".into()];
            }),
            ("apps[0].config[0]", |d| {
                d.apps[0].config = vec!["1X".into()]
            }),
            ("apps[0].secrets[0]", |d| {
                d.apps[0].secrets = vec![SecretDef {
                    name: "db".into(),
                    path: Some("/run/secrets/db".into()),
                    env: Some("DB".into()),
                }];
            }),
            ("apps[0].secrets[0].path", |d| {
                d.apps[0].secrets = vec![SecretDef {
                    name: "db".into(),
                    path: Some("env:DB".into()),
                    env: None,
                }];
            }),
            ("apps[0].secrets[0].env", |d| {
                d.apps[0].secrets = vec![SecretDef {
                    name: "db".into(),
                    path: None,
                    env: Some("A=B".into()),
                }];
            }),
            ("apps[0].secrets", |d| {
                // The app's own env already has MODE.
                d.apps[0].secrets = vec![SecretDef {
                    name: "db".into(),
                    path: None,
                    env: Some("MODE".into()),
                }];
            }),
            ("apps[0].capabilities", |d| {
                d.apps[0].capabilities.push("CAP_NOPE".into())
            }),
            ("apps[0].name", |d| d.apps[0].name = "UPPER".into()),
            ("rollout.waves", |d| {
                d.rollout = Some(RolloutDef {
                    waves: vec![crate::rollout::WaveSize::Percent(50)],
                    ..RolloutDef::default()
                })
            }),
        ];
        for (field, mutate) in cases {
            let mut d = DeploymentSpec::from_toml(GOOD).unwrap();
            mutate(&mut d);
            let e = d.check().unwrap_err();
            assert_eq!(&e.field, field, "{e}");
        }
    }

    #[test]
    fn a_rollout_table_is_optional_and_checked_with_its_field_path() {
        let plain = DeploymentSpec::from_toml(GOOD).unwrap();
        assert_eq!(plain.rollout, None);
        assert_eq!(plain.rollout_policy().unwrap(), RolloutPolicy::default());
        // Stored and served as JSON: a deployment without `[rollout]` looks as before.
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("rollout"), "{json}");

        let staged = format!(
            "{GOOD}\n[rollout]\ncanary = 1\nwaves = [\"10%\", \"50%\", \"100%\"]\nmax_failure_ratio = 0.05\n"
        );
        let d = DeploymentSpec::from_toml(&staged).unwrap();
        d.check().unwrap();
        assert_eq!(
            d.rollout_policy().unwrap().cumulative(10),
            vec![1, 1, 5, 10]
        );
        let back: DeploymentSpec =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);

        let bad = staged.replace("\"50%\"", "\"5%\"");
        let e = DeploymentSpec::from_toml(&bad)
            .unwrap()
            .check()
            .unwrap_err();
        assert_eq!(e.field, "rollout.waves[1]", "{e}");
        assert!(
            e.problem
                .contains("\"5%\" is not more than the earlier wave \"10%\""),
            "{e}"
        );

        let typo = staged.replace("canary", "canaries");
        let e = DeploymentSpec::from_toml(&typo).unwrap_err();
        assert!(e.field.starts_with("rollout.canaries"), "{e}");
        let malformed = staged.replace("\"10%\"", "\"ten\"");
        let e = DeploymentSpec::from_toml(&malformed).unwrap_err();
        assert!(e.field.starts_with("rollout.waves[0]"), "{e}");
    }

    #[test]
    fn a_release_table_is_optional_and_checked_with_its_field_path() {
        let plain = DeploymentSpec::from_toml(GOOD).unwrap();
        assert_eq!(plain.release_policy().unwrap(), None);
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("release"), "{json}");

        let with = |table: &str| DeploymentSpec::from_toml(&format!("{GOOD}\n[release]\n{table}"));
        let d = with("stable_secs = 60\ntrial_deadline_secs = 600\n").unwrap();
        d.check().unwrap();
        assert_eq!(
            d.release_policy().unwrap(),
            Some(ReleasePolicy {
                stable_secs: 60,
                trial_deadline_secs: 600
            })
        );
        // One field given: the other is the protocol's default.
        let d = with("stable_secs = 5\n").unwrap();
        assert_eq!(
            d.release_policy().unwrap().unwrap().trial_deadline_secs,
            DEFAULT_TRIAL_DEADLINE_SECS
        );

        let cases = [
            (
                "trial_deadline_secs = 0\nstable_secs = 0\n",
                "release.trial_deadline_secs",
                "0 s",
            ),
            (
                "stable_secs = 61\ntrial_deadline_secs = 60\n",
                "release.stable_secs",
                "61 s is longer than trial_deadline_secs = 60 s",
            ),
        ];
        for (table, field, problem) in cases {
            let e = with(table).unwrap().check().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.problem.contains(problem), "{e}");
        }
        let e = with("stable = 5\n").unwrap_err();
        assert!(e.field.starts_with("release.stable"), "{e}");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../examples/deployment.toml");
        DeploymentSpec::from_toml(text).unwrap().check().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let text = GOOD.replace("env = ", "enviroment = ");
        let e = DeploymentSpec::from_toml(&text).unwrap_err();
        assert!(e.problem.contains("enviroment"), "{e}");
        assert!(e.field.contains("line "), "{e}");
        let wrong_type = GOOD.replace("max_retries = 3", "max_retries = \"three\"");
        let e = DeploymentSpec::from_toml(&wrong_type).unwrap_err();
        assert!(e.field.starts_with("apps[1].max_retries"), "{e}");
    }
}
