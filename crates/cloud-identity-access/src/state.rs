//! The state every handler shares.

use std::sync::{Arc, OnceLock};

use cloud_kit::Clock;

use crate::config::{LoginConfig, TokensConfig};
use crate::crypto::{PasswordPool, SecretHasher};
use crate::keys::{KeyManager, KeySet};
use crate::login::Throttle;
use crate::store::Store;

#[derive(Clone, Debug)]
pub struct AppState(pub Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub store: Arc<dyn Store>,
    pub keys: KeyManager,
    pub secrets: SecretHasher,
    pub passwords: PasswordPool,
    pub clock: Arc<dyn Clock>,
    /// Set once the listener is bound (the default issuer names the bound port).
    pub issuer: OnceLock<String>,
    pub tokens: TokensConfig,
    pub login: LoginConfig,
    pub throttle: Throttle,
    /// Signs CSRF tokens of the hosted login page.
    pub csrf_key: [u8; 32],
    /// Feature flags (every flag off without a `flags` config).
    pub flags: cloud_flags::FlagClient,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Inner {
    /// The issuer without a trailing slash: `iss` of every token, base of every endpoint.
    pub fn issuer(&self) -> &str {
        self.issuer.get().map_or("", String::as_str)
    }

    pub fn now(&self) -> i64 {
        self.clock.now().unix_timestamp()
    }

    pub fn key_set(&self) -> Option<Arc<KeySet>> {
        self.keys.current()
    }
}

pub fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}
