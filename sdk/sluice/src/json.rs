//! Reading one field of a JSON document without building the document: [`at_path`] parses all of
//! it (so malformed JSON is still an error) but keeps only the value at the path; every other
//! object, array and string is skipped as it is read, and keys are compared where they lie in the
//! input. A filter or router that tests one field pays for parsing, not for allocating a
//! `serde_json::Value` tree — which in a Wasm instance is most of the cost.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::Result;

/// The value at `path` (object keys, outermost first) in the JSON document `json`, or `None` when
/// some step is missing or is not an object. Equivalent to parsing into a `serde_json::Value` and
/// following `Value::get` for each key (a repeated key counts with its last value, as there), but
/// without building anything but the result. An empty path returns the whole document.
///
/// ```
/// let order = br#"{"id": 7, "customer": {"country": "DE", "tags": ["a", "b"]}}"#;
/// assert_eq!(sluice::json::at_path(order, &["customer", "country"]).unwrap(), Some("DE".into()));
/// assert_eq!(sluice::json::at_path(order, &["customer", "city"]).unwrap(), None);
/// assert!(sluice::json::at_path(b"{\"id\": ", &["id"]).is_err());
/// ```
pub fn at_path<S: AsRef<str>>(json: &[u8], path: &[S]) -> Result<Option<Value>> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let found = Path(path).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(found)
}

/// What is left of the path at one level of the document.
struct Path<'p, S>(&'p [S]);

impl<'de, S: AsRef<str>> DeserializeSeed<'de> for Path<'_, S> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Value>, D::Error> {
        match self.0.split_first() {
            None => serde::Deserialize::deserialize(deserializer).map(Some),
            Some((head, rest)) => deserializer.deserialize_any(Step { head: head.as_ref(), rest }),
        }
    }
}

/// Looks for `head` in an object and follows `rest` in its value; anything else is skipped.
struct Step<'p, S> {
    head: &'p str,
    rest: &'p [S],
}

impl<'de, S: AsRef<str>> Visitor<'de> for Step<'_, S> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        let mut found = None;
        while let Some(matches) = map.next_key_seed(IsKey(self.head))? {
            if matches {
                // The last of repeated keys counts, as in a `serde_json::Value`.
                found = map.next_value_seed(Path(self.rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Value>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Option<Value>, E> {
        Ok(None)
    }
}

/// Compares an object key with the one looked for, where the parser has it (no copy unless the
/// key has escapes, which the parser resolves into its scratch buffer).
struct IsKey<'p>(&'p str);

impl<'de> DeserializeSeed<'de> for IsKey<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for IsKey<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// What `at_path` must agree with: the whole document, then `Value::get` per key.
    fn reference(json: &[u8], path: &[&str]) -> Option<Option<Value>> {
        let value: Value = serde_json::from_slice(json).ok()?;
        Some(path.iter().try_fold(&value, |v, key| v.get(key)).cloned())
    }

    #[test]
    fn agrees_with_parsing_the_whole_document() {
        let documents: [&[u8]; 9] = [
            br#"{"a": {"b": {"c": [1, 2, {"d": null}]}, "s": "x\"y"}, "n": -1.5e3, "t": true}"#,
            br#"{"a": 1, "a": {"b": 2}}"#,
            br#"{"a": {"b": 2}, "a": 3}"#,
            br#"{"\u0061": {"b": "escaped key"}}"#,
            br#"[{"a": 1}]"#,
            br#""a""#,
            br#"{}"#,
            br#"{"a": {"b": 1} "#,
            br#"{"a": 1} trailing"#,
        ];
        let paths: [&[&str]; 6] = [&[], &["a"], &["a", "b"], &["a", "b", "c"], &["n"], &["missing", "x"]];
        for document in documents {
            for path in paths {
                let ours = at_path(document, path).ok();
                assert_eq!(ours, reference(document, path), "{} at {path:?}", String::from_utf8_lossy(document));
            }
        }
        assert_eq!(at_path(br#"{"a": {"b": [1, {"c": 2}]}}"#, &["a", "b"]).unwrap(), Some(json!([1, {"c": 2}])));
    }
}
