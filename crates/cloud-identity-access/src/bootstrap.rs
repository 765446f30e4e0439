//! First start: the platform tenant and its `platform-admin` client, whose secret comes from
//! `bootstrap.admin_client_secret` (environment) or `bootstrap.admin_client_secret_file`.
//! Without one, no admin client is created: there is never a default password.

use secrecy::{ExposeSecret, SecretString};

use crate::admin::{PLATFORM_ADMIN, PLATFORM_TENANT};
use crate::config::BootstrapConfig;
use crate::crypto::SecretHasher;
use crate::model::{
    Actor, Client, ClientKind, GRANT_CLIENT_CREDENTIALS, Role, RoleAssignment, SubjectKind, Tenant,
};
use crate::store::{Store, StoreError};

pub const ADMIN_CLIENT_ID: &str = "platform-admin";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot read bootstrap.admin_client_secret_file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("bootstrap.admin_client_secret must be at least 32 characters")]
    TooShort,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn configured_secret(config: &BootstrapConfig) -> Result<Option<SecretString>, BootstrapError> {
    if let Some(secret) = &config.admin_client_secret {
        return Ok(Some(secret.clone()));
    }
    match &config.admin_client_secret_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| BootstrapError::File {
                path: path.display().to_string(),
                source,
            })?;
            Ok(Some(SecretString::from(
                text.trim_end_matches(['\n', '\r']).to_string(),
            )))
        }
        None => Ok(None),
    }
}

/// Creates the platform tenant, the `platform-admin` role and client if they do not exist.
pub async fn run(
    store: &dyn Store,
    hasher: &SecretHasher,
    config: &BootstrapConfig,
    now: i64,
) -> Result<(), BootstrapError> {
    let Some(secret) = configured_secret(config)? else {
        if store.get_client(ADMIN_CLIENT_ID).await?.is_none() {
            tracing::warn!(
                "no bootstrap.admin_client_secret configured: the admin API has no platform admin client yet"
            );
        }
        return Ok(());
    };
    if secret.expose_secret().chars().count() < 32 {
        return Err(BootstrapError::TooShort);
    }
    let actor = Actor::system();
    if store.get_tenant(PLATFORM_TENANT).await?.is_none() {
        let tenant = Tenant {
            id: PLATFORM_TENANT.into(),
            name: PLATFORM_TENANT.into(),
            created_at: now,
        };
        match store.create_tenant(&actor, &tenant, now).await {
            // Another replica bootstrapped at the same moment.
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    if store.get_client(ADMIN_CLIENT_ID).await?.is_some() {
        return Ok(());
    }
    let role = match store
        .list_roles(PLATFORM_TENANT)
        .await?
        .into_iter()
        .find(|r| r.name == "platform-admin")
    {
        Some(role) => role,
        None => {
            let role = Role {
                id: uuid::Uuid::now_v7().to_string(),
                tenant_id: PLATFORM_TENANT.into(),
                name: "platform-admin".into(),
                permissions: vec![PLATFORM_ADMIN.into()],
                created_at: now,
            };
            store.create_role(&actor, &role, now).await?;
            role
        }
    };
    let client = Client {
        id: ADMIN_CLIENT_ID.into(),
        tenant_id: PLATFORM_TENANT.into(),
        name: "Platform administration".into(),
        kind: ClientKind::Confidential,
        secret_hash: Some(hasher.hash(secret.expose_secret())),
        redirect_uris: vec![],
        grant_types: vec![GRANT_CLIENT_CREDENTIALS.into()],
        scopes: vec!["admin".into()],
        created_at: now,
    };
    match store.create_client(&actor, &client, now).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => return Ok(()),
        Err(err) => return Err(err.into()),
    }
    let assignment = RoleAssignment {
        tenant_id: PLATFORM_TENANT.into(),
        role_id: role.id,
        subject_kind: SubjectKind::Client,
        subject_id: ADMIN_CLIENT_ID.into(),
        created_at: now,
    };
    store.assign_role(&actor, &assignment, now).await?;
    tracing::info!(
        client_id = ADMIN_CLIENT_ID,
        "bootstrap: created the platform admin client"
    );
    Ok(())
}
