//! SIGHUP against the real binary: a file with a duplicate key is refused like any broken file.

mod common;

use std::fs;
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
    fs::write(&p.config_path, text).expect("write the config file");
    p.signal(libc::SIGHUP);
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
