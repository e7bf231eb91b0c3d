//! The plugin configurations `make bench` measures, shared with the
//! executor's micro-benchmark (`tests/microbench`), so a figure from one can
//! be set beside the other. The auth chain is in [`crate::auth_chain`].

use std::fmt::Write as _;

/// The policy chain of `n` set-headers instances, each editing one request
/// and one response header, on Envoy's `echo-default` route.
pub fn set_headers_chain(n: usize) -> String {
    let mut config = String::from("routes:\n  - name: bench\n    match: { route: echo-default }\n");
    config.push_str(if n == 0 {
        "    policies: []\n"
    } else {
        "    policies:\n"
    });
    for i in 0..n {
        let _ = write!(
            config,
            "      - name: set-headers\n        config:\n          request: {{ set: {{ x-bench-{i}: \"on\" }} }}\n          response: {{ set: {{ x-bench-{i}: \"on\" }} }}\n"
        );
    }
    config
}

/// An authorization policy and a transformation, every value a CEL
/// expression over the request (or the response).
pub const CEL_CHAIN: &str = r#"
routes:
  - name: bench
    match: { route: echo-default }
    policies:
      - name: authorization
        config:
          rules:
            - { allow: 'request.method == "GET" && request.path.startsWith("/")' }
            - { deny: '"x-internal-debug" in request.headers' }
          default: deny
      - name: transformation
        config:
          request:
            set: { x-caller: 'request.host + request.path' }
            add: { x-forwarded-by: '"policy-engine"' }
            remove: [x-internal-debug]
          response:
            set: { x-upstream-status: string(response.code) }
"#;

/// A chain that checks the request body is well-formed JSON (up to
/// 200,000 bytes), for the open-loop stage's 100 KB requests.
pub const JSON_BODY_CHAIN: &str = r#"
routes:
  - name: bench
    match: { route: echo-default }
    policies:
      - name: json-body
        config: { max_bytes: 200000 }
"#;

/// Request body work on a 100 KB JSON document (`json_document`): a
/// JSON transformation (a removal under a wildcard, a set) and masking of
/// the request body (emails and payment cards), as `make bench` and
/// `make microbench` run it.
pub const BODY_EDIT_CHAIN: &str = r#"
routes:
  - name: bench
    match: { route: echo-default }
    max_body_bytes: 200000
    policies:
      - name: json-transform
        config:
          request:
            remove: [/*/tags]
            set: { /0/name: '"first"' }
      - name: mask
        config:
          rules: [{ recognizer: email }, { recognizer: payment_card, action: partial }]
"#;

/// Masking of streamed responses (server-sent events among them): what
/// `make bench` runs on the echo upstream's `x-echo-sse-events` stream.
pub const SSE_MASK_CHAIN: &str = r#"
routes:
  - name: bench
    match: { route: echo-default }
    policies:
      - name: mask
        config:
          request: false
          response: true
          rules: [{ recognizer: email }, { recognizer: payment_card, action: partial }]
"#;

/// A JSON document of about `bytes` bytes: an array of small objects.
pub fn json_document(bytes: usize) -> Vec<u8> {
    let mut text = String::from("[");
    let mut i = 0;
    while text.len() < bytes {
        if i > 0 {
            text.push(',');
        }
        let _ = write!(
            text,
            "{{\"id\":{i},\"name\":\"item {i}\",\"tags\":[\"a\",\"b\"],\"price\":{i}.5}}"
        );
        i += 1;
    }
    text.push(']');
    text.into_bytes()
}
