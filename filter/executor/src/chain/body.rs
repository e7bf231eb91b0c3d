//! Bodies around the phases: what a chain that reads a body asks of the
//! request, its size limit, the edits policies make, and the response
//! body, whole or as it flows.
//!
//! # Encodings
//!
//! A policy never reads bytes it cannot decode, and nothing it could not
//! read passes it: a masking policy that skipped a gzip body would be a
//! bypass. So, per direction:
//!
//! * **Requests**: a request whose chain reads its body and whose
//!   `content-encoding` is anything but `identity` is refused with 415
//!   before any policy runs.
//! * **Responses**: a chain that reads the response body asks the upstream
//!   for it unencoded (`accept-encoding: identity` replaces the client's);
//!   an upstream that encodes it all the same gets its response replaced
//!   with 502.
//!
//! # Edits
//!
//! A policy replaces the body of its phase with [`Context::replace_body`];
//! later policies see the new one and the host sends it on, with
//! `content-length` set to its size. A streamed response may change size
//! chunk by chunk, so its `content-length` is removed and the host frames
//! it (chunked on HTTP/1.1).

// The chain's own types and imports: this is its code, kept apart.
use super::*;
use crate::headers::HeaderValue;
use crate::policy::BodyStream;

/// The position engine replies are counted under: no policy's.
const ENGINE: usize = usize::MAX;

/// What one exchange does with bodies beyond the phases.
#[derive(Default)]
pub(super) struct Bodies {
    /// The body a policy wrote in the last body phase, for the host.
    edit: Option<Vec<u8>>,
    /// The last body phase's body was edited.
    edited: bool,
    /// The response's streams, innermost first, once its first chunk came.
    streams: Option<Vec<(usize, Box<dyn BodyStream>)>>,
    /// A stream refused the response: no later chunk passes either.
    refused: bool,
}

/// What the host does with a chunk of a streamed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Send these bytes on in place of the chunk (maybe none: the streams
    /// hold bytes back until they know more).
    Pass(Vec<u8>),
    /// A policy refused the response: replace it with this reply if the
    /// client has had nothing yet, else reset the stream.
    Respond(LocalReply),
}

