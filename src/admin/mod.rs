//! The Admin API server: APISIX's `/apisix/admin` on `admin.listen`, off the worker cores.
//!
//! Plain blocking threads: a change compiles routes (which may resolve names) and fsyncs, both
//! of which block, and admin traffic is a handful of requests, not a load to multiplex.

pub mod api;
pub mod key;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::control::Control;
use api::{Request, Response};

/// Connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 64;
/// Largest request head.
const MAX_HEAD: usize = 64 * 1024;
/// A client that sends nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(30);

/// What the Admin API threads share.
struct Admin {
    control: Arc<Control>,
    key: String,
    max_body: usize,
    open: AtomicUsize,
}

/// Bind `listen` and serve the Admin API from a thread of its own.
pub fn start(
    listen: SocketAddr,
    key: String,
    max_body: usize,
    control: Arc<Control>,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)
        .map_err(|e| io::Error::new(e.kind(), format!("admin.listen {listen}: {e}")))?;
    let bound = listener.local_addr()?;
    let admin = Arc::new(Admin {
        control,
        key,
        max_body,
        open: AtomicUsize::new(0),
    });
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                if admin.open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    admin.open.fetch_sub(1, Ordering::AcqRel);
                    let _ = write_response(
                        &stream,
                        &Response {
                            status: 503,
                            body: serde_json::json!({"error_msg": "too many admin connections"}),
                        },
                        false,
                    );
                    continue;
                }
                let a = Arc::clone(&admin);
                let spawned =
                    std::thread::Builder::new()
                        .name("admin-conn".into())
                        .spawn(move || {
                            serve(&a, stream);
                            a.open.fetch_sub(1, Ordering::AcqRel);
                        });
                if spawned.is_err() {
                    admin.open.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(bound)
}

/// Serve one connection's requests (keep-alive) until it closes, errs or idles out.
fn serve(admin: &Admin, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_write_timeout(Some(IDLE));
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        match serve_one(admin, &stream, &mut buf) {
            Ok(true) => continue,
            Ok(false) | Err(_) => return,
        }
    }
}

/// Read, answer and write one request; `Ok(false)`: close the connection.
fn serve_one(admin: &Admin, stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let head_len = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => break n,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                write_response(stream, &error(431, "request head too large"), false)?;
                return Ok(false);
            }
            Err(e) => {
                write_response(stream, &error(400, format!("bad request: {e}")), false)?;
                return Ok(false);
            }
        }
        if read_more(stream, buf)? == 0 {
            return Ok(false);
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(buf)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    let http10 = req.version == Some(0);
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.to_vec())
    };
    let api_key = header("x-api-key");
    let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
    let keep = !close && !http10;
    if header("transfer-encoding").is_some() {
        write_response(
            stream,
            &error(411, "send the body with a Content-Length"),
            false,
        )?;
        return Ok(false);
    }
    let length = match header("content-length") {
        None => 0,
        Some(v) => match std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
        {
            Some(n) => n,
            None => {
                write_response(stream, &error(400, "bad Content-Length"), false)?;
                return Ok(false);
            }
        },
    };
    if length > admin.max_body {
        write_response(
            stream,
            &error(
                413,
                format!(
                    "request body of {length} bytes is over admin.max_body_bytes ({})",
                    admin.max_body
                ),
            ),
            false,
        )?;
        return Ok(false);
    }
    while buf.len() < head_len + length {
        if read_more(stream, buf)? == 0 {
            return Ok(false);
        }
    }
    let response = api::handle(
        &admin.control,
        &admin.key,
        &Request {
            method: &method,
            target: &target,
            api_key: api_key.as_deref(),
            body: &buf[head_len..head_len + length],
        },
    );
    if response.status >= 400 {
        tracing::info!(method = %method, status = response.status, "admin request refused");
    } else if method != "GET" {
        tracing::info!(method = %method, path = %target.split('?').next().unwrap_or_default(), status = response.status, "admin change applied");
    }
    buf.drain(..head_len + length);
    write_response(stream, &response, keep)?;
    Ok(keep)
}

fn read_more(mut stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn error(status: u16, msg: impl Into<String>) -> Response {
    Response {
        status,
        body: serde_json::json!({ "error_msg": msg.into() }),
    }
}

fn write_response(mut stream: &TcpStream, r: &Response, keep: bool) -> io::Result<()> {
    let body = serde_json::to_vec(&r.body).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\nServer: portcullis\r\n\r\n",
        r.status,
        crate::http::reply::reason(r.status),
        body.len(),
        if keep { "keep-alive" } else { "close" }
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    stream.write_all(&out)
}
