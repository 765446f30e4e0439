//! The GitOps commands of the real `cloudctl` binary on a temporary git repository shaped like
//! this one (the real `environments/` and `argocd/`, a demo service chart).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod common;

use common::{copy_dir, git, repo_root};
use std::path::Path;
use std::process::{Command, Output};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn values(tag: &str, replicas: u32, canary: bool, domain: &str) -> String {
    format!(
        "image:\n  tag: \"{tag}\"\nautoscaling:\n  minReplicas: {replicas}\n  maxReplicas: 2\nrollout:\n  enabled: {canary}\ningress:\n  host: demo.{domain}\n"
    )
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    copy_dir(
        &repo_root().join("environments"),
        &root.join("environments"),
    );
    let _ = std::fs::remove_dir_all(root.join("environments/checks"));
    copy_dir(&repo_root().join("argocd"), &root.join("argocd"));
    write(
        root,
        "helm/cloud-demo/Chart.yaml",
        "apiVersion: v2\nname: cloud-demo\nversion: 0.1.0\n",
    );
    write(
        root,
        "helm/cloud-demo/values.yaml",
        "image:\n  repository: ghcr.io/cloud-platform/cloud-demo\n  tag: \"0.0.0\"\n  digest: \"\"\nautoscaling:\n  minReplicas: 2\n  maxReplicas: 2\nrollout:\n  enabled: false\ningress:\n  enabled: true\n  host: demo.cloud-platform.example\n",
    );
    write(
        root,
        "helm/cloud-demo/values-dev.yaml",
        &values("1.0.0", 1, false, "dev.cloud-platform.example"),
    );
    write(
        root,
        "helm/cloud-demo/values-staging.yaml",
        &values("1.0.0", 2, true, "staging.cloud-platform.example"),
    );
    write(
        root,
        "helm/cloud-demo/values-prod.yaml",
        &values("1.0.0", 2, true, "cloud-platform.example"),
    );
    write(
        root,
        "helm/platform-base/Chart.yaml",
        "apiVersion: v2\nname: platform-base\nversion: 0.1.0\n",
    );
    for env in ["", "-dev", "-staging", "-prod"] {
        write(
            root,
            &format!("helm/platform-base/values{env}.yaml"),
            "{}\n",
        );
    }
    git(root, &["init", "-q", "-b", "main"]);
    git(root, &["config", "user.name", "CLI Test"]);
    git(root, &["config", "user.email", "cli@example.com"]);
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "fixture"]);
    dir
}

fn cloudctl(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloudctl"))
        .args(args)
        .arg("--repo")
        .arg(root)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_gitops_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["env", "--help"],
        vec!["env", "list", "--help"],
        vec!["env", "show", "--help"],
        vec!["env", "diff", "--help"],
        vec!["env", "validate", "--help"],
        vec!["promote", "--help"],
        vec!["rollback", "--help"],
        vec!["status", "--help"],
        vec!["checks", "record", "--help"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_cloudctl"))
            .args(&args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).contains("Usage:"), "{args:?}");
    }
}

#[test]
fn validate_passes_then_fails_on_a_broken_example() {
    let dir = fixture();
    let o = cloudctl(dir.path(), &["env", "validate"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("checked schema: 3 environment files (dev -> staging -> prod)"),
        "{}",
        stdout(&o)
    );

    write(
        dir.path(),
        "helm/cloud-demo/values-prod.yaml",
        &values("latest", 2, true, "cloud-platform.example"),
    );
    let o = cloudctl(dir.path(), &["env", "validate", "--output", "json"]);
    assert!(!o.status.success());
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let findings = report["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["check"] == "prod"
            && f["key"] == "image.tag"
            && f["file"] == "helm/cloud-demo/values-prod.yaml"),
        "{findings:?}"
    );
    assert!(stderr(&o).contains("finding(s)"));
}

#[test]
fn promote_status_rollback_round_trip_with_json_output() {
    let dir = fixture();
    let root = dir.path();
    let o = cloudctl(
        root,
        &[
            "promote",
            "cloud-demo",
            "--to",
            "dev",
            "--version",
            "1.2.0",
            "--output",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["outcomes"][0]["result"], "promoted");
    assert_eq!(doc["outcomes"][0]["previous"], "1.0.0");

    let o = cloudctl(
        root,
        &[
            "promote",
            "cloud-demo",
            "--to",
            "staging",
            "--output",
            "json",
        ],
    );
    assert!(!o.status.success());
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["refusals"][0]["rule"], "soak", "{doc}");
    assert!(
        stderr(&o).contains("refused by rule `soak`"),
        "{}",
        stderr(&o)
    );

    let o = cloudctl(root, &["status", "--output", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let staging = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["environment"] == "staging")
        .unwrap();
    assert_eq!(staging["drift"], "behind dev (1.2.0)");

    let o = cloudctl(root, &["rollback", "cloud-demo", "--env", "dev"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("rolled-back cloud-demo dev: 1.2.0 -> 1.0.0"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("image updates paused for cloud-demo in dev"),
        "{}",
        stdout(&o)
    );
    // The paused service is still a valid matrix, now without image-updater annotations.
    let o = cloudctl(root, &["env", "validate"]);
    assert!(o.status.success(), "{}", stdout(&o));

    let o = cloudctl(root, &["env", "list", "--output", "markdown"]);
    assert!(
        stdout(&o).contains("| image updates | on (paused: cloud-demo) | off | off |"),
        "{}",
        stdout(&o)
    );
}

/// `cloudctl status --output json | head -1`: a reader that goes away early is a normal end of
/// the output, as for `cat` or `git log`: exit 0, nothing on stderr, in particular no
/// "failed printing to stdout: Broken pipe" panic.
#[test]
fn a_closed_stdout_is_a_quiet_clean_exit() {
    let dir = fixture();
    let root = dir.path();
    let commands: [&[&str]; 7] = [
        &["status", "--output", "json"],
        &["status"],
        &["env", "list"],
        &["env", "list", "--output", "markdown"],
        &["env", "show", "prod", "--output", "json"],
        &["env", "show", "prod"],
        &["env", "validate"],
    ];
    for args in commands {
        // The read end is closed before cloudctl starts, so its first write gets EPIPE
        // whatever the size of the output (a pipe buffer would hide a late close).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(env!("CARGO_BIN_EXE_cloudctl"))
            .args(args)
            .arg("--repo")
            .arg(root)
            .stdout(writer)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        // Only what the command writes there anyway (`env validate`'s summary).
        for unwanted in ["panicked", "Broken pipe", "error"] {
            assert!(!stderr(&o).contains(unwanted), "{args:?}: {}", stderr(&o));
        }
    }

    // The output ends early, the verdict does not: findings still exit 1.
    let staging = root.join("environments/staging.yaml");
    let text = std::fs::read_to_string(&staging).unwrap();
    std::fs::write(&staging, text.replace("    region: eu-central-1\n", "")).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_cloudctl"))
        .args(["env", "validate", "--repo"])
        .arg(root)
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 finding(s)"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    std::fs::write(&staging, text).unwrap();

    // Like `| head -1`: read one line, then drop the read end while cloudctl may still write.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudctl"))
        .args(["status", "--output", "json", "--repo"])
        .arg(root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert_eq!(first, "[\n");
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("Broken pipe"), "{}", stderr(&o));
}
