//! CEL expressions over a request: the attribute vocabulary, compilation
//! with a static check, and evaluation.
//!
//! The interpreter is the `cel` crate (the renamed successor of
//! `cel-interpreter`), built without its default features: `regex` alone
//! would double the Wasm module with Unicode tables, and `chrono` brings
//! time zones no policy here needs. So `matches()`, `duration()` and
//! `timestamp()` are not available, and the static check says so.
//!
//! # Compile once, check everything
//!
//! [`Expression::compile`] parses the text and then walks it (`check`):
//! every variable must be an attribute root below, every field of `request`,
//! `source`, `connection` and `route` must exist, and every function must
//! be one this build evaluates. CEL as implemented here has no type checker,
//! so this walk is what turns `request.methd` or `startWith(...)` into a
//! configuration error instead of a policy that fails every request. The
//! walk also records which attributes the expression reads, so a host
//! fetches only those and evaluation builds only those.
//!
//! # Attributes
//!
//! Every name an expression can read is defined once, in
//! [`vocabulary::VOCABULARY`]: its type, where it can be read, and what it
//! holds. `docs/cel.md` renders that table.
//!
//! An attribute the request does not have (no client certificate, a header
//! that was not sent) is absent: reading it is an evaluation error, which
//! each policy turns into a documented outcome. `has(source.identity)` and
//! `"x-tenant" in request.headers` test for presence. `bind` builds the
//! variables of one evaluation; `fast` answers the common shapes without
//! the interpreter; `trace` records evaluations for `policy-tool explain`.

use std::fmt;
use std::sync::{Arc, OnceLock};

use cel::Value;

use crate::attributes::{Attribute, AttributeSet};
use crate::policy::Context;
use bind::bind;
use check::check_size;
pub use check::{
    FUNCTIONS, MAX_EXPRESSION_BYTES, MAX_EXPRESSION_DEPTH, MAX_EXPRESSION_NODES,
    MAX_SOURCE_NESTING, MAX_SOURCE_OPERATORS,
};
// For the fast path and the ambiguity check, which read the request as the
// binding does.
use bind::{header_key, host, path_and_query, response_code};
use check::select_path;

/// Which message an expression is evaluated on, and whether its body is
/// there. Request expressions cannot read `response`: it does not exist
/// yet; only body expressions read a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Evaluated on the request headers (and `when:` guards).
    Request,
    /// Evaluated on the request once its whole body has arrived: what
    /// `Request` reads, plus `request.body` and `request.json`.
    RequestBody,
    /// Evaluated on the response headers.
    Response,
    /// Evaluated on the response once its whole body has arrived.
    ResponseBody,
}

/// A compiled, checked CEL expression.
pub struct Expression {
    source: String,
    program: cel::Program,
    /// The same expression as direct code, if it has a common shape.
    fast: Option<fast::Fast>,
    fields: Fields,
    /// The headers and query parameters it reads by name.
    reads: ambiguous::Reads,
    /// The value of an expression that reads no attribute (`"edge"`), worked
    /// out once: nothing it could call depends on time or chance.
    constant: Option<Value>,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

/// Why an expression was refused at configuration time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpressionError {
    /// The expression as written.
    pub expression: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ExpressionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An expression refused for its size is quoted by its start, so the
        // error stays one readable log line.
        const QUOTED: usize = 160;
        if self.expression.len() <= QUOTED {
            return write!(f, "expression {:?}: {}", self.expression, self.reason);
        }
        let mut end = QUOTED;
        while !self.expression.is_char_boundary(end) {
            end -= 1;
        }
        write!(
            f,
            "expression {:?}... ({} bytes): {}",
            &self.expression[..end],
            self.expression.len(),
            self.reason
        )
    }
}

impl std::error::Error for ExpressionError {}

