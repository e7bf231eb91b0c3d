//! Header maps as policies see them, and the changes the hosts apply.
//!
//! A policy edits the headers of the message in its phase through
//! [`HeadersMut`]. Every edit lands twice: in the [`HeaderMap`] (so later
//! policies in the chain see it) and in a [`HeaderMutations`] record (so the
//! host can replay it on the real message). The record is kept as the *net*
//! change per header name rather than as a list of operations, because the
//! hosts apply changes differently: proxy-wasm executes calls in order, while
//! an `ext_proc` `HeaderMutation` removes before it sets. A net change gives
//! the same result on both.

use std::fmt;

/// The headers of one HTTP message, names lower-cased, in arrival order.
///
/// HTTP/2 pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`,
/// `:status`) are ordinary entries. Lookups are linear: a message has a few
/// dozen headers at most, and a `Vec` beats hashing at that size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(String, String)>,
}

impl HeaderMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from name/value pairs, lower-casing the names.
    pub fn from_pairs<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: Into<String>,
        V: Into<String>,
    {
        let entries = pairs
            .into_iter()
            .map(|(name, value)| {
                let mut name: String = name.into();
                name.make_ascii_lowercase();
                (name, value.into())
            })
            .collect();
        Self { entries }
    }

    /// The first value of `name` (which must be lower-case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (which must be lower-case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.append(name, value);
    }

    fn append(&mut self, name: &str, value: &str) {
        self.entries.push((name.to_owned(), value.to_owned()));
    }

    fn remove(&mut self, name: &str) {
        self.entries.retain(|(n, _)| n != name);
    }

    /// Consumes the map into its entries.
    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.entries
    }
}

/// The net change a chain made to one header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderChange {
    /// Every value the message had is gone.
    Remove,
    /// The message's values are replaced by these (never empty).
    Replace(Vec<String>),
    /// These values follow whatever the message already had.
    Append(Vec<String>),
}

/// The net header changes of one phase, per name, in the order the names were
/// first touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMutations {
    changes: Vec<(String, HeaderChange)>,
}

impl HeaderMutations {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes, one per header name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HeaderChange)> {
        self.changes.iter().map(|(n, c)| (n.as_str(), c))
    }

    /// Adds the changes of a later phase, as if they had been made after
    /// these: the result is the net change of both. A host that answers two
    /// phases in one message (`ext_proc`, when the headers end the stream)
    /// needs this.
    pub fn merge(&mut self, later: HeaderMutations) {
        for (name, change) in later.changes {
            match change {
                HeaderChange::Append(values) => {
                    for value in &values {
                        self.append(&name, value);
                    }
                }
                replace_or_remove => self.record(&name, replace_or_remove),
            }
        }
    }

    fn entry(&mut self, name: &str) -> Option<&mut HeaderChange> {
        self.changes
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
    }

    fn record(&mut self, name: &str, change: HeaderChange) {
        match self.entry(name) {
            Some(existing) => *existing = change,
            None => self.changes.push((name.to_owned(), change)),
        }
    }

    fn set(&mut self, name: &str, value: &str) {
        self.record(name, HeaderChange::Replace(vec![value.to_owned()]));
    }

    fn append(&mut self, name: &str, value: &str) {
        match self.entry(name) {
            Some(HeaderChange::Replace(values) | HeaderChange::Append(values)) => {
                values.push(value.to_owned())
            }
            Some(removed @ HeaderChange::Remove) => {
                *removed = HeaderChange::Replace(vec![value.to_owned()])
            }
            None => self.record(name, HeaderChange::Append(vec![value.to_owned()])),
        }
    }

    fn remove(&mut self, name: &str) {
        self.record(name, HeaderChange::Remove);
    }
}

/// Mutable access to the headers of the message in the current phase.
///
/// Names passed in must be valid, lower-case header names; policies check
/// them once at configuration time with [`HeaderName::parse`].
pub struct HeadersMut<'a> {
    pub(crate) map: &'a mut HeaderMap,
    pub(crate) changes: &'a mut HeaderMutations,
}

impl HeadersMut<'_> {
    /// The headers as they are now, earlier policies' edits included.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name)
    }

    /// Replaces every value of `name` with `value`.
    pub fn set(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.map.set(name.as_str(), value.as_str());
        self.changes.set(name.as_str(), value.as_str());
    }

    /// Adds `value` after any existing values of `name`.
    pub fn append(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.map.append(name.as_str(), value.as_str());
        self.changes.append(name.as_str(), value.as_str());
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &HeaderName) {
        self.map.remove(name.as_str());
        self.changes.remove(name.as_str());
    }

    /// Rewrites where the request goes. Only meaningful in request phases;
    /// Envoy picks the upstream cluster before filters run, so this changes
    /// what the upstream sees, not which upstream it is.
    pub fn rewrite(&mut self, target: RequestTarget, value: &HeaderValue) {
        let name = target.pseudo_header();
        self.map.set(name, value.as_str());
        self.changes.set(name, value.as_str());
    }
}

/// The request pseudo-headers a policy may rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestTarget {
    /// `:path`, query included.
    Path,
    /// `:authority` (the `Host`).
    Authority,
}

