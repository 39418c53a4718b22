//! Kafka clients as cutover uses them: one place that builds librdkafka configs, classifies
//! Kafka errors into retry vs fatal, creates topics through the admin API and reads watermarks.
//!
//! Client settings cutover owns (users cannot override them, see `config::validate`):
//!
//! | client   | setting                        | why                                                    |
//! |----------|--------------------------------|--------------------------------------------------------|
//! | producer | `enable.idempotence=true`, `acks=all` | no duplicates or reordering from producer retries |
//! | consumer | `enable.auto.commit=false`     | offsets are committed only after the batch is durable |
//! | consumer | `enable.auto.offset.store=false` | nothing is stored that was not applied              |
//!
//! Topics are always created explicitly ([`ensure_topics`]); cutover never relies on broker
//! auto-creation (the local broker has it off, and production clusters should too).
//!
//! Consumers speak the group protocol of `kafka.group_protocol` (`classic` or KIP-848
//! `consumer`); [`consumer_config`] passes neither protocol a setting it rejects.

pub mod diagnosis;
pub mod inspect;
pub mod topic;

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{GroupProtocol, KafkaConfig};
use crate::error::classify::kafka_code;
use crate::error::{Error, ErrorKind, Result};
use diagnosis::{explain, explain_by_probe, metadata_client, MetadataClient};

/// Settings shared by every client: brokers, client id, user properties.
pub fn base_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.brokers.join(","));
    c.set("client.id", &cfg.client_id);
    c.set("socket.keepalive.enable", "true");
    for (k, v) in cfg.properties.iter() {
        c.set(k, v);
    }
    c
}

/// An idempotent producer config (`acks=all`, ordered retries).
pub fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base_config(cfg);
    c.set("enable.idempotence", "true");
    c.set("acks", "all");
    set_default(&mut c, "max.in.flight.requests.per.connection", "5");
    set_default(&mut c, "linger.ms", "5");
    set_default(&mut c, "compression.type", "lz4");
    // Never give up on a delivery: a message that cannot be delivered blocks the LSN from being
    // confirmed, and backpressure stops the replication stream instead of losing data.
    set_default(&mut c, "message.timeout.ms", "0");
    c
}

/// A consumer config for `group_id`: manual commits, manual offset store, and the group
/// protocol of `kafka.group_protocol` with only the settings that protocol accepts.
pub fn consumer_config(cfg: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut c = base_config(cfg);
    c.set("group.id", group_id);
    c.set("enable.auto.commit", "false");
    c.set("enable.auto.offset.store", "false");
    set_default(&mut c, "auto.offset.reset", "earliest");
    set_default(&mut c, "enable.partition.eof", "false");
    // A killed member's partitions move after 10 s, not librdkafka's 45 s default (classic;
    // with the consumer protocol the broker owns these and set_group_protocol drops them).
    set_default(&mut c, "session.timeout.ms", "10000");
    set_default(&mut c, "heartbeat.interval.ms", "2000");
    // Also the classic JoinGroup rebalance timeout: how long a rebalance waits for members
    // that are slow to rejoin.
    set_default(&mut c, "max.poll.interval.ms", "30000");
    // Latency over request count: an idle fetch returns after 50 ms, not librdkafka's 500 ms.
    set_default(&mut c, "fetch.wait.max.ms", "50");
    // Last: the protocol, and nothing set above that it rejects.
    set_group_protocol(&mut c, cfg.group_protocol);
    c
}

/// `group.protocol` for a client that uses a group (a sink, or the lag monitor's OffsetFetch
/// clients), and nothing the protocol rejects (validate() refuses such user properties).
pub fn set_group_protocol(c: &mut ClientConfig, protocol: GroupProtocol) {
    c.set("group.protocol", protocol.as_str());
    for key in protocol.rejected_client_settings() {
        c.remove(key);
    }
}

/// Set `key` unless the user already did through `kafka.properties`.
pub fn set_default(c: &mut ClientConfig, key: &str, value: &str) {
    if c.get(key).is_none() {
        c.set(key, value);
    }
}

