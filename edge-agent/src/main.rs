//! `outpost-agent` binary: parses arguments, sets up logging, hands over to the library.

use clap::Parser;
use outpost_edge_agent::cli::{self, Cli};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Hidden first argument under which this binary acts as the runtime's create
/// helper, so a device needs one file, not two (see `outpost_runtime::helper`).
const RUNTIME_HELPER_ARG: &str = outpost_edge_agent::runtime::HELPER_SUBCOMMAND;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(RUNTIME_HELPER_ARG) {
        // Before any thread exists: libcontainer forks this process.
        return runtime_helper(&args[2..]);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli::main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime_helper(args: &[String]) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            EnvFilter::try_from_env("OUTPOST_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    match outpost_runtime::helper::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The runtime relays these lines as the create error.
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
