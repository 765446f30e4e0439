//! Promotion, rollback, status and their refusals, against temporary git repositories.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod common;

use std::sync::{Arc, Barrier};

use cloud_gitops::Error;
use cloud_gitops::promote::PromoteOptions;
use common::Fixture;

const SVC: &str = "cloud-demo";

fn version(v: &str) -> PromoteOptions {
    PromoteOptions {
        dry_run: false,
        version: Some(v.into()),
    }
}

fn plain() -> PromoteOptions {
    PromoteOptions::default()
}

fn rule_of(err: Error) -> &'static str {
    match err {
        Error::Refused { rule, .. } => rule,
        other => panic!("expected a refusal, got: {other}"),
    }
}

fn record(f: &Fixture, v: &str, checks: &[&str]) {
    for c in checks {
        f.gitops().record_check(SVC, v, c, "passed").unwrap();
    }
}

/// Puts `v` into dev (as image updates or `promote --to dev --version` would).
fn into_dev(f: &Fixture, v: &str) {
    let o = f.gitops().promote(SVC, "dev", &version(v)).unwrap();
    assert_eq!(o.result, "promoted");
}

#[test]
fn full_promotion_dev_staging_prod_with_soak_times() {
    let f = Fixture::new();
    let g = f.gitops();
    into_dev(&f, "1.1.0");
    assert_eq!(f.tag(SVC, "dev"), "1.1.0");

    // staging: 1h soak in dev.
    assert_eq!(
        rule_of(g.promote(SVC, "staging", &plain()).unwrap_err()),
        "soak"
    );
    f.advance_minutes(59);
    let err = g.promote(SVC, "staging", &plain()).unwrap_err().to_string();
    assert!(
        err.contains("soak") && err.contains("59m") && err.contains("requires 1h"),
        "{err}"
    );
    f.advance_minutes(1);
    // Soaked; the required checks (ci, e2e-dev) are not recorded yet.
    let err = g.promote(SVC, "staging", &plain()).unwrap_err().to_string();
    assert!(
        err.contains("rule `checks`")
            && err.contains("ci (not recorded)")
            && err.contains("e2e-dev (not recorded)"),
        "{err}"
    );
    record(&f, "1.1.0", &["ci", "e2e-dev"]);
    let before = f.commit_count();
    let o = g.promote(SVC, "staging", &plain()).unwrap();
    assert_eq!(
        (
            o.result,
            o.version.as_str(),
            o.previous.as_str(),
            o.from.as_deref()
        ),
        ("promoted", "1.1.0", "1.0.0", Some("dev"))
    );
    assert_eq!(f.commit_count(), before + 1, "one commit per promotion");
    assert_eq!(f.tag(SVC, "staging"), "1.1.0");
    f.assert_clean();
    let trailers = f.trailers("HEAD");
    for t in [
        "Promote-Service: cloud-demo",
        "Promote-From: dev",
        "Promote-To: staging",
        "Promote-Version: 1.1.0",
        "Promote-Previous: 1.0.0",
    ] {
        assert!(trailers.contains(t), "missing trailer {t} in:\n{trailers}");
    }
    // The commit changes exactly the image lines of one file.
    let changed = f.git(&["show", "--format=", "--name-only", "HEAD"]);
    assert_eq!(changed.trim(), "helm/cloud-demo/values-staging.yaml");
    assert_eq!(o.commit.as_deref(), Some(f.head().as_str()));

    // prod: 24h in staging, then ci, e2e-staging, load-test.
    f.advance_hours(23);
    assert_eq!(
        rule_of(g.promote(SVC, "prod", &plain()).unwrap_err()),
        "soak"
    );
    f.advance_hours(1);
    assert_eq!(
        rule_of(g.promote(SVC, "prod", &plain()).unwrap_err()),
        "checks"
    );
    record(&f, "1.1.0", &["e2e-staging", "load-test"]);
    let o = g.promote(SVC, "prod", &plain()).unwrap();
    assert_eq!(
        (o.result, o.version.as_str(), o.approvals_required),
        ("promoted", "1.1.0", 2)
    );
    assert_eq!(f.tag(SVC, "prod"), "1.1.0");
    assert!(f.trailers("HEAD").contains("Promote-From: staging"));

    // Promoting again is a no-op, not a new commit.
    let before = f.commit_count();
    assert_eq!(
        g.promote(SVC, "prod", &plain()).unwrap().result,
        "up-to-date"
    );
    assert_eq!(f.commit_count(), before);

    // status: every environment at 1.1.0, in sync, with who and when.
    let rows = g.status().unwrap();
    let demo: Vec<_> = rows.iter().filter(|r| r.service == SVC).collect();
    assert_eq!(demo.len(), 3);
    for r in &demo {
        assert_eq!(r.version, "1.1.0", "{r:?}");
        assert_eq!(r.by, "Test Promoter <promoter@example.com>");
    }
    let prod = demo.iter().find(|r| r.environment == "prod").unwrap();
    assert_eq!(prod.drift, "in-sync");
    assert_eq!(prod.since, "2026-01-06T10:00:00Z");
    let other = rows
        .iter()
        .find(|r| r.service == "cloud-other" && r.environment == "staging")
        .unwrap();
    assert_eq!(other.drift, "in-sync");
}

