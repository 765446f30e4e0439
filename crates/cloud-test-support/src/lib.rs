//! Helpers shared by the workspace's tests.
//!
//! `cargo xtask test` starts private PostgreSQL and Redis servers and installs tools, then hands
//! their addresses to the tests as `CLOUD_TEST_*` variables. A test asks for what it needs with
//! [`require`]: under `CI=true` (`CLOUD_TEST_REQUIRE_ALL=1`) a missing server or tool fails the
//! test; in a bare `cargo test` on a laptop it is skipped with a loud message instead.
// Panics here are failed test assertions, which is what a test helper should do.
#![allow(
    clippy::print_stderr,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Whether a missing server or tool is a failure (CI) or a skip (a developer's bare `cargo test`).
pub fn require_all() -> bool {
    std::env::var("CLOUD_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The value of `CLOUD_TEST_<NAME>`, or `None` (with a message) when the test should be skipped.
///
/// # Panics
/// When the variable is missing and every dependency is required (CI).
pub fn require(name: &str) -> Option<String> {
    let var = format!("CLOUD_TEST_{name}");
    match std::env::var(&var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if require_all() => {
            panic!("{var} is not set: run the tests through `cargo xtask test`, which provides it")
        }
        _ => {
            eprintln!("SKIPPED: {var} is not set; run `cargo xtask test` to provide it");
            None
        }
    }
}

/// Like [`require`], for a path to an installed tool.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    require(name).map(PathBuf::from)
}

/// A fresh, empty PostgreSQL database on the private server, unique to the calling test.
/// Returns its URL, or `None` when no server was provided (see [`require`]).
pub async fn fresh_postgres_database() -> Option<String> {
    let admin_url = require("POSTGRES_URL")?;
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let bin = require("POSTGRES_BIN").map(PathBuf::from);
    // `createdb` ships with the server binaries; no SQL client library needed here.
    let createdb = bin
        .map(|b| b.join("createdb"))
        .unwrap_or_else(|| PathBuf::from("createdb"));
    let status = tokio::process::Command::new(createdb)
        .arg("--maintenance-db")
        .arg(&admin_url)
        .arg(&name)
        .status()
        .await;
    match status {
        Ok(s) if s.success() => {}
        other => panic!("createdb {name} on {admin_url} failed: {other:?}"),
    }
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(base, _)| base);
    Some(format!("{base}/{name}"))
}

/// Polls `url` until it answers 2xx, or panics after `timeout`.
pub async fn wait_until_ok(url: &str, timeout: Duration) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(resp) = client.get(url).send().await
            && resp.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer 2xx within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub mod process;
pub mod service_checks;
