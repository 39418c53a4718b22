//! `cutover reconcile [--once] [--sink NAME]`: compare legacy with each sink's target pass
//! after pass (a service until SIGTERM/SIGINT), keeping the discrepancy ledger and the
//! `cutover_reconcile_*` metrics; `cutover reconcile report [--json] [--all]`: what differs,
//! since when. See `crate::reconcile`.
//!
//! Exit codes: the service 0 on a signal, 1 on an error; `--once` 0 when no table it compared
//! has an open discrepancy after its pass, 3 otherwise; `report` 0 without open
//! discrepancies, 3 with.

use std::process::ExitCode;

use clap::Subcommand;

use super::capture::{observe, stop_on_signal, with_reconnect};
use super::{load_config, Cli};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::reconcile::ledger;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<ReconcileCommand>,
    /// One pass of every chosen sink, then exit (3 if differences remain open).
    #[arg(long)]
    pub once: bool,
    /// Reconcile only this sink (default: reconcile.sinks, or every sink).
    #[arg(long)]
    pub sink: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ReconcileCommand {
    /// The discrepancy ledger: open discrepancies (every row with --all), oldest first.
    Report {
        #[arg(long)]
        sink: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let mut cfg = load_config(cli)?;
    if let Some(s) = &args.sink {
        cfg.sink_at(s).map_err(|e| e.context("--sink"))?;
        cfg.reconcile.sinks = vec![s.clone()];
    }
    if let Some(ReconcileCommand::Report { sink, all, json }) = &args.command {
        return report(&cfg, sink.as_deref(), *all, *json).await;
    }
    if args.once {
        let (_tx, stop) = tokio::sync::watch::channel(false);
        let open = crate::reconcile::run(&cfg, stop, true).await?;
        println!("reconcile pass done: {open} open discrepancies");
        return Ok(if open == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        });
    }
    let readiness = observe(&cfg, "reconcile").await?;
    readiness.set("reconcile", true);
    let stop = stop_on_signal();
    reconcile_loop(&cfg, stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// The reconcile service with reconnects (a database restart is waited out), until `stop`.
pub(super) async fn reconcile_loop(
    cfg: &Config,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    with_reconnect("reconcile", stop.clone(), || async {
        crate::reconcile::run(cfg, stop.clone(), false)
            .await
            .map(|_| ())
    })
    .await
}

async fn report(cfg: &Config, sink: Option<&str>, all: bool, json: bool) -> Result<ExitCode> {
    let sinks: Vec<usize> = match sink {
        Some(s) => vec![cfg.sink_at(s).map_err(|e| e.context("--sink"))?.0],
        None => crate::reconcile::service::chosen(cfg),
    };
    let mut rows = Vec::new();
    for i in sinks {
        let dst = crate::database::Endpoint::of_sink(&cfg.sinks[i], i)
            .connect()
            .await?;
        crate::state::ensure_reconcile(&dst).await?;
        rows.extend(ledger::list(&dst, Some(&cfg.sinks[i].name), all).await?);
    }
    let open = rows.iter().filter(|r| r.resolved_at.is_none()).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| Error::internal(e.to_string()))?
        );
    } else if rows.is_empty() {
        println!("no discrepancies");
    } else {
        println!(
            "{:<10} {:<28} {:<10} {:<22} {:<22} {:<20} key",
            "sink", "table", "kind", "first seen", "last seen", "resolved"
        );
        for r in &rows {
            let resolved = match (&r.resolved_at, &r.resolution) {
                (Some(at), Some(how)) => format!("{at} {how}"),
                _ => "open".into(),
            };
            println!(
                "{:<10} {:<28} {:<10} {:<22} {:<22} {:<20} {}",
                r.sink, r.table, r.kind, r.first_seen, r.last_seen, resolved, r.key
            );
        }
        println!("{open} open discrepancies");
    }
    Ok(if open == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
