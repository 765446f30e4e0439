//! The evaluation engine, behind our own trait.
//!
//! `unleash-yggdrasil` is Unleash's official Rust engine (the same one the Unleash SDKs embed),
//! but its API is marked experimental, so it is pinned exactly in the workspace `Cargo.toml` and
//! used only in this module. Replacing it means implementing [`FlagEngine`] again; nothing else
//! in the crate names a yggdrasil type.

use std::borrow::Cow;
use std::collections::HashMap;

use rand::Rng;
use unleash_types::client_features::{ClientFeature, ClientFeatures};
use unleash_yggdrasil::state::{EnrichedContext, PropertiesRef};
use unleash_yggdrasil::strategy_parsing::normalized_hash;
use unleash_yggdrasil::{CompiledToggle, CompiledVariant, EngineState};

use crate::FlagContext;
use crate::metrics::DISABLED_VARIANT;

/// A compiled, immutable flag state that can evaluate flags. Compiling happens once per state
/// update, off the hot path; evaluation must be cheap and must not block.
pub trait FlagEngine: Send + Sync + 'static {
    /// What an evaluation needs of one flag besides its name, found by name once per state
    /// ([`FlagEngine::flag`], when the state is installed, off the hot path) and kept next to
    /// the caller's own per-flag data, so that the hot path makes no second lookup by name.
    type Flag: Clone + std::fmt::Debug + Send + Sync;

    /// Compiles a full client-features document. Flags whose rules cannot be compiled evaluate
    /// to off; each produces a warning.
    fn compile(features: &ClientFeatures) -> (Self, Vec<String>)
    where
        Self: Sized;

    /// `None` when the flag is unknown to this state.
    fn flag(&self, name: &str) -> Option<Self::Flag>;

    /// Whether `flag` (named `name`, as given to [`FlagEngine::flag`]) is on for `ctx`.
    fn is_enabled(&self, flag: &Self::Flag, name: &str, ctx: &FlagContext) -> bool;

    /// The variant of `flag` (named `name`) for `ctx`.
    fn variant(&self, flag: &Self::Flag, name: &str, ctx: &FlagContext) -> EngineVariant;
}

/// A variant as the engine resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineVariant {
    pub name: Cow<'static, str>,
    pub enabled: bool,
    pub feature_enabled: bool,
    pub payload: Option<(String, String)>,
}

impl EngineVariant {
    /// No variant handed out: the flag is off, or on without variants.
    pub fn disabled(feature_enabled: bool) -> Self {
        Self {
            name: Cow::Borrowed(DISABLED_VARIANT),
            enabled: false,
            feature_enabled,
            payload: None,
        }
    }
}

/// [`FlagEngine`] on `unleash-yggdrasil`.
pub struct YggdrasilEngine {
    state: EngineState,
    /// Every flag of the document.
    flags: HashMap<String, YggdrasilFlag>,
    /// The flags without dependencies, as yggdrasil's own `compile` builds them for its state;
    /// indexed by [`YggdrasilFlag::toggle`]. See [`direct_variant`] for why they are kept here.
    toggles: Vec<CompiledToggle>,
}

/// [`YggdrasilEngine`]'s per-flag data ([`FlagEngine::Flag`]): where the flag's compiled toggle
/// is, if it is evaluated directly; `None` for a flag with dependencies, which the engine's own
/// state evaluates (a parent decides it, and the engine resolves the parent by name).
#[derive(Clone, Copy, Debug)]
pub struct YggdrasilFlag {
    toggle: Option<usize>,
}

impl std::fmt::Debug for YggdrasilEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YggdrasilEngine").finish_non_exhaustive()
    }
}

/// The version of Unleash's client specification the engine implements.
pub const SUPPORTED_SPEC_VERSION: &str = unleash_yggdrasil::SUPPORTED_SPEC_VERSION;

/// The strategies the engine implements (sent to the server on registration).
pub fn known_strategies() -> Vec<String> {
    unleash_yggdrasil::KNOWN_STRATEGIES
        .iter()
        .map(|s| (*s).to_string())
        .collect()
}

