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
//! debug log says why. A guard that reads a value the request gives in two
//! readings (a header sent twice; see `expr::ambiguous`) neither skips nor
//! runs its policy: the request is refused with 400, since running a policy
//! that grants something would be as wrong as skipping one that checks. The
//! request headers a skipped policy asserts are stripped in its place, so a
//! client's copy never stands in for them.
//!
//! Once a reply is made the exchange is finished: later calls from the host
//! return an empty [`Outcome::Continue`].
//!
//! # Waiting for a service
//!
//! A policy may return [`Action::Call`] or [`Action::Refresh`] in a
//! request phase. The exchange then stops where it is and returns
//! [`Outcome::Wait`]: [`Wait::Send`] when the host is to send a call and
//! give its answer to [`Exchange::on_answer`], [`Wait::Poll`] when it waits
//! for a document fetch (made by a worker's [`crate::Refresher`], never by
//! the request: see [`crate::remote`]). While it waits, the host calls
//! [`Exchange::poll`] at least every [`RENEW_EVERY`] (overdue answers are
//! given up on there, and arrived documents taken), and
//! [`Exchange::abandon`] if the request goes away. Once answered, that
//! policy runs again and the chain goes on; edits made by the policies
//! before it are kept. Response phases never wait: their types have no
//! such outcome.
//!
//! [`RENEW_EVERY`]: crate::remote::attempt::RENEW_EVERY

mod body;
pub use body::ChunkOutcome;
mod response;
mod waiting;

use std::sync::Arc;

use crate::attributes::{AttributeSet, Connection};
use crate::callout::{Answer, Call, CallFailure, CallRequest};
use crate::credentials::Location;
use crate::decision::{DecisionLog, PolicyDecision, Secrets, Verdict};
use crate::expr::Expression;
use crate::headers::{HeaderMap, HeaderMutations, HeaderName};
use crate::metrics::{metrics, CalloutMetrics, ChainMetrics};
use crate::policy::{
    Action, Context, Direction, LocalReply, Phases, Policy, ResponseAction, RouteInfo,
};
use crate::remote::attempt::ANSWER_GRACE;
use crate::remote::{duration_millis, Remote, RemoteSource, Step, WaitStep, Waiting};
use waiting::{Pending, Rerun, WaitingOn};

/// How many calls one policy may make in one phase of one request; past
/// it the request is answered 500 (a policy that never stops calling is a
/// bug, not a reason to hold the request forever).
pub const MAX_CALLS_PER_PHASE: usize = 8;

impl ChainEntry {
    /// The policy's name, without its version.
    pub(crate) fn policy_name(&self) -> &str {
        self.label
            .split_once('@')
            .map_or(self.label.as_str(), |(name, _)| name)
    }
}

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
    metrics: ChainMetrics,
    /// Headers carrying credentials: those the policies read them from and
    /// those they assert (an injected backend credential).
    secret_headers: Vec<HeaderName>,
    /// Where the policies read credentials from, whatever the names: what
    /// the decision log looks for copies of.
    credential_locations: Vec<Location>,
    /// The largest body a body phase takes: a request beyond it gets 413,
    /// a response 502.
    max_body_bytes: usize,
}

/// One policy of a chain, as tools list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySummary {
    /// `name@version`.
    pub label: String,
    /// The names of its rules ([`Policy::rules`]).
    pub rules: Vec<String>,
}

/// Which bodies a chain reads, and how. A headers-only chain needs
/// neither, and the hosts then never hold a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BodyNeeds {
    /// Some policy has a request-body phase: the host holds the request
    /// until its body is whole ([`Exchange::on_request_body`]).
    pub request: bool,
    /// Some policy reads the response body.
    pub response: bool,
    /// Every policy that reads the response body does so as it flows: the
    /// host lets the response headers go on and gives each chunk to
    /// [`Exchange::on_response_chunk`] rather than holding the body whole
    /// for [`Exchange::on_response_body`].
    pub response_streamed: bool,
}

