//! The gateway end to end, with real servers on port 0: a stand-in identity provider with real
//! keys, real upstreams, and the gateway built exactly as the binary builds it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn problem(content_type: Option<&reqwest::header::HeaderValue>) -> bool {
    content_type.and_then(|v| v.to_str().ok()) == Some("application/problem+json")
}

#[tokio::test]
async fn proxies_with_identity_headers_from_the_token_and_strips_spoofed_ones() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, _) = upstream().await;
    let gw = start(config(
        &identity,
        &format!("routes:\n  api: {{path_prefix: /api/, upstreams: [\"http://{upstream}\"]}}\n"),
    ))
    .await;
    gw.ready().await;
    let token = key.sign(&claims(&identity.issuer, "tenant-a", "user-1", &[]));
    let response = client()
        .get(format!("{}/api/things?x=1", gw.url))
        .bearer_auth(&token)
        .header("x-tenant-id", "evil-tenant")
        .header("x-user-id", "evil-user")
        .header("x-request-id", "req-123")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("connection", "x-hop")
        .header("x-hop", "must-not-pass")
        .header("x-forwarded-host", "spoofed.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-123");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    let body: Value = response.json().await.unwrap();
    let h = &body["headers"];
    assert_eq!(body["uri"], "/api/things?x=1");
    assert_eq!(h["x-tenant-id"], "tenant-a");
    assert_eq!(h["x-user-id"], "user-1");
    assert_eq!(h["x-request-id"], "req-123");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_ne!(h["x-forwarded-host"], "spoofed.example");
    assert!(
        h.get("x-hop").is_none(),
        "a header listed in Connection is hop-by-hop: {h}"
    );
    let traceparent = h["traceparent"].as_str().unwrap();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "the gateway's own span is the parent: {traceparent}"
    );

    // A public route strips identity headers too, and sets none.
    let gw2 = start(config(&identity, &format!("routes:\n  open: {{path_prefix: /open/, auth: public, upstreams: [\"http://{upstream}\"]}}\n"))).await;
    let body: Value = client()
        .get(format!("{}/open/x", gw2.url))
        .header("x-tenant-id", "evil")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body["headers"].get("x-tenant-id").is_none(), "{body}");
}

