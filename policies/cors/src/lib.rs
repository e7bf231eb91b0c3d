//! `cors`: Cross-Origin Resource Sharing, as Envoy's CORS filter and
//! agentgateway do it.
//!
//! ```yaml
//! - name: cors                              # first in the chain: preflights carry no credentials
//!   config:
//!     allow_origins: ["https://app.example.com", "https://*.example.com"]
//!     allow_origin_expression: 'request.headers["origin"].startsWith("https://") && request.headers["origin"].endsWith(".corp.internal")'   # optional, CEL
//!     allow_methods: [GET, POST, PUT]
//!     allow_headers: [authorization, content-type]
//!     expose_headers: [x-request-id]
//!     max_age: 10m
//!     allow_credentials: true               # never with "*"
//!     reject_disallowed_preflight: true     # 403 instead of 204 without CORS headers
//! ```
//!
//! * A **preflight** (`OPTIONS` with `Origin` and
//!   `Access-Control-Request-Method`) is answered here with 204 and never
//!   reaches the upstream: with the `Access-Control-Allow-*` headers when the
//!   origin, the method and every requested header are allowed; without any
//!   otherwise (or 403 with `reject_disallowed_preflight`).
//! * Other requests go on; the response carries `Access-Control-Allow-Origin`
//!   (the request's origin), `-Allow-Credentials` and `-Expose-Headers` when
//!   the origin is allowed, and none when it is not: the browser then keeps
//!   the response from the page. The upstream's own `Access-Control-*`
//!   headers are removed: on this route, the policy decides.
//! * Every response of the route carries `Vary: Origin`, so a cache never
//!   serves one origin's answer to another.

use std::time::Duration;

use policy_executor::{
    parse_duration, parse_params, Action, AttributeSet, Context, Expression, HeaderName,
    HeaderValue, LocalReply, ParamError, Phase, Phases, Policy, PolicyFactory, ResponseAction,
};
use serde::Deserialize;

/// The policy's factory, for a build's registry.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "cors",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// Where a request whose origin is allowed keeps it for its response.
const ALLOWED_ORIGIN: &str = "cors.allowed_origin";

/// The response headers this policy owns on its route.
const OWNED: [&str; 6] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
];

/// The parameters of `cors`: `allow_origins`, `allow_origin_expression`
/// or both.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// Exact origins (`https://app.example.com`), wildcard subdomains
    /// (`https://*.example.com`), or `*` (any; not with
    /// `allow_credentials`).
    #[serde(default)]
    allow_origins: Vec<String>,
    /// CEL: true allows the request's origin
    /// (`request.headers["origin"]`); an error does not.
    allow_origin_expression: Option<String>,
    /// Methods a preflight may ask for (default GET, HEAD, POST; `*` for
    /// any).
    #[serde(default = "default_methods")]
    allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (`*` for any).
    #[serde(default)]
    allow_headers: Vec<String>,
    /// Response headers the browser lets scripts read.
    #[serde(default)]
    expose_headers: Vec<String>,
    /// How long a browser may cache a preflight's answer, like `10m`.
    max_age: Option<String>,
    /// Let browsers send cookies and credentials.
    #[serde(default)]
    allow_credentials: bool,
    /// Answer a disallowed preflight with 403 (default 204 without CORS
    /// headers).
    #[serde(default)]
    reject_disallowed_preflight: bool,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

/// One entry of `allow_origins`.
#[derive(Debug, PartialEq, Eq)]
enum OriginPattern {
    /// `*`: any origin.
    Any,
    /// `https://app.example.com[:port]`, compared without case.
    Exact(String),
    /// `https://*.example.com[:port]`: the scheme, then one or more labels,
    /// then this suffix (`.example.com[:port]`).
    Subdomains { scheme: String, suffix: String },
}

impl OriginPattern {
    fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Any);
        }
        let lower = text.to_ascii_lowercase();
        let Some((scheme, host)) = lower.split_once("://") else {
            return Err(format!(
                "{text:?} is not an origin like https://app.example.com"
            ));
        };
        if scheme.is_empty() || host.is_empty() || host.contains('/') {
            return Err(format!(
                "{text:?} is not an origin (scheme://host[:port], no path)"
            ));
        }
        match host.strip_prefix('*') {
            Some(suffix)
                if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') =>
            {
                Ok(Self::Subdomains {
                    scheme: scheme.to_owned(),
                    suffix: suffix.to_owned(),
                })
            }
            Some(_) => Err(format!(
                "{text:?}: a wildcard is `*.` at the start of the host only"
            )),
            None if host.contains('*') => Err(format!(
                "{text:?}: a wildcard is `*.` at the start of the host only"
            )),
            None => Ok(Self::Exact(lower)),
        }
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            Self::Subdomains { scheme, suffix } => {
                let origin = origin.to_ascii_lowercase();
                let Some((their_scheme, host)) = origin.split_once("://") else {
                    return false;
                };
                let Some(labels) = host.strip_suffix(suffix.as_str()) else {
                    return false;
                };
                their_scheme == scheme
                    && !labels.is_empty()
                    && labels.split('.').all(|l| {
                        !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
            }
        }
    }
}

