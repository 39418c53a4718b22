//! One batch transaction on one target connection, and how a batch is dealt over the sink's
//! connections (`apply_connections`).
//!
//! ```text
//!   batch (sorted by deal: partition → connection, round-robin over the batch's partitions)
//!     ├─ connection 0: BEGIN ─ lock its partitions' progress rows ─ plan ─ write ─ save progress ─ COMMIT
//!     ├─ connection 1: BEGIN ─ …                                                         ─ COMMIT
//!     └─ …            (each share is its own transaction: data and that share's progress together)
//! ```
//!
//! Invariant: a transaction covers exactly the partitions whose progress rows it locked, and
//! commits their data and their progress together; so a batch whose shares committed only in
//! part is re-applied whole, and the committed shares' events are skipped as duplicates.
//! A partition is in one share, so per-key order holds. `strict` transactions (the parallel
//! path) roll back on a data error instead of dead-lettering, because the error may come from
//! the order between shares (a foreign key to a row of another partition); the caller then
//! applies the batch on one connection in source order, where a data error is the row's own.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::message::{Message, OwnedMessage};

use super::decode::ChangeEvent;
use super::guard::WriteGuard;
use super::mapping::Mapping;
use super::metrics::{BatchOutcome, SinkMetrics};
use super::plan::{self, Record, Step};
use super::schema::Tables;
use super::target::Statements;
use super::write::{self, Writer};
use crate::config::{Config, SinkConfig, TruncatePolicy};
use crate::database::origin;
use crate::deadletter::{Letter, Parking};
use crate::error::{Error, Result};
use crate::state::progress;

/// What executing a plan left to do: records to park (index, why) and the truncate
/// watermarks to remember once the batch commits.
type Executed = (Vec<(usize, Error)>, Vec<(String, (i64, i64))>);

/// One consumed record and what became of it.
pub(super) struct Item {
    pub msg: OwnedMessage,
    pub event: Option<ChangeEvent>,
    /// Why it goes to the dead-letter topic.
    pub dead: Option<Error>,
}

/// One target connection of a sink and what belongs to it.
pub(super) struct Lane {
    pub client: Arc<tokio_postgres::Client>,
    pub statements: Statements,
    /// The replication origin its session writes under (never captured back).
    pub origin: String,
}

/// What a batch transaction reads from the sink, held by the sink and shared (borrowed) by
/// the connections of one batch.
pub(super) struct BatchCtx {
    pub sink: String,
    pub tables: Tables,
    /// Source table → `(commit_lsn, seq)` of the last truncate applied (as committed).
    pub truncates: HashMap<String, (i64, i64)>,
    pub truncate: TruncatePolicy,
    pub parking: Parking,
    pub metrics: SinkMetrics,
}

impl Lane {
    /// Take a fresh target connection into the sink: the shared replay lock (unless this is
    /// a replay's bounded run) and a replication origin of its own.
    pub(super) async fn bind(
        cfg: &Config,
        sink: &SinkConfig,
        shared_lock: bool,
        client: tokio_postgres::Client,
    ) -> Result<Lane> {
        if shared_lock {
            super::replay::hold_shared(&client, &sink.name, &sink.group_id(&cfg.name)).await?;
        }
        let origin =
            origin::bind(&client, &cfg.name, &sink.name, sink.instance_id.as_deref()).await?;
        Ok(Lane {
            client: Arc::new(client),
            statements: Statements::default(),
            origin,
        })
    }
}

/// Sort the batch's items by the connection their partition is dealt to (the batch's
/// partitions in order, round-robin; stable, so each partition keeps its offset order) and
/// return how many go to each of `lanes` connections.
pub(super) fn deal(items: &mut [Item], lanes: usize) -> Vec<usize> {
    if lanes <= 1 {
        return vec![items.len()];
    }
    let parts = partitions(items);
    let mut shares = vec![0; lanes];
    // The key is computed once per item: count the shares there.
    items.sort_by_cached_key(|it| {
        let p = (it.msg.topic().to_string(), it.msg.partition());
        let lane = parts.binary_search(&p).unwrap_or(0) % lanes;
        shares[lane] += 1;
        lane
    });
    shares
}

/// One transaction on one connection: lock the items' progress rows, plan, write, save
/// progress, park dead letters, COMMIT. Returns what it did and the truncate watermarks it
/// wrote. `strict`: a write that fails with a data error rolls the transaction back and
/// returns `None` instead of parking the write's events (the caller retries in source order).
pub(super) async fn transact(
    ctx: &BatchCtx,
    lane: &mut Lane,
    guard: &mut dyn WriteGuard,
    items: &mut [Item],
    mappings: &[Option<Arc<Mapping>>],
    strict: bool,
) -> Result<Option<(BatchOutcome, Vec<(String, (i64, i64))>)>> {
    let db = lane.client.clone();
    let result = transact_open(
        ctx,
        &db,
        &mut lane.statements,
        guard,
        items,
        mappings,
        strict,
    )
    .await;
    if matches!(result, Ok(Some(_))) {
        // Side effects the guard may only cause once the batch is durable (a leak's restore).
        guard.after_commit().await?;
    } else {
        let _ = db.batch_execute("ROLLBACK").await;
    }
    result
}

