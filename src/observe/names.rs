//! Every metric name and label key cutover exports, defined once.
//!
//! Naming: `cutover_<subsystem>_<name>_<unit>[_total]`. Label values are drawn from small fixed
//! sets (sink names, table names from config, `op` ∈ {c,u,d,t,r}, `kind` ∈ [`ErrorKind`]
//! names) — never from unbounded data such as keys or LSNs. docs/METRICS.md documents each one.
//!
//! [`ErrorKind`]: crate::error::ErrorKind

// ---- label keys ----
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
/// Gauge: the LSN last confirmed to PostgreSQL (as a number).
pub const CAPTURE_CONFIRMED_LSN: &str = "cutover_capture_confirmed_lsn";
/// Gauge: WAL the slot retains (pg_current_wal_lsn() − restart_lsn).
pub const CAPTURE_SLOT_WAL_RETAINED_BYTES: &str = "cutover_capture_slot_wal_retained_bytes";
/// Gauge: 1 if the slot is active.
pub const CAPTURE_SLOT_ACTIVE: &str = "cutover_capture_slot_active";
/// Gauge: messages in the producer queue, not yet acknowledged.
pub const CAPTURE_PRODUCER_QUEUE_MESSAGES: &str = "cutover_capture_producer_queue_messages";
/// Counter of rows sent to the capture dead-letter topic, label: table.
pub const CAPTURE_DLQ_EVENTS_TOTAL: &str = "cutover_capture_dlq_events_total";
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

/// Histogram buckets for latencies in seconds: 1 ms … 60 s.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Register help texts with the recorder (shown as `# HELP` lines).
pub fn describe_all() {
    metrics::describe_gauge!(
        BUILD_INFO,
        "Build information: always 1, with version and git revision labels."
    );
    metrics::describe_gauge!(
        UP,
        "1 while the cutover process runs; label command is the subcommand."
    );
    metrics::describe_counter!(
        CAPTURE_EVENTS_TOTAL,
        "Change events published, by table and op."
    );
    metrics::describe_counter!(
        CAPTURE_BYTES_TOTAL,
        "Bytes of encoded event values published, by table."
    );
    metrics::describe_counter!(CAPTURE_TRANSACTIONS_TOTAL, "Source transactions captured.");
    metrics::describe_gauge!(
        CAPTURE_LAG_SECONDS,
        "Seconds between now and the commit time of the last fully acknowledged transaction."
    );
    metrics::describe_gauge!(CAPTURE_CONFIRMED_LSN, "LSN last confirmed to PostgreSQL.");
    metrics::describe_gauge!(
        CAPTURE_SLOT_WAL_RETAINED_BYTES,
        "WAL bytes retained by the replication slot."
    );
    metrics::describe_gauge!(CAPTURE_SLOT_ACTIVE, "1 if the replication slot is active.");
    metrics::describe_gauge!(
        CAPTURE_PRODUCER_QUEUE_MESSAGES,
        "Messages produced and not yet acknowledged by Kafka."
    );
    metrics::describe_counter!(CAPTURE_PRODUCER_ERRORS_TOTAL, "Failed Kafka deliveries.");
    metrics::describe_counter!(
        CAPTURE_DLQ_EVENTS_TOTAL,
        "Rows the codec cannot represent, sent to the capture dead-letter topic, by table."
    );
    metrics::describe_counter!(
        SINK_EVENTS_APPLIED_TOTAL,
        "Events applied to the sink's target, by table and op."
    );
    metrics::describe_histogram!(SINK_BATCH_EVENTS, "Events per applied batch.");
    metrics::describe_histogram!(
        SINK_BATCH_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time to apply one batch, decode to COMMIT."
    );
    metrics::describe_histogram!(
        SINK_LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "End-to-end latency: source commit to applied in the target."
    );
    metrics::describe_counter!(
        SINK_DUPLICATES_SKIPPED_TOTAL,
        "Events skipped because the target already had them (re-sent or re-read)."
    );
    metrics::describe_counter!(
        SINK_DLQ_EVENTS_TOTAL,
        "Events sent to the sink's dead-letter topic."
    );
    metrics::describe_counter!(
        SINK_RETRIES_TOTAL,
        "Batch retries after transient errors, by kind."
    );
    metrics::describe_counter!(SINK_ERRORS_TOTAL, "Sink errors, by kind.");
    metrics::describe_gauge!(
        SINK_LAG_MESSAGES,
        "Messages not yet applied: high watermark minus next offset, per partition."
    );
    metrics::describe_gauge!(
        SINK_LAST_APPLIED_COMMIT_SECONDS,
        "Source commit time (Unix seconds) of the newest applied event."
    );
    metrics::describe_counter!(
        REGISTRY_REGISTRATIONS_TOTAL,
        "Schema registrations handled by the embedded registry, by outcome."
    );
}
