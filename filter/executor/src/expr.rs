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
//! [`Expression::compile`] parses the text and then walks it: every
//! variable must be an attribute root below, every field of `request`,
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
//! `"x-tenant" in request.headers` test for presence.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{Expr, IdedExpr};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::Value;

use crate::attributes::{Attribute, AttributeSet};
use crate::canonical::{percent_decode, query_pairs, strip_port};
use crate::headers::HeaderMap;
use crate::policy::Context;
use vocabulary::Shape;

/// Which message an expression is evaluated on. Request expressions cannot
/// read `response`: it does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Evaluated in request phases (and `when:` guards).
    Request,
    /// Evaluated in response phases.
    Response,
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
        let mut check = Check {
            phase,
            fields: Fields::NONE,
            bound: Vec::new(),
            key: None,
            reads: ambiguous::Reads::default(),
            depth: 0,
            nodes: 0,
        };
        check.visit(program.expression()).map_err(fault)?;
        let constant = (check.fields == Fields::NONE)
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
            fields: check.fields,
            reads: check.reads,
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

/// The functions expressions may call: the CEL standard library without
/// time and regex, and the strings extension. Operators are checked apart.
pub const FUNCTIONS: &[&str] = &[
    // standard
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
    // strings extension
    "charAt",
    "indexOf",
    "lastIndexOf",
    "join",
    "lowerAscii",
    "upperAscii",
    "trim",
    "replace",
    "split",
    "substring",
    "format",
    "reverse",
];

/// Functions people reach for that this build leaves out, with the reason.
const LEFT_OUT: &[(&str, &str)] = &[
    (
        "matches",
        "regular expressions are not built in (they would double the module); use startsWith, endsWith or contains",
    ),
    ("duration", "time values are not built in"),
    ("timestamp", "time values are not built in"),
];

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

