//! Prometheus metrics, one registry per service (two services in one `cloudctl up` process must not
//! mix their numbers), and the RED layer: `http_requests_total` and
//! `http_request_duration_seconds`, labelled by method, route template and status.

use std::borrow::Cow;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use axum::extract::{MatchedPath, Request};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::per_event_loop::PerEventLoop;

/// What a borrowed label set implements to look up [`Handles`] of an owned one.
pub use hashbrown::Equivalent;

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
    requests: Family<HttpLabels, ShardedCounter>,
    duration: Family<HttpLabels, ShardedHistogram>,
    handles: Arc<Handles<HttpLabels, (ShardedCounter, ShardedHistogram)>>,
}

/// Metric handles by label set, in front of prometheus-client's [`Family`]: a `Family` hashes
/// the labels with std's SipHash on every lookup, and the gateway looked up three per proxied
/// request (about 1,500 instructions of the 53,000 it spent per request, measured with
/// `bench/gateway/instructions.sh`). A handle shares its value with the one in the `Family`,
/// which still does the registering and encoding. Each event loop has a map of its own
/// ([`PerEventLoop`]): one lock shared by the loops is two contended atomics per lookup.
///
/// foldhash instead of SipHash is safe here because only label sets with bounded values are
/// looked up (route templates or names, standard methods, status codes), so nobody can fill a
/// bucket with keys of their choosing.
#[derive(Debug)]
pub struct Handles<S, M> {
    by_labels: PerEventLoop<RwLock<hashbrown::HashMap<S, M, foldhash::fast::RandomState>>>,
}

impl<S, M> Default for Handles<S, M> {
    fn default() -> Self {
        Self {
            by_labels: PerEventLoop::new(|| {
                RwLock::new(hashbrown::HashMap::with_hasher(
                    foldhash::fast::RandomState::default(),
                ))
            }),
        }
    }
}

impl<S: Hash + Eq, M> Handles<S, M> {
    /// Runs `update` on the handle for `labels`, made by `create` (from the `Family`) the first
    /// time. `labels` may borrow what `S` owns (`Q` hashes as `S` does), so that a lookup
    /// clones no shared reference count; `to_owned` makes the `S` to keep.
    pub fn update<Q, R>(
        &self,
        labels: &Q,
        to_owned: impl FnOnce(&Q) -> S,
        create: impl FnOnce(&S) -> M,
        update: impl FnOnce(&M) -> R,
    ) -> R
    where
        Q: Hash + Equivalent<S> + ?Sized,
    {
        let by_labels = self.by_labels.get();
        if let Some(handle) = by_labels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(labels)
        {
            return update(handle);
        }
        let mut by_labels = by_labels.write().unwrap_or_else(PoisonError::into_inner);
        update(by_labels.entry(to_owned(labels)).or_insert_with_key(create))
    }
}

/// A counter with a value per event loop, summed when scraped: an increment writes only the
/// calling event loop's cache line (see [`PerEventLoop`]). Encoded as a prometheus-client
/// [`Counter`](prometheus_client::metrics::counter::Counter) is.
#[derive(Debug, Clone, Default)]
pub struct ShardedCounter {
    shards: Arc<PerEventLoop<AtomicU64>>,
}

impl ShardedCounter {
    pub fn inc(&self) {
        self.shards.get().fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| shard.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A histogram with its counts per event loop, summed when scraped (see [`ShardedCounter`]).
/// Each event loop's counts are behind a lock of their own, so a scrape sees each loop's sum,
/// count and buckets agree. Encoded as a prometheus-client
/// [`Histogram`](prometheus_client::metrics::histogram::Histogram) is.
#[derive(Debug, Clone)]
pub struct ShardedHistogram {
    inner: Arc<HistogramShards>,
}

#[derive(Debug)]
struct HistogramShards {
    /// Upper bounds, ending with `f64::MAX` for `+Inf`, as prometheus-client's encoder expects.
    bounds: Box<[f64]>,
    shards: PerEventLoop<Mutex<HistogramCounts>>,
}

#[derive(Debug)]
struct HistogramCounts {
    sum: f64,
    count: u64,
    /// One per bound, not cumulative.
    buckets: Box<[u64]>,
}

impl ShardedHistogram {
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = bounds
            .into_iter()
            .chain(std::iter::once(f64::MAX))
            .collect();
        let len = bounds.len();
        Self {
            inner: Arc::new(HistogramShards {
                bounds,
                shards: PerEventLoop::new(|| {
                    Mutex::new(HistogramCounts {
                        sum: 0.0,
                        count: 0,
                        buckets: vec![0; len].into(),
                    })
                }),
            }),
        }
    }

    pub fn observe(&self, value: f64) {
        let bucket = self.inner.bounds.iter().position(|bound| *bound >= value);
        let mut counts = self
            .inner
            .shards
            .get()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.sum += value;
        counts.count += 1;
        if let Some(slot) = bucket.and_then(|i| counts.buckets.get_mut(i)) {
            *slot += 1;
        }
    }

    /// Sum, count and the (not cumulative) count of each bucket with its upper bound.
    pub fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = self.inner.bounds.iter().map(|b| (*b, 0)).collect();
        let (mut sum, mut count) = (0.0, 0u64);
        for shard in self.inner.shards.iter() {
            let counts = shard.lock().unwrap_or_else(PoisonError::into_inner);
            sum += counts.sum;
            count = count.wrapping_add(counts.count);
            for ((_, total), n) in buckets.iter_mut().zip(counts.buckets.iter()) {
                *total = total.wrapping_add(*n);
            }
        }
        (sum, count, buckets)
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
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
        let requests = Family::<HttpLabels, ShardedCounter>::default();
        let duration = Family::<HttpLabels, ShardedHistogram>::new_with_constructor(
            new_latency_histogram as fn() -> ShardedHistogram,
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
            HttpLabels::clone,
            |labels| {
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

pub fn new_latency_histogram() -> ShardedHistogram {
    ShardedHistogram::new(LATENCY_BUCKETS)
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
