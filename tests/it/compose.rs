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
        "backsync",
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

/// The Kafka version pinned for the local stack (deploy/local/kafka/pom.xml).
fn local_kafka_version() -> String {
    let pom = std::fs::read_to_string(root().join("deploy/local/kafka/pom.xml")).unwrap();
    let a = pom.find("<kafka.version>").unwrap() + "<kafka.version>".len();
    let b = pom[a..].find('<').unwrap();
    pom[a..a + b].to_string()
}

#[test]
fn compose_and_kubernetes_name_the_kafka_version_the_local_stack_runs() {
    let v = local_kafka_version();
    let major_minor: String = v.split('.').take(2).collect::<Vec<_>>().join(".");
    let image = compose()["services"]["kafka"]["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(image, format!("apache/kafka:{v}"), "docker-compose.yml");
    let k8s = std::fs::read_to_string(root().join("deploy/kubernetes/cutover.yaml")).unwrap();
    assert!(
        k8s.contains(&format!("Apache Kafka {major_minor}")),
        "deploy/kubernetes/cutover.yaml does not name Apache Kafka {major_minor}"
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
    // The back-sync service's reverse pipeline: identity, like the newstore sink.
    let rev = cfg.reverse().expect("the [backsync] section reverses");
    assert_eq!(
        rev.sinks[0].unmapped_tables,
        cutover::config::Unmapped::Identity
    );
    assert_eq!(rev.source.schemas, vec!["public"]);

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

/// Every long-running cutover service is health-checked through `/readyz` and the monitor runs
/// on its own (so it reports while capture is down); Grafana gets the dashboard.
#[test]
fn cutover_services_are_health_checked_and_monitored() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let mut checked = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if svc["image"].as_str() != Some("cutover:local") || name == "cutover-preflight" {
            continue;
        }
        let test: Vec<&str> = svc["healthcheck"]["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: no healthcheck"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(test, ["CMD", "cutover", "healthcheck"], "{name}");
        assert_eq!(
            svc["environment"]["CUTOVER__OBSERVE__LISTEN"].as_str(),
            Some("0.0.0.0:9464"),
            "{name}: the health check needs the observe port"
        );
        checked += 1;
    }
    assert!(checked >= 4, "capture, monitor and two sinks: {checked}");
    assert_eq!(
        c["services"]["monitor"]["command"][0].as_str(),
        Some("monitor")
    );
    assert_eq!(
        c["services"]["capture"]["environment"]["CUTOVER__MONITOR__EMBEDDED"].as_str(),
        Some("false")
    );
    let grafana: Vec<&str> = c["services"]["grafana"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        grafana
            .iter()
            .any(|v| v.starts_with("./deploy/grafana/cutover.json:")),
        "{grafana:?}"
    );
    // Prometheus scrapes every cutover service.
    let prom = std::fs::read_to_string(root().join("deploy/compose/prometheus.yml")).unwrap();
    for s in [
        "capture:9464",
        "monitor:9464",
        "sink-mirror:9464",
        "sink-newstore:9464",
    ] {
        assert!(prom.contains(s), "prometheus does not scrape {s}");
    }
}

/// The Kubernetes manifests probe liveness on /healthz and readiness on /readyz of the observe
/// port, and run subcommands that exist.
#[test]
fn kubernetes_workloads_probe_healthz_and_readyz() {
    use serde::Deserialize;
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/cutover.yaml")).unwrap();
    let mut kinds = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let d = Value::deserialize(doc).unwrap();
        kinds.push(d["kind"].as_str().unwrap().to_string());
        let containers = d["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap();
        for c in containers {
            let name = c["name"].as_str().unwrap();
            assert_eq!(
                c["livenessProbe"]["httpGet"]["path"].as_str(),
                Some("/healthz"),
                "{name}"
            );
            assert_eq!(
                c["readinessProbe"]["httpGet"]["path"].as_str(),
                Some("/readyz"),
                "{name}"
            );
            assert_eq!(
                c["ports"][0]["containerPort"].as_i64(),
                Some(9464),
                "{name}"
            );
            let sub = c["args"][0].as_str().unwrap();
            assert!(
                ["capture", "monitor", "apply"].contains(&sub),
                "{name}: {sub}"
            );
            // Every password from the Secret, none as a literal value: the source's and the
            // registry's everywhere, a sink's own under the variable cutover reads for it.
            let env = c["env"].as_sequence().unwrap();
            let from_secret = |var: &str| {
                env.iter().any(|e| {
                    e["name"].as_str() == Some(var)
                        && e["valueFrom"]["secretKeyRef"]["name"].as_str()
                            == Some("cutover-secrets")
                })
            };
            for var in ["CUTOVER__SOURCE__PASSWORD", "CUTOVER__REGISTRY__PASSWORD"] {
                assert!(from_secret(var), "{name}: {var} not from the Secret");
            }
            if sub == "apply" {
                let sink = c["args"][2].as_str().unwrap();
                let var = cutover::config::sink_password_var(sink);
                assert!(from_secret(&var), "{name}: {var} not from the Secret");
            }
            for e in env {
                let var = e["name"].as_str().unwrap();
                assert!(
                    !var.contains("PASSWORD") || e.get("value").is_none(),
                    "{name}: {var} has a literal value"
                );
            }
            let mounts = c["volumeMounts"].as_sequence().unwrap();
            assert!(
                mounts.iter().any(|m| m["name"].as_str() == Some("secrets")),
                "{name}: the secret files (kafka.secret_files) are not mounted"
            );
        }
    }
    assert_eq!(kinds, ["Deployment", "Deployment", "StatefulSet"]);
}