#[test]
fn digest_travels_with_the_version() {
    let f = Fixture::new();
    f.write(
        "helm/cloud-demo/values-dev.yaml",
        &common::values("1.2.0", "sha256:0120", 1, false),
    );
    f.commit_all("image updater: 1.2.0");
    f.advance_hours(2);
    record(&f, "1.2.0", &["ci", "e2e-dev"]);
    let o = f.gitops().promote(SVC, "staging", &plain()).unwrap();
    assert_eq!(o.digest.as_deref(), Some("sha256:0120"));
    assert!(
        f.read("helm/cloud-demo/values-staging.yaml")
            .contains("digest: \"sha256:0120\"")
    );
}

#[test]
fn status_shows_drift_when_an_environment_is_behind() {
    let f = Fixture::new();
    into_dev(&f, "1.3.0");
    let rows = f.gitops().status().unwrap();
    let staging = rows
        .iter()
        .find(|r| r.service == SVC && r.environment == "staging")
        .unwrap();
    assert_eq!(staging.drift, "behind dev (1.3.0)");
    let dev = rows
        .iter()
        .find(|r| r.service == SVC && r.environment == "dev")
        .unwrap();
    assert_eq!(
        (dev.drift.as_str(), dev.image_updates.as_str()),
        ("-", "on")
    );
}

#[test]
fn refused_no_skip_when_the_version_is_not_the_source_version() {
    let f = Fixture::new();
    let err = f
        .gitops()
        .promote(SVC, "prod", &version("1.1.0"))
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(rule_of(err), "no-skip");
    assert!(msg.contains("not the version in staging (1.0.0)"), "{msg}");
}

#[test]
fn refused_no_skip_when_the_version_bypassed_a_stage() {
    let f = Fixture::new();
    // Someone wrote 2.0.0 straight into staging; it was never in dev.
    f.write(
        "helm/cloud-demo/values-staging.yaml",
        &common::values("2.0.0", "sha256:0200", 2, true),
    );
    f.commit_all("hand edit");
    f.advance_hours(48);
    record(&f, "2.0.0", &["ci", "e2e-staging", "load-test"]);
    let err = f.gitops().promote(SVC, "prod", &plain()).unwrap_err();
    let msg = err.to_string();
    assert_eq!(rule_of(err), "no-skip", "{msg}");
    assert!(msg.contains("never deployed in dev"), "{msg}");
    assert_eq!(f.tag(SVC, "prod"), "1.0.0");
}

#[test]
fn refused_semver_for_unreleased_tags() {
    let f = Fixture::new();
    assert_eq!(
        rule_of(
            f.gitops()
                .promote(SVC, "dev", &version("1.2.0-rc.1"))
                .unwrap_err()
        ),
        "semver"
    );
    f.write(
        "helm/cloud-demo/values-dev.yaml",
        &common::values("main-3f2a1c", "", 1, false),
    );
    f.commit_all("branch build in dev");
    f.advance_hours(5);
    let err = f.gitops().promote(SVC, "staging", &plain()).unwrap_err();
    let msg = err.to_string();
    assert_eq!(rule_of(err), "semver");
    assert!(msg.contains("main-3f2a1c"), "{msg}");
}

