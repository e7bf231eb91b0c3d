//! The executor's work per request, natively: `make microbench`.
//!
//! Groups: `route` (selecting the entry among many), `chain` (the chains
//! `make bench` runs in Envoy), `policy` (each policy alone, with a typical
//! configuration) and `cel` (one authorization rule per expression shape).
//! Every fixture is run once and its result checked before it is timed, so
//! a fixture that stopped doing what it says fails instead of timing
//! nothing.

#![allow(
    missing_docs,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark binary: criterion's macros generate undocumented items, and a broken fixture must stop it"
)]

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use integration_tests::auth_chain;
use integration_tests::chains::{
    json_document, set_headers_chain, BODY_EDIT_CHAIN, CEL_CHAIN, JSON_BODY_CHAIN, SSE_MASK_CHAIN,
};
use policy_microbench::{Fixture, Ran};

/// `printf %s bench-key | sha256sum`
const KEY_SHA256: &str = "b0962662e937d44c699c8305d90cbf190b3150c59b13863d1380b5cc3c711bb7";

/// A route entry named `bench` on every request, running `policies` (YAML
/// list items, indented for the `policies:` key).
fn one_entry(policies: &str) -> String {
    format!(
        "routes:\n  - name: bench\n    match: {{ route: echo-default }}\n    policies:\n{policies}"
    )
}

fn fixture(config: &str, headers: &[(&str, &str)]) -> Fixture {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    Fixture::new(config, "/api/items?page=2", &headers)
        .unwrap_or_else(|e| panic!("fixture configuration: {e}\n{config}"))
}

/// Times `fixture`, after checking that it ends as `expect`.
fn bench(c: &mut Criterion, name: &str, fixture: &Fixture, expect: Ran) {
    assert_eq!(
        fixture.run(),
        expect,
        "{name}: the fixture does not do what it says"
    );
    c.bench_function(name, |b| b.iter(|| black_box(fixture.run())));
}

fn route(c: &mut Criterion) {
    // 50 entries by path prefix; the request matches the last.
    let mut config = String::from("routes:\n");
    for i in 0..50 {
        let _ = write!(
            config,
            "  - name: svc-{i}\n    match: {{ path: {{ prefix: /svc-{i}/ }}, methods: [GET] }}\n    policies: []\n"
        );
    }
    let prefixes = Fixture::new(&config, "/svc-49/items", &[]).expect("route table");
    assert!(prefixes.start_only(), "the last entry must match");
    c.bench_function("route/50-prefixes-last", |b| {
        b.iter(|| black_box(prefixes.start_only()));
    });
    // 1,000 entries (the scale the seeds ask for): the first and the last
    // must cost the same, through the route index.
    let mut config = String::from("routes:\n");
    for i in 0..1000 {
        let _ = write!(
            config,
            "  - name: r{i}\n    match: {{ path: {{ prefix: /r{i}/ }} }}\n    policies: []\n"
        );
    }
    for (name, path) in [("first", "/r0/items"), ("last", "/r999/items")] {
        let table = Fixture::new(&config, path, &[]).expect("route table");
        assert!(table.start_only(), "{path} must match");
        c.bench_function(&format!("route/1000-prefixes-{name}"), |b| {
            b.iter(|| black_box(table.start_only()));
        });
    }
    let by_name = fixture(&set_headers_chain(0), &[]);
    assert!(by_name.start_only(), "the entry must match Envoy's route");
    c.bench_function("route/by-envoy-route-name", |b| {
        b.iter(|| black_box(by_name.start_only()));
    });
}

fn chains(c: &mut Criterion) {
    bench(
        c,
        "chain/empty (wasm-0)",
        &fixture(&set_headers_chain(0), &[]),
        Ran::Passed(0),
    );
    bench(
        c,
        "chain/set-headers-1 (wasm-1)",
        &fixture(&set_headers_chain(1), &[]),
        Ran::Passed(2),
    );
    bench(
        c,
        "chain/set-headers-8 (wasm-8)",
        &fixture(&set_headers_chain(8), &[]),
        Ran::Passed(16),
    );
    bench(
        c,
        "chain/cel (wasm-cel)",
        &fixture(CEL_CHAIN, &[]),
        Ran::Passed(4),
    );
    for (name, cache) in [
        ("chain/auth (wasm-auth)", true),
        ("chain/auth-nocache", false),
    ] {
        let (config, headers) = auth_chain::inline(cache).expect("auth chain");
        let auth = Fixture::new(&config, "/bench", &headers).expect("auth chain");
        bench(c, name, &auth, Ran::Passed(6));
    }
}

