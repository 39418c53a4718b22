//! The capture loop: replication stream → events → Kafka, and the LSN confirmation that makes
//! it lossless.
//!
//! ```text
//!  slot ─▶ Begin ─▶ Relation/Insert/Update/Delete/Truncate ─▶ Commit(end_lsn)
//!             │               │ produce (tracker.pending += 1)        │ seal tracker
//!             ▼               ▼                                        ▼
//!        TxnTracker ◀── delivery callbacks (pending -= 1) ◀── Kafka acks (acks=all, idempotent)
//!             │
//!   acker: pops trackers strictly in commit order; when the oldest is sealed and pending == 0,
//!          confirm its end_lsn ──▶ standby status update (flush LSN) ──▶ the server may recycle WAL
//! ```
//!
//! Invariant: an LSN is confirmed only after Kafka acknowledged every event of every
//! transaction up to it. A crash at any point re-sends at most the unconfirmed tail, with the
//! same `(commit_lsn, seq)`, so consumers drop the duplicates. Memory is bounded: the producer
//! queue is bounded (`queue.buffering.max.messages`), a full queue makes the loop wait
//! (backpressure reaches the walsender through TCP), and a transaction costs one tracker however
//! large it is.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::producer::{Producer, ThreadedProducer};
use tokio::sync::{mpsc, watch};

use super::ack::{self, AckContext, TxnTracker};
use super::metrics;
use super::pgoutput::{self, Datum, Message, OldKind};
use super::setup::{self, Catalog};
use crate::codec::TableSchema;
use crate::config::Config;
use crate::database::origin::OwnOrigins;
use crate::database::Endpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Lsn, Op, PG_EPOCH_OFFSET_MICROS};
use crate::kafka::{self};
use crate::registry::RegistryClient;
use crate::retry::{self, Decision};

/// Prefix of the logical messages the heartbeat writes.
pub const HEARTBEAT_PREFIX: &str = "cutover.heartbeat";

pub(super) struct TableState {
    pub(super) schema: Arc<TableSchema>,
    pub(super) topic: String,
    pub(super) partitions: i32,
    pub(super) key_id: u32,
    pub(super) value_id: u32,
    pub(super) counters: metrics::TableCounters,
    /// Set for a table without a key under `unkeyed_tables = "dead_letter"`: why its rows
    /// go to the dead-letter topic (nothing is registered or produced for it).
    pub(super) unkeyed: Option<String>,
    /// Excluded and cut columns (`source.exclude_columns`, `source.truncate_columns`);
    /// `None` when every column is carried whole.
    pub(super) projection: Option<super::projection::Projection>,
}

impl TableState {
    /// The columns of a stream tuple events carry: `(Relation index, datum, schema column)`.
    pub(super) fn carried<'t>(
        &'t self,
        tuple: &'t [Datum],
    ) -> impl Iterator<Item = (usize, &'t Datum, &'t crate::codec::ColumnSpec)> + 't {
        tuple
            .iter()
            .enumerate()
            .filter(|(i, _)| self.projection.as_ref().is_none_or(|p| p.kept(*i)))
            .zip(&self.schema.columns)
            .map(|((i, d), c)| (i, d, c))
    }
}

pub(super) struct Txn {
    pub(super) xid: u32,
    pub(super) commit_ts_us: i64,
    pub(super) final_lsn: Lsn,
    pub(super) seq: u64,
    pub(super) origin: Option<String>,
    /// Written by one of this pipeline's writers (its origin): never sent back.
    pub(super) own: bool,
    pub(super) tracker: Arc<TxnTracker>,
}

