//! Drill 1 of issue 9: a rolling update under load, from the previous release (OLD) to this
//! build (NEW), behind a real load balancer.
//!
//! Two identity and two gateway replicas behind Debian's nginx (see `nginx.rs`), sharing a
//! private PostgreSQL and Redis. Load runs through nginx the whole time: gateway requests with a
//! real `client_credentials` token, token requests and audited admin writes to identity. Then,
//! as Kubernetes and the charts would do it: NEW's `migrate` runs first (the chart's PreSync Job)
//! while the OLD replicas serve; then one replica at a time gets SIGTERM, fails readiness, drains
//! and exits, and its NEW replacement starts and becomes ready before the next one is replaced
//! (the charts' `maxUnavailable: 1` on two replicas). Afterwards the data is checked.
//!
//! OLD is the commit in `previous-release.txt`; `cargo xtask drills` builds its two binaries
//! (cached by SHA) and passes their directory as `CLOUD_DRILLS_PREVIOUS_BIN_DIR`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use cloud_test_support::process::ServiceProcess;
use nix::sys::signal::Signal;

use crate::drills::{
    AUDIENCE, BOOTSTRAP_CLIENT, Row, Settings, Verdict, describe, failure_samples, secret, secs,
    start_service_with_args,
};
use crate::infra::{
    Binaries, PrivatePostgres, PrivateRedis, free_port, spawn_upstream, wait_for_status,
};
use crate::load::{Bounds, Load, Outcome, Record, Summary};
use crate::nginx::{Nginx, Upstream, parse_access_log};

/// The previous release's commit, with the comment saying why it is that one.
const PREVIOUS_RELEASE: &str = include_str!("../previous-release.txt");

/// The services' drain period, as the charts set it (`config.server.drain_period`).
const DRAIN_PERIOD: &str = "5s";
/// The charts' `terminationGracePeriodSeconds`: a replica still running after this is killed.
const TERMINATION_GRACE: Duration = Duration::from_secs(45);
/// How long a new replica may take to become ready (the charts' startup probe allows 60 s).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The whole roll's bound (about 40 s when every replica behaves), so that the drill fits the
/// drills' time budget even when a replica hangs in its shutdown.
const ROLL_TIMEOUT: Duration = Duration::from_secs(180);
/// Load before the roll starts and after it ends.
const STEADY: Duration = Duration::from_secs(3);

/// The SHA in `previous-release.txt`: its first line that is neither empty nor a `#` comment.
pub fn previous_release_sha(text: &str) -> Result<&str> {
    let sha = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .context("previous-release.txt names no commit")?;
    if sha.len() != 40 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("previous-release.txt: {sha:?} is not a full 40-digit commit SHA");
    }
    Ok(sha)
}

fn previous_binaries() -> Result<Binaries> {
    let dir = std::env::var_os("CLOUD_DRILLS_PREVIOUS_BIN_DIR")
        .map(PathBuf::from)
        .context(
            "CLOUD_DRILLS_PREVIOUS_BIN_DIR is not set: `cargo xtask drills` builds the previous \
         release (crates/cloud-drills/previous-release.txt) and sets it",
        )?;
    let find = |name: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            bail!("{} is missing", path.display())
        }
    };
    Ok(Binaries {
        identity: find("cloud-identity-access")?,
        gateway: find("cloud-api-gateway-bff")?,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Identity,
    Gateway,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Gateway => "gateway",
        }
    }
}

/// Everything the replicas share: ports, config, secrets, the database.
struct Cluster {
    dir: tempfile::TempDir,
    pg: PrivatePostgres,
    identity_ports: [u16; 2],
    gateway_ports: [u16; 2],
    /// Identity's environment without the per-replica port and data dir.
    identity_env: Vec<(String, String)>,
    gateway_config: PathBuf,
    admin_secret: String,
    generation: std::sync::atomic::AtomicUsize,
}

