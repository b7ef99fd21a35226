//! Core proxy behaviour: routing, load balancing, keep-alive, limits, errors, HTTP/1.0,
//! graceful shutdown and listening.

mod common;

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Basic proxying and routing
// ---------------------------------------------------------------------------------------------

#[test]
fn proxies_a_get_to_the_upstream() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/get", &[&up])]));
    let r = p.get("/get");
    let e = r.echo();
    assert_eq!(e.id, "A");
    assert_eq!(e.method, "GET");
    assert_eq!(e.path, "/get");
    assert_eq!(e.body_len, 0);
    assert_eq!(
        r.upstream_id(),
        Some("A"),
        "upstream response headers are passed back"
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "upstream Content-Type passed back"
    );
    assert_eq!(up.requests(), 1);
}

#[test]
fn post_body_is_forwarded_intact() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/post", &[&up])]));
    let body = pattern_bytes(100_000);
    let r = p.client().request(
        "POST",
        "/post",
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    let e = r.echo();
    assert_eq!(e.method, "POST");
    assert_eq!(e.body_len, 100_000);
    assert_eq!(e.body_sha256, sha256_hex(&body));
}

#[test]
fn no_matching_route_is_404_json() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/get", &[&up])]));
    for path in ["/nothing", "/get/", "/ge", "/GET", "/get/x"] {
        let r = p.get(path);
        r.assert_json_error(404);
        assert_eq!(
            r.text().trim_end(),
            r#"{"error_msg":"404 Route Not Found"}"#,
            "404 body for {path}"
        );
    }
    assert_eq!(up.requests(), 0, "nothing reached the upstream");
}

#[test]
fn keepalive_survives_a_404() {
    // A 404 for a request without a body leaves nothing unread: the connection stays usable,
    // as with nginx/APISIX (closing it would cost clients a reconnect per unknown path).
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/get", &[&up])]));
    let mut c = p.client();
    let r = c.get("/nothing");
    r.assert_json_error(404);
    assert!(
        !r.header("connection")
            .unwrap_or("")
            .eq_ignore_ascii_case("close"),
        "404 closes the keep-alive connection: {:?}",
        r.headers
    );
    assert_eq!(c.get("/get").echo().path, "/get");
}

#[test]
fn routing_exact_prefix_and_longest_prefix() {
    let a = Upstream::start("A");
    let b = Upstream::start("B");
    let c = Upstream::start("C");
    let d = Upstream::start("D");
    let p = Proxy::start(base_config(vec![
        route("prefix-short", "/api/*", &[&a]),
        route("prefix-long", "/api/v1/*", &[&b]),
        route("exact", "/api/v1/exact", &[&c]),
        json!({"id": "multi", "uris": ["/u1", "/u2/*"],
               "upstream": {"type": "roundrobin", "nodes": nodes(&[(&d, 1)])}}),
    ]));
    let mut cl = p.client();
    let cases = [
        ("/api/x", "A"),
        ("/api/", "A"),
        ("/api/v1", "A"),
        ("/api/v2/deep/path", "A"),
        ("/api/v1/x", "B"),
        ("/api/v1/exact/more", "B"),
        ("/api/v1/exact", "C"),
        ("/api/v1/exact?q=1", "C"),
        ("/u1", "D"),
        ("/u2/anything", "D"),
    ];
    for (path, want) in cases {
        let r = cl.get(path);
        assert_eq!(r.status, 200, "{path}: body {:?}", r.text());
        assert_eq!(r.upstream_id(), Some(want), "route chosen for {path}");
        assert_eq!(r.echo().path, path, "request target forwarded unchanged");
    }
    for path in ["/u1/x", "/u3", "/apix", "/ap"] {
        assert_eq!(p.get(path).status, 404, "{path} must not match");
    }
}

#[test]
fn routing_by_host_and_method() {
    let a = Upstream::start("A");
    let b = Upstream::start("B");
    let c = Upstream::start("C");
    let m = Upstream::start("M");
    let p = Proxy::start(base_config(vec![
        json!({"id": "hosts", "uri": "/h", "hosts": ["a.example", "a2.example"],
               "upstream": {"type": "roundrobin", "nodes": nodes(&[(&a, 1)])}}),
        json!({"id": "host", "uri": "/h", "host": "b.example",
               "upstream": {"type": "roundrobin", "nodes": nodes(&[(&b, 1)])}}),
        json!({"id": "any", "uri": "/h",
               "upstream": {"type": "roundrobin", "nodes": nodes(&[(&c, 1)])}}),
        json!({"id": "post-only", "uri": "/m", "methods": ["POST", "PUT"],
               "upstream": {"type": "roundrobin", "nodes": nodes(&[(&m, 1)])}}),
        json!({"id": "host-only", "uri": "/only", "host": "only.example",
               "upstream": {"type": "roundrobin", "nodes": nodes(&[(&m, 1)])}}),
    ]));
    let mut cl = p.client();
    let cases = [
        ("a.example", "A"),
        ("a2.example", "A"),
        ("A.Example", "A"),
        ("a.example:8080", "A"),
        ("b.example", "B"),
        ("c.example", "C"),
    ];
    for (host, want) in cases {
        let r = cl.request("GET", "/h", &[("Host", host)], b"");
        assert_eq!(r.status, 200, "Host {host}: {:?}", r.text());
        assert_eq!(r.upstream_id(), Some(want), "route for Host {host}");
    }
    let r = cl.request("POST", "/m", &[], b"x");
    assert_eq!(r.upstream_id(), Some("M"));
    let r = cl.request("PUT", "/m", &[], b"x");
    assert_eq!(r.upstream_id(), Some("M"));
    let r = p.client().request("GET", "/m", &[], b"");
    r.assert_json_error(404);
    let r = p
        .client()
        .request("GET", "/only", &[("Host", "other.example")], b"");
    r.assert_json_error(404);
    let r = cl.request("GET", "/only", &[("Host", "only.example")], b"");
    assert_eq!(r.upstream_id(), Some("M"));
}

