//! The middleware stack every service's API router gets, in one place so both services behave
//! the same: request id and trace context, RED metrics, panic-to-problem, body limits, security
//! headers, and problem+json fallbacks.

use std::any::Any;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Request, State};
use axum::http::header::CONNECTION;
use axum::http::{HeaderName, HeaderValue, StatusCode, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::admin::Readiness;
use crate::metrics::Metrics;
use crate::problem::Problem;

/// Wraps `router` in the standard stack. Apply after all routes (and any fallback) are added.
/// `readiness` tells when the service drains (see [`close_while_draining`]).
pub fn apply(
    router: Router,
    metrics: Metrics,
    max_body_bytes: usize,
    readiness: Readiness,
) -> Router {
    router
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_to_problem))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::record,
        ))
        .layer(axum::middleware::from_fn(crate::trace_context::propagate))
        .layer(axum::middleware::from_fn(close_after_unread_body))
        .layer(axum::middleware::from_fn_with_state(
            readiness,
            close_while_draining,
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ))
}

/// 404 and 405 as problem+json instead of empty bodies.
pub fn default_fallbacks(router: Router) -> Router {
    router
        .fallback(crate::problem::not_found_fallback)
        .method_not_allowed_fallback(crate::problem::method_not_allowed_fallback)
}

/// A 413 is answered before the body is read, so hyper cannot reuse the HTTP/1 connection and
/// closes it after the response. Without `Connection: close` a keep-alive client does not know
/// that and may send its next request on the dying connection, which then fails with no answer.
async fn close_after_unread_body(request: Request, next: Next) -> Response {
    let http1 = request.version() < Version::HTTP_2;
    let mut response = next.run(request).await;
    if http1 && response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// While the service drains (after SIGTERM: readiness fails, the listener still serves), every
/// HTTP/1 response says `Connection: close`, and hyper closes the connection after it. A
/// keep-alive client (a proxy's upstream pool, a pooled client behind an L4 Service) then opens a
/// new connection for its next request instead of reusing this one, so when the listener closes
/// at the end of the drain it holds no connection that races hyper closing it. Without this, a
/// request sent on such a connection at that moment gets no response, and a proxy does not retry
/// a POST it has sent: the rolling-update drill saw nginx log "upstream prematurely closed
/// connection" for a request sent to a replica as its drain ended.
async fn close_while_draining(
    State(readiness): State<Readiness>,
    request: Request,
    next: Next,
) -> Response {
    let http1 = request.version() < Version::HTTP_2;
    let mut response = next.run(request).await;
    // Checked after the handler: a request in flight when the drain began closes too.
    if http1 && readiness.is_draining() {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn panic_to_problem(_payload: Box<dyn Any + Send + 'static>) -> Response {
    // The payload may hold data from the request; it is not echoed, only counted in the log.
    tracing::error!("a request handler panicked");
    Problem::internal().into_response()
}
