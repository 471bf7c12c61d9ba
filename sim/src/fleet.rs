//! The fleet benchmark: start a real hub, register N devices through its HTTP
//! API, connect N simulated devices over MQTT, let them apply their first
//! manifest, then apply a deployment (one or more rounds) and time how long it
//! takes until every device reports the new generation applied.
//!
//! Phases are timed separately (registration, connect, initial sync, each
//! deployment round), each with the hub's CPU time and memory. Device-side
//! latencies come from the simulated devices (time from the apply request until
//! the device's inbox had verified and committed the manifest and its
//! simulated runtime had "started" the apps; the event and the status follow
//! through the agent's sender); the hub-confirmed time is when
//! `GET /v1/devices` first shows every device at the new generation (polled
//! only after the devices are done, so polling does not slow the run down).

use crate::device::{self, Board, DeviceConfig, DeviceError, Identity, Provisioning};
use crate::hub::{self, HubError, HubProcess};
use crate::limits::{self, NofileChange};
use crate::procstat::{self, mib, ProcSample};
use crate::rollout::RolloutReport;
use crate::stats::{ms, secs, Summary};
use outpost_hub::api::{DeviceSummary, Stats};
use outpost_hub::client::{ApiClient, ClientError};
use outpost_hub::hub::{ApplyOutcome, ConfigOutcome};
use outpost_protocol::{DeviceIdError, KeyError, SigningKey};
use reqwest::Method;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Label every simulated device carries; the benchmark deployment selects it.
pub const FLEET_LABEL: (&str, &str) = ("fleet", "sim");

/// Which MQTT broker the hub uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Broker {
    /// The hub's embedded rumqttd (the default deployment).
    Embedded,
    /// An external Mosquitto (the hub's `mqtt.broker` mode), for comparison.
    Mosquitto,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub broker: Broker,
    pub devices: usize,
    /// Devices started per second (connect stagger).
    pub connect_rate: u32,
    /// Registration requests in flight at once.
    pub register_concurrency: usize,
    /// Deployment rounds after the initial sync (round 1 installs 5 apps, later
    /// rounds change every image digest).
    pub rounds: u32,
    pub status_interval: Option<Duration>,
    pub keep_alive: Duration,
    pub app_start: Duration,
    /// Give up on a phase after this long (the report says how far it got).
    pub phase_timeout: Duration,
    /// Binary whose `hub` subcommand is the hub CLI (normally `outpost-sim` itself).
    pub hub_exe: PathBuf,
    /// Hub data directory; a temporary one when `None`.
    pub data_dir: Option<PathBuf>,
    /// Also run an independent MQTT subscriber counting every status the broker
    /// delivers (diagnoses where statuses are lost).
    pub observer: bool,
    /// Simulated trial time of every release (the agent's `stable_secs`).
    pub trial: Duration,
    /// Share of the devices (0 to 1) that roll back every release after their
    /// first (see `rollout::failing`).
    pub failing: f64,
    /// A `[rollout]` table (as JSON): after the initial sync, apply the
    /// deployment once with it and follow the rollout (`rollout.rs`) instead
    /// of the deployment rounds.
    pub rollout: Option<serde_json::Value>,
}

