//! The OpenAPI 3.1 document, generated from the code with utoipa and committed as
//! `openapi/cloud-identity-access.yaml` (a test fails when the two drift).

use cloud_kit::openapi::BearerJwt;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::admin;
use crate::model::{
    AuditEvent, Client, ClientKind, Role, RoleAssignment, SubjectKind, Tenant, User, UserStatus,
};

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "cloud-identity-access", description = "Multi-tenant OAuth 2.1 / OpenID Connect provider: admin API and OAuth endpoints.", license(name = "Apache-2.0", identifier = "Apache-2.0"), contact(name = "cloud-platform maintainers", url = "https://github.com/cloud-platform/cloud-platform")),
    servers((url = "http://127.0.0.1:8081", description = "cloudctl up")),
    paths(
        admin::create_tenant, admin::list_tenants, admin::get_tenant,
        admin::create_user, admin::list_users, admin::get_user, admin::update_user, admin::delete_user,
        admin::create_role, admin::list_roles, admin::get_role, admin::delete_role,
        admin::create_client, admin::list_clients, admin::get_client, admin::delete_client,
        admin::create_assignment, admin::list_assignments, admin::delete_assignment,
        admin::query_audit,
        docs::discovery, docs::jwks, docs::authorize, docs::token, docs::introspect, docs::revoke, docs::userinfo,
    ),
    components(schemas(Tenant, User, UserStatus, Role, RoleAssignment, SubjectKind, Client, ClientKind, AuditEvent,
        admin::CreateTenant, admin::CreateUser, admin::UpdateUser, admin::CreateRole, admin::CreateClient, admin::CreatedClient, admin::CreateAssignment,
        docs::TokenRequest, docs::TokenResponse, docs::OAuthErrorBody, docs::IntrospectRequest, docs::RevokeRequest)),
    modifiers(&BearerJwt, &ClientBasicAuth),
    tags((name = "admin", description = "Tenants, users, roles, clients, role assignments and the audit trail"), (name = "oauth", description = "OAuth 2.1 and OpenID Connect endpoints")),
)]
pub struct ApiDoc;

/// The `client` security scheme: HTTP Basic with a confidential client's id and secret, as the
/// token, introspection and revocation endpoints take it.
struct ClientBasicAuth;

impl Modify for ClientBasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "client",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
            );
        }
    }
}

/// The document as YAML, as committed.
pub fn yaml() -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    Ok(ApiDoc::openapi().to_yaml()?)
}

/// Documentation-only descriptions of the form-encoded OAuth endpoints (the handlers parse the
/// body by hand to reject repeated parameters, so utoipa cannot read their signatures).
#[allow(dead_code)]
pub mod docs {
    use serde::Serialize;
    use utoipa::ToSchema;

    /// `application/x-www-form-urlencoded` token request; which fields apply depends on `grant_type`.
    #[derive(Debug, Serialize, ToSchema)]
    pub struct TokenRequest {
        /// `authorization_code`, `client_credentials`, `refresh_token` or `urn:ietf:params:oauth:grant-type:token-exchange`.
        pub grant_type: String,
        pub client_id: Option<String>,
        pub client_secret: Option<String>,
        pub scope: Option<String>,
        pub code: Option<String>,
        pub redirect_uri: Option<String>,
        pub code_verifier: Option<String>,
        pub refresh_token: Option<String>,
        pub subject_token: Option<String>,
        pub subject_token_type: Option<String>,
        pub audience: Option<String>,
    }

    #[derive(Debug, Serialize, ToSchema)]
    pub struct TokenResponse {
        pub access_token: String,
        pub token_type: String,
        pub expires_in: i64,
        pub scope: String,
        pub refresh_token: Option<String>,
        pub id_token: Option<String>,
        pub issued_token_type: Option<String>,
    }

    /// RFC 6749 section 5.2 error body.
    #[derive(Debug, Serialize, ToSchema)]
    pub struct OAuthErrorBody {
        pub error: String,
        pub error_description: String,
    }

    #[derive(Debug, Serialize, ToSchema)]
    pub struct IntrospectRequest {
        pub token: String,
        pub token_type_hint: Option<String>,
    }

