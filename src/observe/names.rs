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
/// Counter, label: outcome ∈ {registered, existing, incompatible, invalid}.
pub const REGISTRY_REGISTRATIONS_TOTAL: &str = "cutover_registry_registrations_total";
pub const LABEL_OUTCOME: &str = "outcome";

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
        REGISTRY_REGISTRATIONS_TOTAL,
        "Schema registrations handled by the embedded registry, by outcome."
    );
}
