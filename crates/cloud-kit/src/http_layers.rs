//! The middleware stack every service's API router gets, in one place so both services behave
//! the same: request id and trace context, RED metrics, panic-to-problem, body limits, security
//! headers, and problem+json fallbacks.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header::{CONNECTION, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use futures::future::BoxFuture;
use tower::{Layer, Service, ServiceBuilder};
use tracing::Instrument;

use crate::admin::Readiness;
use crate::metrics::{HttpLabels, Metrics};
use crate::problem::Problem;
use crate::trace_context::REQUEST_ID;

/// Wraps every route of `router` in the standard stack (after all routes and any fallback are
/// added).
fn standard_stack(router: Router, shared: Arc<Shared>, max_body_bytes: usize) -> Router {
    // One `Router::layer` call: each wraps every route in another boxed service, so a request
    // pays a boxed future (and a copy of the future it wraps) per call.
    router.layer(
        ServiceBuilder::new()
            .layer(StandardLayer { shared })
            .layer(DefaultBodyLimit::max(max_body_bytes)),
    )
}

/// 404 and 405 as problem+json instead of empty bodies.
pub fn default_fallbacks(router: Router) -> Router {
    router
        .fallback(crate::problem::not_found_fallback)
        .method_not_allowed_fallback(crate::problem::method_not_allowed_fallback)
}

/// Installs [`Standard`] around every route (`Router::layer`: inside the routing, where
/// `MatchedPath` is known).
#[derive(Debug, Clone)]
struct StandardLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    metrics: Metrics,
    readiness: Readiness,
}

impl<S> Layer<S> for StandardLayer {
    type Service = Standard<S>;

    fn layer(&self, inner: S) -> Standard<S> {
        Standard {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// What every request gets, in one service and one future per request (a proxy's whole budget
/// per request is a few tens of microseconds; a `from_fn` middleware per concern costs a boxed
/// future, a cloned service and a boxed `Next` each):
///
/// - its `x-request-id` (the caller's if sane, else new) and trace context, in its extensions
///   and on the request's span, with `x-request-id` echoed in the response;
/// - the RED metrics `http_requests_total` and `http_request_duration_seconds`;
/// - `Connection: close` on an HTTP/1 response when hyper will close the connection or the
///   service drains (below);
/// - `X-Content-Type-Options: nosniff` unless the handler set it;
/// - a handler that panics answers a problem+json 500, and the connection lives on (what
///   tower-http's `CatchPanic` does, done here to save its boxed future).
///
/// A 413 is answered before the body is read, so hyper cannot reuse the HTTP/1 connection and
/// closes it after the response. Without `Connection: close` a keep-alive client does not know
/// that and may send its next request on the dying connection, which then fails with no answer.
///
/// While the service drains (after SIGTERM: readiness fails, the listener still serves), every
/// HTTP/1 response says `Connection: close`, and hyper closes the connection after it. A
/// keep-alive client (a proxy's upstream pool, a pooled client behind an L4 Service) then opens a
/// new connection for its next request instead of reusing this one, so when the listener closes
/// at the end of the drain it holds no connection that races hyper closing it. Without this, a
/// request sent on such a connection at that moment gets no response, and a proxy does not retry
/// a POST it has sent: the rolling-update drill saw nginx log "upstream prematurely closed
/// connection" for a request sent to a replica as its drain ended. It is checked after the
/// handler, so a request in flight when the drain began closes its connection too.
#[derive(Debug, Clone)]
struct Standard<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request> for Standard<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // Called at once, on the service that was polled ready (the tower contract), rather
        // than on a clone inside the future: cloning axum's boxed `Route` is an allocation per
        // request.
        let inner = &mut self.inner;
        self.shared.serve(request, |request| inner.call(request))
    }
}

impl Shared {
    /// The work of [`Standard`] around one request, which `handle` answers.
    fn serve<F>(
        self: &Arc<Self>,
        mut request: Request,
        handle: impl FnOnce(Request) -> F,
    ) -> BoxFuture<'static, Result<Response, Infallible>>
    where
        F: Future<Output = Result<Response, Infallible>> + Send + 'static,
    {
        let shared = self.clone();
        let started = Instant::now();
        let http1 = request.version() < Version::HTTP_2;
        let (method, route) = crate::metrics::request_labels(&request);
        let (span, request_id) = crate::trace_context::begin(&mut request);
        let called =
            std::panic::catch_unwind(AssertUnwindSafe(|| handle(request).instrument(span)));
        Box::pin(async move {
            let mut response = match called {
                Ok(future) => match AssertUnwindSafe(future).catch_unwind().await {
                    Ok(Ok(response)) => response,
                    Err(payload) => panic_to_problem(payload),
                },
                Err(payload) => panic_to_problem(payload),
            };
            shared.metrics.observe(
                &HttpLabels {
                    method,
                    route,
                    status: response.status().as_u16(),
                },
                started.elapsed().as_secs_f64(),
            );
            let status = response.status();
            let headers = response.headers_mut();
            if let Some(id) = request_id {
                headers.insert(REQUEST_ID.clone(), id);
            }
            if http1 && (status == StatusCode::PAYLOAD_TOO_LARGE || shared.readiness.is_draining())
            {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            headers
                .entry(X_CONTENT_TYPE_OPTIONS)
                .or_insert(HeaderValue::from_static("nosniff"));
            Ok(response)
        })
    }
}

/// Answers the requests for every path a service's router does not own, without the router:
/// see [`crate::server::Server::with_direct_fallback`].
pub type DirectHandler = Arc<dyn Fn(Request) -> BoxFuture<'static, Response> + Send + Sync>;

/// Makes a [`DirectHandler`] for each event loop, on that loop's thread, so that what a
/// handler clones per request (its state's reference count) is the loop's own and not written
/// by two cores (see [`crate::per_event_loop`]).
pub type DirectHandlerFactory = Arc<dyn Fn() -> DirectHandler + Send + Sync>;

/// A service's API as its listeners serve it: the router in the standard stack, and optionally
/// a [`DirectHandler`] for the paths the router does not own, in the same standard work.
#[derive(Clone)]
pub(crate) struct Api {
    router: Router,
    /// `None` for a bare router (the admin listener's).
    standard: Option<Arc<Shared>>,
    /// Only with `standard`.
    direct: Option<Direct>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("direct_except", &self.direct.as_ref().map(|d| &d.owned))
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Direct {
    /// The router's own paths (exact): everything else goes to `handler`.
    owned: Arc<[String]>,
    handler: DirectHandler,
    make_handler: DirectHandlerFactory,
}

/// The future of one request to an [`Api`].
pub(crate) type ApiFuture = futures::future::Either<
    <Router as Service<Request>>::Future,
    BoxFuture<'static, Result<Response, Infallible>>,
>;

impl Api {
    /// `router` in the standard stack; `readiness` tells when the service drains (see
    /// [`Standard`]).
    pub(crate) fn new(
        router: Router,
        metrics: Metrics,
        max_body_bytes: usize,
        readiness: Readiness,
    ) -> Self {
        let shared = Arc::new(Shared { metrics, readiness });
        Self {
            router: standard_stack(router, shared.clone(), max_body_bytes),
            standard: Some(shared),
            direct: None,
        }
    }

