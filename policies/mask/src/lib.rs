//! `mask`: masks personal data and secrets in request and response bodies.
//!
//! ```yaml
//! - name: mask
//!   config:
//!     request: true                  # mask request bodies (default true)
//!     response: true                 # mask response bodies (default false)
//!     rules:
//!       - recognizer: email          # redact by default: "[redacted]"
//!       - recognizer: payment_card
//!         action: partial            # ************1111
//!         keep_last: 4
//!       - recognizer: api_key
//!         action: deny               # the request is refused (403), the response replaced (502)
//!       - name: ticket               # a custom pattern needs a name
//!         pattern: 'TCK-\d{6}'
//!         action: hash               # [ticket:3f2a...]: HMAC-SHA-256 with hash_key
//!     hash_key: "at least 16 bytes of secret"
//!     fields: [/user/email, /messages/*/content]   # optional: only these JSON members
//! ```
//!
//! # What is read, and how
//!
//! Built-in recognizers: `email`, `phone`, `payment_card` (Luhn-checked),
//! `iban` (checksum-checked), `ip_address`, `jwt`, `api_key` (AWS, GitHub,
//! Slack, Stripe, Google, OpenAI and PEM private keys). Custom patterns use
//! the `regex` crate: linear time, compiled size bounded, no look-around or
//! back-references.
//!
//! A body that is JSON (its `content-type` says so, it starts like JSON,
//! or `fields` is given) is read the one strict way and masked in its
//! decoded strings and numbers, so an escape such as `\u0040` cannot hide
//! an address; `fields` (JSON Pointers, `*` and `**` wildcards) limits
//! masking to those members. Any other body is masked as text. A body that
//! must be JSON (by `content-type` or `fields`) but is not strict JSON, or
//! that starts like JSON, is not strict JSON and holds a `\u` escape, is
//! refused (400, or 502 for a response): masking cannot tell what a reader
//! of it would see. Text that merely starts like JSON (`[DONE]`) is text.
//!
//! Requests are masked whole before the upstream sees them (up to the
//! route entry's `max_body_bytes`). Responses are masked as they flow: see
//! `stream` for server-sent events, JSON and text.
//!
//! The decision log's `findings` field records how often each rule fired
//! (`{"mask": {"email": 2}}`), never what it found; so does the metadata
//! key `mask.findings`. Bodies must be unencoded: the engine refuses
//! (requests) or asks the upstream not to encode (responses) anything
//! else; see `policy_executor::chain`.

mod raw_json;
mod recognizers;
mod scan;
mod stream;

use std::sync::Arc;

use policy_executor::json;
use policy_executor::json::pointer::Pointer;
use policy_executor::{
    parse_params, Action, BodyStream, Context, LocalReply, ParamError, Phases, Policy,
    PolicyFactory,
};
use serde::Deserialize;

use recognizers::Recognizer;
use scan::{Act, Fault, Findings, Masker, Rule};

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "mask",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// The parameters of `mask`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// Mask request bodies (default true).
    #[serde(default = "yes")]
    request: bool,
    /// Mask response bodies (default false).
    #[serde(default)]
    response: bool,
    /// What to look for and what to do with it; the earliest match wins
    /// where two overlap.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    rules: Vec<RawRule>,
    /// JSON Pointers of the members to scan (`*`: any element or member,
    /// `**`: any depth); bodies must then be JSON. Default: all of the body.
    #[serde(default)]
    fields: Vec<String>,
    /// The key of the `hash` action, 16 bytes or more.
    hash_key: Option<String>,
    /// How much of a streamed text response is held back for matches
    /// that continue in the next chunk (default 256).
    #[serde(default = "default_window")]
    #[cfg_attr(feature = "schema", schemars(range(min = 16, max = 65536)))]
    window_bytes: usize,
    /// The most a streamed response may make this policy hold: a JSON body,
    /// an SSE event, a match still growing (default 1 MiB). Past it the
    /// response is refused.
    #[serde(default = "default_max_bytes")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    max_bytes: usize,
}

