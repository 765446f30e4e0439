//! `/oauth2/authorize`: the authorization code flow with PKCE S256 only, and the hosted login
//! page (server-rendered HTML, no JavaScript, labelled fields, CSRF-protected).
//!
//! CSRF: a random value in an `HttpOnly; SameSite=Strict` cookie, and in the form its HMAC under
//! a server key; the POST must carry both and they must match.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::crypto::{constant_time_eq, random_token, sha256_hex};
use crate::model::{AuthorizationCode, Client, GRANT_AUTHORIZATION_CODE, UserStatus};
use crate::oauth::OAuthError;
use crate::state::{AppState, secs};

const CSRF_COOKIE: &str = "cia_csrf";

/// Failed-login throttling per account and per IP, with lockout. In memory, per replica.
#[derive(Debug, Default)]
pub struct Throttle {
    entries: Mutex<HashMap<String, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    window_start: i64,
    locked_until: i64,
}

impl Throttle {
    /// Whether `key` is locked out at `now`.
    pub fn locked(&self, key: &str, now: i64) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).is_some_and(|f| f.locked_until > now)
    }

    /// Records a failure; locks `key` once `max` failures fall within `window` seconds.
    pub fn fail(&self, key: &str, now: i64, max: u32, window: i64, lockout: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 100_000 {
            entries.retain(|_, f| f.locked_until > now || now - f.window_start < window);
        }
        let entry = entries.entry(key.to_string()).or_insert(Failures {
            count: 0,
            window_start: now,
            locked_until: 0,
        });
        if now - entry.window_start >= window {
            *entry = Failures {
                count: 0,
                window_start: now,
                locked_until: 0,
            };
        }
        entry.count += 1;
        if entry.count >= max {
            entry.locked_until = now + lockout;
            entry.count = 0;
            entry.window_start = now;
        }
    }

    pub fn succeed(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// The parameters of an authorization request.
#[derive(Debug, Default, Clone)]
struct AuthRequest {
    response_type: String,
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: String,
    code_challenge_method: String,
}

const AUTH_PARAMS: [&str; 8] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
];

fn parse_params(raw: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw) {
        if map.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(format!("parameter {k} is repeated"));
        }
    }
    Ok(map)
}

impl AuthRequest {
    fn from_map(map: &HashMap<String, String>) -> Self {
        let get = |k: &str| map.get(k).cloned().unwrap_or_default();
        let opt = |k: &str| map.get(k).filter(|v| !v.is_empty()).cloned();
        Self {
            response_type: get("response_type"),
            client_id: get("client_id"),
            redirect_uri: get("redirect_uri"),
            scope: get("scope"),
            state: opt("state"),
            nonce: opt("nonce"),
            code_challenge: get("code_challenge"),
            code_challenge_method: get("code_challenge_method"),
        }
    }
}

/// An error shown on our own page: the redirect target is not trusted, so no redirect.
fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign-in error</title></head>\
         <body><main><h1>Sign-in error</h1><p role=\"alert\">{}</p></main></body></html>",
        escape(message)
    );
    with_page_headers((status, Html(body)).into_response())
}

fn with_page_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A redirect back to the client with an error (RFC 6749 section 4.1.2.1).
fn error_redirect(req: &AuthRequest, issuer: &str, error: &str, description: &str) -> Response {
    let mut url = match url::Url::parse(&req.redirect_uri) {
        Ok(url) => url,
        Err(_) => return error_page(StatusCode::BAD_REQUEST, "invalid redirect_uri"),
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("error", error)
            .append_pair("error_description", description);
        if let Some(state) = &req.state {
            q.append_pair("state", state);
        }
        q.append_pair("iss", issuer);
    }
    Redirect::to(url.as_str()).into_response()
}