/// A policy's name, its entry in a chain, the request headers it needs,
/// and what the request must end as.
type PolicyCase = (&'static str, String, Vec<(&'static str, &'static str)>, Ran);

fn policies(c: &mut Criterion) {
    let cases: Vec<PolicyCase> = vec![
        (
            "set-headers",
            "      - name: set-headers\n        config: { request: { set: { x-a: \"1\" } } }\n".into(),
            vec![],
            Ran::Passed(1),
        ),
        (
            "respond",
            "      - name: respond\n        config: { status: 200, body: \"ok\\n\" }\n".into(),
            vec![],
            Ran::Answered(200),
        ),
        (
            "redirect",
            "      - name: redirect\n        config: { scheme: https, status: 308 }\n".into(),
            vec![],
            Ran::Answered(308),
        ),
        (
            "authorization",
            "      - name: authorization\n        config: { rules: [{ allow: 'request.method == \"GET\"' }], default: deny }\n".into(),
            vec![],
            Ran::Passed(0),
        ),
        (
            "transformation",
            "      - name: transformation\n        config: { request: { set: { x-caller: 'request.host + request.path' } } }\n".into(),
            vec![],
            Ran::Passed(1),
        ),
        (
            "api-key",
            format!("      - name: api-key\n        config: {{ keys: [{{ consumer: team-a, sha256: {KEY_SHA256} }}] }}\n"),
            vec![("x-api-key", "bench-key")],
            Ran::Passed(0),
        ),
        (
            "basic-auth",
            "      - name: basic-auth\n        config: { users: [{ name: bench, hash: '{SHA}rCDNlL65dIEQRGAi3nnIqykce08=' }] }\n".into(),
            vec![("authorization", "Basic YmVuY2g6YmVuY2gtcGFzcw==")],
            Ran::Passed(1),
        ),
        (
            "cors",
            "      - name: cors\n        config: { allow_origins: [\"https://app.example.com\"] }\n".into(),
            vec![("origin", "https://app.example.com")],
            // Allow-Origin and Vary added, the upstream's own CORS headers removed.
            Ran::Passed(7),
        ),
        (
            "rate-limit",
            "      - name: rate-limit\n        config: { limits: [{ name: per-client, descriptors: { client: 'request.headers[\"x-client\"]' }, requests: 1000000, unit: second }] }\n".into(),
            vec![("x-client", "bench")],
            Ran::Passed(0),
        ),
    ];
    for (name, policy, headers, expect) in cases {
        bench(
            c,
            &format!("policy/{name}"),
            &fixture(&one_entry(&policy), &headers),
            expect,
        );
    }
    let (config, headers) = auth_chain::inline(true).expect("auth chain");
    let jwt_only = config
        .split("      - name: authorization")
        .next()
        .expect("the auth chain starts with jwt")
        .to_owned();
    let jwt = Fixture::new(&jwt_only, "/bench", &headers).expect("jwt");
    bench(c, "policy/jwt (cached token)", &jwt, Ran::Passed(2));
    let body = json_document(100 * 1024);
    let json = Fixture::post(JSON_BODY_CHAIN, "/api/items", &[], body).expect("json-body");
    bench(c, "policy/json-body (100 KiB)", &json, Ran::Passed(0));
}

fn cel(c: &mut Criterion) {
    let shapes = [
        ("eq-method", r#"request.method == "GET""#),
        ("starts-with-path", r#"request.path.startsWith("/api/")"#),
        ("in-headers", r#""x-tenant" in request.headers"#),
        ("header-eq", r#"request.headers["x-tenant"] == "acme""#),
        (
            "and-or",
            r#"request.method == "GET" && (request.host == "bench.example" || request.path == "/")"#,
        ),
        (
            "in-list",
            r#"request.headers["x-tenant"] in ["acme", "globex"]"#,
        ),
        ("size-lt", r#"size(request.path) < 100"#),
        (
            "lower-ascii",
            r#"request.headers["x-tenant"].lowerAscii() == "acme""#,
        ),
    ];
    for (name, rule) in shapes {
        let policy = format!(
            "      - name: authorization\n        config: {{ rules: [{{ allow: '{rule}' }}], default: deny }}\n"
        );
        bench(
            c,
            &format!("cel/{name}"),
            &fixture(&one_entry(&policy), &[("x-tenant", "acme")]),
            Ran::Passed(0),
        );
    }
    let concat = "      - name: transformation\n        config: { request: { set: { x-caller: 'request.host + \":\" + request.path' } } }\n";
    bench(
        c,
        "cel/concat",
        &fixture(&one_entry(concat), &[]),
        Ran::Passed(1),
    );
}

/// About `bytes` of prose with an email address and a card number every
/// kilobyte or so: what masking scans.
fn prose(bytes: usize) -> Vec<u8> {
    let mut text = String::new();
    let mut i = 0;
    while text.len() < bytes {
        let _ = write!(
            text,
            "Order {i} was placed by a customer who wrote to support about delivery times, \
             returns and the weather; they asked us to reply to user{i}@example.com and paid \
             with 4111 1111 1111 1111. Nothing else in this paragraph is personal at all, \
             which is what most text looks like: long runs of words with nothing to mask. "
        );
        i += 1;
    }
    text.into_bytes()
}

fn bodies(c: &mut Criterion) {
    // The bench's body chains: a transformation with masking of a 100 KiB
    // JSON request, and a streamed response masked chunk by chunk.
    let json = [("content-type".to_owned(), "application/json".to_owned())];
    let edit = Fixture::post(
        BODY_EDIT_CHAIN,
        "/api/items",
        &json,
        json_document(100 * 1024),
    )
    .expect("body edit chain");
    let edited = edit.run();
    assert!(
        matches!(edited, Ran::Passed(_)),
        "the edit chain: {edited:?}"
    );
    bench(
        c,
        "body/json-transform + mask (100 KiB JSON)",
        &edit,
        edited,
    );

    // Masking throughput beside a plain scan of the same text with the
    // same pattern: what recognizing, checking and rewriting cost on top.
    let text = prose(100 * 1024);
    let mut group = c.benchmark_group("mask");
    group.throughput(Throughput::Bytes(text.len() as u64));
    let plain = [("content-type".to_owned(), "text/plain".to_owned())];
    let mask_email =
        one_entry("      - name: mask\n        config: { rules: [{ recognizer: email }] }\n");
    let masking = Fixture::post(&mask_email, "/api/items", &plain, text.clone()).expect("mask");
    let masked = masking.run();
    assert!(matches!(masked, Ran::Passed(_)), "mask: {masked:?}");
    group.bench_function("mask email, text (100 KiB)", |b| {
        b.iter(|| black_box(masking.run()))
    });
    let regex = regex::bytes::Regex::new(
        policy_mask::builtin_pattern("email").expect("the email recognizer"),
    )
    .expect("the email pattern");
    assert!(regex.find_iter(&text).count() > 50);
    group.bench_function("plain regex scan, email (100 KiB)", |b| {
        b.iter(|| black_box(regex.find_iter(black_box(&text)).count()))
    });
    let stream = Fixture::post(SSE_MASK_CHAIN, "/api/items", &plain, Vec::new()).expect("sse");
    let streamed = policy_microbench::stream_response(&stream, &text, 4096);
    assert!(
        !streamed.windows(1).any(|w| w == b"@"),
        "the stream is masked"
    );
    group.bench_function(
        "mask email + card, text stream in 4 KiB chunks (100 KiB)",
        |b| b.iter(|| black_box(policy_microbench::stream_response(&stream, &text, 4096))),
    );
    group.finish();
}

criterion_group!(benches, route, chains, policies, cel, bodies);
criterion_main!(benches);
