//! The Kafka side of a sink: which topics it subscribes, the group membership it reports as
//! readiness, how a batch is collected, and how offsets are committed and reconciled with the
//! progress stored in the target.
//!
//! ```text
//!   registry subjects ─▶ captured_topics ─▶ subscribe (names, not a regex)
//!   rebalance ─▶ SinkContext: assigned partitions (sink.<name>.assigned readiness)
//!   collect: until batch_max_rows | batch_max_bytes | batch_max_ms after the first record
//!            | nothing more queued for batch_linger_ms (0: the queue is drained)
//!   fresh partition: Kafka's committed offset ahead of stored progress → seek back (stored wins)
//!   after COMMIT in the target: commit offsets (async; only lag tooling reads them)
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::mapping::table_id;
use super::metrics::SinkMetrics;
use crate::config::{Config, SinkConfig};
use crate::error::{classify, Error, Result};
use crate::event::TableId;
use crate::kafka::topic;
use crate::observe::Readiness;
use crate::registry::RegistryClient;
use crate::retry::{self, Decision};
use crate::state::progress::Progress;

/// The captured topics of `cfg`, by name: the configured tables, plus every table of the
/// configured schemas that capture has registered a value schema for (capture registers
/// before it produces, so a new table's topic is known before its first event).
///
/// Explicit names rather than a regex subscription: with the classic protocol a regex makes
/// librdkafka ask for the metadata of every topic in the cluster on each refresh, which costs
/// the broker and the sink on a shared cluster with thousands of topics; names from the
/// registry cost one HTTP call and subscribe only what capture actually writes.
pub async fn captured_topics(cfg: &Config, registry: &RegistryClient) -> Result<Vec<String>> {
    let mut topics: Vec<String> = cfg
        .source
        .tables
        .iter()
        .map(|t| topic::for_table(&cfg.topic_prefix, &table_id(t)))
        .collect();
    let prefixes: Vec<String> = cfg
        .source
        .schemas
        .iter()
        .map(|s| {
            let topic = topic::for_table(&cfg.topic_prefix, &TableId::new(s, "x"));
            topic.strip_suffix('x').unwrap_or(&topic).to_string()
        })
        .collect();
    if !prefixes.is_empty() {
        for subject in registry.subjects().await? {
            let Some(topic) = subject.strip_suffix("-value") else {
                continue;
            };
            if prefixes.iter().any(|p| {
                topic
                    .strip_prefix(p.as_str())
                    .is_some_and(|t| !t.is_empty() && !t.contains('.'))
            }) {
                topics.push(topic.to_string());
            }
        }
    }
    topics.sort();
    topics.dedup();
    Ok(topics)
}

/// Rebalance notifications for the loop (it re-checks stored progress of new partitions), and
/// the `sink.<name>.assigned` readiness check: ready once the group gave this member its share
/// (possibly none, when there are more members than partitions), not ready while revoked.
pub struct SinkContext {
    assigned: Mutex<Vec<(String, i32)>>,
    readiness: Readiness,
    check: String,
}

impl SinkContext {
    pub fn new(readiness: Readiness, sink: &str) -> SinkContext {
        let check = format!("sink.{sink}.assigned");
        readiness.set(&check, false);
        SinkContext {
            assigned: Mutex::new(Vec::new()),
            readiness,
            check,
        }
    }

