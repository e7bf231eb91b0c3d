//! Secrets never reach a log: API keys, bearer tokens, Basic passwords
//! sent by clients, right or wrong, and the credentials `backend-auth`
//! injects are absent from Envoy's log and from the shim's, both logging
//! at debug with every decision, and from the decision log, even when its
//! expressions read the headers that carry them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use integration_tests::{Host, Stack};

const CONFIG: &str = r#"
decision_log:
  expressions:
    auth: 'request.headers["authorization"]'
    key: '"key=" + request.headers["x-api-key"]'
    upstream: 'request.headers["x-forwarded-auth"]'
routes:
  - name: api
    match: { path: { prefix: /a } }
    policies:
      - name: api-key
        config:
          keys: [{ consumer: team-a, sha256: 4052a09cc5fb1c394828ee26788be2daf3a181e5730ecc68a96aed9ee43da056 }]
          strip: true
      - name: backend-auth
        config: { bearer: injected-upstream-token-77 }
  - name: jwt
    match: { path: { prefix: /jwt } }
    policies:
      - name: jwt
        config:
          providers:
            - issuer: https://issuer.test
              algorithms: [HS256]
              local_jwks:
                inline_string: '{"keys": [{"kty": "oct", "kid": "k1", "k": "Y29uZm9ybWFuY2Utc2VjcmV0LWNvbmZvcm1hbmNlLXNlY3JldA"}]}'
  - name: basic
    match: { path: { prefix: /basic } }
    policies:
      - name: basic-auth
        config:
          htpasswd: "alice:{SHA}8qZo5QcD81ySQ4o8+4uN/xJAevk="
"#;

/// An HS256 token for the inline key above, valid until 2100.
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjoib3JkZXJzIiwic3ViIjoiYWxpY2UiLCJzY29wZSI6Im9yZGVycy5yZWFkIiwiZXhwIjo0MTAyNDQ0ODAwfQ.JuUWJQXGbHhc353PMv3l6R0877C3rN0xa6qb8JbOe1M";

#[test]
fn credentials_are_never_logged() {
    for host in Host::ALL {
        let stack = Stack::builder(host, CONFIG).start();
        let send = |path: &str, header: (&str, &str)| stack.send("GET", path, &[header]).status;
        assert_eq!(send("/a", ("x-api-key", "s3cr3t-team-a")), 200, "{host:?}");
        assert_eq!(send("/a", ("x-api-key", "guessed-key-42")), 401, "{host:?}");
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(send("/jwt", ("authorization", &bearer)), 200, "{host:?}");
        let forged = format!("Bearer {TOKEN}x");
        assert_eq!(send("/jwt", ("authorization", &forged)), 401, "{host:?}");
        // alice:correct-horse-staple, then alice:hunter2-wrong
        assert_eq!(
            send(
                "/basic",
                (
                    "authorization",
                    "Basic YWxpY2U6Y29ycmVjdC1ob3JzZS1zdGFwbGU="
                )
            ),
            200,
            "{host:?}"
        );
        assert_eq!(
            send(
                "/basic",
                ("authorization", "Basic YWxpY2U6aHVudGVyMi13cm9uZw==")
            ),
            401,
            "{host:?}"
        );

        let mut logs = stack.envoy.log();
        if let Some(shim) = &stack.shim {
            logs.push_str(&shim.log());
            // The decision log.
            logs.push_str(&shim.stdout());
        }
        // Every request got a decision line, with the expressions that
        // read credentials redacted.
        assert_eq!(
            logs.matches(r#""route_entry":"#).count(),
            6,
            "{host:?}: one decision line per request:\n{logs}"
        );
        // Expressions over credential headers see nothing there.
        assert!(
            logs.matches(r#""auth":null,"key":null,"upstream":null"#)
                .count()
                == 6,
            "{host:?}: expressions over credentials saw them:\n{logs}"
        );
        // Both hosts log decisions at debug here: an empty log must not pass.
        for decision in [
            "api-key: route \"api\" denied",
            "jwt: route \"jwt\" denied 401",
            "basic-auth: route \"basic\" denied",
        ] {
            assert!(
                logs.contains(decision),
                "{host:?}: {decision:?} is not in the log:\n{logs}"
            );
        }
        let signature = TOKEN.rsplit('.').next().unwrap();
        for secret in [
            "s3cr3t-team-a",
            "guessed-key-42",
            "injected-upstream-token-77",
            signature,
            "YWxpY2U6Y29ycmVjdC1ob3JzZS1zdGFwbGU",
            "correct-horse",
            "hunter2",
        ] {
            assert!(!logs.contains(secret), "{host:?} logged {secret}:\n{logs}");
        }
    }
}
