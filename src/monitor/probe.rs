//! One probe of the pipeline: the slot on the source, the watermarks of every captured and
//! dead-letter topic, each sink group's committed offsets, and (for detail) record timestamps
//! and the targets' progress rows. Every peer is read independently: one unreachable peer
//! becomes a line in `Snapshot::problems`, not a failed probe.

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::Client;

use super::{now_ms, CaptureStatus, PartitionLag, SinkStatus, SlotState, Snapshot};
use crate::config::{Config, Direction};
use crate::error::Result;
use crate::kafka::inspect::{Inspector, Watermarks};
use crate::registry::RegistryClient;
use crate::state::phases::Phase;

/// How long one probe waits for record timestamps before reporting them unknown.
const PEEK_WAIT: Duration = Duration::from_secs(3);

pub struct Monitor {
    cfg: Config,
    inspector: Inspector,
    registry: RegistryClient,
    source: Option<Client>,
    targets: HashMap<String, Client>,
    /// The captured topics as last listed (kept when the registry is briefly unreachable).
    topics: Vec<String>,
}

fn lsn_bytes(lsn: &str) -> Option<u64> {
    let (hi, lo) = lsn.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

impl Monitor {
    pub fn new(cfg: &Config) -> Result<Monitor> {
        Ok(Monitor {
            cfg: cfg.clone(),
            inspector: Inspector::new(&cfg.kafka)?,
            registry: RegistryClient::new(&cfg.registry)?,
            source: None,
            targets: HashMap::new(),
            topics: Vec::new(),
        })
    }

    /// Read everything once. `detail` adds what only `cutover status` shows (last applied and
    /// last captured commit times, the targets' last progress), at the cost of a few more reads.
    ///
    /// Long on purpose: one read per source of truth (slot, watermarks, each sink's offsets,
    /// phases, dead-letter depth), each recording its own failure in `problems`, so one
    /// unreachable peer never hides what the others report.
    pub async fn probe(&mut self, detail: bool) -> Snapshot {
        let mut problems = Vec::new();
        let slot_state = match self.slot().await {
            Ok(s) => Some(s),
            Err(e) => {
                self.source = None;
                problems.push(format!("source: {e}"));
                None
            }
        };
        let marks = self.watermarks(&mut problems).await;
        let size = |topic: &str| -> Option<i64> {
            match marks.get(topic)? {
                None => Some(0),
                Some(parts) => Some(parts.values().map(|w| w.high - w.low).sum()),
            }
        };
        let tps: Vec<(String, i32, Watermarks)> = self
            .topics
            .iter()
            .filter_map(|t| marks.get(t).cloned().flatten().map(|p| (t, p)))
            .flat_map(|(t, parts)| {
                parts
                    .into_iter()
                    .map(move |(p, w)| (t.clone(), p, w))
                    .collect::<Vec<_>>()
            })
            .collect();
        let (mut sinks, mut peek) = self.sink_lags(&tps, &size, detail, &mut problems).await;
        if detail {
            for (t, p, w) in &tps {
                if w.high > w.low {
                    peek.push((t.clone(), *p, w.high - 1));
                }
            }
        }
        let stamps = match self.inspector.timestamps(&peek, PEEK_WAIT).await {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("broker: reading record timestamps: {e}"));
                HashMap::new()
            }
        };
        let now = now_ms();
        for sink in sinks.iter_mut() {
            if let Some(problem) = sink.time_lag(&stamps, now) {
                problems.push(problem);
            }
        }
        let last_captured_commit_ms = tps
            .iter()
            .filter(|(_, _, w)| w.high > w.low)
            .filter_map(|(t, p, w)| stamps.get(&(t.clone(), *p, w.high - 1)).copied())
            .max();
        if detail {
            for (i, sink) in sinks.iter_mut().enumerate() {
                match self.last_progress(i).await {
                    Ok(ms) => sink.last_progress_ms = ms,
                    Err(e) => {
                        self.targets.remove(&sink.name);
                        problems.push(format!("sink {} target: {e}", sink.name));
                    }
                }
            }
        }
        let (phases, shares, phase_changes) = match self.phases().await {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("source: phases: {e}"));
                (vec![], vec![], None)
            }
        };
        let leaks = match self.leaks(&phases).await {
            Ok(l) => l,
            Err(e) => {
                problems.push(format!("phases: leaks: {e}"));
                vec![]
            }
        };
        let capture_dlq = crate::kafka::topic::capture_dlq(&self.cfg.topic_prefix);
        Snapshot {
            phases,
            shares,
            leaks,
            phase_changes,
            pipeline: self.cfg.name.clone(),
            taken_at_ms: now,
            capture: CaptureStatus {
                slot: self.cfg.source.slot.clone(),
                slot_state,
                topics: self.topics.len(),
                last_captured_commit_ms,
                dlq_messages: size(&capture_dlq),
            },
            sinks,
            problems,
        }
    }

    /// The watermarks of every captured topic and every dead-letter topic (the captured topics
    /// refreshed from the registry first).
    async fn watermarks(
        &mut self,
        problems: &mut Vec<String>,
    ) -> HashMap<String, Option<HashMap<i32, Watermarks>>> {
        match crate::apply::consumer::captured_topics(&self.cfg, &self.registry).await {
            Ok(t) => self.topics = t,
            Err(e) => problems.push(format!("registry: {e}")),
        }
        let prefix = &self.cfg.topic_prefix;
        let mut all: Vec<String> = self.topics.clone();
        all.push(crate::kafka::topic::capture_dlq(prefix));
        for s in &self.cfg.sinks {
            all.push(crate::kafka::topic::sink_dlq(prefix, &s.name));
        }
        match self.inspector.watermarks(&all).await {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("broker: {e}"));
                HashMap::new()
            }
        }
    }

    /// Every sink's lag in messages, per partition, from its group's committed offsets; and
    /// the records whose timestamps tell the lag in time (the oldest unapplied, and with
    /// `detail` the last applied).
    async fn sink_lags(
        &self,
        tps: &[(String, i32, Watermarks)],
        size: &(dyn Fn(&str) -> Option<i64> + Sync),
        detail: bool,
        problems: &mut Vec<String>,
    ) -> (Vec<SinkStatus>, Vec<(String, i32, i64)>) {
        let prefix = &self.cfg.topic_prefix;
        let mut sinks = Vec::new();
        let mut peek = Vec::new();
        for s in &self.cfg.sinks {
            let group = s.group_id(&self.cfg.name);
            let mut status = SinkStatus {
                name: s.name.clone(),
                group: group.clone(),
                lag_messages: 0,
                lag_seconds: None,
                oldest_unapplied_commit_ms: None,
                last_applied_commit_ms: None,
                last_progress_ms: None,
                dlq_messages: size(&crate::kafka::topic::sink_dlq(prefix, &s.name)),
                partitions: vec![],
            };
            let keys: Vec<(String, i32)> = tps.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
            let committed = match self.inspector.committed(&group, &keys).await {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!("broker: offsets of group {group}: {e}"));
                    // Without offsets there is no lag to report for this sink.
                    sinks.push(status);
                    continue;
                }
            };
            for (t, p, w) in tps {
                let c = committed.get(&(t.clone(), *p)).copied().flatten();
                let next = PartitionLag::next_offset(w.low, w.high, c);
                let lag = w.high - next;
                if lag > 0 {
                    peek.push((t.clone(), *p, next));
                }
                if detail && next > w.low {
                    peek.push((t.clone(), *p, next - 1));
                }
                status.partitions.push(PartitionLag {
                    topic: t.clone(),
                    partition: *p,
                    low: w.low,
                    high: w.high,
                    committed: c,
                    lag_messages: lag,
                    oldest_unapplied_commit_ms: None,
                });
            }
            status
                .partitions
                .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            status.lag_messages = status.partitions.iter().map(|p| p.lag_messages).sum();
            sinks.push(status);
        }
        (sinks, peek)
    }

    /// Every table's phase and the audit counts, when a back-sync is configured (the forward
    /// configuration's source is legacy, where they live).
    #[allow(clippy::type_complexity)]
    async fn phases(
        &self,
    ) -> Result<(Vec<(String, Phase)>, Vec<(String, f64)>, Option<(i64, i64)>)> {
        if self.cfg.backsync.is_none() || self.cfg.direction != Direction::Forward {
            return Ok((vec![], vec![], None));
        }
        let Some(c) = self.source.as_ref() else {
            return Ok((vec![], vec![], None));
        };
        let exists: bool = c
            .query_one("SELECT to_regclass('cutover.phase_audit') IS NOT NULL", &[])
            .await
            .map_err(|e| crate::Error::postgres("looking for cutover.phase_audit", e))?
            .get(0);
        if !exists {
            return Ok((vec![], vec![], Some((0, 0))));
        }
        let phases = crate::state::phases::all(c, &self.cfg).await?;
        let steps = crate::state::phases::steps(c, &self.cfg.name).await?;
        let shares = phases
            .iter()
            .filter_map(|(t, p)| {
                let pct = match p {
                    Phase::Forward => 0.0,
                    Phase::Reverse => 100.0,
                    Phase::Split => steps
                        .get(t)
                        .and_then(|s| s.last())
                        .map_or(0.0, |s| s.share_bp as f64 / 100.0),
                    Phase::Dual => return None,
                };
                Some((t.clone(), pct))
            })
            .collect();
        let r = c
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT forced), count(*) FILTER (WHERE forced)
                 FROM cutover.phase_audit WHERE pipeline = $1",
                &[&self.cfg.name],
            )
            .await
            .map_err(|e| crate::Error::postgres("counting cutover.phase_audit", e))?;
        Ok((phases, shares, Some((r.get(0), r.get(1)))))
    }

    /// Leaks of the tables in split, read from both sides' `cutover.conflicts`: written on
    /// legacy (recorded by the forward sink in the new store, under the forward mapping's
    /// target tables) and written on the new store (recorded by the back-sync in legacy).
    async fn leaks(&self, phases: &[(String, Phase)]) -> Result<Vec<(String, i64, i64)>> {
        let split: Vec<&String> = phases
            .iter()
            .filter(|(_, p)| *p == Phase::Split)
            .map(|(t, _)| t)
            .collect();
        let (Some(c), Some(b)) = (self.source.as_ref(), self.cfg.backsync.as_ref()) else {
            return Ok(vec![]);
        };
        if split.is_empty() {
            return Ok(vec![]);
        }
        let on_legacy = crate::state::phases::leaks(c).await?;
        let new = crate::database::Endpoint::new_store(&self.cfg)?
            .connect()
            .await?;
        let on_new = crate::state::phases::leaks(&new).await?;
        let (i, _) = self.cfg.sink_at(&b.forward_sink)?;
        let mut out = Vec::new();
        for t in split {
            let targets = crate::apply::mapping::for_table(&self.cfg, i, t)?
                .map(|m| m.targets())
                .unwrap_or_default();
            let written_on_legacy = targets
                .iter()
                .filter_map(|x| on_new.get(&x.to_string()))
                .sum();
            let written_on_new = on_legacy.get(t.as_str()).copied().unwrap_or(0);
            out.push((t.clone(), written_on_legacy, written_on_new));
        }
        Ok(out)
    }

    async fn slot(&mut self) -> Result<SlotState> {
        if self.source.as_ref().is_none_or(|c| c.is_closed()) {
            self.source = Some(
                crate::database::Endpoint::source(&self.cfg)
                    .connect()
                    .await?,
            );
        }
        let c = self.source.as_ref().expect("connected above");
        let current: String = c
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| crate::Error::postgres("reading pg_current_wal_lsn()", e))?
            .get(0);
        let row = c
            .query_opt(
                "SELECT active, wal_status, confirmed_flush_lsn::text, restart_lsn::text,
                        (pg_current_wal_lsn() - restart_lsn)::bigint,
                        (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.cfg.source.slot],
            )
            .await
            .map_err(|e| crate::Error::postgres("reading pg_replication_slots", e))?;
        let current_bytes = lsn_bytes(&current).unwrap_or(0);
        Ok(match row {
            None => SlotState {
                exists: false,
                active: false,
                wal_status: None,
                confirmed_lsn: None,
                restart_lsn: None,
                current_lsn: current,
                current_bytes,
                confirmed_bytes: None,
                retained_bytes: None,
                pending_bytes: None,
            },
            Some(r) => {
                let confirmed: Option<String> = r.get(2);
                SlotState {
                    exists: true,
                    active: r.get(0),
                    wal_status: r.get(1),
                    confirmed_bytes: confirmed.as_deref().and_then(lsn_bytes),
                    confirmed_lsn: confirmed,
                    restart_lsn: r.get(3),
                    current_lsn: current,
                    current_bytes,
                    retained_bytes: r.get(4),
                    pending_bytes: r.get(5),
                }
            }
        })
    }

    /// When sink `i` last committed a batch (its progress rows' newest `updated_at`).
    async fn last_progress(&mut self, i: usize) -> Result<Option<i64>> {
        let sink = &self.cfg.sinks[i];
        if self.targets.get(&sink.name).is_none_or(|c| c.is_closed()) {
            let c = crate::database::Endpoint::of_sink(sink, i)
                .connect()
                .await?;
            self.targets.insert(sink.name.clone(), c);
        }
        let c = &self.targets[&sink.name];
        let exists: bool = c
            .query_one(
                "SELECT to_regclass('cutover.sink_progress') IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| crate::Error::postgres("looking for cutover.sink_progress", e))?
            .get(0);
        if !exists {
            return Ok(None);
        }
        // This pipeline's topics only: another pipeline may have a sink of the same name
        // writing the same database.
        let ms: Option<f64> = c
            .query_one(
                "SELECT (extract(epoch FROM max(updated_at)) * 1000)::float8
                 FROM cutover.sink_progress WHERE sink = $1 AND topic = ANY($2)",
                &[&sink.name, &self.topics],
            )
            .await
            .map_err(|e| crate::Error::postgres("reading cutover.sink_progress", e))?
            .get(0);
        Ok(ms.map(|m| m as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_to_bytes() {
        assert_eq!(lsn_bytes("0/0"), Some(0));
        assert_eq!(lsn_bytes("0/16B3748"), Some(0x16B3748));
        assert_eq!(lsn_bytes("1/0"), Some(1 << 32));
        assert_eq!(lsn_bytes("nonsense"), None);
    }

    #[test]
    fn next_offset_is_committed_or_earliest_retained() {
        assert_eq!(PartitionLag::next_offset(0, 10, None), 0);
        assert_eq!(PartitionLag::next_offset(0, 10, Some(7)), 7);
        // Retention deleted what the group had not applied: it resumes at the low watermark.
        assert_eq!(PartitionLag::next_offset(5, 10, Some(2)), 5);
        // A committed offset past the end (topic recreated): no negative lag.
        assert_eq!(PartitionLag::next_offset(0, 10, Some(12)), 10);
    }
}
