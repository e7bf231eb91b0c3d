use policy_executor::testing::{engine_for, request, start};
use policy_executor::{Engine, HeaderChange, HeaderMap, Outcome, ResponseOutcome};
use serde_json::json;

use super::*;

fn engine(config: serde_json::Value) -> Engine {
    engine_for(FACTORY, config).expect("valid configuration")
}

fn strict() -> Engine {
    engine(json!({
        "allow_origins": ["https://app.example.com", "https://*.example.org"],
        "allow_methods": ["GET", "PUT"],
        "allow_headers": ["authorization", "content-type"],
        "expose_headers": ["x-request-id"],
        "max_age": "10m",
        "allow_credentials": true,
    }))
}

fn preflight(engine: &Engine, origin: &str, method: &str, headers: &str) -> LocalReply {
    let mut exchange = start(
        engine,
        request(
            "OPTIONS",
            "/orders",
            &[
                ("origin", origin),
                ("access-control-request-method", method),
                ("access-control-request-headers", headers),
            ],
        ),
    )
    .unwrap();
    match exchange.on_request_headers() {
        Outcome::Respond(reply) => reply,
        other => panic!("a preflight must be answered here, got {other:?}"),
    }
}

/// The response header changes for a request with `headers`.
fn response_changes(engine: &Engine, headers: &[(&str, &str)]) -> Vec<(String, HeaderChange)> {
    let mut exchange = start(engine, request("GET", "/orders", headers)).unwrap();
    assert!(matches!(
        exchange.on_request_headers(),
        Outcome::Continue(_)
    ));
    let upstream = HeaderMap::from_pairs([
        (":status", "200"),
        ("access-control-allow-origin", "*"),
        ("vary", "accept-encoding"),
    ]);
    match exchange.on_response_headers(upstream) {
        ResponseOutcome::Continue(m) => m.iter().map(|(n, c)| (n.to_owned(), c.clone())).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

fn value<'a>(changes: &'a [(String, HeaderChange)], name: &str) -> Option<&'a HeaderChange> {
    changes.iter().find(|(n, _)| n == name).map(|(_, c)| c)
}

#[test]
fn an_allowed_preflight_is_answered_with_everything_the_browser_needs() {
    let reply = preflight(
        &strict(),
        "https://app.example.com",
        "PUT",
        "Authorization, content-type",
    );
    assert_eq!(reply.status, 204);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("GET, PUT")
    );
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(reply.header("access-control-max-age"), Some("600"));
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
    assert!(reply.header("vary").unwrap().contains("Origin"));
}

#[test]
fn wildcard_subdomains_match_subdomains_only() {
    let engine = strict();
    for (origin, allowed) in [
        ("https://a.example.org", true),
        ("https://a.b.example.org", true),
        ("https://example.org", false),
        ("http://a.example.org", false),
        ("https://a.example.org.evil.com", false),
        ("https://evilexample.org", false),
        ("https://APP.example.com", true),
        ("null", false),
    ] {
        let reply = preflight(&engine, origin, "GET", "");
        assert_eq!(
            reply.header("access-control-allow-origin").is_some(),
            allowed,
            "{origin}"
        );
    }
}

#[test]
fn disallowed_preflights_get_no_cors_headers_or_403_when_asked() {
    for (origin, method, headers) in [
        ("https://evil.com", "GET", ""),
        ("https://app.example.com", "DELETE", ""),
        ("https://app.example.com", "GET", "x-secret"),
    ] {
        let reply = preflight(&strict(), origin, method, headers);
        assert_eq!(reply.status, 204, "{origin} {method} {headers}");
        assert!(
            reply
                .headers
                .iter()
                .all(|(n, _)| !n.starts_with("access-control-")),
            "{origin} {method} {headers}: {:?}",
            reply.headers
        );
    }
    let rejecting = engine(
        json!({ "allow_origins": ["https://app.example.com"], "reject_disallowed_preflight": true }),
    );
    assert_eq!(
        preflight(&rejecting, "https://evil.com", "GET", "").status,
        403
    );
}

#[test]
fn responses_carry_the_origin_only_when_allowed_and_always_vary() {
    let engine = strict();
    let allowed = response_changes(&engine, &[("origin", "https://app.example.com")]);
    assert_eq!(
        value(&allowed, "access-control-allow-origin"),
        Some(&HeaderChange::Replace(vec![
            "https://app.example.com".into()
        ]))
    );
    assert_eq!(
        value(&allowed, "access-control-allow-credentials"),
        Some(&HeaderChange::Replace(vec!["true".into()]))
    );
    assert_eq!(
        value(&allowed, "access-control-expose-headers"),
        Some(&HeaderChange::Replace(vec!["x-request-id".into()]))
    );
    assert!(matches!(value(&allowed, "vary"), Some(HeaderChange::Append(v)) if v == &["Origin"]));
    // A disallowed origin: the upstream's own CORS header goes too.
    for headers in [&[("origin", "https://evil.com")][..], &[][..]] {
        let changes = response_changes(&engine, headers);
        assert_eq!(
            value(&changes, "access-control-allow-origin"),
            Some(&HeaderChange::Remove),
            "{headers:?}"
        );
        assert!(value(&changes, "vary").is_some(), "{headers:?}");
    }
}

#[test]
fn any_origin_without_credentials_is_a_star_and_an_expression_can_allow() {
    let any = engine(json!({ "allow_origins": ["*"] }));
    let reply = preflight(&any, "https://whoever.test", "GET", "");
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    let by_rule = engine(json!({
        "allow_origin_expression": "request.headers[\"origin\"].endsWith(\".corp.internal\")"
    }));
    let reply = preflight(&by_rule, "https://hr.corp.internal", "GET", "");
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://hr.corp.internal")
    );
    let reply = preflight(&by_rule, "https://corp.internal.evil", "GET", "");
    assert_eq!(reply.header("access-control-allow-origin"), None);
}

#[test]
fn credentials_with_any_origin_are_refused() {
    let error = (FACTORY.build)(&json!({ "allow_origins": ["*"], "allow_credentials": true }))
        .err()
        .unwrap();
    assert_eq!(error.field, "allow_credentials");
}

#[test]
fn origins_that_are_not_origins_are_refused_with_their_index() {
    for (origins, at) in [
        (
            json!(["https://ok.example", "app.example.com"]),
            "allow_origins[1]",
        ),
        (json!(["https://app.*.com"]), "allow_origins[0]"),
        (json!(["https://a.example/path"]), "allow_origins[0]"),
    ] {
        let error = (FACTORY.build)(&json!({ "allow_origins": origins }))
            .err()
            .unwrap();
        assert_eq!(error.field, at);
    }
    let error =
        (FACTORY.build)(&json!({ "allow_origins": ["https://a.example"], "max_age": "soon" }))
            .err()
            .unwrap();
    assert_eq!(error.field, "max_age");
}

#[test]
fn two_origins_are_none_and_methods_are_case_sensitive() {
    let engine = strict();
    let reply = preflight(
        &engine,
        "https://app.example.com,https://evil.com",
        "GET",
        "",
    );
    assert_eq!(reply.header("access-control-allow-origin"), None);
    let reply = preflight(&engine, "https://app.example.com", "put", "");
    assert_eq!(reply.header("access-control-allow-origin"), None);
    let error = (FACTORY.build)(&json!({
        "allow_origins": ["https://a.example"], "allow_credentials": true, "allow_headers": ["*"],
    }))
    .err()
    .unwrap();
    assert_eq!(error.field, "allow_headers");
}
