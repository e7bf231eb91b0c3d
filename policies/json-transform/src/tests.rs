#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use super::*;
use policy_executor::testing::{engine_for, request, start};
use policy_executor::{HeaderMap, Outcome, ResponseOutcome};
use serde_json::{json, Value};

fn engine(config: serde_json::Value) -> policy_executor::Engine {
    engine_for(FACTORY, config).unwrap()
}

/// Sends a request body through the chain: the outcome and the new body.
fn send(
    engine: &policy_executor::Engine,
    headers: &[(&str, &str)],
    body: &str,
) -> (Outcome, Option<Value>) {
    let mut x = start(engine, request("POST", "/", headers)).unwrap();
    assert!(matches!(x.on_request_headers(), Outcome::Continue(_)));
    let outcome = x.on_request_body(body.as_bytes());
    let edit = x
        .take_body_edit()
        .map(|b| serde_json::from_slice(&b).unwrap());
    (outcome, edit)
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[test]
fn edits_apply_in_order_with_wildcards_and_cel_values() {
    let engine = engine(json!({ "request": {
        "remove": ["/debug", "/messages/*/name"],
        "rename": { "/user_id": "userId" },
        "move": { "/options/temperature": "/temperature" },
        "set": { "/model": "request.json.model + \"-mini\"", "/meta/tenant": "request.headers[\"x-tenant\"]" },
    }}));
    let body = r#"{"model":"gpt","debug":true,"user_id":7,"options":{"temperature":0.5},"messages":[{"name":"a","text":"x"}]}"#;
    let (outcome, edited) = send(&engine, &[JSON, ("x-tenant", "acme")], body);
    let Outcome::Continue(changes) = outcome else {
        panic!("{outcome:?}")
    };
    let edited = edited.unwrap();
    assert_eq!(
        edited,
        json!({"model":"gpt-mini","userId":7,"options":{},"temperature":0.5,"messages":[{"text":"x"}],"meta":{"tenant":"acme"}})
    );
    let length = serde_json::to_vec(&edited).unwrap().len().to_string();
    assert!(
        changes
            .iter()
            .any(|(n, c)| n == "content-length" && format!("{c:?}").contains(&length)),
        "{changes:?}"
    );
}

#[test]
fn bodies_that_are_not_json_are_refused_whatever_their_label() {
    let engine = engine(json!({ "request": { "remove": ["/secret"] } }));
    for (headers, body) in [
        (vec![("content-type", "text/plain")], r#"{"secret":1}"#),
        (vec![], r#"{"secret":1}"#),
        (vec![JSON], r#"{"secret":1,"secret":2}"#),
        (vec![JSON], "{"),
    ] {
        let (outcome, _) = send(&engine, &headers, body);
        let Outcome::Respond(reply) = outcome else {
            panic!("{body}: {outcome:?}")
        };
        assert_eq!(reply.status, 415, "{body}");
    }
    let (outcome, edited) = send(&engine, &[], "");
    assert!(
        matches!(outcome, Outcome::Continue(_)) && edited.is_none(),
        "empty bodies pass"
    );
}

#[test]
fn a_body_can_be_built_and_a_blocked_edit_fails_closed() {
    let engine =
        engine(json!({ "request": { "body": "{\"input\": request.json.prompt, \"n\": 1}" } }));
    let (_, edited) = send(&engine, &[JSON], r#"{"prompt":"hi","x":1}"#);
    assert_eq!(edited, Some(json!({"input":"hi","n":1})));
    let engine = self::engine(json!({ "request": { "set": { "/a/b": "1" } } }));
    let (outcome, _) = send(&engine, &[JSON], r#"{"a":"text"}"#);
    assert!(
        matches!(outcome, Outcome::Respond(ref r) if r.status == 500),
        "{outcome:?}"
    );
}

#[test]
fn responses_are_transformed_and_refused_with_502() {
    let engine = engine(json!({ "response": { "remove": ["/internal"] } }));
    let run = |content_type: &str, body: &str| {
        let mut x = start(&engine, request("GET", "/", &[])).unwrap();
        x.on_request_headers();
        let headers = HeaderMap::from_pairs([(":status", "200"), ("content-type", content_type)]);
        assert!(matches!(
            x.on_response_headers(headers),
            ResponseOutcome::Continue(_)
        ));
        let outcome = x.on_response_body(body.as_bytes());
        (outcome, x.take_body_edit())
    };
    let (outcome, edited) = run("application/problem+json", r#"{"internal":1,"ok":true}"#);
    assert!(matches!(outcome, ResponseOutcome::Continue(_)));
    assert_eq!(edited.as_deref(), Some(&br#"{"ok":true}"#[..]));
    let (outcome, _) = run("text/html", "<html>");
    assert!(matches!(outcome, ResponseOutcome::Respond(ref r) if r.status == 502));
}
