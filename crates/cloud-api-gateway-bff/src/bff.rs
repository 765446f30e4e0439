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
        request_id: request
            .extensions()
            .get::<RequestId>()
            .map(|r| r.as_str().to_string()),
    }
}

// The fields of `Session` and `SessionUser` are declared in alphabetical order: the body used to
// be built with `json!`, whose object keys serde_json sorts (the gateway is built without its
// `preserve_order` feature), so the bytes on the wire stay the same. Every field is always
// present, `null` when it has no value (hence `required` on the `Option`s).

/// Where [`session`] answers.
pub const SESSION_PATH: &str = "/bff/v1/session";

/// The body of `GET /bff/v1/session`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Session {
    /// Why a lookup failed, by lookup (`profile`, `tenant`): `timeout`, `unreachable`,
    /// `status <code>`, `invalid JSON`, ... Empty when both succeeded (or were not configured).
    pub errors: BTreeMap<String, String>,
    /// The evaluated front-end flags (`frontend.*`) for the token's tenant and user, by name.
    pub flags: Map<String, Value>,
    /// Identity's userinfo for the token, as identity answered it; `null` when the lookup failed.
    #[schema(required = true)]
    pub profile: Option<Value>,
    /// The tenant lookup's answer (`bff.session.tenant_url`); without one, or when it failed,
    /// `{"id": <tid>}`; `null` for a token without a tenant.
    #[schema(required = true)]
    pub tenant: Option<Value>,
    /// Who the caller is, from the verified token.
    pub user: SessionUser,
}

/// The caller, from the verified access token's claims.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SessionUser {
    /// The token's `client_id`.
    #[schema(required = true)]
    pub client_id: Option<String>,
    /// The token's `exp` (Unix seconds).
    pub expires_at: i64,
    /// The token's `permissions`.
    pub permissions: Vec<String>,
    /// The token's `roles`.
    pub roles: Vec<String>,
    /// The token's `sub`.
    pub sub: String,
    /// The token's tenant (`tid`).
    #[schema(required = true)]
    pub tenant_id: Option<String>,
}

/// The caller's session: who they are, their profile, their tenant and their front-end flags.
///
/// `user` comes from the verified access token; `profile` is identity's userinfo for the token,
/// `tenant` the configured tenant lookup (else just the token's tenant id), `flags` the
/// `frontend.*` feature flags evaluated for the token's tenant and user. A failed profile or
/// tenant lookup does not fail the request: it is named under `errors` (partial result).
#[utoipa::path(get, path = "/bff/v1/session", tag = "bff", operation_id = "session",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The session (possibly partial: see `errors`)", body = Session),
        (status = 401, description = "No bearer token, or a token that is malformed, expired, not yet valid, issued by another issuer or for another audience, signed with an unknown key or an unsupported algorithm, or whose signature is invalid",
            content_type = "application/problem+json", body = crate::openapi::ProblemDetails,
            headers(("WWW-Authenticate" = String, description = "`Bearer` when no token was sent, else `Bearer error=\"invalid_token\"`"))),
        (status = 503, description = "Identity's key set has not been loaded since the gateway started, so no token can be checked yet",
            content_type = "application/problem+json", body = crate::openapi::ProblemDetails,
            headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    ))]
pub(crate) async fn session(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let claims =
        match crate::proxy::authenticate(&state, request.headers(), AuthMode::Token, None).await {
            Ok(Some(c)) => c,
            // `AuthMode::Token` never answers `Ok(None)`; the same 401 as a missing token.
            Ok(None) => return crate::proxy::token_problem(&crate::auth::TokenError::Missing),
            Err(response) => return response,
        };
    let token = match crate::auth::bearer(request.headers().get(http::header::AUTHORIZATION)) {
        Ok(token) => token,
        Err(e) => return crate::proxy::token_problem(&e),
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
    let mut errors = BTreeMap::new();
    let profile = match profile {
        Ok(profile) => Some(profile),
        Err(e) => {
            errors.insert("profile".to_string(), e.describe());
            None
        }
    };
    let tenant_id = || claims.tid.as_ref().map(|t| json!({ "id": t }));
    let tenant = match tenant {
        Ok(Some(t)) => Some(t),
        Ok(None) => tenant_id(),
        Err(e) => {
            errors.insert("tenant".to_string(), e.describe());
            tenant_id()
        }
    };
    axum::Json(Session {
        errors,
        flags,
        profile,
        tenant,
        user: SessionUser {
            client_id: claims.client_id.clone(),
            expires_at: claims.exp,
            permissions: claims.permissions.clone(),
            roles: claims.roles.clone(),
            sub: claims.sub.clone(),
            tenant_id: claims.tid.clone(),
        },
    })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The typed session body is byte for byte what the `json!` body it replaced was (with
    /// serde_json's sorted object keys): same names, same order, `null` for missing values.
    #[test]
    fn the_session_body_is_the_json_it_replaced() {
        let mut flags = Map::new();
        flags.insert("frontend.x".into(), json!({"enabled": true}));
        let session = Session {
            errors: BTreeMap::from([("profile".to_string(), "status 403".to_string())]),
            flags,
            profile: None,
            tenant: Some(json!({"id": "t1"})),
            user: SessionUser {
                client_id: None,
                expires_at: 1_700_000_000,
                permissions: vec!["p".into()],
                roles: vec![],
                sub: "s".into(),
                tenant_id: Some("t1".into()),
            },
        };
        let before = json!({
            "errors": {"profile": "status 403"},
            "flags": {"frontend.x": {"enabled": true}},
            "profile": null,
            "tenant": {"id": "t1"},
            "user": {
                "client_id": null,
                "expires_at": 1_700_000_000,
                "permissions": ["p"],
                "roles": [],
                "sub": "s",
                "tenant_id": "t1",
            },
        });
        assert_eq!(
            serde_json::to_string(&session).unwrap(),
            serde_json::to_string(&before).unwrap()
        );
    }
}
