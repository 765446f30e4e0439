//! The reverse proxy: route lookup, CORS, authentication, rate limiting, circuit breaking, and
//! the streamed forward to the upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use cloud_kit::Problem;
use cloud_kit::trace_context::{RequestId, TraceContext};
use futures::FutureExt;
use futures::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rand::Rng;

use crate::auth::{Claims, Derived, TokenError};
use crate::config::{AuthMode, RetryConfig};
use crate::ratelimit::Decision;
use crate::routes::{CompiledHeaders, Route, RouteTable, Upstream};
use crate::{AppState, Outcome};

static X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded in either direction; `Connection` first.
fn hop_by_hop_headers() -> [&'static HeaderName; 9] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// The comma-separated tokens of `Connection` header values, trimmed.
fn connection_tokens<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
) -> impl Iterator<Item = &'a str> {
    values
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(&headers.get_all(header::CONNECTION))
            .any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Why the gateway could not get an answer from the upstream.
#[derive(Debug)]
enum ForwardError {
    Unreachable,
    Timeout,
    BodyTooLarge,
    BadGateway,
}

fn problem_response(problem: Problem) -> Response {
    problem.into_response()
}

fn not_found(path: &str) -> Problem {
    Problem::not_found(format!("no route for {path}"))
}

pub(crate) fn token_problem(err: &TokenError) -> Response {
    match err {
        TokenError::KeysUnavailable => Problem::service_unavailable(
            "the identity provider's keys are not loaded yet; retry shortly",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
        .into_response(),
        TokenError::Missing => Problem::unauthorized(err.to_string())
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
            .into_response(),
        _ => Problem::unauthorized(err.to_string())
            .with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            )
            .into_response(),
    }
}

/// Validates the request's token for `auth` (and `permission`); `Ok(None)` for public access.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    auth: AuthMode,
    permission: Option<&str>,
) -> Result<Option<Arc<Claims>>, Response> {
    if auth == AuthMode::Public {
        return Ok(None);
    }
    let authorization = headers.get(header::AUTHORIZATION);
    let validated = match state.validator.cached_bearer(authorization) {
        Some(validated) => validated,
        None => {
            let token = crate::auth::bearer(authorization).map_err(|e| token_problem(&e))?;
            state.validator.validate(token).await
        }
    };
    let claims = validated.map_err(|e| {
        state.metrics.auth_failures.inc();
        token_problem(&e)
    })?;
    if let Some(permission) = permission.filter(|_| auth == AuthMode::Permission)
        && !claims.has_permission(permission)
    {
        return Err(
            Problem::forbidden(format!("the token lacks the permission `{permission}`"))
                .with_header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
                )
                .into_response(),
        );
    }
    Ok(Some(claims))
}

/// Every path that is not one of the gateway's own, as a plain service (the router's fallback)
/// rather than an axum handler, whose machinery (extractors, a boxed future of its own, the
/// response mapping) costs another copy of this large future per request.
#[derive(Clone)]
pub(crate) struct ProxyService(pub(crate) Arc<AppState>);

impl tower::Service<Request> for ProxyService {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        Box::pin(handle_owned(self.0.clone(), request).map(Ok))
    }
}

/// The proxy as the server's direct handler (`Server::with_direct_fallback`): one per event
/// loop, made on its thread.
pub(crate) fn direct_handler(state: Arc<AppState>) -> cloud_kit::http_layers::DirectHandler {
    let local = Arc::new(EventLoopState {
        table: Mutex::new(LoopTable::current(&state)),
        app: state,
    });
    Arc::new(move |request| {
        let local = local.clone();
        Box::pin(async move {
            let table = local.table();
            handle(&local.app, &table, request).await
        })
    })
}

/// What one event loop's requests clone, so that no reference count they write is written by
/// the other loop's core too: the loop's own `Arc` of this, and of the route table as the loop
/// last saw it. A contended atomic costs 35 to 80 ns here (`bench/gateway/cacheline.sh`), and
/// the shared `Arc`s of the state, the table and the route were six per request.
struct EventLoopState {
    app: Arc<AppState>,
    table: Mutex<Arc<LoopTable>>,
}

/// The route table, wrapped once per event loop and per reload.
struct LoopTable(Arc<RouteTable>);

