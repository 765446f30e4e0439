//! Access tokens (RFC 9068 JWTs, `typ: at+jwt`), ID tokens, and their validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::{JwtError, KeySet};

pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
pub const ID_TOKEN_TYP: &str = "JWT";
/// The `ver` of the claim layout 2 (feature flag `identity.new-claims`); layout 1 has no `ver`.
pub const CLAIMS_LAYOUT_V2: u32 = 2;

/// The claims of an access token (RFC 9068 section 2.2, plus `tid`, roles and permissions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    /// The user id, or the client id for client_credentials tokens.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub client_id: String,
    /// Space-separated scopes.
    pub scope: String,
    /// The tenant.
    pub tid: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Present on tokens from token exchange: the party acting for `sub` (RFC 8693 section 4.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// The claim layout: absent in layout 1; `2` when the tenant has `identity.new-claims` on.
    /// Layout 2 only adds claims, so verifiers of layout 1 (the gateway) keep working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ver: Option<u32>,
    /// Layout 2: `permissions` grouped by resource, `{"orders": ["read", "write"]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions_by_resource: Option<BTreeMap<String, Vec<String>>>,
}

/// Groups `resource:action` permissions by resource (split at the first `:`, sorted, no
/// duplicates). A permission without `:` is a resource with no actions: `{"audit": []}`.
pub fn permissions_by_resource(permissions: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for permission in permissions {
        match permission.split_once(':') {
            Some((resource, action)) => grouped
                .entry(resource.to_string())
                .or_default()
                .push(action.to_string()),
            None => {
                grouped.entry(permission.clone()).or_default();
            }
        }
    }
    for actions in grouped.values_mut() {
        actions.sort();
        actions.dedup();
    }
    grouped
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl AccessClaims {
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }

    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    pub azp: String,
    pub tid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error("the token is not an access token")]
    WrongType,
    #[error("the token was issued by another issuer")]
    Issuer,
    #[error("the token has expired")]
    Expired,
    #[error("the token's claims are malformed")]
    Claims,
    #[error("the token has been revoked")]
    Revoked,
}

/// Verifies an access token: signature, `typ`, issuer and expiry. Revocation is the caller's.
pub fn verify_access_token(
    keys: &KeySet,
    token: &str,
    issuer: &str,
    now: i64,
) -> Result<AccessClaims, TokenError> {
    let (typ, claims) = keys.verify(token)?;
    if typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
        return Err(TokenError::WrongType);
    }
    let claims: AccessClaims =
        serde_json::from_value::<AccessClaims>(claims).map_err(|_| TokenError::Claims)?;
    if claims.iss != issuer {
        return Err(TokenError::Issuer);
    }
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// The claims of any token we signed, for introspection of other types.
pub fn verify_any(keys: &KeySet, token: &str) -> Result<(Option<String>, Value), TokenError> {
    Ok(keys.verify(token)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_are_grouped_by_resource() {
        let permissions: Vec<String> = [
            "orders:write",
            "orders:read",
            "orders:read",
            "tenant:admin",
            "audit",
            "billing:invoices:read",
        ]
        .map(String::from)
        .to_vec();
        let grouped = serde_json::to_value(permissions_by_resource(&permissions));
        assert_eq!(
            grouped.ok(),
            Some(serde_json::json!({
                "audit": [],
                "billing": ["invoices:read"],
                "orders": ["read", "write"],
                "tenant": ["admin"],
            }))
        );
        assert!(permissions_by_resource(&[]).is_empty());
    }
}
