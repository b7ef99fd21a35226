//! `proxy-rewrite`: change the scheme, path, Host and headers of the upstream request.

use serde::Deserialize;
use serde_json::Value;

use crate::config::error::{deserialize_at, ConfigError};
use crate::http::h1::{valid_header_value, valid_token, write_header as header};
use crate::upstream::Scheme;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxyRewrite {
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: Option<Value>,
}

/// A checked `proxy-rewrite` configuration.
#[derive(Debug, Clone, Default)]
pub struct ProxyRewrite {
    /// Upstream scheme override.
    pub scheme: Option<Scheme>,
    /// Replacement path (the client's query string is kept when this has none).
    pub uri: Option<String>,
    /// Host header sent upstream.
    pub host: Option<String>,
    /// Headers replaced (any client value is dropped), names lowercased.
    pub set: Vec<(String, String)>,
    /// Headers appended after the client's.
    pub add: Vec<(String, String)>,
    /// Header names removed, lowercased.
    pub remove: Vec<String>,
}

impl ProxyRewrite {
    /// Upstream head: the replacement path, if any.
    pub fn uri(&self) -> Option<&[u8]> {
        self.uri.as_deref().map(str::as_bytes)
    }

    /// Upstream head: the replacement Host, if any.
    pub fn host(&self) -> Option<&[u8]> {
        self.host.as_deref().map(str::as_bytes)
    }

    /// Upstream head: whether header `name` (any case) is not forwarded as it is. `set` and
    /// `remove` win over the client's headers and over the ones the proxy adds itself.
    pub fn drops(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
            || self
                .set
                .iter()
                .any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
    }

    /// Upstream head: the headers set and added.
    pub fn append(&self, out: &mut Vec<u8>) {
        for (n, v) in self.set.iter().chain(&self.add) {
            header(out, n.as_bytes(), v.as_bytes());
        }
    }
}

fn header_map(v: &Value, path: &str, errors: &mut Vec<ConfigError>) -> Vec<(String, String)> {
    let Some(map) = v.as_object() else {
        errors.push(ConfigError::new(
            path,
            "must be a map of header names to values",
            "{\"X-Name\": \"value\"}",
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, value) in map {
        let p = format!("{path}.{name}");
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                errors.push(ConfigError::new(
                    &p,
                    "is not a header value",
                    "a string or number",
                ));
                continue;
            }
        };
        if !valid_token(name) {
            errors.push(ConfigError::new(
                &p,
                format!("`{name}` is not a header name"),
                "letters, digits and !#$%&'*+-.^_`|~",
            ));
        } else if let Some(why) = reserved(name) {
            errors.push(ConfigError::plain(&p, why));
        } else if !valid_header_value(&value) {
            errors.push(ConfigError::new(
                &p,
                "contains a control character",
                "printable text",
            ));
        } else {
            out.push((name.to_ascii_lowercase(), value));
        }
    }
    out
}

/// Headers whose value the proxy owns: framing and hop-by-hop ones, and Host (use `host`).
fn reserved(name: &str) -> Option<&'static str> {
    const FRAMING: &[&str] = &[
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "expect",
    ];
    let lower = name.to_ascii_lowercase();
    if lower == "host" {
        Some("Host is set with the `host` option")
    } else if FRAMING.contains(&lower.as_str()) {
        Some("framing and hop-by-hop headers are the proxy's own and cannot be rewritten")
    } else {
        None
    }
}

