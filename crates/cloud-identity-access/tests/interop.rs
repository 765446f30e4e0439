//! Interoperability: the `openidconnect` crate, an independent OpenID Connect client, against a
//! real server on port 0 (SQLite and PostgreSQL): discovery, authorization code with PKCE through
//! the hosted login form, token exchange, ID token verification (signature, issuer, audience,
//! nonce) by openidconnect itself, userinfo and refresh. The access token is then verified by a
//! second independent JOSE implementation, josekit, against the published JWKS.
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Fixture, REDIRECT, TestApp};
use josekit::jwk::JwkSet;
use josekit::jws::EdDSA;
use josekit::jwt;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreIdToken, CoreJwsSigningAlgorithm,
    CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, CsrfToken, EmptyAdditionalClaims, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, RefreshToken, Scope, TokenResponse,
    UserInfoClaims,
};
use reqwest::StatusCode;
use serde_json::Value;

both_backends!(openidconnect_client_completes_the_code_flow_with_pkce_userinfo_and_refresh);

/// The hidden fields and CSRF token of the hosted login form, as a browser would submit them.
fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .map(|tag| {
            let attr = |name: &str| {
                let raw = tag
                    .split(&format!("{name}=\""))
                    .nth(1)
                    .unwrap_or_else(|| panic!("hidden input without {name}: {tag}"))
                    .split('"')
                    .next()
                    .unwrap();
                unescape(raw)
            };
            (attr("name"), attr("value"))
        })
        .collect()
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Plays the user in a browser without JavaScript: GET the authorization URL, POST the login
/// form with its hidden fields, the CSRF cookie and the credentials, and read the code off the
/// 303 redirect to the client.
async fn sign_in(app: &TestApp, f: &Fixture, authorize_url: &url::Url) -> (String, String) {
    let page = app.http.get(authorize_url.as_str()).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK, "the login page is shown");
    let cookie = common::session_cookie(&page);
    let html = page.text().await.unwrap();
    let mut form = hidden_inputs(&html);
    assert!(
        form.iter().any(|(n, _)| n == "csrf_token"),
        "the form carries a CSRF token: {html}"
    );
    form.push(("email".into(), f.user_email.clone()));
    form.push(("password".into(), f.user_password.clone()));
    let resp = app
        .http
        .post(app.url("/oauth2/authorize"))
        .header("cookie", cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    assert!(location.as_str().starts_with(REDIRECT), "{location}");
    let get = |k: &str| {
        location
            .query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no {k} in {location}"))
    };
    assert_eq!(get("iss"), app.base, "RFC 9207 iss on the redirect");
    (get("code"), get("state"))
}

/// Verifies `token` with josekit against the JWKS fetched now; returns (header typ, claims).
async fn josekit_verify(app: &TestApp, token: &str) -> (Option<String>, Value) {
    let body = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let set = JwkSet::from_bytes(&body).unwrap();
    let header = jwt::decode_header(token).unwrap();
    let kid = header.claim("kid").and_then(Value::as_str).unwrap();
    let jwk = set
        .get(kid)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("kid {kid} not in the JWKS"));
    let verifier = EdDSA.verifier_from_jwk(jwk).unwrap();
    let (payload, header) = jwt::decode_with_verifier(token, &verifier).unwrap();
    (
        header.token_type().map(str::to_string),
        serde_json::to_value(payload.claims_set()).unwrap(),
    )
}

