//! What the upstream receives: forwarding headers, hop-by-hop headers, Host handling,
//! proxy-rewrite, HTTPS upstreams, and streamed (large, chunked) bodies both ways.

mod common;

use std::io::{self, Write};
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const MIB: u64 = 1024 * 1024;

/// A route `uri` to the round-robin upstream `up`, with the fields of `extra_upstream` added to
/// its `upstream`.
fn upstream_route(id: &str, uri: &str, up: &Upstream, extra_upstream: Value) -> Value {
    let mut upstream = json!({"type": "roundrobin", "nodes": nodes(&[(up, 1)])});
    if let Value::Object(m) = extra_upstream {
        for (k, v) in m {
            upstream[k] = v;
        }
    }
    json!({"id": id, "uri": uri, "upstream": upstream})
}

fn one_route(up: &Upstream, extra_upstream: Value, plugins: Option<Value>) -> Value {
    let mut r = upstream_route("1", "/*", up, extra_upstream);
    if let Some(p) = plugins {
        r["plugins"] = p;
    }
    r
}

/// A proxy with the single route [`one_route`].
fn start_one(up: &Upstream, extra_upstream: Value, plugins: Option<Value>) -> Proxy {
    Proxy::start(base_config(vec![one_route(up, extra_upstream, plugins)]))
}

/// A proxy with `/*` to `up`.
fn start_plain(up: &Upstream) -> Proxy {
    start_one(up, json!({}), None)
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).collect()
}

/// GET `path` with `headers` on `c`; returns the upstream echo.
fn echo_get(c: &mut Client, path: &str, headers: &[(&str, &str)]) -> Echo {
    c.request("GET", path, headers, b"").echo()
}

