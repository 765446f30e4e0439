//! Backend-for-frontend: `GET /bff/v1/session` and the aggregation endpoints declared in config.
//!
//! Every call of an aggregation runs concurrently with its own deadline. The partial-result
//! policy is explicit: with `partial: fail` any failed call fails the request (504 when every
//! failure was a timeout, else 502); with `partial: allow` failed optional calls are reported
//! under `errors` next to the `data` of the others, and only a failed `required` call fails it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use cloud_kit::Problem;
use cloud_kit::trace_context::{RequestId, TraceContext};
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::auth::Claims;
use crate::config::{AggregationConfig, AuthMode, CallConfig, PartialPolicy};

/// Evaluates the front-end flags for a session. Implemented by the feature-flag integration;
/// without one, the session's `flags` is empty.
pub trait FrontendFlags: Send + Sync + std::fmt::Debug {
    fn evaluate(&self, tenant: Option<&str>, user: &str) -> Map<String, Value>;
}

#[derive(Debug)]
enum CallError {
    Timeout,
    Failed(String),
}

impl CallError {
    fn describe(&self) -> String {
        match self {
            CallError::Timeout => "timeout".into(),
            CallError::Failed(reason) => reason.clone(),
        }
    }
}

struct CallContext<'a> {
    token: &'a str,
    claims: &'a Claims,
    trace: Option<TraceContext>,
    request_id: Option<String>,
}

async fn call_json(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    ctx: &CallContext<'_>,
) -> Result<Value, CallError> {
    let mut request = http
        .get(url)
        .bearer_auth(ctx.token)
        .header("x-user-id", &ctx.claims.sub);
    if let Some(tid) = &ctx.claims.tid {
        request = request.header("x-tenant-id", tid);
    }
    if let Some(trace) = &ctx.trace {
        request = request.header("traceparent", trace.child_traceparent());
    }
    if let Some(id) = &ctx.request_id {
        request = request.header("x-request-id", id);
    }
    let outcome = tokio::time::timeout(timeout, async {
        let response = request.send().await.map_err(|e| {
            CallError::Failed(if e.is_connect() {
                "unreachable".into()
            } else {
                "request failed".into()
            })
        })?;
        if !response.status().is_success() {
            return Err(CallError::Failed(format!(
                "status {}",
                response.status().as_u16()
            )));
        }
        response
            .json::<Value>()
            .await
            .map_err(|_| CallError::Failed("invalid JSON".into()))
    })
    .await;
    outcome.unwrap_or(Err(CallError::Timeout))
}

fn context_of<'a>(request: &Request, token: &'a str, claims: &'a Claims) -> CallContext<'a> {
    CallContext {
        token,
        claims,
        trace: request.extensions().get::<TraceContext>().copied(),
        request_id: request.extensions().get::<RequestId>().map(|r| r.0.clone()),
    }
}

/// `GET /bff/v1/session`: who the caller is, their identity profile (userinfo), their tenant and
/// their evaluated front-end flags. A failed profile or tenant lookup is reported under `errors`.
pub(crate) async fn session(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let claims =
        match crate::proxy::authenticate(&state, request.headers(), AuthMode::Token, None).await {
            Ok(Some(c)) => c,
            Ok(None) => return Problem::unauthorized("a token is required").into_response(),
            Err(response) => return response,
        };
    let Ok(token) = crate::auth::bearer(request.headers().get(http::header::AUTHORIZATION)) else {
        return Problem::unauthorized("a token is required").into_response();
    };
    let ctx = context_of(&request, token, &claims);
    let timeout = state.session.timeout;
    let http = state.validator.http();
    let profile = async {
        match state.validator.userinfo_endpoint() {
            Some(url) => call_json(http, url.as_str(), timeout, &ctx).await,
            None => Err(CallError::Failed(
                "the identity provider advertises no userinfo endpoint".into(),
            )),
        }
    };
    let tenant = async {
        match (&state.session.tenant_url, &claims.tid) {
            (Some(template), Some(tid)) => {
                call_json(http, &template.replace("{tenant}", tid), timeout, &ctx)
                    .await
                    .map(Some)
            }
            _ => Ok(None),
        }
    };
    let (profile, tenant) = tokio::join!(profile, tenant);
    let flags = state
        .flags
        .as_ref()
        .map(|f| f.evaluate(claims.tid.as_deref(), &claims.sub))
        .unwrap_or_default();
    let mut errors = Map::new();
    let profile = profile.unwrap_or_else(|e| {
        errors.insert("profile".into(), e.describe().into());
        Value::Null
    });
    let tenant = match tenant {
        Ok(Some(t)) => t,
        Ok(None) => claims
            .tid
            .as_ref()
            .map_or(Value::Null, |t| json!({ "id": t })),
        Err(e) => {
            errors.insert("tenant".into(), e.describe().into());
            claims
                .tid
                .as_ref()
                .map_or(Value::Null, |t| json!({ "id": t }))
        }
    };
    axum::Json(json!({
        "user": {
            "sub": claims.sub,
            "tenant_id": claims.tid,
            "client_id": claims.client_id,
            "roles": claims.roles,
            "permissions": claims.permissions,
            "expires_at": claims.exp,
        },
        "profile": profile,
        "tenant": tenant,
        "flags": flags,
        "errors": errors,
    }))
    .into_response()
}

