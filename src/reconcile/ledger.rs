//! The discrepancy ledger and the pass history, in the target (`cutover.discrepancies`,
//! `cutover.reconcile_passes`, `cutover.repair_audit`; DDL in `crate::state`).
//!
//! ```text
//!   pass of (sink, table) confirms keys K ──▶ open row per (key, kind): insert, or last_seen = now
//!                                         ──▶ open rows not in K (a complete pass only):
//!                                             resolved_at = now, resolution = 'converged'
//!   repair (auto)                         ──▶ resolved_at = now, resolution = 'repaired: …',
//!                                             one repair_audit row per key
//! ```
//!
//! Invariant: at most one open row per (sink, table, key, kind) (a partial unique index), so
//! `first_seen` is when the difference was first confirmed and survives every later pass
//! until it is resolved. A resumed pass (it did not compare the keys before its resume point)
//! resolves nothing: only a complete pass can say a difference is gone.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::verify::Key;

/// What kind of difference a key has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// On the source, not on the target.
    Missing,
    /// On the target, not on the source.
    Extra,
    /// On both, with different compared columns.
    Different,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Different => "different",
        }
    }
}

/// A key as the ledger stores it: a JSON array of the key columns' text values.
pub fn key_value(key: &Key) -> serde_json::Value {
    serde_json::Value::Array(
        key.iter()
            .map(|v| {
                v.clone()
                    .map_or(serde_json::Value::Null, serde_json::Value::String)
            })
            .collect(),
    )
}

fn key_json(key: &Key) -> String {
    key_value(key).to_string()
}

/// The ledger of one table after a pass: open discrepancies and the oldest one's age.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Open {
    pub count: i64,
    pub oldest_age_secs: f64,
}

/// Record the differences a pass of `(sink, table)` confirmed. With `complete`, open rows the
/// pass did not find again are resolved as `converged`.
pub async fn record(
    c: &mut Client,
    sink: &str,
    table: &str,
    found: &[(Kind, Key)],
    complete: bool,
) -> Result<Open> {
    let err = |e| Error::postgres(format!("recording discrepancies of {table}"), e);
    let tx = c.transaction().await.map_err(err)?;
    let all: Vec<serde_json::Value> = found
        .iter()
        .map(|(k, key)| serde_json::json!({"kind": k.as_str(), "key": key_value(key)}))
        .collect();
    let all = serde_json::Value::Array(all).to_string();
    tx.execute(
        "INSERT INTO cutover.discrepancies (sink, source_table, row_key, kind)
         SELECT $1, $2, f->'key', f->>'kind' FROM jsonb_array_elements($3::text::jsonb) f
         ON CONFLICT (sink, source_table, row_key, kind) WHERE resolved_at IS NULL
         DO UPDATE SET last_seen = now()",
        &[&sink, &table, &all],
    )
    .await
    .map_err(err)?;
    if complete {
        tx.execute(
            "UPDATE cutover.discrepancies d SET resolved_at = now(), resolution = 'converged'
             WHERE d.sink = $1 AND d.source_table = $2 AND d.resolved_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements($3::text::jsonb) f
                               WHERE f->>'kind' = d.kind AND f->'key' = d.row_key)",
            &[&sink, &table, &all],
        )
        .await
        .map_err(err)?;
    }
    let open = open(&tx, sink, table).await?;
    tx.commit().await.map_err(err)?;
    Ok(open)
}

/// The open discrepancies of `(sink, table)` now.
pub async fn open(c: &impl tokio_postgres::GenericClient, sink: &str, table: &str) -> Result<Open> {
    let r = c
        .query_one(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(first_seen)), 0)::float8
             FROM cutover.discrepancies
             WHERE sink = $1 AND source_table = $2 AND resolved_at IS NULL",
            &[&sink, &table],
        )
        .await
        .map_err(|e| Error::postgres(format!("counting discrepancies of {table}"), e))?;
    Ok(Open {
        count: r.get(0),
        oldest_age_secs: r.get(1),
    })
}

/// Resolve `keys` as repaired (`how`) and audit each repair.
pub async fn repaired(
    c: &mut Client,
    pipeline: &str,
    sink: &str,
    table: &str,
    keys: &[(Kind, Key)],
    how: &str,
) -> Result<()> {
    let err = |e| Error::postgres(format!("recording repairs of {table}"), e);
    let tx = c.transaction().await.map_err(err)?;
    for (kind, key) in keys {
        let k = key_json(key);
        tx.execute(
            "UPDATE cutover.discrepancies SET resolved_at = now(), resolution = $5
             WHERE sink = $1 AND source_table = $2 AND row_key = $3::text::jsonb AND kind = $4
               AND resolved_at IS NULL",
            &[
                &sink,
                &table,
                &k,
                &kind.as_str(),
                &format!("repaired: {how}"),
            ],
        )
        .await
        .map_err(err)?;
        tx.execute(
            "INSERT INTO cutover.repair_audit (pipeline, sink, source_table, row_key, kind, action, repaired_by)
             VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, 'cutover reconcile')",
            &[&pipeline, &sink, &table, &k, &kind.as_str(), &how],
        )
        .await
        .map_err(err)?;
    }
    tx.commit().await.map_err(err)
}

/// One open (or, with `all`, any) ledger row, for `cutover reconcile report`.
#[derive(Debug, Clone, Serialize)]
pub struct Discrepancy {
    pub sink: String,
    pub table: String,
    pub key: serde_json::Value,
    pub kind: String,
    pub first_seen: String,
    pub last_seen: String,
    pub resolved_at: Option<String>,
    pub resolution: Option<String>,
}

