//! The reconcile loop: pass after pass over every table each chosen sink maps.
//!
//! ```text
//!   pass ─▶ for each sink: measure its lag (monitor) ─▶ for each mapped table:
//!             resume or begin its pass (ledger) ─▶ verify chunk by chunk under the read budget,
//!             checkpointing after each chunk ─▶ re-check differences after the lag
//!             ─▶ ledger (open / converged) ─▶ repair (auto, capped) ─▶ pass complete, metrics
//!        ─▶ pause ─▶ next pass
//! ```
//!
//! A difference is recorded only if it is still there after the sink's measured lag (and at
//! least `min_recheck_secs`): rows in flight are not drift. Reads are throttled to
//! `rows_per_sec` over both sides together. Every chunk's position is recorded, so a restart
//! resumes the table where it stopped.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use super::ledger::{self, Kind};
use super::metrics;
use crate::config::{Config, RepairMode};
use crate::database::Endpoint;
use crate::error::Result;
use crate::verify::{self, Key, Options, TableReport};

/// Run passes until `stop` flips; with `once`, one pass of every sink, then return. Returns
/// the open discrepancies of the tables the last pass covered.
pub async fn run(cfg: &Config, mut stop: watch::Receiver<bool>, once: bool) -> Result<i64> {
    let sinks = chosen(cfg);
    loop {
        let mut open = 0;
        for &i in &sinks {
            if *stop.borrow() {
                return Ok(open);
            }
            open += pass(cfg, i, &stop).await?;
        }
        if once {
            return Ok(open);
        }
        let pause = Duration::from_secs(cfg.reconcile.pause_secs);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return Ok(open),
        }
    }
}

/// The sinks reconcile covers: `reconcile.sinks`, or every sink.
pub fn chosen(cfg: &Config) -> Vec<usize> {
    (0..cfg.sinks.len())
        .filter(|i| {
            cfg.reconcile.sinks.is_empty() || cfg.reconcile.sinks.contains(&cfg.sinks[*i].name)
        })
        .collect()
}

/// The sink's oldest unapplied event's age, from the broker (through the monitor).
async fn lag_secs(cfg: &Config, sink: &str) -> Option<f64> {
    let mut monitor = crate::monitor::Monitor::new(cfg).ok()?;
    let snap = monitor.probe(false).await;
    snap.sinks
        .iter()
        .find(|s| s.name == sink)
        .and_then(|s| s.lag_seconds)
}

/// One pass of sink `i`: every table it maps. Returns their open discrepancies.
async fn pass(cfg: &Config, i: usize, stop: &watch::Receiver<bool>) -> Result<i64> {
    let sink = cfg.sinks[i].name.clone();
    let src = Endpoint::source(cfg).connect().await?;
    let mut dst = Endpoint::of_sink(&cfg.sinks[i], i).connect().await?;
    crate::state::ensure_reconcile(&dst).await?;
    let lag = lag_secs(cfg, &sink).await;
    let recheck = Duration::from_secs_f64(
        (cfg.reconcile.min_recheck_secs as f64).max(lag.unwrap_or(0.0) + 1.0),
    );
    let mut repair_budget = cfg.reconcile.repair_max_rows;
    let started = Instant::now();
    let mut open = 0;
    for table in verify::tables(cfg, i, &src).await? {
        if *stop.borrow() {
            return Ok(open);
        }
        let Some(mapping) = crate::apply::mapping::for_table(cfg, i, &table)? else {
            continue;
        };
        let plan = match verify::plan(&src, &dst, &mapping).await {
            Ok(p) => p,
            Err(e) => {
                // A table that cannot be compared (no key, not on the target yet) does not stop
                // the others; it has no parity until it can be.
                tracing::warn!(sink, table, error = %e, "reconcile skips a table it cannot compare");
                continue;
            }
        };
        let t = Table {
            cfg,
            sink: &sink,
            table: &table,
            plan: &plan,
            recheck,
        };
        open += t.reconcile(&src, &mut dst, &mut repair_budget).await?;
    }
    tracing::info!(sink, seconds = started.elapsed().as_secs_f64(), lag_secs = ?lag, open, "reconcile pass complete");
    Ok(open)
}

