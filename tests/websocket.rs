//! WebSocket through the real binary (SPEC §1.5), with real endpoints on both sides: Python's
//! `websockets` package (tests/python/requirements.txt, installed by tests/run.sh) as the
//! client and as the echo upstream. Over plain HTTP and over TLS (`wss`).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fake_idp::FakeIdp;
use common::jwt::{claims, SigningKey};
use common::tls::ssl;
use common::*;
use serde_json::{json, Value};

fn python() -> PathBuf {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/.venv/bin/python3"
    ));
    assert!(
        p.exists(),
        "{} is missing: tests/run.sh installs tests/python/requirements.txt there",
        p.display()
    );
    p
}

fn script(name: &str) -> String {
    format!("{}/tests/python/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The Python echo server (tests/python/ws_upstream.py), killed on drop.
struct WsUpstream {
    child: Child,
    port: u16,
}

impl WsUpstream {
    fn start() -> WsUpstream {
        let port = free_port();
        let child = Command::new(python())
            .arg(script("ws_upstream.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the WebSocket upstream");
        let up = WsUpstream { child, port };
        assert!(
            eventually(Duration::from_secs(10), || can_connect(port)),
            "the WebSocket upstream did not listen"
        );
        up
    }

    fn node(&self) -> Value {
        json!({ format!("127.0.0.1:{}", self.port): 1 })
    }
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Site {
    proxy: Proxy,
    tls_port: u16,
    key: SigningKey,
    idp: FakeIdp,
    _up: WsUpstream,
    dir: TempDir,
}

/// A proxy in front of the echo server: `/echo`, `/server-closes`, `/reject` and `/headers`
/// open with WebSocket on; `/auth/*` behind `openid-connect` (bearer tokens), its path
/// rewritten to `/headers`; `/nows/*` without `enable_websocket`. The upstream's read timeout
/// (the tunnel's idle limit) is `idle` seconds. Plain and TLS listeners.
fn site(idle: f64) -> Site {
    let up = WsUpstream::start();
    let key = SigningKey::rsa1();
    let idp = FakeIdp::start_with_key(SigningKey::rsa1());
    let upstream = json!({"nodes": up.node(), "timeout": {"connect": 2, "send": 5, "read": idle}});
    let ws = |id: &str, uri: &str| json!({"id": id, "uri": uri, "enable_websocket": true, "upstream": upstream});
    let mut auth = ws("auth", "/auth/*");
    auth["plugins"] = json!({
        "openid-connect": {"client_id": "portcullis", "client_secret": "s", "bearer_only": true,
                           "discovery": idp.discovery_url(), "use_jwks": true},
        "proxy-rewrite": {"uri": "/headers"},
    });
    let routes = vec![
        ws("1", "/echo"),
        ws("2", "/server-closes"),
        ws("3", "/reject"),
        ws("4", "/headers"),
        auth,
        json!({"id": "nows", "uri": "/nows/*", "upstream": upstream,
               "plugins": {"proxy-rewrite": {"uri": "/echo"}}}),
    ];
    let tls_port = free_port();
    let mut cfg = base_config(routes);
    cfg["tls"] = json!({"listen": [format!("127.0.0.1:{tls_port}")]});
    cfg["ssls"] = json!([ssl("1", &["localhost"], tls::harness_cert())]);
    let proxy = Proxy::start(cfg);
    let dir = TempDir::new();
    dir.write("ca.pem", &tls::harness_cert().cert);
    Site {
        proxy,
        tls_port,
        key,
        idp,
        _up: up,
        dir,
    }
}

impl Site {
    fn url(&self, scheme: &str, path: &str) -> String {
        match scheme {
            "ws" => format!("ws://127.0.0.1:{}{path}", self.proxy.port),
            _ => format!("wss://localhost:{}{path}", self.tls_port),
        }
    }

    /// Run one client scenario; its output lines.
    fn client(&self, url: &str, scenario: &str, headers: &[&str]) -> Vec<String> {
        let mut child = Command::new(python())
            .arg(script("ws_client.py"))
            .arg(url)
            .arg(scenario)
            .args(headers)
            .env("WS_CA", self.dir.path().join("ca.pem"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the WebSocket client");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{scenario} on {url}: {text}\n{}\nproxy: {}",
            String::from_utf8_lossy(&out.stderr),
            self.proxy.stderr()
        );
        text.lines().map(str::to_string).collect()
    }
}

#[test]
fn text_and_binary_messages_of_1_mib_echo_over_ws_and_wss() {
    let s = site(5.0);
    for scheme in ["ws", "wss"] {
        let lines = s.client(&s.url(scheme, "/echo"), "echo", &[]);
        assert_eq!(
            lines,
            [
                "status 101",
                "text 1048577 True",
                "binary 1048576 True",
                "text 1048577 True",
                "binary 1048576 True"
            ],
            "{scheme}"
        );
    }
    // Relaying 4 MiB each way held no message whole.
    assert!(s.proxy.peak_rss() < 64 << 20, "{}", s.proxy.peak_rss());
}

#[test]
fn either_side_may_close() {
    let s = site(5.0);
    for scheme in ["ws", "wss"] {
        let lines = s.client(&s.url(scheme, "/echo"), "client-closes", &[]);
        assert_eq!(lines, ["status 101", "echo bye", "closed 1000"], "{scheme}");
        let lines = s.client(&s.url(scheme, "/server-closes"), "server-closes", &[]);
        assert_eq!(
            lines,
            ["status 101", "echo last", "closed 1000"],
            "{scheme}"
        );
    }
    // The tunnels are gone; the proxy serves on.
    let r = s.proxy.get("/nows/x");
    assert_ne!(r.status, 101);
}

#[test]
fn a_tunnel_idle_past_the_read_timeout_is_closed() {
    let s = site(1.0);
    for scheme in ["ws", "wss"] {
        let lines = s.client(&s.url(scheme, "/echo"), "idle", &[]);
        assert_eq!(lines[0], "status 101");
        let secs: f64 = lines[1]
            .strip_prefix("idle-closed ")
            .unwrap_or_else(|| panic!("{lines:?}"))
            .parse()
            .unwrap();
        assert!(
            (0.8..4.0).contains(&secs),
            "{scheme}: closed after {secs} s"
        );
    }
}

#[test]
fn an_upgrade_is_authenticated_like_any_request() {
    let s = site(5.0);
    for scheme in ["ws", "wss"] {
        let lines = s.client(&s.url(scheme, "/auth/x"), "headers", &[]);
        assert_eq!(lines[0], "status 401", "{lines:?}");
        let bad = "Authorization=Bearer not.a.token";
        assert_eq!(
            s.client(&s.url(scheme, "/auth/x"), "headers", &[bad])[0],
            "status 401"
        );
        let token = s.key.mint(&claims(&s.idp.issuer()));
        let auth = format!("Authorization=Bearer {token}");
        let lines = s.client(&s.url(scheme, "/auth/x"), "headers", &[&auth]);
        assert_eq!(lines[0], "status 101", "{lines:?}");
        let seen: Vec<(String, String)> =
            serde_json::from_str(lines[1].strip_prefix("headers ").unwrap()).unwrap();
        let get = |name: &str| {
            seen.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("upgrade"), Some("websocket"), "{seen:?}");
        assert_eq!(get("connection"), Some("Upgrade"), "{seen:?}");
        assert!(get("sec-websocket-key").is_some(), "{seen:?}");
        assert_eq!(
            get("x-forwarded-proto"),
            Some(if scheme == "ws" { "http" } else { "https" })
        );
        assert!(
            get("x-userinfo").is_some(),
            "identity reached the upstream: {seen:?}"
        );
    }
}

#[test]
fn an_upstream_that_does_not_switch_is_relayed_as_an_answer() {
    let s = site(5.0);
    for scheme in ["ws", "wss"] {
        let lines = s.client(&s.url(scheme, "/reject"), "echo", &[]);
        assert_eq!(lines, ["status 403", "body no websocket here"], "{scheme}");
        // Without enable_websocket, Upgrade is dropped as hop-by-hop: the upstream sees a
        // plain GET and refuses it, and no tunnel opens.
        let lines = s.client(&s.url(scheme, "/nows/x"), "echo", &[]);
        assert_eq!(lines[0], "status 426", "{lines:?}");
    }
    // A plain request after a refused upgrade on the same connection is served.
    let mut c = s.proxy.client();
    let r = c.request(
        "GET",
        "/reject",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    );
    assert_eq!(r.status, 403);
    assert_eq!(c.get("/nows/y").status, 426);
}
