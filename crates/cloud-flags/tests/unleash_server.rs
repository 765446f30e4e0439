//! Against a real Unleash server (npm `unleash-server`, pinned in `xtask/src/tools.rs`) on a
//! fresh private PostgreSQL database: the client sees a flag created through the admin API
//! within one poll interval and evaluates it per tenant; a strategy change is exactly one audit
//! event; evaluation continues when the server stops; a restart with no server loads the
//! last-known-good state; and the metrics the client posts show up on the server.
//!
//! Needs `CLOUD_TEST_UNLEASH_SERVER` (the npm prefix) and `CLOUD_TEST_POSTGRES_URL`; under CI a
//! missing one fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloud_flags::audit;
use cloud_flags::{ChangeKind, FlagClient, FlagContext, StateSource, UnleashConfig};
use cloud_kit::SystemClock;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const FLAG: &str = "it.tenant-rollout";
const POLL: Duration = Duration::from_secs(1);

struct Unleash {
    child: tokio::process::Child,
    base: String,
    admin: String,
}

impl Unleash {
    async fn start(prefix: &Path, database_url: &str, admin: &str, client: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/start-unleash.js");
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .env("UNLEASH_PREFIX", prefix)
            .env("DATABASE_URL", database_url)
            .env("PORT", port.to_string())
            .env("ADMIN_TOKEN", admin)
            .env("CLIENT_TOKEN", client)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be on PATH");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(180), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("UNLEASH READY") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(ready, Ok(true), "unleash-server did not start");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let base = format!("http://127.0.0.1:{port}");
        cloud_test_support::wait_until_ok(&format!("{base}/health"), Duration::from_secs(60)).await;
        Self {
            child,
            base,
            admin: admin.to_string(),
        }
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = reqwest::Client::new()
            .request(method.clone(), format!("{}{path}", self.base))
            .header("Authorization", &self.admin);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn tenant(t: &str) -> FlagContext {
    FlagContext::new()
        .with_tenant_id(t)
        .with_user_id(format!("user-of-{t}"))
}

async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_real_unleash_server() {
    let Some(prefix) = cloud_test_support::require_tool("UNLEASH_SERVER") else {
        return;
    };
    let Some(database_url) = cloud_test_support::fresh_postgres_database().await else {
        return;
    };
    let admin_token = format!("*:*.{}", uuid::Uuid::new_v4().simple());
    let client_token = format!("*:development.{}", uuid::Uuid::new_v4().simple());
    let server = Unleash::start(&prefix, &database_url, &admin_token, &client_token).await;
    let dir = tempfile::tempdir().unwrap();

    let mut config = UnleashConfig::new(
        format!("{}/api", server.base).parse().unwrap(),
        client_token.clone().into(),
        "cloud-flags-it",
    );
    config.refresh_interval = POLL;
    config.metrics_interval = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(5);
    config.backup_path = Some(dir.path().join("lkg.json"));
    config.audit_log_path = Some(dir.path().join("audit.log"));
    config.kill_switch_env = None;
    let client = FlagClient::connect_with_clock(config.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    assert!(
        client.is_ready(),
        "an empty server state is a state: {:?}",
        client.status()
    );
    assert_eq!(client.status().source, Some(StateSource::Server));
    assert!(!client.knows(FLAG));

    // Create the flag through the admin API: tenantId context field, flag, 100% flexible
    // rollout sticky per tenant, constrained to tenant acme, enabled in development.
    server
        .admin(
            reqwest::Method::POST,
            "/api/admin/context",
            Some(json!({"name": "tenantId", "stickiness": true})),
        )
        .await;
    server
        .admin(
            reqwest::Method::POST,
            "/api/admin/projects/default/features",
            Some(json!({"name": FLAG, "type": "release"})),
        )
        .await;
    let strategy = server
        .admin(
            reqwest::Method::POST,
            &format!("/api/admin/projects/default/features/{FLAG}/environments/development/strategies"),
            Some(json!({"name": "flexibleRollout",
                "parameters": {"rollout": "100", "stickiness": "tenantId", "groupId": FLAG},
                "constraints": [{"contextName": "tenantId", "operator": "IN", "values": ["acme"]}]})),
        )
        .await;
    let strategy_id = strategy["id"].as_str().unwrap().to_string();
    server
        .admin(
            reqwest::Method::POST,
            &format!("/api/admin/projects/default/features/{FLAG}/environments/development/on"),
            None,
        )
        .await;

    // Seen within one poll interval (plus the request itself), evaluated per tenant.
    let seen = eventually(
        "client sees the new flag",
        POLL * 2 + Duration::from_secs(1),
        || client.is_enabled(FLAG, &tenant("acme")),
    )
    .await;
    eprintln!("client saw the new flag {seen:?} after it was enabled (poll interval {POLL:?})");
    assert!(!client.is_enabled(FLAG, &tenant("globex")));
    assert!(client.status().etag.is_some(), "the server sends an ETag");

    // A strategy change: exactly one audit event, naming the constraint change.
    let log = config.audit_log_path.clone().unwrap();
    let before = audit::read_records(&log).unwrap().len();
    server
        .admin(
            reqwest::Method::PUT,
            &format!("/api/admin/projects/default/features/{FLAG}/environments/development/strategies/{strategy_id}"),
            Some(json!({"name": "flexibleRollout",
                "parameters": {"rollout": "100", "stickiness": "tenantId", "groupId": FLAG},
                "constraints": [{"contextName": "tenantId", "operator": "IN", "values": ["acme", "globex"]}]})),
        )
        .await;
    eventually(
        "client sees the strategy change",
        POLL * 2 + Duration::from_secs(1),
        || client.is_enabled(FLAG, &tenant("globex")),
    )
    .await;
    tokio::time::sleep(POLL * 3).await; // further polls (304s) must not add events
    let records = audit::read_records(&log).unwrap();
    let new: Vec<_> = records[before..].iter().collect();
    assert_eq!(new.len(), 1, "one audit event for one change: {new:#?}");
    assert_eq!(new[0].flag, FLAG);
    assert_eq!(new[0].changes, vec![ChangeKind::Constraints]);
    assert!(
        new[0].etag.is_some() && new[0].old_hash.is_some() && new[0].new_hash != new[0].old_hash
    );
    audit::verify(&log).unwrap();

    // Usage metrics reach the server: acme and globex are on (10 yes), initech is off (5 no).
    for t in ["acme", "globex", "initech"] {
        for _ in 0..5 {
            client.is_enabled(FLAG, &tenant(t));
        }
    }
    let start = Instant::now();
    loop {
        let raw = server
            .admin(
                reqwest::Method::GET,
                &format!("/api/admin/client-metrics/features/{FLAG}"),
                None,
            )
            .await;
        let yes: u64 = raw["lastHourUsage"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m["yes"].as_u64().unwrap_or(0))
            .sum();
        let no: u64 = raw["lastHourUsage"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m["no"].as_u64().unwrap_or(0))
            .sum();
        let seen = raw["seenApplications"]
            .as_array()
            .is_some_and(|a| a.iter().any(|app| app == "cloud-flags-it"));
        if seen && yes >= 10 && no >= 5 {
            eprintln!(
                "server recorded {yes} yes / {no} no evaluations from the client after {:?}",
                start.elapsed()
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "metrics did not show up on the server: {raw}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The server goes away: evaluation continues on the last good state.
    server.stop().await;
    eventually("the client notices", POLL * 4, || {
        client.status().consecutive_failures > 0
    })
    .await;
    assert!(client.is_enabled(FLAG, &tenant("acme")) && client.is_enabled(FLAG, &tenant("globex")));
    assert!(!client.is_enabled(FLAG, &tenant("initech")));
    client.shutdown().await;

    // A restart with no server loads last-known-good.
    let restarted = FlagClient::connect_with_clock(config, Arc::new(SystemClock))
        .await
        .unwrap();
    let status = restarted.status();
    assert_eq!(status.source, Some(StateSource::Backup), "{status:?}");
    assert!(restarted.is_ready());
    assert!(restarted.is_enabled(FLAG, &tenant("globex")));
    assert_eq!(
        audit::read_records(&log).unwrap().len(),
        records.len(),
        "same state after restart: no new audit events"
    );
    restarted.shutdown().await;
}
