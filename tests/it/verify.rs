//! `cutover verify` against the real stack: an equal pair is 100%; a corrupted, a missing and
//! two extra rows are found by chunk checksums and bisection; `--repair` fixes them through
//! the pipeline; rows written while verify runs are not reported (re-checked after the lag);
//! the read throttle holds.

use std::time::Duration;

use super::apply::{converge, Part};
use super::replay::{cli, setup};

fn report(out: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["tables"][0].clone()
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|k| k[0].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_and_repairs_corrupted_missing_and_extra_rows() {
    let (env, _dir, config) = setup("verify").await;
    let s = env.schema.clone();
    let table = format!("{s}.events");
    let capture = Part::capture(&env.cfg).await;
    let sink = Part::sink(&env.cfg, "mirror").await;
    let (l, t) = (env.legacy().await, env.target(0).await);
    l.batch_execute(&format!(
        r#"INSERT INTO "{s}".events SELECT g, md5(g::text) FROM generate_series(1, 3000) g"#
    ))
    .await
    .unwrap();
    let q = format!(r#"SELECT * FROM "{s}".events"#);
    converge(&l, &q, &t, &q, 60).await;
    let verify = |extra: &[&str]| {
        let mut a = vec![
            "verify",
            "--sink",
            "mirror",
            "--table",
            &table,
            "--chunk-rows",
            "500",
            "--recheck-after-secs",
            "2",
            "--json",
        ];
        a.extend_from_slice(extra);
        cli(&config, &a)
    };

    // Equal: 100%, every chunk matched.
    let (code, out, err) = verify(&[]);
    assert_eq!(code, 0, "{out}{err}");
    let r = report(&out);
    assert_eq!(r["parity_pct"], 100.0, "{r}");
    assert_eq!(r["source_rows"], 3000);
    assert_eq!(
        r["chunks"], 7,
        "6 full chunks and the open-ended last one: {r}"
    );
    assert_eq!(r["mismatched_chunks"], 0);

    // Throttled: 3000 rows read on each side at 3000 rows/s (both sides together) take at
    // least the 2 s the limit allows, and the answer is the same.
    let started = std::time::Instant::now();
    let (code, out, err) = verify(&["--rows-per-sec", "3000"]);
    let took = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(report(&out)["parity_pct"], 100.0);
    assert!(
        took >= 6000.0 / 3000.0 * 0.9,
        "verify took {took:.2}s: throttle not held"
    );

    // Rows written while verify runs are in flight, not differences.
    let writer = {
        let l = env.legacy().await;
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                l.execute(
                    &format!(r#"INSERT INTO "{s}".events VALUES ($1, 'live')"#),
                    &[&(5000i64 + i)],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let (code, out, err) = verify(&[]);
    writer.await.unwrap();
    assert_eq!(code, 0, "live writes reported as differences: {out}{err}");

    // Corrupt the target: one different, one missing, two extra (below and above every key).
    converge(&l, &q, &t, &q, 60).await;
    t.batch_execute(&format!(
        r#"UPDATE "{s}".events SET payload = 'corrupt' WHERE id = 777;
           DELETE FROM "{s}".events WHERE id = 1500;
           INSERT INTO "{s}".events VALUES (0, 'extra-low'), (99999, 'extra-high');"#
    ))
    .await
    .unwrap();
    let (code, out, err) = verify(&[]);
    assert_eq!(code, 3, "{out}{err}");
    let r = report(&out);
    assert_eq!(keys(&r["different"]), ["777"], "{r}");
    assert_eq!(keys(&r["missing"]), ["1500"], "{r}");
    assert_eq!(keys(&r["extra"]), ["0", "99999"], "{r}");
    let parity = r["parity_pct"].as_f64().unwrap();
    assert!((parity - 100.0 * 3098.0 / 3102.0).abs() < 0.01, "{parity}");
    assert!(r["mismatched_chunks"].as_u64().unwrap() >= 3, "{r}");

    // Repair through the pipeline, then verify again: identical.
    let (code, out, err) = verify(&["--repair"]);
    assert_eq!(code, 3, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["repairs"][0]["reemitted"], 2, "{v}");
    assert_eq!(v["repairs"][0]["deleted_extra"], 2, "{v}");
    converge(&l, &q, &t, &q, 60).await;
    let (code, out, err) = verify(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(report(&out)["parity_pct"], 100.0);

    // In-process: the cutover_verify_* metrics, as documented, agree with the report.
    let metrics = cutover::observe::install_recorder().unwrap();
    let mapping =
        cutover::apply::mapping::Mapping::identity(cutover::event::TableId::new(&s, "events"));
    let plan = cutover::verify::plan(&l, &t, &mapping).await.unwrap();
    let opts = cutover::verify::Options {
        chunk_rows: 1000,
        rows_per_sec: 0,
        recheck_after: Duration::from_secs(0),
    };
    let r = cutover::verify::verify_table(&l, &t, &plan, &opts, |_| {})
        .await
        .unwrap();
    assert_eq!(r.differences(), 0);
    let page = metrics.render();
    let exported = super::prometheus::exported(&page);
    for (name, (kind, labels, _)) in super::prometheus::documented() {
        if name.starts_with("cutover_verify_") {
            let (k, l) = exported
                .get(&name)
                .unwrap_or_else(|| panic!("{name}:\n{page}"));
            assert_eq!(k, &kind, "{name}");
            assert!(l.is_subset(&labels), "{name}");
        }
    }
    assert!(
        page.contains(&format!(
            "cutover_verify_parity_ratio{{table=\"{table}\"}} 1"
        )),
        "{page}"
    );
    assert!(
        page.contains(&format!(
            "cutover_verify_rows_total{{table=\"{table}\"}} {}",
            r.source_rows
        )),
        "{page}"
    );

    // The human form names the differences.
    t.batch_execute(&format!(r#"DELETE FROM "{s}".events WHERE id = 42"#))
        .await
        .unwrap();
    sink.stop().await; // nothing re-applies it meanwhile
    let (code, out, _) = cli(
        &config,
        &[
            "verify",
            "--sink",
            "mirror",
            "--table",
            &table,
            "--recheck-after-secs",
            "0",
        ],
    );
    assert_eq!(code, 3);
    assert!(out.contains("missing 1, extra 0, different 0"), "{out}");
    assert!(out.contains("    missing: (42)"), "{out}");
    capture.stop().await;
    env.cleanup().await;
}
