//! Proof with a stock client: Python confluent-kafka's SchemaRegistryClient registers, fetches,
//! lists and checks compatibility against the embedded registry (the `make up` process).

use std::process::Command;

use serde_json::{json, Value};

use super::support::{local_config, python, root, unique};

#[test]
fn confluent_python_client_registers_and_fetches() {
    let url = local_config().registry.url;
    let prefix = unique("py");
    let out = Command::new(python())
        .arg(root().join("tests/python/registry_client.py"))
        .arg(&url)
        .arg(&prefix)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_ne!(v["id1"], v["id2"]);
    assert_eq!(v["fetched_doc"], "Bestellung – 注文");
    assert_eq!(v["incompatible_http_status"], 409);
    assert_eq!(v["incompatible_error_code"], 409);
    assert_eq!(v["latest_version"], 2);
    assert_eq!(v["latest_id"], v["id2"]);
    assert_eq!(v["versions"], json!([1, 2]));
    assert_eq!(v["subjects"], json!([format!("{prefix}-value")]));
    assert_eq!(v["version1_id"], v["id1"]);
    assert_eq!(v["lookup_version"], 1);
    assert_eq!(v["subject_level"], "FULL");
    assert_eq!(v["unknown_id_error_code"], 40403);
}
