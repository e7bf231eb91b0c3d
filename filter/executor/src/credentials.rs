//! Where clients put credentials (a header, with or without a scheme
//! prefix, a query parameter, a cookie), how to take them out before the
//! upstream, and how to compare secrets. Shared by the authentication
//! policies so that each reads and strips credentials the same way, and an
//! attacker finds no policy that reads them more loosely than another.
//!
//! # What counts as a credential
//!
//! A request either carries **no** credential, **one**, or one the engine
//! refuses to read ([`CredentialError`]). Only the first is "missing" (what
//! `allow_missing` lets through); the engine never guesses which of two
//! readings the upstream will make:
//!
//! * **Malformed: 401.** Something is where a credential goes but it is not
//!   one: an empty value (`Authorization: Bearer`, `?api_key=`), the scheme
//!   not followed by a space (`Bearer<TAB>x`, `Bearer:x`, `Bearerx`),
//!   whitespace or a control character inside the credential, a `%` escape
//!   in a query value that does not decode to UTF-8, or the credential only
//!   under a variant of its name (below).
//! * **Duplicate: 400.** More than one credential of the kind: two
//!   `Authorization` lines, a repeated `x-api-key` or query parameter or
//!   cookie, a header value with a comma (two lines folded into one by a
//!   proxy, RFC 9110 section 5.3; no token, Basic credential or key has
//!   one), or credentials in two configured locations (a header *and* the
//!   query). 400 is RFC 6750's `invalid_request` for exactly this ("repeats
//!   the same parameter, uses more than one method").
//!
//! A header location's scheme (`prefix: "Bearer "`) is compared without
//! regard to case (RFC 7235: `bearer x`, `BEARER x`), and one or more
//! spaces separate it from the credential. A value of another scheme
//! (`Basic ...` where `Bearer` is read, `DPoP ...`) is not this
//! credential: it counts as none, as RFC 6750 section 3.1 treats "an
//! unsupported authentication method", and stays on the request. A value
//! that merely starts with the scheme's name (`Bearerx`) is this scheme,
//! malformed.
//!
//! # Variants of a name
//!
//! Upstreams read names more loosely than HTTP says: many frameworks read
//! `x_api_key` as `x-api-key` (see [`HeaderName::is_variant`]), and some
//! read query names without regard to case. A credential under such a
//! variant counts as present: alone it is malformed (401), next to the
//! real one it is a duplicate (400), and stripping removes every variant.
//! Query names are compared after percent-decoding (`%61pi_key` is
//! `api_key`), and query values are percent-decoded before use (`+` stays
//! `+`: this is RFC 3986, not form decoding).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;

use crate::canonical::{percent_decode, percent_decode_lossy, query_pairs};
use crate::headers::{HeaderName, HeaderValue, RequestTarget};
use crate::policy::Context;
use crate::registry::ParamError;

/// Where a credential is read from, as configured:
/// `{header: authorization, prefix: "Bearer "}`, `{query: access_token}` or
/// `{cookie: session}`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "credential_location"))]
#[serde(deny_unknown_fields)]
pub struct RawLocation {
    /// A request header.
    pub header: Option<String>,
    /// With `header`: a scheme the value must start with (compared without
    /// regard to case), removed from the credential. A trailing space
    /// means one or more spaces.
    pub prefix: Option<String>,
    /// A query parameter.
    pub query: Option<String>,
    /// A cookie.
    pub cookie: Option<String>,
}

/// A checked [`RawLocation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A header, and the prefix its value must carry.
    Header(HeaderName, String),
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
}

/// Why a request's credential is refused before its value is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    /// The scheme is followed by something other than a space
    /// (`Bearer<TAB>x`, `Bearer:x`).
    NoSpaceAfterScheme,
    /// Present but empty: `Authorization: Bearer`, `?api_key=`.
    Empty,
    /// Whitespace or a control character inside the credential.
    BadCharacter,
    /// A query value whose `%` escapes do not decode to UTF-8.
    BadEscape,
    /// Present only under a variant of the configured name (`x_api_key`,
    /// `?API_KEY=`).
    VariantName,
    /// More than one credential of the kind.
    Duplicate,
    /// A query credential beside a `;`, which some servers (Rack, older
    /// Python and Go) read as a separator: `?x=1;api_key=A&api_key=B` is
    /// one key to the engine and another to them.
    Semicolon,
}

