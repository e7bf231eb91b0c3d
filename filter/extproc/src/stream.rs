//! One ext_proc stream (one HTTP request): `ProcessingRequest` in,
//! `ProcessingResponse` out, the executor deciding in between.
//!
//! Synchronous and free of gRPC, so the protocol logic is tested directly.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request::Request as In, processing_response::Response as Out, BodyResponse,
    CommonResponse, HeadersResponse, HttpHeaders, ProcessingRequest, ProcessingResponse,
    TrailersResponse,
};
use envoy_types::pb::google::protobuf::Struct;
use policy_executor::{Engine, Exchange, HeaderMutations, LocalReply, Outcome, Start};

use crate::translate;

/// A protocol fault that ends the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// The state of one stream.
pub struct StreamState {
    engine: Arc<Engine>,
    exchange: Option<Exchange>,
}

#[derive(Clone, Copy)]
enum Direction {
    Request,
    Response,
}

impl StreamState {
    /// A stream served by `engine` (a snapshot: a configuration reload does
    /// not change a request already in flight).
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            exchange: None,
        }
    }

    /// Answers one message.
    pub fn process(
        &mut self,
        request: ProcessingRequest,
    ) -> Result<ProcessingResponse, ProtocolError> {
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
        Ok(match message {
            In::RequestHeaders(headers) => self.request_headers(&headers, &attributes),
            In::RequestBody(body) => self.body(Direction::Request, &body.body),
            In::ResponseHeaders(headers) => self.response_headers(&headers),
            In::ResponseBody(body) => self.body(Direction::Response, &body.body),
            In::RequestTrailers(_) => respond(Out::RequestTrailers(TrailersResponse::default())),
            In::ResponseTrailers(_) => respond(Out::ResponseTrailers(TrailersResponse::default())),
        })
    }

    fn request_headers(
        &mut self,
        message: &HttpHeaders,
        attributes: &HashMap<String, Struct>,
    ) -> ProcessingResponse {
        let headers = translate::headers(message);
        let mut exchange = match self
            .engine
            .start(|| translate::route_name(attributes), headers)
        {
            Start::Run(exchange) => exchange,
            Start::Pass(rewrites) => {
                let mut response = headers_response(Direction::Request, Some(&rewrites));
                response.mode_override = Some(translate::mode_done());
                return response;
            }
            Start::Respond(reply) => return immediate(reply),
        };
        let wanted = exchange.attributes();
        if !wanted.is_empty() {
            exchange.set_connection(translate::connection(attributes, wanted));
        }
        let mut outcome = exchange.on_request_headers();
        while let Outcome::Refetch(source) = outcome {
            crate::fetch::refetch_for_request(&self.engine, &source);
            outcome = exchange.resume();
        }
        let changes = match with_body_if_ended(&mut exchange, Direction::Request, message, outcome)
        {
            Ok(changes) => changes,
            Err(reply) => return immediate(reply),
        };
        let mode = translate::mode_for(exchange.body_needs(), exchange.acts_on_response());
        self.exchange = Some(exchange);
        let mut response = headers_response(Direction::Request, Some(&changes));
        response.mode_override = Some(mode);
        response
    }

    fn response_headers(&mut self, message: &HttpHeaders) -> ProcessingResponse {
        let Some(exchange) = self.exchange.as_mut() else {
            return headers_response(Direction::Response, None);
        };
        let outcome = exchange.on_response_headers(translate::headers(message));
        match with_body_if_ended(exchange, Direction::Response, message, outcome) {
            Ok(changes) => headers_response(Direction::Response, Some(&changes)),
            Err(reply) => immediate(reply),
        }
    }

    fn body(&mut self, direction: Direction, body: &[u8]) -> ProcessingResponse {
        let outcome = match (self.exchange.as_mut(), direction) {
            (Some(exchange), Direction::Request) => exchange.on_request_body(body),
            (Some(exchange), Direction::Response) => exchange.on_response_body(body),
            (None, _) => Outcome::Continue(HeaderMutations::default()),
        };
        match outcome {
            Outcome::Continue(changes) => {
                let common = common_response(Some(&changes));
                respond(match direction {
                    Direction::Request => Out::RequestBody(BodyResponse { response: common }),
                    Direction::Response => Out::ResponseBody(BodyResponse { response: common }),
                })
            }
            Outcome::Respond(reply) => immediate(reply),
            // Only the request-headers phase waits for a fetch.
            Outcome::Refetch(_) => immediate(LocalReply::text(500, "policy engine error\n")),
        }
    }
}

/// The outcome of a headers phase, followed by the body phase over an empty
/// body when the headers end the stream and the chain reads that body: no
/// body message will come, and both phases are answered in one response.
fn with_body_if_ended(
    exchange: &mut Exchange,
    direction: Direction,
    message: &HttpHeaders,
    outcome: Outcome,
) -> Result<HeaderMutations, LocalReply> {
    let mut changes = match outcome {
        Outcome::Continue(changes) => changes,
        Outcome::Respond(reply) => return Err(reply),
        Outcome::Refetch(_) => return Err(LocalReply::text(500, "policy engine error\n")),
    };
    if !message.end_of_stream {
        return Ok(changes);
    }
    let needs = exchange.body_needs();
    let body_phase = match direction {
        Direction::Request if needs.request => exchange.on_request_body(&[]),
        Direction::Response if needs.response => exchange.on_response_body(&[]),
        _ => return Ok(changes),
    };
    match body_phase {
        Outcome::Continue(later) => changes.merge(later),
        Outcome::Respond(reply) => return Err(reply),
        Outcome::Refetch(_) => return Err(LocalReply::text(500, "policy engine error\n")),
    }
    Ok(changes)
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
