//! `cutover apply --sink NAME`: consume the captured topics into one sink's target store
//! until SIGTERM/SIGINT (the batch in flight is finished and committed first).

use std::process::ExitCode;

use super::capture::{observe, stop_on_signal, with_reconnect};
use super::{load_config, Cli};
use crate::config::Config;
use crate::error::Result;
use crate::observe::Readiness;
use tokio::sync::watch;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sink to run (a `[[sinks]]` name).
    #[arg(long)]
    pub sink: String,
    /// Static group membership id of this instance (see sinks[].instance_id).
    #[arg(long, env = "CUTOVER_INSTANCE_ID")]
    pub instance_id: Option<String>,
}

/// One sink with reconnects, until `stop` flips or a fatal error.
pub(super) async fn sink_loop(
    cfg: &Config,
    name: &str,
    readiness: &Readiness,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    with_reconnect(&format!("sink {name}"), stop.clone(), || async {
        let sink = crate::backsync::start_sink(cfg, name, readiness.clone(), None).await?;
        sink.run(stop.clone()).await
    })
    .await
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let mut cfg = load_config(cli)?;
    cfg.sink(&args.sink)?;
    if let Some(id) = &args.instance_id {
        for s in cfg.sinks.iter_mut().filter(|s| s.name == args.sink) {
            s.instance_id = Some(id.clone());
        }
    }
    let readiness = observe(&cfg, "apply").await?;
    let stop = stop_on_signal();
    sink_loop(&cfg, &args.sink, &readiness, stop).await?;
    Ok(ExitCode::SUCCESS)
}
