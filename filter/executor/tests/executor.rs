//! The executor's contract, through its public API: configuration in,
//! outcomes out. A `probe` policy records every phase it runs in the
//! request metadata, so the tests can assert order and short-circuits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use policy_executor::{
    parse_params, Action, Context, Engine, Exchange, HeaderChange, HeaderMap, HeaderName,
    HeaderValue, LocalReply, Outcome, ParamError, Phases, Policy, PolicyFactory, Registry,
    ResponseAction, Start,
};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeParams {
    id: String,
    #[serde(default)]
    reply_in: Option<String>,
    #[serde(default)]
    bodies: bool,
    #[serde(default)]
    status: Option<u16>,
}

struct Probe {
    id: String,
    reply_in: Option<String>,
    bodies: bool,
    status: u16,
}

impl Probe {
    fn visit(&self, cx: &mut Context, phase: &str) -> Action {
        let entry = json!(format!("{}:{phase}", self.id));
        match cx.metadata_mut().get_mut("trace") {
            Some(Value::Array(trace)) => trace.push(entry),
            _ => {
                cx.metadata_mut()
                    .insert("trace".into(), Value::Array(vec![entry]));
            }
        }
        // Every visit leaves a mark on the message in flight, so tests see
        // which layers a reply went through.
        let name = HeaderName::parse(&format!("x-{}", self.id)).unwrap();
        cx.headers_mut()
            .append(&name, &HeaderValue::parse(phase).unwrap());
        if self.reply_in.as_deref() == Some(phase) {
            return Action::Respond(LocalReply::text(
                self.status,
                format!("{} says no", self.id),
            ));
        }
        Action::Continue
    }
}

impl Policy for Probe {
    fn phases(&self) -> Phases {
        let headers = Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS;
        if self.bodies {
            headers | Phases::REQUEST_BODY | Phases::RESPONSE_BODY
        } else {
            headers
        }
    }
    fn on_request_headers(&self, cx: &mut Context) -> Action {
        self.visit(cx, "request_headers")
    }
    fn on_request_body(&self, cx: &mut Context, _body: &[u8]) -> Action {
        self.visit(cx, "request_body")
    }
    fn on_response_headers(&self, cx: &mut Context) -> ResponseAction {
        response_action(self.visit(cx, "response_headers"))
    }
    fn on_response_body(&self, cx: &mut Context, _body: &[u8]) -> ResponseAction {
        response_action(self.visit(cx, "response_body"))
    }
}

fn response_action(action: Action) -> ResponseAction {
    match action {
        Action::Respond(reply) => ResponseAction::Respond(reply),
        _ => ResponseAction::Continue,
    }
}

fn build_probe(config: &Value) -> Result<Box<dyn Policy>, ParamError> {
    let p: ProbeParams = parse_params(config)?;
    Ok(Box::new(Probe {
        id: p.id,
        reply_in: p.reply_in,
        bodies: p.bodies,
        status: p.status.unwrap_or(403),
    }))
}

/// Reads metadata written by an earlier policy and copies it to a header.
struct Reader;

impl Policy for Reader {
    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }
    fn on_request_headers(&self, cx: &mut Context) -> Action {
        let seen = cx
            .metadata()
            .get("trace")
            .map(|t| t.to_string())
            .unwrap_or_default();
        let name = HeaderName::parse("x-seen").unwrap();
        cx.headers_mut()
            .set(&name, &HeaderValue::parse(&seen).unwrap());
        Action::Continue
    }
}

fn registry() -> Registry {
    Registry::new([
        PolicyFactory {
            name: "probe",
            version: "1.0.0",
            build: build_probe,
        },
        PolicyFactory {
            name: "reader",
            version: "1.0.0",
            build: |_| Ok(Box::new(Reader)),
        },
    ])
}

fn engine(config: &str) -> Engine {
    Engine::from_config(config.as_bytes(), &registry()).unwrap_or_else(|e| panic!("{e}"))
}

fn config_error(config: &str) -> String {
    match Engine::from_config(config.as_bytes(), &registry()) {
        Ok(_) => panic!("configuration was accepted:\n{config}"),
        Err(e) => e.to_string(),
    }
}

