//! Helpers for policy unit tests (feature `test-util`): build an engine
//! around one policy instance and feed it requests, exactly as a host would,
//! without Envoy.

use std::sync::Arc;

use serde_json::{json, Value};

pub use crate::callout::FakeHost;
use crate::{
    ConfigError, Context, Engine, Exchange, HeaderChange, HeaderMap, HeaderMutations, Outcome,
    PolicyFactory, RouteInfo, Start,
};

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

/// A bare context for `request` on route entry `test`, for helpers that
/// read a request without running a chain.
pub fn context(request: HeaderMap) -> Context {
    let route = RouteInfo {
        chain: Arc::from("test"),
        route_name: None,
    };
    Context::new(route, request, Arc::default(), HeaderMutations::default())
}

/// The header changes of an outcome that let the message go on, in order;
/// panics on any other outcome, failing the test.
#[allow(clippy::panic, reason = "a test helper: a reply must fail the test")]
pub fn changes(outcome: impl Into<Outcome>) -> Vec<(String, HeaderChange)> {
    match outcome.into() {
        Outcome::Continue(m) => m.iter().map(|(n, c)| (n.to_owned(), c.clone())).collect(),
        other => panic!("expected the message to go on, got {other:?}"),
    }
}

/// Starts an exchange for `request`; `None` if the engine did not select a
/// chain for it.
pub fn start(engine: &Engine, request: HeaderMap) -> Option<Exchange> {
    match engine.start(|| Some("test".to_owned()), request) {
        Start::Run(exchange) => Some(exchange),
        Start::Pass(_) | Start::Respond(_) => None,
    }
}

/// Checks a policy against its own `policy.yaml`: name and version agree,
/// the parameters schema is one [`crate::schema::Schema`] supports, and on
/// every example under `examples.valid` / `examples.invalid` the schema and
/// the policy's own parsing give the same verdict (valid, or refused). That
/// is what keeps the typed parameters and the schema in step: call it from
/// a unit test of every policy crate.
pub fn check_definition(factory: PolicyFactory, policy_yaml: &str) -> Result<(), String> {
    let definition: Value = serde_yaml::from_str(policy_yaml).map_err(|e| e.to_string())?;
    let field = |name: &str| definition.get(name).and_then(Value::as_str);
    if field("name") != Some(factory.name) || field("version") != Some(factory.version) {
        return Err(format!(
            "policy.yaml says {:?}@{:?}, the crate's FACTORY says {}@{}",
            field("name"),
            field("version"),
            factory.name,
            factory.version
        ));
    }
    let parameters = definition
        .get("parameters")
        .ok_or("policy.yaml has no parameters")?;
    let schema = crate::schema::Schema::parse(&parameters.to_string())
        .map_err(|e| format!("parameters: {e}"))?;
    let examples = definition
        .get("examples")
        .ok_or("policy.yaml has no examples")?;
    let mut checked = 0;
    for (kind, should_pass) in [("valid", true), ("invalid", false)] {
        let list = examples
            .get(kind)
            .and_then(Value::as_array)
            .ok_or(format!("policy.yaml has no examples.{kind}"))?;
        for (i, example) in list.iter().enumerate() {
            let by_schema = schema.validate(example).map_err(|v| {
                let at = if v.path.is_empty() { "." } else { &v.path };
                format!("{at}: {}", v.reason)
            });
            let by_policy = (factory.build)(example)
                .map(drop)
                .map_err(|e| format!("{}: {}", e.field, e.reason));
            match (should_pass, by_schema, by_policy) {
                (true, Ok(()), Ok(())) | (false, Err(_), Err(_)) => checked += 1,
                (_, schema_verdict, policy_verdict) => {
                    return Err(format!(
                        "examples.{kind}[{i}] {example}: the schema says {schema_verdict:?}, the policy says {policy_verdict:?}"
                    ))
                }
            }
        }
    }
    if checked == 0 {
        return Err("policy.yaml has no examples to check".into());
    }
    Ok(())
}
