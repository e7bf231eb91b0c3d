//! One conformance suite, two hosts: every case in `tests/conformance/*.yaml`
//! runs against the Wasm filter in Envoy and against the ext_proc shim behind
//! Envoy, with the same expectations. The format is `policy_tool::suite`'s:
//! the offline tool runs the same files (`tests/tests/tool.rs`). Here the
//! suite's services are real (`authz`, `ratelimit`), so its canned
//! `callouts` are not used. `CONFORMANCE_CASE=name` runs one case alone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::path::PathBuf;

use integration_tests::authz::{alice_or_nobody, AuthzServer, Decision};
use integration_tests::ratelimit::{RateLimitService, Redis};
use integration_tests::raw::send_raw;
use integration_tests::{send, yaml_files, Host, Stack};
use local_envoy::filters::{grpc_cluster, static_cluster};
use policy_tool::suite::{AuthzProtocol, Case, Suite};

fn suites() -> Vec<(String, Suite)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance");
    let files = yaml_files(&dir);
    assert!(!files.is_empty(), "no suites in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let suite = Suite::load(&path).unwrap_or_else(|e| panic!("{e}"));
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                suite,
            )
        })
        .collect()
}

/// The header that marks a case's request, so its decision line is found
/// among lines the host writes in its own time.
const CASE_HEADER: &str = "x-conformance-case";

/// Runs one case (the `number`th); returns what differed from the
/// expectation.
fn run_case(stack: &Stack, raw: bool, case: &Case, number: usize) -> Vec<String> {
    let request = &case.request;
    let mut headers = request.headers.pairs();
    let before = stack.upstream.requests_seen();
    let expect = &case.expect;
    let logged = !(expect.decision_fields.is_empty()
        && expect.decision_excludes.is_empty()
        && expect.decision.is_none()
        && expect.decided_by.is_none());
    let mark = number.to_string();
    if logged {
        headers.push((CASE_HEADER, &mark));
    }
    let reply = if raw {
        send_raw(
            stack.envoy.addr(),
            &request.method,
            &request.path,
            &headers,
            request.body().as_deref(),
        )
    } else {
        assert!(
            request.body_bytes.is_none(),
            "{}: body_bytes needs raw_requests",
            case.name
        );
        send(
            &stack.envoy.url(&request.path),
            &request.method,
            &headers,
            request.body.as_deref(),
        )
    };
    let reached = stack.upstream.requests_seen() > before;
    let mut faults = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            faults.push(what);
        }
    };
    check(
        reply.status == expect.status,
        format!("status {} (want {})", reply.status, expect.status),
    );
    if let Some(body) = &expect.body {
        check(
            &reply.body == body,
            format!("body {:?} (want {body:?})", reply.body),
        );
    }
    if let Some(prefix) = &expect.body_starts_with {
        check(
            reply.body.starts_with(prefix.as_str()),
            format!("body {:?} (want it to start with {prefix:?})", reply.body),
        );
    }
    for (name, want) in &expect.headers {
        let got = reply.header(name);
        check(
            got.as_deref() == want.as_deref(),
            format!("response header {name}: {got:?} (want {want:?})"),
        );
    }
    check(
        reached == expect.reaches_upstream,
        format!(
            "reached upstream: {reached} (want {})",
            expect.reaches_upstream
        ),
    );
    if reached {
        let seen = reply.upstream();
        for (name, want) in &expect.upstream_headers {
            let got = seen.as_ref().and_then(|s| s.header(name));
            check(
                got == want.as_deref(),
                format!("upstream header {name}: {got:?} (want {want:?})"),
            );
        }
        if let Some(want) = &expect.upstream_path {
            let got = seen.as_ref().and_then(|s| s.path());
            check(
                got == Some(want.as_str()),
                format!("upstream path {got:?} (want {want:?})"),
            );
        }
        if let Some(want) = &expect.upstream_body {
            let got = seen.as_ref().map(|s| s.body());
            check(
                got == Some(want.as_str()),
                format!("upstream body {got:?} (want {want:?})"),
            );
        }
    }
    if logged {
        let what = format!(
            "decision line with fields.case {mark:?} (the suite's decision_log needs \
             `case: 'request.headers[\"{CASE_HEADER}\"]'`)"
        );
        let line = stack.wait_for_decision(&what, |line| line["fields"]["case"] == mark);
        for (name, want) in &expect.decision_fields {
            let got = &line["fields"][name];
            check(
                got == want,
                format!("decision field {name}: {got} (want {want}) in {line}"),
            );
        }
        if let Some(want) = &expect.decision {
            let got = &line["decision"];
            check(
                got == want.as_str(),
                format!("decision {got} (want {want:?})"),
            );
        }
        if let Some(want) = &expect.decided_by {
            let got = &line["policy"];
            check(
                got == want.as_str(),
                format!("decided by {got} (want {want:?})"),
            );
        }
        let text = line.to_string();
        for secret in &expect.decision_excludes {
            check(
                !text.contains(secret.as_str()),
                format!("the decision line holds {secret:?}: {text}"),
            );
        }
    }
    faults
}

fn conforms(host: Host) {
    let mut failures = Vec::new();
    let mut ran = 0;
    for (file, suite) in suites() {
        // Kept alive for the suite's cases.
        let mut authz = None;
        let mut ratelimit = None;
        let stack = match suite.authz {
            Some(protocol) => {
                let (server, cluster) = match protocol {
                    AuthzProtocol::Grpc => {
                        let server = AuthzServer::start_grpc(Decision::allow()).unwrap();
                        let cluster = grpc_cluster("authz", server.addr());
                        (server, cluster)
                    }
                    AuthzProtocol::Http => {
                        let server = AuthzServer::start_http(Decision::allow()).unwrap();
                        let cluster = static_cluster("authz", server.addr());
                        (server, cluster)
                    }
                };
                server.set_rule(alice_or_nobody);
                let config = suite.config.replace("{authz_uri}", &server.uri());
                authz = Some(server);
                Stack::builder(host, &config)
                    .clusters(vec![cluster])
                    .start()
            }
            None if suite.ratelimit => {
                let redis = Redis::start().unwrap();
                let service = RateLimitService::start(&redis.url()).unwrap();
                let cluster = grpc_cluster("ratelimit", service.addr());
                let config = suite.config.replace("{ratelimit_uri}", &service.uri());
                ratelimit = Some((service, redis));
                Stack::builder(host, &config)
                    .clusters(vec![cluster])
                    .start()
            }
            None if suite.edge_hardening => Stack::builder(host, &suite.config).start(),
            None => Stack::builder(host, &suite.config)
                .without_edge_hardening()
                .start(),
        };
        let only = std::env::var("CONFORMANCE_CASE").ok();
        for case in &suite.cases {
            if only.as_ref().is_some_and(|name| *name != case.name) {
                continue;
            }
            ran += 1;
            for fault in run_case(&stack, suite.raw_requests, case, ran) {
                failures.push(format!("{file} / {}: {fault}", case.name));
            }
        }
        drop(stack);
        drop(authz);
        drop(ratelimit);
    }
    let alone = std::env::var_os("CONFORMANCE_CASE").is_some();
    assert!(ran >= 10 || (alone && ran > 0), "only {ran} cases ran");
    assert!(
        failures.is_empty(),
        "{host:?} host failed {} check(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn the_wasm_filter_conforms() {
    conforms(Host::Wasm);
}

#[test]
fn the_ext_proc_shim_conforms() {
    conforms(Host::ExtProc);
}
