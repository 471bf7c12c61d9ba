//! Pure generation of the OCI runtime spec (`config.json`) for one app container.
//!
//! Everything here is a function of its inputs: the `AppSpec`, the image config,
//! host facts already gathered (device numbers, whether memory limits work) and
//! the paths the runtime chose. No file is read or written, so the whole policy
//! (what wins between app and image, which capabilities, which mounts, which
//! device rules) is checked by table tests.

use crate::seccomp;
use oci_spec::runtime::Spec;
use outpost_protocol::{AppSpec, Digest, ImageConfig, NetworkMode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Annotation keys the runtime uses to recognise its containers after a restart.
pub const ANNOTATION_APP: &str = "org.outpost.app";
pub const ANNOTATION_IMAGE_DIGEST: &str = "org.outpost.image-digest";
pub const ANNOTATION_SPEC_HASH: &str = "org.outpost.spec-hash";
/// Prefix of caller-supplied labels stored as annotations.
pub const ANNOTATION_LABEL_PREFIX: &str = "org.outpost.label.";

/// Most processes (threads count) one container may hold: a fork bomb in one
/// app cannot exhaust the device's PID space and starve the agent (NIST SP
/// 800-190 §4.4.4). `Resources` has no field for it, so every app gets it;
/// 1,024 is far above what an edge app runs and far below the kernel's default
/// `pid_max` (32,768 on 32-bit and small hosts).
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;

/// Docker's default capability set (defined in `caps.rs`, which the seccomp
/// profile reads too).
pub use crate::caps::DEFAULT_CAPABILITIES;

/// Docker's masked and read-only paths.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period used to express `cpu_millis` as a quota (1000 millis = one period).
const CPU_PERIOD_US: u64 = 100_000;

/// Char or block device, from the host node's `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

impl DeviceKind {
    fn oci(self) -> &'static str {
        match self {
            DeviceKind::Char => "c",
            DeviceKind::Block => "b",
        }
    }
}

/// A declared device node after the runtime looked it up on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDevice {
    pub container_path: String,
    pub kind: DeviceKind,
    pub major: u64,
    pub minor: u64,
    /// Permission bits of the host node, reproduced inside.
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup access string (`r`, `w`, `m`).
    pub access: String,
}

/// Where every container finds its update-lock directory.
pub const LOCK_MOUNT: &str = "/run/outpost/lock";
/// The file an app flocks (exclusively) to hold off updates.
pub const LOCK_FILE: &str = "updates.lock";

/// Everything [`generate`] needs besides the app and image.
#[derive(Debug, Clone)]
pub struct SpecInputs<'a> {
    pub app: &'a AppSpec,
    pub image: &'a ImageConfig,
    pub image_digest: &'a Digest,
    /// Absolute path of the container's root filesystem.
    pub rootfs: &'a Path,
    /// Where this app's named volumes live: `<data>/volumes/<app>`.
    pub volumes_dir: &'a Path,
    /// The app's update-lock directory on the host, mounted at [`LOCK_MOUNT`].
    pub lock_dir: Option<&'a Path>,
    /// This container's secret files (`<dir>/<secret name>`, on tmpfs),
    /// each bind-mounted read-only at its `path`.
    pub secrets_dir: Option<&'a Path>,
    /// The values of the app's secrets that are environment variables
    /// (`env:NAME`), set after the app's own variables.
    pub secret_env: &'a BTreeMap<String, String>,
    pub devices: &'a [ResolvedDevice],
    /// cgroup path relative to each hierarchy's root.
    pub cgroups_path: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// False when the host cannot enforce memory limits and the runtime was told
    /// to run such apps without one (see `MemoryLimitPolicy`).
    pub apply_memory_limit: bool,
    /// False when the host has no pids controller (`HostReport::pids_limits`).
    pub apply_pids_limit: bool,
}

