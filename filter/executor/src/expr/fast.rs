//! The fast path: expressions of the shapes policies use most, compiled at
//! configuration time into direct code over the request.
//!
//! The interpreter binds every attribute an expression names as CEL values
//! (maps of boxed strings, the JWT claims converted whole) before each
//! evaluation; for `request.method == "GET"` that costs far more than the
//! comparison. These shapes read the request in place instead:
//!
//! * comparisons of strings: `==`, `!=`, `startsWith`, `endsWith`,
//!   `contains`, and `in` a list of string literals;
//! * `"name" in request.headers` (and `response.headers`);
//! * `&&`, `||` and `!` over those;
//! * text: a string attribute, a literal, `string(response.code)`, and
//!   their concatenation with `+`;
//!
//! where a string is a literal or one of `request.method`, `.path`, `.host`,
//! `.scheme`, `request.headers["name"]`, `response.headers["name"]`,
//! `route.name` or a `jwt` claim (`jwt.sub`, `jwt["sub"]`).
//!
//! Everything else, and any input the fast path does not model (a claim
//! that is not a string), goes to the interpreter: evaluation stops with
//! [`Stop::Interpret`] then. Where both run, they agree; the
//! differential test at the end of this file checks that over generated
//! expressions and requests. In particular errors follow CEL as the
//! interpreter implements it: an attribute the request lacks is an error,
//! every operator is strict except `&&` and `||`, which absorb an error on
//! either side when the other side decides (`error || true` is true).

use std::borrow::Cow;
use std::fmt;

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};

use super::{header_key, host, path_and_query, response_code, select_path, JWT_CLAIMS};
use crate::headers::HeaderMap;
use crate::policy::Context;

/// A compiled expression of a fast shape.
#[derive(Debug)]
pub(super) enum Fast {
    Condition(Condition),
    /// One string, or several joined by `+`.
    Text(Vec<Text>),
}

/// A boolean shape.
#[derive(Debug)]
pub(super) enum Condition {
    Constant(bool),
    Compare(Op, Text, Text),
    InList(Text, Vec<String>),
    /// `"name" in request.headers` (or `response.headers`).
    HasHeader(Message, String),
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
    Not(Box<Condition>),
}

/// A strict operator over two strings.
#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    Equals,
    NotEquals,
    StartsWith,
    EndsWith,
    Contains,
}

/// The message whose headers an expression reads.
#[derive(Debug, Clone, Copy)]
pub(super) enum Message {
    Request,
    Response,
}

/// A string an expression reads.
#[derive(Debug)]
pub(super) enum Text {
    Literal(String),
    Method,
    Path,
    Host,
    Scheme,
    RouteName,
    Header(Message, String),
    Claim(String),
    /// `string(response.code)`.
    ResponseCode,
}

/// Why the fast path gave no value.
#[derive(Debug)]
pub(super) enum Stop<'e> {
    /// The request (or response) lacks this attribute: an evaluation
    /// error, as in the interpreter.
    Missing(&'e Text),
    /// An input the fast path does not model (a claim that is not a
    /// string): the interpreter answers instead.
    Interpret,
}

/// A fast evaluation.
pub(super) type Eval<'e, T> = Result<T, Stop<'e>>;

impl Fast {
    /// Compiles `expr` if it has a fast shape.
    pub(super) fn compile(expr: &IdedExpr) -> Option<Self> {
        condition(expr)
            .map(Fast::Condition)
            .or_else(|| concat(expr).map(Fast::Text))
    }
}

impl Condition {
    /// Evaluates the condition.
    pub(super) fn eval<'e>(&'e self, cx: &'e Context) -> Eval<'e, bool> {
        Ok(match self {
            Self::Constant(b) => *b,
            Self::Compare(op, a, b) => {
                // Strict, left first: the first missing side is the error.
                let a = a.read(cx)?;
                op.apply(&a, &b.read(cx)?)
            }
            Self::InList(a, list) => {
                let a = a.read(cx)?;
                list.iter().any(|item| *item == a)
            }
            Self::HasHeader(message, name) => {
                message.headers(cx).iter().any(|(n, _)| reads_as(n, name))
            }
            Self::And(left, right) => return logical(left, right, false, cx),
            Self::Or(left, right) => return logical(left, right, true, cx),
            Self::Not(inner) => !inner.eval(cx)?,
        })
    }
}

