//! A loopback external-authorization service for the ext-authz tests: Envoy's
//! ext_authz filter asks it about each request, over either protocol the
//! filter speaks — gRPC (`envoy.service.auth.v3.Authorization/Check`) or
//! plain HTTP/1.1 (any request is a check). It records every check, answers
//! with the decision the test sets (a fixed one, or a rule deciding per
//! request), can answer slowly, and can be taken down (gRPC: `UNAVAILABLE`;
//! HTTP: the connection closes without an answer, as a dead service would).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, NullValue, Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use serde_json::Value as Json;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

/// The longest request line or header line the HTTP server reads.
const MAX_LINE: u64 = 16 * 1024;
/// The largest request head (request line and headers) the HTTP server reads.
const MAX_HEAD: usize = 64 * 1024;
/// The largest request body the HTTP server reads.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// What the service answers to a check.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Allow the request.
    Allow {
        /// Headers the service adds to (or overwrites on) the upstream
        /// request. gRPC: `OkHttpResponse.headers`, each with append action
        /// `OVERWRITE_IF_EXISTS_OR_ADD`; HTTP: headers on the `200` answer
        /// (Envoy copies those its `allowed_upstream_headers` lets through).
        headers: Vec<(String, String)>,
        /// Headers the service removes from the upstream request. gRPC:
        /// `OkHttpResponse.headers_to_remove`; HTTP: listed, comma-separated,
        /// in an `x-envoy-auth-headers-to-remove` header on the `200` answer
        /// (left out when empty).
        remove: Vec<String>,
        /// Dynamic metadata the service returns: a JSON object, or `Null` for
        /// none. gRPC: `CheckResponse.dynamic_metadata`; HTTP: ignored.
        /// Anything but an object is ignored too.
        metadata: Json,
    },
    /// Deny the request.
    Deny {
        /// The HTTP status Envoy answers the client with. gRPC: the
        /// `DeniedHttpResponse` status, with the check's gRPC status
        /// `PERMISSION_DENIED` (7); HTTP: the status of the answer itself
        /// (which must not be `200`, or Envoy would allow).
        status: u16,
        /// Headers for Envoy's answer to the client.
        headers: Vec<(String, String)>,
        /// The body of Envoy's answer to the client.
        body: String,
    },
}

impl Decision {
    /// Allow, changing nothing and returning no metadata.
    pub fn allow() -> Self {
        Decision::Allow {
            headers: Vec::new(),
            remove: Vec::new(),
            metadata: Json::Null,
        }
    }

    /// Deny with `status`, no headers and an empty body.
    pub fn deny(status: u16) -> Self {
        Decision::Deny {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }
}

/// What the service was asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Check {
    /// The request's method.
    pub method: String,
    /// The request's path, with its query string. HTTP: the request target
    /// of the check, i.e. with any `path_prefix` Envoy adds.
    pub path: String,
    /// The request's host (HTTP: the check's `Host` header).
    pub host: String,
    /// The request's headers, names lower-case; values of a repeated header
    /// joined with `,`. gRPC: from `headers` and, when Envoy sends raw
    /// headers, `header_map` (pseudo-headers such as `:path` included as
    /// Envoy sends them).
    pub headers: BTreeMap<String, String>,
    /// The request's body, as far as Envoy sent it (gRPC: `raw_body` when
    /// not empty, else `body`).
    pub body: Vec<u8>,
    /// The route's or filter's `context_extensions` (gRPC only).
    pub context_extensions: BTreeMap<String, String>,
    /// The client's address, without port (gRPC only: the source peer's
    /// socket address).
    pub source_address: String,
    /// The check call's own gRPC metadata that carries trace context
    /// (`traceparent`, `tracestate`; gRPC only).
    pub trace_metadata: BTreeMap<String, String>,
}

/// Decides each check.
type Rule = Arc<dyn Fn(&Check) -> Decision + Send + Sync>;

/// A rule answering `decision` to every check.
fn fixed(decision: Decision) -> Rule {
    Arc::new(move |_: &Check| decision.clone())
}

