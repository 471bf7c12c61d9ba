//! The default seccomp profile every app runs under (data and a pure builder;
//! the one outside fact is which names this host's libseccomp knows).
//!
//! An allowlist with a default deny action, with the semantics of Docker's
//! default profile (moby `profiles/seccomp/default.json`, Apache-2.0): every
//! syscall not listed fails with `EPERM`. The lists below are that profile's:
//!
//! - [`ALLOWED`]: what every container may call (its first, unconditional rule);
//! - [`ARCH_ALLOWED`]: additions that exist on one architecture only
//!   (`arch_prctl` on x86_64, `set_tls`/`cacheflush` on ARM), included for the
//!   build target as Docker includes them for `runtime.GOARCH`;
//! - [`CAP_ALLOWED`]: groups given back when the app holds the capability that
//!   guards them (`CAP_SYS_TIME` gives `settimeofday`, …), counted over Docker's
//!   default capability set plus the app's additions, as Docker does;
//! - argument filters: `socket` for every family but `AF_ALG` and `AF_VSOCK`, `personality`
//!   for the five personas Docker allows, `clone` without namespace flags
//!   (all flags with `CAP_SYS_ADMIN`), and `clone3` answered with `ENOSYS`
//!   (its flags live in memory a filter cannot read) so libc falls back to
//!   `clone`.
//!
//! One deliberate difference: Docker allows `ptrace`, `process_vm_readv` and
//! `process_vm_writev` to everyone on kernels from 4.8 on; here they stay
//! behind `CAP_SYS_PTRACE` (an edge app has no business tracing its siblings,
//! and the capability is the intended control).
//!
//! One list serves x86_64, aarch64 and armv7, and every libseccomp version:
//! names that exist only on a compat ABI (`chown32` on x86_64) resolve to
//! libseccomp's pseudo numbers and are added to that ABI's filter only
//! (libcontainer uses the non-strict `seccomp_rule_add`); names this host's
//! libseccomp does not know at all (syscalls newer than it, like `mseal` for
//! 2.5.4) are left out of the profile here, as libcontainer would skip them
//! anyway (`third_party/libcontainer/src/seccomp/mod.rs`), only with a warning
//! written into every container's log. Either way an unknown name never stops
//! a container from starting; the syscall stays denied.

use serde_json::{json, Value};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Docker's default allowlist: allowed for every container, every capability set.
pub const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "riscv_hwprobe",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls that exist on some architectures only, keyed by Rust's
/// `target_arch` names (Docker's `includes.arches`: amd64/x32/x86, arm/arm64).
pub const ARCH_ALLOWED: &[(&[&str], &[&str])] = &[
    (&["x86_64"], &["arch_prctl"]),
    (&["x86_64", "x86"], &["modify_ldt"]),
    (
        &["aarch64", "arm"],
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
    ),
];

/// Syscall groups given back by a capability (Docker's `includes.caps`).
pub const CAP_ALLOWED: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Syscalls no capability gives back, listed so tests and docs can name them
/// (the filter denies them by leaving them out): keyrings are not namespaced,
/// kexec replaces the kernel, io_uring and userfaultfd are the kernel's most
/// exploited interfaces, the rest are obsolete or host-global.
pub const NEVER_ALLOWED: &[&str] = &[
    "add_key",
    "request_key",
    "keyctl",
    "kexec_load",
    "kexec_file_load",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
    "pivot_root",
    "swapon",
    "swapoff",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "nfsservctl",
    "create_module",
    "query_module",
    "get_kernel_syms",
    "vm86",
    "vm86old",
    "move_pages",
];

/// `clone` flags that create namespaces (CLONE_NEWNS, CLONE_NEWCGROUP,
/// CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET):
/// Docker's mask 0x7E020000. Without CAP_SYS_ADMIN `clone` is allowed only
/// when none of them is set.
const CLONE_NAMESPACE_MASK: u64 = 0x7E02_0000;

/// Personas `personality` may switch to (Docker's list): PER_LINUX (0),
/// PER_LINUX32 (8), UNAME26 (0x20000), PER_LINUX32|UNAME26 and the query
/// 0xffffffff.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// The socket families Docker withholds: AF_ALG (the kernel crypto API, a
/// recurring source of kernel bugs) and AF_VSOCK (reaches the hypervisor).
/// The one family between them, AF_KCM (39), is allowed, as in Docker.
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;

/// The capabilities an app holds: the runtime's default set plus its additions.
fn holds(extra_caps: &[String], cap: &str) -> bool {
    crate::caps::DEFAULT_CAPABILITIES.contains(&cap) || extra_caps.iter().any(|e| e == cap)
}

