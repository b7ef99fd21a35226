//! TLS termination against the real binary: SNI selection, protocol versions, key types,
//! resumption across cores, live certificate changes, hostile handshakes, and real clients
//! (`openssl s_client`, `curl`, Python's `ssl`).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::fake_idp::FakeIdp;
use common::tls::{cert_for, ssl, KeyKind};
use common::*;
use serde_json::{json, Value};

/// A proxy with a TLS listener over `ssls`, one open route to `up`, and `extra` merged at the
/// top level. `Proxy::client` then speaks TLS with SNI `localhost`.
fn start(up: &Upstream, ssls: Value, extra: Value) -> Proxy {
    start_routes(vec![route("1", "/*", &[up])], ssls, extra)
}

/// As [`start`], with `routes`.
fn start_routes(routes: Vec<Value>, ssls: Value, extra: Value) -> Proxy {
    let port = free_port();
    let mut cfg = base_config(routes);
    cfg["tls"] = json!({"listen": [format!("127.0.0.1:{port}")]});
    cfg["ssls"] = ssls;
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            match (c.get_mut(k), v) {
                (Some(Value::Object(cv)), Value::Object(ev)) => {
                    cv.extend(ev.clone());
                }
                _ => {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let mut p = Proxy::start(cfg);
    p.tls_port = Some(port);
    assert!(
        eventually(Duration::from_secs(5), || can_connect(port)),
        "TLS port {port} not listening"
    );
    p
}

fn tls_port(p: &Proxy) -> u16 {
    p.tls_port.expect("a TLS listener")
}

/// The leaf certificate a handshake with `sni` gets, or the handshake error.
fn leaf(p: &Proxy, sni: Option<&str>) -> Result<Vec<u8>, String> {
    let mut s = tls::Stream::connect_tls(tls_port(p), sni).map_err(|e| e.to_string())?;
    // rustls completes the handshake before this returns; a refused one fails above.
    let _ = s.flush();
    Ok(s.peer_leaf().expect("a certificate"))
}

/// Run `openssl s_client` against the TLS port with `args`, feeding `input`; returns whether
/// it exited 0 and everything it printed.
fn s_client(port: u16, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl (tests/run.sh installs it)");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
        // Keep stdin open a moment: s_client quits at EOF, before a TLS 1.3 ticket arrives.
        thread::sleep(Duration::from_millis(300));
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let out = loop {
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            let _ = child.kill();
            break child.wait_with_output().unwrap();
        }
        thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const GET_CLOSE: &str = "GET /s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

#[test]
fn sni_picks_exact_then_wildcard_then_fallback_and_refuses_unknown_names() {
    let up = Upstream::start("A");
    let exact = cert_for(&["a.example.test"], KeyKind::EcdsaP256);
    let wild = cert_for(&["*.example.test"], KeyKind::EcdsaP256);
    let other = cert_for(&["other.test"], KeyKind::EcdsaP256);
    let ssls = json!([
        ssl("1", &["a.example.test"], &exact),
        ssl("2", &["*.example.test"], &wild),
        ssl("3", &["other.test"], &other),
    ]);
    let p = start(&up, ssls.clone(), json!({}));
    assert_eq!(leaf(&p, Some("a.example.test")).unwrap(), exact.der);
    assert_eq!(leaf(&p, Some("A.EXAMPLE.test")).unwrap(), exact.der);
    assert_eq!(leaf(&p, Some("b.example.test")).unwrap(), wild.der);
    assert_eq!(leaf(&p, Some("other.test")).unwrap(), other.der);
    // One label only, and no fallback configured: refused.
    assert!(leaf(&p, Some("x.b.example.test")).is_err());
    assert!(leaf(&p, Some("example.test")).is_err());
    assert!(leaf(&p, None).is_err());
    let (ok, out) = s_client(tls_port(&p), &["-servername", "unknown.test"], "");
    assert!(!ok && !out.contains("BEGIN CERTIFICATE"), "{out}");
    // The refusals cost nothing: the proxy still serves.
    let mut c = tls_client(&p, "a.example.test");
    assert_eq!(c.get("/after").echo().path, "/after");

    // With a fallback name, no SNI and unknown names get its certificate.
    let p = start(&up, ssls, json!({"tls": {"fallback_sni": "other.test"}}));
    assert_eq!(leaf(&p, Some("unknown.test")).unwrap(), other.der);
    assert_eq!(leaf(&p, None).unwrap(), other.der);
    assert_eq!(leaf(&p, Some("b.example.test")).unwrap(), wild.der);
    let (ok, out) = s_client(tls_port(&p), &["-servername", "nobody.test"], GET_CLOSE);
    assert!(ok, "{out}");
    assert!(
        out.contains("CN=rcgen self signed cert") || out.contains("subject="),
        "{out}"
    );
    assert!(out.contains("HTTP/1.1 200"), "{out}");
}

fn tls_client(p: &Proxy, sni: &str) -> Client {
    Client::connect_tls(tls_port(p), Some(sni))
}

#[test]
fn rsa_and_ecdsa_certificates_for_one_name_follow_what_the_client_supports() {
    let up = Upstream::start("A");
    let ec = cert_for(&["both.test"], KeyKind::EcdsaP256);
    let rsa = cert_for(&["both.test"], KeyKind::Rsa2048);
    // One object with both chains (APISIX's certs/keys), and the same as two objects.
    let one = json!([{"id": "1", "snis": ["both.test"], "cert": ec.cert, "key": ec.key,
                      "certs": [rsa.cert], "keys": [rsa.key]}]);
    let two = json!([
        ssl("1", &["both.test"], &ec),
        ssl("2", &["both.test"], &rsa)
    ]);
    for ssls in [one, two] {
        let p = start(&up, ssls, json!({}));
        let port = tls_port(&p);
        let (ok, out) = s_client(
            port,
            &[
                "-servername",
                "both.test",
                "-sigalgs",
                "ecdsa_secp256r1_sha256",
            ],
            GET_CLOSE,
        );
        assert!(ok && out.contains("Server public key is 256 bit"), "{out}");
        let (ok, out) = s_client(
            port,
            &[
                "-servername",
                "both.test",
                "-sigalgs",
                "rsa_pss_rsae_sha256:rsa_pkcs1_sha256",
            ],
            GET_CLOSE,
        );
        assert!(ok && out.contains("Server public key is 2048 bit"), "{out}");
        assert!(out.contains("HTTP/1.1 200"), "{out}");
        // A client that can verify neither gets no certificate.
        let (ok, out) = s_client(
            port,
            &["-servername", "both.test", "-tls1_3", "-sigalgs", "ed25519"],
            "",
        );
        assert!(!ok, "{out}");
    }
}

#[test]
fn protocol_versions_follow_tls_protocols_and_alpn_is_http11() {
    let up = Upstream::start("A");
    let pem = tls::harness_cert();
    let ssls = json!([ssl("1", &["localhost"], pem)]);
    let base = &["-servername", "localhost", "-alpn", "http/1.1"];
    let with = |extra: &'static str| -> Vec<&'static str> {
        let mut v: Vec<&'static str> = base.to_vec();
        v.push(extra);
        v
    };
    let p = start(&up, ssls.clone(), json!({}));
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, out) = s_client(tls_port(&p), &with(flag), GET_CLOSE);
        assert!(ok, "{flag}: {out}");
        assert!(
            out.contains(&format!("Protocol  : {name}")) || out.contains(&format!("New, {name}")),
            "{flag}: {out}"
        );
        assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
        assert!(out.contains("HTTP/1.1 200"), "{out}");
    }
    let p12 = start(
        &up,
        ssls.clone(),
        json!({"tls": {"protocols": ["TLSv1.2"]}}),
    );
    assert!(s_client(tls_port(&p12), &with("-tls1_2"), GET_CLOSE).0);
    let (ok, out) = s_client(tls_port(&p12), &with("-tls1_3"), "");
    assert!(
        !ok,
        "a 1.3-only client must be refused by a 1.2-only listener: {out}"
    );
    let p13 = start(&up, ssls, json!({"tls": {"protocols": ["TLSv1.3"]}}));
    assert!(s_client(tls_port(&p13), &with("-tls1_3"), GET_CLOSE).0);
    let (ok, out) = s_client(tls_port(&p13), &with("-tls1_2"), "");
    assert!(
        !ok,
        "a 1.2-only client must be refused by a 1.3-only listener: {out}"
    );
}

#[test]
fn tickets_issued_on_one_core_resume_on_every_core() {
    let up = Upstream::start("A");
    let pem = tls::harness_cert();
    let p = start(
        &up,
        json!([ssl("1", &["localhost"], pem)]),
        json!({"workers": 2}),
    );
    let dir = TempDir::new();
    for version in ["-tls1_2", "-tls1_3"] {
        let sess = dir.path().join(format!("sess{version}"));
        let sess = sess.to_str().unwrap();
        let (ok, out) = s_client(
            tls_port(&p),
            &["-servername", "localhost", version, "-sess_out", sess],
            GET_CLOSE,
        );
        assert!(ok && out.contains("New, "), "{out}");
        // SO_REUSEPORT spreads connections over the 2 workers by their source port: among 10
        // connections both workers show up but for a chance of 2^-9, and each must resume.
        for i in 0..10 {
            let (ok, out) = s_client(
                tls_port(&p),
                &["-servername", "localhost", version, "-sess_in", sess],
                GET_CLOSE,
            );
            assert!(ok, "{out}");
            assert!(
                out.contains("Reused, "),
                "{version} resumption {i} was a full handshake:\n{out}"
            );
            assert!(out.contains("HTTP/1.1 200"), "{out}");
        }
    }
}

#[test]
fn a_certificate_change_is_live_for_new_handshakes_and_old_connections_stay() {
    let up = Upstream::start("A");
    let old = cert_for(&["localhost"], KeyKind::EcdsaP256);
    let new = cert_for(&["localhost"], KeyKind::EcdsaP256);
    let p = start(&up, json!([ssl("1", &["localhost"], &old)]), json!({}));
    let mut kept = tls_client(&p, "localhost");
    assert_eq!(kept.get("/one").echo().path, "/one");
    assert_eq!(kept.stream.peer_leaf().unwrap(), old.der);

    // A broken certificate in the file changes nothing.
    let text = p.config_text();
    std::fs::write(
        &p.config_path,
        text.replace(&first_line_of_body(&old.cert), "AAAA"),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || p
        .stderr()
        .contains("reload refused")));
    assert_eq!(leaf(&p, Some("localhost")).unwrap(), old.der);

    let mut cfg: Value = serde_yaml::from_str(&text).unwrap();
    cfg["ssls"] = json!([ssl("1", &["localhost"], &new)]);
    std::fs::write(&p.config_path, to_yaml(&cfg)).unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || leaf(&p, Some("localhost")).ok()
            == Some(new.der.clone())),
        "new handshakes never got the new certificate"
    );
    // The connection opened before goes on, on its certificate.
    assert_eq!(kept.get("/two").echo().path, "/two");
    assert_eq!(kept.stream.peer_leaf().unwrap(), old.der);
}

