//! Capture against the real legacy PostgreSQL, the real broker and the stack registry, checked
//! with a stock consumer (Python confluent-kafka + AvroDeserializer).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::support::{local_config, python, root, unique};
use cutover::capture::Capture;
use cutover::config::Config;
use cutover::database::Endpoint;
use cutover::event::TableId;
use cutover::kafka::topic::for_table as topic_for;

pub(super) struct Pipeline {
    stop: tokio::sync::watch::Sender<bool>,
    pub(super) task: tokio::task::JoinHandle<cutover::Result<()>>,
}

pub(super) fn test_config(tables: &[&str]) -> Config {
    let mut cfg = local_config();
    let id = unique("cap");
    cfg.source.slot = id.clone();
    cfg.source.publication = id.clone();
    cfg.source.schemas = vec![];
    cfg.source.tables = tables.iter().map(|t| format!("public.{t}")).collect();
    cfg.source.heartbeat_interval_secs = 1;
    cfg.source.status_interval_secs = 1;
    cfg.topic_prefix = id.replace('_', "-");
    cfg.kafka.partitions = 2;
    cfg
}

pub(super) async fn sql(cfg: &Config) -> tokio_postgres::Client {
    Endpoint {
        field: "source.url".into(),
        url: cfg.source.url.clone(),
        password: None,
        connect_timeout: Duration::from_secs(10),
    }
    .connect()
    .await
    .unwrap()
}

pub(super) async fn start(cfg: &Config) -> Pipeline {
    let (capture, lsn) = Capture::prepare(cfg).await.unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(capture.run(lsn, rx));
    Pipeline { stop, task }
}

impl Pipeline {
    pub(super) async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap().unwrap();
    }
}

pub(super) async fn cleanup(cfg: &Config) {
    let c = sql(cfg).await;
    let _ = c
        .execute("SELECT pg_drop_replication_slot($1)", &[&cfg.source.slot])
        .await;
    let _ = c
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS \"{}\"",
            cfg.source.publication
        ))
        .await;
    // Leave the shared `app` database as we found it (the default config captures all of it).
    for t in &cfg.source.tables {
        let (s, n) = t.split_once('.').unwrap();
        c.batch_execute(&format!("DROP TABLE IF EXISTS \"{s}\".\"{n}\" CASCADE"))
            .await
            .unwrap();
    }
}

