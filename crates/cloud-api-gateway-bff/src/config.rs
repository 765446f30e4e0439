//! The gateway's typed configuration: defaults, then `--config FILE`, then the optional
//! `routes_file`, then `GATEWAY_*` variables.
//!
//! Routes and rate-limit policies are maps keyed by name, so that an environment variable can
//! override one field of one route: `GATEWAY_ROUTES__DEMO__UPSTREAMS='[http://10.0.0.7:8080]'`.
//! The semantic checks (known policy names, prefixes, ratios) live in [`crate::routes::RouteTable`]
//! and run at start and on every reload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cloud_kit::{ConfigError, ServerConfig, TelemetryConfig};
use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

/// Environment variables `GATEWAY_SECTION__KEY` override the file, e.g. `GATEWAY_SERVER__PORT`.
pub const ENV_PREFIX: &str = "GATEWAY";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub telemetry: TelemetryConfig,
    pub identity: IdentityConfig,
    /// Shared rate-limit state; without `url` limits are kept in-process.
    pub redis: RedisConfig,
    /// Named rate-limit policies that routes refer to.
    pub rate_limits: BTreeMap<String, RateLimitPolicyConfig>,
    /// The route table, keyed by route name (lowercase letters, digits, `-`, `_`).
    pub routes: BTreeMap<String, RouteConfig>,
    /// A YAML file holding more `routes:` and `rate_limits:`; read at start and on SIGHUP.
    pub routes_file: Option<PathBuf>,
    /// Backend-for-frontend endpoints.
    pub bff: BffConfig,
    /// Feature flags: an Unleash server, a bootstrap file, or neither (every flag off). They pick
    /// canary upstreams, gate routes and fill the `flags` of `GET /bff/v1/session`.
    pub flags: cloud_flags::FlagsConfig,
    /// The main config file this was loaded from, re-read on SIGHUP.
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
}

/// Where tokens come from, and how strictly they are checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// The identity provider's issuer; its discovery document lives under it and tokens must
    /// carry it as `iss`.
    #[serde(deserialize_with = "http_url")]
    pub issuer_url: Url,
    /// The `aud` every token must contain.
    pub audience: String,
    /// Skip discovery and use this key set URL.
    pub jwks_uri: Option<Url>,
    /// Tolerated clock difference for `exp`, `nbf` and `iat` (at most 5 minutes).
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// How often the key set is refreshed while it is healthy.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// An unknown `kid` refetches the key set at most this often.
    #[serde(with = "humantime_serde")]
    pub min_refetch_interval: Duration,
    /// Timeout of each discovery, key-set and userinfo call.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            issuer_url: local_identity(),
            audience: "cloud-platform".into(),
            jwks_uri: None,
            clock_skew: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(2),
        }
    }
}

/// An `http://` or `https://` URL with a host; the error quotes the value as written.
fn http_url<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Url, D::Error> {
    let text = String::deserialize(deserializer)?;
    let expected = &"an http:// or https:// URL with a host";
    match Url::parse(&text) {
        Ok(url)
            if matches!(url.scheme(), "http" | "https")
                && url.host().is_some()
                && !text.contains(char::is_whitespace) =>
        {
            Ok(url)
        }
        _ => Err(serde::de::Error::invalid_value(
            serde::de::Unexpected::Str(&text),
            expected,
        )),
    }
}

#[allow(clippy::expect_used)] // A constant literal, parsed in `default_config_is_valid`.
fn local_identity() -> Url {
    Url::parse("http://127.0.0.1:8081").expect("literal URL")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`; a secret (it may hold a password), never logged.
    pub url: Option<SecretString>,
    /// Longest wait for one rate-limit decision before falling back to in-process limits.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// After a failure, how long the in-process limiter is used before Redis is tried again.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Prefix of every key; keys look like `<prefix>:{<tenant>}:<policy>`.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout: Duration::from_millis(100),
            retry_after: Duration::from_secs(1),
            key_prefix: "gateway:rl".into(),
        }
    }
}

/// A GCRA policy: `requests` per `period`, with bursts of up to `burst` requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicyConfig {
    pub requests: u64,
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Defaults to `requests`.
    #[serde(default)]
    pub burst: Option<u64>,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No token needed (identity headers are still stripped).
    Public,
    /// Any valid token.
    #[default]
    Token,
    /// A valid token carrying the route's `permission`.
    Permission,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Requests whose path starts with this prefix use the route (longest prefix wins).
    pub path_prefix: String,
    /// One or more `http://host:port[/base]` upstreams, used round-robin.
    #[serde(default)]
    pub upstreams: Vec<Url>,
    /// Remove `path_prefix` from the path before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub auth: AuthMode,
    /// Required when `auth: permission`: a value of the token's `permissions` (or `scope`).
    #[serde(default)]
    pub permission: Option<String>,
    /// The name of a policy in `rate_limits`.
    #[serde(default)]
    pub rate_limit: Option<String>,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub retries: RetryConfig,
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    #[serde(default)]
    pub headers: HeaderRules,
    /// Largest request body; defaults to `server.max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Split traffic between two upstreams by a feature-flag variant.
    #[serde(default)]
    pub canary: Option<CanaryConfig>,
    /// Gate the route by this feature flag, evaluated for the request's tenant and user: when
    /// it is off the route answers 404 as if it did not exist.
    #[serde(default)]
    pub flag: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// TCP connect to the upstream.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Until the upstream's response headers arrive (the body then streams without a deadline).
    #[serde(with = "humantime_serde")]
    pub request: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(30),
        }
    }
}