#[test]
fn routing_priority_decides_between_equal_uris() {
    let lo = Upstream::start("LOW");
    let hi = Upstream::start("HIGH");
    let p = Proxy::start(base_config(vec![
        json!({"id": "low", "uri": "/prio", "priority": 0,
               "upstream": {"type": "roundrobin", "nodes": nodes(&[(&lo, 1)])}}),
        json!({"id": "high", "uri": "/prio", "priority": 10,
               "upstream": {"type": "roundrobin", "nodes": nodes(&[(&hi, 1)])}}),
    ]));
    for _ in 0..3 {
        assert_eq!(p.get("/prio").upstream_id(), Some("HIGH"));
    }
}

#[test]
fn query_string_does_not_affect_matching_and_is_forwarded() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/get", &[&up])]));
    let target = "/get?a=1&b=two%20words&c=%2Fslash&empty=&flag";
    let e = p.get(target).echo();
    assert_eq!(e.path, target);
}

// ---------------------------------------------------------------------------------------------
// Load balancing
// ---------------------------------------------------------------------------------------------

#[test]
fn weighted_round_robin_is_exact_on_one_worker() {
    let a = Upstream::start("A");
    let b = Upstream::start("B");
    let mut cfg = base_config(vec![json!({
        "id": "wrr", "uri": "/wrr",
        "upstream": {"type": "roundrobin", "nodes": nodes(&[(&a, 3), (&b, 1)])}
    })]);
    cfg["log"]["access"] = json!(false);
    let p = Proxy::start(cfg);
    let ids = ids_over_one_connection(p.port, "/wrr", 400);
    assert_eq!(count(&ids, "A"), 300, "A (weight 3) of 400");
    assert_eq!(count(&ids, "B"), 100, "B (weight 1) of 400");
    // Smooth WRR never sends more than 3 in a row to A, and never 2 in a row to B.
    let seq: String = ids.iter().map(|s| s.as_str()).collect();
    assert!(!seq.contains("AAAA"), "not smooth: {seq}");
    assert!(!seq.contains("BB"), "not smooth: {seq}");
}

#[test]
fn round_robin_with_list_nodes_alternates() {
    let a = Upstream::start("A");
    let b = Upstream::start("B");
    let p = Proxy::start(base_config(vec![json!({
        "id": "rr", "uri": "/rr",
        "upstream": {"type": "roundrobin", "nodes": [
            {"host": "127.0.0.1", "port": a.port, "weight": 1},
            {"host": "127.0.0.1", "port": b.port, "weight": 1},
        ]}
    })]));
    let ids = ids_over_one_connection(p.port, "/rr", 40);
    assert_eq!(count(&ids, "A"), 20);
    assert_eq!(count(&ids, "B"), 20);
    for w in ids.windows(2) {
        assert_ne!(w[0], w[1], "1:1 round robin alternates: {ids:?}");
    }
}

#[test]
fn weighted_round_robin_two_workers_many_connections() {
    let a = Upstream::start("A");
    let b = Upstream::start("B");
    let mut cfg = base_config(vec![json!({
        "id": "wrr", "uri": "/wrr",
        "upstream": {"type": "roundrobin", "nodes": nodes(&[(&a, 3), (&b, 1)])}
    })]);
    cfg["workers"] = json!(2);
    cfg["log"]["access"] = json!(false);
    let p = Proxy::start(cfg);
    let port = p.port;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut ids = Vec::new();
                for _ in 0..10 {
                    ids.extend(ids_over_one_connection(port, "/wrr", 10));
                }
                ids
            })
        })
        .collect();
    let ids: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(ids.len(), 400);
    let na = count(&ids, "A");
    let nb = count(&ids, "B");
    assert_eq!(na + nb, 400);
    assert!(
        (270..=330).contains(&na),
        "A got {na} of 400, want 300 ±10%"
    );
    assert!((70..=130).contains(&nb), "B got {nb} of 400, want 100 ±30");
}

