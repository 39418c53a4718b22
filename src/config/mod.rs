//! Typed configuration: one TOML file plus `CUTOVER__SECTION__KEY` environment overrides.
//!
//! ```text
//!   built-in local default ─┐
//!   or --config FILE ───────┼─▶ config crate ─▶ serde (deny_unknown_fields, field paths) ─▶ validate()
//!   CUTOVER__* env vars ────┘        (env wins)
//! ```
//!
//! Every struct rejects unknown keys, so a typo is an error naming its path, not a silently
//! ignored setting. [`Config::validate`] checks the rules serde cannot express and reports every
//! violation as `path: rule` (e.g. `kafka.brokers: must not be empty`). Durations carry their
//! unit in the key (`_ms`, `_secs`). Secrets are [`Secret`]/[`DbUrl`] and never print.

mod compatibility;
mod kafka;
mod secret;
mod secret_sources;
mod tables;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

pub use compatibility::Compatibility;
pub use kafka::{GroupProtocol, KafkaConfig, KafkaProperties};
pub use secret::{is_secret_property, redact_conninfo, DbUrl, Secret, REDACTED};
pub use secret_sources::sink_password_var;
pub use tables::{RouteConfig, TableMapping, TruncatePolicy, Unmapped};
pub use validate::{FieldError, ValidationErrors};

use crate::error::{Error, ErrorKind, Result};

/// The default configuration for the local stack (`make up`): legacy on 5433, new on 5434,
/// the broker on 9092, the embedded registry on 8081. Used when no `--config` is given.
pub const LOCAL_DEFAULT_TOML: &str = include_str!("../../deploy/config/cutover.local.toml");

/// Environment variable prefix; nested keys are separated by `__`.
pub const ENV_PREFIX: &str = "CUTOVER";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Pipeline name: the connector name in event `source` blocks and the stem of slot,
    /// publication, origin and consumer-group names.
    pub name: String,
    /// Topics are `<topic_prefix>.<schema>.<table>`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    pub source: SourceConfig,
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
    #[serde(default)]
    pub registry_server: RegistryServerConfig,
    #[serde(default)]
    pub observe: ObserveConfig,
    #[serde(default)]
    pub monitor: MonitorConfig,
    /// Continuous comparison of legacy and each sink's target (`cutover reconcile`).
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// The reverse pipeline (new store → legacy) and the per-table cutover phases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backsync: Option<BacksyncConfig>,
    /// Which way this configuration replicates: `Forward` as loaded; `Reverse` for the
    /// configuration [`Config::reverse`] derives for `cutover backsync`.
    #[serde(skip)]
    pub direction: Direction,
    /// The sinks of the other direction (set by [`Config::reverse`]: the forward sinks), so
    /// a capture knows every writer of its pipeline ([`Config::writers`]).
    #[serde(skip)]
    pub peer_sinks: Vec<String>,
}

/// What capture does with a table that has no key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnkeyedTables {
    #[default]
    DeadLetter,
    Fail,
}

/// Which way a pipeline replicates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Direction {
    /// legacy → stores (capture of the legacy database).
    #[default]
    Forward,
    /// new store → legacy (the back-sync).
    Reverse,
}

/// How a conflict (both sides changed the same row in the `dual` phase) is resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// The side that owns the table in the current phase wins (legacy in `forward` and
    /// `dual`, the new store in `reverse`).
    #[default]
    SourceOfTruth,
    /// The change with the later commit timestamp wins; ties go to legacy; a delete beats a
    /// concurrent update.
    LastWriterWins,
}

impl ConflictPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::SourceOfTruth => "source_of_truth",
            ConflictPolicy::LastWriterWins => "last_writer_wins",
        }
    }
}

