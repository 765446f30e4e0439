//! The real binary as a child process: no secret or token in its logs (at debug level), and the
//! `audit verify` and `keys rotate` commands on its SQLite file.
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_cloud-identity-access");
const ADMIN_SECRET: &str = "binary-test-admin-secret-0123456789abcdef";
const ENCRYPTION_KEY: &str = "binary-test-encryption-key-fedcba9876543210";

struct Service {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    port: u16,
}

fn command(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("IDENTITY_DATA_DIR", dir)
        .env("IDENTITY_SERVER__PORT", "0")
        .env("IDENTITY_SERVER__ADMIN_PORT", "0")
        .env("IDENTITY_SERVER__DRAIN_PERIOD", "0s")
        .env("IDENTITY_TELEMETRY__LOG_FORMAT", "json")
        .env("IDENTITY_TELEMETRY__LOG_LEVEL", "debug")
        .env("IDENTITY_KEYS__ENCRYPTION_KEY", ENCRYPTION_KEY)
        .env("IDENTITY_BOOTSTRAP__ADMIN_CLIENT_SECRET", ADMIN_SECRET);
    cmd
}

fn start(dir: &std::path::Path) -> Service {
    let mut child = command(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        let found = logs.lock().unwrap().iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "listening")
                .then(|| v["fields"]["port"].as_u64())
                .flatten()
        });
        if let Some(port) = found {
            break port as u16;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not start: {:?}",
            logs.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Service { child, logs, port }
}

fn stop(mut service: Service) -> String {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(service.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = service.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(100));
    service.logs.lock().unwrap().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_appears_in_the_logs_and_the_cli_verifies_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path());
    let base = format!("http://127.0.0.1:{}", service.port);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let token_of = async |id: &str, secret: &str| -> String {
        let r = http
            .post(format!("{base}/oauth2/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let admin = token_of("platform-admin", ADMIN_SECRET).await;
    let tenant: Value = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(&admin)
        .json(&json!({ "name": "logs" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tid = tenant["id"].as_str().unwrap();
    let password = "user-password-that-must-not-be-logged";
    let r = http
        .post(format!("{base}/v1/tenants/{tid}/users"))
        .bearer_auth(&admin)
        .json(&json!({ "email": "u@logs.test", "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = http
        .post(format!("{base}/v1/tenants/{tid}/clients"))
        .bearer_auth(&admin)
        .json(&json!({ "name": "svc", "kind": "confidential", "grant_types": ["client_credentials"], "scopes": ["a"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = created["client"]["id"].as_str().unwrap();
    let client_secret = created["client_secret"].as_str().unwrap();
    let token = token_of(client_id, client_secret).await;
    // A failed client authentication, introspection and revocation, all with secrets in the request.
    let r = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth(client_id, Some("wrong-secret-value-xyz"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .post(format!("{base}/oauth2/introspect"))
        .basic_auth(client_id, Some(client_secret))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .post(format!("{base}/oauth2/revoke"))
        .basic_auth(client_id, Some(client_secret))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .get(format!("{base}/v1/tenants"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let logs = stop(service);
    assert!(
        logs.contains("listening") && logs.lines().count() > 3,
        "the logs were captured: {logs}"
    );
    for (what, secret) in [
        ("admin secret", ADMIN_SECRET),
        ("encryption key", ENCRYPTION_KEY),
        ("client secret", client_secret),
        ("wrong secret", "wrong-secret-value-xyz"),
        ("user password", password),
        ("admin token", admin.as_str()),
        ("access token", token.as_str()),
        ("access token signature", token.rsplit('.').next().unwrap()),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in the logs");
    }

    // `audit verify` passes on the untouched trail...
    let out = command(dir.path())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["events"].as_u64().unwrap() >= 6, "{report}");
    // ... and fails once a row is edited.
    let url = format!("sqlite://{}/identity.db", dir.path().display());
    let store = cloud_identity_access::store::SqliteStore::open(&url)
        .await
        .unwrap();
    store.execute_raw("UPDATE audit_events SET after_state = replace(after_state, 'logs', 'l0gs') WHERE action = 'tenant.create' AND after_state LIKE '%logs%'").await.unwrap();
    drop(store);
    let out = command(dir.path())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["problems"][0].as_str().unwrap().contains("modified"),
        "{report}"
    );

    // `keys rotate`: next becomes active, a new next appears, the old active is retiring.
    let list = |args: &[&str]| -> Vec<Value> {
        let out = command(dir.path()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let before = list(&["keys", "list"]);
    let state_of = |keys: &[Value], kid: &Value| {
        keys.iter()
            .find(|k| k["kid"] == *kid)
            .map(|k| k["state"].clone())
            .unwrap()
    };
    let active = before.iter().find(|k| k["state"] == "active").unwrap()["kid"].clone();
    let next = before.iter().find(|k| k["state"] == "next").unwrap()["kid"].clone();
    let after = list(&["keys", "rotate"]);
    assert_eq!(state_of(&after, &active), "retiring");
    assert_eq!(state_of(&after, &next), "active");
    assert_eq!(after.iter().filter(|k| k["state"] == "next").count(), 1);
    assert_eq!(after.len(), before.len() + 1);
}

#[test]
fn a_wrong_encryption_key_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path())
        .args(["keys", "rotate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = command(dir.path())
        .env("IDENTITY_KEYS__ENCRYPTION_KEY", "another-key")
        .env("IDENTITY_SERVER__PORT", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot be decrypted"), "{stderr}");
    assert!(!stderr.contains("another-key"));
}

#[test]
fn a_bad_database_url_does_not_echo_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path())
        .env(
            "IDENTITY_DATABASE__URL",
            "postgres://user:hunter2-secret@127.0.0.1:1/db",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("database"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
