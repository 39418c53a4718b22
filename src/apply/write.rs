//! Executing a batch plan's steps inside the batch's transaction: settle contested keys with
//! the write guard, then write each segment set-based (per table: deletes, then upserts
//! grouped by column set), falling back to one write at a time under savepoints when the
//! segment hits a data error, so only the failing writes' events are dead-lettered.
//!
//! ```text
//!   segment ─▶ guard.settle(key) for contested keys ─▶ SAVEPOINT batch ─▶ DELETE … / INSERT … ON CONFLICT
//!                  (losers dropped, conflicts recorded)      │ data error
//!                                                            ▼
//!                                  ROLLBACK TO batch; per write: SAVEPOINT row … (failures → parked)
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_postgres::Client;

use super::decode::ChangeEvent;
use super::guard::{Contested, WriteGuard};
use super::mapping::{Mapping, TargetOp};
use super::metrics::BatchOutcome;
use super::plan::{Folded, Write};
use super::schema::Tables;
use super::target::Statements;
use crate::database::ident::qualified;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Op, TableId};
use crate::retry::{self, Decision};

/// What a segment needs from the sink, borrowed for one batch attempt.
pub struct Writer<'a> {
    pub tx: &'a Client,
    pub sink: &'a str,
    pub tables: &'a Tables,
    pub statements: &'a mut Statements,
    pub guard: &'a mut dyn WriteGuard,
    /// Each record's event and mapping (by record index).
    pub events: &'a [Option<&'a ChangeEvent>],
    pub mappings: &'a [Option<Arc<Mapping>>],
}

