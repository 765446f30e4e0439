//! The admin API under `/v1/`: tenants, users, roles, clients, role assignments and the audit
//! trail. Bearer access tokens carry permissions: `platform:admin` (only from the platform
//! tenant) acts across tenants, `tenant:admin` only inside the token's own tenant (`tid`).

// `Problem` (cloud-kit's RFC 9457 error) is returned as the response itself; boxing it buys nothing.
#![allow(clippy::result_large_err)]

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use cloud_kit::Problem;
use cloud_kit::extract::{Json, Path, Query};
use cloud_kit::trace_context::RequestId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::crypto::random_token;
use crate::model::{
    ALL_GRANTS, Actor, AuditEvent, Client, ClientKind, GRANT_AUTHORIZATION_CODE,
    GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE, Role, RoleAssignment, SubjectKind, Tenant,
    User, UserStatus,
};
use crate::oauth::bearer_claims;
use crate::state::AppState;
use crate::store::{AuditQuery, StoreError};
use crate::tokens::AccessClaims;

pub const PLATFORM_TENANT: &str = "platform";
pub const PLATFORM_ADMIN: &str = "platform:admin";
pub const TENANT_ADMIN: &str = "tenant:admin";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route("/v1/tenants/{tenant_id}", get(get_tenant))
        .route(
            "/v1/tenants/{tenant_id}/users",
            get(list_users).post(create_user),
        )
        .route(
            "/v1/tenants/{tenant_id}/users/{user_id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route(
            "/v1/tenants/{tenant_id}/roles",
            get(list_roles).post(create_role),
        )
        .route(
            "/v1/tenants/{tenant_id}/roles/{role_id}",
            get(get_role).delete(delete_role),
        )
        .route(
            "/v1/tenants/{tenant_id}/clients",
            get(list_clients).post(create_client),
        )
        .route(
            "/v1/tenants/{tenant_id}/clients/{client_id}",
            get(get_client).delete(delete_client),
        )
        .route(
            "/v1/tenants/{tenant_id}/role-assignments",
            get(list_assignments).post(create_assignment),
        )
        .route(
            "/v1/tenants/{tenant_id}/role-assignments/{role_id}/{subject_kind}/{subject_id}",
            delete(delete_assignment),
        )
        .route("/v1/audit", get(query_audit))
}

/// The authenticated caller of an admin endpoint.
#[derive(Debug)]
pub struct Caller {
    claims: AccessClaims,
    platform: bool,
}

impl Caller {
    /// Who makes a change, in the request `request_id` (recorded in its audit event).
    fn actor(&self, request_id: Option<&RequestId>) -> Actor {
        let actor = if self.claims.sub == self.claims.client_id && self.claims.auth_time.is_none() {
            Actor::client(&self.claims.client_id)
        } else {
            Actor {
                id: format!(
                    "user:{} via client:{}",
                    self.claims.sub, self.claims.client_id
                ),
                request_id: None,
            }
        };
        actor.in_request(request_id.map(RequestId::as_str))
    }

    /// Whether the caller may act inside `tenant_id`.
    fn check_tenant(&self, tenant_id: &str) -> Result<(), Problem> {
        if self.platform || self.claims.tid == tenant_id {
            Ok(())
        } else {
            Err(Problem::forbidden("your token is scoped to another tenant"))
        }
    }

    fn require_platform(&self) -> Result<(), Problem> {
        if self.platform {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "this needs the {PLATFORM_ADMIN} permission"
            )))
        }
    }
}

async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, Problem> {
    let claims = bearer_claims(state, headers)
        .await
        .map_err(crate::oauth::BearerError::problem)?;
    let platform = claims.has_permission(PLATFORM_ADMIN) && claims.tid == PLATFORM_TENANT;
    if !platform && !claims.has_permission(TENANT_ADMIN) {
        return Err(Problem::forbidden(format!(
            "this needs the {TENANT_ADMIN} or {PLATFORM_ADMIN} permission"
        )));
    }
    Ok(Caller { claims, platform })
}

fn store_problem(err: StoreError) -> Problem {
    match err {
        StoreError::Conflict(what) => {
            Problem::conflict(format!("a conflicting {what} record already exists"))
        }
        StoreError::NotFound(what) => Problem::not_found(format!("{what} not found")),
        err @ StoreError::Unavailable(_) => {
            tracing::warn!(error = %err, "admin API: database unavailable");
            Problem::service_unavailable("the database is temporarily unavailable; retry shortly")
        }
        other => {
            tracing::error!(error = %other, "admin store operation failed");
            Problem::internal()
        }
    }
}

