//! Typed flag keys, declared once per flag as constants.

use std::fmt;

/// The name of a flag, declared once as a constant so that a typo is a compile error, not a
/// silently-off feature:
///
/// ```
/// use cloud_flags::FlagKey;
/// pub const NEW_CLAIMS: FlagKey = FlagKey::new("identity.new-claims");
/// assert_eq!(NEW_CLAIMS.name(), "identity.new-claims");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlagKey(&'static str);

impl FlagKey {
    pub const fn new(name: &'static str) -> Self {
        Self(name)
    }

    pub const fn name(&self) -> &'static str {
        self.0
    }
}

impl AsRef<str> for FlagKey {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl fmt::Display for FlagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The flags the platform's own services use; they ship in `bootstrap/local-flags.json`.
pub mod platform {
    use super::FlagKey;

    /// Gateway: split traffic between the stable and canary upstreams by variant
    /// (`stable` / `canary`), sticky per tenant.
    pub const GATEWAY_CANARY: FlagKey = FlagKey::new("gateway.canary-upstream");
    /// Front end: the new dashboard, returned to the browser by `GET /bff/v1/session`.
    pub const FRONTEND_NEW_DASHBOARD: FlagKey = FlagKey::new("frontend.new-dashboard");
    /// Identity: issue tokens with the new claim layout, per tenant.
    pub const IDENTITY_NEW_CLAIMS: FlagKey = FlagKey::new("identity.new-claims");
    /// Identity: require a second factor, per tenant.
    pub const IDENTITY_REQUIRE_MFA: FlagKey = FlagKey::new("identity.require-mfa");
}
