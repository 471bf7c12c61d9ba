//! The desired state of one device: a `Manifest` listing `AppSpec`s.
//!
//! The hub renders one manifest per device; the agent reconciles towards it. Both
//! sides call [`Manifest::validate`], so a rule added here protects the hub's API
//! and the agent alike.

use crate::image::ImageRef;
use crate::keys::KeyId;
use crate::secret::{SecretMount, MAX_SECRETS_PER_APP, MAX_SECRET_BYTES, TAG_LEN};
use crate::topics::DeviceId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Most apps one manifest may carry.
pub const MAX_APPS: usize = 64;
const MAX_LIST: usize = 256;

/// Everything one device should be running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub device_id: DeviceId,
    /// Key epoch: the key-set version this manifest was issued under. Ordering is
    /// `(epoch, generation)`, so rotating keys after a compromise can restart
    /// generations without being stuck behind a huge forged one.
    pub epoch: u64,
    /// Monotonic per device within an epoch; bumped only when content changes.
    pub generation: u64,
    /// Unix seconds at the hub when signed. Informational: a Pi has no RTC.
    pub issued_at: u64,
    pub key_id: KeyId,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_APPS>")]
    pub apps: Vec<AppSpec>,
    /// How the device trials this manifest as one release before committing
    /// it (and rolls it back when an app fails in the trial). `default` lets
    /// the hub read records it stored before the field existed; postcard
    /// always carries it (format version 2, see `legacy.rs`).
    #[serde(default)]
    pub release: ReleasePolicy,
    /// Unix seconds (hub clock) after which a device refuses this manifest as
    /// *new* (a replayed or withheld old manifest cannot be installed), while
    /// one it already runs keeps running: an offline device keeps working.
    /// The hub re-issues manifests before they expire. [`NEVER`] for
    /// manifests of format versions before 3 (`legacy.rs`).
    #[serde(default = "never")]
    pub expires_at: u64,
}

/// `expires_at` of something that does not expire.
pub const NEVER: u64 = u64::MAX;

pub(crate) fn never() -> u64 {
    NEVER
}

/// Default time every app must stay up (and ready, with a health check)
/// before a release commits.
pub const DEFAULT_STABLE_SECS: u32 = 30;
/// Default time a release has, from its first stopped or started container,
/// to become stable before the device rolls it back.
pub const DEFAULT_TRIAL_DEADLINE_SECS: u32 = 300;
/// Default wait of a hand-over update for the new container to be ready.
pub const DEFAULT_HANDOVER_TIMEOUT_SECS: u32 = 60;

impl ReleasePolicy {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.trial_deadline_secs == 0 {
            return Err(ValidationError::Release(
                "trial_deadline_secs must be at least 1".into(),
            ));
        }
        if self.stable_secs > self.trial_deadline_secs {
            return Err(ValidationError::Release(format!(
                "stable_secs ({}) is longer than trial_deadline_secs ({}): no release could pass",
                self.stable_secs, self.trial_deadline_secs
            )));
        }
        Ok(())
    }
}

/// The trial a new release goes through on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasePolicy {
    /// Every app must have run (and, with a health check, been ready) this
    /// long without a break for the release to commit.
    pub stable_secs: u32,
    /// A release not stable this long after its trial started is rolled back.
    pub trial_deadline_secs: u32,
}

impl Default for ReleasePolicy {
    fn default() -> Self {
        ReleasePolicy {
            stable_secs: DEFAULT_STABLE_SECS,
            trial_deadline_secs: DEFAULT_TRIAL_DEADLINE_SECS,
        }
    }
}

