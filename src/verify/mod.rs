//! Verify: do the source table and its target (through the sink's mapping) hold the same rows?
//!
//! ```text
//!   source keys, in order ──▶ chunks of chunk_rows keys: (prev_hi, hi]   (first and last open-ended,
//!                                                                         so extra target rows anywhere
//!   per chunk, in SQL on both sides: count(*) + Σ md5-prefix(row)          are inside some chunk)
//!        equal ──▶ next chunk (no row leaves either database)
//!        different ──▶ bisect the range by the source's median key, down to ≤ 64 rows
//!                      ──▶ fetch those rows from both sides, compare by key:
//!                          missing (source only), extra (target only), different
//!   differences ──▶ wait recheck_after (the pipeline's lag) ──▶ compare those keys again;
//!                   what still differs is reported (rows that were merely in flight are not)
//! ```
//!
//! Compared columns are the mapping's pass-through columns (copied, renamed at most) — the same
//! set the phase gate uses; computed, constant and defaulted target columns are not compared.
//! A target key is always fed by the source key (the mapping requires it), so one key range
//! selects the same rows on both sides. Reads are throttled (`rows_per_sec`) so a live legacy
//! database is not spiked.

mod repair;

pub use repair::{repair, tables};

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::apply::mapping::Mapping;
use crate::database::catalog::describe;
use crate::database::ident::{qualified, quote};
use crate::error::{Error, Result};
use crate::event::TableId;
use crate::observe::names;

/// Rows at or below which a mismatched range is compared row by row.
const LEAF_ROWS: i64 = 64;

/// What to compare for one source table.
#[derive(Debug, Clone)]
pub struct Plan {
    pub source: TableId,
    pub targets: Vec<TableId>,
    /// Source key columns (in key order) and their target names.
    pub key: Vec<(String, String)>,
    /// Source key column types (`format_type`).
    pub key_types: Vec<String>,
    /// Compared non-key columns: (source, target).
    pub cols: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TableReport {
    pub table: String,
    pub targets: Vec<String>,
    pub source_rows: i64,
    pub target_rows: i64,
    pub chunks: usize,
    pub mismatched_chunks: usize,
    pub missing: Vec<Vec<Option<String>>>,
    pub extra: Vec<Vec<Option<String>>>,
    pub different: Vec<Vec<Option<String>>>,
    /// Rows equal on both sides over rows on either side, in percent.
    pub parity_pct: f64,
    pub compared_columns: Vec<String>,
    pub seconds: f64,
}

impl TableReport {
    pub fn differences(&self) -> usize {
        self.missing.len() + self.extra.len() + self.different.len()
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub chunk_rows: i64,
    /// 0: unthrottled.
    pub rows_per_sec: u64,
    pub recheck_after: Duration,
}

/// Build the plan of `source` under `mapping`, checking both sides' catalogs.
pub async fn plan(src: &Client, dst: &Client, mapping: &Mapping) -> Result<Plan> {
    let s = describe(src, &mapping.source)
        .await?
        .ok_or_else(|| Error::config(format!("{}: no such table on the source", mapping.source)))?;
    if s.key.is_empty() {
        return Err(Error::config(format!(
            "{}: no primary key; verify chunks by primary key",
            mapping.source
        )));
    }
    let targets = mapping.targets();
    let source_cols: Vec<String> = s.columns.keys().cloned().collect();
    let mut pairs = mapping.passthrough(&source_cols);
    for t in &targets {
        let d = describe(dst, t)
            .await?
            .ok_or_else(|| Error::config(format!("{t}: no such table on the target")))?;
        pairs.retain(|(_, tc)| d.columns.contains_key(tc));
    }
    let key: Vec<(String, String)> = s
        .key
        .iter()
        .map(|k| {
            pairs
                .iter()
                .find(|(sc, _)| sc == k)
                .cloned()
                .ok_or_else(|| {
                    Error::config(format!(
                        "{}: key column {k} is not copied to the target, so rows cannot be matched",
                        mapping.source
                    ))
                })
        })
        .collect::<Result<_>>()?;
    let key_types = s.key.iter().map(|k| s.columns[k].clone()).collect();
    let cols = pairs
        .into_iter()
        .filter(|(sc, _)| !s.key.contains(sc))
        .collect();
    Ok(Plan {
        source: mapping.source.clone(),
        targets,
        key,
        key_types,
        cols,
    })
}

pub type Key = Vec<Option<String>>;

/// A key range: (lo, hi], either end open.
#[derive(Debug, Clone)]
struct Range {
    lo: Option<Key>,
    hi: Option<Key>,
}

struct Side<'a> {
    client: &'a Client,
    tables: Vec<TableId>,
    key: Vec<String>,
    cols: Vec<String>,
}

fn hash_expr(key: &[String], cols: &[String]) -> String {
    let all: Vec<String> = key
        .iter()
        .chain(cols)
        .map(|c| format!("t.{}", quote(c)))
        .collect();
    format!(
        "('x' || substr(md5(ROW({})::text), 1, 15))::bit(60)::bigint",
        all.join(", ")
    )
}

impl Plan {
    /// The compared columns as a report names them (`source→target` when renamed).
    fn compared_columns(&self) -> Vec<String> {
        self.key
            .iter()
            .chain(&self.cols)
            .map(|(s, t)| {
                if s == t {
                    s.clone()
                } else {
                    format!("{s}→{t}")
                }
            })
            .collect()
    }

