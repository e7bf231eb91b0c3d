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
//! that is not a string), goes to the interpreter: [`Fast::eval_bool`] and
//! [`Fast::eval_text`] return `None` then. Where both run, they agree; the
//! differential test at the end of this file checks that over generated
//! expressions and requests. In particular errors follow CEL as the
//! interpreter implements it: an attribute the request lacks is an error,
//! every operator is strict except `&&` and `||`, which absorb an error on
//! either side when the other side decides (`error || true` is true).

use std::borrow::Cow;

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};

use super::{select_path, JWT_CLAIMS};
use crate::canonical::strip_port;
use crate::headers::HeaderMap;
use crate::policy::Context;

/// A string an expression reads.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Text {
    Literal(String),
    Method,
    Path,
    Host,
    Scheme,
    RouteName,
    RequestHeader(String),
    ResponseHeader(String),
    Claim(String),
    /// `string(response.code)`.
    ResponseCode,
}

/// A compiled expression of a fast shape.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fast {
    Bool(bool),
    Equals(Text, Text),
    NotEquals(Text, Text),
    StartsWith(Text, Text),
    EndsWith(Text, Text),
    Contains(Text, Text),
    InList(Text, Vec<String>),
    HasRequestHeader(String),
    HasResponseHeader(String),
    And(Box<Fast>, Box<Fast>),
    Or(Box<Fast>, Box<Fast>),
    Not(Box<Fast>),
    /// Text: one string, or several joined by `+`.
    Concat(Vec<Text>),
}

/// The request lacks an attribute the expression reads: an evaluation
/// error, as in the interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Missing;

/// A fast evaluation: `None` when this input is one the interpreter must
/// handle.
type Eval<T> = Option<Result<T, Missing>>;

impl Fast {
    /// Compiles `expr` if it has a fast shape.
    pub(super) fn compile(expr: &IdedExpr) -> Option<Self> {
        boolean(expr).or_else(|| concat(expr).map(Fast::Concat))
    }

    /// Evaluates a boolean shape.
    pub(super) fn eval_bool(&self, cx: &Context) -> Eval<bool> {
        Some(Ok(match self {
            Self::Bool(b) => *b,
            Self::Equals(a, b) => return compare(a, b, cx, |a, b| a == b),
            Self::NotEquals(a, b) => return compare(a, b, cx, |a, b| a != b),
            Self::StartsWith(a, b) => return compare(a, b, cx, |a, b| a.starts_with(b)),
            Self::EndsWith(a, b) => return compare(a, b, cx, |a, b| a.ends_with(b)),
            Self::Contains(a, b) => return compare(a, b, cx, |a, b| a.contains(b)),
            Self::InList(a, list) => match a.read(cx)? {
                Ok(a) => list.iter().any(|item| *item == a),
                Err(missing) => return Some(Err(missing)),
            },
            Self::HasRequestHeader(name) => has_header(cx.request_headers(), name),
            Self::HasResponseHeader(name) => has_header(cx.response_headers(), name),
            Self::And(left, right) => return logical(left, right, false, cx),
            Self::Or(left, right) => return logical(left, right, true, cx),
            Self::Not(inner) => match inner.eval_bool(cx)? {
                Ok(b) => !b,
                Err(missing) => return Some(Err(missing)),
            },
            Self::Concat(_) => return None,
        }))
    }

    /// Evaluates a text shape.
    pub(super) fn eval_text(&self, cx: &Context) -> Eval<String> {
        let Self::Concat(parts) = self else {
            return None;
        };
        let mut text = String::new();
        for part in parts {
            match part.read(cx)? {
                Ok(part) => text.push_str(&part),
                Err(missing) => return Some(Err(missing)),
            }
        }
        Some(Ok(text))
    }
}

/// CEL's `&&` (`decisive` false) and `||` (`decisive` true): the decisive
/// value on either side decides, even when the other side is an error.
fn logical(left: &Fast, right: &Fast, decisive: bool, cx: &Context) -> Eval<bool> {
    match left.eval_bool(cx)? {
        Ok(value) if value == decisive => Some(Ok(decisive)),
        left => match (left, right.eval_bool(cx)?) {
            (Ok(_), right) => Some(right),
            (Err(_), Ok(value)) if value == decisive => Some(Ok(decisive)),
            (Err(missing), _) => Some(Err(missing)),
        },
    }
}