/// One containerised application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    /// DNS-label style; unique within the manifest; also the container's hostname.
    pub name: String,
    pub image: ImageRef,
    /// Replaces the image's ENTRYPOINT when non-empty.
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    pub command: Vec<String>,
    /// Replaces the image's CMD when non-empty.
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    pub args: Vec<String>,
    /// Merged over the image's environment.
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    /// `uid[:gid]`; numeric so no passwd lookup inside an untrusted rootfs.
    pub user: Option<String>,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    pub volumes: Vec<VolumeMount>,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    pub devices: Vec<DeviceNode>,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    pub ports: Vec<PortMapping>,
    pub resources: Resources,
    pub restart: RestartPolicy,
    pub health: Option<HealthCheck>,
    pub update: UpdateStrategy,
    pub read_only_rootfs: bool,
    /// Capabilities added to the default set, e.g. `CAP_NET_ADMIN`.
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    pub capabilities: Vec<String>,
    pub network: NetworkMode,
    /// With [`UpdateStrategy::HandOver`]: stop the old container after this
    /// long even when the new one is not ready yet.
    #[serde(default = "default_handover_timeout")]
    pub handover_timeout_secs: u32,
    /// Replace the app even while it holds its update lock (an operator's
    /// override; the lock normally defers the update).
    #[serde(default)]
    pub override_lock: bool,
    /// Secrets mounted as read-only files (`secret.rs`): sealed to this
    /// device, opened by the agent into its run dir (tmpfs) at container
    /// creation. Added in format version 3 (`legacy.rs` reads version 2).
    #[serde(
        default,
        deserialize_with = "crate::bounded::vec::<_, _, MAX_SECRETS_PER_APP>"
    )]
    pub secrets: Vec<SecretMount>,
}

fn default_handover_timeout() -> u32 {
    DEFAULT_HANDOVER_TIMEOUT_SECS
}

/// A named volume living in the agent's data dir, surviving container replacement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub name: String,
    pub container_path: String,
    pub read_only: bool,
}

/// A host device node made visible inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    pub host_path: String,
    pub container_path: String,
    /// cgroup access string: any of `r`, `w`, `m`.
    pub permissions: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Informational with host networking; forwarded with an isolated network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub container_port: u16,
    pub host_port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_bytes: Option<u64>,
    /// Thousandths of a CPU (1000 = one core).
    pub cpu_millis: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure {
        max_retries: u32,
    },
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    Exec {
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
        command: Vec<String>,
    },
    Http {
        port: u16,
        path: String,
    },
    Tcp {
        port: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval_secs: u32,
    pub timeout_secs: u32,
    /// Consecutive failures before the app is reported unhealthy.
    pub retries: u32,
}

/// How an app's container is replaced by a new release. Variants are
/// postcard-encoded by index: the first two are format version 1's `Recreate`
/// and `StartFirst`, so their meaning never changes; new ones go at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateStrategy {
    /// Stop the old container, then pull the new image and start it.
    #[serde(alias = "Recreate")]
    KillThenDownload,
    /// Start the new container next to the old one; stop the old when the new
    /// is ready (or after `handover_timeout_secs`).
    #[serde(alias = "StartFirst")]
    HandOver,
    /// Pull (and verify) every image of the release first; stop the old
    /// container only then, so an unreachable registry costs no downtime.
    #[default]
    DownloadThenKill,
    /// Low storage: stop and remove the old container and delete its image
    /// before pulling the new one.
    DeleteThenDownload,
}

impl UpdateStrategy {
    /// Does the new image have to be on the device before the old container
    /// is stopped?
    pub fn downloads_first(self) -> bool {
        matches!(
            self,
            UpdateStrategy::DownloadThenKill | UpdateStrategy::HandOver
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    #[default]
    Host,
    Isolated,
}

/// A rule a manifest or app spec breaks; names the app and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("manifest has {0} apps; the limit is {MAX_APPS}")]
    TooManyApps(usize),
    #[error("app name {0:?} appears more than once")]
    DuplicateApp(String),
    #[error("release policy: {0}")]
    Release(String),
    #[error("app {app:?}: field `{field}` {problem}")]
    Field {
        app: String,
        field: &'static str,
        problem: String,
    },
}

/// Capabilities an app may add on top of the default set.
pub const KNOWN_CAPABILITIES: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
    "CAP_NET_ADMIN",
    "CAP_SYS_TIME",
    "CAP_SYS_NICE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_PTRACE",
    "CAP_IPC_LOCK",
    "CAP_SYS_RESOURCE",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_MODULE",
    "CAP_SYS_BOOT",
    "CAP_LEASE",
    "CAP_IPC_OWNER",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_NET_BROADCAST",
    "CAP_SYS_PACCT",
    "CAP_SYS_TTY_CONFIG",
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_DAC_READ_SEARCH",
];

/// Is `s` a valid app name (what `AppSpec::name` allows: a DNS label)?
pub fn is_app_name(s: &str) -> bool {
    is_label(s, 63)
}

fn is_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Absolute, normalised, no `..`: safe to join under a rootfs.
pub fn is_safe_abs_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= 4096
        && !p.contains('\0')
        && p.split('/').all(|seg| seg != ".." && seg != ".")
}

