//! Config problems and the field paths they are reported at, with the helpers every section
//! (and every plugin's own config check) reads values through. This is the bottom of the
//! config layer: it knows no section, route or plugin.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// One problem in a config document, tied to the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `routes[0].upstream.nodes`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
    /// What would be accepted, when that can be listed.
    pub allowed: Option<String>,
}

impl ConfigError {
    /// A problem with `path`, listing what is allowed there.
    pub fn new(
        path: impl Into<String>,
        message: impl Into<String>,
        allowed: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            allowed: Some(allowed.into()),
        }
    }

    /// A problem with `path` whose allowed values cannot be listed usefully.
    pub fn plain(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            allowed: None,
        }
    }

    /// Prefix the path, for errors found while checking a nested document.
    pub fn under(mut self, prefix: &str) -> Self {
        self.path = join_path(prefix, &self.path);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(allowed) = &self.allowed {
            write!(f, " (allowed: {allowed})")?;
        }
        Ok(())
    }
}

/// Every problem found in one document.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// `prefix.path`, or whichever of the two is not empty.
pub(crate) fn join_path(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty() || path == ".") {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// Deserialize `value` into `T`, turning serde's message into a [`ConfigError`] with the path.
pub fn deserialize_at<T: DeserializeOwned>(
    value: serde_json::Value,
    prefix: &str,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = match e.path().to_string() {
            p if p == "." => String::new(),
            p => p,
        };
        serde_message(&path, &e.inner().to_string()).under(prefix)
    })
}

/// Deserialize an optional nested object at `path`; a problem is recorded and gives `None`.
pub fn section<T: DeserializeOwned>(
    value: Option<serde_json::Value>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match deserialize_at(value?, "") {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(e.under(path));
            None
        }
    }
}

/// Serde's names for what it expected, in the words of the config reference.
fn expected_words(expected: &str) -> String {
    let e = expected.trim();
    match e {
        "i64" | "u64" | "i32" | "u32" | "u16" | "usize" | "u8" => "an integer".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "true, false".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        _ if e.starts_with("struct ") => "a mapping of options".into(),
        _ if e.starts_with("a ") || e.starts_with("an ") => e.into(),
        _ => e.to_string(),
    }
}

/// Rewrite serde's wording ("unknown field `x`, expected one of `a`, `b`") into ours.
fn serde_message(path: &str, msg: &str) -> ConfigError {
    let listed = |tail: &str| {
        tail.split(", ")
            .map(|s| s.trim_start_matches("or ").trim_matches('`'))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (kind, what) in [
        ("unknown field `", "unknown option"),
        ("unknown variant `", "unknown value"),
    ] {
        if let Some(rest) = msg.strip_prefix(kind) {
            let (name, tail) = rest.split_once('`').unwrap_or((rest, ""));
            let allowed = tail
                .strip_prefix(", expected one of ")
                .or_else(|| tail.strip_prefix(", expected "))
                .map(listed)
                .unwrap_or_else(|| "none".into());
            return ConfigError::new(path, format!("{what} `{name}`"), allowed);
        }
    }
    let wrong = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
        .and_then(|rest| rest.split_once(", expected "));
    if let Some((found, expected)) = wrong {
        let path = if path.is_empty() { "." } else { path };
        return ConfigError::new(
            path,
            format!("{found} is not allowed here"),
            expected_words(expected),
        );
    }
    if let Some(name) = msg.strip_prefix("missing field `") {
        let name = name.trim_end_matches('`');
        return ConfigError::plain(join_path(path, name), "is required");
    }
    ConfigError::plain(if path.is_empty() { "." } else { path }, msg.to_string())
}

/// A duration in seconds: positive and finite.
pub fn seconds(v: f64, path: &str, errors: &mut Vec<ConfigError>) -> Duration {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Duration::from_secs_f64(v)
    } else {
        errors.push(ConfigError::new(
            path,
            format!("{v} is not a valid duration"),
            "seconds > 0, fractions allowed",
        ));
        Duration::from_secs(1)
    }
}

/// An integer in `lo..=hi`.
pub fn ranged(v: i64, lo: i64, hi: i64, path: &str, errors: &mut Vec<ConfigError>) -> i64 {
    if (lo..=hi).contains(&v) {
        v
    } else {
        errors.push(ConfigError::new(
            path,
            format!("{v} is out of range"),
            format!("{lo} to {hi}"),
        ));
        lo
    }
}
