//! Delivery accounting: how capture knows a transaction is durable in Kafka (invariant 1).
//!
//! ```text
//!   Begin ─▶ TxnTracker { pending: 1 }   every produce: pending += 1 (the tracker rides along
//!                                         as the record's delivery opaque)
//!   ack    ─▶ AckContext::delivery ─▶ pending -= 1 (an error, or a success without an offset,
//!                                     is kept: the LSN is never confirmed)
//!   Commit ─▶ seal: pending -= 1; at 0 the tracker fires `done`, and the acker may confirm
//!            its end_lsn once every older tracker has
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;

use crate::event::Lsn;
use crate::kafka;
use tokio::sync::{mpsc, watch, Notify};

/// Per-transaction delivery accounting.
pub struct TxnTracker {
    /// Messages produced and not yet acknowledged, plus 1 until the transaction is sealed.
    pub(super) pending: AtomicUsize,
    pub(super) end_lsn: AtomicU64,
    pub(super) commit_ts_us: AtomicU64,
    pub(super) failed: Mutex<Option<String>>,
    pub(super) done: Notify,
    /// Fired once the transaction is confirmed (backfill waits on its chunks this way).
    pub(super) confirmed: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
}

impl TxnTracker {
    /// A tracker for a transaction committed at `commit_ts_us` (Unix microseconds).
    pub(super) fn new(commit_ts_us: i64) -> Arc<Self> {
        Arc::new(TxnTracker {
            pending: AtomicUsize::new(1),
            end_lsn: AtomicU64::new(0),
            commit_ts_us: AtomicU64::new(commit_ts_us.max(0) as u64),
            failed: Mutex::new(None),
            done: Notify::new(),
            confirmed: Mutex::new(Vec::new()),
        })
    }
    pub(super) fn release(&self) {
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
        let failure = match result {
            Err((e, _)) => Some(e.to_string()),
            // A success without an offset is librdkafka's implicit ack: not proof of
            // durability (kafka::unverified_delivery), so the LSN is not confirmed.
            Ok(m) => kafka::unverified_delivery(m.topic(), m.partition(), m.offset()),
        };
        if let Some(e) = failure {
            super::metrics::producer_error();
            let mut f = tracker.failed.lock().unwrap_or_else(|p| p.into_inner());
            f.get_or_insert(e);
        }
        tracker.release();
    }
}

/// The acker: takes trackers in commit order and, once a tracker has no pending delivery,
/// publishes its end LSN on `confirm` (the stream sends it to the server). A failed delivery
/// is published with its error and ends the acker: nothing after it is ever confirmed.
pub(super) fn spawn_acker(
    mut trackers: mpsc::Receiver<Arc<TxnTracker>>,
    confirm: watch::Sender<(Lsn, Option<String>)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(t) = trackers.recv().await {
            while t.pending.load(Ordering::Acquire) != 0 {
                t.done.notified().await;
            }
            let failed = t.failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let lsn = Lsn(t.end_lsn.load(Ordering::Acquire));
            if failed.is_some() {
                let _ = confirm.send((lsn, failed));
                return;
            }
            let commit_us = t.commit_ts_us.load(Ordering::Acquire) as i64;
            let lag = (now_ms() * 1000 - commit_us).max(0) as f64 / 1e6;
            super::metrics::confirmed(lsn, lag);
            let _ = confirm.send((lsn, None));
            for n in std::mem::take(&mut *t.confirmed.lock().unwrap_or_else(|p| p.into_inner())) {
                let _ = n.send(());
            }
        }
    })
}

/// Wall-clock now, in Unix milliseconds.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