fn enriched<'a>(flag: &'a str, ctx: &'a FlagContext) -> EnrichedContext<'a> {
    EnrichedContext {
        user_id: ctx.user_id(),
        session_id: ctx.session_id(),
        environment: ctx.environment(),
        app_name: ctx.app_name(),
        current_time: ctx.current_time(),
        remote_address: ctx.remote_address(),
        properties: Some(PropertiesRef::Strings(ctx.properties())),
        external_results: None,
        toggle_name: flag,
        runtime_hostname: None,
    }
}

/// Why `feature`'s variant weights cannot be evaluated, if they cannot. The engine picks a
/// variant by `hash % total weight` in `u32`: weights that total 0 divide by zero, which panics
/// on every evaluation of the flag (found by the `flags_bootstrap` fuzz target), and a negative
/// weight or a total above `u32::MAX` wraps around to a wrong total, or to 0.
fn unusable_variant_weights(feature: &ClientFeature) -> Option<String> {
    let check = |list: String, weights: Vec<i32>| -> Option<String> {
        if weights.is_empty() {
            return None;
        }
        if let Some(negative) = weights.iter().find(|w| **w < 0) {
            return Some(format!("{list}: a variant weight is {negative}, below 0"));
        }
        let total: i64 = weights.iter().copied().map(i64::from).sum();
        if total == 0 {
            return Some(format!(
                "{list}: the variant weights add up to 0, so no variant can be picked"
            ));
        }
        if total > i64::from(u32::MAX) {
            return Some(format!(
                "{list}: the variant weights add up to {total}, above {}",
                u32::MAX
            ));
        }
        None
    };
    let top_level = feature
        .variants
        .iter()
        .flatten()
        .map(|v| v.weight)
        .collect();
    check("variants".into(), top_level).or_else(|| {
        feature
            .strategies
            .iter()
            .flatten()
            .enumerate()
            .find_map(|(index, strategy)| {
                let weights = strategy
                    .variants
                    .iter()
                    .flatten()
                    .map(|v| v.weight)
                    .collect();
                check(
                    format!("strategies[{index}] ({}) variants", strategy.name),
                    weights,
                )
            })
    })
}

impl FlagEngine for YggdrasilEngine {
    type Flag = YggdrasilFlag;

    fn compile(features: &ClientFeatures) -> (Self, Vec<String>) {
        // A flag the engine cannot evaluate is compiled as off, without its variants, as the
        // engine itself does with a rule it cannot compile, and reported with the others.
        let mut features = features.clone();
        let mut warned: Vec<(String, String)> = Vec::new();
        for feature in &mut features.features {
            if let Some(reason) = unusable_variant_weights(feature) {
                feature.enabled = false;
                feature.variants = None;
                for strategy in feature.strategies.iter_mut().flatten() {
                    strategy.variants = None;
                }
                warned.push((
                    feature.name.clone(),
                    format!("{reason}; this flag will always be off"),
                ));
            }
        }
        let segments = features
            .segments
            .iter()
            .flatten()
            .map(|segment| (segment.id, segment.clone()))
            .collect();
        let mut toggles = Vec::new();
        let flags = features
            .features
            .iter()
            .map(|feature| {
                let has_dependencies = feature.dependencies.as_ref().is_some_and(|d| !d.is_empty());
                let toggle = (!has_dependencies).then(|| {
                    // The engine's state compiles the same feature and reports its warnings.
                    toggles.push(unleash_yggdrasil::compile(
                        feature,
                        &segments,
                        &mut Vec::new(),
                    ));
                    toggles.len() - 1
                });
                (feature.name.clone(), YggdrasilFlag { toggle })
            })
            .collect();
        let state = EngineState::default();
        warned.extend(
            state
                .apply_client_features(features)
                .unwrap_or_default()
                .into_iter()
                .map(|w| (w.toggle_name, w.message)),
        );
        let warnings = warned
            .into_iter()
            .map(|(name, message)| format!("{name}: {message}"))
            .collect();
        (
            Self {
                state,
                flags,
                toggles,
            },
            warnings,
        )
    }

