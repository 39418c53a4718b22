//! Sink configuration: batching, truncate policy and the per-table mapping from the captured
//! (old) schema to the target (new) contract. Structural checks live in `validate()` (field
//! paths); checks against the target database run at start-up in `apply::mapping`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a sink does with a captured TRUNCATE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncatePolicy {
    /// Truncate the target table(s).
    #[default]
    Apply,
    /// Skip it (counted), e.g. when the target holds more than one source's rows.
    Ignore,
}

/// What a sink does with captured tables that have no `[[sinks.tables]]` entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmapped {
    /// Same schema, table and columns in the target; created if missing, new columns added.
    #[default]
    Identity,
    /// Not applied (counted as skipped).
    Skip,
}

/// How one source table lands in the target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// Captured table, `schema.table`.
    pub source: String,
    /// Target table, `schema.table` (default: same as source). Ignored when `route` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Source column → target column.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// Source columns not written to the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
    /// Target column → SQL type the value is cast through, e.g. `numeric(12,2)`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cast: BTreeMap<String, String>,
    /// Target column → constant text value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub constants: BTreeMap<String, String>,
    /// Target column → value used when the mapped value is NULL.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub defaults: BTreeMap<String, String>,
    /// Target column → expression over source columns (see `crate::expr`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub computed: BTreeMap<String, String>,
    /// Only rows for which this expression is true are in the target; a row that stops
    /// matching is deleted from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Send each row to one of several target tables by a column value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteConfig>,
}

/// Routing by a column value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Source column whose value selects the target.
    pub column: String,
    /// Value → target table (`schema.table`).
    pub targets: BTreeMap<String, String>,
    /// Target for values not listed (none: such a row is a mapping error → dead-letter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}
