//! The embedded registry over real HTTP: the Confluent REST subset, error codes, durability.

use serde_json::{json, Value};

use super::support::TestRegistry;
use cutover::config::RegistryConfig;
use cutover::registry::RegistryClient;
use cutover::ErrorKind;

const V1: &str = r#"{"type":"record","name":"Customer","namespace":"app","fields":[{"name":"id","type":"long"},{"name":"name","type":"string"}]}"#;
const V2: &str = r#"{"type":"record","name":"Customer","namespace":"app","fields":[{"name":"id","type":"long"},{"name":"name","type":"string"},{"name":"email","type":["null","string"],"default":null}]}"#;
const INCOMPATIBLE: &str = r#"{"type":"record","name":"Customer","namespace":"app","fields":[{"name":"id","type":"long"},{"name":"name","type":"string"},{"name":"tier","type":"int"}]}"#;

fn client(url: &str) -> RegistryClient {
    client_with(url, |_| {})
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(method, url);
    if let Some(b) = body {
        r = r
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(b.to_string());
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert_eq!(ct, "application/vnd.schemaregistry.v1+json");
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn register_fetch_list_and_evolve() {
    let dir = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start(dir.path()).await;
    let c = client(&reg.url);

    let id1 = c.register("app.customers-value", V1).await.unwrap();
    assert_eq!(c.register("app.customers-value", V1).await.unwrap(), id1);
    let id2 = c.register("app.customers-value", V2).await.unwrap();
    assert_ne!(id1, id2);
    assert_eq!(c.versions("app.customers-value").await.unwrap(), vec![1, 2]);
    let latest = c.latest("app.customers-value").await.unwrap();
    assert_eq!((latest.version, latest.id), (2, id2));
    let fetched: Value = serde_json::from_str(&c.schema_by_id(id1).await.unwrap()).unwrap();
    assert_eq!(fetched, serde_json::from_str::<Value>(V1).unwrap());
    assert_eq!(c.subjects().await.unwrap(), vec!["app.customers-value"]);

    // BACKWARD by default: a new required field without default is refused with 409.
    assert!(!c
        .is_compatible("app.customers-value", INCOMPATIBLE)
        .await
        .unwrap());
    let err = c
        .register("app.customers-value", INCOMPATIBLE)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Schema);
    assert!(err.to_string().contains("error_code 409"), "{err}");

    let (st, body) = call(
        reqwest::Method::POST,
        format!("{}/subjects/app.customers-value/versions", reg.url),
        Some(json!({"schema": INCOMPATIBLE})),
    )
    .await;
    assert_eq!(st, 409);
    assert_eq!(body["error_code"], 409);

    // Lookup under subject.
    let (st, body) = call(
        reqwest::Method::POST,
        format!("{}/subjects/app.customers-value", reg.url),
        Some(json!({"schema": V1})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(body["version"], 1);
    assert_eq!(body["id"], id1);

    // Verbose compatibility answer names the problem.
    let (st, body) = call(
        reqwest::Method::POST,
        format!(
            "{}/compatibility/subjects/app.customers-value/versions/latest?verbose=true",
            reg.url
        ),
        Some(json!({"schema": INCOMPATIBLE})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(body["is_compatible"], false);
    assert!(
        body["messages"][0].as_str().unwrap().contains("tier"),
        "{body}"
    );

    // Per-subject config switches the rule.
    let (st, _) = call(
        reqwest::Method::PUT,
        format!("{}/config/app.customers-value", reg.url),
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!(st, 200);
    let (_, body) = call(
        reqwest::Method::GET,
        format!("{}/config/app.customers-value", reg.url),
        None,
    )
    .await;
    assert_eq!(body["compatibilityLevel"], "NONE");
    assert!(c
        .register("app.customers-value", INCOMPATIBLE)
        .await
        .is_ok());
    let (_, body) = call(reqwest::Method::GET, format!("{}/config", reg.url), None).await;
    assert_eq!(body["compatibilityLevel"], "BACKWARD");
    reg.stop().await;
}

#[tokio::test]
async fn errors_carry_confluent_codes() {
    let dir = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start(dir.path()).await;
    let cases = [
        (
            reqwest::Method::GET,
            "/subjects/nope/versions".to_string(),
            None,
            404,
            40401,
        ),
        (
            reqwest::Method::GET,
            "/schemas/ids/999".to_string(),
            None,
            404,
            40403,
        ),
        (
            reqwest::Method::POST,
            "/subjects/x/versions".to_string(),
            Some(json!({"schema": "{\"type\":\"nonsense\"}"})),
            422,
            42201,
        ),
        (
            reqwest::Method::POST,
            "/subjects/x/versions".to_string(),
            Some(json!({"schema": "{}", "schemaType": "PROTOBUF"})),
            422,
            42201,
        ),
        (
            reqwest::Method::PUT,
            "/config".to_string(),
            Some(json!({"compatibility": "SIDEWAYS"})),
            422,
            42203,
        ),
        (
            reqwest::Method::GET,
            "/config/nosuch".to_string(),
            None,
            404,
            40408,
        ),
    ];
    for (m, path, body, status, code) in cases {
        let (st, b) = call(m, format!("{}{path}", reg.url), body).await;
        assert_eq!(
            (st, b["error_code"].as_u64().unwrap()),
            (status, code),
            "{path}: {b}"
        );
    }
    // A version of an existing subject that does not exist, and a malformed version.
    let c = client(&reg.url);
    c.register("s-value", V1).await.unwrap();
    let (st, b) = call(
        reqwest::Method::GET,
        format!("{}/subjects/s-value/versions/7", reg.url),
        None,
    )
    .await;
    assert_eq!((st, b["error_code"].as_u64().unwrap()), (404, 40402));
    let (st, b) = call(
        reqwest::Method::GET,
        format!("{}/subjects/s-value/versions/abc", reg.url),
        None,
    )
    .await;
    assert_eq!((st, b["error_code"].as_u64().unwrap()), (422, 42202));
    reg.stop().await;
}

#[tokio::test]
async fn schemas_survive_a_restart_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start(dir.path()).await;
    let c = client(&reg.url);
    let id_a = c.register("a-value", V1).await.unwrap();
    let id_b = c.register("a-value", V2).await.unwrap();
    let id_k = c.register("a-key", r#""long""#).await.unwrap();
    reg.stop().await;

    let reg = TestRegistry::start(dir.path()).await;
    let c = client(&reg.url);
    assert_eq!(c.versions("a-value").await.unwrap(), vec![1, 2]);
    assert_eq!(c.latest("a-value").await.unwrap().id, id_b);
    assert_eq!(c.register("a-value", V1).await.unwrap(), id_a);
    assert_eq!(c.schema_by_id(id_k).await.unwrap(), r#""long""#);
    // A new schema gets a fresh id after the restart, never a reused one.
    let id_new = c
        .register("other-value", r#"{"type":"record","name":"O","fields":[]}"#)
        .await
        .unwrap();
    assert!(id_new > id_k.max(id_b), "{id_new}");
    // Deletes are durable too.
    let (st, _) = call(
        reqwest::Method::DELETE,
        format!("{}/subjects/other-value", reg.url),
        None,
    )
    .await;
    assert_eq!(st, 200);
    reg.stop().await;
    let reg = TestRegistry::start(dir.path()).await;
    let (_, subjects) = call(reqwest::Method::GET, format!("{}/subjects", reg.url), None).await;
    assert_eq!(subjects, json!(["a-key", "a-value"]));
    let (_, with_deleted) = call(
        reqwest::Method::GET,
        format!("{}/subjects?deleted=true", reg.url),
        None,
    )
    .await;
    assert_eq!(with_deleted, json!(["a-key", "a-value", "other-value"]));
    reg.stop().await;
}

#[tokio::test]
async fn the_stack_registry_answers() {
    // The registry started by `make up` (127.0.0.1:8081) is a real separate process.
    let cfg = super::support::local_config();
    let c = RegistryClient::new(&cfg.registry).unwrap();
    let subject = format!("{}-value", super::support::unique("stack"));
    let id = c.register(&subject, V1).await.unwrap();
    assert!(c.versions(&subject).await.unwrap() == vec![1]);
    assert_eq!(
        serde_json::from_str::<Value>(&c.schema_by_id(id).await.unwrap()).unwrap(),
        serde_json::from_str::<Value>(V1).unwrap()
    );
}

fn access(
    edit: impl FnOnce(&mut cutover::config::RegistryServerConfig),
) -> cutover::registry::access::Access {
    let mut cfg = cutover::config::RegistryServerConfig::default();
    edit(&mut cfg);
    cutover::registry::access::Access::new(&cfg)
}

fn client_with(url: &str, edit: impl FnOnce(&mut RegistryConfig)) -> RegistryClient {
    let mut cfg = RegistryConfig {
        url: url.to_string(),
        username: None,
        password: None,
        password_file: None,
        token: None,
        token_file: None,
        ca_file: None,
        timeout_ms: 5000,
    };
    edit(&mut cfg);
    RegistryClient::new(&cfg).unwrap()
}

#[tokio::test]
async fn with_credentials_configured_only_their_holders_are_served() {
    use cutover::config::Secret;
    let dir = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start_with(
        dir.path(),
        access(|c| {
            c.username = Some("svc".into());
            c.password = Some(Secret::new("s3cr3t"));
            c.token = Some(Secret::new("tok-123"));
        }),
    )
    .await;
    // No credentials, wrong ones: 401 in the registry's JSON shape, on every route.
    for path in ["/subjects", "/schemas/ids/1", "/config", "/nope"] {
        let (st, body) = call(reqwest::Method::GET, format!("{}{path}", reg.url), None).await;
        assert_eq!(
            (st, body["error_code"].as_i64()),
            (401, Some(40101)),
            "{path}"
        );
    }
    let wrong = client_with(&reg.url, |c| {
        c.username = Some("svc".into());
        c.password = Some(Secret::new("guess"));
    });
    let e = wrong.register("t-value", V1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(!e.to_string().contains("guess"), "{e}");
    let e = client_with(&reg.url, |c| c.token = Some(Secret::new("tok-12")))
        .subjects()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    // Basic auth and the bearer token both work, through cutover's client.
    let basic = client_with(&reg.url, |c| {
        c.username = Some("svc".into());
        c.password = Some(Secret::new("s3cr3t"));
    });
    let id = basic.register("t-value", V1).await.unwrap();
    let bearer = client_with(&reg.url, |c| c.token = Some(Secret::new("tok-123")));
    assert!(bearer.schema_by_id(id).await.unwrap().contains("Customer"));
    assert_eq!(bearer.subjects().await.unwrap(), vec!["t-value"]);
    reg.stop().await;
}

#[tokio::test]
async fn body_size_time_and_concurrency_are_limited() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start_with(
        dir.path(),
        access(|c| {
            c.max_body_bytes = 2000;
            c.request_timeout_ms = 2000;
            c.max_concurrent_requests = 1;
        }),
    )
    .await;
    let big =
        json!({"schema": format!("{{\"type\":\"string\",\"doc\":\"{}\"}}", "x".repeat(3000))});
    let (st, body) = call(
        reqwest::Method::POST,
        format!("{}/subjects/big-value/versions", reg.url),
        Some(big),
    )
    .await;
    assert_eq!(
        (st, body["error_code"].as_i64()),
        (413, Some(41301)),
        "{body}"
    );

    // A client that announces a body and never sends it holds the only slot ...
    let addr = reg.url.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        format!(
            "POST /subjects/slow-value/versions HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: 100\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // ... so another request waits for it (answered only once the slow one timed out) ...
    let started = std::time::Instant::now();
    let (st, body) = call(reqwest::Method::GET, format!("{}/subjects", reg.url), None).await;
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(1500),
        "answered after {waited:?} while the only slot was taken: {st} {body}"
    );
    assert!(st == 200 || body["error_code"] == 50002, "{st} {body}");
    // ... and the slow one is cut off at the request timeout with 50002.
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), slow.read(&mut answer))
        .await
        .expect("the slow request is answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    assert!(answer.contains("50002"), "{answer}");
    drop(slow);
    let (st, _) = call(reqwest::Method::GET, format!("{}/subjects", reg.url), None).await;
    assert_eq!(st, 200);
    reg.stop().await;
}

/// An `https://` registry is trusted only through `registry.ca_file` (the system's roots do
/// not know the test CA, another CA is refused), and a refusal is a fatal trust failure.
#[tokio::test]
async fn an_https_registry_is_trusted_through_its_ca_file_only() {
    let pki = super::support::pki();
    let port = super::support::free_port();
    let mut server = super::support::KillOnDrop(
        std::process::Command::new(super::support::python())
            .arg(super::support::root().join("tests/python/https_registry.py"))
            .arg(pki.path("server.pem"))
            .arg(pki.path("server.key"))
            .arg(port.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(server.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening");
    }
    let url = format!("https://localhost:{port}");
    let trusted = client_with(&url, |c| c.ca_file = Some(pki.path("ca.pem")));
    assert_eq!(trusted.subjects().await.unwrap(), vec!["tls-value"]);
    for (what, ca) in [
        ("system roots", None),
        ("another CA", Some(pki.path("other-ca.pem"))),
    ] {
        let e = client_with(&url, |c| c.ca_file = ca)
            .subjects()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Auth, "{what}: {e}");
    }
}
