//! The gateway's config: arbitrary text deserialized as the config file is
//! (`Config::from_yaml_str`), then every check `build` makes before it binds: `validate` (route
//! table, identity, aggregations) and the Redis URL (`RateLimiter::new`).
#![no_main]

use cloud_api_gateway_bff::ratelimit::{LimiterMetrics, RateLimiter};
use cloud_api_gateway_bff::{Config, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_yaml_str(text) else {
        return;
    };
    if let Ok(table) = validate(&config) {
        let _ = (table.len(), table.needs_tokens(), table.names());
        for path in ["/", "", "/api/demo/x", "/bff/v1/session"] {
            let _ = table.find(path);
        }
    }
    let _ = RateLimiter::new(&config.redis, LimiterMetrics::default());
});
