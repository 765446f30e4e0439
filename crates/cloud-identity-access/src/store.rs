//! Storage behind one trait, [`Store`], with two implementations generated from the same SQL:
//! [`SqliteStore`] (embedded default: a file, or memory for tests) and [`PostgresStore`]
//! (production). Queries are plain `sqlx::query` strings with `$n` placeholders, which both
//! databases accept, so nothing needs a database at compile time.
//!
//! Every change to tenants, users, roles, assignments, clients and keys appends a hash-chained
//! audit event in the same transaction. The first statement of such a transaction bumps the
//! single-row `audit_head`, which serialises audited writes on both backends.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::audit::event_hash;
use crate::model::{
    Actor, AuditEvent, AuthorizationCode, Client, ClientKind, KeyState, RefreshToken, Role,
    RoleAssignment, SigningKeyRecord, SubjectKind, Tenant, User, UserStatus,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// sqlx errors name the failing operation, never the connection URL.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// The database cannot be reached (no pool connection within the acquire timeout, a broken
    /// connection, a server shutting down): the request may succeed when retried.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("unsupported database URL scheme (expected sqlite: or postgres:)")]
    UnsupportedUrl,
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err
            && db.is_unique_violation()
        {
            return Self::Conflict(db.table().unwrap_or("record").to_string());
        }
        let unreachable = match &err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            // SQLSTATE class 08 (connection exception) and 57P (the server shutting down or
            // not yet accepting connections).
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
            _ => false,
        };
        if unreachable {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What happened when an authorization code was redeemed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRedemption {
    Redeemed(Box<AuthorizationCode>),
    AlreadyUsed,
    Unknown,
}

/// What happened when a refresh token was presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshRotation {
    /// The presented token, now used; the new one is stored.
    Rotated(RefreshToken),
    /// The token was used before: the whole family is now revoked.
    ReuseDetected,
    /// Unknown, expired, or its family was revoked.
    Invalid,
}

#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub tenant_id: Option<String>,
    pub after_seq: Option<i64>,
    pub limit: i64,
}

/// The roles and permissions a subject holds in a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
}

#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Applies pending migrations (idempotent) and says which ran now and which were there.
    async fn migrate(&self) -> StoreResult<MigrationReport>;
    async fn ping(&self) -> StoreResult<()>;
    fn backend(&self) -> &'static str;

    async fn create_tenant(&self, actor: &Actor, tenant: &Tenant, at: i64) -> StoreResult<()>;
    async fn get_tenant(&self, id: &str) -> StoreResult<Option<Tenant>>;
    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>>;
    async fn count_tenants(&self) -> StoreResult<i64>;

    async fn create_user(&self, actor: &Actor, user: &User, at: i64) -> StoreResult<()>;
    async fn get_user(&self, tenant_id: &str, id: &str) -> StoreResult<Option<User>>;
    async fn find_user_by_email(&self, tenant_id: &str, email: &str) -> StoreResult<Option<User>>;
    async fn list_users(&self, tenant_id: &str) -> StoreResult<Vec<User>>;
    async fn set_user_status(
        &self,
        actor: &Actor,
        tenant_id: &str,
        id: &str,
        status: UserStatus,
        at: i64,
    ) -> StoreResult<User>;
    async fn delete_user(
        &self,
        actor: &Actor,
        tenant_id: &str,
        id: &str,
        at: i64,
    ) -> StoreResult<()>;

    async fn create_role(&self, actor: &Actor, role: &Role, at: i64) -> StoreResult<()>;
    async fn get_role(&self, tenant_id: &str, id: &str) -> StoreResult<Option<Role>>;
    async fn list_roles(&self, tenant_id: &str) -> StoreResult<Vec<Role>>;
    async fn delete_role(
        &self,
        actor: &Actor,
        tenant_id: &str,
        id: &str,
        at: i64,
    ) -> StoreResult<()>;

    async fn assign_role(
        &self,
        actor: &Actor,
        assignment: &RoleAssignment,
        at: i64,
    ) -> StoreResult<()>;
    async fn unassign_role(
        &self,
        actor: &Actor,
        assignment: &RoleAssignment,
        at: i64,
    ) -> StoreResult<()>;
    async fn list_assignments(&self, tenant_id: &str) -> StoreResult<Vec<RoleAssignment>>;
    /// Role names and the union of their permissions, for a subject in its tenant.
    async fn grants(
        &self,
        tenant_id: &str,
        kind: SubjectKind,
        subject_id: &str,
    ) -> StoreResult<Grants>;

    async fn create_client(&self, actor: &Actor, client: &Client, at: i64) -> StoreResult<()>;
    async fn get_client(&self, id: &str) -> StoreResult<Option<Client>>;
    /// [`Store::get_client`] and [`Store::is_jti_revoked`] in one round trip (introspection).
    /// Without the client, `jti` counts as not revoked.
    async fn get_client_and_jti_revoked(
        &self,
        client_id: &str,
        jti: &str,
    ) -> StoreResult<(Option<Client>, bool)>;
    async fn list_clients(&self, tenant_id: &str) -> StoreResult<Vec<Client>>;
    async fn delete_client(
        &self,
        actor: &Actor,
        tenant_id: &str,
        id: &str,
        at: i64,
    ) -> StoreResult<()>;

    async fn insert_code(&self, code: &AuthorizationCode) -> StoreResult<()>;
    /// Marks the code used, atomically: only one caller ever gets `Redeemed`.
    async fn redeem_code(&self, code_hash: &str, now: i64) -> StoreResult<CodeRedemption>;

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()>;
    /// Marks `presented_hash` used and stores `next` in the same family, atomically. A token
    /// presented twice revokes its family.
    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        next: &RefreshToken,
        now: i64,
    ) -> StoreResult<RefreshRotation>;
    /// Revokes the family of this token (RFC 7009); returns whether the token was known.
    async fn revoke_refresh_family(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>>;
    async fn get_refresh_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> StoreResult<Option<RefreshToken>>;

    async fn revoke_jti(&self, jti: &str, expires_at: i64) -> StoreResult<()>;
    async fn is_jti_revoked(&self, jti: &str) -> StoreResult<bool>;

    async fn list_keys(&self) -> StoreResult<Vec<SigningKeyRecord>>;
    /// Applies a rotation: `retire` -> retired, `retiring` -> retiring, `activate` -> active,
    /// and inserts `new_next` (state next), all in one audited transaction.
    async fn apply_rotation(&self, actor: &Actor, plan: &RotationPlan, at: i64) -> StoreResult<()>;

    async fn query_audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>>;
    /// Every event in order, and the chain head (seq, hash).
    async fn audit_chain(&self) -> StoreResult<(Vec<AuditEvent>, i64, String)>;
}

