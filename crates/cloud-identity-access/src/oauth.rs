//! The OAuth 2.1 / OpenID Connect endpoints: discovery, JWKS, token (authorization_code,
//! client_credentials, refresh_token, token exchange), introspection, revocation, userinfo.
//! Errors are RFC 6749 section 5.2 bodies (`{"error", "error_description"}`), never a 500 for
//! bad input.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;
use serde_json::{Value, json};

use crate::crypto::{pkce_s256_matches, random_token, sha256_hex, valid_pkce_verifier};
use crate::keys::KeySet;
use crate::model::{
    Client, ClientKind, GRANT_AUTHORIZATION_CODE, GRANT_CLIENT_CREDENTIALS, GRANT_REFRESH_TOKEN,
    RefreshToken, SubjectKind, User,
};
use crate::state::{AppState, secs};
use crate::store::{CodeRedemption, Grants, RefreshRotation, StoreError};
use crate::tokens::{
    ACCESS_TOKEN_TYP, AccessClaims, Actor, CLAIMS_LAYOUT_V2, ID_TOKEN_TYP, IdClaims, TokenError,
    verify_access_token,
};

pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The `aud` of access tokens when the client names no audience.
pub const DEFAULT_AUDIENCE: &str = "cloud-platform";

/// An RFC 6749 error response.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }
    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", d)
    }
    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", d)
    }
    pub fn unauthorized_client(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", d)
    }
    pub fn server_error(err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "token endpoint failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "an internal error occurred; it has been logged",
        )
    }
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "signing keys are not loaded",
        )
    }
}

impl From<StoreError> for OAuthError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %err, "token endpoint: database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the service cannot reach its database; retry shortly",
                )
            }
            other => Self::server_error(&other),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(json!({ "error": self.error, "error_description": self.description })),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"cloud-identity-access\""),
            );
        }
        response
    }
}

/// A parsed `application/x-www-form-urlencoded` body in which every parameter appears once.
#[derive(Debug, Default)]
pub struct OAuthForm {
    params: Vec<(String, String)>,
}

impl OAuthForm {
    pub fn parse(
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Self, OAuthError> {
        let body = body.map_err(|rejection| {
            let status = rejection.status();
            let status = if status.is_server_error() {
                StatusCode::BAD_REQUEST
            } else {
                status
            };
            OAuthError::new(
                status,
                "invalid_request",
                format!("cannot read the request body: {}", rejection.body_text()),
            )
        })?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(OAuthError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "expected a request with Content-Type: application/x-www-form-urlencoded",
            ));
        }
        if std::str::from_utf8(&body).is_err() {
            return Err(OAuthError::invalid_request("the request body is not UTF-8"));
        }
        let mut params: Vec<(String, String)> = Vec::new();
        for (name, value) in url::form_urlencoded::parse(&body) {
            if params.iter().any(|(n, _)| *n == name) {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {name} is repeated"
                )));
            }
            params.push((name.into_owned(), value.into_owned()));
        }
        Ok(Self { params })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    pub fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("missing parameter {name}")))
    }
}

fn percent_decode(part: &str) -> String {
    url::form_urlencoded::parse(format!("v={part}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Client authentication: `client_secret_basic`, `client_secret_post`, or a public client's
/// `client_id` alone. Exactly one method per request.
pub async fn authenticate_client(
    state: &AppState,
    headers: &HeaderMap,
    form: &OAuthForm,
) -> Result<Client, OAuthError> {
    let (client_id, secret) = presented_client(headers, form)?;
    let client = state.store.get_client(&client_id).await?;
    check_client(state, client, secret)
}

/// The client id and secret the request presents, by exactly one method.
fn presented_client(
    headers: &HeaderMap,
    form: &OAuthForm,
) -> Result<(String, Option<String>), OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| OAuthError::invalid_client("malformed Authorization header"))?;
            let encoded = text.strip_prefix("Basic ").ok_or_else(|| {
                OAuthError::invalid_client("the Authorization header must use the Basic scheme")
            })?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
            Some((percent_decode(id), percent_decode(secret)))
        }
        None => None,
    };
    let (client_id, secret) = match (basic, form.get("client_secret")) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "use one client authentication method, not Basic and client_secret both",
            ));
        }
        (Some((id, secret)), None) => {
            if form.get("client_id").is_some_and(|f| f != id) {
                return Err(OAuthError::invalid_request(
                    "client_id does not match the Basic credentials",
                ));
            }
            (id, Some(secret))
        }
        (None, secret) => (
            form.require("client_id")?.to_string(),
            secret.map(str::to_string),
        ),
    };
    Ok((client_id, secret))
}

