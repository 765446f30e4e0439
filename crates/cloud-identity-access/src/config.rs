//! The service's typed configuration: defaults, then `--config FILE`, then `IDENTITY_*` variables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cloud_kit::{ConfigError, ServerConfig, TelemetryConfig};
use secrecy::SecretString;
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
    #[serde(deserialize_with = "issuer_url")]
    pub issuer: Option<Url>,
    /// Where the embedded SQLite database and the generated key-encryption key live.
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub keys: KeysConfig,
    pub tokens: TokensConfig,
    pub bootstrap: BootstrapConfig,
    pub login: LoginConfig,
    /// Feature flags (`cloud_flags`): an Unleash server, a bootstrap file, or neither (every flag
    /// off). `IDENTITY_FLAGS__BOOTSTRAP_PATH`, `IDENTITY_FLAGS__KILL_SWITCH_FILE`, ...
    pub flags: cloud_flags::FlagsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig {
                port: 8081,
                admin_port: 9091,
                ..ServerConfig::default()
            },
            telemetry: TelemetryConfig::default(),
            issuer: None,
            data_dir: PathBuf::from("data/identity"),
            database: DatabaseConfig::default(),
            keys: KeysConfig::default(),
            tokens: TokensConfig::default(),
            bootstrap: BootstrapConfig::default(),
            login: LoginConfig::default(),
            flags: cloud_flags::FlagsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://FILE?mode=rwc`, `sqlite::memory:` or `postgres://...`. Secret: it may carry a
    /// password, so it is never logged. Default: `sqlite://<data_dir>/identity.db?mode=rwc`.
    pub url: Option<SecretString>,
    /// Connection pool size (SQLite in memory always uses one connection).
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 8,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// Encrypts the signing keys' private halves at rest (AES-256-GCM, key = SHA-256 of this).
    /// When unset, a random key is generated once into `<data_dir>/key-encryption.key` (mode 0600),
    /// or kept in process memory for an in-memory database.
    pub encryption_key: Option<SecretString>,
    /// How long a key stays active before the next key takes over.
    #[serde(with = "humantime_serde")]
    pub rotation_period: Duration,
    /// How often the service checks whether a rotation is due.
    #[serde(with = "humantime_serde")]
    pub rotation_check_interval: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            encryption_key: None,
            rotation_period: Duration::from_secs(30 * 24 * 3600),
            rotation_check_interval: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    #[serde(with = "humantime_serde")]
    pub access_token_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub refresh_token_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub authorization_code_ttl: Duration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            access_token_ttl: Duration::from_secs(900),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            authorization_code_ttl: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapConfig {
    /// Secret of the `platform-admin` client, created on first start. Never has a default.
    pub admin_client_secret: Option<SecretString>,
    /// A file holding that secret (e.g. a mounted Kubernetes secret); trailing newline ignored.
    pub admin_client_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginConfig {
    /// Failed logins per account within `window` before the account is locked for `lockout`.
    pub max_failures_per_account: u32,
    /// Failed logins per client IP within `window` before that IP is refused for `lockout`.
    pub max_failures_per_ip: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub lockout: Duration,
    /// Concurrent Argon2id computations (each uses ~19 MiB); more logins wait.
    pub max_concurrent_hashes: usize,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            max_failures_per_account: 5,
            max_failures_per_ip: 20,
            window: Duration::from_secs(900),
            lockout: Duration::from_secs(900),
            max_concurrent_hashes: 2,
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

    /// The database URL to use: the configured one, or the embedded SQLite file.
    pub fn database_url(&self) -> SecretString {
        match &self.database.url {
            Some(url) => url.clone(),
            None => SecretString::from(format!(
                "sqlite://{}/identity.db?mode=rwc",
                self.data_dir.display()
            )),
        }
    }
}

/// An issuer must be an absolute `http(s)` URL with a host and no query or fragment (OIDC
/// Discovery section 3); the error names the value as written.
fn issuer_url<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Url>, D::Error> {
    let Some(raw) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let invalid = || -> D::Error {
        serde::de::Error::custom(format!(
            "{raw:?} is not an absolute http(s) URL with a host and no query or fragment"
        ))
    };
    let url = Url::parse(&raw).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(invalid());
    }
    Ok(Some(url))
}
