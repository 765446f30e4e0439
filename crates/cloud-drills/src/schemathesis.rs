//! The `schemathesis` drill (issue 9, drill 7): schemathesis generates requests from both
//! services' committed OpenAPI documents and sends them to real processes (dev builds):
//!
//! - `openapi/cloud-identity-access.yaml` against an identity process (SQLite);
//! - `openapi/cloud-api-gateway-bff.yaml` (the gateway's own API: `GET /bff/v1/session`,
//!   `GET /version`) against a gateway configured against that identity (the drills' gateway:
//!   discovery and key set from it, a token route `/api/`, the session built in).
//!
//! Requests are authenticated per each document's security schemes: a real `client_credentials`
//! access token of the bootstrap admin client for `bearer` (the same token for both), the
//! client's id and secret for `client` (HTTP basic, identity only).
//!
//! Checks: no 5xx (`not_a_server_error`) and conformance of every response to the document
//! (status code, content type, body schema, headers). Bounded by `--max-examples` per operation
//! and one wall-clock limit for both runs. The gateway runs first: identity's stateful phase may
//! delete the bootstrap client (see below), which the gateway's session would then see as a
//! failed profile lookup.
//!
//! schemathesis comes from the tools cache: `cargo xtask drills` installs it into a venv and
//! hands over that venv's python as `CLOUD_SCHEMATHESIS_PYTHON`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::drills::{BOOTSTRAP_CLIENT, Identity, Row, Settings, Verdict, start_gateway};
use crate::infra::spawn_upstream;

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance";
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

/// One document and the process that serves it.
struct Target {
    /// `identity` or `gateway`: names the run in the output and its files in the temp dir.
    name: &'static str,
    /// The committed document, relative to the repository root.
    spec: &'static str,
    base: String,
    /// schemathesis' config: the credentials per security scheme of this document.
    auth: String,
}

/// What one schemathesis run found.
struct TargetRun {
    summary: Summary,
    elapsed: Duration,
    /// schemathesis exited with 1 (failures found).
    failed: bool,
    stdout: String,
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
    let client = reqwest::Client::new();
    let identity = Identity::start(&settings.binaries, None).await?;
    let token = identity.admin_token(&client).await?;
    let upstream = spawn_upstream().await?;
    let gateway = start_gateway(
        &settings.binaries,
        &identity.issuer,
        upstream,
        None,
        data.path(),
    )
    .await?;

