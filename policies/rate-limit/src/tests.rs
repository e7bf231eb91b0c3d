use std::sync::Arc;

use policy_executor::testing::{engine_for, request, start, FakeHost};
use policy_executor::{CallFailure, CallResponse, Engine, Outcome, ResponseOutcome, Wait};
use prost::Message;
use serde_json::json;

use super::*;

/// 2026-12-01 00:00:00 UTC.
const NOW: u64 = 1_796_083_200_000;

fn engine_at(config: serde_json::Value, host: &FakeHost) -> Engine {
    let mut engine = engine_for(FACTORY, config).expect("valid configuration");
    engine.set_host(Box::new(host.clone()));
    engine
}

/// The status a request gets: 200 when admitted.
fn status(engine: &Engine, headers: &[(&str, &str)]) -> u16 {
    reply(engine, headers).map_or(200, |r| r.status)
}

fn reply(engine: &Engine, headers: &[(&str, &str)]) -> Option<LocalReply> {
    let mut exchange = start(engine, request("GET", "/", headers)).expect("a chain");
    match exchange.on_request_headers() {
        Outcome::Continue(_) => None,
        Outcome::Respond(reply) => Some(reply),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_bucket_admits_exactly_its_size_then_refills_at_the_rate() {
    let host = FakeHost::at(NOW);
    let engine = engine_at(
        json!({ "limits": [{ "name": "l", "requests": 3, "window": "3s" }] }),
        &host,
    );
    let statuses: Vec<u16> = (0..5).map(|_| status(&engine, &[])).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    host.advance(999);
    assert_eq!(status(&engine, &[]), 429);
    host.advance(1);
    assert_eq!(status(&engine, &[]), 200);
    assert_eq!(status(&engine, &[]), 429);
    host.advance(10_000);
    let statuses: Vec<u16> = (0..4).map(|_| status(&engine, &[])).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
}

#[test]
fn a_denial_says_when_to_retry_and_what_the_limits_are() {
    let host = FakeHost::at(NOW);
    let engine = engine_at(
        json!({ "limits": [
            { "name": "per-minute", "requests": 2, "unit": "minute" },
            { "name": "per-hour", "requests": 100, "unit": "hour" },
        ] }),
        &host,
    );
    assert_eq!(status(&engine, &[]), 200);
    assert_eq!(status(&engine, &[]), 200);
    let denied = reply(&engine, &[]).expect("denied");
    assert_eq!(denied.status, 429);
    assert_eq!(denied.header("retry-after"), Some("30"));
    assert_eq!(
        denied.header("ratelimit-policy"),
        Some("\"per-minute\";q=2;w=60, \"per-hour\";q=100;w=3600")
    );
    assert_eq!(
        denied.header("ratelimit"),
        Some("\"per-minute\";r=0;t=60, \"per-hour\";r=98;t=72")
    );
    assert_eq!(denied.body, b"rate limit exceeded\n");
}

#[test]
fn every_limit_applies_and_a_denied_request_consumes_nothing() {
    let host = FakeHost::at(NOW);
    let engine = engine_at(
        json!({ "limits": [
            { "name": "tenant", "descriptors": { "t": "request.headers[\"x-tenant\"]" }, "requests": 2, "unit": "hour" },
            { "name": "all", "requests": 3, "unit": "hour" },
        ] }),
        &host,
    );
    assert_eq!(status(&engine, &[("x-tenant", "a")]), 200);
    assert_eq!(status(&engine, &[("x-tenant", "a")]), 200);
    // Tenant a is out; its refusals do not use up `all`.
    assert_eq!(status(&engine, &[("x-tenant", "a")]), 429);
    assert_eq!(status(&engine, &[("x-tenant", "a")]), 429);
    assert_eq!(status(&engine, &[("x-tenant", "b")]), 200);
    // `all` is out now: b is refused though its own bucket has room.
    assert_eq!(status(&engine, &[("x-tenant", "b")]), 429);
}

#[test]
fn keys_that_cannot_be_evaluated_share_the_default_bucket_and_overrides_apply() {
    let host = FakeHost::at(NOW);
    let engine = engine_at(
        json!({ "limits": [{
            "name": "tenant",
            "descriptors": { "t": "request.headers[\"x-tenant\"]" },
            "default_bucket": "anonymous",
            "requests": 1,
            "unit": "hour",
            "overrides": [{ "descriptors": { "t": "gold" }, "requests": 3 }],
        }] }),
        &host,
    );
    assert_eq!(status(&engine, &[]), 200);
    assert_eq!(status(&engine, &[]), 429, "no header: the default bucket");
    // A tenant literally named like the default bucket is another bucket.
    assert_eq!(status(&engine, &[("x-tenant", "anonymous")]), 200);
    assert_eq!(status(&engine, &[("x-tenant", "!anonymous")]), 200);
    let gold: Vec<u16> = (0..4)
        .map(|_| status(&engine, &[("x-tenant", "gold")]))
        .collect();
    assert_eq!(gold, [200, 200, 200, 429]);
}

#[test]
fn cost_counts_by_expression_and_an_unreadable_cost_is_refused() {
    let host = FakeHost::at(NOW);
    let engine = engine_at(
        json!({ "limits": [{
            "name": "bytes", "requests": 10, "unit": "hour",
            "cost": "int(request.headers[\"x-units\"])",
        }] }),
        &host,
    );
    assert_eq!(status(&engine, &[("x-units", "6")]), 200);
    assert_eq!(status(&engine, &[("x-units", "5")]), 429);
    assert_eq!(status(&engine, &[("x-units", "4")]), 200);
    assert_eq!(status(&engine, &[("x-units", "0")]), 200);
    assert_eq!(status(&engine, &[]), 500, "no cost, no decision");
    assert_eq!(status(&engine, &[("x-units", "-1")]), 500);
}

#[test]
fn allowed_responses_carry_the_headers_when_asked() {
    let host = FakeHost::at(NOW);
    let engine = engine_at(
        json!({ "limits": [{ "name": "l", "requests": 5, "unit": "second" }], "headers": "always" }),
        &host,
    );
    let mut exchange = start(&engine, request("GET", "/", &[])).expect("a chain");
    assert!(matches!(
        exchange.on_request_headers(),
        Outcome::Continue(_)
    ));
    let response =
        policy_executor::HeaderMap::from_pairs([(":status", "200"), ("ratelimit", "forged")]);
    let ResponseOutcome::Continue(changes) = exchange.on_response_headers(response) else {
        panic!("expected the response to go on");
    };
    let changes: Vec<(String, String)> = changes
        .iter()
        .map(|(n, c)| (n.to_owned(), format!("{c:?}")))
        .collect();
    assert!(
        changes
            .iter()
            .any(|(n, c)| n == "ratelimit" && c.contains("\\\"l\\\";r=4;t=1")),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|(n, c)| n == "ratelimit-policy" && c.contains("q=5;w=1")),
        "{changes:?}"
    );
}

#[test]
fn workers_racing_on_one_bucket_admit_exactly_its_size() {
    let host = FakeHost::at(NOW);
    let config = json!({ "limits": [{ "name": "l", "descriptors": { "k": "request.headers[\"x-k\"]" }, "requests": 500, "unit": "hour" }] });
    // Four "workers": engines of their own over one shared storage.
    let engines: Vec<Arc<Engine>> = (0..4)
        .map(|_| Arc::new(engine_at(config.clone(), &host)))
        .collect();
    // The bucket exists before the race (see local.rs on creation).
    assert_eq!(status(&engines[0], &[("x-k", "hot")]), 200);
    let admitted: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = engines
            .iter()
            .map(|engine| {
                scope.spawn(move || {
                    (0..300)
                        .filter(|_| status(engine, &[("x-k", "hot")]) == 200)
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(admitted, 499);
}

#[test]
fn keys_beyond_max_keys_share_slots_without_loosening_any_limit() {
    let host = FakeHost::at(NOW);
    let engine = engine_at(
        json!({ "limits": [{ "name": "l", "descriptors": { "k": "request.headers[\"x-k\"]" }, "requests": 2, "unit": "hour" }], "max_keys": 1 }),
        &host,
    );
    // One slot for every key: a and b share it while a's bucket is in use.
    assert_eq!(status(&engine, &[("x-k", "a")]), 200);
    assert_eq!(status(&engine, &[("x-k", "b")]), 200);
    assert_eq!(status(&engine, &[("x-k", "a")]), 429);
    assert_eq!(status(&engine, &[("x-k", "b")]), 429);
    // Once idle (full again), another key takes the slot over.
    host.advance(3_600_000);
    assert_eq!(status(&engine, &[("x-k", "c")]), 200);
    assert_eq!(status(&engine, &[("x-k", "c")]), 200);
    assert_eq!(status(&engine, &[("x-k", "c")]), 429);
}

fn global(extra: serde_json::Value) -> serde_json::Value {
    let mut config = json!({
        "limits": [
            { "name": "user", "descriptors": { "user": "request.headers[\"x-user\"]" }, "requests": 5, "unit": "minute" },
            { "name": "all", "requests": 100, "unit": "second" },
        ],
        "global": { "grpc": { "uri": "http://ratelimit.example:8081", "cluster": "ratelimit" }, "domain": "edge" },
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    config
}

fn answered(code: proto::Code, statuses: Vec<proto::DescriptorStatus>) -> policy_executor::Answer {
    Ok(CallResponse {
        status: 200,
        headers: Vec::new(),
        body: proto::RateLimitResponse {
            overall_code: code as i32,
            statuses,
        }
        .encode_to_vec(),
    })
}

fn descriptor_status(
    code: proto::Code,
    remaining: u32,
    reset_secs: i64,
) -> proto::DescriptorStatus {
    proto::DescriptorStatus {
        code: code as i32,
        current_limit: None,
        limit_remaining: remaining,
        duration_until_reset: Some(proto::Duration {
            seconds: reset_secs,
            nanos: 0,
        }),
    }
}

#[test]
fn global_mode_asks_the_service_with_each_limit_as_a_descriptor() {
    let host = FakeHost::at(NOW);
    let engine = engine_at(global(json!({})), &host);
    let mut exchange = start(&engine, request("GET", "/", &[("x-user", "alice")])).unwrap();
    let Outcome::Wait(Wait::Send(call)) = exchange.on_request_headers() else {
        panic!("expected a call");
    };
    assert_eq!(call.service.cluster, "ratelimit");
    assert_eq!(call.service.authority(), "ratelimit.example:8081");
    assert_eq!(call.timeout, std::time::Duration::from_millis(100));
    let policy_executor::CallRequest::Grpc {
        service,
        method,
        message,
        ..
    } = &call.request
    else {
        panic!("expected gRPC");
    };
    assert_eq!(
        (service.as_str(), method.as_str()),
        (
            "envoy.service.ratelimit.v3.RateLimitService",
            "ShouldRateLimit"
        )
    );
    let sent = proto::RateLimitRequest::decode(message.as_slice()).unwrap();
    assert_eq!(sent.domain, "edge");
    assert_eq!(sent.hits_addend, 1);
    let entries: Vec<Vec<(String, String)>> = sent
        .descriptors
        .iter()
        .map(|d| {
            d.entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect()
        })
        .collect();
    assert_eq!(
        entries,
        [
            vec![
                ("limit".into(), "user".into()),
                ("user".into(), "alice".into())
            ],
            vec![("limit".into(), "all".into())],
        ]
    );
    let limits: Vec<_> = sent.descriptors.iter().map(|d| d.limit.unwrap()).collect();
    assert_eq!(
        (limits[0].requests_per_unit, limits[0].unit),
        (5, proto::Unit::Minute as i32)
    );
    assert_eq!(
        (limits[1].requests_per_unit, limits[1].unit),
        (100, proto::Unit::Second as i32)
    );

    let outcome = exchange.on_answer(answered(
        proto::Code::OverLimit,
        vec![
            descriptor_status(proto::Code::OverLimit, 0, 12),
            descriptor_status(proto::Code::Ok, 90, 1),
        ],
    ));
    let Outcome::Respond(denied) = outcome else {
        panic!("expected a denial, got {outcome:?}")
    };
    assert_eq!(denied.status, 429);
    assert_eq!(denied.header("retry-after"), Some("12"));
    assert_eq!(
        denied.header("ratelimit"),
        Some("\"user\";r=0;t=12, \"all\";r=90;t=1")
    );
}

#[test]
fn global_mode_fails_closed_unless_told_otherwise() {
    let host = FakeHost::at(NOW);
    for (extra, failure, expected) in [
        (json!({}), Err(CallFailure::Timeout), Some(500)),
        (
            json!({}),
            Err(CallFailure::Unreachable("refused".into())),
            Some(500),
        ),
        (json!({}), answered(proto::Code::Unknown, vec![]), Some(500)),
        (
            json!({ "status_on_error": 503 }),
            Err(CallFailure::Timeout),
            Some(503),
        ),
        (
            json!({}),
            Ok(CallResponse {
                status: 200,
                headers: vec![],
                body: b"\xff\xff".to_vec(),
            }),
            Some(500),
        ),
        (json!({}), answered(proto::Code::Ok, vec![]), None),
    ] {
        let engine = engine_at(global(extra), &host);
        let mut exchange = start(&engine, request("GET", "/", &[])).unwrap();
        assert!(matches!(
            exchange.on_request_headers(),
            Outcome::Wait(Wait::Send(_))
        ));
        let got = match exchange.on_answer(failure.clone()) {
            Outcome::Respond(reply) => Some(reply.status),
            Outcome::Continue(_) => None,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(got, expected, "answer {failure:?}");
    }
    let mut config = global(json!({}));
    config["global"]["failure_mode"] = json!("allow");
    let engine = engine_at(config, &host);
    let mut exchange = start(&engine, request("GET", "/", &[])).unwrap();
    assert!(matches!(
        exchange.on_request_headers(),
        Outcome::Wait(Wait::Send(_))
    ));
    assert!(matches!(
        exchange.on_answer(Err(CallFailure::Timeout)),
        Outcome::Continue(_)
    ));
}

#[test]
fn configuration_errors_name_the_field() {
    for (config, field) in [
        (
            json!({ "limits": [{ "name": "a", "requests": 1, "window": "10s" }], "global": { "grpc": { "uri": "http://rl:1", "cluster": "rl" } } }),
            "limits[0].window",
        ),
        (
            json!({ "limits": [{ "name": "a", "requests": 1, "unit": "second", "descriptors": { "limit": "1" } }] }),
            "limits[0].descriptors.limit",
        ),
        (
            json!({ "limits": [{ "name": "a", "requests": 1, "unit": "second", "descriptors": { "k": "request.nope" } }] }),
            "limits[0].descriptors.k",
        ),
        (
            json!({ "limits": [{ "name": "a", "requests": 1, "unit": "second", "overrides": [{ "descriptors": { "k": "v" }, "requests": 2 }] }] }),
            "limits[0].overrides[0].descriptors.k",
        ),
        (
            json!({ "limits": [{ "name": "a", "requests": 1, "unit": "second" }, { "name": "a", "requests": 1, "unit": "second" }] }),
            "limits[1].name",
        ),
        (
            json!({ "limits": [{ "name": "a", "requests": 1, "unit": "second", "cost": "1 +" }] }),
            "limits[0].cost",
        ),
        (
            json!({ "limits": [{ "name": "a", "requests": 600000, "unit": "second" }] }),
            "limits[0].requests",
        ),
        (
            json!({ "limits": [{ "name": "a", "requests": 1, "window": "1500ms" }] }),
            "limits[0].window",
        ),
        (
            json!({ "limits": [{ "name": "a", "requests": 1, "unit": "second" }], "deny": { "content_type": "a\nb" } }),
            "deny.content_type",
        ),
        (
            json!({ "limits": [{ "name": "a", "requests": 1, "unit": "second" }], "max_keys": 2000000 }),
            "max_keys",
        ),
    ] {
        let error = (FACTORY.build)(&config)
            .err()
            .unwrap_or_else(|| panic!("{config} accepted"));
        assert_eq!(error.field, field, "{config}: {}", error.reason);
    }
}

#[test]
fn a_request_that_can_never_fit_gets_no_retry_after() {
    let host = FakeHost::at(NOW);
    let engine = engine_at(
        json!({ "limits": [{
            "name": "units", "requests": 5, "unit": "minute",
            "cost": "int(request.headers[\"x-units\"])",
        }] }),
        &host,
    );
    let denied = reply(&engine, &[("x-units", "6")]).expect("denied");
    assert_eq!(denied.status, 429);
    assert_eq!(denied.header("retry-after"), None);
    assert_eq!(
        denied.header("ratelimit"),
        Some("\"units\";r=5;t=0"),
        "nothing was taken"
    );
}

#[test]
fn global_answers_are_read_strictly() {
    let host = FakeHost::at(NOW);
    let engine = engine_at(global(json!({})), &host);
    let ask = |answer: policy_executor::Answer| {
        let mut exchange = start(&engine, request("GET", "/", &[])).unwrap();
        assert!(matches!(
            exchange.on_request_headers(),
            Outcome::Wait(Wait::Send(_))
        ));
        match exchange.on_answer(answer) {
            Outcome::Respond(reply) => Some(reply),
            Outcome::Continue(_) => None,
            other => panic!("unexpected {other:?}"),
        }
    };
    // One status for two descriptors: no decision, refused.
    let short = ask(answered(
        proto::Code::Ok,
        vec![descriptor_status(proto::Code::Ok, 1, 1)],
    ));
    assert_eq!(short.map(|r| r.status), Some(500));
    // No statuses at all: the overall code decides, without RateLimit.
    assert!(ask(answered(proto::Code::Ok, vec![])).is_none());
    let over = ask(answered(proto::Code::OverLimit, vec![])).expect("denied");
    assert_eq!(over.status, 429);
    assert_eq!(over.header("ratelimit"), None);
    assert_eq!(over.header("retry-after"), Some("1"));
    assert!(over.header("ratelimit-policy").is_some());
}
