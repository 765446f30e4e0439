//! Evaluation counters: lock-free on the hot path (one relaxed atomic add per evaluation),
//! exposed as `feature_flag_evaluations_total{flag,variant,enabled}` and posted to Unleash as
//! usage buckets.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

/// The `variant` label of `is_enabled` evaluations (which resolve no variant).
pub const NO_VARIANT: &str = "none";
/// The variant of a flag that is off, or on without variants.
pub const DISABLED_VARIANT: &str = "disabled";

/// Counters of one (flag, variant) pair, split by the feature's enabled state.
#[derive(Debug, Default)]
pub(crate) struct PairCounter {
    pub on: AtomicU64,
    pub off: AtomicU64,
}

impl PairCounter {
    #[inline]
    pub fn record(&self, enabled: bool) {
        if enabled { &self.on } else { &self.off }.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every counter ever handed out, keyed by (flag, variant). Counters survive state swaps, so
/// the Prometheus counters stay monotonic while flags come and go.
#[derive(Debug, Default)]
pub(crate) struct CounterRegistry {
    counters: Mutex<BTreeMap<(String, String), Arc<PairCounter>>>,
}

impl CounterRegistry {
    pub fn get(&self, flag: &str, variant: &str) -> Arc<PairCounter> {
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&(flag.to_string(), variant.to_string())) {
            return c.clone();
        }
        let c = Arc::new(PairCounter::default());
        map.insert((flag.to_string(), variant.to_string()), c.clone());
        c
    }

    /// (flag, variant, on, off) for every counter.
    pub fn snapshot(&self) -> Vec<(String, String, u64, u64)> {
        let map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|((f, v), c)| {
                (
                    f.clone(),
                    v.clone(),
                    c.on.load(Ordering::Relaxed),
                    c.off.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// Unleash usage stats of one flag since some earlier snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ToggleUsage {
    pub yes: u64,
    pub no: u64,
    pub variants: BTreeMap<String, u64>,
}

/// Turns two snapshots into Unleash usage: `yes`/`no` count every evaluation by the feature's
/// enabled state; `variants` counts variant evaluations by name.
pub(crate) fn usage_between(
    before: &HashMap<(String, String), (u64, u64)>,
    now: &[(String, String, u64, u64)],
) -> BTreeMap<String, ToggleUsage> {
    let mut usage: BTreeMap<String, ToggleUsage> = BTreeMap::new();
    for (flag, variant, on, off) in now {
        let (on0, off0) = before
            .get(&(flag.clone(), variant.clone()))
            .copied()
            .unwrap_or((0, 0));
        let (don, doff) = (on.saturating_sub(on0), off.saturating_sub(off0));
        if don == 0 && doff == 0 {
            continue;
        }
        let entry = usage.entry(flag.clone()).or_default();
        entry.yes += don;
        entry.no += doff;
        if variant != NO_VARIANT {
            *entry.variants.entry(variant.clone()).or_default() += don + doff;
        }
    }
    usage
}

/// The Prometheus collector over a [`CounterRegistry`].
#[derive(Debug)]
pub(crate) struct EvaluationCollector(pub Arc<CounterRegistry>);

impl Collector for EvaluationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.snapshot();
        let mut metric = encoder.encode_descriptor(
            "feature_flag_evaluations",
            "Feature flag evaluations by flag, resolved variant (\"none\" for is_enabled) and enabled state",
            None,
            MetricType::Counter,
        )?;
        for (flag, variant, on, off) in snapshot {
            for (enabled, value) in [("true", on), ("false", off)] {
                if value == 0 {
                    continue;
                }
                let labels = [
                    ("flag", flag.as_str()),
                    ("variant", variant.as_str()),
                    ("enabled", enabled),
                ];
                ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
