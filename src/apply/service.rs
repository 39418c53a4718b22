//! The sink loop: consume a batch, apply it in target transactions together with its progress,
//! then commit the Kafka offsets; while one batch is applied, the next is collected and
//! decoded.
//!
//! ```text
//!  Kafka ─▶ batch N+1 (≤ rows, bytes, ms) ─▶ decode            ┐ at the same time
//!           batch N ─▶ admit (fresh partitions vs stored       │
//!                      progress) ─▶ tables.prepare (DDL) ─▶    ┘
//!                      per connection share (see `transaction`):
//!                        BEGIN
//!                        lock progress rows (FOR UPDATE)
//!                        guard.begin (phases)
//!                        plan: drop events at/below stored (offset | commit_lsn,seq),
//!                              map → admit → fold per target key
//!                        steps: settle + DELETE / UPSERT (set-based) | TRUNCATE
//!                        guard.finish, UPDATE progress
//!                        poison events ─▶ <prefix>.dlq.<sink>  (acked before COMMIT)
//!                        COMMIT
//!                      ─▶ commit Kafka offsets (for lag tooling only)
//! ```
//!
//! Invariants: progress and data commit atomically, so a crash anywhere re-reads at most the
//! batches in flight and skips what is already applied (effectively-once). Kafka offsets are
//! only ever committed after the batch is durable and are never trusted over stored progress:
//! on a fresh assignment the sink seeks back to the stored position if Kafka's is ahead, and
//! that check (admit) runs only while no batch is being collected, so a seek never races a
//! fetch. Per-key order holds because a key lives in one partition, a partition is in one
//! transaction of a batch, and batches are applied one after the other. Memory: at most two
//! batches (one applying, one decoded), each bounded by `batch_max_rows` / `batch_max_bytes`.
//! What to write is decided by the pure [`super::plan`]; how it is written by
//! [`super::write`]; whether a back-sync role lets it through by the [`WriteGuard`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use tokio::sync::watch;

use super::consumer::{self, SinkContext};
use super::decode::Decoder;
use super::guard::{Unguarded, WriteGuard};
use super::mapping::Mapping;
use super::metrics::{BatchOutcome, SinkMetrics};
use super::schema::Tables;
use super::transaction::{deal, transact, BatchCtx, Item, Lane};
use crate::config::{Config, SinkConfig};
use crate::database::{origin, Endpoint};
use crate::deadletter::Parking;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Op, TableId};
use crate::kafka::{self, topic};
use crate::observe::Readiness;
use crate::registry::RegistryClient;
use crate::retry::{self, Attempts, BackoffSettings, Decision};
use crate::state::progress;

/// Limits of a bounded run (a replay).
#[derive(Debug, Clone, Default)]
pub struct Bounds {
    pub topics: Vec<String>,
    /// (topic, partition) → first offset not to apply.
    pub end: HashMap<(String, i32), i64>,
}

pub struct Sink {
    cfg: Config,
    /// Shared with the intake task of every batch.
    sink: Arc<SinkConfig>,
    consumer: Arc<StreamConsumer<SinkContext>>,
    /// `None` only while a task of the loop holds it (collecting the next batch).
    decoder: Option<Decoder>,
    /// Partitions assigned but not yet reconciled with stored progress.
    fresh: HashSet<(String, i32)>,
    readiness: Readiness,
    registry: RegistryClient,
    topics: Vec<String>,
    topics_checked: Instant,
    metrics: Arc<SinkMetrics>,
    /// Set when a replay runs this sink: only these topics, nothing at or past the end offsets.
    bounds: Option<Bounds>,
    /// The applying half.
    target: Target,
}

/// The applying half of a sink: its target connections and what a batch transaction needs.
struct Target {
    cfg: Config,
    sink: SinkConfig,
    /// Where `sink` is in `sinks[]` (field paths).
    index: usize,
    /// Take the shared replay lock on every connection (not in a replay's bounded run).
    shared_lock: bool,
    readiness: Readiness,
    /// The target connections (`apply_connections`); the first also runs DDL and reads
    /// progress outside a batch.
    lanes: Vec<Lane>,
    /// What its part in a back-sync lets through (`Unguarded` for a plain sink).
    guard: Box<dyn WriteGuard>,
    /// Tables, truncate watermarks, dead-letter producer, metrics: what every batch
    /// transaction reads.
    ctx: BatchCtx,
}