/// Every X-Forwarded-For entry the upstream saw, in order.
fn xff(e: &Echo) -> Vec<String> {
    e.header_all("x-forwarded-for")
        .iter()
        .flat_map(|v| split_list(v))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// X-Forwarded-* and Forwarded
// ---------------------------------------------------------------------------------------------

#[test]
fn forwarded_headers_are_set_for_an_untrusted_peer() {
    let up = Upstream::start("A");
    let p = start_plain(&up);
    let mut c = p.client();

    // Without client-sent forwarding headers.
    let e = echo_get(&mut c, "/f", &[("Host", "shop.example")]);
    assert_eq!(e.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(e.header("x-forwarded-proto"), Some(tls::scheme()));
    assert_eq!(e.header("x-forwarded-host"), Some("shop.example"));

    // Client-sent ones are dropped: the peer (127.0.0.1) is not trusted.
    let e = echo_get(
        &mut c,
        "/f",
        &[
            ("Host", "shop.example"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("Forwarded", "for=1.2.3.4;proto=https;host=evil.example"),
        ],
    );
    assert_eq!(
        xff(&e),
        vec!["127.0.0.1"],
        "spoofed X-Forwarded-For must be dropped"
    );
    assert_eq!(e.header_all("x-forwarded-proto"), vec![tls::scheme()]);
    assert_eq!(e.header_all("x-forwarded-host"), vec!["shop.example"]);
    assert!(
        !e.has("forwarded"),
        "spoofed Forwarded must be dropped: {:?}",
        e.headers
    );
}

#[test]
fn spoofed_x_forwarded_port_is_dropped_for_an_untrusted_peer() {
    // Every client-sent X-Forwarded-* header is dropped unless the peer is trusted.
    let up = Upstream::start("A");
    let p = start_plain(&up);
    let e = echo_get(
        &mut p.client(),
        "/f",
        &[("X-Forwarded-Port", "443"), ("X-Forwarded-Prefix", "/evil")],
    );
    assert!(
        e.header("x-forwarded-port") != Some("443"),
        "spoofed X-Forwarded-Port must not pass: {:?}",
        e.headers
    );
    assert!(
        !e.has("x-forwarded-prefix"),
        "spoofed X-Forwarded-Prefix must not pass: {:?}",
        e.headers
    );
}

fn trusted_case(trusted: Value) {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![one_route(&up, json!({}), None)]);
    cfg["trusted_addresses"] = trusted.clone();
    let p = Proxy::start(cfg);
    let mut c = p.client();
    let e = echo_get(
        &mut c,
        "/f",
        &[
            ("Host", "inner.example"),
            ("X-Forwarded-For", "1.2.3.4, 10.0.0.1"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "public.example"),
            ("Forwarded", "for=1.2.3.4;proto=https;host=public.example"),
        ],
    );
    assert_eq!(
        xff(&e),
        vec!["1.2.3.4", "10.0.0.1", "127.0.0.1"],
        "trusted {trusted}: client's X-Forwarded-For kept and the peer appended"
    );
    assert_eq!(
        e.header_all("x-forwarded-proto"),
        vec!["https"],
        "trusted {trusted}"
    );
    assert_eq!(
        e.header_all("x-forwarded-host"),
        vec!["public.example"],
        "trusted {trusted}"
    );
    assert_eq!(
        e.header("forwarded"),
        Some("for=1.2.3.4;proto=https;host=public.example"),
        "trusted {trusted}: Forwarded kept"
    );
    // Without client-sent headers the proxy still sets its own.
    let e = echo_get(&mut c, "/f", &[("Host", "inner.example")]);
    assert_eq!(e.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(e.header("x-forwarded-proto"), Some(tls::scheme()));
    assert_eq!(e.header("x-forwarded-host"), Some("inner.example"));
}

#[test]
fn forwarded_headers_are_kept_for_a_trusted_ip() {
    trusted_case(json!(["127.0.0.1"]));
}

#[test]
fn forwarded_headers_are_kept_for_a_trusted_cidr() {
    trusted_case(json!(["10.9.0.0/16", "127.0.0.0/8"]));
}

#[test]
fn untrusted_when_peer_is_outside_the_trusted_list() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![one_route(&up, json!({}), None)]);
    cfg["trusted_addresses"] = json!(["10.0.0.0/8", "192.0.2.7"]);
    let p = Proxy::start(cfg);
    let e = echo_get(
        &mut p.client(),
        "/f",
        &[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Proto", "https"),
        ],
    );
    assert_eq!(e.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(e.header_all("x-forwarded-proto"), vec![tls::scheme()]);
}

// ---------------------------------------------------------------------------------------------
// Hop-by-hop headers
// ---------------------------------------------------------------------------------------------

#[test]
fn hop_by_hop_request_headers_are_not_forwarded() {
    let up = Upstream::start("A");
    let p = start_plain(&up);
    let e = echo_get(
        &mut p.client(),
        "/hop",
        &[
            ("Connection", "keep-alive, X-Custom-Hop, x-other-hop"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("TE", "trailers, deflate"),
            ("Trailer", "X-Some-Trailer"),
            ("Upgrade", "foo/2"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Custom-Hop", "secret"),
            ("X-Other-Hop", "secret2"),
            ("X-End-To-End", "kept"),
        ],
    );
    for h in [
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "x-custom-hop",
        "x-other-hop",
    ] {
        assert!(!e.has(h), "{h} forwarded upstream: {:?}", e.headers);
    }
    for v in e.header_all("connection") {
        let v = v.to_ascii_lowercase();
        assert!(
            v == "keep-alive" || v == "close",
            "client's Connection header forwarded upstream: {v:?}"
        );
    }
    assert_eq!(e.header("x-end-to-end"), Some("kept"));
}

#[test]
fn hop_by_hop_response_headers_are_not_passed_back() {
    let up = Upstream::start("A");
    let p = start_plain(&up);
    let mut c = p.client();
    let r = c.get("/hop");
    assert_eq!(r.status, 200);
    for h in ["x-hop-resp", "proxy-connection", "upgrade", "keep-alive"] {
        assert!(
            r.header(h).is_none(),
            "{h} passed back to the client: {:?}",
            r.headers
        );
    }
    for v in r.header_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-hop-resp"),
            "upstream's Connection header passed back: {v:?}"
        );
    }
    assert_eq!(r.header("x-end-to-end"), Some("kept"));
    // Still keep-alive.
    assert_eq!(c.get("/after").status, 200);
}

// ---------------------------------------------------------------------------------------------
// Host handling and proxy-rewrite
// ---------------------------------------------------------------------------------------------

#[test]
fn pass_host_modes() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![
        upstream_route("pass", "/pass", &up, json!({"pass_host": "pass"})),
        upstream_route("node", "/node", &up, json!({"pass_host": "node"})),
        upstream_route(
            "rewrite",
            "/rewrite",
            &up,
            json!({"pass_host": "rewrite", "upstream_host": "backend.internal"}),
        ),
        upstream_route("default", "/default", &up, json!({})),
    ]));
    let mut c = p.client();
    let host = [("Host", "client.example")];
    let hosts = |e: &Echo| {
        e.header_all("host")
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let e = echo_get(&mut c, "/pass", &host);
    assert_eq!(hosts(&e), vec!["client.example"]);
    let e = echo_get(&mut c, "/default", &host);
    assert_eq!(
        hosts(&e),
        vec!["client.example"],
        "pass_host defaults to pass"
    );
    let e = echo_get(&mut c, "/node", &host);
    assert_eq!(
        hosts(&e),
        vec![up.addr()],
        "pass_host node sends the node's host:port"
    );
    let e = echo_get(&mut c, "/rewrite", &host);
    assert_eq!(hosts(&e), vec!["backend.internal"]);
}

