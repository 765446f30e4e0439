//! The HTTP contract every service inherits from cloud-kit: HTTP/1.1 and h2c on one port,
//! problem+json errors for bad input, request ids, readiness with named checks, and RED metrics
//! by route template.
// The helpers below are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use cloud_kit::extract::Json;
use cloud_kit::{Metrics, Readiness, Server, ServerConfig, Shutdown};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Running {
    port: u16,
    admin: u16,
    shutdown: Shutdown,
    flag: Arc<AtomicBool>,
}

impl Running {
    /// The admin port's `/metrics` text.
    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

#[derive(serde::Deserialize)]
struct Order {
    #[allow(dead_code)]
    quantity: u32,
}

async fn start() -> Running {
    let config = ServerConfig {
        port: 0,
        admin_port: 0,
        drain_period: Duration::ZERO,
        max_body_bytes: 1024,
        ..ServerConfig::default()
    };
    let router = Router::new()
        .route(
            "/orders/{id}",
            get(
                |cloud_kit::extract::Path(id): cloud_kit::extract::Path<u32>| async move {
                    format!("order {id}")
                },
            ),
        )
        .route(
            "/orders",
            post(|Json(_order): Json<Order>| async { "created" }),
        )
        .route(
            "/panic",
            get(|| async {
                #[allow(clippy::panic)]
                if true {
                    panic!("secret-in-panic-payload");
                }
                "unreachable"
            }),
        );
    let router = cloud_kit::http_layers::default_fallbacks(router);
    let readiness = Readiness::new();
    let flag = Arc::new(AtomicBool::new(true));
    let check_flag = flag.clone();
    readiness.add_check("database", move || {
        let ok = check_flag.load(Ordering::SeqCst);
        async move {
            if ok {
                Ok(())
            } else {
                Err("connection refused".to_string())
            }
        }
    });
    let server = Server::bind("test", &config, router, readiness, Metrics::new())
        .await
        .unwrap()
        .without_signals();
    let running = Running {
        port: server.port(),
        admin: server.admin_port(),
        shutdown: server.shutdown_handle(),
        flag,
    };
    tokio::spawn(server.run_until_stopped());
    running
}

async fn problem(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status);
    body
}

