//! The `rate-limit` policy in real Envoy, on both hosts: local buckets
//! exact across workers, refill, limits composing, keys from JWT claims
//! and SPIFFE identities; global buckets shared by two Envoys (one with the
//! Wasm filter, one behind the shim) through the project's rate limit
//! service and a real Redis, and what happens when Redis goes away.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::auth_chain::{key_set, SigningKey, AUDIENCE, ISSUER};
use integration_tests::certs::Certificates;
use integration_tests::eventually;
use integration_tests::ratelimit::{RateLimitService, Redis};
use integration_tests::{Host, Stack};
use local_envoy::filters::grpc_cluster;

/// One limit of `requests` per `period` (`unit: ...` or `window: ...`)
/// keyed by `x-client`, with `more` (further lines of the policy's config).
fn limit(requests: u32, period: &str, more: &str) -> String {
    format!(
        r#"
routes:
  - name: api
    policies:
      - name: rate-limit
        config:
          limits:
            - name: per-client
              descriptors: {{ client: 'request.headers["x-client"]' }}
              requests: {requests}
              {period}
{more}"#
    )
}

/// A local limit (the policy's default mode).
fn local(requests: u32, period: &str) -> String {
    limit(requests, period, "")
}

/// Sends `count` requests with `headers` from `threads` threads at once;
/// the statuses, in no particular order.
fn burst(stack: &Stack, count: usize, threads: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|_| stack.send("GET", "/", headers).status)
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[test]
fn local_limits_are_exact_across_workers_under_concurrent_load() {
    for (host, workers) in [(Host::Wasm, 1), (Host::Wasm, 4), (Host::ExtProc, 1)] {
        let stack = Stack::builder(host, &local(40, "unit: hour"))
            .workers(workers)
            .start();
        let statuses = burst(&stack, 100, 8, &[("x-client", "hot")]);
        assert_eq!(
            (count(&statuses, 200), count(&statuses, 429)),
            (40, 60),
            "{host:?} with {workers} workers: {statuses:?}"
        );
        // Another key has a bucket of its own.
        assert_eq!(stack.send("GET", "/", &[("x-client", "cold")]).status, 200);
    }
}

#[test]
fn a_bucket_refills_at_its_rate_and_the_denial_says_when() {
    for host in Host::ALL {
        // 2 per 4 s: full at first, then one more every 2 s.
        let stack = Stack::builder(host, &local(2, "window: 4s")).start();
        let client = [("x-client", "refill")];
        let first = Instant::now();
        assert_eq!(stack.send("GET", "/", &client).status, 200);
        assert_eq!(stack.send("GET", "/", &client).status, 200);
        let denied = stack.send("GET", "/", &client);
        assert_eq!(denied.status, 429, "{host:?}");
        let retry_after: u64 = denied.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (1..=2).contains(&retry_after),
            "{host:?}: Retry-After {retry_after}"
        );
        assert_eq!(
            denied.header("ratelimit-policy").as_deref(),
            Some("\"per-client\";q=2;w=4")
        );
        assert!(denied
            .header("ratelimit")
            .unwrap()
            .starts_with("\"per-client\";r=0;t="));
        // The refill is at first's admission + 2 s at the earliest: a
        // request well before it is refused whatever the machine's pace.
        if first.elapsed() < Duration::from_millis(1_500) {
            std::thread::sleep(Duration::from_millis(1_500).saturating_sub(first.elapsed()));
            if first.elapsed() < Duration::from_millis(1_900) {
                assert_eq!(
                    stack.send("GET", "/", &client).status,
                    429,
                    "{host:?}: early"
                );
            }
        }
        // After the refill time (measured from after the last admission,
        // so never early), exactly one more.
        std::thread::sleep(Duration::from_millis(2_100).saturating_sub(first.elapsed()));
        let after = Instant::now();
        while stack.send("GET", "/", &client).status != 200 {
            assert!(
                after.elapsed() < Duration::from_secs(3),
                "{host:?}: no refill"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            stack.send("GET", "/", &client).status,
            429,
            "{host:?}: one only"
        );
    }
}

