//! Running one request through its chain of policies.
//!
//! # Order and short-circuits
//!
//! Policies wrap the upstream like the layers of an onion:
//!
//! * Request phases (headers, then body) run in chain order.
//! * Response phases (headers, then body) run in **reverse** chain order, so
//!   the first policy of the chain has the last word on the response.
//! * A policy that returns [`Action::Respond`] stops the chain: no later
//!   request phase runs and the upstream is never asked. Its reply then goes
//!   through the response phases of the policies *before* it in the chain
//!   (the layers outside it), exactly as an upstream response would. The
//!   policy that replied and those after it never let the request through,
//!   so they do not see the reply. A CORS policy placed before an
//!   authentication policy therefore decorates the authentication's 401.
//! * A response phase may also reply; its reply replaces the response and
//!   goes on through the layers outside it.
//!
//!
//! # Guards
//!
//! An entry with a `when:` guard runs only for requests where the guard is
//! true. Guards are evaluated in chain order during the request-headers
//! phase, just before the entry's turn, so they see the metadata earlier
//! policies wrote; the verdict holds for every phase of that request. A
//! guard that cannot be evaluated (a missing attribute) runs its policy: a
//! guard never switches a check off by accident (fail closed), and the
//! debug log says why. The request headers a skipped policy asserts are
//! stripped in its place, so a client's copy never stands in for them.
//!
//! Once a reply is made the exchange is finished: later calls from the host
//! return an empty [`Outcome::Continue`].
//!
//! # Waiting for a fetch
//!
//! A policy may return [`Action::Refetch`] in the request-headers phase.
//! The exchange then stops where it is and returns [`Outcome::Refetch`]; the
//! host fetches the document (or decides it may not yet), stores it, and
//! calls [`Exchange::resume`], which reruns that policy and goes on with the
//! rest of the chain. Edits made by the policies before it are kept.

use std::sync::Arc;

use crate::attributes::{AttributeSet, Connection};
use crate::expr::Expression;
use crate::headers::{HeaderMap, HeaderMutations, HeaderName};
use crate::policy::{Action, Context, LocalReply, Phases, Policy, RouteInfo};
use crate::remote::{Documents, RemoteSource};

/// One policy instance in a chain.
pub(crate) struct ChainEntry {
    /// `name@version`, for logs.
    pub(crate) label: String,
    pub(crate) policy: Box<dyn Policy>,
    pub(crate) phases: Phases,
    /// The `when:` guard.
    pub(crate) guard: Option<Expression>,
    /// The request headers the policy asserts ([`Policy::asserted_headers`]),
    /// stripped in its place when its guard skips it.
    pub(crate) asserted: Vec<HeaderName>,
}

/// A compiled, immutable chain of policy instances, shared by all requests
/// that match its route entry.
pub struct Chain {
    /// Shared with every request's [`RouteInfo`], so starting an exchange
    /// does not copy it.
    name: Arc<str>,
    entries: Vec<ChainEntry>,
    phases: Phases,
    reads_response_headers: bool,
    attributes: AttributeSet,
    has_guards: bool,
    remote_sources: Vec<RemoteSource>,
}

/// Which bodies a chain must see whole. A headers-only chain needs neither,
/// and the hosts then never buffer a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BodyNeeds {
    /// Some policy has a request-body phase.
    pub request: bool,
    /// Some policy has a response-body phase.
    pub response: bool,
}

impl Chain {
    pub(crate) fn new(name: &str, entries: Vec<ChainEntry>) -> Self {
        let phases = entries.iter().fold(Phases::NONE, |all, e| all | e.phases);
        let reads_response_headers = entries.iter().any(|e| {
            e.phases.contains(Phases::RESPONSE_HEADERS) && e.policy.reads_response_headers()
        });
        let attributes = entries.iter().fold(AttributeSet::NONE, |all, e| {
            let guard = e
                .guard
                .as_ref()
                .map_or(AttributeSet::NONE, |g| g.attributes());
            all | e.policy.attributes() | guard
        });
        let has_guards = entries.iter().any(|e| e.guard.is_some());
        let mut remote_sources = Vec::new();
        for source in entries.iter().flat_map(|e| e.policy.remote_sources()) {
            if !remote_sources.contains(&source) {
                remote_sources.push(source);
            }
        }
        Self {
            name: Arc::from(name),
            entries,
            phases,
            reads_response_headers,
            attributes,
            has_guards,
            remote_sources,
        }
    }

