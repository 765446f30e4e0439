//! The data model: tenants, users, roles, role assignments, OAuth clients, and what the token
//! endpoints persist (authorization codes, refresh-token families, signing keys, audit events).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    Active,
    Disabled,
    Locked,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Locked => "locked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "disabled" => Some(Self::Disabled),
            "locked" => Some(Self::Locked),
            _ => None,
        }
    }
}

/// A user. The password hash never leaves the store layer in API responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: String,
    pub tenant_id: String,
    pub email: String,
    #[serde(skip_serializing, default)]
    pub password_hash: String,
    pub status: UserStatus,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Role {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// Permission strings such as `orders:read`.
    pub permissions: Vec<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    User,
    Client,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Client => "client",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "client" => Some(Self::Client),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleAssignment {
    pub tenant_id: String,
    pub role_id: String,
    pub subject_kind: SubjectKind,
    pub subject_id: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// Has a secret (service-generated, shown once).
    Confidential,
    /// Has no secret (browser or native apps); must use PKCE.
    Public,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confidential => "confidential",
            Self::Public => "public",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "confidential" => Some(Self::Confidential),
            "public" => Some(Self::Public),
            _ => None,
        }
    }
}

pub const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
pub const GRANT_REFRESH_TOKEN: &str = "refresh_token";
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ALL_GRANTS: [&str; 4] = [
    GRANT_AUTHORIZATION_CODE,
    GRANT_CLIENT_CREDENTIALS,
    GRANT_REFRESH_TOKEN,
    GRANT_TOKEN_EXCHANGE,
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Client {
    /// The OAuth `client_id`.
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub kind: ClientKind,
    #[serde(skip_serializing, default)]
    pub secret_hash: Option<String>,
    /// Exact-match redirect URIs.
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    /// Scopes this client may request.
    pub scopes: Vec<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationCode {
    pub code_hash: String,
    pub tenant_id: String,
    pub client_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: String,
    pub auth_time: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub token_hash: String,
    pub family_id: String,
    pub tenant_id: String,
    pub client_id: String,
    pub user_id: String,
    pub scope: String,
    pub expires_at: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published, not yet signing: verifiers learn it before it signs anything.
    Next,
    /// Signs new tokens.
    Active,
    /// Published, no longer signing: tokens it signed are still valid.
    Retiring,
    /// Not published.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Active => "active",
            Self::Retiring => "retiring",
            Self::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "next" => Some(Self::Next),
            "active" => Some(Self::Active),
            "retiring" => Some(Self::Retiring),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub alg: String,
    pub state: KeyState,
    /// base64url of the 32-byte Ed25519 public key.
    pub public_key: String,
    /// AES-256-GCM encrypted private key (see `keys`).
    pub private_key_enc: String,
    pub created_at: i64,
    pub state_changed_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub seq: i64,
    pub id: String,
    pub at: i64,
    /// Who made the change, e.g. `client:platform-admin` or `system`.
    pub actor: String,
    pub tenant_id: Option<String>,
    pub action: String,
    pub target: String,
    /// JSON text of the state before the change, if any.
    pub before: Option<String>,
    /// JSON text of the state after the change, if any.
    pub after: Option<String>,
    pub prev_hash: String,
    pub hash: String,
    /// The `x-request-id` of the API request that made the change, to find it in logs and
    /// traces; none for changes made outside a request (bootstrap, key rotation, the CLI) and for
    /// events written by a release without this field. Not covered by `hash`, so that such a
    /// release still verifies the chain after a rollback.
    pub request_id: Option<String>,
}

/// Who does a change, and in which tenant; recorded in the audit event of the change.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: String,
    /// The API request the change is made in, if any ([`AuditEvent::request_id`]).
    pub request_id: Option<String>,
}

impl Actor {
    pub fn system() -> Self {
        Self {
            id: "system".into(),
            request_id: None,
        }
    }

    pub fn client(client_id: &str) -> Self {
        Self {
            id: format!("client:{client_id}"),
            request_id: None,
        }
    }

    /// The same actor, acting in the API request `request_id`.
    #[must_use]
    pub fn in_request(mut self, request_id: Option<&str>) -> Self {
        self.request_id = request_id.map(str::to_string);
        self
    }
}
