//! SSL objects (APISIX's `ssls`): names and PEM certificates, checked into [`SslSpec`]s whose
//! keys are parsed once here and never again per handshake.

use serde::Deserialize;
use serde_json::Value;

use super::error::{deserialize_at, ConfigError};
use super::route::{enabled, id_of};
use crate::tls::{parse_pair, SslSpec};

/// An SSL object as written (APISIX field names, plus `cert_file`/`key_file`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SslConfig {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    sni: Option<String>,
    #[serde(default)]
    snis: Option<Vec<String>>,
    #[serde(default)]
    cert: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    cert_file: Option<String>,
    #[serde(default)]
    key_file: Option<String>,
    /// More chains for the same names (an RSA one beside an ECDSA one), with `keys`.
    #[serde(default)]
    certs: Option<Vec<String>>,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    status: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    #[allow(dead_code)]
    desc: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    create_time: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    update_time: Option<i64>,
}

/// APISIX SSL options Portcullis does not implement; refused by name, never ignored.
const UNSUPPORTED: &[&str] = &["client", "ssl_protocols", "validity_start", "validity_end"];

/// Check the config file's `ssls`; errors carry `ssls[i].…` paths. Disabled objects
/// (`status: 0`) are checked and left out.
pub fn check_ssls(values: Vec<Value>, errors: &mut Vec<ConfigError>) -> Vec<SslSpec> {
    let mut ids = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        let prefix = format!("ssls[{i}]");
        let mut errs = Vec::new();
        if let Some((spec, enabled)) = check_ssl(v, &(i + 1).to_string(), &mut errs) {
            if !ids.insert(spec.id.clone()) {
                errs.push(ConfigError::plain(
                    "id",
                    format!("`{}` is used by an earlier SSL object", spec.id),
                ));
            }
            if enabled {
                out.push(spec);
            }
        }
        errors.extend(errs.into_iter().map(|e| e.under(&prefix)));
    }
    out
}

fn read_file(path: &str, field: &str, errors: &mut Vec<ConfigError>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(ConfigError::plain(
                field,
                format!("cannot read `{path}`: {e}"),
            ));
            None
        }
    }
}

/// Check one SSL object (the Admin API's `ssls` body too); errors carry paths relative to the
/// object. Returns the spec and whether it is enabled.
pub fn check_ssl(
    value: Value,
    fallback_id: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<(SslSpec, bool)> {
    if let Value::Object(map) = &value {
        for key in UNSUPPORTED {
            if map.contains_key(*key) {
                errors.push(ConfigError::plain(
                    *key,
                    "is not supported by Portcullis (remove it)",
                ));
            }
        }
    }
    let value = match value {
        Value::Object(mut map) => {
            for key in UNSUPPORTED {
                map.remove(*key);
            }
            Value::Object(map)
        }
        other => other,
    };
    let raw: SslConfig = match deserialize_at(value, "") {
        Ok(r) => r,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    // The route id grammar: ids name store files and etcd keys alike.
    let id = match raw.id.as_ref().map(id_of) {
        None => fallback_id.to_string(),
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            errors.push(e);
            fallback_id.to_string()
        }
    };
    if let Some(kind) = &raw.kind {
        if kind != "server" {
            errors.push(ConfigError::new(
                "type",
                format!("`{kind}` is not supported"),
                "server",
            ));
        }
    }
    let enabled = enabled(raw.status, errors);
    let mut snis: Vec<String> = Vec::new();
    let named = raw.sni.is_some() || raw.snis.is_some();
    match (raw.sni, raw.snis) {
        (Some(_), Some(_)) => errors.push(ConfigError::plain(
            "sni",
            "give either sni or snis, not both",
        )),
        (Some(one), None) => snis.push(one),
        (None, Some(many)) => snis = many,
        (None, None) => errors.push(ConfigError::plain("snis", "is required")),
    }
    let snis: Vec<String> = snis
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let lower = s.trim().to_ascii_lowercase();
            let lower = lower.strip_suffix('.').unwrap_or(&lower).to_string();
            let bare = lower.strip_prefix("*.").unwrap_or(&lower);
            let ok = !bare.is_empty()
                && !bare.contains('*')
                && bare.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !ok {
                errors.push(ConfigError::new(
                    format!("snis[{i}]"),
                    format!("`{s}` is not a server name"),
                    "a DNS name, or *.name for one label below it",
                ));
            }
            ok.then_some(lower)
        })
        .collect();
    if named && snis.is_empty() && !errors.iter().any(|e| e.path.starts_with("sni")) {
        errors.push(ConfigError::plain("snis", "is empty"));
    }
    let cert = match (raw.cert, raw.cert_file) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError::plain(
                "cert",
                "give either cert or cert_file, not both",
            ));
            None
        }
        (Some(c), None) => Some(c),
        (None, Some(path)) => read_file(&path, "cert_file", errors),
        (None, None) => {
            errors.push(ConfigError::plain("cert", "is required (or cert_file)"));
            None
        }
    };
    let key = match (raw.key, raw.key_file) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError::plain(
                "key",
                "give either key or key_file, not both",
            ));
            None
        }
        (Some(k), None) => Some(k),
        (None, Some(path)) => read_file(&path, "key_file", errors),
        (None, None) => {
            errors.push(ConfigError::plain("key", "is required (or key_file)"));
            None
        }
    };
    let mut keys = Vec::new();
    if let (Some(cert), Some(key)) = (&cert, &key) {
        match parse_pair(cert, key) {
            Ok(k) => keys.push(k),
            Err(e) => errors.push(pair_error(&e, "cert", "key")),
        }
    }
    let (more_certs, more_keys) = (raw.certs.unwrap_or_default(), raw.keys.unwrap_or_default());
    if more_certs.len() != more_keys.len() {
        errors.push(ConfigError::plain(
            "keys",
            format!(
                "{} keys for {} certs: each of certs needs its key at the same position",
                more_keys.len(),
                more_certs.len()
            ),
        ));
    }
    for (i, (c, k)) in more_certs.iter().zip(&more_keys).enumerate() {
        match parse_pair(c, k) {
            Ok(k) => keys.push(k),
            Err(e) => errors.push(pair_error(
                &e,
                &format!("certs[{i}]"),
                &format!("keys[{i}]"),
            )),
        }
    }
    Some((SslSpec { id, snis, keys }, enabled))
}

