//! [`FlagClient`]: the cloneable handle services evaluate flags with.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use cloud_kit::{Clock, SystemClock};
use prometheus_client::registry::Registry;
use secrecy::ExposeSecret;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use unleash_types::client_features::ClientFeatures;

use crate::FlagContext;
use crate::audit::{AuditLog, AuditRecord, LiveIndex, PendingRecord, StateSource};
use crate::config::{FlagsConfig, OfflineConfig, UnleashConfig};
use crate::definition::{ChangeKind, FlagDefinition, diff};
use crate::engine::{EngineVariant, FlagEngine, known_strategies};
use crate::error::FlagError;
use crate::killswitch::KillSwitchSource;
use crate::metrics::{
    CounterRegistry, DISABLED_VARIANT, EvaluationCollector, NO_VARIANT, usage_between,
};
use crate::persist;
use crate::state::{Compiled, FlagState};

/// The `feature_flag.provider_name` of every evaluation.
pub const PROVIDER_NAME: &str = "cloud-flags";
/// The tracing target of per-evaluation events (at DEBUG) carrying the OpenTelemetry
/// feature-flag attributes `feature_flag.key`, `feature_flag.variant`,
/// `feature_flag.provider_name`. Enable it (`RUST_LOG=cloud_flags::evaluation=debug`) to have
/// them recorded as span events.
pub const EVALUATION_TARGET: &str = "cloud_flags::evaluation";
/// The tracing target of impression events (flags with `impressionData: true`).
pub const IMPRESSION_TARGET: &str = "cloud_flags::impression";
/// `unleash-sdk` header value.
pub const SDK_NAME: &str = concat!("cloud-flags:", env!("CARGO_PKG_VERSION"));

/// A resolved variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Variant {
    /// The variant name; `"disabled"` when the flag is off or has no variants. Borrowed for
    /// `"disabled"`, so the most common answer of a hot-path `variant` allocates nothing.
    pub name: Cow<'static, str>,
    /// Whether a variant was assigned.
    pub enabled: bool,
    /// Whether the flag itself is on for this context.
    pub feature_enabled: bool,
    pub payload: Option<VariantPayload>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VariantPayload {
    /// `string`, `json`, `csv` or `number`.
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

impl Variant {
    /// The variant of a flag that is off.
    pub fn disabled() -> Self {
        Self {
            name: Cow::Borrowed(DISABLED_VARIANT),
            enabled: false,
            feature_enabled: false,
            payload: None,
        }
    }

    fn from_engine(v: EngineVariant) -> Self {
        Self {
            name: v.name,
            enabled: v.enabled,
            feature_enabled: v.feature_enabled,
            payload: v
                .payload
                .map(|(kind, value)| VariantPayload { kind, value }),
        }
    }
}

/// One flag evaluated for a context (e.g. the front-end flags of `/bff/v1/session`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvaluatedFlag {
    pub name: String,
    pub enabled: bool,
    pub variant: Variant,
}

/// Which call produced an impression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ImpressionKind {
    IsEnabled,
    GetVariant,
}

/// Emitted for every evaluation of a flag with `impressionData: true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImpressionEvent {
    pub event_id: uuid::Uuid,
    pub event_type: ImpressionKind,
    pub flag: String,
    pub enabled: bool,
    pub variant: Option<String>,
    pub user_id: Option<String>,
    pub tenant_id: Option<String>,
    pub session_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

/// What the client knows about its own state (for readiness, `cloudctl`, and tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagStatus {
    /// A state is loaded (from the server, the backup or the bootstrap file).
    pub ready: bool,
    pub source: Option<StateSource>,
    pub etag: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub fetched_at: Option<OffsetDateTime>,
    pub flags: usize,
    pub killed: Vec<String>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// Why the last-known-good file was not used, if it was corrupt.
    pub backup_error: Option<String>,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    last_error: Option<String>,
    backup_error: Option<String>,
}