/// Checks the presented secret against the stored client (`None`: no such client).
fn check_client(
    state: &AppState,
    client: Option<Client>,
    secret: Option<String>,
) -> Result<Client, OAuthError> {
    match (client, secret) {
        (Some(client), Some(secret)) if client.kind == ClientKind::Confidential => {
            let stored = client.secret_hash.as_deref().unwrap_or("");
            if state.secrets.verify(&secret, stored) {
                Ok(client)
            } else {
                Err(OAuthError::invalid_client("client authentication failed"))
            }
        }
        (Some(client), None) if client.kind == ClientKind::Public => Ok(client),
        (Some(_), None) => Err(OAuthError::invalid_client("client authentication failed")),
        (Some(_), Some(_)) => Err(OAuthError::invalid_client("public clients have no secret")),
        (None, secret) => {
            // Spend the same work as a real check before answering.
            let _ = state.secrets.verify(secret.as_deref().unwrap_or(""), "");
            Err(OAuthError::invalid_client("client authentication failed"))
        }
    }
}

/// Scopes granted: the requested ones (all of which the client must be allowed), or all the
/// client's scopes when none are requested.
fn granted_scope(client: &Client, requested: Option<&str>) -> Result<String, OAuthError> {
    match requested {
        None => Ok(client.scopes.join(" ")),
        Some(requested) => {
            let mut granted = Vec::new();
            for scope in requested.split(' ').filter(|s| !s.is_empty()) {
                if !client.scopes.iter().any(|s| s == scope) {
                    return Err(OAuthError::invalid_scope(format!(
                        "scope {scope} is not allowed for this client"
                    )));
                }
                if !granted.contains(&scope) {
                    granted.push(scope);
                }
            }
            Ok(granted.join(" "))
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}

fn no_store(body: impl Serialize) -> Response {
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

struct Subject<'a> {
    sub: &'a str,
    kind: SubjectKind,
    tid: &'a str,
    auth_time: Option<i64>,
    act: Option<Actor>,
}

async fn issue_access_token(
    state: &AppState,
    client: &Client,
    subject: Subject<'_>,
    scope: &str,
    aud: &str,
) -> Result<(String, AccessClaims), OAuthError> {
    let keys = state.key_set().ok_or_else(OAuthError::unavailable)?;
    let grants = state
        .store
        .grants(subject.tid, subject.kind, subject.sub)
        .await?;
    Ok(sign_access_token(
        state, &keys, client, subject, grants, scope, aud,
    ))
}

/// Signs an access token with the subject's `grants`: no I/O.
fn sign_access_token(
    state: &AppState,
    keys: &KeySet,
    client: &Client,
    subject: Subject<'_>,
    grants: Grants,
    scope: &str,
    aud: &str,
) -> (String, AccessClaims) {
    let now = state.now();
    // Evaluated per token (in-process, no I/O): a flag change or kill switch applies to the
    // next token issued, and the rollout is sticky per tenant.
    let flag_context = cloud_flags::FlagContext::new()
        .with_tenant_id(subject.tid)
        .with_user_id(subject.sub);
    let new_layout = state
        .flags
        .is_enabled(cloud_flags::platform::IDENTITY_NEW_CLAIMS, &flag_context);
    let claims = AccessClaims {
        iss: state.issuer().to_string(),
        sub: subject.sub.to_string(),
        aud: aud.to_string(),
        exp: now + secs(state.tokens.access_token_ttl),
        iat: now,
        jti: uuid::Uuid::now_v7().to_string(),
        client_id: client.id.clone(),
        scope: scope.to_string(),
        tid: subject.tid.to_string(),
        ver: new_layout.then_some(CLAIMS_LAYOUT_V2),
        permissions_by_resource: new_layout
            .then(|| crate::tokens::permissions_by_resource(&grants.permissions)),
        roles: grants.roles,
        permissions: grants.permissions,
        act: subject.act,
        auth_time: subject.auth_time,
    };
    (keys.sign(ACCESS_TOKEN_TYP, &claims), claims)
}

/// `POST /oauth2/token`
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    let form = OAuthForm::parse(&headers, body)?;
    let grant_type = form.require("grant_type")?.to_string();
    let client = authenticate_client(&state, &headers, &form).await?;
    if !crate::model::ALL_GRANTS.contains(&grant_type.as_str()) {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant_type {grant_type} is not supported"),
        ));
    }
    if !client.grant_types.contains(&grant_type) {
        return Err(OAuthError::unauthorized_client(format!(
            "this client may not use grant_type {grant_type}"
        )));
    }
    match grant_type.as_str() {
        GRANT_CLIENT_CREDENTIALS => client_credentials(&state, &client, &form).await,
        GRANT_AUTHORIZATION_CODE => authorization_code(&state, &client, &form).await,
        GRANT_REFRESH_TOKEN => refresh_token(&state, &client, &form).await,
        _ => token_exchange(&state, &client, &form).await,
    }
}

