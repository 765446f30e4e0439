//! During the drain, a keep-alive connection is closed after its next response, so that no
//! client still holds it when the listener closes (regression: the rolling-update drill, where
//! nginx sent a request on a pooled connection just as the draining replica closed it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use cloud_kit::{Metrics, Readiness, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one keep-alive GET on `conn` and returns the raw response (head and 4-byte body).
async fn exchange(conn: &mut TcpStream) -> String {
    conn.write_all(b"GET /fast HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !(response.windows(4).any(|w| w == b"\r\n\r\n") && response.ends_with(b"fast")) {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(n > 0, "connection closed before the response was complete");
        response.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(response).unwrap().to_ascii_lowercase()
}

#[tokio::test]
async fn a_keep_alive_connection_used_during_the_drain_is_closed_after_its_response() {
    let config = ServerConfig {
        port: 0,
        admin_port: 0,
        drain_period: Duration::from_secs(3),
        ..ServerConfig::default()
    };
    let router = Router::new().route("/fast", get(|| async { "fast" }));
    let server = Server::bind("test", &config, router, Readiness::new(), Metrics::new())
        .await
        .unwrap()
        .without_signals();
    let port = server.port();
    let shutdown = server.shutdown_handle();
    let readiness = server.readiness().clone();
    let running = tokio::spawn(server.run_until_stopped());

    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let before = exchange(&mut conn).await;
    assert!(before.starts_with("http/1.1 200"), "{before}");
    assert!(
        !before.contains("connection: close"),
        "kept alive before the drain: {before}"
    );

    shutdown.trigger();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !readiness.is_draining() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never started draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The same connection still works during the drain (the listener serves until it ends)...
    let during = exchange(&mut conn).await;
    assert!(during.starts_with("http/1.1 200"), "{during}");
    assert!(during.contains("connection: close"), "{during}");
    // ...and the server closes it right after, well before the drain ends (3 s).
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf))
        .await
        .expect("the server closes the connection within 1 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the server sent more after Connection: close");

    running.await.unwrap().unwrap();
}

/// A connection accepted during the drain whose request arrives only as the listener closes
/// (a load balancer that keeps sending until then) is served, not cut with the request unread.
#[tokio::test]
async fn a_connection_accepted_during_the_drain_is_served_after_the_listener_closes() {
    let config = ServerConfig {
        port: 0,
        admin_port: 0,
        drain_period: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let router = Router::new().route("/fast", get(|| async { "fast" }));
    let server = Server::bind("test", &config, router, Readiness::new(), Metrics::new())
        .await
        .unwrap()
        .without_signals();
    let port = server.port();
    let shutdown = server.shutdown_handle();
    let readiness = server.readiness().clone();
    let running = tokio::spawn(server.run_until_stopped());

    shutdown.trigger();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !readiness.is_draining() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never started draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Give the accept loop time to take it, then wait for the drain to end: the listener
    // refuses new connections.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = exchange(&mut conn).await;
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(response.contains("connection: close"), "{response}");

    running.await.unwrap().unwrap();
}
