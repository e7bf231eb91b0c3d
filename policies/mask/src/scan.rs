//! Finding and masking: over text, over the strings of a JSON document,
//! and over a whole body (which of the two it is).

use std::collections::BTreeMap;

use policy_executor::json::pointer::{PathStep, Pointer};
use regex::bytes::Regex;
use serde_json::Value;

use crate::recognizers::Recognizer;

/// What a rule does to what it finds.
#[derive(Debug, Clone)]
pub(crate) enum Act {
    /// Replace it with this text.
    Redact(String),
    /// Replace all but the last N characters with `*`.
    Partial(usize),
    /// Replace it with `[<rule>:<16 hex digits of HMAC-SHA-256>]`.
    Hash,
    /// Refuse the message.
    Deny,
}

/// One compiled rule.
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) regex: Regex,
    pub(crate) recognizer: Option<Recognizer>,
    pub(crate) act: Act,
}

/// How often each rule fired: what the decision log records (never what
/// it found).
pub(crate) type Findings = BTreeMap<String, u64>;

/// A message holds what a `deny` rule forbids, or cannot be read as it
/// must be.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The rule that denied.
    Denied(String),
    /// The body looks like JSON (or must be: `fields` is set) but is not
    /// JSON the strict way.
    NotJson(String),
}

/// One match: where, and which rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hit {
    pub(crate) start: usize,
    pub(crate) end: usize,
    rule: usize,
}

/// The rules and where they apply.
pub(crate) struct Masker {
    pub(crate) rules: Vec<Rule>,
    /// JSON members to scan; empty: all of the body.
    pub(crate) fields: Vec<Pointer>,
    pub(crate) hash_key: Vec<u8>,
}

