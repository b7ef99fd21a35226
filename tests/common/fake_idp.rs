//! A fake OpenID Connect identity provider: a real HTTP/1.1 server on 127.0.0.1 (std::net and
//! one thread per connection), controlled from the test while the proxy runs.
//!
//! Built-in endpoints:
//! * `GET /.well-known/openid-configuration`: the discovery document, `issuer` = the base URL
//!   (`http://127.0.0.1:PORT`), endpoints below it; fields can be overridden
//!   ([`FakeIdp::set_discovery_field`]).
//! * `GET /jwks`: the current key set ([`FakeIdp::set_jwks`]), with
//!   `Cache-Control: max-age=N` when set ([`FakeIdp::set_jwks_max_age`]).
//!
//! Any path can be given a handler ([`FakeIdp::on`]) that answers from the recorded
//! [`IdpRequest`] (method, path, headers, body, with form and Basic-auth helpers), e.g. the
//! introspection endpoint. Every request is recorded ([`FakeIdp::requests`]) and counted per path
//! ([`FakeIdp::hits`]), whatever it was answered.
//!
//! Faults: for all paths or one path, answer with a status ([`Fault::Status`]), a body that is
//! not JSON ([`Fault::NotJson`]), bytes that are not HTTP ([`Fault::NotHttp`]), or close without
//! answering ([`Fault::Drop`]); answer a body that never ends ([`Fault::Endless`]) or one that
//! announces a huge length and trickles ([`Fault::Announced`]), counting what was sent
//! ([`FakeIdp::streamed`]); delay answers ([`FakeIdp::set_delay`]); or go down entirely
//! (listener closed, connections refused and open ones reset: [`FakeIdp::go_down`]) and come
//! back on the same port ([`FakeIdp::come_up`]).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{wake_acceptor, Conns};

pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/jwks";
pub const INTROSPECTION_PATH: &str = "/introspect";

/// How the IdP misbehaves on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// Answer with this status and a small JSON error body.
    Status(u16),
    /// Answer 200 `application/json` with a body that is not JSON.
    NotJson,
    /// Write bytes that are not an HTTP response, then close.
    NotHttp,
    /// Read the request, then close the connection without answering.
    Drop,
    /// Answer 200 `application/json`, chunked, with a body that starts like JSON
    /// (`{"active":true,"keys":[],"pad":"xxx…`) and never ends, sent as fast as the client
    /// reads. Stops at [`ENDLESS_LIMIT`] (closing without the last chunk), so a client that
    /// reads it all fails its test rather than the machine.
    Endless,
    /// Answer 200 `application/json` with `Content-Length: N`, then trickle the body (1 KiB
    /// every 50 ms) until the client leaves or the IdP stops.
    Announced(u64),
}

/// Where a [`Fault::Endless`] body stops.
pub const ENDLESS_LIMIT: u64 = 256 << 20;

/// A request the IdP received.
#[derive(Clone, Debug)]
pub struct IdpRequest {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// The path without the query.
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Number of the connection it came on (0-based, in accept order).
    pub conn: usize,
}

