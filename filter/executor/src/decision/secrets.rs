//! The credentials a request carries, and the redaction of any logged text
//! that holds a copy of one.
//!
//! A credential is found where clients put them, in the request **as it
//! arrived**, before any policy took it out (`jwt` strips `authorization`
//! on its way upstream, but a copy in `referer` stays):
//!
//! * `authorization` and `proxy-authorization`: the value, the credential
//!   after its scheme, and for `Basic` the decoded `user:password` and the
//!   password alone;
//! * every header whose name says it carries one (key, token, secret,
//!   pass, auth, cred, session, jwt, assertion, signature) or that a policy
//!   of the chain reads one from: the value, and what follows a scheme;
//! * every cookie value;
//! * query parameters whose name says it carries one, or that a policy
//!   reads one from.
//!
//! A copy can sit anywhere: in any header (`referer`, a custom one), the
//! path, a cookie of another name, metadata a policy wrote. So nothing
//! depends on where the copy is: any logged string that contains a
//! credential, compared without regard to ASCII case and after
//! percent-decoding, is replaced whole.

use std::borrow::Cow;

use ct_codecs::{Base64, Decoder};

use crate::canonical::{percent_decode_lossy, query_pairs};
use crate::credentials::Location;
use crate::headers::HeaderMap;

/// What replaces a value that holds a credential.
pub(crate) const REDACTED: &str = "[redacted]";

/// The shortest value taken for a credential: shorter ones would redact
/// ordinary text and protect nothing.
const MIN_CREDENTIAL: usize = 4;

/// The shortest cookie value taken, when the cookie's name does not say it
/// holds a credential (`theme=dark`, `lang=en-US` are not secrets).
const MIN_COOKIE: usize = 8;

/// The most credentials looked for in one request: every later scan costs
/// their number, and a client sending thousands of cookies must not make
/// the log cost more than the request. Cookies come last, so those past
/// the bound are the client's own spares.
const MAX_SECRETS: usize = 64;

/// Credentials, lower-cased for comparison.
#[derive(Debug, Default, Clone)]
pub(crate) struct Secrets(Vec<String>);

impl Secrets {
    /// The credentials in `request`; `locations` are where the chain's
    /// policies read credentials from.
    pub(crate) fn of(request: &HeaderMap, locations: &[Location]) -> Self {
        let credential_headers = Location::header_names(locations);
        let mut secrets = Self::default();
        for (name, value) in request.iter() {
            if name.starts_with(':') || name == "cookie" {
                continue;
            }
            if secretive(name)
                || credential_headers
                    .iter()
                    .any(|h| h.as_str() == name || h.is_variant(name))
            {
                secrets.add_credential(value);
            }
        }
        if let Some((_, query)) = request.get(":path").and_then(|p| p.split_once('?')) {
            for (name, value) in query_pairs(query) {
                let name = percent_decode_lossy(name);
                let read = locations
                    .iter()
                    .any(|l| matches!(l, Location::Query(q) if q.eq_ignore_ascii_case(&name)));
                if read || secretive(&name) {
                    secrets.add(value, MIN_CREDENTIAL);
                    secrets.add(&percent_decode_lossy(value), MIN_CREDENTIAL);
                }
            }
        }
        for cookies in request.get_all("cookie") {
            secrets.add_cookies(cookies, locations);
        }
        secrets
    }

    /// Adds those of `other` this set lacks.
    pub(crate) fn extend(&mut self, other: Self) {
        for secret in other.0 {
            if !self.0.contains(&secret) {
                self.0.push(secret);
            }
        }
    }

