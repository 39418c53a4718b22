//! Capture's metrics, typed: every series capture exports is written here
//! (`cutover_capture_*`, `cutover_backfill_*`; names in `observe::names`). Series that alerts
//! read exist from the start, at zero.

use std::sync::OnceLock;

use crate::event::{Lsn, Op};
use crate::observe::names;

/// Before the first event: the series `rate()` and alerts need from the start.
pub fn init() {
    metrics::counter!(names::CAPTURE_TRANSACTIONS_TOTAL).increment(0);
    metrics::counter!(names::CAPTURE_PRODUCER_ERRORS_TOTAL).increment(0);
    metrics::gauge!(names::CAPTURE_PRODUCER_QUEUE_MESSAGES).set(0.0);
    for reason in ["foreign", "overflow", "expired"] {
        metrics::counter!(names::BACKFILL_WATERMARKS_IGNORED_TOTAL, names::LABEL_REASON => reason)
            .increment(0);
    }
}

/// A watermark capture did not act on (`foreign`, `overflow` or `expired`).
pub fn watermark_ignored(reason: &'static str) {
    metrics::counter!(names::BACKFILL_WATERMARKS_IGNORED_TOTAL, names::LABEL_REASON => reason)
        .increment(1);
}

/// A table's first relation: its dead-letter series exists, at zero.
pub fn table_seen(table: &str) {
    metrics::counter!(names::CAPTURE_DLQ_EVENTS_TOTAL, names::LABEL_TABLE => table.to_string())
        .increment(0);
}

/// A table's per-event series, looked up once when its relation is registered: the hot
/// path increments handles instead of hashing label sets per event.
pub struct TableCounters {
    table: String,
    /// By op (`Op as usize`), made on the op's first event so only seen ops are exported.
    events: [OnceLock<metrics::Counter>; 5],
    bytes: metrics::Counter,
    /// Made on the table's first cut value (`source.truncate_columns`).
    truncated: OnceLock<metrics::Counter>,
}

impl TableCounters {
    pub fn new(table: &str) -> TableCounters {
        TableCounters {
            table: table.to_string(),
            events: Default::default(),
            bytes: metrics::counter!(names::CAPTURE_BYTES_TOTAL, names::LABEL_TABLE => table.to_string()),
            truncated: OnceLock::new(),
        }
    }

    /// One value cut to its `source.truncate_columns` budget.
    pub fn truncated(&self) {
        self.truncated
            .get_or_init(|| metrics::counter!(names::CAPTURE_TRUNCATED_VALUES_TOTAL, names::LABEL_TABLE => self.table.clone()))
            .increment(1);
    }

    /// One event produced: its op and encoded value size.
    pub fn event(&self, op: Op, value_bytes: usize) {
        self.events[op as usize]
            .get_or_init(|| metrics::counter!(names::CAPTURE_EVENTS_TOTAL, names::LABEL_TABLE => self.table.clone(), names::LABEL_OP => op.code()))
            .increment(1);
        self.bytes.increment(value_bytes as u64);
    }
}

pub fn transaction() {
    metrics::counter!(names::CAPTURE_TRANSACTIONS_TOTAL).increment(1);
}

pub fn dead_letter(table: &str) {
    metrics::counter!(names::CAPTURE_DLQ_EVENTS_TOTAL, names::LABEL_TABLE => table.to_string())
        .increment(1);
}

/// A transaction dropped because cutover itself wrote it (its origin).
pub fn echo_suppressed(table: String) {
    metrics::counter!(names::CAPTURE_ECHOES_SUPPRESSED_TOTAL, names::LABEL_TABLE => table)
        .increment(1);
}

pub fn producer_error() {
    metrics::counter!(names::CAPTURE_PRODUCER_ERRORS_TOTAL).increment(1);
}

pub fn producer_queue(messages: usize) {
    metrics::gauge!(names::CAPTURE_PRODUCER_QUEUE_MESSAGES).set(messages as f64);
}

/// An LSN confirmed to the server, `lag_secs` after its transaction committed.
pub fn confirmed(lsn: Lsn, lag_secs: f64) {
    metrics::gauge!(names::CAPTURE_LAG_SECONDS).set(lag_secs);
    metrics::gauge!(names::CAPTURE_CONFIRMED_POSITION_BYTES).set(lsn.0 as f64);
}

pub fn backfill_estimated(table: &str, rows: i64) {
    metrics::gauge!(names::BACKFILL_ROWS_ESTIMATED, names::LABEL_TABLE => table.to_string())
        .set(rows as f64);
}

/// `rows` more copied; `eta_secs` until the table is done (0 when it is).
pub fn backfill_progress(table: &str, rows: i64, eta_secs: f64) {
    metrics::counter!(names::BACKFILL_ROWS_TOTAL, names::LABEL_TABLE => table.to_string())
        .increment(rows.max(0) as u64);
    metrics::gauge!(names::BACKFILL_ETA_SECONDS, names::LABEL_TABLE => table.to_string())
        .set(eta_secs);
}

/// 1 while this capture waits as a standby for its slot, 0 once it leads.
pub fn standby(waiting: bool) {
    metrics::gauge!(names::CAPTURE_STANDBY).set(if waiting { 1.0 } else { 0.0 });
}
