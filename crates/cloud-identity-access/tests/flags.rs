//! The feature flag `identity.new-claims`, per tenant: with it on, access tokens carry the claim
//! layout 2 (`ver: 2`, `permissions_by_resource`) on top of every layout-1 claim; with it off, or
//! killed, or without any `flags` config, they are exactly layout 1.
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{ADMIN_SECRET, Backend, TestApp, claims};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TENANT_ON: &str = "tenant-new-claims-on";
const TENANT_OFF: &str = "tenant-new-claims-off";

/// An Unleash client-features document: `identity.new-claims` on for the tenants listed (all
/// tenants when `None`).
fn bootstrap(tenants: Option<&[&str]>) -> String {
    let constraints = match tenants {
        Some(list) => json!([{ "contextName": "tenantId", "operator": "IN", "values": list,
            "inverted": false, "caseInsensitive": false }]),
        None => json!([]),
    };
    json!({
        "version": 2,
        "features": [{
            "name": "identity.new-claims",
            "type": "release",
            "description": "owner: team-identity; expires: 2027-03-31; test",
            "enabled": true,
            "project": "default",
            "impressionData": false,
            "strategies": [{ "name": "default", "parameters": {}, "constraints": constraints }],
            "variants": []
        }],
        "segments": []
    })
    .to_string()
}

/// The layout-1 claims every token has, whatever the flag (the gateway reads these).
fn assert_layout_1_claims(c: &Value, tenant: &str) {
    for claim in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "jti",
        "client_id",
        "scope",
    ] {
        assert!(
            c.get(claim).is_some(),
            "RFC 9068 claim {claim} missing: {c}"
        );
    }
    assert_eq!(c["tid"], tenant);
    assert_eq!(c["roles"], json!(["admins"]), "{c}");
    assert_eq!(
        c["permissions"],
        json!(["orders:read", "tenant:admin"]),
        "{c}"
    );
}

fn assert_new_layout(c: &Value) {
    assert_eq!(c["ver"], 2, "{c}");
    assert_eq!(
        c["permissions_by_resource"],
        json!({ "orders": ["read"], "tenant": ["admin"] }),
        "{c}"
    );
}

fn assert_old_layout(c: &Value) {
    assert!(c.get("ver").is_none(), "no ver in layout 1: {c}");
    assert!(c.get("permissions_by_resource").is_none(), "{c}");
}

