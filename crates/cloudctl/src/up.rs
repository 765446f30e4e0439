//! `cloudctl up`: the whole platform in one process on this machine, with embedded defaults
//! (SQLite under a data dir, no external servers). It is the platform's main job on a laptop:
//! the same `build(config)` the binaries and the tests use, started in order, each awaited until
//! its readiness check passes.
//!
//! Feature flags come from the bootstrap file that ships with the repo
//! (`crates/cloud-flags/bootstrap/local-flags.json`), unless the services' own `*_FLAGS__*`
//! variables name an Unleash server; flag changes are audited to `<data-dir>/flags/audit.log`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cloud_identity_access::demo::DemoSeed;
use cloud_kit::Shutdown;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directory for the embedded database and local state (created if missing).
    #[arg(long, default_value = ".data/cloudctl-up", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Gateway API port (0 picks a free port).
    #[arg(long, default_value_t = 8080)]
    pub gateway_port: u16,
    /// Gateway admin port (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, default_value_t = 9090)]
    pub gateway_admin_port: u16,
    /// Identity API port.
    #[arg(long, default_value_t = 8081)]
    pub identity_port: u16,
    /// Identity admin port.
    #[arg(long, default_value_t = 9091)]
    pub identity_admin_port: u16,
    /// Log filter for the services' logs on stderr, e.g. `info` or `debug`.
    #[arg(long, default_value = "warn")]
    pub log_level: String,
}

/// The demo route requires the audience identity puts in tokens when the client names none.
const DEMO_AUDIENCE: &str = cloud_identity_access::oauth::DEFAULT_AUDIENCE;
/// How long one service may take to become ready before `up` gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Local runs have no load balancer to drain: stop promptly on Ctrl-C.
const LOCAL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

pub fn run(args: UpArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(up(args))
}