/// Type names, usable as values (`type(x) == string`).
const TYPE_NAMES: [&str; 11] = [
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

/// The longest expression accepted, in bytes. Policies are a few lines of
/// CEL; a longer one is a mistake or an attack on the parser.
pub const MAX_EXPRESSION_BYTES: usize = 4096;

/// The deepest nesting of brackets accepted in the source, checked before
/// parsing. The parser recurses once per level, and a Wasm VM's stack is
/// small: past this, the Wasm filter would trap where the shim succeeds.
pub const MAX_SOURCE_NESTING: usize = 32;

/// The most operators (`+`, `==`, `||`, `.`, ...) accepted in the source,
/// counted before parsing. The parser recurses once per operator in a chain
/// (about half a KiB of stack each, optimised): 256 stay far inside a Wasm
/// VM's 1 MiB, and a source past it would be refused as too deep anyway.
pub const MAX_SOURCE_OPERATORS: usize = 256;

/// The deepest parsed expression accepted (a chain of `+` or `||` is one
/// level per term): the evaluator recurses once per level.
pub const MAX_EXPRESSION_DEPTH: usize = 64;

/// The most nodes accepted in one parsed expression.
pub const MAX_EXPRESSION_NODES: usize = 1024;

/// Refuses, before parsing, a source too long, nested too deep or with too
/// many operators for the parser to be safe on it, with the same reason in
/// every host.
fn check_size(source: &str) -> Result<(), String> {
    if source.len() > MAX_EXPRESSION_BYTES {
        return Err(format!(
            "the expression is {} bytes long; at most {MAX_EXPRESSION_BYTES} are accepted",
            source.len()
        ));
    }
    let mut depth = 0usize;
    let mut operators = 0usize;
    let mut in_operator = false;
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for byte in source.bytes() {
        // A run of operator characters (`&&`, `!=`, `.`) is one operator.
        let is_operator = quote.is_none() && b"+-*/%<>=!&|?:.".contains(&byte);
        if is_operator && !in_operator {
            operators += 1;
            if operators > MAX_SOURCE_OPERATORS {
                return Err(format!(
                    "the expression has more than {MAX_SOURCE_OPERATORS} operators"
                ));
            }
        }
        in_operator = is_operator;
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == q {
                    quote = None;
                }
            }
            None => match byte {
                b'"' | b'\'' => quote = Some(byte),
                b'(' | b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_SOURCE_NESTING {
                        return Err(format!(
                            "the expression nests brackets deeper than {MAX_SOURCE_NESTING} levels"
                        ));
                    }
                }
                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    Ok(())
}

/// The static check: a walk over the parsed expression.
struct Check {
    phase: Phase,
    fields: Fields,
    /// Variables bound by comprehensions (`all(x, ...)`) around this point.
    bound: Vec<String>,
    /// The literal name the attribute visited next is indexed with
    /// (`request.headers["x"]`, `"x" in request.query`).
    key: Option<String>,
    /// The request headers and query parameters read by name.
    reads: ambiguous::Reads,
    /// How deep the walk is now.
    depth: usize,
    /// Nodes seen so far.
    nodes: usize,
}

impl Check {
    fn visit(&mut self, expr: &IdedExpr) -> Result<(), String> {
        self.nodes += 1;
        if self.nodes > MAX_EXPRESSION_NODES {
            return Err(format!(
                "the expression has more than {MAX_EXPRESSION_NODES} terms"
            ));
        }
        if self.depth >= MAX_EXPRESSION_DEPTH {
            return Err(format!(
                "the expression is deeper than {MAX_EXPRESSION_DEPTH} levels (a chain of \
                 operators counts one level per term)"
            ));
        }
        self.depth += 1;
        let checked = self.visit_node(expr);
        self.depth -= 1;
        checked
    }

    fn visit_node(&mut self, expr: &IdedExpr) -> Result<(), String> {
        match &expr.expr {
            Expr::Ident(name) => self.attribute(name, &[]),
            Expr::Select(_) => match select_path(expr) {
                Some((root, path)) => self.attribute(root, &path),
                None => match &expr.expr {
                    Expr::Select(select) => self.visit(&select.operand),
                    _ => Ok(()),
                },
            },
            Expr::Call(call) => {
                check_function(&call.func_name)?;
                check_header_index(call)?;
                if let Some((map, name, key)) = keyed_read(call) {
                    // The map is an attribute path: its visit goes straight
                    // to `attribute`, which takes the name.
                    self.key = Some(name.to_owned());
                    let visited = self.visit(map);
                    self.key = None;
                    visited?;
                    return self.visit(key);
                }
                if let Some(target) = &call.target {
                    self.visit(target)?;
                }
                call.args.iter().try_for_each(|arg| self.visit(arg))
            }
            Expr::Comprehension(c) => {
                self.visit(&c.iter_range)?;
                self.visit(&c.accu_init)?;
                let outer = self.bound.len();
                self.bound.push(c.iter_var.clone());
                self.bound.extend(c.iter_var2.clone());
                self.bound.push(c.accu_var.clone());
                let inner = [&c.loop_cond, &c.loop_step, &c.result]
                    .into_iter()
                    .try_for_each(|e| self.visit(e));
                self.bound.truncate(outer);
                inner
            }
            Expr::List(list) => list.elements.iter().try_for_each(|e| self.visit(e)),
            Expr::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
                cel::common::ast::EntryExpr::MapEntry(e) => {
                    self.visit(&e.key)?;
                    self.visit(&e.value)
                }
                cel::common::ast::EntryExpr::StructField(f) => self.visit(&f.value),
            }),
            Expr::Struct(s) => Err(format!(
                "message literals ({}) are not supported",
                s.type_name
            )),
            Expr::Literal(_) | Expr::Unspecified => Ok(()),
        }
    }

    /// Checks a reference to `root.path...` and records what it reads.
    fn attribute(&mut self, root: &str, path: &[&str]) -> Result<(), String> {
        let key = self.key.take();
        if self.bound.iter().any(|b| b == root) {
            return Ok(());
        }
        if TYPE_NAMES.contains(&root) {
            return Ok(());
        }
        let Some(name) = vocabulary::lookup(root).filter(|n| !n.path.contains('.')) else {
            return Err(format!(
                "unknown variable `{root}`; the attributes are {}",
                vocabulary::roots().collect::<Vec<_>>().join(", ")
            ));
        };
        if name.phases == vocabulary::Phases::Response && self.phase == Phase::Request {
            return Err(format!(
                "`{root}` is not available here: this expression runs on the request"
            ));
        }
        let root_fields =
            vocabulary::fields_under(root).0 & !vocabulary::fields_under_children(root).0;
        self.fields = self.fields.with(Fields(root_fields));
        let mut current = root.to_owned();
        for field in path {
            match vocabulary::lookup(&current).map(|n| n.shape) {
                Some(Shape::Map) => break,
                Some(Shape::Scalar) => {
                    return Err(format!("`{current}` has no field `{field}`"));
                }
                Some(Shape::Record) | None => {
                    let next = format!("{current}.{field}");
                    if vocabulary::lookup(&next).is_none() {
                        return Err(format!(
                            "unknown attribute `{next}`; `{current}` has {}",
                            vocabulary::fields_of_record(&current).join(", ")
                        ));
                    }
                    current = next;
                }
            }
        }
        self.fields = self.fields.with(vocabulary::fields_under(&current));
        if let ("request" | "response", ["headers", name, ..]) = (root, path) {
            check_header_key(name)?;
        }
        if root == "request" {
            self.reads.note(path, key.as_deref());
        }
        Ok(())
    }
}

