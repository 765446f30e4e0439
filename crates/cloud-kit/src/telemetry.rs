//! Structured logs with `tracing` (JSON in production, readable in a terminal), and OpenTelemetry
//! trace export over OTLP/HTTP, only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Each layer has its own filter. The log output follows `telemetry.log_level` alone; the OTLP
//! layer follows it too, plus [`FLAG_EVALUATION_TARGET`] at DEBUG, so every feature-flag
//! evaluation becomes an event of the current span in the exported trace without showing up in
//! the logs. Without OTLP export there is no such layer and those events cost nothing.

use std::io::IsTerminal;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};
use crate::trace_context::TraceContext;

/// The target of cloud-flags' DEBUG `feature_flag.evaluation` events
/// (`cloud_flags::EVALUATION_TARGET`; cloud-flags depends on this crate, so the name is repeated
/// here and `tests/otlp_flag_events.rs` checks that the two agree).
pub const FLAG_EVALUATION_TARGET: &str = "cloud_flags::evaluation";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.log_level {0:?} is not a valid tracing filter: {1}")]
    Filter(String, tracing_subscriber::filter::ParseError),
    #[error("cannot set up OTLP export to OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
    Otlp(String),
}

/// Flushes exported spans when dropped; keep it alive for the life of the process.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "flushing traces at exit failed");
        }
    }
}

/// Installs the global subscriber. A second call in the same process (two services in one
/// `cloudctl up`) keeps the first subscriber and returns an empty guard.
pub fn init(
    service_name: &'static str,
    config: &TelemetryConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| TelemetryError::Filter(config.log_level.clone(), e))?;
    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    }
    .with_filter(filter);
    let (otel, provider) = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            let otel_filter = otlp_filter(&config.log_level)?;
            let provider = otlp_provider(service_name)?;
            let tracer = provider.tracer(service_name);
            tracing::debug!(%endpoint, "exporting traces over OTLP");
            (
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(otel_filter),
                ),
                Some(provider),
            )
        }
        _ => (None, None),
    };
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    Ok(TelemetryGuard {
        provider: if installed { provider } else { None },
    })
}

/// `log_level` with flag evaluations at DEBUG. The evaluation directive comes first so that a
/// `log_level` naming the same target (`cloud_flags::evaluation=off`) still decides.
fn otlp_filter(log_level: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::try_new(format!("{FLAG_EVALUATION_TARGET}=debug,{log_level}"))
        .map_err(|e| TelemetryError::Filter(log_level.to_string(), e))
}

fn otlp_provider(service_name: &'static str) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig as _;
    // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other standard variables) itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Makes `span` a child of the caller's span from `traceparent`, for the OTLP exporter.
/// Without the exporter installed this does nothing.
pub fn set_remote_parent(span: &tracing::Span, trace: &TraceContext) {
    let Some(parent) = trace.parent_span_id else {
        return;
    };
    let flags = if trace.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let remote = SpanContext::new(
        TraceId::from_bytes(trace.trace_id),
        SpanId::from_bytes(parent),
        flags,
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}
