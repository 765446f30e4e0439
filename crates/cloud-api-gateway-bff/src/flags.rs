//! The feature-flag integration: a [`cloud_flags::FlagClient`] behind the gateway's two hooks,
//! [`VariantResolver`] (canary upstreams, route gates) and [`FrontendFlags`]
//! (`GET /bff/v1/session`).

use cloud_flags::{FlagClient, FlagContext};
use serde_json::{Map, Value, json};

use crate::bff::FrontendFlags;
use crate::config::Stickiness;
use crate::routes::{FlagSubject, VariantResolver};

/// The flags `GET /bff/v1/session` hands to the browser: every flag whose name starts with it.
pub const FRONTEND_PREFIX: &str = "frontend.";

/// Both hooks, answered by one flag client.
#[derive(Debug, Clone)]
pub struct FlagHooks {
    client: FlagClient,
}

impl FlagHooks {
    pub fn new(client: FlagClient) -> Self {
        Self { client }
    }

    pub fn client(&self) -> &FlagClient {
        &self.client
    }
}

/// The evaluation context of a subject.
///
/// A canary must be sticky by the unit its route names, whatever stickiness the flag itself was
/// written with. Sticky per tenant: the context carries the tenant as `tenantId` and as the
/// session id, and no user, so a flag with `default` stickiness (user, then session, then
/// random) still keeps a whole tenant on one upstream instead of scattering it. Sticky per user:
/// the user id, plus the tenant for constraints. Gates and front-end flags get both ids and let
/// the flag decide.
fn context(subject: &FlagSubject<'_>) -> FlagContext {
    let mut ctx = FlagContext::new();
    match subject.stickiness {
        Some(Stickiness::Tenant) => {
            if let Some(tenant) = subject.tenant {
                ctx = ctx.with_tenant_id(tenant).with_session_id(tenant);
            }
        }
        Some(Stickiness::User) | None => {
            if let Some(user) = subject.user {
                ctx = ctx.with_user_id(user);
            }
            if let Some(tenant) = subject.tenant {
                ctx = ctx.with_tenant_id(tenant);
            }
        }
    }
    ctx
}

impl VariantResolver for FlagHooks {
    fn variant(&self, flag: &str, subject: &FlagSubject<'_>) -> Option<String> {
        let variant = self.client.variant(flag, &context(subject));
        variant.enabled.then(|| variant.name.into_owned())
    }

    fn is_enabled(&self, flag: &str, subject: &FlagSubject<'_>) -> bool {
        self.client.is_enabled(flag, &context(subject))
    }
}

impl FrontendFlags for FlagHooks {
    /// `{"frontend.x": {"enabled": bool, "variant": "name" | "disabled", "payload": null | {"type", "value"}}}`
    fn evaluate(&self, tenant: Option<&str>, user: &str) -> Map<String, Value> {
        let subject = FlagSubject {
            tenant,
            user: Some(user),
            stickiness: None,
        };
        self.client
            .evaluate_prefix(FRONTEND_PREFIX, &context(&subject))
            .into_iter()
            .map(|f| {
                let value = json!({
                    "enabled": f.enabled,
                    "variant": f.variant.name,
                    "payload": f.variant.payload,
                });
                (f.name, value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &str = r#"{"version": 2, "features": [
      {"name": "frontend.beta", "enabled": true, "strategies": [{"name": "default", "constraints": [
        {"contextName": "tenantId", "operator": "IN", "values": ["t1"]}]}]},
      {"name": "backend.secret", "enabled": true, "strategies": [{"name": "default"}]},
      {"name": "split", "enabled": true, "strategies": [{"name": "flexibleRollout",
        "parameters": {"rollout": "100", "stickiness": "default", "groupId": "split"},
        "variants": [{"name": "stable", "weight": 500, "weightType": "variable", "stickiness": "default"},
                     {"name": "canary", "weight": 500, "weightType": "variable", "stickiness": "default"}]}]}
    ]}"#;

    fn hooks() -> FlagHooks {
        FlagHooks::new(FlagClient::from_features_json(FLAGS.as_bytes()).unwrap())
    }

    #[test]
    fn frontend_flags_are_only_the_frontend_prefix_and_evaluated_per_tenant() {
        let h = hooks();
        let t1 = h.evaluate(Some("t1"), "u");
        assert_eq!(t1.keys().collect::<Vec<_>>(), ["frontend.beta"]);
        assert_eq!(t1["frontend.beta"]["enabled"], true);
        assert_eq!(
            h.evaluate(Some("t2"), "u")["frontend.beta"]["enabled"],
            false
        );
    }

    #[test]
    fn a_tenant_sticky_canary_is_sticky_even_with_default_flag_stickiness() {
        let h = hooks();
        fn subject<'a>(tenant: &'a str, user: &'a str) -> FlagSubject<'a> {
            FlagSubject {
                tenant: Some(tenant),
                user: Some(user),
                stickiness: Some(Stickiness::Tenant),
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in 0..40 {
            let tenant = format!("tenant-{t}");
            let first = h.variant("split", &subject(&tenant, "user-0"));
            for u in 1..5 {
                let user = format!("user-{u}");
                assert_eq!(h.variant("split", &subject(&tenant, &user)), first);
            }
            seen.insert(first);
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            [Some("canary".to_string()), Some("stable".to_string())]
        );
        assert_eq!(h.variant("unknown", &subject("t1", "u")), None);
    }
}
