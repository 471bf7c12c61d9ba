//! The capability set every app starts from. Owned here, apart from the
//! OCI spec (`spec.rs`) and the seccomp profile (`seccomp.rs`), because both
//! read it: the spec grants it, and the profile opens the syscall groups
//! Docker ties to capabilities the app holds.

/// Docker's default capability set. Apps get exactly these plus what their
/// `AppSpec` adds.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
