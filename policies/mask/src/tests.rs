#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use super::*;
use policy_executor::testing::{engine_for, request, start};
use policy_executor::{ChunkOutcome, Engine, HeaderMap, Outcome, ResponseOutcome};
use serde_json::json;

fn engine(config: serde_json::Value) -> Engine {
    engine_for(FACTORY, config).unwrap()
}

/// Masks a request body: the outcome and the body sent on.
fn request_body(engine: &Engine, content_type: &str, body: &str) -> (Outcome, String) {
    let mut x = start(
        engine,
        request("POST", "/", &[("content-type", content_type)]),
    )
    .unwrap();
    assert!(matches!(x.on_request_headers(), Outcome::Continue(_)));
    let outcome = x.on_request_body(body.as_bytes());
    let sent = x
        .take_body_edit()
        .map_or_else(|| body.to_owned(), |b| String::from_utf8(b).unwrap());
    (outcome, sent)
}

/// Streams a response body in the given chunks: what the client gets, or
/// the refusal.
fn stream(engine: &Engine, content_type: &str, chunks: &[&[u8]]) -> Result<Vec<u8>, u16> {
    let mut x = start(engine, request("GET", "/", &[])).unwrap();
    x.on_request_headers();
    assert!(x.body_needs().response_streamed);
    let headers = HeaderMap::from_pairs([
        (":status", "200"),
        ("content-type", content_type),
        ("content-length", "10"),
    ]);
    let ResponseOutcome::Continue(changes) = x.on_response_headers(headers) else {
        panic!("the headers go on")
    };
    assert!(
        changes.iter().any(|(n, _)| n == "content-length"),
        "a streamed body's length is dropped"
    );
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        match x.on_response_chunk(chunk, i + 1 == chunks.len()) {
            ChunkOutcome::Pass(bytes) => out.extend(bytes),
            ChunkOutcome::Respond(reply) => return Err(reply.status),
        }
    }
    Ok(out)
}

fn response_engine() -> Engine {
    engine(json!({
        "request": false, "response": true, "window_bytes": 32,
        "rules": [
            { "recognizer": "email" },
            { "recognizer": "payment_card", "action": "partial", "keep_last": 4 },
            { "recognizer": "api_key", "action": "deny" },
        ],
    }))
}

#[test]
fn a_secret_split_at_any_byte_is_masked_in_text_streams() {
    let engine = response_engine();
    let text = "hello jane.doe@example.com, your card 4111 1111 1111 1111 is on file. bye";
    let expected = "hello [redacted], your card ***************1111 is on file. bye";
    for cut in 0..=text.len() {
        let (a, b) = text.as_bytes().split_at(cut);
        let out = stream(&engine, "text/plain", &[a, b]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), expected, "cut at {cut}");
    }
    let bytes: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
    assert_eq!(
        stream(&engine, "text/plain", &bytes).unwrap(),
        expected.as_bytes()
    );
}

#[test]
fn sse_events_are_masked_as_units_at_every_split() {
    let engine = response_engine();
    let events = "event: delta\ndata: {\"text\": \"mail jane@\"}\n\ndata: {\"text\": \"x\\u0040example.com\"}\n\ndata: [DONE]\n\n";
    let expected = "event: delta\ndata: {\"text\": \"mail jane@\"}\n\ndata: {\"text\":\"[redacted]\"}\n\ndata: [DONE]\n\n";
    for cut in 0..=events.len() {
        let (a, b) = events.as_bytes().split_at(cut);
        let out = stream(&engine, "text/event-stream", &[a, b])
            .unwrap_or_else(|status| panic!("cut at {cut}: {status}"));
        assert_eq!(String::from_utf8(out).unwrap(), expected, "cut at {cut}");
    }
    // Data lines of one event are one unit.
    let split = "data: jane.doe@exa\ndata: mple.com\n\n";
    let out = stream(&engine, "text/event-stream", &[split.as_bytes()]).unwrap();
    assert_eq!(
        out, b"data: jane.doe@exa\ndata: mple.com\n\n",
        "two lines are joined with a newline: no address"
    );
}

