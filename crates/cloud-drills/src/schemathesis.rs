//! The `schemathesis` drill (issue 9, drill 7): schemathesis generates requests from the
//! committed OpenAPI document (`openapi/cloud-identity-access.yaml`) and sends them to a real
//! identity process (dev build, SQLite), authenticated per the document's security schemes: a
//! real `client_credentials` access token of the bootstrap admin client for `bearer`, the
//! client's id and secret for `client` (HTTP basic).
//!
//! Checks: no 5xx (`not_a_server_error`) and conformance of every response to the document
//! (status code, content type, body schema, headers). Bounded by `--max-examples` per operation
//! and a wall-clock limit. The gateway has no OpenAPI document of its own (its routes come from
//! its config), so only identity's is run.
//!
//! schemathesis comes from the tools cache: `cargo xtask drills` installs it into a venv and
//! hands over that venv's python as `CLOUD_SCHEMATHESIS_PYTHON`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::drills::{Row, Settings, Verdict};
use crate::infra::start_service;

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance";
const SPEC: &str = "openapi/cloud-identity-access.yaml";
const ADMIN_CLIENT: &str = "platform-admin";
const DEFAULT_MAX_EXAMPLES: u32 = 50;
const DEFAULT_TIME_LIMIT_SECS: u64 = 420;

/// Failures that are not defects, each with its reason. Empty: every failure found so far was
/// fixed in the service or the document.
const EXCLUSIONS: &[(&str, &str)] = &[];

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .ok()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The figures of schemathesis' JSON run report (`--report json`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// API operations that were tested (selected and not skipped).
    pub operations: u64,
    pub operations_selected: u64,
    /// Test cases generated and sent.
    pub examples: u64,
    /// Distinct failures (a failed check on an operation, deduplicated by schemathesis).
    pub failures: u64,
    /// Operations or test cases that could not be run (schema or network errors).
    pub errors: u64,
    /// Each failure group as `title: count (operations)`.
    pub failed_checks: Vec<String>,
}

/// Reads the report; `None` when a figure the drill prints is missing (a changed format must
/// not read as zero failures).
pub fn parse_report(report: &serde_json::Value) -> Option<Summary> {
    let n = |v: &serde_json::Value| v.as_u64();
    let mut s = Summary {
        operations: n(&report["operations"]["tested"])?,
        operations_selected: n(&report["operations"]["selected"])?,
        examples: n(&report["test_cases"]["generated"])?,
        ..Summary::default()
    };
    for group in report["failures"].as_array()? {
        let count = n(&group["count"])?;
        s.failures += count;
        let operations: Vec<&str> = group["operations"]
            .as_array()
            .map(|ops| ops.iter().filter_map(|o| o.as_str()).collect())
            .unwrap_or_default();
        s.failed_checks.push(format!(
            "{}: {count} ({})",
            group["title"].as_str().unwrap_or("?"),
            operations.join(", ")
        ));
    }
    for group in report["errors"].as_array()? {
        s.errors += n(&group["count"])?;
        s.failed_checks.push(format!(
            "error: {}: {}",
            group["title"].as_str().unwrap_or("?"),
            n(&group["count"])?
        ));
    }
    s.errors += n(&report["operations"]["errored"]).unwrap_or(0);
    Some(s)
}