// ---------------------------------------------------------------------------------------------
// Keep-alive and pipelining
// ---------------------------------------------------------------------------------------------

#[test]
fn client_and_upstream_keepalive() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    let mut c = p.client();
    for i in 0..100 {
        let path = format!("/ka/{i}");
        let r = c.get(&path);
        assert_eq!(r.echo().path, path);
    }
    assert_eq!(up.requests(), 100);
    assert!(
        up.conns() <= 2,
        "100 requests over one client connection used {} upstream connections",
        up.conns()
    );
    // Several client connections in turn share the pooled upstream connection.
    for i in 0..10 {
        let mut c = p.client();
        for j in 0..5 {
            assert_eq!(c.get(&format!("/ka2/{i}/{j}")).status, 200);
        }
    }
    assert_eq!(up.requests(), 150);
    assert!(
        up.conns() <= 3,
        "150 requests over 11 client connections used {} upstream connections",
        up.conns()
    );
}

#[test]
fn upstream_keepalive_settings_are_honoured() {
    // upstream_keepalive: 0 keeps no idle upstream connection: one connection per request.
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    cfg["per_core"] = json!({"upstream_keepalive": 0});
    let p = Proxy::start(cfg);
    let mut c = p.client();
    for i in 0..5 {
        assert_eq!(c.get(&format!("/nopool/{i}")).status, 200);
    }
    assert_eq!(
        up.conns(),
        5,
        "upstream_keepalive 0 must not reuse upstream connections"
    );

    // upstream_keepalive_timeout: 1 drops a pooled connection after 1 s idle.
    let up = Upstream::start("B");
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    cfg["per_core"] = json!({"upstream_keepalive": 8, "upstream_keepalive_timeout": 1});
    let p = Proxy::start(cfg);
    let mut c = p.client();
    assert_eq!(c.get("/a").status, 200);
    assert_eq!(c.get("/b").status, 200);
    assert_eq!(
        up.conns(),
        1,
        "two quick requests share one upstream connection"
    );
    thread::sleep(Duration::from_millis(2200));
    assert_eq!(c.get("/c").status, 200);
    assert_eq!(
        up.conns(),
        2,
        "after 2.2 s idle with upstream_keepalive_timeout 1 a new upstream connection is used"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    let mut c = p.client();
    let mut batch = Vec::new();
    batch.extend(Client::build("GET", "/p/0", &[], b""));
    batch.extend(Client::build("POST", "/p/1", &[], b"hello pipelined world"));
    batch.extend(Client::build("GET", "/p/2?x=y", &[], b""));
    batch.extend(Client::build("GET", "/p/bytes/5000", &[], b""));
    batch.extend(Client::build("HEAD", "/p/4", &[], b""));
    batch.extend(Client::build("GET", "/p/5", &[], b""));
    c.write(&batch);
    let e0 = c.read_response().echo();
    assert_eq!(e0.path, "/p/0");
    let e1 = c.read_response().echo();
    assert_eq!(e1.path, "/p/1");
    assert_eq!(e1.body_sha256, sha256_hex(b"hello pipelined world"));
    assert_eq!(c.read_response().echo().path, "/p/2?x=y");
    let r3 = c.read_response();
    assert_eq!(r3.status, 200);
    assert_eq!(r3.body, pattern_bytes(5000));
    let r4 = c.read_response_for("HEAD");
    assert_eq!(r4.status, 200);
    assert!(r4.body.is_empty());
    assert_eq!(c.read_response().echo().path, "/p/5");
    // The connection is still usable.
    assert_eq!(c.get("/p/6").echo().path, "/p/6");
}

#[test]
fn upstream_closing_its_connection_does_not_break_the_next_request() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    let mut c = p.client();
    for i in 0..10 {
        let r = c.get("/close");
        assert_eq!(r.status, 200, "round {i}: /close: {:?}", r.text());
        let r = c.get(&format!("/after/{i}"));
        assert_eq!(
            r.status,
            200,
            "round {i}: request after an upstream close: {:?}",
            r.text()
        );
    }
    assert_eq!(up.requests(), 20);
}

#[test]
fn expect_100_continue_upload_works() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    let body = pattern_bytes(200_000);
    let mut c = p.client();
    let head = Client::build(
        "POST",
        "/upload",
        &[("Expect", "100-continue"), ("Content-Length", "200000")],
        b"",
    );
    c.write(&head);
    // Wait up to 1 s for an interim "100 Continue" (a proxy may also just wait for the body).
    c.stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let interim = c.read_head();
    c.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    if let Ok(h) = &interim {
        assert_eq!(
            h.status, 100,
            "an answer before the body must be 100 Continue: {h:?}"
        );
    }
    c.write(&body);
    let r = c.read_response_for("POST");
    let e = r.echo();
    assert_eq!(e.body_len, 200_000);
    assert_eq!(e.body_sha256, sha256_hex(&body));
    assert_eq!(c.get("/next").status, 200);
}

// ---------------------------------------------------------------------------------------------
// Upstream errors
// ---------------------------------------------------------------------------------------------