/// One migration, by version and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationId {
    pub version: i64,
    pub name: String,
}

/// What [`Store::migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    pub backend: &'static str,
    /// Applied by this call.
    pub applied: Vec<MigrationId>,
    /// Already recorded in `schema_migrations` (by an earlier run or a concurrent replica).
    pub already_present: Vec<MigrationId>,
    /// Recorded in the database but unknown to this binary: a newer release migrated it. That is
    /// fine while migrations are expand-only (an older release keeps working), so not an error.
    pub unknown: Vec<MigrationId>,
}

/// Key state changes of one rotation.
#[derive(Debug, Clone, Default)]
pub struct RotationPlan {
    pub retire: Vec<String>,
    pub retiring: Vec<String>,
    pub activate: Option<String>,
    pub new_keys: Vec<SigningKeyRecord>,
}

/// How long opening a SQLite file waits for another process that is switching it to WAL: the
/// same bound as the busy timeout that every other lock wait gets.
const SQLITE_OPEN_WAIT: Duration = Duration::from_secs(5);

/// Opens a SQLite pool, retrying while the file is locked by another process's first open.
///
/// Switching a new file to WAL takes an exclusive lock that SQLite does not wait for with the
/// busy timeout (sqlx documents this beside its `journal_mode` pragma), so processes opening
/// the same new file at once (the migrate Job racing starting replicas) get SQLITE_BUSY
/// straight away. That is transient: the winner's switch takes milliseconds.
async fn connect_sqlite_waiting_for_the_wal_switch(
    pool_options: SqlitePoolOptions,
    options: SqliteConnectOptions,
) -> Result<SqlitePool, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + SQLITE_OPEN_WAIT;
    loop {
        match pool_options.clone().connect_with(options.clone()).await {
            Err(sqlx::Error::Database(db))
                if is_sqlite_busy(db.code().as_deref())
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            result => return result,
        }
    }
}

/// SQLITE_BUSY, or one of its extended codes (the low byte is the primary code).
fn is_sqlite_busy(code: Option<&str>) -> bool {
    code.and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == 5)
}

/// Opens the store named by `url` and applies migrations.
pub async fn connect(
    url: &SecretString,
    max_connections: u32,
) -> StoreResult<std::sync::Arc<dyn Store>> {
    Ok(connect_and_migrate(url, max_connections).await?.0)
}

/// [`connect`], also returning what the migrations did (`cloud-identity-access migrate`).
pub async fn connect_and_migrate(
    url: &SecretString,
    max_connections: u32,
) -> StoreResult<(std::sync::Arc<dyn Store>, MigrationReport)> {
    let raw = url.expose_secret();
    if raw.starts_with("sqlite:") {
        let in_memory = raw.contains(":memory:") || raw.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(raw)
            .map_err(StoreError::Database)?
            .journal_mode(if in_memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // An in-memory database lives as long as its one connection.
        let pool_options = SqlitePoolOptions::new()
            .max_connections(if in_memory { 1 } else { max_connections.max(1) })
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(if in_memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if in_memory {
                None
            } else {
                Some(Duration::from_secs(1800))
            });
        let pool = connect_sqlite_waiting_for_the_wal_switch(pool_options, options).await?;
        let store = SqliteStore { pool };
        let report = store.migrate().await?;
        Ok((std::sync::Arc::new(store), report))
    } else if raw.starts_with("postgres:") || raw.starts_with("postgresql:") {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            // A request waits at most this long for a connection while the database is down,
            // then gets a 503: short enough not to hang clients, and inside the 2 s readiness
            // probe timeout of the chart.
            .acquire_timeout(Duration::from_secs(2))
            .connect(raw)
            .await?;
        let store = PostgresStore { pool };
        let report = store.migrate().await?;
        Ok((std::sync::Arc::new(store), report))
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}

/// Migrations, in order. Each is expand-only (adds tables, columns, indexes) unless its name
/// ends in `_contract`, which may only drop what a release before the previous one stopped using.
pub const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "audit_request_id",
        include_str!("../migrations/sqlite/0002_audit_request_id.sql"),
    ),
];
pub const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "audit_request_id",
        include_str!("../migrations/postgres/0002_audit_request_id.sql"),
    ),
];

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

/// The statements of a migration file: split on `;` at line ends, `--` comment lines dropped.
/// (Migrations keep semicolons out of string literals.)
fn statements(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(";\n")
        .map(str::trim)
        .filter(|s| {
            s.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
        })
        .map(|s| s.trim_end_matches(';'))
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn parse_list(field: &str, text: &str) -> StoreResult<Vec<String>> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{field}: {e}")))
}

