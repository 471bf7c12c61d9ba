//! The admission policy: which privileges a deployment may ask for, per scope.
//!
//! The hub refuses, before it resolves or stores anything, a deployment whose
//! apps ask for a dangerous capability or host device node that no rule
//! grants, use host networking or a writable root filesystem where a rule
//! forbids them, or run as root where a rule requires a non-root user.
//!
//! - A built-in default deny list ([`DENIED_CAPABILITIES`], [`DENIED_DEVICES`])
//!   applies to every deployment.
//! - `[[admission]]` rules in `hub.toml` ([`AdmissionRule`]) each govern a
//!   [`Scope`]; a deployment falls under a rule when its selector is at least as
//!   narrow as the rule's scope ([`crate::scope::covers`]). Grants of all the
//!   rules it falls under add up, and so do their restrictions.
//!
//! [`admit`] is the whole decision, a pure function of (deployment, policy);
//! `Hub::apply` calls it and audits a refusal. docs/security.md explains the
//! choices (why these lists, why host networking is allowed by default).

use crate::deploy::{DeploymentSpec, NetworkDef};
use crate::scope::Scope;
use outpost_protocol::manifest::KNOWN_CAPABILITIES;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Capabilities refused unless a rule grants them, each with why: every one
/// either breaks the container's isolation from the host or, because apps
/// default to the host's network, reaches the host itself.
pub const DENIED_CAPABILITIES: &[(&str, &str)] = &[
    (
        "CAP_SYS_ADMIN",
        "mount, namespaces, bpf, keyctl: the classic container escape",
    ),
    ("CAP_SYS_MODULE", "loads code into the host kernel"),
    (
        "CAP_SYS_RAWIO",
        "raw I/O ports and memory (iopl, ioperm, /dev/mem)",
    ),
    (
        "CAP_SYS_PTRACE",
        "traces and injects code into other processes",
    ),
    ("CAP_SYS_BOOT", "reboots the host, loads a new kernel (kexec)"),
    ("CAP_BPF", "loads BPF programs into the host kernel"),
    (
        "CAP_PERFMON",
        "perf events: kernel memory layout and side channels",
    ),
    (
        "CAP_DAC_READ_SEARCH",
        "open_by_handle_at reads any host file (the 'shocker' escape)",
    ),
    (
        "CAP_NET_ADMIN",
        "with host networking (the default) rewrites the host's firewall, routes and interfaces, and can cut the device off",
    ),
    (
        "CAP_SYSLOG",
        "reads the kernel log and kernel addresses, clears the log",
    ),
    ("CAP_MAC_ADMIN", "changes the host's LSM (AppArmor, SELinux) policy"),
    ("CAP_MAC_OVERRIDE", "bypasses the host's LSM policy"),
    ("CAP_AUDIT_CONTROL", "turns off or rewrites the host's audit rules"),
];

/// Host device nodes refused unless a rule grants them, as patterns: an exact
/// path, or a prefix ending in `*`. Serial ports, I²C, SPI, GPIO and the like
/// stay allowed: they are what edge apps are for.
pub const DENIED_DEVICES: &[(&str, &str)] = &[
    ("/dev/mem", "all of physical memory, the kernel included"),
    ("/dev/kmem", "kernel virtual memory"),
    ("/dev/port", "raw I/O ports"),
    ("/dev/kmsg", "reads and forges kernel log messages"),
    (
        "/dev/cpu/*",
        "model-specific registers (msr) of the host CPU",
    ),
    ("/dev/sd*", "raw disk: rewrites the host's filesystems"),
    ("/dev/hd*", "raw disk"),
    ("/dev/vd*", "raw disk"),
    ("/dev/xvd*", "raw disk"),
    ("/dev/nvme*", "raw disk"),
    (
        "/dev/mmcblk*",
        "raw SD card / eMMC: the root filesystem of most edge devices",
    ),
    ("/dev/mtd*", "raw flash (boot loader, firmware)"),
    ("/dev/ubi*", "raw flash volumes"),
    ("/dev/loop*", "loop devices: mount arbitrary images"),
    ("/dev/nbd*", "network block devices"),
    ("/dev/ram*", "RAM disks"),
    ("/dev/dm-*", "device-mapper volumes"),
    ("/dev/md*", "software RAID volumes"),
    ("/dev/mapper/*", "device-mapper volumes"),
    ("/dev/sg*", "SCSI generic: raw commands to disks"),
    ("/dev/bsg/*", "SCSI generic: raw commands to disks"),
    ("/dev/disk/*", "links to raw disks"),
    ("/dev/block/*", "links to raw disks"),
    ("/dev/root", "link to the root filesystem's disk"),
];

