//! The hub's clock: the one place that reads the wall clock. Operations take
//! the time from the [`Hub`](crate::hub::Hub)'s clock, so tests can set it and
//! every write of one operation (records, audit entry, manifests) carries the
//! same instant.

use std::sync::atomic::{AtomicU64, Ordering};

/// Unix seconds, as the hub records them (registration, audit, manifests'
/// `issued_at`, freshness of statuses).
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_secs(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_secs(&self) -> u64 {
        // The hub's one reading of the wall clock (see the module doc).
        #[allow(clippy::disallowed_methods)]
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A clock set by hand (tests, replays).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(secs: u64) -> ManualClock {
        ManualClock(AtomicU64::new(secs))
    }
    pub fn set(&self, secs: u64) {
        self.0.store(secs, Ordering::SeqCst);
    }
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_secs(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Unix seconds now, for the binaries' edges (CLI output, the simulator);
/// the hub's operations use their [`Clock`].
pub fn now_secs() -> u64 {
    SystemClock.now_secs()
}
