//! `outpost-hub` binary: parses arguments and hands over to the library.

use clap::Parser;
use std::process::ExitCode;

/// Outpost hub: holds desired state and publishes signed manifests.
#[derive(Parser, Debug)]
#[command(name = "outpost-hub", version, about)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("outpost-hub: no subcommands yet");
    ExitCode::SUCCESS
}
