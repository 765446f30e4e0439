//! A small demo upstream and a matching config, so that `cloudctl up` can put the gateway in front
//! of something a newcomer can curl.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::any;
use cloud_kit::Shutdown;
use serde_json::json;
use url::Url;

use crate::config::{
    AuthMode, CanaryConfig, Config, RateLimitPolicyConfig, RouteConfig, Stickiness,
};

/// The header the demo upstream names itself in (`stable` or `canary`), so that a curl shows
/// which side of a canary answered.
pub const UPSTREAM_HEADER: &str = "x-demo-upstream";

/// Echoes what the gateway told it: method, path, tenant and user headers, request id and
/// trace context. Answers as the `stable` upstream.
pub fn upstream() -> Router {
    named_upstream("stable")
}

/// [`upstream`], naming itself `name` in the body (`upstream`) and in [`UPSTREAM_HEADER`].
pub fn named_upstream(name: &'static str) -> Router {
    Router::new()
        .route("/", any(move |r: Request| echo(name, r)))
        .route("/{*path}", any(move |r: Request| echo(name, r)))
}

async fn echo(name: &'static str, request: Request) -> impl IntoResponse {
    let h: &HeaderMap = request.headers();
    let get = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let body = axum::Json(json!({
        "service": "demo-upstream",
        "upstream": name,
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "tenant_id": get("x-tenant-id"),
        "user_id": get("x-user-id"),
        "request_id": get("x-request-id"),
        "traceparent": get("traceparent"),
        "forwarded_for": get("x-forwarded-for"),
    }));
    ([(UPSTREAM_HEADER, name)], body)
}

/// Serves [`upstream`] on `127.0.0.1:<port>` (0 picks a free port) until `shutdown` triggers.
pub async fn spawn_upstream(port: u16, shutdown: Shutdown) -> std::io::Result<SocketAddr> {
    spawn_named_upstream("stable", port, shutdown).await
}

/// Serves [`named_upstream`] on `127.0.0.1:<port>` (0 picks a free port) until `shutdown`
/// triggers.
pub async fn spawn_named_upstream(
    name: &'static str,
    port: u16,
    shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, named_upstream(name))
            .with_graceful_shutdown(async move { shutdown.triggered().await })
            .await
        {
            tracing::error!(error = %err, upstream = name, "the demo upstream failed");
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

    /// Splits the demo route between its upstream (`stable`) and `canary` by the variant of the
    /// flag `gateway.canary-upstream`, sticky per tenant (call after [`Self::with_demo_route`]).
    pub fn with_demo_canary(mut self, canary: SocketAddr) -> Result<Self, url::ParseError> {
        let canary = Url::parse(&format!("http://{canary}"))?;
        if let Some(route) = self.routes.get_mut(DEMO_ROUTE)
            && let Some(stable) = route.upstreams.first().cloned()
        {
            route.canary = Some(CanaryConfig {
                flag: cloud_flags::platform::GATEWAY_CANARY.name().to_string(),
                variants: [
                    ("stable".to_string(), stable),
                    ("canary".to_string(), canary),
                ]
                .into_iter()
                .collect(),
                stickiness: Stickiness::Tenant,
            });
        }
        Ok(self)
    }
}