impl CredentialError {
    /// The status a policy answers with: 400 for a duplicate, 401 for the
    /// rest.
    pub const fn status(self) -> u16 {
        match self {
            Self::Duplicate | Self::Semicolon => 400,
            _ => 401,
        }
    }
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoSpaceAfterScheme => "the scheme is not followed by a space",
            Self::Empty => "the credential is empty",
            Self::BadCharacter => "the credential has whitespace or a control character",
            Self::BadEscape => "the credential has a bad percent-escape",
            Self::VariantName => "the credential is under a variant of its name",
            Self::Duplicate => "more than one credential",
            Self::Semicolon => "a query credential beside a ';'",
        })
    }
}

impl std::error::Error for CredentialError {}

impl Location {
    /// The headers among `locations`.
    pub fn header_names(locations: &[Location]) -> Vec<HeaderName> {
        locations
            .iter()
            .filter_map(|l| match l {
                Self::Header(name, _) => Some(name.clone()),
                Self::Query(_) | Self::Cookie(_) => None,
            })
            .collect()
    }

    /// Checks a configured location; errors name `field`.
    pub fn parse(raw: RawLocation, field: &str) -> Result<Self, ParamError> {
        let one = "give exactly one of `header`, `query` or `cookie`";
        match raw {
            RawLocation {
                header: Some(name),
                prefix,
                query: None,
                cookie: None,
            } => {
                let name = HeaderName::parse(&name)
                    .map_err(|e| ParamError::at(format!("{field}.header"), e))?;
                let prefix = prefix.unwrap_or_default();
                if prefix.chars().any(char::is_control)
                    || (!prefix.is_empty() && prefix.trim().is_empty())
                {
                    return Err(ParamError::at(
                        format!("{field}.prefix"),
                        "a prefix is a scheme like \"Bearer \": not only spaces, no control characters",
                    ));
                }
                Ok(Self::Header(name, prefix))
            }
            RawLocation {
                header: None,
                prefix: None,
                query: Some(name),
                cookie: None,
            } if !name.is_empty() => Ok(Self::Query(name)),
            RawLocation {
                header: None,
                prefix: None,
                query: None,
                cookie: Some(name),
            } if !name.is_empty() => Ok(Self::Cookie(name)),
            RawLocation {
                prefix: Some(_),
                header: None,
                ..
            } => Err(ParamError::at(
                format!("{field}.prefix"),
                "a prefix goes with `header`",
            )),
            _ => Err(ParamError::at(field.to_owned(), one)),
        }
    }

    /// Checks a list of configured locations (`from: [...]`), at least one
    /// and none twice; errors name `field[i]`.
    pub fn parse_list(raw: Vec<RawLocation>, field: &str) -> Result<Vec<Self>, ParamError> {
        if raw.is_empty() {
            return Err(ParamError::at(field, "at least one location is needed"));
        }
        let mut locations: Vec<Self> = Vec::with_capacity(raw.len());
        for (i, raw) in raw.into_iter().enumerate() {
            let at = format!("{field}[{i}]");
            let location = Self::parse(raw, &at)?;
            if locations.iter().any(|l| l.same_place(&location)) {
                return Err(ParamError::at(at, "this location is listed twice"));
            }
            locations.push(location);
        }
        Ok(locations)
    }

