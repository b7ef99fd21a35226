//! Answers the proxy makes itself: errors, and the redirects and pages plugins answer with.
//! All of them are written here, so every local answer has the same framing.

use std::borrow::Cow;
use std::io::Write;

/// A local answer: status, headers and a body held whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header lines besides framing (`Content-Length`, `Connection`) and `Server`.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    /// The body.
    pub body: Cow<'static, [u8]>,
}

impl Reply {
    /// A short JSON answer, as every error gets.
    pub fn json(status: u16, body: impl Into<Cow<'static, str>>) -> Reply {
        let body = match body.into() {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        };
        Reply {
            status,
            headers: vec![("Content-Type", Cow::Borrowed("application/json"))],
            body,
        }
    }

    /// Add a header line.
    pub fn with_header(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// Write the whole answer into `out`, asking the client to close when `close`.
    pub fn write(&self, out: &mut Vec<u8>, close: bool) {
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nServer: portcullis\r\n",
            self.status,
            reason(self.status)
        );
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
    }
}

/// `s` made safe inside a quoted-string header parameter (a realm, an error description):
/// quotes, backslashes and control characters become `'`.
pub fn quoted_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .collect()
}

/// The reason phrase for the statuses the proxy answers with itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_and_headers() {
        let mut out = Vec::new();
        Reply::json(401, r#"{"a":1}"#)
            .with_header("WWW-Authenticate", "Bearer realm=\"r\"")
            .write(&mut out, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 401 Unauthorized\r\nServer: portcullis\r\nContent-Type: application/json\r\nWWW-Authenticate: Bearer realm=\"r\"\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{\"a\":1}"
        );
    }
}
