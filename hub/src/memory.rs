//! Process-wide memory settings of the hub, applied once at start by the
//! binaries that run it (`outpost-hub`, and `outpost-sim hub` for benchmarks).

/// glibc gives each thread that allocates its own malloc arena and rarely hands
/// their free pages back: the hub's RSS climbed to 550 MiB over eight
/// 10,000-device deploy rounds and stayed there, against a plateau of 197 MiB
/// with two arenas at the same speed (docs/benchmarks.md). An operator's own
/// `MALLOC_ARENA_MAX` is left in charge.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt takes two integers and only adjusts allocator
        // parameters; callers do this first thing in main, before any thread exists.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
