//! SIGHUP against the real binary: a file with a duplicate key is refused like any broken file,
//! and settings a reload cannot apply are named in the log instead of ignored silently.

mod common;

use std::time::Duration;

use common::auth::bearer_at;
use common::jwt::{claims, SigningKey, RSA1_PUBLIC_PEM};
use common::*;

const RELOAD_WITHIN: Duration = Duration::from_secs(5);
const ISSUER: &str = "https://issuer.test";

/// A config whose `/api/*` route needs a bearer token signed by fixture key 1; `after_plugins`
/// (route fields, indented 4) goes right after the route's `plugins`.
fn protected(up: &Upstream, after_plugins: &str) -> String {
    let pem = serde_json::to_string(RSA1_PUBLIC_PEM).expect("a string serialises");
    format!(
        r#"
listen: 127.0.0.1:{{PORT}}
workers: 1
cpu_affinity: false
data_dir: {{DATA}}
routes:
  - id: "api"
    uri: /api/*
    plugins:
      openid-connect:
        client_id: portcullis
        client_secret: secret
        discovery: http://127.0.0.1:1/.well-known/openid-configuration
        bearer_only: true
        public_key: {pem}
        claim_validator:
          issuer:
            valid_issuers: ["{ISSUER}"]
{after_plugins}    upstream:
      nodes: {{ "{addr}": 1 }}
"#,
        addr = up.addr()
    )
}

/// Rewrites the running proxy's file with `yaml` (`{PORT}`/`{DATA}` as at start) and sends SIGHUP.
fn reload_with(p: &Proxy, yaml: &str) {
    let data = p.dir.path().join("data");
    let text = yaml
        .replace("{PORT}", &p.port.to_string())
        .replace("{DATA}", &data.to_string_lossy());
    p.rewrite_config(&text);
    p.signal(libc::SIGHUP);
}

fn wait_for_log(p: &Proxy, needle: &str) {
    assert!(
        eventually(RELOAD_WITHIN, || p.stderr().contains(needle)),
        "the log never said {needle:?}:\n{}",
        p.log()
    );
}

#[test]
fn sighup_refuses_a_second_plugins_key_and_the_route_keeps_authenticating() {
    let up = Upstream::start("U");
    let p = Proxy::start_yaml(&protected(&up, ""));
    let key = SigningKey::rsa1();
    let token = key.mint(&claims(ISSUER));
    assert_eq!(p.get("/api/x").status, 401, "{}", p.log());
    assert_eq!(bearer_at(&p, "/api/x", &token).status, 200, "{}", p.log());

    // The attack: the same route with an empty `plugins:` after the real one. Read the way
    // YAML libraries read it, the route would lose openid-connect and let everyone through.
    reload_with(&p, &protected(&up, "    plugins: {}\n"));
    assert!(
        eventually(RELOAD_WITHIN, || {
            let log = p.stderr();
            log.contains("reload refused") || log.contains("routes reloaded")
        }),
        "the reload was neither applied nor refused:\n{}",
        p.log()
    );

    // The old route is still there, and still asks for a token.
    let r = p.get("/api/x");
    assert_eq!(
        r.status,
        401,
        "served without a token after the reload:\n{}",
        p.log()
    );
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{:?}",
        r.headers
    );
    let r = bearer_at(&p, "/api/x", &key.mint(&claims(ISSUER)));
    assert_eq!(r.status, 200, "{}", p.log());
    assert_eq!(r.upstream_id(), Some("U"));

    let log = p.stderr();
    assert!(log.contains("reload refused"), "{log}");
    assert!(
        log.contains("routes[0]: duplicate key \"plugins\" (allowed: each key once in a mapping)"),
        "the refusal should name the key and its path:\n{log}"
    );
    assert!(!log.contains("routes reloaded"), "{log}");
}

#[test]
fn sighup_names_each_setting_it_cannot_apply_and_still_applies_the_routes() {
    let up = Upstream::start("U");
    let base = |extra_top: &str, extra_route: &str| {
        format!(
            "listen: 127.0.0.1:{{PORT}}\nworkers: 1\ncpu_affinity: false\ndata_dir: {{DATA}}\n{extra_top}routes:\n  - id: \"1\"\n    uri: /a\n    upstream:\n      nodes: {{ \"{addr}\": 1 }}\n{extra_route}",
            addr = up.addr()
        )
    };
    let p = Proxy::start_yaml(&base(
        "limits:\n  max_header_bytes: 32768\n  max_headers: 100\ntrusted_addresses: []\n",
        "",
    ));
    // A 4 KB header fits the running 32 KB limit.
    let big = "v".repeat(4096);
    let with_big = |p: &Proxy| {
        p.client()
            .request("GET", "/a", &[("X-Big", big.as_str())], b"")
            .status
    };
    assert_eq!(with_big(&p), 200, "{}", p.log());

    // Both fixed settings change, one that is the same is rewritten, and a route is added.
    let route_b = format!(
        "  - id: \"2\"\n    uri: /b\n    upstream:\n      nodes: {{ \"{}\": 1 }}\n",
        up.addr()
    );
    reload_with(
        &p,
        &base(
            "limits:\n  max_headers: 100\n  max_header_bytes: 2048\ntrusted_addresses: [\"10.0.0.0/8\"]\n",
            &route_b,
        ),
    );
    wait_for_log(&p, "routes reloaded");
    let log = p.stderr();
    for field in ["limits.max_header_bytes", "trusted_addresses"] {
        let line = format!("config reload: \"{field}\" changed but applies only at restart");
        assert_eq!(
            log.matches(&line).count(),
            1,
            "expected {line:?} once:\n{log}"
        );
        assert!(
            log.lines().any(|l| l.contains(&line) && l.contains("WARN")),
            "{field} should be a warning:\n{log}"
        );
    }
    let named = log.matches("config reload: \"").count();
    assert_eq!(named, 2, "only the changed settings are named:\n{log}");

    // The routes were applied; the limit, as the log says, was not.
    assert_eq!(p.get("/b").status, 200, "{}", p.log());
    assert_eq!(
        with_big(&p),
        200,
        "the header limit changed without a restart"
    );
}