async fn client_credentials(
    state: &AppState,
    client: &Client,
    form: &OAuthForm,
) -> Result<Response, OAuthError> {
    if client.kind != ClientKind::Confidential {
        return Err(OAuthError::unauthorized_client(
            "client_credentials needs a confidential client",
        ));
    }
    let scope = granted_scope(client, form.get("scope"))?;
    let subject = Subject {
        sub: &client.id,
        kind: SubjectKind::Client,
        tid: &client.tenant_id,
        auth_time: None,
        act: None,
    };
    let (access_token, _) = issue_access_token(
        state,
        client,
        subject,
        &scope,
        form.get("audience").unwrap_or(DEFAULT_AUDIENCE),
    )
    .await?;
    Ok(no_store(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: secs(state.tokens.access_token_ttl),
        scope,
        refresh_token: None,
        id_token: None,
        issued_token_type: None,
    }))
}

async fn new_refresh_token(
    state: &AppState,
    client: &Client,
    user_id: &str,
    scope: &str,
    family: Option<&str>,
) -> Result<(String, RefreshToken), OAuthError> {
    let raw = random_token(32);
    let now = state.now();
    let record = RefreshToken {
        token_hash: sha256_hex(raw.as_bytes()),
        family_id: family.map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_string),
        tenant_id: client.tenant_id.clone(),
        client_id: client.id.clone(),
        user_id: user_id.to_string(),
        scope: scope.to_string(),
        expires_at: now + secs(state.tokens.refresh_token_ttl),
        created_at: now,
    };
    Ok((raw, record))
}

/// What a user's token response needs from the database and the key manager: the user (who
/// must exist and be active), their grants, and the signing keys.
struct UserGrants {
    user: User,
    grants: Grants,
    keys: Arc<KeySet>,
}

async fn load_user(
    state: &AppState,
    client: &Client,
    user_id: &str,
) -> Result<UserGrants, OAuthError> {
    let keys = state.key_set().ok_or_else(OAuthError::unavailable)?;
    let user = state
        .store
        .get_user(&client.tenant_id, user_id)
        .await?
        .ok_or_else(|| OAuthError::invalid_grant("the user no longer exists"))?;
    if user.status != crate::model::UserStatus::Active {
        return Err(OAuthError::invalid_grant("the user is not active"));
    }
    let grants = state
        .store
        .grants(&user.tenant_id, SubjectKind::User, &user.id)
        .await?;
    Ok(UserGrants { user, grants, keys })
}

async fn user_tokens(
    state: &AppState,
    client: &Client,
    user_id: &str,
    scope: &str,
    auth_time: i64,
    nonce: Option<String>,
    refresh: Option<String>,
) -> Result<Response, OAuthError> {
    let loaded = load_user(state, client, user_id).await?;
    Ok(sign_user_tokens(
        state, client, loaded, scope, auth_time, nonce, refresh,
    ))
}

