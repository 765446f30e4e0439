//! Behaviour without a server: bootstrap, last-known-good, kill switch, audit trail,
//! distribution of rollouts, metrics, impressions, OTel attributes and the OpenFeature provider.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloud_flags::audit;
use cloud_flags::killswitch::KillSwitchSource;
use cloud_flags::{
    ChangeKind, FlagClient, FlagContext, FlagError, FlagKey, OfflineConfig, StateSource,
    UnleashConfig, platform,
};
use cloud_kit::ManualClock;
use serde_json::{Value, json};
use time::macros::datetime;

fn rollout_flag(name: &str, rollout: u32, stickiness: &str) -> Value {
    json!({"name": name, "enabled": true, "strategies": [{"name": "flexibleRollout",
        "parameters": {"rollout": rollout.to_string(), "stickiness": stickiness, "groupId": name}, "constraints": []}]})
}

fn doc(features: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"version": 2, "features": features})).unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(datetime!(2026-11-26 14:00 UTC)))
}

fn tenant(i: usize) -> FlagContext {
    FlagContext::new().with_tenant_id(format!("tenant-{i}"))
}

// ------------------------------------------------------------------ distribution

#[test]
fn ten_percent_of_100k_tenants_is_ten_percent_plus_minus_one() {
    let client =
        FlagClient::from_features_json(&doc(vec![rollout_flag("r", 10, "tenantId")])).unwrap();
    let on = (0..100_000)
        .filter(|i| client.is_enabled("r", &tenant(*i)))
        .count();
    assert!(
        (9_000..=11_000).contains(&on),
        "{on} of 100000 tenants enabled at 10%"
    );
}

#[test]
fn raising_a_rollout_never_drops_a_tenant() {
    let mut previous: Option<BTreeSet<usize>> = None;
    for pct in [1, 5, 10, 25, 50, 75, 100] {
        let client =
            FlagClient::from_features_json(&doc(vec![rollout_flag("r", pct, "tenantId")])).unwrap();
        let on: BTreeSet<usize> = (0..100_000)
            .filter(|i| client.is_enabled("r", &tenant(*i)))
            .collect();
        if let Some(prev) = &previous {
            let dropped = prev.difference(&on).count();
            assert_eq!(dropped, 0, "raising to {pct}% dropped {dropped} tenants");
        }
        assert!(
            on.len().abs_diff(pct as usize * 1000) <= 1000,
            "{pct}%: {} on",
            on.len()
        );
        previous = Some(on);
    }
    assert_eq!(previous.unwrap().len(), 100_000);
}

#[test]
fn variant_weights_are_honoured_and_sticky_per_tenant() {
    let flag = json!({"name": "v", "enabled": true, "strategies": [{"name": "default"}], "variants": [
        {"name": "a", "weight": 200, "weightType": "variable", "stickiness": "tenantId"},
        {"name": "b", "weight": 300, "weightType": "variable", "stickiness": "tenantId"},
        {"name": "c", "weight": 500, "weightType": "variable", "stickiness": "tenantId"}]});
    let client = FlagClient::from_features_json(&doc(vec![flag])).unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..100_000 {
        let v = client.variant("v", &tenant(i));
        // Sticky: the same tenant gets the same variant, whatever the user.
        if i % 1000 == 0 {
            let other_user = client.variant("v", &tenant(i).with_user_id("someone-else"));
            assert_eq!(v.name, other_user.name);
        }
        *counts.entry(v.name).or_insert(0usize) += 1;
    }
    for (name, weight) in [("a", 0.2), ("b", 0.3), ("c", 0.5)] {
        let share = counts.get(name).copied().unwrap_or(0) as f64 / 100_000.0;
        assert!(
            (share - weight).abs() <= 0.01,
            "variant {name}: {share} of tenants, weight {weight}"
        );
    }
}

