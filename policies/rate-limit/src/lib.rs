//! `rate-limit`: how many requests a caller, a tenant or a route may make,
//! counted per Envoy (local) or across every Envoy and shim replica
//! (global, in Redis through a rate limit service).
//!
//! ```yaml
//! - name: rate-limit
//!   config:
//!     limits:
//!       - name: per-tenant                     # names the bucket and the RateLimit headers
//!         descriptors: { tenant: 'request.headers["x-tenant"]' }   # CEL; one bucket per value
//!         default_bucket: no-tenant            # where requests go whose key cannot be evaluated
//!         requests: 100
//!         unit: minute                         # second, minute, hour, day (or window: 10s)
//!         cost: '1'                            # CEL, optional
//!         overrides: [{ descriptors: { tenant: gold }, requests: 1000 }]
//!       - name: everyone
//!         requests: 5000
//!         unit: second
//!     headers: always                          # RateLimit headers on allowed responses too
//!     # global: { grpc: { uri: "http://ratelimit:8081", cluster: ratelimit }, domain: edge,
//!     #           timeout: 100ms, failure_mode: deny }
//! ```
//!
//! Every limit applies and the tightest decides: a request is admitted only
//! if every limit has room, and a denied request consumes nothing. Each
//! bucket is a GCRA token bucket ([`gcra`]): it starts full, admits
//! `requests` at once, and refills one request's worth every
//! `unit / requests`.
//!
//! * **Local** (no `global`): the buckets live in the host's shared storage
//!   ([`local`]), so all of an Envoy's workers (all of the shim's threads)
//!   count against one bucket, exactly.
//! * **Global**: each request asks a rate limit service
//!   (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) over
//!   the callout mechanism ([`global`]); the project's service
//!   (`policy-ratelimit`) counts in Redis, Envoy's ratelimit service and
//!   Limitador work too. When it cannot answer, `failure_mode` decides
//!   (deny by default).
//!
//! A denial is `429` with `Retry-After`, `RateLimit-Policy` and `RateLimit`
//! (draft-ietf-httpapi-ratelimit-headers).

pub mod gcra;
pub mod global;
pub mod local;
pub mod proto;

use std::collections::BTreeMap;
use std::time::Duration;

use policy_executor::{
    check_reply_status, parse_duration, parse_params, Action, AttributeSet, Context, Expression,
    HeaderName, HeaderValue, LocalReply, ParamError, Phase, Phases, Policy, PolicyFactory,
    ResponseAction,
};
use serde::Deserialize;

use crate::gcra::{Rate, MICROS};
use crate::proto::Unit;

/// The policy's factory, for a build's registry.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "rate-limit",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// The longest window a limit may have: a year.
const MAX_WINDOW_SECS: u64 = 365 * 86_400;

/// The most limits one policy may have (and one rate limit call carries).
const MAX_LIMITS: usize = 64;

/// The most local buckets a limit may keep.
const MAX_KEYS: u64 = 1_000_000;

/// The parameters of `rate-limit`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// The limits; a request is refused when any of them is spent.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    limits: Vec<LimitParams>,
    /// Count in the rate limit service (`policy-ratelimit` or any
    /// `envoy.service.ratelimit.v3` service) instead of this Envoy's
    /// memory.
    global: Option<global::GlobalParams>,
    /// When the `RateLimit-Policy` and `RateLimit` headers are sent.
    #[serde(default)]
    headers: HeaderMode,
    /// The reply to a limited request (default 429).
    deny: Option<DenyParams>,
    /// Local mode: buckets kept per limit (default 10000); more keys share
    /// buckets, never loosening a limit.
    max_keys: Option<u64>,
    /// The status when the limit cannot be decided (default 500).
    #[cfg_attr(feature = "schema", schemars(range(min = 200, max = 599)))]
    status_on_error: Option<u16>,
}

/// A limit: `requests` per `unit` or `window`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "limit"))]
struct LimitParams {
    /// Letters, digits, `-`, `_` and `.`: the limit's name in the headers
    /// and the buckets' keys. Limits of the same name share buckets across
    /// route entries.
    name: String,
    /// Descriptor key to CEL expression: one bucket per distinct tuple of
    /// values (none: one bucket).
    #[serde(default)]
    descriptors: BTreeMap<String, String>,
    /// The bucket of requests whose descriptors cannot be evaluated
    /// (default `default`).
    default_bucket: Option<String>,
    /// Requests allowed per unit or window.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 4_294_967_295u64)))]
    requests: u64,
    /// The period (not with `window`).
    unit: Option<UnitName>,
    /// A duration like `10s` (local mode; global mode needs `1s`, `1m`,
    /// `1h` or `24h`).
    window: Option<String>,
    /// CEL: what a request counts, a non-negative integer (default 1); one
    /// that cannot be evaluated refuses the request with
    /// `status_on_error`.
    cost: Option<String>,
    /// Other rates for given descriptor values.
    #[serde(default)]
    overrides: Vec<OverrideParams>,
}

