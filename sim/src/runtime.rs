//! The simulated container runtime, standing in for the agent's reconciler and
//! containers (with the in-memory disk, the only parts of a simulated device
//! that are not the agent's). It "starts" every app of an accepted manifest
//! instantly (or after a configured delay per app) and reports it running with
//! a made-up pid, and it decides each release's trial the way a device that
//! is told how it fares would ([`SimRuntime::verdict`]): a device marked as
//! failing rolls every release after its first back, as an agent does when an
//! app of the new release crashes during its trial (`edge-agent/src/reconcile/release.rs`).
//!
//! Everything around it (the agent's MQTT link, inbox and trust gate, outbox
//! and signed status; see `device.rs`) is the agent's code, so the fleet
//! benchmark measures the hub, the broker and the path devices run, not
//! container starts (those are measured separately, on real containers: see
//! `docs/benchmarks.md`).

use outpost_protocol::status::{ReleasePhase, ReleaseStatus};
use outpost_protocol::{AppState, AppStatus, Manifest};
use std::time::Duration;

/// The reason a failing simulated device gives for its rollback.
pub const SIMULATED_FAILURE: &str = "exited with code 1 during the trial (simulated failure)";

/// A runtime that pretends.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimRuntime {
    /// Simulated create+start time per app, spent sequentially.
    pub start_delay: Duration,
    next_pid: u32,
}

impl SimRuntime {
    pub fn new(start_delay: Duration) -> Self {
        SimRuntime {
            start_delay,
            next_pid: 1000,
        }
    }

    /// How long applying `manifest` takes.
    pub fn apply_time(&self, manifest: &Manifest) -> Duration {
        self.start_delay * manifest.apps.len() as u32
    }

    /// How the trial of `manifest` ends on a device with the last `committed`
    /// release (`(epoch, generation)`): committed, or, on a device that
    /// `fails` and has a release to go back to, rolled back to it with the
    /// first app named as the culprit. A failing device commits its first
    /// release (it has nothing to go back to, and the fleet must start from a
    /// committed state to measure a rollout). (Pure.)
    pub fn verdict(
        manifest: &Manifest,
        committed: Option<(u64, u64)>,
        fails: bool,
    ) -> ReleaseStatus {
        let target = (manifest.epoch, manifest.generation);
        match committed {
            Some(to) if fails => ReleaseStatus {
                target,
                phase: ReleasePhase::RolledBack {
                    to,
                    app: manifest
                        .apps
                        .first()
                        .map_or_else(|| "(none)".to_string(), |a| a.name.clone()),
                    reason: SIMULATED_FAILURE.into(),
                },
                committed: Some(to),
            },
            _ => ReleaseStatus {
                target,
                phase: ReleasePhase::Committed,
                committed: Some(target),
            },
        }
    }

    /// The app statuses after applying `manifest`: every app running.
    pub fn apply(&mut self, manifest: &Manifest) -> Vec<AppStatus> {
        manifest
            .apps
            .iter()
            .map(|app| {
                self.next_pid = self.next_pid.wrapping_add(1).max(1000);
                AppStatus {
                    name: app.name.clone(),
                    state: AppState::Running { pid: self.next_pid },
                    restarts: 0,
                    last_error: None,
                    image_digest: Some(app.image.digest),
                    ready: app.health.as_ref().map(|_| true),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::sample::gateway_manifest;

    #[test]
    fn every_app_runs() {
        let m = gateway_manifest("d".parse().unwrap(), outpost_protocol::KeyId("k".into()), 1);
        let mut rt = SimRuntime::new(Duration::from_millis(10));
        let apps = rt.apply(&m);
        assert_eq!(apps.len(), 5);
        assert!(apps.iter().all(|a| a.state.is_running()));
        assert_eq!(rt.apply_time(&m), Duration::from_millis(50));
    }

    #[test]
    fn a_failing_device_rolls_back_every_release_after_its_first() {
        let key = outpost_protocol::KeyId("k".into());
        let m = |g| gateway_manifest("d".parse().unwrap(), key.clone(), g);
        // First release: committed, failing or not (nothing to go back to).
        for fails in [false, true] {
            let v = SimRuntime::verdict(&m(1), None, fails);
            assert_eq!(v.phase, ReleasePhase::Committed);
            assert_eq!(v.committed, Some((m(1).epoch, 1)));
        }
        let before = Some((m(1).epoch, 1));
        let good = SimRuntime::verdict(&m(2), before, false);
        assert_eq!(good.phase, ReleasePhase::Committed);
        assert_eq!(good.committed, Some((m(2).epoch, 2)));
        let bad = SimRuntime::verdict(&m(2), before, true);
        assert_eq!(bad.target, (m(2).epoch, 2));
        assert_eq!(bad.committed, before);
        assert_eq!(
            bad.phase,
            ReleasePhase::RolledBack {
                to: (m(1).epoch, 1),
                app: m(2).apps[0].name.clone(),
                reason: SIMULATED_FAILURE.into(),
            }
        );
    }
}
