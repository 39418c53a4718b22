//! A client for any Confluent-compatible schema registry, with the caches serializers need:
//! `(subject, schema) → id` for the write path and `id → schema` for the read path. Both are
//! safe to cache forever because ids are immutable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::config::RegistryConfig;
use crate::error::{Error, ErrorKind, Result};

use super::media::CONTENT_TYPE;

pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    auth: Option<Credentials>,
    ids: Mutex<HashMap<(String, String), u32>>,
    schemas: Mutex<HashMap<u32, String>>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    error_code: Option<i64>,
    message: Option<String>,
}

/// A subject version as returned by the registry.
#[derive(Debug, Clone, Deserialize)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
}

/// The HTTP client of a registry client, with TLS settings built once per process and CA
/// file: building a TLS connector loads the system's CA bundle (`perf`: 7 % of a short
/// `cutover apply`'s CPU, at start), and `cutover run` makes one registry client per capture
/// and two per sink. The connector is shared, never the client itself: a client's pooled
/// connections belong to the tokio runtime that opened them.
fn http_client(cfg: &RegistryConfig) -> Result<reqwest::Client> {
    type Connectors =
        HashMap<Option<std::path::PathBuf>, std::result::Result<native_tls::TlsConnector, String>>;
    static TLS: std::sync::OnceLock<Mutex<Connectors>> = std::sync::OnceLock::new();
    let tls = TLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(cfg.ca_file.clone())
        .or_insert_with(|| connector(cfg.ca_file.as_deref()))
        .clone()
        .map_err(|e| Error::new(ErrorKind::Config, e))?;
    reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|e| Error::with_source(ErrorKind::Config, "building registry HTTP client", e))
}

/// The TLS connector: the system's roots, or only the CAs of `ca_file`.
fn connector(
    ca_file: Option<&std::path::Path>,
) -> std::result::Result<native_tls::TlsConnector, String> {
    let mut b = native_tls::TlsConnector::builder();
    if let Some(path) = ca_file {
        crate::trust::only_roots_from(&mut b, "registry.ca_file", path)?;
    }
    b.build()
        .map_err(|e| format!("building registry TLS settings: {e}"))
}

/// How a client proves who it is to the registry.
enum Credentials {
    Basic(String, String),
    Bearer(String),
}

impl RegistryClient {
    pub fn new(cfg: &RegistryConfig) -> Result<RegistryClient> {
        let http = http_client(cfg)?;
        let auth = match (&cfg.username, &cfg.token) {
            (Some(u), _) => Some(Credentials::Basic(
                u.clone(),
                cfg.password
                    .as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            )),
            (None, Some(t)) => Some(Credentials::Bearer(t.expose().to_string())),
            (None, None) => None,
        };
        Ok(RegistryClient {
            base: cfg.url.trim_end_matches('/').to_string(),
            http,
            auth,
            ids: Mutex::new(HashMap::new()),
            schemas: Mutex::new(HashMap::new()),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        match &self.auth {
            Some(Credentials::Basic(u, p)) => r = r.basic_auth(u, Some(p)),
            Some(Credentials::Bearer(t)) => r = r.bearer_auth(t),
            None => {}
        }
        r
    }

    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        what: &str,
        r: reqwest::RequestBuilder,
    ) -> Result<T> {
        let resp = r.send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                ErrorKind::Timeout
            } else if crate::error::classify::certificate_failure(&format!("{e:?}")) {
                // An untrusted or misnamed certificate: retrying will not help.
                ErrorKind::Auth
            } else {
                ErrorKind::Connection
            };
            Error::with_source(
                kind,
                format!("schema registry {}: {what}: {e}", self.base),
                e,
            )
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            Error::with_source(
                ErrorKind::Connection,
                format!("schema registry {what}: reading body"),
                e,
            )
        })?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                Error::with_source(
                    ErrorKind::Internal,
                    format!("schema registry {what}: unexpected answer"),
                    e,
                )
            });
        }
        let api: Option<ApiError> = serde_json::from_slice(&body).ok();
        let code = api
            .as_ref()
            .and_then(|a| a.error_code)
            .unwrap_or(status.as_u16() as i64);
        let message = api
            .and_then(|a| a.message)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        let kind = match status.as_u16() {
            401 | 403 => ErrorKind::Auth,
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Schema,
            422 => ErrorKind::Schema,
            408 | 429 => ErrorKind::Unavailable,
            s if s >= 500 => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        };
        Err(Error::new(
            kind,
            format!("schema registry {what}: {message} (error_code {code})"),
        ))
    }

    /// Register `schema` under `subject`; returns the global schema id. Cached.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let key = (subject.to_string(), schema.to_string());
        if let Some(id) = self.ids.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(*id);
        }
        #[derive(Deserialize)]
        struct Resp {
            id: u32,
        }
        let r: Resp = self
            .send(
                &format!("register under {subject}"),
                self.req(
                    reqwest::Method::POST,
                    &format!("/subjects/{}/versions", enc(subject)),
                )
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(json!({"schema": schema, "schemaType": "AVRO"}).to_string()),
            )
            .await?;
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, r.id);
        self.schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(r.id, schema.to_string());
        Ok(r.id)
    }

    /// The schema text with global id `id`. Cached.
    pub async fn schema_by_id(&self, id: u32) -> Result<String> {
        if let Some(s) = self
            .schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(s.clone());
        }
        #[derive(Deserialize)]
        struct Resp {
            schema: String,
        }
        let r: Resp = self
            .send(
                &format!("schema id {id}"),
                self.req(reqwest::Method::GET, &format!("/schemas/ids/{id}")),
            )
            .await?;
        self.schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, r.schema.clone());
        Ok(r.schema)
    }

    pub async fn latest(&self, subject: &str) -> Result<SubjectVersion> {
        self.send(
            &format!("latest version of {subject}"),
            self.req(
                reqwest::Method::GET,
                &format!("/subjects/{}/versions/latest", enc(subject)),
            ),
        )
        .await
    }

    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>> {
        self.send(
            &format!("versions of {subject}"),
            self.req(
                reqwest::Method::GET,
                &format!("/subjects/{}/versions", enc(subject)),
            ),
        )
        .await
    }

    pub async fn subjects(&self) -> Result<Vec<String>> {
        self.send("list subjects", self.req(reqwest::Method::GET, "/subjects"))
            .await
    }

    /// Set `subject`'s own compatibility level (`PUT /config/{subject}`), e.g. `NONE`.
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<()> {
        let _: serde_json::Value = self
            .send(
                &format!("setting the compatibility of {subject}"),
                self.req(reqwest::Method::PUT, &format!("/config/{}", enc(subject)))
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                    .body(json!({ "compatibility": level }).to_string()),
            )
            .await?;
        Ok(())
    }

    /// Would `schema` be accepted under `subject` (against what registration would check)?
    pub async fn is_compatible(&self, subject: &str, schema: &str) -> Result<bool> {
        #[derive(Deserialize)]
        struct Resp {
            is_compatible: bool,
        }
        let r: Resp = self
            .send(
                &format!("compatibility check for {subject}"),
                self.req(
                    reqwest::Method::POST,
                    &format!("/compatibility/subjects/{}/versions/latest", enc(subject)),
                )
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(json!({"schema": schema}).to_string()),
            )
            .await?;
        Ok(r.is_compatible)
    }

    /// Check that the registry answers (lists subjects). Returns the number of subjects.
    pub async fn ping(&self) -> Result<usize> {
        Ok(self.subjects().await?.len())
    }
}

/// Percent-encode a subject for a URL path segment.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
