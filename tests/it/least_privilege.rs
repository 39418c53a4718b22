//! Least privilege (issue 15): the roles of deploy/security/*.sql, none a superuser, run the
//! forward pipeline end to end on a cluster of the test's own that checks passwords
//! (scram-sha-256), the passwords coming from a file (capture) and the environment (the
//! sink): `cutover run` (capture, monitor, sink), `backfill`, `status`, `verify` and `retire`.

use std::process::{Command, Stdio};

use super::apply::{connect, try_converge, wait_for_slot, write_config};
use super::replay::cli;
use super::support::{
    cutover_bin, free_port, local_config, pg_bindir, unique, KillOnDrop, PrivatePostgres,
};
use cutover::config::DbUrl;

const HBA: &str = "\
local all all trust
host all postgres 127.0.0.1/32 trust
host replication postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
";

fn psql(pg: &PrivatePostgres, db: &str, file: &str, vars: &[(&str, &str)]) {
    let mut c = Command::new(pg_bindir().join("psql"));
    c.args(["-X", "-q", "-d", &pg.url(db), "-f"])
        .arg(super::support::root().join("deploy/security").join(file));
    for (k, v) in vars {
        c.arg("-v").arg(format!("{k}={v}"));
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "psql {file}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A scram-sha-256 cluster of the test's own with databases `legacy` and `target`, the
/// application's role `shop_owner` owning schema `shop` on legacy (where `shop_sql` runs as
/// it), then roles.sql and legacy.sql as a superuser would run them.
async fn prepared(shop_sql: &str) -> PrivatePostgres {
    let pg = PrivatePostgres::start_with(
        &[
            "wal_level=logical",
            "max_replication_slots=8",
            "max_wal_senders=8",
            "password_encryption=scram-sha-256",
        ],
        Some(HBA),
        &[],
    );
    let a = connect(&DbUrl::new(pg.url("postgres"))).await;
    for sql in [
        "CREATE DATABASE legacy",
        "CREATE DATABASE target",
        "CREATE ROLE shop_owner",
    ] {
        a.batch_execute(sql).await.unwrap();
    }
    connect(&DbUrl::new(pg.url("legacy")))
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA shop AUTHORIZATION shop_owner; SET ROLE shop_owner; {shop_sql} RESET ROLE;"
        ))
        .await
        .unwrap();
    let pw = [
        ("capture_password", "cap-pw-1"),
        ("sink_password", "sink-pw-2"),
        ("verify_password", "ver-pw-3"),
        ("monitor_password", "mon-pw-4"),
    ];
    psql(&pg, "legacy", "roles.sql", &pw);
    psql(
        &pg,
        "legacy",
        "legacy.sql",
        &[
            ("schema", "shop"),
            ("publication", "cutover_pub"),
            ("app_owner", "shop_owner"),
        ],
    );
    pg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_end_to_end_as_the_documented_non_superuser_roles() {
    let pg = prepared(
        "CREATE TABLE shop.items (id bigint PRIMARY KEY, name text, price numeric(10,2));
         INSERT INTO shop.items SELECT g, 'old ' || g, g FROM generate_series(1, 50) g;",
    )
    .await;
    let admin = |db: &'static str| {
        let url = DbUrl::new(pg.url(db));
        async move { connect(&url).await }
    };
    let l = admin("legacy").await;
    psql(&pg, "target", "target.sql", &[("schema", "shop")]);
    let supers: i64 = l
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'cutover\\_%' AND rolsuper",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(supers, 0);

    let dir = tempfile::tempdir().unwrap();
    let capture_pw = dir.path().join("capture-password");
    std::fs::write(&capture_pw, "cap-pw-1\n").unwrap();
    let id = unique("lpriv");
    let mut cfg = local_config();
    cfg.name = id.clone();
    cfg.topic_prefix = id.replace('_', "-");
    cfg.source.url = DbUrl::new(format!(
        "postgres://cutover_capture@127.0.0.1:{}/legacy",
        pg.port
    ));
    cfg.source.password_file = Some(capture_pw);
    cfg.source.slot = id.clone();
    cfg.source.publication = "cutover_pub".into();
    cfg.source.schemas = vec!["shop".into()];
    cfg.source.heartbeat_interval_secs = 1;
    cfg.source.status_interval_secs = 1;
    cfg.kafka.partitions = 2;
    cfg.sinks.truncate(1);
    cfg.sinks[0].url = DbUrl::new(format!(
        "postgres://cutover_sink@127.0.0.1:{}/target",
        pg.port
    ));
    cfg.sinks[0].group_id = Some(format!("{id}.mirror"));
    cfg.sinks[0].batch_max_ms = 50;
    let port = free_port();
    cfg.observe.listen = format!("127.0.0.1:{port}");
    cfg.monitor.interval_ms = 1000;
    let config = write_config(&cfg, dir.path());
    let log = dir.path().join("run.log");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut run = Command::new(cutover_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("CUTOVER_SINK_MIRROR_PASSWORD", "sink-pw-2")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    wait_for_slot(&l, &id, log_text).await;
    l.batch_execute(
        "SET ROLE shop_owner;
         INSERT INTO shop.items SELECT g, 'new ' || g, g FROM generate_series(51, 250) g;
         UPDATE shop.items SET price = price * 2 WHERE id % 7 = 0;
         DELETE FROM shop.items WHERE id % 11 = 0;",
    )
    .await
    .unwrap();
    // The rows that existed before the slot come by backfill, run as the capture role.
    let (code, out, err) = cli(&config, &["backfill", "--table", "shop.items"]);
    assert_eq!(code, 0, "backfill: {out}{err}\n{}", log_text());
    let t = admin("target").await;
    let q = "SELECT * FROM shop.items";
    if let Err(e) = try_converge(&l, q, &t, q, 90).await {
        panic!("{e}\n{}", log_text());
    }
    super::support::wait_until_caught_up(&config, "least privilege");

    // verify, as the read-only role on both sides.
    let mut vcfg = cfg.clone();
    vcfg.source.url = DbUrl::new(format!(
        "postgres://cutover_verify@127.0.0.1:{}/legacy",
        pg.port
    ));
    vcfg.source.password_file = None;
    // The sink's URL names the read-only role too for verify.
    let vdir = tempfile::tempdir().unwrap();
    let mut vcfg2 = vcfg.clone();
    vcfg2.sinks[0].url = DbUrl::new(format!(
        "postgres://cutover_verify@127.0.0.1:{}/target",
        pg.port
    ));
    let vconfig = write_config(&vcfg2, vdir.path());
    let o = Command::new(cutover_bin())
        .args([
            "verify",
            "--sink",
            "mirror",
            "--table",
            "shop.items",
            "--json",
            "--config",
        ])
        .arg(&vconfig)
        .env("CUTOVER__SOURCE__PASSWORD", "ver-pw-3")
        .env("CUTOVER_SINK_MIRROR_PASSWORD", "ver-pw-3")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "verify: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("\"parity_pct\": 100.0"), "{out}");

    // reconcile, as documented: legacy read by the read-only role, the ledger in the target
    // written by the sink's role (owner of schema cutover there).
    let rdir = tempfile::tempdir().unwrap();
    let rconfig = write_config(&vcfg, rdir.path());
    let o = Command::new(cutover_bin())
        .args(["reconcile", "--once", "--sink", "mirror", "--config"])
        .arg(&rconfig)
        .env("CUTOVER__SOURCE__PASSWORD", "ver-pw-3")
        .env("CUTOVER_SINK_MIRROR_PASSWORD", "sink-pw-2")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "reconcile: {out}{err}");
    assert!(out.contains("0 open discrepancies"), "{out}");
    for pw in ["ver-pw-3", "sink-pw-2"] {
        assert!(!out.contains(pw) && !err.contains(pw), "{pw} printed");
    }

    run.terminate();
    // retire, as the sink's role: its origins (pg_replication_origin_drop is granted) and
    // progress go, the group with them.
    let origins = || async {
        admin("target")
            .await
            .query_one(
                "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE $1",
                &[&format!("cutover:{id}:mirror%")],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert!(origins().await >= 1);
    let o = Command::new(cutover_bin())
        .args(["retire", "--sink", "mirror", "--config"])
        .arg(&config)
        .env("CUTOVER_SINK_MIRROR_PASSWORD", "sink-pw-2")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "retire: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("deleted consumer group"), "{out}");
    assert_eq!(origins().await, 0);
    // No password in anything cutover printed.
    let printed = log_text();
    for pw in ["cap-pw-1", "sink-pw-2", "ver-pw-3"] {
        assert!(!printed.contains(pw), "{pw} printed");
    }
    let _ = l
        .execute("SELECT pg_drop_replication_slot($1)", &[&id])
        .await;
}

/// The back-sync as the same roles: `cutover run` forward (capture as cutover_capture, the
/// sink newstore as cutover_sink), `cutover backsync` (capture of the new store as
/// cutover_capture, its sink on legacy as cutover_sink through `backsync.legacy_url`), and
/// `cutover phase set` through `dual` to `reverse`; writes on each side reach the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_back_sync_and_phase_changes_run_as_the_documented_roles() {
    let pg = prepared(
        "CREATE TABLE shop.accounts (id bigint PRIMARY KEY, owner text, balance numeric(12,2));
         ALTER TABLE shop.accounts REPLICA IDENTITY FULL;",
    )
    .await;
    let admin = |db: &'static str| {
        let url = DbUrl::new(pg.url(db));
        async move { connect(&url).await }
    };
    let l = admin("legacy").await;
    psql(
        &pg,
        "legacy",
        "backsync-legacy.sql",
        &[("schema", "shop"), ("app_owner", "shop_owner")],
    );
    psql(&pg, "target", "target.sql", &[("schema", "shop")]);
    // The new store's table, as the sink's role (it owns the schema).
    let t = admin("target").await;
    t.batch_execute(
        "SET ROLE cutover_sink;
         CREATE TABLE shop.accounts (id bigint PRIMARY KEY, owner text, balance numeric(12,2));
         ALTER TABLE shop.accounts REPLICA IDENTITY FULL;
         RESET ROLE;",
    )
    .await
    .unwrap();
    psql(
        &pg,
        "target",
        "backsync-new.sql",
        &[("schema", "shop"), ("publication", "cutover_back")],
    );

    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    };
    let id = unique("lpback");
    let mut cfg = local_config();
    cfg.name = id.clone();
    cfg.topic_prefix = id.replace('_', "-");
    let url =
        |role: &str, db: &str| DbUrl::new(format!("postgres://{role}@127.0.0.1:{}/{db}", pg.port));
    cfg.source.url = url("cutover_capture", "legacy");
    cfg.source.password_file = Some(file("capture-password", "cap-pw-1\n"));
    cfg.source.slot = id.clone();
    cfg.source.publication = "cutover_pub".into();
    cfg.source.schemas = vec!["shop".into()];
    cfg.source.heartbeat_interval_secs = 1;
    cfg.source.status_interval_secs = 1;
    cfg.kafka.partitions = 2;
    cfg.sinks.retain(|s| s.name == "newstore");
    let s = &mut cfg.sinks[0];
    s.url = url("cutover_sink", "target");
    s.group_id = Some(format!("{id}.newstore"));
    s.batch_max_ms = 50;
    s.unmapped_tables = cutover::config::Unmapped::Identity;
    s.tables = vec![];
    cfg.backsync = Some(cutover::config::BacksyncConfig {
        url: url("cutover_capture", "target"),
        password: None,
        password_file: None,
        legacy_url: Some(url("cutover_sink", "legacy")),
        legacy_password: None,
        legacy_password_file: Some(file("backsync-legacy-password", "sink-pw-2\n")),
        slot: format!("{id}_b"),
        publication: "cutover_back".into(),
        schemas: vec!["shop".into()],
        tables: vec![],
        forward_sink: "newstore".into(),
        conflict_policy: cutover::config::ConflictPolicy::SourceOfTruth,
        mappings: vec![],
        unmapped_tables: cutover::config::Unmapped::Identity,
        gate_max_lag_secs: 10,
        batch_max_ms: 50,
    });
    cfg.observe.listen = String::new();
    cfg.monitor.embedded = false;
    let config = write_config(&cfg, dir.path());
    let spawn = |sub: &str, log: &str| {
        let log = std::fs::File::create(dir.path().join(log)).unwrap();
        Command::new(cutover_bin())
            .args([sub, "--config"])
            .arg(&config)
            .env("CUTOVER_SINK_NEWSTORE_PASSWORD", "sink-pw-2")
            .env("CUTOVER__BACKSYNC__PASSWORD", "cap-pw-1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(KillOnDrop)
            .unwrap()
    };
    let logs = || {
        ["run.log", "backsync.log"]
            .iter()
            .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let mut run = spawn("run", "run.log");
    let mut back = spawn("backsync", "backsync.log");
    wait_for_slot(&l, &id, logs).await;
    wait_for_slot(&t, &format!("{id}_b"), logs).await;
    l.batch_execute(
        "SET ROLE shop_owner;
         INSERT INTO shop.accounts SELECT g, 'legacy', g FROM generate_series(1, 30) g;",
    )
    .await
    .unwrap();
    let q = "SELECT * FROM shop.accounts";
    if let Err(e) = try_converge(&l, q, &t, q, 90).await {
        panic!("forward: {e}\n{}", logs());
    }
    // Phase changes, as the source role (capture's), through the gate.
    for to in ["dual", "reverse"] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let o = Command::new(cutover_bin())
                .args([
                    "phase",
                    "set",
                    "--table",
                    "shop.accounts",
                    "--to",
                    to,
                    "--config",
                ])
                .arg(&config)
                // The gate reads the forward sink's progress in the new store.
                .env("CUTOVER_SINK_NEWSTORE_PASSWORD", "sink-pw-2")
                .env("CUTOVER__BACKSYNC__PASSWORD", "cap-pw-1")
                .output()
                .unwrap();
            let out = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            if o.status.success() {
                break;
            }
            assert_eq!(
                o.status.code(),
                Some(3),
                "phase set {to}: {out}\n{}",
                logs()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "gate never passed: {out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
    // The new store owns the table: its writes reach legacy through the back-sync's sink.
    t.batch_execute(
        "INSERT INTO shop.accounts SELECT g, 'new', g FROM generate_series(101, 110) g;
         UPDATE shop.accounts SET owner = 'moved' WHERE id <= 5;",
    )
    .await
    .unwrap();
    if let Err(e) = try_converge(&l, q, &t, q, 90).await {
        panic!("back-sync: {e}\n{}", logs());
    }
    run.terminate();
    back.terminate();
    let printed = logs();
    for pw in ["cap-pw-1", "sink-pw-2"] {
        assert!(!printed.contains(pw), "{pw} printed");
    }
    for slot in [id.clone(), format!("{id}_b")] {
        let c = if slot == id { &l } else { &t };
        let _ = c
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await;
    }
}