/// `map["name"]` or `"name" in map`, with a string literal for the name and
/// an attribute path for the map: the map, the name and its literal.
fn keyed_read(call: &cel::common::ast::CallExpr) -> Option<(&IdedExpr, &str, &IdedExpr)> {
    use cel::common::ast::operators::{IN, INDEX};
    let (map, key) = match (call.func_name.as_str(), call.args.as_slice()) {
        (INDEX, [map, key]) => (map, key),
        (IN, [key, map]) => (map, key),
        _ => return None,
    };
    select_path(map)?;
    match &key.expr {
        Expr::Literal(cel::common::ast::LiteralValue::String(name)) => {
            Some((map, name.inner(), key))
        }
        _ => None,
    }
}

/// `a.b.c` as (`a`, [`b`, `c`]) when the select chain ends in a variable.
fn select_path(expr: &IdedExpr) -> Option<(&str, Vec<&str>)> {
    let mut path = Vec::new();
    let mut current = expr;
    loop {
        match &current.expr {
            Expr::Select(select) => {
                path.push(select.field.as_str());
                current = &select.operand;
            }
            Expr::Ident(root) => {
                path.reverse();
                return Some((root, path));
            }
            _ => return None,
        }
    }
}

/// Refuses `request.headers["X-Upper"]`, `"x_under" in request.headers`
/// and the like: header names are read lower-case with `_` as `-`, so such
/// a key never matches, and the check it guards would silently never hold.
fn check_header_index(call: &cel::common::ast::CallExpr) -> Result<(), String> {
    match keyed_read(call) {
        Some((map, name, _)) if fast::headers_of(map).is_some() => check_header_key(name),
        _ => Ok(()),
    }
}

/// A header name as a rule writes it must be one the map can hold.
fn check_header_key(name: &str) -> Result<(), String> {
    let readable = name.to_ascii_lowercase().replace('_', "-");
    if readable != name {
        return Err(format!(
            "header names are read lower-case with `_` as `-`, so [{name:?}] never \
             matches: write [{readable:?}]"
        ));
    }
    Ok(())
}

fn check_function(name: &str) -> Result<(), String> {
    let is_operator = name.starts_with('_') || name.starts_with('@') || name.ends_with('_');
    if is_operator || FUNCTIONS.contains(&name) {
        return Ok(());
    }
    match LEFT_OUT.iter().find(|(n, _)| *n == name) {
        Some((_, why)) => Err(format!("function `{name}` is not available: {why}")),
        None => Err(format!("unknown function `{name}`")),
    }
}

/// A CEL value that may borrow from the request for the evaluation.
type Val<'a> = Box<dyn cel::common::value::Val + 'a>;
type Vars<'a> = Vec<(&'static str, Val<'a>)>;
type CelRecord<'a> = HashMap<CelMapKey<'a>, Val<'a>>;

/// `request.path` and the query: `:path` split at `?` (`/` if absent).
fn path_and_query(request: &HeaderMap) -> (&str, &str) {
    let path = request.get(":path").unwrap_or("/");
    path.split_once('?').unwrap_or((path, ""))
}

