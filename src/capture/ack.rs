//! Delivery accounting: how capture knows a transaction is durable in Kafka (invariant 1).
//!
//! ```text
//!   Begin ─▶ TxnTracker { pending: 1 }   every produce: pending += 1 (the tracker rides along
//!                                         as the record's delivery opaque)
//!   ack    ─▶ AckContext::delivery ─▶ pending -= 1 (an error is kept: the LSN is never confirmed)
//!   Commit ─▶ seal: pending -= 1; at 0 the tracker fires `done`, and the acker may confirm
//!            its end_lsn once every older tracker has
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::Notify;

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
        if let Err((e, _)) = result {
            super::metrics::producer_error();
            let mut f = tracker.failed.lock().unwrap_or_else(|p| p.into_inner());
            f.get_or_insert_with(|| e.to_string());
        }
        tracker.release();
    }
}
