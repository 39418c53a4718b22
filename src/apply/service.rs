//! The sink loop: consume a batch, apply it in one target transaction together with its
//! progress, then commit the Kafka offsets.
//!
//! ```text
//!  Kafka ─▶ batch (≤ rows, bytes, ms) ─▶ decode ─▶ tables.prepare (DDL, outside the tx)
//!                                                  BEGIN
//!                                                  lock progress rows (FOR UPDATE)
//!                                                  guard.begin (phases)
//!                                                  plan: drop events at/below stored (offset | commit_lsn,seq),
//!                                                        map → admit → fold per target key
//!                                                  steps: settle + DELETE / UPSERT (set-based) | TRUNCATE
//!                                                  guard.finish, UPDATE progress
//!                                                  poison events ─▶ <prefix>.dlq.<sink>  (acked before COMMIT)
//!                                                 COMMIT ─▶ commit Kafka offsets (for lag tooling only)
//! ```
//!
//! Invariants: progress and data commit atomically, so a crash anywhere re-reads at most the
//! batch in flight and skips what is already applied (effectively-once). Kafka offsets are only
//! ever committed after the batch is durable and are never trusted over stored progress: on a
//! fresh assignment the sink seeks back to the stored position if Kafka's is ahead. Per-key
//! order holds because a key lives in one partition and the batch is applied in
//! `(commit_lsn, seq)` order. What to write is decided by the pure [`super::plan`]; how it is
//! written by [`super::write`]; whether a back-sync role lets it through by the
//! [`WriteGuard`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::watch;

use super::consumer::{self, SinkContext};
use super::decode::{ChangeEvent, Decoder};
use super::guard::WriteGuard;
use super::mapping::Mapping;
use super::metrics::{BatchOutcome, SinkMetrics};
use super::plan::{self, Record, Step};
use super::schema::Tables;
use super::target::Statements;
use super::write::{self, Writer};
use crate::config::{Config, SinkConfig};
use crate::database::{origin, Endpoint};
use crate::deadletter::{Letter, Parking};
use crate::error::{Error, ErrorKind, Result};
use crate::kafka::{self, topic};
use crate::observe::Readiness;
use crate::registry::RegistryClient;
use crate::retry::{self, Attempts, BackoffSettings, Decision};
use crate::state::progress;

/// What executing a plan left to do: records to park (index, why) and the truncate
/// watermarks to remember once the batch commits.
type Executed = (Vec<(usize, Error)>, Vec<(String, (i64, i64))>);

/// One consumed record and what became of it.
struct Item {
    msg: OwnedMessage,
    event: Option<ChangeEvent>,
    /// Why it goes to the dead-letter topic.
    dead: Option<Error>,
}

/// Limits of a bounded run (a replay).
#[derive(Debug, Clone, Default)]
pub struct Bounds {
    pub topics: Vec<String>,
    /// (topic, partition) → first offset not to apply.
    pub end: HashMap<(String, i32), i64>,
}

