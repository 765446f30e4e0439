//! `cloud-identity-access`: the platform's multi-tenant OAuth 2.1 / OpenID Connect provider.
//!
//! A library with [`build`] and [`Application::run_until_stopped`], so that the binary, `cloudctl
//! up` and the tests all start exactly the same service.

pub mod admin;
pub mod audit;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod keys;
pub mod login;
pub mod model;
pub mod oauth;
pub mod openapi;
pub mod state;
pub mod store;
pub mod tokens;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::routing::{get, post};
use cloud_kit::{Clock, Metrics, Readiness, Server, ServerError, Shutdown, SystemClock};
use secrecy::{ExposeSecret, SecretString};

pub use config::Config;

use crate::crypto::{PasswordPool, SecretHasher, random_token};
use crate::keys::{KeyCipher, KeyManager};
use crate::state::{AppState, Inner};
use crate::store::{Store, StoreError};

pub const SERVICE_NAME: &str = "cloud-identity-access";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("cannot derive the issuer URL: {0}")]
    Issuer(#[from] url::ParseError),
    /// Never includes the database URL, which may hold a password.
    #[error("cannot open the database (database.url, env IDENTITY_DATABASE__URL): {0}")]
    Store(#[from] StoreError),
    #[error("signing keys: {0}")]
    Keys(#[from] keys::KeyError),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error("data_dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "keys.encryption_key is required with a PostgreSQL database (every replica must decrypt the same keys)"
    )]
    EncryptionKeyRequired,
    #[error(transparent)]
    Password(#[from] crypto::PasswordError),
    #[error("feature flags (flags.*): {0}")]
    Flags(#[from] cloud_flags::FlagError),
}

/// The service with its listeners bound, ready to run.
#[derive(Debug)]
pub struct Application {
    server: Server,
    issuer: url::Url,
    state: AppState,
    rotation_period: std::time::Duration,
    rotation_check: std::time::Duration,
}

fn is_memory(url: &str) -> bool {
    url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory"))
}

/// The key that encrypts signing keys at rest: configured, or generated once into the data dir.
fn key_cipher(config: &Config, url: &SecretString) -> Result<KeyCipher, BuildError> {
    if let Some(key) = &config.keys.encryption_key {
        return Ok(KeyCipher::from_secret(key.expose_secret()));
    }
    let url = url.expose_secret();
    if is_memory(url) {
        return Ok(KeyCipher::from_secret(&random_token(32)));
    }
    if !url.starts_with("sqlite:") {
        return Err(BuildError::EncryptionKeyRequired);
    }
    let path = config.data_dir.join("key-encryption.key");
    let io = |source| BuildError::DataDir {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(KeyCipher::from_secret(text.trim())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&config.data_dir).map_err(io)?;
            let secret = random_token(32);
            match write_private(&path, &secret) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "generated a key-encryption key");
                    Ok(KeyCipher::from_secret(&secret))
                }
                // Another process sharing the data dir generated it first: use theirs.
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read_to_string(&path)
                        .map(|text| KeyCipher::from_secret(text.trim()))
                        .map_err(io)
                }
                Err(err) => Err(io(err)),
            }
        }
        Err(err) => Err(io(err)),
    }
}

/// Writes a 0600 file atomically: complete under a temporary name, then linked into place, so a
/// concurrent reader never sees it half-written; fails with `AlreadyExists` if `path` exists.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", random_token(8)));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = options
        .open(&tmp)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Opens the store named by the config (creating the data dir for the default SQLite file) and
/// applies pending migrations.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, BuildError> {
    Ok(open_and_migrate(config).await?.0)
}

/// [`open_store`], also returning what the migrations did.
pub async fn open_and_migrate(
    config: &Config,
) -> Result<(Arc<dyn Store>, store::MigrationReport), BuildError> {
    if config.database.url.is_none() {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| BuildError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
    }
    Ok(store::connect_and_migrate(&config.database_url(), config.database.max_connections).await?)
}

/// Opens the store and loads the signing keys, without binding listeners (CLI commands).
pub async fn open_keys(config: &Config, store: Arc<dyn Store>) -> Result<KeyManager, BuildError> {
    let cipher = key_cipher(config, &config.database_url())?;
    let retire_after = config.tokens.access_token_ttl.max(
        config
            .tokens
            .refresh_token_ttl
            .min(std::time::Duration::from_secs(86_400)),
    );
    Ok(KeyManager::new(store, cipher, retire_after))
}

/// Builds the service from its configuration and binds its listeners.
pub async fn build(config: Config) -> Result<Application, BuildError> {
    build_with_clock(config, Arc::new(SystemClock)).await
}