    fn source_side<'a>(&self, c: &'a Client) -> Side<'a> {
        Side {
            client: c,
            tables: vec![self.source.clone()],
            key: self.key.iter().map(|(s, _)| s.clone()).collect(),
            cols: self.cols.iter().map(|(s, _)| s.clone()).collect(),
        }
    }

    fn target_side<'a>(&self, c: &'a Client) -> Side<'a> {
        Side {
            client: c,
            tables: self.targets.clone(),
            key: self.key.iter().map(|(_, t)| t.clone()).collect(),
            cols: self.cols.iter().map(|(_, t)| t.clone()).collect(),
        }
    }

    /// `WHERE` for a range, with its parameters (key values cast to the source key types).
    fn where_range(&self, key: &[String], r: &Range, params: &mut Vec<Option<String>>) -> String {
        let row = key_row(key);
        let mut w = vec!["true".to_string()];
        if let Some(lo) = &r.lo {
            w.push(format!(
                "{row} > {}",
                typed_row(lo, &self.key_types, params)
            ));
        }
        if let Some(hi) = &r.hi {
            w.push(format!(
                "{row} <= {}",
                typed_row(hi, &self.key_types, params)
            ));
        }
        w.join(" AND ")
    }

    fn where_keys(&self, key: &[String], keys: &[Key], params: &mut Vec<Option<String>>) -> String {
        key_in(key, &self.key_types, keys, params)
    }

    /// (rows, checksum) of a range on one side.
    async fn fingerprint(&self, side: &Side<'_>, r: &Range) -> Result<(i64, i128)> {
        let (mut n, mut sum) = (0i64, 0i128);
        for t in &side.tables {
            let mut params = Vec::new();
            let w = self.where_range(&side.key, r, &mut params);
            let sql = format!(
                "SELECT count(*), coalesce(sum({}), 0)::text FROM {} t WHERE {w}",
                hash_expr(&side.key, &side.cols),
                qualified(t)
            );
            let row = query_one(side.client, &sql, &params, t).await?;
            n += row.get::<_, i64>(0);
            sum += row.get::<_, String>(1).parse::<i128>().unwrap_or(0);
        }
        Ok((n, sum))
    }

    /// Rows of a range (or of the given keys) on one side: key → the other columns, as text.
    async fn rows(
        &self,
        side: &Side<'_>,
        r: Option<&Range>,
        keys: Option<&[Key]>,
    ) -> Result<BTreeMap<Key, Vec<Option<String>>>> {
        let mut out = BTreeMap::new();
        for t in &side.tables {
            let mut params = Vec::new();
            let w = match (r, keys) {
                (Some(r), _) => self.where_range(&side.key, r, &mut params),
                (None, Some(k)) => self.where_keys(&side.key, k, &mut params),
                (None, None) => "true".into(),
            };
            let sel: Vec<String> = side
                .key
                .iter()
                .chain(&side.cols)
                .map(|c| format!("t.{}::text", quote(c)))
                .collect();
            let sql = format!(
                "SELECT {} FROM {} t WHERE {w}",
                sel.join(", "),
                qualified(t)
            );
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            let rows = side
                .client
                .query(&sql, &refs)
                .await
                .map_err(|e| Error::postgres(format!("reading {t}"), e))?;
            let nk = side.key.len();
            for row in rows {
                let vals: Vec<Option<String>> = (0..row.len()).map(|i| row.get(i)).collect();
                out.insert(vals[..nk].to_vec(), vals[nk..].to_vec());
            }
        }
        Ok(out)
    }

    /// Source keys of a range, in order (at most `limit`).
    async fn keys(&self, src: &Client, r: &Range, limit: i64) -> Result<Vec<Key>> {
        let key: Vec<String> = self.key.iter().map(|(s, _)| s.clone()).collect();
        let mut params = Vec::new();
        let w = self.where_range(&key, r, &mut params);
        let cols: Vec<String> = key
            .iter()
            .map(|k| format!("t.{}::text", quote(k)))
            .collect();
        let order: Vec<String> = key.iter().map(|k| format!("t.{}", quote(k))).collect();
        let sql = format!(
            "SELECT {} FROM {} t WHERE {w} ORDER BY {} LIMIT {limit}",
            cols.join(", "),
            qualified(&self.source),
            order.join(", ")
        );
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        Ok(src
            .query(&sql, &refs)
            .await
            .map_err(|e| Error::postgres(format!("reading keys of {}", self.source), e))?
            .iter()
            .map(|row| (0..row.len()).map(|i| row.get(i)).collect())
            .collect())
    }
}

