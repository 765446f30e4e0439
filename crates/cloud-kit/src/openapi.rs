//! What the services' OpenAPI documents share, so that both describe it the same way.

use utoipa::Modify;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

/// The `bearer` security scheme: an access token (a JWT) issued by cloud-identity-access, which
/// both services accept. Add it with `#[openapi(modifiers(&BearerJwt))]`; operations name it
/// with `security(("bearer" = []))`.
#[derive(Debug)]
pub struct BearerJwt;

impl Modify for BearerJwt {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
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
}