#[test]
fn proxy_rewrite_uri_host_and_headers() {
    let up = Upstream::start("A");
    let plugins = json!({"proxy-rewrite": {
        "uri": "/internal/target",
        "host": "rewritten.example",
        "headers": {"X-Add": "added", "X-Replace": "new", "X-Remove": ""}
    }});
    let p = start_one(&up, json!({}), Some(plugins));
    let e = p
        .client()
        .request(
            "POST",
            "/public/path",
            &[
                ("Host", "client.example"),
                ("X-Replace", "old"),
                ("X-Remove", "bye"),
                ("X-Untouched", "same"),
            ],
            b"payload",
        )
        .echo();
    assert_eq!(e.path, "/internal/target");
    assert_eq!(e.header_all("host"), vec!["rewritten.example"]);
    assert_eq!(e.header_all("x-add"), vec!["added"]);
    assert_eq!(
        e.header_all("x-replace"),
        vec!["new"],
        "set replaces the client's value"
    );
    assert!(
        !e.has("x-remove"),
        "empty value removes the header: {:?}",
        e.headers
    );
    assert_eq!(e.header("x-untouched"), Some("same"));
    assert_eq!(e.method, "POST");
    assert_eq!(e.body_sha256, sha256_hex(b"payload"));
}

#[test]
fn proxy_rewrite_uri_keeps_the_query_string() {
    // APISIX appends the original query arguments to a rewritten uri.
    let up = Upstream::start("A");
    let plugins = json!({"proxy-rewrite": {"uri": "/internal"}});
    let p = start_one(&up, json!({}), Some(plugins));
    let e = p.get("/outer?a=1&b=2").echo();
    assert_eq!(e.path, "/internal?a=1&b=2");
}

// ---------------------------------------------------------------------------------------------
// HTTPS upstreams
// ---------------------------------------------------------------------------------------------

#[test]
fn https_upstream_via_upstream_scheme() {
    let up = Upstream::start_tls("TLS");
    let p = start_one(&up, json!({"scheme": "https"}), None);
    let mut c = p.client();
    for i in 0..20 {
        let e = c.get(&format!("/tls/{i}")).echo();
        assert_eq!(e.id, "TLS");
        assert_eq!(e.path, format!("/tls/{i}"));
    }
    let r = c.get("/tls/bytes/300000");
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), pattern_sha256(300_000));
    assert!(
        up.conns() <= 2,
        "21 GETs used {} TLS connections (keep-alive to an HTTPS upstream)",
        up.conns()
    );
    let e = c
        .request("POST", "/tls/post", &[], &pattern_bytes(100_000))
        .echo();
    assert_pattern_echo(&e, 100_000);
}

