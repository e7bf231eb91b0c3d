//! The one form of a request's path and host that every decision is made
//! on, in both hosts.
//!
//! An attacker who can make the engine see one path while the upstream
//! resolves another walks around every rule: `/repos/../users/x` passes a
//! `startsWith("/repos/")` allowlist, and `API.Example.com.` passes a
//! `request.host == "api.example.com"` deny. So before a route is chosen,
//! [`Engine::start`](crate::Engine::start) makes the request canonical, and
//! route matching, CEL (`request.path`, `request.host`) and every policy see
//! only that form. If it differs from what the client sent, the canonical
//! form is what goes upstream: the upstream never sees a request other than
//! the one decided on. A path that cannot be made canonical gets 400.
//!
//! The path (the query is kept as sent):
//! * escapes of characters a path segment may hold as they are are decoded
//!   (unreserved `A-Z a-z 0-9 - . _ ~`, and `: @ ! $ & ' ( ) * + , =`), so a
//!   rule on `:undelete` matches `%3Aundelete` as servers read it; other escapes are
//!   upper-cased (`%3f` is `%3F`); an escaped control character (`%00`) and
//!   a `%` not followed by two hex digits are refused;
//! * a `;` is refused: servers disagree on whether it starts parameters
//!   (Tomcat, Jetty and Spring drop `;...` from each segment before they
//!   resolve `..`, so `/public/..;/admin` is `/admin` to them). An upstream
//!   that needs one gets it encoded (`%3B`), which no server splits on;
//! * `%2F` and `%5C` (an encoded `/` or `\`) are refused by default; with
//!   `paths: { escaped_slashes: keep }` they stay encoded, part of their
//!   segment, never a separator. A raw `\` is always refused: servers
//!   disagree on whether it separates segments;
//! * repeated slashes are merged, and `.` and `..` segments resolved
//!   (RFC 3986 section 5.2.4; `..` never climbs above the root);
//! * control characters, spaces and a fragment are refused; `*` (for
//!   `OPTIONS *`) is left alone.
//!
//! Percent-encoded bytes that do not form UTF-8 (overlong forms such as
//! `%C0%AE` for `.`, lone continuation bytes, encoded surrogates) are
//! refused too: legacy decoders read `%C0%AE%C0%AE` as `..`. So are encoded
//! characters that Unicode normalization or Windows' best-fit code pages
//! turn into `.`, `/` or `\` (`%EF%BC%8F`, the fullwidth solidus), and C1
//! control characters.
//!
//! The host (see [`canonical_authority`]) is lower-cased and loses a
//! trailing dot; decisions ignore the port, and upstream it keeps it. A host
//! with an empty label (`a..b`, two trailing dots) or a character no host
//! name has is refused, and so is a request with no host at all. An IP
//! literal has one spelling: IPv4 as four decimal numbers, IPv6 as RFC 5952
//! writes it (`[2001:db8::1]`), and an IPv4-mapped IPv6 address
//! (`[::ffff:a9fe:a9fe]`) as the IPv4 address it connects to. IPv6 forms
//! that embed an IPv4 address some other way (IPv4-compatible, NAT64, 6to4,
//! Teredo, ISATAP, SIIT) and zone identifiers are refused: what they reach
//! depends on the network, and a rule about the IPv4 address would not see
//! them.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv6Addr;

use serde::Deserialize;

/// What to do with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Refuse the request with 400 (the default).
    #[default]
    Reject,
    /// Keep them encoded: part of their segment, never a separator, and
    /// sent upstream encoded.
    Keep,
}

