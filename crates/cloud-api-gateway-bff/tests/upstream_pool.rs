//! The upstream connection pool against real upstream servers on port 0: which connections it
//! reuses, and which it must not.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use cloud_api_gateway_bff::upstream::{PoolSettings, PooledBody, UpstreamError, UpstreamPool};
use http::uri::Authority;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP/1.1 upstream on port 0 that counts the connections it accepted. `/ok` answers
/// "ok\n", `/empty` 204, and `/big` a 4 MiB body.
async fn counting_upstream() -> (Authority, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let response = match request.uri().path() {
                        "/empty" => Response::builder()
                            .status(StatusCode::NO_CONTENT)
                            .body(Full::new(Bytes::new())),
                        "/big" => {
                            Response::builder().body(Full::new(Bytes::from(vec![b'x'; 4 << 20])))
                        }
                        _ => Response::builder().body(Full::new(Bytes::from_static(b"ok\n"))),
                    };
                    Ok::<_, Infallible>(response.unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (authority, accepted)
}

/// Sends `GET path` through the pool, with the `Host` the gateway would set.
async fn get(
    pool: &UpstreamPool<Body>,
    authority: &Authority,
    path: &str,
) -> Result<Response<PooledBody<Body>>, UpstreamError> {
    let request = Request::builder()
        .uri(path)
        .header(header::HOST, authority.as_str())
        .body(Body::empty())
        .unwrap();
    pool.send(authority, request).await
}

fn pool() -> UpstreamPool<Body> {
    UpstreamPool::new(PoolSettings::new(Duration::from_secs(2)))
}

async fn text(pool: &UpstreamPool<Body>, authority: &Authority, path: &str) -> String {
    let response = get(pool, authority, path).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn sequential_requests_share_one_keep_alive_connection() {
    let (authority, accepted) = counting_upstream().await;
    let pool = pool();
    for _ in 0..5 {
        assert_eq!(text(&pool, &authority, "/ok").await, "ok\n");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_response_without_a_body_frees_its_connection_even_if_nobody_reads_it() {
    let (authority, accepted) = counting_upstream().await;
    let pool = pool();
    for _ in 0..3 {
        let response = get(&pool, &authority, "/empty").await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        drop(response);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_requests_open_connections_that_are_then_reused() {
    let (authority, accepted) = counting_upstream().await;
    let pool = pool();
    let bodies = futures::future::join_all((0..4).map(|_| text(&pool, &authority, "/ok"))).await;
    assert!(bodies.iter().all(|body| body == "ok\n"));
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&opened),
        "{opened} connections for 4 requests"
    );
    for _ in 0..8 {
        text(&pool, &authority, "/ok").await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        opened,
        "idle connections were not reused"
    );
}

#[tokio::test]
async fn a_response_dropped_before_its_end_does_not_return_its_connection() {
    let (authority, accepted) = counting_upstream().await;
    let pool = pool();
    let response = get(&pool, &authority, "/big").await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    // The connection still holds the rest of the 4 MiB: reusing it would read that as the
    // next response.
    assert_eq!(text(&pool, &authority, "/ok").await, "ok\n");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_large_body_read_to_the_end_returns_its_connection() {
    let (authority, accepted) = counting_upstream().await;
    let pool = pool();
    assert_eq!(text(&pool, &authority, "/big").await.len(), 4 << 20);
    assert_eq!(text(&pool, &authority, "/ok").await, "ok\n");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connections_idle_past_the_idle_timeout_are_not_reused() {
    let (authority, accepted) = counting_upstream().await;
    let pool = UpstreamPool::new(PoolSettings {
        idle_timeout: Duration::from_millis(100),
        ..PoolSettings::new(Duration::from_secs(2))
    });
    text(&pool, &authority, "/ok").await;
    text(&pool, &authority, "/ok").await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    text(&pool, &authority, "/ok").await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn with_max_idle_zero_nothing_is_kept() {
    let (authority, accepted) = counting_upstream().await;
    let pool = UpstreamPool::new(PoolSettings {
        max_idle: 0,
        ..PoolSettings::new(Duration::from_secs(2))
    });
    for _ in 0..3 {
        text(&pool, &authority, "/ok").await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
    // An upstream that answers one request per connection and then closes it without saying
    // so (no `Connection: close`), as one does when its keep-alive timeout ends.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                    .await
                    .unwrap();
            });
        }
    });
    let pool = pool();
    for _ in 0..3 {
        assert_eq!(text(&pool, &authority, "/ok").await, "ok\n");
        // Time for the idle connection to see the close.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_upstream_that_is_down_is_a_connect_error_naming_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    drop(listener);
    let error = get(&pool(), &authority, "/ok").await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert!(error.to_string().contains(authority.as_str()), "{error}");
}
