//! Reconcile's metrics, typed (`cutover_reconcile_*`; names in `observe::names`).

use super::ledger::Open;
use crate::observe::names;

/// Rows one chunk read on each side (the load on the source is `side="source"`).
pub fn rows_compared(sink: &str, table: &str, source: i64, target: i64) {
    for (side, n) in [("source", source), ("target", target)] {
        metrics::counter!(names::RECONCILE_ROWS_COMPARED_TOTAL, names::LABEL_SINK => sink.to_string(), names::LABEL_TABLE => table.to_string(), names::LABEL_SIDE => side)
            .increment(n.max(0) as u64);
    }
}

/// A table's pass completed: its parity, its open discrepancies, when and how long.
pub fn table_pass(sink: &str, table: &str, parity: f64, open: Open, seconds: f64) {
    let labels = [
        (names::LABEL_SINK, sink.to_string()),
        (names::LABEL_TABLE, table.to_string()),
    ];
    metrics::gauge!(names::RECONCILE_PARITY_RATIO, &labels).set(parity);
    metrics::gauge!(names::RECONCILE_OPEN_DISCREPANCIES, &labels).set(open.count as f64);
    metrics::gauge!(names::RECONCILE_OLDEST_DISCREPANCY_AGE_SECONDS, &labels)
        .set(open.oldest_age_secs);
    metrics::gauge!(names::RECONCILE_PASS_DURATION_SECONDS, &labels).set(seconds);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    metrics::gauge!(
        names::RECONCILE_LAST_PASS_COMPLETED_TIMESTAMP_SECONDS,
        &labels
    )
    .set(now);
}

/// Keys `planned` (repair = report), `repaired` (auto) or `capped` (over the pass's budget).
pub fn repairs(sink: &str, table: &str, outcome: &'static str, n: usize) {
    metrics::counter!(names::RECONCILE_REPAIRS_TOTAL, names::LABEL_SINK => sink.to_string(), names::LABEL_TABLE => table.to_string(), names::LABEL_OUTCOME => outcome)
        .increment(n as u64);
}
