//! The cloud-flags bootstrap file: `FlagClient::from_features_json` runs the parser behind
//! `FlagClient::offline` / `from_bootstrap_file` (`persist::parse_features`, both the full and
//! the delta format), compiles the flags and installs the state; then every flag is evaluated
//! for a tenant and a user, as a service would.
#![no_main]

use cloud_flags::{FlagClient, FlagContext};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(client) = FlagClient::from_features_json(data) else {
        return;
    };
    let ctx = FlagContext::new()
        .with_tenant_id("acme")
        .with_user_id("user-1")
        .with_remote_address("10.1.2.3");
    for name in client.flag_names() {
        let _ = client.is_enabled(&name, &ctx);
        let _ = client.variant(&name, &ctx);
    }
    let _ = client.evaluate_prefix("", &ctx);
});