#[test]
fn upstream_refused_is_502_json() {
    let dead_port = free_port();
    let p = Proxy::start(base_config(vec![json!({
        "id": "dead", "uri": "/dead",
        "upstream": {"type": "roundrobin", "nodes": {format!("127.0.0.1:{dead_port}"): 1}}
    })]));
    let t = Instant::now();
    let r = p.get("/dead");
    r.assert_json_error(502);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // The proxy keeps serving.
    p.get("/dead").assert_json_error(502);
}

#[test]
fn upstream_answering_garbage_is_502() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    p.get("/garbage").assert_json_error(502);
    assert_eq!(p.get("/fine").echo().path, "/fine");
}

#[test]
fn upstream_slower_than_read_timeout_is_504_json() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![json!({
        "id": "slow", "uri": "/*",
        "upstream": {"type": "roundrobin", "nodes": nodes(&[(&up, 1)]),
                     "timeout": {"connect": 2, "send": 2, "read": 1}}
    })]));
    let t = Instant::now();
    let r = p.get("/sleep/3000");
    r.assert_json_error(504);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2800),
        "504 after {took:?}, want about 1 s"
    );
    // A fast request on the same route still works.
    // (and the timed-out upstream connection is not reused: its late answer must not leak)
    for i in 0..3 {
        let path = format!("/sleep/{}", 10 + i);
        assert_eq!(p.get(&path).echo().path, path);
    }
    thread::sleep(Duration::from_millis(2300));
    assert_eq!(p.get("/late").echo().path, "/late");
}

// ---------------------------------------------------------------------------------------------
// Request limits and malformed requests
// ---------------------------------------------------------------------------------------------

#[test]
fn header_bytes_over_limit_is_431() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    cfg["limits"] = json!({"max_header_bytes": 4096});
    let p = Proxy::start(cfg);
    let ok = "a".repeat(2500);
    let r = p.client().request("GET", "/x", &[("X-Big", &ok)], b"");
    assert_eq!(r.echo().header("x-big"), Some(ok.as_str()));
    let big = "a".repeat(5000);
    let r = p.client().request("GET", "/x", &[("X-Big", &big)], b"");
    assert_eq!(
        r.status,
        431,
        "5000-byte header with max_header_bytes 4096: {:?}",
        r.text()
    );
    // Many small headers adding up past the limit.
    let vals: Vec<String> = (0..40)
        .map(|i| format!("{i}-{}", "b".repeat(150)))
        .collect();
    let hs: Vec<(&str, &str)> = vals.iter().map(|v| ("X-Many", v.as_str())).collect();
    let r = p.client().request("GET", "/x", &hs, b"");
    assert_eq!(r.status, 431, "6 KB of headers with max_header_bytes 4096");
    // A very long request line counts too.
    let r = p
        .client()
        .request("GET", &format!("/x?{}", "q".repeat(6000)), &[], b"");
    assert_eq!(
        r.status, 431,
        "6 KB request line with max_header_bytes 4096"
    );
    assert_eq!(
        up.requests(),
        1,
        "rejected requests never reach the upstream"
    );
    assert_eq!(p.get("/x").status, 200);
}

#[test]
fn too_many_headers_is_431() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    cfg["limits"] = json!({"max_headers": 20});
    let p = Proxy::start(cfg);
    let names: Vec<String> = (0..30).map(|i| format!("X-H{i}")).collect();
    let hs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let r = p.client().request("GET", "/x", &hs[..10], b"");
    assert_eq!(r.status, 200);
    let r = p.client().request("GET", "/x", &hs, b"");
    assert_eq!(
        r.status,
        431,
        "31 headers with max_headers 20: {:?}",
        r.text()
    );
    assert_eq!(up.requests(), 1);
}

#[test]
fn default_limits_accept_98_headers() {
    // The default max_headers is 100: a request with 98 headers (Host included) passes.
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    let names: Vec<String> = (0..97).map(|i| format!("X-H{i}")).collect();
    let hs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let r = p.client().request("GET", "/x", &hs, b"");
    let e = r.echo();
    for n in &names {
        assert!(e.has(n), "{n} forwarded");
    }
}

#[test]
fn default_max_header_bytes_admits_long_lines_under_32k() {
    // max_header_bytes (default 32768) is the only cap on the head: one long header line or a
    // long request line under it passes (large cookies and long query strings are common).
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    let big = "z".repeat(30_000);
    let r = p.client().request("GET", "/x", &[("X-Big", &big)], b"");
    assert_eq!(
        r.status,
        200,
        "a 30000-byte header under the default 32768: {:?}",
        r.text()
    );
    assert_eq!(r.echo().header("x-big").map(str::len), Some(30_000));
    let target = format!("/x?q={}", "q".repeat(20_000));
    let r = p.client().request("GET", &target, &[], b"");
    assert_eq!(
        r.status,
        200,
        "a 20 KB request line under the default 32768: {:?}",
        r.text()
    );
    assert_eq!(r.echo().path, target);
}

