//! Steady load: one request every `1/rate` seconds, each in its own task, so a slow or hanging
//! server cannot slow the sender down (an open-loop generator: what a real client population does).
//! Every request is recorded with when it was sent, how long it took and how it ended.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived (its status may still be an error).
    Status(u16),
    /// No response: connection refused or reset, or no complete response within the timeout.
    Lost,
}

/// One request as the client saw it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its index in the load (the `n` its request factory got).
    pub n: u64,
    /// When it was sent, from the drill's origin.
    pub sent_at: Duration,
    pub latency: Duration,
    pub outcome: Outcome,
    /// The start of the body of a non-2xx response, to show what a failure said.
    pub body: Option<String>,
}

/// Counts by outcome class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub sent: u64,
    pub ok: u64,
    pub status_4xx: u64,
    pub status_429: u64,
    pub status_5xx: u64,
    /// Other non-2xx statuses (1xx, 3xx): counted so that the classes add up to `sent`.
    pub status_other: u64,
    pub lost: u64,
    pub max_latency: Duration,
}

impl Summary {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut s = Self::default();
        for r in records {
            s.sent += 1;
            s.max_latency = s.max_latency.max(r.latency);
            match r.outcome {
                Outcome::Lost => s.lost += 1,
                Outcome::Status(code) => match code {
                    200..=299 => s.ok += 1,
                    429 => {
                        s.status_4xx += 1;
                        s.status_429 += 1;
                    }
                    400..=499 => s.status_4xx += 1,
                    500..=599 => s.status_5xx += 1,
                    _ => s.status_other += 1,
                },
            }
        }
        s
    }

    /// Requests that got a response other than 2xx.
    pub fn failed(&self) -> u64 {
        self.status_4xx + self.status_5xx + self.status_other
    }
}

/// Builds the `n`th request of a load.
pub type RequestFactory =
    Arc<dyn Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync>;

/// Sees each record as soon as its request is complete (for drills that react to the results).
pub type Observer = Arc<dyn Fn(&Record) + Send + Sync>;

/// A running load; [`Load::stop`] ends it and returns every record.
#[derive(Debug)]
pub struct Load {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Record>>,
}

/// Limits of one load: it stops at whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub rate_per_sec: u32,
    pub max_requests: u64,
    pub max_duration: Duration,
    /// A request with no complete response after this long is `Lost` (a hang, from the client's
    /// point of view).
    pub request_timeout: Duration,
}

impl Load {
    /// Starts sending; `origin` is the drill's clock, shared by every load and event of a drill.
    pub fn start(origin: Instant, bounds: Bounds, factory: RequestFactory) -> Self {
        Self::start_observed(origin, bounds, factory, Arc::new(|_| {}))
    }

    /// Like [`Load::start`], calling `observe` with each record as soon as it is complete.
    pub fn start_observed(
        origin: Instant,
        bounds: Bounds,
        factory: RequestFactory,
        observe: Observer,
    ) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        // One client, pooled keep-alive connections: what a real service client does.
        let client = reqwest::Client::builder()
            .timeout(bounds.request_timeout)
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        let task = tokio::spawn(async move {
            let records = Arc::new(Mutex::new(Vec::new()));
            let mut inflight = JoinSet::new();
            let period = Duration::from_secs_f64(1.0 / f64::from(bounds.rate_per_sec.max(1)));
            let mut ticker = tokio::time::interval(period);
            // After a stall, send late ticks at once rather than dropping them: the count stays
            // an honest `rate * time`.
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let deadline = Instant::now() + bounds.max_duration;
            let mut n = 0u64;
            while n < bounds.max_requests && Instant::now() < deadline {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.changed() => break,
                }
                let request = factory(&client, n);
                let index = n;
                n += 1;
                let records = records.clone();
                let observe = observe.clone();
                inflight.spawn(async move {
                    let record = send(origin, index, request).await;
                    observe(&record);
                    if let Ok(mut all) = records.lock() {
                        all.push(record);
                    }
                });
                // Reap finished tasks so the set stays small.
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
            let mut all = records
                .lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default();
            all.sort_by_key(|r| r.sent_at);
            all
        });
        Self { stop, task }
    }

    /// Stops sending, waits for the requests in flight (at most their timeout) and returns every
    /// record, ordered by send time.
    pub async fn stop(self) -> anyhow::Result<Vec<Record>> {
        let _ = self.stop.send(true);
        Ok(self.task.await?)
    }
}

async fn send(origin: Instant, n: u64, request: reqwest::RequestBuilder) -> Record {
    let started = Instant::now();
    let sent_at = started.duration_since(origin);
    let (outcome, body) = match request.send().await {
        Err(_) => (Outcome::Lost, None),
        Ok(response) => {
            let status = response.status().as_u16();
            // The whole body must arrive: a response cut off mid-body is a lost request.
            match response.bytes().await {
                Err(_) => (Outcome::Lost, None),
                Ok(_) if (200..300).contains(&status) => (Outcome::Status(status), None),
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
                    (Outcome::Status(status), Some(text))
                }
            }
        }
    };
    Record {
        n,
        sent_at,
        latency: started.elapsed(),
        outcome,
        body,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn rec(ms: u64, outcome: Outcome) -> Record {
        Record {
            n: ms,
            sent_at: Duration::from_millis(ms),
            latency: Duration::from_millis(ms / 10),
            outcome,
            body: None,
        }
    }

    #[test]
    fn summary_counts_every_class_once() {
        let records = [
            rec(0, Outcome::Status(200)),
            rec(10, Outcome::Status(204)),
            rec(20, Outcome::Status(429)),
            rec(30, Outcome::Status(401)),
            rec(40, Outcome::Status(503)),
            rec(50, Outcome::Status(302)),
            rec(60, Outcome::Lost),
        ];
        let s = Summary::of(&records);
        assert_eq!(s.sent, 7);
        assert_eq!(s.ok, 2);
        assert_eq!(s.status_4xx, 2);
        assert_eq!(s.status_429, 1);
        assert_eq!(s.status_5xx, 1);
        assert_eq!(s.status_other, 1);
        assert_eq!(s.lost, 1);
        assert_eq!(s.failed(), 4);
        assert_eq!(s.ok + s.failed() + s.lost, s.sent);
        assert_eq!(s.max_latency, Duration::from_millis(6));
    }

    /// The generator against a real local server: the count follows the bounds, a refused
    /// connection is `Lost`, and statuses are recorded as sent.
    #[tokio::test]
    async fn load_is_bounded_and_records_statuses_and_losses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/ok", axum::routing::get(|| async { "ok" }))
            .route(
                "/fail",
                axum::routing::get(|| async {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down")
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        // A port nobody listens on: bind, note, drop.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();

        let bounds = Bounds {
            rate_per_sec: 500,
            max_requests: 30,
            max_duration: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
        };
        let load = Load::start(
            Instant::now(),
            bounds,
            Arc::new(move |client, n| {
                let url = match n % 3 {
                    0 => format!("http://{addr}/ok"),
                    1 => format!("http://{addr}/fail"),
                    _ => format!("http://{closed}/ok"),
                };
                client.get(url)
            }),
        );
        let records = load.stop_after_done().await;
        let s = Summary::of(&records);
        assert_eq!(s.sent, 30);
        assert_eq!((s.ok, s.status_5xx, s.lost), (10, 10, 10), "{s:?}");
        assert!(records.iter().any(|r| r.body.as_deref() == Some("down")));
    }

    impl Load {
        /// Waits for the load to reach its bounds by itself.
        async fn stop_after_done(self) -> Vec<Record> {
            self.task.await.unwrap()
        }
    }
}
