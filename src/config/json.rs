//! JSON documents read strictly: a key given twice in one object is an error. serde_json keeps
//! the last of the two silently, and a lost `plugins` or `bearer_only` would lose authentication
//! without a word (the YAML loader refuses the same for the same reason).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parse `text` as one JSON value, refusing duplicate keys (the error names the key and where).
pub fn parse_strict(text: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let v = Strict(String::new())
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}

/// Builds a [`Value`], carrying the path of what it is building for error messages.
struct Strict(String);

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict(format!("{}[{}]", self.0, out.len())))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.0.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.0)
            };
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key \"{key}\" at {}",
                    if self.0.is_empty() {
                        "the top level"
                    } else {
                        &self.0
                    }
                )));
            }
            let v = map.next_value_seed(Strict(path))?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn duplicates_are_refused_at_any_depth() {
        assert_eq!(
            parse_strict(br#"{"a": [1, {"b": 2}], "c": null}"#).unwrap(),
            json!({"a": [1, {"b": 2}], "c": null})
        );
        let e = parse_strict(br#"{"plugins": {}, "plugins": {"x": 1}}"#).unwrap_err();
        assert!(
            e.contains("duplicate key \"plugins\" at the top level"),
            "{e}"
        );
        let e = parse_strict(br#"{"p": {"o": {"k": 1, "k": 2}}}"#).unwrap_err();
        assert!(e.contains("duplicate key \"k\" at p.o"), "{e}");
        assert!(parse_strict(b"{} x").is_err());
        assert!(parse_strict(b"{\"a\": ").is_err());
    }
}