struct State {
    rule: Mutex<Rule>,
    checks: Mutex<Vec<Check>>,
    delay: Mutex<Duration>,
    down: AtomicBool,
    stopped: AtomicBool,
    /// HTTP: the open connections, so dropping the server can close them.
    connections: Mutex<HashMap<u64, TcpStream>>,
    next_connection: AtomicU64,
}

impl State {
    fn new(decision: Decision) -> Self {
        Self {
            rule: Mutex::new(fixed(decision)),
            checks: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
            down: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
        }
    }

    fn record(&self, check: Check) {
        lock(&self.checks).push(check);
    }

    fn decide(&self, check: &Check) -> Decision {
        // Called outside the lock: a rule may take its time.
        let rule: Rule = lock(&self.rule).clone();
        rule(check)
    }

    fn delay(&self) -> Duration {
        *lock(&self.delay)
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running authorization service; stops when dropped.
pub struct AuthzServer {
    addr: SocketAddr,
    state: Arc<State>,
    /// gRPC: tells the server to stop. `None` for the HTTP server.
    grpc_stop: Option<oneshot::Sender<()>>,
}

impl AuthzServer {
    /// Starts the gRPC service (`envoy.service.auth.v3.Authorization`,
    /// cleartext HTTP/2) on a free loopback port, answering `decision` to
    /// every check until told otherwise. It runs on its own thread, with its
    /// own Tokio runtime.
    pub fn start_grpc(decision: Decision) -> std::io::Result<Self> {
        let state = Arc::new(State::new(decision));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("authz-grpc-worker")
            .enable_all()
            .build()?;
        let std_listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = std_listener.local_addr()?;
        std_listener.set_nonblocking(true)?;
        let listener = {
            // Registers the socket with this runtime's reactor.
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let service = AuthorizationServer::new(GrpcAuthz {
            state: Arc::clone(&state),
        });
        thread::Builder::new()
            .name("authz-grpc".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    // Each check is a small frame waiting on a reply: Nagle's
                    // algorithm would hold it for the peer's delayed ACK.
                    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                    let _ = Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, async move {
                            // A dropped sender stops the server too.
                            let _ = stopped.await;
                        })
                        .await;
                });
                // Dropping the runtime here ends whatever is still in flight.
            })?;
        Ok(Self {
            addr,
            state,
            grpc_stop: Some(stop),
        })
    }

    /// Starts the HTTP/1.1 service on a free loopback port, answering
    /// `decision` to every check until told otherwise. Any request, whatever
    /// its method and path, is a check; connections are kept alive as long
    /// as Envoy wants.
    pub fn start_http(decision: Decision) -> std::io::Result<Self> {
        let state = Arc::new(State::new(decision));
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let serving = Arc::clone(&state);
        thread::Builder::new()
            .name("authz-http".to_owned())
            .spawn(move || {
                for stream in listener.incoming() {
                    if serving.is_stopped() {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    if serving.is_down() {
                        // Closed without an answer.
                        continue;
                    }
                    let id = serving.next_connection.fetch_add(1, Ordering::SeqCst);
                    match stream.try_clone() {
                        Ok(clone) => {
                            lock(&serving.connections).insert(id, clone);
                        }
                        Err(_) => continue,
                    }
                    let connection = Arc::clone(&serving);
                    let spawned = thread::Builder::new()
                        .name("authz-http-conn".to_owned())
                        .spawn(move || {
                            let _registered = Registered {
                                state: &connection,
                                id,
                            };
                            serve_http(stream, &connection);
                        });
                    if spawned.is_err() {
                        forget(&serving, id);
                    }
                }
            })?;
        Ok(Self {
            addr,
            state,
            grpc_stop: None,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `decision` to every check from now on (replacing any rule).
    pub fn set_decision(&self, decision: Decision) {
        *lock(&self.state.rule) = fixed(decision);
    }

    /// Decides each check with `rule` from now on (replacing any fixed
    /// decision). The rule runs on the server's threads; it must not panic.
    pub fn set_rule(&self, rule: impl Fn(&Check) -> Decision + Send + Sync + 'static) {
        *lock(&self.state.rule) = Arc::new(rule);
    }

    /// Answers each check only after `delay` (the check is recorded on
    /// arrival, before the delay). `Duration::ZERO` answers at once.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// Takes the service down (`true`) or brings it back. While down, gRPC
    /// checks fail with `UNAVAILABLE` and HTTP connections close without an
    /// answer; neither is recorded.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// How many checks the service received (while up).
    pub fn checks(&self) -> usize {
        lock(&self.state.checks).len()
    }

    /// The latest check received, if any.
    pub fn last_check(&self) -> Option<Check> {
        lock(&self.state.checks).last().cloned()
    }

    /// Every check received, oldest first.
    pub fn all_checks(&self) -> Vec<Check> {
        lock(&self.state.checks).clone()
    }
}

impl Drop for AuthzServer {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        match self.grpc_stop.take() {
            Some(stop) => {
                let _ = stop.send(());
            }
            None => {
                // Ends the kept-alive connections (their reads return)...
                for (_, stream) in lock(&self.state.connections).drain() {
                    let _ = stream.shutdown(Shutdown::Both);
                }
                // ...and wakes the accept loop so it sees the flag.
                let _ = TcpStream::connect(self.addr);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------

struct GrpcAuthz {
    state: Arc<State>,
}

#[tonic::async_trait]
impl Authorization for GrpcAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        if self.state.is_down() {
            return Err(tonic::Status::unavailable(
                "the authorization service is down",
            ));
        }
        let mut check = grpc_check(request.get_ref());
        for name in ["traceparent", "tracestate"] {
            if let Some(value) = request.metadata().get(name).and_then(|v| v.to_str().ok()) {
                check
                    .trace_metadata
                    .insert(name.to_owned(), value.to_owned());
            }
        }
        self.state.record(check.clone());
        let delay = self.state.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let decision = self.state.decide(&check);
        Ok(tonic::Response::new(check_response(decision)))
    }
}

/// What a gRPC `CheckRequest` asks.
fn grpc_check(request: &CheckRequest) -> Check {
    let Some(attributes) = request.attributes.as_ref() else {
        return Check::default();
    };
    let context_extensions = attributes
        .context_extensions
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let source_address = attributes
        .source
        .as_ref()
        .and_then(|peer| peer.address.as_ref())
        .and_then(|address| match &address.address {
            Some(Address::SocketAddress(socket)) => Some(socket.address.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let Some(http) = attributes
        .request
        .as_ref()
        .and_then(|request| request.http.as_ref())
    else {
        return Check {
            context_extensions,
            source_address,
            ..Check::default()
        };
    };
    let mut headers = BTreeMap::new();
    for (name, value) in &http.headers {
        add_header(&mut headers, name.to_ascii_lowercase(), value);
    }
    // With `encode_raw_headers`, Envoy sends these instead of `headers`.
    if let Some(map) = &http.header_map {
        for header in &map.headers {
            let value = if header.raw_value.is_empty() {
                header.value.clone()
            } else {
                String::from_utf8_lossy(&header.raw_value).into_owned()
            };
            add_header(&mut headers, header.key.to_ascii_lowercase(), &value);
        }
    }
    let body = if http.raw_body.is_empty() {
        http.body.as_bytes().to_vec()
    } else {
        http.raw_body.clone()
    };
    Check {
        method: http.method.clone(),
        path: http.path.clone(),
        host: http.host.clone(),
        headers,
        body,
        context_extensions,
        source_address,
        trace_metadata: BTreeMap::new(),
    }
}

/// The gRPC answer for `decision`.
fn check_response(decision: Decision) -> CheckResponse {
    match decision {
        Decision::Allow {
            headers,
            remove,
            metadata,
        } => CheckResponse {
            status: Some(RpcStatus {
                code: tonic::Code::Ok as i32,
                message: String::new(),
                details: Vec::new(),
            }),
            dynamic_metadata: match &metadata {
                Json::Object(fields) => Some(to_struct(fields)),
                _ => None,
            },
            http_response: Some(HttpResponse::OkResponse(ok_response(&headers, remove))),
        },
        Decision::Deny {
            status,
            headers,
            body,
        } => CheckResponse {
            status: Some(RpcStatus {
                code: tonic::Code::PermissionDenied as i32,
                message: "denied".to_owned(),
                details: Vec::new(),
            }),
            dynamic_metadata: None,
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(status),
                }),
                headers: headers
                    .iter()
                    .map(|(name, value)| header_option(name, value))
                    .collect(),
                body,
            })),
        },
    }
}

#[allow(
    deprecated,
    reason = "the deprecated `dynamic_metadata` is left at its default (unset); \
              the metadata goes in CheckResponse.dynamic_metadata"
)]
fn ok_response(headers: &[(String, String)], remove: Vec<String>) -> OkHttpResponse {
    OkHttpResponse {
        headers: headers
            .iter()
            .map(|(name, value)| header_option(name, value))
            .collect(),
        headers_to_remove: remove,
        ..Default::default()
    }
}

