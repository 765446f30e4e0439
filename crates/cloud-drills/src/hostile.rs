//! Drill 7c of issue 9: hostile input against both services (identity and gateway as real
//! processes). Raw TCP, because a well-behaved client library cannot send what an attacker
//! sends: oversized heads, invalid UTF-8 in the request line, header values and bodies, and
//! slowloris connections that dribble a request head one byte a second. Every answer must be a
//! bounded 4xx (never a 5xx, never a hang), the process must keep serving, and slow clients must
//! be cut off after a bounded header-read timeout while normal requests are still served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cloud_test_support::process::ServiceProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::drills::{
    BOOTSTRAP_CLIENT, Identity, Row, Settings, Verdict, describe, secs, start_gateway,
};
use crate::infra::spawn_upstream;
use crate::load::{Bounds, Load, Summary};
use crate::procstat;

/// The `server.header_read_timeout` both services run with in the drills (see
/// `drills::DRILL_HEADER_READ_TIMEOUT`): shorter than the 75 s default so the drill stays short.
const HEADER_READ_TIMEOUT: Duration = crate::drills::DRILL_HEADER_READ_TIMEOUT;
/// How late after the header-read timeout a slow connection may still be closed.
const CLOSE_MARGIN: Duration = Duration::from_secs(2);
const SLOW_CONNS: usize = 200;
const SILENT_CONNS: usize = 20;
/// The drill gives up on slow connections after this long: a server without a header-read
/// timeout would hold them forever.
const SLOWLORIS_CAP: Duration = Duration::from_secs(30);
/// Normal requests during the attack must be answered within this (p99).
const PROMPT: Duration = Duration::from_millis(500);
const RSS_BOUND_KIB: u64 = 32 * 1024;
const FD_BOUND: usize = 16;
/// Longest wait for the answer to one hostile request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What came back on one raw connection.
#[derive(Debug, Clone)]
struct RawAnswer {
    status: Option<u16>,
    latency: Duration,
    /// The server closed the connection (or reset it) before `ANSWER_TIMEOUT`.
    closed: bool,
}

/// Sends `request` on a fresh connection while reading, so that an early answer (431, 413) is
/// read even if the server stops reading the request.
async fn raw_exchange(port: u16, request: Vec<u8>) -> Result<RawAnswer> {
    let started = Instant::now();
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot connect to port {port}"))?;
    let (mut rd, mut wr) = stream.into_split();
    // The write half stays open until the answer is read: a half-closed connection is a
    // different test.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        wr
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut first_bytes = None;
    let mut closed = false;
    let deadline = tokio::time::Instant::from_std(started + ANSWER_TIMEOUT);
    loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                first_bytes.get_or_insert_with(|| started.elapsed());
                if buf.len() < 64 * 1024 {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            Err(_) => break,
        }
    }
    drop(writer);
    Ok(RawAnswer {
        status: parse_status(&buf),
        latency: first_bytes.unwrap_or_else(|| started.elapsed()),
        closed,
    })
}

fn parse_status(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
}

/// One header of a raw request (a function, so that byte literals of any length coerce).
fn h<'a>(name: &'a str, value: &'a [u8]) -> (&'a str, &'a [u8]) {
    (name, value)
}

/// A raw HTTP/1.1 request: `Host`, `Connection: close` and `Content-Length` added.
fn raw(method: &str, target: &[u8], headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || method == "POST" {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One hostile request and the answers that are correct for it.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    allowed: &'static [u16],
}

fn many_headers(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("X-Many-{i}"), b"v".to_vec()))
        .collect()
}

fn with_many(
    method: &str,
    target: &[u8],
    extra: &[(String, Vec<u8>)],
    base: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut headers: Vec<(&str, &[u8])> = base.to_vec();
    headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    raw(method, target, &headers, b"")
}

