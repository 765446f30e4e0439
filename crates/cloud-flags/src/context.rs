//! The typed evaluation context.

use std::collections::HashMap;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The context field that carries the tenant: usable in constraints (`tenantId IN [...]`) and as
/// custom stickiness of a flexible rollout or of variants ("10% of tenants, sticky per tenant").
pub const TENANT_ID_FIELD: &str = "tenantId";

/// Who and what a flag is evaluated for.
///
/// Built with the `with_*` methods; the tenant is kept in the custom properties too (as
/// [`TENANT_ID_FIELD`]), so evaluation never has to allocate to merge it in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagContext {
    user_id: Option<String>,
    tenant_id: Option<String>,
    session_id: Option<String>,
    environment: Option<String>,
    app_name: Option<String>,
    remote_address: Option<String>,
    current_time: Option<String>,
    properties: HashMap<String, String>,
}

impl FlagContext {
    pub fn new() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn with_user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    #[must_use]
    pub fn with_tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        let tenant_id = tenant_id.into();
        self.properties
            .insert(TENANT_ID_FIELD.to_string(), tenant_id.clone());
        self.tenant_id = Some(tenant_id);
        self
    }

    #[must_use]
    pub fn with_session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    #[must_use]
    pub fn with_environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    #[must_use]
    pub fn with_app_name(mut self, app_name: impl Into<String>) -> Self {
        self.app_name = Some(app_name.into());
        self
    }

    #[must_use]
    pub fn with_remote_address(mut self, remote_address: impl Into<String>) -> Self {
        self.remote_address = Some(remote_address.into());
        self
    }

    /// The time date constraints (`DATE_AFTER`, `DATE_BEFORE`) compare against. Without it the
    /// engine uses the wall clock.
    #[must_use]
    pub fn with_current_time(mut self, at: OffsetDateTime) -> Self {
        self.current_time = at.format(&Rfc3339).ok();
        self
    }

    /// As [`Self::with_current_time`], from an RFC 3339 string (passed to the engine unchanged).
    #[must_use]
    pub fn with_current_time_str(mut self, at: impl Into<String>) -> Self {
        self.current_time = Some(at.into());
        self
    }

    /// A custom property for constraints and custom stickiness. Setting `tenantId` here is the
    /// same as [`Self::with_tenant_id`].
    #[must_use]
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        let value = value.into();
        if name == TENANT_ID_FIELD {
            return self.with_tenant_id(value);
        }
        self.properties.insert(name, value);
        self
    }

    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant_id.as_deref()
    }

    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    pub fn environment(&self) -> Option<&str> {
        self.environment.as_deref()
    }

    pub fn app_name(&self) -> Option<&str> {
        self.app_name.as_deref()
    }

    pub fn remote_address(&self) -> Option<&str> {
        self.remote_address.as_deref()
    }

    pub fn current_time(&self) -> Option<&str> {
        self.current_time.as_deref()
    }

    /// Custom properties, including `tenantId` when a tenant is set.
    pub fn properties(&self) -> &HashMap<String, String> {
        &self.properties
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_is_a_property_either_way() {
        let a = FlagContext::new().with_tenant_id("t1");
        let b = FlagContext::new().with_property("tenantId", "t1");
        assert_eq!(a, b);
        assert_eq!(
            a.properties().get("tenantId").map(String::as_str),
            Some("t1")
        );
        assert_eq!(b.tenant_id(), Some("t1"));
    }
}
