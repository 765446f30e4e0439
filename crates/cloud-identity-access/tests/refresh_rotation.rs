//! Refresh-token rotation when the database fails in the middle of a refresh request, on SQLite
//! and PostgreSQL (docs/reliability.md, finding 10).
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, CHALLENGE, Fixture, TestApp, VERIFIER, login, redeem, refresh};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};

/// Raw SQL on the database of a running app, through a second connection.
enum Db {
    Sqlite(cloud_identity_access::store::SqliteStore),
    Postgres(cloud_identity_access::store::PostgresStore),
}

impl Db {
    async fn execute(&self, sql: &str) {
        match self {
            Self::Sqlite(s) => s.execute_raw(sql).await.unwrap(),
            Self::Postgres(s) => s.execute_raw(sql).await.unwrap(),
        }
    }
}

/// An app on a database this test can also reach: a SQLite file, or a fresh PostgreSQL database.
async fn spawn(backend: Backend) -> Option<(TestApp, Db, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let file_url = format!("sqlite://{}/identity.db?mode=rwc", dir.path().display());
    let mut url = String::new();
    let app = TestApp::spawn_with(backend, |config| {
        if let Backend::Sqlite = backend {
            config.database.url = Some(SecretString::from(file_url.clone()));
        }
        url = config
            .database
            .url
            .as_ref()
            .map(|u| u.expose_secret().to_string())
            .unwrap_or_default();
    })
    .await?;
    let db = match backend {
        Backend::Sqlite => Db::Sqlite(
            cloud_identity_access::store::SqliteStore::open(&url)
                .await
                .unwrap(),
        ),
        Backend::Postgres => Db::Postgres(
            cloud_identity_access::store::PostgresStore::open(&url)
                .await
                .unwrap(),
        ),
    };
    Some((app, db, dir))
}

/// Logs the fixture's user in through the login form and redeems the code: a refresh token.
async fn first_refresh_token(app: &TestApp, f: &Fixture) -> String {
    let code = login(app, f, CHALLENGE, &f.user_password)
        .await
        .unwrap()
        .code;
    let (status, body) = redeem(app, f, &code, VERIFIER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["refresh_token"].as_str().unwrap().to_string()
}

/// A refresh whose response cannot be built (the database fails on the reads after the token
/// is claimed) must not consume the token: the client, which got no new token, retries with the
/// one it holds, and that must rotate, not count as reuse and revoke the family. Before the fix
/// the rotation was committed first, then the user and their grants were read: the retry got
/// `invalid_grant` and the whole family was revoked (the user logged out, and a false
/// reuse alarm logged).
async fn a_refresh_that_fails_does_not_consume_the_token(backend: Backend) {
    let Some((app, db, _dir)) = spawn(backend).await else {
        return;
    };
    let admin = app.admin_token().await;
    let f = app.tenant_fixture(&admin, "acme").await;
    let r1 = first_refresh_token(&app, &f).await;
    let (s, body) = refresh(&app, &f, &r1).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let r2 = body["refresh_token"].as_str().unwrap().to_string();

    // The reads that build the response fail: the users table is away.
    db.execute("ALTER TABLE users RENAME TO users_away").await;
    let (s, body) = refresh(&app, &f, &r2).await;
    db.execute("ALTER TABLE users_away RENAME TO users").await;
    assert!(
        s.is_server_error(),
        "a refresh that cannot read the user fails: {s} {body}"
    );

    // The retry with the same token rotates, and the family lives on.
    let (s, body) = refresh(&app, &f, &r2).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the failed refresh consumed the token: {body}"
    );
    let r3 = body["refresh_token"].as_str().unwrap().to_string();
    let (s, body) = refresh(&app, &f, &r3).await;
    assert_eq!(s, StatusCode::OK, "the family was revoked: {body}");
    // Reuse detection still works: r2 was rotated (into r3), so presenting it again revokes.
    let (s, body) = refresh(&app, &f, &r2).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_fails_does_not_consume_the_token_sqlite() {
    a_refresh_that_fails_does_not_consume_the_token(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_fails_does_not_consume_the_token_postgres() {
    a_refresh_that_fails_does_not_consume_the_token(Backend::Postgres).await;
}