impl Sink {
    /// Connect to the target (creating the state tables), validate configured mappings
    /// against it, create the DLQ topic and subscribe. With `bounds`, a replay's bounded run
    /// (the replay holds the sink's exclusive lock, so this instance does not take the shared
    /// one). `backsync::start_sink` picks the guard for a sink's role.
    pub async fn start(
        cfg: &Config,
        name: &str,
        readiness: Readiness,
        bounds: Option<Bounds>,
        mut guard: Box<dyn WriteGuard>,
    ) -> Result<Sink> {
        let (index, sink) = cfg.sink_at(name)?;
        let sink = sink.clone();
        let endpoint = Endpoint::of_sink(&sink, index);
        let client = endpoint.connect().await?;
        origin::check_privileges(&client, &endpoint.field).await?;
        crate::state::ensure_target(&client).await?;
        let shared_lock = bounds.is_none();
        let mut lanes = vec![Lane::bind(cfg, &sink, shared_lock, client).await?];
        guard.start(&lanes[0].client).await?;
        while lanes.len() < sink.apply_connections {
            lanes.push(Lane::bind(cfg, &sink, shared_lock, endpoint.connect().await?).await?);
        }
        readiness.set(&format!("sink.{name}.target"), true);
        let tables = Tables::load(&lanes[0].client, &sink, index).await?;
        let truncates = progress::truncates(&lanes[0].client, name).await?;
        let parking = Parking::open(&cfg.kafka, topic::sink_dlq(&cfg.topic_prefix, name)).await?;
        let consumer = subscribe_consumer(cfg, &sink, &readiness)?;
        readiness.set(&format!("sink.{name}.kafka"), true);
        let metrics = SinkMetrics::new(name, guard.policy());
        let origins: Vec<&str> = lanes.iter().map(|l| l.origin.as_str()).collect();
        tracing::info!(sink = name, group = sink.group_id(&cfg.name), origins = ?origins, role = ?guard.writes(), "sink started");
        let truncate = sink.truncate;
        let mut sink = Sink {
            cfg: cfg.clone(),
            sink: Arc::new(sink.clone()),
            consumer: Arc::new(consumer),
            decoder: Some(Decoder::new(RegistryClient::new(&cfg.registry)?)),
            fresh: HashSet::new(),
            readiness: readiness.clone(),
            registry: RegistryClient::new(&cfg.registry)?,
            topics: vec![],
            topics_checked: Instant::now(),
            metrics: Arc::new(metrics.clone()),
            bounds,
            target: Target {
                cfg: cfg.clone(),
                sink,
                index,
                shared_lock,
                readiness,
                lanes,
                guard,
                ctx: BatchCtx {
                    sink: name.to_string(),
                    tables,
                    truncates,
                    truncate,
                    parking,
                    metrics,
                },
            },
        };
        sink.refresh_topics().await?;
        Ok(sink)
    }

