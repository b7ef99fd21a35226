//! `redirect`: with `http_to_https: true`, a plain-HTTP request is answered with a 301 to the
//! same host, path and query over HTTPS, before any authentication runs.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::Request;
use crate::config::error::{deserialize_at, ConfigError};
use crate::error::ProxyError;
use crate::http::h1::HeaderKind;
use crate::http::reply::Reply;

/// APISIX `redirect` options this build does not implement: refused by name, never ignored.
const UNSUPPORTED: &[&str] = &[
    "uri",
    "regex_uri",
    "ret_code",
    "encode_uri",
    "append_query_string",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedirect {
    #[serde(default)]
    http_to_https: Option<bool>,
}

/// A checked `redirect` configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    /// Send plain-HTTP requests to HTTPS.
    pub http_to_https: bool,
}

/// Check `plugins.redirect`; errors carry `path`.
pub fn check(v: Value, path: &str, errors: &mut Vec<ConfigError>) -> Option<RedirectConfig> {
    if let Value::Object(map) = &v {
        for key in UNSUPPORTED {
            if map.contains_key(*key) {
                errors.push(ConfigError::new(
                    format!("{path}.{key}"),
                    "is not supported by Portcullis",
                    "http_to_https",
                ));
            }
        }
    }
    let v = match v {
        Value::Object(mut map) => {
            for key in UNSUPPORTED {
                map.remove(*key);
            }
            Value::Object(map)
        }
        other => other,
    };
    match deserialize_at::<RawRedirect>(v, "") {
        Ok(RawRedirect {
            http_to_https: Some(true),
        }) => Some(RedirectConfig {
            http_to_https: true,
        }),
        Ok(_) => {
            errors.push(ConfigError::new(
                format!("{path}.http_to_https"),
                "must be true (the only redirect this build makes)",
                "true",
            ));
            None
        }
        Err(e) => {
            errors.push(e.under(path));
            None
        }
    }
}

/// `redirect` compiled into a route: where HTTPS listens.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// The port written into the `Location` (`None`: 443, left out).
    port: Option<u16>,
}

impl Redirect {
    /// The plugin for a route; `https_port` is the first `tls.listen` port (none: 443, as when
    /// TLS is terminated in front).
    pub fn new(_config: &RedirectConfig, https_port: Option<u16>) -> Redirect {
        Redirect {
            port: https_port.filter(|p| *p != 443),
        }
    }

    /// Before authentication: the 301 for a plain-HTTP request, `None` over HTTPS. A trusted
    /// peer (a load balancer that terminated TLS) saying `X-Forwarded-Proto: https` counts as
    /// HTTPS, or the redirect would loop.
    pub fn before_auth(&self, req: &Request<'_>) -> Result<Option<Reply>, ProxyError> {
        if req.tls {
            return Ok(None);
        }
        if req.trusted {
            let forwarded_https = req
                .headers
                .iter()
                .filter(|h| h.kind == HeaderKind::XForwardedProto)
                .any(|h| h.value.get(req.buf).eq_ignore_ascii_case(b"https"));
            if forwarded_https {
                return Ok(None);
            }
        }
        let head = req.head;
        // An HTTP/1.0 request may come without Host: there is nowhere to send it.
        let host = match head.host {
            Some(_) => head.host_name.get(req.buf),
            None => return Err(ProxyError::BadRequest("no Host to redirect to")),
        };
        let (path, query) = (head.path.get(req.buf), head.query.get(req.buf));
        let mut location = String::with_capacity(16 + host.len() + path.len() + query.len());
        location.push_str("https://");
        // Bracketed IPv6 literals keep their brackets in host_name.
        location.push_str(&String::from_utf8_lossy(host));
        if let Some(port) = self.port {
            location.push(':');
            location.push_str(itoa(port, &mut [0u8; 5]));
        }
        // The path as sent (not normalised: the client asked for it), and its query.
        match path.first() {
            Some(b'/') => location.push_str(&String::from_utf8_lossy(path)),
            // `*` (OPTIONS), or an absolute-form target without a path: the site's root.
            _ => location.push('/'),
        }
        location.push_str(&String::from_utf8_lossy(query));
        Ok(Some(
            Reply {
                status: 301,
                headers: Vec::new(),
                body: Cow::Borrowed(b""),
            }
            .with_header("Location", location),
        ))
    }
}

fn itoa(n: u16, buf: &mut [u8; 5]) -> &str {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(v: Value) -> Result<RedirectConfig, String> {
        let mut errors = Vec::new();
        let c = check(v, "plugins.redirect", &mut errors);
        match c {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    #[test]
    fn only_http_to_https_true_is_accepted() {
        assert!(checked(serde_json::json!({"http_to_https": true})).is_ok());
        let e = checked(serde_json::json!({"http_to_https": false})).unwrap_err();
        assert!(
            e.starts_with("plugins.redirect.http_to_https: must be true"),
            "{e}"
        );
        let e = checked(serde_json::json!({"http_to_https": true, "uri": "/x"})).unwrap_err();
        assert!(e.contains("plugins.redirect.uri: is not supported"), "{e}");
        let e = checked(serde_json::json!({"http_to_http": true})).unwrap_err();
        assert!(e.contains("http_to_http"), "{e}");
    }

    #[test]
    fn port_443_is_left_out() {
        let c = RedirectConfig {
            http_to_https: true,
        };
        assert_eq!(Redirect::new(&c, Some(443)).port, None);
        assert_eq!(Redirect::new(&c, None).port, None);
        assert_eq!(Redirect::new(&c, Some(8443)).port, Some(8443));
    }

    #[test]
    fn port_digits() {
        assert_eq!(itoa(8443, &mut [0; 5]), "8443");
        assert_eq!(itoa(65535, &mut [0; 5]), "65535");
        assert_eq!(itoa(1, &mut [0; 5]), "1");
    }
}
