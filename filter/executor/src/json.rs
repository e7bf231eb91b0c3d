//! The one reading of JSON every policy that reads a body uses.
//!
//! JSON parsers disagree on inputs RFC 8259 leaves open, and a gateway that
//! decides on one reading while the upstream acts on another can be walked
//! around: `{"role": "user", "role": "admin"}` is `user` to a parser that
//! keeps the first key and `admin` to one that keeps the last. So a body is
//! read here, once, and refused where readers are known to disagree:
//!
//! * **UTF-8 only** (RFC 8259 section 8.1): invalid bytes in a string
//!   (`"\xff"`, overlong forms) are refused, not replaced;
//! * **no lone surrogate escapes**: `"\ud800"` names no character, and
//!   decoders replace, keep or drop it;
//! * **no duplicate keys** in an object (section 4 leaves them to the
//!   implementation, which is the differential);
//! * **at most [`MAX_DEPTH`] levels** of arrays and objects, so no reader
//!   runs out of stack (a Wasm VM's is small) on a body of brackets;
//! * nothing after the document but whitespace.
//!
//! [`check`] reads without building anything (what `json-body` needs);
//! [`parse`] builds the value for policies that decide on it.
//!
//! Left as readers have them: keys that differ only in case (`role` and
//! `Role`, one key to ASP.NET's default binding), and integers past 2^53,
//! which JavaScript readers round.

pub mod edit;
pub mod pointer;

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 64;

/// Why a body is not JSON as this engine reads it; the message names the
/// fault and where it is (line and column).
#[derive(Debug)]
pub struct JsonError(serde_json::Error);

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for JsonError {}

/// Whether a `content-type` value says JSON: `application/json` or
/// `application/<anything>+json`, parameters and case aside.
pub fn is_json_media_type(content_type: Option<&str>) -> bool {
    let Some(media) = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
    else {
        return false;
    };
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// Checks that `bytes` are one JSON document under the strict reading.
pub fn check(bytes: &[u8]) -> Result<(), JsonError> {
    read::<()>(bytes)
}

/// Parses `bytes` as one JSON document under the strict reading.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    read::<Value>(bytes)
}

fn read<'de, T: Reading<'de>>(bytes: &'de [u8]) -> Result<T, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Strict::<T>::new(MAX_DEPTH)
        .deserialize(&mut deserializer)
        .map_err(JsonError)?;
    deserializer.end().map_err(JsonError)?;
    Ok(value)
}

/// What a reading produces: the document ([`Value`]) or only the verdict
/// (`()`, which allocates nothing but each object's key set).
trait Reading<'de>: Sized {
    /// An object being read.
    type Members: Default;
    fn null() -> Self;
    fn bool(value: bool) -> Self;
    fn number(value: Number) -> Self;
    fn string(value: Cow<'de, str>) -> Self;
    fn array(items: Vec<Self>) -> Self;
    /// Adds a member; `false` if the key is already there.
    fn insert(object: &mut Self::Members, key: Cow<'de, str>, value: Self) -> bool;
    fn object(object: Self::Members) -> Self;
}

impl<'de> Reading<'de> for Value {
    type Members = Map<String, Value>;
    fn null() -> Self {
        Value::Null
    }
    fn bool(value: bool) -> Self {
        Value::Bool(value)
    }
    fn number(value: Number) -> Self {
        Value::Number(value)
    }
    fn string(value: Cow<'de, str>) -> Self {
        Value::String(value.into_owned())
    }
    fn array(items: Vec<Self>) -> Self {
        Value::Array(items)
    }
    fn insert(object: &mut Self::Members, key: Cow<'de, str>, value: Self) -> bool {
        object.insert(key.into_owned(), value).is_none()
    }
    fn object(object: Self::Members) -> Self {
        Value::Object(object)
    }
}

/// The keys of an object being checked: a short list while it is short
/// (most objects have a few keys, and hashing each costs more than
/// comparing them), a set once it is long (a body of one object with a
/// hundred thousand keys must not cost their square).
enum Keys<'de> {
    Few(Vec<Cow<'de, str>>),
    Many(HashSet<Cow<'de, str>>),
}

/// How many keys an object holds before they are hashed.
const FEW_KEYS: usize = 16;

impl Default for Keys<'_> {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl<'de> Keys<'de> {
    /// Adds `key`; `false` if it is already there.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        match self {
            Self::Few(keys) if keys.contains(&key) => false,
            Self::Few(keys) if keys.len() < FEW_KEYS => {
                keys.push(key);
                true
            }
            Self::Few(keys) => {
                let mut set: HashSet<Cow<'de, str>> = keys.drain(..).collect();
                set.insert(key);
                *self = Self::Many(set);
                true
            }
            Self::Many(set) => set.insert(key),
        }
    }
}

impl<'de> Reading<'de> for () {
    type Members = Keys<'de>;
    fn null() {}
    fn bool(_: bool) {}
    fn number(_: Number) {}
    fn string(_: Cow<'de, str>) {}
    fn array(_: Vec<()>) {}
    fn insert(object: &mut Self::Members, key: Cow<'de, str>, (): ()) -> bool {
        object.insert(key)
    }
    fn object(_: Self::Members) {}
}

/// A value read with `depth` levels of nesting left.
struct Strict<T> {
    depth: usize,
    reading: std::marker::PhantomData<T>,
}

impl<T> Strict<T> {
    fn new(depth: usize) -> Self {
        Self {
            depth,
            reading: std::marker::PhantomData,
        }
    }

