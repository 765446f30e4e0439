//! The foundation contract, run against the real `cloud-api-gateway-bff` binary as a child process.

use std::path::Path;

use cloud_test_support::service_checks;

const BINARY: &str = env!("CARGO_BIN_EXE_cloud-api-gateway-bff");

#[tokio::test]
async fn serves_health_version_and_red_metrics() {
    service_checks::serves_health_version_and_red_metrics(
        Path::new(BINARY),
        "GATEWAY",
        cloud_api_gateway_bff::SERVICE_NAME,
        &[],
    )
    .await;
}

#[test]
fn rejects_bad_config_naming_key_and_value() {
    service_checks::rejects_bad_config(Path::new(BINARY), "GATEWAY", "identity.issuer_url");
}

#[tokio::test]
async fn sigterm_fails_readiness_then_drains() {
    service_checks::sigterm_fails_readiness_then_drains(Path::new(BINARY), "GATEWAY", &[]).await;
}