    /// Partitions assigned since the last call.
    pub fn take_assigned(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.assigned.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ClientContext for SinkContext {}

impl ConsumerContext for SinkContext {
    fn post_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(tpl) => {
                let mut a = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
                for e in tpl.elements() {
                    a.push((e.topic().to_string(), e.partition()));
                }
                self.readiness.set(&self.check, true);
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                self.readiness.set(&self.check, false);
                tracing::info!(partitions = tpl.count(), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Collect one batch: until `batch_max_rows` records or `batch_max_bytes` bytes, or
/// `batch_max_ms` after the first record, or no record for `batch_linger_ms` (0: as soon as
/// nothing more is queued, so a caught-up sink applies at once while a backlog still fills
/// whole batches); empty after 5 s idle (the loop then looks for new tables) or when
/// `shutdown` flips.
pub async fn collect(
    consumer: &StreamConsumer<SinkContext>,
    sink: &SinkConfig,
    metrics: &SinkMetrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Vec<OwnedMessage>> {
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    let max_wait = Duration::from_millis(sink.batch_max_ms);
    let linger = Duration::from_millis(sink.batch_linger_ms);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut stream = consumer.stream();
    loop {
        let next = match deadline {
            None => tokio::select! {
                m = stream.next() => m,
                _ = shutdown.changed() => return Ok(batch),
                // Idle: come back to look for new tables.
                _ = tokio::time::sleep(Duration::from_secs(5)) => return Ok(batch),
            },
            // `timeout_at` polls the stream before its deadline: with no linger, a record
            // already queued is still taken, and an empty queue closes the batch.
            Some(d) => match tokio::time::timeout_at(
                d.min(tokio::time::Instant::now() + linger),
                stream.next(),
            )
            .await
            {
                Ok(m) => m,
                Err(_) => return Ok(batch),
            },
        };
        match next {
            None => return Ok(batch),
            Some(Ok(m)) => {
                bytes += m.payload_len();
                batch.push(m.detach());
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + max_wait);
                if batch.len() >= sink.batch_max_rows || bytes >= sink.batch_max_bytes {
                    return Ok(batch);
                }
            }
            Some(Err(e)) => {
                let kind = classify::kafka(&e);
                metrics.error(kind);
                if retry::policy(kind) == Decision::Fatal {
                    return Err(Error::kafka("consuming", e));
                }
                // librdkafka's fatal consumer errors (e.g. KIP-848 UNRELEASED_INSTANCE_ID)
                // leave this consumer unusable even when the cause is transient: give up
                // on it (nothing of `batch` is applied or committed) so the reconnect loop
                // builds a new one after a backoff; it resumes from stored progress.
                if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                    return Err(Error::kafka("consuming (consumer unusable, rebuilding)", e));
                }
                tracing::warn!(error = %e, "consume error (retrying)");
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                } else {
                    return Ok(batch);
                }
            }
        }
    }
}

/// Seek `fresh` partitions (newly assigned, not yet seen in a batch) back to `stored`
/// progress when Kafka's committed offset is ahead of it (e.g. after a progress reset by
/// `replay`). Returns the records still to process; a seeked partition's records are dropped
/// (they are read again from the stored position).
pub fn reconcile_assignment<T>(
    consumer: &StreamConsumer<SinkContext>,
    fresh: &mut HashSet<(String, i32)>,
    stored: &HashMap<(String, i32), Progress>,
    batch: Vec<T>,
    msg: impl Fn(&T) -> &OwnedMessage,
) -> Result<Vec<T>> {
    let mut seeked: HashSet<(String, i32)> = HashSet::new();
    let mut out = Vec::with_capacity(batch.len());
    for item in batch {
        let m = msg(&item);
        let tp = (m.topic().to_string(), m.partition());
        if seeked.contains(&tp) {
            continue;
        }
        if fresh.remove(&tp) {
            if let Some(p) = stored.get(&tp) {
                if m.offset() > p.next_offset {
                    tracing::info!(topic = %tp.0, partition = tp.1, from = m.offset(), to = p.next_offset, "seeking back to stored progress");
                    tokio::task::block_in_place(|| {
                        consumer.seek(
                            &tp.0,
                            tp.1,
                            Offset::Offset(p.next_offset),
                            Duration::from_secs(10),
                        )
                    })
                    .map_err(|e| Error::kafka("seeking to stored progress", e))?;
                    seeked.insert(tp);
                    continue;
                }
            }
        }
        out.push(item);
    }
    Ok(out)
}

/// Commit the offsets after `msgs`. Progress is already durable in the target; this commit
/// only feeds lag tooling, so a failure (a partition revoked meanwhile) is logged only.
pub fn commit_offsets<'a>(
    consumer: &StreamConsumer<SinkContext>,
    msgs: impl Iterator<Item = &'a OwnedMessage>,
) {
    let mut next: HashMap<(String, i32), i64> = HashMap::new();
    for m in msgs {
        let e = next
            .entry((m.topic().to_string(), m.partition()))
            .or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in &next {
        let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
    }
    if let Err(e) = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async) {
        tracing::debug!(error = %e, "offset commit failed (partition revoked?)");
    }
}