#[allow(
    deprecated,
    reason = "the deprecated `append` is left unset: Envoy then follows `append_action`"
)]
fn header_option(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        // ext_authz reads `value`, not `raw_value`.
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// A JSON object as a `google.protobuf.Struct`.
fn to_struct(fields: &serde_json::Map<String, Json>) -> Struct {
    Struct {
        fields: fields
            .iter()
            .map(|(name, value)| (name.clone(), to_value(value)))
            .collect(),
    }
}

/// A JSON value as a `google.protobuf.Value`.
fn to_value(value: &Json) -> Value {
    let kind = match value {
        Json::Null => Kind::NullValue(NullValue::NullValue as i32),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(to_value).collect(),
        }),
        Json::Object(fields) => Kind::StructValue(to_struct(fields)),
    };
    Value { kind: Some(kind) }
}

/// Adds a header, joining a repeated one's values with `,` (as Envoy does
/// in the gRPC check's `headers`).
fn add_header(headers: &mut BTreeMap<String, String>, name: String, value: &str) {
    headers
        .entry(name)
        .and_modify(|joined| {
            joined.push(',');
            joined.push_str(value);
        })
        .or_insert_with(|| value.to_owned());
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// Forgets (and closes) a connection when its thread ends.
struct Registered<'a> {
    state: &'a State,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        forget(self.state, self.id);
    }
}

