//! Ways past authentication through the parser and the forwarder, each with its near variants
//! and the requests that must keep working (SPEC §1.3, §2.3–2.4; RFC 9110, RFC 9112):
//!
//! 1. `Host` spellings (case, trailing dot, port, wildcard and `hosts` routes, absolute form) reach
//!    the host-restricted route, and malformed ones are 400, never a catch-all.
//! 2. `#` and bytes outside the URI grammar in the request target are 400.
//! 3. Chunked trailers are vetted and filtered both ways and count against the head limits;
//!    chunk extensions count against the body cap.
//! 4. Upstream edges: only idempotent methods are replayed, response head limits, odd status
//!    codes, `Expect` from HTTP/1.0 clients, and keep-alive after a 502/504.
//!
//! Refused requests are checked at the upstream too: the raw recorder below keeps every byte each
//! of its connections received, so "it saw nothing" is an exact count, and the bytes a forwarded
//! request arrived with can be compared whole.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::auth::oidc_route;
use common::jwt::{claims, SigningKey, RSA1_PUBLIC_PEM};
use common::*;
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.hardening.example";

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 message framing (for the recorder and the raw client)
// ---------------------------------------------------------------------------------------------

/// The length of the head at the start of `buf` (through its empty line), once complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn crlf_at(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// The header fields of `head` (start line skipped), names as sent, values trimmed.
fn fields(head: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(head)
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect()
}

