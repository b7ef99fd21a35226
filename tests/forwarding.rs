//! What the upstream receives: forwarding headers, hop-by-hop headers, Host handling,
//! proxy-rewrite, HTTPS upstreams, and streamed (large, chunked) bodies both ways.

mod common;

use std::io::Write;
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const MIB: u64 = 1024 * 1024;

fn one_route(up: &Upstream, extra_upstream: Value, plugins: Option<Value>) -> Value {
    let mut upstream = json!({"type": "roundrobin", "nodes": nodes(&[(up, 1)])});
    if let Value::Object(m) = extra_upstream {
        for (k, v) in m {
            upstream[k] = v;
        }
    }
    let mut r = json!({"id": "1", "uri": "/*", "upstream": upstream});
    if let Some(p) = plugins {
        r["plugins"] = p;
    }
    r
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// X-Forwarded-* and Forwarded
// ---------------------------------------------------------------------------------------------

#[test]
fn forwarded_headers_are_set_for_an_untrusted_peer() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), None)]));
    let mut c = p.client();

    // Without client-sent forwarding headers.
    let e = c
        .request("GET", "/f", &[("Host", "shop.example")], b"")
        .echo();
    assert_eq!(e.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(e.header("x-forwarded-proto"), Some("http"));
    assert_eq!(e.header("x-forwarded-host"), Some("shop.example"));

    // Client-sent ones are dropped: the peer (127.0.0.1) is not trusted.
    let e = c
        .request(
            "GET",
            "/f",
            &[
                ("Host", "shop.example"),
                ("X-Forwarded-For", "1.2.3.4"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "evil.example"),
                ("Forwarded", "for=1.2.3.4;proto=https;host=evil.example"),
            ],
            b"",
        )
        .echo();
    let xff: Vec<String> = e
        .header_all("x-forwarded-for")
        .iter()
        .flat_map(|v| split_list(v))
        .collect();
    assert_eq!(
        xff,
        vec!["127.0.0.1"],
        "spoofed X-Forwarded-For must be dropped"
    );
    assert_eq!(e.header_all("x-forwarded-proto"), vec!["http"]);
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
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), None)]));
    let e = p
        .client()
        .request(
            "GET",
            "/f",
            &[("X-Forwarded-Port", "443"), ("X-Forwarded-Prefix", "/evil")],
            b"",
        )
        .echo();
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
    let e = c
        .request(
            "GET",
            "/f",
            &[
                ("Host", "inner.example"),
                ("X-Forwarded-For", "1.2.3.4, 10.0.0.1"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "public.example"),
                ("Forwarded", "for=1.2.3.4;proto=https;host=public.example"),
            ],
            b"",
        )
        .echo();
    let xff: Vec<String> = e
        .header_all("x-forwarded-for")
        .iter()
        .flat_map(|v| split_list(v))
        .collect();
    assert_eq!(
        xff,
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
    let e = c
        .request("GET", "/f", &[("Host", "inner.example")], b"")
        .echo();
    assert_eq!(e.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(e.header("x-forwarded-proto"), Some("http"));
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
    let e = p
        .client()
        .request(
            "GET",
            "/f",
            &[
                ("X-Forwarded-For", "1.2.3.4"),
                ("X-Forwarded-Proto", "https"),
            ],
            b"",
        )
        .echo();
    assert_eq!(e.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(e.header_all("x-forwarded-proto"), vec!["http"]);
}

// ---------------------------------------------------------------------------------------------
// Hop-by-hop headers
// ---------------------------------------------------------------------------------------------

#[test]
fn hop_by_hop_request_headers_are_not_forwarded() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), None)]));
    let e = p
        .client()
        .request(
            "GET",
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
            b"",
        )
        .echo();
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
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), None)]));
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
        json!({"id": "pass", "uri": "/pass", "upstream":
            {"type": "roundrobin", "nodes": nodes(&[(&up, 1)]), "pass_host": "pass"}}),
        json!({"id": "node", "uri": "/node", "upstream":
            {"type": "roundrobin", "nodes": nodes(&[(&up, 1)]), "pass_host": "node"}}),
        json!({"id": "rewrite", "uri": "/rewrite", "upstream":
            {"type": "roundrobin", "nodes": nodes(&[(&up, 1)]), "pass_host": "rewrite",
             "upstream_host": "backend.internal"}}),
        json!({"id": "default", "uri": "/default", "upstream":
            {"type": "roundrobin", "nodes": nodes(&[(&up, 1)])}}),
    ]));
    let mut c = p.client();
    let host = [("Host", "client.example")];
    let hosts = |e: &Echo| {
        e.header_all("host")
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let e = c.request("GET", "/pass", &host, b"").echo();
    assert_eq!(hosts(&e), vec!["client.example"]);
    let e = c.request("GET", "/default", &host, b"").echo();
    assert_eq!(
        hosts(&e),
        vec!["client.example"],
        "pass_host defaults to pass"
    );
    let e = c.request("GET", "/node", &host, b"").echo();
    assert_eq!(
        hosts(&e),
        vec![up.addr()],
        "pass_host node sends the node's host:port"
    );
    let e = c.request("GET", "/rewrite", &host, b"").echo();
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
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), Some(plugins))]));
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
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), Some(plugins))]));
    let e = p.get("/outer?a=1&b=2").echo();
    assert_eq!(e.path, "/internal?a=1&b=2");
}