async fn flag_is_per_tenant_and_the_kill_switch_turns_it_off(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap_path = dir.path().join("flags.json");
    let kill_file = dir.path().join("killed-flags");
    std::fs::write(&bootstrap_path, bootstrap(Some(&[TENANT_ON]))).unwrap();
    let (bootstrap_for_config, kill_for_config) = (bootstrap_path.clone(), kill_file.clone());
    let Some(app) = TestApp::spawn_with(backend, move |config| {
        config.flags.bootstrap_path = Some(bootstrap_for_config);
        config.flags.kill_switch_file = Some(kill_for_config);
    })
    .await
    else {
        return;
    };
    let admin = app.admin_token().await;
    let on = app.tenant_fixture_with_id(&admin, TENANT_ON, "on").await;
    let off = app.tenant_fixture_with_id(&admin, TENANT_OFF, "off").await;

    let token_on = app
        .client_token(&on.client_id, &on.client_secret, None)
        .await;
    let c = claims(&token_on);
    assert_layout_1_claims(&c, TENANT_ON);
    assert_new_layout(&c);
    let c = claims(
        &app.client_token(&off.client_id, &off.client_secret, None)
            .await,
    );
    assert_layout_1_claims(&c, TENANT_OFF);
    assert_old_layout(&c);

    // A layout-2 token is still a valid bearer token here (admin API, introspection).
    let (s, tenant) = app
        .get_json(&token_on, &format!("/v1/tenants/{TENANT_ON}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{tenant}");
    let introspected: Value = app
        .http
        .post(app.url("/oauth2/introspect"))
        .basic_auth(&on.client_id, Some(&on.client_secret))
        .form(&[("token", token_on.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["ver"], 2, "{introspected}");

    // The evaluations are counted on the service's /metrics.
    let metrics = app
        .http
        .get(format!("{}/metrics", app.admin_base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("feature_flag_evaluations_total")
                && l.contains("identity.new-claims")),
        "{metrics}"
    );
    let ready = app
        .http
        .get(format!("{}/readyz", app.admin_base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    // The kill switch (an incident): the flag goes off for every tenant without a restart.
    std::fs::write(&kill_file, "identity.new-claims # incident\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = claims(
            &app.client_token(&on.client_id, &on.client_secret, None)
                .await,
        );
        if c.get("ver").is_none() {
            assert_layout_1_claims(&c, TENANT_ON);
            assert_old_layout(&c);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the kill switch was not applied within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_is_per_tenant_and_the_kill_switch_turns_it_off_sqlite() {
    flag_is_per_tenant_and_the_kill_switch_turns_it_off(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_is_per_tenant_and_the_kill_switch_turns_it_off_postgres() {
    flag_is_per_tenant_and_the_kill_switch_turns_it_off(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_flags_config_every_token_keeps_layout_1() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let admin = app.admin_token().await;
    let f = app.tenant_fixture(&admin, "plain").await;
    let c = claims(&app.client_token(&f.client_id, &f.client_secret, None).await);
    assert_layout_1_claims(&c, &f.tenant_id);
    assert_old_layout(&c);
    let ready = app
        .http
        .get(format!("{}/readyz", app.admin_base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "no flags config is ready");
}

/// The binary, configured by environment only (`IDENTITY_FLAGS__BOOTSTRAP_PATH`, as `cloudctl
/// up` and the charts set it) and killed by `CLOUD_FLAGS_KILL_SWITCH`.
async fn platform_admin_claims(dir: &Path, extra: &[(&str, &str)]) -> Value {
    let bootstrap_path = dir.join("flags.json");
    std::fs::write(&bootstrap_path, bootstrap(None)).unwrap();
    let data_dir = tempfile::tempdir_in(dir).unwrap();
    let mut env = vec![
        ("IDENTITY_DATA_DIR", data_dir.path().to_str().unwrap()),
        ("IDENTITY_KEYS__ENCRYPTION_KEY", "flags-test-encryption-key"),
        ("IDENTITY_BOOTSTRAP__ADMIN_CLIENT_SECRET", ADMIN_SECRET),
        (
            "IDENTITY_FLAGS__BOOTSTRAP_PATH",
            bootstrap_path.to_str().unwrap(),
        ),
    ];
    env.extend_from_slice(extra);
    let service = cloud_test_support::process::ServiceProcess::start(
        Path::new(env!("CARGO_BIN_EXE_cloud-identity-access")),
        "IDENTITY",
        &env,
        &[],
    );
    let body: Value = reqwest::Client::new()
        .post(service.url("/oauth2/token"))
        .basic_auth("platform-admin", Some(ADMIN_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    claims(body["access_token"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_flags_from_its_env_config_and_the_kill_switch_env() {
    let dir = tempfile::tempdir().unwrap();
    let on = platform_admin_claims(dir.path(), &[("CLOUD_FLAGS_KILL_SWITCH", "")]).await;
    assert_eq!(on["ver"], 2, "{on}");
    assert!(on["permissions_by_resource"]["platform"].is_array(), "{on}");
    let killed = platform_admin_claims(
        dir.path(),
        &[("CLOUD_FLAGS_KILL_SWITCH", "identity.new-claims")],
    )
    .await;
    assert!(killed.get("ver").is_none(), "{killed}");
    assert!(killed.get("permissions_by_resource").is_none(), "{killed}");
    assert_eq!(killed["permissions"], on["permissions"]);
}