/// The back-sync: the new store is captured (its own slot and publication, the same capture
/// code) to `<topic_prefix>.back.<schema>.<table>` and applied to legacy through `mappings`
/// (new contract → old shape) by the sink `backsync`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BacksyncConfig {
    /// The new store's database (libpq URL or key/value form).
    pub url: DbUrl,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the password (a mounted Secret); instead of `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
    /// How the back-sync's sink connects to legacy, to write there: a role of its own with
    /// the sink privileges (docs/SECURITY.md). Defaults to `source.url` and its password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_url: Option<DbUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_password_file: Option<std::path::PathBuf>,
    /// Replication slot on the new store (created if missing).
    pub slot: String,
    /// Publication on the new store (created if missing).
    pub publication: String,
    /// Capture every table of these schemas of the new store.
    #[serde(default, deserialize_with = "string_or_list")]
    pub schemas: Vec<String>,
    /// Capture these tables of the new store (`schema.table`).
    #[serde(default, deserialize_with = "string_or_list")]
    pub tables: Vec<String>,
    /// The forward sink that writes the new store: it follows the table phases, and its
    /// writes are the ones the back-sync must never echo.
    pub forward_sink: String,
    #[serde(default)]
    pub conflict_policy: ConflictPolicy,
    /// New table → legacy table (same keys as `[[sinks.tables]]`); tables without an entry
    /// follow `unmapped_tables`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<TableMapping>,
    /// New-store tables without a `mappings` entry: `skip` (default: not applied to legacy) or
    /// `identity` (applied to the legacy table of the same schema, name and columns; for
    /// migrations where the new store keeps the legacy shape). Legacy tables are never
    /// created by the back-sync.
    #[serde(default = "default_backsync_unmapped")]
    pub unmapped_tables: Unmapped,
    /// `cutover phase set` refuses unless both directions' oldest unapplied event is younger
    /// than this.
    #[serde(default = "default_gate_max_lag_secs")]
    pub gate_max_lag_secs: u64,
    #[serde(default = "default_batch_max_ms")]
    pub batch_max_ms: u64,
}

fn default_gate_max_lag_secs() -> u64 {
    10
}

fn default_backsync_unmapped() -> Unmapped {
    Unmapped::Skip
}

/// The name of the sink that applies the back-sync to legacy.
pub const BACKSYNC_SINK: &str = "backsync";

/// The legacy (captured) PostgreSQL database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// libpq connection string, URL or key/value form.
    pub url: DbUrl,
    /// Password, if not in `url` (prefer `CUTOVER__SOURCE__PASSWORD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the password (a mounted Secret); instead of `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
    /// Logical replication slot name (created if missing).
    pub slot: String,
    /// Publication name (created if missing).
    pub publication: String,
    /// Capture every table of these schemas, including tables created later.
    #[serde(default, deserialize_with = "string_or_list")]
    pub schemas: Vec<String>,
    /// Capture these tables (`schema.table`), in addition to `schemas`.
    #[serde(default, deserialize_with = "string_or_list")]
    pub tables: Vec<String>,
    /// Key columns for tables without a primary key: `"schema.table" = ["col", ...]`.
    #[serde(default)]
    pub key_columns: BTreeMap<String, Vec<String>>,
    /// A captured table with no key (no primary key, no `key_columns`, not `REPLICA IDENTITY
    /// FULL`): `dead_letter` (default) sends its rows to the capture dead-letter topic, so
    /// nothing is lost and every other table goes on (the dead-letter alert fires); `fail`
    /// stops capture until the table gets a key.
    #[serde(default)]
    pub unkeyed_tables: UnkeyedTables,
    /// How often to emit a heartbeat so an idle slot still advances.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_interval_secs: u64,
    /// How often to send a standby status update to the server.
    #[serde(default = "default_status_secs")]
    pub status_interval_secs: u64,
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// How many tables a running capture backfills at once (`cutover backfill`).
    #[serde(default = "default_backfill_concurrency")]
    pub backfill_concurrency: usize,
    /// A backfill chunk's watermark window collects the keys the stream changes while the
    /// chunk is read; past this many keys it overflows (keeps nothing) and the chunk is read
    /// again.
    #[serde(default = "default_window_max_keys")]
    pub backfill_window_max_keys: usize,
    /// A window still open this long after its low watermark expires (its keys dropped,
    /// counted as `expired`) and its chunk is read again.
    #[serde(default = "default_window_max_secs")]
    pub backfill_window_max_secs: u64,
    /// Columns left out of the events of a table: `"schema.table" = ["col", ...]`. The
    /// column is absent from the value schema and never read; key columns cannot be left out.
    #[serde(default)]
    pub exclude_columns: BTreeMap<String, Vec<String>>,
    /// Text and bytea columns cut to at most this many bytes (text on a character
    /// boundary): `"schema.table" = { col = bytes }`. Events carry the cut value and name
    /// the cut columns in their `truncated` field; key columns cannot be cut.
    #[serde(default)]
    pub truncate_columns: BTreeMap<String, BTreeMap<String, usize>>,
    /// How often a standby capture (another instance leads the slot) checks whether it can
    /// take over.
    #[serde(default = "default_standby_poll_ms")]
    pub standby_poll_ms: u64,
}