// ---------------------------------------------------------------------------------------------
// HTTPS upstreams
// ---------------------------------------------------------------------------------------------

#[test]
fn https_upstream_via_upstream_scheme() {
    let up = Upstream::start_tls("TLS");
    let p = Proxy::start(base_config(vec![one_route(
        &up,
        json!({"scheme": "https"}),
        None,
    )]));
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
    assert_eq!(e.body_len, 100_000);
    assert_eq!(e.body_sha256, pattern_sha256(100_000));
}

#[test]
fn https_upstream_keepalive_for_posts() {
    // Non-idempotent requests reuse pooled TLS connections too (as they do plain ones), so
    // POST-heavy APIs behind an HTTPS upstream do not pay a handshake per request.
    let plain = Upstream::start("PLAIN");
    let tls = Upstream::start_tls("TLS");
    let p = Proxy::start(base_config(vec![
        json!({"id": "plain", "uri": "/plain/*",
               "upstream": {"type": "roundrobin", "nodes": nodes(&[(&plain, 1)])}}),
        json!({"id": "tls", "uri": "/tls/*",
               "upstream": {"type": "roundrobin", "nodes": nodes(&[(&tls, 1)]), "scheme": "https"}}),
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
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), Some(plugins))]));
    let e = p.get("/via-rewrite").echo();
    assert_eq!(e.id, "TLS");
    assert_eq!(e.path, "/via-rewrite");
}

#[test]
fn https_upstream_with_verification_rejects_self_signed() {
    let up = Upstream::start_tls("TLS");
    let p = Proxy::start(base_config(vec![one_route(
        &up,
        json!({"scheme": "https", "tls": {"verify": true}}),
        None,
    )]));
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

#[test]
fn large_upload_is_streamed() {
    let n = 256 * MIB;
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), None)]));
    let mut c = p.client();
    c.write(&Client::build(
        "POST",
        "/upload",
        &[("Content-Length", &n.to_string())],
        b"",
    ));
    let mut w = c.stream.try_clone().unwrap();
    let writer = thread::spawn(move || {
        Pattern::new().for_each_chunk(n, &[Pattern::BLOCK], |chunk| w.write_all(chunk))
    });
    let r = c.read_response_for("POST");
    writer.join().unwrap().expect("upload write");
    let e = r.echo();
    assert_eq!(e.body_len, n);
    assert_eq!(e.body_sha256, pattern_sha256(n));
    let rss = p.peak_rss();
    assert!(
        rss < RSS_LIMIT,
        "proxy peak RSS {} MiB for a 256 MiB upload",
        rss / MIB
    );
    // The connection is still usable.
    assert_eq!(c.get("/after").status, 200);
}

