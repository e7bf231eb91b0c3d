//! Decision logs and trace context, on both hosts: one JSON line per
//! request (Envoy's log for the Wasm filter, the shim's standard output),
//! asserted field by field; credentials never in it; the request's W3C
//! trace context carried on to the services policies call.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::time::Duration;

use integration_tests::authz::{AuthzServer, Decision};
use integration_tests::eventually;
use integration_tests::{Host, Stack};
use local_envoy::filters::grpc_cluster;
use serde_json::{json, Value};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const API_KEY: &str = "s3cr3t-team-a";

fn config(authz_uri: &str) -> String {
    format!(
        r#"
decision_log:
  requests: all
  expressions:
    tenant: 'request.headers["x-tenant"]'
    leak: '"saw " + request.headers["authorization"]'
routes:
  - name: keys
    match: {{ path: {{ prefix: /keys }} }}
    policies:
      - name: api-key
        config:
          keys: [{{ consumer: team-a, sha256: 4052a09cc5fb1c394828ee26788be2daf3a181e5730ecc68a96aed9ee43da056 }}]
          strip: true
      - name: set-headers
        config: {{ request: {{ set: {{ x-seen: "1" }} }} }}
  - name: checked
    match: {{ path: {{ prefix: /checked }} }}
    policies:
      - name: ext-authz
        config: {{ grpc: {{ uri: "{authz_uri}", cluster: authz }}, timeout: 1s }}
"#
    )
}

/// `host` on [`config`], with `authz` behind the cluster `authz`.
fn start(host: Host, authz: &AuthzServer) -> Stack {
    let cluster = grpc_cluster("authz", authz.addr());
    Stack::builder(host, &config(&authz.uri()))
        .clusters(vec![cluster])
        .start()
}

#[test]
fn each_request_gets_one_decision_line_field_by_field_without_secrets() {
    for host in Host::ALL {
        let authz = AuthzServer::start_grpc(Decision::allow()).unwrap();
        let stack = start(host, &authz);
        let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
        let allowed = stack.send(
            "GET",
            "/keys/orders?page=2",
            &[
                ("x-api-key", API_KEY),
                ("x-request-id", "req-1"),
                ("traceparent", &traceparent),
                ("x-tenant", "acme"),
                ("authorization", "Bearer super-secret-token-9"),
            ],
        );
        assert_eq!(allowed.status, 200, "{host:?}");
        let denied = stack.send("GET", "/keys/orders", &[("x-api-key", "guessed-key-42")]);
        assert_eq!(denied.status, 401, "{host:?}");
        let lines = stack.wait_for_decisions(2);
        assert_eq!(lines.len(), 2, "{host:?}: {lines:#?}");

        let first = &lines[0];
        assert_eq!(first["route_entry"], "keys", "{host:?}");
        assert_eq!(first["decision"], "allowed");
        assert_eq!(first["status"], Value::Null);
        assert_eq!(first["policy"], Value::Null);
        assert_eq!(
            first["policies"],
            json!([
                { "policy": "api-key", "decision": "continued" },
                { "policy": "set-headers", "decision": "continued" },
            ])
        );
        assert_eq!(first["request_id"], "req-1");
        assert_eq!(first["trace_id"], TRACE);
        assert_eq!(first["method"], "GET");
        assert_eq!(first["path"], "/keys/orders", "the query is left out");
        assert_eq!(first["caller"]["api_key_consumer"], "team-a");
        assert_eq!(first["caller"]["address"], "127.0.0.1");
        assert!(first["latency_us"].as_u64().is_some());
        assert_eq!(first["fields"]["tenant"], "acme");
        // The expression cannot see the credential at all.
        assert_eq!(first["fields"]["leak"], Value::Null, "{host:?}");

        let second = &lines[1];
        assert_eq!(second["decision"], "denied");
        assert_eq!(second["status"], 401);
        assert_eq!(second["policy"], "api-key");
        assert_eq!(
            second["policies"],
            json!([
                { "policy": "api-key", "decision": "replied" },
                { "policy": "set-headers", "decision": "not_run" },
            ])
        );
        // Envoy made one up (it does when the client sends none).
        let generated = second["request_id"].as_str().unwrap();
        assert!(generated.len() >= 32 && generated != "req-1", "{generated}");
        assert_eq!(second["fields"]["tenant"], Value::Null);

        if stack.shim.is_none() {
            // The same lines reach Envoy's access log through the filter
            // state `wasm.policy_engine_decision`.
            let logged = eventually("two access log lines", Duration::from_secs(10), || {
                let logged: Vec<Value> = stack
                    .envoy
                    .access_log()
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect();
                (logged.len() >= 2).then_some(logged)
            });
            assert_eq!(logged, lines, "the access log's lines");
        }
        let mut everything = match &stack.shim {
            Some(shim) => shim.stdout() + &shim.log(),
            None => String::new(),
        };
        everything.push_str(&stack.envoy.log());
        for secret in [API_KEY, "guessed-key-42", "super-secret-token-9"] {
            assert!(!everything.contains(secret), "{host:?} wrote {secret}");
        }
    }
}

#[test]
fn calls_to_services_carry_the_requests_trace_context() {
    for host in Host::ALL {
        let authz = AuthzServer::start_grpc(Decision::allow()).unwrap();
        let stack = start(host, &authz);
        let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
        let reply = stack.send(
            "GET",
            "/checked",
            &[("traceparent", &traceparent), ("tracestate", "vendor=x")],
        );
        assert_eq!(reply.status, 200, "{host:?}");
        let check = authz.last_check().unwrap();
        assert_eq!(
            check.trace_metadata.get("traceparent"),
            Some(&traceparent),
            "{host:?}"
        );
        assert_eq!(
            check.trace_metadata.get("tracestate").map(String::as_str),
            Some("vendor=x")
        );
        // A malformed traceparent is not passed on.
        let reply = stack.send("GET", "/checked", &[("traceparent", "00-nonsense-01")]);
        assert_eq!(reply.status, 200);
        assert_eq!(
            authz
                .last_check()
                .unwrap()
                .trace_metadata
                .get("traceparent"),
            None,
            "{host:?}"
        );
        let line = stack
            .wait_for_decisions(2)
            .into_iter()
            .find(|d| d["route_entry"] == "checked")
            .unwrap();
        assert_eq!(line["trace_id"], TRACE);
    }
}