async fn up(args: UpArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let flags_dir = args.data_dir.join("flags");
    let telemetry = cloud_kit::TelemetryConfig {
        log_format: cloud_kit::config::LogFormat::Pretty,
        log_level: args.log_level.clone(),
    };
    let _telemetry = cloud_kit::telemetry::init("cloudctl", &telemetry)?;
    let shutdown = Shutdown::new();
    let mut tasks = Vec::new();

    // Both services load the bundled bootstrap file, one after the other, into one audit log:
    // identity records the load, the gateway finds the log already matching and adds nothing.
    // That is safe because a bootstrap-only client never changes at runtime. A client polling
    // an Unleash server does, and two writers of one hash chain would break it, so a service
    // pointed at a server gets a log of its own.
    let gateway_env_flags = gateway_env_flags()?;
    let identity_env_flags = identity_env_flags()?;
    let identity_config = cloud_identity_access::Config {
        server: local_server(args.identity_port, args.identity_admin_port),
        telemetry: telemetry.clone(),
        data_dir: args.data_dir.join("identity"),
        flags: local_flags(
            identity_env_flags,
            &flags_dir,
            cloud_identity_access::SERVICE_NAME,
        ),
        ..cloud_identity_access::Config::default()
    };
    let identity_flags = identity_config.flags.clone();
    let started = progress(cloud_identity_access::SERVICE_NAME)?;
    let identity = cloud_identity_access::build(identity_config)
        .await
        .context("cannot start cloud-identity-access")?;
    let identity_urls = Urls::new(identity.port(), identity.admin_port());
    let issuer = identity.issuer().clone();
    let demo = cloud_identity_access::demo::seed(&identity)
        .await
        .context("cannot seed the demo tenant")?;
    tasks.push(tokio::spawn(
        identity
            .without_signals()
            .with_shutdown(shutdown.clone())
            .run_until_stopped(),
    ));
    wait_ready(cloud_identity_access::SERVICE_NAME, &identity_urls, started).await?;

    let upstream = cloud_api_gateway_bff::demo::spawn_named_upstream("stable", 0, shutdown.clone())
        .await
        .context("cannot start the demo upstream")?;
    let canary = cloud_api_gateway_bff::demo::spawn_named_upstream("canary", 0, shutdown.clone())
        .await
        .context("cannot start the demo canary upstream")?;
    let mut gateway_config = cloud_api_gateway_bff::Config::default()
        .with_demo_route(issuer.clone(), DEMO_AUDIENCE, upstream)
        .and_then(|c| c.with_demo_canary(canary))
        .context("cannot configure the demo route")?;
    gateway_config.server = local_server(args.gateway_port, args.gateway_admin_port);
    gateway_config.telemetry = telemetry;
    gateway_config.identity.issuer_url = issuer.clone();
    gateway_config.flags = local_flags(
        gateway_env_flags,
        &flags_dir,
        cloud_api_gateway_bff::SERVICE_NAME,
    );
    let gateway_flags = gateway_config.flags.clone();
    let started = progress(cloud_api_gateway_bff::SERVICE_NAME)?;
    let gateway = cloud_api_gateway_bff::build(gateway_config)
        .await
        .context("cannot start cloud-api-gateway-bff")?;
    let gateway_urls = Urls::new(gateway.port(), gateway.admin_port());
    tasks.push(tokio::spawn(
        gateway
            .without_signals()
            .with_shutdown(shutdown.clone())
            .run_until_stopped(),
    ));
    wait_ready(cloud_api_gateway_bff::SERVICE_NAME, &gateway_urls, started).await?;

    crate::outln!()?;
    crate::outln!("The platform is up (data in {}):", args.data_dir.display())?;
    crate::outln!(
        "  gateway   {}   admin {}",
        gateway_urls.api,
        gateway_urls.admin
    )?;
    crate::outln!(
        "  identity  {}   admin {}   issuer {issuer}",
        identity_urls.api,
        identity_urls.admin
    )?;
    crate::outln!()?;
    match &demo {
        DemoSeed::Created(creds) => {
            crate::outln!(
                "Demo tenant {:?} created. These secrets are shown once (kept in {}):",
                creds.tenant_id,
                args.data_dir.display()
            )?;
            crate::outln!(
                "  client      {} / {}",
                creds.client_id,
                creds.client_secret
            )?;
            crate::outln!(
                "  user        {} / {}",
                creds.user_email,
                creds.user_password
            )?;
            crate::outln!()?;
            crate::outln!("Get a token, then call the protected demo route through the gateway:")?;
            crate::outln!(
                "  TOKEN=$({} | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')",
                creds.curl_example()
            )?;
        }
        DemoSeed::AlreadySeeded { tenant_ids } => {
            crate::outln!(
                "The data dir already holds tenants {tenant_ids:?}; their secrets were shown when they were created."
            )?;
            crate::outln!(
                "Start over with a fresh --data-dir to see new demo credentials. With a token in $TOKEN:"
            )?;
        }
    }
    crate::outln!(
        "  curl -s -H \"Authorization: Bearer $TOKEN\" {}/api/demo/hello",
        gateway_urls.api
    )?;
    crate::outln!(
        "  curl -s {}/api/demo/hello     # no token: 401",
        gateway_urls.api
    )?;
    crate::outln!()?;
    print_flags_help(&gateway_urls, &identity_flags, &gateway_flags)?;
    crate::outln!()?;
    crate::outln!("Press Ctrl-C to stop.")?;

    cloud_kit::shutdown::signal().await;
    crate::outln!("Stopping...")?;
    shutdown.trigger();
    for task in tasks {
        task.await
            .context("a service task failed")?
            .context("a service failed while stopping")?;
    }
    crate::outln!("Stopped.")?;
    Ok(())
}

/// The `flags` section from the `GATEWAY_FLAGS__*` variables the gateway binary reads, e.g.
/// `GATEWAY_FLAGS__UNLEASH__URL` and `GATEWAY_FLAGS__UNLEASH__TOKEN` for a real Unleash server.
fn gateway_env_flags() -> Result<cloud_flags::FlagsConfig> {
    Ok(cloud_api_gateway_bff::Config::load(None)
        .context("cannot read the gateway's GATEWAY_* environment variables")?
        .flags)
}

/// The `flags` section from the `IDENTITY_FLAGS__*` variables the identity binary reads.
fn identity_env_flags() -> Result<cloud_flags::FlagsConfig> {
    Ok(cloud_identity_access::Config::load(None)
        .context("cannot read identity's IDENTITY_* environment variables")?
        .flags)
}

/// `flags` plus the local defaults: the bootstrap file that ships with the repo (the whole state
/// without a server, the fallback of last resort with one) and the audit log under the data dir:
/// the shared `audit.log`, or `<service>-audit.log` for a service polling an Unleash server.
fn local_flags(
    mut flags: cloud_flags::FlagsConfig,
    flags_dir: &std::path::Path,
    service: &str,
) -> cloud_flags::FlagsConfig {
    flags
        .bootstrap_path
        .get_or_insert_with(cloud_flags::bundled_bootstrap_path);
    let log = if flags.unleash.is_some() {
        format!("{service}-{AUDIT_LOG}")
    } else {
        AUDIT_LOG.to_string()
    };
    flags
        .audit_log_path
        .get_or_insert_with(|| flags_dir.join(log));
    flags
}