#[tokio::test]
async fn bad_tokens_get_401_problem_json_never_500() {
    let key = Key::ed25519("k1");
    let es = Key::es256("k2");
    let stranger = Key::ed25519("k1");
    let identity = Identity::start(&[&key, &es]).await;
    let (upstream, _) = upstream().await;
    let gw = start(config(
        &identity,
        &format!("routes:\n  api: {{path_prefix: /api/, upstreams: [\"http://{upstream}\"]}}\n"),
    ))
    .await;
    gw.ready().await;
    let iss = identity.issuer.clone();
    let good = claims(&iss, "t", "u", &[]);
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 600);
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("http://127.0.0.1:1");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut future = good.clone();
    future["nbf"] = json!(now() + 3600);
    let valid = key.sign(&good);
    let (head, rest) = valid.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let mut tampered_claims = good.clone();
    tampered_claims["tid"] = json!("other-tenant");
    let tampered = format!(
        "{head}.{}.{sig}",
        b64(tampered_claims.to_string().as_bytes())
    );
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","kid":"k1"}"#),
        b64(good.to_string().as_bytes())
    );
    let hs256 = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"HS256","kid":"k1"}"#),
        b64(good.to_string().as_bytes()),
        b64(b"sig")
    );
    let cases = [
        ("expired", key.sign(&expired)),
        ("wrong issuer", key.sign(&wrong_iss)),
        ("wrong audience", key.sign(&wrong_aud)),
        ("not yet valid", key.sign(&future)),
        ("alg none", alg_none),
        ("alg HS256", hs256),
        (
            "unknown kid",
            key.sign_raw(&json!({"alg": "EdDSA", "kid": "nobody"}), &good),
        ),
        ("other key, same kid", stranger.sign(&good)),
        ("tampered claims", tampered),
        (
            "ES256 key claimed as EdDSA",
            key.sign_raw(&json!({"alg": "EdDSA", "kid": "k2"}), &good),
        ),
        ("garbage", "not.a.jwt".to_string()),
        ("two parts", "abc.def".to_string()),
        ("non-ascii", "é.é.é".to_string()),
    ];
    for (name, token) in cases {
        let response = client()
            .get(format!("{}/api/x", gw.url))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{name}");
        assert!(problem(response.headers().get("content-type")), "{name}");
        assert!(
            response.headers().contains_key("www-authenticate"),
            "{name}"
        );
    }
    let missing = client()
        .get(format!("{}/api/x", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    let basic = client()
        .get(format!("{}/api/x", gw.url))
        .header("authorization", "Basic dTpw")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    // Both accepted algorithms pass.
    for token in [valid, es.sign(&good)] {
        let ok = client()
            .get(format!("{}/api/x", gw.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
    assert!(gw.metrics().await.contains("gateway_auth_failures_total"));
}

#[tokio::test]
async fn required_permission_is_checked() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, _) = upstream().await;
    let gw = start(config(
        &identity,
        &format!("routes:\n  admin: {{path_prefix: /admin/, auth: permission, permission: \"orders:write\", upstreams: [\"http://{upstream}\"]}}\n"),
    ))
    .await;
    gw.ready().await;
    let without = key.sign(&claims(&identity.issuer, "t", "u", &["orders:read"]));
    let with = key.sign(&claims(&identity.issuer, "t", "u", &["orders:write"]));
    let r = client()
        .get(format!("{}/admin/x", gw.url))
        .bearer_auth(without)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(problem(r.headers().get("content-type")));
    let r = client()
        .get(format!("{}/admin/x", gw.url))
        .bearer_auth(with)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_and_the_last_good_keys_survive_an_identity_outage() {
    let old = Key::ed25519("old");
    let new = Key::es256("new");
    let identity = Identity::start(&[&old]).await;
    let (upstream, _) = upstream().await;
    let gw = start(config(
        &identity,
        &format!("routes:\n  api: {{path_prefix: /api/, upstreams: [\"http://{upstream}\"]}}\n"),
    ))
    .await;
    gw.ready().await;
    // The start-up fetch counts against the refetch rate limit (min_refetch_interval: 200ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fetched_before = identity.jwks_hits.load(Ordering::SeqCst);
    // Rotation: identity now publishes `new` too; 20 concurrent requests with the new kid.
    identity.publish(&[&old, &new]);
    let token = new.sign(&claims(&identity.issuer, "t", "u", &[]));
    let requests = (0..20).map(|_| {
        client()
            .get(format!("{}/api/x", gw.url))
            .bearer_auth(&token)
            .send()
    });
    for r in futures::future::join_all(requests).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let refetches = identity.jwks_hits.load(Ordering::SeqCst) - fetched_before;
    assert_eq!(
        refetches, 1,
        "one single-flight refetch for 20 concurrent unknown-kid requests"
    );
    // Unknown kids cannot make the gateway hammer identity: refetches are rate-limited.
    let bogus = Key::ed25519("bogus");
    for _ in 0..10 {
        let r = client()
            .get(format!("{}/api/x", gw.url))
            .bearer_auth(bogus.sign(&claims(&identity.issuer, "t", "u", &[])))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    assert!(identity.jwks_hits.load(Ordering::SeqCst) - fetched_before <= 2);
    // Identity goes down: known keys keep working, fresh tokens too.
    identity.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = old.sign(&claims(&identity.issuer, "t", "u2", &[]));
    let r = client()
        .get(format!("{}/api/x", gw.url))
        .bearer_auth(fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(format!("{}/api/x", gw.url))
        .bearer_auth(bogus.sign(&claims(&identity.issuer, "t", "u", &[])))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "an unknown kid while identity is down is still a 401, not a 5xx"
    );
}

#[tokio::test]
async fn starts_before_identity_and_becomes_ready_once_the_keys_load() {
    let key = Key::ed25519("k1");
    let reserved = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(
        &path,
        format!("server: {{port: 0, admin_port: 0, drain_period: 0s}}\nidentity: {{issuer_url: \"http://{addr}\"}}\nroutes:\n  api: {{path_prefix: /api/, upstreams: [\"http://127.0.0.1:1\"]}}\n"),
    )
    .unwrap();
    let gw = start(cloud_api_gateway_bff::Config::load(Some(&path)).unwrap()).await;
    let r = reqwest::get(format!("{}/readyz", gw.admin)).await.unwrap();
    assert_eq!(r.status(), 503);
    let report: Value = r.json().await.unwrap();
    assert!(
        report["checks"]["jwks"]
            .as_str()
            .unwrap()
            .starts_with("failing"),
        "{report}"
    );
    let token = key.sign(&claims(&format!("http://{addr}"), "t", "u", &[]));
    let r = client()
        .get(format!("{}/api/x", gw.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "keys not loaded yet: 503, not 401 or 500");
    assert!(problem(r.headers().get("content-type")));
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let before = gw.metrics().await;
    assert!(
        metric(&before, "gateway_jwks_refresh_failures_total") >= 1.0,
        "an unreachable identity shows in the metrics: {before}"
    );
    assert_eq!(
        metric(&before, "gateway_jwks_last_refresh_timestamp_seconds"),
        0.0
    );
    let _identity =
        Identity::serve(tokio::net::TcpListener::bind(addr).await.unwrap(), &[&key]).await;
    gw.ready().await;
    let after = gw.metrics().await;
    assert!(
        metric(&after, "gateway_jwks_last_refresh_timestamp_seconds") > 1.7e9,
        "a successful refresh records when: {after}"
    );
}

#[tokio::test]
async fn rate_limit_headers_and_429_in_process() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, _) = upstream().await;
    let gw = start(config(
        &identity,
        &format!("rate_limits: {{small: {{requests: 3, period: 1h}}}}\nroutes:\n  api: {{path_prefix: /api/, rate_limit: small, upstreams: [\"http://{upstream}\"]}}\n"),
    ))
    .await;
    gw.ready().await;
    let a = key.sign(&claims(&identity.issuer, "tenant-a", "u", &[]));
    let b = key.sign(&claims(&identity.issuer, "tenant-b", "u", &[]));
    for remaining in ["2", "1", "0"] {
        let r = client()
            .get(format!("{}/api/x", gw.url))
            .bearer_auth(&a)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-limit"], "3");
        assert_eq!(r.headers()["ratelimit-remaining"], remaining);
        assert!(r.headers().contains_key("ratelimit-reset"));
    }
    let r = client()
        .get(format!("{}/api/x", gw.url))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(problem(r.headers().get("content-type")));
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry_after > 1000,
        "about 20 minutes until the next request: {retry_after}"
    );
    // Another tenant has its own quota.
    let r = client()
        .get(format!("{}/api/x", gw.url))
        .bearer_auth(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn upstream_failures_are_problem_json_and_the_circuit_breaker_opens_and_recovers() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, state) = upstream().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = start(config(
        &identity,
        &format!(
            "routes:
  api:
    path_prefix: /api/
    auth: public
    strip_prefix: true
    upstreams: [\"http://{upstream}\"]
    timeouts: {{request: 300ms}}
    circuit_breaker: {{min_requests: 4, error_ratio: 0.5, open_for: 500ms}}
  dead: {{path_prefix: /dead/, auth: public, upstreams: [\"http://{dead}\"], circuit_breaker: {{enabled: false}}}}
  slow: {{path_prefix: /slow/, auth: public, upstreams: [\"http://{upstream}\"], timeouts: {{request: 300ms}}}}
"
        ),
    ))
    .await;
    let r = client()
        .get(format!("{}/dead/x", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(problem(r.headers().get("content-type")));
    let r = client()
        .get(format!("{}/slow/2000", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(problem(r.headers().get("content-type")));
    // The breaker: 4 failures open it; then the upstream is not called at all.
    state.broken.store(true, Ordering::SeqCst);
    for _ in 0..4 {
        let r = client()
            .get(format!("{}/api/unstable", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
    }
    let hits = state.hits.load(Ordering::SeqCst);
    let r = client()
        .get(format!("{}/api/unstable", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(problem(r.headers().get("content-type")));
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        state.hits.load(Ordering::SeqCst),
        hits,
        "an open breaker does not call the upstream"
    );
    // Recovery: the upstream heals, the open period passes, a probe closes the breaker.
    state.broken.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..3 {
        let r = client()
            .get(format!("{}/api/unstable", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(gw.metrics().await.contains("outcome=\"circuit_open\""));
}

#[tokio::test]
async fn idempotent_requests_are_retried_and_others_are_not() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, state) = upstream().await;
    let gw = start(config(
        &identity,
        &format!("routes:\n  api: {{path_prefix: /api/, auth: public, strip_prefix: true, upstreams: [\"http://{upstream}\"], retries: {{attempts: 2, backoff: 10ms}}}}\n"),
    ))
    .await;
    state.fail_next.store(2, Ordering::SeqCst);
    let r = client()
        .get(format!("{}/api/flaky", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(state.hits.load(Ordering::SeqCst), 3);
    state.fail_next.store(1, Ordering::SeqCst);
    let r = client()
        .post(format!("{}/api/flaky", gw.url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "POST is not idempotent: no retry");
    assert_eq!(state.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn body_limits_cors_and_websockets() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, _) = upstream().await;
    let gw = start(config(
        &identity,
        &format!(
            "routes:
  api:
    path_prefix: /api/
    auth: public
    strip_prefix: true
    upstreams: [\"http://{upstream}\"]
    max_body_bytes: 1000
    cors: {{allowed_origins: [\"https://app.example.com\"], allowed_headers: [authorization], max_age: 10m}}
    headers: {{request_set: {{x-route: api}}, response_set: {{x-served-by: gateway}}}}
"
        ),
    ))
    .await;
    let r = client()
        .post(format!("{}/api/count", gw.url))
        .body(vec![1u8; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(problem(r.headers().get("content-type")));
    let r = client()
        .post(format!("{}/api/count", gw.url))
        .body(body_of(5000, 100))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "a chunked body over the limit is cut off");
    let r = client()
        .post(format!("{}/api/count", gw.url))
        .body(vec![1u8; 900])
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "900");
    // CORS preflight answered by the gateway, and the allowed origin echoed on responses.
    let r = client()
        .request(reqwest::Method::OPTIONS, format!("{}/api/echo", gw.url))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(r.headers()["access-control-max-age"], "600");
    let r = client()
        .get(format!("{}/api/echo", gw.url))
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    assert_eq!(r.headers()["x-served-by"], "gateway");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["headers"]["x-route"], "api");
    // WebSocket upgrade passes through.
    use futures::{SinkExt, StreamExt};
    let (mut ws, response) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/api/ws",
        gw.url.rsplit(':').next().unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        "hello".into(),
    ))
    .await
    .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply.to_text().unwrap(), "echo: hello");
}

#[tokio::test]
async fn bff_session_and_aggregations_with_partial_policies() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, _) = upstream().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = start(config(
        &identity,
        &format!(
            "bff:
  session: {{tenant_url: \"http://{upstream}/tenants/{{tenant}}\"}}
  aggregations:
    dashboard:
      path: /bff/v1/dashboard
      partial: allow
      calls:
        orders: {{url: \"http://{upstream}/orders\", required: true}}
        slow: {{url: \"http://{upstream}/slow/2000\", timeout: 200ms}}
        gone: {{url: \"http://{dead}/x\"}}
    strict:
      path: /bff/v1/strict
      calls:
        orders: {{url: \"http://{upstream}/orders\"}}
        slow: {{url: \"http://{upstream}/slow/2000\", timeout: 200ms}}
"
        ),
    ))
    .await;
    gw.ready().await;
    let token = key.sign(&claims(
        &identity.issuer,
        "tenant-a",
        "user-1",
        &["orders:read"],
    ));
    let r = client()
        .get(format!("{}/bff/v1/session", gw.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["user"]["sub"], "user-1");
    assert_eq!(s["user"]["tenant_id"], "tenant-a");
    assert_eq!(s["profile"]["email"], "user@example.com");
    assert_eq!(s["tenant"]["uri"], "/tenants/tenant-a");
    assert_eq!(s["tenant"]["headers"]["x-tenant-id"], "tenant-a");
    assert_eq!(s["errors"], json!({}));
    assert!(s["flags"].is_object());
    let r = client()
        .get(format!("{}/bff/v1/session", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let started = std::time::Instant::now();
    let r = client()
        .get(format!("{}/bff/v1/dashboard", gw.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "calls run concurrently under their deadlines"
    );
    assert_eq!(r.status(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["data"]["orders"]["uri"], "/orders");
    assert_eq!(d["errors"]["slow"], "timeout");
    assert_eq!(d["errors"]["gone"], "unreachable");
    let r = client()
        .get(format!("{}/bff/v1/strict", gw.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["failed_calls"]["slow"], "timeout");
}

#[tokio::test]
async fn an_invalid_route_table_fails_the_build_naming_route_and_field() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let cfg = config(
        &identity,
        "routes:\n  api: {path_prefix: /api/, upstreams: [\"http://127.0.0.1:1\"], rate_limit: missing}\n",
    );
    let err = cloud_api_gateway_bff::build(cfg)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("routes.api.rate_limit: unknown policy `missing`"),
        "{err}"
    );
}

#[tokio::test]
async fn reload_swaps_the_table_and_keeps_it_when_the_new_one_is_invalid() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, _) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    let main = dir.path().join("gateway.yaml");
    std::fs::write(&main, format!("server: {{port: 0, admin_port: 0, drain_period: 0s}}\nidentity: {{issuer_url: \"{}\"}}\nroutes_file: {}\n", identity.issuer, routes.display())).unwrap();
    std::fs::write(&routes, format!("routes:\n  one: {{path_prefix: /one/, auth: public, upstreams: [\"http://{upstream}\"]}}\n")).unwrap();
    let app =
        cloud_api_gateway_bff::build(cloud_api_gateway_bff::Config::load(Some(&main)).unwrap())
            .await
            .unwrap()
            .without_signals();
    let url = format!("http://127.0.0.1:{}", app.port());
    let reload = app.reload_handle();
    tokio::spawn(app.run_until_stopped());
    assert_eq!(
        client()
            .get(format!("{url}/one/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    std::fs::write(&routes, format!("routes:\n  two: {{path_prefix: /two/, auth: public, upstreams: [\"http://{upstream}\"]}}\n")).unwrap();
    assert_eq!(reload.reload(), Ok(1));
    assert_eq!(
        client()
            .get(format!("{url}/one/x"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client()
            .get(format!("{url}/two/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    std::fs::write(&routes, "routes:\n  broken: {path_prefix: nope}\n").unwrap();
    let err = reload.reload().unwrap_err();
    assert!(err.contains("routes.broken"), "{err}");
    assert_eq!(
        client()
            .get(format!("{url}/two/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "the old table stays"
    );
}

/// Found by the upstream-faults drill (crates/cloud-drills/src/upstream_faults.rs): each retry
/// used to get a full `timeouts.request` of its own, so a slow upstream made a GET wait
/// (1 + attempts) times the timeout, and hit the upstream 1 + attempts times, before its 504.
#[tokio::test]
async fn retries_stay_within_the_route_timeout() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let counter = hits.clone();
    let slow = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(2)).await;
            "late"
        }
    });
    tokio::spawn(async move { axum::serve(listener, slow).await });
    let gw = start(config(
        &identity,
        &format!(
            "routes:\n  api: {{path_prefix: /api/, auth: public, upstreams: [\"http://{upstream}\"], \
             timeouts: {{request: 300ms}}, retries: {{attempts: 2, backoff: 10ms}}}}\n"
        ),
    ))
    .await;
    let started = std::time::Instant::now();
    let r = client()
        .get(format!("{}/api/x", gw.url))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(550),
        "the 504 took {took:?}; timeouts.request is 300 ms, retries included"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "no retry once the timeout is spent"
    );
}
