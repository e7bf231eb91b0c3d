//! Masking JSON in place, without building the document: the fast path
//! for the common body that has no `\u` escape and rules that are all
//! built-in recognizers.
//!
//! There, what a pattern sees in the raw text of a string is what it would
//! see in the decoded string: the escapes left (`\"`, `\\`, `\/`, `\n` and
//! the like) decode to characters no built-in pattern matches. So the
//! patterns run once over the raw body, and each hit that lies inside a
//! string value or a number is masked there; member names are left alone,
//! as the document path leaves them. A hit that straddles a token's edge
//! sends the body down the document path instead.

use crate::scan::{Fault, Findings, Hit, Masker};

/// A scalar of the document: where its text is, and whether it is a
/// number (masked, it becomes a string).
#[derive(Debug, Clone, Copy)]
struct Token {
    start: usize,
    end: usize,
    number: bool,
}

/// Whether the fast path reads `body` as the document path would.
pub(crate) fn applies(masker: &Masker, body: &[u8]) -> bool {
    masker.fields.is_empty()
        && masker.rules.iter().all(|r| r.recognizer.is_some())
        && !crate::scan::has_unicode_escape(body)
}

/// What the fast path made of a body.
pub(crate) enum Raw {
    /// Nothing to mask.
    Unchanged,
    /// The masked body.
    Masked(Vec<u8>),
    /// A hit straddles a token's edge: the document path decides.
    Straddles,
}

/// Masks `body` (strict JSON, already checked) in place.
pub(crate) fn mask(masker: &Masker, body: &[u8], findings: &mut Findings) -> Result<Raw, Fault> {
    let hits = masker.find(body);
    if hits.is_empty() {
        return Ok(Raw::Unchanged);
    }
    let tokens = scalars(body);
    // Per token with hits: the token and its hits, relative to its start.
    let mut grouped: Vec<(Token, Vec<Hit>)> = Vec::new();
    let mut at = 0;
    for hit in hits {
        while tokens.get(at).is_some_and(|t| t.end <= hit.start) {
            at += 1;
        }
        let Some(&token) = tokens.get(at) else {
            // In a member name or between tokens: never a value.
            if in_member_name(body, hit.start) {
                continue;
            }
            return Ok(Raw::Straddles);
        };
        if hit.start >= token.start && hit.end <= token.end {
            let relative = hit.shifted(token.start);
            match grouped.last_mut() {
                Some((last, list)) if last.start == token.start => list.push(relative),
                _ => grouped.push((token, vec![relative])),
            }
        } else if hit.end <= token.start && in_member_name(body, hit.start) {
            continue;
        } else {
            return Ok(Raw::Straddles);
        }
    }
    if grouped.is_empty() {
        return Ok(Raw::Unchanged);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut copied = 0;
    for (token, hits) in grouped {
        let text = body.get(token.start..token.end).unwrap_or_default();
        let masked = masker.apply(text, &hits, findings)?;
        out.extend_from_slice(body.get(copied..token.start).unwrap_or_default());
        if token.number {
            out.push(b'"');
            out.extend_from_slice(&masked);
            out.push(b'"');
        } else {
            out.extend_from_slice(&masked);
        }
        copied = token.end;
    }
    out.extend_from_slice(body.get(copied..).unwrap_or_default());
    Ok(Raw::Masked(out))
}

/// The string values (their contents, between the quotes) and numbers of
/// a strict JSON text, in order; member names are not among them.
fn scalars(body: &[u8]) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        match b {
            b'"' => {
                let start = i + 1;
                let end = string_end(body, start);
                if !followed_by_colon(body, end + 1) {
                    tokens.push(Token {
                        start,
                        end,
                        number: false,
                    });
                }
                i = end + 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while body
                    .get(i)
                    .is_some_and(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                {
                    i += 1;
                }
                tokens.push(Token {
                    start,
                    end: i,
                    number: true,
                });
            }
            _ => i += 1,
        }
    }
    tokens
}

/// Where the string whose contents start at `start` ends (its closing
/// quote).
fn string_end(body: &[u8], start: usize) -> usize {
    let mut i = start;
    while let Some(&b) = body.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    body.len()
}

fn followed_by_colon(body: &[u8], from: usize) -> bool {
    body.get(from..)
        .and_then(|rest| rest.iter().find(|b| !b.is_ascii_whitespace()))
        == Some(&b':')
}

/// Whether `at` is inside a member name: the string around it is followed
/// by a colon.
fn in_member_name(body: &[u8], at: usize) -> bool {
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        if i > at {
            return false;
        }
        if b == b'"' {
            let end = string_end(body, i + 1);
            if at > i && at < end {
                return followed_by_colon(body, end + 1);
            }
            i = end + 1;
        } else {
            i += 1;
        }
    }
    false
}
