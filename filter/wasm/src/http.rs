//! One HTTP stream: translates proxy-wasm callbacks into executor phases.
//!
//! A stream whose chain waits for a service (a policy's call, or a fresher
//! remote document) pauses the request and sits in this VM's list of
//! waiting streams. It sends its calls itself, so Envoy cancels them if the
//! stream ends, and its exchange then gives up any claim it held. The root
//! context's tick, which runs often while anyone waits, polls each waiting
//! stream's exchange (renewing claims, fetching a document whose awaited
//! fetch lapsed, resuming once it arrived). An answer is routed to the
//! stream that waits for it, whichever context the SDK delivers it to. That
//! is why a stream's state sits behind an `Rc`: it must be reachable from
//! other contexts' callbacks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use policy_executor::{
    Answer, AttributeKind, AttributeSet, AttributeValue, CallFailure, ChunkOutcome, Connection,
    Engine, Exchange, HeaderChange, HeaderMap, HeaderMutations, LocalReply, Outcome,
    ResponseOutcome, Start, Wait,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType, Status};

use crate::host::{self, InFlight};
use crate::Tick;

/// One request on this worker, as the proxy-wasm SDK holds it.
pub(crate) struct Stream {
    state: Rc<RefCell<StreamState>>,
}

impl Stream {
    pub(crate) fn new(engine: Rc<Engine>, tick: Rc<Tick>, context_id: u32) -> Self {
        let state = Rc::new_cyclic(|me| {
            RefCell::new(StreamState {
                engine,
                tick,
                context_id,
                me: Weak::clone(me),
                exchange: None,
                replied: false,
                request_body_done: false,
                response_body_done: false,
                waiting: None,
                listed: false,
                call: None,
                sent_calls: false,
                request_headers_ended: false,
                request_body_end: None,
                body_deadline: None,
                request_decided: false,
                stream_refused: false,
            })
        });
        Self { state }
    }

    /// Runs a callback on the state. It is only borrowed elsewhere while
    /// another context wakes this stream, and Envoy never calls into the VM
    /// from inside a VM call, so a failed borrow is a host fault: fail
    /// closed.
    fn with(&self, callback: impl FnOnce(&mut StreamState) -> Action) -> Action {
        match self.state.try_borrow_mut() {
            Ok(mut state) => callback(&mut state),
            Err(_) => {
                log::error!("a stream's state was in use during a callback");
                let reply = LocalReply::text(500, "policy engine error\n");
                let _ = hostcalls::send_http_response(500, vec![], Some(&reply.body));
                Action::Pause
            }
        }
    }
}

/// The state of one request on this worker.
pub(crate) struct StreamState {
    engine: Rc<Engine>,
    /// Its root context's timer, hurried while this stream waits.
    tick: Rc<Tick>,
    context_id: u32,
    /// This state's own `Rc`, for the list of waiting streams.
    me: Weak<RefCell<StreamState>>,
    exchange: Option<Exchange>,
    /// This filter sent a local reply; Envoy runs it through the encoder
    /// callbacks too, and those must let it pass untouched (the executor has
    /// already run the response phases over it).
    replied: bool,
    request_body_done: bool,
    response_body_done: bool,
    /// The request phase that waits for a service.
    waiting: Option<WaitingPhase>,
    /// In this VM's list of waiting streams.
    listed: bool,
    /// The call sent for it and not yet answered.
    call: Option<InFlight>,
    /// It sent a call (and so may have tokens in `CALLS`): only such
    /// streams clean up there when they end, not every request.
    sent_calls: bool,
    request_headers_ended: bool,
    /// The request body ended (with this size) while the headers waited.
    request_body_end: Option<usize>,
    /// Headers (the request's, or the response's) are held for a body that
    /// has not started to arrive: past this time (ms since the epoch), and
    /// unless this VM has seen Envoy deliver a body to held headers, the
    /// request fails closed (see [`BODY_ARRIVAL`]).
    body_deadline: Option<u64>,
    /// The request's decision line is written: a later one is the
    /// response's.
    request_decided: bool,
    /// A policy refused the response mid-stream.
    stream_refused: bool,
}

