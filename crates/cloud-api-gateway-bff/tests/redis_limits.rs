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
    fn start() -> Option<Self> {
        let bin = cloud_test_support::require("REDIS_SERVER")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
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
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            _dir: dir,
        })
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

fn routes(upstream: std::net::SocketAddr, redis: &str, requests: u64, timeout: &str) -> String {
    format!(
        "redis: {{url: \"{redis}\", timeout: {timeout}, retry_after: 200ms}}\nrate_limits: {{shared: {{requests: {requests}, period: 1h}}}}\nroutes:\n  api: {{path_prefix: /api/, rate_limit: shared, upstreams: [\"http://{upstream}\"]}}\n"
    )
}

#[tokio::test]
async fn two_gateways_share_one_quota_within_five_percent() {
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, _) = upstream().await;
    let limit = 200u64;
    let a = start(config(
        &identity,
        &routes(upstream, &redis.url, limit, "2s"),
    ))
    .await;
    let b = start(config(
        &identity,
        &routes(upstream, &redis.url, limit, "2s"),
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
        503,
        "readiness reports Redis as unreachable"
    );
}
