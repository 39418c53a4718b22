//! One capture per slot: the first instance leads, any other waits as a standby.
//!
//! ```text
//!   instance A                     source                       instance B
//!   pg_try_advisory_lock(slot) ──▶ granted (A's SQL session)
//!   ensure publication, slot
//!   START_REPLICATION ───────────▶ walsender (slot active, pid)
//!                                                  ◀── pg_try_advisory_lock(slot): refused
//!                                                      standby: touches nothing, /readyz 503,
//!                                                      cutover_capture_standby = 1, polls
//!   A dies: its sessions end, the lock and the slot are free
//!                                                  ◀── lock granted, slot inactive → leader
//! ```
//!
//! Invariant: only the instance holding the lock (a session-level advisory lock on the
//! source, keyed by the slot's name, held by the capture's SQL connection for its whole life)
//! writes the publication or the slot, and it starts streaming only once the slot is inactive.
//! The slot is the final arbiter: a leader whose SQL session died (the lock gone) while its
//! walsender still streams keeps the slot active, so a new lock holder still waits for the
//! slot. A standby never touches the publication, the slot or `cutover.capture_slots`.
//!
//! The lock needs no privilege (advisory locks are open to every role); it lives in the
//! source database the slot belongs to.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::{Error, Result};

/// The advisory-lock key of `slot`: `(hashtext('cutover.capture'), hashtext(slot))`.
const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('cutover.capture'), hashtext($1))";

/// Who holds the slot now: the walsender's pid and its client, if the slot is active.
const SLOT_HOLDER: &str = "SELECT s.active_pid, a.application_name, host(a.client_addr)
     FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
     WHERE s.slot_name = $1 AND s.active";

/// Who holds the lock: the session's pid and client.
const LOCK_HOLDER: &str = "SELECT l.pid, a.application_name, host(a.client_addr)
     FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted
       AND l.classid::int = hashtext('cutover.capture') AND l.objid::int = hashtext($1)
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// Why this instance is not (yet) the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standby {
    /// Another capture's session holds the slot's lock.
    LockHeld { holder: String },
    /// This instance holds the lock, but the slot is still streaming to someone (an old
    /// leader whose walsender has not exited yet).
    SlotActive { holder: String },
}

impl std::fmt::Display for Standby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Standby::LockHeld { holder } => write!(f, "another capture leads this slot ({holder})"),
            Standby::SlotActive { holder } => {
                write!(f, "the slot still streams to {holder}")
            }
        }
    }
}

fn describe(row: Option<tokio_postgres::Row>) -> String {
    match row {
        Some(r) => {
            let pid: Option<i32> = r.get(0);
            let app: Option<String> = r.get(1);
            let addr: Option<String> = r.get(2);
            format!(
                "pid {}, application {}, client {}",
                pid.map_or("?".into(), |p| p.to_string()),
                app.filter(|a| !a.is_empty()).unwrap_or_else(|| "?".into()),
                addr.unwrap_or_else(|| "not visible".into()),
            )
        }
        None => "holder not visible to this role".into(),
    }
}

/// One try: `Ok(None)` when this session now leads `slot` (lock held, slot inactive).
/// `locked` carries whether this session already holds the lock (taken once, never stacked).
pub async fn try_lead(client: &Client, slot: &str, locked: &mut bool) -> Result<Option<Standby>> {
    if !*locked {
        *locked = client
            .query_one(TRY_LOCK, &[&slot])
            .await
            .map_err(|e| Error::postgres("taking the capture lock (pg_try_advisory_lock)", e))?
            .get(0);
    }
    if !*locked {
        let row = client
            .query_opt(LOCK_HOLDER, &[&slot])
            .await
            .map_err(|e| Error::postgres("looking up the capture lock's holder", e))?;
        return Ok(Some(Standby::LockHeld {
            holder: describe(row),
        }));
    }
    match client
        .query_opt(SLOT_HOLDER, &[&slot])
        .await
        .map_err(|e| Error::postgres("looking up the slot's walsender", e))?
    {
        Some(row) => Ok(Some(Standby::SlotActive {
            holder: describe(Some(row)),
        })),
        None => Ok(None),
    }
}

/// Wait until this session leads `slot`, polling every `poll`. Logs each change of state
/// once and keeps `cutover_capture_standby` at 1 while waiting. Dropping the future (the
/// caller stopping) leaves nothing behind but the session, which the caller owns.
pub async fn lead(client: &Client, slot: &str, poll: Duration) -> Result<()> {
    let since = Instant::now();
    let mut last: Option<Standby> = None;
    let mut locked = false;
    loop {
        match try_lead(client, slot, &mut locked).await? {
            None => {
                super::metrics::standby(false);
                if last.is_some() {
                    tracing::info!(
                        slot,
                        waited_ms = since.elapsed().as_millis() as u64,
                        "standby capture takes over"
                    );
                }
                return Ok(());
            }
            Some(why) => {
                super::metrics::standby(true);
                if last.as_ref() != Some(&why) {
                    tracing::info!(slot, reason = %why, "capture is a standby: waiting for the slot");
                }
                last = Some(why);
                tokio::time::sleep(poll).await;
            }
        }
    }
}
