//! Every metric name and label key cutover exports, defined once.
//!
//! Naming: `cutover_<subsystem>_<name>_<unit>[_total]`. Label values are drawn from small fixed
//! sets (sink names, table names from config, `op` ∈ {c,u,d,t,r}, `kind` ∈ [`ErrorKind`]
//! names) — never from unbounded data such as keys or LSNs. docs/METRICS.md documents each one.
//!
//! [`ErrorKind`]: crate::error::ErrorKind

// ---- label keys ----
use metrics::Unit;

pub const LABEL_VERSION: &str = "version";
pub const LABEL_REVISION: &str = "revision";
pub const LABEL_COMMAND: &str = "command";

// ---- process ----
/// Gauge, always 1, labels: version, revision.
pub const BUILD_INFO: &str = "cutover_build_info";
/// Gauge, 1 while the process runs, label: command.
pub const UP: &str = "cutover_up";

// ---- embedded registry ----
/// Counter, label: outcome ∈ {ok, incompatible, invalid, error}.
pub const REGISTRY_REGISTRATIONS_TOTAL: &str = "cutover_registry_registrations_total";
pub const LABEL_OUTCOME: &str = "outcome";

// ---- capture ----
pub const LABEL_TABLE: &str = "table";
pub const LABEL_OP: &str = "op";
/// Counter, labels: table, op ∈ {c,u,d,t}.
pub const CAPTURE_EVENTS_TOTAL: &str = "cutover_capture_events_total";
/// Counter (bytes of encoded values), label: table.
pub const CAPTURE_BYTES_TOTAL: &str = "cutover_capture_bytes_total";
/// Counter of source transactions seen.
pub const CAPTURE_TRANSACTIONS_TOTAL: &str = "cutover_capture_transactions_total";
/// Gauge: now − commit time of the last fully acknowledged transaction.
pub const CAPTURE_LAG_SECONDS: &str = "cutover_capture_lag_seconds";
/// Gauge: the LSN last confirmed to PostgreSQL, as a byte position.
pub const CAPTURE_CONFIRMED_POSITION_BYTES: &str = "cutover_capture_confirmed_position_bytes";
/// Gauge: messages in the producer queue, not yet acknowledged.
pub const CAPTURE_PRODUCER_QUEUE_MESSAGES: &str = "cutover_capture_producer_queue_messages";
/// Counter of rows sent to the capture dead-letter topic, label: table.
pub const CAPTURE_DLQ_EVENTS_TOTAL: &str = "cutover_capture_dlq_events_total";
/// Counter of values cut to their `source.truncate_columns` budget, label: table.
pub const CAPTURE_TRUNCATED_VALUES_TOTAL: &str = "cutover_capture_truncated_values_total";
/// Gauge: 1 while this capture waits as a standby (another instance leads its slot).
pub const CAPTURE_STANDBY: &str = "cutover_capture_standby";
/// Counter of failed deliveries.
pub const CAPTURE_PRODUCER_ERRORS_TOTAL: &str = "cutover_capture_producer_errors_total";

