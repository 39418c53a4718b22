//! The write guard: where a sink asks, before it writes, whether an event may be applied in
//! its direction and whether a keyed write still stands against the target's current row.
//!
//! ```text
//!   sink batch ── begin(tx) ─▶ admit(event) ─▶ Skip | Apply | Settle | Leak
//!                                                  (Leak: leak(tx, …) records and restores)
//!                                                        │
//!                 before each flush: settle(tx, write) ◀─┘ ─▶ apply it, or not (recorded)
//!                 after the last flush: finish(tx)          (same transaction as the data)
//! ```
//!
//! A plain sink uses [`Unguarded`] (everything applies, nothing is settled). The back-sync
//! roles implement it in `backsync` (phases decide admission, conflicts are settled there).
//!
//! Contract, for every implementation:
//! - `after_commit` runs once per committed batch; what an aborted attempt planned is
//!   forgotten at the next `begin`.
//! - `begin`, `settle` and `finish` run inside the batch's transaction; what they write
//!   commits or rolls back with the batch, so a retried batch starts from `begin` again and
//!   the guard must forget what an aborted attempt told it.
//! - `admit` is pure over what `begin` loaded: the same event in one batch gets the same
//!   answer, so a phase change takes effect at a batch boundary.
//! - `settle` decides one key's folded write from its first event's before-image and its last
//!   event's commit time; it may read the target row but never writes the row itself.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio_postgres::Client;

use super::decode::ChangeEvent;
use super::mapping::Mapping;
use crate::database::catalog::TargetTable;
use crate::error::Result;
use crate::event::TableId;

/// Whether an event is applied in this direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The other side owns the table: drop the event (counted).
    Skip,
    Apply,
    /// Apply only after [`WriteGuard::settle`] agreed, key by key.
    Settle,
    /// A write on the side that does not own the key (`split`): not applied; handed to
    /// [`WriteGuard::leak`] to record and resolve.
    Leak,
}

/// A write that leaked, as the guard sees it: the event and its first target op's row.
pub struct Leaked<'a> {
    pub sink: &'a str,
    pub event: &'a ChangeEvent,
    /// The target table and key (target names, key order) the event maps to.
    pub table: &'a TableId,
    pub key: &'a [(String, Option<String>)],
    /// The incoming row in the target's shape (`None`: a delete).
    pub row: Option<&'a BTreeMap<String, Option<String>>>,
}

/// One key's folded write, as the guard sees it.
pub struct Contested<'a> {
    pub sink: &'a str,
    pub table: &'a TargetTable,
    /// The target key, in key order.
    pub key: &'a [(String, Option<String>)],
    /// The row to write (`None`: a delete).
    pub row: Option<&'a BTreeMap<String, Option<String>>>,
    /// The first event's before-image in the target's shape, when it had one.
    pub before: Option<&'a BTreeMap<String, Option<String>>>,
    /// Source position of the first event (recorded with a conflict).
    pub commit_lsn: i64,
    pub seq: i64,
    /// Commit time of the last event: the time that competes under last-writer-wins.
    pub commit_ts_us: i64,
}

/// What `settle` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub apply: bool,
    /// A conflict was found (and recorded): `Some(true)` if the incoming write won.
    pub conflict: Option<bool>,
}

#[async_trait]
pub trait WriteGuard: Send + Sync {
    /// Once, at sink start, on the target connection: checks and state the guard needs.
    async fn start(&mut self, target: &Client) -> Result<()>;
    /// At the start of every batch attempt, inside its transaction.
    async fn begin(&mut self, tx: &Client) -> Result<()>;
    /// Admission of an event, written through `mapping` (called per event: keep it cheap;
    /// `mapping.targets()` allocates).
    fn admit(&self, event: &ChangeEvent, mapping: &Mapping) -> Admission;
    /// A leaked write (`Admission::Leak`), inside the batch's transaction: record it and
    /// plan its resolution. The default for guards that never answer `Leak`.
    async fn leak(&mut self, _tx: &Client, _leaked: &Leaked<'_>) -> Result<()> {
        Ok(())
    }
    /// After the batch's COMMIT: what must not happen before its data is durable, nor while
    /// its transaction holds row locks (a leak's restore writes through other sessions).
    async fn after_commit(&mut self) -> Result<()> {
        Ok(())
    }
    /// Settle one key's write against the target row (for `Admission::Settle` events).
    async fn settle(&mut self, tx: &Client, write: &Contested<'_>) -> Result<Verdict>;
    /// After the batch's last write, before its progress is saved.
    async fn finish(&mut self, tx: &Client) -> Result<()>;
    /// The conflict policy, as a metric label (`None`: this guard never settles).
    fn policy(&self) -> Option<&'static str>;
    /// The side this sink writes, for logs (`None`: a plain sink).
    fn writes(&self) -> Option<&'static str>;
}

/// The guard of a plain sink: everything applies.
pub struct Unguarded;

#[async_trait]
impl WriteGuard for Unguarded {
    async fn start(&mut self, _target: &Client) -> Result<()> {
        Ok(())
    }
    async fn begin(&mut self, _tx: &Client) -> Result<()> {
        Ok(())
    }
    fn admit(&self, _event: &ChangeEvent, _mapping: &Mapping) -> Admission {
        Admission::Apply
    }
    async fn settle(&mut self, _tx: &Client, _write: &Contested<'_>) -> Result<Verdict> {
        Ok(Verdict {
            apply: true,
            conflict: None,
        })
    }
    async fn finish(&mut self, _tx: &Client) -> Result<()> {
        Ok(())
    }
    fn policy(&self) -> Option<&'static str> {
        None
    }
    fn writes(&self) -> Option<&'static str> {
        None
    }
}