/// Why no spec could be generated: the app or image asks for something we cannot
/// express safely. Each names the field and the offending value.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("app {app:?}: neither the app nor the image defines a command to run")]
    NoCommand { app: String },
    #[error(
        "app {app:?}: image user {user:?} is not numeric uid[:gid]; set `user` in the app spec"
    )]
    NonNumericUser { app: String, user: String },
    #[error("app {app:?}: image working dir {dir:?} is not an absolute path")]
    BadWorkingDir { app: String, dir: String },
    #[error("app {app:?}: image env entry {entry:?} is not KEY=VALUE")]
    BadImageEnv { app: String, entry: String },
    #[error("app {app:?}: capability {cap:?} is not a known capability")]
    UnknownCapability { app: String, cap: String },
    #[error("app {app:?}: generated spec does not parse as an OCI runtime spec: {source}")]
    Oci {
        app: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("app {app:?}: cannot hash spec inputs: {source}")]
    Hash {
        app: String,
        #[source]
        source: postcard::Error,
    },
}

/// Identity of what a container runs: a hash of the app spec, the image config
/// and the image digest. The agent compares it with the running container's
/// annotation to decide whether the container must be replaced.
pub fn spec_hash(app: &AppSpec, image: &ImageConfig, digest: &Digest) -> Result<String, SpecError> {
    let bytes = postcard::to_stdvec(&(app, image, digest)).map_err(|source| SpecError::Hash {
        app: app.name.clone(),
        source,
    })?;
    Ok(Digest::of(&bytes).hex())
}

fn parse_uid_gid(s: &str) -> Option<(u32, u32)> {
    match s.split_once(':') {
        Some((u, g)) => Some((u.parse().ok()?, g.parse().ok()?)),
        None => {
            let u = s.parse().ok()?;
            Some((u, u))
        }
    }
}

/// The uid and gid the app's process runs as: the app's `user`, else the
/// image's, else root. Secret files are owned by it.
pub fn app_user(app: &AppSpec, image: &ImageConfig) -> Result<(u32, u32), SpecError> {
    match (&app.user, &image.user) {
        // AppSpec::validate already guarantees the numeric form; a spec that
        // skipped validation still cannot smuggle a name through.
        (Some(u), _) | (None, Some(u)) if !u.is_empty() => {
            parse_uid_gid(u).ok_or_else(|| SpecError::NonNumericUser {
                app: app.name.clone(),
                user: u.clone(),
            })
        }
        _ => Ok((0, 0)),
    }
}

/// Command line: an app `command` replaces the image ENTRYPOINT and (as in
/// Docker) also drops the image CMD; app `args` replace CMD.
fn process_args(app: &AppSpec, image: &ImageConfig) -> Vec<String> {
    if !app.command.is_empty() {
        app.command.iter().chain(&app.args).cloned().collect()
    } else {
        let cmd = if app.args.is_empty() {
            &image.cmd
        } else {
            &app.args
        };
        image.entrypoint.iter().chain(cmd).cloned().collect()
    }
}

/// Image env, then a default PATH if the image has none, then the app's
/// variables and then its secrets that are variables, replacing same-named
/// ones.
fn merged_env(
    app: &AppSpec,
    image: &ImageConfig,
    secret_env: &BTreeMap<String, String>,
) -> Result<Vec<String>, SpecError> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: String, order: &mut Vec<String>| {
        if values.insert(k.to_string(), v).is_none() {
            order.push(k.to_string());
        }
    };
    for entry in &image.env {
        let (k, v) = entry
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| SpecError::BadImageEnv {
                app: app.name.clone(),
                entry: entry.clone(),
            })?;
        set(k, v.to_string(), &mut order);
    }
    if !order.iter().any(|k| k == "PATH") {
        let (k, v) = DEFAULT_PATH.split_once('=').unwrap_or(("PATH", ""));
        set(k, v.to_string(), &mut order);
    }
    for (k, v) in app.env.iter().chain(secret_env) {
        set(k, v.clone(), &mut order);
    }
    Ok(order
        .iter()
        .map(|k| format!("{k}={}", values.get(k).map(String::as_str).unwrap_or("")))
        .collect())
}

fn capabilities(app: &AppSpec) -> Result<Vec<String>, SpecError> {
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    for cap in &app.capabilities {
        if !outpost_protocol::manifest::KNOWN_CAPABILITIES.contains(&cap.as_str()) {
            return Err(SpecError::UnknownCapability {
                app: app.name.clone(),
                cap: cap.clone(),
            });
        }
        if !caps.contains(cap) {
            caps.push(cap.clone());
        }
    }
    Ok(caps)
}