    fn flag(&self, name: &str) -> Option<YggdrasilFlag> {
        self.flags.get(name).copied()
    }

    fn is_enabled(&self, flag: &YggdrasilFlag, name: &str, ctx: &FlagContext) -> bool {
        let context = enriched(name, ctx);
        match flag.toggle.and_then(|i| self.toggles.get(i)) {
            Some(toggle) => toggle.enabled && (toggle.compiled_strategy)(&context),
            None => self.state.check_enabled(&context).unwrap_or(false),
        }
    }

    fn variant(&self, flag: &YggdrasilFlag, name: &str, ctx: &FlagContext) -> EngineVariant {
        let context = enriched(name, ctx);
        match flag.toggle.and_then(|i| self.toggles.get(i)) {
            Some(toggle) => {
                let (feature_enabled, variant) = direct_variant(toggle, &context);
                match variant {
                    Some(variant) => EngineVariant {
                        name: Cow::Owned(variant.name.clone()),
                        enabled: true,
                        feature_enabled,
                        payload: variant
                            .payload
                            .as_ref()
                            .map(|p| (p.payload_type.clone(), p.value.clone())),
                    },
                    None => EngineVariant::disabled(feature_enabled),
                }
            }
            None => {
                // `None` only for a flag the state does not hold, which `flag` would not give.
                let variant = self.state.check_variant(&context).unwrap_or_default();
                // A variant is handed out only while the feature is on; the `disabled` answer
                // needs the second evaluation to say whether it is.
                let feature_enabled =
                    variant.enabled || self.state.check_enabled(&context).unwrap_or(false);
                EngineVariant {
                    name: Cow::Owned(variant.name),
                    enabled: variant.enabled,
                    feature_enabled,
                    payload: variant.payload.map(|p| (p.payload_type, p.value)),
                }
            }
        }
    }
}

// What follows is yggdrasil 0.21.7's variant selection (`EngineState::variant_enabled`,
// `choose_variant`, `resolve_variant`, `get_seed` and `check_for_variant_override`, MIT), for a
// toggle without dependencies, on the toggle yggdrasil's own `compile` built. It is here because
// those functions are private: the engine's public `check_variant` finds the toggle by name again
// behind two `ArcSwap` loads of a state that never changes (a new flag state is a new engine),
// and that lookup kept our `variant` from reaching 3x the Node SDK. The rules, the hash and the
// compiled variants are yggdrasil's; `tests::the_direct_path_answers_like_the_engine` compares
// every answer with the engine's own `check_variant` and `check_enabled`, and the 279 cases of
// Unleash's client specification run through `FlagClient`. Re-check it on every yggdrasil bump.

/// yggdrasil's variant normalization seed (`VARIANT_NORMALIZATION_SEED`, private there).
const VARIANT_NORMALIZATION_SEED: u32 = 86_028_157;

/// Whether `toggle` is on for `context`, and the variant it hands out: one pass, as the engine's
/// `get_variant` makes it.
fn direct_variant<'t>(
    toggle: &'t CompiledToggle,
    context: &EnrichedContext,
) -> (bool, Option<&'t CompiledVariant>) {
    if !toggle.enabled {
        return (false, None);
    }
    let strategies = toggle.compiled_variant_strategy.as_deref();
    let matched = strategies.and_then(|strategies| {
        strategies
            .iter()
            .find_map(|(rule, variants, group_id)| rule(context).then_some((variants, group_id)))
    });
    let enabled = match matched {
        Some(_) => true,
        // Every strategy is in the list, so none matching means off.
        None if strategies.is_some_and(|s| !s.is_empty()) => false,
        None => (toggle.compiled_strategy)(context),
    };
    if !enabled {
        return (false, None);
    }
    let variant = match matched {
        Some((variants, group_id)) if !variants.is_empty() => {
            resolve_variant(variants, group_id, context)
        }
        // Unleash sends an empty list for a strategy without variants: the flag's own variants
        // apply then.
        _ => resolve_variant(&toggle.variants, &toggle.name, context),
    };
    (true, variant)
}