/// One `[[admission]]` table of `hub.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionRule {
    /// Which deployments this rule governs: those whose selector is at least
    /// as narrow (`"site=plant-a"`; `""` is the whole fleet).
    pub scope: Scope,
    /// Capabilities of the default deny list granted in this scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_capabilities: Vec<String>,
    /// Device patterns granted in this scope (exact path, or prefix ending in `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_devices: Vec<String>,
    /// Refuse `network = "host"` in this scope.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deny_host_network: bool,
    /// Refuse apps without `read_only_rootfs = true` in this scope.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_read_only_rootfs: bool,
    /// Refuse apps without a non-root numeric `user` in this scope.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_as_non_root: bool,
}

/// Every `[[admission]]` rule, in the order `hub.toml` lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionPolicy {
    pub rules: Vec<AdmissionRule>,
}

/// Why an `[[admission]]` table is unusable (reported when `hub.toml` loads).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[[admission]] #{index} (scope {scope:?}): {field}: {problem}")]
pub struct PolicyError {
    /// 1-based, as an operator counts tables in the file.
    pub index: usize,
    pub scope: String,
    pub field: &'static str,
    pub problem: String,
}

/// One thing a deployment asked for that the policy does not admit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub deployment: String,
    /// Field path in the deployment (`apps[0].capabilities`).
    pub field: String,
    /// What is wrong (`CAP_SYS_ADMIN is not allowed by the admission policy`).
    pub problem: String,
    /// Which rule refused it, and how to change that.
    pub rule: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deployment {:?}: {}: {} (rule: {})",
            self.deployment, self.field, self.problem, self.rule
        )
    }
}

/// Every refusal of one apply, as `Hub::apply` reports it (HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refused(pub Vec<Refusal>);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Does device pattern `pattern` (exact, or prefix ending in `*`) match `path`?
pub fn device_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// `path` with empty segments dropped (`/dev//mem/` is `/dev/mem`), so a
/// spelling the kernel accepts cannot slip past a pattern. `.` and `..` are
/// already refused by the deployment's own checks.
fn normalize_device_path(path: &str) -> String {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    format!("/{}", segs.join("/"))
}

/// Is `user` (`uid[:gid]`, or a name) root? Uid 0 with any group is root.
fn is_root_user(user: &str) -> bool {
    let uid = user.split_once(':').map_or(user, |(u, _)| u).trim();
    uid == "root" || (!uid.is_empty() && uid.bytes().all(|b| b == b'0'))
}

/// A uid the hub can check: digits only (names are resolved inside the image,
/// where `nobody` could be uid 0).
fn is_numeric_uid(user: &str) -> bool {
    let uid = user.split_once(':').map_or(user, |(u, _)| u);
    !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit())
}

impl AdmissionRule {
    /// How refusals and errors name this rule: `[[admission]] #2 (scope "site=a")`.
    fn describe(&self, index: usize) -> String {
        format!(
            "[[admission]] #{} (scope {:?})",
            index + 1,
            self.scope.to_string()
        )
    }

