//! `cutover check-config` as a user runs it: the binary, real peers, exit codes, redaction.

use std::process::{Command, Output};

use super::support::{cutover_bin, root};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(cutover_bin());
    c.args(args).current_dir(root());
    // Isolate from the developer's environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("CUTOVER") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The local config with `from` replaced by `to`, written to a temporary file; the command
/// line `args` followed by `--config <that file>`, run.
fn run_edited(args: &[&str], from: &str, to: &str) -> Output {
    let text_cfg = std::fs::read_to_string(root().join("deploy/config/cutover.local.toml"))
        .unwrap()
        .replace(from, to);
    assert!(text_cfg.contains(to), "{from:?} is not in the local config");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("edited.toml");
    std::fs::write(&p, text_cfg).unwrap();
    let mut a = args.to_vec();
    a.extend(["--config", p.to_str().unwrap()]);
    run(&a, &[])
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn check_config_connect_reports_every_peer_ok() {
    let o = run(&["check-config", "--connect"], &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for line in [
        "source postgres://postgres@127.0.0.1:5433/app",
        "sink mirror postgres://postgres@127.0.0.1:5434/app",
        "sink newstore postgres://postgres@127.0.0.1:5434/newapp",
        "kafka 127.0.0.1:9092",
        "registry http://127.0.0.1:8081",
    ] {
        let l = t
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no line for {line}:\n{t}"));
        assert!(l.contains("  OK  "), "{l}");
    }
    assert!(t.contains("wal_level=logical"), "{t}");
    assert!(t.contains("all 5 checks passed"), "{t}");
}

#[test]
fn unreachable_peer_fails_with_exit_1_and_names_it() {
    let o = run(
        &["check-config", "--connect", "-q"],
        &[("CUTOVER__REGISTRY__URL", "http://127.0.0.1:1")],
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let l = t
        .lines()
        .find(|l| l.starts_with("registry http://127.0.0.1:1"))
        .unwrap();
    assert!(l.contains("FAIL"), "{l}");
}

/// A broker that refuses connections: the check fails with the reason librdkafka saw, not
/// only its bare "Broker transport failure".
#[test]
fn an_unreachable_broker_is_reported_with_the_reason() {
    let o = run_edited(
        &["check-config", "--connect"],
        r#"brokers = ["127.0.0.1:9092"]"#,
        "brokers = [\"127.0.0.1:1\"]\nrequest_timeout_ms = 2000",
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let l = t
        .lines()
        .find(|l| l.starts_with("kafka 127.0.0.1:1"))
        .unwrap_or_else(|| panic!("no kafka line:\n{t}"));
    assert!(l.contains("FAIL"), "{l}");
    assert!(
        l.contains("the broker connection failed with") && l.contains("Connection refused"),
        "{l}"
    );
}

/// A `-c` setting in the URL's `options` that the server refuses is the configuration's
/// fault: exit 2 naming the field, not a data or schema error.
#[test]
fn a_connection_option_the_server_refuses_is_a_config_error() {
    let o = run_edited(
        &["capture"],
        r#"url = "postgres://postgres@127.0.0.1:5433/app""#,
        r#"url = "postgres://postgres@127.0.0.1:5433/app?options=-c%20no_such_setting%3D1""#,
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("source.url") && t.contains("no_such_setting") && t.contains("kind=config"),
        "{t}"
    );
}

#[test]
fn bad_field_fails_with_exit_2_naming_the_field() {
    let o = run_edited(
        &["check-config"],
        "partitions = 3",
        "partitions = 3\nretention_hours = 5",
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("kafka.retention_hours: unknown field `retention_hours`"),
        "{t}"
    );

    let o = run(&["check-config"], &[("CUTOVER__KAFKA__BROKERS", "")]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("kafka.brokers: must not be empty"), "{t}");

    let o = run(&["check-config"], &[("CUTOVER__SINKS", "oops")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("sinks"), "{}", text(&o));
}

#[test]
fn secrets_never_printed() {
    let o = run(
        &["check-config", "--connect"],
        &[
            ("CUTOVER__SOURCE__PASSWORD", "hunter2-src"),
            ("CUTOVER__REGISTRY__USERNAME", "svc"),
            ("CUTOVER__REGISTRY__PASSWORD", "hunter2-reg"),
            (
                "CUTOVER__SOURCE__URL",
                "postgres://postgres:hunter2-url@127.0.0.1:5433/app",
            ),
        ],
    );
    let t = text(&o);
    assert!(!t.contains("hunter2"), "secret leaked:\n{t}");
    assert!(t.contains("<redacted>"), "{t}");
    // The source still connects (trust auth ignores the password): redaction is print-only.
    // The connection report's line (the printed config has `source = ...` lines too).
    let l = t
        .lines()
        .rev()
        .find(|l| l.starts_with("source ") && !l.starts_with("source ="))
        .unwrap();
    assert!(l.contains("OK"), "{l}");
}

#[test]
fn version_names_the_revision() {
    let o = run(&["--version"], &[]);
    assert!(o.status.success());
    assert!(text(&o).starts_with("cutover 0.1.0 ("), "{}", text(&o));
}
