//! Unleash-compatible, tenant-aware feature flags with a hash-chained audit trail.
//!
//! - The control plane is an Unleash server; the wire format is its client API
//!   (`GET /api/client/features`), and evaluation runs in-process on `unleash-yggdrasil`,
//!   behind our own [`engine::FlagEngine`] trait.
//! - [`FlagClient`] is the handle services use: `is_enabled(KEY, &ctx)`, `variant(KEY, &ctx)`.
//! - Flag keys are declared once: `pub const NEW_CLAIMS: FlagKey = FlagKey::new("identity.new-claims");`
//! - [`FlagContext`] carries `tenantId` as a property, usable in constraints and as stickiness.
//! - Every state change is diffed per flag and audited ([`audit`]); a local kill switch forces
//!   flags off ([`killswitch`]); the last good state is persisted ([`persist`]).
//!
//! See `docs/feature-flags.md` for the operator's view.

pub mod audit;
mod client;
pub mod config;
mod context;
pub mod definition;
pub mod engine;
mod error;
mod key;
pub mod killswitch;
mod metrics;
pub mod openfeature;
pub mod persist;
mod state;

pub use audit::{AUDIT_TARGET, AuditRecord, StateSource, VerifyReport};
pub use client::{
    EVALUATION_TARGET, EvaluatedFlag, FlagClient, FlagStatus, IMPRESSION_TARGET, ImpressionEvent,
    ImpressionKind, PROVIDER_NAME, SDK_NAME, Variant, VariantPayload, backoff_delay,
    bundled_bootstrap_path,
};
pub use config::{FlagsConfig, OfflineConfig, UnleashConfig};
pub use context::{FlagContext, TENANT_ID_FIELD};
pub use definition::ChangeKind;
pub use error::FlagError;
pub use key::{FlagKey, platform};
pub use metrics::NO_VARIANT;