#[test]
fn malformed_requests_get_400_and_the_server_keeps_serving() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    let bad: [&[u8]; 5] = [
        b"GARBAGE\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: test.local\r\nNo colon here\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: test.local\r\nContent-Length: abc\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /x HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ];
    for req in bad {
        let mut c = p.client();
        c.write(req);
        let r = c.read_response();
        assert_eq!(
            r.status,
            400,
            "for {:?}: got {} {:?}",
            String::from_utf8_lossy(req),
            r.status,
            r.text()
        );
        c.assert_closed(Duration::from_secs(3), "after a 400 the connection closes");
    }
    let e = p.get("/fine").echo();
    assert_eq!(e.path, "/fine");
    // Only the well-formed request, and at most the head of the bad chunked one, reached it.
    assert!(
        up.requests() <= 2,
        "upstream saw {} requests",
        up.requests()
    );
}

#[test]
fn body_over_max_body_bytes_is_413() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    cfg["limits"] = json!({"max_body_bytes": 1000});
    let p = Proxy::start(cfg);
    let ok = pattern_bytes(1000);
    let e = p.client().request("POST", "/b", &[], &ok).echo();
    assert_eq!(e.body_len, 1000);
    assert_eq!(e.body_sha256, sha256_hex(&ok));
    let r = p.client().request("POST", "/b", &[], &pattern_bytes(1001));
    assert_eq!(
        r.status,
        413,
        "Content-Length 1001 with max_body_bytes 1000: {:?}",
        r.text()
    );
    assert_eq!(
        up.requests(),
        1,
        "a declared oversize body is refused before the upstream"
    );
}

#[test]
fn chunked_body_over_max_body_bytes_is_413() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    cfg["limits"] = json!({"max_body_bytes": 1000});
    let p = Proxy::start(cfg);
    let mut c = p.client();
    let mut req = Client::build("POST", "/b", &[("Transfer-Encoding", "chunked")], b"");
    req.extend_from_slice(b"384\r\n");
    req.extend_from_slice(&[b'y'; 900]);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    c.write(&req);
    let e = c.read_response_for("POST").echo();
    assert_eq!(
        e.body_sha256,
        sha256_hex(&[b'y'; 900]),
        "900 chunked bytes are under the cap"
    );
    let mut req = Client::build("POST", "/b", &[("Transfer-Encoding", "chunked")], b"");
    for _ in 0..3 {
        req.extend_from_slice(b"1f4\r\n");
        req.extend_from_slice(&[b'x'; 500]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    c.write(&req);
    let r = c.read_response_for("POST");
    assert_eq!(
        r.status,
        413,
        "1500 chunked bytes with max_body_bytes 1000: {:?}",
        r.text()
    );
}

// ---------------------------------------------------------------------------------------------
// Timeouts on the client side
// ---------------------------------------------------------------------------------------------

#[test]
fn slowloris_client_is_disconnected_after_header_read_timeout() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    cfg["limits"] = json!({"header_read_timeout": 1});
    let p = Proxy::start(cfg);

    // A client that trickles a request head, one header line every 200 ms.
    let mut c = p.client();
    let mut w = c.stream.try_clone().unwrap();
    let start = Instant::now();
    let writer = thread::spawn(move || {
        let _ = w.write_all(b"GET /slow HTTP/1.1\r\nHost: test.local\r\n");
        for i in 0..25 {
            thread::sleep(Duration::from_millis(200));
            if w.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .is_err()
            {
                break;
            }
        }
    });
    // And one that sends nothing at all.
    let mut idle = p.client();
    let res = c.wait_closed(Duration::from_secs(4));
    let idle_res = idle.wait_closed(Duration::from_secs(1));
    let _ = writer.join();
    match res {
        Ok((_, data)) => {
            let took = start.elapsed();
            assert!(
                took >= Duration::from_millis(700) && took <= Duration::from_secs(3),
                "slowloris connection closed after {took:?}, want about 1 s"
            );
            let text = String::from_utf8_lossy(&data);
            assert!(
                data.is_empty()
                    || text.starts_with("HTTP/1.1 408")
                    || text.starts_with("HTTP/1.0 408"),
                "only a 408 may be sent before closing, got {text:?}"
            );
        }
        Err(_) => panic!("slowloris connection still open after 4 s with header_read_timeout 1"),
    }
    assert!(
        idle_res.is_ok(),
        "a connection that sent nothing is still open after ~2 s with header_read_timeout 1"
    );
    assert_eq!(up.requests(), 0);
    assert_eq!(p.get("/ok").status, 200);
}

#[test]
fn fractional_header_read_timeout() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    cfg["limits"] = json!({"header_read_timeout": 0.5});
    let p = Proxy::start(cfg);
    let mut c = p.client();
    c.write(b"GET /slow HTTP/1.1\r\n");
    let start = Instant::now();
    assert!(
        c.wait_closed(Duration::from_secs(3)).is_ok(),
        "not closed within 3 s"
    );
    assert!(
        start.elapsed() < Duration::from_millis(1800),
        "closed after {:?}, want about 0.5 s",
        start.elapsed()
    );
}

