//! Drill 5 of issue 9: the Unleash server dies; the flag client keeps evaluating on its last good
//! state, and a client started while the server is still down loads the last-known-good file.
//! A real `unleash-server` (the npm package pinned in xtask/src/tools.rs) on a private PostgreSQL,
//! started by the cloud-flags tests' own start script.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cloud_flags::{FlagClient, FlagContext, StateSource, UnleashConfig};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::drills::{Row, Settings, Verdict};
use crate::infra::{PrivatePostgres, free_port, wait_for_status};

const FLAG: &str = "drill.tenant-rollout";

/// The npm prefix holding `node_modules/unleash-server`: `CLOUD_UNLEASH_SERVER` (which
/// `cargo xtask drills` sets from its tools cache).
fn unleash_prefix() -> Result<PathBuf> {
    std::env::var_os("CLOUD_UNLEASH_SERVER")
        .map(PathBuf::from)
        .context(
            "CLOUD_UNLEASH_SERVER is not set (the npm prefix of unleash-server; `cargo xtask drills` sets it)",
        )
}

struct Unleash {
    child: tokio::process::Child,
    base: String,
    admin: String,
}

impl Unleash {
    async fn start(database_url: &str, admin: &str, client: &str) -> Result<Self> {
        let prefix = unleash_prefix()?;
        let port = free_port()?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../cloud-flags/tests/support/start-unleash.js");
        let mut child = tokio::process::Command::new("node")
            .arg(&script)
            .env("UNLEASH_PREFIX", &prefix)
            .env("DATABASE_URL", database_url)
            .env("PORT", port.to_string())
            .env("ADMIN_TOKEN", admin)
            .env("CLIENT_TOKEN", client)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start node (needed for unleash-server)")?;
        let stdout = child.stdout.take().context("no stdout from node")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(180), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("UNLEASH READY") {
                    return true;
                }
            }
            false
        })
        .await;
        if ready != Ok(true) {
            bail!("unleash-server did not print UNLEASH READY within 180 s");
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let base = format!("http://127.0.0.1:{port}");
        wait_for_status(
            &reqwest::Client::new(),
            &format!("{base}/health"),
            200,
            Duration::from_secs(60),
        )
        .await?;
        Ok(Self {
            child,
            base,
            admin: admin.to_string(),
        })
    }

    async fn admin(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let mut req = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.admin);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("POST {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// SIGKILL: the server vanishes, as in a crash.
    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn tenant(t: &str) -> FlagContext {
    FlagContext::new()
        .with_tenant_id(t)
        .with_user_id(format!("user-of-{t}"))
}

/// Evaluates the flag for a tenant it is on for and one it is off for, `rate` times a second,
/// until `until`; returns (evaluations, wrong answers).
async fn evaluate(client: &FlagClient, rate: u32, until: Instant) -> (u64, u64) {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let (on, off) = (tenant("acme"), tenant("initech"));
    let (mut n, mut wrong) = (0u64, 0u64);
    while Instant::now() < until {
        ticker.tick().await;
        let ctx = if n % 2 == 0 { &on } else { &off };
        if client.is_enabled(FLAG, ctx) != (n % 2 == 0) {
            wrong += 1;
        }
        n += 1;
    }
    (n, wrong)
}

pub async fn unleash_outage(settings: &Settings) -> Result<Row> {
    let pg = PrivatePostgres::start().await?;
    let admin_token = format!("*:*.{}", uuid::Uuid::new_v4().simple());
    let client_token = format!("*:development.{}", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let mut server = Unleash::start(&pg.url(), &admin_token, &client_token).await?;
    let startup = started.elapsed();
    let dir = tempfile::Builder::new()
        .prefix("cloud-drills-flags-")
        .tempdir()?;

    // The flag: 100% rollout constrained to tenant acme, on in development.
    server
        .admin(
            "/api/admin/context",
            Some(json!({"name": "tenantId", "stickiness": true})),
        )
        .await?;
    server
        .admin(
            "/api/admin/projects/default/features",
            Some(json!({"name": FLAG, "type": "release"})),
        )
        .await?;
    server
        .admin(
            &format!("/api/admin/projects/default/features/{FLAG}/environments/development/strategies"),
            Some(json!({"name": "flexibleRollout",
                "parameters": {"rollout": "100", "stickiness": "tenantId", "groupId": FLAG},
                "constraints": [{"contextName": "tenantId", "operator": "IN", "values": ["acme"]}]})),
        )
        .await?;
    server
        .admin(
            &format!("/api/admin/projects/default/features/{FLAG}/environments/development/on"),
            None,
        )
        .await?;

    let mut config = UnleashConfig::new(
        format!("{}/api", server.base).parse()?,
        client_token.clone().into(),
        "cloud-drills",
    );
    config.refresh_interval = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(2);
    config.backup_path = Some(dir.path().join("lkg.json"));
    config.audit_log_path = Some(dir.path().join("audit.log"));
    config.kill_switch_env = None;
    let client = FlagClient::connect(config.clone())
        .await
        .context("the flag client cannot connect")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client.is_enabled(FLAG, &tenant("acme")) {
        if Instant::now() > deadline {
            bail!("the flag client did not see {FLAG} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let before = evaluate(
        &client,
        settings.rate,
        Instant::now() + Duration::from_secs(3),
    )
    .await;
    let failures_before = client.status().consecutive_failures;
    server.kill().await;
    let killed = Instant::now();
    let outage_end = killed + settings.outage;
    let eval = async { evaluate(&client, settings.rate, outage_end).await };
    let notice = async {
        while client.status().consecutive_failures == 0 && Instant::now() < outage_end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (client.status().consecutive_failures > 0).then(|| killed.elapsed())
    };
    let (during, noticed) = tokio::join!(eval, notice);
    let status = client.status();
    client.shutdown().await;

    // A fresh client while the server is still down: it must load the last-known-good file.
    let restart = Instant::now();
    let restarted = FlagClient::connect(config).await;
    let restart_time = restart.elapsed();
    let (after, lkg_source, lkg_ready) = match &restarted {
        Ok(c) => (
            evaluate(c, settings.rate, Instant::now() + Duration::from_secs(2)).await,
            c.status().source,
            c.is_ready(),
        ),
        Err(_) => ((0, 0), None, false),
    };
    if let Ok(c) = &restarted {
        c.shutdown().await;
    }

    let sent = before.0 + during.0 + after.0;
    let wrong = before.1 + during.1 + after.1;
    let details = vec![
        format!(
            "unleash-server started in {:.1} s on a private PostgreSQL",
            startup.as_secs_f64()
        ),
        format!(
            "in-process flag evaluations at {} /s (tenant acme: on, initech: off): {} before the kill, {} during {:.0} s with the server killed (SIGKILL), {} by a client restarted while it was down; {} wrong answers",
            settings.rate,
            before.0,
            during.0,
            settings.outage.as_secs_f64(),
            after.0,
            wrong
        ),
        match noticed {
            Some(d) => format!(
                "consecutive failed polls: {failures_before} before the kill; the first counted {:.3} s after the kill returned (poll interval 1 s); at the end of the outage {}, still evaluating the state from source {:?}",
                d.as_secs_f64(),
                status.consecutive_failures,
                status.source
            ),
            None => "the client never noticed the server was gone".into(),
        },
        match &restarted {
            Ok(_) => format!(
                "a client started with the server down connected in {:.3} s, ready {lkg_ready}, source {lkg_source:?}",
                restart_time.as_secs_f64()
            ),
            Err(e) => format!("a client started with the server down failed: {e}"),
        },
    ];
    let ok = wrong == 0
        && failures_before == 0
        && noticed.is_some()
        && lkg_ready
        && lkg_source == Some(StateSource::Backup)
        && during.0 > 0
        && after.0 > 0;
    Ok(Row {
        drill: "Unleash outage",
        sent,
        failed: wrong,
        lost: 0,
        recovery: format!(
            "{:.3} s (restart from the LKG file)",
            restart_time.as_secs_f64()
        ),
        verdict: if ok { Verdict::Pass } else { Verdict::Finding },
        details,
        findings: if ok {
            Vec::new()
        } else {
            vec![
                "the flag client did not keep or restore its last good state (see the details)"
                    .into(),
            ]
        },
    })
}
