use super::*;
use policy_executor::testing::{engine_for, request, start};
use policy_executor::{Attribute, AttributeValue, Connection, Outcome};
use serde_json::json;

/// The status a request gets: 0 when it passes.
fn decide(config: serde_json::Value, path: &str, spiffe_id: Option<&str>) -> u16 {
    let engine = engine_for(FACTORY, config).unwrap_or_else(|e| panic!("{e}"));
    let mut x = start(&engine, request("GET", path, &[("x-team", "a")])).unwrap();
    if let Some(id) = spiffe_id {
        let mut connection = Connection::default();
        connection.insert(Attribute::PeerUriSan, AttributeValue::Text(id.into()));
        x.set_connection(connection);
    }
    match x.on_request_headers() {
        Outcome::Continue(_) => 0,
        Outcome::Respond(reply) => reply.status,
        Outcome::Wait(wait) => panic!("unexpected wait: {wait:?}"),
    }
}

const TEAM_A: &str = "spiffe://corp/ns/team-a/sa/team-a";
const TEAM_B: &str = "spiffe://corp/ns/team-b/sa/team-b";

#[test]
fn allow_rules_let_matching_callers_through_and_the_default_decides_the_rest() {
    let config = json!({
        "rules": [{"name": "team-a", "allow": r#"source.identity.namespace == "team-a""#}],
        "default": "deny",
    });
    assert_eq!(decide(config.clone(), "/zen", Some(TEAM_A)), 0);
    assert_eq!(decide(config.clone(), "/zen", Some(TEAM_B)), 403);
    // No certificate: the allow rule cannot be evaluated, so it does not allow.
    assert_eq!(decide(config, "/zen", None), 403);
    let open = json!({"rules": [{"deny": r#"request.path == "/admin""#}], "default": "allow"});
    assert_eq!(decide(open.clone(), "/zen", None), 0);
    assert_eq!(decide(open, "/admin", None), 403);
}

#[test]
fn deny_beats_allow_and_require_must_hold() {
    let config = json!({
        "rules": [
            {"allow": "true"},
            {"deny": r#"request.path.startsWith("/admin")"#},
            {"require": r#"request.headers["x-team"] == "a""#},
        ],
        "default": "deny",
    });
    assert_eq!(decide(config.clone(), "/zen", None), 0);
    assert_eq!(decide(config, "/admin/x", None), 403);
    let strict = json!({
        "rules": [{"allow": "true"}, {"require": r#"request.headers["x-team"] == "b""#}],
        "default": "allow",
    });
    assert_eq!(decide(strict, "/zen", None), 403);
}

#[test]
fn rules_that_cannot_be_evaluated_fail_closed() {
    // Without a client certificate `source.identity` is absent.
    let deny = json!({
        "rules": [{"deny": r#"source.identity.namespace == "team-b""#}],
        "default": "allow",
    });
    assert_eq!(decide(deny.clone(), "/", Some(TEAM_A)), 0);
    assert_eq!(decide(deny, "/", None), 403);
    let require = json!({"rules": [{"require": "connection.mtls"}], "default": "allow"});
    assert_eq!(decide(require, "/", None), 403);
    let not_bool = json!({"rules": [{"allow": "request.path"}], "default": "deny"});
    assert_eq!(decide(not_bool, "/", None), 403);
}

#[test]
fn the_denial_is_configurable() {
    let engine = engine_for(
        FACTORY,
        json!({
            "rules": [], "default": "deny",
            "denial": {"status": 404, "body": "no such thing\n", "headers": {"X-Reason": "policy"}},
        }),
    )
    .unwrap();
    let mut x = start(&engine, request("GET", "/", &[])).unwrap();
    let Outcome::Respond(reply) = x.on_request_headers() else {
        panic!("not denied")
    };
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body, b"no such thing\n");
    assert!(reply
        .headers
        .contains(&("x-reason".into(), "policy".into())));
}

#[test]
fn bad_rules_are_refused_with_their_position_and_expression() {
    let error = |config| engine_for(FACTORY, config).err().unwrap().to_string();
    assert_eq!(
        error(json!({"rules": [{"allow": "true"}, {"deny": "source.identity.ns == 'x'"}], "default": "deny"})),
        "invalid plugin configuration: route routes[0] \"test\", policy policies[0] authorization@0.1.0, \
         field config.rules[1].deny: expression \"source.identity.ns == 'x'\": unknown attribute \
         `source.identity.ns`; `source.identity` has trustDomain, namespace, serviceAccount"
    );
    assert!(
        error(json!({"rules": [], "default": "deny", "denial": {"status": 99}}))
            .contains("field config.denial.status")
    );
    assert!(error(json!({"rules": []})).contains("default"));
}

#[test]
fn only_the_attributes_the_rules_read_are_fetched() {
    let engine = engine_for(
        FACTORY,
        json!({"rules": [{"allow": "source.spiffeId != ''"}, {"require": "connection.mtls"}], "default": "deny"}),
    )
    .unwrap();
    let x = start(&engine, request("GET", "/", &[])).unwrap();
    assert_eq!(
        x.attributes(),
        policy_executor::AttributeSet::of(Attribute::PeerUriSan)
            | policy_executor::AttributeSet::of(Attribute::Mtls)
    );
}