#[test]
fn idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    cfg["limits"] = json!({"keepalive_timeout": 1});
    let p = Proxy::start(cfg);
    let mut c = p.client();
    assert_eq!(c.get("/one").status, 200);
    let start = Instant::now();
    match c.wait_closed(Duration::from_secs(4)) {
        Ok((_, data)) => {
            assert!(
                data.is_empty(),
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&data)
            );
            let took = start.elapsed();
            assert!(
                took >= Duration::from_millis(600) && took <= Duration::from_secs(3),
                "idle connection closed after {took:?}, want about 1 s"
            );
        }
        Err(_) => {
            panic!("idle keep-alive connection still open after 4 s with keepalive_timeout 1")
        }
    }
    // A connection that keeps being used stays open past the timeout.
    let mut c = p.client();
    for i in 0..6 {
        assert_eq!(c.get(&format!("/busy/{i}")).status, 200, "request {i}");
        thread::sleep(Duration::from_millis(400));
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.0 and Connection: close
// ---------------------------------------------------------------------------------------------

#[test]
fn http10_request_gets_compatible_answer_and_close() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));

    // Echo (upstream uses Content-Length).
    let mut c = p.client();
    c.write(b"GET /ten HTTP/1.0\r\nHost: test.local\r\n\r\n");
    let r = c.read_response();
    assert!(r.version.starts_with("HTTP/1."), "{}", r.version);
    let e = r.echo();
    assert_eq!(e.path, "/ten");
    c.assert_closed(Duration::from_secs(3), "HTTP/1.0 without keep-alive");

    // Chunked upstream answer must not reach an HTTP/1.0 client chunked.
    let mut c = p.client();
    c.write(b"GET /chunked/70000 HTTP/1.0\r\nHost: test.local\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(
        r.header("transfer-encoding").is_none(),
        "Transfer-Encoding sent to an HTTP/1.0 client: {:?}",
        r.headers
    );
    assert_eq!(r.body.len(), 70000);
    assert_eq!(r.body, pattern_bytes(70000));
    c.assert_closed(Duration::from_secs(3), "HTTP/1.0 chunked upstream answer");

    // HTTP/1.0 without a Host header at all.
    let mut c = p.client();
    c.write(b"GET /nohost HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response().echo().path, "/nohost");
}

#[test]
fn http10_keepalive_when_asked() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    let mut c = p.client();
    for i in 0..3 {
        c.write(
            format!("GET /k/{i} HTTP/1.0\r\nHost: test.local\r\nConnection: keep-alive\r\n\r\n")
                .as_bytes(),
        );
        let r = c.read_response();
        assert!(
            r.header("content-length").is_some(),
            "keep-alive answer to HTTP/1.0 needs Content-Length: {:?}",
            r.headers
        );
        assert!(
            r.header("connection")
                .map(|v| v.eq_ignore_ascii_case("keep-alive"))
                .unwrap_or(false),
            "keep-alive answer to HTTP/1.0 says Connection: keep-alive: {:?}",
            r.headers
        );
        assert_eq!(r.echo().path, format!("/k/{i}"));
    }
}

#[test]
fn connection_close_is_honoured() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    let mut c = p.client();
    assert_eq!(c.get("/first").status, 200);
    let r = c.request("GET", "/last", &[("Connection", "close")], b"");
    assert_eq!(r.echo().path, "/last");
    assert!(
        r.header("connection")
            .map(|v| v.eq_ignore_ascii_case("close"))
            .unwrap_or(false),
        "answer to Connection: close should say Connection: close: {:?}",
        r.headers
    );
    c.assert_closed(Duration::from_secs(3), "after Connection: close");
}

// ---------------------------------------------------------------------------------------------
// Listening, shutdown, logs
// ---------------------------------------------------------------------------------------------

#[test]
fn listens_on_every_address_of_a_list() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    let (p1, p2) = (free_port(), free_port());
    cfg["listen"] = json!([format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}")]);
    let _proxy = Proxy::start(cfg);
    assert_eq!(Client::connect(p1).get("/one").echo().path, "/one");
    assert_eq!(Client::connect(p2).get("/two").echo().path, "/two");
}

#[test]
fn epoll_driver_serves() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    cfg["runtime"] = json!({"driver": "epoll"});
    cfg["workers"] = json!(2);
    let p = Proxy::start(cfg);
    let mut c = p.client();
    for i in 0..20 {
        assert_eq!(c.get(&format!("/e/{i}")).status, 200);
    }
    let r = c.request("POST", "/e/post", &[], &pattern_bytes(300_000));
    assert_eq!(r.echo().body_sha256, pattern_sha256(300_000));
}

