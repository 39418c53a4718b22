//! The monitor: how far behind is every part of the pipeline, measured from the outside.
//!
//! ```text
//!   legacy PG ── pg_replication_slots, pg_current_wal_lsn() ──┐
//!   broker ───── high/low watermarks per partition ───────────┤
//!   broker ───── each sink group's committed offsets ─────────┼─▶ Snapshot ─┬─▶ gauges (/metrics)
//!   broker ───── timestamp of the oldest unapplied record ────┤             └─▶ cutover status
//!   targets ──── cutover.sink_progress.updated_at (status) ───┘                 (+ verdict)
//! ```
//!
//! Invariant: **lag is observed, never self-reported.** A sink that is down reports nothing,
//! and a dead sink is exactly when lag matters; so lag is computed from the broker's high
//! watermarks and the group's committed offsets by a component that does not depend on the
//! sink being alive. The group is read with OffsetFetch and never joined, so probing cannot
//! trigger a rebalance. The oldest unapplied event's age comes from its record timestamp, which
//! capture sets to the source commit time.
//!
//! Committed offsets are a copy of the sink's true progress (which lives in the target,
//! committed with the data); a sink commits them right after each durable batch, so lag read
//! here is at most one batch pessimistic, never optimistic.
//!
//! The monitor runs inside `cutover run`, inside `cutover capture` unless
//! `monitor.embedded = false`, and alone as `cutover monitor` — the production shape, so slot
//! growth is still reported while capture itself is down.

mod probe;
mod verdict;

pub use probe::Monitor;
pub use verdict::{human_bytes, judge, Health, Verdict};

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::Result;
use crate::observe::{names, Readiness};

