//! Apply end to end against the real stack: legacy PG15 → capture → Apache Kafka → sinks → new PG15.
//! Every test captures its own schema (`schemas = [<unique>]`) and writes to its own target
//! schemas, so tests run in parallel on the shared clusters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::support::{cutover_bin, local_config, unique, KillOnDrop};
use cutover::backsync::start_sink;
use cutover::capture::Capture;
use cutover::config::{Config, RouteConfig, TableMapping};
use cutover::database::Endpoint;
use cutover::observe::Readiness;

pub(super) struct Env {
    pub cfg: Config,
    /// Captured schema on legacy (also the mirror's schema on the new cluster).
    pub schema: String,
}

pub(super) async fn connect(url: &cutover::config::DbUrl) -> tokio_postgres::Client {
    Endpoint {
        field: "test".into(),
        url: url.clone(),
        password: None,
        connect_timeout: Duration::from_secs(10),
    }
    .connect()
    .await
    .unwrap()
}

/// The local config, made private to one test `id`: its own slot, publication, captured schema
/// and topic prefix, fast heartbeats, no observe port.
pub(super) fn isolated_config(id: &str) -> Config {
    let mut cfg = local_config();
    cfg.source.slot = id.to_string();
    cfg.source.publication = id.to_string();
    cfg.source.schemas = vec![id.to_string()];
    cfg.source.tables = vec![];
    cfg.source.heartbeat_interval_secs = 1;
    cfg.source.status_interval_secs = 1;
    cfg.topic_prefix = id.replace('_', "-");
    cfg.kafka.partitions = 2;
    cfg.observe.listen = String::new();
    cfg
}

impl Env {
    pub fn new(tag: &str) -> Env {
        let id = unique(tag);
        let mut cfg = isolated_config(&id);
        if let Ok(d) = std::env::var("CUTOVER_TEST_KAFKA_DEBUG") {
            cfg.kafka.properties.0.insert("debug".into(), d);
        }
        for s in cfg.sinks.iter_mut() {
            s.group_id = Some(format!("{id}.{}", s.name));
            s.batch_max_ms = 50;
        }
        // newstore: the mapped contract, in schemas of the test's own.
        let ns = |s: &str| format!("{id}_{s}");
        let src = |t: &str| format!("{id}.{t}");
        cfg.sinks[1].unmapped_tables = cutover::config::Unmapped::Skip;
        cfg.sinks[1].tables = vec![
            TableMapping {
                source: src("customers"),
                target: Some(format!("{}.clients", ns("crm"))),
                rename: [("id".into(), "client_id".into())].into(),
                drop: vec![
                    "first_name".into(),
                    "last_name".into(),
                    "legacy_flags".into(),
                ],
                constants: [("source".into(), "legacy".into())].into(),
                defaults: [("country".into(), "ZZ".into())].into(),
                computed: [
                    (
                        "full_name".into(),
                        "concat(first_name, ' ', last_name)".into(),
                    ),
                    ("email".into(), "lower(email)".into()),
                ]
                .into(),
                ..Default::default()
            },
            TableMapping {
                source: src("products"),
                rename: [("name".into(), "title".into())].into(),
                drop: vec!["price".into(), "kind".into()],
                computed: [("price_cents".into(), "price * 100".into())].into(),
                cast: [("price_cents".into(), "numeric".into())].into(),
                route: Some(RouteConfig {
                    column: "kind".into(),
                    targets: [
                        (
                            "physical".into(),
                            format!("{}.physical_products", ns("catalog")),
                        ),
                        (
                            "digital".into(),
                            format!("{}.digital_products", ns("catalog")),
                        ),
                    ]
                    .into(),
                    default: None,
                }),
                ..Default::default()
            },
            TableMapping {
                source: src("orders"),
                target: Some(format!("{}.orders", ns("sales"))),
                rename: [
                    ("id".into(), "order_id".into()),
                    ("customer_id".into(), "client_id".into()),
                ]
                .into(),
                filter: Some("status <> 'draft'".into()),
                ..Default::default()
            },
            TableMapping {
                source: src("order_items"),
                target: Some(format!("{}.order_lines", ns("sales"))),
                rename: [
                    ("line".into(), "line_no".into()),
                    ("qty".into(), "quantity".into()),
                ]
                .into(),
                ..Default::default()
            },
        ];
        Env { cfg, schema: id }
    }

    pub async fn legacy(&self) -> tokio_postgres::Client {
        connect(&self.cfg.source.url).await
    }

    /// The captured schema on legacy with one table: `ddl` is `name (columns...)`.
    pub async fn create_source_table(&self, ddl: &str) {
        let s = &self.schema;
        self.legacy()
            .await
            .batch_execute(&format!(
                r#"CREATE SCHEMA "{s}"; CREATE TABLE "{s}".{ddl};"#
            ))
            .await
            .unwrap();
    }

    pub async fn target(&self, sink: usize) -> tokio_postgres::Client {
        connect(&self.cfg.sinks[sink].url).await
    }

