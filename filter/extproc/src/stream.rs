//! One ext_proc stream (one HTTP request): `ProcessingRequest` in,
//! `ProcessingResponse` out, the executor deciding in between.
//!
//! Synchronous and free of gRPC, so the protocol logic is tested directly.
//! A phase that waits for a service returns [`Step::Wait`]; the service
//! (`service`) sends the call or polls, and hands the result back with
//! [`ProcessingStream::on_answer`] or [`ProcessingStream::poll`].

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_request::Request as In,
    processing_response::Response as Out, BodyMutation, BodyResponse, CommonResponse,
    HeadersResponse, HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
    TrailersResponse,
};
use envoy_types::pb::google::protobuf::Struct;
use policy_executor::{
    Answer, ChunkOutcome, Engine, Exchange, HeaderMutations, LocalReply, Outcome, ResponseOutcome,
    Start, Wait,
};

use crate::translate;

/// A protocol fault that ends the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// What the stream does after a message.
#[derive(Debug)]
pub enum Step {
    /// Send this answer to Envoy.
    Reply(ProcessingResponse),
    /// The chain waits for a service: send the call, or poll.
    Wait(Wait),
}

/// Which request phase waits, and what finishing it answers.
enum Waiting {
    /// The request headers; `end_of_stream`: the (empty) body phase
    /// follows in the same answer.
    Headers { end_of_stream: bool },
    /// The empty body phase after headers that ended the stream, with the
    /// headers phase's changes.
    BodyAfterHeaders { changes: HeaderMutations },
    /// The request body.
    Body,
}

/// The state of one stream.
pub struct ProcessingStream {
    engine: Arc<Engine>,
    exchange: Option<Exchange>,
    waiting: Option<Waiting>,
}

/// A stream that goes away while it waits gives up its claims.
impl Drop for ProcessingStream {
    fn drop(&mut self) {
        if let Some(exchange) = self.exchange.as_mut().filter(|x| x.is_waiting()) {
            exchange.abandon();
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Request,
    Response,
}

impl ProcessingStream {
    /// A stream served by `engine` (a snapshot: a configuration reload does
    /// not change a request already in flight).
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            exchange: None,
            waiting: None,
        }
    }

    /// Takes one message from Envoy.
    pub fn process(&mut self, request: ProcessingRequest) -> Result<Step, ProtocolError> {
        let ProcessingRequest {
            request,
            attributes,
            ..
        } = request;
        let Some(message) = request else {
            return Err(ProtocolError(
                "a ProcessingRequest without a request".into(),
            ));
        };
        if self.waiting.is_some() {
            // Envoy waits for the answer to the message before: a new one
            // now is not the protocol.
            return Err(ProtocolError(
                "a message arrived while the previous one waits for its answer".into(),
            ));
        }
        Ok(match message {
            In::RequestHeaders(headers) => self.request_headers(&headers, &attributes),
            In::RequestBody(body) => self.request_body(&body.body),
            In::ResponseHeaders(headers) => Step::Reply(self.response_headers(&headers)),
            In::ResponseBody(body) => Step::Reply(self.response_body(&body)),
            In::RequestTrailers(_) => {
                Step::Reply(respond(Out::RequestTrailers(TrailersResponse::default())))
            }
            In::ResponseTrailers(_) => {
                Step::Reply(respond(Out::ResponseTrailers(TrailersResponse::default())))
            }
        })
    }

    /// Takes the answer to the call of the last [`Wait::Send`].
    pub fn on_answer(&mut self, answer: Answer) -> Step {
        let outcome = match self.exchange.as_mut() {
            Some(exchange) => exchange.on_answer(answer),
            None => return Step::Reply(immediate(engine_error())),
        };
        self.go_on(outcome)
    }

    /// Looks again at what the chain waits for.
    pub fn poll(&mut self) -> Step {
        let outcome = match self.exchange.as_mut() {
            Some(exchange) => exchange.poll(),
            None => return Step::Reply(immediate(engine_error())),
        };
        self.go_on(outcome)
    }

    /// Goes on with the request phase that waited.
    fn go_on(&mut self, outcome: Outcome) -> Step {
        match self.waiting.take() {
            Some(waiting) => self.settle_request(waiting, outcome),
            None => Step::Reply(immediate(engine_error())),
        }
    }

    /// Answers a request phase, or waits.
    fn settle_request(&mut self, waiting: Waiting, outcome: Outcome) -> Step {
        if let Some(line) = self.exchange.as_mut().and_then(Exchange::take_decision_log) {
            crate::decisions::write(line);
        }
        let changes = match outcome {
            Outcome::Wait(wait) => {
                self.waiting = Some(waiting);
                return Step::Wait(wait);
            }
            Outcome::Respond(reply) => return Step::Reply(immediate(reply)),
            Outcome::Continue(changes) => changes,
        };
        let Some(exchange) = self.exchange.as_mut() else {
            return Step::Reply(immediate(engine_error()));
        };
        match waiting {
            // No body message will come, and both phases are answered in
            // one response.
            Waiting::Headers {
                end_of_stream: true,
            } if exchange.body_needs().request => {
                let outcome = exchange.on_request_body(&[]);
                self.settle_request(Waiting::BodyAfterHeaders { changes }, outcome)
            }
            Waiting::Headers { .. } => Step::Reply(self.request_headers_response(changes)),
            Waiting::BodyAfterHeaders { changes: mut first } => {
                first.merge(changes);
                Step::Reply(self.request_headers_response(first))
            }
            // The body a policy wrote replaces the one Envoy holds; headers
            // it set (a model name to route on) make Envoy pick the route
            // again.
            Waiting::Body => {
                let edit = exchange.take_body_edit();
                let mut common = common_response(Some(&changes)).unwrap_or_default();
                common.clear_route_cache = !changes.is_empty();
                common.body_mutation = edit.map(body_mutation);
                Step::Reply(respond(Out::RequestBody(BodyResponse {
                    response: Some(common),
                })))
            }
        }
    }

