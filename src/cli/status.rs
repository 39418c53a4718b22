//! `cutover status`: is the migration healthy, and how far behind is it — in one look.
//!
//! One probe of the monitor with detail (slot, capture position, every sink's lag in messages
//! and seconds, last applied commit, dead-letter sizes), judged against the `[monitor]`
//! thresholds. Works while any part of the pipeline is down: it reads the source, the broker
//! and the targets directly.
//!
//! Exit code: 0 healthy, 3 degraded, 4 stalled (1 and 2 stay "failed" and "bad config").

use std::process::ExitCode;

use super::{load_config, Cli};
use crate::error::Result;
use crate::monitor::{human_bytes, judge, Health, Monitor, Snapshot, Verdict};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON document instead of the table (for scripts).
    #[arg(long)]
    pub json: bool,
    /// Also list every partition's lag.
    #[arg(long)]
    pub partitions: bool,
}

pub fn exit_code(h: Health) -> ExitCode {
    match h {
        Health::Healthy => ExitCode::SUCCESS,
        Health::Degraded => ExitCode::from(3),
        Health::Stalled => ExitCode::from(4),
    }
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?;
    let mut monitor = Monitor::new(&cfg)?;
    let snap = monitor.probe(true).await;
    let verdict = judge(&snap, &cfg.monitor);
    if args.json {
        println!("{}", to_json(&snap, &verdict));
    } else {
        print!("{}", render(&snap, &verdict, args.partitions));
    }
    Ok(exit_code(verdict.health))
}

/// The JSON document: the verdict, then the snapshot with each sink's state folded in.
pub fn to_json(snap: &Snapshot, v: &Verdict) -> String {
    let mut s = serde_json::to_value(snap).unwrap_or_default();
    if let Some(sinks) = s.get_mut("sinks").and_then(|x| x.as_array_mut()) {
        for (sink, (_, state)) in sinks.iter_mut().zip(&v.sinks) {
            sink["state"] = serde_json::Value::from(*state);
        }
    }
    let doc = serde_json::json!({
        "health": v.health,
        "reasons": v.reasons,
        "pipeline": snap.pipeline,
        "taken_at_ms": snap.taken_at_ms,
        "capture": s["capture"],
        "sinks": s["sinks"],
        "shares": s["shares"],
        "leaks": s["leaks"],
        "problems": snap.problems,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

fn when(ms: Option<i64>, now: i64) -> String {
    match ms.and_then(chrono::DateTime::from_timestamp_millis) {
        None => "-".into(),
        Some(t) => format!(
            "{} ({} ago)",
            t.format("%Y-%m-%d %H:%M:%S UTC"),
            ago(now - t.timestamp_millis())
        ),
    }
}

fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

fn bytes(b: Option<i64>) -> String {
    b.map(human_bytes).unwrap_or_else(|| "-".into())
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

/// The human screen.
pub fn render(snap: &Snapshot, v: &Verdict, partitions: bool) -> String {
    use std::fmt::Write;
    let now = snap.taken_at_ms;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "pipeline {}: {}  ({})",
        snap.pipeline,
        v.health.as_str().to_uppercase(),
        when(Some(now), now).split(" (").next().unwrap_or("")
    );
    for r in &v.reasons {
        let _ = writeln!(o, "  - {r}");
    }
    render_capture(&mut o, &snap.capture, now);
    let _ = writeln!(o, "\nsinks");
    let _ = writeln!(
        o,
        "  {:<16} {:<8} {:>12} {:>9}  {:<36} {:>5}",
        "NAME", "STATE", "LAG (msgs)", "LAG (s)", "LAST APPLIED COMMIT", "DLQ"
    );
    for (sink, (_, state)) in snap.sinks.iter().zip(&v.sinks) {
        let _ = writeln!(
            o,
            "  {:<16} {:<8} {:>12} {:>9}  {:<36} {:>5}",
            sink.name,
            state,
            sink.lag_messages,
            sink.lag_seconds
                .map(|s| format!("{s:.1}"))
                .unwrap_or_else(|| "-".into()),
            when(sink.last_applied_commit_ms, now),
            opt(sink.dlq_messages)
        );
        if partitions {
            for p in &sink.partitions {
                let _ = writeln!(
                    o,
                    "      {}[{}]  committed {}  high {}  lag {}",
                    p.topic,
                    p.partition,
                    opt(p.committed),
                    p.high,
                    p.lag_messages
                );
            }
        }
    }
    let split: Vec<&(String, f64)> = snap
        .shares
        .iter()
        .filter(|(t, _)| {
            snap.phases
                .iter()
                .any(|(p, ph)| p == t && *ph == crate::state::phases::Phase::Split)
        })
        .collect();
    if !split.is_empty() {
        let _ = writeln!(
            o,
            "\nsplit tables (owners by key share; leaks written on legacy/new)"
        );
        for (t, pct) in split {
            let (ll, ln) = snap
                .leaks
                .iter()
                .find(|(x, _, _)| x == t)
                .map_or((0, 0), |(_, a, b)| (*a, *b));
            let _ = writeln!(
                o,
                "  {t:<40} new {pct:>6.2} %  legacy {:>6.2} %  leaks {ll}/{ln}",
                100.0 - pct
            );
        }
    }
    if !snap.problems.is_empty() {
        let _ = writeln!(o, "\nnot readable");
        for p in &snap.problems {
            let _ = writeln!(o, "  {p}");
        }
    }
    o
}

/// The capture section: slot, confirmed position, retained WAL, last capture.
fn render_capture(o: &mut String, c: &crate::monitor::CaptureStatus, now: i64) {
    use std::fmt::Write;
    let _ = writeln!(o, "\ncapture");
    match &c.slot_state {
        None => {
            let _ = writeln!(o, "  slot {:<24} unknown (source unreachable)", c.slot);
        }
        Some(st) if !st.exists => {
            let _ = writeln!(o, "  slot {:<24} does not exist", c.slot);
        }
        Some(st) => {
            let _ = writeln!(
                o,
                "  slot {:<24} {}  wal_status {}",
                c.slot,
                if st.active { "active" } else { "INACTIVE" },
                st.wal_status.as_deref().unwrap_or("-")
            );
            let _ = writeln!(
                o,
                "  confirmed LSN  {:<14} source at {}  ({} not yet confirmed)",
                st.confirmed_lsn.as_deref().unwrap_or("-"),
                st.current_lsn,
                bytes(st.pending_bytes)
            );
            let _ = writeln!(o, "  WAL retained   {}", bytes(st.retained_bytes));
        }
    }
    let _ = writeln!(
        o,
        "  last captured  {}   topics {}   dead letters {}",
        when(c.last_captured_commit_ms, now),
        c.topics,
        opt(c.dlq_messages)
    );
}
