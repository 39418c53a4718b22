//! The sink loop: consume a batch, apply it in one target transaction together with its
//! progress, then commit the Kafka offsets.
//!
//! ```text
//!  Kafka ─▶ batch (≤ rows, bytes, ms) ─▶ decode ─▶ BEGIN
//!                                                  lock progress rows (FOR UPDATE)
//!                                                  drop events at/below stored (offset | commit_lsn,seq)
//!                                                  map → fold per target key → DELETE / UPSERT (set-based)
//!                                                  poison events ─▶ <prefix>.dlq.<sink>  (acked before COMMIT)
//!                                                  UPDATE progress
//!                                                 COMMIT ─▶ commit Kafka offsets (for lag tooling only)
//! ```
//!
//! Invariants: progress and data commit atomically, so a crash anywhere re-reads at most the
//! batch in flight and skips what is already applied (effectively-once). Kafka offsets are only
//! ever committed after the batch is durable and are never trusted over stored progress: on a
//! fresh assignment the sink seeks back to the stored position if Kafka's is ahead. Per-key
//! order holds because a key lives in one partition and the batch is applied in
//! `(commit_lsn, seq)` order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::decode::{ChangeEvent, Decoder};
use super::mapping::{table_id, Mapping, TargetOp, TargetTable};
use super::target::{self, Progress, Statements};
use crate::config::{Config, SinkConfig, TruncatePolicy, Unmapped};
use crate::database::Endpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Op, TableId};
use crate::kafka::{self, TopicSpec};
use crate::observe::{names, Readiness};
use crate::registry::RegistryClient;
use crate::retry::{self, Decision};

/// The dead-letter topic of a sink.
pub fn dlq_topic(prefix: &str, sink: &str) -> String {
    format!("{prefix}.dlq.{sink}")
}