/// A rate for given descriptor values.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "override"))]
struct OverrideParams {
    /// The descriptor values the override applies to.
    descriptors: BTreeMap<String, String>,
    /// Requests allowed per unit or window for them.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 4_294_967_295u64)))]
    requests: u64,
}

/// The reply to a limited request.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "deny"))]
struct DenyParams {
    /// The status (default 429).
    #[cfg_attr(feature = "schema", schemars(range(min = 200, max = 599)))]
    status: Option<u16>,
    /// The body.
    body: Option<String>,
    /// The body's `content-type`.
    content_type: Option<String>,
}

/// A period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", schemars(rename = "unit"))]
enum UnitName {
    /// A second.
    Second,
    /// A minute.
    Minute,
    /// An hour.
    Hour,
    /// A day.
    Day,
}

impl UnitName {
    fn unit(self) -> Unit {
        match self {
            Self::Second => Unit::Second,
            Self::Minute => Unit::Minute,
            Self::Hour => Unit::Hour,
            Self::Day => Unit::Day,
        }
    }
}

/// Which responses carry the `RateLimit-Policy` and `RateLimit` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", schemars(rename = "headers"))]
enum HeaderMode {
    /// Only denials.
    #[default]
    Denied,
    /// Every response, allowed ones too.
    Always,
}

/// Descriptor keys the policy sends itself.
const RESERVED_KEYS: [&str; 2] = ["limit", "default_bucket"];

/// One limit, compiled.
pub(crate) struct Limit {
    name: String,
    descriptors: Vec<(String, Expression)>,
    default_bucket: String,
    requests: u64,
    /// The window in microseconds.
    period_us: u64,
    /// The unit, when the window is one (global mode needs it).
    unit: Option<Unit>,
    cost: Option<Expression>,
    overrides: Vec<(Vec<(String, String)>, u64)>,
}

/// The bucket a request falls in for one limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bucket {
    /// The descriptors' values, in the order of their keys.
    Values(Vec<(String, String)>),
    /// A descriptor could not be evaluated: the limit's default bucket.
    Default,
}

/// One limit's answer to one request, for the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) allowed: bool,
    /// Requests per window for this bucket (after overrides).
    pub(crate) quota: u64,
    pub(crate) window_secs: u64,
    /// What is left and when the bucket is full again, when known (a rate
    /// limit service may answer with the overall decision alone).
    pub(crate) state: Option<State>,
    /// When refused: seconds until this request would be admitted; `None`
    /// if never (it costs more than the bucket holds) or unknown.
    pub(crate) retry_after_secs: Option<u64>,
}

/// A bucket's state after a decision, for the `RateLimit` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) remaining: u64,
    pub(crate) reset_secs: u64,
}

impl Limit {
    /// The bucket `cx` falls in.
    pub(crate) fn bucket(&self, cx: &Context) -> Bucket {
        let mut values = Vec::with_capacity(self.descriptors.len());
        for (key, expression) in &self.descriptors {
            match expression.evaluate_text(cx) {
                Ok(Some(value)) => values.push((key.clone(), value)),
                Ok(None) | Err(_) => return Bucket::Default,
            }
        }
        Bucket::Values(values)
    }

    /// The requests per window of `bucket`: an override's, else the limit's.
    pub(crate) fn quota(&self, bucket: &Bucket) -> u64 {
        let Bucket::Values(values) = bucket else {
            return self.requests;
        };
        self.overrides
            .iter()
            .find(|(wanted, _)| {
                wanted
                    .iter()
                    .all(|(key, value)| values.iter().any(|(k, v)| k == key && v == value))
            })
            .map_or(self.requests, |(_, requests)| *requests)
    }

    pub(crate) fn rate(&self, bucket: &Bucket) -> Rate {
        Rate {
            requests: self.quota(bucket),
            period_us: self.period_us,
        }
    }

    /// What the request costs against this limit; `Err` when the cost
    /// expression cannot be evaluated to a non-negative integer.
    pub(crate) fn cost(&self, cx: &Context) -> Result<u64, String> {
        let Some(expression) = &self.cost else {
            return Ok(1);
        };
        let text = expression
            .evaluate_text(cx)
            .map_err(|e| e.to_string())?
            .ok_or("the cost is null")?;
        text.parse::<u64>()
            .map_err(|_| format!("the cost {text:?} is not a non-negative integer"))
    }