/// Cases every service gets: the head limits, on `GET /version`.
fn head_cases() -> Vec<Case> {
    let big = vec![b'a'; 64 * 1024];
    let fine = vec![b'a'; 8 * 1024];
    vec![
        Case {
            name: "one 64 KiB header",
            request: raw("GET", b"/version", &[h("X-Big", &big)], b""),
            allowed: &[431, 400],
        },
        Case {
            name: "200 headers",
            request: with_many("GET", b"/version", &many_headers(200), &[]),
            allowed: &[431, 400],
        },
        Case {
            name: "one 8 KiB header (control: must be served)",
            request: raw("GET", b"/version", &[h("X-Big", &fine)], b""),
            allowed: &[200],
        },
        Case {
            name: "invalid UTF-8 in x-request-id and traceparent",
            request: raw(
                "GET",
                b"/version",
                &[
                    h("X-Request-Id", b"\xff\xfe\xfd"),
                    h("traceparent", b"00-\xff\xfe-01"),
                ],
                b"",
            ),
            allowed: &[200, 400],
        },
    ]
}

fn identity_cases(token: &str, basic: &str) -> Vec<Case> {
    let bearer = format!("Bearer {token}");
    let bearer = bearer.as_bytes();
    let basic = format!("Basic {basic}");
    let basic = basic.as_bytes();
    let form: &[u8] = b"application/x-www-form-urlencoded";
    let json: &[u8] = b"application/json";
    let mut cases = head_cases();
    cases.extend([
        Case {
            name: "invalid UTF-8 in the path (raw bytes)",
            request: raw(
                "GET",
                b"/v1/tenants/\xff\xfe",
                &[h("Authorization", bearer)],
                b"",
            ),
            allowed: &[400, 404],
        },
        Case {
            name: "invalid UTF-8 in the path (%FF%FE)",
            request: raw(
                "GET",
                b"/v1/tenants/%FF%FE",
                &[h("Authorization", bearer)],
                b"",
            ),
            allowed: &[400, 404],
        },
        Case {
            name: "invalid UTF-8 in the query (raw bytes)",
            request: raw(
                "GET",
                b"/oauth2/authorize?response_type=code&client_id=\xff\xfe",
                &[],
                b"",
            ),
            allowed: &[400, 404],
        },
        Case {
            name: "invalid UTF-8 in the query (%FF%FE)",
            request: raw(
                "GET",
                b"/oauth2/authorize?response_type=code&client_id=%FF%FE&redirect_uri=%FF",
                &[],
                b"",
            ),
            allowed: &[400, 404],
        },
        Case {
            name: "invalid UTF-8 in the Authorization header",
            request: raw(
                "GET",
                b"/v1/tenants",
                &[h("Authorization", b"Bearer \xff\xfe\xfd")],
                b"",
            ),
            allowed: &[400, 401],
        },
        Case {
            name: "invalid UTF-8 in the Content-Type header",
            request: raw(
                "POST",
                b"/v1/tenants",
                &[
                    h("Authorization", bearer),
                    h("Content-Type", b"application/json\xff"),
                ],
                b"{\"name\":\"x\"}",
            ),
            allowed: &[400, 415],
        },
        Case {
            name: "invalid UTF-8 in a JSON body",
            request: raw(
                "POST",
                b"/v1/tenants",
                &[h("Authorization", bearer), h("Content-Type", json)],
                b"{\"name\":\"\xff\xfe\"}",
            ),
            allowed: &[400, 422],
        },
        Case {
            name: "invalid UTF-8 in a form body (raw bytes)",
            request: raw(
                "POST",
                b"/oauth2/token",
                &[h("Authorization", basic), h("Content-Type", form)],
                b"grant_type=\xff\xfe",
            ),
            allowed: &[400],
        },
        Case {
            name: "invalid UTF-8 in a form body (%FF%FE)",
            request: raw(
                "POST",
                b"/oauth2/token",
                &[h("Authorization", basic), h("Content-Type", form)],
                b"grant_type=%FF%FE",
            ),
            allowed: &[400],
        },
    ]);
    cases
}