/// `sqlx::FromRow` for both backends' rows, by column name (no proc macro needed).
macro_rules! from_row {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        struct $name {
            $($field: $ty),*
        }
        impl<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> for $name {
            fn from_row(row: &'r sqlx::sqlite::SqliteRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row;
                Ok(Self { $($field: row.try_get(stringify!($field))?),* })
            }
        }
        impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for $name {
            fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row;
                Ok(Self { $($field: row.try_get(stringify!($field))?),* })
            }
        }
    };
}

from_row!(TenantRow {
    id: String,
    name: String,
    created_at: i64,
});

impl From<TenantRow> for Tenant {
    fn from(r: TenantRow) -> Self {
        Tenant {
            id: r.id,
            name: r.name,
            created_at: r.created_at,
        }
    }
}

from_row!(UserRow {
    id: String,
    tenant_id: String,
    email: String,
    password_hash: String,
    status: String,
    created_at: i64,
});

impl TryFrom<UserRow> for User {
    type Error = StoreError;
    fn try_from(r: UserRow) -> StoreResult<Self> {
        let status = UserStatus::parse(&r.status)
            .ok_or_else(|| StoreError::Corrupt(format!("user status {:?}", r.status)))?;
        Ok(User {
            id: r.id,
            tenant_id: r.tenant_id,
            email: r.email,
            password_hash: r.password_hash,
            status,
            created_at: r.created_at,
        })
    }
}

from_row!(RoleRow {
    id: String,
    tenant_id: String,
    name: String,
    permissions: String,
    created_at: i64,
});

impl TryFrom<RoleRow> for Role {
    type Error = StoreError;
    fn try_from(r: RoleRow) -> StoreResult<Self> {
        Ok(Role {
            permissions: parse_list("role permissions", &r.permissions)?,
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name,
            created_at: r.created_at,
        })
    }
}

from_row!(AssignmentRow {
    tenant_id: String,
    role_id: String,
    subject_kind: String,
    subject_id: String,
    created_at: i64,
});

impl TryFrom<AssignmentRow> for RoleAssignment {
    type Error = StoreError;
    fn try_from(r: AssignmentRow) -> StoreResult<Self> {
        let subject_kind = SubjectKind::parse(&r.subject_kind)
            .ok_or_else(|| StoreError::Corrupt(format!("subject kind {:?}", r.subject_kind)))?;
        Ok(RoleAssignment {
            tenant_id: r.tenant_id,
            role_id: r.role_id,
            subject_kind,
            subject_id: r.subject_id,
            created_at: r.created_at,
        })
    }
}

from_row!(ClientRow {
    id: String,
    tenant_id: String,
    name: String,
    kind: String,
    secret_hash: Option<String>,
    redirect_uris: String,
    grant_types: String,
    scopes: String,
    created_at: i64,});

impl TryFrom<ClientRow> for Client {
    type Error = StoreError;
    fn try_from(r: ClientRow) -> StoreResult<Self> {
        let kind = ClientKind::parse(&r.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("client kind {:?}", r.kind)))?;
        Ok(Client {
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name,
            kind,
            secret_hash: r.secret_hash,
            redirect_uris: parse_list("redirect_uris", &r.redirect_uris)?,
            grant_types: parse_list("grant_types", &r.grant_types)?,
            scopes: parse_list("scopes", &r.scopes)?,
            created_at: r.created_at,
        })
    }
}

from_row!(CodeRow {
    code_hash: String,
    tenant_id: String,
    client_id: String,
    user_id: String,
    redirect_uri: String,
    scope: String,
    nonce: Option<String>,
    code_challenge: String,
    auth_time: i64,
    expires_at: i64,});

impl From<CodeRow> for AuthorizationCode {
    fn from(r: CodeRow) -> Self {
        AuthorizationCode {
            code_hash: r.code_hash,
            tenant_id: r.tenant_id,
            client_id: r.client_id,
            user_id: r.user_id,
            redirect_uri: r.redirect_uri,
            scope: r.scope,
            nonce: r.nonce,
            code_challenge: r.code_challenge,
            auth_time: r.auth_time,
            expires_at: r.expires_at,
        }
    }
}

from_row!(RefreshRow {
    token_hash: String,
    family_id: String,
    tenant_id: String,
    client_id: String,
    user_id: String,
    scope: String,
    expires_at: i64,
    created_at: i64,
    used: i64,
});

impl From<RefreshRow> for RefreshToken {
    fn from(r: RefreshRow) -> Self {
        RefreshToken {
            token_hash: r.token_hash,
            family_id: r.family_id,
            tenant_id: r.tenant_id,
            client_id: r.client_id,
            user_id: r.user_id,
            scope: r.scope,
            expires_at: r.expires_at,
            created_at: r.created_at,
        }
    }
}

from_row!(KeyRow {
    kid: String,
    alg: String,
    state: String,
    public_key: String,
    private_key_enc: String,
    created_at: i64,
    state_changed_at: i64,
});

impl TryFrom<KeyRow> for SigningKeyRecord {
    type Error = StoreError;
    fn try_from(r: KeyRow) -> StoreResult<Self> {
        let state = KeyState::parse(&r.state)
            .ok_or_else(|| StoreError::Corrupt(format!("key state {:?}", r.state)))?;
        Ok(SigningKeyRecord {
            kid: r.kid,
            alg: r.alg,
            state,
            public_key: r.public_key,
            private_key_enc: r.private_key_enc,
            created_at: r.created_at,
            state_changed_at: r.state_changed_at,
        })
    }
}

from_row!(AuditRow {
    seq: i64,
    id: String,
    at: i64,
    actor: String,
    tenant_id: Option<String>,
    action: String,
    target: String,
    before_state: Option<String>,
    after_state: Option<String>,
    prev_hash: String,
    hash: String,
    request_id: Option<String>,});

