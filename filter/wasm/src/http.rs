//! One HTTP stream: translates proxy-wasm callbacks into executor phases.
//!
//! A stream whose policy needs a fresher remote document waits in this VM's
//! list of waiting streams; it never fetches itself (see `fetch` for why
//! only root contexts do). The root context's tick, which runs often while
//! anyone waits, polls each waiting stream with the executor's rules
//! (`Waiting::poll`): it fetches for the streams whose awaited attempt
//! lapsed, and resumes those whose document arrived or whose attempt was
//! answered. That is why a stream's state sits behind an `Rc`: it must be
//! reachable from the root context's callbacks.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use policy_executor::remote::{Step, WaitStep, Waiting};
use policy_executor::{
    AttributeKind, AttributeSet, AttributeValue, Connection, Documents, Engine, Exchange,
    HeaderChange, HeaderMap, HeaderMutations, LocalReply, Outcome, RemoteSource, Start,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType, Status};

use crate::fetch;
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
                waiting: false,
                request_headers_ended: false,
                request_body_end: None,
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
    /// The request-headers phase waits for a remote document.
    waiting: bool,
    request_headers_ended: bool,
    /// The request body ended (with this size) while the headers waited.
    request_body_end: Option<usize>,
}

impl StreamState {
    /// Applies an outcome to the message held by `map`; returns the action
    /// for Envoy.
    fn settle(&mut self, map: MapType, outcome: Outcome) -> Action {
        match outcome {
            Outcome::Continue(mutations) => match apply_mutations(map, &mutations) {
                Ok(()) => Action::Continue,
                Err(status) => self.host_fault("change the headers", status),
            },
            Outcome::Respond(reply) => self.respond(&reply),
            Outcome::Refetch(source) => self.refetch(source),
        }
    }

    /// Holds the request until `source` is fetched by this VM's root
    /// context or another VM, as the executor's rules say. It goes on at
    /// once if another VM already has a newer copy, or if the last answer
    /// came too recently to ask again (the policy then decides with what is
    /// cached).
    fn refetch(&mut self, source: RemoteSource) -> Action {
        let documents = Arc::clone(self.engine.documents());
        if fetch::sync_from_shared(&documents, &source) {
            return self.resume_request_headers();
        }
        let now = fetch::now_millis();
        let awaited = match source.next_step(fetch::last_attempt(&source).as_ref(), now) {
            Step::TooSoon => return self.resume_request_headers(),
            Step::Wait { claimed_at } => claimed_at,
            // The root context claims the next attempt for it: any attempt
            // claimed from now on is one it waits for.
            Step::Fetch => now,
        };
        let waiting = Waiting::new(&source, documents.version(&source), awaited, now);
        self.waiting = true;
        WAITING.with(|list| {
            list.borrow_mut().push(Waiter {
                source,
                waiting,
                documents,
                context_id: self.context_id,
                stream: Weak::clone(&self.me),
            });
        });
        self.tick.hurry();
        Action::Pause
    }

    /// Finishes the request-headers phase after a refetch.
    fn resume_request_headers(&mut self) -> Action {
        self.waiting = false;
        let Some(outcome) = self.exchange.as_mut().map(Exchange::resume) else {
            return Action::Continue;
        };
        match self.settle(MapType::HttpRequestHeaders, outcome) {
            Action::Continue => match self.request_body_end.take() {
                Some(size) if self.awaiting_body(Direction::Request) => {
                    self.read_and_finish_body(Direction::Request, size)
                }
                _ => self.after_headers(Direction::Request, self.request_headers_ended),
            },
            paused => paused,
        }
    }

