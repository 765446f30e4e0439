//! The admin API: the tenant-isolation suite (every `/v1` endpoint, checked against the OpenAPI
//! document so a new endpoint cannot be left out), bootstrap, and the audit query.
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::{Backend, Fixture, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

both_backends!(
    tenant_admin_cannot_touch_another_tenant,
    platform_admin_and_audit_query,
    tenant_admin_cannot_escalate,
    audit_events_carry_the_request_id_of_their_change
);

struct Case {
    method: Method,
    /// The OpenAPI path template this case covers.
    template: &'static str,
    path: String,
    body: Option<Value>,
}

fn cases(own: &Fixture, other: &Fixture, other_user: &str, other_role: &str) -> Vec<Case> {
    let b = &other.tenant_id;
    let c = |method: Method, template: &'static str, path: String, body: Option<Value>| Case {
        method,
        template,
        path,
        body,
    };
    vec![
        c(
            Method::POST,
            "/v1/tenants",
            "/v1/tenants".into(),
            Some(json!({ "name": "sneaky" })),
        ),
        c(
            Method::GET,
            "/v1/tenants/{tenant_id}",
            format!("/v1/tenants/{b}"),
            None,
        ),
        c(
            Method::GET,
            "/v1/tenants/{tenant_id}/users",
            format!("/v1/tenants/{b}/users"),
            None,
        ),
        c(
            Method::POST,
            "/v1/tenants/{tenant_id}/users",
            format!("/v1/tenants/{b}/users"),
            Some(json!({ "email": "x@evil.test", "password": "long enough password" })),
        ),
        c(
            Method::GET,
            "/v1/tenants/{tenant_id}/users/{user_id}",
            format!("/v1/tenants/{b}/users/{other_user}"),
            None,
        ),
        c(
            Method::PATCH,
            "/v1/tenants/{tenant_id}/users/{user_id}",
            format!("/v1/tenants/{b}/users/{other_user}"),
            Some(json!({ "status": "disabled" })),
        ),
        c(
            Method::DELETE,
            "/v1/tenants/{tenant_id}/users/{user_id}",
            format!("/v1/tenants/{b}/users/{other_user}"),
            None,
        ),
        c(
            Method::GET,
            "/v1/tenants/{tenant_id}/roles",
            format!("/v1/tenants/{b}/roles"),
            None,
        ),
        c(
            Method::POST,
            "/v1/tenants/{tenant_id}/roles",
            format!("/v1/tenants/{b}/roles"),
            Some(json!({ "name": "evil", "permissions": ["tenant:admin"] })),
        ),
        c(
            Method::GET,
            "/v1/tenants/{tenant_id}/roles/{role_id}",
            format!("/v1/tenants/{b}/roles/{other_role}"),
            None,
        ),
        c(
            Method::DELETE,
            "/v1/tenants/{tenant_id}/roles/{role_id}",
            format!("/v1/tenants/{b}/roles/{other_role}"),
            None,
        ),
        c(
            Method::GET,
            "/v1/tenants/{tenant_id}/clients",
            format!("/v1/tenants/{b}/clients"),
            None,
        ),
        c(
            Method::POST,
            "/v1/tenants/{tenant_id}/clients",
            format!("/v1/tenants/{b}/clients"),
            Some(
                json!({ "name": "evil", "kind": "confidential", "grant_types": ["client_credentials"] }),
            ),
        ),
        c(
            Method::GET,
            "/v1/tenants/{tenant_id}/clients/{client_id}",
            format!("/v1/tenants/{b}/clients/{}", other.client_id),
            None,
        ),
        c(
            Method::DELETE,
            "/v1/tenants/{tenant_id}/clients/{client_id}",
            format!("/v1/tenants/{b}/clients/{}", other.client_id),
            None,
        ),
        c(
            Method::GET,
            "/v1/tenants/{tenant_id}/role-assignments",
            format!("/v1/tenants/{b}/role-assignments"),
            None,
        ),
        c(
            Method::POST,
            "/v1/tenants/{tenant_id}/role-assignments",
            format!("/v1/tenants/{b}/role-assignments"),
            Some(
                json!({ "role_id": other_role, "subject_kind": "client", "subject_id": own.client_id }),
            ),
        ),
        c(
            Method::DELETE,
            "/v1/tenants/{tenant_id}/role-assignments/{role_id}/{subject_kind}/{subject_id}",
            format!(
                "/v1/tenants/{b}/role-assignments/{other_role}/client/{}",
                other.client_id
            ),
            None,
        ),
        c(
            Method::GET,
            "/v1/audit",
            format!("/v1/audit?tenant_id={b}"),
            None,
        ),
    ]
}

