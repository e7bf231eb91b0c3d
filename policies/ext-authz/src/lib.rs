//! `ext-authz`: external authorization, as Envoy's `ext_authz` filter does
//! it. Each request is sent to an authorization service (OPA, Authorino, a
//! service of your own), which allows it (with headers to add to or remove
//! from the upstream request, and metadata for later policies) or denies it
//! (with the status, headers and body the client gets).
//!
//! ```yaml
//! - name: ext-authz
//!   config:
//!     grpc: { uri: "http://authz.example:9001", cluster: authz }   # envoy.service.auth.v3.Authorization/Check
//!     # http: { uri: "http://authz.example:8000/check", cluster: authz-http,
//!     #         allowed_upstream_headers: [x-user], allowed_client_headers: [www-authenticate] }
//!     timeout: 200ms
//!     include_headers: [authorization, x-tenant]   # default: all (gRPC), authorization (HTTP)
//!     include_body: { max_bytes: 8192 }            # the chain then buffers the request body
//!     failure_mode: deny                           # or allow, when the service cannot answer
//!     cache: { key: 'request.headers["authorization"]', ttl: 30s, max_entries: 10000 }
//! ```
//!
//! The call goes through the executor's callout mechanism: the request
//! waits, nothing else does. What cannot be decided is denied
//! (`status_on_error`, 403 by default) unless `failure_mode: allow` says
//! otherwise.

mod cache;
mod grpc;
mod http;
pub mod proto;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use policy_executor::{
    check_reply_status, parse_duration, parse_header_names, parse_params, Action, Answer,
    Attribute, AttributeSet, Call, CallRequest, CallResponse, Context, Expression, HeaderEdits,
    HeaderName, HeaderValue, LocalReply, ParamError, Phase, Phases, Policy, PolicyFactory, Service,
};
use prost::Message;
use serde::Deserialize;

use cache::DecisionCache;
use grpc::grpc_decision;
use http::{http_decision, is_proxy_header, path_of};

/// The policy's factory, for a build's registry.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "ext-authz",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// Where metadata from the service goes: `ext-authz.<field>`.
const METADATA_PREFIX: &str = "ext-authz.";

/// Headers that describe a hop, not the request: never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The parameters of `ext-authz`: `grpc` or `http`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// Ask over gRPC (`envoy.service.auth.v3.Authorization`).
    grpc: Option<GrpcParams>,
    /// Ask over HTTP: a 2xx answer allows.
    http: Option<HttpParams>,
    /// How long the service may take, like `200ms` (the default) or `1s`.
    timeout: Option<String>,
    /// The request headers sent to the service (default all over gRPC,
    /// `authorization` over HTTP).
    include_headers: Option<Vec<String>>,
    /// Send the request body too.
    include_body: Option<BodyParams>,
    /// When the service cannot answer.
    #[serde(default)]
    failure_mode: FailureMode,
    /// The status of a refusal for want of an answer (default 403).
    #[cfg_attr(feature = "schema", schemars(range(min = 200, max = 599)))]
    status_on_error: Option<u16>,
    /// Sent with every gRPC check.
    #[serde(default)]
    context_extensions: BTreeMap<String, String>,
    /// Keep decisions for a while.
    cache: Option<CacheParams>,
}

/// A gRPC authorization service.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "grpc_service"))]
struct GrpcParams {
    /// `http://host:port`: the service's address (the shim connects to it;
    /// its authority is the `:authority` Envoy sends).
    uri: String,
    /// The Envoy cluster that reaches it (Wasm filter).
    cluster: String,
}

/// An HTTP authorization service.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "http_service"))]
struct HttpParams {
    /// The service's URL; its path is put before the request's path.
    uri: String,
    /// The Envoy cluster that reaches it (Wasm filter).
    cluster: String,
    /// Headers of a 2xx answer set on the upstream request.
    #[serde(default)]
    allowed_upstream_headers: Vec<String>,
    /// Headers of a refusal sent to the client (default all).
    allowed_client_headers: Option<Vec<String>>,
}

/// How much of the body is sent.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "include_body"))]
struct BodyParams {
    /// A larger body is refused with 413, unless `allow_partial`.
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    max_bytes: usize,
    /// Send the first `max_bytes` of a larger body instead.
    #[serde(default)]
    allow_partial: bool,
}

/// The decision cache.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "cache"))]
struct CacheParams {
    /// CEL: the cache key, e.g. `request.headers["authorization"]`; the
    /// request's method, host and path are always added. A key that
    /// cannot be evaluated is not cached.
    key: String,
    /// How long a decision is kept, like `30s`.
    ttl: String,
    /// Decisions kept per worker (default 10000).
    max_entries: Option<usize>,
}

/// What happens when the service cannot answer (timeout, unreachable, an
/// answer that cannot be read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", schemars(rename = "failure_mode"))]
enum FailureMode {
    /// Refuse the request: fail closed.
    #[default]
    Deny,
    /// Let it through, unauthorized; logged.
    Allow,
}

