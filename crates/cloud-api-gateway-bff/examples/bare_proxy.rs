//! The floor under the gateway, for `bench/gateway/run.sh`: the same hyper server and pooled
//! hyper client on the same runtime model (`EventLoops::PerCore`: a single-threaded runtime and
//! an `SO_REUSEPORT` listener per core, a pool per event loop), forwarding every request as it
//! came and doing nothing else: no routing, token, rate limit, headers, metrics or request id.
//! What the gateway costs above this is the cost of its features.
//!
//! Usage: `bare_proxy <listen port> <upstream host:port>`

use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare_proxy <listen port> <upstream host:port>");
    };
    let listen = SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>()?));
    let upstream: hyper::http::uri::Authority = upstream.parse()?;
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

fn event_loop(listen: SocketAddr, upstream: hyper::http::uri::Authority) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(1024)?;
        loop {
            let (stream, _) = listener.accept().await?;
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let forward = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (client, upstream) = (client.clone(), upstream.clone());
                    async move {
                        let (mut parts, body) = request.into_parts();
                        let mut uri = parts.uri.into_parts();
                        uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
                        uri.authority = Some(upstream);
                        parts.uri = Uri::from_parts(uri).unwrap_or_default();
                        let response = client.request(Request::from_parts(parts, body)).await;
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