pub struct Sink {
    cfg: Config,
    sink: SinkConfig,
    /// Where `sink` is in `sinks[]` (field paths).
    index: usize,
    consumer: StreamConsumer<SinkContext>,
    parking: Parking,
    decoder: Decoder,
    client: Arc<tokio_postgres::Client>,
    statements: Statements,
    tables: Tables,
    /// Source table → `(commit_lsn, seq)` of the last truncate applied (as committed).
    truncates: HashMap<String, (i64, i64)>,
    /// Partitions assigned but not yet reconciled with stored progress.
    fresh: HashSet<(String, i32)>,
    readiness: Readiness,
    registry: RegistryClient,
    topics: Vec<String>,
    topics_checked: Instant,
    /// The replication origin this sink's session writes under (never captured back).
    origin: String,
    /// What its part in a back-sync lets through (`Unguarded` for a plain sink).
    guard: Box<dyn WriteGuard>,
    metrics: SinkMetrics,
    /// Set when a replay runs this sink: only these topics, nothing at or past the end offsets.
    bounds: Option<Bounds>,
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
        if bounds.is_none() {
            super::replay::hold_shared(&client, name, &sink.group_id(&cfg.name)).await?;
        }
        let origin = origin::bind(&client, &cfg.name, name, sink.instance_id.as_deref()).await?;
        guard.start(&client).await?;
        readiness.set(&format!("sink.{name}.target"), true);
        let tables = Tables::load(&client, &sink, index).await?;
        let truncates = progress::truncates(&client, name).await?;
        let parking = Parking::open(&cfg.kafka, topic::sink_dlq(&cfg.topic_prefix, name)).await?;
        let consumer = subscribe_consumer(cfg, &sink, &readiness)?;
        readiness.set(&format!("sink.{name}.kafka"), true);
        let metrics = SinkMetrics::new(name, guard.policy());
        tracing::info!(sink = name, group = sink.group_id(&cfg.name), origin, role = ?guard.writes(), "sink started");
        let mut sink = Sink {
            cfg: cfg.clone(),
            sink,
            index,
            consumer,
            parking,
            decoder: Decoder::new(RegistryClient::new(&cfg.registry)?),
            client: Arc::new(client),
            statements: Statements::default(),
            tables,
            truncates,
            fresh: HashSet::new(),
            readiness,
            registry: RegistryClient::new(&cfg.registry)?,
            topics: vec![],
            topics_checked: Instant::now(),
            origin,
            guard,
            metrics,
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
            let batch =
                match consumer::collect(&self.consumer, &self.sink, &self.metrics, &mut shutdown)
                    .await
                {
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

    /// Decode, apply (retrying transient failures, reconnecting the target), account, and
    /// commit offsets.
    async fn process(&mut self, batch: Vec<OwnedMessage>) -> Result<()> {
        tracing::debug!(sink = %self.sink.name, messages = batch.len(), "batch collected");
        let batch = self.admit_batch(batch).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut items = self.decode(batch).await?;
        let started = Instant::now();
        let mut attempts = Attempts::new(BackoffSettings {
            max: Duration::from_secs(10),
            ..Default::default()
        });
        let outcome = loop {
            let e = match self.apply(&mut items).await {
                Ok(o) => break o,
                Err(e) => e,
            };
            let kind = e.kind();
            let Some(delay) = attempts.next_delay(&e) else {
                self.metrics.error(kind);
                return Err(e);
            };
            self.metrics.retry(kind);
            tracing::warn!(sink = %self.sink.name, error = %e, attempt = attempts.failed, delay_ms = delay.as_millis() as u64, "batch failed, retrying");
            tokio::time::sleep(delay).await;
            if kind == ErrorKind::Connection || self.client.is_closed() {
                self.reconnect().await;
            }
        };
        self.metrics
            .batch(items.len(), started.elapsed().as_secs_f64(), &outcome);
        consumer::commit_offsets(&self.consumer, items.iter().map(|it| &it.msg));
        tracing::debug!(sink = %self.sink.name, events = items.len(), ms = started.elapsed().as_millis() as u64, ?outcome, "batch committed");
        Ok(())
    }

    /// Reconcile fresh partitions with stored progress, and keep a bounded run in bounds.
    async fn admit_batch(&mut self, batch: Vec<OwnedMessage>) -> Result<Vec<OwnedMessage>> {
        self.fresh.extend(self.consumer.context().take_assigned());
        let mut batch = if self.fresh.is_empty() {
            batch
        } else {
            let stored = progress::progress(&self.client, &self.sink.name).await?;
            consumer::reconcile_assignment(&self.consumer, &mut self.fresh, &stored, batch)?
        };
        if let Some(b) = &self.bounds {
            // A bounded run applies nothing at or past its end offsets.
            batch.retain(|m| {
                b.end
                    .get(&(m.topic().to_string(), m.partition()))
                    .is_some_and(|e| m.offset() < *e)
            });
        }
        Ok(batch)
    }

    /// Decode every record; a record that does not decode is marked for the dead-letter topic.
    async fn decode(&mut self, batch: Vec<OwnedMessage>) -> Result<Vec<Item>> {
        let mut items = Vec::with_capacity(batch.len());
        for msg in batch {
            let decoded = match msg.payload() {
                None => Err(Error::new(ErrorKind::Data, "record has no value")),
                Some(v) => self.decoder.decode(msg.key(), v).await,
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
        tracing::debug!(sink = %self.sink.name, events = items.len(), "batch decoded");
        Ok(items)
    }

    /// One attempt at applying the batch, in one target transaction (rolled back on error).
    /// `items` keeps its dead-letter marks across attempts.
    async fn apply(&mut self, items: &mut [Item]) -> Result<BatchOutcome> {
        // Mappings and DDL first (outside the data transaction).
        let mut mappings: Vec<Option<Arc<Mapping>>> = Vec::with_capacity(items.len());
        for it in items.iter() {
            mappings.push(match &it.event {
                Some(ev) => {
                    let (m, ddl) = self.tables.prepare(&self.client, &self.sink, ev).await?;
                    if ddl {
                        self.statements.clear();
                    }
                    m
                }
                None => None,
            });
        }
        let db = self.client.clone();
        let result = self.apply_in_tx(&db, items, &mappings).await;
        if result.is_err() {
            let _ = db.batch_execute("ROLLBACK").await;
        }
        result
    }

    async fn apply_in_tx(
        &mut self,
        tx: &tokio_postgres::Client,
        items: &mut [Item],
        mappings: &[Option<Arc<Mapping>>],
    ) -> Result<BatchOutcome> {
        let sink = self.sink.name.clone();
        tx.batch_execute("BEGIN")
            .await
            .map_err(|e| Error::postgres("BEGIN", e))?;
        let stored = progress::lock_progress(tx, &sink, &partitions(items)).await?;
        // A back-sync role re-reads the phases at every batch: a phase change takes effect at
        // the next batch boundary.
        self.guard.begin(tx).await?;
        let plan = self.plan(items, mappings, &stored)?;
        let mut outcome = BatchOutcome {
            duplicates: plan.duplicates,
            skipped: plan.skipped,
            phase_skipped: plan.phase_skipped,
            ..Default::default()
        };
        let mut parked = plan.parked;
        tag_transaction(tx, items, &plan.live).await?;
        let (failed, truncated) = self
            .execute(tx, plan.steps, items, mappings, &mut outcome)
            .await?;
        parked.extend(failed);
        for (i, e) in parked {
            items[i].dead = Some(e);
        }
        // Progress for every partition of the batch, then dead letters, then COMMIT.
        progress::save_progress(tx, &sink, &plan.progress).await?;
        outcome.dead_lettered = self.park(items, &plan.live).await?;
        tx.batch_execute("COMMIT")
            .await
            .map_err(|e| Error::postgres("COMMIT", e))?;
        self.truncates.extend(truncated);
        self.observe_applied(items, &plan.live);
        Ok(outcome)
    }

    /// Plan the batch (pure, see `plan`) against the locked progress.
    fn plan(
        &self,
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
        let tables = &self.tables;
        let guard = &self.guard;
        plan::plan(
            &records,
            &plan::Context {
                stored,
                truncated: &self.truncates,
                truncate: self.sink.truncate,
                key_of: &|t| tables.key_cols(t),
                admit: &|s, m| guard.admit(s, m),
            },
        )
    }

    /// Run the plan's steps in the transaction, then let the guard finish. Returns the records
    /// whose writes failed with a data error, and the truncate watermarks written.
    async fn execute(
        &mut self,
        tx: &tokio_postgres::Client,
        steps: Vec<Step>,
        items: &[Item],
        mappings: &[Option<Arc<Mapping>>],
        outcome: &mut BatchOutcome,
    ) -> Result<Executed> {
        let sink = self.sink.name.clone();
        let events: Vec<Option<&ChangeEvent>> = items.iter().map(|it| it.event.as_ref()).collect();
        let mut writer = Writer {
            tx,
            sink: &sink,
            tables: &self.tables,
            statements: &mut self.statements,
            guard: self.guard.as_mut(),
            events: &events,
            mappings,
        };
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
                        write::truncate(tx, &targets).await?;
                        outcome.applied += 1;
                    } else {
                        outcome.skipped += 1;
                    }
                    progress::save_truncate(tx, &sink, &source, at).await?;
                    truncated.push((source, at));
                }
            }
        }
        writer.guard.finish(tx).await?;
        Ok((parked, truncated))
    }

