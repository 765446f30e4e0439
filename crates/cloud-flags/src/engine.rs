//! The evaluation engine, behind our own trait.
//!
//! `unleash-yggdrasil` is Unleash's official Rust engine (the same one the Unleash SDKs embed),
//! but its API is marked experimental, so it is pinned exactly in the workspace `Cargo.toml` and
//! used only in this module. Replacing it means implementing [`FlagEngine`] again; nothing else
//! in the crate names a yggdrasil type.

use std::collections::HashMap;

use unleash_types::client_features::{ClientFeature, ClientFeatures, Segment};
use unleash_yggdrasil::EngineState;
use unleash_yggdrasil::state::{EnrichedContext, PropertiesRef};
use unleash_yggdrasil::strategy_parsing::{RuleFragment, compile_rule};
use unleash_yggdrasil::strategy_upgrade::upgrade;

use crate::FlagContext;

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
    pub name: String,
    pub enabled: bool,
    pub feature_enabled: bool,
    pub payload: Option<(String, String)>,
}

/// Whether, for this flag, "the feature is on" implies "a variant is handed out", so that the
/// `disabled` variant answers "off" without a second evaluation. True when every strategy has
/// weighted variants (the strategy that matched picks one), or when no strategy has variants and
/// the flag has weighted top-level variants (the fallback picks one). Flags with dependencies
/// are left out: a parent decides them, not their own strategies.
fn variant_decides_enabled(feature: &ClientFeature) -> bool {
    if feature.dependencies.as_ref().is_some_and(|d| !d.is_empty()) {
        return false;
    }
    let strategies = feature.strategies.as_deref().unwrap_or_default();
    let weighted = |weights: &mut dyn Iterator<Item = i32>| weights.map(i64::from).sum::<i64>() > 0;
    let strategy_variants = |s: &unleash_types::client_features::Strategy| {
        weighted(&mut s.variants.iter().flatten().map(|v| v.weight))
    };
    let any_strategy_variants = strategies
        .iter()
        .any(|s| s.variants.as_ref().is_some_and(|v| !v.is_empty()));
    if !strategies.is_empty() && strategies.iter().all(strategy_variants) {
        return true;
    }
    !any_strategy_variants && weighted(&mut feature.variants.iter().flatten().map(|v| v.weight))
}

/// [`FlagEngine`] on `unleash-yggdrasil`.
pub struct YggdrasilEngine {
    state: EngineState,
    /// Every flag of the document.
    flags: HashMap<String, YggdrasilFlag>,
    /// See [`EnabledRule`]; indexed by [`YggdrasilFlag::enabled_rule`].
    enabled_rules: Vec<EnabledRule>,
}

/// One flag's "is it on" as the engine decides it for a flag without dependencies: the flag is
/// on and its compiled strategies (yggdrasil's `compile_rule` of its `upgrade`d strategies, as
/// `EngineState` compiles them) match. Kept here so that `is_enabled` calls the rule directly:
/// `EngineState::check_enabled` finds the flag again by name, behind two `ArcSwap` loads of its
/// own state, which is never replaced (a new state is a new engine). Flags with dependencies,
/// and flags whose rule does not compile (the engine answers off and warns), keep the engine's
/// own way.
struct EnabledRule {
    enabled: bool,
    rule: RuleFragment,
}

/// [`YggdrasilEngine`]'s per-flag data ([`FlagEngine::Flag`]).
#[derive(Clone, Copy, Debug)]
pub struct YggdrasilFlag {
    enabled_rule: Option<usize>,
    /// [`variant_decides_enabled`] for this flag.
    variant_decides_enabled: bool,
}

impl std::fmt::Debug for YggdrasilEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YggdrasilEngine").finish_non_exhaustive()
    }
}