pub(super) fn consume(cfg: &Config, topic: &str, count: usize) -> Vec<Value> {
    let out = Command::new(python())
        .arg(root().join("tests/python/consume_avro.py"))
        .args([
            &cfg.kafka.brokers[0],
            &cfg.registry.url,
            topic,
            &count.to_string(),
            "90",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python consumer: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Events of one topic in (commit_lsn, seq) order.
fn ordered(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|m| {
        (
            m["value"]["source"]["commit_lsn"].as_i64().unwrap(),
            m["value"]["source"]["seq"].as_i64().unwrap(),
        )
    });
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_op_reaches_kafka_readable_by_a_stock_consumer() {
    let table = unique("typ");
    let cfg = test_config(&[&table]);
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        r#"DROP TYPE IF EXISTS mood_{t}; CREATE TYPE mood_{t} AS ENUM ('happy', 'sad');
        CREATE TABLE "{t}" (
            id bigint PRIMARY KEY, i2 int2, i4 int4, n numeric(10,2), nu numeric, f4 float4,
            f8 float8, b bool, t text, vc varchar(20), bp char(3), by bytea, u uuid, d date,
            tm time, ts timestamp, tz timestamptz, iv interval, j json, jb jsonb, arr int4[],
            tarr text[], m mood_{t}, inet_col inet, "prénom" text)"#,
        t = table
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    c.batch_execute(&format!(
        r#"INSERT INTO "{t}" VALUES (1, 2, 3, 12345678.91, 3.14159265358979323846, 1.5, 2.25, true,
            'Grüße, 世界 ✓', 'vc', 'ab', '\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            '2024-02-29', '13:14:15.123456', '2024-02-29 13:14:15.5', '2024-02-29 13:14:15.5+02',
            '1 year 2 mons 3 days 04:05:06', '{{"a": 1}}', '{{"b": [1, 2]}}', '{{1,NULL,3}}',
            '{{"x,y",z}}', 'sad', '10.0.0.1/8', 'Zoë');
        INSERT INTO "{t}" (id) VALUES (2);
        UPDATE "{t}" SET t = 'changed' WHERE id = 1;
        UPDATE "{t}" SET id = 3 WHERE id = 2;
        DELETE FROM "{t}" WHERE id = 1;
        TRUNCATE "{t}";"#,
        t = table
    ))
    .await
    .unwrap();
    let topic = topic_for(&cfg.topic_prefix, &TableId::new("public", &table));
    // c, c, u, d+c (key change), d, and one truncate per partition (2).
    let msgs = consume(&cfg, &topic, 8);
    p.stop().await;
    cleanup(&cfg).await;
    c.batch_execute(&format!("DROP TYPE mood_{table}"))
        .await
        .unwrap();

    let truncates: Vec<&Value> = msgs.iter().filter(|m| m["value"]["op"] == "t").collect();
    assert_eq!(truncates.len(), 2, "one truncate per partition");
    let rows: Vec<Value> = ordered(
        msgs.iter()
            .filter(|m| m["value"]["op"] != "t")
            .cloned()
            .collect(),
    );
    let ops: Vec<&str> = rows
        .iter()
        .map(|m| m["value"]["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["c", "c", "u", "d", "c", "d"]);

    let first = &rows[0]["value"]["after"];
    assert_eq!(rows[0]["key"], serde_json::json!({"id": 1}));
    assert_eq!(first["i2"], 2);
    assert_eq!(first["n"], "12345678.91");
    assert_eq!(first["nu"], "3.14159265358979323846");
    assert_eq!(first["f4"], 1.5);
    assert_eq!(first["b"], true);
    assert_eq!(first["t"], "Grüße, 世界 ✓");
    assert_eq!(first["bp"], "ab ");
    assert_eq!(first["by"], "hex:00ff");
    assert_eq!(first["u"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(first["d"], "2024-02-29");
    assert_eq!(first["tm"], "13:14:15.123456");
    assert_eq!(first["ts"], "2024-02-29T13:14:15.500000");
    assert!(
        first["tz"]
            .as_str()
            .unwrap()
            .starts_with("2024-02-29T11:14:15.5"),
        "{}",
        first["tz"]
    );
    assert_eq!(first["iv"], "P1Y2M3DT4H5M6S");
    assert_eq!(first["jb"], r#"{"b": [1, 2]}"#);
    assert_eq!(first["arr"], serde_json::json!([1, null, 3]));
    assert_eq!(first["tarr"], serde_json::json!(["x,y", "z"]));
    assert_eq!(first["m"], "sad");
    assert_eq!(first["inet_col"], "10.0.0.1/8");
    assert_eq!(first["pr_nom"], "Zoë");
    // Source block and total order.
    let src = &rows[0]["value"]["source"];
    assert_eq!(src["db"], "app");
    assert_eq!(src["table"], table.as_str());
    assert_eq!(src["name"], "cutover");
    assert!(src["txid"].as_i64().unwrap() > 0);
    assert_eq!(rows[2]["value"]["after"]["t"], "changed");
    // Key change: delete old key 2, create new key 3, same transaction, consecutive seq.
    assert_eq!(rows[3]["key"], serde_json::json!({"id": 2}));
    assert_eq!(rows[4]["key"], serde_json::json!({"id": 3}));
    assert_eq!(
        rows[3]["value"]["source"]["commit_lsn"],
        rows[4]["value"]["source"]["commit_lsn"]
    );
    assert_eq!(rows[5]["value"]["before"]["id"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_table_transaction_keeps_commit_order_and_slot_is_confirmed() {
    let a = unique("ord_a");
    let b = unique("ord_b");
    let cfg = test_config(&[&a, &b]);
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        "CREATE TABLE \"{a}\" (id int PRIMARY KEY, v text); CREATE TABLE \"{b}\" (id int PRIMARY KEY, v text);"
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    for i in 0..20 {
        c.batch_execute(&format!(
            "BEGIN; INSERT INTO \"{a}\" VALUES ({i}, 'a'); INSERT INTO \"{b}\" VALUES ({i}, 'b'); UPDATE \"{a}\" SET v = 'a2' WHERE id = {i}; COMMIT;"
        ))
        .await
        .unwrap();
    }
    let ta = consume(
        &cfg,
        &topic_for(&cfg.topic_prefix, &TableId::new("public", &a)),
        40,
    );
    let tb = consume(
        &cfg,
        &topic_for(&cfg.topic_prefix, &TableId::new("public", &b)),
        20,
    );
    // Within a transaction: a-insert seq 0, b-insert seq 1, a-update seq 2.
    for m in &tb {
        assert_eq!(m["value"]["source"]["seq"], 1);
    }
    let all = ordered(ta.into_iter().chain(tb).collect());
    let seqs: Vec<i64> = all
        .iter()
        .map(|m| m["value"]["source"]["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [0, 1, 2].repeat(20));
    let ids: Vec<i64> = all
        .iter()
        .map(|m| m["key"]["id"].as_i64().unwrap())
        .collect();
    let expect: Vec<i64> = (0..20).flat_map(|i| [i, i, i]).collect();
    assert_eq!(ids, expect, "commit order");

    // The slot's confirmed LSN moves past the last commit once Kafka acknowledged it.
    let last_commit: i64 = all.last().unwrap()["value"]["source"]["commit_lsn"]
        .as_i64()
        .unwrap();
    let mut confirmed = 0i64;
    for _ in 0..60 {
        let lsn: String = c
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&cfg.source.slot],
            )
            .await
            .unwrap()
            .get(0);
        confirmed = cutover::event::Lsn::parse(&lsn).unwrap().0 as i64;
        if confirmed > last_commit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        confirmed > last_commit,
        "confirmed {confirmed} <= last commit {last_commit}"
    );
    p.stop().await;
    cleanup(&cfg).await;
}

/// Every message of `topic` up to its high watermarks (a fresh consumer group).
pub(super) async fn read_messages(
    cfg: &Config,
    topic: &str,
) -> Vec<rdkafka::message::OwnedMessage> {
    use futures::StreamExt;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let wm = cutover::kafka::watermarks(&cfg.kafka, topic).await.unwrap();
    let total: i64 = wm.values().map(|(lo, hi)| hi - lo).sum();
    let consumer: StreamConsumer = cutover::kafka::consumer_config(&cfg.kafka, &unique("read"))
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let mut stream = consumer.stream();
    while (out.len() as i64) < total {
        let m = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("messages")
            .unwrap()
            .unwrap();
        out.push(m.detach());
    }
    out
}

/// Read every message of `topic` up to its high watermarks, decoded with the writer schemas
/// from the registry: (commit_lsn, seq, op, row id).
pub(super) async fn read_all(cfg: &Config, topic: &str) -> Vec<(i64, i64, String, i64)> {
    use apache_avro::types::Value as AV;
    use rdkafka::Message;
    let reg = cutover::registry::RegistryClient::new(&cfg.registry).unwrap();
    let mut out = Vec::new();
    for m in read_messages(cfg, topic).await {
        let (id, datum) = cutover::codec::unwire(m.payload().unwrap()).unwrap();
        let schema = apache_avro::Schema::parse_str(&reg.schema_by_id(id).await.unwrap()).unwrap();
        let AV::Record(f) = apache_avro::from_avro_datum(&schema, &mut &datum[..], None).unwrap()
        else {
            panic!()
        };
        let get =
            |r: &Vec<(String, AV)>, n: &str| r.iter().find(|(k, _)| k == n).unwrap().1.clone();
        let AV::Record(src) = get(&f, "source") else {
            panic!()
        };
        let AV::Long(lsn) = get(&src, "commit_lsn") else {
            panic!()
        };
        let AV::Long(seq) = get(&src, "seq") else {
            panic!()
        };
        let AV::String(op) = get(&f, "op") else {
            panic!()
        };
        let row = match (get(&f, "after"), get(&f, "before")) {
            (AV::Union(1, r), _) | (_, AV::Union(1, r)) => *r,
            _ => panic!("no row"),
        };
        let AV::Record(row) = row else { panic!() };
        let id = match get(&row, "id") {
            AV::Union(1, v) => match *v {
                AV::Int(i) => i as i64,
                AV::Long(i) => i,
                _ => panic!(),
            },
            _ => panic!(),
        };
        out.push((lsn, seq, op, id));
    }
    out
}

fn capture_process(cfg: &Config, table: &str) -> std::process::Child {
    std::process::Command::new(super::support::cutover_bin())
        .arg("capture")
        .env("CUTOVER__SOURCE__SLOT", &cfg.source.slot)
        .env("CUTOVER__SOURCE__PUBLICATION", &cfg.source.publication)
        .env("CUTOVER__SOURCE__SCHEMAS", "")
        .env("CUTOVER__SOURCE__TABLES", format!("public.{table}"))
        .env("CUTOVER__SOURCE__HEARTBEAT_INTERVAL_SECS", "1")
        .env("CUTOVER__SOURCE__STATUS_INTERVAL_SECS", "1")
        .env("CUTOVER__TOPIC_PREFIX", &cfg.topic_prefix)
        .env("CUTOVER__KAFKA__PARTITIONS", "2")
        .env("CUTOVER__OBSERVE__LISTEN", "")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

pub(super) async fn confirmed_lsn(c: &tokio_postgres::Client, slot: &str) -> u64 {
    let lsn: Option<String> = c
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    lsn.and_then(|l| cutover::event::Lsn::parse(&l))
        .map(|l| l.0)
        .unwrap_or(0)
}

pub(super) async fn wait_confirmed_past(
    c: &tokio_postgres::Client,
    slot: &str,
    lsn: u64,
    secs: u64,
) -> bool {
    for _ in 0..secs * 4 {
        if confirmed_lsn(c, slot).await > lsn {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_transaction_loses_nothing_and_duplicates_are_recognisable() {
    let table = unique("crash");
    let cfg = test_config(&[&table]);
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        "CREATE TABLE \"{table}\" (id int PRIMARY KEY, pad text)"
    ))
    .await
    .unwrap();
    // Slot and publication first, so the writes below are captured from the start.
    drop(Capture::prepare(&cfg).await.unwrap());
    let topic = topic_for(&cfg.topic_prefix, &TableId::new("public", &table));

    let mut child = capture_process(&cfg, &table);
    // One big transaction (50k rows) and 200 small ones.
    c.batch_execute(&format!(
        "INSERT INTO \"{table}\" SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g"
    ))
    .await
    .unwrap();
    for i in 50_001..50_201 {
        c.execute(
            &format!("INSERT INTO \"{table}\" VALUES ($1, 'small')"),
            &[&i],
        )
        .await
        .unwrap();
    }
    let end: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let end = cutover::event::Lsn::parse(&end).unwrap().0;
    // Kill while events are flowing (some, not all, published).
    for _ in 0..400 {
        let n: i64 = cutover::kafka::watermarks(&cfg.kafka, &topic)
            .await
            .map(|w| w.values().map(|(_, h)| h).sum())
            .unwrap_or(0);
        if n > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = confirmed_lsn(&c, &cfg.source.slot).await;
    assert!(
        at_kill < end,
        "capture finished before the kill; test proves nothing"
    );

    let mut child = capture_process(&cfg, &table);
    assert!(
        wait_confirmed_past(&c, &cfg.source.slot, end, 120).await,
        "capture did not catch up"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let events = read_all(&cfg, &topic).await;
    let unique_events: std::collections::HashMap<(i64, i64), i64> =
        events.iter().map(|(l, s, _, id)| ((*l, *s), *id)).collect();
    // Every (commit_lsn, seq) names one row, however often it was sent.
    for (l, s, _, id) in &events {
        assert_eq!(
            unique_events[&(*l, *s)],
            *id,
            "same (commit_lsn, seq) with different rows"
        );
    }
    let ids: std::collections::BTreeSet<i64> = unique_events.values().copied().collect();
    assert_eq!(ids.len(), 50_200, "lost rows");
    assert_eq!(unique_events.len(), 50_200);
    assert!(ids.iter().copied().eq(1..=50_200));
    cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_captured_table_still_advances_the_slot() {
    let table = unique("idle");
    let other = unique("other");
    let cfg = test_config(&[&table]);
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        "CREATE TABLE \"{table}\" (id int PRIMARY KEY); CREATE TABLE \"{other}\" (id int PRIMARY KEY, v text);"
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    let before = confirmed_lsn(&c, &cfg.source.slot).await;
    // Other WAL traffic, none of it on the captured table.
    c.batch_execute(&format!(
        "INSERT INTO \"{other}\" SELECT g, repeat('y', 200) FROM generate_series(1, 5000) g"
    ))
    .await
    .unwrap();
    let after_writes: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let after_writes = cutover::event::Lsn::parse(&after_writes).unwrap().0;
    assert!(
        wait_confirmed_past(&c, &cfg.source.slot, after_writes, 30).await,
        "slot stuck at {before} while other WAL was written"
    );
    p.stop().await;
    cleanup(&cfg).await;
    c.batch_execute(&format!("DROP TABLE \"{other}\""))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_drop_column_register_new_versions_before_use() {
    let table = unique("ddl");
    let cfg = test_config(&[&table]);
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        "CREATE TABLE \"{table}\" (id int PRIMARY KEY, a text)"
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    c.batch_execute(&format!(
        "INSERT INTO \"{table}\" VALUES (1, 'one');
         ALTER TABLE \"{table}\" ADD COLUMN b int;
         INSERT INTO \"{table}\" VALUES (2, 'two', 22);
         ALTER TABLE \"{table}\" DROP COLUMN a;
         INSERT INTO \"{table}\" (id, b) VALUES (3, 33);"
    ))
    .await
    .unwrap();
    let topic = topic_for(&cfg.topic_prefix, &TableId::new("public", &table));
    let msgs = ordered(consume(&cfg, &topic, 3));
    p.stop().await;
    cleanup(&cfg).await;
    assert_eq!(msgs[0]["value"]["after"]["a"], "one");
    assert!(msgs[0]["value"]["after"].get("b").is_none());
    assert_eq!(msgs[1]["value"]["after"]["b"], 22);
    assert_eq!(msgs[2]["value"]["after"]["b"], 33);
    assert!(msgs[2]["value"]["after"].get("a").is_none());
    let reg = cutover::registry::RegistryClient::new(&cfg.registry).unwrap();
    assert_eq!(
        reg.versions(&format!("{topic}-value")).await.unwrap(),
        vec![1, 2, 3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_table_and_column_names_and_data_survive() {
    let table = format!("bestellung_ä_注文_{}", unique("u"));
    let cfg = test_config(&[&table]);
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        "CREATE TABLE \"{table}\" (\"schlüssel\" int PRIMARY KEY, \"größe ✓\" text)"
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    let text = "Ünïcødé 🚀 \u{0}".replace('\u{0}', "ø"); // PostgreSQL text has no NUL
    c.execute(&format!("INSERT INTO \"{table}\" VALUES (1, $1)"), &[&text])
        .await
        .unwrap();
    let topic = topic_for(&cfg.topic_prefix, &TableId::new("public", &table));
    assert!(topic.is_ascii(), "{topic}");
    let msgs = consume(&cfg, &topic, 1);
    p.stop().await;
    cleanup(&cfg).await;
    let v = &msgs[0]["value"];
    assert_eq!(v["source"]["table"], table.as_str());
    assert_eq!(v["after"]["gr__e__"], text.as_str());
    assert_eq!(msgs[0]["key"]["schl_ssel"], 1);
    // The exact column names travel in the schema as pg_name.
    let reg = cutover::registry::RegistryClient::new(&cfg.registry).unwrap();
    let schema = reg.latest(&format!("{topic}-value")).await.unwrap().schema;
    assert!(schema.contains("\"pg_name\":\"größe ✓\""), "{schema}");
}

/// Echo suppression is exact: only this pipeline's writers' origins are skipped (rows and
/// truncates); another pipeline's writes, and any other `cutover:`-looking origin, are
/// captured like every other change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_this_pipelines_own_origins_are_suppressed() {
    let table = unique("echo");
    let mut cfg = test_config(&[&table]);
    cfg.kafka.partitions = 1;
    let c = sql(&cfg).await;
    c.batch_execute(&format!(r#"CREATE TABLE "{table}" (id int PRIMARY KEY)"#))
        .await
        .unwrap();
    let p = start(&cfg).await;
    let own = cutover::database::origin::origin_name(&cfg.name, "backsync", Some("pod-0"));
    let other = cutover::database::origin::origin_name("another-pipeline", "backsync", None);
    let intruder = cutover::database::origin::origin_name(&cfg.name, "intruder", None);
    for (origin, sql_text) in [
        (own.as_str(), format!(r#"INSERT INTO "{table}" VALUES (1)"#)),
        (
            other.as_str(),
            format!(r#"INSERT INTO "{table}" VALUES (2)"#),
        ),
        (
            intruder.as_str(),
            format!(r#"INSERT INTO "{table}" VALUES (3)"#),
        ),
        (own.as_str(), format!(r#"TRUNCATE "{table}""#)),
    ] {
        let w = sql(&cfg).await;
        w.execute(
            "SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL",
            &[&origin],
        )
        .await
        .unwrap();
        w.execute("SELECT pg_replication_origin_session_setup($1)", &[&origin])
            .await
            .unwrap();
        w.batch_execute(&sql_text).await.unwrap();
        w.batch_execute("SELECT pg_replication_origin_session_reset()")
            .await
            .unwrap();
    }
    c.batch_execute(&format!(r#"INSERT INTO "{table}" VALUES (100)"#))
        .await
        .unwrap();
    let topic = topic_for(&cfg.topic_prefix, &TableId::new("public", &table));
    // One partition: the topic holds the captured changes in commit order.
    let got: Vec<(String, i64)> = consume(&cfg, &topic, 3)
        .iter()
        .map(|m| {
            (
                m["value"]["op"].as_str().unwrap().to_string(),
                m["value"]["after"]["id"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("c".into(), 2), ("c".into(), 3), ("c".into(), 100)],
        "own origin {own} must be skipped, {other} and {intruder} captured"
    );
    p.stop().await;
    for o in [&own, &other, &intruder] {
        let _ = c
            .execute("SELECT pg_replication_origin_drop($1)", &[o])
            .await;
    }
    cleanup(&cfg).await;
}