/// Every syscall allowed without an argument filter for an app holding
/// `extra_caps` (on top of the default set), on the build target, sorted.
pub fn allowed_syscalls(extra_caps: &[String]) -> Vec<&'static str> {
    let arch = std::env::consts::ARCH;
    let mut names: Vec<&'static str> = ALLOWED
        .iter()
        .copied()
        .chain(
            ARCH_ALLOWED
                .iter()
                .filter(|(arches, _)| arches.contains(&arch))
                .flat_map(|(_, names)| names.iter().copied()),
        )
        .chain(
            CAP_ALLOWED
                .iter()
                .filter(|(cap, _)| holds(extra_caps, cap))
                .flat_map(|(_, names)| names.iter().copied()),
        )
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The syscalls the profile names (capability groups and [`NEVER_ALLOWED`])
/// that an app holding `extra_caps` may not call. Everything else outside
/// [`allowed_syscalls`] is denied too; this is the part worth naming.
pub fn denied_syscalls(extra_caps: &[String]) -> Vec<&'static str> {
    let allowed = allowed_syscalls(extra_caps);
    let mut denied: Vec<&'static str> = CAP_ALLOWED
        .iter()
        .flat_map(|(_, names)| names.iter().copied())
        .chain(NEVER_ALLOWED.iter().copied())
        .filter(|n| !allowed.contains(n))
        .collect();
    denied.sort_unstable();
    denied.dedup();
    denied
}

/// Seccomp architectures covered for the build target. Listing the compat ABIs
/// puts 32-bit syscalls (`int 0x80`, AArch32) under the same allowlist instead
/// of leaving them to the kernel's "wrong arch" default.
fn architectures() -> Vec<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "arm" => vec!["SCMP_ARCH_ARM"],
        "x86" => vec!["SCMP_ARCH_X86"],
        _ => vec![],
    }
}

/// `(arg0 & mask) == 0` as OCI `SCMP_CMP_MASKED_EQ` conditions. Runtimes
/// disagree on which of `value`/`valueTwo` is the mask: runc reads
/// `(arg & value) == valueTwo`, libcontainer (through libseccomp-rs's
/// `MaskedEqual(valueTwo)`) reads `(arg & valueTwo) == value`. Both spellings
/// are given, as two rules: under either reading one of them is the intended
/// test and the other compares `arg & 0` with a non-zero value, which never
/// holds. So the filter is right whichever runtime reads it.
fn masked_zero_rules(name: &str, mask: u64) -> [Value; 2] {
    [
        json!({
            "names": [name],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": 0, "valueTwo": mask, "op": "SCMP_CMP_MASKED_EQ" }],
        }),
        json!({
            "names": [name],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": mask, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }],
        }),
    ]
}

/// Does this host's libseccomp know `name`? The same lookup libcontainer
/// makes when it builds the filter.
fn known_to_libseccomp(name: &str) -> bool {
    libseccomp::ScmpSyscall::from_name(name).is_ok()
}

/// The `linux.seccomp` section of the runtime spec, as OCI JSON, for this host.
pub fn default_profile(extra_caps: &[String]) -> Value {
    profile(extra_caps, known_to_libseccomp)
}

