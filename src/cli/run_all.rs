//! `cutover run`: capture and every configured sink in one process (small deployments, the
//! demo). Each part keeps its own guarantees; the first fatal error stops them all.

use std::process::ExitCode;

use super::apply::sink_loop;
use super::capture::{capture_loop, observe, stop_on_signal};
use super::{load_config, Cli};
use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run only these sinks (default: all).
    #[arg(long = "sink")]
    pub sinks: Vec<String>,
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?;
    let names: Vec<String> = if args.sinks.is_empty() {
        cfg.sinks.iter().map(|s| s.name.clone()).collect()
    } else {
        for s in &args.sinks {
            cfg.sink(s)?;
        }
        args.sinks.clone()
    };
    let readiness = observe(&cfg, "run").await?;
    let signal = stop_on_signal();
    // One internal stop: a signal, or any part failing fatally.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    {
        let mut signal = signal.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let _ = signal.changed().await;
            let _ = stop_tx.send(true);
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (cfg, readiness, stop) = (cfg.clone(), readiness.clone(), stop.clone());
        tasks.spawn(async move {
            (
                "capture".to_string(),
                capture_loop(&cfg, &readiness, stop).await,
            )
        });
    }
    for name in names {
        let (cfg, readiness, stop) = (cfg.clone(), readiness.clone(), stop.clone());
        tasks.spawn(async move {
            let r = sink_loop(&cfg, &name, &readiness, stop).await;
            (format!("sink {name}"), r)
        });
    }
    let mut first: Option<Error> = None;
    while let Some(joined) = tasks.join_next().await {
        let (what, result) = joined.map_err(|e| Error::internal(format!("task panicked: {e}")))?;
        if let Err(e) = result {
            tracing::error!(part = %what, error = %e, "stopping everything");
            let _ = stop_tx.send(true);
            first.get_or_insert(e.context(what));
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}
