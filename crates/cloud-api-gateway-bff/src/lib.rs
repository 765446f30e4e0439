//! `cloud-api-gateway-bff`: the authenticating, tenant-aware gateway and backend-for-frontend.
//!
//! A library with [`build`] and [`Application::run_until_stopped`], so that the binary, `cloudctl
//! up` and the tests all start exactly the same service. See `docs/gateway.md` for the config.

pub mod auth;
pub mod bff;
pub mod breaker;
pub mod config;
pub mod demo;
pub mod flags;
pub mod openapi;
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod upstream;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::routing::get;
use cloud_kit::metrics::ShardedCounter;
use cloud_kit::{EventLoops, Metrics, Readiness, Server, ServerError, Shutdown, SystemClock};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

pub use config::Config;
pub use flags::FlagHooks;
pub use routes::{FlagSubject, RouteTable, TableError, VariantResolver};

use crate::auth::Validator;
use crate::bff::{Aggregation, FrontendFlags};
use crate::config::SessionConfig;
use crate::ratelimit::{LimiterMetrics, RateLimiter, RedisUrlError};

pub const SERVICE_NAME: &str = "cloud-api-gateway-bff";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Routes(#[from] TableError),
    #[error("invalid configuration: {0}")]
    Redis(#[from] RedisUrlError),
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<String>),
    #[error("cannot start the feature-flag client (config section `flags`): {0}")]
    Flags(#[from] cloud_flags::FlagError),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    route: Arc<String>,
    outcome: Cow<'static, str>,
}

/// [`UpstreamLabels`] borrowed, to look a counter up without cloning the route name's `Arc`:
/// both event loops share it, and a clone is two contended atomics per request. Hashes as
/// `UpstreamLabels` does (the same fields in the same order, each hashing as a `str`).
#[derive(Hash)]
struct UpstreamKey<'a> {
    route: &'a str,
    outcome: &'a str,
}

impl cloud_kit::metrics::Equivalent<UpstreamLabels> for UpstreamKey<'_> {
    fn equivalent(&self, labels: &UpstreamLabels) -> bool {
        self.route == labels.route.as_str() && self.outcome == labels.outcome
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CanaryLabels {
    route: String,
    variant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: String,
}

/// The gateway's own metrics, next to cloud-kit's RED metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct GatewayMetrics {
    upstream_requests: Family<UpstreamLabels, ShardedCounter>,
    /// Counted once per proxied request: see [`cloud_kit::metrics::Handles`].
    upstream_handles: Arc<cloud_kit::metrics::Handles<UpstreamLabels, ShardedCounter>>,
    pub(crate) auth_failures: Counter,
    reloads: Family<ReloadLabels, Counter>,
    canary_requests: Family<CanaryLabels, Counter>,
}

impl GatewayMetrics {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "gateway_upstream_requests",
            "Proxied requests by route name and outcome (upstream status, or unreachable/timeout/circuit_open/...)",
            self.upstream_requests.clone(),
        );
        registry.register(
            "gateway_auth_failures",
            "Requests refused because their token was invalid",
            self.auth_failures.clone(),
        );
        registry.register(
            "gateway_canary_requests",
            "Requests of canary routes by route name and the variant that picked the upstream",
            self.canary_requests.clone(),
        );
        registry.register(
            "gateway_route_reloads",
            "Route table reloads by result",
            self.reloads.clone(),
        );
    }

    pub(crate) fn canary(&self, route: &str, variant: &str) {
        self.canary_requests
            .get_or_create(&CanaryLabels {
                route: route.to_string(),
                variant: variant.to_string(),
            })
            .inc();
    }

    /// Counts a proxied request of `route` by its outcome: the upstream's status code, or why
    /// there was none.
    pub(crate) fn upstream(&self, route: &Arc<String>, outcome: Outcome) {
        let outcome = match outcome {
            Outcome::Status(status) => proxy::static_digits(u64::from(status.as_u16()))
                .map_or_else(|| Cow::Owned(status.as_str().to_string()), Cow::Borrowed),
            Outcome::Failed(label) => Cow::Borrowed(label),
        };
        self.upstream_handles.update(
            &UpstreamKey {
                route,
                outcome: &outcome,
            },
            |_| UpstreamLabels {
                route: route.clone(),
                outcome: outcome.clone(),
            },
            |labels| self.upstream_requests.get_or_create(labels).clone(),
            |requests| requests.inc(),
        );
    }
}

