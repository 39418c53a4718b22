//! Batch planning: the pure core of a sink. From the decoded records of one batch and what
//! the target already holds (stored progress, truncate watermarks), decide what to write.
//!
//! ```text
//!   records (any partition order)
//!     │ 1. per partition, in offset order: drop what stored progress covers
//!     │    (offset < next_offset, or (commit_lsn, seq) ≤ the last applied pair)
//!     │ 2. source order across partitions: (commit_lsn, seq)
//!     │ 3. per event: truncate watermark, mapping → target ops, admission (the write guard)
//!     │ 4. fold per (target table, key): upsert ∘ upsert = merged upsert, anything else = the
//!     │    later op; a TRUNCATE closes the segment (everything before it is written first)
//!     ▼
//!   Plan { steps: [Write…] | Truncate | [Write…] …, new progress, parked, counts }
//! ```
//!
//! Invariant: applying a plan's writes leaves every key in the state it would have after
//! applying the surviving events one by one, in source order (property-tested below); and the
//! progress it returns covers exactly the records it saw. Nothing here touches a database,
//! Kafka or a clock.

use std::collections::{BTreeMap, HashMap};

use super::decode::ChangeEvent;
use super::guard::Admission;
use super::mapping::{Mapping, TargetOp};
use crate::config::TruncatePolicy;
use crate::error::{Error, Result};
use crate::event::{Op, TableId};
use crate::retry::{self, Decision};
use crate::state::progress::Progress;

/// A Kafka partition: (topic, partition).
pub type Partition = (String, i32);

/// One consumed record, as planning sees it.
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// `None`: the record did not decode (it is parked, but still moves progress).
    pub event: Option<&'a ChangeEvent>,
    /// Already marked for the dead-letter topic (by decoding, or a failed earlier attempt).
    pub parked: bool,
    /// The mapping of its table; `None`: the sink skips the table.
    pub mapping: Option<&'a Mapping>,
}

/// A folded write to one target row (its key is the `Write`'s).
#[derive(Debug, Clone, PartialEq)]
pub enum Folded {
    Upsert(BTreeMap<String, Option<String>>),
    Delete,
}

/// One keyed write of a segment and the records it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub table: TableId,
    /// The key values, in the target table's key order.
    pub key: Vec<Option<String>>,
    pub op: Folded,
    /// Indexes of the records folded into it, in source order.
    pub sources: Vec<usize>,
    /// The guard must settle it against the target row before it is written.
    pub settle: bool,
}

/// What a batch does, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Writes(Vec<Write>),
    Truncate {
        /// The source table (the watermark's name).
        source: String,
        at: (i64, i64),
        targets: Vec<TableId>,
        /// `false`: `truncate = "ignore"`, only the watermark moves.
        apply: bool,
    },
}

/// What planning needs besides the records.
pub struct Context<'a> {
    pub stored: &'a HashMap<Partition, Progress>,
    /// Source table → the `(commit_lsn, seq)` of the last truncate applied.
    pub truncated: &'a HashMap<String, (i64, i64)>,
    pub truncate: TruncatePolicy,
    /// Key columns of a target table (empty when unknown).
    pub key_of: &'a dyn Fn(&TableId) -> &'a [String],
    /// The write guard's admission of an event written through a mapping.
    pub admit: &'a dyn Fn(&ChangeEvent, &Mapping) -> Admission,
}

/// A record the guard refused as a leak (`split`: written on the side that does not own the
/// key), with the target table, key and row its first op would have written.
#[derive(Debug, Clone, PartialEq)]
pub struct Leak {
    pub record: usize,
    pub table: TableId,
    pub key: Vec<(String, Option<String>)>,
    pub row: Option<BTreeMap<String, Option<String>>>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Progress of every partition whose stored row changes.
    pub progress: HashMap<Partition, Progress>,
    /// Records not already applied, in source order (parked ones included).
    pub live: Vec<usize>,
    /// Records the mapping refused (poison): index and why.
    pub parked: Vec<(usize, Error)>,
    pub duplicates: usize,
    pub skipped: usize,
    pub phase_skipped: usize,
    /// Records written on the side that does not own their key (not applied).
    pub leaks: Vec<Leak>,
}

