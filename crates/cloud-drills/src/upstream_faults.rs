//! Drill 6 of issue 9: upstream faults. One gateway in front of an in-process upstream whose
//! behaviour is switched at runtime (healthy, slow below and above the route timeout, erroring,
//! hanging), under steady load. The upstream records every request it receives by the drill's
//! `x-drill-id` header, so retries are counted per client request, and a request the breaker
//! answered is proven never to have reached it.
//!
//! Two routes to the same upstream, both configured explicitly: `/faults/` (timeouts and retries,
//! breaker disabled, so that the breaker cannot hide the retry counts) and `/guarded/` (the same
//! plus a circuit breaker), loaded only from the start of the hanging phase so that its breaker
//! window holds nothing but that phase.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cloud_test_support::process::ServiceProcess;

use crate::drills::{
    Identity, Row, Settings, Verdict, describe, failure_samples, secs, start_service_with_args,
};
use crate::infra::{Binaries, wait_for_status};
use crate::load::{Bounds, Load, Outcome, Record, Summary};
use crate::procstat;

/// `timeouts.request` of both routes.
const TIMEOUT: Duration = Duration::from_millis(500);
/// `retries.attempts`: extra attempts after the first.
const ATTEMPTS: u32 = 2;
const MIN_REQUESTS: usize = 20;
const OPEN_FOR: Duration = Duration::from_secs(2);
/// Latency allowed above the route timeout: a debug build on a shared 2-core machine.
const MARGIN: Duration = Duration::from_millis(250);
const SLOW_WITHIN: Duration = Duration::from_millis(200);
const SLOW_OVER: Duration = Duration::from_millis(1500);
/// An open breaker answers without the upstream: well below the timeout.
const FAST: Duration = Duration::from_millis(100);
/// Growth of the gateway's RSS across the hanging phase that still counts as bounded.
const RSS_BOUND_KIB: u64 = 16 * 1024;

/// The gateway config: everything that shapes the answers is explicit here.
fn gateway_yaml(issuer: &str, upstream: SocketAddr) -> String {
    let policy = "timeouts: {connect: 1s, request: 500ms}\n    \
                  retries: {attempts: 2, backoff: 20ms, max_backoff: 100ms}";
    format!(
        "identity:\n  issuer_url: \"{issuer}\"\n  audience: cloud-platform\n\
         rate_limits:\n  drill: {{requests: 100000, period: 1s}}\n\
         routes:\n\
         \x20 faults:\n    path_prefix: /faults/\n    rate_limit: drill\n    upstreams: [\"http://{upstream}\"]\n    {policy}\n    \
         circuit_breaker: {{enabled: false}}\n\
         \x20 guarded:\n    path_prefix: /guarded/\n    rate_limit: drill\n    upstreams: [\"http://{upstream}\"]\n    {policy}\n    \
         circuit_breaker: {{enabled: true, min_requests: {MIN_REQUESTS}, error_ratio: 0.5, window: 5s, open_for: 2s}}\n"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Healthy,
    Slow(Duration),
    Erroring,
    /// Accepts the request and never answers.
    Hanging,
}

impl Mode {
    fn name(self) -> String {
        match self {
            Self::Healthy => "healthy".into(),
            Self::Slow(d) => format!("slow {} ms", d.as_millis()),
            Self::Erroring => "erroring".into(),
            Self::Hanging => "hanging".into(),
        }
    }

    /// What the client may correctly get while the upstream is in this mode (besides the 503 of
    /// an open breaker, checked on its own).
    fn expected(self) -> &'static [u16] {
        match self {
            Self::Healthy => &[200],
            Self::Slow(d) if d < TIMEOUT => &[200],
            Self::Slow(_) | Self::Hanging => &[504],
            Self::Erroring => &[500, 502, 503],
        }
    }
}

/// The status the erroring upstream answers for the request with this id: the same for every
/// attempt of one request, so a retry meets the same fault.
fn injected_status(id: &str) -> u16 {
    let n: u64 = id
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(0);
    match n % 3 {
        0 => 500,
        1 => 502,
        _ => 503,
    }
}

