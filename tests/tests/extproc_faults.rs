//! The shim behind real Envoy when things go wrong.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::time::Duration;

use integration_tests::eventually;
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
    let mut stack = Stack::builder(Host::ExtProc, CONFIG).start();
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
    let reply = eventually("Envoy recovering", Duration::from_secs(15), || {
        Some(stack.send("GET", "/api/x", &[])).filter(|reply| reply.status == 200)
    });
    assert_eq!(reply.upstream().unwrap().header("x-tenant"), Some("acme"));
}

#[test]
fn a_reload_applies_to_new_requests_through_envoy() {
    let stack = Stack::builder(Host::ExtProc, CONFIG).start();
    let staged = stack.shim_config().with_extension("staged");
    std::fs::write(
        &staged,
        CONFIG.replace("x-tenant: acme", "x-tenant: globex"),
    )
    .unwrap();
    std::fs::rename(&staged, stack.shim_config()).unwrap();
    eventually("the new configuration", Duration::from_secs(10), || {
        let reply = stack.send("GET", "/api/x", &[]);
        (reply.upstream().unwrap().header("x-tenant") == Some("globex")).then_some(())
    });
}
