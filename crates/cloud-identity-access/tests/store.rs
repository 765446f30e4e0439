//! One store test suite, run against SQLite (in memory) and PostgreSQL (a fresh database on the
//! private server that `cargo xtask test` starts; skipped locally when it is not provided).
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cloud_identity_access::audit::verify_chain;
use cloud_identity_access::model::*;
use cloud_identity_access::store::{
    self, CodeRedemption, PostgresStore, RefreshRotation, SqliteStore, Store, StoreError,
};
use secrecy::SecretString;

async fn sqlite() -> Option<Arc<dyn Store>> {
    Some(
        store::connect(&SecretString::from("sqlite::memory:"), 1)
            .await
            .unwrap(),
    )
}

async fn postgres() -> Option<Arc<dyn Store>> {
    let url = cloud_test_support::fresh_postgres_database().await?;
    Some(store::connect(&SecretString::from(url), 4).await.unwrap())
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[tokio::test]
            async fn sqlite() {
                let store = super::sqlite().await.unwrap();
                assert_eq!(store.backend(), "sqlite");
                super::$name(store).await;
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(store) = super::postgres().await {
                    assert_eq!(store.backend(), "postgres");
                    super::$name(store).await;
                }
            }
        })*
    };
}

both_backends!(
    crud_round_trip,
    email_unique_per_tenant_only,
    grants_are_the_union_of_assigned_roles,
    codes_are_single_use_and_expire,
    refresh_rotation_and_reuse_detection,
    every_change_is_audited_in_a_valid_chain,
    concurrent_changes_keep_the_chain_valid,
    migrations_are_idempotent,
    key_rotation_plan_is_applied_atomically,
    jti_revocation,
);

fn actor() -> Actor {
    Actor {
        id: "test".into(),
        request_id: None,
    }
}

async fn tenant(store: &dyn Store, name: &str) -> Tenant {
    let t = Tenant {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.into(),
        created_at: 10,
    };
    store.create_tenant(&actor(), &t, 10).await.unwrap();
    t
}

fn user(tenant: &Tenant, email: &str) -> User {
    User {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant.id.clone(),
        email: email.into(),
        password_hash: "$argon2id$x".into(),
        status: UserStatus::Active,
        created_at: 11,
    }
}

fn client(tenant: &Tenant, id: &str) -> Client {
    Client {
        id: id.into(),
        tenant_id: tenant.id.clone(),
        name: "svc".into(),
        kind: ClientKind::Confidential,
        secret_hash: Some("hmac-sha256:ab".into()),
        redirect_uris: vec!["https://app.example/cb".into()],
        grant_types: vec![GRANT_CLIENT_CREDENTIALS.into()],
        scopes: vec!["orders:read".into()],
        created_at: 12,
    }
}

fn role(tenant: &Tenant, name: &str, perms: &[&str]) -> Role {
    Role {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant.id.clone(),
        name: name.into(),
        permissions: perms.iter().map(|p| p.to_string()).collect(),
        created_at: 13,
    }
}