/// Forgets connection `id`, closing it.
fn forget(state: &State, id: u64) {
    if let Some(stream) = lock(&state.connections).remove(&id) {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// A request read from a connection.
struct HttpCheck {
    check: Check,
    /// Whether the connection closes after the answer.
    close: bool,
}

/// Answers the checks on one connection until either side closes it.
fn serve_http(stream: TcpStream, state: &State) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let Some(HttpCheck { check, close }) = read_request(&mut reader) else {
            return;
        };
        if state.is_down() || state.is_stopped() {
            // Closed without an answer.
            return;
        }
        state.record(check.clone());
        let delay = state.delay();
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        if state.is_stopped() {
            return;
        }
        let decision = state.decide(&check);
        let answer = http_answer(&decision, check.method == "HEAD", close);
        if writer.write_all(&answer).is_err() || writer.flush().is_err() || close {
            return;
        }
    }
}

/// Reads one line (up to [`MAX_LINE`] bytes), returning how many bytes it
/// took; `None` at the end of the stream or on an error.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> Option<usize> {
    line.clear();
    match reader.by_ref().take(MAX_LINE).read_until(b'\n', line) {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

/// Reads one HTTP/1.x request; `None` when the connection ends or the
/// request cannot be read.
fn read_request(reader: &mut impl BufRead) -> Option<HttpCheck> {
    let mut line = Vec::new();
    // Empty lines before a request line are ignored (RFC 9112, 2.2).
    let request_line = loop {
        read_line(reader, &mut line)?;
        let text = String::from_utf8_lossy(&line).trim().to_owned();
        if !text.is_empty() {
            break text;
        }
    };
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let version = parts.next().unwrap_or("HTTP/1.0").to_owned();

    let mut headers = BTreeMap::new();
    let mut head = request_line.len();
    loop {
        head += read_line(reader, &mut line)?;
        if head > MAX_HEAD {
            return None;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.is_empty() {
            break;
        }
        let (name, value) = text.split_once(':')?;
        add_header(&mut headers, name.trim().to_ascii_lowercase(), value.trim());
    }

    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|coding| coding.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(reader)?
    } else {
        let length = match headers.get("content-length") {
            Some(length) => length.trim().parse::<usize>().ok()?,
            None => 0,
        };
        if length > MAX_BODY {
            return None;
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        body
    };

    let connection = headers
        .get("connection")
        .map(|value| value.to_ascii_lowercase())
        .unwrap_or_default();
    // HTTP/1.0 keep-alive is not offered: such a connection serves one check.
    let close = version != "HTTP/1.1" || connection.split(',').any(|token| token.trim() == "close");
    let host = headers.get("host").cloned().unwrap_or_default();
    Some(HttpCheck {
        check: Check {
            method,
            path,
            host,
            headers,
            body,
            context_extensions: BTreeMap::new(),
            source_address: String::new(),
            trace_metadata: BTreeMap::new(),
        },
        close,
    })
}

/// Reads a chunked body and its trailers (which are dropped).
fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        read_line(reader, &mut line)?;
        let size = {
            let text = String::from_utf8_lossy(&line);
            let digits = text.split(';').next()?.trim();
            usize::from_str_radix(digits, 16).ok()?
        };
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                read_line(reader, &mut line)?;
                if String::from_utf8_lossy(&line).trim().is_empty() {
                    return Some(body);
                }
            }
        }
        let start = body.len();
        if start + size > MAX_BODY {
            return None;
        }
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).ok()?;
        // The CRLF ending the chunk's data.
        read_line(reader, &mut line)?;
    }
}

