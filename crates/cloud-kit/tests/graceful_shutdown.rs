//! SIGTERM on a real server: readiness fails first, the listener keeps serving through the drain,
//! and a slow request already in flight completes. Its own test binary, because it signals the
//! whole process.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use cloud_kit::{Metrics, Readiness, Server, ServerConfig};

#[tokio::test]
async fn sigterm_drains_and_completes_in_flight_requests() {
    // Take over SIGTERM before anything can deliver it, so the default action cannot kill the test.
    let mut guard =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    let config = ServerConfig {
        port: 0,
        admin_port: 0,
        drain_period: Duration::from_millis(700),
        ..ServerConfig::default()
    };
    let router = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "finished"
            }),
        )
        .route("/fast", get(|| async { "fast" }));
    let server = Server::bind("test", &config, router, Readiness::new(), Metrics::new())
        .await
        .unwrap();
    let (port, admin) = (server.port(), server.admin_port());
    let running = tokio::spawn(server.run_until_stopped());
    let client = reqwest::Client::new();
    cloud_test_support::wait_until_ok(
        &format!("http://127.0.0.1:{admin}/readyz"),
        Duration::from_secs(5),
    )
    .await;

    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{port}/slow"))
                .send()
                .await?
                .text()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
    let signalled = Instant::now();

    loop {
        let status = client
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 503 {
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(500),
            "readiness still {status} 500 ms after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during_drain = client
        .get(format!("http://127.0.0.1:{port}/fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        during_drain.status(),
        200,
        "new requests are still served during the drain"
    );

    assert_eq!(
        slow.await.unwrap().unwrap(),
        "finished",
        "the in-flight request completes"
    );
    running.await.unwrap().unwrap();
    assert!(
        signalled.elapsed() >= Duration::from_millis(700),
        "the drain period was honoured"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listener is closed"
    );
    drop(guard.recv());
}