#[test]
fn tenant_id_works_as_a_constraint_field() {
    let flag = json!({"name": "c", "enabled": true, "strategies": [{"name": "default", "constraints": [
        {"contextName": "tenantId", "operator": "IN", "values": ["acme"]}]}]});
    let client = FlagClient::from_features_json(&doc(vec![flag])).unwrap();
    assert!(client.is_enabled("c", &FlagContext::new().with_tenant_id("acme")));
    assert!(!client.is_enabled("c", &FlagContext::new().with_tenant_id("globex")));
    assert!(!client.is_enabled("c", &FlagContext::new()));
}

// ------------------------------------------------------------------ bootstrap

#[test]
fn the_shipped_bootstrap_file_loads_and_documents_every_flag() {
    let path = cloud_flags::bundled_bootstrap_path();
    let client = FlagClient::from_bootstrap_file(&path).unwrap();
    assert!(client.is_ready());
    assert_eq!(client.status().source, Some(StateSource::Bootstrap));
    for key in [
        platform::GATEWAY_CANARY,
        platform::FRONTEND_NEW_DASHBOARD,
        platform::IDENTITY_NEW_CLAIMS,
        platform::IDENTITY_REQUIRE_MFA,
    ] {
        assert!(client.knows(key), "bootstrap file lacks {key}");
    }
    // Lifecycle rule: every flag names an owner and an expiry date in its description.
    let raw: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for f in raw["features"].as_array().unwrap() {
        let d = f["description"].as_str().unwrap_or("");
        let expiry = d.split("expires: ").nth(1).map(|s| &s[..10]).unwrap_or("");
        assert!(
            d.starts_with("owner: team-"),
            "{} has no owner: {d}",
            f["name"]
        );
        assert!(
            time::Date::parse(
                expiry,
                time::macros::format_description!("[year]-[month]-[day]")
            )
            .is_ok(),
            "{} has no expiry",
            f["name"]
        );
    }
    // The canary flag hands out stable/canary, sticky per tenant; MFA is per tenant.
    let v = client.variant(platform::GATEWAY_CANARY, &tenant(1));
    assert!(v.name == "stable" || v.name == "canary", "{v:?}");
    assert!(client.is_enabled(
        platform::IDENTITY_REQUIRE_MFA,
        &FlagContext::new().with_tenant_id("tenant-mfa-demo")
    ));
    assert!(!client.is_enabled(platform::IDENTITY_REQUIRE_MFA, &tenant(1)));
    let canary = (0..10_000)
        .filter(|i| client.variant(platform::GATEWAY_CANARY, &tenant(*i)).name == "canary")
        .count();
    assert!(
        (800..=1200).contains(&canary),
        "{canary} of 10000 tenants on canary"
    );
}

#[test]
fn a_corrupt_bootstrap_file_is_an_error_naming_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    write(
        &path,
        b"{\"version\": 2, \"features\": [ {\"name\": \"x\", ",
    );
    let err = FlagClient::from_bootstrap_file(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FlagError::InvalidFeatures { .. }), "{err:?}");
    assert!(
        msg.contains("flags.json") && msg.contains("line 1"),
        "{msg}"
    );
}

// ------------------------------------------------------------------ last-known-good

fn unreachable_config(dir: &Path) -> UnleashConfig {
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = UnleashConfig::new(
        format!("http://127.0.0.1:{port}/api").parse().unwrap(),
        "default:development.not-a-real-token".to_string().into(),
        "offline-test",
    );
    cfg.request_timeout = Duration::from_secs(2);
    cfg.refresh_interval = Duration::from_secs(3600);
    cfg.send_metrics = false;
    cfg.kill_switch_env = None;
    cfg.backup_path = Some(dir.join("lkg.json"));
    cfg.bootstrap_path = Some(dir.join("bootstrap.json"));
    cfg
}

