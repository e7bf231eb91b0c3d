//! The `ext-authz` policy in real Envoy, both hosts, against a loopback
//! authorization service speaking Envoy's gRPC `Authorization/Check` and
//! plain HTTP: allows carry the service's headers and metadata upstream,
//! denials carry its status, headers and body to the client, a service that
//! cannot answer fails closed (or open, when chosen), and cached decisions
//! spare the service.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::time::{Duration, Instant};

use integration_tests::authz::{alice_or_nobody, AuthzServer, Decision};
use integration_tests::{Host, Stack};
use local_envoy::filters::{grpc_cluster, static_cluster};

fn grpc_config(server: &AuthzServer, extra: &str) -> String {
    let then = if extra.contains("include_body") {
        ""
    } else {
        r#"
      - name: authorization
        config:
          rules: [{ allow: 'metadata["ext-authz.tier"] == "gold"' }]
          default: deny"#
    };
    format!(
        r#"
routes:
  - name: orders
    policies:
      - name: ext-authz
        config:
          grpc: {{ uri: "{}", cluster: authz }}
          timeout: 500ms
{extra}{then}
"#,
        server.uri()
    )
}

fn start_grpc(host: Host, server: &AuthzServer, extra: &str) -> Stack {
    Stack::builder(host, &grpc_config(server, extra))
        .clusters(vec![grpc_cluster("authz", server.addr())])
        .start()
}

#[test]
fn grpc_allows_with_the_services_headers_and_metadata_and_denies_with_its_answer() {
    for host in Host::ALL {
        let server = AuthzServer::start_grpc(Decision::allow()).unwrap();
        server.set_rule(alice_or_nobody);
        let stack = start_grpc(host, &server, "");
        let reply = stack.send(
            "GET",
            "/orders?id=7",
            &[
                ("authorization", "Bearer good"),
                ("x-user", "mallory"),
                ("x-debug", "1"),
            ],
        );
        assert_eq!(reply.status, 200, "{host:?}: {}", reply.body);
        let upstream = reply.upstream().expect("reached the upstream");
        assert_eq!(upstream.header("x-user"), Some("alice"), "{host:?}");
        assert_eq!(
            upstream.header("x_user"),
            None,
            "{host:?}: the client's variant"
        );
        assert_eq!(
            upstream.header("x-debug"),
            None,
            "{host:?}: removed by the service"
        );
        let check = server.last_check().expect("the service was asked");
        assert_eq!(check.method, "GET", "{host:?}");
        assert_eq!(check.path, "/orders?id=7", "{host:?}");
        assert_eq!(check.source_address, "127.0.0.1", "{host:?}");

        let denied = stack.send("GET", "/orders", &[("authorization", "Bearer bad")]);
        assert_eq!(denied.status, 401, "{host:?}");
        assert_eq!(denied.body, "who are you?\n", "{host:?}");
        assert_eq!(
            denied.header("www-authenticate").as_deref(),
            Some("Bearer realm=\"orders\""),
            "{host:?}"
        );
        assert!(
            denied.upstream().is_none(),
            "{host:?}: the upstream was asked"
        );
    }
}

#[test]
fn http_mode_forwards_the_request_and_returns_the_denial() {
    for host in Host::ALL {
        let server = AuthzServer::start_http(Decision::allow()).unwrap();
        server.set_rule(alice_or_nobody);
        let config = format!(
            r#"
routes:
  - name: orders
    policies:
      - name: ext-authz
        config:
          http: {{ uri: "{}/check", cluster: authz-http, allowed_upstream_headers: [x-user] }}
          include_headers: [authorization]
"#,
            server.uri()
        );
        let stack = Stack::builder(host, &config)
            .clusters(vec![static_cluster("authz-http", server.addr())])
            .start();
        let reply = stack.send(
            "GET",
            "/orders?id=7",
            &[
                ("authorization", "Bearer good"),
                ("x-user", "mallory"),
                ("cookie", "c=1"),
            ],
        );
        assert_eq!(reply.status, 200, "{host:?}: {}", reply.body);
        assert_eq!(
            reply.upstream().unwrap().header("x-user"),
            Some("alice"),
            "{host:?}"
        );
        let check = server.last_check().unwrap();
        assert_eq!(check.path, "/check/orders?id=7", "{host:?}");
        assert_eq!(check.headers.get("cookie"), None, "{host:?}: not included");

        // A 2xx without the asserted header still strips the client's.
        server.set_decision(Decision::allow());
        server.set_rule(|_| Decision::allow());
        let reply = stack.send("GET", "/orders", &[("x-user", "mallory")]);
        assert_eq!(reply.status, 200, "{host:?}");
        assert_eq!(reply.upstream().unwrap().header("x-user"), None, "{host:?}");

        server.set_rule(alice_or_nobody);
        let denied = stack.send("GET", "/orders", &[]);
        assert_eq!(denied.status, 401, "{host:?}");
        assert_eq!(denied.body, "who are you?\n", "{host:?}");
    }
}

