use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn builtin_default_loads_and_validates() {
    let cfg = Config::load_with_env(None, env(&[])).unwrap();
    assert_eq!(cfg.kafka.brokers, vec!["127.0.0.1:9092".to_string()]);
    assert!(cfg.source.url.expose().contains("5433"));
    assert_eq!(cfg.source.schemas, vec!["public".to_string()]);
    assert_eq!(cfg.registry.url, "http://127.0.0.1:8081");
    let names: Vec<_> = cfg.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["mirror", "newstore"]);
}

#[test]
fn shipped_example_loads_and_validates() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config/cutover.example.toml");
    let cfg = Config::load_with_env(Some(&p), env(&[])).unwrap();
    assert!(!cfg.sinks.is_empty());
}

#[test]
fn env_overrides_win_and_parse_lists_and_numbers() {
    let cfg = Config::load_with_env(
        None,
        env(&[
            ("CUTOVER__KAFKA__BROKERS", "k1:9092,k2:9092"),
            ("CUTOVER__KAFKA__PARTITIONS", "12"),
            ("CUTOVER__SOURCE__PASSWORD", "12345"),
            ("OTHER__KAFKA__BROKERS", "ignored:1"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.kafka.brokers, vec!["k1:9092", "k2:9092"]);
    assert_eq!(cfg.kafka.partitions, 12);
    assert_eq!(cfg.source.password.as_ref().unwrap().expose(), "12345");
}

#[test]
fn empty_brokers_names_the_field_and_rule() {
    let err = Config::load_with_env(None, env(&[("CUTOVER__KAFKA__BROKERS", "")])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains("kafka.brokers: must not be empty"),
        "{err}"
    );
}

#[test]
fn unknown_field_is_rejected_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    let text = LOCAL_DEFAULT_TOML.replace("[kafka]", "[kafka]\nbrokerz = \"x\"");
    std::fs::write(&p, text).unwrap();
    let err = Config::load_with_env(Some(&p), env(&[])).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("kafka"), "{msg}");
    assert!(msg.contains("unknown field `brokerz`"), "{msg}");
}

#[test]
fn a_section_may_leave_out_every_key_with_a_default() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    // The shipped local config with [registry_server] and [observe] cut down to one key.
    let (head, rest) = LOCAL_DEFAULT_TOML.split_once("[registry_server]").unwrap();
    let (_, sinks) = rest.split_once("[[sinks]]").unwrap();
    let text = format!(
        "{head}[registry_server]\ndata_dir = \"/tmp/r\"\n\n[observe]\nlisten = \"127.0.0.1:9999\"\n\n[monitor]\nembedded = false\n\n[[sinks]]{sinks}"
    );
    std::fs::write(&p, text).unwrap();
    let cfg = Config::load_with_env(Some(&p), env(&[])).unwrap();
    assert_eq!(cfg.observe.listen, "127.0.0.1:9999");
    assert_eq!(cfg.observe.log_format, "text");
    assert_eq!(cfg.observe.log_level, "info");
    assert_eq!(cfg.registry_server.listen, "127.0.0.1:8081");
    assert_eq!(
        cfg.registry_server.default_compatibility,
        Compatibility::Backward
    );
    assert!(!cfg.monitor.embedded);
    assert_eq!(cfg.monitor.interval_ms, 10_000);
}

#[test]
fn unknown_compatibility_level_names_the_field_and_the_levels() {
    let err = Config::load_with_env(
        None,
        env(&[(
            "CUTOVER__REGISTRY_SERVER__DEFAULT_COMPATIBILITY",
            "sideways",
        )]),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("registry_server.default_compatibility"),
        "{msg}"
    );
    assert!(msg.contains("FULL_TRANSITIVE"), "{msg}");
    let cfg = Config::load_with_env(
        None,
        env(&[("CUTOVER__REGISTRY_SERVER__DEFAULT_COMPATIBILITY", "full")]),
    )
    .unwrap();
    assert_eq!(
        cfg.registry_server.default_compatibility,
        Compatibility::Full
    );
}

#[test]
fn wrong_type_names_the_field() {
    let err =
        Config::load_with_env(None, env(&[("CUTOVER__KAFKA__PARTITIONS", "many")])).unwrap_err();
    assert!(err.to_string().contains("kafka.partitions"), "{err}");
}

#[test]
fn redacted_toml_hides_every_secret() {
    let mut cfg = Config::load_with_env(None, env(&[])).unwrap();
    cfg.source.url = DbUrl::new("postgres://u:hunter2@h:5433/app");
    cfg.source.password = Some(Secret::new("hunter3"));
    cfg.registry.password = Some(Secret::new("hunter4"));
    cfg.kafka
        .properties
        .insert("sasl.password".into(), "hunter5".into());
    cfg.kafka
        .properties
        .insert("security.protocol".into(), "SASL_SSL".into());
    let text = cfg.to_redacted_toml();
    for s in ["hunter2", "hunter3", "hunter4", "hunter5"] {
        assert!(!text.contains(s), "{s} leaked:\n{text}");
    }
    assert!(text.contains("SASL_SSL"));
    assert!(!format!("{cfg:?}").contains("hunter"));
}

