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

    /// Every entry whose name is `name` or a variant of it (see
    /// [`HeaderName::is_variant`]), in order.
    pub fn variants_of<'m: 'n, 'n>(
        &'m self,
        name: &'n HeaderName,
    ) -> impl Iterator<Item = (&'m str, &'m str)> + 'n {
        self.iter().filter(move |(n, _)| name.is_variant(n))
    }

    /// All entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub(crate) fn set(&mut self, name: &str, value: &str) {
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

    pub(crate) fn set(&mut self, name: &str, value: &str) {
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

    /// Removes every value of `name` and of each of its variants
    /// (`x_user` for `x-user`; see [`HeaderName::is_variant`]): what a
    /// policy asserts must not reach the upstream from the client under a
    /// spelling the upstream reads as the same header.
    pub fn remove_variants(&mut self, name: &HeaderName) {
        let others = self.other_variants(name);
        self.remove(name);
        self.remove_all(&others);
    }

    /// Replaces every value of `name` with `value` and removes its other
    /// variants, so that an upstream reading `_` as `-` finds this value
    /// and no other: how a policy asserts a header.
    pub fn set_only(&mut self, name: &HeaderName, value: &HeaderValue) {
        // `set` replaces `name`'s own values: removing them first would
        // only be undone.
        let others = self.other_variants(name);
        self.set(name, value);
        self.remove_all(&others);
    }

    /// The names in the message that are variants of `name`, other than
    /// `name` itself.
    fn other_variants(&self, name: &HeaderName) -> Vec<String> {
        let mut others: Vec<String> = Vec::new();
        for (n, _) in self.map.variants_of(name) {
            if n != name.as_str() && !others.iter().any(|o| o == n) {
                others.push(n.to_owned());
            }
        }
        others
    }

    fn remove_all(&mut self, names: &[String]) {
        for name in names {
            self.map.remove(name);
            self.changes.remove(name);
        }
    }

    /// Edits the headers in the one order every policy uses: `remove`
    /// (with their variants), then `set` (this value only: the client's
    /// copies go, in any spelling an upstream reads as the same header),
    /// then `add` (appended).
    pub fn edit<'e>(
        &mut self,
        remove: impl IntoIterator<Item = &'e HeaderName>,
        set: impl IntoIterator<Item = (&'e HeaderName, &'e HeaderValue)>,
        add: impl IntoIterator<Item = (&'e HeaderName, &'e HeaderValue)>,
    ) {
        for name in remove {
            self.remove_variants(name);
        }
        for (name, value) in set {
            self.set_only(name, value);
        }
        for (name, value) in add {
            self.append(name, value);
        }
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

/// Header edits for one message, fixed ahead of time (a policy's
/// parameters, an authorization service's answer); applied with
/// [`HeadersMut::edit`]'s order and meaning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Removed, with their variants.
    pub remove: Vec<HeaderName>,
    /// Set to this value only.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Appended.
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Makes the edits.
    pub fn apply(&self, headers: &mut HeadersMut<'_>) {
        headers.edit(
            &self.remove,
            self.set.iter().map(|(n, v)| (n, v)),
            self.add.iter().map(|(n, v)| (n, v)),
        );
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
    /// The name is a hop-by-hop or framing header (`content-length`,
    /// `transfer-encoding`, `connection`, ...), or `host`: editing one could
    /// make Envoy and the upstream read the message differently (request
    /// smuggling) or send it elsewhere.
    Framing(String),
    /// The value contains CR, LF or NUL.
    Value(String),
}

impl fmt::Display for InvalidHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => write!(f, "invalid header name {n:?}"),
            Self::PseudoHeader(n) => write!(f, "pseudo-header {n:?} cannot be changed here"),
            Self::Framing(n) => write!(
                f,
                "{n:?} frames the message or the connection and cannot be changed by a policy{}",
                if n == "host" {
                    " (rewrite the host with transformation's `host:`)"
                } else {
                    ""
                }
            ),
            Self::Value(v) => write!(f, "header value {v:?} contains CR, LF or NUL"),
        }
    }
}

impl std::error::Error for InvalidHeader {}

/// Headers that frame the message or the connection, and `host`; no policy
/// may edit them (see [`InvalidHeader::Framing`]).
pub const FRAMING_HEADERS: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// A validated, lower-case, regular (non-pseudo) header name that a policy
/// may edit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeaderName(String);

impl HeaderName {
    /// A framing header the engine itself sets (`content-length` after a
    /// body edit); never one a policy names.
    pub(crate) fn engine_framing(name: &'static str) -> Self {
        Self(name.to_owned())
    }

    /// Validates `name` as an RFC 9110 token that is not a framing header,
    /// and lower-cases it.
    pub fn parse(name: &str) -> Result<Self, InvalidHeader> {
        if name.starts_with(':') {
            return Err(InvalidHeader::PseudoHeader(name.to_owned()));
        }
        let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(InvalidHeader::Name(name.to_owned()));
        }
        let name = name.to_ascii_lowercase();
        if FRAMING_HEADERS.contains(&name.as_str()) {
            return Err(InvalidHeader::Framing(name));
        }
        Ok(Self(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other` (a lower-case name, as in a [`HeaderMap`]) is this
    /// name or a variant of it: the same once every `_` in either is read
    /// as `-`. Many upstream frameworks read them as one header (CGI-style
    /// `HTTP_X_USER`, nginx with `underscores_in_headers`), so a header
    /// the engine asserts or strips must be asserted or stripped under
    /// every such spelling.
    pub fn is_variant(&self, other: &str) -> bool {
        let dash = |b: u8| if b == b'_' { b'-' } else { b };
        self.0.len() == other.len()
            && self
                .0
                .bytes()
                .zip(other.bytes())
                .all(|(a, b)| dash(a) == dash(b))
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
    fn variants_read_underscores_as_dashes_and_are_removed_together() {
        assert!(name("x-user").is_variant("x_user"));
        assert!(name("x_user").is_variant("x-user"));
        assert!(name("x-user").is_variant("x-user"));
        assert!(!name("x-user").is_variant("x-users"));
        assert!(!name("x-user").is_variant("xuser"));
        let mut map = HeaderMap::from_pairs([
            ("x_user", "forged"),
            ("X-User", "forged"),
            ("x-User_", "other"),
            ("x_User", "again"),
        ]);
        let mut changes = HeaderMutations::default();
        let mut h = HeadersMut {
            map: &mut map,
            changes: &mut changes,
        };
        h.set_only(&name("x-user"), &value("alice"));
        assert_eq!(
            map.iter().collect::<Vec<_>>(),
            [("x-user_", "other"), ("x-user", "alice")]
        );
        let got: Vec<_> = changes
            .iter()
            .map(|(n, c)| (n.to_owned(), c.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("x-user".into(), HeaderChange::Replace(vec!["alice".into()])),
                ("x_user".into(), HeaderChange::Remove),
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

    #[test]
    fn framing_headers_and_host_cannot_be_named_in_any_case() {
        for framing in [
            "Content-Length",
            "transfer-encoding",
            "CONNECTION",
            "te",
            "upgrade",
            "host",
        ] {
            assert!(
                matches!(HeaderName::parse(framing), Err(InvalidHeader::Framing(_))),
                "{framing}"
            );
        }
        assert!(InvalidHeader::Framing("host".into())
            .to_string()
            .contains("transformation's `host:`"));
    }
}