/// After each chunk: count it, export its rows, record the resume point.
struct Checkpoint<'a> {
    dst: &'a Client,
    sink: &'a str,
    table: &'a str,
    pass: &'a mut ledger::Pass,
}

#[async_trait::async_trait]
impl verify::OnChunk for Checkpoint<'_> {
    async fn chunk(&mut self, c: &verify::Chunk) -> Result<()> {
        self.pass.source_rows += c.source_rows;
        self.pass.target_rows += c.target_rows;
        self.pass.chunks += 1;
        metrics::rows_compared(self.sink, self.table, c.source_rows, c.target_rows);
        ledger::checkpoint(self.dst, self.sink, self.table, self.pass, c.hi.as_ref()).await
    }
}

struct Table<'a> {
    cfg: &'a Config,
    sink: &'a str,
    table: &'a str,
    plan: &'a verify::Plan,
    recheck: Duration,
}

impl Table<'_> {
    /// Compare the table, record, repair; returns its open discrepancies.
    async fn reconcile(
        &self,
        src: &Client,
        dst: &mut Client,
        repair_budget: &mut u64,
    ) -> Result<i64> {
        let (sink, table) = (self.sink, self.table);
        let mut pass = ledger::begin(dst, sink, table).await?;
        let resumed = pass.resume_key.is_some();
        if resumed {
            tracing::info!(
                sink,
                table,
                chunks_done = pass.chunks,
                "reconcile resumes its pass"
            );
        }
        let opts = Options {
            chunk_rows: self.cfg.reconcile.chunk_rows.max(2),
            rows_per_sec: self.cfg.reconcile.rows_per_sec,
            recheck_after: self.recheck,
        };
        let started = Instant::now();
        let report = {
            let mut at = Checkpoint {
                dst,
                sink,
                table,
                pass: &mut pass,
            };
            verify::verify_table_from(
                src,
                dst,
                self.plan,
                &opts,
                at.pass.resume_key.clone(),
                &mut at,
            )
            .await?
        };
        let found = found(&report);
        let open = ledger::record(dst, sink, table, &found, !resumed).await?;
        let repaired = self
            .repair(src, dst, &report, &found, repair_budget)
            .await?;
        let open = if repaired > 0 {
            ledger::open(dst, sink, table).await?
        } else {
            open
        };
        let parity = parity(pass.source_rows, &report);
        let seconds = started.elapsed().as_secs_f64();
        ledger::complete(dst, sink, table, &pass, found.len() as i64, parity, seconds).await?;
        metrics::table_pass(sink, table, parity, open, seconds);
        if !found.is_empty() {
            tracing::warn!(
                sink,
                table,
                missing = report.missing.len(),
                extra = report.extra.len(),
                different = report.different.len(),
                open = open.count,
                "reconcile found differences"
            );
        }
        Ok(open.count)
    }

    /// Repair per `reconcile.repair`: `report` logs and counts, `auto` repairs within the
    /// pass's budget and resolves what it repaired. Returns how many keys were repaired.
    async fn repair(
        &self,
        src: &Client,
        dst: &mut Client,
        report: &TableReport,
        found: &[(Kind, Key)],
        budget: &mut u64,
    ) -> Result<usize> {
        let (sink, table) = (self.sink, self.table);
        if found.is_empty() {
            return Ok(0);
        }
        match self.cfg.reconcile.repair {
            RepairMode::Off => Ok(0),
            RepairMode::Report => {
                metrics::repairs(sink, table, "planned", found.len());
                tracing::info!(
                    sink,
                    table,
                    keys = found.len(),
                    "reconcile would repair these keys (repair = \"report\")"
                );
                Ok(0)
            }
            RepairMode::Auto => {
                let take = (*budget).min(found.len() as u64) as usize;
                let (now, later) = found.split_at(take);
                metrics::repairs(sink, table, "capped", later.len());
                if now.is_empty() {
                    return Ok(0);
                }
                let part = |k: Kind| -> Vec<Key> {
                    now.iter()
                        .filter(|(x, _)| *x == k)
                        .map(|(_, key)| key.clone())
                        .collect()
                };
                let subset = TableReport {
                    missing: part(Kind::Missing),
                    extra: part(Kind::Extra),
                    different: part(Kind::Different),
                    ..report.clone()
                };
                let (reemitted, deleted) =
                    verify::repair(self.cfg, src, dst, self.plan, &subset).await?;
                let resend: Vec<(Kind, Key)> = now
                    .iter()
                    .filter(|(k, _)| *k != Kind::Extra)
                    .cloned()
                    .collect();
                let extra: Vec<(Kind, Key)> = now
                    .iter()
                    .filter(|(k, _)| *k == Kind::Extra)
                    .cloned()
                    .collect();
                let pipeline = self.cfg.name.as_str();
                ledger::repaired(
                    dst,
                    pipeline,
                    sink,
                    table,
                    &resend,
                    "re-emitted from the source",
                )
                .await?;
                ledger::repaired(
                    dst,
                    pipeline,
                    sink,
                    table,
                    &extra,
                    "deleted from the target",
                )
                .await?;
                *budget -= take as u64;
                metrics::repairs(sink, table, "repaired", take);
                tracing::info!(
                    sink,
                    table,
                    reemitted,
                    deleted,
                    "reconcile repaired differences"
                );
                Ok(take)
            }
        }
    }
}