#[test]
fn several_limits_compose_and_the_tightest_decides() {
    let config = r#"
routes:
  - name: api
    policies:
      - name: rate-limit
        config:
          limits:
            - name: per-client
              descriptors: { client: 'request.headers["x-client"]' }
              default_bucket: anonymous
              requests: 3
              unit: hour
              overrides: [{ descriptors: { client: vip }, requests: 5 }]
            - name: everyone
              requests: 7
              unit: hour
          headers: always
"#;
    for host in Host::ALL {
        let stack = Stack::builder(host, config).start();
        let send = |client: Option<&str>| {
            let headers: Vec<(&str, &str)> = client.map(|c| ("x-client", c)).into_iter().collect();
            stack.send("GET", "/", &headers)
        };
        let a: Vec<u16> = (0..4).map(|_| send(Some("a")).status).collect();
        assert_eq!(a, [200, 200, 200, 429], "{host:?}");
        let allowed = send(Some("vip"));
        assert_eq!(allowed.status, 200);
        assert_eq!(
            allowed.header("ratelimit-policy").as_deref(),
            Some("\"per-client\";q=5;w=3600, \"everyone\";q=7;w=3600"),
            "{host:?}: the override's quota, on an allowed response"
        );
        assert!(allowed
            .header("ratelimit")
            .unwrap()
            .contains("\"everyone\";r=3;"));
        // `everyone` has 3 left: the VIP's own bucket has 4, the tighter wins.
        let vip: Vec<u16> = (0..4).map(|_| send(Some("vip")).status).collect();
        assert_eq!(vip, [200, 200, 200, 429], "{host:?}");
        let denied = send(None);
        assert_eq!(denied.status, 429, "{host:?}: everyone is spent");
        assert!(denied
            .header("ratelimit")
            .unwrap()
            .contains("\"everyone\";r=0;"));
        assert!(
            denied
                .header("ratelimit")
                .unwrap()
                .contains("\"per-client\";r=3;"),
            "{host:?}: the anonymous bucket was not used by the denial"
        );
    }
}

#[test]
fn callers_are_limited_by_their_jwt_subject() {
    let key = SigningKey::generate("rl-1");
    let config = format!(
        r#"
routes:
  - name: api
    policies:
      - name: jwt
        config:
          providers:
            - issuer: {ISSUER}
              audiences: [{AUDIENCE}]
              algorithms: [ES256]
              local_jwks: {{ inline_string: '{jwks}' }}
      - name: rate-limit
        config:
          limits:
            - name: per-user
              descriptors: {{ user: jwt.sub }}
              requests: 2
              unit: hour
"#,
        jwks = key_set(&[&key])
    );
    for host in Host::ALL {
        let stack = Stack::builder(host, &config).start();
        let as_user = |subject: &str| {
            let bearer = format!("Bearer {}", key.token_for(subject).unwrap());
            stack.send("GET", "/", &[("authorization", &bearer)]).status
        };
        let alice: Vec<u16> = (0..3).map(|_| as_user("alice")).collect();
        assert_eq!(alice, [200, 200, 429], "{host:?}");
        // A new token of the same subject is the same bucket; another
        // subject is another.
        assert_eq!(as_user("alice"), 429, "{host:?}");
        assert_eq!(as_user("bob"), 200, "{host:?}");
    }
}

