//! `transformation`: request and response header edits whose values are CEL
//! expressions, and path and host rewrites.
//!
//! ```yaml
//! - name: transformation
//!   config:
//!     request:
//!       set:    { x-caller-identity: 'source.identity.namespace + "/" + source.identity.serviceAccount' }
//!       add:    { x-forwarded-by: '"egress-gateway"' }     # a fixed value is a quoted CEL string
//!       remove: [x-internal-debug]
//!       path:   '"/v2" + request.path'                     # the query is kept unless the value has one
//!       host:   '"internal.example.com"'
//!     response:
//!       set:    { x-upstream-status: 'string(response.code)' }
//! ```
//!
//! Every expression of a section is evaluated first, against the message as
//! it arrived at this policy; then the edits apply in the order remove, set,
//! add, path, host. A value whose expression fails (a missing attribute),
//! yields `null`, or is not a valid header value is logged at debug level,
//! and then:
//! * for `set`, the header is removed: what the engine asserts is never the
//!   client's, so the client's own `x-caller-identity` cannot stand in for
//!   one that could not be computed;
//! * for `add`, nothing is added;
//! * for `path` or `host`, the request is refused with 500: it cannot be
//!   sent where the configuration says. A computed path must already be
//!   canonical (no dot segments, `//` or escapes to decode: a value taken
//!   from the request cannot climb out of the prefix it is put under), and
//!   a computed host is made canonical like a request's; otherwise the
//!   request is refused the same way.
//!
//! # Bodies
//!
//! An expression may read the body: `request.json.model`, `response.body`.
//! Then that section's edits all wait for the whole body (up to the route
//! entry's `max_body_bytes`) and apply before the message goes on, so a
//! header can carry a field of the body: `set: { x-model:
//! 'request.json.model' }`. A body that is not JSON makes `request.json`
//! unreadable, and the header is removed as above.
//!
//! Use a `when:` guard or an `authorization` policy where a missing value
//! must stop the request with another status.
//!
//! Rewriting the path or host changes what the upstream sees; Envoy has
//! already picked the upstream cluster.

use std::borrow::Cow;
use std::collections::BTreeMap;

use policy_executor::canonical::{canonical_authority, canonical_path, EscapedSlashes};
use policy_executor::{
    parse_header_names, parse_params, Action, AttributeSet, Context, Expression, HeaderName,
    HeaderValue, LocalReply, ParamError, Phase, Phases, Policy, PolicyFactory, RequestTarget,
    ResponseAction,
};
use serde::Deserialize;

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "transformation",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// The parameters of `transformation`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// Edits to the request.
    #[serde(default)]
    request: Option<RawEdits>,
    /// Edits to the response.
    #[serde(default)]
    response: Option<RawEdits>,
}

/// Edits to one message, from CEL expressions.
#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "edits"))]
struct RawEdits {
    /// Header name to a CEL expression: its value replaces the header's;
    /// one that fails removes the header.
    #[serde(default)]
    set: BTreeMap<String, String>,
    /// Header name to a CEL expression: its value is appended.
    #[serde(default)]
    add: BTreeMap<String, String>,
    /// Header names to remove.
    #[serde(default)]
    remove: Vec<String>,
    /// CEL: the new path, canonical (request only; the query is kept
    /// unless the value has one).
    path: Option<String>,
    /// CEL: the new host (request only).
    host: Option<String>,
}

/// Compiled edits for one message.
#[derive(Default)]
struct Edits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Expression)>,
    add: Vec<(HeaderName, Expression)>,
    path: Option<Expression>,
    host: Option<Expression>,
}

fn compile(section: &str, phase: Phase, raw: RawEdits) -> Result<Edits, ParamError> {
    let expression = |field: String, source: &str| {
        Expression::compile(source, phase).map_err(|e| ParamError::at(field, e))
    };
    let header =
        |field: String, name: &str| HeaderName::parse(name).map_err(|e| ParamError::at(field, e));
    let mut edits = Edits {
        remove: parse_header_names(&format!("{section}.remove"), &raw.remove)?,
        ..Edits::default()
    };
    for (kind, values, into) in [
        ("set", &raw.set, &mut edits.set),
        ("add", &raw.add, &mut edits.add),
    ] {
        for (name, source) in values {
            let field = format!("{section}.{kind}.{name}");
            into.push((header(field.clone(), name)?, expression(field, source)?));
        }
    }
    for (kind, source, into) in [
        ("path", raw.path, &mut edits.path),
        ("host", raw.host, &mut edits.host),
    ] {
        let Some(source) = source else { continue };
        let field = format!("{section}.{kind}");
        if phase == Phase::ResponseBody {
            return Err(ParamError::at(field, "only the request can be rewritten"));
        }
        *into = Some(expression(field, &source)?);
    }
    Ok(edits)
}

