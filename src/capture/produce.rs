//! Producing: every event goes through here, keyed by primary key, with its tracker as the
//! delivery opaque, so its acknowledgement is counted before the transaction's LSN can be
//! confirmed; a full producer queue makes the stream wait (backpressure, bounded memory).
//! Rows the codec cannot encode go to the capture dead-letter topic the same way.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::BaseRecord;

use super::ack::now_ms;
use super::ack::TxnTracker;
use super::metrics;
use super::pgoutput::{Datum, Message};
use super::stream::{Capture, Txn};
use crate::codec::{self, Row, SourceInfo};
use crate::deadletter;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Op;
use crate::kafka;

impl Capture {
    pub(super) async fn emit(
        &mut self,
        rel_id: u32,
        t: &mut Txn,
        op: Op,
        before: Option<Row>,
        after: Option<Row>,
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
                .encode_value(op, before.as_ref(), after.as_ref(), &source, now_ms()),
        );
        let key_cells = after.as_ref().or(before.as_ref());
        let key = match key_cells {
            Some(c) => Some(codec::wire(st.key_id, &st.schema.encode_key(c)?)),
            None => None,
        };
        let size = value.len() + key.as_ref().map_or(0, Vec::len);
        if size > self.max_record_bytes {
            let rows = [before.as_ref(), after.as_ref()];
            return self
                .dead_letter_oversized(rel_id, op, rows, key.as_deref(), size, t, wal_start)
                .await;
        }
        st.counters.event(op, value.len());
        let topic = &st.topic;
        match key {
            Some(k) => {
                self.produce(topic, Some(&k), &value, None, &t.tracker)
                    .await
            }
            // Truncate: one copy per partition, so it is ordered with every row's changes.
            None => {
                for p in 0..st.partitions {
                    self.produce(topic, None, &value, Some(p), &t.tracker)
                        .await?;
                }
                Ok(())
            }
        }
    }

    pub(super) async fn produce(
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

    pub(super) async fn produce_with(
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
        let producer = &self.producers[super::stream::shard_of(topic, self.producers.len())];
        loop {
            match producer.send(record) {
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

    /// A row change the codec cannot represent goes, as raw text, to `<prefix>.dlq.capture`
    /// with headers naming the error and position; it is tracked like any event, so the LSN is
    /// not confirmed before the dead letter is durable. The stream goes on.
    pub(super) async fn dead_letter(
        &mut self,
        rel_id: u32,
        msg: &Message,
        t: &mut Txn,
        wal_start: u64,
        error: &Error,
    ) -> Result<()> {
        let (op, before, after) = match msg {
            Message::Insert { new, .. } => (Op::Create, None, Some(&new[..])),
            Message::Update { old, new, .. } => {
                (Op::Update, old.as_ref().map(|o| &o.1[..]), Some(&new[..]))
            }
            Message::Delete { old, .. } => (Op::Delete, Some(&old.1[..]), None),
            _ => return Err(Error::internal("dead_letter on a non-row message")),
        };
        self.dead_letter_row(rel_id, op, before, after, t, wal_start, error)
            .await
    }

    /// Send one row the codec cannot represent (a change, or a backfill read with `op=r`) to
    /// the capture dead-letter topic, with its table, position and the reason.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn dead_letter_row(
        &mut self,
        rel_id: u32,
        op: Op,
        before: Option<&[Datum]>,
        after: Option<&[Datum]>,
        t: &mut Txn,
        wal_start: u64,
        error: &Error,
    ) -> Result<()> {
        let st = self.state(rel_id)?;
        let raw = |tuple: &[Datum]| -> serde_json::Value {
            let mut row = serde_json::Map::new();
            for (_, d, col) in st.carried(tuple) {
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
        let (before, after) = (before.map(raw), after.map(raw));
        let table = st.schema.table.to_string();
        let body = serde_json::json!({
            "table": table, "op": op.code(), "before": before, "after": after,
            "commit_lsn": t.final_lsn.0, "seq": t.seq, "lsn": wal_start, "txid": t.xid,
            "error": error.to_string(),
        });
        t.seq += 1;
        self.send_dead_letter(table, body, error, t).await
    }

    /// An event whose encoded record is over the producer's `message.max.bytes` (the broker
    /// would refuse it, and its full dead-letter copy would be larger still): a metadata
    /// record goes to the capture dead-letter topic instead (table, op, position, the encoded
    /// key and its schema id, the record's size and each column's encoded size), and the
    /// stream goes on. `seq` was taken by the event, so the letter keeps its place.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn dead_letter_oversized(
        &mut self,
        rel_id: u32,
        op: Op,
        rows: [Option<&Row>; 2],
        key: Option<&[u8]>,
        size: usize,
        t: &mut Txn,
        wal_start: u64,
    ) -> Result<()> {
        let st = self.state(rel_id)?;
        let sizes = |row: &Row| -> serde_json::Value {
            let mut m = serde_json::Map::new();
            for (cell, col) in row.cells().iter().zip(&st.schema.columns) {
                m.insert(
                    col.name.clone(),
                    serde_json::json!(row.value(*cell).map_or(0, <[u8]>::len)),
                );
            }
            serde_json::Value::Object(m)
        };
        let table = st.schema.table.to_string();
        let limit = self.max_record_bytes;
        let error = Error::new(
            ErrorKind::Data,
            format!(
                "{table}: the encoded event is {size} bytes, over the producer's limit of {limit} \
                 (kafka.properties message.max.bytes); keep large columns out of the \
                 publication (a column list) or raise the limit on producer and broker"
            ),
        );
        let body = serde_json::json!({
            "table": table, "op": op.code(), "oversized": true, "bytes": size, "limit": limit,
            "key_schema_id": st.key_id,
            "key_avro_hex": key.map(|k| k.iter().map(|b| format!("{b:02x}")).collect::<String>()),
            "before_column_bytes": rows[0].map(sizes), "after_column_bytes": rows[1].map(sizes),
            "commit_lsn": t.final_lsn.0, "seq": t.seq - 1, "lsn": wal_start, "txid": t.xid,
            "error": error.to_string(),
        });
        self.send_dead_letter(table, body, &error, t).await
    }

    /// Produce one capture dead letter (`body` as JSON, the error in its headers).
    async fn send_dead_letter(
        &mut self,
        table: String,
        body: serde_json::Value,
        error: &Error,
        t: &mut Txn,
    ) -> Result<()> {
        let topic = kafka::topic::capture_dlq(&self.cfg.topic_prefix);
        if !self.dlq_ready {
            deadletter::ensure_topic(&self.cfg.kafka, &topic).await?;
            self.dlq_ready = true;
        }
        tracing::error!(table = %table, commit_lsn = %t.final_lsn, error = %error, dlq = %topic, "row cannot be produced: sent to the capture dead-letter topic");
        metrics::dead_letter(&table);
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
}