/// How a proxied request ended, as `gateway_upstream_requests_total` labels it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Status(http::StatusCode),
    Failed(&'static str),
}

/// Shared by every request handler.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) table: ArcSwap<RouteTable>,
    pub(crate) validator: Validator,
    pub(crate) limiter: RateLimiter,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) variants: Option<Arc<dyn VariantResolver>>,
    pub(crate) flags: Option<Arc<dyn FrontendFlags>>,
    pub(crate) session: SessionConfig,
}

/// Optional integrations that are not configuration: the feature-flag hooks.
///
/// A hook left `None` is answered by the gateway's flag client: `client` when given, else one
/// built from the config's `flags` section (no section: every flag off).
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Evaluates the flags of routes: `canary` variants and `flag` gates.
    pub variants: Option<Arc<dyn VariantResolver>>,
    /// Evaluates front-end flags for `GET /bff/v1/session`.
    pub flags: Option<Arc<dyn FrontendFlags>>,
    /// A flag client to use instead of building one from `config.flags`, e.g. one shared by
    /// several services in one process. Its metrics and readiness are still the gateway's.
    pub client: Option<cloud_flags::FlagClient>,
}

/// Re-reads the config file (and its `routes_file`) and swaps in the new route table. An invalid
/// new table keeps the old one and says why.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    state: Arc<AppState>,
    source_file: Option<PathBuf>,
}

impl ReloadHandle {
    pub fn reload(&self) -> Result<usize, String> {
        let result = Config::load(self.source_file.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|config| RouteTable::compile(&config).map_err(|e| e.to_string()));
        match result {
            Ok(table) => {
                let routes = table.len();
                self.state.table.store(Arc::new(table));
                self.state
                    .metrics
                    .reloads
                    .get_or_create(&ReloadLabels {
                        result: "ok".into(),
                    })
                    .inc();
                tracing::info!(routes, "route table reloaded");
                Ok(routes)
            }
            Err(reason) => {
                self.state
                    .metrics
                    .reloads
                    .get_or_create(&ReloadLabels {
                        result: "rejected".into(),
                    })
                    .inc();
                tracing::warn!(reason = %reason, "the new route table is invalid; keeping the current one");
                Err(reason)
            }
        }
    }
}

/// The service with its listeners bound, ready to run.
#[derive(Debug)]
pub struct Application {
    server: Server,
    state: Arc<AppState>,
    reload: ReloadHandle,
    listen_for_signals: bool,
    flag_client: cloud_flags::FlagClient,
    /// Whether the gateway built the flag client (and so stops it on shutdown).
    owns_flag_client: bool,
}

/// Builds the service from its configuration and binds its listeners.
pub async fn build(config: Config) -> Result<Application, BuildError> {
    build_with(config, Hooks::default()).await
}

/// The checks [`build`] makes on a loaded config before it creates anything: the route table,
/// the identity settings and the aggregations. (The Redis URL and the `flags` section are
/// checked as their clients are built.) Public so that the config fuzz target
/// (`fuzz/fuzz_targets/gateway_config.rs`) runs exactly this code.
pub fn validate(config: &Config) -> Result<RouteTable, BuildError> {
    let table = RouteTable::compile(config)?;
    let mut errors = Vec::new();
    if config.identity.clock_skew > std::time::Duration::from_secs(300) {
        errors.push(format!(
            "identity.clock_skew: {:?} is more than 5 minutes",
            config.identity.clock_skew
        ));
    }
    if config.identity.audience.trim().is_empty() {
        errors.push("identity.audience: may not be empty".to_string());
    }
    for (name, aggregation) in &config.bff.aggregations {
        errors.extend(bff::validate(name, aggregation));
    }
    if !errors.is_empty() {
        return Err(BuildError::Config(errors));
    }
    Ok(table)
}

