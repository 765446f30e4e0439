//! The Redis-backed limiter with a private Redis started from `CLOUD_TEST_REDIS_SERVER` on a free
//! port: two gateway instances share one quota, and killing Redis mid-test fails open.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct PrivateRedis {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    /// Starts redis-server on a free port. The port is found by binding port 0 and letting it
    /// go, so another process (tests run in parallel) may take it first: then our redis exits
    /// with "address in use" while the connect check below would reach the other listener.
    /// So it only counts as started once the Redis answering there is *our* child (its
    /// `process_id`); if the child exits instead, it tries another port.
    fn start() -> Option<Self> {
        let bin = cloud_test_support::require("REDIS_SERVER")?;
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let dir = tempfile::tempdir().unwrap();
            let mut child = Command::new(&bin)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                ])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken: try another
                }
                if redis_pid(port) == Some(child.id()) {
                    return Some(Self {
                        child,
                        url: format!("redis://127.0.0.1:{port}"),
                        _dir: dir,
                    });
                }
                assert!(std::time::Instant::now() < deadline, "redis did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `process_id` of the Redis answering on `port` (from `INFO server`), if one answers.
fn redis_pid(port: u16) -> Option<u32> {
    use std::io::{BufRead, Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reader = std::io::BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    let len: usize = header.strip_prefix('$')?.trim().parse().ok()?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

fn routes(upstream: std::net::SocketAddr, redis: &str, requests: u64, timeout: &str) -> String {
    format!(
        "redis: {{url: \"{redis}\", timeout: {timeout}, retry_after: 200ms}}\nrate_limits: {{shared: {{requests: {requests}, period: 1h}}}}\nroutes:\n  api: {{path_prefix: /api/, rate_limit: shared, upstreams: [\"http://{upstream}\"]}}\n"
    )
}

// Several worker threads, so the client's burst and both gateways do not queue behind each
// other on one thread: a decision's Redis round trip is then never delayed by the test itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_quota_within_five_percent() {
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, _) = upstream().await;
    let limit = 200u64;
    // What is checked is that the quota is shared, not Redis' latency: a generous timeout keeps
    // a loaded machine (slow scheduling, not a Redis failure) from failing decisions over to
    // the in-process limiter. `killing_redis_fails_open_without_5xx` covers the fallback.
    let redis_timeout = "10s";
    let a = start(config(
        &identity,
        &routes(upstream, &redis.url, limit, redis_timeout),
    ))
    .await;
    let b = start(config(
        &identity,
        &routes(upstream, &redis.url, limit, redis_timeout),
    ))
    .await;
    a.ready().await;
    b.ready().await;
    let token = key.sign(&claims(&identity.issuer, "tenant-burst", "u", &[]));
    let client = client();
    // A burst of 3x the limit, split across both replicas, 32 in flight at a time.
    let requests = (0..limit * 3).map(|i| {
        let url = if i % 2 == 0 { &a.url } else { &b.url };
        client
            .get(format!("{url}/api/x"))
            .bearer_auth(&token)
            .send()
    });
    let statuses: Vec<u16> = futures::StreamExt::collect::<Vec<_>>(
        futures::StreamExt::buffer_unordered(futures::stream::iter(requests), 32),
    )
    .await
    .into_iter()
    .map(|r| r.unwrap().status().as_u16())
    .collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count() as f64;
    let rejected = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        admitted as usize + rejected,
        statuses.len(),
        "only 200 and 429: {statuses:?}"
    );
    let deviation = (admitted - limit as f64).abs() / limit as f64;
    assert!(
        deviation <= 0.05,
        "admitted {admitted} of a shared limit of {limit}"
    );
    for gw in [&a, &b] {
        let metrics = gw.metrics().await;
        assert!(
            metrics.contains("gateway_ratelimit_redis_failures_total 0"),
            "admitted {admitted}; every decision came from Redis:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn killing_redis_fails_open_without_5xx() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, _) = upstream().await;
    let gw = start(config(
        &identity,
        &routes(upstream, &redis.url, 100_000, "200ms"),
    ))
    .await;
    gw.ready().await;
    let token = key.sign(&claims(&identity.issuer, "tenant-x", "u", &[]));
    let client = client();
    let load = {
        let client = client.clone();
        let url = gw.url.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..400 {
                let r = client
                    .get(format!("{url}/api/x"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    let statuses = load.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "no 5xx (nor 429) while Redis is gone: {statuses:?}"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("gateway_ratelimit_redis_fallback 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("gateway_ratelimit_redis_failures_total 0"),
        "{metrics}"
    );
    let ready = reqwest::get(format!("{}/readyz", gw.admin)).await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "a Redis outage after start must not take the replica out of its Service: it fails open"
    );
}

#[tokio::test]
async fn a_gateway_that_never_reached_redis_is_not_ready() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, _) = upstream().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("redis://{}", closed.local_addr().unwrap());
    drop(closed);
    let gw = start(config(&identity, &routes(upstream, &dead, 100, "200ms"))).await;
    // Long enough for the key set to load, so only Redis can hold readiness back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ready = reqwest::get(format!("{}/readyz", gw.admin)).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("not reached since start"), "{body}");
}