impl Masker {
    /// Every match in `text`, in order, overlaps resolved for the earliest
    /// (and then the longest).
    pub(crate) fn find(&self, text: &[u8]) -> Vec<Hit> {
        let mut hits = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            for found in rule.regex.find_iter(text) {
                if rule.recognizer.is_none_or(|r| r.confirms(found.as_bytes())) {
                    hits.push(Hit {
                        start: found.start(),
                        end: found.end(),
                        rule: index,
                    });
                }
            }
        }
        hits.sort_by_key(|h| (h.start, std::cmp::Reverse(h.end)));
        let mut kept: Vec<Hit> = Vec::with_capacity(hits.len());
        for hit in hits {
            if kept.last().is_none_or(|last| hit.start >= last.end) {
                kept.push(hit);
            }
        }
        kept
    }

    /// `text` with `hits` (found in it, all inside it) masked.
    pub(crate) fn apply(
        &self,
        text: &[u8],
        hits: &[Hit],
        findings: &mut Findings,
    ) -> Result<Vec<u8>, Fault> {
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for hit in hits {
            let Some(rule) = self.rules.get(hit.rule) else {
                continue;
            };
            let found = text.get(hit.start..hit.end).unwrap_or_default();
            *findings.entry(rule.name.clone()).or_default() += 1;
            out.extend_from_slice(text.get(at..hit.start).unwrap_or_default());
            match &rule.act {
                Act::Deny => return Err(Fault::Denied(rule.name.clone())),
                Act::Redact(replacement) => out.extend_from_slice(replacement.as_bytes()),
                Act::Partial(keep) => out.extend_from_slice(partial(found, *keep).as_bytes()),
                Act::Hash => {
                    let mac = hmac_sha256::HMAC::mac(found, &self.hash_key);
                    let hex: String = mac.iter().take(8).map(|b| format!("{b:02x}")).collect();
                    out.extend_from_slice(format!("[{}:{hex}]", rule.name).as_bytes());
                }
            }
            at = hit.end;
        }
        out.extend_from_slice(text.get(at..).unwrap_or_default());
        Ok(out)
    }

    /// `text` masked; `None` when nothing was found.
    pub(crate) fn mask_text(
        &self,
        text: &[u8],
        findings: &mut Findings,
    ) -> Result<Option<Vec<u8>>, Fault> {
        let hits = self.find(text);
        if hits.is_empty() {
            return Ok(None);
        }
        self.apply(text, &hits, findings).map(Some)
    }

    /// A whole body (or one SSE event's data): as JSON when `fields` asks
    /// for members, when its `content-type` says JSON, or when it looks
    /// like JSON; as text otherwise. JSON is masked in its decoded strings,
    /// so `\u0040` hides no address. `None` when nothing changed.
    pub(crate) fn mask_unit(
        &self,
        body: &[u8],
        declared_json: bool,
        findings: &mut Findings,
    ) -> Result<Option<Vec<u8>>, Fault> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        let looks_like_json = matches!(first, Some(b'{' | b'[' | b'"'));
        if first.is_none() {
            return Ok(None);
        }
        if !(looks_like_json || declared_json || !self.fields.is_empty()) {
            return self.mask_text(body, findings);
        }
        let mut document = match policy_executor::json::parse(body) {
            Ok(document) => document,
            // Text that merely starts like JSON (`[DONE]`) is masked as
            // text, unless it must be JSON or holds escapes a JSON reader
            // would decode into what the patterns look for.
            Err(e) if declared_json || !self.fields.is_empty() || contains(body, b"\\u") => {
                return Err(Fault::NotJson(e.to_string()))
            }
            Err(_) => return self.mask_text(body, findings),
        };
        let mut path = Vec::new();
        if !self.walk(&mut document, &mut path, findings)? {
            return Ok(None);
        }
        serde_json::to_vec(&document)
            .map(Some)
            .map_err(|e| Fault::NotJson(e.to_string()))
    }

    /// Masks the strings (and numbers) in scope below `value`; whether any
    /// changed.
    fn walk(
        &self,
        value: &mut Value,
        path: &mut Vec<PathKey>,
        findings: &mut Findings,
    ) -> Result<bool, Fault> {
        match value {
            Value::Object(map) => {
                let mut changed = false;
                for (key, child) in map.iter_mut() {
                    path.push(PathKey::Key(key.clone()));
                    changed |= self.walk(child, path, findings)?;
                    path.pop();
                }
                Ok(changed)
            }
            Value::Array(items) => {
                let mut changed = false;
                for (index, child) in items.iter_mut().enumerate() {
                    path.push(PathKey::Index(index));
                    changed |= self.walk(child, path, findings)?;
                    path.pop();
                }
                Ok(changed)
            }
            Value::String(text) if self.in_scope(path) => {
                match self.mask_text(text.as_bytes(), findings)? {
                    Some(masked) => {
                        *text = String::from_utf8_lossy(&masked).into_owned();
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
            // A card number sent as a JSON number is still a card number.
            Value::Number(number) if self.in_scope(path) => {
                match self.mask_text(number.to_string().as_bytes(), findings)? {
                    Some(masked) => {
                        *value = Value::String(String::from_utf8_lossy(&masked).into_owned());
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
            _ => Ok(false),
        }
    }

    fn in_scope(&self, path: &[PathKey]) -> bool {
        if self.fields.is_empty() {
            return true;
        }
        let steps: Vec<PathStep<'_>> = path
            .iter()
            .map(|k| match k {
                PathKey::Key(key) => PathStep::Key(key),
                PathKey::Index(index) => PathStep::Index(*index),
            })
            .collect();
        self.fields.iter().any(|f| f.matches(&steps))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One step of the path to a value being scanned.
enum PathKey {
    Key(String),
    Index(usize),
}

/// `found` with all but its last `keep` characters as `*`.
fn partial(found: &[u8], keep: usize) -> String {
    let text = String::from_utf8_lossy(found);
    let count = text.chars().count();
    text.chars()
        .enumerate()
        .map(|(i, c)| if i + keep < count { '*' } else { c })
        .collect()
}