/// The verdict on a delivery report librdkafka gave as a success: durable only if it carries
/// the offset the broker wrote the record at.
///
/// librdkafka also reports success for a record whose own ProduceRequest failed, when a later
/// batch of the same partition succeeds ("implicit ack", `rd_kafka_dr_implicit_ack`): it
/// assumes the broker accepts batches of one producer only in sequence, so the earlier one
/// must have been written. A broker that holds no state for the producer on a partition
/// accepts *any* first sequence (Kafka's `ProducerAppendInfo.checkSequence`), and that is
/// every partition the broker started leading a moment ago: a batch refused with
/// NOT_LEADER_OR_FOLLOWER just before the partition was created, followed by one accepted
/// just after, is reported delivered and is not in Kafka. Such reports have no offset
/// (-1001). cutover counts them as failed deliveries: the work is re-sent (a duplicate at
/// worst, which every consumer skips), never confirmed as durable.
/// (`examples/new_topic_burst.rs` reproduces the loss; docs/PERFORMANCE.md, "A lost row".)
pub fn unverified_delivery(topic: &str, partition: i32, offset: i64) -> Option<String> {
    (offset < 0).then(|| {
        format!(
            "{topic}[{partition}]: librdkafka reported the record delivered without an offset \
             (an implicit ack after a failed request); it may not be in Kafka"
        )
    })
}

/// A topic cutover wants to exist.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub configs: Vec<(String, String)>,
}

/// Make sure the topics of captured tables exist (created with `kafka.partitions` and
/// `kafka.replication_factor`, one CreateTopics for all of them) and return their partition
/// counts, read through one metadata client once every partition has a leader.
pub async fn ensure_table_topics(
    cfg: &KafkaConfig,
    names: &[String],
) -> Result<HashMap<String, i32>> {
    let specs: Vec<TopicSpec> = names
        .iter()
        .map(|name| TopicSpec {
            name: name.clone(),
            partitions: cfg.partitions,
            replication_factor: cfg.replication_factor,
            configs: vec![],
        })
        .collect();
    ensure_topics(cfg, &specs).await?;
    partition_counts(cfg, names).await
}

fn admin(cfg: &KafkaConfig) -> Result<(AdminClient<DefaultClientContext>, AdminOptions)> {
    let admin: AdminClient<DefaultClientContext> = base_config(cfg)
        .create()
        .map_err(|e| Error::kafka("creating Kafka admin client", e))?;
    let timeout = Duration::from_millis(cfg.request_timeout_ms);
    // The request's own timeout leaves the broker its whole operation timeout to answer in;
    // without it librdkafka waits socket.timeout.ms (60 s) when no broker is usable. With the
    // default request_timeout_ms (30 s) the two are the same.
    Ok((
        admin,
        AdminOptions::new()
            .operation_timeout(Some(timeout))
            .request_timeout(Some(timeout * 2)),
    ))
}

/// An admin request's failure, with the reason no broker was usable when that was the cause
/// (`diagnosis::explain_by_probe`: the admin client keeps no reasons of its own).
async fn admin_error(cfg: &KafkaConfig, what: &'static str, err: KafkaError) -> Error {
    let config = base_config(cfg);
    let timeout = Duration::from_millis(cfg.request_timeout_ms.min(5_000));
    tokio::task::spawn_blocking(move || explain_by_probe(&config, timeout, what, err))
        .await
        .unwrap_or_else(|e| Error::internal(format!("diagnosing {what}: {e}")))
}

/// Delete a consumer group (its committed offsets); it must have no members.
pub async fn delete_group(cfg: &KafkaConfig, group: &str) -> Result<()> {
    let (admin, opts) = admin(cfg)?;
    let results = match admin.delete_groups(&[group], &opts).await {
        Ok(r) => r,
        Err(e) => return Err(admin_error(cfg, "DeleteGroups", e).await),
    };
    for r in results {
        if let Err((g, code)) = r {
            return Err(Error::new(
                kafka_code(code),
                format!("DeleteGroups {g}: {code}"),
            ));
        }
    }
    Ok(())
}

/// Create the topics that do not exist yet ("already exists" is success). Returns the names
/// that were newly created.
pub async fn ensure_topics(cfg: &KafkaConfig, topics: &[TopicSpec]) -> Result<Vec<String>> {
    if topics.is_empty() {
        return Ok(vec![]);
    }
    let (admin, opts) = admin(cfg)?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let mut nt = NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(t.replication_factor),
            );
            for (k, v) in &t.configs {
                nt = nt.set(k, v);
            }
            nt
        })
        .collect();
    let results = match admin.create_topics(new_topics.iter(), &opts).await {
        Ok(r) => r,
        Err(e) => return Err(admin_error(cfg, "CreateTopics request", e).await),
    };
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_name, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::new(
                    kafka_code(code),
                    format!("creating topic {name}: {code}"),
                ))
            }
        }
    }
    if !created.is_empty() {
        tracing::info!(topics = ?created, "created topics");
        // CreateTopics returns once the controller has the topic; brokers learn its leaders a
        // moment later. Until then produce/fetch/ListOffsets answer NOT_LEADER_FOR_PARTITION,
        // so a created topic is handed out only once every partition has a leader, and then
        // only once its leader serves it: a broker lists a new partition's leader in metadata
        // before it has created the partition (1,500 partitions took it 10-28 s here), and a
        // produce in that window is where librdkafka's implicit acks lose records (see
        // [`unverified_delivery`]).
        partition_counts(cfg, &created).await?;
        partitions_served(cfg, &created).await?;
    }
    Ok(created)
}