    /// The documents the chain's policies need fetched.
    pub fn remote_sources(&self) -> &[RemoteSource] {
        &self.remote_sources
    }

    /// The bodies this chain needs buffered.
    pub fn body_needs(&self) -> BodyNeeds {
        BodyNeeds {
            request: self.phases.contains(Phases::REQUEST_BODY),
            response: self.phases.contains(Phases::RESPONSE_BODY),
        }
    }

    /// The connection attributes the chain's expressions read.
    pub fn attributes(&self) -> AttributeSet {
        self.attributes
    }

    /// Whether any policy acts on the response at all; if not, hosts need not
    /// even read the response headers.
    pub fn acts_on_response(&self) -> bool {
        self.phases.contains(Phases::RESPONSE_HEADERS)
            || self.phases.contains(Phases::RESPONSE_BODY)
    }
}

/// What the host must do after a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Apply these header changes to the message in flight and let it go on.
    Continue(HeaderMutations),
    /// Drop the message in flight and send this reply to the client instead.
    Respond(LocalReply),
    /// Hold the request until this source is fetched (or waited for) as
    /// [`crate::remote::attempt`] rules, with the result in the engine's
    /// [`Documents`], then call [`Exchange::resume`]. Only the
    /// request-headers phase returns it.
    Refetch(RemoteSource),
}

/// The state of one request going through one chain.
///
/// Hosts call the phase methods in the order the request and response
/// arrive, skipping body phases the chain does not need
/// ([`Exchange::body_needs`]).
pub struct Exchange {
    chain: Arc<Chain>,
    cx: Context,
    /// How many policies, from the start of the chain, let the request
    /// through: those are the ones whose response phases run.
    passed: usize,
    /// Per entry, whether its guard failed; empty when the chain has no
    /// guards.
    skipped: Vec<bool>,
    finished: bool,
    /// The entry waiting for a refetch, and its source (boxed: rare).
    waiting: Option<(usize, Box<RemoteSource>)>,
}

impl Exchange {
    /// Starts an exchange over `chain` for a request with these headers;
    /// `documents` is the engine's cache of fetched documents, and
    /// `rewrites` the changes already made to the request (making it
    /// canonical), which go upstream with the chain's own.
    pub fn new(
        chain: Arc<Chain>,
        route_name: Option<String>,
        request: HeaderMap,
        documents: Arc<Documents>,
        rewrites: HeaderMutations,
    ) -> Self {
        let route = RouteInfo {
            chain: Arc::clone(&chain.name),
            route_name,
        };
        let passed = chain.entries.len();
        Self {
            chain,
            cx: Context::new(route, request, documents, rewrites),
            passed,
            skipped: Vec::new(),
            finished: false,
            waiting: None,
        }
    }

    /// The bodies the chain needs buffered.
    pub fn body_needs(&self) -> BodyNeeds {
        self.chain.body_needs()
    }

    /// Whether the host must call the response phases at all.
    pub fn acts_on_response(&self) -> bool {
        !self.finished && self.chain.acts_on_response()
    }

    /// Whether [`Exchange::on_response_headers`] needs the real response
    /// headers; if not, hosts may pass an empty map and skip reading them.
    pub fn reads_response_headers(&self) -> bool {
        self.chain.reads_response_headers
    }

    /// The connection attributes the chain's expressions read. A host
    /// fetches these and hands them over with [`Exchange::set_connection`]
    /// before the request-headers phase; when the set is empty it does
    /// nothing.
    pub fn attributes(&self) -> AttributeSet {
        self.chain.attributes()
    }

    /// Provides the connection attributes asked for by
    /// [`Exchange::attributes`].
    pub fn set_connection(&mut self, connection: Connection) {
        self.cx.set_connection(connection);
    }

    /// The request context, for hosts that log decisions.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Runs the request-headers phase of the chain.
    pub fn on_request_headers(&mut self) -> Outcome {
        self.run_request_phase(Phases::REQUEST_HEADERS, None, |p, cx| {
            p.on_request_headers(cx)
        })
    }

