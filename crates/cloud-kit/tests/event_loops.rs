//! `EventLoops::PerCore`: one listener and one single-threaded runtime per core on the same port,
//! connections spread over them by the kernel, and a shutdown that still waits for every loop's
//! requests in flight.
// The helpers below are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use cloud_kit::server::{current_event_loop, per_core_event_loops};
use cloud_kit::{EventLoops, Metrics, Readiness, Server, ServerConfig};

/// `/where` answers the event loop that served it ("-" off the event loops); `/slow` takes a
/// while first.
async fn start(event_loops: EventLoops) -> Server {
    let config = ServerConfig {
        port: 0,
        admin_port: 0,
        drain_period: Duration::ZERO,
        ..ServerConfig::default()
    };
    let router = Router::new()
        .route(
            "/where",
            get(|| async { current_event_loop().map_or("-".to_string(), |i| i.to_string()) }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                current_event_loop().map_or("-".to_string(), |i| i.to_string())
            }),
        );
    Server::bind_with(
        "test",
        &config,
        router,
        Readiness::new(),
        Metrics::new(),
        event_loops,
    )
    .await
    .unwrap()
    .without_signals()
}

/// GETs `path` on a new connection each time, so that each request is a new kernel hash.
async fn get_on_new_connection(port: u16, path: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn per_core_spreads_connections_over_one_event_loop_per_core_on_one_port() {
    let server = start(EventLoops::PerCore).await;
    let port = server.port();
    assert_ne!(port, 0, "port 0 must be resolved before run_until_stopped");
    let shutdown = server.shutdown_handle();
    let running = tokio::spawn(server.run_until_stopped());

    let mut served_by = BTreeSet::new();
    for _ in 0..48 {
        let (status, body) = get_on_new_connection(port, "/where").await;
        assert_eq!(status, 200);
        served_by.insert(body.parse::<usize>().unwrap_or_else(|_| {
            panic!("served off the event loops ({body:?}), not by a per-core one")
        }));
    }
    let cores = per_core_event_loops();
    assert!(
        served_by.iter().all(|i| *i < cores),
        "event loops {served_by:?} for {cores} cores"
    );
    if cores >= 2 {
        // 48 connections from distinct source ports: all on one listener would mean the kernel
        // is not spreading them (no SO_REUSEPORT group), with odds of 2^-47 otherwise.
        assert!(
            served_by.len() >= 2,
            "every connection went to event loop {served_by:?} of {cores}"
        );
    }

    shutdown.trigger();
    running.await.unwrap().unwrap();
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/where"))
            .await
            .is_err(),
        "every listener must be closed after the shutdown"
    );
}

#[tokio::test]
async fn per_core_shutdown_waits_for_the_requests_in_flight_on_every_event_loop() {
    let server = start(EventLoops::PerCore).await;
    let port = server.port();
    let shutdown = server.shutdown_handle();
    let running = tokio::spawn(server.run_until_stopped());

    let in_flight: Vec<_> = (0..16)
        .map(|_| tokio::spawn(get_on_new_connection(port, "/slow")))
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    shutdown.trigger();
    let mut served_by = BTreeSet::new();
    for request in in_flight {
        let (status, body) = request.await.unwrap();
        assert_eq!(
            status, 200,
            "a request in flight at shutdown failed: {body}"
        );
        served_by.insert(body);
    }
    if per_core_event_loops() >= 2 {
        assert!(
            served_by.len() >= 2,
            "the slow requests all ran on {served_by:?}: this test needs several loops busy"
        );
    }
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the server did not stop after its requests finished")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shared_serves_on_the_calling_runtime() {
    let server = start(EventLoops::Shared).await;
    let port = server.port();
    let shutdown = server.shutdown_handle();
    let running = tokio::spawn(server.run_until_stopped());
    assert_eq!(
        get_on_new_connection(port, "/where").await,
        (200, "-".to_string())
    );
    shutdown.trigger();
    running.await.unwrap().unwrap();
}