/// [`build`] with feature-flag hooks.
pub async fn build_with(config: Config, hooks: Hooks) -> Result<Application, BuildError> {
    let table = validate(&config)?;
    let aggregations: Vec<Arc<Aggregation>> = config
        .bff
        .aggregations
        .iter()
        .map(|(name, aggregation)| {
            Arc::new(Aggregation {
                name: name.clone(),
                config: aggregation.clone(),
            })
        })
        .collect();
    let metrics = Metrics::new();
    let gateway_metrics = GatewayMetrics::default();
    let limiter_metrics = LimiterMetrics::default();
    metrics.register(|registry| {
        gateway_metrics.register(registry);
        limiter_metrics.register(registry);
    });
    let limiter = RateLimiter::new(&config.redis, limiter_metrics)?;
    let validator = Validator::new(config.identity.clone(), Arc::new(SystemClock));
    metrics.register(|registry| validator.register_metrics(registry));
    let (flag_client, owns_flag_client) = match hooks.client {
        Some(client) => (client, false),
        None => (
            cloud_flags::FlagClient::from_config(&config.flags, Arc::new(SystemClock)).await?,
            true,
        ),
    };
    metrics.register(|registry| flag_client.register_metrics(registry));
    let flag_hooks = Arc::new(FlagHooks::new(flag_client.clone()));
    let state = Arc::new(AppState {
        table: ArcSwap::from_pointee(table),
        validator: validator.clone(),
        limiter: limiter.clone(),
        metrics: gateway_metrics,
        variants: Some(
            hooks
                .variants
                .unwrap_or_else(|| flag_hooks.clone() as Arc<dyn VariantResolver>),
        ),
        flags: Some(hooks.flags.unwrap_or(flag_hooks as Arc<dyn FrontendFlags>)),
        session: config.bff.session.clone(),
    });
    let readiness = Readiness::new();
    // With a server, the client is not ready until a state is loaded (from the server, the
    // last-known-good backup or the bootstrap file); without one it is ready from the start.
    if config.flags.unleash.is_some() || !owns_flag_client {
        readiness.add_check("feature_flags", flag_client.readiness_check());
    }
    // The key set gates readiness only while something needs tokens: a gateway with only public
    // routes serves without identity.
    let needs_aggregation_tokens = !config.bff.aggregations.is_empty();
    let readiness_state = state.clone();
    readiness.add_check("jwks", move || {
        let needed = needs_aggregation_tokens || readiness_state.table.load().needs_tokens();
        let loaded = validator.is_loaded();
        async move {
            match (needed, loaded) {
                (true, false) => Err("the identity key set is not loaded yet".to_string()),
                _ => Ok(()),
            }
        }
    });
    if limiter.uses_redis() {
        // Redis gates readiness until it has answered once: a replica that has never reached
        // it is misconfigured or cut off. After that an outage is handled by failing open to
        // in-process limits (log line, `gateway_ratelimit_redis_fallback`), not by readiness,
        // which would take every replica out of its Service at once and turn a Redis outage
        // into a full one.
        let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
        readiness.add_check("redis", move || {
            let limiter = limiter.clone();
            let reached = reached.clone();
            async move {
                if reached.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(());
                }
                limiter
                    .ping()
                    .await
                    .map(|()| reached.store(true, std::sync::atomic::Ordering::Relaxed))
                    .map_err(|e| format!("{e} (not reached since start)"))
            }
        });
    }
    let mut router: Router<Arc<AppState>> = Router::new();
    // The gateway's own paths: the router answers these, the proxy every other one.
    let mut own_paths = vec![cloud_kit::VERSION_PATH.to_string()];
    if config.bff.session.enabled {
        router = router.route(bff::SESSION_PATH, get(bff::session));
        own_paths.push(bff::SESSION_PATH.to_string());
    }
    for aggregation in aggregations {
        let path = aggregation.config.path.clone();
        own_paths.push(path.clone());
        router = router.route(
            &path,
            get(
                move |axum::extract::State(state): axum::extract::State<Arc<AppState>>,
                      request: axum::extract::Request| {
                    let aggregation = aggregation.clone();
                    async move { bff::aggregate(state, aggregation, request).await }
                },
            ),
        );
    }
    // Proxied paths are the fallback, so that RED metrics label them `unmatched` (not by raw
    // path); `gateway_upstream_requests_total` labels them by route name.
    let router = Router::new()
        .merge(cloud_kit::version_route(cloud_kit::build_info!()))
        .merge(router)
        .fallback_service(proxy::ProxyService(state.clone()))
        .method_not_allowed_fallback(cloud_kit::problem::method_not_allowed_fallback)
        .with_state(state.clone());
    // A worker per core, as nginx: see `EventLoops::PerCore`. Proxied paths skip the router
    // (`with_direct_fallback`), which stays their fallback all the same.
    let proxy_state = state.clone();
    let server = Server::bind_with(
        SERVICE_NAME,
        &config.server,
        router,
        readiness,
        metrics,
        EventLoops::PerCore,
    )
    .await?
    .with_direct_fallback(
        own_paths,
        Arc::new(move || proxy::direct_handler(proxy_state.clone())),
    );
    let reload = ReloadHandle {
        state: state.clone(),
        source_file: config.source_file.clone(),
    };
    Ok(Application {
        server,
        state,
        reload,
        listen_for_signals: true,
        flag_client,
        owns_flag_client,
    })
}

