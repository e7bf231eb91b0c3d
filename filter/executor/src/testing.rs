//! Helpers for policy unit tests (feature `test-util`): build an engine
//! around one policy instance and feed it requests, exactly as a host would,
//! without Envoy.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

pub use crate::callout::FakeHost;
use crate::{
    ConfigError, Context, Engine, Exchange, HeaderChange, HeaderMap, HeaderMutations, Outcome,
    Phases, PolicyFactory, RouteInfo, Start,
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

/// Checks that `dir/schema.json` holds `derived`, the schema the policy's
/// parameter types give; with `UPDATE_SCHEMAS=1` in the environment it
/// rewrites the file instead.
pub fn check_schema_file(derived: &Value, dir: &Path) -> Result<(), String> {
    let path = dir.join("schema.json");
    let text = crate::schema::to_file_text(derived);
    if std::env::var_os("UPDATE_SCHEMAS").is_some_and(|v| v == "1") {
        return std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()));
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != text {
        return Err(format!(
            "{} is not the schema the parameter types give (stale, or edited by hand): \
             `make schemas` rewrites it",
            path.display()
        ));
    }
    Ok(())
}

/// Checks a policy against its own `policy.yaml` and `schema.json` in
/// `dir`:
///
/// * `name` and `version` are the crate's `FACTORY`'s;
/// * the schema is one [`crate::schema::Schema`] supports;
/// * every example under `examples.valid` passes the schema and the
///   policy's own parsing, and every instance built from one acts only in
///   the `phases` that `policy.yaml` declares;
/// * every example under `examples.invalid` is refused by the policy, and
///   by the schema where a schema can say it (a value's form, not its
///   meaning). What the schema refuses, the policy must refuse too: the
///   schema is never stricter than the policy.
///
/// [`policy_parameters!`](crate::policy_parameters) calls it from every
/// policy crate's tests.
pub fn check_definition(factory: PolicyFactory, dir: &Path) -> Result<(), String> {
    let read =
        |name: &str| std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let definition: Value =
        serde_yaml::from_str(&read("policy.yaml")?).map_err(|e| format!("policy.yaml: {e}"))?;
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
    let declared = definition
        .get("phases")
        .and_then(Value::as_array)
        .ok_or("policy.yaml has no phases")?
        .iter()
        .map(|phase| match phase.as_str() {
            Some("request_headers") => Ok(Phases::REQUEST_HEADERS),
            Some("request_body") => Ok(Phases::REQUEST_BODY),
            Some("response_headers") => Ok(Phases::RESPONSE_HEADERS),
            // Whole or as it flows: the same phase to a deployer.
            Some("response_body") => Ok(Phases::RESPONSE_BODY | Phases::RESPONSE_BODY_STREAM),
            _ => Err(format!("policy.yaml: unknown phase {phase}")),
        })
        .try_fold(Phases::NONE, |all, phase| phase.map(|p| all | p))?;
    let schema = crate::schema::Schema::parse(&read("schema.json")?)
        .map_err(|e| format!("schema.json: {e}"))?;
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
            let by_policy =
                (factory.build)(example).map_err(|e| format!("{}: {}", e.field, e.reason));
            let fault = match (should_pass, &by_schema, &by_policy) {
                (true, Ok(()), Ok(policy)) if !declared.contains(policy.phases()) => Some(format!(
                    "acts in {:?}, which policy.yaml's phases do not list",
                    policy.phases()
                )),
                (true, Ok(()), Ok(_)) | (false, _, Err(_)) => None,
                _ => Some(format!(
                    "the schema says {by_schema:?}, the policy says {:?}",
                    by_policy.as_ref().map(drop)
                )),
            };
            if let Some(fault) = fault {
                return Err(format!("examples.{kind}[{i}] {example}: {fault}"));
            }
            checked += 1;
        }
    }
    if checked == 0 {
        return Err("policy.yaml has no examples to check".into());
    }
    Ok(())
}