#[test]
fn a_service_that_cannot_answer_fails_closed_unless_told_otherwise() {
    for host in Host::ALL {
        let server = AuthzServer::start_grpc(Decision::allow()).unwrap();
        server.set_rule(alice_or_nobody);
        let closed = start_grpc(host, &server, "");
        let open_server = AuthzServer::start_grpc(Decision::allow()).unwrap();
        let open = Stack::builder(
            host,
            &format!(
                r#"
routes:
  - name: orders
    policies:
      - name: ext-authz
        config:
          grpc: {{ uri: "{}", cluster: authz }}
          timeout: 300ms
          failure_mode: allow
"#,
                open_server.uri()
            ),
        )
        .clusters(vec![grpc_cluster("authz", open_server.addr())])
        .start();
        let good = [("authorization", "Bearer good")];

        server.set_down(true);
        open_server.set_down(true);
        let reply = closed.send("GET", "/orders", &good);
        assert_eq!(
            reply.status, 403,
            "{host:?}: down, fail closed: {}",
            reply.body
        );
        assert_eq!(
            open.send("GET", "/orders", &good).status,
            200,
            "{host:?}: failure_mode allow"
        );

        // Too slow is the same as down, and the answer is prompt.
        server.set_down(false);
        server.set_delay(Duration::from_secs(3));
        let started = Instant::now();
        assert_eq!(
            closed.send("GET", "/orders", &good).status,
            403,
            "{host:?}: timeout"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{host:?}: {:?}",
            started.elapsed()
        );

        server.set_delay(Duration::ZERO);
        assert_eq!(
            closed.send("GET", "/orders", &good).status,
            200,
            "{host:?}: back"
        );
    }
}

#[test]
fn cached_decisions_spare_the_service() {
    for host in Host::ALL {
        let server = AuthzServer::start_grpc(Decision::allow()).unwrap();
        server.set_rule(alice_or_nobody);
        let stack = start_grpc(
            host,
            &server,
            "          cache: { key: 'request.headers[\"authorization\"]', ttl: 60s }",
        );
        let good = [("authorization", "Bearer good")];
        for _ in 0..3 {
            let reply = stack.send("GET", "/orders", &good);
            assert_eq!(reply.status, 200, "{host:?}: {}", reply.body);
        }
        assert_eq!(server.checks(), 1, "{host:?}: one check, then the cache");
        // Another path is another decision.
        assert_eq!(
            stack.send("GET", "/orders/7", &good).status,
            200,
            "{host:?}"
        );
        assert_eq!(server.checks(), 2, "{host:?}");
    }
}

#[test]
fn the_body_is_sent_when_asked_and_one_too_large_is_refused() {
    for host in Host::ALL {
        let server = AuthzServer::start_grpc(Decision::allow()).unwrap();
        let stack = start_grpc(host, &server, "          include_body: { max_bytes: 64 }");
        let url = stack.envoy.url("/orders");
        let reply = integration_tests::send(&url, "POST", &[], Some("{\"qty\":2}"));
        assert_eq!(reply.status, 200, "{host:?}: {}", reply.body);
        assert_eq!(
            server.last_check().unwrap().body,
            b"{\"qty\":2}",
            "{host:?}"
        );
        let too_large = "x".repeat(65);
        let reply = integration_tests::send(&url, "POST", &[], Some(&too_large));
        assert_eq!(reply.status, 413, "{host:?}");
        assert_eq!(server.checks(), 1, "{host:?}: refused before any check");
    }
}
