//! What a policy is: the trait every policy crate implements, the context it
//! works on, and the actions it returns.
//!
//! A policy instance is compiled once from its configuration and then shared,
//! immutable, by every request on every worker (`Send + Sync`). Everything a
//! request carries lives in the [`Context`] passed to each phase.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::ops::BitOr;
use std::sync::Arc;

use crate::attributes::{AttributeSet, Connection};
use crate::callout::{Answer, Call, Host};
use crate::headers::{HeaderMap, HeaderMutations, HeadersMut};
use crate::remote::{Document, Remote, RemoteSource};

/// The phases of an HTTP exchange a policy can act in.
///
/// A policy declares the phases it uses so the executor can skip the rest and
/// so a chain knows, before any request, whether it must buffer a body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases(u8);

impl Phases {
    /// No phase at all.
    pub const NONE: Self = Self(0);
    /// The request headers.
    pub const REQUEST_HEADERS: Self = Self(1);
    /// The whole request body (buffered).
    pub const REQUEST_BODY: Self = Self(1 << 1);
    /// The response headers.
    pub const RESPONSE_HEADERS: Self = Self(1 << 2);
    /// The whole response body (buffered).
    pub const RESPONSE_BODY: Self = Self(1 << 3);
    /// The response body as it flows, chunk by chunk, through a
    /// [`BodyStream`] the policy gives per response
    /// ([`Policy::response_body_stream`]). A chain whose response-body
    /// policies all stream never holds the response whole; one that also
    /// has a [`Phases::RESPONSE_BODY`] policy buffers it and gives each
    /// stream the whole body as one chunk.
    pub const RESPONSE_BODY_STREAM: Self = Self(1 << 4);

    /// The header phases of a policy that may have work on the request, the
    /// response, both or neither.
    pub const fn headers(request: bool, response: bool) -> Self {
        let request = if request { Self::REQUEST_HEADERS.0 } else { 0 };
        let response = if response {
            Self::RESPONSE_HEADERS.0
        } else {
            0
        };
        Self(request | response)
    }

    /// Whether every phase in `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Phases {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// What a request phase decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Go on with the next policy; header edits made through the context stay.
    Continue,
    /// Stop the chain and answer the client with this reply. See
    /// [`crate::Exchange`] for which phases still run over it.
    Respond(LocalReply),
    /// Ask a service and wait: the host sends the call, and this phase of
    /// this policy runs again with the answer in [`Context::answer`]. Edits
    /// made so far stay. A policy may call again from the rerun (one call
    /// at a time, up to [`crate::chain::MAX_CALLS_PER_PHASE`]).
    Call(Call),
    /// The cached document of this source cannot decide the request (a
    /// token names a key the cached JWKS lacks): fetch it again if the
    /// source's `min_refetch_interval` allows (or wait for the fetch
    /// another worker is making), then run this phase of this policy again.
    /// The rerun sees [`Context::refetched`] true and must decide with what
    /// it has.
    Refresh(RemoteSource),
}

/// What a response phase decided. Response phases never wait: the upstream
/// has answered and the client is waiting for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseAction {
    /// Go on with the next policy; header edits made through the context stay.
    Continue,
    /// Replace the response with this reply.
    Respond(LocalReply),
}

impl From<ResponseAction> for Action {
    fn from(action: ResponseAction) -> Self {
        match action {
            ResponseAction::Continue => Self::Continue,
            ResponseAction::Respond(reply) => Self::Respond(reply),
        }
    }
}

/// A response produced by the filter itself rather than the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers, lower-case names, no pseudo-headers.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
}

impl LocalReply {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A reply with a plain-text body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into().into_bytes(),
        }
    }
}

/// Values that policies write for later policies in the same chain to read,
/// e.g. the identity an authentication policy established. Keys are by
/// convention `<policy>.<field>`.
pub type Metadata = BTreeMap<String, serde_json::Value>;

/// Which chain entry a request matched, for policies and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// The name of the matched entry of the plugin configuration.
    pub chain: Arc<str>,
    /// Envoy's route name (`xds.route_name`), when route matching needed it.
    pub route_name: Option<String>,
}

/// Which message the current phase is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Request,
    Response,
}

/// A whole message body as body phases see it: its bytes, after the edits
/// of the policies before, and its JSON, read at most once.
#[derive(Debug)]
pub struct Body {
    bytes: Arc<[u8]>,
    json: OnceCell<Result<serde_json::Value, String>>,
    /// A policy wrote it as strict JSON ([`Context::replace_body_json`]).
    written_json: bool,
}

