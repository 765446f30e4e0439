//! The compiled route table: validated once at start and on every reload, then swapped in
//! atomically, so requests in flight keep the table (and connection pool) they started with.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use cloud_kit::{LoopHeaderValue, PerEventLoop};
use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use url::Url;

use crate::breaker::Breaker;
use crate::config::{
    AuthMode, CanaryConfig, Config, CorsConfig, HeaderRules, RetryConfig, RouteConfig, Stickiness,
    TimeoutConfig,
};
use crate::ratelimit::Policy;
use crate::upstream::{PoolSettings, UpstreamPool};

/// Every problem found in a route table, each naming the route and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid route table:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct TableError(pub Vec<String>);

/// Who a route's flag is evaluated for: the verified token's tenant (`tid`) and user (`sub`),
/// and for a canary, which of them the split is sticky by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlagSubject<'a> {
    pub tenant: Option<&'a str>,
    pub user: Option<&'a str>,
    /// `Some` for a canary split: the unit that must always land on the same variant.
    pub stickiness: Option<Stickiness>,
}

/// Evaluates the flags routes refer to: a canary's variant and a route's gate. Implemented by
/// the feature-flag integration ([`crate::flags::FlagHooks`]); without one, canary routes use
/// their `stable` upstream and flag-gated routes answer 404.
pub trait VariantResolver: Send + Sync + std::fmt::Debug {
    /// The variant of `flag` for this subject; `None`, or a variant the route does not name,
    /// means `stable`.
    fn variant(&self, flag: &str, subject: &FlagSubject<'_>) -> Option<String>;
    /// Whether `flag` is on for this subject (routes with `flag:`).
    fn is_enabled(&self, flag: &str, subject: &FlagSubject<'_>) -> bool;
}

/// One upstream base: `scheme://authority/base-path`.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub authority: Authority,
    /// `authority` as the `Host` header sent upstream (a copy per event loop: every request
    /// clones it).
    pub host: LoopHeaderValue,
    /// Without a trailing `/`.
    pub base_path: String,
}

impl Upstream {
    fn parse(url: &Url) -> Result<Self, String> {
        if url.scheme() != "http" {
            return Err(format!(
                "`{url}`: only http:// upstreams are supported (TLS terminates at the gateway or a mesh)"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "`{url}`: an upstream may not have a query or fragment"
            ));
        }
        let host = url.host_str().ok_or_else(|| format!("`{url}`: no host"))?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let authority =
            Authority::try_from(authority.as_str()).map_err(|e| format!("`{url}`: {e}"))?;
        let host =
            HeaderValue::from_str(authority.as_str()).map_err(|e| format!("`{url}`: {e}"))?;
        Ok(Self {
            authority,
            host: LoopHeaderValue::new(&host),
            base_path: url.path().trim_end_matches('/').to_string(),
        })
    }
}

#[derive(Debug)]
pub struct Canary {
    pub flag: String,
    pub variants: HashMap<String, Upstream>,
    pub stickiness: Stickiness,
}

#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<HeaderValue>,
    pub allow_methods: HeaderValue,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub allow_credentials: bool,
    pub max_age: Option<HeaderValue>,
}

impl Cors {
    /// The value of `Access-Control-Allow-Origin` for this request's `Origin`, if allowed.
    pub fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        if self.any_origin {
            return Some(HeaderValue::from_static("*"));
        }
        self.origins
            .iter()
            .any(|o| o == origin)
            .then(|| origin.clone())
    }
}

#[derive(Debug, Default)]
pub struct CompiledHeaders {
    pub request_set: Vec<(HeaderName, HeaderValue)>,
    pub request_remove: Vec<HeaderName>,
    pub response_set: Vec<(HeaderName, HeaderValue)>,
    pub response_remove: Vec<HeaderName>,
}

