//! Configuration of the flag client, embeddable in a service's config file.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::killswitch::{DEFAULT_KILL_SWITCH_ENV, KillSwitchSource};

/// Connection to an Unleash server (or anything speaking its client API, e.g. Unleash Edge).
///
/// In YAML (all durations in humantime, e.g. `15s`):
/// ```yaml
/// unleash:
///   url: http://127.0.0.1:4242/api
///   token: "default:development.<secret>"
///   app_name: cloud-api-gateway-bff
///   refresh_interval: 15s
///   backup_path: /var/lib/cloud/flags/last-known-good.json
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnleashConfig {
    /// The API base: `client/features`, `client/register` and `client/metrics` are joined to it.
    pub url: Url,
    /// A client (backend) API token. Never logged.
    pub token: SecretString,
    #[serde(default = "default_app_name")]
    pub app_name: String,
    #[serde(default = "default_instance_id")]
    pub instance_id: String,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh_interval: Duration,
    #[serde(default = "default_metrics", with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// Upper bound of the exponential backoff after failed fetches.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Where the last good state is persisted, and loaded from when the server is unreachable.
    #[serde(default)]
    pub backup_path: Option<PathBuf>,
    /// Loaded when neither the server nor a valid backup is available.
    #[serde(default)]
    pub bootstrap_path: Option<PathBuf>,
    /// The hash-chained audit log of flag changes.
    #[serde(default)]
    pub audit_log_path: Option<PathBuf>,
    /// File of flag names forced off (one per line).
    #[serde(default)]
    pub kill_switch_file: Option<PathBuf>,
    /// Environment variable of flag names forced off.
    #[serde(default = "default_kill_env")]
    pub kill_switch_env: Option<String>,
    /// Post usage metrics to the server.
    #[serde(default = "default_true")]
    pub send_metrics: bool,
}

fn default_app_name() -> String {
    "cloud-platform".into()
}
fn default_instance_id() -> String {
    format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "instance".into()),
        uuid::Uuid::new_v4().simple()
    )
}
fn default_refresh() -> Duration {
    Duration::from_secs(15)
}
fn default_metrics() -> Duration {
    Duration::from_secs(60)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_kill_env() -> Option<String> {
    Some(DEFAULT_KILL_SWITCH_ENV.into())
}
fn default_true() -> bool {
    true
}

impl UnleashConfig {
    /// A config with the defaults: 15 s refresh, 60 s metrics, 5 min max backoff, kill switch
    /// from `CLOUD_FLAGS_KILL_SWITCH`, no files.
    pub fn new(url: Url, token: SecretString, app_name: impl Into<String>) -> Self {
        Self {
            url,
            token,
            app_name: app_name.into(),
            instance_id: default_instance_id(),
            refresh_interval: default_refresh(),
            metrics_interval: default_metrics(),
            max_backoff: default_max_backoff(),
            request_timeout: default_timeout(),
            backup_path: None,
            bootstrap_path: None,
            audit_log_path: None,
            kill_switch_file: None,
            kill_switch_env: default_kill_env(),
            send_metrics: true,
        }
    }

    pub(crate) fn kill_switch(&self) -> KillSwitchSource {
        KillSwitchSource {
            env_var: self.kill_switch_env.clone(),
            file: self.kill_switch_file.clone(),
        }
    }
}

/// A client with no server: flags from a bootstrap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineConfig {
    pub bootstrap_path: PathBuf,
    pub audit_log_path: Option<PathBuf>,
    pub kill_switch: KillSwitchSource,
    /// How often the kill switch is re-read (needs a tokio runtime); `None` reads it once.
    pub kill_switch_poll: Option<Duration>,
}

impl OfflineConfig {
    pub fn new(bootstrap_path: impl Into<PathBuf>) -> Self {
        Self {
            bootstrap_path: bootstrap_path.into(),
            audit_log_path: None,
            kill_switch: KillSwitchSource {
                env_var: default_kill_env(),
                file: None,
            },
            kill_switch_poll: None,
        }
    }
}

/// The `flags:` section of a service's config: a server, a bootstrap file, or neither (every
/// flag off).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlagsConfig {
    pub unleash: Option<UnleashConfig>,
    /// Used alone when `unleash` is not set; the fallback of last resort when it is.
    pub bootstrap_path: Option<PathBuf>,
    pub audit_log_path: Option<PathBuf>,
    pub kill_switch_file: Option<PathBuf>,
}
