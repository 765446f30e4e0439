//! The foundation contract, run against the real `cloud-identity-access` binary as a child process.

use std::path::Path;

use cloud_test_support::service_checks;

const BINARY: &str = env!("CARGO_BIN_EXE_cloud-identity-access");

#[tokio::test]
async fn serves_health_version_and_red_metrics() {
    service_checks::serves_health_version_and_red_metrics(
        Path::new(BINARY),
        "IDENTITY",
        cloud_identity_access::SERVICE_NAME,
        &[],
    )
    .await;
}

#[test]
fn rejects_bad_config_naming_key_and_value() {
    service_checks::rejects_bad_config(Path::new(BINARY), "IDENTITY", "issuer");
}

#[tokio::test]
async fn sigterm_fails_readiness_then_drains() {
    service_checks::sigterm_fails_readiness_then_drains(Path::new(BINARY), "IDENTITY", &[]).await;
}
