//! `outpost-sim`: the fleet simulator and benchmark commands. Parses arguments,
//! sets up tracing and hands over to the library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use outpost_sim::{agent, fleet, machine, procstat, stats};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Outpost fleet simulator and benchmarks (numbers for docs/benchmarks.md).
#[derive(Parser, Debug)]
#[command(name = "outpost-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a real hub, N simulated devices, apply a deployment, time convergence.
    Fleet {
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// MQTT broker: the hub's embedded rumqttd, or an external Mosquitto.
        #[arg(long, value_enum, default_value_t = fleet::Broker::Embedded)]
        broker: fleet::Broker,
        /// Devices started per second (connect stagger).
        #[arg(long, default_value_t = 2000)]
        connect_rate: u32,
        /// Registration requests in flight.
        #[arg(long, default_value_t = 16)]
        register_concurrency: usize,
        /// Deployment rounds after the initial sync.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// Seconds between periodic status reports (0 = only on change/connect).
        #[arg(long, default_value_t = 30)]
        status_interval: u64,
        /// MQTT keep-alive, seconds (the agent uses 15).
        #[arg(long, default_value_t = 15)]
        keep_alive: u64,
        /// Simulated container start time per app, milliseconds.
        #[arg(long, default_value_t = 0)]
        app_start_ms: u64,
        /// Give up on a phase after this many seconds.
        #[arg(long, default_value_t = 300)]
        phase_timeout: u64,
        /// Keep the hub's data directory (and its log) here instead of a temp dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Also count statuses with an independent MQTT subscriber.
        #[arg(long)]
        observer: bool,
        /// Simulated trial time of each release, milliseconds.
        #[arg(long, default_value_t = 0)]
        trial_ms: u64,
        /// Share of devices (0 to 1) that roll back every release after their first.
        #[arg(long, default_value_t = 0.0)]
        failing: f64,
        /// Follow one rollout instead of the deployment rounds: the deployment's
        /// `[rollout]` table as JSON, e.g.
        /// '{"canary":1,"waves":["10%","50%","100%"],"max_failure_ratio":0.02}'.
        #[arg(long)]
        rollout: Option<String>,
    },
    /// Run the hub CLI (`outpost-hub`) in this binary; used by `fleet` to start
    /// the hub as a separate process.
    #[command(disable_help_flag = true)]
    Hub {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Memory footprint of a running agent (and size of its binary).
    Footprint {
        /// Pid of the running `outpost-agent`.
        #[arg(long)]
        pid: u32,
        /// The agent binary, to report its size as built and stripped.
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Bytes a running agent writes to storage, over a window, extrapolated per day.
    Wear {
        #[arg(long)]
        pid: u32,
        /// Window length in seconds (3600 = one hour).
        #[arg(long, default_value_t = 3600)]
        secs: u64,
        /// Seconds between readings.
        #[arg(long, default_value_t = 60)]
        every: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Hub { .. } => "warn",
        _ => "info,rumqttc=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Hub { args } => {
            // As `outpost-hub` does: the numbers must be the hub's own.
            outpost_hub::memory::limit_malloc_arenas();
            let hub_cli = outpost_hub::cli::Cli::try_parse_from(
                std::iter::once("outpost-hub".to_string()).chain(args),
            )
            .unwrap_or_else(|e| e.exit());
            runtime()?.block_on(outpost_hub::cli::run(hub_cli))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fleet {
            devices,
            broker,
            connect_rate,
            register_concurrency,
            rounds,
            status_interval,
            keep_alive,
            app_start_ms,
            phase_timeout,
            data_dir,
            observer,
            trial_ms,
            failing,
            rollout,
        } => {
            if devices == 0 {
                bail!("--devices must be at least 1");
            }
            if !(0.0..=1.0).contains(&failing) {
                bail!("--failing must be between 0 and 1, got {failing}");
            }
            let rollout = rollout
                .map(|text| {
                    serde_json::from_str::<serde_json::Value>(&text)
                        .with_context(|| format!("--rollout is not JSON: {text}"))
                })
                .transpose()?;
            let opts = fleet::FleetOptions {
                broker,
                devices,
                connect_rate: connect_rate.max(1),
                register_concurrency,
                rounds,
                status_interval: (status_interval > 0)
                    .then(|| Duration::from_secs(status_interval)),
                keep_alive: Duration::from_secs(keep_alive.max(1)),
                app_start: Duration::from_millis(app_start_ms),
                phase_timeout: Duration::from_secs(phase_timeout),
                hub_exe: std::env::current_exe().context("cannot find this executable")?,
                data_dir,
                observer,
                trial: Duration::from_millis(trial_ms),
                failing,
                rollout,
            };
            let report = runtime()?.block_on(fleet::run(opts))?;
            println!("{report}");
            Ok(if report.converged {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Footprint { pid, binary } => {
            println!("machine: {}", machine::describe());
            let f = agent::footprint(pid)?;
            println!(
                "agent pid {pid}: RSS {} (peak {}), CPU time so far {}",
                procstat::mib(f.agent.rss_kib),
                procstat::mib(f.agent.hwm_kib),
                stats::secs(f.agent.cpu)
            );
            println!(
                "  threads: {}",
                std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|d| d.count())
                    .unwrap_or(0)
            );
            for (mapping, kib) in procstat::rss_by_mapping(pid)?.iter().take(8) {
                println!("  RSS {:>9} in {mapping}", procstat::mib(*kib));
            }
            for (c, name, rss) in &f.children {
                println!("  child pid {c} ({name}): RSS {}", procstat::mib(*rss));
            }
            if let Some(b) = binary {
                let (built, stripped) = agent::binary_size(&b)?;
                println!(
                    "binary {}: {:.2} MiB as built, {:.2} MiB stripped",
                    b.display(),
                    built as f64 / 1048576.0,
                    stripped as f64 / 1048576.0
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Wear { pid, secs, every } => {
            println!("machine: {}", machine::describe());
            let w = agent::wear(
                pid,
                Duration::from_secs(secs),
                Duration::from_secs(every.max(1)),
                |t, b| eprintln!("  {:>6.0} s: {b} bytes written", t.as_secs_f64()),
            )?;
            println!(
                "agent pid {pid}: {} bytes written in {} ({} readings) = {:.1} KiB/day extrapolated ({:.3} MiB/day)",
                w.written,
                stats::secs(w.window),
                w.readings,
                w.per_day / 1024.0,
                w.per_day / 1048576.0
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