type ApiResult<T> = Result<T, Problem>;

async fn existing_tenant(state: &AppState, caller: &Caller, tenant_id: &str) -> ApiResult<Tenant> {
    caller.check_tenant(tenant_id)?;
    state
        .store
        .get_tenant(tenant_id)
        .await
        .map_err(store_problem)?
        .ok_or_else(|| Problem::not_found(format!("tenant {tenant_id} not found")))
}

fn created<T: Serialize>(body: T) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1-64 characters of `[a-z0-9-]`.
    pub name: String,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Create a tenant.
///
/// Platform admins only (`platform:admin` in a token of the `platform` tenant). The name is 1-64 characters of a-z, 0-9 and `-`, unique across the platform. Audited as `tenant.create`.
#[utoipa::path(post, path = "/v1/tenants", tag = "admin", request_body = CreateTenant, security(("bearer" = [])),
    responses((status = 201, body = Tenant), (status = 400), (status = 401), (status = 403), (status = 409), (status = 415), (status = 422)))]
pub async fn create_tenant(
    State(state): State<AppState>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    Json(body): Json<CreateTenant>,
) -> ApiResult<Response> {
    let caller = caller(&state, &headers).await?;
    caller.require_platform()?;
    if !valid_name(&body.name) {
        return Err(Problem::unprocessable(
            "name must be 1-64 characters of a-z, 0-9 and -",
        ));
    }
    let tenant = Tenant {
        id: uuid::Uuid::now_v7().to_string(),
        name: body.name,
        created_at: state.now(),
    };
    state
        .store
        .create_tenant(&caller.actor(request_id.as_deref()), &tenant, state.now())
        .await
        .map_err(store_problem)?;
    Ok(created(tenant))
}

/// List tenants.
///
/// Platform admins see every tenant; a tenant admin sees only the tenant of its own token (`tid`).
#[utoipa::path(get, path = "/v1/tenants", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = [Tenant]), (status = 401), (status = 403)))]
pub async fn list_tenants(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<Tenant>>> {
    let caller = caller(&state, &headers).await?;
    let tenants = state.store.list_tenants().await.map_err(store_problem)?;
    Ok(Json(
        tenants
            .into_iter()
            .filter(|t| caller.check_tenant(&t.id).is_ok())
            .collect(),
    ))
}

/// Get a tenant.
///
/// A tenant admin may read only its own tenant; any other tenant answers 403.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}", tag = "admin", security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = Tenant), (status = 401), (status = 403), (status = 404)))]
pub async fn get_tenant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<Tenant>> {
    let caller = caller(&state, &headers).await?;
    Ok(Json(existing_tenant(&state, &caller, &tenant_id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    /// 12-1024 characters.
    pub password: String,
}

/// Create a user.
///
/// The email is unique within the tenant and stored lower-cased; the password is hashed with Argon2id and never returned. Audited as `user.create`.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/users", tag = "admin", request_body = CreateUser, security(("bearer" = [])),
    params(("tenant_id" = String, Path)), responses((status = 201, body = User), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409), (status = 415), (status = 422)))]
pub async fn create_user(
    State(state): State<AppState>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
    Json(body): Json<CreateUser>,
) -> ApiResult<Response> {
    let caller = caller(&state, &headers).await?;
    existing_tenant(&state, &caller, &tenant_id).await?;
    let email = body.email.trim().to_ascii_lowercase();
    if email.len() > 254
        || !email.contains('@')
        || email.starts_with('@')
        || email.ends_with('@')
        || email.contains(char::is_whitespace)
    {
        return Err(Problem::unprocessable("email is not a valid email address"));
    }
    if !(12..=1024).contains(&body.password.chars().count()) {
        return Err(Problem::unprocessable(
            "password must be 12 to 1024 characters",
        ));
    }
    let password_hash = state.passwords.hash(body.password).await.map_err(|e| {
        tracing::error!(error = %e, "password hashing failed");
        Problem::internal()
    })?;
    let user = User {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id,
        email,
        password_hash,
        status: UserStatus::Active,
        created_at: state.now(),
    };
    state
        .store
        .create_user(&caller.actor(request_id.as_deref()), &user, state.now())
        .await
        .map_err(store_problem)?;
    Ok(created(user))
}

/// List a tenant's users.
///
/// Password hashes are never part of the response.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/users", tag = "admin", security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = [User]), (status = 401), (status = 403), (status = 404)))]
pub async fn list_users(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<Vec<User>>> {
    let caller = caller(&state, &headers).await?;
    existing_tenant(&state, &caller, &tenant_id).await?;
    Ok(Json(
        state
            .store
            .list_users(&tenant_id)
            .await
            .map_err(store_problem)?,
    ))
}

/// Get a user.
///
/// 404 when the user does not exist in this tenant, even if the id exists in another one.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/users/{user_id}", tag = "admin", security(("bearer" = [])),
    params(("tenant_id" = String, Path), ("user_id" = String, Path)), responses((status = 200, body = User), (status = 401), (status = 403), (status = 404)))]
