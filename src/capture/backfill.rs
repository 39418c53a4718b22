//! Backfill: existing rows into the topics as `op=r` events while the stream keeps running,
//! consistent with it — the DBLog watermark scheme, inside the capture process.
//!
//! ```text
//!   worker (own SQL connection)             replication stream (capture loop)
//!   ─────────────────────────               ──────────────────────────────────
//!   emit message low(id)  ───── WAL ──────▶ low(id): open a window for the table
//!   SELECT next chunk by key                 row changes of the table: remember their keys
//!     (short, no long transaction)
//!   hand the rows to capture
//!   emit message high(id) ───── WAL ──────▶ high(id): drop the chunk rows whose key changed in
//!                                           the window (the stream already carries newer
//!                                           state), emit the rest as op=r in high's
//!                                           transaction, close the window
//!   wait until that transaction is acked ◀── acker: Kafka acknowledged every event of it
//!   progress := chunk's last key (durable, in cutover.backfill on the source); throttle
//! ```
//!
//! Invariants: chunk rows are emitted at the high watermark's position, after every stream
//! event before it, so per-key order holds; progress moves only after Kafka acknowledged the
//! chunk, so a crash redoes at most the chunk in flight (upserts: harmless) and never skips
//! one. No transaction stays open longer than one chunk's SELECT, so nothing pins the source.
//!
//! Requests live in `cutover.backfill` on the source (`cutover backfill` writes them and shows
//! progress); the coordinator in the running capture picks them up, `source.backfill_concurrency`
//! tables at a time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::pgoutput::Datum;
use crate::config::Config;
use crate::database::ident::{literal as lit, qualified, quote};
use crate::error::{Error, Result};
use crate::event::TableId;
use crate::state::backfill;

/// Prefix of the watermark messages.
pub const WATERMARK_PREFIX: &str = "cutover.backfill";

/// A chunk handed from a worker to the stream.
pub struct Chunk {
    pub table: TableId,
    pub rows: Vec<Vec<Datum>>,
    /// Fired once the high watermark's transaction (with the chunk's events) is acknowledged.
    pub done: oneshot::Sender<()>,
}

/// What workers and the stream share.
#[derive(Default)]
pub struct Shared {
    chunks: Mutex<HashMap<u64, Chunk>>,
    /// Chunks this capture's workers started (low watermark written, high not yet acted
    /// on): only their watermarks open windows.
    started: Mutex<HashSet<u64>>,
}

impl Shared {
    fn begin(&self, id: u64) {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }
    /// The chunk is over (acknowledged, failed or abandoned): its window may go.
    fn end(&self, id: u64) {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
    /// Did this capture start chunk `id`?
    pub fn started(&self, id: u64) -> bool {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }
    pub fn take(&self, id: u64) -> Option<Chunk> {
        self.chunks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }
    fn put(&self, id: u64, c: Chunk) {
        self.chunks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, c);
    }
}

/// A watermark message: `<id> low|high <schema.table>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub id: u64,
    pub high: bool,
    pub table: String,
}

impl Watermark {
    pub fn parse(content: &[u8]) -> Option<Watermark> {
        let s = std::str::from_utf8(content).ok()?;
        let mut it = s.splitn(3, ' ');
        let id = it.next()?.parse().ok()?;
        let high = match it.next()? {
            "low" => false,
            "high" => true,
            _ => return None,
        };
        Some(Watermark {
            id,
            high,
            table: it.next()?.to_string(),
        })
    }
}

fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    (t << 12) ^ N.fetch_add(1, Ordering::Relaxed)
}

async fn connect(cfg: &Config) -> Result<Client> {
    let c = crate::database::Endpoint::source(cfg).connect().await?;
    // The replication session's text formats, so chunk rows encode like stream rows.
    c.batch_execute(
        "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'iso_8601';
         SET extra_float_digits = 3; SET bytea_output = 'hex';",
    )
    .await
    .map_err(|e| Error::postgres("backfill session settings", e))?;
    Ok(c)
}