/// The captured topics of `cfg`, by name: the configured tables, plus every table of the
/// configured schemas that capture has registered a value schema for (capture registers
/// before it produces, so a new table's topic is known before its first event).
///
/// Explicit names rather than a regex subscription: a regex makes librdkafka ask for the
/// metadata of every topic in the cluster on each refresh, which is slow on big clusters (and
/// on the local broker took up to 40 s with a few hundred topics, stalling fetches).
pub async fn captured_topics(cfg: &Config, registry: &RegistryClient) -> Result<Vec<String>> {
    let mut topics: Vec<String> = cfg
        .source
        .tables
        .iter()
        .map(|t| crate::capture::topic_for(&cfg.topic_prefix, &table_id(t)))
        .collect();
    let prefixes: Vec<String> = cfg
        .source
        .schemas
        .iter()
        .map(|s| {
            let topic = crate::capture::topic_for(&cfg.topic_prefix, &TableId::new(s, "x"));
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

/// Rebalance notifications for the loop (it re-checks stored progress of new partitions).
#[derive(Default)]
pub struct SinkContext {
    assigned: Mutex<Vec<(String, i32)>>,
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
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// One consumed record and what became of it.
struct Item {
    msg: OwnedMessage,
    event: Option<ChangeEvent>,
    /// Why it goes to the dead-letter topic.
    dead: Option<Error>,
}

/// A folded target write and the items it stands for.
enum Folded {
    Upsert(BTreeMap<String, Option<String>>),
    Delete(Vec<(String, Option<String>)>),
}

/// Folded writes of a batch segment: (target table, target key) → the write and the items it
/// stands for.
type Pending = BTreeMap<(TableId, Vec<Option<String>>), (Folded, Vec<usize>)>;

/// What one batch did (for metrics and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: usize,
    pub duplicates: usize,
    pub dead_lettered: usize,
    pub skipped: usize,
}

pub struct Sink {
    cfg: Config,
    sink: SinkConfig,
    consumer: StreamConsumer<SinkContext>,
    dlq: FutureProducer,
    dlq_topic: String,
    decoder: Decoder,
    client: Arc<tokio_postgres::Client>,
    /// Next offset per partition after the last durable batch, read by the lag reporter.
    positions: Arc<Mutex<HashMap<(String, i32), i64>>>,
    lag_task: tokio::task::JoinHandle<()>,
    statements: Statements,
    mappings: HashMap<TableId, Mapping>,
    /// Source tables whose mapping was checked against this schema id (by Arc pointer).
    checked: HashSet<(TableId, usize)>,
    catalogs: HashMap<TableId, TargetTable>,
    truncates: HashMap<String, (i64, i64)>,
    fresh: HashSet<(String, i32)>,
    readiness: Readiness,
    registry: RegistryClient,
    topics: Vec<String>,
    topics_checked: Instant,
}

fn endpoint(sink: &SinkConfig, i: usize) -> Endpoint {
    Endpoint {
        field: format!("sinks[{i}].url"),
        url: sink.url.clone(),
        password: sink.password.clone(),
        connect_timeout: Duration::from_secs(sink.connect_timeout_secs),
    }
}

impl Sink {
    /// Connect to the target (creating the progress tables), validate configured mappings
    /// against it, create the DLQ topic and subscribe.
    pub async fn start(cfg: &Config, name: &str, readiness: Readiness) -> Result<Sink> {
        let i = cfg
            .sinks
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| Error::config(format!("no sink named {name:?} in sinks[]")))?;
        let sink = cfg.sinks[i].clone();
        let client = endpoint(&sink, i).connect().await?;
        target::ensure_state(&client).await?;
        readiness.set(&format!("sink.{name}.target"), true);
        let mut mappings = HashMap::new();
        let mut catalogs = HashMap::new();
        for (j, t) in sink.tables.iter().enumerate() {
            let path = format!("sinks[{i}].tables[{j}]");
            let m = Mapping::compile(path.clone(), t)?;
            for target in m.targets() {
                let tt = target::describe(&client, &target).await?.ok_or_else(|| {
                    Error::config(format!(
                        "{path}: target table {target} does not exist in sink {name}"
                    ))
                })?;
                m.check_target(&tt)?;
                for (col, via) in &m.cast {
                    client
                        .batch_execute(&format!("SELECT NULL::text::{via}"))
                        .await
                        .map_err(|e| {
                            Error::config(format!(
                                "{path}.cast.{col}: {via} is not a type the target knows: {}",
                                e.as_db_error().map(|d| d.message()).unwrap_or("")
                            ))
                        })?;
                }
                catalogs.insert(target, tt);
            }
            mappings.insert(m.source.clone(), m);
        }
        let truncates = target::truncates(&client, name).await?;
        let dlq_topic = dlq_topic(&cfg.topic_prefix, name);
        kafka::ensure_topics(
            &cfg.kafka,
            &[TopicSpec {
                name: dlq_topic.clone(),
                partitions: 1,
                replication_factor: cfg.kafka.replication_factor,
                configs: vec![],
            }],
        )
        .await?;
        let dlq: FutureProducer = kafka::producer_config(&cfg.kafka)
            .create()
            .map_err(|e| Error::kafka("creating dead-letter producer", e))?;
        let group = sink
            .group_id
            .clone()
            .unwrap_or_else(|| sink.group_id(&cfg.name));
        let mut cc = kafka::consumer_config(&cfg.kafka, &group);
        if let Some(id) = &sink.instance_id {
            cc.set("group.instance.id", id);
        }
        cc.set("topic.metadata.refresh.interval.ms", "5000");
        let consumer: StreamConsumer<SinkContext> = cc
            .create_with_context(SinkContext::default())
            .map_err(|e| Error::kafka("creating sink consumer", e))?;
        let positions = Arc::new(Mutex::new(HashMap::new()));
        readiness.set(&format!("sink.{name}.kafka"), true);
        tracing::info!(sink = name, group, "sink started");
        let mut sink = Sink {
            cfg: cfg.clone(),
            sink,
            consumer,
            dlq,
            dlq_topic,
            decoder: Decoder::new(RegistryClient::new(&cfg.registry)?),
            client: Arc::new(client),
            lag_task: spawn_lag_reporter(cfg, name, positions.clone()),
            positions,
            statements: Statements::default(),
            mappings,
            checked: HashSet::new(),
            catalogs,
            truncates,
            fresh: HashSet::new(),
            readiness,
            registry: RegistryClient::new(&cfg.registry)?,
            topics: vec![],
            topics_checked: Instant::now(),
        };
        sink.refresh_topics().await?;
        Ok(sink)
    }

    /// Subscribe to the captured topics (again, if a new table appeared).
    async fn refresh_topics(&mut self) -> Result<()> {
        self.topics_checked = Instant::now();
        let topics = captured_topics(&self.cfg, &self.registry).await?;
        if topics == self.topics || topics.is_empty() {
            return Ok(());
        }
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&refs)
            .map_err(|e| Error::kafka(format!("subscribing to {topics:?}"), e))?;
        tracing::info!(sink = %self.sink.name, topics = ?topics, "subscribed");
        self.topics = topics;
        Ok(())
    }

    /// Run until `shutdown` flips: the batch in flight is finished and committed first.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let name = self.sink.name.clone();
        let result = loop {
            if *shutdown.borrow() {
                break Ok(());
            }
            if self.topics_checked.elapsed() >= Duration::from_secs(5) {
                if let Err(e) = self.refresh_topics().await {
                    tracing::warn!(sink = %name, error = %e, "cannot list captured topics");
                }
            }
            let batch = match self.collect(&mut shutdown).await {
                Ok(b) => b,
                Err(e) => break Err(e),
            };
            if batch.is_empty() {
                continue;
            }
            if let Err(e) = self.process(batch).await {
                break Err(e);
            }
        };
        self.lag_task.abort();
        // Leave the group cleanly (the consumer's drop closes it).
        self.readiness.set(&format!("sink.{name}.kafka"), false);
        tracing::info!(sink = %name, "sink stopped");
        result
    }

    async fn collect(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<Vec<OwnedMessage>> {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let max_wait = Duration::from_millis(self.sink.batch_max_ms);
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut stream = self.consumer.stream();
        loop {
            let next = match deadline {
                None => tokio::select! {
                    m = stream.next() => m,
                    _ = shutdown.changed() => return Ok(batch),
                    // Idle: come back to look for new tables.
                    _ = tokio::time::sleep(Duration::from_secs(5)) => return Ok(batch),
                },
                Some(d) => match tokio::time::timeout_at(d, stream.next()).await {
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
                    if batch.len() >= self.sink.batch_max_rows || bytes >= self.sink.batch_max_bytes
                    {
                        return Ok(batch);
                    }
                }
                Some(Err(e)) => {
                    let kind = kafka::classify(&e);
                    metrics::counter!(names::SINK_ERRORS_TOTAL, names::LABEL_SINK => self.sink.name.clone(), names::LABEL_KIND => kind.as_str()).increment(1);
                    if retry::policy(kind) == Decision::Fatal {
                        return Err(Error::kafka("consuming", e));
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

    /// Seek newly assigned partitions back to the stored position when Kafka's committed
    /// offset is ahead of it (e.g. after a progress reset by `replay`). Returns the messages
    /// still to process.
    async fn reconcile_assignment(
        &mut self,
        batch: Vec<OwnedMessage>,
    ) -> Result<Vec<OwnedMessage>> {
        let newly: Vec<(String, i32)> = std::mem::take(
            &mut *self
                .consumer
                .context()
                .assigned
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        self.fresh.extend(newly);
        if self.fresh.is_empty() {
            return Ok(batch);
        }
        let stored = target::progress(&self.client, &self.sink.name).await?;
        let mut seeked: HashSet<(String, i32)> = HashSet::new();
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            let tp = (m.topic().to_string(), m.partition());
            if seeked.contains(&tp) {
                continue;
            }
            if self.fresh.remove(&tp) {
                if let Some(p) = stored.get(&tp) {
                    if m.offset() > p.next_offset {
                        tracing::info!(topic = %tp.0, partition = tp.1, from = m.offset(), to = p.next_offset, "seeking back to stored progress");
                        let c = &self.consumer;
                        tokio::task::block_in_place(|| {
                            c.seek(
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
            out.push(m);
        }
        Ok(out)
    }

    async fn process(&mut self, batch: Vec<OwnedMessage>) -> Result<()> {
        tracing::debug!(sink = %self.sink.name, messages = batch.len(), "batch collected");
        let batch = self.reconcile_assignment(batch).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut items = Vec::with_capacity(batch.len());
        for msg in batch {
            let decoded = match msg.payload() {
                None => Err(Error::new(ErrorKind::Data, "record has no value")),
                Some(v) => self.decoder.decode(msg.key(), v).await,
            };
            let (event, dead) = match decoded {
                Ok(ev) => (Some(ev), None),
                Err(e) if e.kind() == ErrorKind::Data => (None, Some(e.context("decoding"))),
                Err(e) => return Err(e),
            };
            items.push(Item { msg, event, dead });
        }
        tracing::debug!(sink = %self.sink.name, events = items.len(), "batch decoded");
        let started = Instant::now();
        let mut delays = retry::BackoffSettings {
            max: Duration::from_secs(10),
            ..Default::default()
        }
        .delays();
        let mut attempt = 0u32;
        let outcome = loop {
            match self.apply(&mut items).await {
                Ok(o) => break o,
                Err(e) if retry::policy(e.kind()) == Decision::Retry => {
                    attempt += 1;
                    metrics::counter!(names::SINK_RETRIES_TOTAL, names::LABEL_SINK => self.sink.name.clone(), names::LABEL_KIND => e.kind().as_str()).increment(1);
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(sink = %self.sink.name, error = %e, attempt, delay_ms = delay.as_millis() as u64, "batch failed, retrying");
                    tokio::time::sleep(delay).await;
                    if e.kind() == ErrorKind::Connection || self.client.is_closed() {
                        self.reconnect().await;
                    }
                }
                Err(e) => {
                    metrics::counter!(names::SINK_ERRORS_TOTAL, names::LABEL_SINK => self.sink.name.clone(), names::LABEL_KIND => e.kind().as_str()).increment(1);
                    return Err(e);
                }
            }
        };
        let sink = self.sink.name.clone();
        metrics::histogram!(names::SINK_BATCH_EVENTS, names::LABEL_SINK => sink.clone())
            .record(items.len() as f64);
        metrics::histogram!(names::SINK_BATCH_DURATION_SECONDS, names::LABEL_SINK => sink.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(names::SINK_DUPLICATES_SKIPPED_TOTAL, names::LABEL_SINK => sink.clone())
            .increment(outcome.duplicates as u64);
        metrics::counter!(names::SINK_DLQ_EVENTS_TOTAL, names::LABEL_SINK => sink.clone())
            .increment(outcome.dead_lettered as u64);
        self.commit_offsets(&items);
        tracing::debug!(sink = %sink, events = items.len(), ms = started.elapsed().as_millis() as u64, ?outcome, "batch committed");
        Ok(())
    }

    async fn reconnect(&mut self) {
        let i = self
            .cfg
            .sinks
            .iter()
            .position(|s| s.name == self.sink.name)
            .unwrap_or(0);
        match endpoint(&self.sink, i).connect().await {
            Ok(c) => {
                self.client = Arc::new(c);
                self.statements.clear();
                self.readiness
                    .set(&format!("sink.{}.target", self.sink.name), true);
                tracing::info!(sink = %self.sink.name, "target reconnected");
            }
            Err(e) => {
                self.readiness
                    .set(&format!("sink.{}.target", self.sink.name), false);
                tracing::warn!(sink = %self.sink.name, error = %e, "target reconnect failed");
            }
        }
    }

    fn commit_offsets(&self, items: &[Item]) {
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        for it in items {
            let e = next
                .entry((it.msg.topic().to_string(), it.msg.partition()))
                .or_insert(0);
            *e = (*e).max(it.msg.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        for ((t, p), o) in &next {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
            positions.insert((t.clone(), *p), *o);
        }
        drop(positions);
        // Progress is already durable in the target; this commit only feeds lag tooling.
        if let Err(e) = self
            .consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Async)
        {
            tracing::debug!(error = %e, "offset commit failed (partition revoked?)");
        }
    }

    /// Make sure the mapping of `ev.table` is known and checked against the target.
    async fn prepare_table(&mut self, ev: &ChangeEvent) -> Result<Option<Mapping>> {
        let key = (ev.table.clone(), Arc::as_ptr(&ev.fields) as usize);
        let mapping = match self.mappings.get(&ev.table) {
            Some(m) => m.clone(),
            None if self.sink.unmapped_tables == Unmapped::Skip => return Ok(None),
            None => Mapping::identity(ev.table.clone()),
        };
        if self.checked.contains(&key) {
            return Ok(Some(mapping));
        }
        if mapping.is_identity() && ev.op != Op::Truncate {
            let existing = target::describe(&self.client, &ev.table).await?;
            match existing {
                None if self.sink.create_tables => {
                    target::create_table(
                        &self.client,
                        &ev.table,
                        &ev.fields.fields,
                        &ev.key_columns,
                    )
                    .await?;
                }
                None => {
                    return Err(Error::config(format!(
                        "sink {}: target table {} does not exist (create_tables = false)",
                        self.sink.name, ev.table
                    )))
                }
                Some(t) => {
                    for f in &ev.fields.fields {
                        if !t.columns.contains_key(&f.name) {
                            if self.sink.create_tables {
                                target::add_column(&self.client, &ev.table, f).await?;
                            } else {
                                return Err(Error::config(format!(
                                    "sink {}: column {}.{} does not exist in the target",
                                    self.sink.name, ev.table, f.name
                                )));
                            }
                        }
                    }
                }
            }
            let t = target::describe(&self.client, &ev.table)
                .await?
                .ok_or_else(|| Error::internal(format!("{} vanished", ev.table)))?;
            mapping.check_target(&t)?;
            self.catalogs.insert(ev.table.clone(), t);
            self.statements.clear();
        }
        if ev.op != Op::Truncate {
            for t in mapping.targets() {
                let key = self
                    .catalogs
                    .get(&t)
                    .map(|c| c.key.clone())
                    .unwrap_or_default();
                mapping.check_source(ev, &key)?;
            }
            self.checked.insert(key);
        }
        Ok(Some(mapping))
    }

    /// One attempt at applying the batch, in one target transaction (rolled back on error).
    async fn apply(&mut self, items: &mut [Item]) -> Result<BatchOutcome> {
        let db = self.client.clone();
        let result = self.apply_in_tx(&db, items).await;
        if result.is_err() {
            let _ = db.batch_execute("ROLLBACK").await;
        }
        result
    }

    /// `items` keeps its dead-letter marks across attempts.
    async fn apply_in_tx(
        &mut self,
        tx: &tokio_postgres::Client,
        items: &mut [Item],
    ) -> Result<BatchOutcome> {
        let mut outcome = BatchOutcome::default();
        // Mappings and DDL first (outside the data transaction).
        let mut plans: Vec<Option<Mapping>> = Vec::with_capacity(items.len());
        for it in items.iter() {
            plans.push(match &it.event {
                Some(ev) => self.prepare_table(ev).await?,
                None => None,
            });
        }
        let sink = self.sink.name.clone();
        let mut parts: Vec<(String, i32)> = items
            .iter()
            .map(|it| (it.msg.topic().to_string(), it.msg.partition()))
            .collect();
        parts.sort();
        parts.dedup();
        tx.batch_execute("BEGIN")
            .await
            .map_err(|e| Error::postgres("BEGIN", e))?;
        let stored = target::lock_progress(tx, &sink, &parts).await?;
        let mut progress = stored.clone();

        // 1. Per partition, in offset order: drop what is already applied.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| {
            (
                items[i].msg.topic().to_string(),
                items[i].msg.partition(),
                items[i].msg.offset(),
            )
        });
        let mut live = vec![];
        for i in order {
            let it = &items[i];
            let tp = (it.msg.topic().to_string(), it.msg.partition());
            let p = progress.entry(tp).or_default();
            let (lsn, seq) = it
                .event
                .as_ref()
                .map(|e| (e.commit_lsn, e.seq))
                .unwrap_or((p.commit_lsn, p.seq));
            if it.event.is_some() && p.covers(it.msg.offset(), lsn, seq) {
                outcome.duplicates += 1;
                p.next_offset = p.next_offset.max(it.msg.offset() + 1);
                continue;
            }
            if it.event.is_none() && it.msg.offset() < p.next_offset {
                outcome.duplicates += 1;
                continue;
            }
            *p = Progress {
                next_offset: it.msg.offset() + 1,
                commit_lsn: lsn.max(p.commit_lsn),
                seq: if lsn > p.commit_lsn {
                    seq
                } else {
                    seq.max(p.seq)
                },
            };
            live.push(i);
        }
        // 2. Source order across partitions.
        live.sort_by_key(|&i| {
            items[i]
                .event
                .as_ref()
                .map(|e| (e.commit_lsn, e.seq))
                .unwrap_or((i64::MAX, 0))
        });

        let mut pending: Pending = BTreeMap::new();
        let mut applied_truncates: HashSet<(String, i64, i64)> = HashSet::new();
        for &i in &live {
            if items[i].dead.is_some() {
                continue;
            }
            let Some(ev) = items[i].event.clone() else {
                continue;
            };
            let Some(mapping) = plans[i].clone() else {
                outcome.skipped += 1;
                continue;
            };
            let tname = ev.table.to_string();
            if let Some(w) = self.truncates.get(&tname) {
                if (ev.commit_lsn, ev.seq) <= *w {
                    outcome.duplicates += 1; // superseded by a truncate already applied
                    continue;
                }
            }
            if ev.op == Op::Truncate {
                if !applied_truncates.insert((tname.clone(), ev.commit_lsn, ev.seq)) {
                    continue;
                }
                self.flush(tx, &mut pending, items, &mut outcome).await?;
                if self.sink.truncate == TruncatePolicy::Apply {
                    let targets: Vec<String> =
                        mapping.targets().iter().map(target::qualified).collect();
                    tx.batch_execute(&format!("TRUNCATE {}", targets.join(", ")))
                        .await
                        .map_err(|e| {
                            Error::postgres(format!("truncating {}", targets.join(", ")), e)
                        })?;
                    outcome.applied += 1;
                } else {
                    outcome.skipped += 1;
                }
                target::save_truncate(tx, &sink, &tname, (ev.commit_lsn, ev.seq)).await?;
                self.truncates.insert(tname, (ev.commit_lsn, ev.seq));
                continue;
            }
            let keys: HashMap<TableId, Vec<String>> = mapping
                .targets()
                .into_iter()
                .map(|t| {
                    let k = self
                        .catalogs
                        .get(&t)
                        .map(|c| c.key.clone())
                        .unwrap_or_default();
                    (t, k)
                })
                .collect();
            let key_of = |t: &TableId| keys.get(t).cloned().unwrap_or_default();
            match mapping.map(&ev, &key_of) {
                Ok(ops) => {
                    for op in ops {
                        let (table, key, folded) = match op {
                            TargetOp::Upsert { table, cols } => {
                                let key = key_of(&table)
                                    .iter()
                                    .map(|k| cols.get(k).cloned().flatten())
                                    .collect();
                                (table, key, Folded::Upsert(cols))
                            }
                            TargetOp::Delete { table, key } => {
                                let k = key.iter().map(|(_, v)| v.clone()).collect();
                                (table, k, Folded::Delete(key))
                            }
                        };
                        if !self.catalogs.contains_key(&table) {
                            let t = target::describe(tx, &table).await?.ok_or_else(|| {
                                Error::config(format!("target table {table} does not exist"))
                            })?;
                            self.catalogs.insert(table.clone(), t);
                        }
                        match pending.entry((table, key)) {
                            std::collections::btree_map::Entry::Vacant(v) => {
                                v.insert((folded, vec![i]));
                            }
                            std::collections::btree_map::Entry::Occupied(mut o) => {
                                let (prev, srcs) = o.get_mut();
                                srcs.push(i);
                                match (prev, folded) {
                                    (Folded::Upsert(old), Folded::Upsert(new)) => old.extend(new),
                                    (slot, f) => *slot = f,
                                }
                            }
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::Data => items[i].dead = Some(e.context("mapping")),
                Err(e) => return Err(e),
            }
        }
        self.flush(tx, &mut pending, items, &mut outcome).await?;

        // Progress for every partition of the batch, then dead letters, then COMMIT.
        let changed: HashMap<(String, i32), Progress> = progress
            .into_iter()
            .filter(|(k, v)| stored.get(k) != Some(v))
            .collect();
        target::save_progress(tx, &sink, &changed).await?;
        let mut deliveries = vec![];
        for &i in &live {
            if let Some(err) = &items[i].dead {
                outcome.dead_lettered += 1;
                deliveries.push(self.dead_letter(&items[i].msg, err));
            }
        }
        for d in futures::future::join_all(deliveries).await {
            d?;
        }
        tx.batch_execute("COMMIT")
            .await
            .map_err(|e| Error::postgres("COMMIT", e))?;
        self.observe_applied(items, &live);
        Ok(outcome)
    }

    fn observe_applied(&self, items: &[Item], live: &[usize]) {
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
            metrics::counter!(names::SINK_EVENTS_APPLIED_TOTAL, names::LABEL_SINK => self.sink.name.clone(), names::LABEL_TABLE => ev.table.to_string(), names::LABEL_OP => ev.op.code()).increment(1);
            metrics::histogram!(names::SINK_LATENCY_SECONDS, names::LABEL_SINK => self.sink.name.clone())
                .record((now_us - ev.commit_ts_us).max(0) as f64 / 1e6);
            last_commit = Some(last_commit.unwrap_or(0).max(ev.commit_ts_us));
        }
        if let Some(ts) = last_commit {
            metrics::gauge!(names::SINK_LAST_APPLIED_COMMIT_SECONDS, names::LABEL_SINK => self.sink.name.clone())
                .set(ts as f64 / 1e6);
        }
    }

    /// Execute the folded writes: per table, deletes then upserts grouped by column set. A
    /// data error (constraint, cast) falls back to one write at a time under savepoints, and
    /// the writes that still fail dead-letter their events.
    async fn flush(
        &mut self,
        tx: &tokio_postgres::Client,
        pending: &mut Pending,
        items: &mut [Item],
        outcome: &mut BatchOutcome,
    ) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let writes: Vec<(TableId, Folded, Vec<usize>)> = std::mem::take(pending)
            .into_iter()
            .map(|((t, _), (f, s))| (t, f, s))
            .collect();
        savepoint(tx, "SAVEPOINT cutover_batch").await?;
        match self.write(tx, &writes.iter().collect::<Vec<_>>()).await {
            Ok(()) => {
                savepoint(tx, "RELEASE SAVEPOINT cutover_batch").await?;
                outcome.applied += writes.iter().map(|w| w.2.len()).sum::<usize>();
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::Data => {
                savepoint(tx, "ROLLBACK TO SAVEPOINT cutover_batch").await?;
                tracing::warn!(sink = %self.sink.name, error = %e, "batch hit a data error: applying one write at a time");
            }
            Err(e) => return Err(e),
        }
        for w in &writes {
            savepoint(tx, "SAVEPOINT cutover_row").await?;
            match self.write(tx, &[w]).await {
                Ok(()) => {
                    savepoint(tx, "RELEASE SAVEPOINT cutover_row").await?;
                    outcome.applied += w.2.len();
                }
                Err(e) if e.kind() == ErrorKind::Data => {
                    savepoint(tx, "ROLLBACK TO SAVEPOINT cutover_row").await?;
                    for &i in &w.2 {
                        items[i].dead = Some(Error::new(e.kind(), e.to_string()));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn write(
        &mut self,
        tx: &tokio_postgres::Client,
        writes: &[&(TableId, Folded, Vec<usize>)],
    ) -> Result<()> {
        let mut by_table: BTreeMap<&TableId, Vec<&Folded>> = BTreeMap::new();
        for (t, f, _) in writes {
            by_table.entry(t).or_default().push(f);
        }
        for (t, ops) in by_table {
            let tt = self
                .catalogs
                .get(t)
                .cloned()
                .ok_or_else(|| Error::internal(format!("no catalog for {t}")))?;
            let cast = self
                .mappings
                .values()
                .find(|m| m.targets().contains(t))
                .map(|m| m.cast.clone())
                .unwrap_or_default();
            let mut deletes: Vec<Vec<Option<String>>> = vec![Vec::new(); tt.key.len()];
            let mut groups: BTreeMap<Vec<String>, Vec<Vec<Option<String>>>> = BTreeMap::new();
            for op in ops {
                match op {
                    Folded::Delete(key) => {
                        for (j, k) in tt.key.iter().enumerate() {
                            deletes[j].push(
                                key.iter()
                                    .find(|(n, _)| n == k)
                                    .and_then(|(_, v)| v.clone()),
                            );
                        }
                    }
                    Folded::Upsert(cols) => {
                        for c in cols.keys() {
                            if !tt.columns.contains_key(c) {
                                return Err(Error::new(
                                    ErrorKind::Data,
                                    format!("column {t}.{c} does not exist in the target"),
                                ));
                            }
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
            if deletes.first().is_some_and(|d| !d.is_empty()) {
                self.statements.delete(tx, &tt, &deletes).await?;
            }
            for (cols, values) in groups {
                self.statements
                    .upsert(tx, &tt, &cast, &cols, &values)
                    .await?;
            }
        }
        Ok(())
    }

    fn dead_letter(
        &self,
        msg: &OwnedMessage,
        err: &Error,
    ) -> impl std::future::Future<Output = Result<()>> + use<> {
        let error = err.to_string();
        tracing::warn!(sink = %self.sink.name, topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), error = %error, "event sent to the dead-letter topic");
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "cutover.error",
                value: Some(error.as_str()),
            })
            .insert(Header {
                key: "cutover.error.kind",
                value: Some(err.kind().as_str()),
            })
            .insert(Header {
                key: "cutover.sink",
                value: Some(self.sink.name.as_str()),
            })
            .insert(Header {
                key: "cutover.topic",
                value: Some(msg.topic()),
            })
            .insert(Header {
                key: "cutover.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "cutover.offset",
                value: Some(offset.as_str()),
            });
        let empty: &[u8] = &[];
        let record = FutureRecord::to(&self.dlq_topic)
            .headers(headers)
            .payload(msg.payload().unwrap_or(empty))
            .key(msg.key().unwrap_or(empty));
        let fut = self.dlq.send_result(record).map_err(|(e, _)| e);
        async move {
            match fut {
                Err(e) => Err(Error::kafka("producing a dead letter", e)),
                Ok(f) => match f.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(Error::kafka("producing a dead letter", e)),
                    Err(_) => Err(Error::new(
                        ErrorKind::Unavailable,
                        "dead-letter delivery canceled",
                    )),
                },
            }
        }
    }
}

/// Every 5 s: lag = high watermark − next offset, per partition this sink has applied, read
/// through a client of its own (a consumer's connection is busy with long fetches).
fn spawn_lag_reporter(
    cfg: &Config,
    sink: &str,
    positions: Arc<Mutex<HashMap<(String, i32), i64>>>,
) -> tokio::task::JoinHandle<()> {
    let (kafka_cfg, sink) = (cfg.kafka.clone(), sink.to_string());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let snapshot = positions.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let topics: HashSet<&String> = snapshot.keys().map(|(t, _)| t).collect();
            for t in topics {
                let Ok(wm) = kafka::watermarks(&kafka_cfg, t).await else {
                    continue;
                };
                for (p, (_, hi)) in wm {
                    if let Some(next) = snapshot.get(&(t.clone(), p)) {
                        metrics::gauge!(names::SINK_LAG_MESSAGES, names::LABEL_SINK => sink.clone(), names::LABEL_TOPIC => t.clone(), names::LABEL_PARTITION => p.to_string())
                            .set((hi - next).max(0) as f64);
                    }
                }
            }
        }
    })
}

async fn savepoint(tx: &tokio_postgres::Client, sql: &str) -> Result<()> {
    tx.batch_execute(sql)
        .await
        .map_err(|e| Error::postgres(sql.to_string(), e))
}
