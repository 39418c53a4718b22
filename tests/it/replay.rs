//! `cutover replay` and `cutover tail` as a data engineer runs them, against the real stack:
//! rebuild an emptied target from the beginning of the topics, replay a time window, refuse
//! while the sink runs, audit every replay; tail prints decoded events.

use std::process::Command;
use std::time::Duration;

use super::apply::{converge, rows, Env, Part};
use super::support::cutover_bin;

pub(super) fn cli(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(cutover_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("CUTOVER_CONFIG")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub(super) async fn setup(tag: &str) -> (Env, tempfile::TempDir, std::path::PathBuf) {
    let mut env = Env::new(tag);
    env.cfg.sinks.truncate(1); // mirror
    env.create_source_table("events (id bigint PRIMARY KEY, payload text)")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cutover.toml");
    std::fs::write(&config, env.cfg.to_redacted_toml()).unwrap();
    (env, dir, config)
}

pub(super) fn topic(env: &Env) -> String {
    cutover::kafka::topic::for_table(
        &env.cfg.topic_prefix,
        &cutover::event::TableId::new(&env.schema, "events"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_an_emptied_target_from_the_beginning_and_is_audited() {
    let (env, _dir, config) = setup("replay").await;
    let s = env.schema.clone();
    let capture = Part::capture(&env.cfg).await;
    let sink = Part::sink(&env.cfg, "mirror").await;
    let (l, t) = (env.legacy().await, env.target(0).await);
    l.batch_execute(&format!(
        r#"INSERT INTO "{s}".events SELECT g, 'v1-' || g FROM generate_series(1, 300) g;
           UPDATE "{s}".events SET payload = 'v2' WHERE id % 10 = 0;
           DELETE FROM "{s}".events WHERE id > 290;"#
    ))
    .await
    .unwrap();
    let events_on_topic = 300 + 30 + 10;
    let q = format!(r#"SELECT * FROM "{s}".events"#);
    converge(&l, &q, &t, &q, 60).await;

    // Refused while the sink runs.
    let (code, out, err) = cli(&config, &["replay", "--sink", "mirror", "--from-beginning"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("sink mirror is running"), "{err}");

    // Stop it, lose the target's rows.
    sink.stop().await;
    t.batch_execute(&format!(r#"DELETE FROM "{s}".events"#))
        .await
        .unwrap();

    // A dry run counts and changes nothing.
    let (code, out, err) = cli(
        &config,
        &[
            "replay",
            "--sink",
            "mirror",
            "--from-beginning",
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&topic(&env)))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.ends_with(&format!(" {events_on_topic}")), "{line}");
    assert!(out.contains("dry run: nothing changed"), "{out}");
    assert!(rows(&t, &q).await.is_empty());

    // The replay rebuilds it.
    let (code, out, err) = cli(&config, &["replay", "--sink", "mirror", "--from-beginning"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "replayed {events_on_topic} events into sink mirror"
        )),
        "{out}"
    );
    assert!(
        err.contains(&format!(
            "{events_on_topic}/{events_on_topic} events (100.0%)"
        )),
        "{err}"
    );
    assert_eq!(rows(&l, &q).await, rows(&t, &q).await);
    let audit = t
        .query_one(
            "SELECT spec, events, finished_at IS NOT NULL FROM cutover.replay_audit
             WHERE sink = 'mirror' AND $1 = ANY(topics) ORDER BY id DESC LIMIT 1",
            &[&topic(&env)],
        )
        .await
        .unwrap();
    assert_eq!(audit.get::<_, String>(0), "from beginning to end");
    assert_eq!(audit.get::<_, i64>(1), events_on_topic as i64);
    assert!(audit.get::<_, bool>(2));

    // The sink starts again afterwards and goes on from where the replay ended.
    let sink = Part::sink(&env.cfg, "mirror").await;
    l.batch_execute(&format!(
        r#"INSERT INTO "{s}".events VALUES (1000, 'after')"#
    ))
    .await
    .unwrap();
    converge(&l, &q, &t, &q, 60).await;

    // tail: the newest events, decoded, one JSON object per line.
    let (code, out, err) = cli(&config, &["tail", "--topic", &topic(&env), "--last", "2"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 2 * env.cfg.kafka.partitions as usize, "{out}");
    let last = lines
        .iter()
        .find(|v| v["after"]["id"] == "1000")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(last["op"], "c");
    assert_eq!(last["after"]["payload"], "after");
    assert_eq!(last["key"]["id"], "1000");
    assert_eq!(last["table"], format!("{s}.events"));
    assert!(last["commit_lsn"].as_str().unwrap().contains('/'));

    sink.stop().await;
    capture.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_a_time_window_by_source_commit_time() {
    let (env, _dir, config) = setup("replaytime").await;
    let s = env.schema.clone();
    let capture = Part::capture(&env.cfg).await;
    let sink = Part::sink(&env.cfg, "mirror").await;
    let (l, t) = (env.legacy().await, env.target(0).await);
    l.batch_execute(&format!(
        r#"INSERT INTO "{s}".events SELECT g, 'early' FROM generate_series(1, 50) g"#
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cut = chrono::Utc::now().to_rfc3339();
    tokio::time::sleep(Duration::from_millis(500)).await;
    l.batch_execute(&format!(
        r#"INSERT INTO "{s}".events SELECT g, 'late' FROM generate_series(51, 80) g"#
    ))
    .await
    .unwrap();
    let q = format!(r#"SELECT * FROM "{s}".events"#);
    converge(&l, &q, &t, &q, 60).await;
    sink.stop().await;
    t.batch_execute(&format!(r#"DELETE FROM "{s}".events"#))
        .await
        .unwrap();

    // Up to the cut: only what was committed before it.
    let (code, out, err) = cli(
        &config,
        &[
            "replay",
            "--sink",
            "mirror",
            "--from-beginning",
            "--to-timestamp",
            &cut,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let got = rows(&t, &format!(r#"SELECT payload FROM "{s}".events"#)).await;
    assert_eq!(got.len(), 50, "{got:?}\n{out}");
    assert!(got.iter().all(|p| p == "(early)"), "{got:?}\n{out}");

    // From the cut: the rest, and only the rest (the early rows are not touched again).
    t.batch_execute(&format!(r#"UPDATE "{s}".events SET payload = 'kept'"#))
        .await
        .unwrap();
    let (code, out, err) = cli(
        &config,
        &["replay", "--sink", "mirror", "--from-timestamp", &cut],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replayed 30 events"), "{out}");
    let got = rows(&t, &format!(r#"SELECT payload FROM "{s}".events"#)).await;
    assert_eq!(got.iter().filter(|p| *p == "(kept)").count(), 50);
    assert_eq!(got.iter().filter(|p| *p == "(late)").count(), 30);
    capture.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_refuses_a_running_sink_then_removes_its_origins_and_progress() {
    let (mut env, dir, _) = setup("retire").await;
    // A pipeline of its own: retire removes this pipeline's origins and progress only.
    env.cfg.name = env.schema.clone();
    let config = dir.path().join("cutover.toml");
    std::fs::write(&config, env.cfg.to_redacted_toml()).unwrap();
    let s = env.schema.clone();
    let capture = Part::capture(&env.cfg).await;
    let sink = Part::sink(&env.cfg, "mirror").await;
    let (l, t) = (env.legacy().await, env.target(0).await);
    l.batch_execute(&format!(
        r#"INSERT INTO "{s}".events SELECT g, 'v' FROM generate_series(1, 50) g"#
    ))
    .await
    .unwrap();
    let q = format!(r#"SELECT * FROM "{s}".events"#);
    converge(&l, &q, &t, &q, 60).await;
    let origins = || async {
        env.target(0)
            .await
            .query_one(
                "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE $1",
                &[&format!("cutover:{}:mirror%", env.cfg.name)],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let progress = || async {
        env.target(0)
            .await
            .query_one(
                "SELECT count(*) FROM cutover.sink_progress WHERE sink = 'mirror' AND topic = $1",
                &[&topic(&env)],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(origins().await, 1);
    assert!(progress().await >= 1);

    // Refused while the sink runs; nothing removed.
    let (code, out, err) = cli(&config, &["retire", "--sink", "mirror"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("sink mirror is running"), "{err}");
    assert_eq!(origins().await, 1);

    sink.stop().await;
    // A dry run lists and keeps.
    let (code, out, err) = cli(&config, &["retire", "--sink", "mirror", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 replication origin(s)"), "{out}");
    assert!(out.contains("nothing removed"), "{out}");
    assert_eq!(origins().await, 1);

    let (code, out, err) = cli(&config, &["retire", "--sink", "mirror"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dropped 1 origin(s)"), "{out}");
    assert!(
        out.contains(&format!("deleted consumer group {}.mirror", env.cfg.name)),
        "{out}"
    );
    assert_eq!(origins().await, 0);
    assert_eq!(progress().await, 0);
    // Idempotent: nothing left to do is not an error.
    let (code, out, err) = cli(&config, &["retire", "--sink", "mirror"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 replication origin(s)"), "{out}");
    capture.stop().await;
    env.cleanup().await;
}