impl Manifest {
    /// Check every app and the cross-app rules (count, unique names).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.apps.len() > MAX_APPS {
            return Err(ValidationError::TooManyApps(self.apps.len()));
        }
        self.release.validate()?;
        let mut seen = BTreeSet::new();
        for app in &self.apps {
            if !seen.insert(app.name.as_str()) {
                return Err(ValidationError::DuplicateApp(app.name.clone()));
            }
            app.validate()?;
        }
        Ok(())
    }

    /// `(epoch, generation)`: the order manifests (releases) are taken in.
    pub fn release_id(&self) -> (u64, u64) {
        (self.epoch, self.generation)
    }

    pub fn app(&self, name: &str) -> Option<&AppSpec> {
        self.apps.iter().find(|a| a.name == name)
    }
}

impl AppSpec {
    /// A spec with defaults everywhere but name and image.
    pub fn new(name: impl Into<String>, image: ImageRef) -> Self {
        AppSpec {
            name: name.into(),
            image,
            command: vec![],
            args: vec![],
            env: BTreeMap::new(),
            working_dir: None,
            user: None,
            volumes: vec![],
            devices: vec![],
            ports: vec![],
            resources: Resources::default(),
            restart: RestartPolicy::default(),
            health: None,
            update: UpdateStrategy::default(),
            read_only_rootfs: false,
            capabilities: vec![],
            network: NetworkMode::default(),
            handover_timeout_secs: DEFAULT_HANDOVER_TIMEOUT_SECS,
            override_lock: false,
            secrets: vec![],
        }
    }

