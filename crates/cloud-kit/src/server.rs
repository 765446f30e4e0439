//! Binds a service's API and admin listeners and runs them until shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Readiness};
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, Signals};

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
    app: Router,
    app_listener: TcpListener,
    admin_listener: TcpListener,
    readiness: Readiness,
    metrics: Metrics,
    shutdown: Shutdown,
    drain_period: Duration,
    shutdown_timeout: Duration,
    listen_for_signals: bool,
    signals: Option<Signals>,
}

impl Server {
    /// Binds both listeners and wraps `router` in the standard middleware stack.
    pub async fn bind(
        name: &'static str,
        config: &ServerConfig,
        router: Router,
        readiness: Readiness,
        metrics: Metrics,
    ) -> Result<Self, ServerError> {
        let app_addr = SocketAddr::new(config.host, config.port);
        let admin_addr = SocketAddr::new(config.host, config.admin_port);
        let app_listener =
            TcpListener::bind(app_addr)
                .await
                .map_err(|source| ServerError::Bind {
                    what: "api",
                    addr: app_addr,
                    source,
                })?;
        let admin_listener =
            TcpListener::bind(admin_addr)
                .await
                .map_err(|source| ServerError::Bind {
                    what: "admin",
                    addr: admin_addr,
                    source,
                })?;
        let app = crate::http_layers::apply(router, metrics.clone(), config.max_body_bytes);
        Ok(Self {
            name,
            app,
            app_listener,
            admin_listener,
            readiness,
            metrics,
            shutdown: Shutdown::new(),
            drain_period: config.drain_period,
            shutdown_timeout: config.shutdown_timeout,
            listen_for_signals: true,
            signals: None,
        })
    }

    pub fn port(&self) -> u16 {
        self.app_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
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
            app_listener,
            admin_listener,
            readiness,
            metrics,
            shutdown,
            drain_period,
            shutdown_timeout,
            listen_for_signals,
            signals,
        } = self;
        // Before the listeners serve anything: see `install_signal_handlers`.
        let signals = listen_for_signals.then(|| signals.unwrap_or_else(Signals::install));
        let stop_app = CancellationToken::new();
        let stop_admin = CancellationToken::new();
        let admin_router = admin::router(readiness.clone(), metrics);
        let mut app_task = tokio::spawn({
            let stop = stop_app.clone();
            async move {
                axum::serve(
                    app_listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            }
        });
        let mut admin_task = tokio::spawn({
            let stop = stop_admin.clone();
            async move {
                axum::serve(admin_listener, admin_router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            }
        });
        let signals = async {
            match signals {
                Some(signals) => signals.recv().await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = shutdown.triggered() => tracing::info!(service = name, "shutdown requested"),
            () = signals => {}
            result = &mut app_task => return serve_result("api", result),
            result = &mut admin_task => return serve_result("admin", result),
        }
        readiness.start_draining();
        tracing::info!(service = name, drain = ?drain_period, "readiness now fails; draining before closing the listener");
        tokio::time::sleep(drain_period).await;
        stop_app.cancel();
        let app_result = match tokio::time::timeout(shutdown_timeout, &mut app_task).await {
            Ok(result) => serve_result("api", result),
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