    /// Subscribe to the captured topics (again, if a new table appeared).
    async fn refresh_topics(&mut self) -> Result<()> {
        self.topics_checked = Instant::now();
        let topics = match &self.bounds {
            Some(b) => b.topics.clone(),
            None => consumer::captured_topics(&self.cfg, &self.registry).await?,
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

    /// Run until `shutdown` flips: the batch in flight is finished and committed first (a
    /// batch collected meanwhile is dropped unapplied: its offsets were never committed).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let name = self.sink.name.clone();
        let mut ahead: Option<Vec<Item>> = None;
        let result = loop {
            if *shutdown.borrow() {
                break Ok(());
            }
            if self.topics_checked.elapsed() >= Duration::from_secs(5) {
                if let Err(e) = self.refresh_topics().await {
                    tracing::warn!(sink = %name, error = %e, "cannot list captured topics");
                }
            }
            let items = match ahead.take() {
                Some(items) => items,
                None => {
                    let decoder = self.decoder.as_mut().expect("the loop holds the decoder");
                    let next = intake(
                        &self.consumer,
                        &self.cfg.topic_prefix,
                        &self.sink,
                        &self.metrics,
                        decoder,
                        &mut shutdown,
                    );
                    match next.await {
                        Ok(items) => items,
                        Err(e) => break Err(e),
                    }
                }
            };
            let items = match self.admit(items).await {
                Ok(items) => items,
                Err(e) => break Err(e),
            };
            if items.is_empty() {
                continue;
            }
            // Collect and decode the next batch on another task (another core) while this one
            // is applied and its offsets committed.
            let next = {
                let consumer = self.consumer.clone();
                let (sink, metrics) = (Arc::clone(&self.sink), Arc::clone(&self.metrics));
                let prefix = self.cfg.topic_prefix.clone();
                let mut decoder = self.decoder.take().expect("the loop holds the decoder");
                let mut shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let r = intake(
                        &consumer,
                        &prefix,
                        &sink,
                        &metrics,
                        &mut decoder,
                        &mut shutdown,
                    )
                    .await;
                    (decoder, r)
                })
            };
            let started = Instant::now();
            let applied = self.target.apply_batch(items).await;
            if let Ok((items, outcome)) = &applied {
                self.metrics
                    .batch(items.len(), started.elapsed().as_secs_f64(), outcome);
                // Fault suite: die between the target's COMMIT and the offset commit.
                fail::fail_point!("sink-after-target-commit", |_| std::process::abort());
                consumer::commit_offsets(&self.consumer, items.iter().map(|it| &it.msg));
                tracing::debug!(sink = %name, events = items.len(), ms = started.elapsed().as_millis() as u64, ?outcome, "batch committed");
            }
            let (decoder, next) = match next.await {
                Ok(done) => done,
                Err(e) => {
                    break Err(Error::internal(format!(
                        "the sink's intake task failed: {e}"
                    )))
                }
            };
            self.decoder = Some(decoder);
            if let Err(e) = applied {
                break Err(e);
            }
            match next {
                Ok(items) => ahead = Some(items).filter(|i| !i.is_empty()),
                Err(e) => break Err(e),
            }
        };
        // Leave the group cleanly (the consumer's drop closes it).
        self.readiness.set(&format!("sink.{name}.kafka"), false);
        tracing::info!(sink = %name, "sink stopped");
        result
    }

    /// Reconcile fresh partitions with stored progress, and keep a bounded run in bounds.
    /// Runs while no batch is being collected.
    async fn admit(&mut self, items: Vec<Item>) -> Result<Vec<Item>> {
        self.fresh.extend(self.consumer.context().take_assigned());
        let mut items = if self.fresh.is_empty() {
            items
        } else {
            let stored = progress::progress(&self.target.lanes[0].client, &self.sink.name).await?;
            consumer::reconcile_assignment(&self.consumer, &mut self.fresh, &stored, items, |it| {
                &it.msg
            })?
        };
        if let Some(b) = &self.bounds {
            // A bounded run applies nothing at or past its end offsets.
            items.retain(|it| {
                b.end
                    .get(&(it.msg.topic().to_string(), it.msg.partition()))
                    .is_some_and(|e| it.msg.offset() < *e)
            });
        }
        Ok(items)
    }
}