/// Why an evaluation produced no usable value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Expression {
    /// Parses and checks `source` for evaluation in `phase`.
    pub fn compile(source: &str, phase: Phase) -> Result<Self, ExpressionError> {
        let fault = |reason: String| ExpressionError {
            expression: source.to_owned(),
            reason,
        };
        if source.trim().is_empty() {
            return Err(fault("the expression is empty".into()));
        }
        check_size(source).map_err(fault)?;
        let program = env().compile(source).map_err(|errors| {
            let reason = errors.to_string();
            fault(format!("syntax error: {}", reason.trim()))
        })?;
        let (fields, reads) = check::walk(program.expression(), phase).map_err(fault)?;
        let constant = (fields == Fields::NONE)
            .then(|| {
                program
                    .execute(&cel::Context::with_env(Arc::clone(env())))
                    .ok()
            })
            .flatten();
        let fast = fast::Fast::compile(program.expression());
        Ok(Self {
            source: source.to_owned(),
            program,
            fast,
            fields,
            reads,
            constant,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The connection attributes this expression reads, for the host to
    /// fetch.
    pub fn attributes(&self) -> AttributeSet {
        self.fields.attributes()
    }

    /// Whether it reads the message's body (`request.body`,
    /// `request.json`, or their `response` twins): a policy evaluates such
    /// an expression in its body phase.
    pub fn reads_body(&self) -> bool {
        self.fields.has(Fields::BODIES)
    }

    /// `Err` if the request gives a value this expression reads in two
    /// readings (see [`ambiguous`]): what makes every evaluation on it fail.
    pub fn check_unambiguous(&self, cx: &Context) -> Result<(), EvalError> {
        self.reads.check(cx.request_headers())
    }

    /// Evaluates to a boolean; any other result is an error, and so is a
    /// request that gives a value the expression reads in two readings
    /// (see [`ambiguous`]).
    pub fn evaluate_bool(&self, cx: &Context) -> Result<bool, EvalError> {
        let result = self.bool_value(cx);
        if let Some(tracing) = cx.tracing() {
            let value = match &result {
                Ok(b) => b.to_string(),
                Err(e) => format!("error: {e}"),
            };
            tracing.record(&self.source, value, self.parts(cx));
        }
        result
    }

    fn bool_value(&self, cx: &Context) -> Result<bool, EvalError> {
        self.reads.check(cx.request_headers())?;
        if let Some(fast::Fast::Condition(condition)) = &self.fast {
            if let Some(answer) = settled(condition.eval(cx)) {
                return answer;
            }
        }
        self.interpret_bool(cx)
    }

    fn interpret_bool(&self, cx: &Context) -> Result<bool, EvalError> {
        match self.evaluate(cx)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError(format!(
                "expected a bool, got {}",
                other.type_of()
            ))),
        }
    }

    /// Evaluates to text: strings as they are, numbers and booleans
    /// formatted. `Ok(None)` for `null`; other types are errors, and so is
    /// an ambiguous request, as for [`Expression::evaluate_bool`].
    pub fn evaluate_text(&self, cx: &Context) -> Result<Option<String>, EvalError> {
        let result = self.text_value(cx);
        if let Some(tracing) = cx.tracing() {
            let value = match &result {
                Ok(Some(text)) => format!("{text:?}"),
                Ok(None) => "null".to_owned(),
                Err(e) => format!("error: {e}"),
            };
            tracing.record(&self.source, value, self.parts(cx));
        }
        result
    }

    fn text_value(&self, cx: &Context) -> Result<Option<String>, EvalError> {
        self.reads.check(cx.request_headers())?;
        if let Some(fast::Fast::Text(parts)) = &self.fast {
            if let Some(answer) = settled(fast::concatenate(parts, cx)) {
                return answer.map(Some);
            }
        }
        self.interpret_text(cx)
    }

    fn interpret_text(&self, cx: &Context) -> Result<Option<String>, EvalError> {
        Ok(Some(match self.evaluate(cx)? {
            Value::String(s) => s.as_ref().clone(),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => return Ok(None),
            other => {
                return Err(EvalError(format!(
                    "expected a string, got {}",
                    other.type_of()
                )))
            }
        }))
    }

    /// Evaluates to a JSON value: what a body edit writes. Maps need
    /// string keys; bytes and other CEL-only types are errors, and so is an
    /// ambiguous request, as for [`Expression::evaluate_bool`].
    pub fn evaluate_json(&self, cx: &Context) -> Result<serde_json::Value, EvalError> {
        let result = self
            .reads
            .check(cx.request_headers())
            .and_then(|()| self.evaluate(cx))
            .and_then(|value| to_json(&value));
        if let Some(tracing) = cx.tracing() {
            let value = match &result {
                Ok(json) => json.to_string(),
                Err(e) => format!("error: {e}"),
            };
            tracing.record(&self.source, value, self.parts(cx));
        }
        result
    }

    fn evaluate(&self, cx: &Context) -> Result<Value, EvalError> {
        if let Some(value) = &self.constant {
            return Ok(value.clone());
        }
        self.program
            .execute(&self.activation(cx))
            .map_err(|e| EvalError(e.to_string()))
    }

    /// The interpreter's variables for `cx`: what the expression reads.
    fn activation<'a>(&self, cx: &'a Context) -> cel::Context<'a, 'a> {
        let mut activation = cel::Context::with_env(Arc::clone(env()));
        for (name, value) in bind(self.fields, cx) {
            activation.add_variable_as_val(name, value);
        }
        activation
    }

    /// The value of each part of the expression, for a traced request.
    fn parts(&self, cx: &Context) -> Vec<(String, String)> {
        trace::parts(self.program.expression(), &self.activation(cx))
    }
}

