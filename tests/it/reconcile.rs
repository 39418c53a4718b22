//! Continuous reconciliation against the real stack (issue 17): drift injected behind
//! cutover's back is found in one pass, recorded with its keys in `cutover.discrepancies`,
//! and (with `repair = "auto"`) repaired through the pipeline; a live workload during the
//! pass is not drift; a service killed mid-pass resumes; the read budget holds.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::apply::{converge, insert_events, write_config, Env, Part};
use super::replay::cli;
use super::support::{cutover_process, free_port, scrape};

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Forget what reconcile recorded for the tables of `schema` (the target is shared).
async fn forget(t: &tokio_postgres::Client, schema: &str) {
    for table in ["discrepancies", "reconcile_passes", "repair_audit"] {
        t.execute(
            &format!("DELETE FROM cutover.{table} WHERE source_table LIKE $1"),
            &[&format!("{schema}.%")],
        )
        .await
        .unwrap();
    }
}

/// Open discrepancies of tables in `schema` as (kind, key), from `cutover reconcile report
/// --json` (other tests share the target).
fn open_keys(config: &std::path::Path, schema: &str) -> BTreeSet<(String, String)> {
    let (code, out, err) = cli(config, &["reconcile", "report", "--json"]);
    assert!(code == 0 || code == 3, "{out}{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["table"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{schema}."))
        })
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["key"].to_string(),
            )
        })
        .collect()
}

