//! Broker faults with a real broker: a private Apache Kafka (own ports, own data) under a
//! running capture and sink, so the shared stack is not disturbed.
//!
//! - SIGKILL of the broker mid-workload, restart 5 s later: nothing lost, nothing applied
//!   twice, lag drains to zero;
//! - the broker stopped for 30 s: capture backs off without confirming the slot past what
//!   Kafka acknowledged, `/readyz` and `cutover status` report the broker, and everything
//!   recovers by itself once it is back.

use std::time::{Duration, Instant};

use super::apply::{
    assert_each_written_once, background_writer, count_rows, counted_mirror_table, try_converge,
    wait_for_slot, write_config, Env, Part,
};
use super::capture::confirmed_lsn;
use super::support::{cutover_bin, free_port, KillOnDrop, PrivateBroker};
use cutover::config::Config;

async fn lag_drains(cfg: &Config, secs: u64) {
    let mut monitor = cutover::monitor::Monitor::new(cfg).unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let snap = monitor.probe(false).await;
        let lag: i64 = snap.sinks.iter().map(|s| s.lag_messages).sum();
        if snap.problems.is_empty() && lag == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lag did not drain in {secs} s: lag {lag}, problems {:?}",
            snap.problems
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn on_private_broker(tag: &str, broker: &PrivateBroker) -> Env {
    let mut env = Env::new(tag);
    env.cfg.kafka.brokers = vec![broker.bootstrap()];
    env.cfg.kafka.request_timeout_ms = 10_000;
    env.cfg.sinks.truncate(1);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sigkill_mid_workload_loses_nothing_applies_nothing_twice_and_lag_drains() {
    let mut broker = PrivateBroker::start();
    let env = on_private_broker("bkill", &broker);
    counted_mirror_table(&env).await;
    let capture = Part::capture(&env.cfg).await;
    let sink = Part::sink(&env.cfg, "mirror").await;
    let (done, rows) = background_writer(env.legacy().await, env.schema.clone());
    let t = env.target(0).await;
    let writes = format!(r#""{}".writes"#, env.schema);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_rows(&t, &writes).await < 500 {
        assert!(Instant::now() < deadline, "nothing applied before the kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.kill(); // SIGKILL, with the pipeline mid-stream
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = done.send(true);
    let written = rows.await.unwrap();
    let q = format!(r#"SELECT * FROM "{}".events"#, env.schema);
    try_converge(&env.legacy().await, &q, &t, &q, 120)
        .await
        .unwrap();
    lag_drains(&env.cfg, 60).await;
    sink.stop().await;
    capture.stop().await;
    assert_each_written_once(&env, written).await;
    env.cleanup().await;
}

pub(super) async fn current_lsn(l: &tokio_postgres::Client) -> u64 {
    let s: String = l
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    cutover::event::Lsn::parse(&s).unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_30s_holds_the_slot_reports_the_broker_and_recovers_by_itself() {
    broker_down(30, None).await;
}

/// Issue 16, item 7: the broker away for 90 s while the walsender gives up on a silent client
/// after 20 s (`wal_sender_timeout`, set for the replication session through the source
/// URL's `options`): capture's backpressure stops it reading the stream, the server drops
/// the connection, capture reconnects from the last confirmed LSN, and nothing is lost or
/// applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_90s_past_the_wal_sender_timeout_loses_nothing_and_recovers_by_itself() {
    broker_down(90, Some("20s")).await;
}

async fn broker_down(secs: u64, wal_sender_timeout: Option<&str>) {
    let mut broker = PrivateBroker::start();
    let mut env = on_private_broker("bdown", &broker);
    if let Some(t) = wal_sender_timeout {
        let url = env.cfg.source.url.expose().to_string();
        let sep = if url.contains('?') { '&' } else { '?' };
        env.cfg.source.url =
            cutover::config::DbUrl::new(format!("{url}{sep}options=-c%20wal_sender_timeout%3D{t}"));
    }
    let port = free_port();
    env.cfg.observe.listen = format!("127.0.0.1:{port}");
    env.cfg.monitor.interval_ms = 1000;
    counted_mirror_table(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&env.cfg, dir.path());
    let log = dir.path().join("run.log");
    let mut run = std::process::Command::new(cutover_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let http = reqwest::Client::new();
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let ready = || async {
        http.get(&readyz)
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    };
    // Rows written before the slot exists are not captured; the sink is ready only once it
    // holds partitions, i.e. once the first row created the table's topic.
    let l = env.legacy().await;
    wait_for_slot(&l, &env.cfg.source.slot, log_text).await;
    let (done, rows) = background_writer(env.legacy().await, env.schema.clone());
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready().await {
        assert!(Instant::now() < deadline, "never ready:\n{}", log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = env.target(0).await;
    let writes = format!(r#""{}".writes"#, env.schema);
    while count_rows(&t, &writes).await < 300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    broker.stop(); // SIGTERM: a clean broker shutdown, the broker is gone for `secs`
    let held_at = current_lsn(&l).await; // every later commit is unacknowledged by Kafka
    let down_since = Instant::now();
    let mut saw_not_ready = false;
    let mut saw_status = false;
    let mut saw_slot_inactive = false;
    while down_since.elapsed() < Duration::from_secs(secs) {
        if !saw_slot_inactive {
            saw_slot_inactive = l
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                    &[&env.cfg.source.slot],
                )
                .await
                .unwrap()
                .is_some();
        }
        let confirmed = confirmed_lsn(&l, &env.cfg.source.slot).await;
        assert!(
            confirmed <= held_at,
            "slot confirmed {confirmed:X} past {held_at:X} while Kafka was down"
        );
        if !saw_not_ready && !ready().await {
            saw_not_ready = true;
        }
        if !saw_status {
            let out = std::process::Command::new(cutover_bin())
                .args(["status", "--json", "--config"])
                .arg(&config)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            saw_status = !out.status.success() && text.contains("broker");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(saw_not_ready, "/readyz stayed 200 with the broker down");
    assert!(saw_status, "cutover status did not report the broker down");
    assert!(
        run.0.try_wait().unwrap().is_none(),
        "cutover run gave up while the broker was down:\n{}",
        log_text()
    );

    broker.spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = done.send(true);
    let written = rows.await.unwrap();
    let q = format!(r#"SELECT * FROM "{}".events"#, env.schema);
    if let Err(e) = try_converge(&l, &q, &t, &q, 120).await {
        panic!("{e}\nrun.log:\n{}", log_text());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready().await {
        assert!(
            Instant::now() < deadline,
            "not ready again after the broker came back:\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And the slot moves again once Kafka acknowledges.
    let deadline = Instant::now() + Duration::from_secs(60);
    while confirmed_lsn(&l, &env.cfg.source.slot).await <= held_at {
        assert!(
            Instant::now() < deadline,
            "slot never advanced after recovery"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lag_drains(&env.cfg, 60).await;
    run.kill();
    assert_each_written_once(&env, written).await;
    eprintln!(
        "broker down {secs} s (wal_sender_timeout {wal_sender_timeout:?}): {written} rows, slot seen inactive: {saw_slot_inactive}, reconnects logged: {}",
        log_text().matches("reconnecting").count()
    );
    env.cleanup().await;
}