#[tokio::test]
async fn unreachable_server_loads_backup_and_ignores_a_corrupt_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = unreachable_config(dir.path());
    write(
        cfg.bootstrap_path.as_ref().unwrap(),
        &doc(vec![rollout_flag("from-bootstrap", 100, "default")]),
    );
    let body = doc(vec![rollout_flag("from-backup", 100, "default")]);
    cloud_flags::persist::write_backup(
        cfg.backup_path.as_ref().unwrap(),
        &body,
        Some("\"e1\""),
        datetime!(2026-11-26 13:00 UTC),
    )
    .unwrap();

    let client = FlagClient::connect_with_clock(cfg.clone(), clock())
        .await
        .unwrap();
    let status = client.status();
    assert_eq!(status.source, Some(StateSource::Backup), "{status:?}");
    assert_eq!(status.etag.as_deref(), Some("\"e1\""));
    assert!(status.last_error.is_some(), "the failed fetch is reported");
    assert!(client.is_enabled("from-backup", &FlagContext::new().with_user_id("u")));
    client.shutdown().await;

    // Flip one byte of the backup: reported, ignored, and the bootstrap file is used instead.
    let mut bytes = std::fs::read(cfg.backup_path.as_ref().unwrap()).unwrap();
    let n = bytes.len() - 5;
    bytes[n] ^= 0x20;
    write(cfg.backup_path.as_ref().unwrap(), &bytes);
    let client = FlagClient::connect_with_clock(cfg.clone(), clock())
        .await
        .unwrap();
    let status = client.status();
    assert_eq!(status.source, Some(StateSource::Bootstrap), "{status:?}");
    assert!(
        status
            .backup_error
            .as_deref()
            .unwrap_or("")
            .contains("checksum"),
        "{status:?}"
    );
    assert!(
        !client.knows("from-backup"),
        "nothing of the corrupt file is loaded"
    );
    assert!(client.is_enabled("from-bootstrap", &FlagContext::new().with_user_id("u")));
    client.shutdown().await;

    // Neither: not ready, every flag off, and the readiness check says why.
    std::fs::remove_file(cfg.bootstrap_path.as_ref().unwrap()).unwrap();
    std::fs::remove_file(cfg.backup_path.as_ref().unwrap()).unwrap();
    let mut no_files = cfg.clone();
    no_files.bootstrap_path = None;
    let client = FlagClient::connect_with_clock(no_files, clock())
        .await
        .unwrap();
    assert!(!client.is_ready());
    assert!(client.readiness_check()().await.is_err());
    assert!(!client.is_enabled("from-bootstrap", &FlagContext::new()));
    client.shutdown().await;
}

// ------------------------------------------------------------------ kill switch + audit

fn offline_with(
    dir: &Path,
    features: Vec<Value>,
    clock: Arc<ManualClock>,
) -> (FlagClient, std::path::PathBuf) {
    let bootstrap = dir.join("bootstrap.json");
    write(&bootstrap, &doc(features));
    let log = dir.join("audit.log");
    let cfg = OfflineConfig {
        bootstrap_path: bootstrap,
        audit_log_path: Some(log.clone()),
        kill_switch: KillSwitchSource {
            env_var: None,
            file: Some(dir.join("killed.txt")),
        },
        kill_switch_poll: None,
    };
    (FlagClient::offline(cfg, clock).unwrap(), log)
}

/// The audit log is written ahead: an evaluation that sees a new definition finds its record
/// in the log already (CI once saw a flag live before the log it was audited to existed).
#[test]
fn a_change_is_in_the_audit_log_before_any_evaluation_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let (client, log) = offline_with(dir.path(), vec![], clock());
    for round in 0..20 {
        let flag = format!("new-{round}");
        let watcher = {
            let (client, log, flag) = (client.clone(), log.clone(), flag.clone());
            std::thread::spawn(move || {
                while !client.is_enabled(&flag, &FlagContext::new()) {
                    std::hint::spin_loop();
                }
                audit::read_records(&log)
                    .map(|records| records.iter().any(|r| r.flag == flag))
                    .map_err(|e| e.to_string())
            })
        };
        client
            .apply_features_json(&doc(vec![json!({"name": flag, "enabled": true,
                "strategies": [{"name": "default", "parameters": {}, "constraints": []}]})]))
            .unwrap();
        assert_eq!(
            watcher.join().unwrap(),
            Ok(true),
            "round {round}: `{flag}` was live before its audit record was written"
        );
    }
}