fn request(path: &str) -> HeaderMap {
    HeaderMap::from_pairs([
        (":method", "GET"),
        (":path", path),
        (":authority", "example.com"),
        (":scheme", "http"),
    ])
}

fn exchange(engine: &Engine, path: &str) -> Exchange {
    match engine.start(|| Some("r".to_owned()), request(path)) {
        Start::Run(x) => x,
        _ => panic!("no chain for {path}"),
    }
}

fn trace(x: &Exchange) -> Vec<String> {
    match x.context().metadata().get("trace") {
        Some(Value::Array(t)) => t.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
        _ => vec![],
    }
}

fn chain(probes: &str) -> Engine {
    engine(&format!("routes:\n  - policies: {probes}\n"))
}

fn response(status: &str) -> HeaderMap {
    HeaderMap::from_pairs([(":status", status)])
}

#[test]
fn request_phases_run_in_order_and_response_phases_in_reverse() {
    let e = chain(r#"[{name: probe, config: {id: a}}, {name: probe, config: {id: b}}]"#);
    let mut x = exchange(&e, "/");
    assert!(matches!(x.on_request_headers(), Outcome::Continue(_)));
    assert!(matches!(
        x.on_response_headers(response("200")),
        policy_executor::ResponseOutcome::Continue(_)
    ));
    assert_eq!(
        trace(&x),
        [
            "a:request_headers",
            "b:request_headers",
            "b:response_headers",
            "a:response_headers"
        ]
    );
}

#[test]
fn a_request_reply_skips_later_policies_and_goes_through_earlier_ones() {
    let e = chain(
        r#"[{name: probe, config: {id: a}},
            {name: probe, config: {id: b, reply_in: request_headers, status: 401}},
            {name: probe, config: {id: c}}]"#,
    );
    let mut x = exchange(&e, "/");
    let Outcome::Respond(reply) = x.on_request_headers() else {
        panic!("expected a reply")
    };
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body, b"b says no");
    // a let the request through, so it sees the reply; b made it; c never ran.
    assert_eq!(
        trace(&x),
        [
            "a:request_headers",
            "b:request_headers",
            "a:response_headers"
        ]
    );
    assert!(reply
        .headers
        .contains(&("x-a".into(), "response_headers".into())));
    assert!(!reply.headers.iter().any(|(n, _)| n == "x-b" || n == "x-c"));
    // The exchange is over: later host calls change nothing.
    assert_eq!(
        x.on_response_headers(response("200")),
        policy_executor::ResponseOutcome::Continue(Default::default())
    );
    assert!(!x.acts_on_response());
}

#[test]
fn a_response_reply_replaces_the_response_and_goes_through_outer_policies() {
    let e = chain(
        r#"[{name: probe, config: {id: a}},
            {name: probe, config: {id: b, reply_in: response_headers, status: 502}},
            {name: probe, config: {id: c}}]"#,
    );
    let mut x = exchange(&e, "/");
    x.on_request_headers();
    let policy_executor::ResponseOutcome::Respond(reply) = x.on_response_headers(response("200"))
    else {
        panic!("expected a reply")
    };
    assert_eq!(reply.status, 502);
    assert_eq!(
        trace(&x)[3..],
        [
            "c:response_headers",
            "b:response_headers",
            "a:response_headers"
        ]
    );
    let marks: Vec<_> = reply
        .headers
        .iter()
        .filter(|(n, _)| n.starts_with("x-"))
        .collect();
    assert_eq!(marks, [&("x-a".to_owned(), "response_headers".to_owned())]);
}

