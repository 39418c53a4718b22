//! `cutover backfill` against the real stack: rows that existed before the slot reach the
//! target as `op=r` events while updates, deletes and inserts keep streaming; the throttle
//! holds; a capture killed mid-way resumes from its last acknowledged chunk.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::apply::{converge, Env, Part};
use super::capture::read_all;
use super::replay::{cli, topic};
use super::support::{cutover_bin, KillOnDrop};

async fn setup(tag: &str, rows: i64) -> (Env, tempfile::TempDir, std::path::PathBuf) {
    let mut env = Env::new(tag);
    env.cfg.sinks.truncate(1); // mirror
                               // A pipeline of its own: backfill requests are per pipeline, and other tests' captures
                               // (pipeline "cutover") must not pick this one up.
    env.cfg.name = env.schema.clone();
    env.create_source_table("events (id bigint PRIMARY KEY, payload text)")
        .await;
    let s = &env.schema;
    // These rows exist before the slot: only a backfill can bring them.
    env.legacy()
        .await
        .batch_execute(&format!(
            r#"INSERT INTO "{s}".events SELECT g, 'old-' || g FROM generate_series(1, {rows}) g;
               ANALYZE "{s}".events;"#
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cutover.toml");
    std::fs::write(&config, env.cfg.to_redacted_toml()).unwrap();
    (env, dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_under_concurrent_changes_ends_equal_within_the_throttle() {
    let metrics = cutover::observe::install_recorder().unwrap();
    let (env, _dir, config) = setup("bfill", 3000).await;
    let s = env.schema.clone();
    let capture = Part::capture(&env.cfg).await;
    let sink = Part::sink(&env.cfg, "mirror").await;
    // Concurrent updates, deletes and inserts while the backfill runs.
    let writer = {
        let l = env.legacy().await;
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..150i64 {
                let id = (i * 37) % 3000 + 1;
                l.batch_execute(&format!(
                    r#"UPDATE "{s}".events SET payload = 'new-{i}' WHERE id = {id};
                       DELETE FROM "{s}".events WHERE id = {};
                       INSERT INTO "{s}".events VALUES ({}, 'inserted');"#,
                    (i * 53) % 3000 + 1,
                    10_000 + i
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    let started = Instant::now();
    let (code, out, err) = cli(
        &config,
        &[
            "backfill",
            "--table",
            &format!("{s}.events"),
            "--chunk-rows",
            "250",
            "--rows-per-sec",
            "1500",
        ],
    );
    let took = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backfill done: 1 table(s)"), "{out}");
    // 3000 rows at 1500 rows/s: no faster than the limit allows (the last chunk ends it).
    assert!(
        took >= 3000.0 / 1500.0 * 0.85,
        "backfill took {took:.2}s: throttle not held"
    );
    writer.await.unwrap();
    let q = format!(r#"SELECT * FROM "{s}".events"#);
    converge(&env.legacy().await, &q, &env.target(0).await, &q, 90).await;
    let events = read_all(&env.cfg, &topic(&env)).await;
    let reads = events.iter().filter(|e| e.2 == "r").count();
    // Every row present while its chunk was read, less those the stream superseded inside a
    // watermark window: the 3000 old rows (some deleted meanwhile) and some of the 150 inserted.
    assert!(
        reads > 2500 && reads <= 3150,
        "{reads} op=r events for 3000 + 150 rows"
    );
    let row = env
        .legacy()
        .await
        .query_one(
            "SELECT state, rows_done, chunks_done FROM cutover.backfill WHERE pipeline = $1",
            &[&env.cfg.name],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "done");
    assert!(row.get::<_, i64>(2) >= 12, "chunks of 250");
    // The backfill metrics, as documented, from the (in-process) capture.
    let page = metrics.render();
    let exported = super::prometheus::exported(&page);
    for (name, (kind, labels, _)) in super::prometheus::documented() {
        if name.starts_with("cutover_backfill_") {
            let (k, l) = exported
                .get(&name)
                .unwrap_or_else(|| panic!("{name}:\n{page}"));
            assert_eq!(k, &kind, "{name}");
            assert!(l.is_subset(&labels), "{name}");
        }
    }
    let table = format!("{s}.events");
    assert!(
        page.contains(&format!(
            "cutover_backfill_rows_total{{table=\"{table}\"}} {}",
            row.get::<_, i64>(1)
        )),
        "{page}"
    );
    sink.stop().await;
    capture.stop().await;
    let _ = env
        .legacy()
        .await
        .execute(
            "DELETE FROM cutover.backfill WHERE pipeline = $1",
            &[&env.cfg.name],
        )
        .await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_capture_resumes_backfill_without_recopying_finished_chunks() {
    let (env, dir, config) = setup("bfkill", 4000).await;
    let s = env.schema.clone();
    let spawn_capture = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("capture.log"))
            .unwrap();
        KillOnDrop(
            std::process::Command::new(cutover_bin())
                .args(["capture", "--config"])
                .arg(&config)
                .env("CUTOVER__OBSERVE__LISTEN", "")
                .env("CUTOVER__MONITOR__EMBEDDED", "false")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };
    let mut capture = spawn_capture();
    let sink = Part::sink(&env.cfg, "mirror").await;
    let (code, out, err) = cli(
        &config,
        &[
            "backfill",
            "--table",
            &format!("{s}.events"),
            "--chunk-rows",
            "200",
            "--rows-per-sec",
            "1000",
            "--no-wait",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let l = env.legacy().await;
    let progress = || async {
        let r = env
            .legacy()
            .await
            .query_one(
                "SELECT state, chunks_done, coalesce(last_key[1], '0')::bigint FROM cutover.backfill
                 WHERE pipeline = $1",
                &[&env.cfg.name],
            )
            .await
            .unwrap();
        (
            r.get::<_, String>(0),
            r.get::<_, i64>(1),
            r.get::<_, i64>(2),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress().await.1 < 3 {
        assert!(
            Instant::now() < deadline,
            "no progress: {}",
            std::fs::read_to_string(dir.path().join("capture.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    capture.kill(); // SIGKILL mid-backfill
    let (_, chunks_at_kill, last_at_kill) = progress().await;
    assert!((600..4000).contains(&last_at_kill), "{last_at_kill}");
    let mut capture = spawn_capture();
    let deadline = Instant::now() + Duration::from_secs(90);
    while progress().await.0 != "done" {
        assert!(
            Instant::now() < deadline,
            "backfill did not finish after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let q = format!(r#"SELECT * FROM "{s}".events"#);
    converge(&l, &q, &env.target(0).await, &q, 90).await;
    // Rows of chunks acknowledged before the kill were sent exactly once; only the chunk in
    // flight at the kill may have been sent twice.
    let mut reads: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, _, op, id) in read_all(&env.cfg, &topic(&env)).await {
        if op == "r" {
            *reads.entry(id).or_default() += 1;
        }
    }
    assert_eq!(reads.len(), 4000, "every row backfilled");
    let twice: Vec<i64> = reads
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    assert!(twice.iter().all(|id| *id > last_at_kill), "re-copied finished chunks: {:?} (≤ {last_at_kill}, {chunks_at_kill} chunks done at the kill)", &twice[..twice.len().min(10)]);
    assert!(
        twice.len() <= 200,
        "more than the chunk in flight was re-sent: {}",
        twice.len()
    );
    sink.stop().await;
    let _ = l
        .execute(
            "DELETE FROM cutover.backfill WHERE pipeline = $1",
            &[&env.cfg.name],
        )
        .await;
    capture.kill(); // an active slot cannot be dropped
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_backfilled_in_parallel_up_to_the_configured_concurrency() {
    let (mut env, dir, _) = setup("bfpar", 900).await;
    let s = env.schema.clone();
    // Two more tables with existing rows: three requested, two at a time.
    env.legacy()
        .await
        .batch_execute(&format!(
            r#"CREATE TABLE "{s}".second (id bigint PRIMARY KEY, payload text);
               CREATE TABLE "{s}".third (id bigint PRIMARY KEY, payload text);
               INSERT INTO "{s}".second SELECT g, 'two-' || g FROM generate_series(1, 900) g;
               INSERT INTO "{s}".third SELECT g, 'three-' || g FROM generate_series(1, 900) g;
               ANALYZE "{s}".second; ANALYZE "{s}".third;"#
        ))
        .await
        .unwrap();
    env.cfg.source.backfill_concurrency = 2;
    let config = dir.path().join("cutover.toml");
    std::fs::write(&config, env.cfg.to_redacted_toml()).unwrap();
    let capture = Part::capture(&env.cfg).await;
    let sink = Part::sink(&env.cfg, "mirror").await;
    let tables: Vec<String> = ["events", "second", "third"]
        .iter()
        .map(|t| format!("{s}.{t}"))
        .collect();
    let mut args = vec![
        "backfill",
        "--chunk-rows",
        "100",
        "--rows-per-sec",
        "600",
        "--no-wait",
    ];
    for t in &tables {
        args.extend(["--table", t.as_str()]);
    }
    let (code, out, err) = cli(&config, &args);
    assert_eq!(code, 0, "{out}{err}");
    // Each table takes about 1.5 s at its throttle: sample how many run at once.
    let l = env.legacy().await;
    let mut most = 0i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = l
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'running'),
                        count(*) FILTER (WHERE state = 'done'),
                        count(*) FILTER (WHERE state = 'failed')
                 FROM cutover.backfill WHERE pipeline = $1",
                &[&env.cfg.name],
            )
            .await
            .unwrap();
        let (running, done, failed): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(failed, 0, "a table's backfill failed");
        assert!(running <= 2, "{running} tables backfilled at once, limit 2");
        most = most.max(running);
        if done == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backfill of 3 tables did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(most, 2, "never two tables at once: not parallel");
    for t in ["events", "second", "third"] {
        let q = format!(r#"SELECT * FROM "{s}".{t}"#);
        converge(&l, &q, &env.target(0).await, &q, 90).await;
    }
    sink.stop().await;
    capture.stop().await;
    let _ = l
        .execute(
            "DELETE FROM cutover.backfill WHERE pipeline = $1",
            &[&env.cfg.name],
        )
        .await;
    env.cleanup().await;
}

/// Hostile identifiers and values through backfill's chunk queries (keys compared as escaped
/// literals in their own types) with `standard_conforming_strings = off` on the source
/// sessions, where a backslash in a plain '...' literal is an escape: every row arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_and_values_backfill_intact_without_standard_conforming_strings() {
    let mut env = Env::new("bfhostile");
    env.cfg.sinks.truncate(1);
    env.cfg.name = env.schema.clone();
    let url = env.cfg.source.url.expose().to_string();
    let sep = if url.contains('?') { '&' } else { '?' };
    env.cfg.source.url = cutover::config::DbUrl::new(format!(
        "{url}{sep}options=-c%20standard_conforming_strings%3Doff"
    ));
    let s = env.schema.clone();
    let table = r#"we"ird; DROP TABLE x --"#;
    let q = |t: &str| format!("\"{}\"", t.replace('"', "\"\""));
    env.create_source_table(&format!(
        r#"{} ("order" text, "a'b" int, "ü ñ" text, "select" bytea, PRIMARY KEY ("order", "a'b"))"#,
        q(table)
    ))
    .await;
    let l = env.legacy().await;
    let off: String = super::apply::connect(&env.cfg.source.url)
        .await
        .query_one("SHOW standard_conforming_strings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        off, "off",
        "the source sessions run without standard_conforming_strings"
    );
    let keys = [
        r"\'",
        r"'; DROP TABLE x; --",
        r"\\",
        "'",
        "\"\"",
        "🦀 ünïcödé",
        "a\nb",
        r"\x00",
        "E'x'",
        "$$ $tag$",
        "",
        " ",
    ];
    let t = format!(r#""{s}".{}"#, q(table));
    for (i, k) in keys.iter().enumerate() {
        for n in 0..3i32 {
            // Binary without NUL: every byte 1..=255, rotated per row.
            let bytes: Vec<u8> = (1..=255u8)
                .cycle()
                .skip(i * 3 + n as usize)
                .take(255)
                .collect();
            l.execute(
                &format!(r#"INSERT INTO {t} VALUES ($1, $2, $3, $4)"#),
                &[k, &n, &format!("{k}|{n}"), &bytes],
            )
            .await
            .unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cutover.toml");
    std::fs::write(&config, env.cfg.to_redacted_toml()).unwrap();
    let capture = Part::capture(&env.cfg).await;
    let sink = Part::sink(&env.cfg, "mirror").await;
    let (code, out, err) = cli(
        &config,
        &[
            "backfill",
            "--table",
            &format!("{s}.{table}"),
            "--chunk-rows",
            "2",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let sql = format!(r#"SELECT * FROM {t} ORDER BY 1, 2"#);
    converge(&l, &sql, &env.target(0).await, &sql, 90).await;
    let n: i64 = env
        .target(0)
        .await
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, (keys.len() * 3) as i64);
    sink.stop().await;
    capture.stop().await;
    let _ = l
        .execute(
            "DELETE FROM cutover.backfill WHERE pipeline = $1",
            &[&env.cfg.name],
        )
        .await;
    env.cleanup().await;
}