pub async fn get_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant_id, user_id)): Path<(String, String)>,
) -> ApiResult<Json<User>> {
    let caller = caller(&state, &headers).await?;
    caller.check_tenant(&tenant_id)?;
    state
        .store
        .get_user(&tenant_id, &user_id)
        .await
        .map_err(store_problem)?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("user {user_id} not found")))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub status: UserStatus,
}

/// Change a user's status.
///
/// `active`, `disabled` or `locked`; a user that is not active cannot log in or refresh tokens. Audited as `user.update`.
#[utoipa::path(patch, path = "/v1/tenants/{tenant_id}/users/{user_id}", tag = "admin", request_body = UpdateUser, security(("bearer" = [])),
    params(("tenant_id" = String, Path), ("user_id" = String, Path)), responses((status = 200, body = User), (status = 400), (status = 401), (status = 403), (status = 404), (status = 415), (status = 422)))]
pub async fn update_user(
    State(state): State<AppState>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    Path((tenant_id, user_id)): Path<(String, String)>,
    Json(body): Json<UpdateUser>,
) -> ApiResult<Json<User>> {
    let caller = caller(&state, &headers).await?;
    caller.check_tenant(&tenant_id)?;
    Ok(Json(
        state
            .store
            .set_user_status(
                &caller.actor(request_id.as_deref()),
                &tenant_id,
                &user_id,
                body.status,
                state.now(),
            )
            .await
            .map_err(store_problem)?,
    ))
}

/// Delete a user.
///
/// Also removes the user's role assignments. Audited as `user.delete`.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/users/{user_id}", tag = "admin", security(("bearer" = [])),
    params(("tenant_id" = String, Path), ("user_id" = String, Path)), responses((status = 204), (status = 401), (status = 403), (status = 404)))]
pub async fn delete_user(
    State(state): State<AppState>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    Path((tenant_id, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let caller = caller(&state, &headers).await?;
    caller.check_tenant(&tenant_id)?;
    state
        .store
        .delete_user(
            &caller.actor(request_id.as_deref()),
            &tenant_id,
            &user_id,
            state.now(),
        )
        .await
        .map_err(store_problem)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRole {
    pub name: String,
    /// Permission strings such as `orders:read`; `platform:*` only by platform admins.
    pub permissions: Vec<String>,
}

/// Create a role.
///
/// A named set of permission strings such as `orders:read`. A tenant admin cannot grant `platform:*` permissions. Audited as `role.create`.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/roles", tag = "admin", request_body = CreateRole, security(("bearer" = [])),
    params(("tenant_id" = String, Path)), responses((status = 201, body = Role), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409), (status = 415), (status = 422)))]
pub async fn create_role(
    State(state): State<AppState>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
    Json(body): Json<CreateRole>,
) -> ApiResult<Response> {
    let caller = caller(&state, &headers).await?;
    existing_tenant(&state, &caller, &tenant_id).await?;
    if !valid_name(&body.name) {
        return Err(Problem::unprocessable(
            "name must be 1-64 characters of a-z, 0-9 and -",
        ));
    }
    for p in &body.permissions {
        if p.is_empty() || p.len() > 128 || !p.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Problem::unprocessable(format!(
                "permission {p:?} must be 1-128 printable characters without spaces"
            )));
        }
        if p.starts_with("platform:") && !caller.platform {
            return Err(Problem::forbidden(format!(
                "only platform admins may grant {p}"
            )));
        }
    }
    let role = Role {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id,
        name: body.name,
        permissions: body.permissions,
        created_at: state.now(),
    };
    state
        .store
        .create_role(&caller.actor(request_id.as_deref()), &role, state.now())
        .await
        .map_err(store_problem)?;
    Ok(created(role))
}