#[test]
fn kill_switch_file_forces_a_flag_off_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let (client, log) = offline_with(
        dir.path(),
        vec![rollout_flag("checkout.v2", 100, "default")],
        clock.clone(),
    );
    let ctx = FlagContext::new().with_user_id("u1");
    assert!(client.is_enabled("checkout.v2", &ctx));

    clock.advance(Duration::from_secs(60));
    write(
        &dir.path().join("killed.txt"),
        b"# incident 42\ncheckout.v2\n",
    );
    let records = client.reload_kill_switch().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].changes, vec![ChangeKind::KillSwitchOn]);
    assert!(records[0].killed);
    assert!(!client.is_enabled("checkout.v2", &ctx));
    assert_eq!(client.variant("checkout.v2", &ctx).name, "disabled");
    assert_eq!(client.status().killed, vec!["checkout.v2".to_string()]);
    assert!(
        client.reload_kill_switch().unwrap().is_empty(),
        "no change, no event"
    );

    clock.advance(Duration::from_secs(60));
    std::fs::remove_file(dir.path().join("killed.txt")).unwrap();
    let records = client.reload_kill_switch().unwrap();
    assert_eq!(
        records
            .iter()
            .map(|r| r.changes.clone())
            .collect::<Vec<_>>(),
        vec![vec![ChangeKind::KillSwitchOff]]
    );
    assert!(client.is_enabled("checkout.v2", &ctx));

    let all = audit::read_records(&log).unwrap();
    assert_eq!(all.len(), 3, "added, killed, unkilled");
    audit::verify(&log).unwrap();
    // "Was checkout.v2 forced off at 14:01:30?"
    let at = audit::live_at(&all, "checkout.v2", datetime!(2026-11-26 14:01:30 UTC)).unwrap();
    assert!(at.killed);
}

/// Run in a child process with the variable set (the tests cannot set env vars: no `unsafe`).
#[test]
#[ignore = "run by kill_switch_env_var_forces_a_flag_off in a child process"]
fn kill_switch_env_child() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("b.json");
    write(
        &bootstrap,
        &doc(vec![
            rollout_flag("a", 100, "default"),
            rollout_flag("b", 100, "default"),
        ]),
    );
    let client = FlagClient::from_bootstrap_file(&bootstrap).unwrap();
    let ctx = FlagContext::new().with_user_id("u");
    assert!(
        !client.is_enabled("a", &ctx),
        "a is listed in CLOUD_FLAGS_KILL_SWITCH"
    );
    assert!(client.is_enabled("b", &ctx));
}