/// `ROW(t."a", t."b")` for key columns.
fn key_row(key: &[String]) -> String {
    let cols: Vec<String> = key.iter().map(|k| format!("t.{}", quote(k))).collect();
    format!("ROW({})", cols.join(", "))
}

/// `ROW($n::text::type, ...)` for one key's values, pushing the parameters.
fn typed_row(
    vals: &[Option<String>],
    types: &[String],
    params: &mut Vec<Option<String>>,
) -> String {
    let parts: Vec<String> = vals
        .iter()
        .zip(types)
        .map(|(v, ty)| {
            params.push(v.clone());
            format!("${}::text::{ty}", params.len())
        })
        .collect();
    format!("ROW({})", parts.join(", "))
}

/// `ROW(key columns) IN (ROW(...), ...)` for `keys` (`false` when there are none).
pub fn key_in(
    key: &[String],
    types: &[String],
    keys: &[Key],
    params: &mut Vec<Option<String>>,
) -> String {
    if keys.is_empty() {
        return "false".into();
    }
    let list: Vec<String> = keys.iter().map(|k| typed_row(k, types, params)).collect();
    format!("{} IN ({})", key_row(key), list.join(", "))
}

async fn query_one(
    c: &Client,
    sql: &str,
    params: &[Option<String>],
    t: &TableId,
) -> Result<tokio_postgres::Row> {
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    c.query_one(sql, &refs)
        .await
        .map_err(|e| Error::postgres(format!("checksum of {t}"), e))
}

/// Differences found by comparing rows.
#[derive(Default)]
struct Diff {
    missing: BTreeSet<Key>,
    extra: BTreeSet<Key>,
    different: BTreeSet<Key>,
}

fn classify(
    s: &BTreeMap<Key, Vec<Option<String>>>,
    t: &BTreeMap<Key, Vec<Option<String>>>,
    d: &mut Diff,
) {
    for (k, v) in s {
        match t.get(k) {
            None => {
                d.missing.insert(k.clone());
            }
            Some(w) if w != v => {
                d.different.insert(k.clone());
            }
            Some(_) => {}
        }
    }
    for k in t.keys() {
        if !s.contains_key(k) {
            d.extra.insert(k.clone());
        }
    }
}