async fn crud_round_trip(store: Arc<dyn Store>) {
    let t = tenant(store.as_ref(), "acme").await;
    assert_eq!(store.get_tenant(&t.id).await.unwrap(), Some(t.clone()));
    assert!(
        matches!(
            store
                .create_tenant(
                    &actor(),
                    &Tenant {
                        id: "other".into(),
                        ..t.clone()
                    },
                    1
                )
                .await,
            Err(StoreError::Conflict(_))
        ),
        "tenant names are unique"
    );
    let u = user(&t, "a@acme.test");
    store.create_user(&actor(), &u, 1).await.unwrap();
    assert_eq!(store.get_user(&t.id, &u.id).await.unwrap(), Some(u.clone()));
    assert_eq!(
        store
            .find_user_by_email(&t.id, "a@acme.test")
            .await
            .unwrap(),
        Some(u.clone())
    );
    assert_eq!(store.list_users(&t.id).await.unwrap(), vec![u.clone()]);
    let locked = store
        .set_user_status(&actor(), &t.id, &u.id, UserStatus::Locked, 2)
        .await
        .unwrap();
    assert_eq!(locked.status, UserStatus::Locked);
    assert_eq!(
        store.get_user(&t.id, &u.id).await.unwrap().unwrap().status,
        UserStatus::Locked
    );
    let c = client(&t, "c-1");
    store.create_client(&actor(), &c, 3).await.unwrap();
    assert_eq!(store.get_client("c-1").await.unwrap(), Some(c.clone()));
    // Introspection's one round trip: the same client, and the jti's revocation.
    assert_eq!(
        store
            .get_client_and_jti_revoked("c-1", "jti-x")
            .await
            .unwrap(),
        (Some(c.clone()), false)
    );
    store.revoke_jti("jti-x", 10).await.unwrap();
    assert_eq!(
        store
            .get_client_and_jti_revoked("c-1", "jti-x")
            .await
            .unwrap(),
        (Some(c.clone()), true)
    );
    assert_eq!(
        store
            .get_client_and_jti_revoked("c-404", "jti-x")
            .await
            .unwrap(),
        (None, false)
    );
    assert_eq!(store.list_clients(&t.id).await.unwrap(), vec![c]);
    let r = role(&t, "reader", &["orders:read"]);
    store.create_role(&actor(), &r, 4).await.unwrap();
    assert_eq!(store.get_role(&t.id, &r.id).await.unwrap(), Some(r.clone()));
    store.delete_role(&actor(), &t.id, &r.id, 5).await.unwrap();
    assert_eq!(store.get_role(&t.id, &r.id).await.unwrap(), None);
    store
        .delete_client(&actor(), &t.id, "c-1", 6)
        .await
        .unwrap();
    assert_eq!(store.get_client("c-1").await.unwrap(), None);
    store.delete_user(&actor(), &t.id, &u.id, 7).await.unwrap();
    assert!(matches!(
        store.delete_user(&actor(), &t.id, &u.id, 7).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn email_unique_per_tenant_only(store: Arc<dyn Store>) {
    let a = tenant(store.as_ref(), "a").await;
    let b = tenant(store.as_ref(), "b").await;
    store
        .create_user(&actor(), &user(&a, "x@y.test"), 1)
        .await
        .unwrap();
    store
        .create_user(&actor(), &user(&b, "x@y.test"), 1)
        .await
        .unwrap();
    let dup = store.create_user(&actor(), &user(&a, "x@y.test"), 1).await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    // A failed change leaves no audit event behind and the chain intact.
    let (events, seq, hash) = store.audit_chain().await.unwrap();
    assert!(verify_chain(&events, seq, &hash).ok());
    assert_eq!(events.len(), 4);
}

async fn grants_are_the_union_of_assigned_roles(store: Arc<dyn Store>) {
    let t = tenant(store.as_ref(), "t").await;
    let other = tenant(store.as_ref(), "other").await;
    let u = user(&t, "u@t.test");
    store.create_user(&actor(), &u, 1).await.unwrap();
    let r1 = role(&t, "reader", &["orders:read"]);
    let r2 = role(&t, "writer", &["orders:read", "orders:write"]);
    let foreign = role(&other, "foreign", &["secret:read"]);
    for r in [&r1, &r2, &foreign] {
        store.create_role(&actor(), r, 1).await.unwrap();
    }
    for r in [&r1, &r2] {
        let a = RoleAssignment {
            tenant_id: t.id.clone(),
            role_id: r.id.clone(),
            subject_kind: SubjectKind::User,
            subject_id: u.id.clone(),
            created_at: 1,
        };
        store.assign_role(&actor(), &a, 1).await.unwrap();
    }
    let grants = store.grants(&t.id, SubjectKind::User, &u.id).await.unwrap();
    assert_eq!(grants.roles, vec!["reader", "writer"]);
    assert_eq!(grants.permissions, vec!["orders:read", "orders:write"]);
    assert_eq!(
        store
            .grants(&other.id, SubjectKind::User, &u.id)
            .await
            .unwrap()
            .roles,
        Vec::<String>::new()
    );
    assert_eq!(store.list_assignments(&t.id).await.unwrap().len(), 2);
    let a = RoleAssignment {
        tenant_id: t.id.clone(),
        role_id: r1.id.clone(),
        subject_kind: SubjectKind::User,
        subject_id: u.id.clone(),
        created_at: 0,
    };
    store.unassign_role(&actor(), &a, 2).await.unwrap();
    assert_eq!(
        store
            .grants(&t.id, SubjectKind::User, &u.id)
            .await
            .unwrap()
            .roles,
        vec!["writer"]
    );
}

fn code(hash: &str, expires_at: i64) -> AuthorizationCode {
    AuthorizationCode {
        code_hash: hash.into(),
        tenant_id: "t".into(),
        client_id: "c".into(),
        user_id: "u".into(),
        redirect_uri: "https://app/cb".into(),
        scope: "openid".into(),
        nonce: Some("n".into()),
        code_challenge: "x".into(),
        auth_time: 100,
        expires_at,
    }
}

async fn codes_are_single_use_and_expire(store: Arc<dyn Store>) {
    store.insert_code(&code("h1", 160)).await.unwrap();
    assert_eq!(
        store.redeem_code("h1", 120).await.unwrap(),
        CodeRedemption::Redeemed(Box::new(code("h1", 160)))
    );
    assert_eq!(
        store.redeem_code("h1", 121).await.unwrap(),
        CodeRedemption::AlreadyUsed
    );
    store.insert_code(&code("h2", 160)).await.unwrap();
    assert_eq!(
        store.redeem_code("h2", 160).await.unwrap(),
        CodeRedemption::Unknown,
        "expired at exactly 60 s"
    );
    assert_eq!(
        store.redeem_code("nope", 1).await.unwrap(),
        CodeRedemption::Unknown
    );
}

fn refresh(hash: &str, family: &str) -> RefreshToken {
    RefreshToken {
        token_hash: hash.into(),
        family_id: family.into(),
        tenant_id: "t".into(),
        client_id: "c".into(),
        user_id: "u".into(),
        scope: "openid".into(),
        expires_at: 1000,
        created_at: 1,
    }
}

async fn refresh_rotation_and_reuse_detection(store: Arc<dyn Store>) {
    store
        .insert_refresh_token(&refresh("r1", "fam"))
        .await
        .unwrap();
    let rotated = store
        .rotate_refresh_token("r1", &refresh("r2", "ignored"), 10)
        .await
        .unwrap();
    assert_eq!(rotated, RefreshRotation::Rotated(refresh("r1", "fam")));
    let r2 = store.get_refresh_token("r2", 10).await.unwrap().unwrap();
    assert_eq!(
        r2.family_id, "fam",
        "the new token joins the presented token's family"
    );
    // Presenting r1 again is reuse: the whole family, r2 included, is revoked.
    assert_eq!(
        store
            .rotate_refresh_token("r1", &refresh("r3", "x"), 11)
            .await
            .unwrap(),
        RefreshRotation::ReuseDetected
    );
    assert_eq!(store.get_refresh_token("r2", 11).await.unwrap(), None);
    assert_eq!(
        store
            .rotate_refresh_token("r2", &refresh("r4", "x"), 12)
            .await
            .unwrap(),
        RefreshRotation::Invalid
    );
    assert_eq!(
        store
            .rotate_refresh_token("unknown", &refresh("r5", "x"), 12)
            .await
            .unwrap(),
        RefreshRotation::Invalid
    );
    // Expiry.
    store
        .insert_refresh_token(&refresh("e1", "fam2"))
        .await
        .unwrap();
    assert_eq!(
        store
            .rotate_refresh_token("e1", &refresh("e2", "x"), 1000)
            .await
            .unwrap(),
        RefreshRotation::Invalid
    );
    // Revocation (RFC 7009) revokes the family.
    store
        .insert_refresh_token(&refresh("v1", "fam3"))
        .await
        .unwrap();
    assert!(store.revoke_refresh_family("v1").await.unwrap().is_some());
    assert_eq!(store.get_refresh_token("v1", 5).await.unwrap(), None);
}

async fn every_change_is_audited_in_a_valid_chain(store: Arc<dyn Store>) {
    let t = tenant(store.as_ref(), "audited").await;
    let u = user(&t, "a@b.test");
    store.create_user(&actor(), &u, 20).await.unwrap();
    store
        .set_user_status(&actor(), &t.id, &u.id, UserStatus::Disabled, 21)
        .await
        .unwrap();
    let (events, seq, hash) = store.audit_chain().await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        vec!["tenant.create", "user.create", "user.update"]
    );
    assert_eq!(seq, 3);
    let update = &events[2];
    assert_eq!(update.actor, "test");
    assert_eq!(update.tenant_id.as_deref(), Some(t.id.as_str()));
    assert!(update.before.as_deref().unwrap().contains("\"active\""));
    assert!(update.after.as_deref().unwrap().contains("\"disabled\""));
    assert!(
        !update.after.as_deref().unwrap().contains("argon2"),
        "password hashes never enter the audit trail"
    );
    let report = verify_chain(&events, seq, &hash);
    assert!(report.ok(), "{report:?}");
    let q = store
        .query_audit(&store::AuditQuery {
            tenant_id: Some(t.id.clone()),
            after_seq: Some(1),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(q.len(), 2);
}

async fn concurrent_changes_keep_the_chain_valid(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            tenant(store.as_ref(), &format!("t{i}")).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (events, seq, hash) = store.audit_chain().await.unwrap();
    assert_eq!(events.len(), 16);
    assert!(verify_chain(&events, seq, &hash).ok());
}

async fn migrations_are_idempotent(store: Arc<dyn Store>) {
    // `connect` already migrated: every known migration is present and nothing is applied again.
    for _ in 0..2 {
        let report = store.migrate().await.unwrap();
        assert!(report.applied.is_empty(), "{report:?}");
        assert_eq!(report.already_present.len(), store::SQLITE_MIGRATIONS.len());
        assert!(report.unknown.is_empty(), "{report:?}");
        assert_eq!(report.backend, store.backend());
    }
    tenant(store.as_ref(), "still-works").await;
}

fn key(kid: &str, state: KeyState) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.into(),
        alg: "EdDSA".into(),
        state,
        public_key: "pk".into(),
        private_key_enc: "enc".into(),
        created_at: 1,
        state_changed_at: 1,
    }
}

async fn key_rotation_plan_is_applied_atomically(store: Arc<dyn Store>) {
    let plan = store::RotationPlan {
        new_keys: vec![key("a", KeyState::Active), key("n", KeyState::Next)],
        ..Default::default()
    };
    store.apply_rotation(&actor(), &plan, 1).await.unwrap();
    let plan = store::RotationPlan {
        retiring: vec!["a".into()],
        activate: Some("n".into()),
        new_keys: vec![key("n2", KeyState::Next)],
        ..Default::default()
    };
    store.apply_rotation(&actor(), &plan, 2).await.unwrap();
    let states: Vec<(String, KeyState)> = store
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.kid, k.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("a".into(), KeyState::Retiring),
            ("n".into(), KeyState::Active),
            ("n2".into(), KeyState::Next)
        ]
    );
    let (events, ..) = store.audit_chain().await.unwrap();
    assert_eq!(events.last().unwrap().action, "keys.rotate");
}