/// Wait until the leader of every partition of `topics` answers ListOffsets for it, within
/// `request_timeout_ms` per partition that makes no progress (a broker creating 1,500
/// partitions works through them one by one; the wait ends once none is left).
async fn partitions_served(cfg: &KafkaConfig, topics: &[String]) -> Result<()> {
    let cfg = cfg.clone();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer = metadata_client(&base_config(&cfg))?;
        let timeout = Duration::from_millis(cfg.request_timeout_ms);
        let mut waiting: Vec<(String, i32)> = Vec::new();
        for topic in &topics {
            for p in topic_partitions(&consumer, topic, timeout)? {
                waiting.push((topic.clone(), p.id));
            }
        }
        let total = waiting.len();
        let started = std::time::Instant::now();
        let mut progress = started;
        while !waiting.is_empty() {
            let before = waiting.len();
            let mut last_err = None;
            waiting.retain(|(t, p)| match consumer.fetch_watermarks(t, *p, timeout) {
                Ok(_) => false,
                Err(e) => {
                    last_err = Some((t.clone(), *p, e));
                    true
                }
            });
            if waiting.len() < before {
                progress = std::time::Instant::now();
            }
            if let Some((t, p, e)) = last_err {
                let err = Error::kafka(format!("ListOffsets of new partition {t}[{p}]"), e);
                if progress.elapsed() >= timeout
                    || !matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::NotFound)
                {
                    return Err(err);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        tracing::info!(
            partitions = total,
            waited_ms = started.elapsed().as_millis() as u64,
            "new partitions served by their leaders"
        );
        Ok(())
    })
    .await
    .map_err(|e| Error::internal(format!("ListOffsets task failed: {e}")))?
}

/// Partitions of `topic`, once every one of them has a leader in the cluster's metadata
/// (retried within `request_timeout_ms`: a topic created a moment ago may not be listed yet;
/// after that a missing topic is `NotFound`, one without leaders `Unavailable`).
pub async fn partition_count(cfg: &KafkaConfig, topic: &str) -> Result<i32> {
    let counts = partition_counts(cfg, &[topic.to_string()]).await?;
    Ok(counts.get(topic).copied().unwrap_or_default())
}

/// [`partition_count`] of many topics through one metadata client (one client per topic cost
/// ~0.1 s each: capture's start over a 500-table publication spent a minute on it). Waits
/// until every partition of every topic has a leader, within `request_timeout_ms` overall.
pub async fn partition_counts(
    cfg: &KafkaConfig,
    topics: &[String],
) -> Result<HashMap<String, i32>> {
    if topics.is_empty() {
        return Ok(HashMap::new());
    }
    let cfg = cfg.clone();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer = metadata_client(&base_config(&cfg))?;
        let timeout = Duration::from_millis(cfg.request_timeout_ms);
        let deadline = std::time::Instant::now() + timeout;
        let mut out = HashMap::with_capacity(topics.len());
        for topic in &topics {
            loop {
                let err = match topic_partitions(&consumer, topic, timeout) {
                    Ok(ps) if !ps.is_empty() && ps.iter().all(|p| p.leader_known) => {
                        out.insert(topic.clone(), ps.len() as i32);
                        break;
                    }
                    Ok(_) => Error::new(
                        ErrorKind::Unavailable,
                        format!("topic {topic}: not every partition has a leader yet"),
                    ),
                    Err(e) => e,
                };
                if std::time::Instant::now() >= deadline
                    || !matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::NotFound)
                {
                    return Err(err);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::internal(format!("metadata task failed: {e}")))?
}

struct PartitionInfo {
    id: i32,
    /// A leader is known and the partition has no error in the metadata.
    leader_known: bool,
}

/// The partitions of `topic` as the cluster's metadata lists them (blocking).
fn topic_partitions(
    consumer: &MetadataClient,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionInfo>> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| explain(consumer, format!("metadata for topic {topic}"), e))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("topic {topic} not found")))?;
    if let Some(err) = t.error() {
        let code: RDKafkaErrorCode = err.into();
        return Err(Error::new(
            kafka_code(code),
            format!("metadata for topic {topic}: {code}"),
        ));
    }
    Ok(t.partitions()
        .iter()
        .map(|p| PartitionInfo {
            id: p.id(),
            leader_known: p.leader() >= 0 && p.error().is_none(),
        })
        .collect())
}