#[test]
fn json_is_masked_in_its_decoded_strings_whatever_its_label() {
    let engine =
        engine(json!({ "rules": [{ "recognizer": "email" }, { "recognizer": "payment_card" }] }));
    for content_type in ["application/json", "text/plain"] {
        let (outcome, sent) = request_body(
            &engine,
            content_type,
            r#"{"to": "jane\u0040example.com", "card": 4111111111111111, "n": 3}"#,
        );
        assert!(matches!(outcome, Outcome::Continue(_)));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&sent).unwrap(),
            json!({"to": "[redacted]", "card": "[redacted]", "n": 3})
        );
    }
    // Not strict JSON: refused when it must be JSON or hides escapes, else
    // masked as text, which sees every value a lenient reader would.
    let twice = r#"{"a": "x", "a": "jane@example.com"}"#;
    let (outcome, _) = request_body(&engine, "application/json", twice);
    assert!(
        matches!(outcome, Outcome::Respond(ref r) if r.status == 400),
        "duplicate keys: {outcome:?}"
    );
    let escaped = r#"{"a": "x", "a": "jane\u0040example.com"}"#;
    let (outcome, _) = request_body(&engine, "text/plain", escaped);
    assert!(
        matches!(outcome, Outcome::Respond(ref r) if r.status == 400),
        "escapes: {outcome:?}"
    );
    let (_, sent) = request_body(&engine, "text/plain", twice);
    assert_eq!(sent, r#"{"a": "x", "a": "[redacted]"}"#);
}

#[test]
fn fields_limit_the_scope_and_actions_do_what_they_say() {
    let engine = engine(json!({
        "fields": ["/user/email", "/notes/*/text"],
        "hash_key": "0123456789abcdef",
        "rules": [{ "recognizer": "email", "action": "hash" }],
    }));
    let (_, sent) = request_body(
        &engine,
        "application/json",
        r#"{"user": {"email": "jane@example.com"}, "other": "jane@example.com", "notes": [{"text": "to jane@example.com"}]}"#,
    );
    let sent: serde_json::Value = serde_json::from_str(&sent).unwrap();
    let hashed = sent["user"]["email"].as_str().unwrap();
    assert!(
        hashed.starts_with("[email:") && hashed.len() == "[email:]".len() + 16,
        "{hashed}"
    );
    assert_eq!(sent["other"], "jane@example.com", "out of scope");
    assert_eq!(
        sent["notes"][0]["text"],
        format!("to {hashed}"),
        "the same value, the same hash"
    );

    let deny = self::engine(json!({ "rules": [{ "recognizer": "api_key", "action": "deny" }] }));
    let (outcome, _) = request_body(&deny, "text/plain", "key AKIAIOSFODNN7EXAMPLE");
    let Outcome::Respond(reply) = outcome else {
        panic!()
    };
    assert_eq!(reply.status, 403);
    assert!(
        !String::from_utf8_lossy(&reply.body).contains("AKIA"),
        "never the value"
    );
}

#[test]
fn a_denied_or_oversized_stream_is_refused() {
    let engine = response_engine();
    assert_eq!(
        stream(
            &engine,
            "text/plain",
            &[b"key AKIAIOSFODNN7EX", b"AMPLE done"]
        ),
        Err(502)
    );
    let small = self::engine(
        json!({ "request": false, "response": true, "max_bytes": 64, "rules": [{ "recognizer": "email" }] }),
    );
    let big = vec![b'a'; 100];
    assert_eq!(
        stream(&small, "application/json", &[b"[\"", &big, b"\"]"]),
        Err(502)
    );
    assert_eq!(
        stream(&small, "text/event-stream", &[b"data: ", &big]),
        Err(502)
    );
}

#[test]
fn findings_are_counted_never_kept() {
    let engine = engine(json!({ "rules": [{ "recognizer": "email" }] }));
    let mut x = start(&engine, request("POST", "/", &[])).unwrap();
    x.on_request_headers();
    x.on_request_body(b"a@example.com b@example.com");
    assert_eq!(
        x.context().metadata().get("mask.findings"),
        Some(&json!({"email": 2}))
    );
}