    /// While the headers wait for a fetch, the body is held too: letting a
    /// chunk continue would let the headers through.
    fn hold_while_fetching(&mut self, end: Option<usize>) -> bool {
        if !self.waiting {
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

    /// Runs the body phase of `direction` over the whole body.
    fn finish_body(&mut self, direction: Direction, body: &[u8]) -> Action {
        let outcome = match (self.exchange.as_mut(), direction) {
            (Some(x), Direction::Request) => x.on_request_body(body),
            (Some(x), Direction::Response) => x.on_response_body(body),
            (None, _) => return Action::Continue,
        };
        match direction {
            Direction::Request => self.request_body_done = true,
            Direction::Response => self.response_body_done = true,
        }
        self.settle(direction.headers(), outcome)
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
                    Direction::Response => needs.response && x.acts_on_response(),
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
            Action::Pause
        }
    }

    /// A body chunk: buffered by Envoy until the last one.
    fn on_body(&mut self, direction: Direction, body_size: usize, end_of_stream: bool) -> Action {
        if !self.awaiting_body(direction) {
            Action::Continue
        } else if !end_of_stream {
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
    fn headers(self) -> MapType {
        match self {
            Self::Request => MapType::HttpRequestHeaders,
            Self::Response => MapType::HttpResponseHeaders,
        }
    }

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
        match self.settle(MapType::HttpRequestHeaders, outcome) {
            Action::Continue => self.after_headers(Direction::Request, end_of_stream),
            paused => paused,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.hold_while_fetching(end_of_stream.then_some(body_size)) {
            return Action::Pause;
        }
        self.on_body(Direction::Request, body_size, end_of_stream)
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        if self.hold_while_fetching(Some(usize::MAX)) {
            return Action::Pause;
        }
        self.on_trailers(Direction::Request)
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
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
        match self.settle(MapType::HttpResponseHeaders, outcome) {
            Action::Continue => self.after_headers(Direction::Response, end_of_stream),
            paused => paused,
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Direction::Response, body_size, end_of_stream)
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        self.on_trailers(Direction::Response)
    }
}

impl Context for Stream {}

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

/// A stream waiting for a document.
struct Waiter {
    source: RemoteSource,
    waiting: Waiting,
    documents: Arc<Documents>,
    context_id: u32,
    stream: Weak<RefCell<StreamState>>,
}

thread_local! {
    /// This VM's waiting streams (a VM runs on one thread).
    static WAITING: RefCell<Vec<Waiter>> = const { RefCell::new(Vec::new()) };
}

/// Whether any stream of this VM waits for a document.
pub(crate) fn any_waiting() -> bool {
    WAITING.with(|list| list.try_borrow().map_or(true, |list| !list.is_empty()))
}

/// Polls the waiting streams at `now`: resumes those whose document
/// arrived, whose attempt was answered, or who waited long enough (their
/// policy then decides with what is cached), and returns the sources the
/// root context is to fetch for the others. Streams that ended are
/// dropped.
pub(crate) fn poll_waiting(now: u64) -> Vec<RemoteSource> {
    let mut fetch_for = Vec::new();
    let ready: Vec<Waiter> = WAITING.with(|list| {
        let Ok(mut list) = list.try_borrow_mut() else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        for mut waiter in std::mem::take(&mut *list) {
            if waiter.stream.strong_count() == 0 {
                continue;
            }
            // Another root context of this VM, or another VM, may have
            // fetched it.
            fetch::sync_from_shared(&waiter.documents, &waiter.source);
            let version = waiter.documents.version(&waiter.source);
            let last = fetch::last_attempt(&waiter.source);
            match waiter
                .waiting
                .poll(&waiter.source, version, last.as_ref(), now)
            {
                WaitStep::Resume => ready.push(waiter),
                WaitStep::Wait => list.push(waiter),
                WaitStep::FetchForIt => {
                    if !fetch_for.contains(&waiter.source) {
                        fetch_for.push(waiter.source.clone());
                    }
                    list.push(waiter);
                }
            }
        }
        ready
    });
    for waiter in ready {
        resume(&waiter);
    }
    fetch_for
}

/// Resumes a waiting stream from another context's callback.
fn resume(waiter: &Waiter) {
    let Some(stream) = waiter.stream.upgrade() else {
        return;
    };
    let Ok(mut state) = stream.try_borrow_mut() else {
        return;
    };
    // Host calls from here on act on the waiting stream.
    if let Err(status) = hostcalls::set_effective_context(waiter.context_id) {
        log::warn!("cannot resume a waiting request: {status:?}");
        return;
    }
    if let Action::Continue = state.resume_request_headers() {
        if let Err(status) = hostcalls::resume_http_request() {
            log::error!("cannot resume the request: {status:?}");
        }
    }
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
