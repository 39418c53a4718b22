//! Observability: metric names, the Prometheus exporter, health endpoints and logging.
//!
//! ```text
//!   components ──metrics::counter!(names::X)──▶ global recorder ──render──▶ GET /metrics
//!   components ──Readiness::set("broker", ok)──────────────────────────────▶ GET /readyz
//!                                                         process alive ───▶ GET /healthz
//! ```
//!
//! Every metric name and label key is a constant in [`names`]; code never spells a metric
//! name inline, and docs/METRICS.md is checked against what `/metrics` exports. Names follow
//! `cutover_<subsystem>_<name>_<unit>[_total]`, label values come from small fixed sets.

pub mod logging;
pub mod names;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::{Error, ErrorKind, Result};

/// Version string reported by `--version` and `cutover_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_SHA: &str = env!("CUTOVER_GIT_SHA");

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the global Prometheus recorder (once per process) and describe every metric.
pub fn install_recorder() -> Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let builder = PrometheusBuilder::new()
        .set_buckets(names::LATENCY_BUCKETS_SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(names::SINK_BATCH_EVENTS.into()),
                names::BATCH_EVENTS_BUCKETS,
            )
        })
        .map_err(|e| Error::internal(format!("histogram buckets: {e}")))?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            names::describe_all();
            metrics::gauge!(names::BUILD_INFO,
                names::LABEL_VERSION => VERSION,
                names::LABEL_REVISION => GIT_SHA)
            .set(1.0);
            let _ = HANDLE.set(handle.clone());
            Ok(handle)
        }
        Err(_) => HANDLE
            .get()
            .cloned()
            .ok_or_else(|| Error::internal("another metrics recorder is already installed")),
    }
}

/// `cutover_up{command}` = 1: this process serves `command`.
pub fn up(command: &'static str) {
    metrics::gauge!(names::UP, names::LABEL_COMMAND => command).set(1.0);
}

/// Named readiness checks; `/readyz` is 200 only when all registered checks pass.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<String, bool>>>);

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set(&self, check: &str, ok: bool) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(check.to_string(), ok);
    }
    pub fn snapshot(&self) -> BTreeMap<String, bool> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn is_ready(&self) -> bool {
        let s = self.snapshot();
        !s.is_empty() && s.values().all(|v| *v)
    }
}

#[derive(Clone)]
struct ObserveState {
    handle: PrometheusHandle,
    readiness: Readiness,
}

async fn metrics_endpoint(State(s): State<ObserveState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.handle.render(),
    )
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(s): State<ObserveState>) -> impl IntoResponse {
    let checks = s.readiness.snapshot();
    let status = if s.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "ready": status == StatusCode::OK, "checks": checks }).to_string(),
    )
}

/// The observability router: `/metrics`, `/healthz`, `/readyz`.
pub fn router(handle: PrometheusHandle, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_endpoint))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ObserveState { handle, readiness })
}

/// Bind `addr` (port 0 picks a free one) and serve the observability endpoints until
/// `shutdown` completes; returns the bound address. Also spawns the recorder's upkeep (histogram maintenance) task.
pub async fn serve(
    addr: std::net::SocketAddr,
    handle: PrometheusHandle,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::with_source(
            ErrorKind::Io,
            format!("observe.listen: cannot bind {addr}: {e}"),
            e,
        )
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("observe listener", e))?;
    tracing::info!(addr = %local, "serving /metrics, /healthz, /readyz");
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = router(handle, readiness);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "observe endpoint failed");
        }
    });
    Ok((local, task))
}