struct Shared {
    state: ArcSwap<FlagState>,
    counters: Arc<CounterRegistry>,
    audit: AuditLog,
    /// What was last audited per flag (definition, killed): the base of the next diff.
    live: Mutex<BTreeMapLive>,
    kill_switch: KillSwitchSource,
    clock: Arc<dyn Clock>,
    impressions: broadcast::Sender<ImpressionEvent>,
    health: Mutex<Health>,
    /// Serializes state installs (poller and kill-switch reloads).
    install_lock: Mutex<()>,
}

type BTreeMapLive = std::collections::BTreeMap<String, (Option<FlagDefinition>, bool)>;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The flag client: a cheap-to-clone handle. Evaluation (`is_enabled`, `variant`) is
/// synchronous, lock-free and never waits for the network; background tasks (when connected)
/// refresh the state and post metrics. Dropping the last clone stops them.
#[derive(Debug, Clone)]
pub struct FlagClient {
    handle: Arc<Handle>,
}

/// `min(interval * 2^failures, max)`: the wait before the next fetch after `failures`
/// consecutive failures (0 failures: the interval itself).
pub fn backoff_delay(interval: Duration, failures: u32, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(failures.min(20));
    interval.saturating_mul(factor).min(max.max(interval))
}

fn live_from_audit(index: LiveIndex) -> BTreeMapLive {
    index
}

