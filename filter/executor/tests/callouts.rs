//! Calls and remote documents through the executor's public API, against a
//! fake host: a clock the test moves and storage shared by several
//! "workers" (engines), as Envoy's VMs share its shared data. No Envoy, no
//! sleeps: every rule (who fetches, who waits, overdue answers, requests
//! that go away) is checked step by step.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::time::Duration;

use policy_executor::testing::FakeHost;
use policy_executor::{
    Action, Answer, Call, CallFailure, CallRequest, CallResponse, Context, Engine, Exchange,
    HeaderMap, HeaderName, HeaderValue, LocalReply, Outcome, Phases, Policy, PolicyFactory,
    Refresher, Registry, RemoteSource, Service, Start, Wait,
};

const T0: u64 = 1_000_000;

fn service() -> Service {
    Service {
        cluster: "svc".into(),
        base_uri: "http://svc.example:8080".into(),
    }
}

fn ask(path: &str) -> Call {
    Call {
        service: service(),
        timeout: Duration::from_millis(200),
        request: CallRequest::Http {
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        },
    }
}

/// Asks `/first`, then `/second`, and writes both answers' bodies to a
/// header; a failure is a 503 naming it. With a body, asks from the body
/// phase.
struct TwoCalls {
    in_body: bool,
}

impl TwoCalls {
    fn run(&self, cx: &mut Context) -> Action {
        let seen = cx
            .metadata()
            .get("first")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        match (cx.answer().cloned(), seen) {
            (None, _) => Action::Call(ask("/first")),
            (Some(Err(failure)), _) => Action::Respond(LocalReply::text(503, failure.to_string())),
            (Some(Ok(first)), None) => {
                let body = String::from_utf8(first.body).unwrap();
                cx.metadata_mut().insert("first".into(), body.into());
                Action::Call(ask("/second"))
            }
            (Some(Ok(second)), Some(first)) => {
                let both = format!("{first}+{}", String::from_utf8(second.body).unwrap());
                let name = HeaderName::parse("x-answers").unwrap();
                cx.headers_mut()
                    .set(&name, &HeaderValue::parse(&both).unwrap());
                Action::Continue
            }
        }
    }
}

impl Policy for TwoCalls {
    fn phases(&self) -> Phases {
        if self.in_body {
            Phases::REQUEST_BODY
        } else {
            Phases::REQUEST_HEADERS
        }
    }
    fn on_request_headers(&self, cx: &mut Context) -> Action {
        self.run(cx)
    }
    fn on_request_body(&self, cx: &mut Context, body: &[u8]) -> Action {
        assert_eq!(body, b"payload", "a rerun sees the same body");
        self.run(cx)
    }
}

/// Calls forever.
struct Endless;

impl Policy for Endless {
    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }
    fn on_request_headers(&self, _cx: &mut Context) -> Action {
        Action::Call(ask("/again"))
    }
}

/// Needs a document that says `yes`; 401 when a refetch brought none.
struct NeedsYes;

fn source() -> RemoteSource {
    RemoteSource {
        uri: "http://keys.example/jwks".into(),
        cluster: "keys".into(),
        timeout: Duration::from_secs(1),
        refresh_interval: Duration::from_secs(600),
        min_refetch_interval: Duration::from_secs(10),
    }
}

impl Policy for NeedsYes {
    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }
    fn remote_sources(&self) -> Vec<RemoteSource> {
        vec![source()]
    }
    fn on_request_headers(&self, cx: &mut Context) -> Action {
        let source = source();
        match cx.document(&source) {
            Some(doc) if &*doc.body == b"yes" => Action::Continue,
            _ if cx.refetched(&source) => Action::Respond(LocalReply::text(401, "no key\n")),
            _ => Action::Refresh(source),
        }
    }
}

fn registry() -> Registry {
    Registry::new([
        PolicyFactory {
            name: "two-calls",
            version: "1.0.0",
            build: |config| {
                let in_body = config
                    .get("in_body")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                Ok(Box::new(TwoCalls { in_body }))
            },
        },
        PolicyFactory {
            name: "endless",
            version: "1.0.0",
            build: |_| Ok(Box::new(Endless)),
        },
        PolicyFactory {
            name: "needs-yes",
            version: "1.0.0",
            build: |_| Ok(Box::new(NeedsYes)),
        },
    ])
}