/// `request.host`: `:authority`, already canonical (`Engine::start`: lower
/// case, no trailing dot), without its port. Never the `host` header, which
/// nothing made canonical.
fn host(request: &HeaderMap) -> Option<&str> {
    request.get(":authority").map(strip_port)
}

/// `response.code`: `:status` as a number.
fn response_code(response: &HeaderMap) -> Option<i64> {
    response.get(":status")?.parse().ok()
}

/// The variables for one evaluation, holding only the fields it reads and
/// borrowing the request's strings rather than copying them.
fn bind<'a>(fields: Fields, cx: &'a Context) -> Vars<'a> {
    let mut vars = Vec::with_capacity(4);
    let request = cx.request_headers();
    let mut record = Record::default();
    record.put(fields, Fields::REQUEST_METHOD, "method", || {
        text(request.get(":method"))
    });
    let (path_only, query) = path_and_query(request);
    record.put(fields, Fields::REQUEST_PATH, "path", || {
        text(Some(path_only))
    });
    record.put(fields, Fields::REQUEST_QUERY, "query", || query_map(query));
    record.put(fields, Fields::REQUEST_HOST, "host", || text(host(request)));
    record.put(fields, Fields::REQUEST_SCHEME, "scheme", || {
        text(request.get(":scheme"))
    });
    record.put(fields, Fields::REQUEST_HEADERS, "headers", || {
        Some(header_map(request))
    });
    record.bind(fields, Fields::REQUEST, "request", &mut vars);

    let connection = cx.connection();
    let spiffe = connection.spiffe_id();
    let mut record = Record::default();
    record.put(fields, Fields::SOURCE_ADDRESS, "address", || {
        text(connection.source_ip())
    });
    record.put(fields, Fields::SOURCE_PORT, "port", || {
        connection.source_port().map(|p| int(p.into()))
    });
    record.put(fields, Fields::SOURCE_SPIFFE_ID, "spiffeId", || {
        text(spiffe.map(|id| id.uri))
    });
    record.put(fields, Fields::SOURCE_IDENTITY, "identity", || {
        let id = spiffe?;
        let mut identity = Record::default();
        for (name, value) in [
            ("trustDomain", Some(id.trust_domain)),
            ("namespace", id.namespace),
            ("serviceAccount", id.service_account),
        ] {
            if let Some(value) = text(value) {
                identity.0.insert(CelMapKey::from(name), value);
            }
        }
        Some(identity.into_val())
    });
    record.bind(fields, Fields::SOURCE, "source", &mut vars);

    let mut record = Record::default();
    record.put(fields, Fields::CONNECTION_MTLS, "mtls", || {
        connection
            .mtls()
            .map(|b| Box::new(CelBool::from(b)) as Val<'a>)
    });
    record.put(fields, Fields::CONNECTION_SNI, "sni", || {
        text(connection.requested_server_name())
    });
    record.put(fields, Fields::CONNECTION_TLS_VERSION, "tlsVersion", || {
        text(connection.tls_version())
    });
    record.bind(fields, Fields::CONNECTION, "connection", &mut vars);

    let mut record = Record::default();
    record.put(fields, Fields::ROUTE_NAME, "name", || {
        text(Some(&cx.route().chain))
    });
    record.bind(fields, Fields::ROUTE, "route", &mut vars);

    if fields.has(Fields::METADATA) {
        let metadata: CelRecord<'a> = cx
            .metadata()
            .iter()
            .map(|(k, v)| (CelMapKey::from(k.as_str()), json_to_cel(v)))
            .collect();
        vars.push(("metadata", Box::new(CelMap::from(metadata))));
    }
    if fields.has(Fields::JWT) {
        // Unbound without a verified token, so reading it is an error and
        // `has(jwt.sub)` cannot be true by accident.
        if let Some(claims) = cx.metadata().get(JWT_CLAIMS) {
            vars.push(("jwt", json_to_cel(claims)));
        }
    }

    let response = cx.response_headers();
    let mut record = Record::default();
    record.put(fields, Fields::RESPONSE_CODE, "code", || {
        response_code(response).map(int)
    });
    record.put(fields, Fields::RESPONSE_HEADERS, "headers", || {
        Some(header_map(response))
    });
    record.bind(fields, Fields::RESPONSE, "response", &mut vars);
    vars
}

