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

impl Hit {
    /// The same hit, in a text that starts `by` bytes later.
    pub(crate) fn shifted(self, by: usize) -> Self {
        Self {
            start: self.start - by,
            end: self.end - by,
            rule: self.rule,
        }
    }
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
        self.mask_body(body, declared_json, false, findings)
    }

    /// [`Masker::mask_unit`] over a body known to be strict JSON
    /// (`checked`) or not.
    pub(crate) fn mask_body(
        &self,
        body: &[u8],
        declared_json: bool,
        checked: bool,
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
        // Text that merely starts like JSON (`[DONE]`) is masked as text,
        // unless it must be JSON or holds escapes a JSON reader would
        // decode into what the patterns look for.
        let not_json = |e: policy_executor::json::JsonError, findings: &mut Findings| {
            if declared_json || !self.fields.is_empty() || has_unicode_escape(body) {
                Err(Fault::NotJson(e.to_string()))
            } else {
                self.mask_text(body, findings)
            }
        };
        if crate::raw_json::applies(self, body) {
            if !checked {
                if let Err(e) = policy_executor::json::check(body) {
                    return not_json(e, findings);
                }
            }
            match crate::raw_json::mask(self, body, findings)? {
                crate::raw_json::Raw::Unchanged => return Ok(None),
                crate::raw_json::Raw::Masked(masked) => return Ok(Some(masked)),
                crate::raw_json::Raw::Straddles => {}
            }
        }
        let mut document = match policy_executor::json::parse(body) {
            Ok(document) => document,
            Err(e) => return not_json(e, findings),
        };
        if !self.mask_json(&mut document, findings)? {
            return Ok(None);
        }
        serde_json::to_vec(&document)
            .map(Some)
            .map_err(|e| Fault::NotJson(e.to_string()))
    }

    /// Masks the strings (and numbers) in scope in `document`; whether any
    /// changed. Every regular expression runs once over all of them, joined
    /// with NUL bytes, rather than once per value (a document has
    /// thousands): a hit inside one value is applied to it, and the rare
    /// hit across a NUL (a custom pattern that matches one) makes the
    /// values it touches be scanned alone.
    fn mask_json(&self, document: &mut Value, findings: &mut Findings) -> Result<bool, Fault> {
        let mut scan = Joined::default();
        let mut path = Vec::new();
        self.collect(document, &mut path, &mut scan);
        if scan.segments.is_empty() {
            return Ok(false);
        }
        let hits = self.find(&scan.text);
        if hits.is_empty() {
            return Ok(false);
        }
        // Per segment: the hits inside it, relative to its start, or a
        // rescan of it alone.
        let mut found: Vec<Option<Found>> = Vec::new();
        found.resize_with(scan.segments.len(), || None);
        let mut at = 0;
        for hit in hits {
            while scan
                .segments
                .get(at)
                .is_some_and(|(_, end)| *end <= hit.start)
            {
                at += 1;
            }
            let Some(&(start, end)) = scan.segments.get(at) else {
                break;
            };
            if hit.start >= start && hit.end <= end {
                let relative = Hit {
                    start: hit.start - start,
                    end: hit.end - start,
                    rule: hit.rule,
                };
                match found.get_mut(at) {
                    Some(Some(Found::Hits(list))) => list.push(relative),
                    Some(slot @ None) => *slot = Some(Found::Hits(vec![relative])),
                    _ => {}
                }
            } else {
                for (i, (start, _)) in scan.segments.iter().enumerate().skip(at) {
                    if *start >= hit.end {
                        break;
                    }
                    if let Some(slot) = found.get_mut(i) {
                        *slot = Some(Found::Rescan);
                    }
                }
            }
        }
        let mut visit = 0;
        self.rewrite(document, &scan, &found, &mut visit, findings)
    }

    /// Joins the text of the scalars in scope, in document order.
    fn collect<'v>(&self, value: &'v Value, path: &mut Vec<PathStep<'v>>, scan: &mut Joined) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    path.push(PathStep::Key(key));
                    self.collect(child, path, scan);
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (index, child) in items.iter().enumerate() {
                    path.push(PathStep::Index(index));
                    self.collect(child, path, scan);
                    path.pop();
                }
            }
            Value::String(_) | Value::Number(_) => {
                let segment = self.in_scope(path).then(|| {
                    if !scan.text.is_empty() {
                        scan.text.push(0);
                    }
                    let start = scan.text.len();
                    match value {
                        Value::String(text) => scan.text.extend_from_slice(text.as_bytes()),
                        other => scan.text.extend_from_slice(other.to_string().as_bytes()),
                    }
                    scan.segments.push((start, scan.text.len()));
                    scan.segments.len() - 1
                });
                scan.visits.push(segment);
            }
            _ => {}
        }
    }

    /// Applies what was found, walking the scalars in the order `collect`
    /// did; whether any changed.
    fn rewrite(
        &self,
        value: &mut Value,
        scan: &Joined,
        found: &[Option<Found>],
        visit: &mut usize,
        findings: &mut Findings,
    ) -> Result<bool, Fault> {
        match value {
            Value::Object(map) => {
                let mut changed = false;
                for child in map.values_mut() {
                    changed |= self.rewrite(child, scan, found, visit, findings)?;
                }
                Ok(changed)
            }
            Value::Array(items) => {
                let mut changed = false;
                for child in items.iter_mut() {
                    changed |= self.rewrite(child, scan, found, visit, findings)?;
                }
                Ok(changed)
            }
            Value::String(_) | Value::Number(_) => {
                let segment = scan.visits.get(*visit).copied().flatten();
                *visit += 1;
                let Some(segment) = segment else {
                    return Ok(false);
                };
                let Some(&(start, end)) = scan.segments.get(segment) else {
                    return Ok(false);
                };
                let text = scan.text.get(start..end).unwrap_or_default();
                let masked = match found.get(segment) {
                    Some(Some(Found::Hits(hits))) => Some(self.apply(text, hits, findings)?),
                    Some(Some(Found::Rescan)) => self.mask_text(text, findings)?,
                    _ => None,
                };
                match masked {
                    // A card number sent as a JSON number is still a card
                    // number: masked, it becomes a string.
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

    fn in_scope(&self, path: &[PathStep<'_>]) -> bool {
        self.fields.is_empty() || self.fields.iter().any(|f| f.matches(path))
    }
}

/// The text of the scalars in scope, joined with NUL bytes.
#[derive(Default)]
struct Joined {
    text: Vec<u8>,
    /// Where each scalar in scope is in `text`.
    segments: Vec<(usize, usize)>,
    /// Per scalar (string or number) in document order, its segment when
    /// in scope.
    visits: Vec<Option<usize>>,
}

/// What the joined scan found in one scalar.
enum Found {
    /// Hits inside it, relative to its start.
    Hits(Vec<Hit>),
    /// A hit crossed its edge: scan it alone.
    Rescan,
}

/// Whether a JSON text holds a `\u` escape, which can spell what the
/// patterns look for in other bytes.
pub(crate) fn has_unicode_escape(text: &[u8]) -> bool {
    text.windows(2).any(|w| w == b"\\u")
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