/// Evaluates a text shape: its parts, concatenated.
pub(super) fn concatenate<'e>(parts: &'e [Text], cx: &'e Context) -> Eval<'e, String> {
    if let [part] = parts {
        return Ok(part.read(cx)?.into_owned());
    }
    let mut text = String::new();
    for part in parts {
        text.push_str(&part.read(cx)?);
    }
    Ok(text)
}

/// CEL's `&&` (`decisive` false) and `||` (`decisive` true): the decisive
/// value on either side decides, even when the other side is an error.
fn logical<'e>(
    left: &'e Condition,
    right: &'e Condition,
    decisive: bool,
    cx: &'e Context,
) -> Eval<'e, bool> {
    let left = match left.eval(cx) {
        Ok(value) if value == decisive => return Ok(decisive),
        Err(Stop::Interpret) => return Err(Stop::Interpret),
        left => left,
    };
    match (left, right.eval(cx)) {
        (_, Err(Stop::Interpret)) => Err(Stop::Interpret),
        (Ok(_), right) => right,
        (Err(_), Ok(value)) if value == decisive => Ok(decisive),
        (Err(missing), _) => Err(missing),
    }
}

impl Op {
    fn apply(self, a: &str, b: &str) -> bool {
        match self {
            Self::Equals => a == b,
            Self::NotEquals => a != b,
            Self::StartsWith => a.starts_with(b),
            Self::EndsWith => a.ends_with(b),
            Self::Contains => a.contains(b),
        }
    }
}

impl Message {
    fn headers(self, cx: &Context) -> &HeaderMap {
        match self {
            Self::Request => cx.request_headers(),
            Self::Response => cx.response_headers(),
        }
    }

    fn root(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Response => "response",
        }
    }
}

impl Text {
    /// The string, read in place where it can be: the value the
    /// interpreter's binding gives (see `expr::bind`).
    fn read<'a>(&'a self, cx: &'a Context) -> Eval<'a, Cow<'a, str>> {
        let request = cx.request_headers();
        let found = match self {
            Self::Literal(text) => Some(Cow::Borrowed(text.as_str())),
            Self::Method => request.get(":method").map(Cow::Borrowed),
            Self::Path => Some(Cow::Borrowed(path_and_query(request).0)),
            Self::Host => host(request).map(Cow::Borrowed),
            Self::Scheme => request.get(":scheme").map(Cow::Borrowed),
            Self::RouteName => Some(Cow::Borrowed(cx.route().chain.as_ref())),
            Self::Header(message, name) => header(message.headers(cx), name),
            Self::ResponseCode => {
                response_code(cx.response_headers()).map(|code| Cow::Owned(code.to_string()))
            }
            Self::Claim(name) => match cx.metadata().get(JWT_CLAIMS) {
                None => None,
                Some(serde_json::Value::Object(claims)) => match claims.get(name) {
                    None => None,
                    Some(serde_json::Value::String(s)) => Some(Cow::Borrowed(s.as_str())),
                    // Numbers, lists and objects compare by CEL's rules.
                    Some(_) => return Err(Stop::Interpret),
                },
                Some(_) => return Err(Stop::Interpret),
            },
        };
        found.ok_or(Stop::Missing(self))
    }
}

/// The attribute as it is written in CEL, for the error that it is missing.
impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(text) => write!(f, "{text:?}"),
            Self::Method => f.write_str("request.method"),
            Self::Path => f.write_str("request.path"),
            Self::Host => f.write_str("request.host"),
            Self::Scheme => f.write_str("request.scheme"),
            Self::RouteName => f.write_str("route.name"),
            Self::Header(message, name) => write!(f, "{}.headers[{name:?}]", message.root()),
            Self::Claim(name) => write!(f, "jwt[{name:?}]"),
            Self::ResponseCode => f.write_str("response.code"),
        }
    }
}

