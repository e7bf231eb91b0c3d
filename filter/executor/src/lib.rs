//! The policy executor: maps each request to its chain of policies and runs
//! the chain, independent of the host it runs in.
//!
//! Two hosts drive this crate: the Proxy-Wasm filter inside every Envoy
//! worker (`filter/wasm`) and, out of process, the `ext_proc` shim. Both only
//! translate: they read headers and bodies from their host, call the phase
//! methods of an [`Exchange`], and apply the [`Outcome`] (header changes or a
//! local reply). Every decision is made here, so the crate must not depend on
//! `proxy-wasm`, `tonic` or `tokio`, and it is unit-tested natively.
//!
//! * [`policy`]: the [`Policy`] trait, its [`Context`] and [`Action`]s.
//! * [`chain`]: the order phases run in and what a short-circuit skips.
//! * [`canonical`]: the one form of the path and host every decision is
//!   made on, and what goes upstream.
//! * [`route`]: which chain a request gets, and the fail-closed default.
//! * [`config`]: the plugin configuration and its precise errors.
//! * [`expr`]: CEL expressions over request attributes, checked when the
//!   configuration is compiled.
//! * [`credentials`]: where clients put credentials, shared by the
//!   authentication policies.
//! * [`json`]: the one strict reading of JSON bodies.
//! * [`decision`]: the decision log, a JSON line per request.
//! * [`attributes`]: the connection attributes (peer address, SPIFFE ID,
//!   TLS) hosts fetch for the expressions that read them.
//! * [`callout`]: calls policies make to services outside Envoy, and the
//!   small interface (clock, shared storage) hosts provide for them.
//! * [`remote`]: documents policies need fetched (a JWKS), fetched and
//!   refreshed over the same calls.
//! * [`metrics`]: what the engine counts, under the names both hosts
//!   export.
//! * [`registry`]: the policies a build contains.
//! * [`schema`]: the check of each instance's parameters against its schema.

pub mod attributes;
pub mod callout;
pub mod canonical;
pub mod chain;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod expr;
pub mod headers;
pub mod json;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod remote;
pub mod route;
pub mod schema;
#[cfg(feature = "test-util")]
pub mod testing;

/// For [`policy_parameters!`], which policy crates expand.
#[doc(hidden)]
pub use serde_json;

use std::borrow::Cow;
use std::sync::Arc;

pub use attributes::{
    Attribute, AttributeKind, AttributeSet, AttributeValue, Connection, SpiffeId,
};
pub use callout::{
    Answer, Call, CallFailure, CallRequest, CallResponse, Host, Service, SharedError,
};
pub use chain::{
    BodyNeeds, Chain, ChunkOutcome, Exchange, Outcome, PolicySummary, ResponseOutcome, Wait,
};
pub use config::ConfigError;
pub use expr::{EvalError, Expression, ExpressionError, Phase, JWT_CLAIMS};
pub use headers::{
    HeaderChange, HeaderEdits, HeaderMap, HeaderMutations, HeaderName, HeaderValue, HeadersMut,
    RequestTarget,
};
pub use policy::{
    Action, Body, BodyStream, Context, LocalReply, Metadata, Phases, Policy, ResponseAction,
    RouteInfo,
};
pub use registry::{
    check_reply_status, parse_duration, parse_header_map, parse_header_names, parse_params, Build,
    Entry, ParamError, PolicyFactory, Registry,
};
pub use remote::{Document, Documents, Refresher, Remote, RemoteSource};
pub use route::{LazyRouteName, RouteInput, RouteTable, Selection};

/// A compiled plugin configuration, ready to serve requests.
pub struct Engine {
    routes: RouteTable,
    remote: Arc<Remote>,
    unmatched: metrics::UnmatchedMetrics,
}

/// How a request starts.
#[allow(
    clippy::large_enum_variant,
    reason = "Run is what nearly every request gets: boxing it would cost an allocation per request"
)]
pub enum Start {
    /// Run this exchange: call [`Exchange::on_request_headers`] next.
    Run(Exchange),
    /// No chain applies and the configuration lets the request through,
    /// with these changes (the canonical path and host, when the client's
    /// differed).
    Pass(HeaderMutations),
    /// No chain applies and the configuration denies it with this reply.
    Respond(LocalReply),
}

impl Engine {
    /// Parses, validates and compiles a plugin configuration (JSON or YAML)
    /// against the policies in `registry`.
    pub fn from_config(text: &[u8], registry: &Registry) -> Result<Self, ConfigError> {
        let loads = metrics::metrics().counter(&format!("{}.config.loads", metrics::PREFIX));
        let rejections =
            metrics::metrics().counter(&format!("{}.config.rejections", metrics::PREFIX));
        match config::compile(text, registry) {
            Ok(routes) => {
                loads.increment();
                let engine = Self {
                    routes,
                    remote: Arc::default(),
                    unmatched: metrics::UnmatchedMetrics::new(),
                };
                engine.remote.prepare(&engine.remote_sources());
                Ok(engine)
            }
            Err(error) => {
                rejections.increment();
                Err(error)
            }
        }
    }