impl IdpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::header_value(&self.headers, name)
    }

    /// The query string (after `?`), or "".
    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    /// The body as `application/x-www-form-urlencoded` pairs, percent-decoded.
    pub fn form(&self) -> Vec<(String, String)> {
        parse_urlencoded(&String::from_utf8_lossy(&self.body))
    }

    /// The first form field `name`.
    pub fn form_value(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The (user, password) of an `Authorization: Basic` header (both percent-decoded, as
    /// RFC 6749 §2.3.1 form-encodes client credentials before Basic encoding).
    pub fn basic_auth(&self) -> Option<(String, String)> {
        let v = self.header("authorization")?;
        let (scheme, b64) = v.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = super::jwt::b64_std_decode(b64.trim())?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((percent_decode(u), percent_decode(p)))
    }
}

/// An answer from a handler.
#[derive(Clone, Debug)]
pub struct IdpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl IdpResponse {
    pub fn json(status: u16, body: &Value) -> IdpResponse {
        IdpResponse {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    pub fn text(status: u16, body: &str) -> IdpResponse {
        IdpResponse {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> IdpResponse {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A handler for one path.
pub type Handler = Arc<dyn Fn(&IdpRequest) -> IdpResponse + Send + Sync>;

#[derive(Clone, Copy, Debug)]
struct Behaviour {
    fault: Fault,
    delay: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            fault: Fault::None,
            delay: Duration::ZERO,
        }
    }
}

struct Controls {
    jwks: Value,
    jwks_max_age: Option<u64>,
    discovery_overrides: serde_json::Map<String, Value>,
    all: Behaviour,
    per_path: HashMap<String, Behaviour>,
    handlers: HashMap<String, Handler>,
}

struct Shared {
    port: u16,
    controls: Mutex<Controls>,
    log: Mutex<Vec<IdpRequest>>,
    hits: Mutex<HashMap<String, usize>>,
    /// Body bytes written by the streaming faults.
    streamed: AtomicU64,
    conns: Conns,
    /// Bumped by go_down/drop: connections and acceptors of older generations stop.
    generation: AtomicUsize,
    down: AtomicBool,
    stop: AtomicBool,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

/// The fake identity provider. Stops (and resets its connections) on drop.
pub struct FakeIdp {
    pub port: u16,
    shared: Arc<Shared>,
}

impl FakeIdp {
    /// Starts on a free port with an empty key set.
    pub fn start() -> FakeIdp {
        FakeIdp::start_with_jwks(json!({"keys": []}))
    }

    /// Starts on a free port serving `jwks` (a `{"keys": [...]}` document).
    pub fn start_with_jwks(jwks: Value) -> FakeIdp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake IdP");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            port,
            controls: Mutex::new(Controls {
                jwks,
                jwks_max_age: None,
                discovery_overrides: serde_json::Map::new(),
                all: Behaviour::default(),
                per_path: HashMap::new(),
                handlers: HashMap::new(),
            }),
            log: Mutex::new(Vec::new()),
            hits: Mutex::new(HashMap::new()),
            streamed: AtomicU64::new(0),
            conns: Conns::new(),
            generation: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            acceptor: Mutex::new(None),
        });
        spawn_acceptor(&shared, listener);
        FakeIdp { port, shared }
    }

    /// `http://127.0.0.1:PORT`, also the `issuer`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The issuer the discovery document announces (the base URL unless overridden).
    pub fn issuer(&self) -> String {
        self.discovery_document()["issuer"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn discovery_url(&self) -> String {
        format!("{}{DISCOVERY_PATH}", self.base_url())
    }

    pub fn jwks_url(&self) -> String {
        format!("{}{JWKS_PATH}", self.base_url())
    }

    pub fn introspection_url(&self) -> String {
        format!("{}{INTROSPECTION_PATH}", self.base_url())
    }

    /// The discovery document as currently served.
    pub fn discovery_document(&self) -> Value {
        discovery_document(&self.shared)
    }

    // --- controls ------------------------------------------------------------------------

    /// Replaces the key set served at `/jwks` (key rotation).
    pub fn set_jwks(&self, jwks: Value) {
        self.shared.controls.lock().unwrap().jwks = jwks;
    }

    /// `Cache-Control: max-age=N` on `/jwks` answers (`None`: no such header).
    pub fn set_jwks_max_age(&self, max_age: Option<u64>) {
        self.shared.controls.lock().unwrap().jwks_max_age = max_age;
    }

    /// Sets (or with `Value::Null` removes) a field of the discovery document.
    pub fn set_discovery_field(&self, key: &str, value: Value) {
        self.shared
            .controls
            .lock()
            .unwrap()
            .discovery_overrides
            .insert(key.to_string(), value);
    }

    /// Answers `path` (without query) with `handler`, replacing the built-in answer.
    pub fn on(
        &self,
        path: &str,
        handler: impl Fn(&IdpRequest) -> IdpResponse + Send + Sync + 'static,
    ) {
        self.shared
            .controls
            .lock()
            .unwrap()
            .handlers
            .insert(path.to_string(), Arc::new(handler));
    }

    /// The fault for every path without a per-path one.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.controls.lock().unwrap().all.fault = fault;
    }

    /// The delay before answering on every path without a per-path one.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.controls.lock().unwrap().all.delay = delay;
    }

    /// Fault and delay for one path (overrides the all-paths setting for it).
    pub fn set_path_behaviour(&self, path: &str, fault: Fault, delay: Duration) {
        self.shared
            .controls
            .lock()
            .unwrap()
            .per_path
            .insert(path.to_string(), Behaviour { fault, delay });
    }

    /// Clears every fault and delay (the key set, handlers and overrides stay).
    pub fn heal(&self) {
        let mut c = self.shared.controls.lock().unwrap();
        c.all = Behaviour::default();
        c.per_path.clear();
    }

    /// Closes the listener (new connections are refused) and resets the open connections.
    /// Returns when the listening socket is closed.
    pub fn go_down(&self) {
        stop_serving(&self.shared);
        self.shared.down.store(true, Ordering::SeqCst);
    }

    /// Listens again on the same port after [`go_down`](Self::go_down).
    pub fn come_up(&self) {
        if !self.shared.down.load(Ordering::SeqCst) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("fake IdP cannot listen again on {}: {e}", self.port),
            }
        };
        self.shared.down.store(false, Ordering::SeqCst);
        spawn_acceptor(&self.shared, listener);
    }

    pub fn is_down(&self) -> bool {
        self.shared.down.load(Ordering::SeqCst)
    }

    // --- observations --------------------------------------------------------------------

    /// Requests received for `path` (without query), however they were answered.
    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.hits(DISCOVERY_PATH)
    }

    pub fn jwks_fetches(&self) -> usize {
        self.hits(JWKS_PATH)
    }

    pub fn introspections(&self) -> usize {
        self.hits(INTROSPECTION_PATH)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<IdpRequest> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The requests received for `path`.
    pub fn requests_to(&self, path: &str) -> Vec<IdpRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Connections accepted so far.
    pub fn conns(&self) -> usize {
        self.shared.conns.accepted()
    }

    /// Body bytes the streaming faults ([`Fault::Endless`], [`Fault::Announced`]) managed to
    /// write, on every path together: what a client read, plus what socket buffers took.
    pub fn streamed(&self) -> u64 {
        self.shared.streamed.load(Ordering::SeqCst)
    }
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        stop_serving(&self.shared);
    }
}