    fn same_place(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Header(a, p), Self::Header(b, q)) => a == b && p.eq_ignore_ascii_case(q),
            (a, b) => a == b,
        }
    }

    /// The credential the request carries here: `Ok(None)` if there is
    /// none at all, an error if what is there cannot be used (see the
    /// module documentation). Query values come percent-decoded.
    pub fn find<'a>(&self, cx: &'a Context) -> Result<Option<Cow<'a, str>>, CredentialError> {
        let request = cx.request_headers();
        match self {
            Self::Header(name, prefix) => {
                let mut lines = request.variants_of(name);
                let Some((found_as, value)) = lines.next() else {
                    return Ok(None);
                };
                if lines.next().is_some() {
                    return Err(CredentialError::Duplicate);
                }
                if found_as != name.as_str() {
                    return Err(CredentialError::VariantName);
                }
                header_credential(value, prefix).map(|c| c.map(Cow::Borrowed))
            }
            Self::Query(name) => {
                let Some(query) = request.get(":path").and_then(query_of) else {
                    return Ok(None);
                };
                let raw = match one_query_param(query, name)? {
                    None => return Ok(None),
                    Some(raw) => raw,
                };
                let value = percent_decode(raw).ok_or(CredentialError::BadEscape)?;
                check_plain(&value)?;
                Ok(Some(value))
            }
            Self::Cookie(name) => {
                let mut values = request
                    .get_all("cookie")
                    .flat_map(|line| line.split(';'))
                    .filter_map(|pair| pair.trim().split_once('='))
                    .filter(|(n, _)| n == name)
                    .map(|(_, value)| value);
                let Some(value) = values.next() else {
                    return Ok(None);
                };
                if values.next().is_some() {
                    return Err(CredentialError::Duplicate);
                }
                check_plain(value)?;
                Ok(Some(Cow::Borrowed(value)))
            }
        }
    }

    /// The one credential the request carries in any of `locations`, and
    /// where: `Ok(None)` if none holds anything, [`CredentialError::Duplicate`]
    /// if two do (a token in the header *and* the query).
    pub fn find_one<'l, 'a>(
        locations: &'l [Self],
        cx: &'a Context,
    ) -> Result<Option<(&'l Self, Cow<'a, str>)>, CredentialError> {
        let mut found = None;
        for location in locations {
            let here = match location.find(cx) {
                Ok(None) => continue,
                Err(CredentialError::Duplicate) => return Err(CredentialError::Duplicate),
                Ok(Some(credential)) => Ok((location, credential)),
                Err(error) => Err(error),
            };
            if found.is_some() {
                return Err(CredentialError::Duplicate);
            }
            found = Some(here);
        }
        found.transpose()
    }

    /// Removes the credential from the request before the upstream: the
    /// header with its variants, every occurrence of the query parameter
    /// under any encoding of its name, or the one cookie.
    pub fn strip(&self, cx: &mut Context) {
        match self {
            Self::Header(name, _) => cx.headers_mut().remove_variants(name),
            Self::Query(name) => {
                let Some(path) = cx.request_headers().get(":path") else {
                    return;
                };
                let Some(rewritten) = without_query_param(path, name) else {
                    return;
                };
                if let Ok(value) = HeaderValue::parse(&rewritten) {
                    cx.headers_mut().rewrite(RequestTarget::Path, &value);
                }
            }
            Self::Cookie(name) => {
                let kept: Vec<&str> = cx
                    .request_headers()
                    .get_all("cookie")
                    .flat_map(|line| line.split(';'))
                    .map(str::trim)
                    .filter(|pair| pair.split_once('=').map_or(*pair, |(n, _)| n) != name)
                    .filter(|pair| !pair.is_empty())
                    .collect();
                let Ok(cookie) = HeaderName::parse("cookie") else {
                    return;
                };
                match HeaderValue::parse(&kept.join("; ")) {
                    Ok(value) if !kept.is_empty() => cx.headers_mut().set(&cookie, &value),
                    _ => cx.headers_mut().remove(&cookie),
                }
            }
        }
    }
}

/// Optional whitespace, as RFC 9110 trims it around a field value.
fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// The credential in one header value read at a location with `prefix`.
fn header_credential<'a>(value: &'a str, prefix: &str) -> Result<Option<&'a str>, CredentialError> {
    let value = trim_ows(value);
    if value.is_empty() {
        return Err(CredentialError::Empty);
    }
    if prefix.is_empty() {
        if value.contains(',') {
            return Err(CredentialError::Duplicate);
        }
        check_plain(value)?;
        return Ok(Some(value));
    }
    let scheme = prefix.trim_end_matches(' ');
    let spaced = scheme.len() < prefix.len();
    let starts_with_scheme = |text: &str| {
        text.get(..scheme.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
    };
    // Another scheme is not this credential; but this scheme anywhere in
    // a folded list (`Basic x,Bearer y`) is one of two.
    if !value
        .split(',')
        .any(|part| starts_with_scheme(trim_ows(part)))
    {
        return Ok(None);
    }
    if value.contains(',') {
        return Err(CredentialError::Duplicate);
    }
    let rest = value.get(scheme.len()..).unwrap_or_default();
    let credential = if spaced {
        let credential = rest.trim_start_matches(' ');
        if credential.len() == rest.len() && !rest.is_empty() {
            return Err(CredentialError::NoSpaceAfterScheme);
        }
        credential
    } else {
        rest
    };
    check_plain(credential)?;
    Ok(Some(credential))
}