#[test]
fn refused_soak_counts_from_when_the_version_arrived_not_from_the_last_edit() {
    let f = Fixture::new();
    into_dev(&f, "1.1.0");
    f.advance_minutes(50);
    // An unrelated edit of the dev values file does not restart (or fake) the soak.
    let text = f
        .read("helm/cloud-demo/values-dev.yaml")
        .replace("replicaCount: 1", "replicaCount: 2");
    f.write("helm/cloud-demo/values-dev.yaml", &text);
    f.commit_all("dev: 2 replicas");
    f.advance_minutes(10);
    record(&f, "1.1.0", &["ci", "e2e-dev"]);
    assert_eq!(
        f.gitops().promote(SVC, "staging", &plain()).unwrap().result,
        "promoted"
    );
}

#[test]
fn refused_checks_names_the_failed_check() {
    let f = Fixture::new();
    into_dev(&f, "1.1.0");
    f.advance_hours(1);
    record(&f, "1.1.0", &["ci"]);
    f.gitops()
        .record_check(SVC, "1.1.0", "e2e-dev", "failed")
        .unwrap();
    let err = f.gitops().promote(SVC, "staging", &plain()).unwrap_err();
    let msg = err.to_string();
    assert_eq!(rule_of(err), "checks");
    assert!(
        msg.contains("e2e-dev (failed)") && !msg.contains("ci ("),
        "{msg}"
    );
}

#[test]
fn dry_run_shows_the_diff_and_commits_nothing() {
    let f = Fixture::new();
    let head = f.head();
    let o = f
        .gitops()
        .promote(
            SVC,
            "dev",
            &PromoteOptions {
                dry_run: true,
                version: Some("1.4.0".into()),
            },
        )
        .unwrap();
    assert_eq!(o.result, "dry-run");
    assert!(
        o.diff.contains("-  tag: \"1.0.0\"") && o.diff.contains("+  tag: \"1.4.0\""),
        "{}",
        o.diff
    );
    assert_eq!(f.head(), head);
    assert_eq!(f.tag(SVC, "dev"), "1.0.0");
    f.assert_clean();
}

#[test]
fn dirty_work_tree_is_refused_and_nothing_is_written() {
    let f = Fixture::new();
    f.write(
        "helm/cloud-demo/values-dev.yaml",
        &common::values("9.9.9", "", 1, false),
    );
    f.write("notes.txt", "scratch");
    let head = f.head();
    let err = f
        .gitops()
        .promote(SVC, "dev", &version("1.1.0"))
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::DirtyTree { .. }), "{msg}");
    assert!(
        msg.contains("uncommitted changes")
            && msg.contains("helm/cloud-demo/values-dev.yaml")
            && msg.contains("notes.txt"),
        "{msg}"
    );
    assert_eq!(f.head(), head);
    assert!(matches!(
        f.gitops().rollback(SVC, "dev", None, false).unwrap_err(),
        Error::DirtyTree { .. }
    ));
    // The user's edit is untouched.
    assert!(f.read("helm/cloud-demo/values-dev.yaml").contains("9.9.9"));
}

#[test]
fn malformed_environment_file_is_refused_with_file_key_and_reason() {
    let f = Fixture::new();
    let prod = f
        .read("environments/prod.yaml")
        .replace("  min: 2\n  max: 10", "  min: two\n  max: 10");
    f.write("environments/prod.yaml", &prod);
    f.commit_all("typo");
    let err = f
        .gitops()
        .promote(SVC, "dev", &version("1.1.0"))
        .unwrap_err();
    let msg = err.to_string();
    match &err {
        Error::Matrix { file, key, reason } => {
            assert_eq!(file, std::path::Path::new("environments/prod.yaml"));
            assert_eq!(key, "replicas.min");
            assert!(
                reason.contains("\"two\"") && reason.contains("integer"),
                "{reason}"
            );
        }
        other => panic!("expected a matrix error, got {other}"),
    }
    assert!(
        msg.starts_with("environments/prod.yaml: key `replicas.min`: "),
        "{msg}"
    );

    let dev = f
        .read("environments/dev.yaml")
        .replace("baseDomain:", "baseDomian:");
    f.write("environments/dev.yaml", &dev);
    f.commit_all("typo 2");
    let msg = f.gitops().status().unwrap_err().to_string();
    assert!(
        msg.contains("environments/dev.yaml") && msg.contains("baseDomian"),
        "{msg}"
    );

    f.write("environments/dev.yaml", "name: dev\n  tier: [\n");
    f.commit_all("broken yaml");
    let msg = f.gitops().status().unwrap_err().to_string();
    assert!(
        msg.contains("environments/dev.yaml: key `(syntax)`: not valid YAML (line"),
        "{msg}"
    );
}

