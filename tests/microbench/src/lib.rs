//! Fixtures for the executor's micro-benchmark (`benches/executor.rs`,
//! `make microbench`): an engine over a plugin configuration and one
//! request, run through every phase exactly as a host would, natively.
//!
//! `make bench` measures the filter in Envoy, where host calls and V8 are
//! most of the cost; this measures the executor's own work per request, in
//! nanoseconds, so a change to the hot path shows here first.

use policy_executor::{Engine, HeaderMap, Outcome, PolicyFactory, Registry, Start};

/// Every policy the fixtures use, under the names a build gives them.
pub fn registry() -> Registry {
    let factories: [PolicyFactory; 13] = [
        policy_set_headers::FACTORY,
        policy_respond::FACTORY,
        policy_json_body::FACTORY,
        policy_json_transform::FACTORY,
        policy_mask::FACTORY,
        policy_authorization::FACTORY,
        policy_transformation::FACTORY,
        policy_redirect::FACTORY,
        policy_api_key::FACTORY,
        policy_jwt::FACTORY,
        policy_basic_auth::FACTORY,
        policy_cors::FACTORY,
        policy_rate_limit::FACTORY,
    ];
    Registry::new(factories)
}

/// An engine and the request it is measured with.
pub struct Fixture {
    engine: Engine,
    request: HeaderMap,
    body: Option<Vec<u8>>,
    response: HeaderMap,
}

/// What a run ended with, so the work cannot be optimised away and a
/// fixture that stopped doing what it should is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ran {
    /// The chain ran and the request went upstream with this many header
    /// changes.
    Passed(usize),
    /// No chain applies, and the configuration let the request through.
    Unrouted,
    /// The fixture has a body the chain never asked for, so the body work
    /// it is meant to measure did not happen.
    BodyUnread,
    /// A policy answered with this status.
    Answered(u16),
    /// The chain waited for a service; fixtures never should.
    Waited,
}

impl Fixture {
    /// An engine over `config` (YAML), and a GET of `path` with `headers`
    /// (plus the pseudo-headers Envoy sets) that Envoy's route
    /// `echo-default` took.
    pub fn new(config: &str, path: &str, headers: &[(String, String)]) -> Result<Self, String> {
        Self::build(config, "GET", path, headers, None)
    }

    /// The same as a POST with `body`.
    pub fn post(
        config: &str,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Self, String> {
        Self::build(config, "POST", path, headers, Some(body))
    }

    fn build(
        config: &str,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Self, String> {
        let mut engine =
            Engine::from_config(config.as_bytes(), &registry()).map_err(|e| e.to_string())?;
        engine.set_host(Box::new(policy_executor::callout::ProcessHost::default()));
        let pseudo = [
            (":method", method),
            (":path", path),
            (":authority", "bench.example"),
            (":scheme", "http"),
            ("user-agent", "microbench"),
            ("accept", "*/*"),
            ("x-request-id", "3b1f5a5e-6d0c-4b8e-9d49-1e1b8e0f2c11"),
        ];
        let request = HeaderMap::from_pairs(
            pseudo
                .into_iter()
                .chain(headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
        );
        let response = HeaderMap::from_pairs([
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-length", "243"),
        ]);
        Ok(Self {
            engine,
            request,
            body,
            response,
        })
    }

    /// Only route selection and the exchange's start, no phase.
    pub fn start_only(&self) -> bool {
        matches!(
            self.engine
                .start(|| Some("echo-default".to_owned()), self.request.clone()),
            Start::Run(_)
        )
    }

    /// One request through every phase the chain needs.
    pub fn run(&self) -> Ran {
        let mut exchange = match self
            .engine
            .start(|| Some("echo-default".to_owned()), self.request.clone())
        {
            Start::Run(exchange) => exchange,
            Start::Pass(_) => return Ran::Unrouted,
            Start::Respond(reply) => return Ran::Answered(reply.status),
        };
        let mut changes = match exchange.on_request_headers() {
            Outcome::Continue(mutations) => mutations.iter().count(),
            Outcome::Respond(reply) => return Ran::Answered(reply.status),
            Outcome::Wait(_) => return Ran::Waited,
        };
        if let Some(body) = &self.body {
            if !exchange.body_needs().request {
                return Ran::BodyUnread;
            }
            match exchange.on_request_body(body) {
                Outcome::Continue(mutations) => changes += mutations.iter().count(),
                Outcome::Respond(reply) => return Ran::Answered(reply.status),
                Outcome::Wait(_) => return Ran::Waited,
            }
        }
        if exchange.acts_on_response() {
            let response = if exchange.reads_response_headers() {
                self.response.clone()
            } else {
                HeaderMap::new()
            };
            match exchange.on_response_headers(response) {
                policy_executor::ResponseOutcome::Continue(mutations) => {
                    changes += mutations.iter().count();
                }
                policy_executor::ResponseOutcome::Respond(reply) => {
                    return Ran::Answered(reply.status)
                }
            }
        }
        Ran::Passed(changes)
    }
}

/// Streams `body` as a `text/plain` response of the fixture's chain, in
/// chunks of `chunk` bytes, as a host would: what the client gets.
pub fn stream_response(fixture: &Fixture, body: &[u8], chunk: usize) -> Vec<u8> {
    let request = fixture.request.clone();
    let Start::Run(mut exchange) = fixture
        .engine
        .start(|| Some("echo-default".to_owned()), request)
    else {
        return Vec::new();
    };
    let _ = exchange.on_request_headers();
    let headers = HeaderMap::from_pairs([(":status", "200"), ("content-type", "text/plain")]);
    let _ = exchange.on_response_headers(headers);
    let mut out = Vec::with_capacity(body.len());
    let chunks: Vec<&[u8]> = body.chunks(chunk.max(1)).collect();
    for (i, part) in chunks.iter().enumerate() {
        if let policy_executor::ChunkOutcome::Pass(bytes) =
            exchange.on_response_chunk(part, i + 1 == chunks.len())
        {
            out.extend(bytes);
        }
    }
    out
}