fn resolve_variant<'v>(
    variants: &'v [CompiledVariant],
    group_id: &str,
    context: &EnrichedContext,
) -> Option<&'v CompiledVariant> {
    if variants.is_empty() {
        return None;
    }
    if let Some(overridden) = variant_override(variants, context) {
        return Some(overridden);
    }
    // Weights the engine cannot use (negative, or totalling 0 or more than `u32::MAX`) were
    // rejected at compile time by `unusable_variant_weights`; a zero total is still refused here
    // rather than dividing by it.
    let total_weight: u32 = variants.iter().map(|v| v.weight as u32).sum();
    if total_weight == 0 {
        return None;
    }
    let stickiness = variants.first().and_then(|v| v.stickiness.as_deref());
    let target = match seed(stickiness, context) {
        Some(seed) => variant_target(group_id, seed, total_weight)?,
        None => rand::rng().random_range(1..=total_weight),
    };
    let mut running_weight = 0;
    variants.iter().find(|variant| {
        running_weight += variant.weight as u32;
        running_weight >= target
    })
}

/// yggdrasil's `normalized_hash(group_id, seed, total_weight, VARIANT_NORMALIZATION_SEED)`,
/// which hashes a `format!("{group_id}:{seed}")`, without that temporary string for ids of usual
/// length: the same murmur3 (the crate and version yggdrasil uses) over the same bytes, copied to
/// the stack. The string's allocation and formatting were a tenth of a variant evaluation.
fn variant_target(group_id: &str, seed: &str, total_weight: u32) -> Option<u32> {
    const ON_STACK: usize = 128;
    let len = group_id.len() + 1 + seed.len();
    if len > ON_STACK {
        return normalized_hash(group_id, seed, total_weight, VARIANT_NORMALIZATION_SEED).ok();
    }
    let mut key = [0u8; ON_STACK];
    key[..group_id.len()].copy_from_slice(group_id.as_bytes());
    key[group_id.len()] = b':';
    key[group_id.len() + 1..len].copy_from_slice(seed.as_bytes());
    let hash = murmur3::murmur3_32(&mut &key[..len], VARIANT_NORMALIZATION_SEED).ok()?;
    Some(hash % total_weight + 1)
}

/// The value a variant list's stickiness hashes. Not shared with [`variant_override`]'s field
/// lookup on purpose: as in yggdrasil's `get_seed`, stickiness knows no `currentTime` (that name
/// is looked up in the properties) and `default` means the user, else the session.
fn seed<'a>(stickiness: Option<&str>, context: &EnrichedContext<'a>) -> Option<&'a str> {
    match stickiness {
        Some("default") | None => context.user_id.or(context.session_id),
        Some("userId") => context.user_id,
        Some("sessionId") => context.session_id,
        Some("environment") => context.environment,
        Some("appName") => context.app_name,
        Some("remoteAddress") => context.remote_address,
        Some(custom) => context.properties.as_ref().and_then(|p| p.get(custom)),
    }
}