impl Chain {
    pub(crate) fn new(name: &str, entries: Vec<ChainEntry>, max_body_bytes: usize) -> Self {
        let phases = entries.iter().fold(Phases::NONE, |all, e| all | e.phases);
        // A chain that reads the response body checks its encoding.
        let reads_response_headers = entries.iter().any(|e| {
            (e.phases.contains(Phases::RESPONSE_HEADERS) && e.policy.reads_response_headers())
                || e.phases.contains(Phases::RESPONSE_BODY)
                || e.phases.contains(Phases::RESPONSE_BODY_STREAM)
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
        let metrics = ChainMetrics::new(name, entries.iter().map(ChainEntry::policy_name));
        let mut credential_locations: Vec<Location> = Vec::new();
        for location in entries.iter().flat_map(|e| e.policy.credential_locations()) {
            if !credential_locations.contains(&location) {
                credential_locations.push(location);
            }
        }
        let mut secret_headers = Location::header_names(&credential_locations);
        for header in entries.iter().flat_map(|e| e.asserted.clone()) {
            if !secret_headers.contains(&header) {
                secret_headers.push(header);
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
            metrics,
            secret_headers,
            credential_locations,
            max_body_bytes,
        }
    }

    /// The documents the chain's policies need fetched.
    pub fn remote_sources(&self) -> &[RemoteSource] {
        &self.remote_sources
    }

    /// Each policy's `name@version` and the names of its rules
    /// ([`Policy::rules`]), in order.
    pub fn policies(&self) -> Vec<PolicySummary> {
        self.entries
            .iter()
            .map(|e| PolicySummary {
                label: e.label.clone(),
                rules: e.policy.rules(),
            })
            .collect()
    }

    /// The route entry's name (`unmatched` for the unmatched chain).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bodies this chain reads, and how.
    pub fn body_needs(&self) -> BodyNeeds {
        let whole = self.phases.contains(Phases::RESPONSE_BODY);
        let streamed = self.phases.contains(Phases::RESPONSE_BODY_STREAM);
        BodyNeeds {
            request: self.phases.contains(Phases::REQUEST_BODY),
            response: whole || streamed,
            response_streamed: streamed && !whole,
        }
    }

    /// The largest body the chain's body phases take.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The connection attributes the chain's expressions read.
    pub fn attributes(&self) -> AttributeSet {
        self.attributes
    }

    /// Whether any policy acts on the response at all; if not, hosts need not
    /// even read the response headers.
    pub fn acts_on_response(&self) -> bool {
        self.phases.contains(Phases::RESPONSE_HEADERS) || self.body_needs().response
    }
}

/// What the host must do after a request phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Apply these header changes to the request and let it go on.
    Continue(HeaderMutations),
    /// Drop the request and send this reply to the client instead.
    Respond(LocalReply),
    /// Hold the request: the chain waits for a service (see the module
    /// docs).
    Wait(Wait),
}

/// What a waiting exchange needs from its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// Send this call and give its answer (or why there is none) to
    /// [`Exchange::on_answer`]; meanwhile poll.
    Send(Call),
    /// Nothing to send: poll ([`Exchange::poll`]) until it says more.
    Poll,
}

/// What the host must do after a response phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseOutcome {
    /// Apply these header changes to the response and let it go on.
    Continue(HeaderMutations),
    /// Drop the response and send this reply to the client instead.
    Respond(LocalReply),
}

impl From<ResponseOutcome> for Outcome {
    fn from(outcome: ResponseOutcome) -> Self {
        match outcome {
            ResponseOutcome::Continue(changes) => Self::Continue(changes),
            ResponseOutcome::Respond(reply) => Self::Respond(reply),
        }
    }
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
    /// Where the chain waits for a service (boxed: rare).
    pending: Option<Box<Pending>>,
    /// When the exchange started, in microseconds, for the chain latency.
    started_us: u64,
    /// The decision log and, per entry, what the policy did; `None` when
    /// the configuration logs no decisions (boxed: most requests have none).
    logging: Option<Box<Logging>>,
    /// Body work: edits for the host, streams (boxed: most requests have
    /// none).
    bodies: Option<Box<body::Bodies>>,
}

struct Logging {
    log: Arc<DecisionLog>,
    decisions: Vec<PolicyDecision>,
    /// The credentials the request carried before any policy ran (one may
    /// strip them while a copy stays elsewhere in the request).
    arrived_with: Secrets,
    /// The line for this request, once decided, until the host takes it.
    line: Option<String>,
}

impl Exchange {
    /// Starts an exchange over `chain` for a request with these headers;
    /// `remote` is the engine's cache of fetched documents, and
    /// `rewrites` the changes already made to the request (making it
    /// canonical), which go upstream with the chain's own.
    pub fn new(
        chain: Arc<Chain>,
        route_name: Option<String>,
        request: HeaderMap,
        remote: Arc<Remote>,
        rewrites: HeaderMutations,
    ) -> Self {
        let route = RouteInfo {
            chain: Arc::clone(&chain.name),
            route_name,
        };
        let passed = chain.entries.len();
        let started_us = remote.host().now_micros();
        Self {
            chain,
            cx: Context::new(route, request, remote, rewrites),
            passed,
            skipped: Vec::new(),
            finished: false,
            pending: None,
            started_us,
            logging: None,
            bodies: None,
        }
    }