#[test]
fn body_phases_run_only_for_chains_that_need_them() {
    let headers_only = chain(r#"[{name: probe, config: {id: a}}]"#);
    let x = exchange(&headers_only, "/");
    assert!(!x.body_needs().request && !x.body_needs().response);

    let bodies = chain(
        r#"[{name: probe, config: {id: a}}, {name: probe, config: {id: b, bodies: true, reply_in: request_body}}]"#,
    );
    let mut x = exchange(&bodies, "/");
    assert!(x.body_needs().request && x.body_needs().response);
    assert!(matches!(x.on_request_headers(), Outcome::Continue(_)));
    let Outcome::Respond(reply) = x.on_request_body(b"payload") else {
        panic!("expected a reply")
    };
    assert_eq!(reply.status, 403);
    // Only b has a body phase; a's response-headers phase decorates b's reply.
    assert_eq!(
        trace(&x),
        [
            "a:request_headers",
            "b:request_headers",
            "b:request_body",
            "a:response_headers"
        ]
    );
}

#[test]
fn later_policies_see_earlier_edits_and_metadata() {
    let e = chain(r#"[{name: probe, config: {id: a}}, {name: reader}]"#);
    let mut x = exchange(&e, "/");
    let Outcome::Continue(changes) = x.on_request_headers() else {
        panic!("expected continue")
    };
    assert_eq!(
        x.context().request_headers().get("x-a"),
        Some("request_headers")
    );
    assert_eq!(
        x.context().request_headers().get("x-seen"),
        Some(r#"["a:request_headers"]"#)
    );
    let changes: Vec<_> = changes
        .iter()
        .map(|(n, c)| (n.to_owned(), c.clone()))
        .collect();
    assert_eq!(
        changes,
        [
            (
                "x-a".into(),
                HeaderChange::Append(vec!["request_headers".into()])
            ),
            (
                "x-seen".into(),
                HeaderChange::Replace(vec![r#"["a:request_headers"]"#.into()])
            ),
        ]
    );
}

#[test]
fn routes_match_in_order_and_unmatched_requests_are_denied_by_default() {
    let e = engine(
        r#"
routes:
  - name: zen
    match: { route: r, path: { exact: /zen } }
    policies: [{name: probe, config: {id: zen}}]
  - name: other-route
    match: { route: other }
    policies: [{name: probe, config: {id: other}}]
  - name: rest
    match: { path: { prefix: /api/ }, methods: [get] }
    policies: [{name: probe, config: {id: rest}}]
"#,
    );
    assert_eq!(
        exchange(&e, "/zen?x").context().route().chain.as_ref(),
        "zen"
    );
    assert_eq!(
        exchange(&e, "/api/v1").context().route().chain.as_ref(),
        "rest"
    );
    assert_eq!(
        exchange(&e, "/api/v1")
            .context()
            .route()
            .route_name
            .as_deref(),
        Some("r")
    );
    match e.start(|| Some("r".to_owned()), request("/nowhere")) {
        Start::Respond(reply) => assert_eq!(reply.status, 403),
        _ => panic!("unmatched request was not denied"),
    }
}

#[test]
fn unmatched_outcomes_are_configurable() {
    let allow = engine("routes: []\nunmatched: allow\n");
    let never = || -> Option<String> { panic!("no entry matches on the route name") };
    assert!(matches!(allow.start(never, request("/")), Start::Pass(m) if m.is_empty()));

    let deny = engine("unmatched: { deny: { status: 404, body: gone } }\n");
    match deny.start(|| None, request("/")) {
        Start::Respond(reply) => assert_eq!((reply.status, reply.body), (404, b"gone".to_vec())),
        _ => panic!("expected a denial"),
    }

    let chain = engine("unmatched: { policies: [{name: probe, config: {id: d}}] }\n");
    let Start::Run(mut x) = chain.start(|| None, request("/")) else {
        panic!("expected the default chain")
    };
    x.on_request_headers();
    assert_eq!(x.context().route().chain.as_ref(), "unmatched");
    assert_eq!(trace(&x), ["d:request_headers"]);
}

#[test]
fn json_and_yaml_configurations_are_equivalent() {
    let yaml = "routes:\n  - name: a\n    policies:\n      - name: probe\n        config: { id: a, reply_in: request_headers }\n";
    let json = r#"{"routes":[{"name":"a","policies":[{"name":"probe","config":{"id":"a","reply_in":"request_headers"}}]}]}"#;
    for text in [yaml, json] {
        let mut x = exchange(&engine(text), "/");
        assert!(
            matches!(x.on_request_headers(), Outcome::Respond(_)),
            "{text}"
        );
    }
}

#[test]
fn configuration_errors_name_route_policy_and_field() {
    let cases = [
        (
            "routes:\n  - name: api\n    policies: [{name: probe, config: {id: a, colour: red}}]\n",
            r#"invalid plugin configuration: route routes[0] "api", policy policies[0] probe@1.0.0, field config.colour: unknown field `colour`"#,
        ),
        (
            "routes:\n  - name: api\n    policies: [{name: probe, config: {id: a}}, {name: nope}]\n",
            r#"route routes[0] "api", policy policies[1] nope, field name: unknown policy "nope" (this build has probe@1.0.0, reader@1.0.0)"#,
        ),
        (
            "routes:\n  - name: api\n    policies: [{name: probe, version: 2.0.0, config: {id: a}}]\n",
            "probe has no version 2.0.0 in this build (it has 1.0.0)",
        ),
        (
            "routes:\n  - match: { route: api, path: { prefix: api } }\n",
            r#"route routes[0] "api", field match.path: "api" does not start with '/'"#,
        ),
        (
            "routes:\n  - match: { host: 'api.*' }\n",
            "field match.host",
        ),
        (
            "routes:\n  - name: a\n  - name: a\n",
            r#"route routes[1] "a", field name: another route entry is already named "a""#,
        ),
        ("routes:\n  - nmae: a\n", "field routes[0].nmae: unknown field `nmae`"),
        ("routes: {", "not valid JSON or YAML"),
        ("  \n", "the configuration is empty"),
        ("unmatched: maybe\n", "field unmatched"),
        (
            "unmatched: { deny: { status: 99 } }\n",
            "field unmatched.deny.status: 99 is not an HTTP status",
        ),
    ];
    for (config, expected) in cases {
        let error = config_error(config);
        assert!(
            error.contains(expected),
            "{error}\n  does not contain\n{expected}"
        );
        assert!(!error.contains('\n'), "not one line: {error}");
    }
}

#[test]
fn a_build_without_policies_rejects_every_policy() {
    let empty = Registry::default();
    let error = Engine::from_config(b"routes: [{policies: [{name: probe}]}]", &empty)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("this build contains no policies"), "{error}");
    assert!(Engine::from_config(b"routes: [{policies: []}]", &empty).is_ok());
}

#[test]
fn a_schema_that_drifted_from_the_typed_parameters_is_caught() {
    use policy_executor::testing::check_definition;
    let factory = PolicyFactory {
        name: "probe",
        version: "1.0.0",
        build: build_probe,
    };
    let dir = std::env::temp_dir().join(format!("drift-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy_yaml = "name: probe\nversion: 1.0.0\nphases: [request_headers, response_headers]\nexamples: { valid: [{ id: a }], invalid: [{}] }\n";
    std::fs::write(dir.join("policy.yaml"), policy_yaml).unwrap();
    let agreeing =
        r#"{ "type": "object", "required": ["id"], "properties": { "id": { "type": "string" } } }"#;
    std::fs::write(dir.join("schema.json"), agreeing).unwrap();
    check_definition(factory, &dir).unwrap();
    // The schema allows a field the typed parameters refuse: that is drift.
    std::fs::write(
        dir.join("policy.yaml"),
        policy_yaml.replace("valid: [{ id: a }]", "valid: [{ id: a, colour: red }]"),
    )
    .unwrap();
    let error = check_definition(factory, &dir).unwrap_err();
    assert!(error.contains("the schema says Ok(())"), "{error}");
    // The schema refuses what the policy takes: stricter than the policy.
    std::fs::write(dir.join("policy.yaml"), policy_yaml).unwrap();
    let stricter = agreeing.replace(r#""type": "string""#, r#""type": "string", "maxLength": 0"#);
    std::fs::write(dir.join("schema.json"), stricter).unwrap();
    let error = check_definition(factory, &dir).unwrap_err();
    assert!(error.contains("examples.valid[0]"), "{error}");
    // An instance acting in a phase policy.yaml does not list.
    std::fs::write(dir.join("schema.json"), agreeing).unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        policy_yaml.replace("[request_headers, response_headers]", "[request_headers]"),
    )
    .unwrap();
    let error = check_definition(factory, &dir).unwrap_err();
    assert!(
        error.contains("policy.yaml's phases do not list"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_guard_on_a_value_given_twice_refuses_the_request_rather_than_guess() {
    let e = chain(
        r#"[{name: probe, config: {id: a}},
            {name: probe, config: {id: b}, when: '"x-skip" in request.headers'}]"#,
    );
    let twice = request("/").into_pairs().into_iter().chain([
        ("x-skip".to_owned(), "1".to_owned()),
        ("x_skip".to_owned(), "2".to_owned()),
    ]);
    let Start::Run(mut x) = e.start(|| None, HeaderMap::from_pairs(twice)) else {
        panic!("no chain");
    };
    match x.on_request_headers() {
        Outcome::Respond(reply) => {
            assert_eq!(reply.status, 400);
            let body = String::from_utf8_lossy(&reply.body).into_owned();
            assert!(body.contains("sent more than once"), "{body}");
        }
        other => panic!("{other:?}"),
    }
    // b neither ran nor was skipped: it never saw the request, and a sees
    // the local reply as any reply.
    assert_eq!(trace(&x), ["a:request_headers", "a:response_headers"]);
}

#[test]
fn a_guard_runs_its_policy_only_when_true_and_for_every_phase() {
    let e = chain(
        r#"[{name: probe, config: {id: a}, when: 'request.path.startsWith("/admin")'},
            {name: probe, config: {id: b}}]"#,
    );
    let mut x = exchange(&e, "/admin/users");
    x.on_request_headers();
    x.on_response_headers(response("200"));
    assert_eq!(
        trace(&x),
        [
            "a:request_headers",
            "b:request_headers",
            "b:response_headers",
            "a:response_headers"
        ]
    );
    let mut x = exchange(&e, "/public");
    x.on_request_headers();
    x.on_response_headers(response("200"));
    assert_eq!(trace(&x), ["b:request_headers", "b:response_headers"]);
}

#[test]
fn a_guard_sees_metadata_from_earlier_policies_and_an_undecidable_one_runs_its_policy() {
    let e = chain(
        r#"[{name: probe, config: {id: a}},
            {name: probe, config: {id: b}, when: '"a:request_headers" in metadata.trace'},
            {name: probe, config: {id: c}, when: 'request.headers["x-missing"] != "partner"'},
            {name: probe, config: {id: d}, when: '"x-missing" in request.headers'}]"#,
    );
    let mut x = exchange(&e, "/");
    x.on_request_headers();
    // c's guard reads a header the request lacks: it cannot be evaluated,
    // so c runs; a guard that is false (d) skips.
    assert_eq!(
        trace(&x),
        [
            "a:request_headers",
            "b:request_headers",
            "c:request_headers"
        ]
    );
}

#[test]
fn a_bad_guard_is_refused_with_route_policy_and_expression() {
    let error = config_error(
        r#"routes: [{name: api, policies: [{name: probe, config: {id: a}, when: 'request.pth == "/"'}]}]"#,
    );
    assert_eq!(
        error,
        r#"invalid plugin configuration: route routes[0] "api", policy policies[0] probe@1.0.0, field when: expression "request.pth == \"/\"": unknown attribute `request.pth`; `request` has method, path, query, host, scheme, headers, body, json"#
    );
    let error = config_error(
        r#"routes: [{policies: [{name: probe, config: {id: a}, when: 'request.path =='}]}]"#,
    );
    assert!(
        error.contains("field when: expression \"request.path ==\": syntax error"),
        "{error}"
    );
}

#[test]
fn a_chain_asks_the_host_only_for_the_attributes_its_expressions_read() {
    use policy_executor::{Attribute, AttributeSet};
    let e = chain(r#"[{name: probe, config: {id: a}, when: 'request.method == "GET"'}]"#);
    assert_eq!(exchange(&e, "/").attributes(), AttributeSet::NONE);
    let e =
        chain(r#"[{name: probe, config: {id: a}, when: 'source.identity.namespace == "team-a"'}]"#);
    assert_eq!(
        exchange(&e, "/").attributes(),
        AttributeSet::of(Attribute::PeerUriSan)
    );
}

#[test]
fn routes_and_policies_see_the_canonical_request_and_so_does_the_upstream() {
    let e = engine(
        "routes:\n  - name: public\n    match: { path: { prefix: /public } }\n    policies: []\n  - name: admin\n    match: { path: { prefix: /admin } }\n    policies: [{name: probe, config: {id: a}}]\nunmatched: allow\n",
    );
    for raw in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "//admin",
        "/%61dmin/./",
    ] {
        let mut x = exchange(&e, raw);
        assert_eq!(x.context().route().chain.as_ref(), "admin", "{raw}");
        let Outcome::Continue(upstream) = x.on_request_headers() else {
            panic!("{raw}: expected the request to go on");
        };
        let path = x
            .context()
            .request_headers()
            .get(":path")
            .unwrap_or_default()
            .to_owned();
        assert!(path.starts_with("/admin"), "{raw}: policies saw {path}");
        assert!(
            upstream
                .iter()
                .any(|(n, c)| n == ":path" && *c == HeaderChange::Replace(vec![path.clone()])),
            "{raw}: the upstream must get {path}: {upstream:?}"
        );
    }
    // Already canonical: nothing is rewritten.
    let mut x = exchange(&e, "/admin/x?q=1");
    let Outcome::Continue(upstream) = x.on_request_headers() else {
        panic!("expected the request to go on");
    };
    assert!(upstream.iter().all(|(n, _)| n != ":path"), "{upstream:?}");
    // Passing unmatched requests carry the rewrite too.
    match e.start(|| None, request("/x/../y")) {
        Start::Pass(m) => assert!(m
            .iter()
            .any(|(n, c)| n == ":path" && *c == HeaderChange::Replace(vec!["/y".into()]))),
        _ => panic!("expected the unmatched request to pass"),
    }
}

#[test]
fn a_path_that_cannot_be_made_canonical_gets_400_before_any_route() {
    let e = engine("routes: []\nunmatched: allow\n");
    for raw in ["/a/..%2Fadmin", "/a%5cb", "/a\\b", "/a%zz", "relative"] {
        match e.start(|| None, request(raw)) {
            Start::Respond(reply) => assert_eq!(reply.status, 400, "{raw}"),
            _ => panic!("{raw} was not refused"),
        }
    }
    let keep = engine("routes: []\nunmatched: allow\npaths: { escaped_slashes: keep }\n");
    assert!(matches!(
        keep.start(|| None, request("/a/..%2Fadmin")),
        Start::Pass(_)
    ));
    assert!(config_error("paths: { escaped_slashes: decode }\n").contains("paths.escaped_slashes"));
}

#[test]
fn hosts_are_matched_and_read_in_canonical_form() {
    let e = engine(
        "routes:\n  - name: gh\n    match: { host: api.github.com }\n    policies: [{name: probe, config: {id: g}}]\n",
    );
    for authority in ["API.GitHub.com", "api.github.com.", "Api.Github.Com.:443"] {
        let mut headers = request("/");
        headers = HeaderMap::from_pairs(headers.into_pairs().into_iter().map(|(n, v)| {
            if n == ":authority" {
                (n, authority.to_owned())
            } else {
                (n, v)
            }
        }));
        let Start::Run(x) = e.start(|| None, headers) else {
            panic!("{authority} did not match the host");
        };
        let seen = x
            .context()
            .request_headers()
            .get(":authority")
            .unwrap_or_default();
        assert!(seen.starts_with("api.github.com"), "{authority}: {seen}");
    }
}

#[test]
fn duplicate_keys_are_refused_wherever_they_are() {
    for config in [
        "unmatched: allow\nunmatched: deny\n",
        "routes:\n  - name: a\n    name: b\n    policies: []\n",
        "routes:\n  - policies: [{name: probe, config: {id: a, id: b}}]\n",
        "{\"unmatched\": \"allow\", \"unmatched\": \"deny\"}",
    ] {
        let error = config_error(config);
        assert!(error.contains("duplicate"), "{config}: {error}");
    }
}