/// Why a path cannot be made canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// It does not start with `/` (and is not `*`).
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C`, refused by `escaped_slashes: reject`.
    EscapedSlash,
    /// A raw backslash.
    Backslash,
    /// A control character (raw or escaped), a space, a `#` or a
    /// non-ASCII byte.
    BadCharacter,
    /// A raw `;`.
    Semicolon,
    /// Percent-encoded bytes that are not UTF-8 (`%C0%AE`, `%80`,
    /// `%ED%A0%80`).
    NotUtf8,
    /// An encoded character that Unicode normalization (NFKC) or Windows'
    /// best-fit code pages turn into `.`, `/` or `\` (`%EF%BC%8F`, the
    /// fullwidth solidus), or a C1 control character (`%C2%85`).
    LookAlike,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAbsolute => "the path does not start with '/'",
            Self::BadEscape => "the path has a '%' not followed by two hex digits",
            Self::EscapedSlash => "the path has an encoded '/' or '\\' (%2F, %5C)",
            Self::Backslash => "the path has a backslash",
            Self::BadCharacter => "the path has a character that is not allowed",
            Self::Semicolon => "the path has a ';' (send it encoded, %3B)",
            Self::NotUtf8 => "the path has percent-encoded bytes that are not UTF-8",
            Self::LookAlike => {
                "the path has an encoded character that some servers read as '.', '/' or '\\'"
            }
        })
    }
}

impl std::error::Error for PathError {}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The byte a `%XY` escape at the start of `bytes` stands for.
fn escaped_byte(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [b'%', high, low, ..] => Some(hex_value(*high)? << 4 | hex_value(*low)?),
        _ => None,
    }
}