/// Why the benchmark could not run at all (phase timeouts are reported instead).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot raise the open-file limit: {0}")]
    Limits(std::io::Error),
    #[error("cannot create a temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("cannot generate a device key: {0}")]
    Key(#[from] KeyError),
    #[error(transparent)]
    DeviceId(#[from] DeviceIdError),
    #[error(transparent)]
    Proc(#[from] procstat::ProcError),
    #[error(transparent)]
    Mosquitto(#[from] crate::mosquitto::MosquittoError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Rollout(#[from] crate::rollout::RolloutError),
    #[error("task failed: {0}")]
    Join(String),
}

/// Registration through `POST /v1/devices`, one request per device.
#[derive(Debug, Clone)]
pub struct RegisterReport {
    pub done: usize,
    pub wall: Duration,
    pub per_request: Summary,
    pub concurrency: usize,
    pub hub_cpu: Duration,
}

/// From the first device task started to every device subscribed.
#[derive(Debug, Clone)]
pub struct ConnectReport {
    pub ready: usize,
    pub wall: Duration,
    /// Per device: task start to the last SUBACK of its first connection.
    pub per_device: Summary,
    pub connection_errors: u64,
    pub hub_cpu: Duration,
}

/// One convergence measurement (initial sync or a deployment round).
#[derive(Debug, Clone)]
pub struct RoundReport {
    pub label: String,
    /// Devices that got a new generation.
    pub updated: usize,
    /// Duration of the `PUT /v1/deployments` call (render, sign, commit).
    pub apply_call: Option<Duration>,
    pub applied: usize,
    /// Until the last device applied (device side).
    pub devices_done: Option<Duration>,
    pub per_device: Summary,
    /// Until `GET /v1/devices` showed every device at the new generation.
    pub hub_confirmed: Option<Duration>,
    pub hub_cpu: Duration,
    pub hub_rss_kib: u64,
    /// CPU time of an external broker (Mosquitto) in this phase.
    pub broker_cpu: Option<Duration>,
    pub sim_cpu: Duration,
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct FleetReport {
    pub machine: String,
    pub devices: usize,
    pub options: FleetOptions,
    pub nofile: NofileChange,
    pub hub_pid: u32,
    pub broker_pid: Option<u32>,
    pub broker_end: Option<ProcSample>,
    pub register: Option<RegisterReport>,
    pub connect: Option<ConnectReport>,
    pub rounds: Vec<RoundReport>,
    pub hub_end: Option<ProcSample>,
    pub sim_end: Option<ProcSample>,
    pub hub_stats: Option<Stats>,
    /// Hub CPU time per thread name at the end of the run.
    pub hub_threads: Vec<(String, Duration)>,
    pub device_counters: Vec<(&'static str, u64)>,
    /// Why the run stopped early, if it did.
    pub failure: Option<String>,
    pub hub_log: PathBuf,
    /// Did every phase complete with every device? (With a rollout: did the
    /// rollout stop by itself, paused or completed, in time?)
    pub converged: bool,
    /// The rollout scenario, when one was asked for.
    pub rollout: Option<RolloutReport>,
}

/// The configuration variable one benchmark app takes; the last round sets
/// it for the whole fleet (one app's environment changes on every device).
pub const CONFIG_VAR: &str = "LOG_LEVEL";

/// The benchmark deployment: five apps shaped like the protocol's sample gateway
/// manifest; `round` changes every image digest.
pub fn deployment(round: u32) -> serde_json::Value {
    let image = |repo: &str, n: u32| {
        let byte = ((round * 8 + n) % 256) as u8;
        format!(
            "registry.example.com:5000/factory/{repo}@sha256:{}",
            format!("{byte:02x}").repeat(32)
        )
    };
    serde_json::json!({
        "name": "bench",
        "selector": { FLEET_LABEL.0: FLEET_LABEL.1 },
        "apps": [
            {
                "name": "modbus-reader",
                "image": image("modbus-reader", 1),
                "args": ["--port", "/dev/ttyUSB0", "--baud", "19200"],
                "env": { "RUST_LOG": "info", "POLL_INTERVAL_MS": "500" },
                "devices": [{ "host_path": "/dev/ttyUSB0" }],
                "memory_bytes": 32u64 << 20,
                "cpu_millis": 250
            },
            {
                "name": "mqtt-bridge",
                "image": image("mqtt-bridge", 2),
                "env": { "UPSTREAM": "mqtts://cloud.example.com:8883" },
                "config": [CONFIG_VAR],
                "volumes": [{ "name": "bridge-buffer", "path": "/var/lib/bridge" }],
                "memory_bytes": 48u64 << 20,
                "cpu_millis": 200,
                "health": { "tcp_port": 1884 }
            },
            {
                "name": "tsdb",
                "image": image("tsdb", 3),
                "command": ["/usr/bin/tsdb"],
                "args": ["--retention", "14d"],
                "volumes": [{ "name": "tsdb-data", "path": "/data" }],
                "user": "1000:1000",
                "memory_bytes": 128u64 << 20,
                "cpu_millis": 500,
                "network": "isolated"
            },
            {
                "name": "dashboard",
                "image": image("dashboard", 4),
                "ports": [{ "container": 8080 }],
                "health": { "http_path": "/healthz", "port": 8080, "interval_secs": 15 },
                "read_only_rootfs": true,
                "update": "start-first"
            },
            {
                "name": "watchdog",
                "image": image("watchdog", 5),
                "capabilities": ["CAP_SYS_TIME"],
                "restart": "on-failure",
                "max_retries": 5,
                "working_dir": "/srv"
            }
        ]
    })
}

/// Poll `done` every `every` until it returns true or `timeout` passes.
async fn wait_until(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// How many devices the hub shows at (at least) their target generation.
async fn hub_applied(api: &ApiClient, target: &HashMap<String, u64>) -> Result<usize, ClientError> {
    let devices: Vec<DeviceSummary> = api.get("/v1/devices").await?;
    Ok(devices
        .iter()
        .filter(|d| {
            let want = target.get(&d.id).copied().unwrap_or(0);
            d.applied.is_some_and(|a| a.generation >= want)
        })
        .count())
}

/// Poll the hub until it shows every device at its target; time since `t0`.
async fn hub_confirm(
    api: &ApiClient,
    target: &HashMap<String, u64>,
    t0: Instant,
    timeout: Duration,
) -> Result<Option<Duration>, ClientError> {
    loop {
        let n = hub_applied(api, target).await?;
        if n >= target.len() {
            return Ok(Some(t0.elapsed()));
        }
        if t0.elapsed() > timeout {
            tracing::warn!(
                confirmed = n,
                total = target.len(),
                "hub did not confirm every device in time"
            );
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cpu_delta(after: &Option<ProcSample>, before: &Option<ProcSample>) -> Duration {
    match (after, before) {
        (Some(a), Some(b)) => a.cpu.saturating_sub(b.cpu),
        _ => Duration::ZERO,
    }
}

/// Run the benchmark end to end.
pub async fn run(opts: FleetOptions) -> Result<FleetReport, FleetError> {
    // Devices hold one socket each; the hub (a child: it inherits the limit) holds
    // one per device in the broker plus its own.
    let nofile =
        limits::raise_nofile(opts.devices as u64 * 2 + 4096).map_err(FleetError::Limits)?;
    let tmp = tempfile::tempdir().map_err(FleetError::TempDir)?;
    let dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().join("hub"));
    let mosquitto = match opts.broker {
        Broker::Embedded => None,
        Broker::Mosquitto => {
            let mdir = dir.with_file_name("mosquitto");
            Some(crate::mosquitto::Mosquitto::start(&mdir).await?)
        }
    };
    let broker_url = mosquitto.as_ref().map(|m| format!("mqtt://{}", m.addr));
    let broker_pid = mosquitto.as_ref().map(|m| m.pid);
    let hub = HubProcess::launch(&opts.hub_exe, &dir, opts.devices + 1000, broker_url).await?;
    let mut report = FleetReport {
        machine: crate::machine::describe(),
        devices: opts.devices,
        options: opts.clone(),
        nofile,
        hub_pid: hub.pid,
        broker_pid,
        broker_end: None,
        register: None,
        connect: None,
        rounds: Vec::new(),
        hub_end: None,
        sim_end: None,
        hub_stats: None,
        hub_threads: Vec::new(),
        device_counters: Vec::new(),
        failure: None,
        hub_log: hub.log.clone(),
        converged: false,
        rollout: None,
    };
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let board = Board::new(opts.devices);
    let outcome = drive(&opts, &hub, &board, &tracker, &shutdown, &mut report).await;
    report.hub_end = procstat::sample(hub.pid).ok();
    report.hub_threads = procstat::threads(hub.pid);
    report.broker_end = broker_pid.and_then(|p| procstat::sample(p).ok());
    report.hub_stats = hub.api.get::<Stats>("/v1/stats").await.ok();
    report.sim_end = procstat::sample(std::process::id()).ok();
    let c = &board.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    report.device_counters = vec![
        ("connacks", load(&c.connacks)),
        ("connection_errors", load(&c.connection_errors)),
        ("manifests_received", load(&c.manifests_received)),
        ("manifests_accepted", load(&c.manifests_accepted)),
        ("manifests_rejected", load(&c.manifests_rejected)),
        ("keysets_rejected", load(&c.keysets_rejected)),
        ("watermarks_received", load(&c.watermarks_received)),
        ("publishes_sent", load(&c.publishes_sent)),
        ("publishes_acked", load(&c.publishes_acked)),
        ("observer_statuses", load(&c.observer_statuses)),
        ("releases_committed", load(&c.releases_committed)),
        ("releases_rolled_back", load(&c.releases_rolled_back)),
    ];
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some device tasks did not stop within 10 s");
    }
    hub.stop().await;
    if let Some(m) = mosquitto {
        m.stop().await;
    }
    if opts.data_dir.is_none() {
        // The log is in the temporary directory, which is about to go.
        report.hub_log = PathBuf::from("(removed with the temporary data directory)");
    }
    match outcome {
        Ok(()) => {}
        Err(e) => report.failure = Some(e.to_string()),
    }
    Ok(report)
}

async fn drive(
    opts: &FleetOptions,
    hub: &HubProcess,
    board: &Arc<Board>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    report: &mut FleetReport,
) -> Result<(), FleetError> {
    let n = opts.devices;
    let prov: Provisioning = hub::provisioning(&hub.data_dir)?;
    let mut identities = Vec::with_capacity(n);
    for i in 0..n {
        identities.push(Identity {
            id: format!("sim-{i:05}").parse()?,
            key: SigningKey::generate()?,
        });
    }
    let ids: Vec<String> = identities.iter().map(|d| d.id.to_string()).collect();
    let index: HashMap<String, usize> = ids
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect();

    // --- Registration ---------------------------------------------------------
    let hub_before = procstat::sample(hub.pid).ok();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let bodies: Arc<Vec<serde_json::Value>> = Arc::new(
        identities
            .iter()
            .map(|d| {
                serde_json::json!({
                    "id": d.id.as_str(),
                    "public_key": d.key.public_key().to_string(),
                    "labels": { FLEET_LABEL.0: FLEET_LABEL.1 },
                })
            })
            .collect(),
    );
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..opts.register_concurrency.max(1) {
        let api = hub.api.clone();
        let next = Arc::clone(&next);
        let bodies = Arc::clone(&bodies);
        workers.spawn(async move {
            let mut out: Vec<(usize, Duration, u64)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return Ok::<_, ClientError>(out);
                };
                let t = Instant::now();
                let rec: DeviceSummary = api.call(Method::POST, "/v1/devices", Some(body)).await?;
                out.push((
                    i,
                    t.elapsed(),
                    rec.desired.map(|g| g.generation).unwrap_or(0),
                ));
            }
        });
    }
    let mut latencies = Vec::with_capacity(n);
    let mut target = vec![0u64; n];
    let mut first_error = None;
    while let Some(res) = workers.join_next().await {
        match res {
            Ok(Ok(done)) => {
                for (i, lat, generation) in done {
                    latencies.push(lat);
                    target[i] = generation;
                }
            }
            Ok(Err(e)) => first_error = first_error.or(Some(FleetError::Api(e))),
            Err(e) => first_error = first_error.or(Some(FleetError::Join(e.to_string()))),
        }
    }
    let hub_after = procstat::sample(hub.pid).ok();
    report.register = Some(RegisterReport {
        done: latencies.len(),
        wall: started.elapsed(),
        per_request: Summary::of(latencies),
        concurrency: opts.register_concurrency.max(1),
        hub_cpu: cpu_delta(&hub_after, &hub_before),
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    tracing::info!(
        devices = n,
        secs = started.elapsed().as_secs_f64(),
        "registered"
    );

    // --- Connect --------------------------------------------------------------
    let cfg = DeviceConfig {
        broker_host: hub.mqtt.ip().to_string(),
        broker_port: hub.mqtt.port(),
        keep_alive: opts.keep_alive,
        status_interval: opts.status_interval,
        app_start: opts.app_start,
        trial: opts.trial,
    };
    let fails: Vec<bool> = (0..n)
        .map(|i| crate::rollout::failing(i, n, opts.failing))
        .collect();
    if opts.observer {
        device::spawn_observer(&cfg, Arc::clone(board), tracker, shutdown.clone());
    }
    let hub_before = procstat::sample(hub.pid).ok();
    let per_tick = (opts.connect_rate as usize / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let first_spawn_us = board.now_us();
    let mut spawned_at = Vec::with_capacity(n);
    for (i, identity) in identities.into_iter().enumerate() {
        if i % per_tick == 0 {
            tick.tick().await;
        }
        spawned_at.push(board.now_us());
        device::spawn(
            i,
            identity,
            fails[i],
            &prov,
            &cfg,
            Arc::clone(board),
            tracker,
            shutdown.clone(),
        )?;
    }
    let all_ready = wait_until(opts.phase_timeout, Duration::from_millis(20), || {
        board.ready_count() == n
    })
    .await;
    let hub_after = procstat::sample(hub.pid).ok();
    let ready: Vec<u64> = board
        .slots
        .iter()
        .map(|s| s.ready_at_us.load(Ordering::Relaxed))
        .collect();
    let last_ready = ready.iter().copied().max().unwrap_or(first_spawn_us);
    report.connect = Some(ConnectReport {
        ready: ready.iter().filter(|r| **r != 0).count(),
        wall: Duration::from_micros(last_ready.saturating_sub(first_spawn_us)),
        per_device: Summary::of(
            ready
                .iter()
                .zip(&spawned_at)
                .filter(|(r, _)| **r != 0)
                .map(|(r, s)| Duration::from_micros(r.saturating_sub(*s)))
                .collect(),
        ),
        connection_errors: board.counters.connection_errors.load(Ordering::Relaxed),
        hub_cpu: cpu_delta(&hub_after, &hub_before),
    });
    if !all_ready {
        return Err(FleetError::Join(format!(
            "only {} of {n} devices connected and subscribed within {:?} (connected now: {})",
            board.ready_count(),
            opts.phase_timeout,
            board.connected_count()
        )));
    }

    // --- Initial sync: every device applies the manifest issued at registration.
    let sync_start_us = first_spawn_us;
    let round = measure(
        "initial sync (first manifest, 0 apps; from first connect)".into(),
        None,
        n,
        &target,
        sync_start_us,
        hub,
        board,
        &ids,
        opts.phase_timeout,
        hub_before,
        report.broker_pid,
    )
    .await?;
    let ok = round.applied == n && round.hub_confirmed.is_some();
    report.rounds.push(round);
    if !ok {
        return Err(FleetError::Join("initial sync did not converge".into()));
    }

    // --- Or a rollout ---------------------------------------------------------
    if let Some(policy) = &opts.rollout {
        let r = crate::rollout::run(
            deployment(1),
            policy,
            fails.iter().filter(|f| **f).count(),
            hub,
            board,
            &target,
            &fails,
            opts.phase_timeout,
        )
        .await?;
        report.converged = r.settled();
        report.rollout = Some(r);
        return Ok(());
    }

    // --- Deployment rounds, then a fleet variable -----------------------------
    // The variable changes one app's environment on every device (the
    // benchmark's `mqtt-bridge` takes it): a configuration change at scale.
    enum Step {
        Deploy(u32),
        FleetVariable,
    }
    let mut steps: Vec<Step> = (1..=opts.rounds).map(Step::Deploy).collect();
    if opts.rounds > 0 {
        steps.push(Step::FleetVariable);
    }
    for step in steps {
        let hub_before = procstat::sample(hub.pid).ok();
        let t0_us = board.now_us();
        let t0 = Instant::now();
        let (label, updated) = match step {
            Step::Deploy(r) => {
                let outcome: ApplyOutcome = hub
                    .api
                    .call(Method::PUT, "/v1/deployments", Some(&deployment(r)))
                    .await?;
                let label = if r == 1 {
                    "deploy round 1 (install 5 apps)".to_string()
                } else {
                    format!("deploy round {r} (update 5 images)")
                };
                (label, outcome.updated)
            }
            Step::FleetVariable => {
                let change = serde_json::json!({ "set": { CONFIG_VAR: "debug" } });
                let outcome: ConfigOutcome = hub
                    .api
                    .call(Method::PATCH, "/v1/config", Some(&change))
                    .await?;
                (
                    format!("fleet variable ({CONFIG_VAR}: 1 app's env)"),
                    outcome.updated,
                )
            }
        };
        let apply_call = t0.elapsed();
        for u in &updated {
            if let Some(&i) = index.get(u.device.as_str()) {
                target[i] = u.generation;
            }
        }
        let round = measure(
            label.clone(),
            Some(apply_call),
            updated.len(),
            &target,
            t0_us,
            hub,
            board,
            &ids,
            opts.phase_timeout,
            hub_before,
            report.broker_pid,
        )
        .await?;
        let ok = round.applied == n && round.hub_confirmed.is_some();
        report.rounds.push(round);
        if !ok {
            return Err(FleetError::Join(format!("{label} did not converge")));
        }
    }
    report.converged = true;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    label: String,
    apply_call: Option<Duration>,
    updated: usize,
    target: &[u64],
    t0_us: u64,
    hub: &HubProcess,
    board: &Board,
    ids: &[String],
    timeout: Duration,
    hub_before: Option<ProcSample>,
    broker_pid: Option<u32>,
) -> Result<RoundReport, FleetError> {
    let n = target.len();
    let sim_before = procstat::sample(std::process::id()).ok();
    let broker_before = broker_pid.and_then(|p| procstat::sample(p).ok());
    // `t0` as an Instant, for the hub-confirmed time.
    let since_t0 = Duration::from_micros(board.now_us().saturating_sub(t0_us));
    let t0 = Instant::now()
        .checked_sub(since_t0)
        .unwrap_or_else(Instant::now);
    wait_until(timeout, Duration::from_millis(10), || {
        board.applied_count(target) == n
    })
    .await;
    let applied = board.applied_count(target);
    let lat: Vec<Duration> = board
        .slots
        .iter()
        .zip(target)
        .filter(|(s, t)| s.applied_generation.load(Ordering::Relaxed) >= **t)
        .map(|(s, _)| {
            Duration::from_micros(
                s.applied_at_us
                    .load(Ordering::Relaxed)
                    .saturating_sub(t0_us),
            )
        })
        .collect();
    let per_device = Summary::of(lat);
    let devices_done = (applied == n).then_some(per_device.max);
    let targets: HashMap<String, u64> = ids.iter().cloned().zip(target.iter().copied()).collect();
    let hub_confirmed = if applied == n {
        hub_confirm(&hub.api, &targets, t0, timeout + since_t0).await?
    } else {
        None
    };
    let hub_after = procstat::sample(hub.pid).ok();
    let sim_after = procstat::sample(std::process::id()).ok();
    let broker_after = broker_pid.and_then(|p| procstat::sample(p).ok());
    let round = RoundReport {
        label,
        updated,
        apply_call,
        applied,
        devices_done,
        per_device,
        hub_confirmed,
        hub_cpu: cpu_delta(&hub_after, &hub_before),
        hub_rss_kib: hub_after.map(|s| s.rss_kib).unwrap_or(0),
        broker_cpu: broker_pid.map(|_| cpu_delta(&broker_after, &broker_before)),
        sim_cpu: cpu_delta(&sim_after, &sim_before),
    };
    tracing::info!(round = %round.label, applied, total = n, "round measured");
    Ok(round)
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map(secs).unwrap_or_else(|| "not reached".into())
}

impl fmt::Display for FleetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(f, "# outpost-sim fleet: {} devices", self.devices)?;
        writeln!(f)?;
        writeln!(f, "machine: {}", self.machine)?;
        let broker = match (o.broker, self.broker_pid) {
            (Broker::Embedded, _) => "embedded rumqttd inside the hub".to_string(),
            (Broker::Mosquitto, Some(p)) => format!("external Mosquitto, pid {p}"),
            (Broker::Mosquitto, None) => "external Mosquitto".to_string(),
        };
        writeln!(
            f,
            "hub: child process pid {} (outpost-hub serve); broker: {broker}; devices: {} in this process, each on the agent's link, inbox and sender (redb in memory, simulated runtime)",
            self.hub_pid, self.devices
        )?;
        writeln!(
            f,
            "options: connect rate {}/s, registration concurrency {}, keep-alive {:?}, status every {}, simulated start {:?}/app",
            o.connect_rate,
            o.register_concurrency,
            o.keep_alive,
            o.status_interval.map(|d| format!("{d:?}")).unwrap_or_else(|| "never (on change only)".into()),
            o.app_start
        )?;
        writeln!(
            f,
            "RLIMIT_NOFILE: {}/{} (soft/hard) raised to {}/{}",
            self.nofile.before_soft, self.nofile.before_hard, self.nofile.soft, self.nofile.hard
        )?;
        writeln!(f)?;
        if let Some(r) = &self.register {
            writeln!(
                f,
                "registration (POST /v1/devices, {} in flight): {}/{} devices in {} = {:.0} devices/s; per request p50 {} p95 {} max {}; hub CPU {}",
                r.concurrency,
                r.done,
                self.devices,
                secs(r.wall),
                r.done as f64 / r.wall.as_secs_f64().max(1e-9),
                ms(r.per_request.p50),
                ms(r.per_request.p95),
                ms(r.per_request.max),
                secs(r.hub_cpu)
            )?;
        }
        if let Some(c) = &self.connect {
            writeln!(
                f,
                "connect (CONNACK + SUBACK): {}/{} devices in {}; per device p50 {} p95 {} max {}; connection errors {}; hub CPU {}",
                c.ready,
                self.devices,
                secs(c.wall),
                ms(c.per_device.p50),
                ms(c.per_device.p95),
                ms(c.per_device.max),
                c.connection_errors,
                secs(c.hub_cpu)
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "| phase | devices updated | apply call | applied | p50 | p95 | max (all devices applied) | hub confirmed | hub CPU | hub RSS | broker CPU | sim CPU |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        for r in &self.rounds {
            writeln!(
                f,
                "| {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.label,
                r.updated,
                r.apply_call.map(ms).unwrap_or_else(|| "-".into()),
                r.applied,
                self.devices,
                ms(r.per_device.p50),
                ms(r.per_device.p95),
                opt_secs(r.devices_done),
                opt_secs(r.hub_confirmed),
                secs(r.hub_cpu),
                mib(r.hub_rss_kib),
                r.broker_cpu.map(secs).unwrap_or_else(|| "(in hub)".into()),
                secs(r.sim_cpu),
            )?;
        }
        writeln!(f)?;
        if let Some(h) = &self.hub_end {
            writeln!(
                f,
                "hub at the end: RSS {}, peak RSS {}, CPU time {} (whole run, incl. init of the store)",
                mib(h.rss_kib),
                mib(h.hwm_kib),
                secs(h.cpu)
            )?;
        }
        if !self.hub_threads.is_empty() {
            let top: Vec<String> = self
                .hub_threads
                .iter()
                .take(6)
                .map(|(name, cpu)| format!("{name} {}", secs(*cpu)))
                .collect();
            writeln!(f, "hub CPU by thread name: {}", top.join(", "))?;
        }
        if let Some(b) = &self.broker_end {
            writeln!(
                f,
                "broker (Mosquitto) at the end: RSS {}, peak RSS {}, CPU time {}",
                mib(b.rss_kib),
                mib(b.hwm_kib),
                secs(b.cpu)
            )?;
        }
        if let Some(s) = &self.sim_end {
            writeln!(
                f,
                "simulator at the end: RSS {}, peak RSS {}, CPU time {}",
                mib(s.rss_kib),
                mib(s.hwm_kib),
                secs(s.cpu)
            )?;
        }
        let counters: Vec<String> = self
            .device_counters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(f, "device counters: {}", counters.join(" "))?;
        if let Some(s) = &self.hub_stats {
            let c: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(
                f,
                "hub counters: {} manifests_published={} republish_all={} publish_errors={}",
                c.join(" "),
                s.manifests_published,
                s.republish_all,
                s.publish_errors
            )?;
        }
        if let Some(r) = &self.rollout {
            writeln!(f, "{r}")?;
        }
        match &self.failure {
            None => writeln!(f, "result: converged = {}", self.converged)?,
            Some(e) => writeln!(
                f,
                "result: STOPPED EARLY: {e} (hub log: {})",
                self.hub_log.display()
            )?,
        }
        Ok(())
    }
}