/// One configured aggregation endpoint.
#[derive(Debug)]
pub(crate) struct Aggregation {
    pub name: String,
    pub config: AggregationConfig,
}

pub(crate) fn validate(name: &str, config: &AggregationConfig) -> Vec<String> {
    let mut errors = Vec::new();
    if !config.path.starts_with("/bff/") || config.path.contains(['{', '}', '*', '?', '#']) {
        errors.push(format!(
            "bff.aggregations.{name}.path: `{}` must be a literal path under /bff/",
            config.path
        ));
    }
    if config.path == "/bff/v1/session" {
        errors.push(format!(
            "bff.aggregations.{name}.path: `/bff/v1/session` is built in"
        ));
    }
    if config.auth == AuthMode::Permission && config.permission.is_none() {
        errors.push(format!(
            "bff.aggregations.{name}.permission: required when auth is `permission`"
        ));
    }
    if config.auth == AuthMode::Public {
        errors.push(format!(
            "bff.aggregations.{name}.auth: aggregations act for a user; `public` is not supported"
        ));
    }
    if config.calls.is_empty() {
        errors.push(format!(
            "bff.aggregations.{name}.calls: at least one call is required"
        ));
    }
    for (call, CallConfig { url, timeout, .. }) in &config.calls {
        if !matches!(url.scheme(), "http" | "https") {
            errors.push(format!(
                "bff.aggregations.{name}.calls.{call}.url: `{url}` is not http(s)"
            ));
        }
        if timeout.is_zero() {
            errors.push(format!(
                "bff.aggregations.{name}.calls.{call}.timeout: must be more than 0"
            ));
        }
    }
    errors
}

pub(crate) async fn aggregate(
    state: Arc<AppState>,
    aggregation: Arc<Aggregation>,
    request: Request,
) -> Response {
    let config = &aggregation.config;
    let claims = match crate::proxy::authenticate(
        &state,
        request.headers(),
        config.auth,
        config.permission.as_deref(),
    )
    .await
    {
        Ok(Some(c)) => c,
        Ok(None) => return Problem::unauthorized("a token is required").into_response(),
        Err(response) => return response,
    };
    let Ok(token) = crate::auth::bearer(request.headers().get(http::header::AUTHORIZATION)) else {
        return Problem::unauthorized("a token is required").into_response();
    };
    let ctx = context_of(&request, token, &claims);
    let http = state.validator.http();
    let calls = config.calls.iter().map(|(name, call)| {
        let ctx = &ctx;
        async move {
            (
                name.clone(),
                call.required,
                call_json(http, call.url.as_str(), call.timeout, ctx).await,
            )
        }
    });
    let results = futures::future::join_all(calls).await;
    let mut data = Map::new();
    let mut errors = BTreeMap::new();
    let mut fatal = false;
    let mut all_timeouts = true;
    for (name, required, result) in results {
        match result {
            Ok(value) => {
                data.insert(name, value);
            }
            Err(e) => {
                fatal |= required || config.partial == PartialPolicy::Fail;
                all_timeouts &= matches!(e, CallError::Timeout);
                errors.insert(name, e.describe());
            }
        }
    }
    if fatal {
        let status = if all_timeouts {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        return Problem::new(status)
            .with_detail(format!(
                "the aggregation `{}` could not get every result it needs",
                aggregation.name
            ))
            .with_extension("failed_calls", json!(errors))
            .into_response();
    }
    axum::Json(json!({ "data": data, "errors": errors })).into_response()
}
