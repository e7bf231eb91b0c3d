//! One conformance suite, two hosts: every case in `tests/conformance/*.yaml`
//! runs against the Wasm filter in Envoy and against the ext_proc shim behind
//! Envoy, with the same expectations.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use integration_tests::authz::{alice_or_nobody, AuthzServer, Decision};
use integration_tests::ratelimit::{RateLimitService, Redis};
use integration_tests::raw::send_raw;
use integration_tests::{send, yaml_files, Host, Stack};
use local_envoy::filters::{grpc_cluster, static_cluster};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Suite {
    config: String,
    /// Envoy's own edge hardening on the listener (on unless a suite turns
    /// it off to test the engine's canonicalization alone).
    #[serde(default = "yes")]
    edge_hardening: bool,
    /// Requests are written byte for byte (`integration_tests::raw`), not
    /// through an HTTP client that would clean them up.
    #[serde(default)]
    raw_requests: bool,
    /// A loopback authorization service (`grpc` or `http`) answering by
    /// `authz::alice_or_nobody`, for the `ext-authz` cases: `{authz_uri}`
    /// in the configuration is its address, and Envoy reaches it through
    /// the cluster `authz`.
    authz: Option<AuthzProtocol>,
    /// A Redis and the project's rate limit service counting in it, for
    /// the `rate-limit` global cases: `{ratelimit_uri}` in the
    /// configuration is the service's address, and Envoy reaches it through
    /// the cluster `ratelimit`.
    #[serde(default)]
    ratelimit: bool,
    cases: Vec<Case>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum AuthzProtocol {
    Grpc,
    Http,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    request: Request,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    headers: Headers,
    body: Option<String>,
    /// A body with `\xHH` escapes for bytes a YAML string cannot hold
    /// (invalid UTF-8); raw requests only.
    body_bytes: Option<String>,
}

impl Request {
    /// The body's bytes.
    fn body(&self) -> Option<Vec<u8>> {
        if let Some(text) = &self.body {
            return Some(text.clone().into_bytes());
        }
        let escaped = self.body_bytes.as_ref()?.as_bytes();
        let mut bytes = Vec::with_capacity(escaped.len());
        let mut at = 0;
        while at < escaped.len() {
            let byte = match escaped.get(at..at + 4) {
                Some([b'\\', b'x', high, low]) => {
                    let hex = std::str::from_utf8(&[*high, *low]).unwrap().to_owned();
                    at += 4;
                    u8::from_str_radix(&hex, 16).unwrap()
                }
                _ => {
                    at += 1;
                    escaped[at - 1]
                }
            };
            bytes.push(byte);
        }
        Some(bytes)
    }
}

/// A map of request headers, or a list of `[name, value]` pairs where
/// order, repeats and spelling matter.
#[derive(Deserialize)]
#[serde(untagged)]
enum Headers {
    Map(BTreeMap<String, String>),
    List(Vec<(String, String)>),
}

impl Default for Headers {
    fn default() -> Self {
        Self::Map(BTreeMap::new())
    }
}

impl Headers {
    fn pairs(&self) -> Vec<(&str, &str)> {
        match self {
            Self::Map(map) => map.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
            Self::List(list) => list.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
        }
    }
}

fn get() -> String {
    "GET".into()
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    status: u16,
    body: Option<String>,
    body_starts_with: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, Option<String>>,
    #[serde(default = "yes")]
    reaches_upstream: bool,
    #[serde(default)]
    upstream_headers: BTreeMap<String, Option<String>>,
    upstream_body: Option<String>,
    upstream_path: Option<String>,
    /// Fields of the request's decision-log line (`fields` of the suite's
    /// `decision_log` expressions): value, or null. The runner sends
    /// `x-conformance-case` with such a request, and finds its line by the
    /// expression `case`, which reads it.
    #[serde(default)]
    decision_fields: BTreeMap<String, serde_json::Value>,
    /// Strings the request's decision-log line must not contain anywhere.
    #[serde(default)]
    decision_excludes: Vec<String>,
}

fn suites() -> Vec<(String, Suite)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance");
    let files = yaml_files(&dir);
    assert!(!files.is_empty(), "no suites in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let suite =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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
    let logged = !(expect.decision_fields.is_empty() && expect.decision_excludes.is_empty());
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
                Stack::start_with_clusters(host, &config, vec![cluster], 1)
            }
            None if suite.ratelimit => {
                let redis = Redis::start().unwrap();
                let service = RateLimitService::start(&redis.url()).unwrap();
                let cluster = grpc_cluster("ratelimit", service.addr());
                let config = suite.config.replace("{ratelimit_uri}", &service.uri());
                ratelimit = Some((service, redis));
                Stack::start_with_clusters(host, &config, vec![cluster], 1)
            }
            None if suite.edge_hardening => Stack::start_on(host, &suite.config),
            None => Stack::start_without_edge_hardening(host, &suite.config),
        };
        for case in &suite.cases {
            ran += 1;
            for fault in run_case(&stack, suite.raw_requests, case, ran) {
                failures.push(format!("{file} / {}: {fault}", case.name));
            }
        }
        drop(stack);
        drop(authz);
        drop(ratelimit);
    }
    assert!(ran >= 10, "only {ran} cases ran");
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