struct Cors {
    origins: Vec<OriginPattern>,
    expression: Option<Expression>,
    /// Upper-case method names; `*` allows any.
    methods: Vec<String>,
    /// Lower-case header names; `*` allows any.
    headers: Vec<String>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
    reject: bool,
    allow_methods_value: Option<HeaderValue>,
    owned: Vec<HeaderName>,
    vary: HeaderName,
    origin_header: HeaderName,
    credentials_header: HeaderName,
    expose_header: HeaderName,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    let mut origins = Vec::with_capacity(params.allow_origins.len());
    for (i, text) in params.allow_origins.iter().enumerate() {
        origins.push(
            OriginPattern::parse(text)
                .map_err(|e| ParamError::at(format!("allow_origins[{i}]"), e))?,
        );
    }
    if origins.is_empty() && params.allow_origin_expression.is_none() {
        return Err(ParamError::at(
            "allow_origins",
            "name the allowed origins (or give allow_origin_expression)",
        ));
    }
    if params.allow_credentials && origins.contains(&OriginPattern::Any) {
        return Err(ParamError::at(
            "allow_credentials",
            "credentials cannot be allowed for any origin (`*`): name the origins",
        ));
    }
    if params.allow_credentials {
        // Browsers read `*` literally in answers to requests with
        // credentials: a wildcard there allows nothing, and is a mistake.
        for (field, list) in [
            ("allow_methods", &params.allow_methods),
            ("allow_headers", &params.allow_headers),
            ("expose_headers", &params.expose_headers),
        ] {
            if list.iter().any(|v| v == "*") {
                return Err(ParamError::at(
                    field,
                    "`*` is not a wildcard for requests with credentials: name them",
                ));
            }
        }
    }
    let expression = params
        .allow_origin_expression
        .map(|source| {
            Expression::compile(&source, Phase::Request)
                .map_err(|e| ParamError::at("allow_origin_expression", e.to_string()))
        })
        .transpose()?;
    let mut methods = Vec::with_capacity(params.allow_methods.len());
    for (i, method) in params.allow_methods.iter().enumerate() {
        let valid = method == "*"
            || (!method.is_empty() && method.bytes().all(|b| b.is_ascii_alphabetic()));
        if !valid {
            return Err(ParamError::at(
                format!("allow_methods[{i}]"),
                format!("{method:?} is not a method"),
            ));
        }
        methods.push(method.clone());
    }
    let mut headers = Vec::with_capacity(params.allow_headers.len());
    for (i, name) in params.allow_headers.iter().enumerate() {
        if name != "*" {
            HeaderName::parse(name)
                .map_err(|e| ParamError::at(format!("allow_headers[{i}]"), e.to_string()))?;
        }
        headers.push(name.to_ascii_lowercase());
    }
    for (i, name) in params.expose_headers.iter().enumerate() {
        HeaderName::parse(name)
            .map_err(|e| ParamError::at(format!("expose_headers[{i}]"), e.to_string()))?;
    }
    let max_age = params
        .max_age
        .as_deref()
        .map(|text| {
            parse_duration(text)
                .filter(|d| *d >= Duration::from_secs(1))
                .map(|d| d.as_secs().to_string())
                .ok_or_else(|| {
                    ParamError::at("max_age", format!("{text:?} is not a duration like 10m"))
                })
        })
        .transpose()?;
    let value = |field: &str, text: String| {
        HeaderValue::parse(&text).map_err(|e| ParamError::at(field, e.to_string()))
    };
    let name = |text: &str| HeaderName::parse(text).map_err(|e| ParamError::at(".", e.to_string()));
    Ok(Box::new(Cors {
        origins,
        expression,
        allow_methods_value: (!methods.is_empty())
            .then(|| value("allow_methods", methods.join(", ")))
            .transpose()?,
        methods,
        headers,
        expose: (!params.expose_headers.is_empty())
            .then(|| value("expose_headers", params.expose_headers.join(", ")))
            .transpose()?,
        max_age: max_age.map(|m| value("max_age", m)).transpose()?,
        credentials: params.allow_credentials,
        reject: params.reject_disallowed_preflight,
        owned: OWNED.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
        vary: name("vary")?,
        origin_header: name("access-control-allow-origin")?,
        credentials_header: name("access-control-allow-credentials")?,
        expose_header: name("access-control-expose-headers")?,
    }))
}

