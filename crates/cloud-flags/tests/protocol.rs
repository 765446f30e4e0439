//! The client's side of Unleash's client API, against a scripted HTTP server on loopback: the
//! standard headers on every request (features, register, metrics), `If-None-Match` with the
//! server's ETag, exponential back-off while the server fails (the poll loop itself, not only
//! `backoff_delay`), evaluation on the last good state meanwhile, and one audit event on the
//! dedicated tracing target per changed flag, carrying the old and new hash, the fetch time and
//! the ETag.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloud_flags::{FlagClient, FlagContext, UnleashConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// What the features endpoint answers, in order; the last entry repeats.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Features(u32, &'static str),
    NotModified,
    Fail,
}

#[derive(Clone)]
struct Server {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<Vec<Answer>>>,
    fetches: Arc<AtomicUsize>,
}

fn features(rollout: u32) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"version": 2, "features": [{"name": "p", "enabled": true,
        "strategies": [{"name": "flexibleRollout", "parameters":
            {"rollout": rollout.to_string(), "stickiness": "tenantId", "groupId": "p"}}]}]}),
    )
    .unwrap()
}

impl Server {
    async fn start(script: Vec<Answer>) -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api", listener.local_addr().unwrap());
        let server = Self {
            seen: Arc::default(),
            script: Arc::new(Mutex::new(script)),
            fetches: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move { s.serve(conn).await });
            }
        });
        (server, url)
    }

    async fn serve(&self, conn: tokio::net::TcpStream) {
        let (read, mut write) = conn.into_split();
        let mut reader = BufReader::new(read);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let mut headers = BTreeMap::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
            let (status, etag, payload) = if path.ends_with("/client/features") {
                let n = self.fetches.fetch_add(1, Ordering::SeqCst);
                let script = self.script.lock().unwrap();
                match script[n.min(script.len() - 1)] {
                    Answer::Features(rollout, etag) => ("200 OK", Some(etag), features(rollout)),
                    Answer::NotModified => ("304 Not Modified", None, vec![]),
                    Answer::Fail => ("503 Service Unavailable", None, vec![]),
                }
            } else {
                ("202 Accepted", None, vec![])
            };
            self.seen.lock().unwrap().push(Seen {
                at: Instant::now(),
                method,
                path,
                headers,
                body,
            });
            let mut resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                payload.len()
            );
            if let Some(etag) = etag {
                resp.push_str(&format!("etag: {etag}\r\n"));
            }
            resp.push_str("\r\n");
            let mut bytes = resp.into_bytes();
            bytes.extend_from_slice(&payload);
            if write.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn config(url: &str, refresh: Duration, metrics: Duration) -> UnleashConfig {
    let mut cfg = UnleashConfig::new(
        url.parse().unwrap(),
        "*:development.secret-token".to_string().into(),
        "protocol-test",
    );
    cfg.refresh_interval = refresh;
    cfg.metrics_interval = metrics;
    cfg.request_timeout = Duration::from_secs(2);
    cfg.max_backoff = Duration::from_secs(60);
    cfg.kill_switch_env = None;
    cfg
}

async fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const STANDARD_HEADERS: [&str; 6] = [
    "authorization",
    "unleash-appname",
    "unleash-instanceid",
    "unleash-connection-id",
    "unleash-sdk",
    "unleash-interval",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_carries_the_standard_headers_and_polls_are_conditional() {
    let (server, url) = Server::start(vec![
        Answer::Features(100, "\"e1\""),
        Answer::NotModified,
        Answer::Features(100, "\"e2\""),
        Answer::NotModified,
    ])
    .await;
    let client = FlagClient::connect(config(
        &url,
        Duration::from_millis(100),
        Duration::from_millis(200),
    ))
    .await
    .unwrap();
    let ctx = FlagContext::new().with_tenant_id("t-1");
    assert!(client.is_enabled("p", &ctx));
    until(
        "register, metrics and four fetches",
        Duration::from_secs(10),
        || {
            let seen = server.seen();
            seen.iter().any(|s| s.path.ends_with("/client/register"))
                && seen.iter().any(|s| s.path.ends_with("/client/metrics"))
                && server.fetches.load(Ordering::SeqCst) >= 4
        },
    )
    .await;
    client.shutdown().await;

    let seen = server.seen();
    let mut connection_ids = std::collections::BTreeSet::new();
    for s in &seen {
        for h in STANDARD_HEADERS {
            assert!(
                s.headers.get(h).is_some_and(|v| !v.is_empty()),
                "{} {} lacks {h}: {:?}",
                s.method,
                s.path,
                s.headers
            );
        }
        assert_eq!(s.headers["authorization"], "*:development.secret-token");
        assert_eq!(s.headers["unleash-appname"], "protocol-test");
        connection_ids.insert(s.headers["unleash-connection-id"].clone());
        let interval = &s.headers["unleash-interval"];
        if s.path.ends_with("/client/features") {
            assert_eq!(s.method, "GET");
            assert_eq!(interval, "100", "features: the refresh interval in ms");
        } else {
            assert_eq!(s.method, "POST");
            assert_eq!(interval, "200", "{}: the metrics interval in ms", s.path);
        }
    }
    assert_eq!(connection_ids.len(), 1, "one connection id per client");

    // Conditional polling: the first fetch has no ETag; every later one sends the ETag of the
    // last state the server gave (e1 until e2 arrived).
    let fetches: Vec<Option<&str>> = seen
        .iter()
        .filter(|s| s.path.ends_with("/client/features"))
        .map(|s| s.headers.get("if-none-match").map(String::as_str))
        .collect();
    assert_eq!(fetches[0], None);
    assert_eq!(fetches[1], Some("\"e1\""));
    assert_eq!(fetches[2], Some("\"e1\""), "304 keeps the old ETag");
    assert!(
        fetches[3..].iter().all(|e| *e == Some("\"e2\"")),
        "{fetches:?}"
    );

    // The registration and the metrics bucket say who is talking, and the bucket counts the
    // evaluation above.
    let register: Value = serde_json::from_slice(
        &seen
            .iter()
            .find(|s| s.path.ends_with("/client/register"))
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(register["appName"], "protocol-test");
    let metrics: Vec<Value> = seen
        .iter()
        .filter(|s| s.path.ends_with("/client/metrics"))
        .map(|s| serde_json::from_slice(&s.body).unwrap())
        .collect();
    let yes: u64 = metrics
        .iter()
        .filter_map(|m| m.pointer("/bucket/toggles/p/yes").and_then(Value::as_u64))
        .sum();
    assert_eq!(yes, 1, "{metrics:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_back_off_exponentially_and_evaluation_keeps_the_last_good_state() {
    let interval = Duration::from_millis(100);
    let (server, url) = Server::start(vec![Answer::Features(100, "\"e1\""), Answer::Fail]).await;
    let mut cfg = config(&url, interval, Duration::from_secs(3600));
    cfg.send_metrics = false;
    let client = FlagClient::connect(cfg).await.unwrap();
    let ctx = FlagContext::new().with_tenant_id("t-1");
    assert!(client.is_enabled("p", &ctx));
    until("five failed fetches", Duration::from_secs(20), || {
        server.fetches.load(Ordering::SeqCst) >= 6
    })
    .await;
    assert!(
        client.is_enabled("p", &ctx),
        "the last good state still answers"
    );
    assert!(client.is_ready());
    assert!(client.status().consecutive_failures >= 4);
    client.shutdown().await;

    // Fetch k (k >= 1) waits interval * 2^(failures so far) after fetch k-1. Sleeps are never
    // shorter than asked, so these lower bounds hold on a loaded machine; without back-off the
    // gaps would all be about one interval.
    let at: Vec<Instant> = server
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("/client/features"))
        .map(|s| s.at)
        .collect();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    for (k, gap) in gaps.iter().enumerate().take(5) {
        let want = interval * 2u32.pow(k as u32);
        assert!(
            *gap >= want.mul_f64(0.95),
            "gap {k} is {gap:?}, expected at least {want:?}: {gaps:?}"
        );
    }
}

// ------------------------------------------------------------------ audit tracing events

type Fields = BTreeMap<String, String>;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<Fields>>>);

struct Visitor<'a>(&'a mut Fields);
impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == cloud_flags::AUDIT_TARGET {
            let mut fields = Fields::new();
            event.record(&mut Visitor(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }
}

/// Run alone in a child process: with other tests' threads hitting the same callsites in one
/// process (plain `cargo test`), tracing's cached callsite interest can hide the events from a
/// thread-scoped subscriber.
#[test]
fn each_changed_flag_is_one_event_on_the_audit_target_with_hashes_fetch_time_and_etag() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "audit_events_child", "--nocapture"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "run by each_changed_flag_is_one_event_on_the_audit_target_with_hashes_fetch_time_and_etag in a child process"]
async fn audit_events_child() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(captured.clone()));
    // e1: p at 10%; e2: p at 20%; then 304s.
    let (server, url) = Server::start(vec![
        Answer::Features(10, "\"e1\""),
        Answer::Features(20, "\"e2\""),
        Answer::NotModified,
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&url, Duration::from_millis(100), Duration::from_secs(3600));
    cfg.send_metrics = false;
    cfg.audit_log_path = Some(dir.path().join("audit.log"));
    let client = FlagClient::connect(cfg).await.unwrap();
    until(
        "the second state and two 304s",
        Duration::from_secs(10),
        || server.fetches.load(Ordering::SeqCst) >= 4,
    )
    .await;
    client.shutdown().await;

    let events = captured.0.lock().unwrap().clone();
    let changes: Vec<&Fields> = events
        .iter()
        .filter(|e| e.contains_key("changes"))
        .collect();
    assert_eq!(changes.len(), 2, "added, then strategies: {events:#?}");
    let (added, changed) = (changes[0], changes[1]);
    assert_eq!(added["flag"], "p");
    assert_eq!(added["changes"], "added");
    assert_eq!(added["etag"], "\"e1\"");
    assert_eq!(added["old_hash"], "");
    assert_eq!(changed["changes"], "strategies");
    assert_eq!(changed["etag"], "\"e2\"");
    assert_eq!(changed["old_hash"], added["new_hash"]);
    assert_ne!(changed["new_hash"], changed["old_hash"]);
    assert_eq!(changed["new_hash"].len(), 64, "a SHA-256");
    assert!(
        changed["fetched_at"].starts_with("20"),
        "{}",
        changed["fetched_at"]
    );
    // The same records are in the hash-chained log.
    let records = cloud_flags::audit::read_records(&dir.path().join("audit.log")).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[1].new_hash.as_deref(),
        Some(changed["new_hash"].as_str())
    );
}
