//! Read-only views of the cluster for monitoring: partition watermarks, any consumer group's
//! committed offsets, and the timestamp of the record at an offset.
//!
//! The [`Inspector`] never joins a group and never commits: it reads a group's offsets with an
//! OffsetFetch (a client configured with that `group.id` that does not subscribe), so it can
//! report the lag of a sink that is down — exactly when lag matters. Record timestamps are the
//! source commit time (capture sets them), so "age of the oldest unapplied event" is one fetch
//! of one record per lagging partition; results are cached by offset, so a partition whose
//! committed offset does not move is not fetched again.
//!
//! librdkafka calls block; every public method runs them on the blocking pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::diagnosis::{explain, metadata_client, MetadataClient};
use super::{base_config, set_group_protocol};
use crate::config::KafkaConfig;
use crate::error::classify::kafka_code;
use crate::error::{Error, ErrorKind, Result};

/// (topic, partition)
pub type Tp = (String, i32);

/// (topic, partition, offset) → record timestamp (ms) and when it was cached.
type PeekCache = HashMap<(String, i32, i64), (i64, Instant)>;

/// Low and high watermark of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

/// At most this many record timestamps are cached (oldest entries are dropped first).
const PEEK_CACHE_MAX: usize = 50_000;

pub struct Inspector {
    cfg: KafkaConfig,
    meta: Arc<MetadataClient>,
    peek: Arc<Mutex<BaseConsumer>>,
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    peeked: Arc<Mutex<PeekCache>>,
}

fn quiet(mut c: ClientConfig) -> ClientConfig {
    // Never commit, never store: this client only looks.
    c.set("enable.auto.commit", "false");
    c.set("enable.auto.offset.store", "false");
    c.set("enable.partition.eof", "false");
    c
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("{what} task failed: {e}")))?
}

impl Inspector {
    pub fn new(cfg: &KafkaConfig) -> Result<Inspector> {
        let meta = metadata_client(&base_config(cfg))?;
        let mut pc = quiet(base_config(cfg));
        pc.set("group.id", format!("{}.inspect", cfg.client_id));
        // Fetch little: one record per partition is all a peek needs.
        pc.set("fetch.max.bytes", "1048576");
        pc.set("max.partition.fetch.bytes", "65536");
        pc.set("queued.max.messages.kbytes", "1024");
        pc.set("fetch.wait.max.ms", "10");
        let peek: BaseConsumer = pc
            .create()
            .map_err(|e| Error::kafka("creating Kafka inspection consumer", e))?;
        Ok(Inspector {
            cfg: cfg.clone(),
            meta: Arc::new(meta),
            peek: Arc::new(Mutex::new(peek)),
            groups: Mutex::new(HashMap::new()),
            peeked: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Inspection answers a question now: wait at most 5 s for the broker (less if
    /// `kafka.request_timeout_ms` says so), so a down broker costs a probe seconds, not 30.
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.request_timeout_ms.min(5_000))
    }

    /// Watermarks of every partition of each topic; a topic that does not exist maps to
    /// `None` (not an error: a table's topic appears with its first event).
    pub async fn watermarks(
        &self,
        topics: &[String],
    ) -> Result<HashMap<String, Option<HashMap<i32, Watermarks>>>> {
        let meta = self.meta.clone();
        let topics = topics.to_vec();
        let timeout = self.timeout();
        blocking("watermarks", move || {
            let mut out = HashMap::new();
            for topic in topics {
                let md = meta
                    .fetch_metadata(Some(&topic), timeout)
                    .map_err(|e| explain(&meta, format!("metadata for topic {topic}"), e))?;
                let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                    out.insert(topic, None);
                    continue;
                };
                if let Some(err) = t.error() {
                    let code: RDKafkaErrorCode = err.into();
                    if matches!(
                        code,
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                    ) {
                        out.insert(topic, None);
                        continue;
                    }
                    return Err(Error::new(
                        kafka_code(code),
                        format!("metadata for topic {topic}: {code}"),
                    ));
                }
                if t.partitions().is_empty() {
                    out.insert(topic, None);
                    continue;
                }
                let mut parts = HashMap::new();
                for p in t.partitions() {
                    let (low, high) =
                        meta.fetch_watermarks(&topic, p.id(), timeout)
                            .map_err(|e| {
                                explain(&meta, format!("watermarks of {topic}[{}]", p.id()), e)
                            })?;
                    parts.insert(p.id(), Watermarks { low, high });
                }
                out.insert(topic, Some(parts));
            }
            Ok(out)
        })
        .await
    }

    fn group_client(&self, group: &str) -> Result<Arc<BaseConsumer>> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = groups.get(group) {
            return Ok(c.clone());
        }
        let mut cc = quiet(base_config(&self.cfg));
        cc.set("group.id", group);
        set_group_protocol(&mut cc, self.cfg.group_protocol);
        let c: BaseConsumer = cc
            .create()
            .map_err(|e| Error::kafka(format!("creating offset reader for group {group}"), e))?;
        let c = Arc::new(c);
        groups.insert(group.to_string(), c.clone());
        Ok(c)
    }