    // Credentials per security scheme of each document, in a config file in the private temp
    // dir, so that the secrets are not on a command line.
    let bearer = format!("[auth.openapi.bearer]\nbearer = \"{token}\"\n");
    let targets = [
        Target {
            name: "gateway",
            spec: "openapi/cloud-api-gateway-bff.yaml",
            base: gateway.url(""),
            auth: bearer.clone(),
        },
        Target {
            name: "identity",
            spec: "openapi/cloud-identity-access.yaml",
            base: identity.issuer.clone(),
            auth: format!(
                "{bearer}\n[auth.openapi.client]\nusername = \"{BOOTSTRAP_CLIENT}\"\npassword = \"{}\"\n",
                identity.admin_secret
            ),
        },
    ];
    let seed = u32::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..4]
            .try_into()
            .unwrap_or([0; 4]),
    );
    let deadline = Instant::now() + limit;
    let mut runs = Vec::new();
    for target in &targets {
        let run = run_target(&python, target, data.path(), max_examples, seed, deadline).await?;
        runs.push(run);
    }

    // The admin API may delete the bootstrap client itself (schemathesis' stateful phase does
    // so when it links `list_clients` to `delete_client`); say so, since every client-auth
    // request after that answers 401.
    let admin_client_after = client
        .post(format!("{}/oauth2/token", identity.issuer))
        .basic_auth(BOOTSTRAP_CLIENT, Some(&identity.admin_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    let errors_logged = |log: String| {
        log.lines()
            .filter(|l| l.contains("\"level\":\"ERROR\""))
            .count()
    };
    let mut details = Vec::new();
    let mut findings = Vec::new();
    for (target, run) in targets.iter().zip(&runs) {
        let s = &run.summary;
        details.push(format!(
            "{} ({}): {} of {} operations tested, {} examples, {} failures, {} errors, in {:.0} s",
            target.name,
            target.spec,
            s.operations,
            s.operations_selected,
            s.examples,
            s.failures,
            s.errors,
            run.elapsed.as_secs_f64()
        ));
        if s.failures > 0 || s.errors > 0 || run.failed {
            findings.push(format!(
                "schemathesis found {} failure(s) and {} error(s) in {} ({}); its failures section:\n{}",
                s.failures,
                s.errors,
                target.spec,
                s.failed_checks.join(", "),
                failures_section(&run.stdout)
            ));
        }
    }
    details.push(format!(
        "seed {seed}, max {max_examples} examples per operation; checks: {CHECKS}"
    ));
    details.push(format!(
        "identity logged {} ERROR line(s), the gateway {}",
        errors_logged(identity.process.stderr_text()),
        errors_logged(gateway.stderr_text())
    ));
    details.push(format!(
        "after the runs the bootstrap client's token request answered {admin_client_after}{}",
        if admin_client_after == 401 {
            " (the identity run deleted it through the admin API)"
        } else {
            ""
        }
    ));
    for (what, why) in EXCLUSIONS {
        details.push(format!("excluded: {what}: {why}"));
    }
    let total = |f: fn(&Summary) -> u64| runs.iter().map(|r| f(&r.summary)).sum::<u64>();
    Ok(Row {
        drill: "Schemathesis (identity + gateway APIs)",
        sent: total(|s| s.examples),
        failed: total(|s| s.failures),
        lost: total(|s| s.errors),
        recovery: format!(
            "n/a ({} operations)",
            runs.iter()
                .map(|r| r.summary.operations.to_string())
                .collect::<Vec<_>>()
                .join(" + ")
        ),
        verdict: Verdict::of(&findings),
        details,
        findings,
    })
}

/// Runs schemathesis against one target, until `deadline` at the latest.
async fn run_target(
    python: &Path,
    target: &Target,
    dir: &Path,
    max_examples: u32,
    seed: u32,
    deadline: Instant,
) -> Result<TargetRun> {
    let config = dir.join(format!("schemathesis-{}.toml", target.name));
    std::fs::write(&config, &target.auth)?;
    let json_report = dir.join(format!("report-{}.json", target.name));
    let mut cmd = tokio::process::Command::new(python);
    cmd.current_dir(dir)
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .arg("run")
        .arg(repo_root().join(target.spec))
        .args(["--url", &target.base, "--checks", CHECKS])
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
        "cloud-drills: schemathesis against {} at {} ({max_examples} examples per operation, seed {seed})",
        target.spec, target.base
    );
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let left = deadline.saturating_duration_since(started);
    let output = match tokio::time::timeout(left, child.wait_with_output()).await {
        Ok(out) => out.context("schemathesis failed to run")?,
        Err(_) => bail!(
            "schemathesis did not finish {} within the drill's time limit (CLOUD_DRILLS_SCHEMATHESIS_SECS)",
            target.spec
        ),
    };
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    std::fs::write(
        dir.join(format!("schemathesis-output-{}.txt", target.name)),
        format!("{stdout}\n{stderr}"),
    )?;
    // Exit codes: 0 all passed, 1 failures found; anything else is a crash or a usage error.
    let code = output.status.code();
    if !matches!(code, Some(0 | 1)) {
        bail!(
            "schemathesis ({}) exited with {}:\n{}\n{}",
            target.spec,
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
                "schemathesis ({}) wrote no readable JSON report:\n{}",
                target.spec,
                tail(&stdout, 40)
            )
        })?;
    let summary = parse_report(&report).with_context(|| {
        format!("schemathesis' JSON report lacks a figure the drill reads: {report}")
    })?;
    if summary.operations == 0 || summary.examples == 0 {
        bail!(
            "schemathesis tested nothing in {}:\n{}",
            target.spec,
            tail(&stdout, 40)
        );
    }
    Ok(TargetRun {
        summary,
        elapsed,
        failed: code == Some(1),
        stdout,
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