impl Edits {
    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
            && self.path.is_none()
            && self.host.is_none()
    }

    fn expressions(&self) -> impl Iterator<Item = &Expression> {
        let headers = self.set.iter().chain(&self.add).map(|(_, e)| e);
        headers.chain(&self.path).chain(&self.host)
    }

    fn apply(&self, cx: &mut Context) -> ResponseAction {
        let set = values(&self.set, cx);
        let add = values(&self.add, cx);
        let path = match &self.path {
            Some(e) => match value(e, cx).and_then(|p| new_path(p, cx)) {
                Some(path) => Some(path),
                None => return cannot_rewrite("path"),
            },
            None => None,
        };
        let host = match &self.host {
            Some(e) => match value(e, cx).and_then(new_host) {
                Some(host) => Some(host),
                None => return cannot_rewrite("host"),
            },
            None => None,
        };
        let mut headers = cx.headers_mut();
        // A header whose value cannot be computed is removed: the client's
        // copy must not stand in for it.
        let uncomputed = set.iter().filter(|(_, v)| v.is_none()).map(|(n, _)| *n);
        headers.edit(
            self.remove.iter().chain(uncomputed),
            set.iter().filter_map(|(n, v)| Some((*n, v.as_ref()?))),
            add.iter().filter_map(|(n, v)| Some((*n, v.as_ref()?))),
        );
        if let Some(path) = &path {
            headers.rewrite(RequestTarget::Path, path);
        }
        if let Some(host) = &host {
            headers.rewrite(RequestTarget::Authority, host);
        }
        ResponseAction::Continue
    }
}

fn cannot_rewrite(what: &str) -> ResponseAction {
    ResponseAction::Respond(LocalReply::text(
        500,
        format!("the request's {what} could not be rewritten\n"),
    ))
}

/// Each header with its value, `None` where it could not be computed.
fn values<'a>(
    list: &'a [(HeaderName, Expression)],
    cx: &Context,
) -> Vec<(&'a HeaderName, Option<HeaderValue>)> {
    list.iter().map(|(name, e)| (name, value(e, cx))).collect()
}

/// An expression's value as a header value, or `None` (logged) when it has
/// none.
fn value(expression: &Expression, cx: &Context) -> Option<HeaderValue> {
    let text = match expression.evaluate_text(cx) {
        Ok(Some(text)) => text,
        Ok(None) => return None,
        Err(error) => {
            log::debug!(
                "transformation: route {:?}: {:?} failed: {error}",
                cx.route().chain,
                expression.source()
            );
            return None;
        }
    };
    match HeaderValue::parse(&text) {
        Ok(value) => Some(value),
        Err(error) => {
            log::debug!("transformation: {:?}: {error}", expression.source());
            None
        }
    }
}

/// The rewritten `:path`: the new path, with the old query unless the new
/// value brings its own.
/// The new `:path`, with the request's query unless it brings its own;
/// `None` unless it is already canonical. A computed
/// `"/static/" + request.query["f"]` with `f=../../admin` is refused, not
/// resolved to `/admin`: the request was decided on as one under `/static`.
fn new_path(path: HeaderValue, cx: &Context) -> Option<HeaderValue> {
    // Escaped slashes a rewrite produced stay encoded: never a separator.
    let canonical = match canonical_path(path.as_str(), EscapedSlashes::Keep) {
        Ok(Cow::Borrowed(canonical)) => canonical,
        Ok(Cow::Owned(canonical)) => {
            log::debug!(
                "transformation: the new path {:?} is not canonical ({canonical:?})",
                path.as_str()
            );
            return None;
        }
        Err(error) => {
            log::debug!("transformation: the new path {:?}: {error}", path.as_str());
            return None;
        }
    };
    let old = cx.request_headers().get(":path").unwrap_or("/");
    match old.split_once('?') {
        Some((_, query)) if !canonical.contains('?') => {
            HeaderValue::parse(&format!("{canonical}?{query}")).ok()
        }
        _ => Some(path),
    }
}

/// The new `:authority`, made canonical like every request's; `None` if it
/// cannot be.
fn new_host(host: HeaderValue) -> Option<HeaderValue> {
    match canonical_authority(host.as_str()) {
        Ok(canonical) => HeaderValue::parse(&canonical).ok(),
        Err(error) => {
            log::debug!("transformation: the new host {:?}: {error}", host.as_str());
            None
        }
    }
}

struct Transformation {
    request: Edits,
    response: Edits,
    attributes: AttributeSet,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    let request = compile(
        "request",
        Phase::RequestBody,
        params.request.unwrap_or_default(),
    )?;
    let response = compile(
        "response",
        Phase::ResponseBody,
        params.response.unwrap_or_default(),
    )?;
    let attributes = request
        .expressions()
        .chain(response.expressions())
        .fold(AttributeSet::NONE, |all, e| all | e.attributes());
    Ok(Box::new(Transformation {
        request,
        response,
        attributes,
    }))
}

impl Policy for Transformation {
    fn phases(&self) -> Phases {
        // Edits that read a body wait for it, all of them together: a
        // later edit may read a header an earlier one set.
        let phase = |edits: &Edits, headers: Phases, body: Phases| {
            if edits.is_empty() {
                Phases::NONE
            } else if edits.expressions().any(Expression::reads_body) {
                body
            } else {
                headers
            }
        };
        phase(&self.request, Phases::REQUEST_HEADERS, Phases::REQUEST_BODY)
            | phase(
                &self.response,
                Phases::RESPONSE_HEADERS,
                Phases::RESPONSE_BODY,
            )
    }

    fn attributes(&self) -> AttributeSet {
        self.attributes
    }

    /// The request headers it sets: when its guard skips it, the client's
    /// copies are stripped all the same.
    fn asserted_headers(&self) -> Vec<HeaderName> {
        self.request
            .set
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        self.request.apply(cx).into()
    }

    fn on_request_body(&self, cx: &mut Context, _body: &[u8]) -> Action {
        self.request.apply(cx).into()
    }

    fn on_response_headers(&self, cx: &mut Context) -> ResponseAction {
        self.response.apply(cx)
    }

    fn on_response_body(&self, cx: &mut Context, _body: &[u8]) -> ResponseAction {
        self.response.apply(cx)
    }
}

#[cfg(test)]
mod tests;