#[derive(Debug, Clone)]
struct Hit {
    id: String,
    at: Duration,
}

#[derive(Debug)]
struct Upstream {
    origin: Instant,
    mode: Mutex<Mode>,
    hits: Mutex<Vec<Hit>>,
    /// Requests held by the hanging mode right now (their handler is dropped when the gateway
    /// closes the connection).
    hanging: AtomicU64,
}

impl Upstream {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

struct HangGuard(Arc<Upstream>);

impl Drop for HangGuard {
    fn drop(&mut self) {
        self.0.hanging.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn upstream_handler(State(up): State<Arc<Upstream>>, headers: HeaderMap) -> Response {
    let id = headers
        .get("x-drill-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mode = up.mode();
    if let Ok(mut hits) = up.hits.lock() {
        hits.push(Hit {
            id: id.clone(),
            at: up.origin.elapsed(),
        });
    }
    let ok = || axum::Json(serde_json::json!({"ok": true})).into_response();
    match mode {
        Mode::Healthy => ok(),
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            ok()
        }
        Mode::Erroring => (
            StatusCode::from_u16(injected_status(&id)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "injected fault",
        )
            .into_response(),
        Mode::Hanging => {
            up.hanging.fetch_add(1, Ordering::SeqCst);
            let _guard = HangGuard(up.clone());
            std::future::pending::<Response>().await
        }
    }
}

async fn start_upstream(origin: Instant) -> Result<(SocketAddr, Arc<Upstream>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the fault-injecting upstream")?;
    let addr = listener.local_addr()?;
    let up = Arc::new(Upstream {
        origin,
        mode: Mutex::new(Mode::Healthy),
        hits: Mutex::new(Vec::new()),
        hanging: AtomicU64::new(0),
    });
    let app = axum::Router::new()
        .fallback(upstream_handler)
        .with_state(up.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, up))
}

async fn start_fault_gateway(
    bin: &Binaries,
    issuer: &str,
    upstream: SocketAddr,
    dir: &std::path::Path,
) -> Result<ServiceProcess> {
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, gateway_yaml(issuer, upstream))
        .context("cannot write the gateway config")?;
    start_service_with_args(
        &bin.gateway,
        "GATEWAY",
        vec![(
            "GATEWAY_TELEMETRY__LOG_LEVEL".to_string(),
            "info".to_string(),
        )],
        vec!["--config".into(), path.display().to_string()],
    )
    .await
}

/// One stretch of the walk: the upstream's mode from `start` to `end`.
#[derive(Debug, Clone, Copy)]
struct Phase {
    mode: Mode,
    start: Duration,
    end: Duration,
}

fn load_bounds(rate: u32) -> Bounds {
    let cap = Duration::from_secs(120);
    Bounds {
        rate_per_sec: rate.max(1),
        max_requests: u64::from(rate.max(1)) * cap.as_secs(),
        max_duration: cap,
        request_timeout: Duration::from_secs(10),
    }
}

fn end_of(r: &Record) -> Duration {
    r.sent_at + r.latency
}

fn status(r: &Record) -> Option<u16> {
    match r.outcome {
        Outcome::Status(s) => Some(s),
        Outcome::Lost => None,
    }
}

fn is_circuit_open(r: &Record) -> bool {
    status(r) == Some(503)
        && r.body
            .as_deref()
            .is_some_and(|b| b.contains("circuit breaker is open"))
}

/// The `p`-th percentile (0..=1) of `values`, nearest rank.
fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank: small, non-negative, and within the vector.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// Records sent well inside `phase`: their whole life (the route timeout plus the margin) falls
/// in it, so the upstream's mode for them is known.
fn clean<'a>(records: &'a [Record], phase: &Phase) -> Vec<&'a Record> {
    records
        .iter()
        .filter(|r| {
            r.sent_at >= phase.start + Duration::from_millis(100)
                && r.sent_at + TIMEOUT + MARGIN + Duration::from_millis(100) <= phase.end
        })
        .collect()
}

fn hit_counts(hits: &[Hit]) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for h in hits {
        *counts.entry(h.id.clone()).or_insert(0) += 1;
    }
    counts
}

