//! `cutover.capture_slots` and `cutover.capture_gaps` on the source: what capture remembers of
//! each slot it created, so a slot dropped or invalidated behind its back is loud instead of
//! silently recreated at the current WAL position.
//!
//! ```text
//!   slot created ──remember(created_lsn)──▶ row (pipeline, slot)
//!   heartbeat     ──advance(confirmed)────▶ confirmed_lsn = max(old, new): never backward
//!   start, slot missing or lost, row present ──▶ refuse, naming confirmed_lsn and the ways on
//!                                   └─ --accept-gap ──▶ new slot, a capture_gaps row (audit)
//! ```

use tokio_postgres::Client;

use crate::error::{Error, Result};

/// The remembered state of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub confirmed_lsn: u64,
    /// `updated_at`, as text (for messages).
    pub updated_at: String,
}

/// What is remembered of `slot` of `pipeline`, if capture ever created it.
pub async fn remembered(c: &Client, pipeline: &str, slot: &str) -> Result<Option<Remembered>> {
    let row = c
        .query_opt(
            "SELECT confirmed_lsn, updated_at::text FROM cutover.capture_slots
             WHERE pipeline = $1 AND slot = $2",
            &[&pipeline, &slot],
        )
        .await
        .map_err(|e| Error::postgres("reading cutover.capture_slots", e))?;
    Ok(row.map(|r| Remembered {
        confirmed_lsn: r.get::<_, i64>(0) as u64,
        updated_at: r.get(1),
    }))
}

/// Remember `slot` (created at, or found at, `lsn`); an existing row keeps its progress.
pub async fn remember(c: &Client, pipeline: &str, slot: &str, lsn: u64) -> Result<()> {
    c.execute(
        "INSERT INTO cutover.capture_slots (pipeline, slot, created_lsn, confirmed_lsn)
         VALUES ($1, $2, $3, $3) ON CONFLICT (pipeline, slot) DO NOTHING",
        &[&pipeline, &slot, &(lsn as i64)],
    )
    .await
    .map_err(|e| Error::postgres("writing cutover.capture_slots", e))?;
    Ok(())
}

/// Record that the slot is confirmed up to `lsn`; never moves it backward.
pub async fn advance(c: &Client, pipeline: &str, slot: &str, lsn: u64) -> Result<()> {
    c.execute(
        "UPDATE cutover.capture_slots
         SET confirmed_lsn = greatest(confirmed_lsn, $3), updated_at = now()
         WHERE pipeline = $1 AND slot = $2",
        &[&pipeline, &slot, &(lsn as i64)],
    )
    .await
    .map_err(|e| Error::postgres("advancing cutover.capture_slots", e))?;
    Ok(())
}

/// A new slot replaces a lost one: the gap is recorded, the memory starts again at `resumed`.
pub async fn accept_gap(
    c: &Client,
    pipeline: &str,
    slot: &str,
    reason: &str,
    lost_after: u64,
    resumed: u64,
    by: &str,
) -> Result<()> {
    c.execute(
        "INSERT INTO cutover.capture_gaps
             (pipeline, slot, reason, lost_after_lsn, resumed_at_lsn, accepted_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &pipeline,
            &slot,
            &reason,
            &(lost_after as i64),
            &(resumed as i64),
            &by,
        ],
    )
    .await
    .map_err(|e| Error::postgres("writing cutover.capture_gaps", e))?;
    c.execute(
        "UPDATE cutover.capture_slots SET created_lsn = $3, confirmed_lsn = $3, updated_at = now()
         WHERE pipeline = $1 AND slot = $2",
        &[&pipeline, &slot, &(resumed as i64)],
    )
    .await
    .map_err(|e| Error::postgres("writing cutover.capture_slots", e))?;
    Ok(())
}
