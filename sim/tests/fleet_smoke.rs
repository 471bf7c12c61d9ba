//! Smoke run of the fleet simulator against a real hub (child process, embedded
//! broker): 50 devices register, connect, apply their first manifest and then two
//! deployment rounds. Asserts convergence only, never timing.

use outpost_sim::fleet::{self, FleetOptions};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_converge_on_every_deployment_round() {
    let devices = 50;
    let report = fleet::run(FleetOptions {
        broker: fleet::Broker::Embedded,
        devices,
        connect_rate: 500,
        register_concurrency: 8,
        rounds: 2,
        status_interval: Some(Duration::from_secs(30)),
        keep_alive: Duration::from_secs(15),
        app_start: Duration::ZERO,
        phase_timeout: Duration::from_secs(120),
        hub_exe: env!("CARGO_BIN_EXE_outpost-sim").into(),
        data_dir: None,
        observer: false,
    })
    .await
    .unwrap();
    println!("{report}");
    assert_eq!(report.failure, None);
    assert!(report.converged);
    assert_eq!(report.register.as_ref().unwrap().done, devices);
    assert_eq!(report.connect.as_ref().unwrap().ready, devices);
    // Initial sync + two deployment rounds, each applied by every device and
    // confirmed by the hub from the devices' signed status.
    assert_eq!(report.rounds.len(), 3);
    for round in &report.rounds {
        assert_eq!(round.applied, devices, "{}", round.label);
        assert_eq!(round.updated, devices, "{}", round.label);
        assert!(round.hub_confirmed.is_some(), "{}", round.label);
    }
    let counter = |name: &str| {
        report
            .device_counters
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .unwrap()
    };
    assert_eq!(counter("manifests_rejected"), 0);
    assert_eq!(counter("manifests_accepted"), 3 * devices as u64);
    let hub = report.hub_stats.as_ref().unwrap();
    assert!(
        !hub.counters
            .keys()
            .any(|k| k.starts_with("status_rejected")),
        "the hub refused a device-signed status: {:?}",
        hub.counters
    );
}
