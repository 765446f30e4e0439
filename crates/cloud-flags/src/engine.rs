//! The evaluation engine, behind our own trait.
//!
//! `unleash-yggdrasil` is Unleash's official Rust engine (the same one the Unleash SDKs embed),
//! but its API is marked experimental, so it is pinned exactly in the workspace `Cargo.toml` and
//! used only in this module. Replacing it means implementing [`FlagEngine`] again; nothing else
//! in the crate names a yggdrasil type.

use unleash_types::client_features::ClientFeatures;
use unleash_yggdrasil::EngineState;
use unleash_yggdrasil::state::{EnrichedContext, PropertiesRef};

use crate::FlagContext;

/// A compiled, immutable flag state that can evaluate flags. Compiling happens once per state
/// update, off the hot path; evaluation must be cheap and must not block.
pub trait FlagEngine: Send + Sync + 'static {
    /// Compiles a full client-features document. Flags whose rules cannot be compiled evaluate
    /// to off; each produces a warning.
    fn compile(features: &ClientFeatures) -> (Self, Vec<String>)
    where
        Self: Sized;

    /// `None` when the flag is unknown to this state.
    fn is_enabled(&self, flag: &str, ctx: &FlagContext) -> Option<bool>;

    /// `None` when the flag is unknown to this state.
    fn variant(&self, flag: &str, ctx: &FlagContext) -> Option<EngineVariant>;
}

/// A variant as the engine resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineVariant {
    pub name: String,
    pub enabled: bool,
    pub feature_enabled: bool,
    pub payload: Option<(String, String)>,
}

/// [`FlagEngine`] on `unleash-yggdrasil`.
pub struct YggdrasilEngine {
    state: EngineState,
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

impl FlagEngine for YggdrasilEngine {
    fn compile(features: &ClientFeatures) -> (Self, Vec<String>) {
        let state = EngineState::default();
        let warnings = state
            .apply_client_features(features.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|w| format!("{}: {}", w.toggle_name, w.message))
            .collect();
        (Self { state }, warnings)
    }

    fn is_enabled(&self, flag: &str, ctx: &FlagContext) -> Option<bool> {
        self.state.check_enabled(&enriched(flag, ctx))
    }

    fn variant(&self, flag: &str, ctx: &FlagContext) -> Option<EngineVariant> {
        let context = enriched(flag, ctx);
        let variant = self.state.check_variant(&context)?;
        // A variant is only handed out while the feature is on, so the second evaluation is
        // needed only for the `disabled` answer: feature off, or on without variants.
        let feature_enabled =
            variant.enabled || self.state.check_enabled(&context).unwrap_or(false);
        Some(EngineVariant {
            name: variant.name,
            enabled: variant.enabled,
            feature_enabled,
            payload: variant.payload.map(|p| (p.payload_type, p.value)),
        })
    }
}