#[tokio::test]
async fn bad_input_gets_problem_json_never_500() {
    let app = start().await;
    let client = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", app.port);

    let body = problem(
        client
            .post(url("/orders"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("json"),
        "{body}"
    );
    let body = problem(
        client
            .post(url("/orders"))
            .body("quantity=1")
            .send()
            .await
            .unwrap(),
        415,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("application/json"),
        "{body}"
    );
    let body = problem(
        client
            .post(url("/orders"))
            .header("content-type", "application/json")
            .body(r#"{"quantity":-1}"#)
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("quantity"),
        "names the field: {body}"
    );
    let big = format!("{{\"quantity\":1,\"pad\":\"{}\"}}", "x".repeat(4096));
    problem(
        client
            .post(url("/orders"))
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;
    problem(
        client
            .get(url("/orders/not-a-number"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    problem(client.get(url("/nowhere")).send().await.unwrap(), 404).await;
    problem(client.delete(url("/orders")).send().await.unwrap(), 405).await;
    let body = problem(client.get(url("/panic")).send().await.unwrap(), 500).await;
    assert!(
        !body.to_string().contains("secret-in-panic-payload"),
        "a panic payload never reaches the client: {body}"
    );
    app.shutdown.trigger();
}

/// A rejected oversized body is never read, so the server must close that connection and say so;
/// otherwise a keep-alive client reuses the dying connection and its next request fails.
#[tokio::test]
async fn an_oversized_body_closes_its_connection_and_keep_alive_clients_go_on() {
    let app = start().await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", app.port);
    for round in 0..10 {
        let rejected = client
            .post(url("/orders"))
            .header("content-type", "application/json")
            .body(vec![b' '; 1024 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(rejected.status(), 413, "round {round}");
        assert_eq!(
            rejected.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "round {round}: a 413 must announce that the connection closes"
        );
        let next = client.get(url("/orders/1")).send().await;
        assert_eq!(
            next.map(|r| r.status().as_u16()).map_err(|e| e.to_string()),
            Ok(200),
            "round {round}: the request after a 413 must not hit the closed connection"
        );
    }
    app.shutdown.trigger();
}

#[tokio::test]
async fn request_ids_are_echoed_or_assigned() {
    let app = start().await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/orders/1", app.port);
    let echoed = client
        .get(&url)
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "req-42");
    let assigned = client
        .get(&url)
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = assigned.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(
        uuid::Uuid::parse_str(id).map(|_| ()),
        Ok(()),
        "a fresh UUID replaces an unsafe id, got {id}"
    );
    app.shutdown.trigger();
}

#[tokio::test]
async fn readyz_names_the_failing_check() {
    let app = start().await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/readyz", app.admin);
    let ok = client.get(&url).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    app.flag.store(false, Ordering::SeqCst);
    let failing = client.get(&url).send().await.unwrap();
    assert_eq!(failing.status(), 503);
    let body: serde_json::Value = failing.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(
        body["checks"]["database"], "failing: connection refused",
        "{body}"
    );
    app.shutdown.trigger();
}

#[tokio::test]
async fn metrics_use_route_templates() {
    let app = start().await;
    let client = reqwest::Client::new();
    for id in [1, 2, 3] {
        client
            .get(format!("http://127.0.0.1:{}/orders/{id}", app.port))
            .send()
            .await
            .unwrap();
    }
    let metrics = app.metrics().await;
    assert!(
        metrics
            .contains(r#"http_requests_total{method="GET",route="/orders/{id}",status="200"} 3"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains("/orders/1"),
        "raw paths never become labels:\n{metrics}"
    );
    app.shutdown.trigger();
}

#[tokio::test]
async fn made_up_methods_share_one_metrics_label() {
    let app = start().await;
    let client = reqwest::Client::new();
    for method in ["BREW", "WHEN", "GET"] {
        client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("http://127.0.0.1:{}/orders/1", app.port),
            )
            .send()
            .await
            .unwrap();
    }
    let metrics = app.metrics().await;
    let series = |method: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with("http_requests_total{") && l.contains(method))
            .count()
    };
    assert_eq!(series(r#"method="_OTHER""#), 1, "{metrics}");
    assert_eq!(series(r#"method="GET""#), 1, "{metrics}");
    assert!(
        !metrics.contains("BREW") && !metrics.contains("WHEN"),
        "a client's method token never becomes a label:\n{metrics}"
    );
    // The counts of both series are kept through the handle cache.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("http_requests_total{")
                && l.contains(r#"method="_OTHER""#)
                && l.ends_with(" 2")),
        "{metrics}"
    );
    app.shutdown.trigger();
}

fn get_order(port: u16) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://127.0.0.1:{port}/orders/7"))
        .header(http::header::HOST, format!("127.0.0.1:{port}"))
        .body(Empty::new())
        .unwrap()
}

/// The server tells HTTP/1.1 from HTTP/2 with prior knowledge (h2c) by a connection's first
/// bytes.
#[tokio::test]
async fn http1_and_h2c_are_both_served_on_the_same_port() {
    let app = start().await;
    let port = app.port;

    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut http1, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    for _ in 0..2 {
        let response = http1.send_request(get_order(port)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_11);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"order 7");
    }

    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let responses =
        futures::future::join_all((0..3).map(|_| h2.send_request(get_order(port)))).await;
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"order 7");
    }
    app.shutdown.trigger();
}

#[tokio::test]
async fn a_connection_that_starts_like_the_h2_preface_but_is_not_gets_an_http1_answer() {
    let app = start().await;
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    // "PRI" is a prefix of the preface: the server waits for more bytes, then sees HTTP/1.
    stream.write_all(b"PRI").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream
        .write_all(b" /orders/7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    app.shutdown.trigger();
}