async fn send(app: &TestApp, token: &str, case: &Case) -> (StatusCode, Value) {
    let mut req = app
        .http
        .request(case.method.clone(), app.url(&case.path))
        .bearer_auth(token);
    if let Some(body) = &case.body {
        req = req.json(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn snapshot(app: &TestApp, admin: &str, tenant: &str) -> Value {
    let mut out = serde_json::Map::new();
    for part in ["users", "roles", "clients", "role-assignments"] {
        let (s, body) = app
            .get_json(admin, &format!("/v1/tenants/{tenant}/{part}"))
            .await;
        assert_eq!(s, StatusCode::OK);
        out.insert(part.into(), body);
    }
    Value::Object(out)
}

async fn tenant_admin_cannot_touch_another_tenant(app: TestApp) {
    let admin = app.admin_token().await;
    let a = app.tenant_fixture(&admin, "acme").await;
    let b = app.tenant_fixture(&admin, "globex").await;
    let a_token = app.client_token(&a.client_id, &a.client_secret, None).await;
    let before = snapshot(&app, &admin, &b.tenant_id).await;
    let tenants_before = app.get_json(&admin, "/v1/tenants").await.1;

    let all = cases(&a, &b, &b.user_id, &b.role_id);
    // Every /v1 operation in the OpenAPI document has a case (besides GET /v1/tenants, checked below).
    let doc: Value =
        serde_yaml::from_str(&cloud_identity_access::openapi::yaml().unwrap()).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if path.starts_with("/v1") {
            for method in item.as_object().unwrap().keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let mut covered: BTreeSet<(String, String)> = all
        .iter()
        .map(|c| (c.method.to_string(), c.template.to_string()))
        .collect();
    covered.insert(("GET".into(), "/v1/tenants".into()));
    assert_eq!(
        documented, covered,
        "every admin endpoint needs a tenant-isolation case"
    );

    for case in &all {
        let (status, body) = send(&app, &a_token, case).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{} {} -> {status}: {body}",
            case.method,
            case.path
        );
    }
    // GET /v1/tenants lists only the caller's tenant; GET /v1/audit without a filter only its events.
    let (s, list) = app.get_json(&a_token, "/v1/tenants").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec![a.tenant_id.as_str()]
    );
    let (s, events) = app.get_json(&a_token, "/v1/audit").await;
    assert_eq!(s, StatusCode::OK);
    assert!(!events.as_array().unwrap().is_empty());
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant_id"] == a.tenant_id.as_str())
    );
    // Through its own tenant's path, the other tenant's objects do not exist.
    let own = &a.tenant_id;
    for path in [
        format!("/v1/tenants/{own}/users/{}", b.user_id),
        format!("/v1/tenants/{own}/roles/{}", b.role_id),
        format!("/v1/tenants/{own}/clients/{}", b.client_id),
    ] {
        let (s, _) = app.get_json(&a_token, &path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        let resp = app
            .http
            .delete(app.url(&path))
            .bearer_auth(&a_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "DELETE {path}");
    }
    let resp = app
        .http
        .patch(app.url(&format!("/v1/tenants/{own}/users/{}", b.user_id)))
        .bearer_auth(&a_token)
        .json(&json!({ "status": "disabled" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    for body in [
        json!({ "role_id": b.role_id, "subject_kind": "client", "subject_id": a.client_id }),
        json!({ "role_id": a.role_id, "subject_kind": "client", "subject_id": b.client_id }),
        json!({ "role_id": a.role_id, "subject_kind": "user", "subject_id": b.user_id }),
    ] {
        let (s, resp) = app
            .post_json(
                &a_token,
                &format!("/v1/tenants/{own}/role-assignments"),
                body.clone(),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {resp}");
    }
    // Nothing of the other tenant changed.
    assert_eq!(snapshot(&app, &admin, &b.tenant_id).await, before);
    assert_eq!(app.get_json(&admin, "/v1/tenants").await.1, tenants_before);
    // Positive control: the platform admin may do each of these.
    for case in cases(&a, &b, &b.user_id, &b.role_id)
        .iter()
        .filter(|c| c.method == Method::GET)
    {
        let (status, body) = send(&app, &admin, case).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{} {}: {body}",
            case.method,
            case.path
        );
    }
}

async fn platform_admin_and_audit_query(app: TestApp) {
    let admin = app.admin_token().await;
    let a = app.tenant_fixture(&admin, "acme").await;
    let (s, events) = app
        .get_json(
            &admin,
            &format!("/v1/audit?tenant_id={}&limit=1000", a.tenant_id),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let events = events.as_array().unwrap();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions[0], "tenant.create");
    assert!(
        actions.contains(&"client.create")
            && actions.contains(&"user.create")
            && actions.contains(&"role_assignment.create")
    );
    assert!(events.iter().all(|e| e["actor"] == "client:platform-admin"));
    for e in events {
        let text = e.to_string();
        assert!(
            !text.contains(&a.client_secret)
                && !text.contains("argon2")
                && !text.contains("hmac-sha256"),
            "no secrets in the audit trail: {text}"
        );
    }
    // Paging.
    let first = events[0]["seq"].as_i64().unwrap();
    let (_, page) = app
        .get_json(
            &admin,
            &format!("/v1/audit?tenant_id={}&after={first}&limit=2", a.tenant_id),
        )
        .await;
    assert_eq!(page.as_array().unwrap().len(), 2);
    assert!(page[0]["seq"].as_i64().unwrap() > first);
    // Changes: disable and delete a user, each audited with before/after.
    let path = format!("/v1/tenants/{}/users/{}", a.tenant_id, a.user_id);
    let resp = app
        .http
        .patch(app.url(&path))
        .bearer_auth(&admin)
        .json(&json!({ "status": "disabled" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app
        .http
        .delete(app.url(&path))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (_, events) = app
        .get_json(
            &admin,
            &format!("/v1/audit?tenant_id={}&limit=1000", a.tenant_id),
        )
        .await;
    let last = events.as_array().unwrap().last().unwrap();
    assert_eq!(last["action"], "user.delete");
    assert!(last["before"].as_str().unwrap().contains("disabled"));
    assert!(last["after"].is_null());
    // Duplicate tenant name: 409 problem.
    let (s, body) = app
        .post_json(&admin, "/v1/tenants", json!({ "name": "acme" }))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    // The deleted user is gone.
    let (s, _) = app
        .get_json(
            &admin,
            &format!("/v1/tenants/{}/users/{}", a.tenant_id, a.user_id),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn tenant_admin_cannot_escalate(app: TestApp) {
    let admin = app.admin_token().await;
    let a = app.tenant_fixture(&admin, "acme").await;
    let token = app.client_token(&a.client_id, &a.client_secret, None).await;
    let (s, body) = app
        .post_json(
            &token,
            &format!("/v1/tenants/{}/roles", a.tenant_id),
            json!({ "name": "root", "permissions": ["platform:admin"] }),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    // Even a platform-created role with platform:admin in a normal tenant does not make its holder a platform admin.
    let (s, role) = app
        .post_json(
            &admin,
            &format!("/v1/tenants/{}/roles", a.tenant_id),
            json!({ "name": "fake-root", "permissions": ["platform:admin"] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = app
        .post_json(
            &admin,
            &format!("/v1/tenants/{}/role-assignments", a.tenant_id),
            json!({ "role_id": role["id"], "subject_kind": "client", "subject_id": a.client_id }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let token = app.client_token(&a.client_id, &a.client_secret, None).await;
    let (s, _) = app
        .post_json(&token, "/v1/tenants", json!({ "name": "x" }))
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "platform:admin counts only in the platform tenant"
    );
    // A token without tenant:admin gets 403.
    let (s, c) = app
        .post_json(&admin, &format!("/v1/tenants/{}/clients", a.tenant_id), json!({ "name": "plain", "kind": "confidential", "grant_types": ["client_credentials"] }))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let plain = app
        .client_token(
            c["client"]["id"].as_str().unwrap(),
            c["client_secret"].as_str().unwrap(),
            None,
        )
        .await;
    let (s, _) = app
        .get_json(&plain, &format!("/v1/tenants/{}/users", a.tenant_id))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn no_admin_client_without_a_configured_secret() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.bootstrap.admin_client_secret = None)
        .await
        .unwrap();
    let resp = app
        .http
        .post(app.url("/oauth2/token"))
        .basic_auth("platform-admin", Some(""))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        app.state
            .store
            .get_client("platform-admin")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn bootstrap_secret_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{}\n", common::ADMIN_SECRET)).unwrap();
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.bootstrap.admin_client_secret = None;
        c.bootstrap.admin_client_secret_file = Some(file.clone());
    })
    .await
    .unwrap();
    app.admin_token().await;
}

#[tokio::test]
async fn a_short_bootstrap_secret_is_refused() {
    let mut config = common::base_config();
    config.bootstrap.admin_client_secret = Some("admin".to_string().into());
    let err = cloud_identity_access::build(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 32 characters"), "{err}");
    assert!(!err.contains("admin\""));
}

/// Each audit event records the `x-request-id` of the API request that made the change: the
/// caller's when it sent one, else the one the service made up and answered with. Changes made
/// outside a request (the bootstrap) have none. The id is not part of the event's hash, so
/// `verify_chain` still holds.
async fn audit_events_carry_the_request_id_of_their_change(app: TestApp) {
    let admin = app.admin_token().await;
    let sent = app
        .http
        .post(app.url("/v1/tenants"))
        .bearer_auth(&admin)
        .header("x-request-id", "change-ticket-4711")
        .json(&json!({ "name": "with-request-id" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::CREATED);
    let tenant = sent.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let made_up = app
        .http
        .post(app.url(&format!("/v1/tenants/{tenant}/roles")))
        .bearer_auth(&admin)
        .json(&json!({ "name": "viewer", "permissions": ["things:read"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(made_up.status(), StatusCode::CREATED);
    let answered_id = made_up.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let (s, events) = app
        .get_json(&admin, &format!("/v1/audit?tenant_id={tenant}&limit=10"))
        .await;
    assert_eq!(s, StatusCode::OK);
    let by_action = |action: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action} event in {events}"))
            .clone()
    };
    assert_eq!(
        by_action("tenant.create")["request_id"],
        "change-ticket-4711"
    );
    assert_eq!(by_action("role.create")["request_id"], answered_id.as_str());
    let (_, all) = app.get_json(&admin, "/v1/audit?limit=1000").await;
    let bootstrap = &all.as_array().unwrap()[0];
    assert_eq!(bootstrap["actor"], "system", "{bootstrap}");
    assert!(bootstrap["request_id"].is_null(), "{bootstrap}");
    let (events, seq, hash) = app.state.store.audit_chain().await.unwrap();
    assert!(events.iter().any(|e| e.request_id.is_some()));
    let report = cloud_identity_access::audit::verify_chain(&events, seq, &hash);
    assert!(report.ok(), "{report:?}");
}