/// The protocol spoken to the service.
enum Protocol {
    Grpc,
    Http {
        /// The path prefix of the service's URL, put before the request's.
        prefix: String,
        allowed_upstream: Vec<HeaderName>,
        /// `None`: every header of the denial goes to the client.
        allowed_client: Option<Vec<HeaderName>>,
    },
}

struct ExtAuthz {
    protocol: Protocol,
    service: Service,
    timeout: std::time::Duration,
    include_headers: Option<Vec<HeaderName>>,
    body: Option<BodyParams>,
    failure_mode: FailureMode,
    status_on_error: u16,
    context_extensions: HashMap<String, String>,
    cache: Option<DecisionCache>,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    let (protocol, uri, cluster, at) = match (params.grpc, params.http) {
        (Some(grpc), None) => (Protocol::Grpc, grpc.uri, grpc.cluster, "grpc"),
        (None, Some(http)) => {
            let allowed_upstream = parse_header_names(
                "http.allowed_upstream_headers",
                &http.allowed_upstream_headers,
            )?;
            let allowed_client = match &http.allowed_client_headers {
                Some(names) => Some(parse_header_names("http.allowed_client_headers", names)?),
                None => None,
            };
            let prefix = path_of(&http.uri).to_owned();
            let protocol = Protocol::Http {
                prefix: prefix.trim_end_matches('/').to_owned(),
                allowed_upstream,
                allowed_client,
            };
            (protocol, http.uri, http.cluster, "http")
        }
        _ => {
            return Err(ParamError::at(
                ".",
                "exactly one of `grpc` and `http` names the authorization service",
            ))
        }
    };
    let Some((scheme, rest)) = uri
        .split_once("://")
        .filter(|(s, _)| *s == "http" || *s == "https")
    else {
        return Err(ParamError::at(
            format!("{at}.uri"),
            "an http:// or https:// URL is needed",
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(ParamError::at(format!("{at}.uri"), "the URL has no host"));
    }
    if cluster.is_empty() {
        return Err(ParamError::at(format!("{at}.cluster"), "empty"));
    }
    let timeout = match &params.timeout {
        None => std::time::Duration::from_millis(200),
        Some(text) => parse_duration(text).ok_or_else(|| {
            ParamError::at(
                "timeout",
                format!("{text:?} is not a duration like 200ms or 1s"),
            )
        })?,
    };
    let include_headers = match &params.include_headers {
        Some(names) => Some(parse_header_names("include_headers", names)?),
        None => None,
    };
    if params
        .include_body
        .as_ref()
        .is_some_and(|b| b.max_bytes == 0)
    {
        return Err(ParamError::at(
            "include_body.max_bytes",
            "must be at least 1",
        ));
    }
    let status_on_error =
        check_reply_status("status_on_error", params.status_on_error.unwrap_or(403))?;
    if params.cache.is_some() && params.include_body.is_some() {
        return Err(ParamError::at(
            "cache",
            "a decision made on the body cannot be cached by a key that does not see it: drop `cache` or `include_body`",
        ));
    }
    let cache = params.cache.map(DecisionCache::build).transpose()?;
    Ok(Box::new(ExtAuthz {
        protocol,
        service: Service {
            cluster,
            base_uri: format!("{scheme}://{authority}"),
        },
        timeout,
        include_headers,
        body: params.include_body,
        failure_mode: params.failure_mode,
        status_on_error,
        context_extensions: params.context_extensions.into_iter().collect(),
        cache,
    }))
}

impl Policy for ExtAuthz {
    fn phases(&self) -> Phases {
        if self.body.is_some() {
            Phases::REQUEST_BODY
        } else {
            Phases::REQUEST_HEADERS
        }
    }

    fn attributes(&self) -> AttributeSet {
        let peer = match self.protocol {
            // The service is told who is calling.
            Protocol::Grpc => {
                AttributeSet::of(Attribute::SourceAddress) | AttributeSet::of(Attribute::PeerUriSan)
            }
            Protocol::Http { .. } => AttributeSet::NONE,
        };
        let key = self
            .cache
            .as_ref()
            .map_or(AttributeSet::NONE, DecisionCache::attributes);
        peer | key
    }

    fn asserted_headers(&self) -> Vec<HeaderName> {
        match &self.protocol {
            Protocol::Http {
                allowed_upstream, ..
            } => allowed_upstream.clone(),
            Protocol::Grpc => Vec::new(),
        }
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        self.check(cx, None)
    }

    fn on_request_body(&self, cx: &mut Context, body: &[u8]) -> Action {
        self.check(cx, Some(body))
    }
}

/// What the service decided, as this policy applies it (and caches it).
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    Allow {
        /// The upstream request's edits.
        edits: HeaderEdits,
        /// Metadata for later policies, `ext-authz.<field>`.
        metadata: Vec<(String, serde_json::Value)>,
    },
    Deny(LocalReply),
}

impl ExtAuthz {
    fn check(&self, cx: &mut Context, body: Option<&[u8]>) -> Action {
        if let Some(answer) = cx.answer().cloned() {
            let decision = match self.read(answer) {
                Ok(decision) => decision,
                Err(why) => return self.fail(cx, &why),
            };
            if let Some(cache) = &self.cache {
                cache.store(cx, decision.clone());
            }
            return apply(cx, decision);
        }
        if let Some(decision) = self.cache.as_ref().and_then(|c| c.lookup(cx)) {
            return apply(cx, decision);
        }
        let body = match body {
            Some(body) => match &self.body {
                Some(limit) if body.len() > limit.max_bytes && !limit.allow_partial => {
                    return Action::Respond(LocalReply::text(413, "payload too large\n"));
                }
                Some(limit) => &body[..body.len().min(limit.max_bytes)],
                None => &[],
            },
            None => &[],
        };
        let request = match &self.protocol {
            Protocol::Grpc => CallRequest::Grpc {
                service: "envoy.service.auth.v3.Authorization".into(),
                method: "Check".into(),
                message: self.check_request(cx, body).encode_to_vec(),
                metadata: Vec::new(),
            },
            Protocol::Http { prefix, .. } => self.http_request(cx, prefix, body),
        };
        Action::Call(Call {
            service: self.service.clone(),
            timeout: self.timeout,
            request,
        })
    }