#[test]
fn https_upstream_keepalive_for_posts() {
    // Non-idempotent requests reuse pooled TLS connections too (as they do plain ones), so
    // POST-heavy APIs behind an HTTPS upstream do not pay a handshake per request.
    let plain = Upstream::start("PLAIN");
    let tls = Upstream::start_tls("TLS");
    let p = Proxy::start(base_config(vec![
        upstream_route("plain", "/plain/*", &plain, json!({})),
        upstream_route("tls", "/tls/*", &tls, json!({"scheme": "https"})),
    ]));
    let mut c = p.client();
    for i in 0..10 {
        let e = c
            .request("POST", &format!("/plain/{i}"), &[], b"data")
            .echo();
        assert_eq!(e.body_sha256, sha256_hex(b"data"));
        let e = c.request("POST", &format!("/tls/{i}"), &[], b"data").echo();
        assert_eq!(e.body_sha256, sha256_hex(b"data"));
    }
    assert!(
        plain.conns() <= 2,
        "10 POSTs used {} plain upstream connections",
        plain.conns()
    );
    assert!(
        tls.conns() <= 2,
        "10 POSTs used {} TLS upstream connections",
        tls.conns()
    );
}

#[test]
fn https_upstream_via_proxy_rewrite_scheme() {
    let up = Upstream::start_tls("TLS");
    let plugins = json!({"proxy-rewrite": {"scheme": "https"}});
    let p = start_one(&up, json!({}), Some(plugins));
    let e = p.get("/via-rewrite").echo();
    assert_eq!(e.id, "TLS");
    assert_eq!(e.path, "/via-rewrite");
}

#[test]
fn https_upstream_with_verification_rejects_self_signed() {
    let up = Upstream::start_tls("TLS");
    let p = start_one(
        &up,
        json!({"scheme": "https", "tls": {"verify": true}}),
        None,
    );
    let r = p.get("/verified");
    r.assert_json_error(502);
    assert_eq!(
        up.requests(),
        0,
        "no request may be sent over an unverified connection"
    );
}

// ---------------------------------------------------------------------------------------------
// Streaming bodies
// ---------------------------------------------------------------------------------------------

const RSS_LIMIT: u64 = 64 * MIB;

/// Asserts a peak RSS of the proxy (`rss` bytes) stays under [`RSS_LIMIT`]; `what` ends the
/// message.
fn assert_rss_within_limit(rss: u64, what: &str) {
    assert!(rss < RSS_LIMIT, "proxy peak RSS {} MiB {what}", rss / MIB);
}

/// POSTs to `path` with the head framed by `framing`, streams the body with `write_body` from
/// another thread (`what` names it if writing fails) and returns the upstream echo.
fn streamed_upload(
    c: &mut Client,
    path: &str,
    framing: (&str, &str),
    write_body: impl FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static,
    what: &str,
) -> Echo {
    c.write(&Client::build("POST", path, &[framing], b""));
    if c.stream.is_tls() {
        // A TLS session cannot be written from a second thread; the echo upstream reads the
        // whole body before it answers, so writing first and reading after cannot deadlock.
        write_body(&mut c.stream).expect(what);
        return c.read_response_for("POST").echo();
    }
    let mut w = c.stream.try_clone().unwrap();
    let writer = thread::spawn(move || write_body(&mut w as &mut dyn Write));
    let r = c.read_response_for("POST");
    writer.join().unwrap().expect(what);
    r.echo()
}

/// Reads the head of an answer, which must be a 200.
fn read_ok_head(c: &mut Client) -> Head {
    let head = c.read_final_head().expect("response head");
    assert_eq!(head.status, 200);
    head
}

/// Reads the body that belongs to `head` (answer to a GET), which must be the first `n`
/// pattern bytes.
fn assert_pattern_body(c: &mut Client, head: &Head, n: u64) {
    let mut h = Hasher::new();
    c.read_body(head, "GET", |b| h.update(b)).expect("body");
    let (len, sha) = h.finish();
    assert_eq!(len, n);
    assert_eq!(sha, pattern_sha256(n));
}

/// Asserts the upstream received the first `n` pattern bytes as the request body.
fn assert_pattern_echo(e: &Echo, n: u64) {
    assert_eq!(e.body_len, n);
    assert_eq!(e.body_sha256, pattern_sha256(n));
}

#[test]
fn large_upload_is_streamed() {
    let n = 256 * MIB;
    let up = Upstream::start("A");
    let p = start_plain(&up);
    let mut c = p.client();
    let e = streamed_upload(
        &mut c,
        "/upload",
        ("Content-Length", &n.to_string()),
        move |w| Pattern::new().for_each_chunk(n, &[Pattern::BLOCK], |chunk| w.write_all(chunk)),
        "upload write",
    );
    assert_pattern_echo(&e, n);
    assert_rss_within_limit(p.peak_rss(), "for a 256 MiB upload");
    // The connection is still usable.
    assert_eq!(c.get("/after").status, 200);
}

