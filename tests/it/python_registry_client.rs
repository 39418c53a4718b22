//! Proof with a stock client: Python confluent-kafka's SchemaRegistryClient registers, fetches,
//! lists and checks compatibility against the embedded registry (the `make up` process).

use std::process::Command;

use serde_json::{json, Value};

use super::support::{cutover_bin, free_port, local_config, python, root, unique, KillOnDrop};

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

/// `cutover registry` with basic auth (the password from a file, as a mounted Secret): the
/// stock Python client is refused without credentials and served with them.
#[test]
fn the_stock_client_authenticates_to_a_registry_that_requires_it() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "hunter2\n").unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
    let _registry = KillOnDrop(
        Command::new(cutover_bin())
            .args([
                "registry",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .env("CUTOVER__REGISTRY_SERVER__USERNAME", "svc")
            .env("CUTOVER__REGISTRY_SERVER__PASSWORD_FILE", &pw)
            .env("CUTOVER__OBSERVE__LISTEN", "")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "registry did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let url = format!("http://127.0.0.1:{port}");
    let out = Command::new(python())
        .arg(root().join("tests/python/registry_client.py"))
        .args([&url, &unique("pyauth"), "svc:hunter2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["anonymous_http_status"], 401);
    assert_eq!(v["latest_version"], 2);
    // The password is in no line the registry logged.
    let logged = std::fs::read_to_string(dir.path().join("registry.log")).unwrap();
    assert!(!logged.contains("hunter2"), "{logged}");
}
