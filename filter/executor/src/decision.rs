//! Decision logs: one JSON line per request a route entry takes (or per
//! denial), saying what the chain decided, for whom, and why. The hosts
//! write the line: the Wasm filter to Envoy's log and as filter state for
//! Envoy's access log, the shim to its standard output.
//!
//! ```yaml
//! decision_log:
//!   requests: all                  # or denied
//!   fields: [route_entry, decision, status, policy, caller]   # default: every field below
//!   expressions: { tenant: 'request.headers["x-tenant"]' }    # CEL, under "fields"
//! ```
//!
//! The fields: `route_entry`, `route` (Envoy's route name, when routing
//! read it), `decision` (`allowed`; `answered` for a reply below 400, such
//! as a CORS preflight or a redirect; `denied` for a 4xx; `error` for a 5xx
//! the engine answered), `status` (of the engine's reply), `policy` (the one
//! that replied), `policies` (each policy and what it did: `continued`,
//! `replied`, `skipped`, `not_run`), `request_id` (`x-request-id`),
//! `trace_id` (from a valid W3C `traceparent`), `latency_us`, `method`,
//! `path` (without the query, which may carry credentials), `host`, and
//! `caller`: `spiffe_id`, `address`, `jwt_sub`, `api_key_consumer`,
//! `basic_auth_user`, those known; and `findings`, how often each masking
//! rule fired in the request (left out when none did). Findings in a
//! response come after the request's line was written: they get a second
//! line, `{"route_entry", "phase": "response", "request_id", "findings"}`,
//! once the response body has passed.
//!
//! Secrets never appear. Expressions are evaluated over the request without
//! its query string, its cookies, and every header that carries a
//! credential: `authorization`, `proxy-authorization`, any header whose
//! name says key, token, secret, pass, auth, cred or session, and every
//! header a policy of the chain reads a credential from or asserts (an API
//! key's header, an injected backend credential). Then each copy of a
//! credential the request carried when it arrived, or carries now, is
//! written as `[redacted]` wherever it sits: in a header an expression
//! reads, the path, the host, the request id (see [`secrets`] for what
//! counts and how it is compared). What the engine, the connection and the
//! policies' verification say (the verdict, the caller) is never redacted:
//! a client cannot blank it by sending it as a "credential".

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

mod secrets;

use secrets::secretive;
pub(crate) use secrets::Secrets;

use crate::attributes::{Attribute, AttributeSet};
use crate::expr::{Expression, Phase, JWT_CLAIMS};
use crate::policy::Context;

/// The `decision_log` section of the plugin configuration.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "decision_log"))]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDecisionLog {
    /// Which requests get a line.
    #[serde(default)]
    requests: Which,
    /// The built-in fields of each line (default: all of them).
    fields: Option<Vec<Field>>,
    /// Extra fields: name to a CEL expression over the request, under
    /// `fields` in the line.
    #[serde(default)]
    expressions: BTreeMap<String, String>,
}

/// Which requests get a decision line.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "decision_log_requests"))]
#[serde(rename_all = "snake_case")]
enum Which {
    /// Every request.
    #[default]
    All,
    /// Requests a policy refused.
    Denied,
}

/// A built-in field of the record.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "decision_log_field"))]
#[serde(rename_all = "snake_case")]
pub(crate) enum Field {
    /// The route entry's name.
    RouteEntry,
    /// Envoy's route name.
    Route,
    /// `allowed`; else what the reply was: `answered` (a status below
    /// 400), `denied` (4xx) or `error` (5xx).
    Decision,
    /// The status of a refusal.
    Status,
    /// The policy that decided.
    Policy,
    /// What each policy of the chain did.
    Policies,
    /// `x-request-id`.
    RequestId,
    /// The W3C trace id.
    TraceId,
    /// The chain's latency in microseconds.
    LatencyUs,
    /// The request method.
    Method,
    /// The canonical path, without the query.
    Path,
    /// The canonical host.
    Host,
    /// The caller: address and verified identities.
    Caller,
    /// How often each masking rule fired, by policy (`{"mask":
    /// {"email": 2}}`), never what it found; left out when nothing fired.
    Findings,
}

