//! The compiled filter in the real Envoy binary, over real HTTP on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use integration_tests::{send, Host, Stack};
use local_envoy::{filter_wasm, filters, EnvoyError};

/// Route names refer to envoy/listener.yaml.
const CONFIG: &str = r#"
routes:
  - name: api
    match: { route: echo-api }
    policies:
      - name: set-headers
        config:
          request:
            remove: [x-internal-debug]
            set: { x-tenant: acme }
            add: { x-forwarded-by: policy-engine }
          response:
            set: { x-policy-chain: api }
  - name: health
    match: { route: echo-default, path: { exact: /healthz }, methods: [GET] }
    policies:
      - name: set-headers
        config: { response: { set: { cache-control: no-store } } }
      - name: respond
        version: 0.1.0
        config: { status: 200, headers: { content-type: text/plain }, body: "ok\n" }
      - name: set-headers
        config: { response: { set: { x-never: "set" } } }
  - name: public-json
    match: { route: echo-public, path: { prefix: /public/json } }
    policies:
      - name: set-headers
        config: { response: { set: { x-outer: "yes" } } }
      - name: json-body
        config: { request: true, response: true, max_bytes: 1024 }
      - name: set-headers
        config: { request: { set: { x-checked: "yes" } } }
  - name: public
    match: { route: echo-public }
    policies: []
"#;

#[test]
fn request_headers_change_on_one_route_and_not_on_another() {
    let stack = Stack::builder(Host::Wasm, CONFIG).start();
    let sent = [("x-internal-debug", "1"), ("x-tenant", "spoofed")];

    let api = stack.send("GET", "/api/items", &sent);
    assert_eq!(api.status, 200, "{api:?}");
    let seen = api.upstream().expect("the upstream answered");
    assert_eq!(seen.header("x-tenant"), Some("acme"));
    assert_eq!(seen.header("x-forwarded-by"), Some("policy-engine"));
    assert_eq!(seen.header("x-internal-debug"), None);
    assert_eq!(api.header("x-policy-chain").as_deref(), Some("api"));

    let public = stack.send("GET", "/public/items", &sent);
    assert_eq!(public.status, 200, "{public:?}");
    let seen = public.upstream().expect("the upstream answered");
    assert_eq!(seen.header("x-tenant"), Some("spoofed"));
    assert_eq!(seen.header("x-internal-debug"), Some("1"));
    assert_eq!(seen.header("x-forwarded-by"), None);
    assert_eq!(public.header("x-policy-chain").as_deref(), None);
}

#[test]
fn respond_short_circuits_and_the_upstream_sees_nothing() {
    let stack = Stack::builder(Host::Wasm, CONFIG).start();
    let reply = stack.send("GET", "/healthz", &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ok\n");
    assert!(reply.upstream().is_none());
    // The policy before `respond` decorates its reply; the one after never ran.
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(reply.header("x-never").as_deref(), None);
    assert_eq!(stack.upstream.requests_seen(), 0);

    // A method the entry does not list falls through to the unmatched default.
    let post = stack.send("POST", "/healthz", &[]);
    assert_eq!(post.status, 403, "{post:?}");
    assert_eq!(stack.upstream.requests_seen(), 0);
}

#[test]
fn unmatched_requests_are_denied_by_default() {
    let stack = Stack::builder(Host::Wasm, CONFIG).start();
    let reply = stack.send("GET", "/elsewhere", &[]);
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, "no policy chain matches this request\n");
    assert_eq!(stack.upstream.requests_seen(), 0);
}

