//! `cutover phase show | set | history`: the per-table cutover phases (forward → dual → reverse,
//! and back for a rollback), gated and audited. See `crate::backsync` for what each phase means.
//!
//! `phase set` exit codes: 0 changed, 3 refused by the gate (nothing changed; the failed checks
//! are printed), 1 error, 2 bad configuration or arguments.

use std::process::ExitCode;

use clap::Subcommand;

use super::{load_config, Cli};
use crate::backsync::gate::{self, forward_mapping};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::state::phases::{self, Change, Phase};
use tokio_postgres::Client;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: PhaseCommand,
}

#[derive(Debug, Subcommand)]
pub enum PhaseCommand {
    /// Every migrated table's phase and owner.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Move one table to another phase. Refused unless both directions are caught up and both
    /// sides hold the same rows (and, into dual, REPLICA IDENTITY FULL on both sides).
    Set {
        /// The legacy table, schema.table.
        #[arg(long)]
        table: String,
        /// forward, dual or reverse.
        #[arg(long)]
        to: String,
        /// Change even if checks fail (needs --reason; audited as forced).
        #[arg(long)]
        force: bool,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The audit trail of phase changes.
    History {
        #[arg(long)]
        table: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?;
    if cfg.backsync.is_none() {
        return Err(Error::config(
            "backsync: not configured; phases need a [backsync] section",
        ));
    }
    let mut legacy = crate::database::Endpoint::source(&cfg).connect().await?;
    crate::state::ensure_control(&legacy).await?;
    match &args.command {
        PhaseCommand::Show { json } => show(&cfg, &legacy, *json).await,
        PhaseCommand::History { table, json } => {
            history(&cfg, &legacy, table.as_deref(), *json).await
        }
        PhaseCommand::Set {
            table,
            to,
            force,
            reason,
            json,
        } => {
            let to = Phase::parse(to)?;
            set(
                &cfg,
                &mut legacy,
                table,
                to,
                *force,
                reason.as_deref(),
                *json,
            )
            .await
        }
    }
}

/// `phase show`: every migrated table with its phase and owner.
async fn show(cfg: &Config, legacy: &Client, json: bool) -> Result<ExitCode> {
    let rows = phases::all(legacy, cfg).await?;
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(t, p)| serde_json::json!({"table": t, "phase": p, "owner": p.owner().as_str()}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("{:<40} {:<8} OWNER (source of truth)", "TABLE", "PHASE");
        for (t, p) in rows {
            println!("{t:<40} {:<8} {}", p.as_str(), p.owner().as_str());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `phase history`: the audit trail, with each change's checks.
async fn history(
    cfg: &Config,
    legacy: &Client,
    table: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let h = phases::history(legacy, &cfg.name, table).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&h).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    for e in h {
        println!(
            "{}  {}  {} -> {}  by {}{}{}",
            e.changed_at,
            e.table,
            e.from,
            e.to,
            e.changed_by,
            if e.forced { "  FORCED" } else { "" },
            e.reason
                .map(|r| format!("  reason: {r}"))
                .unwrap_or_default()
        );
        if let Some(checks) = e.checks["checks"].as_array() {
            for c in checks {
                println!(
                    "      {} {}: {}",
                    if c["ok"] == true { "ok  " } else { "FAIL" },
                    c["name"].as_str().unwrap_or(""),
                    c["detail"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `phase set`: run the gate, print its checks, and record the change (refused with exit
/// code 3 when a check fails and `--force` is not given).
async fn set(
    cfg: &Config,
    legacy: &mut Client,
    table: &str,
    to: Phase,
    force: bool,
    reason: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    if force && reason.is_none_or(|r| r.trim().is_empty()) {
        return Err(Error::config(
            "--force needs --reason \"why\" (it is audited)",
        ));
    }
    forward_mapping(cfg, table)?;
    let from = phases::load(legacy, &cfg.name)
        .await?
        .get(table)
        .copied()
        .unwrap_or(Phase::Forward);
    if from == to {
        return Err(Error::config(format!(
            "{table} is already in {}",
            to.as_str()
        )));
    }
    let report = gate::evaluate(cfg, table, from, to).await?;
    let passed = report.passed();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        for c in &report.checks {
            println!(
                "{} {}: {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            );
        }
    }
    if !passed && !force {
        eprintln!(
            "refused: {table} stays in {} ({}); fix the failed checks or use --force --reason",
            from.as_str(),
            report.failures().join("; ")
        );
        return Ok(ExitCode::from(3));
    }
    let change = Change {
        table: table.to_string(),
        from,
        to,
        changed_by: super::operator(),
        forced: !passed,
        reason: reason.map(str::to_string),
        checks: serde_json::to_value(&report).unwrap_or_default(),
    };
    phases::record(legacy, &cfg.name, &change).await?;
    tracing::info!(table = %table, from = from.as_str(), to = to.as_str(), forced = change.forced, "phase changed");
    if !json {
        println!(
            "{table}: {} -> {}{} (owner now {})",
            from.as_str(),
            to.as_str(),
            if change.forced { " FORCED" } else { "" },
            to.owner().as_str()
        );
    }
    Ok(ExitCode::SUCCESS)
}
