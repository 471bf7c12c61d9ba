//! The agent's clocks: the one module that reads the wall clock, and the
//! monotonic clock every delay and deadline is measured on.
//!
//! Two readings, two jobs. Wall time (milliseconds since the Unix epoch) is for
//! people and the hub: event timestamps, `reported_at`, the status file's
//! `written_at_ms`. It can jump: a Raspberry Pi without a real-time clock boots
//! in 1970 and is stepped forward by years when NTP answers, and an operator may
//! set it back. Monotonic time (milliseconds since the clock was made, i.e. since
//! the agent started) never jumps and stands still only while the machine
//! sleeps, so restart backoff, error retries and "has run stably for 10 s" use it.
//! It is read through `tokio::time::Instant`, so tests pause and advance it.
//!
//! The root `clippy.toml` forbids `SystemTime::now` elsewhere in the workspace,
//! which keeps the wall clock from sneaking back into a decision.

use std::sync::atomic::{AtomicI64, Ordering};
use tokio::time::Instant;

/// Both readings of a clock; the reconcile loop takes one as `Arc<dyn Clock>`.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch by the device clock (0 before 1970).
    /// For timestamps shown to people or sent to the hub; never for a delay.
    fn wall_ms(&self) -> u64;
    /// Milliseconds since this clock's origin; never goes backwards and is not
    /// moved by a wall-clock step.
    fn mono_ms(&self) -> u64;
}

/// Milliseconds since the Unix epoch by the device clock (0 before 1970).
pub fn wall_ms() -> u64 {
    // The single reading of the wall clock in this crate (see the module doc).
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The machine's clocks: wall time from the system, monotonic time from the
/// moment this value was made (tokio's clock, so paused time applies in tests).
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn wall_ms(&self) -> u64 {
        wall_ms()
    }
    fn mono_ms(&self) -> u64 {
        millis_since(self.origin)
    }
}

/// A clock whose wall reading can be stepped by hand while monotonic time runs
/// on (tokio's clock): reproduces an RTC-less device that boots in 1970 and
/// jumps when NTP answers, or an operator setting the clock back.
#[derive(Debug)]
pub struct SteppableClock {
    origin: Instant,
    /// Wall time at `origin`, plus every step so far.
    wall_at_origin_ms: AtomicI64,
}

impl SteppableClock {
    /// Wall time starts at `wall_ms` and advances with monotonic time.
    pub fn new(wall_ms: u64) -> SteppableClock {
        SteppableClock {
            origin: Instant::now(),
            wall_at_origin_ms: AtomicI64::new(i64::try_from(wall_ms).unwrap_or(i64::MAX)),
        }
    }

    /// Jump the wall clock by `delta_ms` (negative: backwards); monotonic time
    /// is untouched.
    pub fn step_wall(&self, delta_ms: i64) {
        self.wall_at_origin_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for SteppableClock {
    fn wall_ms(&self) -> u64 {
        let mono = i64::try_from(self.mono_ms()).unwrap_or(i64::MAX);
        let wall = self
            .wall_at_origin_ms
            .load(Ordering::SeqCst)
            .saturating_add(mono);
        u64::try_from(wall).unwrap_or(0)
    }
    fn mono_ms(&self) -> u64 {
        millis_since(self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;

    #[tokio::test(start_paused = true)]
    async fn monotonic_time_follows_tokio_time_and_starts_at_zero() {
        let c = SystemClock::new();
        assert_eq!(c.mono_ms(), 0);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(c.mono_ms(), 1_500);
        // The wall reading is the system's: after 2020 on any machine running
        // these tests, whatever tokio's paused clock says.
        assert!(c.wall_ms() > 1_577_836_800_000, "{}", c.wall_ms());
    }

    #[tokio::test(start_paused = true)]
    async fn wall_steps_move_only_the_wall_reading() {
        let c = SteppableClock::new(1_000);
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!((c.wall_ms(), c.mono_ms()), (1_250, 250));
        c.step_wall(30 * YEAR_MS);
        assert_eq!(c.wall_ms(), 1_250 + 30 * YEAR_MS as u64);
        assert_eq!(c.mono_ms(), 250);
        // Back past the epoch: the wall reading floors at 0, monotonic runs on.
        c.step_wall(-40 * YEAR_MS);
        tokio::time::advance(Duration::from_millis(750)).await;
        assert_eq!((c.wall_ms(), c.mono_ms()), (0, 1_000));
    }
}