/// A CEL value as JSON.
fn to_json(value: &Value) -> Result<serde_json::Value, EvalError> {
    use serde_json::Value as Json;
    Ok(match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| EvalError(format!("{f} is not a JSON number")))?,
        Value::String(s) => Json::String(s.as_ref().clone()),
        Value::List(items) => Json::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Value::Map(map) => {
            let mut object = serde_json::Map::new();
            for (key, value) in map.map.iter() {
                let cel::objects::Key::String(key) = key else {
                    return Err(EvalError("a JSON object's keys are strings".into()));
                };
                object.insert(key.as_ref().clone(), to_json(value)?);
            }
            Json::Object(object)
        }
        other => return Err(EvalError(format!("a {} has no JSON form", other.type_of()))),
    })
}

/// The fast path's answer, or `None` where the interpreter must answer.
fn settled<T>(fast: fast::Eval<'_, T>) -> Option<Result<T, EvalError>> {
    match fast {
        Ok(value) => Some(Ok(value)),
        Err(fast::Stop::Missing(attribute)) => {
            Some(Err(EvalError(format!("no such attribute: {attribute}"))))
        }
        Err(fast::Stop::Interpret) => None,
    }
}

/// The environment every expression is compiled and run with: the standard
/// library plus the strings extension (`lowerAscii`, `replace`, `split`...).
fn env() -> &'static Arc<cel::Env> {
    static ENV: OnceLock<Arc<cel::Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = cel::Env::stdlib();
        // Cannot fail: the strings extension declares no stdlib name.
        let _ = env.add_extension(cel::extensions::strings);
        Arc::new(env)
    })
}

/// Bits for the attribute fields an expression reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields(u32);

impl Fields {
    const NONE: Self = Self(0);
    const REQUEST_METHOD: Self = Self(1);
    const REQUEST_PATH: Self = Self(1 << 1);
    const REQUEST_QUERY: Self = Self(1 << 2);
    const REQUEST_HOST: Self = Self(1 << 3);
    const REQUEST_SCHEME: Self = Self(1 << 4);
    const REQUEST_HEADERS: Self = Self(1 << 5);
    const SOURCE_ADDRESS: Self = Self(1 << 6);
    const SOURCE_PORT: Self = Self(1 << 7);
    const SOURCE_SPIFFE_ID: Self = Self(1 << 8);
    const SOURCE_IDENTITY: Self = Self(1 << 9);
    const CONNECTION_MTLS: Self = Self(1 << 10);
    const CONNECTION_SNI: Self = Self(1 << 11);
    const CONNECTION_TLS_VERSION: Self = Self(1 << 12);
    const ROUTE_NAME: Self = Self(1 << 13);
    const METADATA: Self = Self(1 << 14);
    const RESPONSE_CODE: Self = Self(1 << 15);
    const RESPONSE_HEADERS: Self = Self(1 << 16);
    const JWT: Self = Self(1 << 17);
    const REQUEST_BODY: Self = Self(1 << 18);
    const REQUEST_JSON: Self = Self(1 << 19);
    const RESPONSE_BODY: Self = Self(1 << 25);
    const RESPONSE_JSON: Self = Self(1 << 26);
    const BODIES: Self = Self(
        Self::REQUEST_BODY.0 | Self::REQUEST_JSON.0 | Self::RESPONSE_BODY.0 | Self::RESPONSE_JSON.0,
    );
    // Each root is bound when an expression names it, even if none of its
    // fields are present: `has(source.identity)` must be false, not an
    // undeclared variable.
    const REQUEST: Self = Self(1 << 20);
    const SOURCE: Self = Self(1 << 21);
    const CONNECTION: Self = Self(1 << 22);
    const ROUTE: Self = Self(1 << 23);
    const RESPONSE: Self = Self(1 << 24);

    const fn has(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    fn attributes(self) -> AttributeSet {
        let mut set = AttributeSet::NONE;
        for (fields, attribute) in [
            (
                Self::SOURCE_ADDRESS.with(Self::SOURCE_PORT),
                Attribute::SourceAddress,
            ),
            (
                Self::SOURCE_SPIFFE_ID.with(Self::SOURCE_IDENTITY),
                Attribute::PeerUriSan,
            ),
            (Self::CONNECTION_MTLS, Attribute::Mtls),
            (Self::CONNECTION_SNI, Attribute::RequestedServerName),
            (Self::CONNECTION_TLS_VERSION, Attribute::TlsVersion),
        ] {
            if self.has(fields) {
                set = set | AttributeSet::of(attribute);
            }
        }
        set
    }
}

/// The metadata key under which the `jwt` policy leaves the verified
/// token's claims, bound to the CEL variable `jwt`.
pub const JWT_CLAIMS: &str = "jwt.claims";

mod ambiguous;
mod bind;
mod check;
mod fast;
#[cfg(test)]
mod tests;
pub mod trace;
pub mod vocabulary;
