//! What the services' OpenAPI documents share, so that both describe it the same way.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

/// Adds the `bearer` security scheme: an access token (a JWT) issued by cloud-identity-access,
/// which both services accept. Operations name it with `security(("bearer" = []))`.
pub fn add_bearer_jwt_scheme(openapi: &mut utoipa::openapi::OpenApi) {
    if let Some(components) = openapi.components.as_mut() {
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
