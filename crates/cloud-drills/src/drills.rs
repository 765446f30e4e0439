//! The drills. Each starts its own processes, breaks one thing under load, measures, and returns a
//! [`Row`]: only figures it measured, and findings when a service misbehaved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cloud_test_support::process::ServiceProcess;
use nix::sys::signal::Signal;

use crate::infra::{
    Binaries, PrivatePostgres, PrivateRedis, spawn_upstream, start_service, wait_for_status,
};
use crate::load::{Bounds, Load, Outcome, Record, Summary};
use crate::refresh_chains;

/// One line of the table, plus what explains it.
#[derive(Debug, Clone)]
pub struct Row {
    pub drill: &'static str,
    pub sent: u64,
    pub failed: u64,
    pub lost: u64,
    pub recovery: String,
    pub verdict: Verdict,
    /// Measured details, printed under the table.
    pub details: Vec<String>,
    /// Service defects the drill showed (printed under the table, recorded in
    /// docs/reliability.md).
    pub findings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// The drill ran, and a service did not behave as the issue requires.
    Finding,
}

impl Verdict {
    /// PASS when the drill found nothing.
    pub fn of(findings: &[String]) -> Self {
        if findings.is_empty() {
            Self::Pass
        } else {
            Self::Finding
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pass => "PASS",
            Self::Finding => "FINDING",
        })
    }
}

/// Settings shared by every drill.
#[derive(Debug, Clone)]
pub struct Settings {
    pub binaries: Binaries,
    pub rate: u32,
    /// How long the broken dependency stays down.
    pub outage: Duration,
}

pub(crate) const BOOTSTRAP_CLIENT: &str = "platform-admin";
pub(crate) const AUDIENCE: &str = "cloud-platform";

pub(crate) fn secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// An identity process with the bootstrap admin client.
pub(crate) struct Identity {
    pub(crate) process: ServiceProcess,
    pub(crate) issuer: String,
    pub(crate) admin_secret: String,
    env: Vec<(String, String)>,
    _data: tempfile::TempDir,
}

impl Identity {
    /// `database_url`: `None` for embedded SQLite in a temp dir.
    pub(crate) async fn start(bin: &Binaries, database_url: Option<String>) -> Result<Self> {
        let data = tempfile::Builder::new()
            .prefix("cloud-drills-identity-")
            .tempdir()?;
        let admin_secret = secret();
        let mut env = vec![
            (
                "IDENTITY_DATA_DIR".to_string(),
                data.path().display().to_string(),
            ),
            (
                "IDENTITY_BOOTSTRAP__ADMIN_CLIENT_SECRET".to_string(),
                admin_secret.clone(),
            ),
            (
                "IDENTITY_TELEMETRY__LOG_LEVEL".to_string(),
                "info".to_string(),
            ),
            (
                "IDENTITY_SERVER__HEADER_READ_TIMEOUT".to_string(),
                format!("{}s", DRILL_HEADER_READ_TIMEOUT.as_secs()),
            ),
        ];
        if let Some(url) = database_url {
            env.push(("IDENTITY_DATABASE__URL".to_string(), url));
            // Required with PostgreSQL: there is no data dir to generate it into.
            env.push(("IDENTITY_KEYS__ENCRYPTION_KEY".to_string(), secret()));
        }
        let process = start_service(&bin.identity, "IDENTITY", env.clone()).await?;
        let issuer = format!("http://127.0.0.1:{}", process.port);
        Ok(Self {
            process,
            issuer,
            admin_secret,
            env,
            _data: data,
        })
    }