/// `request.headers[name]` as the interpreter binds it (see
/// `expr::header_map`): its first line.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<Cow<'a, str>> {
    headers
        .iter()
        .find(|(n, _)| reads_as(n, name))
        .map(|(_, value)| Cow::Borrowed(value))
}

/// Whether the header named `n` is the key `name` of the interpreter's
/// header map. A key is as long as its name, so other lengths are ruled
/// out before the key is worked out.
pub(super) fn reads_as(n: &str, name: &str) -> bool {
    n.len() == name.len() && header_key(n).is_some_and(|key| key == name)
}

/// `a.b.c` as (`a`, [`b`, `c`]), unless a step is a `has()` test.
fn attribute_path(expr: &IdedExpr) -> Option<(&str, Vec<&str>)> {
    let mut current = expr;
    while let Expr::Select(select) = &current.expr {
        if select.test {
            return None;
        }
        current = &select.operand;
    }
    select_path(expr)
}

/// `request.headers` or `response.headers`.
pub(super) fn headers_of(expr: &IdedExpr) -> Option<Message> {
    let (root, path) = attribute_path(expr)?;
    match (root, path.as_slice()) {
        ("request", ["headers"]) => Some(Message::Request),
        ("response", ["headers"]) => Some(Message::Response),
        _ => None,
    }
}