/// Decodes `%XY` escapes (RFC 3986; `+` stays `+`): `None` if one is
/// broken or the result is not UTF-8. For values a decision reads.
pub fn percent_decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.contains('%') {
        return Some(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        if byte == b'%' {
            out.push(escaped_byte(bytes.get(at..)?)?);
            at += 3;
        } else {
            out.push(byte);
            at += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// Decodes `%XY` escapes as a lenient server would: a broken escape stays
/// as it is. For names, which are compared, never used.
pub fn percent_decode_lossy(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        match bytes.get(at..).and_then(escaped_byte) {
            Some(decoded) => {
                out.push(decoded);
                at += 3;
            }
            None => {
                out.push(byte);
                at += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The parameters of a query as `(name, value)`, both as sent (still
/// percent-encoded); `?flag` alone has an empty value, and empty pairs
/// (`a=1&&b=2`) are skipped. The one split of a query: CEL, the credential
/// readers and the decision log read parameters through it.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// The delimiters RFC 3986 lets a path segment hold as they are (`pchar`),
/// but `;`, which some servers split on.
fn is_segment_delimiter(byte: u8) -> bool {
    matches!(
        byte,
        b':' | b'@' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'='
    )
}

/// The canonical form of `target` (`:path`, query included).
///
/// Borrowed when it is already canonical, which a well-behaved client's
/// request is: the common case costs one scan and no allocation.
pub fn canonical_path(target: &str, slashes: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    if target == "*" {
        return Ok(Cow::Borrowed(target));
    }
    let (path, query) = match target.find('?') {
        Some(at) => (&target[..at], Some(&target[at..])),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if let Some(query) = query {
        if query.bytes().any(|b| b <= b' ' || b >= 0x7f || b == b'#') {
            return Err(PathError::BadCharacter);
        }
    }
    if is_canonical(path)? {
        return Ok(Cow::Borrowed(target));
    }
    let decoded = decode_path(path, slashes)?;
    let mut canonical = remove_dot_segments(&decoded);
    if let Some(query) = query {
        canonical.push_str(query);
    }
    Ok(Cow::Owned(canonical))
}

/// Whether `path` needs no change; refuses what can never be canonical.
fn is_canonical(path: &str) -> Result<bool, PathError> {
    let bytes = path.as_bytes();
    let mut canonical = true;
    for (at, &byte) in bytes.iter().enumerate() {
        match byte {
            b'\\' => return Err(PathError::Backslash),
            b'#' => return Err(PathError::BadCharacter),
            b';' => return Err(PathError::Semicolon),
            _ if byte <= b' ' || byte >= 0x7f => return Err(PathError::BadCharacter),
            b'%' => canonical = false,
            b'/' => {
                let rest = &bytes[at + 1..];
                if rest.starts_with(b"/")
                    || rest == b"."
                    || rest == b".."
                    || rest.starts_with(b"./")
                    || rest.starts_with(b"../")
                {
                    canonical = false;
                }
            }
            _ => {}
        }
    }
    Ok(canonical)
}

/// Decodes the escapes of characters a segment may hold as they are, and
/// upper-cases the other escapes. Escaped bytes past ASCII must spell UTF-8:
/// the path holds no other non-ASCII bytes, so each run of them is checked
/// whole.
fn decode_path(path: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut non_ascii: Vec<u8> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        let escaped = bytes.get(at..).and_then(escaped_byte);
        if escaped.is_none_or(|b| b.is_ascii()) && !non_ascii.is_empty() {
            check_encoded_text(&non_ascii)?;
            non_ascii.clear();
        }
        if byte != b'%' {
            out.push(char::from(byte));
            at += 1;
            continue;
        }
        let (Some(decoded), Some(high), Some(low)) = (
            escaped,
            bytes.get(at + 1).copied().and_then(hex_value),
            bytes.get(at + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::BadEscape);
        };
        if !decoded.is_ascii() {
            non_ascii.push(decoded);
        }
        if is_unreserved(decoded) || is_segment_delimiter(decoded) {
            out.push(char::from(decoded));
        } else if decoded < b' ' || decoded == 0x7f {
            return Err(PathError::BadCharacter);
        } else if matches!(decoded, b'/' | b'\\') && slashes == EscapedSlashes::Reject {
            return Err(PathError::EscapedSlash);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(high)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(low)]));
        }
        at += 3;
    }
    check_encoded_text(&non_ascii)?;
    Ok(out)
}

/// A run of escaped bytes past ASCII must be UTF-8 and hold no character
/// another reader turns into a delimiter.
fn check_encoded_text(bytes: &[u8]) -> Result<(), PathError> {
    let text = std::str::from_utf8(bytes).map_err(|_| PathError::NotUtf8)?;
    if text
        .chars()
        .any(|c| c.is_control() || reads_as_delimiter(c))
    {
        return Err(PathError::LookAlike);
    }
    Ok(())
}

/// Characters that NFKC normalization (some frameworks apply it to paths)
/// or Windows' best-fit code pages ("WorstFit") turn into text holding `.`,
/// `/` or `\`, or the `;`, `?` and `#` that split a path for a server that
/// normalizes before it splits.
fn reads_as_delimiter(c: char) -> bool {
    /// Every character whose NFKC form holds `.`, `/` or `\` (a scan of
    /// Unicode 14: dot leaders, `℀` a/c, `⒈` 1., `㏂` a.m., small and
    /// fullwidth stops and solidi, `🄀` 0.), then the best-fit ones:
    /// fraction and division slashes, set minus, the solidus operators, and
    /// the yen and won signs (the backslash of Japanese and Korean code
    /// pages).
    const RANGES: [(char, char); 32] = [
        // NFKC `;` (the Greek question mark), `??`, `?!`, `!?`, and the
        // small and fullwidth `;`, `?` and `#`.
        ('\u{037E}', '\u{037E}'),
        ('\u{2047}', '\u{2049}'),
        ('\u{FE14}', '\u{FE14}'),
        ('\u{FE16}', '\u{FE16}'),
        ('\u{FE54}', '\u{FE54}'),
        ('\u{FE56}', '\u{FE56}'),
        ('\u{FE5F}', '\u{FE5F}'),
        ('\u{FF03}', '\u{FF03}'),
        ('\u{00A5}', '\u{00A5}'),
        ('\u{2024}', '\u{2026}'),
        ('\u{2044}', '\u{2044}'),
        ('\u{20A9}', '\u{20A9}'),
        ('\u{2100}', '\u{2101}'),
        ('\u{2105}', '\u{2106}'),
        ('\u{2215}', '\u{2216}'),
        ('\u{2488}', '\u{249B}'),
        ('\u{29F5}', '\u{29F5}'),
        ('\u{29F8}', '\u{29F9}'),
        ('\u{33C2}', '\u{33C2}'),
        ('\u{33C7}', '\u{33C7}'),
        ('\u{33D8}', '\u{33D8}'),
        ('\u{FE19}', '\u{FE19}'),
        ('\u{FE30}', '\u{FE30}'),
        ('\u{FE52}', '\u{FE52}'),
        ('\u{FE68}', '\u{FE68}'),
        ('\u{FF0E}', '\u{FF0F}'),
        ('\u{FF1B}', '\u{FF1B}'),
        ('\u{FF1F}', '\u{FF1F}'),
        ('\u{FF3C}', '\u{FF3C}'),
        ('\u{1F100}', '\u{1F100}'),
        // Fullwidth and small forms of `%` would let a normalizer build a
        // new escape out of decoded text.
        ('\u{FE6A}', '\u{FE6A}'),
        ('\u{FF05}', '\u{FF05}'),
    ];
    RANGES.iter().any(|(low, high)| (*low..=*high).contains(&c))
}

/// Merges repeated slashes and resolves `.` and `..` segments. `path`
/// starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

/// Why a request's authority cannot be made canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// No host, or an empty one (`Host:` with nothing after it): no host
    /// rule can be decided on it.
    Empty,
    /// A character no host name or IP literal has (`%`, `@`, a space, a
    /// colon outside brackets, a port that is not a number).
    BadCharacter,
    /// An empty label: `api..github.com`, `.api.github.com`, or more than
    /// one trailing dot (`api.github.com..`), which would otherwise slip
    /// past a rule about `api.github.com`.
    EmptyLabel,
    /// An IPv4 address written other than as four decimal numbers
    /// (`2852039166`, `0xa9fea9fe`, `169.254.43518`, `010.0.0.1`):
    /// resolvers read these as the address a rule about `169.254.169.254`
    /// names, and the rule would not see it.
    IpForm,
    /// A bracketed literal that is not an IPv6 address (`[v1.x]`,
    /// `[::ffff:1.2.3]`).
    BadIpv6,
    /// An IPv6 address with a zone identifier (`[fe80::1%25eth0]`): which
    /// interface it names is the host's business, not the client's.
    Zone,
    /// An IPv6 address that carries an IPv4 address in a form other than
    /// IPv4-mapped: IPv4-compatible (`[::a9fe:a9fe]`), IPv4-translated
    /// (`[::ffff:0:a9fe:a9fe]`), NAT64 (`[64:ff9b::a9fe:a9fe]`), 6to4
    /// (`[2002:a9fe:a9fe::]`), Teredo (`[2001:0:...]`) or ISATAP. Whether
    /// it reaches the IPv4 address depends on the network, so no one
    /// spelling can stand for it.
    EmbeddedIpv4,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "the request has no host",
            Self::BadCharacter => "the host has a character that is not allowed",
            Self::EmptyLabel => "the host has an empty label",
            Self::IpForm => "the host is an IPv4 address not written as a.b.c.d",
            Self::BadIpv6 => "the host is a bracketed literal that is not an IPv6 address",
            Self::Zone => "the host is an IPv6 address with a zone identifier",
            Self::EmbeddedIpv4 => {
                "the host is an IPv6 address that embeds an IPv4 address (only ::ffff:a.b.c.d is read)"
            }
        })
    }
}