#[derive(Debug)]
pub struct Route {
    /// Shared with the route's metric labels (a clone per request is no allocation).
    pub name: Arc<String>,
    pub prefix: String,
    pub upstreams: Vec<Upstream>,
    pub strip_prefix: bool,
    pub auth: AuthMode,
    pub permission: Option<String>,
    pub policy: Option<Policy>,
    pub timeouts: TimeoutConfig,
    pub retries: RetryConfig,
    pub breaker: Breaker,
    pub cors: Option<Cors>,
    pub headers: CompiledHeaders,
    pub max_body_bytes: u64,
    pub canary: Option<Canary>,
    /// Only requests for which this flag is on see the route; for the others it does not exist.
    pub flag: Option<String>,
    /// Keep-alive connections to the route's upstreams.
    pub pool: UpstreamPool<Body>,
    /// The round-robin position, kept per event loop: each loop rotates over the upstreams by
    /// itself, so no request writes a counter the other loop's core writes too.
    next: PerEventLoop<AtomicUsize>,
}

impl Route {
    /// The upstream for this request and the canary variant that chose it: the canary
    /// variant's upstream when the resolver picks a variant the route names, else `stable`
    /// (flag off or unknown, no resolver, or no tenant/user to be sticky by); routes without a
    /// canary take the next upstream round-robin.
    pub fn pick(
        &self,
        resolver: Option<&dyn VariantResolver>,
        tenant: Option<&str>,
        user: Option<&str>,
    ) -> (&Upstream, Option<&str>) {
        if let Some(canary) = &self.canary {
            let key = match canary.stickiness {
                Stickiness::Tenant => tenant,
                Stickiness::User => user,
            };
            let subject = FlagSubject {
                tenant,
                user,
                stickiness: Some(canary.stickiness),
            };
            // Without the sticky key there is nothing to be sticky by: stable, never random.
            let variant = resolver
                .filter(|_| key.is_some())
                .and_then(|r| r.variant(&canary.flag, &subject));
            if let Some((name, upstream)) = variant
                .as_deref()
                .and_then(|v| canary.variants.get_key_value(v))
            {
                return (upstream, Some(name.as_str()));
            }
            if let Some((name, stable)) = canary.variants.get_key_value(STABLE) {
                return (stable, Some(name.as_str()));
            }
        }
        let i = match self.upstreams.len() {
            0 | 1 => 0,
            n => self.next.get().fetch_add(1, Ordering::Relaxed) % n,
        };
        (
            &self.upstreams[i.min(self.upstreams.len().saturating_sub(1))],
            None,
        )
    }

    /// Whether the route's `flag` (if any) lets this request through. Without a resolver every
    /// flag is off, so a gated route stays hidden.
    pub fn gate_open(
        &self,
        resolver: Option<&dyn VariantResolver>,
        tenant: Option<&str>,
        user: Option<&str>,
    ) -> bool {
        let Some(flag) = &self.flag else {
            return true;
        };
        let subject = FlagSubject {
            tenant,
            user,
            stickiness: None,
        };
        resolver.is_some_and(|r| r.is_enabled(flag, &subject))
    }
}

/// The variant every canary must name: used when the flag is off, unknown or has no variant.
pub const STABLE: &str = "stable";

/// The whole table, longest prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

/// Headers the gateway itself sets; route rules may not set them.
const RESERVED: [&str; 8] = [
    "x-tenant-id",
    "x-user-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "traceparent",
    "x-request-id",
    "host",
];