/// Validates the request. `Err(response)` is either our own error page (bad client or
/// redirect_uri: never redirect there) or an error redirect to the client.
async fn validate(state: &AppState, req: &AuthRequest) -> Result<Client, Response> {
    if req.client_id.is_empty() {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "missing parameter client_id",
        ));
    }
    let client = match state.store.get_client(&req.client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return Err(error_page(StatusCode::BAD_REQUEST, "unknown client_id")),
        Err(err) => {
            tracing::error!(error = %err, "client lookup failed");
            return Err(error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is temporarily unavailable",
            ));
        }
    };
    // Exact string match, no normalisation or prefix matching.
    if req.redirect_uri.is_empty() || !client.redirect_uris.contains(&req.redirect_uri) {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "redirect_uri is not registered for this client",
        ));
    }
    let iss = state.issuer();
    if req.response_type != "code" {
        return Err(error_redirect(
            req,
            iss,
            "unsupported_response_type",
            "response_type must be code",
        ));
    }
    if !client
        .grant_types
        .iter()
        .any(|g| g == GRANT_AUTHORIZATION_CODE)
    {
        return Err(error_redirect(
            req,
            iss,
            "unauthorized_client",
            "this client may not use the authorization code flow",
        ));
    }
    if req.code_challenge_method != "S256" {
        return Err(error_redirect(
            req,
            iss,
            "invalid_request",
            "code_challenge_method must be S256 (PKCE is required)",
        ));
    }
    if req.code_challenge.len() != 43
        || !req
            .code_challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(error_redirect(
            req,
            iss,
            "invalid_request",
            "code_challenge must be a base64url SHA-256 digest",
        ));
    }
    for scope in req.scope.split(' ').filter(|s| !s.is_empty()) {
        if !client.scopes.iter().any(|s| s == scope) {
            return Err(error_redirect(
                req,
                iss,
                "invalid_scope",
                &format!("scope {scope} is not allowed for this client"),
            ));
        }
    }
    if req.scope.split(' ').any(|s| s == "openid") && req.nonce.is_none() {
        // OIDC makes nonce optional for the code flow; we require it to bind the ID token.
        return Err(error_redirect(
            req,
            iss,
            "invalid_request",
            "nonce is required with the openid scope",
        ));
    }
    Ok(client)
}

fn csrf_sign(state: &AppState, value: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&state.csrf_key) else {
        return String::new();
    };
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        })
}

fn login_page(
    state: &AppState,
    req: &AuthRequest,
    client: &Client,
    csrf_cookie: &str,
    status: StatusCode,
    error: Option<&str>,
    email: &str,
) -> Response {
    let mut hidden = String::new();
    let values: [(&str, &str); 8] = [
        ("response_type", &req.response_type),
        ("client_id", &req.client_id),
        ("redirect_uri", &req.redirect_uri),
        ("scope", &req.scope),
        ("state", req.state.as_deref().unwrap_or("")),
        ("nonce", req.nonce.as_deref().unwrap_or("")),
        ("code_challenge", &req.code_challenge),
        ("code_challenge_method", &req.code_challenge_method),
    ];
    for (name, value) in values {
        hidden.push_str(&format!(
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            escape(value)
        ));
    }
    let csrf = csrf_sign(state, csrf_cookie);
    let alert = error
        .map(|e| {
            format!(
                "<p id=\"login-error\" role=\"alert\" class=\"error\">{}</p>",
                escape(e)
            )
        })
        .unwrap_or_default();
    let described = if error.is_some() {
        " aria-describedby=\"login-error\" aria-invalid=\"true\""
    } else {
        ""
    };
    let body = format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:3rem auto;padding:0 1rem;color:#111}}label{{display:block;margin-top:1rem;font-weight:600}}input[type=email],input[type=password]{{width:100%;padding:.5rem;font-size:1rem;border:1px solid #555}}button{{margin-top:1.5rem;padding:.6rem 1.2rem;font-size:1rem}}.error{{color:#a00000;font-weight:600}}:focus{{outline:3px solid #1a5fb4}}</style>
</head>
<body><main>
<h1>Sign in</h1>
<p>to continue to <strong>{client_name}</strong></p>
{alert}
<form method="post" action="/oauth2/authorize">
{hidden}<input type="hidden" name="csrf_token" value="{csrf}">
<label for="email">Email address</label>
<input id="email" name="email" type="email" autocomplete="username" required value="{email}"{described}>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required{described}>
<button type="submit" id="sign-in">Sign in</button>
</form>
</main></body></html>"#,
        client_name = escape(&client.name),
        email = escape(email),
    );
    let mut response = with_page_headers((status, Html(body)).into_response());
    let cookie =
        format!("{CSRF_COOKIE}={csrf_cookie}; Path=/oauth2/authorize; HttpOnly; SameSite=Strict");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `GET /oauth2/authorize`: validates the request and shows the login page.
pub async fn authorize_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let map = match parse_params(query.unwrap_or_default().as_bytes()) {
        Ok(map) => map,
        Err(err) => return error_page(StatusCode::BAD_REQUEST, &err),
    };
    let req = AuthRequest::from_map(&map);
    let client = match validate(&state, &req).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    let csrf_cookie = cookie(&headers, CSRF_COOKIE)
        .filter(|c| c.len() == 43)
        .unwrap_or_else(|| random_token(32));
    login_page(
        &state,
        &req,
        &client,
        &csrf_cookie,
        StatusCode::OK,
        None,
        "",
    )
}