impl Cors {
    /// Whether `origin` may read this route's responses. An expression that
    /// cannot be evaluated does not allow it.
    fn allows(&self, cx: &Context, origin: &str) -> bool {
        // Two `Origin` headers (joined with `,`) are no origin at all: which
        // one would the expression and the reflected value agree on?
        if origin.contains(',') {
            return false;
        }
        // `null` (sandboxed frames, file: pages) is never an origin to trust
        // by pattern; only `*` admits it.
        if self.origins.iter().any(|p| p.matches(origin)) {
            return true;
        }
        self.expression
            .as_ref()
            .is_some_and(|e| e.evaluate_bool(cx).unwrap_or(false))
    }

    /// The value of `Access-Control-Allow-Origin` for an allowed origin:
    /// `*` only for any origin without credentials, else the origin itself.
    fn allow_origin_value(&self, origin: &str) -> String {
        if !self.credentials && self.origins.contains(&OriginPattern::Any) {
            "*".to_owned()
        } else {
            origin.to_owned()
        }
    }

    fn preflight(&self, cx: &Context, origin: &str, method: &str) -> Action {
        let requested: Vec<String> = cx
            .request_headers()
            .get("access-control-request-headers")
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let method_ok = self.methods.iter().any(|m| m == "*" || m == method);
        let any_header = self.headers.iter().any(|h| h == "*");
        let headers_ok = any_header || requested.iter().all(|h| self.headers.contains(h));
        let mut headers = vec![(
            "vary".to_owned(),
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".to_owned(),
        )];
        if !(self.allows(cx, origin) && method_ok && headers_ok) {
            let status = if self.reject { 403 } else { 204 };
            return Action::Respond(LocalReply {
                status,
                headers,
                body: Vec::new(),
            });
        }
        headers.push((
            "access-control-allow-origin".into(),
            self.allow_origin_value(origin),
        ));
        if let Some(methods) = &self.allow_methods_value {
            headers.push((
                "access-control-allow-methods".into(),
                methods.as_str().to_owned(),
            ));
        }
        if !requested.is_empty() {
            // Exactly what was asked for (all of it allowed), as a list.
            headers.push(("access-control-allow-headers".into(), requested.join(", ")));
        }
        if let Some(max_age) = &self.max_age {
            headers.push(("access-control-max-age".into(), max_age.as_str().to_owned()));
        }
        if self.credentials {
            headers.push(("access-control-allow-credentials".into(), "true".into()));
        }
        Action::Respond(LocalReply {
            status: 204,
            headers,
            body: Vec::new(),
        })
    }
}

impl Policy for Cors {
    fn phases(&self) -> Phases {
        Phases::headers(true, true)
    }

    fn reads_response_headers(&self) -> bool {
        false
    }

    fn attributes(&self) -> AttributeSet {
        self.expression
            .as_ref()
            .map_or(AttributeSet::NONE, Expression::attributes)
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        let request = cx.request_headers();
        let Some(origin) = request.get("origin").map(str::to_owned) else {
            return Action::Continue;
        };
        let method = request.get(":method").unwrap_or_default();
        if method == "OPTIONS" {
            if let Some(wanted) = request.get("access-control-request-method") {
                let wanted = wanted.trim().to_owned();
                return self.preflight(cx, &origin, &wanted);
            }
        }
        if self.allows(cx, &origin) {
            let value = self.allow_origin_value(&origin);
            cx.metadata_mut()
                .insert(ALLOWED_ORIGIN.into(), serde_json::Value::String(value));
        }
        Action::Continue
    }

    fn on_response_headers(&self, cx: &mut Context) -> ResponseAction {
        let allowed = cx
            .metadata()
            .get(ALLOWED_ORIGIN)
            .and_then(|v| v.as_str())
            .and_then(|v| HeaderValue::parse(v).ok());
        let mut headers = cx.headers_mut();
        for name in &self.owned {
            headers.remove(name);
        }
        if let Ok(origin) = HeaderValue::parse("Origin") {
            headers.append(&self.vary, &origin);
        }
        if let Some(origin) = allowed {
            headers.set(&self.origin_header, &origin);
            if self.credentials {
                if let Ok(yes) = HeaderValue::parse("true") {
                    headers.set(&self.credentials_header, &yes);
                }
            }
            if let Some(expose) = &self.expose {
                headers.set(&self.expose_header, expose);
            }
        }
        ResponseAction::Continue
    }
}

#[cfg(test)]
mod tests;
