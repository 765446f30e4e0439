//! Demo data for `cloudctl up`: a tenant, a user and two clients, seeded only on an empty store.

use crate::Application;
use crate::admin::{CreateClient, PLATFORM_TENANT, TENANT_ADMIN, new_client};
use crate::crypto::random_token;
use crate::model::{
    Actor, ClientKind, GRANT_AUTHORIZATION_CODE, GRANT_CLIENT_CREDENTIALS, GRANT_REFRESH_TOKEN,
    GRANT_TOKEN_EXCHANGE, Role, RoleAssignment, SubjectKind, Tenant, User, UserStatus,
};
use crate::store::StoreError;

pub const DEMO_TENANT: &str = "demo";
pub const DEMO_USER_EMAIL: &str = "demo@example.com";
/// The redirect URI registered for the demo web client.
pub const DEMO_REDIRECT_URI: &str = "http://localhost:8080/callback";

/// Credentials of freshly seeded demo data. The secrets are generated and shown only here.
#[derive(Debug, Clone)]
pub struct DemoCredentials {
    pub tenant_id: String,
    /// Confidential client for `client_credentials` and token exchange.
    pub client_id: String,
    pub client_secret: String,
    /// Public client for the authorization code flow with PKCE.
    pub web_client_id: String,
    pub web_redirect_uri: String,
    pub user_email: String,
    pub user_password: String,
    /// `<issuer>/oauth2/token`
    pub token_endpoint: String,
}

impl DemoCredentials {
    /// A curl command that gets a `client_credentials` token.
    pub fn curl_example(&self) -> String {
        format!(
            "curl -s -u '{}:{}' -d grant_type=client_credentials -d 'scope=orders:read' {}",
            self.client_id, self.client_secret, self.token_endpoint
        )
    }
}

#[derive(Debug)]
pub enum DemoSeed {
    Created(DemoCredentials),
    /// The store already held tenants; nothing was changed and no secret can be shown again.
    AlreadySeeded {
        tenant_ids: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("hashing the demo password failed: {0}")]
    Password(String),
}

/// Seeds the demo tenant, user and clients if the store has no tenant besides `platform`.
pub async fn seed(app: &Application) -> Result<DemoSeed, DemoError> {
    let state = app.state();
    let store = &state.store;
    let existing: Vec<String> = store
        .list_tenants()
        .await?
        .into_iter()
        .map(|t| t.id)
        .filter(|id| id != PLATFORM_TENANT)
        .collect();
    if !existing.is_empty() {
        return Ok(DemoSeed::AlreadySeeded {
            tenant_ids: existing,
        });
    }
    let now = state.now();
    let actor = Actor {
        id: "system:demo-seed".into(),
        request_id: None,
    };
    let tenant = Tenant {
        id: DEMO_TENANT.into(),
        name: DEMO_TENANT.into(),
        created_at: now,
    };
    store.create_tenant(&actor, &tenant, now).await?;
    let password = random_token(12);
    let password_hash = state
        .passwords
        .hash(password.clone())
        .await
        .map_err(|e| DemoError::Password(e.to_string()))?;
    let user = User {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant.id.clone(),
        email: DEMO_USER_EMAIL.into(),
        password_hash,
        status: UserStatus::Active,
        created_at: now,
    };
    store.create_user(&actor, &user, now).await?;
    let reader = Role {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant.id.clone(),
        name: "orders-reader".into(),
        permissions: vec!["orders:read".into()],
        created_at: now,
    };
    let service = Role {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant.id.clone(),
        name: "demo-admin".into(),
        permissions: vec![
            "orders:read".into(),
            "orders:write".into(),
            TENANT_ADMIN.into(),
        ],
        created_at: now,
    };
    store.create_role(&actor, &reader, now).await?;
    store.create_role(&actor, &service, now).await?;
    let (svc_client, secret) = new_client(
        state,
        &tenant.id,
        CreateClient {
            name: "Demo service".into(),
            kind: ClientKind::Confidential,
            redirect_uris: vec![],
            grant_types: vec![GRANT_CLIENT_CREDENTIALS.into(), GRANT_TOKEN_EXCHANGE.into()],
            scopes: vec![
                "orders:read".into(),
                "orders:write".into(),
                "openid".into(),
                "email".into(),
            ],
        },
    );
    store.create_client(&actor, &svc_client, now).await?;
    let (web_client, _) = new_client(
        state,
        &tenant.id,
        CreateClient {
            name: "Demo web app".into(),
            kind: ClientKind::Public,
            redirect_uris: vec![DEMO_REDIRECT_URI.into()],
            grant_types: vec![GRANT_AUTHORIZATION_CODE.into(), GRANT_REFRESH_TOKEN.into()],
            scopes: vec![
                "openid".into(),
                "email".into(),
                "offline_access".into(),
                "orders:read".into(),
            ],
        },
    );
    store.create_client(&actor, &web_client, now).await?;
    for (role, kind, subject) in [
        (&reader, SubjectKind::User, &user.id),
        (&service, SubjectKind::Client, &svc_client.id),
    ] {
        let a = RoleAssignment {
            tenant_id: tenant.id.clone(),
            role_id: role.id.clone(),
            subject_kind: kind,
            subject_id: subject.clone(),
            created_at: now,
        };
        store.assign_role(&actor, &a, now).await?;
    }
    Ok(DemoSeed::Created(DemoCredentials {
        tenant_id: tenant.id,
        client_id: svc_client.id,
        client_secret: secret.unwrap_or_default(),
        web_client_id: web_client.id,
        web_redirect_uri: DEMO_REDIRECT_URI.into(),
        user_email: DEMO_USER_EMAIL.into(),
        user_password: password,
        token_endpoint: format!("{}/oauth2/token", state.issuer()),
    }))
}