impl LoopTable {
    fn current(state: &AppState) -> Arc<Self> {
        Arc::new(Self(state.table.load_full()))
    }
}

impl EventLoopState {
    /// The current route table: the loop's wrapper until a reload swaps the table.
    fn table(&self) -> Arc<LoopTable> {
        // A load borrows the table without touching its reference count (arc-swap keeps the
        // borrow in a slot of this thread's).
        let current = self.app.table.load();
        let mut cached = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&cached.0, &current) {
            *cached = Arc::new(LoopTable(arc_swap::Guard::into_inner(current)));
        }
        cached.clone()
    }
}

/// The proxy for requests that reach it through the router (its fallback).
fn handle_owned(state: Arc<AppState>, request: Request) -> BoxFuture<'static, Response> {
    Box::pin(async move {
        let table = LoopTable::current(&state);
        handle(&state, &table, request).await
    })
}

async fn handle(state: &AppState, table: &LoopTable, request: Request) -> Response {
    let Some(route) = table.0.find(request.uri().path()) else {
        return problem_response(not_found(request.uri().path()));
    };
    let origin = request.headers().get(header::ORIGIN).cloned();
    if let Some(cors) = &route.cors
        && request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut response = StatusCode::NO_CONTENT.into_response();
        if let Some(allow) = cors.allow_origin(origin.as_ref()) {
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                cors.allow_methods.clone(),
            );
            if let Some(v) = &cors.allow_headers {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            }
            if let Some(v) = &cors.max_age {
                h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
            }
            if cors.allow_credentials {
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        return response;
    }
    let mut response = proxy(state, route, request).await;
    if let Some(cors) = &route.cors
        && let Some(allow) = cors.allow_origin(origin.as_ref())
    {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if let Some(v) = &cors.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        if cors.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    let h = response.headers_mut();
    for (name, value) in &route.headers.response_set {
        h.insert(name.clone(), value.clone());
    }
    for name in &route.headers.response_remove {
        h.remove(name);
    }
    h.entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("DENY"));
    h.entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("no-referrer"));
    response
}

fn ratelimit_headers(headers: &mut HeaderMap, limit: &HeaderValue, decision: &Decision) {
    headers.insert(RATELIMIT_LIMIT.clone(), limit.clone());
    headers.insert(RATELIMIT_REMAINING.clone(), number(decision.remaining));
    headers.insert(RATELIMIT_RESET.clone(), number(ceil_secs(decision.reset)));
}

/// Numbers below this come from a table instead of a fresh allocation per header.
const SMALL_NUMBERS: usize = 1024;

/// The decimal digits of `n` from a table built once, for `n` below [`SMALL_NUMBERS`].
pub(crate) fn static_digits(n: u64) -> Option<&'static str> {
    static TABLE: LazyLock<Vec<String>> =
        LazyLock::new(|| (0..SMALL_NUMBERS).map(|n| n.to_string()).collect());
    usize::try_from(n)
        .ok()
        .and_then(|i| TABLE.get(i))
        .map(String::as_str)
}

