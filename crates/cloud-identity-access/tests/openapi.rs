//! The committed OpenAPI document must equal the one generated from the code.
//! Regenerate with: `UPDATE_OPENAPI=1 cargo test -p cloud-identity-access --test openapi`.
// Test helpers outside #[test] functions: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

#[test]
fn committed_openapi_matches_the_code() {
    let generated = cloud_identity_access::openapi::yaml().unwrap();
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi/cloud-identity-access.yaml");
    if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/cloud-identity-access.yaml is out of date; run `UPDATE_OPENAPI=1 cargo test -p cloud-identity-access --test openapi`"
    );
    let doc: serde_yaml::Value = serde_yaml::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
}
