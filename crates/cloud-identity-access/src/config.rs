//! The service's typed configuration: defaults, then `--config FILE`, then `IDENTITY_*` variables.

use std::path::Path;

use cloud_kit::{ConfigError, ServerConfig, TelemetryConfig};
use serde::Deserialize;
use url::Url;

/// Environment variables `IDENTITY_SECTION__KEY` override the file, e.g. `IDENTITY_SERVER__PORT`.
pub const ENV_PREFIX: &str = "IDENTITY";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub telemetry: TelemetryConfig,
    /// The public base URL of this provider: the `iss` of every token it issues.
    /// Defaults to `http://<server.host>:<server.port>`, right for one machine only.
    pub issuer: Option<Url>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig { port: 8081, admin_port: 9091, ..ServerConfig::default() },
            telemetry: TelemetryConfig::default(),
            issuer: None,
        }
    }
}

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        cloud_kit::config::load(ENV_PREFIX, file)
    }

    /// The configured issuer, or the local address the API listens on.
    pub fn issuer_or(&self, bound_port: u16) -> Result<Url, url::ParseError> {
        match &self.issuer {
            Some(url) => Ok(url.clone()),
            None => Url::parse(&format!("http://{}:{bound_port}", self.server.host)),
        }
    }
}
