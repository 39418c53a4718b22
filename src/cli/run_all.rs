//! `cutover run`: capture, the monitor and every configured sink in one process (small
//! deployments, the demo). Each part keeps its own guarantees; the first fatal error stops them
//! all. `cutover backsync` runs the same three parts for the reverse direction.

use std::process::ExitCode;

use super::apply::sink_loop;
use super::capture::{capture_loop, observe, stop_on_signal};
use super::{load_config, Cli};
use crate::config::Config;
use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run only these sinks (default: all).
    #[arg(long = "sink")]
    pub sinks: Vec<String>,
    #[command(flatten)]
    pub gap: super::capture::GapArgs,
    /// Static group membership for every sink of this process: sink S joins as `<ID>.<S>`
    /// (a restart takes its partitions back at once; see docs/APPLY.md). Stable per process,
    /// never shared by two running processes (e.g. a StatefulSet pod name).
    #[arg(long, env = "CUTOVER_INSTANCE_ID")]
    pub instance_id: Option<String>,
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let mut cfg = load_config(cli)?;
    if let Some(id) = &args.instance_id {
        for s in cfg.sinks.iter_mut() {
            s.instance_id = Some(format!("{id}.{}", s.name));
        }
    }
    let names: Vec<String> = if args.sinks.is_empty() {
        cfg.sinks.iter().map(|s| s.name.clone()).collect()
    } else {
        for s in &args.sinks {
            cfg.sink(s)?;
        }
        args.sinks.clone()
    };
    run_pipeline(&cfg, names, "run", args.gap.policy()).await
}

/// Capture, monitor and `sinks` of `cfg` until a signal or the first fatal error.
pub(super) async fn run_pipeline(
    cfg: &Config,
    sinks: Vec<String>,
    command: &'static str,
    gap: crate::capture::setup::GapPolicy,
) -> Result<ExitCode> {
    let readiness = observe(cfg, command).await?;
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
                capture_loop(&cfg, &readiness, stop, gap).await,
            )
        });
    }
    {
        let (cfg, readiness, stop) = (cfg.clone(), readiness.clone(), stop.clone());
        tasks.spawn(async move {
            (
                "monitor".to_string(),
                crate::monitor::run(&cfg, &readiness, stop).await,
            )
        });
    }
    // Reconcile compares legacy with the forward sinks' targets: part of `run` when enabled.
    if command == "run" && cfg.reconcile.enabled {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        tasks.spawn(async move {
            (
                "reconcile".to_string(),
                super::reconcile::reconcile_loop(&cfg, stop).await,
            )
        });
    }
    for name in sinks {
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
