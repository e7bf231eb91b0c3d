//! JSON Pointers (RFC 6901) with wildcards, for policies that edit or scan
//! parts of a body: `/user/email`, `/messages/*/content` (`*`: every
//! element of an array or member of an object), `/**/password` (`**`: any
//! depth, zero levels included). `~0` and `~1` escape `~` and `/`. A
//! segment that is exactly `*` or `**` is always a wildcard, so a member
//! named `*` cannot be addressed by itself.

use std::fmt;

use serde_json::Value;

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

    /// Calls `edit` on every value the pattern names that exists.
    pub fn for_each_mut(&self, value: &mut Value, edit: &mut dyn FnMut(&mut Value)) {
        each_mut(&self.segments, value, edit);
    }

    /// Removes every value the pattern names; returns how many.
    pub fn remove(&self, value: &mut Value) -> usize {
        let Some((last, parents)) = self.segments.split_last() else {
            return 0;
        };
        let mut removed = 0;
        each_mut(parents, value, &mut |parent| {
            removed += remove_child(parent, last);
        });
        removed
    }

    /// Takes the value at this (wildcard-free) pointer out of `value`.
    pub fn take(&self, value: &mut Value) -> Option<Value> {
        let (last, parents) = self.segments.split_last()?;
        let parent = self.get_mut_at(parents, value)?;
        match (parent, last) {
            (Value::Object(map), Segment::Key(key)) => map.remove(key),
            (Value::Array(items), Segment::Key(key)) => {
                let index = key.parse::<usize>().ok().filter(|i| *i < items.len())?;
                Some(items.remove(index))
            }
            _ => None,
        }
    }

    /// Sets the value at this (wildcard-free) pointer, creating missing
    /// objects on the way; `-` as the last segment appends to an array.
    /// `Err` when the way is blocked (a string where an object must be, an
    /// index past the end).
    pub fn set(&self, value: &mut Value, new: Value) -> Result<(), String> {
        let Some((last, parents)) = self.segments.split_last() else {
            *value = new;
            return Ok(());
        };
        let mut at = value;
        for segment in parents {
            let Segment::Key(key) = segment else {
                return Err(format!("{self}: a wildcard cannot be set"));
            };
            at = match at {
                Value::Object(map) => map
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Default::default())),
                Value::Array(items) => key
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| items.get_mut(i))
                    .ok_or_else(|| format!("{self}: no element {key}"))?,
                _ => {
                    return Err(format!(
                        "{self}: {key:?} is below a value that is not a container"
                    ))
                }
            };
        }
        let Segment::Key(key) = last else {
            return Err(format!("{self}: a wildcard cannot be set"));
        };
        match at {
            Value::Object(map) => {
                map.insert(key.clone(), new);
                Ok(())
            }
            Value::Array(items) if key == "-" => {
                items.push(new);
                Ok(())
            }
            Value::Array(items) => match key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(slot) => {
                    *slot = new;
                    Ok(())
                }
                None => Err(format!("{self}: no element {key}")),
            },
            _ => Err(format!("{self}: the parent is not a container")),
        }
    }

    fn get_mut_at<'v>(&self, segments: &[Segment], value: &'v mut Value) -> Option<&'v mut Value> {
        let mut at = value;
        for segment in segments {
            let Segment::Key(key) = segment else {
                return None;
            };
            at = match at {
                Value::Object(map) => map.get_mut(key)?,
                Value::Array(items) => items.get_mut(key.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(at)
    }

    /// The last segment as a member name, for renames.
    pub fn last_key(&self) -> Option<&str> {
        match self.segments.last()? {
            Segment::Key(key) => Some(key),
            _ => None,
        }
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

fn each_mut(segments: &[Segment], value: &mut Value, edit: &mut dyn FnMut(&mut Value)) {
    let Some((segment, rest)) = segments.split_first() else {
        edit(value);
        return;
    };
    match segment {
        Segment::Key(key) => {
            let child = match value {
                Value::Object(map) => map.get_mut(key),
                Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                _ => None,
            };
            if let Some(child) = child {
                each_mut(rest, child, edit);
            }
        }
        Segment::Any => children_mut(value, &mut |child| each_mut(rest, child, edit)),
        Segment::AnyDepth => {
            each_mut(rest, value, edit);
            children_mut(value, &mut |child| each_mut(segments, child, edit));
        }
    }
}

fn children_mut(value: &mut Value, each: &mut dyn FnMut(&mut Value)) {
    match value {
        Value::Object(map) => map.values_mut().for_each(each),
        Value::Array(items) => items.iter_mut().for_each(each),
        _ => {}
    }
}

fn remove_child(parent: &mut Value, last: &Segment) -> usize {
    match (parent, last) {
        (Value::Object(map), Segment::Key(key)) => usize::from(map.remove(key).is_some()),
        (Value::Array(items), Segment::Key(key)) => {
            match key.parse::<usize>().ok().filter(|i| *i < items.len()) {
                Some(index) => {
                    items.remove(index);
                    1
                }
                None => 0,
            }
        }
        (Value::Object(map), Segment::Any) => {
            let count = map.len();
            map.clear();
            count
        }
        (Value::Array(items), Segment::Any) => {
            let count = items.len();
            items.clear();
            count
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wildcards_reach_every_element_and_any_depth() {
        let mut doc = json!({"messages": [{"name": "a", "text": "x"}, {"name": "b"}], "n": {"password": 1, "deep": {"password": 2}}});
        assert_eq!(
            Pointer::parse("/messages/*/name").unwrap().remove(&mut doc),
            2
        );
        assert_eq!(doc["messages"], json!([{"text": "x"}, {}]));
        let mut seen = 0;
        Pointer::parse("/**/password")
            .unwrap()
            .for_each_mut(&mut doc, &mut |v| {
                seen += 1;
                *v = json!("***");
            });
        assert_eq!(seen, 2);
        assert_eq!(doc["n"]["deep"]["password"], "***");
        let path = [
            PathStep::Key("n"),
            PathStep::Key("deep"),
            PathStep::Key("password"),
        ];
        assert!(Pointer::parse("/**/password").unwrap().matches(&path));
        assert!(!Pointer::parse("/n/password").unwrap().matches(&path));
        assert!(Pointer::parse("/n/*/password").unwrap().matches(&path));
    }

    #[test]
    fn set_creates_objects_and_escapes_are_rfc_6901() {
        let mut doc = json!({"a": [1]});
        Pointer::parse("/b/c~1d")
            .unwrap()
            .set(&mut doc, json!(1))
            .unwrap();
        Pointer::parse("/a/-")
            .unwrap()
            .set(&mut doc, json!(2))
            .unwrap();
        assert_eq!(doc, json!({"a": [1, 2], "b": {"c/d": 1}}));
        assert!(Pointer::parse("/a/5/x")
            .unwrap()
            .set(&mut doc, json!(0))
            .is_err());
        assert!(Pointer::parse("a").is_err());
        assert!(Pointer::parse("/a~2").is_err());
        assert_eq!(
            Pointer::parse("/b").unwrap().take(&mut doc),
            Some(json!({"c/d": 1}))
        );
    }
}
