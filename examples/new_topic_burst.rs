//! The many-tables loss hunt (docs/PERFORMANCE.md, "A lost row"): capture's start over a
//! large publication, without PostgreSQL. Each round creates `TOPICS` topics of `PARTS`
//! partitions through `kafka::ensure_table_topics` (capture's path), then at once produces
//! `N` keyed records over them through capture's producer config and shards, counts the
//! delivery reports, and reads every topic back: any record acknowledged but not in Kafka,
//! or in Kafka twice, is printed with its topic, partition and key.
//!
//! `cargo run --release --example new_topic_burst -- 127.0.0.1:9092 [rounds] [topics] [n] [parts] [debug]`
//! (`debug` is a librdkafka `debug` list, e.g. `msg,eos,protocol`, logged to stderr).
//! `NTB_WAIT=metadata` hands the topics out the way cutover did before the fix (once metadata
//! names every leader), instead of once every leader serves its partitions;
//! `NTB_PROPS="k=v,…"` adds librdkafka properties.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover::config::KafkaConfig;
use cutover::kafka;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Default)]
struct Acks {
    ok: AtomicU64,
    failed: Mutex<Vec<(u64, String)>>,
    /// Record id → (partition, offset) the broker acknowledged.
    at: Mutex<HashMap<u64, (i32, i64)>>,
}

struct Ctx(Arc<Acks>);
impl ClientContext for Ctx {}
impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, r: &DeliveryResult<'_>, id: Box<u64>) {
        match r {
            Ok(m) => {
                self.0.ok.fetch_add(1, Ordering::Relaxed);
                self.0
                    .at
                    .lock()
                    .unwrap()
                    .insert(*id, (m.partition(), m.offset()));
            }
            Err((e, _)) => self.0.failed.lock().unwrap().push((*id, e.to_string())),
        }
    }
}

fn shards(partitions: usize) -> usize {
    partitions.div_ceil(256).clamp(1, 8)
}

