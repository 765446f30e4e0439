//! Binds a service's API and admin listeners and runs them until shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Readiness};
use crate::config::ServerConfig;
use crate::http_layers::{Api, ApiFuture, DirectHandlerFactory};
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, Signals};

/// Where the API listener's connections are served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EventLoops {
    /// On the runtime that runs the server: tokio's work-stealing pool.
    #[default]
    Shared,
    /// On one thread per available core, each with its own single-threaded runtime and its own
    /// `SO_REUSEPORT` listener on the same port, as nginx runs a worker per core: the kernel
    /// spreads the connections, and everything a connection does stays on one core, with no
    /// work stealing or cross-thread wake-ups. For a proxy, whose work per request is small
    /// and all I/O, that is about a quarter less CPU per request (docs/benchmarks.md). Shared
    /// state must be `Send + Sync`, as with `Shared`; the server's other tasks (admin listener,
    /// background refreshers) stay on the calling runtime.
    PerCore,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the {what} listener failed: {source}")]
    Serve {
        what: &'static str,
        source: std::io::Error,
    },
}

/// A service with its listeners bound. `port()` is known before `run_until_stopped()`, which is
/// what tests on port 0 need.
#[derive(Debug)]
pub struct Server {
    name: &'static str,
    app: Api,
    /// One per event loop; all on the same address.
    app_listeners: Vec<TcpListener>,
    admin_listener: TcpListener,
    readiness: Readiness,
    metrics: Metrics,
    shutdown: Shutdown,
    drain_period: Duration,
    shutdown_timeout: Duration,
    limits: ConnectionLimits,
    listen_for_signals: bool,
    signals: Option<Signals>,
}

impl Server {
    /// Binds both listeners and wraps `router` in the standard middleware stack; the API is
    /// served on the calling runtime ([`EventLoops::Shared`]).
    pub async fn bind(
        name: &'static str,
        config: &ServerConfig,
        router: Router,
        readiness: Readiness,
        metrics: Metrics,
    ) -> Result<Self, ServerError> {
        Self::bind_with(name, config, router, readiness, metrics, EventLoops::Shared).await
    }

    /// [`Self::bind`], with the API served on `event_loops`.
    pub async fn bind_with(
        name: &'static str,
        config: &ServerConfig,
        router: Router,
        readiness: Readiness,
        metrics: Metrics,
        event_loops: EventLoops,
    ) -> Result<Self, ServerError> {
        let app_addr = SocketAddr::new(config.host, config.port);
        let admin_addr = SocketAddr::new(config.host, config.admin_port);
        let app_listeners = match event_loops {
            EventLoops::Shared => vec![bind_one("api", app_addr).await?],
            EventLoops::PerCore => bind_reuseport(app_addr, per_core_event_loops())?,
        };
        let admin_listener = bind_one("admin", admin_addr).await?;
        let app = Api::new(
            router,
            metrics.clone(),
            config.max_body_bytes,
            readiness.clone(),
        );
        Ok(Self {
            name,
            app,
            app_listeners,
            admin_listener,
            readiness,
            metrics,
            shutdown: Shutdown::new(),
            drain_period: config.drain_period,
            shutdown_timeout: config.shutdown_timeout,
            limits: ConnectionLimits {
                header_read_timeout: config.header_read_timeout,
                max_header_bytes: config.max_header_bytes,
            },
            listen_for_signals: true,
            signals: None,
        })
    }