/// `GET /` over mutual TLS as `client` (a certificate of `certs`); the
/// status curl saw.
fn get_as(stack: &Stack, certs: &Certificates, client: &str) -> u16 {
    let port = stack.envoy.addr().port();
    let output = Command::new("curl")
        .args([
            "-sS",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(certs.file("ca.pem"))
        .args([
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            "--cert",
        ])
        .arg(certs.file(&format!("{client}.pem")))
        .arg("--key")
        .arg(certs.file(&format!("{client}.key")))
        .arg(format!("https://localhost:{port}/"))
        .output()
        .expect("running curl");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn workloads_are_limited_by_their_spiffe_identity() {
    let certs = Certificates::make();
    let config = r#"
routes:
  - name: api
    policies:
      - name: rate-limit
        config:
          limits:
            - name: per-workload
              descriptors: { account: source.identity.serviceAccount, namespace: source.identity.namespace }
              requests: 2
              unit: hour
"#;
    for host in Host::ALL {
        let stack = Stack::builder(host, config).tls(certs.listener()).start();
        let team_a: Vec<u16> = (0..3).map(|_| get_as(&stack, &certs, "team-a")).collect();
        assert_eq!(team_a, [200, 200, 429], "{host:?}");
        assert_eq!(get_as(&stack, &certs, "team-b"), 200, "{host:?}");
    }
}

/// A global limit of `requests` per minute keyed by `x-client`, asking
/// `service`.
fn global(service: &RateLimitService, requests: u32, failure_mode: &str) -> String {
    let global = format!(
        "          global:\n            grpc: {{ uri: \"{}\", cluster: ratelimit }}\n            timeout: 1s\n            failure_mode: {failure_mode}\n",
        service.uri()
    );
    limit(requests, "unit: minute", &global)
}

fn start_global(host: Host, service: &RateLimitService, config: &str, workers: u32) -> Stack {
    let clusters = vec![grpc_cluster("ratelimit", service.addr())];
    Stack::builder(host, config)
        .clusters(clusters)
        .workers(workers)
        .start()
}

#[test]
fn two_envoys_one_per_host_share_one_redis_and_admit_exactly_the_limit() {
    let redis = Redis::start().unwrap();
    let service = RateLimitService::start(&redis.url()).unwrap();
    let config = global(&service, 25, "deny");
    let wasm = start_global(Host::Wasm, &service, &config, 2);
    let shim = start_global(Host::ExtProc, &service, &config, 1);
    let client = [("x-client", "fleet")];
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let wasm = scope.spawn(|| burst(&wasm, 40, 4, &client));
        let shim = scope.spawn(|| burst(&shim, 40, 4, &client));
        let mut all = wasm.join().unwrap();
        all.extend(shim.join().unwrap());
        all
    });
    assert_eq!(
        (count(&statuses, 200), count(&statuses, 429)),
        (25, 55),
        "{statuses:?}"
    );
    // Both Envoys now refuse that client, and say so the same way.
    for stack in [&wasm, &shim] {
        let denied = stack.send("GET", "/", &client);
        assert_eq!(denied.status, 429);
        assert_eq!(
            denied.header("ratelimit-policy").as_deref(),
            Some("\"per-client\";q=25;w=60")
        );
        assert!(denied.header("retry-after").is_some());
    }
    assert_eq!(wasm.send("GET", "/", &[("x-client", "other")]).status, 200);
}

/// Sends until a request gets `status`, for up to 15 s.
fn wait_for_status(stack: &Stack, headers: &[(&str, &str)], status: u16) {
    eventually(&format!("status {status}"), Duration::from_secs(15), || {
        (stack.send("GET", "/", headers).status == status).then_some(())
    });
}

#[test]
fn without_redis_the_failure_mode_applies_and_limiting_resumes_when_it_returns() {
    let mut redis = Redis::start().unwrap();
    let service = RateLimitService::start(&redis.url()).unwrap();
    let deny = global(&service, 3, "deny");
    let allow = global(&service, 3, "allow");
    let stacks = [
        (start_global(Host::Wasm, &service, &deny, 1), 500),
        (start_global(Host::ExtProc, &service, &deny, 1), 500),
        (start_global(Host::Wasm, &service, &allow, 1), 200),
        (start_global(Host::ExtProc, &service, &allow, 1), 200),
    ];
    for (i, (stack, _)) in stacks.iter().enumerate() {
        let client = format!("before-{i}");
        assert_eq!(stack.send("GET", "/", &[("x-client", &client)]).status, 200);
    }
    redis.stop();
    for (i, (stack, expected)) in stacks.iter().enumerate() {
        let client = format!("during-{i}");
        for _ in 0..5 {
            let reply = stack.send("GET", "/", &[("x-client", &client)]);
            assert_eq!(reply.status, *expected, "stack {i} without Redis");
        }
    }
    redis.restart().unwrap();
    for (i, (stack, _)) in stacks.iter().enumerate() {
        let client = format!("after-{i}");
        let headers = [("x-client", client.as_str())];
        // The first admission after Redis is back counts as one of the 3.
        wait_for_status(stack, &headers, 200);
        let rest: Vec<u16> = (0..3)
            .map(|_| stack.send("GET", "/", &headers).status)
            .collect();
        assert_eq!(rest, [200, 200, 429], "stack {i} once Redis is back");
    }
}