    /// The request's headers the service is told about: the listed ones,
    /// or all (gRPC) / `authorization` (HTTP, as Envoy); never the
    /// pseudo-headers or hop-by-hop ones. Over HTTP the check is a request
    /// Envoy sends, so the client's proxy headers (`x-envoy-*` would steer
    /// Envoy's own call; `x-forwarded-*` the service) are never copied.
    fn forwarded_headers(&self, cx: &Context) -> Vec<(String, String)> {
        let http = matches!(self.protocol, Protocol::Http { .. });
        let mut headers: Vec<(String, String)> = Vec::new();
        for (name, value) in cx.request_headers().iter() {
            if name.starts_with(':') || HOP_BY_HOP.contains(&name) {
                continue;
            }
            if http
                && (is_proxy_header(name)
                    || (self.include_headers.is_none() && name != "authorization"))
            {
                continue;
            }
            if let Some(listed) = &self.include_headers {
                if !listed.iter().any(|n| n.as_str() == name) {
                    continue;
                }
            }
            match headers.iter_mut().find(|(n, _)| n == name) {
                Some((_, joined)) => {
                    joined.push(',');
                    joined.push_str(value);
                }
                None => headers.push((name.to_owned(), value.to_owned())),
            }
        }
        headers
    }

    /// The service's decision, or why there is none.
    fn read(&self, answer: Answer) -> Result<Decision, String> {
        let response = answer.map_err(|failure| failure.to_string())?;
        match &self.protocol {
            Protocol::Grpc => grpc_decision(&response),
            // A 5xx is the service (or Envoy, on its behalf: 503, 504)
            // failing, not deciding: failure_mode applies, and it is never
            // cached.
            Protocol::Http { .. } if response.status >= 500 => {
                Err(format!("the service answered {}", response.status))
            }
            Protocol::Http {
                allowed_upstream,
                allowed_client,
                ..
            } => Ok(http_decision(
                response,
                allowed_upstream,
                allowed_client.as_deref(),
            )),
        }
    }

    /// The service could not decide: `failure_mode` says what happens.
    fn fail(&self, cx: &mut Context, why: &str) -> Action {
        match self.failure_mode {
            FailureMode::Deny => {
                log::warn!(
                    "ext-authz on {:?}: the authorization service could not decide ({why}): denied",
                    cx.route().chain
                );
                Action::Respond(LocalReply::text(
                    self.status_on_error,
                    "authorization service unavailable\n",
                ))
            }
            FailureMode::Allow => {
                log::warn!(
                    "ext-authz on {:?}: the authorization service could not decide ({why}): allowed (failure_mode: allow)",
                    cx.route().chain
                );
                cx.metadata_mut().insert(
                    format!("{METADATA_PREFIX}failure"),
                    serde_json::Value::String(why.to_owned()),
                );
                // Unauthorized is not unasserted: the client's copies of
                // the headers only the service may set still go.
                let mut headers = cx.headers_mut();
                for name in self.asserted_headers() {
                    headers.remove_variants(&name);
                }
                Action::Continue
            }
        }
    }
}

/// Whether a header of the service's denial may go to the client: a valid
/// name and value (no CR, LF or NUL to split the response), not a
/// pseudo-header, not one that describes the hop.
fn reply_header_ok(name: &str, value: &str) -> bool {
    HeaderName::parse(name).is_ok()
        && HeaderValue::parse(value).is_ok()
        && !name.starts_with(':')
        && !HOP_BY_HOP.contains(&name)
}

fn apply(cx: &mut Context, decision: Decision) -> Action {
    match decision {
        Decision::Deny(reply) => Action::Respond(reply),
        Decision::Allow { edits, metadata } => {
            edits.apply(&mut cx.headers_mut());
            for (key, value) in metadata {
                cx.metadata_mut().insert(key, value);
            }
            Action::Continue
        }
    }
}

#[cfg(test)]
mod tests;