    /// The bucket's identity within the limit: its keys and values, each
    /// prefixed with its length so no value can pose as two, and no two
    /// policies' limits of one name share a bucket unless their
    /// descriptors have the same keys.
    pub(crate) fn bucket_id(&self, bucket: &Bucket) -> String {
        match bucket {
            Bucket::Default => format!("!{}", self.default_bucket),
            Bucket::Values(values) => {
                let mut id = String::new();
                for (key, value) in values {
                    for part in [key, value] {
                        id.push_str(&part.len().to_string());
                        id.push(':');
                        id.push_str(part);
                    }
                }
                id
            }
        }
    }
}

struct RateLimit {
    limits: Vec<Limit>,
    mode: Mode,
    headers: HeaderMode,
    deny_status: u16,
    deny_body: String,
    deny_content_type: String,
    status_on_error: u16,
    attributes: AttributeSet,
    policy_header: HeaderName,
    state_header: HeaderName,
    /// Where an admitted request keeps its headers for the response phase:
    /// per instance (by its first limit's name), so two `rate-limit`
    /// policies in one chain do not overwrite each other's.
    metadata_keys: [String; 2],
}

enum Mode {
    Local(local::Buckets),
    Global(global::Service),
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    if params.limits.is_empty() || params.limits.len() > MAX_LIMITS {
        return Err(ParamError::at(
            "limits",
            format!("between 1 and {MAX_LIMITS} limits"),
        ));
    }
    let mut limits = Vec::with_capacity(params.limits.len());
    for (index, limit) in params.limits.into_iter().enumerate() {
        let compiled = compile_limit(index, limit)?;
        if limits.iter().any(|l: &Limit| l.name == compiled.name) {
            return Err(ParamError::at(
                format!("limits[{index}].name"),
                format!("{:?} names two limits of this policy", compiled.name),
            ));
        }
        limits.push(compiled);
    }
    let mut attributes = AttributeSet::NONE;
    for limit in &limits {
        for (_, expression) in &limit.descriptors {
            attributes = attributes | expression.attributes();
        }
        if let Some(cost) = &limit.cost {
            attributes = attributes | cost.attributes();
        }
    }
    let mode = match params.global {
        Some(global) => {
            if params.max_keys.is_some() {
                return Err(ParamError::at(
                    "max_keys",
                    "bounds local buckets; global ones expire in Redis",
                ));
            }
            Mode::Global(global::Service::build(global, &limits)?)
        }
        None => {
            let max_keys = params.max_keys.unwrap_or(10_000);
            if !(1..=MAX_KEYS).contains(&max_keys) {
                return Err(ParamError::at(
                    "max_keys",
                    format!("between 1 and {MAX_KEYS}"),
                ));
            }
            Mode::Local(local::Buckets::new(max_keys))
        }
    };
    let deny = params.deny.unwrap_or(DenyParams {
        status: None,
        body: None,
        content_type: None,
    });
    let deny_content_type = deny.content_type.unwrap_or_else(|| "text/plain".into());
    if HeaderValue::parse(&deny_content_type).is_err() {
        return Err(ParamError::at(
            "deny.content_type",
            "not a valid header value",
        ));
    }
    let first = limits.first().map_or("", |l| l.name.as_str());
    let metadata_keys = [
        format!("rate-limit.{first}.ratelimit-policy"),
        format!("rate-limit.{first}.ratelimit"),
    ];
    Ok(Box::new(RateLimit {
        limits,
        mode,
        headers: params.headers,
        deny_status: check_reply_status("deny.status", deny.status.unwrap_or(429))?,
        deny_body: deny.body.unwrap_or_else(|| "rate limit exceeded\n".into()),
        deny_content_type,
        status_on_error: check_reply_status(
            "status_on_error",
            params.status_on_error.unwrap_or(500),
        )?,
        attributes,
        policy_header: header_name("ratelimit-policy")?,
        state_header: header_name("ratelimit")?,
        metadata_keys,
    }))
}

fn header_name(name: &str) -> Result<HeaderName, ParamError> {
    HeaderName::parse(name).map_err(|e| ParamError::at(".", format!("{name}: {e}")))
}