fn default_backfill_concurrency() -> usize {
    2
}

fn default_window_max_keys() -> usize {
    200_000
}

fn default_window_max_secs() -> u64 {
    600
}

fn default_standby_poll_ms() -> u64 {
    1000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Confluent-compatible schema registry base URL.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the password (a mounted Secret); instead of `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
    /// Bearer token sent instead of basic auth (`Authorization: Bearer <token>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<std::path::PathBuf>,
    /// PEM file of the CAs to trust for an `https://` registry (only they are trusted);
    /// the system's roots when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    #[serde(default = "default_registry_timeout_ms")]
    pub timeout_ms: u64,
}

/// The embedded registry served by `cutover registry`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryServerConfig {
    pub listen: String,
    /// Directory holding the durable schema log.
    pub data_dir: PathBuf,
    /// Compatibility level for subjects without their own (`BACKWARD` like Confluent).
    pub default_compatibility: Compatibility,
    /// HTTP basic auth: every request must carry these credentials (or `token`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Bearer token accepted instead of basic auth (`Authorization: Bearer <token>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Largest request body accepted (413 beyond it).
    pub max_body_bytes: usize,
    /// A request not answered within this time (including the wait for a slot) gets 500 /
    /// error_code 50002.
    pub request_timeout_ms: u64,
    /// Requests served at once; more wait for a slot within their timeout.
    pub max_concurrent_requests: usize,
}

impl Default for RegistryServerConfig {
    fn default() -> Self {
        RegistryServerConfig {
            listen: "127.0.0.1:8081".into(),
            data_dir: PathBuf::from(".local/registry"),
            default_compatibility: Compatibility::Backward,
            username: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            max_body_bytes: 4 * 1024 * 1024,
            request_timeout_ms: 30_000,
            max_concurrent_requests: 64,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObserveConfig {
    /// Address of the HTTP endpoint serving `/metrics`, `/healthz`, `/readyz`; empty disables.
    pub listen: String,
    /// `text` or `json`.
    pub log_format: String,
    /// A tracing `EnvFilter` directive (`info`, `cutover=debug,rdkafka=warn`).
    pub log_level: String,
    /// Let error messages (so log lines and dead-letter headers) quote row values: the
    /// server's DETAIL (`Key (id)=(5) already exists`, `Failing row contains ...`) and the
    /// codec's rejected value. Off by default (personal data stays out of logs); for debugging.
    pub log_row_values: bool,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        ObserveConfig {
            listen: "127.0.0.1:9464".into(),
            log_format: "text".into(),
            log_level: "info".into(),
            log_row_values: false,
        }
    }
}

/// The lag and slot monitor (`crate::monitor`) and the thresholds `cutover status` judges
/// health by. The monitor reads broker watermarks, every sink's committed offsets and the
/// replication slot; it runs inside `cutover run`, inside `cutover capture` unless
/// `embedded = false`, and on its own as `cutover monitor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Run the monitor inside `cutover capture`. Turn off when a separate `cutover monitor`
    /// service runs (recommended in production: it keeps reporting while capture is down).
    pub embedded: bool,
    /// How often the monitor probes (and refreshes its gauges).
    pub interval_ms: u64,
    /// `cutover status` says degraded when a sink's oldest unapplied event is older than this.
    pub lag_degraded_secs: u64,
    /// `cutover status` says stalled when a sink has unapplied events and applied nothing
    /// for this long.
    pub stalled_after_secs: u64,
    /// `cutover status` says degraded when the slot retains more WAL than this.
    pub slot_retained_degraded_bytes: u64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            embedded: true,
            interval_ms: 10_000,
            lag_degraded_secs: 300,
            stalled_after_secs: 120,
            slot_retained_degraded_bytes: 10 << 30,
        }
    }
}

/// What reconcile does about the differences it confirms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairMode {
    /// Record them in the ledger only.
    Off,
    /// Record them, and log and count the repair `auto` would make.
    #[default]
    Report,
    /// Repair them like `verify --repair` (re-emit missing/different rows from the source,
    /// delete extra target rows), at most `repair_max_rows` per pass, each one audited.
    Auto,
}