/// Ledger rows of `sink` (every sink when `None`), open ones only unless `all`, oldest first.
pub async fn list(c: &Client, sink: Option<&str>, all: bool) -> Result<Vec<Discrepancy>> {
    let rows = c
        .query(
            "SELECT sink, source_table, row_key::text, kind,
                    to_char(first_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    to_char(resolved_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    resolution
             FROM cutover.discrepancies
             WHERE ($1::text IS NULL OR sink = $1) AND ($2 OR resolved_at IS NULL)
             ORDER BY first_seen, id",
            &[&sink, &all],
        )
        .await
        .map_err(|e| Error::postgres("reading cutover.discrepancies", e))?;
    Ok(rows
        .iter()
        .map(|r| Discrepancy {
            sink: r.get(0),
            table: r.get(1),
            key: serde_json::from_str(r.get::<_, &str>(2)).unwrap_or_default(),
            kind: r.get(3),
            first_seen: r.get(4),
            last_seen: r.get(5),
            resolved_at: r.get(6),
            resolution: r.get(7),
        })
        .collect())
}

/// Where a table's pass stands: a fresh pass, or one resumed behind `resume_key`.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    /// `started_at` as the database's text, the pass's identity.
    pub started_at: String,
    pub resume_key: Option<Key>,
    pub source_rows: i64,
    pub target_rows: i64,
    pub chunks: i64,
}

/// The unfinished pass of `(sink, table)` to resume, or a new one.
pub async fn begin(c: &Client, sink: &str, table: &str) -> Result<Pass> {
    let err = |e| Error::postgres(format!("starting a reconcile pass of {table}"), e);
    if let Some(r) = c
        .query_opt(
            "SELECT started_at::text, resume_key::text, source_rows, target_rows, chunks
             FROM cutover.reconcile_passes
             WHERE sink = $1 AND source_table = $2 AND completed_at IS NULL
             ORDER BY started_at DESC LIMIT 1",
            &[&sink, &table],
        )
        .await
        .map_err(err)?
    {
        let key: Option<String> = r.get(1);
        return Ok(Pass {
            started_at: r.get(0),
            resume_key: key.and_then(|k| serde_json::from_str::<Key>(&k).ok()),
            source_rows: r.get(2),
            target_rows: r.get(3),
            chunks: r.get(4),
        });
    }
    let started: String = c
        .query_one(
            "INSERT INTO cutover.reconcile_passes (sink, source_table, started_at)
             VALUES ($1, $2, clock_timestamp()) RETURNING started_at::text",
            &[&sink, &table],
        )
        .await
        .map_err(err)?
        .get(0);
    Ok(Pass {
        started_at: started,
        ..Default::default()
    })
}

/// Record how far a pass got (after each chunk): a restart resumes behind `key`.
pub async fn checkpoint(
    c: &Client,
    sink: &str,
    table: &str,
    pass: &Pass,
    key: Option<&Key>,
) -> Result<()> {
    let key = key.map(key_json);
    c.execute(
        "UPDATE cutover.reconcile_passes
         SET resume_key = $4::text::jsonb, source_rows = $5, target_rows = $6, chunks = $7
         WHERE sink = $1 AND source_table = $2 AND started_at = $3::text::timestamptz",
        &[
            &sink,
            &table,
            &pass.started_at,
            &key,
            &pass.source_rows,
            &pass.target_rows,
            &pass.chunks,
        ],
    )
    .await
    .map_err(|e| Error::postgres(format!("recording the reconcile position of {table}"), e))?;
    Ok(())
}

/// A table's pass is complete.
pub async fn complete(
    c: &Client,
    sink: &str,
    table: &str,
    pass: &Pass,
    differences: i64,
    parity: f64,
    seconds: f64,
) -> Result<()> {
    c.execute(
        "UPDATE cutover.reconcile_passes
         SET completed_at = clock_timestamp(), resume_key = NULL, source_rows = $4,
             target_rows = $5, chunks = $6, differences = $7, parity = $8, seconds = $9
         WHERE sink = $1 AND source_table = $2 AND started_at = $3::text::timestamptz",
        &[
            &sink,
            &table,
            &pass.started_at,
            &pass.source_rows,
            &pass.target_rows,
            &pass.chunks,
            &differences,
            &parity,
            &seconds,
        ],
    )
    .await
    .map_err(|e| Error::postgres(format!("completing the reconcile pass of {table}"), e))?;
    Ok(())
}

/// The last completed pass of `(sink, table)`: `(completed_at as Unix seconds, parity)`.
pub async fn last_completed(c: &Client, sink: &str, table: &str) -> Result<Option<(f64, f64)>> {
    let r = c
        .query_opt(
            "SELECT extract(epoch FROM completed_at)::float8, parity FROM cutover.reconcile_passes
             WHERE sink = $1 AND source_table = $2 AND completed_at IS NOT NULL
             ORDER BY completed_at DESC LIMIT 1",
            &[&sink, &table],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading reconcile passes of {table}"), e))?;
    Ok(r.map(|r| (r.get(0), r.get(1))))
}

/// Open discrepancies of `(sink, table)` first seen more than `secs` ago.
pub async fn open_older_than(c: &Client, sink: &str, table: &str, secs: f64) -> Result<i64> {
    Ok(c.query_one(
        "SELECT count(*) FROM cutover.discrepancies
             WHERE sink = $1 AND source_table = $2 AND resolved_at IS NULL
               AND first_seen < now() - make_interval(secs => $3)",
        &[&sink, &table, &secs],
    )
    .await
    .map_err(|e| Error::postgres(format!("reading discrepancies of {table}"), e))?
    .get(0))
}