/// A record under construction; absent values are left out, so reading
/// them is a "no such key" error.
#[derive(Default)]
struct Record<'a>(CelRecord<'a>);

impl<'a> Record<'a> {
    fn put(
        &mut self,
        wanted: Fields,
        field: Fields,
        name: &'static str,
        value: impl FnOnce() -> Option<Val<'a>>,
    ) {
        if wanted.has(field) {
            if let Some(value) = value() {
                self.0.insert(CelMapKey::from(name), value);
            }
        }
    }

    fn bind(self, wanted: Fields, root: Fields, name: &'static str, vars: &mut Vars<'a>) {
        if wanted.has(root) {
            vars.push((name, self.into_val()));
        }
    }

    fn into_val(self) -> Val<'a> {
        Box::new(CelMap::from(self.0))
    }
}

fn text(value: Option<&str>) -> Option<Val<'_>> {
    value.map(|s| Box::new(CelString::from(s)) as Val<'_>)
}

fn int<'a>(value: i64) -> Val<'a> {
    Box::new(CelInt::from(value))
}

/// The key a header is read under in `request.headers`: its name with `_`
/// as `-`; none for a pseudo-header.
fn header_key(name: &str) -> Option<Cow<'_, str>> {
    if name.starts_with(':') {
        None
    } else if name.contains('_') {
        Some(Cow::Owned(name.replace('_', "-")))
    } else {
        Some(Cow::Borrowed(name))
    }
}

/// The headers by name, `_` read as `-` (many upstream frameworks read
/// `x_user` as `x-user`, so a rule on `x-user` must see it too), each by
/// its first line. A request header sent more than once never reaches an
/// expression that reads it (see [`ambiguous`]); a response header does,
/// by its first line too.
fn header_map(headers: &HeaderMap) -> Val<'_> {
    let mut map: CelRecord<'_> = HashMap::new();
    for (name, value) in headers.iter() {
        let key = match header_key(name) {
            None => continue,
            Some(Cow::Borrowed(name)) => CelMapKey::from(name),
            Some(Cow::Owned(name)) => CelMapKey::from(name),
        };
        map.entry(key)
            .or_insert_with(|| Box::new(CelString::from(value)) as Val<'_>);
    }
    Box::new(CelMap::from(map))
}

/// The query as servers read it: names and values percent-decoded. `None`
/// (so reading `request.query` at all is an evaluation error, which fails
/// closed) when servers disagree on what the query says: a parameter given
/// twice (`?debug=0&debug=1`, `%64ebug=1` beside `debug=0`, or `Debug=1`,
/// since some frameworks ignore case), a `;` (which some read as a
/// separator: `?x=0;debug=1`), or a value that does not decode. No rule
/// may then decide on the query, not even on `"debug" in request.query`.
fn query_map(query: &str) -> Option<Val<'_>> {
    if query.contains(';') {
        return None;
    }
    let mut map: CelRecord<'_> = HashMap::new();
    let mut folded_names = HashSet::new();
    for (name, value) in query_pairs(query) {
        let value: Val<'_> = Box::new(CelString::from(percent_decode(value)?.into_owned()));
        let name = percent_decode(name)?.into_owned();
        if !folded_names.insert(name.to_ascii_lowercase()) {
            return None;
        }
        map.insert(CelMapKey::from(name), value);
    }
    Some(Box::new(CelMap::from(map)))
}

fn json_to_cel(value: &serde_json::Value) -> Val<'_> {
    use serde_json::Value as Json;
    match value {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(*b)),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => int(i),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        Json::String(s) => Box::new(CelString::from(s.as_str())),
        Json::Array(items) => Box::new(CelList::from(
            items.iter().map(json_to_cel).collect::<Vec<_>>(),
        )),
        Json::Object(fields) => Box::new(CelMap::from(
            fields
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), json_to_cel(v)))
                .collect::<CelRecord<'_>>(),
        )),
    }
}

mod ambiguous;
mod fast;
#[cfg(test)]
mod tests;
pub mod trace;
pub mod vocabulary;
