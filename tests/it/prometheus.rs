//! Observability end to end, with a real Prometheus (Debian's package) scraping real cutover
//! processes on loopback: registry, capture, monitor and one sink, each its own process.
//!
//! One scenario, because each step needs the previous one's state:
//! 1. the pipeline runs and catches up; every family `/metrics` exports is in docs/METRICS.md
//!    with its type and labels, and every documented family is exported;
//! 2. every panel of deploy/grafana/cutover.json is a valid query for this Prometheus and only
//!    names documented metrics;
//! 3. the sink is stopped and legacy keeps being written: Prometheus fires the shipped
//!    consumer-lag alerts (timing scaled down: `for:` and the thresholds are shortened, the
//!    expressions are the shipped ones);
//! 4. `cutover status` shows the stopped sink as stalled, with the lag in messages equal to
//!    legacy rows minus target rows and the lag in seconds equal to the age of the first
//!    unapplied write;
//! 5. the sink restarts, catches up, the alerts resolve and status says healthy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

use super::apply::{converge, Env};
use super::support::{cutover_bin, free_port, root, scrape, KillOnDrop};

/// Test-scale thresholds for the alerts the scenario drives (the shipped ones are minutes and
/// 100k events; promtool tests cover those values).
const LAG_MESSAGES_THRESHOLD: i64 = 20;
const LAG_SECONDS_THRESHOLD: i64 = 3;

pub(super) struct Prometheus {
    port: u16,
    _child: KillOnDrop,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

/// The shipped rules with `for:` shortened to 2s and the thresholds of the given alerts
/// replaced (the threshold is the last `> N` of an expression: a convention of alerts.yml).
pub(super) fn scaled_rules(overrides: &BTreeMap<&str, i64>) -> String {
    let text = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let mut rules: Yaml = serde_yaml_ng::from_str(&text).unwrap();
    let mut replaced = 0;
    for group in rules["groups"].as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            let name = rule["alert"].as_str().unwrap_or_default().to_string();
            if rule.get("for").is_some() {
                rule["for"] = Yaml::String("2s".into());
            }
            if let Some(n) = overrides.get(name.as_str()) {
                let expr = rule["expr"].as_str().unwrap().trim().to_string();
                let (head, tail) = expr.rsplit_once('>').expect("threshold");
                assert!(
                    tail.trim().parse::<f64>().is_ok(),
                    "{name}: expression does not end in a `> N` threshold: {expr}"
                );
                rule["expr"] = Yaml::String(format!("{head}> {n}"));
                replaced += 1;
            }
        }
    }
    assert_eq!(replaced, overrides.len(), "every overridden alert exists");
    serde_yaml_ng::to_string(&rules).unwrap()
}