fn first_line_of_body(pem: &str) -> String {
    pem.lines().nth(1).unwrap().to_string()
}

#[test]
fn garbage_and_stalled_handshakes_cost_one_connection() {
    let up = Upstream::start("A");
    let pem = tls::harness_cert();
    let p = start(
        &up,
        json!([ssl("1", &["localhost"], pem)]),
        json!({"limits": {"header_read_timeout": 1}}),
    );
    let port = tls_port(&p);
    // Plain HTTP on the TLS port: refused at once.
    let mut garbage = Client::connect(port);
    garbage.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let (took, _) = garbage
        .wait_closed(Duration::from_secs(3))
        .expect("garbage handshake still open");
    assert!(took < Duration::from_millis(900), "{took:?}");
    // A handshake that stops half way, and a connection that says nothing.
    let mut half = Client::connect(port);
    half.write(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ]);
    let mut silent = Client::connect(port);
    // Meanwhile the one worker serves others.
    let mut c = tls_client(&p, "localhost");
    assert_eq!(c.get("/meanwhile").echo().path, "/meanwhile");
    for (name, conn) in [("half", &mut half), ("silent", &mut silent)] {
        let started = Instant::now();
        conn.wait_closed(Duration::from_secs(4))
            .unwrap_or_else(|_| panic!("{name} handshake still open after the header timeout"));
        assert!(started.elapsed() < Duration::from_secs(3), "{name}");
    }
    // An aborted handshake (a reset mid-way) too.
    let aborted = Client::connect(port);
    drop(aborted);
    assert_eq!(c.get("/after").echo().path, "/after");
    assert_eq!(tls_client(&p, "localhost").get("/new").echo().path, "/new");
}

