//! docker-compose.yml (there is no Docker engine here): it parses, has the services users
//! need, every file it mounts exists, and the cutover config it mounts is valid.

use std::path::Path;

use serde_yaml_ng::Value;

use super::support::root;

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("docker-compose.yml parses")
}

#[test]
fn compose_file_parses_and_has_the_stack() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    for s in [
        "kafka",
        "schema-registry",
        "legacy-db",
        "new-db",
        "prometheus",
        "grafana",
        "cutover-preflight",
    ] {
        assert!(services.contains_key(s), "service {s} missing");
    }
    // Both databases run with logical decoding.
    let pgconf = std::fs::read_to_string(root().join("deploy/compose/postgresql.conf")).unwrap();
    assert!(pgconf.contains("wal_level = logical"));
    // Kafka never auto-creates topics: cutover creates them.
    assert_eq!(
        c["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"],
        Value::String("false".into())
    );
}

#[test]
fn every_mounted_file_exists_and_configs_are_valid() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let mut checked = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if let Some(vols) = svc["volumes"].as_sequence() {
            for v in vols {
                let spec = v.as_str().expect("short volume syntax");
                let host = spec.split(':').next().unwrap();
                if host.starts_with("./") || host.starts_with('/') {
                    let p = root().join(host.trim_start_matches("./"));
                    assert!(p.exists(), "{name}: mounted {host} does not exist");
                    checked += 1;
                }
            }
        }
        if let Some(build) = svc["build"].as_str() {
            assert!(
                root().join(build).join("Dockerfile").exists(),
                "{name}: no Dockerfile in build context {build}"
            );
        }
    }
    assert!(checked >= 6, "only {checked} mounts checked");

    // The cutover config mounted into the container is valid.
    let cfg_path = root().join("deploy/compose/cutover.toml");
    let cfg = cutover::config::Config::load_with_env(
        Some(Path::new(&cfg_path)),
        Vec::<(String, String)>::new(),
    )
    .expect("deploy/compose/cutover.toml is valid");
    assert_eq!(cfg.kafka.brokers, vec!["kafka:29092"]);

    // Prometheus loads the rules file that is mounted next to its config.
    let prom: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/compose/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let rule = prom["rule_files"][0].as_str().unwrap();
    let mounts: Vec<&str> = c["services"]["prometheus"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        mounts.iter().any(|m| m.ends_with(&format!(":{rule}:ro"))),
        "{rule} not mounted"
    );
}
