//! `cloud-api-gateway-bff`: the authenticating, tenant-aware gateway and backend-for-frontend.
//!
//! A library with [`build`] and [`Application::run_until_stopped`], so that the binary, `cloudctl
//! up` and the tests all start exactly the same service.

pub mod config;

use axum::Router;
use cloud_kit::{Metrics, Readiness, Server, ServerError, Shutdown};

pub use config::Config;

pub const SERVICE_NAME: &str = "cloud-api-gateway-bff";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// The service with its listeners bound, ready to run.
#[derive(Debug)]
pub struct Application {
    server: Server,
}

/// Builds the service from its configuration and binds its listeners.
pub async fn build(config: Config) -> Result<Application, BuildError> {
    let metrics = Metrics::new();
    let readiness = Readiness::new();
    let router = cloud_kit::http_layers::default_fallbacks(Router::new().merge(cloud_kit::version_route(cloud_kit::build_info!())));
    let server = Server::bind(SERVICE_NAME, &config.server, router, readiness, metrics).await?;
    Ok(Application { server })
}

impl Application {
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    pub fn admin_port(&self) -> u16 {
        self.server.admin_port()
    }

    /// Triggers the same graceful shutdown as SIGTERM.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.server.shutdown_handle()
    }

    /// Use one shutdown trigger for several services (e.g. `cloudctl up`).
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.server = self.server.with_shutdown(shutdown);
        self
    }

    /// Stop only through [`Self::shutdown_handle`], not on process signals.
    pub fn without_signals(mut self) -> Self {
        self.server = self.server.without_signals();
        self
    }

    pub async fn run_until_stopped(self) -> Result<(), ServerError> {
        tracing::info!(service = SERVICE_NAME, port = self.port(), admin_port = self.admin_port(), "listening");
        self.server.run_until_stopped().await
    }
}
