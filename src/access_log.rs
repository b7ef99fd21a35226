//! One access-log line per request, buffered per worker and written to stderr in batches, so
//! logging costs no syscall per request.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Time from the request head to the end of the answer.
    pub elapsed: Duration,
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
    buf: Vec<u8>,
}

impl AccessLog {
    /// A log that writes when `enabled`.
    pub fn new(enabled: bool) -> Self {
        AccessLog {
            enabled,
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
        if let Some(err) = e.error {
            let _ = write!(self.buf, " error={err}");
        }
        self.buf.push(b'\n');
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// Write out what is buffered.
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            let _ = std::io::stderr().lock().write_all(&self.buf);
            self.buf.clear();
        }
    }
}