#[test]
fn rollback_after_a_bad_prod_promotion_restores_the_exact_previous_version_and_rollback_of_rollback()
 {
    let f = Fixture::new();
    let g = f.gitops();
    let original_prod = f.read("helm/cloud-demo/values-prod.yaml");
    f.write(
        "helm/cloud-demo/values-dev.yaml",
        &common::values("1.1.0", "sha256:0110", 1, false),
    );
    f.commit_all("image updater: 1.1.0");
    f.advance_hours(1);
    record(&f, "1.1.0", &["ci", "e2e-dev", "e2e-staging", "load-test"]);
    g.promote(SVC, "staging", &plain()).unwrap();
    f.advance_hours(24);
    g.promote(SVC, "prod", &plain()).unwrap();
    let bad_prod = f.read("helm/cloud-demo/values-prod.yaml");
    assert!(bad_prod.contains("sha256:0110"));

    // 1.1.0 is bad in prod: roll back.
    let o = g.rollback(SVC, "prod", None, false).unwrap();
    assert_eq!(
        (
            o.result,
            o.version.as_str(),
            o.previous.as_str(),
            o.digest.as_deref()
        ),
        ("rolled-back", "1.0.0", "1.1.0", Some("sha256:0100"))
    );
    assert_eq!(
        f.read("helm/cloud-demo/values-prod.yaml"),
        original_prod,
        "the exact previous file, digest included"
    );
    let trailers = f.trailers("HEAD");
    for t in [
        "Rollback-Service: cloud-demo",
        "Rollback-Env: prod",
        "Rollback-Version: 1.0.0",
        "Rollback-Previous: 1.1.0",
    ] {
        assert!(trailers.contains(t), "missing {t} in\n{trailers}");
    }
    assert_eq!(o.image_updates, None, "prod has no image updates to pause");
    f.assert_clean();
    let rows = g.status().unwrap();
    let prod = rows
        .iter()
        .find(|r| r.service == SVC && r.environment == "prod")
        .unwrap();
    assert_eq!(
        (prod.version.as_str(), prod.drift.as_str()),
        ("1.0.0", "behind staging (1.1.0)")
    );

    // Rolling back the rollback restores 1.1.0 exactly.
    let o = g.rollback(SVC, "prod", None, false).unwrap();
    assert_eq!(
        (o.version.as_str(), o.previous.as_str()),
        ("1.1.0", "1.0.0")
    );
    assert_eq!(f.read("helm/cloud-demo/values-prod.yaml"), bad_prod);

    // And --to picks a named version from history.
    let o = g.rollback(SVC, "prod", Some("1.0.0"), false).unwrap();
    assert_eq!(o.version, "1.0.0");
    assert_eq!(f.read("helm/cloud-demo/values-prod.yaml"), original_prod);
    let err = g.rollback(SVC, "prod", Some("0.9.0"), false).unwrap_err();
    assert!(
        err.to_string().contains("0.9.0 was never deployed in prod"),
        "{err}"
    );
}

#[test]
fn rollback_without_trailers_falls_back_to_file_history() {
    let f = Fixture::new();
    f.write(
        "helm/cloud-demo/values-staging.yaml",
        &common::values("1.0.1", "sha256:0101", 2, true),
    );
    f.commit_all("hotfix by hand, no trailers");
    let o = f.gitops().rollback(SVC, "staging", None, false).unwrap();
    assert_eq!(
        (o.version.as_str(), o.digest.as_deref()),
        ("1.0.0", Some("sha256:0100"))
    );
}

