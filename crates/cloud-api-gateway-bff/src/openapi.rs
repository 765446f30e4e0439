//! The OpenAPI 3.1 document of the gateway's own API, generated from the code with utoipa and
//! committed as `openapi/cloud-api-gateway-bff.yaml` (a test fails when the two drift).
//!
//! Only what the gateway itself answers is in it: `GET /bff/v1/session` and `GET /version`.
//! Proxied routes and the aggregations are declared in the route config and described by the
//! upstreams' own documents.

use cloud_kit::openapi::BearerJwt;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::bff::{self, Session, SessionUser};

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "cloud-api-gateway-bff", description = "The gateway's own API: the backend-for-frontend session (`GET /bff/v1/session`) and its build (`GET /version`). Every other path is either a proxied route or a backend-for-frontend aggregation (`bff.aggregations`); both come from the gateway's route config, not from this document, and are described by the upstreams that serve them. Errors are RFC 9457 problem details (`application/problem+json`).", license(name = "Apache-2.0", identifier = "Apache-2.0"), contact(name = "cloud-platform maintainers", url = "https://github.com/cloud-platform/cloud-platform")),
    servers((url = "http://127.0.0.1:8080", description = "cloudctl up")),
    paths(bff::session, docs::version),
    components(schemas(Session, SessionUser, ProblemDetails, docs::Version)),
    modifiers(&BearerJwt),
    tags((name = "bff", description = "Backend-for-frontend endpoints built into the gateway"), (name = "meta", description = "What is running")),
)]
pub struct ApiDoc;

/// The document as YAML, as committed.
pub fn yaml() -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    Ok(ApiDoc::openapi().to_yaml()?)
}

/// RFC 9457 problem details (`cloud_kit::Problem`): the body of every error response.
/// Extension members (e.g. `failed_calls`) may follow.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // documentation only: the responses are built by `cloud_kit::Problem`
pub struct ProblemDetails {
    /// A URI identifying the problem type; `about:blank` means "see the status code".
    #[serde(rename = "type")]
    pub kind: String,
    /// The status code's reason phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, for a human.
    #[schema(required = false, nullable = false)]
    pub detail: Option<String>,
    /// A URI identifying this occurrence; the gateway does not set it.
    #[schema(required = false, nullable = false)]
    pub instance: Option<String>,
}

/// Documentation-only descriptions of routes the gateway gets from cloud-kit.
#[allow(dead_code)]
pub mod docs {
    use serde::Serialize;
    use utoipa::ToSchema;

    /// What is running (cloud-kit's `BuildInfo`).
    #[derive(Debug, Serialize, ToSchema)]
    pub struct Version {
        /// `cloud-api-gateway-bff`.
        pub service: String,
        /// The crate version.
        pub version: String,
        /// The git commit of the build.
        pub git_sha: String,
    }

    /// The running build: service name, version and git commit.
    ///
    /// Needs no token.
    #[utoipa::path(get, path = "/version", tag = "meta", operation_id = "version",
        responses((status = 200, description = "The build", body = Version)))]
    pub fn version() {}
}