/// `n` as a header value.
fn number(n: u64) -> HeaderValue {
    static_digits(n).map_or_else(|| HeaderValue::from(n), HeaderValue::from_static)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

async fn proxy(state: &AppState, route: &Route, request: Request) -> Response {
    let claims = match authenticate(
        state,
        request.headers(),
        route.auth,
        route.permission.as_deref(),
    )
    .await
    {
        Ok(c) => c,
        Err(response) => return response,
    };
    // A route gated by a flag that is off for this tenant/user does not exist for them: the same
    // 404 as an unmatched path (no fall-through to a shorter prefix, whose upstream never served
    // these paths), checked before the rate limit so hidden routes spend no quota.
    if !route.gate_open(
        state.variants.as_deref(),
        claims.as_deref().and_then(|c| c.tid.as_deref()),
        claims.as_deref().map(|c| c.sub.as_str()),
    ) {
        return problem_response(not_found(request.uri().path()));
    }
    let client_ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let mut limited = None;
    if let Some(policy) = &route.policy {
        let anonymous;
        let key = match claims.as_deref() {
            Some(c) => c.derived.rate_limit_key.as_str(),
            None => {
                anonymous =
                    client_ip.map_or_else(|| "anonymous".to_string(), |ip| format!("ip:{ip}"));
                anonymous.as_str()
            }
        };
        let decision = state.limiter.check(key, policy).await;
        if !decision.allowed {
            let mut response = Problem::new(StatusCode::TOO_MANY_REQUESTS)
                .with_detail(format!(
                    "the rate limit `{}` is exhausted; retry later",
                    policy.name
                ))
                .with_header(
                    header::RETRY_AFTER,
                    HeaderValue::from(ceil_secs(decision.retry_after).max(1)),
                )
                .into_response();
            ratelimit_headers(response.headers_mut(), policy.limit_header.get(), &decision);
            return response;
        }
        limited = Some((policy.limit_header.get(), decision));
    }
    let permit = match route.breaker.acquire() {
        Ok(p) => p,
        Err(retry_after) => {
            state
                .metrics
                .upstream(&route.name, Outcome::Failed("circuit_open"));
            return Problem::service_unavailable(format!(
                "the upstream of route `{}` is failing; its circuit breaker is open",
                route.name
            ))
            .with_header(
                header::RETRY_AFTER,
                HeaderValue::from(ceil_secs(retry_after).max(1)),
            )
            .into_response();
        }
    };
    let outcome = forward(state, route, request, claims.as_deref(), client_ip).await;
    let mut response = match outcome {
        Ok(response) => {
            permit.record(!response.status().is_server_error());
            state
                .metrics
                .upstream(&route.name, Outcome::Status(response.status()));
            response
        }
        Err(err) => {
            let (label, problem) = match err {
                ForwardError::Unreachable => (
                    "unreachable",
                    Problem::new(StatusCode::BAD_GATEWAY).with_detail(format!(
                        "the upstream of route `{}` is unreachable",
                        route.name
                    )),
                ),
                ForwardError::BadGateway => (
                    "bad_gateway",
                    Problem::new(StatusCode::BAD_GATEWAY).with_detail(format!(
                        "the upstream of route `{}` failed to answer",
                        route.name
                    )),
                ),
                ForwardError::Timeout => (
                    "timeout",
                    Problem::new(StatusCode::GATEWAY_TIMEOUT).with_detail(format!(
                        "the upstream of route `{}` did not answer in time",
                        route.name
                    )),
                ),
                ForwardError::BodyTooLarge => (
                    "body_too_large",
                    Problem::new(StatusCode::PAYLOAD_TOO_LARGE).with_detail(format!(
                        "the request body exceeds {} bytes",
                        route.max_body_bytes
                    )),
                ),
            };
            // A body that was too large is the client's fault, not the upstream's.
            permit.record(matches!(err, ForwardError::BodyTooLarge));
            state.metrics.upstream(&route.name, Outcome::Failed(label));
            problem.into_response()
        }
    };
    if let Some((limit, decision)) = limited {
        ratelimit_headers(response.headers_mut(), limit, &decision);
    }
    response
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

pub(crate) fn upstream_uri(upstream: &Upstream, route: &Route, uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    let rest = if route.strip_prefix {
        path.strip_prefix(route.prefix.trim_end_matches('/'))
            .unwrap_or(path)
    } else {
        path
    };
    let path_and_query = if upstream.base_path.is_empty() && rest.len() == path.len() {
        // The path is forwarded as it came (the common case): share its bytes, no copy.
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    } else {
        let slash = if rest.starts_with('/') { "" } else { "/" };
        let joined = match uri.query() {
            Some(q) => format!("{}{slash}{rest}?{q}", upstream.base_path),
            None => format!("{}{slash}{rest}", upstream.base_path),
        };
        PathAndQuery::try_from(joined).ok()?
    };
    // Origin form: the connection is to the upstream already, and `Host` names it.
    Some(Uri::from(path_and_query))
}

/// What becomes of a client's request header on its way upstream.
#[derive(Debug, PartialEq, Eq)]
enum Inbound {
    Keep,
    /// Hop-by-hop (RFC 9110 §7.6.1), or one the gateway sets itself: identity, forwarding and
    /// trace headers, which a client could otherwise spoof.
    Drop,
    /// Kept, with the client's address appended.
    ForwardedFor,
}

/// One `match` on the name, which compiles to a switch on its length and a comparison or two:
/// comparing each header with every name in turn was most of what building the upstream
/// headers cost (`bench/gateway/instructions.sh`). It repeats the names of
/// [`hop_by_hop_headers`] rather than asking [`hop_by_hop_index`] first, which measured 200
/// instructions more per request; a test keeps the two lists the same.
fn inbound(name: &HeaderName) -> Inbound {
    match name.as_str() {
        "connection"
        | "keep-alive"
        | "proxy-connection"
        | "proxy-authenticate"
        | "proxy-authorization"
        | "te"
        | "trailer"
        | "transfer-encoding"
        | "upgrade"
        | "x-tenant-id"
        | "x-user-id"
        | "x-forwarded-proto"
        | "x-forwarded-host"
        | "forwarded"
        | "traceparent"
        | "x-request-id" => Inbound::Drop,
        "x-forwarded-for" => Inbound::ForwardedFor,
        _ => Inbound::Keep,
    }
}

/// The headers sent upstream, made from the client's in place (it has most of them already):
/// minus hop-by-hop, spoofable identity and forwarding headers, plus the gateway's own, then
/// the route's rules. The client's `Host` is left for the caller to replace with the
/// upstream's: removing it here would cost a removal per request for nothing.
fn upstream_headers(
    parts: &mut http::request::Parts,
    rules: &CompiledHeaders,
    identity: Option<&Derived>,
    client_ip: Option<std::net::IpAddr>,
    upgrade: bool,
) -> HeaderMap {
    let mut headers = std::mem::take(&mut parts.headers);
    let forwarded_host = headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let upgrade_to = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // Allocated only for a client that sent something to drop.
    let mut dropped: Vec<HeaderName> = Vec::new();
    let mut forwarded_for: Option<String> = None;
    for (name, value) in &headers {
        match inbound(name) {
            Inbound::Keep => {}
            Inbound::Drop => {
                if !dropped.contains(name) {
                    dropped.push(name.clone());
                }
            }
            Inbound::ForwardedFor => {
                if let Ok(v) = value.to_str() {
                    forwarded_for =
                        Some(forwarded_for.map_or_else(|| v.to_string(), |f| format!("{f}, {v}")));
                }
            }
        }
    }
    // Headers named in `Connection` are hop-by-hop too.
    let listed: Vec<HeaderName> = if dropped.contains(&header::CONNECTION) {
        connection_tokens(&headers.get_all(header::CONNECTION))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    for name in dropped.iter().chain(&listed) {
        headers.remove(name);
    }
    let forwarded_for = match (forwarded_for, client_ip) {
        (Some(f), Some(ip)) => HeaderValue::from_str(&format!("{f}, {ip}")).ok(),
        (Some(f), None) => HeaderValue::from_str(&f).ok(),
        (None, Some(ip)) => Some(ip_header(ip)),
        (None, None) => None,
    };
    headers.reserve(8);
    match forwarded_for {
        Some(v) => headers.insert(X_FORWARDED_FOR.clone(), v),
        None => headers.remove(&X_FORWARDED_FOR),
    };
    // Appended rather than inserted: the loop above removed every client value of these names,
    // and an append skips looking for one (about 100 instructions per request).
    headers.append(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = forwarded_host {
        headers.append(X_FORWARDED_HOST.clone(), host);
    }
    if let Some(trace) = parts.extensions.get::<TraceContext>()
        && let Ok(v) = HeaderValue::from_bytes(&trace.child_traceparent_bytes())
    {
        headers.append(cloud_kit::trace_context::TRACEPARENT.clone(), v);
    }
    if let Some(id) = parts.extensions.get::<RequestId>() {
        headers.append(
            cloud_kit::trace_context::REQUEST_ID.clone(),
            id.header_value().clone(),
        );
    }
    if let Some(identity) = identity {
        if let Some(v) = &identity.tenant_header {
            headers.append(X_TENANT_ID.clone(), v.clone());
        }
        if let Some(v) = &identity.user_header {
            headers.append(X_USER_ID.clone(), v.clone());
        }
    }
    for name in &rules.request_remove {
        headers.remove(name);
    }
    for (name, value) in &rules.request_set {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(upgrade_to) = upgrade_to {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade_to);
    }
    headers
}

/// The client's address as a header value. An IPv4 address is written by hand: `Display` goes
/// through the formatting machinery, about 1,000 instructions per request, a fifth of what
/// building the upstream headers costs (`bench/gateway/instructions.sh`).
fn ip_header(ip: std::net::IpAddr) -> HeaderValue {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                len += write_octet(octet, &mut buf[len..]);
            }
            header_value_of(&buf[..len])
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let mut buf = [0u8; 64];
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            // An IPv6 address is at most 45 characters: it always fits.
            let _ = write!(cursor, "{v6}");
            let len = usize::try_from(cursor.position()).unwrap_or(0);
            header_value_of(&buf[..len])
        }
    }
}

/// Writes `octet` in decimal at the start of `out` (at least 3 bytes); returns the length.
fn write_octet(octet: u8, out: &mut [u8]) -> usize {
    let digits = [octet / 100, octet / 10 % 10, octet % 10];
    let skip = if octet >= 100 {
        0
    } else if octet >= 10 {
        1
    } else {
        2
    };
    for (slot, digit) in out.iter_mut().zip(&digits[skip..]) {
        *slot = b'0' + digit;
    }
    3 - skip
}

fn header_value_of(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

async fn forward(
    state: &AppState,
    route: &Route,
    request: Request,
    claims: Option<&Claims>,
    client_ip: Option<std::net::IpAddr>,
) -> Result<Response, ForwardError> {
    let (mut parts, body) = request.into_parts();
    let upgrade = is_upgrade(&parts.headers);
    let client_upgrade = if upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        && len > route.max_body_bytes
    {
        return Err(ForwardError::BodyTooLarge);
    }
    let with_body = has_body(&parts.headers);
    let mut headers = Some(upstream_headers(
        &mut parts,
        &route.headers,
        claims.map(|c| &c.derived),
        client_ip,
        upgrade,
    ));
    let attempts = if idempotent(&parts.method) && !with_body && !upgrade {
        1 + route.retries.attempts
    } else {
        1
    };
    let mut body = Some(if with_body {
        Body::new(http_body_util::Limited::new(
            body,
            usize::try_from(route.max_body_bytes).unwrap_or(usize::MAX),
        ))
    } else {
        Body::empty()
    });
    let mut last_err = ForwardError::Unreachable;
    // `timeouts.request` bounds what the client waits for response headers, retries included:
    // a retry starts only if its backoff ends before the deadline, and gets what is left.
    let deadline = tokio::time::Instant::now() + route.timeouts.request;
    let mut backoff = Duration::ZERO;
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(backoff).await;
        }
        let (upstream, variant) = route.pick(
            state.variants.as_deref(),
            claims.and_then(|c| c.tid.as_deref()),
            claims.map(|c| c.sub.as_str()),
        );
        if attempt == 0
            && let Some(variant) = variant
        {
            state.metrics.canary(&route.name, variant);
        }
        let Some(uri) = upstream_uri(upstream, route, &parts.uri) else {
            return Err(ForwardError::BadGateway);
        };
        let mut outgoing = http::Request::new(body.take().unwrap_or_else(Body::empty));
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.uri_mut() = uri;
        // Copied only while another attempt may need them.
        *outgoing.headers_mut() = if attempt + 1 < attempts {
            headers.clone().unwrap_or_default()
        } else {
            headers.take().unwrap_or_default()
        };
        // The pool sends requests as they are: `Host` names the upstream (built once per upstream).
        outgoing
            .headers_mut()
            .insert(header::HOST, upstream.host.get().clone());
        let result =
            tokio::time::timeout_at(deadline, route.pool.send(&upstream.authority, outgoing)).await;
        // Worked out only when another attempt may follow: the jitter draws a random number.
        let last = attempt + 1 == attempts || {
            backoff = retry_backoff(&route.retries, attempt + 1);
            tokio::time::Instant::now() + backoff >= deadline
        };
        match result {
            Err(_) => last_err = ForwardError::Timeout,
            Ok(Err(err)) => {
                if is_length_limit(&err) {
                    return Err(ForwardError::BodyTooLarge);
                }
                tracing::debug!(route = %route.name, error = %err, "upstream request failed");
                last_err = if err.is_connect() {
                    ForwardError::Unreachable
                } else {
                    ForwardError::BadGateway
                };
            }
            Ok(Ok(mut response)) => {
                let retryable = matches!(
                    response.status(),
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                );
                if retryable && !last {
                    continue;
                }
                if response.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(client_upgrade) = client_upgrade
                {
                    let upstream_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(async move {
                        match tokio::try_join!(client_upgrade, upstream_upgrade) {
                            Ok((client, upstream)) => {
                                let _ = tokio::io::copy_bidirectional(
                                    &mut TokioIo::new(client),
                                    &mut TokioIo::new(upstream),
                                )
                                .await;
                            }
                            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                        }
                    });
                    let (mut parts, _) = response.into_parts();
                    let keep_upgrade = parts.headers.get(header::UPGRADE).cloned();
                    strip_response_headers(&mut parts.headers);
                    parts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    if let Some(v) = keep_upgrade {
                        parts.headers.insert(header::UPGRADE, v);
                    }
                    return Ok(Response::from_parts(parts, Body::empty()));
                }
                let (mut parts, incoming) = response.into_parts();
                strip_response_headers(&mut parts.headers);
                return Ok(Response::from_parts(parts, Body::new(incoming)));
            }
        }
        if last {
            break;
        }
    }
    Err(last_err)
}