impl Prometheus {
    /// Prometheus with the shipped config (deploy/prometheus/prometheus.yml: file_sd targets,
    /// rule file) at test speed: scrape and evaluate every second.
    pub(super) async fn start(targets: &[(String, &str)], rules: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let shipped =
            std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml")).unwrap();
        let mut cfg: Yaml = serde_yaml_ng::from_str(&shipped).unwrap();
        assert_eq!(
            cfg["scrape_configs"][0]["job_name"].as_str(),
            Some("cutover")
        );
        assert_eq!(
            cfg["scrape_configs"][0]["file_sd_configs"][0]["files"][0].as_str(),
            Some("targets/*.json")
        );
        assert_eq!(cfg["rule_files"][0].as_str(), Some("alerts.yml"));
        cfg["global"]["scrape_interval"] = Yaml::String("1s".into());
        cfg["global"]["evaluation_interval"] = Yaml::String("1s".into());
        cfg["scrape_configs"][0]["file_sd_configs"][0]["refresh_interval"] =
            Yaml::String("1s".into());
        std::fs::write(
            dir.path().join("prometheus.yml"),
            serde_yaml_ng::to_string(&cfg).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
        std::fs::create_dir_all(dir.path().join("targets")).unwrap();
        let sd: Vec<Json> = targets
            .iter()
            .map(|(addr, component)| {
                serde_json::json!({"targets": [addr], "labels": {"component": component}})
            })
            .collect();
        std::fs::write(
            dir.path().join("targets/test.json"),
            serde_json::to_string(&sd).unwrap(),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .current_dir(dir.path())
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus (Debian package `prometheus`, installed by bootstrap.sh)");
        let p = Prometheus {
            port,
            _child: KillOnDrop(child),
            _dir: dir,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = p
                .http
                .get(p.url("/-/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Json {
        self.http
            .get(self.url(path))
            .query(query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// An instant query: `Ok(result vector)` or `Err(error message)`.
    async fn query(&self, q: &str) -> Result<Vec<Json>, String> {
        let r = self.get("/api/v1/query", &[("query", q)]).await;
        if r["status"] == "success" {
            Ok(r["data"]["result"].as_array().cloned().unwrap_or_default())
        } else {
            Err(format!("{}: {}", r["errorType"], r["error"]))
        }
    }

    /// The single value of a query returning one series, if any.
    async fn value(&self, q: &str) -> Option<f64> {
        let v = self.query(q).await.unwrap();
        v.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|s| s.parse().ok())
    }

    /// (alertname, state) of every pending or firing alert for `sink`.
    pub(super) async fn alerts(&self, sink: &str) -> BTreeSet<(String, String)> {
        self.get("/api/v1/alerts", &[]).await["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["sink"] == sink)
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap().to_string(),
                    a["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    pub(super) async fn wait_for(
        &self,
        what: &str,
        secs: u64,
        mut ok: impl AsyncFnMut(&Prometheus) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !ok(self).await {
            assert!(
                Instant::now() < deadline,
                "timed out after {secs}s waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Documented metrics: name → (type, label keys, the "Exported by" cell), from the tables of
/// docs/METRICS.md.
pub(super) fn documented() -> BTreeMap<String, (String, BTreeSet<String>, String)> {
    let text = std::fs::read_to_string(root().join("docs/METRICS.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `cutover_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let kind = cells[2].to_string();
        let labels: BTreeSet<String> = cells[4]
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "–")
            .map(String::from)
            .collect();
        let exported_by = cells[5].to_string();
        assert!(
            ["counter", "gauge", "histogram"].contains(&kind.as_str()),
            "{name}: type {kind:?}"
        );
        assert!(
            out.insert(name.clone(), (kind, labels, exported_by))
                .is_none(),
            "{name} documented twice"
        );
    }
    assert!(
        out.len() > 25,
        "docs/METRICS.md lists {} metrics",
        out.len()
    );
    out
}

/// Documented metrics: name → (type, label keys).
pub(super) fn documented_metrics() -> BTreeMap<String, (String, BTreeSet<String>)> {
    documented()
        .into_iter()
        .map(|(n, (k, l, _))| (n, (k, l)))
        .collect()
}

/// Families a /metrics page exports: name → (type, label keys seen).
pub(super) fn exported(page: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            out.entry(name.to_string()).or_default().0 = kind.to_string();
        }
    }
    for line in page.lines().filter(|l| l.starts_with("cutover_")) {
        let (series, _) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| out.contains_key(*f)))
            .unwrap_or(name);
        let keys = labels
            .split("\",")
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_string()))
            .filter(|k| k != "le" && k != "quantile");
        out.entry(family.to_string()).or_default().1.extend(keys);
    }
    out
}

/// Metric names an expression uses (histogram suffixes stripped).
pub(super) fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("cutover_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(base.to_string());
        rest = &tail[end..];
    }
    out
}

fn spawn(config: &Path, args: &[&str], observe: &str, log: &Path) -> KillOnDrop {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut c = Command::new(cutover_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("CUTOVER") {
            c.env_remove(k);
        }
    }
    KillOnDrop(
        c.args(args)
            .arg("--config")
            .arg(config)
            .env("CUTOVER__OBSERVE__LISTEN", observe)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    )
}

fn status(config: &Path) -> (i32, Json, String) {
    let run = |json: bool| {
        let mut c = Command::new(cutover_bin());
        c.args(["status", "--config"]).arg(config);
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    };
    let o = run(true);
    let doc: Json = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let human = run(false);
    (
        o.status.code().unwrap_or(-1),
        doc,
        String::from_utf8_lossy(&human.stdout).into_owned(),
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn count(c: &tokio_postgres::Client, schema: &str) -> i64 {
    c.query_one(&format!(r#"SELECT count(*) FROM "{schema}".events"#), &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

fn check_dashboard(docs: &BTreeMap<String, (String, BTreeSet<String>)>) -> Vec<(String, String)> {
    let d: Json = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/cutover.json")).unwrap(),
    )
    .expect("dashboard is JSON");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["schemaVersion"].as_i64().unwrap() >= 30);
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"sink"),
        "{vars:?}"
    );
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells: BTreeSet<(i64, i64)> = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap().to_string();
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "{title}: duplicate id"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_i64().unwrap(),
            g["y"].as_i64().unwrap(),
            g["w"].as_i64().unwrap(),
            g["h"].as_i64().unwrap(),
        );
        assert!(
            x >= 0 && w > 0 && x + w <= 24 && h > 0,
            "{title}: gridPos {g}"
        );
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            let expr = t["expr"].as_str().unwrap().to_string();
            for n in names_in(&expr) {
                assert!(
                    docs.contains_key(&n),
                    "{title}: {n} is not a documented metric"
                );
            }
            exprs.push((title.clone(), expr));
        }
    }
    exprs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_alerts_on_a_stopped_sink_and_status_reports_it() {
    let mut env = Env::new("prom");
    env.cfg.sinks.truncate(1); // mirror
    let s = env.schema.clone();
    env.create_source_table("events (id bigint PRIMARY KEY, payload text)")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let logs = |n: &str| -> PathBuf { dir.path().join(format!("{n}.log")) };
    // A registry of the test's own, so its metrics are scraped too.
    let (reg_port, reg_obs) = (free_port(), free_port());
    env.cfg.registry.url = format!("http://127.0.0.1:{reg_port}");
    env.cfg.monitor.embedded = false;
    env.cfg.monitor.interval_ms = 500;
    env.cfg.monitor.lag_degraded_secs = LAG_SECONDS_THRESHOLD as u64;
    env.cfg.monitor.stalled_after_secs = 4;
    let config = dir.path().join("cutover.toml");
    std::fs::write(&config, env.cfg.to_redacted_toml()).unwrap();

    let obs = |p: u16| format!("127.0.0.1:{p}");
    let (cap_obs, mon_obs, sink_obs) = (free_port(), free_port(), free_port());
    let _registry = spawn(
        &config,
        &[
            "registry",
            "--listen",
            &obs(reg_port),
            "--data-dir",
            dir.path().join("registry").to_str().unwrap(),
            "--observe-listen",
            &obs(reg_obs),
        ],
        "",
        &logs("registry"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{}/subjects", env.cfg.registry.url))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "registry did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut capture = spawn(&config, &["capture"], &obs(cap_obs), &logs("capture"));
    let mut monitor = spawn(&config, &["monitor"], &obs(mon_obs), &logs("monitor"));
    let sink_args = ["apply", "--sink", "mirror", "--instance-id", "mirror-0"];
    let mut sink = spawn(&config, &sink_args, &obs(sink_obs), &logs("sink"));

    let overrides: BTreeMap<&str, i64> = [
        ("CutoverConsumerLagHigh", LAG_MESSAGES_THRESHOLD),
        ("CutoverConsumerLagSecondsHigh", LAG_SECONDS_THRESHOLD),
    ]
    .into();
    let prom = Prometheus::start(
        &[
            (obs(reg_obs), "registry"),
            (obs(cap_obs), "capture"),
            (obs(mon_obs), "monitor"),
            (obs(sink_obs), "sink"),
        ],
        &scaled_rules(&overrides),
    )
    .await;

    // 1. Running and caught up.
    let legacy = env.legacy().await;
    let target = env.target(0).await;
    legacy
        .batch_execute(&format!(
            r#"INSERT INTO "{s}".events SELECT g, 'first' FROM generate_series(1, 50) g"#
        ))
        .await
        .unwrap();
    let q = format!(r#"SELECT * FROM "{s}".events"#);
    converge(&legacy, &q, &target, &q, 120).await;
    prom.wait_for("all four targets up", 60, async |p| {
        p.value(r#"sum(up{job="cutover"})"#).await == Some(4.0)
    })
    .await;
    prom.wait_for("mirror lag 0 in Prometheus", 60, async |p| {
        p.value(r#"sum(cutover_sink_lag_messages{sink="mirror"})"#)
            .await
            == Some(0.0)
    })
    .await;
    // Rules evaluate a moment after the scrape: pending alerts from the catch-up clear.
    prom.wait_for("no alerts while caught up", 30, async |p| {
        p.alerts("mirror").await.is_empty()
    })
    .await;

    // The catalogue matches what the processes export.
    let docs = documented_metrics();
    let mut seen: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for addr in [obs(reg_obs), obs(cap_obs), obs(mon_obs), obs(sink_obs)] {
        for (name, (kind, labels)) in exported(&scrape(&addr).await) {
            let e = seen.entry(name).or_default();
            e.0 = kind;
            e.1.extend(labels);
        }
    }
    for (name, (kind, labels)) in &seen {
        let (dkind, dlabels) = docs
            .get(name)
            .unwrap_or_else(|| panic!("{name} is exported but not in docs/METRICS.md"));
        assert_eq!(
            kind, dkind,
            "{name}: exported as {kind}, documented as {dkind}"
        );
        assert!(
            labels.is_subset(dlabels),
            "{name}: exported labels {labels:?}, documented {dlabels:?}"
        );
    }
    for (name, (_, _, by)) in documented() {
        // "process" or "process, only <condition>" (docs/METRICS.md): conditional families
        // and those of verify and reconcile (not scraped here) are checked by their own tests.
        let (process, condition) = match by.split_once(", only ") {
            Some((p, c)) => (p, Some(c)),
            None => (by.as_str(), None),
        };
        assert!(
            [
                "all",
                "registry",
                "capture",
                "monitor",
                "sink",
                "verify",
                "reconcile"
            ]
            .contains(&process),
            "{name}: exported by {by:?}: not a process"
        );
        let scraped = ["all", "registry", "capture", "monitor", "sink"].contains(&process);
        if scraped && condition.is_none() {
            assert!(
                seen.contains_key(&name),
                "{name} is documented but not exported"
            );
        }
    }

    // 2. Every dashboard query is accepted by this Prometheus.
    for (title, expr) in check_dashboard(&docs) {
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$sink", ".*");
        prom.query(&q)
            .await
            .unwrap_or_else(|e| panic!("panel {title}: {q}: {e}"));
    }

    // Readiness as a health check sees it: each process names its checks, all passing.
    let healthcheck = |addr: &str, live: bool| {
        let mut c = Command::new(cutover_bin());
        c.args(["healthcheck", "--config"])
            .arg(&config)
            .args(["--addr", addr]);
        if live {
            c.arg("--live");
        }
        let o = c.output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    for (addr, checks) in [
        (
            obs(sink_obs),
            &[
                "sink.mirror.target",
                "sink.mirror.kafka",
                "sink.mirror.assigned",
            ][..],
        ),
        (obs(cap_obs), &["source"][..]),
        (obs(mon_obs), &["monitor.source", "monitor.broker"][..]),
    ] {
        let (code, out) = healthcheck(&addr, false);
        assert_eq!(code, Some(0), "{addr}: {out}");
        for c in checks {
            assert!(
                out.contains(&format!("\"{c}\":true")),
                "{addr}: {c} in {out}"
            );
        }
        assert_eq!(healthcheck(&addr, true).0, Some(0));
    }

    // 3. Stop the sink and keep writing until both lag alerts fire.
    sink.terminate();
    assert_eq!(
        healthcheck(&obs(sink_obs), true).0,
        Some(1),
        "a stopped sink is not alive"
    );
    let before_first_unapplied = now_ms();
    let mut next_id = 1000;
    let mut writes = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let last_alerts = loop {
        legacy
            .batch_execute(&format!(
                r#"INSERT INTO "{s}".events SELECT g, 'while stopped' FROM generate_series({next_id}, {}) g"#,
                next_id + 4
            ))
            .await
            .unwrap();
        next_id += 5;
        writes += 5;
        let alerts = prom.alerts("mirror").await;
        let firing = |a: &str| alerts.contains(&(a.to_string(), "firing".to_string()));
        if firing("CutoverConsumerLagHigh") && firing("CutoverConsumerLagSecondsHigh") {
            break alerts;
        }
        assert!(
            Instant::now() < deadline,
            "lag alerts did not fire after {writes} writes: {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(writes > LAG_MESSAGES_THRESHOLD, "{last_alerts:?}");

    // 4. status: a stalled sink, with the right numbers. Wait until the monitor has seen
    // every write (capture published it) before comparing.
    let expected = count(&legacy, &s).await - count(&target, &s).await;
    assert_eq!(
        expected, writes,
        "the target did not change while the sink was stopped"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (code, doc, human) = loop {
        let (code, doc, human) = status(&config);
        if doc["sinks"][0]["lag_messages"] == expected || Instant::now() > deadline {
            break (code, doc, human);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let sink_doc = &doc["sinks"][0];
    assert_eq!(sink_doc["name"], "mirror", "{doc:#}");
    assert_eq!(sink_doc["lag_messages"], expected, "{doc:#}");
    assert_eq!(sink_doc["state"], "stalled", "{doc:#}");
    assert_eq!(doc["health"], "stalled", "{doc:#}");
    assert_eq!(code, 4, "exit code of a stalled pipeline");
    let taken = doc["taken_at_ms"].as_i64().unwrap();
    let lag_secs = sink_doc["lag_seconds"].as_f64().unwrap();
    let upper = (taken - before_first_unapplied) as f64 / 1000.0;
    assert!(
        lag_secs <= upper + 1.0 && lag_secs >= upper - 3.0,
        "lag_seconds {lag_secs} should be the age of the first unapplied write (~{upper:.1}s)"
    );
    let last_applied = sink_doc["last_applied_commit_ms"].as_i64().unwrap();
    assert!(last_applied < before_first_unapplied, "{doc:#}");
    assert_eq!(doc["capture"]["slot_state"]["active"], true, "{doc:#}");
    assert!(
        doc["reasons"][0]
            .as_str()
            .unwrap()
            .contains(&format!("sink mirror: {expected} event(s) unapplied")),
        "{doc:#}"
    );
    let line = human
        .lines()
        .find(|l| l.trim_start().starts_with("mirror"))
        .unwrap_or_else(|| panic!("no mirror line in:\n{human}"));
    assert!(
        line.contains("stalled") && line.contains(&expected.to_string()),
        "{human}"
    );
    assert!(human.contains("STALLED"), "{human}");

    // 5. Restart the sink: it catches up, the alerts resolve, status is healthy.
    let mut sink = spawn(&config, &sink_args, &obs(sink_obs), &logs("sink"));
    converge(&legacy, &q, &target, &q, 120).await;
    prom.wait_for("lag alerts to resolve", 90, async |p| {
        p.alerts("mirror").await.is_empty()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, doc, _) = status(&config);
        if code == 0 {
            assert_eq!(doc["health"], "healthy");
            assert_eq!(doc["sinks"][0]["lag_messages"], 0);
            assert_eq!(doc["sinks"][0]["state"], "ok");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never healthy again: {doc:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Stop every process first: an active slot cannot be dropped.
    for p in [&mut sink, &mut monitor, &mut capture] {
        p.kill();
    }
    env.cleanup().await;
}
