//! The committed OpenAPI document must equal the one generated from the code.
//! Regenerate with: `UPDATE_OPENAPI=1 cargo test -p cloud-identity-access --test openapi`.
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn committed_openapi_matches_the_code() {
    cloud_test_support::service_checks::committed_openapi_matches(
        "cloud-identity-access",
        &cloud_identity_access::openapi::yaml().unwrap(),
    );
}

/// Found by the schemathesis drill (docs/reliability.md): operations with a request body
/// answered 400, 415 and 422 (cloud-kit's JSON extractor: malformed JSON, wrong Content-Type,
/// a body that does not match the type; the OAuth form parser: 400 and 415) without the document
/// listing them, so clients generated from it could not expect them.
#[test]
fn openapi_documents_the_body_rejections_of_every_operation_with_a_body() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&cloud_identity_access::openapi::yaml().unwrap()).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        for (method, op) in item.as_mapping().unwrap() {
            let Some(content) = op["requestBody"]["content"].as_mapping() else {
                continue;
            };
            let json = content.contains_key("application/json");
            let wanted: &[&str] = if json {
                &["400", "415", "422"]
            } else {
                &["400", "415"]
            };
            for status in wanted {
                assert!(
                    op["responses"].get(*status).is_some(),
                    "{} {} does not document {status}",
                    method.as_str().unwrap(),
                    path.as_str().unwrap()
                );
            }
            checked += 1;
        }
    }
    // Six admin writes and the three OAuth form endpoints.
    assert_eq!(checked, 9);
}
