//! One access-log line per request, buffered per worker and written to stderr in batches, so
//! logging costs no syscall per request.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::AccessLogFormat;
use crate::metrics::AuthMethod;

/// Flush once this much is buffered, even before the periodic flush.
const FLUSH_AT: usize = 32 * 1024;

/// What one line records.
pub struct Entry<'a> {
    /// Client address.
    pub peer: SocketAddr,
    /// `"METHOD /path HTTP/1.x"` from [`AccessLog::request_line`].
    pub request_line: &'a [u8],
    /// Answer status (0 when the client went away before any answer).
    pub status: u16,
    /// Response bytes written to the client.
    pub bytes: u64,
    /// Request bytes received (head, and a body of known length).
    pub bytes_in: u64,
    /// Time from the request head to the end of the answer.
    pub elapsed: Duration,
    /// Time spent on the upstream: from picking a node to the end of its answer.
    pub upstream_time: Option<Duration>,
    /// How `openid-connect` judged the request, and its outcome (`ok` or a refusal kind).
    pub auth: Option<(AuthMethod, &'static str)>,
    /// Matched route id.
    pub route: Option<&'a str>,
    /// Upstream address used.
    pub upstream: Option<SocketAddr>,
    /// Error label, if the request failed.
    pub error: Option<&'a str>,
}

/// A worker's access log buffer.
pub struct AccessLog {
    enabled: bool,
    format: AccessLogFormat,
    buf: Vec<u8>,
}

impl AccessLog {
    /// A log that writes when `enabled`, in `format`.
    pub fn new(enabled: bool, format: AccessLogFormat) -> Self {
        AccessLog {
            enabled,
            format,
            buf: Vec::with_capacity(if enabled { FLUSH_AT + 1024 } else { 0 }),
        }
    }

    /// Whether lines are recorded at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Render `"METHOD /path HTTP/1.x"` into `out`. The query is left out: login callbacks carry
    /// codes and tokens there. Bytes that could forge a line or a field are replaced.
    pub fn request_line(out: &mut Vec<u8>, method: &[u8], path: &[u8], http10: bool) {
        out.clear();
        out.push(b'"');
        out.extend(
            method
                .iter()
                .map(|&b| if b.is_ascii_graphic() { b } else { b'?' }),
        );
        out.push(b' ');
        out.extend(path.iter().map(|&b| {
            if b.is_ascii_graphic() && b != b'"' {
                b
            } else {
                b'?'
            }
        }));
        out.extend_from_slice(if http10 {
            b" HTTP/1.0\""
        } else {
            b" HTTP/1.1\""
        });
    }