#[test]
fn unmatched_requests_get_the_configured_outcome() {
    let allow = Stack::builder(Host::Wasm, &format!("{CONFIG}\nunmatched: allow\n")).start();
    let reply = allow.send("GET", "/elsewhere", &[("x-internal-debug", "1")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.upstream().unwrap().header("x-internal-debug"),
        Some("1")
    );

    let deny = Stack::builder(
        Host::Wasm,
        &format!("{CONFIG}\nunmatched: {{ deny: {{ status: 404, body: \"no route\" }} }}\n"),
    )
    .start();
    let reply = deny.send("GET", "/elsewhere", &[]);
    assert_eq!((reply.status, reply.body.as_str()), (404, "no route"));

    let default_chain = Stack::builder(Host::Wasm, &format!(
        "{CONFIG}\nunmatched:\n  policies:\n    - name: set-headers\n      config: {{ request: {{ set: {{ x-default: \"yes\" }} }} }}\n"
    )).start();
    let reply = default_chain.send("GET", "/elsewhere", &[]);
    assert_eq!(reply.upstream().unwrap().header("x-default"), Some("yes"));
}

#[test]
fn json_configuration_works_like_yaml() {
    let json = r#"{"routes":[{"match":{"route":"echo-api"},"policies":[{"name":"set-headers","config":{"request":{"set":{"x-from":"json"}}}}]}]}"#;
    let stack = Stack::builder(Host::Wasm, json).start();
    let reply = stack.send("GET", "/api/x", &[]);
    assert_eq!(reply.upstream().unwrap().header("x-from"), Some("json"));
}

#[test]
fn an_invalid_configuration_is_refused_and_the_log_names_the_fault() {
    let bad = CONFIG.replace("x-tenant: acme", "\"x tenant\": acme");
    let log = match Stack::builder(Host::Wasm, &bad).try_start() {
        Err(EnvoyError::Rejected { log }) => log,
        Err(other) => panic!("unexpected failure: {other}"),
        Ok(_) => panic!("Envoy accepted an invalid configuration"),
    };
    let expected = r#"invalid plugin configuration: route routes[0] "api", policy policies[0] set-headers@0.1.0, field config.request.set.x tenant: invalid header name "x tenant""#;
    assert!(
        log.contains(expected),
        "log does not name the fault:\n{log}"
    );

    // Parameters are checked against the policy's schema (policy.yaml)
    // inside the module, in the schema's own words.
    let both_off = CONFIG.replace(
        "config: { request: true, response: true, max_bytes: 1024 }",
        "config: { request: false, response: false }",
    );
    assert_ne!(both_off, CONFIG);
    let log = match Stack::builder(Host::Wasm, &both_off).try_start() {
        Err(EnvoyError::Rejected { log }) => log,
        other => panic!("expected a refusal, got {:?}", other.err()),
    };
    let expected = r#"route routes[2] "public-json", policy policies[1] json-body@0.1.0, field config: checks nothing: enable `request`, `response` or both"#;
    assert!(log.contains(expected), "{log}");
}

#[test]
fn a_rejected_update_leaves_the_previous_configuration_serving() {
    let mut stack = Stack::builder(Host::Wasm, CONFIG).start();
    let module = filter_wasm();
    let bad = CONFIG.replace("name: respond", "name: responder");
    match stack.envoy.reload(&[filters::policy_engine(&module, &bad)]) {
        Err(EnvoyError::Rejected { log }) => assert!(
            log.contains(
                r#"policy policies[1] responder@0.1.0, field name: unknown policy "responder""#
            ),
            "{log}"
        ),
        other => panic!("expected a rejection, got {other:?}"),
    }
    let reply = stack.send("GET", "/api/x", &[]);
    assert_eq!(reply.upstream().unwrap().header("x-tenant"), Some("acme"));

    let good = CONFIG.replace("x-tenant: acme", "x-tenant: globex");
    stack
        .envoy
        .reload(&[filters::policy_engine(&module, &good)])
        .unwrap();
    let reply = stack.send("GET", "/api/x", &[]);
    assert_eq!(reply.upstream().unwrap().header("x-tenant"), Some("globex"));
}

#[test]
fn request_bodies_pass_through_headers_only_chains() {
    let stack = Stack::builder(Host::Wasm, CONFIG).start();
    let body = "x".repeat(256 * 1024);
    let reply = send(&stack.envoy.url("/api/upload"), "POST", &[], Some(&body));
    assert_eq!(reply.status, 200);
    let seen = reply.upstream().unwrap();
    assert_eq!(seen.body().len(), body.len());
    assert_eq!(seen.header("x-tenant"), Some("acme"));
}

/// Sends raw bytes and returns the raw response.
fn raw_request(stack: &Stack, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(stack.envoy.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn malformed_and_unusual_requests_never_trap_the_filter() {
    let stack = Stack::builder(Host::Wasm, CONFIG).start();
    // obs-text in a header value is legal HTTP but not UTF-8.
    let response = raw_request(
        &stack,
        b"GET /api/x HTTP/1.1\r\nhost: a\r\nx-latin1: caf\xe9\r\nconnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"x-tenant\":\"acme\""), "{response}");

    // A broken request line is Envoy's to refuse, with a 400.
    let response = raw_request(&stack, b"GET /api/x HTTP/1.1\r\nbad header\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");

    // The worker's VM is still alive and serving.
    let reply = stack.send("GET", "/api/x", &[]);
    assert_eq!(reply.upstream().unwrap().header("x-tenant"), Some("acme"));
    let log = stack.envoy.log();
    assert!(
        !log.contains("panicked") && !log.contains("Function: proxy_on"),
        "{log}"
    );
}

#[test]
fn body_phases_buffer_inspect_and_reply() {
    let stack = Stack::builder(Host::Wasm, CONFIG).start();
    let url = stack.envoy.url("/public/json");
    let post = |body: &str, headers: &[(&str, &str)]| send(&url, "POST", headers, Some(body));

    // Valid JSON reaches the upstream whole, with the header edits of the
    // policies after the body check applied while the headers were held.
    let ok = post(r#"{"order": [1, 2, 3]}"#, &[]);
    assert_eq!(ok.status, 200, "{ok:?}");
    let seen = ok.upstream().unwrap();
    assert_eq!(seen.body(), r#"{"order": [1, 2, 3]}"#);
    assert_eq!(seen.header("x-checked"), Some("yes"));
    assert_eq!(ok.header("x-outer").as_deref(), Some("yes"));
    let reached = stack.upstream.requests_seen();

    // Malformed and oversized bodies are refused before the upstream; the
    // outer policy still decorates the refusal.
    let bad = post("{\"order\": ", &[]);
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(
        bad.body.starts_with("request body is not valid JSON"),
        "{bad:?}"
    );
    assert_eq!(bad.header("x-outer").as_deref(), Some("yes"));
    let big = post(&format!("[\"{}\"]", "x".repeat(2048)), &[]);
    assert_eq!(big.status, 413, "{big:?}");
    assert_eq!(stack.upstream.requests_seen(), reached);

    // An upstream answer that is not JSON is replaced with 502.
    let html = post("{}", &[("x-echo-respond-with", "<html>oops</html>")]);
    assert_eq!(html.status, 502, "{html:?}");
    assert_eq!(html.body, "upstream response is not valid JSON\n");
    assert_eq!(html.header("x-outer").as_deref(), Some("yes"));

    // Other routes never buffer: a large non-JSON body passes /public.
    let other = send(
        &stack.envoy.url("/public/raw"),
        "POST",
        &[],
        Some(&"y".repeat(4096)),
    );
    assert_eq!(other.upstream().unwrap().body().len(), 4096);
}

/// Expressions too large for the parser to be safe on are refused when the
/// configuration loads, with the same reason from the Wasm filter (in
/// Envoy's log) and from the shim (`--check`), where once the shim accepted
/// a 20,000-term chain and the filter refused it without a word.
#[test]
fn oversized_expressions_are_refused_with_the_same_reason_by_both_hosts() {
    let dir = std::env::temp_dir().join(format!("oversized-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (expression, reason) in [
        (
            vec!["1"; 20_000].join(" + ") + " > 0",
            "bytes long; at most 4096 are accepted",
        ),
        (
            vec!["1"; 300].join("+") + " > 0",
            "the expression has more than 256 operators",
        ),
        (
            format!("{}true{}", "(".repeat(40), ")".repeat(40)),
            "the expression nests brackets deeper than 32 levels",
        ),
    ] {
        let config = format!(
            "routes:\n  - name: api\n    policies:\n      - name: authorization\n        config: {{ rules: [{{ allow: '{expression}' }}], default: deny }}\n"
        );
        let expected = r#"route routes[0] "api", policy policies[0] authorization@0.1.0, field config.rules[0].allow: expression"#;
        let log = match Stack::builder(Host::Wasm, &config).try_start() {
            Err(EnvoyError::Rejected { log }) => log,
            other => panic!("expected a refusal, got {:?}", other.err()),
        };
        assert!(
            log.contains(expected) && log.contains(reason),
            "{reason}:\n{log}"
        );

        let file = dir.join("policies.yaml");
        std::fs::write(&file, &config).unwrap();
        let check = std::process::Command::new(local_envoy::extproc_bin())
            .arg("--check")
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        assert!(!check.status.success(), "{reason}: the shim accepted it");
        let said = String::from_utf8_lossy(&check.stdout);
        assert!(
            said.contains(expected) && said.contains(reason),
            "{reason}:\n{said}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