fn variant_override<'v>(
    variants: &'v [CompiledVariant],
    context: &EnrichedContext,
) -> Option<&'v CompiledVariant> {
    variants.iter().find(|variant| {
        variant.overrides.iter().flatten().any(|o| {
            let field = match o.context_name.as_str() {
                "userId" => context.user_id,
                "sessionId" => context.session_id,
                "environment" => context.environment,
                "appName" => context.app_name,
                "currentTime" => context.current_time,
                "remoteAddress" => context.remote_address,
                other => context.properties.as_ref().and_then(|p| p.get(other)),
            };
            field.is_some_and(|field| o.values.iter().any(|v| v.as_str() == field))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_enabled(engine: &YggdrasilEngine, name: &str, ctx: &FlagContext) -> bool {
        engine.is_enabled(&engine.flag(name).unwrap(), name, ctx)
    }

    fn variant(engine: &YggdrasilEngine, name: &str, ctx: &FlagContext) -> EngineVariant {
        engine.variant(&engine.flag(name).unwrap(), name, ctx)
    }

    /// Regression for the `flags_bootstrap` fuzz finding: a strategy whose variants weigh 0 in
    /// all made the engine divide by zero (a panic) on every evaluation. Such a flag, and one
    /// whose weights are negative or overflow, compiles as off with a warning naming the flag
    /// and the list, and evaluates without panicking; the other flags are unaffected.
    #[test]
    fn variant_weights_the_engine_cannot_use_make_the_flag_off_with_a_warning() {
        let rollout = |variants: serde_json::Value| {
            serde_json::json!([{"name": "flexibleRollout",
                "parameters": {"rollout": "100", "stickiness": "tenantId", "groupId": "g"},
                "variants": variants}])
        };
        let doc = serde_json::json!({"version": 2, "features": [
            {"name": "zero-total", "enabled": true,
             "strategies": rollout(serde_json::json!([{"name": "a", "weight": 0, "stickiness": "tenantId"}]))},
            {"name": "zero-total-top-level", "enabled": true,
             "strategies": [{"name": "default"}],
             "variants": [{"name": "a", "weight": 0, "weightType": "fix", "stickiness": "default"}]},
            {"name": "negative", "enabled": true,
             "strategies": rollout(serde_json::json!([{"name": "a", "weight": -1}, {"name": "b", "weight": 1}]))},
            {"name": "overflowing", "enabled": true,
             "strategies": rollout(serde_json::json!([{"name": "a", "weight": i32::MAX}, {"name": "b", "weight": i32::MAX}, {"name": "c", "weight": 2}]))},
            {"name": "fine", "enabled": true,
             "strategies": rollout(serde_json::json!([{"name": "a", "weight": 0}, {"name": "b", "weight": 1000}]))}
        ]});
        let features: ClientFeatures = serde_json::from_value(doc).unwrap();
        let (engine, warnings) = YggdrasilEngine::compile(&features);
        for (flag, list) in [
            (
                "zero-total",
                "strategies[0] (flexibleRollout) variants: the variant weights add up to 0",
            ),
            (
                "zero-total-top-level",
                "variants: the variant weights add up to 0",
            ),
            (
                "negative",
                "strategies[0] (flexibleRollout) variants: a variant weight is -1",
            ),
            (
                "overflowing",
                "strategies[0] (flexibleRollout) variants: the variant weights add up to 4294967296",
            ),
        ] {
            assert!(
                warnings
                    .iter()
                    .any(|w| w.starts_with(&format!("{flag}: {list}"))
                        && w.ends_with("this flag will always be off")),
                "no warning for {flag} in {warnings:?}"
            );
        }
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        for i in 0..50 {
            let ctx = FlagContext::new()
                .with_tenant_id(format!("tenant-{i}"))
                .with_user_id(format!("user-{i}"));
            for flag in [
                "zero-total",
                "zero-total-top-level",
                "negative",
                "overflowing",
            ] {
                assert!(!is_enabled(&engine, flag, &ctx), "{flag}");
                let variant = variant(&engine, flag, &ctx);
                assert!(
                    !variant.enabled && !variant.feature_enabled,
                    "{flag}: {variant:?}"
                );
            }
            assert!(is_enabled(&engine, "fine", &ctx));
            let fine = variant(&engine, "fine", &ctx);
            assert_eq!(fine.name, "b");
        }
    }

    #[test]
    fn the_variant_hash_is_yggdrasils() {
        // 119 + ':' + "tenant-0" fills the stack buffer exactly; 200 takes yggdrasil's own way.
        let (filling, long) = ("h".repeat(119), "g".repeat(200));
        for group in ["", "bench.flag-042", "ümlaut-group", &filling, &long] {
            for i in 0..500 {
                let seed = format!("tenant-{i}");
                for total in [1, 2, 3, 100, 1000, 65_535, u32::MAX] {
                    assert_eq!(
                        variant_target(group, &seed, total),
                        normalized_hash(group, &seed, total, VARIANT_NORMALIZATION_SEED).ok(),
                        "{group}:{seed} % {total}"
                    );
                }
            }
        }
    }

    /// `is_enabled` and `variant` evaluate a flag without dependencies on its compiled toggle
    /// directly (see [`direct_variant`]); they must answer exactly as the engine's own
    /// `check_enabled` and `check_variant` do, for every shape of flag: strategy variants, a
    /// strategy with and one without variants, top-level variants, overrides, payloads, every
    /// kind of stickiness, segments, constraints on the tenant, a flag switched off, no
    /// strategies, a dependency (the engine's own path), a rule that does not compile (off).
    #[test]
    fn the_direct_path_answers_like_the_engine() {
        let rollout = |percent: u32, stickiness: &str, group: &str| {
            serde_json::json!({"name": "flexibleRollout",
                "parameters": {"rollout": percent.to_string(), "stickiness": stickiness, "groupId": group}})
        };
        let with_variants = |mut strategy: serde_json::Value, variants: serde_json::Value| {
            strategy["variants"] = variants;
            strategy
        };
        let doc = serde_json::json!({"version": 2,
            "segments": [{"id": 7, "constraints": [
                {"contextName": "tenantId", "operator": "IN", "values": ["tenant-1", "tenant-4", "tenant-9"]}]}],
            "features": [
            {"name": "tenant-rollout", "enabled": true, "strategies": [rollout(30, "tenantId", "t")]},
            {"name": "segmented", "enabled": true, "strategies": [
                {"name": "default", "segments": [7]}]},
            {"name": "constrained", "enabled": true, "strategies": [
                {"name": "flexibleRollout", "parameters": {"rollout": "60", "stickiness": "userId", "groupId": "c"},
                 "constraints": [{"contextName": "tenantId", "operator": "NOT_IN", "values": ["tenant-2"]}]}]},
            {"name": "two-strategies", "enabled": true, "strategies": [
                {"name": "userWithId", "parameters": {"userIds": "user-3,user-5"}},
                rollout(10, "userId", "u")]},
            {"name": "switched-off", "enabled": false, "strategies": [
                with_variants(serde_json::json!({"name": "default"}), serde_json::json!([{"name": "x", "weight": 1}]))]},
            {"name": "no-strategies", "enabled": true, "strategies": []},
            {"name": "strategy-variants", "enabled": true, "strategies": [
                with_variants(rollout(40, "tenantId", "a"), serde_json::json!([
                    {"name": "x", "weight": 500, "stickiness": "tenantId",
                     "payload": {"type": "json", "value": "{\"limit\": 5}"}},
                    {"name": "y", "weight": 500, "stickiness": "tenantId"}]))]},
            {"name": "mixed", "enabled": true, "strategies": [
                with_variants(rollout(30, "tenantId", "b"), serde_json::json!([{"name": "x", "weight": 1000, "stickiness": "tenantId"}])),
                rollout(50, "userId", "c")]},
            {"name": "empty-strategy-variants", "enabled": true, "strategies": [
                with_variants(rollout(70, "userId", "e"), serde_json::json!([]))],
             "variants": [{"name": "p", "weight": 300, "weightType": "variable", "stickiness": "default"},
                          {"name": "q", "weight": 700, "weightType": "variable", "stickiness": "default"}]},
            {"name": "top-level", "enabled": true, "strategies": [rollout(50, "userId", "d")],
             "variants": [{"name": "z", "weight": 600, "weightType": "variable", "stickiness": "sessionId",
                           "payload": {"type": "string", "value": "zed"}},
                          {"name": "w", "weight": 400, "weightType": "variable", "stickiness": "sessionId",
                           "overrides": [{"contextName": "tenantId", "values": ["tenant-3"]},
                                         {"contextName": "userId", "values": ["user-7"]}]}]},
            {"name": "custom-stickiness", "enabled": true, "strategies": [{"name": "default"}],
             "variants": [{"name": "r", "weight": 1, "weightType": "variable", "stickiness": "region"},
                          {"name": "s", "weight": 2, "weightType": "variable", "stickiness": "region"}]},
            {"name": "child", "enabled": true, "strategies": [{"name": "default"}],
             "dependencies": [{"feature": "tenant-rollout", "enabled": true}],
             "variants": [{"name": "v", "weight": 1, "weightType": "variable", "stickiness": "default"}]},
            {"name": "unknown-segment", "enabled": true, "strategies": [{"name": "default", "segments": [404]}]}
        ]});
        let features: ClientFeatures = serde_json::from_value(doc).unwrap();
        let (engine, warnings) = YggdrasilEngine::compile(&features);
        assert!(
            warnings.iter().any(|w| w.starts_with("unknown-segment: ")),
            "{warnings:?}"
        );
        let engine_path: Vec<&str> = features
            .features
            .iter()
            .map(|f| f.name.as_str())
            .filter(|name| engine.flag(name).unwrap().toggle.is_none())
            .collect();
        assert_eq!(engine_path, ["child"]);
        let mut seen =
            std::collections::BTreeMap::<&str, std::collections::BTreeSet<String>>::new();
        for i in 0..400 {
            let ctx = FlagContext::new()
                .with_user_id(format!("user-{i}"))
                .with_session_id(format!("session-{}", i * 7))
                .with_tenant_id(format!("tenant-{}", i % 11))
                .with_property("region", format!("region-{}", i % 5));
            for feature in &features.features {
                let name = feature.name.as_str();
                let context = enriched(name, &ctx);
                let enabled = is_enabled(&engine, name, &ctx);
                let engine_enabled = engine.state.check_enabled(&context);
                assert_eq!(
                    Some(enabled),
                    engine_enabled,
                    "is_enabled of {name} for {i}"
                );
                let ours = variant(&engine, name, &ctx);
                let engines = engine.state.check_variant(&context).unwrap();
                assert_eq!(
                    (
                        &*ours.name,
                        ours.enabled,
                        ours.feature_enabled,
                        ours.payload.clone()
                    ),
                    (
                        engines.name.as_str(),
                        engines.enabled,
                        enabled,
                        engines.payload.map(|p| (p.payload_type, p.value))
                    ),
                    "variant of {name} for {i}"
                );
                seen.entry(name)
                    .or_default()
                    .insert(format!("{enabled}/{}", ours.name));
            }
        }
        // Each rollout, constraint, override and weighting answered more than one way, so the
        // comparison says something.
        let answers = |name: &str| seen[name].iter().cloned().collect::<Vec<_>>();
        for name in [
            "tenant-rollout",
            "segmented",
            "constrained",
            "two-strategies",
        ] {
            assert_eq!(answers(name), ["false/disabled", "true/disabled"], "{name}");
        }
        assert_eq!(
            answers("strategy-variants"),
            ["false/disabled", "true/x", "true/y"]
        );
        assert_eq!(
            answers("mixed"),
            ["false/disabled", "true/disabled", "true/x"]
        );
        assert_eq!(
            answers("empty-strategy-variants"),
            ["false/disabled", "true/p", "true/q"]
        );
        assert_eq!(answers("top-level"), ["false/disabled", "true/w", "true/z"]);
        assert_eq!(answers("custom-stickiness"), ["true/r", "true/s"]);
        assert_eq!(answers("child"), ["false/disabled", "true/v"]);
        assert_eq!(answers("switched-off"), ["false/disabled"]);
        assert_eq!(answers("no-strategies"), ["true/disabled"]);
        assert_eq!(answers("unknown-segment"), ["false/disabled"]);
    }
}
