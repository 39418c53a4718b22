//! Back-sync and cutover phases against the real stack: legacy PG15 ⇄ Apache Kafka ⇄ new store PG15,
//! both directions running at once (forward capture + forward sink, back capture + back sink),
//! phases changed through the `cutover phase` command as an operator would.
//!
//! The legacy table `accounts(id, owner, balance)` maps to the new store's
//! `accounts(id, owner_name, balance)` (a rename each way), both REPLICA IDENTITY FULL.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use super::apply::{connect, converge, isolated_config, Part};
use super::capture::read_all;
use super::support::{cutover_bin, local_config, unique};
use cutover::config::{BacksyncConfig, Config, ConflictPolicy, DbUrl, TableMapping, Unmapped};
use cutover::event::TableId;
use cutover::kafka::topic::for_table as topic_for;

struct Mig {
    cfg: Config,
    /// Legacy schema.
    id: String,
    /// The new store's schema: `<id>_n` with a mapping (owner → owner_name), `<id>` for an
    /// identity migration (same schema, table and columns on both sides).
    ns: String,
    dir: tempfile::TempDir,
}

/// Drop the replication origins earlier runs of these tests left behind (each origin with
/// progress holds one of the server's max_replication_slots origin slots until dropped).
/// Origins in use by a running test fail to drop and are skipped.
async fn sweep_origins(c: &tokio_postgres::Client) {
    c.batch_execute(
        "DO $$ DECLARE r record; BEGIN
           FOR r IN SELECT roname FROM pg_replication_origin
                    WHERE roname LIKE 'cutover:bs%' OR roname LIKE 'cutover:noorigin%' LOOP
             BEGIN PERFORM pg_replication_origin_drop(r.roname);
             EXCEPTION WHEN OTHERS THEN NULL; END;
           END LOOP; END $$",
    )
    .await
    .unwrap();
}

impl Mig {
    async fn new(tag: &str, policy: ConflictPolicy) -> Mig {
        Self::build(tag, policy, false).await
    }

    /// No mappings either way: `unmapped_tables = "identity"` on the forward sink and the
    /// back-sync, the new store's table has the legacy table's schema, name and columns.
    async fn identity(tag: &str, policy: ConflictPolicy) -> Mig {
        Self::build(tag, policy, true).await
    }

    async fn build(tag: &str, policy: ConflictPolicy, identity: bool) -> Mig {
        let id = unique(tag);
        let mut cfg = isolated_config(&id);
        cfg.name = id.clone();
        cfg.sinks.retain(|s| s.name == "newstore");
        let newstore_url = cfg.sinks[0].url.clone();
        let ns = if identity {
            id.clone()
        } else {
            format!("{id}_n")
        };
        let s = &mut cfg.sinks[0];
        s.group_id = Some(format!("{id}.newstore"));
        s.batch_max_ms = 50;
        if identity {
            s.unmapped_tables = Unmapped::Identity;
            s.tables = vec![];
        } else {
            s.unmapped_tables = Unmapped::Skip;
            s.tables = vec![TableMapping {
                source: format!("{id}.accounts"),
                target: Some(format!("{ns}.accounts")),
                rename: [("owner".to_string(), "owner_name".to_string())].into(),
                ..Default::default()
            }];
        }
        cfg.backsync = Some(BacksyncConfig {
            url: newstore_url,
            password: None,
            password_file: None,
            legacy_url: None,
            legacy_password: None,
            legacy_password_file: None,
            slot: format!("{id}_b"),
            publication: format!("{id}_b"),
            schemas: vec![ns.clone()],
            tables: vec![],
            forward_sink: "newstore".into(),
            conflict_policy: policy,
            mappings: if identity {
                vec![]
            } else {
                vec![TableMapping {
                    source: format!("{ns}.accounts"),
                    target: Some(format!("{id}.accounts")),
                    rename: [("owner_name".to_string(), "owner".to_string())].into(),
                    ..Default::default()
                }]
            },
            unmapped_tables: if identity {
                Unmapped::Identity
            } else {
                Unmapped::Skip
            },
            gate_max_lag_secs: 10,
            batch_max_ms: 50,
        });
        cfg.validate().unwrap();
        let m = Mig {
            cfg,
            id,
            ns,
            dir: tempfile::tempdir().unwrap(),
        };
        let s = &m.id;
        m.legacy()
            .await
            .batch_execute(&format!(
                r#"CREATE SCHEMA "{s}";
                CREATE TABLE "{s}".accounts (id bigint PRIMARY KEY, owner text, balance numeric(12,2));
                ALTER TABLE "{s}".accounts REPLICA IDENTITY FULL;"#
            ))
            .await
            .unwrap();
        let (ns, owner) = (&m.ns, m.new_owner());
        m.new_store()
            .await
            .batch_execute(&format!(
                r#"CREATE SCHEMA "{ns}";
                CREATE TABLE "{ns}".accounts (id bigint PRIMARY KEY, {owner} text, balance numeric(12,2));
                ALTER TABLE "{ns}".accounts REPLICA IDENTITY FULL;"#
            ))
            .await
            .unwrap();
        std::fs::write(m.config_path(), m.cfg.to_redacted_toml()).unwrap();
        sweep_origins(&m.legacy().await).await;
        sweep_origins(&m.new_store().await).await;
        m
    }