#[test]
fn rollback_with_no_history_is_refused() {
    let f = Fixture::new();
    let err = f.gitops().rollback(SVC, "prod", None, false).unwrap_err();
    assert_eq!(rule_of(err), "history");
}

#[test]
fn rollback_in_dev_pauses_image_updates_until_the_next_promote() {
    let f = Fixture::new();
    into_dev(&f, "1.1.0");
    let o = f.gitops().rollback(SVC, "dev", None, false).unwrap();
    assert_eq!(
        (o.version.as_str(), o.image_updates),
        ("1.0.0", Some("paused"))
    );
    let dev = f.read("environments/dev.yaml");
    assert!(dev.contains("  paused: [cloud-demo]"), "{dev}");
    let changed = f.git(&["show", "--format=", "--name-only", "HEAD"]);
    assert_eq!(
        changed.lines().count(),
        2,
        "one commit: values file and the pause: {changed}"
    );
    let rows = f.gitops().status().unwrap();
    assert_eq!(
        rows.iter()
            .find(|r| r.service == SVC && r.environment == "dev")
            .unwrap()
            .image_updates,
        "paused"
    );

    let o = f.gitops().promote(SVC, "dev", &version("1.1.1")).unwrap();
    assert_eq!(o.image_updates, Some("resumed"));
    assert!(f.read("environments/dev.yaml").contains("  paused: []"));
    f.assert_clean();
}

#[test]
fn two_racing_promotions_one_fails_cleanly_and_nothing_is_lost() {
    let f = Fixture::new();
    for svc in common::SERVICES {
        f.gitops().promote(svc, "dev", &version("1.1.0")).unwrap();
    }
    f.advance_hours(1);
    for svc in common::SERVICES {
        for c in ["ci", "e2e-dev"] {
            f.gitops().record_check(svc, "1.1.0", c, "passed").unwrap();
        }
    }
    let base = f.head();
    let base_count = f.commit_count();
    // Both prepare their commit on the same HEAD, then publish at the same moment.
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = common::SERVICES
        .iter()
        .map(|svc| {
            let mut g = f.gitops();
            let b = barrier.clone();
            g.before_publish = Some(Arc::new(move || {
                b.wait();
            }));
            let svc = svc.to_string();
            std::thread::spawn(move || {
                (
                    svc.clone(),
                    g.promote(&svc, "staging", &PromoteOptions::default()),
                )
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let won: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
    let lost: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert_eq!((won.len(), lost.len()), (1, 1), "{results:?}");
    let (loser, err) = lost[0];
    let msg = err.as_ref().unwrap_err().to_string();
    assert!(matches!(err, Err(Error::Race { .. })), "{msg}");
    assert!(
        msg.contains(&base) && msg.contains("nothing was written"),
        "{msg}"
    );
    // Exactly the winner's commit landed, and the tree is consistent with it.
    assert_eq!(f.commit_count(), base_count + 1);
    f.assert_clean();
    assert_eq!(f.tag(&won[0].0, "staging"), "1.1.0");
    assert_eq!(f.tag(loser, "staging"), "1.0.0");
    // Re-running the loser applies it on top: nothing lost.
    f.gitops()
        .promote(loser, "staging", &PromoteOptions::default())
        .unwrap();
    assert_eq!(f.commit_count(), base_count + 2);
    for svc in common::SERVICES {
        assert_eq!(f.tag(svc, "staging"), "1.1.0");
    }
    f.assert_clean();
}

#[test]
fn first_stage_needs_an_explicit_version_and_unknown_names_are_clear() {
    let f = Fixture::new();
    let msg = f
        .gitops()
        .promote(SVC, "dev", &plain())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--version"), "{msg}");
    let msg = f
        .gitops()
        .promote(SVC, "qa", &plain())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unknown environment `qa`") && msg.contains("dev, staging, prod"),
        "{msg}"
    );
    let msg = f
        .gitops()
        .promote("nope", "dev", &version("1.0.0"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("helm/nope/values-dev.yaml does not exist"),
        "{msg}"
    );
}
