//! `cutover monitor`: only the lag and slot monitor, serving its gauges on the observe port
//! until SIGTERM/SIGINT. The production shape: it needs no slot and joins no group, so it keeps
//! reporting slot growth and every sink's lag while capture or a sink is down.

use std::process::ExitCode;

use super::capture::{observe, stop_on_signal};
use super::{load_config, Cli};
use crate::error::Result;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(cli: &Cli, _args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?;
    let readiness = observe(&cfg, "monitor").await?;
    let stop = stop_on_signal();
    crate::monitor::run(&cfg, &readiness, stop).await?;
    Ok(ExitCode::SUCCESS)
}
