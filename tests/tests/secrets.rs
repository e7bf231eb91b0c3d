//! Secrets never reach a log: keys sent by clients, right or wrong, are
//! absent from Envoy's log (the Wasm filter logging at debug, decisions
//! included) and from the shim's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use integration_tests::{Host, Stack};

const CONFIG: &str = r#"
routes:
  - name: api
    policies:
      - name: api-key
        config:
          keys: [{ consumer: team-a, sha256: 4052a09cc5fb1c394828ee26788be2daf3a181e5730ecc68a96aed9ee43da056 }]
          strip: true
"#;

#[test]
fn api_keys_are_never_logged() {
    for host in Host::ALL {
        let stack = Stack::start_on(host, CONFIG);
        let good = stack.send("GET", "/a", &[("x-api-key", "s3cr3t-team-a")]);
        assert_eq!(good.status, 200, "{host:?}");
        let wrong = stack.send("GET", "/a", &[("x-api-key", "guessed-key-42")]);
        assert_eq!(wrong.status, 401, "{host:?}");

        let mut logs = stack.envoy.log();
        if let Some(shim) = &stack.shim {
            logs.push_str(&shim.log());
        }
        // The Wasm filter logs at debug here, so the denial must be in the
        // log: otherwise an empty log would pass. The shim logs at info.
        if host == Host::Wasm {
            assert!(
                logs.contains("api-key: route \"api\" denied"),
                "the decision is not in the log:\n{logs}"
            );
        }
        for secret in ["s3cr3t-team-a", "guessed-key-42"] {
            assert!(!logs.contains(secret), "{host:?} logged {secret}:\n{logs}");
        }
    }
}