    /// Whether `text` holds any of them: as it is, or percent-decoded up to
    /// three times over (a return URL inside a return URL), `+` read as a
    /// space or not, without regard to ASCII case.
    pub(crate) fn found_in(&self, text: &str) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let holds = |text: &str| {
            let lower = text.to_ascii_lowercase();
            self.0.iter().any(|secret| lower.contains(secret.as_str()))
        };
        let mut text = Cow::Borrowed(text);
        for _ in 0..4 {
            if holds(&text) || (text.contains('+') && holds(&text.replace('+', " "))) {
                return true;
            }
            match percent_decode_lossy(&text) {
                Cow::Owned(decoded) => text = Cow::Owned(decoded),
                Cow::Borrowed(_) => return false,
            }
        }
        false
    }

    /// `text` with each copy of a credential replaced by [`REDACTED`], or
    /// wholly [`REDACTED`] if a copy shows only once it is decoded (where
    /// it sits in `text` is then not known).
    pub(crate) fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.found_in(text) {
            return Cow::Borrowed(text);
        }
        // ASCII lower-casing keeps every byte where it was, and a UTF-8
        // secret matches only on character boundaries.
        let lower = text.to_ascii_lowercase();
        let mut spans: Vec<(usize, usize)> = self
            .0
            .iter()
            .flat_map(|secret| {
                lower
                    .match_indices(secret.as_str())
                    .map(|(at, found)| (at, at + found.len()))
            })
            .collect();
        spans.sort_unstable();
        let mut clean = String::with_capacity(text.len());
        let mut done = 0;
        for (start, end) in spans {
            if end <= done {
                continue;
            }
            if start >= done {
                clean.push_str(&text[done..start]);
                clean.push_str(REDACTED);
            }
            done = end;
        }
        clean.push_str(&text[done..]);
        if self.found_in(&clean) {
            return Cow::Borrowed(REDACTED);
        }
        Cow::Owned(clean)
    }

    fn add(&mut self, value: &str, shortest: usize) {
        let value = value.trim();
        if value.len() >= shortest && self.0.len() < MAX_SECRETS {
            let lower = value.to_ascii_lowercase();
            if !self.0.contains(&lower) {
                self.0.push(lower);
            }
        }
    }

    /// A header value that is a credential, perhaps after a scheme; a
    /// value folded from several lines (`Bearer a, Bearer b`) holds each.
    fn add_credential(&mut self, value: &str) {
        self.add(value, MIN_CREDENTIAL);
        for part in value.split(',') {
            self.add(part, MIN_CREDENTIAL);
            let Some((scheme, credential)) = part.trim().split_once(' ') else {
                continue;
            };
            let credential = credential.trim();
            self.add(credential, MIN_CREDENTIAL);
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = Base64::decode_to_vec(credential, None)
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok());
                if let Some(pair) = decoded {
                    self.add(&pair, MIN_CREDENTIAL);
                    // The password; or, where it is empty, the user, which
                    // is then the key (`Basic base64("sk_live_x:")`).
                    if let Some((user, password)) = pair.split_once(':') {
                        let key = if password.is_empty() { user } else { password };
                        self.add(key, MIN_CREDENTIAL);
                    }
                }
            }
        }
    }

    fn add_cookies(&mut self, header: &str, locations: &[Location]) {
        // `,` too: some servers split cookie lines folded into one.
        for cookie in header.split([';', ',']) {
            let Some((name, value)) = cookie.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            let named = locations
                .iter()
                .any(|l| matches!(l, Location::Cookie(c) if c == name.trim()));
            let shortest = if named || secretive(name.trim()) {
                MIN_CREDENTIAL
            } else {
                MIN_COOKIE
            };
            self.add(value, shortest);
            self.add(&percent_decode_lossy(value), shortest);
        }
    }
}

