use super::*;
use policy_executor::testing::{changes, engine_for, request, start};
use policy_executor::{Attribute, AttributeValue, Connection, HeaderChange, HeaderMap, Outcome};
use serde_json::json;

fn replace(value: &str) -> HeaderChange {
    HeaderChange::Replace(vec![value.to_owned()])
}

#[test]
fn the_egress_headers_come_from_the_caller_identity() {
    let engine = engine_for(
        FACTORY,
        json!({"request": {
            "set": {"x-caller-identity": r#"source.identity.namespace + "/" + source.identity.serviceAccount"#},
            "add": {"x-forwarded-by": r#""egress-gateway""#},
            "remove": ["x-internal-debug"],
        }}),
    )
    .unwrap();
    let mut x = start(
        &engine,
        request(
            "GET",
            "/zen",
            &[("x-internal-debug", "1"), ("x-caller-identity", "forged")],
        ),
    )
    .unwrap();
    let mut connection = Connection::default();
    connection.insert(
        Attribute::PeerUriSan,
        AttributeValue::Text("spiffe://corp/ns/team-a/sa/team-a".into()),
    );
    x.set_connection(connection);
    assert_eq!(
        changes(x.on_request_headers()),
        [
            ("x-internal-debug".into(), HeaderChange::Remove),
            ("x-caller-identity".into(), replace("team-a/team-a")),
            (
                "x-forwarded-by".into(),
                HeaderChange::Append(vec!["egress-gateway".into()])
            ),
        ]
    );
}

#[test]
fn a_header_whose_value_cannot_be_computed_is_removed_never_left_as_the_client_sent_it() {
    let engine = engine_for(
        FACTORY,
        json!({"request": {"set": {
            "x-caller-identity": "source.identity.namespace",
            "x-tenant": r#"request.headers["x-tenant"].upperAscii()"#,
            "x-null": "null",
            "x-newline": r#""a\nb""#,
        }}}),
    )
    .unwrap();
    let mut x = start(
        &engine,
        request(
            "GET",
            "/",
            &[("x-tenant", "acme"), ("x-caller-identity", "team-a/team-a")],
        ),
    )
    .unwrap();
    assert_eq!(
        changes(x.on_request_headers()),
        [
            ("x-caller-identity".into(), HeaderChange::Remove),
            ("x-newline".into(), HeaderChange::Remove),
            ("x-null".into(), HeaderChange::Remove),
            ("x-tenant".into(), replace("ACME")),
        ]
    );
}

#[test]
fn a_rewrite_that_cannot_be_computed_refuses_the_request() {
    for edit in [
        json!({"path": "request.headers[\"x-to\"]"}),
        json!({"host": "source.identity.namespace"}),
    ] {
        let engine = engine_for(FACTORY, json!({ "request": edit })).unwrap();
        let mut x = start(&engine, request("GET", "/a", &[])).unwrap();
        match x.on_request_headers() {
            Outcome::Respond(reply) => assert_eq!(reply.status, 500, "{edit}"),
            other => panic!("{edit}: {other:?}"),
        }
    }
}

#[test]
fn values_are_computed_from_the_request_as_it_arrived() {
    let engine = engine_for(
        FACTORY,
        json!({"request": {"remove": ["x-user"], "set": {"x-subject": r#"request.headers["x-user"]"#}}}),
    )
    .unwrap();
    let mut x = start(&engine, request("GET", "/", &[("x-user", "alice")])).unwrap();
    assert_eq!(
        changes(x.on_request_headers()),
        [
            ("x-user".into(), HeaderChange::Remove),
            ("x-subject".into(), replace("alice"))
        ]
    );
}

#[test]
fn path_and_host_rewrites_keep_the_query() {
    let engine = engine_for(
        FACTORY,
        json!({"request": {"path": r#""/v2" + request.path"#, "host": r#""internal.example""#}}),
    )
    .unwrap();
    let mut x = start(&engine, request("GET", "/users?page=2", &[])).unwrap();
    assert_eq!(
        changes(x.on_request_headers()),
        [
            (":path".into(), replace("/v2/users?page=2")),
            (":authority".into(), replace("internal.example")),
        ]
    );
    let engine = engine_for(
        FACTORY,
        json!({"request": {"path": r#""/search?q=" + request.query["q"]"#}}),
    )
    .unwrap();
    let mut x = start(&engine, request("GET", "/find?q=rust", &[])).unwrap();
    assert_eq!(
        changes(x.on_request_headers()),
        [(":path".into(), replace("/search?q=rust"))]
    );
    // A path that is not one (no leading slash) cannot be sent upstream,
    // and the request is refused rather than sent on unchanged.
    let engine = engine_for(FACTORY, json!({"request": {"path": r#""relative""#}})).unwrap();
    let mut x = start(&engine, request("GET", "/a", &[])).unwrap();
    match x.on_request_headers() {
        Outcome::Respond(reply) => assert_eq!(reply.status, 500),
        other => panic!("expected a 500, got {other:?}"),
    }
}

#[test]
fn response_headers_can_read_the_response() {
    let engine = engine_for(
        FACTORY,
        json!({"response": {"set": {"x-upstream-status": "string(response.code)"}, "remove": ["server"]}}),
    )
    .unwrap();
    let mut x = start(&engine, request("GET", "/", &[])).unwrap();
    assert_eq!(changes(x.on_request_headers()), []);
    let response = HeaderMap::from_pairs([(":status", "418"), ("server", "echo")]);
    assert_eq!(
        changes(x.on_response_headers(response)),
        [
            ("server".into(), HeaderChange::Remove),
            ("x-upstream-status".into(), replace("418"))
        ]
    );
}

#[test]
fn bad_expressions_and_names_are_refused_where_they_are() {
    let error = |config| engine_for(FACTORY, config).err().unwrap().to_string();
    let e = error(json!({"request": {"set": {"x-a": "request.header"}}}));
    assert!(e.contains("field config.request.set.x-a: expression \"request.header\": unknown attribute `request.header`"), "{e}");
    let e = error(json!({"request": {"set": {"x-a": "response.code"}}}));
    assert!(
        e.contains("field config.request.set.x-a") && e.contains("runs on the request"),
        "{e}"
    );
    let e = error(json!({"request": {"add": {"bad name": "'v'"}}}));
    assert!(
        e.contains("field config.request.add.bad name: invalid header name"),
        "{e}"
    );
    let e = error(json!({"response": {"host": "'x'"}}));
    assert!(e.contains("config.response.host"), "{e}");
    let e = error(json!({"request": {"path": "'/a' +"}}));
    assert!(
        e.contains("config.request.path") && e.contains("syntax error"),
        "{e}"
    );
}