    /// Goes on with the request-headers phase after an [`Outcome::Refetch`],
    /// whether the fetch succeeded or not.
    pub fn resume(&mut self) -> Outcome {
        let Some((position, source)) = self.waiting.take() else {
            return Outcome::Continue(HeaderMutations::default());
        };
        self.cx.mark_refetched(&source);
        self.run_request_phase(Phases::REQUEST_HEADERS, Some(position), |p, cx| {
            p.on_request_headers(cx)
        })
    }

    /// Runs the request-body phase over the whole request body.
    pub fn on_request_body(&mut self, body: &[u8]) -> Outcome {
        self.run_request_phase(Phases::REQUEST_BODY, None, |p, cx| {
            p.on_request_body(cx, body)
        })
    }

    /// Runs the response-headers phase over the upstream's response headers
    /// (`:status` included).
    pub fn on_response_headers(&mut self, headers: HeaderMap) -> Outcome {
        if self.finished {
            return Outcome::Continue(HeaderMutations::default());
        }
        self.cx.begin_response(headers);
        let replied = run_response_phase(
            &self.chain,
            &mut self.cx,
            &self.skipped,
            self.passed,
            Phases::RESPONSE_HEADERS,
            |p, cx| p.on_response_headers(cx),
        );
        self.settle(replied)
    }

    /// Runs the response-body phase over the whole upstream response body.
    pub fn on_response_body(&mut self, body: &[u8]) -> Outcome {
        if self.finished {
            return Outcome::Continue(HeaderMutations::default());
        }
        let replied = run_response_phase(
            &self.chain,
            &mut self.cx,
            &self.skipped,
            self.passed,
            Phases::RESPONSE_BODY,
            |p, cx| p.on_response_body(cx, body),
        );
        self.settle(replied)
    }

    /// Runs `phase` over the chain, or, after a refetch, from the entry
    /// that waited for it.
    fn run_request_phase(
        &mut self,
        phase: Phases,
        resume_at: Option<usize>,
        run: impl Fn(&dyn Policy, &mut Context) -> Action,
    ) -> Outcome {
        if self.finished {
            return Outcome::Continue(HeaderMutations::default());
        }
        let chain = Arc::clone(&self.chain);
        let judge_guards = phase == Phases::REQUEST_HEADERS && chain.has_guards;
        if judge_guards && resume_at.is_none() {
            self.skipped = vec![false; chain.entries.len()];
        }
        let start = resume_at.unwrap_or(0);
        for (position, entry) in chain.entries.iter().enumerate().skip(start) {
            // The entry that waited had its guard judged before it asked.
            if judge_guards && resume_at != Some(position) {
                if let Some(guard) = &entry.guard {
                    self.skipped[position] = !guard_holds(&chain.name, entry, guard, &self.cx);
                }
            }
            if self.is_skipped(position) {
                // What the policy would have asserted is not the client's
                // to assert either.
                if phase == Phases::REQUEST_HEADERS {
                    let mut headers = self.cx.headers_mut();
                    for name in &entry.asserted {
                        headers.remove_variants(name);
                    }
                }
                continue;
            }
            if !entry.phases.contains(phase) {
                continue;
            }
            let action = run(entry.policy.as_ref(), &mut self.cx);
            let action = match action {
                Action::Refetch(source)
                    if phase == Phases::REQUEST_HEADERS && !self.cx.refetched(&source) =>
                {
                    self.waiting = Some((position, Box::new(source.clone())));
                    return Outcome::Refetch(source);
                }
                Action::Refetch(source) => {
                    rerun_without_waiting(&chain, entry, &mut self.cx, source, &run)
                }
                action => action,
            };
            if let Action::Respond(reply) = action {
                log::debug!(
                    "chain {:?}: {} replied {}",
                    chain.name,
                    entry.label,
                    reply.status
                );
                self.passed = position;
                return self.settle(Some((position, reply)));
            }
        }
        Outcome::Continue(self.cx.take_pending())
    }

    fn is_skipped(&self, position: usize) -> bool {
        self.skipped.get(position).copied().unwrap_or(false)
    }

