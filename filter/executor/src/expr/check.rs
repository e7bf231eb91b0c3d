//! The static check: every expression is walked once when the configuration
//! loads. Variables must be names of the vocabulary, fields must exist,
//! functions must be ones this build evaluates, and sizes stay within what
//! the parser and the evaluator handle safely in a Wasm VM's stack. The walk
//! also records what the expression reads: the fields to bind and the
//! headers and query parameters whose ambiguity fails it (`ambiguous`).

use cel::common::ast::{Expr, IdedExpr};

use super::vocabulary::{self, Shape};
use super::{ambiguous, fast, Fields, Phase};

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
pub(super) fn check_size(source: &str) -> Result<(), String> {
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

/// Walks a parsed expression for `phase`: what it reads (the fields to
/// bind and the names whose ambiguity fails it), or why it is refused.
pub(super) fn walk(expr: &IdedExpr, phase: Phase) -> Result<(Fields, ambiguous::Reads), String> {
    let mut check = Check {
        phase,
        fields: Fields::NONE,
        bound: Vec::new(),
        key: None,
        reads: ambiguous::Reads::default(),
        depth: 0,
        nodes: 0,
    };
    check.visit(expr)?;
    Ok((check.fields, check.reads))
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
        if !name.phases.readable_in(self.phase) {
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
        match vocabulary::lookup(&current) {
            Some(name) if !name.phases.readable_in(self.phase) => {
                return Err(format!(
                    "`{current}` is not available here: {}",
                    unavailable_because(self.phase)
                ));
            }
            _ => {}
        }
        // A whole record (`request`) leaves out what this phase cannot read.
        let readable = vocabulary::fields_under_readable(&current, self.phase);
        self.fields = self.fields.with(readable);
        if let ("request" | "response", ["headers", name, ..]) = (root, path) {
            check_header_key(name)?;
        }
        if root == "request" {
            self.reads.note(path, key.as_deref());
        }
        Ok(())
    }
}

/// Why a name of another phase cannot be read in `phase`.
fn unavailable_because(phase: Phase) -> &'static str {
    match phase {
        Phase::Request => {
            "this expression runs on the request headers; only policies that run on \
             the body (authorization, transformation) read it"
        }
        Phase::RequestBody => "this expression runs on the request",
        Phase::Response => "this expression runs on the response headers",
        Phase::ResponseBody => "this expression runs on the response",
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
pub(super) fn select_path(expr: &IdedExpr) -> Option<(&str, Vec<&str>)> {
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
