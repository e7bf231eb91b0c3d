//! What the fuzz targets share: every policy of the default build, and a
//! request driven through an engine exactly as a host drives it.

use policy_executor::{Engine, HeaderMap, Outcome, PolicyFactory, Registry, Start};

/// The policies of the default build (`build.yaml`), so a fuzzed
/// configuration can reach each one's parameter parsing.
pub fn registry() -> Registry {
    let factories: [PolicyFactory; 13] = [
        policy_api_key::FACTORY,
        policy_authorization::FACTORY,
        policy_backend_auth::FACTORY,
        policy_basic_auth::FACTORY,
        policy_cors::FACTORY,
        policy_ext_authz::FACTORY,
        policy_json_body::FACTORY,
        policy_jwt::FACTORY,
        policy_rate_limit::FACTORY,
        policy_redirect::FACTORY,
        policy_respond::FACTORY,
        policy_set_headers::FACTORY,
        policy_transformation::FACTORY,
    ];
    Registry::new(factories)
}

/// Runs one request through `engine`: route selection (and so the
/// canonical path and host), then every request and response phase the
/// chain goes through. Only a panic is a finding; any answer is fine.
pub fn drive(engine: &Engine, headers: HeaderMap, body: &[u8]) {
    let mut exchange = match engine.start(|| Some("fuzz".to_owned()), headers) {
        Start::Run(exchange) => exchange,
        Start::Pass(_) | Start::Respond(_) => return,
    };
    if !goes_on(exchange.on_request_headers()) {
        return;
    }
    if !goes_on(exchange.on_request_body(body)) {
        return;
    }
    let response =
        HeaderMap::from_pairs([(":status", "200"), ("content-type", "application/json")]);
    if goes_on(exchange.on_response_headers(response)) {
        let _ = exchange.on_response_body(b"{\"ok\": true}");
    }
}

fn goes_on(outcome: impl Into<Outcome>) -> bool {
    matches!(outcome.into(), Outcome::Continue(_))
}
