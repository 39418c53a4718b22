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
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::decode::{ChangeEvent, Decoder};
use super::mapping::{table_id, Mapping, TargetOp, TargetTable};
use super::target::{self, Progress, Statements};
use crate::backsync::conflict::{self, Incoming};
use crate::backsync::phase::{self, Phase};
use crate::backsync::{origin, role_of, Role, Side};
use crate::config::{Config, ConflictPolicy, SinkConfig, TruncatePolicy, Unmapped};
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
/// Explicit names rather than a regex subscription: with the classic protocol a regex makes
/// librdkafka ask for the metadata of every topic in the cluster on each refresh, which costs
/// the broker and the sink on a shared cluster with thousands of topics; names from the
/// registry cost one HTTP call and subscribe only what capture actually writes.
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

/// Rebalance notifications for the loop (it re-checks stored progress of new partitions), and
/// the `sink.<name>.assigned` readiness check: ready once the group gave this member its share
/// (possibly none, when there are more members than partitions), not ready while revoked.
pub struct SinkContext {
    assigned: Mutex<Vec<(String, i32)>>,
    readiness: Readiness,
    check: String,
}

impl SinkContext {
    fn new(readiness: Readiness, sink: &str) -> SinkContext {
        let check = format!("sink.{sink}.assigned");
        readiness.set(&check, false);
        SinkContext {
            assigned: Mutex::new(Vec::new()),
            readiness,
            check,
        }
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

/// `dual`-phase keys of a batch → who resolves them.
type DualKeys = HashMap<(TableId, Vec<Option<String>>), (Role, Phase, Arc<Mapping>)>;

/// A version written under last-writer-wins: its origin commit time and side.
struct Version {
    table: TableId,
    key: Vec<(String, Option<String>)>,
    ts_us: i64,
    side: Side,
    deleted: bool,
}

/// What one batch did (for metrics and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: usize,
    pub duplicates: usize,
    pub dead_lettered: usize,
    pub skipped: usize,
    /// Events of tables the other side owns in their current phase (back-sync roles only).
    pub phase_skipped: usize,
    /// Conflicts resolved, by winner.
    pub conflicts_incoming_won: usize,
    pub conflicts_local_won: usize,
}

pub struct Sink {
    cfg: Config,
    sink: SinkConfig,
    consumer: StreamConsumer<SinkContext>,
    dlq: FutureProducer,
    dlq_topic: String,
    decoder: Decoder,
    client: Arc<tokio_postgres::Client>,
    statements: Statements,
    /// Mapping per source table: configured ones from start(), identity ones added on first use.
    mappings: HashMap<TableId, Arc<Mapping>>,
    /// Target table → its `cast` settings (from the mapping that writes it).
    casts: HashMap<TableId, BTreeMap<String, String>>,
    /// Source tables whose mapping was checked against this schema id (by Arc pointer).
    checked: HashSet<(TableId, usize)>,
    catalogs: HashMap<TableId, TargetTable>,
    truncates: HashMap<String, (i64, i64)>,
    fresh: HashSet<(String, i32)>,
    readiness: Readiness,
    registry: RegistryClient,
    topics: Vec<String>,
    topics_checked: Instant,
    /// The replication origin this sink's session writes under (never captured back).
    origin: String,
    /// Its part in a back-sync, if any: phases and conflicts apply.
    role: Option<Role>,
    /// Connection to legacy's phase table (the forward role; the reverse role writes legacy
    /// and reads the phases inside its own transaction).
    control: Option<tokio_postgres::Client>,
    /// Set when a replay runs this sink: only these topics, nothing at or past the end offsets.
    bounds: Option<Bounds>,
}

/// Limits of a bounded run (a replay).
#[derive(Debug, Clone, Default)]
pub struct Bounds {
    pub topics: Vec<String>,
    /// (topic, partition) → first offset not to apply.
    pub end: HashMap<(String, i32), i64>,
}

/// The connection to sink `i`'s target store (`sinks[i].url`).
pub fn target_endpoint(sink: &SinkConfig, i: usize) -> Endpoint {
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
        Self::start_with(cfg, name, readiness, None).await
    }

