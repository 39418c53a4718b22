//! Logs as operators get them from a running `cutover run` whose every peer is unreachable (so
//! every error path that names a connection runs): JSON lines that parse with the fields a log
//! pipeline indexes, text lines otherwise, and no password ever printed — from URLs, password
//! fields or the registry credentials.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::support::{cutover_bin, free_port, root, KillOnDrop};

const SECRETS: [&str; 4] = ["hunter2-url", "hunter2-src", "hunter2-sink", "hunter2-reg"];

fn run_for(format: &str, secs: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = std::fs::read_to_string(root().join("deploy/config/cutover.local.toml"))
        .unwrap()
        .replace(
            "postgres://postgres@127.0.0.1:5433/app",
            "postgres://postgres:hunter2-url@127.0.0.1:1/app",
        )
        .replace(
            "postgres://postgres@127.0.0.1:5434/",
            "postgres://cutover:hunter2-sink@127.0.0.1:1/",
        )
        .replace("127.0.0.1:9092", "127.0.0.1:1")
        .replace("http://127.0.0.1:8081", "http://127.0.0.1:1");
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, cfg).unwrap();
    let err = dir.path().join("stderr.log");
    let mut c = Command::new(cutover_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("CUTOVER") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    let mut child = KillOnDrop(
        c.args(["run", "--log-format", format, "--config"])
            .arg(&path)
            .env("CUTOVER__SOURCE__PASSWORD", "hunter2-src")
            .env("CUTOVER__REGISTRY__USERNAME", "svc")
            .env("CUTOVER__REGISTRY__PASSWORD", "hunter2-reg")
            .env(
                "CUTOVER__OBSERVE__LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("CUTOVER__MONITOR__INTERVAL_MS", "500")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(secs));
    child.kill();
    std::fs::read_to_string(&err).unwrap()
}

fn assert_no_secrets(log: &str) {
    for s in SECRETS {
        assert!(!log.contains(s), "{s} printed:\n{log}");
    }
}

#[test]
fn json_logs_are_one_object_per_line_and_print_no_secret() {
    let log = run_for("json", 5);
    assert_no_secrets(&log);
    let mut levels = std::collections::BTreeSet::new();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(v.get(key).is_some(), "no {key} in {line}");
        }
        levels.insert(v["level"].as_str().unwrap().to_string());
        lines += 1;
    }
    assert!(lines >= 3, "{log}");
    assert!(levels.contains("WARN"), "retries are warnings: {log}");
    // The failing connections are named, with the password redacted.
    assert!(log.contains("source.url"), "{log}");
    assert!(log.contains("<redacted>"), "{log}");
}

#[test]
fn text_logs_print_no_secret() {
    let log = run_for("text", 4);
    assert_no_secrets(&log);
    assert!(log.contains("source.url"), "{log}");
    assert!(log.contains("<redacted>"), "{log}");
    assert!(log.lines().any(|l| l.contains(" WARN ")), "{log}");
}
