//! The shim behind real Envoy when things go wrong.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::time::{Duration, Instant};

use integration_tests::{Host, Stack};
use local_envoy::shim::Shim;

const CONFIG: &str = r#"
routes:
  - match: { route: echo-api }
    policies:
      - name: set-headers
        config: { request: { set: { x-tenant: acme } } }
"#;

#[test]
fn envoy_fails_closed_while_the_shim_is_down_and_recovers_when_it_returns() {
    let mut stack = Stack::start_on(Host::ExtProc, CONFIG);
    let ok = stack.send("GET", "/api/x", &[]);
    assert_eq!(ok.upstream().unwrap().header("x-tenant"), Some("acme"));
    let address = stack.shim.as_ref().unwrap().addr();

    drop(stack.shim.take());
    let before = stack.upstream.requests_seen();
    let down = stack.send("GET", "/api/x", &[]);
    assert_eq!(down.status, 500, "{down:?}");
    assert_eq!(
        stack.upstream.requests_seen(),
        before,
        "a request passed unchecked"
    );

    // Back on the same address: Envoy reconnects by itself.
    stack.shim = Some(Shim::start(&stack.shim_config(), address, None, "debug").unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = stack.send("GET", "/api/x", &[]);
        if reply.status == 200 {
            assert_eq!(reply.upstream().unwrap().header("x-tenant"), Some("acme"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy did not recover: {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_reload_applies_to_new_requests_through_envoy() {
    let stack = Stack::start_on(Host::ExtProc, CONFIG);
    let staged = stack.shim_config().with_extension("staged");
    std::fs::write(
        &staged,
        CONFIG.replace("x-tenant: acme", "x-tenant: globex"),
    )
    .unwrap();
    std::fs::rename(&staged, stack.shim_config()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = stack.send("GET", "/api/x", &[]);
        if reply.upstream().unwrap().header("x-tenant") == Some("globex") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new configuration never applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