impl std::error::Error for HostError {}

/// Why a request cannot be made canonical: it gets 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCanonical {
    /// The path.
    Path(PathError),
    /// The authority.
    Host(HostError),
}

impl fmt::Display for NotCanonical {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(error) => error.fmt(f),
            Self::Host(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for NotCanonical {}

impl From<PathError> for NotCanonical {
    fn from(error: PathError) -> Self {
        Self::Path(error)
    }
}

impl From<HostError> for NotCanonical {
    fn from(error: HostError) -> Self {
        Self::Host(error)
    }
}

/// The authority decisions are made on and sent upstream: lower-cased,
/// without a trailing dot on the host or an empty port, an IP literal in
/// its one spelling (see the module doc), the port kept. Decisions then
/// ignore the port ([`strip_port`]). A host that is neither a DNS-style
/// name (letters, digits, `-`, `_`, non-empty labels) nor an IP literal is
/// refused, and so is an empty one.
pub fn canonical_authority(authority: &str) -> Result<Cow<'_, str>, HostError> {
    let host = strip_port(authority);
    let port = match &authority[host.len()..] {
        // RFC 3986 section 6.2.3: an empty port is no port.
        ":" => "",
        port => port,
    };
    let canonical = canonical_host(host)?;
    if matches!(canonical, Cow::Borrowed(_)) && port.len() == authority.len() - host.len() {
        return Ok(Cow::Borrowed(authority));
    }
    let mut out = canonical.into_owned();
    out.push_str(port);
    Ok(Cow::Owned(out))
}

/// The one spelling of a host (no port).
fn canonical_host(host: &str) -> Result<Cow<'_, str>, HostError> {
    if host.starts_with('[') {
        return canonical_ipv6(host);
    }
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if trimmed.is_empty() {
        return Err(if host.is_empty() {
            HostError::Empty
        } else {
            HostError::EmptyLabel
        });
    }
    if !trimmed
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(HostError::BadCharacter);
    }
    if trimmed.split('.').any(str::is_empty) {
        return Err(HostError::EmptyLabel);
    }
    // A name whose last label is a number (or hex) is an address to a
    // resolver: only the one spelling rules compare against is accepted.
    let last = trimmed.rsplit('.').next().unwrap_or_default();
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last
            .get(..2)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("0x"));
    if numeric && !is_dotted_quad(trimmed) {
        return Err(HostError::IpForm);
    }
    if trimmed.len() == host.len() && !host.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Borrowed(host))
    } else {
        Ok(Cow::Owned(trimmed.to_ascii_lowercase()))
    }
}

