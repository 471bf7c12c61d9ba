//! How refused manifests and key sets are reported without letting a flood of
//! them wear the flash or push real events out of the outbox.
//!
//! Every refusal is counted in memory at once (status reports carry the
//! counters). The first refusal after a quiet window is persisted and queued as
//! a `ManifestRejected` event straight away, so one bad manifest is seen at the
//! hub as before; further refusals within [`WINDOW_MS`] are only counted, and
//! when the window ends one summary is persisted and queued for all of them. A
//! flood therefore costs at most two durable commits and two events a window,
//! whatever its size. The decision is the pure [`Throttle`]; time is passed in
//! (monotonic milliseconds).

/// Length of one reporting window.
pub const WINDOW_MS: u64 = 60_000;

/// What to do with a refusal now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReject {
    /// Persist the counters and queue an event for this one.
    Report,
    /// Count it; a summary follows when the window ends.
    Defer,
}

/// A summary due at the end of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Refusals counted but not yet reported.
    pub count: u64,
    /// The reason of the last of them.
    pub last_reason: String,
}

impl Summary {
    /// The text of the summary event.
    pub fn text(&self) -> String {
        format!(
            "{} more refused in the last {} s; last: {}",
            self.count,
            WINDOW_MS / 1000,
            self.last_reason
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Throttle {
    window_start: Option<u64>,
    deferred: u64,
    last_reason: String,
}

impl Throttle {
    pub fn on_reject(&mut self, now_ms: u64, reason: &str) -> OnReject {
        match self.window_start {
            Some(start) if now_ms.saturating_sub(start) < WINDOW_MS => {
                self.deferred += 1;
                self.last_reason = reason.to_string();
                OnReject::Defer
            }
            _ => {
                self.window_start = Some(now_ms);
                self.deferred = 0;
                OnReject::Report
            }
        }
    }

    /// When the pending summary is due, if one is.
    pub fn due_at(&self) -> Option<u64> {
        (self.deferred > 0).then(|| self.window_start.unwrap_or(0) + WINDOW_MS)
    }

    /// The summary, once due; a new window starts with it, so a flood that
    /// goes on is summarised once a window.
    pub fn flush(&mut self, now_ms: u64) -> Option<Summary> {
        let due = self.due_at()?;
        if now_ms < due {
            return None;
        }
        self.window_start = Some(now_ms);
        let count = std::mem::take(&mut self.deferred);
        Some(Summary {
            count,
            last_reason: std::mem::take(&mut self.last_reason),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_first_is_reported_the_rest_of_the_window_summarised_once() {
        let mut t = Throttle::default();
        assert_eq!(t.on_reject(1_000, "a"), OnReject::Report);
        assert_eq!(t.due_at(), None);
        assert_eq!(t.on_reject(2_000, "b"), OnReject::Defer);
        assert_eq!(t.on_reject(3_000, "c"), OnReject::Defer);
        assert_eq!(t.due_at(), Some(61_000));
        assert_eq!(t.flush(60_999), None);
        let s = t.flush(61_000).unwrap();
        assert_eq!((s.count, s.last_reason.as_str()), (2, "c"));
        assert!(s
            .text()
            .starts_with("2 more refused in the last 60 s; last: c"));
        assert_eq!(t.flush(200_000), None);
        // Still inside the window the flush opened: deferred.
        assert_eq!(t.on_reject(70_000, "d"), OnReject::Defer);
        // After a quiet window: reported at once again.
        assert_eq!(t.flush(121_000).map(|s| s.count), Some(1));
        assert_eq!(t.on_reject(500_000, "e"), OnReject::Report);
    }

    proptest! {
        /// Whatever the arrival times, every refusal is either reported or
        /// summarised exactly once, and at most two reports happen per window.
        #[test]
        fn nothing_is_lost_and_reports_stay_bounded(gaps in proptest::collection::vec(0u64..5_000, 1..2_000)) {
            let mut t = Throttle::default();
            let mut now = 0;
            let (mut reported, mut summarised, mut writes) = (0u64, 0u64, 0u64);
            for g in &gaps {
                now += g;
                if let Some(s) = t.flush(now) { summarised += s.count; writes += 1; }
                if t.on_reject(now, "x") == OnReject::Report { reported += 1; writes += 1; }
            }
            now += WINDOW_MS;
            if let Some(s) = t.flush(now) { summarised += s.count; writes += 1; }
            prop_assert_eq!(reported + summarised, gaps.len() as u64);
            let windows = now / WINDOW_MS + 1;
            prop_assert!(writes <= 2 * windows + 1, "{} writes over {} windows", writes, windows);
        }
    }
}