    /// Check the rule's own fields; `index` is 0-based.
    pub fn check(&self, index: usize) -> Result<(), PolicyError> {
        let bad = |field: &'static str, problem: String| PolicyError {
            index: index + 1,
            scope: self.scope.to_string(),
            field,
            problem,
        };
        for cap in &self.allow_capabilities {
            if !KNOWN_CAPABILITIES.contains(&cap.as_str()) {
                return Err(bad(
                    "allow_capabilities",
                    format!("{cap:?} is not a known capability (write it as CAP_SYS_ADMIN)"),
                ));
            }
        }
        for pattern in &self.allow_devices {
            let star = pattern.find('*');
            if !pattern.starts_with("/dev/")
                || star.is_some_and(|i| i + 1 != pattern.len())
                || !outpost_protocol::manifest::is_safe_abs_path(pattern)
            {
                return Err(bad(
                    "allow_devices",
                    format!(
                        "{pattern:?} must be a path under /dev/, optionally ending in '*' (a prefix)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl AdmissionPolicy {
    /// A policy of `rules`, each checked.
    pub fn new(rules: Vec<AdmissionRule>) -> Result<AdmissionPolicy, PolicyError> {
        for (i, r) in rules.iter().enumerate() {
            r.check(i)?;
        }
        Ok(AdmissionPolicy { rules })
    }
}

/// Admit `spec` under `policy`, or say every reason it is refused (all of
/// them, so an operator fixes the file once). Pure: no I/O, no clock.
pub fn admit(spec: &DeploymentSpec, policy: &AdmissionPolicy) -> Result<(), Vec<Refusal>> {
    let rules: Vec<(usize, &AdmissionRule)> = policy
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.scope.covers(&spec.selector))
        .collect();
    // A rule whose scope is exactly this selector covers this deployment;
    // refusals suggest it.
    let own_scope = Scope(spec.selector.clone()).to_string();
    let mut refusals = Vec::new();
    let mut refuse = |field: String, problem: String, rule: String| {
        refusals.push(Refusal {
            deployment: spec.name.clone(),
            field,
            problem,
            rule,
        })
    };
    for (i, app) in spec.apps.iter().enumerate() {
        for cap in &app.capabilities {
            let denied = DENIED_CAPABILITIES.iter().any(|(c, _)| c == cap);
            let granted = rules
                .iter()
                .any(|(_, r)| r.allow_capabilities.iter().any(|c| c == cap));
            if denied && !granted {
                refuse(
                    format!("apps[{i}].capabilities"),
                    format!("{cap} is not allowed by the admission policy"),
                    format!(
                        "default deny list; grant it with [[admission]] scope {own_scope:?} allow_capabilities"
                    ),
                );
            }
        }
        for (d, dev) in app.devices.iter().enumerate() {
            let path = normalize_device_path(&dev.host_path);
            let denied = DENIED_DEVICES
                .iter()
                .find(|(p, _)| device_matches(p, &path));
            let granted = rules
                .iter()
                .any(|(_, r)| r.allow_devices.iter().any(|p| device_matches(p, &path)));
            if let (Some((pattern, _)), false) = (denied, granted) {
                refuse(
                    format!("apps[{i}].devices[{d}].host_path"),
                    format!("{path} is not allowed by the admission policy"),
                    format!(
                        "default deny list ({pattern}); grant it with [[admission]] scope {own_scope:?} allow_devices"
                    ),
                );
            }
        }
        for (r, rule) in &rules {
            if rule.deny_host_network && app.network == NetworkDef::Host {
                refuse(
                    format!("apps[{i}].network"),
                    "host networking is not allowed in this scope; use network = \"isolated\""
                        .into(),
                    format!("{} deny_host_network", rule.describe(*r)),
                );
            }
            if rule.require_read_only_rootfs && !app.read_only_rootfs {
                refuse(
                    format!("apps[{i}].read_only_rootfs"),
                    "a writable root filesystem is not allowed in this scope; set read_only_rootfs = true"
                        .into(),
                    format!("{} require_read_only_rootfs", rule.describe(*r)),
                );
            }
            if rule.run_as_non_root {
                let problem = match app.user.as_deref() {
                    None => Some(
                        "no user is set, so the app could run as root; set a non-root numeric user such as \"1000:1000\""
                            .to_string(),
                    ),
                    Some(u) if is_root_user(u) => {
                        Some(format!("{u:?} is root; set a non-root numeric user such as \"1000:1000\""))
                    }
                    Some(u) if !is_numeric_uid(u) => Some(format!(
                        "{u:?} is not a numeric uid, so the hub cannot tell that it is not root"
                    )),
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    refuse(
                        format!("apps[{i}].user"),
                        problem,
                        format!("{} run_as_non_root", rule.describe(*r)),
                    );
                }
            }
        }
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(selector: &str, app: &str) -> DeploymentSpec {
        DeploymentSpec::from_toml(&format!(
            "name = \"web\"\nselector = {{ {selector} }}\n[[apps]]\nname = \"a\"\nimage = \"r/a:1\"\n{app}\n"
        ))
        .unwrap()
    }

    fn rule(scope: &str, extra: &str) -> AdmissionRule {
        toml::from_str(&format!("scope = {scope:?}\n{extra}")).unwrap()
    }

    fn policy(rules: Vec<AdmissionRule>) -> AdmissionPolicy {
        AdmissionPolicy::new(rules).unwrap()
    }

    const PLANT_A: &str = "site = \"plant-a\"";
    const PLANT_A_GW: &str = "site = \"plant-a\", role = \"gw\"";
    const PLANT_B: &str = "site = \"plant-b\"";

    #[test]
    fn each_dangerous_capability_is_refused_by_default_granted_in_scope_not_outside() {
        let grant = |cap: &str| {
            policy(vec![rule(
                "site=plant-a",
                &format!("allow_capabilities = [{cap:?}]"),
            )])
        };
        for (cap, why) in DENIED_CAPABILITIES {
            assert!(!why.is_empty());
            let app = format!("capabilities = [{cap:?}]");
            let refused =
                admit(&deployment(PLANT_A, &app), &AdmissionPolicy::default()).unwrap_err();
            assert_eq!(refused.len(), 1, "{cap}");
            assert_eq!(refused[0].field, "apps[0].capabilities", "{cap}");
            assert_eq!(
                refused[0].to_string(),
                format!(
                    "deployment \"web\": apps[0].capabilities: {cap} is not allowed by the admission policy \
                     (rule: default deny list; grant it with [[admission]] scope \"site=plant-a\" allow_capabilities)"
                )
            );
            // Granted in its scope, and in a narrower selector inside it.
            assert_eq!(
                admit(&deployment(PLANT_A, &app), &grant(cap)),
                Ok(()),
                "{cap}"
            );
            assert_eq!(
                admit(&deployment(PLANT_A_GW, &app), &grant(cap)),
                Ok(()),
                "{cap}"
            );
            // Not outside it.
            assert!(
                admit(&deployment(PLANT_B, &app), &grant(cap)).is_err(),
                "{cap}"
            );
            // A grant of another capability does not grant this one.
            let other = if *cap == "CAP_BPF" {
                "CAP_PERFMON"
            } else {
                "CAP_BPF"
            };
            assert!(
                admit(&deployment(PLANT_A, &app), &grant(other)).is_err(),
                "{cap}"
            );
        }
    }

    #[test]
    fn harmless_capabilities_and_devices_need_no_grant() {
        let app = "capabilities = [\"CAP_NET_BIND_SERVICE\", \"CAP_SYS_TIME\", \"CAP_NET_RAW\"]\n\
                   devices = [{ host_path = \"/dev/ttyUSB0\" }, { host_path = \"/dev/i2c-1\" }, { host_path = \"/dev/gpiomem\" }]";
        assert_eq!(
            admit(&deployment(PLANT_A, app), &AdmissionPolicy::default()),
            Ok(())
        );
        // The shipped example deployment passes the default policy.
        let example =
            DeploymentSpec::from_toml(include_str!("../../examples/deployment.toml")).unwrap();
        assert_eq!(admit(&example, &AdmissionPolicy::default()), Ok(()));
    }

    #[test]
    fn each_dangerous_device_is_refused_by_default_granted_in_scope_not_outside() {
        // One concrete node per pattern of the deny list.
        let concrete = |pattern: &str| match pattern.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('/') => format!("{prefix}x0"),
            Some(prefix) => format!("{prefix}0"),
            None => pattern.to_string(),
        };
        for (pattern, why) in DENIED_DEVICES {
            assert!(!why.is_empty());
            let path = concrete(pattern);
            let app = format!("devices = [{{ host_path = {path:?} }}]");
            let refused =
                admit(&deployment(PLANT_A, &app), &AdmissionPolicy::default()).unwrap_err();
            assert_eq!(refused.len(), 1, "{path}");
            assert_eq!(refused[0].field, "apps[0].devices[0].host_path", "{path}");
            assert!(
                refused[0].problem.contains(&path) && refused[0].rule.contains(pattern),
                "{}",
                refused[0]
            );
            assert!(
                refused[0]
                    .rule
                    .contains("scope \"site=plant-a\" allow_devices"),
                "{}",
                refused[0]
            );
            let exact = policy(vec![rule(
                "site=plant-a",
                &format!("allow_devices = [{path:?}]"),
            )]);
            assert_eq!(admit(&deployment(PLANT_A, &app), &exact), Ok(()), "{path}");
            assert_eq!(
                admit(&deployment(PLANT_A_GW, &app), &exact),
                Ok(()),
                "{path}"
            );
            assert!(admit(&deployment(PLANT_B, &app), &exact).is_err(), "{path}");
        }
    }

    #[test]
    fn device_paths_are_matched_after_normalising_and_grants_take_prefixes() {
        for path in ["/dev//mem", "/dev/mem/", "//dev/mem"] {
            let app = format!("devices = [{{ host_path = {path:?} }}]");
            let d = deployment(PLANT_A, &app);
            let refused = admit(&d, &AdmissionPolicy::default()).unwrap_err();
            assert!(
                refused[0].problem.starts_with("/dev/mem "),
                "{}",
                refused[0]
            );
        }
        let app = "devices = [{ host_path = \"/dev/sda1\" }, { host_path = \"/dev/mmcblk0p2\" }]";
        let sd = policy(vec![rule("site=plant-a", "allow_devices = [\"/dev/sd*\"]")]);
        let refused = admit(&deployment(PLANT_A, app), &sd).unwrap_err();
        assert_eq!(
            refused.iter().map(|r| r.field.as_str()).collect::<Vec<_>>(),
            ["apps[0].devices[1].host_path"]
        );
    }

    #[test]
    fn grants_of_every_matching_rule_add_up_and_the_whole_fleet_scope_covers_all() {
        let app = "capabilities = [\"CAP_SYS_ADMIN\", \"CAP_NET_ADMIN\"]\ndevices = [{ host_path = \"/dev/mem\" }]";
        let p = policy(vec![
            rule("site=plant-a", "allow_capabilities = [\"CAP_SYS_ADMIN\"]"),
            rule("site=plant-a,role=gw", "allow_devices = [\"/dev/mem\"]"),
            rule("", "allow_capabilities = [\"CAP_NET_ADMIN\"]"),
        ]);
        assert_eq!(admit(&deployment(PLANT_A_GW, app), &p), Ok(()));
        // Only the first and the fleet-wide rule cover plain plant-a.
        let refused = admit(&deployment(PLANT_A, app), &p).unwrap_err();
        assert_eq!(
            refused.iter().map(|r| r.field.as_str()).collect::<Vec<_>>(),
            ["apps[0].devices[0].host_path"]
        );
        // plant-b has only the fleet-wide grant.
        let refused = admit(&deployment(PLANT_B, app), &p).unwrap_err();
        assert_eq!(refused.len(), 2);
    }

    #[test]
    fn host_network_and_writable_rootfs_are_allowed_by_default_and_refused_where_a_rule_says() {
        let p = policy(vec![rule(
            "site=plant-a",
            "deny_host_network = true\nrequire_read_only_rootfs = true",
        )]);
        // The deployment format's defaults: host network, writable rootfs.
        assert_eq!(
            admit(&deployment(PLANT_A, ""), &AdmissionPolicy::default()),
            Ok(())
        );
        assert_eq!(admit(&deployment(PLANT_B, ""), &p), Ok(()));
        let refused = admit(&deployment(PLANT_A_GW, ""), &p).unwrap_err();
        assert_eq!(
            refused.iter().map(|r| r.field.as_str()).collect::<Vec<_>>(),
            ["apps[0].network", "apps[0].read_only_rootfs"]
        );
        assert!(refused[0]
            .rule
            .contains("[[admission]] #1 (scope \"site=plant-a\") deny_host_network"));
        assert!(refused[1].rule.contains("require_read_only_rootfs"));
        let compliant = deployment(PLANT_A, "network = \"isolated\"\nread_only_rootfs = true");
        assert_eq!(admit(&compliant, &p), Ok(()));
    }

    #[test]
    fn run_as_non_root_refuses_no_user_root_and_names_and_admits_other_uids() {
        let p = policy(vec![
            rule("site=plant-b", "allow_capabilities = [\"CAP_BPF\"]"),
            rule("site=plant-a", "run_as_non_root = true"),
        ]);
        let cases = [
            ("", Some("no user is set")),
            ("user = \"0\"", Some("is root")),
            ("user = \"0:0\"", Some("is root")),
            ("user = \"0:1000\"", Some("is root")),
            ("user = \"1000\"", None),
            ("user = \"1000:0\"", None),
            ("user = \"65534:65534\"", None),
        ];
        for (user, want) in cases {
            let got = admit(&deployment(PLANT_A, user), &p);
            match want {
                None => assert_eq!(got, Ok(()), "{user}"),
                Some(problem) => {
                    let refused = got.unwrap_err();
                    assert_eq!(refused.len(), 1, "{user}");
                    assert_eq!(refused[0].field, "apps[0].user", "{user}");
                    assert!(refused[0].problem.contains(problem), "{}", refused[0]);
                    assert!(
                        refused[0]
                            .rule
                            .contains("[[admission]] #2 (scope \"site=plant-a\") run_as_non_root"),
                        "{}",
                        refused[0]
                    );
                }
            }
            // Out of scope nothing is required.
            assert_eq!(admit(&deployment(PLANT_B, user), &p), Ok(()), "{user}");
        }
        // Users the deployment checks would refuse anyway are judged safely too.
        assert!(is_root_user("root") && is_root_user("root:root") && is_root_user("00"));
        assert!(!is_numeric_uid("nobody") && is_numeric_uid("1000:1000"));
    }

    #[test]
    fn every_refusal_of_a_deployment_is_reported_at_once() {
        let p = policy(vec![rule("site=plant-a", "run_as_non_root = true")]);
        let d = DeploymentSpec::from_toml(
            "name = \"web\"\nselector = { site = \"plant-a\" }\n\
             [[apps]]\nname = \"a\"\nimage = \"r/a:1\"\nuser = \"1000\"\ncapabilities = [\"CAP_SYS_ADMIN\"]\n\
             [[apps]]\nname = \"b\"\nimage = \"r/b:1\"\ndevices = [{ host_path = \"/dev/kmem\" }]\n",
        )
        .unwrap();
        let refused = admit(&d, &p).unwrap_err();
        assert_eq!(
            refused.iter().map(|r| r.field.as_str()).collect::<Vec<_>>(),
            [
                "apps[0].capabilities",
                "apps[1].devices[0].host_path",
                "apps[1].user"
            ]
        );
    }

    #[test]
    fn bad_rules_are_refused_with_their_number_and_field() {
        let cases = [
            ("allow_capabilities = [\"SYS_ADMIN\"]", "allow_capabilities"),
            ("allow_devices = [\"/etc/passwd\"]", "allow_devices"),
            ("allow_devices = [\"/dev/*/x\"]", "allow_devices"),
            ("allow_devices = [\"/dev/../etc\"]", "allow_devices"),
        ];
        for (extra, field) in cases {
            let e = AdmissionPolicy::new(vec![rule("", ""), rule("site=a", extra)]).unwrap_err();
            assert_eq!((e.index, e.field), (2, field), "{e}");
        }
        assert!(toml::from_str::<AdmissionRule>("scope = \"a=b\"\nallow_caps = []").is_err());
        assert!(toml::from_str::<AdmissionRule>("allow_devices = []").is_err());
    }
}
