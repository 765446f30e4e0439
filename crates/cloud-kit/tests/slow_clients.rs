//! Clients that send a request head slowly, or never, or too big: the server bounds each of them
//! (header-read timeout, head size) and keeps serving everyone else. Found by the hostile-input
//! drill (crates/cloud-drills/src/hostile.rs): before, `axum::serve` ran hyper without a timer,
//! so a slowloris connection stayed open forever, and a 64 KiB header was accepted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use cloud_kit::{Metrics, Readiness, Server, ServerConfig, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_millis(500);

async fn start(config: ServerConfig) -> (u16, Shutdown) {
    let config = ServerConfig {
        port: 0,
        admin_port: 0,
        drain_period: Duration::ZERO,
        ..config
    };
    let router = Router::new().route("/fast", get(|| async { "fast" }));
    let server = Server::bind("test", &config, router, Readiness::new(), Metrics::new())
        .await
        .unwrap()
        .without_signals();
    let port = server.port();
    let shutdown = server.shutdown_handle();
    tokio::spawn(server.run_until_stopped());
    (port, shutdown)
}

/// Sends `head` one byte every `every` (never finishing it when it runs out: then `a`s), and
/// returns how long the server kept the connection open; panics after `give_up`.
async fn dribble(port: u16, head: &[u8], every: Option<Duration>, give_up: Duration) -> Duration {
    let started = Instant::now();
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let mut sent = 0;
    let mut buf = [0u8; 256];
    let mut tick = tokio::time::interval(every.unwrap_or(Duration::from_secs(3600)));
    loop {
        tokio::select! {
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            },
            _ = tick.tick(), if every.is_some() => {
                let byte = head.get(sent).copied().unwrap_or(b'a');
                sent += 1;
                if wr.write_all(&[byte]).await.is_err() {
                    return started.elapsed();
                }
            }
            () = tokio::time::sleep_until((started + give_up).into()) => {
                panic!("the server still holds the connection after {give_up:?} ({sent} bytes sent)")
            }
        }
    }
}

#[tokio::test]
async fn a_slow_client_is_disconnected_after_the_header_read_timeout() {
    let (port, shutdown) = start(ServerConfig {
        header_read_timeout: TIMEOUT,
        ..ServerConfig::default()
    })
    .await;
    let slow = tokio::spawn(dribble(
        port,
        b"GET /fast HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        Some(Duration::from_millis(50)),
        Duration::from_secs(5),
    ));
    // Meanwhile everyone else is served at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let started = Instant::now();
        let r = client
            .get(format!("http://127.0.0.1:{port}/fast"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(started.elapsed() < Duration::from_millis(300));
    }
    let held = slow.await.unwrap();
    assert!(
        held >= TIMEOUT - Duration::from_millis(50) && held < TIMEOUT * 4,
        "the slow client was disconnected after {held:?}, want about {TIMEOUT:?}"
    );
    shutdown.trigger();
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_too() {
    let (port, shutdown) = start(ServerConfig {
        header_read_timeout: TIMEOUT,
        ..ServerConfig::default()
    })
    .await;
    let held = dribble(port, b"", None, Duration::from_secs(5)).await;
    assert!(
        held >= TIMEOUT - Duration::from_millis(50) && held < TIMEOUT * 4,
        "held {held:?}"
    );
    // A client dribbling the HTTP/2 preface is bounded as well (protocol detection waits for
    // it before hyper's own timer runs).
    let held = dribble(
        port,
        b"PRI * HTTP/2.0\r\n",
        Some(Duration::from_millis(50)),
        Duration::from_secs(5),
    )
    .await;
    assert!(held < TIMEOUT * 4, "held {held:?}");
    shutdown.trigger();
}

async fn status_of(port: u16, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // The server may answer and close before reading everything: ignore a failed write.
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

fn head_with(headers: &str) -> Vec<u8> {
    format!("GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n").into_bytes()
}

#[tokio::test]
async fn oversized_heads_get_431_and_the_server_keeps_serving() {
    let defaults = ServerConfig::default();
    assert_eq!(defaults.header_read_timeout, Duration::from_secs(75));
    assert_eq!(defaults.max_header_bytes, 32 * 1024);
    let (port, shutdown) = start(defaults).await;
    let big = format!("X-Big: {}\r\n", "a".repeat(64 * 1024));
    assert_eq!(status_of(port, &head_with(&big)).await, 431);
    let many: String = (0..200).map(|i| format!("X-Many-{i}: v\r\n")).collect();
    assert_eq!(status_of(port, &head_with(&many)).await, 431);
    let fine = format!("X-Fine: {}\r\n", "a".repeat(8 * 1024));
    assert_eq!(status_of(port, &head_with(&fine)).await, 200);
    shutdown.trigger();
}

/// Regression (hostile-input drill, 2026-11-26 10:31): a handler that answers 413 before reading
/// a large body the client is still sending. Without a lingering close the kernel resets the
/// connection over the unread data and the client can lose the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_reaches_a_client_still_sending_its_body() {
    let config = ServerConfig {
        port: 0,
        admin_port: 0,
        drain_period: Duration::ZERO,
        ..ServerConfig::default()
    };
    let router = Router::new().route(
        "/upload",
        axum::routing::post(|| async { axum::http::StatusCode::PAYLOAD_TOO_LARGE }),
    );
    let server = Server::bind("test", &config, router, Readiness::new(), Metrics::new())
        .await
        .unwrap()
        .without_signals();
    let port = server.port();
    let _shutdown = server.shutdown_handle();
    tokio::spawn(server.run_until_stopped());
    let client = reqwest::Client::new();
    let body = vec![b'a'; 4 * 1024 * 1024];
    for attempt in 0..10 {
        let answer = client
            .post(format!("http://127.0.0.1:{port}/upload"))
            .body(body.clone())
            .send()
            .await;
        match answer {
            Ok(r) => assert_eq!(r.status(), 413, "attempt {attempt}"),
            Err(err) => panic!("attempt {attempt}: no answer: {err:#}"),
        }
    }
}
