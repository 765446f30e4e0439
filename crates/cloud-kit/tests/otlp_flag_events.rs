//! With OTLP export on, every feature-flag evaluation reaches the exported trace as an event of
//! the current span carrying the OpenTelemetry feature-flag attributes (`feature_flag.key`,
//! `feature_flag.variant`, `feature_flag.provider_name`), at the default `log_level: info`, while
//! the log output stays as `log_level` says (no evaluation events in it). Without OTLP export,
//! evaluation events are disabled at their call site.
//!
//! `telemetry::init` installs the process-wide subscriber and reads `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! which tests cannot set (no `unsafe`), so each scenario runs in a child process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use cloud_flags::{FlagClient, FlagContext};
use cloud_kit::TelemetryConfig;
use cloud_kit::config::LogFormat;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

const CHILD: &str = "evaluate_flags_child";
const LOG_MARKER: &str = "request handled";
const ENABLED_MARKER: &str = "evaluation call site enabled: ";

fn bootstrap() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"version": 2, "features": [
        {"name": "checkout.v2", "enabled": true, "strategies": [{"name": "default"}]},
        {"name": "canary", "enabled": true, "strategies": [{"name": "default"}], "variants": [
            {"name": "canary", "weight": 1000, "weightType": "variable", "stickiness": "default"}]},
    ]}))
    .unwrap()
}

/// The scenario, in a child process started by the tests below.
#[test]
#[ignore = "run in a child process by the tests below"]
fn evaluate_flags_child() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, bootstrap()).unwrap();
    let client = FlagClient::from_bootstrap_file(&path).unwrap();

    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        log_level: "info".into(),
    };
    let guard = cloud_kit::telemetry::init("flag-events-test", &config).unwrap();
    // Reported, not asserted here, so that the parent checks the exported trace first.
    let enabled = tracing::enabled!(target: "cloud_flags::evaluation", tracing::Level::DEBUG);
    eprintln!("{ENABLED_MARKER}{enabled}");
    {
        let span = tracing::info_span!("request", tenant = "acme");
        let _entered = span.enter();
        let ctx = FlagContext::new().with_tenant_id("acme");
        assert!(client.is_enabled("checkout.v2", &ctx));
        assert_eq!(client.variant("canary", &ctx).name, "canary");
        tracing::info!("{LOG_MARKER}");
    }
    drop(guard); // flushes the batch exporter
}

/// Runs the child with `endpoint` (or without OTLP) and returns its stderr, the log output.
fn run_child(endpoint: Option<&str>) -> String {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        CHILD,
        "--nocapture",
        "--test-threads=1",
    ]);
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_SDK_DISABLED",
    ] {
        cmd.env_remove(var);
    }
    if let Some(endpoint) = endpoint {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stderr
}

/// Whether the child found the DEBUG evaluation call site enabled after `init`.
fn evaluation_enabled(stderr: &str) -> bool {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix(ENABLED_MARKER))
        .unwrap_or_else(|| panic!("the child reports {ENABLED_MARKER:?}:\n{stderr}"));
    line.trim() == "true"
}

/// The log output shows the info event and no evaluation event, with or without OTLP.
fn assert_logs_unchanged(stderr: &str) {
    assert!(
        stderr.contains(LOG_MARKER),
        "the info event is logged:\n{stderr}"
    );
    assert!(
        !stderr.contains("feature_flag"),
        "evaluation events stay out of the logs at log_level info:\n{stderr}"
    );
}

fn string_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref() {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => Some(s.as_str()),
            _ => None,
        })
}

#[tokio::test]
async fn flag_evaluations_are_events_of_the_request_span_in_otlp() {
    assert_eq!(
        cloud_kit::telemetry::FLAG_EVALUATION_TARGET,
        cloud_flags::EVALUATION_TARGET
    );

    // A minimal OTLP/HTTP receiver: POST /v1/traces with a protobuf body.
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let app = Router::new().route(
        "/v1/traces",
        post({
            let received = received.clone();
            move |body: Bytes| async move {
                received.lock().unwrap().push(body);
                (
                    [(http::header::CONTENT_TYPE, "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let stderr = tokio::task::spawn_blocking(move || run_child(Some(&endpoint)))
        .await
        .unwrap();

    let spans: Vec<Span> = received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|body| {
            ExportTraceServiceRequest::decode(body.as_ref())
                .unwrap()
                .resource_spans
        })
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .collect();
    let request = spans
        .iter()
        .find(|s| s.name == "request")
        .unwrap_or_else(|| panic!("no `request` span exported: {spans:?}"));
    let evaluations: Vec<_> = request
        .events
        .iter()
        .filter(|e| e.name == "feature_flag.evaluation")
        .map(|e| {
            (
                string_attr(&e.attributes, "feature_flag.key"),
                string_attr(&e.attributes, "feature_flag.variant"),
                string_attr(&e.attributes, "feature_flag.provider_name"),
            )
        })
        .collect();
    assert_eq!(
        evaluations,
        vec![
            (
                Some("checkout.v2"),
                Some("true"),
                Some(cloud_flags::PROVIDER_NAME)
            ),
            (
                Some("canary"),
                Some("canary"),
                Some(cloud_flags::PROVIDER_NAME)
            ),
        ],
        "the request span's events: {:?}",
        request.events
    );
    assert_logs_unchanged(&stderr);
    assert!(evaluation_enabled(&stderr));
}

#[test]
fn without_otlp_the_logs_are_the_same_and_evaluations_are_disabled() {
    let stderr = run_child(None);
    assert_logs_unchanged(&stderr);
    // Nothing wants the DEBUG evaluation events: each costs a disabled call site.
    assert!(!evaluation_enabled(&stderr));
}