/// The access token, the ID token (with the `openid` scope) and the response: no I/O, so it
/// cannot fail once a refresh token has been rotated.
fn sign_user_tokens(
    state: &AppState,
    client: &Client,
    loaded: UserGrants,
    scope: &str,
    auth_time: i64,
    nonce: Option<String>,
    refresh: Option<String>,
) -> Response {
    let UserGrants { user, grants, keys } = loaded;
    let subject = Subject {
        sub: &user.id,
        kind: SubjectKind::User,
        tid: &user.tenant_id,
        auth_time: Some(auth_time),
        act: None,
    };
    let (access_token, claims) = sign_access_token(
        state,
        &keys,
        client,
        subject,
        grants,
        scope,
        DEFAULT_AUDIENCE,
    );
    let id_token = scope.split(' ').any(|s| s == "openid").then(|| {
        let id = IdClaims {
            iss: claims.iss.clone(),
            sub: user.id.clone(),
            aud: client.id.clone(),
            exp: claims.exp,
            iat: claims.iat,
            auth_time,
            nonce,
            azp: client.id.clone(),
            tid: user.tenant_id.clone(),
            email: scope
                .split(' ')
                .any(|s| s == "email")
                .then(|| user.email.clone()),
        };
        keys.sign(ID_TOKEN_TYP, &id)
    });
    no_store(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: secs(state.tokens.access_token_ttl),
        scope: scope.to_string(),
        refresh_token: refresh,
        id_token,
        issued_token_type: None,
    })
}

async fn authorization_code(
    state: &AppState,
    client: &Client,
    form: &OAuthForm,
) -> Result<Response, OAuthError> {
    let code = form.require("code")?;
    let redirect_uri = form.require("redirect_uri")?;
    let verifier = form.require("code_verifier")?;
    if !valid_pkce_verifier(verifier) {
        return Err(OAuthError::invalid_request(
            "code_verifier must be 43-128 characters of [A-Za-z0-9-._~]",
        ));
    }
    let record = match state
        .store
        .redeem_code(&sha256_hex(code.as_bytes()), state.now())
        .await?
    {
        CodeRedemption::Redeemed(record) => *record,
        CodeRedemption::AlreadyUsed => {
            tracing::warn!(client_id = %client.id, "an authorization code was presented twice");
            return Err(OAuthError::invalid_grant(
                "the authorization code was already used",
            ));
        }
        CodeRedemption::Unknown => {
            return Err(OAuthError::invalid_grant(
                "the authorization code is invalid or expired",
            ));
        }
    };
    if record.client_id != client.id {
        return Err(OAuthError::invalid_grant(
            "the authorization code was issued to another client",
        ));
    }
    if record.redirect_uri != redirect_uri {
        return Err(OAuthError::invalid_grant(
            "redirect_uri does not match the authorization request",
        ));
    }
    if !pkce_s256_matches(verifier, &record.code_challenge) {
        return Err(OAuthError::invalid_grant(
            "code_verifier does not match the code_challenge",
        ));
    }
    let refresh = if client.grant_types.iter().any(|g| g == GRANT_REFRESH_TOKEN) {
        let (raw, token) =
            new_refresh_token(state, client, &record.user_id, &record.scope, None).await?;
        state.store.insert_refresh_token(&token).await?;
        Some(raw)
    } else {
        None
    };
    user_tokens(
        state,
        client,
        &record.user_id,
        &record.scope,
        record.auth_time,
        record.nonce,
        refresh,
    )
    .await
}

