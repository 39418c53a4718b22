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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::{mpsc, watch, Notify};

use super::pgoutput::{self, Datum, Message, OldKind, Relation};
use super::setup::{self, Catalog};
use crate::codec::{self, Cell, ColumnSpec, SourceInfo, TableSchema};
use crate::config::Config;
use crate::database::Endpoint;
use crate::deadletter;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Lsn, Op, TableId, PG_EPOCH_OFFSET_MICROS};
use crate::kafka::{self, TopicSpec};
use crate::observe::names;
use crate::registry::RegistryClient;
use crate::retry::{self, Decision};

/// Prefix of the logical messages the heartbeat writes.
pub const HEARTBEAT_PREFIX: &str = "cutover.heartbeat";

/// Per-transaction delivery accounting.
pub struct TxnTracker {
    /// Messages produced and not yet acknowledged, plus 1 until the transaction is sealed.
    pending: AtomicUsize,
    end_lsn: AtomicU64,
    commit_ts_us: AtomicU64,
    failed: Mutex<Option<String>>,
    done: Notify,
    /// Fired once the transaction is confirmed (backfill waits on its chunks this way).
    confirmed: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
}

impl TxnTracker {
    /// A tracker for a transaction committed at `commit_ts_us` (Unix microseconds).
    fn new(commit_ts_us: i64) -> Arc<Self> {
        Arc::new(TxnTracker {
            pending: AtomicUsize::new(1),
            end_lsn: AtomicU64::new(0),
            commit_ts_us: AtomicU64::new(commit_ts_us.max(0) as u64),
            failed: Mutex::new(None),
            done: Notify::new(),
            confirmed: Mutex::new(Vec::new()),
        })
    }
    fn release(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }
}

/// librdkafka context: delivery reports settle trackers.
pub struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<TxnTracker>;
    fn delivery(&self, result: &DeliveryResult<'_>, tracker: Arc<TxnTracker>) {
        if let Err((e, _)) = result {
            metrics::counter!(names::CAPTURE_PRODUCER_ERRORS_TOTAL).increment(1);
            let mut f = tracker.failed.lock().unwrap_or_else(|p| p.into_inner());
            f.get_or_insert_with(|| e.to_string());
        }
        tracker.release();
    }
}

struct TableState {
    schema: Arc<TableSchema>,
    topic: String,
    partitions: i32,
    key_id: u32,
    value_id: u32,
}

struct Txn {
    xid: u32,
    commit_ts_us: i64,
    final_lsn: Lsn,
    seq: u64,
    origin: Option<String>,
    tracker: Arc<TxnTracker>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The capture process.
pub struct Capture {
    cfg: Config,
    sql: tokio_postgres::Client,
    registry: RegistryClient,
    producer: ThreadedProducer<AckContext>,
    catalog: Catalog,
    relations: HashMap<u32, TableState>,
    db: String,
    /// The capture dead-letter topic has been created.
    dlq_ready: bool,
    /// Backfill chunks handed over by workers, and the open watermark windows.
    backfill: Arc<super::backfill::Shared>,
    windows: super::backfill::Windows,
}

impl Capture {
    /// Connect, check the server, ensure publication and slot. Returns the slot's LSN.
    pub async fn prepare(cfg: &Config) -> Result<(Capture, Lsn)> {
        let ep = Endpoint::source(cfg);
        let sql = ep.connect().await?;
        setup::check_server(&sql).await?;
        setup::ensure_publication(&sql, &cfg.source).await?;
        let start = setup::ensure_slot(&sql, &cfg.source.slot).await?;
        let db: String = sql
            .query_one("SELECT current_database()", &[])
            .await
            .map_err(|e| Error::postgres("current_database()", e))?
            .get(0);
        let mut pc = kafka::producer_config(&cfg.kafka);
        pc.set("queue.buffering.max.messages", "100000");
        pc.set("queue.buffering.max.kbytes", "65536");
        let producer: ThreadedProducer<AckContext> = pc
            .create_with_context(AckContext)
            .map_err(|e| Error::kafka("creating producer", e))?;
        // Series that must exist before the first event, so rate() and alerts see them.
        metrics::counter!(names::CAPTURE_TRANSACTIONS_TOTAL).increment(0);
        metrics::counter!(names::CAPTURE_PRODUCER_ERRORS_TOTAL).increment(0);
        metrics::gauge!(names::CAPTURE_PRODUCER_QUEUE_MESSAGES).set(0.0);
        Ok((
            Capture {
                cfg: cfg.clone(),
                sql,
                registry: RegistryClient::new(&cfg.registry)?,
                producer,
                catalog: Catalog::default(),
                relations: HashMap::new(),
                db,
                dlq_ready: false,
                backfill: Arc::new(super::backfill::Shared::default()),
                windows: super::backfill::Windows::default(),
            },
            start,
        ))
    }

