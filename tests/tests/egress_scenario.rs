//! The egress gateway scenario (envoy/examples/egress-policies.yaml) in the
//! real Envoy, on both hosts: a mutual-TLS listener, client certificates
//! with SPIFFE IDs made at run time by envoy/examples/make-certs.sh, and
//! curl as the client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::process::Command;

use integration_tests::certs::Certificates;
use integration_tests::{Host, Stack};
use local_envoy::{extproc_bin, filter_wasm, filters, repo_root, EnvoyError};
use serde_json::Value;

/// What curl got: the status (0 when the TLS handshake failed) and body.
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    /// The request headers the echo upstream saw.
    fn upstream_header(&self, name: &str) -> Option<String> {
        let echoed: Value = serde_json::from_str(&self.body).ok()?;
        echoed["headers"][name].as_str().map(str::to_owned)
    }
}

/// `GET https://<host><path>` through Envoy, presenting `client`'s
/// certificate (none if `None`).
fn get(
    stack: &Stack,
    certs: &Certificates,
    client: Option<&str>,
    host: &str,
    path: &str,
    headers: &[&str],
) -> Answer {
    let port = stack.envoy.addr().port();
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--http1.1", "-w", "\n%{http_code}", "--cacert"])
        .arg(certs.file("ca.pem"))
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")]);
    if let Some(client) = client {
        curl.arg("--cert")
            .arg(certs.file(&format!("{client}.pem")))
            .arg("--key")
            .arg(certs.file(&format!("{client}.key")));
    }
    for header in headers {
        curl.args(["-H", header]);
    }
    let output = curl
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("running curl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Answer {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
    }
}

fn scenario(host: Host) {
    let certs = Certificates::make();
    let config =
        std::fs::read_to_string(repo_root().join("envoy/examples/egress-policies.yaml")).unwrap();
    let stack = Stack::builder(host, &config).tls(certs.listener()).start();
    let get = |client, host_name, path, headers: &[&str]| {
        get(&stack, &certs, client, host_name, path, headers)
    };

    // RBAC on the SPIFFE identity.
    let team_a = get(Some("team-a"), "api.github.com", "/zen", &[]);
    assert_eq!(team_a.status, 200, "{host:?} team-a: {}", team_a.body);
    let team_b = get(Some("team-b"), "api.github.com", "/zen", &[]);
    assert_eq!(team_b.status, 403, "{host:?} team-b: {}", team_b.body);

    // The path allowlist on api.github.com, and only there.
    for (path, status) in [
        ("/repos/envoyproxy/envoy", 200),
        ("/zen?x=1", 200),
        ("/users/torvalds", 403),
        ("/zenith", 403),
    ] {
        let answer = get(Some("team-a"), "api.github.com", path, &[]);
        assert_eq!(answer.status, status, "{host:?} {path}: {}", answer.body);
    }
    let other = get(Some("team-a"), "httpbingo.org", "/users/torvalds", &[]);
    assert_eq!(other.status, 200, "{host:?} another host: {}", other.body);

    // Header injection and stripping, as the upstream saw them.
    let answer = get(
        Some("team-a"),
        "api.github.com",
        "/zen",
        &[
            "X-Internal-Debug: secret",
            "X-Caller-Identity: forged/forged",
        ],
    );
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.upstream_header("x-caller-identity").as_deref(),
        Some("team-a/team-a"),
        "{host:?}"
    );
    assert_eq!(
        answer.upstream_header("x-forwarded-by").as_deref(),
        Some("policy-engine-egress")
    );
    assert_eq!(answer.upstream_header("x-internal-debug"), None, "{host:?}");
    assert!(stack.upstream.requests_seen() >= 5);

    // Without a client certificate there is no TLS session at all.
    let anonymous = get(None, "api.github.com", "/zen", &[]);
    assert_eq!(anonymous.status, 0, "{host:?}: {}", anonymous.body);
}

#[test]
fn egress_gateway_in_the_wasm_filter() {
    scenario(Host::Wasm);
}

#[test]
fn egress_gateway_in_the_ext_proc_shim() {
    scenario(Host::ExtProc);
}

/// Decisions are logged with route, policy, outcome and caller once the
/// Wasm component logs at debug (the tests' default).
#[test]
fn decisions_are_logged_with_the_caller_identity() {
    let certs = Certificates::make();
    let config =
        std::fs::read_to_string(repo_root().join("envoy/examples/egress-policies.yaml")).unwrap();
    let stack = Stack::builder(Host::Wasm, &config)
        .tls(certs.listener())
        .start();
    assert_eq!(
        get(
            &stack,
            &certs,
            Some("team-b"),
            "api.github.com",
            "/zen",
            &[]
        )
        .status,
        403
    );
    let log = stack.envoy.log();
    let line = log
        .lines()
        .find(|l| l.contains("authorization: route \"egress\" denied"))
        .unwrap_or_else(|| panic!("no decision in the log:\n{log}"));
    assert!(
        line.contains("by default for caller spiffe://cluster.local/ns/team-b/sa/team-b"),
        "{line}"
    );
}

/// A typo in an expression is refused with the route, policy, field and
/// expression named, by Envoy (the Wasm filter) and by the shim, and the
/// configuration already serving stays.
#[test]
fn a_bad_expression_is_refused_and_the_previous_configuration_keeps_serving() {
    let certs = Certificates::make();
    let config =
        std::fs::read_to_string(repo_root().join("envoy/examples/egress-policies.yaml")).unwrap();
    let bad = config.replace(
        "source.identity.namespace == \"team-a\"",
        "source.identity.namespce == \"team-a\"",
    );
    assert_ne!(bad, config);
    let expected = r#"route routes[0] "egress", policy policies[0] authorization@0.1.0, field config.rules[0].allow: expression "source.identity.namespce == \"team-a\" && source.identity.serviceAccount == \"team-a\"": unknown attribute `source.identity.namespce`; `source.identity` has trustDomain, namespace, serviceAccount"#;

    let mut stack = Stack::builder(Host::Wasm, &config)
        .tls(certs.listener())
        .start();
    match stack
        .envoy
        .reload(&[filters::policy_engine(&filter_wasm(), &bad)])
    {
        Err(EnvoyError::Rejected { log }) => assert!(log.contains(expected), "{log}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    let team_a = get(
        &stack,
        &certs,
        Some("team-a"),
        "api.github.com",
        "/zen",
        &[],
    );
    assert_eq!(team_a.status, 200, "the previous configuration must serve");

    let file = certs.file("bad-policies.yaml");
    std::fs::write(&file, &bad).unwrap();
    let check = Command::new(extproc_bin())
        .arg("--check")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!check.status.success());
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.contains(expected), "{said}");
}
