//! Raising the open-file limit: every simulated device holds a TCP socket, and so
//! does the broker for each of them.

/// What the limit was and what it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileChange {
    pub before_soft: u64,
    pub before_hard: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raise `RLIMIT_NOFILE` to at least `want` (soft and, if needed and allowed,
/// hard). Child processes (the hub) inherit it. Never lowers a limit.
pub fn raise_nofile(want: u64) -> std::io::Result<NofileChange> {
    use rlimit::Resource;
    let (before_soft, before_hard) = Resource::NOFILE.get()?;
    let mut hard = before_hard;
    if hard < want {
        // Only root (CAP_SYS_RESOURCE) may raise the hard limit; if that fails we
        // keep the old one and raise the soft limit as far as it allows.
        if Resource::NOFILE.set(before_soft, want).is_ok() {
            hard = want;
        }
    }
    let soft = want.min(hard).max(before_soft);
    Resource::NOFILE.set(soft, hard)?;
    Ok(NofileChange {
        before_soft,
        before_hard,
        soft,
        hard,
    })
}
