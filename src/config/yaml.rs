//! YAML text into a JSON value, refusing what serde_yaml would otherwise settle silently.
//!
//! serde_yaml hands each mapping to the visitor entry by entry, and serde_json's own visitor
//! keeps the last of two equal keys: a second `plugins:` in a route would replace the first and
//! with it the route's authentication. The visitor here builds the same value serde_json's does
//! (same key and number rules, aliases expanded by serde_yaml as before) but records every
//! duplicate key with the path of the mapping that holds it.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use super::error::{join_path, ConfigError};

/// What a duplicate-key problem offers as the allowed form.
const ONCE: &str = "each key once in a mapping";

/// Parse one YAML document. Duplicate keys come back as problems beside the value, which keeps
/// the first occurrence of each key so that the rest of the document can still be checked.
pub(super) fn parse(text: &str) -> Result<(Value, Vec<ConfigError>), serde_yaml::Error> {
    let mut duplicates = Vec::new();
    let value = Node {
        path: "",
        duplicates: &mut duplicates,
    }
    .deserialize(serde_yaml::Deserializer::from_str(text))?;
    Ok((value, duplicates))
}

/// One node of the document at `path`; collects duplicates found at or below it.
struct Node<'a> {
    path: &'a str,
    duplicates: &'a mut Vec<ConfigError>,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        // serde_json's rule: a number that fits neither i64 nor u64 is an error, not a float.
        Number::deserialize(de::value::I128Deserializer::<E>::new(v)).map(Value::Number)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Number::deserialize(de::value::U128Deserializer::<E>::new(v)).map(Value::Number)
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // `.nan` and `.inf` have no JSON form; serde_json makes them null, and so do we.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = join_path(self.path, &format!("[{}]", items.len()));
            let node = Node {
                path: &path,
                duplicates: &mut *self.duplicates,
            };
            match seq.next_element_seed(node)? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut values = Map::new();
        // A key written three times is one problem, not two.
        let mut reported: Vec<String> = Vec::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let path = join_path(self.path, &key);
            let node = Node {
                path: &path,
                duplicates: &mut *self.duplicates,
            };
            // The later value is still walked: duplicates inside it are problems too.
            let value = map.next_value_seed(node)?;
            if values.contains_key(&key) {
                if !reported.contains(&key) {
                    let at = if self.path.is_empty() { "." } else { self.path };
                    self.duplicates.push(ConfigError::new(
                        at,
                        format!("duplicate key \"{key}\""),
                        ONCE,
                    ));
                    reported.push(key);
                }
            } else {
                values.insert(key, value);
            }
        }
        Ok(Value::Object(values))
    }
}

/// A mapping key, read as text the way serde_json's own visitor reads it (`1:` is the key "1").
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for Key {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Ok((_, d)) => d.iter().map(ToString::to_string).collect(),
            Err(e) => panic!("not YAML: {e}"),
        }
    }

    #[test]
    fn builds_what_serde_json_builds() {
        let text = "a: 1\nb: [x, 2.5, true, null, ~]\nc: {d: -3, 1: e}\nbig: 18446744073709551615\nf: .nan\n";
        let (ours, dups) = parse(text).unwrap();
        assert!(dups.is_empty());
        let theirs: Value = serde_yaml::from_str(text).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn duplicates_are_named_with_the_mapping_path_at_every_depth() {
        let text = r#"
listen: a
listen: b
routes:
  - id: "1"
    plugins: {openid-connect: {client_id: a, client_id: b}}
    plugins: {}
    upstream:
      nodes: {"127.0.0.1:1980": 1, "127.0.0.1:1980": 2}
  - nodes: [{host: a, host: b}]
"#;
        let p = problems(text);
        let want = [
            ".: duplicate key \"listen\" (allowed: each key once in a mapping)",
            "routes[0].plugins.openid-connect: duplicate key \"client_id\" (allowed: each key once in a mapping)",
            "routes[0]: duplicate key \"plugins\" (allowed: each key once in a mapping)",
            "routes[0].upstream.nodes: duplicate key \"127.0.0.1:1980\" (allowed: each key once in a mapping)",
            "routes[1].nodes[0]: duplicate key \"host\" (allowed: each key once in a mapping)",
        ];
        assert_eq!(p, want);
    }

    #[test]
    fn the_first_occurrence_is_kept_and_a_third_is_not_a_second_problem() {
        let (v, d) = parse("plugins: {a: 1}\nplugins: {}\nplugins: {}\n").unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(v["plugins"]["a"], 1);
    }

    #[test]
    fn anchors_and_aliases_still_expand_without_false_duplicates() {
        let text = "base: &b {x: 1, y: 2}\none: *b\ntwo: *b\n";
        let (v, d) = parse(text).unwrap();
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(v["two"]["y"], 2);
    }

    #[test]
    fn equal_keys_in_different_mappings_are_fine() {
        assert!(problems("a: {k: 1}\nb: {k: 1}\nc: [{k: 1}, {k: 2}]\n").is_empty());
    }
}
