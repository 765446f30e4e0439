//! Prometheus metrics, one registry per service (two services in one `cloudctl up` process must not
//! mix their numbers), and the RED layer: `http_requests_total` and
//! `http_request_duration_seconds`, labelled by method, route template and status.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use axum::extract::{MatchedPath, Request};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds: fine below 10 ms, where a gateway's added latency lives.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The route label for requests that matched no route: raw paths would explode cardinality.
pub const UNMATCHED_ROUTE: &str = "unmatched";

// Borrowed where the value is static (the standard methods) and a number for the status: this
// is built for every request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: Cow<'static, str>,
    pub route: Cow<'static, str>,
    pub status: u16,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<HttpLabels, Counter>,
    duration: Family<HttpLabels, Histogram>,
    handles: Arc<Handles<HttpLabels, (Counter, Histogram)>>,
}

/// Metric handles by label set, in front of prometheus-client's [`Family`]: a `Family` hashes
/// the labels with std's SipHash on every lookup, and the gateway looked up three per proxied
/// request (about 1,500 instructions of the 53,000 it spent per request, measured with
/// `bench/gateway/instructions.sh`). A handle shares its value with the one in the `Family`,
/// which still does the registering and encoding.
///
/// foldhash instead of SipHash is safe here because only label sets with bounded values are
/// looked up (route templates or names, standard methods, status codes), so nobody can fill a
/// bucket with keys of their choosing.
#[derive(Debug)]
pub struct Handles<S, M> {
    by_labels: RwLock<HashMap<S, M, foldhash::fast::RandomState>>,
}

impl<S, M> Default for Handles<S, M> {
    fn default() -> Self {
        Self {
            by_labels: RwLock::new(HashMap::default()),
        }
    }
}

impl<S: Clone + Hash + Eq, M> Handles<S, M> {
    /// Runs `update` on the handle for `labels`, made by `create` (from the `Family`) the first
    /// time.
    pub fn update<R>(
        &self,
        labels: &S,
        create: impl FnOnce() -> M,
        update: impl FnOnce(&M) -> R,
    ) -> R {
        if let Some(handle) = self
            .by_labels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(labels)
        {
            return update(handle);
        }
        let mut by_labels = self
            .by_labels
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        update(by_labels.entry(labels.clone()).or_insert_with(create))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<HttpLabels, Counter>::default();
        let duration = Family::<HttpLabels, Histogram>::new_with_constructor(
            new_latency_histogram as fn() -> Histogram,
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "http_requests",
            "HTTP requests handled, by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency in seconds, by method, route template and status",
            duration.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            requests,
            duration,
            handles: Arc::default(),
        }
    }

    /// Registers more metrics (a service's own, or a library's such as cloud-flags).
    pub fn register(&self, register: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        register(&mut registry);
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }

    pub fn observe(&self, labels: &HttpLabels, seconds: f64) {
        self.handles.update(
            labels,
            || {
                (
                    self.requests.get_or_create(labels).clone(),
                    self.duration.get_or_create(labels).clone(),
                )
            },
            |(requests, duration)| {
                requests.inc();
                duration.observe(seconds);
            },
        );
    }
}

pub fn new_latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The method and route labels of a request, taken before it is handled. Run by
/// [`crate::http_layers`] inside the router, where `MatchedPath` is known.
pub(crate) fn request_labels(request: &Request) -> (Cow<'static, str>, Cow<'static, str>) {
    // Any other method is `_OTHER`, as OpenTelemetry's HTTP conventions have it: a client can
    // send any token as a method, and one series per token would have no bound.
    let method = Cow::Borrowed(static_method(request.method()).unwrap_or(OTHER_METHOD));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(Cow::Borrowed(UNMATCHED_ROUTE), |p| {
            Cow::Owned(p.as_str().to_string())
        });
    (method, route)
}

/// The method label of a request whose method is not a standard one.
pub const OTHER_METHOD: &str = "_OTHER";

fn static_method(method: &axum::http::Method) -> Option<&'static str> {
    use axum::http::Method;
    Some(match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return None,
    })
}