// ---- sinks (apply) ----
pub const LABEL_SINK: &str = "sink";
pub const LABEL_KIND: &str = "kind";
pub const LABEL_TOPIC: &str = "topic";
pub const LABEL_PARTITION: &str = "partition";
/// Counter, labels: sink, table, op.
pub const SINK_EVENTS_APPLIED_TOTAL: &str = "cutover_sink_events_applied_total";
/// Histogram of events per batch, label: sink.
pub const SINK_BATCH_EVENTS: &str = "cutover_sink_batch_events";
/// Histogram of batch apply time (decode → COMMIT), label: sink.
pub const SINK_BATCH_DURATION_SECONDS: &str = "cutover_sink_batch_duration_seconds";
/// Histogram of source commit → applied in the target, label: sink.
pub const SINK_LATENCY_SECONDS: &str = "cutover_sink_latency_seconds";
/// Counter of events skipped because they were already applied, label: sink.
pub const SINK_DUPLICATES_SKIPPED_TOTAL: &str = "cutover_sink_duplicates_skipped_total";
/// Counter of events sent to the sink's dead-letter topic, label: sink.
pub const SINK_DLQ_EVENTS_TOTAL: &str = "cutover_sink_dlq_events_total";
/// Counter of batch retries, labels: sink, kind.
pub const SINK_RETRIES_TOTAL: &str = "cutover_sink_retries_total";
/// Counter of errors, labels: sink, kind.
pub const SINK_ERRORS_TOTAL: &str = "cutover_sink_errors_total";
/// Gauge: high watermark − next offset, labels: sink, topic, partition.
pub const SINK_LAG_MESSAGES: &str = "cutover_sink_lag_messages";
/// Gauge: source commit time (Unix seconds) of the newest applied event, label: sink.
pub const SINK_LAST_APPLIED_COMMIT_SECONDS: &str = "cutover_sink_last_applied_commit_seconds";
// ---- back-sync (sinks with a role, captures) ----
pub const LABEL_POLICY: &str = "policy";
pub const LABEL_WINNER: &str = "winner";
pub const LABEL_PHASE: &str = "phase";
/// Counter: conflicts resolved, labels: sink, policy, winner ∈ {incoming, local}.
pub const SINK_CONFLICTS_TOTAL: &str = "cutover_sink_conflicts_total";
/// Counter: events not applied because the other side owns the table in its phase, label: sink.
pub const SINK_PHASE_SKIPPED_TOTAL: &str = "cutover_sink_phase_skipped_total";
/// Counter: events of transactions written by cutover itself, dropped by capture, label: table.
pub const CAPTURE_ECHOES_SUPPRESSED_TOTAL: &str = "cutover_capture_echoes_suppressed_total";
/// Gauge (monitor): 1 for a table's current phase, labels: table, phase.
pub const TABLE_PHASE: &str = "cutover_table_phase";
/// Counter (monitor, from the audit table): phase changes recorded, label: forced ∈ {true, false}.
pub const PHASE_CHANGES_TOTAL: &str = "cutover_phase_changes_total";
/// Counter: writes on the side that does not own their key (`split`), labels: table, side.
pub const PHASE_LEAKS_TOTAL: &str = "cutover_phase_leaks_total";
/// Gauge: the new store's share of a table's keys (0..1), label: table.
pub const PHASE_NEW_SHARE_RATIO: &str = "cutover_phase_new_share_ratio";
pub const LABEL_FORCED: &str = "forced";

/// Gauge (monitor): age of the oldest unapplied event, label: sink.
pub const SINK_LAG_SECONDS: &str = "cutover_sink_lag_seconds";

// ---- replication slot and source (monitor) ----
pub const LABEL_SLOT: &str = "slot";
/// Gauge: 1 if the slot exists and a walsender streams from it.
pub const SLOT_ACTIVE: &str = "cutover_slot_active";
/// Gauge: WAL the slot retains on the source (pg_current_wal_lsn() − restart_lsn).
pub const SLOT_WAL_RETAINED_BYTES: &str = "cutover_slot_wal_retained_bytes";
/// Gauge: WAL not yet confirmed by capture (pg_current_wal_lsn() − confirmed_flush_lsn).
pub const SLOT_PENDING_BYTES: &str = "cutover_slot_pending_bytes";
/// Gauge: the slot's confirmed_flush_lsn as a byte position.
pub const SLOT_CONFIRMED_POSITION_BYTES: &str = "cutover_slot_confirmed_position_bytes";
/// Gauge: the source's pg_current_wal_lsn() as a byte position (rises while the source writes).
pub const SOURCE_WAL_POSITION_BYTES: &str = "cutover_source_wal_position_bytes";

// ---- dead-letter topics (monitor) ----
pub const LABEL_DLQ: &str = "dlq";
/// Gauge: events held in a dead-letter topic (high − low watermark), label dlq ∈ {capture, a sink name}.
pub const DLQ_MESSAGES: &str = "cutover_dlq_messages";

