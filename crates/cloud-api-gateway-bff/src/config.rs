//! The gateway's typed configuration: defaults, then `--config FILE`, then `GATEWAY_*` variables.

use std::path::Path;

use cloud_kit::{ConfigError, ServerConfig, TelemetryConfig};
use serde::Deserialize;
use url::Url;

/// Environment variables `GATEWAY_SECTION__KEY` override the file, e.g. `GATEWAY_SERVER__PORT`.
pub const ENV_PREFIX: &str = "GATEWAY";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub telemetry: TelemetryConfig,
    pub identity: IdentityConfig,
}

/// Where tokens come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The identity provider's issuer; its discovery document lives under it.
    pub issuer_url: Url,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self { issuer_url: local_identity() }
    }
}

#[allow(clippy::expect_used)] // A constant literal, parsed in `default_config_is_valid`.
fn local_identity() -> Url {
    Url::parse("http://127.0.0.1:8081").expect("literal URL")
}

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        cloud_kit::config::load(ENV_PREFIX, file)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_config_is_valid() {
        let config = super::Config::default();
        assert_eq!(config.identity.issuer_url.as_str(), "http://127.0.0.1:8081/");
    }
}