/// One rule: a recognizer or a pattern, and an action.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRule {
    /// A built-in recognizer.
    recognizer: Option<Recognizer>,
    /// Or a regular expression (the `regex` crate's syntax).
    pattern: Option<String>,
    /// The rule's name in logs (default: the recognizer's; required with
    /// `pattern`).
    name: Option<String>,
    /// What to do with a match (default `redact`).
    #[serde(default)]
    action: RawAction,
    /// `redact`: the text put in its place (default `[redacted]`).
    replacement: Option<String>,
    /// `partial`: how many characters stay at the end (default 4).
    #[serde(default = "default_keep")]
    keep_last: usize,
}

/// What a rule does to a match.
#[derive(Deserialize, Default, Clone, Copy)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
enum RawAction {
    /// Replace it.
    #[default]
    Redact,
    /// Keep only its last `keep_last` characters.
    Partial,
    /// Replace it with a keyed hash (`hash_key`), so equal values stay
    /// comparable.
    Hash,
    /// Refuse the message.
    Deny,
}

fn yes() -> bool {
    true
}

fn default_window() -> usize {
    256
}

fn default_max_bytes() -> usize {
    1 << 20
}

fn default_keep() -> usize {
    4
}

/// The longest custom pattern accepted.
const MAX_PATTERN_BYTES: usize = 1024;

/// What every request and response of this instance shares.
pub(crate) struct Settings {
    pub(crate) masker: Masker,
    pub(crate) window_bytes: usize,
    pub(crate) max_bytes: usize,
}

struct Mask {
    request: bool,
    response: bool,
    settings: Arc<Settings>,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    if !params.request && !params.response {
        return Err(ParamError::at(
            ".",
            "masks nothing: enable `request`, `response` or both",
        ));
    }
    if params.rules.is_empty() {
        return Err(ParamError::at("rules", "give at least one rule"));
    }
    if !(16..=65536).contains(&params.window_bytes) {
        return Err(ParamError::at("window_bytes", "must be 16 to 65536"));
    }
    if params.max_bytes == 0 {
        return Err(ParamError::at("max_bytes", "must be at least 1"));
    }
    let mut rules = Vec::with_capacity(params.rules.len());
    for (i, raw) in params.rules.into_iter().enumerate() {
        let field = |name: &str| format!("rules[{i}].{name}");
        let (name, pattern, recognizer) = match (raw.recognizer, raw.pattern, raw.name) {
            (Some(r), None, name) => (
                name.unwrap_or_else(|| r.name().to_owned()),
                r.pattern().to_owned(),
                Some(r),
            ),
            (None, Some(pattern), Some(name)) => {
                if pattern.len() > MAX_PATTERN_BYTES {
                    return Err(ParamError::at(
                        field("pattern"),
                        format!("longer than {MAX_PATTERN_BYTES} bytes"),
                    ));
                }
                (name, pattern, None)
            }
            (None, Some(_), None) => {
                return Err(ParamError::at(field("name"), "a pattern needs a name"))
            }
            _ => {
                return Err(ParamError::at(
                    format!("rules[{i}]"),
                    "a rule has exactly one of recognizer or pattern",
                ))
            }
        };
        let regex =
            recognizers::compile(&pattern).map_err(|e| ParamError::at(field("pattern"), e))?;
        if regex.is_match(b"") {
            return Err(ParamError::at(
                field("pattern"),
                "matches the empty string, so it would mask between every character",
            ));
        }
        let act = match raw.action {
            RawAction::Redact => {
                Act::Redact(raw.replacement.unwrap_or_else(|| "[redacted]".into()))
            }
            RawAction::Partial => Act::Partial(raw.keep_last),
            RawAction::Hash => Act::Hash,
            RawAction::Deny => Act::Deny,
        };
        if matches!(act, Act::Hash) && params.hash_key.as_ref().is_none_or(|k| k.len() < 16) {
            return Err(ParamError::at(
                "hash_key",
                "the hash action needs a hash_key of 16 bytes or more",
            ));
        }
        rules.push(Rule {
            name,
            regex,
            recognizer,
            act,
        });
    }
    let mut fields = Vec::with_capacity(params.fields.len());
    for (i, text) in params.fields.iter().enumerate() {
        let pointer =
            Pointer::parse(text).map_err(|e| ParamError::at(format!("fields[{i}]"), e))?;
        fields.push(pointer);
    }
    Ok(Box::new(Mask {
        request: params.request,
        response: params.response,
        settings: Arc::new(Settings {
            masker: Masker {
                rules,
                fields,
                hash_key: params.hash_key.unwrap_or_default().into_bytes(),
            },
            window_bytes: params.window_bytes,
            max_bytes: params.max_bytes,
        }),
    }))
}