#[test]
fn kill_switch_env_var_forces_a_flag_off() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "kill_switch_env_child",
            "--nocapture",
        ])
        .env("CLOUD_FLAGS_KILL_SWITCH", "a, other")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_change_is_one_audit_record_and_the_log_answers_what_was_live() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let base = vec![
        rollout_flag("a", 10, "tenantId"),
        rollout_flag("b", 50, "default"),
    ];
    let (client, log) = offline_with(dir.path(), base.clone(), clock.clone());
    assert_eq!(
        audit::read_records(&log).unwrap().len(),
        2,
        "two flags added"
    );

    // 14:05: a's rollout changes, b is switched off, c appears.
    clock.set(datetime!(2026-11-26 14:05 UTC));
    let mut b = rollout_flag("b", 50, "default");
    b["enabled"] = json!(false);
    let records = client
        .apply_features_json(&doc(vec![
            rollout_flag("a", 20, "tenantId"),
            b,
            rollout_flag("c", 1, "default"),
        ]))
        .unwrap();
    let summary: Vec<(String, Vec<ChangeKind>)> = records
        .iter()
        .map(|r| (r.flag.clone(), r.changes.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("a".into(), vec![ChangeKind::Strategies]),
            ("b".into(), vec![ChangeKind::EnabledToggled]),
            ("c".into(), vec![ChangeKind::Added]),
        ]
    );
    assert!(records.iter().all(|r| r.old_hash != r.new_hash));

    // 14:10: c is removed; re-applying the same state is not a change.
    clock.set(datetime!(2026-11-26 14:10 UTC));
    let mut b = rollout_flag("b", 50, "default");
    b["enabled"] = json!(false);
    let same = doc(vec![rollout_flag("a", 20, "tenantId"), b]);
    let records = client.apply_features_json(&same).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].changes, vec![ChangeKind::Removed]);
    assert!(client.apply_features_json(&same).unwrap().is_empty());

    let report = audit::verify(&log).unwrap();
    assert_eq!(report.records, 6);
    let all = audit::read_records(&log).unwrap();
    // Which definition of `a` was live at 14:03? The 10% one.
    let at_1403 = audit::live_at(&all, "a", datetime!(2026-11-26 14:03 UTC)).unwrap();
    assert_eq!(
        at_1403
            .definition
            .as_ref()
            .unwrap()
            .pointer("/feature/strategies/0/parameters/rollout"),
        Some(&json!("10"))
    );
    let at_1407 = audit::live_at(&all, "a", datetime!(2026-11-26 14:07 UTC)).unwrap();
    assert_eq!(
        at_1407
            .definition
            .as_ref()
            .unwrap()
            .pointer("/feature/strategies/0/parameters/rollout"),
        Some(&json!("20"))
    );
    assert!(
        audit::live_at(&all, "c", datetime!(2026-11-26 14:11 UTC))
            .unwrap()
            .definition
            .is_none(),
        "c removed"
    );
    assert!(
        audit::live_at(&all, "c", datetime!(2026-11-26 14:01 UTC)).is_none(),
        "c did not exist yet"
    );

    // A restart with the same state appends nothing: the log itself is the base of the diff.
    drop(client);
    let bootstrap = dir.path().join("bootstrap.json");
    write(&bootstrap, &same);
    let cfg = OfflineConfig {
        bootstrap_path: bootstrap,
        audit_log_path: Some(log.clone()),
        kill_switch: KillSwitchSource::default(),
        kill_switch_poll: None,
    };
    let _client = FlagClient::offline(cfg, clock.clone()).unwrap();
    assert_eq!(audit::verify(&log).unwrap().records, 6);
}

fn rewrite_lines(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    f(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn verify_detects_an_edited_a_deleted_and_a_reordered_line() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let (client, log) = offline_with(
        dir.path(),
        vec![rollout_flag("a", 10, "default")],
        clock.clone(),
    );
    for pct in [20, 30, 40] {
        clock.advance(Duration::from_secs(60));
        client
            .apply_features_json(&doc(vec![rollout_flag("a", pct, "default")]))
            .unwrap();
    }
    let pristine = std::fs::read(&log).unwrap();
    assert_eq!(audit::verify(&log).unwrap().records, 4);

    // Edited: someone rewrites history to say the rollout was 25%.
    rewrite_lines(&log, |l| l[2] = l[2].replace("\"30\"", "\"25\""));
    let err = audit::verify(&log).unwrap_err();
    assert!(
        matches!(err, FlagError::AuditTampered { line: 3, .. }),
        "{err}"
    );

    // Deleted: a middle line disappears.
    std::fs::write(&log, &pristine).unwrap();
    rewrite_lines(&log, |l| {
        l.remove(1);
    });
    assert!(matches!(
        audit::verify(&log).unwrap_err(),
        FlagError::AuditTampered { line: 2, .. }
    ));

    // Reordered.
    std::fs::write(&log, &pristine).unwrap();
    rewrite_lines(&log, |l| l.swap(1, 2));
    assert!(matches!(
        audit::verify(&log).unwrap_err(),
        FlagError::AuditTampered { line: 2, .. }
    ));

    // A client opening a broken log moves it aside and starts a new chain.
    drop(client);
    let _client = offline_with(dir.path(), vec![rollout_flag("a", 40, "default")], clock).0;
    assert_eq!(audit::verify(&log).unwrap().records, 1);
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .contains("audit.log.broken-")
        });
    assert!(aside, "the broken log is kept for investigation");
}

