//! The committed OpenAPI document must equal the one generated from the code.
//! Regenerate with: `UPDATE_OPENAPI=1 cargo test -p cloud-api-gateway-bff --test openapi`.
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn committed_openapi_matches_the_code() {
    cloud_test_support::service_checks::committed_openapi_matches(
        "cloud-api-gateway-bff",
        &cloud_api_gateway_bff::openapi::yaml().unwrap(),
    );
}

/// The documented `/version` body is what cloud-kit's route serializes.
#[test]
fn openapi_version_schema_has_the_fields_of_build_info() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&cloud_api_gateway_bff::openapi::yaml().unwrap()).unwrap();
    let schema = &doc["components"]["schemas"]["Version"];
    let mut documented: Vec<&str> = schema["properties"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    let mut required: Vec<&str> = schema["required"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let served = serde_json::to_value(cloud_kit::build_info!()).unwrap();
    let mut fields: Vec<&str> = served
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    documented.sort_unstable();
    required.sort_unstable();
    fields.sort_unstable();
    assert_eq!(documented, fields);
    assert_eq!(required, fields);
}