/// List a tenant's roles.
///
/// Each role with its permissions.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/roles", tag = "admin", security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = [Role]), (status = 401), (status = 403), (status = 404)))]
pub async fn list_roles(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<Vec<Role>>> {
    let caller = caller(&state, &headers).await?;
    existing_tenant(&state, &caller, &tenant_id).await?;
    Ok(Json(
        state
            .store
            .list_roles(&tenant_id)
            .await
            .map_err(store_problem)?,
    ))
}

/// Get a role.
///
/// 404 when the role does not exist in this tenant.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/roles/{role_id}", tag = "admin", security(("bearer" = [])),
    params(("tenant_id" = String, Path), ("role_id" = String, Path)), responses((status = 200, body = Role), (status = 401), (status = 403), (status = 404)))]
pub async fn get_role(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant_id, role_id)): Path<(String, String)>,
) -> ApiResult<Json<Role>> {
    let caller = caller(&state, &headers).await?;
    caller.check_tenant(&tenant_id)?;
    state
        .store
        .get_role(&tenant_id, &role_id)
        .await
        .map_err(store_problem)?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("role {role_id} not found")))
}

/// Delete a role.
///
/// Also removes its assignments. Audited as `role.delete`.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/roles/{role_id}", tag = "admin", security(("bearer" = [])),
    params(("tenant_id" = String, Path), ("role_id" = String, Path)), responses((status = 204), (status = 401), (status = 403), (status = 404)))]
pub async fn delete_role(
    State(state): State<AppState>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    Path((tenant_id, role_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let caller = caller(&state, &headers).await?;
    caller.check_tenant(&tenant_id)?;
    state
        .store
        .delete_role(
            &caller.actor(request_id.as_deref()),
            &tenant_id,
            &role_id,
            state.now(),
        )
        .await
        .map_err(store_problem)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClient {
    pub name: String,
    pub kind: ClientKind,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A new client; `client_secret` is shown here once and never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedClient {
    pub client: Client,
    pub client_secret: Option<String>,
}

fn valid_redirect_uri(uri: &str) -> bool {
    let Ok(url) = url::Url::parse(uri) else {
        return false;
    };
    if url.fragment().is_some() {
        return false;
    }
    match url.scheme() {
        "https" => true,
        "http" => matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")),
        // Private-use schemes of native apps (RFC 8252), e.g. com.example.app:/callback.
        other => other.contains('.'),
    }
}

/// Checks a client definition; returns a message naming what is wrong.
pub fn validate_client(body: &CreateClient) -> Result<(), String> {
    if body.name.trim().is_empty() || body.name.len() > 128 {
        return Err("name must be 1-128 characters".into());
    }
    if body.grant_types.is_empty() {
        return Err("grant_types must not be empty".into());
    }
    for g in &body.grant_types {
        if !ALL_GRANTS.contains(&g.as_str()) {
            return Err(format!("grant type {g:?} is not supported"));
        }
        if body.kind == ClientKind::Public
            && (g == GRANT_CLIENT_CREDENTIALS || g == GRANT_TOKEN_EXCHANGE)
        {
            return Err(format!("a public client cannot use {g}"));
        }
    }
    if body
        .grant_types
        .iter()
        .any(|g| g == GRANT_AUTHORIZATION_CODE)
        && body.redirect_uris.is_empty()
    {
        return Err("authorization_code needs at least one redirect_uri".into());
    }
    for uri in &body.redirect_uris {
        if !valid_redirect_uri(uri) {
            return Err(format!(
                "redirect_uri {uri:?} must be an absolute https URL (http only for localhost) without a fragment"
            ));
        }
    }
    for s in &body.scopes {
        if s.is_empty()
            || s.len() > 128
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(format!("scope {s:?} is not a valid scope token"));
        }
    }
    Ok(())
}

/// Register an OAuth client.
///
/// Confidential clients get a service-generated secret (256 bits), returned once in this response and stored only as a keyed hash; public clients have none. Redirect URIs are matched exactly. Audited as `client.create`.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/clients", tag = "admin", request_body = CreateClient, security(("bearer" = [])),
    params(("tenant_id" = String, Path)), responses((status = 201, body = CreatedClient), (status = 400), (status = 401), (status = 403), (status = 404), (status = 415), (status = 422)))]
pub async fn create_client(
    State(state): State<AppState>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
    Json(body): Json<CreateClient>,
) -> ApiResult<Response> {
    let caller = caller(&state, &headers).await?;
    existing_tenant(&state, &caller, &tenant_id).await?;
    validate_client(&body).map_err(Problem::unprocessable)?;
    let (client, secret) = new_client(&state, &tenant_id, body);
    state
        .store
        .create_client(&caller.actor(request_id.as_deref()), &client, state.now())
        .await
        .map_err(store_problem)?;
    Ok(created(CreatedClient {
        client,
        client_secret: secret,
    }))
}

/// Builds a client; confidential clients get a fresh 256-bit secret, returned once.
pub fn new_client(
    state: &AppState,
    tenant_id: &str,
    body: CreateClient,
) -> (Client, Option<String>) {
    let secret = (body.kind == ClientKind::Confidential).then(|| random_token(32));
    let client = Client {
        id: format!("c-{}", uuid::Uuid::now_v7().simple()),
        tenant_id: tenant_id.to_string(),
        name: body.name,
        kind: body.kind,
        secret_hash: secret.as_deref().map(|s| state.secrets.hash(s)),
        redirect_uris: body.redirect_uris,
        grant_types: body.grant_types,
        scopes: body.scopes,
        created_at: state.now(),
    };
    (client, secret)
}

/// List a tenant's OAuth clients.
///
/// Secrets are never returned after creation.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/clients", tag = "admin", security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = [Client]), (status = 401), (status = 403), (status = 404)))]
pub async fn list_clients(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<Vec<Client>>> {
    let caller = caller(&state, &headers).await?;
    existing_tenant(&state, &caller, &tenant_id).await?;
    Ok(Json(
        state
            .store
            .list_clients(&tenant_id)
            .await
            .map_err(store_problem)?,
    ))
}

/// Get an OAuth client.
///
/// 404 when the client does not exist in this tenant.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/clients/{client_id}", tag = "admin", security(("bearer" = [])),
    params(("tenant_id" = String, Path), ("client_id" = String, Path)), responses((status = 200, body = Client), (status = 401), (status = 403), (status = 404)))]
