//! Prometheus metrics, one registry per service (two services in one `cloudctl up` process must not
//! mix their numbers), and the RED layer: `http_requests_total` and
//! `http_request_duration_seconds`, labelled by method, route template and status.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

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
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(seconds);
    }
}

pub fn new_latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The method and route labels of a request, taken before it is handled. Run by
/// [`crate::http_layers`] inside the router, where `MatchedPath` is known.
pub(crate) fn request_labels(request: &Request) -> (Cow<'static, str>, Cow<'static, str>) {
    let method = static_method(request.method()).map_or_else(
        || Cow::Owned(request.method().as_str().to_string()),
        Cow::Borrowed,
    );
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(Cow::Borrowed(UNMATCHED_ROUTE), |p| {
            Cow::Owned(p.as_str().to_string())
        });
    (method, route)
}

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
        _ => return None,
    })
}
