//! Checks every service binary must pass (the foundation contract), shared so that each service's
//! test file is a list of one-line tests rather than a near-copy of the other's.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::process::{ServiceProcess, run_to_exit};

/// The binary starts on port 0, answers `/healthz`, `/readyz` and `/version`, and `/metrics` shows
/// RED metrics labelled by route template for the requests just made.
pub async fn serves_health_version_and_red_metrics(
    binary: &Path,
    env_prefix: &str,
    service_name: &str,
    env: &[(&str, &str)],
) {
    let service = ServiceProcess::start(binary, env_prefix, env, &[]);
    let client = reqwest::Client::new();
    let health = client
        .get(service.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let version: serde_json::Value = client
        .get(service.url("/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["service"], service_name);
    assert!(
        version["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{version}"
    );
    assert!(
        version["git_sha"].as_str().is_some_and(|v| !v.is_empty()),
        "{version}"
    );

    let missing = client
        .get(service.url("/no/such/path/12345"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    assert!(
        missing.headers().contains_key("x-request-id"),
        "every response carries a request id"
    );

    let metrics = client
        .get(service.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"http_requests_total{method="GET",route="/version",status="200"} 1"#),
        "the /version request is counted by route template:\n{metrics}"
    );
    assert!(
        metrics.contains(r#"http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/version",status="200"} 1"#)
            || metrics.contains(r#"http_request_duration_seconds_bucket{method="GET",route="/version",status="200",le="+Inf"} 1"#),
        "the /version request is in the latency histogram:\n{metrics}"
    );
    assert!(
        metrics.contains(r#"route="unmatched",status="404""#) && !metrics.contains("/no/such/path"),
        "unmatched requests are counted without their raw path:\n{metrics}"
    );
}

/// A bad configuration exits non-zero with a message naming the key and the bad value.
pub fn rejects_bad_config(binary: &Path, env_prefix: &str, url_key: &str) {
    let dir = tempfile::tempdir().unwrap();

    // An unknown key in the file (a typo of `port`).
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, "server:\n  prot: 8080\n").unwrap();
    let (status, stderr) = run_to_exit(binary, &[], &["--config", typo.to_str().unwrap()]);
    assert!(!status.success(), "an unknown key must fail: {stderr}");
    assert!(
        stderr.contains("prot") && stderr.contains("server"),
        "names the unknown key: {stderr}"
    );

    // A malformed URL, from the file.
    let bad_url = dir.path().join("url.yaml");
    let (section, key) = url_key
        .split_once('.')
        .map_or(("", url_key), |(s, k)| (s, k));
    let yaml = if section.is_empty() {
        format!("{key}: \"htp:/not a url\"\n")
    } else {
        format!("{section}:\n  {key}: \"htp:/not a url\"\n")
    };
    std::fs::write(&bad_url, yaml).unwrap();
    let (status, stderr) = run_to_exit(binary, &[], &["--config", bad_url.to_str().unwrap()]);
    assert!(!status.success(), "a malformed URL must fail: {stderr}");
    assert!(
        stderr.contains(url_key) && stderr.contains("htp:/not a url"),
        "names the key and value: {stderr}"
    );

    // A port out of range, from the environment.
    let port_var = format!("{env_prefix}_SERVER__PORT");
    let (status, stderr) = run_to_exit(binary, &[(&port_var, "70000")], &[]);
    assert!(!status.success(), "port 70000 must fail: {stderr}");
    assert!(
        stderr.contains("server.port") && stderr.contains("70000") && stderr.contains(&port_var),
        "names key, value and variable: {stderr}"
    );

    // An unreadable file: missing, and a directory.
    let missing = dir.path().join("missing.yaml");
    let (status, stderr) = run_to_exit(binary, &[], &["--config", missing.to_str().unwrap()]);
    assert!(
        !status.success(),
        "a missing config file must fail: {stderr}"
    );
    assert!(stderr.contains("missing.yaml"), "names the file: {stderr}");
    let (status, stderr) = run_to_exit(binary, &[], &["--config", dir.path().to_str().unwrap()]);
    assert!(
        !status.success(),
        "a directory as config file must fail: {stderr}"
    );
    assert!(
        stderr.contains(dir.path().to_str().unwrap()),
        "names the path: {stderr}"
    );
}

/// After SIGTERM, `/readyz` answers 503 while the API listener still serves (the drain), and then
/// the process exits 0.
pub async fn sigterm_fails_readiness_then_drains(
    binary: &Path,
    env_prefix: &str,
    env: &[(&str, &str)],
) {
    let drain_var = format!("{env_prefix}_SERVER__DRAIN_PERIOD");
    let mut all_env = vec![(drain_var.as_str(), "1500ms")];
    all_env.extend_from_slice(env);
    let mut service = ServiceProcess::start(binary, env_prefix, &all_env, &[]);
    let client = reqwest::Client::new();
    crate::wait_until_ok(&service.admin_url("/readyz"), Duration::from_secs(10)).await;

    service.signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let ready = client
            .get(service.admin_url("/readyz"))
            .send()
            .await
            .unwrap();
        if ready.status() == 503 {
            let body: serde_json::Value = ready.json().await.unwrap();
            assert_eq!(body["status"], "draining", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness did not fail within 1 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still draining: the API listener keeps serving while load balancers catch up.
    let during = client.get(service.url("/version")).send().await.unwrap();
    assert_eq!(
        during.status(),
        200,
        "the API must keep serving during the drain"
    );

    let status = service.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        client.get(service.url("/version")).send().await.is_err(),
        "the listener is closed after exit"
    );
}

/// The committed `openapi/<package>.yaml` equals `generated`, the OpenAPI 3.1 document the
/// package builds from its code. `UPDATE_OPENAPI=1` rewrites the committed file first.
pub fn committed_openapi_matches(package: &str, generated: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../openapi")
        .join(format!("{package}.yaml"));
    if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/{package}.yaml is out of date; run `UPDATE_OPENAPI=1 cargo test -p {package} --test openapi`"
    );
    assert!(
        generated.starts_with("openapi: 3.1.0\n"),
        "the generated document is not OpenAPI 3.1.0: {:?}",
        generated.lines().next()
    );
}