#[test]
fn a_custom_match_across_two_json_values_never_joins_them() {
    let engine = engine(
        json!({ "rules": [{ "name": "xz", "pattern": "x[^y]*z" }, { "recognizer": "email" }] }),
    );
    let (_, sent) = request_body(
        &engine,
        "application/json",
        r#"{"a": "ax", "b": "zb", "c": "xoz", "d": "jane@example.com"}"#,
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&sent).unwrap(),
        json!({"a": "ax", "b": "zb", "c": "[redacted]", "d": "[redacted]"})
    );
}

#[test]
fn the_in_place_json_path_masks_as_the_document_path_does() {
    let rules =
        json!([{ "recognizer": "email" }, { "recognizer": "payment_card", "action": "partial" }]);
    let in_place = engine(json!({ "rules": rules }));
    // `fields: [/**]` scans everything, through the document.
    let document = engine(json!({ "rules": rules, "fields": ["/**"] }));
    for body in [
        r#"{"jane@example.com": "x", "to": "a@b.co", "n": 4111111111111111, "list": ["4111 1111 1111 1111", {"k": "mail x@y.org \"q\"\n"}]}"#,
        r#"[1, -2.5e3, "none here", {"a": {"b": "deep z@example.net"}}]"#,
        r#""just a string with jane@example.com""#,
    ] {
        let (_, fast) = request_body(&in_place, "application/json", body);
        let (_, slow) = request_body(&document, "application/json", body);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&fast).unwrap(),
            serde_json::from_str::<serde_json::Value>(&slow).unwrap(),
            "{body}"
        );
        assert!(
            !fast.contains("a@b.co") && !fast.contains("4111 1111"),
            "{fast}"
        );
    }
    let (_, fast) = request_body(&in_place, "application/json", r#"{"jane@example.com": 1}"#);
    assert_eq!(
        fast, r#"{"jane@example.com": 1}"#,
        "member names are left alone"
    );
}

#[test]
fn the_decision_log_counts_findings_in_requests_and_responses() {
    let config = json!({
        "decision_log": { "requests": "all" },
        "routes": [{ "name": "r", "policies": [{ "name": "mask", "config": {
            "response": true, "rules": [{ "recognizer": "email" }] } }] }],
    });
    let registry = policy_executor::Registry::new([FACTORY]);
    let engine = Engine::from_config(config.to_string().as_bytes(), &registry).unwrap();
    let mut x = start(&engine, request("POST", "/", &[])).unwrap();
    x.on_request_headers();
    x.on_request_body(b"to jane@example.com and joe@example.org");
    let line: serde_json::Value = serde_json::from_str(&x.take_decision_log().unwrap()).unwrap();
    assert_eq!(line["findings"], json!({ "mask": { "email": 2 } }));
    x.on_response_headers(HeaderMap::from_pairs([
        (":status", "200"),
        ("content-type", "text/plain"),
    ]));
    x.on_response_chunk(b"reply to ann@example.com", true);
    let line = x.take_decision_log().unwrap();
    assert!(!line.contains("example.com"), "never the value: {line}");
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["phase"], "response");
    assert_eq!(line["findings"], json!({ "mask": { "email": 1 } }));
}

#[test]
fn once_a_stream_is_refused_no_later_chunk_passes() {
    let engine = response_engine();
    let mut x = start(&engine, request("GET", "/", &[])).unwrap();
    x.on_request_headers();
    x.on_response_headers(HeaderMap::from_pairs([
        (":status", "200"),
        ("content-type", "text/plain"),
    ]));
    let key = x.on_response_chunk(
        b"key AKIAIOSFODNN7EXAMPLE and more text to pass the window ",
        false,
    );
    assert!(matches!(key, ChunkOutcome::Respond(_)), "{key:?}");
    let later = x.on_response_chunk(b"jane@example.com", true);
    assert!(matches!(later, ChunkOutcome::Respond(_)), "{later:?}");
}