    /// A `client_credentials` access token of the bootstrap admin client (tenant `platform`).
    pub(crate) async fn admin_token(&self, client: &reqwest::Client) -> Result<String> {
        let response = client
            .post(format!("{}/oauth2/token", self.issuer))
            .basic_auth(BOOTSTRAP_CLIENT, Some(&self.admin_secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .context("token request failed")?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.context("token response")?;
        body["access_token"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no access_token in the token response ({status}): {body}"))
    }
}

/// `server.header_read_timeout` of the services the drills start: the hostile-input drill waits
/// for it to disconnect slow clients, and the 75 s default would make that wait long. A load
/// balancer in front of them (the rolling-update drill's nginx) must keep idle upstream
/// connections for less than this.
pub(crate) const DRILL_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway with one token-protected route `/api/` to `upstream`, a generous rate limit (the
/// load must never be limited: a 429 would be a failure), and an optional Redis; returned once
/// its `/readyz` answers 200.
pub(crate) async fn start_gateway(
    bin: &Binaries,
    issuer: &str,
    upstream: std::net::SocketAddr,
    redis: Option<String>,
    dir: &std::path::Path,
) -> Result<ServiceProcess> {
    let redis = redis.map_or_else(String::new, |url| {
        format!("redis: {{url: \"{url}\", timeout: 100ms, retry_after: 1s}}\n")
    });
    // A key-set refresh every second, so that an identity outage shows in the logs within
    // seconds rather than at the default 5 minutes.
    let yaml = format!(
        "identity:\n  issuer_url: \"{issuer}\"\n  audience: {AUDIENCE}\n  refresh_interval: 1s\n  min_refetch_interval: 1s\n  fetch_timeout: 500ms\n\
         {redis}\
         rate_limits:\n  drill: {{requests: 100000, period: 1s}}\n\
         routes:\n  api: {{path_prefix: /api/, rate_limit: drill, upstreams: [\"http://{upstream}\"]}}\n"
    );
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, yaml).context("cannot write the gateway config")?;
    let env = vec![
        (
            "GATEWAY_TELEMETRY__LOG_LEVEL".to_string(),
            "info".to_string(),
        ),
        (
            "GATEWAY_SERVER__HEADER_READ_TIMEOUT".to_string(),
            format!("{}s", DRILL_HEADER_READ_TIMEOUT.as_secs()),
        ),
    ];
    let gateway = start_service_with_args(
        &bin.gateway,
        "GATEWAY",
        env,
        vec!["--config".into(), path.display().to_string()],
    )
    .await?;
    // Ready = the key set is loaded; before that every token would get the (documented) 503.
    wait_for_status(
        &reqwest::Client::new(),
        &gateway.admin_url("/readyz"),
        200,
        Duration::from_secs(30),
    )
    .await?;
    Ok(gateway)
}

pub(crate) async fn start_service_with_args(
    binary: &std::path::Path,
    env_prefix: &'static str,
    env: Vec<(String, String)>,
    args: Vec<String>,
) -> Result<ServiceProcess> {
    let binary = binary.to_path_buf();
    let shown = binary.display().to_string();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ServiceProcess::start(&binary, env_prefix, &env, &args)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{shown} did not start: {e}"))
}

fn bounds(rate: u32, max: Duration) -> Bounds {
    Bounds {
        rate_per_sec: rate,
        max_requests: u64::from(rate) * max.as_secs().max(1),
        max_duration: max,
        request_timeout: Duration::from_secs(10),
    }
}

fn gateway_load(origin: Instant, gateway: &ServiceProcess, token: &str, b: Bounds) -> Load {
    let url = gateway.url("/api/drill");
    let token = token.to_string();
    Load::start(
        origin,
        b,
        Arc::new(move |client, _| client.get(&url).bearer_auth(&token)),
    )
}

async fn metrics(client: &reqwest::Client, process: &ServiceProcess) -> Result<String> {
    Ok(client
        .get(process.admin_url("/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await?
        .text()
        .await?)
}

/// The value of an unlabelled metric line `name value`.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (n, v) = line.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

pub(crate) fn describe(s: &Summary) -> String {
    format!(
        "sent {} ok {} 4xx {} (429: {}) 5xx {} other {} lost {}, slowest {}",
        s.sent,
        s.ok,
        s.status_4xx,
        s.status_429,
        s.status_5xx,
        s.status_other,
        s.lost,
        secs(s.max_latency)
    )
}

/// The distinct non-2xx answers (status and the start of the body), with counts.
pub(crate) fn failure_samples(records: &[Record]) -> Vec<String> {
    let mut seen: Vec<(String, u64)> = Vec::new();
    for r in records {
        let key = match (&r.outcome, &r.body) {
            (Outcome::Lost, _) => "no response".to_string(),
            (Outcome::Status(s), _) if (200..300).contains(s) => continue,
            (Outcome::Status(s), body) => {
                let body: String = body.as_deref().unwrap_or("").chars().take(160).collect();
                format!("{s} {body}")
            }
        };
        match seen.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => seen.push((key, 1)),
        }
    }
    seen.into_iter()
        .map(|(k, n)| format!("{n} x {k}"))
        .collect()
}

/// Drill 2 of issue 9: Redis dies under load and comes back.
pub async fn redis_outage(settings: &Settings) -> Result<Row> {
    let client = reqwest::Client::new();
    let dir = tempfile::Builder::new().prefix("cloud-drills-").tempdir()?;
    let mut redis = PrivateRedis::start().await?;
    let identity = Identity::start(&settings.binaries, None).await?;
    let upstream = spawn_upstream().await?;
    let gateway = start_gateway(
        &settings.binaries,
        &identity.issuer,
        upstream,
        Some(redis.url()),
        dir.path(),
    )
    .await?;
    let token = identity.admin_token(&client).await?;
    // The key the gateway's GCRA script writes for this tenant and policy: `<prefix>:{tenant:<tid>}:<policy>`
    // (the proxy keys limits by `tenant:<tid>`).
    let key = "gateway:rl:{tenant:platform}:drill";

    let origin = Instant::now();
    let total = Duration::from_secs(6) + settings.outage + Duration::from_secs(8);
    let load = gateway_load(origin, &gateway, &token, bounds(settings.rate, total));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = metrics(&client, &gateway).await?;
    let shared_before = redis.cli(&["EXISTS", key])? == "1";

    redis.kill();
    let killed_at = origin.elapsed();
    let mut fail_open_after = None;
    let mut ready_during = Vec::new();
    while origin.elapsed() < killed_at + settings.outage {
        let m = metrics(&client, &gateway).await?;
        if fail_open_after.is_none()
            && metric_value(&m, "gateway_ratelimit_redis_fallback") == Some(1.0)
        {
            fail_open_after = Some(origin.elapsed() - killed_at);
        }
        if let Ok(r) = client
            .get(gateway.admin_url("/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            ready_during.push(r.status().as_u16());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.restart().await?;
    let up_at = origin.elapsed();
    let mut shared_after = None;
    while origin.elapsed() < up_at + Duration::from_secs(10) {
        let m = metrics(&client, &gateway).await?;
        if metric_value(&m, "gateway_ratelimit_redis_fallback") == Some(0.0)
            && redis.cli(&["EXISTS", key])? == "1"
        {
            shared_after = Some(origin.elapsed() - up_at);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Shared again means every decision comes from Redis: the failure counter stands still.
    let failures_then = metric_value(
        &metrics(&client, &gateway).await?,
        "gateway_ratelimit_redis_failures_total",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failures_later = metric_value(
        &metrics(&client, &gateway).await?,
        "gateway_ratelimit_redis_failures_total",
    );
    let records = load.stop().await?;
    let s = Summary::of(&records);
    let log = gateway.stderr_text();
    let warned = log.contains("redis is unreachable; rate limits fail open");
    let back = log.contains("redis is reachable again");

    let mut details = vec![
        format!(
            "load through the gateway at {} req/s: {}",
            settings.rate,
            describe(&s)
        ),
        format!(
            "Redis killed (SIGKILL) at {}, restarted on the same port at {} ({} down)",
            secs(killed_at),
            secs(up_at),
            secs(up_at - killed_at)
        ),
        format!("shared limits before the outage (GCRA key in Redis): {shared_before}"),
        match fail_open_after {
            Some(d) => format!(
                "gateway_ratelimit_redis_fallback became 1 {} after the kill",
                secs(d)
            ),
            None => "gateway_ratelimit_redis_fallback never became 1".into(),
        },
        format!("fail-open warning logged: {warned}; \"reachable again\" logged: {back}"),
        format!(
            "gateway_ratelimit_redis_failures_total: before {:?}, after recovery {:?}, 2 s later {:?}",
            metric_value(&before, "gateway_ratelimit_redis_failures_total"),
            failures_then,
            failures_later
        ),
    ];
    details.extend(
        failure_samples(&records)
            .into_iter()
            .map(|f| format!("failure: {f}")),
    );
    let mut findings = Vec::new();
    let not_ready = ready_during.iter().filter(|s| **s == 503).count();
    details.push(format!(
        "gateway /readyz during the outage: {} polls, {} answered 503",
        ready_during.len(),
        not_ready
    ));
    if not_ready > 0 {
        findings.push(format!(
            "gateway /readyz answers 503 while Redis is down ({not_ready} of {} polls): the gateway \
             serves fine with in-process limits, but a Kubernetes Service would take every gateway \
             replica out of its endpoints at once, turning a Redis outage into a full outage. The \
             `redis` readiness check should be informational (a metric), not a readiness gate.",
            ready_during.len()
        ));
    }
    let recovered = shared_after.is_some() && failures_then == failures_later;
    let ok = s.status_5xx == 0
        && s.failed() == 0
        && s.lost == 0
        && fail_open_after.is_some()
        && warned
        && recovered
        && shared_before;
    Ok(Row {
        drill: "Redis outage",
        sent: s.sent,
        failed: s.failed(),
        lost: s.lost,
        recovery: shared_after.map_or_else(
            || "not recovered in 10 s".into(),
            |d| format!("{} (Redis up -> shared limits)", secs(d)),
        ),
        verdict: if ok && findings.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Finding
        },
        details,
        findings,
    })
}

/// Drill 4 of issue 9: every identity process dies; the gateway keeps validating.
pub async fn identity_outage(settings: &Settings) -> Result<Row> {
    let client = reqwest::Client::new();
    let dir = tempfile::Builder::new().prefix("cloud-drills-").tempdir()?;
    let mut identity = Identity::start(&settings.binaries, None).await?;
    let upstream = spawn_upstream().await?;
    let gateway = start_gateway(
        &settings.binaries,
        &identity.issuer,
        upstream,
        None,
        dir.path(),
    )
    .await?;
    let token = identity.admin_token(&client).await?;

    let origin = Instant::now();
    let total = Duration::from_secs(5) + settings.outage;
    let load = gateway_load(origin, &gateway, &token, bounds(settings.rate, total));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log_before = gateway
        .stderr_text()
        .matches("refreshing the identity key set failed")
        .count();
    identity.process.signal(Signal::SIGKILL);
    let killed_at = origin.elapsed();
    let pid = identity.process.pid();
    let _ = tokio::task::block_in_place(|| identity.process.wait_exit(Duration::from_secs(5)));
    let mut logged_after = None;
    let mut ready_during = Vec::new();
    while origin.elapsed() < killed_at + settings.outage {
        if logged_after.is_none()
            && gateway
                .stderr_text()
                .matches("refreshing the identity key set failed")
                .count()
                > log_before
        {
            logged_after = Some(origin.elapsed() - killed_at);
        }
        if let Ok(r) = client
            .get(gateway.admin_url("/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            ready_during.push(r.status().as_u16());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = load.stop().await?;
    let after_kill: Vec<Record> = records
        .iter()
        .filter(|r| r.sent_at >= killed_at)
        .cloned()
        .collect();
    let s = Summary::of(&records);
    let s_after = Summary::of(&after_kill);
    let m = metrics(&client, &gateway).await?;
    // The metric must say that refreshes fail, not merely exist.
    let identity_metric = m
        .lines()
        .filter(|l| {
            l.strip_prefix("gateway_jwks_refresh_failures_total ")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        })
        .map(str::to_string)
        .collect::<Vec<_>>();
    let not_ready = ready_during.iter().filter(|s| **s != 200).count();
    let mut details = vec![
        format!(
            "load through the gateway at {} req/s: {}",
            settings.rate,
            describe(&s)
        ),
        format!(
            "identity (pid {pid}, the only replica) killed (SIGKILL) at {}; {} of load after that: {}",
            secs(killed_at),
            secs(settings.outage),
            describe(&s_after)
        ),
        match logged_after {
            Some(d) => format!(
                "gateway logged \"refreshing the identity key set failed; keeping the last good key set\" {} after the kill",
                secs(d)
            ),
            None => "gateway logged no key-set refresh failure".into(),
        },
        format!(
            "gateway /readyz during the outage: {} polls, {} not 200",
            ready_during.len(),
            not_ready
        ),
    ];
    details.extend(
        failure_samples(&records)
            .into_iter()
            .map(|f| format!("failure: {f}")),
    );
    let mut findings = Vec::new();
    if identity_metric.is_empty() {
        findings.push(
            "the gateway exports no metric for an unreachable identity / stale key set (its \
             gateway_jwks_refresh_failures_total did not rise); issue 9 drill 4 asks for a metric \
             and a log line, and only the log line exists"
                .to_string(),
        );
    } else {
        details.push(format!("identity metrics: {}", identity_metric.join("; ")));
    }
    let ok = s.failed() == 0
        && s.lost == 0
        && s_after.sent > 0
        && logged_after.is_some()
        && not_ready == 0;
    Ok(Row {
        drill: "Identity outage",
        sent: s.sent,
        failed: s.failed(),
        lost: s.lost,
        recovery: "n/a (nothing failed)".into(),
        verdict: if ok && findings.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Finding
        },
        details,
        findings,
    })
}

/// Drill 3 of issue 9: PostgreSQL dies under load and comes back.
pub async fn database_outage(settings: &Settings) -> Result<Row> {
    let client = reqwest::Client::new();
    let dir = tempfile::Builder::new().prefix("cloud-drills-").tempdir()?;
    let mut pg = PrivatePostgres::start().await?;
    let identity = Identity::start(&settings.binaries, Some(pg.url())).await?;
    let upstream = spawn_upstream().await?;
    let gateway = start_gateway(
        &settings.binaries,
        &identity.issuer,
        upstream,
        None,
        dir.path(),
    )
    .await?;
    wait_for_status(
        &client,
        &identity.process.admin_url("/readyz"),
        200,
        Duration::from_secs(30),
    )
    .await?;
    let token = identity.admin_token(&client).await?;
    // A user of a tenant of its own logs in several times (authorization code + PKCE through the
    // login form): the refresh-token chains that rotate through the outage.
    let chains_setup = refresh_chains::Setup::create(&identity.issuer, &token, upstream).await?;

    // Four streams: the gateway (token validation from cached keys), token requests,
    // introspections, and admin writes (each creates a tenant and its audit event); and the
    // refresh-token chains with login attempts (crate::refresh_chains).
    let rate = settings.rate;
    let origin = Instant::now();
    // A cap only: the loads are stopped once readiness is back and 5 s more have passed.
    let total = Duration::from_secs(4) + settings.outage + Duration::from_secs(45);
    let gw = gateway_load(origin, &gateway, &token, bounds(rate / 2, total));
    let token_url = identity.process.url("/oauth2/token");
    let secret = identity.admin_secret.clone();
    let tokens = Load::start(
        origin,
        bounds((rate / 4).max(1), total),
        Arc::new(move |c, _| {
            c.post(&token_url)
                .basic_auth(BOOTSTRAP_CLIENT, Some(&secret))
                .form(&[("grant_type", "client_credentials")])
        }),
    );
    let introspect_url = identity.process.url("/oauth2/introspect");
    let (secret, tok) = (identity.admin_secret.clone(), token.clone());
    let introspections = Load::start(
        origin,
        bounds((rate / 4).max(1), total),
        Arc::new(move |c, _| {
            c.post(&introspect_url)
                .basic_auth(BOOTSTRAP_CLIENT, Some(&secret))
                .form(&[("token", tok.as_str())])
        }),
    );
    let tenants_url = identity.process.url("/v1/tenants");
    let tok = token.clone();
    let writes = Load::start(
        origin,
        bounds(10, total),
        Arc::new(move |c, n| {
            c.post(&tenants_url)
                .bearer_auth(&tok)
                .json(&serde_json::json!({"name": format!("drill-{n}")}))
        }),
    );
    let chains = refresh_chains::start(&chains_setup, origin, total).await?;

    // Readiness is probed the whole time, every 100 ms, and each probe may take longer than the
    // chart's probe timeout so that the drill sees what /readyz answers and when.
    let prober = Prober::start(origin, identity.process.admin_url("/readyz"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    pg.stop().await?;
    let stopped_at = origin.elapsed();
    // One patient probe (10 s timeout), 1 s into the outage: what /readyz answers eventually.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let patient_started = Instant::now();
    let patient = client
        .get(identity.process.admin_url("/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16());
    let patient = format!(
        "one identity /readyz probe with a 10 s timeout, sent 1 s into the outage: {} after {}",
        patient.map_or_else(|_| "no answer".to_string(), |s| format!("answered {s}")),
        secs(patient_started.elapsed())
    );
    let remaining = (stopped_at + settings.outage).saturating_sub(origin.elapsed());
    tokio::time::sleep(remaining).await;
    // A probe can still be waiting for a connection (up to the pool's acquire timeout) when
    // PostgreSQL comes back, and then answers 200: only an answer before this moment is one
    // given while the database was down.
    let restarting_at = origin.elapsed();
    pg.restart().await?;
    let up_at = origin.elapsed();
    // Wait (bounded) for readiness to come back, then keep the load on to see the streams recover.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !prober.seen_ok_since(up_at) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let probes = prober.stop().await?;
    // A probe fails as the chart's readiness probe would: a status other than 200, or no answer
    // within its timeoutSeconds. Counted from the stop to when that probe failed.
    let probe_failed =
        |p: &Record| p.outcome != Outcome::Status(200) || p.latency > CHART_PROBE_TIMEOUT;
    let ready_503 = probes
        .iter()
        .find(|p| p.sent_at >= stopped_at && probe_failed(p))
        .map(|p| p.sent_at + p.latency.min(CHART_PROBE_TIMEOUT) - stopped_at);
    let first_503 = probes
        .iter()
        .find(|p| p.sent_at >= stopped_at && p.outcome == Outcome::Status(503))
        .map(|p| (p.sent_at + p.latency - stopped_at, p.latency));
    let ready_again = probes
        .iter()
        .filter(|p| p.sent_at < up_at || p.outcome != Outcome::Status(200))
        .map(|p| p.sent_at)
        .max()
        .and_then(|last_bad| {
            probes
                .iter()
                .find(|p| p.sent_at > last_bad && p.outcome == Outcome::Status(200))
        })
        .map(|p| (p.sent_at + p.latency).saturating_sub(up_at));
    let outage_probes = Summary::of(
        probes
            .iter()
            .filter(|p| p.sent_at >= stopped_at && p.sent_at < up_at),
    );

    let gw = gw.stop().await?;
    let tokens = tokens.stop().await?;
    let introspections = introspections.stop().await?;
    let writes = writes.stop().await?;
    // Stops the chains, rotates each once more and reconciles the families with PostgreSQL.
    let chains =
        refresh_chains::finish(chains, &chains_setup, &pg, origin, stopped_at, up_at).await?;

    // Recovery of a stream: from PostgreSQL being up to the first request after which every
    // request of the stream succeeded.
    let recovered = |records: &[Record]| -> Option<Duration> {
        let last_bad = records
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Status(200..=299)))
            .map(|r| r.sent_at)
            .max()?;
        let first_good = records
            .iter()
            .find(|r| r.sent_at > last_bad && matches!(r.outcome, Outcome::Status(200..=299)))?;
        Some(first_good.sent_at.checked_sub(up_at).unwrap_or_default())
    };
    let during = |records: &[Record]| -> Summary {
        Summary::of(
            records
                .iter()
                .filter(|r| r.sent_at >= stopped_at && r.sent_at < up_at),
        )
    };
    let (s_gw, s_tok, s_int, s_wr) = (
        Summary::of(&gw),
        Summary::of(&tokens),
        Summary::of(&introspections),
        Summary::of(&writes),
    );
    let mut details = vec![
        format!(
            "PostgreSQL stopped (pg_ctl -m immediate) at {}, started again at {} ({} down)",
            secs(stopped_at),
            secs(up_at),
            secs(up_at - stopped_at)
        ),
        match ready_503 {
            Some(d) => format!(
                "identity readiness failed (first probe answering non-200, or not within the chart's {} probe timeout) {} after the stop",
                secs(CHART_PROBE_TIMEOUT),
                secs(d)
            ),
            None => "no identity /readyz probe failed during the outage".into(),
        },
        match first_503 {
            Some((d, latency)) => format!(
                "the first identity /readyz 503 arrived {} after the stop (that probe took {})",
                secs(d),
                secs(latency)
            ),
            None => "identity /readyz never answered 503".into(),
        },
        format!(
            "identity /readyz probes during the outage (every 100 ms, {} client timeout): {} answered 200, {} answered 503, {} no answer; slowest {}; {} slower than the chart's probe timeout",
            secs(PROBE_TIMEOUT),
            outage_probes.ok,
            outage_probes.status_5xx,
            outage_probes.lost,
            secs(outage_probes.max_latency),
            probes
                .iter()
                .filter(|p| p.sent_at >= stopped_at
                    && p.sent_at < up_at
                    && p.latency > CHART_PROBE_TIMEOUT)
                .count()
        ),
        {
            // Sent during the outage and answered 200: when each was sent and answered.
            let ok_during: Vec<(Duration, Duration)> = probes
                .iter()
                .filter(|p| {
                    p.sent_at >= stopped_at
                        && p.sent_at < up_at
                        && p.outcome == Outcome::Status(200)
                })
                .map(|p| (p.sent_at - stopped_at, p.sent_at + p.latency - stopped_at))
                .collect();
            match (ok_during.first(), ok_during.last()) {
                (Some(first), Some(last)) => format!(
                    "{} identity /readyz probes sent during the outage ({} to {} after the stop) answered 200, {} to {} after the stop; PostgreSQL was started again {} after the stop",
                    ok_during.len(),
                    secs(first.0),
                    secs(last.0),
                    secs(ok_during.iter().map(|p| p.1).min().unwrap_or_default()),
                    secs(ok_during.iter().map(|p| p.1).max().unwrap_or_default()),
                    secs(restarting_at - stopped_at)
                ),
                _ => "no identity /readyz probe sent during the outage answered 200".into(),
            }
        },
        patient,
        match ready_again {
            Some(d) => format!(
                "identity /readyz answered 200 again {} after PostgreSQL was up, same process (no restart)",
                secs(d)
            ),
            None => "identity /readyz did not answer 200 within 30 s of PostgreSQL being up".into(),
        },
        format!(
            "gateway GET /api/ ({} req/s): {}",
            rate / 2,
            describe(&s_gw)
        ),
        format!(
            "POST /oauth2/token ({} req/s): {}",
            (rate / 4).max(1),
            describe(&s_tok)
        ),
        format!("  during the outage: {}", describe(&during(&tokens))),
        format!(
            "POST /oauth2/introspect ({} req/s): {}",
            (rate / 4).max(1),
            describe(&s_int)
        ),
        format!(
            "  during the outage: {}",
            describe(&during(&introspections))
        ),
        format!("POST /v1/tenants (10 req/s): {}", describe(&s_wr)),
        format!("  during the outage: {}", describe(&during(&writes))),
    ];
    details.extend(chains.details.iter().cloned());
    for (name, records) in [
        ("token", &tokens),
        ("introspect", &introspections),
        ("tenants", &writes),
        ("refresh", &chains.rotations),
        ("login", &chains.logins),
    ] {
        details.push(match recovered(records) {
            Some(d) if d.is_zero() => format!(
                "{name} requests: every one sent after PostgreSQL was up succeeded (and so did those still waiting for a connection then)"
            ),
            Some(d) => format!("{name} requests all succeed again from {} after PostgreSQL was up", secs(d)),
            None => format!("{name} requests: no failure to recover from, or never recovered"),
        });
        let samples = if name == "login" {
            refresh_chains::login_failure_samples(records)
        } else {
            failure_samples(records)
        };
        details.extend(
            samples
                .into_iter()
                .map(|f| format!("  {name} failure: {f}")),
        );
    }
    details.extend(
        failure_samples(&gw)
            .into_iter()
            .map(|f| format!("  gateway failure: {f}")),
    );

    // The data: each tenant the API said it created exists once with one audit event; no
    // tenant exists for a request that failed with a response; the chain verifies.
    let data = reconcile_tenant_writes(&pg, "drill-", &writes)?;
    let (status, verify_err) = {
        let env: Vec<(&str, &str)> = identity
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let out = std::process::Command::new(&settings.binaries.identity)
            .args(["audit", "verify"])
            .envs(env)
            .output()
            .context("cannot run cloud-identity-access audit verify")?;
        (
            out.status,
            format!(
                "{}{}",
                // One line: the JSON report, pretty-printed by the command.
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
                // Its stderr only when it failed: on success it holds sqlx's migration notices.
                if out.status.success() {
                    String::new()
                } else {
                    format!(" {}", String::from_utf8_lossy(&out.stderr).trim())
                }
            ),
        )
    };
    details.push(format!("database after the drill: {}", data.summary));
    details.push(format!(
        "`cloud-identity-access audit verify` (same config): {status}: {}",
        verify_err.chars().take(300).collect::<String>()
    ));

    let mut findings = Vec::new();
    let ready_while_down: Vec<Duration> = probes
        .iter()
        .filter(|p| {
            p.sent_at >= stopped_at
                && p.outcome == Outcome::Status(200)
                && p.sent_at + p.latency < restarting_at
        })
        .map(|p| p.sent_at + p.latency - stopped_at)
        .collect();
    if let (Some(first), Some(last)) = (ready_while_down.first(), ready_while_down.last()) {
        findings.push(format!(
            "identity /readyz answered 200 while PostgreSQL was down: {} probes, answered {} to {} \
             after the stop and before it was started again",
            ready_while_down.len(),
            secs(*first),
            secs(*last)
        ));
    }
    let tok_during = during(&tokens);
    let tok_500 = tokens
        .iter()
        .filter(|r| {
            matches!(
                r.outcome,
                Outcome::Status(500..=502) | Outcome::Status(504..=599)
            )
        })
        .count();
    if tok_500 > 0 {
        let mut waits: Vec<Duration> = tokens
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Status(500)))
            .map(|r| r.latency)
            .collect();
        waits.sort();
        let median = waits.get(waits.len() / 2).copied().unwrap_or_default();
        findings.push(format!(
            "POST /oauth2/token answers 500 server_error (not 503 temporarily_unavailable) while \
             PostgreSQL is down: {tok_500} of {} token requests ({} sent during the outage), each \
             after waiting {} (median; slowest {}) for a database connection; a client cannot tell \
             an outage from a bug, and the wait holds its connection",
            s_tok.sent,
            tok_during.sent,
            secs(median),
            secs(waits.last().copied().unwrap_or_default())
        ));
    }
    let other_500: Vec<String> = [
        ("introspect", &introspections),
        ("tenants", &writes),
        ("refresh", &chains.rotations),
        ("login", &chains.logins),
    ]
    .iter()
    .filter_map(|(name, recs)| {
        let n = recs
            .iter()
            .filter(|r| {
                matches!(
                    r.outcome,
                    Outcome::Status(500..=502) | Outcome::Status(504..=599)
                )
            })
            .count();
        (n > 0).then(|| format!("{name}: {n}"))
    })
    .collect();
    if !other_500.is_empty() {
        findings.push(format!(
            "other identity endpoints answer 500 (not 503) while PostgreSQL is down: {}",
            other_500.join(", ")
        ));
    }
    let hung = [
        &tokens,
        &introspections,
        &writes,
        &chains.rotations,
        &chains.logins,
    ]
    .iter()
    .map(|recs| Summary::of(recs.iter()).lost)
    .sum::<u64>();
    if hung > 0 {
        findings.push(format!(
            "{hung} identity requests got no response within 10 s (a hang or a dropped connection)"
        ));
    }
    match ready_503 {
        Some(d) if d <= Duration::from_secs(5) => {}
        Some(d) => findings.push(format!(
            "identity readiness took {} (> 5 s) to fail",
            secs(d)
        )),
        None => findings.push("identity /readyz never failed while PostgreSQL was down".into()),
    }
    if ready_again.is_none() {
        findings.push("identity did not become ready again without a restart".into());
    }
    findings.extend(data.problems);
    findings.extend(chains.findings);
    if !status.success() {
        findings.push(format!("audit verify failed after the drill: {verify_err}"));
    }
    if s_gw.failed() > 0 || s_gw.lost > 0 {
        findings.push(format!(
            "the gateway failed requests while PostgreSQL was down: {}",
            describe(&s_gw)
        ));
    }
    let (s_ref, s_login) = (Summary::of(&chains.rotations), Summary::of(&chains.logins));
    let sent = s_gw.sent + s_tok.sent + s_int.sent + s_wr.sent + s_ref.sent + s_login.sent;
    let failed = s_gw.failed()
        + s_tok.failed()
        + s_int.failed()
        + s_wr.failed()
        + s_ref.failed()
        + s_login.failed();
    let lost = s_gw.lost + s_tok.lost + s_int.lost + s_wr.lost + s_ref.lost + s_login.lost;
    let recovery = match (ready_again, recovered(&tokens)) {
        (Some(r), Some(t)) => format!("readyz {}, tokens {}", secs(r), secs(t)),
        (Some(r), None) => format!("readyz {}", secs(r)),
        _ => "not recovered".into(),
    };
    if !findings.is_empty() || ready_again.is_none() {
        return Ok(Row {
            drill: "Database outage",
            sent,
            failed,
            lost,
            recovery,
            verdict: Verdict::Finding,
            details,
            findings,
        });
    }
    if data.created == 0 {
        bail!("no tenant was created at all: the drill did not exercise audit writes");
    }
    Ok(Row {
        drill: "Database outage",
        sent,
        failed,
        lost,
        recovery,
        verdict: Verdict::Pass,
        details,
        findings,
    })
}

/// The drill's own readiness client timeout: above the service's 2 s check timeout, so that the
/// answer is seen.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// `probes.readiness.timeoutSeconds` in helm/cloud-identity-access/values.yaml.
const CHART_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes a readiness URL every 100 ms, like a kubelet, and records every probe.
struct Prober {
    load: Load,
    results: Arc<std::sync::Mutex<Vec<(Duration, bool)>>>,
}

impl Prober {
    fn start(origin: Instant, url: String) -> Self {
        let b = Bounds {
            rate_per_sec: 10,
            max_requests: 10 * 600,
            max_duration: Duration::from_secs(600),
            request_timeout: PROBE_TIMEOUT,
        };
        let results = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = results.clone();
        let load = Load::start_observed(
            origin,
            b,
            Arc::new(move |c, _| c.get(&url)),
            Arc::new(move |r: &Record| {
                if let Ok(mut v) = sink.lock() {
                    v.push((r.sent_at, r.outcome == Outcome::Status(200)));
                }
            }),
        );
        Self { load, results }
    }

    /// Whether a probe sent after `since` answered 200.
    fn seen_ok_since(&self, since: Duration) -> bool {
        self.results
            .lock()
            .is_ok_and(|v| v.iter().any(|(at, ok)| *at >= since && *ok))
    }

    async fn stop(self) -> Result<Vec<Record>> {
        self.load.stop().await
    }
}

/// What the database holds after a drill that created tenants under load, reconciled with what
/// the clients were told.
pub(crate) struct DataCheck {
    /// Tenants the API answered 201 for.
    pub(crate) created: u64,
    pub(crate) summary: String,
    /// Each one is a finding: data lost, duplicated or written for a failed request, or an audit
    /// chain whose events do not number 1..=head without gaps.
    pub(crate) problems: Vec<String>,
}

/// Reconciles the tenant writes of a drill (`POST /v1/tenants` with name `{prefix}{n}`) with the
/// database: each tenant the API said it created exists once with one `tenant.create` audit
/// event; none exists for a request that failed with a response (one without a response may go
/// either way: the client cannot know); and `audit_events` holds exactly the events 1..=head,
/// so none was lost or written twice.
pub(crate) fn reconcile_tenant_writes(
    pg: &PrivatePostgres,
    prefix: &str,
    writes: &[Record],
) -> Result<DataCheck> {
    let rows = pg.psql(&format!(
        "SELECT t.name, count(DISTINCT t.id), count(a.seq) FROM tenants t \
         LEFT JOIN audit_events a ON a.target = 'tenant:' || t.id AND a.action = 'tenant.create' \
         WHERE t.name LIKE '{prefix}%' GROUP BY t.name"
    ))?;
    let mut in_db = std::collections::HashMap::new();
    for line in rows.lines().filter(|l| !l.is_empty()) {
        if let [name, tenants, events] = line.split('|').collect::<Vec<_>>().as_slice() {
            in_db.insert(
                name.to_string(),
                (
                    tenants.parse::<u64>().unwrap_or(0),
                    events.parse::<u64>().unwrap_or(0),
                ),
            );
        }
    }
    let (mut created, mut ambiguous) = (0u64, 0u64);
    let (mut missing, mut duplicated, mut phantom) = (Vec::new(), Vec::new(), Vec::new());
    for r in writes {
        let name = format!("{prefix}{}", r.n);
        let found = in_db.get(&name).copied().unwrap_or((0, 0));
        match r.outcome {
            Outcome::Status(201) => {
                created += 1;
                if found == (0, 0) {
                    missing.push(name);
                } else if found != (1, 1) {
                    duplicated.push(format!("{name}: {} rows, {} events", found.0, found.1));
                }
            }
            Outcome::Status(_) => {
                if found != (0, 0) {
                    phantom.push(format!("{name}: {} rows, {} events", found.0, found.1));
                }
            }
            Outcome::Lost => ambiguous += 1,
        }
    }
    let seq = pg.psql(
        "SELECT count(*), coalesce(max(seq), 0), (SELECT seq FROM audit_head WHERE id = 1) FROM audit_events",
    )?;
    let counts: Vec<i64> = seq
        .split('|')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() || !duplicated.is_empty() || !phantom.is_empty() {
        problems.push(format!(
            "audit/data mismatch: missing {missing:?}, duplicated {duplicated:?}, created although failed {phantom:?}"
        ));
    }
    match counts.as_slice() {
        [count, max, head] if count == max && max == head => {}
        _ => problems.push(format!(
            "audit_events count|max(seq)|head seq = {seq}: an event was lost or duplicated"
        )),
    }
    Ok(DataCheck {
        created,
        summary: format!(
            "{created} tenants created with 201, {} missing, {} duplicated, {} created although the request failed, {ambiguous} without a response; audit_events count|max(seq)|head seq = {seq}",
            missing.len(),
            duplicated.len(),
            phantom.len()
        ),
        problems,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn metric_value_reads_only_the_exact_name() {
        let text = "# TYPE x gauge\ngateway_ratelimit_redis_fallback 1\ngateway_ratelimit_redis_fallback_other 5\nc_total 12\n";
        assert_eq!(
            metric_value(text, "gateway_ratelimit_redis_fallback"),
            Some(1.0)
        );
        assert_eq!(metric_value(text, "c_total"), Some(12.0));
        assert_eq!(metric_value(text, "missing"), None);
    }
}
