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
    RegistryClient::new(&RegistryConfig {
        url: url.to_string(),
        username: None,
        password: None,
        password_file: None,
        timeout_ms: 5000,
    })
    .unwrap()
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