impl FlagClient {
    fn new_shared(
        clock: Arc<dyn Clock>,
        audit: AuditLog,
        live: BTreeMapLive,
        kill_switch: KillSwitchSource,
    ) -> Self {
        let counters = Arc::new(CounterRegistry::default());
        let empty = FlagState::build(
            &Compiled::empty(),
            Arc::default(),
            &counters,
            (None, None, None),
            false,
        );
        let (impressions, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            state: ArcSwap::from_pointee(empty),
            counters,
            audit,
            live: Mutex::new(live),
            kill_switch,
            clock,
            impressions,
            health: Mutex::new(Health::default()),
            install_lock: Mutex::new(()),
        });
        Self {
            handle: Arc::new(Handle {
                shared,
                cancel: CancellationToken::new(),
                tasks: Mutex::new(vec![]),
            }),
        }
    }

    fn open_audit(
        path: Option<&Path>,
        clock: &Arc<dyn Clock>,
    ) -> Result<(AuditLog, BTreeMapLive), FlagError> {
        match path {
            Some(p) => {
                let (log, live) = AuditLog::open(p, clock.now())?;
                Ok((log, live_from_audit(live)))
            }
            None => Ok((AuditLog::events_only(), BTreeMapLive::new())),
        }
    }

    /// Every flag off, always ready: for services configured without flags.
    pub fn empty() -> Self {
        let client = Self::new_shared(
            Arc::new(SystemClock),
            AuditLog::events_only(),
            BTreeMapLive::new(),
            KillSwitchSource::default(),
        );
        let shared = &client.handle.shared;
        let state = FlagState::build(
            &Compiled::empty(),
            Arc::default(),
            &shared.counters,
            (None, None, None),
            true,
        );
        shared.state.store(Arc::new(state));
        client
    }

    /// A client with no server, from an Unleash client-features file (how `cloudctl up` and
    /// tests run). The kill switch is read from `CLOUD_FLAGS_KILL_SWITCH`.
    pub fn from_bootstrap_file(path: impl AsRef<Path>) -> Result<Self, FlagError> {
        Self::offline(OfflineConfig::new(path.as_ref()), Arc::new(SystemClock))
    }

    /// A client with no server, configured in full. With `kill_switch_poll` set (and a tokio
    /// runtime running) the kill switch is re-read on that interval.
    pub fn offline(config: OfflineConfig, clock: Arc<dyn Clock>) -> Result<Self, FlagError> {
        let (features, _) = persist::read_bootstrap(&config.bootstrap_path)?;
        let (audit, live) = Self::open_audit(config.audit_log_path.as_deref(), &clock)?;
        let client = Self::new_shared(clock, audit, live, config.kill_switch.clone());
        let compiled = Compiled::compile(&features);
        let killed = client.read_kill_switch().unwrap_or_default();
        let now = client.handle.shared.clock.now();
        client.install(Some(compiled), killed, StateSource::Bootstrap, None, now)?;
        if let Some(every) = config.kill_switch_poll
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let cancel = client.handle.cancel.clone();
            let weak = Arc::downgrade(&client.handle);
            let task = rt.spawn(async move {
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    let Some(handle) = weak.upgrade() else { return };
                    let _ = FlagClient { handle }.reload_kill_switch();
                }
            });
            client.push_task(task);
        }
        Ok(client)
    }

    /// A client from a features document in memory (tests, benchmarks).
    pub fn from_features_json(body: &[u8]) -> Result<Self, FlagError> {
        let features = persist::parse_features(body, Path::new("<memory>"))?;
        let client = Self::new_shared(
            Arc::new(SystemClock),
            AuditLog::events_only(),
            BTreeMapLive::new(),
            KillSwitchSource::default(),
        );
        let now = client.handle.shared.clock.now();
        client.install(
            Some(Compiled::compile(&features)),
            BTreeSet::new(),
            StateSource::Bootstrap,
            None,
            now,
        )?;
        Ok(client)
    }

    /// Builds the client a service's `flags:` config section asks for.
    pub async fn from_config(
        config: &FlagsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, FlagError> {
        match (&config.unleash, &config.bootstrap_path) {
            (Some(unleash), _) => {
                let mut unleash = unleash.clone();
                unleash.bootstrap_path = unleash
                    .bootstrap_path
                    .or_else(|| config.bootstrap_path.clone());
                unleash.audit_log_path = unleash
                    .audit_log_path
                    .or_else(|| config.audit_log_path.clone());
                unleash.kill_switch_file = unleash
                    .kill_switch_file
                    .or_else(|| config.kill_switch_file.clone());
                Self::connect_with_clock(unleash, clock).await
            }
            (None, Some(path)) => {
                let mut offline = OfflineConfig::new(path);
                offline.audit_log_path = config.audit_log_path.clone();
                offline.kill_switch.file = config.kill_switch_file.clone();
                offline.kill_switch_poll = Some(Duration::from_secs(5));
                Self::offline(offline, clock)
            }
            (None, None) => Ok(Self::empty()),
        }
    }

    /// Connects to an Unleash server with the system clock. See [`Self::connect_with_clock`].
    pub async fn connect(config: UnleashConfig) -> Result<Self, FlagError> {
        Self::connect_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Connects to an Unleash server: one fetch now (bounded by `request_timeout`); when it
    /// fails, the last-known-good backup, else the bootstrap file, else no state (not ready)
    /// until the server answers. Then polls every `refresh_interval` with `If-None-Match`,
    /// backing off exponentially on errors, and registers and posts usage metrics.
    pub async fn connect_with_clock(
        config: UnleashConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, FlagError> {
        if config.refresh_interval.is_zero() || config.metrics_interval.is_zero() {
            return Err(FlagError::Config(
                "refresh_interval and metrics_interval must be greater than zero".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .user_agent(SDK_NAME)
            .build()
            .map_err(|e| FlagError::Http(e.to_string()))?;
        let (audit, live) = Self::open_audit(config.audit_log_path.as_deref(), &clock)?;
        let client = Self::new_shared(clock, audit, live, config.kill_switch());
        let api = Arc::new(Api::new(&config, http)?);

        let first = client.poll_once(&api, config.backup_path.as_deref()).await;
        if let Err(err) = first {
            tracing::warn!(target: "cloud_flags", error = %err, "Unleash server not reachable at start; trying last-known-good");
            client.record_failure(&err);
            client.load_fallback(
                config.backup_path.as_deref(),
                config.bootstrap_path.as_deref(),
            )?;
        }

        let poller = {
            let handle = Arc::downgrade(&client.handle);
            let cancel = client.handle.cancel.clone();
            let api = api.clone();
            let (interval, max) = (config.refresh_interval, config.max_backoff);
            let backup = config.backup_path.clone();
            tokio::spawn(async move {
                loop {
                    let failures = match handle.upgrade() {
                        Some(h) => h
                            .shared
                            .health
                            .lock()
                            .map(|h| h.consecutive_failures)
                            .unwrap_or(0),
                        None => return,
                    };
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff_delay(interval, failures, max)) => {}
                    }
                    let Some(h) = handle.upgrade() else { return };
                    let client = FlagClient { handle: h };
                    if let Err(err) = client.poll_once(&api, backup.as_deref()).await {
                        tracing::warn!(target: "cloud_flags", error = %err, failures = failures + 1, "feature fetch failed; keeping the last good state");
                        client.record_failure(&err);
                    }
                    let _ = client.reload_kill_switch();
                }
            })
        };
        client.push_task(poller);
        if config.send_metrics {
            let reporter = {
                let shared = client.handle.shared.clone();
                let cancel = client.handle.cancel.clone();
                let every = config.metrics_interval;
                tokio::spawn(async move { report_metrics(shared, api, every, cancel).await })
            };
            client.push_task(reporter);
        }
        Ok(client)
    }

    fn push_task(&self, task: tokio::task::JoinHandle<()>) {
        self.handle
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    /// Stops the background tasks (posting a last metrics bucket first) and waits for them.
    pub async fn shutdown(&self) {
        self.handle.cancel.cancel();
        let tasks: Vec<_> =
            std::mem::take(&mut *self.handle.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    fn record_failure(&self, err: &FlagError) {
        let mut health = self
            .handle
            .shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        health.last_error = Some(err.to_string());
    }

    fn load_fallback(
        &self,
        backup: Option<&Path>,
        bootstrap: Option<&Path>,
    ) -> Result<(), FlagError> {
        let killed = self.read_kill_switch().unwrap_or_default();
        if let Some(path) = backup.filter(|p| p.exists()) {
            match persist::read_backup(path) {
                Ok(b) => {
                    let compiled = Compiled::compile(&b.features);
                    self.install(
                        Some(compiled),
                        killed,
                        StateSource::Backup,
                        b.etag,
                        b.fetched_at,
                    )?;
                    return Ok(());
                }
                Err(err) => {
                    tracing::error!(target: "cloud_flags", error = %err, "ignoring corrupt last-known-good file");
                    self.handle
                        .shared
                        .health
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .backup_error = Some(err.to_string());
                }
            }
        }
        if let Some(path) = bootstrap {
            let (features, _) = persist::read_bootstrap(path)?;
            let now = self.handle.shared.clock.now();
            self.install(
                Some(Compiled::compile(&features)),
                killed,
                StateSource::Bootstrap,
                None,
                now,
            )?;
        }
        Ok(())
    }

    /// One conditional fetch; installs and persists a changed state.
    async fn poll_once(&self, api: &Api, backup: Option<&Path>) -> Result<(), FlagError> {
        let etag = self.handle.shared.state.load().etag.clone();
        let Some((body, etag)) = api.fetch_features(etag.as_deref()).await? else {
            self.handle
                .shared
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .consecutive_failures = 0;
            return Ok(());
        };
        let fetched_at = self.handle.shared.clock.now();
        let body = Arc::new(body);
        let compile_body = body.clone();
        // Parsing and compiling a large state takes milliseconds: keep it off the async
        // workers and away from evaluations, which keep using the old state until the swap.
        let compiled = tokio::task::spawn_blocking(move || -> Result<Compiled, FlagError> {
            let features: ClientFeatures =
                persist::parse_features(&compile_body, Path::new("GET /api/client/features"))?;
            Ok(Compiled::compile(&features))
        })
        .await
        .map_err(|e| FlagError::Http(format!("compile task failed: {e}")))??;
        let killed = self
            .read_kill_switch()
            .unwrap_or_else(|_| (*self.handle.shared.state.load().killed).clone());
        self.install(
            Some(compiled),
            killed,
            StateSource::Server,
            etag.clone(),
            fetched_at,
        )?;
        {
            let mut health = self
                .handle
                .shared
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            health.consecutive_failures = 0;
            health.last_error = None;
        }
        if let Some(path) = backup {
            let path = path.to_path_buf();
            let write = tokio::task::spawn_blocking(move || {
                persist::write_backup(&path, &body, etag.as_deref(), fetched_at)
            });
            match write.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::error!(target: "cloud_flags", error = %err, "cannot persist last-known-good state")
                }
                Err(err) => {
                    tracing::error!(target: "cloud_flags", error = %err, "backup task failed")
                }
            }
        }
        Ok(())
    }

    fn read_kill_switch(&self) -> Result<BTreeSet<String>, String> {
        self.handle.shared.kill_switch.read().inspect_err(|err| {
            tracing::error!(target: "cloud_flags", error = %err, "cannot read kill switch; keeping the previous set");
        })
    }

    /// Re-reads the kill switch (env var and file) and installs it if it changed; returns the
    /// audit records of the change.
    pub fn reload_kill_switch(&self) -> Result<Vec<AuditRecord>, FlagError> {
        let Ok(killed) = self.read_kill_switch() else {
            return Ok(vec![]);
        };
        let state = self.handle.shared.state.load_full();
        if *state.killed == killed {
            return Ok(vec![]);
        }
        let now = self.handle.shared.clock.now();
        let at = state.fetched_at.unwrap_or(now);
        self.install(
            None,
            killed,
            StateSource::KillSwitch,
            state.etag.clone(),
            at,
        )
    }

    /// Replaces the whole state with a features document (e.g. a re-read bootstrap file);
    /// returns the audit records of the change.
    pub fn apply_features_json(&self, body: &[u8]) -> Result<Vec<AuditRecord>, FlagError> {
        let features = persist::parse_features(body, Path::new("<memory>"))?;
        let compiled = Compiled::compile(&features);
        let killed = (*self.handle.shared.state.load().killed).clone();
        let now = self.handle.shared.clock.now();
        self.install(Some(compiled), killed, StateSource::Bootstrap, None, now)
    }

    /// Swaps in a new state (or only a new kill-switch set), audits the differences.
    fn install(
        &self,
        compiled: Option<Compiled>,
        killed: BTreeSet<String>,
        source: StateSource,
        etag: Option<String>,
        fetched_at: OffsetDateTime,
    ) -> Result<Vec<AuditRecord>, FlagError> {
        let shared = &self.handle.shared;
        let _guard = shared
            .install_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let current = shared.state.load_full();
        let compiled = compiled.unwrap_or_else(|| current.compiled());
        let killed = Arc::new(killed);
        let meta = if source == StateSource::KillSwitch {
            (current.source, current.etag.clone(), current.fetched_at)
        } else {
            (Some(source), etag.clone(), Some(fetched_at))
        };
        let new_state = FlagState::build(&compiled, killed.clone(), &shared.counters, meta, true);
        let now = shared.clock.now();

        let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: BTreeSet<&String> = live.keys().collect();
        names.extend(compiled.definitions.keys());
        names.extend(killed.iter());
        let mut pending = vec![];
        let mut next_live = live.clone();
        for name in names {
            let (old_def, old_killed) = live.get(name).cloned().unwrap_or((None, false));
            let new_def = compiled.definitions.get(name);
            let new_killed = killed.contains(name);
            let mut changes = diff(old_def.as_ref(), new_def);
            if old_killed != new_killed {
                changes.push(if new_killed {
                    ChangeKind::KillSwitchOn
                } else {
                    ChangeKind::KillSwitchOff
                });
            }
            if changes.is_empty() {
                continue;
            }
            pending.push(PendingRecord {
                time: now,
                flag: name.clone(),
                changes,
                old_hash: old_def.as_ref().map(|d| d.hash.clone()),
                new_hash: new_def.map(|d| d.hash.clone()),
                source,
                etag: etag.clone(),
                fetched_at,
                killed: new_killed,
                definition: new_def.map(|d| d.value.clone()),
            });
            if new_def.is_none() && !new_killed {
                next_live.remove(name);
            } else {
                next_live.insert(name.clone(), (new_def.cloned(), new_killed));
            }
        }
        // Written ahead: an evaluation that sees the new state finds its record in the log. A
        // failed append still installs the state (flags must follow the server) and is returned.
        let records = shared.audit.append(pending);
        shared.state.store(Arc::new(new_state));
        *live = next_live;
        records
    }

    // ---------------------------------------------------------------- evaluation (hot path)

    /// Whether `flag` is on for `ctx`. Unknown flags, killed flags and a client with no state
    /// yet answer `false`.
    #[inline]
    pub fn is_enabled(&self, flag: impl AsRef<str>, ctx: &FlagContext) -> bool {
        let flag = flag.as_ref();
        let shared = &self.handle.shared;
        let state = shared.state.load();
        let enabled = match state.slots.get(flag) {
            Some(slot) => {
                let enabled = !slot.killed && state.engine.is_enabled(&slot.engine_flag, flag, ctx);
                slot.enabled_counter.record(enabled);
                if slot.impression {
                    self.impression(ImpressionKind::IsEnabled, flag, enabled, None, ctx);
                }
                enabled
            }
            None => {
                shared.counters.get(flag, NO_VARIANT).record(false);
                false
            }
        };
        tracing::event!(
            target: EVALUATION_TARGET,
            tracing::Level::DEBUG,
            feature_flag.key = flag,
            feature_flag.variant = if enabled { "true" } else { "false" },
            feature_flag.provider_name = PROVIDER_NAME,
            "feature_flag.evaluation"
        );
        enabled
    }

    /// The variant of `flag` for `ctx` ([`Variant::disabled`] when off, killed or unknown).
    #[inline]
    pub fn variant(&self, flag: impl AsRef<str>, ctx: &FlagContext) -> Variant {
        let flag = flag.as_ref();
        let shared = &self.handle.shared;
        let state = shared.state.load();
        let variant = match state.slots.get(flag) {
            Some(slot) => {
                let variant = if slot.killed {
                    Variant::disabled()
                } else {
                    Variant::from_engine(state.engine.variant(&slot.engine_flag, flag, ctx))
                };
                if !variant.enabled && variant.name == DISABLED_VARIANT {
                    slot.disabled_counter.record(variant.feature_enabled);
                } else {
                    match slot
                        .variant_counters
                        .iter()
                        .find(|(name, _)| **name == *variant.name)
                    {
                        Some((_, counter)) => counter.record(variant.feature_enabled),
                        None => shared
                            .counters
                            .get(flag, &variant.name)
                            .record(variant.feature_enabled),
                    }
                }
                if slot.impression {
                    self.impression(
                        ImpressionKind::GetVariant,
                        flag,
                        variant.feature_enabled,
                        Some(&variant.name),
                        ctx,
                    );
                }
                variant
            }
            None => {
                let variant = Variant::disabled();
                shared.counters.get(flag, &variant.name).record(false);
                variant
            }
        };
        tracing::event!(
            target: EVALUATION_TARGET,
            tracing::Level::DEBUG,
            feature_flag.key = flag,
            feature_flag.variant = %variant.name,
            feature_flag.provider_name = PROVIDER_NAME,
            "feature_flag.evaluation"
        );
        variant
    }

    #[cold]
    fn impression(
        &self,
        kind: ImpressionKind,
        flag: &str,
        enabled: bool,
        variant: Option<&str>,
        ctx: &FlagContext,
    ) {
        let event = ImpressionEvent {
            event_id: uuid::Uuid::new_v4(),
            event_type: kind,
            flag: flag.to_string(),
            enabled,
            variant: variant.map(str::to_string),
            user_id: ctx.user_id().map(str::to_string),
            tenant_id: ctx.tenant_id().map(str::to_string),
            session_id: ctx.session_id().map(str::to_string),
            time: self.handle.shared.clock.now(),
        };
        tracing::info!(
            target: IMPRESSION_TARGET,
            event_id = %event.event_id,
            event_type = ?event.event_type,
            flag = %event.flag,
            enabled = event.enabled,
            variant = event.variant.as_deref().unwrap_or(""),
            tenant_id = event.tenant_id.as_deref().unwrap_or(""),
            "feature flag impression"
        );
        let _ = self.handle.shared.impressions.send(event);
    }

    /// Evaluates every known flag whose name starts with `prefix` (e.g. `"frontend."` for the
    /// flags `/bff/v1/session` hands to the browser), sorted by name.
    pub fn evaluate_prefix(&self, prefix: &str, ctx: &FlagContext) -> Vec<EvaluatedFlag> {
        let names: Vec<String> = self
            .flag_names()
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        names
            .into_iter()
            .map(|name| {
                let enabled = self.is_enabled(&name, ctx);
                let variant = self.variant(&name, ctx);
                EvaluatedFlag {
                    name,
                    enabled,
                    variant,
                }
            })
            .collect()
    }

    /// Whether the current state defines `flag`.
    pub fn knows(&self, flag: impl AsRef<str>) -> bool {
        self.handle
            .shared
            .state
            .load()
            .slots
            .contains_key(flag.as_ref())
    }

    /// The names of every flag in the current state, sorted.
    pub fn flag_names(&self) -> Vec<String> {
        self.handle
            .shared
            .state
            .load()
            .definitions
            .keys()
            .cloned()
            .collect()
    }

    /// Impression events of flags with `impressionData: true`.
    pub fn subscribe_impressions(&self) -> broadcast::Receiver<ImpressionEvent> {
        self.handle.shared.impressions.subscribe()
    }

    // ---------------------------------------------------------------- operations

    /// Whether a state is loaded.
    pub fn is_ready(&self) -> bool {
        self.handle.shared.state.load().loaded
    }

    pub fn status(&self) -> FlagStatus {
        let state = self.handle.shared.state.load();
        let health = self
            .handle
            .shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        FlagStatus {
            ready: state.loaded,
            source: state.source,
            etag: state.etag.clone(),
            fetched_at: state.fetched_at,
            flags: state.definitions.len(),
            killed: state.killed.iter().cloned().collect(),
            consecutive_failures: health.consecutive_failures,
            last_error: health.last_error.clone(),
            backup_error: health.backup_error.clone(),
        }
    }

    /// A readiness check for `cloud_kit::Readiness::add_check("feature_flags", ...)`: ready
    /// once a state is loaded.
    pub fn readiness_check(
        &self,
    ) -> impl Fn() -> std::future::Ready<Result<(), String>> + Send + Sync + 'static + use<> {
        let shared = Arc::downgrade(&self.handle.shared);
        move || {
            std::future::ready(match shared.upgrade() {
                Some(s) if s.state.load().loaded => Ok(()),
                Some(_) => Err("no feature flag state loaded yet (server unreachable and no backup or bootstrap)".into()),
                None => Err("feature flag client stopped".into()),
            })
        }
    }

    /// Registers `feature_flag_evaluations_total{flag,variant,enabled}` in a service's registry:
    /// `metrics.register(|reg| client.register_metrics(reg))`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(EvaluationCollector(
            self.handle.shared.counters.clone(),
        )));
    }
}

