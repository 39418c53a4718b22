//! Replay: re-apply topic history into a sink, e.g. to rebuild an emptied store or to fix data
//! after a mapping change.
//!
//! ```text
//!   replay takes pg_advisory_lock(sink)  ── refused while any sink instance holds it shared
//!      │  (a running `cutover apply` holds it shared for its whole life)
//!      ▼
//!   start offsets (beginning | offset | timestamp → ListOffsets by time; record times are
//!   source commit times) and end offsets (high watermarks, or --to-timestamp)
//!      ▼
//!   one transaction in the target: progress rows := start, truncate watermarks cleared,
//!   audit row written
//!      ▼
//!   the sink runs in this process, bounded: nothing at or past an end offset is applied;
//!   done when every partition's stored progress reaches its end
//! ```
//!
//! Invariant: progress only moves backward here, under the exclusive lock, with no sink
//! instance running; the sink's own effectively-once machinery then re-applies from there
//! (events are upserts/deletes by key, so re-applying history converges to the same rows).

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::error::{Error, ErrorKind, Result};

pub const REPLAY_DDL: &str = "
CREATE TABLE IF NOT EXISTS cutover.replay_audit (
    id bigserial PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    sink text NOT NULL,
    requested_by text NOT NULL,
    spec text NOT NULL,
    topics text[] NOT NULL,
    events bigint NOT NULL
);";

/// The advisory-lock key of a sink: its consumer group, which is unique per pipeline and sink
/// (two pipelines may both have a sink called `mirror` writing one database).
const LOCK_SQL_KEY: &str = "hashtext('cutover.sink.' || $1)";

/// Taken by every running sink instance, for the life of its connection: a replay cannot
/// start while one runs. Fails (`Conflict`) while a replay holds the lock.
pub async fn hold_shared(client: &Client, sink: &str, group: &str) -> Result<()> {
    let ok: bool = client
        .query_one(
            &format!("SELECT pg_try_advisory_lock_shared({LOCK_SQL_KEY})"),
            &[&group],
        )
        .await
        .map_err(|e| Error::postgres("taking the sink's advisory lock", e))?
        .get(0);
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Conflict,
            format!("sink {sink}: a replay of this sink is in progress; start the sink when it has finished"),
        ))
    }
}

/// Taken by a replay: fails (`Conflict`) while any instance of the sink runs. Waits up to 5 s,
/// so a sink that was just stopped has time to close its connection.
pub async fn hold_exclusive(client: &Client, sink: &str, group: &str) -> Result<()> {
    client
        .batch_execute("SET lock_timeout = '5s'")
        .await
        .map_err(|e| Error::postgres("SET lock_timeout", e))?;
    let r = client
        .query_one(
            &format!("SELECT pg_advisory_lock({LOCK_SQL_KEY})"),
            &[&group],
        )
        .await;
    let _ = client.batch_execute("RESET lock_timeout").await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code() != Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            Err(Error::postgres("taking the sink's advisory lock", e))
        }
        Err(_) => Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "sink {sink} is running (an instance holds its lock): stop every instance of it \
                 (cutover apply --sink {sink}, or cutover run), then replay"
            ),
        )),
    }
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
    super::target::clear_truncates(&tx, sink, tables).await?;
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
