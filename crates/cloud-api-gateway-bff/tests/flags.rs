//! Feature flags wired into the gateway, from a bootstrap file the test writes: canary routing by
//! variant (sticky per tenant, kill switch to stable), routes gated per tenant, and the front-end
//! flags of `GET /bff/v1/session`. Real upstreams and a real gateway on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const CANARY_FLAG: &str = "orders.canary-upstream";

/// Writes an Unleash client-features document with `features` to `dir/flags.json`.
fn bootstrap(dir: &Path, features: Value) -> PathBuf {
    let path = dir.join("flags.json");
    let doc = json!({"version": 2, "features": features, "segments": []});
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

/// 50/50 `stable`/`canary`, sticky per tenant (`tenantId`), for everyone.
fn canary_flag() -> Value {
    json!({
        "name": CANARY_FLAG, "type": "release", "enabled": true, "project": "default",
        "strategies": [{
            "name": "flexibleRollout",
            "parameters": {"rollout": "100", "stickiness": "tenantId", "groupId": CANARY_FLAG},
            "constraints": [],
            "variants": [
                {"name": "stable", "weight": 500, "weightType": "variable", "stickiness": "tenantId"},
                {"name": "canary", "weight": 500, "weightType": "variable", "stickiness": "tenantId"}
            ]
        }],
        "variants": []
    })
}

/// On only for the tenants listed.
fn tenant_flag(name: &str, tenants: &[&str]) -> Value {
    json!({
        "name": name, "type": "release", "enabled": true, "project": "default",
        "strategies": [{
            "name": "default", "parameters": {},
            "constraints": [{"contextName": "tenantId", "operator": "IN", "values": tenants,
                             "inverted": false, "caseInsensitive": false}]
        }],
        "variants": []
    })
}

/// Checks that each subject (tenant or user) always landed on one upstream and that a 50/50
/// split of 40 subjects gave both upstreams at least 8; returns the subjects per upstream.
fn sticky_split(landed: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, usize> {
    let mut per_upstream: BTreeMap<String, usize> = BTreeMap::new();
    for (subject, names) in landed {
        assert_eq!(names.len(), 1, "{subject} was split across {names:?}");
        *per_upstream
            .entry(names.iter().next().unwrap().clone())
            .or_default() += 1;
    }
    assert_eq!(
        per_upstream.keys().collect::<Vec<_>>(),
        ["canary", "stable"],
        "both upstreams get some: {per_upstream:?}"
    );
    assert!(
        per_upstream.values().all(|n| *n >= 8),
        "a 50/50 split of {} subjects: {per_upstream:?}",
        landed.len()
    );
    per_upstream
}

async fn answered_by(gw: &Gateway, token: &str, path: &str) -> (u16, Option<String>) {
    let r = client()
        .get(format!("{}{path}", gw.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let name = r
        .headers()
        .get(UPSTREAM_NAME_HEADER)
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), name)
}

#[tokio::test]
async fn canary_by_flag_is_sticky_per_tenant_and_the_kill_switch_sends_everyone_to_stable() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (stable, _) = named_upstream("stable").await;
    let (canary, _) = named_upstream("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let flags = bootstrap(dir.path(), json!([canary_flag()]));
    let killed = dir.path().join("killed");
    let gw = start(config(
        &identity,
        &format!(
            "flags: {{bootstrap_path: \"{}\", kill_switch_file: \"{}\"}}
routes:
  orders:
    path_prefix: /api/orders/
    canary:
      flag: {CANARY_FLAG}
      variants: {{stable: \"http://{stable}\", canary: \"http://{canary}\"}}
      stickiness: tenant
",
            flags.display(),
            killed.display()
        ),
    ))
    .await;
    gw.ready().await;

    // 40 tenants, three users each: every tenant always lands on one upstream, and both get some.
    let tokens: Vec<(String, Vec<String>)> = (0..40)
        .map(|t| {
            let tenant = format!("tenant-{t}");
            let users = (0..3)
                .map(|u| {
                    key.sign(&claims(
                        &identity.issuer,
                        &tenant,
                        &format!("user-{u}"),
                        &[],
                    ))
                })
                .collect();
            (tenant, users)
        })
        .collect();
    let mut landed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (tenant, users) in &tokens {
        for token in users {
            for _ in 0..2 {
                let (status, name) = answered_by(&gw, token, "/api/orders/list").await;
                assert_eq!(status, 200, "tenant {tenant}");
                landed
                    .entry(tenant.clone())
                    .or_default()
                    .insert(name.expect("the upstream names itself"));
            }
        }
    }
    let per_upstream = sticky_split(&landed);
    let metrics = gw.metrics().await;
    let canary_requests = per_upstream["canary"] * 6;
    assert!(
        metrics.contains(&format!(
            "gateway_canary_requests_total{{route=\"orders\",variant=\"canary\"}} {canary_requests}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "feature_flag_evaluations_total{{flag=\"{CANARY_FLAG}\",variant=\"canary\",enabled=\"true\"}}"
        )),
        "the flag client's metrics are on the gateway's /metrics:\n{metrics}"
    );

    // The kill switch (re-read every 5 s) forces the flag off: every tenant goes to stable.
    std::fs::write(&killed, format!("{CANARY_FLAG} # incident\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut on_canary = Vec::new();
        for (tenant, users) in &tokens {
            let (status, name) = answered_by(&gw, &users[0], "/api/orders/list").await;
            assert_eq!(status, 200);
            if name.as_deref() != Some("stable") {
                on_canary.push(tenant.clone());
            }
        }
        if on_canary.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still on canary 20 s after the kill switch: {on_canary:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The same split, sticky per user: the users of ONE tenant are spread over both upstreams,
/// each user always on the same one.
#[tokio::test]
async fn canary_by_flag_is_sticky_per_user_within_one_tenant() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (stable, _) = named_upstream("stable").await;
    let (canary, _) = named_upstream("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let mut flag = canary_flag();
    let by_user = serde_json::to_string(&flag)
        .unwrap()
        .replace("tenantId", "userId");
    flag = serde_json::from_str(&by_user).unwrap();
    let flags = bootstrap(dir.path(), json!([flag]));
    let gw = start(config(
        &identity,
        &format!(
            "flags: {{bootstrap_path: \"{}\"}}
routes:
  orders:
    path_prefix: /api/orders/
    canary:
      flag: {CANARY_FLAG}
      variants: {{stable: \"http://{stable}\", canary: \"http://{canary}\"}}
      stickiness: user
",
            flags.display()
        ),
    ))
    .await;
    gw.ready().await;

    let mut landed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for u in 0..40 {
        let user = format!("user-{u}");
        let token = key.sign(&claims(&identity.issuer, "one-tenant", &user, &[]));
        for _ in 0..3 {
            let (status, name) = answered_by(&gw, &token, "/api/orders/list").await;
            assert_eq!(status, 200, "{user}");
            landed
                .entry(user.clone())
                .or_default()
                .insert(name.expect("the upstream names itself"));
        }
    }
    sticky_split(&landed);
}

#[tokio::test]
async fn a_canary_without_flags_config_sends_everyone_to_stable() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (stable, _) = named_upstream("stable").await;
    let (canary, _) = named_upstream("canary").await;
    let gw = start(config(
        &identity,
        &format!(
            "routes:\n  orders:\n    path_prefix: /api/orders/\n    canary: {{flag: {CANARY_FLAG}, variants: {{stable: \"http://{stable}\", canary: \"http://{canary}\"}}}}\n"
        ),
    ))
    .await;
    gw.ready().await;
    for t in 0..20 {
        let token = key.sign(&claims(&identity.issuer, &format!("tenant-{t}"), "u", &[]));
        assert_eq!(
            answered_by(&gw, &token, "/api/orders/x").await,
            (200, Some("stable".to_string()))
        );
    }
}

#[tokio::test]
async fn a_flag_gated_route_exists_only_for_tenants_with_the_flag_on() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, hits) = named_upstream("reports").await;
    let dir = tempfile::tempdir().unwrap();
    let flags = bootstrap(
        dir.path(),
        json!([tenant_flag("reports.beta", &["tenant-on"])]),
    );
    let routes = format!(
        "routes:\n  reports:\n    path_prefix: /api/reports/\n    upstreams: [\"http://{upstream}\"]\n    flag: reports.beta\n"
    );
    let gw = start(config(
        &identity,
        &format!(
            "flags: {{bootstrap_path: \"{}\"}}\n{routes}",
            flags.display()
        ),
    ))
    .await;
    gw.ready().await;
    let on = key.sign(&claims(&identity.issuer, "tenant-on", "u1", &[]));
    let off = key.sign(&claims(&identity.issuer, "tenant-off", "u2", &[]));

    assert_eq!(
        answered_by(&gw, &on, "/api/reports/q3").await,
        (200, Some("reports".to_string()))
    );
    // Off: the same 404 problem as a path no route matches, and the upstream is not called.
    let before = hits.hits.load(std::sync::atomic::Ordering::SeqCst);
    let gated = client()
        .get(format!("{}/api/reports/q3", gw.url))
        .bearer_auth(&off)
        .send()
        .await
        .unwrap();
    assert_eq!(gated.status(), 404);
    assert_eq!(
        gated.headers()["content-type"],
        "application/problem+json",
        "problem+json"
    );
    let gated: Value = gated.json().await.unwrap();
    assert_eq!(gated["detail"], "no route for /api/reports/q3");
    let unmatched: Value = client()
        .get(format!("{}/api/nothing-here", gw.url))
        .bearer_auth(&off)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(gated["title"], unmatched["title"]);
    assert_eq!(gated["status"], unmatched["status"]);
    assert_eq!(hits.hits.load(std::sync::atomic::Ordering::SeqCst), before);
    // The token is still checked first: no token is a 401, not a 404.
    let anonymous = client()
        .get(format!("{}/api/reports/q3", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Without a `flags` section every flag is off: the gated route is hidden from everyone.
    let plain = start(config(&identity, &routes)).await;
    plain.ready().await;
    assert_eq!(answered_by(&plain, &on, "/api/reports/q3").await.0, 404);
}

#[tokio::test]
async fn the_session_carries_the_frontend_flags_of_the_tenant() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut theme = tenant_flag("frontend.theme", &["tenant-a"]);
    theme["strategies"][0]["variants"] = json!([{
        "name": "dark", "weight": 1000, "weightType": "variable", "stickiness": "default",
        "payload": {"type": "string", "value": "midnight"}
    }]);
    let flags = bootstrap(
        dir.path(),
        json!([
            tenant_flag("frontend.new-reports", &["tenant-a"]),
            theme,
            tenant_flag("backend.internal", &["tenant-a", "tenant-b"]),
        ]),
    );
    let gw = start(config(
        &identity,
        &format!("flags: {{bootstrap_path: \"{}\"}}\n", flags.display()),
    ))
    .await;
    gw.ready().await;
    let session = |tenant: &str| {
        let token = key.sign(&claims(&identity.issuer, tenant, "user-1", &[]));
        let url = format!("{}/bff/v1/session", gw.url);
        async move {
            let r = client().get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["flags"].clone()
        }
    };
    let a = session("tenant-a").await;
    let b = session("tenant-b").await;
    assert_eq!(
        a,
        json!({
            "frontend.new-reports": {"enabled": true, "variant": "disabled", "payload": null},
            "frontend.theme": {"enabled": true, "variant": "dark",
                               "payload": {"type": "string", "value": "midnight"}},
        })
    );
    assert_eq!(
        b,
        json!({
            "frontend.new-reports": {"enabled": false, "variant": "disabled", "payload": null},
            "frontend.theme": {"enabled": false, "variant": "disabled", "payload": null},
        }),
        "only `frontend.` flags, evaluated for tenant-b"
    );
}

#[tokio::test]
async fn a_bad_bootstrap_file_fails_the_build_naming_the_flags_section() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    std::fs::write(&path, "{not json").unwrap();
    let cfg = config(
        &identity,
        &format!("flags: {{bootstrap_path: \"{}\"}}\n", path.display()),
    );
    let err = cloud_api_gateway_bff::build(cfg)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`flags`") && err.contains("broken.json"),
        "{err}"
    );
}
