//! The shared local broker through librdkafka: admin-created topics, idempotent produce,
//! consumer-group consume with manual offset store and commit, watermarks.

use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::support::{local_config, unique};
use cutover::kafka::{consumer_config, ensure_topics, producer_config, watermarks, TopicSpec};

pub async fn produce_n(producer: &FutureProducer, topic: &str, n: usize) {
    let sends = (0..n).map(|i| {
        let key = format!("k{}", i % 17);
        let payload = format!("value-{i}");
        async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("delivery")
        }
    });
    futures::future::join_all(sends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_produce_consume_commit_watermarks() {
    let cfg = local_config().kafka;
    let topic = unique("it.kafka");
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: 3,
        replication_factor: 1,
        configs: vec![],
    };
    let created = ensure_topics(&cfg, std::slice::from_ref(&spec))
        .await
        .unwrap();
    assert_eq!(created, vec![topic.clone()]);
    // Idempotent: "already exists" is success, nothing new created.
    assert!(ensure_topics(&cfg, &[spec]).await.unwrap().is_empty());

    let producer: FutureProducer = producer_config(&cfg).create().unwrap();
    produce_n(&producer, &topic, 300).await;

    let wm = watermarks(&cfg, &topic).await.unwrap();
    assert_eq!(wm.len(), 3);
    let total: i64 = wm.values().map(|(lo, hi)| hi - lo).sum();
    assert_eq!(total, 300, "{wm:?}");
    // Keys spread over partitions, each key in one partition only.
    assert!(wm.values().filter(|(_, hi)| *hi > 0).count() > 1, "{wm:?}");

    // Consume everything in a group, storing offsets only after "processing", then commit.
    let group = unique("it.group");
    let consumer: StreamConsumer = consumer_config(&cfg, &group).create().unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = 0;
    let mut key_partition = std::collections::HashMap::new();
    {
        let mut stream = consumer.stream();
        while seen < 300 {
            let m = tokio::time::timeout(Duration::from_secs(60), stream.next())
                .await
                .expect("messages within 60 s")
                .unwrap()
                .unwrap();
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            let p = *key_partition.entry(key.clone()).or_insert(m.partition());
            assert_eq!(p, m.partition(), "key {key} seen in two partitions");
            consumer.store_offset_from_message(&m).unwrap();
            seen += 1;
        }
    }
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    drop(consumer);

    // The group's committed offsets, read by an outside client (what lag tooling does), equal
    // the high watermarks. (Not via `committed()` on the member itself: with rust-rdkafka 0.39
    // that call makes the member's later drop hang on close.)
    let committed = committed_offsets(&cfg, &group, &topic, 3);
    for (p, (_, hi)) in &wm {
        assert_eq!(committed[p], *hi, "partition {p}");
    }

    // A new member of the same group resumes after the commit: only new messages arrive.
    produce_n(&producer, &topic, 10).await;
    let consumer: StreamConsumer = consumer_config(&cfg, &group).create().unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut stream = consumer.stream();
    let mut fresh = Vec::new();
    while fresh.len() < 10 {
        let m = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("new messages within 60 s")
            .unwrap()
            .unwrap();
        fresh.push(m.offset());
        assert!(
            m.offset() >= wm[&m.partition()].1,
            "re-delivered committed offset {} on partition {}",
            m.offset(),
            m.partition()
        );
    }
    drop(stream);
    drop(consumer);
    let committed = committed_offsets(&cfg, &group, &topic, 3);
    assert_eq!(
        committed.values().sum::<i64>(),
        300,
        "uncommitted reads do not move the group"
    );
}

fn committed_offsets(
    cfg: &cutover::config::KafkaConfig,
    group: &str,
    topic: &str,
    partitions: i32,
) -> std::collections::HashMap<i32, i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let outsider: BaseConsumer = consumer_config(cfg, group).create().unwrap();
    let c = outsider
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    c.elements_for_topic(topic)
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => (e.partition(), o),
            other => panic!(
                "partition {} has no committed offset: {other:?}",
                e.partition()
            ),
        })
        .collect()
}
