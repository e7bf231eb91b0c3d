//! One HTTP stream: translates proxy-wasm callbacks into executor phases.

use std::rc::Rc;

use policy_executor::{
    AttributeKind, AttributeSet, AttributeValue, Connection, Engine, Exchange, HeaderChange,
    HeaderMap, HeaderMutations, LocalReply, Outcome, RemoteSource, Start,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType, Status};

use crate::fetch;

/// The state of one request on this worker.
pub(crate) struct Stream {
    engine: Rc<Engine>,
    exchange: Option<Exchange>,
    /// This filter sent a local reply; Envoy runs it through the encoder
    /// callbacks too, and those must let it pass untouched (the executor has
    /// already run the response phases over it).
    replied: bool,
    request_body_done: bool,
    response_body_done: bool,
    /// The request-headers phase waits for this refetch (callout token).
    fetching: Option<(u32, RemoteSource)>,
    request_headers_ended: bool,
    /// The request body ended (with this size) while the headers waited.
    request_body_end: Option<usize>,
}

impl Stream {
    pub(crate) fn new(engine: Rc<Engine>) -> Self {
        Self {
            engine,
            exchange: None,
            replied: false,
            request_body_done: false,
            response_body_done: false,
            fetching: None,
            request_headers_ended: false,
            request_body_end: None,
        }
    }

    /// Applies an outcome to the message held by `map`; returns the action
    /// for Envoy.
    fn settle(&mut self, map: MapType, outcome: Outcome) -> Action {
        match outcome {
            Outcome::Continue(mutations) => {
                apply_mutations(map, &mutations);
                Action::Continue
            }
            Outcome::Respond(reply) => self.respond(&reply),
            Outcome::Refetch(source) => self.refetch(source),
        }
    }

    /// Holds the request while `source` is fetched, unless another VM
    /// already has a newer copy or the source was fetched too recently (then
    /// the policy decides at once with what is cached).
    fn refetch(&mut self, source: RemoteSource) -> Action {
        let documents = self.engine.documents();
        if !fetch::sync_from_shared(documents, &source)
            && fetch::claim_attempt(&source, fetch::now_millis())
        {
            match fetch::dispatch(&source) {
                Ok(token) => {
                    self.fetching = Some((token, source));
                    return Action::Pause;
                }
                Err(status) => log::warn!(
                    "cannot fetch {} from cluster {:?}: {status:?}",
                    source.uri,
                    source.cluster
                ),
            }
        }
        self.resume_request_headers()
    }

    /// Finishes the request-headers phase after a refetch.
    fn resume_request_headers(&mut self) -> Action {
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
        if self.fetching.is_none() {
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
    /// chain needs; this is a host fault, not the client's.
    fn host_fault(&mut self, what: &str, status: Status) -> Action {
        log::error!("cannot read the {what}: {status:?}");
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
            Err(status) => self.host_fault(direction.body_name(), status),
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

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body: usize, _: usize) {
        let Some((expected, source)) = self.fetching.take() else {
            return;
        };
        if expected != token {
            self.fetching = Some((expected, source));
            return;
        }
        fetch::complete(self.engine.documents(), &source, body);
        if let Action::Continue = self.resume_request_headers() {
            if let Err(status) = hostcalls::resume_http_request() {
                log::error!("cannot resume the request: {status:?}");
            }
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.request_headers_ended = end_of_stream;
        let headers = match read_headers(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(status) => return self.host_fault("request headers", status),
        };
        let mut exchange = match self.engine.start(route_name, headers) {
            Start::Run(exchange) => exchange,
            Start::Pass => return Action::Continue,
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
                Err(status) => return self.host_fault("response headers", status),
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

fn apply_mutations(map: MapType, mutations: &HeaderMutations) {
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
        }
    }
}