/// `cutover reconcile`: every table every (chosen) sink maps, compared pass after pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Run reconcile inside `cutover run` (it also runs on its own as `cutover reconcile`).
    /// When enabled, `phase set --to reverse` also requires a recent reconcile pass.
    pub enabled: bool,
    /// Sinks to reconcile (empty: every sink).
    pub sinks: Vec<String>,
    /// Read budget: rows per second over both sides together (0: unthrottled).
    pub rows_per_sec: u64,
    /// Keys per compared chunk.
    pub chunk_rows: i64,
    /// Pause between two passes.
    pub pause_secs: u64,
    /// A difference is re-checked after the sink's measured lag, and never sooner than this.
    pub min_recheck_secs: u64,
    pub repair: RepairMode,
    /// Rows `repair = "auto"` may repair in one pass; the rest wait for the next.
    pub repair_max_rows: u64,
    /// `phase set --to reverse` needs a pass with at least this parity (0..1).
    pub gate_min_parity: f64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            enabled: false,
            sinks: Vec::new(),
            rows_per_sec: 5_000,
            chunk_rows: 10_000,
            pause_secs: 300,
            min_recheck_secs: 5,
            repair: RepairMode::Report,
            repair_max_rows: 1_000,
            gate_min_parity: 0.9999,
        }
    }
}

/// A target store fed by its own consumer group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub name: String,
    pub url: DbUrl,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the password (a mounted Secret); instead of `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
    /// Consumer group; defaults to `<name of pipeline>.sink.<sink name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Static group membership (`group.instance.id`, KIP-345): a restarted instance with the
    /// same id takes its predecessor's partitions at once instead of waiting for a session
    /// timeout. Use a stable per-instance name (a StatefulSet pod name); never share one
    /// between two running instances. Usually set per process: `--instance-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// A batch (one target transaction) closes at this many events …
    #[serde(default = "default_batch_max_rows")]
    pub batch_max_rows: usize,
    /// … or this many bytes of Kafka payload …
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// … or this long after its first event …
    #[serde(default = "default_batch_max_ms")]
    pub batch_max_ms: u64,
    /// … or once no further event arrived for this long (0, the default: as soon as the
    /// consumer has nothing more queued). Under a backlog the queue never drains and batches
    /// fill up to the limits above; once caught up, an event waits only for the batch in
    /// flight, not for `batch_max_ms`. Raise it to trade latency for fewer, larger target
    /// transactions on a trickle of events.
    #[serde(default)]
    pub batch_linger_ms: u64,
    /// Target connections a batch is applied on in parallel: the batch's partitions are dealt
    /// out over them and each connection commits its share (data and that share's progress
    /// rows) in its own transaction. Per-key order holds (a key lives in one partition, a
    /// partition in one connection per batch); what is given up is the order *between*
    /// partitions inside one batch, which Kafka never promised across batches either. A batch
    /// with a TRUNCATE, a back-sync role's batch, and a batch whose parallel attempt hit a data
    /// error (e.g. a foreign key whose parent is in another partition of the same batch) are
    /// applied on one connection in source order. Each connection binds its own replication
    /// origin (`…`, `…:1`, …).
    #[serde(default = "default_apply_connections")]
    pub apply_connections: usize,
    #[serde(default)]
    pub truncate: TruncatePolicy,
    #[serde(default)]
    pub unmapped_tables: Unmapped,
    /// Create missing target tables for identity-mapped tables (and add new columns).
    #[serde(default = "default_true")]
    pub create_tables: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableMapping>,
}

fn default_batch_max_rows() -> usize {
    5_000
}
fn default_batch_max_bytes() -> usize {
    16 << 20
}
fn default_batch_max_ms() -> u64 {
    100
}
fn default_apply_connections() -> usize {
    1
}
fn default_true() -> bool {
    true
}

fn default_topic_prefix() -> String {
    "cutover".into()
}
fn default_heartbeat_secs() -> u64 {
    10
}
fn default_status_secs() -> u64 {
    5
}
fn default_connect_timeout_secs() -> u64 {
    10
}
fn default_registry_timeout_ms() -> u64 {
    10_000
}

/// Accept `["a", "b"]` or `"a,b"` (the form environment variables can express).
pub(super) fn string_or_list<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

