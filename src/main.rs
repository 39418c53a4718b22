//! `cutover` binary: parse the command line and hand over to [`cutover::cli`].

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cutover::cli::Cli::parse();
    cutover::cli::run(cli).await
}