/// The wait before retry number `retry` (1 = the first): doubled each time up to
/// `max_backoff`, with jitter so that clients do not retry in lockstep.
fn retry_backoff(retries: &RetryConfig, retry: u32) -> Duration {
    let base = retries
        .backoff
        .saturating_mul(1 << retry.saturating_sub(1).min(16))
        .min(retries.max_backoff);
    base.mul_f64(rand::rng().random_range(0.5..1.0))
}

/// Where `name` is in [`hop_by_hop_headers`], by one `match` rather than nine comparisons.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

fn strip_response_headers(headers: &mut HeaderMap) {
    // One pass to find out which are there, without allocating: most responses carry only
    // `Connection: keep-alive`, if anything.
    let hop_by_hop = hop_by_hop_headers();
    let mut present = [false; 9];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
        }
    }
    if present == [false; 9] {
        return;
    }
    let mut connection = headers.get_all(header::CONNECTION).iter();
    let only_an_option = matches!(
        (connection.next(), connection.next()),
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"keep-alive")
            || v.as_bytes().eq_ignore_ascii_case(b"close")
    );
    if only_an_option && present[1..] == [false; 8] {
        // The usual case: a single `Connection: keep-alive` (or `close`), which names no header.
        headers.remove(header::CONNECTION);
        return;
    }
    if present[0] {
        // The names `Connection` lists, removed by name as spelled: most are options
        // (`keep-alive`, `close`) rather than headers, and a `HeaderName` each would be an
        // allocation for nothing. The values are cloned (their bytes are shared) so that the map
        // can change meanwhile; a second `Connection` line is rare, and only it allocates.
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let more: Vec<HeaderValue> = values.cloned().collect();
        for name in connection_tokens(first.iter().chain(&more)) {
            if !name.eq_ignore_ascii_case("close") && !name.eq_ignore_ascii_case("keep-alive") {
                headers.remove(name);
            }
        }
    }
    for (name, _) in hop_by_hop.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(*name);
    }
}