fn compile_limit(index: usize, limit: LimitParams) -> Result<Limit, ParamError> {
    let at = |field: &str| format!("limits[{index}].{field}");
    let name_ok = !limit.name.is_empty()
        && limit
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !name_ok {
        return Err(ParamError::at(
            at("name"),
            "letters, digits, `-`, `_` and `.` only (it is a header token and a storage key)",
        ));
    }
    if limit.requests == 0 || limit.requests > u64::from(u32::MAX) {
        return Err(ParamError::at(at("requests"), "between 1 and 4294967295"));
    }
    let (period_us, unit) = match (limit.unit, &limit.window) {
        (Some(unit), None) => {
            let unit = unit.unit();
            (unit.seconds().unwrap_or(1) * MICROS, Some(unit))
        }
        (None, Some(text)) => {
            let window = parse_duration(text).ok_or_else(|| {
                ParamError::at(
                    at("window"),
                    format!("{text:?} is not a duration like 10s or 1m"),
                )
            })?;
            // Whole seconds: the RateLimit-Policy header's `w` is seconds.
            if window.subsec_nanos() != 0
                || window < Duration::from_secs(1)
                || window > Duration::from_secs(MAX_WINDOW_SECS)
            {
                return Err(ParamError::at(
                    at("window"),
                    "whole seconds, between 1s and a year",
                ));
            }
            let micros = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
            let unit = [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day]
                .into_iter()
                .find(|u| u.seconds().map(|s| s * MICROS) == Some(micros));
            (micros, unit)
        }
        _ => {
            return Err(ParamError::at(
                format!("limits[{index}]"),
                "exactly one of `unit` and `window` says how often `requests` refill",
            ))
        }
    };
    let mut descriptors = Vec::with_capacity(limit.descriptors.len());
    for (key, source) in limit.descriptors {
        if key.is_empty() || RESERVED_KEYS.contains(&key.as_str()) {
            return Err(ParamError::at(
                at(&format!("descriptors.{key}")),
                format!("{key:?} cannot name a descriptor (empty, or one the policy sends itself)"),
            ));
        }
        let expression = Expression::compile(&source, Phase::Request)
            .map_err(|e| ParamError::at(at(&format!("descriptors.{key}")), e.to_string()))?;
        descriptors.push((key, expression));
    }
    let cost = limit
        .cost
        .map(|source| {
            Expression::compile(&source, Phase::Request)
                .map_err(|e| ParamError::at(at("cost"), e.to_string()))
        })
        .transpose()?;
    let mut overrides = Vec::with_capacity(limit.overrides.len());
    for (o, each) in limit.overrides.into_iter().enumerate() {
        for key in each.descriptors.keys() {
            if !descriptors.iter().any(|(k, _)| k == key) {
                return Err(ParamError::at(
                    at(&format!("overrides[{o}].descriptors.{key}")),
                    "not a descriptor of this limit",
                ));
            }
        }
        if each.descriptors.is_empty() {
            return Err(ParamError::at(
                at(&format!("overrides[{o}].descriptors")),
                "an override names the descriptor values it applies to",
            ));
        }
        if each.requests == 0 || each.requests > u64::from(u32::MAX) {
            return Err(ParamError::at(
                at(&format!("overrides[{o}].requests")),
                "between 1 and 4294967295",
            ));
        }
        Rate {
            requests: each.requests,
            period_us,
        }
        .check()
        .map_err(|e| ParamError::at(at(&format!("overrides[{o}].requests")), e))?;
        overrides.push((each.descriptors.into_iter().collect(), each.requests));
    }
    Rate {
        requests: limit.requests,
        period_us,
    }
    .check()
    .map_err(|e| ParamError::at(at("requests"), e))?;
    Ok(Limit {
        name: limit.name,
        descriptors,
        default_bucket: limit.default_bucket.unwrap_or_else(|| "default".into()),
        requests: limit.requests,
        period_us,
        unit,
        cost,
        overrides,
    })
}

impl RateLimit {
    /// The denial, with the headers of every limit and `Retry-After` of the
    /// ones that refused.
    fn deny(&self, reports: &[(&Limit, Report)]) -> Action {
        let mut headers = vec![("content-type".to_owned(), self.deny_content_type.clone())];
        // The latest of the refusing limits; none if one of them never
        // admits this request.
        let refusals: Option<Vec<u64>> = reports
            .iter()
            .filter(|(_, r)| !r.allowed)
            .map(|(_, r)| r.retry_after_secs)
            .collect();
        if let Some(retry_after) = refusals.and_then(|r| r.into_iter().max()) {
            headers.push(("retry-after".to_owned(), retry_after.to_string()));
        }
        headers.extend(
            rate_limit_headers(reports)
                .into_iter()
                .filter(|(_, value)| !value.is_empty()),
        );
        Action::Respond(LocalReply {
            status: self.deny_status,
            headers,
            body: self.deny_body.clone().into_bytes(),
        })
    }