    fn replication_config(&self, start: Lsn) -> Result<pgwire_replication::ReplicationConfig> {
        let pg = Endpoint::source(&self.cfg).pg_config()?;
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
        Ok(pgwire_replication::ReplicationConfig::new(
            host,
            pg.get_user().unwrap_or("postgres"),
            password,
            pg.get_dbname().unwrap_or("postgres"),
            self.cfg.source.slot.clone(),
            self.cfg.source.publication.clone(),
        )
        .with_port(port)
        .with_start_lsn(pgwire_replication::Lsn::from_u64(start.0))
        .with_status_interval(Duration::from_secs(self.cfg.source.status_interval_secs))
        .with_application_name("cutover-capture")
        // Deterministic text output for the codec.
        .with_options("-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 -c extra_float_digits=3 -c bytea_output=hex"))
    }

    /// Stream until `shutdown` resolves or a fatal error occurs.
    pub async fn run(mut self, start: Lsn, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let mut repl =
            pgwire_replication::ReplicationClient::connect(self.replication_config(start)?)
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Connection,
                        format!("source replication connection: {e}"),
                    )
                })?;
        tracing::info!(slot = %self.cfg.source.slot, start = %start, "capture streaming");

        // Acker: confirms end LSNs strictly in commit order, only when fully acknowledged.
        let (track_tx, mut track_rx) = mpsc::channel::<Arc<TxnTracker>>(10_000);
        let (confirm_tx, mut confirm_rx) = watch::channel::<(Lsn, Option<String>)>((start, None));
        let acker = tokio::spawn(async move {
            while let Some(t) = track_rx.recv().await {
                while t.pending.load(Ordering::Acquire) != 0 {
                    t.done.notified().await;
                }
                let failed = t.failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let lsn = Lsn(t.end_lsn.load(Ordering::Acquire));
                if failed.is_some() {
                    let _ = confirm_tx.send((lsn, failed));
                    return;
                }
                let commit_us = t.commit_ts_us.load(Ordering::Acquire) as i64;
                let lag = (now_ms() * 1000 - commit_us).max(0) as f64 / 1e6;
                metrics::gauge!(names::CAPTURE_LAG_SECONDS).set(lag);
                metrics::gauge!(names::CAPTURE_CONFIRMED_POSITION_BYTES).set(lsn.0 as f64);
                let _ = confirm_tx.send((lsn, None));
                for n in std::mem::take(&mut *t.confirmed.lock().unwrap_or_else(|p| p.into_inner()))
                {
                    let _ = n.send(());
                }
            }
        });

        let heartbeat = spawn_heartbeat(&self.cfg);
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
                }
                _ = shutdown.changed() => {
                    tracing::info!("capture stopping");
                    break Ok(());
                }
                ev = repl.recv() => {
                    let ev = match ev {
                        Ok(Some(ev)) => ev,
                        Ok(None) => break Err(Error::new(ErrorKind::Connection, "replication stream ended")),
                        Err(e) => break Err(Error::new(ErrorKind::Connection, format!("replication stream: {e}"))),
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
        let _ = tokio::task::block_in_place(|| self.producer.flush(Duration::from_secs(30)));
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
                metrics::counter!(names::CAPTURE_TRANSACTIONS_TOTAL).increment(1);
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
        metrics::gauge!(names::CAPTURE_PRODUCER_QUEUE_MESSAGES)
            .set(self.producer.in_flight_count() as f64);
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
                if crate::database::origin::is_cutover_origin(t.origin.as_deref()) {
                    let table = self
                        .relations
                        .get(&rel_id)
                        .map(|st| st.schema.table.to_string())
                        .unwrap_or_default();
                    metrics::counter!(names::CAPTURE_ECHOES_SUPPRESSED_TOTAL, names::LABEL_TABLE => table)
                        .increment(1);
                    return Ok(());
                }
                if !self.windows.is_empty() {
                    self.note_window_keys(&msg, rel_id);
                }
                match self.on_row(&msg, t, wal_start).await {
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
                    t.origin = Some(name);
                }
            }
            Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. } => {}
            Message::Truncate { rel_ids, .. } => {
                let t = txn
                    .as_mut()
                    .ok_or_else(|| Error::internal("Truncate outside a transaction"))?;
                for rel_id in rel_ids {
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

    /// A row change the codec cannot represent goes, as raw text, to `<prefix>.dlq.capture`
    /// with headers naming the error and position; it is tracked like any event, so the LSN is
    /// not confirmed before the dead letter is durable. The stream goes on.
    async fn dead_letter(
        &mut self,
        rel_id: u32,
        msg: &Message,
        t: &mut Txn,
        wal_start: u64,
        error: &Error,
    ) -> Result<()> {
        let topic = kafka::topic::capture_dlq(&self.cfg.topic_prefix);
        if !self.dlq_ready {
            deadletter::ensure_topic(&self.cfg.kafka, &topic).await?;
            self.dlq_ready = true;
        }
        let st = self.state(rel_id)?;
        let raw = |tuple: &[Datum]| -> serde_json::Value {
            let mut row = serde_json::Map::new();
            for (d, col) in tuple.iter().zip(&st.schema.columns) {
                let v = match d {
                    Datum::Null => serde_json::Value::Null,
                    Datum::UnchangedToast => serde_json::json!({"unchanged_toast": true}),
                    Datum::Text(b) | Datum::Binary(b) => {
                        serde_json::Value::String(String::from_utf8_lossy(b).into_owned())
                    }
                };
                row.insert(col.name.clone(), v);
            }
            serde_json::Value::Object(row)
        };
        let (op, before, after) = match msg {
            Message::Insert { new, .. } => (Op::Create, None, Some(raw(new))),
            Message::Update { old, new, .. } => {
                (Op::Update, old.as_ref().map(|o| raw(&o.1)), Some(raw(new)))
            }
            Message::Delete { old, .. } => (Op::Delete, Some(raw(&old.1)), None),
            _ => return Err(Error::internal("dead_letter on a non-row message")),
        };
        let table = st.schema.table.to_string();
        let body = serde_json::json!({
            "table": table, "op": op.code(), "before": before, "after": after,
            "commit_lsn": t.final_lsn.0, "seq": t.seq, "lsn": wal_start, "txid": t.xid,
            "error": error.to_string(),
        });
        t.seq += 1;
        tracing::error!(table = %table, commit_lsn = %t.final_lsn, error = %error, dlq = %topic, "row cannot be encoded: sent to the capture dead-letter topic");
        metrics::counter!(names::CAPTURE_DLQ_EVENTS_TOTAL, names::LABEL_TABLE => table.clone())
            .increment(1);
        let headers = deadletter::Letter {
            error,
            origin: vec![
                ("cutover.table", table.clone()),
                ("cutover.commit_lsn", t.final_lsn.to_string()),
            ],
        }
        .headers();
        let value = serde_json::to_vec(&body).map_err(|e| Error::internal(e.to_string()))?;
        self.produce_with(
            &topic,
            Some(table.as_bytes()),
            &value,
            None,
            Some(headers),
            &t.tracker,
        )
        .await
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
            .filter_map(|tu| self.cells(rel_id, tu).ok())
            .filter_map(|cells| st.schema.encode_key(&cells).ok())
            .collect();
        for k in keys {
            self.windows.saw(&table, k);
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
            self.windows
                .open(w.id, crate::apply::mapping::table_id(&w.table));
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
            let cells = self.cells(rel_id, tuple)?;
            let key = self.state(rel_id)?.schema.encode_key(&cells)?;
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

    /// The relation id of `table`, registering its schema from the catalog when the stream has
    /// not described it yet (no change of it since capture started).
    async fn relation_for(&mut self, table: &TableId) -> Result<u32> {
        if let Some((id, _)) = self
            .relations
            .iter()
            .find(|(_, st)| &st.schema.table == table)
        {
            return Ok(*id);
        }
        let q = crate::database::ident::qualified(table);
        let r = self
            .sql
            .query_one(
                "SELECT c.oid, c.relreplident::text FROM pg_class c WHERE c.oid = to_regclass($1)",
                &[&q],
            )
            .await
            .map_err(|e| Error::postgres(format!("describing {table} for backfill"), e))?;
        let oid: u32 = r.get(0);
        let ident: String = r.get(1);
        let cols = self
            .sql
            .query(
                "SELECT a.attname::text, a.atttypid, a.atttypmod,
                        coalesce(a.attnum = ANY(i.indkey), false)
                 FROM pg_attribute a
                 LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .map_err(|e| Error::postgres(format!("columns of {table} for backfill"), e))?;
        let rel = super::pgoutput::Relation {
            id: oid,
            namespace: table.schema.clone(),
            name: table.name.clone(),
            replica_identity: ident.as_bytes().first().copied().unwrap_or(b'd'),
            columns: cols
                .iter()
                .map(|c| super::pgoutput::Column {
                    key: ident == "f" || c.get::<_, bool>(3),
                    name: c.get(0),
                    type_oid: c.get(1),
                    type_modifier: c.get(2),
                })
                .collect(),
        };
        self.on_relation(rel).await?;
        Ok(oid)
    }

    fn state(&self, rel_id: u32) -> Result<&TableState> {
        self.relations.get(&rel_id).ok_or_else(|| {
            Error::internal(format!(
                "change for relation {rel_id} before its Relation message"
            ))
        })
    }

    fn cells(&self, rel_id: u32, tuple: &[Datum]) -> Result<Vec<Cell>> {
        let st = self.state(rel_id)?;
        let mut out = Vec::with_capacity(tuple.len());
        for (d, col) in tuple.iter().zip(&st.schema.columns) {
            out.push(match d {
                Datum::Null => Cell::Null,
                Datum::UnchangedToast => Cell::Unchanged,
                Datum::Text(b) | Datum::Binary(b) => {
                    let text = std::str::from_utf8(b).map_err(|e| {
                        Error::new(
                            ErrorKind::Data,
                            format!("{}.{}: value is not UTF-8: {e}", st.schema.table, col.name),
                        )
                    })?;
                    Cell::Value(
                        codec::types::text_to_avro(&col.kind, text)
                            .map_err(|e| e.context(format!("{}.{}", st.schema.table, col.name)))?,
                    )
                }
            });
        }
        Ok(out)
    }

    async fn on_relation(&mut self, rel: Relation) -> Result<()> {
        let table = TableId::new(rel.namespace.clone(), rel.name.clone());
        let configured = self.cfg.source.key_columns.get(&table.to_string()).cloned();
        let pk = match &configured {
            Some(cols) => cols.clone(),
            None => self.catalog.primary_key(&self.sql, rel.id).await?,
        };
        let full = rel.replica_identity == b'f';
        if pk.is_empty() && !full {
            return Err(Error::new(
                ErrorKind::Config,
                format!("table {table} has no primary key: configure source.key_columns.\"{table}\" or ALTER TABLE {table} REPLICA IDENTITY FULL (then every column is the key)"),
            ));
        }
        let mut columns = Vec::with_capacity(rel.columns.len());
        for c in &rel.columns {
            let kind = self
                .catalog
                .kind(&self.sql, c.type_oid, c.type_modifier)
                .await?;
            let key = if pk.is_empty() {
                true
            } else {
                pk.contains(&c.name)
            };
            let pg_type = self
                .catalog
                .type_name(&self.sql, c.type_oid, c.type_modifier)
                .await?;
            columns.push(ColumnSpec {
                name: c.name.clone(),
                kind,
                key,
                pg_type: Some(pg_type),
            });
        }
        if let Some(cols) = &configured {
            for k in cols {
                if !rel.columns.iter().any(|c| &c.name == k) {
                    return Err(Error::config(format!(
                        "source.key_columns.\"{table}\": column {k} does not exist"
                    )));
                }
            }
        }
        let topic = kafka::topic::for_table(&self.cfg.topic_prefix, &table);
        if let Some(existing) = self.relations.get(&rel.id) {
            if existing.schema.columns == columns && existing.topic == topic {
                return Ok(());
            }
        }
        let schema = codec::derive(&table, columns, &topic)?;
        // Register before the first event that uses this version.
        let key_id = self
            .registry
            .register(&format!("{topic}-key"), &schema.key_json)
            .await?;
        let value_id = self
            .registry
            .register(&format!("{topic}-value"), &schema.value_json)
            .await?;
        kafka::ensure_topics(
            &self.cfg.kafka,
            &[TopicSpec {
                name: topic.clone(),
                partitions: self.cfg.kafka.partitions,
                replication_factor: self.cfg.kafka.replication_factor,
                configs: vec![],
            }],
        )
        .await?;
        let partitions = kafka::partition_count(&self.cfg.kafka, &topic).await?;
        tracing::info!(table = %table, topic, key_id, value_id, "relation schema registered");
        // The table's dead-letter series exists from its first relation, at zero.
        metrics::counter!(names::CAPTURE_DLQ_EVENTS_TOTAL, names::LABEL_TABLE => table.to_string())
            .increment(0);
        self.relations.insert(
            rel.id,
            TableState {
                schema: Arc::new(schema),
                topic,
                partitions: partitions.max(1),
                key_id,
                value_id,
            },
        );
        Ok(())
    }

    async fn emit(
        &mut self,
        rel_id: u32,
        t: &mut Txn,
        op: Op,
        before: Option<Vec<Cell>>,
        after: Option<Vec<Cell>>,
        wal_start: u64,
    ) -> Result<()> {
        let st = self.state(rel_id)?;
        let source = SourceInfo {
            pipeline: &self.cfg.name,
            db: &self.db,
            txid: Some(t.xid),
            lsn: Some(wal_start),
            commit_lsn: t.final_lsn.0,
            seq: t.seq,
            commit_ts_us: t.commit_ts_us,
            origin: t.origin.as_deref(),
            snapshot: false,
        };
        t.seq += 1;
        let value = codec::wire(
            st.value_id,
            &st.schema
                .encode_value(op, before.as_deref(), after.as_deref(), &source, now_ms())?,
        );
        let key_cells = after.as_deref().or(before.as_deref());
        let key = match key_cells {
            Some(c) => Some(codec::wire(st.key_id, &st.schema.encode_key(c)?)),
            None => None,
        };
        let table = st.schema.table.to_string();
        metrics::counter!(names::CAPTURE_EVENTS_TOTAL, names::LABEL_TABLE => table.clone(), names::LABEL_OP => op.code()).increment(1);
        metrics::counter!(names::CAPTURE_BYTES_TOTAL, names::LABEL_TABLE => table)
            .increment(value.len() as u64);
        let topic = st.topic.clone();
        match key {
            Some(k) => {
                self.produce(&topic, Some(&k), &value, None, &t.tracker)
                    .await
            }
            // Truncate: one copy per partition, so it is ordered with every row's changes.
            None => {
                for p in 0..st.partitions {
                    self.produce(&topic, None, &value, Some(p), &t.tracker)
                        .await?;
                }
                Ok(())
            }
        }
    }

    async fn produce(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        partition: Option<i32>,
        tracker: &Arc<TxnTracker>,
    ) -> Result<()> {
        self.produce_with(topic, key, value, partition, None, tracker)
            .await
    }

    async fn produce_with(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        partition: Option<i32>,
        headers: Option<rdkafka::message::OwnedHeaders>,
        tracker: &Arc<TxnTracker>,
    ) -> Result<()> {
        tracker.pending.fetch_add(1, Ordering::AcqRel);
        // The record timestamp is the source commit time: lag monitoring reads the age of the
        // oldest unapplied event from it, and replay --from-timestamp means source time.
        let commit_ms = (tracker.commit_ts_us.load(Ordering::Acquire) / 1000) as i64;
        let mut record = BaseRecord::with_opaque_to(topic, tracker.clone())
            .payload(value)
            .timestamp(commit_ms);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    // Backpressure: wait for deliveries to drain the bounded queue.
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => {
                    tracker.release();
                    return Err(Error::kafka(format!("producing to {topic}"), e));
                }
            }
        }
    }
}

/// Periodically write a transactional logical message on the source, so the slot advances
/// even when captured tables are idle. (Slot retention is the monitor's to report.)
fn spawn_heartbeat(cfg: &Config) -> tokio::task::JoinHandle<()> {
    let cfg = cfg.clone();
    tokio::spawn(async move {
        let every = Duration::from_secs(cfg.source.heartbeat_interval_secs);
        let mut client = None;
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
            }
        }
    })
}
