//! The default seccomp profile every app runs under (pure data, no I/O).
//!
//! Modelled on Docker's default profile, but written as a deny list over a default
//! `SCMP_ACT_ALLOW`: the syscalls Docker withholds from an unprivileged container
//! (kernel modules, kexec, mount, ptrace, keyrings, namespaces, clock setting, …)
//! fail with `EPERM`. Like Docker, a syscall group is given back when the app is
//! granted the capability that guards it (`CAP_SYS_TIME` re-enables
//! `settimeofday`, `CAP_SYS_PTRACE` re-enables `ptrace`, …), because the
//! capability is then the intended control. `clone3` returns `ENOSYS` so libc falls
//! back to `clone`, whose namespace flags are filtered argument by argument.

use serde_json::{json, Value};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Syscall groups denied by default, and the capability that re-enables each.
/// `None` means no capability gives the group back.
const DENIED: &[(Option<&str>, &[&str])] = &[
    (
        Some("CAP_SYS_MODULE"),
        &[
            "init_module",
            "finit_module",
            "delete_module",
            "create_module",
            "query_module",
            "get_kernel_syms",
        ],
    ),
    (
        Some("CAP_SYS_BOOT"),
        &["reboot", "kexec_load", "kexec_file_load"],
    ),
    (
        Some("CAP_SYS_ADMIN"),
        &[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "unshare",
            "setns",
            "swapon",
            "swapoff",
            "quotactl",
            "quotactl_fd",
            "lookup_dcookie",
            "name_to_handle_at",
            "open_by_handle_at",
            "nfsservctl",
            "bpf",
            "perf_event_open",
            "fanotify_init",
            "sethostname",
            "setdomainname",
            "vhangup",
            "iopl",
            "ioperm",
        ],
    ),
    (
        Some("CAP_SYS_PTRACE"),
        &[
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kcmp",
            "pidfd_getfd",
        ],
    ),
    (
        Some("CAP_SYS_TIME"),
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_adjtime",
            "adjtimex",
        ],
    ),
    (Some("CAP_SYSLOG"), &["syslog"]),
    (Some("CAP_SYS_PACCT"), &["acct"]),
    (
        Some("CAP_SYS_NICE"),
        &["mbind", "set_mempolicy", "move_pages", "get_mempolicy"],
    ),
    (
        None,
        &[
            "add_key",
            "request_key",
            "keyctl",
            "uselib",
            "userfaultfd",
            "ustat",
            "sysfs",
            "_sysctl",
            "vm86",
            "vm86old",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
        ],
    ),
];

/// `clone` flags that create namespaces; Docker refuses them without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// The syscalls the default profile denies for an app holding `extra_caps`.
pub fn denied_syscalls(extra_caps: &[String]) -> Vec<&'static str> {
    DENIED
        .iter()
        .filter(|(cap, _)| !cap.is_some_and(|c| extra_caps.iter().any(|e| e == c)))
        .flat_map(|(_, names)| names.iter().copied())
        .collect()
}

/// Seccomp architectures covered for the build target. Listing the compat ABIs
/// makes the deny list apply to 32-bit syscalls too (a default-allow filter that
/// forgot `x86` would leave `int 0x80` open).
fn architectures() -> Vec<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "arm" => vec!["SCMP_ARCH_ARM"],
        "x86" => vec!["SCMP_ARCH_X86"],
        _ => vec![],
    }
}

/// The `linux.seccomp` section of the runtime spec, as OCI JSON.
pub fn default_profile(extra_caps: &[String]) -> Value {
    let mut syscalls = vec![
        json!({
            "names": denied_syscalls(extra_caps),
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
        }),
        json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS }),
    ];
    if !extra_caps.iter().any(|c| c == "CAP_SYS_ADMIN") {
        for flag in CLONE_NAMESPACE_FLAGS {
            // On s390 the flags are the second argument; every arch we build for
            // passes them first.
            syscalls.push(json!({
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [{ "index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ" }],
            }));
        }
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures(),
        "syscalls": syscalls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_give_back_exactly_their_group() {
        let table: &[(&[&str], &str, bool)] = &[
            (&[], "kexec_load", true),
            (&[], "init_module", true),
            (&[], "mount", true),
            (&[], "ptrace", true),
            (&[], "keyctl", true),
            (&["CAP_SYS_PTRACE"], "ptrace", false),
            (&["CAP_SYS_PTRACE"], "mount", true),
            (&["CAP_SYS_TIME"], "settimeofday", false),
            (&["CAP_SYS_ADMIN"], "mount", false),
            (&["CAP_SYS_ADMIN"], "keyctl", true),
            (&["CAP_NET_ADMIN"], "kexec_load", true),
        ];
        for (caps, syscall, denied) in table {
            let caps: Vec<String> = caps.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                denied_syscalls(&caps).contains(syscall),
                *denied,
                "caps {caps:?}, syscall {syscall}"
            );
        }
    }

    #[test]
    fn profile_parses_as_oci_seccomp() {
        let v = default_profile(&[]);
        let parsed: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(v).unwrap();
        assert_eq!(
            parsed.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
        );
        // 2 plain rules + one per namespace flag.
        assert_eq!(parsed.syscalls().as_ref().unwrap().len(), 9);
        let admin = default_profile(&["CAP_SYS_ADMIN".into()]);
        let parsed: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(admin).unwrap();
        assert_eq!(parsed.syscalls().as_ref().unwrap().len(), 2);
    }
}