impl Application {
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    pub fn admin_port(&self) -> u16 {
        self.server.admin_port()
    }

    /// Triggers the same graceful shutdown as SIGTERM.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.server.shutdown_handle()
    }

    /// The flag client the gateway evaluates with (built from `config.flags` or given in
    /// [`Hooks::client`]).
    pub fn flags(&self) -> &cloud_flags::FlagClient {
        &self.flag_client
    }

    /// Reloads the route table, as SIGHUP does.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Use one shutdown trigger for several services (e.g. `cloudctl up`).
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.server = self.server.with_shutdown(shutdown);
        self
    }

    /// Stop only through [`Self::shutdown_handle`], not on process signals (SIGHUP is ignored too).
    pub fn without_signals(mut self) -> Self {
        self.server = self.server.without_signals();
        self.listen_for_signals = false;
        self
    }

    pub async fn run_until_stopped(mut self) -> Result<(), ServerError> {
        // Before announcing the ports: a SIGTERM sent right after must drain, not kill.
        self.server.install_signal_handlers();
        tracing::info!(service = SERVICE_NAME, port = self.port(), admin_port = self.admin_port(), routes = ?self.state.table.load().names(), "listening");
        let shutdown = self.server.shutdown_handle();
        let refresher = tokio::spawn(self.state.validator.clone().run_refresher({
            let shutdown = shutdown.clone();
            async move { shutdown.triggered().await }
        }));
        let hangups = self
            .listen_for_signals
            .then(|| tokio::spawn(reload_on_sighup(self.reload.clone(), shutdown.clone())));
        let result = self.server.run_until_stopped().await;
        refresher.abort();
        if let Some(h) = hangups {
            h.abort();
        }
        // Posts the last usage bucket to Unleash; a shared client is stopped by its owner.
        if self.owns_flag_client {
            self.flag_client.shutdown().await;
        }
        result
    }
}

async fn reload_on_sighup(reload: ReloadHandle, shutdown: Shutdown) {
    #[cfg(unix)]
    {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGHUP; route reloads are disabled");
                return;
            }
        };
        loop {
            tokio::select! {
                received = hangup.recv() => {
                    if received.is_none() { return; }
                    tracing::info!("received SIGHUP; reloading the route table");
                    let _ = reload.reload();
                }
                () = shutdown.triggered() => return,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (reload, shutdown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// A borrowed key that hashed differently from the labels it stands for would miss every
    /// lookup and take the write lock on every request, with the counts still right: only this
    /// test would notice.
    #[test]
    fn the_borrowed_upstream_key_hashes_and_compares_as_its_labels() {
        let hasher = foldhash::fast::RandomState::default();
        let labels = UpstreamLabels {
            route: Arc::new("orders".to_string()),
            outcome: Cow::Borrowed("200"),
        };
        let key = UpstreamKey {
            route: "orders",
            outcome: "200",
        };
        assert_eq!(hasher.hash_one(&key), hasher.hash_one(&labels));
        assert!(cloud_kit::metrics::Equivalent::equivalent(&key, &labels));
        let other = UpstreamKey {
            route: "orders",
            outcome: "502",
        };
        assert!(!cloud_kit::metrics::Equivalent::equivalent(&other, &labels));

        let metrics = GatewayMetrics::default();
        let route = Arc::new("orders".to_string());
        for _ in 0..3 {
            metrics.upstream(&route, Outcome::Status(http::StatusCode::OK));
        }
        metrics.upstream(&route, Outcome::Failed("timeout"));
        let count = |outcome: &'static str| {
            metrics
                .upstream_requests
                .get_or_create(&UpstreamLabels {
                    route: route.clone(),
                    outcome: Cow::Borrowed(outcome),
                })
                .get()
        };
        assert_eq!((count("200"), count("timeout")), (3, 1));
    }
}
