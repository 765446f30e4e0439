//! The gateway's bearer-token path: `auth::bearer` on the Authorization header, then
//! `Validator::validate` (the same calls the proxy makes) against a fixed key set, one Ed25519
//! and one P-256 key, with a fixed clock.
//!
//! Input: the first byte picks the mode.
//! - even: the rest is the raw Authorization header value.
//! - odd: the rest is `<header JSON>\n<claims JSON>`, which the target signs with the fixed
//!   Ed25519 key, so that the fuzzer reaches the claim checks behind the signature (it cannot
//!   forge one).
#![no_main]

use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cloud_api_gateway_bff::auth::{Validator, bearer};
use cloud_api_gateway_bff::config::IdentityConfig;
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// The seeds' `exp` values are relative to this instant (2027-01-15).
const NOW: i64 = 1_800_000_000;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    validator: Validator,
    key: Ed25519KeyPair,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("a 32-byte seed");
        // The P-256 key is RFC 7515's appendix A.3 example key.
        let jwks = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "fuzz-ed25519", "use": "sig", "alg": "EdDSA",
             "x": URL_SAFE_NO_PAD.encode(key.public_key().as_ref())},
            {"kty": "EC", "crv": "P-256", "kid": "fuzz-p256", "use": "sig", "alg": "ES256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        ]});
        let clock = Arc::new(cloud_kit::ManualClock::new(
            time::OffsetDateTime::from_unix_timestamp(NOW).expect("a valid instant"),
        ));
        let validator = Validator::with_key_set(
            IdentityConfig::default(),
            clock,
            jwks.to_string().as_bytes(),
        )
        .expect("the fixed key set is usable");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime");
        Fixture {
            runtime,
            validator,
            key,
        }
    })
}

fn check(fixture: &Fixture, header: &[u8]) {
    let Ok(value) = http::HeaderValue::from_bytes(header) else {
        // hyper refuses such a header before the gateway sees it.
        return;
    };
    let Ok(token) = bearer(Some(&value)) else {
        return;
    };
    if let Ok(claims) = fixture.runtime.block_on(fixture.validator.validate(token)) {
        // What the proxy reads from accepted claims.
        let _ = claims.has_permission("orders:read");
        let _ = (&claims.tid, &claims.client_id, &claims.roles);
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        check(fixture, rest);
        return;
    }
    let split = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let (header, claims) = rest.split_at(split);
    let claims = claims.get(1..).unwrap_or_default();
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = fixture.key.sign(signed.as_bytes());
    let token = format!(
        "Bearer {signed}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    );
    check(fixture, token.as_bytes());
});