/// How long held headers wait for the first byte of their body before
/// the request fails closed, until this VM has seen Envoy deliver one. Without `allow_on_headers_stop_iteration`, Envoy stops the body
/// callbacks of a filter that holds the headers, and such a request would
/// otherwise stall until Envoy's own timeout.
pub(crate) const BODY_ARRIVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Which request phase waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitingPhase {
    Headers,
    Body,
}

impl StreamState {
    /// Applies a request phase's outcome; returns the action for Envoy.
    fn settle_request(&mut self, phase: WaitingPhase, outcome: Outcome) -> Action {
        self.write_decision();
        let mutations = match outcome {
            Outcome::Continue(mutations) => mutations,
            Outcome::Respond(reply) => return self.respond(&reply),
            Outcome::Wait(wait) => return self.wait(phase, wait),
        };
        if let Err(status) = apply_mutations(MapType::HttpRequestHeaders, &mutations) {
            return self.host_fault("change the headers", status);
        }
        match phase {
            // The body may have ended while the headers waited.
            WaitingPhase::Headers => match self.request_body_end.take() {
                Some(size) if self.awaiting_body(Direction::Request) => {
                    self.read_and_finish_body(Direction::Request, size)
                }
                _ => self.after_headers(Direction::Request, self.request_headers_ended),
            },
            // The body a policy wrote goes in place of the one held.
            WaitingPhase::Body => self.write_body_edit(Direction::Request, Action::Continue),
        }
    }

    /// Writes the decision log's line for this request, once decided: to
    /// Envoy's log, and as the filter state `wasm.policy_engine_decision`
    /// for Envoy's access log (`%FILTER_STATE(wasm.policy_engine_decision:PLAIN)%`).
    /// The response's line (what masking found in it) goes to
    /// `wasm.policy_engine_response_decision`.
    fn write_decision(&mut self) {
        let Some(line) = self.exchange.as_mut().and_then(Exchange::take_decision_log) else {
            return;
        };
        log::info!("decision {line}");
        let state = if self.request_decided {
            "policy_engine_response_decision"
        } else {
            "policy_engine_decision"
        };
        self.request_decided = true;
        if let Err(status) = hostcalls::set_property(vec![state], Some(line.as_bytes())) {
            log::warn!("cannot set the decision as filter state: {status:?}");
        }
    }

    /// Applies a response phase's outcome; returns the action for Envoy.
    fn settle_response(&mut self, outcome: ResponseOutcome) -> Action {
        match outcome {
            ResponseOutcome::Continue(mutations) => {
                match apply_mutations(MapType::HttpResponseHeaders, &mutations) {
                    Ok(()) => Action::Continue,
                    Err(status) => self.host_fault("change the headers", status),
                }
            }
            ResponseOutcome::Respond(reply) => self.respond(&reply),
        }
    }

    /// Holds the request while the chain waits; sends its call, if it has
    /// one to send, from this stream's context.
    fn wait(&mut self, phase: WaitingPhase, wait: Wait) -> Action {
        self.waiting = Some(phase);
        self.list();
        self.tick.hurry();
        let Wait::Send(call) = wait else {
            return Action::Pause;
        };
        match host::dispatch(&call) {
            Ok(in_flight) => {
                CALLS.with(|calls| {
                    if let Ok(mut calls) = calls.try_borrow_mut() {
                        calls.insert(in_flight.token, (self.context_id, Weak::clone(&self.me)));
                    }
                });
                self.call = Some(in_flight);
                self.sent_calls = true;
                Action::Pause
            }
            Err(status) => {
                let failure = CallFailure::Unreachable(format!(
                    "cannot send to cluster {:?}: {status:?}",
                    call.service.cluster
                ));
                log::warn!("{failure}");
                self.waiting = None;
                match self.exchange.as_mut().map(|x| x.on_answer(Err(failure))) {
                    Some(outcome) => self.settle_request(phase, outcome),
                    None => self.host_fault("send a call", status),
                }
            }
        }
    }