fn gateway_cases(token: &str) -> Vec<Case> {
    let bearer = format!("Bearer {token}");
    let bearer = bearer.as_bytes();
    let json: &[u8] = b"application/json";
    let form: &[u8] = b"application/x-www-form-urlencoded";
    let mut cases = head_cases();
    cases.extend([
        Case {
            name: "invalid UTF-8 in the path (raw bytes)",
            request: raw("GET", b"/api/\xff\xfe", &[h("Authorization", bearer)], b""),
            allowed: &[400, 404],
        },
        Case {
            name: "invalid UTF-8 in an unrouted path (%FF%FE)",
            request: raw(
                "GET",
                b"/nowhere/%FF%FE",
                &[h("Authorization", bearer)],
                b"",
            ),
            allowed: &[404],
        },
        // The gateway does not interpret what it proxies: the upstream (which answers 200 to
        // everything here) decides, and the gateway must pass the request on intact.
        Case {
            name: "invalid UTF-8 in a proxied path (%FF%FE; the upstream answers)",
            request: raw("GET", b"/api/%FF%FE", &[h("Authorization", bearer)], b""),
            allowed: &[200, 400, 404],
        },
        Case {
            name: "invalid UTF-8 in the query (raw bytes)",
            request: raw(
                "GET",
                b"/api/x?q=\xff\xfe",
                &[h("Authorization", bearer)],
                b"",
            ),
            allowed: &[400],
        },
        Case {
            name: "invalid UTF-8 in a proxied query (%FF%FE; the upstream answers)",
            request: raw(
                "GET",
                b"/api/x?q=%FF%FE",
                &[h("Authorization", bearer)],
                b"",
            ),
            allowed: &[200, 400],
        },
        Case {
            name: "invalid UTF-8 in the Authorization header",
            request: raw(
                "GET",
                b"/api/x",
                &[h("Authorization", b"Bearer \xff\xfe\xfd")],
                b"",
            ),
            allowed: &[400, 401],
        },
        Case {
            name: "invalid UTF-8 in a proxied header value (x-custom; the upstream answers)",
            request: raw(
                "GET",
                b"/api/x",
                &[h("Authorization", bearer), h("X-Custom", b"\xff\xfe")],
                b"",
            ),
            allowed: &[200, 400],
        },
        Case {
            name: "invalid UTF-8 in a proxied JSON body (the upstream answers)",
            request: raw(
                "POST",
                b"/api/x",
                &[h("Authorization", bearer), h("Content-Type", json)],
                b"{\"name\":\"\xff\xfe\"}",
            ),
            allowed: &[200, 400],
        },
        Case {
            name: "invalid UTF-8 in a proxied form body (the upstream answers)",
            request: raw(
                "POST",
                b"/api/x",
                &[h("Authorization", bearer), h("Content-Type", form)],
                b"a=\xff\xfe",
            ),
            allowed: &[200, 400],
        },
    ]);
    cases
}

/// One service under attack.
struct Target<'a> {
    name: &'static str,
    process: &'a ServiceProcess,
    cases: Vec<Case>,
    /// A request with a 2 MiB body, for the 413.
    big_body: reqwest::RequestBuilder,
}

/// How one slow connection ended: closed by the server after `Some(lifetime)`, or still open
/// when the drill gave up (`None`).
async fn slow_connection(port: u16, send: bool) -> Result<Option<Duration>> {
    let started = Instant::now();
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .context("slowloris connect")?;
    let (mut rd, mut wr) = stream.into_split();
    let head = b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let give_up = tokio::time::sleep(SLOWLORIS_CAP);
    tokio::pin!(give_up);
    let mut sent = 0usize;
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Ok(Some(started.elapsed())),
                // An answer (e.g. 408) before the close: keep reading until it closes.
                Ok(_) => {}
            },
            _ = tick.tick(), if send => {
                let byte = head.get(sent).copied().unwrap_or(b'a');
                sent += 1;
                if wr.write_all(&[byte]).await.is_err() {
                    return Ok(Some(started.elapsed()));
                }
            }
            () = &mut give_up => return Ok(None),
        }
    }
}