/// Check a `proxy-rewrite` configuration at `path`.
pub fn check(conf: Value, path: &str, errors: &mut Vec<ConfigError>) -> Option<ProxyRewrite> {
    let raw: RawProxyRewrite = match deserialize_at(conf, path) {
        Ok(r) => r,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let mut pr = ProxyRewrite::default();
    if let Some(s) = raw.scheme {
        pr.scheme = Some(match s.as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => {
                errors.push(ConfigError::new(
                    format!("{path}.scheme"),
                    format!("unsupported scheme `{other}`"),
                    "http, https",
                ));
                Scheme::Http
            }
        });
    }
    if let Some(uri) = raw.uri {
        if !uri.starts_with('/') || !valid_header_value(&uri) || uri.contains(' ') {
            errors.push(ConfigError::new(
                format!("{path}.uri"),
                format!("`{uri}` is not a path"),
                "a path starting with /",
            ));
        }
        pr.uri = Some(uri);
    }
    if let Some(host) = raw.host {
        if host.is_empty() || !valid_header_value(&host) || host.contains(' ') {
            errors.push(ConfigError::new(
                format!("{path}.host"),
                format!("`{host}` is not a host"),
                "host or host:port",
            ));
        }
        pr.host = Some(host);
    }
    if let Some(headers) = raw.headers {
        let hp = format!("{path}.headers");
        let is_ops = headers.as_object().is_some_and(|m| {
            !m.is_empty()
                && m.keys()
                    .all(|k| ["add", "set", "remove"].contains(&k.as_str()))
        });
        if is_ops {
            // The newer APISIX shape: {"add": {...}, "set": {...}, "remove": [...]}.
            if let Some(add) = headers.get("add") {
                pr.add = header_map(add, &format!("{hp}.add"), errors);
            }
            if let Some(set) = headers.get("set") {
                pr.set = header_map(set, &format!("{hp}.set"), errors);
            }
            if let Some(remove) = headers.get("remove") {
                match remove.as_array() {
                    Some(list) => {
                        for (i, n) in list.iter().enumerate() {
                            match n.as_str() {
                                Some(n) if valid_token(n) && reserved(n).is_none() => {
                                    pr.remove.push(n.to_ascii_lowercase())
                                }
                                _ => errors.push(ConfigError::new(
                                    format!("{hp}.remove[{i}]"),
                                    "is not a header name",
                                    "a header name",
                                )),
                            }
                        }
                    }
                    None => errors.push(ConfigError::new(
                        format!("{hp}.remove"),
                        "must be a list",
                        "a list of header names",
                    )),
                }
            }
        } else {
            // APISIX 2.x shape: name → value sets it, an empty value removes it.
            for (name, value) in header_map(&headers, &hp, errors) {
                if value.is_empty() {
                    pr.remove.push(name);
                } else {
                    pr.set.push((name, value));
                }
            }
        }
    }
    Some(pr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1::{HeaderIdx, HeaderKind};
    use crate::upstream::request::{write_request_head, ClientFacts, Edits};
    use crate::upstream::{Node, PassHost};
    use serde_json::json;

    impl Edits for ProxyRewrite {
        fn uri(&self) -> Option<&[u8]> {
            ProxyRewrite::uri(self)
        }
        fn host(&self) -> Option<&[u8]> {
            ProxyRewrite::host(self)
        }
        fn drops(&self, name: &[u8], _kind: HeaderKind) -> bool {
            ProxyRewrite::drops(self, name)
        }
        fn append_upstream(&self, _buf: &[u8], _headers: &[HeaderIdx], out: &mut Vec<u8>) {
            self.append(out)
        }
    }

    #[test]
    fn rewrites_the_upstream_head() {
        let mut e = Vec::new();
        let pr = check(
            json!({"uri": "/new", "host": "h.test", "headers": {"X-A": "1", "X-Gone": "", "X-Forwarded-Proto": "https"}}),
            "p",
            &mut e,
        )
        .unwrap();
        assert!(e.is_empty(), "{e:?}");
        let mut buf =
            b"GET /x?k=v HTTP/1.1\r\nHost: a.test\r\nX-Gone: 1\r\nx-a: old\r\n\r\n".to_vec();
        let mut hs = Vec::new();
        let head = crate::http::h1::parse_request(&mut buf, 100, &mut hs)
            .unwrap()
            .unwrap();
        let node = Node {
            addr: None,
            host_port: "127.0.0.1:8080".into(),
            host: "127.0.0.1".into(),
            weight: 1,
        };
        let facts = ClientFacts {
            peer_ip: "10.0.0.9",
            trusted: false,
            path: None,
            tls: false,
            upgrade: None,
        };
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            &buf,
            &head,
            &hs,
            &PassHost::Rewrite("ignored".into()),
            &node,
            &facts,
            &pr,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /new?k=v HTTP/1.1\r\nHost: h.test\r\nX-Forwarded-For: 10.0.0.9\r\nX-Real-IP: 10.0.0.9\r\nX-Forwarded-Host: a.test\r\nx-a: 1\r\nx-forwarded-proto: https\r\n\r\n"
        );
    }

    #[test]
    fn both_header_shapes() {
        let mut e = Vec::new();
        let pr = check(json!({"headers": {"X-A": "1", "X-B": ""}}), "p", &mut e).unwrap();
        assert_eq!(pr.set, vec![("x-a".to_string(), "1".to_string())]);
        assert_eq!(pr.remove, vec!["x-b".to_string()]);
        let pr = check(
            json!({"headers": {"add": {"X-C": "2"}, "remove": ["X-D"]}}),
            "p",
            &mut e,
        )
        .unwrap();
        assert_eq!(pr.add, vec![("x-c".to_string(), "2".to_string())]);
        assert_eq!(pr.remove, vec!["x-d".to_string()]);
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn bad_values_are_named() {
        let mut e = Vec::new();
        check(
            json!({"scheme": "ftp", "uri": "nope", "headers": {"bad name": "x"}, "regex_uri": []}),
            "plugins.proxy-rewrite",
            &mut e,
        );
        let all: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert!(
            all[0].starts_with("plugins.proxy-rewrite.regex_uri: unknown option `regex_uri`"),
            "{all:?}"
        );
        let mut e = Vec::new();
        check(
            json!({"scheme": "ftp", "uri": "nope", "headers": {"bad name": "x"}}),
            "plugins.proxy-rewrite",
            &mut e,
        );
        let all = e
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            all.contains(
                "plugins.proxy-rewrite.scheme: unsupported scheme `ftp` (allowed: http, https)"
            ),
            "{all}"
        );
        assert!(all.contains("plugins.proxy-rewrite.uri"), "{all}");
        assert!(
            all.contains("plugins.proxy-rewrite.headers.bad name"),
            "{all}"
        );
    }
}