    /// The canonical bytes that identify this spec: postcard of
    /// [`AppSpec::identity`], and for a spec without secrets exactly the
    /// bytes it had before `secrets` existed (the field is last; its empty
    /// list is one `0` byte, dropped), so container names and the hub's
    /// content digests of existing apps do not change with the upgrade.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Encoding an in-memory spec cannot fail; stay total without unwrap.
        let mut bytes = postcard::to_stdvec(&self.identity())
            .unwrap_or_else(|_| format!("{self:?}").into_bytes());
        if self.secrets.is_empty() && bytes.last() == Some(&0) {
            bytes.pop();
        }
        bytes
    }

    /// [`AppSpec::canonical_bytes`] of a list, framed as postcard frames a
    /// `Vec` (length varint, then each element).
    pub fn canonical_list_bytes(apps: &[AppSpec]) -> Vec<u8> {
        let mut out = postcard::to_stdvec(&apps.len()).unwrap_or_default();
        for a in apps {
            out.extend_from_slice(&a.canonical_bytes());
        }
        out
    }

    /// This spec with every sealed secret blob cleared: what identifies the
    /// app's configuration (container name, the hub's content digest)
    /// independently of the fresh HPKE randomness of each seal.
    pub fn identity(&self) -> AppSpec {
        AppSpec {
            secrets: self.secrets.iter().map(SecretMount::unsealed_ref).collect(),
            ..self.clone()
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        let app = &self.name;
        let bad = |field: &'static str, problem: String| ValidationError::Field {
            app: app.clone(),
            field,
            problem,
        };
        if !is_label(app, 63) {
            return Err(bad(
                "name",
                "must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'"
                    .into(),
            ));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(bad(
                    "env",
                    format!("variable {k:?} must be non-empty and contain no '=' or NUL"),
                ));
            }
        }
        if let Some(wd) = &self.working_dir {
            if !is_safe_abs_path(wd) {
                return Err(bad(
                    "working_dir",
                    format!("{wd:?} must be an absolute path without '..'"),
                ));
            }
        }
        if let Some(user) = &self.user {
            let numeric = |s: &str| {
                !s.is_empty()
                    && s.len() <= 10
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && s.parse::<u32>().is_ok()
            };
            let ok = match user.split_once(':') {
                Some((u, g)) => numeric(u) && numeric(g),
                None => numeric(user),
            };
            if !ok {
                return Err(bad(
                    "user",
                    format!("{user:?} must be numeric uid or uid:gid"),
                ));
            }
        }
        let mut vol_paths = BTreeSet::new();
        for v in &self.volumes {
            if !v
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                || v.name.is_empty()
                || v.name.len() > 63
            {
                return Err(bad(
                    "volumes",
                    format!(
                        "volume name {:?} must be 1-63 letters, digits, '-' or '_'",
                        v.name
                    ),
                ));
            }
            if !is_safe_abs_path(&v.container_path) || v.container_path == "/" {
                return Err(bad(
                    "volumes",
                    format!(
                        "mount path {:?} must be an absolute path without '..' and not '/'",
                        v.container_path
                    ),
                ));
            }
            if v.container_path == "/run/outpost" || v.container_path.starts_with("/run/outpost/") {
                return Err(bad(
                    "volumes",
                    format!(
                        "mount path {:?} is reserved: the agent mounts the update lock at /run/outpost/lock",
                        v.container_path
                    ),
                ));
            }
            if !vol_paths.insert(v.container_path.as_str()) {
                return Err(bad(
                    "volumes",
                    format!("mount path {:?} is used twice", v.container_path),
                ));
            }
        }
        if self.secrets.len() > MAX_SECRETS_PER_APP {
            return Err(bad(
                "secrets",
                format!(
                    "{} secrets; the limit is {MAX_SECRETS_PER_APP}",
                    self.secrets.len()
                ),
            ));
        }
        let mut secret_names = BTreeSet::new();
        let mut secret_envs = BTreeSet::new();
        for s in &self.secrets {
            if !is_label(&s.name, 63) {
                return Err(bad(
                    "secrets",
                    format!(
                        "secret name {:?} must be 1-63 lowercase letters, digits or '-'",
                        s.name
                    ),
                ));
            }
            if !secret_names.insert(s.name.as_str()) {
                return Err(bad(
                    "secrets",
                    format!("secret {:?} is mounted twice", s.name),
                ));
            }
            if let Some(var) = s.env_var() {
                if var.is_empty()
                    || var.len() > 128
                    || var.contains('=')
                    || var.contains('\0')
                    || self.env.contains_key(var)
                    || !secret_envs.insert(var)
                {
                    return Err(bad(
                        "secrets",
                        format!(
                            "secret {:?}: environment variable {var:?} must be 1-128 bytes \
                             without '=' or NUL, and not another variable of this app",
                            s.name
                        ),
                    ));
                }
            } else if !is_safe_abs_path(&s.path)
                || s.path == "/"
                || s.path.ends_with('/')
                || s.path == "/run/outpost"
                || s.path.starts_with("/run/outpost/")
            {
                return Err(bad(
                    "secrets",
                    format!(
                        "secret {:?}: path {:?} must be an absolute file path without '..', \
                         not under the reserved /run/outpost",
                        s.name, s.path
                    ),
                ));
            }
            if s.env_var().is_none() && !vol_paths.insert(s.path.as_str()) {
                return Err(bad(
                    "secrets",
                    format!(
                        "secret {:?}: path {:?} is already a mount path of this app",
                        s.name, s.path
                    ),
                ));
            }
            if s.sealed.ciphertext.len() > MAX_SECRET_BYTES + TAG_LEN {
                return Err(bad(
                    "secrets",
                    format!(
                        "secret {:?} is over the {MAX_SECRET_BYTES}-byte limit",
                        s.name
                    ),
                ));
            }
        }
        for d in &self.devices {
            if !d.host_path.starts_with("/dev/") || !is_safe_abs_path(&d.host_path) {
                return Err(bad(
                    "devices",
                    format!(
                        "host path {:?} must be under /dev/ without '..'",
                        d.host_path
                    ),
                ));
            }
            if !is_safe_abs_path(&d.container_path) {
                return Err(bad(
                    "devices",
                    format!(
                        "container path {:?} must be absolute without '..'",
                        d.container_path
                    ),
                ));
            }
            if d.permissions.is_empty() || !d.permissions.chars().all(|c| "rwm".contains(c)) {
                return Err(bad(
                    "devices",
                    format!(
                        "permissions {:?} must be a combination of r, w, m",
                        d.permissions
                    ),
                ));
            }
        }
        for p in &self.ports {
            if p.container_port == 0 || p.host_port == 0 {
                return Err(bad("ports", "port 0 is not allowed".into()));
            }
            // Ports are declarations, not forwarding rules: on the host network
            // the app binds the host's port itself, and the isolated network has
            // no port publishing yet. Refuse what would silently not happen.
            match self.network {
                NetworkMode::Host if p.host_port != p.container_port => {
                    return Err(bad(
                        "ports",
                        format!(
                            "host port {} differs from container port {}: on the host network the app \
                             listens on the host's port itself, so they must be equal",
                            p.host_port, p.container_port
                        ),
                    ));
                }
                NetworkMode::Isolated => {
                    return Err(bad(
                        "ports",
                        "an isolated network cannot publish ports yet; use network = host".into(),
                    ));
                }
                NetworkMode::Host => {}
            }
        }
        if let Some(m) = self.resources.memory_bytes {
            if m < 4 * 1024 * 1024 {
                return Err(bad(
                    "resources.memory_bytes",
                    format!("{m} is below the 4 MiB minimum"),
                ));
            }
        }
        if self.resources.cpu_millis == Some(0) {
            return Err(bad("resources.cpu_millis", "must be greater than 0".into()));
        }
        if let Some(h) = &self.health {
            if h.interval_secs == 0 || h.timeout_secs == 0 {
                return Err(bad(
                    "health",
                    "interval_secs and timeout_secs must be greater than 0".into(),
                ));
            }
            match &h.probe {
                Probe::Exec { command } if command.is_empty() => {
                    return Err(bad("health.probe", "exec probe needs a command".into()))
                }
                Probe::Http { port: 0, .. } | Probe::Tcp { port: 0 } => {
                    return Err(bad("health.probe", "port 0 is not allowed".into()))
                }
                Probe::Http { path, .. } if !path.starts_with('/') => {
                    return Err(bad(
                        "health.probe",
                        format!("http path {path:?} must start with '/'"),
                    ))
                }
                _ => {}
            }
        }
        for cap in &self.capabilities {
            if !KNOWN_CAPABILITIES.contains(&cap.as_str()) {
                return Err(bad(
                    "capabilities",
                    format!("{cap:?} is not a known Linux capability (use the CAP_ form)"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> ImageRef {
        format!("localhost:5000/hello@sha256:{}", "cd".repeat(32))
            .parse()
            .unwrap()
    }

    #[test]
    fn every_rule_names_app_and_field() {
        type Mutate = fn(&mut AppSpec);
        let cases: &[(&str, Mutate)] = &[
            ("name", |a| a.name = "Bad_Name".into()),
            ("env", |a| {
                a.env.insert("A=B".into(), "x".into());
            }),
            ("working_dir", |a| a.working_dir = Some("../x".into())),
            ("user", |a| a.user = Some("root".into())),
            ("volumes", |a| {
                a.volumes.push(VolumeMount {
                    name: "data".into(),
                    container_path: "/a/../b".into(),
                    read_only: false,
                })
            }),
            ("devices", |a| {
                a.devices.push(DeviceNode {
                    host_path: "/etc/passwd".into(),
                    container_path: "/x".into(),
                    permissions: "rw".into(),
                })
            }),
            ("ports", |a| {
                a.ports.push(PortMapping {
                    container_port: 0,
                    host_port: 1,
                    protocol: Protocol::Tcp,
                })
            }),
            ("ports", |a| {
                a.ports.push(PortMapping {
                    container_port: 8080,
                    host_port: 80,
                    protocol: Protocol::Tcp,
                })
            }),
            ("ports", |a| {
                a.network = NetworkMode::Isolated;
                a.ports.push(PortMapping {
                    container_port: 8080,
                    host_port: 8080,
                    protocol: Protocol::Tcp,
                })
            }),
            ("resources.memory_bytes", |a| {
                a.resources.memory_bytes = Some(1)
            }),
            ("resources.cpu_millis", |a| a.resources.cpu_millis = Some(0)),
            ("health", |a| {
                a.health = Some(HealthCheck {
                    probe: Probe::Tcp { port: 1 },
                    interval_secs: 0,
                    timeout_secs: 1,
                    retries: 1,
                })
            }),
            ("capabilities", |a| a.capabilities.push("NET_ADMIN".into())),
        ];
        for (field, mutate) in cases {
            let mut app = AppSpec::new("web", img());
            app.validate().unwrap();
            mutate(&mut app);
            match app.validate() {
                Err(ValidationError::Field { field: f, .. }) => assert_eq!(f, *field),
                other => panic!("{field}: expected a field error, got {other:?}"),
            }
        }
    }

    #[test]
    fn duplicate_app_names_are_refused() {
        let m = Manifest {
            device_id: "d1".parse().unwrap(),
            epoch: 1,
            generation: 1,
            issued_at: 0,
            key_id: KeyId("k".into()),
            apps: vec![AppSpec::new("web", img()), AppSpec::new("web", img())],
            release: Default::default(),
            expires_at: NEVER,
        };
        assert_eq!(
            m.validate(),
            Err(ValidationError::DuplicateApp("web".into()))
        );
    }
}