    pub fn port(&self) -> u16 {
        self.app_listeners
            .first()
            .and_then(|l| l.local_addr().ok())
            .map_or(0, |a| a.port())
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A handle that starts the shutdown sequence, as SIGTERM would.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Serves every request whose path is not one of `owned_paths` (the router's own routes,
    /// exact paths) with `handler`, without going through the router: for a proxy, whose every
    /// other path is its fallback, and for which the router's per-request work (boxed route
    /// futures, cloned route services, URL parameters) is a noticeable share of the whole.
    /// `handler` gets the same standard work as a route (request id, trace context, RED
    /// metrics under the `unmatched` route, panic to 500), but no default body limit: it
    /// applies its own. Keep the same handler as the router's fallback, so that a path missing
    /// from `owned_paths` is still answered the same way. `make_handler` is called once per
    /// [`EventLoops::PerCore`] event loop, on its thread, and once for everything else.
    pub fn with_direct_fallback(
        mut self,
        owned_paths: Vec<String>,
        make_handler: DirectHandlerFactory,
    ) -> Self {
        self.app = self.app.with_direct(owned_paths, make_handler);
        self
    }

    /// Uses `shutdown` as this server's trigger (e.g. one handle for several services).
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Installs the SIGTERM/SIGINT handlers now, unless [`Self::without_signals`] was called.
    /// Call it before announcing that the service listens: from then on a SIGTERM drains the
    /// service instead of killing it. `run_until_stopped` installs them if this was not called.
    pub fn install_signal_handlers(&mut self) {
        if self.listen_for_signals && self.signals.is_none() {
            self.signals = Some(Signals::install());
        }
    }

    /// Stops only on the shutdown handle, not on process signals (embedding, tests).
    pub fn without_signals(mut self) -> Self {
        self.listen_for_signals = false;
        self.signals = None;
        self
    }

    /// Serves until SIGTERM/SIGINT or the shutdown handle, then: readiness fails, the drain
    /// period passes (still serving), the API listener stops accepting, and in-flight requests
    /// get `shutdown_timeout` to finish. The admin listener stops last.
    pub async fn run_until_stopped(self) -> Result<(), ServerError> {
        let Self {
            name,
            app,
            app_listeners,
            admin_listener,
            readiness,
            metrics,
            shutdown,
            drain_period,
            shutdown_timeout,
            limits,
            listen_for_signals,
            signals,
        } = self;
        // Before the listeners serve anything: see `install_signal_handlers`.
        let signals = listen_for_signals.then(|| signals.unwrap_or_else(Signals::install));
        let stop_app = CancellationToken::new();
        let stop_admin = CancellationToken::new();
        let admin_router = admin::router(readiness.clone(), metrics);
        let mut app_task = ApiServing::start(
            app_listeners,
            app,
            limits,
            stop_app.clone(),
            readiness.clone(),
        )?;
        let mut admin_task = tokio::spawn(serve(
            admin_listener,
            Api::bare(admin_router),
            limits,
            stop_admin.clone(),
            None,
            Handle::current(),
        ));
        let signals = async {
            match signals {
                Some(signals) => signals.recv().await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = shutdown.triggered() => tracing::info!(service = name, "shutdown requested"),
            () = signals => {}
            result = app_task.finished() => return result,
            result = &mut admin_task => return serve_result("admin", result),
        }
        readiness.start_draining();
        tracing::info!(service = name, drain = ?drain_period, "readiness now fails; draining before closing the listener");
        tokio::time::sleep(drain_period).await;
        stop_app.cancel();
        let app_result = match tokio::time::timeout(shutdown_timeout, app_task.finished()).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(service = name, timeout = ?shutdown_timeout, "in-flight requests did not finish in time; closing them");
                app_task.abort();
                Ok(())
            }
        };
        stop_admin.cancel();
        let admin_result = serve_result("admin", admin_task.await);
        tracing::info!(service = name, "stopped");
        app_result.and(admin_result)
    }
}

/// How many event loops [`EventLoops::PerCore`] runs: the cores this process may use (its
/// cgroup's CPU quota included, as in a Kubernetes pod with a CPU limit). Read once: the std
/// call reads the cgroup files each time, and whatever is kept per event loop (a proxy's
/// upstream pools, built again on every route reload) must agree with the listeners' count.
pub fn per_core_event_loops() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES
        .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

thread_local! {
    static EVENT_LOOP: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The index (below [`per_core_event_loops`]) of the [`EventLoops::PerCore`] thread the caller
/// runs on, `None` elsewhere: for state kept per event loop, such as a proxy's upstream pools.
pub fn current_event_loop() -> Option<usize> {
    EVENT_LOOP.with(std::cell::Cell::get)
}

/// Marks the calling thread as event loop `index` for its whole life: the server does it for
/// its [`EventLoops::PerCore`] threads, and a test does it to act as one of them.
pub fn set_current_event_loop(index: usize) {
    EVENT_LOOP.with(|current| current.set(Some(index)));
}

async fn bind_one(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

/// `count` listeners on `addr`, all with `SO_REUSEPORT`: the kernel spreads new connections
/// over them. Port 0 picks a free port once and the others share it. (Linux lets only sockets
/// of the same user join a port's group, so another user cannot take a share of the traffic.)
fn bind_reuseport(addr: SocketAddr, count: usize) -> Result<Vec<TcpListener>, ServerError> {
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let failed = |source| ServerError::Bind {
            what: "api",
            addr,
            source,
        };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(failed)?;
        socket.set_reuseaddr(true).map_err(failed)?;
        socket.set_reuseport(true).map_err(failed)?;
        socket.bind(addr).map_err(failed)?;
        let listener = socket.listen(1024).map_err(failed)?;
        addr = listener.local_addr().map_err(failed)?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The API listeners being served, as [`EventLoops`] chose.
enum ApiServing {
    Shared(tokio::task::JoinHandle<std::io::Result<()>>),
    PerCore(PerCoreServing),
}

struct PerCoreServing {
    /// One result per event loop, when its listener has stopped and its connections ended.
    results: mpsc::UnboundedReceiver<std::io::Result<()>>,
    running: usize,
    /// Drops every connection still open (the shutdown timeout has passed).
    abort: CancellationToken,
    /// Lets the event loops' runtimes end: see [`serve_on_own_thread`].
    release: CancellationToken,
}

impl Drop for PerCoreServing {
    fn drop(&mut self) {
        self.abort.cancel();
        self.release.cancel();
    }
}

impl ApiServing {
    fn start(
        mut listeners: Vec<TcpListener>,
        app: Api,
        limits: ConnectionLimits,
        stop: CancellationToken,
        readiness: Readiness,
    ) -> Result<Self, ServerError> {
        let linger_on = Handle::current();
        // One listener (`Shared`, or `PerCore` on one core): nothing to spread, so it is served
        // on the calling runtime.
        if listeners.len() == 1
            && let Some(listener) = listeners.pop()
        {
            return Ok(Self::Shared(tokio::spawn(serve(
                listener,
                app,
                limits,
                stop,
                Some(readiness),
                linger_on,
            ))));
        }
        let (results, receiver) = mpsc::unbounded_channel();
        let serving = PerCoreServing {
            results: receiver,
            running: listeners.len(),
            abort: CancellationToken::new(),
            release: CancellationToken::new(),
        };
        for (index, listener) in listeners.into_iter().enumerate() {
            let failed = |source| ServerError::Serve {
                what: "api",
                source,
            };
            // Registered again with the event loop's own runtime there.
            let listener = listener.into_std().map_err(failed)?;
            let event_loop = EventLoop {
                index,
                listener,
                app: app.clone(),
                limits,
                stop: stop.clone(),
                readiness: readiness.clone(),
                linger_on: linger_on.clone(),
                abort: serving.abort.clone(),
                release: serving.release.clone(),
                results: results.clone(),
            };
            std::thread::Builder::new()
                .name(format!("api-{index}"))
                .spawn(move || serve_on_own_thread(event_loop))
                .map_err(failed)?;
        }
        Ok(Self::PerCore(serving))
    }

    /// Waits until every listener has stopped and its connections have ended.
    async fn finished(&mut self) -> Result<(), ServerError> {
        match self {
            Self::Shared(task) => serve_result("api", task.await),
            Self::PerCore(serving) => {
                while serving.running > 0 {
                    match serving.results.recv().await {
                        Some(Ok(())) => serving.running -= 1,
                        Some(Err(source)) => {
                            return Err(ServerError::Serve {
                                what: "api",
                                source,
                            });
                        }
                        None => break,
                    }
                }
                serving.release.cancel();
                Ok(())
            }
        }
    }

    /// Drops the connections still open.
    fn abort(&self) {
        match self {
            Self::Shared(task) => task.abort(),
            Self::PerCore(serving) => {
                serving.abort.cancel();
                serving.release.cancel();
            }
        }
    }
}

/// What one [`EventLoops::PerCore`] thread serves.
struct EventLoop {
    index: usize,
    listener: std::net::TcpListener,
    app: Api,
    limits: ConnectionLimits,
    stop: CancellationToken,
    readiness: Readiness,
    linger_on: Handle,
    abort: CancellationToken,
    release: CancellationToken,
    results: mpsc::UnboundedSender<std::io::Result<()>>,
}

/// How often an event loop's own timer fires, to keep a timer due soon (see
/// [`serve_on_own_thread`]): two wake-ups a second of an idle loop.
const NEAR_TIMER_PERIOD: Duration = Duration::from_millis(500);

/// Serves one listener on a single-threaded runtime of its own, then keeps that runtime running
/// until every event loop is done: what a runtime spawned (a pooled upstream connection, a
/// client's background task) may be in use by a connection of another event loop that is still
/// draining.
fn serve_on_own_thread(event_loop: EventLoop) {
    let EventLoop {
        index,
        listener,
        app,
        limits,
        stop,
        readiness,
        linger_on,
        abort,
        release,
        results,
    } = event_loop;
    set_current_event_loop(index);
    let app = app.for_event_loop();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = results.send(Err(err));
            return;
        }
    };
    runtime.block_on(async move {
        // tokio wakes its own driver, with an eventfd `write`, whenever a new timer is due before
        // every timer the driver parked with, and always when it parked with none: an idle
        // loop's next request deadline did that, on about one request in seven under load
        // (bench/gateway/syscalls.sh). A timer always due within `NEAR_TIMER_PERIOD` makes a
        // deadline of seconds never the earliest. The task ends with the runtime.
        tokio::spawn(async {
            let mut tick = tokio::time::interval(NEAR_TIMER_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
            }
        });
        let result = match TcpListener::from_std(listener) {
            Ok(listener) => tokio::select! {
                result = serve(listener, app, limits, stop, Some(readiness), linger_on) => result,
                () = abort.cancelled() => Ok(()),
            },
            Err(err) => Err(err),
        };
        let _ = results.send(result);
        release.cancelled().await;
    });
}

fn serve_result(
    what: &'static str,
    joined: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> Result<(), ServerError> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(ServerError::Serve { what, source }),
        Err(join) => Err(ServerError::Serve {
            what,
            source: std::io::Error::other(join.to_string()),
        }),
    }
}

/// What bounds one client connection.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    header_read_timeout: Duration,
    max_header_bytes: usize,
}