/// A bracketed IPv6 literal in RFC 5952's spelling, or, if IPv4-mapped,
/// the IPv4 address it connects to.
fn canonical_ipv6(host: &str) -> Result<Cow<'_, str>, HostError> {
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .ok_or(HostError::BadCharacter)?;
    if literal.contains('%') {
        return Err(HostError::Zone);
    }
    let address: Ipv6Addr = literal.parse().map_err(|_| HostError::BadIpv6)?;
    if let Some(v4) = address.to_ipv4_mapped() {
        return Ok(Cow::Owned(v4.to_string()));
    }
    if embeds_ipv4(&address) {
        return Err(HostError::EmbeddedIpv4);
    }
    let canonical = format!("[{address}]");
    Ok(if canonical == host {
        Cow::Borrowed(host)
    } else {
        Cow::Owned(canonical)
    })
}

/// Whether an IPv6 address (not IPv4-mapped) carries an IPv4 address that
/// some network would deliver it to.
fn embeds_ipv4(address: &Ipv6Addr) -> bool {
    let s = address.segments();
    let compatible = s[..6] == [0; 6] && !(address.is_unspecified() || address.is_loopback());
    let translated = s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0;
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1];
    let six_to_four = s[0] == 0x2002;
    let teredo = s[0] == 0x2001 && s[1] == 0;
    let isatap = s[4] & 0xfcff == 0 && s[5] == 0x5efe;
    compatible || translated || nat64 || six_to_four || teredo || isatap
}

/// Four decimal numbers from 0 to 255, without leading zeros.
fn is_dotted_quad(host: &str) -> bool {
    let octets: Vec<&str> = host.split('.').collect();
    octets.len() == 4
        && octets.iter().all(|octet| {
            octet.bytes().all(|b| b.is_ascii_digit())
                && (octet.len() == 1 || !octet.starts_with('0'))
                && octet.parse::<u8>().is_ok()
        })
}

/// `host[:port]` without the port. `[::1]:8080` and `host:8080` lose it; a
/// bare IPv6 literal is left whole.
pub fn strip_port(authority: &str) -> &str {
    split_port(authority).0
}

