//! `cutover.backfill` on the source: one row per (pipeline, table) with the request (chunk
//! size, throttle, estimate) and the progress (last key copied and acknowledged, rows, chunks,
//! state). `cutover backfill` writes requests and reads progress; capture's backfill workers
//! claim requests and record each acknowledged chunk, so a restart resumes after the last one.
//!
//! ```text
//!   pending ──claim──▶ running ──(chunk acked: last_key, rows_done)──▶ … ──last chunk──▶ done
//!   request again: keeps progress (or, with restart, clears it); a failed one becomes pending
//! ```

use tokio_postgres::Client;

use crate::error::{Error, Result};

/// Record (or renew) a request.
pub async fn request(
    c: &Client,
    pipeline: &str,
    table: &str,
    chunk_rows: i32,
    rows_per_sec: i32,
    estimated: i64,
    restart: bool,
) -> Result<()> {
    c.execute(
        "INSERT INTO cutover.backfill (pipeline, table_name, state, chunk_rows, rows_per_sec, rows_estimated)
         VALUES ($1, $2, 'pending', $3, $4, $5)
         ON CONFLICT (pipeline, table_name) DO UPDATE SET
           chunk_rows = EXCLUDED.chunk_rows, rows_per_sec = EXCLUDED.rows_per_sec,
           rows_estimated = EXCLUDED.rows_estimated, requested_at = now(), error = NULL,
           state = CASE WHEN $6 OR cutover.backfill.state = 'failed'
                        THEN 'pending' ELSE cutover.backfill.state END,
           last_key = CASE WHEN $6 THEN NULL ELSE cutover.backfill.last_key END,
           rows_done = CASE WHEN $6 THEN 0 ELSE cutover.backfill.rows_done END,
           chunks_done = CASE WHEN $6 THEN 0 ELSE cutover.backfill.chunks_done END",
        &[&pipeline, &table, &chunk_rows, &rows_per_sec, &estimated, &restart],
    )
    .await
    .map_err(|e| Error::postgres("recording the backfill request", e))?;
    Ok(())
}

/// Progress of one table.
#[derive(Debug, Clone)]
pub struct Status {
    pub table: String,
    pub state: String,
    pub rows_done: i64,
    pub rows_estimated: i64,
}

/// Progress of `tables`, by name.
pub async fn status(c: &Client, pipeline: &str, tables: &[String]) -> Result<Vec<Status>> {
    let rows = c
        .query(
            "SELECT table_name, state, rows_done, rows_estimated FROM cutover.backfill
             WHERE pipeline = $1 AND table_name = ANY($2) ORDER BY table_name",
            &[&pipeline, &tables],
        )
        .await
        .map_err(|e| Error::postgres("reading backfill progress", e))?;
    Ok(rows
        .iter()
        .map(|r| Status {
            table: r.get(0),
            state: r.get(1),
            rows_done: r.get(2),
            rows_estimated: r.get(3),
        })
        .collect())
}

/// Tables with a request to work on, oldest request first.
pub async fn open_requests(c: &Client, pipeline: &str) -> Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT table_name FROM cutover.backfill
             WHERE pipeline = $1 AND state IN ('pending', 'running') ORDER BY requested_at",
            &[&pipeline],
        )
        .await
        .map_err(|e| Error::postgres("reading backfill requests", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A claimed request: where to resume and how.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The key of the last row copied and acknowledged (`None`: from the start).
    pub last_key: Option<Vec<String>>,
    pub chunk_rows: i32,
    pub rows_per_sec: i32,
    pub rows_done: i64,
    pub rows_estimated: i64,
}

/// Mark the request of `table` running and read where it stands.
pub async fn claim(c: &Client, pipeline: &str, table: &str) -> Result<Claim> {
    let row = c
        .query_one(
            "UPDATE cutover.backfill SET state = 'running', updated_at = now()
             WHERE pipeline = $1 AND table_name = $2
             RETURNING last_key, chunk_rows, rows_per_sec, rows_done, rows_estimated",
            &[&pipeline, &table],
        )
        .await
        .map_err(|e| Error::postgres("claiming the backfill request", e))?;
    Ok(Claim {
        last_key: row.get(0),
        chunk_rows: row.get(1),
        rows_per_sec: row.get(2),
        rows_done: row.get(3),
        rows_estimated: row.get(4),
    })
}

/// Record an acknowledged chunk: the new last key and row count, `done` after the last one.
pub async fn save_chunk(
    c: &Client,
    pipeline: &str,
    table: &str,
    last_key: &Option<Vec<String>>,
    rows_done: i64,
    done: bool,
) -> Result<()> {
    c.execute(
        "UPDATE cutover.backfill SET last_key = $3, rows_done = $4, chunks_done = chunks_done + 1,
                state = CASE WHEN $5 THEN 'done' ELSE 'running' END, updated_at = now()
         WHERE pipeline = $1 AND table_name = $2",
        &[&pipeline, &table, last_key, &rows_done, &done],
    )
    .await
    .map_err(|e| Error::postgres("saving backfill progress", e))?;
    Ok(())
}
