//! The target PostgreSQL store: catalog lookups, table creation for identity sinks, the
//! progress tables in schema `cutover`, and the set-based statements a batch runs.
//!
//! Progress (`cutover.sink_progress`) is the source of truth for where a sink is: one row per
//! (sink, topic, partition) with the next offset and the last applied `(commit_lsn, seq)`. It
//! is written in the same transaction as the data it covers, so the two can never disagree.
//! The rows are locked (`FOR UPDATE`) at the start of every batch, so two instances of one sink
//! can never both apply the same events, whatever Kafka's rebalances do.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::{Client, Statement};

use super::decode::FieldInfo;
use super::mapping::TargetTable;
use crate::error::{Error, Result};
use crate::event::TableId;

pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn qualified(t: &TableId) -> String {
    format!("{}.{}", quote(&t.schema), quote(&t.name))
}

pub const STATE_DDL: &str = "
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS cutover;
CREATE TABLE IF NOT EXISTS cutover.sink_progress (
    sink text NOT NULL,
    topic text NOT NULL,
    kafka_partition int NOT NULL,
    next_offset bigint NOT NULL,
    commit_lsn bigint NOT NULL,
    seq bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, topic, kafka_partition)
);
CREATE TABLE IF NOT EXISTS cutover.sink_truncates (
    sink text NOT NULL,
    source_table text NOT NULL,
    commit_lsn bigint NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (sink, source_table)
);";

/// Stored progress of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub next_offset: i64,
    pub commit_lsn: i64,
    pub seq: i64,
}

impl Progress {
    /// Already applied: below the next offset, or at/below the last `(commit_lsn, seq)`.
    pub fn covers(&self, offset: i64, commit_lsn: i64, seq: i64) -> bool {
        offset < self.next_offset || (commit_lsn, seq) <= (self.commit_lsn, self.seq)
    }
}

pub async fn ensure_state(client: &Client) -> Result<()> {
    client
        .batch_execute(&format!(
            "{STATE_DDL}{}{}",
            crate::backsync::conflict::CONFLICTS_DDL,
            super::replay::REPLAY_DDL
        ))
        .await
        .map_err(|e| Error::postgres("creating schema cutover and its progress tables", e))
}

/// Rows of (topic, kafka_partition, next_offset, commit_lsn, seq) → progress by partition.
fn progress_map(rows: &[tokio_postgres::Row]) -> HashMap<(String, i32), Progress> {
    rows.iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                Progress {
                    next_offset: r.get(2),
                    commit_lsn: r.get(3),
                    seq: r.get(4),
                },
            )
        })
        .collect()
}

/// Stored progress of every partition of `sink` (outside a batch; for seeking and status).
pub async fn progress(client: &Client, sink: &str) -> Result<HashMap<(String, i32), Progress>> {
    let rows = client
        .query(
            "SELECT topic, kafka_partition, next_offset, commit_lsn, seq FROM cutover.sink_progress WHERE sink = $1",
            &[&sink],
        )
        .await
        .map_err(|e| Error::postgres("reading cutover.sink_progress", e))?;
    Ok(progress_map(&rows))
}

/// Lock (creating if needed) the progress rows of `parts` inside the batch transaction.
pub async fn lock_progress(
    tx: &Client,
    sink: &str,
    parts: &[(String, i32)],
) -> Result<HashMap<(String, i32), Progress>> {
    let topics: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    let partitions: Vec<i32> = parts.iter().map(|p| p.1).collect();
    tx.execute(
        "INSERT INTO cutover.sink_progress (sink, topic, kafka_partition, next_offset, commit_lsn, seq)
         SELECT $1, t, p, 0, -1, -1 FROM unnest($2::text[], $3::int[]) AS u(t, p)
         ON CONFLICT DO NOTHING",
        &[&sink, &topics, &partitions],
    )
    .await
    .map_err(|e| Error::postgres("creating progress rows", e))?;
    let rows = tx
        .query(
            "SELECT topic, kafka_partition, next_offset, commit_lsn, seq FROM cutover.sink_progress
             WHERE sink = $1 AND (topic, kafka_partition) IN (SELECT * FROM unnest($2::text[], $3::int[]))
             ORDER BY topic, kafka_partition FOR UPDATE",
            &[&sink, &topics, &partitions],
        )
        .await
        .map_err(|e| Error::postgres("locking progress rows", e))?;
    Ok(progress_map(&rows))
}