    /// Goes on with the phase that waited, from another callback than the
    /// stream's own: a request that may go on is resumed.
    fn wake(&mut self, outcome: Outcome) {
        let Some(phase) = self.waiting.take() else {
            return;
        };
        if let Action::Continue = self.settle_request(phase, outcome) {
            if let Err(status) = hostcalls::resume_http_request() {
                log::error!("cannot resume the request: {status:?}");
            }
        }
    }

    /// Polls the exchange from the root context's tick; returns whether the
    /// stream still waits.
    fn poll(&mut self) -> bool {
        if let Some(deadline) = self.body_deadline {
            if BODY_DELIVERED.with(Cell::get) || self.replied {
                self.body_deadline = None;
            } else if now_millis() >= deadline {
                self.body_never_came();
            } else {
                return true;
            }
        }
        // Resumed by an answer since it was listed.
        if self.waiting.is_none() {
            self.listed = false;
            return false;
        }
        let Some(outcome) = self.exchange.as_mut().map(Exchange::poll) else {
            return false;
        };
        if outcome != Outcome::Wait(Wait::Poll) {
            self.wake(outcome);
        }
        let waiting = self.waiting.is_some();
        self.listed = waiting;
        waiting
    }

    /// Takes the answer to this stream's call.
    fn on_answer(&mut self, token: u32, read: impl FnOnce(&InFlight) -> Answer) {
        let Some(in_flight) = self.call.take_if(|call| call.token == token) else {
            return;
        };
        let answer = read(&in_flight);
        if let Some(outcome) = self.exchange.as_mut().map(|x| x.on_answer(answer)) {
            self.wake(outcome);
        }
    }

    /// While the chain waits in the headers phase, the body is held too:
    /// letting a chunk continue would let the headers through.
    fn hold_while_waiting(&mut self, end: Option<usize>) -> bool {
        if self.waiting.is_none() {
            return false;
        }
        if end.is_some() {
            self.request_body_end = end;
        }
        true
    }

    fn respond(&mut self, reply: &LocalReply) -> Action {
        self.replied = true;
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        if let Err(status) =
            hostcalls::send_http_response(u32::from(reply.status), headers, Some(&reply.body))
        {
            log::error!("cannot send the local reply: {status:?}");
        }
        Action::Pause
    }

    /// Fails the request closed when Envoy could not hand over what the
    /// chain needs, or refused a change it decided on (the upstream must
    /// never get a request other than the one decided on); this is a host
    /// fault, not the client's.
    fn host_fault(&mut self, what: &str, status: Status) -> Action {
        log::error!("cannot {what}: {status:?}");
        self.respond(&LocalReply::text(500, "policy engine error\n"))
    }