#[test]
fn graceful_shutdown_finishes_in_flight_request() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    cfg["limits"] = json!({"shutdown_timeout": 10});
    let mut p = Proxy::start(cfg);
    let port = p.port;

    // An idle keep-alive connection opened before the signal.
    let mut idle = p.client();
    assert_eq!(idle.get("/warm").status, 200);

    let inflight = thread::spawn(move || {
        let mut c = Client::connect(port);
        let t = Instant::now();
        let r = c.try_read_response_after_write("GET", "/sleep/1500");
        (r, t.elapsed())
    });
    // Let the request reach the upstream before signalling.
    assert!(
        eventually(Duration::from_secs(5), || up.requests() >= 2),
        "in-flight request never reached the upstream"
    );
    thread::sleep(Duration::from_millis(100));
    p.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(300));

    // New connections are refused once shutdown has begun.
    let addr = ([127, 0, 0, 1], port).into();
    let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err();

    let (r, took) = inflight.join().unwrap();
    let r =
        r.unwrap_or_else(|e| panic!("in-flight request failed during shutdown: {e}\n{}", p.log()));
    assert_eq!(r.status, 200, "in-flight request: {:?}", r.text());
    assert_eq!(r.echo().path, "/sleep/1500");
    assert!(
        took >= Duration::from_millis(1400),
        "answered after {took:?}"
    );

    let status = p.wait_exit(Duration::from_secs(10));
    let status = status
        .unwrap_or_else(|| panic!("proxy did not exit within 10 s after SIGTERM\n{}", p.log()));
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}\n{}",
        p.log()
    );
    assert!(refused, "a new connection was accepted after SIGTERM");
    // The idle keep-alive connection was closed, not left hanging.
    assert!(
        idle.wait_closed(Duration::from_secs(1)).is_ok(),
        "idle connection left open"
    );
}

#[test]
fn sigint_on_idle_proxy_exits_zero() {
    let up = Upstream::start("A");
    let mut p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    assert_eq!(p.get("/x").status, 200);
    p.signal(libc::SIGINT);
    let st = p
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within 5 s after SIGINT\n{}", p.log()));
    assert!(st.success(), "exit status {st}\n{}", p.log());
    assert!(!can_connect(p.port), "still listening after exit");
}

#[test]
fn second_instance_on_same_port_fails_and_first_keeps_serving() {
    let up = Upstream::start("A");
    let first = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    let dir = TempDir::new();
    cfg["listen"] = json!(format!("127.0.0.1:{}", first.port));
    cfg["data_dir"] = json!(dir.path().join("data").to_string_lossy());
    let mut second = Proxy::spawn_in(dir, &to_yaml(&cfg), &[], vec![first.port]);
    let st = second.wait_exit(Duration::from_secs(10));
    let out = second.output();
    let st = st.unwrap_or_else(|| {
        panic!("second proxy on a busy port is still running after 10 s; output:\n{out}")
    });
    assert!(
        !st.success(),
        "second proxy exited with {st}; output:\n{out}"
    );
    let lower = out.to_lowercase();
    assert!(
        lower.contains("in use") || lower.contains("addrinuse"),
        "second proxy should say the address is in use; output:\n{out}"
    );
    // The first still answers every request (nothing stole its connections).
    for i in 0..20 {
        let r = first.get(&format!("/still/{i}"));
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.requests(), 20);
}

#[test]
fn access_log_has_one_line_per_request() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    let mut c = p.client();
    let tokens = ["/log/tok-aaa111", "/log/tok-bbb222", "/log/tok-ccc333"];
    for t in tokens {
        assert_eq!(c.get(t).status, 200);
    }
    assert_eq!(c.get("/nope-404-zzz").status, 200);
    let ok = eventually(Duration::from_secs(3), || {
        let log = p.stderr();
        tokens
            .iter()
            .all(|t| log.lines().filter(|l| l.contains(t)).count() == 1)
    });
    assert!(
        ok,
        "each request should appear on exactly one stderr line:\n{}",
        p.log()
    );

    // With access logging off, no line names the request.
    let up2 = Upstream::start("B");
    let mut cfg = base_config(vec![route("1", "/*", &[&up2])]);
    cfg["log"]["access"] = json!(false);
    let q = Proxy::start(cfg);
    assert_eq!(q.get("/log/quiet-tok-999").status, 200);
    thread::sleep(Duration::from_millis(500));
    assert!(
        !q.stderr().contains("quiet-tok-999"),
        "access log written although log.access is false:\n{}",
        q.log()
    );
}

/// Extension used by the shutdown test: write a request and read its answer, returning errors.
trait TryRequest {
    fn try_read_response_after_write(
        &mut self,
        method: &str,
        path: &str,
    ) -> std::io::Result<Response>;
}

impl TryRequest for Client {
    fn try_read_response_after_write(
        &mut self,
        method: &str,
        path: &str,
    ) -> std::io::Result<Response> {
        let req = Client::build(method, path, &[], b"");
        self.try_write(&req)?;
        self.try_read_response(method)
    }
}

// ---------------------------------------------------------------------------------------------
// The harness itself (no proxy): so that a failure above points at the proxy, not the tools.
// ---------------------------------------------------------------------------------------------