/// A credential is not empty and has no whitespace or control character.
fn check_plain(credential: &str) -> Result<(), CredentialError> {
    if credential.is_empty() {
        return Err(CredentialError::Empty);
    }
    // Tokens are ASCII: bytes are checked directly (an ASCII character is
    // whitespace or a control exactly when it is at most a space, or DEL);
    // anything else takes the Unicode check.
    let bad = if credential.is_ascii() {
        credential.bytes().any(|b| b <= b' ' || b == 0x7f)
    } else {
        credential
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    };
    if bad {
        return Err(CredentialError::BadCharacter);
    }
    Ok(())
}

/// The query of a request path, if it has one.
fn query_of(path: &str) -> Option<&str> {
    path.split_once('?').map(|(_, query)| query)
}

/// The raw value of query parameter `name` (`?name` alone has an empty
/// one), if it is there once; a variant of the name counts (see the
/// module documentation).
fn one_query_param<'a>(query: &'a str, name: &str) -> Result<Option<&'a str>, CredentialError> {
    if query.contains(';')
        && query.split(['&', ';']).any(|pair| {
            let raw_name = pair.split_once('=').map_or(pair, |(n, _)| n);
            percent_decode_lossy(raw_name).eq_ignore_ascii_case(name)
        })
    {
        return Err(CredentialError::Semicolon);
    }
    let mut found = None;
    for (raw_name, raw_value) in query_pairs(query) {
        let decoded = percent_decode_lossy(raw_name);
        if !decoded.eq_ignore_ascii_case(name) {
            continue;
        }
        if found.is_some() {
            return Err(CredentialError::Duplicate);
        }
        found = Some((decoded == name, raw_value));
    }
    match found {
        None => Ok(None),
        Some((false, _)) => Err(CredentialError::VariantName),
        Some((true, raw)) => Ok(Some(raw)),
    }
}

/// `path` without any occurrence of query parameter `name` or a variant
/// of it; `None` if it has no query.
pub fn without_query_param(path: &str, name: &str) -> Option<String> {
    let (path_only, query) = path.split_once('?')?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let raw_name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !percent_decode_lossy(raw_name).eq_ignore_ascii_case(name)
        })
        .collect();
    Some(if kept.iter().all(|pair| pair.is_empty()) {
        path_only.to_owned()
    } else {
        format!("{path_only}?{}", kept.join("&"))
    })
}

