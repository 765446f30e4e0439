//! The OAuth / OIDC endpoints over real HTTP, on SQLite and PostgreSQL. Tokens are verified with
//! an independent JOSE implementation (josekit) against the published JWKS.
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{CHALLENGE, Fixture, REDIRECT, TestApp, VERIFIER, claims, login, redeem, refresh};
use josekit::jwk::JwkSet;
use josekit::jws::EdDSA;
use josekit::jwt;
use reqwest::StatusCode;
use serde_json::{Value, json};

both_backends!(
    discovery_and_jwks,
    client_credentials_token_verifies_with_josekit,
    introspection_and_revocation,
    authorization_code_flow_with_pkce_refresh_and_reuse_detection,
    token_exchange_delegates_within_the_tenant,
    key_rotation_keeps_old_tokens_valid_and_publishes_next,
    bad_input_never_gets_a_500,
    login_throttling_locks_out,
);

async fn jwks(app: &TestApp) -> JwkSet {
    let body = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    JwkSet::from_bytes(&body).unwrap()
}

/// Verifies `token` with josekit against the JWKS; returns the payload claims.
async fn josekit_verify(app: &TestApp, token: &str) -> Value {
    let set = jwks(app).await;
    let header = jwt::decode_header(token).unwrap();
    let kid = header
        .claim("kid")
        .and_then(Value::as_str)
        .unwrap()
        .to_string();
    let jwk = set
        .get(&kid)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("kid {kid} not in the JWKS"));
    let verifier = EdDSA.verifier_from_jwk(jwk).unwrap();
    let (payload, _) = jwt::decode_with_verifier(token, &verifier).unwrap();
    serde_json::to_value(payload.claims_set()).unwrap()
}

async fn discovery_and_jwks(app: TestApp) {
    let d: Value = app
        .http
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["issuer"], app.base);
    assert_eq!(d["token_endpoint"], format!("{}/oauth2/token", app.base));
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["EdDSA"]));
    let keys: Value = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = keys["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "active and next are published: {keys:?}");
    for k in keys {
        assert_eq!(k["kty"], "OKP");
        assert_eq!(k["crv"], "Ed25519");
        assert!(k.get("d").is_none(), "no private key material");
    }
}