/// [`default_profile`] with the names `known` refuses left out (they stay
/// denied by the default action). Pure.
pub fn profile(extra_caps: &[String], known: impl Fn(&str) -> bool) -> Value {
    let names: Vec<&str> = allowed_syscalls(extra_caps)
        .into_iter()
        .filter(|n| known(n))
        .collect();
    let mut syscalls = vec![json!({
        "names": names,
        "action": "SCMP_ACT_ALLOW",
    })];
    // socket(2): every family but AF_ALG and AF_VSOCK.
    for (op, value) in [
        ("SCMP_CMP_LT", AF_ALG),
        ("SCMP_CMP_EQ", AF_ALG + 1),
        ("SCMP_CMP_GT", AF_VSOCK),
    ] {
        syscalls.push(json!({
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": value, "op": op }],
        }));
    }
    for persona in PERSONALITIES {
        syscalls.push(json!({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": persona, "op": "SCMP_CMP_EQ" }],
        }));
    }
    // With CAP_SYS_ADMIN, `clone` and `clone3` are in the allowlist above.
    if !holds(extra_caps, "CAP_SYS_ADMIN") {
        // On s390 the flags are the second argument; every arch we build for
        // passes them first.
        syscalls.extend(masked_zero_rules("clone", CLONE_NAMESPACE_MASK));
        syscalls
            .push(json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": architectures(),
        "syscalls": syscalls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction};

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
            // Docker's other groups.
            (&[], "reboot", true),
            (&["CAP_SYS_BOOT"], "reboot", false),
            (&["CAP_SYS_BOOT"], "kexec_load", true),
            (&["CAP_SYS_MODULE"], "finit_module", false),
            (&[], "bpf", true),
            (&["CAP_BPF"], "bpf", false),
            (&[], "perf_event_open", true),
            (&["CAP_PERFMON"], "perf_event_open", false),
            (&[], "open_by_handle_at", true),
            (&["CAP_DAC_READ_SEARCH"], "open_by_handle_at", false),
            (&[], "iopl", true),
            (&["CAP_SYS_RAWIO"], "iopl", false),
            (&[], "mbind", true),
            (&["CAP_SYS_NICE"], "mbind", false),
            (&[], "syslog", true),
            (&["CAP_SYSLOG"], "syslog", false),
            (&[], "unshare", true),
            (&[], "setns", true),
            (&["CAP_SYS_ADMIN"], "unshare", false),
        ];
        for (caps, syscall, denied) in table {
            let caps: Vec<String> = caps.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                denied_syscalls(&caps).contains(syscall),
                *denied,
                "caps {caps:?}, syscall {syscall}"
            );
            assert_eq!(
                allowed_syscalls(&caps).contains(syscall),
                !*denied,
                "caps {caps:?}, syscall {syscall}"
            );
        }
    }

    #[test]
    fn the_default_capability_set_counts_like_docker() {
        // CAP_SYS_CHROOT is in Docker's default set, so chroot is allowed.
        assert!(allowed_syscalls(&[]).contains(&"chroot"));
        // Everyday syscalls are on the list.
        for name in [
            "read",
            "write",
            "openat",
            "execve",
            "futex",
            "wait4",
            "exit_group",
        ] {
            assert!(allowed_syscalls(&[]).contains(&name), "{name}");
        }
    }

    #[test]
    fn no_capability_gives_back_the_never_allowed_syscalls() {
        let every: Vec<String> = outpost_protocol::manifest::KNOWN_CAPABILITIES
            .iter()
            .map(|s| s.to_string())
            .collect();
        let allowed = allowed_syscalls(&every);
        for name in NEVER_ALLOWED {
            assert!(!allowed.contains(name), "{name}");
        }
        // The argument-filtered syscalls are never allowed unconditionally
        // without CAP_SYS_ADMIN.
        for name in ["socket", "personality", "clone", "clone3"] {
            assert!(!allowed_syscalls(&[]).contains(&name), "{name}");
        }
    }

    #[test]
    fn arch_specific_syscalls_are_included_for_the_build_target_only() {
        let allowed = allowed_syscalls(&[]);
        let x86 = std::env::consts::ARCH == "x86_64";
        let arm = matches!(std::env::consts::ARCH, "aarch64" | "arm");
        assert_eq!(allowed.contains(&"arch_prctl"), x86);
        assert_eq!(allowed.contains(&"set_tls"), arm);
        assert_eq!(allowed.contains(&"cacheflush"), arm);
    }

    #[test]
    fn names_the_host_does_not_know_are_left_out_and_stay_denied() {
        let unknown = |n: &str| n != "mseal" && n != "getpid";
        let p: LinuxSeccomp = serde_json::from_value(profile(&[], unknown)).unwrap();
        let names = p.syscalls().as_ref().unwrap()[0].names();
        assert!(!names.iter().any(|n| n == "mseal" || n == "getpid"));
        assert!(names.iter().any(|n| n == "read"));
        // This host's libseccomp knows the everyday names.
        for n in ["read", "openat", "execve", "clone", "socket"] {
            assert!(known_to_libseccomp(n), "{n}");
        }
        assert!(!known_to_libseccomp("no_such_syscall"));
    }

    #[test]
    fn profile_parses_as_oci_seccomp() {
        let v = default_profile(&[]);
        let parsed: LinuxSeccomp = serde_json::from_value(v).unwrap();
        assert_eq!(parsed.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(parsed.default_errno_ret(), Some(EPERM));
        let rules = parsed.syscalls().as_ref().unwrap();
        // The allowlist + 3 socket + 5 personality + 2 clone + clone3.
        assert_eq!(rules.len(), 12);
        let clone3 = rules.iter().find(|r| *r.names() == ["clone3"]).unwrap();
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(ENOSYS));
        let clone: Vec<_> = rules.iter().filter(|r| *r.names() == ["clone"]).collect();
        assert_eq!(clone.len(), 2);
        for r in clone {
            assert_eq!(r.action(), LinuxSeccompAction::ScmpActAllow);
            let a = &r.args().as_ref().unwrap()[0];
            // One of value / valueTwo is the mask, the other 0.
            assert_eq!(a.value() | a.value_two().unwrap_or(0), CLONE_NAMESPACE_MASK);
            assert_eq!(a.value() & a.value_two().unwrap_or(0), 0);
        }

        let admin = default_profile(&["CAP_SYS_ADMIN".into()]);
        let parsed: LinuxSeccomp = serde_json::from_value(admin).unwrap();
        let rules = parsed.syscalls().as_ref().unwrap();
        // No clone filters: both are in the allowlist.
        assert_eq!(rules.len(), 9);
        let names = rules[0].names();
        assert!(names.iter().any(|n| n == "clone") && names.iter().any(|n| n == "clone3"));
    }
}