async fn transact_open(
    ctx: &BatchCtx,
    tx: &tokio_postgres::Client,
    statements: &mut Statements,
    guard: &mut dyn WriteGuard,
    items: &mut [Item],
    mappings: &[Option<Arc<Mapping>>],
    strict: bool,
) -> Result<Option<(BatchOutcome, Vec<(String, (i64, i64))>)>> {
    tx.batch_execute("BEGIN")
        .await
        .map_err(|e| Error::postgres("BEGIN", e))?;
    let stored = progress::lock_progress(tx, &ctx.sink, &partitions(items)).await?;
    // A back-sync role re-reads the phases at every batch: a phase change takes effect at
    // the next batch boundary.
    guard.begin(tx).await?;
    let plan = plan_batch(ctx, &*guard, items, mappings, &stored)?;
    let mut outcome = BatchOutcome {
        duplicates: plan.duplicates,
        skipped: plan.skipped,
        phase_skipped: plan.phase_skipped,
        ..Default::default()
    };
    let mut parked = plan.parked;
    tag_transaction(tx, items, &plan.live).await?;
    let events: Vec<Option<&ChangeEvent>> = items.iter().map(|it| it.event.as_ref()).collect();
    let mut writer = Writer {
        tx,
        sink: &ctx.sink,
        tables: &ctx.tables,
        statements,
        guard,
        events: &events,
        mappings,
    };
    let (failed, truncated) = execute(&mut writer, plan.steps, &mut outcome).await?;
    // Leaks (split: written on the side that does not own the key): recorded and resolved by
    // the guard in this transaction, never applied.
    for leak in &plan.leaks {
        let Some(event) = items[leak.record].event.as_ref() else {
            continue;
        };
        writer
            .guard
            .leak(
                tx,
                &crate::apply::guard::Leaked {
                    sink: &ctx.sink,
                    event,
                    table: &leak.table,
                    key: &leak.key,
                    row: leak.row.as_ref(),
                },
            )
            .await?;
        outcome.leaked += 1;
    }
    drop(events);
    if strict && !failed.is_empty() {
        return Ok(None);
    }
    parked.extend(failed);
    for (i, e) in parked {
        items[i].dead = Some(e);
    }
    // Progress for every partition of the transaction, then dead letters, then COMMIT.
    progress::save_progress(tx, &ctx.sink, &plan.progress).await?;
    outcome.dead_lettered = park(ctx, items, &plan.live).await?;
    // Fault suite: hold the batch's transaction open (e.g. `sleep(500)`) so a target restart
    // lands inside it, or fail the attempt (`return`) so the batch is retried.
    fail::fail_point!("sink-before-target-commit", |_| Err(Error::new(
        crate::error::ErrorKind::Connection,
        "fail point sink-before-target-commit"
    )));
    tx.batch_execute("COMMIT")
        .await
        .map_err(|e| Error::postgres("COMMIT", e))?;
    observe_applied(&ctx.metrics, items, &plan.live);
    Ok(Some((outcome, truncated)))
}

/// Plan the items (pure, see `plan`) against the locked progress.
fn plan_batch(
    ctx: &BatchCtx,
    guard: &dyn WriteGuard,
    items: &[Item],
    mappings: &[Option<Arc<Mapping>>],
    stored: &HashMap<(String, i32), progress::Progress>,
) -> Result<plan::Plan> {
    let records: Vec<Record<'_>> = items
        .iter()
        .zip(mappings)
        .map(|(it, m)| Record {
            topic: it.msg.topic(),
            partition: it.msg.partition(),
            offset: it.msg.offset(),
            event: it.event.as_ref(),
            parked: it.dead.is_some(),
            mapping: m.as_deref(),
        })
        .collect();
    let tables = &ctx.tables;
    plan::plan(
        &records,
        &plan::Context {
            stored,
            truncated: &ctx.truncates,
            truncate: ctx.truncate,
            key_of: &|t| tables.key_cols(t),
            admit: &|e, m| guard.admit(e, m),
        },
    )
}

/// Run the plan's steps in the transaction, then let the guard finish. Returns the records
/// whose writes failed with a data error, and the truncate watermarks written.
async fn execute(
    writer: &mut Writer<'_>,
    steps: Vec<Step>,
    outcome: &mut BatchOutcome,
) -> Result<Executed> {
    let mut parked = vec![];
    let mut truncated = vec![];
    for step in steps {
        match step {
            Step::Writes(writes) => parked.extend(writer.segment(writes, outcome).await?),
            Step::Truncate {
                source,
                at,
                targets,
                apply,
            } => {
                if apply {
                    write::truncate(writer.tx, &targets).await?;
                    outcome.applied += 1;
                } else {
                    outcome.skipped += 1;
                }
                progress::save_truncate(writer.tx, writer.sink, &source, at).await?;
                truncated.push((source, at));
            }
        }
    }
    writer.guard.finish(writer.tx).await?;
    Ok((parked, truncated))
}

