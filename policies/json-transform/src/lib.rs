//! `json-transform`: edits JSON bodies, requests and responses.
//!
//! ```yaml
//! - name: json-transform
//!   config:
//!     request:
//!       body: '{"input": request.json.prompt}'    # optional: a new body, built in CEL
//!       remove: [/debug, /messages/*/name]         # JSON Pointers; * and ** are wildcards
//!       rename: { /user_id: userId }               # a member's new name, in place
//!       move:   { /options/temperature: /temperature }
//!       set:    { /model: '"small"', /metadata/tenant: 'request.headers["x-tenant"]' }
//!     response:
//!       remove: [/internal]
//! ```
//!
//! A section's edits apply in the order written above: `body` (which the
//! others then edit), `remove`, `rename`, `move`, `set`. `set` values (and
//! `body`) are CEL expressions evaluated on the body as it arrived (`request.json`,
//! `response.json`) and anything else a request expression reads; `set`
//! creates missing objects on its way, and `-` appends to an array.
//!
//! # Reading, and failing closed
//!
//! The body is read the one strict way (`policy_executor::json`: UTF-8, no
//! duplicate keys, at most 64 levels). A non-empty body whose
//! `content-type` is not JSON (`application/json` or `*/*+json`), or that
//! is not such JSON, is refused: 415 for a request, 502 for a response. A
//! transformation that cannot be skipped safely (one that removes a member
//! the upstream must not see) must not be skipped by a client that labels
//! its JSON `text/plain`. An empty body passes untouched unless `body`
//! builds one. An edit that cannot apply (a `set` below a string, a `move`
//! from a member that is absent) fails the request with 500 (a request) or
//! 502 (a response) and a log line naming the pointer; a `remove` or
//! `rename` of what is absent does nothing. The new body goes on with its
//! `content-length` (and `content-type: application/json` when `body`
//! built it from nothing). Member order is kept, and what no edit touches
//! is written as it came (`policy_executor::json::edit`).

use std::collections::BTreeMap;

use policy_executor::json;
use policy_executor::json::edit::Document;
use policy_executor::json::pointer::Pointer;
use policy_executor::{
    parse_params, Action, AttributeSet, Context, Expression, LocalReply, ParamError, Phase, Phases,
    Policy, PolicyFactory, ResponseAction,
};
use serde::Deserialize;

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "json-transform",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// The parameters of `json-transform`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// Edits of request bodies.
    request: Option<RawEdits>,
    /// Edits of response bodies.
    response: Option<RawEdits>,
}

/// One direction's edits, applied in the order of the fields.
#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawEdits {
    /// A CEL expression whose value becomes the body.
    body: Option<String>,
    /// JSON Pointers (`*`: any element or member; `**`: any depth) of
    /// members to remove.
    #[serde(default)]
    remove: Vec<String>,
    /// Pointer → the member's new name.
    #[serde(default)]
    rename: BTreeMap<String, String>,
    /// Pointer → pointer (no wildcards): the value moves.
    #[serde(default, rename = "move")]
    moves: BTreeMap<String, String>,
    /// Pointer (no wildcards) → CEL expression: the member is set to its
    /// value.
    #[serde(default)]
    set: BTreeMap<String, String>,
}

struct Edits {
    body: Option<Expression>,
    remove: Vec<Pointer>,
    rename: Vec<(Pointer, String)>,
    moves: Vec<(Pointer, Pointer)>,
    set: Vec<(Pointer, Expression)>,
}

impl Edits {
    fn expressions(&self) -> impl Iterator<Item = &Expression> {
        self.body.iter().chain(self.set.iter().map(|(_, e)| e))
    }
}

struct JsonTransform {
    request: Option<Edits>,
    response: Option<Edits>,
    attributes: AttributeSet,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    if params.request.is_none() && params.response.is_none() {
        return Err(ParamError::at(
            ".",
            "edits nothing: give `request`, `response` or both",
        ));
    }
    let request = params
        .request
        .map(|raw| compile("request", Phase::RequestBody, raw))
        .transpose()?;
    let response = params
        .response
        .map(|raw| compile("response", Phase::ResponseBody, raw))
        .transpose()?;
    let attributes = request
        .iter()
        .chain(&response)
        .flat_map(Edits::expressions)
        .fold(AttributeSet::NONE, |all, e| all | e.attributes());
    Ok(Box::new(JsonTransform {
        request,
        response,
        attributes,
    }))
}

fn compile(section: &str, phase: Phase, raw: RawEdits) -> Result<Edits, ParamError> {
    let pointer = |field: String, text: &str, wildcards: bool| {
        let pointer = Pointer::parse(text).map_err(|e| ParamError::at(field.clone(), e))?;
        if pointer.is_root() {
            return Err(ParamError::at(
                field,
                "the whole body is edited with `body`",
            ));
        }
        if !wildcards && pointer.has_wildcard() {
            return Err(ParamError::at(
                field,
                format!("{text:?}: no wildcards here"),
            ));
        }
        Ok(pointer)
    };
    let expression = |field: String, source: &str| {
        Expression::compile(source, phase).map_err(|e| ParamError::at(field, e))
    };
    let body = raw
        .body
        .map(|source| expression(format!("{section}.body"), &source))
        .transpose()?;
    let mut edits = Edits {
        body,
        remove: Vec::new(),
        rename: Vec::new(),
        moves: Vec::new(),
        set: Vec::new(),
    };
    for (i, text) in raw.remove.iter().enumerate() {
        edits
            .remove
            .push(pointer(format!("{section}.remove[{i}]"), text, true)?);
    }
    for (from, to) in &raw.rename {
        let field = format!("{section}.rename.{from}");
        if to.is_empty() || to.contains('/') {
            return Err(ParamError::at(
                field,
                format!("{to:?}: a new member name, without `/`"),
            ));
        }
        let from = pointer(field, from, true)?;
        edits.rename.push((from, to.clone()));
    }
    for (from, to) in &raw.moves {
        let field = format!("{section}.move.{from}");
        edits.moves.push((
            pointer(field.clone(), from, false)?,
            pointer(field, to, false)?,
        ));
    }
    for (at, source) in &raw.set {
        let field = format!("{section}.set.{at}");
        edits.set.push((
            pointer(field.clone(), at, false)?,
            expression(field, source)?,
        ));
    }
    if edits.body.is_none()
        && edits.remove.is_empty()
        && edits.rename.is_empty()
        && edits.moves.is_empty()
        && edits.set.is_empty()
    {
        return Err(ParamError::at(section, "no edits"));
    }
    Ok(edits)
}