    /// The offsets `group` has committed for `tps` (`None`: nothing committed). Reads only: the
    /// group is not joined, so this works while every member is down.
    pub async fn committed(&self, group: &str, tps: &[Tp]) -> Result<HashMap<Tp, Option<i64>>> {
        if tps.is_empty() {
            return Ok(HashMap::new());
        }
        let client = self.group_client(group)?;
        let tps = tps.to_vec();
        let timeout = self.timeout();
        let group = group.to_string();
        blocking("committed offsets", move || {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &tps {
                tpl.add_partition(t, *p);
            }
            let got = client
                .committed_offsets(tpl, timeout)
                .map_err(|e| Error::kafka(format!("committed offsets of group {group}"), e))?;
            let mut out = HashMap::new();
            for e in got.elements() {
                let off = match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                };
                out.insert((e.topic().to_string(), e.partition()), off);
            }
            Ok(out)
        })
        .await
    }

    /// For each partition, the offset of the first record with a timestamp at or after `ts_ms`
    /// (record timestamps are source commit times); the high watermark when there is none.
    pub async fn offsets_for_time(&self, tps: &[Tp], ts_ms: i64) -> Result<HashMap<Tp, i64>> {
        let meta = self.meta.clone();
        let tps = tps.to_vec();
        let timeout = self.timeout();
        let marks = self
            .watermarks(&tps.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>())
            .await?;
        blocking("offsets for time", move || {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &tps {
                tpl.add_partition_offset(t, *p, Offset::Offset(ts_ms))
                    .map_err(|e| Error::kafka("building ListOffsets request", e))?;
            }
            let got = meta
                .offsets_for_times(tpl, timeout)
                .map_err(|e| explain(&meta, "ListOffsets by timestamp", e))?;
            let mut out = HashMap::new();
            for e in got.elements() {
                let high = marks
                    .get(e.topic())
                    .cloned()
                    .flatten()
                    .and_then(|m| m.get(&e.partition()).map(|w| w.high))
                    .unwrap_or(0);
                let off = match e.offset() {
                    Offset::Offset(o) if o >= 0 => o,
                    _ => high,
                };
                out.insert((e.topic().to_string(), e.partition()), off);
            }
            Ok(out)
        })
        .await
    }

    /// Commit `offsets` for `group` without joining it (the group must have no members, e.g.
    /// after a replay reset, so the monitor's lag shows the replay backlog).
    pub async fn commit(&self, group: &str, offsets: &HashMap<Tp, i64>) -> Result<()> {
        let client = self.group_client(group)?;
        let offsets = offsets.clone();
        let group = group.to_string();
        blocking("commit", move || {
            let mut tpl = TopicPartitionList::new();
            for ((t, p), o) in &offsets {
                tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                    .map_err(|e| Error::kafka("building commit", e))?;
            }
            client
                .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
                .map_err(|e| Error::kafka(format!("committing offsets of group {group}"), e))
        })
        .await
    }

    /// Timestamps (Unix ms) of the records at the given offsets; offsets whose record could not
    /// be read within `wait` (deleted by retention, compacted, broker slow) are left out.
    pub async fn timestamps(
        &self,
        wanted: &[(String, i32, i64)],
        wait: Duration,
    ) -> Result<HashMap<(String, i32, i64), i64>> {
        let mut out = HashMap::new();
        let mut todo = Vec::new();
        {
            let cache = self.peeked.lock().unwrap_or_else(|p| p.into_inner());
            for w in wanted {
                match cache.get(w) {
                    Some((ts, _)) => {
                        out.insert(w.clone(), *ts);
                    }
                    None => todo.push(w.clone()),
                }
            }
        }
        if todo.is_empty() {
            return Ok(out);
        }
        let peek = self.peek.clone();
        let cache = self.peeked.clone();
        let found = blocking("peek", move || {
            let consumer = peek.lock().unwrap_or_else(|p| p.into_inner());
            let found = read_timestamps(&consumer, &todo, wait);
            let _ = consumer.unassign();
            found
        })
        .await?;
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > PEEK_CACHE_MAX {
            // Drop the older half; entries are cheap to re-read if asked again.
            let mut ages: Vec<Instant> = cache.values().map(|(_, at)| *at).collect();
            ages.sort();
            let cut = ages[ages.len() / 2];
            cache.retain(|_, (_, at)| *at > cut);
        }
        let now = Instant::now();
        for w in wanted {
            if let Some(ts) = found.get(w) {
                cache.insert(w.clone(), (*ts, now));
                out.insert(w.clone(), *ts);
            }
        }
        Ok(out)
    }
}