/// Compares two secrets' digests without an early exit, so the time taken
/// does not reveal where they first differ.
pub fn same_digest(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Credentials a policy verified before, so a client that sends the same
/// ones again pays a lookup, not a signature check or a password hash.
///
/// Keyed by a digest the policy computes (the SHA-256 of the credential:
/// the credential itself is never kept). Each entry holds from `not_before`
/// until `expires`, in the policy's unit of time. Bounded: when full,
/// expired entries go first, then everything (a burst of new credentials
/// costs at most one verification each, as without a cache).
pub struct VerifiedCache<V> {
    capacity: usize,
    entries: std::collections::HashMap<[u8; 32], Verified<V>>,
}

struct Verified<V> {
    not_before: u64,
    expires: u64,
    value: V,
}

impl<V> VerifiedCache<V> {
    /// A cache of at most `capacity` entries; 0 keeps nothing.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: std::collections::HashMap::new(),
        }
    }

    /// The value cached for `digest`, if it holds at `now`.
    pub fn get(&self, digest: &[u8; 32], now: u64) -> Option<&V> {
        self.entries
            .get(digest)
            .filter(|e| e.not_before <= now && now <= e.expires)
            .map(|e| &e.value)
    }

    /// Caches `value` for `digest`, holding from `not_before` to `expires`.
    pub fn insert(&mut self, digest: [u8; 32], value: V, not_before: u64, expires: u64, now: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&digest) {
            self.entries.retain(|_, e| now <= e.expires);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(
            digest,
            Verified {
                not_before,
                expires,
                value,
            },
        );
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn verified_entries_hold_only_inside_their_validity() {
        let mut cache = VerifiedCache::new(4);
        cache.insert([1; 32], "a", 10, 100, 50);
        assert!(cache.get(&[1; 32], 9).is_none());
        assert_eq!(cache.get(&[1; 32], 50), Some(&"a"));
        assert!(cache.get(&[1; 32], 101).is_none());
        assert!(cache.get(&[2; 32], 50).is_none());
    }

    #[test]
    fn a_full_verified_cache_drops_expired_entries_first_and_stays_bounded() {
        let mut cache = VerifiedCache::new(2);
        cache.insert([1; 32], 1, 0, 20, 15);
        cache.insert([2; 32], 2, 0, 100, 15);
        cache.insert([3; 32], 3, 0, 100, 50);
        assert!(cache.get(&[2; 32], 50).is_some());
        assert!(cache.get(&[3; 32], 50).is_some());
        cache.insert([4; 32], 4, 0, 100, 50);
        assert!(cache.len() <= 2);
        assert!(cache.get(&[4; 32], 50).is_some());
        let mut none = VerifiedCache::new(0);
        none.insert([1; 32], 1, 0, 100, 0);
        assert!(none.is_empty());
    }

    use super::*;
    use crate::testing;

    fn location(yaml: &str) -> Result<Location, String> {
        let raw: RawLocation = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        Location::parse(raw, "from[0]").map_err(|e| format!("{}: {}", e.field, e.reason))
    }

    /// What `location` finds in a GET of `path` with `headers`.
    fn found(
        location: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Option<String>, CredentialError> {
        let cx = testing::context(testing::request("GET", path, headers));
        let location = self::location(location).unwrap();
        location.find(&cx).map(|c| c.map(Cow::into_owned))
    }

    const BEARER: &str = "{header: authorization, prefix: 'Bearer '}";

    fn bearer(value: &str) -> Result<Option<String>, CredentialError> {
        found(BEARER, "/", &[("authorization", value)])
    }

    #[test]
    fn finds_credentials_in_headers_queries_and_cookies() {
        let cx = testing::context(testing::request(
            "GET",
            "/a?x=1&access_token=q&y=2",
            &[
                ("authorization", "bearer  abc"),
                ("cookie", "theme=dark; session=s3"),
                ("cookie", "other=1"),
            ],
        ));
        let find = |yaml: &str| {
            location(yaml)
                .unwrap()
                .find(&cx)
                .map(|c| c.map(Cow::into_owned))
        };
        assert_eq!(find(BEARER), Ok(Some("abc".into())));
        let basic = "{header: authorization, prefix: 'Basic '}";
        assert_eq!(find(basic), Ok(None));
        assert_eq!(find("{query: access_token}"), Ok(Some("q".into())));
        assert_eq!(find("{cookie: session}"), Ok(Some("s3".into())));
        assert_eq!(find("{cookie: missing}"), Ok(None));
        assert_eq!(find("{header: x-api-key}"), Ok(None));
    }

    #[test]
    fn the_scheme_is_read_in_any_case_and_another_scheme_is_no_credential() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR abc"] {
            assert_eq!(bearer(value), Ok(Some("abc".into())), "{value}");
        }
        // One or more spaces (RFC 7235 `1*SP`), and optional whitespace
        // around the whole value.
        assert_eq!(bearer("Bearer   abc"), Ok(Some("abc".into())));
        assert_eq!(bearer(" Bearer abc\t"), Ok(Some("abc".into())));
        for other in [
            "Basic YTpi",
            "DPoP abc",
            "Digest a=\"b\", c=\"d\"",
            "Token abc",
        ] {
            assert_eq!(bearer(other), Ok(None), "{other}");
        }
    }

    #[test]
    fn a_malformed_credential_is_refused_not_taken_for_missing() {
        use CredentialError::*;
        let cases = [
            ("Bearer\tabc", NoSpaceAfterScheme),
            ("Bearer:abc", NoSpaceAfterScheme),
            ("Bearerabc", NoSpaceAfterScheme),
            ("Bearer", Empty),
            ("Bearer ", Empty),
            ("bearer \t ", Empty),
            ("", Empty),
            ("Bearer abc def", BadCharacter),
            ("Bearer  \tabc", BadCharacter),
            ("Bearer abc\u{1}", BadCharacter),
        ];
        for (value, error) in cases {
            assert_eq!(bearer(value), Err(error), "{value:?}");
            assert_eq!(error.status(), 401);
        }
        let api_key = |value| found("{header: x-api-key}", "/", &[("x-api-key", value)]);
        assert_eq!(api_key(""), Err(Empty));
        assert_eq!(api_key("a b"), Err(BadCharacter));
        assert_eq!(api_key(" k "), Ok(Some("k".into())));
        assert_eq!(found("{cookie: s}", "/", &[("cookie", "s=")]), Err(Empty));
    }

    #[test]
    fn two_credentials_of_a_kind_are_a_duplicate() {
        use CredentialError::Duplicate;
        assert_eq!(Duplicate.status(), 400);
        let two = [("authorization", "Bearer a"), ("authorization", "Bearer b")];
        assert_eq!(found(BEARER, "/", &two), Err(Duplicate));
        let mixed = [
            ("authorization", "Basic YTpi"),
            ("authorization", "Bearer b"),
        ];
        assert_eq!(found(BEARER, "/", &mixed), Err(Duplicate));
        // Two lines folded into one by a proxy.
        assert_eq!(bearer("Bearer a,Bearer b"), Err(Duplicate));
        assert_eq!(bearer("Basic YTpi, Bearer b"), Err(Duplicate));
        let key = "{header: x-api-key}";
        assert_eq!(
            found(key, "/", &[("x-api-key", "a"), ("x-api-key", "a")]),
            Err(Duplicate)
        );
        assert_eq!(found(key, "/", &[("x-api-key", "a,b")]), Err(Duplicate));
        assert_eq!(
            found(key, "/", &[("x-api-key", "a"), ("x_api_key", "b")]),
            Err(Duplicate)
        );
        let query = "{query: api_key}";
        assert_eq!(found(query, "/?api_key=a&api_key=a", &[]), Err(Duplicate));
        assert_eq!(found(query, "/?api_key=a&api%5Fkey=b", &[]), Err(Duplicate));
        assert_eq!(found(query, "/?api_key=a&API_KEY=b", &[]), Err(Duplicate));
        assert_eq!(found(query, "/?api_key=a&api_key", &[]), Err(Duplicate));
        let cookies = [("cookie", "s=a"), ("cookie", "x=1; s=b")];
        assert_eq!(found("{cookie: s}", "/", &cookies), Err(Duplicate));
    }

    #[test]
    fn a_credential_under_a_variant_of_its_name_is_refused() {
        use CredentialError::VariantName;
        assert_eq!(
            found("{header: x-api-key}", "/", &[("x_api_key", "k")]),
            Err(VariantName)
        );
        assert_eq!(
            found("{query: api_key}", "/?API_KEY=k", &[]),
            Err(VariantName)
        );
    }

    #[test]
    fn query_credentials_are_percent_decoded_names_and_values() {
        let query = |path| found("{query: api_key}", path, &[]);
        assert_eq!(query("/?api_key=a%2Bb%3D"), Ok(Some("a+b=".into())));
        assert_eq!(query("/?%61pi%5Fkey=k"), Ok(Some("k".into())));
        assert_eq!(query("/?api_key=a+b"), Ok(Some("a+b".into())));
        assert_eq!(query("/?api_key=%zz"), Err(CredentialError::BadEscape));
        assert_eq!(query("/?api_key=%ff"), Err(CredentialError::BadEscape));
        assert_eq!(query("/?api_key=%4"), Err(CredentialError::BadEscape));
        assert_eq!(query("/?api_key=a%20b"), Err(CredentialError::BadCharacter));
        assert_eq!(query("/?api_key=%00"), Err(CredentialError::BadCharacter));
        assert_eq!(query("/?api_key="), Err(CredentialError::Empty));
        assert_eq!(query("/?api_key"), Err(CredentialError::Empty));
        assert_eq!(query("/?api_key2=k&xapi_key=k"), Ok(None));
        assert_eq!(query("/?api%5key=k"), Ok(None));
        assert_eq!(query("/api_key=k"), Ok(None));
    }

    #[test]
    fn one_credential_across_locations_or_a_duplicate() {
        let locations = Location::parse_list(
            serde_yaml::from_str(
                "[{header: authorization, prefix: 'Bearer '}, {query: access_token}]",
            )
            .unwrap(),
            "from",
        )
        .unwrap();
        let find = |path: &str, headers: &[(&str, &str)]| {
            let cx = testing::context(testing::request("GET", path, headers));
            Location::find_one(&locations, &cx)
                .map(|found| found.map(|(location, c)| (location.clone(), c.into_owned())))
        };
        assert_eq!(find("/", &[]), Ok(None));
        assert_eq!(
            find("/?access_token=t", &[("authorization", "Basic YTpi")]),
            Ok(Some((locations[1].clone(), "t".into())))
        );
        assert_eq!(
            find("/?access_token=t", &[("authorization", "Bearer t")]),
            Err(CredentialError::Duplicate)
        );
        assert_eq!(
            find("/?access_token=t", &[("authorization", "Bearer\tt")]),
            Err(CredentialError::Duplicate)
        );
        assert_eq!(
            find("/", &[("authorization", "Bearer\tt")]),
            Err(CredentialError::NoSpaceAfterScheme)
        );
    }

    #[test]
    fn refuses_ambiguous_locations() {
        assert_eq!(
            location("{header: a, query: b}").unwrap_err(),
            "from[0]: give exactly one of `header`, `query` or `cookie`"
        );
        assert_eq!(
            location("{query: a, prefix: x}").unwrap_err(),
            "from[0].prefix: a prefix goes with `header`"
        );
        assert!(location("{header: a, prefix: '  '}")
            .unwrap_err()
            .starts_with("from[0].prefix: "));
        let twice = serde_yaml::from_str(
            "[{header: authorization, prefix: 'Bearer '}, {header: Authorization, prefix: 'bearer '}]",
        )
        .unwrap();
        let error = Location::parse_list(twice, "from").unwrap_err();
        assert_eq!(
            (error.field.as_str(), error.reason.as_str()),
            ("from[1]", "this location is listed twice")
        );
        let error = Location::parse_list(Vec::new(), "from").unwrap_err();
        assert_eq!(error.field, "from");
    }

    #[test]
    fn strips_every_occurrence_and_encoding_of_a_query_parameter() {
        assert_eq!(
            without_query_param("/a?k=1&b=2", "k").as_deref(),
            Some("/a?b=2")
        );
        assert_eq!(without_query_param("/a?k=1", "k").as_deref(), Some("/a"));
        assert_eq!(without_query_param("/a", "k"), None);
        assert_eq!(
            without_query_param(
                "/a?api_key=1&b=2&api%5Fkey=3&%61pi_key&API_KEY=4&api_key2=5",
                "api_key"
            )
            .as_deref(),
            Some("/a?b=2&api_key2=5")
        );
    }

    #[test]
    fn strips_a_header_with_its_variants() {
        let mut cx = testing::context(testing::request(
            "GET",
            "/",
            &[("x-api-key", "k"), ("x_api_key", "k2"), ("x-other", "1")],
        ));
        location("{header: x-api-key}").unwrap().strip(&mut cx);
        let left: Vec<_> = cx
            .request_headers()
            .iter()
            .filter(|(n, _)| !n.starts_with(':'))
            .collect();
        assert_eq!(left, [("x-other", "1")]);
    }

    #[test]
    fn compares_digests_of_equal_length_only() {
        assert!(same_digest(b"abc", b"abc"));
        assert!(!same_digest(b"abc", b"abd"));
        assert!(!same_digest(b"abc", b"ab"));
    }
}