/// [`build`] with an injected clock (tests of expiry and rotation).
pub async fn build_with_clock(
    config: Config,
    clock: Arc<dyn Clock>,
) -> Result<Application, BuildError> {
    let store = open_store(&config).await?;
    let url = config.database_url();
    let cipher = key_cipher(&config, &url)?;
    let secrets = SecretHasher::new(cipher.derive("client-secret-pepper"));
    let keys = open_keys(&config, store.clone()).await?;
    let now = clock.now().unix_timestamp();
    keys.ensure(now).await?;
    bootstrap::run(store.as_ref(), &secrets, &config.bootstrap, now).await?;
    // No `flags` section: an always-ready client with every flag off.
    let flags = cloud_flags::FlagClient::from_config(&config.flags, clock.clone()).await?;
    let state = AppState(Arc::new(Inner {
        store: store.clone(),
        keys: keys.clone(),
        secrets,
        passwords: PasswordPool::new(config.login.max_concurrent_hashes)?,
        clock,
        issuer: OnceLock::new(),
        tokens: config.tokens.clone(),
        login: config.login.clone(),
        throttle: login::Throttle::default(),
        csrf_key: crypto::random_bytes::<32>(),
        flags: flags.clone(),
    }));

    let metrics = Metrics::new();
    metrics.register(|registry| flags.register_metrics(registry));
    let readiness = Readiness::new();
    // Ready once a flag state is loaded: at once without `flags` or with a bootstrap file; with
    // a server, from it, its last-known-good backup or the bootstrap file.
    readiness.add_check("feature_flags", flags.readiness_check());
    readiness.add_check("database", {
        let store = store.clone();
        move || {
            let store = store.clone();
            async move { store.ping().await.map_err(|e| e.to_string()) }
        }
    });
    readiness.add_check("signing_keys", {
        let keys = keys.clone();
        move || {
            let loaded = keys.current().is_some();
            async move {
                if loaded {
                    Ok(())
                } else {
                    Err("no active signing key loaded".to_string())
                }
            }
        }
    });
    let router = cloud_kit::http_layers::default_fallbacks(routes(state.clone()));
    let server = Server::bind(SERVICE_NAME, &config.server, router, readiness, metrics).await?;
    let issuer = config.issuer_or(server.port())?;
    let _ = state
        .0
        .issuer
        .set(issuer.as_str().trim_end_matches('/').to_string());
    Ok(Application {
        server,
        issuer,
        state,
        rotation_period: config.keys.rotation_period,
        rotation_check: config.keys.rotation_check_interval,
    })
}

/// Every API route (also used by the OpenAPI drift test).
pub fn routes(state: AppState) -> Router {
    Router::new()
        .merge(cloud_kit::version_route(cloud_kit::build_info!()))
        .route("/.well-known/openid-configuration", get(oauth::discovery))
        .route("/.well-known/jwks.json", get(oauth::jwks))
        .route(
            "/oauth2/authorize",
            get(login::authorize_get).post(login::authorize_post),
        )
        .route("/oauth2/token", post(oauth::token))
        .route("/oauth2/introspect", post(oauth::introspect))
        .route("/oauth2/revoke", post(oauth::revoke))
        .route(
            "/oauth2/userinfo",
            get(oauth::userinfo).post(oauth::userinfo),
        )
        .merge(admin::router())
        .with_state(state)
}

impl Application {
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    pub fn admin_port(&self) -> u16 {
        self.server.admin_port()
    }

    pub fn issuer(&self) -> &url::Url {
        &self.issuer
    }

    /// The shared state: the store, keys and token settings.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
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

    pub async fn run_until_stopped(mut self) -> Result<(), ServerError> {
        // Before announcing the ports: a SIGTERM sent right after must drain, not kill.
        self.server.install_signal_handlers();
        tracing::info!(service = SERVICE_NAME, port = self.port(), admin_port = self.admin_port(), issuer = %self.issuer, "listening");
        let keys = self.state.keys.clone();
        let clock = self.state.clock.clone();
        let (period, every) = (self.rotation_period, self.rotation_check);
        let rotation = tokio::spawn(async move {
            let mut interval = tokio::time::interval(every.max(std::time::Duration::from_secs(1)));
            interval.tick().await;
            loop {
                interval.tick().await;
                if let Err(err) = keys.tick(period, clock.now().unix_timestamp()).await {
                    tracing::error!(error = %err, "key rotation check failed");
                }
            }
        });
        let result = self.server.run_until_stopped().await;
        rotation.abort();
        // Stops the flag client's polling and posts its last usage metrics.
        self.state.flags.shutdown().await;
        result
    }
}