/// Collect one batch and decode every record; a record that does not decode, or names a
/// table its topic is not for (or cutover's own schema), is marked for the dead-letter topic.
async fn intake(
    consumer: &StreamConsumer<SinkContext>,
    prefix: &str,
    sink: &SinkConfig,
    metrics: &SinkMetrics,
    decoder: &mut Decoder,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Vec<Item>> {
    let batch = consumer::collect(consumer, sink, metrics, shutdown).await?;
    let mut items = Vec::with_capacity(batch.len());
    for msg in batch {
        let decoded = match msg.payload() {
            None => Err(Error::new(ErrorKind::Data, "record has no value")),
            Some(v) => decoder
                .decode(msg.key(), v)
                .await
                .and_then(|ev| belongs(prefix, msg.topic(), &ev.table).map(|()| ev)),
        };
        let (event, dead) = match decoded {
            Ok(ev) => (Some(ev), None),
            Err(e) if retry::policy(e.kind()) == Decision::Park => {
                (None, Some(e.context("decoding")))
            }
            Err(e) => return Err(e),
        };
        items.push(Item { msg, event, dead });
    }
    if !items.is_empty() {
        tracing::debug!(sink = %sink.name, events = items.len(), "batch collected and decoded");
    }
    Ok(items)
}

/// The table of an event comes from its topic: an event whose payload names another table
/// (or the `cutover` schema) is data that does not belong here, never a write to that table.
fn belongs(prefix: &str, topic: &str, table: &TableId) -> Result<()> {
    if table.schema == crate::state::SCHEMA {
        return Err(Error::new(
            ErrorKind::Data,
            format!(
                "event on {topic} names {}: the {} schema is cutover's own and never written by events",
                table,
                crate::state::SCHEMA
            ),
        ));
    }
    if !topic::carries(prefix, topic, table) {
        return Err(Error::new(
            ErrorKind::Data,
            format!(
                "event on {topic} names table {}, whose topic is {}: not applied",
                table,
                topic::for_table(prefix, table)
            ),
        ));
    }
    Ok(())
}

impl Target {
    /// Apply a batch, retrying transient failures (reconnecting the target) until it commits.
    async fn apply_batch(&mut self, mut items: Vec<Item>) -> Result<(Vec<Item>, BatchOutcome)> {
        let shares = deal(&mut items, self.lanes.len());
        let mut attempts = Attempts::new(BackoffSettings {
            max: Duration::from_secs(10),
            ..Default::default()
        });
        loop {
            let e = match self.apply(&mut items, &shares).await {
                Ok(o) => return Ok((items, o)),
                Err(e) => e,
            };
            let kind = e.kind();
            let Some(delay) = attempts.next_delay(&e) else {
                self.ctx.metrics.error(kind);
                return Err(e);
            };
            self.ctx.metrics.retry(kind);
            tracing::warn!(sink = %self.sink.name, error = %e, attempt = attempts.failed, delay_ms = delay.as_millis() as u64, "batch failed, retrying");
            tokio::time::sleep(delay).await;
            self.reconnect(kind == ErrorKind::Connection).await;
        }
    }

    /// One attempt at applying the batch (`shares`: how many of the items, dealt by
    /// partition, go to each connection). Every transaction of a failed attempt is rolled back
    /// or committed whole; `items` keeps its dead-letter marks across attempts.
    async fn apply(&mut self, items: &mut [Item], shares: &[usize]) -> Result<BatchOutcome> {
        // Mappings and DDL first (outside the data transactions).
        let mut mappings: Vec<Option<Arc<Mapping>>> = Vec::with_capacity(items.len());
        for it in items.iter() {
            mappings.push(match &it.event {
                Some(ev) => {
                    let (m, ddl) = self
                        .ctx
                        .tables
                        .prepare(&self.lanes[0].client, &self.sink, ev)
                        .await?;
                    if ddl {
                        self.lanes.iter_mut().for_each(|l| l.statements.clear());
                    }
                    m
                }
                None => None,
            });
        }
        let parallel = shares.iter().filter(|&&n| n > 0).count() > 1
            && self.guard.writes().is_none()
            && !items
                .iter()
                .any(|it| it.event.as_ref().is_some_and(|e| e.op == Op::Truncate));
        if parallel {
            if let Some(outcome) = self.apply_parallel(items, &mappings, shares).await? {
                return Ok(outcome);
            }
            tracing::info!(sink = %self.sink.name, "a connection's share hit a data error: applying the batch on one connection, in source order");
        }
        let (outcome, truncated) = transact(
            &self.ctx,
            &mut self.lanes[0],
            self.guard.as_mut(),
            items,
            &mappings,
            false,
        )
        .await?
        .ok_or_else(|| Error::internal("a lenient batch transaction gave up"))?;
        self.ctx.truncates.extend(truncated);
        Ok(outcome)
    }

    /// Each connection applies its share of the partitions in its own transaction, all at
    /// once. `None`: a share hit a data error and was rolled back (the others may have
    /// committed: their events are duplicates by stored progress when the caller re-applies
    /// the batch on one connection).
    async fn apply_parallel(
        &mut self,
        items: &mut [Item],
        mappings: &[Option<Arc<Mapping>>],
        shares: &[usize],
    ) -> Result<Option<BatchOutcome>> {
        let ctx = &self.ctx;
        let (mut items, mut mappings) = (items, mappings);
        let mut attempts = Vec::with_capacity(shares.len());
        for (lane, &n) in self.lanes.iter_mut().zip(shares) {
            let (share, rest) = std::mem::take(&mut items).split_at_mut(n);
            let (maps, rest_maps) = mappings.split_at(n);
            (items, mappings) = (rest, rest_maps);
            if n > 0 {
                attempts.push(async move {
                    transact(ctx, lane, &mut Unguarded, share, maps, true).await
                });
            }
        }
        let mut outcome = BatchOutcome::default();
        let mut complete = true;
        let mut failure = None;
        for r in futures::future::join_all(attempts).await {
            match r {
                Ok(Some((o, _))) => outcome.add(&o),
                Ok(None) => complete = false,
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(complete.then_some(outcome)),
        }
    }

    /// New target connections after a failed attempt: every closed one, and the first after
    /// a connection error that closed none. Failure is logged; the retry loop comes back.
    async fn reconnect(&mut self, connection_error: bool) {
        let check = format!("sink.{}.target", self.sink.name);
        let any_closed = self.lanes.iter().any(|l| l.client.is_closed());
        for i in 0..self.lanes.len() {
            if !(self.lanes[i].client.is_closed() || (i == 0 && connection_error && !any_closed)) {
                continue;
            }
            let endpoint = Endpoint::of_sink(&self.sink, self.index);
            let connected = async {
                Lane::bind(
                    &self.cfg,
                    &self.sink,
                    self.shared_lock,
                    endpoint.connect().await?,
                )
                .await
            }
            .await;
            match connected {
                Ok(lane) => {
                    self.lanes[i] = lane;
                    self.readiness.set(&check, true);
                    tracing::info!(sink = %self.sink.name, connection = i, origin = %self.lanes[i].origin, "target reconnected");
                }
                Err(e) => {
                    self.readiness.set(&check, false);
                    tracing::warn!(sink = %self.sink.name, connection = i, error = %e, "target reconnect failed");
                }
            }
        }
    }
}

/// The sink's consumer, subscribed to nothing yet.
fn subscribe_consumer(
    cfg: &Config,
    sink: &SinkConfig,
    readiness: &Readiness,
) -> Result<StreamConsumer<SinkContext>> {
    let mut cc = kafka::consumer_config(&cfg.kafka, &sink.group_id(&cfg.name));
    if let Some(id) = &sink.instance_id {
        cc.set("group.instance.id", id);
    }
    cc.set("topic.metadata.refresh.interval.ms", "5000");
    cc.create_with_context(SinkContext::new(readiness.clone(), &sink.name))
        .map_err(|e| Error::kafka("creating sink consumer", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_belongs_only_to_its_own_topic_and_never_to_the_state_schema() {
        let orders = TableId::new("public", "orders");
        assert!(belongs("p", "p.public.orders", &orders).is_ok());
        let e = belongs("p", "p.public.customers", &orders).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Data);
        assert_eq!(retry::policy(e.kind()), Decision::Park);
        assert!(e.to_string().contains("public.orders"), "{e}");
        // The back-sync's topics carry the same tables under another prefix.
        assert!(belongs("p.back", "p.back.public.orders", &orders).is_ok());
        assert!(belongs("p.back", "p.public.orders", &orders).is_err());
        let state = TableId::new("cutover", "sink_progress");
        let e = belongs("p", "p.cutover.sink_progress", &state).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Data);
        assert!(e.to_string().contains("cutover's own"), "{e}");
    }
}
