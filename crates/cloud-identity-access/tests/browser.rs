//! The hosted login in a real browser: headless Chromium driven over WebDriver (chromedriver's
//! HTTP protocol, spoken with reqwest). The tokens it yields are verified with josekit against
//! the JWKS. `cargo xtask test` provides `CLOUD_TEST_CHROMIUM` and `CLOUD_TEST_CHROMEDRIVER`.
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, CHALLENGE, TestApp, VERIFIER};
use josekit::jwk::JwkSet;
use josekit::jws::EdDSA;
use reqwest::StatusCode;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: std::process::Child,
    /// chromedriver's port.
    port: u16,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ends the session first, so chromedriver quits its Chromium: a SIGKILL to chromedriver
        // alone left the browser running after every test run. Blocking, as `drop` cannot await.
        use std::io::{Read, Write};
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                stream,
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            // The answer comes once the browser has quit.
            let _ = stream.read_to_end(&mut Vec::new());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Driver {
    async fn start(chromium: &std::path::Path, chromedriver: &std::path::Path) -> Self {
        let port = free_port();
        let child = std::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                     "--no-first-run", "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.path().display())],
        }}}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {resp}"))
            .to_string();
        Self {
            child,
            port,
            base: format!("{base}/session/{session}"),
            session,
            http,
            _profile: profile,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp: Value = req.send().await.unwrap().json().await.unwrap();
        assert!(
            resp["value"].get("error").is_none(),
            "webdriver {path}: {resp}"
        );
        resp["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.element_text(&id).await
    }

    async fn element_text(&self, id: &str) -> String {
        self.cmd(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    /// [`Self::text`] of the first element matching `css` once the page has one: a click that
    /// submits a form can return before the next page has loaded when the machine is busy (CI
    /// saw "no such element" for the alert right after the click).
    async fn text_once_shown(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found = self
                .cmd(
                    reqwest::Method::POST,
                    "/elements",
                    Some(json!({ "using": "css selector", "value": css })),
                )
                .await;
            if let Some(id) = found
                .as_array()
                .and_then(|all| all.first())
                .and_then(|e| e[ELEMENT].as_str())
            {
                return self.element_text(id).await;
            }
            assert!(
                Instant::now() < deadline,
                "no element matches {css} after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn title(&self) -> String {
        self.cmd(reqwest::Method::GET, "/title", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_login_in_chromium_yields_tokens_that_verify_against_the_jwks() {
    let Some(chromium) = cloud_test_support::require_tool("CHROMIUM") else {
        return;
    };
    let Some(chromedriver) = cloud_test_support::require_tool("CHROMEDRIVER") else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let admin = app.admin_token().await;
    let f = app.tenant_fixture(&admin, "browser").await;
    // The client's redirect target: a tiny page on another port.
    let callback = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect_uri = format!(
        "http://127.0.0.1:{}/cb",
        callback.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        let router = axum::Router::new().route(
            "/cb",
            axum::routing::get(|| async {
                axum::response::Html("<title>Signed in</title><p>signed in</p>")
            }),
        );
        axum::serve(callback, router).await.unwrap();
    });
    let (s, web) = app
        .post_json(
            &admin,
            &format!("/v1/tenants/{}/clients", f.tenant_id),
            json!({ "name": "Browser app", "kind": "public", "grant_types": ["authorization_code", "refresh_token"], "redirect_uris": [redirect_uri], "scopes": ["openid", "email"] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let client_id = web["client"]["id"].as_str().unwrap().to_string();

    let driver = Driver::start(&chromium, &chromedriver).await;
    assert!(!driver.session.is_empty());
    let mut authorize = url::Url::parse(&app.url("/oauth2/authorize")).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", "openid email")
        .append_pair("state", "browser-state")
        .append_pair("nonce", "browser-nonce")
        .append_pair("code_challenge", CHALLENGE)
        .append_pair("code_challenge_method", "S256");
    driver.goto(authorize.as_str()).await;
    assert_eq!(driver.title().await, "Sign in");
    assert_eq!(driver.text("label[for=email]").await, "Email address");
    assert_eq!(driver.text("label[for=password]").await, "Password");
    // A wrong password: the page says so in an alert, without JavaScript.
    driver.type_into("#email", &f.user_email).await;
    driver.type_into("#password", "not the password").await;
    driver.click("#sign-in").await;
    assert_eq!(
        driver.text_once_shown("[role=alert]").await,
        "The email address or password is incorrect."
    );
    driver.type_into("#password", &f.user_password).await;
    driver.click("#sign-in").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let landed = loop {
        let current = driver.url().await;
        if current.starts_with(&redirect_uri) {
            break url::Url::parse(&current).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the browser did not reach the redirect_uri; it is at {current}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let param = |k: &str| {
        landed
            .query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    assert_eq!(param("state"), "browser-state");
    let resp = app
        .http
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", client_id.as_str()),
            ("code", &param("code")),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let tokens: Value = resp.json().await.unwrap();
    let jwks = JwkSet::from_bytes(
        app.http
            .get(app.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    for (name, token) in [
        ("access_token", tokens["access_token"].as_str().unwrap()),
        ("id_token", tokens["id_token"].as_str().unwrap()),
    ] {
        let header = josekit::jwt::decode_header(token).unwrap();
        let kid = header.claim("kid").and_then(Value::as_str).unwrap();
        let verifier = EdDSA.verifier_from_jwk(jwks.get(kid)[0]).unwrap();
        let (payload, _) = josekit::jwt::decode_with_verifier(token, &verifier)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(payload.subject(), Some(f.user_id.as_str()), "{name}");
        if name == "id_token" {
            assert_eq!(payload.claim("nonce"), Some(&json!("browser-nonce")));
        }
    }
}