struct Throttle {
    per_sec: u64,
    started: Instant,
    rows: u64,
}

impl Throttle {
    async fn account(&mut self, rows: i64) {
        self.rows += rows.max(0) as u64;
        if self.per_sec == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.rows as f64 / self.per_sec as f64);
        let spent = self.started.elapsed();
        if due > spent {
            tokio::time::sleep(due - spent).await;
        }
    }
}

/// Compare one table; `progress` is called after every chunk with the source rows done.
pub async fn verify_table(
    src: &Client,
    dst: &Client,
    plan: &Plan,
    opts: &Options,
    progress: impl FnMut(i64) + Send,
) -> Result<TableReport> {
    struct Progress<F>(F);
    #[async_trait::async_trait]
    impl<F: FnMut(i64) + Send> OnChunk for Progress<F> {
        async fn chunk(&mut self, c: &Chunk) -> Result<()> {
            (self.0)(c.done);
            Ok(())
        }
    }
    verify_table_from(src, dst, plan, opts, None, &mut Progress(progress)).await
}

/// One compared chunk, as [`verify_table_from`] reports it.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Source rows compared so far in this call.
    pub done: i64,
    /// Rows of this chunk on each side.
    pub source_rows: i64,
    pub target_rows: i64,
    /// The chunk's upper key: a later call started after it resumes behind this chunk
    /// (`None` for the last, open-ended chunk).
    pub hi: Option<Key>,
}

/// What a caller of [`verify_table_from`] does after each chunk (a resumable caller records
/// the chunk's `hi`); an error stops the comparison.
#[async_trait::async_trait]
pub trait OnChunk: Send {
    async fn chunk(&mut self, c: &Chunk) -> Result<()>;
}

/// [`verify_table`] starting after key `after` (a resumed pass: rows at or below it are not
/// compared), calling `on_chunk` after every chunk.
pub async fn verify_table_from(
    src: &Client,
    dst: &Client,
    plan: &Plan,
    opts: &Options,
    after: Option<Key>,
    on_chunk: &mut dyn OnChunk,
) -> Result<TableReport> {
    let started = Instant::now();
    let table = plan.source.to_string();
    let (s_side, t_side) = (plan.source_side(src), plan.target_side(dst));
    let mut throttle = Throttle {
        per_sec: opts.rows_per_sec,
        started,
        rows: 0,
    };
    let mut report = TableReport {
        table: table.clone(),
        targets: plan.targets.iter().map(|t| t.to_string()).collect(),
        compared_columns: plan.compared_columns(),
        ..Default::default()
    };
    let mut diff = Diff::default();
    let mut lo: Option<Key> = after;
    let mut done = 0i64;
    loop {
        // The next chunk: up to chunk_rows source keys after `lo`; the last one is open-ended.
        let keys = plan
            .keys(
                src,
                &Range {
                    lo: lo.clone(),
                    hi: None,
                },
                opts.chunk_rows,
            )
            .await?;
        let last = keys.len() < opts.chunk_rows as usize;
        let range = Range {
            lo: lo.clone(),
            hi: if last { None } else { keys.last().cloned() },
        };
        let (sn, ss) = plan.fingerprint(&s_side, &range).await?;
        let (tn, ts) = plan.fingerprint(&t_side, &range).await?;
        report.chunks += 1;
        report.source_rows += sn;
        report.target_rows += tn;
        let outcome = if (sn, ss) == (tn, ts) {
            "match"
        } else {
            report.mismatched_chunks += 1;
            bisect(plan, &s_side, &t_side, range.clone(), sn, &mut diff).await?;
            "mismatch"
        };
        record_chunk(&table, outcome, sn);
        done += sn;
        on_chunk
            .chunk(&Chunk {
                done,
                source_rows: sn,
                target_rows: tn,
                hi: range.hi.clone(),
            })
            .await?;
        throttle.account(sn + tn).await;
        if last {
            break;
        }
        lo = range.hi;
    }
    // Rows that were only in flight (the pipeline lags) are not differences: look again later.
    let diff = recheck(plan, &s_side, &t_side, diff, opts.recheck_after).await?;
    report.missing = diff.missing.into_iter().collect();
    report.extra = diff.extra.into_iter().collect();
    report.different = diff.different.into_iter().collect();
    let union = report.source_rows + report.extra.len() as i64;
    let equal = report.source_rows - report.missing.len() as i64 - report.different.len() as i64;
    report.parity_pct = if union == 0 {
        100.0
    } else {
        100.0 * equal.max(0) as f64 / union as f64
    };
    report.seconds = started.elapsed().as_secs_f64();
    record_report(&table, &report);
    Ok(report)
}