    /// Turns the result of a phase into an outcome; a reply first goes
    /// through the response phases of the policies outside the one that made
    /// it.
    fn settle(&mut self, replied: Option<(usize, LocalReply)>) -> Outcome {
        let Some((mut outer, mut reply)) = replied else {
            return Outcome::Continue(self.cx.take_pending());
        };
        self.finished = true;
        loop {
            self.cx.begin_response(reply_headers(&reply));
            let body = std::mem::take(&mut reply.body);
            let again = run_response_phase(
                &self.chain,
                &mut self.cx,
                &self.skipped,
                outer,
                Phases::RESPONSE_HEADERS,
                |p, cx| p.on_response_headers(cx),
            )
            .or_else(|| {
                run_response_phase(
                    &self.chain,
                    &mut self.cx,
                    &self.skipped,
                    outer,
                    Phases::RESPONSE_BODY,
                    |p, cx| p.on_response_body(cx, &body),
                )
            });
            match again {
                Some((position, replacement)) => {
                    outer = position;
                    reply = replacement;
                }
                None => {
                    reply.body = body;
                    break;
                }
            }
        }
        self.cx.take_pending();
        Outcome::Respond(reply_from_headers(self.cx.take_response(), reply))
    }
}

/// Runs `phase` over the first `outer` policies in reverse order; returns the
/// position and reply of the policy that replied, if one did.
fn run_response_phase(
    chain: &Chain,
    cx: &mut Context,
    skipped: &[bool],
    outer: usize,
    phase: Phases,
    run: impl Fn(&dyn Policy, &mut Context) -> Action,
) -> Option<(usize, LocalReply)> {
    let entries = chain.entries.get(..outer).unwrap_or(&chain.entries);
    for (position, entry) in entries.iter().enumerate().rev() {
        if !entry.phases.contains(phase) || skipped.get(position).copied().unwrap_or(false) {
            continue;
        }
        let action = match run(entry.policy.as_ref(), cx) {
            Action::Refetch(source) => rerun_without_waiting(chain, entry, cx, source, &run),
            action => action,
        };
        if let Action::Respond(reply) = action {
            log::debug!(
                "chain {:?}: {} replaced the response with {}",
                chain.name,
                entry.label,
                reply.status
            );
            return Some((position, reply));
        }
    }
    None
}

/// Outside the request-headers phase nothing waits for a fetch: the policy
/// runs again at once, told the refetch is done, and must decide. A policy
/// that still asks gets the request answered 503.
fn rerun_without_waiting(
    chain: &Chain,
    entry: &ChainEntry,
    cx: &mut Context,
    source: RemoteSource,
    run: &impl Fn(&dyn Policy, &mut Context) -> Action,
) -> Action {
    cx.mark_refetched(&source);
    match run(entry.policy.as_ref(), cx) {
        Action::Refetch(source) => {
            log::warn!(
                "chain {:?}: {} asked again for {} after its refetch",
                chain.name,
                entry.label,
                source.uri
            );
            Action::Respond(LocalReply::text(503, "remote document unavailable\n"))
        }
        action => action,
    }
}

/// Evaluates an entry's guard; an evaluation error counts as true.
fn guard_holds(chain: &str, entry: &ChainEntry, guard: &Expression, cx: &Context) -> bool {
    match guard.evaluate_bool(cx) {
        Ok(true) => true,
        Ok(false) => {
            log::debug!("chain {chain:?}: {} skipped: `when` is false", entry.label);
            false
        }
        // A guard that cannot be decided never skips a check: the policy
        // runs and decides (fail closed).
        Err(error) => {
            log::debug!(
                "chain {chain:?}: {} runs: `when` {:?} could not be evaluated: {error}",
                entry.label,
                guard.source()
            );
            true
        }
    }
}

fn reply_headers(reply: &LocalReply) -> HeaderMap {
    let status = (":status".to_owned(), reply.status.to_string());
    HeaderMap::from_pairs(std::iter::once(status).chain(reply.headers.iter().cloned()))
}

/// Rebuilds a reply from headers edited by response phases.
fn reply_from_headers(headers: HeaderMap, reply: LocalReply) -> LocalReply {
    let status = headers
        .get(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(reply.status);
    let headers = headers
        .into_pairs()
        .into_iter()
        .filter(|(name, _)| !name.starts_with(':'))
        .collect();
    LocalReply {
        status,
        headers,
        body: reply.body,
    }
}
