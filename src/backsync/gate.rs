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
//! - `reconcile` (into `reverse`, with `reconcile.enabled`): a reconcile pass of the table
//!   completed after its last phase change, with parity ≥ `reconcile.gate_min_parity`, and no
//!   open discrepancy in the ledger older than the forward sink's lag.
//!
//! A mapping with a row filter makes counts differ by design: the gate says so and the switch
//! needs `--force` (verify, issue 7, compares through the whole mapping).

use serde::Serialize;

use crate::apply::mapping::{table_id, Mapping};
use crate::config::Config;
use crate::database::catalog;
use crate::database::ident::qualified;
use crate::error::{Error, Result};
use crate::monitor::Monitor;
use crate::state::phases::Phase;
use crate::verify::TableReport;

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

/// A sink's lag: `(events unapplied, oldest age in seconds)`, or why it is unknown.
pub type Lag = std::result::Result<(i64, f64), String>;

/// What the gate measured for one table, before any judgement.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The lag of each direction's sink.
    pub lag: Vec<(String, Lag)>,
    pub table: String,
    pub targets: Vec<String>,
    /// The comparison through the forward mapping, or why it could not run.
    pub rows: std::result::Result<TableReport, String>,
    pub filters_rows: bool,
    /// `ALTER TABLE … REPLICA IDENTITY FULL` statements still needed (into `dual` only).
    pub replica_identity_missing: Option<Vec<String>>,
    /// What reconcile says of the table (into `reverse` with `reconcile.enabled` only).
    pub reconcile: Option<ReconcileSeen>,
    /// The legacy key columns and their types (into `split` only): ownership is computed on
    /// the key's text, which the sinks see verbatim only for some types.
    pub split_key: Option<Vec<(String, String)>>,
}

/// Key types whose text form the sinks see exactly as PostgreSQL prints it (`::text`), so a
/// bridge, SQL and both sinks compute the same owner.
const SPLIT_KEY_TYPES: &[&str] = &[
    "smallint",
    "integer",
    "bigint",
    "text",
    "uuid",
    "character varying",
];