async fn openidconnect_client_completes_the_code_flow_with_pkce_userinfo_and_refresh(app: TestApp) {
    let admin = app.admin_token().await;
    let f = app.tenant_fixture(&admin, "interop").await;
    // openidconnect's own HTTP client (reqwest with rustls); no redirects, as its docs advise
    // against SSRF.
    let http = openidconnect::reqwest::ClientBuilder::new()
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Discovery: openidconnect checks that the document's issuer equals the URL it asked.
    let issuer = IssuerUrl::new(app.base.clone()).unwrap();
    let metadata = CoreProviderMetadata::discover_async(issuer.clone(), &http)
        .await
        .unwrap();
    assert_eq!(metadata.issuer(), &issuer);
    assert!(
        metadata
            .id_token_signing_alg_values_supported()
            .contains(&CoreJwsSigningAlgorithm::EdDsa)
    );
    assert!(!metadata.jwks().keys().is_empty(), "the JWKS was fetched");

    // A public client: no secret, PKCE S256.
    let client =
        CoreClient::from_provider_metadata(metadata, ClientId::new(f.web_client_id.clone()), None)
            .set_redirect_uri(RedirectUrl::new(REDIRECT.to_string()).unwrap());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize_url, state, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("orders:read".into()))
        .set_pkce_challenge(challenge)
        .url();

    let (code, returned_state) = sign_in(&app, &f, &authorize_url).await;
    assert_eq!(&returned_state, state.secret(), "state round-trips");

    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();

    // The ID token, verified by openidconnect: EdDSA signature against the JWKS, iss, aud,
    // expiry and the nonce of this request.
    let id_token = tokens.id_token().expect("an ID token for the openid scope");
    let id_verifier = client
        .id_token_verifier()
        .set_allowed_algs([CoreJwsSigningAlgorithm::EdDsa]);
    let id_claims = id_token.claims(&id_verifier, &nonce).unwrap();
    assert_eq!(id_claims.subject().as_str(), f.user_id);
    assert_eq!(
        id_claims.email().map(|e| e.as_str()),
        Some(f.user_email.as_str())
    );
    // The same token with another request's nonce is refused by the client.
    assert!(
        id_token
            .claims(&id_verifier, &Nonce::new("another-request".into()))
            .is_err(),
        "openidconnect checks the nonce"
    );
    // A token whose signature was altered is refused: the signature really is checked.
    let text = id_token.to_string();
    let (signed, signature) = text.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let tampered: CoreIdToken = format!("{signed}.{flipped}{}", &signature[1..])
        .parse()
        .unwrap();
    assert!(
        tampered.claims(&id_verifier, &nonce).is_err(),
        "openidconnect refuses a tampered signature"
    );

    // The access token: RFC 9068, verified by josekit against the JWKS.
    let access = tokens.access_token().secret().clone();
    let (typ, claims) = josekit_verify(&app, &access).await;
    assert_eq!(typ.as_deref(), Some("at+jwt"));
    assert_eq!(claims["iss"], app.base.as_str());
    assert_eq!(claims["sub"], f.user_id.as_str());
    assert_eq!(claims["client_id"], f.web_client_id.as_str());
    assert_eq!(claims["tid"], f.tenant_id.as_str());
    assert_eq!(claims["permissions"], serde_json::json!(["orders:read"]));
    assert!(claims["scope"].as_str().unwrap().contains("openid"));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(claims["exp"].as_i64().unwrap() > now);

    // Userinfo through openidconnect, which checks that `sub` matches the ID token's.
    let info: UserInfoClaims<EmptyAdditionalClaims, CoreGenderClaim> = client
        .user_info(
            tokens.access_token().clone(),
            Some(id_claims.subject().clone()),
        )
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(info.subject(), id_claims.subject());
    assert_eq!(
        info.email().map(|e| e.as_str()),
        Some(f.user_email.as_str())
    );

    // Refresh: a new access token and a rotated refresh token; the old one is now spent.
    let refresh = tokens.refresh_token().expect("a refresh token").clone();
    let refreshed = client
        .exchange_refresh_token(&refresh)
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    let rotated = refreshed.refresh_token().expect("a rotated refresh token");
    assert_ne!(rotated.secret(), refresh.secret());
    let (_, refreshed_claims) = josekit_verify(&app, refreshed.access_token().secret()).await;
    assert_eq!(refreshed_claims["sub"], f.user_id.as_str());
    assert_ne!(refreshed_claims["jti"], claims["jti"]);
    let reuse = client
        .exchange_refresh_token(&RefreshToken::new(refresh.secret().clone()))
        .unwrap()
        .request_async(&http)
        .await;
    assert!(reuse.is_err(), "a used refresh token is refused");
}