/// Plan one batch (see the module docs).
pub fn plan(records: &[Record<'_>], cx: &Context<'_>) -> Result<Plan> {
    let mut out = Plan::default();
    let (live, progress) = drop_applied(records, cx.stored, &mut out.duplicates);
    out.progress = progress
        .into_iter()
        .filter(|(k, v)| cx.stored.get(k) != Some(v))
        .collect();
    out.live = live;
    let mut truncated = cx.truncated.clone();
    let mut pending: Pending = BTreeMap::new();
    for &i in &out.live {
        let r = &records[i];
        let Some(ev) = r.event.filter(|_| !r.parked) else {
            continue;
        };
        let Some(mapping) = r.mapping else {
            out.skipped += 1;
            continue;
        };
        let source = ev.table.to_string();
        if truncated
            .get(&source)
            .is_some_and(|w| (ev.commit_lsn, ev.seq) <= *w)
        {
            out.duplicates += 1; // superseded by a truncate already applied
            continue;
        }
        if ev.op == Op::Truncate {
            let at = (ev.commit_lsn, ev.seq);
            truncated.insert(source.clone(), at);
            close_segment(&mut out.steps, &mut pending);
            out.steps.push(Step::Truncate {
                source,
                at,
                targets: mapping.targets(),
                apply: cx.truncate == TruncatePolicy::Apply,
            });
            continue;
        }
        let key_of = |t: &TableId| (cx.key_of)(t).to_vec();
        let ops = match mapping.map(ev, &key_of) {
            Ok(ops) => ops,
            Err(e) if retry::policy(e.kind()) == Decision::Park => {
                out.parked.push((i, e.context("mapping")));
                continue;
            }
            Err(e) => return Err(e),
        };
        let settle = match (cx.admit)(ev, mapping) {
            Admission::Skip => {
                out.phase_skipped += 1;
                continue;
            }
            Admission::Leak => {
                if let Some(op) = ops.into_iter().next() {
                    let (table, key, folded) = keyed(op, cx.key_of);
                    let names = (cx.key_of)(&table);
                    out.leaks.push(Leak {
                        record: i,
                        key: names.iter().cloned().zip(key).collect(),
                        table,
                        row: match folded {
                            Folded::Upsert(cols) => Some(cols),
                            Folded::Delete => None,
                        },
                    });
                }
                continue;
            }
            Admission::Apply => false,
            Admission::Settle => true,
        };
        for op in ops {
            let (table, key, folded) = keyed(op, cx.key_of);
            fold(&mut pending, table, key, folded, i, settle);
        }
    }
    close_segment(&mut out.steps, &mut pending);
    Ok(out)
}

/// Folded writes of a segment: (target table, key) → the write.
pub type Pending = BTreeMap<(TableId, Vec<Option<String>>), Write>;

/// Fold one target op into the segment: upsert ∘ upsert merges the columns (the later value
/// wins), any other pair keeps the later op.
pub fn fold(
    pending: &mut Pending,
    table: TableId,
    key: Vec<Option<String>>,
    op: Folded,
    source: usize,
    settle: bool,
) {
    match pending.entry((table, key)) {
        std::collections::btree_map::Entry::Vacant(v) => {
            let (table, key) = v.key().clone();
            v.insert(Write {
                table,
                key,
                op,
                sources: vec![source],
                settle,
            });
        }
        std::collections::btree_map::Entry::Occupied(mut o) => {
            let w = o.get_mut();
            w.sources.push(source);
            w.settle |= settle;
            match (&mut w.op, op) {
                (Folded::Upsert(old), Folded::Upsert(new)) => old.extend(new),
                (slot, new) => *slot = new,
            }
        }
    }
}

/// A target op with its key values, in the target's key order.
fn keyed<'k>(
    op: TargetOp,
    key_of: &dyn Fn(&TableId) -> &'k [String],
) -> (TableId, Vec<Option<String>>, Folded) {
    match op {
        TargetOp::Upsert { table, cols } => {
            let key = key_of(&table)
                .iter()
                .map(|k| cols.get(k).cloned().flatten())
                .collect();
            (table, key, Folded::Upsert(cols))
        }
        TargetOp::Delete { table, key } => {
            let k = key.iter().map(|(_, v)| v.clone()).collect();
            (table, k, Folded::Delete)
        }
    }
}

fn close_segment(steps: &mut Vec<Step>, pending: &mut Pending) {
    if !pending.is_empty() {
        steps.push(Step::Writes(
            std::mem::take(pending).into_values().collect(),
        ));
    }
}

/// Steps 1 and 2: per partition in offset order, drop the records stored progress covers and
/// advance progress over the rest; return the rest in source order with the new progress.
fn drop_applied(
    records: &[Record<'_>],
    stored: &HashMap<Partition, Progress>,
    duplicates: &mut usize,
) -> (Vec<usize>, HashMap<Partition, Progress>) {
    let mut progress = stored.clone();
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by_key(|&i| (records[i].topic, records[i].partition, records[i].offset));
    let mut live = vec![];
    for i in order {
        let r = &records[i];
        let p = progress
            .entry((r.topic.to_string(), r.partition))
            .or_default();
        let (lsn, seq) = r
            .event
            .map(|e| (e.commit_lsn, e.seq))
            .unwrap_or((p.commit_lsn, p.seq));
        if r.event.is_some() && p.covers(r.offset, lsn, seq) {
            *duplicates += 1;
            p.next_offset = p.next_offset.max(r.offset + 1);
            continue;
        }
        if r.event.is_none() && r.offset < p.next_offset {
            *duplicates += 1;
            continue;
        }
        *p = Progress {
            next_offset: r.offset + 1,
            commit_lsn: lsn.max(p.commit_lsn),
            seq: if lsn > p.commit_lsn {
                seq
            } else {
                seq.max(p.seq)
            },
        };
        live.push(i);
    }
    live.sort_by_key(|&i| {
        records[i]
            .event
            .map(|e| (e.commit_lsn, e.seq))
            .unwrap_or((i64::MAX, 0))
    });
    (live, progress)
}

#[cfg(test)]
mod tests;
