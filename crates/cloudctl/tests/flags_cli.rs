//! `cloudctl flags audit` and `cloudctl flags verify` on a log written by a real `FlagClient`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cloud_flags::killswitch::KillSwitchSource;
use cloud_flags::{FlagClient, OfflineConfig};
use cloud_kit::ManualClock;
use serde_json::{Value, json};
use time::macros::datetime;

fn doc(rollout: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({"version": 2, "features": [{"name": "identity.new-claims", "enabled": true,
        "strategies": [{"name": "flexibleRollout", "parameters": {"rollout": rollout.to_string(), "stickiness": "tenantId", "groupId": "identity.new-claims"}}]}]}))
    .unwrap()
}

fn cloudctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn audit_shows_changes_and_what_was_live_and_verify_catches_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("flags.json");
    std::fs::write(&bootstrap, doc(10)).unwrap();
    let log = dir.path().join("audit.log");
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-26 14:00 UTC)));
    let cfg = OfflineConfig {
        bootstrap_path: bootstrap,
        audit_log_path: Some(log.clone()),
        kill_switch: KillSwitchSource::default(),
        kill_switch_poll: None,
    };
    let client = FlagClient::offline(cfg, clock.clone()).unwrap();
    clock.advance(Duration::from_secs(600));
    client.apply_features_json(&doc(50)).unwrap();
    let log_arg = log.to_str().unwrap();

    let (ok, out, err) = cloudctl(&["flags", "audit", "--log", log_arg]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("SEQ")
            && lines[1].contains("added")
            && lines[2].contains("strategies"),
        "{out}"
    );

    let (ok, out, err) = cloudctl(&[
        "flags",
        "audit",
        "--log",
        log_arg,
        "--at",
        "2026-11-26T14:03:00Z",
        "--output",
        "json",
    ]);
    assert!(ok, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(
        rows[0]["definition"]["feature"]["strategies"][0]["parameters"]["rollout"], "10",
        "{out}"
    );
    let (_, out, _) = cloudctl(&[
        "flags",
        "audit",
        "--log",
        log_arg,
        "--at",
        "2026-11-26T14:11:00Z",
    ]);
    assert!(out.contains("flexibleRollout(50%)"), "{out}");

    let (ok, out, _) = cloudctl(&["flags", "verify", "--log", log_arg]);
    assert!(ok && out.contains(" 2 "), "{out}");

    let (ok, _, err) = cloudctl(&["flags", "audit", "--log", log_arg, "--at", "yesterday"]);
    assert!(!ok && err.contains("RFC 3339"), "{err}");

    let text = std::fs::read_to_string(&log)
        .unwrap()
        .replace("\"50\"", "\"5\"");
    std::fs::write(&log, text).unwrap();
    let (ok, _, err) = cloudctl(&["flags", "verify", "--log", log_arg]);
    assert!(!ok && err.contains("line 2"), "{err}");
    let (ok, _, err) = cloudctl(&["flags", "audit", "--log", log_arg]);
    assert!(!ok && err.contains("fails verification"), "{err}");
}
