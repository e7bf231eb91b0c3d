//! One request through an engine, offline: the executor's own code, driven
//! as the hosts drive it, with canned answers for the calls policies make
//! and an echo upstream in Envoy's place.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use policy_executor::callout::shared_set_in;
use policy_executor::expr::trace::Traced;
use policy_executor::{
    Answer, Attribute, AttributeValue, Call, CallFailure, CallRequest, CallResponse, ChunkOutcome,
    Connection, Engine, Exchange, HeaderChange, HeaderMap, HeaderMutations, Host, LocalReply,
    Outcome, Refresher, ResponseOutcome, SharedError, Start, Wait,
};
use serde_json::{json, Value};

use crate::proto;
use crate::suite::{Callout, ExtAuthzAnswer, Failure, FailureKind, RateLimitAnswer, Request};

/// The host of the offline tool: a clock a case can set, and storage in
/// memory.
#[derive(Default)]
pub struct OfflineHost {
    now_millis: AtomicU64,
    entries: Mutex<HashMap<String, (Vec<u8>, u32)>>,
}

impl OfflineHost {
    /// Sets the clock.
    pub fn set_now_millis(&self, millis: u64) {
        self.now_millis.store(millis, Ordering::Relaxed);
    }
}

impl Host for OfflineHost {
    fn now_millis(&self) -> u64 {
        self.now_millis.load(Ordering::Relaxed)
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        shared_set_in(&mut entries, key, value, cas)
    }
}

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Its request headers, pseudo-headers included, in order.
    pub headers: Vec<(String, String)>,
    /// Its request body.
    pub body: Vec<u8>,
}

