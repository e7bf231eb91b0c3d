use policy_executor::testing::{changes, engine_for, request, start, FakeHost};
use policy_executor::{
    CallFailure, CallRequest, CallResponse, Engine, Exchange, HeaderChange, Outcome, Wait,
};
use prost::Message;
use serde_json::json;

use super::*;

fn engine(config: serde_json::Value) -> Engine {
    let mut engine = engine_for(FACTORY, config).expect("valid configuration");
    engine.set_host(Box::new(FakeHost::at(1_000_000)));
    engine
}

fn grpc(extra: serde_json::Value) -> Engine {
    let mut config = json!({ "grpc": { "uri": "http://authz.example:9001", "cluster": "authz" } });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    engine(config)
}

/// Starts an exchange and returns it with the call it asked to send.
fn called(engine: &Engine, headers: &[(&str, &str)]) -> (Exchange, Call) {
    let mut exchange = start(engine, request("GET", "/orders?id=7", headers)).expect("a chain");
    match exchange.on_request_headers() {
        Outcome::Wait(Wait::Send(call)) => (exchange, call),
        other => panic!("expected a call, got {other:?}"),
    }
}

fn check_request(call: &Call) -> proto::CheckRequest {
    match &call.request {
        CallRequest::Grpc {
            service,
            method,
            message,
            ..
        } => {
            assert_eq!(service, "envoy.service.auth.v3.Authorization");
            assert_eq!(method, "Check");
            proto::CheckRequest::decode(message.as_slice()).expect("a CheckRequest")
        }
        other => panic!("expected a gRPC call, got {other:?}"),
    }
}

fn answer(response: proto::CheckResponse) -> Answer {
    Ok(CallResponse {
        status: 200,
        headers: Vec::new(),
        body: response.encode_to_vec(),
    })
}

