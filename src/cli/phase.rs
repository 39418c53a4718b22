//! `cutover phase show | set | history`: the per-table cutover phases (forward → dual → reverse,
//! and back for a rollback), gated and audited. See `crate::backsync` for what each phase means.
//!
//! `phase set` exit codes: 0 changed, 3 refused by the gate (nothing changed; the failed checks
//! are printed), 4 a share step recorded whose hand-over was not confirmed in time, 1 error,
//! 2 bad configuration or arguments.

use std::process::ExitCode;

use clap::Subcommand;

use super::{load_config, Cli};
use crate::backsync::gate::{self, forward_mapping};
use crate::backsync::{handover, owner};
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
        /// forward, dual, split or reverse.
        #[arg(long)]
        to: String,
        /// Into or within split: the new store's share of the keys, in percent (two decimals).
        #[arg(long)]
        new_share: Option<f64>,
        /// How long a share step waits for the old owner's direction to drain (the hand-over).
        #[arg(long, default_value_t = 300)]
        handover_timeout_secs: u64,
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
            new_share,
            handover_timeout_secs,
            force,
            reason,
            json,
        } => {
            let to = Phase::parse(to)?;
            let target = Target {
                phase: to,
                share_bp: target_share(to, *new_share)?,
                handover_timeout: std::time::Duration::from_secs(*handover_timeout_secs),
            };
            set(
                &cfg,
                &mut legacy,
                table,
                &target,
                *force,
                reason.as_deref(),
                *json,
            )
            .await
        }
    }
}

/// Where `phase set` goes: a phase and the new store's share in basis points (forward 0,
/// reverse 10,000, split the given share; none for dual).
struct Target {
    phase: Phase,
    share_bp: Option<u32>,
    handover_timeout: std::time::Duration,
}

fn target_share(to: Phase, new_share: Option<f64>) -> Result<Option<u32>> {
    match (to, new_share) {
        (Phase::Split, None) => Err(Error::config("--to split needs --new-share PERCENT")),
        (Phase::Split, Some(s)) if !(0.0..=100.0).contains(&s) => {
            Err(Error::config("--new-share: must be between 0 and 100"))
        }
        (Phase::Split, Some(s)) if ((s * 100.0).round() - s * 100.0).abs() > 1e-6 => Err(
            Error::config("--new-share: at most two decimals (shares are basis points)"),
        ),
        (Phase::Split, Some(s)) => Ok(Some(owner::share_bp(s))),
        (_, Some(_)) => Err(Error::config("--new-share: only with --to split")),
        (Phase::Forward, None) => Ok(Some(0)),
        (Phase::Reverse, None) => Ok(Some(owner::BUCKETS)),
        (Phase::Dual, None) => Ok(None),
    }
}

/// The new store's share of `table` now (basis points): forward 0, reverse all, split its
/// last step; `None` in dual.
fn share_now(phase: Phase, steps: Option<&Vec<phases::Step>>) -> Option<u32> {
    match phase {
        Phase::Forward => Some(0),
        Phase::Reverse => Some(owner::BUCKETS),
        Phase::Split => Some(steps.and_then(|s| s.last()).map_or(0, |s| s.share_bp)),
        Phase::Dual => None,
    }
}