#[test]
fn large_download_is_streamed() {
    let n = 256 * MIB;
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), None)]));
    let mut c = p.client();
    c.write(&Client::build("GET", &format!("/bytes/{n}"), &[], b""));
    let head = c.read_final_head().expect("response head");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(n.to_string().as_str()));
    let mut h = Hasher::new();
    c.read_body(&head, "GET", |b| h.update(b)).expect("body");
    let (len, sha) = h.finish();
    assert_eq!(len, n);
    assert_eq!(sha, pattern_sha256(n));
    let rss = p.peak_rss();
    assert!(
        rss < RSS_LIMIT,
        "proxy peak RSS {} MiB for a 256 MiB download",
        rss / MIB
    );
    assert_eq!(c.get("/after").status, 200);
}

#[test]
fn chunked_upload_is_streamed() {
    let n = 48 * MIB + 12345;
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), None)]));
    let mut c = p.client();
    c.write(&Client::build(
        "POST",
        "/chunked-up",
        &[("Transfer-Encoding", "chunked")],
        b"",
    ));
    let mut w = c.stream.try_clone().unwrap();
    let writer = thread::spawn(move || -> std::io::Result<()> {
        Pattern::new().for_each_chunk(n, &[1, 10, 1000, 65536, 4097, 30000], |chunk| {
            w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
            w.write_all(chunk)?;
            w.write_all(b"\r\n")
        })?;
        w.write_all(b"0\r\n\r\n")
    });
    let r = c.read_response_for("POST");
    writer.join().unwrap().expect("chunked upload write");
    let e = r.echo();
    assert_eq!(e.body_len, n);
    assert_eq!(e.body_sha256, pattern_sha256(n));
    let rss = p.peak_rss();
    assert!(
        rss < RSS_LIMIT,
        "proxy peak RSS {} MiB for a 48 MiB chunked upload",
        rss / MIB
    );
    assert_eq!(c.get("/after").status, 200);
}

#[test]
fn small_chunked_upload_with_trailer_fields() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), None)]));
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
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), None)]));
    let mut c = p.client();
    c.write(&Client::build("GET", &format!("/chunked/{n}"), &[], b""));
    let head = c.read_final_head().expect("response head");
    assert_eq!(head.status, 200);
    let mut h = Hasher::new();
    c.read_body(&head, "GET", |b| h.update(b)).expect("body");
    let (len, sha) = h.finish();
    assert_eq!(len, n);
    assert_eq!(sha, pattern_sha256(n));
    let rss = p.peak_rss();
    assert!(
        rss < RSS_LIMIT,
        "proxy peak RSS {} MiB for a 96 MiB chunked download",
        rss / MIB
    );
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
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), None)]));
    let mut c = p.client();
    c.stream.set_recv_buffer_size_hint();
    c.write(&Client::build("GET", &format!("/bytes/{n}"), &[], b""));
    thread::sleep(Duration::from_millis(1500));
    let rss_paused = p.peak_rss();
    let head = c.read_final_head().expect("response head");
    assert_eq!(head.status, 200);
    let mut h = Hasher::new();
    c.read_body(&head, "GET", |b| h.update(b)).expect("body");
    let (len, sha) = h.finish();
    assert_eq!(len, n);
    assert_eq!(sha, pattern_sha256(n));
    assert!(
        rss_paused < RSS_LIMIT,
        "proxy peak RSS {} MiB while the client was not reading a 128 MiB answer",
        rss_paused / MIB
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
    let p = Proxy::start(base_config(vec![one_route(&up, json!({}), None)]));
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