pub async fn save_progress(
    tx: &Client,
    sink: &str,
    progress: &HashMap<(String, i32), Progress>,
) -> Result<()> {
    let mut topics = vec![];
    let mut parts = vec![];
    let mut offsets = vec![];
    let mut lsns = vec![];
    let mut seqs = vec![];
    for ((t, p), pr) in progress {
        topics.push(t.as_str());
        parts.push(*p);
        offsets.push(pr.next_offset);
        lsns.push(pr.commit_lsn);
        seqs.push(pr.seq);
    }
    tx.execute(
        "UPDATE cutover.sink_progress s SET next_offset = u.o, commit_lsn = u.l, seq = u.s, updated_at = now()
         FROM unnest($2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[]) AS u(t, p, o, l, s)
         WHERE s.sink = $1 AND s.topic = u.t AND s.kafka_partition = u.p",
        &[&sink, &topics, &parts, &offsets, &lsns, &seqs],
    )
    .await
    .map_err(|e| Error::postgres("saving progress", e))?;
    Ok(())
}

/// Truncate watermarks of `sink`: source table → last applied truncate `(commit_lsn, seq)`.
pub async fn truncates(client: &Client, sink: &str) -> Result<HashMap<String, (i64, i64)>> {
    let rows = client
        .query(
            "SELECT source_table, commit_lsn, seq FROM cutover.sink_truncates WHERE sink = $1",
            &[&sink],
        )
        .await
        .map_err(|e| Error::postgres("reading cutover.sink_truncates", e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

pub async fn save_truncate(tx: &Client, sink: &str, table: &str, at: (i64, i64)) -> Result<()> {
    tx.execute(
        "INSERT INTO cutover.sink_truncates VALUES ($1, $2, $3, $4)
         ON CONFLICT (sink, source_table) DO UPDATE SET commit_lsn = excluded.commit_lsn, seq = excluded.seq",
        &[&sink, &table, &at.0, &at.1],
    )
    .await
    .map_err(|e| Error::postgres("saving truncate watermark", e))?;
    Ok(())
}

/// Drop `sink`'s truncate watermarks of `tables` (replay, retire).
pub async fn clear_truncates(
    tx: &impl tokio_postgres::GenericClient,
    sink: &str,
    tables: &[String],
) -> Result<()> {
    tx.execute(
        "DELETE FROM cutover.sink_truncates WHERE sink = $1 AND source_table = ANY($2)",
        &[&sink, &tables],
    )
    .await
    .map_err(|e| Error::postgres("clearing cutover.sink_truncates", e))?;
    Ok(())
}

/// Drop `sink`'s progress rows of `topics` (retire: the sink is gone for good). Returns the
/// number of rows removed.
pub async fn forget_progress(
    tx: &impl tokio_postgres::GenericClient,
    sink: &str,
    topics: &[String],
) -> Result<u64> {
    tx.execute(
        "DELETE FROM cutover.sink_progress WHERE sink = $1 AND topic = ANY($2)",
        &[&sink, &topics],
    )
    .await
    .map_err(|e| Error::postgres("deleting from cutover.sink_progress", e))
}

/// The target's view of a table, `None` if it does not exist.
pub async fn describe(client: &Client, t: &TableId) -> Result<Option<TargetTable>> {
    let name = qualified(t);
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                    coalesce((SELECT k.ord::int FROM unnest(i.indkey) WITH ORDINALITY AS k(n, ord) WHERE k.n = a.attnum), 0)
             FROM pg_attribute a
             LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&name],
        )
        .await
        .map_err(|e| Error::postgres(format!("describing target table {t}"), e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut key: Vec<(i32, String)> = vec![];
    let mut columns = BTreeMap::new();
    for r in &rows {
        let n: String = r.get(0);
        let pos: i32 = r.get(2);
        if pos > 0 {
            key.push((pos, n.clone()));
        }
        columns.insert(n, r.get(1));
    }
    key.sort();
    Ok(Some(TargetTable {
        id: t.clone(),
        columns,
        key: key.into_iter().map(|(_, n)| n).collect(),
    }))
}

/// The PostgreSQL type for a captured column: its source type if the target knows it, else
/// one derived from the Avro type.
pub async fn column_type(client: &Client, f: &FieldInfo) -> Result<String> {
    if let Some(t) = &f.pg_type {
        let known: Option<String> = client
            .query_one("SELECT to_regtype($1)::text", &[t])
            .await
            .map_err(|e| Error::postgres("to_regtype", e))?
            .get(0);
        if known.is_some() {
            return Ok(t.clone());
        }
    }
    Ok(avro_pg_type(&f.avro))
}

fn avro_pg_type(a: &serde_json::Value) -> String {
    let logical = a["logicalType"].as_str();
    let base = a.as_str().or(a["type"].as_str()).unwrap_or("string");
    match (base, logical) {
        (_, Some("decimal")) => format!(
            "numeric({},{})",
            a["precision"].as_u64().unwrap_or(38),
            a["scale"].as_u64().unwrap_or(0)
        ),
        (_, Some("uuid")) => "uuid".into(),
        (_, Some("date")) => "date".into(),
        (_, Some("time-micros")) => "time".into(),
        (_, Some("local-timestamp-micros")) => "timestamp".into(),
        (_, Some("timestamp-micros")) => "timestamptz".into(),
        ("boolean", _) => "boolean".into(),
        ("int", _) => "integer".into(),
        ("long", _) => "bigint".into(),
        ("float", _) => "real".into(),
        ("double", _) => "double precision".into(),
        ("bytes", _) => "bytea".into(),
        ("array", _) => {
            let items = &a["items"];
            let inner = items
                .as_array()
                .and_then(|u| u.iter().find(|b| *b != "null"))
                .unwrap_or(items);
            format!("{}[]", avro_pg_type(inner))
        }
        _ => "text".into(),
    }
}

/// Create an identity target table (and schema) from a captured layout.
pub async fn create_table(
    client: &Client,
    t: &TableId,
    fields: &[FieldInfo],
    key: &[String],
) -> Result<()> {
    let mut cols = vec![];
    for f in fields {
        cols.push(format!(
            "{} {}",
            quote(&f.name),
            column_type(client, f).await?
        ));
    }
    let pk: Vec<String> = key.iter().map(|k| quote(k)).collect();
    let sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
        quote(&t.schema),
        qualified(t),
        cols.join(", "),
        pk.join(", ")
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| Error::postgres(format!("creating target table {t}"), e))?;
    tracing::info!(table = %t, "created target table");
    Ok(())
}

pub async fn add_column(client: &Client, t: &TableId, f: &FieldInfo) -> Result<()> {
    let ty = column_type(client, f).await?;
    client
        .batch_execute(&format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {ty}",
            qualified(t),
            quote(&f.name)
        ))
        .await
        .map_err(|e| Error::postgres(format!("adding column {t}.{}", f.name), e))?;
    tracing::info!(table = %t, column = %f.name, "added target column");
    Ok(())
}

/// Prepared set-based statements, cached by SQL text.
#[derive(Default)]
pub struct Statements {
    cache: HashMap<String, Statement>,
}

impl Statements {
    pub fn clear(&mut self) {
        self.cache.clear();
    }

    async fn get(&mut self, tx: &Client, sql: String) -> Result<Statement> {
        if let Some(s) = self.cache.get(&sql) {
            return Ok(s.clone());
        }
        let s = tx
            .prepare(&sql)
            .await
            .map_err(|e| Error::postgres("preparing apply statement", e))?;
        self.cache.insert(sql, s.clone());
        Ok(s)
    }

    /// `INSERT ... SELECT FROM unnest(text arrays) ON CONFLICT (key) DO UPDATE` for rows that
    /// all carry the same columns.
    pub async fn upsert(
        &mut self,
        tx: &Client,
        t: &TargetTable,
        cast: &BTreeMap<String, String>,
        cols: &[String],
        values: &[Vec<Option<String>>],
    ) -> Result<u64> {
        let select: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ty = &t.columns[c];
                match cast.get(c) {
                    Some(via) => format!("u.c{i}::{via}::{ty}"),
                    None => format!("u.c{i}::{ty}"),
                }
            })
            .collect();
        let params: Vec<String> = (0..cols.len())
            .map(|i| format!("${}::text[]", i + 1))
            .collect();
        let names: Vec<String> = (0..cols.len()).map(|i| format!("c{i}")).collect();
        let updates: Vec<String> = cols
            .iter()
            .filter(|c| !t.key.contains(c))
            .map(|c| format!("{0} = excluded.{0}", quote(c)))
            .collect();
        let conflict = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let sql =
            format!(
            "INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS u({}) ON CONFLICT ({}) {conflict}",
            qualified(&t.id),
            cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", "),
            select.join(", "),
            params.join(", "),
            names.join(", "),
            t.key.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", "),
        );
        let stmt = self.get(tx, sql).await?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        tx.execute(&stmt, &params)
            .await
            .map_err(|e| Error::postgres(format!("upserting into {}", t.id), e))
    }

    /// `DELETE ... WHERE (key) IN (SELECT FROM unnest(text arrays))`.
    pub async fn delete(
        &mut self,
        tx: &Client,
        t: &TargetTable,
        keys: &[Vec<Option<String>>],
    ) -> Result<u64> {
        let select: Vec<String> = t
            .key
            .iter()
            .enumerate()
            .map(|(i, c)| format!("u.c{i}::{}", t.columns[c]))
            .collect();
        let params: Vec<String> = (0..t.key.len())
            .map(|i| format!("${}::text[]", i + 1))
            .collect();
        let names: Vec<String> = (0..t.key.len()).map(|i| format!("c{i}")).collect();
        let sql = format!(
            "DELETE FROM {} WHERE ({}) IN (SELECT {} FROM unnest({}) AS u({}))",
            qualified(&t.id),
            t.key
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", "),
            select.join(", "),
            params.join(", "),
            names.join(", "),
        );
        let stmt = self.get(tx, sql).await?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = keys
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        tx.execute(&stmt, &params)
            .await
            .map_err(|e| Error::postgres(format!("deleting from {}", t.id), e))
    }
}
