use super::*;
use crate::attributes::{AttributeValue, Connection};
use crate::headers::HeaderMap;
use crate::policy::RouteInfo;

fn context(headers: &[(&str, &str)]) -> Context {
    let route = RouteInfo {
        chain: Arc::from("egress"),
        route_name: None,
    };
    Context::new(
        route,
        HeaderMap::from_pairs(headers.iter().copied()),
        Default::default(),
        Default::default(),
    )
}

fn with_client_certificate(mut cx: Context, uri_san: &str) -> Context {
    let mut connection = Connection::default();
    connection.insert(
        Attribute::SourceAddress,
        AttributeValue::Text("10.1.2.3:40000".into()),
    );
    connection.insert(Attribute::PeerUriSan, AttributeValue::Text(uri_san.into()));
    connection.insert(Attribute::Mtls, AttributeValue::Bool(true));
    cx.set_connection(connection);
    cx
}

fn request() -> Context {
    context(&[
        (":method", "GET"),
        (":path", "/repos/envoy?page=2&q"),
        (":authority", "api.github.com:443"),
        (":scheme", "https"),
        ("x-tenant", "acme"),
        ("accept", "text/html,application/json"),
    ])
}

fn eval(source: &str, cx: &Context) -> Result<bool, EvalError> {
    Expression::compile(source, Phase::Request)
        .unwrap_or_else(|e| panic!("{e}"))
        .evaluate_bool(cx)
}