    /// The depth left inside an array or object this seed opens, or the
    /// error if it may open none: an empty one counts as a level too.
    fn inside<E: serde::de::Error>(&self) -> Result<usize, E> {
        self.depth
            .checked_sub(1)
            .ok_or_else(|| E::custom(format_args!("nested deeper than {MAX_DEPTH} levels")))
    }
}

impl<'de, T: Reading<'de>> DeserializeSeed<'de> for Strict<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Reading<'de>> Visitor<'de> for Strict<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<T, E> {
        Ok(T::null())
    }

    fn visit_bool<E>(self, value: bool) -> Result<T, E> {
        Ok(T::bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<T, E> {
        Ok(T::number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<T, E> {
        Ok(T::number(value.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<T, E> {
        Number::from_f64(value)
            .map(T::number)
            .ok_or_else(|| E::custom("a number out of range"))
    }

    // serde_json hands strings over only once they are valid UTF-8 with no
    // lone surrogate escape: those faults are its errors.
    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<T, E> {
        Ok(T::string(Cow::Borrowed(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<T, E> {
        Ok(T::string(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<T, E> {
        Ok(T::string(Cow::Owned(value)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        let depth = self.inside()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Self::new(depth))? {
            items.push(item);
        }
        Ok(T::array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let depth = self.inside()?;
        let mut object = T::Members::default();
        while let Some(key) = map.next_key_seed(Key)? {
            let value = map.next_value_seed(Self::new(depth))?;
            if !T::insert(&mut object, key, value) {
                // Where it is, not what it is: the error may be logged.
                return Err(A::Error::custom(
                    "duplicate key in an object (readers disagree on which one counts)",
                ));
            }
        }
        Ok(T::object(object))
    }
}

/// An object key, borrowed from the body when it has no escape.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(body: &[u8]) -> String {
        let checked = check(body).err().map(|e| e.to_string());
        let parsed = parse(body).err().map(|e| e.to_string());
        assert_eq!(checked, parsed, "check and parse agree on {body:?}");
        checked.unwrap_or_else(|| panic!("accepted {:?}", String::from_utf8_lossy(body)))
    }

    #[test]
    fn well_formed_documents_are_read_whole() {
        let body =
            br#" {"a": [1, -2, 3.5, true, null, "\u00e9\ud83d\ude00"], "b": {"c": "caf\u00e9"}} "#;
        assert!(check(body).is_ok());
        assert_eq!(
            parse(body).unwrap(),
            json!({"a": [1, -2, 3.5, true, null, "é😀"], "b": {"c": "café"}})
        );
        assert_eq!(parse("\"café\"".as_bytes()).unwrap(), json!("café"));
        // The same key in two objects is not a duplicate.
        assert!(check(br#"[{"a": 1}, {"a": 2}, {"b": {"a": 3}}]"#).is_ok());
    }

    #[test]
    fn invalid_utf8_is_refused_not_replaced() {
        for body in [
            &b"{\"a\":\"\xff\xfe\"}"[..],
            b"{\"a\":\"\xc0\xae\"}",         // an overlong '.'
            b"{\"a\":\"\xed\xa0\x80\"}",     // a surrogate, encoded
            b"{\"a\":\"\x80\"}",             // a lone continuation byte
            b"{\"\xff\":1}",                 // in a key
            b"{\"a\":\"\xf4\x90\x80\x80\"}", // past U+10FFFF
        ] {
            refused(body);
        }
    }

    #[test]
    fn lone_surrogate_escapes_are_refused() {
        for body in [
            &br#"{"a":"\ud800"}"#[..],
            br#"{"a":"\udc00"}"#,
            br#"{"a":"\ud800\u0041"}"#,
            br#"{"\ud800":1}"#,
        ] {
            refused(body);
        }
    }

    #[test]
    fn duplicate_keys_are_refused_in_any_spelling() {
        for body in [
            &br#"{"role":"user","role":"admin"}"#[..],
            br#"{"role":"user","r\u006fle":"admin"}"#,
            br#"{"a":{"b":1,"b":2}}"#,
            br#"[{"x":1},{"y":1,"y":1}]"#,
        ] {
            assert!(refused(body).contains("duplicate key"), "{body:?}");
        }
    }

    #[test]
    fn duplicates_are_found_in_long_objects_too() {
        let members: Vec<String> = (0..40).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let object = format!("{{{}}}", members.join(","));
        assert!(check(object.as_bytes()).is_ok());
        for dup in ["k3", "k20", "k39"] {
            let object = format!(r#"{{{},"{dup}":0}}"#, members.join(","));
            assert!(
                refused(object.as_bytes()).contains("duplicate key"),
                "{dup}"
            );
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert!(check(deep(MAX_DEPTH).as_bytes()).is_ok());
        assert!(refused(deep(MAX_DEPTH + 1).as_bytes()).contains("nested deeper"));
        let objects = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert!(refused(objects.as_bytes()).contains("nested deeper"));
        // An empty array or object is a level too.
        let empty = format!("{}{{}}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(refused(empty.as_bytes()).contains("nested deeper"));
        // Far past serde_json's own limit: refused, not a stack overflow.
        refused(deep(100_000).as_bytes());
    }

    #[test]
    fn only_one_document_and_only_json() {
        for body in [
            &b"{} {}"[..],
            b"{\"a\":1}x",
            b"\xef\xbb\xbf{}", // a byte order mark
            b"{'a':1}",
            b"{\"a\":01}",
            b"[1,]",
            b"NaN",
            b"1e400",
            b"",
        ] {
            refused(body);
        }
    }
}