/// Header (and query parameter) names that say they carry a credential;
/// never a pseudo-header (`:authority` is the host).
pub(crate) fn secretive(name: &str) -> bool {
    const NAMED: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];
    const HINTS: [&str; 10] = [
        "key",
        "token",
        "secret",
        "pass",
        "auth",
        "cred",
        "session",
        "jwt",
        "assertion",
        "signature",
    ];
    if name.starts_with(':') {
        return false;
    }
    let name = name.to_ascii_lowercase();
    NAMED.contains(&name.as_str()) || HINTS.iter().any(|h| name.contains(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(headers: &[(&str, &str)]) -> Secrets {
        Secrets::of(&HeaderMap::from_pairs(headers.iter().copied()), &[])
    }

    #[test]
    fn credentials_are_found_where_clients_put_them() {
        let found = secrets(&[
            (":path", "/p?access_token=tok%2Fen-123&page=2"),
            ("authorization", "Bearer eyJhbGciOi.payload.sig"),
            ("proxy-authorization", "Basic YWxpY2U6aHVudGVyMg=="), // alice:hunter2
            ("x-api-key", "k3y-v4lue"),
            (
                "cookie",
                "theme=dark; sid=\"0123456789abcdef\"; session=s3ss",
            ),
        ]);
        for copy in [
            "https://example.com/?t=eyJhbGciOi.payload.sig",
            "EYJHBGCIOI.PAYLOAD.SIG",
            "YWxpY2U6aHVudGVyMg==",
            "password was hunter2",
            "alice:hunter2",
            "k3y-v4lue",
            "0123456789abcdef",
            "s3ss",
            "tok/en-123",
            "tok%2Fen-123",
            "/r?u=tok%2fen-123",
            "/r?next=%2Fcb%3Ft%3Dtok%252Fen-123", // encoded twice
            "%54OK%2FEN-123",                     // an escaped capital
        ] {
            assert!(found.found_in(copy), "{copy}");
        }
        for plain in ["dark mode", "page 2", "Bearer", "alice", "/p"] {
            assert!(!found.found_in(plain), "{plain}");
        }
    }

    #[test]
    fn each_copy_is_replaced_where_it_sits() {
        let found = secrets(&[("authorization", "Bearer t0ken-abcd")]);
        assert_eq!(
            found.redact("/cb?a=T0KEN-ABCD&b=t0ken-abcd#x"),
            "/cb?a=[redacted]&b=[redacted]#x"
        );
        // A secret the marker itself holds cannot loop; found again in
        // the marker, all of the value goes.
        let dact = secrets(&[("x-api-key", "dact")]);
        assert_eq!(dact.redact("redacted"), "[redacted]");
        // Found only decoded: where it sits is not known, so all of it goes.
        assert_eq!(found.redact("/cb?a=t0ken%2Dabcd"), "[redacted]");
        assert_eq!(found.redact("nothing here"), "nothing here");
    }

    #[test]
    fn a_flood_of_cookies_cannot_crowd_out_a_credential_or_cost_more() {
        let many: Vec<String> = (0..1000)
            .map(|i| format!("c{i}=cookie-value-{i:04}"))
            .collect();
        let cookie = many.join("; ");
        let found = secrets(&[("cookie", &cookie), ("authorization", "Bearer t0ken-abcd")]);
        assert!(found.found_in("t0ken-abcd"));
        assert_eq!(found.0.len(), MAX_SECRETS);
    }

    #[test]
    fn folded_values_cookies_and_keyed_basic_users_are_split() {
        let found = secrets(&[
            (":authority", "api.example.com"),
            ("authorization", "Bearer first-t0ken, Bearer second-t0ken"),
            ("x-auth", "Basic c2tfbGl2ZV9rZXk6"), // sk_live_key:
            ("cookie", "a=xxxxxxxx, sid=c00kie-v4lue-9"),
            ("x-goog-iap-jwt-assertion", "jwt-assert-ion"),
        ]);
        for copy in [
            "first-t0ken",
            "second-t0ken",
            "sk_live_key",
            "c00kie-v4lue-9",
            "jwt-assert-ion",
        ] {
            assert!(found.found_in(copy), "{copy}");
        }
        // The host is not a credential, though `:authority` says "auth".
        assert!(!found.found_in("api.example.com"));
    }

    #[test]
    fn where_a_policy_reads_a_credential_counts_whatever_its_name() {
        let request = HeaderMap::from_pairs([
            (":path", "/p?t=query-t0ken-1&page=2"),
            ("x-client-id", "client-credential-9"),
            ("cookie", "sid=abcd"),
        ]);
        let anywhere = Secrets::of(&request, &[]);
        for copy in ["client-credential-9", "query-t0ken-1", "abcd"] {
            assert!(!anywhere.found_in(copy), "{copy}");
        }
        let header = crate::headers::HeaderName::parse("x-client-id").unwrap();
        let read = [
            Location::Header(header, String::new()),
            Location::Query("T".into()),
            Location::Cookie("sid".into()),
        ];
        let found = Secrets::of(&request, &read);
        for copy in ["client-credential-9", "query-t0ken-1", "abcd"] {
            assert!(found.found_in(copy), "{copy}");
        }
    }
}