    /// Legacy tables and the newstore contract.
    pub async fn create_schemas(&self) {
        let s = &self.schema;
        self.legacy()
            .await
            .batch_execute(&format!(
                r#"CREATE SCHEMA "{s}";
                CREATE TABLE "{s}".customers (id bigint PRIMARY KEY, first_name text, last_name text,
                    email text, country char(2), legacy_flags int);
                CREATE TABLE "{s}".products (sku text PRIMARY KEY, name text, price numeric(10,2), kind text);
                CREATE TABLE "{s}".orders (id bigint PRIMARY KEY, customer_id bigint, status text,
                    total numeric(12,2), placed_at timestamptz);
                CREATE TABLE "{s}".order_items (order_id bigint, line int, sku text, qty int,
                    unit_price numeric(10,2), PRIMARY KEY (order_id, line));"#
            ))
            .await
            .unwrap();
        self.target(1)
            .await
            .batch_execute(&format!(
                r#"CREATE SCHEMA "{s}_crm"; CREATE SCHEMA "{s}_catalog"; CREATE SCHEMA "{s}_sales";
                CREATE TABLE "{s}_crm".clients (client_id bigint PRIMARY KEY, full_name text,
                    email text, country text, source text NOT NULL);
                CREATE TABLE "{s}_catalog".physical_products (sku text PRIMARY KEY, title text, price_cents bigint);
                CREATE TABLE "{s}_catalog".digital_products (sku text PRIMARY KEY, title text, price_cents bigint);
                CREATE TABLE "{s}_sales".orders (order_id bigint PRIMARY KEY, client_id bigint,
                    status text, total numeric(12,2), placed_at timestamptz);
                CREATE TABLE "{s}_sales".order_lines (order_id bigint, line_no int, sku text,
                    quantity int, unit_price numeric(10,2), PRIMARY KEY (order_id, line_no));"#
            ))
            .await
            .unwrap();
    }

