//! Keep-alive HTTP/1.1 connections to upstreams, pooled per event loop.
//!
//! The gateway used hyper-util's pooled client. This pool does the same job with less work per
//! request, which `bench/gateway/allocs.sh` and `bench/gateway/ab.sh` measure:
//! - The idle list is per event loop (`EventLoops::PerCore`), so a connection is always reused by
//!   the event loop that drives it: no cross-thread wake-up, and its lock is never contended.
//! - A connection goes back to the idle list the moment its response body ends, from the body
//!   itself. hyper-util spawns a task per response to wait for that.
//! - Requests are sent in origin form with the `Host` the caller set, and nothing is formatted or
//!   looked up per request.
//!
//! It keeps what the pooled client gave: a request that a reused connection closed before
//! sending is sent again on another connection (the race with an upstream's keep-alive timeout),
//! connections idle for longer than the idle timeout are closed, and at most `max_idle` per
//! upstream and event loop are kept. A connection that fails, or whose response is dropped
//! before its end, is never reused.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use cloud_kit::PerEventLoop;

/// Why a request did not get a response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: Authority,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {authority}: no connection within {timeout:?}")]
    ConnectTimeout {
        authority: Authority,
        timeout: Duration,
    },
    #[error("upstream request failed: {0}")]
    Request(#[source] hyper::Error),
}

impl UpstreamError {
    /// No connection could be made: the upstream is down or unreachable.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout { .. })
    }
}

/// The pool's limits.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Idle connections kept per upstream and event loop.
    pub max_idle: usize,
}

impl PoolSettings {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            idle_timeout: Duration::from_secs(60),
            max_idle: 256,
        }
    }
}

/// Connections to any number of upstreams (a route has a few), one idle list per event loop.
#[derive(Debug)]
pub struct UpstreamPool<B> {
    /// One per event loop, and one for callers off the event loops (tests, a runtime of their
    /// own), whose connections are driven elsewhere.
    loops: PerEventLoop<Arc<LoopPool<B>>>,
}

/// One event loop's idle connections. Aligned to a cache line pair of its own, and the response
/// body that checks a connection back in holds an `Arc` of this, not of the pool: both are
/// written on every request, and a line written by both loops' cores costs 35 to 80 ns per
/// atomic (`bench/gateway/cacheline.sh`).
#[derive(Debug)]
#[repr(align(128))]
struct LoopPool<B> {
    settings: PoolSettings,
    idle: Mutex<LoopIdle<B>>,
}

/// Idle connections by upstream. A linear search: a route has one upstream, two with a canary.
/// Lists are only ever added, so a list's index names its upstream for good.
#[derive(Debug)]
struct LoopIdle<B> {
    by_upstream: Vec<(Authority, VecDeque<Idle<B>>)>,
}

#[derive(Debug)]
struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

impl<B> UpstreamPool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            loops: PerEventLoop::new(|| {
                Arc::new(LoopPool {
                    settings,
                    idle: Mutex::new(LoopIdle {
                        by_upstream: Vec::new(),
                    }),
                })
            }),
        }
    }

    /// Sends `request` (origin form, with its `Host` set) to `upstream` on an idle connection
    /// of this event loop, or on a new one. Only a request that was not written is sent again.
    pub async fn send(
        &self,
        upstream: &Authority,
        mut request: Request<B>,
    ) -> Result<Response<PooledBody<B>>, UpstreamError> {
        let pool = self.loops.get();
        let list = pool.list_of(upstream);
        while let Some(mut sender) = pool.take_idle(list) {
            // Usually ready at once; just after its last response ended, the connection may need
            // one more turn of its task to be idle again.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(pooled(response, sender, pool, list)),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Request(failed.into_error())),
                },
            }
        }
        let mut sender = Self::connect(upstream, pool.settings.connect_timeout).await?;
        sender.ready().await.map_err(UpstreamError::Request)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Request)?;
        Ok(pooled(response, sender, pool, list))
    }

    async fn connect(
        upstream: &Authority,
        timeout: Duration,
    ) -> Result<SendRequest<B>, UpstreamError> {
        // An IPv6 literal is bracketed in an authority, not in a socket address.
        let host = upstream
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = upstream.port_u16().unwrap_or(80);
        let stream = match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    authority: upstream.clone(),
                    timeout,
                });
            }
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    authority: upstream.clone(),
                    source,
                });
            }
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Request)?;
        // Driven by this event loop for as long as a sender (idle or busy) or the exchange in
        // flight needs it; upgrades (WebSocket) take the connection over at the end.
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