    #[derive(Debug, Serialize, ToSchema)]
    pub struct RevokeRequest {
        pub token: String,
        pub token_type_hint: Option<String>,
    }

    /// OpenID Connect discovery document.
    ///
    /// OpenID Connect Discovery 1.0 metadata: the issuer, every endpoint URL, and the supported grants, scopes, PKCE method (`S256`) and signing algorithm (`EdDSA`).
    #[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "oauth", responses((status = 200, description = "Discovery document", content_type = "application/json")))]
    pub fn discovery() {}

    /// JSON Web Key Set: next, active and retiring keys.
    ///
    /// Publishes the `next` key before it signs and the `retiring` key until its tokens expire, so a verifier with a cached key set never meets an unknown `kid`.
    #[utoipa::path(get, path = "/.well-known/jwks.json", tag = "oauth", responses((status = 200, description = "JWK set", content_type = "application/json")))]
    pub fn jwks() {}

    /// Authorization endpoint (code flow, PKCE S256 only): shows the hosted login page.
    ///
    /// Server-rendered HTML without JavaScript; the form posts back here with a CSRF token and, on success, redirects (303) to the exact registered `redirect_uri` with `code`, `state` and `iss`. `nonce` is required with the `openid` scope.
    #[utoipa::path(get, path = "/oauth2/authorize", tag = "oauth",
        params(("response_type" = String, Query), ("client_id" = String, Query), ("redirect_uri" = String, Query), ("scope" = Option<String>, Query),
            ("state" = Option<String>, Query), ("nonce" = Option<String>, Query), ("code_challenge" = String, Query), ("code_challenge_method" = String, Query)),
        responses((status = 200, description = "Login page", content_type = "text/html"), (status = 302, description = "Error redirect to the client"),
            (status = 400, description = "Unknown client or redirect_uri", content_type = "text/html")))]
    pub fn authorize() {}

    /// Token endpoint.
    ///
    /// Grants `authorization_code` (with the PKCE `code_verifier`), `client_credentials`, `refresh_token` (rotated; a reused token revokes its family) and RFC 8693 token exchange. Access tokens are RFC 9068 JWTs; the `openid` scope adds an ID token.
    #[utoipa::path(post, path = "/oauth2/token", tag = "oauth", request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
        security((), ("client" = [])),
        responses((status = 200, body = TokenResponse), (status = 400, body = OAuthErrorBody), (status = 401, body = OAuthErrorBody), (status = 415, body = OAuthErrorBody)))]
    pub fn token() {}

    /// Token introspection (RFC 7662), for confidential clients of the token's tenant.
    ///
    /// Answers `{"active": false}` for an expired, revoked, foreign-tenant or unknown token, and the token's claims otherwise.
    #[utoipa::path(post, path = "/oauth2/introspect", tag = "oauth", request_body(content = IntrospectRequest, content_type = "application/x-www-form-urlencoded"),
        security(("client" = [])),
        responses((status = 200, description = "Introspection response", content_type = "application/json"), (status = 400, body = OAuthErrorBody), (status = 401, body = OAuthErrorBody), (status = 415, body = OAuthErrorBody)))]
    pub fn introspect() {}

    /// Token revocation (RFC 7009).
    ///
    /// A refresh token revokes its whole family; an access token is revoked by its `jti`. Unknown tokens also answer 200, as the RFC requires.
    #[utoipa::path(post, path = "/oauth2/revoke", tag = "oauth", request_body(content = RevokeRequest, content_type = "application/x-www-form-urlencoded"),
        security((), ("client" = [])),
        responses((status = 200, description = "Revoked (or unknown)"), (status = 400, body = OAuthErrorBody), (status = 401, body = OAuthErrorBody), (status = 415, body = OAuthErrorBody)))]
    pub fn revoke() {}

    /// OpenID Connect userinfo.
    ///
    /// Claims about the user of a bearer access token that carries the `openid` scope (`sub`, plus `email` with the `email` scope).
    #[utoipa::path(get, path = "/oauth2/userinfo", tag = "oauth", security(("bearer" = [])),
        responses((status = 200, description = "Claims about the user", content_type = "application/json"), (status = 401), (status = 403)))]
    pub fn userinfo() {}
}