fn field(head: &[u8], name: &str) -> Option<String> {
    fields(head)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn field_all(head: &[u8], name: &str) -> Vec<String> {
    fields(head)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// The length of the chunked body at the start of `buf` (through its final CRLF), once complete.
fn chunked_len(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let eol = i + crlf_at(&buf[i..])?;
        let size = buf[i..eol].split(|&b| b == b';').next().unwrap_or(b"");
        let size = usize::from_str_radix(std::str::from_utf8(size).ok()?.trim(), 16).ok()?;
        i = eol + 2;
        if size == 0 {
            loop {
                let eol = i + crlf_at(&buf[i..])?;
                let empty = eol == i;
                i = eol + 2;
                if empty {
                    return Some(i);
                }
            }
        }
        if buf.len() < i + size + 2 {
            return None;
        }
        i += size + 2;
    }
}

/// The status code of a response message.
fn status_of(msg: &[u8]) -> u16 {
    let line = String::from_utf8_lossy(&msg[..crlf_at(msg).unwrap_or(msg.len())]).into_owned();
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {line:?}"))
}

/// The length of the whole message at the start of `buf`, once complete. A response framed by
/// neither Content-Length nor chunked coding ends at close, so it is never complete here.
fn message_len(buf: &[u8], response: bool) -> Option<usize> {
    let h = head_end(buf)?;
    let head = &buf[..h];
    if response {
        let st = status_of(head);
        if (100..200).contains(&st) || st == 204 || st == 304 {
            return Some(h);
        }
    }
    let chunked = field_all(head, "transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return chunked_len(&buf[h..]).map(|n| h + n);
    }
    match field(head, "content-length") {
        Some(n) => {
            let n: usize = n.parse().ok()?;
            (buf.len() >= h + n).then_some(h + n)
        }
        None if response => None,
        None => Some(h),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The first line of a message.
fn first_line(msg: &[u8]) -> String {
    text(&msg[..crlf_at(msg).unwrap_or(msg.len())])
}

/// The head of a complete message.
fn head_of(msg: &[u8]) -> &[u8] {
    &msg[..head_end(msg).expect("a complete head")]
}

/// The body bytes of a complete message, as sent (chunk framing and trailers included).
fn body_of(msg: &[u8]) -> &[u8] {
    &msg[head_end(msg).expect("a complete head")..]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The raw recording upstream
// ---------------------------------------------------------------------------------------------

/// What the recorder does with a complete request.
enum Act {
    /// Write these bytes and wait for the next request on the connection.
    Send(Vec<u8>),
    /// Write these parts 100 ms apart, then wait for the next request.
    SendParts(Vec<Vec<u8>>),
    /// Close without answering.
    Close,
    /// Answer nothing; keep reading until the peer closes (at most 10 s).
    Hang,
}

/// A complete request as the recorder saw it.
struct Req<'a> {
    /// Its position on that connection (0-based).
    index: usize,
    bytes: &'a [u8],
}

impl Req<'_> {
    /// The request target from the request line.
    fn target(&self) -> String {
        first_line(self.bytes)
            .split(' ')
            .nth(1)
            .unwrap_or("")
            .to_string()
    }
}

type Script = dyn Fn(&Req) -> Act + Send + Sync;

/// Bytes kept per connection; more are counted, not kept.
const RECORD_CAP: usize = 4 << 20;

struct RawState {
    stop: AtomicBool,
    total: AtomicU64,
    /// Bytes each connection received, by accept number.
    received: Mutex<Vec<Vec<u8>>>,
    /// Complete requests: (connection, bytes).
    requests: Mutex<Vec<(usize, Vec<u8>)>>,
    /// Clones of the open connections, shut down on drop.
    open: Mutex<Vec<TcpStream>>,
    script: Box<Script>,
}

/// An HTTP/1.1 upstream on 127.0.0.1 that records the exact bytes it receives per connection
/// and answers each complete request as its script says.
struct RawUpstream {
    port: u16,
    st: Arc<RawState>,
}

/// `200 OK` with the body `ok`, kept alive.
fn ok_answer() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Raw: 1\r\n\r\nok".to_vec()
}

impl RawUpstream {
    fn start(script: impl Fn(&Req) -> Act + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the raw upstream");
        let port = listener.local_addr().unwrap().port();
        let st = Arc::new(RawState {
            stop: AtomicBool::new(false),
            total: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            open: Mutex::new(Vec::new()),
            script: Box::new(script),
        });
        let st2 = st.clone();
        thread::spawn(move || {
            for s in listener.incoming() {
                if st2.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                let n = {
                    let mut r = st2.received.lock().unwrap();
                    r.push(Vec::new());
                    r.len() - 1
                };
                if let Ok(c) = s.try_clone() {
                    st2.open.lock().unwrap().push(c);
                }
                let st3 = st2.clone();
                thread::spawn(move || {
                    serve_raw(&s, n, &st3);
                    let _ = s.shutdown(Shutdown::Both);
                });
            }
        });
        RawUpstream { port, st }
    }

    /// Answers every request with [`ok_answer`].
    fn ok() -> RawUpstream {
        RawUpstream::start(|_| Act::Send(ok_answer()))
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Bytes received over all connections.
    fn total(&self) -> u64 {
        self.st.total.load(Ordering::SeqCst)
    }

    fn conns(&self) -> usize {
        self.st.received.lock().unwrap().len()
    }

    /// Everything received, all connections in accept order.
    fn received(&self) -> Vec<u8> {
        self.st.received.lock().unwrap().concat()
    }

    /// Complete requests received so far.
    fn requests(&self) -> Vec<Vec<u8>> {
        self.st
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// The complete requests whose request line is `line`, with their connection numbers.
    fn with_line(&self, line: &str) -> Vec<(usize, Vec<u8>)> {
        self.st
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| first_line(b) == line)
            .cloned()
            .collect()
    }

    /// The one complete request with request line `line`.
    fn only(&self, line: &str) -> Vec<u8> {
        let found = self.with_line(line);
        assert_eq!(
            found.len(),
            1,
            "the upstream should have seen {line:?} exactly once; it saw requests {:?}",
            self.requests()
                .iter()
                .map(|r| first_line(r))
                .collect::<Vec<_>>()
        );
        found.into_iter().next().unwrap().1
    }

    /// Asserts not one byte reached this upstream.
    fn assert_untouched(&self, what: &str) {
        assert_eq!(
            self.total(),
            0,
            "{what}: the upstream received {:?}",
            text(&self.received())
        );
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.st.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        );
        for s in self.st.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn record(st: &RawState, n: usize, data: &[u8]) {
    st.total.fetch_add(data.len() as u64, Ordering::SeqCst);
    let mut r = st.received.lock().unwrap();
    let room = RECORD_CAP.saturating_sub(r[n].len());
    r[n].extend_from_slice(&data[..data.len().min(room)]);
}

fn serve_raw(mut s: &TcpStream, n: usize, st: &RawState) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_nodelay(true);
    let born = Instant::now();
    let mut buf: Vec<u8> = Vec::new();
    let mut index = 0;
    let mut tmp = vec![0u8; 64 * 1024];
    let mut hang_until: Option<Instant> = None;
    loop {
        if hang_until.is_none() {
            while let Some(len) = message_len(&buf, false) {
                let bytes: Vec<u8> = buf.drain(..len).collect();
                st.requests.lock().unwrap().push((n, bytes.clone()));
                let act = (st.script)(&Req {
                    index,
                    bytes: &bytes,
                });
                index += 1;
                match act {
                    Act::Send(b) => {
                        if s.write_all(&b).is_err() {
                            return;
                        }
                    }
                    Act::SendParts(parts) => {
                        for (i, p) in parts.iter().enumerate() {
                            if i > 0 {
                                thread::sleep(Duration::from_millis(100));
                            }
                            if s.write_all(p).is_err() {
                                return;
                            }
                        }
                    }
                    Act::Close => return,
                    Act::Hang => {
                        hang_until = Some(Instant::now() + Duration::from_secs(10));
                        break;
                    }
                }
            }
        }
        if st.stop.load(Ordering::SeqCst)
            || born.elapsed() > Duration::from_secs(60)
            || hang_until.is_some_and(|t| Instant::now() > t)
        {
            return;
        }
        match s.read(&mut tmp) {
            Ok(0) => return,
            Ok(k) => {
                record(st, n, &tmp[..k]);
                if buf.len() < RECORD_CAP {
                    buf.extend_from_slice(&tmp[..k]);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A raw client: whole response messages as bytes
// ---------------------------------------------------------------------------------------------

struct RawClient {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    fn connect(port: u16) -> RawClient {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
        s.set_nodelay(true).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        RawClient { s, buf: Vec::new() }
    }

    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write to the proxy");
    }

    /// Reads one whole response message (an interim 1xx head is one of its own) within
    /// `within`. A response delimited by close is returned at close.
    fn response(&mut self, within: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + within;
        let mut tmp = [0u8; 16 * 1024];
        loop {
            if let Some(n) = message_len(&self.buf, true) {
                return Ok(self.buf.drain(..n).collect());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no whole response; got {:?}", text(&self.buf)),
                ));
            }
            self.s.set_read_timeout(Some(deadline - now)).unwrap();
            match self.s.read(&mut tmp) {
                Ok(0) if head_end(&self.buf).is_some() => {
                    return Ok(std::mem::take(&mut self.buf));
                }
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("closed; got {:?}", text(&self.buf)),
                    ))
                }
                Ok(k) => self.buf.extend_from_slice(&tmp[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// True when nothing arrives for `d`.
    fn quiet_for(&mut self, d: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.s.set_read_timeout(Some(d)).unwrap();
        let mut b = [0u8; 1];
        matches!(self.s.peek(&mut b), Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

// ---------------------------------------------------------------------------------------------
// Routes, proxies and requests
// ---------------------------------------------------------------------------------------------

/// A route `uri` to the recorder, with `extra` fields merged into its `upstream`.
fn raw_route(id: &str, uri: &str, up: &RawUpstream, extra: Value) -> Value {
    let mut upstream = json!({"type": "roundrobin", "nodes": {up.addr(): 1}});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            upstream[k] = v;
        }
    }
    json!({"id": id, "uri": uri, "upstream": upstream})
}

/// `openid-connect`, bearer only, tokens checked with the RSA1 public key: no IdP involved.
fn bearer_plugin() -> Value {
    json!({
        "client_id": "portcullis",
        "client_secret": "secret",
        "discovery": "http://127.0.0.1:1/.well-known/openid-configuration",
        "bearer_only": true,
        "public_key": RSA1_PUBLIC_PEM,
        "claim_validator": {"issuer": {"valid_issuers": [ISSUER]}},
    })
}

fn token() -> String {
    SigningKey::rsa1().mint(&claims(ISSUER))
}

/// Sends `raw` on a fresh connection and reads the answer.
fn send(port: u16, raw: &[u8]) -> Response {
    let mut c = Client::connect(port);
    c.write(raw);
    c.read_response()
}

/// `GET /x` with `Host: host` (written as is), and a bearer token when given.
fn get_host(port: u16, host: &str, token: Option<&str>) -> Response {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    send(
        port,
        format!("GET /x HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n").as_bytes(),
    )
}

/// Asserts `r` is the 401 of a missing bearer token.
fn assert_challenge(r: &Response, what: &str) {
    assert_eq!(
        r.status,
        401,
        "{what}: expected the protected route's 401; headers {:?} body {:?}",
        r.headers,
        r.text()
    );
    let ch = r.header("www-authenticate").unwrap_or("");
    assert!(
        ch.starts_with("Bearer"),
        "{what}: 401 without a Bearer challenge: {ch:?}"
    );
}

fn assert_400(r: &Response, what: &str) {
    assert_eq!(
        r.status,
        400,
        "{what}: expected 400; headers {:?} body {:?}",
        r.headers,
        r.text()
    );
    assert_eq!(
        r.json()["error_msg"],
        "400 Bad Request",
        "{what}: body {:?}",
        r.text()
    );
}

/// Waits until the public key route accepts `token` on `host` (bounded).
fn warm_up(proxy: &Proxy, host: &str, token: &str) {
    let mut last = None;
    let ok = eventually(Duration::from_secs(5), || {
        let r = get_host(proxy.port, host, Some(token));
        let ok = r.status == 200;
        last = Some((r.status, r.text()));
        ok
    });
    assert!(ok, "a valid token was never accepted: {last:?}");
}

// ---------------------------------------------------------------------------------------------
// 1. Host
// ---------------------------------------------------------------------------------------------

struct HostSetup {
    echo: Upstream,
    raw: RawUpstream,
    proxy: Proxy,
    token: String,
}

/// Protected routes for `secure.example.com`, `*.internal.example` and the `hosts` list
/// `list-a.example`/`list-b.example` (to the echo upstream), and a public `/*` (to the recorder).
fn host_setup() -> HostSetup {
    let echo = Upstream::start("protected");
    let raw = RawUpstream::ok();
    let mut secure = oidc_route("secure", "/*", &echo, bearer_plugin());
    secure["host"] = json!("secure.example.com");
    let mut wild = oidc_route("wild", "/*", &echo, bearer_plugin());
    wild["host"] = json!("*.internal.example");
    let mut list = oidc_route("list", "/*", &echo, bearer_plugin());
    list["hosts"] = json!(["list-a.example", "list-b.example"]);
    let public = raw_route("public", "/*", &raw, json!({}));
    let proxy = Proxy::start(base_config(vec![secure, wild, list, public]));
    let token = token();
    warm_up(&proxy, "secure.example.com", &token);
    raw.assert_untouched("warm-up");
    HostSetup {
        echo,
        raw,
        proxy,
        token,
    }
}

#[test]
fn host_spellings_reach_the_protected_route() {
    let s = host_setup();
    let cases = [
        ("SECURE.example.com", "secure.example.com"),
        ("secure.example.com.", "secure.example.com"),
        ("secure.example.com.:9080", "secure.example.com:9080"),
        ("Secure.Example.Com.", "secure.example.com"),
        ("SECURE.Example.com.:8080", "secure.example.com:8080"),
        ("secure.example.com:", "secure.example.com"),
        ("A.INTERNAL.EXAMPLE.", "a.internal.example"),
        ("b.Internal.Example:81", "b.internal.example:81"),
        ("LIST-B.EXAMPLE.", "list-b.example"),
        ("list-a.example.:1", "list-a.example:1"),
    ];
    let before = s.echo.requests();
    for (host, _) in cases {
        assert_challenge(&get_host(s.proxy.port, host, None), host);
    }
    s.raw
        .assert_untouched("Host spellings of protected hosts without a token");
    assert_eq!(
        s.echo.requests(),
        before,
        "a 401 must not reach the protected upstream"
    );

    for (host, normal) in cases {
        let e = get_host(s.proxy.port, host, Some(&s.token)).echo();
        assert_eq!(e.path, "/x", "{host}");
        assert_eq!(
            e.header_all("host"),
            vec![normal],
            "{host}: Host the upstream saw"
        );
        assert_eq!(
            e.header_all("x-forwarded-host"),
            vec![normal],
            "{host}: X-Forwarded-Host the upstream saw"
        );
    }
    s.raw
        .assert_untouched("Host spellings of protected hosts with a token");
}

#[test]
fn malformed_hosts_are_400_and_reach_no_route() {
    let s = host_setup();
    let label300 = format!("{}.example.com", "a".repeat(300));
    let label64 = format!("{}.secure.example.com", "a".repeat(64));
    // 254 bytes of valid labels ending in the protected name: one byte over the longest name.
    let long_name = format!("{}.secure.example.com", ["abcdefghi"; 23].join("."));
    assert_eq!(long_name.len(), 248);
    let long_name = format!("abcde.{long_name}");
    assert_eq!(long_name.len(), 254);
    let bad = [
        "secure.example.com:80:80",
        "secure.example.com:8o",
        "secure..example.com",
        "secure.example.com:99999",
        "secure.example.com:65536",
        "secure.example.com:123456",
        "secure.example.com:-1",
        "secure.example.com:+80",
        "secure.example.com..",
        ".secure.example.com",
        "secure.example.com/x",
        "secure.example.com@public.example",
        "public.example@secure.example.com",
        "secure.example.com,public.example",
        "secure example.com",
        "secure.example.com\t.",
        "[::1",
        "[::1]x",
        "[::1]:80:80",
        "[]",
        ".",
        label300.as_str(),
        label64.as_str(),
        long_name.as_str(),
        "",
    ];
    let before = s.echo.requests();
    for host in bad {
        assert_400(&get_host(s.proxy.port, host, None), host);
        assert_400(&get_host(s.proxy.port, host, Some(&s.token)), host);
    }
    // No Host at all in HTTP/1.1, and two of them.
    assert_400(&send(s.proxy.port, b"GET /x HTTP/1.1\r\n\r\n"), "no Host");
    assert_400(
        &send(
            s.proxy.port,
            b"GET /x HTTP/1.1\r\nHost: public.example\r\nHost: secure.example.com\r\n\r\n",
        ),
        "two Hosts",
    );
    s.raw.assert_untouched("malformed Host");
    assert_eq!(s.echo.requests(), before, "malformed Host reached upstream");
}

#[test]
fn absolute_form_targets_use_their_authority() {
    let s = host_setup();
    let before = s.echo.requests();
    for target in [
        "http://SECURE.example.com./x",
        "http://secure.example.com:9080/x",
        "HTTP://Secure.Example.Com/x",
        "https://secure.example.com./x",
        "http://a.internal.example./x",
    ] {
        let r = send(
            s.proxy.port,
            format!("GET {target} HTTP/1.1\r\nHost: public.example\r\n\r\n").as_bytes(),
        );
        assert_challenge(&r, target);
    }
    for target in [
        "http://u@secure.example.com/x",
        "http://u:p@public.example/x",
        "http://@public.example/x",
        "http://secure.example.com:80:80/x",
        "http://secure..example.com/x",
        "http:///x",
    ] {
        let r = send(
            s.proxy.port,
            format!("GET {target} HTTP/1.1\r\nHost: public.example\r\n\r\n").as_bytes(),
        );
        assert_400(&r, target);
    }
    s.raw
        .assert_untouched("absolute-form targets for protected hosts");
    assert_eq!(s.echo.requests(), before);

    // With a token the authority is what the upstream sees, not the Host header.
    let r = send(
        s.proxy.port,
        format!(
            "GET http://SECURE.example.com./x?q=1 HTTP/1.1\r\nHost: public.example\r\nAuthorization: Bearer {}\r\n\r\n",
            s.token
        )
        .as_bytes(),
    );
    let e = r.echo();
    assert_eq!(e.path, "/x?q=1");
    assert_eq!(e.header_all("host"), vec!["secure.example.com"]);
    assert_eq!(e.header_all("x-forwarded-host"), vec!["secure.example.com"]);

    // And a public authority goes to the public route even with a protected Host header.
    let r = send(
        s.proxy.port,
        b"GET http://Public.Example./y HTTP/1.1\r\nHost: secure.example.com\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{:?}", r.text());
    let seen = s.raw.only("GET /y HTTP/1.1");
    assert_eq!(field_all(&seen, "host"), vec!["public.example"]);
    assert_eq!(field_all(&seen, "x-forwarded-host"), vec!["public.example"]);
}

#[test]
fn public_hosts_still_reach_the_catch_all() {
    let s = host_setup();
    let name253 = format!("a.{}.example.com", ["abcdefghi"; 24].join("."));
    assert_eq!(name253.len(), 253);
    let cases = [
        ("public.example", "public.example"),
        ("PUBLIC.Example.:8080", "public.example:8080"),
        ("public.example:", "public.example"),
        ("a_b.example", "a_b.example"),
        ("secure.example.com.evil", "secure.example.com.evil"),
        ("secure-example.com", "secure-example.com"),
        ("127.0.0.1:9080", "127.0.0.1:9080"),
        ("[::1]", "[::1]"),
        ("[FE80::A]:443", "[fe80::a]:443"),
        ("internal.example", "internal.example"),
        (name253.as_str(), name253.as_str()),
    ];
    let before = s.echo.requests();
    for (i, (host, normal)) in cases.iter().enumerate() {
        let r = send(
            s.proxy.port,
            format!("GET /pub/{i} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "{host}: {:?}", r.text());
        assert_eq!(r.text(), "ok", "{host}");
        let seen = s.raw.only(&format!("GET /pub/{i} HTTP/1.1"));
        assert_eq!(field_all(&seen, "host"), vec![*normal], "{host}");
        assert_eq!(
            field_all(&seen, "x-forwarded-host"),
            vec![*normal],
            "{host}"
        );
    }
    assert_eq!(
        s.echo.requests(),
        before,
        "public hosts went to the protected upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Request targets
// ---------------------------------------------------------------------------------------------

/// An exact protected `/admin` (to the echo upstream) and a public `/*` (to the recorder).
fn target_setup() -> (Upstream, RawUpstream, Proxy, String) {
    let echo = Upstream::start("admin");
    let raw = RawUpstream::ok();
    let admin = oidc_route("admin", "/admin", &echo, bearer_plugin());
    let all = raw_route("all", "/*", &raw, json!({}));
    let proxy = Proxy::start(base_config(vec![admin, all]));
    let t = token();
    let mut last = None;
    let ok = eventually(Duration::from_secs(5), || {
        let auth = format!("Bearer {t}");
        let r = proxy
            .client()
            .request("GET", "/admin", &[("Authorization", &auth)], b"");
        last = Some((r.status, r.text()));
        r.status == 200
    });
    assert!(ok, "a valid token was never accepted on /admin: {last:?}");
    raw.assert_untouched("warm-up");
    (echo, raw, proxy, t)
}

fn get_target(port: u16, target: &[u8], token: Option<&str>) -> Response {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: h.example\r\n");
    if let Some(t) = token {
        req.extend_from_slice(format!("Authorization: Bearer {t}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    send(port, &req)
}

#[test]
fn fragments_and_bytes_outside_the_uri_grammar_are_400() {
    let (echo, raw, proxy, t) = target_setup();
    let before = echo.requests();
    assert_challenge(&get_target(proxy.port, b"/admin", None), "/admin");
    let bad: Vec<&[u8]> = vec![
        b"/admin#x",
        b"/admin?x#y",
        b"/admin#",
        b"/admin/#/../x",
        b"/#/admin",
        b"http://h.example/admin#x",
        b"http://h.example#x/admin",
        b"/a\"b",
        b"/a<b",
        b"/a>b",
        b"/a{b",
        b"/a}b",
        b"/a`b",
        b"/caf\xe9",
        b"/admin\xe9",
        b"/a\x7fb",
        b"/a\x01b",
        b"/p?q=\"x\"",
        b"/p?q=<x>",
        b"/p?q=\xe9",
    ];
    for target in &bad {
        let what = text(target);
        assert_400(&get_target(proxy.port, target, None), &what);
        assert_400(&get_target(proxy.port, target, Some(&t)), &what);
    }
    raw.assert_untouched("targets with # or bytes outside the URI grammar");
    assert_eq!(echo.requests(), before, "a refused target reached /admin");
}

#[test]
fn encoded_fragments_brackets_and_braces_still_work() {
    let (echo, raw, proxy, t) = target_setup();
    // `%23` is a path byte, not a fragment: the catch-all gets it, encoded as sent.
    for (target, line) in [
        ("/admin%23x", "GET /admin%23x HTTP/1.1"),
        ("/p?a[]=1&b={x}", "GET /p?a[]=1&b={x} HTTP/1.1"),
        ("/p?q=`x`|^[]", "GET /p?q=`x`|^[] HTTP/1.1"),
        ("/p/[a]|b^c", "GET /p/[a]|b^c HTTP/1.1"),
        ("/p?x=%23y", "GET /p?x=%23y HTTP/1.1"),
    ] {
        let r = get_target(proxy.port, target.as_bytes(), None);
        assert_eq!(r.status, 200, "{target}: {:?}", r.text());
        raw.only(line);
    }
    // An absolute-form target without a path means `/`.
    for (target, line) in [
        ("http://h.example?x=1", "GET /?x=1 HTTP/1.1"),
        ("http://h2.example", "GET / HTTP/1.1"),
    ] {
        let r = get_target(proxy.port, target.as_bytes(), None);
        assert_eq!(r.status, 200, "{target}: {:?}", r.text());
        raw.only(line);
    }
    let seen = raw.only("GET /?x=1 HTTP/1.1");
    assert_eq!(field_all(&seen, "host"), vec!["h.example"]);
    // The protected route still serves its own path and query with a token.
    let before = echo.requests();
    let e = get_target(proxy.port, b"/admin?x=1", Some(&t)).echo();
    assert_eq!(e.path, "/admin?x=1");
    assert_eq!(echo.requests(), before + 1);
    assert!(
        raw.with_line("GET /admin HTTP/1.1").is_empty()
            && raw.with_line("GET /admin?x=1 HTTP/1.1").is_empty(),
        "/admin reached the catch-all"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Chunked trailers and extensions
// ---------------------------------------------------------------------------------------------

/// A proxy with `/*` to the recorder and `limits`.
fn plain_setup(raw: &RawUpstream, limits: Value) -> Proxy {
    let mut cfg = base_config(vec![raw_route("all", "/*", raw, json!({}))]);
    if !limits.is_null() {
        cfg["limits"] = limits;
    }
    Proxy::start(cfg)
}

/// How a request is written: all at once, head then body, or head, data, then trailers.
#[derive(Clone, Copy, Debug)]
enum Delivery {
    Whole,
    HeadFirst,
    TrailersLate,
}

/// Sends a chunked POST to `path` whose body is `data` then `trailers` (each raw bytes), as
/// `how` says, and reads the answer.
fn chunked_post(port: u16, path: &str, data: &[u8], trailers: &[u8], how: Delivery) -> Response {
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut c = Client::connect(port);
    let pause = || thread::sleep(Duration::from_millis(100));
    let all = [head.as_bytes(), data, trailers].concat();
    match how {
        Delivery::Whole => c.write(&all),
        Delivery::HeadFirst => {
            c.write(head.as_bytes());
            pause();
            c.write(&[data, trailers].concat());
        }
        Delivery::TrailersLate => {
            c.write(head.as_bytes());
            pause();
            c.write(data);
            pause();
            c.write(trailers);
        }
    }
    c.read_response_for("POST")
}

const DELIVERIES: [Delivery; 3] = [Delivery::Whole, Delivery::HeadFirst, Delivery::TrailersLate];

#[test]
fn request_trailers_pass_only_ordinary_fields() {
    let raw = RawUpstream::ok();
    let proxy = plain_setup(&raw, Value::Null);
    let data = b"5\r\nhello\r\n0\r\n";
    let trailers = b"X-Checksum: abc\r\n\
        X-Userinfo: forged\r\n\
        X_Access_Token: f\r\n\
        x-access-token: f2\r\n\
        X-ID-Token: i\r\n\
        X-Refresh-Token: r\r\n\
        X_Userinfo: f3\r\n\
        Connection: close\r\n\
        Content-Length: 5\r\n\
        Host: evil\r\n\
        Authorization: Bearer x\r\n\
        Transfer-Encoding: chunked\r\n\
        TE: trailers\r\n\
        Trailer: X-Checksum\r\n\
        Keep-Alive: timeout=1\r\n\
        Upgrade: h2c\r\n\
        Forwarded: for=6.6.6.6\r\n\
        X-Forwarded-For: 6.6.6.6\r\n\
        X-Forwarded-Host: evil\r\n\
        X-Real-IP: 6.6.6.6\r\n\
        X-Trace: 1\r\n\
        \r\n";
    for (i, how) in DELIVERIES.iter().enumerate() {
        let path = format!("/t/{i}");
        let r = chunked_post(proxy.port, &path, data, trailers, *how);
        assert_eq!(r.status, 200, "{how:?}: {:?}", r.text());
        let seen = raw.only(&format!("POST {path} HTTP/1.1"));
        assert_eq!(
            text(body_of(&seen)),
            "5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Trace: 1\r\n\r\n",
            "{how:?}: the body and trailers the upstream saw"
        );
        let head = head_of(&seen);
        assert_eq!(field_all(head, "transfer-encoding"), vec!["chunked"]);
        assert!(field(head, "content-length").is_none(), "{}", text(head));
    }
    // Without trailers the body passes as it came.
    let r = chunked_post(
        proxy.port,
        "/t/none",
        b"3\r\nabc\r\n0\r\n",
        b"\r\n",
        Delivery::HeadFirst,
    );
    assert_eq!(r.status, 200);
    let seen = raw.only("POST /t/none HTTP/1.1");
    assert_eq!(text(body_of(&seen)), "3\r\nabc\r\n0\r\n\r\n");
}

#[test]
fn malformed_request_trailers_are_400_and_never_complete_upstream() {
    let raw = RawUpstream::ok();
    let proxy = plain_setup(&raw, Value::Null);
    let data = b"5\r\nhello\r\n0\r\n";
    let bad: [(&str, &[u8]); 8] = [
        ("NUL", b"X-Bad: a\x00b\r\n\r\n"),
        ("control byte", b"X-Bad: a\x01b\r\n\r\n"),
        ("DEL", b"X-Bad: a\x7fb\r\n\r\n"),
        ("obs-fold", b"X-Ok: a\r\n X-Bad: folded\r\n\r\n"),
        ("obs-fold with tab", b"X-Ok: a\r\n\tX-Bad\r\n\r\n"),
        ("missing colon", b"X-Bad value\r\n\r\n"),
        ("space in the name", b"X-Bad x: v\r\n\r\n"),
        ("empty name", b": X-Bad\r\n\r\n"),
    ];
    for (i, (why, trailers)) in bad.iter().enumerate() {
        for (j, how) in DELIVERIES.iter().enumerate() {
            let path = format!("/bad/{i}/{j}");
            let r = chunked_post(proxy.port, &path, data, trailers, *how);
            assert_400(&r, &format!("{why} ({how:?})"));
            assert!(
                raw.with_line(&format!("POST {path} HTTP/1.1")).is_empty(),
                "{why} ({how:?}): the upstream got a whole request"
            );
        }
    }
    let got = raw.received();
    assert!(
        !contains(&got, b"X-Bad") && !contains(&got, b"X-Ok") && raw.requests().is_empty(),
        "trailers of refused bodies reached the upstream: {:?}",
        text(&got)
    );
    // A bare LF ends no trailer line either.
    let r = chunked_post(
        proxy.port,
        "/bad/lf",
        data,
        b"X-Bad: a\nX-B: b\r\n\r\n",
        Delivery::Whole,
    );
    assert_400(&r, "bare LF in trailers");
    assert!(raw.requests().is_empty());
}

#[test]
fn chunk_extensions_count_against_the_body_cap() {
    let raw = RawUpstream::ok();
    let proxy = plain_setup(&raw, json!({"max_body_bytes": 1000}));
    let ext = "e".repeat(3000);
    let many: String = (0..10).map(|_| format!("1;{ext}\r\nA\r\n")).collect();
    let many = format!("{many}0\r\n");
    let near = format!(
        "{:x};x={}\r\n{}\r\n0\r\n",
        900,
        "e".repeat(200),
        "B".repeat(900)
    );
    for (name, body) in [("many", many.as_str()), ("near", near.as_str())] {
        for (j, how) in [Delivery::Whole, Delivery::HeadFirst].iter().enumerate() {
            let path = format!("/ext/{name}/{j}");
            let r = chunked_post(proxy.port, &path, body.as_bytes(), b"\r\n", *how);
            assert_eq!(r.status, 413, "{name} {how:?}: {:?}", r.text());
            assert!(
                raw.with_line(&format!("POST {path} HTTP/1.1")).is_empty(),
                "{name} {how:?}: the upstream got the whole body"
            );
        }
    }
    assert!(
        raw.total() < 2 * 1100 + 400,
        "the upstream got {} bytes of refused bodies",
        raw.total()
    );
    // Still works: data plus extensions under the cap, passed as sent.
    let ok_small: String = (0..10).map(|_| "1;a=b\r\nA\r\n").collect();
    let ok_small = format!("{ok_small}0\r\n");
    let ok_near = format!(
        "{:x};x={}\r\n{}\r\n0\r\n",
        900,
        "e".repeat(40),
        "B".repeat(900)
    );
    for (name, body) in [("small", ok_small.as_str()), ("near", ok_near.as_str())] {
        let path = format!("/ext-ok/{name}");
        let r = chunked_post(
            proxy.port,
            &path,
            body.as_bytes(),
            b"\r\n",
            Delivery::HeadFirst,
        );
        assert_eq!(r.status, 200, "{name}: {:?}", r.text());
        let seen = raw.only(&format!("POST {path} HTTP/1.1"));
        assert_eq!(text(body_of(&seen)), format!("{body}\r\n"), "{name}");
    }
}

#[test]
fn request_trailers_count_against_the_head_limits() {
    let raw = RawUpstream::ok();
    let proxy = plain_setup(&raw, json!({"max_header_bytes": 8192, "max_headers": 50}));
    let data = b"5\r\nhello\r\n0\r\n";
    // Over the bytes: 9 lines of 1000 bytes; over the lines: 60 short ones.
    let fat: String = (0..9)
        .map(|i| format!("X-F{i}: {}\r\n", "f".repeat(992)))
        .collect();
    let lots: String = (0..60).map(|i| format!("X-L{i}: 1\r\n")).collect();
    for (name, trailers) in [("bytes", &fat), ("lines", &lots)] {
        for (j, how) in DELIVERIES.iter().enumerate() {
            let path = format!("/big/{name}/{j}");
            let r = chunked_post(
                proxy.port,
                &path,
                data,
                format!("{trailers}\r\n").as_bytes(),
                *how,
            );
            assert_eq!(r.status, 431, "{name} {how:?}: {:?}", r.text());
            assert!(raw.with_line(&format!("POST {path} HTTP/1.1")).is_empty());
        }
    }
    assert!(
        !contains(&raw.received(), b"X-F0") && !contains(&raw.received(), b"X-L0"),
        "refused trailers reached the upstream"
    );
    // Still works: trailers within both limits are all passed on.
    let fit_bytes: String = (0..5)
        .map(|i| format!("X-F{i}: {}\r\n", "f".repeat(992)))
        .collect();
    let fit_lines: String = (0..40).map(|i| format!("X-L{i}: {i}\r\n")).collect();
    for (name, trailers) in [("bytes", &fit_bytes), ("lines", &fit_lines)] {
        let path = format!("/fit/{name}");
        let r = chunked_post(
            proxy.port,
            &path,
            data,
            format!("{trailers}\r\n").as_bytes(),
            Delivery::HeadFirst,
        );
        assert_eq!(r.status, 200, "{name}: {:?}", r.text());
        let seen = raw.only(&format!("POST {path} HTTP/1.1"));
        assert_eq!(
            text(body_of(&seen)),
            format!("5\r\nhello\r\n0\r\n{trailers}\r\n"),
            "{name}"
        );
    }
}

#[test]
fn endless_request_trailers_are_cut_off() {
    const MAX: u64 = 8192;
    let raw = RawUpstream::ok();
    let proxy = plain_setup(&raw, json!({"max_header_bytes": MAX}));
    let mut c = RawClient::connect(proxy.port);
    c.send(b"POST /endless HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n");
    let mut w = c.s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let writer = thread::spawn(move || {
        let block: Vec<u8> = (0..640)
            .flat_map(|i| format!("X-Pad-{i:03}: {}\r\n", "p".repeat(88)).into_bytes())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut sent = 0usize;
        while sent < 20 << 20 && Instant::now() < deadline {
            match w.write(&block) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
    });
    let started = Instant::now();
    let answer = c.response(Duration::from_secs(5));
    let took = started.elapsed();
    match &answer {
        Ok(msg) => assert_eq!(status_of(msg), 431, "{:?}", text(msg)),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            "neither 431 nor a close within 5 s: {e}"
        ),
    }
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop(c);
    writer.join().unwrap();
    assert!(
        raw.requests().is_empty(),
        "the upstream got a whole request"
    );
    assert!(
        raw.total() < MAX + 1024,
        "the upstream got {} bytes (limit {MAX})",
        raw.total()
    );
}

/// A chunked answer `hello` with `trailers` (raw lines, final CRLF included).
fn chunked_answer(trailers: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n{trailers}")
        .into_bytes()
}

#[test]
fn response_trailers_pass_only_ordinary_fields() {
    const FORGED: &str = "X-Checksum: abc\r\n\
        X-Userinfo: x\r\n\
        X_Userinfo: y\r\n\
        X-Access-Token: t\r\n\
        Connection: close\r\n\
        Content-Length: 3\r\n\
        Transfer-Encoding: chunked\r\n\
        X-Trace: 1\r\n\
        Authorization: Bearer z\r\n\
        X-Forwarded-For: 6.6.6.6\r\n\
        Keep-Alive: timeout=1\r\n\
        \r\n";
    let raw = RawUpstream::start(|r| {
        let t = r.target();
        let bad = "X-Ok: 1\r\n folded\r\n\r\n";
        let many: String = (0..600)
            .map(|i| format!("X-M{i}: 1\r\n"))
            .collect::<String>()
            + "\r\n";
        match t.as_str() {
            "/whole" => Act::Send(chunked_answer(FORGED)),
            "/split" => {
                let all = chunked_answer(FORGED);
                let cut = all.len() - FORGED.len() + 20;
                Act::SendParts(vec![all[..cut].to_vec(), all[cut..].to_vec()])
            }
            "/bad" => Act::Send(chunked_answer(bad)),
            "/many" => Act::Send(chunked_answer(&many)),
            _ => Act::Send(ok_answer()),
        }
    });
    let proxy = plain_setup(&raw, Value::Null);
    for path in ["/whole", "/split"] {
        let mut c = RawClient::connect(proxy.port);
        c.send(format!("GET {path} HTTP/1.1\r\nHost: h.example\r\n\r\n").as_bytes());
        let msg = c.response(Duration::from_secs(5)).expect("a whole answer");
        assert_eq!(status_of(&msg), 200, "{path}: {:?}", text(&msg));
        assert_eq!(
            text(body_of(&msg)),
            "5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Trace: 1\r\n\r\n",
            "{path}: trailers the client got"
        );
        // The connection goes on: the forged `Connection: close` trailer changed nothing.
        c.send(b"GET /next HTTP/1.1\r\nHost: h.example\r\n\r\n");
        let next = c.response(Duration::from_secs(5)).expect("a second answer");
        assert_eq!(status_of(&next), 200);
    }
    // A folded trailer line from the upstream is a 502 when the answer arrived whole.
    let mut c = RawClient::connect(proxy.port);
    c.send(b"GET /bad HTTP/1.1\r\nHost: h.example\r\n\r\n");
    let msg = c.response(Duration::from_secs(5)).expect("an answer");
    assert_eq!(status_of(&msg), 502, "{:?}", text(&msg));
    assert!(!contains(&msg, b"folded"));
    // More trailer lines than max_response_headers: a 502, or the answer cut short.
    let mut c = RawClient::connect(proxy.port);
    c.send(b"GET /many HTTP/1.1\r\nHost: h.example\r\n\r\n");
    match c.response(Duration::from_secs(5)) {
        Ok(msg) if status_of(&msg) == 502 => {}
        Ok(msg) => {
            // Cut: the head went out, the trailer section never does.
            assert_eq!(status_of(&msg), 200, "{:?}", text(&msg));
            assert!(chunked_len(body_of(&msg)).is_none(), "{:?}", text(&msg));
            assert!(!contains(&msg, b"X-M0:"), "{:?}", text(&msg));
        }
        Err(e) => panic!("neither a 502 nor a cut answer: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Upstream edges
// ---------------------------------------------------------------------------------------------

#[test]
fn only_idempotent_methods_are_replayed_on_a_dead_pooled_connection() {
    // Every request for /victim/* that is not the first on its connection is read, then the
    // connection closes without an answer: a pooled connection that died under the request.
    let raw = RawUpstream::start(|r| {
        if r.target().starts_with("/victim/") && r.index > 0 {
            Act::Close
        } else {
            Act::Send(ok_answer())
        }
    });
    let proxy = plain_setup(&raw, Value::Null);
    let mut c = proxy.client();
    let cases: [(&str, &[u8], bool); 10] = [
        ("GET", b"", true),
        ("PUT", b"hello", true),
        ("DELETE", b"", true),
        ("OPTIONS", b"", true),
        ("TRACE", b"", true),
        ("POST", b"hello", false),
        ("POST", b"", false),
        ("PATCH", b"hello", false),
        ("PURGE", b"", false),
        ("get", b"", false),
    ];
    for (i, (method, body, replayed)) in cases.iter().enumerate() {
        let warm = c.get(&format!("/warm/{i}"));
        assert_eq!(warm.status, 200, "warm-up before {method}");
        let path = format!("/victim/{i}");
        let conns_before = raw.conns();
        let r = c.request(method, &path, &[], body);
        let copies = raw.with_line(&format!("{method} {path} HTTP/1.1"));
        if *replayed {
            assert_eq!(r.status, 200, "{method}: {:?}", r.text());
            assert_eq!(r.text(), "ok");
            assert_eq!(copies.len(), 2, "{method} should be sent again once");
            assert_ne!(
                copies[0].0, copies[1].0,
                "{method}: replayed on the same connection"
            );
            assert_eq!(raw.conns(), conns_before + 1, "{method}");
        } else {
            assert_eq!(
                r.assert_json_error(502)["error_msg"],
                "502 Bad Gateway: invalid upstream response",
                "{method}"
            );
            assert_eq!(copies.len(), 1, "{method} must never be sent twice");
            assert_eq!(
                raw.conns(),
                conns_before,
                "{method}: a new connection was opened"
            );
        }
        for (_, copy) in &copies {
            assert_eq!(body_of(copy), *body, "{method}: body upstream");
        }
        // The client's connection stays usable after the 502.
        assert!(
            r.header("connection")
                .is_none_or(|v| !v.eq_ignore_ascii_case("close")),
            "{method}: {:?}",
            r.headers
        );
    }
}

#[test]
fn response_head_limits() {
    fn cookies(n: usize) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
        for i in 0..n {
            out.extend_from_slice(format!("Set-Cookie: c{i}=v{i}; Path=/\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\nok");
        out
    }
    fn big(n: usize) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: {}\r\n\r\nok",
            "b".repeat(n)
        )
        .into_bytes()
    }
    let raw = RawUpstream::start(|r| {
        let t = r.target();
        let n: usize = t.rsplit('/').next().unwrap().parse().unwrap_or(0);
        if t.starts_with("/cookies/") {
            Act::Send(cookies(n))
        } else if t.starts_with("/big/") {
            Act::Send(big(n))
        } else {
            Act::Send(ok_answer())
        }
    });
    let defaults = plain_setup(&raw, Value::Null);
    let mut c = defaults.client();
    let r = c.get("/cookies/300");
    assert_eq!(r.status, 200, "300 Set-Cookie lines: {:?}", r.text());
    let want: Vec<String> = (0..300).map(|i| format!("c{i}=v{i}; Path=/")).collect();
    assert_eq!(r.header_all("set-cookie"), want);
    assert_eq!(r.text(), "ok");
    let r = c.get("/big/60000");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-big").map(str::len), Some(60000));
    c.get("/big/70000").assert_json_error(502);
    assert_eq!(
        c.get("/ok").status,
        200,
        "the connection goes on after the 502"
    );

    let limited = plain_setup(
        &raw,
        json!({"max_response_headers": 100, "max_response_header_bytes": 4096}),
    );
    let mut c = limited.client();
    c.get("/cookies/300").assert_json_error(502);
    // 99 cookies and Content-Length: exactly 100 lines.
    let r = c.get("/cookies/99");
    assert_eq!(r.status, 200, "100 header lines with a limit of 100");
    assert_eq!(r.header_all("set-cookie").len(), 99);
    c.get("/cookies/100").assert_json_error(502);
    c.get("/big/5000").assert_json_error(502);
    let r = c.get("/big/3000");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-big").map(str::len), Some(3000));
}

#[test]
fn status_codes_outside_100_to_599_are_502() {
    let raw = RawUpstream::start(|r| {
        let t = r.target();
        let code = t.trim_start_matches("/status/");
        match code {
            "interim" => Act::Send(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            ),
            _ => Act::Send(
                format!("HTTP/1.1 {code} Odd\r\nContent-Length: 2\r\n\r\nok").into_bytes(),
            ),
        }
    });
    let proxy = plain_setup(&raw, Value::Null);
    let mut c = proxy.client();
    for code in ["000", "099", "001", "600", "999"] {
        let r = c.get(&format!("/status/{code}"));
        r.assert_json_error(502);
    }
    for (code, want) in [("599", 599), ("200", 200), ("interim", 200), ("418", 418)] {
        let r = c.get(&format!("/status/{code}"));
        assert_eq!(r.status, want, "{code}");
        assert_eq!(r.text(), "ok", "{code}");
    }
}

#[test]
fn expect_100_continue_only_for_http_1_1_clients() {
    let raw = RawUpstream::ok();
    let proxy = plain_setup(&raw, Value::Null);

    // HTTP/1.0: no interim answer, ever; the body sent late still goes through.
    let mut c = RawClient::connect(proxy.port);
    c.send(b"POST /e10 HTTP/1.0\r\nHost: h.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    assert!(
        c.quiet_for(Duration::from_millis(300)),
        "the proxy answered an HTTP/1.0 client before its body: {:?}",
        {
            let _ = c.s.set_read_timeout(Some(Duration::from_millis(100)));
            let mut b = [0u8; 256];
            let n = c.s.peek(&mut b).unwrap_or(0);
            text(&b[..n])
        }
    );
    c.send(b"hello");
    let msg = c.response(Duration::from_secs(5)).expect("an answer");
    assert_eq!(status_of(&msg), 200, "{:?}", text(&msg));
    assert!(!contains(&msg, b"100 Continue"));
    assert_eq!(body_of(&msg), b"ok");
    assert_eq!(body_of(&raw.only("POST /e10 HTTP/1.1")), b"hello");

    // HTTP/1.1: a 100 Continue before the body, then the answer.
    let mut c = RawClient::connect(proxy.port);
    c.send(b"POST /e11 HTTP/1.1\r\nHost: h.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    let interim = c
        .response(Duration::from_secs(3))
        .expect("an interim answer");
    assert_eq!(status_of(&interim), 100, "{:?}", text(&interim));
    c.send(b"hello");
    let msg = c.response(Duration::from_secs(5)).expect("an answer");
    assert_eq!(status_of(&msg), 200, "{:?}", text(&msg));
    assert_eq!(body_of(&raw.only("POST /e11 HTTP/1.1")), b"hello");
}

#[test]
fn gateway_errors_keep_the_client_connection() {
    let raw = RawUpstream::start(|r| {
        let t = r.target();
        if t.starts_with("/close") {
            Act::Close
        } else if t.starts_with("/hang") {
            Act::Hang
        } else {
            Act::Send(ok_answer())
        }
    });
    let timeouts = json!({"timeout": {"connect": 1, "send": 1, "read": 1}});
    let proxy = Proxy::start(base_config(vec![raw_route("all", "/*", &raw, timeouts)]));
    let mut c = proxy.client();
    let keeps = |r: &Response, what: &str| {
        assert!(
            r.header("connection")
                .is_none_or(|v| !v.eq_ignore_ascii_case("close")),
            "{what}: {:?}",
            r.headers
        );
    };
    // 502 on a fresh upstream connection (the pool is empty): not replayed.
    let r = c.get("/close/1");
    r.assert_json_error(502);
    keeps(&r, "GET 502");
    assert_eq!(raw.with_line("GET /close/1 HTTP/1.1").len(), 1);
    assert_eq!(c.get("/ok/1").text(), "ok");
    // A small POST that arrived whole.
    let r = c.request("POST", "/close/2", &[], b"hello");
    r.assert_json_error(502);
    keeps(&r, "POST 502");
    assert_eq!(raw.with_line("POST /close/2 HTTP/1.1").len(), 1);
    assert_eq!(c.get("/ok/2").text(), "ok");
    // 504 after timeout.read.
    for (method, body) in [("GET", &b""[..]), ("POST", &b"hello"[..])] {
        let started = Instant::now();
        let r = c.request(method, "/hang", &[], body);
        let took = started.elapsed();
        r.assert_json_error(504);
        keeps(&r, &format!("{method} 504"));
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{method}: 504 after {took:?}"
        );
        let r = c.get("/ok/after-504");
        assert_eq!(r.status, 200, "{method}: after a 504: {:?}", r.text());
    }
}