fn pooled<B>(
    response: Response<Incoming>,
    sender: SendRequest<B>,
    pool: &Arc<LoopPool<B>>,
    list: usize,
) -> Response<PooledBody<B>> {
    // An upgraded connection belongs to the tunnel now.
    let reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
    let mut checkin = reusable.then(|| Checkin {
        pool: Arc::clone(pool),
        list,
        sender,
    });
    response.map(|incoming| {
        // A response without a body (HEAD, 204, 304, `Content-Length: 0`) is complete now,
        // and the server that sends it on may never poll it.
        if incoming.is_end_stream()
            && let Some(checkin) = checkin.take()
        {
            checkin.release();
        }
        PooledBody { incoming, checkin }
    })
}

impl<B> LoopPool<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, LoopIdle<B>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The index of `upstream`'s idle list, added if it has none yet.
    fn list_of(&self, upstream: &Authority) -> usize {
        let mut idle = self.lock();
        match idle
            .by_upstream
            .iter()
            .position(|(authority, _)| authority == upstream)
        {
            Some(index) => index,
            None => {
                idle.by_upstream.push((upstream.clone(), VecDeque::new()));
                idle.by_upstream.len() - 1
            }
        }
    }

    fn take_idle(&self, list: usize) -> Option<SendRequest<B>> {
        let mut idle = self.lock();
        let (_, list) = idle.by_upstream.get_mut(list)?;
        let now = Instant::now();
        // The most recently used first: the oldest then age out rather than all staying warm.
        while let Some(entry) = list.pop_back() {
            if !entry.sender.is_closed()
                && now.saturating_duration_since(entry.since) < self.settings.idle_timeout
            {
                return Some(entry.sender);
            }
        }
        None
    }

    fn put_idle(&self, list: usize, sender: SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        let Some((_, list)) = idle.by_upstream.get_mut(list) else {
            return;
        };
        let now = Instant::now();
        // Dropping a sender closes its idle connection.
        while list.front().is_some_and(|oldest| {
            oldest.sender.is_closed()
                || now.saturating_duration_since(oldest.since) >= self.settings.idle_timeout
        }) {
            list.pop_front();
        }
        if list.len() < self.settings.max_idle {
            list.push_back(Idle { sender, since: now });
        }
    }
}

/// A connection on its way back to the idle list it came from.
struct Checkin<B> {
    pool: Arc<LoopPool<B>>,
    list: usize,
    sender: SendRequest<B>,
}

impl<B> Checkin<B> {
    fn release(self) {
        self.pool.put_idle(self.list, self.sender);
    }
}

/// An upstream response's body, which returns its connection to the pool when it ends.
pub struct PooledBody<B> {
    incoming: Incoming,
    checkin: Option<Checkin<B>>,
}

impl<B> Body for PooledBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.incoming).poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !this.incoming.is_end_stream() => {}
            // A connection that failed mid-body is dropped, never reused.
            Some(Err(_)) => this.checkin = None,
            Some(Ok(_)) | None => {
                if let Some(checkin) = this.checkin.take() {
                    checkin.release();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl<B> std::fmt::Debug for PooledBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("reusable", &self.checkin.is_some())
            .finish_non_exhaustive()
    }
}
