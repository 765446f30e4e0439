//! Typed, layered configuration: serde defaults, then an optional YAML file, then environment
//! variables (`<PREFIX>_SECTION__KEY`). Unknown keys are rejected and every error names the key,
//! the bad value (never for secrets, which are held in `secrecy` types) and where it came from.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use serde::Deserialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration:\n{0}")]
    Invalid(String),
}

/// Loads `T` from its serde defaults, the optional YAML `file`, and `<env_prefix>_*` variables.
///
/// `env_prefix` is e.g. `IDENTITY`: `IDENTITY_SERVER__PORT=8080` sets `server.port`.
pub fn load<T: DeserializeOwned>(env_prefix: &str, file: Option<&Path>) -> Result<T, ConfigError> {
    extract(
        base(file)?.merge(Env::prefixed(&format!("{env_prefix}_")).split("__")),
        env_prefix,
    )
}

fn base(file: Option<&Path>) -> Result<Figment, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = file {
        // figment treats a missing file as empty; a named file that cannot be read is an error.
        std::fs::File::open(path).map_err(|source| ConfigError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
        figment = figment.merge(Yaml::file_exact(path));
    }
    Ok(figment)
}

fn extract<T: DeserializeOwned>(figment: Figment, env_prefix: &str) -> Result<T, ConfigError> {
    figment.extract::<T>().map_err(|err| {
        let lines: Vec<String> = err
            .into_iter()
            .map(|e| format!("  - {}", describe(&e, env_prefix)))
            .collect();
        ConfigError::Invalid(lines.join("\n"))
    })
}

fn describe(err: &figment::Error, env_prefix: &str) -> String {
    let key = if err.path.is_empty() {
        "(top level)".to_string()
    } else {
        err.path.join(".")
    };
    let Some(meta) = err.metadata.as_ref() else {
        return format!("{key}: {}", err.kind);
    };
    // For environment variables, name the exact variable, as the operator wrote it.
    let from = if meta.name.contains("environment") {
        let var: Vec<String> = err.path.iter().map(|p| p.to_ascii_uppercase()).collect();
        format!("environment variable {env_prefix}_{}", var.join("__"))
    } else {
        match &meta.source {
            Some(src) => format!("{} {src}", meta.name),
            None => meta.name.to_string(),
        }
    };
    format!("{key}: {} (from {from})", err.kind)
}

/// Where a service listens, and how it shuts down.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address both listeners bind to.
    pub host: IpAddr,
    /// The API port; 0 picks a free port (tests).
    pub port: u16,
    /// The admin port (`/metrics`, `/healthz`, `/readyz`); 0 picks a free port.
    pub admin_port: u16,
    /// After SIGTERM, how long `/readyz` fails while the listener still serves, so that load
    /// balancers stop sending new requests before the listener closes.
    #[serde(with = "humantime_serde")]
    pub drain_period: Duration,
    /// After the drain, how long in-flight requests get to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How long a client may take to send a request's head (request line and headers), counted
    /// from the moment the server waits for it: from the connection's start, and on a
    /// keep-alive connection from the end of the previous response, so it also closes idle
    /// keep-alive connections after this long. Slower clients are disconnected (slowloris);
    /// without it each one holds a connection, a task and a file descriptor forever.
    ///
    /// The default, 75 s, is longer than the upstream keep-alive timeout of the proxies that
    /// sit in front of a service (ingress-nginx and AWS ALB: 60 s), so the proxy always closes
    /// an idle connection first; the other way round, a request the proxy sends on a
    /// connection this server is closing fails with no answer, and a POST is not retried.
    /// nginx's own `client_header_timeout` is 60 s. Behind a proxy with a longer keep-alive
    /// (GCP load balancers: 600 s), raise it above that.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; larger ones get 431. At
    /// least 8192 (hyper's smallest buffer).
    pub max_header_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            admin_port: 9090,
            drain_period: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            header_read_timeout: Duration::from_secs(75),
            max_header_bytes: 32 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal (production), readable text in a terminal.
    #[default]
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,cloud_identity_access=debug`.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Auto,
            log_level: "info".into(),
        }
    }
}