fn condition(expr: &IdedExpr) -> Option<Condition> {
    let compare = |op, a, b| Some(Condition::Compare(op, text(a)?, text(b)?));
    match &expr.expr {
        Expr::Literal(LiteralValue::Boolean(b)) => Some(Condition::Constant(*b.inner())),
        Expr::Call(call) => {
            let args = call.args.as_slice();
            match (call.func_name.as_str(), &call.target, args) {
                (operators::EQUALS, None, [a, b]) => compare(Op::Equals, a, b),
                (operators::NOT_EQUALS, None, [a, b]) => compare(Op::NotEquals, a, b),
                ("startsWith", Some(target), [arg]) => compare(Op::StartsWith, target, arg),
                ("endsWith", Some(target), [arg]) => compare(Op::EndsWith, target, arg),
                ("contains", Some(target), [arg]) => compare(Op::Contains, target, arg),
                (operators::LOGICAL_AND, None, [a, b]) => Some(Condition::And(
                    Box::new(condition(a)?),
                    Box::new(condition(b)?),
                )),
                (operators::LOGICAL_OR, None, [a, b]) => Some(Condition::Or(
                    Box::new(condition(a)?),
                    Box::new(condition(b)?),
                )),
                (operators::LOGICAL_NOT, None, [a]) => {
                    Some(Condition::Not(Box::new(condition(a)?)))
                }
                (operators::IN, None, [item, collection]) => in_shape(item, collection),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `"name" in request.headers`, or `text in ["a", "b"]`.
fn in_shape(item: &IdedExpr, collection: &IdedExpr) -> Option<Condition> {
    match &collection.expr {
        Expr::List(list) if list.optional_indices.is_empty() => {
            let items = list
                .elements
                .iter()
                .map(|e| string_literal(e).map(str::to_owned))
                .collect::<Option<Vec<_>>>()?;
            Some(Condition::InList(text(item)?, items))
        }
        _ => Some(Condition::HasHeader(
            headers_of(collection)?,
            string_literal(item)?.to_owned(),
        )),
    }
}

fn string_literal(expr: &IdedExpr) -> Option<&str> {
    match &expr.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// A string of a fast shape, or a concatenation of them.
fn concat(expr: &IdedExpr) -> Option<Vec<Text>> {
    match &expr.expr {
        Expr::Call(call) if call.func_name == operators::ADD && call.target.is_none() => {
            let [a, b] = call.args.as_slice() else {
                return None;
            };
            let mut parts = concat(a)?;
            parts.extend(concat(b)?);
            Some(parts)
        }
        _ => Some(vec![text(expr)?]),
    }
}

fn text(expr: &IdedExpr) -> Option<Text> {
    match &expr.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(Text::Literal(s.inner().to_owned())),
        Expr::Select(_) => {
            let (root, path) = attribute_path(expr)?;
            match (root, path.as_slice()) {
                ("request", ["method"]) => Some(Text::Method),
                ("request", ["path"]) => Some(Text::Path),
                ("request", ["host"]) => Some(Text::Host),
                ("request", ["scheme"]) => Some(Text::Scheme),
                ("route", ["name"]) => Some(Text::RouteName),
                ("jwt", [claim]) => Some(Text::Claim((*claim).to_owned())),
                _ => None,
            }
        }
        Expr::Call(call) => match (call.func_name.as_str(), &call.target, call.args.as_slice()) {
            (operators::INDEX, None, [map, key]) => {
                let key = string_literal(key)?.to_owned();
                match &map.expr {
                    Expr::Ident(root) if root == "jwt" => Some(Text::Claim(key)),
                    _ => Some(Text::Header(headers_of(map)?, key)),
                }
            }
            ("string", None, [arg]) => {
                let (root, path) = attribute_path(arg)?;
                (root == "response" && path == ["code"]).then_some(Text::ResponseCode)
            }
            _ => None,
        },
        _ => None,
    }
}

/// The differential test: the fast path and the interpreter agree on every
/// generated expression and request where the fast path answers.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    /// What the fast path reads by name (in a missing value's error) is a
    /// name of the vocabulary, so it and the interpreter read the same
    /// names.
    #[test]
    fn the_fast_path_reads_only_names_of_the_vocabulary() {
        use super::{Message, Text};
        let texts = [
            Text::Method,
            Text::Path,
            Text::Host,
            Text::Scheme,
            Text::RouteName,
            Text::ResponseCode,
            Text::Header(Message::Request, "x".into()),
            Text::Header(Message::Response, "x".into()),
            Text::Claim("sub".into()),
        ];
        for text in texts {
            let shown = text.to_string();
            let path = shown.split('[').next().unwrap_or_default();
            assert!(
                crate::expr::vocabulary::lookup(path).is_some(),
                "{shown} is not in the vocabulary"
            );
        }
    }

    use proptest::prelude::*;

    use super::super::{Expression, Phase};
    use super::{concatenate, Eval, Fast, Stop};
    use crate::headers::HeaderMap;
    use crate::policy::{Context, RouteInfo};

    /// Strings an expression reads, rendered as CEL.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(r#""GET""#.to_owned()),
            Just(r#""/api""#.to_owned()),
            Just(r#""acme""#.to_owned()),
            Just(r#""acme,globex""#.to_owned()),
            Just(r#""""#.to_owned()),
            Just(r#""200""#.to_owned()),
            Just(r#""bench""#.to_owned()),
            Just("request.method".to_owned()),
            Just("request.path".to_owned()),
            Just("request.host".to_owned()),
            Just("request.scheme".to_owned()),
            Just("route.name".to_owned()),
            Just(r#"request.headers["x-a"]"#.to_owned()),
            Just(r#"request.headers["x-b"]"#.to_owned()),
            Just(r#"response.headers["x-a"]"#.to_owned()),
            // Pseudo-headers are attributes of their own, never headers.
            Just(r#"request.headers[":method"]"#.to_owned()),
            Just("jwt.sub".to_owned()),
            Just(r#"jwt["aud"]"#.to_owned()),
            Just("jwt.n".to_owned()),
            Just("string(response.code)".to_owned()),
        ]
    }

    fn concatenation() -> impl Strategy<Value = String> {
        prop::collection::vec(text(), 1..4).prop_map(|parts| parts.join(" + "))
    }

    fn boolean() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("true".to_owned()),
            Just("false".to_owned()),
            (text(), text()).prop_map(|(a, b)| format!("{a} == {b}")),
            (text(), text()).prop_map(|(a, b)| format!("{a} != {b}")),
            (text(), text()).prop_map(|(a, b)| format!("{a}.startsWith({b})")),
            (text(), text()).prop_map(|(a, b)| format!("{a}.endsWith({b})")),
            (text(), text()).prop_map(|(a, b)| format!("{a}.contains({b})")),
            text().prop_map(|a| format!(r#"{a} in ["acme", "GET", "bench"]"#)),
            prop_oneof![
                Just(r#""x-a" in request.headers"#),
                Just(r#""x-b" in request.headers"#),
                Just(r#""x-a" in response.headers"#),
                Just(r#"":path" in request.headers"#),
            ]
            .prop_map(str::to_owned),
        ];
        leaf.prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) || ({b})")),
                inner.prop_map(|a| format!("!({a})")),
            ]
        })
    }

    /// A request and response, each attribute present, absent or odd.
    fn context() -> impl Strategy<Value = Context> {
        let one = |choices: &'static [&'static str]| prop::sample::select(choices.to_vec());
        (
            one(&["GET", "POST", ""]),
            one(&["/api/items?page=2", "/", "/api", ""]),
            one(&["bench.example:8080", "bench", ""]),
            one(&["https", ""]),
            one(&["x-a", "x_a", "x-a x_a", "x_a x-a", "x-a x-a", ""]),
            one(&["acme", "globex", "acme,globex"]),
            one(&["200", "0200", "+200", "abc", ""]),
            any::<bool>(),
            prop_oneof![
                Just(None),
                Just(Some(
                    serde_json::json!({"sub": "acme", "aud": "bench", "n": 5})
                )),
                Just(Some(serde_json::json!({"sub": "bench", "aud": ["bench"]}))),
                Just(Some(serde_json::json!("not an object"))),
            ],
        )
            .prop_map(
                |(method, path, host, scheme, x_a, value, status, response_x_a, claims)| {
                    let mut request = Vec::new();
                    for (name, value) in [
                        (":method", method),
                        (":path", path),
                        (":authority", host),
                        (":scheme", scheme),
                    ] {
                        if !value.is_empty() {
                            request.push((name, value));
                        }
                    }
                    // `x-a` and its `_` variant, each name once or repeated, in
                    // either order: the second value differs from the first.
                    for (i, name) in x_a.split_whitespace().enumerate() {
                        request.push((name, if i == 0 { value } else { "second" }));
                    }
                    let mut response = Vec::new();
                    if response_x_a {
                        response.push(("x-a", value));
                    }
                    if !status.is_empty() {
                        response.push((":status", status));
                    }
                    context_of(request, claims, response)
                },
            )
    }

    /// A context on the route `bench` with these headers and JWT claims.
    fn context_of(
        request: Vec<(&str, &str)>,
        claims: Option<serde_json::Value>,
        response: Vec<(&str, &str)>,
    ) -> Context {
        let route = RouteInfo {
            chain: Arc::from("bench"),
            route_name: None,
        };
        let mut cx = Context::new(
            route,
            HeaderMap::from_pairs(request),
            Default::default(),
            Default::default(),
        );
        if let Some(claims) = claims {
            cx.metadata_mut().insert(super::JWT_CLAIMS.into(), claims);
        }
        cx.begin_response(HeaderMap::from_pairs(response));
        cx
    }

    /// The fast path's answer is the interpreter's (`None`: an error)
    /// wherever it gives one, and `evaluate_*` give the interpreter's, or
    /// an error where the request gives a header the expression reads
    /// twice (`ambiguous`).
    fn agree<T: PartialEq + std::fmt::Debug>(
        source: &str,
        fast: Eval<'_, T>,
        interpreted: Option<T>,
        evaluated: Option<T>,
        ambiguous: bool,
    ) -> Result<(), TestCaseError> {
        match fast {
            Ok(value) => prop_assert_eq!(Some(&value), interpreted.as_ref(), "{}", source),
            Err(Stop::Missing(_)) => prop_assert_eq!(None, interpreted.as_ref(), "{}", source),
            Err(Stop::Interpret) => {}
        }
        let want = if ambiguous { None } else { interpreted };
        prop_assert_eq!(evaluated, want, "{}", source);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn boolean_shapes_agree(source in boolean(), cx in context()) {
            let expression = Expression::compile(&source, Phase::Response)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let Some(Fast::Condition(condition)) = &expression.fast else {
                return Err(TestCaseError::fail(format!("{source} has no fast shape")));
            };
            let source = format!("{source} on {:?}", cx.request_headers());
            agree(
                &source,
                condition.eval(&cx),
                expression.interpret_bool(&cx).ok(),
                expression.evaluate_bool(&cx).ok(),
                expression.reads.check(cx.request_headers()).is_err(),
            )?;
        }

        #[test]
        fn text_shapes_agree(source in concatenation(), cx in context()) {
            let expression = Expression::compile(&source, Phase::Response)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let Some(Fast::Text(parts)) = &expression.fast else {
                return Err(TestCaseError::fail(format!("{source} has no fast shape")));
            };
            agree(
                &source,
                concatenate(parts, &cx).map(Some),
                expression.interpret_text(&cx).ok(),
                expression.evaluate_text(&cx).ok(),
                expression.reads.check(cx.request_headers()).is_err(),
            )?;
        }
    }

    /// Guards the tests above from passing vacuously: the common shapes
    /// compile to the fast path, which answers them on an ordinary request,
    /// and `evaluate_*` take it (its error names the missing attribute in
    /// its own words).
    #[test]
    fn the_common_shapes_take_the_fast_path() {
        let cx = context_of(
            vec![
                (":method", "GET"),
                (":path", "/api/items?page=2"),
                (":authority", "bench.example:8080"),
                (":scheme", "https"),
                ("x-tenant", "acme"),
            ],
            Some(serde_json::json!({"sub": "admin", "aud": "bench"})),
            vec![(":status", "200")],
        );
        for (source, expected) in [
            (r#"request.method == "GET""#, true),
            (
                r#"request.path.startsWith("/api") && !("x-internal" in request.headers)"#,
                true,
            ),
            (
                r#"request.headers["x-tenant"] in ["acme", "globex"] || jwt.sub == "admin""#,
                true,
            ),
            (r#"jwt["aud"] != route.name"#, false),
        ] {
            let expression = Expression::compile(source, Phase::Response).unwrap();
            let Some(Fast::Condition(condition)) = &expression.fast else {
                panic!("{source} has no fast shape");
            };
            assert!(
                matches!(condition.eval(&cx), Ok(value) if value == expected),
                "{source}"
            );
        }
        for (source, expected) in [
            (r#"request.host + request.path"#, "bench.example/api/items"),
            (r#"string(response.code)"#, "200"),
        ] {
            let expression = Expression::compile(source, Phase::Response).unwrap();
            let Some(Fast::Text(parts)) = &expression.fast else {
                panic!("{source} has no fast shape");
            };
            assert_eq!(
                concatenate(parts, &cx).ok().as_deref(),
                Some(expected),
                "{source}"
            );
        }
        let missing = Expression::compile(r#"request.headers["x-absent"] == "1""#, Phase::Request)
            .unwrap()
            .evaluate_bool(&cx)
            .unwrap_err();
        assert_eq!(
            missing.0,
            r#"no such attribute: request.headers["x-absent"]"#
        );
        for source in [
            r#"size(request.path) > 3"#,
            r#"has(request.method)"#,
            r#"request.headers.exists(h, h == "x")"#,
        ] {
            let expression = Expression::compile(source, Phase::Response).unwrap();
            assert!(expression.fast.is_none(), "{source}");
        }
    }
}