/// Measured resources of a process.
#[derive(Debug, Clone, Copy)]
struct Resources {
    rss_kib: u64,
    fds: usize,
}

fn resources(pid: u32) -> Result<Resources> {
    Ok(Resources {
        rss_kib: procstat::rss_kib(pid)?,
        fds: procstat::open_fds(pid)?,
    })
}

struct Outcomes {
    sent: u64,
    failed: u64,
    lost: u64,
    expected_rejections: u64,
    slowest_close: Option<Duration>,
}

async fn attack(
    target: Target<'_>,
    client: &reqwest::Client,
    details: &mut Vec<String>,
    findings: &mut Vec<String>,
) -> Result<Outcomes> {
    let name = target.name;
    let port = target.process.port;
    let pid = target.process.pid();
    let version = target.process.url("/version");
    let mut out = Outcomes {
        sent: 0,
        failed: 0,
        lost: 0,
        expected_rejections: 0,
        slowest_close: None,
    };
    let start = resources(pid)?;

    // Hostile requests, each followed by a normal one: the process must still serve.
    let mut alive_failures = 0;
    let mut answers = Vec::new();
    for case in target.cases {
        let answer = raw_exchange(port, case.request).await?;
        out.sent += 1;
        match answer.status {
            None => out.lost += 1,
            Some(s) if (200..300).contains(&s) => {}
            Some(_) => out.failed += 1,
        }
        let ok = answer.status.is_some_and(|s| case.allowed.contains(&s));
        if ok && answer.status.is_some_and(|s| s >= 400) {
            out.expected_rejections += 1;
        }
        answers.push(format!(
            "{}: {} in {}{}",
            case.name,
            answer
                .status
                .map_or_else(|| "no answer".to_string(), |s| s.to_string()),
            ms(answer.latency),
            if answer.closed {
                ""
            } else {
                " (connection left open)"
            }
        ));
        if !ok {
            findings.push(format!(
                "{name}: {} answered {} (want one of {:?})",
                case.name,
                answer
                    .status
                    .map_or_else(|| "nothing".to_string(), |s| s.to_string()),
                case.allowed
            ));
        }
        let alive = client
            .get(&version)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map(|r| r.status().as_u16());
        out.sent += 1;
        if !matches!(alive, Ok(200)) {
            alive_failures += 1;
            match alive {
                Ok(_) => out.failed += 1,
                Err(_) => out.lost += 1,
            }
        }
    }
    // The 413: a client library, because it reads the early answer while still sending.
    let big = target
        .big_body
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16());
    out.sent += 1;
    match &big {
        Ok(413) => {
            out.failed += 1;
            out.expected_rejections += 1;
        }
        Ok(s) => {
            if !(200..300).contains(s) {
                out.failed += 1;
            }
            findings.push(format!("{name}: a 2 MiB body answered {s} (want 413)"));
        }
        Err(e) => {
            out.lost += 1;
            findings.push(format!("{name}: a 2 MiB body got no answer: {e}"));
        }
    }
    answers.push(format!(
        "2 MiB body: {}",
        big.map_or_else(|e| format!("no answer ({e})"), |s| s.to_string())
    ));
    details.push(format!("{name}: {}", answers.join("; ")));
    details.push(format!(
        "{name}: after each hostile request a normal GET /version: {alive_failures} of them failed"
    ));
    if alive_failures > 0 {
        findings.push(format!(
            "{name}: {alive_failures} normal requests failed right after a hostile one"
        ));
    }

    // Slowloris, with normal load alongside.
    let before = resources(pid)?;
    let origin = Instant::now();
    let load = {
        let url = version.clone();
        Load::start(
            origin,
            Bounds {
                rate_per_sec: 20,
                max_requests: 20 * SLOWLORIS_CAP.as_secs(),
                max_duration: SLOWLORIS_CAP + Duration::from_secs(5),
                request_timeout: Duration::from_secs(10),
            },
            Arc::new(move |c, _| c.get(&url)),
        )
    };
    let mut conns = JoinSet::new();
    for i in 0..SLOW_CONNS + SILENT_CONNS {
        let slow = i < SLOW_CONNS;
        conns.spawn(async move { (slow, slow_connection(port, slow).await) });
    }
    let mut peak = before;
    let mut slow_closed = Vec::new();
    let mut silent_closed = Vec::new();
    let mut still_open = 0usize;
    let mut connect_errors = 0usize;
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            joined = conns.join_next() => match joined {
                None => break,
                Some(Ok((true, Ok(Some(d))))) => slow_closed.push(d),
                Some(Ok((false, Ok(Some(d))))) => silent_closed.push(d),
                Some(Ok((_, Ok(None)))) => still_open += 1,
                Some(Ok((_, Err(_)))) | Some(Err(_)) => connect_errors += 1,
            },
            _ = poll.tick() => {
                if let Ok(now) = resources(pid) {
                    peak = Resources { rss_kib: peak.rss_kib.max(now.rss_kib), fds: peak.fds.max(now.fds) };
                }
            }
        }
    }
    let records = load.stop().await?;
    // Let the server notice the connections the drill gave up on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = resources(pid)?;
    let s = Summary::of(&records);
    out.sent += s.sent;
    out.failed += s.failed();
    out.lost += s.lost;
    let lat: Vec<Duration> = records.iter().map(|r| r.latency).collect();
    let p99 = percentile(&lat, 0.99);
    let range = |v: &[Duration]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            format!(
                "{}..{} (median {})",
                secs(percentile(v, 0.0)),
                secs(percentile(v, 1.0)),
                secs(percentile(v, 0.5))
            )
        }
    };
    details.push(format!(
        "{name} slowloris: {SLOW_CONNS} connections sending the head one byte a second, {SILENT_CONNS} sending nothing; closed by the server: {} slow after {}, {} silent after {}; still open after {}: {still_open}; connect errors: {connect_errors}",
        slow_closed.len(),
        range(&slow_closed),
        silent_closed.len(),
        range(&silent_closed),
        secs(SLOWLORIS_CAP)
    ));
    details.push(format!(
        "{name} during the slowloris, GET /version at 20 req/s: {}, p99 {} (bound {})",
        describe(&s),
        ms(p99),
        ms(PROMPT)
    ));
    details.push(format!(
        "{name} (pid {pid}) RSS: {} at the start, {} before the slowloris, peak {}, {} after (bound +{}); open fds {} before, peak {}, {} after",
        procstat::mib(start.rss_kib),
        procstat::mib(before.rss_kib),
        procstat::mib(peak.rss_kib),
        procstat::mib(after.rss_kib),
        procstat::mib(RSS_BOUND_KIB),
        before.fds,
        peak.fds,
        after.fds
    ));
    let all_closed: Vec<Duration> = slow_closed.iter().chain(&silent_closed).copied().collect();
    out.slowest_close = all_closed.iter().max().copied();
    if still_open > 0 || connect_errors > 0 {
        findings.push(format!(
            "{name}: {still_open} slow connections were still open after {} (no header-read timeout), {connect_errors} could not connect",
            secs(SLOWLORIS_CAP)
        ));
    } else if percentile(&all_closed, 1.0) > HEADER_READ_TIMEOUT + CLOSE_MARGIN
        || percentile(&all_closed, 0.0) + Duration::from_millis(500) < HEADER_READ_TIMEOUT
    {
        findings.push(format!(
            "{name}: slow connections were closed after {}, not at the header-read timeout {} (+{})",
            range(&all_closed),
            secs(HEADER_READ_TIMEOUT),
            secs(CLOSE_MARGIN)
        ));
    }
    if s.failed() > 0 || s.lost > 0 || p99 > PROMPT {
        findings.push(format!(
            "{name}: normal requests during the slowloris: {}, p99 {}",
            describe(&s),
            ms(p99)
        ));
    }
    if peak.rss_kib > before.rss_kib + RSS_BOUND_KIB
        || after.rss_kib > before.rss_kib + RSS_BOUND_KIB
        || after.fds > before.fds + FD_BOUND
    {
        findings.push(format!(
            "{name}: resources not bounded: RSS {} -> peak {} -> {}, fds {} -> {}",
            procstat::mib(before.rss_kib),
            procstat::mib(peak.rss_kib),
            procstat::mib(after.rss_kib),
            before.fds,
            after.fds
        ));
    }
    let ready = client
        .get(target.process.admin_url("/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map(|r| r.status().as_u16());
    out.sent += 1;
    if ready.as_ref().ok() != Some(&200) {
        out.failed += 1;
        findings.push(format!("{name}: /readyz after the drill: {ready:?}"));
    }
    Ok(out)
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Drill 7c of issue 9.
pub async fn hostile_input(settings: &Settings) -> Result<Row> {
    let client = reqwest::Client::new();
    let dir = tempfile::Builder::new().prefix("cloud-drills-").tempdir()?;
    let identity = Identity::start(&settings.binaries, None).await?;
    let upstream = spawn_upstream().await?;
    let gateway = start_gateway(
        &settings.binaries,
        &identity.issuer,
        upstream,
        None,
        dir.path(),
    )
    .await?;
    let token = identity.admin_token(&client).await?;
    let basic = base64(format!("{BOOTSTRAP_CLIENT}:{}", identity.admin_secret).as_bytes());
    let big = vec![b'a'; 2 * 1024 * 1024];

    let mut details = Vec::new();
    let mut findings = Vec::new();
    let identity_target = Target {
        name: "identity",
        process: &identity.process,
        cases: identity_cases(&token, &basic),
        big_body: client
            .post(identity.process.url("/oauth2/token"))
            .basic_auth(BOOTSTRAP_CLIENT, Some(&identity.admin_secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(big.clone()),
    };
    let gateway_target = Target {
        name: "gateway",
        process: &gateway,
        cases: gateway_cases(&token),
        big_body: client
            .post(gateway.url("/api/upload"))
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .body(big),
    };
    let mut totals = Vec::new();
    for target in [identity_target, gateway_target] {
        totals.push(attack(target, &client, &mut details, &mut findings).await?);
    }
    let sum = |f: fn(&Outcomes) -> u64| totals.iter().map(f).sum::<u64>();
    let (sent, failed, lost, rejections) = (
        sum(|o| o.sent),
        sum(|o| o.failed),
        sum(|o| o.lost),
        sum(|o| o.expected_rejections),
    );
    details.push(format!(
        "failed = {failed}: {rejections} are the expected rejections of hostile requests (431, 400, 404, 401, 415, 413), {} are not",
        failed.saturating_sub(rejections)
    ));
    let slowest = totals.iter().filter_map(|o| o.slowest_close).max();
    Ok(Row {
        drill: "Hostile input",
        sent,
        failed,
        lost,
        recovery: slowest.map_or_else(
            || "slow clients never closed".into(),
            |d| format!("slow clients closed after <= {}", secs(d)),
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
    fn base64_matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn raw_requests_carry_the_bytes_as_given() {
        let r = raw("POST", b"/a/\xff", &[h("X", b"\xfe")], b"{\xff}");
        assert!(r.starts_with(b"POST /a/\xff HTTP/1.1\r\n"));
        assert!(r.windows(6).any(|w| w == b"X: \xfe\r\n"));
        assert!(r.ends_with(b"Content-Length: 3\r\n\r\n{\xff}"));
        assert_eq!(
            parse_status(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            Some(431)
        );
        assert_eq!(parse_status(b"garbage"), None);
    }

    /// A server that never reads a head to its end is held only until the drill gives up; one
    /// that closes is seen closing.
    #[tokio::test]
    async fn a_closed_slow_connection_is_measured() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(socket);
        });
        let closed = slow_connection(port, true).await.unwrap().unwrap();
        assert!(
            closed >= Duration::from_millis(250) && closed < Duration::from_secs(5),
            "{closed:?}"
        );
    }
}
