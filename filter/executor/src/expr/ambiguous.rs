//! Values a request gives in two readings, and the rule that no expression
//! decides on one.
//!
//! Upstream frameworks read some constructs differently from one another,
//! so whichever reading CEL gave, an attacker could pick the spelling that
//! reads the other way upstream and walk around a deny rule:
//!
//! * **A header sent more than once** (`x-role: user` then `x-role: admin`,
//!   or `x-role` beside `x_role`): some frameworks take the first line,
//!   some the last, some join them.
//! * **A raw `+` in a query name or value**: form decoders (most
//!   frameworks) read a space, RFC 3986 readers a `+`. `%2B` and `%20` say
//!   which was meant and are read as such.
//! * **A query name in another spelling** than the one a rule reads,
//!   which some frameworks fold into it: another case (`?DEBUG=1` where a
//!   rule reads `debug`; ASP.NET and Java's `equalsIgnoreCase` ignore
//!   case), a leading `+`, space or bracket (PHP and Rack trim them), a
//!   leading `!` (Spring's field marker), an array suffix (`debug[]`,
//!   `debug[x]y`: PHP, Rails and Express's `qs` read `debug`), a `.`,
//!   space or unclosed `[` for `_` (PHP), anything after a NUL (PHP).
//!
//! So the static check records which headers and query parameters an
//! expression reads by name (`request.headers["x-role"]`,
//! `"debug" in request.query`, `request.query.debug`), and an evaluation on
//! a request that gives one of them ambiguously is an error, which every
//! policy turns into its fail-closed outcome (`authorization` denies).
//! Parameters and headers the expression does not read do not matter. An
//! expression that reads the map whole (`size(request.headers)`,
//! `request.query.exists(...)`, an index computed at run time) reads every
//! name: any repeated header, any raw `+`, and any query name that some
//! framework folds into another (upper case, `[...]`, `.`) then make it
//! fail.

use std::borrow::Cow;

use super::fast::reads_as;
use super::{header_key, EvalError};
use crate::canonical::{percent_decode, query_pairs};
use crate::headers::HeaderMap;

/// The request headers and query parameters an expression reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Reads {
    headers: Names,
    query: Names,
}

/// Which names of a map an expression reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    /// These, by literal name (none: the map is not read), each with its
    /// [`folded`] form, worked out once.
    Listed(Vec<(String, String)>),
    /// Any: the map is read whole, or by a name known only at run time.
    Every,
}

impl Default for Names {
    fn default() -> Self {
        Self::Listed(Vec::new())
    }
}

impl Names {
    fn add(&mut self, name: &str) {
        if let Self::Listed(names) = self {
            if !names.iter().any(|(n, _)| n == name) {
                names.push((name.to_owned(), folded(name).into_owned()));
            }
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Self::Listed(names) if names.is_empty())
    }
}

impl Reads {
    /// Records a use of `request.<path>`; `key` is the literal name it is
    /// indexed with (`request.headers["x"]`, `"x" in request.headers`).
    pub(super) fn note(&mut self, path: &[&str], key: Option<&str>) {
        let (map, name) = match path {
            [] => {
                self.headers = Names::Every;
                self.query = Names::Every;
                return;
            }
            [map] => (map, key),
            [map, name, ..] => (map, Some(*name)),
        };
        let names = match *map {
            "headers" => &mut self.headers,
            "query" => &mut self.query,
            _ => return,
        };
        match name {
            Some(name) => names.add(name),
            None => *names = Names::Every,
        }
    }

    /// `Err` if the request gives a value this expression reads in two
    /// readings. The error names what the configuration reads, never what
    /// the client sent.
    pub(super) fn check(&self, request: &HeaderMap) -> Result<(), EvalError> {
        if !self.headers.is_empty() {
            if let Some(name) = repeated_header(&self.headers, request) {
                return Err(EvalError(format!(
                    "request.headers[{name:?}] is sent more than once: frameworks disagree \
                     on which line counts"
                )));
            }
        }
        if !self.query.is_empty() {
            let query = super::path_and_query(request).1;
            if let Some(name) = ambiguous_parameter(&self.query, query) {
                return Err(EvalError(format!(
                    "request.query{name} is ambiguous (a raw '+', or a name some framework \
                     reads as another): frameworks disagree on what it says"
                )));
            }
        }
        Ok(())
    }
}

/// A header read by `names` that the request sends more than once (in any
/// spelling of its name), as the expression names it.
fn repeated_header(names: &Names, request: &HeaderMap) -> Option<String> {
    match names {
        Names::Listed(names) => names
            .iter()
            .find(|(name, _)| {
                request
                    .iter()
                    .filter(|(n, _)| reads_as(n, name))
                    .nth(1)
                    .is_some()
            })
            .map(|(name, _)| name.clone()),
        Names::Every => {
            let keys: Vec<Cow<'_, str>> =
                request.iter().filter_map(|(n, _)| header_key(n)).collect();
            keys.iter()
                .enumerate()
                .find(|(at, key)| keys[at + 1..].contains(key))
                .map(|(_, key)| key.clone().into_owned())
        }
    }
}

/// A query name as the loosest frameworks read it, so that two names any
/// of them reads as one fold to the same text: `+` as a space, cut at a
/// NUL, leading spaces, `!` and brackets trimmed, an array suffix
/// (`[]`, `[0]`, `[x]y`) dropped, trailing brackets trimmed, `.`, spaces
/// and an unclosed `[` as `_`, case folded per character as Java's
/// `equalsIgnoreCase` does (the Kelvin sign is `k`, `İ` is `i`). It folds
/// more than any one framework: a false match refuses a request, never
/// lets one through.
fn folded(name: &str) -> Cow<'_, str> {
    // Most names are already folded: no allocation for them.
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-');
    if name.bytes().all(plain) {
        return Cow::Borrowed(name);
    }
    let name = name.replace('+', " ");
    let name = name.split('\0').next().unwrap_or_default();
    let name = name.trim_start_matches([' ', '!', '[', ']']);
    let name = match name.find('[') {
        Some(at) if name[at..].contains(']') => &name[..at],
        _ => name.trim_end_matches(']'),
    };
    name.chars()
        .map(|c| {
            let upper = c.to_uppercase().next().unwrap_or(c);
            match upper.to_lowercase().next().unwrap_or(upper) {
                '.' | ' ' | '[' => '_',
                c => c,
            }
        })
        .collect::<String>()
        .into()
}

/// A parameter read by `names` whose name or value the query gives in two
/// readings: `["name"]` as the expression reads it, or `" parameter"` when
/// it reads them all.
fn ambiguous_parameter(names: &Names, query: &str) -> Option<String> {
    for (raw_name, raw_value) in query_pairs(query) {
        // A name that does not decode makes the whole query unreadable
        // (`expr::query_map`).
        let Some(name) = percent_decode(raw_name) else {
            continue;
        };
        let plus = raw_name.contains('+') || raw_value.contains('+');
        match names {
            Names::Every => {
                if plus || folded(&name) != name {
                    return Some(" parameter".to_owned());
                }
            }
            Names::Listed(listed) => {
                let loose = folded(&name);
                let read = listed.iter().find(|(_, folded)| *folded == *loose);
                if let Some((key, _)) = read {
                    if plus || *key != name {
                        return Some(format!("[{key:?}]"));
                    }
                }
            }
        }
    }
    None
}