/// The HTTP answer for `decision`: for a `HEAD` check, without its body.
fn http_answer(decision: &Decision, head_only: bool, close: bool) -> Vec<u8> {
    let (status, mut headers, body) = match decision {
        Decision::Allow {
            headers, remove, ..
        } => {
            let mut headers = headers.clone();
            if !remove.is_empty() {
                headers.push((
                    "x-envoy-auth-headers-to-remove".to_owned(),
                    remove.join(", "),
                ));
            }
            (200, headers, "")
        }
        Decision::Deny {
            status,
            headers,
            body,
        } => (*status, headers.clone(), body.as_str()),
    };
    headers.push(("content-length".to_owned(), body.len().to_string()));
    if close {
        headers.push(("connection".to_owned(), "close".to_owned()));
    }
    let mut answer = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in &headers {
        answer.push_str(&format!("{name}: {value}\r\n"));
    }
    answer.push_str("\r\n");
    let mut answer = answer.into_bytes();
    if !head_only {
        answer.extend_from_slice(body.as_bytes());
    }
    answer
}

/// A reason phrase for `status` (Envoy ignores it; it must only be there).
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// The rule the tests and the conformance suites give the service:
/// `Bearer good` is alice (tier gold: header `x-user: alice`, `x-debug`
/// removed, metadata `{"tier": "gold"}`); anything else is refused with
/// 401, a `Bearer` challenge and the body `who are you?\n`.
pub fn alice_or_nobody(check: &Check) -> Decision {
    if check.headers.get("authorization").map(String::as_str) == Some("Bearer good") {
        Decision::Allow {
            headers: vec![("x-user".into(), "alice".into())],
            remove: vec!["x-debug".into()],
            metadata: serde_json::json!({ "tier": "gold" }),
        }
    } else {
        Decision::Deny {
            status: 401,
            headers: vec![("www-authenticate".into(), "Bearer realm=\"orders\"".into())],
            body: "who are you?\n".into(),
        }
    }
}