async fn refresh_token(
    state: &AppState,
    client: &Client,
    form: &OAuthForm,
) -> Result<Response, OAuthError> {
    let presented = form.require("refresh_token")?;
    let presented_hash = sha256_hex(presented.as_bytes());
    let now = state.now();
    // Check ownership before rotating, so another client cannot burn this family.
    let current = state.store.get_refresh_token(&presented_hash, now).await?;
    if let Some(current) = &current
        && current.client_id != client.id
    {
        return Err(OAuthError::invalid_grant(
            "the refresh token was issued to another client",
        ));
    }
    let scope_source = current
        .as_ref()
        .map(|c| c.scope.clone())
        .unwrap_or_default();
    let scope = match form.get("scope") {
        None => scope_source.clone(),
        Some(requested) => {
            let original: BTreeSet<&str> = scope_source.split(' ').collect();
            for s in requested.split(' ').filter(|s| !s.is_empty()) {
                if !original.contains(s) {
                    return Err(OAuthError::invalid_scope(format!(
                        "scope {s} was not granted originally"
                    )));
                }
            }
            requested.to_string()
        }
    };
    let user_id = current
        .as_ref()
        .map(|c| c.user_id.clone())
        .unwrap_or_default();
    // Everything the response needs is read before the rotation commits: once the presented
    // token is used, the client must get its successor. A read failing after the commit (the
    // database going away, a pool timeout) answered 5xx with the token already consumed, and the
    // client's retry with the only token it had was taken for reuse: the family was revoked.
    let loaded = match &current {
        Some(_) => Some(load_user(state, client, &user_id).await?),
        // Unknown, used, expired or revoked: the rotation below refuses it (and revokes the
        // family on reuse) without a response to build.
        None => None,
    };
    let (raw, next) = new_refresh_token(state, client, &user_id, &scope, None).await?;
    match state
        .store
        .rotate_refresh_token(&presented_hash, &next, now)
        .await?
    {
        RefreshRotation::Rotated(old) => {
            if old.client_id != client.id {
                return Err(OAuthError::invalid_grant(
                    "the refresh token was issued to another client",
                ));
            }
            match loaded.filter(|l| l.user.id == old.user_id) {
                Some(loaded) => Ok(sign_user_tokens(
                    state,
                    client,
                    loaded,
                    &scope,
                    old.created_at,
                    None,
                    Some(raw),
                )),
                // Not reached: a token that rotates was current when it was looked up.
                None => {
                    user_tokens(
                        state,
                        client,
                        &old.user_id,
                        &scope,
                        old.created_at,
                        None,
                        Some(raw),
                    )
                    .await
                }
            }
        }
        RefreshRotation::ReuseDetected => {
            tracing::warn!(client_id = %client.id, "a refresh token was reused; its whole family is revoked");
            Err(OAuthError::invalid_grant(
                "the refresh token was already used; its token family is now revoked",
            ))
        }
        RefreshRotation::Invalid => Err(OAuthError::invalid_grant(
            "the refresh token is invalid, expired or revoked",
        )),
    }
}

/// RFC 8693 token exchange: a confidential client trades a user's (or another service's)
/// access token for a narrower token naming itself as the actor (`act`), for delegation.
async fn token_exchange(
    state: &AppState,
    client: &Client,
    form: &OAuthForm,
) -> Result<Response, OAuthError> {
    if client.kind != ClientKind::Confidential {
        return Err(OAuthError::unauthorized_client(
            "token exchange needs a confidential client",
        ));
    }
    let subject_token = form.require("subject_token")?;
    let subject_type = form.require("subject_token_type")?;
    if subject_type != TOKEN_TYPE_ACCESS {
        return Err(OAuthError::invalid_request(format!(
            "subject_token_type must be {TOKEN_TYPE_ACCESS}"
        )));
    }
    if let Some(requested) = form.get("requested_token_type")
        && requested != TOKEN_TYPE_ACCESS
    {
        return Err(OAuthError::invalid_request(format!(
            "requested_token_type must be {TOKEN_TYPE_ACCESS}"
        )));
    }
    let keys = state.key_set().ok_or_else(OAuthError::unavailable)?;
    let subject = verify_access_token(&keys, subject_token, state.issuer(), state.now())
        .map_err(|e| OAuthError::invalid_grant(format!("subject_token: {e}")))?;
    if state.store.is_jti_revoked(&subject.jti).await? {
        return Err(OAuthError::invalid_grant(
            "subject_token: the token has been revoked",
        ));
    }
    if subject.tid != client.tenant_id {
        return Err(OAuthError::invalid_grant(
            "subject_token belongs to another tenant",
        ));
    }
    let original: BTreeSet<&str> = subject.scopes().collect();
    let scope = match form.get("scope") {
        None => subject.scope.clone(),
        Some(requested) => {
            for s in requested.split(' ').filter(|s| !s.is_empty()) {
                if !original.contains(s) {
                    return Err(OAuthError::invalid_scope(format!(
                        "scope {s} is not in the subject token"
                    )));
                }
            }
            requested.to_string()
        }
    };
    let audience = form.get("audience").unwrap_or(DEFAULT_AUDIENCE);
    let kind = if subject.sub == subject.client_id && subject.auth_time.is_none() {
        SubjectKind::Client
    } else {
        SubjectKind::User
    };
    let act = Actor {
        sub: client.id.clone(),
        act: subject.act.clone().map(Box::new),
    };
    let sub = Subject {
        sub: &subject.sub,
        kind,
        tid: &subject.tid,
        auth_time: subject.auth_time,
        act: Some(act),
    };
    let (access_token, _) = issue_access_token(state, client, sub, &scope, audience).await?;
    Ok(no_store(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: secs(state.tokens.access_token_ttl),
        scope,
        refresh_token: None,
        id_token: None,
        issued_token_type: Some(TOKEN_TYPE_ACCESS),
    }))
}

