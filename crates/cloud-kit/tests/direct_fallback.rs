//! `Server::with_direct_fallback`: the paths a router does not own go straight to a handler,
//! with the same standard work a route gets (request id, nosniff, RED metrics, panic to 500),
//! while the router keeps its own paths.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::routing::get;
use axum::{Router, response::IntoResponse};
use cloud_kit::http_layers::DirectHandler;
use cloud_kit::server::current_event_loop;
use cloud_kit::trace_context::{RequestId, TraceContext};
use cloud_kit::{EventLoops, Metrics, Readiness, Server, ServerConfig};

/// What the direct handler saw of a request, as its response body.
fn direct_handler() -> DirectHandler {
    Arc::new(|request: Request| {
        Box::pin(async move {
            if request.uri().path() == "/boom" {
                panic!("secret-in-panic-payload");
            }
            let extensions = request.extensions();
            format!(
                "direct {} request_id={} trace={} peer={}",
                request.uri().path(),
                extensions.get::<RequestId>().is_some(),
                extensions.get::<TraceContext>().is_some(),
                extensions.get::<ConnectInfo<SocketAddr>>().is_some(),
            )
            .into_response()
        })
    })
}

async fn text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

async fn start() -> (u16, u16) {
    let config = ServerConfig {
        port: 0,
        admin_port: 0,
        drain_period: Duration::ZERO,
        ..ServerConfig::default()
    };
    let router = Router::new()
        .route("/own", get(|| async { "router" }))
        .fallback(|| async { "router fallback" });
    let server = Server::bind("test", &config, router, Readiness::new(), Metrics::new())
        .await
        .unwrap()
        .with_direct_fallback(vec!["/own".into()], Arc::new(direct_handler))
        .without_signals();
    let ports = (server.port(), server.admin_port());
    tokio::spawn(server.run_until_stopped());
    ports
}

#[tokio::test]
async fn paths_the_router_does_not_own_go_to_the_handler_with_the_standard_work() {
    let (port, admin) = start().await;
    let client = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    let own = client.get(url("/own")).send().await.unwrap();
    assert_eq!(own.status(), 200);
    assert_eq!(own.text().await.unwrap(), "router");

    let direct = client
        .get(url("/orders/7"))
        .header("x-request-id", "req-7")
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
    assert_eq!(direct.headers()["x-request-id"], "req-7");
    assert_eq!(direct.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        direct.text().await.unwrap(),
        "direct /orders/7 request_id=true trace=true peer=true"
    );

    let assigned = client.get(url("/other")).send().await.unwrap();
    let id = assigned.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");

    // A panic is a problem+json 500 that does not leak its payload, and the connection lives on.
    let boom = client.get(url("/boom")).send().await.unwrap();
    assert_eq!(boom.status(), 500);
    assert_eq!(boom.headers()["content-type"], "application/problem+json");
    assert!(!boom.text().await.unwrap().contains("secret"));
    let after = client.get(url("/after")).send().await.unwrap();
    assert_eq!(after.status(), 200);

    let metrics = text(&client, &format!("http://127.0.0.1:{admin}/metrics")).await;
    let line = |route: &str, status: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("http_requests_total{")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("status=\"{status}\""))
            })
            .unwrap_or_else(|| panic!("no {route} {status} line in:\n{metrics}"))
            .to_string()
    };
    assert!(line("unmatched", "200").ends_with(" 3"), "{metrics}");
    assert!(line("unmatched", "500").ends_with(" 1"), "{metrics}");
    assert!(line("/own", "200").ends_with(" 1"), "{metrics}");
}

/// With a worker per core, each event loop serves with a handler made on its own thread (so
/// that what the handler clones per request is not shared between cores), and the RED metrics,
/// counted per event loop, add up to every request.
#[tokio::test]
async fn each_event_loop_serves_with_a_handler_made_on_its_own_thread() {
    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let factory_made = made.clone();
    let config = ServerConfig {
        port: 0,
        admin_port: 0,
        drain_period: Duration::ZERO,
        ..ServerConfig::default()
    };
    let server = Server::bind_with(
        "test",
        &config,
        Router::new(),
        Readiness::new(),
        Metrics::new(),
        EventLoops::PerCore,
    )
    .await
    .unwrap()
    .with_direct_fallback(
        Vec::new(),
        Arc::new(move || -> DirectHandler {
            factory_made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let made_on = current_event_loop();
            Arc::new(move |_request: Request| {
                Box::pin(async move {
                    format!("made on {made_on:?}, serving on {:?}", current_event_loop())
                        .into_response()
                })
            })
        }),
    )
    .without_signals();
    let (port, admin) = (server.port(), server.admin_port());
    tokio::spawn(server.run_until_stopped());

    let loops = cloud_kit::server::per_core_event_loops();
    // A connection per request, so that the kernel spreads them over the event loops.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut serving_loops = std::collections::BTreeSet::new();
    const REQUESTS: usize = 64;
    for _ in 0..REQUESTS {
        let body = text(&client, &format!("http://127.0.0.1:{port}/any")).await;
        let (made_on, serving_on) = body
            .strip_prefix("made on ")
            .and_then(|rest| rest.split_once(", serving on "))
            .unwrap_or_else(|| panic!("unexpected body {body:?}"));
        assert_eq!(made_on, serving_on, "{body}");
        assert!(serving_on.starts_with("Some("), "{body}");
        serving_loops.insert(serving_on.to_string());
    }
    // Once for `with_direct_fallback` itself, then once per event loop.
    assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), loops + 1);
    if loops > 1 {
        assert!(
            serving_loops.len() > 1,
            "one loop served all: {serving_loops:?}"
        );
    }
    let metrics = text(&client, &format!("http://127.0.0.1:{admin}/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("http_requests_total{")
                && l.contains("route=\"unmatched\"")
                && l.ends_with(&format!(" {REQUESTS}"))),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("http_request_duration_seconds_count{")
                && l.ends_with(&format!(" {REQUESTS}"))),
        "{metrics}"
    );
}