// -------------------------------------------------------------------- HTTP

#[derive(Debug)]
struct Api {
    http: reqwest::Client,
    features: url::Url,
    register: url::Url,
    metrics: url::Url,
    token: secrecy::SecretString,
    app_name: String,
    instance_id: String,
    connection_id: String,
    refresh_ms: u128,
    metrics_ms: u128,
    started: OffsetDateTime,
}

impl Api {
    fn new(config: &UnleashConfig, http: reqwest::Client) -> Result<Self, FlagError> {
        let mut base = config.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let join = |p: &str| {
            base.join(p)
                .map_err(|e| FlagError::Config(format!("url {}: {e}", config.url)))
        };
        Ok(Self {
            http,
            features: join("client/features")?,
            register: join("client/register")?,
            metrics: join("client/metrics")?,
            token: config.token.clone(),
            app_name: config.app_name.clone(),
            instance_id: config.instance_id.clone(),
            connection_id: uuid::Uuid::new_v4().to_string(),
            refresh_ms: config.refresh_interval.as_millis(),
            metrics_ms: config.metrics_interval.as_millis(),
            started: OffsetDateTime::now_utc(),
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: &url::Url,
        interval_ms: u128,
    ) -> reqwest::RequestBuilder {
        let mut auth = reqwest::header::HeaderValue::from_str(self.token.expose_secret())
            .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("invalid-token"));
        auth.set_sensitive(true);
        self.http
            .request(method, url.clone())
            .header(reqwest::header::AUTHORIZATION, auth)
            .header("unleash-appname", &self.app_name)
            .header("unleash-instanceid", &self.instance_id)
            .header("unleash-connection-id", &self.connection_id)
            .header("unleash-sdk", SDK_NAME)
            .header("unleash-interval", interval_ms.to_string())
    }

    /// `None` on 304 Not Modified; otherwise the body and the ETag.
    async fn fetch_features(
        &self,
        etag: Option<&str>,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, FlagError> {
        let mut req = self.request(reqwest::Method::GET, &self.features, self.refresh_ms);
        if let Some(etag) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| FlagError::Http(e.without_url().to_string()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(FlagError::Status {
                what: "GET client/features",
                status: status.as_u16(),
            });
        }
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .bytes()
            .await
            .map_err(|e| FlagError::Http(e.without_url().to_string()))?;
        Ok(Some((body.to_vec(), etag)))
    }

    async fn post(
        &self,
        url: &url::Url,
        what: &'static str,
        body: &serde_json::Value,
    ) -> Result<(), FlagError> {
        let resp = self
            .request(reqwest::Method::POST, url, self.metrics_ms)
            .json(body)
            .send()
            .await
            .map_err(|e| FlagError::Http(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(FlagError::Status {
                what,
                status: resp.status().as_u16(),
            });
        }
        Ok(())
    }

    async fn register(&self) -> Result<(), FlagError> {
        let body = serde_json::json!({
            "appName": self.app_name,
            "instanceId": self.instance_id,
            "connectionId": self.connection_id,
            "sdkVersion": SDK_NAME,
            "strategies": known_strategies(),
            "started": rfc3339(self.started),
            "interval": self.metrics_ms,
            "platformName": "rust",
            "yggdrasilVersion": crate::engine::SUPPORTED_SPEC_VERSION,
            "specVersion": crate::engine::SUPPORTED_SPEC_VERSION,
        });
        self.post(&self.register, "POST client/register", &body)
            .await
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn report_metrics(
    shared: Arc<Shared>,
    api: Arc<Api>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut registered = false;
    let mut posted: HashMap<(String, String), (u64, u64)> = HashMap::new();
    let mut bucket_start = shared.clock.now();
    loop {
        if !registered {
            match api.register().await {
                Ok(()) => registered = true,
                Err(err) => {
                    tracing::warn!(target: "cloud_flags", error = %err, "client registration failed; will retry")
                }
            }
        }
        let stop = tokio::select! {
            () = cancel.cancelled() => true,
            () = tokio::time::sleep(every) => false,
        };
        let snapshot = shared.counters.snapshot();
        let usage = usage_between(&posted, &snapshot);
        if !usage.is_empty() {
            let now = shared.clock.now();
            let toggles: serde_json::Map<String, serde_json::Value> = usage
                .iter()
                .map(|(flag, u)| {
                    (
                        flag.clone(),
                        serde_json::json!({ "yes": u.yes, "no": u.no, "variants": u.variants }),
                    )
                })
                .collect();
            let body = serde_json::json!({
                "appName": api.app_name,
                "instanceId": api.instance_id,
                "connectionId": api.connection_id,
                "sdkVersion": SDK_NAME,
                "platformName": "rust",
                "bucket": { "start": rfc3339(bucket_start), "stop": rfc3339(now), "toggles": toggles },
            });
            match api.post(&api.metrics, "POST client/metrics", &body).await {
                Ok(()) => {
                    posted = snapshot
                        .into_iter()
                        .map(|(f, v, on, off)| ((f, v), (on, off)))
                        .collect();
                    bucket_start = now;
                }
                // Not marking the counts as posted: the next bucket carries them.
                Err(err) => {
                    tracing::warn!(target: "cloud_flags", error = %err, "posting usage metrics failed; will retry")
                }
            }
        }
        if stop {
            return;
        }
    }
}

/// Used by the CLI and tests: the path of a bootstrap file relative to this crate.
pub fn bundled_bootstrap_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bootstrap/local-flags.json")
}