fn shard_of(topic: &str, shards: usize) -> usize {
    let h = topic.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (h % shards as u64) as usize
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: u64| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let brokers = a.first().cloned().unwrap_or("127.0.0.1:9092".into());
    let (rounds, topics, n, parts) = (arg(1, 5), arg(2, 500), arg(3, 200_000), arg(4, 3));
    let debug = a.get(5).cloned();
    let mut props = serde_json::Map::new();
    if let Some(d) = &debug {
        props.insert("debug".into(), d.clone().into());
    }
    // Extra librdkafka properties for every client: NTB_PROPS="k=v,k=v".
    for kv in std::env::var("NTB_PROPS").unwrap_or_default().split(',') {
        if let Some((k, v)) = kv.split_once('=') {
            props.insert(k.into(), v.into());
        }
    }
    let cfg: KafkaConfig = serde_json::from_value(serde_json::json!({
        "brokers": [brokers], "partitions": parts, "request_timeout_ms": 120000,
        "properties": props,
    }))
    .expect("kafka config");
    let mut lost_total = 0;
    for round in 0..rounds {
        let prefix = format!("ntb{}-{round}", chrono::Utc::now().timestamp());
        let names: Vec<String> = (0..topics).map(|t| format!("{prefix}.t{t}")).collect();
        let t0 = Instant::now();
        if std::env::var("NTB_WAIT").as_deref() == Ok("metadata") {
            // cutover before the fix: hand topics out once metadata names every leader.
            let admin: AdminClient<DefaultClientContext> =
                kafka::base_config(&cfg).create().expect("admin");
            let new: Vec<NewTopic<'_>> = names
                .iter()
                .map(|n| NewTopic::new(n, parts as i32, TopicReplication::Fixed(1)))
                .collect();
            admin
                .create_topics(new.iter(), &AdminOptions::new())
                .await
                .expect("CreateTopics");
            kafka::partition_counts(&cfg, &names)
                .await
                .expect("leaders");
        } else {
            kafka::ensure_table_topics(&cfg, &names)
                .await
                .expect("topics");
        }
        let created_s = t0.elapsed().as_secs_f64();
        let k = shards((topics * parts) as usize);
        let mut pc = kafka::producer_config(&cfg);
        kafka::set_default(
            &mut pc,
            "queue.buffering.max.messages",
            &(20_000 / k).to_string(),
        );
        kafka::set_default(
            &mut pc,
            "queue.buffering.max.kbytes",
            &(16_384 / k).to_string(),
        );
        let acks = Arc::new(Acks::default());
        let producers: Vec<ThreadedProducer<Ctx>> = (0..k)
            .map(|_| pc.create_with_context(Ctx(acks.clone())).expect("producer"))
            .collect();
        let t1 = Instant::now();
        for i in 0..n {
            let topic = &names[(i % topics) as usize];
            let key = i.to_string();
            let value = format!("record {i} of round {round}");
            let p = &producers[shard_of(topic, k)];
            let mut rec = BaseRecord::with_opaque_to(topic, Box::new(i))
                .key(&key)
                .payload(&value);
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
        }
        for p in &producers {
            p.flush(Duration::from_secs(300)).expect("flush");
        }
        let produced_s = t1.elapsed().as_secs_f64();
        drop(producers);
        let failed = acks.failed.lock().unwrap().clone();
        // Read everything back.
        let consumer: BaseConsumer = kafka::base_config(&cfg)
            .set("group.id", format!("{prefix}-check"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        let mut expected_total = 0i64;
        for t in &names {
            for p in 0..parts as i32 {
                let (lo, hi) = consumer
                    .fetch_watermarks(t, p, Duration::from_secs(30))
                    .expect("watermarks");
                expected_total += hi - lo;
                tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
            }
        }
        consumer.assign(&tpl).expect("assign");
        let mut seen: HashMap<u64, u32> = HashMap::with_capacity(n as usize);
        let mut got = 0i64;
        let deadline = Instant::now() + Duration::from_secs(300);
        while got < expected_total && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
                got += 1;
                let id: u64 = std::str::from_utf8(m.key().unwrap_or_default())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::MAX);
                *seen.entry(id).or_default() += 1;
            }
        }
        let at = std::mem::take(&mut *acks.at.lock().unwrap());
        let mut lost = 0;
        for i in 0..n {
            if !seen.contains_key(&i) && !failed.iter().any(|(f, _)| *f == i) {
                lost += 1;
                if lost <= 20 {
                    println!(
                        "  LOST {} key {i}: acknowledged at {:?}",
                        names[(i % topics) as usize],
                        at.get(&i)
                    );
                }
            }
        }
        let dups = seen.values().filter(|c| **c > 1).count();
        // Acknowledged without an offset: librdkafka's implicit acks.
        let no_offset: Vec<u64> = at
            .iter()
            .filter(|(_, (_, o))| *o < 0)
            .map(|(i, _)| *i)
            .collect();
        let no_offset_in_kafka = no_offset.iter().filter(|i| seen.contains_key(i)).count();
        lost_total += lost;
        println!(
            "round {round}: {topics} topics x {parts} created+ready in {created_s:.1} s, {n} records \
             over {k} producer(s) in {produced_s:.1} s: acked {}, failed {}, in Kafka {got} \
             (watermarks {expected_total}), lost {lost}, duplicated {dups}, \
             acked without offset {} ({no_offset_in_kafka} of them in Kafka)",
            acks.ok.load(Ordering::Relaxed),
            failed.len(),
            no_offset.len()
        );
        for (i, e) in failed.iter().take(5) {
            println!("  FAILED key {i}: {e}");
        }
        drop(consumer);
        let admin: AdminClient<DefaultClientContext> =
            kafka::base_config(&cfg).create().expect("admin");
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let _ = admin.delete_topics(&refs, &AdminOptions::new()).await;
    }
    println!("{rounds} round(s): {lost_total} record(s) lost");
    std::process::exit(i32::from(lost_total > 0));
}
