//! The engine's metrics after known traffic, exactly: from Envoy's admin
//! endpoint (Wasm filter: pushed on each tick, tags extracted by the
//! bootstrap's rules) and from the shim's Prometheus endpoint, under the
//! same names and labels.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::authz::{AuthzServer, Decision};
use integration_tests::eventually;
use integration_tests::{Host, Stack};
use local_envoy::filters::grpc_cluster;

fn config(authz_uri: &str) -> String {
    format!(
        r#"
routes:
  - name: api
    match: {{ path: {{ prefix: /api/ }} }}
    policies:
      - name: set-headers
        config: {{ request: {{ set: {{ x-tenant: a }} }} }}
  - name: admin
    match: {{ path: {{ prefix: /admin/ }} }}
    policies:
      - name: set-headers
        when: '"x-skip" in request.headers'
        config: {{ request: {{ set: {{ x-seen: "1" }} }} }}
      - name: respond
        version: 0.1.0
        config: {{ status: 403, body: "no\n" }}
  - name: limited
    match: {{ path: {{ prefix: /limited/ }} }}
    policies:
      - name: rate-limit
        config: {{ limits: [{{ name: l, requests: 2, unit: hour }}] }}
  - name: checked
    match: {{ path: {{ prefix: /checked/ }} }}
    policies:
      - name: ext-authz
        config: {{ grpc: {{ uri: "{authz_uri}", cluster: authz }}, timeout: 1s }}
unmatched: deny
"#
    )
}

/// The traffic every host gets, and what it must count.
fn send_known_traffic(stack: &Stack) {
    for _ in 0..3 {
        assert_eq!(stack.send("GET", "/api/x", &[]).status, 200);
    }
    assert_eq!(
        stack.send("GET", "/admin/x", &[("x-skip", "yes")]).status,
        403
    );
    assert_eq!(stack.send("GET", "/admin/x", &[]).status, 403);
    let limited: Vec<u16> = (0..3)
        .map(|_| stack.send("GET", "/limited/", &[]).status)
        .collect();
    assert_eq!(limited, [200, 200, 429]);
    for _ in 0..2 {
        assert_eq!(stack.send("GET", "/checked/", &[]).status, 200);
    }
    assert_eq!(stack.send("GET", "/elsewhere", &[]).status, 403);
}