impl Cluster {
    fn port(&self, kind: Kind, slot: usize) -> u16 {
        match kind {
            Kind::Identity => self.identity_ports[slot],
            Kind::Gateway => self.gateway_ports[slot],
        }
    }

    /// Starts one replica on its slot's fixed API port (the admin port is picked by the OS).
    async fn start(&self, bins: &Binaries, kind: Kind, slot: usize) -> Result<ServiceProcess> {
        let port = self.port(kind, slot).to_string();
        match kind {
            Kind::Identity => {
                let n = self
                    .generation
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let data = self.dir.path().join(format!("identity-{slot}-{n}"));
                std::fs::create_dir_all(&data)?;
                let mut env = self.identity_env.clone();
                env.push(("IDENTITY_SERVER__PORT".into(), port));
                env.push(("IDENTITY_DATA_DIR".into(), data.display().to_string()));
                start_service_with_args(&bins.identity, "IDENTITY", env, Vec::new()).await
            }
            Kind::Gateway => {
                let env = vec![
                    ("GATEWAY_SERVER__PORT".into(), port),
                    ("GATEWAY_SERVER__DRAIN_PERIOD".into(), DRAIN_PERIOD.into()),
                    ("GATEWAY_TELEMETRY__LOG_LEVEL".into(), "info".into()),
                ];
                start_service_with_args(
                    &bins.gateway,
                    "GATEWAY",
                    env,
                    vec!["--config".into(), self.gateway_config.display().to_string()],
                )
                .await
            }
        }
    }