#[test]
fn real_clients_over_https_and_forwarded_proto() {
    let up = Upstream::start("A");
    let pem = tls::harness_cert();
    let p = start(&up, json!([ssl("1", &["localhost"], pem)]), json!({}));
    let port = tls_port(&p);
    let dir = TempDir::new();
    let ca = dir.write("cert.pem", &pem.cert);
    // curl verifies the certificate against the one we made, by name.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/curl?q=1"))
        .output()
        .expect("run curl (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("echo json");
    let e = Echo::from_json(&v);
    assert_eq!(e.path, "/curl?q=1");
    assert_eq!(e.header("x-forwarded-proto"), Some("https"));
    // Python's ssl and http.client, verifying too.
    let script = format!(
        "import ssl, http.client, json\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         c = http.client.HTTPSConnection('localhost', {port}, context=ctx, timeout=10)\n\
         for i in range(3):\n\
         \x20   c.request('GET', '/py/%d' % i)\n\
         \x20   r = c.getresponse()\n\
         \x20   body = json.loads(r.read())\n\
         \x20   assert r.status == 200, r.status\n\
         \x20   print(body['path'], c.sock.version())\n",
        ca = ca.to_str().unwrap()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["/py/0 TLSv1.3", "/py/1 TLSv1.3", "/py/2 TLSv1.3"],
        "three requests over one kept-alive TLS connection"
    );
    assert_eq!(up.conns(), 1, "one upstream connection, reused");
}

#[test]
fn bad_ssls_are_refused_with_the_field_named() {
    let a = cert_for(&["a.test"], KeyKind::EcdsaP256);
    let b = cert_for(&["b.test"], KeyKind::EcdsaP256);
    let cfg = |ssls: Value, tls: Value| {
        let mut c = json!({"data_dir": "{DATA}", "ssls": ssls, "tls": tls});
        c["tls"]["listen"] = json!(["127.0.0.1:0"]);
        to_yaml(&c)
    };
    let cases: Vec<(Value, Value, &str)> = vec![
        (
            json!([{"id": "1", "snis": ["a.test"], "cert": a.cert, "key": b.key}]),
            json!({}),
            "ssls[0].key: does not belong to the first certificate of cert",
        ),
        (
            json!([{"id": "1", "snis": ["a.test"], "cert": "nope", "key": a.key}]),
            json!({}),
            "ssls[0].cert: no PEM CERTIFICATE block found",
        ),
        (
            json!([{"id": "1", "snis": ["a b"], "cert": a.cert, "key": a.key}]),
            json!({}),
            "ssls[0].snis[0]: `a b` is not a server name",
        ),
        (
            json!([{"id": "1", "cert": a.cert, "key": a.key}]),
            json!({}),
            "ssls[0].snis: is required",
        ),
        (
            json!([{"id": "1", "snis": ["a.test"], "cert_file": "/nonexistent.pem", "key": a.key}]),
            json!({}),
            "ssls[0].cert_file: cannot read `/nonexistent.pem`",
        ),
        (
            json!([ssl("1", &["a.test"], &a)]),
            json!({"fallback_sni": "c.test"}),
            "tls.fallback_sni: no SSL object in `ssls` has a certificate for `c.test`",
        ),
        (
            json!([ssl("1", &["a.test"], &a)]),
            json!({"protocols": ["TLSv1.1"]}),
            "tls.protocols[0]: `TLSv1.1` is not a protocol Portcullis speaks (allowed: TLSv1.2, TLSv1.3)",
        ),
        (
            json!([ssl("1", &["a.test"], &a), ssl("1", &["b.test"], &b)]),
            json!({}),
            "ssls[1].id: `1` is used by an earlier SSL object",
        ),
        (
            json!([{"id": "a/b", "snis": ["a.test"], "cert": a.cert, "key": a.key}]),
            json!({}),
            "ssls[0].id: \"a/b\" is not a valid id (allowed: 1 to 64 of A-Z a-z 0-9 - _ .)",
        ),
    ];
    for (ssls, tls, want) in cases {
        let (ok, out) = check_config(&cfg(ssls, tls));
        assert!(!ok, "accepted, want {want}");
        assert!(out.contains(want), "want {want:?} in:\n{out}");
    }
    let (ok, out) = check_config(&cfg(
        json!([ssl("1", &["a.test", "*.b.test"], &a)]),
        json!({}),
    ));
    assert!(ok, "{out}");
}

#[test]
fn http_to_https_redirects_plain_requests_before_authentication() {
    let idp = FakeIdp::start();
    let up = Upstream::start("A");
    let mut r = route("1", "/*", &[&up]);
    r["plugins"] = json!({
        "openid-connect": {"client_id": "c", "client_secret": "s", "bearer_only": true,
                           "discovery": idp.discovery_url(), "use_jwks": true},
        "redirect": {"http_to_https": true},
    });
    let pem = tls::harness_cert();
    let p = start_routes(
        vec![r],
        json!([ssl("1", &["localhost"], pem)]),
        json!({"trusted_addresses": ["127.0.0.1"]}),
    );
    let https = tls_port(&p);
    for (host, path) in [
        ("app.test", "/a/b?x=1&y=%20"),
        ("app.test:8080", "/"),
        ("[::1]:80", "/v6"),
    ] {
        let r = Client::connect(p.port).request("GET", path, &[("Host", host)], b"");
        assert_eq!(r.status, 301, "{host}{path}: {:?}", r.headers);
        let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
        let name = if host.starts_with('[') { "[::1]" } else { name };
        assert_eq!(
            r.header("location"),
            Some(&*format!("https://{name}:{https}{path}"))
        );
        assert!(
            r.header("www-authenticate").is_none(),
            "no authentication first"
        );
    }
    // A POST with a body is answered too, and the connection closes (its body was not read).
    let r = Client::connect(p.port).request("POST", "/form", &[("Host", "app.test")], b"a=1");
    assert_eq!(r.status, 301);
    // Over HTTPS the request goes on to authentication.
    let r = p
        .client()
        .request("GET", "/a", &[("Host", "localhost")], b"");
    assert_eq!(r.status, 401, "{:?}", r.headers);
    // A trusted balancer that terminated TLS says so: not redirected again.
    let r = Client::connect(p.port).request(
        "GET",
        "/a",
        &[("Host", "app.test"), ("X-Forwarded-Proto", "https")],
        b"",
    );
    assert_eq!(r.status, 401, "{:?}", r.headers);
    assert_eq!(up.requests(), 0);
    // Options the plugin does not implement are refused by name.
    let (ok, out) = check_config(
        "data_dir: \"{DATA}\"\nroutes:\n  - uri: /x\n    plugins: {redirect: {http_to_https: true, ret_code: 302}}\n    upstream: {nodes: {\"127.0.0.1:1\": 1}}\n",
    );
    assert!(
        !ok && out.contains("plugins.redirect.ret_code: is not supported"),
        "{out}"
    );
}

#[test]
fn ssls_from_the_admin_api_are_live_and_their_keys_never_answered() {
    const KEY: &str = "admin-key-for-the-tls-tests";
    let up = Upstream::start("A");
    let file = cert_for(&["file.test"], KeyKind::EcdsaP256);
    let admin_port = free_port();
    let p = start(
        &up,
        json!([ssl("f", &["file.test"], &file)]),
        json!({"admin": {"listen": format!("127.0.0.1:{admin_port}"), "key": KEY}}),
    );
    assert!(eventually(Duration::from_secs(5), || can_connect(
        admin_port
    )));
    let admin = |method: &str, path: &str, body: Option<Value>| {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        Client::connect(admin_port).request(
            method,
            &format!("/apisix/admin/ssls{path}"),
            &[("X-API-KEY", KEY)],
            body.as_bytes(),
        )
    };
    assert!(leaf(&p, Some("api.test")).is_err());

    // A new SSL object: live for new handshakes; the answer has no key.
    let api = cert_for(&["api.test"], KeyKind::Rsa2048);
    let r = admin(
        "PUT",
        "/s1",
        Some(json!({"snis": ["api.test"], "cert": api.cert, "key": api.key})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.json()["value"].get("key").is_none(), "{}", r.text());
    assert!(!r.text().contains("PRIVATE KEY"), "{}", r.text());
    assert_eq!(leaf(&p, Some("api.test")).unwrap(), api.der);
    let list = admin("GET", "", None);
    assert_eq!(list.json()["total"], 2, "{}", list.text());
    assert!(!list.text().contains("PRIVATE KEY"), "{}", list.text());
    assert!(!admin("GET", "/s1", None).text().contains("PRIVATE KEY"));

    // An Admin object replaces the file's with the same id.
    let newer = cert_for(&["file.test"], KeyKind::EcdsaP256);
    let r = admin(
        "PUT",
        "/f",
        Some(json!({"snis": ["file.test"], "cert": newer.cert, "key": newer.key})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(leaf(&p, Some("file.test")).unwrap(), newer.der);

    // A key that is not the certificate's is refused, naming the field; nothing changes.
    let r = admin(
        "PUT",
        "/s1",
        Some(json!({"snis": ["api.test"], "cert": api.cert, "key": newer.key})),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("key"), "{}", r.text());
    assert_eq!(leaf(&p, Some("api.test")).unwrap(), api.der);

    // Deleted: refused again; the file's comes back for its name.
    assert_eq!(admin("DELETE", "/s1", None).status, 200);
    assert!(leaf(&p, Some("api.test")).is_err());
    assert_eq!(admin("DELETE", "/f", None).status, 200);
    assert_eq!(leaf(&p, Some("file.test")).unwrap(), file.der);
    let mut c = tls_client(&p, "file.test");
    assert_eq!(c.get("/still").echo().path, "/still");
}