fn refused(source: &str, phase: Phase) -> String {
    match Expression::compile(source, phase) {
        Ok(_) => panic!("{source:?} compiled"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn request_attributes() {
    let cx = request();
    for source in [
        r#"request.method == "GET""#,
        r#"request.path == "/repos/envoy""#,
        r#"request.path.startsWith("/repos/")"#,
        r#"request.query["page"] == "2" && request.query["q"] == """#,
        r#"request.host == "api.github.com""#,
        r#"request.scheme == "https""#,
        r#"request.headers["x-tenant"] == "acme""#,
        r#"request.headers.accept == "text/html,application/json""#,
        r#"!("x-debug" in request.headers)"#,
        r#"!(":path" in request.headers)"#,
        r#"route.name == "egress""#,
        r#"request.path.split("/").size() == 3"#,
        r#"request.headers["x-tenant"].upperAscii() == "ACME""#,
        r#"["a", "b"].all(x, x.size() == 1)"#,
    ] {
        assert_eq!(eval(source, &cx), Ok(true), "{source}");
    }
}

#[test]
fn caller_identity_comes_from_the_spiffe_id() {
    let cx = with_client_certificate(request(), "spiffe://corp.example/ns/team-a/sa/builder");
    for source in [
        r#"source.spiffeId == "spiffe://corp.example/ns/team-a/sa/builder""#,
        r#"source.identity.trustDomain == "corp.example""#,
        r#"source.identity.namespace == "team-a" && source.identity.serviceAccount == "builder""#,
        r#"source.address == "10.1.2.3" && source.port == 40000"#,
        "connection.mtls",
        "has(source.identity)",
    ] {
        assert_eq!(eval(source, &cx), Ok(true), "{source}");
    }
    assert_eq!(cx.caller(), "spiffe://corp.example/ns/team-a/sa/builder");
}

#[test]
fn missing_attributes_are_errors_not_values() {
    let cx = request();
    assert!(eval(r#"source.identity.namespace == "team-a""#, &cx).is_err());
    assert!(eval("connection.mtls", &cx).is_err());
    assert!(eval(r#"request.headers["x-debug"] == "1""#, &cx).is_err());
    // Pseudo-headers are attributes of their own (`request.method`), never
    // headers: on the fast path and in the interpreter alike.
    assert!(eval(r#"request.headers[":method"] == "GET""#, &cx).is_err());
    assert_eq!(eval(r#"":path" in request.headers"#, &cx), Ok(false));
    assert_eq!(
        eval(r#"request.headers.exists(h, h.startsWith(":"))"#, &cx),
        Ok(false)
    );
    assert_eq!(eval("has(source.identity)", &cx), Ok(false));
    // A certificate whose URI SAN is not a SPIFFE ID gives no identity.
    let cx = with_client_certificate(request(), "https://corp.example/robot");
    assert_eq!(eval("has(source.identity)", &cx), Ok(false));
    assert!(eval(r#"request.method"#, &cx).is_err(), "not a bool");
}

#[test]
fn metadata_written_earlier_is_readable() {
    let mut cx = request();
    cx.metadata_mut().insert(
        "jwt.claims".into(),
        serde_json::json!({"sub": "alice", "n": 3, "roles": ["admin"]}),
    );
    assert_eq!(
        eval(
            r#"metadata["jwt.claims"].sub == "alice" && metadata["jwt.claims"].n == 3 && "admin" in metadata["jwt.claims"].roles"#,
            &cx
        ),
        Ok(true)
    );
}

#[test]
fn response_attributes_in_response_expressions() {
    let mut cx = request();
    cx.begin_response(HeaderMap::from_pairs([
        (":status", "404"),
        ("server", "echo"),
    ]));
    let e = Expression::compile(
        r#"response.code == 404 && response.headers.server == "echo""#,
        Phase::Response,
    )
    .unwrap();
    assert_eq!(e.evaluate_bool(&cx), Ok(true));
    let text = Expression::compile(
        r#"string(response.code) + "/" + request.method"#,
        Phase::Response,
    )
    .unwrap();
    assert_eq!(text.evaluate_text(&cx), Ok(Some("404/GET".into())));
}

#[test]
fn text_results() {
    let cx = with_client_certificate(request(), "spiffe://td/ns/team-a/sa/team-a");
    let text = |s: &str| {
        Expression::compile(s, Phase::Request)
            .unwrap()
            .evaluate_text(&cx)
    };
    assert_eq!(
        text(r#"source.identity.namespace + "/" + source.identity.serviceAccount"#),
        Ok(Some("team-a/team-a".into()))
    );
    assert_eq!(text("source.port"), Ok(Some("40000".into())));
    assert_eq!(text("null"), Ok(None));
    assert!(text("[1]").is_err());
}

#[test]
fn bad_expressions_are_refused_with_the_reason() {
    let cases = [
        ("request.method ==", "syntax error"),
        ("", "empty"),
        ("requst.method == 'GET'", "unknown variable `requst`"),
        ("request.methd == 'GET'", "unknown attribute `request.methd`; `request` has method, path, query, host, scheme, headers"),
        ("source.identity.name == 'a'", "unknown attribute `source.identity.name`"),
        ("request.method.x == 'GET'", "`request.method` has no field `x`"),
        ("request.path.startWith('/a')", "unknown function `startWith`"),
        ("request.path.matches('^/a')", "function `matches` is not available"),
        ("response.code == 200", "`response` is not available here"),
    ];
    for (source, expected) in cases {
        let error = refused(source, Phase::Request);
        assert!(error.contains(expected), "{source:?}: {error}");
    }
}

#[test]
fn only_the_connection_attributes_read_are_asked_for() {
    let attributes = |s: &str| Expression::compile(s, Phase::Request).unwrap().attributes();
    assert_eq!(attributes(r#"request.path == "/""#), AttributeSet::NONE);
    assert_eq!(
        attributes(r#"source.identity.namespace == "a""#),
        AttributeSet::of(Attribute::PeerUriSan)
    );
    assert_eq!(
        attributes("source.port > 1024 || connection.mtls"),
        AttributeSet::of(Attribute::SourceAddress) | AttributeSet::of(Attribute::Mtls)
    );
    let everything = attributes("size(source) > 0 && size(connection) > 0");
    assert_eq!(everything.iter().count(), Attribute::ALL.len());
    // A comprehension variable shadows nothing and reads nothing.
    assert_eq!(
        attributes("[1].all(source, source > 0)"),
        AttributeSet::NONE
    );
}

#[test]
fn every_listed_function_evaluates() {
    let cx = request();
    let samples = [
        "size('ab') == 2",
        "'abc'.contains('b')",
        "'abc'.startsWith('a')",
        "'abc'.endsWith('c')",
        "int('7') == 7",
        "uint(7) == 7u",
        "double(1) == 1.0",
        "string(1) == '1'",
        "bytes('a') == b'a'",
        "bool('true')",
        "type(1) == int",
        "dyn(1) == 1",
        "'abc'.charAt(1) == 'b'",
        "'abc'.indexOf('c') == 2",
        "'abca'.lastIndexOf('a') == 3",
        "['a', 'b'].join('-') == 'a-b'",
        "'AB'.lowerAscii() == 'ab'",
        "'ab'.upperAscii() == 'AB'",
        "' a '.trim() == 'a'",
        "'aa'.replace('a', 'b') == 'bb'",
        "'a,b'.split(',') == ['a', 'b']",
        "'abc'.substring(1) == 'bc'",
        "'%s!'.format(['hi']) == 'hi!'",
        "'ab'.reverse() == 'ba'",
    ];
    for name in FUNCTIONS {
        assert!(
            samples.iter().any(|s| s.contains(&format!("{name}("))),
            "no sample calls {name}"
        );
    }
    for sample in samples {
        assert_eq!(eval(sample, &cx), Ok(true), "{sample}");
    }
}

#[test]
fn oversized_and_overdeep_expressions_are_refused_before_they_can_hurt() {
    let long = vec!["request.path"; 2_000].join(" + ");
    let error = Expression::compile(&long, Phase::Request).unwrap_err();
    assert!(error.reason.contains("bytes long"), "{error}");
    let nested = format!("{}true{}", "(".repeat(40), ")".repeat(40));
    let error = Expression::compile(&nested, Phase::Request).unwrap_err();
    assert!(error.reason.contains("brackets deeper"), "{error}");
    let many = vec!["1"; 300].join(" + ");
    let error = Expression::compile(&many, Phase::Request).unwrap_err();
    assert!(error.reason.contains("operators"), "{error}");
    let chain = vec!["1"; 100].join(" + ");
    let error = Expression::compile(&format!("{chain} > 0"), Phase::Request).unwrap_err();
    assert!(error.reason.contains("deeper than"), "{error}");
    // Brackets inside strings are text, not nesting.
    let quoted = format!("request.path == \"{}\"", "(".repeat(40));
    assert!(Expression::compile(&quoted, Phase::Request).is_ok());
    // What people write fits easily.
    let rules = vec!["request.headers[\"x-team\"] == \"a\""; 20].join(" || ");
    assert!(Expression::compile(&rules, Phase::Request).is_ok());
}

#[test]
fn the_parser_survives_the_longest_source_on_a_small_stack() {
    // A Wasm VM's stack is about 1 MiB; the worst accepted source must
    // parse (and be refused) within it even unoptimised, where frames are
    // several times larger than in the module.
    let worst = "1+".repeat(MAX_SOURCE_OPERATORS) + "1";
    let refused = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || Expression::compile(&worst, Phase::Request).is_err())
        .unwrap()
        .join()
        .unwrap();
    assert!(refused);
}

#[test]
fn header_keys_that_can_never_match_are_refused_with_a_hint() {
    let error =
        Expression::compile(r#"request.headers["X-Upper"] == "1""#, Phase::Request).unwrap_err();
    assert!(
        error.reason.contains(r#"write ["x-upper"]"#),
        "{}",
        error.reason
    );
    assert!(Expression::compile(r#"request.headers["x-upper"] == "1""#, Phase::Request).is_ok());
    assert!(Expression::compile(r#"request.query["Mixed"] == "1""#, Phase::Request).is_ok());
}

#[test]
fn the_query_is_read_decoded_and_an_ambiguous_one_is_never_decided_on() {
    let cx = context(&[
        (":path", "/a?%64ebug=1&q=a%20b%2Bc&tag=x&plus=a%2Bb&empty"),
        (":authority", "example.com"),
    ]);
    for source in [
        r#"request.query["debug"] == "1""#,
        r#"request.query["q"] == "a b+c""#,
        r#"request.query["tag"] == "x""#,
        r#"request.query["plus"] == "a+b""#,
        r#"request.query["empty"] == """#,
    ] {
        assert_eq!(eval(source, &cx), Ok(true), "{source}");
    }
    // Servers disagree on which copy of a repeated parameter counts, and on
    // what a broken escape means: reading the query at all is then an
    // error, which fails closed; never the first copy, never "absent".
    for path in [
        "/a?dup=0&dup=1",
        "/a?debug=0&%64ebug=1",
        "/a?bad=%ff",
        "/a?bad=%zz",
        "/a?debug=0&Debug=1",
        "/a?x=0;debug=1",
    ] {
        let cx = context(&[(":path", path), (":authority", "example.com")]);
        for source in [
            r#"request.query["dup"] == "0""#,
            r#""debug" in request.query"#,
            r#"!("debug" in request.query)"#,
        ] {
            assert!(eval(source, &cx).is_err(), "{path}: {source}");
        }
    }
}

#[test]
fn header_names_with_underscores_are_read_as_their_dashed_names() {
    let cx = context(&[
        (":path", "/"),
        ("x_debug", "1"),
        ("x-team", "a"),
        ("x_team", "b"),
    ]);
    assert_eq!(eval(r#"request.headers["x-debug"] == "1""#, &cx), Ok(true));
    assert_eq!(eval(r#""x-debug" in request.headers"#, &cx), Ok(true));
    // `x-team` and `x_team` are one header sent twice.
    assert!(eval(r#"request.headers["x-team"] == "a""#, &cx).is_err());
    // A rule that names the header another way would never match: in any
    // form that reads it, it is refused when it loads.
    for source in [
        r#"request.headers["x_debug"] == "1""#,
        r#""x_debug" in request.headers"#,
        r#""X-Debug" in request.headers"#,
        "has(request.headers.x_debug)",
        r#"request.headers.x_debug == "1""#,
        r#""X-Debug" in response.headers"#,
    ] {
        let error = Expression::compile(source, Phase::Response).unwrap_err();
        assert!(
            error.reason.contains(r#"write ["x-debug"]"#),
            "{source}: {}",
            error.reason
        );
    }
}

#[test]
fn a_header_read_by_name_and_sent_twice_is_never_decided_on() {
    let cx = context(&[
        (":path", "/"),
        ("x-role", "user"),
        ("x-other", "1"),
        ("X-Role", "admin"),
    ]);
    for source in [
        r#"request.headers["x-role"] == "admin""#,
        r#"request.headers["x-role"] != "admin""#,
        r#""x-role" in request.headers"#,
        r#"request.headers["x-other"] == "1" && request.headers["x-role"] == "user""#,
        r#"request.headers["x-other"] == "1" || request.headers["x-role"] == "user""#,
        r#"request.headers.exists(h, h == "x-other")"#,
        "size(request.headers) == 2",
    ] {
        let error = eval(source, &cx).unwrap_err();
        assert!(error.0.contains("more than once"), "{source}: {error}");
        let text = Expression::compile(source, Phase::Request).unwrap();
        assert!(text.evaluate_text(&cx).is_err(), "{source}");
    }
    // A header the expression does not read may repeat.
    assert_eq!(eval(r#"request.headers["x-other"] == "1""#, &cx), Ok(true));
    assert_eq!(eval(r#""x-other" in request.headers"#, &cx), Ok(true));
    assert_eq!(eval(r#"request.path == "/""#, &cx), Ok(true));
}

#[test]
fn a_query_parameter_in_two_readings_is_never_decided_on() {
    let on = |path: &str, source: &str| {
        eval(
            source,
            &context(&[(":path", path), (":authority", "example.com")]),
        )
    };
    // A raw '+' is a space to form decoders and a '+' to RFC 3986.
    for source in [
        r#"request.query["q"] == "a+b""#,
        r#"request.query["q"] == "a b""#,
        r#""q" in request.query"#,
    ] {
        assert!(on("/s?q=a+b", source).is_err(), "{source}");
    }
    assert_eq!(on("/s?q=a%2Bb", r#"request.query["q"] == "a+b""#), Ok(true));
    assert_eq!(on("/s?q=a%20b", r#"request.query["q"] == "a b""#), Ok(true));
    assert!(on("/s?a+b=1", r#""a b" in request.query"#).is_err());
    assert!(on("/s?a+b=1", r#""a+b" in request.query"#).is_err());
    // A name in another case than the one a rule reads.
    for path in [
        "/s?DEBUG=1",
        "/s?Debug=1",
        "/s?%44ebug=1",
        "/s?page=2&dEbUg=1",
    ] {
        for source in [
            r#""debug" in request.query"#,
            r#"request.query["debug"] == "1""#,
            r#"request.query.debug == "1""#,
            r#"has(request.query.debug)"#,
            r#"!("debug" in request.query) && request.query["page"] == "2""#,
        ] {
            assert!(on(path, source).is_err(), "{path}: {source}");
        }
    }
    assert_eq!(
        on("/s?pageSize=10", r#"request.query["pageSize"] == "10""#),
        Ok(true)
    );
    assert!(on("/s?pagesize=10", r#"request.query["pageSize"] == "10""#).is_err());
    // Spellings PHP, Rails and qs fold into the name a rule reads.
    for path in [
        "/s?+debug=1",
        "/s?%20debug=1",
        "/s?debug[]=1",
        "/s?debug%5B0%5D=1",
    ] {
        assert!(on(path, r#""debug" in request.query"#).is_err(), "{path}");
    }
    assert!(on("/s?de.bug=1", r#""de_bug" in request.query"#).is_err());
    // Java's equalsIgnoreCase reads the Kelvin sign as `k`, `İ` as `i`.
    assert!(on("/s?%E2%84%AAey=1", r#""key" in request.query"#).is_err());
    assert!(on("/s?%C4%B0d=1", r#""id" in request.query"#).is_err());
    // PHP cuts at a NUL and reads `is[admin` as `is_admin`; Rack trims
    // brackets; Spring reads `!debug` as `debug`.
    for path in [
        "/s?debug%00x=1",
        "/s?debug[x]y=1",
        "/s?]debug=1",
        "/s?[debug]=1",
        "/s?debug]=1",
        "/s?!debug=1",
    ] {
        assert!(on(path, r#""debug" in request.query"#).is_err(), "{path}");
    }
    assert!(on("/s?is[admin=1", r#""is_admin" in request.query"#).is_err());
    assert_eq!(
        on("/s?ids[]=1", r#"request.query["ids[]"] == "1""#),
        Ok(true)
    );
    // Parameters the expression does not read do not matter.
    assert_eq!(
        on("/s?DEBUG=1&q=a+b&page=2", r#"request.query["page"] == "2""#),
        Ok(true)
    );
    // Read whole, every parameter is read.
    let whole = r#"request.query.exists(k, k == "debug")"#;
    assert_eq!(on("/s?debug=1", whole), Ok(true));
    assert!(on("/s?DEBUG=1", whole).is_err());
    assert!(on("/s?x=a+b", "size(request.query) == 1").is_err());
    assert!(on("/s?x=a+b", r#"request.query[request.path] == "1""#).is_err());
}