/// A strict operator over two strings: both read, left first; the first
/// that is missing is the error.
fn compare(a: &Text, b: &Text, cx: &Context, op: fn(&str, &str) -> bool) -> Eval<bool> {
    let a = match a.read(cx)? {
        Ok(a) => a,
        Err(missing) => return Some(Err(missing)),
    };
    Some(b.read(cx)?.map(|b| op(&a, &b)))
}

impl Text {
    /// The string, read in place where it can be: the same value the
    /// interpreter's binding gives (see `expr::bind`).
    fn read<'a>(&'a self, cx: &'a Context) -> Eval<Cow<'a, str>> {
        let request = cx.request_headers();
        let found = match self {
            Self::Literal(text) => Some(Cow::Borrowed(text.as_str())),
            Self::Method => request.get(":method").map(Cow::Borrowed),
            Self::Path => {
                let path = request.get(":path").unwrap_or("/");
                Some(Cow::Borrowed(path.split_once('?').map_or(path, |(p, _)| p)))
            }
            Self::Host => request.get(":authority").map(strip_port).map(Cow::Borrowed),
            Self::Scheme => request.get(":scheme").map(Cow::Borrowed),
            Self::RouteName => Some(Cow::Borrowed(cx.route().chain.as_ref())),
            Self::RequestHeader(name) => header(request, name),
            Self::ResponseHeader(name) => header(cx.response_headers(), name),
            Self::ResponseCode => cx
                .response_headers()
                .get(":status")
                .and_then(|s| s.parse::<i64>().ok())
                .map(|code| Cow::Owned(code.to_string())),
            Self::Claim(name) => match cx.metadata().get(JWT_CLAIMS) {
                None => None,
                Some(serde_json::Value::Object(claims)) => match claims.get(name) {
                    None => None,
                    Some(serde_json::Value::String(s)) => Some(Cow::Borrowed(s.as_str())),
                    // Numbers, lists and objects compare by CEL's rules.
                    Some(_) => return None,
                },
                Some(_) => return None,
            },
        };
        Some(found.ok_or(Missing))
    }
}

/// `request.headers[name]` as the interpreter binds it: names read with
/// `_` as `-`, repeated headers joined with `,`, pseudo-headers left out.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<Cow<'a, str>> {
    let mut found: Option<Cow<'a, str>> = None;
    for (n, value) in headers.iter() {
        if reads_as(n, name) {
            found = Some(match found {
                None => Cow::Borrowed(value),
                Some(earlier) => Cow::Owned(format!("{earlier},{value}")),
            });
        }
    }
    found
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

/// `"name" in request.headers`: whether [`header`] would find it, without
/// joining repeated values.
fn has_header(headers: &HeaderMap, name: &str) -> bool {
    headers.iter().any(|(n, _)| reads_as(n, name))
}

/// Whether the header named `n` is read as `name` (`_` as `-`; never a
/// pseudo-header).
fn reads_as(n: &str, name: &str) -> bool {
    !n.starts_with(':')
        && n.len() == name.len()
        && n.bytes()
            .map(|b| if b == b'_' { b'-' } else { b })
            .eq(name.bytes())
}