impl RequestTarget {
    fn pseudo_header(self) -> &'static str {
        match self {
            Self::Path => ":path",
            Self::Authority => ":authority",
        }
    }
}

/// Why a header name or value from a configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidHeader {
    /// The name is empty or has a character outside the RFC 9110 token set.
    Name(String),
    /// The name is a pseudo-header, which header policies may not touch.
    PseudoHeader(String),
    /// The value contains CR, LF or NUL.
    Value(String),
}

impl fmt::Display for InvalidHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => write!(f, "invalid header name {n:?}"),
            Self::PseudoHeader(n) => write!(f, "pseudo-header {n:?} cannot be changed here"),
            Self::Value(v) => write!(f, "header value {v:?} contains CR, LF or NUL"),
        }
    }
}

impl std::error::Error for InvalidHeader {}

/// A validated, lower-case, regular (non-pseudo) header name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeaderName(String);

impl HeaderName {
    /// Validates `name` as an RFC 9110 token and lower-cases it.
    pub fn parse(name: &str) -> Result<Self, InvalidHeader> {
        if name.starts_with(':') {
            return Err(InvalidHeader::PseudoHeader(name.to_owned()));
        }
        let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(InvalidHeader::Name(name.to_owned()));
        }
        Ok(Self(name.to_ascii_lowercase()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A header value without CR, LF or NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderValue(String);

impl HeaderValue {
    /// Validates `value`.
    pub fn parse(value: &str) -> Result<Self, InvalidHeader> {
        if value.contains(['\r', '\n', '\0']) {
            return Err(InvalidHeader::Value(value.to_owned()));
        }
        Ok(Self(value.to_owned()))
    }

    /// The value as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> HeaderName {
        HeaderName::parse(n).unwrap()
    }
    fn value(v: &str) -> HeaderValue {
        HeaderValue::parse(v).unwrap()
    }

    #[test]
    fn from_pairs_lowercases_names() {
        let map = HeaderMap::from_pairs([("X-Foo", "Bar")]);
        assert_eq!(map.get("x-foo"), Some("Bar"));
    }

    #[test]
    fn edits_are_visible_and_recorded_as_net_changes() {
        let mut map = HeaderMap::from_pairs([("a", "1"), ("b", "2"), ("b", "3")]);
        let mut changes = HeaderMutations::default();
        let mut h = HeadersMut {
            map: &mut map,
            changes: &mut changes,
        };
        h.append(&name("a"), &value("x"));
        h.set(&name("b"), &value("y"));
        h.append(&name("b"), &value("z"));
        h.remove(&name("c"));
        h.append(&name("c"), &value("w"));
        h.set(&name("d"), &value("v"));
        h.remove(&name("d"));

        assert_eq!(map.get_all("a").collect::<Vec<_>>(), ["1", "x"]);
        assert_eq!(map.get_all("b").collect::<Vec<_>>(), ["y", "z"]);
        assert_eq!(map.get("c"), Some("w"));
        assert_eq!(map.get("d"), None);
        let got: Vec<_> = changes
            .iter()
            .map(|(n, c)| (n.to_owned(), c.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), HeaderChange::Append(vec!["x".into()])),
                (
                    "b".into(),
                    HeaderChange::Replace(vec!["y".into(), "z".into()])
                ),
                ("c".into(), HeaderChange::Replace(vec!["w".into()])),
                ("d".into(), HeaderChange::Remove),
            ]
        );
    }

    #[test]
    fn merging_later_changes_gives_the_net_change_of_both() {
        let mut map = HeaderMap::new();
        let mut first = HeaderMutations::default();
        let mut h = HeadersMut {
            map: &mut map,
            changes: &mut first,
        };
        h.set(&name("a"), &value("1"));
        h.append(&name("b"), &value("2"));
        h.remove(&name("c"));
        let mut later = HeaderMutations::default();
        let mut h = HeadersMut {
            map: &mut map,
            changes: &mut later,
        };
        h.append(&name("a"), &value("x"));
        h.remove(&name("b"));
        h.append(&name("c"), &value("y"));
        h.append(&name("d"), &value("z"));
        first.merge(later);
        let got: Vec<_> = first
            .iter()
            .map(|(n, c)| (n.to_owned(), c.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "a".into(),
                    HeaderChange::Replace(vec!["1".into(), "x".into()])
                ),
                ("b".into(), HeaderChange::Remove),
                ("c".into(), HeaderChange::Replace(vec!["y".into()])),
                ("d".into(), HeaderChange::Append(vec!["z".into()])),
            ]
        );
    }

    #[test]
    fn names_and_values_are_validated() {
        assert_eq!(name("X-Tenant").as_str(), "x-tenant");
        assert!(matches!(
            HeaderName::parse(":path"),
            Err(InvalidHeader::PseudoHeader(_))
        ));
        assert!(matches!(
            HeaderName::parse("a b"),
            Err(InvalidHeader::Name(_))
        ));
        assert!(matches!(HeaderName::parse(""), Err(InvalidHeader::Name(_))));
        assert!(matches!(
            HeaderValue::parse("a\r\nb"),
            Err(InvalidHeader::Value(_))
        ));
    }
}