/// Look again at every differing key after `after`: what the pipeline applied meanwhile was
/// in flight, not a difference.
async fn recheck(
    plan: &Plan,
    s_side: &Side<'_>,
    t_side: &Side<'_>,
    diff: Diff,
    after: Duration,
) -> Result<Diff> {
    let suspects: Vec<Key> = diff
        .missing
        .iter()
        .chain(&diff.extra)
        .chain(&diff.different)
        .cloned()
        .collect();
    if suspects.is_empty() {
        return Ok(diff);
    }
    tokio::time::sleep(after).await;
    let mut again = Diff::default();
    for chunk in suspects.chunks(500) {
        let s = plan.rows(s_side, None, Some(chunk)).await?;
        let t = plan.rows(t_side, None, Some(chunk)).await?;
        classify(&s, &t, &mut again);
    }
    Ok(again)
}

/// One compared chunk (`match` | `mismatch`) of `rows` source rows.
fn record_chunk(table: &str, outcome: &'static str, rows: i64) {
    metrics::counter!(names::VERIFY_CHUNKS_TOTAL, names::LABEL_TABLE => table.to_string(), names::LABEL_OUTCOME => outcome)
        .increment(1);
    metrics::counter!(names::VERIFY_ROWS_TOTAL, names::LABEL_TABLE => table.to_string())
        .increment(rows.max(0) as u64);
}

/// A finished table: its differences by kind and its parity.
fn record_report(table: &str, report: &TableReport) {
    for (kind, n) in [
        ("missing", report.missing.len()),
        ("extra", report.extra.len()),
        ("different", report.different.len()),
    ] {
        metrics::gauge!(names::VERIFY_DIFFERENCES, names::LABEL_TABLE => table.to_string(), names::LABEL_KIND => kind)
            .set(n as f64);
    }
    metrics::gauge!(names::VERIFY_PARITY_RATIO, names::LABEL_TABLE => table.to_string())
        .set(report.parity_pct / 100.0);
}

/// Narrow a mismatched range down to rows: split by the source's median key while it has more
/// than LEAF_ROWS rows, skipping halves whose fingerprints agree.
async fn bisect(
    plan: &Plan,
    s_side: &Side<'_>,
    t_side: &Side<'_>,
    range: Range,
    source_rows: i64,
    diff: &mut Diff,
) -> Result<()> {
    let mut stack = vec![(range, source_rows)];
    while let Some((r, n)) = stack.pop() {
        if n <= LEAF_ROWS {
            let s = plan.rows(s_side, Some(&r), None).await?;
            let t = plan.rows(t_side, Some(&r), None).await?;
            // A range with few source rows can hold many extra target rows: fine, fetched.
            classify(&s, &t, diff);
            continue;
        }
        let keys = plan.keys(s_side.client, &r, n).await?;
        let mid = keys[keys.len() / 2 - 1].clone();
        for half in [
            Range {
                lo: r.lo.clone(),
                hi: Some(mid.clone()),
            },
            Range {
                lo: Some(mid.clone()),
                hi: r.hi.clone(),
            },
        ] {
            let (sn, ss) = plan.fingerprint(s_side, &half).await?;
            let (tn, ts) = plan.fingerprint(t_side, &half).await?;
            if (sn, ss) != (tn, ts) {
                stack.push((half, sn));
            }
        }
    }
    Ok(())
}
