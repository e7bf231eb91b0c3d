//! A JSON document edited in place: what `json-transform` works on.
//!
//! Building a whole `serde_json::Value` costs one allocation per member
//! and string, most of a 100 KB transformation, for edits that touch a few
//! members. So the document starts as the body's text, checked the strict
//! way ([`super::check`]), and only the containers an edit goes through
//! are opened, one level at a time; everything else is written back as it
//! came. Member order is kept, and so is the spelling of what no edit
//! touched. Pointers and their wildcards are [`Pointer`]'s.

use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::pointer::{Pointer, Segment};
use super::JsonError;

/// One value of the document.
#[derive(Debug)]
enum Node<'a> {
    /// Untouched: the text as it came (already checked).
    Raw(&'a RawValue),
    /// An object an edit went through, in its order (names borrowed from
    /// the text when they have no escapes).
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
    /// An array an edit went through.
    Array(Vec<Node<'a>>),
    /// A value an edit wrote.
    Value(Value),
}

/// A document being edited.
#[derive(Debug)]
pub struct Document<'a> {
    root: Node<'a>,
}

/// Why a container could not be opened: a bug if it happens, since the
/// whole text was checked first.
const UNREADABLE: &str = "a checked JSON text could not be read again";

impl<'a> Document<'a> {
    /// Reads `bytes` the strict way; nothing is built yet.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, JsonError> {
        super::check(bytes)?;
        let text = std::str::from_utf8(bytes).map_err(|e| {
            JsonError(serde_json::Error::io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e,
            )))
        })?;
        let raw: &RawValue = serde_json::from_str(text).map_err(JsonError)?;
        Ok(Self {
            root: Node::Raw(raw),
        })
    }

    /// A document made of `value`.
    pub fn from_value(value: Value) -> Self {
        Self {
            root: Node::Value(value),
        }
    }

    /// Removes every member or element `pointer` names; how many.
    pub fn remove(&mut self, pointer: &Pointer) -> Result<usize, String> {
        let Some((last, parents)) = pointer.segments().split_last() else {
            return Ok(0);
        };
        let mut removed = 0;
        each_mut(&mut self.root, parents, &mut |parent| {
            removed += remove_child(parent, last)?;
            Ok(())
        })?;
        Ok(removed)
    }

    /// Gives every member `pointer` names the name `to`, in place.
    pub fn rename(&mut self, pointer: &Pointer, to: &str) -> Result<(), String> {
        let Some((Segment::Key(from), parents)) = pointer.segments().split_last() else {
            return Ok(());
        };
        each_mut(&mut self.root, parents, &mut |parent| {
            open(parent)?;
            if let Node::Object(members) = parent {
                // The new name replaces a member already called so.
                if members.iter().any(|(key, _)| key == from) {
                    members.retain(|(key, _)| key != to);
                }
                for (key, _) in members.iter_mut().filter(|(key, _)| key == from) {
                    *key = Cow::Owned(to.to_owned());
                }
            }
            Ok(())
        })
    }

    /// Moves the value at `from` to `to` (neither with wildcards).
    pub fn move_value(&mut self, from: &Pointer, to: &Pointer) -> Result<(), String> {
        let node = self
            .take(from)?
            .ok_or_else(|| format!("nothing at {from}"))?;
        self.put(to, node)
    }

    /// Sets the value at `pointer` (no wildcards), creating missing objects
    /// on the way; `-` as the last segment appends to an array.
    pub fn set(&mut self, pointer: &Pointer, value: Value) -> Result<(), String> {
        self.put(pointer, Node::Value(value))
    }

    fn take(&mut self, pointer: &Pointer) -> Result<Option<Node<'a>>, String> {
        let Some((last, parents)) = pointer.segments().split_last() else {
            return Ok(Some(std::mem::replace(
                &mut self.root,
                Node::Value(Value::Null),
            )));
        };
        let Some(parent) = walk(&mut self.root, parents, false)? else {
            return Ok(None);
        };
        open(parent)?;
        let Segment::Key(key) = last else {
            return Err(format!("{pointer}: no wildcards here"));
        };
        Ok(match parent {
            Node::Object(members) => members
                .iter()
                .position(|(name, _)| name == key)
                .map(|at| members.remove(at).1),
            Node::Array(items) => key
                .parse::<usize>()
                .ok()
                .filter(|at| *at < items.len())
                .map(|at| items.remove(at)),
            _ => None,
        })
    }

    fn put(&mut self, pointer: &Pointer, node: Node<'a>) -> Result<(), String> {
        let Some((last, parents)) = pointer.segments().split_last() else {
            self.root = node;
            return Ok(());
        };
        let parent = walk(&mut self.root, parents, true)?
            .ok_or_else(|| format!("{pointer}: the way there is blocked"))?;
        open(parent)?;
        let Segment::Key(key) = last else {
            return Err(format!("{pointer}: no wildcards here"));
        };
        match parent {
            Node::Object(members) => {
                match members.iter_mut().find(|(name, _)| name == key) {
                    Some((_, slot)) => *slot = node,
                    None => members.push((Cow::Owned(key.clone()), node)),
                }
                Ok(())
            }
            Node::Array(items) if key == "-" => {
                items.push(node);
                Ok(())
            }
            Node::Array(items) => match key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(slot) => {
                    *slot = node;
                    Ok(())
                }
                None => Err(format!("{pointer}: no element {key}")),
            },
            _ => Err(format!("{pointer}: the parent is not an object or array")),
        }
    }

    /// The document as JSON text: what no edit touched, as it came.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write(&self.root, &mut out);
        out
    }
}