/// Retries happen only for idempotent methods without a request body, on connection errors,
/// timeouts and 502/503/504.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Extra attempts after the first (0 = no retries).
    pub attempts: u32,
    /// First backoff; doubled on each retry, with jitter, up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 0,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    pub enabled: bool,
    /// Requests in the current window before the error ratio counts.
    pub min_requests: u32,
    /// Share of failed requests (connection errors, timeouts, 5xx) that opens the breaker.
    pub error_ratio: f64,
    /// The counting window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long the breaker stays open before one probe request is let through.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_requests: 20,
            error_ratio: 0.5,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`) or `*` (not allowed with credentials).
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub exposed_headers: Vec<String>,
    pub allow_credentials: bool,
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderRules {
    /// Set on the request sent upstream (identity and forwarding headers cannot be set here).
    pub request_set: BTreeMap<String, String>,
    pub request_remove: Vec<String>,
    /// Set on the response sent to the client.
    pub response_set: BTreeMap<String, String>,
    pub response_remove: Vec<String>,
}

/// `canary: { flag, variants: { stable: URL, canary: URL }, stickiness: tenant|user }`: the
/// flag's variant for the request picks the upstream; `stable` when the flag is off, unknown,
/// assigns no variant, or the request has no tenant (user) to be sticky by.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// The feature flag whose variant picks the upstream.
    pub flag: String,
    /// Upstream per variant name; must contain `stable`, used when the flag is off or unknown.
    pub variants: BTreeMap<String, Url>,
    #[serde(default)]
    pub stickiness: Stickiness,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stickiness {
    #[default]
    Tenant,
    User,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BffConfig {
    pub session: SessionConfig,
    /// Aggregation endpoints, keyed by name.
    pub aggregations: BTreeMap<String, AggregationConfig>,
}

/// `GET /bff/v1/session`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    pub enabled: bool,
    /// Deadline of each call the session makes (userinfo, tenant).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Optional tenant lookup; `{tenant}` is replaced by the token's `tid`.
    pub tenant_url: Option<String>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout: Duration::from_secs(1),
            tenant_url: None,
        }
    }
}

/// What an aggregation answers when some calls fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartialPolicy {
    /// Any failed call fails the whole aggregation (502/504).
    #[default]
    Fail,
    /// Failed optional calls are listed under `errors`; a failed `required` call fails it all.
    Allow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationConfig {
    /// Served at this exact path (GET), which must start with `/bff/`.
    pub path: String,
    #[serde(default)]
    pub auth: AuthMode,
    #[serde(default)]
    pub permission: Option<String>,
    #[serde(default)]
    pub partial: PartialPolicy,
    /// The calls, made concurrently; their JSON bodies appear under `data.<name>`.
    pub calls: BTreeMap<String, CallConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallConfig {
    pub url: Url,
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub required: bool,
}

fn default_call_timeout() -> Duration {
    Duration::from_secs(1)
}

/// The top-level keys a `routes_file` may hold.
const ROUTES_FILE_KEYS: [&str; 2] = ["routes", "rate_limits"];

impl Config {
    /// Loads defaults, then `file`, then `routes_file` (if set), then `GATEWAY_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            readable(path)?;
            figment = figment.merge(Yaml::file_exact(path));
        }
        let env = Env::prefixed(&format!("{ENV_PREFIX}_")).split("__");
        let routes_file: Option<PathBuf> = figment
            .clone()
            .merge(env.clone().only(&["routes_file"]))
            .extract_inner::<Option<PathBuf>>("routes_file")
            .ok()
            .flatten();
        if let Some(routes_file) = &routes_file {
            readable(routes_file)?;
            check_routes_file_keys(routes_file)?;
            figment = figment.merge(Yaml::file_exact(routes_file));
        }
        let mut config: Config = figment.merge(env).extract().map_err(invalid)?;
        config.source_file = file.map(Path::to_path_buf);
        Ok(config)
    }

    /// The config in `yaml` over the defaults, deserialized as [`Self::load`] does a file, but
    /// without `routes_file` or environment variables: for the config fuzz target
    /// (`fuzz/fuzz_targets/gateway_config.rs`) and tests.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, ConfigError> {
        Figment::new()
            .merge(Yaml::string(yaml))
            .extract()
            .map_err(invalid)
    }
}