#[test]
fn harness_upstream_and_client_work_directly() {
    let up = Upstream::start("U");
    let mut c = Client::connect(up.port);
    let e = c
        .request("POST", "/echo?q=1", &[("X-Test", "yes")], b"abc")
        .echo();
    assert_eq!(
        (e.id.as_str(), e.method.as_str(), e.path.as_str()),
        ("U", "POST", "/echo?q=1")
    );
    assert_eq!(e.header("x-test"), Some("yes"));
    assert_eq!(e.body_sha256, sha256_hex(b"abc"));
    let r = c.get("/bytes/100000");
    assert_eq!(r.body, pattern_bytes(100_000));
    let r = c.get("/x/chunked/100000");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, pattern_bytes(100_000));
    let mut req = Client::build("POST", "/c", &[("Transfer-Encoding", "chunked")], b"");
    req.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
    c.write(&req);
    assert_eq!(c.read_response().echo().body_sha256, sha256_hex(b"abc"));
    let t = Instant::now();
    assert_eq!(c.get("/sleep/200").status, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(up.conns(), 1);
    assert_eq!(up.requests(), 5);
    let r = c.get("/close");
    assert_eq!(r.header("connection"), Some("close"));
    c.assert_closed(Duration::from_secs(2), "upstream /close");
    assert_eq!(pattern_sha256(1000), sha256_hex(&pattern_bytes(1000)));
    let cfg = json!({"a": [1, {"b": "x", "c": []}, [true]], "d": {}, "e": {"f": 0.5}});
    assert_eq!(
        to_yaml(&cfg),
        "\"a\":\n  - 1\n  - \"b\": \"x\"\n    \"c\": []\n  - - true\n\"d\": {}\n\"e\":\n  \"f\": 0.5\n"
    );
}

#[test]
fn harness_tls_upstream_works_directly() {
    use std::io::Read;
    let up = Upstream::start_tls("T");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(up.cert.clone().unwrap()).unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(cfg), "localhost".try_into().unwrap())
            .unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", up.port)).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&Client::build(
        "GET",
        "/tls-direct",
        &[("Connection", "close")],
        b"",
    ))
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("\"path\":\"/tls-direct\""), "{text}");
    assert_eq!(up.requests(), 1);
}

#[test]
fn sighup_reloads_routes_and_a_bad_file_changes_nothing() {
    let a = Upstream::start("A");
    let b = Upstream::start("B");
    let cfg = base_config(vec![route("1", "/a/*", &[&a])]);
    let p = Proxy::start(cfg.clone());
    let mut c = p.client();
    assert_eq!(c.get("/a/x").status, 200);
    assert_eq!(c.get("/b/x").status, 404);

    // A valid new file: the new route is served on the connection that was already open.
    let mut next = cfg.clone();
    next["routes"] = json!([route("1", "/a/*", &[&a]), route("2", "/b/*", &[&b])]);
    p.rewrite_config(&to_yaml(&next));
    p.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || c.get("/b/x").status == 200),
        "the reloaded route never answered:\n{}",
        p.log()
    );
    assert_eq!(c.get("/b/x").upstream_id(), Some("B"));

    // A broken file: refused with the field named in the log, and every route keeps serving.
    let mut broken = next.clone();
    broken["routes"][1]["upstream"]["nodes"] = json!("nowhere");
    p.rewrite_config(&to_yaml(&broken));
    p.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || p
            .log()
            .contains("reload refused")),
        "no refusal logged:\n{}",
        p.log()
    );
    assert!(p.log().contains("routes[1].upstream.nodes"), "{}", p.log());
    assert_eq!(c.get("/a/x").upstream_id(), Some("A"));
    assert_eq!(c.get("/b/x").upstream_id(), Some("B"));
}

#[test]
fn a_502_keeps_the_client_connection_and_pipelined_requests_are_all_answered() {
    let dead_port = free_port();
    let p = Proxy::start(base_config(vec![json!({
        "id": "dead", "uri": "/dead",
        "upstream": {"type": "roundrobin", "nodes": {format!("127.0.0.1:{dead_port}"): 1}}
    })]));
    let mut c = p.client();
    let one = Client::build("GET", "/dead", &[], b"");
    let mut two = one.clone();
    two.extend_from_slice(&one);
    c.write(&two);
    for i in 0..2 {
        let r = c.read_response();
        r.assert_json_error(502);
        assert_ne!(
            r.header("connection"),
            Some("close"),
            "answer {i} closed the connection"
        );
    }
}

#[test]
fn bytes_an_upstream_sends_while_idle_never_answer_another_request() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/*", &[&up])]);
    cfg["workers"] = json!(1);
    let p = Proxy::start(cfg);
    let r = p.get("/late-bytes");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    thread::sleep(Duration::from_millis(300));
    // The pooled connection now holds an unrequested answer; it must not be read as this one's.
    let r = p.get("/next");
    assert_eq!(
        r.upstream_id(),
        Some("A"),
        "got {:?}: {}",
        r.headers,
        r.text()
    );
    assert_eq!(r.echo().path, "/next");
}