impl RouteTable {
    pub fn compile(config: &Config) -> Result<Self, TableError> {
        let mut errors = Vec::new();
        let mut policies = HashMap::new();
        for (name, policy) in &config.rate_limits {
            match Policy::compile(name, policy) {
                Ok(p) => {
                    policies.insert(name.clone(), p);
                }
                Err(e) => errors.push(format!("rate_limits.{name}.{e}")),
            }
        }
        let mut routes = Vec::new();
        let mut prefixes: HashMap<&str, &str> = HashMap::new();
        for (name, route) in &config.routes {
            if let Some(other) = prefixes.insert(route.path_prefix.as_str(), name.as_str()) {
                errors.push(format!(
                    "routes.{name}.path_prefix: `{}` is also the prefix of route `{other}`",
                    route.path_prefix
                ));
            }
            match compile_route(name, route, &policies, config.server.max_body_bytes as u64) {
                Ok(r) => routes.push(Arc::new(r)),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(TableError(errors));
        }
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(Self { routes })
    }

    /// The route with the longest prefix matching `path`.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| {
            path.starts_with(r.prefix.as_str())
                || (r.prefix.ends_with('/') && path == &r.prefix[..r.prefix.len() - 1])
        })
    }

    /// Whether any route needs a token (and so the identity key set).
    pub fn needs_tokens(&self) -> bool {
        self.routes.iter().any(|r| r.auth != AuthMode::Public)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn names(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.name.as_str()).collect()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn compile_route(
    name: &str,
    config: &RouteConfig,
    policies: &HashMap<String, Policy>,
    default_max_body: u64,
) -> Result<Route, Vec<String>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, msg: String| errors.push(format!("routes.{name}.{field}: {msg}"));
    if !valid_name(name) {
        err(
            "(name)",
            "use lowercase letters, digits, `-` and `_` (environment overrides need it)".into(),
        );
    }
    if !config.path_prefix.starts_with('/') {
        err(
            "path_prefix",
            format!("`{}` must start with `/`", config.path_prefix),
        );
    }
    if config.path_prefix.contains(['?', '#', '*', ' ']) {
        err(
            "path_prefix",
            format!(
                "`{}` may not contain `?`, `#`, `*` or spaces",
                config.path_prefix
            ),
        );
    }
    if config.path_prefix.starts_with("/bff/") || config.path_prefix == cloud_kit::VERSION_PATH {
        err(
            "path_prefix",
            format!(
                "`{}` is reserved for the gateway's own endpoints",
                config.path_prefix
            ),
        );
    }
    let mut upstreams = Vec::new();
    if config.upstreams.is_empty() && config.canary.is_none() {
        err("upstreams", "at least one upstream is required".into());
    }
    for (i, url) in config.upstreams.iter().enumerate() {
        match Upstream::parse(url) {
            Ok(u) => upstreams.push(u),
            Err(e) => err(&format!("upstreams[{i}]"), e),
        }
    }
    match (config.auth, &config.permission) {
        (AuthMode::Permission, None) => {
            err("permission", "required when auth is `permission`".into())
        }
        (AuthMode::Permission, Some(p)) if p.trim().is_empty() => {
            err("permission", "may not be empty".into())
        }
        (AuthMode::Public | AuthMode::Token, Some(_)) => {
            err("permission", "only allowed with `auth: permission`".into())
        }
        _ => {}
    }
    let policy = match &config.rate_limit {
        None => None,
        Some(p) => match policies.get(p) {
            Some(policy) => Some(policy.clone()),
            None => {
                let known: Vec<&str> = policies.keys().map(String::as_str).collect();
                err(
                    "rate_limit",
                    format!(
                        "unknown policy `{p}` (known: {})",
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                None
            }
        },
    };
    if config.timeouts.connect.is_zero() {
        err("timeouts.connect", "must be more than 0".into());
    }
    if config.timeouts.request.is_zero() {
        err("timeouts.request", "must be more than 0".into());
    }
    if config.retries.attempts > 10 {
        err(
            "retries.attempts",
            format!("{} is more than 10", config.retries.attempts),
        );
    }
    if config.retries.attempts > 0 && config.retries.backoff.is_zero() {
        err(
            "retries.backoff",
            "must be more than 0 when retrying".into(),
        );
    }
    let cb = &config.circuit_breaker;
    if !(cb.error_ratio > 0.0 && cb.error_ratio <= 1.0) {
        err(
            "circuit_breaker.error_ratio",
            format!("{} is not in (0, 1]", cb.error_ratio),
        );
    }
    if cb.min_requests == 0 {
        err("circuit_breaker.min_requests", "must be at least 1".into());
    }
    if cb.open_for.is_zero() || cb.window.is_zero() {
        err(
            "circuit_breaker",
            "`window` and `open_for` must be more than 0".into(),
        );
    }
    let cors = match &config.cors {
        None => None,
        Some(c) => match compile_cors(c) {
            Ok(c) => Some(c),
            Err((field, e)) => {
                err(&format!("cors.{field}"), e);
                None
            }
        },
    };
    let headers = match compile_headers(&config.headers) {
        Ok(h) => h,
        Err((field, e)) => {
            err(&format!("headers.{field}"), e);
            CompiledHeaders::default()
        }
    };
    let canary = match &config.canary {
        None => None,
        Some(c) => match compile_canary(c) {
            Ok(c) => Some(c),
            Err((field, e)) => {
                err(&format!("canary.{field}"), e);
                None
            }
        },
    };
    if config.max_body_bytes == Some(0) {
        err("max_body_bytes", "must be more than 0".into());
    }
    if let Some(flag) = &config.flag
        && flag.trim().is_empty()
    {
        err(
            "flag",
            "may not be empty (omit it for an ungated route)".into(),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Route {
        name: Arc::new(name.to_string()),
        prefix: config.path_prefix.clone(),
        upstreams,
        strip_prefix: config.strip_prefix,
        auth: config.auth,
        permission: config.permission.clone(),
        policy,
        timeouts: config.timeouts.clone(),
        retries: config.retries.clone(),
        breaker: Breaker::new(config.circuit_breaker.clone()),
        cors,
        headers,
        max_body_bytes: config.max_body_bytes.unwrap_or(default_max_body),
        canary,
        flag: config.flag.clone(),
        pool: UpstreamPool::new(PoolSettings::new(config.timeouts.connect)),
        next: PerEventLoop::default(),
    })
}

fn joined(
    values: &[String],
    field: &'static str,
) -> Result<Option<HeaderValue>, (&'static str, String)> {
    if values.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&values.join(", "))
        .map(Some)
        .map_err(|_| {
            (
                field,
                "contains characters not allowed in a header".to_string(),
            )
        })
}

fn compile_cors(c: &CorsConfig) -> Result<Cors, (&'static str, String)> {
    if c.allowed_origins.is_empty() {
        return Err((
            "allowed_origins",
            "list at least one origin (or `*`)".into(),
        ));
    }
    let any_origin = c.allowed_origins.iter().any(|o| o == "*");
    if any_origin && c.allow_credentials {
        return Err((
            "allowed_origins",
            "`*` cannot be combined with allow_credentials".into(),
        ));
    }
    let mut origins = Vec::new();
    for o in c.allowed_origins.iter().filter(|o| *o != "*") {
        let parsed = Url::parse(o).map_err(|_| {
            (
                "allowed_origins",
                format!("`{o}` is not an origin like https://app.example.com"),
            )
        })?;
        if parsed.path() != "/" || o.ends_with('/') {
            return Err((
                "allowed_origins",
                format!("`{o}` must be scheme://host[:port] without a path"),
            ));
        }
        origins.push(HeaderValue::from_str(o).map_err(|_| {
            (
                "allowed_origins",
                format!("`{o}` is not a valid header value"),
            )
        })?);
    }
    let methods = if c.allowed_methods.is_empty() {
        vec![
            "GET".to_string(),
            "POST".to_string(),
            "PUT".to_string(),
            "PATCH".to_string(),
            "DELETE".to_string(),
        ]
    } else {
        c.allowed_methods.clone()
    };
    for m in &methods {
        http::Method::from_bytes(m.as_bytes())
            .map_err(|_| ("allowed_methods", format!("`{m}` is not an HTTP method")))?;
    }
    Ok(Cors {
        any_origin,
        origins,
        allow_methods: joined(&methods, "allowed_methods")?
            .unwrap_or(HeaderValue::from_static("GET")),
        allow_headers: joined(&c.allowed_headers, "allowed_headers")?,
        expose_headers: joined(&c.exposed_headers, "exposed_headers")?,
        allow_credentials: c.allow_credentials,
        max_age: c.max_age.map(|d| HeaderValue::from(d.as_secs())),
    })
}

fn compile_headers(rules: &HeaderRules) -> Result<CompiledHeaders, (&'static str, String)> {
    let name = |field: &'static str, n: &str| -> Result<HeaderName, (&'static str, String)> {
        let h = HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| (field, format!("`{n}` is not a header name")))?;
        if field.starts_with("request") && RESERVED.contains(&h.as_str()) {
            return Err((field, format!("`{n}` is set by the gateway itself")));
        }
        Ok(h)
    };
    let value = |field: &'static str, v: &str| {
        HeaderValue::from_str(v).map_err(|_| (field, format!("`{v}` is not a valid header value")))
    };
    let mut out = CompiledHeaders::default();
    for (n, v) in &rules.request_set {
        out.request_set
            .push((name("request_set", n)?, value("request_set", v)?));
    }
    for n in &rules.request_remove {
        out.request_remove.push(name("request_remove", n)?);
    }
    for (n, v) in &rules.response_set {
        out.response_set
            .push((name("response_set", n)?, value("response_set", v)?));
    }
    for n in &rules.response_remove {
        out.response_remove.push(name("response_remove", n)?);
    }
    Ok(out)
}