async fn client_credentials_token_verifies_with_josekit(app: TestApp) {
    let admin = app.admin_token().await;
    let f = app.tenant_fixture(&admin, "acme").await;
    let resp = app
        .http
        .post(app.url("/oauth2/token"))
        .basic_auth(&f.client_id, Some(&f.client_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "orders:read"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "orders:read");
    let token = body["access_token"].as_str().unwrap();
    let c = josekit_verify(&app, token).await;
    for claim in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "jti",
        "client_id",
        "scope",
        "tid",
        "roles",
        "permissions",
    ] {
        assert!(c.get(claim).is_some(), "claim {claim} missing in {c}");
    }
    assert_eq!(c["iss"], app.base);
    assert_eq!(c["sub"], f.client_id.as_str());
    assert_eq!(c["tid"], f.tenant_id.as_str());
    assert_eq!(c["roles"], json!(["admins"]));
    assert_eq!(c["permissions"], json!(["orders:read", "tenant:admin"]));
    assert_eq!(
        jwt::decode_header(token).unwrap().claim("typ"),
        Some(&json!("at+jwt"))
    );
    // client_secret_post works too; a wrong secret is invalid_client with 401.
    let ok = app
        .http
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &f.client_id),
            ("client_secret", &f.client_secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let bad = app
        .http
        .post(app.url("/oauth2/token"))
        .basic_auth(&f.client_id, Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert!(bad.headers().contains_key("www-authenticate"));
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
    let scope = app
        .http
        .post(app.url("/oauth2/token"))
        .basic_auth(&f.client_id, Some(&f.client_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "orders:write"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(scope.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        scope.json::<Value>().await.unwrap()["error"],
        "invalid_scope"
    );
}

async fn introspect(app: &TestApp, f: &Fixture, token: &str) -> Value {
    let resp = app
        .http
        .post(app.url("/oauth2/introspect"))
        .basic_auth(&f.client_id, Some(&f.client_secret))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

async fn introspection_and_revocation(app: TestApp) {
    let admin = app.admin_token().await;
    let f = app.tenant_fixture(&admin, "acme").await;
    let g = app.tenant_fixture(&admin, "globex").await;
    let token = app.client_token(&f.client_id, &f.client_secret, None).await;
    let info = introspect(&app, &f, &token).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["tid"], f.tenant_id.as_str());
    // A valid token does not stand in for the client's credentials.
    let r = app
        .http
        .post(app.url("/oauth2/introspect"))
        .basic_auth(&f.client_id, Some("not-the-secret"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
    // Another tenant's client sees the token as inactive.
    assert_eq!(
        introspect(&app, &g, &token).await,
        json!({ "active": false })
    );
    // Garbage and tampered tokens are inactive, not errors.
    assert_eq!(introspect(&app, &f, "garbage").await["active"], false);
    let mut tampered = token.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    assert_eq!(introspect(&app, &f, &tampered).await["active"], false);
    // Another client cannot revoke it; its own client can.
    let r = app
        .http
        .post(app.url("/oauth2/revoke"))
        .basic_auth(&g.client_id, Some(&g.client_secret))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(introspect(&app, &f, &token).await["active"], true);
    let r = app
        .http
        .post(app.url("/oauth2/revoke"))
        .basic_auth(&f.client_id, Some(&f.client_secret))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(introspect(&app, &f, &token).await["active"], false);
    let (s, _) = app
        .get_json(&token, &format!("/v1/tenants/{}/users", f.tenant_id))
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a revoked token is refused by the admin API"
    );
    // Public clients may not introspect.
    let r = app
        .http
        .post(app.url("/oauth2/introspect"))
        .form(&[("token", token.as_str()), ("client_id", &f.web_client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

async fn authorization_code_flow_with_pkce_refresh_and_reuse_detection(app: TestApp) {
    let admin = app.admin_token().await;
    let f = app.tenant_fixture(&admin, "acme").await;
    let login1 = login(&app, &f, CHALLENGE, &f.user_password).await.unwrap();
    assert_eq!(login1.state, "st-123");
    // Wrong verifier: invalid_grant, and the code is burnt (single use).
    let (s, body) = redeem(
        &app,
        &f,
        &login1.code,
        "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXX",
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let login2 = login(&app, &f, CHALLENGE, &f.user_password).await.unwrap();
    let (s, tokens) = redeem(&app, &f, &login2.code, VERIFIER).await;
    assert_eq!(s, StatusCode::OK, "{tokens}");
    let (s, again) = redeem(&app, &f, &login2.code, VERIFIER).await;
    assert_eq!(
        (s, again["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "codes are single-use"
    );
    let access = josekit_verify(&app, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(access["sub"], f.user_id.as_str());
    assert_eq!(access["permissions"], json!(["orders:read"]));
    let id = josekit_verify(&app, tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["aud"], f.web_client_id.as_str());
    assert_eq!(id["email"], f.user_email.as_str());
    // userinfo
    let (s, info) = app
        .get_json(tokens["access_token"].as_str().unwrap(), "/oauth2/userinfo")
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(info["sub"], f.user_id.as_str());
    assert_eq!(info["email"], f.user_email.as_str());
    // Refresh rotation, then reuse of the old token revokes the family.
    let r1 = tokens["refresh_token"].as_str().unwrap().to_string();
    let (s, rotated) = refresh(&app, &f, &r1).await;
    assert_eq!(s, StatusCode::OK, "{rotated}");
    let r2 = rotated["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2);
    let (s, reused) = refresh(&app, &f, &r1).await;
    assert_eq!(
        (s, reused["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (s, _) = refresh(&app, &f, &r2).await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "the whole family is revoked after reuse"
    );
    // Wrong redirect_uri at the authorize endpoint: error page, never a redirect.
    let resp = app
        .http
        .get(app.url("/oauth2/authorize"))
        .query(&[
            ("response_type", "code"),
            ("client_id", &f.web_client_id),
            ("redirect_uri", "http://localhost:9999/cb/"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // plain PKCE is refused with an error redirect.
    let resp = app
        .http
        .get(app.url("/oauth2/authorize"))
        .query(&[
            ("response_type", "code"),
            ("client_id", &f.web_client_id),
            ("redirect_uri", REDIRECT),
            ("state", "s"),
            ("code_challenge", VERIFIER),
            ("code_challenge_method", "plain"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(
        resp.headers()["location"]
            .to_str()
            .unwrap()
            .contains("error=invalid_request")
    );
}

async fn token_exchange_delegates_within_the_tenant(app: TestApp) {
    let admin = app.admin_token().await;
    let f = app.tenant_fixture(&admin, "acme").await;
    let g = app.tenant_fixture(&admin, "globex").await;
    let l = login(&app, &f, CHALLENGE, &f.user_password).await.unwrap();
    let (_, tokens) = redeem(&app, &f, &l.code, VERIFIER).await;
    let user_token = tokens["access_token"].as_str().unwrap();
    let exchange = |client: &Fixture, scope: &'static str| {
        let client = client.clone();
        let app_url = app.url("/oauth2/token");
        let http = app.http.clone();
        let subject = user_token.to_string();
        async move {
            let resp = http
                .post(app_url)
                .basic_auth(&client.client_id, Some(&client.client_secret))
                .form(&[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("subject_token", subject.as_str()),
                    (
                        "subject_token_type",
                        "urn:ietf:params:oauth:token-type:access_token",
                    ),
                    ("scope", scope),
                    ("audience", "orders-service"),
                ])
                .send()
                .await
                .unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        }
    };
    let (s, body) = exchange(&f, "orders:read").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let c = josekit_verify(&app, body["access_token"].as_str().unwrap()).await;
    assert_eq!(c["sub"], f.user_id.as_str());
    assert_eq!(c["act"]["sub"], f.client_id.as_str());
    assert_eq!(c["aud"], "orders-service");
    assert_eq!(c["scope"], "orders:read");
    let (s, body) = exchange(&f, "orders:write").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope")),
        "cannot widen scope"
    );
    let (s, body) = exchange(&g, "orders:read").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "foreign-tenant subject token"
    );
}

async fn key_rotation_keeps_old_tokens_valid_and_publishes_next(app: TestApp) {
    let admin = app.admin_token().await;
    let f = app.tenant_fixture(&admin, "acme").await;
    let before = app.client_token(&f.client_id, &f.client_secret, None).await;
    let kid_before = jwt::decode_header(&before)
        .unwrap()
        .claim("kid")
        .cloned()
        .unwrap();
    let jwks_before = jwks(&app).await;
    let now = app.state.now();
    app.state
        .keys
        .rotate(&cloud_identity_access::model::Actor::system(), now)
        .await
        .unwrap();
    let after = app.client_token(&f.client_id, &f.client_secret, None).await;
    let kid_after = jwt::decode_header(&after)
        .unwrap()
        .claim("kid")
        .cloned()
        .unwrap();
    assert_ne!(kid_before, kid_after);
    // A verifier that cached the key set before the rotation already knows the new key.
    assert!(
        !jwks_before.get(kid_after.as_str().unwrap()).is_empty(),
        "the new signing key was published as next before it signed"
    );
    josekit_verify(&app, &before).await;
    assert_eq!(
        introspect(&app, &f, &before).await["active"],
        true,
        "tokens of the retiring key stay valid"
    );
    let published: Value = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        published["keys"].as_array().unwrap().len(),
        3,
        "retiring, active and next"
    );
    app.state
        .keys
        .rotate(&cloud_identity_access::model::Actor::system(), now + 1)
        .await
        .unwrap();
    assert!(
        jwks(&app)
            .await
            .get(kid_before.as_str().unwrap())
            .is_empty(),
        "retired keys leave the JWKS"
    );
    assert_eq!(introspect(&app, &f, &before).await["active"], false);
    let (events, ..) = app.state.store.audit_chain().await.unwrap();
    assert!(events.iter().filter(|e| e.action == "keys.rotate").count() >= 3);
}

async fn raw_post(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, String, String) {
    let resp = app
        .http
        .post(app.url(path))
        .header("content-type", content_type)
        // A rejected oversized body is left unread, so the server closes that connection; a
        // pooled client could otherwise reuse it for the next case and see it cut off.
        .header("connection", "close")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

async fn bad_input_never_gets_a_500(app: TestApp) {
    let admin = app.admin_token().await;
    let f = app.tenant_fixture(&admin, "acme").await;
    let form = "application/x-www-form-urlencoded";
    // OAuth endpoints: RFC 6749 error bodies.
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "/oauth2/token",
            "application/json",
            br#"{"grant_type":"client_credentials"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
        ),
        (
            "/oauth2/token",
            form,
            b"".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/oauth2/token",
            form,
            b"grant_type=client_credentials&grant_type=client_credentials".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/oauth2/token",
            form,
            b"grant_type=password&client_id=x".to_vec(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "/oauth2/token",
            form,
            b"%%%=&&==".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/oauth2/token",
            form,
            vec![0xff, 0xfe, 0x3d],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/oauth2/token",
            form,
            vec![b'a'; 2 * 1024 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
        ),
        (
            "/oauth2/introspect",
            form,
            b"token=x".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/oauth2/revoke",
            "text/plain",
            b"token=x".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
        ),
    ];
    for (path, ct, body, status, error) in cases {
        let (s, _, text) = raw_post(&app, path, ct, body).await;
        assert_eq!(s, status, "{path} {ct}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert_eq!(v["error"], error, "{text}");
        assert!(
            v["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
    }
    let r = app
        .http
        .post(app.url("/oauth2/token"))
        .basic_auth(&f.client_id, Some(&f.client_secret))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
    let r = app
        .http
        .post(app.url("/oauth2/token"))
        .basic_auth(&f.client_id, Some(&f.client_secret))
        .form(&[("grant_type", "client_credentials"), ("client_secret", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "two client authentication methods"
    );
    let r = app
        .http
        .post(app.url("/oauth2/token"))
        .header("authorization", "Basic !!!")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Admin API: problem+json.
    let tenant_path = format!("/v1/tenants/{}/users", f.tenant_id);
    let token = app.client_token(&f.client_id, &f.client_secret, None).await;
    let cases: Vec<(&str, Vec<u8>, StatusCode)> = vec![
        (
            "application/json",
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "text/plain",
            br#"{"email":"a@b.c","password":"xxxxxxxxxxxxxxx"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "application/json",
            br#"{"email":"a@b.c"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "application/json",
            br#"{"email":"a@b.c","password":"xxxxxxxxxxxxxxx","admin":true}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "application/json",
            br#"{"email":"not-an-email","password":"xxxxxxxxxxxxxxx"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "application/json",
            vec![b' '; 2 * 1024 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (ct, body, status) in cases {
        let resp = app
            .http
            .post(app.url(&tenant_path))
            .bearer_auth(&token)
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        let s = resp.status();
        let rct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        assert_eq!(s, status, "{ct}: {text}");
        assert_eq!(rct, "application/problem+json", "{text}");
    }
    // Tokens: missing, malformed, tampered, expired, wrong type (ID token), foreign tenant.
    let (s, _) = app.get_json("", &tenant_path).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let resp = app
        .http
        .get(app.url(&tenant_path))
        .header("authorization", "Bearer a.b.c")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut c = claims(&token);
    c["tid"] = json!("platform");
    c["permissions"] = json!(["platform:admin"]);
    use base64::Engine;
    parts[1] =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
    let (s, _) = app.get_json(&parts.join("."), "/v1/tenants").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "tampered claims");
    let g = app.tenant_fixture(&admin, "globex").await;
    let (s, body) = app
        .get_json(&token, &format!("/v1/tenants/{}/users", g.tenant_id))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "foreign-tenant token: {body}");
    let (s, _) = app.get_json(&token, "/v1/audit?limit=abc").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = app.get_json(&token, "/v1/audit?limit=0").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Authorize endpoint with repeated or missing parameters: an error page, not a redirect or 500.
    let resp = app
        .http
        .get(app.url("/oauth2/authorize?client_id=a&client_id=b"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = app
        .http
        .get(app.url("/oauth2/authorize"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (s, _, _) = raw_post(&app, "/oauth2/authorize", form, b"email=a".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

async fn login_throttling_locks_out(app: TestApp) {
    let admin = app.admin_token().await;
    let f = app.tenant_fixture(&admin, "acme").await;
    for _ in 0..5 {
        let err = login(&app, &f, CHALLENGE, "wrong password!!")
            .await
            .err()
            .unwrap();
        assert_eq!(err.0, StatusCode::UNAUTHORIZED);
        assert!(
            err.1
                .contains("The email address or password is incorrect.")
        );
    }
    let err = login(&app, &f, CHALLENGE, &f.user_password)
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.0,
        StatusCode::TOO_MANY_REQUESTS,
        "locked out even with the right password"
    );
    // An unknown user gets the same message as a wrong password.
    let mut ghost = f.clone();
    ghost.user_email = "ghost@acme.test".into();
    let err = login(&app, &ghost, CHALLENGE, "whatever password")
        .await
        .err()
        .unwrap();
    assert_eq!(err.0, StatusCode::UNAUTHORIZED);
    assert!(
        err.1
            .contains("The email address or password is incorrect.")
    );
}

#[tokio::test]
async fn expired_tokens_and_codes_are_refused() {
    let clock = cloud_kit::ManualClock::new(time::OffsetDateTime::now_utc());
    let app = TestApp::spawn_full(
        common::Backend::Sqlite,
        |_| {},
        std::sync::Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    let admin = app.admin_token().await;
    let f = app.tenant_fixture(&admin, "acme").await;
    let l = login(&app, &f, CHALLENGE, &f.user_password).await.unwrap();
    let token = app.client_token(&f.client_id, &f.client_secret, None).await;
    clock.advance(std::time::Duration::from_secs(61));
    let (s, body) = redeem(&app, &f, &l.code, VERIFIER).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "codes live 60 s"
    );
    clock.advance(std::time::Duration::from_secs(900));
    let (s, body) = app
        .get_json(&token, &format!("/v1/tenants/{}/users", f.tenant_id))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    assert_eq!(introspect(&app, &f, &token).await["active"], false);
}