/// Standard device nodes every container may use (Docker's list): null, zero,
/// full, random, urandom, tty, console, ptmx, pts, tun; plus `mknod` of anything
/// (creating a node grants no access to it).
fn standard_device_rules() -> Vec<Value> {
    let rule = |typ: &str, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut r = json!({ "allow": true, "type": typ, "access": access });
        if let Some(m) = major {
            r["major"] = json!(m);
        }
        if let Some(m) = minor {
            r["minor"] = json!(m);
        }
        r
    };
    vec![
        json!({ "allow": false, "access": "rwm" }),
        rule("c", None, None, "m"),
        rule("b", None, None, "m"),
        rule("c", Some(1), Some(3), "rwm"),
        rule("c", Some(1), Some(5), "rwm"),
        rule("c", Some(1), Some(7), "rwm"),
        rule("c", Some(1), Some(8), "rwm"),
        rule("c", Some(1), Some(9), "rwm"),
        rule("c", Some(5), Some(0), "rwm"),
        rule("c", Some(5), Some(1), "rwm"),
        rule("c", Some(5), Some(2), "rwm"),
        rule("c", Some(136), None, "rwm"),
        rule("c", Some(10), Some(200), "rwm"),
    ]
}

/// Build the runtime spec for one container.
pub fn generate(inputs: &SpecInputs<'_>) -> Result<Spec, SpecError> {
    let app = inputs.app;
    let image = inputs.image;
    let name = &app.name;

    let args = process_args(app, image);
    if args.is_empty() {
        return Err(SpecError::NoCommand { app: name.clone() });
    }
    let env = merged_env(app, image, inputs.secret_env)?;
    let (uid, gid) = app_user(app, image)?;
    let cwd = match (&app.working_dir, &image.working_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) if d.is_empty() => "/".to_string(),
        (None, Some(d)) if outpost_protocol::manifest::is_safe_abs_path(d) => d.clone(),
        (None, Some(d)) => {
            return Err(SpecError::BadWorkingDir {
                app: name.clone(),
                dir: d.clone(),
            })
        }
        (None, None) => "/".to_string(),
    };
    let caps = capabilities(app)?;

    let mut mounts = vec![
        json!({ "destination": "/proc", "type": "proc", "source": "proc",
                "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
        json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] }),
        json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] }),
        json!({ "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"] }),
        // Writable scratch space even with a read-only rootfs; gone with the container.
        json!({ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777"] }),
    ];
    for v in &app.volumes {
        let source: PathBuf = inputs.volumes_dir.join(&v.name);
        let mut options = vec!["rbind", "rprivate", "nosuid", "nodev"];
        if v.read_only {
            options.push("ro");
        }
        mounts.push(json!({
            "destination": v.container_path, "type": "bind", "source": source, "options": options,
        }));
    }

    if let Some(dir) = inputs.secrets_dir {
        for sec in app.secrets.iter().filter(|s| s.env_var().is_none()) {
            mounts.push(json!({
                "destination": sec.path, "type": "bind", "source": dir.join(&sec.name),
                "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec", "ro"],
            }));
        }
    }

    if let Some(dir) = inputs.lock_dir {
        mounts.push(json!({
            "destination": LOCK_MOUNT, "type": "bind", "source": dir,
            "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec"],
        }));
    }

    let mut namespaces = vec![
        json!({ "type": "pid" }),
        json!({ "type": "ipc" }),
        json!({ "type": "uts" }),
        json!({ "type": "mount" }),
    ];
    if app.network == NetworkMode::Isolated {
        namespaces.push(json!({ "type": "network" }));
    }

    let mut device_rules = standard_device_rules();
    let mut devices = Vec::new();
    for d in inputs.devices {
        devices.push(json!({
            "path": d.container_path, "type": d.kind.oci(), "major": d.major, "minor": d.minor,
            "fileMode": d.file_mode, "uid": d.uid, "gid": d.gid,
        }));
        device_rules.push(json!({
            "allow": true, "type": d.kind.oci(), "major": d.major, "minor": d.minor, "access": d.access,
        }));
    }

    let mut resources = json!({ "devices": device_rules });
    if inputs.apply_pids_limit {
        resources["pids"] = json!({ "limit": DEFAULT_PIDS_LIMIT });
    }
    if let (Some(bytes), true) = (app.resources.memory_bytes, inputs.apply_memory_limit) {
        resources["memory"] = json!({ "limit": bytes });
    }
    if let Some(millis) = app.resources.cpu_millis {
        resources["cpu"] = json!({
            "quota": u64::from(millis) * CPU_PERIOD_US / 1000,
            "period": CPU_PERIOD_US,
        });
    }

    let mut annotations = BTreeMap::new();
    for (k, v) in inputs.labels {
        annotations.insert(format!("{ANNOTATION_LABEL_PREFIX}{k}"), v.clone());
    }
    annotations.insert(ANNOTATION_APP.to_string(), name.clone());
    annotations.insert(
        ANNOTATION_IMAGE_DIGEST.to_string(),
        inputs.image_digest.to_string(),
    );
    annotations.insert(
        ANNOTATION_SPEC_HASH.to_string(),
        spec_hash(app, image, inputs.image_digest)?,
    );

    let spec = json!({
        "ociVersion": "1.0.2",
        "root": { "path": inputs.rootfs, "readonly": app.read_only_rootfs },
        "hostname": name,
        "process": {
            "terminal": false,
            "user": { "uid": uid, "gid": gid },
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
                "inheritable": [], "ambient": [],
            },
            "noNewPrivileges": true,
        },
        "mounts": mounts,
        "annotations": annotations,
        "linux": {
            "cgroupsPath": inputs.cgroups_path,
            "namespaces": namespaces,
            "devices": devices,
            "resources": resources,
            "seccomp": seccomp::default_profile(&app.capabilities),
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    });
    serde_json::from_value(spec).map_err(|source| SpecError::Oci {
        app: name.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxNamespaceType, Mount};
    use outpost_protocol::{DeviceNode, ImageRef, VolumeMount};

    fn app() -> AppSpec {
        let image: ImageRef = format!("localhost:5000/hello@sha256:{}", "ab".repeat(32))
            .parse()
            .unwrap();
        AppSpec::new("web", image)
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/bin/server".into()],
            cmd: vec!["--port".into(), "80".into()],
            env: vec!["PATH=/bin".into(), "MODE=image".into()],
            working_dir: Some("/srv".into()),
            user: Some("1000:1000".into()),
        }
    }

    fn gen_with(app: &AppSpec, image: &ImageConfig, devices: &[ResolvedDevice]) -> Spec {
        let digest = Digest([7; 32]);
        let labels = BTreeMap::from([("generation".to_string(), "3".to_string())]);
        generate(&SpecInputs {
            app,
            image,
            image_digest: &digest,
            rootfs: Path::new("/data/containers/c1/rootfs"),
            volumes_dir: Path::new("/data/volumes/web"),
            lock_dir: Some(Path::new("/data/locks/web")),
            secrets_dir: None,
            secret_env: &BTreeMap::new(),
            devices,
            cgroups_path: "/outpost/c1",
            labels: &labels,
            apply_memory_limit: true,
            apply_pids_limit: true,
        })
        .unwrap()
    }

    fn gen(app: &AppSpec, image: &ImageConfig) -> Spec {
        gen_with(app, image, &[])
    }

    #[test]
    fn process_fields_merge_app_over_image() {
        type Mutate = fn(&mut AppSpec, &mut ImageConfig);
        // (case, mutation, args, cwd, uid/gid, env entries that must be present)
        type Case = (
            &'static str,
            Mutate,
            &'static [&'static str],
            &'static str,
            (u32, u32),
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (
                "image defaults",
                |_, _| {},
                &["/bin/server", "--port", "80"],
                "/srv",
                (1000, 1000),
                &["PATH=/bin", "MODE=image"],
            ),
            (
                "args replace cmd only",
                |a, _| a.args = vec!["--port".into(), "8080".into()],
                &["/bin/server", "--port", "8080"],
                "/srv",
                (1000, 1000),
                &[],
            ),
            (
                "command replaces entrypoint and drops cmd",
                |a, _| a.command = vec!["/bin/sh".into()],
                &["/bin/sh"],
                "/srv",
                (1000, 1000),
                &[],
            ),
            (
                "command plus args",
                |a, _| {
                    a.command = vec!["/bin/sh".into()];
                    a.args = vec!["-c".into(), "true".into()];
                },
                &["/bin/sh", "-c", "true"],
                "/srv",
                (1000, 1000),
                &[],
            ),
            (
                "app user, workdir and env win",
                |a, _| {
                    a.user = Some("5".into());
                    a.working_dir = Some("/app".into());
                    a.env.insert("MODE".into(), "app".into());
                    a.env.insert("EXTRA".into(), "1".into());
                },
                &["/bin/server", "--port", "80"],
                "/app",
                (5, 5),
                &["MODE=app", "EXTRA=1", "PATH=/bin"],
            ),
            (
                "no image user or workdir means root in /",
                |_, i| {
                    i.user = None;
                    i.working_dir = None;
                    i.env.clear();
                },
                &["/bin/server", "--port", "80"],
                "/",
                (0, 0),
                &[DEFAULT_PATH],
            ),
        ];
        for (case, mutate, args, cwd, (uid, gid), env) in cases {
            let (mut a, mut i) = (app(), image());
            mutate(&mut a, &mut i);
            let spec = gen(&a, &i);
            let p = spec.process().as_ref().unwrap();
            assert_eq!(p.args().as_ref().unwrap(), args, "{case}");
            assert_eq!(p.cwd(), Path::new(cwd), "{case}");
            assert_eq!((p.user().uid(), p.user().gid()), (*uid, *gid), "{case}");
            let got = p.env().as_ref().unwrap();
            for e in *env {
                assert!(
                    got.contains(&e.to_string()),
                    "{case}: {e} missing in {got:?}"
                );
            }
            let keys: Vec<_> = got.iter().map(|e| e.split('=').next().unwrap()).collect();
            let mut dedup = keys.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(
                keys.len(),
                dedup.len(),
                "{case}: duplicate env keys {keys:?}"
            );
            assert_eq!(p.no_new_privileges(), Some(true), "{case}");
            assert_eq!(spec.hostname().as_deref(), Some("web"), "{case}");
        }
    }

    #[test]
    fn bad_image_values_are_named() {
        type Mutate = fn(&mut AppSpec, &mut ImageConfig);
        let cases: &[(Mutate, &str)] = &[
            (
                |_, i| {
                    i.entrypoint.clear();
                    i.cmd.clear();
                },
                "command",
            ),
            (|_, i| i.user = Some("nginx".into()), "nginx"),
            (|_, i| i.working_dir = Some("srv".into()), "srv"),
            (|_, i| i.env.push("NOEQUALS".into()), "NOEQUALS"),
            (|a, _| a.capabilities.push("CAP_BOGUS".into()), "CAP_BOGUS"),
        ];
        for (mutate, needle) in cases {
            let (mut a, mut i) = (app(), image());
            mutate(&mut a, &mut i);
            let digest = Digest([0; 32]);
            let err = generate(&SpecInputs {
                app: &a,
                image: &i,
                image_digest: &digest,
                rootfs: Path::new("/r"),
                volumes_dir: Path::new("/v"),
                lock_dir: None,
                secrets_dir: None,
                secret_env: &BTreeMap::new(),
                devices: &[],
                cgroups_path: "/outpost/x",
                labels: &BTreeMap::new(),
                apply_memory_limit: true,
                apply_pids_limit: true,
            })
            .unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(needle) && msg.contains("web"), "{msg}");
        }
    }

    #[test]
    fn capabilities_are_docker_default_plus_extras_and_never_ambient() {
        let cases: &[(&[&str], usize, &str)] = &[
            (&[], DEFAULT_CAPABILITIES.len(), "CAP_KILL"),
            (
                &["CAP_NET_ADMIN"],
                DEFAULT_CAPABILITIES.len() + 1,
                "CAP_NET_ADMIN",
            ),
            (&["CAP_KILL"], DEFAULT_CAPABILITIES.len(), "CAP_KILL"),
        ];
        for (extra, count, present) in cases {
            let mut a = app();
            a.capabilities = extra.iter().map(|s| s.to_string()).collect();
            let spec = gen(&a, &image());
            let caps = spec
                .process()
                .as_ref()
                .unwrap()
                .capabilities()
                .as_ref()
                .unwrap();
            let bounding = caps.bounding().as_ref().unwrap();
            assert_eq!(bounding.len(), *count, "{extra:?}");
            // oci-spec prints capabilities without the `CAP_` prefix.
            let has = |name: &str| bounding.iter().any(|c| format!("CAP_{c}") == name);
            assert!(has(present), "{present} in {bounding:?}");
            assert!(!has("CAP_SYS_ADMIN"));
            assert!(caps.ambient().as_ref().unwrap().is_empty());
            assert!(caps.inheritable().as_ref().unwrap().is_empty());
        }
    }

    fn mount<'a>(spec: &'a Spec, dest: &str) -> Option<&'a Mount> {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new(dest))
    }

    #[test]
    fn mounts_volumes_tmp_and_readonly_root() {
        let mut a = app();
        a.read_only_rootfs = true;
        a.volumes = vec![
            VolumeMount {
                name: "data".into(),
                container_path: "/var/lib/data".into(),
                read_only: false,
            },
            VolumeMount {
                name: "conf".into(),
                container_path: "/etc/app".into(),
                read_only: true,
            },
        ];
        let spec = gen(&a, &image());
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let data = mount(&spec, "/var/lib/data").unwrap();
        assert_eq!(
            data.source().as_deref(),
            Some(Path::new("/data/volumes/web/data"))
        );
        assert!(!data.options().as_ref().unwrap().contains(&"ro".to_string()));
        let conf = mount(&spec, "/etc/app").unwrap();
        assert!(conf.options().as_ref().unwrap().contains(&"ro".to_string()));
        assert_eq!(
            mount(&spec, "/tmp").unwrap().typ().as_deref(),
            Some("tmpfs")
        );
        assert!(mount(&spec, "/proc").is_some());
        // The update-lock directory: the app's own, writable (it flocks there).
        let lock = mount(&spec, LOCK_MOUNT).unwrap();
        assert_eq!(lock.source().as_deref(), Some(Path::new("/data/locks/web")));
        assert!(!lock.options().as_ref().unwrap().contains(&"ro".to_string()));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".into()));
        assert!(linux
            .readonly_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/sys".into()));
        assert!(linux.seccomp().is_some());
    }

    #[test]
    fn network_namespace_only_when_isolated() {
        for (mode, want_netns) in [(NetworkMode::Host, false), (NetworkMode::Isolated, true)] {
            let mut a = app();
            a.network = mode;
            let spec = gen(&a, &image());
            let ns = spec
                .linux()
                .as_ref()
                .unwrap()
                .namespaces()
                .as_ref()
                .unwrap();
            let has = |t| ns.iter().any(|n| n.typ() == t);
            assert_eq!(has(LinuxNamespaceType::Network), want_netns, "{mode:?}");
            assert!(has(LinuxNamespaceType::Pid) && has(LinuxNamespaceType::Mount));
            assert!(
                has(LinuxNamespaceType::Uts),
                "hostname needs a UTS namespace"
            );
        }
    }

    #[test]
    fn devices_get_a_node_and_a_cgroup_rule_after_default_deny() {
        let mut a = app();
        a.devices = vec![DeviceNode {
            host_path: "/dev/ttyUSB0".into(),
            container_path: "/dev/ttyUSB0".into(),
            permissions: "rw".into(),
        }];
        let dev = ResolvedDevice {
            container_path: "/dev/ttyUSB0".into(),
            kind: DeviceKind::Char,
            major: 188,
            minor: 0,
            file_mode: 0o660,
            uid: 0,
            gid: 20,
            access: "rw".into(),
        };
        let spec = gen_with(&a, &image(), &[dev]);
        let linux = spec.linux().as_ref().unwrap();
        let nodes = linux.devices().as_ref().unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!((nodes[0].major(), nodes[0].minor()), (188, 0));
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert!(
            !rules[0].allow() && rules[0].major().is_none(),
            "first rule denies all"
        );
        let allowed: Vec<String> = rules
            .iter()
            .filter(|r| r.allow())
            .map(|r| r.to_string())
            .collect();
        for want in ["c 1:3 rwm", "c 136:* rwm", "c 188:0 rw"] {
            assert!(allowed.contains(&want.to_string()), "{want} in {allowed:?}");
        }
        // Without declared devices, nothing but the standard set is allowed.
        let plain = gen(&app(), &image());
        let rules = plain
            .linux()
            .as_ref()
            .unwrap()
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert!(!rules.iter().any(|r| r.major() == Some(188)));
    }

    #[test]
    fn resources_and_annotations() {
        let mut a = app();
        a.resources.memory_bytes = Some(64 << 20);
        a.resources.cpu_millis = Some(500);
        let spec = gen(&a, &image());
        let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert_eq!(res.memory().unwrap().limit(), Some(64 << 20));
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(50_000), Some(100_000)));
        let ann = spec.annotations().as_ref().unwrap();
        assert_eq!(ann.get(ANNOTATION_APP).unwrap(), "web");
        assert_eq!(ann.get("org.outpost.label.generation").unwrap(), "3");
        assert_eq!(
            ann.get(ANNOTATION_SPEC_HASH).unwrap(),
            &spec_hash(&a, &image(), &Digest([7; 32])).unwrap()
        );
        // A different app spec hashes differently.
        assert_ne!(
            spec_hash(&a, &image(), &Digest([7; 32])).unwrap(),
            spec_hash(&app(), &image(), &Digest([7; 32])).unwrap()
        );
    }

    #[test]
    fn every_container_gets_the_default_pids_limit() {
        for a in [app(), {
            let mut a = app();
            a.resources.memory_bytes = Some(64 << 20);
            a
        }] {
            let spec = gen(&a, &image());
            let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
            assert_eq!(res.pids().as_ref().unwrap().limit(), DEFAULT_PIDS_LIMIT);
        }
        // Not on a host without the pids controller (the container still runs).
        let a = app();
        let spec = generate(&SpecInputs {
            app: &a,
            image: &image(),
            image_digest: &Digest([7; 32]),
            rootfs: Path::new("/rootfs"),
            volumes_dir: Path::new("/data/volumes/web"),
            lock_dir: None,
            secrets_dir: None,
            secret_env: &BTreeMap::new(),
            devices: &[],
            cgroups_path: "/outpost/web",
            labels: &BTreeMap::new(),
            apply_memory_limit: true,
            apply_pids_limit: false,
        })
        .unwrap();
        let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert!(res.pids().is_none());
    }

    #[test]
    fn a_secret_variable_is_in_the_env_and_not_mounted() {
        let mut a = app();
        a.env.insert("MODE".into(), "app".into());
        let mount = |name: &str, path: &str| outpost_protocol::SecretMount {
            name: name.into(),
            path: path.into(),
            version: 1,
            sealed: Default::default(),
        };
        a.secrets = vec![
            mount("db", "env:DB_PASSWORD"),
            mount("tls", "/run/secrets/tls"),
        ];
        // The image defines the variable too: the secret replaces it, once.
        let mut img = image();
        img.env.push("DB_PASSWORD=from-image".into());
        let secret_env = BTreeMap::from([("DB_PASSWORD".to_string(), "s3cret".to_string())]);
        let spec = generate(&SpecInputs {
            app: &a,
            image: &img,
            image_digest: &Digest([7; 32]),
            rootfs: Path::new("/rootfs"),
            volumes_dir: Path::new("/data/volumes/web"),
            lock_dir: None,
            secrets_dir: Some(Path::new("/run/outpost-secrets/c1")),
            secret_env: &secret_env,
            devices: &[],
            cgroups_path: "/outpost/web",
            labels: &BTreeMap::new(),
            apply_memory_limit: true,
            apply_pids_limit: true,
        })
        .unwrap();
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        let db: Vec<&String> = env
            .iter()
            .filter(|e| e.starts_with("DB_PASSWORD="))
            .collect();
        assert_eq!(db, vec!["DB_PASSWORD=s3cret"]);
        assert!(env.contains(&"MODE=app".to_string()));
        let dests: Vec<String> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert!(dests.contains(&"/run/secrets/tls".to_string()), "{dests:?}");
        assert!(
            !dests.iter().any(|d| d.contains("DB_PASSWORD")),
            "{dests:?}"
        );
    }
}