    /// Record one request.
    pub fn record(&mut self, e: &Entry<'_>) {
        if !self.enabled {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        match self.format {
            AccessLogFormat::Text => self.text(e, now),
            AccessLogFormat::Json => self.json(e, now),
        }
        self.buf.push(b'\n');
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    fn text(&mut self, e: &Entry<'_>, now: Duration) {
        let _ = write!(
            self.buf,
            "{}.{:03} access {} ",
            now.as_secs(),
            now.subsec_millis(),
            e.peer
        );
        self.buf.extend_from_slice(e.request_line);
        let _ = write!(
            self.buf,
            " {} {} {:.3} route={} upstream=",
            e.status,
            e.bytes,
            e.elapsed.as_secs_f64(),
            e.route.unwrap_or("-"),
        );
        match e.upstream {
            Some(a) => {
                let _ = write!(self.buf, "{a}");
            }
            None => self.buf.push(b'-'),
        }
        if let Some(t) = e.upstream_time {
            let _ = write!(self.buf, " upstream_time={:.3}", t.as_secs_f64());
        }
        if let Some((method, outcome)) = e.auth {
            let _ = write!(self.buf, " auth={}:{outcome}", method.as_str());
        }
        if let Some(err) = e.error {
            let _ = write!(self.buf, " error={err}");
        }
    }

    /// One JSON object. Every string value is either ours (labels, numbers) or the request
    /// line, which [`AccessLog::request_line`] made printable ASCII without `"`; a backslash
    /// is the one byte left to escape.
    fn json(&mut self, e: &Entry<'_>, now: Duration) {
        let b = &mut self.buf;
        let _ = write!(
            b,
            "{{\"time\":{}.{:03},\"client\":\"{}\",\"request\":\"",
            now.as_secs(),
            now.subsec_millis(),
            e.peer
        );
        let line = e.request_line;
        let inner = line
            .strip_prefix(b"\"")
            .and_then(|l| l.strip_suffix(b"\""))
            .unwrap_or(line);
        for &c in inner {
            if c == b'\\' || c == b'"' {
                b.push(b'\\');
            }
            b.push(if c.is_ascii_graphic() || c == b' ' {
                c
            } else {
                b'?'
            });
        }
        let _ = write!(
            b,
            "\",\"status\":{},\"bytes_sent\":{},\"bytes_received\":{},\"duration\":{:.6},\"route\":",
            e.status,
            e.bytes,
            e.bytes_in,
            e.elapsed.as_secs_f64()
        );
        json_str_or_null(b, e.route);
        b.extend_from_slice(b",\"upstream\":");
        match e.upstream {
            Some(a) => {
                let _ = write!(b, "\"{a}\"");
            }
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b",\"upstream_duration\":");
        match e.upstream_time {
            Some(t) => {
                let _ = write!(b, "{:.6}", t.as_secs_f64());
            }
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b",\"auth_method\":");
        json_str_or_null(b, e.auth.map(|(m, _)| m.as_str()));
        b.extend_from_slice(b",\"auth_outcome\":");
        json_str_or_null(b, e.auth.map(|(_, o)| o));
        b.extend_from_slice(b",\"error\":");
        json_str_or_null(b, e.error);
        b.push(b'}');
    }

    /// Write out what is buffered.
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            let _ = std::io::stderr().lock().write_all(&self.buf);
            self.buf.clear();
        }
    }
}

/// A JSON string (escaped) or `null`.
fn json_str_or_null(out: &mut Vec<u8>, s: Option<&str>) {
    let Some(s) = s else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut tmp = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(line: &'a [u8], route: Option<&'a str>) -> Entry<'a> {
        Entry {
            peer: "127.0.0.1:5000".parse().unwrap(),
            request_line: line,
            status: 401,
            bytes: 120,
            bytes_in: 80,
            elapsed: Duration::from_micros(1500),
            route,
            upstream: None,
            upstream_time: None,
            auth: Some((AuthMethod::Jwt, "expired")),
            error: Some("expired"),
        }
    }

    #[test]
    fn json_lines_are_json_and_carry_every_field() {
        let mut log = AccessLog::new(true, AccessLogFormat::Json);
        let mut line = Vec::new();
        AccessLog::request_line(&mut line, b"GET", b"/a\\b\"c", false);
        log.record(&entry(&line, Some("r\"1")));
        let text = String::from_utf8(log.buf.clone()).unwrap();
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["request"], "GET /a\\b?c HTTP/1.1");
        assert_eq!(v["route"], "r\"1");
        assert_eq!(v["status"], 401);
        assert_eq!(v["bytes_sent"], 120);
        assert_eq!(v["bytes_received"], 80);
        assert_eq!(v["duration"], 0.0015);
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["upstream_duration"], serde_json::Value::Null);
        assert_eq!(v["auth_method"], "jwt");
        assert_eq!(v["auth_outcome"], "expired");
        assert_eq!(v["error"], "expired");
        assert_eq!(v["client"], "127.0.0.1:5000");
    }

    #[test]
    fn text_lines_name_auth_and_upstream_time() {
        let mut log = AccessLog::new(true, AccessLogFormat::Text);
        let mut e = entry(b"\"GET / HTTP/1.1\"", None);
        e.upstream_time = Some(Duration::from_millis(2));
        e.elapsed = Duration::from_millis(3);
        log.record(&e);
        let text = String::from_utf8(log.buf.clone()).unwrap();
        assert!(
            text.ends_with(" 401 120 0.003 route=- upstream=- upstream_time=0.002 auth=jwt:expired error=expired\n"),
            "{text}"
        );
    }
}