/// The report's differences as ledger entries.
fn found(r: &TableReport) -> Vec<(Kind, Key)> {
    let tag = |k: Kind, keys: &[Key]| {
        keys.iter()
            .map(move |key| (k, key.clone()))
            .collect::<Vec<_>>()
    };
    let mut v = tag(Kind::Missing, &r.missing);
    v.extend(tag(Kind::Extra, &r.extra));
    v.extend(tag(Kind::Different, &r.different));
    v
}

/// Rows equal on both sides over rows on either side (0..1), over the whole pass (`source_rows`
/// includes the part before a resume).
pub fn parity(source_rows: i64, r: &TableReport) -> f64 {
    let union = source_rows + r.extra.len() as i64;
    let equal = source_rows - r.missing.len() as i64 - r.different.len() as i64;
    if union <= 0 {
        1.0
    } else {
        equal.max(0) as f64 / union as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(missing: usize, extra: usize, different: usize) -> TableReport {
        let keys = |n: usize, from: usize| -> Vec<Key> {
            (from..from + n)
                .map(|i| vec![Some(i.to_string())])
                .collect()
        };
        TableReport {
            missing: keys(missing, 0),
            extra: keys(extra, 100),
            different: keys(different, 200),
            ..Default::default()
        }
    }

    #[test]
    fn parity_counts_the_whole_pass_and_every_kind() {
        assert_eq!(parity(0, &report(0, 0, 0)), 1.0);
        assert_eq!(parity(100, &report(0, 0, 0)), 1.0);
        // 100 source rows, 1 missing and 1 different: 98 equal over 100 + 1 extra.
        assert!((parity(100, &report(1, 1, 1)) - 98.0 / 101.0).abs() < 1e-12);
        // A resumed pass passes the rows before its resume point in `source_rows`.
        assert!(parity(1_000_000, &report(1, 0, 0)) >= 0.9999);
        // Nothing on the source, only extra rows: no parity at all.
        assert_eq!(parity(0, &report(0, 3, 0)), 0.0);
    }

    #[test]
    fn found_tags_every_key_with_its_kind() {
        let f = found(&report(1, 2, 1));
        let kinds: Vec<Kind> = f.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [Kind::Missing, Kind::Extra, Kind::Extra, Kind::Different]
        );
        assert_eq!(
            ledger::key_value(&f[0].1),
            serde_json::json!(["0"]),
            "keys are JSON arrays of text"
        );
        assert_eq!(
            ledger::key_value(&vec![Some("1".into()), None]),
            serde_json::json!(["1", null])
        );
    }
}