fn boolean(expr: &IdedExpr) -> Option<Fast> {
    match &expr.expr {
        Expr::Literal(LiteralValue::Boolean(b)) => Some(Fast::Bool(*b.inner())),
        Expr::Call(call) => {
            let args = call.args.as_slice();
            match (call.func_name.as_str(), &call.target, args) {
                (operators::EQUALS, None, [a, b]) => Some(Fast::Equals(text(a)?, text(b)?)),
                (operators::NOT_EQUALS, None, [a, b]) => Some(Fast::NotEquals(text(a)?, text(b)?)),
                (operators::LOGICAL_AND, None, [a, b]) => {
                    Some(Fast::And(Box::new(boolean(a)?), Box::new(boolean(b)?)))
                }
                (operators::LOGICAL_OR, None, [a, b]) => {
                    Some(Fast::Or(Box::new(boolean(a)?), Box::new(boolean(b)?)))
                }
                (operators::LOGICAL_NOT, None, [a]) => Some(Fast::Not(Box::new(boolean(a)?))),
                (operators::IN, None, [item, collection]) => in_shape(item, collection),
                ("startsWith", Some(target), [arg]) => {
                    Some(Fast::StartsWith(text(target)?, text(arg)?))
                }
                ("endsWith", Some(target), [arg]) => {
                    Some(Fast::EndsWith(text(target)?, text(arg)?))
                }
                ("contains", Some(target), [arg]) => {
                    Some(Fast::Contains(text(target)?, text(arg)?))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// `"name" in request.headers`, or `text in ["a", "b"]`.
fn in_shape(item: &IdedExpr, collection: &IdedExpr) -> Option<Fast> {
    match &collection.expr {
        Expr::List(list) if list.optional_indices.is_empty() => {
            let items = list
                .elements
                .iter()
                .map(|e| match &e.expr {
                    Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_owned()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Fast::InList(text(item)?, items))
        }
        _ => {
            let Expr::Literal(LiteralValue::String(name)) = &item.expr else {
                return None;
            };
            let name = name.inner().to_owned();
            match attribute_path(collection)? {
                ("request", path) if path == ["headers"] => Some(Fast::HasRequestHeader(name)),
                ("response", path) if path == ["headers"] => Some(Fast::HasResponseHeader(name)),
                _ => None,
            }
        }
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
                let Expr::Literal(LiteralValue::String(key)) = &key.expr else {
                    return None;
                };
                let key = key.inner().to_owned();
                match &map.expr {
                    Expr::Ident(root) if root == "jwt" => Some(Text::Claim(key)),
                    _ => match attribute_path(map)? {
                        ("request", path) if path == ["headers"] => Some(Text::RequestHeader(key)),
                        ("response", path) if path == ["headers"] => {
                            Some(Text::ResponseHeader(key))
                        }
                        _ => None,
                    },
                }
            }
            ("string", None, [arg]) => match attribute_path(arg)? {
                ("response", path) if path == ["code"] => Some(Text::ResponseCode),
                _ => None,
            },
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

    use proptest::prelude::*;

    use super::super::{Expression, Phase};
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
                Just(r#""x_a" in request.headers"#),
                Just(r#""x-b" in request.headers"#),
                Just(r#""x-a" in response.headers"#),
            ]
            .prop_map(str::to_owned),
            // A shape the fast path leaves alone, inside fast ones.
            text().prop_map(|a| format!("size({a}) > 3")),
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
            one(&["x-a", "x_a", "two", ""]),
            one(&["acme", "globex", "acme,globex"]),
            one(&["200", "abc", ""]),
            prop_oneof![
                Just(None),
                Just(Some(
                    serde_json::json!({"sub": "acme", "aud": "bench", "n": 5})
                )),
                Just(Some(serde_json::json!({"sub": "bench", "aud": ["bench"]}))),
                Just(Some(serde_json::json!("not an object"))),
            ],
        )
            .prop_map(|(method, path, host, x_a, value, status, claims)| {
                let mut request = vec![(":scheme", "https")];
                for (name, value) in [(":method", method), (":path", path), (":authority", host)] {
                    if !value.is_empty() {
                        request.push((name, value));
                    }
                }
                match x_a {
                    "two" => request.extend([("x-a", value), ("x_a", "second")]),
                    "" => {}
                    name => request.push((name, value)),
                }
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
                let mut response = vec![("x-a", value)];
                if !status.is_empty() {
                    response.push((":status", status));
                }
                cx.begin_response(HeaderMap::from_pairs(response));
                cx
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn boolean_shapes_agree(source in boolean(), cx in context()) {
            let expression = Expression::compile(&source, Phase::Response)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let interpreted = expression.interpret_bool(&cx);
            let fast = expression.fast.as_ref().and_then(|f| f.eval_bool(&cx));
            if let Some(fast) = fast {
                prop_assert_eq!(fast.ok(), interpreted.clone().ok(), "{} on {:?}", source, cx.request_headers());
            }
            prop_assert_eq!(expression.evaluate_bool(&cx).ok(), interpreted.ok());
        }

        #[test]
        fn text_shapes_agree(source in concatenation(), cx in context()) {
            let expression = Expression::compile(&source, Phase::Response)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(expression.fast.is_some(), "{} has a fast shape", source);
            let interpreted = expression.interpret_text(&cx);
            prop_assert_eq!(expression.evaluate_text(&cx).ok(), interpreted.ok(), "{}", source);
        }
    }

    /// Guards the test above from passing vacuously: the generated shapes
    /// do reach the fast path.
    #[test]
    fn the_common_shapes_compile_to_the_fast_path() {
        for source in [
            r#"request.method == "GET""#,
            r#"request.path.startsWith("/api") && !("x-internal" in request.headers)"#,
            r#"request.headers["x-tenant"] in ["acme", "globex"] || jwt.sub == "admin""#,
            r#"request.host + request.path"#,
            r#"string(response.code)"#,
            r#"jwt["aud"] != route.name"#,
        ] {
            let expression = Expression::compile(source, Phase::Response).unwrap();
            assert!(expression.fast.is_some(), "{source}");
        }
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