/// The capture process.
pub struct Capture {
    pub(super) cfg: Config,
    /// The origins of this pipeline's writers (exact names, see `database::origin`).
    pub(super) own_origins: OwnOrigins,
    /// Largest record (key + value) the producer sends; a larger event is dead-lettered as a
    /// metadata record (`message.max.bytes` less headroom for the record's framing).
    pub(super) max_record_bytes: usize,
    pub(super) sql: tokio_postgres::Client,
    pub(super) registry: RegistryClient,
    /// One producer per shard of topics (see [`producer_shards`]); a topic always goes
    /// through the same one, so per-partition order is each idempotent producer's.
    pub(super) producers: Vec<ThreadedProducer<AckContext>>,
    pub(super) catalog: Catalog,
    pub(super) relations: HashMap<u32, TableState>,
    /// Partition counts of the topics known to exist: every published table's topic is
    /// created (one CreateTopics) and described (one metadata client) before streaming, so
    /// a Relation message costs no Kafka round trip; a table new since then is created on its
    /// first Relation and added here.
    pub(super) topic_partitions: HashMap<String, i32>,
    pub(super) db: String,
    /// The capture dead-letter topic has been created.
    pub(super) dlq_ready: bool,
    /// Backfill chunks handed over by workers, and the open watermark windows.
    pub(super) backfill: Arc<super::backfill::Shared>,
    pub(super) windows: super::backfill::Windows,
}

/// How many producers capture shards its topics over. librdkafka runs one thread per broker
/// per producer, and that thread scans every partition it leads on each wake-up: with 1,500
/// partitions (500 tables x 3) on one producer that scan was most of capture's CPU
/// (`rd_kafka_toppar_producer_serve` 18 %, mutexes 15 %, context switches 15 %) and capture
/// ran at 6k rows/s against 80k for one table. One producer per 256 partitions, at most 8.
pub(super) fn producer_shards(partitions: i32) -> usize {
    (partitions.max(1) as usize).div_ceil(256).clamp(1, 8)
}

/// The producer shard of `topic`: fixed for the process, so one topic's events keep their
/// order (FNV-1a of the name; stable, no per-process seed).
pub(super) fn shard_of(topic: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let h = topic.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (h % shards as u64) as usize
}

/// Create the topic of every table the publication covers (one request) and read their
/// partition counts (one metadata client).
async fn published_topics(
    cfg: &Config,
    sql: &tokio_postgres::Client,
) -> Result<HashMap<String, i32>> {
    let topics: Vec<String> = setup::published_tables(sql, &cfg.source.publication)
        .await?
        .iter()
        .map(|t| kafka::topic::for_table(&cfg.topic_prefix, t))
        .collect();
    let counts = kafka::ensure_table_topics(&cfg.kafka, &topics).await?;
    tracing::info!(
        topics = counts.len(),
        "topics of the published tables ready"
    );
    Ok(counts)
}

/// The replication session's options: the connection string's `options`, then the settings
/// the codec relies on (later `-c` settings win, so a user cannot change those).
fn replication_options(user: Option<&str>) -> String {
    const CODEC: &str = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 -c extra_float_digits=3 -c bytea_output=hex";
    match user.map(str::trim).filter(|o| !o.is_empty()) {
        Some(o) => format!("{o} {CODEC}"),
        None => CODEC.to_string(),
    }
}

/// A replication connection failure as a cutover error, kind from
/// [`classify::replication`](crate::error::classify::replication).
fn replication_error(e: &pgwire_replication::PgWireError) -> Error {
    let kind = crate::error::classify::replication(e);
    let hint = match kind {
        ErrorKind::Auth => " (authentication or TLS trust: check the role, password, pg_hba.conf, sslmode and sslrootcert; not retried)",
        _ => "",
    };
    Error::new(kind, format!("source replication connection: {e}{hint}"))
}

impl Capture {
    /// Connect, check the server, ensure publication and slot. Returns the slot's LSN. A
    /// slot capture created that is gone or invalidated is refused ([`setup::GapPolicy`]).
    pub async fn prepare(cfg: &Config) -> Result<(Capture, Lsn)> {
        Self::prepare_with(cfg, &setup::GapPolicy::Refuse).await
    }