// ---- backfill ----
/// Counter: rows backfilled (chunks acknowledged by Kafka), label: table.
pub const BACKFILL_ROWS_TOTAL: &str = "cutover_backfill_rows_total";
/// Gauge: rows the table is estimated to hold when its backfill started, label: table.
pub const BACKFILL_ROWS_ESTIMATED: &str = "cutover_backfill_rows_estimated";
/// Gauge: estimated seconds until the table's backfill is done, label: table.
pub const BACKFILL_ETA_SECONDS: &str = "cutover_backfill_eta_seconds";
/// Counter: watermarks capture did not act on, label reason ∈ {foreign (no chunk this capture
/// started: forged, another pipeline's, or from before a restart), overflow (a window outgrew
/// its key bound; the chunk is read again)}.
pub const BACKFILL_WATERMARKS_IGNORED_TOTAL: &str = "cutover_backfill_watermarks_ignored_total";
/// Label of BACKFILL_WATERMARKS_IGNORED_TOTAL.
pub const LABEL_REASON: &str = "reason";

// ---- verify ----
/// Counter: chunks compared, labels: table, outcome ∈ {match, mismatch}.
pub const VERIFY_CHUNKS_TOTAL: &str = "cutover_verify_chunks_total";
/// Counter: source rows covered by compared chunks, label: table.
pub const VERIFY_ROWS_TOTAL: &str = "cutover_verify_rows_total";
/// Gauge: differing rows found by the last verify, labels: table, kind ∈ {missing, extra, different}.
pub const VERIFY_DIFFERENCES: &str = "cutover_verify_differences";
/// Gauge: equal rows over rows on either side (0..1), label: table.
pub const VERIFY_PARITY_RATIO: &str = "cutover_verify_parity_ratio";

// ---- reconcile ----
pub const LABEL_SIDE: &str = "side";
/// Gauge: equal rows over rows on either side in the last pass (0..1), labels: sink, table.
pub const RECONCILE_PARITY_RATIO: &str = "cutover_reconcile_parity_ratio";
/// Gauge: open discrepancies in the ledger, labels: sink, table.
pub const RECONCILE_OPEN_DISCREPANCIES: &str = "cutover_reconcile_open_discrepancies";
/// Gauge: age of the oldest open discrepancy, labels: sink, table.
pub const RECONCILE_OLDEST_DISCREPANCY_AGE_SECONDS: &str =
    "cutover_reconcile_oldest_discrepancy_age_seconds";
/// Counter: rows read by reconcile's comparisons, labels: sink, table, side ∈ {source, target}.
pub const RECONCILE_ROWS_COMPARED_TOTAL: &str = "cutover_reconcile_rows_compared_total";
/// Gauge: when the last pass of a table completed (Unix seconds), labels: sink, table.
pub const RECONCILE_LAST_PASS_COMPLETED_TIMESTAMP_SECONDS: &str =
    "cutover_reconcile_last_pass_completed_timestamp_seconds";
/// Gauge: how long the last pass of a table took, labels: sink, table.
pub const RECONCILE_PASS_DURATION_SECONDS: &str = "cutover_reconcile_pass_duration_seconds";
/// Counter: keys repaired or not, labels: sink, table, outcome ∈ {planned, repaired, capped}.
pub const RECONCILE_REPAIRS_TOTAL: &str = "cutover_reconcile_repairs_total";

// ---- the monitor itself ----
/// Counter of probes, label outcome ∈ {ok, error}.
pub const MONITOR_PROBES_TOTAL: &str = "cutover_monitor_probes_total";
/// Histogram of probe durations.
pub const MONITOR_PROBE_DURATION_SECONDS: &str = "cutover_monitor_probe_duration_seconds";

/// Histogram buckets for latencies in seconds: 1 ms … 60 s.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Histogram buckets for batch sizes in events: 1 … 50 000.
pub const BATCH_EVENTS_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0,
];