/// Read the records at `todo`'s offsets with the peek consumer (assigned here; the caller
/// unassigns): each wanted offset resolves to its record's timestamp, or to the next record's
/// when it is gone (retention, compaction). Stops after `wait`.
fn read_timestamps(
    consumer: &BaseConsumer,
    todo: &[(String, i32, i64)],
    wait: Duration,
) -> Result<HashMap<(String, i32, i64), i64>> {
    // Per partition, the offsets still wanted, ascending.
    let mut want: HashMap<Tp, Vec<i64>> = HashMap::new();
    for (t, p, o) in todo {
        want.entry((t.clone(), *p)).or_default().push(*o);
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, p), offs) in want.iter_mut() {
        offs.sort_unstable();
        offs.dedup();
        tpl.add_partition_offset(t, *p, Offset::Offset(offs[0]))
            .map_err(|e| Error::kafka("building peek assignment", e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::kafka("assigning peek partitions", e))?;
    let mut found = HashMap::new();
    let deadline = Instant::now() + wait;
    while !want.is_empty() && Instant::now() < deadline {
        let m = match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                let kind = e
                    .rdkafka_error_code()
                    .map(kafka_code)
                    .unwrap_or(ErrorKind::Internal);
                tracing::debug!(error = %e, %kind, "peek fetch error");
                continue;
            }
            None => continue,
        };
        let tp = (m.topic().to_string(), m.partition());
        let Some(offs) = want.get_mut(&tp) else {
            continue;
        };
        let Some(ts) = m.timestamp().to_millis() else {
            continue;
        };
        // Every wanted offset at or below this record resolves to it: equal is the
        // record itself; below means the wanted one is gone (retention, compaction)
        // and this is the oldest record after it.
        while offs.first().is_some_and(|o| *o <= m.offset()) {
            let o = offs.remove(0);
            found.insert((tp.0.clone(), tp.1, o), ts);
        }
        match offs.first() {
            None => {
                want.remove(&tp);
            }
            // Far ahead: jump instead of reading everything in between.
            Some(next) if *next > m.offset() + 1000 => {
                if let Err(e) =
                    consumer.seek(&tp.0, tp.1, Offset::Offset(*next), Duration::from_secs(5))
                {
                    tracing::debug!(error = %e, "peek seek failed");
                }
            }
            Some(_) => {}
        }
    }
    Ok(found)
}