    /// [`Capture::prepare`], deciding what a lost slot means with `gap` (`--accept-gap`).
    /// Waits as a standby while another capture leads the slot ([`super::leader`]): nothing
    /// is written to the source before this instance leads.
    pub async fn prepare_with(cfg: &Config, gap: &setup::GapPolicy) -> Result<(Capture, Lsn)> {
        let ep = Endpoint::source(cfg);
        let sql = ep.connect().await?;
        setup::check_server(&sql).await?;
        // The lock is held by `sql` for the life of this Capture.
        super::leader::lead(
            &sql,
            &cfg.source.slot,
            Duration::from_millis(cfg.source.standby_poll_ms),
        )
        .await?;
        setup::ensure_publication(&sql, &cfg.source).await?;
        let start = setup::ensure_slot(&sql, &cfg.name, &cfg.source.slot, gap).await?;
        let topic_partitions = published_topics(cfg, &sql).await?;
        let db: String = sql
            .query_one("SELECT current_database()", &[])
            .await
            .map_err(|e| Error::postgres("current_database()", e))?
            .get(0);
        let shards = producer_shards(topic_partitions.values().sum());
        let mut pc = kafka::producer_config(&cfg.kafka);
        // The producer queues bound capture's memory (events produced, not yet acknowledged),
        // split between the shards. 20k events is ~0.1 s of capture at full speed, far more
        // than the broker's ack latency needs; 100k let RSS grow with transaction size (1M
        // rows 51.7 MiB, 10M rows 68.1 MiB). `kafka.properties` may override either (per shard).
        kafka::set_default(
            &mut pc,
            "queue.buffering.max.messages",
            &(20_000 / shards).to_string(),
        );
        kafka::set_default(
            &mut pc,
            "queue.buffering.max.kbytes",
            &(16_384 / shards).to_string(),
        );
        let producers = (0..shards)
            .map(|_| {
                pc.create_with_context(AckContext)
                    .map_err(|e| Error::kafka("creating producer", e))
            })
            .collect::<Result<Vec<ThreadedProducer<AckContext>>>>()?;
        // Series that must exist before the first event, so rate() and alerts see them.
        metrics::init();
        Ok((
            Capture {
                cfg: cfg.clone(),
                sql,
                registry: RegistryClient::new(&cfg.registry)?,
                producers,
                catalog: Catalog::default(),
                relations: HashMap::new(),
                topic_partitions,
                db,
                dlq_ready: false,
                backfill: Arc::new(super::backfill::Shared::default()),
                windows: super::backfill::Windows::new(
                    cfg.source.backfill_window_max_keys,
                    Duration::from_secs(cfg.source.backfill_window_max_secs),
                ),
                own_origins: OwnOrigins::new(&cfg.name, cfg.writers()),
                max_record_bytes: cfg
                    .kafka
                    .properties
                    .get("message.max.bytes")
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(1_000_000)
                    .saturating_sub(512),
            },
            start,
        ))
    }

    fn replication_config(&self, start: Lsn) -> Result<pgwire_replication::ReplicationConfig> {
        let (pg, tls) = Endpoint::source(&self.cfg).pg_config()?;
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => return Err(Error::config("source.url: no host")),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let tls = tls.replication(&host);
        Ok(pgwire_replication::ReplicationConfig::new(
            host,
            pg.get_user().unwrap_or("postgres"),
            password,
            pg.get_dbname().unwrap_or("postgres"),
            self.cfg.source.slot.clone(),
            self.cfg.source.publication.clone(),
        )
        .with_port(port)
        .with_tls(tls)
        .with_start_lsn(pgwire_replication::Lsn::from_u64(start.0))
        .with_status_interval(Duration::from_secs(self.cfg.source.status_interval_secs))
        .with_application_name("cutover-capture")
        // Deterministic text output for the codec, after the connection string's own
        // `options` (e.g. `-c wal_sender_timeout=30s`), so these always win.
        .with_options(replication_options(pg.get_options())))
    }

    /// Stream until `shutdown` resolves or a fatal error occurs.
    pub async fn run(self, start: Lsn, shutdown: watch::Receiver<bool>) -> Result<()> {
        self.run_reporting(start, shutdown, || {}).await
    }