/// `host[:port]` as the host, written as it was (an IPv6 literal keeps its
/// brackets), and the port if there is one: the one reading of an
/// authority or a peer address, for routes, CEL and connection attributes.
pub fn split_port(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            (host, port.parse().ok())
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(target: &str) -> Result<String, PathError> {
        canonical_path(target, EscapedSlashes::Reject).map(Cow::into_owned)
    }

    #[test]
    fn a_canonical_path_is_borrowed_unchanged() {
        for target in ["/", "/repos/a/b", "/a/b/?x=1&y=%2F", "/a.b/c..d/...", "*"] {
            let result = canonical_path(target, EscapedSlashes::Reject);
            assert!(
                matches!(result, Ok(Cow::Borrowed(p)) if p == target),
                "{target}"
            );
        }
    }

    #[test]
    fn dot_segments_are_resolved_in_every_spelling() {
        for (target, want) in [
            ("/repos/../users/torvalds", "/users/torvalds"),
            ("/repos/%2e%2e/users/torvalds", "/users/torvalds"),
            ("/repos/%2E%2E/users", "/users"),
            ("/repos/.%2e/users", "/users"),
            ("/public/../admin", "/admin"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/%2e/b", "/a/b"),
            ("/a/b/../../../c?q=/../x", "/c?q=/../x"),
        ] {
            assert_eq!(path(target).as_deref(), Ok(want), "{target}");
        }
    }

    #[test]
    fn slashes_are_merged_and_unreserved_escapes_decoded() {
        for (target, want) in [
            ("//a///b", "/a/b"),
            ("/a//", "/a/"),
            ("/%61%70%69/x", "/api/x"),
            ("/a%7eb%2D%5f", "/a~b-_"),
            ("/p%3aundelete", "/p:undelete"),
            ("/%40me/%2B%21%24%26%27%28%29%2A%2C%3D", "/@me/+!$&'()*,="),
            ("/a%3fb%23c%3Bd%25e%20f", "/a%3Fb%23c%3Bd%25e%20f"),
            ("/caf%C3%A9", "/caf%C3%A9"),
        ] {
            assert_eq!(path(target).as_deref(), Ok(want), "{target}");
        }
    }

    #[test]
    fn encoded_slashes_are_refused_unless_kept() {
        for target in ["/a/..%2Fadmin", "/a%2fb", "/a%5Cb", "/a%5c..%5cb"] {
            assert_eq!(path(target), Err(PathError::EscapedSlash), "{target}");
        }
        assert_eq!(
            canonical_path("/a/..%2Fadmin", EscapedSlashes::Keep).as_deref(),
            Ok("/a/..%2Fadmin"),
            "kept encoded, '..%2Fadmin' is one segment, not a dot segment"
        );
        assert_eq!(
            canonical_path("/x/%2e%2e%2fadmin", EscapedSlashes::Keep).as_deref(),
            Ok("/x/..%2Fadmin")
        );
    }

    #[test]
    fn what_cannot_be_made_canonical_is_refused() {
        for (target, error) in [
            ("/a\\..\\admin", PathError::Backslash),
            ("/a%zz", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a%", PathError::BadEscape),
            ("/a b", PathError::BadCharacter),
            ("/a\tb", PathError::BadCharacter),
            ("/a#frag", PathError::BadCharacter),
            ("/a?b#frag", PathError::BadCharacter),
            ("/a%00b", PathError::BadCharacter),
            ("/a%0d%0ab", PathError::BadCharacter),
            ("/a%7Fb", PathError::BadCharacter),
            // Tomcat, Jetty and Spring read these as /admin and /admin/x.
            ("/public/..;/admin", PathError::Semicolon),
            ("/admin;x/x", PathError::Semicolon),
            ("/a;jsessionid=1", PathError::Semicolon),
            ("/caf\u{e9}", PathError::BadCharacter),
            ("a/b", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("http://x/a", PathError::NotAbsolute),
        ] {
            assert_eq!(path(target), Err(error), "{target:?}");
        }
    }

    #[test]
    fn canonical_paths_are_fixed_points() {
        for target in ["/a/../b//c/%2e/%41", "/x/./y/../../z/", "//", "/%7E"] {
            let once = path(target).unwrap_or_default();
            assert_eq!(path(&once).as_deref(), Ok(once.as_str()), "{target}");
        }
    }

    #[test]
    fn hosts_are_lower_cased_without_port_or_trailing_dot() {
        for (authority, host, upstream) in [
            ("api.github.com", "api.github.com", "api.github.com"),
            ("API.GitHub.com", "api.github.com", "api.github.com"),
            ("api.github.com.", "api.github.com", "api.github.com"),
            (
                "API.github.com.:8443",
                "api.github.com",
                "api.github.com:8443",
            ),
            ("[::1]:8080", "[::1]", "[::1]:8080"),
            (
                "169.254.169.254:80",
                "169.254.169.254",
                "169.254.169.254:80",
            ),
            ("0.0.0.0", "0.0.0.0", "0.0.0.0"),
            ("a1.example.com", "a1.example.com", "a1.example.com"),
            (
                "my_host-1.internal",
                "my_host-1.internal",
                "my_host-1.internal",
            ),
        ] {
            let canonical = canonical_authority(authority).unwrap();
            assert_eq!(canonical, upstream, "{authority}");
            assert_eq!(strip_port(&canonical), host, "{authority}");
        }
        assert!(matches!(
            canonical_authority("api.github.com:80"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn hosts_that_could_mean_another_are_refused() {
        for (authority, error) in [
            // Found by the `path` fuzz target: one dot was stripped, and
            // `api.github.com.` slipped past a rule about api.github.com.
            ("api.github.com..", HostError::EmptyLabel),
            ("api..github.com", HostError::EmptyLabel),
            (".api.github.com", HostError::EmptyLabel),
            ("api.github.com%2e", HostError::BadCharacter),
            ("user@api.github.com", HostError::BadCharacter),
            ("api.github.com:https", HostError::BadCharacter),
            ("::1", HostError::BadCharacter),
            ("[::1", HostError::BadCharacter),
            ("[v1.x]", HostError::BadIpv6),
            ("api github.com", HostError::BadCharacter),
            ("2852039166", HostError::IpForm),
            ("0xa9fea9fe", HostError::IpForm),
            ("169.254.43518", HostError::IpForm),
            ("0251.0376.0251.0376", HostError::IpForm),
            ("169.254.169.254.1", HostError::IpForm),
            ("256.1.1.1", HostError::IpForm),
        ] {
            assert_eq!(canonical_authority(authority), Err(error), "{authority}");
        }
    }

    #[test]
    fn an_empty_or_missing_host_is_refused() {
        for authority in ["", ":80", ":"] {
            assert_eq!(
                canonical_authority(authority),
                Err(HostError::Empty),
                "{authority:?}"
            );
        }
        assert_eq!(canonical_authority("."), Err(HostError::EmptyLabel));
        assert_eq!(canonical_authority(".:80"), Err(HostError::EmptyLabel));
    }

    #[test]
    fn an_ip_literal_has_one_spelling() {
        for (authority, want) in [
            // RFC 5952: lower case, zeros compressed, the longest run first.
            ("[::1]", "[::1]"),
            ("[0:0:0:0:0:0:0:1]:8080", "[::1]:8080"),
            ("[2001:DB8::1]", "[2001:db8::1]"),
            (
                "[2001:0db8:0000:0000:0001:0000:0000:0001]",
                "[2001:db8::1:0:0:1]",
            ),
            ("[2001:db8::1.2.3.4]", "[2001:db8::102:304]"),
            ("[::]", "[::]"),
            // IPv4-mapped: the IPv4 address a dual-stack socket connects to.
            ("[::ffff:169.254.169.254]", "169.254.169.254"),
            ("[::ffff:a9fe:a9fe]", "169.254.169.254"),
            ("[::FFFF:A9FE:A9FE]:80", "169.254.169.254:80"),
            ("[0:0:0:0:0:ffff:7f00:1]", "127.0.0.1"),
            ("api.github.com:", "api.github.com"),
            ("[::1]:", "[::1]"),
        ] {
            assert_eq!(
                canonical_authority(authority).as_deref(),
                Ok(want),
                "{authority}"
            );
        }
        assert!(matches!(
            canonical_authority("[2001:db8::1]:443"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn ipv6_forms_that_reach_an_ipv4_address_otherwise_are_refused() {
        for (authority, error) in [
            ("[::a9fe:a9fe]", HostError::EmbeddedIpv4),
            ("[::169.254.169.254]", HostError::EmbeddedIpv4),
            ("[::ffff:0:a9fe:a9fe]", HostError::EmbeddedIpv4),
            ("[64:ff9b::a9fe:a9fe]", HostError::EmbeddedIpv4),
            ("[64:ff9b::169.254.169.254]", HostError::EmbeddedIpv4),
            ("[64:ff9b:1::a9fe:a9fe]", HostError::EmbeddedIpv4),
            ("[2002:a9fe:a9fe::1]", HostError::EmbeddedIpv4),
            (
                "[2001:0:4136:e378:8000:63bf:5601:5601]",
                HostError::EmbeddedIpv4,
            ),
            ("[fe80::5efe:a9fe:a9fe]", HostError::EmbeddedIpv4),
            ("[fe80::200:5efe:a9fe:a9fe]", HostError::EmbeddedIpv4),
            ("[fe80::1%25eth0]", HostError::Zone),
            ("[fe80::1%eth0]", HostError::Zone),
            ("[::ffff:1.2.3]", HostError::BadIpv6),
            ("[::ffff:010.0.0.1]", HostError::BadIpv6),
            ("[1:2:3:4:5:6:7:8:9]", HostError::BadIpv6),
            ("[]", HostError::BadIpv6),
            ("[::1]x", HostError::BadCharacter),
            ("[\u{ff1a}\u{ff1a}1]", HostError::BadIpv6),
            // Look-alike dots and digits are not ASCII.
            ("169\u{3002}254.169.254", HostError::BadCharacter),
            ("api\u{ff0e}github.com", HostError::BadCharacter),
            ("\u{ff11}69.254.169.254", HostError::BadCharacter),
            ("api.github.com\u{200b}", HostError::BadCharacter),
        ] {
            assert_eq!(canonical_authority(authority), Err(error), "{authority}");
        }
    }

    #[test]
    fn escaped_bytes_must_spell_utf8() {
        for target in [
            "/repos/%c0%ae%c0%ae/users/x", // overlong '.'
            "/a/%C0%AF",                   // overlong '/'
            "/a/%e0%80%ae",                // three-byte overlong '.'
            "/a/%80",                      // a lone continuation byte
            "/a/%C3",                      // a sequence cut short
            "/a/%C3x",                     // ... by an ASCII character
            "/a/%C3%41",                   // ... by an escaped one
            "/a/%ED%A0%80",                // a surrogate
            "/a/%F4%90%80%80",             // past U+10FFFF
            "/a/%ff%fe",
        ] {
            assert_eq!(path(target), Err(PathError::NotUtf8), "{target}");
        }
        for (target, want) in [
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/%E2%82%AC/%F0%9F%98%80", "/%E2%82%AC/%F0%9F%98%80"),
            ("/%C3%A9%2e%C3%A9", "/%C3%A9.%C3%A9"),
        ] {
            assert_eq!(path(target).as_deref(), Ok(want), "{target}");
        }
    }

    #[test]
    fn encoded_look_alikes_of_delimiters_are_refused() {
        for target in [
            "/repos/%EF%BC%8E%EF%BC%8E/users", // fullwidth full stops
            "/repos/..%EF%BC%8Fusers",         // fullwidth solidus
            "/repos/..%EF%BC%BCusers",         // fullwidth reverse solidus
            "/repos/%E2%80%A5/users",          // two dot leader
            "/repos/..%E2%88%95users",         // division slash
            "/repos/..%C2%A5users",            // yen sign
            "/public/%EF%B8%B0/admin",         // vertical two dot leader: '..'
            "/a/%E2%84%80",                    // account of: 'a/c'
            "/a/%E2%92%88",                    // digit one full stop: '1.'
            "/a/%EF%BC%85%32%65",              // fullwidth percent sign
            "/public/%EF%BC%9B/admin",         // fullwidth semicolon
            "/a/%CD%BE",                       // Greek question mark: NFKC ;
            "/a/%C2%85",                       // NEL, a C1 control
        ] {
            assert_eq!(path(target), Err(PathError::LookAlike), "{target}");
        }
        assert_eq!(
            path("/caf%C3%A9/%E2%82%AC").as_deref(),
            Ok("/caf%C3%A9/%E2%82%AC")
        );
    }
}