    /// Runs the body phase of `direction` over the whole body; the body a
    /// policy wrote goes in its place.
    fn finish_body(&mut self, direction: Direction, body: &[u8]) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        match direction {
            Direction::Request => {
                let outcome = exchange.on_request_body(body);
                self.request_body_done = true;
                self.settle_request(WaitingPhase::Body, outcome)
            }
            Direction::Response => {
                let outcome = exchange.on_response_body(body);
                self.response_body_done = true;
                self.write_decision();
                let action = self.settle_response(outcome);
                self.write_body_edit(direction, action)
            }
        }
    }

    /// Replaces the buffered body with the one the chain wrote, if it did
    /// (a size past the buffer's end replaces all of it).
    fn write_body_edit(&mut self, direction: Direction, action: Action) -> Action {
        if self.replied {
            return action;
        }
        let Some(edit) = self.exchange.as_mut().and_then(Exchange::take_body_edit) else {
            return action;
        };
        match hostcalls::set_buffer(direction.body(), 0, usize::MAX, &edit) {
            Ok(()) => action,
            Err(status) => {
                self.host_fault(&format!("replace the {}", direction.body_name()), status)
            }
        }
    }

    /// One chunk of a response the chain reads as it flows: what the
    /// streams pass on replaces it.
    fn stream_chunk(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let chunk = match read_body(BufferType::HttpResponseBody, body_size) {
            Ok(chunk) => chunk,
            Err(status) => return self.host_fault("read the response body", status),
        };
        let Some(outcome) = self
            .exchange
            .as_mut()
            .map(|x| x.on_response_chunk(&chunk, end_of_stream))
        else {
            return Action::Continue;
        };
        self.write_decision();
        match outcome {
            ChunkOutcome::Pass(bytes) if bytes == chunk => Action::Continue,
            ChunkOutcome::Pass(bytes) => {
                match hostcalls::set_buffer(BufferType::HttpResponseBody, 0, chunk.len(), &bytes) {
                    Ok(()) => Action::Continue,
                    Err(status) => self.host_fault("replace the response body", status),
                }
            }
            // The headers are gone: Envoy resets the stream, and no later
            // chunk passes meanwhile.
            ChunkOutcome::Respond(reply) => {
                self.stream_refused = true;
                self.respond(&reply)
            }
        }
    }

    /// Whether the chain reads this response's body as it flows.
    fn streams_response(&self) -> bool {
        !self.replied
            && self.exchange.as_ref().is_some_and(|x| {
                let needs = x.body_needs();
                needs.response_streamed && x.acts_on_response()
            })
    }

    /// Whether the exchange still has a body phase to run in `direction`.
    fn awaiting_body(&self, direction: Direction) -> bool {
        let done = match direction {
            Direction::Request => self.request_body_done,
            Direction::Response => self.response_body_done,
        };
        !self.replied
            && !done
            && self.exchange.as_ref().is_some_and(|x| {
                let needs = x.body_needs();
                match direction {
                    Direction::Request => needs.request,
                    Direction::Response => {
                        needs.response && !needs.response_streamed && x.acts_on_response()
                    }
                }
            })
    }

    /// After a headers phase that let the message go on: hold the headers
    /// until the body is complete if the chain reads it, so the body phase
    /// can still edit them or reply before they go further.
    fn after_headers(&mut self, direction: Direction, end_of_stream: bool) -> Action {
        if !self.awaiting_body(direction) {
            Action::Continue
        } else if end_of_stream {
            self.finish_body(direction, &[])
        } else {
            if !BODY_DELIVERED.with(Cell::get) {
                self.watch_for_body();
            }
            Action::Pause
        }
    }

    /// Lists this stream to be failed if its body never comes.
    fn watch_for_body(&mut self) {
        self.body_deadline = Some(now_millis().saturating_add(BODY_ARRIVAL.as_millis() as u64));
        self.list();
        self.tick.hurry();
    }

    /// The body did not come in time and Envoy has never delivered one to
    /// held headers here: the option is missing. Fails the request closed.
    fn body_never_came(&mut self) {
        self.body_deadline = None;
        log::error!(
            "a body never reached the policy engine while its headers were held: set \
             allow_on_headers_stop_iteration: true on the Wasm filter's plugin configuration \
             (see docs/bodies.md); failing the request closed"
        );
        self.respond(&LocalReply::text(500, "policy engine error\n"));
    }

    /// Puts this stream in the VM's list of streams the tick polls.
    fn list(&mut self) {
        if self.listed {
            return;
        }
        self.listed = true;
        let waiter = Waiter {
            context_id: self.context_id,
            stream: Weak::clone(&self.me),
        };
        WAITING.with(|list| {
            if let Ok(mut list) = list.try_borrow_mut() {
                list.push(waiter);
            }
        });
    }

    /// A body chunk: buffered by Envoy until the last one, up to the
    /// chain's limit.
    fn on_body(&mut self, direction: Direction, body_size: usize, end_of_stream: bool) -> Action {
        if !self.awaiting_body(direction) {
            return Action::Continue;
        }
        let too_large = self
            .exchange
            .as_ref()
            .is_some_and(|x| body_size > x.max_body_bytes());
        if too_large {
            return match direction {
                Direction::Request => {
                    let outcome = self
                        .exchange
                        .as_mut()
                        .map(Exchange::refuse_oversized_request);
                    match outcome {
                        Some(outcome) => self.settle_request(WaitingPhase::Body, outcome),
                        None => Action::Continue,
                    }
                }
                Direction::Response => {
                    let outcome = self
                        .exchange
                        .as_mut()
                        .map(Exchange::refuse_oversized_response);
                    match outcome {
                        Some(outcome) => self.settle_response(outcome),
                        None => Action::Continue,
                    }
                }
            };
        }
        if !end_of_stream {
            Action::Pause
        } else {
            self.read_and_finish_body(direction, body_size)
        }
    }

    /// Trailers end the stream: the buffered body is complete.
    fn on_trailers(&mut self, direction: Direction) -> Action {
        if self.awaiting_body(direction) {
            self.read_and_finish_body(direction, usize::MAX)
        } else {
            Action::Continue
        }
    }

    fn read_and_finish_body(&mut self, direction: Direction, size: usize) -> Action {
        match read_body(direction.body(), size) {
            Ok(body) => self.finish_body(direction, &body),
            Err(status) => self.host_fault(&format!("read the {}", direction.body_name()), status),
        }
    }
}

