//! Micro-benchmarks of the token hot paths, in process (no HTTP, no load generator):
//! `cargo bench -p cloud-identity-access --bench tokens`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use base64::Engine;
use cloud_identity_access::crypto::SecretHasher;
use cloud_identity_access::tokens::verify_access_token;
use criterion::{Criterion, criterion_group, criterion_main};
use secrecy::SecretString;
use tower::ServiceExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let (router, state, basic, token) = rt.block_on(async {
        let mut config = cloud_identity_access::Config::default();
        config.server.port = 0;
        config.server.admin_port = 0;
        config.database.url = Some(SecretString::from("sqlite::memory:"));
        let app = cloud_identity_access::build(config).await.unwrap();
        let state = app.state().clone();
        let demo = match cloud_identity_access::demo::seed(&app).await.unwrap() {
            cloud_identity_access::demo::DemoSeed::Created(d) => d,
            other => panic!("{other:?}"),
        };
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", demo.client_id, demo.client_secret))
        );
        let router = cloud_identity_access::routes(state.clone());
        let resp = router.clone().oneshot(token_request(&basic)).await.unwrap();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let token = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        (router, state, basic, token)
    });
    let keys = state.key_set().unwrap();
    let now = state.now();
    let issuer = state.issuer().to_string();

    let mut group = c.benchmark_group("identity");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("sign_access_token", |b| {
        let claims =
            cloud_identity_access::tokens::verify_access_token(&keys, &token, &issuer, now)
                .unwrap();
        b.iter(|| keys.sign("at+jwt", &claims))
    });
    group.bench_function("verify_access_token", |b| {
        b.iter(|| verify_access_token(&keys, &token, &issuer, now).unwrap())
    });
    let hasher = SecretHasher::new([7; 32]);
    let stored = hasher.hash("a-client-secret-of-43-characters-xxxxxxxxxx");
    group.bench_function("client_secret_hmac_verify", |b| {
        b.iter(|| hasher.verify("a-client-secret-of-43-characters-xxxxxxxxxx", &stored))
    });
    group.bench_function("client_credentials_request_in_process", |b| {
        b.to_async(&rt).iter(|| {
            let router = router.clone();
            let req = token_request(&basic);
            async move {
                let resp = router.oneshot(req).await.unwrap();
                assert!(resp.status().is_success());
            }
        })
    });
    group.bench_function("introspection_request_in_process", |b| {
        b.to_async(&rt).iter(|| {
            let router = router.clone();
            let req = Request::post("/oauth2/introspect")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::AUTHORIZATION, &basic)
                .body(Body::from(format!("token={token}")))
                .unwrap();
            async move {
                let resp = router.oneshot(req).await.unwrap();
                assert!(resp.status().is_success());
            }
        })
    });
    group.finish();
    let _ = Arc::strong_count(&state.0);
}

fn token_request(basic: &str) -> Request<Body> {
    Request::post("/oauth2/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, basic)
        .body(Body::from(
            "grant_type=client_credentials&scope=orders:read",
        ))
        .unwrap()
}

criterion_group!(identity, benches);
criterion_main!(identity);