/// The enabled rule of `feature` if it has no dependencies and its rule compiles (otherwise the
/// engine's own path answers it, and warns when it does not compile).
fn enabled_rule(feature: &ClientFeature, segments: &HashMap<i32, Segment>) -> Option<EnabledRule> {
    if feature.dependencies.as_ref().is_some_and(|d| !d.is_empty()) {
        return None;
    }
    let strategies = feature.strategies.as_deref().unwrap_or_default();
    let rule = upgrade(strategies, segments)
        .and_then(|text| compile_rule(&text))
        .ok()?;
    Some(EnabledRule {
        enabled: feature.enabled,
        rule,
    })
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
        let mut enabled_rules = Vec::new();
        let mut flags: HashMap<String, YggdrasilFlag> = features
            .features
            .iter()
            .map(|feature| {
                let enabled_rule = enabled_rule(feature, &segments).map(|rule| {
                    enabled_rules.push(rule);
                    enabled_rules.len() - 1
                });
                let flag = YggdrasilFlag {
                    enabled_rule,
                    variant_decides_enabled: variant_decides_enabled(feature),
                };
                (feature.name.clone(), flag)
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
        // The shape of a flag the engine warned about says nothing of how it evaluates.
        for (name, _) in &warned {
            if let Some(flag) = flags.get_mut(name) {
                flag.variant_decides_enabled = false;
            }
        }
        let warnings = warned
            .into_iter()
            .map(|(name, message)| format!("{name}: {message}"))
            .collect();
        (
            Self {
                state,
                flags,
                enabled_rules,
            },
            warnings,
        )
    }

    fn flag(&self, name: &str) -> Option<YggdrasilFlag> {
        self.flags.get(name).copied()
    }

    fn is_enabled(&self, flag: &YggdrasilFlag, name: &str, ctx: &FlagContext) -> bool {
        let context = enriched(name, ctx);
        match flag.enabled_rule.and_then(|i| self.enabled_rules.get(i)) {
            Some(EnabledRule { enabled, rule }) => *enabled && rule(&context),
            None => self.state.check_enabled(&context).unwrap_or(false),
        }
    }

    fn variant(&self, flag: &YggdrasilFlag, name: &str, ctx: &FlagContext) -> EngineVariant {
        let context = enriched(name, ctx);
        // `None` only for a flag the state does not hold, which `flag` would not have given.
        let variant = self.state.check_variant(&context).unwrap_or_default();
        // A variant is only handed out while the feature is on, so the second evaluation is
        // needed only for the `disabled` answer: feature off, or on without variants.
        let feature_enabled =
            variant.enabled || (!flag.variant_decides_enabled && self.is_enabled(flag, name, ctx));
        EngineVariant {
            name: variant.name,
            enabled: variant.enabled,
            feature_enabled,
            payload: variant.payload.map(|p| (p.payload_type, p.value)),
        }
    }
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

    /// Skipping the second evaluation must not change an answer: for every flag shape, the
    /// variant's `feature_enabled` equals "a variant was handed out, or the flag is on".
    #[test]
    fn one_evaluation_answers_like_two() {
        let doc = serde_json::json!({"version": 2, "features": [
            {"name": "strategy-variants", "enabled": true, "strategies": [
                {"name": "flexibleRollout", "parameters": {"rollout": "40", "stickiness": "tenantId", "groupId": "a"},
                 "variants": [{"name": "x", "weight": 500, "stickiness": "tenantId"}, {"name": "y", "weight": 500, "stickiness": "tenantId"}]}]},
            {"name": "mixed", "enabled": true, "strategies": [
                {"name": "flexibleRollout", "parameters": {"rollout": "30", "stickiness": "tenantId", "groupId": "b"},
                 "variants": [{"name": "x", "weight": 1000, "stickiness": "tenantId"}]},
                {"name": "flexibleRollout", "parameters": {"rollout": "50", "stickiness": "userId", "groupId": "c"}}]},
            {"name": "top-level", "enabled": true, "strategies": [
                {"name": "flexibleRollout", "parameters": {"rollout": "50", "stickiness": "userId", "groupId": "d"}}],
             "variants": [{"name": "z", "weight": 1000, "weightType": "variable", "stickiness": "default"}]},
            {"name": "no-variants", "enabled": true, "strategies": [
                {"name": "flexibleRollout", "parameters": {"rollout": "50", "stickiness": "userId", "groupId": "e"}}]},
            {"name": "off", "enabled": false, "strategies": [{"name": "default", "variants": [{"name": "x", "weight": 1}]}]}
        ]});
        let features: ClientFeatures = serde_json::from_value(doc).unwrap();
        let (engine, warnings) = YggdrasilEngine::compile(&features);
        assert!(warnings.is_empty(), "{warnings:?}");
        let decided: Vec<&str> = [
            "strategy-variants",
            "mixed",
            "top-level",
            "no-variants",
            "off",
        ]
        .into_iter()
        .filter(|f| engine.flag(f).unwrap().variant_decides_enabled)
        .collect();
        assert_eq!(decided, ["strategy-variants", "top-level", "off"]);
        let mut seen_on_without_variant = false;
        for i in 0..400 {
            let ctx = FlagContext::new()
                .with_user_id(format!("user-{i}"))
                .with_tenant_id(format!("tenant-{}", i / 3));
            for flag in [
                "strategy-variants",
                "mixed",
                "top-level",
                "no-variants",
                "off",
            ] {
                let variant = variant(&engine, flag, &ctx);
                let enabled = is_enabled(&engine, flag, &ctx);
                assert_eq!(
                    variant.feature_enabled,
                    variant.enabled || enabled,
                    "{flag} for {i}: {variant:?}"
                );
                seen_on_without_variant |= enabled && !variant.enabled;
            }
        }
        assert!(
            seen_on_without_variant,
            "the mixed/no-variants shapes must exercise the second evaluation"
        );
    }

    /// `is_enabled` calls a flag's compiled rule directly when the flag has no dependencies;
    /// it must answer exactly as the engine's own `check_enabled` does, for every shape of flag:
    /// segments, constraints on the tenant, a flag switched off, no strategies, several
    /// strategies, a dependency (the engine's own path), a rule that does not compile (off).
    #[test]
    fn the_direct_rule_answers_like_the_engine() {
        let doc = serde_json::json!({"version": 2,
            "segments": [{"id": 7, "constraints": [
                {"contextName": "tenantId", "operator": "IN", "values": ["tenant-1", "tenant-4", "tenant-9"]}]}],
            "features": [
            {"name": "tenant-rollout", "enabled": true, "strategies": [
                {"name": "flexibleRollout", "parameters": {"rollout": "30", "stickiness": "tenantId", "groupId": "t"}}]},
            {"name": "segmented", "enabled": true, "strategies": [
                {"name": "default", "segments": [7]}]},
            {"name": "constrained", "enabled": true, "strategies": [
                {"name": "flexibleRollout", "parameters": {"rollout": "60", "stickiness": "userId", "groupId": "c"},
                 "constraints": [{"contextName": "tenantId", "operator": "NOT_IN", "values": ["tenant-2"]}]}]},
            {"name": "two-strategies", "enabled": true, "strategies": [
                {"name": "userWithId", "parameters": {"userIds": "user-3,user-5"}},
                {"name": "flexibleRollout", "parameters": {"rollout": "10", "stickiness": "userId", "groupId": "u"}}]},
            {"name": "switched-off", "enabled": false, "strategies": [{"name": "default"}]},
            {"name": "no-strategies", "enabled": true, "strategies": []},
            {"name": "child", "enabled": true, "strategies": [{"name": "default"}],
             "dependencies": [{"feature": "tenant-rollout", "enabled": true}]},
            {"name": "unknown-segment", "enabled": true, "strategies": [{"name": "default", "segments": [404]}]}
        ]});
        let features: ClientFeatures = serde_json::from_value(doc).unwrap();
        let (engine, warnings) = YggdrasilEngine::compile(&features);
        assert!(
            warnings.iter().any(|w| w.starts_with("unknown-segment: ")),
            "{warnings:?}"
        );
        let direct: Vec<&str> = features
            .features
            .iter()
            .map(|f| f.name.as_str())
            .filter(|name| engine.flag(name).unwrap().enabled_rule.is_some())
            .collect();
        assert_eq!(
            direct,
            [
                "tenant-rollout",
                "segmented",
                "constrained",
                "two-strategies",
                "switched-off",
                "no-strategies"
            ]
        );
        let mut seen = std::collections::BTreeMap::<&str, [bool; 2]>::new();
        for i in 0..300 {
            let ctx = FlagContext::new()
                .with_user_id(format!("user-{i}"))
                .with_tenant_id(format!("tenant-{}", i % 11));
            for feature in &features.features {
                let name = feature.name.as_str();
                let ours = is_enabled(&engine, name, &ctx);
                let engines = engine.state.check_enabled(&enriched(name, &ctx));
                assert_eq!(Some(ours), engines, "{name} for user-{i}");
                seen.entry(name).or_default()[usize::from(ours)] = true;
            }
        }
        // Each rollout and constraint answered both ways, so the comparison says something.
        for name in [
            "tenant-rollout",
            "segmented",
            "constrained",
            "two-strategies",
            "child",
        ] {
            assert_eq!(seen[name], [true, true], "{name}");
        }
    }
}