/// One worker: an engine for `policies` sharing `host`'s storage.
fn worker(host: &FakeHost, policies: &str) -> Engine {
    let config = format!("routes:\n  - policies: {policies}\n");
    let mut engine = Engine::from_config(config.as_bytes(), &registry()).unwrap();
    engine.set_host(Box::new(host.clone()));
    engine
}

fn exchange(engine: &Engine) -> Exchange {
    let request = HeaderMap::from_pairs([
        (":method", "POST"),
        (":path", "/"),
        (":authority", "example.com"),
        (":scheme", "http"),
    ]);
    match engine.start(|| None, request) {
        Start::Run(x) => x,
        _ => panic!("no chain"),
    }
}

fn ok(body: &str) -> Answer {
    Ok(CallResponse {
        status: 200,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    })
}

fn sent(outcome: Outcome) -> Call {
    match outcome {
        Outcome::Wait(Wait::Send(call)) => call,
        other => panic!("expected a call to send, got {other:?}"),
    }
}

fn status(outcome: Outcome) -> u16 {
    match outcome {
        Outcome::Respond(reply) => reply.status,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn header(outcome: Outcome, name: &str) -> Option<String> {
    let Outcome::Continue(changes) = outcome else {
        panic!("expected the request to go on, got {outcome:?}");
    };
    let found = changes
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| format!("{c:?}"));
    found
}

#[test]
fn a_policy_calls_twice_one_at_a_time_and_decides_with_both_answers() {
    let host = FakeHost::at(T0);
    for in_body in [false, true] {
        let engine = worker(
            &host,
            &format!("[{{name: two-calls, config: {{in_body: {in_body}}}}}]"),
        );
        let mut x = exchange(&engine);
        let first = if in_body {
            assert!(matches!(x.on_request_headers(), Outcome::Continue(_)));
            x.on_request_body(b"payload")
        } else {
            x.on_request_headers()
        };
        assert_eq!(sent(first), ask("/first"));
        assert!(x.is_waiting());
        assert_eq!(x.poll(), Outcome::Wait(Wait::Poll), "nothing overdue yet");
        assert_eq!(sent(x.on_answer(ok("a"))), ask("/second"));
        let done = x.on_answer(ok("b"));
        assert!(!x.is_waiting());
        assert_eq!(
            header(done, "x-answers").as_deref(),
            Some(r#"Replace(["a+b"])"#),
            "in_body: {in_body}"
        );
    }
}

#[test]
fn a_failed_call_reaches_the_policy_typed_and_an_unanswered_one_times_out() {
    let host = FakeHost::at(T0);
    let engine = worker(&host, "[{name: two-calls}]");
    let mut x = exchange(&engine);
    sent(x.on_request_headers());
    assert_eq!(
        status(x.on_answer(Err(CallFailure::Unreachable("refused".into())))),
        503
    );

    // The host never answers: past the timeout and a grace, the exchange
    // gives up on its own, as a timeout.
    let mut x = exchange(&engine);
    sent(x.on_request_headers());
    host.advance(200 + 999);
    assert_eq!(x.poll(), Outcome::Wait(Wait::Poll));
    host.advance(1);
    let Outcome::Respond(reply) = x.poll() else {
        panic!("expected the timeout's reply")
    };
    assert_eq!(reply.body, b"timed out");
}

#[test]
fn a_policy_that_never_stops_calling_is_stopped() {
    let host = FakeHost::at(T0);
    let engine = worker(&host, "[{name: endless}]");
    let mut x = exchange(&engine);
    let mut outcome = x.on_request_headers();
    let mut calls = 0;
    while let Outcome::Wait(Wait::Send(_)) = outcome {
        calls += 1;
        outcome = x.on_answer(ok(""));
    }
    assert_eq!(calls, policy_executor::chain::MAX_CALLS_PER_PHASE);
    assert_eq!(status(outcome), 500);
}

fn document() -> Answer {
    ok("yes")
}

/// A worker's refresher tick: the fetches it sends.
fn tick(refresher: &mut Refresher, engine: &Engine) -> Vec<Call> {
    refresher
        .tick(engine.remote(), &engine.remote_sources())
        .into_iter()
        .map(|(_, call)| call)
        .collect()
}

#[test]
fn requests_wait_for_one_fetch_made_by_a_refresher_across_workers() {
    let host = FakeHost::at(T0);
    let (a, b) = (
        worker(&host, "[{name: needs-yes}]"),
        worker(&host, "[{name: needs-yes}]"),
    );
    let (mut refresher_a, mut refresher_b) = (Refresher::default(), Refresher::default());
    let mut first = exchange(&a);
    let mut second = exchange(&b);
    // Requests never fetch: they wait, and ask their worker's refresher.
    assert_eq!(first.on_request_headers(), Outcome::Wait(Wait::Poll));
    assert_eq!(second.on_request_headers(), Outcome::Wait(Wait::Poll));
    assert!(a.remote().is_wanted());
    assert_eq!(tick(&mut refresher_a, &a), [source().fetch_call()]);
    // One fetch at a time: worker b's refresher sees a's claim.
    assert!(tick(&mut refresher_b, &b).is_empty());
    host.advance(100);
    assert_eq!(first.poll(), Outcome::Wait(Wait::Poll));
    assert_eq!(second.poll(), Outcome::Wait(Wait::Poll));
    refresher_a.on_answer(a.remote(), &source(), &document());
    assert!(matches!(first.poll(), Outcome::Continue(_)));
    // The document is in the shared storage: the other worker's request
    // goes on at its next poll, and later ones read the cache.
    assert!(matches!(second.poll(), Outcome::Continue(_)));
    assert!(matches!(
        exchange(&b).on_request_headers(),
        Outcome::Continue(_)
    ));
}

#[test]
fn a_request_that_goes_away_takes_no_fetch_with_it() {
    let host = FakeHost::at(T0);
    let engine = worker(&host, "[{name: needs-yes}]");
    let mut refresher = Refresher::default();
    let mut gone = exchange(&engine);
    assert_eq!(gone.on_request_headers(), Outcome::Wait(Wait::Poll));
    assert_eq!(tick(&mut refresher, &engine).len(), 1);
    // The client resets: its fetch goes on, and serves the next request
    // without a second one.
    gone.abandon();
    let mut next = exchange(&engine);
    assert_eq!(next.on_request_headers(), Outcome::Wait(Wait::Poll));
    assert!(
        tick(&mut refresher, &engine).is_empty(),
        "the fetch in flight serves it"
    );
    refresher.on_answer(engine.remote(), &source(), &document());
    assert!(matches!(next.poll(), Outcome::Continue(_)));
}

#[test]
fn a_claim_whose_owner_vanished_without_a_word_lapses_and_is_taken_over() {
    let host = FakeHost::at(T0);
    let (a, b) = (
        worker(&host, "[{name: needs-yes}]"),
        worker(&host, "[{name: needs-yes}]"),
    );
    let mut vanishing = Refresher::default();
    let mut refresher_b = Refresher::default();
    assert_eq!(exchange(&a).on_request_headers(), Outcome::Wait(Wait::Poll));
    assert_eq!(tick(&mut vanishing, &a).len(), 1);
    let mut waiter = exchange(&b);
    assert_eq!(waiter.on_request_headers(), Outcome::Wait(Wait::Poll));
    // a's VM is destroyed: its refresher never ticks (renews) again.
    drop(vanishing);
    host.advance(1_499);
    assert_eq!(
        waiter.poll(),
        Outcome::Wait(Wait::Poll),
        "the lease still runs"
    );
    assert!(tick(&mut refresher_b, &b).is_empty());
    host.advance(1);
    assert_eq!(waiter.poll(), Outcome::Wait(Wait::Poll));
    assert_eq!(
        tick(&mut refresher_b, &b),
        [source().fetch_call()],
        "taken over"
    );
    refresher_b.on_answer(b.remote(), &source(), &document());
    assert!(matches!(waiter.poll(), Outcome::Continue(_)));
}

#[test]
fn a_released_claim_is_taken_over_at_once() {
    let host = FakeHost::at(T0);
    let (a, b) = (
        worker(&host, "[{name: needs-yes}]"),
        worker(&host, "[{name: needs-yes}]"),
    );
    let (mut refresher_a, mut refresher_b) = (Refresher::default(), Refresher::default());
    assert_eq!(exchange(&a).on_request_headers(), Outcome::Wait(Wait::Poll));
    assert_eq!(tick(&mut refresher_a, &a).len(), 1);
    let mut waiter = exchange(&b);
    assert_eq!(waiter.on_request_headers(), Outcome::Wait(Wait::Poll));
    // a's plugin is replaced: it releases its claim.
    refresher_a.release_all(a.remote());
    host.advance(20);
    assert_eq!(waiter.poll(), Outcome::Wait(Wait::Poll));
    assert_eq!(tick(&mut refresher_b, &b).len(), 1);
}

#[test]
fn a_failed_fetch_lets_the_policy_decide_and_spaces_the_next_attempt() {
    let host = FakeHost::at(T0);
    let engine = worker(&host, "[{name: needs-yes}]");
    let mut refresher = Refresher::default();
    let mut x = exchange(&engine);
    assert_eq!(x.on_request_headers(), Outcome::Wait(Wait::Poll));
    tick(&mut refresher, &engine);
    refresher.on_answer(engine.remote(), &source(), &Err(CallFailure::Timeout));
    assert_eq!(status(x.poll()), 401);
    // Within min_refetch_interval of that answer: no fetch, no wait.
    host.advance(9_999);
    assert_eq!(status(exchange(&engine).on_request_headers()), 401);
    host.advance(1);
    assert_eq!(
        exchange(&engine).on_request_headers(),
        Outcome::Wait(Wait::Poll)
    );
    assert_eq!(tick(&mut refresher, &engine).len(), 1);
}

#[test]
fn a_waiter_gives_up_in_bounded_time_and_its_policy_decides() {
    let host = FakeHost::at(T0);
    let engine = worker(&host, "[{name: needs-yes}]");
    let mut refresher = Refresher::default();
    let mut x = exchange(&engine);
    assert_eq!(x.on_request_headers(), Outcome::Wait(Wait::Poll));
    tick(&mut refresher, &engine);
    // The fetch is renewed but never answered: 2 × (1 s + 1 s) + 1.5 s.
    for _ in 0..54 {
        host.advance(100);
        tick(&mut refresher, &engine);
        assert_eq!(x.poll(), Outcome::Wait(Wait::Poll));
    }
    host.advance(100);
    assert_eq!(status(x.poll()), 401);
}

#[test]
fn workers_claiming_at_the_same_moment_make_one_fetch() {
    // Eight VMs' refreshers tick at once on real threads, over one shared
    // storage: compare-and-swap lets exactly one claim.
    let host = FakeHost::at(T0);
    let workers: Vec<Engine> = (0..8)
        .map(|_| worker(&host, "[{name: needs-yes}]"))
        .collect();
    for engine in &workers {
        assert_eq!(
            exchange(engine).on_request_headers(),
            Outcome::Wait(Wait::Poll)
        );
    }
    let start = std::sync::Barrier::new(workers.len());
    let fetches: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .iter()
            .map(|engine| {
                let start = &start;
                scope.spawn(move || {
                    let mut refresher = Refresher::default();
                    start.wait();
                    tick(&mut refresher, engine).len()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(fetches, 1);
}

#[test]
fn a_vm_envoy_only_configures_claims_nothing() {
    // Envoy builds VMs to check a configuration and destroys them without
    // a tick: their engine exists, their refresher never runs. Nothing is
    // claimed, so the first worker that needs the document fetches at once.
    let host = FakeHost::at(T0);
    let checked_only = worker(&host, "[{name: needs-yes}]");
    drop(checked_only);
    let serving = worker(&host, "[{name: needs-yes}]");
    let mut x = exchange(&serving);
    assert_eq!(x.on_request_headers(), Outcome::Wait(Wait::Poll));
    let mut refresher = Refresher::default();
    assert_eq!(tick(&mut refresher, &serving), [source().fetch_call()]);
    refresher.on_answer(serving.remote(), &source(), &document());
    assert!(matches!(x.poll(), Outcome::Continue(_)));
}