/// Drill 6 of issue 9: the upstream is slow, errors, and hangs, under steady load.
#[allow(clippy::too_many_lines)] // one drill, read top to bottom
pub async fn upstream_faults(settings: &Settings) -> Result<Row> {
    let client = reqwest::Client::new();
    let dir = tempfile::Builder::new().prefix("cloud-drills-").tempdir()?;
    let identity = Identity::start(&settings.binaries, None).await?;
    let origin = Instant::now();
    let (upstream_addr, up) = start_upstream(origin).await?;
    let gateway = start_fault_gateway(
        &settings.binaries,
        &identity.issuer,
        upstream_addr,
        dir.path(),
    )
    .await?;
    wait_for_status(
        &client,
        &gateway.admin_url("/readyz"),
        200,
        Duration::from_secs(30),
    )
    .await?;
    let token = identity.admin_token(&client).await?;
    for path in ["/faults/warmup", "/guarded/warmup"] {
        let r = client
            .get(gateway.url(path))
            .bearer_auth(&token)
            .send()
            .await?;
        if r.status() != 200 {
            bail!("{path} answered {} before any fault", r.status());
        }
    }
    let pid = gateway.pid();

    let get_load = |prefix: &'static str, path: &'static str, rate: u32| {
        let url = gateway.url(path);
        let token = token.clone();
        Load::start(
            origin,
            load_bounds(rate),
            Arc::new(move |c, n| {
                c.get(&url)
                    .bearer_auth(&token)
                    .header("x-drill-id", format!("{prefix}{n}"))
            }),
        )
    };
    let rate_get = (settings.rate / 2).max(1);
    let rate_post = (settings.rate / 10).max(1);
    let gets = get_load("a", "/faults/item", rate_get);
    let posts = {
        let url = gateway.url("/faults/item");
        let token = token.clone();
        Load::start(
            origin,
            load_bounds(rate_post),
            Arc::new(move |c, n| {
                c.post(&url)
                    .bearer_auth(&token)
                    .header("x-drill-id", format!("p{n}"))
                    .json(&serde_json::json!({"n": n}))
            }),
        )
    };

    let mut phases: Vec<Phase> = Vec::new();
    let mut switch = |mode: Mode| {
        let now = origin.elapsed();
        if let Some(last) = phases.last_mut() {
            last.end = now;
        }
        up.set_mode(mode);
        phases.push(Phase {
            mode,
            start: now,
            end: Duration::MAX,
        });
        now
    };
    switch(Mode::Healthy);
    tokio::time::sleep(Duration::from_secs(2)).await;
    switch(Mode::Slow(SLOW_WITHIN));
    tokio::time::sleep(Duration::from_secs(3)).await;
    switch(Mode::Slow(SLOW_OVER));
    tokio::time::sleep(Duration::from_secs(3)).await;
    switch(Mode::Erroring);
    tokio::time::sleep(Duration::from_secs(3)).await;
    switch(Mode::Healthy);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let rss_before = procstat::rss_kib(pid)?;
    let fds_before = procstat::open_fds(pid)?;
    let hang_start = switch(Mode::Hanging);
    let guarded = get_load("b", "/guarded/item", (settings.rate / 2).max(1));
    let (mut rss_peak, mut fds_peak) = (rss_before, fds_before);
    while origin.elapsed() < hang_start + settings.outage {
        rss_peak = rss_peak.max(procstat::rss_kib(pid)?);
        fds_peak = fds_peak.max(procstat::open_fds(pid)?);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let hanging_at_end = up.hanging.load(Ordering::SeqCst);
    let healed_at = switch(Mode::Healthy);
    // Long enough for one more open period, a probe and 3 s of closed breaker.
    tokio::time::sleep(OPEN_FOR + TIMEOUT + Duration::from_secs(3)).await;
    let rss_after = procstat::rss_kib(pid)?;
    let fds_after = procstat::open_fds(pid)?;
    let hanging_after = up.hanging.load(Ordering::SeqCst);
    let gets = gets.stop().await?;
    let posts = posts.stop().await?;
    let guarded = guarded.stop().await?;
    if let Some(last) = phases.last_mut() {
        last.end = origin.elapsed();
    }
    let hits = up.hits();
    let counts = hit_counts(&hits);
    let hits_of = |prefix: &str, n: u64| counts.get(&format!("{prefix}{n}")).copied().unwrap_or(0);

    let mut details = Vec::new();
    let mut findings = Vec::new();
    let phase_of = |mode: Mode| phases.iter().find(|p| p.mode == mode).copied();
    details.push(format!(
        "gateway route config: timeouts.request {}, retries.attempts {ATTEMPTS} (backoff 20 ms, max 100 ms), \
         /guarded/ breaker: min_requests {MIN_REQUESTS}, error_ratio 0.5, window 5 s, open_for {}; /faults/ breaker disabled",
        ms(TIMEOUT),
        secs(OPEN_FOR)
    ));
    details.push(format!(
        "phases (upstream mode from the drill's clock): {}",
        phases
            .iter()
            .map(|p| format!("{} {}-{}", p.mode.name(), secs(p.start), secs(p.end)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    details.push(format!(
        "GET /faults/ ({rate_get} req/s): {}",
        describe(&Summary::of(&gets))
    ));
    details.push(format!(
        "POST /faults/ ({rate_post} req/s): {}",
        describe(&Summary::of(&posts))
    ));
    details.push(format!(
        "GET /guarded/ ({} req/s, from the hanging phase on): {}",
        (settings.rate / 2).max(1),
        describe(&Summary::of(&guarded))
    ));

    // Slow, below the timeout: served, about as slow as the upstream.
    if let Some(p) = phase_of(Mode::Slow(SLOW_WITHIN)) {
        let c = clean(&gets, &p);
        let lat: Vec<Duration> = c.iter().map(|r| r.latency).collect();
        let ok = c.iter().filter(|r| status(r) == Some(200)).count();
        let one_hit = c.iter().filter(|r| hits_of("a", r.n) == 1).count();
        details.push(format!(
            "slow {} (< timeout): {} GETs sent inside the phase, {ok} x 200, {one_hit} reached the upstream exactly once; latency min {} median {} max {}",
            ms(SLOW_WITHIN),
            c.len(),
            ms(percentile(&lat, 0.0)),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 1.0))
        ));
        if c.is_empty() || ok != c.len() || one_hit != c.len() {
            findings.push(format!(
                "slow upstream below the timeout: only {ok} of {} GETs succeeded ({one_hit} with one upstream hit)",
                c.len()
            ));
        }
        if percentile(&lat, 1.0) >= TIMEOUT || percentile(&lat, 0.0) < SLOW_WITHIN {
            findings.push(format!(
                "slow upstream below the timeout: latency {}..{} is not between the upstream's delay {} and the timeout {}",
                ms(percentile(&lat, 0.0)),
                ms(percentile(&lat, 1.0)),
                ms(SLOW_WITHIN),
                ms(TIMEOUT)
            ));
        }
    }

    // Slow, above the timeout: 504 after about the timeout, retries included.
    if let Some(p) = phase_of(Mode::Slow(SLOW_OVER)) {
        let c: Vec<&Record> = clean(&gets, &p)
            .into_iter()
            .chain(clean(&posts, &p))
            .collect();
        let lat: Vec<Duration> = c.iter().map(|r| r.latency).collect();
        let n504 = c.iter().filter(|r| status(r) == Some(504)).count();
        let get_hits: Vec<u32> = clean(&gets, &p).iter().map(|r| hits_of("a", r.n)).collect();
        let mut by_hits: Vec<(u32, usize)> = Vec::new();
        for h in &get_hits {
            match by_hits.iter_mut().find(|(k, _)| k == h) {
                Some((_, n)) => *n += 1,
                None => by_hits.push((*h, 1)),
            }
        }
        by_hits.sort();
        details.push(format!(
            "slow {} (> timeout): {} requests (GET and POST) sent inside the phase, {n504} x 504; latency min {} median {} p99 {} max {}; upstream hits per GET: {}",
            ms(SLOW_OVER),
            c.len(),
            ms(percentile(&lat, 0.0)),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(percentile(&lat, 1.0)),
            by_hits
                .iter()
                .map(|(h, n)| format!("{n} x {h}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if c.is_empty() || n504 != c.len() {
            findings.push(format!(
                "slow upstream above the timeout: {n504} of {} requests got 504",
                c.len()
            ));
        }
        if percentile(&lat, 0.0) + Duration::from_millis(10) < TIMEOUT
            || percentile(&lat, 1.0) > TIMEOUT + MARGIN
        {
            findings.push(format!(
                "slow upstream above the timeout: the 504s took {}..{} (median {}), not about timeouts.request = {} (allowed {}..{}): \
                 each retry gets its own full timeout, so `timeouts.request` does not bound what the client waits",
                ms(percentile(&lat, 0.0)),
                ms(percentile(&lat, 1.0)),
                ms(percentile(&lat, 0.5)),
                ms(TIMEOUT),
                ms(TIMEOUT - Duration::from_millis(10)),
                ms(TIMEOUT + MARGIN)
            ));
        }
    }

    // Erroring: GETs retried exactly `attempts` times on 502/503 (the documented retry statuses),
    // not on 500; POSTs never.
    if let Some(p) = phase_of(Mode::Erroring) {
        let mut per_status: Vec<(u16, usize, Vec<u32>, usize)> = Vec::new();
        let mut wrong = Vec::new();
        for r in clean(&gets, &p) {
            let injected = injected_status(&format!("a{}", r.n));
            let hits = hits_of("a", r.n);
            let want_hits = if injected == 500 { 1 } else { 1 + ATTEMPTS };
            let index = match per_status.iter().position(|e| e.0 == injected) {
                Some(i) => i,
                None => {
                    per_status.push((injected, 0, Vec::new(), 0));
                    per_status.len() - 1
                }
            };
            let entry = &mut per_status[index];
            entry.1 += 1;
            entry.2.push(hits);
            if status(r) == Some(injected) {
                entry.3 += 1;
            }
            if hits != want_hits || status(r) != Some(injected) {
                wrong.push(format!(
                    "a{}: injected {injected}, answered {:?}, {hits} upstream hits (want {want_hits})",
                    r.n,
                    status(r)
                ));
            }
        }
        per_status.sort_by_key(|e| e.0);
        for (injected, n, hits, passed) in &per_status {
            let exact = hits
                .iter()
                .filter(|h| **h == if *injected == 500 { 1 } else { 1 + ATTEMPTS })
                .count();
            details.push(format!(
                "erroring, GET answered {injected} by the upstream: {n} requests, {passed} passed on as {injected}; upstream hits per request min {} max {} ({exact} exactly {})",
                hits.iter().min().copied().unwrap_or(0),
                hits.iter().max().copied().unwrap_or(0),
                if *injected == 500 { 1 } else { 1 + ATTEMPTS }
            ));
        }
        let cp = clean(&posts, &p);
        let post_hits: Vec<u32> = cp.iter().map(|r| hits_of("p", r.n)).collect();
        let post_once = post_hits.iter().filter(|h| **h == 1).count();
        for r in &cp {
            let injected = injected_status(&format!("p{}", r.n));
            if hits_of("p", r.n) != 1 || status(r) != Some(injected) {
                wrong.push(format!(
                    "p{}: injected {injected}, answered {:?}, {} upstream hits (want 1)",
                    r.n,
                    status(r),
                    hits_of("p", r.n)
                ));
            }
        }
        details.push(format!(
            "erroring, POST (never retried): {} requests, {post_once} reached the upstream exactly once, max {}",
            cp.len(),
            post_hits.iter().max().copied().unwrap_or(0)
        ));
        if per_status.len() < 3 || cp.is_empty() {
            findings.push("the erroring phase did not exercise 500, 502, 503 and POST".into());
        }
        if !wrong.is_empty() {
            findings.push(format!(
                "retries in the erroring phase differ from the config ({} requests), e.g. {}",
                wrong.len(),
                wrong.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
    }

    // Hanging, behind the breaker.
    let hang: Vec<&Record> = guarded.iter().filter(|r| r.sent_at < healed_at).collect();
    let mut timeouts: Vec<Duration> = hang
        .iter()
        .filter(|r| status(r) == Some(504))
        .map(|r| end_of(r))
        .collect();
    timeouts.sort();
    let first_open = hang
        .iter()
        .filter(|r| is_circuit_open(r))
        .map(|r| r.sent_at)
        .min();
    let mut recovery = None;
    match (first_open, timeouts.get(MIN_REQUESTS - 1)) {
        (Some(s1), Some(&threshold_at)) => {
            let failed_before = timeouts.iter().filter(|t| **t < s1).count();
            details.push(format!(
                "hanging: {} 504s (each after {}..{}) reached the client before the first request the breaker refused (sent {} into the phase); the {MIN_REQUESTS}th 504 arrived {} into the phase",
                failed_before,
                ms(percentile(
                    &hang
                        .iter()
                        .filter(|r| status(r) == Some(504))
                        .map(|r| r.latency)
                        .collect::<Vec<_>>(),
                    0.0
                )),
                ms(percentile(
                    &hang
                        .iter()
                        .filter(|r| status(r) == Some(504))
                        .map(|r| r.latency)
                        .collect::<Vec<_>>(),
                    1.0
                )),
                secs(s1 - hang_start),
                secs(threshold_at - hang_start)
            ));
            if failed_before + 3 < MIN_REQUESTS || failed_before > MIN_REQUESTS + 3 {
                findings.push(format!(
                    "the breaker opened after {failed_before} failed requests, configured: min_requests {MIN_REQUESTS} at error_ratio 0.5 with every request failing"
                ));
            }
            // While open: fast, and never at the upstream.
            let refused: Vec<&&Record> = hang.iter().filter(|r| is_circuit_open(r)).collect();
            let lat: Vec<Duration> = refused.iter().map(|r| r.latency).collect();
            let reached = refused.iter().filter(|r| hits_of("b", r.n) > 0).count();
            details.push(format!(
                "hanging: the open breaker refused {} requests with 503 + Retry-After, latency median {} p99 {} max {}; {reached} of them reached the upstream",
                refused.len(),
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99)),
                ms(percentile(&lat, 1.0))
            ));
            if reached > 0 || percentile(&lat, 0.99) > FAST {
                findings.push(format!(
                    "the open breaker: {reached} refused requests reached the upstream, p99 latency {} (want none, <= {})",
                    ms(percentile(&lat, 0.99)),
                    ms(FAST)
                ));
            }
            // Probes: the only /guarded/ requests at the upstream once the breaker opened. A
            // request the client sent before it saw the first refusal may have been admitted
            // while the breaker was still closed and reach the upstream just after the
            // threshold: such a request is not a probe. One sent after the client saw a refusal
            // was admitted, if at all, by the open breaker, so it is one.
            let first_refusal_seen = refused.iter().map(|r| end_of(r)).min().unwrap_or(s1);
            let sent_at: HashMap<u64, Duration> =
                guarded.iter().map(|r| (r.n, r.sent_at)).collect();
            let probes: Vec<Duration> = hits
                .iter()
                .filter(|h| h.at > threshold_at && h.at < healed_at)
                .filter(|h| {
                    h.id.strip_prefix('b')
                        .and_then(|n| n.parse::<u64>().ok())
                        .and_then(|n| sent_at.get(&n))
                        .is_some_and(|sent| *sent > first_refusal_seen)
                })
                .map(|h| h.at)
                .collect();
            let gaps: Vec<Duration> = std::iter::once(threshold_at)
                .chain(probes.iter().copied())
                .zip(probes.iter().copied())
                .map(|(a, b)| b.saturating_sub(a))
                .collect();
            details.push(format!(
                "hanging: {} probes reached the upstream while the breaker was open, {} after the threshold, then every {} (open_for {} + the probe's timeout {})",
                probes.len(),
                gaps.first().map_or_else(|| "none".to_string(), |g| ms(*g)),
                gaps.iter()
                    .skip(1)
                    .map(|g| ms(*g))
                    .collect::<Vec<_>>()
                    .join(", "),
                ms(OPEN_FOR),
                ms(TIMEOUT)
            ));
            let first_ok = gaps.first().is_some_and(|g| {
                *g + Duration::from_millis(100) >= OPEN_FOR
                    && *g <= OPEN_FOR + Duration::from_millis(300)
            });
            let rest_ok = gaps
                .iter()
                .skip(1)
                .all(|g| *g + Duration::from_millis(50) >= OPEN_FOR);
            if !first_ok || !rest_ok {
                findings.push(format!(
                    "probes did not follow open_for = {}: gaps {:?}",
                    ms(OPEN_FOR),
                    gaps.iter().map(|g| g.as_millis()).collect::<Vec<_>>()
                ));
            }
            // Recovery: from the upstream healing to the first 200, then no more refusals.
            recovery = guarded
                .iter()
                .filter(|r| r.sent_at >= healed_at && status(r) == Some(200))
                .map(|r| end_of(r) - healed_at)
                .min();
            match recovery {
                Some(rec) => {
                    let after: Vec<&Record> = guarded
                        .iter()
                        .filter(|r| r.sent_at > healed_at + rec)
                        .collect();
                    let bad = after.iter().filter(|r| status(r) != Some(200)).count();
                    details.push(format!(
                        "recovery: the first 200 on /guarded/ {} after the upstream healed (bound: open_for + timeout + 0.5 s = {}); {} requests after it, {bad} not 200",
                        secs(rec),
                        secs(OPEN_FOR + TIMEOUT + Duration::from_millis(500)),
                        after.len()
                    ));
                    if rec > OPEN_FOR + TIMEOUT + Duration::from_millis(500) || bad > 0 {
                        findings.push(format!(
                            "the breaker closed {} after the upstream healed, {bad} failures after that",
                            secs(rec)
                        ));
                    }
                }
                None => findings.push("the breaker did not close after the upstream healed".into()),
            }
        }
        (None, _) => findings.push(format!(
            "the breaker never opened while the upstream hung ({} requests, {} x 504)",
            hang.len(),
            timeouts.len()
        )),
        (Some(_), None) => findings.push(format!(
            "the breaker opened after fewer than {MIN_REQUESTS} failures ({} x 504)",
            timeouts.len()
        )),
    }

    // Bounded: memory and descriptors across the hanging phase.
    // Open fds are shown, not bounded: after the phase they include idle keep-alive
    // connections, from the drill's clients (up to 64 per load) and to the upstream (the
    // route's pool), which is what they are for. A connection the gateway failed to let go of
    // shows at the upstream instead: a hanging request it still holds.
    details.push(format!(
        "gateway (pid {pid}) across the hanging phase: RSS {} before, peak {}, {} after (bound +{}); open fds {fds_before} before, peak {fds_peak}, {fds_after} after (idle keep-alive connections included); upstream requests still held by the hanging mode: {hanging_at_end} at its end, {hanging_after} after recovery",
        procstat::mib(rss_before),
        procstat::mib(rss_peak),
        procstat::mib(rss_after),
        procstat::mib(RSS_BOUND_KIB)
    ));
    if rss_after > rss_before + RSS_BOUND_KIB || hanging_after > 0 {
        findings.push(format!(
            "the gateway did not let go after the hanging phase: RSS {} -> {}, {hanging_after} hanging upstream requests still held",
            procstat::mib(rss_before),
            procstat::mib(rss_after)
        ));
    }

    // Latency and the failures: which were the correct answer to the fault at hand.
    let all: Vec<(&Record, bool)> = gets
        .iter()
        .chain(posts.iter())
        .map(|r| (r, false))
        .chain(guarded.iter().map(|r| (r, true)))
        .collect();
    let lat: Vec<Duration> = all.iter().map(|(r, _)| r.latency).collect();
    let p99 = percentile(&lat, 0.99);
    details.push(format!(
        "latency over all {} requests: median {} p99 {} max {} (bound: p99 <= timeout + {} = {})",
        all.len(),
        ms(percentile(&lat, 0.5)),
        ms(p99),
        ms(percentile(&lat, 1.0)),
        ms(MARGIN),
        ms(TIMEOUT + MARGIN)
    ));
    if p99 > TIMEOUT + MARGIN {
        findings.push(format!(
            "latency p99 {} exceeds timeouts.request + {} = {}",
            ms(p99),
            ms(MARGIN),
            ms(TIMEOUT + MARGIN)
        ));
    }
    let mut expected: Vec<(u16, usize)> = Vec::new();
    let mut unexpected = Vec::new();
    for (r, is_guarded) in &all {
        let Some(s) = status(r) else {
            unexpected.push(*r);
            continue;
        };
        if (200..300).contains(&s) {
            continue;
        }
        // A refusal by the open breaker is checked above (fast, never at the upstream, none
        // after recovery); anything else must be what the upstream's mode at the time causes.
        let allowed = (*is_guarded && is_circuit_open(r))
            || phases
                .iter()
                .filter(|p| p.start <= end_of(r) && r.sent_at <= p.end)
                .any(|p| p.mode.expected().contains(&s));
        if allowed {
            match expected.iter_mut().find(|(k, _)| *k == s) {
                Some((_, n)) => *n += 1,
                None => expected.push((s, 1)),
            }
        } else {
            unexpected.push(*r);
        }
    }
    expected.sort_unstable();
    details.push(format!(
        "expected failures, the correct answer to the fault injected at the time: {} ({}); unexpected failures: {}",
        expected.iter().map(|(_, n)| n).sum::<usize>(),
        expected
            .iter()
            .map(|(s, n)| format!("{n} x {s}"))
            .collect::<Vec<_>>()
            .join(", "),
        unexpected.len()
    ));
    if !unexpected.is_empty() {
        let owned: Vec<Record> = unexpected.iter().map(|r| (*r).clone()).collect();
        findings.push(format!(
            "{} failures that are not the answer to the injected fault: {}",
            unexpected.len(),
            failure_samples(&owned).join("; ")
        ));
    }

    let s = Summary::of(all.iter().map(|(r, _)| *r));
    Ok(Row {
        drill: "Upstream faults",
        sent: s.sent,
        failed: s.failed(),
        lost: s.lost,
        recovery: recovery.map_or_else(
            || "not recovered".into(),
            |d| format!("{} (upstream healed -> breaker closed)", secs(d)),
        ),
        verdict: Verdict::of(&findings),
        details,
        findings,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn every_attempt_of_one_request_meets_the_same_fault() {
        assert_eq!(injected_status("a0"), 500);
        assert_eq!(injected_status("a1"), 502);
        assert_eq!(injected_status("a2"), 503);
        assert_eq!(injected_status("p4"), 502);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn the_gateway_config_names_every_knob() {
        let yaml = gateway_yaml("http://127.0.0.1:1", "127.0.0.1:2".parse().unwrap());
        for needle in [
            "request: 500ms",
            "attempts: 2",
            "min_requests: 20",
            "open_for: 2s",
            "circuit_breaker: {enabled: false}",
        ] {
            assert!(yaml.contains(needle), "{needle} missing in\n{yaml}");
        }
    }

    /// The upstream switches modes at runtime and counts hits by drill id.
    #[tokio::test]
    async fn the_upstream_switches_modes_and_counts_hits() {
        let (addr, up) = start_upstream(Instant::now()).await.unwrap();
        let c = reqwest::Client::new();
        let get = |id: &'static str| {
            c.get(format!("http://{addr}/x"))
                .header("x-drill-id", id)
                .timeout(Duration::from_millis(300))
                .send()
        };
        assert_eq!(get("a1").await.unwrap().status(), 200);
        up.set_mode(Mode::Erroring);
        assert_eq!(get("a1").await.unwrap().status(), 502);
        up.set_mode(Mode::Hanging);
        assert!(get("a1").await.is_err(), "a hanging upstream never answers");
        assert_eq!(hit_counts(&up.hits())["a1"], 3);
    }
}
