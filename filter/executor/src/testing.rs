//! Helpers for policy unit tests (feature `test-util`): build an engine
//! around one policy instance and feed it requests, exactly as a host would,
//! without Envoy.

use serde_json::{json, Value};

use crate::{ConfigError, Engine, Exchange, HeaderMap, PolicyFactory, Start};

/// An engine with one route entry (`test`) running `factory` with `config`.
pub fn engine_for(factory: PolicyFactory, config: Value) -> Result<Engine, ConfigError> {
    let document = json!({
        "routes": [{
            "name": "test",
            "policies": [{ "name": factory.name, "version": factory.version, "config": config }],
        }],
    });
    let registry = crate::Registry::new([factory]);
    Engine::from_config(document.to_string().as_bytes(), &registry)
}

/// Request headers with the pseudo-headers Envoy always sets.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> HeaderMap {
    let pseudo = [
        (":method", method),
        (":path", path),
        (":authority", "example.com"),
        (":scheme", "http"),
    ];
    HeaderMap::from_pairs(pseudo.into_iter().chain(headers.iter().copied()))
}

/// Starts an exchange for `request`; `None` if the engine did not select a
/// chain for it.
pub fn start(engine: &Engine, request: HeaderMap) -> Option<Exchange> {
    match engine.start(|| Some("test".to_owned()), request) {
        Start::Run(exchange) => Some(exchange),
        Start::Pass | Start::Respond(_) => None,
    }
}