    /// The owner column in the new store: renamed unless the migration is an identity one.
    fn new_owner(&self) -> &'static str {
        if self.ns == self.id {
            "owner"
        } else {
            "owner_name"
        }
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("cutover.toml")
    }

    async fn legacy(&self) -> tokio_postgres::Client {
        connect(&self.cfg.source.url).await
    }

    async fn new_store(&self) -> tokio_postgres::Client {
        connect(&self.cfg.backsync.as_ref().unwrap().url).await
    }

    fn legacy_sql(&self) -> String {
        format!(r#"SELECT id, owner, balance FROM "{}".accounts"#, self.id)
    }

    fn new_sql(&self) -> String {
        format!(
            r#"SELECT id, {}, balance FROM "{}".accounts"#,
            self.new_owner(),
            self.ns
        )
    }

    /// Both sides equal (through the rename), within `secs`.
    async fn converged(&self, secs: u64) {
        converge(
            &self.legacy().await,
            &self.legacy_sql(),
            &self.new_store().await,
            &self.new_sql(),
            secs,
        )
        .await;
    }

    /// Forward capture + sink and back capture + sink, in this process.
    async fn start(&self) -> Vec<Part> {
        let rev = self.cfg.reverse().unwrap();
        vec![
            Part::capture(&self.cfg).await,
            Part::sink(&self.cfg, "newstore").await,
            Part::capture(&rev).await,
            Part::sink(&rev, "backsync").await,
        ]
    }

    /// `cutover <args> --config <this migration's config>`, run to completion.
    fn cutover(&self, args: &[&str]) -> std::process::Output {
        Command::new(cutover_bin())
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .env_remove("CUTOVER_CONFIG")
            .output()
            .unwrap()
    }

    fn phase_output(&self, args: &[&str]) -> std::process::Output {
        let mut a = vec!["phase"];
        a.extend_from_slice(args);
        self.cutover(&a)
    }

    /// `cutover status` as text.
    fn status(&self) -> String {
        String::from_utf8_lossy(&self.cutover(&["status"]).stdout).into_owned()
    }

    /// `cutover phase <args>` → (exit code, stdout + stderr).
    fn phase(&self, args: &[&str]) -> (i32, String) {
        let o = self.phase_output(args);
        (
            o.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    /// `cutover phase <args> --json` → the JSON it prints on stdout.
    fn phase_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.phase_output(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
    }

    fn table(&self) -> String {
        format!("{}.accounts", self.id)
    }

    /// Switch phase through the gate, retrying while the gate sees in-flight lag.
    async fn switch(&self, to: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, out) = self.phase(&["set", "--table", &self.table(), "--to", to]);
            if code == 0 {
                assert!(out.contains(&format!("-> {to}")), "{out}");
                return;
            }
            assert_eq!(code, 3, "{out}");
            assert!(
                Instant::now() < deadline,
                "gate never passed into {to}: {out}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn forward_topic(&self) -> String {
        topic_for(&self.cfg.topic_prefix, &TableId::new(&self.id, "accounts"))
    }

    fn back_topic(&self) -> String {
        topic_for(
            &format!("{}.back", self.cfg.topic_prefix),
            &TableId::new(&self.ns, "accounts"),
        )
    }

    async fn conflicts(
        &self,
        c: &tokio_postgres::Client,
        sink: &str,
    ) -> Vec<(String, String, bool, bool)> {
        c.query(
            "SELECT kind, winner, local_row IS NOT NULL, incoming_row IS NOT NULL
             FROM cutover.conflicts WHERE sink = $1 AND target_table LIKE $2 ORDER BY id",
            &[&sink, &format!("{}%", self.id)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
    }

    async fn cleanup(&self, parts: Vec<Part>) {
        for p in parts {
            p.stop().await;
        }
        let l = self.legacy().await;
        let n = self.new_store().await;
        let b = self.cfg.backsync.as_ref().unwrap();
        let _ = l
            .execute(
                "SELECT pg_drop_replication_slot($1)",
                &[&self.cfg.source.slot],
            )
            .await;
        let _ = n
            .execute("SELECT pg_drop_replication_slot($1)", &[&b.slot])
            .await;
        let s = &self.id;
        let _ = l
            .batch_execute(&format!(
                r#"DROP PUBLICATION IF EXISTS "{s}"; DROP SCHEMA IF EXISTS "{s}" CASCADE;
                DELETE FROM cutover.table_phases WHERE pipeline = '{s}';"#
            ))
            .await;
        let _ = n
            .batch_execute(&format!(
                r#"DROP PUBLICATION IF EXISTS "{s}_b"; DROP SCHEMA IF EXISTS "{}" CASCADE;"#,
                self.ns
            ))
            .await;
        sweep_origins(&l).await;
        sweep_origins(&n).await;
    }
}

/// Events on a topic (all of it, up to the high watermarks).
async fn events(cfg: &Config, topic: &str) -> usize {
    read_all(cfg, topic).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_forward_dual_reverse_and_back_loses_nothing_and_never_echoes() {
    // Each test is its own process: this recorder sees only this pipeline's metrics.
    let metrics = cutover::observe::install_recorder().unwrap();
    let m = Mig::new("bsrt", ConflictPolicy::SourceOfTruth).await;
    let parts = m.start().await;
    let (l, n) = (m.legacy().await, m.new_store().await);
    let (s, ns) = (m.id.clone(), m.ns.clone());
    let mut legacy_writes = 0;
    let mut new_writes = 0;

    // forward: legacy owns the table.
    l.batch_execute(&format!(
        r#"INSERT INTO "{s}".accounts SELECT g, 'owner ' || g, g * 10 FROM generate_series(1, 20) g"#
    ))
    .await
    .unwrap();
    legacy_writes += 20;
    m.converged(60).await;
    let (_, out) = m.phase(&["show"]);
    assert!(
        out.contains(&format!("{}  ", m.table())) && out.contains("forward"),
        "{out}"
    );

    // dual: writes on the new store flow back.
    m.switch("dual").await;
    n.batch_execute(&format!(
        r#"UPDATE "{ns}".accounts SET balance = balance + 1 WHERE id <= 5;
           INSERT INTO "{ns}".accounts SELECT g, 'new ' || g, 1 FROM generate_series(101, 105) g;"#
    ))
    .await
    .unwrap();
    new_writes += 10;
    l.batch_execute(&format!(
        r#"UPDATE "{s}".accounts SET owner = 'legacy still writes' WHERE id = 20"#
    ))
    .await
    .unwrap();
    legacy_writes += 1;
    m.converged(60).await;

    // reverse: the new store owns the table; legacy is kept warm by the back-sync.
    m.switch("reverse").await;
    n.batch_execute(&format!(
        r#"INSERT INTO "{ns}".accounts SELECT g, 'reverse ' || g, 2 FROM generate_series(106, 110) g;
           UPDATE "{ns}".accounts SET owner_name = 'renamed in new' WHERE id IN (1, 2, 3);
           DELETE FROM "{ns}".accounts WHERE id IN (4, 101);"#
    ))
    .await
    .unwrap();
    new_writes += 5 + 3 + 2;
    m.converged(60).await;

    // Roll back to forward: legacy holds every write made on the new store.
    m.switch("forward").await;
    let legacy_rows = super::apply::rows(&l, &m.legacy_sql()).await;
    assert_eq!(legacy_rows.len(), 20 + 5 + 5 - 2, "{legacy_rows:?}");
    for probe in [
        "(1,\"renamed in new\",11.00)",
        "(110,\"reverse 110\",2.00)",
        "(105,\"new 105\",1.00)",
    ] {
        assert!(
            legacy_rows.iter().any(|r| r == probe),
            "{probe} missing: {legacy_rows:?}"
        );
    }
    assert!(!legacy_rows
        .iter()
        .any(|r| r.starts_with("(4,") || r.starts_with("(101,")));

    // No echo: each topic holds exactly the writes made by applications on its side.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        events(&m.cfg, &m.forward_topic()).await,
        legacy_writes,
        "forward topic"
    );
    assert_eq!(
        events(&m.cfg.reverse().unwrap(), &m.back_topic()).await,
        new_writes,
        "back topic"
    );

    // Every change is in the audit trail, unforced, with what the gate saw.
    let h = m.phase_json(&["history"]);
    let steps: Vec<(String, String, bool)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().into(),
                e["to"].as_str().unwrap().into(),
                e["forced"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("forward", "dual"),
            ("dual", "reverse"),
            ("reverse", "forward")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string(), false))
    );
    let checks = &h[0]["checks"]["checks"];
    let names: Vec<&str> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["lag.newstore", "lag.backsync", "rows", "replica_identity"],
        "{checks}"
    );
    assert!(h[0]["changed_by"].as_str().unwrap().contains('@'));

    // The back-sync metrics, as documented; the monitor reports phases and audited changes.
    let snap = cutover::monitor::Monitor::new(&m.cfg)
        .unwrap()
        .probe(false)
        .await;
    cutover::monitor::export(&snap);
    let page = metrics.render();
    let exported = super::prometheus::exported(&page);
    for (name, (kind, labels, by)) in super::prometheus::documented() {
        if !by.contains("back-sync") {
            continue;
        }
        let (k, l) = exported
            .get(&name)
            .unwrap_or_else(|| panic!("{name} not exported:\n{page}"));
        assert_eq!(k, &kind, "{name}");
        assert!(
            l.is_subset(&labels),
            "{name}: {l:?} vs documented {labels:?}"
        );
    }
    let value = |series: &str| -> f64 {
        page.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{page}"))
    };
    // Every write that crossed was dropped once by the capture on the other side.
    let echoes: f64 = page
        .lines()
        .filter(|l| l.starts_with("cutover_capture_echoes_suppressed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(echoes as usize, legacy_writes + new_writes, "{page}");
    let t = m.table();
    assert_eq!(
        value(&format!(
            "cutover_table_phase{{table=\"{t}\",phase=\"forward\"}}"
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "cutover_table_phase{{table=\"{t}\",phase=\"reverse\"}}"
        )),
        0.0
    );
    assert_eq!(value("cutover_phase_changes_total{forced=\"false\"}"), 3.0);
    m.cleanup(parts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_refuses_while_lagging_or_mismatched_and_force_is_audited() {
    let mut m = Mig::new("bsgate", ConflictPolicy::SourceOfTruth).await;
    m.cfg.backsync.as_mut().unwrap().gate_max_lag_secs = 1;
    std::fs::write(m.config_path(), m.cfg.to_redacted_toml()).unwrap();
    // Only the forward capture runs: the forward sink is down, so the new store falls behind.
    let capture = Part::capture(&m.cfg).await;
    let s = m.id.clone();
    m.legacy()
        .await
        .batch_execute(&format!(
            r#"INSERT INTO "{s}".accounts SELECT g, 'x', 1 FROM generate_series(1, 10) g"#
        ))
        .await
        .unwrap();
    // Let the capture publish and the oldest unapplied event age past the 1 s limit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, out) = m.phase(&["set", "--table", &m.table(), "--to", "dual"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("refused"), "{out}");
    assert!(
        out.contains("FAIL lag.newstore: 10 event(s) unapplied"),
        "{out}"
    );
    assert!(out.contains("FAIL rows: legacy"), "{out}");
    assert!(out.contains("10 rows") && out.contains("0 rows"), "{out}");
    assert!(
        out.contains(
            "verify: parity 0.00%, missing 10 [(1) (10) (2) (3) (4)], extra 0, different 0"
        ),
        "{out}"
    );
    let shown = m.phase_json(&["show"]);
    assert_eq!(shown[0]["phase"], "forward", "{shown}");

    // A forced switch needs a reason, and is audited as forced with the failed checks.
    let (code, out) = m.phase(&["set", "--table", &m.table(), "--to", "dual", "--force"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--force needs --reason"), "{out}");
    let (code, out) = m.phase(&[
        "set",
        "--table",
        &m.table(),
        "--to",
        "dual",
        "--force",
        "--reason",
        "rollback drill",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("FORCED"), "{out}");
    let (_, out) = m.phase(&["history"]);
    assert!(
        out.contains("forward -> dual") && out.contains("FORCED"),
        "{out}"
    );
    assert!(out.contains("reason: rollback drill"), "{out}");
    assert!(out.contains("FAIL rows"), "{out}");
    let (_, shown) = m.phase(&["show"]);
    assert!(shown.contains("dual"), "{shown}");
    m.cleanup(vec![capture]).await;
}

/// Both sides update the same rows for a while in `dual`, with both directions running.
/// Returns (legacy app writes, new-store app writes).
async fn concurrent_writes(m: &Mig, secs: u64) -> (usize, usize) {
    let (s, ns) = (m.id.clone(), m.ns.clone());
    let l = m.legacy().await;
    let n = m.new_store().await;
    let until = Instant::now() + Duration::from_secs(secs);
    let legacy = tokio::spawn(async move {
        let mut w = 0usize;
        let mut i = 0u64;
        while Instant::now() < until {
            i += 1;
            let id = i * 7 % 30 + 1;
            l.execute(
                &format!(r#"UPDATE "{s}".accounts SET owner = $1, balance = $2::text::numeric WHERE id = $3"#),
                &[&format!("L{i}"), &format!("{}.25", i % 1000), &(id as i64)],
            )
            .await
            .unwrap();
            w += 1;
            if i.is_multiple_of(5) {
                l.execute(
                    &format!(r#"INSERT INTO "{s}".accounts VALUES ($1, 'L-new', 0)"#),
                    &[&(1000 + i as i64)],
                )
                .await
                .unwrap();
                w += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w
    });
    let new = tokio::spawn(async move {
        let mut w = 0usize;
        let mut i = 0u64;
        while Instant::now() < until {
            i += 1;
            let id = i * 11 % 30 + 1;
            n.execute(
                &format!(r#"UPDATE "{ns}".accounts SET owner_name = $1, balance = $2::text::numeric WHERE id = $3"#),
                &[&format!("N{i}"), &format!("{}.75", i % 1000), &(id as i64)],
            )
            .await
            .unwrap();
            w += 1;
            if i.is_multiple_of(5) {
                n.execute(
                    &format!(r#"INSERT INTO "{ns}".accounts VALUES ($1, 'N-new', 0)"#),
                    &[&(5000 + i as i64)],
                )
                .await
                .unwrap();
                w += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w
    });
    (legacy.await.unwrap(), new.await.unwrap())
}

async fn dual_with_concurrent_writes(policy: ConflictPolicy) {
    let metrics = cutover::observe::install_recorder().unwrap();
    let m = Mig::new("bsdual", policy).await;
    let parts = m.start().await;
    let s = m.id.clone();
    m.legacy()
        .await
        .batch_execute(&format!(
            r#"INSERT INTO "{s}".accounts SELECT g, 'seed', 0 FROM generate_series(1, 30) g"#
        ))
        .await
        .unwrap();
    m.converged(60).await;
    m.switch("dual").await;
    let (lw, nw) = concurrent_writes(&m, 8).await;
    // Both sides converge to the same rows.
    m.converged(120).await;
    // Checksums agree too (the gate's row check, through the CLI).
    m.switch("forward").await;

    // Conflicts happened, were resolved by the policy and recorded with both versions.
    let at_new = m.conflicts(&m.new_store().await, "newstore").await;
    let at_legacy = m.conflicts(&m.legacy().await, "backsync").await;
    assert!(
        !at_new.is_empty() || !at_legacy.is_empty(),
        "no conflict in {lw}+{nw} concurrent writes"
    );
    for (kind, winner, local, incoming) in at_new.iter().chain(&at_legacy) {
        assert!(*local && *incoming, "{kind}: both versions recorded");
        assert!(
            ["update_differs", "insert_exists"].contains(&kind.as_str()),
            "{kind}"
        );
        assert!(["incoming", "local"].contains(&winner.as_str()));
    }
    if policy == ConflictPolicy::LastWriterWins {
        // Every decision follows the commit times recorded with it (ties to legacy).
        for (c, sink) in [
            (m.new_store().await, "newstore"),
            (m.legacy().await, "backsync"),
        ] {
            let wrong: i64 = c
                .query_one(
                    "SELECT count(*) FROM cutover.conflicts WHERE sink = $1 AND target_table LIKE $2
                       AND kind IN ('update_differs', 'insert_exists')
                       AND (winner = 'incoming') <> (incoming_commit_ts > local_commit_ts
                            OR (incoming_commit_ts = local_commit_ts AND incoming_from = 'legacy'))",
                    &[&sink, &format!("{}%", m.id)],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                wrong, 0,
                "{sink}: decisions against the recorded commit times"
            );
        }
    }
    if policy == ConflictPolicy::SourceOfTruth {
        // Legacy owns the table in dual: its changes win on both sides.
        assert!(at_new.iter().all(|c| c.1 == "incoming"), "{at_new:?}");
        assert!(at_legacy.iter().all(|c| c.1 == "local"), "{at_legacy:?}");
    }

    // Zero echoes: each topic holds exactly its side's application writes.
    assert_eq!(
        events(&m.cfg, &m.forward_topic()).await,
        30 + lw,
        "forward topic"
    );
    assert_eq!(
        events(&m.cfg.reverse().unwrap(), &m.back_topic()).await,
        nw,
        "back topic"
    );
    // The metric counts what the tables record, labelled with the policy.
    let page = metrics.render();
    let counted: f64 = page
        .lines()
        .filter(|l| l.starts_with("cutover_sink_conflicts_total{"))
        .inspect(|l| {
            assert!(
                l.contains(&format!("policy=\"{}\"", policy.as_str())),
                "{l}"
            )
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted as usize, at_new.len() + at_legacy.len(), "{page}");
    let counts: BTreeMap<&str, usize> = [("legacy", lw), ("new", nw)].into();
    eprintln!(
        "{policy:?}: writes {counts:?}, conflicts at new {}, at legacy {}",
        at_new.len(),
        at_legacy.len()
    );
    m.cleanup(parts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_phase_concurrent_writes_converge_under_source_of_truth() {
    dual_with_concurrent_writes(ConflictPolicy::SourceOfTruth).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_phase_concurrent_writes_converge_under_last_writer_wins() {
    dual_with_concurrent_writes(ConflictPolicy::LastWriterWins).await;
}

/// A sink whose role may not use replication origins refuses to start, naming the grants; the
/// grants it names are enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_without_origin_privileges_fails_naming_the_grants() {
    let role = unique("noorigin");
    let mut cfg = local_config();
    cfg.sinks.truncate(1);
    cfg.sinks[0].url = DbUrl::new(format!("postgres://{role}@127.0.0.1:5434/app"));
    cfg.sinks[0].group_id = Some(role.clone());
    let admin = connect(&local_config().sinks[0].url).await;
    admin
        .batch_execute(&format!(r#"CREATE ROLE "{role}" LOGIN"#))
        .await
        .unwrap();
    let err = match cutover::backsync::start_sink(
        &cfg,
        "mirror",
        cutover::observe::Readiness::new(),
        None,
    )
    .await
    {
        Ok(_) => panic!("a role without origin privileges started"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert_eq!(err.kind(), cutover::ErrorKind::Environment, "{msg}");
    assert!(msg.contains("sinks[0].url"), "{msg}");
    assert!(
        msg.contains(&format!(
            r#"GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO "{role}";"#
        )),
        "{msg}"
    );
    // Run exactly what the message says: the role can now tag its writes.
    let grants = msg.split("As a superuser run: ").nth(1).unwrap();
    admin.batch_execute(grants).await.unwrap();
    let c = connect(&cfg.sinks[0].url).await;
    cutover::database::origin::check_privileges(&c, "sinks[0].url")
        .await
        .unwrap();
    let origin = cutover::database::origin::bind(&c, &role, "mirror", None)
        .await
        .unwrap();
    assert_eq!(origin, format!("cutover:{role}:mirror"));
    drop(c);
    let _ = admin
        .execute("SELECT pg_replication_origin_drop($1)", &[&origin])
        .await;
    let _ = admin
        .batch_execute(&format!(
            r#"REASSIGN OWNED BY "{role}" TO postgres; DROP OWNED BY "{role}"; DROP ROLE "{role}""#
        ))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_back_sync_needs_no_mappings_and_never_echoes() {
    let m = Mig::identity("bsident", ConflictPolicy::SourceOfTruth).await;
    let parts = m.start().await;
    let s = m.id.clone();
    m.legacy()
        .await
        .batch_execute(&format!(
            r#"INSERT INTO "{s}".accounts SELECT g, 'seed', 0 FROM generate_series(1, 20) g"#
        ))
        .await
        .unwrap();
    m.converged(60).await;
    m.switch("dual").await;
    m.switch("reverse").await;
    // The new store owns the table now: its writes reach the same-named legacy table.
    m.new_store()
        .await
        .batch_execute(&format!(
            r#"INSERT INTO "{s}".accounts SELECT g, 'new', 1 FROM generate_series(101, 110) g;
               UPDATE "{s}".accounts SET owner = 'moved' WHERE id <= 5;"#
        ))
        .await
        .unwrap();
    m.converged(60).await;
    let moved = super::apply::rows(
        &m.legacy().await,
        &format!(r#"SELECT id FROM "{s}".accounts WHERE owner = 'moved' OR owner = 'new'"#),
    )
    .await;
    assert_eq!(moved.len(), 15, "{moved:?}");
    // No echo: each topic holds exactly its side's application writes.
    assert_eq!(events(&m.cfg, &m.forward_topic()).await, 20);
    assert_eq!(events(&m.cfg, &m.back_topic()).await, 15);
    // Retiring the back-sync's sink (it lives in the reversed pipeline) drops its origin on
    // legacy once it is stopped.
    for p in parts {
        p.stop().await;
    }
    let o = Command::new(cutover_bin())
        .args(["retire", "--sink", "backsync", "--config"])
        .arg(m.config_path())
        .env_remove("CUTOVER_CONFIG")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains(&format!("\"cutover:{s}:backsync\"")), "{out}");
    assert!(out.contains("dropped 1 origin(s)"), "{out}");
    m.cleanup(vec![]).await;
}

/// Issue 17, item 5: with `reconcile.enabled`, the switch into `reverse` also needs a
/// reconcile pass of the table completed after its last phase change, with parity at least
/// `gate_min_parity` and no old open discrepancy. Refused before such a pass (the rows check
/// alone would pass: both sides are equal), accepted after `cutover reconcile --once`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reconcile_the_switch_into_reverse_waits_for_a_pass_after_the_last_phase_change() {
    let mut m = Mig::new("bsrec", ConflictPolicy::SourceOfTruth).await;
    m.cfg.reconcile.enabled = true;
    m.cfg.reconcile.min_recheck_secs = 1;
    m.cfg.reconcile.rows_per_sec = 0;
    std::fs::write(m.config_path(), m.cfg.to_redacted_toml()).unwrap();
    let parts = m.start().await;
    m.seed(30).await;
    // A pass before the change into dual does not count for the next change.
    let reconcile = |m: &Mig| m.cutover(&["reconcile", "--once"]);
    let o = reconcile(&m);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    m.switch("dual").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let (code, out) = m.phase(&["set", "--table", &m.table(), "--to", "reverse"]);
        assert_eq!(code, 3, "into reverse without a pass since dual: {out}");
        if out.contains("FAIL reconcile") || Instant::now() > deadline {
            break out;
        }
        // Only lag may fail first while the back-sync catches up.
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        out.contains("FAIL reconcile: the last reconcile pass completed before the table's last phase change"),
        "{out}"
    );
    assert!(!out.contains("FAIL rows"), "both sides are equal: {out}");
    let o = reconcile(&m);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    m.switch("reverse").await;
    let history = m.phase_json(&["history"]);
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert!(
        last.to_string()
            .contains("last pass after the last phase change, parity 100.0000%"),
        "{last}"
    );
    let n = m.new_store().await;
    n.execute(
        "DELETE FROM cutover.reconcile_passes WHERE source_table = $1",
        &[&m.table()],
    )
    .await
    .unwrap();
    m.cleanup(parts).await;
}

impl Mig {
    /// Accounts 1..=n on legacy (balance 0), then both sides equal.
    async fn seed(&self, n: i64) {
        let s = &self.id;
        self.legacy()
            .await
            .batch_execute(&format!(
                r#"INSERT INTO "{s}".accounts SELECT g, 'owner ' || g, 0 FROM generate_series(1, {n}) g"#
            ))
            .await
            .unwrap();
        self.converged(60).await;
    }

    /// Step the table's split share through the gate (retrying while the gate sees lag),
    /// waiting for the hand-over like an operator would.
    async fn step(&self, share: u32) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (code, out) = self.phase(&[
                "set",
                "--table",
                &self.table(),
                "--to",
                "split",
                "--new-share",
                &share.to_string(),
            ]);
            if code == 0 {
                return out;
            }
            assert_eq!(code, 3, "step to {share} %: {out}");
            assert!(
                Instant::now() < deadline,
                "gate never passed into split {share} %: {out}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Leaks recorded on each side's `cutover.conflicts` for this migration's table:
    /// (written on legacy, written on the new store).
    async fn leaks(&self) -> (i64, i64) {
        let count = |c: tokio_postgres::Client, table: String| async move {
            c.query_one(
                "SELECT count(*) FROM cutover.conflicts WHERE kind = 'leak' AND target_table = $1",
                &[&table],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        };
        (
            count(self.new_store().await, format!("{}.accounts", self.ns)).await,
            count(self.legacy().await, format!("{}.accounts", self.id)).await,
        )
    }
}

/// Issue 18: a bridge routes every write to its key's owner (the ownership function) while
/// the table steps 0 → 10 → 50 → 100 → 50 → 0 % under load; at each step the bridge holds the
/// writes (stop routing to the old owner), steps, waits for the hand-over, and resumes with
/// the new share. Both stores end equal to the bridge's own model of every key: nothing lost,
/// nothing applied twice, no leak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_routing_by_owner_steps_the_share_up_and_down_without_loss_or_leak() {
    use cutover::backsync::owner::{owner, share_bp, Owner};
    let m = Mig::new("bssplit", ConflictPolicy::SourceOfTruth).await;
    let parts = m.start().await;
    let (l, n) = (m.legacy().await, m.new_store().await);
    let (s, ns) = (m.id.clone(), m.ns.clone());
    let o = m.new_owner();
    m.seed(200).await;
    let mut model: BTreeMap<i64, i64> = (1..=200).map(|k| (k, 0)).collect();
    let mut next_id = 201i64;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut share = 0u32;
    let mut writes = (0, 0);
    for next in [10u32, 50, 100, 50, 0] {
        // The bridge: 150 writes, each to its key's owner under the current share.
        for i in 0..150 {
            let bp = share_bp(share as f64);
            if i % 10 == 9 {
                let id = next_id;
                next_id += 1;
                let sql = match owner(bp, &[id.to_string()]) {
                    Owner::Legacy => (
                        &l,
                        format!(r#"INSERT INTO "{s}".accounts VALUES ({id}, 'b', 1)"#),
                    ),
                    Owner::New => (
                        &n,
                        format!(
                            r#"INSERT INTO "{ns}".accounts (id, {o}, balance) VALUES ({id}, 'b', 1)"#
                        ),
                    ),
                };
                sql.0.batch_execute(&sql.1).await.unwrap();
                model.insert(id, 1);
                continue;
            }
            let id = (rand() % 200 + 1) as i64;
            match owner(bp, &[id.to_string()]) {
                Owner::Legacy => {
                    l.batch_execute(&format!(
                        r#"UPDATE "{s}".accounts SET balance = balance + 1 WHERE id = {id}"#
                    ))
                    .await
                    .unwrap();
                    writes.0 += 1;
                }
                Owner::New => {
                    n.batch_execute(&format!(
                        r#"UPDATE "{ns}".accounts SET balance = balance + 1 WHERE id = {id}"#
                    ))
                    .await
                    .unwrap();
                    writes.1 += 1;
                }
            }
            *model.get_mut(&id).unwrap() += 1;
        }
        // Stop routing, step, wait for the hand-over (inside `phase set`), resume.
        let out = m.step(next).await;
        if next != share {
            assert!(out.contains("hand-over done"), "{out}");
        }
        share = next;
        if share == 100 {
            // cutover status shows the share of a split table.
            let text = m.status();
            assert!(
                text.contains("split tables") && text.contains("new 100.00 %"),
                "{text}"
            );
        }
    }
    m.converged(90).await;
    let rows: BTreeMap<i64, i64> = l
        .query(
            &format!(r#"SELECT id, balance::bigint FROM "{s}".accounts"#),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows, model,
        "legacy equals the bridge's model (writes: {writes:?})"
    );
    assert!(
        writes.0 > 50 && writes.1 > 50,
        "both sides took writes: {writes:?}"
    );
    assert_eq!(m.leaks().await, (0, 0), "no leak");
    let shown = m.phase_json(&["show"]);
    assert_eq!(shown[0]["phase"], "split", "{shown}");
    assert_eq!(shown[0]["new_share_pct"], 0.0, "{shown}");
    m.cleanup(parts).await;
}

/// Issue 18, the hand-over end to end: legacy writes of keys that move to the new store are
/// still in flight (the forward sink is stopped) when the share steps 10 → 50 %. They were
/// committed before the step's legacy position, so the forward direction still applies them
/// (their owner at that position was legacy) instead of treating them as leaks; `phase set`
/// waits until that direction has drained and only then tells the bridge to route the moved
/// keys to the new store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_flight_at_a_step_are_handed_over_not_leaked() {
    use cutover::backsync::owner::{bucket, share_bp};
    let m = Mig::new("bshand", ConflictPolicy::SourceOfTruth).await;
    let mut parts = m.start().await;
    let (l, n) = (m.legacy().await, m.new_store().await);
    let (s, ns) = (m.id.clone(), m.ns.clone());
    m.seed(100).await;
    m.step(10).await;
    let (lo, hi) = (share_bp(10.0), share_bp(50.0));
    let moving: Vec<i64> = (1..=100)
        .filter(|k| (lo..hi).contains(&bucket(&[k.to_string()])))
        .collect();
    let staying: Vec<i64> = (1..=100)
        .filter(|k| bucket(&[k.to_string()]) >= hi)
        .collect();
    assert!(
        moving.len() > 20 && staying.len() > 20,
        "{moving:?} {staying:?}"
    );
    // The forward direction stops; legacy (the keys' owner at 10 %) writes them.
    parts.remove(1).stop().await;
    let list = |ks: &[i64]| {
        ks.iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    l.batch_execute(&format!(
        r#"UPDATE "{s}".accounts SET balance = 4242 WHERE id IN ({});
           UPDATE "{s}".accounts SET balance = 4343 WHERE id IN ({});"#,
        list(&moving),
        list(&staying)
    ))
    .await
    .unwrap();
    // The step (forced: the gate sees the stopped direction's lag) waits for the hand-over.
    let stepping = Command::new(cutover_bin())
        .args(["phase", "set", "--table", &m.table(), "--to", "split"])
        .args(["--new-share", "50", "--force", "--reason", "hand-over test"])
        .args(["--handover-timeout-secs", "120", "--config"])
        .arg(m.config_path())
        .env_remove("CUTOVER_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while l
        .query_one(
            "SELECT count(*) FROM cutover.share_steps WHERE table_name = $1 AND share_bp = $2",
            &[&m.table(), &(hi as i32)],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(Instant::now() < deadline, "the step was never recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still waiting: the changes of the moving keys have not reached the new store.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(balance(&n, &ns, moving[0]).await, Some(0));
    parts.insert(1, Part::sink(&m.cfg, "newstore").await);
    let out = tokio::task::spawn_blocking(move || stepping.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("hand-over done") && text.contains("[1000, 5000) to the new store"),
        "{text}"
    );
    m.converged(60).await;
    for (keys, want) in [(&moving, 4242), (&staying, 4343)] {
        for k in keys.iter() {
            assert_eq!(balance(&n, &ns, *k).await, Some(want), "new store, key {k}");
            assert_eq!(balance(&l, &s, *k).await, Some(want), "legacy, key {k}");
        }
    }
    assert_eq!(m.leaks().await, (0, 0), "a handed-over write is not a leak");
    m.cleanup(parts).await;
}

/// The balance of account `id` in `schema`, if the row exists.
async fn balance(c: &tokio_postgres::Client, schema: &str, id: i64) -> Option<i64> {
    c.query_opt(
        &format!(r#"SELECT balance::bigint FROM "{schema}".accounts WHERE id = {id}"#),
        &[],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

/// Issue 18: writes on the side that does not own their key are leaks: each is counted
/// (`cutover_phase_leaks_total`), recorded in `cutover.conflicts` with both versions, and
/// resolved by the default policy — the owner's version is restored on the leaking side (an
/// updated row gets the owner's row back; a row the owner does not have is deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_the_wrong_side_are_leaks_counted_recorded_and_resolved_by_the_owner() {
    use cutover::backsync::owner::{owner, share_bp, Owner};
    let metrics = cutover::observe::install_recorder().unwrap();
    let m = Mig::new("bsleak", ConflictPolicy::SourceOfTruth).await;
    let parts = m.start().await;
    let (l, n) = (m.legacy().await, m.new_store().await);
    let (s, ns) = (m.id.clone(), m.ns.clone());
    m.seed(100).await;
    m.step(50).await;
    let bp = share_bp(50.0);
    let key = |want: Owner, from: i64| {
        (from..)
            .find(|k| owner(bp, &[k.to_string()]) == want)
            .unwrap()
    };
    let (a, b, c) = (
        key(Owner::New, 1),
        key(Owner::Legacy, 1),
        key(Owner::New, 1000),
    );
    // The first batch to carry a leak fails once just before its COMMIT and is retried: its
    // leaks are counted once, by the attempt that committed.
    #[cfg(feature = "failpoints")]
    fail::cfg("sink-before-target-commit", "1*return").unwrap();
    // a is the new store's: legacy writes it. b is legacy's: the new store writes it. c is
    // the new store's and exists nowhere: legacy inserts it.
    l.batch_execute(&format!(
        r#"UPDATE "{s}".accounts SET balance = 999 WHERE id = {a};
           INSERT INTO "{s}".accounts VALUES ({c}, 'leaked', 5);"#
    ))
    .await
    .unwrap();
    n.batch_execute(&format!(
        r#"UPDATE "{ns}".accounts SET balance = 777 WHERE id = {b}"#
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (la, nb, lc) = (
            balance(&l, &s, a).await,
            balance(&n, &ns, b).await,
            balance(&l, &s, c).await,
        );
        if la == Some(0) && nb == Some(0) && lc.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leaks not resolved: legacy {a} = {la:?}, new {b} = {nb:?}, legacy {c} = {lc:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    m.converged(60).await;
    assert_eq!(
        m.leaks().await,
        (2, 1),
        "two leaks written on legacy, one on the new store"
    );
    let mut recorded: Vec<(String, bool, bool)> = n
        .query(
            "SELECT incoming_from, local_row IS NOT NULL, incoming_row IS NOT NULL
             FROM cutover.conflicts WHERE kind = 'leak' AND target_table = $1 ORDER BY id",
            &[&format!("{ns}.accounts")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    recorded.sort(); // a and c travel on different partitions
    assert_eq!(
        recorded,
        vec![
            ("legacy".into(), false, true),
            ("legacy".into(), true, true)
        ],
        "both versions where both exist (a), the incoming one where the owner has none (c)"
    );
    let page = metrics.render();
    for series in [
        format!("cutover_phase_leaks_total{{table=\"{s}.accounts\",side=\"legacy\"}} 2"),
        format!("cutover_phase_leaks_total{{table=\"{ns}.accounts\",side=\"new\"}} 1"),
    ] {
        assert!(page.contains(&series), "{series} not in\n{page}");
    }
    #[cfg(feature = "failpoints")]
    assert!(
        page.lines()
            .any(|l| l.starts_with("cutover_sink_retries_total{")
                && l.contains("kind=\"connection\"")
                && !l.ends_with(" 0")),
        "the batch was not retried:\n{page}"
    );
    let shown = m.phase_json(&["show"]);
    assert_eq!(
        shown[0]["leaks"],
        serde_json::json!({"legacy": 2, "new": 1}),
        "{shown}"
    );
    let text = m.status();
    assert!(
        text.contains("new  50.00 %") && text.contains("leaks 2/1"),
        "{text}"
    );
    m.cleanup(parts).await;
}