/// The `content-encoding` of `headers` if it is anything but `identity`.
fn encoding(headers: &HeaderMap) -> Option<String> {
    let mut codings = headers
        .get_all("content-encoding")
        .flat_map(|v| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity");
    codings.next()
}

fn header(name: &str) -> Option<HeaderName> {
    HeaderName::parse(name).ok()
}

impl Exchange {
    fn bodies(&mut self) -> &mut Bodies {
        self.bodies.get_or_insert_with(Box::default)
    }

    /// Before the request phases of a chain that reads a body: refuses a
    /// request body it could not read, and asks the upstream for a
    /// response body it can.
    pub(super) fn prepare_bodies(&mut self) -> Option<Outcome> {
        let needs = self.chain.body_needs();
        if needs.request {
            if let Some(coding) = encoding(self.cx.request_headers()) {
                log::debug!(
                    "chain {:?}: request body encoded with {coding:?}",
                    self.chain.name
                );
                let reply = LocalReply::text(
                    415,
                    "this route reads request bodies: send them without content-encoding\n",
                );
                return Some(self.engine_reply(0, reply).into());
            }
        }
        if needs.response {
            if let (Some(name), Ok(identity)) =
                (header("accept-encoding"), HeaderValue::parse("identity"))
            {
                self.cx.headers_mut().set(&name, &identity);
            }
        }
        None
    }

    /// A reply the engine makes itself (no policy's): it goes out through
    /// the response phases of the first `outer` policies.
    fn engine_reply(&mut self, outer: usize, reply: LocalReply) -> ResponseOutcome {
        self.count_reply(ENGINE, reply.status);
        self.passed = outer;
        self.outcome_of(Some((outer, reply)))
    }

    /// A body larger than the chain takes: 413 for a request (nothing has
    /// gone upstream), 502 for a response (the client gets none of it).
    pub(super) fn refuse_oversized(&mut self, direction: Direction) -> ResponseOutcome {
        let limit = self.chain.max_body_bytes;
        log::debug!(
            "chain {:?}: a body exceeds max_body_bytes ({limit})",
            self.chain.name
        );
        match direction {
            Direction::Request => self.engine_reply(
                0,
                LocalReply::text(413, format!("request body exceeds {limit} bytes\n")),
            ),
            Direction::Response => self.engine_reply(
                self.passed,
                LocalReply::text(502, "upstream response body is too large\n"),
            ),
        }
    }

    /// After a policy's body phase: takes the body it wrote, if any, for
    /// the policies after it.
    pub(super) fn take_body_edit_of(&mut self, direction: Direction) {
        if let Some((edit, json)) = self.cx.take_body_edit() {
            self.cx.set_written_body(direction, Arc::from(edit), json);
            self.bodies().edited = true;
        }
    }

    /// After the last policy's request-body phase: an edited body goes to
    /// the host.
    pub(super) fn body_phase_done(&mut self, direction: Direction) {
        if self.bodies.as_ref().is_some_and(|b| b.edited) {
            self.bodies().edited = false;
            let body = self.cx.body_bytes(direction).to_vec();
            self.hand_over_edit(body);
        }
    }

    /// An edited body goes to the host, with its new `content-length`
    /// among the phase's header changes.
    pub(super) fn hand_over_edit(&mut self, body: Vec<u8>) {
        if let Ok(length) = HeaderValue::parse(&body.len().to_string()) {
            let name = HeaderName::engine_framing("content-length");
            self.cx.headers_mut().set(&name, &length);
        }
        self.bodies().edit = Some(body);
    }

    /// The body the last body phase wrote, when a policy replaced it: the
    /// host sends it on in place of the one it gave (its `content-length`
    /// is among the phase's header changes).
    pub fn take_body_edit(&mut self) -> Option<Vec<u8>> {
        self.bodies.as_mut().and_then(|b| b.edit.take())
    }

    /// The largest body the chain's body phases take: hosts refuse a
    /// larger one as soon as they see it ([`Exchange::refuse_oversized_body`]).
    pub fn max_body_bytes(&self) -> usize {
        self.chain.max_body_bytes
    }

    /// The host saw the request body grow past [`Exchange::max_body_bytes`]
    /// before it ended: answers 413 without reading it.
    pub fn refuse_oversized_request(&mut self) -> Outcome {
        if self.finished {
            return Outcome::Continue(HeaderMutations::default());
        }
        self.refuse_oversized(Direction::Request).into()
    }

    /// The host saw a response body it holds whole grow past
    /// [`Exchange::max_body_bytes`]: replaces the response with 502.
    pub fn refuse_oversized_response(&mut self) -> ResponseOutcome {
        if self.finished {
            return ResponseOutcome::Continue(HeaderMutations::default());
        }
        self.refuse_oversized(Direction::Response)
    }

    /// Checks the response headers of a chain that reads the response
    /// body: an encoding it cannot read replaces the response with 502.
    /// A streamed body may change size: its `content-length` goes.
    pub(super) fn check_response_framing(&mut self) -> Option<ResponseOutcome> {
        let needs = self.chain.body_needs();
        if !needs.response {
            return None;
        }
        if let Some(coding) = encoding(self.cx.response_headers()) {
            log::warn!(
                "chain {:?}: the upstream encoded its response with {coding:?} although asked not to",
                self.chain.name
            );
            let reply = LocalReply::text(502, "upstream response body cannot be read\n");
            return Some(self.engine_reply(self.passed, reply));
        }
        if needs.response_streamed {
            let name = HeaderName::engine_framing("content-length");
            self.cx.headers_mut().remove(&name);
        }
        None
    }

    /// Runs the response-body policies of the first `outer` entries,
    /// innermost first, over a whole body: `Ok` with the body to send (and
    /// whether it changed), or the position and reply of a policy that
    /// refused it.
    pub(super) fn run_whole_response_body(
        &mut self,
        outer: usize,
        body: Vec<u8>,
    ) -> Result<(Vec<u8>, bool), (usize, LocalReply)> {
        let chain = Arc::clone(&self.chain);
        let entries = chain.entries.get(..outer).unwrap_or(&chain.entries);
        let mut body: Arc<[u8]> = Arc::from(body);
        let mut written_json = false;
        let mut edited = false;
        for (position, entry) in entries.iter().enumerate().rev() {
            if self.is_skipped(position) {
                continue;
            }
            self.cx.trace_running(&entry.label);
            self.cx
                .set_written_body(Direction::Response, Arc::clone(&body), written_json);
            let refused = if entry.phases.contains(Phases::RESPONSE_BODY) {
                let action = entry.policy.on_response_body(&mut self.cx, &body);
                if let Some((edit, json)) = self.cx.take_body_edit() {
                    body = Arc::from(edit);
                    written_json = json;
                    edited = true;
                }
                match action {
                    ResponseAction::Continue => None,
                    ResponseAction::Respond(reply) => Some(reply),
                }
            } else if entry.phases.contains(Phases::RESPONSE_BODY_STREAM) {
                match entry.policy.response_body_stream() {
                    Some(mut stream) => match stream.push(&mut self.cx, &body, true) {
                        Ok(out) => {
                            if *out != *body {
                                edited = true;
                                written_json = false;
                                body = Arc::from(out);
                            }
                            None
                        }
                        Err(reply) => Some(reply),
                    },
                    None => Some(no_stream(&entry.label)),
                }
            } else {
                None
            };
            if let Some(reply) = refused {
                log::debug!(
                    "chain {:?}: {} replaced the response with {}",
                    chain.name,
                    entry.label,
                    reply.status
                );
                return Err((position, reply));
            }
        }
        Ok((body.to_vec(), edited))
    }

    /// Runs one chunk of a streamed response body through the streams of
    /// the policies the response passes, innermost first; `end` on the last
    /// chunk (pass an empty one if the stream ended with trailers).
    pub fn on_response_chunk(&mut self, chunk: &[u8], end: bool) -> ChunkOutcome {
        if self.bodies.as_ref().is_some_and(|b| b.refused) {
            return ChunkOutcome::Respond(LocalReply::text(502, "upstream response refused\n"));
        }
        if self.finished {
            return ChunkOutcome::Pass(chunk.to_vec());
        }
        let chain = Arc::clone(&self.chain);
        if self.bodies().streams.is_none() {
            let mut streams = Vec::new();
            let entries = chain.entries.get(..self.passed).unwrap_or(&chain.entries);
            for (position, entry) in entries.iter().enumerate().rev() {
                if self.is_skipped(position) || !entry.phases.contains(Phases::RESPONSE_BODY_STREAM)
                {
                    continue;
                }
                match entry.policy.response_body_stream() {
                    Some(stream) => streams.push((position, stream)),
                    None => return self.refuse_chunk(no_stream(&entry.label)),
                }
            }
            self.bodies().streams = Some(streams);
        }
        let mut streams = self
            .bodies
            .as_mut()
            .and_then(|b| b.streams.take())
            .unwrap_or_default();
        let mut bytes = chunk.to_vec();
        let mut refused = None;
        for (position, stream) in &mut streams {
            if let Some(entry) = chain.entries.get(*position) {
                self.cx.trace_running(&entry.label);
            }
            match stream.push(&mut self.cx, &bytes, end) {
                Ok(out) => bytes = out,
                Err(reply) => {
                    refused = Some(reply);
                    break;
                }
            }
        }
        self.bodies().streams = Some(streams);
        match refused {
            Some(reply) => self.refuse_chunk(reply),
            None => {
                if end {
                    self.response_decided();
                }
                ChunkOutcome::Pass(bytes)
            }
        }
    }

    /// The response body has passed every policy: its findings, if any,
    /// make a second decision-log line for the host to take.
    pub(super) fn response_decided(&mut self) {
        let line = self
            .logging
            .as_ref()
            .and_then(|logging| logging.log.record_response(&self.cx));
        if let (Some(line), Some(logging)) = (line, self.logging.as_mut()) {
            logging.line = Some(line);
        }
    }

    fn refuse_chunk(&mut self, reply: LocalReply) -> ChunkOutcome {
        log::debug!(
            "chain {:?}: a response stream was refused with {}",
            self.chain.name,
            reply.status
        );
        self.finished = true;
        self.bodies().refused = true;
        ChunkOutcome::Respond(reply)
    }
}

/// A policy declared a streamed phase but gave no stream: a bug, failed
/// closed.
fn no_stream(label: &str) -> LocalReply {
    log::error!("{label} streams response bodies but gave no stream");
    LocalReply::text(500, "policy engine error\n")
}