/// `parse_pair` names the half at fault as `cert:` or `key:`; map that to the field's path.
fn pair_error(e: &str, cert_path: &str, key_path: &str) -> ConfigError {
    match e.split_once(": ") {
        Some(("key", rest)) => ConfigError::plain(key_path, rest),
        Some((_, rest)) => ConfigError::plain(cert_path, rest),
        None => ConfigError::plain(cert_path, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The errors `check_ssl` reports for `field` (the object has no certificate, so others
    /// are there too).
    fn errors_at(value: Value, field: &str) -> (Vec<String>, Option<(String, bool)>) {
        let mut errors = Vec::new();
        let out = check_ssl(value, "7", &mut errors).map(|(s, on)| (s.id, on));
        let at = errors
            .iter()
            .filter(|e| e.path == field)
            .map(|e| e.to_string())
            .collect();
        (at, out)
    }

    #[test]
    fn ids_follow_the_route_grammar() {
        let long = "x".repeat(64);
        for (id, want) in [
            (json!("a-b_c.1"), "a-b_c.1"),
            (json!(12), "12"),
            (json!(long), long.as_str()),
        ] {
            let (errs, out) = errors_at(json!({"id": id, "snis": ["a.test"]}), "id");
            assert!(errs.is_empty(), "{id}: {errs:?}");
            assert_eq!(out.unwrap().0, want);
        }
        let (errs, out) = errors_at(json!({"snis": ["a.test"]}), "id");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(out.unwrap().0, "7", "the fallback id");
        for bad in [
            json!(""),
            json!("a/b"),
            json!("a b"),
            json!("../x"),
            json!("x".repeat(65)),
            json!(-1),
            json!(1.5),
            json!(true),
            json!(["1"]),
        ] {
            let (errs, _) = errors_at(json!({"id": bad, "snis": ["a.test"]}), "id");
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert!(errs[0].contains("is not a valid id"), "{}", errs[0]);
            assert!(
                errs[0].contains("(allowed: 1 to 64 of A-Z a-z 0-9 - _ .)"),
                "{}",
                errs[0]
            );
        }
    }

    #[test]
    fn status_is_zero_or_one() {
        for (status, on) in [(json!(1), true), (json!(0), false)] {
            let (errs, out) = errors_at(json!({"status": status, "snis": ["a.test"]}), "status");
            assert!(errs.is_empty(), "{errs:?}");
            assert_eq!(out.unwrap().1, on);
        }
        let (errs, out) = errors_at(json!({"snis": ["a.test"]}), "status");
        assert!(errs.is_empty() && out.unwrap().1, "enabled when absent");
        let (errs, _) = errors_at(json!({"status": 2, "snis": ["a.test"]}), "status");
        assert_eq!(
            errs,
            ["status: 2 is not a status (allowed: 0 (disabled), 1 (enabled))"]
        );
    }

    #[test]
    fn config_file_errors_carry_the_object_path() {
        let mut errors = Vec::new();
        check_ssls(vec![json!({"id": "a b", "snis": ["a.test"]})], &mut errors);
        assert!(
            errors.iter().any(|e| e.path == "ssls[0].id"),
            "{:?}",
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        );
    }
}