/// Low and high watermarks of every partition of `topic`: partition → (low, high).
/// Runs the blocking librdkafka calls off the async runtime.
pub async fn watermarks(cfg: &KafkaConfig, topic: &str) -> Result<HashMap<i32, (i64, i64)>> {
    let cfg = cfg.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer = metadata_client(&base_config(&cfg))?;
        let timeout = Duration::from_millis(cfg.request_timeout_ms);
        let mut out = HashMap::new();
        for p in topic_partitions(&consumer, &topic, timeout)? {
            let wm = consumer
                .fetch_watermarks(&topic, p.id, timeout)
                .map_err(|e| explain(&consumer, format!("watermarks of {topic}[{}]", p.id), e))?;
            out.insert(p.id, wm);
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::internal(format!("watermark task failed: {e}")))?
}

/// Check that the cluster answers a metadata request; returns the number of brokers seen.
pub async fn ping(cfg: &KafkaConfig) -> Result<usize> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let consumer = metadata_client(&base_config(&cfg))?;
        let md = consumer
            .fetch_metadata(None, Duration::from_millis(cfg.request_timeout_ms))
            .map_err(|e| {
                explain(
                    &consumer,
                    format!("metadata from {}", cfg.brokers.join(",")),
                    e,
                )
            })?;
        Ok(md.brokers().len())
    })
    .await
    .map_err(|e| Error::internal(format!("metadata task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka_cfg(protocol: GroupProtocol) -> KafkaConfig {
        let mut k = crate::config::Config::load_with_env(None, Vec::<(String, String)>::new())
            .unwrap()
            .kafka;
        k.group_protocol = protocol;
        k
    }

    #[test]
    fn a_delivery_report_without_an_offset_is_not_durable() {
        assert_eq!(unverified_delivery("t", 0, 0), None);
        assert_eq!(unverified_delivery("t", 2, 41), None);
        let e = unverified_delivery("app.public.t", 1, -1001).expect("implicit ack");
        assert!(
            e.contains("app.public.t[1]") && e.contains("without an offset"),
            "{e}"
        );
    }

    #[test]
    fn each_group_protocol_gets_only_the_settings_it_accepts() {
        let c = consumer_config(&kafka_cfg(GroupProtocol::Classic), "g");
        assert_eq!(c.get("group.protocol"), Some("classic"));
        assert_eq!(c.get("session.timeout.ms"), Some("10000"));
        assert_eq!(c.get("heartbeat.interval.ms"), Some("2000"));

        let c = consumer_config(&kafka_cfg(GroupProtocol::Consumer), "g");
        assert_eq!(c.get("group.protocol"), Some("consumer"));
        for key in GroupProtocol::Consumer.rejected_client_settings() {
            assert_eq!(c.get(key), None, "{key} passed to the consumer protocol");
        }
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        // librdkafka itself accepts the result (it refuses rejected settings at creation).
        let _: rdkafka::consumer::BaseConsumer =
            c.create().expect("consumer protocol config accepted");
        let _: rdkafka::consumer::BaseConsumer =
            consumer_config(&kafka_cfg(GroupProtocol::Classic), "g")
                .create()
                .expect("classic config accepted");
    }

    #[test]
    fn transient_broker_errors_retry_auth_is_fatal() {
        use crate::retry::{policy, Decision};
        for c in [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::QueueFull,
        ] {
            assert_eq!(policy(kafka_code(c)), Decision::Retry, "{c:?}");
        }
        assert_eq!(
            policy(kafka_code(RDKafkaErrorCode::SaslAuthenticationFailed)),
            Decision::Fatal
        );
        assert_eq!(
            policy(kafka_code(RDKafkaErrorCode::MessageSizeTooLarge)),
            Decision::Park
        );
        assert_eq!(
            crate::error::classify::kafka(&rdkafka::error::KafkaError::MessageProduction(
                RDKafkaErrorCode::QueueFull
            )),
            ErrorKind::Unavailable
        );
        // A SIGKILLed static member's id is released by the broker later: retry; an id used
        // by a live member is a deployment error: fatal.
        assert_eq!(
            policy(crate::error::classify::kafka(
                &rdkafka::error::KafkaError::MessageConsumptionFatal(
                    RDKafkaErrorCode::UnreleasedInstanceId
                )
            )),
            Decision::Retry
        );
        assert_eq!(
            policy(kafka_code(RDKafkaErrorCode::FencedInstanceId)),
            Decision::Fatal
        );
    }

    #[test]
    fn managed_settings_are_present() {
        let cfg = crate::config::Config::load_with_env(None, Vec::<(String, String)>::new())
            .unwrap()
            .kafka;
        let p = producer_config(&cfg);
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("acks"), Some("all"));
        let c = consumer_config(&cfg, "g");
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("group.id"), Some("g"));
    }
}
