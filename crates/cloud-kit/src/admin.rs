//! The admin listener: `/metrics` (Prometheus), `/healthz` (liveness) and `/readyz` (readiness with
//! named checks). It runs on its own port so that probes and scrapes never compete with, or get
//! exposed alongside, the public API.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use serde::Serialize;

use crate::metrics::Metrics;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFn = dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync;
type NamedChecks = Vec<(String, Arc<CheckFn>)>;

/// Readiness: named checks plus the draining flag that shutdown raises first.
#[derive(Clone, Default)]
pub struct Readiness {
    draining: Arc<AtomicBool>,
    checks: Arc<RwLock<NamedChecks>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .checks
            .read()
            .map(|c| c.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        f.debug_struct("Readiness")
            .field("draining", &self.is_draining())
            .field("checks", &names)
            .finish()
    }
}

#[derive(Debug, Serialize)]
pub struct ReadinessReport {
    pub status: &'static str,
    pub checks: BTreeMap<String, String>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a named check; `/readyz` fails (503) while any check returns `Err`.
    pub fn add_check<F, Fut>(&self, name: impl Into<String>, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: Arc<CheckFn> = Arc::new(move || Box::pin(check()));
        if let Ok(mut checks) = self.checks.write() {
            checks.push((name.into(), check));
        }
    }

    /// Marks the service as draining: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub async fn report(&self) -> ReadinessReport {
        let checks: NamedChecks = self.checks.read().map(|c| c.clone()).unwrap_or_default();
        let results =
            futures::future::join_all(checks.into_iter().map(|(name, check)| async move {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                    Ok(Ok(())) => "ok".to_string(),
                    Ok(Err(reason)) => format!("failing: {reason}"),
                    Err(_) => format!("failing: no answer within {CHECK_TIMEOUT:?}"),
                };
                (name, outcome)
            }))
            .await;
        let mut checks: BTreeMap<String, String> = results.into_iter().collect();
        let status = if self.is_draining() {
            checks.insert(
                "shutdown".into(),
                "failing: draining before shutdown".into(),
            );
            "draining"
        } else if checks.values().all(|v| v == "ok") {
            "ready"
        } else {
            "not_ready"
        };
        ReadinessReport { status, checks }
    }
}

#[derive(Clone, Debug)]
struct AdminState {
    readiness: Readiness,
    metrics: Metrics,
}

pub fn router(readiness: Readiness, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .fallback(crate::problem::not_found_fallback)
        .with_state(AdminState { readiness, metrics })
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let report = state.readiness.report().await;
    let status = if report.status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

async fn metrics_handler(State(state): State<AdminState>) -> Response {
    match state.metrics.encode() {
        Ok(body) => {
            let mut response = body.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        Err(err) => {
            tracing::error!(error = %err, "encoding metrics failed");
            crate::problem::Problem::internal().into_response()
        }
    }
}
