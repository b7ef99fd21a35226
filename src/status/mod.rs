//! The status listener: `/metrics` (also `/apisix/prometheus/metrics`), `/healthz` and
//! `/readyz` on `status.listen`, served by one thread of its own, away from the workers.
//! Each connection gets one answer and is closed; a slow client is cut off after a short
//! timeout, so a scrape never waits long behind it.

pub mod exposition;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::etcd::Etcd;
use crate::idp::Idp;
use crate::server::Shared;

/// How long a status client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// What the status thread reads.
pub struct Status {
    /// Worker blocks, the stop flag.
    pub shared: Arc<Shared>,
    /// The IdP thread (its counters, and which providers have loaded).
    pub idp: Idp,
    /// This host's name, for `apisix_node_info`.
    pub hostname: String,
    /// Under `config_provider: etcd`: reachability and the first sync.
    pub etcd: Option<Etcd>,
}

/// Bind `addr` (failing now, so a taken port stops the start with a clear error) and serve it
/// on a thread named `status`. Returns the bound address (the port, when 0 was asked for).
pub fn start(addr: SocketAddr, status: Status) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("status.listen {addr}: {e} (is another process serving on it?)"),
        )
    })?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = serve(stream, &status) {
                            tracing::debug!(error = %e, "status client");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "status listener: accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(bound)
}

fn serve(mut stream: TcpStream, status: &Status) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return write(
                &mut stream,
                &Answer::text(431, "request head too large\n"),
                false,
            );
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.trim_ascii().split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next());
    let Some(target) = target else {
        return write(&mut stream, &Answer::text(400, "bad request\n"), false);
    };
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let answer = match (method, path) {
        (b"GET" | b"HEAD", b"/metrics" | b"/apisix/prometheus/metrics") => metrics(status),
        (b"GET" | b"HEAD", b"/healthz") => healthz(status),
        (b"GET" | b"HEAD", b"/readyz") => readyz(status),
        (_, b"/metrics" | b"/apisix/prometheus/metrics" | b"/healthz" | b"/readyz") => {
            Answer::json(405, r#"{"error_msg":"405 Method Not Allowed"}"#.into())
        }
        _ => Answer::json(404, r#"{"error_msg":"404 Not Found"}"#.into()),
    };
    write(&mut stream, &answer, method == b"HEAD")
}

/// One status answer.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Answer {
    fn json(status: u16, body: String) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body,
        }
    }

    fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

fn write(stream: &mut TcpStream, a: &Answer, head_only: bool) -> io::Result<()> {
    let reason = match a.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        a.status,
        a.content_type,
        a.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(a.body.as_bytes());
    }
    stream.write_all(&out)?;
    stream.flush()
}

fn metrics(status: &Status) -> Answer {
    if !status.shared.metrics.enabled() {
        return Answer::json(
            404,
            r#"{"error_msg":"metrics are off (status.metrics: false)"}"#.into(),
        );
    }
    Answer {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: exposition::render(
            &status.shared.metrics,
            &status.idp,
            &status.hostname,
            status.etcd.as_ref().map(Etcd::reachable),
        ),
    }
}

fn stopping(status: &Status) -> bool {
    status.shared.stopping.load(Ordering::Acquire)
}

fn healthz(status: &Status) -> Answer {
    if stopping(status) {
        return Answer::json(503, r#"{"status":"stopping"}"#.into());
    }
    Answer::json(200, r#"{"status":"ok"}"#.into())
}

/// 200 once every identity provider a route needs has loaded its discovery document and keys
/// once (and, under etcd, the first full read is applied); until then 503 naming each provider,
/// the fetch it waits for, and the last error. Once synced, an unreachable etcd leaves it 200:
/// the node serves its last config.
fn readyz(status: &Status) -> Answer {
    if stopping(status) {
        return Answer::json(503, r#"{"status":"stopping"}"#.into());
    }
    if status.etcd.as_ref().is_some_and(|e| !e.synced()) {
        return Answer::json(
            503,
            r#"{"status":"not ready","waiting":[{"etcd":"the first full read of the config"}]}"#
                .into(),
        );
    }
    let waiting = status.idp.not_ready();
    if waiting.is_empty() {
        return Answer::json(200, r#"{"status":"ready"}"#.into());
    }
    let waiting: Vec<serde_json::Value> = waiting
        .into_iter()
        .map(|w| serde_json::json!({"provider": w.provider, "fetch": w.fetch, "error": w.error}))
        .collect();
    Answer::json(
        503,
        serde_json::json!({"status": "not ready", "waiting": waiting}).to_string(),
    )
}

/// This host's name, for `apisix_node_info`.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: a valid buffer of the given length; gethostname NUL-terminates within it or
    // truncates, and we read up to the first NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
