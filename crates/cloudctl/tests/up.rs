//! `cloudctl up` driven as a real child process: both services become ready, answer `/healthz`,
//! serve the feature flags of the bundled bootstrap file (front-end flags in the session, the
//! demo route's canary, a verified audit log under the data dir), and Ctrl-C (SIGINT) stops
//! everything cleanly with exit code 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[tokio::test]
async fn up_starts_both_services_and_stops_on_ctrl_c() {
    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudctl"))
        .args([
            "up",
            "--gateway-port",
            "0",
            "--gateway-admin-port",
            "0",
            "--identity-port",
            "0",
            "--identity-admin-port",
            "0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    // One progress line per service, then the URLs.
    let mut admin_urls = Vec::new();
    let mut transcript = Vec::new();
    while admin_urls.len() < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no readiness lines; got {transcript:#?}"));
        transcript.push(line.clone());
        if line.contains(" ready in ") {
            let admin = line
                .rsplit("(admin ")
                .next()
                .unwrap()
                .trim_end_matches(')')
                .to_string();
            admin_urls.push(admin);
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "both services ready within 10 s of start: {transcript:#?}"
    );
    assert!(
        transcript
            .iter()
            .any(|l| l.starts_with("cloud-identity-access") && l.contains("starting")),
        "{transcript:#?}"
    );
    assert!(
        transcript
            .iter()
            .any(|l| l.starts_with("cloud-api-gateway-bff") && l.contains("ready in")),
        "{transcript:#?}"
    );
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        let done = line.contains("Ctrl-C");
        transcript.push(line);
        if done {
            break;
        }
    }
    assert!(
        transcript.iter().any(|l| l.contains("curl")),
        "prints a curl example: {transcript:#?}"
    );

    let client = reqwest::Client::new();
    for admin in &admin_urls {
        let health = client.get(format!("{admin}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200, "{admin}/healthz");
    }
    flags_are_live(&client, &transcript, data.path()).await;

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(5),
            "cloudctl up did not exit within 5 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status after Ctrl-C: {status}");
    for admin in &admin_urls {
        assert!(
            client.get(format!("{admin}/healthz")).send().await.is_err(),
            "{admin} still answers after exit"
        );
    }
}

/// The word after `prefix` on the transcript line that starts with `line_start`.
fn word_after<'a>(transcript: &'a [String], line_start: &str, prefix: &str) -> &'a str {
    let line = transcript
        .iter()
        .find(|l| l.trim_start().starts_with(line_start))
        .unwrap_or_else(|| panic!("no line starting with {line_start:?}: {transcript:#?}"));
    line.split(prefix)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {prefix:?} in {line:?}"))
}

/// With the token the quick start tells you to get: the session lists the bundled front-end
/// flag, the demo route answers from the upstream the canary flag picks, the flag client's
/// metrics are on the gateway's `/metrics`, and the audit log under the data dir records the
/// bootstrap load and verifies.
async fn flags_are_live(client: &reqwest::Client, transcript: &[String], data: &std::path::Path) {
    let gateway = word_after(transcript, "gateway ", "gateway");
    let gateway_admin = word_after(transcript, "gateway ", "admin");
    let identity_admin = word_after(transcript, "identity ", "admin");
    let token_line = transcript
        .iter()
        .find(|l| l.contains("TOKEN=$(curl"))
        .unwrap_or_else(|| panic!("no token command: {transcript:#?}"));
    let credentials = token_line
        .split("-u '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    let (client_id, secret) = credentials.split_once(':').unwrap();
    let token_url = token_line
        .split("scope=orders:read' ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let token: serde_json::Value = client
        .post(token_url)
        .basic_auth(client_id, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=orders:read")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{token}"));

    let session = client
        .get(format!("{gateway}/bff/v1/session"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), 200);
    let session: serde_json::Value = session.json().await.unwrap();
    let dashboard = &session["flags"]["frontend.new-dashboard"];
    assert!(dashboard["enabled"].is_boolean(), "{session}");
    assert_eq!(
        session["flags"].as_object().unwrap().len(),
        1,
        "only frontend.* flags: {session}"
    );

    let demo = client
        .get(format!("{gateway}/api/demo/hello"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(demo.status(), 200);
    let side = demo.headers()["x-demo-upstream"]
        .to_str()
        .unwrap()
        .to_string();
    let body: serde_json::Value = demo.json().await.unwrap();
    assert!(side == "stable" || side == "canary", "{side}");
    assert_eq!(body["upstream"], side.as_str());

    let metrics = client
        .get(format!("{gateway_admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "feature_flag_evaluations_total{flag=\"frontend.new-dashboard\"".to_string(),
        format!("gateway_canary_requests_total{{route=\"demo\",variant=\"{side}\"}} 1"),
    ] {
        assert!(metrics.contains(&expected), "{expected} in:\n{metrics}");
    }

    // Identity evaluated `identity.new-claims` for the token it issued.
    let identity_metrics = client
        .get(format!("{identity_admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        identity_metrics.contains("feature_flag_evaluations_total{flag=\"identity.new-claims\""),
        "{identity_metrics}"
    );

    let log = data.join("flags/audit.log");
    assert!(
        transcript
            .iter()
            .any(|l| l.contains(&format!("flags audit --log {}", log.display()))),
        "the quick start names the audit log: {transcript:#?}"
    );
    assert!(
        transcript
            .iter()
            .any(|l| l.contains("GATEWAY_FLAGS__UNLEASH__URL")),
        "the quick start says how to use a real Unleash: {transcript:#?}"
    );
    let cloudctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cloudctl"))
            .args(args)
            .arg("--log")
            .arg(&log)
            .args(["--output", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "cloudctl {args:?}: {out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let verified = cloudctl(&["flags", "verify"]);
    assert!(verified[0]["records"].as_u64().unwrap() >= 4, "{verified}");
    let records = cloudctl(&["flags", "audit"]);
    let loaded: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"] == "bootstrap" && r["changes"][0] == "added")
        .map(|r| r["flag"].as_str().unwrap())
        .collect();
    for flag in [
        "frontend.new-dashboard",
        "gateway.canary-upstream",
        "identity.new-claims",
    ] {
        assert!(
            loaded.contains(&flag),
            "{flag} loaded from the bootstrap file: {records}"
        );
    }
}