// ------------------------------------------------------------------ observability

/// An update is seen by the very next evaluation on every thread, and two clients on one thread
/// never answer from each other's state.
#[test]
fn every_thread_sees_an_update_at_once_and_clients_keep_their_own_state() {
    let flag = FlagKey::new("update.flag");
    let on = doc(vec![rollout_flag("update.flag", 100, "tenantId")]);
    let off = doc(vec![rollout_flag("update.flag", 0, "tenantId")]);
    let a = FlagClient::from_features_json(&on).unwrap();
    let b = FlagClient::from_features_json(&off).unwrap();
    let ctx = tenant(7);
    for _ in 0..3 {
        assert!(a.is_enabled(flag, &ctx));
        assert!(!b.is_enabled(flag, &ctx));
        assert!(a.variant(flag, &ctx).feature_enabled);
        assert!(!b.variant(flag, &ctx).feature_enabled);
    }
    let other_thread = {
        let a = a.clone();
        let (to_main, from_other) = std::sync::mpsc::channel();
        let (to_other, from_main) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let ctx = tenant(7);
            to_main.send(a.is_enabled(flag, &ctx)).unwrap();
            from_main.recv().unwrap();
            a.is_enabled(flag, &ctx)
        });
        assert!(
            from_other.recv().unwrap(),
            "the other thread saw the first state"
        );
        (handle, to_other)
    };
    a.apply_features_json(&off).unwrap();
    assert!(
        !a.is_enabled(flag, &ctx),
        "this thread saw the update at once"
    );
    assert!(!a.variant(flag, &ctx).feature_enabled);
    let (handle, to_other) = other_thread;
    to_other.send(()).unwrap();
    assert!(
        !handle.join().unwrap(),
        "the other thread saw the update at once"
    );
    b.apply_features_json(&on).unwrap();
    assert!(b.is_enabled(flag, &ctx));
    assert!(!a.is_enabled(flag, &ctx));
}

#[test]
fn evaluations_are_counted_in_prometheus() {
    let client = FlagClient::from_bootstrap_file(cloud_flags::bundled_bootstrap_path()).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    client.register_metrics(&mut registry);
    let ctx = FlagContext::new().with_tenant_id("tenant-mfa-demo");
    for _ in 0..3 {
        assert!(client.is_enabled(platform::IDENTITY_REQUIRE_MFA, &ctx));
    }
    assert!(!client.is_enabled(FlagKey::new("no.such-flag"), &ctx));
    let v = client.variant(platform::GATEWAY_CANARY, &ctx);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("feature_flag_evaluations_total{flag=\"identity.require-mfa\",variant=\"none\",enabled=\"true\"} 3"), "{text}");
    assert!(text.contains("feature_flag_evaluations_total{flag=\"no.such-flag\",variant=\"none\",enabled=\"false\"} 1"), "{text}");
    let line = format!(
        "feature_flag_evaluations_total{{flag=\"gateway.canary-upstream\",variant=\"{}\",enabled=\"true\"}} 1",
        v.name
    );
    assert!(text.contains(&line), "{text}");
}