    /// Logs this exchange's decision to `log`, when there is one.
    pub(crate) fn with_decision_log(mut self, log: Option<Arc<DecisionLog>>) -> Self {
        self.logging = log.map(|log| {
            Box::new(Logging {
                log,
                decisions: vec![PolicyDecision::NotRun; self.chain.entries.len()],
                arrived_with: Secrets::of(
                    self.cx.request_headers(),
                    &self.chain.credential_locations,
                ),
                line: None,
            })
        });
        self
    }

    /// The decision log's line for this request, once its request phases
    /// have decided (allowed, or answered by a policy); the host writes it.
    pub fn take_decision_log(&mut self) -> Option<String> {
        self.logging.as_mut().and_then(|l| l.line.take())
    }

    fn note(&mut self, position: usize, decision: PolicyDecision) {
        if let Some(slot) = self
            .logging
            .as_mut()
            .and_then(|l| l.decisions.get_mut(position))
        {
            *slot = decision;
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
        let logged = self
            .logging
            .as_ref()
            .map_or(AttributeSet::NONE, |l| l.log.attributes());
        self.chain.attributes() | logged
    }

    /// Records every expression the chain evaluates for this request, with
    /// the value of each of its parts, for [`Exchange::take_trace`]: what
    /// `policy-tool explain` shows. Costs nothing on requests not traced.
    pub fn trace(&mut self) {
        self.cx.start_tracing();
    }

    /// What was recorded since [`Exchange::trace`], in order.
    pub fn take_trace(&mut self) -> Vec<crate::expr::trace::Traced> {
        self.cx.take_trace()
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
        if let Some(refused) = self.prepare_bodies() {
            return refused;
        }
        self.run_request_phase(Phases::REQUEST_HEADERS, None)
    }

    /// Runs the request-body phase over the whole request body. A body
    /// larger than the chain's `max_body_bytes` is answered 413. If a
    /// policy replaced the body, [`Exchange::take_body_edit`] has it.
    pub fn on_request_body(&mut self, body: &[u8]) -> Outcome {
        if self.finished {
            return Outcome::Continue(HeaderMutations::default());
        }
        if body.len() > self.chain.max_body_bytes {
            return self.refuse_oversized(Direction::Request).into();
        }
        self.cx.set_body(Direction::Request, Arc::from(body));
        self.run_request_phase(Phases::REQUEST_BODY, None)
    }

    /// Runs a request phase over the chain, or, after a wait, from the
    /// entry that waited.
    /// `resume` names the entry that waited, its calls so far, and how it
    /// runs again.
    fn run_request_phase(
        &mut self,
        phase: Phases,
        resume: Option<(usize, usize, Rerun)>,
    ) -> Outcome {
        if self.finished {
            return Outcome::Continue(HeaderMutations::default());
        }
        let chain = Arc::clone(&self.chain);
        let judge_guards = phase == Phases::REQUEST_HEADERS && chain.has_guards;
        let (mut position, mut calls, mut rerun) = match resume {
            Some((position, calls, rerun)) => (position, calls, Some(rerun)),
            None => {
                if judge_guards {
                    self.skipped = vec![false; chain.entries.len()];
                }
                (0, 0, None)
            }
        };
        while let Some(entry) = chain.entries.get(position) {
            let resumed = rerun.take();
            self.cx.trace_running(&entry.label);
            // The entry that waited had its guard judged before it asked.
            if judge_guards && resumed.is_none() {
                if let Some(guard) = &entry.guard {
                    if let Err(error) = guard.check_unambiguous(&self.cx) {
                        let reply = LocalReply::text(400, format!("bad request: {error}\n"));
                        return self.reply(position, &entry.label, reply);
                    }
                    self.skipped[position] = !guard_holds(&chain.name, entry, guard, &self.cx);
                }
            }
            if self.is_skipped(position) {
                if phase == Phases::REQUEST_HEADERS {
                    if let Some(m) = chain.metrics.entries.get(position) {
                        m.skipped.increment();
                    }
                    self.note(position, PolicyDecision::Skipped);
                }
                // What the policy would have asserted is not the client's
                // to assert either.
                if phase == Phases::REQUEST_HEADERS {
                    let mut headers = self.cx.headers_mut();
                    for name in &entry.asserted {
                        headers.remove_variants(name);
                    }
                }
                position += 1;
                continue;
            }
            if !entry.phases.contains(phase) {
                position += 1;
                continue;
            }
            match resumed {
                Some(Rerun::Answered(answer)) => self.cx.set_answer(Some(answer)),
                Some(Rerun::Refetched(source)) => self.cx.mark_refetched(&source),
                None => {}
            }
            let action = if phase == Phases::REQUEST_BODY {
                let current = self.cx.body_bytes(Direction::Request);
                let action = entry.policy.on_request_body(&mut self.cx, &current);
                self.take_body_edit_of(Direction::Request);
                action
            } else {
                entry.policy.on_request_headers(&mut self.cx)
            };
            self.cx.set_answer(None);
            match action {
                Action::Continue => {
                    if let Some(m) = chain.metrics.entries.get(position) {
                        m.continued.increment();
                    }
                    self.note(position, PolicyDecision::Continued);
                    position += 1;
                    calls = 0;
                }
                Action::Respond(reply) => return self.reply(position, &entry.label, reply),
                Action::Call(mut call) => {
                    if calls >= MAX_CALLS_PER_PHASE {
                        return self.give_up(position, entry, "made too many calls");
                    }
                    self.propagate_trace(&mut call);
                    self.pending = Some(Box::new(Pending {
                        position,
                        phase,
                        calls: calls + 1,
                        on: WaitingOn::Answer {
                            sent_at: self.cx.now_millis(),
                            timeout: call.timeout,
                            sent_us: self.cx.host().now_micros(),
                            metrics: metrics().callout(&call.service.cluster),
                        },
                    }));
                    return Outcome::Wait(Wait::Send(call));
                }
                Action::Refresh(source) if self.cx.refetched(&source) => {
                    return self.give_up(
                        position,
                        entry,
                        "asked again for a document after its refetch",
                    );
                }
                Action::Refresh(source) => {
                    match self.wait_for_document(position, phase, calls, source) {
                        Ok(outcome) => return outcome,
                        // Nothing to wait for: the policy decides now.
                        Err(source) => rerun = Some(Rerun::Refetched(source)),
                    }
                }
            }
        }
        if phase == Phases::REQUEST_BODY {
            self.body_phase_done(Direction::Request);
        }
        // The request is through once its last request phase is.
        if phase == Phases::REQUEST_BODY || !chain.phases.contains(Phases::REQUEST_BODY) {
            chain.metrics.allowed.increment();
            self.decided(None);
        }
        Outcome::Continue(self.cx.take_pending())
    }

    /// The entry at `position` (`label`) answers the request with `reply`.
    fn reply(&mut self, position: usize, label: &str, reply: LocalReply) -> Outcome {
        let chain = Arc::clone(&self.chain);
        log::debug!("chain {:?}: {label} replied {}", chain.name, reply.status);
        if let Some(m) = chain.metrics.entries.get(position) {
            m.replied.increment();
        }
        self.note(position, PolicyDecision::Replied);
        self.count_reply(position, reply.status);
        self.passed = position;
        self.outcome_of(Some((position, reply))).into()
    }

    /// Counts a request the policy at `position` answered itself.
    fn count_reply(&mut self, position: usize, status: u16) {
        self.chain.metrics.deny(position, status);
        self.decided(Some((status, position)));
    }

    /// The request phases have decided: records the latency and, if the
    /// configuration logs decisions, this request's line.
    fn decided(&mut self, reply: Option<(u16, usize)>) {
        let latency_us = self.cx.host().now_micros().saturating_sub(self.started_us);
        self.chain.metrics.latency.record(latency_us);
        let Some(logging) = &mut self.logging else {
            return;
        };
        let arrived_with = std::mem::take(&mut logging.arrived_with);
        let policies: Vec<(&str, PolicyDecision)> = self
            .chain
            .entries
            .iter()
            .zip(&logging.decisions)
            .map(|(entry, decision)| (entry.policy_name(), *decision))
            .collect();
        let verdict = Verdict {
            reply,
            policies: &policies,
            latency_us,
            secret_headers: &self.chain.secret_headers,
            arrived_with,
        };
        let line = logging.log.record(&self.cx, verdict);
        if let Some(logging) = self.logging.as_mut() {
            logging.line = line;
        }
    }

    fn is_skipped(&self, position: usize) -> bool {
        self.skipped.get(position).copied().unwrap_or(false)
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
