//! The floor under the gateway, for `bench/gateway/run.sh`: the same hyper server and upstream
//! pool (`cloud_api_gateway_bff::upstream`) on the same runtime model (`EventLoops::PerCore`: a
//! single-threaded runtime and an `SO_REUSEPORT` listener per core, idle connections per event
//! loop), forwarding every request as it came and doing nothing else: no routing, token, rate limit, headers, metrics or request id.
//! What the gateway costs above this is the cost of its features.
//!
//! Usage: `bare_proxy <listen port> <upstream host:port>`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cloud_api_gateway_bff::upstream::{PoolSettings, UpstreamPool};
use hyper::Request;
use hyper::body::Incoming;
use hyper::http::uri::Authority;
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare_proxy <listen port> <upstream host:port>");
    };
    let listen = SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>()?));
    let upstream: Authority = upstream.parse()?;
    let loops = cloud_kit::server::per_core_event_loops();
    let threads = (0..loops)
        .map(|_| {
            let upstream = upstream.clone();
            std::thread::spawn(move || event_loop(listen, upstream))
        })
        .collect::<Vec<_>>();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("an event loop panicked"))??;
    }
    Ok(())
}

fn event_loop(listen: SocketAddr, upstream: Authority) -> anyhow::Result<()> {
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
            let (pool, upstream) = (Arc::clone(&pool), upstream.clone());
            tokio::spawn(async move {
                // The request goes on as it came: origin form, with the client's `Host`.
                let forward = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (pool, upstream) = (Arc::clone(&pool), upstream.clone());
                    async move {
                        let response = pool.send(&upstream, request).await;
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
