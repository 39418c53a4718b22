//! Capture under faults and edge cases: unchanged TOAST values, tables without a primary key,
//! rows the codec cannot represent (dead-letter), a source that restarts, and the fatal
//! environment errors (wal_level, invalidated slot). Source restarts and odd settings run on a
//! private PostgreSQL cluster so the shared stack is never disturbed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::capture::{cleanup, consume, read_all, read_messages, sql, start, test_config};
use super::support::{cutover_bin, free_port, scrape, unique, KillOnDrop, PrivatePostgres};
use cutover::capture::setup::{ensure_publication, PublicationChange};
use cutover::capture::Capture;
use cutover::config::{Config, DbUrl};
use cutover::error::ErrorKind;
use cutover::event::TableId;
use cutover::kafka::topic::{capture_dlq as capture_dlq_topic, for_table as topic_for};

fn topic(cfg: &Config, table: &str) -> String {
    topic_for(&cfg.topic_prefix, &TableId::new("public", table))
}

/// Raw messages of `topic` (payload, headers), up to its high watermarks.
async fn read_raw(cfg: &Config, topic: &str) -> Vec<(Vec<u8>, Vec<(String, String)>)> {
    use rdkafka::message::Headers;
    use rdkafka::Message;
    read_messages(cfg, topic)
        .await
        .iter()
        .map(|m| {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (m.payload().unwrap_or_default().to_vec(), headers)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_column_is_marked_and_never_sent_as_data() {
    let table = unique("toast");
    let cfg = test_config(&[&table]);
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        "CREATE TABLE \"{table}\" (id int PRIMARY KEY, n int, big text);
         ALTER TABLE \"{table}\" ALTER COLUMN big SET STORAGE EXTERNAL;"
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    // 20 kB, stored out of line (EXTERNAL: no compression), so an UPDATE of `n` does not resend it.
    c.batch_execute(&format!(
        "INSERT INTO \"{table}\" VALUES (1, 0, repeat('x', 20000));
         UPDATE \"{table}\" SET n = 1 WHERE id = 1;"
    ))
    .await
    .unwrap();
    let events = consume(&cfg, &topic(&cfg, &table), 2);
    p.stop().await;
    let insert = events.iter().find(|e| e["value"]["op"] == "c").unwrap();
    let update = events.iter().find(|e| e["value"]["op"] == "u").unwrap();
    assert_eq!(
        insert["value"]["after"]["big"].as_str().map(str::len),
        Some(20000)
    );
    assert_eq!(insert["value"]["unchanged_toast"], serde_json::json!([]));
    assert_eq!(update["value"]["after"]["n"], 1);
    assert!(update["value"]["after"]["big"].is_null(), "{update}");
    assert_eq!(
        update["value"]["unchanged_toast"],
        serde_json::json!(["big"])
    );
    cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_without_primary_key_is_refused_unless_key_columns_are_configured() {
    let table = unique("nopk");
    let mut cfg = test_config(&[&table]);
    cfg.source.unkeyed_tables = cutover::config::UnkeyedTables::Fail;
    let c = sql(&cfg).await;
    c.batch_execute(&format!("CREATE TABLE \"{table}\" (code text, n int)"))
        .await
        .unwrap();
    let p = start(&cfg).await;
    c.batch_execute(&format!("INSERT INTO \"{table}\" VALUES ('a', 1)"))
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), p.task)
        .await
        .expect("capture stops")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let msg = err.to_string();
    assert!(msg.contains("has no primary key"), "{msg}");
    assert!(msg.contains("source.key_columns"), "{msg}");
    assert!(msg.contains("REPLICA IDENTITY FULL"), "{msg}");

    // With key columns configured the same slot resumes and the row arrives, keyed by `code`.
    let mut keyed = cfg.clone();
    keyed
        .source
        .key_columns
        .insert(format!("public.{table}"), vec!["code".into()]);
    let p = start(&keyed).await;
    let events = consume(&keyed, &topic(&keyed, &table), 1);
    p.stop().await;
    assert_eq!(events[0]["key"]["code"], "a", "{}", events[0]);
    assert_eq!(events[0]["value"]["after"]["n"], 1);
    cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrepresentable_row_goes_to_the_capture_dead_letter_topic_and_the_stream_goes_on() {
    let table = unique("poison");
    let cfg = test_config(&[&table]);
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        "CREATE TABLE \"{table}\" (id int PRIMARY KEY, amount numeric(10,2))"
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    // Avro's decimal has no NaN; PostgreSQL's numeric(p,s) has.
    c.batch_execute(&format!(
        "INSERT INTO \"{table}\" VALUES (1, 1.50);
         INSERT INTO \"{table}\" VALUES (2, 'NaN');
         INSERT INTO \"{table}\" VALUES (3, 3.25);"
    ))
    .await
    .unwrap();
    let events = consume(&cfg, &topic(&cfg, &table), 2);
    p.stop().await;
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e["value"]["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), [1, 3].into());

    let dead = read_raw(&cfg, &capture_dlq_topic(&cfg.topic_prefix)).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (payload, headers) = &dead[0];
    let body: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(body["table"], format!("public.{table}"));
    assert_eq!(body["op"], "c");
    assert_eq!(body["after"]["amount"], "NaN");
    assert_eq!(body["after"]["id"], "2");
    let header = |k: &str| {
        headers
            .iter()
            .find(|(hk, _)| hk == k)
            .map(|(_, v)| v.clone())
    };
    assert!(
        header("cutover.error").unwrap().contains("amount"),
        "{headers:?}"
    );
    assert_eq!(header("cutover.error.kind").as_deref(), Some("data"));
    assert_eq!(header("cutover.table"), Some(format!("public.{table}")));
    // The dead letter keeps its place in the total order: ids 1 and 3 have seq 0 and 2.
    let seqs: BTreeSet<i64> = events
        .iter()
        .map(|e| e["value"]["source"]["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(body["seq"], 1);
    assert!(!seqs.contains(&1));
    cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_follows_the_configured_tables() {
    let (a, b) = (unique("puba"), unique("pubb"));
    let mut cfg = test_config(&[&a]);
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        "CREATE TABLE \"{a}\" (id int PRIMARY KEY); CREATE TABLE \"{b}\" (id int PRIMARY KEY);"
    ))
    .await
    .unwrap();
    let published = |pubname: String| {
        let c = &c;
        async move {
            c.query(
                "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
                &[&pubname],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        ensure_publication(&c, &cfg.source).await.unwrap(),
        PublicationChange::Created
    );
    assert_eq!(
        ensure_publication(&c, &cfg.source).await.unwrap(),
        PublicationChange::Unchanged
    );
    cfg.source.tables.push(format!("public.{b}"));
    assert_eq!(
        ensure_publication(&c, &cfg.source).await.unwrap(),
        PublicationChange::Reconciled
    );
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(published(cfg.source.publication.clone()).await, both);
    cfg.source.tables.remove(0);
    assert_eq!(
        ensure_publication(&c, &cfg.source).await.unwrap(),
        PublicationChange::Reconciled
    );
    assert_eq!(published(cfg.source.publication.clone()).await, vec![b]);
    cfg.source.tables.push(format!("public.{a}"));
    cleanup(&cfg).await;
}

fn private_config(pg: &PrivatePostgres, table: &str) -> Config {
    let mut cfg = test_config(&[table]);
    cfg.source.url = DbUrl::new(pg.url("postgres"));
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_a_fatal_error_that_says_what_to_do() {
    let pg = PrivatePostgres::start(&["wal_level = replica"]);
    let cfg = private_config(&pg, "t");
    let err = Capture::prepare(&cfg).await.err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::Environment);
    assert_eq!(
        cutover::retry::policy(err.kind()),
        cutover::retry::Decision::Fatal
    );
    assert!(err.to_string().contains("wal_level = logical"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidated_slot_is_a_fatal_error_that_says_what_to_do() {
    let pg = PrivatePostgres::start(&[
        "wal_level = logical",
        "max_slot_wal_keep_size = 1MB",
        "min_wal_size = 32MB",
    ]);
    let cfg = private_config(&pg, "w");
    let c = sql(&cfg).await;
    c.batch_execute("CREATE TABLE w (id int PRIMARY KEY, pad text)")
        .await
        .unwrap();
    drop(Capture::prepare(&cfg).await.unwrap()); // creates the slot, never reads it
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        c.batch_execute(
            "INSERT INTO w SELECT g, repeat('p', 200) FROM generate_series(1, 5000) g
               ON CONFLICT (id) DO UPDATE SET pad = excluded.pad;
             SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .await
        .unwrap();
        let status: Option<String> = c
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                &[&cfg.source.slot],
            )
            .await
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot never invalidated: {status:?}"
        );
    }
    let err = Capture::prepare(&cfg).await.err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::Environment);
    let msg = err.to_string();
    assert!(msg.contains("invalidated"), "{msg}");
    assert!(msg.contains("recreate it and backfill"), "{msg}");
    assert!(msg.contains("--accept-gap"), "{msg}");
    // Accepted: the invalidated slot is replaced and the gap recorded.
    let gap = cutover::capture::setup::GapPolicy::Accept { by: "test".into() };
    let (_capture, lsn) = Capture::prepare_with(&cfg, &gap).await.unwrap();
    let row = c
        .query_one(
            "SELECT reason, resumed_at_lsn FROM cutover.capture_gaps WHERE slot = $1",
            &[&cfg.source.slot],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "invalidated");
    assert_eq!(row.get::<_, i64>(1) as u64, lsn.0);
    let status: Option<String> = c
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&cfg.source.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(status.as_deref(), Some("lost"));
}

/// Distinct ids on the topic, polled until `want` are there (or the deadline passes).
async fn wait_ids(cfg: &Config, topic: &str, want: usize) -> BTreeSet<i64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // The topic appears with the table's first event.
        if cutover::kafka::watermarks(&cfg.kafka, topic).await.is_err() {
            assert!(Instant::now() < deadline, "topic {topic} never appeared");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let ids: BTreeSet<i64> = read_all(cfg, topic).await.iter().map(|e| e.3).collect();
        if ids.len() >= want || Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_reconnects_after_the_source_restarts_and_exports_its_metrics() {
    let pg = PrivatePostgres::start(&["wal_level = logical"]);
    let table = "orders";
    let cfg = private_config(&pg, table);
    let c = sql(&cfg).await;
    c.batch_execute("CREATE TABLE orders (id int PRIMARY KEY, pad text)")
        .await
        .unwrap();
    let metrics_port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(cutover_bin())
        .arg("capture")
        .env("CUTOVER__SOURCE__URL", pg.url("postgres"))
        .env("CUTOVER__SOURCE__SLOT", &cfg.source.slot)
        .env("CUTOVER__SOURCE__PUBLICATION", &cfg.source.publication)
        .env("CUTOVER__SOURCE__SCHEMAS", "")
        .env("CUTOVER__SOURCE__TABLES", "public.orders")
        .env("CUTOVER__SOURCE__HEARTBEAT_INTERVAL_SECS", "1")
        .env("CUTOVER__SOURCE__STATUS_INTERVAL_SECS", "1")
        .env("CUTOVER__TOPIC_PREFIX", &cfg.topic_prefix)
        .env("CUTOVER__KAFKA__PARTITIONS", "2")
        .env(
            "CUTOVER__OBSERVE__LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let topic = topic(&cfg, table);
    // Changes count from the slot's creation: wait until the capture streams.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&cfg.source.slot],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "capture never started: {}",
            std::fs::read_to_string(log.path()).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.batch_execute("INSERT INTO orders SELECT g, 'a' FROM generate_series(1, 100) g")
        .await
        .unwrap();
    assert_eq!(wait_ids(&cfg, &topic, 100).await.len(), 100);

    pg.restart(); // immediate stop: the walsender dies like on a crash
    let c = sql(&cfg).await;
    c.batch_execute("INSERT INTO orders SELECT g, 'b' FROM generate_series(101, 200) g")
        .await
        .unwrap();
    let ids = wait_ids(&cfg, &topic, 200).await;
    let logs = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(ids, (1..=200).collect(), "logs:\n{logs}");
    assert!(logs.contains("reconnecting"), "{logs}");

    // Every capture metric the issue names is exported, with sane values (the slot gauges come
    // from the monitor embedded in `cutover capture`).
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = scrape(&format!("127.0.0.1:{metrics_port}")).await;
        if text.contains("cutover_slot_wal_retained_bytes") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for name in [
        "cutover_capture_events_total{table=\"public.orders\",op=\"c\"}",
        "cutover_capture_bytes_total{table=\"public.orders\"}",
        "cutover_capture_transactions_total",
        "cutover_capture_lag_seconds",
        "cutover_capture_confirmed_position_bytes",
        "cutover_slot_wal_retained_bytes{slot=",
        "cutover_slot_active{slot=",
        "cutover_capture_producer_queue_messages",
        "cutover_up{command=\"capture\"} 1",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    assert!(value("cutover_capture_events_total{table=\"public.orders\",op=\"c\"}") >= 100.0);
    assert!(value("cutover_capture_transactions_total") >= 1.0);
    let lag = value("cutover_capture_lag_seconds");
    assert!((0.0..600.0).contains(&lag), "lag {lag}");
    child.kill();
}

/// Issue 16, item 0: a backlog replays whatever happened to its tables since. With capture
/// stopped, a table is created, written and dropped, another renamed, a third altered (a
/// column added, another dropped), a fourth re-keyed (its key subject takes the new key); on restart capture takes each relation's key from the
/// stream, not today's catalog, and every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_tables_dropped_renamed_or_altered_since_replays_to_the_end() {
    let s = unique("ddlreplay");
    let mut cfg = test_config(&[]);
    cfg.source.tables = vec![];
    cfg.source.schemas = vec![s.clone()];
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        r#"CREATE SCHEMA "{s}"; CREATE TABLE "{s}".keep (id bigint PRIMARY KEY, v text);
           CREATE TABLE "{s}".rekey (id bigint PRIMARY KEY, region text NOT NULL);"#
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    c.batch_execute(&format!(
        r#"INSERT INTO "{s}".keep VALUES (1, 'before'); INSERT INTO "{s}".rekey VALUES (1, 'eu');"#
    ))
    .await
    .unwrap();
    let t = |name: &str| topic_for(&cfg.topic_prefix, &TableId::new(&s, name));
    assert_eq!(wait_ids(&cfg, &t("keep"), 1).await.len(), 1);
    assert_eq!(wait_ids(&cfg, &t("rekey"), 1).await.len(), 1);
    p.stop().await;

    // Behind capture's back: all of this is in the slot's backlog.
    c.batch_execute(&format!(
        r#"CREATE TABLE "{s}".gone (id bigint PRIMARY KEY, v text);
           INSERT INTO "{s}".gone SELECT g, 'x' FROM generate_series(1, 3) g;
           UPDATE "{s}".gone SET v = 'y' WHERE id = 2;
           DELETE FROM "{s}".gone WHERE id = 3;
           DROP TABLE "{s}".gone;
           CREATE TABLE "{s}".old_name (id bigint PRIMARY KEY);
           INSERT INTO "{s}".old_name VALUES (1);
           ALTER TABLE "{s}".old_name RENAME TO new_name;
           INSERT INTO "{s}".new_name VALUES (2);
           CREATE TABLE "{s}".alt (id bigint PRIMARY KEY, v text);
           INSERT INTO "{s}".alt VALUES (1, 'a');
           ALTER TABLE "{s}".alt ADD COLUMN w int;
           INSERT INTO "{s}".alt VALUES (2, 'b', 2);
           ALTER TABLE "{s}".alt DROP COLUMN v;
           INSERT INTO "{s}".alt VALUES (3, 3);
           ALTER TABLE "{s}".rekey DROP CONSTRAINT rekey_pkey, ADD PRIMARY KEY (id, region);
           INSERT INTO "{s}".rekey VALUES (1, 'us');
           INSERT INTO "{s}".keep VALUES (2, 'after');"#
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    assert_eq!(
        wait_ids(&cfg, &t("keep"), 2).await,
        BTreeSet::from([1, 2]),
        "the surviving table's rows"
    );
    let mut gone = read_all(&cfg, &t("gone")).await;
    gone.sort_by_key(|e| (e.0, e.1)); // commit order across partitions
    let ops: Vec<&str> = gone.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(ops, ["c", "c", "c", "u", "d"], "{gone:?}");
    assert_eq!(wait_ids(&cfg, &t("old_name"), 1).await, BTreeSet::from([1]));
    assert_eq!(wait_ids(&cfg, &t("new_name"), 1).await, BTreeSet::from([2]));
    assert_eq!(
        wait_ids(&cfg, &t("alt"), 3).await,
        BTreeSet::from([1, 2, 3])
    );
    // Re-keyed: the new key (id, region) is registered as the key subject's next version.
    // (Re-sent copies of the unconfirmed tail carry the same position: counted once.)
    let rekeyed: BTreeSet<(i64, i64)> = read_all(&cfg, &t("rekey"))
        .await
        .iter()
        .map(|e| (e.0, e.1))
        .collect();
    assert_eq!(rekeyed.len(), 2, "{rekeyed:?}");
    let reg = cutover::registry::RegistryClient::new(&cfg.registry).unwrap();
    let key = reg.latest(&format!("{}-key", t("rekey"))).await.unwrap();
    assert!(
        key.version >= 2 && key.schema.contains("region"),
        "{}",
        key.schema
    );
    assert!(!p.task.is_finished(), "capture stopped");
    p.stop().await;
    c.batch_execute(&format!(r#"DROP SCHEMA "{s}" CASCADE"#))
        .await
        .unwrap();
    cleanup(&cfg).await;
}

/// Issue 16, item 1: a slot dropped behind cutover's back is never recreated silently. The
/// next start refuses, naming the last confirmed position and the ways on (`cutover capture`
/// exits with the reason); `--accept-gap` creates a new slot and records the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_is_refused_until_the_gap_is_accepted_and_recorded() {
    let table = unique("lostslot");
    let mut cfg = test_config(&[&table]);
    cfg.name = table.clone();
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        r#"CREATE TABLE "{table}" (id bigint PRIMARY KEY)"#
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    c.batch_execute(&format!(r#"INSERT INTO "{table}" VALUES (1)"#))
        .await
        .unwrap();
    assert_eq!(wait_ids(&cfg, &topic(&cfg, &table), 1).await.len(), 1);
    // The heartbeat records the confirmed position (every second here).
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.stop().await;
    let recorded: i64 = c
        .query_one(
            "SELECT confirmed_lsn FROM cutover.capture_slots WHERE pipeline = $1 AND slot = $2",
            &[&cfg.name, &cfg.source.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(recorded > 0);

    // Someone drops the slot; changes go on.
    c.execute("SELECT pg_drop_replication_slot($1)", &[&cfg.source.slot])
        .await
        .unwrap();
    c.batch_execute(&format!(r#"INSERT INTO "{table}" VALUES (2)"#))
        .await
        .unwrap();
    let err = Capture::prepare(&cfg).await.err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::Environment);
    let msg = err.to_string();
    assert!(msg.contains("is gone"), "{msg}");
    assert!(
        msg.contains("--accept-gap") && msg.contains("backfill"),
        "{msg}"
    );
    let none: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&cfg.source.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(none, 0, "a slot was created anyway");
    // The command line says the same and exits 1.
    let dir = tempfile::tempdir().unwrap();
    let config = super::apply::write_config(&cfg, dir.path());
    let o = std::process::Command::new(cutover_bin())
        .args(["capture", "--config"])
        .arg(&config)
        .env("CUTOVER__OBSERVE__LISTEN", "")
        .env("CUTOVER__MONITOR__EMBEDDED", "false")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is gone"));

    // Accepted: a new slot from now, the gap on record, and the stream goes on.
    let gap = cutover::capture::setup::GapPolicy::Accept { by: "test".into() };
    let (capture, lsn) = Capture::prepare_with(&cfg, &gap).await.unwrap();
    let row = c
        .query_one(
            "SELECT reason, lost_after_lsn, resumed_at_lsn, accepted_by FROM cutover.capture_gaps
             WHERE pipeline = $1 AND slot = $2",
            &[&cfg.name, &cfg.source.slot],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "dropped");
    assert_eq!(row.get::<_, i64>(1), recorded);
    assert_eq!(row.get::<_, i64>(2) as u64, lsn.0);
    assert_eq!(row.get::<_, String>(3), "test");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(capture.run(lsn, rx));
    c.batch_execute(&format!(r#"INSERT INTO "{table}" VALUES (3)"#))
        .await
        .unwrap();
    // Row 2 was committed while no slot existed: lost to the stream (a backfill brings it).
    assert_eq!(
        wait_ids(&cfg, &topic(&cfg, &table), 2).await,
        BTreeSet::from([1, 3])
    );
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
    // A later start with the (re-remembered) slot is normal again.
    drop(Capture::prepare(&cfg).await.unwrap());
    c.execute(
        "DELETE FROM cutover.capture_gaps WHERE pipeline = $1",
        &[&cfg.name],
    )
    .await
    .unwrap();
    cleanup(&cfg).await;
}

/// Issue 16, item 2: a row the codec cannot represent in a backfill chunk is dead-lettered
/// with its coordinates, like a live one; the chunk's other rows and the backfill go on to
/// the end (it used to stop capture for every table, and a restart met the same chunk again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrepresentable_row_in_a_backfill_chunk_is_dead_lettered_and_the_backfill_finishes() {
    let table = unique("bfpoison");
    let mut cfg = test_config(&[&table]);
    cfg.name = table.clone();
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        "CREATE TABLE \"{table}\" (id int PRIMARY KEY, amount numeric(10,2));
         INSERT INTO \"{table}\" VALUES (1, 1.50), (2, 'NaN'), (3, 3.25), (4, 4.00);"
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let config = super::apply::write_config(&cfg, dir.path());
    let (code, out, err) = super::replay::cli(
        &config,
        &[
            "backfill",
            "--table",
            &format!("public.{table}"),
            "--chunk-rows",
            "2",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        wait_ids(&cfg, &topic(&cfg, &table), 3).await,
        BTreeSet::from([1, 3, 4])
    );
    assert!(!p.task.is_finished(), "capture stopped");
    let dead = read_raw(&cfg, &capture_dlq_topic(&cfg.topic_prefix)).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let body: serde_json::Value = serde_json::from_slice(&dead[0].0).unwrap();
    assert_eq!(body["op"], "r");
    assert_eq!(body["after"]["id"], "2");
    assert_eq!(body["after"]["amount"], "NaN");
    assert!(
        body["error"].as_str().unwrap().contains("backfill chunk"),
        "{body}"
    );
    let state: String = c
        .query_one(
            "SELECT state FROM cutover.backfill WHERE pipeline = $1",
            &[&cfg.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "done");
    p.stop().await;
    c.execute(
        "DELETE FROM cutover.backfill WHERE pipeline = $1",
        &[&cfg.name],
    )
    .await
    .unwrap();
    cleanup(&cfg).await;
}

/// Issue 16, item 4: watermarks anyone can write (`pg_logical_emit_message` is granted to
/// PUBLIC) open no window unless this capture started the chunk: a flood of forged lows is
/// counted and ignored, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_watermarks_are_counted_and_ignored() {
    let metrics = cutover::observe::install_recorder().unwrap();
    let table = unique("forgedwm");
    let cfg = test_config(&[&table]);
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        r#"CREATE TABLE "{table}" (id bigint PRIMARY KEY)"#
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    c.execute(
        "SELECT pg_logical_emit_message(true, $1::text, g || ' low public.' || $2::text)
         FROM generate_series(1, 2000) g",
        &[&cutover::capture::backfill::WATERMARK_PREFIX, &table],
    )
    .await
    .unwrap();
    c.execute(
        "SELECT pg_logical_emit_message(true, $1::text, '7 high public.' || $2::text)",
        &[&cutover::capture::backfill::WATERMARK_PREFIX, &table],
    )
    .await
    .unwrap();
    c.batch_execute(&format!(
        r#"INSERT INTO "{table}" SELECT g FROM generate_series(1, 50) g"#
    ))
    .await
    .unwrap();
    assert_eq!(wait_ids(&cfg, &topic(&cfg, &table), 50).await.len(), 50);
    let page = metrics.render();
    let foreign: f64 = page
        .lines()
        .find(|l| {
            l.starts_with("cutover_backfill_watermarks_ignored_total{")
                && l.contains("reason=\"foreign\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no foreign watermark count:\n{page}"));
    assert!(foreign >= 2000.0, "{foreign}");
    assert!(!p.task.is_finished());
    p.stop().await;
    cleanup(&cfg).await;
}

/// Issue 16, item 5: by default a table without a key stops nothing: its rows go to the capture
/// dead-letter topic with the reason (the dead-letter alert fires), every other table flows,
/// and once the table has a key its later rows are captured normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_key_is_dead_lettered_and_the_others_flow() {
    let (nokey, keyed) = (unique("nokey"), unique("haskey"));
    let cfg = test_config(&[&nokey, &keyed]);
    assert_eq!(
        cfg.source.unkeyed_tables,
        cutover::config::UnkeyedTables::DeadLetter
    );
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        r#"CREATE TABLE "{nokey}" (code text, n int); CREATE TABLE "{keyed}" (id int PRIMARY KEY)"#
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    c.batch_execute(&format!(
        r#"INSERT INTO "{nokey}" VALUES ('a', 1); INSERT INTO "{keyed}" VALUES (1), (2);"#
    ))
    .await
    .unwrap();
    assert_eq!(wait_ids(&cfg, &topic(&cfg, &keyed), 2).await.len(), 2);
    assert!(!p.task.is_finished(), "capture stopped");
    let dead = read_raw(&cfg, &capture_dlq_topic(&cfg.topic_prefix)).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let body: serde_json::Value = serde_json::from_slice(&dead[0].0).unwrap();
    assert_eq!(body["table"], format!("public.{nokey}"));
    assert_eq!(body["after"]["code"], "a");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("has no primary key"),
        "{body}"
    );
    // The table gets a key: its next rows are captured like any other table's.
    c.batch_execute(&format!(
        r#"ALTER TABLE "{nokey}" ADD PRIMARY KEY (code); INSERT INTO "{nokey}" VALUES ('b', 2);"#
    ))
    .await
    .unwrap();
    let events = consume(&cfg, &topic(&cfg, &nokey), 1);
    assert_eq!(events[0]["key"]["code"], "b", "{}", events[0]);
    p.stop().await;
    cleanup(&cfg).await;
}

/// Issue 16, item 3: a row whose event is larger than the producer's `message.max.bytes` is
/// dead-lettered as a metadata record (table, position, key, sizes per column), counted, and
/// the stream goes on (it used to stop capture, or loop when the broker refused it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_row_is_dead_lettered_as_metadata_and_the_stream_goes_on() {
    let table = unique("huge");
    let cfg = test_config(&[&table]);
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        r#"CREATE TABLE "{table}" (id bigint PRIMARY KEY, note text, blob text);
           ALTER TABLE "{table}" ALTER COLUMN blob SET STORAGE EXTERNAL;"#
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    c.batch_execute(&format!(
        r#"INSERT INTO "{table}" VALUES (1, 'small', 'x');
           INSERT INTO "{table}" VALUES (2, 'huge', repeat('y', 1500000));
           INSERT INTO "{table}" VALUES (3, 'small again', 'z');"#
    ))
    .await
    .unwrap();
    assert_eq!(
        wait_ids(&cfg, &topic(&cfg, &table), 2).await,
        BTreeSet::from([1, 3])
    );
    assert!(!p.task.is_finished(), "capture stopped");
    let dead = read_raw(&cfg, &capture_dlq_topic(&cfg.topic_prefix)).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let body: serde_json::Value = serde_json::from_slice(&dead[0].0).unwrap();
    assert!(
        dead[0].0.len() < 10_000,
        "the letter carries metadata, not the row"
    );
    assert_eq!(body["oversized"], true);
    assert_eq!(body["table"], format!("public.{table}"));
    assert_eq!(body["op"], "c");
    assert!(body["bytes"].as_u64().unwrap() > 1_500_000, "{body}");
    assert!(
        body["after_column_bytes"]["blob"].as_u64().unwrap() >= 1_500_000,
        "{body}"
    );
    assert!(
        body["after_column_bytes"]["note"].as_u64().unwrap() < 10,
        "{body}"
    );
    assert!(body["key_avro_hex"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("message.max.bytes"),
        "{body}"
    );
    p.stop().await;
    cleanup(&cfg).await;
}

/// Issue 16, item 3: per-table `exclude_columns` and `truncate_columns` keep huge columns out.
/// A 1.5 MB row that would be dead-lettered as oversized arrives with its `body` cut to 16
/// bytes (on a character boundary), its bytea cut to 2 bytes, its excluded column absent from
/// the event and from the registered schema; the backfill of the same table is cut the same
/// way, and a configuration that names a key column stops with the field named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_and_truncated_columns_keep_a_huge_row_flowing() {
    let metrics = cutover::observe::install_recorder().unwrap();
    let table = unique("cut");
    let mut cfg = test_config(&[&table]);
    cfg.name = table.clone();
    let name = format!("public.{table}");
    cfg.source
        .exclude_columns
        .insert(name.clone(), vec!["secret".into()]);
    cfg.source.truncate_columns.insert(
        name.clone(),
        [("body".to_string(), 16usize), ("blob".to_string(), 2)].into(),
    );
    let c = sql(&cfg).await;
    c.batch_execute(&format!(
        r#"CREATE TABLE "{table}" (id bigint PRIMARY KEY, body text, blob bytea, secret text);
           ALTER TABLE "{table}" ALTER COLUMN body SET STORAGE EXTERNAL;
           INSERT INTO "{table}" VALUES (0, 'before the slot: ' || repeat('b', 100), '\x0a0b0c', 'hidden');"#
    ))
    .await
    .unwrap();
    let p = start(&cfg).await;
    c.batch_execute(&format!(
        r#"INSERT INTO "{table}" VALUES (1, 'short', '\x01', 'hidden');
           INSERT INTO "{table}" VALUES (2, 'héééééééé' || repeat('y', 1500000), '\x0102030405', 'hidden');"#
    ))
    .await
    .unwrap();
    let events = consume(&cfg, &topic(&cfg, &table), 2);
    let by_id = |id: i64| {
        events
            .iter()
            .find(|e| e["key"]["id"] == id)
            .unwrap_or_else(|| panic!("id {id} missing: {events:?}"))
            .clone()
    };
    let (one, two) = (by_id(1), by_id(2));
    assert_eq!(one["value"]["after"]["body"], "short");
    // 'h' + 7 × 'é' (2 bytes each) = 15 bytes; the next 'é' would make 17.
    assert_eq!(two["value"]["after"]["body"], "hééééééé", "{two}");
    for e in [&one, &two] {
        let after = e["value"]["after"].as_object().unwrap();
        assert!(!after.contains_key("secret"), "excluded column sent: {e}");
    }
    let blob = |e: &serde_json::Value| e["value"]["after"]["blob"].to_string();
    assert!(
        blob(&two).len() < blob(&by_id(1)).len() * 3,
        "{}",
        blob(&two)
    );
    // Nothing is dead-lettered: the capture dead-letter topic was never even created.
    assert!(
        cutover::kafka::watermarks(&cfg.kafka, &capture_dlq_topic(&cfg.topic_prefix))
            .await
            .is_err(),
        "a row was dead-lettered"
    );
    // The registered value schema has no `secret` field.
    let reg = cutover::registry::RegistryClient::new(&cfg.registry).unwrap();
    let latest = reg
        .latest(&format!("{}-value", topic(&cfg, &table)))
        .await
        .unwrap()
        .schema;
    assert!(
        latest.contains("\"body\"") && !latest.contains("\"secret\""),
        "{latest}"
    );

    // A backfill of the table is cut the same way.
    let dir = tempfile::tempdir().unwrap();
    let config = super::apply::write_config(&cfg, dir.path());
    let (code, out, err) = super::replay::cli(&config, &["backfill", "--table", &name]);
    assert_eq!(code, 0, "{out}{err}");
    let events = consume(&cfg, &topic(&cfg, &table), 5);
    let zero = events
        .iter()
        .find(|e| e["key"]["id"] == 0 && e["value"]["op"] == "r")
        .unwrap_or_else(|| panic!("backfilled row 0 missing: {events:?}"));
    assert_eq!(zero["value"]["after"]["body"], "before the slot:"); // 16 bytes
    assert!(!zero["value"]["after"]
        .as_object()
        .unwrap()
        .contains_key("secret"));
    // Cut values counted: row 2's body and blob live, rows 0 and 2 again in the backfill.
    let page = metrics.render();
    let series = format!("cutover_capture_truncated_values_total{{table=\"{name}\"}} 6");
    assert!(page.contains(&series), "{series} not in:\n{page}");
    p.stop().await;
    c.execute(
        "DELETE FROM cutover.backfill WHERE pipeline = $1",
        &[&cfg.name],
    )
    .await
    .unwrap();

    // A key column cannot be left out: capture stops naming the field.
    let mut bad = cfg.clone();
    bad.source
        .exclude_columns
        .insert(name.clone(), vec!["id".into()]);
    bad.source.truncate_columns.clear();
    let p = start(&bad).await;
    c.batch_execute(&format!(
        r#"INSERT INTO "{table}" VALUES (3, 'x', NULL, NULL)"#
    ))
    .await
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), p.task)
        .await
        .expect("capture stops")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string()
            .contains(&format!("source.exclude_columns.\"{name}\"")),
        "{err}"
    );
    cleanup(&cfg).await;
}
