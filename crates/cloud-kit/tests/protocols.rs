//! The server tells HTTP/1.1 from HTTP/2 with prior knowledge (h2c) by a connection's first bytes
//! and serves each with hyper's connection for it, upgrades included for HTTP/1.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use cloud_kit::{Metrics, Readiness, Server, ServerConfig, Shutdown};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start() -> (u16, Shutdown) {
    let config = ServerConfig {
        port: 0,
        admin_port: 0,
        drain_period: Duration::ZERO,
        ..ServerConfig::default()
    };
    let router = Router::new().route("/hello", get(|| async { "hello" }));
    let server = Server::bind("test", &config, router, Readiness::new(), Metrics::new())
        .await
        .unwrap()
        .without_signals();
    let port = server.port();
    let shutdown = server.shutdown_handle();
    tokio::spawn(server.run_until_stopped());
    (port, shutdown)
}

fn get_hello(port: u16) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://127.0.0.1:{port}/hello"))
        .header(http::header::HOST, format!("127.0.0.1:{port}"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn http1_and_h2c_are_both_served_on_the_same_port() {
    let (port, shutdown) = start().await;

    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut http1, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    for _ in 0..2 {
        let response = http1.send_request(get_hello(port)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_11);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }

    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let responses =
        futures::future::join_all((0..3).map(|_| h2.send_request(get_hello(port)))).await;
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }
    shutdown.trigger();
}

#[tokio::test]
async fn a_connection_that_starts_like_the_h2_preface_but_is_not_gets_an_http1_answer() {
    let (port, shutdown) = start().await;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // "PRI" is a prefix of the preface: the server waits for more bytes, then sees HTTP/1.
    stream.write_all(b"PRI").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream
        .write_all(b" /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    shutdown.trigger();
}