/// The coordinator: picks up requested tables, runs up to `source.backfill_concurrency`
/// workers, until the capture stops (the task is aborted with it).
pub async fn coordinate(cfg: Config, shared: Arc<Shared>) {
    let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut client: Option<Client> = None;
    loop {
        running.retain(|_, h| !h.is_finished());
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match connect(&cfg).await {
                Ok(c) => match crate::state::ensure_backfill(&c).await {
                    Ok(()) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "backfill: cannot create cutover.backfill");
                        None
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "backfill coordinator: source unreachable");
                    None
                }
            };
        }
        if let Some(c) = &client {
            match backfill::open_requests(c, &cfg.name).await {
                Ok(tables) => {
                    for table in tables {
                        if running.contains_key(&table)
                            || running.len() >= cfg.source.backfill_concurrency.max(1)
                        {
                            continue;
                        }
                        let (cfg, shared, t) = (cfg.clone(), shared.clone(), table.clone());
                        running.insert(
                            table,
                            tokio::spawn(async move {
                                if let Err(e) = run_table(&cfg, &shared, &t).await {
                                    tracing::warn!(table = %t, error = %e, "backfill worker stopped (resumes from its last chunk)");
                                }
                            }),
                        );
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "backfill coordinator: cannot read requests");
                    client = None;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Key columns (primary key or configured) and every replicated column, in attnum order.
async fn layout(
    c: &Client,
    cfg: &Config,
    t: &TableId,
) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
    let cols: Vec<String> = c
        .query(
            "SELECT attname::text FROM pg_attribute
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
             ORDER BY attnum",
            &[&qualified(t)],
        )
        .await
        .map_err(|e| Error::postgres(format!("columns of {t}"), e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if cols.is_empty() {
        return Err(Error::config(format!("backfill: table {t} does not exist")));
    }
    let key: Vec<String> = match cfg.source.key_columns.get(&t.to_string()) {
        Some(k) => k.clone(),
        None => c
            .query(
                "SELECT a.attname::text FROM pg_index i
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(n, ord) ON true
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                 WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY k.ord",
                &[&qualified(t)],
            )
            .await
            .map_err(|e| Error::postgres(format!("primary key of {t}"), e))?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    };
    if key.is_empty() {
        return Err(Error::config(format!(
            "backfill: table {t} has no primary key (configure source.key_columns.\"{t}\")"
        )));
    }
    let mut types = Vec::new();
    for k in &key {
        let ty: String = c
            .query_one(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                 WHERE attrelid = to_regclass($1) AND attname = $2",
                &[&qualified(t), k],
            )
            .await
            .map_err(|e| Error::postgres(format!("type of {t}.{k}"), e))?
            .get(0);
        types.push(ty);
    }
    Ok((key, cols, types))
}

/// One table's chunk reads: keyset pagination in key order, in the replication session's
/// text formats, so chunk rows encode exactly like stream rows.
struct Chunks {
    c: Client,
    /// The table as requested (`schema.table`), named in the watermarks.
    name: String,
    table: TableId,
    key: Vec<String>,
    key_types: Vec<String>,
    /// Position of each key column among `cols`.
    key_idx: Vec<usize>,
    cols: Vec<String>,
    chunk_rows: i32,
}

impl Chunks {
    /// Up to `chunk_rows` rows after `last` (a key, in key order), and the last one's key.
    async fn read(
        &self,
        last: &Option<Vec<String>>,
    ) -> Result<(Vec<Vec<Datum>>, Option<Vec<String>>)> {
        let list = |names: &[String]| {
            names
                .iter()
                .map(|k| quote(k))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let after = match last {
            None => "true".to_string(),
            Some(vals) => {
                // Compare in the key columns' own types, not as text. The key values are
                // escaped literals (database::ident), not bind parameters: the chunk rows must
                // come back in the server's text output, which only the simple protocol
                // (no parameters) gives; `::text` casts would change values (char(n) loses
                // its padding) and the extended protocol returns binary.
                let typed: Vec<String> = vals
                    .iter()
                    .zip(&self.key_types)
                    .map(|(v, ty)| format!("{}::{ty}", lit(v)))
                    .collect();
                format!("ROW({}) > ROW({})", list(&self.key), typed.join(", "))
            }
        };
        let sql = format!(
            "SELECT {} FROM {} WHERE {after} ORDER BY {} LIMIT {}",
            list(&self.cols),
            qualified(&self.table),
            list(&self.key),
            self.chunk_rows
        );
        let mut rows: Vec<Vec<Datum>> = Vec::new();
        let mut last_key: Option<Vec<String>> = None;
        for m in self
            .c
            .simple_query(&sql)
            .await
            .map_err(|e| Error::postgres(format!("reading a chunk of {}", self.table), e))?
        {
            if let SimpleQueryMessage::Row(r) = m {
                let vals: Vec<Option<&str>> = (0..r.len()).map(|i| r.get(i)).collect();
                last_key = Some(
                    self.key_idx
                        .iter()
                        .map(|&i| vals[i].unwrap_or_default().to_string())
                        .collect(),
                );
                rows.push(
                    vals.iter()
                        .map(|v| match v {
                            None => Datum::Null,
                            Some(s) => Datum::Text(bytes::Bytes::copy_from_slice(s.as_bytes())),
                        })
                        .collect(),
                );
            }
        }
        Ok((rows, last_key))
    }

    /// The low or high watermark of chunk `id`, as a transactional logical message (prefix
    /// and content as bind parameters).
    async fn watermark(&self, id: u64, which: &str) -> Result<()> {
        let content = format!("{id} {which} {}", self.name);
        self.c
            .execute(
                "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
                &[&WATERMARK_PREFIX, &content],
            )
            .await
            .map_err(|e| Error::postgres(format!("writing the {which} watermark"), e))?;
        Ok(())
    }
}

/// Backfill one table from its stored position to the end.
async fn run_table(cfg: &Config, shared: &Shared, table: &str) -> Result<()> {
    let c = connect(cfg).await?;
    let t = crate::apply::mapping::table_id(table);
    let (key, cols, key_types) = layout(&c, cfg, &t).await?;
    let key_idx: Vec<usize> = key
        .iter()
        .map(|k| cols.iter().position(|c| c == k).unwrap_or(0))
        .collect();
    let claim = backfill::claim(&c, &cfg.name, table).await?;
    let (mut last, per_sec, estimated) = (claim.last_key, claim.rows_per_sec, claim.rows_estimated);
    let mut done_rows = claim.rows_done;
    super::metrics::backfill_estimated(table, estimated);
    tracing::info!(table, chunk_rows = claim.chunk_rows, rows_per_sec = per_sec, resume_after = ?last, "backfill started");
    let chunks = Chunks {
        c,
        name: table.to_string(),
        table: t.clone(),
        key,
        key_types,
        key_idx,
        cols,
        chunk_rows: claim.chunk_rows,
    };
    let started = Instant::now();
    let mut this_run = 0i64;
    loop {
        let id = next_id();
        shared.begin(id);
        let outcome = chunk_round(&chunks, shared, id, &last).await;
        shared.end(id);
        let (n, last_key) = outcome?;
        done_rows += n;
        this_run += n;
        if last_key.is_some() {
            last = last_key;
        }
        let finished = n < chunks.chunk_rows as i64;
        backfill::save_chunk(&chunks.c, &cfg.name, table, &last, done_rows, finished).await?;
        let rate = this_run as f64 / started.elapsed().as_secs_f64().max(0.001);
        let eta = if rate > 0.0 {
            (estimated - done_rows).max(0) as f64 / rate
        } else {
            0.0
        };
        super::metrics::backfill_progress(table, n, if finished { 0.0 } else { eta });
        if finished {
            tracing::info!(
                table,
                rows = done_rows,
                secs = started.elapsed().as_secs_f64(),
                "backfill done"
            );
            return Ok(());
        }
        if per_sec > 0 {
            let due = Duration::from_secs_f64(this_run as f64 / per_sec as f64);
            let spent = started.elapsed();
            if due > spent {
                tokio::time::sleep(due - spent).await;
            }
        }
    }
}

/// The chunk is durable in Kafka once capture's acker confirmed its high watermark's
/// transaction.
/// One chunk: low watermark, read, hand the rows to capture, high watermark, wait for
/// capture to emit them and Kafka to acknowledge. Returns the rows read and the last key.
async fn chunk_round(
    chunks: &Chunks,
    shared: &Shared,
    id: u64,
    last: &Option<Vec<String>>,
) -> Result<(i64, Option<Vec<String>>)> {
    chunks.watermark(id, "low").await?;
    let (rows, last_key) = chunks.read(last).await?;
    let n = rows.len() as i64;
    let (tx, rx) = oneshot::channel();
    shared.put(
        id,
        Chunk {
            table: chunks.table.clone(),
            rows,
            done: tx,
        },
    );
    chunks.watermark(id, "high").await?;
    acknowledged(rx).await?;
    Ok((n, last_key))
}

async fn acknowledged(rx: oneshot::Receiver<()>) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(600), rx)
        .await
        .map_err(|_| {
            Error::new(
                crate::ErrorKind::Timeout,
                "chunk not acknowledged within 600 s",
            )
        })?
        .map_err(|_| {
            Error::new(
                crate::ErrorKind::Unavailable,
                "capture stopped before the chunk was acknowledged",
            )
        })
}

/// Default bound of a window's keys (`source.backfill_window_max_keys`): a window spans one
/// chunk read, so this many changed keys of one table in that time means the chunk is better
/// read again.
pub const WINDOW_MAX_KEYS: usize = 200_000;

/// Open watermark windows of the stream: chunk id → (table, encoded keys changed since low).
///
/// ```text
///   low of a chunk this capture started ──▶ window opens (anything else: counted, ignored)
///   row change of its table             ──▶ key noted (at most max_keys, then the window
///                                           overflows: no keys kept, chunk re-read)
///   open longer than max_age            ──▶ the window expires: no keys kept, chunk re-read
///   high                                ──▶ window closes; its chunk's rows not noted are emitted
/// ```
/// Memory is bounded: windows exist only for chunks in flight (at most
/// `source.backfill_concurrency`), each with at most `max_keys` keys, for at most `max_age`.
pub struct Windows {
    open: HashMap<u64, Window>,
    max_keys: usize,
    max_age: Duration,
}

impl Default for Windows {
    fn default() -> Self {
        Windows::new(WINDOW_MAX_KEYS, Duration::from_secs(600))
    }
}

struct Window {
    table: TableId,
    keys: HashSet<Vec<u8>>,
    opened: Instant,
    /// Overflowed or expired: keeps nothing, its chunk is read again.
    spent: bool,
}

/// What happened to windows while a row change was noted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Spent {
    pub overflowed: usize,
    pub expired: usize,
}

impl Windows {
    pub fn new(max_keys: usize, max_age: Duration) -> Windows {
        Windows {
            open: HashMap::new(),
            max_keys: max_keys.max(1),
            max_age,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
    /// Open chunk `id`'s window if this capture started that chunk; `false` (ignored) if not.
    /// Windows of chunks that ended without their high watermark (a worker failed) go.
    pub fn open(&mut self, id: u64, table: TableId, shared: &Shared) -> bool {
        self.open.retain(|w, _| shared.started(*w));
        if !shared.started(id) {
            return false;
        }
        self.open.insert(
            id,
            Window {
                table,
                keys: HashSet::new(),
                opened: Instant::now(),
                spent: false,
            },
        );
        true
    }
    /// Close chunk `id`'s window: its keys, or `None` when there was none, or it overflowed
    /// or expired.
    pub fn close(&mut self, id: u64) -> Option<HashSet<Vec<u8>>> {
        let w = self.open.remove(&id)?;
        let expired = w.opened.elapsed() > self.max_age;
        (!w.spent && !expired).then_some(w.keys)
    }
    /// A row change of `table` with this encoded key happened inside every open window of it.
    /// Returns how many windows overflowed or expired with it.
    pub fn saw(&mut self, table: &TableId, key: Vec<u8>) -> Spent {
        self.saw_at(table, key, Instant::now())
    }

    fn saw_at(&mut self, table: &TableId, key: Vec<u8>, now: Instant) -> Spent {
        let mut spent = Spent::default();
        for w in self.open.values_mut() {
            if w.spent {
                continue;
            }
            if now.saturating_duration_since(w.opened) > self.max_age {
                w.spent = true;
                w.keys = HashSet::new();
                spent.expired += 1;
            } else if &w.table != table {
                continue;
            } else if w.keys.len() >= self.max_keys {
                w.spent = true;
                w.keys = HashSet::new();
                spent.overflowed += 1;
            } else {
                w.keys.insert(key.clone());
            }
        }
        spent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_round_trip() {
        let w = Watermark::parse(b"42 low public.orders").unwrap();
        assert_eq!(
            w,
            Watermark {
                id: 42,
                high: false,
                table: "public.orders".into()
            }
        );
        assert!(Watermark::parse(b"42 high s.t with space").unwrap().high);
        assert_eq!(Watermark::parse(b"x low t"), None);
        assert_eq!(Watermark::parse(b"1 middle t"), None);
    }

    #[test]
    fn windows_collect_keys_of_their_table_only() {
        let shared = Shared::default();
        shared.begin(1);
        shared.begin(2);
        let mut w = Windows::default();
        let (a, b) = (TableId::new("s", "a"), TableId::new("s", "b"));
        assert!(w.open(1, a.clone(), &shared));
        w.saw(&a, vec![1]);
        w.saw(&b, vec![2]);
        assert!(w.open(2, a.clone(), &shared));
        w.saw(&a, vec![3]);
        assert_eq!(w.close(1).unwrap(), HashSet::from([vec![1], vec![3]]));
        assert_eq!(w.close(2).unwrap(), HashSet::from([vec![3]]));
        assert!(w.close(1).is_none() && w.is_empty());
    }

    #[test]
    fn only_chunks_this_capture_started_open_windows_and_memory_stays_bounded() {
        let shared = Shared::default();
        let mut w = Windows::default();
        let t = TableId::new("s", "t");
        // A flood of forged or foreign lows opens nothing.
        for id in 0..100_000u64 {
            assert!(!w.open(id, t.clone(), &shared));
        }
        assert!(w.is_empty());
        // A window of a chunk that ended without its high (worker failed) goes at the next open.
        shared.begin(7);
        assert!(w.open(7, t.clone(), &shared));
        shared.end(7);
        shared.begin(8);
        assert!(w.open(8, t.clone(), &shared));
        assert!(w.close(7).is_none());
        // A window that outgrows its bound keeps nothing and makes its chunk be read again.
        let mut overflowed = 0;
        for k in 0..(WINDOW_MAX_KEYS as u32 + 10) {
            overflowed += w.saw(&t, k.to_be_bytes().to_vec()).overflowed;
        }
        assert_eq!(overflowed, 1);
        assert!(w.close(8).is_none(), "an overflowed window emits nothing");
    }

    #[test]
    fn a_window_open_longer_than_its_age_expires_and_keeps_nothing() {
        let shared = Shared::default();
        let mut w = Windows::new(10, Duration::from_secs(60));
        let (a, b) = (TableId::new("s", "a"), TableId::new("s", "b"));
        shared.begin(1);
        shared.begin(2);
        assert!(w.open(1, a.clone(), &shared));
        assert!(w.open(2, a.clone(), &shared));
        let opened = Instant::now();
        assert_eq!(w.saw_at(&a, vec![1], opened), Spent::default());
        // Any row change (of any table) after max_age expires both windows once.
        let later = opened + Duration::from_secs(61);
        assert_eq!(
            w.saw_at(&b, vec![9], later),
            Spent {
                overflowed: 0,
                expired: 2
            }
        );
        assert_eq!(w.saw_at(&a, vec![2], later), Spent::default());
        assert!(w.close(1).is_none() && w.close(2).is_none());
        // A configured key bound is honoured.
        shared.begin(3);
        assert!(w.open(3, a.clone(), &shared));
        let spent: usize = (0..11u8).map(|k| w.saw(&a, vec![k]).overflowed).sum();
        assert_eq!(spent, 1);
        assert!(w.close(3).is_none());
    }

    #[test]
    fn an_idle_window_past_its_age_emits_nothing_at_close() {
        let shared = Shared::default();
        let mut w = Windows::new(10, Duration::from_millis(0));
        let a = TableId::new("s", "a");
        shared.begin(1);
        assert!(w.open(1, a, &shared));
        std::thread::sleep(Duration::from_millis(2));
        assert!(w.close(1).is_none());
    }
}