#[test]
fn large_download_is_streamed() {
    let n = 256 * MIB;
    let up = Upstream::start("A");
    let p = start_plain(&up);
    let mut c = p.client();
    c.write(&Client::build("GET", &format!("/bytes/{n}"), &[], b""));
    let head = read_ok_head(&mut c);
    assert_eq!(head.header("content-length"), Some(n.to_string().as_str()));
    assert_pattern_body(&mut c, &head, n);
    assert_rss_within_limit(p.peak_rss(), "for a 256 MiB download");
    assert_eq!(c.get("/after").status, 200);
}

#[test]
fn chunked_upload_is_streamed() {
    let n = 48 * MIB + 12345;
    let up = Upstream::start("A");
    let p = start_plain(&up);
    let mut c = p.client();
    let e = streamed_upload(
        &mut c,
        "/chunked-up",
        ("Transfer-Encoding", "chunked"),
        move |w| {
            Pattern::new().for_each_chunk(n, &[1, 10, 1000, 65536, 4097, 30000], |chunk| {
                w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                w.write_all(chunk)?;
                w.write_all(b"\r\n")
            })?;
            w.write_all(b"0\r\n\r\n")
        },
        "chunked upload write",
    );
    assert_pattern_echo(&e, n);
    assert_rss_within_limit(p.peak_rss(), "for a 48 MiB chunked upload");
    assert_eq!(c.get("/after").status, 200);
}

#[test]
fn small_chunked_upload_with_trailer_fields() {
    let up = Upstream::start("A");
    let p = start_plain(&up);
    let mut c = p.client();
    let mut req = Client::build(
        "POST",
        "/small-chunked",
        &[("Transfer-Encoding", "chunked")],
        b"",
    );
    req.extend_from_slice(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    c.write(&req);
    let e = c.read_response_for("POST").echo();
    assert_eq!(e.body_len, 11);
    assert_eq!(e.body_sha256, sha256_hex(b"hello world"));
    assert_eq!(c.get("/after").status, 200);
}

#[test]
fn chunked_download_is_streamed() {
    let n = 96 * MIB + 777;
    let up = Upstream::start("A");
    let p = start_plain(&up);
    let mut c = p.client();
    c.write(&Client::build("GET", &format!("/chunked/{n}"), &[], b""));
    let head = read_ok_head(&mut c);
    assert_pattern_body(&mut c, &head, n);
    assert_rss_within_limit(p.peak_rss(), "for a 96 MiB chunked download");
    // Small chunked answers, repeatedly, on the same connection.
    for i in 0..5 {
        let r = c.get(&format!("/chunked/{}", 1000 + i));
        assert_eq!(r.body, pattern_bytes(1000 + i));
    }
}

#[test]
fn slow_client_download_does_not_buffer_in_the_proxy() {
    // The client reads slowly at first; a streaming proxy applies back-pressure instead of
    // reading the whole upstream answer into memory.
    let n = 128 * MIB;
    let up = Upstream::start("A");
    let p = start_plain(&up);
    let mut c = p.client();
    c.stream.set_recv_buffer_size_hint();
    c.write(&Client::build("GET", &format!("/bytes/{n}"), &[], b""));
    thread::sleep(Duration::from_millis(1500));
    let rss_paused = p.peak_rss();
    let head = read_ok_head(&mut c);
    assert_pattern_body(&mut c, &head, n);
    assert_rss_within_limit(
        rss_paused,
        "while the client was not reading a 128 MiB answer",
    );
}

trait RecvHint {
    fn set_recv_buffer_size_hint(&self);
}

impl RecvHint for std::net::TcpStream {
    /// Keeps the client's receive buffer small so back-pressure reaches the proxy quickly.
    fn set_recv_buffer_size_hint(&self) {
        let sock = socket2::SockRef::from(self);
        let _ = sock.set_recv_buffer_size(64 * 1024);
    }
}

#[test]
fn upstream_dying_mid_body_is_not_passed_off_as_complete() {
    // The status line is already sent, so the proxy can only cut the client's connection:
    // it must never end the body as if it were whole.
    let up = Upstream::start("A");
    let p = start_plain(&up);
    for path in ["/truncate/1000000", "/truncchunked/1000000"] {
        let mut c = p.client();
        c.write(&Client::build("GET", path, &[], b""));
        let head = c.read_final_head().expect("response head");
        assert_eq!(head.status, 200, "{path}");
        let mut got = 0usize;
        let res = c.read_body(&head, "GET", |b| got += b.len());
        match res {
            Ok(()) => panic!(
                "{path}: a body cut by the upstream reached the client as complete ({got} bytes)"
            ),
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof,
                "{path}: the client connection should be closed, got {e} after {got} bytes"
            ),
        }
        assert!(got <= 500_000, "{path}: {got} bytes");
    }
    assert_eq!(p.get("/after").echo().path, "/after");
}

