//! Every case of Unleash's client specification (npm `@unleash/client-specification`, pinned
//! in `xtask/src/tools.rs`), evaluated through OUR API (`FlagClient::is_enabled` / `variant`
//! with a `FlagContext`). A missing spec, a missing case or a failing case fails the run.
//! `cargo xtask test` passes the unpacked package as `CLOUD_TEST_UNLEASH_SPEC_DIR`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cloud_flags::{FlagClient, FlagContext};
use serde::Deserialize;
use serde_json::Value;

/// 6.1.0: 227 `isEnabled` cases + 52 variant cases, in 22 files.
const EXPECTED_FILES: usize = 22;
const EXPECTED_ENABLED_CASES: usize = 227;
const EXPECTED_VARIANT_CASES: usize = 52;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    name: String,
    state: Value,
    #[serde(default)]
    tests: Vec<EnabledCase>,
    #[serde(default)]
    variant_tests: Vec<VariantCase>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnabledCase {
    description: String,
    context: Value,
    toggle_name: String,
    expected_result: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VariantCase {
    description: String,
    context: Value,
    toggle_name: String,
    expected_result: ExpectedVariant,
}

#[derive(Debug, Deserialize)]
struct ExpectedVariant {
    name: String,
    enabled: bool,
    feature_enabled: Option<bool>,
    payload: Option<ExpectedPayload>,
}

#[derive(Debug, Deserialize)]
struct ExpectedPayload {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

fn str_field(ctx: &Value, key: &str) -> Option<String> {
    match ctx.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// The spec's JSON context, built through our typed context.
fn context(ctx: &Value) -> FlagContext {
    let mut out = FlagContext::new();
    if let Some(v) = str_field(ctx, "userId") {
        out = out.with_user_id(v);
    }
    if let Some(v) = str_field(ctx, "sessionId") {
        out = out.with_session_id(v);
    }
    if let Some(v) = str_field(ctx, "environment") {
        out = out.with_environment(v);
    }
    if let Some(v) = str_field(ctx, "appName") {
        out = out.with_app_name(v);
    }
    if let Some(v) = str_field(ctx, "remoteAddress") {
        out = out.with_remote_address(v);
    }
    if let Some(v) = str_field(ctx, "currentTime") {
        out = out.with_current_time_str(v);
    }
    if let Some(props) = ctx.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out = out.with_property(k.clone(), v);
        }
    }
    out
}

#[test]
fn client_specification_passes_through_our_api() {
    let Some(dir) = cloud_test_support::require_tool("UNLEASH_SPEC_DIR") else {
        return;
    };
    let specs = dir.join("specifications");
    let index: Vec<String> =
        serde_json::from_slice(&std::fs::read(specs.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index.len(),
        EXPECTED_FILES,
        "spec index lists {} files",
        index.len()
    );

    let (mut enabled_cases, mut variant_cases) = (0, 0);
    let mut failures = vec![];
    for file in &index {
        let spec: SpecFile = serde_json::from_slice(&std::fs::read(specs.join(file)).unwrap())
            .unwrap_or_else(|e| panic!("{file}: not a spec file: {e}"));
        let state = serde_json::to_vec(&spec.state).unwrap();
        let client = FlagClient::from_features_json(&state)
            .unwrap_or_else(|e| panic!("{file}: state rejected: {e}"));
        for case in &spec.tests {
            enabled_cases += 1;
            let got = client.is_enabled(&case.toggle_name, &context(&case.context));
            if got != case.expected_result {
                failures.push(format!(
                    "{} / {}: is_enabled = {got}, expected {}",
                    spec.name, case.description, case.expected_result
                ));
            }
        }
        for case in &spec.variant_tests {
            variant_cases += 1;
            let got = client.variant(&case.toggle_name, &context(&case.context));
            let want = &case.expected_result;
            let payload_ok = match (&got.payload, &want.payload) {
                (None, None) => true,
                (Some(g), Some(w)) => g.kind == w.kind && g.value == w.value,
                _ => false,
            };
            let feature_ok = want
                .feature_enabled
                .is_none_or(|f| f == got.feature_enabled);
            if got.name != want.name || got.enabled != want.enabled || !payload_ok || !feature_ok {
                failures.push(format!(
                    "{} / {}: variant = {got:?}, expected {want:?}",
                    spec.name, case.description
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        enabled_cases + variant_cases,
        failures.join("\n")
    );
    assert_eq!(enabled_cases, EXPECTED_ENABLED_CASES, "isEnabled cases run");
    assert_eq!(variant_cases, EXPECTED_VARIANT_CASES, "variant cases run");
    eprintln!("conformance: {enabled_cases} isEnabled + {variant_cases} variant cases passed");
}