fn compile_canary(c: &CanaryConfig) -> Result<Canary, (&'static str, String)> {
    if c.flag.trim().is_empty() {
        return Err(("flag", "may not be empty".into()));
    }
    if !c.variants.contains_key(STABLE) {
        return Err((
            "variants",
            "must contain `stable` (used when the flag is off or unknown)".into(),
        ));
    }
    if c.variants.len() < 2 {
        return Err((
            "variants",
            "needs at least one variant besides `stable`".into(),
        ));
    }
    let mut variants = HashMap::new();
    for (name, url) in &c.variants {
        variants.insert(
            name.clone(),
            Upstream::parse(url).map_err(|e| ("variants", format!("{name}: {e}")))?,
        );
    }
    Ok(Canary {
        flag: c.flag.clone(),
        variants,
        stickiness: c.stickiness,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, yaml.as_bytes()).unwrap();
        Config::load(Some(f.path())).unwrap()
    }

    #[test]
    fn errors_name_the_route_and_field() {
        let c = config(
            "rate_limits: {std: {requests: 10, period: 1s}}\nroutes:\n  a:\n    path_prefix: api\n    upstreams: [https://x]\n    rate_limit: nope\n    circuit_breaker: {error_ratio: 1.5}\n  b:\n    path_prefix: /b/\n    auth: permission\n",
        );
        let err = RouteTable::compile(&c).unwrap_err().0.join("\n");
        for expected in [
            "routes.a.path_prefix: `api` must start with `/`",
            "routes.a.upstreams[0]: `https://x/`: only http://",
            "routes.a.rate_limit: unknown policy `nope` (known: std)",
            "routes.a.circuit_breaker.error_ratio: 1.5 is not in (0, 1]",
            "routes.b.upstreams: at least one upstream is required",
            "routes.b.permission: required when auth is `permission`",
        ] {
            assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
        }
    }

    #[tokio::test]
    async fn the_upstream_uri_keeps_path_and_query_and_applies_strip_prefix_and_base_path() {
        let c = config(
            "routes:\n  plain: {path_prefix: /, auth: public, upstreams: [\"http://up:1\"]}\n  stripped: {path_prefix: /api/, auth: public, strip_prefix: true, upstreams: [\"http://up:2/base/\"]}\n  kept: {path_prefix: /keep/, auth: public, upstreams: [\"http://up:3/base\"]}\n",
        );
        let table = RouteTable::compile(&c).unwrap();
        for (incoming, authority, path) in [
            ("/a/b?x=1&y=%20z", "up:1", "/a/b?x=1&y=%20z"),
            ("/", "up:1", "/"),
            ("/api/v1/x?q=1", "up:2", "/base/v1/x?q=1"),
            ("/api/", "up:2", "/base/"),
            ("/keep/it?q", "up:3", "/base/keep/it?q"),
        ] {
            let uri: http::Uri = incoming.parse().unwrap();
            let route = table.find(uri.path()).unwrap();
            let upstream = &route.upstreams[0];
            let forwarded = crate::proxy::upstream_uri(upstream, route, &uri).unwrap();
            // Origin form on a connection to the upstream, which `Host` names.
            assert_eq!(forwarded.to_string(), path, "for {incoming}");
            assert_eq!(upstream.authority.as_str(), authority, "for {incoming}");
            assert_eq!(upstream.host.get(), authority, "for {incoming}");
        }
    }

    #[tokio::test]
    async fn longest_prefix_wins() {
        let c = config(
            "routes:\n  a: {path_prefix: /api/, upstreams: [http://127.0.0.1:1]}\n  b: {path_prefix: /api/orders/, upstreams: [http://127.0.0.1:2]}\n",
        );
        let t = RouteTable::compile(&c).unwrap();
        assert_eq!(t.find("/api/orders/7").unwrap().name.as_str(), "b");
        assert_eq!(t.find("/api/x").unwrap().name.as_str(), "a");
        assert_eq!(t.find("/api").unwrap().name.as_str(), "a");
        assert!(t.find("/other").is_none());
    }

    #[test]
    fn canary_needs_a_stable_variant_and_reserved_headers_are_refused() {
        let c = config(
            "routes:\n  a:\n    path_prefix: /a/\n    canary: {flag: f, variants: {canary: http://127.0.0.1:1}}\n    headers: {request_set: {x-tenant-id: evil}}\n",
        );
        let err = RouteTable::compile(&c).unwrap_err().0.join("\n");
        assert!(
            err.contains("routes.a.canary.variants: must contain `stable`"),
            "{err}"
        );
        assert!(
            err.contains(
                "routes.a.headers.request_set: `x-tenant-id` is set by the gateway itself"
            ),
            "{err}"
        );
    }

    #[derive(Debug)]
    struct Fixed;
    impl VariantResolver for Fixed {
        fn variant(&self, _flag: &str, subject: &FlagSubject<'_>) -> Option<String> {
            (subject.tenant == Some("t-canary")).then(|| "canary".to_string())
        }
        fn is_enabled(&self, flag: &str, subject: &FlagSubject<'_>) -> bool {
            flag == "on-for-t1" && subject.tenant == Some("t1")
        }
    }

    #[tokio::test]
    async fn canary_picks_by_variant_and_falls_back_to_stable() {
        let c = config(
            "routes:\n  a:\n    path_prefix: /a/\n    canary: {flag: f, variants: {stable: http://127.0.0.1:1, canary: http://127.0.0.1:2}}\n",
        );
        let t = RouteTable::compile(&c).unwrap();
        let r = t.find("/a/x").unwrap();
        let pick = |resolver: Option<&dyn VariantResolver>, tenant| {
            let (upstream, variant) = r.pick(resolver, tenant, Some("u"));
            (upstream.authority.to_string(), variant.map(str::to_string))
        };
        assert_eq!(
            pick(Some(&Fixed), Some("t-canary")),
            ("127.0.0.1:2".into(), Some("canary".into()))
        );
        assert_eq!(
            pick(Some(&Fixed), Some("t-other")),
            ("127.0.0.1:1".into(), Some("stable".into()))
        );
        assert_eq!(
            pick(None, Some("t-canary")),
            ("127.0.0.1:1".into(), Some("stable".into()))
        );
        // Tenant stickiness without a tenant: stable, whatever the resolver would say.
        assert_eq!(
            pick(Some(&Fixed), None),
            ("127.0.0.1:1".into(), Some("stable".into()))
        );
    }

    #[tokio::test]
    async fn a_flag_gates_the_route_per_subject_and_is_closed_without_flags() {
        let c = config(
            "routes:\n  a: {path_prefix: /a/, upstreams: [http://127.0.0.1:1], flag: on-for-t1}\n  b: {path_prefix: /b/, upstreams: [http://127.0.0.1:1]}\n",
        );
        let t = RouteTable::compile(&c).unwrap();
        let a = t.find("/a/").unwrap();
        assert!(a.gate_open(Some(&Fixed), Some("t1"), Some("u")));
        assert!(!a.gate_open(Some(&Fixed), Some("t2"), Some("u")));
        assert!(!a.gate_open(None, Some("t1"), Some("u")));
        let b = t.find("/b/").unwrap();
        assert!(b.gate_open(None, None, None));
    }

    #[test]
    fn an_empty_gate_flag_is_refused() {
        let c = config(
            "routes:\n  a: {path_prefix: /a/, upstreams: [http://127.0.0.1:1], flag: \" \"}\n",
        );
        let err = RouteTable::compile(&c).unwrap_err().0.join("\n");
        assert!(err.contains("routes.a.flag: may not be empty"), "{err}");
    }
}