/// Drift on the new store behind cutover's back — a row updated in a column the mapping
/// renames (`qty` → `quantity`), one in a column it copies, one deleted, one inserted — is
/// found by one `reconcile --once` pass while a workload keeps writing (whose rows in flight
/// are not reported), listed with its keys, and repaired by `repair = "auto"` through the
/// pipeline; the next pass resolves the ledger and every repair is audited. A reconcile
/// service scraped by Prometheus fires the parity and old-discrepancy alerts meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_found_in_one_pass_with_its_keys_and_auto_repair_fixes_it() {
    let mut env = Env::new("recon");
    env.cfg.reconcile.sinks = vec!["newstore".into()];
    env.cfg.reconcile.min_recheck_secs = 2;
    env.cfg.reconcile.rows_per_sec = 0;
    env.cfg.reconcile.chunk_rows = 50;
    env.create_schemas().await;
    let s = env.schema.clone();
    let capture = Part::capture(&env.cfg).await;
    let sink = Part::sink(&env.cfg, "newstore").await;
    let l = env.legacy().await;
    let n = env.target(1).await;
    l.batch_execute(&format!(
        r#"INSERT INTO "{s}".order_items SELECT g, 1, 'sku-' || g, g % 7, g * 1.5 FROM generate_series(1, 300) g"#
    ))
    .await
    .unwrap();
    let src_q = format!(r#"SELECT order_id, line, sku, qty, unit_price FROM "{s}".order_items"#);
    let dst_q = format!(
        r#"SELECT order_id, line_no, sku, quantity, unit_price FROM "{s}_sales".order_lines"#
    );
    converge(&l, &src_q, &n, &dst_q, 60).await;

    // Drift behind cutover's back (no cutover origin: plain writes on the target).
    n.batch_execute(&format!(
        r#"UPDATE "{s}_sales".order_lines SET quantity = 999 WHERE order_id = 5;
           UPDATE "{s}_sales".order_lines SET sku = 'tampered' WHERE order_id = 9;
           DELETE FROM "{s}_sales".order_lines WHERE order_id = 7;
           INSERT INTO "{s}_sales".order_lines VALUES (1000, 1, 'ghost', 1, 1.00);"#
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&env.cfg, dir.path());
    // A live workload during the pass: its rows are in flight, never drift.
    let writer = {
        let l = env.legacy().await;
        let s = s.clone();
        tokio::spawn(async move {
            for g in 2000..2300 {
                l.batch_execute(&format!(
                    r#"INSERT INTO "{s}".order_items VALUES ({g}, 1, 'live', 1, 1.00)"#
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let (code, out, err) = cli(&config, &["reconcile", "--once"]);
    writer.await.unwrap();
    assert_eq!(code, 3, "differences remain open: {out}{err}");
    let want: BTreeSet<(String, String)> = [
        ("different", r#"["5","1"]"#),
        ("different", r#"["9","1"]"#),
        ("missing", r#"["7","1"]"#),
        ("extra", r#"["1000","1"]"#),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(open_keys(&config, &s), want, "exactly the injected drift");
    let (_, text, _) = cli(&config, &["reconcile", "report"]);
    assert!(
        text.contains(&format!("{s}.order_items")) && text.contains("missing"),
        "{text}"
    );
    let parity: f64 = n
        .query_one(
            "SELECT parity FROM cutover.reconcile_passes WHERE sink = 'newstore' AND source_table = $1 AND completed_at IS NOT NULL ORDER BY completed_at DESC LIMIT 1",
            &[&format!("{s}.order_items")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(parity < 1.0 && parity > 0.98, "parity {parity}");

    // Alerted: a reconcile service scraped by a real Prometheus with the shipped rules (`for:`
    // scaled to 2 s, the discrepancy-age threshold to 1 s) fires both drift alerts.
    let port = free_port();
    let log = dir.path().join("service.log");
    let observe = [("CUTOVER__OBSERVE__LISTEN", format!("127.0.0.1:{port}"))];
    let mut service = cutover_process(&["reconcile", "--config", path(&config)], &log, &observe);
    let rules = super::prometheus::scaled_rules(&[("CutoverReconcileDiscrepancyOld", 1)].into());
    let prom =
        super::prometheus::Prometheus::start(&[(format!("127.0.0.1:{port}"), "reconcile")], &rules)
            .await;
    prom.wait_for("the reconcile drift alerts", 90, async |p| {
        let a = p.alerts("newstore").await;
        [
            "CutoverReconcileParityLow",
            "CutoverReconcileDiscrepancyOld",
        ]
        .iter()
        .all(|n| a.contains(&(n.to_string(), "firing".to_string())))
    })
    .await;
    service.terminate();

    // Auto-repair: re-emitted through the pipeline (missing, different), deleted (extra).
    let mut auto = env.cfg.clone();
    auto.reconcile.repair = cutover::config::RepairMode::Auto;
    let auto_config = dir.path().join("auto.toml");
    std::fs::write(&auto_config, auto.to_redacted_toml()).unwrap();
    let (code, out, err) = cli(&auto_config, &["reconcile", "--once"]);
    assert!(code == 0 || code == 3, "{out}{err}");
    converge(&l, &src_q, &n, &dst_q, 60).await;
    let (code, out, err) = cli(&auto_config, &["reconcile", "--once"]);
    assert_eq!(code, 0, "a pass after the repair finds nothing: {out}{err}");
    assert!(open_keys(&config, &s).is_empty());
    let resolutions: Vec<(String, String)> = n
        .query(
            "SELECT kind, resolution FROM cutover.discrepancies
             WHERE sink = 'newstore' AND source_table = $1 ORDER BY kind, row_key::text",
            &[&format!("{s}.order_items")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(resolutions.len(), 4, "{resolutions:?}");
    assert!(
        resolutions
            .iter()
            .all(|(_, how)| how.starts_with("repaired")),
        "{resolutions:?}"
    );
    let audited: i64 = n
        .query_one(
            "SELECT count(*) FROM cutover.repair_audit
             WHERE pipeline = $1 AND sink = 'newstore' AND source_table = $2",
            &[&env.cfg.name, &format!("{s}.order_items")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 4);
    sink.stop().await;
    capture.stop().await;
    forget(&n, &s).await;
    env.cleanup().await;
}

/// The service under a read budget of 2,000 rows/s (both sides): killed mid-pass it resumes
/// behind the last compared chunk instead of starting over, a full pass of 6,000 rows (12,000
/// read) takes at least ~6 s, and the metrics say parity, passes and the load on the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_resumes_its_pass_and_the_read_budget_holds() {
    let mut env = Env::new("recsvc");
    env.cfg.sinks.truncate(1); // mirror
    env.cfg.reconcile.rows_per_sec = 2_000;
    env.cfg.reconcile.chunk_rows = 500;
    env.cfg.reconcile.pause_secs = 1;
    env.cfg.reconcile.min_recheck_secs = 1;
    super::apply::counted_mirror_table(&env).await;
    let s = env.schema.clone();
    let capture = Part::capture(&env.cfg).await;
    let sink = Part::sink(&env.cfg, "mirror").await;
    let l = env.legacy().await;
    insert_events(&l, &s, 1, 6000, 1000).await;
    let t = env.target(0).await;
    let q = format!(r#"SELECT * FROM "{s}".events"#);
    converge(&l, &q, &t, &q, 60).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&env.cfg, dir.path());
    let log = dir.path().join("reconcile.log");
    let port = free_port();
    let observe = [("CUTOVER__OBSERVE__LISTEN", format!("127.0.0.1:{port}"))];
    let spawn = || cutover_process(&["reconcile", "--config", path(&config)], &log, &observe);
    let table = format!("{s}.events");
    let mut first = spawn();
    // Kill it once a few chunks (of 12) are compared.
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed_at = loop {
        let row = t
            .query_opt(
                "SELECT chunks FROM cutover.reconcile_passes
                 WHERE sink = 'mirror' AND source_table = $1 AND completed_at IS NULL",
                &[&table],
            )
            .await
            .ok()
            .flatten();
        if let Some(chunks) = row.map(|r| r.get::<_, i64>(0)).filter(|c| *c >= 3) {
            first.kill();
            break chunks;
        }
        assert!(
            Instant::now() < deadline,
            "no progress: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        killed_at < 12,
        "killed after the pass ended ({killed_at} chunks)"
    );
    let mut second = spawn();
    // The resumed pass completes without starting over, then a full pass follows.
    let deadline = Instant::now() + Duration::from_secs(90);
    let passes = loop {
        let rows: Vec<(i64, f64)> = t
            .query(
                "SELECT chunks, seconds FROM cutover.reconcile_passes
                 WHERE sink = 'mirror' AND source_table = $1 AND completed_at IS NOT NULL
                 ORDER BY started_at",
                &[&table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if rows.len() >= 2 {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "passes: {rows:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("reconcile resumes its pass"), "{text}");
    // 6,000 keys in chunks of 500: 12 chunks plus the open-ended last one; a pass started over
    // would have counted the chunks before the kill twice.
    assert!(
        passes[0].0 <= 13,
        "the resumed pass compared {} chunks",
        passes[0].0
    );
    assert_eq!(passes[1].0, passes[0].0, "a full pass has as many chunks");
    // 12,000 rows read at 2,000 rows/s: at least ~6 s (less the last chunk's share).
    assert!(
        passes[1].1 >= 5.0,
        "a full pass took {:.2}s: budget not held",
        passes[1].1
    );
    let page = scrape(&format!("127.0.0.1:{port}")).await;
    for series in [
        format!("cutover_reconcile_parity_ratio{{sink=\"mirror\",table=\"{table}\"}} 1"),
        format!("cutover_reconcile_open_discrepancies{{sink=\"mirror\",table=\"{table}\"}} 0"),
        format!("cutover_reconcile_rows_compared_total{{sink=\"mirror\",table=\"{table}\",side=\"source\"}}"),
        "cutover_reconcile_last_pass_completed_timestamp_seconds{".to_string(),
        "cutover_reconcile_pass_duration_seconds{".to_string(),
    ] {
        assert!(page.contains(&series), "{series} missing:\n{page}");
    }
    second.terminate();
    sink.stop().await;
    capture.stop().await;
    forget(&t, &s).await;
    env.cleanup().await;
}

/// `cutover run` with `reconcile.enabled` runs reconcile beside capture and the sinks: its
/// passes appear in the ledger's history and its metrics on the same observe port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_run_with_reconcile_enabled_reconciles_its_sinks() {
    let mut env = Env::new("recrun");
    env.cfg.sinks.truncate(1); // mirror
    env.cfg.reconcile.enabled = true;
    env.cfg.reconcile.pause_secs = 1;
    env.cfg.reconcile.min_recheck_secs = 1;
    super::apply::counted_mirror_table(&env).await;
    let s = env.schema.clone();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&env.cfg, dir.path());
    let log = dir.path().join("run.log");
    let port = free_port();
    let observe = [("CUTOVER__OBSERVE__LISTEN", format!("127.0.0.1:{port}"))];
    let mut run = cutover_process(&["run", "--config", path(&config)], &log, &observe);
    let l = env.legacy().await;
    super::apply::wait_for_slot(&l, &env.cfg.source.slot, || {
        std::fs::read_to_string(&log).unwrap_or_default()
    })
    .await;
    insert_events(&l, &s, 1, 500, 100).await;
    let t = env.target(0).await;
    let q = format!(r#"SELECT * FROM "{s}".events"#);
    converge(&l, &q, &t, &q, 60).await;
    let table = format!("{s}.events");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = scrape(&format!("127.0.0.1:{port}")).await;
        let done: i64 = t
            .query_one(
                "SELECT count(*) FROM cutover.reconcile_passes
                 WHERE sink = 'mirror' AND source_table = $1 AND completed_at IS NOT NULL AND source_rows = 500",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        let series =
            format!("cutover_reconcile_parity_ratio{{sink=\"mirror\",table=\"{table}\"}} 1");
        if done > 0 && page.contains(&series) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reconcile pass over the 500 rows inside cutover run:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    run.terminate();
    forget(&t, &s).await;
    env.cleanup().await;
}

/// The target PostgreSQL restarts in the middle of a pass: the service reconnects by itself,
/// resumes the pass behind its last recorded chunk and completes it with full parity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_restart_mid_pass_is_waited_out_and_the_pass_resumes() {
    let pg = super::support::PrivatePostgres::start(&[]);
    let mut env = Env::new("recdb");
    env.cfg.sinks.truncate(1); // mirror, on a target of its own
    env.cfg.sinks[0].url = cutover::config::DbUrl::new(pg.url("postgres"));
    env.cfg.reconcile.rows_per_sec = 2_000;
    env.cfg.reconcile.chunk_rows = 250;
    env.cfg.reconcile.min_recheck_secs = 1;
    let s = env.schema.clone();
    // The same 4,000 rows on both sides (no pipeline needed to compare them).
    let ddl = format!(
        r#"CREATE SCHEMA "{s}"; CREATE TABLE "{s}".events (id bigint PRIMARY KEY, payload text);
           INSERT INTO "{s}".events SELECT g, md5(g::text) FROM generate_series(1, 4000) g;"#
    );
    env.legacy().await.batch_execute(&ddl).await.unwrap();
    env.target(0).await.batch_execute(&ddl).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&env.cfg, dir.path());
    let log = dir.path().join("reconcile.log");
    let quiet = [("CUTOVER__OBSERVE__LISTEN", String::new())];
    let mut service = cutover_process(&["reconcile", "--config", path(&config)], &log, &quiet);
    let table = format!("{s}.events");
    let chunks = |t: tokio_postgres::Client, done: bool| {
        let table = table.clone();
        async move {
            t.query_opt(
                "SELECT chunks FROM cutover.reconcile_passes
                 WHERE sink = 'mirror' AND source_table = $1 AND (completed_at IS NOT NULL) = $2",
                &[&table, &done],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, i64>(0))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while chunks(env.target(0).await, false).await.unwrap_or(0) < 3 {
        assert!(
            Instant::now() < deadline,
            "no progress: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        if let Ok(t) = tokio::time::timeout(Duration::from_secs(5), async {
            super::apply::connect(&env.cfg.sinks[0].url).await
        })
        .await
        {
            if let Some(n) = chunks(t, true).await {
                break n;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the pass never completed after the restart:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("reconcile failed, reconnecting"), "{text}");
    assert!(text.contains("reconcile resumes its pass"), "{text}");
    assert!(
        done <= 17,
        "16 chunks and the open end, not started over: {done}"
    );
    let parity: f64 = env
        .target(0)
        .await
        .query_one(
            "SELECT parity FROM cutover.reconcile_passes WHERE source_table = $1 AND completed_at IS NOT NULL",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parity, 1.0);
    service.terminate();
    env.legacy()
        .await
        .batch_execute(&format!(r#"DROP SCHEMA "{s}" CASCADE"#))
        .await
        .unwrap();
}