const ALL_FIELDS: [Field; 14] = [
    Field::RouteEntry,
    Field::Route,
    Field::Decision,
    Field::Status,
    Field::Policy,
    Field::Policies,
    Field::RequestId,
    Field::TraceId,
    Field::LatencyUs,
    Field::Method,
    Field::Path,
    Field::Host,
    Field::Caller,
    Field::Findings,
];

/// The compiled section.
pub(crate) struct DecisionLog {
    denied_only: bool,
    fields: Vec<Field>,
    expressions: Vec<(String, Expression)>,
}

/// What one policy did to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyDecision {
    NotRun,
    Continued,
    Replied,
    Skipped,
}

impl PolicyDecision {
    fn as_str(self) -> &'static str {
        match self {
            Self::NotRun => "not_run",
            Self::Continued => "continued",
            Self::Replied => "replied",
            Self::Skipped => "skipped",
        }
    }
}

/// How the request phases ended.
pub(crate) struct Verdict<'a> {
    /// The reply's status and the position of the policy that made it;
    /// `None`: allowed.
    pub(crate) reply: Option<(u16, usize)>,
    pub(crate) policies: &'a [(&'a str, PolicyDecision)],
    pub(crate) latency_us: u64,
    /// Headers the chain's policies read credentials from or assert.
    pub(crate) secret_headers: &'a [crate::headers::HeaderName],
    /// The credentials the request carried when it arrived.
    pub(crate) arrived_with: Secrets,
}

impl DecisionLog {
    pub(crate) fn compile(raw: RawDecisionLog) -> Result<Self, (String, String)> {
        let mut expressions = Vec::with_capacity(raw.expressions.len());
        for (name, source) in raw.expressions {
            let expression = Expression::compile(&source, Phase::Request)
                .map_err(|e| (format!("decision_log.expressions.{name}"), e.to_string()))?;
            expressions.push((name, expression));
        }
        Ok(Self {
            denied_only: raw.requests == Which::Denied,
            fields: raw.fields.unwrap_or_else(|| ALL_FIELDS.to_vec()),
            expressions,
        })
    }

    /// The connection attributes the record reads.
    pub(crate) fn attributes(&self) -> AttributeSet {
        let caller = if self.fields.contains(&Field::Caller) {
            AttributeSet::of(Attribute::SourceAddress) | AttributeSet::of(Attribute::PeerUriSan)
        } else {
            AttributeSet::NONE
        };
        self.expressions
            .iter()
            .fold(caller, |all, (_, e)| all | e.attributes())
    }

    /// The line for a request, or `None` if this log skips it.
    pub(crate) fn record(&self, cx: &Context, verdict: Verdict<'_>) -> Option<String> {
        if self.denied_only && verdict.reply.is_none() {
            return None;
        }
        let request = cx.request_headers();
        // What a policy injected (a backend credential) counts too.
        let mut secrets = verdict.arrived_with;
        secrets.extend(Secrets::of(request, &[]));
        let mut record = Map::new();
        for field in &self.fields {
            let mut value = match field {
                Field::RouteEntry => json!(cx.route().chain.as_ref()),
                Field::Route => json!(cx.route().route_name),
                Field::Decision => json!(match verdict.reply {
                    None => "allowed",
                    Some((status, _)) => crate::metrics::reply_outcome(status),
                }),
                Field::Status => json!(verdict.reply.map(|(status, _)| status)),
                Field::Policy => json!(verdict
                    .reply
                    .and_then(|(_, at)| verdict.policies.get(at))
                    .map(|(name, _)| *name)),
                Field::Policies => Value::Array(
                    verdict
                        .policies
                        .iter()
                        .map(|(name, decision)| json!({ "policy": name, "decision": decision.as_str() }))
                        .collect(),
                ),
                Field::RequestId => json!(request.get("x-request-id")),
                Field::TraceId => json!(request.get("traceparent").and_then(trace_id)),
                Field::LatencyUs => json!(verdict.latency_us),
                Field::Method => json!(request.get(":method")),
                Field::Path => json!(request
                    .get(":path")
                    .map(|p| p.split_once('?').map_or(p, |(path, _)| path))),
                Field::Host => json!(request.get(":authority")),
                Field::Caller => caller(cx),
                Field::Findings => match findings(cx, FINDINGS) {
                    Some(found) => found,
                    None => continue,
                },
            };
            // What the engine and the connection say stands as it is: a
            // client cannot blank its own address or verdict out of the log
            // by sending a "credential" that matches it.
            if field.read_from_request() {
                redact(&mut value, &secrets);
            }
            record.insert(field_name(*field).to_owned(), value);
        }
        if !self.expressions.is_empty() {
            // Expressions see the request without what carries credentials.
            let masked = cx.with_request(masked(cx, verdict.secret_headers, &secrets));
            let mut fields = Map::new();
            for (name, expression) in &self.expressions {
                let mut value = match expression.evaluate_text(&masked) {
                    Ok(text) => json!(text),
                    Err(_) => Value::Null,
                };
                redact(&mut value, &secrets);
                fields.insert(name.clone(), value);
            }
            record.insert("fields".into(), Value::Object(fields));
        }
        serde_json::to_string(&record).ok()
    }
}