fn is_length_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_spoofable_and_trace_headers_are_dropped_on_the_way_upstream() {
        for name in hop_by_hop_headers() {
            assert_eq!(inbound(name), Inbound::Drop, "{name}");
        }
        for name in [
            &header::FORWARDED,
            &X_TENANT_ID,
            &X_USER_ID,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &cloud_kit::trace_context::TRACEPARENT,
            &cloud_kit::trace_context::REQUEST_ID,
        ] {
            assert_eq!(inbound(name), Inbound::Drop, "{name}");
        }
        assert_eq!(inbound(&X_FORWARDED_FOR), Inbound::ForwardedFor);
        assert_eq!(inbound(&header::AUTHORIZATION), Inbound::Keep);
        // Replaced by the caller with the upstream's.
        assert_eq!(inbound(&header::HOST), Inbound::Keep);
        assert_eq!(inbound(&HeaderName::from_static("x-custom")), Inbound::Keep);
    }

    #[test]
    fn upstream_headers_keep_the_clients_and_set_the_gateways() {
        let request = http::Request::get("/api/x")
            .header(header::HOST, "gateway.example")
            .header(header::AUTHORIZATION, "Bearer t")
            .header("x-custom", "kept")
            .header(header::CONNECTION, "keep-alive, x-secret-hop")
            .header("x-secret-hop", "dropped")
            .header(header::TE, "trailers")
            .header("x-tenant-id", "spoofed")
            .header("x-forwarded-host", "spoofed.example")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-for", "198.51.100.1")
            .header("x-strip-me", "by the route")
            .body(())
            .unwrap();
        let (mut parts, ()) = request.into_parts();
        let rules = CompiledHeaders {
            request_set: vec![(
                HeaderName::from_static("x-route"),
                HeaderValue::from_static("set"),
            )],
            request_remove: vec![HeaderName::from_static("x-strip-me")],
            ..CompiledHeaders::default()
        };
        let identity = Derived {
            tenant_header: Some(HeaderValue::from_static("tenant-a")),
            user_header: Some(HeaderValue::from_static("user-1")),
            rate_limit_key: "tenant:tenant-a".into(),
        };
        let ip = Some(std::net::IpAddr::from([10, 0, 0, 42]));
        let h = upstream_headers(&mut parts, &rules, Some(&identity), ip, false);
        let values = |name: &str| {
            h.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(values("authorization"), ["Bearer t"]);
        assert_eq!(values("x-custom"), ["kept"]);
        assert_eq!(values("x-tenant-id"), ["tenant-a"]);
        assert_eq!(values("x-user-id"), ["user-1"]);
        assert_eq!(values("x-forwarded-host"), ["gateway.example"]);
        assert_eq!(values("x-forwarded-proto"), ["http"]);
        assert_eq!(
            values("x-forwarded-for"),
            ["203.0.113.7, 198.51.100.1, 10.0.0.42"]
        );
        assert_eq!(values("x-route"), ["set"]);
        for gone in ["connection", "x-secret-hop", "te", "x-strip-me"] {
            assert!(values(gone).is_empty(), "{gone} went upstream: {h:?}");
        }
        // The caller sets the upstream's own `Host` over the client's.
        assert_eq!(values("host"), ["gateway.example"]);

        // An upgrade keeps its `Connection: upgrade` and `Upgrade`; no token, no identity.
        let (mut parts, ()) = http::Request::get("/ws")
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header("x-user-id", "spoofed")
            .body(())
            .unwrap()
            .into_parts();
        let h = upstream_headers(&mut parts, &CompiledHeaders::default(), None, None, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert!(h.get("x-user-id").is_none() && h.get("x-forwarded-for").is_none());
    }

    #[test]
    fn ipv4_addresses_are_written_like_display_does() {
        for octets in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [9, 10, 99, 100],
            [255, 255, 255, 255],
        ] {
            let ip = std::net::IpAddr::from(octets);
            assert_eq!(ip_header(ip).to_str().unwrap(), ip.to_string());
        }
        let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_header(v6).to_str().unwrap(), "2001:db8::1");
    }

    #[test]
    fn response_hop_by_hop_headers_and_those_connection_lists_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("close, x-other-hop"),
        );
        h.insert(KEEP_ALIVE.clone(), HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-other-hop", HeaderValue::from_static("2"));
        h.insert("x-end-to-end", HeaderValue::from_static("3"));
        strip_response_headers(&mut h);
        let mut left = h.keys().map(HeaderName::as_str).collect::<Vec<_>>();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-end-to-end"]);

        for (i, name) in hop_by_hop_headers().into_iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        // The usual case, a lone `Connection: keep-alive` or `close`, and what is not it.
        for (connection, left) in [
            ("keep-alive", vec!["x-end-to-end"]),
            ("Close", vec!["x-end-to-end"]),
            ("x-end-to-end", vec![]),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(connection));
            h.insert("x-end-to-end", HeaderValue::from_static("3"));
            strip_response_headers(&mut h);
            assert_eq!(
                h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
                left,
                "Connection: {connection}"
            );
        }
    }

    #[test]
    fn only_idempotent_methods_retry() {
        assert!(idempotent(&Method::GET) && idempotent(&Method::PUT));
        assert!(!idempotent(&Method::POST) && !idempotent(&Method::PATCH));
    }
}
