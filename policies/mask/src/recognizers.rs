//! The built-in recognizers: a pattern that finds candidates, and a check
//! that keeps only real ones (a Luhn sum, an IBAN checksum, an address that
//! parses), so that order numbers are not masked as cards.

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;

/// A built-in recognizer.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub(crate) enum Recognizer {
    /// An email address.
    Email,
    /// A phone number: international (`+44 20 7946 0958`) or North
    /// American (`(415) 555-0134`), 7 to 15 digits.
    Phone,
    /// A payment card number, 13 to 19 digits (spaces or dashes between),
    /// that passes the Luhn check.
    PaymentCard,
    /// An IBAN whose ISO 7064 checksum holds.
    Iban,
    /// An IPv4 or IPv6 address.
    IpAddress,
    /// A JSON Web Token (`eyJ...`.`eyJ...`.signature).
    Jwt,
    /// Common API-key formats: AWS access key IDs, GitHub, Slack, Stripe,
    /// Google and OpenAI keys, and PEM private keys.
    ApiKey,
}

/// The largest compiled program of one pattern; a pattern past it is
/// refused at configuration time.
pub(crate) const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// Compiles `pattern` within the size bounds every pattern has.
pub(crate) fn compile(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(PATTERN_SIZE_LIMIT)
        .dfa_size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

impl Recognizer {
    /// Its name in configurations and logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::PaymentCard => "payment_card",
            Self::Iban => "iban",
            Self::IpAddress => "ip_address",
            Self::Jwt => "jwt",
            Self::ApiKey => "api_key",
        }
    }

    /// Its pattern. ASCII word boundaries (`(?-u:\b)`) keep the matching
    /// on the fast engines.
    pub(crate) fn pattern(self) -> &'static str {
        match self {
            Self::Email => {
                r"(?-u:\b)[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?-u:\b)"
            }
            Self::Phone => {
                r"(?:\+[1-9][0-9]{0,2}[ .\-]?(?:\([0-9]{1,4}\)[ .\-]?)?[0-9]{1,4}(?:[ .\-]?[0-9]{2,4}){1,4}|\([2-9][0-9]{2}\) ?[0-9]{3}[ .\-][0-9]{4}|(?-u:\b)[2-9][0-9]{2}[ .\-][0-9]{3}[ .\-][0-9]{4})(?-u:\b)"
            }
            Self::PaymentCard => r"(?-u:\b)[0-9](?:[ \-]?[0-9]){12,18}(?-u:\b)",
            Self::Iban => r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?-u:\b)",
            Self::IpAddress => {
                r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%[0-9A-Za-z]+)?"
            }
            Self::Jwt => r"(?-u:\b)eyJ[A-Za-z0-9_\-]{2,}\.eyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*",
            Self::ApiKey => concat!(
                r"(?-u:\b)(?:AKIA|ASIA)[0-9A-Z]{16}(?-u:\b)",
                r"|(?-u:\b)gh[pousr]_[A-Za-z0-9]{36,255}(?-u:\b)",
                r"|(?-u:\b)github_pat_[A-Za-z0-9_]{22,255}(?-u:\b)",
                r"|(?-u:\b)xox[abposr]-[A-Za-z0-9\-]{10,}",
                r"|(?-u:\b)[rs]k_(?:live|test)_[A-Za-z0-9]{16,}(?-u:\b)",
                r"|(?-u:\b)AIza[0-9A-Za-z_\-]{35}",
                r"|(?-u:\b)sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}",
                r"|-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----",
            ),
        }
    }

    /// Whether a candidate the pattern found is a real one.
    pub(crate) fn confirms(self, candidate: &[u8]) -> bool {
        match self {
            Self::PaymentCard => luhn(candidate),
            Self::Iban => iban(candidate),
            Self::IpAddress => ip(candidate),
            Self::Phone => {
                let digits = candidate.iter().filter(|b| b.is_ascii_digit()).count();
                (7..=15).contains(&digits)
            }
            Self::Email | Self::Jwt | Self::ApiKey => true,
        }
    }
}

/// The Luhn check over the digits of `candidate`, 13 to 19 of them.
fn luhn(candidate: &[u8]) -> bool {
    let digits: Vec<u32> = candidate
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
        .collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2, d * 2) {
            (1, doubled) if doubled > 9 => doubled - 9,
            (1, doubled) => doubled,
            _ => d,
        })
        .sum();
    sum % 10 == 0
}

/// The ISO 7064 mod 97-10 check of an IBAN (spaces ignored).
fn iban(candidate: &[u8]) -> bool {
    let compact: Vec<u8> = candidate.iter().copied().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for &b in tail.iter().chain(head) {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// Whether `candidate` is an IP address (an IPv6 one may carry a zone).
fn ip(candidate: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(candidate) else {
        return false;
    };
    let address = text.split_once('%').map_or(text, |(address, _)| address);
    address.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finds(recognizer: Recognizer, text: &str) -> Vec<String> {
        let regex = compile(recognizer.pattern()).unwrap();
        regex
            .find_iter(text.as_bytes())
            .filter(|m| recognizer.confirms(m.as_bytes()))
            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
            .collect()
    }

    #[test]
    fn each_recognizer_finds_real_ones_and_only_those() {
        use Recognizer::*;
        let cases: &[(Recognizer, &str, &[&str])] = &[
            (
                Email,
                "mail jane.doe+x@mail.example.co.uk now; not a@b",
                &["jane.doe+x@mail.example.co.uk"],
            ),
            (
                Phone,
                "call +44 20 7946 0958 or (415) 555-0134; order 12",
                &["+44 20 7946 0958", "(415) 555-0134"],
            ),
            (
                PaymentCard,
                "card 4111 1111 1111 1111, order 4111111111111112",
                &["4111 1111 1111 1111"],
            ),
            (
                Iban,
                "pay GB82 WEST 1234 5698 7654 32 not GB82 WEST 1234 5698 7654 33",
                &["GB82 WEST 1234 5698 7654 32"],
            ),
            (
                IpAddress,
                "from 192.168.1.20 and 2001:db8::1 not 999.1.1.1 or 10:30",
                &["192.168.1.20", "2001:db8::1"],
            ),
            (
                Jwt,
                "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc_DEF-1 ok",
                &["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc_DEF-1"],
            ),
            (
                ApiKey,
                "k=AKIAIOSFODNN7EXAMPLE t=ghp_0123456789abcdefghijklmnopqrstuvwxyz",
                &[
                    "AKIAIOSFODNN7EXAMPLE",
                    "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
                ],
            ),
        ];
        for (recognizer, text, expected) in cases {
            assert_eq!(&finds(*recognizer, text), expected, "{recognizer:?}");
        }
    }
}
