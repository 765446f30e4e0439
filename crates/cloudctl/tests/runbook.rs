//! The rollback runbook in docs/gitops.md, run word for word: every `sh` block of its
//! "Rollback runbook" section, in order, in one bash with `set -euo pipefail`, on a scratch
//! repository holding this checkout's `environments/`, `argocd/` and `helm/`. Only two lines are
//! bound to this machine: `SOURCE` (the scratch repository instead of the public URL) and the
//! `cloudctl` shell function (the binary under test instead of `cargo run`). Then the outcomes
//! the runbook promises are checked, so a doc that drifts from the CLI fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod common;

use common::{copy_dir, git, repo_root};
use std::process::Command;

const SECTION: &str = "## Rollback runbook";
const SOURCE_LINE: &str = "SOURCE=https://github.com/cloud-platform/cloud-platform.git";
const CLOUDCTL_LINE: &str = "cloudctl() { cargo run -q -p cloudctl -- \"$@\"; }";
const DRILL_DIR: &str = "/tmp/gitops-drill";

/// The `sh` blocks of the runbook section, in document order.
fn runbook_blocks(doc: &str) -> Vec<String> {
    let start = doc
        .find(SECTION)
        .unwrap_or_else(|| panic!("docs/gitops.md has no `{SECTION}` section"));
    let rest = &doc[start + SECTION.len()..];
    let section = rest.find("\n## ").map_or(rest, |end| &rest[..end]);
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in section.lines() {
        let trimmed = line.trim_start();
        match (&mut current, trimmed) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(lines), "```") => {
                blocks.push(lines.join("\n"));
                current = None;
            }
            (Some(lines), _) => lines.push(trimmed),
            (None, _) => {}
        }
    }
    assert!(
        current.is_none(),
        "an unterminated ```sh block in the runbook"
    );
    blocks
}

/// A repository shaped like a clone of this one, committed by someone other than the operator.
fn scratch_source() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["environments", "argocd", "helm"] {
        copy_dir(&repo_root().join(sub), &dir.path().join(sub));
    }
    // Recorded checks belong to this repository's history, not to the drill's.
    let _ = std::fs::remove_dir_all(dir.path().join("environments/checks"));
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(
        dir.path(),
        &[
            "-c",
            "user.name=Release Bot",
            "-c",
            "user.email=release@example.com",
            "commit",
            "-qm",
            "seed: the platform as released",
        ],
    );
    dir
}

#[test]
fn the_rollback_runbook_runs_word_for_word() {
    let doc = std::fs::read_to_string(repo_root().join("docs/gitops.md")).unwrap();
    let blocks = runbook_blocks(&doc);
    assert!(
        blocks.len() >= 7,
        "expected the set-up block and the six drill steps with commands, found {} blocks",
        blocks.len()
    );
    let script = blocks.join("\n");
    assert!(
        script.contains(SOURCE_LINE) && script.contains(CLOUDCTL_LINE),
        "the runbook no longer has the lines this test binds to the machine:\n{SOURCE_LINE}\n{CLOUDCTL_LINE}"
    );
    let source = scratch_source();
    let work = tempfile::tempdir().unwrap();
    let drill = work.path().join("gitops-drill");
    let script = script
        .replace(SOURCE_LINE, &format!("SOURCE={}", source.path().display()))
        .replace(
            CLOUDCTL_LINE,
            &format!(
                "cloudctl() {{ {} \"$@\"; }}",
                env!("CARGO_BIN_EXE_cloudctl")
            ),
        )
        .replace(DRILL_DIR, &drill.display().to_string());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the runbook failed ({}):\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let all = format!("{stdout}\n{stderr}");

    // Step 2: the rollback commit carries the trailers the runbook lists.
    let log = git(&drill, &["log", "--format=%B%x00"]);
    let rollback = log
        .split('\0')
        .find(|m| m.contains("Rollback-Previous: 0.9.0"))
        .unwrap_or_else(|| panic!("no commit rolls back from 0.9.0:\n{log}"));
    for trailer in [
        "Rollback-Service: cloud-identity-access",
        "Rollback-Env: prod",
        "Rollback-Version: ",
    ] {
        assert!(rollback.contains(trailer), "{trailer} missing:\n{rollback}");
    }
    // Step 4: the rollback of the rollback restored 0.9.0 exactly, and `--to 0.9.0` was refused.
    let prod =
        std::fs::read_to_string(drill.join("helm/cloud-identity-access/values-prod.yaml")).unwrap();
    assert!(prod.contains("tag: \"0.9.0\""), "{prod}");
    assert!(all.contains("refused: already at 0.9.0"), "{all}");
    // Step 5: image updates paused by the dev rollback, resumed by the next promote.
    let paused = stdout.find("paused: [cloud-identity-access]");
    let resumed = stdout.find("paused: []");
    assert!(
        matches!((paused, resumed), (Some(p), Some(r)) if p < r),
        "expected `paused: [cloud-identity-access]` then `paused: []`:\n{stdout}"
    );
    // Step 6: the promotion to staging is refused by the soak rule, naming it.
    assert!(all.contains("refused by rule `soak`"), "{all}");
    assert!(
        all.contains("staging requires 1h"),
        "the soak refusal should name staging's minimum soak:\n{all}"
    );
    // Step 7: refused by `checks` until both are recorded, then promoted to staging in one
    // commit with the five trailers; prod refuses it by `soak` (24h).
    assert!(
        all.contains("refused by rule `checks`")
            && all.contains("missing ci (not recorded), e2e-dev (not recorded)"),
        "the first staging promotion should be refused by `checks`, naming both:\n{all}"
    );
    for line in [
        "rule soak: in dev for 2h0m (>= 1h)",
        "rule checks: ci, e2e-dev passed",
        "promoted cloud-identity-access staging: 0.1.0 -> 0.9.3 from dev",
    ] {
        assert!(stdout.contains(line), "{line:?} missing:\n{stdout}");
    }
    assert!(
        drill
            .join("environments/checks/cloud-identity-access/0.9.3.yaml")
            .is_file(),
        "checks record should commit environments/checks/cloud-identity-access/0.9.3.yaml"
    );
    let promotion = git(&drill, &["log", "-1", "--format=%B"]);
    for trailer in [
        "Promote-Service: cloud-identity-access",
        "Promote-From: dev",
        "Promote-To: staging",
        "Promote-Version: 0.9.3",
        "Promote-Previous: 0.1.0",
    ] {
        assert!(
            promotion.contains(trailer),
            "{trailer} missing:\n{promotion}"
        );
    }
    let staging =
        std::fs::read_to_string(drill.join("helm/cloud-identity-access/values-staging.yaml"))
            .unwrap();
    assert!(staging.contains("tag: \"0.9.3\""), "{staging}");
    assert!(
        all.contains("prod requires 24h"),
        "prod should refuse 0.9.3 by `soak`, naming its 24h:\n{all}"
    );
}

#[test]
fn runbook_blocks_are_found_in_order_and_stop_at_the_next_section() {
    let doc = "# x\n```sh\nnot this\n```\n## Rollback runbook\ntext\n```sh\none\n```\n\n1. step:\n\n   ```sh\n   two\n   three\n   ```\n## Next\n```sh\nnot this either\n```\n";
    assert_eq!(runbook_blocks(doc), vec!["one", "two\nthree"]);
}
