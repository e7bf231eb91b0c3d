//! One HTTP stream: translates proxy-wasm callbacks into executor phases.

use std::rc::Rc;

use policy_executor::{
    Engine, Exchange, HeaderChange, HeaderMap, HeaderMutations, LocalReply, Outcome, Start,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType, Status};

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
}

impl Stream {
    pub(crate) fn new(engine: Rc<Engine>) -> Self {
        Self {
            engine,
            exchange: None,
            replied: false,
            request_body_done: false,
            response_body_done: false,
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
        }
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

    fn finish_request_body(&mut self, body: &[u8]) -> Action {
        self.request_body_done = true;
        match self.exchange.as_mut().map(|x| x.on_request_body(body)) {
            Some(outcome) => self.settle(MapType::HttpRequestHeaders, outcome),
            None => Action::Continue,
        }
    }

    fn finish_response_body(&mut self, body: &[u8]) -> Action {
        self.response_body_done = true;
        match self.exchange.as_mut().map(|x| x.on_response_body(body)) {
            Some(outcome) => self.settle(MapType::HttpResponseHeaders, outcome),
            None => Action::Continue,
        }
    }

    /// The exchange, if it still has a body phase to run in this direction.
    fn awaiting_body(&self, request: bool) -> bool {
        let done = if request {
            self.request_body_done
        } else {
            self.response_body_done
        };
        !self.replied
            && !done
            && self.exchange.as_ref().is_some_and(|x| {
                let needs = x.body_needs();
                if request {
                    needs.request
                } else {
                    needs.response && x.acts_on_response()
                }
            })
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let headers = match read_headers(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(status) => return self.host_fault("request headers", status),
        };
        let mut exchange = match self.engine.start(route_name, headers) {
            Start::Run(exchange) => exchange,
            Start::Pass => return Action::Continue,
            Start::Respond(reply) => return self.respond(&reply),
        };
        let outcome = exchange.on_request_headers();
        self.exchange = Some(exchange);
        if let Action::Pause = self.settle(MapType::HttpRequestHeaders, outcome) {
            return Action::Pause;
        }
        if !self.awaiting_body(true) {
            return Action::Continue;
        }
        if end_of_stream {
            return self.finish_request_body(&[]);
        }
        // Hold the headers until the body is complete, so the body phase can
        // still edit them or reply before the upstream sees anything.
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.awaiting_body(true) {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause; // Envoy buffers until the end.
        }
        match read_body(BufferType::HttpRequestBody, body_size) {
            Ok(body) => self.finish_request_body(&body),
            Err(status) => self.host_fault("request body", status),
        }
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        if !self.awaiting_body(true) {
            return Action::Continue;
        }
        match read_body(BufferType::HttpRequestBody, usize::MAX) {
            Ok(body) => self.finish_request_body(&body),
            Err(status) => self.host_fault("request body", status),
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if self.replied || !self.exchange.as_ref().is_some_and(|x| x.acts_on_response()) {
            return Action::Continue;
        }
        let reads = self
            .exchange
            .as_ref()
            .is_some_and(|x| x.reads_response_headers());
        let headers = match reads.then(|| read_headers(MapType::HttpResponseHeaders)) {
            None => HeaderMap::new(),
            Some(Ok(headers)) => headers,
            Some(Err(status)) => return self.host_fault("response headers", status),
        };
        let Some(outcome) = self
            .exchange
            .as_mut()
            .map(|x| x.on_response_headers(headers))
        else {
            return Action::Continue;
        };
        if let Action::Pause = self.settle(MapType::HttpResponseHeaders, outcome) {
            return Action::Pause;
        }
        if !self.awaiting_body(false) {
            return Action::Continue;
        }
        if end_of_stream {
            return self.finish_response_body(&[]);
        }
        Action::Pause
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.awaiting_body(false) {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        match read_body(BufferType::HttpResponseBody, body_size) {
            Ok(body) => self.finish_response_body(&body),
            Err(status) => self.host_fault("response body", status),
        }
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        if !self.awaiting_body(false) {
            return Action::Continue;
        }
        match read_body(BufferType::HttpResponseBody, usize::MAX) {
            Ok(body) => self.finish_response_body(&body),
            Err(status) => self.host_fault("response body", status),
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
