//! `cloud-identity-access migrate` as a real process, the way the Helm chart's PreSync Job runs
//! it: no bootstrap secret, no listener, JSON on stdout, idempotent, clear errors.
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cloud-identity-access");

/// The binary with a clean environment: only what the test passes, so a developer's
/// `IDENTITY_*` variables cannot leak in. No bootstrap secret, no encryption key.
fn migrate(config: Option<&Path>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("IDENTITY_TELEMETRY__LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .arg("migrate");
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.envs(env.iter().copied());
    // The timeout is the test's: `migrate` must exit by itself (it never starts a server).
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("`migrate` did not exit within 60 s")
        .unwrap()
}

fn report(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn versions(report: &Value, field: &str) -> Vec<i64> {
    report[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} missing: {report}"))
        .iter()
        .map(|m| m["version"].as_i64().unwrap())
        .collect()
}

/// First run applies every migration, the second applies none and finds them all present.
fn assert_idempotent(first: &Value, second: &Value, backend: &str, known: usize) {
    assert_eq!(first["backend"], backend, "{first}");
    assert_eq!(versions(first, "applied").len(), known, "{first}");
    assert!(versions(first, "already_present").is_empty(), "{first}");
    assert_eq!(versions(first, "applied")[0], 1, "{first}");
    assert_eq!(first["applied"][0]["name"], "initial", "{first}");
    assert!(versions(second, "applied").is_empty(), "{second}");
    assert_eq!(
        versions(second, "already_present"),
        versions(first, "applied"),
        "{second}"
    );
    assert!(versions(second, "unknown").is_empty(), "{second}");
}

#[test]
fn migrate_applies_the_sqlite_migrations_once_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = dir.path().join("config.yaml");
    // Like the chart's /etc/cloud/config.yaml: a file, no secrets at all.
    std::fs::write(
        &config,
        format!("data_dir: {}\n", data_dir.to_str().unwrap()),
    )
    .unwrap();
    let first = report(&migrate(Some(&config), &[]));
    let second = report(&migrate(Some(&config), &[]));
    assert_idempotent(
        &first,
        &second,
        "sqlite",
        cloud_identity_access::store::SQLITE_MIGRATIONS.len(),
    );
    assert!(data_dir.join("identity.db").exists());
    // Migrations only: no signing key was generated, no bootstrap client created.
    assert!(!data_dir.join("key-encryption.key").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_the_postgres_migrations_once_and_the_service_starts_on_them() {
    let Some(url) = cloud_test_support::fresh_postgres_database().await else {
        return;
    };
    let env = [("IDENTITY_DATABASE__URL", url.as_str())];
    let first = report(&migrate(None, &env));
    let second = report(&migrate(None, &env));
    assert_idempotent(
        &first,
        &second,
        "postgres",
        cloud_identity_access::store::POSTGRES_MIGRATIONS.len(),
    );
    // The schema is real: the store opens on it without applying anything, and works.
    let store = cloud_identity_access::store::PostgresStore::open(&url)
        .await
        .unwrap();
    use cloud_identity_access::store::Store;
    let again = store.migrate().await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(store.count_tenants().await.unwrap(), 0);
}

/// Runs `migrate` `n` times at once (the PreSync Job racing starting replicas) and checks that
/// all succeed and every migration was applied by exactly one of them.
fn concurrent_runs_apply_each_migration_once(env: &[(&str, &str)], known: usize) {
    let reports: Vec<Value> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| report(&migrate(None, env))))
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    let mut applied: Vec<i64> = reports
        .iter()
        .flat_map(|r| versions(r, "applied"))
        .collect();
    applied.sort_unstable();
    let expected: Vec<i64> = (1..=i64::try_from(known).unwrap()).collect();
    assert_eq!(applied, expected, "each applied exactly once: {reports:?}");
    for r in &reports {
        assert_eq!(
            versions(r, "applied").len() + versions(r, "already_present").len(),
            known,
            "{r}"
        );
    }
}

#[test]
fn concurrent_sqlite_migrations_apply_each_migration_once() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_runs_apply_each_migration_once(
        &[("IDENTITY_DATA_DIR", dir.path().to_str().unwrap())],
        cloud_identity_access::store::SQLITE_MIGRATIONS.len(),
    );
}

/// Regression (CI, 2026-11-26): the switch of a new file to WAL takes an exclusive lock that
/// SQLite does not wait for with the busy timeout, so a `migrate` racing another process's
/// first open failed at once with "database is locked". Here the other process is played
/// deterministically: a connection holds the write (RESERVED) lock on the new file for 300 ms,
/// which is when SQLite answers the WAL switch with SQLITE_BUSY at once (waiting could
/// deadlock), whatever the busy timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migrate_waits_for_another_process_holding_the_new_file() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("identity.db");
    let mut holder =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", file.display()))
            .await
            .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let run = std::thread::spawn(move || migrate(None, &[("IDENTITY_DATA_DIR", &data_dir)]));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !run.is_finished(),
        "migrate must wait for the lock, not fail"
    );
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    let applied = versions(&report(&run.join().unwrap()), "applied");
    assert_eq!(
        applied.len(),
        cloud_identity_access::store::SQLITE_MIGRATIONS.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_postgres_migrations_apply_each_migration_once() {
    let Some(url) = cloud_test_support::fresh_postgres_database().await else {
        return;
    };
    concurrent_runs_apply_each_migration_once(
        &[("IDENTITY_DATABASE__URL", url.as_str())],
        cloud_identity_access::store::POSTGRES_MIGRATIONS.len(),
    );
}

#[test]
fn a_bad_database_url_is_a_clear_error_without_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    for url in [
        // Nothing listens on port 1: a connection error.
        "postgres://migrator:hunter2-secret@127.0.0.1:1/identity",
        // Not a database URL this service supports.
        "mysql://migrator:hunter2-secret@127.0.0.1/identity",
        // A malformed port.
        "postgres://migrator:hunter2-secret@127.0.0.1:notaport/identity",
    ] {
        let out = migrate(
            None,
            &[
                ("IDENTITY_DATA_DIR", data_dir),
                ("IDENTITY_DATABASE__URL", url),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: {stderr}");
        assert!(out.stdout.is_empty(), "{url}: nothing reported as applied");
        assert!(
            stderr.contains("database.url") && stderr.contains("IDENTITY_DATABASE__URL"),
            "{url}: the error names the setting: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{url}: {stderr}");
    }
}