fn discovery_document(shared: &Shared) -> Value {
    let base = format!("http://127.0.0.1:{}", shared.port);
    let mut doc = json!({
        "issuer": base,
        "jwks_uri": format!("{base}{JWKS_PATH}"),
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "introspection_endpoint": format!("{base}{INTROSPECTION_PATH}"),
        "userinfo_endpoint": format!("{base}/userinfo"),
        "end_session_endpoint": format!("{base}/logout"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "ES384", "EdDSA"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
    });
    let c = shared.controls.lock().unwrap();
    let obj = doc.as_object_mut().unwrap();
    for (k, v) in &c.discovery_overrides {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    doc
}

/// Ends the current generation: the acceptor drops its listener, open connections are reset.
fn stop_serving(shared: &Arc<Shared>) {
    shared.generation.fetch_add(1, Ordering::SeqCst);
    let handle = shared.acceptor.lock().unwrap().take();
    if let Some(h) = handle {
        // Wake the blocking accept so the thread sees the new generation and drops the listener.
        wake_acceptor(shared.port, Duration::from_millis(500));
        let _ = h.join();
    }
    shared.conns.close_all();
}

fn spawn_acceptor(shared: &Arc<Shared>, listener: TcpListener) {
    let generation = shared.generation.load(Ordering::SeqCst);
    let st = shared.clone();
    let handle = thread::spawn(move || {
        for conn in listener.incoming() {
            if st.stop.load(Ordering::SeqCst) || st.generation.load(Ordering::SeqCst) != generation
            {
                break;
            }
            let Ok(stream) = conn else { continue };
            let n = st.conns.add(&stream);
            let st2 = st.clone();
            thread::spawn(move || {
                let _ = serve(stream, n, generation, &st2);
                st2.conns.close(n);
            });
        }
        // The listener is dropped here: new connections are refused from now on.
    });
    *shared.acceptor.lock().unwrap() = Some(handle);
}

fn live(st: &Shared, generation: usize) -> bool {
    !st.stop.load(Ordering::SeqCst) && st.generation.load(Ordering::SeqCst) == generation
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn read_request(r: &mut BufReader<TcpStream>, conn: usize) -> io::Result<Option<IdpRequest>> {
    let mut line = String::new();
    // Skip empty lines between requests.
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut it = line.split_whitespace();
    let method = it.next().unwrap_or("").to_string();
    let target = it.next().unwrap_or("").to_string();
    let version = it.next().unwrap_or("HTTP/1.1").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |name: &str| super::header_value(&headers, name).map(str::to_string);
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
            if size == 0 {
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = String::new();
            r.read_line(&mut crlf)?;
        }
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "content-length"))?;
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(Some(IdpRequest {
        method,
        target,
        path,
        version,
        headers,
        body,
        conn,
    }))
}

fn serve(stream: TcpStream, conn: usize, generation: usize, st: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let Some(req) = read_request(&mut r, conn)? else {
            return Ok(());
        };
        if !live(st, generation) {
            return Ok(());
        }
        *st.hits.lock().unwrap().entry(req.path.clone()).or_insert(0) += 1;
        st.log.lock().unwrap().push(req.clone());

        let (behaviour, handler, jwks, max_age) = {
            let c = st.controls.lock().unwrap();
            (
                c.per_path.get(&req.path).copied().unwrap_or(c.all),
                c.handlers.get(&req.path).cloned(),
                c.jwks.clone(),
                c.jwks_max_age,
            )
        };
        // Delay in small steps so a stopped IdP does not answer late.
        let until = Instant::now() + behaviour.delay;
        while Instant::now() < until {
            if !live(st, generation) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
        }
        if !live(st, generation) {
            return Ok(());
        }
        let conn_hdr = req.header("connection").unwrap_or("").to_ascii_lowercase();
        let close = conn_hdr.contains("close")
            || (req.version == "HTTP/1.0" && !conn_hdr.contains("keep-alive"));
        let resp = match behaviour.fault {
            Fault::Drop => return Ok(()),
            Fault::Endless => return stream_endless(&mut w, st, generation),
            Fault::Announced(n) => return trickle_announced(&mut w, n, st, generation),
            Fault::NotHttp => {
                w.write_all(b"SSH-2.0-not-an-http-server\r\n\x00\x01\x02garbage\r\n\r\n")?;
                w.flush()?;
                return Ok(());
            }
            Fault::Status(code) => IdpResponse::json(
                code,
                &json!({"error": "server_error", "error_description": "fake IdP fault"}),
            ),
            Fault::NotJson => IdpResponse {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: b"<html><body>Gateway says hello {{{ this is not JSON".to_vec(),
            },
            Fault::None => match handler {
                Some(h) => h(&req),
                None => match (req.method.as_str(), req.path.as_str()) {
                    ("GET", DISCOVERY_PATH) => IdpResponse::json(200, &discovery_document(st)),
                    ("GET", JWKS_PATH) => {
                        let r = IdpResponse::json(200, &jwks);
                        match max_age {
                            Some(n) => r.with_header("Cache-Control", &format!("max-age={n}")),
                            None => r,
                        }
                    }
                    _ => IdpResponse::json(404, &json!({"error": "not_found"})),
                },
            },
        };
        let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
        for (n, v) in &resp.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if req.method != "HEAD" {
            out.extend_from_slice(&resp.body);
        }
        w.write_all(&out)?;
        w.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// [`Fault::Endless`]: a chunked body that goes on until the client leaves or the limit.
fn stream_endless(w: &mut TcpStream, st: &Shared, generation: usize) -> io::Result<()> {
    let prefix = br#"{"active":true,"keys":[],"pad":""#;
    let mut out =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    out.extend_from_slice(format!("{:x}\r\n", prefix.len()).as_bytes());
    out.extend_from_slice(prefix);
    out.extend_from_slice(b"\r\n");
    w.write_all(&out)?;
    let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
    chunk.extend(std::iter::repeat_n(b'x', 64 * 1024));
    chunk.extend_from_slice(b"\r\n");
    let mut sent = 0u64;
    while sent < ENDLESS_LIMIT && live(st, generation) {
        // A client that stopped reading closed the connection: the write fails and this ends.
        w.write_all(&chunk)?;
        sent += 64 * 1024;
        st.streamed.fetch_add(64 * 1024, Ordering::SeqCst);
    }
    Ok(())
}

/// [`Fault::Announced`]: a huge `Content-Length`, then a slow trickle of the body.
fn trickle_announced(w: &mut TcpStream, n: u64, st: &Shared, generation: usize) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n{{\"pad\":\""
    );
    w.write_all(head.as_bytes())?;
    let piece = [b'x'; 1024];
    let mut sent = 8u64;
    while sent + 1024 <= n && live(st, generation) {
        w.write_all(&piece)?;
        sent += 1024;
        st.streamed.fetch_add(1024, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=x%20y` → [("a","1"), ("b","x y")]
pub fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}