    /// `cloud-identity-access <args>` with identity's configuration, as the chart's Job runs it.
    async fn identity_command(&self, binary: &Path, args: &[&str]) -> Result<CommandRun> {
        let started = Instant::now();
        std::fs::create_dir_all(self.dir.path().join("jobs"))?;
        let out = tokio::process::Command::new(binary)
            .args(args)
            .envs(
                self.identity_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .env("IDENTITY_DATA_DIR", self.dir.path().join("jobs"))
            .env("IDENTITY_TELEMETRY__LOG_FORMAT", "json")
            .output()
            .await
            .with_context(|| format!("cannot run {} {}", binary.display(), args.join(" ")))?;
        Ok(CommandRun {
            ok: out.status.success(),
            status: out.status.to_string(),
            // One line: the JSON report, pretty-printed by the command.
            stdout: String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            took: started.elapsed(),
        })
    }
}

struct CommandRun {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// "version name" of each migration in `field` (`applied`, `unknown`, ...) of a `migrate`
/// report; empty when the output is not one.
fn migrations(report: &str, field: &str) -> Vec<String> {
    let report: serde_json::Value = serde_json::from_str(report).unwrap_or_default();
    report[field]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| format!("{} {}", m["version"], m["name"].as_str().unwrap_or("?")))
        .collect()
}

impl CommandRun {
    fn summary(&self) -> String {
        let mut s = format!("{} in {}: {}", self.status, secs(self.took), self.stdout);
        if !self.ok {
            s.push_str(&format!(
                " stderr: {}",
                self.stderr.chars().take(400).collect::<String>()
            ));
        }
        s
    }
}

/// What one replacement measured.
struct Replacement {
    replica: String,
    /// "OLD -> NEW" (the roll) or "NEW -> OLD" (the rollback).
    phase: &'static str,
    old_pid: u32,
    sigterm_at: Duration,
    /// SIGTERM -> the old replica's `/readyz` answering 503.
    unready_after: Option<Duration>,
    /// SIGTERM -> the old process exited.
    exited_after: Duration,
    exit_status: String,
    exit_ok: bool,
    /// Spawn of the new process -> its "listening" log line.
    listening_after: Duration,
    /// Spawn of the new process -> its `/readyz` answering 200.
    ready_after: Duration,
    /// SIGTERM of the old replica -> the new one ready.
    replaced_in: Duration,
    /// Unix time of the SIGTERM (to find the drain's requests in nginx's log).
    sigterm_unix: f64,
    /// Unix time when the new replica was ready (to find its requests in nginx's log).
    ready_unix: f64,
    port: u16,
    new_sha: String,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The `git_sha` a replica's `GET /version` reports.
async fn git_sha(client: &reqwest::Client, process: &ServiceProcess) -> Result<String> {
    let body: serde_json::Value = client
        .get(process.url("/version"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .json()
        .await?;
    body["git_sha"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no git_sha in /version: {body}"))
}

/// Waits for a process to exit (at most `timeout`, the termination grace period).
async fn wait_exit(
    process: ServiceProcess,
    timeout: Duration,
) -> Result<(ServiceProcess, std::process::ExitStatus)> {
    tokio::task::spawn_blocking(move || {
        let mut process = process;
        let status = process.wait_exit(timeout);
        (process, status)
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "the replica did not exit within {timeout:?} of SIGTERM: {}",
            e.to_string().chars().take(500).collect::<String>()
        )
    })
}

/// Replaces the replica in `slot`: SIGTERM, readiness fails, drain, exit; then the NEW
/// replica starts on the same port and becomes ready.
async fn replace(
    cluster: &Cluster,
    client: &reqwest::Client,
    origin: Instant,
    replicas: &mut [Option<ServiceProcess>; 2],
    new: &Binaries,
    (kind, slot, phase): (Kind, usize, &'static str),
) -> Result<Replacement> {
    let old = replicas[slot]
        .take()
        .with_context(|| format!("{} replica {slot} is not running", kind.name()))?;
    let old_pid = old.pid();
    let readyz = old.admin_url("/readyz");
    let sigterm = Instant::now();
    let sigterm_at = origin.elapsed();
    let sigterm_unix = unix_now();
    old.signal(Signal::SIGTERM);
    // The admin listener stays up until the process ends, so the 503 can be seen.
    let unready_after = wait_for_status(client, &readyz, 503, Duration::from_secs(10))
        .await
        .ok();
    let (old, status) = wait_exit(old, TERMINATION_GRACE).await?;
    let exited_after = sigterm.elapsed();
    drop(old);
    let spawned = Instant::now();
    let process = cluster.start(new, kind, slot).await?;
    let listening_after = spawned.elapsed();
    wait_for_status(client, &process.admin_url("/readyz"), 200, READY_TIMEOUT).await?;
    let ready_after = spawned.elapsed();
    let replaced_in = sigterm.elapsed();
    let ready_unix = unix_now();
    let new_sha = git_sha(client, &process).await?;
    replicas[slot] = Some(process);
    Ok(Replacement {
        replica: format!("{}-{slot}", kind.name()),
        phase,
        old_pid,
        sigterm_at,
        unready_after,
        exited_after,
        exit_status: status.to_string(),
        exit_ok: status.success(),
        listening_after,
        ready_after,
        replaced_in,
        sigterm_unix,
        ready_unix,
        port: cluster.port(kind, slot),
        new_sha,
    })
}

fn bounds(rate: u32) -> Bounds {
    // A cap only: the loads are stopped once the roll is done.
    let max = Duration::from_secs(240);
    Bounds {
        rate_per_sec: rate.max(1),
        max_requests: u64::from(rate.max(1)) * max.as_secs(),
        max_duration: max,
        request_timeout: Duration::from_secs(10),
    }
}

/// A `client_credentials` token of the bootstrap admin client, through nginx.
async fn admin_token(client: &reqwest::Client, issuer: &str, secret: &str) -> Result<String> {
    let response = client
        .post(format!("{issuer}/oauth2/token"))
        .basic_auth(BOOTSTRAP_CLIENT, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .context("token request through nginx failed")?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.context("token response")?;
    body["access_token"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no access_token in the token response ({status}): {body}"))
}

/// Drill 1 of issue 9: OLD -> NEW rolling update of every replica under load.
pub async fn rolling_update(settings: &Settings) -> Result<Row> {
    let previous_sha = previous_release_sha(PREVIOUS_RELEASE)?;
    let old = previous_binaries()?;
    let new = settings.binaries.clone();
    let client = reqwest::Client::new();
    let dir = tempfile::Builder::new()
        .prefix("cloud-drills-rolling-")
        .tempdir()?;
    let pg = PrivatePostgres::start().await?;
    let redis = PrivateRedis::start().await?;
    let upstream = spawn_upstream().await?;
    let (lb_identity, lb_gateway) = (free_port()?, free_port()?);
    let identity_ports = [free_port()?, free_port()?];
    let gateway_ports = [free_port()?, free_port()?];
    let nginx = Nginx::start(&[
        Upstream {
            name: "identity",
            listen: lb_identity,
            servers: identity_ports.to_vec(),
        },
        Upstream {
            name: "gateway",
            listen: lb_gateway,
            servers: gateway_ports.to_vec(),
        },
    ])
    .await?;
    // Identity is reached through nginx, so that is its issuer, and where the gateways find its
    // discovery document and key set.
    let issuer = format!("http://127.0.0.1:{lb_identity}");
    let admin_secret = secret();
    let identity_env = vec![
        ("IDENTITY_DATABASE__URL".to_string(), pg.url()),
        ("IDENTITY_KEYS__ENCRYPTION_KEY".to_string(), secret()),
        (
            "IDENTITY_BOOTSTRAP__ADMIN_CLIENT_SECRET".to_string(),
            admin_secret.clone(),
        ),
        ("IDENTITY_ISSUER".to_string(), issuer.clone()),
        (
            "IDENTITY_SERVER__DRAIN_PERIOD".to_string(),
            DRAIN_PERIOD.to_string(),
        ),
        (
            "IDENTITY_TELEMETRY__LOG_LEVEL".to_string(),
            "info".to_string(),
        ),
    ];
    let gateway_config = dir.path().join("gateway.yaml");
    std::fs::write(
        &gateway_config,
        format!(
            "identity:\n  issuer_url: \"{issuer}\"\n  audience: {AUDIENCE}\n\
             redis: {{url: \"{}\", timeout: 100ms, retry_after: 1s}}\n\
             rate_limits:\n  drill: {{requests: 100000, period: 1s}}\n\
             routes:\n  api: {{path_prefix: /api/, rate_limit: drill, upstreams: [\"http://{upstream}\"]}}\n",
            redis.url()
        ),
    )
    .context("cannot write the gateway config")?;
    let cluster = Cluster {
        dir,
        pg,
        identity_ports,
        gateway_ports,
        identity_env,
        gateway_config,
        admin_secret,
        generation: std::sync::atomic::AtomicUsize::new(0),
    };

    // The previous release as it was deployed: its own PreSync migrate, then its replicas.
    let old_migrate = cluster
        .identity_command(&old.identity, &["migrate"])
        .await?;
    if !old_migrate.ok {
        bail!(
            "the previous release's migrate failed on an empty database: {}",
            old_migrate.summary()
        );
    }
    let mut identities: [Option<ServiceProcess>; 2] = [None, None];
    let mut gateways: [Option<ServiceProcess>; 2] = [None, None];
    for (kind, replicas) in [
        (Kind::Identity, &mut identities),
        (Kind::Gateway, &mut gateways),
    ] {
        for (slot, replica) in replicas.iter_mut().enumerate() {
            let p = cluster.start(&old, kind, slot).await?;
            wait_for_status(&client, &p.admin_url("/readyz"), 200, READY_TIMEOUT).await?;
            *replica = Some(p);
        }
    }
    let mut old_shas = Vec::new();
    for slot in 0..4 {
        let replica = if slot < 2 {
            &identities[slot]
        } else {
            &gateways[slot - 2]
        };
        if let Some(p) = replica {
            old_shas.push(git_sha(&client, p).await?);
        }
    }
    let token = admin_token(&client, &issuer, &cluster.admin_secret).await?;

    // Load through nginx: gateway requests with the token, token requests, audited admin writes.
    let rate = settings.rate;
    let origin = Instant::now();
    let gw_url = format!("http://127.0.0.1:{lb_gateway}/api/drill");
    let tok = token.clone();
    let gw = Load::start(
        origin,
        bounds(rate / 2),
        Arc::new(move |c, _| c.get(&gw_url).bearer_auth(&tok)),
    );
    let token_url = format!("{issuer}/oauth2/token");
    let secret_for_tokens = cluster.admin_secret.clone();
    let tokens = Load::start(
        origin,
        bounds(rate / 4),
        Arc::new(move |c, _| {
            c.post(&token_url)
                .basic_auth(BOOTSTRAP_CLIENT, Some(&secret_for_tokens))
                .form(&[("grant_type", "client_credentials")])
        }),
    );
    let tenants_url = format!("{issuer}/v1/tenants");
    let tok = token.clone();
    let writes = Load::start(
        origin,
        bounds(10),
        Arc::new(move |c, n| {
            c.post(&tenants_url)
                .bearer_auth(&tok)
                .json(&serde_json::json!({"name": format!("roll-{n}")}))
        }),
    );
    tokio::time::sleep(STEADY).await;

    // NEW's migrate while every OLD replica serves (the PreSync Job); then the OLD binary's
    // migrate against the migrated schema: what a rollback, or an OLD replica restarting
    // mid-roll, does at startup. Both must succeed while migrations are expand-only.
    let migrate_at = origin.elapsed();
    let new_migrate = cluster
        .identity_command(&new.identity, &["migrate"])
        .await?;
    let old_after_new = cluster
        .identity_command(&old.identity, &["migrate"])
        .await?;

    // The roll, then a rollback to OLD under the same load (what Argo CD does when a release
    // is reverted): it drains NEW's replicas behind nginx too, and starts OLD's against the
    // migrated database.
    let mut replacements = Vec::new();
    let mut roll_error = None;
    let roll_deadline = tokio::time::Instant::now() + ROLL_TIMEOUT;
    let mut rollback_at = None;
    let mut rollback_error_mark = 0;
    let steps = [
        (Kind::Identity, 0),
        (Kind::Identity, 1),
        (Kind::Gateway, 0),
        (Kind::Gateway, 1),
    ];
    let plan = steps
        .iter()
        .map(|&(k, s)| (k, s, "OLD -> NEW"))
        .chain(steps.iter().map(|&(k, s)| (k, s, "NEW -> OLD")));
    for (kind, slot, phase) in plan {
        if phase == "NEW -> OLD" && rollback_at.is_none() {
            tokio::time::sleep(STEADY).await;
            rollback_at = Some(origin.elapsed());
            rollback_error_mark = nginx.error_log().len();
        }
        let replicas = match kind {
            Kind::Identity => &mut identities,
            Kind::Gateway => &mut gateways,
        };
        let target = if phase == "OLD -> NEW" { &new } else { &old };
        let step = replace(
            &cluster,
            &client,
            origin,
            replicas,
            target,
            (kind, slot, phase),
        );
        match tokio::time::timeout_at(roll_deadline, step).await {
            Ok(Ok(r)) => replacements.push(r),
            Ok(Err(err)) => {
                roll_error = Some(format!("replacing {}-{slot}: {err:#}", kind.name()));
                break;
            }
            Err(_) => {
                roll_error = Some(format!(
                    "replacing {}-{slot}: the roll took longer than {ROLL_TIMEOUT:?}",
                    kind.name()
                ));
                break;
            }
        }
    }
    let roll_done_at = origin.elapsed();
    tokio::time::sleep(STEADY).await;
    let gw = gw.stop().await?;
    let tokens = tokens.stop().await?;
    let writes = writes.stop().await?;
    let access = parse_access_log(&nginx.access_log());
    let nginx_errors = nginx.error_log();
    nginx.stop().await;

    let (s_gw, s_tok, s_wr) = (Summary::of(&gw), Summary::of(&tokens), Summary::of(&writes));
    let mut details = vec![
        format!(
            "previous release {previous_sha} (OLD; /version said {}), NEW = this build",
            old_shas.join(", ")
        ),
        format!(
            "OLD migrate on the empty database (its own PreSync Job): {}",
            old_migrate.summary()
        ),
        format!(
            "NEW migrate at {} while the OLD replicas served (the PreSync Job): {}",
            secs(migrate_at),
            new_migrate.summary()
        ),
        format!(
            "OLD migrate against the migrated database (a rollback, or an OLD replica restarting mid-roll): {}",
            old_after_new.summary()
        ),
        format!(
            "gateway GET /api/ through nginx ({} req/s): {}",
            rate / 2,
            describe(&s_gw)
        ),
        format!(
            "POST /oauth2/token through nginx ({} req/s): {}",
            rate / 4,
            describe(&s_tok)
        ),
        format!(
            "POST /v1/tenants through nginx (10 req/s): {}",
            describe(&s_wr)
        ),
    ];
    for r in &replacements {
        details.push(format!(
            "{} {}: SIGTERM to pid {} at {}; /readyz 503 after {}; exited ({}) after {}; replacement listening {} and ready {} after its start; replaced in {} (SIGTERM -> replacement ready); replacement /version {}",
            r.phase,
            r.replica,
            r.old_pid,
            secs(r.sigterm_at),
            r.unready_after.map_or_else(|| "never".to_string(), secs),
            r.exit_status,
            secs(r.exited_after),
            secs(r.listening_after),
            secs(r.ready_after),
            secs(r.replaced_in),
            r.new_sha
        ));
    }
    details.push(format!(
        "roll and rollback done at {} ({} after the NEW migrate; rollback from {})",
        secs(roll_done_at),
        secs(roll_done_at.saturating_sub(migrate_at)),
        rollback_at.map_or_else(|| "never".to_string(), secs)
    ));
    // What nginx saw while NEW's replicas drained (the rollback): a connection a replica closed
    // under a request nginx had sent on it. Retried for a GET, a 502 for a POST.
    let new_drain_errors = nginx_errors
        .get(rollback_error_mark..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("prematurely closed") || l.contains("reset by peer"))
        .count();
    details.push(format!(
        "nginx errors \"upstream prematurely closed connection\" or \"reset by peer\" while NEW's replicas drained (the rollback): {new_drain_errors}"
    ));

    // nginx's view: requests it retried on the other replica, answers it made itself.
    let retried: Vec<_> = access.iter().filter(|l| l.upstreams.len() > 1).collect();
    let retried_posts = retried.iter().filter(|l| l.method == "POST").count();
    let nginx_5xx = access.iter().filter(|l| l.status >= 500).count();
    details.push(format!(
        "nginx: {} requests logged, {} retried on the other replica (passive health check; {retried_posts} of them POSTs, refused before anything was sent), {nginx_5xx} answered 5xx",
        access.len(),
        retried.len()
    ));
    let mut error_kinds: Vec<(String, usize)> = Vec::new();
    for line in nginx_errors.lines().filter(|l| l.contains("upstream")) {
        // "... [error] 123#123: *45 connect() failed (111: Connection refused) while connecting to upstream, client: ..."
        let kind = line
            .split_once(": *")
            .and_then(|(_, rest)| rest.split_once(' '))
            .map(|(_, rest)| rest.split(", client").next().unwrap_or(rest).to_string())
            .unwrap_or_else(|| line.to_string());
        match error_kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => error_kinds.push((kind, 1)),
        }
    }
    for (kind, n) in &error_kinds {
        details.push(format!("nginx error log: {n} x {kind}"));
    }
    let mut findings = Vec::new();
    for r in &replacements {
        let slot = format!(":{}", r.port);
        let drained = access
            .iter()
            .filter(|l| {
                l.at >= r.sigterm_unix
                    && l.at <= r.sigterm_unix + r.exited_after.as_secs_f64()
                    && l.upstreams.first().is_some_and(|a| a.ends_with(&slot))
            })
            .count();
        details.push(format!(
            "{} {}: nginx sent {drained} requests to the draining replica between its SIGTERM and its exit (answered during the drain, or refused and retried)",
            r.phase, r.replica
        ));
        let until = replacements
            .iter()
            .filter(|n| n.port == r.port && n.sigterm_unix > r.ready_unix)
            .map(|n| n.sigterm_unix)
            .fold(f64::INFINITY, f64::min);
        let served = access
            .iter()
            .filter(|l| {
                l.at >= r.ready_unix
                    && l.at < until
                    && l.upstreams.last().is_some_and(|a| a.ends_with(&slot))
            })
            .count();
        details.push(format!(
            "{} {}: the replacement served {served} requests through nginx after it was ready",
            r.phase, r.replica
        ));
        if served == 0 {
            findings.push(format!(
                "{} {}: nginx sent no request to the replacement after it became ready",
                r.phase, r.replica
            ));
        }
    }
    for (name, records) in [("gateway", &gw), ("token", &tokens), ("tenants", &writes)] {
        details.extend(
            failure_samples(records)
                .into_iter()
                .map(|f| format!("  {name} failure: {f}")),
        );
        let failed: Vec<&Record> = records
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Status(200..=299)))
            .collect();
        if !failed.is_empty() {
            let when: Vec<String> = failed
                .iter()
                .take(8)
                .map(|r| format!("{} ({:?})", secs(r.sent_at), r.outcome))
                .collect();
            details.push(format!(
                "  {name} failures sent at: {}{}",
                when.join(", "),
                if failed.len() > 8 { ", ..." } else { "" }
            ));
        }
    }

    // The data: each tenant the API said it created exists once with one audit event; none
    // exists for a request that failed; the audit chain has no gap and verifies.
    let data = crate::drills::reconcile_tenant_writes(&cluster.pg, "roll-", &writes)?;
    details.push(format!("database after the roll: {}", data.summary));
    let verify = cluster
        .identity_command(&new.identity, &["audit", "verify"])
        .await?;
    details.push(format!(
        "`cloud-identity-access audit verify` (NEW binary): {}",
        verify.summary()
    ));
    // The chain now holds events written by both releases; OLD, serving again after the
    // rollback, must verify it too (a field NEW records must stay out of the hash).
    let old_verify = cluster
        .identity_command(&old.identity, &["audit", "verify"])
        .await?;
    details.push(format!(
        "`cloud-identity-access audit verify` (OLD binary, after the rollback): {}",
        old_verify.summary()
    ));
    // The schema step the roll went through: what NEW's migrate applied while OLD served, which
    // OLD's migrate must then report as unknown and accept.
    let rolled_through = migrations(&new_migrate.stdout, "applied");
    let unknown_to_old = migrations(&old_after_new.stdout, "unknown");
    details.push(
        match cluster
            .pg
            .psql("SELECT count(request_id) || ' of ' || count(*) FROM audit_events")
        {
            Ok(counts) => format!(
                "audit events with a request id (written by NEW's replicas; OLD writes none): {}",
                counts.trim()
            ),
            Err(err) => format!("audit events with a request id: cannot count them: {err:#}"),
        },
    );
    details.push(if rolled_through.is_empty() {
        "schema change rolled through: none (OLD and NEW have the same migrations)".to_string()
    } else {
        format!(
            "schema change rolled through: {} (applied by NEW while OLD served; OLD's migrate then reported {} as unknown)",
            rolled_through.join(", "),
            unknown_to_old.join(", ")
        )
    });

    if let Some(err) = &roll_error {
        findings.push(format!("the roll did not finish: {err}"));
    }
    if replacements.len() != 2 * steps.len() && roll_error.is_none() {
        findings.push(format!(
            "{} of {} replacements done",
            replacements.len(),
            2 * steps.len()
        ));
    }
    if !new_migrate.ok {
        findings.push(format!(
            "NEW migrate failed against the previous release's database: {}",
            new_migrate.summary()
        ));
    }
    if !old_after_new.ok {
        findings.push(format!(
            "the OLD binary cannot start its migrate against the migrated database (rollback broken): {}",
            old_after_new.summary()
        ));
    }
    let short = &previous_sha[..12];
    if old_shas.iter().any(|s| s != short) {
        findings.push(format!(
            "the OLD replicas' /version is not the previous release {short}: {old_shas:?}"
        ));
    }
    for r in &replacements {
        if (r.phase == "OLD -> NEW") == (r.new_sha == short) {
            findings.push(format!(
                "{} {}: the replacement runs the wrong build ({})",
                r.phase, r.replica, r.new_sha
            ));
        }
        if r.unready_after.is_none() {
            findings.push(format!(
                "{} {}: /readyz never answered 503 after SIGTERM",
                r.phase, r.replica
            ));
        }
        if !r.exit_ok {
            findings.push(format!(
                "{} {}: the replica exited with {} after SIGTERM (not a clean drain)",
                r.phase, r.replica, r.exit_status
            ));
        }
    }
    for (name, s) in [("gateway", &s_gw), ("token", &s_tok), ("tenants", &s_wr)] {
        if s.failed() > 0 || s.lost > 0 {
            findings.push(format!(
                "{name} requests failed during the roll: {}",
                describe(s)
            ));
        }
    }
    findings.extend(data.problems);
    if !verify.ok {
        findings.push(format!("audit verify failed: {}", verify.summary()));
    }
    if !old_verify.ok {
        findings.push(format!(
            "the OLD binary's audit verify fails on the chain NEW wrote to (rollback broken): {}",
            old_verify.summary()
        ));
    }
    if new_migrate.ok && old_after_new.ok && unknown_to_old != rolled_through {
        findings.push(format!(
            "OLD's migrate reported {unknown_to_old:?} as unknown, not the migrations NEW applied ({rolled_through:?})"
        ));
    }
    if data.created == 0 {
        findings.push("no tenant was created: the drill did not exercise audit writes".into());
    }

    let sent = s_gw.sent + s_tok.sent + s_wr.sent;
    let failed = s_gw.failed() + s_tok.failed() + s_wr.failed();
    let lost = s_gw.lost + s_tok.lost + s_wr.lost;
    // The time each replacement took from its start to ready, per phase: slowest of the four.
    let slowest = |phase: &str| {
        replacements
            .iter()
            .filter(|r| r.phase == phase)
            .map(|r| r.ready_after)
            .max()
            .map_or_else(|| "n/a".to_string(), secs)
    };
    let recovery = format!(
        "ready after start: NEW <= {}, OLD again <= {}",
        slowest("OLD -> NEW"),
        slowest("NEW -> OLD")
    );
    Ok(Row {
        drill: "Rolling update OLD -> NEW -> OLD",
        sent,
        failed,
        lost,
        recovery,
        verdict: Verdict::of(&findings),
        details,
        findings,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_committed_previous_release_names_a_full_sha() {
        let sha = previous_release_sha(PREVIOUS_RELEASE).unwrap();
        assert_eq!(sha.len(), 40);
    }

    #[test]
    fn previous_release_skips_comments_and_rejects_short_shas() {
        let text = "# why\n\n  # more\n0123456789abcdef0123456789abcdef01234567\nignored\n";
        assert_eq!(
            previous_release_sha(text).unwrap(),
            "0123456789abcdef0123456789abcdef01234567"
        );
        assert!(previous_release_sha("# only a comment\n").is_err());
        assert!(previous_release_sha("626ba98\n").is_err());
    }
}
