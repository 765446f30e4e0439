//! The floor under the gateway, for `bench/gateway/run.sh`: the same hyper server and upstream
//! pool (`cloud_api_gateway_bff::upstream`) on the same runtime model (`EventLoops::PerCore`: a
//! single-threaded runtime and an `SO_REUSEPORT` listener per core, idle connections per event
//! loop), forwarding every request as it came and doing nothing else: no routing, token, rate limit, headers, metrics or request id.
//! What the gateway costs above this is the cost of its features.
//!
//! With `required-headers`, it also adds the headers the gateway must add, with values of the
//! gateway's sizes, fixed: seven on the way up (forwarding, trace context, request id, tenant
//! and user) and seven on the way back (request id, three `RateLimit-*`, three security
//! headers). The gap between the two floors is what those headers cost by themselves: in this
//! process, and in the upstream and the load generator, which parse them on the same cores
//! (`bench/gateway/breakdown.sh`).
//!
//! Usage: `bare_proxy <listen port> <upstream host:port> [required-headers]`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cloud_api_gateway_bff::upstream::{PoolSettings, UpstreamPool};
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::Authority;
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    const USAGE: &str = "usage: bare_proxy <listen port> <upstream host:port> [required-headers]";
    let (Some(port), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!(USAGE);
    };
    let required_headers = match args.next().as_deref() {
        None => false,
        Some("required-headers") => true,
        Some(other) => anyhow::bail!("unknown argument `{other}`; {USAGE}"),
    };
    let listen = SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>()?));
    let upstream: Authority = upstream.parse()?;
    let loops = cloud_kit::server::per_core_event_loops();
    let threads = (0..loops)
        .map(|_| {
            let upstream = upstream.clone();
            std::thread::spawn(move || event_loop(listen, upstream, required_headers))
        })
        .collect::<Vec<_>>();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("an event loop panicked"))??;
    }
    Ok(())
}

/// The headers the gateway adds, each with a value as long as the gateway's.
struct RequiredHeaders {
    upstream: Vec<(HeaderName, HeaderValue)>,
    response: Vec<(HeaderName, HeaderValue)>,
}

impl RequiredHeaders {
    fn new() -> anyhow::Result<Self> {
        let pairs = |list: &[(&'static str, &'static str)]| {
            list.iter()
                .map(|(name, value)| {
                    Ok((HeaderName::from_static(name), HeaderValue::from_str(value)?))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        };
        const REQUEST_ID: &str = "5c8f0b1e-2d4a-4f7e-9b3c-6a1d2e3f4a5b";
        Ok(Self {
            upstream: pairs(&[
                ("x-forwarded-for", "127.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "127.0.0.1:40000"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("x-request-id", REQUEST_ID),
                ("x-tenant-id", "bench-tenant"),
                ("x-user-id", "bench-user"),
            ])?,
            response: pairs(&[
                ("x-request-id", REQUEST_ID),
                ("x-content-type-options", "nosniff"),
                ("x-frame-options", "DENY"),
                ("referrer-policy", "no-referrer"),
                ("ratelimit-limit", "500000"),
                ("ratelimit-remaining", "499999"),
                ("ratelimit-reset", "1"),
            ])?,
        })
    }

    /// Appended on the way up, as the gateway does once the client's copies are removed.
    fn add_upstream(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.upstream {
            headers.append(name.clone(), value.clone());
        }
    }

    /// Inserted on the way back, as the gateway does over whatever the upstream sent.
    fn add_response(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.response {
            headers.insert(name.clone(), value.clone());
        }
    }
}

fn event_loop(
    listen: SocketAddr,
    upstream: Authority,
    required_headers: bool,
) -> anyhow::Result<()> {
    // One copy per event loop, like the pool, so that no reference count is shared between
    // the loops' cores.
    let headers = required_headers
        .then(RequiredHeaders::new)
        .transpose()?
        .map(Arc::new);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let pool: Arc<UpstreamPool<Incoming>> =
            Arc::new(UpstreamPool::new(PoolSettings::new(Duration::from_secs(5))));
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(1024)?;
        loop {
            let (stream, _) = listener.accept().await?;
            let (pool, upstream, headers) = (Arc::clone(&pool), upstream.clone(), headers.clone());
            tokio::spawn(async move {
                // The request goes on as it came: origin form, with the client's `Host`.
                let forward = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    let (pool, upstream, headers) =
                        (Arc::clone(&pool), upstream.clone(), headers.clone());
                    async move {
                        if let Some(headers) = &headers {
                            headers.add_upstream(request.headers_mut());
                        }
                        let mut response = pool.send(&upstream, request).await;
                        if let (Some(headers), Ok(response)) = (&headers, &mut response) {
                            headers.add_response(response.headers_mut());
                        }
                        Ok::<_, Infallible>(response.map_or_else(
                            |_| {
                                let mut bad_gateway = hyper::Response::new(
                                    http_body_util::Either::Right(http_body_util::Empty::new()),
                                );
                                *bad_gateway.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                                bad_gateway
                            },
                            |response| response.map(http_body_util::Either::Left),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), forward)
                    .await;
            });
        }
    })
}