/// `POST /oauth2/introspect` (RFC 7662): confidential clients only; a token of another tenant
/// is reported inactive.
pub async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    let form = OAuthForm::parse(&headers, body)?;
    let (client_id, secret) = presented_client(&headers, &form)?;
    // An access token's signature is checked before the client, so that the client and the
    // token's revocation come from the store in one round trip: with SQLite each query is a
    // hand-over to its connection's thread and back, which was a third of an introspection's
    // CPU. Nothing about the token is answered before the client is authenticated.
    let keys = state.key_set();
    let now = state.now();
    let access = match (&keys, form.get("token")) {
        (Some(keys), Some(token)) => verify_access_token(keys, token, state.issuer(), now).ok(),
        _ => None,
    };
    let (client, revoked) = match &access {
        Some(claims) => {
            state
                .store
                .get_client_and_jti_revoked(&client_id, &claims.jti)
                .await?
        }
        None => (state.store.get_client(&client_id).await?, false),
    };
    let client = check_client(&state, client, secret)?;
    if client.kind != ClientKind::Confidential {
        return Err(OAuthError::unauthorized_client(
            "introspection needs a confidential client",
        ));
    }
    let token = form.require("token")?;
    if keys.is_none() {
        return Err(OAuthError::unavailable());
    }
    if let Some(claims) = access {
        if claims.tid != client.tenant_id || revoked {
            return Ok(no_store(json!({ "active": false })));
        }
        let mut body = serde_json::to_value(&claims).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut body {
            map.insert("active".into(), Value::Bool(true));
            map.insert("token_type".into(), Value::String("Bearer".into()));
        }
        return Ok(no_store(body));
    }
    if let Some(refresh) = state
        .store
        .get_refresh_token(&sha256_hex(token.as_bytes()), now)
        .await?
        && refresh.tenant_id == client.tenant_id
    {
        return Ok(no_store(json!({
            "active": true,
            "token_type": "refresh_token",
            "client_id": refresh.client_id,
            "sub": refresh.user_id,
            "scope": refresh.scope,
            "tid": refresh.tenant_id,
            "exp": refresh.expires_at,
            "iss": state.issuer(),
        })));
    }
    Ok(no_store(json!({ "active": false })))
}

/// `POST /oauth2/revoke` (RFC 7009): revokes a refresh token's family or an access token's
/// `jti`. Answers 200 for unknown tokens too, as the RFC asks.
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    let form = OAuthForm::parse(&headers, body)?;
    let client = authenticate_client(&state, &headers, &form).await?;
    let token = form.require("token")?;
    let hash = sha256_hex(token.as_bytes());
    let now = state.now();
    if let Some(refresh) = state.store.get_refresh_token(&hash, now).await? {
        if refresh.client_id == client.id {
            state.store.revoke_refresh_family(&hash).await?;
        }
    } else if let Some(keys) = state.key_set()
        && let Ok(claims) = verify_access_token(&keys, token, state.issuer(), now)
        && claims.client_id == client.id
    {
        state.store.revoke_jti(&claims.jti, claims.exp).await?;
    }
    Ok(no_store(json!({})))
}

