//! The `canaryd` binary: parse flags, set up logging, run.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = canaryd::cli::Cli::parse();
    canaryd::cli::init_logging(cli.log_format, cli.log_level.as_deref());
    canaryd::cli::run(cli)
}