    /// [`Capture::run`], calling `streaming` once the server accepted the stream (what
    /// readiness means for capture).
    pub async fn run_reporting(
        mut self,
        start: Lsn,
        mut shutdown: watch::Receiver<bool>,
        streaming: impl FnOnce(),
    ) -> Result<()> {
        let mut repl =
            pgwire_replication::ReplicationClient::connect(self.replication_config(start)?)
                .await
                .map_err(|e| replication_error(&e))?;
        // Connecting, TLS, authentication and START_REPLICATION run in the client's worker:
        // wait for the server to accept the stream so a refusal (trust, password, a slot
        // held elsewhere) surfaces here, classified, before anything claims to be streaming.
        repl.wait_started()
            .await
            .map_err(|e| replication_error(&e))?;
        tracing::info!(slot = %self.cfg.source.slot, start = %start, "capture streaming");
        streaming();

        // Acker: confirms end LSNs strictly in commit order, only when fully acknowledged.
        let (track_tx, track_rx) = mpsc::channel::<Arc<TxnTracker>>(10_000);
        let (confirm_tx, mut confirm_rx) = watch::channel::<(Lsn, Option<String>)>((start, None));
        let acker = ack::spawn_acker(track_rx, confirm_tx);

        // The confirmed position, recorded in cutover.capture_slots by the heartbeat.
        let confirmed = Arc::new(std::sync::atomic::AtomicU64::new(start.0));
        let heartbeat = spawn_heartbeat(&self.cfg, Arc::clone(&confirmed));
        let backfill = tokio::spawn(super::backfill::coordinate(
            self.cfg.clone(),
            self.backfill.clone(),
        ));
        let mut txn: Option<Txn> = None;
        let result: Result<()> = loop {
            tokio::select! {
                changed = confirm_rx.changed() => {
                    if changed.is_err() { continue; }
                    let (lsn, failed) = confirm_rx.borrow_and_update().clone();
                    if let Some(e) = failed {
                        break Err(Error::new(ErrorKind::Unavailable, format!("Kafka refused an event; not confirming past {lsn}: {e}")));
                    }
                    repl.update_applied_lsn(pgwire_replication::Lsn::from_u64(lsn.0));
                    confirmed.fetch_max(lsn.0, Ordering::Relaxed);
                }
                _ = shutdown.changed() => {
                    tracing::info!("capture stopping");
                    break Ok(());
                }
                ev = repl.recv() => {
                    let ev = match ev {
                        Ok(Some(ev)) => ev,
                        Ok(None) => break Err(Error::new(ErrorKind::Connection, "replication stream ended")),
                        Err(e) => break Err(replication_error(&e)),
                    };
                    if let Err(e) = self.handle(ev, &mut txn, &track_tx).await {
                        break Err(e);
                    }
                }
            }
        };
        heartbeat.abort();
        backfill.abort();
        // Let in-flight deliveries finish so the final confirmation covers them.
        tokio::task::block_in_place(|| {
            for p in &self.producers {
                let _ = p.flush(Duration::from_secs(30));
            }
        });
        drop(track_tx);
        let _ = tokio::time::timeout(Duration::from_secs(30), acker).await;
        let (lsn, failed) = confirm_rx.borrow().clone();
        if failed.is_none() {
            repl.update_applied_lsn(pgwire_replication::Lsn::from_u64(lsn.0));
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), repl.shutdown()).await;
        match &result {
            Ok(()) => tracing::info!(confirmed = %lsn, "capture stopped"),
            Err(e) => tracing::error!(confirmed = %lsn, error = %e, "capture failed"),
        }
        result
    }

    async fn handle(
        &mut self,
        ev: pgwire_replication::ReplicationEvent,
        txn: &mut Option<Txn>,
        track_tx: &mpsc::Sender<Arc<TxnTracker>>,
    ) -> Result<()> {
        use pgwire_replication::ReplicationEvent as E;
        match ev {
            E::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                let commit_ts_us = commit_time_micros + PG_EPOCH_OFFSET_MICROS;
                *txn = Some(Txn {
                    xid,
                    commit_ts_us,
                    final_lsn: Lsn(final_lsn.as_u64()),
                    seq: 0,
                    origin: None,
                    own: false,
                    tracker: TxnTracker::new(commit_ts_us),
                });
            }
            E::Commit { end_lsn, .. } => {
                let t = txn
                    .take()
                    .ok_or_else(|| Error::internal("Commit without Begin"))?;
                t.tracker.end_lsn.store(end_lsn.as_u64(), Ordering::Release);
                t.tracker
                    .commit_ts_us
                    .store(t.commit_ts_us as u64, Ordering::Release);
                metrics::transaction();
                t.tracker.release();
                track_tx
                    .send(t.tracker)
                    .await
                    .map_err(|_| Error::internal("acker stopped"))?;
            }
            E::XLogData {
                data, wal_start, ..
            } => {
                self.handle_message(&data, wal_start.as_u64(), txn).await?;
            }
            E::Message {
                prefix,
                content,
                lsn,
                ..
            } if prefix == super::backfill::WATERMARK_PREFIX => {
                self.on_watermark(&content, txn, lsn.as_u64()).await?;
            }
            E::Message { .. } | E::KeepAlive { .. } | E::StoppedAt { .. } => {}
        }
        let queued: i32 = self
            .producers
            .iter()
            .map(|p| p.in_flight_count().max(0))
            .sum();
        metrics::producer_queue(queued as usize);
        Ok(())
    }

    async fn handle_message(
        &mut self,
        data: &Bytes,
        wal_start: u64,
        txn: &mut Option<Txn>,
    ) -> Result<()> {
        let msg = pgoutput::decode(data)
            .map_err(|e| e.context(format!("WAL position {}", Lsn(wal_start))))?;
        match msg {
            Message::Insert { rel_id, .. }
            | Message::Update { rel_id, .. }
            | Message::Delete { rel_id, .. } => {
                let t = txn
                    .as_mut()
                    .ok_or_else(|| Error::internal("row change outside a transaction"))?;
                // Written by cutover itself (a sink's replication origin): never sent back.
                if t.own {
                    let table = self
                        .relations
                        .get(&rel_id)
                        .map(|st| st.schema.table.to_string())
                        .unwrap_or_default();
                    metrics::echo_suppressed(table);
                    return Ok(());
                }
                if !self.windows.is_empty() {
                    self.note_window_keys(&msg, rel_id);
                }
                // A table without a key (unkeyed_tables = dead_letter): parked, never encoded.
                let row = match self
                    .relations
                    .get(&rel_id)
                    .and_then(|st| st.unkeyed.as_ref())
                {
                    Some(why) => Err(Error::new(ErrorKind::Data, why.clone())),
                    None => self.on_row(&msg, t, wal_start).await,
                };
                match row {
                    Err(e) if retry::policy(e.kind()) == Decision::Park => {
                        self.dead_letter(rel_id, &msg, t, wal_start, &e).await?
                    }
                    other => other?,
                }
            }
            other => self.on_other(other, txn, wal_start).await?,
        }
        Ok(())
    }

    async fn on_other(
        &mut self,
        msg: Message,
        txn: &mut Option<Txn>,
        wal_start: u64,
    ) -> Result<()> {
        match msg {
            Message::Relation(rel) => self.on_relation(rel).await?,
            Message::Origin { name, .. } => {
                if let Some(t) = txn.as_mut() {
                    t.own = self.own_origins.contains(&name);
                    t.origin = Some(name);
                }
            }
            Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. } => {}
            Message::Truncate { rel_ids, .. } => {
                let t = txn
                    .as_mut()
                    .ok_or_else(|| Error::internal("Truncate outside a transaction"))?;
                for rel_id in rel_ids {
                    if let Some(st) = self
                        .relations
                        .get(&rel_id)
                        .filter(|st| st.unkeyed.is_some())
                    {
                        tracing::warn!(table = %st.schema.table, "truncate of a table without a key not captured");
                        continue;
                    }
                    if t.own {
                        if let Some(st) = self.relations.get(&rel_id) {
                            metrics::echo_suppressed(st.schema.table.to_string());
                        }
                        continue;
                    }
                    if self.relations.contains_key(&rel_id) {
                        self.emit(rel_id, t, Op::Truncate, None, None, wal_start)
                            .await?;
                    }
                }
            }
            Message::Begin { .. }
            | Message::Commit { .. }
            | Message::Type { .. }
            | Message::Message { .. } => {}
        }
        Ok(())
    }

    /// Insert, update or delete → event(s). An error of kind `Data` means the row cannot be
    /// represented (e.g. NaN in `numeric(p,s)`); the caller dead-letters it.
    async fn on_row(&mut self, msg: &Message, t: &mut Txn, wal_start: u64) -> Result<()> {
        match msg {
            Message::Insert { rel_id, new } => {
                let (rel_id, after) = (*rel_id, self.cells(*rel_id, new)?);
                self.emit(rel_id, t, Op::Create, None, Some(after), wal_start)
                    .await?;
            }
            Message::Update { rel_id, old, new } => {
                let rel_id = *rel_id;
                let after = self.cells(rel_id, new)?;
                let before = match &old {
                    Some((_, tuple)) => Some(self.cells(rel_id, tuple)?),
                    None => None,
                };
                let key_changed = match (old, &before) {
                    (Some((OldKind::Key, _)) | Some((OldKind::Full, _)), Some(b)) => {
                        let st = self.state(rel_id)?;
                        st.schema.encode_key(b).ok() != st.schema.encode_key(&after).ok()
                    }
                    _ => false,
                };
                if key_changed {
                    // A key change moves the row to another partition: delete the old key in
                    // its partition, create the new key in its own — per-row order holds.
                    self.emit(rel_id, t, Op::Delete, before, None, wal_start)
                        .await?;
                    self.emit(rel_id, t, Op::Create, None, Some(after), wal_start)
                        .await?;
                } else {
                    let before = if matches!(old, Some((OldKind::Full, _))) {
                        before
                    } else {
                        None
                    };
                    self.emit(rel_id, t, Op::Update, before, Some(after), wal_start)
                        .await?;
                }
            }
            Message::Delete { rel_id, old } => {
                let before = self.cells(*rel_id, &old.1)?;
                self.emit(*rel_id, t, Op::Delete, Some(before), None, wal_start)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A row change while backfill windows are open: remember its key(s) for them.
    fn note_window_keys(&mut self, msg: &Message, rel_id: u32) {
        let tuples: Vec<&[Datum]> = match msg {
            Message::Insert { new, .. } => vec![new.as_slice()],
            Message::Update { old, new, .. } => {
                let mut v = vec![new.as_slice()];
                if let Some((_, o)) = old {
                    v.push(o.as_slice());
                }
                v
            }
            Message::Delete { old, .. } => vec![old.1.as_slice()],
            _ => vec![],
        };
        let Ok(st) = self.state(rel_id) else { return };
        let table = st.schema.table.clone();
        let keys: Vec<Vec<u8>> = tuples
            .into_iter()
            .filter_map(|tu| self.cells_of(rel_id, tu, false).ok())
            .filter_map(|cells| st.schema.encode_key(&cells).ok())
            .collect();
        for k in keys {
            let spent = self.windows.saw(&table, k);
            for _ in 0..spent.overflowed {
                metrics::watermark_ignored("overflow");
            }
            for _ in 0..spent.expired {
                metrics::watermark_ignored("expired");
            }
        }
    }

    /// A backfill watermark in the stream. Low opens the chunk's window; high emits the chunk's
    /// rows that did not change inside the window, as `op=r`, in high's transaction.
    async fn on_watermark(
        &mut self,
        content: &[u8],
        txn: &mut Option<Txn>,
        lsn: u64,
    ) -> Result<()> {
        let Some(w) = super::backfill::Watermark::parse(content) else {
            tracing::warn!("ignoring a malformed backfill watermark");
            return Ok(());
        };
        if !w.high {
            let table = crate::apply::mapping::table_id(&w.table);
            if !self.windows.open(w.id, table, &self.backfill) {
                // Forged (pg_logical_emit_message is granted to PUBLIC), another pipeline's,
                // or from before a restart: it opens nothing, so memory cannot grow with it.
                metrics::watermark_ignored("foreign");
                tracing::debug!(id = w.id, table = %w.table, "ignoring a watermark of a chunk this capture did not start");
            }
            return Ok(());
        }
        let seen = self.windows.close(w.id);
        let chunk = self.backfill.take(w.id);
        let (Some(seen), Some(chunk), Some(t)) = (seen, chunk, txn.as_mut()) else {
            // A watermark of a chunk from before a restart, or one whose low was not seen:
            // dropping the chunk tells its worker to read it again.
            return Ok(());
        };
        let rel_id = self.relation_for(&chunk.table).await?;
        let mut sent = 0usize;
        for tuple in &chunk.rows {
            // A row the codec cannot represent is dead-lettered like a live one: the chunk
            // (and every other table) goes on, and a restart does not meet it again.
            let encoded = self.cells(rel_id, tuple).and_then(|cells| {
                let key = self.state(rel_id)?.schema.encode_key(&cells)?;
                Ok((cells, key))
            });
            let (cells, key) = match encoded {
                Ok(ck) => ck,
                Err(e) if retry::policy(e.kind()) == Decision::Park => {
                    let e = e.context(format!("backfill chunk {}", w.id));
                    self.dead_letter_row(rel_id, Op::Read, None, Some(tuple), t, lsn, &e)
                        .await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if seen.contains(&key) {
                continue;
            }
            self.emit(rel_id, t, Op::Read, None, Some(cells), lsn)
                .await?;
            sent += 1;
        }
        tracing::debug!(table = %chunk.table, rows = chunk.rows.len(), sent, superseded = chunk.rows.len() - sent, "backfill chunk emitted");
        t.tracker
            .confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(chunk.done);
        Ok(())
    }
}

/// Periodically write a transactional logical message on the source, so the slot advances
/// even when captured tables are idle. (Slot retention is the monitor's to report.)
fn spawn_heartbeat(
    cfg: &Config,
    confirmed: Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let cfg = cfg.clone();
    tokio::spawn(async move {
        let every = Duration::from_secs(cfg.source.heartbeat_interval_secs);
        let mut client = None;
        let mut recorded = 0u64;
        loop {
            tokio::time::sleep(every).await;
            if client.is_none() {
                client = Endpoint::source(&cfg).connect().await.ok();
            }
            let Some(c) = client.as_ref() else { continue };
            let hb = c
                .execute(
                    "SELECT pg_logical_emit_message(true, $1, now()::text)",
                    &[&HEARTBEAT_PREFIX],
                )
                .await;
            if let Err(e) = hb {
                tracing::warn!(error = %e, "heartbeat failed");
                client = None;
                continue;
            }
            // What the slot is confirmed up to, so a slot lost later is reported with it.
            let lsn = confirmed.load(Ordering::Relaxed);
            if lsn > recorded {
                match crate::state::slots::advance(c, &cfg.name, &cfg.source.slot, lsn).await {
                    Ok(()) => recorded = lsn,
                    Err(e) => tracing::warn!(error = %e, "recording the confirmed position failed"),
                }
            }
        }
    })
}

#[cfg(test)]
mod shard_tests {
    use super::{producer_shards, shard_of};

    #[test]
    fn one_producer_up_to_256_partitions_then_one_per_256_at_most_8() {
        assert_eq!(producer_shards(0), 1);
        assert_eq!(producer_shards(3), 1);
        assert_eq!(producer_shards(256), 1);
        assert_eq!(producer_shards(257), 2);
        assert_eq!(producer_shards(1500), 6);
        assert_eq!(producer_shards(100_000), 8);
    }

    #[test]
    fn a_topic_always_maps_to_the_same_shard_and_shards_share_the_topics() {
        let topics: Vec<String> = (0..500).map(|i| format!("app.benchm.t{i}")).collect();
        let mut per = [0usize; 6];
        for t in &topics {
            let s = shard_of(t, 6);
            assert_eq!(s, shard_of(t, 6), "stable");
            per[s] += 1;
        }
        // FNV-1a spreads 500 similar names evenly enough: no shard idle or holding half
        assert!(per.iter().all(|&n| (40..=130).contains(&n)), "{per:?}");
        assert_eq!(shard_of("anything", 1), 0);
        // fixed across processes: no per-process seed
        assert_eq!(
            shard_of("app.public.orders", 4),
            shard_of("app.public.orders", 4)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::replication_options;

    #[test]
    fn connection_string_options_reach_the_replication_session_before_the_codec_settings() {
        let o = replication_options(Some("-c wal_sender_timeout=20s"));
        assert!(
            o.starts_with("-c wal_sender_timeout=20s -c TimeZone=UTC"),
            "{o}"
        );
        // A user's DateStyle comes first, so the codec's wins.
        let o = replication_options(Some("-c DateStyle=German"));
        assert!(o.find("DateStyle=German") < o.find("DateStyle=ISO"), "{o}");
        assert_eq!(replication_options(Some("  ")), replication_options(None));
    }
}