async fn jti_revocation(store: Arc<dyn Store>) {
    assert!(!store.is_jti_revoked("j").await.unwrap());
    store.revoke_jti("j", 10).await.unwrap();
    store.revoke_jti("j", 10).await.unwrap();
    assert!(store.is_jti_revoked("j").await.unwrap());
}

/// Tampering: a modified row, a deleted row in the middle, and a deleted last row are detected.
async fn tamper_suite(exec: impl AsyncFn(&str), store: &dyn Store) {
    let t = tenant(store, "tamper").await;
    for i in 0..4 {
        store
            .create_user(&actor(), &user(&t, &format!("u{i}@t.test")), 1)
            .await
            .unwrap();
    }
    let check = async || {
        let (events, seq, hash) = store.audit_chain().await.unwrap();
        verify_chain(&events, seq, &hash)
    };
    assert!(check().await.ok());
    exec("UPDATE audit_events SET actor = 'someone-else' WHERE seq = 2").await;
    let report = check().await;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("seq 2") && p.contains("modified")),
        "{report:?}"
    );
    exec("UPDATE audit_events SET actor = 'test' WHERE seq = 2").await;
    assert!(check().await.ok(), "restoring the row restores the chain");
    exec("DELETE FROM audit_events WHERE seq = 3").await;
    let report = check().await;
    assert!(
        report.problems.iter().any(|p| p.contains("deleted")),
        "{report:?}"
    );
}

