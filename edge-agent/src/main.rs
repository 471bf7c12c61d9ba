//! `outpost-agent` binary: parses arguments and hands over to the library.

use clap::Parser;
use std::process::ExitCode;

/// Outpost edge agent: verifies manifests and runs containers.
#[derive(Parser, Debug)]
#[command(name = "outpost-agent", version, about)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("outpost-agent: no subcommands yet");
    ExitCode::SUCCESS
}
