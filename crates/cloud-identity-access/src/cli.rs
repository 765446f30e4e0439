//! Operator commands that work on the store directly: `migrate`, `keys rotate`, `keys list`,
//! `audit verify`.

use serde::Serialize;

use crate::audit::{VerifyReport, verify_chain};
use crate::model::Actor;
use crate::store::MigrationReport;
use crate::{BuildError, Config, open_and_migrate, open_keys, open_store};

/// Applies the store's pending migrations and reports them. Needs only `data_dir` /
/// `database.*`: no signing keys, no bootstrap secret, no listener (the Helm PreSync Job).
pub async fn migrate(config: &Config) -> Result<MigrationReport, BuildError> {
    Ok(open_and_migrate(config).await?.1)
}

#[derive(Debug, Serialize)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: String,
    pub state: &'static str,
    pub created_at: i64,
    pub state_changed_at: i64,
}

/// Rotates the signing keys now: next -> active -> retiring -> retired, plus a new next key.
/// Running replicas pick the change up at their next `keys.rotation_check_interval`.
pub async fn keys_rotate(config: &Config) -> Result<Vec<KeyInfo>, BuildError> {
    let store = open_store(config).await?;
    let keys = open_keys(config, store.clone()).await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    keys.ensure(now).await?;
    keys.rotate(
        &Actor {
            id: "operator:cli".into(),
            request_id: None,
        },
        now,
    )
    .await?;
    keys_list_from(store.as_ref()).await
}

pub async fn keys_list(config: &Config) -> Result<Vec<KeyInfo>, BuildError> {
    let store = open_store(config).await?;
    keys_list_from(store.as_ref()).await
}

async fn keys_list_from(store: &dyn crate::store::Store) -> Result<Vec<KeyInfo>, BuildError> {
    Ok(store
        .list_keys()
        .await?
        .into_iter()
        .map(|k| KeyInfo {
            kid: k.kid,
            alg: k.alg,
            state: k.state.as_str(),
            created_at: k.created_at,
            state_changed_at: k.state_changed_at,
        })
        .collect())
}

/// Verifies the audit trail's hash chain.
pub async fn audit_verify(config: &Config) -> Result<VerifyReport, BuildError> {
    let store = open_store(config).await?;
    let (events, head_seq, head_hash) = store.audit_chain().await?;
    Ok(verify_chain(&events, head_seq, &head_hash))
}