    fn request_headers_response(&self, changes: HeaderMutations) -> ProcessingResponse {
        let mut response = headers_response(Direction::Request, Some(&changes));
        if let Some(exchange) = &self.exchange {
            response.mode_override = Some(translate::mode_for(
                exchange.body_needs(),
                exchange.acts_on_response(),
            ));
        }
        response
    }

    fn request_headers(
        &mut self,
        message: &HttpHeaders,
        attributes: &HashMap<String, Struct>,
    ) -> Step {
        let headers = translate::headers(message);
        let mut exchange = match self
            .engine
            .start(|| translate::route_name(attributes), headers)
        {
            Start::Run(exchange) => exchange,
            Start::Pass(rewrites) => {
                let mut response = headers_response(Direction::Request, Some(&rewrites));
                response.mode_override = Some(translate::mode_done());
                return Step::Reply(response);
            }
            Start::Respond(reply) => return Step::Reply(immediate(reply)),
        };
        let wanted = exchange.attributes();
        if !wanted.is_empty() {
            exchange.set_connection(translate::connection(attributes, wanted));
        }
        let outcome = exchange.on_request_headers();
        self.exchange = Some(exchange);
        let end_of_stream = message.end_of_stream;
        self.settle_request(Waiting::Headers { end_of_stream }, outcome)
    }

    fn request_body(&mut self, body: &[u8]) -> Step {
        let outcome = match self.exchange.as_mut() {
            Some(exchange) => exchange.on_request_body(body),
            None => Outcome::Continue(HeaderMutations::default()),
        };
        self.settle_request(Waiting::Body, outcome)
    }

    fn response_headers(&mut self, message: &HttpHeaders) -> ProcessingResponse {
        let Some(exchange) = self.exchange.as_mut() else {
            return headers_response(Direction::Response, None);
        };
        let mut changes = match exchange.on_response_headers(translate::headers(message)) {
            ResponseOutcome::Continue(changes) => changes,
            ResponseOutcome::Respond(reply) => return immediate(reply),
        };
        // No body message will come: the body phase runs over an empty
        // body, answered with the headers.
        if message.end_of_stream && exchange.body_needs().response {
            match exchange.on_response_body(&[]) {
                ResponseOutcome::Continue(later) => changes.merge(later),
                ResponseOutcome::Respond(reply) => return immediate(reply),
            }
        }
        headers_response(Direction::Response, Some(&changes))
    }

    fn response_body(&mut self, message: &HttpBody) -> ProcessingResponse {
        let response = self.run_response_body(message);
        // What masking found in the response: the response's own line.
        if let Some(line) = self.exchange.as_mut().and_then(Exchange::take_decision_log) {
            crate::decisions::write(line);
        }
        response
    }

    fn run_response_body(&mut self, message: &HttpBody) -> ProcessingResponse {
        let Some(exchange) = self.exchange.as_mut() else {
            return respond(Out::ResponseBody(BodyResponse::default()));
        };
        // Streamed: each chunk goes on as the streams pass it.
        if exchange.body_needs().response_streamed {
            return match exchange.on_response_chunk(&message.body, message.end_of_stream) {
                ChunkOutcome::Pass(bytes) if bytes == message.body => {
                    respond(Out::ResponseBody(BodyResponse::default()))
                }
                ChunkOutcome::Pass(bytes) => respond(Out::ResponseBody(BodyResponse {
                    response: Some(CommonResponse {
                        body_mutation: Some(body_mutation(bytes)),
                        ..Default::default()
                    }),
                })),
                ChunkOutcome::Respond(reply) => immediate(reply),
            };
        }
        match exchange.on_response_body(&message.body) {
            ResponseOutcome::Continue(changes) => {
                let edit = exchange.take_body_edit();
                let mut common = common_response(Some(&changes)).unwrap_or_default();
                common.body_mutation = edit.map(body_mutation);
                respond(Out::ResponseBody(BodyResponse {
                    response: Some(common),
                }))
            }
            ResponseOutcome::Respond(reply) => immediate(reply),
        }
    }
}

fn body_mutation(body: Vec<u8>) -> BodyMutation {
    BodyMutation {
        mutation: Some(Mutation::Body(body)),
    }
}

fn engine_error() -> LocalReply {
    LocalReply::text(500, "policy engine error\n")
}

fn respond(response: Out) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

fn common_response(changes: Option<&HeaderMutations>) -> Option<CommonResponse> {
    let header_mutation = translate::header_mutation(changes?)?;
    Some(CommonResponse {
        header_mutation: Some(header_mutation),
        ..Default::default()
    })
}

fn headers_response(direction: Direction, changes: Option<&HeaderMutations>) -> ProcessingResponse {
    let headers = HeadersResponse {
        response: common_response(changes),
    };
    respond(match direction {
        Direction::Request => Out::RequestHeaders(headers),
        Direction::Response => Out::ResponseHeaders(headers),
    })
}

fn immediate(reply: policy_executor::LocalReply) -> ProcessingResponse {
    respond(Out::ImmediateResponse(translate::immediate_response(reply)))
}
