//! Refresh-token rotation when the database fails in the middle of a refresh request, on SQLite
//! and PostgreSQL (docs/reliability.md, finding 10).
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, Fixture, REDIRECT, TestApp};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// RFC 7636 appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

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
    let query = [
        ("response_type", "code"),
        ("client_id", f.web_client_id.as_str()),
        ("redirect_uri", REDIRECT),
        ("scope", "orders:read"),
        ("state", "s"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    let page = app
        .http
        .get(app.url("/oauth2/authorize"))
        .query(&query)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let mut form: Vec<(&str, &str)> = query.to_vec();
    form.push(("csrf_token", &csrf));
    form.push(("email", &f.user_email));
    form.push(("password", &f.user_password));
    let resp = app
        .http
        .post(app.url("/oauth2/authorize"))
        .header("cookie", cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let resp = app
        .http
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", f.web_client_id.as_str()),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["refresh_token"].as_str().unwrap().to_string()
}

async fn refresh(app: &TestApp, f: &Fixture, token: &str) -> (StatusCode, Value) {
    let resp = app
        .http
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", f.web_client_id.as_str()),
            ("refresh_token", token),
        ])
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
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