/// `POST /oauth2/authorize`: the login form. On success, a 303 to the client with the code.
pub async fn authorize_post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return error_page(rejection.status(), "the form could not be read"),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    {
        return error_page(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected a form (application/x-www-form-urlencoded)",
        );
    }
    let map = match parse_params(&body) {
        Ok(map) => map,
        Err(err) => return error_page(StatusCode::BAD_REQUEST, &err),
    };
    for name in map.keys() {
        if !AUTH_PARAMS.contains(&name.as_str())
            && !["csrf_token", "email", "password"].contains(&name.as_str())
        {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!("unexpected form field {name}"),
            );
        }
    }
    let req = AuthRequest::from_map(&map);
    let client = match validate(&state, &req).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    let Some(csrf_cookie) = cookie(&headers, CSRF_COOKIE) else {
        return error_page(
            StatusCode::FORBIDDEN,
            "the sign-in form expired or cookies are disabled; go back and try again",
        );
    };
    let submitted = map.get("csrf_token").map(String::as_str).unwrap_or("");
    if !constant_time_eq(
        csrf_sign(&state, &csrf_cookie).as_bytes(),
        submitted.as_bytes(),
    ) {
        return error_page(
            StatusCode::FORBIDDEN,
            "the sign-in form is not valid (CSRF check failed); go back and try again",
        );
    }
    let email = map
        .get("email")
        .map(|e| e.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let password = map.get("password").cloned().unwrap_or_default();
    if email.is_empty() || password.is_empty() {
        return login_page(
            &state,
            &req,
            &client,
            &csrf_cookie,
            StatusCode::BAD_REQUEST,
            Some("Enter your email address and password."),
            &email,
        );
    }
    let now = state.now();
    let ip = client_ip(peer.ip());
    let account_key = format!("acct:{}:{email}", client.tenant_id);
    let ip_key = format!("ip:{ip}");
    if state.throttle.locked(&account_key, now) || state.throttle.locked(&ip_key, now) {
        tracing::warn!(tenant_id = %client.tenant_id, "login refused: too many failed attempts");
        let mut response = login_page(
            &state,
            &req,
            &client,
            &csrf_cookie,
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many failed sign-in attempts. Try again later."),
            &email,
        );
        if let Ok(v) = HeaderValue::from_str(&secs(state.login.lockout).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let user = match state
        .store
        .find_user_by_email(&client.tenant_id, &email)
        .await
    {
        Ok(user) => user,
        Err(err) => {
            tracing::error!(error = %err, "user lookup failed");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is temporarily unavailable",
            );
        }
    };
    // Unknown users are checked against the dummy hash: same time, same message.
    let verified = match state
        .passwords
        .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
        .await
    {
        Ok(v) => v,
        Err(err) => {
            tracing::error!(error = %err, "password verification failed");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is temporarily unavailable",
            );
        }
    };
    let user = match user {
        Some(user) if verified && user.status == UserStatus::Active => user,
        _ => {
            let l = &state.login;
            state.throttle.fail(
                &account_key,
                now,
                l.max_failures_per_account,
                secs(l.window),
                secs(l.lockout),
            );
            state.throttle.fail(
                &ip_key,
                now,
                l.max_failures_per_ip,
                secs(l.window),
                secs(l.lockout),
            );
            return login_page(
                &state,
                &req,
                &client,
                &csrf_cookie,
                StatusCode::UNAUTHORIZED,
                Some("The email address or password is incorrect."),
                &email,
            );
        }
    };
    state.throttle.succeed(&account_key);
    let code = random_token(32);
    let record = AuthorizationCode {
        code_hash: sha256_hex(code.as_bytes()),
        tenant_id: client.tenant_id.clone(),
        client_id: client.id.clone(),
        user_id: user.id.clone(),
        redirect_uri: req.redirect_uri.clone(),
        scope: req
            .scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
        nonce: req.nonce.clone(),
        code_challenge: req.code_challenge.clone(),
        auth_time: now,
        expires_at: now + secs(state.tokens.authorization_code_ttl),
    };
    if let Err(err) = state.store.insert_code(&record).await {
        return OAuthError::from(err).into_response();
    }
    tracing::info!(tenant_id = %client.tenant_id, client_id = %client.id, user_id = %user.id, "login succeeded; authorization code issued");
    let Ok(mut url) = url::Url::parse(&req.redirect_uri) else {
        return error_page(StatusCode::BAD_REQUEST, "invalid redirect_uri");
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("code", &code);
        if let Some(s) = &req.state {
            q.append_pair("state", s);
        }
        q.append_pair("iss", state.issuer());
    }
    let mut response = Redirect::to(url.as_str()).into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn client_ip(ip: IpAddr) -> String {
    ip.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_locks_after_max_failures_and_unlocks_later() {
        let t = Throttle::default();
        for _ in 0..2 {
            t.fail("k", 100, 3, 60, 300);
            assert!(!t.locked("k", 100));
        }
        t.fail("k", 100, 3, 60, 300);
        assert!(t.locked("k", 101));
        assert!(!t.locked("k", 401));
    }

    #[test]
    fn escape_html() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