impl Body {
    pub(crate) fn new(bytes: Arc<[u8]>, written_json: bool) -> Self {
        Self {
            bytes,
            json: OnceCell::new(),
            written_json,
        }
    }

    /// Whether the body is known to be JSON under the strict reading: a
    /// policy wrote it so, or it was read so already. Readers may then
    /// skip checking it again.
    pub fn is_strict_json(&self) -> bool {
        self.written_json || matches!(self.json.get(), Some(Ok(_)))
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The body as JSON, read the one strict way ([`crate::json::parse`])
    /// on first use; why not, for an empty body or one that is not such
    /// JSON.
    pub fn json(&self) -> Result<&serde_json::Value, &str> {
        self.json
            .get_or_init(|| {
                if self.bytes.iter().all(u8::is_ascii_whitespace) {
                    return Err("the body is empty".to_owned());
                }
                crate::json::parse(&self.bytes).map_err(|e| format!("the body is not JSON: {e}"))
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

/// A policy's work on one response body as it flows: given each chunk in
/// turn, it returns what to pass on now. It may hold bytes back (a match
/// may continue in the next chunk) and must pass everything on by the last
/// chunk (`end`). Memory it holds must stay bounded whatever the upstream
/// sends. An `Err` replaces the response if the client has not had any of
/// it yet, and otherwise resets the stream: either way the bytes it could
/// not pass never reach the client.
pub trait BodyStream: Send {
    /// Takes the next chunk.
    fn push(&mut self, cx: &mut Context, chunk: &[u8], end: bool) -> Result<Vec<u8>, LocalReply>;
}

/// Everything one request carries through its chain.
#[derive(Debug)]
pub struct Context {
    route: RouteInfo,
    request: HeaderMap,
    response: HeaderMap,
    /// Boxed and optional: most chains read no connection attribute.
    connection: Option<Box<Connection>>,
    metadata: Metadata,
    direction: Direction,
    pending: HeaderMutations,
    remote: Arc<Remote>,
    /// The sources refetched for this request.
    refetched: Vec<RemoteSource>,
    /// The answer to the call the running policy made, during its rerun
    /// (boxed: rare, and every request carries the field).
    answer: Option<Box<Answer>>,
    /// The expressions evaluated, on a request a host traces
    /// ([`crate::Exchange::trace`]).
    tracing: Option<Box<crate::expr::trace::Tracing>>,
    /// The whole request body, during the request-body phase.
    request_body: Option<Box<Body>>,
    /// The whole response body, during the response-body phase.
    response_body: Option<Box<Body>>,
    /// The body the running policy wrote ([`Context::replace_body`]), and
    /// whether it is strict JSON.
    body_edit: Option<(Vec<u8>, bool)>,
}

impl Context {
    pub(crate) fn new(
        route: RouteInfo,
        request: HeaderMap,
        remote: Arc<Remote>,
        pending: HeaderMutations,
    ) -> Self {
        Self {
            route,
            request,
            response: HeaderMap::new(),
            connection: None,
            metadata: Metadata::new(),
            direction: Direction::Request,
            pending,
            remote,
            refetched: Vec::new(),
            answer: None,
            tracing: None,
            request_body: None,
            response_body: None,
            body_edit: None,
        }
    }

    /// Records every expression evaluated from now on.
    pub(crate) fn start_tracing(&mut self) {
        self.tracing = Some(Box::default());
    }

    /// Where evaluations are recorded, on a traced request.
    pub(crate) fn tracing(&self) -> Option<&crate::expr::trace::Tracing> {
        self.tracing.as_deref()
    }

    /// Names the policy whose evaluations follow, on a traced request.
    pub(crate) fn trace_running(&mut self, label: &str) {
        if let Some(tracing) = &mut self.tracing {
            tracing.set_running(label);
        }
    }

    /// What was recorded so far.
    pub(crate) fn take_trace(&mut self) -> Vec<crate::expr::trace::Traced> {
        self.tracing.as_mut().map(|t| t.take()).unwrap_or_default()
    }

    /// Says which of the running policy's rules ([`Policy::rules`])
    /// decided the request, and how (`allowed`, `denied`): what
    /// `policy-tool explain` shows and `policy-tool test --coverage`
    /// counts. On a request that is not traced this costs one check.
    pub fn explain_rule(&self, rule: &str, outcome: &str) {
        if let Some(tracing) = &self.tracing {
            tracing.rule(rule, outcome);
        }
    }

    /// A copy of this context over other request headers, for evaluating
    /// expressions on a masked view of the request.
    pub(crate) fn with_request(&self, request: HeaderMap) -> Self {
        let mut copy = Self::new(
            self.route.clone(),
            request,
            Arc::clone(&self.remote),
            HeaderMutations::default(),
        );
        copy.connection = self.connection.clone();
        copy.metadata = self.metadata.clone();
        copy
    }

    /// The document fetched for `source` (one the policy listed in
    /// [`Policy::remote_sources`]), if a fetch has succeeded yet.
    pub fn document(&self, source: &RemoteSource) -> Option<Document> {
        self.remote.documents().get(source)
    }

    /// The answer to the call the running policy made ([`Action::Call`]),
    /// while its phase runs again; `None` on its first run.
    pub fn answer(&self) -> Option<&Answer> {
        self.answer.as_deref()
    }

    pub(crate) fn set_answer(&mut self, answer: Option<Answer>) {
        self.answer = answer.map(Box::new);
    }

    /// The host's clock, in milliseconds since the epoch (for caches with a
    /// time to live).
    pub fn now_millis(&self) -> u64 {
        self.remote.now()
    }

    /// The host's clock and the storage every worker of this Envoy (every
    /// thread of the shim) shares, with compare-and-swap: for state that
    /// must be counted once across workers, such as a rate limit's buckets.
    pub fn host(&self) -> &dyn Host {
        self.remote.host()
    }

    pub(crate) fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    /// Whether `source` was already refetched for this request (after an
    /// [`Action::Refresh`]), successfully or not.
    pub fn refetched(&self, source: &RemoteSource) -> bool {
        self.refetched.contains(source)
    }

    pub(crate) fn mark_refetched(&mut self, source: &RemoteSource) {
        self.refetched.push(source.clone());
    }

    /// The chain entry and Envoy route this request matched.
    pub fn route(&self) -> &RouteInfo {
        &self.route
    }

    /// The request headers, pseudo-headers included, with every edit made by
    /// earlier policies applied.
    pub fn request_headers(&self) -> &HeaderMap {
        &self.request
    }

    /// The response headers (`:status` included) once the response phases
    /// have started; empty before.
    pub fn response_headers(&self) -> &HeaderMap {
        &self.response
    }

    /// The connection attributes the host provided: those the chain's
    /// expressions read (see [`Policy::attributes`]), nothing else.
    pub fn connection(&self) -> &Connection {
        self.connection.as_deref().unwrap_or(&Connection::EMPTY)
    }

    /// Who is calling, for decision logs: the peer's SPIFFE ID, else its
    /// address, when the host provided them; `-` otherwise.
    pub fn caller(&self) -> &str {
        let connection = self.connection();
        connection
            .spiffe_id()
            .map(|id| id.uri)
            .or_else(|| connection.source_ip())
            .unwrap_or("-")
    }

    /// The headers of the message in the current phase: the request's in
    /// request phases, the response's in response phases.
    pub fn message_headers(&self) -> &HeaderMap {
        match self.direction {
            Direction::Request => &self.request,
            Direction::Response => &self.response,
        }
    }

    /// The whole body of the message in the current body phase, with the
    /// edits of the policies before; `None` outside body phases.
    pub fn body(&self) -> Option<&Body> {
        self.body_of(self.direction)
    }

    pub(crate) fn body_of(&self, direction: Direction) -> Option<&Body> {
        match direction {
            Direction::Request => self.request_body.as_deref(),
            Direction::Response => self.response_body.as_deref(),
        }
    }

    /// Replaces the body of the message in the current body phase: later
    /// policies see the new one, and the host sends it on with its
    /// `content-length` set.
    pub fn replace_body(&mut self, bytes: Vec<u8>) {
        self.body_edit = Some((bytes, false));
    }

    /// [`Context::replace_body`] with JSON the policy wrote from a document
    /// read the strict way, and that is strict JSON itself (unique member
    /// names): later policies need not check it again.
    pub fn replace_body_json(&mut self, bytes: Vec<u8>) {
        self.body_edit = Some((bytes, true));
    }

    pub(crate) fn set_body(&mut self, direction: Direction, bytes: Arc<[u8]>) {
        self.set_written_body(direction, bytes, false);
    }

    pub(crate) fn set_written_body(
        &mut self,
        direction: Direction,
        bytes: Arc<[u8]>,
        written_json: bool,
    ) {
        let body = Some(Box::new(Body::new(bytes, written_json)));
        match direction {
            Direction::Request => self.request_body = body,
            Direction::Response => self.response_body = body,
        }
    }

    /// The bytes of the current body phase's body (empty outside one).
    pub(crate) fn body_bytes(&self, direction: Direction) -> Arc<[u8]> {
        self.body_of(direction)
            .map_or_else(|| Arc::from(&[][..]), |b| Arc::clone(&b.bytes))
    }

    pub(crate) fn take_body_edit(&mut self) -> Option<(Vec<u8>, bool)> {
        self.body_edit.take()
    }

    /// Edits the headers of the message in the current phase: the request in
    /// request phases, the response in response phases.
    pub fn headers_mut(&mut self) -> HeadersMut<'_> {
        let map = match self.direction {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        };
        HeadersMut {
            map,
            changes: &mut self.pending,
        }
    }

    /// Metadata written by earlier policies.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Metadata for later policies to read.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    pub(crate) fn set_connection(&mut self, connection: Connection) {
        self.connection = Some(Box::new(connection));
    }

    pub(crate) fn begin_response(&mut self, headers: HeaderMap) {
        self.direction = Direction::Response;
        self.response = headers;
    }

    pub(crate) fn take_pending(&mut self) -> HeaderMutations {
        std::mem::take(&mut self.pending)
    }

    pub(crate) fn take_response(&mut self) -> HeaderMap {
        std::mem::take(&mut self.response)
    }
}

/// A compiled policy instance.
///
/// Each phase method runs only if [`Policy::phases`] lists its phase. Body
/// phases receive the whole body, buffered by the host. Request phases may
/// wait for a service ([`Action::Call`]); response phases may not. A policy
/// must not panic: report misconfiguration when it is built, and turn request-time
/// trouble into an [`Action::Respond`] with the right status.
///
/// A complete policy is in `docs/writing-a-policy.md`, whose example is
/// compiled as a doctest of this crate (`WritingAPolicy`, at the end of this file).
pub trait Policy: Send + Sync {
    /// The phases this instance acts in.
    fn phases(&self) -> Phases;

    /// Whether the response-headers phase reads the upstream's response
    /// headers, rather than only editing them. Reading them costs the Wasm
    /// host a host call per request, so a chain whose policies all answer
    /// `false` is handed an empty map (no `:status` either). Local replies
    /// are always seen in full.
    fn reads_response_headers(&self) -> bool {
        true
    }

    /// The names of the rules this instance decides by, for
    /// `policy-tool test --coverage`; it reports the one that decided a
    /// request with [`Context::explain_rule`].
    fn rules(&self) -> Vec<String> {
        Vec::new()
    }

    /// The connection attributes this instance reads (through
    /// [`crate::Expression`]s); the host fetches only what the chain's
    /// policies ask for.
    fn attributes(&self) -> AttributeSet {
        AttributeSet::NONE
    }

    /// The documents this instance reads with [`Context::document`]; the
    /// host fetches and refreshes them (see [`crate::remote`]).
    fn remote_sources(&self) -> Vec<RemoteSource> {
        Vec::new()
    }

    /// The request headers this instance asserts to the upstream: it sets
    /// them to a value it computed (an identity, a credential of its own)
    /// and removes them, with their `_` variants, when it cannot compute
    /// one, so the client's copy never reaches the upstream. When the
    /// policy does not run (its `when:` guard is false), the chain must do
    /// that removal for it, at the policy's place in the chain: policies
    /// before it may still need to read the client's header (a `jwt` reads
    /// the `Authorization` a later `backend-auth` replaces).
    fn asserted_headers(&self) -> Vec<crate::headers::HeaderName> {
        Vec::new()
    }

    /// Where this instance reads credentials from (an API key's header, a
    /// token's query parameter): the decision log's expressions never see
    /// those headers, and a copy of what any of them holds is redacted.
    fn credential_locations(&self) -> Vec<crate::credentials::Location> {
        Vec::new()
    }

    /// Runs when the request headers arrive.
    fn on_request_headers(&self, _cx: &mut Context) -> Action {
        Action::Continue
    }

    /// Runs once the whole request body has arrived.
    fn on_request_body(&self, _cx: &mut Context, _body: &[u8]) -> Action {
        Action::Continue
    }

    /// Runs when the response headers arrive (upstream or local reply).
    fn on_response_headers(&self, _cx: &mut Context) -> ResponseAction {
        ResponseAction::Continue
    }

    /// Runs once the whole response body has arrived.
    fn on_response_body(&self, _cx: &mut Context, _body: &[u8]) -> ResponseAction {
        ResponseAction::Continue
    }

    /// A new stream over one response's body, for a policy with the
    /// [`Phases::RESPONSE_BODY_STREAM`] phase.
    fn response_body_stream(&self) -> Option<Box<dyn BodyStream>> {
        None
    }
}

/// The guide `docs/writing-a-policy.md`, included so that its example is
/// compiled as a doctest: the guide's copy is the only one.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/writing-a-policy.md")]
pub struct WritingAPolicy;
