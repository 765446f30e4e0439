//! A real service on port 0 per test, with SQLite in memory or a fresh PostgreSQL database.
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::time::Duration;

use cloud_identity_access::Config;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

pub const ADMIN_SECRET: &str = "test-bootstrap-secret-with-enough-entropy-0123456789";

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug)]
pub struct TestApp {
    pub base: String,
    pub admin_base: String,
    pub http: reqwest::Client,
    pub shutdown: cloud_kit::Shutdown,
    pub state: cloud_identity_access::state::AppState,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub fn base_config() -> Config {
    let mut config = Config::default();
    config.server.port = 0;
    config.server.admin_port = 0;
    config.server.drain_period = Duration::ZERO;
    config.server.shutdown_timeout = Duration::from_secs(2);
    config.database.url = Some(SecretString::from("sqlite::memory:"));
    config.bootstrap.admin_client_secret = Some(SecretString::from(ADMIN_SECRET));
    config
}

impl TestApp {
    /// `None` when the backend is not available (PostgreSQL outside `cargo xtask test`).
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<Self> {
        Self::spawn_full(backend, tweak, std::sync::Arc::new(cloud_kit::SystemClock)).await
    }

    pub async fn spawn_full(
        backend: Backend,
        tweak: impl FnOnce(&mut Config),
        clock: std::sync::Arc<dyn cloud_kit::Clock>,
    ) -> Option<Self> {
        let mut config = base_config();
        if let Backend::Postgres = backend {
            let url = cloud_test_support::fresh_postgres_database().await?;
            config.database.url = Some(SecretString::from(url));
            config.keys.encryption_key = Some(SecretString::from("test-encryption-key"));
        }
        tweak(&mut config);
        let app = cloud_identity_access::build_with_clock(config, clock)
            .await
            .unwrap()
            .without_signals();
        let base = format!("http://127.0.0.1:{}", app.port());
        let admin_base = format!("http://127.0.0.1:{}", app.admin_port());
        let shutdown = app.shutdown_handle();
        let state = app.state().clone();
        let task = tokio::spawn(async move {
            app.run_until_stopped().await.unwrap();
        });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Some(Self {
            base,
            admin_base,
            http,
            shutdown,
            state,
            task,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `client_credentials` token; panics unless 200.
    pub async fn client_token(&self, client_id: &str, secret: &str, scope: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        let resp = self
            .http
            .post(self.url("/oauth2/token"))
            .basic_auth(client_id, Some(secret))
            .form(&form)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    pub async fn admin_token(&self) -> String {
        self.client_token("platform-admin", ADMIN_SECRET, None)
            .await
    }

    pub async fn post_json(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A tenant with a confidential client that holds `tenant:admin` (and orders permissions),
    /// a public web client, and a user. Returns ids and secrets.
    pub async fn tenant_fixture(&self, admin: &str, name: &str) -> Fixture {
        let (s, tenant) = self
            .post_json(admin, "/v1/tenants", json!({ "name": name }))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{tenant}");
        let tid = tenant["id"].as_str().unwrap().to_string();
        self.fixture_in(admin, tid, name).await
    }

    /// [`Self::tenant_fixture`] with a tenant id chosen by the test (created through the store,
    /// since the API generates ids): for flag constraints written before the service starts.
    pub async fn tenant_fixture_with_id(&self, admin: &str, id: &str, name: &str) -> Fixture {
        let tenant = cloud_identity_access::model::Tenant {
            id: id.to_string(),
            name: name.to_string(),
            created_at: 0,
        };
        self.state
            .store
            .create_tenant(&cloud_identity_access::model::Actor::system(), &tenant, 0)
            .await
            .unwrap();
        self.fixture_in(admin, id.to_string(), name).await
    }

    async fn fixture_in(&self, admin: &str, tid: String, name: &str) -> Fixture {
        let (s, role) = self
            .post_json(
                admin,
                &format!("/v1/tenants/{tid}/roles"),
                json!({ "name": "admins", "permissions": ["tenant:admin", "orders:read"] }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{role}");
        let (s, created) = self
            .post_json(
                admin,
                &format!("/v1/tenants/{tid}/clients"),
                json!({ "name": "svc", "kind": "confidential", "grant_types": ["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"], "scopes": ["orders:read", "openid"] }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{created}");
        let client_id = created["client"]["id"].as_str().unwrap().to_string();
        let client_secret = created["client_secret"].as_str().unwrap().to_string();
        let (s, _) = self
            .post_json(
                admin,
                &format!("/v1/tenants/{tid}/role-assignments"),
                json!({ "role_id": role["id"], "subject_kind": "client", "subject_id": client_id }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, web) = self
            .post_json(
                admin,
                &format!("/v1/tenants/{tid}/clients"),
                json!({ "name": "web", "kind": "public", "grant_types": ["authorization_code", "refresh_token"], "redirect_uris": ["http://localhost:9999/cb"], "scopes": ["openid", "email", "orders:read"] }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{web}");
        let password = "correct horse battery staple".to_string();
        let (s, user) = self
            .post_json(
                admin,
                &format!("/v1/tenants/{tid}/users"),
                json!({ "email": format!("alice@{name}.test"), "password": password }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{user}");
        let (s, reader) = self
            .post_json(
                admin,
                &format!("/v1/tenants/{tid}/roles"),
                json!({ "name": "readers", "permissions": ["orders:read"] }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, _) = self
            .post_json(admin, &format!("/v1/tenants/{tid}/role-assignments"), json!({ "role_id": reader["id"], "subject_kind": "user", "subject_id": user["id"] }))
            .await;
        assert_eq!(s, StatusCode::CREATED);
        Fixture {
            tenant_id: tid,
            client_id,
            client_secret,
            web_client_id: web["client"]["id"].as_str().unwrap().to_string(),
            user_id: user["id"].as_str().unwrap().to_string(),
            user_email: format!("alice@{name}.test"),
            user_password: password,
            role_id: role["id"].as_str().unwrap().to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Fixture {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub web_client_id: String,
    pub user_id: String,
    pub user_email: String,
    pub user_password: String,
    pub role_id: String,
}

pub const REDIRECT: &str = "http://localhost:9999/cb";

/// Decodes a JWT's payload without verifying it (tests inspect claims this way).
pub fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// Runs each listed async test function against both backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = $crate::common::TestApp::spawn($crate::common::Backend::Sqlite).await.unwrap();
                super::$name(app).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = $crate::common::TestApp::spawn($crate::common::Backend::Postgres).await {
                    super::$name(app).await;
                }
            }
        })*
    };
}

// The authorization code flow, as a client drives it over HTTP.

#[derive(Debug)]
pub struct Login {
    pub code: String,
    pub state: String,
}

/// The `name=value` part of a response's `Set-Cookie`: the login page's session cookie, to send
/// back with the form.
pub fn session_cookie(response: &reqwest::Response) -> String {
    response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// Drives the hosted login page over plain HTTP as the fixture's user, for the web client, and
/// returns the code and state the redirect carries (the browser test does it in Chromium).
pub async fn login(
    app: &TestApp,
    f: &Fixture,
    challenge: &str,
    password: &str,
) -> Result<Login, (StatusCode, String)> {
    let query = [
        ("response_type", "code"),
        ("client_id", f.web_client_id.as_str()),
        ("redirect_uri", REDIRECT),
        ("scope", "openid email orders:read"),
        ("state", "st-123"),
        ("nonce", "n-456"),
        ("code_challenge", challenge),
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
    let cookie = session_cookie(&page);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("<label for=\"email\">") && html.contains("<label for=\"password\">"),
        "labelled fields"
    );
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
    form.push(("password", password));
    let resp = app
        .http
        .post(app.url("/oauth2/authorize"))
        .header("cookie", cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    if resp.status() != StatusCode::SEE_OTHER {
        let status = resp.status();
        return Err((status, resp.text().await.unwrap()));
    }
    let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    assert!(location.as_str().starts_with(REDIRECT));
    let get = |k: &str| {
        location
            .query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    assert_eq!(get("iss"), app.base);
    Ok(Login {
        code: get("code"),
        state: get("state"),
    })
}

/// RFC 7636's example PKCE pair.
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

pub async fn redeem(app: &TestApp, f: &Fixture, code: &str, verifier: &str) -> (StatusCode, Value) {
    let resp = app
        .http
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", &f.web_client_id),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

pub async fn refresh(app: &TestApp, f: &Fixture, token: &str) -> (StatusCode, Value) {
    let resp = app
        .http
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", &f.web_client_id),
            ("refresh_token", token),
        ])
        .send()
        .await
        .unwrap();
    // Null when the body is not JSON: the caller's status assertion then says what went wrong.
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}