pub async fn get_client(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant_id, client_id)): Path<(String, String)>,
) -> ApiResult<Json<Client>> {
    let caller = caller(&state, &headers).await?;
    caller.check_tenant(&tenant_id)?;
    match state
        .store
        .get_client(&client_id)
        .await
        .map_err(store_problem)?
    {
        Some(client) if client.tenant_id == tenant_id => Ok(Json(client)),
        _ => Err(Problem::not_found(format!("client {client_id} not found"))),
    }
}

/// Delete an OAuth client.
///
/// Also removes its role assignments; the client can no longer authenticate (so no new or refreshed tokens), while access tokens it already holds stay valid until they expire. Audited as `client.delete`.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/clients/{client_id}", tag = "admin", security(("bearer" = [])),
    params(("tenant_id" = String, Path), ("client_id" = String, Path)), responses((status = 204), (status = 401), (status = 403), (status = 404)))]
pub async fn delete_client(
    State(state): State<AppState>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    Path((tenant_id, client_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let caller = caller(&state, &headers).await?;
    caller.check_tenant(&tenant_id)?;
    state
        .store
        .delete_client(
            &caller.actor(request_id.as_deref()),
            &tenant_id,
            &client_id,
            state.now(),
        )
        .await
        .map_err(store_problem)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAssignment {
    pub role_id: String,
    pub subject_kind: SubjectKind,
    pub subject_id: String,
}

/// Assign a role.
///
/// Gives a user or a client of the same tenant a role; its permissions appear in tokens issued afterwards. Audited as `role_assignment.create`.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/role-assignments", tag = "admin", request_body = CreateAssignment, security(("bearer" = [])),
    params(("tenant_id" = String, Path)), responses((status = 201, body = RoleAssignment), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409), (status = 415), (status = 422)))]