    pub async fn cleanup(&self) {
        let s = &self.schema;
        let l = self.legacy().await;
        let _ = l
            .execute(
                "SELECT pg_drop_replication_slot($1)",
                &[&self.cfg.source.slot],
            )
            .await;
        let _ = l
            .batch_execute(&format!(
                r#"DROP PUBLICATION IF EXISTS "{s}"; DROP SCHEMA IF EXISTS "{s}" CASCADE;"#
            ))
            .await;
        let _ = self
            .target(0)
            .await
            .batch_execute(&format!(r#"DROP SCHEMA IF EXISTS "{s}" CASCADE;"#))
            .await;
        // A pipeline of its own (isolated config) leaves replication origins on the target;
        // each holds one of the server's max_replication_slots until dropped.
        if self.cfg.name != "cutover" {
            let _ = self
                .target(0)
                .await
                .execute(
                    "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin
                     WHERE roname LIKE 'cutover:' || $1 || ':%'",
                    &[&self.cfg.name],
                )
                .await;
        }
        if self.cfg.sinks.len() < 2 {
            return;
        }
        let _ = self
            .target(1)
            .await
            .batch_execute(&format!(
                r#"DROP SCHEMA IF EXISTS "{s}_crm" CASCADE; DROP SCHEMA IF EXISTS "{s}_catalog" CASCADE;
                DROP SCHEMA IF EXISTS "{s}_sales" CASCADE;"#
            ))
            .await;
    }
}

/// A capture or sink running in this process.
pub(super) struct Part {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<cutover::Result<()>>,
}

impl Part {
    pub async fn capture(cfg: &Config) -> Part {
        super::support::init_logs();
        let (capture, lsn) = Capture::prepare(cfg).await.unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        Part {
            stop,
            task: tokio::spawn(capture.run(lsn, rx)),
        }
    }

    pub async fn sink(cfg: &Config, name: &str) -> Part {
        let sink = start_sink(cfg, name, Readiness::new(), None).await.unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        Part {
            stop,
            task: tokio::spawn(sink.run(rx)),
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("stops within 60 s")
            .unwrap()
            .unwrap();
    }
}

/// Rows of a query as text, sorted.
pub(super) async fn rows(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    // A target table that does not exist yet reads as empty.
    let mut v: Vec<String> = c
        .query(&format!("SELECT x::text FROM ({sql}) x"), &[])
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

/// Poll until `target` returns the same rows as `source` (or fail after `secs`).
pub(super) async fn converge(
    src: &tokio_postgres::Client,
    source_sql: &str,
    dst: &tokio_postgres::Client,
    target_sql: &str,
    secs: u64,
) {
    if let Err(e) = try_converge(src, source_sql, dst, target_sql, secs).await {
        panic!("{e}");
    }
}

/// As [`converge`], returning what differed instead of panicking (so a caller can add the
/// logs of the processes involved to the failure).
pub(super) async fn try_converge(
    src: &tokio_postgres::Client,
    source_sql: &str,
    dst: &tokio_postgres::Client,
    target_sql: &str,
    secs: u64,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let want = rows(src, source_sql).await;
        let got = rows(dst, target_sql).await;
        if want == got {
            return Ok(());
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(5).collect();
            let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(5).collect();
            return Err(format!(
                "target never matched ({} vs {} rows)\n  query {target_sql}\n  missing {missing:?}\n  extra {extra:?}",
                want.len(),
                got.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn mixed_workload(l: &tokio_postgres::Client, s: &str) {
    l.batch_execute(&format!(
        r#"INSERT INTO "{s}".customers
             SELECT g, 'Zoë' || g, 'Ünal', 'Mixed.Case' || g || '@Example.com',
                    CASE WHEN g % 3 = 0 THEN NULL ELSE 'DE' END, g
             FROM generate_series(1, 300) g;
           INSERT INTO "{s}".products VALUES ('p-1', 'Kaffee ☕', 19.99, 'physical'),
             ('p-2', 'E-Book 📖', 5.00, 'digital'), ('p-3', 'Tasse', 7.50, 'physical');
           INSERT INTO "{s}".orders SELECT g, g % 300 + 1, CASE WHEN g % 5 = 0 THEN 'draft' ELSE 'paid' END,
             g * 1.5, '2026-01-01 10:00+00'::timestamptz + g * interval '1 minute'
             FROM generate_series(1, 500) g;
           INSERT INTO "{s}".order_items SELECT o, l, 'p-' || (l % 3 + 1), l, 1.25 * l
             FROM generate_series(1, 500) o, generate_series(1, 3) l;"#
    ))
    .await
    .unwrap();
    for round in 0..20 {
        l.batch_execute(&format!(
            r#"BEGIN;
               UPDATE "{s}".customers SET email = 'Round{round}.' || id || '@X.org' WHERE id % 20 = {round};
               UPDATE "{s}".orders SET status = CASE status WHEN 'draft' THEN 'paid' ELSE 'draft' END
                 WHERE id % 50 = {round};
               DELETE FROM "{s}".order_items WHERE order_id = {round} + 100 AND line = 2;
               UPDATE "{s}".products SET price = price + 1 WHERE sku = 'p-3';
               COMMIT;"#
        ))
        .await
        .unwrap();
    }
    l.batch_execute(&format!(
        r#"UPDATE "{s}".customers SET id = id + 10000 WHERE id BETWEEN 1 AND 5;      -- key change
           DELETE FROM "{s}".customers WHERE id BETWEEN 290 AND 300;
           UPDATE "{s}".products SET kind = 'digital' WHERE sku = 'p-1';           -- re-route
           DELETE FROM "{s}".orders WHERE id > 480;
           UPDATE "{s}".order_items SET qty = qty * 10 WHERE order_id < 50;"#
    ))
    .await
    .unwrap();
}

async fn check_mirror(env: &Env) {
    let s = &env.schema;
    let (l, m) = (env.legacy().await, env.target(0).await);
    for t in ["customers", "products", "orders", "order_items"] {
        let q = format!(r#"SELECT * FROM "{s}".{t}"#);
        converge(&l, &q, &m, &q, 90).await;
    }
}

async fn check_newstore(env: &Env) {
    let s = &env.schema;
    let (l, n) = (env.legacy().await, env.target(1).await);
    converge(
        &l,
        &format!(r#"SELECT id, first_name || ' ' || last_name, lower(email), coalesce(country, 'ZZ'), 'legacy' FROM "{s}".customers"#),
        &n,
        &format!(r#"SELECT client_id, full_name, email, country, source FROM "{s}_crm".clients"#),
        90,
    )
    .await;
    for kind in ["physical", "digital"] {
        converge(
            &l,
            &format!(r#"SELECT sku, name, (price * 100)::bigint FROM "{s}".products WHERE kind = '{kind}'"#),
            &n,
            &format!(r#"SELECT sku, title, price_cents FROM "{s}_catalog".{kind}_products"#),
            90,
        )
        .await;
    }
    converge(
        &l,
        &format!(r#"SELECT id, customer_id, status, total, placed_at FROM "{s}".orders WHERE status <> 'draft'"#),
        &n,
        &format!(r#"SELECT order_id, client_id, status, total, placed_at FROM "{s}_sales".orders"#),
        90,
    )
    .await;
    converge(
        &l,
        &format!(r#"SELECT * FROM "{s}".order_items"#),
        &n,
        &format!(
            r#"SELECT order_id, line_no, sku, quantity, unit_price FROM "{s}_sales".order_lines"#
        ),
        90,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_reaches_both_sinks_mirror_equal_and_newstore_mapped() {
    let env = Env::new("e2e");
    env.create_schemas().await;
    let capture = Part::capture(&env.cfg).await;
    let mirror = Part::sink(&env.cfg, "mirror").await;
    let newstore = Part::sink(&env.cfg, "newstore").await;
    mixed_workload(&env.legacy().await, &env.schema).await;
    check_mirror(&env).await;
    check_newstore(&env).await;

    // Truncate reaches the mirror (policy apply), after which new rows still flow.
    let l = env.legacy().await;
    let s = &env.schema;
    l.batch_execute(&format!(
        r#"TRUNCATE "{s}".order_items; INSERT INTO "{s}".order_items VALUES (1, 1, 'p-1', 1, 1.00);"#
    ))
    .await
    .unwrap();
    check_mirror(&env).await;
    check_newstore(&env).await;

    // A column added on legacy is added to the mirror and flows.
    l.batch_execute(&format!(
        r#"ALTER TABLE "{s}".products ADD COLUMN vat numeric(4,2); UPDATE "{s}".products SET vat = 19.00;"#
    ))
    .await
    .unwrap();
    let q = format!(r#"SELECT * FROM "{s}".products"#);
    converge(&l, &q, &env.target(0).await, &q, 60).await;

    capture.stop().await;
    mirror.stop().await;
    newstore.stop().await;
    // Progress rows are in the targets, one per partition of every topic the sink saw.
    let n: i64 = env
        .target(0)
        .await
        .query_one(
            "SELECT count(*) FROM cutover.sink_progress WHERE sink = 'mirror' AND topic LIKE $1",
            &[&format!("{}.%", env.cfg.topic_prefix)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(n >= 4, "progress rows: {n}");
    env.cleanup().await;
}

/// A mirror table with a trigger that counts every write per key: a duplicate apply of an
/// insert-only workload would show as a count of 2.
pub(super) async fn counted_mirror_table(env: &Env) {
    let s = &env.schema;
    env.target(0)
        .await
        .batch_execute(&format!(
            r#"CREATE SCHEMA "{s}";
            CREATE TABLE "{s}".events (id bigint PRIMARY KEY, payload text);
            CREATE TABLE "{s}".writes (id bigint PRIMARY KEY, n int NOT NULL);
            CREATE FUNCTION "{s}".count_write() RETURNS trigger LANGUAGE plpgsql AS $$
              BEGIN
                INSERT INTO "{s}".writes VALUES (NEW.id, 1)
                  ON CONFLICT (id) DO UPDATE SET n = "{s}".writes.n + 1;
                RETURN NEW;
              END $$;
            CREATE TRIGGER count_write AFTER INSERT OR UPDATE ON "{s}".events
              FOR EACH ROW EXECUTE FUNCTION "{s}".count_write();"#
        ))
        .await
        .unwrap();
    env.legacy()
        .await
        .batch_execute(&format!(
            r#"CREATE SCHEMA "{s}"; CREATE TABLE "{s}".events (id bigint PRIMARY KEY, payload text);"#
        ))
        .await
        .unwrap();
}

pub(super) async fn assert_each_written_once(env: &Env, expected: i64) {
    let s = &env.schema;
    let t = env.target(0).await;
    let row = t
        .query_one(
            &format!(r#"SELECT count(*), coalesce(max(n), 0), coalesce(sum(n), 0)::bigint FROM "{s}".writes"#),
            &[],
        )
        .await
        .unwrap();
    let (keys, max, sum): (i64, i32, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(keys, expected, "every row written");
    assert_eq!(
        max, 1,
        "a row was applied twice ({sum} writes for {keys} rows)"
    );
}

/// Wait (60 s at most) until a process of the test created replication slot `slot`: rows
/// written before it exists are not captured. `log` names what to show when it never does.
pub(super) async fn wait_for_slot(
    l: &tokio_postgres::Client,
    slot: &str,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while l
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "no slot {slot} after 60 s:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Insert rows `from..=to` of the counted table (`counted_mirror_table`) in transactions of
/// `per_txn` rows.
pub(super) async fn insert_events(
    l: &tokio_postgres::Client,
    s: &str,
    from: i64,
    to: i64,
    per_txn: i64,
) {
    let mut a = from;
    while a <= to {
        let b = (a + per_txn - 1).min(to);
        l.batch_execute(&format!(
            r#"INSERT INTO "{s}".events SELECT g, md5(g::text) FROM generate_series({a}, {b}) g"#
        ))
        .await
        .unwrap();
        a = b + 1;
    }
}

/// A writer of 100-row transactions every 100 ms into the counted table until the returned
/// sender says stop; the task returns how many rows it wrote.
pub(super) fn background_writer(
    l: tokio_postgres::Client,
    s: String,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<i64>,
) {
    let (done, done_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut n = 0i64;
        while !*done_rx.borrow() {
            insert_events(&l, &s, n + 1, n + 100, 100).await;
            n += 100;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        n
    });
    (done, task)
}

/// `SELECT count(*)` of a table (`schema.table`, quoted as needed).
pub(super) async fn count_rows(c: &tokio_postgres::Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

pub(super) fn write_config(cfg: &Config, dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("cutover.toml");
    std::fs::write(&p, cfg.to_redacted_toml()).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_apply_mid_batch_repeatedly_ends_equal_with_zero_duplicate_applies() {
    let mut env = Env::new("kill");
    env.cfg.sinks.truncate(1); // mirror only
    env.cfg.sinks[0].batch_max_rows = 500;
    // Two target connections: a kill lands between their commits too (one share durable,
    // the other not), and the restart must still apply each row exactly once.
    env.cfg.sinks[0].apply_connections = 2;
    if let Ok(d) = std::env::var("KAFKA_DEBUG") {
        env.cfg.kafka.properties.insert("debug".into(), d);
    }
    counted_mirror_table(&env).await;
    let capture = Part::capture(&env.cfg).await;
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var("KEEP_LOG").is_ok() {
        dir.disable_cleanup(true);
        eprintln!("apply logs: {}", dir.path().join("apply.log").display());
    }
    let config = write_config(&env.cfg, dir.path());
    // Static membership: every restart takes over the killed instance's member id at once
    // (KIP-345), so no restart waits for a session timeout and no rebalance moves partitions.
    let instance = unique("kill");
    let spawn = || {
        std::process::Command::new(cutover_bin())
            .args([
                "apply",
                "--sink",
                "mirror",
                "--instance-id",
                &instance,
                "--config",
            ])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.path().join("apply.log"))
                    .unwrap(),
            )
            .spawn()
            .map(KillOnDrop)
            .unwrap()
    };
    let log = dir.path().join("apply.log");
    let log_tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let mut tail: Vec<&str> = text.lines().rev().take(60).collect();
        tail.reverse();
        tail.join("\n")
    };
    // The writer keeps inserting 500-row transactions until every kill is done, so each new
    // instance has a stream to be killed in the middle of.
    let l = env.legacy().await;
    let s = env.schema.clone();
    let (done, mut done_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move {
        let mut chunk = 0i64;
        while chunk < 40 || !*done_rx.borrow_and_update() {
            l.batch_execute(&format!(
                r#"INSERT INTO "{s}".events SELECT g, md5(g::text) FROM generate_series({} , {}) g"#,
                chunk * 500 + 1,
                chunk * 500 + 500
            ))
            .await
            .unwrap();
            chunk += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        chunk * 500
    });
    let t = env.target(0).await;
    let writes = format!(r#""{}".writes"#, env.schema);
    for i in 0..4u64 {
        let before = count_rows(&t, &writes).await;
        let mut child = spawn();
        // Kill only once this instance is applying (it joined the group and committed a
        // batch), then a little later, so the kill lands inside a later batch.
        let deadline = Instant::now() + Duration::from_secs(90);
        while count_rows(&t, &writes).await <= before {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!(
                    "sink instance {i} exited by itself ({status}); apply.log:\n{}",
                    log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "restarted sink instance {i} applied nothing in 90 s; apply.log:\n{}",
                log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(40 * i)).await;
        child.kill(); // SIGKILL; the next instance starts at once
    }
    let _ = done.send(true);
    let written = writer.await.unwrap();
    let mut child = spawn();
    let q = format!(r#"SELECT * FROM "{}".events"#, env.schema);
    if let Err(e) = try_converge(&env.legacy().await, &q, &t, &q, 120).await {
        panic!(
            "{e}\n  last sink exit: {:?}\n  apply.log (last 60 lines):\n{}",
            child.0.try_wait(),
            log_tail()
        );
    }
    child.kill();
    drop(dir);
    assert_each_written_once(&env, written).await;
    capture.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_resent_by_capture_are_skipped_not_reapplied() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::Message;
    let mut env = Env::new("resend");
    env.cfg.sinks.truncate(1);
    counted_mirror_table(&env).await;
    let capture = Part::capture(&env.cfg).await;
    let mirror = Part::sink(&env.cfg, "mirror").await;
    let s = env.schema.clone();
    env.legacy()
        .await
        .batch_execute(&format!(
            r#"INSERT INTO "{s}".events SELECT g, 'v' FROM generate_series(1, 200) g"#
        ))
        .await
        .unwrap();
    let q = format!(r#"SELECT * FROM "{s}".events"#);
    converge(&env.legacy().await, &q, &env.target(0).await, &q, 60).await;

    // Re-send the whole topic, byte for byte, to the same partitions: what a capture that
    // restarts from an older confirmed LSN does.
    let topic = cutover::kafka::topic::for_table(
        &env.cfg.topic_prefix,
        &cutover::event::TableId::new(&s, "events"),
    );
    let consumer: StreamConsumer = cutover::kafka::consumer_config(&env.cfg.kafka, &unique("copy"))
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let producer: FutureProducer = cutover::kafka::producer_config(&env.cfg.kafka)
        .create()
        .unwrap();
    let mut copied = 0;
    while copied < 200 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap()
            .unwrap();
        producer
            .send(
                FutureRecord::to(&topic)
                    .partition(m.partition())
                    .key(m.key().unwrap())
                    .payload(m.payload().unwrap()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        copied += 1;
    }
    drop(consumer);
    // Then one new row, so we know the sink got past the copies.
    env.legacy()
        .await
        .batch_execute(&format!(r#"INSERT INTO "{s}".events VALUES (201, 'new')"#))
        .await
        .unwrap();
    converge(&env.legacy().await, &q, &env.target(0).await, &q, 60).await;
    mirror.stop().await;
    capture.stop().await;
    assert_each_written_once(&env, 201).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_one_sink_share_partitions_without_loss_or_duplicates() {
    let mut env = Env::new("twins");
    env.cfg.sinks.truncate(1);
    env.cfg.kafka.partitions = 4;
    // Each instance deals its partitions over two target connections.
    env.cfg.sinks[0].apply_connections = 2;
    counted_mirror_table(&env).await;
    let capture = Part::capture(&env.cfg).await;
    let a = Part::sink(&env.cfg, "mirror").await;
    let s = env.schema.clone();
    let l = env.legacy().await;
    l.batch_execute(&format!(
        r#"INSERT INTO "{s}".events SELECT g, 'a' FROM generate_series(1, 3000) g"#
    ))
    .await
    .unwrap();
    let b = Part::sink(&env.cfg, "mirror").await; // joins the group: rebalance
    for chunk in 1..=10 {
        l.batch_execute(&format!(
            r#"INSERT INTO "{s}".events SELECT g, 'b' FROM generate_series({}, {}) g"#,
            3000 + (chunk - 1) * 300 + 1,
            3000 + chunk * 300
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.stop().await; // leaves the group: b takes everything
    l.batch_execute(&format!(
        r#"INSERT INTO "{s}".events SELECT g, 'c' FROM generate_series(6001, 7000) g"#
    ))
    .await
    .unwrap();
    let q = format!(r#"SELECT * FROM "{s}".events"#);
    converge(&l, &q, &env.target(0).await, &q, 120).await;
    b.stop().await;
    capture.stop().await;
    assert_each_written_once(&env, 7000).await;
    env.cleanup().await;
}

/// `apply_connections` > 1 deals a batch's partitions over several target connections. A
/// child row whose parent is in another partition of the same batch cannot commit before
/// the parent's connection does: that share's transaction rolls back and the batch is applied
/// again on one connection in source order, so nothing is dead-lettered and nothing applies
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_connections_fall_back_to_source_order_for_a_foreign_key_across_partitions() {
    foreign_keys_in_one_batch(4).await;
}

/// The same on one connection: the set-based writes go table by table in the order of each
/// table's first event, and the one-at-a-time fallback in source order, so a child whose
/// table sorts before its parent's ("children" < "parents") is not dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_key_parent_and_child_in_one_batch_apply_in_source_order() {
    foreign_keys_in_one_batch(1).await;
}

async fn foreign_keys_in_one_batch(connections: usize) {
    let mut env = Env::new("fk_batch");
    env.cfg.sinks.truncate(1);
    env.cfg.kafka.partitions = 3;
    env.cfg.sinks[0].apply_connections = connections;
    env.cfg.sinks[0].create_tables = false;
    // Every event in the first batch, so parents and children meet in one batch. (Across
    // batches a child can arrive before its parent from another topic, with or without
    // parallel connections: docs/APPLY.md, "Foreign keys in the target".)
    env.cfg.sinks[0].batch_max_ms = 2000;
    env.cfg.sinks[0].batch_max_rows = 10_000;
    let s = env.schema.clone();
    let ddl = format!(
        r#"CREATE SCHEMA "{s}";
        CREATE TABLE "{s}".parents (id bigint PRIMARY KEY, name text);
        CREATE TABLE "{s}".children (id bigint PRIMARY KEY, parent_id bigint NOT NULL
            REFERENCES "{s}".parents (id), note text);"#
    );
    env.legacy().await.batch_execute(&ddl).await.unwrap();
    env.target(0).await.batch_execute(&ddl).await.unwrap();
    let capture = Part::capture(&env.cfg).await;
    let l = env.legacy().await;
    // Parents and children in the same transactions, before the sink starts: its first
    // batches hold both, spread over 6 partitions and 4 connections.
    for chunk in 0..10 {
        l.batch_execute(&format!(
            r#"INSERT INTO "{s}".parents SELECT g, 'p' || g FROM generate_series({a}, {b}) g;
               INSERT INTO "{s}".children SELECT g, g, 'c' || g FROM generate_series({a}, {b}) g;"#,
            a = chunk * 200 + 1,
            b = chunk * 200 + 200
        ))
        .await
        .unwrap();
    }
    let sink = Part::sink(&env.cfg, "mirror").await;
    let t = env.target(0).await;
    for table in ["parents", "children"] {
        let q = format!(r#"SELECT * FROM "{s}".{table}"#);
        converge(&l, &q, &t, &q, 120).await;
    }
    // Nothing went to the dead-letter topic: every progress row reached its partition's end
    // through applied events (a parked event would also move progress, so count rows too).
    let n: i64 = t
        .query_one(&format!(r#"SELECT count(*) FROM "{s}".children"#), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2000);
    // And nothing reached the dead-letter topic.
    let dlq = cutover::kafka::topic::sink_dlq(&env.cfg.topic_prefix, "mirror");
    let probe: rdkafka::consumer::BaseConsumer =
        cutover::kafka::consumer_config(&env.cfg.kafka, &unique("dlq"))
            .create()
            .unwrap();
    let (_, high) =
        rdkafka::consumer::Consumer::fetch_watermarks(&probe, &dlq, 0, Duration::from_secs(10))
            .unwrap();
    assert_eq!(high, 0, "events were dead-lettered");
    sink.stop().await;
    capture.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_go_to_the_dead_letter_topic_with_headers_and_the_sink_goes_on() {
    use futures::StreamExt;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::Message;
    let mut env = Env::new("poison");
    env.cfg.sinks.truncate(1);
    let s = env.schema.clone();
    env.create_source_table("items (id int PRIMARY KEY, qty int)")
        .await;
    // The target refuses negative quantities: a constraint violation no retry can fix.
    env.target(0)
        .await
        .batch_execute(&format!(
            r#"CREATE SCHEMA "{s}"; CREATE TABLE "{s}".items (id int PRIMARY KEY, qty int CHECK (qty >= 0));"#
        ))
        .await
        .unwrap();
    let capture = Part::capture(&env.cfg).await;
    let mirror = Part::sink(&env.cfg, "mirror").await;
    let l = env.legacy().await;
    l.batch_execute(&format!(
        r#"INSERT INTO "{s}".items VALUES (1, 1), (2, -2), (3, 3)"#
    ))
    .await
    .unwrap();
    // A record that is not Avro at all, in the middle of the topic.
    let topic = cutover::kafka::topic::for_table(
        &env.cfg.topic_prefix,
        &cutover::event::TableId::new(&s, "items"),
    );
    let producer: FutureProducer = cutover::kafka::producer_config(&env.cfg.kafka)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&topic)
                .key("junk")
                .payload("not avro")
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    // A record in the wire format whose schema id the registry never handed out.
    let unknown_id = [0u8, 0x7f, 0xff, 0xff, 0xf0, 2, 4, 6];
    producer
        .send(
            FutureRecord::to(&topic)
                .key("forged")
                .payload(&unknown_id[..])
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    l.batch_execute(&format!(r#"INSERT INTO "{s}".items VALUES (4, 4)"#))
        .await
        .unwrap();
    let t = env.target(0).await;
    converge(
        &l,
        &format!(r#"SELECT * FROM "{s}".items WHERE qty >= 0"#),
        &t,
        &format!(r#"SELECT * FROM "{s}".items"#),
        60,
    )
    .await;

    let dlq = cutover::kafka::topic::sink_dlq(&env.cfg.topic_prefix, "mirror");
    let consumer: StreamConsumer = cutover::kafka::consumer_config(&env.cfg.kafka, &unique("dlq"))
        .create()
        .unwrap();
    consumer.subscribe(&[&dlq]).unwrap();
    let mut stream = consumer.stream();
    let mut dead = vec![];
    while dead.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("three dead letters")
            .unwrap()
            .unwrap();
        dead.push((m.payload().unwrap().to_vec(), header_map(&m)));
    }
    drop(stream);
    let junk = dead
        .iter()
        .find(|(p, _)| p == b"not avro")
        .expect("junk record");
    assert_eq!(junk.1["cutover.error.kind"], "data");
    assert_eq!(junk.1["cutover.topic"], topic);
    assert_eq!(junk.1["cutover.partition"], "0");
    assert!(junk.1["cutover.offset"].parse::<i64>().is_ok());
    assert!(junk.1["cutover.error"].contains("decoding"), "{:?}", junk.1);
    let forged = dead
        .iter()
        .find(|(p, _)| p == &unknown_id)
        .expect("the unknown schema id is dead-lettered, the sink goes on");
    assert_eq!(forged.1["cutover.error.kind"], "data");
    assert!(
        forged.1["cutover.error"].contains("schema id 2147483632 is not in the registry"),
        "{:?}",
        forged.1
    );
    let violation = dead
        .iter()
        .find(|(p, _)| p != b"not avro" && p != &unknown_id)
        .unwrap();
    assert!(
        violation.1["cutover.error"].contains("check constraint"),
        "{:?}",
        violation.1
    );
    // The server's DETAIL quotes the row ("Failing row contains (2, -2)"): withheld unless
    // observe.log_row_values is on.
    assert!(
        !violation.1["cutover.error"].contains("Failing row")
            && violation.1["cutover.error"].contains("detail withheld"),
        "{:?}",
        violation.1
    );
    assert_eq!(violation.1["cutover.sink"], "mirror");
    mirror.stop().await;
    capture.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_errors_name_the_table_and_column() {
    let env = Env::new("maperr");
    env.create_schemas().await;
    let s = &env.schema;
    let start_err = |cfg: Config| async move {
        start_sink(&cfg, "newstore", Readiness::new(), None)
            .await
            .err()
            .expect("refused")
            .to_string()
    };
    let mut cfg = env.cfg.clone();
    cfg.sinks[1].tables[0]
        .rename
        .insert("email".into(), "mail".into());
    let msg = start_err(cfg).await;
    assert!(msg.contains(&format!("{s}_crm.clients.mail")), "{msg}");
    assert!(msg.contains("sinks[1].tables[0].rename"), "{msg}");

    let mut cfg = env.cfg.clone();
    cfg.sinks[1].tables[2].target = Some(format!("{s}_sales.nope"));
    let msg = start_err(cfg).await;
    assert!(msg.contains(&format!("{s}_sales.nope")), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");

    let mut cfg = env.cfg.clone();
    cfg.sinks[1].tables[1]
        .cast
        .insert("price_cents".into(), "no_such_type".into());
    let msg = start_err(cfg).await;
    assert!(msg.contains("sinks[1].tables[1].cast.price_cents"), "{msg}");
    // A cast is a type name checked by the target and spliced only in the server's spelling:
    // SQL hidden in one is refused at start, naming the field, and never runs.
    for hostile in [
        "int; DROP TABLE pg_temp.x",
        "numeric)::text, (SELECT 1",
        "text' OR '1'='1",
    ] {
        let mut cfg = env.cfg.clone();
        cfg.sinks[1].tables[1]
            .cast
            .insert("price_cents".into(), hostile.into());
        let msg = start_err(cfg).await;
        assert!(
            msg.contains("sinks[1].tables[1].cast.price_cents"),
            "{hostile}: {msg}"
        );
    }

    // A source column the mapping names but the source does not have: found at the first event.
    let mut cfg = env.cfg.clone();
    cfg.sinks[1].tables[3].drop = vec!["colour".into()];
    let capture = Part::capture(&cfg).await;
    let sink = start_sink(&cfg, "newstore", Readiness::new(), None)
        .await
        .unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(sink.run(rx));
    env.legacy()
        .await
        .batch_execute(&format!(
            r#"INSERT INTO "{s}".order_items VALUES (1, 1, 'p', 1, 1.00)"#
        ))
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("sink stops")
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "sinks[1].tables[3].drop: column {s}.order_items.colour"
        )),
        "{err}"
    );
    capture.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_applied_only_to_the_table_its_topic_is_for() {
    use futures::StreamExt;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::Message;
    let mut env = Env::new("forge");
    env.cfg.sinks.truncate(1);
    let s = env.schema.clone();
    env.create_source_table("items (id int PRIMARY KEY, v text)")
        .await;
    let l = env.legacy().await;
    l.batch_execute(&format!(
        r#"CREATE TABLE "{s}".accounts (id int PRIMARY KEY, balance bigint)"#
    ))
    .await
    .unwrap();
    let topic_of = |t: &str| {
        cutover::kafka::topic::for_table(
            &env.cfg.topic_prefix,
            &cutover::event::TableId::new(&s, t),
        )
    };
    let (items_topic, accounts_topic) = (topic_of("items"), topic_of("accounts"));
    let capture = Part::capture(&env.cfg).await;
    let mirror = Part::sink(&env.cfg, "mirror").await;
    l.batch_execute(&format!(
        r#"INSERT INTO "{s}".accounts VALUES (1, 1000000)"#
    ))
    .await
    .unwrap();
    // A genuine change event of `accounts`, as capture wrote it.
    let reader: StreamConsumer = cutover::kafka::consumer_config(&env.cfg.kafka, &unique("forge"))
        .create()
        .unwrap();
    reader.subscribe(&[&accounts_topic]).unwrap();
    let (key, payload) = {
        let m = tokio::time::timeout(Duration::from_secs(60), reader.stream().next())
            .await
            .expect("the accounts insert is captured")
            .unwrap()
            .unwrap();
        (m.key().unwrap().to_vec(), m.payload().unwrap().to_vec())
    };
    // The account is closed on legacy; the sink applies that too.
    l.batch_execute(&format!(r#"DELETE FROM "{s}".accounts"#))
        .await
        .unwrap();
    let t = env.target(0).await;
    let q = format!(r#"SELECT * FROM "{s}".accounts"#);
    converge(&l, &q, &t, &q, 60).await;
    // Whoever can produce to the items topic replays the old insert there: the payload names
    // `accounts`, the topic is for `items`. It must be dead-lettered, never applied.
    let producer: FutureProducer = cutover::kafka::producer_config(&env.cfg.kafka)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&items_topic).key(&key).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    l.batch_execute(&format!(r#"INSERT INTO "{s}".items VALUES (1, 'after')"#))
        .await
        .unwrap();
    let q = format!(r#"SELECT * FROM "{s}".items"#);
    converge(&l, &q, &t, &q, 60).await;

    let dlq = cutover::kafka::topic::sink_dlq(&env.cfg.topic_prefix, "mirror");
    let consumer: StreamConsumer = cutover::kafka::consumer_config(&env.cfg.kafka, &unique("dlq"))
        .create()
        .unwrap();
    consumer.subscribe(&[&dlq]).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(60), consumer.stream().next())
        .await
        .expect("the forged event is dead-lettered")
        .unwrap()
        .unwrap();
    assert_eq!(m.payload().unwrap(), &payload[..]);
    let h = header_map(&m);
    assert_eq!(h["cutover.topic"], items_topic);
    assert_eq!(h["cutover.error.kind"], "data");
    assert!(
        h["cutover.error"].contains(&format!("names table {s}.accounts")),
        "{h:?}"
    );
    // And the closed account stayed closed.
    let n: i64 = t
        .query_one(&format!(r#"SELECT count(*) FROM "{s}".accounts"#), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the forged event was applied to accounts");
    mirror.stop().await;
    capture.stop().await;
    env.cleanup().await;
}

/// A record's headers as a map (a dead letter's `cutover.*` headers).
fn header_map(m: &impl rdkafka::Message) -> BTreeMap<String, String> {
    use rdkafka::message::Headers;
    m.headers()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h.key.to_string(),
                String::from_utf8_lossy(h.value.unwrap()).into_owned(),
            )
        })
        .collect()
}