impl Upstream {
    /// The first value of `name`, or all values joined with `,` as the echo
    /// upstream reports them.
    /// `host` is the request's `:authority`, as Envoy sends it over HTTP/1.
    pub fn header(&self, name: &str) -> Option<String> {
        let name = if name.eq_ignore_ascii_case("host") {
            ":authority"
        } else {
            name
        };
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

/// What came of a request.
#[derive(Debug, Clone)]
pub struct Served {
    /// The status the client got.
    pub status: u16,
    /// The response headers the client got.
    pub headers: Vec<(String, String)>,
    /// The body the client got.
    pub body: Vec<u8>,
    /// What the upstream received, if the request reached it.
    pub upstream: Option<Upstream>,
    /// The request's decision-log line, if the configuration logs it.
    pub decision: Option<Value>,
    /// The calls the chain made and the answers it got, in order.
    pub calls: Vec<String>,
    /// Changes the chain made to the request headers.
    pub request_changes: HeaderMutations,
    /// Changes the chain made to the response headers.
    pub response_changes: HeaderMutations,
    /// What the chain recorded of its decisions: the expressions it
    /// evaluated, with their parts' values, and the policies' reasons
    /// (when traced).
    pub trace: Vec<Traced>,
}

impl Served {
    /// The values of response header `name`, joined with `,` as HTTP
    /// clients read them.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

/// The header the echo upstream answers with, as text, instead of its
/// description of the request (as `local-envoy`'s echo upstream does).
const RESPOND_WITH: &str = "x-echo-respond-with";
/// The echo's content type for the canned answer.
const CONTENT_TYPE: &str = "x-echo-content-type";
/// A content encoding on the canned answer.
const CONTENT_ENCODING: &str = "x-echo-content-encoding";
/// The canned answer in chunks of this many bytes.
const CHUNK_BYTES: &str = "x-echo-chunk-bytes";

/// The `:authority` of a request without a `host` header: the address of
/// `make run`'s Envoy.
pub const DEFAULT_AUTHORITY: &str = "127.0.0.1:10000";

/// How many times a waiting chain is looked at before the tool gives up:
/// an answer that never comes is a fault in the suite, not a hang.
const MAX_STEPS: usize = 64;

/// Runs `request` through `engine`.
pub fn run(
    engine: &Engine,
    host: &OfflineHost,
    envoy_routes: &std::collections::BTreeMap<String, String>,
    callouts: &[Callout],
    request: &Request,
    sequence: u64,
    trace: bool,
) -> Result<Served, String> {
    let now = request
        .clock
        .map_or_else(system_millis, |s| s.saturating_mul(1_000));
    host.set_now_millis(now);
    let mut body = request.body().unwrap_or_default();
    let headers = request_headers(request, sequence, body.len());
    let path = request.path.split('?').next().unwrap_or_default();
    let route_name = envoy_routes
        .iter()
        .filter(|(_, prefix)| path.starts_with(prefix.as_str()))
        .max_by_key(|(_, prefix)| prefix.len())
        .map(|(name, _)| name.clone());
    let mut calls = Vec::new();
    let mut answer = |call: &Call| {
        let answer = canned(callouts, call);
        calls.push(describe(call, &answer));
        answer
    };
    // Documents (a JWKS) are fetched up front, as the hosts' refreshers do.
    let mut refresher = Refresher::default();
    let mut fetch_documents = |answer: &mut Answerer<'_>| {
        let sources = engine.remote_sources();
        for (source, call) in refresher.tick(engine.remote(), &sources) {
            let reply = answer(&call);
            refresher.on_answer(engine.remote(), &source, &reply);
        }
    };
    fetch_documents(&mut answer);

    let mut exchange = match engine.start(|| route_name, HeaderMap::from_pairs(headers.clone())) {
        Start::Respond(reply) => return Ok(local(reply, None, calls)),
        Start::Pass(rewrites) => {
            let upstream = Upstream {
                headers: apply(headers, &rewrites),
                body,
            };
            return Ok(upstream_reply(upstream, rewrites, calls));
        }
        Start::Run(exchange) => exchange,
    };
    if trace {
        exchange.trace();
    }
    let mut connection = Connection::EMPTY;
    let address = request.peer.address.as_deref().unwrap_or("127.0.0.1:50000");
    connection.insert(
        Attribute::SourceAddress,
        AttributeValue::Text(address.into()),
    );
    if let Some(san) = &request.peer.uri_san {
        connection.insert(Attribute::PeerUriSan, AttributeValue::Text(san.clone()));
    }
    let mtls = request.peer.uri_san.is_some();
    connection.insert(Attribute::Mtls, AttributeValue::Bool(mtls));
    exchange.set_connection(connection);

    let first = exchange.on_request_headers();
    let mut changes = settle(&mut exchange, first, &mut answer, &mut fetch_documents)
        .map_err(|reply| (reply, None));
    if let Ok(so_far) = &mut changes {
        if exchange.body_needs().request {
            let outcome = exchange.on_request_body(&body);
            match settle(&mut exchange, outcome, &mut answer, &mut fetch_documents) {
                Ok(later) => {
                    so_far.merge(later);
                    if let Some(edit) = exchange.take_body_edit() {
                        body = edit;
                    }
                }
                Err(reply) => changes = Err((reply, Some(so_far.clone()))),
            }
        }
    }
    let request_changes = match changes {
        Ok(changes) => changes,
        Err((reply, _)) => {
            let decision = take_decision(&mut exchange);
            let mut result = local(reply, decision, calls);
            result.trace = exchange.take_trace();
            return Ok(result);
        }
    };
    // The request's line; a response can add a second (masking findings),
    // which the tool's expectations do not read.
    let decision = take_decision(&mut exchange);
    let upstream = Upstream {
        headers: apply(headers, &request_changes),
        body,
    };
    let (status, mut response_headers, mut response_body) = echo(&upstream);
    let mut response_changes = HeaderMutations::default();
    if exchange.acts_on_response() {
        let mut with_status = vec![(":status".to_owned(), status.to_string())];
        with_status.extend(response_headers.iter().cloned());
        let outcome = exchange.on_response_headers(HeaderMap::from_pairs(with_status));
        let needs = exchange.body_needs();
        let outcome = match outcome {
            // As the hosts do: chunk by chunk, in the echo's chunks.
            ResponseOutcome::Continue(changes) if needs.response_streamed => {
                let size = upstream
                    .header(CHUNK_BYTES)
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(usize::MAX)
                    .max(1);
                let chunks: Vec<Vec<u8>> = response_body.chunks(size).map(<[u8]>::to_vec).collect();
                let mut passed = Vec::new();
                let mut refused = None;
                for (i, chunk) in chunks.iter().enumerate() {
                    match exchange.on_response_chunk(chunk, i + 1 == chunks.len()) {
                        ChunkOutcome::Pass(bytes) => passed.extend(bytes),
                        ChunkOutcome::Respond(reply) => {
                            refused = Some(reply);
                            break;
                        }
                    }
                }
                if chunks.is_empty() {
                    if let ChunkOutcome::Pass(bytes) = exchange.on_response_chunk(&[], true) {
                        passed.extend(bytes);
                    }
                }
                response_body = passed;
                match refused {
                    Some(reply) => ResponseOutcome::Respond(reply),
                    None => ResponseOutcome::Continue(changes),
                }
            }
            ResponseOutcome::Continue(changes) if needs.response => {
                let later = exchange.on_response_body(&response_body);
                if let Some(edit) = exchange.take_body_edit() {
                    response_body = edit;
                }
                match later {
                    ResponseOutcome::Continue(more) => {
                        let mut all = changes;
                        all.merge(more);
                        ResponseOutcome::Continue(all)
                    }
                    reply => reply,
                }
            }
            outcome => outcome,
        };
        match outcome {
            ResponseOutcome::Continue(changes) => response_changes = changes,
            ResponseOutcome::Respond(reply) => {
                let mut result = local(reply, decision, calls);
                result.upstream = Some(upstream);
                result.request_changes = request_changes;
                result.trace = exchange.take_trace();
                return Ok(result);
            }
        }
    }
    response_headers = apply(response_headers, &response_changes);
    Ok(Served {
        status,
        headers: response_headers,
        body: response_body,
        upstream: Some(upstream),
        decision,
        calls,
        request_changes,
        response_changes,
        trace: exchange.take_trace(),
    })
}

/// Gives each call its canned answer.
type Answerer<'a> = dyn FnMut(&Call) -> Answer + 'a;

/// Follows a request phase's outcome through its waits to the changes it
/// makes, or the reply it gives.
fn settle(
    exchange: &mut Exchange,
    mut outcome: Outcome,
    answer: &mut Answerer<'_>,
    fetch_documents: &mut dyn FnMut(&mut Answerer<'_>),
) -> Result<HeaderMutations, LocalReply> {
    for _ in 0..MAX_STEPS {
        outcome = match outcome {
            Outcome::Continue(changes) => return Ok(changes),
            Outcome::Respond(reply) => return Err(reply),
            Outcome::Wait(Wait::Send(call)) => {
                let reply = answer(&call);
                exchange.on_answer(reply)
            }
            Outcome::Wait(Wait::Poll) => {
                fetch_documents(answer);
                exchange.poll()
            }
        };
    }
    exchange.abandon();
    Err(LocalReply::text(
        500,
        "policy-tool: the chain kept waiting (a document no canned answer gives?)\n",
    ))
}

fn take_decision(exchange: &mut Exchange) -> Option<Value> {
    exchange
        .take_decision_log()
        .and_then(|line| serde_json::from_str(&line).ok())
}

fn system_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The request headers as Envoy hands them to a filter: pseudo-headers,
/// `host` as `:authority`, and what Envoy's connection manager adds.
fn request_headers(request: &Request, sequence: u64, body_len: usize) -> Vec<(String, String)> {
    let pairs = request.headers.pairs();
    let authority = pairs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map_or(DEFAULT_AUTHORITY, |(_, v)| v);
    let mut headers = vec![
        (":authority".to_owned(), authority.to_owned()),
        (":path".to_owned(), request.path.clone()),
        (":method".to_owned(), request.method.clone()),
        (":scheme".to_owned(), "http".to_owned()),
    ];
    // What Envoy's connection manager sets replaces the client's copy.
    let set_by_envoy = ["host", "x-forwarded-proto", "x-request-id"];
    for (name, value) in pairs {
        if !set_by_envoy.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            headers.push((name.to_owned(), value.to_owned()));
        }
    }
    let has_length = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    if body_len > 0 && !has_length {
        headers.push(("content-length".into(), body_len.to_string()));
    }
    headers.push(("x-forwarded-proto".into(), "http".into()));
    headers.push(("x-request-id".into(), format!("offline-{sequence}")));
    headers
}

/// `headers` with `changes` applied, as a host applies them.
fn apply(mut headers: Vec<(String, String)>, changes: &HeaderMutations) -> Vec<(String, String)> {
    for (name, change) in changes.iter() {
        let same = |n: &String| n.eq_ignore_ascii_case(name);
        match change {
            HeaderChange::Remove => headers.retain(|(n, _)| !same(n)),
            HeaderChange::Replace(values) => {
                let at = headers.iter().position(|(n, _)| same(n));
                headers.retain(|(n, _)| !same(n));
                let at = at.unwrap_or(headers.len()).min(headers.len());
                for (i, value) in values.iter().enumerate() {
                    headers.insert(at + i, (name.to_owned(), value.clone()));
                }
            }
            HeaderChange::Append(values) => {
                headers.extend(values.iter().map(|v| (name.to_owned(), v.clone())));
            }
        }
    }
    headers
}

/// The echo upstream's answer: a JSON description of the request, or the
/// text `x-echo-respond-with` asks for.
fn echo(upstream: &Upstream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    if let Some(text) = upstream.header(RESPOND_WITH) {
        let content_type = upstream
            .header(CONTENT_TYPE)
            .unwrap_or_else(|| "text/plain".to_owned());
        let mut headers = vec![("content-type".to_owned(), content_type)];
        if let Some(encoding) = upstream.header(CONTENT_ENCODING) {
            headers.push(("content-encoding".to_owned(), encoding));
        }
        return (200, headers, text.replace("\\n", "\n").into_bytes());
    }
    let mut described = serde_json::Map::new();
    let names = upstream.headers.iter().map(|(n, _)| n.as_str());
    for name in names.filter(|n| !n.starts_with(':')).chain(["host"]) {
        if let Some(value) = upstream.header(name) {
            described.insert(name.to_owned(), json!(value));
        }
    }
    let body = json!({
        "method": upstream.header(":method"),
        "path": upstream.header(":path"),
        "headers": described,
        "body": String::from_utf8_lossy(&upstream.body),
    });
    let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    (200, headers, body.to_string().into_bytes())
}

fn upstream_reply(upstream: Upstream, changes: HeaderMutations, calls: Vec<String>) -> Served {
    let (status, headers, body) = echo(&upstream);
    Served {
        status,
        headers,
        body,
        upstream: Some(upstream),
        decision: None,
        calls,
        request_changes: changes,
        response_changes: HeaderMutations::default(),
        trace: Vec::new(),
    }
}

fn local(reply: LocalReply, decision: Option<Value>, calls: Vec<String>) -> Served {
    Served {
        status: reply.status,
        headers: reply.headers,
        body: reply.body,
        upstream: None,
        decision,
        calls,
        request_changes: HeaderMutations::default(),
        response_changes: HeaderMutations::default(),
        trace: Vec::new(),
    }
}

/// The first canned answer that matches `call`; a call none matches is
/// unreachable, as a call to a cluster Envoy lacks.
fn canned(callouts: &[Callout], call: &Call) -> Answer {
    let (path, grpc_service, headers) = match &call.request {
        CallRequest::Http { path, headers, .. } => (Some(path.as_str()), None, headers.clone()),
        CallRequest::Grpc {
            service, message, ..
        } => (
            None,
            Some(service.as_str()),
            proto::check_request_headers(message),
        ),
    };
    let found = callouts.iter().find(|callout| {
        let m = &callout.matches;
        m.cluster
            .as_ref()
            .is_none_or(|c| *c == call.service.cluster)
            && m.path_prefix
                .as_ref()
                .is_none_or(|p| path.is_some_and(|path| path.starts_with(p.as_str())))
            && m.grpc_service
                .as_ref()
                .is_none_or(|s| grpc_service == Some(s.as_str()))
            && m.header.iter().all(|(name, value)| {
                headers
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
            })
    });
    let Some(callout) = found else {
        return Err(CallFailure::Unreachable(
            "no canned answer matches this call".into(),
        ));
    };
    if let Some(failure) = &callout.fail {
        return Err(match failure {
            Failure::Kind(FailureKind::Timeout) => CallFailure::Timeout,
            Failure::Kind(FailureKind::Unreachable) => CallFailure::Unreachable("canned".into()),
            Failure::Grpc { grpc_status } => CallFailure::from_grpc(*grpc_status, "canned"),
        });
    }
    let grpc = |body: Vec<u8>| CallResponse {
        status: 200,
        headers: Vec::new(),
        body,
    };
    if let Some(answer) = &callout.ext_authz {
        return Ok(grpc(match answer {
            ExtAuthzAnswer::Allow { allow } => proto::check_allow(
                allow.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                allow.remove.iter().map(String::as_str),
                allow.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            ),
            ExtAuthzAnswer::Deny { deny } => proto::check_deny(
                deny.status,
                deny.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                &deny.body,
            ),
        }));
    }
    if let Some(answer) = callout.rate_limit {
        return Ok(grpc(proto::rate_limit(matches!(
            answer,
            RateLimitAnswer::OverLimit
        ))));
    }
    let http = callout.http.clone().unwrap_or(crate::suite::HttpAnswer {
        status: 200,
        headers: Default::default(),
        body: String::new(),
    });
    Ok(CallResponse {
        status: http.status,
        headers: http.headers.into_iter().collect(),
        body: http.body.into_bytes(),
    })
}

/// One line for a call and its answer, for `explain` and failure reports.
fn describe(call: &Call, answer: &Answer) -> String {
    let what = match &call.request {
        CallRequest::Http { method, path, .. } => format!("HTTP {method} {path}"),
        CallRequest::Grpc {
            service, method, ..
        } => format!("gRPC {service}/{method}"),
    };
    let answer = match answer {
        Ok(response) => format!("answered {}", response.status),
        Err(failure) => format!("failed: {failure}"),
    };
    format!("{what} to cluster {}: {answer}", call.service.cluster)
}