/// `phase show`: every migrated table with its phase, owner, share and leaks.
async fn show(cfg: &Config, legacy: &Client, json: bool) -> Result<ExitCode> {
    let rows = phases::all(legacy, cfg).await?;
    let steps = phases::steps(legacy, &cfg.name).await?;
    // Leaks written on legacy are recorded by the forward sink in the new store, and those
    // written on the new store by the back-sync in legacy (keyed by the target table there).
    let on_new = match crate::database::Endpoint::new_store(cfg)?.connect().await {
        Ok(n) => phases::leaks(&n).await?,
        Err(_) => Default::default(),
    };
    let on_legacy = phases::leaks(legacy).await?;
    let mut out = Vec::new();
    for (t, p) in &rows {
        let share = share_now(*p, steps.get(t));
        let owner = match (p, share) {
            (Phase::Split, Some(bp)) => format!(
                "new {:.2} % / legacy {:.2} %",
                bp as f64 / 100.0,
                100.0 - bp as f64 / 100.0
            ),
            _ => p.owner().as_str().to_string(),
        };
        let leaked_legacy: i64 = forward_mapping(cfg, t)
            .map(|m| m.targets())
            .unwrap_or_default()
            .iter()
            .filter_map(|target| on_new.get(&target.to_string()))
            .sum();
        let leaked_new = on_legacy.get(t).copied().unwrap_or(0);
        out.push((t.clone(), *p, share, owner, leaked_legacy, leaked_new));
    }
    if json {
        let v: Vec<serde_json::Value> = out
            .iter()
            .map(|(t, p, share, owner, ll, ln)| {
                serde_json::json!({"table": t, "phase": p, "owner": owner,
                    "new_share_pct": share.map(|bp| bp as f64 / 100.0),
                    "leaks": {"legacy": ll, "new": ln}})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{:<40} {:<8} {:<34} LEAKS (legacy/new)",
            "TABLE", "PHASE", "OWNER (source of truth)"
        );
        for (t, p, _, owner, ll, ln) in out {
            println!("{t:<40} {:<8} {owner:<34} {ll}/{ln}", p.as_str());
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
/// code 3 when a check fails and `--force` is not given). A share step (into, within or out
/// of split) records both sides' positions and then waits for the hand-over
/// (`backsync::handover`); exit 4 when it is not confirmed in time.
async fn set(
    cfg: &Config,
    legacy: &mut Client,
    table: &str,
    target: &Target,
    force: bool,
    reason: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let to = target.phase;
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
    let steps = phases::steps(legacy, &cfg.name).await?;
    let share_before = share_now(from, steps.get(table));
    if matches!(
        (from, to),
        (Phase::Dual, Phase::Split) | (Phase::Split, Phase::Dual)
    ) {
        return Err(Error::config(format!(
            "{table}: split and dual do not mix (in split each key has one owner; in dual both sides write): go through forward or reverse"
        )));
    }
    if from == to && (to != Phase::Split || share_before == target.share_bp) {
        return Err(Error::config(format!(
            "{table} is already in {}{}",
            to.as_str(),
            target
                .share_bp
                .filter(|_| to == Phase::Split)
                .map(|bp| format!(" at {:.2} %", bp as f64 / 100.0))
                .unwrap_or_default()
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
    // A share step: into, within or out of split. Its position on each side is where each
    // direction switches owners (the hand-over).
    let step = if to == Phase::Split || from == Phase::Split {
        let new = crate::database::Endpoint::new_store(cfg)?.connect().await?;
        Some(phases::Step {
            share_bp: target.share_bp.unwrap_or(0),
            legacy_lsn: handover::current_lsn(legacy, "legacy").await?,
            new_lsn: handover::current_lsn(&new, "the new store").await?,
        })
    } else {
        None
    };
    let change = Change {
        table: table.to_string(),
        from,
        to,
        changed_by: super::operator(),
        forced: !passed,
        reason: reason.map(str::to_string),
        checks: serde_json::to_value(&report).unwrap_or_default(),
        step,
    };
    phases::record(legacy, &cfg.name, &change).await?;
    tracing::info!(table = %table, from = from.as_str(), to = to.as_str(), share_bp = ?target.share_bp, forced = change.forced, "phase changed");
    if !json {
        let share = target
            .share_bp
            .filter(|_| to == Phase::Split)
            .map(|bp| format!(" at {:.2} %", bp as f64 / 100.0))
            .unwrap_or_default();
        println!(
            "{table}: {} -> {}{share}{} (owner now {})",
            from.as_str(),
            to.as_str(),
            if change.forced { " FORCED" } else { "" },
            if to == Phase::Split {
                "by key"
            } else {
                to.owner().as_str()
            }
        );
    }
    let (Some(step), Some(before), Some(after)) = (step, share_before, target.share_bp) else {
        return Ok(ExitCode::SUCCESS);
    };
    let Some(side) = handover::draining(before, after) else {
        return Ok(ExitCode::SUCCESS);
    };
    let (lo, hi) = (before.min(after), before.max(after));
    let new_owner = if after > before {
        "the new store"
    } else {
        "legacy"
    };
    match handover::wait(cfg, side, &step, target.handover_timeout).await {
        Ok(took) => {
            if !json {
                println!(
                    "hand-over done in {:.1} s: route keys with buckets [{lo}, {hi}) to {new_owner} now",
                    took.as_secs_f64()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(4))
        }
    }
}
