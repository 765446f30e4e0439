//! An immutable, compiled flag state, swapped in whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;
use unleash_types::client_features::ClientFeatures;

use crate::audit::StateSource;
use crate::definition::{FlagDefinition, definitions};
use crate::engine::{FlagEngine, YggdrasilEngine};
use crate::metrics::{CounterRegistry, DISABLED_VARIANT, NO_VARIANT, PairCounter};

/// foldhash: flag names are short and come from our own code and the server, so a fast hash is
/// the right trade on the evaluation path. (FNV-1a, used before, is one dependent multiply per
/// byte; the overhead over raw yggdrasil fell from 13-14% to 9% with foldhash, docs/benchmarks.md.)
pub(crate) type SlotMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Per-flag data the hot path needs next to the engine.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub enabled_counter: Arc<PairCounter>,
    /// The counter of the `disabled` variant, the most frequent answer, found without a name
    /// comparison; also in `variant_counters`.
    pub disabled_counter: Arc<PairCounter>,
    pub variant_counters: Arc<[(Box<str>, Arc<PairCounter>)]>,
    pub impression: bool,
    pub killed: bool,
    /// The engine's own data for this flag ([`FlagEngine::flag`]).
    pub engine_flag: <YggdrasilEngine as FlagEngine>::Flag,
}

/// A compiled features document, before it is installed.
pub(crate) struct Compiled {
    pub engine: Arc<YggdrasilEngine>,
    pub definitions: Arc<BTreeMap<String, FlagDefinition>>,
    pub impressions: Arc<BTreeSet<String>>,
}

impl Compiled {
    /// The expensive part of an update; runs off the hot path.
    pub fn compile(features: &ClientFeatures) -> Self {
        let (engine, warnings) = YggdrasilEngine::compile(features);
        for warning in warnings {
            tracing::warn!(target: "cloud_flags", %warning, "flag rule did not compile; the flag evaluates to off");
        }
        let impressions = features
            .features
            .iter()
            .filter(|f| f.impression_data.unwrap_or(false))
            .map(|f| f.name.clone())
            .collect();
        Self {
            engine: Arc::new(engine),
            definitions: Arc::new(definitions(features)),
            impressions: Arc::new(impressions),
        }
    }

    pub fn empty() -> Self {
        Self::compile(&ClientFeatures {
            version: 2,
            features: vec![],
            segments: None,
            query: None,
            meta: None,
        })
    }
}

#[derive(Debug)]
pub(crate) struct FlagState {
    pub engine: Arc<YggdrasilEngine>,
    pub slots: SlotMap<Box<str>, Slot>,
    pub definitions: Arc<BTreeMap<String, FlagDefinition>>,
    pub impressions: Arc<BTreeSet<String>>,
    pub killed: Arc<BTreeSet<String>>,
    pub loaded: bool,
    pub source: Option<StateSource>,
    pub etag: Option<String>,
    pub fetched_at: Option<OffsetDateTime>,
}

fn variant_names(def: &Value) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    names.insert(DISABLED_VARIANT.into());
    let collect = |list: Option<&Value>, names: &mut BTreeSet<String>| {
        for v in list.and_then(Value::as_array).into_iter().flatten() {
            if let Some(n) = v.get("name").and_then(Value::as_str) {
                names.insert(n.to_string());
            }
        }
    };
    collect(def.pointer("/feature/variants"), &mut names);
    for s in def
        .pointer("/feature/strategies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        collect(s.get("variants"), &mut names);
    }
    names
}

impl FlagState {
    pub fn build(
        compiled: &Compiled,
        killed: Arc<BTreeSet<String>>,
        counters: &CounterRegistry,
        meta: (Option<StateSource>, Option<String>, Option<OffsetDateTime>),
        loaded: bool,
    ) -> Self {
        let slots = compiled
            .definitions
            .iter()
            .filter_map(|(name, def)| {
                // Both come from the same document; a flag the engine lacked would evaluate as
                // unknown (off).
                let engine_flag = compiled.engine.flag(name)?;
                let variant_counters: Vec<(Box<str>, Arc<PairCounter>)> = variant_names(&def.value)
                    .into_iter()
                    .map(|v| (v.clone().into_boxed_str(), counters.get(name, &v)))
                    .collect();
                let slot = Slot {
                    enabled_counter: counters.get(name, NO_VARIANT),
                    disabled_counter: counters.get(name, DISABLED_VARIANT),
                    variant_counters: variant_counters.into(),
                    impression: compiled.impressions.contains(name),
                    killed: killed.contains(name),
                    engine_flag,
                };
                Some((name.clone().into_boxed_str(), slot))
            })
            .collect();
        Self {
            engine: compiled.engine.clone(),
            slots,
            definitions: compiled.definitions.clone(),
            impressions: compiled.impressions.clone(),
            killed,
            loaded,
            source: meta.0,
            etag: meta.1,
            fetched_at: meta.2,
        }
    }

    pub fn compiled(&self) -> Compiled {
        Compiled {
            engine: self.engine.clone(),
            definitions: self.definitions.clone(),
            impressions: self.impressions.clone(),
        }
    }
}