    /// What cannot be decided (a cost that does not evaluate) is refused.
    fn error(&self, cx: &Context, why: &str) -> Action {
        log::warn!(
            "rate-limit on {:?}: {why}: refused with {}",
            cx.route().chain,
            self.status_on_error
        );
        Action::Respond(LocalReply::text(
            self.status_on_error,
            "rate limit cannot be decided\n",
        ))
    }

    /// Admitted: keeps what the response's headers need.
    fn allow(&self, cx: &mut Context, reports: &[(&Limit, Report)]) -> Action {
        if self.headers == HeaderMode::Always {
            for (key, (_, value)) in self.metadata_keys.iter().zip(rate_limit_headers(reports)) {
                if !value.is_empty() {
                    cx.metadata_mut()
                        .insert(key.clone(), serde_json::Value::String(value));
                }
            }
        }
        Action::Continue
    }
}

/// `RateLimit-Policy` and `RateLimit` for `reports`, one list item per
/// limit (draft-ietf-httpapi-ratelimit-headers); `RateLimit` only for the
/// limits whose state is known, empty when none is.
fn rate_limit_headers(reports: &[(&Limit, Report)]) -> [(String, String); 2] {
    let mut policy = String::new();
    let mut state = String::new();
    for (limit, report) in reports {
        if !policy.is_empty() {
            policy.push_str(", ");
        }
        policy.push_str(&format!(
            "\"{}\";q={};w={}",
            limit.name, report.quota, report.window_secs
        ));
        if let Some(now) = report.state {
            if !state.is_empty() {
                state.push_str(", ");
            }
            state.push_str(&format!(
                "\"{}\";r={};t={}",
                limit.name, now.remaining, now.reset_secs
            ));
        }
    }
    [
        ("ratelimit-policy".to_owned(), policy),
        ("ratelimit".to_owned(), state),
    ]
}

/// Microseconds as whole seconds, rounded up.
pub(crate) fn secs_up(micros: u64) -> u64 {
    micros.div_ceil(MICROS)
}

impl Policy for RateLimit {
    fn phases(&self) -> Phases {
        Phases::headers(true, self.headers == HeaderMode::Always)
    }

    fn reads_response_headers(&self) -> bool {
        false
    }

    fn attributes(&self) -> AttributeSet {
        self.attributes
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        let mut costs = Vec::with_capacity(self.limits.len());
        for limit in &self.limits {
            match limit.cost(cx) {
                Ok(cost) => costs.push(cost),
                Err(why) => return self.error(cx, &format!("limit {:?}: {why}", limit.name)),
            }
        }
        let buckets: Vec<Bucket> = self.limits.iter().map(|l| l.bucket(cx)).collect();
        let decided = match &self.mode {
            Mode::Local(store) => store.decide(cx.host(), &self.limits, &buckets, &costs),
            Mode::Global(service) => match cx.answer() {
                None => return Action::Call(service.call(&self.limits, &buckets, &costs)),
                Some(answer) => service.read(answer, &self.limits, &buckets),
            },
        };
        let reports = match decided {
            Ok(reports) => reports,
            Err(why) => {
                let Mode::Global(service) = &self.mode else {
                    return self.error(cx, &why);
                };
                return match service.failure_mode {
                    global::FailureMode::Deny => self.error(cx, &why),
                    global::FailureMode::Allow => {
                        log::warn!(
                            "rate-limit on {:?}: {why}: allowed (failure_mode: allow)",
                            cx.route().chain
                        );
                        Action::Continue
                    }
                };
            }
        };
        let reports: Vec<(&Limit, Report)> = self.limits.iter().zip(reports).collect();
        if reports.iter().all(|(_, r)| r.allowed) {
            self.allow(cx, &reports)
        } else {
            self.deny(&reports)
        }
    }

    fn on_response_headers(&self, cx: &mut Context) -> ResponseAction {
        let mut values = Vec::with_capacity(2);
        for (name, key) in [&self.policy_header, &self.state_header]
            .into_iter()
            .zip(&self.metadata_keys)
        {
            let value = cx
                .metadata()
                .get(key)
                .and_then(|v| v.as_str())
                .and_then(|v| HeaderValue::parse(v).ok());
            if let Some(value) = value {
                values.push((name, value));
            }
        }
        let mut headers = cx.headers_mut();
        for (name, value) in values {
            headers.set_only(name, &value);
        }
        ResponseAction::Continue
    }
}

#[cfg(test)]
mod tests;
