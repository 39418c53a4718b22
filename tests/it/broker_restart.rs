//! A broker restart loses no acknowledged message. Uses a private Apache Kafka (own ports, own
//! data dir) so the shared stack is not disturbed; the broker is SIGKILLed, the harshest stop.

use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;

use super::kafka_broker::produce_n;
use super::support::{local_config, unique, PrivateBroker};
use cutover::kafka::{consumer_config, ensure_topics, producer_config, watermarks, TopicSpec};

#[tokio::test]
async fn acknowledged_messages_survive_a_broker_kill() {
    let mut broker = PrivateBroker::start();
    let mut cfg = local_config().kafka;
    cfg.brokers = vec![broker.bootstrap()];
    cfg.request_timeout_ms = 10_000;
    let topic = unique("it.restart");
    ensure_topics(
        &cfg,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 2,
            replication_factor: 1,
            configs: vec![],
        }],
    )
    .await
    .unwrap();
    {
        let producer: FutureProducer = producer_config(&cfg).create().unwrap();
        produce_n(&producer, &topic, 500).await; // every send awaited: all acknowledged
    }
    let before = watermarks(&cfg, &topic).await.unwrap();
    assert_eq!(before.values().map(|(_, h)| h).sum::<i64>(), 500);

    broker.restart();
    assert!(broker.data_dir().join("data/meta.properties").exists());

    let after = watermarks(&cfg, &topic).await.unwrap();
    assert_eq!(before, after, "watermarks changed across restart");

    let consumer: StreamConsumer = consumer_config(&cfg, &unique("it.restart.g"))
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut stream = consumer.stream();
    let mut values = std::collections::BTreeSet::new();
    while values.len() < 500 {
        let m = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("all messages readable after restart")
            .unwrap()
            .unwrap();
        let v = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
        assert!(values.insert(v.clone()), "duplicate {v}");
    }
    for i in 0..500 {
        assert!(values.contains(&format!("value-{i}")), "value-{i} lost");
    }

    // And the broker keeps accepting writes after the restart.
    let producer: FutureProducer = producer_config(&cfg).create().unwrap();
    produce_n(&producer, &topic, 5).await;
    let total: i64 = watermarks(&cfg, &topic)
        .await
        .unwrap()
        .values()
        .map(|(_, h)| h)
        .sum();
    assert_eq!(total, 505);
}