pub async fn create_assignment(
    State(state): State<AppState>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
    Json(body): Json<CreateAssignment>,
) -> ApiResult<Response> {
    let caller = caller(&state, &headers).await?;
    existing_tenant(&state, &caller, &tenant_id).await?;
    // Role and subject must both live in this tenant.
    if state
        .store
        .get_role(&tenant_id, &body.role_id)
        .await
        .map_err(store_problem)?
        .is_none()
    {
        return Err(Problem::unprocessable(format!(
            "role {} does not exist in this tenant",
            body.role_id
        )));
    }
    let subject_exists = match body.subject_kind {
        SubjectKind::User => state
            .store
            .get_user(&tenant_id, &body.subject_id)
            .await
            .map_err(store_problem)?
            .is_some(),
        SubjectKind::Client => state
            .store
            .get_client(&body.subject_id)
            .await
            .map_err(store_problem)?
            .is_some_and(|c| c.tenant_id == tenant_id),
    };
    if !subject_exists {
        return Err(Problem::unprocessable(format!(
            "{} {} does not exist in this tenant",
            body.subject_kind.as_str(),
            body.subject_id
        )));
    }
    let assignment = RoleAssignment {
        tenant_id,
        role_id: body.role_id,
        subject_kind: body.subject_kind,
        subject_id: body.subject_id,
        created_at: state.now(),
    };
    state
        .store
        .assign_role(
            &caller.actor(request_id.as_deref()),
            &assignment,
            state.now(),
        )
        .await
        .map_err(store_problem)?;
    Ok(created(assignment))
}

/// List a tenant's role assignments.
///
/// Every (role, subject kind, subject id) of the tenant.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/role-assignments", tag = "admin", security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = [RoleAssignment]), (status = 401), (status = 403), (status = 404)))]
pub async fn list_assignments(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<Vec<RoleAssignment>>> {
    let caller = caller(&state, &headers).await?;
    existing_tenant(&state, &caller, &tenant_id).await?;
    Ok(Json(
        state
            .store
            .list_assignments(&tenant_id)
            .await
            .map_err(store_problem)?,
    ))
}

/// Remove a role assignment.
///
/// Tokens issued afterwards no longer carry the role's permissions. Audited as `role_assignment.delete`.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/role-assignments/{role_id}/{subject_kind}/{subject_id}", tag = "admin", security(("bearer" = [])),
    params(("tenant_id" = String, Path), ("role_id" = String, Path), ("subject_kind" = SubjectKind, Path), ("subject_id" = String, Path)),
    responses((status = 204), (status = 401), (status = 403), (status = 404)))]
pub async fn delete_assignment(
    State(state): State<AppState>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    Path((tenant_id, role_id, subject_kind, subject_id)): Path<(
        String,
        String,
        SubjectKind,
        String,
    )>,
) -> ApiResult<StatusCode> {
    let caller = caller(&state, &headers).await?;
    caller.check_tenant(&tenant_id)?;
    let assignment = RoleAssignment {
        tenant_id,
        role_id,
        subject_kind,
        subject_id,
        created_at: 0,
    };
    state
        .store
        .unassign_role(
            &caller.actor(request_id.as_deref()),
            &assignment,
            state.now(),
        )
        .await
        .map_err(store_problem)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only this tenant's events; tenant admins always get only their own tenant.
    pub tenant_id: Option<String>,
    /// Events with a sequence number greater than this (paging).
    pub after: Option<i64>,
    /// 1-1000, default 100.
    pub limit: Option<i64>,
}

/// Query the audit trail.
///
/// Hash-chained events in sequence order, paged with `after` and `limit`. Platform admins may filter by `tenant_id`; tenant admins always get only their own tenant's events.
#[utoipa::path(get, path = "/v1/audit", tag = "admin", security(("bearer" = [])), params(AuditParams),
    responses((status = 200, body = [AuditEvent]), (status = 400), (status = 401), (status = 403)))]
pub async fn query_audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<AuditParams>,
) -> ApiResult<Json<Vec<AuditEvent>>> {
    let caller = caller(&state, &headers).await?;
    let tenant_id = match (&params.tenant_id, caller.platform) {
        (Some(t), _) => {
            caller.check_tenant(t)?;
            Some(t.clone())
        }
        (None, true) => None,
        (None, false) => Some(caller.claims.tid.clone()),
    };
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::bad_request("limit must be between 1 and 1000"));
    }
    let query = AuditQuery {
        tenant_id,
        after_seq: params.after,
        limit,
    };
    Ok(Json(
        state
            .store
            .query_audit(&query)
            .await
            .map_err(store_problem)?,
    ))
}
