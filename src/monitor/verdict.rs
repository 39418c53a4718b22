//! The overall verdict `cutover status` prints: healthy, degraded or stalled, with every reason.
//!
//! | verdict  | when                                                                          |
//! |----------|-------------------------------------------------------------------------------|
//! | stalled  | the slot is missing, inactive or has lost WAL (capture is not streaming); or a |
//! |          | sink has unapplied events and applied nothing for `stalled_after_secs`        |
//! | degraded | a sink's oldest unapplied event is older than `lag_degraded_secs`; a          |
//! |          | dead-letter topic holds events; the slot retains more than                    |
//! |          | `slot_retained_degraded_bytes`; a peer could not be read                      |
//! | healthy  | none of the above                                                             |
//!
//! Pure: a function of one [`Snapshot`] and the thresholds, so every rule is unit-tested.

use serde::Serialize;

use super::{SinkStatus, Snapshot};
use crate::config::MonitorConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Degraded,
    Stalled,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Stalled => "stalled",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub health: Health,
    /// Why, worst first; empty when healthy.
    pub reasons: Vec<String>,
    /// Per sink: `ok`, `lagging`, `stalled` or `unknown`.
    pub sinks: Vec<(String, &'static str)>,
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(b: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v.abs() >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Reasons found so far, by severity.
#[derive(Default)]
struct Findings {
    stalled: Vec<String>,
    degraded: Vec<String>,
}

pub fn judge(s: &Snapshot, t: &MonitorConfig) -> Verdict {
    let mut f = Findings::default();
    judge_capture(s, t, &mut f);
    let sinks = s
        .sinks
        .iter()
        .map(|sink| {
            (
                sink.name.clone(),
                judge_sink(sink, s.taken_at_ms, t, &mut f),
            )
        })
        .collect();
    for p in &s.problems {
        f.degraded.push(format!("cannot read {p}"));
    }
    let health = if !f.stalled.is_empty() {
        Health::Stalled
    } else if !f.degraded.is_empty() {
        Health::Degraded
    } else {
        Health::Healthy
    };
    f.stalled.extend(f.degraded);
    Verdict {
        health,
        reasons: f.stalled,
        sinks,
    }
}

/// The slot (missing, lost, inactive, retaining too much) and capture's dead letters.
fn judge_capture(s: &Snapshot, t: &MonitorConfig, f: &mut Findings) {
    match &s.capture.slot_state {
        None => {}
        Some(st) if !st.exists => f.stalled.push(format!(
            "capture: slot {} does not exist (capture never ran, or the slot was dropped)",
            s.capture.slot
        )),
        Some(st) => {
            if st.wal_status.as_deref() == Some("lost") {
                f.stalled.push(format!(
                    "capture: slot {} lost required WAL; the pipeline must be re-snapshotted",
                    s.capture.slot
                ));
            } else if !st.active {
                f.stalled.push(format!(
                    "capture: slot {} is inactive (capture is not streaming); {} of WAL retained",
                    s.capture.slot,
                    human_bytes(st.retained_bytes.unwrap_or(0))
                ));
            }
            if let Some(b) = st.retained_bytes {
                if b as u64 > t.slot_retained_degraded_bytes {
                    f.degraded.push(format!(
                        "capture: slot {} retains {} of WAL (threshold {})",
                        s.capture.slot,
                        human_bytes(b),
                        human_bytes(t.slot_retained_degraded_bytes as i64)
                    ));
                }
            }
        }
    }
    if let Some(n) = s.capture.dlq_messages.filter(|n| *n > 0) {
        f.degraded
            .push(format!("capture: dead-letter topic holds {n} event(s)"));
    }
}

/// One sink's state (`ok`, `lagging`, `unknown`, `stalled`) at `now_ms`, and its reasons.
fn judge_sink(sink: &SinkStatus, now_ms: i64, t: &MonitorConfig, f: &mut Findings) -> &'static str {
    let idle_ms = sink.last_progress_ms.map(|p| now_ms - p);
    // With no progress row yet, the oldest unapplied event's age stands in for idleness.
    let idle_ms = idle_ms.or(sink.oldest_unapplied_commit_ms.map(|o| now_ms - o));
    let stalled_ms = (t.stalled_after_secs * 1000) as i64;
    let state = if sink.lag_messages > 0 && idle_ms.is_some_and(|i| i >= stalled_ms) {
        f.stalled.push(format!(
            "sink {}: {} event(s) unapplied, nothing applied for {}s",
            sink.name,
            sink.lag_messages,
            idle_ms.unwrap_or(0) / 1000
        ));
        "stalled"
    } else if sink
        .lag_seconds
        .is_some_and(|l| l > t.lag_degraded_secs as f64)
    {
        f.degraded.push(format!(
            "sink {}: oldest unapplied event is {:.0}s old (threshold {}s), {} event(s) behind",
            sink.name,
            sink.lag_seconds.unwrap_or(0.0),
            t.lag_degraded_secs,
            sink.lag_messages
        ));
        "lagging"
    } else if sink.lag_messages > 0 && sink.lag_seconds.is_none() {
        "unknown"
    } else if sink.lag_messages > 0 {
        "lagging"
    } else {
        "ok"
    };
    if let Some(n) = sink.dlq_messages.filter(|n| *n > 0) {
        f.degraded.push(format!(
            "sink {}: dead-letter topic holds {n} event(s)",
            sink.name
        ));
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{CaptureStatus, SinkStatus, SlotState};

    fn slot(active: bool) -> SlotState {
        SlotState {
            exists: true,
            active,
            wal_status: Some("reserved".into()),
            confirmed_lsn: Some("0/100".into()),
            restart_lsn: Some("0/80".into()),
            current_lsn: "0/100".into(),
            current_bytes: 256,
            confirmed_bytes: Some(256),
            retained_bytes: Some(128),
            pending_bytes: Some(0),
        }
    }

    fn sink(name: &str, lag: i64, lag_secs: f64, last_progress_ago_ms: i64) -> SinkStatus {
        SinkStatus {
            name: name.into(),
            group: format!("g.{name}"),
            lag_messages: lag,
            lag_seconds: Some(lag_secs),
            oldest_unapplied_commit_ms: (lag > 0).then_some(1_000_000 - (lag_secs * 1000.0) as i64),
            last_applied_commit_ms: None,
            last_progress_ms: Some(1_000_000 - last_progress_ago_ms),
            dlq_messages: Some(0),
            partitions: vec![],
        }
    }

    fn snap(slot_state: Option<SlotState>, sinks: Vec<SinkStatus>) -> Snapshot {
        Snapshot {
            pipeline: "p".into(),
            taken_at_ms: 1_000_000,
            capture: CaptureStatus {
                slot: "s".into(),
                slot_state,
                topics: 1,
                last_captured_commit_ms: None,
                dlq_messages: Some(0),
            },
            sinks,
            phases: vec![],
            shares: vec![],
            leaks: vec![],
            phase_changes: None,
            problems: vec![],
        }
    }

    fn t() -> MonitorConfig {
        MonitorConfig {
            lag_degraded_secs: 60,
            stalled_after_secs: 30,
            ..MonitorConfig::default()
        }
    }

    #[test]
    fn all_caught_up_is_healthy() {
        let v = judge(
            &snap(Some(slot(true)), vec![sink("a", 0, 0.0, 500_000)]),
            &t(),
        );
        assert_eq!(v.health, Health::Healthy, "{v:?}");
        assert!(v.reasons.is_empty());
        assert_eq!(v.sinks, vec![("a".to_string(), "ok")]);
    }

    #[test]
    fn a_stopped_sink_with_lag_is_stalled_and_named() {
        let v = judge(
            &snap(
                Some(slot(true)),
                vec![sink("a", 0, 0.0, 1000), sink("b", 42, 45.0, 40_000)],
            ),
            &t(),
        );
        assert_eq!(v.health, Health::Stalled);
        assert!(
            v.reasons[0].contains("sink b: 42 event(s) unapplied"),
            "{v:?}"
        );
        assert_eq!(v.sinks[1], ("b".to_string(), "stalled"));
    }

    #[test]
    fn a_slow_but_moving_sink_is_degraded_not_stalled() {
        let v = judge(
            &snap(Some(slot(true)), vec![sink("a", 500, 90.0, 1_000)]),
            &t(),
        );
        assert_eq!(v.health, Health::Degraded, "{v:?}");
        assert_eq!(v.sinks[0].1, "lagging");
        // Under the lag threshold: still healthy, but the sink shows as lagging.
        let v = judge(
            &snap(Some(slot(true)), vec![sink("a", 5, 2.0, 1_000)]),
            &t(),
        );
        assert_eq!(v.health, Health::Healthy, "{v:?}");
        assert_eq!(v.sinks[0].1, "lagging");
    }

    #[test]
    fn inactive_missing_or_lost_slot_is_stalled() {
        let v = judge(&snap(Some(slot(false)), vec![]), &t());
        assert_eq!(v.health, Health::Stalled);
        assert!(v.reasons[0].contains("inactive"), "{v:?}");
        let mut gone = slot(false);
        gone.exists = false;
        assert_eq!(
            judge(&snap(Some(gone), vec![]), &t()).health,
            Health::Stalled
        );
        let mut lost = slot(true);
        lost.wal_status = Some("lost".into());
        let v = judge(&snap(Some(lost), vec![]), &t());
        assert!(v.reasons[0].contains("lost"), "{v:?}");
    }

    #[test]
    fn dlq_retention_and_unreadable_peers_degrade() {
        let mut s = snap(Some(slot(true)), vec![sink("a", 0, 0.0, 1)]);
        s.sinks[0].dlq_messages = Some(3);
        let v = judge(&s, &t());
        assert_eq!(v.health, Health::Degraded);
        assert!(v.reasons[0].contains("dead-letter topic holds 3"), "{v:?}");

        let mut big = slot(true);
        big.retained_bytes = Some(12 << 30);
        let v = judge(&snap(Some(big), vec![]), &t());
        assert_eq!(v.health, Health::Degraded);
        assert!(v.reasons[0].contains("12.0 GiB"), "{v:?}");

        let mut s = snap(None, vec![]);
        s.problems.push("source: connection refused".into());
        let v = judge(&s, &t());
        assert_eq!(v.health, Health::Degraded);
        assert!(v.reasons[0].contains("connection refused"));
    }
}