/// The series the traffic above must produce, in Prometheus form (name and
/// labels as Envoy's tag extraction and the shim both give them).
fn expected() -> Vec<(&'static str, u64)> {
    vec![
        (r#"policy_engine_requests_allowed{route_entry="api"}"#, 3),
        (
            r#"policy_engine_policy_continued{route_entry="api",policy="set-headers"}"#,
            3,
        ),
        (
            r#"policy_engine_policy_continued{route_entry="admin",policy="set-headers"}"#,
            1,
        ),
        (
            r#"policy_engine_policy_skipped{route_entry="admin",policy="set-headers"}"#,
            1,
        ),
        (
            r#"policy_engine_policy_replied{route_entry="admin",policy="respond"}"#,
            2,
        ),
        (
            r#"policy_engine_requests_denied{route_entry="admin",policy="respond",status="403"}"#,
            2,
        ),
        (r#"policy_engine_requests_allowed{route_entry="admin"}"#, 0),
        (
            r#"policy_engine_requests_allowed{route_entry="limited"}"#,
            2,
        ),
        (
            r#"policy_engine_requests_denied{route_entry="limited",policy="rate-limit",status="429"}"#,
            1,
        ),
        (
            r#"policy_engine_requests_allowed{route_entry="checked"}"#,
            2,
        ),
        (r#"policy_engine_callout_calls{cluster="authz"}"#, 2),
        (r#"policy_engine_callout_failures{cluster="authz"}"#, 0),
        (r#"policy_engine_unmatched_requests_denied"#, 1),
        (r#"policy_engine_config_rejections"#, 0),
        (
            r#"policy_engine_chain_latency_us_count{route_entry="api"}"#,
            3,
        ),
        (
            r#"policy_engine_chain_latency_us_count{route_entry="limited"}"#,
            3,
        ),
    ]
}

/// Prometheus text as `series -> value` (series without `{}` when it has
/// no labels).
fn parse(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.replace("{}", ""), value.parse::<f64>().ok()? as u64))
        })
        .collect()
}

fn differences(found: &BTreeMap<String, u64>, only: &[&str]) -> Vec<String> {
    expected()
        .into_iter()
        .filter(|(series, _)| only.is_empty() || only.iter().any(|o| series.starts_with(o)))
        .filter(|(series, value)| found.get(*series) != Some(value))
        .map(|(series, value)| format!("{series}: want {value}, got {:?}", found.get(series)))
        .collect()
}

fn get(url: &str) -> String {
    integration_tests::send(url, "GET", &[], None).body
}

#[test]
fn envoy_stats_count_exactly_what_the_wasm_filter_did() {
    let authz = AuthzServer::start_grpc(Decision::allow()).unwrap();
    let stack = Stack::builder(Host::Wasm, &config(&authz.uri()))
        .clusters(vec![grpc_cluster("authz", authz.addr())])
        .workers(2)
        .start();
    send_known_traffic(&stack);
    let prometheus = format!("http://{}/stats/prometheus", stack.envoy.admin_addr());
    // Counters arrive on the VMs' next tick; histograms on Envoy's next
    // stats flush (5 s).
    eventually("every expected series", Duration::from_secs(20), || {
        differences(&parse(&get(&prometheus)), &[])
            .is_empty()
            .then_some(())
    });
    // The loads: one per VM (the main thread's and each worker's).
    let loads = parse(&get(&prometheus))["policy_engine_config_loads"];
    assert!(loads >= 3, "{loads}");
}

#[test]
fn the_shims_endpoint_counts_exactly_what_the_shim_did_under_the_same_names() {
    let authz = AuthzServer::start_grpc(Decision::allow()).unwrap();
    let stack = Stack::builder(Host::ExtProc, &config(&authz.uri())).start();
    send_known_traffic(&stack);
    let shim = stack.shim.as_ref().unwrap();
    let url = format!("http://{}/metrics", shim.metrics_addr().unwrap());
    let text = get(&url);
    let found = parse(&text);
    let missing = differences(&found, &[]);
    assert!(missing.is_empty(), "{}\n{text}", missing.join("\n"));
    assert_eq!(found["policy_engine_config_loads"], 1);
    assert!(text.contains("# TYPE policy_engine_chain_latency_us histogram"));
    assert!(
        text.contains(r#"policy_engine_chain_latency_us_bucket{route_entry="api",le="+Inf"} 3"#)
    );
    // Each of the 11 requests was one ext_proc stream, closed once Envoy is
    // done with it.
    wait_for_streams_closed(&url, 11);
}

/// Waits (10 s at most) until the shim's endpoint at `url` counts `streams`
/// streams opened and as many closed.
fn wait_for_streams_closed(url: &str, streams: u64) {
    eventually(
        &format!("{streams} streams opened and closed"),
        Duration::from_secs(10),
        || {
            let found = parse(&get(url));
            let opened = found["policy_engine_extproc_streams_opened"];
            let closed = found["policy_engine_extproc_streams_closed"];
            (opened == streams && closed == streams).then_some(())
        },
    );
}

/// A stream whose chain waits for a service is dropped by the shim as soon
/// as Envoy gives up on it (here, because the client went away), not when
/// the service finally answers: dropping it gives up its call and claims.
#[test]
fn the_shim_drops_a_waiting_stream_when_envoy_abandons_it() {
    use std::io::Write as _;

    let authz = AuthzServer::start_grpc(Decision::allow()).unwrap();
    authz.set_delay(Duration::from_secs(30));
    let config = format!(
        r#"
routes:
  - name: checked
    match: {{ path: {{ prefix: / }} }}
    policies:
      - name: ext-authz
        config: {{ grpc: {{ uri: "{}", cluster: authz }}, timeout: 25s }}
"#,
        authz.uri()
    );
    let stack = Stack::builder(Host::ExtProc, &config).start();
    let shim = stack.shim.as_ref().unwrap();
    let url = format!("http://{}/metrics", shim.metrics_addr().unwrap());

    let mut client = std::net::TcpStream::connect(stack.envoy.addr()).unwrap();
    client
        .write_all(b"GET /x HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    // The chain waits once the service has the check.
    eventually("the check at the service", Duration::from_secs(10), || {
        (authz.checks() > 0).then_some(())
    });
    let found = parse(&get(&url));
    assert_eq!(
        (
            found["policy_engine_extproc_streams_opened"],
            found["policy_engine_extproc_streams_closed"]
        ),
        (1, 0),
        "the stream is open while its chain waits"
    );
    drop(client);

    // Long before the service answers (30 s) or the policy's timeout (25 s).
    wait_for_streams_closed(&url, 1);
    // Envoy reset the stream because the client left, not because its own
    // 2 s message timeout ran out: this is the path the test is about.
    assert_eq!(
        stack.envoy.stat("http.ingress.ext_proc.message_timeouts"),
        Some(0)
    );
}
