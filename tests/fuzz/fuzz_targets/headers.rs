//! Any request headers (names, values, repeats, pseudo-headers) through an
//! engine whose chains read credentials, evaluate CEL over headers and
//! assert headers of their own, and count rate limits by header values:
//! an answer, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use policy_executor::{Engine, HeaderMap};

const CONFIG: &str = r#"
routes:
  - name: keys
    match: { path: { prefix: /keys } }
    policies:
      - name: api-key
        when: 'request.headers["x-client"] != "partner"'
        config:
          from: [{ header: x-api-key }, { query: api_key }, { cookie: key }]
          keys: [{ consumer: team-a, sha256: 4052a09cc5fb1c394828ee26788be2daf3a181e5730ecc68a96aed9ee43da056 }]
          consumer_header: x-consumer
          strip: true
  - name: basic
    match: { host: "*.example.com" }
    policies:
      - name: basic-auth
        config:
          htpasswd: "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"
          user_header: x-user
  - name: limited
    match: { path: { prefix: /limited } }
    policies:
      - name: cors
        config:
          allow_origins: ["https://app.example.com", "https://*.example.org"]
          allow_headers: [authorization]
          allow_credentials: true
      - name: rate-limit
        config:
          limits:
            - name: per-client
              descriptors: { client: 'request.headers["x-client"]', team: 'request.headers["x-team"]' }
              requests: 5
              unit: second
              cost: '"x-cost" in request.headers ? int(request.headers["x-cost"]) : 1'
              overrides: [{ descriptors: { client: partner }, requests: 50 }]
            - { name: all, requests: 100, window: 2s }
          headers: always
          max_keys: 64
  - name: rules
    policies:
      - name: authorization
        config:
          rules:
            - deny: 'request.path.startsWith("/admin") || request.host == "internal.test"'
            - allow: 'request.headers["x-team"] in ["a", "b"] || request.query["q"].size() > 3'
          default: deny
      - name: transformation
        config:
          request:
            set: { x-caller: 'request.headers["x-team"] + "/" + request.method' }
            path: '"/v2" + request.path'
      - name: json-body
        config: { request: true, max_bytes: 1024 }
unmatched: deny
"#;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::from_config(CONFIG.as_bytes(), &policy_fuzz::registry())
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    // Lines of `name: value`; the first lines that look like pseudo-headers
    // set them. A body follows an empty line.
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut pairs: Vec<(String, String)> = vec![
        (":method".into(), "POST".into()),
        (":scheme".into(), "http".into()),
    ];
    for line in head.lines() {
        let (name, value) = line.split_once(": ").unwrap_or((line, ""));
        pairs.push((name.to_owned(), value.to_owned()));
    }
    for (name, default) in [(":path", "/keys"), (":authority", "a.example.com")] {
        if !pairs.iter().any(|(n, _)| n == name) {
            pairs.push((name.into(), default.into()));
        }
    }
    let headers = HeaderMap::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    policy_fuzz::drive(engine(), headers, body.as_bytes());
});