/// Opens a container that is still text, one level: its members (or
/// elements) stay text.
fn open(node: &mut Node<'_>) -> Result<(), String> {
    let Node::Raw(raw) = node else {
        if let Node::Value(value) = node {
            // An edit below a value an edit wrote: open that too.
            let owned = std::mem::take(value);
            *node = from_value(owned);
        }
        return Ok(());
    };
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{') => {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            let members = deserializer
                .deserialize_map(Members)
                .map_err(|_| UNREADABLE.to_owned())?;
            *node = Node::Object(
                members
                    .into_iter()
                    .map(|(k, v)| (k, Node::Raw(v)))
                    .collect(),
            );
        }
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_str(text).map_err(|_| UNREADABLE.to_owned())?;
            *node = Node::Array(items.into_iter().map(Node::Raw).collect());
        }
        _ => {}
    }
    Ok(())
}

/// A value an edit wrote, as nodes, one level open.
fn from_value<'a>(value: Value) -> Node<'a> {
    match value {
        Value::Object(map) => Node::Object(
            map.into_iter()
                .map(|(k, v)| (Cow::Owned(k), Node::Value(v)))
                .collect(),
        ),
        Value::Array(items) => Node::Array(items.into_iter().map(Node::Value).collect()),
        other => Node::Value(other),
    }
}

/// The node at `segments` (no wildcards); with `create`, missing members
/// are made objects on the way. `None` when absent.
fn walk<'n, 'a>(
    mut node: &'n mut Node<'a>,
    segments: &[Segment],
    create: bool,
) -> Result<Option<&'n mut Node<'a>>, String> {
    for segment in segments {
        let Segment::Key(key) = segment else {
            return Err("no wildcards here".into());
        };
        open(node)?;
        node = match node {
            Node::Object(members) => {
                let at = match members.iter().position(|(name, _)| name == key) {
                    Some(at) => at,
                    None if create => {
                        members.push((Cow::Owned(key.clone()), Node::Object(Vec::new())));
                        members.len() - 1
                    }
                    None => return Ok(None),
                };
                match members.get_mut(at) {
                    Some((_, child)) => child,
                    None => return Ok(None),
                }
            }
            Node::Array(items) => match key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(child) => child,
                None if create => return Err(format!("no element {key}")),
                None => return Ok(None),
            },
            _ if create => return Err(format!("{key:?} is below a value that is not a container")),
            _ => return Ok(None),
        };
    }
    Ok(Some(node))
}

/// Calls `edit` on every node `segments` names that exists.
fn each_mut<'a>(
    node: &mut Node<'a>,
    segments: &[Segment],
    edit: &mut dyn FnMut(&mut Node<'a>) -> Result<(), String>,
) -> Result<(), String> {
    let Some((segment, rest)) = segments.split_first() else {
        return edit(node);
    };
    open(node)?;
    match segment {
        Segment::Key(key) => {
            let child = match node {
                Node::Object(members) => members
                    .iter_mut()
                    .find(|(name, _)| name == key)
                    .map(|(_, child)| child),
                Node::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                _ => None,
            };
            match child {
                Some(child) => each_mut(child, rest, edit),
                None => Ok(()),
            }
        }
        Segment::Any => children_mut(node, &mut |child| each_mut(child, rest, edit)),
        Segment::AnyDepth => {
            each_mut(node, rest, edit)?;
            children_mut(node, &mut |child| each_mut(child, segments, edit))
        }
    }
}

