//! Any text as a bearer token (and as the whole `Authorization` value), through the
//! jwt policy with HMAC and EC keys: refused or verified, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use policy_executor::testing::{engine_for, request};
use policy_executor::{Engine, HeaderMap};
use serde_json::json;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let keys = json!({"keys": [
            {"kty": "oct", "kid": "k1", "k": "Y29uZm9ybWFuY2Utc2VjcmV0LWNvbmZvcm1hbmNlLXNlY3JldA"},
            {"kty": "EC", "crv": "P-256", "kid": "e1",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]});
        let config = json!({
            "allow_missing": true,
            "from": [{"header": "authorization", "prefix": "Bearer "}, {"query": "access_token"}],
            "providers": [{
                "issuer": "https://issuer.test",
                "audiences": ["orders"],
                "algorithms": ["HS256", "ES256"],
                "local_jwks": {"inline_string": keys.to_string()},
                "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}],
                "required_scopes": ["orders.read"],
            }],
        });
        engine_for(policy_jwt::FACTORY, config).unwrap_or_else(|e| panic!("{e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let bearer = format!("Bearer {text}");
    for value in [bearer.as_str(), text.as_ref()] {
        let headers: HeaderMap = request("GET", "/orders", &[("authorization", value)]);
        policy_fuzz::drive(engine(), headers, b"");
    }
});
