//! A small demo upstream and a matching config, so that `cloudctl up` can put the gateway in front
//! of something a newcomer can curl.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::routing::any;
use cloud_kit::Shutdown;
use serde_json::json;
use url::Url;

use crate::config::{AuthMode, Config, RateLimitPolicyConfig, RouteConfig};

/// Echoes what the gateway told it: method, path, tenant and user headers, request id and
/// trace context.
pub fn upstream() -> Router {
    Router::new()
        .route("/", any(echo))
        .route("/{*path}", any(echo))
}

async fn echo(request: Request) -> axum::Json<serde_json::Value> {
    let h: &HeaderMap = request.headers();
    let get = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    axum::Json(json!({
        "service": "demo-upstream",
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "tenant_id": get("x-tenant-id"),
        "user_id": get("x-user-id"),
        "request_id": get("x-request-id"),
        "traceparent": get("traceparent"),
        "forwarded_for": get("x-forwarded-for"),
    }))
}

/// Serves [`upstream`] on `127.0.0.1:<port>` (0 picks a free port) until `shutdown` triggers.
pub async fn spawn_upstream(port: u16, shutdown: Shutdown) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, upstream())
            .with_graceful_shutdown(async move { shutdown.triggered().await })
            .await
        {
            tracing::error!(error = %err, "the demo upstream failed");
        }
    });
    Ok(addr)
}

/// The name of the demo route and its rate-limit policy.
pub const DEMO_ROUTE: &str = "demo";
/// Requests per minute per tenant on the demo route (small, so a newcomer can see a 429).
pub const DEMO_LIMIT_PER_MINUTE: u64 = 10;

impl Config {
    /// `base` plus one protected route `/api/demo/` -> `upstream` (any valid token from
    /// `issuer`, audience `audience`) with a rate limit of [`DEMO_LIMIT_PER_MINUTE`] per tenant.
    pub fn with_demo_route(
        mut self,
        issuer: Url,
        audience: &str,
        upstream: SocketAddr,
    ) -> Result<Self, url::ParseError> {
        self.identity.issuer_url = issuer;
        self.identity.audience = audience.to_string();
        self.rate_limits.insert(
            DEMO_ROUTE.into(),
            RateLimitPolicyConfig {
                requests: DEMO_LIMIT_PER_MINUTE,
                period: Duration::from_secs(60),
                burst: None,
            },
        );
        self.routes.insert(
            DEMO_ROUTE.into(),
            RouteConfig {
                path_prefix: "/api/demo/".into(),
                upstreams: vec![Url::parse(&format!("http://{upstream}"))?],
                strip_prefix: false,
                auth: AuthMode::Token,
                permission: None,
                rate_limit: Some(DEMO_ROUTE.into()),
                timeouts: Default::default(),
                retries: Default::default(),
                circuit_breaker: Default::default(),
                cors: None,
                headers: Default::default(),
                max_body_bytes: None,
                canary: None,
                flag: None,
            },
        );
        Ok(self)
    }
}