/// What kind of series a name is.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every series cutover exports, with its unit and help text (`# HELP` lines).
const HELP: &[(Kind, &str, Option<Unit>, &str)] = &[
    (Kind::Gauge, BUILD_INFO, None, "Build information: always 1, with version and git revision labels."),
    (Kind::Gauge, UP, None, "1 while the cutover process runs; label command is the subcommand."),
    (Kind::Counter, CAPTURE_EVENTS_TOTAL, None, "Change events published, by table and op."),
    (Kind::Counter, CAPTURE_BYTES_TOTAL, None, "Bytes of encoded event values published, by table."),
    (Kind::Counter, CAPTURE_TRANSACTIONS_TOTAL, None, "Source transactions captured."),
    (Kind::Gauge, CAPTURE_LAG_SECONDS, None, "Seconds between now and the commit time of the last fully acknowledged transaction."),
    (Kind::Gauge, CAPTURE_CONFIRMED_POSITION_BYTES, Some(Unit::Bytes), "LSN last confirmed to PostgreSQL by capture, as a byte position."),
    (Kind::Gauge, CAPTURE_PRODUCER_QUEUE_MESSAGES, None, "Messages produced and not yet acknowledged by Kafka."),
    (Kind::Counter, CAPTURE_PRODUCER_ERRORS_TOTAL, None, "Failed Kafka deliveries."),
    (Kind::Counter, CAPTURE_TRUNCATED_VALUES_TOTAL, None, "Values cut to their source.truncate_columns budget, by table."),
    (Kind::Gauge, CAPTURE_STANDBY, None, "1 while this capture waits as a standby because another instance leads its slot; 0 when it leads."),
    (Kind::Counter, CAPTURE_DLQ_EVENTS_TOTAL, None, "Rows the codec cannot represent, sent to the capture dead-letter topic, by table."),
    (Kind::Counter, SINK_EVENTS_APPLIED_TOTAL, None, "Events applied to the sink's target, by table and op."),
    (Kind::Histogram, SINK_BATCH_EVENTS, None, "Events per applied batch."),
    (Kind::Histogram, SINK_BATCH_DURATION_SECONDS, Some(Unit::Seconds), "Time to apply one batch, decode to COMMIT."),
    (Kind::Histogram, SINK_LATENCY_SECONDS, Some(Unit::Seconds), "End-to-end latency: source commit to applied in the target."),
    (Kind::Counter, SINK_DUPLICATES_SKIPPED_TOTAL, None, "Events skipped because the target already had them (re-sent or re-read)."),
    (Kind::Counter, SINK_DLQ_EVENTS_TOTAL, None, "Events sent to the sink's dead-letter topic."),
    (Kind::Counter, SINK_RETRIES_TOTAL, None, "Batch retries after transient errors, by kind."),
    (Kind::Counter, SINK_ERRORS_TOTAL, None, "Sink errors, by kind."),
    (Kind::Gauge, SINK_LAG_MESSAGES, None, "Messages not yet applied: high watermark minus next offset, per partition."),
    (Kind::Gauge, SINK_LAST_APPLIED_COMMIT_SECONDS, None, "Source commit time (Unix seconds) of the newest applied event."),
    (Kind::Gauge, SINK_LAG_SECONDS, Some(Unit::Seconds), "Age of the sink's oldest unapplied event (now minus its source commit time); 0 without lag."),
    (Kind::Gauge, SLOT_ACTIVE, None, "1 if the replication slot exists and capture streams from it."),
    (Kind::Gauge, SLOT_WAL_RETAINED_BYTES, Some(Unit::Bytes), "WAL the replication slot keeps on the source (current WAL position minus restart_lsn)."),
    (Kind::Gauge, SLOT_PENDING_BYTES, Some(Unit::Bytes), "WAL written on the source and not yet confirmed by capture."),
    (Kind::Gauge, SLOT_CONFIRMED_POSITION_BYTES, Some(Unit::Bytes), "The slot's confirmed_flush_lsn as a byte position."),
    (Kind::Gauge, SOURCE_WAL_POSITION_BYTES, Some(Unit::Bytes), "The source's current WAL position as a byte position; rises while the source writes."),
    (Kind::Gauge, DLQ_MESSAGES, None, "Events held in a dead-letter topic (high minus low watermark), by dlq (capture or sink)."),
    (Kind::Counter, MONITOR_PROBES_TOTAL, None, "Monitor probes, by outcome."),
    (Kind::Counter, BACKFILL_ROWS_TOTAL, None, "Rows backfilled as op=r events, counted when Kafka acknowledged their chunk."),
    (Kind::Gauge, BACKFILL_ROWS_ESTIMATED, None, "Rows the table was estimated to hold when its backfill started."),
    (Kind::Gauge, BACKFILL_ETA_SECONDS, Some(Unit::Seconds), "Estimated time until the table's backfill is done."),
    (Kind::Counter, BACKFILL_WATERMARKS_IGNORED_TOTAL, None, "Backfill watermarks capture did not act on, by reason (foreign, overflow)."),
    (Kind::Counter, VERIFY_CHUNKS_TOTAL, None, "Chunks verify compared, by outcome."),
    (Kind::Counter, VERIFY_ROWS_TOTAL, None, "Source rows covered by verify."),
    (Kind::Gauge, VERIFY_DIFFERENCES, None, "Rows that differ between source and target in the last verify, by kind."),
    (Kind::Gauge, VERIFY_PARITY_RATIO, None, "Equal rows over rows on either side in the last verify (1 = identical)."),
    (Kind::Gauge, RECONCILE_PARITY_RATIO, None, "Equal rows over rows on either side in the last reconcile pass of a table (1 = identical)."),
    (Kind::Gauge, RECONCILE_OPEN_DISCREPANCIES, None, "Open discrepancies in the ledger (cutover.discrepancies) after the last pass."),
    (Kind::Gauge, RECONCILE_OLDEST_DISCREPANCY_AGE_SECONDS, Some(Unit::Seconds), "Age of the oldest open discrepancy (0 without one)."),
    (Kind::Counter, RECONCILE_ROWS_COMPARED_TOTAL, None, "Rows read by reconcile's comparisons, by side (source: its load on legacy)."),
    (Kind::Gauge, RECONCILE_LAST_PASS_COMPLETED_TIMESTAMP_SECONDS, Some(Unit::Seconds), "When the last reconcile pass of the table completed (Unix time)."),
    (Kind::Gauge, RECONCILE_PASS_DURATION_SECONDS, Some(Unit::Seconds), "How long the last reconcile pass of the table took."),
    (Kind::Counter, RECONCILE_REPAIRS_TOTAL, None, "Keys reconcile planned to repair (repair = report), repaired (auto) or left for the next pass (capped)."),
    (Kind::Counter, SINK_CONFLICTS_TOTAL, None, "Conflicts (both sides changed a row in the dual phase) resolved, by policy and winner."),
    (Kind::Counter, SINK_PHASE_SKIPPED_TOTAL, None, "Events not applied because the other side owns the table in its current phase."),
    (Kind::Counter, CAPTURE_ECHOES_SUPPRESSED_TOTAL, None, "Row changes written by cutover itself (a cutover replication origin), dropped by capture."),
    (Kind::Gauge, TABLE_PHASE, None, "1 for each table's current cutover phase (forward, dual, reverse), 0 for the others."),
    (Kind::Counter, PHASE_CHANGES_TOTAL, None, "Phase changes recorded in the audit trail, by whether they were forced."),
    (Kind::Counter, PHASE_LEAKS_TOTAL, None, "Writes on the side that does not own their key in split (leaks), by table and the side written."),
    (Kind::Gauge, PHASE_NEW_SHARE_RATIO, None, "The new store's share of each table's keys (0 forward, 1 reverse, the step's share in split)."),
    (Kind::Histogram, MONITOR_PROBE_DURATION_SECONDS, Some(Unit::Seconds), "Time one monitor probe took."),
    (Kind::Counter, REGISTRY_REGISTRATIONS_TOTAL, None, "Schema registrations handled by the embedded registry, by outcome."),
];

/// Register help texts with the recorder (shown as `# HELP` lines).
pub fn describe_all() {
    for &(kind, name, unit, help) in HELP {
        match (kind, unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(name, u, help),
            (Kind::Counter, None) => metrics::describe_counter!(name, help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(name, u, help),
            (Kind::Gauge, None) => metrics::describe_gauge!(name, help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(name, u, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(name, help),
        }
    }
}

/// One leak (a write on the side that does not own its key) of `table`, written on `side`.
pub fn phase_leak(table: &str, side: &'static str) {
    metrics::counter!(PHASE_LEAKS_TOTAL, LABEL_TABLE => table.to_string(), LABEL_SIDE => side)
        .increment(1);
}
