//! The gate of `cutover phase set`: a table changes phase only when both directions are caught
//! up and both sides hold the same rows.
//!
//! Checks (each reported with what it saw, and recorded in the audit trail):
//! - `lag.<sink>`: the forward sink's and the back-sync's oldest unapplied event is younger than
//!   `backsync.gate_max_lag_secs` (read by the monitor from the broker, so it works whether or
//!   not the sinks run);
//! - `rows`: `crate::verify` finds no missing, extra or different row between legacy and the
//!   new store over the forward mapping's pass-through columns (chunk checksums, bisected to
//!   the differing keys, which the check names);
//! - `replica_identity` (into `dual` only): both sides' tables have `REPLICA IDENTITY FULL`, so
//!   updates and deletes carry the before-image conflict detection compares.
//!
//! A mapping with a row filter makes counts differ by design: the gate says so and the switch
//! needs `--force` (verify, issue 7, compares through the whole mapping).

use serde::Serialize;

use super::phase::Phase;
use crate::apply::mapping::{table_id, Mapping};
use crate::config::Config;
use crate::database::catalog;
use crate::database::ident::qualified;
use crate::error::{Error, Result};
use crate::monitor::Monitor;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub table: String,
    pub from: Phase,
    pub to: Phase,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }
}

/// The forward mapping of a legacy table (configured, or identity when the forward sink maps
/// unmapped tables as themselves).
pub fn forward_mapping(cfg: &Config, table: &str) -> Result<Mapping> {
    let b = cfg
        .backsync
        .as_ref()
        .ok_or_else(|| Error::config("backsync: not configured (add a [backsync] section)"))?;
    let (i, _) = cfg
        .sink_at(&b.forward_sink)
        .map_err(|e| e.context("backsync.forward_sink"))?;
    crate::apply::mapping::for_table(cfg, i, table)?.ok_or_else(|| {
        Error::config(format!(
            "{table}: sink {} has no mapping for it (unmapped_tables = skip), so it has no phase",
            b.forward_sink
        ))
    })
}

/// Run every check for moving `table` from `from` to `to`.
pub async fn evaluate(cfg: &Config, table: &str, from: Phase, to: Phase) -> Result<Report> {
    let b = cfg
        .backsync
        .as_ref()
        .ok_or_else(|| Error::config("backsync: not configured (add a [backsync] section)"))?;
    let mut checks = Vec::new();

    // 1. Both directions caught up.
    let forward = Monitor::new(cfg)?.probe(false).await;
    let reverse_cfg = cfg.reverse()?;
    let reverse = Monitor::new(&reverse_cfg)?.probe(false).await;
    let max = b.gate_max_lag_secs as f64;
    for (snap, sink) in [
        (&forward, b.forward_sink.as_str()),
        (&reverse, crate::config::BACKSYNC_SINK),
    ] {
        let s = snap.sinks.iter().find(|s| s.name == sink);
        let (ok, detail) = match s.and_then(|s| s.lag_seconds.map(|l| (s.lag_messages, l))) {
            Some((n, l)) => (
                l <= max,
                format!("{n} event(s) unapplied, oldest {l:.1}s old (limit {max}s)"),
            ),
            None => (false, format!("lag unknown ({})", snap.problems.join("; "))),
        };
        checks.push(Check {
            name: format!("lag.{sink}"),
            ok,
            detail,
        });
    }

    // 2. Same rows on both sides: verify through the forward mapping's pass-through columns,
    // naming the differing keys when there are any (recorded in the audit).
    let mapping = forward_mapping(cfg, table)?;
    let legacy = crate::database::Endpoint::source(cfg).connect().await?;
    let new = crate::database::Endpoint::new_store(cfg)?.connect().await?;
    let source = table_id(table);
    let targets = mapping.targets();
    let targets_s: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    let compared = async {
        let plan = crate::verify::plan(&legacy, &new, &mapping).await?;
        let opts = crate::verify::Options {
            chunk_rows: 10_000,
            rows_per_sec: 0,
            recheck_after: std::time::Duration::ZERO,
        };
        crate::verify::verify_table(&legacy, &new, &plan, &opts, |_| {}).await
    }
    .await;
    let (rows_ok, mut detail) = match compared {
        Err(e) => (
            false,
            format!("cannot compare {table} with {}: {e}", targets_s.join("+")),
        ),
        Ok(r) => {
            let sample = |keys: &[Vec<Option<String>>]| -> String {
                if keys.is_empty() {
                    return String::new();
                }
                let shown: Vec<String> = keys
                    .iter()
                    .take(5)
                    .map(|k| {
                        let v: Vec<String> =
                            k.iter().map(|x| x.clone().unwrap_or_default()).collect();
                        format!("({})", v.join(","))
                    })
                    .collect();
                format!(" [{}]", shown.join(" "))
            };
            let mut d = format!(
                "legacy {table}: {} rows; new {}: {} rows; compared columns {:?}",
                r.source_rows,
                targets_s.join("+"),
                r.target_rows,
                r.compared_columns
            );
            if r.differences() > 0 {
                d.push_str(&format!(
                    "; verify: parity {:.2}%, missing {}{}, extra {}{}, different {}{}",
                    r.parity_pct,
                    r.missing.len(),
                    sample(&r.missing),
                    r.extra.len(),
                    sample(&r.extra),
                    r.different.len(),
                    sample(&r.different)
                ));
            }
            (r.differences() == 0, d)
        }
    };
    if mapping.filters_rows() {
        detail.push_str(
            " (the mapping filters rows: counts differ by design, use --force after verifying)",
        );
    }
    checks.push(Check {
        name: "rows".into(),
        ok: rows_ok,
        detail,
    });

    // 3. Before-images for conflict detection.
    if to == Phase::Dual {
        let mut missing = Vec::new();
        if !catalog::replica_identity_full(&legacy, &source).await? {
            missing.push(format!(
                "legacy: ALTER TABLE {} REPLICA IDENTITY FULL;",
                qualified(&source)
            ));
        }
        for t in &targets {
            if !catalog::replica_identity_full(&new, t).await? {
                missing.push(format!(
                    "new: ALTER TABLE {} REPLICA IDENTITY FULL;",
                    qualified(t)
                ));
            }
        }
        checks.push(Check {
            name: "replica_identity".into(),
            ok: missing.is_empty(),
            detail: if missing.is_empty() {
                "FULL on both sides".into()
            } else {
                format!(
                    "conflict detection needs before-images: {}",
                    missing.join(" ")
                )
            },
        });
    }
    Ok(Report {
        table: table.to_string(),
        from,
        to,
        checks,
    })
}
