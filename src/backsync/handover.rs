//! The hand-over of a share step (`split`): keys that change owner must not lose the writes
//! their old owner's direction still carries.
//!
//! ```text
//!   bridge: stop routing the moving keys to their old owner
//!   phase set --to split --new-share N:  gate → record the step with pg_current_wal_lsn() of
//!                                        legacy and of the new store (cutover.share_steps)
//!   each direction: a change committed before the step on its side is judged by the old
//!                   share, one after it by the new (guard: share_at(commit_lsn))
//!   hand-over: wait until the old owner's direction has applied everything before the step:
//!              its capture confirmed past the step's LSN on its side, and its sink has no lag
//!   bridge: route the moving keys (buckets [old, new) or [new, old)) to their new owner
//! ```
//!
//! Invariant: a moving key's writes committed on its old owner before the step reach the new
//! owner before the bridge sends it any write (the wait), and the direction that carried them
//! stops carrying that key's later changes (they are leaks), so no write is lost or applied
//! out of order at a step.

use std::time::{Duration, Instant};

use crate::config::{Config, BACKSYNC_SINK};
use crate::database::Endpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Side;
use crate::state::phases::Step;

/// The direction that must drain for a step from `from_bp` to `to_bp`: keys move to the new
/// store when the share grows (the forward direction carried them), back to legacy when it
/// shrinks (the back-sync did). `None` when nothing moves.
pub fn draining(from_bp: u32, to_bp: u32) -> Option<Side> {
    match to_bp.cmp(&from_bp) {
        std::cmp::Ordering::Greater => Some(Side::Legacy),
        std::cmp::Ordering::Less => Some(Side::New),
        std::cmp::Ordering::Equal => None,
    }
}

/// The `pg_current_wal_lsn()` of a database, as a number.
pub async fn current_lsn(c: &tokio_postgres::Client, what: &str) -> Result<i64> {
    Ok(
        c.query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
            .await
            .map_err(|e| Error::postgres(format!("pg_current_wal_lsn() of {what}"), e))?
            .get(0),
    )
}

/// Wait until the direction that carried the moving keys (changes from `side`) has applied
/// everything committed before `step` on that side. Returns how long it took.
pub async fn wait(cfg: &Config, side: Side, step: &Step, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    let (pipeline, slot, sink) = match side {
        Side::Legacy => {
            let b = cfg
                .backsync
                .as_ref()
                .ok_or_else(|| Error::config("backsync: not configured"))?;
            (cfg.clone(), cfg.source.slot.clone(), b.forward_sink.clone())
        }
        Side::New => {
            let rev = cfg.reverse()?;
            let slot = rev.source.slot.clone();
            (rev, slot, BACKSYNC_SINK.to_string())
        }
    };
    let lsn = step.lsn(side);
    let source = Endpoint::source(&pipeline).connect().await?;
    loop {
        let confirmed: Option<i64> = source
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots
                 WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| Error::postgres("reading the slot's confirmed position", e))?
            .and_then(|r| r.get(0));
        if confirmed.is_some_and(|c| c >= lsn) {
            let snap = crate::monitor::Monitor::new(&pipeline)?.probe(false).await;
            if snap
                .sinks
                .iter()
                .find(|s| s.name == sink)
                .is_some_and(|s| s.lag_messages == 0)
            {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > timeout {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "hand-over not confirmed within {} s: slot {slot} at {confirmed:?}, needs {lsn}, and sink {sink} must have no lag; keep the moving keys away from both sides until it is (cutover status)",
                    timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_owners_direction_drains() {
        assert_eq!(draining(0, 1000), Some(Side::Legacy));
        assert_eq!(draining(5000, 1000), Some(Side::New));
        assert_eq!(draining(1000, 1000), None);
    }
}