/// Where a configuration came from, for messages.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    BuiltinLocal,
    File(PathBuf),
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::BuiltinLocal => f.write_str("built-in local default"),
            ConfigSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Config {
    /// Load from `path` (or the built-in local default), apply `CUTOVER__*` environment
    /// overrides, deserialize strictly and validate.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let mut builder = config::Config::builder();
        builder = match path {
            Some(p) => {
                if !p.exists() {
                    return Err(Error::config(format!(
                        "config file {} does not exist",
                        p.display()
                    )));
                }
                builder.add_source(config::File::from(p).format(config::FileFormat::Toml))
            }
            None => builder.add_source(config::File::from_str(
                LOCAL_DEFAULT_TOML,
                config::FileFormat::Toml,
            )),
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        let env_map: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .cloned()
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env_map)),
        );
        let source = match path {
            Some(p) => ConfigSource::File(p.to_path_buf()),
            None => ConfigSource::BuiltinLocal,
        };
        let raw = builder
            .build()
            .map_err(|e| Error::config(format!("{source}: {e}")))?;
        // Go through a JSON value so serde_path_to_error can name the exact field of any
        // type or unknown-key error (`kafka.partitions: invalid type ...`).
        let value: serde_json::Value = raw
            .try_deserialize()
            .map_err(|e| Error::config(format!("{source}: {e}")))?;
        let mut cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            Error::config(format!("{source}: {path}: {}", e.into_inner()))
        })?;
        cfg.resolve_secrets(&env)
            .map_err(|e| Error::new(ErrorKind::Config, format!("{source}: {e}")))?;
        cfg.validate()
            .map_err(|e| Error::new(ErrorKind::Config, format!("{source}: {e}")))?;
        Ok(cfg)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Sink `name`, refused with the configured names when there is none.
    pub fn sink(&self, name: &str) -> Result<&SinkConfig> {
        self.sink_at(name).map(|(_, s)| s)
    }

    /// Sink `name` and its index in `sinks[]` (for field paths such as `sinks[1].url`).
    pub fn sink_at(&self, name: &str) -> Result<(usize, &SinkConfig)> {
        self.sinks
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.sinks.iter().map(|s| s.name.as_str()).collect();
                Error::new(
                    ErrorKind::Config,
                    format!("sinks: no sink named {name:?} (configured: {known:?})"),
                )
            })
    }

    pub fn observe_addr(&self) -> Option<SocketAddr> {
        if self.observe.listen.is_empty() {
            None
        } else {
            self.observe.listen.parse().ok()
        }
    }
}

impl Config {
    /// The configuration of the back-sync pipeline (`cutover backsync`): capture of the new
    /// store to `<topic_prefix>.back.*`, applied to legacy by the sink `backsync`.
    pub fn reverse(&self) -> Result<Config> {
        let b = self
            .backsync
            .as_ref()
            .ok_or_else(|| Error::config("backsync: not configured (add a [backsync] section)"))?;
        let (legacy_url, legacy_password) = match &b.legacy_url {
            Some(u) => (u.clone(), b.legacy_password.clone()),
            None => (self.source.url.clone(), self.source.password.clone()),
        };
        let mut sink: SinkConfig = serde_json::from_value(serde_json::json!({
            "name": BACKSYNC_SINK,
            "url": legacy_url.expose(),
            "group_id": format!("{}.{}", self.name, BACKSYNC_SINK),
            "batch_max_ms": b.batch_max_ms,
            "unmapped_tables": b.unmapped_tables,
            "create_tables": false,
        }))
        .map_err(|e| Error::internal(format!("back-sync sink config: {e}")))?;
        sink.password = legacy_password;
        sink.tables = b.mappings.clone();
        let mut r = self.clone();
        r.direction = Direction::Reverse;
        r.topic_prefix = format!("{}.back", self.topic_prefix);
        r.source = SourceConfig {
            url: b.url.clone(),
            password: b.password.clone(),
            password_file: b.password_file.clone(),
            slot: b.slot.clone(),
            publication: b.publication.clone(),
            schemas: b.schemas.clone(),
            tables: b.tables.clone(),
            key_columns: BTreeMap::new(),
            ..self.source.clone()
        };
        r.peer_sinks = self.sinks.iter().map(|s| s.name.clone()).collect();
        r.sinks = vec![sink];
        Ok(r)
    }

    /// Every name this pipeline's processes bind replication origins under: its sinks (both
    /// directions), the back-sync and verify's repairs. A capture skips exactly their writes.
    pub fn writers(&self) -> Vec<String> {
        self.sinks
            .iter()
            .map(|s| s.name.clone())
            .chain(self.peer_sinks.iter().cloned())
            .chain([
                BACKSYNC_SINK.to_string(),
                crate::database::origin::VERIFY_WRITER.to_string(),
            ])
            .collect()
    }
}

impl SinkConfig {
    pub fn group_id(&self, pipeline: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("{pipeline}.sink.{}", self.name))
    }
}

#[cfg(test)]
mod tests;