impl Writer<'_> {
    /// Settle and write one segment. Returns the records whose writes failed with a data
    /// error (to be parked).
    pub async fn segment(
        &mut self,
        writes: Vec<Write>,
        outcome: &mut BatchOutcome,
    ) -> Result<Vec<(usize, Error)>> {
        let mut kept = Vec::with_capacity(writes.len());
        for w in writes {
            if !w.settle || self.settle(&w, outcome).await? {
                kept.push(w);
            }
        }
        self.flush(&kept, outcome).await
    }

    /// Check one contested key's write against the target row through the guard. A key's
    /// writes in this batch are one unit: the first event's before-image detects the conflict,
    /// the last event's commit time competes.
    async fn settle(&mut self, w: &Write, outcome: &mut BatchOutcome) -> Result<bool> {
        let events: Vec<&ChangeEvent> = w.sources.iter().filter_map(|&i| self.events[i]).collect();
        let (Some(first), Some(ts)) = (events.first(), events.iter().map(|e| e.commit_ts_us).max())
        else {
            return Ok(true);
        };
        let tt = self
            .tables
            .catalog(&w.table)
            .ok_or_else(|| Error::internal(format!("no catalog for {}", w.table)))?;
        let before = self.before_image(w, first);
        let key: Vec<(String, Option<String>)> =
            tt.key.iter().cloned().zip(w.key.iter().cloned()).collect();
        let row = match &w.op {
            Folded::Upsert(cols) => Some(cols),
            Folded::Delete => None,
        };
        let verdict = self
            .guard
            .settle(
                self.tx,
                &Contested {
                    sink: self.sink,
                    table: tt,
                    key: &key,
                    row,
                    before: before.as_ref(),
                    commit_lsn: first.commit_lsn,
                    seq: first.seq,
                    commit_ts_us: ts,
                },
            )
            .await?;
        match verdict.conflict {
            Some(true) => outcome.conflicts_incoming_won += 1,
            Some(false) => outcome.conflicts_local_won += 1,
            None => {}
        }
        Ok(verdict.apply)
    }

    /// The first event's before-image in this side's shape: the old row mapped like a new one.
    fn before_image(
        &self,
        w: &Write,
        first: &ChangeEvent,
    ) -> Option<BTreeMap<String, Option<String>>> {
        let b = first.before.as_ref()?;
        let mapping = self.mappings[*w.sources.first()?].as_ref()?;
        let old = ChangeEvent {
            op: Op::Update,
            before: None,
            after: Some(b.clone()),
            unchanged: vec![],
            ..first.clone()
        };
        let key_of = |t: &TableId| self.tables.key_of(t);
        mapping.map(&old, &key_of).ok().and_then(|ops| {
            ops.into_iter().find_map(|op| match op {
                TargetOp::Upsert { table: t, cols } if t == w.table => Some(cols),
                _ => None,
            })
        })
    }

    /// Execute the writes set-based; on a data error, one write at a time under savepoints,
    /// returning the records of the writes that still fail.
    async fn flush(
        &mut self,
        writes: &[Write],
        outcome: &mut BatchOutcome,
    ) -> Result<Vec<(usize, Error)>> {
        if writes.is_empty() {
            return Ok(vec![]);
        }
        savepoint(self.tx, "SAVEPOINT cutover_batch").await?;
        match self.write(&writes.iter().collect::<Vec<_>>()).await {
            Ok(()) => {
                savepoint(self.tx, "RELEASE SAVEPOINT cutover_batch").await?;
                outcome.applied += writes.iter().map(|w| w.sources.len()).sum::<usize>();
                return Ok(vec![]);
            }
            Err(e) if retry::policy(e.kind()) == Decision::Park => {
                savepoint(self.tx, "ROLLBACK TO SAVEPOINT cutover_batch").await?;
                tracing::warn!(sink = %self.sink, error = %e, "batch hit a data error: applying one write at a time");
            }
            Err(e) => return Err(e),
        }
        // One at a time in source order (a segment is ordered by table and key), so a row
        // that depends on an earlier one of the batch (a foreign key to a parent inserted in
        // the same source transaction) finds it written.
        let mut ordered: Vec<&Write> = writes.iter().collect();
        ordered.sort_by_key(|w| self.position(w));
        let mut parked = vec![];
        for w in ordered {
            savepoint(self.tx, "SAVEPOINT cutover_row").await?;
            match self.write(&[w]).await {
                Ok(()) => {
                    savepoint(self.tx, "RELEASE SAVEPOINT cutover_row").await?;
                    outcome.applied += w.sources.len();
                }
                Err(e) if retry::policy(e.kind()) == Decision::Park => {
                    savepoint(self.tx, "ROLLBACK TO SAVEPOINT cutover_row").await?;
                    for &i in &w.sources {
                        parked.push((i, Error::new(e.kind(), e.to_string())));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(parked)
    }

    /// Where a folded write stands in source order: its first event's `(commit_lsn, seq)`.
    fn position(&self, w: &Write) -> (i64, i64) {
        w.sources
            .first()
            .and_then(|&i| self.events[i])
            .map_or((i64::MAX, 0), |e| (e.commit_lsn, e.seq))
    }

    /// Write set-based, one table after the other in the order their first events came from
    /// the source (parents before children when a batch holds both).
    async fn write(&mut self, writes: &[&Write]) -> Result<()> {
        let mut by_table: BTreeMap<&TableId, ((i64, i64), Vec<&Write>)> = BTreeMap::new();
        for w in writes {
            let pos = self.position(w);
            let e = by_table.entry(&w.table).or_insert((pos, Vec::new()));
            e.0 = e.0.min(pos);
            e.1.push(w);
        }
        let mut tables: Vec<_> = by_table.into_iter().collect();
        tables.sort_by_key(|(_, (pos, _))| *pos);
        for (t, (_, ops)) in tables {
            let tt = self
                .tables
                .catalog(t)
                .ok_or_else(|| Error::internal(format!("no catalog for {t}")))?;
            let (deletes, groups) = columns(t, &tt.key, &tt.columns, &ops)?;
            if deletes.first().is_some_and(|d| !d.is_empty()) {
                self.statements.delete(self.tx, tt, &deletes).await?;
            }
            let no_cast = BTreeMap::new();
            let cast = self.tables.casts(t).unwrap_or(&no_cast);
            for (cols, values) in groups {
                self.statements
                    .upsert(self.tx, tt, cast, &cols, &values)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Column arrays of one table's writes, for the set-based statements.
type DeleteKeys = Vec<Vec<Option<String>>>;
type UpsertGroups = BTreeMap<Vec<String>, Vec<Vec<Option<String>>>>;

/// Split one table's folded writes into delete key columns (one array per key column) and
/// upserts grouped by column set (one array per column).
fn columns(
    t: &TableId,
    key: &[String],
    known: &BTreeMap<String, String>,
    writes: &[&Write],
) -> Result<(DeleteKeys, UpsertGroups)> {
    let mut deletes: DeleteKeys = vec![Vec::new(); key.len()];
    let mut groups: UpsertGroups = BTreeMap::new();
    for w in writes {
        match &w.op {
            Folded::Delete => {
                for (j, column) in deletes.iter_mut().enumerate() {
                    column.push(w.key.get(j).cloned().flatten());
                }
            }
            Folded::Upsert(cols) => {
                if let Some(c) = cols.keys().find(|c| !known.contains_key(*c)) {
                    return Err(Error::new(
                        ErrorKind::Data,
                        format!("column {t}.{c} does not exist in the target"),
                    ));
                }
                let names: Vec<String> = cols.keys().cloned().collect();
                let g = groups
                    .entry(names)
                    .or_insert_with(|| vec![Vec::new(); cols.len()]);
                for (j, v) in cols.values().enumerate() {
                    g[j].push(v.clone());
                }
            }
        }
    }
    Ok((deletes, groups))
}

/// `TRUNCATE` the targets of a captured truncate.
pub async fn truncate(tx: &Client, targets: &[TableId]) -> Result<()> {
    let names: Vec<String> = targets.iter().map(qualified).collect();
    tx.batch_execute(&format!("TRUNCATE {}", names.join(", ")))
        .await
        .map_err(|e| Error::postgres(format!("truncating {}", names.join(", ")), e))
}

async fn savepoint(tx: &Client, sql: &str) -> Result<()> {
    tx.batch_execute(sql)
        .await
        .map_err(|e| Error::postgres(sql.to_string(), e))
}