pub async fn schemathesis(settings: &Settings) -> Result<Row> {
    let python = std::env::var_os("CLOUD_SCHEMATHESIS_PYTHON").map(PathBuf::from).context(
        "CLOUD_SCHEMATHESIS_PYTHON is not set (the python of schemathesis' venv; `cargo xtask drills` installs it into the tools cache and sets it)",
    )?;
    let max_examples: u32 = env_number(
        "CLOUD_DRILLS_SCHEMATHESIS_MAX_EXAMPLES",
        DEFAULT_MAX_EXAMPLES,
    )?;
    let limit = Duration::from_secs(env_number(
        "CLOUD_DRILLS_SCHEMATHESIS_SECS",
        DEFAULT_TIME_LIMIT_SECS,
    )?);
    let data = tempfile::Builder::new()
        .prefix("cloud-drills-schemathesis-")
        .tempdir()?;
    let admin_secret = secret();
    let env = vec![
        (
            "IDENTITY_DATA_DIR".to_string(),
            data.path().join("identity").display().to_string(),
        ),
        (
            "IDENTITY_BOOTSTRAP__ADMIN_CLIENT_SECRET".to_string(),
            admin_secret.clone(),
        ),
        (
            "IDENTITY_TELEMETRY__LOG_LEVEL".to_string(),
            "info".to_string(),
        ),
    ];
    let identity = start_service(&settings.binaries.identity, "IDENTITY", env).await?;
    let base = format!("http://127.0.0.1:{}", identity.port);
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{base}/oauth2/token"))
        .basic_auth(ADMIN_CLIENT, Some(&admin_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .context("token request failed")?;
    let body: serde_json::Value = response.json().await.context("token response")?;
    let token = body["access_token"]
        .as_str()
        .with_context(|| format!("no access_token in the token response: {body}"))?
        .to_string();

    // Credentials per security scheme of the document (`bearer`, `client`); a file in the
    // private temp dir, so that the secrets are not on a command line.
    let config = data.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[auth.openapi.bearer]\nbearer = \"{token}\"\n\n\
             [auth.openapi.client]\nusername = \"{ADMIN_CLIENT}\"\npassword = \"{admin_secret}\"\n"
        ),
    )?;
    let seed = u32::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..4]
            .try_into()
            .unwrap_or([0; 4]),
    );
    let json_report = data.path().join("report.json");
    let mut cmd = tokio::process::Command::new(&python);
    cmd.current_dir(data.path())
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .arg("run")
        .arg(repo_root().join(SPEC))
        .args(["--url", &base, "--checks", CHECKS])
        .args(["--max-examples", &max_examples.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--request-timeout", "10", "--no-color", "--report", "json"])
        .arg("--report-json-path")
        .arg(&json_report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    eprintln!(
        "cloud-drills: schemathesis against {SPEC} ({max_examples} examples per operation, seed {seed})"
    );
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.context("schemathesis failed to run")?,
        Err(_) => bail!(
            "schemathesis did not finish within {} s (CLOUD_DRILLS_SCHEMATHESIS_SECS)",
            limit.as_secs()
        ),
    };
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = data.path().join("schemathesis-output.txt");
    std::fs::write(&report, format!("{stdout}\n{stderr}"))?;
    // Exit codes: 0 all passed, 1 failures found; anything else is a crash or a usage error.
    let code = output.status.code();
    if !matches!(code, Some(0 | 1)) {
        bail!(
            "schemathesis exited with {}:\n{}\n{}",
            output.status,
            tail(&stdout, 40),
            tail(&stderr, 40)
        );
    }
    let report: serde_json::Value = std::fs::read(&json_report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .with_context(|| {
            format!(
                "schemathesis wrote no readable JSON report:\n{}",
                tail(&stdout, 40)
            )
        })?;
    let summary = parse_report(&report).with_context(|| {
        format!("schemathesis' JSON report lacks a figure the drill reads: {report}")
    })?;
    if summary.operations == 0 || summary.examples == 0 {
        bail!("schemathesis tested nothing:\n{}", tail(&stdout, 40));
    }
    // The admin API may delete the bootstrap client itself (schemathesis' stateful phase does
    // so when it links `list_clients` to `delete_client`); say so, since every client-auth
    // request after that answers 401.
    let admin_client_after = client
        .post(format!("{base}/oauth2/token"))
        .basic_auth(ADMIN_CLIENT, Some(&admin_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    let server_errors = identity
        .stderr_text()
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .count();
    let mut details = vec![
        format!(
            "{} of {} operations tested, {} examples, {} failures, {} errors, in {:.0} s (seed {seed}, max {max_examples} examples per operation)",
            summary.operations,
            summary.operations_selected,
            summary.examples,
            summary.failures,
            summary.errors,
            elapsed.as_secs_f64()
        ),
        format!("checks: {CHECKS}"),
        format!("identity logged {server_errors} ERROR line(s)"),
        format!(
            "after the run the bootstrap client's token request answered {admin_client_after}{}",
            if admin_client_after == 401 {
                " (the run deleted it through the admin API)"
            } else {
                ""
            }
        ),
    ];
    for (what, why) in EXCLUSIONS {
        details.push(format!("excluded: {what}: {why}"));
    }
    let mut findings = Vec::new();
    if summary.failures > 0 || summary.errors > 0 || code == Some(1) {
        findings.push(format!(
            "schemathesis found {} failure(s) and {} error(s) ({}); its failures section:\n{}",
            summary.failures,
            summary.errors,
            summary.failed_checks.join(", "),
            failures_section(&stdout)
        ));
    }
    Ok(Row {
        drill: "Schemathesis (identity API)",
        sent: summary.examples,
        failed: summary.failures,
        lost: summary.errors,
        recovery: format!("n/a ({} operations)", summary.operations),
        verdict: Verdict::of(&findings),
        details,
        findings,
    })
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `FAILURES` part of the output (each failing operation with its reproduction command),
/// cut to a readable length.
fn failures_section(text: &str) -> String {
    let start = text.find("FAILURES").unwrap_or(0);
    let end = text[start..]
        .find("SUMMARY")
        .map_or(text.len(), |e| start + e);
    let section = &text[start..end];
    let lines: Vec<&str> = section.lines().take(200).collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_report_is_read() {
        let report = serde_json::json!({
            "operations": {"total": 27, "selected": 27, "tested": 26, "errored": 1, "skipped": 0},
            "test_cases": {"generated": 1234, "with_failures": 4},
            "failures": [
                {"title": "Server error", "count": 2, "operations": ["POST /v1/tenants"]},
                {"title": "Undocumented HTTP status code", "count": 3,
                 "operations": ["PATCH /v1/tenants/{tenant_id}/users/{user_id}"]},
            ],
            "errors": [{"title": "Network Error", "count": 1}],
        });
        let s = parse_report(&report).unwrap();
        assert_eq!(
            (
                s.operations,
                s.operations_selected,
                s.examples,
                s.failures,
                s.errors
            ),
            (26, 27, 1234, 5, 2)
        );
        assert_eq!(s.failed_checks[0], "Server error: 2 (POST /v1/tenants)");
        assert_eq!(parse_report(&serde_json::json!({"operations": {}})), None);
    }
}
