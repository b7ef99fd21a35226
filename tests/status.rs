//! The status listener (SPEC §1.6) against the real binary: `/metrics` parsed whole by Python's
//! `prometheus_client` parser, each counter scraped before and after a known mix of traffic and
//! checked to have moved by exactly what was sent (per route and status, each auth outcome
//! caused on purpose, cache hits and misses, an IdP failure, a failed upstream connect);
//! `/healthz`; `/readyz` while the IdP is down at start and once it answers; the JSON access
//! log; and the switch that turns counting off.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::auth::*;
use common::fake_idp::{FakeIdp, IdpResponse, INTROSPECTION_PATH};
use common::jwt::{claims, flip_signature_bit, jwks, now, unique, with, SigningKey};
use common::metrics::Metrics;
use common::*;
use serde_json::{json, Value};

/// An address nothing listens on (bound, then released).
fn dead_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    drop(l);
    a
}

/// The Admin API of a proxy started with [`with_admin`]: one call with the key and a JSON body
/// (none for `Value::Null`).
struct Admin {
    port: u16,
    key: &'static str,
}

impl Admin {
    fn call(&self, method: &str, path: &str, body: &Value) -> Response {
        let body = match body {
            Value::Null => Vec::new(),
            v => v.to_string().into_bytes(),
        };
        Client::connect(self.port).request(
            method,
            path,
            &[
                ("X-API-KEY", self.key),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
    }
}

/// `cfg` with an Admin API listener and `key`, started, once the listener accepts.
fn with_admin(mut cfg: Value, key: &'static str) -> (Proxy, Admin) {
    let port = free_port();
    cfg["admin"] = json!({"listen": format!("127.0.0.1:{port}"), "key": key});
    let p = Proxy::start(cfg);
    assert!(eventually(Duration::from_secs(5), || can_connect(port)));
    (p, Admin { port, key })
}

#[test]
fn health_and_unknown_paths_and_methods() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/a/*", &[&up])]));
    let h = p.status_get("/healthz");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    // Without any identity provider to wait for, the proxy is ready at once.
    let r = p.status_get("/readyz");
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("ready"))
    );
    assert_eq!(p.status_get("/nope").status, 404);
    assert_eq!(p.status_request("POST", "/metrics").status, 405);
    let head = p.status_request("HEAD", "/healthz");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // The status listener is not the data plane, and the data plane has no /healthz.
    assert_eq!(p.get("/healthz").status, 404);
}

#[test]
fn the_exposition_parses_whole_with_help_and_type_for_every_family() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("web.v1_a-b", "/a/*", &[&up])]));
    assert_eq!(p.get("/a/x").status, 200);
    let m = p.scrape_settled();
    // Both paths APISIX users know serve the same.
    let apisix = p.status_get("/apisix/prometheus/metrics");
    assert_eq!(apisix.status, 200);
    Metrics::parse(&apisix.text());
    for (name, kind, help) in &m.families {
        assert!(!help.is_empty(), "{name} has no HELP");
        assert!(
            m.text.contains(&format!("# TYPE {}", name)),
            "{name} ({kind}) has no TYPE"
        );
    }
    let kinds: Vec<(&str, &str)> = m
        .families
        .iter()
        .map(|(n, k, _)| (n.as_str(), k.as_str()))
        .collect();
    for expected in [
        ("apisix_http_status", "counter"),
        ("apisix_http_latency", "histogram"),
        ("apisix_bandwidth", "counter"),
        ("apisix_node_info", "gauge"),
        ("apisix_nginx_http_current_connections", "gauge"),
        ("portcullis_auth", "counter"),
        ("portcullis_login", "counter"),
        ("portcullis_token_cache_hits", "counter"),
        ("portcullis_token_cache_misses", "counter"),
        ("portcullis_token_cache_evictions", "counter"),
        ("portcullis_token_cache_entries", "gauge"),
        ("portcullis_idp_requests", "counter"),
        ("portcullis_idp_request_duration_seconds", "histogram"),
        ("portcullis_jwks_refresh", "counter"),
        ("portcullis_upstream_connect_errors", "counter"),
        ("portcullis_config_changes", "counter"),
    ] {
        assert!(kinds.contains(&expected), "{expected:?} missing: {kinds:?}");
    }
    let info: Vec<_> = m.matching("apisix_node_info", &[]).collect();
    assert_eq!(info.len(), 1);
    assert!(!info[0].labels["hostname"].is_empty());
    // The route label is the route id.
    assert_eq!(
        m.get(
            "apisix_http_status_total",
            &[("code", "200"), ("route", "web.v1_a-b")]
        ),
        1.0,
        "{}",
        m.text
    );
    // APISIX's label set, so its dashboard's queries match.
    let s = m
        .matching("apisix_http_status_total", &[("route", "web.v1_a-b")])
        .next()
        .unwrap();
    let names: Vec<&str> = s.labels.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "code",
            "consumer",
            "matched_host",
            "matched_uri",
            "node",
            "route",
            "service"
        ]
    );
    let bucket = m
        .matching("apisix_http_latency_bucket", &[("type", "request")])
        .next()
        .unwrap();
    assert!(bucket.labels.contains_key("le"));
    // Buckets in milliseconds, as APISIX's.
    assert!(m.text.contains("le=\"60000\""));
}

#[test]
fn request_counters_move_by_exactly_what_was_sent_on_every_core() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![
        route("web", "/a/*", &[&up]),
        json!({"id": "down", "uri": "/down/*",
               "upstream": {"nodes": {dead_addr(): 1}, "timeout": {"connect": 2, "send": 2, "read": 2}}}),
    ]);
    cfg["workers"] = json!(2);
    let p = Proxy::start(cfg);
    let before = p.scrape_settled();
    let mut sent_web = 0u64;
    for i in 0..5 {
        let path = format!("/a/{i}");
        sent_web += Client::build("GET", &path, &[], b"").len() as u64;
        let r = Client::connect(p.port).request("GET", &path, &[], b"");
        assert_eq!(r.status, 200);
    }
    // A body of announced length counts as received too.
    let body = vec![b'x'; 1000];
    sent_web += Client::build("POST", "/a/post", &[], &body).len() as u64;
    assert_eq!(
        Client::connect(p.port)
            .request("POST", "/a/post", &[], &body)
            .status,
        200
    );
    for _ in 0..2 {
        assert_eq!(p.get("/nowhere").status, 404);
    }
    assert_eq!(p.get("/down/x").status, 502);
    let after = p.scrape_settled();
    let (status, latency) = ("apisix_http_status_total", "apisix_http_latency_count");
    let web = |t| [("type", t), ("route", "web")];
    let web_inf = |t| [("type", t), ("route", "web"), ("le", "+Inf")];
    after.assert_moved(
        &before,
        &[
            (
                status,
                &[("code", "200"), ("route", "web"), ("node", "127.0.0.1")],
                6.0,
            ),
            (status, &[("route", "web")], 6.0),
            (status, &[("code", "404"), ("route", ""), ("node", "")], 2.0),
            (status, &[("code", "502"), ("route", "down")], 1.0),
            (status, &[], 9.0),
            (
                "portcullis_upstream_connect_errors_total",
                &[("route", "down"), ("node", "127.0.0.1")],
                1.0,
            ),
            ("apisix_bandwidth_total", &web("ingress"), sent_web as f64),
            (latency, &web("request"), 6.0),
            (latency, &web("apisix"), 6.0),
            (latency, &web("upstream"), 6.0),
            ("apisix_http_latency_bucket", &web_inf("request"), 6.0),
            ("apisix_http_latency_bucket", &web_inf("apisix"), 6.0),
            ("apisix_http_latency_bucket", &web_inf("upstream"), 6.0),
            // Only answered requests have an upstream latency.
            (latency, &[("type", "upstream"), ("route", "down")], 0.0),
            (latency, &[("type", "request"), ("route", "down")], 1.0),
            // Every request came on its own connection; the scrapes are not the data plane's.
            (
                "apisix_nginx_http_current_connections",
                &[("state", "accepted")],
                9.0,
            ),
            ("apisix_http_requests_total", &[], 9.0),
        ],
    );
    let egress = after.since(&before, "apisix_bandwidth_total", &web("egress"));
    assert!(egress > 6.0 * 100.0, "{egress}\n{}", after.text);
}

/// The plugin options for a JWT route at `idp`.
fn jwt_plugin(idp: &FakeIdp) -> Value {
    json!({
        "client_id": "portcullis",
        "client_secret": "metrics-client-secret-value",
        "discovery": idp.discovery_url(),
        "bearer_only": true,
        "use_jwks": true,
    })
}

#[test]
fn each_auth_outcome_caches_and_idp_failures_are_counted_exactly() {
    let key = SigningKey::rsa1();
    let idp = FakeIdp::start_with_jwks(jwks(&[&key]));
    let active_token = unique("active-opaque-token");
    let inactive_token = unique("inactive-opaque-token");
    let failing_token = unique("failing-opaque-token");
    let (a, i) = (active_token.clone(), inactive_token.clone());
    idp.on(INTROSPECTION_PATH, move |req| {
        let token = req.form_value("token").unwrap_or_default();
        if token == a {
            IdpResponse::json(
                200,
                &json!({"active": true, "exp": now() + 300, "scope": "x"}),
            )
        } else if token == i {
            IdpResponse::json(200, &json!({"active": false}))
        } else {
            IdpResponse::json(500, &json!({"error": "server_error"}))
        }
    });
    let up = Upstream::start("A");
    let intro = with(
        &jwt_plugin(&idp),
        json!({"use_jwks": null, "introspection_endpoint": idp.introspection_url(),
               "client_secret": "intro-client-secret-value"}),
    );
    let p = start_routes(
        vec![
            oidc_route(
                "jwt",
                "/jwt/*",
                &up,
                with(
                    &jwt_plugin(&idp),
                    json!({"required_scopes": ["read"], "claim_validator": {
                        "audience": {"required": true, "match_with_client_id": true}}}),
                ),
            ),
            oidc_route("intro", "/intro/*", &up, intro),
        ],
        &up,
    );
    let good = key.mint(&claims(&idp.issuer()));
    // Keys loaded (and the start-up refresh done) before counting.
    assert!(
        eventually(Duration::from_secs(5), || bearer_at(&p, "/jwt/x", &good)
            .status
            == 200),
        "{}",
        p.log()
    );
    let before = p.scrape_settled();

    let expired = key.mint(&with(
        &claims(&idp.issuer()),
        json!({"exp": now() - 3600, "iat": now() - 7200}),
    ));
    let bad_sig = flip_signature_bit(&key.mint(&claims(&idp.issuer())));
    let unknown_kid = SigningKey::rsa2()
        .with_kid("not-in-the-set")
        .mint(&claims(&idp.issuer()));
    let changed = |c: Value| key.mint(&with(&claims(&idp.issuer()), c));
    let not_yet_valid = changed(json!({"nbf": now() + 3600}));
    let bad_issuer = changed(json!({"iss": "https://elsewhere.example"}));
    let bad_audience = changed(json!({"aud": "another-client"}));
    let no_scope = changed(json!({"scope": "openid profile"}));
    // A token this core has not seen: one miss, then one hit.
    let fresh = key.mint(&with(
        &claims(&idp.issuer()),
        json!({"sub": unique("user")}),
    ));
    assert_eq!(bearer_at(&p, "/jwt/x", &fresh).status, 200);
    assert_eq!(bearer_at(&p, "/jwt/x", &fresh).status, 200);
    assert_eq!(get_with(p.port, "/jwt/x", &[]).status, 401);
    assert_eq!(bearer_at(&p, "/jwt/x", "not-a-jwt").status, 401);
    assert_eq!(bearer_at(&p, "/jwt/x", &expired).status, 401);
    assert_eq!(bearer_at(&p, "/jwt/x", &bad_sig).status, 401);
    assert_eq!(bearer_at(&p, "/jwt/x", &unknown_kid).status, 401);
    assert_eq!(bearer_at(&p, "/jwt/x", &not_yet_valid).status, 401);
    assert_eq!(bearer_at(&p, "/jwt/x", &bad_issuer).status, 401);
    assert_eq!(bearer_at(&p, "/jwt/x", &bad_audience).status, 403);
    assert_eq!(bearer_at(&p, "/jwt/x", &no_scope).status, 403);
    assert_eq!(bearer_at(&p, "/intro/x", &active_token).status, 200);
    assert_eq!(bearer_at(&p, "/intro/x", &active_token).status, 200);
    assert_eq!(bearer_at(&p, "/intro/x", &inactive_token).status, 401);
    assert_eq!(bearer_at(&p, "/intro/x", &failing_token).status, 401);
    let after = p.scrape_settled();
    let d = |name: &str, labels: &[(&str, &str)]| after.since(&before, name, labels);
    let auth = |route: &str, method: &str, outcome: &str| {
        d(
            "portcullis_auth_total",
            &[("route", route), ("method", method), ("outcome", outcome)],
        )
    };
    for (outcome, n) in [
        ("ok", 2.0),
        ("no_token", 1.0),
        ("malformed", 1.0),
        ("expired", 1.0),
        ("bad_signature", 1.0),
        ("unknown_kid", 1.0),
        ("not_yet_valid", 1.0),
        ("bad_issuer", 1.0),
        ("bad_audience", 1.0),
        ("insufficient_scope", 1.0),
        ("inactive", 0.0),
        ("idp_error", 0.0),
    ] {
        assert_eq!(
            auth("jwt", "jwt", outcome),
            n,
            "jwt {outcome}\n{}",
            after.text
        );
    }
    assert_eq!(d("portcullis_auth_total", &[("route", "jwt")]), 11.0);
    for (outcome, n) in [("ok", 2.0), ("inactive", 1.0), ("idp_error", 1.0)] {
        assert_eq!(
            auth("intro", "introspection", outcome),
            n,
            "introspection {outcome}\n{}",
            after.text
        );
    }
    assert_eq!(d("portcullis_auth_total", &[("route", "intro")]), 4.0);
    let cache = |c| [("cache", c)];
    let introspection_calls = |outcome| [("endpoint", "introspection"), ("outcome", outcome)];
    after.assert_moved(
        &before,
        &[
            // The refusals are answers too, per route and status.
            (
                "apisix_http_status_total",
                &[("route", "jwt"), ("code", "401")],
                7.0,
            ),
            (
                "apisix_http_status_total",
                &[("route", "jwt"), ("code", "403")],
                2.0,
            ),
            // Caches: every token with a credential is looked up once per request; only a
            // repeat hits.
            ("portcullis_token_cache_hits_total", &cache("jwt"), 1.0),
            ("portcullis_token_cache_misses_total", &cache("jwt"), 9.0),
            (
                "portcullis_token_cache_hits_total",
                &cache("introspection"),
                1.0,
            ),
            (
                "portcullis_token_cache_misses_total",
                &cache("introspection"),
                3.0,
            ),
        ],
    );
    // The warm-up token and the fresh one.
    assert_eq!(
        after.get("portcullis_token_cache_entries", &[("cache", "jwt")]),
        2.0
    );
    // The active and the (briefly cached) inactive answer.
    assert_eq!(
        after.get(
            "portcullis_token_cache_entries",
            &[("cache", "introspection")]
        ),
        2.0
    );

    after.assert_moved(
        &before,
        &[
            // IdP calls: two usable introspection answers, one failure, each timed.
            (
                "portcullis_idp_requests_total",
                &introspection_calls("ok"),
                2.0,
            ),
            (
                "portcullis_idp_requests_total",
                &introspection_calls("bad_status"),
                1.0,
            ),
            (
                "portcullis_idp_request_duration_seconds_count",
                &[("endpoint", "introspection")],
                3.0,
            ),
            // The unknown key id made one refresh of the key set (discovery and JWKS fetched
            // again).
            (
                "portcullis_jwks_refresh_total",
                &[("reason", "unknown_kid")],
                1.0,
            ),
            (
                "portcullis_idp_requests_total",
                &[("endpoint", "jwks"), ("outcome", "ok")],
                1.0,
            ),
        ],
    );
    assert!(
        after.get(
            "portcullis_idp_requests_total",
            &[("endpoint", "discovery"), ("outcome", "ok")]
        ) >= 2.0
    );

    // Each refusal is logged once, at info, with its reason kind; no token is.
    let log = p.stderr();
    for reason in [
        "expired",
        "bad_signature",
        "unknown_kid",
        "malformed",
        "not_yet_valid",
        "bad_issuer",
        "bad_audience",
        "insufficient_scope",
        "inactive",
        "idp_error",
        "no_token",
    ] {
        let lines = log
            .lines()
            .filter(|l| {
                l.contains("authentication refused") && l.contains(&format!("reason=\"{reason}\""))
            })
            .count();
        assert_eq!(lines, 1, "{reason}:\n{log}");
    }
    assert!(log
        .lines()
        .filter(|l| l.contains("authentication refused"))
        .all(|l| l.contains(" INFO ")));
    for t in [
        &good,
        &fresh,
        &expired,
        &bad_sig,
        &unknown_kid,
        &not_yet_valid,
        &bad_issuer,
        &bad_audience,
        &no_scope,
        &active_token,
        &inactive_token,
        &failing_token,
    ] {
        assert!(!log.contains(t.as_str()), "a token is in the log:\n{log}");
    }
}

#[test]
fn readyz_is_503_naming_the_provider_while_the_idp_is_down_then_200() {
    let key = SigningKey::rsa1();
    let idp = FakeIdp::start_with_jwks(jwks(&[&key]));
    idp.go_down();
    let up = Upstream::start("A");
    let p = start_routes(vec![oidc_route("1", "/*", &up, jwt_plugin(&idp))], &up);
    // Serving (healthy), but not ready.
    assert_eq!(p.status_get("/healthz").status, 200);
    let r = p.status_get("/readyz");
    assert_eq!(r.status, 503, "{}", r.text());
    let body = r.json();
    assert_eq!(body["status"], "not ready");
    let waiting = body["waiting"].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{body}");
    assert_eq!(waiting[0]["provider"], idp.discovery_url());
    assert_eq!(waiting[0]["fetch"], "discovery");
    assert!(!waiting[0]["error"].as_str().unwrap().is_empty(), "{body}");
    assert!(!r.text().contains("metrics-client-secret-value"));

    idp.come_up();
    let mut last = None;
    let ready = eventually(Duration::from_secs(15), || {
        let r = p.status_get("/readyz");
        let ok = r.status == 200;
        last = Some(r.text());
        ok
    });
    assert!(ready, "still not ready: {last:?}\n{}", p.log());
    // Ready means the keys are there: a token is accepted at once.
    assert_eq!(bearer(&p, &key.mint(&claims(&idp.issuer()))).status, 200);
    let m = p.scrape();
    assert!(m.get("portcullis_jwks_refresh_total", &[("reason", "schedule")]) >= 2.0);
    assert!(
        m.get(
            "portcullis_idp_requests_total",
            &[("endpoint", "discovery"), ("outcome", "unreachable")]
        ) >= 1.0,
        "{}",
        m.text
    );
}

#[test]
fn the_json_access_log_has_one_object_per_request_and_no_secrets() {
    let key = SigningKey::rsa1();
    let idp = FakeIdp::start_with_jwks(jwks(&[&key]));
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![
        route("open", "/open/*", &[&up]),
        oidc_route("jwt", "/jwt/*", &up, jwt_plugin(&idp)),
    ]);
    cfg["access_log"] = json!({"format": "json"});
    let p = Proxy::start(cfg);
    let good = key.mint(&claims(&idp.issuer()));
    assert!(eventually(Duration::from_secs(5), || bearer_at(
        &p,
        "/jwt/x?code=query-secret-1",
        &good
    )
    .status
        == 200));
    let expired = key.mint(&with(
        &claims(&idp.issuer()),
        json!({"exp": now() - 3600, "iat": now() - 7200}),
    ));
    assert_eq!(bearer_at(&p, "/jwt/y", &expired).status, 401);
    assert_eq!(
        get_with(
            p.port,
            "/open/z?access_token=query-secret-2",
            &[("Cookie", "session=cookie-secret-3")]
        )
        .status,
        200
    );
    let mut lines: Vec<Value> = Vec::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            lines = p
                .stderr()
                .lines()
                .filter(|l| l.starts_with('{'))
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            lines.iter().any(|l| l["route"] == "open")
        }),
        "{}",
        p.log()
    );
    let open = lines.iter().find(|l| l["route"] == "open").unwrap();
    assert_eq!(open["status"], 200);
    assert_eq!(open["request"], "GET /open/z HTTP/1.1");
    assert!(open["upstream"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(open["upstream_duration"].as_f64().unwrap() >= 0.0);
    assert!(open["duration"].as_f64().unwrap() >= open["upstream_duration"].as_f64().unwrap());
    assert!(open["bytes_sent"].as_u64().unwrap() > 0);
    assert!(open["bytes_received"].as_u64().unwrap() > 0);
    assert_eq!(open["auth_method"], Value::Null);
    let refused = lines
        .iter()
        .find(|l| l["route"] == "jwt" && l["status"] == 401)
        .unwrap();
    assert_eq!(refused["auth_method"], "jwt");
    assert_eq!(refused["auth_outcome"], "expired");
    assert_eq!(refused["upstream"], Value::Null);
    let accepted = lines
        .iter()
        .find(|l| l["route"] == "jwt" && l["status"] == 200)
        .unwrap();
    assert_eq!(accepted["auth_outcome"], "ok");
    assert_eq!(accepted["request"], "GET /jwt/x HTTP/1.1");
    let log = p.stderr();
    for secret in [
        good.as_str(),
        expired.as_str(),
        "query-secret-1",
        "query-secret-2",
        "cookie-secret-3",
        "metrics-client-secret-value",
    ] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
}

#[test]
fn with_metrics_off_nothing_is_served_and_requests_still_are() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/a/*", &[&up])]);
    cfg["status"] = json!({"listen": "127.0.0.1:0", "metrics": false});
    let p = Proxy::start(cfg);
    assert_eq!(p.get("/a/x").status, 200);
    let r = p.status_get("/metrics");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("status.metrics"), "{}", r.text());
    assert_eq!(p.status_get("/healthz").status, 200);
}

#[test]
fn a_taken_status_port_stops_the_start_with_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("1", "/a/*", &[&up])]);
    cfg["status"] = json!({ "listen": addr });
    cfg["listen"] = json!(format!("127.0.0.1:{}", free_port()));
    let dir = TempDir::new();
    cfg["data_dir"] = json!(dir.path().join("data").to_string_lossy());
    let mut p = Proxy::spawn_in(dir, &to_yaml(&cfg), &[], vec![]);
    let st = p.wait_exit(Duration::from_secs(10)).expect("still running");
    assert!(!st.success());
    let out = p.output();
    assert!(out.contains(&format!("status.listen {addr}")), "{out}");
}

#[test]
fn a_reload_counts_as_a_config_change_applied_or_rejected() {
    let up = Upstream::start("A");
    let cfg = base_config(vec![route("1", "/a/*", &[&up])]);
    let p = Proxy::start(cfg.clone());
    let before = p.scrape_settled();
    let mut next = cfg.clone();
    next["listen"] = json!(format!("127.0.0.1:{}", p.port));
    next["data_dir"] = json!(p.dir.path().join("data").to_string_lossy());
    p.rewrite_config(&to_yaml(&next));
    p.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || p
        .stderr()
        .contains("routes reloaded")));
    std::fs::write(&p.config_path, "routes: nope\n").unwrap();
    p.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || p
        .stderr()
        .contains("reload refused")));
    let after = p.scrape_settled();
    assert_eq!(
        after.config_changes_since(&before, "file"),
        (1.0, 1.0),
        "{}",
        after.text
    );
}

#[test]
fn connection_states_follow_idle_busy_and_closed_connections() {
    let up = Upstream::start("A");
    let p = Proxy::start(base_config(vec![route("1", "/*", &[&up])]));
    let state =
        |m: &Metrics, s: &str| m.get("apisix_nginx_http_current_connections", &[("state", s)]);
    let before = p.scrape_settled();
    for s in ["active", "reading", "writing", "waiting"] {
        assert_eq!(state(&before, s), 0.0, "{s}\n{}", before.text);
    }
    // One connection idle after its answer, one waiting on a slow upstream.
    let mut idle = p.client();
    assert_eq!(idle.get("/x").status, 200);
    let port = p.port;
    let slow = std::thread::spawn(move || Client::connect(port).get("/sleep/1500").status);
    let mut m = p.scrape();
    assert!(
        eventually(Duration::from_secs(5), || {
            m = p.scrape();
            state(&m, "writing") == 1.0
        }),
        "{}",
        m.text
    );
    assert_eq!(state(&m, "active"), 2.0, "{}", m.text);
    assert_eq!(state(&m, "waiting"), 1.0, "{}", m.text);
    assert_eq!(slow.join().unwrap(), 200);
    drop(idle);
    let after = p.scrape_settled();
    for s in ["active", "reading", "writing", "waiting"] {
        assert_eq!(state(&after, s), 0.0, "{s}\n{}", after.text);
    }
    assert_eq!(state(&after, "accepted") - state(&before, "accepted"), 2.0);
}

#[test]
fn admin_api_writes_count_as_config_changes_applied_or_rejected() {
    let up = Upstream::start("A");
    let cfg = base_config(vec![route("1", "/a/*", &[&up])]);
    let (p, api) = with_admin(cfg, "status-test-admin-key-0123456789");
    let before = p.scrape_settled();
    let admin = |method: &str, path: &str, body: &Value| api.call(method, path, body);
    let good = json!({"uri": "/b/*", "upstream": {"nodes": {up.addr(): 1}}});
    let r = admin("PUT", "/apisix/admin/routes/2", &good);
    assert!(
        r.status == 200 || r.status == 201,
        "{} {}",
        r.status,
        r.text()
    );
    let r = admin(
        "PUT",
        "/apisix/admin/routes/3",
        &json!({"uri": "/c/*", "plugins": {"no-such-plugin": {}}, "upstream": {"nodes": {up.addr(): 1}}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = admin("PATCH", "/apisix/admin/routes/2", &json!({"uri": "/bb/*"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(eventually(Duration::from_secs(5), || p.get("/bb/x").status == 200));
    let after = p.scrape_settled();
    assert_eq!(
        after.config_changes_since(&before, "admin"),
        (2.0, 1.0),
        "{}",
        after.text
    );
    // The new route is counted under its id.
    assert_eq!(
        after.get(
            "apisix_http_status_total",
            &[("route", "2"), ("code", "200")]
        ),
        1.0
    );
}

#[test]
fn matched_uri_and_host_name_the_patterns_and_a_deleted_routes_series_leave() {
    let up = Upstream::start("A");
    let mut cfg = base_config(vec![route("keep", "/keep/*", &[&up])]);
    // One worker: a core takes a new table on its next request, so with one the moment every
    // core has dropped a deleted route's block is known.
    cfg["workers"] = json!(1);
    let (p, api) = with_admin(cfg, "status-test-admin-key-matched-0001");
    let admin = |method: &str, body: &Value| {
        let r = api.call(method, "/apisix/admin/routes/m", body);
        assert!(r.status < 300, "{} {}", r.status, r.text());
    };
    let get = |path: &str, host: &str| {
        Client::connect(p.port)
            .request("GET", path, &[("Host", host)], b"")
            .status
    };
    admin(
        "PUT",
        &json!({"uris": ["/m1", "/m2/*"], "hosts": ["a.test", "*.b.test"],
                "upstream": {"nodes": {up.addr(): 1}}}),
    );
    assert!(eventually(Duration::from_secs(5), || get("/m1", "a.test") == 200));
    let before = p.scrape_settled();
    assert_eq!(get("/m1", "a.test"), 200);
    for _ in 0..2 {
        assert_eq!(get("/m2/x", "x.B.test"), 200);
    }
    let status = "apisix_http_status_total";
    let m = p.scrape_settled();
    m.assert_moved(
        &before,
        &[
            (
                status,
                &[
                    ("route", "m"),
                    ("matched_uri", "/m1"),
                    ("matched_host", "a.test"),
                ],
                1.0,
            ),
            (
                status,
                &[
                    ("route", "m"),
                    ("matched_uri", "/m2/*"),
                    ("matched_host", "*.b.test"),
                ],
                2.0,
            ),
            (status, &[("route", "m")], 3.0),
        ],
    );
    // A route without hosts has an empty matched_host; a route changed to other patterns keeps
    // its counts, each under the pattern it was made with.
    admin("PATCH", &json!({"uris": ["/m3"], "hosts": null}));
    assert!(eventually(Duration::from_secs(5), || get("/m3", "c.test") == 200));
    let after = p.scrape_settled();
    after.assert_moved(
        &m,
        &[
            (
                status,
                &[("route", "m"), ("matched_uri", "/m3"), ("matched_host", "")],
                1.0,
            ),
            (status, &[("route", "m"), ("matched_uri", "/m1")], 0.0),
        ],
    );
    assert_eq!(
        after.get(status, &[("route", "m"), ("matched_uri", "/m2/*")]),
        2.0
    );
    // Deleted: once the core has taken the table without it, its series are gone.
    let r = api.call("DELETE", "/apisix/admin/routes/m", &Value::Null);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(eventually(Duration::from_secs(5), || get("/m3", "c.test") == 404));
    assert_eq!(get("/keep/x", "c.test"), 200);
    let gone = p.scrape_settled();
    assert_eq!(
        gone.matching(status, &[("route", "m")]).count(),
        0,
        "{}",
        gone.text
    );
    assert_eq!(gone.get(status, &[("route", "keep")]), 1.0, "{}", gone.text);
}
