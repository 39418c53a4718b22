//! The embedded registry's HTTP API: the Confluent Schema Registry REST subset that
//! serializers, deserializers and operators use.
//!
//! | method | path | |
//! |---|---|---|
//! | POST | `/subjects/{s}/versions` | register (idempotent), compatibility-checked |
//! | POST | `/subjects/{s}` | look a schema up under a subject |
//! | GET | `/subjects`, `/subjects/{s}/versions` | list (`?deleted=true` includes soft-deleted) |
//! | GET | `/subjects/{s}/versions/{v\|latest}[/schema]` | one version |
//! | DELETE | `/subjects/{s}[/versions/{v}]` | soft delete, `?permanent=true` after a soft delete |
//! | GET | `/schemas/ids/{id}[/schema\|/versions\|/subjects]` | by global id |
//! | GET | `/schemas/types` | `["AVRO"]` |
//! | POST | `/compatibility/subjects/{s}/versions[/{v}]` | `{"is_compatible": bool}`, `?verbose=true` |
//! | GET/PUT | `/config`, `/config/{s}` (+ DELETE) | compatibility levels |
//! | GET | `/mode` | always `READWRITE` |
//!
//! Errors are `{"error_code": 40401, "message": "..."}` with the Confluent codes. Only Avro
//! schemas are accepted; schema references are refused with a clear message.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::access::{guard, Access};
use super::compat::Compatibility;
use super::store::{Store, StoreError, VersionRef};
use crate::observe::names;

pub use super::media::CONTENT_TYPE;

type Shared = State<Arc<Store>>;

struct ApiResponse(StatusCode, Value);

impl IntoResponse for ApiResponse {
    fn into_response(self) -> Response {
        let mut r = (self.0, self.1.to_string()).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        r
    }
}

fn ok(v: Value) -> ApiResponse {
    ApiResponse(StatusCode::OK, v)
}

impl From<StoreError> for ApiResponse {
    fn from(e: StoreError) -> Self {
        let code = e.code();
        let status = StatusCode::from_u16((code / if code >= 1000 { 100 } else { 1 }) as u16)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiResponse(status, json!({"error_code": code, "message": e.message()}))
    }
}

type ApiResult = Result<ApiResponse, ApiResponse>;

#[derive(Deserialize)]
struct SchemaRequest {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Value>>,
}

fn parse_request(body: &Bytes) -> Result<SchemaRequest, ApiResponse> {
    let req: SchemaRequest = serde_json::from_slice(body).map_err(|e| {
        ApiResponse(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error_code": 42201, "message": format!("Invalid request body: {e}")}),
        )
    })?;
    if let Some(t) = &req.schema_type {
        if !t.eq_ignore_ascii_case("AVRO") {
            return Err(StoreError::Unsupported(format!(
                "schemaType {t}: this registry stores AVRO schemas only"
            ))
            .into());
        }
    }
    if req.references.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(StoreError::Unsupported("schema references".into()).into());
    }
    Ok(req)
}

/// Boolean query flags. Clients spell them `true`, `True`, `1`…; anything else is false.
/// Unknown parameters (`normalize`, `format`, `subject`, …) are ignored.
#[derive(Deserialize, Default)]
struct Flags {
    #[serde(default)]
    deleted: Option<String>,
    #[serde(default)]
    permanent: Option<String>,
    #[serde(default)]
    verbose: Option<String>,
    #[serde(rename = "defaultToGlobal", default)]
    default_to_global: Option<String>,
}

fn flag(v: &Option<String>) -> bool {
    v.as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("true") || s == "1")
}