/// Send the transaction's dead letters and wait for the broker's acks. Returns how many.
async fn park(ctx: &BatchCtx, items: &[Item], live: &[usize]) -> Result<usize> {
    let mut deliveries = vec![];
    for &i in live {
        let Some(err) = &items[i].dead else { continue };
        let msg = &items[i].msg;
        tracing::warn!(sink = %ctx.sink, topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), error = %err, "event sent to the dead-letter topic");
        let letter = Letter {
            error: err,
            origin: vec![
                ("cutover.sink", ctx.sink.to_string()),
                ("cutover.topic", msg.topic().to_string()),
                ("cutover.partition", msg.partition().to_string()),
                ("cutover.offset", msg.offset().to_string()),
            ],
        };
        deliveries.push(ctx.parking.park(
            msg.key().unwrap_or_default(),
            msg.payload().unwrap_or_default(),
            &letter,
        ));
    }
    let n = deliveries.len();
    for d in futures::future::join_all(deliveries).await {
        d?;
    }
    Ok(n)
}

fn observe_applied(metrics: &SinkMetrics, items: &[Item], live: &[usize]) {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let mut last_commit = None;
    for &i in live {
        let it = &items[i];
        let Some(ev) = &it.event else { continue };
        if it.dead.is_some() {
            continue;
        }
        let latency = (now_us - ev.commit_ts_us).max(0) as f64 / 1e6;
        metrics.applied(&ev.table, ev.op, latency);
        last_commit = Some(last_commit.unwrap_or(0).max(ev.commit_ts_us));
    }
    if let Some(ts) = last_commit {
        metrics.last_applied_commit(ts as f64 / 1e6);
    }
}

/// The distinct partitions of a batch, sorted (the order progress rows are locked in).
fn partitions(items: &[Item]) -> Vec<(String, i32)> {
    let mut parts: Vec<(String, i32)> = items
        .iter()
        .map(|it| (it.msg.topic().to_string(), it.msg.partition()))
        .collect();
    parts.sort();
    parts.dedup();
    parts
}

/// Rows written by this transaction carry the newest source commit time of the batch as their
/// commit timestamp (last-writer-wins compares it) and the source LSN.
async fn tag_transaction(
    tx: &tokio_postgres::Client,
    items: &[Item],
    live: &[usize],
) -> Result<()> {
    let Some((lsn, ts)) = live
        .iter()
        .filter_map(|&i| items[i].event.as_ref())
        .map(|e| (e.commit_lsn, e.commit_ts_us))
        .max()
    else {
        return Ok(());
    };
    tx.execute(
        "SELECT pg_replication_origin_xact_setup($1::text::pg_lsn,
            'epoch'::timestamptz + $2::int8 * interval '1 microsecond')",
        &[&crate::event::Lsn(lsn as u64).to_string(), &ts],
    )
    .await
    .map_err(|e| Error::postgres("pg_replication_origin_xact_setup", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn item(topic: &str, partition: i32, offset: i64) -> Item {
        Item {
            msg: OwnedMessage::new(
                None,
                None,
                topic.into(),
                Timestamp::NotAvailable,
                partition,
                offset,
                None,
            ),
            event: None,
            dead: None,
        }
    }

    fn coords(items: &[Item]) -> Vec<(String, i32, i64)> {
        items
            .iter()
            .map(|it| {
                (
                    it.msg.topic().to_string(),
                    it.msg.partition(),
                    it.msg.offset(),
                )
            })
            .collect()
    }

    #[test]
    fn deal_gives_each_partition_to_one_connection_in_offset_order() {
        // Interleaved as a consumer hands them over: 2 topics, 3 partitions.
        let mut items = vec![
            item("b", 0, 10),
            item("a", 1, 5),
            item("a", 0, 7),
            item("b", 0, 11),
            item("a", 1, 6),
            item("a", 0, 8),
        ];
        let shares = deal(&mut items, 2);
        // Sorted partitions: (a,0) → 0, (a,1) → 1, (b,0) → 0.
        assert_eq!(shares, vec![4, 2]);
        let c = coords(&items);
        let first: Vec<_> = c[..4].iter().map(|x| (x.0.as_str(), x.1)).collect();
        assert!(first.iter().all(|p| *p == ("a", 0) || *p == ("b", 0)));
        assert!(c[4..].iter().all(|x| x.0 == "a" && x.1 == 1));
        // Each partition keeps its offsets in consumed order.
        for p in [("a", 0), ("a", 1), ("b", 0)] {
            let offs: Vec<i64> = c
                .iter()
                .filter(|x| (x.0.as_str(), x.1) == p)
                .map(|x| x.2)
                .collect();
            assert!(offs.windows(2).all(|w| w[0] < w[1]), "{p:?}: {offs:?}");
        }
    }

    #[test]
    fn deal_on_one_connection_keeps_the_batch_as_it_is() {
        let mut items = vec![item("b", 0, 1), item("a", 0, 1)];
        assert_eq!(deal(&mut items, 1), vec![2]);
        assert_eq!(coords(&items)[0].0, "b");
        // More connections than partitions: the spare ones get nothing.
        assert_eq!(deal(&mut items, 4), vec![1, 1, 0, 0]);
    }
}