fn split_key_check(key: &[(String, String)]) -> Check {
    let bad: Vec<String> = key
        .iter()
        .filter(|(_, ty)| {
            let base = ty.split('(').next().unwrap_or(ty).trim();
            !SPLIT_KEY_TYPES.contains(&base)
        })
        .map(|(c, ty)| format!("{c} {ty}"))
        .collect();
    Check {
        name: "split_key".into(),
        ok: !key.is_empty() && bad.is_empty(),
        detail: if key.is_empty() {
            "no primary key: a split needs one".into()
        } else if bad.is_empty() {
            format!(
                "key ({}) has text forms every party computes alike",
                key.iter()
                    .map(|(c, _)| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!(
                "ownership is computed on the key's text; split supports keys of {} only, not {}",
                SPLIT_KEY_TYPES.join(", "),
                bad.join(", ")
            )
        },
    }
}

/// The reconcile ledger's word on a table, for the gate into `reverse`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileSeen {
    /// The table's last completed pass: (completed at, Unix seconds; parity 0..1).
    pub last_pass: Option<(f64, f64)>,
    /// When the table last changed phase (Unix seconds), if ever.
    pub last_change: Option<f64>,
    /// Open discrepancies first seen longer ago than the forward sink's lag.
    pub old_open: i64,
    pub min_parity: f64,
}

impl ReconcileSeen {
    fn check(&self) -> Check {
        let (ok, detail) = match self.last_pass {
            None => (
                false,
                "no completed reconcile pass of this table: run cutover reconcile (--once)".to_string(),
            ),
            Some((at, _)) if self.last_change.is_some_and(|c| at <= c) => (
                false,
                "the last reconcile pass completed before the table's last phase change: wait for the next pass (or cutover reconcile --once)".to_string(),
            ),
            Some((_, parity)) if parity < self.min_parity => (
                false,
                format!(
                    "parity {:.4}% in the last pass, below reconcile.gate_min_parity {:.4}%",
                    parity * 100.0,
                    self.min_parity * 100.0
                ),
            ),
            Some(_) if self.old_open > 0 => (
                false,
                format!(
                    "{} open discrepancies older than the lag (cutover reconcile report)",
                    self.old_open
                ),
            ),
            Some((_, parity)) => (
                true,
                format!("last pass after the last phase change, parity {:.4}%", parity * 100.0),
            ),
        };
        Check {
            name: "reconcile".into(),
            ok,
            detail,
        }
    }
}

/// Run every check for moving `table` from `from` to `to`: measure, then [`decide`].
pub async fn evaluate(cfg: &Config, table: &str, from: Phase, to: Phase) -> Result<Report> {
    let b = cfg
        .backsync
        .as_ref()
        .ok_or_else(|| Error::config("backsync: not configured (add a [backsync] section)"))?;
    let measured = measure(cfg, table, to).await?;
    Ok(decide(&measured, b.gate_max_lag_secs as f64, from, to))
}

/// The gate's judgement, pure over what was measured.
pub fn decide(m: &Measured, max_lag_secs: f64, from: Phase, to: Phase) -> Report {
    let mut checks = Vec::new();
    for (sink, lag) in &m.lag {
        let (ok, detail) = match lag {
            Ok((n, l)) => (
                *l <= max_lag_secs,
                format!("{n} event(s) unapplied, oldest {l:.1}s old (limit {max_lag_secs}s)"),
            ),
            Err(why) => (false, format!("lag unknown ({why})")),
        };
        checks.push(Check {
            name: format!("lag.{sink}"),
            ok,
            detail,
        });
    }
    let targets = m.targets.join("+");
    let (rows_ok, mut detail) = match &m.rows {
        Err(e) => (
            false,
            format!("cannot compare {} with {targets}: {e}", m.table),
        ),
        Ok(r) => (r.differences() == 0, rows_detail(&m.table, &targets, r)),
    };
    if m.filters_rows {
        detail.push_str(
            " (the mapping filters rows: counts differ by design, use --force after verifying)",
        );
    }
    checks.push(Check {
        name: "rows".into(),
        ok: rows_ok,
        detail,
    });
    if let Some(missing) = m
        .replica_identity_missing
        .as_ref()
        .filter(|_| to == Phase::Dual)
    {
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
    if let Some(r) = m.reconcile.as_ref().filter(|_| to == Phase::Reverse) {
        checks.push(r.check());
    }
    if let Some(key) = m.split_key.as_ref().filter(|_| to == Phase::Split) {
        checks.push(split_key_check(key));
    }
    Report {
        table: m.table.clone(),
        from,
        to,
        checks,
    }
}

/// Counts and compared columns, and the first differing keys of each kind.
fn rows_detail(table: &str, targets: &str, r: &TableReport) -> String {
    let sample = |keys: &[Vec<Option<String>>]| -> String {
        if keys.is_empty() {
            return String::new();
        }
        let shown: Vec<String> = keys
            .iter()
            .take(5)
            .map(|k| {
                let v: Vec<String> = k.iter().map(|x| x.clone().unwrap_or_default()).collect();
                format!("({})", v.join(","))
            })
            .collect();
        format!(" [{}]", shown.join(" "))
    };
    let mut d = format!(
        "legacy {table}: {} rows; new {targets}: {} rows; compared columns {:?}",
        r.source_rows, r.target_rows, r.compared_columns
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
    d
}

/// Measure what the gate judges: both directions' lag (from the broker, through the
/// monitor), the rows through the forward mapping, and (into `dual`) the replica identities.
async fn measure(cfg: &Config, table: &str, to: Phase) -> Result<Measured> {
    let b = cfg
        .backsync
        .as_ref()
        .ok_or_else(|| Error::config("backsync: not configured (add a [backsync] section)"))?;
    let forward = Monitor::new(cfg)?.probe(false).await;
    let reverse = Monitor::new(&cfg.reverse()?)?.probe(false).await;
    let mut lag = vec![];
    for (snap, sink) in [
        (&forward, b.forward_sink.as_str()),
        (&reverse, crate::config::BACKSYNC_SINK),
    ] {
        let s = snap.sinks.iter().find(|s| s.name == sink);
        let l = s
            .and_then(|s| s.lag_seconds.map(|l| (s.lag_messages, l)))
            .ok_or_else(|| snap.problems.join("; "));
        lag.push((sink.to_string(), l));
    }
    let mapping = forward_mapping(cfg, table)?;
    let legacy = crate::database::Endpoint::source(cfg).connect().await?;
    let new = crate::database::Endpoint::new_store(cfg)?.connect().await?;
    let source = table_id(table);
    let targets = mapping.targets();
    let rows = async {
        let plan = crate::verify::plan(&legacy, &new, &mapping).await?;
        let opts = crate::verify::Options {
            chunk_rows: 10_000,
            rows_per_sec: 0,
            recheck_after: std::time::Duration::ZERO,
        };
        crate::verify::verify_table(&legacy, &new, &plan, &opts, |_| {}).await
    }
    .await
    .map_err(|e| e.to_string());
    let replica_identity_missing = if to == Phase::Dual {
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
        Some(missing)
    } else {
        None
    };
    let reconcile = if to == Phase::Reverse && cfg.reconcile.enabled {
        let forward_lag = lag
            .first()
            .and_then(|(_, l)| l.as_ref().ok().map(|(_, secs)| *secs))
            .unwrap_or(0.0);
        Some(reconciled(cfg, &legacy, &new, &b.forward_sink, table, forward_lag).await?)
    } else {
        None
    };
    let split_key = if to == Phase::Split {
        let d = catalog::describe(&legacy, &source).await?;
        Some(d.map_or_else(Vec::new, |d| {
            d.key
                .iter()
                .map(|k| (k.clone(), d.columns.get(k).cloned().unwrap_or_default()))
                .collect()
        }))
    } else {
        None
    };
    Ok(Measured {
        lag,
        table: table.to_string(),
        targets: targets.iter().map(|t| t.to_string()).collect(),
        rows,
        filters_rows: mapping.filters_rows(),
        replica_identity_missing,
        reconcile,
        split_key,
    })
}

/// Read the reconcile ledger (in the new store) and the table's last phase change (legacy).
async fn reconciled(
    cfg: &Config,
    legacy: &tokio_postgres::Client,
    new: &tokio_postgres::Client,
    sink: &str,
    table: &str,
    lag_secs: f64,
) -> Result<ReconcileSeen> {
    crate::state::ensure_reconcile(new).await?;
    let last_change: Option<f64> = legacy
        .query_opt(
            "SELECT extract(epoch FROM changed_at)::float8 FROM cutover.table_phases
             WHERE pipeline = $1 AND table_name = $2",
            &[&cfg.name, &table],
        )
        .await
        .map_err(|e| Error::postgres("reading cutover.table_phases", e))?
        .map(|r| r.get(0));
    Ok(ReconcileSeen {
        last_pass: crate::reconcile::ledger::last_completed(new, sink, table).await?,
        last_change,
        old_open: crate::reconcile::ledger::open_older_than(new, sink, table, lag_secs).await?,
        min_parity: cfg.reconcile.gate_min_parity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(missing: usize) -> TableReport {
        TableReport {
            table: "public.t".into(),
            targets: vec!["app.t".into()],
            source_rows: 10,
            target_rows: 10 - missing as i64,
            chunks: 1,
            mismatched_chunks: missing.min(1),
            missing: (0..missing).map(|i| vec![Some(i.to_string())]).collect(),
            extra: vec![],
            different: vec![],
            parity_pct: 100.0 - missing as f64 * 10.0,
            compared_columns: vec!["id".into()],
            seconds: 0.1,
        }
    }

    fn measured() -> Measured {
        Measured {
            lag: vec![
                ("newstore".into(), Ok((0, 0.5))),
                ("backsync".into(), Ok((3, 2.0))),
            ],
            table: "public.t".into(),
            targets: vec!["app.t".into()],
            rows: Ok(report(0)),
            filters_rows: false,
            replica_identity_missing: Some(vec![]),
            reconcile: None,
            split_key: None,
        }
    }

    #[test]
    fn into_split_the_key_must_have_a_text_form_everyone_computes_alike() {
        let judge = |key: Vec<(&str, &str)>| {
            let m = Measured {
                split_key: Some(key.into_iter().map(|(c, t)| (c.into(), t.into())).collect()),
                ..measured()
            };
            decide(&m, 30.0, Phase::Forward, Phase::Split)
        };
        assert!(judge(vec![("id", "bigint")]).passed());
        assert!(judge(vec![("id", "uuid"), ("region", "character varying(8)")]).passed());
        let r = judge(vec![("at", "timestamp with time zone")]);
        assert!(
            !r.passed() && r.failures()[0].contains("not at timestamp with time zone"),
            "{:?}",
            r.failures()
        );
        assert!(!judge(vec![]).passed());
        // Only into split.
        let m = Measured {
            split_key: Some(vec![("at".into(), "numeric".into())]),
            ..measured()
        };
        assert!(decide(&m, 30.0, Phase::Forward, Phase::Dual).passed());
    }

    #[test]
    fn into_reverse_with_reconcile_needs_a_recent_pass_with_parity_and_no_old_discrepancy() {
        let seen = ReconcileSeen {
            last_pass: Some((200.0, 1.0)),
            last_change: Some(100.0),
            old_open: 0,
            min_parity: 0.9999,
        };
        let judge = |r: ReconcileSeen, to: Phase| {
            let m = Measured {
                reconcile: Some(r),
                ..measured()
            };
            decide(&m, 30.0, Phase::Dual, to)
        };
        assert!(judge(seen.clone(), Phase::Reverse).passed());
        // Only into reverse.
        let none = ReconcileSeen {
            last_pass: None,
            ..seen.clone()
        };
        assert!(judge(none.clone(), Phase::Forward).passed());
        let r = judge(none, Phase::Reverse);
        assert!(
            !r.passed() && r.failures()[0].contains("no completed reconcile pass"),
            "{:?}",
            r.failures()
        );
        let stale = ReconcileSeen {
            last_pass: Some((90.0, 1.0)),
            ..seen.clone()
        };
        assert!(judge(stale, Phase::Reverse).failures()[0]
            .contains("before the table's last phase change"));
        let low = ReconcileSeen {
            last_pass: Some((200.0, 0.999)),
            ..seen.clone()
        };
        assert!(
            judge(low, Phase::Reverse).failures()[0].contains("below reconcile.gate_min_parity")
        );
        let old = ReconcileSeen {
            old_open: 2,
            ..seen.clone()
        };
        assert!(judge(old, Phase::Reverse).failures()[0].contains("2 open discrepancies"));
        // A table that never changed phase needs just a pass.
        let never = ReconcileSeen {
            last_change: None,
            ..seen
        };
        assert!(judge(never, Phase::Reverse).passed());
    }

    #[test]
    fn passes_when_caught_up_and_equal() {
        let r = decide(&measured(), 5.0, Phase::Forward, Phase::Dual);
        assert!(r.passed(), "{:?}", r.failures());
        let names: Vec<&str> = r.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["lag.newstore", "lag.backsync", "rows", "replica_identity"]
        );
    }

    #[test]
    fn lag_over_the_limit_or_unknown_fails_naming_why() {
        let mut m = measured();
        m.lag[1].1 = Ok((40, 12.5));
        let r = decide(&m, 5.0, Phase::Forward, Phase::Dual);
        assert_eq!(r.failures().len(), 1);
        assert!(r.failures()[0].contains("oldest 12.5s old (limit 5s)"));
        m.lag[0].1 = Err("broker unreachable".into());
        let r = decide(&m, 5.0, Phase::Forward, Phase::Dual);
        assert!(r.failures()[0].contains("lag unknown (broker unreachable)"));
    }

    #[test]
    fn differing_rows_name_the_keys_and_filters_say_force() {
        let mut m = measured();
        m.rows = Ok(report(2));
        m.filters_rows = true;
        let r = decide(&m, 5.0, Phase::Dual, Phase::Reverse);
        let f = r.failures();
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("missing 2 [(0) (1)]"), "{}", f[0]);
        assert!(f[0].contains("use --force"), "{}", f[0]);
        assert!(
            !r.checks.iter().any(|c| c.name == "replica_identity"),
            "only into dual"
        );
    }

    #[test]
    fn missing_replica_identity_blocks_dual_with_the_statements() {
        let mut m = measured();
        m.replica_identity_missing = Some(vec![
            "new: ALTER TABLE \"app\".\"t\" REPLICA IDENTITY FULL;".into(),
        ]);
        let r = decide(&m, 5.0, Phase::Forward, Phase::Dual);
        assert!(r.failures()[0].contains("REPLICA IDENTITY FULL"));
    }
}