fn header(key: &str, value: &str, action: i32) -> proto::HeaderValueOption {
    proto::HeaderValueOption {
        header: Some(proto::HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: action,
    }
}

fn allow(ok: proto::OkHttpResponse, metadata: Option<proto::Struct>) -> proto::CheckResponse {
    proto::CheckResponse {
        status: Some(proto::Status {
            code: 0,
            message: String::new(),
        }),
        http_response: Some(proto::HttpResponse::OkResponse(ok)),
        dynamic_metadata: metadata,
    }
}

fn replied(outcome: Outcome) -> LocalReply {
    match outcome {
        Outcome::Respond(reply) => reply,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn the_check_carries_the_request_and_the_service_is_the_configured_one() {
    let engine = grpc(
        json!({ "include_headers": ["authorization"], "context_extensions": { "tier": "gold" } }),
    );
    let (_, call) = called(&engine, &[("authorization", "Bearer t"), ("x-other", "1")]);
    assert_eq!(call.service.cluster, "authz");
    assert_eq!(call.service.base_uri, "http://authz.example:9001");
    assert_eq!(call.timeout, std::time::Duration::from_millis(200));
    let check = check_request(&call);
    let attributes = check.attributes.expect("attributes");
    let http = attributes
        .request
        .and_then(|r| r.http)
        .expect("the HTTP request");
    assert_eq!(http.method, "GET");
    assert_eq!(http.path, "/orders?id=7");
    assert_eq!(http.query, "id=7");
    assert_eq!(http.host, "example.com");
    assert_eq!(
        http.headers.len(),
        1,
        "only the included headers: {:?}",
        http.headers
    );
    assert_eq!(
        http.headers.get("authorization").map(String::as_str),
        Some("Bearer t")
    );
    assert_eq!(
        attributes
            .context_extensions
            .get("tier")
            .map(String::as_str),
        Some("gold")
    );
}

#[test]
fn an_allow_sets_and_removes_headers_and_hands_metadata_on() {
    let engine = grpc(json!({}));
    let (mut exchange, _) = called(
        &engine,
        &[
            ("x-user", "spoofed"),
            ("x_user", "spoofed"),
            ("x-debug", "1"),
        ],
    );
    let ok = proto::OkHttpResponse {
        headers: vec![
            header(
                "x-user",
                "alice",
                proto::HeaderValueOption::OVERWRITE_IF_EXISTS_OR_ADD,
            ),
            proto::HeaderValueOption {
                append: Some(proto::BoolValue { value: true }),
                ..header("x-tag", "a", 0)
            },
        ],
        headers_to_remove: vec!["x-debug".into(), "host".into()],
        response_headers_to_add: Vec::new(),
    };
    let mut fields = HashMap::new();
    fields.insert(
        "user".to_owned(),
        proto::Value {
            kind: Some(proto::ValueKind::String("alice".into())),
        },
    );
    let outcome = exchange.on_answer(answer(allow(ok, Some(proto::Struct { fields }))));
    let applied = changes(outcome);
    let find = |name: &str| {
        applied
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
    };
    assert_eq!(
        find("x-user"),
        Some(HeaderChange::Replace(vec!["alice".into()]))
    );
    assert_eq!(
        find("x_user"),
        Some(HeaderChange::Remove),
        "the client's variant goes"
    );
    assert_eq!(find("x-tag"), Some(HeaderChange::Append(vec!["a".into()])));
    assert_eq!(find("x-debug"), Some(HeaderChange::Remove));
    assert_eq!(
        find("host"),
        None,
        "where the request goes is not the service's to remove"
    );
    assert_eq!(
        exchange.context().metadata().get("ext-authz.user"),
        Some(&json!("alice"))
    );
}

#[test]
fn a_denial_is_the_services_status_headers_and_body() {
    let engine = grpc(json!({}));
    let (mut exchange, _) = called(&engine, &[]);
    let denied = proto::CheckResponse {
        status: Some(proto::Status {
            code: 7,
            message: "no".into(),
        }),
        http_response: Some(proto::HttpResponse::DeniedResponse(
            proto::DeniedHttpResponse {
                status: Some(proto::HttpStatus { code: 401 }),
                headers: vec![header("www-authenticate", "Bearer", 0)],
                body: "who are you?".into(),
            },
        )),
        dynamic_metadata: None,
    };
    let reply = replied(exchange.on_answer(answer(denied)));
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.headers,
        vec![("www-authenticate".into(), "Bearer".into())]
    );
    assert_eq!(reply.body, b"who are you?");
    // A non-OK status without a denied response is a plain 403.
    let (mut exchange, _) = called(&engine, &[]);
    let bare = proto::CheckResponse {
        status: Some(proto::Status {
            code: 7,
            message: String::new(),
        }),
        http_response: None,
        dynamic_metadata: None,
    };
    assert_eq!(replied(exchange.on_answer(answer(bare))).status, 403);
}

#[test]
fn no_answer_fails_closed_unless_the_user_chose_otherwise() {
    let engine = grpc(json!({}));
    for failure in [
        Err(CallFailure::Timeout),
        Err(CallFailure::Unreachable("refused".into())),
        Err(CallFailure::GrpcStatus {
            code: 13,
            message: "internal".into(),
        }),
        Ok(CallResponse {
            status: 200,
            headers: Vec::new(),
            body: vec![0xff, 0xff, 0xff],
        }),
    ] {
        let (mut exchange, _) = called(&engine, &[]);
        assert_eq!(
            replied(exchange.on_answer(failure.clone())).status,
            403,
            "{failure:?}"
        );
    }
    let open = grpc(json!({ "failure_mode": "allow", "status_on_error": 503 }));
    let (mut exchange, _) = called(&open, &[]);
    assert!(matches!(
        exchange.on_answer(Err(CallFailure::Timeout)),
        Outcome::Continue(_)
    ));
    let closed = grpc(json!({ "status_on_error": 503 }));
    let (mut exchange, _) = called(&closed, &[]);
    assert_eq!(
        replied(exchange.on_answer(Err(CallFailure::Timeout))).status,
        503
    );
}

#[test]
fn an_unanswered_call_is_given_up_as_a_timeout_when_the_host_never_answers() {
    let host = FakeHost::at(1_000_000);
    let mut engine = engine_for(
        FACTORY,
        json!({ "grpc": { "uri": "http://a:1", "cluster": "a" } }),
    )
    .expect("valid configuration");
    engine.set_host(Box::new(host.clone()));
    let (mut exchange, _) = called(&engine, &[]);
    assert_eq!(exchange.poll(), Outcome::Wait(Wait::Poll));
    host.advance(200 + 1_000);
    assert_eq!(replied(exchange.poll()).status, 403);
}

fn http_engine() -> Engine {
    engine(json!({
        "http": {
            "uri": "http://authz.example:8000/check/",
            "cluster": "authz-http",
            "allowed_upstream_headers": ["x-user"],
            "allowed_client_headers": ["www-authenticate"],
        },
        "include_headers": ["authorization"],
    }))
}

#[test]
fn http_mode_forwards_the_request_and_takes_only_the_allowed_headers() {
    let engine = http_engine();
    let (mut exchange, call) = called(
        &engine,
        &[
            ("authorization", "Basic x"),
            ("x-user", "spoofed"),
            ("cookie", "c"),
        ],
    );
    match &call.request {
        CallRequest::Http {
            method,
            path,
            headers,
            ..
        } => {
            assert_eq!(method, "GET");
            assert_eq!(path, "/check/orders?id=7");
            assert!(headers.contains(&("authorization".into(), "Basic x".into())));
            assert!(!headers.iter().any(|(n, _)| n == "cookie"), "{headers:?}");
        }
        other => panic!("expected an HTTP call, got {other:?}"),
    }
    let ok = Ok(CallResponse {
        status: 200,
        headers: vec![
            ("x-user".into(), "bob".into()),
            ("x-secret".into(), "s".into()),
        ],
        body: Vec::new(),
    });
    let applied = changes(exchange.on_answer(ok));
    assert!(applied.contains(&("x-user".into(), HeaderChange::Replace(vec!["bob".into()]))));
    assert!(!applied.iter().any(|(n, _)| n == "x-secret"));
    // A 2xx that does not set the asserted header still removes the
    // client's copy.
    let (mut exchange, _) = called(&engine, &[("x-user", "spoofed")]);
    let bare = Ok(CallResponse {
        status: 204,
        headers: Vec::new(),
        body: Vec::new(),
    });
    let applied = changes(exchange.on_answer(bare));
    assert!(
        applied.contains(&("x-user".into(), HeaderChange::Remove)),
        "{applied:?}"
    );
}

#[test]
fn http_mode_returns_any_other_status_as_the_denial() {
    let engine = http_engine();
    let (mut exchange, _) = called(&engine, &[]);
    let denied = Ok(CallResponse {
        status: 401,
        headers: vec![
            ("www-authenticate".into(), "Basic".into()),
            ("x-internal".into(), "1".into()),
        ],
        body: b"no".to_vec(),
    });
    let reply = replied(exchange.on_answer(denied));
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.headers,
        vec![("www-authenticate".into(), "Basic".into())]
    );
    assert_eq!(reply.body, b"no");
}

#[test]
fn cached_decisions_skip_the_call_until_they_expire() {
    let host = FakeHost::at(1_000_000);
    let mut engine = engine_for(
        FACTORY,
        json!({
            "grpc": { "uri": "http://a:1", "cluster": "a" },
            "cache": { "key": "request.headers[\"authorization\"]", "ttl": "30s", "max_entries": 1 },
        }),
    )
    .expect("valid configuration");
    engine.set_host(Box::new(host.clone()));
    let alice = [("authorization", "alice")];
    let (mut exchange, _) = called(&engine, &alice);
    let ok = allow(
        proto::OkHttpResponse {
            headers: vec![header("x-user", "alice", 2)],
            ..Default::default()
        },
        None,
    );
    changes(exchange.on_answer(answer(ok)));
    let mut again = start(&engine, request("GET", "/orders?id=7", &alice)).expect("a chain");
    let applied = changes(again.on_request_headers());
    assert!(applied.contains(&("x-user".into(), HeaderChange::Replace(vec!["alice".into()]))));
    // The same key on another path or method is another decision.
    let mut elsewhere = start(&engine, request("DELETE", "/orders?id=7", &alice)).expect("a chain");
    assert!(matches!(
        elsewhere.on_request_headers(),
        Outcome::Wait(Wait::Send(_))
    ));
    // Another key is asked for; with room for one, it replaces alice's.
    let (mut exchange, _) = called(&engine, &[("authorization", "bob")]);
    changes(exchange.on_answer(answer(allow(Default::default(), None))));
    called(&engine, &alice);
    // No key, no cache: asked every time.
    called(&engine, &[]);
    // Expired: asked again.
    let (mut exchange, _) = called(&engine, &[("authorization", "carol")]);
    changes(exchange.on_answer(answer(allow(Default::default(), None))));
    host.advance(30_000);
    called(&engine, &[("authorization", "carol")]);
}

#[test]
fn with_the_body_the_check_waits_for_it_and_refuses_one_too_large() {
    let engine = grpc(json!({ "include_body": { "max_bytes": 4 } }));
    let mut exchange = start(&engine, request("POST", "/", &[])).expect("a chain");
    assert!(matches!(
        exchange.on_request_headers(),
        Outcome::Continue(_)
    ));
    let Outcome::Wait(Wait::Send(call)) = exchange.on_request_body(b"abcd") else {
        panic!("expected a call from the body phase");
    };
    let http = check_request(&call)
        .attributes
        .and_then(|a| a.request)
        .and_then(|r| r.http)
        .expect("the HTTP request");
    assert_eq!(http.raw_body, b"abcd");
    assert!(matches!(
        exchange.on_answer(answer(allow(Default::default(), None))),
        Outcome::Continue(_)
    ));
    let mut exchange = start(&engine, request("POST", "/", &[])).expect("a chain");
    exchange.on_request_headers();
    assert_eq!(replied(exchange.on_request_body(b"abcde")).status, 413);
}

#[test]
fn headers_without_append_replace_the_clients_and_bad_ones_fail_closed() {
    let engine = grpc(json!({}));
    let (mut exchange, _) = called(&engine, &[("x-user", "admin")]);
    // `append` unset and `append_action` at its default: set, as Envoy.
    let ok = proto::OkHttpResponse {
        headers: vec![header("x-user", "alice", 0)],
        ..Default::default()
    };
    let applied = changes(exchange.on_answer(answer(allow(ok, None))));
    assert!(applied.contains(&("x-user".into(), HeaderChange::Replace(vec!["alice".into()]))));
    let (mut exchange, _) = called(&engine, &[]);
    let mut appended = header("x-tag", "b", 0);
    appended.append = Some(proto::BoolValue { value: true });
    let ok = proto::OkHttpResponse {
        headers: vec![appended],
        ..Default::default()
    };
    let applied = changes(exchange.on_answer(answer(allow(ok, None))));
    assert!(applied.contains(&("x-tag".into(), HeaderChange::Append(vec!["b".into()]))));
    // A header that cannot be set, a response without a status: no
    // decision, so denied.
    let (mut exchange, _) = called(&engine, &[]);
    let ok = proto::OkHttpResponse {
        headers: vec![header("x-user", "alice\r\nx-admin: 1", 0)],
        ..Default::default()
    };
    assert_eq!(
        replied(exchange.on_answer(answer(allow(ok, None)))).status,
        403
    );
    let (mut exchange, _) = called(&engine, &[]);
    let no_status = proto::CheckResponse::default();
    assert_eq!(replied(exchange.on_answer(answer(no_status))).status, 403);
}

#[test]
fn a_denials_headers_cannot_split_the_response() {
    let engine = grpc(json!({}));
    let (mut exchange, _) = called(&engine, &[]);
    let denied = proto::CheckResponse {
        status: Some(proto::Status {
            code: 7,
            message: String::new(),
        }),
        http_response: Some(proto::HttpResponse::DeniedResponse(
            proto::DeniedHttpResponse {
                status: Some(proto::HttpStatus { code: 403 }),
                headers: vec![
                    header("x-ok", "fine", 0),
                    header("x-bad", "a\r\nset-cookie: s=1", 0),
                    header(":status", "200", 0),
                    header("transfer-encoding", "chunked", 0),
                ],
                body: String::new(),
            },
        )),
        dynamic_metadata: None,
    };
    let reply = replied(exchange.on_answer(answer(denied)));
    assert_eq!(reply.headers, vec![("x-ok".into(), "fine".into())]);
}

#[test]
fn http_mode_never_forwards_the_clients_proxy_headers_and_5xx_is_a_failure() {
    let engine = engine(json!({
        "http": { "uri": "http://authz.example:8000", "cluster": "authz-http", "allowed_upstream_headers": ["x-user"] },
        "failure_mode": "allow",
    }));
    let (mut exchange, call) = called(
        &engine,
        &[
            ("authorization", "Basic x"),
            ("x-forwarded-host", "admin.internal"),
            ("x-envoy-upstream-rq-timeout-ms", "1"),
            ("x-user", "mallory"),
            ("cookie", "c"),
        ],
    );
    let CallRequest::Http { headers, .. } = &call.request else {
        panic!("expected an HTTP call");
    };
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["authorization", "x-forwarded-host", "x-forwarded-proto"]
    );
    assert!(headers.contains(&("x-forwarded-host".into(), "example.com".into())));
    // A 503 (Envoy's, when the service is down) is no decision: with
    // failure_mode allow the request goes on, without the client's copy of
    // the header only the service may set.
    let unavailable = Ok(CallResponse {
        status: 503,
        headers: Vec::new(),
        body: b"no healthy upstream".to_vec(),
    });
    let applied = changes(exchange.on_answer(unavailable));
    assert!(
        applied.contains(&("x-user".into(), HeaderChange::Remove)),
        "{applied:?}"
    );
}