/// hyper refuses a smaller read buffer (it panics).
const MIN_HEADER_BYTES: usize = 8192;

/// The HTTP/2 connection preface; a client sending it speaks h2c.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Accepts and serves connections (HTTP/1.1 with upgrades, and h2c) until `stop`, then lets
/// every open connection finish gracefully. Instead of `axum::serve`, which installs no timer, so
/// hyper's header-read timeout never runs and a client that sends its head slowly (or nothing)
/// holds its connection forever.
///
/// A connection accepted while `draining` is not cut at `stop`: it was accepted to serve a
/// request, and its response (which says `Connection: close` during the drain) ends it. A load
/// balancer that learns about the shutdown only when the listener closes (nginx's passive health
/// checks) keeps opening connections until then; cutting the last ones at `stop`, before hyper
/// has read the request already sent on them, answers that request with a closed connection,
/// which a proxy does not retry for a POST. The header-read timeout and `shutdown_timeout` still
/// bound such a connection.
async fn serve(
    listener: TcpListener,
    app: Api,
    limits: ConnectionLimits,
    stop: CancellationToken,
    draining: Option<Readiness>,
    linger_on: Handle,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    if !is_connection_error(&err) {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let stop = if draining.as_ref().is_some_and(Readiness::is_draining) {
            CancellationToken::new()
        } else {
            stop.clone()
        };
        connections.spawn(serve_connection(
            stream,
            remote,
            app.clone(),
            limits,
            stop,
            linger_on.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    app: Api,
    limits: ConnectionLimits,
    stop: CancellationToken,
    linger_on: Handle,
) {
    // hyper-util reads the first bytes to choose HTTP/1 or HTTP/2 before hyper's header timer
    // starts, so that wait needs its own bound; a shutdown does not wait for it either.
    tokio::select! {
        known = tokio::time::timeout(limits.header_read_timeout, protocol_known(&stream)) => {
            if !matches!(known, Ok(Ok(()))) {
                return;
            }
        }
        () = stop.cancelled() => return,
    }
    let service = ConnectionService { app, remote };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    let connection = builder.serve_connection_with_upgrades(
        TokioIo::new(LingeringClose::new(stream, linger_on)),
        service,
    );
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::trace!(error = %err, "connection ended with an error");
            }
        }
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// One connection's requests, handed to the API with the peer's address (`ConnectInfo`).
/// hyper's own service trait, which takes `&self`: no clone of the API per request.
struct ConnectionService {
    app: Api,
    remote: SocketAddr,
}

impl hyper::service::Service<http::Request<Incoming>> for ConnectionService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = ApiFuture;

    fn call(&self, mut request: http::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.remote));
        self.app.call(request.map(axum::body::Body::new))
    }
}