/// Why a body could not be transformed, and the status that says so.
struct Refusal {
    status: u16,
    reason: String,
}

impl Edits {
    /// The new body, `None` if it is unchanged. Every CEL value is worked
    /// out first, on the body as it arrived; then the document is edited
    /// in place (`policy_executor::json::edit`: only what the edits go
    /// through is read).
    fn apply(&self, cx: &Context, bad_input: u16, failed: u16) -> Result<Option<Vec<u8>>, Refusal> {
        let refuse = |status: u16, reason: String| Refusal { status, reason };
        let Some(body) = cx.body() else {
            return Ok(None);
        };
        let empty = body.bytes().iter().all(u8::is_ascii_whitespace);
        if self.body.is_none() {
            if empty {
                return Ok(None);
            }
            if !json::is_json_media_type(cx.message_headers().get("content-type")) {
                return Err(refuse(bad_input, "the content-type is not JSON".into()));
            }
        }
        let mut values = Vec::with_capacity(self.set.len());
        for (at, expression) in &self.set {
            let value = expression
                .evaluate_json(cx)
                .map_err(|e| refuse(failed, format!("set {at}: {e}")))?;
            values.push(value);
        }
        let mut document = match &self.body {
            Some(expression) => Document::from_value(
                expression
                    .evaluate_json(cx)
                    .map_err(|e| refuse(failed, format!("`body` failed: {e}")))?,
            ),
            None => Document::parse(body.bytes())
                .map_err(|e| refuse(bad_input, format!("the body is not JSON: {e}")))?,
        };
        let blocked = |what: &str, e: String| refuse(failed, format!("{what}: {e}"));
        for pointer in &self.remove {
            document.remove(pointer).map_err(|e| blocked("remove", e))?;
        }
        for (from, to) in &self.rename {
            document
                .rename(from, to)
                .map_err(|e| blocked("rename", e))?;
        }
        for (from, to) in &self.moves {
            document
                .move_value(from, to)
                .map_err(|e| blocked("move", e))?;
        }
        for ((at, _), value) in self.set.iter().zip(values) {
            document.set(at, value).map_err(|e| blocked("set", e))?;
        }
        Ok(Some(document.to_vec()))
    }
}

impl Policy for JsonTransform {
    fn phases(&self) -> Phases {
        let mut phases = Phases::NONE;
        if self.request.is_some() {
            phases = phases | Phases::REQUEST_BODY;
        }
        if self.response.is_some() {
            phases = phases | Phases::RESPONSE_BODY;
        }
        phases
    }

    fn attributes(&self) -> AttributeSet {
        self.attributes
    }

    fn on_request_body(&self, cx: &mut Context, _body: &[u8]) -> Action {
        let Some(edits) = &self.request else {
            return Action::Continue;
        };
        match edits.apply(cx, 415, 500) {
            Ok(edited) => {
                replace(cx, edited, edits.body.is_some());
                Action::Continue
            }
            Err(refusal) => {
                log::debug!(
                    "json-transform on {:?}: request body: {}",
                    cx.route().chain,
                    refusal.reason
                );
                Action::Respond(LocalReply::text(
                    refusal.status,
                    match refusal.status {
                        415 => "the request body must be JSON\n",
                        _ => "the request body could not be transformed\n",
                    },
                ))
            }
        }
    }

    fn on_response_body(&self, cx: &mut Context, _body: &[u8]) -> ResponseAction {
        let Some(edits) = &self.response else {
            return ResponseAction::Continue;
        };
        match edits.apply(cx, 502, 502) {
            Ok(edited) => {
                replace(cx, edited, edits.body.is_some());
                ResponseAction::Continue
            }
            Err(refusal) => {
                log::warn!(
                    "json-transform on {:?}: upstream response body: {}",
                    cx.route().chain,
                    refusal.reason
                );
                ResponseAction::Respond(LocalReply::text(
                    502,
                    "upstream response could not be transformed\n",
                ))
            }
        }
    }
}

/// Puts the new body in place (strict JSON: later policies need not check
/// it again); one built from nothing says it is JSON.
fn replace(cx: &mut Context, edited: Option<Vec<u8>>, built: bool) {
    let Some(body) = edited else {
        return;
    };
    cx.replace_body_json(body);
    if built {
        if let (Ok(name), Ok(value)) = (
            policy_executor::HeaderName::parse("content-type"),
            policy_executor::HeaderValue::parse("application/json"),
        ) {
            cx.headers_mut().set(&name, &value);
        }
    }
}

#[cfg(test)]
mod tests;
