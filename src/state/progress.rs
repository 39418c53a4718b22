//! A sink's progress in its target: `cutover.sink_progress` (one row per sink, topic and
//! partition: the next offset and the last applied `(commit_lsn, seq)`), the truncate
//! watermarks in `cutover.sink_truncates`, and the replay audit.
//!
//! Progress is the source of truth for where a sink is. It is written in the same
//! transaction as the data it covers, so the two can never disagree, and its rows are locked
//! (`FOR UPDATE`) at the start of every batch, so two instances of one sink can never both
//! apply the same events, whatever Kafka's rebalances do. It moves backward only in
//! [`reset`], which `replay` calls under the sink's exclusive lock.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::error::{Error, Result};

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

/// Set the stored progress of `starts` (topic, partition → next offset), clear the sink's
/// truncate watermarks for `tables`, and write the audit row, in one transaction. Returns
/// the audit row id.
pub async fn reset(
    client: &mut Client,
    sink: &str,
    starts: &HashMap<(String, i32), i64>,
    tables: &[String],
    audit: (&str, &str, i64),
) -> Result<i64> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::postgres("BEGIN", e))?;
    let (topics, parts, offsets): (Vec<&str>, Vec<i32>, Vec<i64>) = {
        let mut t = Vec::new();
        let mut p = Vec::new();
        let mut o = Vec::new();
        for ((topic, part), off) in starts {
            t.push(topic.as_str());
            p.push(*part);
            o.push(*off);
        }
        (t, p, o)
    };
    tx.execute(
        "INSERT INTO cutover.sink_progress AS s (sink, topic, kafka_partition, next_offset, commit_lsn, seq)
         SELECT $1, t, p, o, -1, -1 FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, o)
         ON CONFLICT (sink, topic, kafka_partition)
         DO UPDATE SET next_offset = excluded.next_offset, commit_lsn = -1, seq = -1, updated_at = now()",
        &[&sink, &topics, &parts, &offsets],
    )
    .await
    .map_err(|e| Error::postgres("resetting cutover.sink_progress", e))?;
    clear_truncates(&tx, sink, tables).await?;
    let all_topics: Vec<String> = {
        let mut v: Vec<String> = starts.keys().map(|(t, _)| t.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let id: i64 = tx
        .query_one(
            "INSERT INTO cutover.replay_audit (sink, requested_by, spec, topics, events)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&sink, &audit.0, &audit.1, &all_topics, &audit.2],
        )
        .await
        .map_err(|e| Error::postgres("writing cutover.replay_audit", e))?
        .get(0);
    tx.commit()
        .await
        .map_err(|e| Error::postgres("COMMIT of the replay reset", e))?;
    Ok(id)
}

pub async fn finish(client: &Client, id: i64) -> Result<()> {
    client
        .execute(
            "UPDATE cutover.replay_audit SET finished_at = now() WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(|e| Error::postgres("updating cutover.replay_audit", e))?;
    Ok(())
}