/// The pattern of the built-in recognizer `name` (`email`, `payment_card`,
/// ...), for comparisons such as `make microbench`'s plain scan.
pub fn builtin_pattern(name: &str) -> Option<&'static str> {
    let recognizer: Recognizer = serde_json::from_value(serde_json::json!(name)).ok()?;
    Some(recognizer.pattern())
}

/// Records how often each rule fired, for the decision log: under
/// `mask.findings` for the request, `mask.response_findings` for the
/// response, added to what another `mask` of the chain counted.
pub(crate) fn note_findings(cx: &mut Context, findings: &Findings, direction: Direction) {
    if findings.is_empty() {
        return;
    }
    let suffix = match direction {
        Direction::Request => policy_executor::decision::FINDINGS,
        Direction::Response => policy_executor::decision::RESPONSE_FINDINGS,
    };
    log::debug!("mask on {:?}: findings {findings:?}", cx.route().chain);
    let entry = cx
        .metadata_mut()
        .entry(format!("{}{suffix}", FACTORY.name))
        .or_insert_with(|| serde_json::json!({}));
    if let Some(counts) = entry.as_object_mut() {
        for (rule, count) in findings {
            let sum = counts
                .get(rule)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
                + count;
            counts.insert(rule.clone(), serde_json::json!(sum));
        }
    }
}

/// Which message findings are about.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    Request,
    Response,
}

impl Policy for Mask {
    fn phases(&self) -> Phases {
        let mut phases = Phases::NONE;
        if self.request {
            phases = phases | Phases::REQUEST_BODY;
        }
        if self.response {
            phases = phases | Phases::RESPONSE_BODY_STREAM;
        }
        phases
    }

    fn reads_response_headers(&self) -> bool {
        true
    }

    fn on_request_body(&self, cx: &mut Context, body: &[u8]) -> Action {
        let mut findings = Findings::new();
        let declared = json::is_json_media_type(cx.request_headers().get("content-type"));
        let checked = cx.body().is_some_and(policy_executor::Body::is_strict_json);
        let result = self
            .settings
            .masker
            .mask_body(body, declared, checked, &mut findings);
        note_findings(cx, &findings, Direction::Request);
        match result {
            Ok(Some(masked)) => {
                cx.replace_body(masked);
                Action::Continue
            }
            Ok(None) => Action::Continue,
            Err(Fault::Denied(rule)) => {
                log::debug!(
                    "mask on {:?}: rule {rule} denies the request",
                    cx.route().chain
                );
                Action::Respond(LocalReply::text(
                    403,
                    format!("the request body holds data this route refuses ({rule})\n"),
                ))
            }
            Err(Fault::NotJson(why)) => {
                log::debug!("mask on {:?}: request body: {why}", cx.route().chain);
                Action::Respond(LocalReply::text(
                    400,
                    "the request body looks like JSON but is not valid JSON\n",
                ))
            }
        }
    }

    fn response_body_stream(&self) -> Option<Box<dyn BodyStream>> {
        Some(Box::new(stream::MaskStream::new(Arc::clone(
            &self.settings,
        ))))
    }
}

#[cfg(test)]
mod tests;
