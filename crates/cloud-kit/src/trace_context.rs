//! Request ids and W3C Trace Context (`traceparent`).
//!
//! Every request gets an `x-request-id` (the caller's, if it is sane, else a new UUID) that is
//! echoed in the response, and a [`TraceContext`] that continues the caller's trace or starts a
//! new one. Both are put in the request extensions and in the request's tracing span, and a proxy
//! forwards them with [`TraceContext::child_traceparent`].

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use rand::Rng;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The request's id, as found in the extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id (visible ASCII, at most 128 bytes).
    pub fn as_str(&self) -> &str {
        // Only built from values that passed `sane_request_id` or from a UUID.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value, to pass on (a clone shares its bytes).
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

/// A W3C trace context: the trace this request belongs to and the span id of this hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span, if the request carried a valid `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    /// This service's span for the request.
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// Continues the trace in `traceparent` when it is valid (version 00, non-zero ids), else
    /// starts a new sampled trace. An invalid header is ignored, as the spec requires.
    pub fn from_traceparent(header: Option<&str>) -> Self {
        let mut rng = rand::rng();
        let span_id = non_zero(|| rng.random::<[u8; 8]>());
        if let Some((trace_id, parent, flags)) = header.and_then(parse_traceparent) {
            return Self {
                trace_id,
                parent_span_id: Some(parent),
                span_id,
                sampled: flags & 1 == 1,
            };
        }
        let trace_id = non_zero(|| rng.random::<[u8; 16]>());
        Self {
            trace_id,
            parent_span_id: None,
            span_id,
            sampled: true,
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The `traceparent` this hop sends downstream: same trace, this hop's span as parent.
    pub fn child_traceparent(&self) -> String {
        String::from_utf8(self.child_traceparent_bytes().to_vec()).unwrap_or_default()
    }

    /// [`Self::child_traceparent`] on the stack (a proxy sends one with every request).
    pub fn child_traceparent_bytes(&self) -> [u8; 55] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&self.trace_id, &mut out[3..35]);
        hex_into(&self.span_id, &mut out[36..52]);
        out[54] = if self.sampled { b'1' } else { b'0' };
        out
    }
}

fn non_zero<const N: usize>(mut make: impl FnMut() -> [u8; N]) -> [u8; N] {
    loop {
        let v = make();
        if v.iter().any(|b| *b != 0) {
            return v;
        }
    }
}

/// Lowercase hex in one allocation (this runs for every request's span).
fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Lowercase hex of `bytes` into `out`, which holds twice as many bytes.
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Parses a version-00 `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() {
        return None;
    }
    let trace_id = parse_hex::<16>(trace)?;
    let parent_id = parse_hex::<8>(parent)?;
    let flags = parse_hex::<1>(flags)?[0];
    if trace_id.iter().all(|b| *b == 0) || parent_id.iter().all(|b| *b == 0) {
        return None;
    }
    Some((trace_id, parent_id, flags))
}

/// Accepts a caller's request id only if it is short printable ASCII; anything else could be
/// used to forge or flood log lines.
fn sane_request_id(value: &HeaderValue) -> Option<HeaderValue> {
    let s = value.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| value.clone())
}

/// A new request id: a random UUID.
fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid-uuid"))
}

/// Assigns the request's id and trace context (into its extensions) and opens its span. Returns
/// the span and the `x-request-id` to echo in the response. Run by [`crate::http_layers`] for
/// every request.
pub(crate) fn begin(request: &mut Request) -> (tracing::Span, Option<HeaderValue>) {
    // One header value serves the extension, the echo and the upstream copy: a caller's is
    // shared as it came, a new one is allocated once.
    let request_id = RequestId(
        request
            .headers()
            .get(&REQUEST_ID)
            .and_then(sane_request_id)
            .unwrap_or_else(new_request_id),
    );
    let trace = TraceContext::from_traceparent(
        request
            .headers()
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    );
    let echo = Some(request_id.header_value().clone());
    let span = tracing::info_span!(
        "http_request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request_id.as_str(),
        trace_id = %trace.trace_id_hex(),
        span_id = %trace.span_id_hex(),
    );
    crate::telemetry::set_remote_parent(&span, &trace);
    request.extensions_mut().insert(request_id);
    request.extensions_mut().insert(trace);
    (span, echo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_traceparent() {
        let ctx = TraceContext::from_traceparent(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            ctx.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert!(ctx.sampled);
        let child = ctx.child_traceparent();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(
            !child.contains("00f067aa0ba902b7"),
            "the child must carry this hop's span id"
        );
        assert_eq!(
            child,
            format!("00-{}-{}-01", ctx.trace_id_hex(), ctx.span_id_hex())
        );
        let unsampled = TraceContext::from_traceparent(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(!unsampled.sampled);
        assert!(unsampled.child_traceparent().ends_with("-00"));
    }

    #[test]
    fn rejects_malformed_traceparents() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{bad:?} should be rejected"
            );
            let ctx = TraceContext::from_traceparent(Some(bad));
            assert_eq!(ctx.parent_span_id, None, "{bad:?} must start a new trace");
        }
    }

    #[test]
    fn insane_request_ids_are_replaced() {
        assert_eq!(
            sane_request_id(&HeaderValue::from_static("abc-123")),
            Some(HeaderValue::from_static("abc-123"))
        );
        assert_eq!(
            sane_request_id(&HeaderValue::from_static("has space")),
            None
        );
        let long = "a".repeat(129);
        assert_eq!(
            sane_request_id(&HeaderValue::from_str(&long).unwrap()),
            None
        );
        let new = RequestId(new_request_id());
        assert!(uuid::Uuid::parse_str(new.as_str()).is_ok(), "{new:?}");
        assert_eq!(new.header_value().to_str().unwrap(), new.as_str());
    }
}