    /// `router` as it is, without the standard stack.
    pub(crate) fn bare(router: Router) -> Self {
        Self {
            router,
            standard: None,
            direct: None,
        }
    }

    /// Sends the paths not in `owned` to a handler from `make_handler` (an API built by
    /// [`Self::new`] only: the handler gets the same standard work as the routes).
    pub(crate) fn with_direct(
        mut self,
        owned: Vec<String>,
        make_handler: DirectHandlerFactory,
    ) -> Self {
        if self.standard.is_some() {
            self.direct = Some(Direct {
                owned: owned.into(),
                handler: make_handler(),
                make_handler,
            });
        }
        self
    }

    /// A copy for one event loop, made on its thread: the standard work's shared state and the
    /// direct handler are the loop's own, so the reference counts every request clones are
    /// written by one core only (see [`crate::per_event_loop`]).
    pub(crate) fn for_event_loop(&self) -> Self {
        Self {
            router: self.router.clone(),
            standard: self.standard.as_ref().map(|shared| {
                Arc::new(Shared {
                    metrics: shared.metrics.clone(),
                    readiness: shared.readiness.clone(),
                })
            }),
            direct: self.direct.as_ref().map(|direct| Direct {
                owned: direct.owned.clone(),
                handler: (direct.make_handler)(),
                make_handler: direct.make_handler.clone(),
            }),
        }
    }

    pub(crate) fn call(&self, request: Request) -> ApiFuture {
        match (&self.direct, &self.standard) {
            (Some(direct), Some(shared))
                if !direct.owned.iter().any(|p| p == request.uri().path()) =>
            {
                let handler = &direct.handler;
                futures::future::Either::Right(
                    shared.serve(request, |request| handler(request).map(Ok)),
                )
            }
            // axum's `Router` is always ready, and a clone is a reference count.
            _ => futures::future::Either::Left(self.router.clone().call(request)),
        }
    }
}

fn panic_to_problem(_payload: Box<dyn Any + Send + 'static>) -> Response {
    // The payload may hold data from the request; it is not echoed, only counted in the log.
    tracing::error!("a request handler panicked");
    Problem::internal().into_response()
}