/// The metadata keys (`<policy>` and these suffixes) under which policies
/// count what they found in the request, and in the response.
pub const FINDINGS: &str = ".findings";
/// See [`FINDINGS`].
pub const RESPONSE_FINDINGS: &str = ".response_findings";

/// What the chain's policies found, by policy, from their metadata keys
/// ending in `suffix`.
fn findings(cx: &Context, suffix: &str) -> Option<Value> {
    let found: Map<String, Value> = cx
        .metadata()
        .iter()
        .filter_map(|(key, value)| Some((key.strip_suffix(suffix)?.to_owned(), value.clone())))
        .collect();
    (!found.is_empty()).then_some(Value::Object(found))
}

impl DecisionLog {
    /// A second line for a request whose response a policy found something
    /// in (masking it), once the response body has passed: the response
    /// is decided after the request's line was written. `None` when there
    /// is nothing to say or the log leaves findings out.
    pub(crate) fn record_response(&self, cx: &Context) -> Option<String> {
        if !self.fields.contains(&Field::Findings) {
            return None;
        }
        let found = findings(cx, RESPONSE_FINDINGS)?;
        let request = cx.request_headers();
        let line = json!({
            "route_entry": cx.route().chain.as_ref(),
            "phase": "response",
            "request_id": request.get("x-request-id"),
            "findings": found,
        });
        serde_json::to_string(&line).ok()
    }
}

impl Field {
    /// Whether the value comes from what the client sent (and may hold a
    /// copy of a credential), rather than from the engine or the
    /// connection.
    fn read_from_request(self) -> bool {
        matches!(
            self,
            Self::RequestId | Self::TraceId | Self::Method | Self::Path | Self::Host
        )
    }
}

fn field_name(field: Field) -> &'static str {
    match field {
        Field::RouteEntry => "route_entry",
        Field::Route => "route",
        Field::Decision => "decision",
        Field::Status => "status",
        Field::Policy => "policy",
        Field::Policies => "policies",
        Field::RequestId => "request_id",
        Field::TraceId => "trace_id",
        Field::LatencyUs => "latency_us",
        Field::Method => "method",
        Field::Path => "path",
        Field::Host => "host",
        Field::Caller => "caller",
        Field::Findings => "findings",
    }
}

