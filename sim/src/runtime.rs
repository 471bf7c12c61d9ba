//! The simulated container runtime, standing in for the agent's reconciler and
//! containers (with the in-memory disk, the only parts of a simulated device
//! that are not the agent's). It "starts" every app of an accepted manifest
//! instantly (or after a configured delay per app) and reports it running with
//! a made-up pid.
//!
//! Everything around it (the agent's MQTT link, inbox and trust gate, outbox
//! and signed status; see `device.rs`) is the agent's code, so the fleet
//! benchmark measures the hub, the broker and the path devices run, not
//! container starts (those are measured separately, on real containers: see
//! `docs/benchmarks.md`).

use outpost_protocol::{AppState, AppStatus, Manifest};
use std::time::Duration;

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
}