fn version_json(v: super::store::VersionInfo) -> Value {
    json!({"subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema})
}

fn parse_id(id: &str) -> Result<u32, ApiResponse> {
    id.parse::<u32>()
        .map_err(|_| ApiResponse::from(StoreError::SchemaNotFound))
}

async fn root() -> ApiResponse {
    ok(json!({}))
}

async fn list_subjects(State(st): Shared, Query(f): Query<Flags>) -> ApiResponse {
    ok(json!(st.subjects(flag(&f.deleted))))
}

async fn list_versions(
    State(st): Shared,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
) -> ApiResult {
    Ok(ok(json!(st.versions(&subject, flag(&f.deleted))?)))
}

async fn register(State(st): Shared, Path(subject): Path<String>, body: Bytes) -> ApiResult {
    let req = parse_request(&body)?;
    let result = st.register(&subject, &req.schema);
    let outcome = match &result {
        Ok(_) => "ok",
        Err(StoreError::Incompatible(_)) => "incompatible",
        Err(StoreError::InvalidSchema(_)) => "invalid",
        Err(_) => "error",
    };
    metrics::counter!(names::REGISTRY_REGISTRATIONS_TOTAL, names::LABEL_OUTCOME => outcome)
        .increment(1);
    let (id, version) = result?;
    tracing::info!(subject, id, version, "schema registered");
    Ok(ok(
        json!({"id": id, "subject": subject, "version": version}),
    ))
}

async fn lookup(State(st): Shared, Path(subject): Path<String>, body: Bytes) -> ApiResult {
    let req = parse_request(&body)?;
    Ok(ok(version_json(st.lookup(&subject, &req.schema)?)))
}

async fn get_version(
    State(st): Shared,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let v = VersionRef::parse(&version)?;
    Ok(ok(version_json(st.version(&subject, v)?)))
}

async fn get_version_schema(
    State(st): Shared,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let v = VersionRef::parse(&version)?;
    let info = st.version(&subject, v)?;
    Ok(ok(
        serde_json::from_str(&info.schema).unwrap_or(Value::String(info.schema))
    ))
}

async fn delete_subject(
    State(st): Shared,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
) -> ApiResult {
    Ok(ok(json!(st.delete_subject(&subject, flag(&f.permanent))?)))
}

async fn delete_version(
    State(st): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(f): Query<Flags>,
) -> ApiResult {
    let v = VersionRef::parse(&version)?;
    Ok(ok(json!(st.delete_version(
        &subject,
        v,
        flag(&f.permanent)
    )?)))
}

async fn schema_by_id(State(st): Shared, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    Ok(ok(json!({"schema": st.schema_by_id(id)?})))
}

async fn raw_schema_by_id(State(st): Shared, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let text = st.schema_by_id(id)?;
    Ok(ok(
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    ))
}

async fn id_versions(State(st): Shared, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let list: Vec<Value> = st
        .id_versions(id)?
        .into_iter()
        .map(|(s, v)| json!({"subject": s, "version": v}))
        .collect();
    Ok(ok(json!(list)))
}

async fn id_subjects(State(st): Shared, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let mut subjects: Vec<String> = st.id_versions(id)?.into_iter().map(|(s, _)| s).collect();
    subjects.dedup();
    Ok(ok(json!(subjects)))
}

async fn schema_types() -> ApiResponse {
    ok(json!(["AVRO"]))
}

fn compat_answer(reasons: Vec<String>, verbose: bool) -> ApiResponse {
    if verbose {
        ok(json!({"is_compatible": reasons.is_empty(), "messages": reasons}))
    } else {
        ok(json!({"is_compatible": reasons.is_empty()}))
    }
}

async fn compat_version(
    State(st): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(f): Query<Flags>,
    body: Bytes,
) -> ApiResult {
    let req = parse_request(&body)?;
    let v = VersionRef::parse(&version)?;
    let reasons = st.check_compatibility(&subject, Some(v), &req.schema)?;
    Ok(compat_answer(reasons, flag(&f.verbose)))
}

async fn compat_all(
    State(st): Shared,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
    body: Bytes,
) -> ApiResult {
    let req = parse_request(&body)?;
    let reasons = st.check_compatibility(&subject, None, &req.schema)?;
    Ok(compat_answer(reasons, flag(&f.verbose)))
}

#[derive(Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

fn parse_level(body: &Bytes) -> Result<Compatibility, ApiResponse> {
    let req: ConfigRequest = serde_json::from_slice(body).map_err(|e| {
        ApiResponse::from(StoreError::InvalidCompatibility(format!("bad body: {e}")))
    })?;
    Compatibility::parse(&req.compatibility)
        .ok_or_else(|| StoreError::InvalidCompatibility(req.compatibility).into())
}

async fn get_global_config(State(st): Shared) -> ApiResponse {
    ok(json!({"compatibilityLevel": st.global_compatibility().as_str()}))
}

async fn put_global_config(State(st): Shared, body: Bytes) -> ApiResult {
    let level = parse_level(&body)?;
    st.set_compatibility(None, Some(level))?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn get_subject_config(
    State(st): Shared,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
) -> ApiResult {
    match st.subject_compatibility(&subject) {
        Some(l) => Ok(ok(json!({"compatibilityLevel": l.as_str()}))),
        None if flag(&f.default_to_global) => Ok(ok(
            json!({"compatibilityLevel": st.global_compatibility().as_str()}),
        )),
        None => Err(StoreError::SubjectConfigNotFound(subject).into()),
    }
}

async fn put_subject_config(
    State(st): Shared,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let level = parse_level(&body)?;
    st.set_compatibility(Some(&subject), Some(level))?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn delete_subject_config(State(st): Shared, Path(subject): Path<String>) -> ApiResult {
    let prev = st
        .subject_compatibility(&subject)
        .ok_or_else(|| StoreError::SubjectConfigNotFound(subject.clone()))?;
    st.set_compatibility(Some(&subject), None)?;
    Ok(ok(json!({"compatibilityLevel": prev.as_str()})))
}

async fn mode() -> ApiResponse {
    ok(json!({"mode": "READWRITE"}))
}

async fn not_found() -> ApiResponse {
    ApiResponse(
        StatusCode::NOT_FOUND,
        json!({"error_code": 404, "message": "HTTP 404 Not Found"}),
    )
}

/// The API router over a store, behind `access` (see [`super::access`]).
pub fn router(store: Arc<Store>, access: Access) -> Router {
    let limit = access.max_body_bytes;
    Router::new()
        .route("/", get(root))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route("/schemas/ids/{id}/subjects", get(id_subjects))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compat_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compat_version),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(mode))
        .fallback(not_found)
        .with_state(store)
        // A body without Content-Length (chunked) is cut at the same limit while read.
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(access, guard))
}

/// Serve the registry on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    access: Access,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(store, access))
        .with_graceful_shutdown(shutdown)
        .await
}
