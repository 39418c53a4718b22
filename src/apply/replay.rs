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

use tokio_postgres::Client;

use crate::error::{Error, ErrorKind, Result};

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