#[tokio::test]
async fn flags_with_impression_data_emit_impressions() {
    let client = FlagClient::from_bootstrap_file(cloud_flags::bundled_bootstrap_path()).unwrap();
    let mut events = client.subscribe_impressions();
    let ctx = FlagContext::new().with_user_id("u-1").with_tenant_id("t-1");
    let on = client.is_enabled(platform::FRONTEND_NEW_DASHBOARD, &ctx);
    client.is_enabled(platform::IDENTITY_NEW_CLAIMS, &ctx); // no impressionData: no event
    let event = events.try_recv().unwrap();
    assert_eq!(event.flag, "frontend.new-dashboard");
    assert_eq!(event.enabled, on);
    assert_eq!(event.tenant_id.as_deref(), Some("t-1"));
    assert!(
        events.try_recv().is_err(),
        "only flags with impressionData emit"
    );
}

type Fields = Vec<(String, String)>;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<Fields>>>);

struct Visitor<'a>(&'a mut Vec<(String, String)>);
impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == cloud_flags::EVALUATION_TARGET {
            let mut fields = vec![];
            event.record(&mut Visitor(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }
}

#[test]
fn evaluations_carry_the_otel_feature_flag_attributes() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let client = FlagClient::from_bootstrap_file(cloud_flags::bundled_bootstrap_path()).unwrap();
    let variant = tracing::subscriber::with_default(subscriber, || {
        client.variant(
            platform::GATEWAY_CANARY,
            &FlagContext::new().with_tenant_id("t-9"),
        )
    });
    let events = captured.0.lock().unwrap();
    assert_eq!(events.len(), 1);
    let get = |k: &str| {
        events[0]
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("feature_flag.key").as_deref(),
        Some("gateway.canary-upstream")
    );
    assert_eq!(get("feature_flag.variant"), Some(variant.name.into_owned()));
    assert_eq!(
        get("feature_flag.provider_name").as_deref(),
        Some("cloud-flags")
    );
}

#[tokio::test]
async fn the_openfeature_provider_evaluates_through_our_client() {
    use open_feature::provider::FeatureProvider;
    use open_feature::{EvaluationContext, EvaluationErrorCode};
    let client = FlagClient::from_bootstrap_file(cloud_flags::bundled_bootstrap_path()).unwrap();
    let provider = cloud_flags::openfeature::UnleashProvider::new(client.clone());
    assert_eq!(provider.metadata().name, "cloud-flags");
    let ctx = EvaluationContext::default()
        .with_targeting_key("u-1")
        .with_custom_field("tenantId", "tenant-mfa-demo");
    let mfa = provider
        .resolve_bool_value("identity.require-mfa", &ctx)
        .await
        .unwrap();
    assert!(mfa.value);
    let other = EvaluationContext::default().with_custom_field("tenantId", "someone");
    assert!(
        !provider
            .resolve_bool_value("identity.require-mfa", &other)
            .await
            .unwrap()
            .value
    );
    let canary = provider
        .resolve_string_value("gateway.canary-upstream", &ctx)
        .await
        .unwrap();
    assert_eq!(
        canary.value,
        client
            .variant(
                platform::GATEWAY_CANARY,
                &FlagContext::new()
                    .with_user_id("u-1")
                    .with_tenant_id("tenant-mfa-demo")
            )
            .name
    );
    let missing = provider
        .resolve_bool_value("no.such-flag", &ctx)
        .await
        .unwrap_err();
    assert_eq!(missing.code, EvaluationErrorCode::FlagNotFound);
}

#[test]
fn backoff_is_exponential_and_capped() {
    let s = Duration::from_secs;
    assert_eq!(cloud_flags::backoff_delay(s(15), 0, s(300)), s(15));
    assert_eq!(cloud_flags::backoff_delay(s(15), 1, s(300)), s(30));
    assert_eq!(cloud_flags::backoff_delay(s(15), 3, s(300)), s(120));
    assert_eq!(cloud_flags::backoff_delay(s(15), 5, s(300)), s(300));
    assert_eq!(cloud_flags::backoff_delay(s(15), 1000, s(300)), s(300));
}
