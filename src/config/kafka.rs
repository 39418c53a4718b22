//! The `[kafka]` section: brokers, topic defaults, the consumer group protocol, and librdkafka
//! properties passed through (secret values redacted in Debug and Serialize).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{is_secret_property, string_or_list, REDACTED};

/// librdkafka's `group.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    #[default]
    Classic,
    Consumer,
}

impl GroupProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }

    /// Client settings this protocol refuses: with `consumer` the broker owns them
    /// (`group.consumer.session.timeout.ms`, `group.consumer.heartbeat.interval.ms`,
    /// `group.consumer.assignors`), and librdkafka fails the client if they are set.
    pub fn rejected_client_settings(self) -> &'static [&'static str] {
        match self {
            GroupProtocol::Classic => &["group.remote.assignor"],
            GroupProtocol::Consumer => &[
                "session.timeout.ms",
                "heartbeat.interval.ms",
                "partition.assignment.strategy",
                "group.protocol.type",
            ],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`; a list or a comma-separated string.
    #[serde(deserialize_with = "string_or_list")]
    pub brokers: Vec<String>,
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Partitions of topics cutover creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Timeout for admin and metadata requests.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Consumer group protocol of the sinks and the lag monitor: `classic` (JoinGroup/SyncGroup,
    /// served by every Kafka-compatible broker) or `consumer` (KIP-848: the broker assigns
    /// partitions incrementally and owns session/heartbeat timing; Apache Kafka >= 4.0).
    /// See docs/APPLY.md, "Consumer group protocol", for why `classic` is the default.
    #[serde(default)]
    pub group_protocol: GroupProtocol,
    /// Extra librdkafka properties applied to every client (security, tuning).
    /// Values of secret-looking keys (`*password`, `*secret*`, `sasl.jaas.config`) are redacted.
    #[serde(default)]
    pub properties: KafkaProperties,
    /// librdkafka properties whose values are read from files (mounted Secrets), e.g.
    /// `"sasl.password" = "/run/secrets/kafka-password"`; a property is set here or in
    /// `properties`, not both.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_files: BTreeMap<String, std::path::PathBuf>,
}

fn default_client_id() -> String {
    "cutover".into()
}
fn default_partitions() -> i32 {
    3
}
fn default_replication_factor() -> i32 {
    1
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
/// librdkafka properties. Debug and Serialize redact the values of secret keys.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl KafkaProperties {
    fn redacted(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_property(k) {
                    REDACTED
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect()
    }
}

impl std::ops::Deref for KafkaProperties {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KafkaProperties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.redacted().fmt(f)
    }
}

impl Serialize for KafkaProperties {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.redacted().serialize(s)
    }
}
