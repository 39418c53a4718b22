//! The sink's metrics, typed: every series a sink exports is written here and nowhere else
//! (names in `observe::names`, `cutover_sink_<name>_<unit>[_total]`). Per-kind and per-winner
//! series start at zero, so `rate()` and `increase()` see the first error instead of a series
//! appearing from nowhere.

use crate::error::ErrorKind;
use crate::event::{Op, TableId};
use crate::observe::names;
use crate::retry::{self, Decision};

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
    /// Events written on the side that does not own their key (`split`): not applied.
    pub leaked: usize,
}

impl BatchOutcome {
    /// Add another transaction's counts (a batch applied over several connections).
    pub fn add(&mut self, o: &BatchOutcome) {
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        self.dead_lettered += o.dead_lettered;
        self.skipped += o.skipped;
        self.phase_skipped += o.phase_skipped;
        self.conflicts_incoming_won += o.conflicts_incoming_won;
        self.conflicts_local_won += o.conflicts_local_won;
        self.leaked += o.leaked;
    }
}

/// One sink's series.
#[derive(Clone)]
pub struct SinkMetrics {
    sink: String,
    /// The guard's conflict policy: phase and conflict series exist only with one.
    policy: Option<&'static str>,
}

impl SinkMetrics {
    /// Export every series of the sink at zero.
    pub fn new(sink: &str, policy: Option<&'static str>) -> SinkMetrics {
        let m = SinkMetrics {
            sink: sink.to_string(),
            policy,
        };
        if let Some(p) = policy {
            metrics::counter!(names::SINK_PHASE_SKIPPED_TOTAL, names::LABEL_SINK => m.sink.clone())
                .increment(0);
            for winner in ["incoming", "local"] {
                metrics::counter!(names::SINK_CONFLICTS_TOTAL, names::LABEL_SINK => m.sink.clone(), names::LABEL_POLICY => p, names::LABEL_WINNER => winner)
                    .increment(0);
            }
        }
        for kind in ErrorKind::ALL {
            metrics::counter!(names::SINK_ERRORS_TOTAL, names::LABEL_SINK => m.sink.clone(), names::LABEL_KIND => kind.as_str()).increment(0);
            if retry::policy(kind) == Decision::Retry {
                metrics::counter!(names::SINK_RETRIES_TOTAL, names::LABEL_SINK => m.sink.clone(), names::LABEL_KIND => kind.as_str()).increment(0);
            }
        }
        metrics::counter!(names::SINK_DUPLICATES_SKIPPED_TOTAL, names::LABEL_SINK => m.sink.clone())
            .increment(0);
        metrics::counter!(names::SINK_DLQ_EVENTS_TOTAL, names::LABEL_SINK => m.sink.clone())
            .increment(0);
        m
    }

    pub fn error(&self, kind: ErrorKind) {
        metrics::counter!(names::SINK_ERRORS_TOTAL, names::LABEL_SINK => self.sink.clone(), names::LABEL_KIND => kind.as_str()).increment(1);
    }

    pub fn retry(&self, kind: ErrorKind) {
        metrics::counter!(names::SINK_RETRIES_TOTAL, names::LABEL_SINK => self.sink.clone(), names::LABEL_KIND => kind.as_str()).increment(1);
    }

    /// A committed batch of `events` records that took `secs`.
    pub fn batch(&self, events: usize, secs: f64, outcome: &BatchOutcome) {
        let sink = self.sink.clone();
        metrics::histogram!(names::SINK_BATCH_EVENTS, names::LABEL_SINK => sink.clone())
            .record(events as f64);
        metrics::histogram!(names::SINK_BATCH_DURATION_SECONDS, names::LABEL_SINK => sink.clone())
            .record(secs);
        metrics::counter!(names::SINK_DUPLICATES_SKIPPED_TOTAL, names::LABEL_SINK => sink.clone())
            .increment(outcome.duplicates as u64);
        metrics::counter!(names::SINK_DLQ_EVENTS_TOTAL, names::LABEL_SINK => sink.clone())
            .increment(outcome.dead_lettered as u64);
        if let Some(policy) = self.policy {
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
    }

    /// One applied event: its table and op, and how long after its source commit.
    pub fn applied(&self, table: &TableId, op: Op, latency_secs: f64) {
        metrics::counter!(names::SINK_EVENTS_APPLIED_TOTAL, names::LABEL_SINK => self.sink.clone(), names::LABEL_TABLE => table.to_string(), names::LABEL_OP => op.code()).increment(1);
        metrics::histogram!(names::SINK_LATENCY_SECONDS, names::LABEL_SINK => self.sink.clone())
            .record(latency_secs);
    }

    /// The newest source commit time applied so far (seconds since the epoch).
    pub fn last_applied_commit(&self, secs: f64) {
        metrics::gauge!(names::SINK_LAST_APPLIED_COMMIT_SECONDS, names::LABEL_SINK => self.sink.clone())
            .set(secs);
    }
}