/// Waits until the bytes received tell HTTP/1 from HTTP/2, without consuming them.
async fn protocol_known(stream: &TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || n >= H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] {
            return Ok(());
        }
        // A strict prefix of the preface: `peek` would return the same bytes at once, so wait
        // for more instead of spinning.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long, and for how many bytes, a closed connection keeps reading what the client still
/// sends (see [`LingeringClose`]).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 * 1024 * 1024;

/// A client connection that closes the way nginx's `lingering_close` does.
///
/// When the server answers before reading the whole request (a 413 for a body announced too
/// large), the client is still sending. Closing the socket with unread data makes the kernel
/// send a reset, which can reach the client before it reads the answer: it then sees a broken
/// connection instead of the 413 (the hostile-input drill, docs/reliability.md). So when hyper
/// drops the connection, this sends FIN and reads and discards what still comes, for a bounded
/// time and amount, before closing.
struct LingeringClose {
    stream: Option<TcpStream>,
    /// The server's own runtime: the connection's event loop may be ending.
    linger_on: Handle,
}

impl LingeringClose {
    fn new(stream: TcpStream, linger_on: Handle) -> Self {
        Self {
            stream: Some(stream),
            linger_on,
        }
    }

    fn stream(&mut self) -> std::io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
    }
}

impl Drop for LingeringClose {
    fn drop(&mut self) {
        // Moved to `linger_on`'s reactor: registered there again inside the task.
        if let Some(stream) = self.stream.take()
            && let Ok(stream) = stream.into_std()
        {
            self.linger_on.spawn(async move {
                if let Ok(stream) = TcpStream::from_std(stream) {
                    linger(stream).await;
                }
            });
        }
    }
}

async fn linger(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut buf = vec![0u8; 16 * 1024];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

impl tokio::io::AsyncRead for LingeringClose {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(stream) => std::pin::Pin::new(stream).poll_read(cx, buf),
            Err(err) => std::task::Poll::Ready(Err(err)),
        }
    }
}

impl tokio::io::AsyncWrite for LingeringClose {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.stream() {
            Ok(stream) => std::pin::Pin::new(stream).poll_write(cx, buf),
            Err(err) => std::task::Poll::Ready(Err(err)),
        }
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.stream() {
            Ok(stream) => std::pin::Pin::new(stream).poll_write_vectored(cx, bufs),
            Err(err) => std::task::Poll::Ready(Err(err)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(stream) => std::pin::Pin::new(stream).poll_flush(cx),
            Err(err) => std::task::Poll::Ready(Err(err)),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(stream) => std::pin::Pin::new(stream).poll_shutdown(cx),
            Err(err) => std::task::Poll::Ready(Err(err)),
        }
    }
}