#[test]
fn paths_are_normalised_before_routing_and_forwarded_as_matched() {
    let api = Upstream::start("API");
    let rest = Upstream::start("REST");
    let p = Proxy::start(base_config(vec![
        route("api", "/api/*", &[&api]),
        route("rest", "/*", &[&rest]),
    ]));
    let mut c = p.client();
    // Each spelling of /api/secret is routed as /api/secret and forwarded as such, so a route
    // for /api/* cannot be dodged through the catch-all.
    for tricky in [
        "/x/../api/secret",
        "//api/secret",
        "/%61pi/secret",
        "/api/./secret",
    ] {
        let r = c.get(tricky);
        assert_eq!(r.status, 200, "{tricky}: {}", r.text());
        assert_eq!(
            r.upstream_id(),
            Some("API"),
            "{tricky} went to the wrong route"
        );
        assert_eq!(r.echo().path, "/api/secret", "{tricky}");
    }
    assert_eq!(c.get("/api/q?x=%2F..").echo().path, "/api/q?x=%2F..");
    // What upstreams read differently is refused, and the connection is closed.
    for refused in ["/api%2Fsecret", "/../api/secret", "/a\\..\\api", "/bad%zz"] {
        let r = p.client().request("GET", refused, &[], b"");
        assert_eq!(r.status, 400, "{refused}: {}", r.text());
    }
    assert_eq!(rest.requests(), 0, "nothing may reach the catch-all");
}

#[test]
fn identity_headers_and_underscore_aliases_never_pass_even_without_the_plugin() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    let r = p.client().request(
        "GET",
        "/",
        &[
            ("X-Userinfo", "forged"),
            ("X-Access-Token", "forged"),
            ("X_Userinfo", "forged"),
            ("X_Forwarded_For", "6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("True-Client-IP", "6.6.6.6"),
            ("X-Kept", "yes"),
        ],
        b"",
    );
    let e = r.echo();
    for gone in [
        "x-userinfo",
        "x-access-token",
        "x_userinfo",
        "x_forwarded_for",
        "true-client-ip",
    ] {
        assert!(
            e.header(gone).is_none(),
            "{gone} reached the upstream: {:?}",
            e.headers
        );
    }
    assert_eq!(e.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(e.header("x-kept"), Some("yes"));
}

#[test]
fn proxy_rewrite_set_and_remove_win_over_client_and_proxy_headers() {
    let up = Upstream::start("A");
    let mut r1 = route("1", "/*", &[&up]);
    r1["plugins"] = json!({"proxy-rewrite": {"headers": {
        "set": {"Authorization": "Basic dXNlcjpwdw==", "X-Forwarded-Proto": "https"},
        "remove": ["X-Forwarded-Host"]}}});
    let p = Proxy::start(base_config(vec![r1]));
    let r = p
        .client()
        .request("GET", "/", &[("Authorization", "Bearer client")], b"");
    let e = r.echo();
    let all = |name: &str| {
        e.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("authorization"), vec!["Basic dXNlcjpwdw=="]);
    assert_eq!(all("x-forwarded-proto"), vec!["https"]);
    assert!(all("x-forwarded-host").is_empty(), "{:?}", e.headers);
    let (ok, out) = check_config(
        "routes:\n  - uri: /\n    plugins:\n      proxy-rewrite: { headers: { Content-Length: \"5\" } }\n    upstream: { nodes: { \"127.0.0.1:1\": 1 } }\n",
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("routes[0].plugins.proxy-rewrite.headers.Content-Length"),
        "{out}"
    );
}