    /// Shares documents and fetch attempts through `host` (the Wasm host's
    /// shared data) rather than this process's memory. Call it before the
    /// first request.
    pub fn set_host(&mut self, host: Box<dyn Host>) {
        let remote = Remote::new(host);
        remote.prepare(&self.remote_sources());
        self.remote = Arc::new(remote);
    }

    /// Every document the configuration's policies need fetched, once each.
    pub fn remote_sources(&self) -> Vec<RemoteSource> {
        let mut sources: Vec<RemoteSource> = Vec::new();
        for chain in self.routes.chains() {
            for source in chain.remote_sources() {
                if !sources.contains(source) {
                    sources.push(source.clone());
                }
            }
        }
        sources
    }

    /// The fetched documents and the host that shares them (see
    /// [`remote`]).
    pub fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    /// Serves from the documents of the configuration this one replaces,
    /// with their fetch attempts, so that a reload neither refetches
    /// everything nor loses a fetch in flight: its answer lands in the cache
    /// the new configuration reads.
    pub fn keep_remote_of(&mut self, previous: &Engine) {
        self.remote = Arc::clone(&previous.remote);
    }

    /// The number of route entries.
    pub fn route_count(&self) -> usize {
        self.routes.entries.len()
    }

    /// The connection attributes any chain of this configuration reads. The
    /// `ext_proc` filter must send these (`request_attributes`).
    pub fn attributes(&self) -> AttributeSet {
        let logged = self
            .routes
            .decision_log
            .as_ref()
            .map_or(AttributeSet::NONE, |log| log.attributes());
        self.routes
            .chains()
            .fold(logged, |all, chain| all | chain.attributes())
    }

    /// Selects the chain for a request and starts its exchange.
    ///
    /// The request is made canonical first (see [`canonical`]): route
    /// matching, expressions and policies see only that form, and the
    /// changes that made it go upstream with the request. A path that
    /// cannot be made canonical gets 400.
    ///
    /// `route_name` reads Envoy's route name (`xds.route_name`) from the
    /// host; it is called at most once, and only if a route entry that
    /// matches on the name is reached.
    pub fn start(
        &self,
        route_name: impl FnOnce() -> Option<String>,
        mut request: HeaderMap,
    ) -> Start {
        let rewrites = match make_canonical(&mut request, self.routes.escaped_slashes) {
            Ok(rewrites) => rewrites,
            Err(error) => {
                // Without the query, which may carry a credential.
                let path = request
                    .get(":path")
                    .map(|p| p.split('?').next().unwrap_or(p));
                log::debug!("refused {path:?}: {error}");
                self.unmatched.invalid.increment();
                return Start::Respond(LocalReply::text(400, format!("bad request: {error}\n")));
            }
        };
        let mut route_name = LazyRouteName::new(route_name);
        let selection = self
            .routes
            .select(&RouteInput::from_headers(&request), &mut route_name);
        match selection {
            Selection::Chain(chain) => Start::Run(
                Exchange::new(
                    Arc::clone(chain),
                    route_name.into_fetched(),
                    request,
                    Arc::clone(&self.remote),
                    rewrites,
                )
                .with_decision_log(self.routes.decision_log.clone()),
            ),
            Selection::Allow => {
                self.unmatched.allowed.increment();
                Start::Pass(rewrites)
            }
            Selection::Deny(reply) => {
                self.unmatched.denied.increment();
                Start::Respond(reply.clone())
            }
        }
    }
}

impl Engine {
    /// Every chain's name and its policies (`name@version`, with the names
    /// of their rules), in order: the route entries', then the unmatched
    /// one's, if any.
    pub fn chain_summary(&self) -> Vec<(String, Vec<PolicySummary>)> {
        self.routes
            .chains()
            .map(|chain| (chain.name().to_owned(), chain.policies()))
            .collect()
    }

    /// Each route entry's verdict on `request`, in order, up to the first
    /// that takes it, after the request is made canonical as
    /// [`Engine::start`] makes it (an error if it cannot be).
    pub fn explain_route(
        &self,
        mut request: HeaderMap,
        route_name: Option<&str>,
    ) -> Result<Vec<route::RouteVerdict>, canonical::NotCanonical> {
        make_canonical(&mut request, self.routes.escaped_slashes)?;
        Ok(self
            .routes
            .explain(&RouteInput::from_headers(&request), route_name))
    }
}

/// Puts the canonical `:path` and `:authority` in `request`, and returns
/// the changes that made them, for the upstream.
fn make_canonical(
    request: &mut HeaderMap,
    slashes: canonical::EscapedSlashes,
) -> Result<HeaderMutations, canonical::NotCanonical> {
    let mut rewrites = HeaderMutations::default();
    let path = request.get(":path").unwrap_or("/");
    if let Cow::Owned(path) = canonical::canonical_path(path, slashes)? {
        rewrites.set(":path", &path);
        request.set(":path", &path);
    }
    let authority = request.get(":authority").unwrap_or_default();
    if let Cow::Owned(authority) = canonical::canonical_authority(authority)? {
        rewrites.set(":authority", &authority);
        request.set(":authority", &authority);
    }
    Ok(rewrites)
}