/// Which message of the exchange a callback is about.
#[derive(Clone, Copy)]
enum Direction {
    Request,
    Response,
}

impl Direction {
    fn body(self) -> BufferType {
        match self {
            Self::Request => BufferType::HttpRequestBody,
            Self::Response => BufferType::HttpResponseBody,
        }
    }

    fn body_name(self) -> &'static str {
        match self {
            Self::Request => "request body",
            Self::Response => "response body",
        }
    }
}

/// The proxy-wasm callbacks, run on the state.
impl StreamState {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.request_headers_ended = end_of_stream;
        let headers = match read_headers(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(status) => return self.host_fault("read the request headers", status),
        };
        let mut exchange = match self.engine.start(route_name, headers) {
            Start::Run(exchange) => exchange,
            Start::Pass(rewrites) => {
                return match apply_mutations(MapType::HttpRequestHeaders, &rewrites) {
                    Ok(()) => Action::Continue,
                    Err(status) => self.host_fault("change the headers", status),
                };
            }
            Start::Respond(reply) => return self.respond(&reply),
        };
        let wanted = exchange.attributes();
        if !wanted.is_empty() {
            exchange.set_connection(read_connection(wanted));
        }
        let outcome = exchange.on_request_headers();
        self.exchange = Some(exchange);
        self.settle_request(WaitingPhase::Headers, outcome)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.body_deadline.take().is_some() {
            // Envoy delivers bodies to held headers: the option is set.
            BODY_DELIVERED.with(|seen| seen.set(true));
        }
        if self.hold_while_waiting(end_of_stream.then_some(body_size)) {
            return Action::Pause;
        }
        self.on_body(Direction::Request, body_size, end_of_stream)
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        if self.hold_while_waiting(Some(usize::MAX)) {
            return Action::Pause;
        }
        self.on_trailers(Direction::Request)
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if self.waiting.take().is_some() {
            // Envoy answers the request itself while the chain waits (a
            // timeout): the exchange is over, and nothing may resume it.
            if let Some(exchange) = self.exchange.as_mut() {
                exchange.abandon();
            }
            self.call = None;
            return Action::Continue;
        }
        let Some(exchange) = self.exchange.as_ref() else {
            return Action::Continue;
        };
        if self.replied || !exchange.acts_on_response() {
            return Action::Continue;
        }
        let headers = if exchange.reads_response_headers() {
            match read_headers(MapType::HttpResponseHeaders) {
                Ok(headers) => headers,
                Err(status) => return self.host_fault("read the response headers", status),
            }
        } else {
            HeaderMap::new()
        };
        let Some(outcome) = self
            .exchange
            .as_mut()
            .map(|x| x.on_response_headers(headers))
        else {
            return Action::Continue;
        };
        match self.settle_response(outcome) {
            Action::Continue if self.streams_response() && end_of_stream => {
                self.stream_chunk(0, true)
            }
            Action::Continue => self.after_headers(Direction::Response, end_of_stream),
            paused => paused,
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.stream_refused {
            return Action::Pause;
        }
        if self.body_deadline.take().is_some() {
            BODY_DELIVERED.with(|seen| seen.set(true));
        }
        if self.streams_response() {
            return self.stream_chunk(body_size, end_of_stream);
        }
        self.on_body(Direction::Response, body_size, end_of_stream)
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        if self.streams_response() {
            // What the streams still hold has no body chunk to go out in:
            // the response is cut rather than sent with bytes unmasked.
            return match self
                .exchange
                .as_mut()
                .map(|x| x.on_response_chunk(&[], true))
            {
                Some(ChunkOutcome::Pass(rest)) if !rest.is_empty() => {
                    log::error!("a streamed response ended with trailers while bytes were held");
                    self.respond(&LocalReply::text(502, "upstream response refused\n"))
                }
                Some(ChunkOutcome::Respond(reply)) => self.respond(&reply),
                _ => Action::Continue,
            };
        }
        self.on_trailers(Direction::Response)
    }
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _: usize) {
        answer_call(token, |call| call.http_answer(headers, body));
    }

    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        answer_call(token, |call| call.grpc_answer(status_code, response_size));
    }

    /// The request is over; if it still waits (client reset, timeout), its
    /// exchange gives up its claims and Envoy cancels its call.
    fn on_done(&mut self) -> bool {
        if let Ok(mut state) = self.state.try_borrow_mut() {
            state.call = None;
            if state.sent_calls {
                let me = Rc::downgrade(&self.state);
                CALLS.with(|calls| {
                    if let Ok(mut calls) = calls.try_borrow_mut() {
                        calls.retain(|_, (_, stream)| !Weak::ptr_eq(stream, &me));
                    }
                });
            }
            if let Some(exchange) = state.exchange.as_mut().filter(|x| x.is_waiting()) {
                exchange.abandon();
            }
            state.waiting = None;
        }
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, headers: usize, end_of_stream: bool) -> Action {
        self.with(|s| s.on_http_request_headers(headers, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with(|s| s.on_http_request_body(body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, trailers: usize) -> Action {
        self.with(|s| s.on_http_request_trailers(trailers))
    }

    fn on_http_response_headers(&mut self, headers: usize, end_of_stream: bool) -> Action {
        self.with(|s| s.on_http_response_headers(headers, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with(|s| s.on_http_response_body(body_size, end_of_stream))
    }

    fn on_http_response_trailers(&mut self, trailers: usize) -> Action {
        self.with(|s| s.on_http_response_trailers(trailers))
    }
}

/// A waiting stream.
struct Waiter {
    context_id: u32,
    stream: Weak<RefCell<StreamState>>,
}

/// A stream's context and state, for the callbacks of other contexts.
type StreamRef = (u32, Weak<RefCell<StreamState>>);

thread_local! {
    /// Envoy has delivered a body to a stream whose headers this VM held:
    /// `allow_on_headers_stop_iteration` is set.
    static BODY_DELIVERED: Cell<bool> = const { Cell::new(false) };
    /// This VM's waiting streams (a VM runs on one thread).
    static WAITING: RefCell<Vec<Waiter>> = const { RefCell::new(Vec::new()) };
    /// The calls in flight, by token, with the stream that waits for each.
    static CALLS: RefCell<HashMap<u32, StreamRef>> = RefCell::new(HashMap::new());
}

/// Whether any stream of this VM waits.
pub(crate) fn any_waiting() -> bool {
    WAITING.with(|list| list.try_borrow().map_or(true, |list| !list.is_empty()))
}

/// Polls every waiting stream; those that still wait stay listed, and
/// streams that ended are dropped. Each is polled as its own context, so
/// that a call it sends belongs to it.
pub(crate) fn poll_waiting() {
    let waiters = WAITING.with(|list| {
        list.try_borrow_mut()
            .map(|mut list| std::mem::take(&mut *list))
            .unwrap_or_default()
    });
    let mut still = Vec::with_capacity(waiters.len());
    for waiter in waiters {
        let Some(stream) = waiter.stream.upgrade() else {
            continue;
        };
        let Ok(mut state) = stream.try_borrow_mut() else {
            still.push(waiter);
            continue;
        };
        if let Err(status) = hostcalls::set_effective_context(waiter.context_id) {
            // Kept, to be polled again (its stream ends it otherwise).
            log::warn!("cannot poll a waiting request: {status:?}");
            drop(state);
            still.push(waiter);
            continue;
        }
        if state.poll() {
            drop(state);
            still.push(waiter);
        }
    }
    WAITING.with(|list| {
        if let Ok(mut list) = list.try_borrow_mut() {
            // Streams that began waiting meanwhile were added to the list.
            list.extend(still);
        }
    });
}

/// Gives the answer to call `token` to the stream that waits for it;
/// returns whether a stream sent it.
pub(crate) fn answer_call(token: u32, read: impl FnOnce(&InFlight) -> Answer) -> bool {
    let Some((context_id, stream)) =
        CALLS.with(|calls| calls.try_borrow_mut().ok()?.remove(&token))
    else {
        return false;
    };
    let Some(stream) = stream.upgrade() else {
        return true;
    };
    let Ok(mut state) = stream.try_borrow_mut() else {
        log::error!("a stream's state was in use when its answer came");
        return true;
    };
    // Host calls from here on act on the waiting stream.
    if let Err(status) = hostcalls::set_effective_context(context_id) {
        log::warn!("cannot resume a waiting request: {status:?}");
        return true;
    }
    state.on_answer(token, read);
    true
}

/// Reads a whole header map in one host call. Values that are not UTF-8
/// (obs-text is legal HTTP) are read lossily rather than trapping.
fn read_headers(map: MapType) -> Result<HeaderMap, Status> {
    let pairs = hostcalls::get_map_bytes(map)?;
    Ok(HeaderMap::from_pairs(pairs.into_iter().map(
        |(name, value)| {
            let value = String::from_utf8(value)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            (name, value)
        },
    )))
}

/// The host's clock, in milliseconds since the epoch.
fn now_millis() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

fn read_body(buffer: BufferType, size: usize) -> Result<Vec<u8>, Status> {
    Ok(hostcalls::get_buffer(buffer, 0, size)?.unwrap_or_default())
}

/// The connection attributes the chain reads, one property each. One that
/// Envoy does not have (no TLS, no client certificate) stays absent.
fn read_connection(wanted: AttributeSet) -> Connection {
    let mut connection = Connection::default();
    for attribute in wanted.iter() {
        let bytes = match hostcalls::get_property(attribute.property_path().to_vec()) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            Err(status) => {
                log::debug!("cannot read {}: {status:?}", attribute.envoy_name());
                continue;
            }
        };
        let value = match attribute.kind() {
            AttributeKind::Text => AttributeValue::Text(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
            AttributeKind::Bool => AttributeValue::Bool(bytes.first().is_some_and(|b| *b != 0)),
        };
        connection.insert(attribute, value);
    }
    connection
}

/// Envoy's name for the matched route (`xds.route_name`), if any.
fn route_name() -> Option<String> {
    match hostcalls::get_property(vec!["xds", "route_name"]) {
        Ok(Some(bytes)) => String::from_utf8(bytes).ok().filter(|s| !s.is_empty()),
        Ok(None) => None,
        Err(status) => {
            log::warn!("cannot read xds.route_name: {status:?}");
            None
        }
    }
}

/// Makes the changes in Envoy's header map; the first one Envoy refuses
/// stops it.
fn apply_mutations(map: MapType, mutations: &HeaderMutations) -> Result<(), Status> {
    for (name, change) in mutations.iter() {
        let result = match change {
            HeaderChange::Remove => hostcalls::remove_map_value(map, name),
            HeaderChange::Replace(values) => {
                let mut values = values.iter();
                let first = values.next().map(String::as_str);
                hostcalls::set_map_value(map, name, first)
                    .and_then(|()| values.try_for_each(|v| hostcalls::add_map_value(map, name, v)))
            }
            HeaderChange::Append(values) => values
                .iter()
                .try_for_each(|v| hostcalls::add_map_value(map, name, v)),
        };
        if let Err(status) = result {
            log::error!("cannot change header {name:?}: {status:?}");
            return Err(status);
        }
    }
    Ok(())
}
