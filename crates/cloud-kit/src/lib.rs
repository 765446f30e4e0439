//! `cloud-kit`: the runtime every platform service shares, so that they all behave the same in
//! production: typed layered config, structured logs and traces, a separate admin listener with
//! `/metrics`, `/healthz` and `/readyz`, RED metrics per route template, request ids and W3C trace
//! context, RFC 9457 problem+json errors, and graceful shutdown with a drain period.

pub mod admin;
pub mod clock;
pub mod config;
pub mod extract;
pub mod http_layers;
pub mod metrics;
pub mod openapi;
pub mod per_event_loop;
pub mod problem;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;

pub use admin::Readiness;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{ConfigError, ServerConfig, TelemetryConfig};
pub use metrics::Metrics;
pub use per_event_loop::{LoopHeaderValue, PerEventLoop};
pub use problem::Problem;
pub use server::{EventLoops, Server, ServerError};
pub use shutdown::Shutdown;

/// The git commit this build comes from (`CLOUD_GIT_SHA` at build time, else `git rev-parse`).
pub const GIT_SHA: &str = env!("CLOUD_GIT_SHA");

/// What `GET /version` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildInfo {
    pub service: &'static str,
    pub version: &'static str,
    pub git_sha: &'static str,
}

/// The build info of the calling crate.
#[macro_export]
macro_rules! build_info {
    () => {
        $crate::BuildInfo {
            service: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            git_sha: $crate::GIT_SHA,
        }
    };
}

/// Where [`version_route`] answers.
pub const VERSION_PATH: &str = "/version";

/// `GET /version`: service name, version and git sha.
pub fn version_route<S: Clone + Send + Sync + 'static>(info: BuildInfo) -> axum::Router<S> {
    axum::Router::new().route(
        VERSION_PATH,
        axum::routing::get(move || async move { axum::Json(info) }),
    )
}