fn invalid(err: figment::Error) -> ConfigError {
    let lines: Vec<String> = err
        .into_iter()
        .map(|e| format!("  - {}", describe(&e)))
        .collect();
    ConfigError::Invalid(lines.join("\n"))
}

fn readable(path: &Path) -> Result<(), ConfigError> {
    // figment treats a missing file as empty; a named file that cannot be read is an error.
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| ConfigError::Unreadable {
            path: path.display().to_string(),
            source,
        })
}

fn check_routes_file_keys(path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.display().to_string(),
        source,
    })?;
    let value: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| {
        ConfigError::Invalid(format!(
            "  - routes_file {}: not valid YAML: {e}",
            path.display()
        ))
    })?;
    match value {
        serde_yaml::Value::Null => Ok(()),
        serde_yaml::Value::Mapping(map) => {
            for key in map.keys() {
                let name = key.as_str().unwrap_or("(non-string key)");
                if !ROUTES_FILE_KEYS.contains(&name) {
                    return Err(ConfigError::Invalid(format!(
                        "  - {name}: not allowed in routes_file {} (only `routes` and `rate_limits`)",
                        path.display()
                    )));
                }
            }
            Ok(())
        }
        _ => Err(ConfigError::Invalid(format!(
            "  - routes_file {}: must be a mapping with `routes` and `rate_limits`",
            path.display()
        ))),
    }
}

fn describe(err: &figment::Error) -> String {
    let key = err.path.join(".");
    let source = err.metadata.as_ref().map(|m| match &m.source {
        Some(src) => format!("{} {src}", m.name),
        // Name the exact variable, e.g. GATEWAY_SERVER__PORT for server.port.
        None if m.name.contains("environment") && !key.is_empty() => {
            format!(
                "environment variable {ENV_PREFIX}_{}",
                key.to_uppercase().replace('.', "__")
            )
        }
        None => m.name.to_string(),
    });
    let key = if key.is_empty() {
        "(top level)".to_string()
    } else {
        key
    };
    match source {
        Some(source) => format!("{key}: {} (from {source})", err.kind),
        None => format!("{key}: {}", err.kind),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn default_config_is_valid() {
        let config = super::Config::default();
        assert_eq!(
            config.identity.issuer_url.as_str(),
            "http://127.0.0.1:8081/"
        );
        assert!(config.routes.is_empty());
        assert!(config.redis.url.is_none());
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn routes_come_from_the_main_file_and_the_routes_file() {
        let routes = file(
            "routes:\n  extra:\n    path_prefix: /extra/\n    upstreams: [http://127.0.0.1:1]\n",
        );
        let main = file(&format!(
            "routes_file: {}\nroutes:\n  demo:\n    path_prefix: /api/demo/\n    upstreams: [http://127.0.0.1:2]\n    auth: public\n",
            routes.path().display()
        ));
        let config = Config::load(Some(main.path())).unwrap();
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.routes["demo"].auth, AuthMode::Public);
        assert_eq!(config.routes["extra"].auth, AuthMode::Token);
    }

    #[test]
    fn a_routes_file_may_not_hold_other_sections() {
        let routes = file("server:\n  port: 1\n");
        let main = file(&format!("routes_file: {}\n", routes.path().display()));
        let err = Config::load(Some(main.path())).unwrap_err().to_string();
        assert!(err.contains("server: not allowed in routes_file"), "{err}");
    }

    #[test]
    fn a_config_text_is_read_like_a_file_without_env_or_routes_file() {
        let config = Config::from_yaml_str(
            "routes:\n  demo: {path_prefix: /api/demo/, upstreams: [http://127.0.0.1:2], auth: public}\n",
        )
        .unwrap();
        assert_eq!(config.routes["demo"].auth, AuthMode::Public);
        assert_eq!(config.identity.audience, "cloud-platform");
        let err =
            Config::from_yaml_str("routes:\n  demo: {path_prefix: /x/, upstream: http://a}\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("routes.demo") && err.contains("upstream"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_route_field_is_named() {
        let main = file("routes:\n  demo:\n    path_prefix: /x/\n    upstream: http://a\n");
        let err = Config::load(Some(main.path())).unwrap_err().to_string();
        assert!(
            err.contains("routes.demo") && err.contains("upstream"),
            "{err}"
        );
    }
}
