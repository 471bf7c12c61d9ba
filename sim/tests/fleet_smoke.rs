//! Smoke runs of the fleet simulator against a real hub (child process, embedded
//! broker): 50 devices register, connect, apply their first manifest, two
//! deployment rounds and a fleet variable's change; and staged rollouts over simulated devices of which a
//! share fails every new release. Asserts outcomes only, never timing.

use outpost_hub::rollout::schedule::{PauseReason, Phase};
use outpost_sim::fleet::{self, FleetOptions, FleetReport};
use std::time::Duration;

fn options(devices: usize) -> FleetOptions {
    FleetOptions {
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
        trial: Duration::ZERO,
        failing: 0.0,
        rollout: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_converge_on_every_deployment_round() {
    let devices = 50;
    let report = fleet::run(options(devices)).await.unwrap();
    println!("{report}");
    assert_eq!(report.failure, None);
    assert!(report.converged);
    assert_eq!(report.register.as_ref().unwrap().done, devices);
    assert_eq!(report.connect.as_ref().unwrap().ready, devices);
    // Initial sync + two deployment rounds + the fleet variable, each applied
    // by every device and confirmed by the hub from the devices' signed status.
    assert_eq!(report.rounds.len(), 4);
    assert!(
        report.rounds[3].label.contains("fleet variable"),
        "{}",
        report.rounds[3].label
    );
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
    assert_eq!(counter("manifests_accepted"), 4 * devices as u64);
    let hub = report.hub_stats.as_ref().unwrap();
    assert!(
        !hub.counters
            .keys()
            .any(|k| k.starts_with("status_rejected")),
        "the hub refused a device-signed status: {:?}",
        hub.counters
    );
}

fn waves() -> serde_json::Value {
    serde_json::json!({
        "canary": 1,
        "waves": ["10%", "50%", "100%"],
        "max_failure_ratio": 0.02,
        "wave_timeout_secs": 600
    })
}

fn rollout_of(report: &FleetReport) -> &outpost_sim::rollout::RolloutReport {
    println!("{report}");
    assert_eq!(report.failure, None);
    report.rollout.as_ref().expect("a rollout report")
}

/// 1,000 simulated devices, 3 % of them rolling back every new release, and a
/// rollout that tolerates 2 %: the hub pauses it on the failure ratio, and
/// every device it had not targeted by then never ran the new release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_over_1000_devices_pauses_when_3_percent_fail() {
    let devices = 1000;
    let report = fleet::run(FleetOptions {
        failing: 0.03,
        trial: Duration::from_millis(500),
        rollout: Some(waves()),
        phase_timeout: Duration::from_secs(240),
        ..options(devices)
    })
    .await
    .unwrap();
    let r = rollout_of(&report);
    assert_eq!(r.failing_devices, 30);
    assert!(r.settled(), "the rollout never stopped running");
    let view = r.view.as_ref().unwrap();
    let Phase::Paused {
        reason:
            PauseReason::FailureRatio {
                failed,
                counted,
                max_failure_ppm,
            },
    } = &view.phase
    else {
        panic!("expected a pause on the failure ratio, got {}", view.state);
    };
    assert_eq!(*max_failure_ppm, 20_000);
    assert!(*failed as u64 * 1_000_000 > u64::from(*max_failure_ppm) * *counted as u64);
    let t = &view.tally;
    // Paused before the last wave: part of the fleet was never targeted.
    assert!(t.untargeted > 0, "{t:?}");
    assert_eq!(t.targeted() + t.untargeted, devices);
    // Every failure the hub counts is a device that rolled back, with its reason.
    assert_eq!(t.failed, view.failed.len());
    assert!(view
        .failed
        .iter()
        .all(|d| d.outcome == "rolled back" && d.reason.contains("simulated failure")));
    assert_eq!(t.failed, r.rolled_back);
    // The untargeted devices kept their generation: only targeted ones ran it.
    assert_eq!(r.reached, t.targeted());
    assert_eq!(r.reached_failing, r.rolled_back);
    assert_eq!(t.pending, 0, "targeted devices all reported");
}

/// The same rollout with no failing device goes through every wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_with_no_failures_completes_every_wave() {
    let devices = 100;
    let report = fleet::run(FleetOptions {
        rollout: Some(waves()),
        ..options(devices)
    })
    .await
    .unwrap();
    let r = rollout_of(&report);
    let view = r.view.as_ref().unwrap();
    assert_eq!(view.phase, Phase::Completed, "{}", view.state);
    assert_eq!(view.tally.committed, devices);
    assert_eq!(r.reached, devices);
    assert_eq!(r.rolled_back, 0);
    // Canary and three waves, each committed in full.
    let reach: Vec<usize> = view.waves.iter().map(|w| w.reach).collect();
    assert_eq!(reach, vec![1, 10, 50, 100]);
    assert!(view.waves.iter().all(|w| w.failed == 0 && w.pending == 0));
}