#[test]
fn batch_linger_longer_than_batch_max_names_the_sink_field() {
    let mut cfg = Config::load_with_env(None, env(&[])).unwrap();
    assert_eq!(
        cfg.sinks[0].batch_linger_ms, 0,
        "default: close when drained"
    );
    cfg.sinks[1].batch_linger_ms = cfg.sinks[1].batch_max_ms + 1;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(
        err.contains("sinks[1].batch_linger_ms: must not exceed batch_max_ms"),
        "{err}"
    );
    cfg.sinks[1].batch_linger_ms = cfg.sinks[1].batch_max_ms;
    cfg.validate().unwrap();
}

#[test]
fn apply_connections_out_of_range_names_the_sink_field() {
    let mut cfg = Config::load_with_env(None, env(&[])).unwrap();
    assert_eq!(cfg.sinks[0].apply_connections, 1, "default: one connection");
    for bad in [0, 17] {
        cfg.sinks[1].apply_connections = bad;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("sinks[1].apply_connections: must be between 1 and 16"),
            "{bad}: {err}"
        );
    }
    cfg.sinks[1].apply_connections = 16;
    cfg.validate().unwrap();
}

#[test]
fn every_password_can_come_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let (src, sink, reg, sasl) = (
        file("src", "s3cr3t\n"),
        file("sink", "sink pw\r\n"),
        file("reg", "reg-pw"),
        file("sasl", "kafka-pw\n"),
    );
    let p = dir.path().join("c.toml");
    let text = LOCAL_DEFAULT_TOML
        .replace("[source]", &format!("[source]\npassword_file = {src:?}"))
        .replace(
            "[registry]",
            &format!("[registry]\nusername = \"u\"\npassword_file = {reg:?}"),
        )
        .replace(
            "[kafka]",
            &format!("[kafka]\nsecret_files = {{ \"sasl.password\" = {sasl:?} }}"),
        );
    // The first sink by file, the second by its environment variable.
    let text = text.replacen(
        "name = \"mirror\"",
        &format!("name = \"mirror\"\npassword_file = {sink:?}"),
        1,
    );
    std::fs::write(&p, &text).unwrap();
    assert_eq!(
        sink_password_var("new-store.2"),
        "CUTOVER_SINK_NEW_STORE_2_PASSWORD"
    );
    let cfg = Config::load_with_env(
        Some(&p),
        env(&[("CUTOVER_SINK_NEWSTORE_PASSWORD", "from env")]),
    )
    .unwrap();
    assert_eq!(cfg.source.password.as_ref().unwrap().expose(), "s3cr3t");
    assert_eq!(cfg.registry.password.as_ref().unwrap().expose(), "reg-pw");
    assert_eq!(cfg.kafka.properties["sasl.password"], "kafka-pw");
    assert_eq!(cfg.sinks[0].password.as_ref().unwrap().expose(), "sink pw");
    assert_eq!(cfg.sinks[1].password.as_ref().unwrap().expose(), "from env");
    // None of them is printed.
    let shown = cfg.to_redacted_toml();
    for secret in ["s3cr3t", "reg-pw", "kafka-pw", "sink pw", "from env"] {
        assert!(!shown.contains(secret), "{secret} printed:\n{shown}");
        assert!(!format!("{cfg:?}").contains(secret), "{secret} in Debug");
    }

    // Both a password and its file, or an unreadable file: the field is named, the
    // content never.
    let both = text.replace("[source]", "[source]\npassword = \"x\"");
    std::fs::write(&p, both).unwrap();
    let e = Config::load_with_env(Some(&p), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("source.password_file: source.password is set too"),
        "{e}"
    );
    let missing = text.replace(&src, "/nonexistent/pw");
    std::fs::write(&p, missing).unwrap();
    let e = Config::load_with_env(Some(&p), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("source.password_file: cannot read /nonexistent/pw"),
        "{e}"
    );
}

#[test]
fn registry_credentials_never_sit_in_the_url() {
    let err = Config::load_with_env(
        None,
        env(&[(
            "CUTOVER__REGISTRY__URL",
            "https://svc:hunter2@registry.example:8081",
        )]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("registry.url: holds credentials"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let err = Config::load_with_env(
        None,
        env(&[
            ("CUTOVER__REGISTRY_SERVER__USERNAME", "svc"),
            ("CUTOVER__REGISTRY_SERVER__MAX_BODY_BYTES", "0"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("registry_server.username and registry_server.password go together"),
        "{err}"
    );
    assert!(
        err.contains("registry_server.max_body_bytes: must be at least 1"),
        "{err}"
    );
}