/// Everything the monitor saw in one probe.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub pipeline: String,
    /// When the probe ran (Unix ms).
    pub taken_at_ms: i64,
    pub capture: CaptureStatus,
    pub sinks: Vec<SinkStatus>,
    /// Per-table cutover phases (with a back-sync configured; read from legacy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<(String, crate::state::phases::Phase)>,
    /// The new store's share of each phased table's keys, in percent (forward 0, reverse
    /// 100, split its last step; dual has none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<(String, f64)>,
    /// Leaks of each table in split: (table, written on legacy, written on the new store).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leaks: Vec<(String, i64, i64)>,
    /// Phase changes in the audit trail: (not forced, forced).
    #[serde(skip)]
    pub phase_changes: Option<(i64, i64)>,
    /// Peers that could not be read, as `what: error` (the rest of the snapshot is still valid).
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptureStatus {
    pub slot: String,
    /// `None` when the source could not be read.
    pub slot_state: Option<SlotState>,
    /// Captured topics known (from the registry and configuration).
    pub topics: usize,
    /// Commit time of the newest captured event (Unix ms), when asked for detail.
    pub last_captured_commit_ms: Option<i64>,
    /// Events parked in the capture dead-letter topic.
    pub dlq_messages: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotState {
    pub exists: bool,
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
    pub confirmed_lsn: Option<String>,
    pub restart_lsn: Option<String>,
    pub current_lsn: String,
    /// The source's current WAL position as a byte number.
    pub current_bytes: u64,
    /// The slot's confirmed position as a byte number.
    pub confirmed_bytes: Option<u64>,
    /// WAL the slot keeps on the source's disk (current − restart_lsn).
    pub retained_bytes: Option<i64>,
    /// WAL written and not yet confirmed by capture (current − confirmed_flush_lsn).
    pub pending_bytes: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SinkStatus {
    pub name: String,
    pub group: String,
    /// Messages not yet applied, over every partition.
    pub lag_messages: i64,
    /// Age of the oldest unapplied event (0 without lag; `None` when it could not be read).
    pub lag_seconds: Option<f64>,
    /// Commit time (Unix ms) of the oldest unapplied event.
    pub oldest_unapplied_commit_ms: Option<i64>,
    /// Commit time (Unix ms) of the newest applied event, when asked for detail.
    pub last_applied_commit_ms: Option<i64>,
    /// When the sink last committed a batch to its target (Unix ms), when asked for detail.
    pub last_progress_ms: Option<i64>,
    pub dlq_messages: Option<i64>,
    pub partitions: Vec<PartitionLag>,
}

impl SinkStatus {
    /// Fill the lag in time from record timestamps (`stamps`: (topic, partition, offset) →
    /// commit time in Unix ms) at `now_ms`: the oldest unapplied event's age and the newest
    /// applied commit. Returns a problem when the sink lags but no oldest event could be read.
    pub fn time_lag(
        &mut self,
        stamps: &std::collections::HashMap<(String, i32, i64), i64>,
        now_ms: i64,
    ) -> Option<String> {
        let mut oldest: Option<i64> = None;
        let mut unknown = false;
        let mut last_applied: Option<i64> = None;
        for p in self.partitions.iter_mut() {
            let next = p.high - p.lag_messages;
            if p.lag_messages > 0 {
                p.oldest_unapplied_commit_ms =
                    stamps.get(&(p.topic.clone(), p.partition, next)).copied();
                match p.oldest_unapplied_commit_ms {
                    Some(ts) => oldest = Some(oldest.map_or(ts, |o: i64| o.min(ts))),
                    None => unknown = true,
                }
            }
            if next > p.low {
                if let Some(ts) = stamps.get(&(p.topic.clone(), p.partition, next - 1)) {
                    last_applied = Some(last_applied.map_or(*ts, |l: i64| l.max(*ts)));
                }
            }
        }
        self.oldest_unapplied_commit_ms = oldest;
        self.last_applied_commit_ms = last_applied;
        self.lag_seconds = match (self.lag_messages, oldest) {
            (0, _) => Some(0.0),
            (_, Some(ts)) => Some(((now_ms - ts).max(0)) as f64 / 1000.0),
            (_, None) => None,
        };
        (unknown && self.lag_messages > 0 && oldest.is_none()).then(|| {
            format!(
                "broker: could not read the oldest unapplied event of sink {}",
                self.name
            )
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    /// The group's committed offset (next to apply); `None`: never committed.
    pub committed: Option<i64>,
    pub lag_messages: i64,
    pub oldest_unapplied_commit_ms: Option<i64>,
}

impl PartitionLag {
    /// The next offset the sink will apply: its committed offset, or the earliest retained
    /// one when it never committed (`auto.offset.reset=earliest`) or retention passed it.
    pub fn next_offset(low: i64, high: i64, committed: Option<i64>) -> i64 {
        committed.unwrap_or(low).clamp(low, high.max(low))
    }
}

/// Label sets exported at start with zero values, so `rate()` and absence checks work from
/// the first scrape.
fn init_metrics(cfg: &Config) {
    for outcome in ["ok", "error"] {
        metrics::counter!(names::MONITOR_PROBES_TOTAL, names::LABEL_OUTCOME => outcome)
            .increment(0);
    }
    metrics::gauge!(names::SLOT_ACTIVE, names::LABEL_SLOT => cfg.source.slot.clone()).set(0.0);
}

/// Publish a snapshot as gauges.
pub fn export(s: &Snapshot) {
    let slot = s.capture.slot.clone();
    if let Some(st) = &s.capture.slot_state {
        metrics::gauge!(names::SLOT_ACTIVE, names::LABEL_SLOT => slot.clone()).set(if st.active {
            1.0
        } else {
            0.0
        });
        metrics::gauge!(names::SOURCE_WAL_POSITION_BYTES, names::LABEL_SLOT => slot.clone())
            .set(st.current_bytes as f64);
        if let Some(b) = st.retained_bytes {
            metrics::gauge!(names::SLOT_WAL_RETAINED_BYTES, names::LABEL_SLOT => slot.clone())
                .set(b as f64);
        }
        if let Some(b) = st.pending_bytes {
            metrics::gauge!(names::SLOT_PENDING_BYTES, names::LABEL_SLOT => slot.clone())
                .set(b as f64);
        }
        if let Some(b) = st.confirmed_bytes {
            metrics::gauge!(names::SLOT_CONFIRMED_POSITION_BYTES, names::LABEL_SLOT => slot.clone())
                .set(b as f64);
        }
    }
    if let Some(n) = s.capture.dlq_messages {
        metrics::gauge!(names::DLQ_MESSAGES, names::LABEL_DLQ => "capture").set(n as f64);
    }
    for (table, phase) in &s.phases {
        for p in crate::state::phases::Phase::ALL {
            metrics::gauge!(names::TABLE_PHASE, names::LABEL_TABLE => table.clone(), names::LABEL_PHASE => p.as_str())
                .set(if p == *phase { 1.0 } else { 0.0 });
        }
    }
    for (table, pct) in &s.shares {
        metrics::gauge!(names::PHASE_NEW_SHARE_RATIO, names::LABEL_TABLE => table.clone())
            .set(pct / 100.0);
    }
    if let Some((unforced, forced)) = s.phase_changes {
        metrics::counter!(names::PHASE_CHANGES_TOTAL, names::LABEL_FORCED => "false")
            .absolute(unforced as u64);
        metrics::counter!(names::PHASE_CHANGES_TOTAL, names::LABEL_FORCED => "true")
            .absolute(forced as u64);
    }
    for sink in &s.sinks {
        for p in &sink.partitions {
            metrics::gauge!(names::SINK_LAG_MESSAGES,
                names::LABEL_SINK => sink.name.clone(),
                names::LABEL_TOPIC => p.topic.clone(),
                names::LABEL_PARTITION => p.partition.to_string())
            .set(p.lag_messages as f64);
        }
        if let Some(secs) = sink.lag_seconds {
            metrics::gauge!(names::SINK_LAG_SECONDS, names::LABEL_SINK => sink.name.clone())
                .set(secs);
        }
        if let Some(n) = sink.dlq_messages {
            metrics::gauge!(names::DLQ_MESSAGES, names::LABEL_DLQ => sink.name.clone())
                .set(n as f64);
        }
    }
}

/// Probe every `monitor.interval_ms` and export, until `stop` flips. Probe failures are
/// reported (log, `cutover_monitor_probes_total{outcome="error"}`, readiness) and retried on
/// the next tick; only a client that cannot be created at all is an error.
pub async fn run(
    cfg: &Config,
    readiness: &Readiness,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut monitor = Monitor::new(cfg)?;
    init_metrics(cfg);
    let every = Duration::from_millis(cfg.monitor.interval_ms);
    tracing::info!(
        interval_ms = cfg.monitor.interval_ms,
        sinks = cfg.sinks.len(),
        "monitor started"
    );
    let mut last_problems: Vec<String> = Vec::new();
    loop {
        let started = Instant::now();
        let snap = monitor.probe(false).await;
        export(&snap);
        metrics::histogram!(names::MONITOR_PROBE_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let outcome = if snap.problems.is_empty() {
            "ok"
        } else {
            "error"
        };
        metrics::counter!(names::MONITOR_PROBES_TOTAL, names::LABEL_OUTCOME => outcome)
            .increment(1);
        readiness.set("monitor.source", snap.capture.slot_state.is_some());
        readiness.set(
            "monitor.broker",
            !snap.problems.iter().any(|p| p.starts_with("broker")),
        );
        // One log line when the set of problems changes, not one per tick.
        if snap.problems != last_problems {
            if snap.problems.is_empty() {
                tracing::info!("monitor probes healthy again");
            } else {
                tracing::warn!(problems = ?snap.problems, "monitor cannot read everything");
            }
            last_problems = snap.problems.clone();
        }
        tokio::select! {
            _ = tokio::time::sleep(every.saturating_sub(started.elapsed())) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
    }
    tracing::info!("monitor stopped");
    Ok(())
}

/// Unix time now in ms.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn partition(topic: &str, low: i64, high: i64, lag: i64) -> PartitionLag {
        PartitionLag {
            topic: topic.into(),
            partition: 0,
            low,
            high,
            committed: Some(high - lag),
            lag_messages: lag,
            oldest_unapplied_commit_ms: None,
        }
    }

    fn sink(partitions: Vec<PartitionLag>) -> SinkStatus {
        SinkStatus {
            name: "mirror".into(),
            group: "g".into(),
            lag_messages: partitions.iter().map(|p| p.lag_messages).sum(),
            lag_seconds: None,
            oldest_unapplied_commit_ms: None,
            last_applied_commit_ms: None,
            last_progress_ms: None,
            dlq_messages: Some(0),
            partitions,
        }
    }

    #[test]
    fn lag_in_time_is_the_age_of_the_oldest_unapplied_event() {
        let mut s = sink(vec![partition("a", 0, 10, 3), partition("b", 0, 5, 1)]);
        let stamps: HashMap<(String, i32, i64), i64> = [
            (("a".to_string(), 0, 7), 1_000),
            (("a".to_string(), 0, 6), 900),
            (("b".to_string(), 0, 4), 4_000),
            (("b".to_string(), 0, 3), 3_500),
        ]
        .into();
        assert_eq!(s.time_lag(&stamps, 11_000), None);
        assert_eq!(s.oldest_unapplied_commit_ms, Some(1_000));
        assert_eq!(s.lag_seconds, Some(10.0));
        assert_eq!(s.last_applied_commit_ms, Some(3_500));
        assert_eq!(s.partitions[1].oldest_unapplied_commit_ms, Some(4_000));
    }

    #[test]
    fn no_lag_is_zero_seconds_and_an_unreadable_oldest_event_is_a_problem() {
        let mut s = sink(vec![partition("a", 0, 10, 0)]);
        assert_eq!(s.time_lag(&HashMap::new(), 5), None);
        assert_eq!(s.lag_seconds, Some(0.0));
        let mut s = sink(vec![partition("a", 0, 10, 2)]);
        let p = s.time_lag(&HashMap::new(), 5).expect("a problem");
        assert!(p.contains("sink mirror"), "{p}");
        assert_eq!(s.lag_seconds, None);
    }
}
