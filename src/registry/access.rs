//! Who may call the embedded registry, and how much of it a caller may use: every request
//! passes through [`guard`] before a handler runs.
//!
//! ```text
//!   request ─▶ Content-Length > max_body_bytes? ──▶ 413 / 41301
//!           ─▶ credentials configured and Authorization not one of them? ──▶ 401 / 40101
//!           ─▶ wait for one of max_concurrent_requests slots ┐ within request_timeout_ms,
//!           ─▶ handler (body read capped at max_body_bytes)  ┘ else 500 / 50002
//! ```
//!
//! Credentials are basic auth (`username`/`password`) and/or a bearer token; the header is
//! compared in constant time. Errors carry the Confluent JSON shape and content type. The
//! configured secrets are never logged, and nor is the Authorization header.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;
use tokio::sync::Semaphore;

use super::media::CONTENT_TYPE;
use crate::config::RegistryServerConfig;

/// The access rules of one embedded registry.
#[derive(Clone)]
pub struct Access {
    /// Accepted `Authorization` header values; empty: no authentication.
    accepted: Arc<Vec<String>>,
    pub max_body_bytes: usize,
    timeout: Duration,
    slots: Arc<Semaphore>,
}

impl Access {
    pub fn new(cfg: &RegistryServerConfig) -> Access {
        let mut accepted = Vec::new();
        if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
            let pair =
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{}", p.expose()));
            accepted.push(format!("Basic {pair}"));
        }
        if let Some(t) = &cfg.token {
            accepted.push(format!("Bearer {}", t.expose()));
        }
        Access {
            accepted: Arc::new(accepted),
            max_body_bytes: cfg.max_body_bytes,
            timeout: Duration::from_millis(cfg.request_timeout_ms),
            slots: Arc::new(Semaphore::new(cfg.max_concurrent_requests)),
        }
    }

    /// No authentication, the default limits.
    pub fn open() -> Access {
        Access::new(&RegistryServerConfig::default())
    }

    pub fn authenticates(&self) -> bool {
        !self.accepted.is_empty()
    }

    fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        if self.accepted.is_empty() {
            return true;
        }
        let Some(given) = authorization.map(HeaderValue::as_bytes) else {
            return false;
        };
        // Every candidate is compared in full: no early exit on the first match either.
        self.accepted
            .iter()
            .fold(false, |ok, a| ok | constant_time_eq(a.as_bytes(), given))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refusal(status: StatusCode, code: u32, message: &str) -> Response {
    let mut r = (
        status,
        json!({"error_code": code, "message": message}).to_string(),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

/// The middleware: size, credentials, concurrency and time, in that order.
pub async fn guard(State(access): State<Access>, req: Request<Body>, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > access.max_body_bytes as u64) {
        return refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            41301,
            &format!("Request body larger than {} bytes", access.max_body_bytes),
        );
    }
    if !access.admits(req.headers().get(header::AUTHORIZATION)) {
        let mut r = refusal(StatusCode::UNAUTHORIZED, 40101, "Unauthorized");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"cutover-registry\""),
        );
        return r;
    }
    let slots = Arc::clone(&access.slots);
    let served = tokio::time::timeout(access.timeout, async move {
        let _slot = slots.acquire_owned().await;
        next.run(req).await
    })
    .await;
    match served {
        Ok(r) => r,
        Err(_) => refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            50002,
            &format!(
                "Operation timed out after {} ms",
                access.timeout.as_millis()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn only_the_configured_credentials_are_admitted() {
        let open = Access::open();
        assert!(!open.authenticates());
        assert!(open.admits(None));
        let cfg = RegistryServerConfig {
            username: Some("svc".into()),
            password: Some(Secret::new("pw")),
            token: Some(Secret::new("t0k")),
            ..Default::default()
        };
        let a = Access::new(&cfg);
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        // base64("svc:pw") = c3ZjOnB3
        assert!(a.admits(Some(&h("Basic c3ZjOnB3"))));
        assert!(a.admits(Some(&h("Bearer t0k"))));
        assert!(!a.admits(None));
        assert!(!a.admits(Some(&h("Basic c3ZjOnB4"))));
        assert!(!a.admits(Some(&h("Bearer t0"))));
        assert!(!a.admits(Some(&h("bearer t0k"))));
    }
}