    /// Send the batch's dead letters and wait for the broker's acks. Returns how many.
    async fn park(&self, items: &[Item], live: &[usize]) -> Result<usize> {
        let mut deliveries = vec![];
        for &i in live {
            let Some(err) = &items[i].dead else { continue };
            let msg = &items[i].msg;
            tracing::warn!(sink = %self.sink.name, topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), error = %err, "event sent to the dead-letter topic");
            let letter = Letter {
                error: err,
                origin: vec![
                    ("cutover.sink", self.sink.name.clone()),
                    ("cutover.topic", msg.topic().to_string()),
                    ("cutover.partition", msg.partition().to_string()),
                    ("cutover.offset", msg.offset().to_string()),
                ],
            };
            deliveries.push(self.parking.park(
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

    /// A new target connection after a connection error: shared lock, origin, fresh
    /// statements. Failure is logged; the retry loop comes back here.
    async fn reconnect(&mut self) {
        let endpoint = Endpoint::of_sink(&self.sink, self.index);
        let connected = async {
            let c = endpoint.connect().await?;
            if self.bounds.is_none() {
                let group = self.sink.group_id(&self.cfg.name);
                super::replay::hold_shared(&c, &self.sink.name, &group).await?;
            }
            let o = origin::bind(
                &c,
                &self.cfg.name,
                &self.sink.name,
                self.sink.instance_id.as_deref(),
            )
            .await?;
            Ok::<_, Error>((c, o))
        }
        .await;
        let check = format!("sink.{}.target", self.sink.name);
        match connected {
            Ok((c, o)) => {
                self.origin = o;
                self.client = Arc::new(c);
                self.statements.clear();
                self.readiness.set(&check, true);
                tracing::info!(sink = %self.sink.name, "target reconnected");
            }
            Err(e) => {
                self.readiness.set(&check, false);
                tracing::warn!(sink = %self.sink.name, error = %e, "target reconnect failed");
            }
        }
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
            let latency = (now_us - ev.commit_ts_us).max(0) as f64 / 1e6;
            self.metrics.applied(&ev.table, ev.op, latency);
            last_commit = Some(last_commit.unwrap_or(0).max(ev.commit_ts_us));
        }
        if let Some(ts) = last_commit {
            self.metrics.last_applied_commit(ts as f64 / 1e6);
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