async fn tamper_tail(exec: impl AsyncFn(&str), store: &dyn Store) {
    let t = tenant(store, "tail").await;
    store
        .create_user(&actor(), &user(&t, "x@t.test"), 1)
        .await
        .unwrap();
    exec("DELETE FROM audit_events WHERE seq = 2").await;
    let (events, seq, hash) = store.audit_chain().await.unwrap();
    let report = verify_chain(&events, seq, &hash);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("events were deleted")),
        "{report:?}"
    );
}

#[tokio::test]
async fn audit_tampering_is_detected_sqlite() {
    let s = SqliteStore::open("sqlite::memory:").await.unwrap();
    tamper_suite(async |sql: &str| s.execute_raw(sql).await.unwrap(), &s).await;
    let s = SqliteStore::open("sqlite::memory:").await.unwrap();
    tamper_tail(async |sql: &str| s.execute_raw(sql).await.unwrap(), &s).await;
}

#[tokio::test]
async fn audit_tampering_is_detected_postgres() {
    let Some(url) = cloud_test_support::fresh_postgres_database().await else {
        return;
    };
    let s = PostgresStore::open(&url).await.unwrap();
    tamper_suite(async |sql: &str| s.execute_raw(sql).await.unwrap(), &s).await;
    let Some(url) = cloud_test_support::fresh_postgres_database().await else {
        return;
    };
    let s = PostgresStore::open(&url).await.unwrap();
    tamper_tail(async |sql: &str| s.execute_raw(sql).await.unwrap(), &s).await;
}

/// Expand/contract: an ordinary migration only adds; dropping or renaming is allowed only in a
/// migration named `*_contract`, released after no running version needs what it removes.
#[test]
fn migrations_are_expand_only_unless_named_contract_and_match_across_backends() {
    let sqlite: Vec<(i64, &str)> = store::SQLITE_MIGRATIONS
        .iter()
        .map(|(v, n, _)| (*v, *n))
        .collect();
    let postgres: Vec<(i64, &str)> = store::POSTGRES_MIGRATIONS
        .iter()
        .map(|(v, n, _)| (*v, *n))
        .collect();
    assert_eq!(
        sqlite, postgres,
        "both backends have the same migration versions"
    );
    for (version, name, sql) in store::SQLITE_MIGRATIONS
        .iter()
        .chain(store::POSTGRES_MIGRATIONS)
    {
        let upper = sql.to_ascii_uppercase();
        let destructive = ["DROP ", "RENAME ", "ALTER COLUMN"]
            .iter()
            .any(|w| upper.contains(w));
        assert!(
            !destructive || name.ends_with("_contract"),
            "migration {version} {name} is destructive but not named *_contract"
        );
    }
}