    /// As [`Sink::start`]; with `bounds`, a replay's bounded run (the replay holds the sink's
    /// exclusive lock, so this instance does not take the shared one).
    pub async fn start_with(
        cfg: &Config,
        name: &str,
        readiness: Readiness,
        bounds: Option<Bounds>,
    ) -> Result<Sink> {
        let i = cfg
            .sinks
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| Error::config(format!("no sink named {name:?} in sinks[]")))?;
        let sink = cfg.sinks[i].clone();
        let client = target_endpoint(&sink, i).connect().await?;
        origin::check_privileges(&client, &format!("sinks[{i}].url")).await?;
        target::ensure_state(&client).await?;
        if bounds.is_none() {
            super::replay::hold_shared(&client, name, &sink.group_id(&cfg.name)).await?;
        }
        let origin = origin::bind(&client, &cfg.name, name, sink.instance_id.as_deref()).await?;
        let role = role_of(cfg, name);
        let control = match &role {
            Some(r) => {
                if r.policy == ConflictPolicy::LastWriterWins {
                    require_commit_timestamps(&client, &format!("sinks[{i}].url")).await?;
                }
                let c = match r.writes {
                    Side::New => Some(r.control.connect().await?),
                    Side::Legacy => None,
                };
                phase::ensure_control(c.as_ref().unwrap_or(&client)).await?;
                c
            }
            None => None,
        };
        readiness.set(&format!("sink.{name}.target"), true);
        let mut mappings = HashMap::new();
        let mut catalogs = HashMap::new();
        let mut casts = HashMap::new();
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
                if !m.cast.is_empty() {
                    casts.insert(target.clone(), m.cast.clone());
                }
                catalogs.insert(target, tt);
            }
            mappings.insert(m.source.clone(), Arc::new(m));
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
        let group = sink.group_id(&cfg.name);
        let mut cc = kafka::consumer_config(&cfg.kafka, &group);
        if let Some(id) = &sink.instance_id {
            cc.set("group.instance.id", id);
        }
        cc.set("topic.metadata.refresh.interval.ms", "5000");
        let consumer: StreamConsumer<SinkContext> = cc
            .create_with_context(SinkContext::new(readiness.clone(), name))
            .map_err(|e| Error::kafka("creating sink consumer", e))?;
        readiness.set(&format!("sink.{name}.kafka"), true);
        init_metrics(name, role.as_ref().map(|r| r.policy));
        tracing::info!(sink = name, group, origin, role = ?role.as_ref().map(|r| r.writes.as_str()), "sink started");
        let mut sink = Sink {
            cfg: cfg.clone(),
            sink,
            consumer,
            dlq,
            dlq_topic,
            decoder: Decoder::new(RegistryClient::new(&cfg.registry)?),
            client: Arc::new(client),
            statements: Statements::default(),
            mappings,
            casts,
            checked: HashSet::new(),
            catalogs,
            truncates,
            fresh: HashSet::new(),
            readiness,
            registry: RegistryClient::new(&cfg.registry)?,
            topics: vec![],
            topics_checked: Instant::now(),
            origin,
            role,
            control,
            bounds,
        };
        sink.refresh_topics().await?;
        Ok(sink)
    }

    /// Subscribe to the captured topics (again, if a new table appeared).
    async fn refresh_topics(&mut self) -> Result<()> {
        self.topics_checked = Instant::now();
        let topics = match &self.bounds {
            Some(b) => b.topics.clone(),
            None => captured_topics(&self.cfg, &self.registry).await?,
        };
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
        let mut batch = self.reconcile_assignment(batch).await?;
        if let Some(b) = &self.bounds {
            // A bounded run applies nothing at or past its end offsets.
            batch.retain(|m| {
                b.end
                    .get(&(m.topic().to_string(), m.partition()))
                    .is_some_and(|e| m.offset() < *e)
            });
        }
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
        if let Some(role) = &self.role {
            let policy = role.policy.as_str();
            metrics::counter!(names::SINK_PHASE_SKIPPED_TOTAL, names::LABEL_SINK => sink.clone())
                .increment(outcome.phase_skipped as u64);
            for (winner, n) in [
                ("incoming", outcome.conflicts_incoming_won),
                ("local", outcome.conflicts_local_won),
            ] {
                metrics::counter!(names::SINK_CONFLICTS_TOTAL, names::LABEL_SINK => sink.clone(), names::LABEL_POLICY => policy, names::LABEL_WINNER => winner)
                    .increment(n as u64);
            }
        }
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
        let shared = self.bounds.is_none();
        let connected = match target_endpoint(&self.sink, i).connect().await {
            Ok(c) if shared => match super::replay::hold_shared(
                &c,
                &self.sink.name,
                &self.sink.group_id(&self.cfg.name),
            )
            .await
            {
                Ok(()) => Ok(c),
                Err(e) => Err(e),
            },
            other => other,
        };
        let connected = match connected {
            Ok(c) => origin::bind(
                &c,
                &self.cfg.name,
                &self.sink.name,
                self.sink.instance_id.as_deref(),
            )
            .await
            .map(|o| (c, o)),
            Err(e) => Err(e),
        };
        match connected {
            Ok((c, o)) => {
                self.origin = o;
                self.client = Arc::new(c);
                if let Some(role) = self.role.as_ref().filter(|r| r.writes == Side::New) {
                    if self.control.as_ref().is_none_or(|c| c.is_closed()) {
                        match role.control.connect().await {
                            Ok(c) => self.control = Some(c),
                            Err(e) => {
                                tracing::warn!(sink = %self.sink.name, error = %e, "legacy (phases) reconnect failed")
                            }
                        }
                    }
                }
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
        for ((t, p), o) in &next {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        // Progress is already durable in the target; this commit only feeds lag tooling.
        if let Err(e) = self
            .consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Async)
        {
            tracing::debug!(error = %e, "offset commit failed (partition revoked?)");
        }
    }

    /// Make sure the mapping of `ev.table` is known and checked against the target.
    async fn prepare_table(&mut self, ev: &ChangeEvent) -> Result<Option<Arc<Mapping>>> {
        let key = (ev.table.clone(), Arc::as_ptr(&ev.fields) as usize);
        let mapping = match self.mappings.get(&ev.table) {
            Some(m) => m.clone(),
            None if self.sink.unmapped_tables == Unmapped::Skip => return Ok(None),
            None => self
                .mappings
                .entry(ev.table.clone())
                .or_insert_with(|| Arc::new(Mapping::identity(ev.table.clone())))
                .clone(),
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
        let mut plans: Vec<Option<Arc<Mapping>>> = Vec::with_capacity(items.len());
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

        // Back-sync roles re-read the phases at every batch: a phase change takes effect at
        // the next batch boundary.
        let phases = match &self.role {
            Some(_) => phase::load(self.control.as_ref().unwrap_or(tx), &self.cfg.name).await?,
            None => BTreeMap::new(),
        };
        // Rows written by this transaction carry the newest source commit time of the batch
        // as their commit timestamp (last-writer-wins compares it) and the source LSN.
        if let Some((lsn, ts)) = live
            .iter()
            .filter_map(|&i| items[i].event.as_ref())
            .map(|e| (e.commit_lsn, e.commit_ts_us))
            .max()
        {
            tx.execute(
                "SELECT pg_replication_origin_xact_setup($1::text::pg_lsn,
                    'epoch'::timestamptz + $2::int8 * interval '1 microsecond')",
                &[&crate::event::Lsn(lsn as u64).to_string(), &ts],
            )
            .await
            .map_err(|e| Error::postgres("pg_replication_origin_xact_setup", e))?;
        }
        // Keys of `dual`-phase tables in `pending`: settled (conflict check) before each flush.
        let mut dual_keys: DualKeys = HashMap::new();
        // Versions written under last-writer-wins, remembered after the final flush.
        let mut versions: Vec<Version> = Vec::new();
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
                self.settle_and_flush(
                    tx,
                    &mut pending,
                    &mut dual_keys,
                    &mut versions,
                    items,
                    &mut outcome,
                )
                .await?;
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
            // Every target of a prepared mapping is in `catalogs` (start() and prepare_table()).
            let catalogs = &self.catalogs;
            let key_of = |t: &TableId| catalogs.get(t).map(|c| c.key.clone()).unwrap_or_default();
            let ops = match mapping.map(&ev, &key_of) {
                Ok(ops) => ops,
                Err(e) if e.kind() == ErrorKind::Data => {
                    items[i].dead = Some(e.context("mapping"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Back-sync roles: only tables whose phase sends changes this way; in `dual`, every
            // row is checked for a conflict first.
            let mut dual = None;
            if let Some(role) = &self.role {
                let legacy_table = match role.writes {
                    Side::New => ev.table.to_string(),
                    Side::Legacy => mapping
                        .targets()
                        .first()
                        .map(|t| t.to_string())
                        .unwrap_or_default(),
                };
                let phase = phases.get(&legacy_table).copied().unwrap_or(Phase::Forward);
                if !phase.applies_towards(role.writes) {
                    outcome.phase_skipped += 1;
                    continue;
                }
                if phase == Phase::Dual && ev.op != Op::Truncate {
                    dual = Some((role.clone(), phase));
                }
            }
            for op in ops {
                let (table, key, folded) = match op {
                    TargetOp::Upsert { table, cols } => {
                        let key: Vec<Option<String>> = catalogs
                            .get(&table)
                            .map(|c| c.key.as_slice())
                            .unwrap_or_default()
                            .iter()
                            .map(|k| cols.get(k).cloned().flatten())
                            .collect();
                        (table, key, Folded::Upsert(cols))
                    }
                    TargetOp::Delete { table, key } => {
                        let k: Vec<Option<String>> = key.iter().map(|(_, v)| v.clone()).collect();
                        (table, k, Folded::Delete(key))
                    }
                };
                if let Some((role, phase)) = &dual {
                    dual_keys
                        .entry((table.clone(), key.clone()))
                        .or_insert_with(|| (role.clone(), *phase, mapping.clone()));
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
        self.settle_and_flush(
            tx,
            &mut pending,
            &mut dual_keys,
            &mut versions,
            items,
            &mut outcome,
        )
        .await?;
        for v in &versions {
            let tt = &self.catalogs[&v.table];
            conflict::remember(tx, tt, &v.key, v.ts_us, v.side, v.deleted).await?;
        }

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

    /// Every write of a batch goes out through here, so `dual`-phase keys are always settled
    /// before they are written.
    async fn settle_and_flush(
        &mut self,
        tx: &tokio_postgres::Client,
        pending: &mut Pending,
        dual_keys: &mut DualKeys,
        versions: &mut Vec<Version>,
        items: &mut [Item],
        outcome: &mut BatchOutcome,
    ) -> Result<()> {
        self.settle_dual(tx, pending, dual_keys, items, versions, outcome)
            .await?;
        self.flush(tx, pending, items, outcome).await
    }

    /// Before a flush: check every pending write of a `dual`-phase table against the target
    /// row, resolve conflicts by the policy (recording them in this transaction), and drop the
    /// writes that lose. A key's writes in this batch are one unit: the first event's
    /// before-image detects the conflict, the last event's commit time competes.
    async fn settle_dual(
        &self,
        tx: &tokio_postgres::Client,
        pending: &mut Pending,
        dual_keys: &mut DualKeys,
        items: &[Item],
        versions: &mut Vec<Version>,
        outcome: &mut BatchOutcome,
    ) -> Result<()> {
        for ((table, key), (role, phase, mapping)) in std::mem::take(dual_keys) {
            let pk = (table.clone(), key);
            let Some((folded, srcs)) = pending.get(&pk) else {
                continue;
            };
            let events: Vec<&ChangeEvent> = srcs
                .iter()
                .filter_map(|&i| items[i].event.as_ref())
                .collect();
            let (Some(first), Some(ts)) =
                (events.first(), events.iter().map(|e| e.commit_ts_us).max())
            else {
                continue;
            };
            let (apply, key_pairs) = self
                .resolve_conflict(
                    tx, &role, phase, &mapping, first, ts, &table, folded, outcome,
                )
                .await?;
            if !apply {
                pending.remove(&pk);
            } else if role.policy == ConflictPolicy::LastWriterWins {
                versions.push(Version {
                    deleted: matches!(folded, Folded::Delete(_)),
                    table,
                    key: key_pairs,
                    ts_us: ts,
                    side: role.incoming(),
                });
            }
        }
        Ok(())
    }

    /// Check one key's incoming writes against the target row; resolve and record a conflict.
    /// Returns whether to apply, and the target key.
    #[allow(clippy::too_many_arguments)]
    async fn resolve_conflict(
        &self,
        tx: &tokio_postgres::Client,
        role: &Role,
        phase: Phase,
        mapping: &Mapping,
        ev: &ChangeEvent,
        ts_us: i64,
        table: &TableId,
        folded: &Folded,
        outcome: &mut BatchOutcome,
    ) -> Result<(bool, Vec<(String, Option<String>)>)> {
        let tt = self
            .catalogs
            .get(table)
            .ok_or_else(|| Error::internal(format!("no catalog for {table}")))?;
        // The before-image in this side's shape: the old row mapped like a new one.
        let before: Option<BTreeMap<String, Option<String>>> = match &ev.before {
            None => None,
            Some(b) => {
                let old = ChangeEvent {
                    op: Op::Update,
                    before: None,
                    after: Some(b.clone()),
                    unchanged: vec![],
                    ..ev.clone()
                };
                let key_of = |t: &TableId| {
                    self.catalogs
                        .get(t)
                        .map(|c| c.key.clone())
                        .unwrap_or_default()
                };
                mapping.map(&old, &key_of).ok().and_then(|ops| {
                    ops.into_iter().find_map(|op| match op {
                        TargetOp::Upsert { table: t, cols } if &t == table => Some(cols),
                        _ => None,
                    })
                })
            }
        };
        let (incoming, key, image, incoming_row) = match folded {
            Folded::Upsert(cols) => {
                let key: Vec<(String, Option<String>)> = tt
                    .key
                    .iter()
                    .map(|k| (k.clone(), cols.get(k).cloned().flatten()))
                    .collect();
                let has_before = before.is_some();
                let image = before.clone().unwrap_or_else(|| cols.clone());
                (
                    Incoming::Upsert { has_before },
                    key,
                    Some(image),
                    Some(cols),
                )
            }
            Folded::Delete(key) => (Incoming::Delete, key.clone(), before.clone(), None),
        };
        let lww = role.policy == ConflictPolicy::LastWriterWins;
        let (local, local_row) = conflict::compare(tx, tt, &key, image.as_ref(), lww).await?;
        let from = role.incoming();
        // `ts_us` is the latest commit time among the key's events in this batch: the folded
        // write is that event's row, so that is the time that competes (and is recorded).
        let r = conflict::resolve(role.policy, from, phase.owner(), incoming, ts_us, &local);
        if let Some(kind) = r.conflict {
            if r.apply {
                outcome.conflicts_incoming_won += 1;
            } else {
                outcome.conflicts_local_won += 1;
            }
            let local_commit_ts_us = match local {
                conflict::Local::Differs { commit_ts_us, .. } => commit_ts_us,
                _ => None,
            };
            tracing::info!(sink = %self.sink.name, table = %table, kind = kind.as_str(), policy = role.policy.as_str(), incoming_won = r.apply, "conflict resolved");
            conflict::record(
                tx,
                &conflict::Record {
                    sink: &self.sink.name,
                    table: tt,
                    key: &key,
                    kind,
                    policy: role.policy,
                    incoming_won: r.apply,
                    local_row,
                    local_commit_ts_us,
                    incoming_row,
                    incoming_commit_ts_us: ts_us,
                    incoming_from: from,
                    incoming_commit_lsn: ev.commit_lsn,
                    incoming_seq: ev.seq,
                },
            )
            .await?;
        }
        Ok((r.apply, key))
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
            let no_cast = BTreeMap::new();
            let cast = self.casts.get(t).unwrap_or(&no_cast);
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
                    .upsert(tx, &tt, cast, &cols, &values)
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
/// Export every per-kind series of the sink at zero, so `rate()` and `increase()` see the
/// first error instead of a series appearing from nowhere.
fn init_metrics(sink: &str, policy: Option<ConflictPolicy>) {
    if let Some(p) = policy {
        metrics::counter!(names::SINK_PHASE_SKIPPED_TOTAL, names::LABEL_SINK => sink.to_string())
            .increment(0);
        for winner in ["incoming", "local"] {
            metrics::counter!(names::SINK_CONFLICTS_TOTAL, names::LABEL_SINK => sink.to_string(), names::LABEL_POLICY => p.as_str(), names::LABEL_WINNER => winner)
                .increment(0);
        }
    }
    for kind in ErrorKind::ALL {
        metrics::counter!(names::SINK_ERRORS_TOTAL, names::LABEL_SINK => sink.to_string(), names::LABEL_KIND => kind.as_str()).increment(0);
        if retry::policy(kind) == Decision::Retry {
            metrics::counter!(names::SINK_RETRIES_TOTAL, names::LABEL_SINK => sink.to_string(), names::LABEL_KIND => kind.as_str()).increment(0);
        }
    }
    metrics::counter!(names::SINK_DUPLICATES_SKIPPED_TOTAL, names::LABEL_SINK => sink.to_string())
        .increment(0);
    metrics::counter!(names::SINK_DLQ_EVENTS_TOTAL, names::LABEL_SINK => sink.to_string())
        .increment(0);
}

/// Last-writer-wins compares commit timestamps, which PostgreSQL keeps only with
/// `track_commit_timestamp = on`.
async fn require_commit_timestamps(client: &tokio_postgres::Client, field: &str) -> Result<()> {
    let on: String = client
        .query_one("SELECT current_setting('track_commit_timestamp')", &[])
        .await
        .map_err(|e| Error::postgres("reading track_commit_timestamp", e))?
        .get(0);
    if on != "on" {
        return Err(Error::new(
            ErrorKind::Environment,
            format!("{field}: backsync.conflict_policy = \"last_writer_wins\" needs track_commit_timestamp = on in this database's server (postgresql.conf; needs a restart)"),
        ));
    }
    Ok(())
}

async fn savepoint(tx: &tokio_postgres::Client, sql: &str) -> Result<()> {
    tx.batch_execute(sql)
        .await
        .map_err(|e| Error::postgres(sql.to_string(), e))
}
