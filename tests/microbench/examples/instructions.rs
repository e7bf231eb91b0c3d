//! Runs one micro-benchmark fixture a given number of times, for
//! `valgrind --tool=callgrind`: instructions are repeatable where wall
//! clocks on a shared machine are not. Run it twice (say 1,000 and 2,000
//! times) and divide the difference by the extra runs: the engine's setup
//! cancels out, and what is left is the instructions per request.
//!
//! `cargo build --release -p policy-microbench --example instructions`, then
//! `valgrind --tool=callgrind --callgrind-out-file=/dev/null
//! target/release/examples/instructions header-eq 1000`.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "a measuring tool: a fixture that does not build must stop it"
)]

use std::hint::black_box;

use integration_tests::auth_chain;
use integration_tests::chains::{set_headers_chain, CEL_CHAIN};
use policy_microbench::Fixture;

fn authorization(rule: &str) -> String {
    format!(
        "routes:\n  - name: bench\n    match: {{ route: echo-default }}\n    policies:\n      \
         - name: authorization\n        config: {{ rules: [{{ allow: '{rule}' }}], default: deny }}\n"
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let runs: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let headers = vec![("x-tenant".to_owned(), "acme".to_owned())];
    let fixture = match name.as_str() {
        "empty" => Fixture::new(&set_headers_chain(0), "/api/items?page=2", &headers),
        "set-headers-1" => Fixture::new(&set_headers_chain(1), "/api/items?page=2", &headers),
        "cel-chain" => Fixture::new(CEL_CHAIN, "/api/items?page=2", &headers),
        "auth" => {
            let (config, headers) = auth_chain::inline(true).expect("auth chain");
            Fixture::new(&config, "/bench", &headers)
        }
        "eq-method" => Fixture::new(
            &authorization(r#"request.method == "GET""#),
            "/api/items?page=2",
            &headers,
        ),
        "header-eq" => Fixture::new(
            &authorization(r#"request.headers["x-tenant"] == "acme""#),
            "/api/items?page=2",
            &headers,
        ),
        "query-eq" => Fixture::new(
            &authorization(r#"request.query["page"] == "2""#),
            "/api/items?page=2",
            &headers,
        ),
        other => panic!("no fixture {other:?}"),
    }
    .expect("fixture");
    for _ in 0..runs {
        black_box(fixture.run());
    }
}