/// Extracts and verifies a bearer access token (not revoked).
pub async fn bearer_claims(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<AccessClaims, BearerError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(BearerError::Missing)?;
    let text = value
        .to_str()
        .map_err(|_| BearerError::Invalid("malformed Authorization header".into()))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| {
            BearerError::Invalid("the Authorization header must use the Bearer scheme".into())
        })?
        .trim();
    let keys = state.key_set().ok_or(BearerError::Unavailable)?;
    let claims = verify_access_token(&keys, token, state.issuer(), state.now())
        .map_err(|e| BearerError::Invalid(e.to_string()))?;
    match state.store.is_jti_revoked(&claims.jti).await {
        Ok(false) => Ok(claims),
        Ok(true) => Err(BearerError::Invalid(TokenError::Revoked.to_string())),
        Err(err) => {
            tracing::error!(error = %err, "revocation check failed");
            Err(BearerError::Unavailable)
        }
    }
}

#[derive(Debug)]
pub enum BearerError {
    Missing,
    Invalid(String),
    Unavailable,
}

impl BearerError {
    pub fn problem(self) -> cloud_kit::Problem {
        match self {
            Self::Missing => cloud_kit::Problem::unauthorized("a bearer access token is required")
                .with_header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"cloud-identity-access\""),
                ),
            Self::Invalid(reason) => {
                cloud_kit::Problem::unauthorized(format!("invalid access token: {reason}"))
                    .with_header(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer error=\"invalid_token\""),
                    )
            }
            Self::Unavailable => cloud_kit::Problem::service_unavailable(
                "token verification is temporarily unavailable",
            ),
        }
    }
}

/// `GET /oauth2/userinfo` (OIDC Core 5.3): needs an access token with the `openid` scope.
pub async fn userinfo(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let claims = match bearer_claims(&state, &headers).await {
        Ok(claims) => claims,
        Err(err) => return err.problem().into_response(),
    };
    if !claims.scopes().any(|s| s == "openid") {
        return cloud_kit::Problem::forbidden("the access token lacks the openid scope")
            .with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"insufficient_scope\", scope=\"openid\""),
            )
            .into_response();
    }
    match state.store.get_user(&claims.tid, &claims.sub).await {
        Ok(Some(user)) => {
            let mut body = json!({ "sub": user.id, "tid": user.tenant_id });
            if claims.scopes().any(|s| s == "email")
                && let Value::Object(map) = &mut body
            {
                map.insert("email".into(), Value::String(user.email));
                map.insert("email_verified".into(), Value::Bool(false));
            }
            no_store(body)
        }
        Ok(None) => {
            cloud_kit::Problem::unauthorized("the token's subject is not a user").into_response()
        }
        Err(err @ StoreError::Unavailable(_)) => {
            tracing::warn!(error = %err, "userinfo: database unavailable");
            cloud_kit::Problem::service_unavailable("the user store is temporarily unavailable")
                .into_response()
        }
        Err(err) => {
            tracing::error!(error = %err, "userinfo lookup failed");
            cloud_kit::Problem::internal().into_response()
        }
    }
}

/// `GET /.well-known/openid-configuration`
pub async fn discovery(State(state): State<AppState>) -> Response {
    let iss = state.issuer();
    axum::Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/oauth2/authorize"),
        "token_endpoint": format!("{iss}/oauth2/token"),
        "userinfo_endpoint": format!("{iss}/oauth2/userinfo"),
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{iss}/oauth2/introspect"),
        "revocation_endpoint": format!("{iss}/oauth2/revoke"),
        "scopes_supported": ["openid", "email", "offline_access"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": crate::model::ALL_GRANTS,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [crate::keys::ALG],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "azp", "tid", "email", "email_verified"],
        "authorization_response_iss_parameter_supported": true,
    }))
    .into_response()
}

/// `GET /.well-known/jwks.json`: next, active and retiring keys.
pub async fn jwks(State(state): State<AppState>) -> Response {
    match state.key_set() {
        Some(keys) => {
            let mut response = axum::Json(keys.jwks.clone()).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            response
        }
        None => {
            cloud_kit::Problem::service_unavailable("signing keys are not loaded").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_a_503_to_retry_not_a_500() {
        for err in [sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed] {
            let store = StoreError::from(err);
            assert!(matches!(store, StoreError::Unavailable(_)), "{store:?}");
            let response = OAuthError::from(store).into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        }
        let other = StoreError::from(sqlx::Error::RowNotFound);
        assert!(matches!(other, StoreError::Database(_)), "{other:?}");
        assert_eq!(
            OAuthError::from(other).into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