impl From<AuditRow> for AuditEvent {
    fn from(r: AuditRow) -> Self {
        AuditEvent {
            seq: r.seq,
            id: r.id,
            at: r.at,
            actor: r.actor,
            tenant_id: r.tenant_id,
            action: r.action,
            target: r.target,
            before: r.before_state,
            after: r.after_state,
            prev_hash: r.prev_hash,
            hash: r.hash,
            request_id: r.request_id,
        }
    }
}

/// One audit event to append inside a transaction.
struct Change<'a> {
    actor: &'a Actor,
    tenant_id: Option<&'a str>,
    action: &'a str,
    target: String,
    before: Option<String>,
    after: Option<String>,
    at: i64,
}

const USER_COLUMNS: &str = "id, tenant_id, email, password_hash, status, created_at";
const CLIENT_COLUMNS: &str =
    "id, tenant_id, name, kind, secret_hash, redirect_uris, grant_types, scopes, created_at";
const AUDIT_COLUMNS: &str = "seq, id, at, actor, tenant_id, action, target, before_state, after_state, prev_hash, hash, request_id";
const REFRESH_COLUMNS: &str =
    "token_hash, family_id, tenant_id, client_id, user_id, scope, expires_at, created_at, used";

/// The Store implementation, once per backend: the SQL is the same for both.
macro_rules! sql_store {
    ($store:ident, $db:ty, $migrations:expr, $backend:literal, $setup_lock:literal, $lock:literal) => {
        impl $store {
            /// Starts an audited transaction: bumps the chain head first (taking the write lock).
            async fn begin_audited(&self) -> StoreResult<(sqlx::Transaction<'static, $db>, i64, String)> {
                let mut tx = self.pool.begin().await?;
                let (seq, last_hash): (i64, String) =
                    sqlx::query_as("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, last_hash").fetch_one(&mut *tx).await?;
                Ok((tx, seq, last_hash))
            }

            async fn insert_refresh(tx: &mut sqlx::Transaction<'static, $db>, t: &RefreshToken) -> StoreResult<()> {
                sqlx::query(&format!("INSERT INTO refresh_tokens ({REFRESH_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0)"))
                    .bind(&t.token_hash)
                    .bind(&t.family_id)
                    .bind(&t.tenant_id)
                    .bind(&t.client_id)
                    .bind(&t.user_id)
                    .bind(&t.scope)
                    .bind(t.expires_at)
                    .bind(t.created_at)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            async fn append_audit(tx: &mut sqlx::Transaction<'static, $db>, seq: i64, prev_hash: String, change: Change<'_>) -> StoreResult<()> {
                let mut event = AuditEvent {
                    seq,
                    id: uuid::Uuid::now_v7().to_string(),
                    at: change.at,
                    actor: change.actor.id.clone(),
                    tenant_id: change.tenant_id.map(str::to_string),
                    action: change.action.to_string(),
                    target: change.target,
                    before: change.before,
                    after: change.after,
                    prev_hash,
                    hash: String::new(),
                    request_id: change.actor.request_id.clone(),
                };
                event.hash = event_hash(&event);
                sqlx::query(&format!("INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"))
                    .bind(event.seq)
                    .bind(&event.id)
                    .bind(event.at)
                    .bind(&event.actor)
                    .bind(&event.tenant_id)
                    .bind(&event.action)
                    .bind(&event.target)
                    .bind(&event.before)
                    .bind(&event.after)
                    .bind(&event.prev_hash)
                    .bind(&event.hash)
                    .bind(&event.request_id)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query("UPDATE audit_head SET last_hash = $1 WHERE id = 1").bind(&event.hash).execute(&mut **tx).await?;
                Ok(())
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn migrate(&self) -> StoreResult<MigrationReport> {
                // Under the lock too: concurrent `CREATE TABLE IF NOT EXISTS` can fail on
                // PostgreSQL (a unique violation in its catalog) when two runners race.
                let mut tx = self.pool.begin().await?;
                sqlx::query($setup_lock).execute(&mut *tx).await?;
                sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                let mut report = MigrationReport { backend: $backend, ..MigrationReport::default() };
                for (version, name, sql) in $migrations {
                    let id = MigrationId { version: *version, name: (*name).to_string() };
                    let mut tx = self.pool.begin().await?;
                    // Take the migration lock first, so concurrent runners (the PreSync Job and
                    // starting replicas) apply each migration once: they wait here, then see it done.
                    sqlx::query($lock).execute(&mut *tx).await?;
                    let done: Option<(i64,)> =
                        sqlx::query_as("SELECT version FROM schema_migrations WHERE version = $1").bind(*version).fetch_optional(&mut *tx).await?;
                    if done.is_some() {
                        report.already_present.push(id);
                    } else {
                        for statement in statements(sql) {
                            sqlx::query(statement).execute(&mut *tx).await?;
                        }
                        sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                            .bind(*version)
                            .bind(*name)
                            .bind(time::OffsetDateTime::now_utc().unix_timestamp())
                            .execute(&mut *tx)
                            .await?;
                        report.applied.push(id);
                    }
                    tx.commit().await?;
                }
                let recorded: Vec<(i64, String)> =
                    sqlx::query_as("SELECT version, name FROM schema_migrations ORDER BY version").fetch_all(&self.pool).await?;
                report.unknown = recorded
                    .into_iter()
                    .filter(|(version, _)| !$migrations.iter().any(|(known, _, _)| known == version))
                    .map(|(version, name)| MigrationId { version, name })
                    .collect();
                Ok(report)
            }

            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            fn backend(&self) -> &'static str {
                $backend
            }

            async fn create_tenant(&self, actor: &Actor, tenant: &Tenant, at: i64) -> StoreResult<()> {
                let (mut tx, seq, prev) = self.begin_audited().await?;
                sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(&tenant.id)
                    .bind(&tenant.name)
                    .bind(tenant.created_at)
                    .execute(&mut *tx)
                    .await?;
                let change = Change { actor, tenant_id: Some(&tenant.id), action: "tenant.create", target: format!("tenant:{}", tenant.id), before: None, after: Some(to_json(tenant)), at };
                Self::append_audit(&mut tx, seq, prev, change).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_tenant(&self, id: &str) -> StoreResult<Option<Tenant>> {
                let row: Option<TenantRow> = sqlx::query_as("SELECT id, name, created_at FROM tenants WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
                Ok(row.map(Tenant::from))
            }

            async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
                let rows: Vec<TenantRow> = sqlx::query_as("SELECT id, name, created_at FROM tenants ORDER BY created_at, id").fetch_all(&self.pool).await?;
                Ok(rows.into_iter().map(Tenant::from).collect())
            }

            async fn count_tenants(&self) -> StoreResult<i64> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tenants").fetch_one(&self.pool).await?;
                Ok(n)
            }

            async fn create_user(&self, actor: &Actor, user: &User, at: i64) -> StoreResult<()> {
                let (mut tx, seq, prev) = self.begin_audited().await?;
                sqlx::query(&format!("INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"))
                    .bind(&user.id)
                    .bind(&user.tenant_id)
                    .bind(&user.email)
                    .bind(&user.password_hash)
                    .bind(user.status.as_str())
                    .bind(user.created_at)
                    .execute(&mut *tx)
                    .await?;
                let change = Change { actor, tenant_id: Some(&user.tenant_id), action: "user.create", target: format!("user:{}", user.id), before: None, after: Some(to_json(user)), at };
                Self::append_audit(&mut tx, seq, prev, change).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_user(&self, tenant_id: &str, id: &str) -> StoreResult<Option<User>> {
                let row: Option<UserRow> = sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2"))
                    .bind(tenant_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(User::try_from).transpose()
            }

            async fn find_user_by_email(&self, tenant_id: &str, email: &str) -> StoreResult<Option<User>> {
                let row: Option<UserRow> = sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND email = $2"))
                    .bind(tenant_id)
                    .bind(email)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(User::try_from).transpose()
            }

            async fn list_users(&self, tenant_id: &str) -> StoreResult<Vec<User>> {
                let rows: Vec<UserRow> = sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 ORDER BY created_at, id"))
                    .bind(tenant_id)
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(User::try_from).collect()
            }

            async fn set_user_status(&self, actor: &Actor, tenant_id: &str, id: &str, status: UserStatus, at: i64) -> StoreResult<User> {
                let (mut tx, seq, prev) = self.begin_audited().await?;
                let row: Option<UserRow> = sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2"))
                    .bind(tenant_id)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let before = User::try_from(row.ok_or_else(|| StoreError::NotFound(format!("user {id}")))?)?;
                sqlx::query("UPDATE users SET status = $1 WHERE tenant_id = $2 AND id = $3").bind(status.as_str()).bind(tenant_id).bind(id).execute(&mut *tx).await?;
                let after = User { status, ..before.clone() };
                let change = Change { actor, tenant_id: Some(tenant_id), action: "user.update", target: format!("user:{id}"), before: Some(to_json(&before)), after: Some(to_json(&after)), at };
                Self::append_audit(&mut tx, seq, prev, change).await?;
                tx.commit().await?;
                Ok(after)
            }

            async fn delete_user(&self, actor: &Actor, tenant_id: &str, id: &str, at: i64) -> StoreResult<()> {
                let (mut tx, seq, prev) = self.begin_audited().await?;
                let row: Option<UserRow> = sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2"))
                    .bind(tenant_id)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let before = User::try_from(row.ok_or_else(|| StoreError::NotFound(format!("user {id}")))?)?;
                sqlx::query("DELETE FROM role_assignments WHERE tenant_id = $1 AND subject_kind = 'user' AND subject_id = $2").bind(tenant_id).bind(id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND id = $2").bind(tenant_id).bind(id).execute(&mut *tx).await?;
                let change = Change { actor, tenant_id: Some(tenant_id), action: "user.delete", target: format!("user:{id}"), before: Some(to_json(&before)), after: None, at };
                Self::append_audit(&mut tx, seq, prev, change).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn create_role(&self, actor: &Actor, role: &Role, at: i64) -> StoreResult<()> {
                let (mut tx, seq, prev) = self.begin_audited().await?;
                sqlx::query("INSERT INTO roles (id, tenant_id, name, permissions, created_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(&role.id)
                    .bind(&role.tenant_id)
                    .bind(&role.name)
                    .bind(to_json(&role.permissions))
                    .bind(role.created_at)
                    .execute(&mut *tx)
                    .await?;
                let change = Change { actor, tenant_id: Some(&role.tenant_id), action: "role.create", target: format!("role:{}", role.id), before: None, after: Some(to_json(role)), at };
                Self::append_audit(&mut tx, seq, prev, change).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_role(&self, tenant_id: &str, id: &str) -> StoreResult<Option<Role>> {
                let row: Option<RoleRow> = sqlx::query_as("SELECT id, tenant_id, name, permissions, created_at FROM roles WHERE tenant_id = $1 AND id = $2")
                    .bind(tenant_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(Role::try_from).transpose()
            }

            async fn list_roles(&self, tenant_id: &str) -> StoreResult<Vec<Role>> {
                let rows: Vec<RoleRow> = sqlx::query_as("SELECT id, tenant_id, name, permissions, created_at FROM roles WHERE tenant_id = $1 ORDER BY created_at, id")
                    .bind(tenant_id)
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(Role::try_from).collect()
            }

            async fn delete_role(&self, actor: &Actor, tenant_id: &str, id: &str, at: i64) -> StoreResult<()> {
                let (mut tx, seq, prev) = self.begin_audited().await?;
                let row: Option<RoleRow> = sqlx::query_as("SELECT id, tenant_id, name, permissions, created_at FROM roles WHERE tenant_id = $1 AND id = $2")
                    .bind(tenant_id)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let before = Role::try_from(row.ok_or_else(|| StoreError::NotFound(format!("role {id}")))?)?;
                sqlx::query("DELETE FROM role_assignments WHERE tenant_id = $1 AND role_id = $2").bind(tenant_id).bind(id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM roles WHERE tenant_id = $1 AND id = $2").bind(tenant_id).bind(id).execute(&mut *tx).await?;
                let change = Change { actor, tenant_id: Some(tenant_id), action: "role.delete", target: format!("role:{id}"), before: Some(to_json(&before)), after: None, at };
                Self::append_audit(&mut tx, seq, prev, change).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn assign_role(&self, actor: &Actor, a: &RoleAssignment, at: i64) -> StoreResult<()> {
                let (mut tx, seq, prev) = self.begin_audited().await?;
                sqlx::query("INSERT INTO role_assignments (tenant_id, role_id, subject_kind, subject_id, created_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(&a.tenant_id)
                    .bind(&a.role_id)
                    .bind(a.subject_kind.as_str())
                    .bind(&a.subject_id)
                    .bind(a.created_at)
                    .execute(&mut *tx)
                    .await?;
                let target = format!("{}:{}", a.subject_kind.as_str(), a.subject_id);
                let change = Change { actor, tenant_id: Some(&a.tenant_id), action: "role_assignment.create", target, before: None, after: Some(to_json(a)), at };
                Self::append_audit(&mut tx, seq, prev, change).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn unassign_role(&self, actor: &Actor, a: &RoleAssignment, at: i64) -> StoreResult<()> {
                let (mut tx, seq, prev) = self.begin_audited().await?;
                let done = sqlx::query("DELETE FROM role_assignments WHERE tenant_id = $1 AND role_id = $2 AND subject_kind = $3 AND subject_id = $4")
                    .bind(&a.tenant_id)
                    .bind(&a.role_id)
                    .bind(a.subject_kind.as_str())
                    .bind(&a.subject_id)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("role assignment".into()));
                }
                let target = format!("{}:{}", a.subject_kind.as_str(), a.subject_id);
                let change = Change { actor, tenant_id: Some(&a.tenant_id), action: "role_assignment.delete", target, before: Some(to_json(a)), after: None, at };
                Self::append_audit(&mut tx, seq, prev, change).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn list_assignments(&self, tenant_id: &str) -> StoreResult<Vec<RoleAssignment>> {
                let rows: Vec<AssignmentRow> = sqlx::query_as(
                    "SELECT tenant_id, role_id, subject_kind, subject_id, created_at FROM role_assignments WHERE tenant_id = $1 ORDER BY created_at, role_id, subject_id",
                )
                .bind(tenant_id)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(RoleAssignment::try_from).collect()
            }

            async fn grants(&self, tenant_id: &str, kind: SubjectKind, subject_id: &str) -> StoreResult<Grants> {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT r.name, r.permissions FROM role_assignments a JOIN roles r ON r.id = a.role_id AND r.tenant_id = a.tenant_id \
                     WHERE a.tenant_id = $1 AND a.subject_kind = $2 AND a.subject_id = $3 ORDER BY r.name",
                )
                .bind(tenant_id)
                .bind(kind.as_str())
                .bind(subject_id)
                .fetch_all(&self.pool)
                .await?;
                let mut grants = Grants::default();
                for (name, permissions) in rows {
                    grants.roles.push(name);
                    for p in parse_list("role permissions", &permissions)? {
                        if !grants.permissions.contains(&p) {
                            grants.permissions.push(p);
                        }
                    }
                }
                grants.permissions.sort();
                Ok(grants)
            }

            async fn create_client(&self, actor: &Actor, c: &Client, at: i64) -> StoreResult<()> {
                let (mut tx, seq, prev) = self.begin_audited().await?;
                sqlx::query(&format!("INSERT INTO clients ({CLIENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
                    .bind(&c.id)
                    .bind(&c.tenant_id)
                    .bind(&c.name)
                    .bind(c.kind.as_str())
                    .bind(&c.secret_hash)
                    .bind(to_json(&c.redirect_uris))
                    .bind(to_json(&c.grant_types))
                    .bind(to_json(&c.scopes))
                    .bind(c.created_at)
                    .execute(&mut *tx)
                    .await?;
                // The serialised client never includes the secret hash.
                let change = Change { actor, tenant_id: Some(&c.tenant_id), action: "client.create", target: format!("client:{}", c.id), before: None, after: Some(to_json(c)), at };
                Self::append_audit(&mut tx, seq, prev, change).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_client(&self, id: &str) -> StoreResult<Option<Client>> {
                let row: Option<ClientRow> = sqlx::query_as(&format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE id = $1")).bind(id).fetch_optional(&self.pool).await?;
                row.map(Client::try_from).transpose()
            }

            async fn get_client_and_jti_revoked(
                &self,
                client_id: &str,
                jti: &str,
            ) -> StoreResult<(Option<Client>, bool)> {
                use sqlx::{FromRow, Row};
                let row = sqlx::query(&format!(
                    "SELECT {CLIENT_COLUMNS}, EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $2) AS jti_revoked FROM clients WHERE id = $1"
                ))
                .bind(client_id)
                .bind(jti)
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else {
                    return Ok((None, false));
                };
                let revoked: bool = row.try_get("jti_revoked")?;
                Ok((Some(Client::try_from(ClientRow::from_row(&row)?)?), revoked))
            }

            async fn list_clients(&self, tenant_id: &str) -> StoreResult<Vec<Client>> {
                let rows: Vec<ClientRow> = sqlx::query_as(&format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE tenant_id = $1 ORDER BY created_at, id"))
                    .bind(tenant_id)
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(Client::try_from).collect()
            }

            async fn delete_client(&self, actor: &Actor, tenant_id: &str, id: &str, at: i64) -> StoreResult<()> {
                let (mut tx, seq, prev) = self.begin_audited().await?;
                let row: Option<ClientRow> = sqlx::query_as(&format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE tenant_id = $1 AND id = $2"))
                    .bind(tenant_id)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let before = Client::try_from(row.ok_or_else(|| StoreError::NotFound(format!("client {id}")))?)?;
                sqlx::query("DELETE FROM role_assignments WHERE tenant_id = $1 AND subject_kind = 'client' AND subject_id = $2").bind(tenant_id).bind(id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM clients WHERE tenant_id = $1 AND id = $2").bind(tenant_id).bind(id).execute(&mut *tx).await?;
                let change = Change { actor, tenant_id: Some(tenant_id), action: "client.delete", target: format!("client:{id}"), before: Some(to_json(&before)), after: None, at };
                Self::append_audit(&mut tx, seq, prev, change).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn insert_code(&self, c: &AuthorizationCode) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO authorization_codes (code_hash, tenant_id, client_id, user_id, redirect_uri, scope, nonce, code_challenge, auth_time, expires_at, used) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)",
                )
                .bind(&c.code_hash)
                .bind(&c.tenant_id)
                .bind(&c.client_id)
                .bind(&c.user_id)
                .bind(&c.redirect_uri)
                .bind(&c.scope)
                .bind(&c.nonce)
                .bind(&c.code_challenge)
                .bind(c.auth_time)
                .bind(c.expires_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn redeem_code(&self, code_hash: &str, now: i64) -> StoreResult<CodeRedemption> {
                let row: Option<CodeRow> = sqlx::query_as(
                    "UPDATE authorization_codes SET used = 1 WHERE code_hash = $1 AND used = 0 AND expires_at > $2 \
                     RETURNING code_hash, tenant_id, client_id, user_id, redirect_uri, scope, nonce, code_challenge, auth_time, expires_at",
                )
                .bind(code_hash)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                if let Some(row) = row {
                    return Ok(CodeRedemption::Redeemed(Box::new(row.into())));
                }
                let used: Option<(i64,)> = sqlx::query_as("SELECT used FROM authorization_codes WHERE code_hash = $1").bind(code_hash).fetch_optional(&self.pool).await?;
                Ok(match used {
                    Some((1,)) => CodeRedemption::AlreadyUsed,
                    _ => CodeRedemption::Unknown,
                })
            }

            async fn insert_refresh_token(&self, t: &RefreshToken) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("INSERT INTO refresh_families (id, revoked) VALUES ($1, 0) ON CONFLICT DO NOTHING").bind(&t.family_id).execute(&mut *tx).await?;
                Self::insert_refresh(&mut tx, t).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn rotate_refresh_token(&self, presented_hash: &str, next: &RefreshToken, now: i64) -> StoreResult<RefreshRotation> {
                let mut tx = self.pool.begin().await?;
                // Claim the presented token first: the write serialises concurrent rotations.
                let claimed: Option<RefreshRow> = sqlx::query_as(&format!(
                    "UPDATE refresh_tokens SET used = 1 WHERE token_hash = $1 AND used = 0 AND expires_at > $2 RETURNING {REFRESH_COLUMNS}"
                ))
                .bind(presented_hash)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(claimed) = claimed else {
                    let known: Option<RefreshRow> = sqlx::query_as(&format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE token_hash = $1"))
                        .bind(presented_hash)
                        .fetch_optional(&mut *tx)
                        .await?;
                    return match known {
                        Some(row) if row.used == 1 => {
                            sqlx::query("UPDATE refresh_families SET revoked = 1 WHERE id = $1").bind(&row.family_id).execute(&mut *tx).await?;
                            tx.commit().await?;
                            Ok(RefreshRotation::ReuseDetected)
                        }
                        _ => Ok(RefreshRotation::Invalid),
                    };
                };
                let revoked: Option<(i64,)> = sqlx::query_as("SELECT revoked FROM refresh_families WHERE id = $1").bind(&claimed.family_id).fetch_optional(&mut *tx).await?;
                if !matches!(revoked, Some((0,))) {
                    tx.commit().await?;
                    return Ok(RefreshRotation::Invalid);
                }
                let next = RefreshToken { family_id: claimed.family_id.clone(), ..next.clone() };
                Self::insert_refresh(&mut tx, &next).await?;
                tx.commit().await?;
                Ok(RefreshRotation::Rotated(claimed.into()))
            }

            async fn revoke_refresh_family(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
                let mut tx = self.pool.begin().await?;
                let row: Option<RefreshRow> = sqlx::query_as(&format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE token_hash = $1"))
                    .bind(token_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(row) = &row {
                    sqlx::query("UPDATE refresh_families SET revoked = 1 WHERE id = $1").bind(&row.family_id).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(row.map(RefreshToken::from))
            }

            async fn get_refresh_token(&self, token_hash: &str, now: i64) -> StoreResult<Option<RefreshToken>> {
                let row: Option<RefreshRow> = sqlx::query_as(&format!(
                    "SELECT t.token_hash, t.family_id, t.tenant_id, t.client_id, t.user_id, t.scope, t.expires_at, t.created_at, t.used \
                     FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
                     WHERE t.token_hash = $1 AND t.used = 0 AND t.expires_at > $2 AND f.revoked = 0"
                ))
                .bind(token_hash)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(RefreshToken::from))
            }

            async fn revoke_jti(&self, jti: &str, expires_at: i64) -> StoreResult<()> {
                sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING").bind(jti).bind(expires_at).execute(&self.pool).await?;
                Ok(())
            }

            async fn is_jti_revoked(&self, jti: &str) -> StoreResult<bool> {
                let row: Option<(String,)> = sqlx::query_as("SELECT jti FROM revoked_tokens WHERE jti = $1").bind(jti).fetch_optional(&self.pool).await?;
                Ok(row.is_some())
            }

            async fn list_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
                let rows: Vec<KeyRow> =
                    sqlx::query_as("SELECT kid, alg, state, public_key, private_key_enc, created_at, state_changed_at FROM signing_keys ORDER BY created_at, kid")
                        .fetch_all(&self.pool)
                        .await?;
                rows.into_iter().map(SigningKeyRecord::try_from).collect()
            }

            async fn apply_rotation(&self, actor: &Actor, plan: &RotationPlan, at: i64) -> StoreResult<()> {
                let (mut tx, seq, prev) = self.begin_audited().await?;
                let before: Vec<(String, String)> = sqlx::query_as("SELECT kid, state FROM signing_keys WHERE state <> 'retired' ORDER BY kid").fetch_all(&mut *tx).await?;
                for (kids, state) in [(&plan.retire, KeyState::Retired), (&plan.retiring, KeyState::Retiring)] {
                    for kid in kids {
                        sqlx::query("UPDATE signing_keys SET state = $1, state_changed_at = $2 WHERE kid = $3").bind(state.as_str()).bind(at).bind(kid).execute(&mut *tx).await?;
                    }
                }
                if let Some(kid) = &plan.activate {
                    sqlx::query("UPDATE signing_keys SET state = 'active', state_changed_at = $1 WHERE kid = $2").bind(at).bind(kid).execute(&mut *tx).await?;
                }
                for key in &plan.new_keys {
                    sqlx::query("INSERT INTO signing_keys (kid, alg, state, public_key, private_key_enc, created_at, state_changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                        .bind(&key.kid)
                        .bind(&key.alg)
                        .bind(key.state.as_str())
                        .bind(&key.public_key)
                        .bind(&key.private_key_enc)
                        .bind(key.created_at)
                        .bind(key.state_changed_at)
                        .execute(&mut *tx)
                        .await?;
                }
                let after: Vec<(String, String)> = sqlx::query_as("SELECT kid, state FROM signing_keys WHERE state <> 'retired' ORDER BY kid").fetch_all(&mut *tx).await?;
                let change = Change { actor, tenant_id: None, action: "keys.rotate", target: "signing_keys".into(), before: Some(to_json(&before)), after: Some(to_json(&after)), at };
                Self::append_audit(&mut tx, seq, prev, change).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn query_audit(&self, q: &AuditQuery) -> StoreResult<Vec<AuditEvent>> {
                let limit = q.limit.clamp(1, 1000);
                let after = q.after_seq.unwrap_or(0);
                let rows: Vec<AuditRow> = match &q.tenant_id {
                    Some(tenant) => sqlx::query_as(&format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"))
                        .bind(tenant)
                        .bind(after)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?,
                    None => sqlx::query_as(&format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"))
                        .bind(after)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?,
                };
                Ok(rows.into_iter().map(AuditEvent::from).collect())
            }

            async fn audit_chain(&self) -> StoreResult<(Vec<AuditEvent>, i64, String)> {
                let mut tx = self.pool.begin().await?;
                let rows: Vec<AuditRow> = sqlx::query_as(&format!("SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY seq")).fetch_all(&mut *tx).await?;
                let (seq, hash): (i64, String) = sqlx::query_as("SELECT seq, last_hash FROM audit_head WHERE id = 1").fetch_one(&mut *tx).await?;
                tx.commit().await?;
                Ok((rows.into_iter().map(AuditEvent::from).collect(), seq, hash))
            }
        }

        impl $store {
            /// Runs raw SQL; for tests that tamper with the audit trail.
            #[doc(hidden)]
            pub async fn execute_raw(&self, sql: &str) -> StoreResult<()> {
                sqlx::raw_sql(sql).execute(&self.pool).await?;
                Ok(())
            }
        }
    };
}

// The migration locks (before creating `schema_migrations`, then per migration): SQLite has one
// writer, so creating the table needs nothing, and a first write takes the lock now (waiting on
// busy_timeout) instead of failing to upgrade a read transaction later; PostgreSQL needs an
// explicit lock (a transaction-scoped advisory lock, released at commit; the key is arbitrary
// but fixed).
sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    SQLITE_MIGRATIONS,
    "sqlite",
    "SELECT 1",
    "DELETE FROM schema_migrations WHERE version < 0"
);
sql_store!(
    PostgresStore,
    sqlx::Postgres,
    POSTGRES_MIGRATIONS,
    "postgres",
    "SELECT pg_advisory_xact_lock(7261046385)",
    "SELECT pg_advisory_xact_lock(7261046385)"
);

impl SqliteStore {
    /// Opens a SQLite store without the `Arc<dyn Store>` wrapper (tests that tamper with rows).
    pub async fn open(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::Database)?
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }
}

impl PostgresStore {
    pub async fn open(url: &str) -> StoreResult<Self> {
        let pool = PgPoolOptions::new().max_connections(4).connect(url).await?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }
}