/// The audit log's name in `<data-dir>/flags/`.
const AUDIT_LOG: &str = "audit.log";

fn flag_source(flags: &cloud_flags::FlagsConfig) -> String {
    match (&flags.unleash, &flags.bootstrap_path) {
        (Some(unleash), _) => format!("the Unleash server {}", unleash.url),
        (None, Some(path)) => path.display().to_string(),
        (None, None) => "nowhere (every flag off)".to_string(),
    }
}

fn print_flags_help(
    gateway: &Urls,
    identity_flags: &cloud_flags::FlagsConfig,
    gateway_flags: &cloud_flags::FlagsConfig,
) -> Result<()> {
    let mut logs: Vec<&std::path::Path> = [identity_flags, gateway_flags]
        .iter()
        .filter_map(|f| f.audit_log_path.as_deref())
        .collect();
    logs.dedup();
    let (identity_source, gateway_source) =
        (flag_source(identity_flags), flag_source(gateway_flags));
    if identity_source == gateway_source {
        crate::outln!("Feature flags come from {gateway_source}:")?;
    } else {
        crate::outln!(
            "Feature flags come from {identity_source} (identity) and {gateway_source} (gateway):"
        )?;
    }
    crate::outln!(
        "  curl -s -H \"Authorization: Bearer $TOKEN\" {}/bff/v1/session   # your frontend.* flags",
        gateway.api
    )?;
    crate::outln!(
        "  # /api/demo/ answers from the `stable` or `canary` upstream (header {}) by the variant of {} for your tenant",
        cloud_api_gateway_bff::demo::UPSTREAM_HEADER,
        cloud_flags::platform::GATEWAY_CANARY
    )?;
    for log in logs {
        crate::outln!(
            "  cargo run -p cloudctl -- flags audit --log {}   # what was loaded, and every change",
            log.display()
        )?;
    }
    crate::outln!(
        "To use a real Unleash server instead, start again with its URL and a client token:"
    )?;
    crate::outln!(
        "  GATEWAY_FLAGS__UNLEASH__URL=http://127.0.0.1:4242/api GATEWAY_FLAGS__UNLEASH__TOKEN='default:development.<client token>' \\"
    )?;
    crate::outln!(
        "  IDENTITY_FLAGS__UNLEASH__URL=http://127.0.0.1:4242/api IDENTITY_FLAGS__UNLEASH__TOKEN='default:development.<client token>' \\"
    )?;
    crate::outln!("  cargo run -p cloudctl -- up")?;
    Ok(())
}

fn local_server(port: u16, admin_port: u16) -> cloud_kit::ServerConfig {
    cloud_kit::ServerConfig {
        port,
        admin_port,
        drain_period: Duration::ZERO,
        shutdown_timeout: LOCAL_SHUTDOWN_TIMEOUT,
        ..cloud_kit::ServerConfig::default()
    }
}

#[derive(Debug)]
struct Urls {
    api: String,
    admin: String,
}

impl Urls {
    fn new(port: u16, admin_port: u16) -> Self {
        Self {
            api: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
        }
    }
}

fn progress(service: &str) -> Result<Instant> {
    crate::outln!("{service:<24} starting")?;
    Ok(Instant::now())
}

/// Polls the service's `/readyz` until it answers 200, printing one line when it does.
async fn wait_ready(service: &str, urls: &Urls, started: Instant) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let readyz = format!("{}/readyz", urls.admin);
    let mut last = String::from("no answer yet");
    while started.elapsed() < READY_TIMEOUT {
        match client.get(&readyz).send().await {
            Ok(resp) if resp.status().is_success() => {
                crate::outln!(
                    "{service:<24} ready in {:.1}s at {} (admin {})",
                    started.elapsed().as_secs_f64(),
                    urls.api,
                    urls.admin
                )?;
                return Ok(());
            }
            Ok(resp) => {
                last = format!(
                    "{}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                )
            }
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "{service} was not ready within {READY_TIMEOUT:?}; last answer from {readyz}: {last}"
    )
}