fn children_mut<'a>(
    node: &mut Node<'a>,
    each: &mut dyn FnMut(&mut Node<'a>) -> Result<(), String>,
) -> Result<(), String> {
    match node {
        Node::Object(members) => members.iter_mut().try_for_each(|(_, child)| each(child)),
        Node::Array(items) => items.iter_mut().try_for_each(each),
        _ => Ok(()),
    }
}

fn remove_child(parent: &mut Node<'_>, last: &Segment) -> Result<usize, String> {
    open(parent)?;
    Ok(match (parent, last) {
        (Node::Object(members), Segment::Key(key)) => {
            let before = members.len();
            members.retain(|(name, _)| name != key);
            before - members.len()
        }
        (Node::Array(items), Segment::Key(key)) => {
            match key.parse::<usize>().ok().filter(|i| *i < items.len()) {
                Some(index) => {
                    items.remove(index);
                    1
                }
                None => 0,
            }
        }
        (Node::Object(members), Segment::Any) => std::mem::take(members).len(),
        (Node::Array(items), Segment::Any) => std::mem::take(items).len(),
        _ => 0,
    })
}

fn write(node: &Node<'_>, out: &mut Vec<u8>) {
    match node {
        Node::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
        Node::Value(value) => {
            // Writing a Value to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, value);
        }
        Node::Object(members) => {
            out.push(b'{');
            for (i, (key, child)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, key.as_ref());
                out.push(b':');
                write(child, out);
            }
            out.push(b'}');
        }
        Node::Array(items) => {
            out.push(b'[');
            for (i, child) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(child, out);
            }
            out.push(b']');
        }
    }
}

/// An object's members in order, their values left as text.
struct Members;

/// A member name, borrowed when it has no escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(name)))
            }
            fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(name.to_owned())))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

impl<'de> Visitor<'de> for Members {
    type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some((Name(key), value)) = map.next_entry::<Name<'de>, &'de RawValue>()? {
            members.push((key, value));
        }
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn edited(text: &str, edit: impl FnOnce(&mut Document<'_>)) -> String {
        let mut document = Document::parse(text.as_bytes()).unwrap();
        edit(&mut document);
        String::from_utf8(document.to_vec()).unwrap()
    }

    fn pointer(text: &str) -> Pointer {
        Pointer::parse(text).unwrap()
    }

    #[test]
    fn what_no_edit_touches_is_written_as_it_came() {
        let text = r#"{"b": [1, 2.50], "a": {"x": "\u00e9"}, "c": 3}"#;
        assert_eq!(edited(text, |_| {}), text);
        let out = edited(text, |d| {
            d.remove(&pointer("/c")).unwrap();
        });
        assert_eq!(out, r#"{"b":[1, 2.50],"a":{"x": "\u00e9"}}"#);
    }

    #[test]
    fn edits_match_the_value_pointer_ones() {
        let text = r#"{"user_id": 7, "items": [{"tags": ["a"], "n": 1}, {"tags": [], "n": 2}], "o": {"t": 0.5}}"#;
        let out = edited(text, |d| {
            assert_eq!(d.remove(&pointer("/items/*/tags")).unwrap(), 2);
            d.rename(&pointer("/user_id"), "userId").unwrap();
            d.move_value(&pointer("/o/t"), &pointer("/t")).unwrap();
            d.set(&pointer("/meta/tenant"), json!("acme")).unwrap();
            d.set(&pointer("/items/-"), json!({"n": 3})).unwrap();
            d.set(&pointer("/items/2/n"), json!(4)).unwrap();
        });
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap(),
            json!({"userId": 7, "items": [{"n": 1}, {"n": 2}, {"n": 4}], "o": {}, "t": 0.5, "meta": {"tenant": "acme"}})
        );
        assert!(out.starts_with(r#"{"userId":7,"#), "order kept: {out}");
        let mut document = Document::parse(br#"{"a": "text"}"#).unwrap();
        assert!(document.set(&pointer("/a/b"), json!(1)).is_err());
        assert!(document
            .move_value(&pointer("/nope"), &pointer("/b"))
            .is_err());
        assert!(Document::parse(br#"{"a": 1, "a": 2}"#).is_err(), "strict");
    }
}