/// Who is calling, as far as the host and the chain's policies know: the
/// connection, a verified certificate, token, key or password vouch for
/// each of these, so none is redacted (a client could otherwise blank its
/// own identity out of the log by sending it as a "credential").
fn caller(cx: &Context) -> Value {
    let mut who = Map::new();
    let connection = cx.connection();
    if let Some(id) = connection.spiffe_id() {
        who.insert("spiffe_id".into(), json!(id.uri));
    }
    if let Some(address) = connection.source_ip() {
        who.insert("address".into(), json!(address));
    }
    let metadata = cx.metadata();
    if let Some(sub) = metadata.get(JWT_CLAIMS).and_then(|c| c.get("sub")) {
        who.insert("jwt_sub".into(), sub.clone());
    }
    for (key, name) in [
        ("api-key.consumer", "api_key_consumer"),
        ("basic-auth.user", "basic_auth_user"),
    ] {
        if let Some(value) = metadata.get(key) {
            who.insert(name.into(), value.clone());
        }
    }
    Value::Object(who)
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`),
/// if it is one.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly these four fields.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2);
    valid.then_some(trace)
}

/// The request as the log's expressions see it: without its query
/// string, its cookies, and every header that carries a credential (by its
/// name, or because a policy of the chain reads or asserts one there); any
/// other value holding a copy of a credential reads as `[redacted]`.
fn masked(
    cx: &Context,
    secret_headers: &[crate::headers::HeaderName],
    secrets: &Secrets,
) -> crate::HeaderMap {
    let request = cx.request_headers();
    let kept = request
        .iter()
        .filter(|(name, _)| {
            *name != ":path"
                && !secretive(name)
                && !secret_headers
                    .iter()
                    .any(|secret| secret.as_str() == *name || secret.is_variant(name))
        })
        .map(|(name, value)| (name, secrets.redact(value)));
    let mut headers = crate::HeaderMap::from_pairs(kept);
    if let Some(path) = request.get(":path") {
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        headers.set(":path", &secrets.redact(path));
    }
    headers
}

/// Replaces each copy of a credential in the strings of `value`.
fn redact(value: &mut Value, secrets: &Secrets) {
    match value {
        Value::String(text) => {
            if let Cow::Owned(clean) = secrets.redact(text) {
                *text = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, secrets)),
        Value::Object(fields) => fields.values_mut().for_each(|v| redact(v, secrets)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Action, Engine, HeaderMap, LocalReply, Outcome, ParamError, Phases, Policy, PolicyFactory,
        Registry, Start,
    };

    struct DenyOnHeader;

    impl Policy for DenyOnHeader {
        fn phases(&self) -> Phases {
            Phases::REQUEST_HEADERS
        }
        fn on_request_headers(&self, cx: &mut Context) -> Action {
            // Takes the credential out, as `jwt` does on its way upstream.
            if let Ok(name) = crate::HeaderName::parse("authorization") {
                cx.headers_mut().remove(&name);
            }
            match cx.request_headers().get("x-deny") {
                Some(_) => Action::Respond(LocalReply::text(403, "no\n")),
                None => Action::Continue,
            }
        }
    }

    fn build(_: &Value) -> Result<Box<dyn Policy>, ParamError> {
        Ok(Box::new(DenyOnHeader))
    }

    const FACTORY: PolicyFactory = PolicyFactory {
        name: "deny-on-header",
        version: "0.1.0",
        build,
    };

    /// The decision line for a request with `headers` under `log`.
    fn line(log: &str, headers: &[(&str, &str)]) -> Option<Value> {
        line_for("/p?token=abcd1234", log, headers)
    }

    /// The decision line for a request to `path` with `headers`.
    fn line_for(path: &str, log: &str, headers: &[(&str, &str)]) -> Option<Value> {
        let config = format!(
            "decision_log: {log}\nroutes: [{{name: r, policies: [{{name: deny-on-header, config: {{}}}}]}}]"
        );
        let engine = Engine::from_config(config.as_bytes(), &Registry::new([FACTORY])).unwrap();
        let pairs = [(":method", "GET"), (":path", path), (":authority", "h")];
        let request = HeaderMap::from_pairs(pairs.into_iter().chain(headers.iter().copied()));
        let Start::Run(mut exchange) = engine.start(|| None, request) else {
            panic!("no chain");
        };
        let _: Outcome = exchange.on_request_headers();
        exchange
            .take_decision_log()
            .map(|l| serde_json::from_str(&l).unwrap())
    }

    #[test]
    fn denied_only_logs_denials_and_fields_can_be_chosen() {
        let log = "{requests: denied, fields: [decision, status, policy]}";
        assert_eq!(line(log, &[]), None);
        assert_eq!(
            line(log, &[("x-deny", "1")]),
            Some(json!({ "decision": "denied", "status": 403, "policy": "deny-on-header" }))
        );
    }

    #[test]
    fn expressions_never_carry_credentials_from_headers_or_the_query() {
        // Expressions see neither credential headers nor the query, however
        // they would transform them.
        let log = r#"{fields: [path], expressions: {a: 'request.headers["x-session-token"].substring(1)', q: 'request.query["token"]', n: 'string(size(request.headers))', ok: '"fine"'}}"#;
        let got = line(
            log,
            &[("x-session-token", "t0ps3cret"), ("x-tenant", "acme")],
        )
        .unwrap();
        assert_eq!(
            got,
            json!({ "path": "/p", "fields": { "a": null, "q": null, "n": "1", "ok": "fine" } })
        );
    }

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(&format!("00-{id}-00f067aa0ba902b7-01")), Some(id));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-junk",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
    }

    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

    #[test]
    fn a_credential_copied_anywhere_is_redacted_even_after_a_policy_took_it_out() {
        let log = r#"{fields: [path, request_id, policy], expressions: {
            referer: 'request.headers["referer"]',
            upper: 'request.headers["referer"].upperAscii()',
            tail: 'request.headers["referer"].substring(30)',
            custom: 'request.headers["x-copy"]',
            both: 'request.headers["x-tenant"] + " " + request.headers["x-copy"]',
            path: 'request.path',
            tenant: 'request.headers["x-tenant"]'}}"#;
        let referer = format!("https://app.example/cb?access={TOKEN}");
        let bearer = format!("Bearer {TOKEN}");
        let path = format!("/p/{TOKEN}");
        let got = line_for(
            &path,
            log,
            &[
                ("authorization", &bearer),
                ("referer", &referer),
                ("x-copy", &TOKEN.to_ascii_uppercase()),
                ("x-request-id", TOKEN),
                ("x-tenant", "acme"),
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            json!({
                "path": "/p/[redacted]",
                "request_id": "[redacted]",
                "policy": null,
                "fields": {
                    "referer": "https://app.example/cb?access=[redacted]",
                    // Expressions read the copy as "[redacted]" already, so
                    // no transformation brings any of it back.
                    "upper": "HTTPS://APP.EXAMPLE/CB?ACCESS=[REDACTED]",
                    "tail": "[redacted]",
                    "custom": "[redacted]",
                    "both": "acme [redacted]",
                    "path": "/p/[redacted]",
                    "tenant": "acme",
                }
            })
        );
    }

    #[test]
    fn cookie_query_and_basic_credentials_are_redacted_in_their_copies() {
        let log = r#"{fields: [], expressions: {a: 'request.headers["x-a"]', b: 'request.headers["x-b"]', c: 'request.headers["x-c"]', d: 'request.headers["x-d"]'}}"#;
        let got = line_for(
            "/p?api_key=k3y-from-the-query&page=2",
            log,
            &[
                ("cookie", "theme=dark; sid=0123456789abcdef"),
                ("proxy-authorization", "Basic YWxpY2U6aHVudGVyMg=="), // alice:hunter2
                ("x-a", "sid was 0123456789abcdef"),
                ("x-b", "key=k3y-from-the-query"),
                ("x-c", "pw: hunter2"),
                ("x-d", "dark"),
            ],
        )
        .unwrap();
        assert_eq!(
            got["fields"],
            json!({"a": "sid was [redacted]", "b": "key=[redacted]", "c": "pw: [redacted]", "d": "dark"})
        );
    }

    #[test]
    fn a_client_cannot_blank_what_the_engine_says_by_sending_it_as_a_credential() {
        let log = "{fields: [route_entry, decision, status, policy, host, path]}";
        let got = line_for(
            "/p",
            log,
            &[
                ("x-deny", "1"),
                ("x-api-key", "denied"),
                ("cookie", "s=deny-on-header"),
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            json!({ "route_entry": "r", "decision": "denied", "status": 403,
                    "policy": "deny-on-header", "host": "h", "path": "/p" })
        );
    }
}
