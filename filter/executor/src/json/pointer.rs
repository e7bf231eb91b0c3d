//! JSON Pointers (RFC 6901) with wildcards, for policies that edit or scan
//! parts of a body: `/user/email`, `/messages/*/content` (`*`: every
//! element of an array or member of an object), `/**/password` (`**`: any
//! depth, zero levels included). `~0` and `~1` escape `~` and `/`. A
//! segment that is exactly `*` or `**` is always a wildcard, so a member
//! named `*` cannot be addressed by itself.

use std::fmt;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// A member name, or an array index when it is a number.
    Key(String),
    /// Every element or member, one level.
    Any,
    /// Any number of levels, zero included.
    AnyDepth,
}

/// A parsed pointer, maybe with wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    segments: Vec<Segment>,
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Pointer {
    /// Parses `text`: empty (the whole document) or `/`-separated segments.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Self {
                text: String::new(),
                segments: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "{text:?} is not a JSON Pointer: it must start with `/`"
            ));
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            segments.push(match raw {
                "*" => Segment::Any,
                "**" => Segment::AnyDepth,
                _ => {
                    if raw.contains('~') && !valid_escapes(raw) {
                        return Err(format!(
                            "{text:?}: `~` must be followed by 0 or 1 (RFC 6901)"
                        ));
                    }
                    Segment::Key(raw.replace("~1", "/").replace("~0", "~"))
                }
            });
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    pub(crate) fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether it has a wildcard.
    pub fn has_wildcard(&self) -> bool {
        self.segments.iter().any(|s| !matches!(s, Segment::Key(_)))
    }

    /// Whether it names the whole document.
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// Whether the concrete path `path` (member names and indexes) is one
    /// this pattern names.
    pub fn matches(&self, path: &[PathStep<'_>]) -> bool {
        matches_from(&self.segments, path)
    }
}

/// One step of a concrete path into a document.
#[derive(Debug, Clone, Copy)]
pub enum PathStep<'a> {
    /// A member of an object.
    Key(&'a str),
    /// An element of an array.
    Index(usize),
}

fn valid_escapes(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'~')
        .all(|(i, _)| matches!(bytes.get(i + 1), Some(b'0' | b'1')))
}

fn step_is(segment: &Segment, step: &PathStep<'_>) -> bool {
    match (segment, step) {
        (Segment::Any, _) => true,
        (Segment::Key(key), PathStep::Key(name)) => key == name,
        (Segment::Key(key), PathStep::Index(index)) => key.parse::<usize>().ok() == Some(*index),
        (Segment::AnyDepth, _) => false,
    }
}

fn matches_from(segments: &[Segment], path: &[PathStep<'_>]) -> bool {
    match segments.split_first() {
        None => path.is_empty(),
        Some((Segment::AnyDepth, rest)) => {
            (0..=path.len()).any(|skip| matches_from(rest, path.get(skip..).unwrap_or(&[])))
        }
        Some((segment, rest)) => match path.split_first() {
            Some((step, path)) => step_is(segment, step) && matches_from(rest, path),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_level_or_any_depth() {
        let path = [
            PathStep::Key("n"),
            PathStep::Key("deep"),
            PathStep::Key("password"),
        ];
        assert!(Pointer::parse("/**/password").unwrap().matches(&path));
        assert!(!Pointer::parse("/n/password").unwrap().matches(&path));
        assert!(Pointer::parse("/n/*/password").unwrap().matches(&path));
        assert!(Pointer::parse("/n/deep/password").unwrap().matches(&path));
        let indexed = [PathStep::Key("items"), PathStep::Index(2)];
        assert!(Pointer::parse("/items/2").unwrap().matches(&indexed));
        assert!(!Pointer::parse("/items/1").unwrap().matches(&indexed));
    }

    #[test]
    fn escapes_are_rfc_6901() {
        let path = [PathStep::Key("c/d"), PathStep::Key("~x")];
        assert!(Pointer::parse("/c~1d/~0x").unwrap().matches(&path));
        assert!(Pointer::parse("a").is_err());
        assert!(Pointer::parse("/a~2").is_err());
        assert!(Pointer::parse("").unwrap().is_root());
        assert!(Pointer::parse("/a/*").unwrap().has_wildcard());
    }
}
