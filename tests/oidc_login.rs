//! The browser login flow (relying party) against the in-process fake IdP, driven by a plain
//! HTTP client that plays the browser: redirect parameters, PKCE, nonce, the callback, the
//! session cookie and what the upstream sees, refresh, logout, and every way it can go wrong.

mod common;

use std::thread;
use std::time::Duration;

use common::fake_idp::{FakeIdp, Fault, IdTokenFault, Params, CLIENT_ID};
use common::jwt::{b64_std_decode, SigningKey};
use common::login::{browse, login, login_plugin, start_login, Jar};
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

struct Site {
    idp: FakeIdp,
    up: Upstream,
    proxy: Proxy,
}

/// A proxy whose `/app/*` runs the login flow against a fake IdP, plus an open `/open/*`.
fn site(extra: Value) -> Site {
    site_with(extra, json!({}), |_| {})
}

/// As [`site`], with top-level config changes and the IdP prepared before the proxy starts
/// (the proxy reads discovery once at start).
fn site_with(extra: Value, top: Value, prep: impl Fn(&FakeIdp)) -> Site {
    let idp = FakeIdp::start_with_key(SigningKey::rsa1());
    prep(&idp);
    let up = Upstream::start("A");
    let mut plugin = login_plugin(&idp);
    merge(
        &mut plugin,
        &json!({"logout_path": "/app/logout", "session": {"secret": SECRET}}),
    );
    merge(&mut plugin, &extra);
    let mut app = route("app", "/app/*", &[&up]);
    app["plugins"] = json!({ "openid-connect": plugin });
    let mut cfg = base_config(vec![app, route("open", "/open/*", &[&up])]);
    merge(&mut cfg, &top);
    let proxy = Proxy::start(cfg);
    Site { idp, up, proxy }
}

impl Site {
    // The HTTPS port in HTTPS mode (tests/run.sh runs this file both ways).
    fn get(&self, path: &str, jar: &Jar, extra: &[(&str, &str)]) -> Response {
        browse(&self.proxy, path, jar, extra)
    }

    fn start(&self, path: &str, jar: &mut Jar) -> Response {
        start_login(&self.proxy, path, jar)
    }

    fn login(&self, path: &str, jar: &mut Jar) -> Response {
        login(&self.proxy, &self.idp, path, jar)
    }

    fn logged_in(&self, path: &str) -> Jar {
        let mut jar = Jar::default();
        let cb = self.login(path, &mut jar);
        assert_eq!(cb.status, 302, "{:?} {}", cb.headers, cb.text());
        assert_eq!(cb.header("location"), Some(path));
        jar
    }
}

fn decoded_json(b64: &str) -> Value {
    serde_json::from_slice(&b64_std_decode(b64).expect("base64")).expect("json")
}

#[test]
fn a_navigation_is_redirected_to_the_idp_with_every_parameter() {
    let s = site(json!({"use_pkce": true, "authorization_params": {"prompt": "consent"}}));
    let mut jar = Jar::default();
    let r = s.start("/app/page?x=1", &mut jar);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let location = r.header("location").unwrap();
    let (endpoint, query) = location.split_once('?').unwrap();
    assert_eq!(endpoint, s.idp.authorize_url());
    let q = Params::parse(query);
    assert_eq!(q.get("response_type"), Some("code"));
    assert_eq!(q.get("client_id"), Some(CLIENT_ID));
    assert_eq!(q.get("scope"), Some("openid profile"));
    assert_eq!(q.get("prompt"), Some("consent"));
    assert_eq!(
        q.get("redirect_uri"),
        Some(&*format!(
            "{}://app.test/app/page/.apisix/redirect",
            tls::scheme()
        ))
    );
    assert_eq!(q.get("code_challenge_method"), Some("S256"));
    let state = q.get("state").unwrap();
    let nonce = q.get("nonce").unwrap();
    assert!(state.len() >= 43 && nonce.len() >= 43 && state != nonce);
    assert_eq!(q.get("code_challenge").unwrap().len(), 43);
    // The attempt lives in its own short-lived cookie.
    let attempt = r
        .header_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("session_login_"))
        .expect("an attempt cookie");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=600"] {
        assert!(attempt.contains(attr), "{attempt}");
    }
    // A second navigation is a second attempt with its own state.
    let again = s.start("/app/page?x=1", &mut Jar::default());
    let q2 = Params::parse(again.header("location").unwrap().split_once('?').unwrap().1);
    assert_ne!(q2.get("state"), Some(state));
    assert_eq!(s.up.requests(), 0, "nothing reached the upstream");
}

#[test]
fn the_full_login_sets_a_session_and_the_upstream_sees_identity() {
    let s = site(json!({"use_pkce": true}));
    let mut jar = Jar::default();
    let cb = s.login("/app/page?x=1", &mut jar);
    assert_eq!(cb.status, 302, "{:?} {}", cb.headers, cb.text());
    assert_eq!(cb.header("location"), Some("/app/page?x=1"));
    let session_cookie = cb
        .header_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("session="))
        .expect("a session cookie")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(session_cookie.contains(attr), "{session_cookie}");
    }
    // Secure exactly when the browser came over HTTPS.
    assert_eq!(
        session_cookie.contains("; Secure"),
        tls::https_mode(),
        "{session_cookie}"
    );
    assert_eq!(
        jar.names(),
        vec!["session"],
        "the attempt cookie is cleared"
    );
    // The code was exchanged with the PKCE verifier and client_secret_basic.
    let call = s.idp.last_token_call().unwrap();
    assert!(call.form.get("code_verifier").is_some(), "{:?}", call.form);
    assert_eq!(format!("{:?}", call.auth), "Basic");

    let r = s.get("/app/page?x=1", &jar, &[("Cookie2", "x")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.echo();
    assert_eq!(e.path, "/app/page?x=1");
    let token = e.header("x-access-token").expect("X-Access-Token");
    assert!(s.idp.access_token_is_live(token));
    let id = decoded_json(e.header("x-id-token").expect("X-ID-Token"));
    assert_eq!(id["aud"], json!(CLIENT_ID));
    assert_eq!(id["iss"], json!(s.idp.issuer()));
    assert!(id["nonce"].is_string());
    let info = decoded_json(e.header("x-userinfo").expect("X-Userinfo"));
    assert_eq!(info["sub"], id["sub"]);
    assert!(
        e.header("cookie").is_none(),
        "our cookies never go upstream"
    );
}

#[test]
fn our_cookies_are_stripped_and_others_pass() {
    let s = site(json!({}));
    let mut jar = s.logged_in("/app/x");
    jar.0.insert("theme".into(), "dark".into());
    jar.0.insert("sessionid".into(), "keep".into());
    let r = s.get("/app/x", &jar, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let cookie = r.echo().header("cookie").map(str::to_string);
    assert_eq!(cookie.as_deref(), Some("sessionid=keep; theme=dark"));
}

#[test]
fn a_revisit_makes_no_idp_call() {
    let s = site(json!({}));
    let jar = s.logged_in("/app/x");
    let (tokens, infos) = (s.idp.token_hits(), s.idp.userinfo_hits());
    let before = s.proxy.scrape_settled();
    for _ in 0..5 {
        assert_eq!(s.get("/app/x", &jar, &[]).status, 200);
    }
    assert_eq!((s.idp.token_hits(), s.idp.userinfo_hits()), (tokens, infos));
    // The metrics say the same: five sessions accepted, opened from the per-core cache after
    // at most one decryption, and no IdP call.
    let after = s.proxy.scrape_settled();
    let d = |name: &str, labels: &[(&str, &str)]| after.since(&before, name, labels);
    let session_ok = [("route", "app"), ("method", "session"), ("outcome", "ok")];
    assert_eq!(
        d("portcullis_auth_total", &session_ok),
        5.0,
        "{}",
        after.text
    );
    let (hits, misses) = (
        d("portcullis_token_cache_hits_total", &[("cache", "session")]),
        d(
            "portcullis_token_cache_misses_total",
            &[("cache", "session")],
        ),
    );
    assert_eq!(hits + misses, 5.0);
    assert!(misses <= 1.0, "{misses} misses");
    assert_eq!(
        d("portcullis_idp_requests_total", &[("endpoint", "token")]),
        0.0
    );
    assert_eq!(
        d("portcullis_idp_requests_total", &[("endpoint", "userinfo")]),
        0.0
    );
}

#[test]
fn two_tabs_logging_in_at_once_both_succeed() {
    let s = site(json!({"use_pkce": true}));
    let mut jar = Jar::default();
    let a = s.start("/app/a", &mut jar);
    let b = s.start("/app/b", &mut jar);
    let at_a = s.idp.login_code(a.header("location").unwrap());
    let at_b = s.idp.login_code(b.header("location").unwrap());
    // Tab B comes back first, then tab A: each finds its own attempt.
    let cb_b = s.get(&at_b.target(), &jar, &[]);
    assert_eq!(cb_b.status, 302, "{}", cb_b.text());
    assert_eq!(cb_b.header("location"), Some("/app/b"));
    jar.take(&cb_b);
    let cb_a = s.get(&at_a.target(), &jar, &[]);
    assert_eq!(cb_a.status, 302, "{}", cb_a.text());
    assert_eq!(cb_a.header("location"), Some("/app/a"));
}

#[test]
fn a_stale_or_unknown_state_restarts_the_login_three_times_then_explains() {
    let s = site(json!({}));
    let mut jar = Jar::default();
    let r = s.start("/app/page", &mut jar);
    let at_idp = s.idp.login_code(r.header("location").unwrap());
    // The browser lost the attempt cookie (another browser, expired): the login starts over.
    let mut lost = Jar::default();
    for round in 1..=3 {
        let cb = s.get(&at_idp.target(), &lost, &[]);
        assert_eq!(cb.status, 302, "round {round}: {}", cb.text());
        assert!(cb
            .header("location")
            .unwrap()
            .starts_with(&s.idp.authorize_url()));
        lost.take(&cb);
        assert_eq!(
            lost.0.get("session_restarts").map(String::as_str),
            Some(round.to_string().as_str())
        );
    }
    let cb = s.get(&at_idp.target(), &lost, &[]);
    assert_eq!(cb.status, 400);
    let msg = cb.json()["error_msg"].as_str().unwrap().to_string();
    assert!(msg.contains("could not be completed"), "{msg}");
    // An unknown state with the right cookie jar otherwise is no different.
    let forged = at_idp
        .target()
        .replace(at_idp.state().unwrap(), "forged-state");
    let r = s.get(&forged, &jar, &[]);
    assert_eq!(r.status, 302);
    assert_eq!(s.up.requests(), 0);
}

#[test]
fn an_idp_error_on_the_callback_is_401_saying_so() {
    let s = site(json!({}));
    s.idp.set_authorize_error(Some("access_denied"));
    let mut jar = Jar::default();
    let cb = s.login_refused(&mut jar);
    assert_eq!(cb.status, 401, "{}", cb.text());
    assert!(cb.text().contains("access_denied"), "{}", cb.text());
}

#[test]
fn each_login_step_is_counted_in_the_metrics() {
    let s = site(json!({}));
    let before = s.proxy.scrape_settled();
    let jar = s.logged_in("/app/x");
    assert_eq!(s.get("/app/x", &jar, &[]).status, 200);
    assert_eq!(s.get("/app/logout", &jar, &[]).status, 302);
    s.idp.set_authorize_error(Some("access_denied"));
    assert_eq!(s.login_refused(&mut Jar::default()).status, 401);
    let after = s.proxy.scrape_settled();
    let step = |step: &str, outcome: &str| {
        let labels = [("route", "app"), ("step", step), ("outcome", outcome)];
        after.since(&before, "portcullis_login_total", &labels)
    };
    assert_eq!(step("redirect", "ok"), 2.0, "{}", after.text);
    assert_eq!(step("callback", "ok"), 1.0);
    assert_eq!(step("logout", "ok"), 1.0);
    // The IdP's refusal: a callback the login flow refuses.
    let refused: f64 = after
        .matching("portcullis_login_total", &[("step", "callback")])
        .filter(|m| m.labels["outcome"] != "ok")
        .map(|m| m.value)
        .sum();
    assert_eq!(refused, 1.0, "{}", after.text);
    // Only the request that carried the session is an authentication verdict.
    let verdicts = [("route", "app"), ("method", "session"), ("outcome", "ok")];
    assert_eq!(
        after.get("portcullis_auth_total", &verdicts)
            - before.get("portcullis_auth_total", &verdicts),
        1.0
    );
    // The code exchange went to the token endpoint once.
    let token_ok = [("endpoint", "token"), ("outcome", "ok")];
    assert_eq!(
        after.get("portcullis_idp_requests_total", &token_ok)
            - before.get("portcullis_idp_requests_total", &token_ok),
        1.0
    );
}

impl Site {
    fn login_refused(&self, jar: &mut Jar) -> Response {
        let r = self.start("/app/x", jar);
        let at_idp = self.idp.login_code(r.header("location").unwrap());
        assert!(at_idp.error().is_some());
        self.get(&at_idp.target(), jar, &[])
    }
}

#[test]
fn invalid_id_tokens_never_reach_the_upstream() {
    for (fault, words) in [
        (IdTokenFault::BadSignature, "signature"),
        (IdTokenFault::WrongNonce, "nonce"),
        (IdTokenFault::MissingNonce, "nonce"),
        (IdTokenFault::WrongAudience, "audience"),
        (IdTokenFault::WrongIssuer, "issuer"),
        (IdTokenFault::Expired, "expired"),
        (IdTokenFault::UnknownKey, "key"),
    ] {
        let s = site(json!({}));
        s.idp.set_id_token_fault(fault);
        let mut jar = Jar::default();
        let cb = s.login("/app/x", &mut jar);
        assert_eq!(cb.status, 401, "{fault:?}: {}", cb.text());
        assert!(cb.text().contains(words), "{fault:?}: {}", cb.text());
        assert!(!jar.0.contains_key("session"), "{fault:?}: no session");
        assert_eq!(s.up.requests(), 0, "{fault:?}");
    }
}

#[test]
fn userinfo_about_another_subject_is_refused() {
    let s = site(json!({}));
    s.idp.set_userinfo_claims(json!({"sub": "mallory"}));
    let mut jar = Jar::default();
    let cb = s.login("/app/x", &mut jar);
    assert_eq!(cb.status, 401, "{}", cb.text());
    assert!(cb.text().contains("subject"), "{}", cb.text());
    assert!(!jar.0.contains_key("session"));
}

#[test]
fn an_idp_failing_at_the_token_endpoint_is_503() {
    for (fault, delay) in [
        (Fault::Status(500), Duration::ZERO),
        (Fault::NotJson, Duration::ZERO),
        (Fault::None, Duration::from_secs(4)),
    ] {
        let s = site(json!({}));
        s.idp.set_path_behaviour("/token", fault, delay);
        let mut jar = Jar::default();
        let cb = s.login("/app/x", &mut jar);
        assert_eq!(cb.status, 503, "{fault:?}: {}", cb.text());
        assert!(cb.text().contains("token"), "{}", cb.text());
        assert_eq!(s.up.requests(), 0);
    }
}

#[test]
fn client_secret_post_is_used_when_configured() {
    let s = site(json!({"token_endpoint_auth_method": "client_secret_post"}));
    s.logged_in("/app/x");
    assert_eq!(
        format!("{:?}", s.idp.last_token_call().unwrap().auth),
        "Post"
    );
}

#[test]
fn tampered_garbage_and_foreign_key_cookies_mean_a_fresh_login() {
    let s = site(json!({}));
    let jar = s.logged_in("/app/x");
    let good = jar.0["session"].clone();
    let mut flipped = good.clone().into_bytes();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let other = site(json!({"session": {"secret": "another-secret-of-32-characters!"}}));
    let foreign = other.logged_in("/app/x").0["session"].clone();
    for value in [
        String::from_utf8(flipped).unwrap(),
        "garbage".into(),
        String::new(),
        "%%%".into(),
        good[..good.len() - 4].to_string(),
        foreign,
    ] {
        let mut j = Jar::default();
        j.0.insert("session".into(), value.clone());
        let r = s.get("/app/x", &j, &[]);
        assert_eq!(r.status, 302, "{value:.20}: {}", r.text());
        assert!(r
            .header("location")
            .unwrap()
            .starts_with(&s.idp.authorize_url()));
    }
    assert_eq!(s.get("/app/x", &jar, &[]).status, 200);
}

#[test]
fn large_sessions_are_chunked_and_shorter_ones_clear_stale_chunks() {
    let s = site(json!({}));
    s.idp
        .set_user(json!({"sub": "big", "groups": vec!["a-rather-long-group-name"; 400]}));
    let mut jar = Jar::default();
    let cb = s.login("/app/x", &mut jar);
    assert_eq!(cb.status, 302, "{}", cb.text());
    for line in cb.header_all("set-cookie") {
        assert!(line.len() + "Set-Cookie: ".len() < 4096, "{}", line.len());
    }
    assert!(jar.0.contains_key("session_2"), "{:?}", jar.names());
    let chunks = jar.0.len();
    let r = s.get("/app/x", &jar, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let info = decoded_json(r.echo().header("x-userinfo").unwrap());
    assert_eq!(info["groups"].as_array().unwrap().len(), 400);
    // A smaller session later expires the chunks it no longer needs: a new login whose
    // callback still carries the old chunks.
    s.idp.set_user(json!({"sub": "small"}));
    let mut fresh = Jar::default();
    let r = s.start("/app/x", &mut fresh);
    let at_idp = s.idp.login_code(r.header("location").unwrap());
    for (k, v) in &jar.0 {
        fresh.0.insert(k.clone(), v.clone());
    }
    let again = s.get(&at_idp.target(), &fresh, &[]);
    assert_eq!(again.status, 302, "{}", again.text());
    fresh.take(&again);
    assert_eq!(fresh.names(), vec!["session"], "from {chunks} chunks");
    let info = decoded_json(
        s.get("/app/x", &fresh, &[])
            .echo()
            .header("x-userinfo")
            .unwrap(),
    );
    assert_eq!(info["sub"], json!("small"));
}

#[test]
fn each_unauth_action() {
    let deny = site(json!({"unauth_action": "deny"}));
    let r = deny.get("/app/x", &Jar::default(), &[]);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    let pass = site(json!({"unauth_action": "pass"}));
    let r = pass.get("/app/x", &Jar::default(), &[]);
    assert_eq!(r.status, 200);
    let e = r.echo();
    assert!(e.header("x-access-token").is_none() && e.header("x-userinfo").is_none());
    let auth = site(json!({}));
    assert_eq!(auth.get("/app/x", &Jar::default(), &[]).status, 302);
}

#[test]
fn a_background_fetch_is_401_not_a_redirect() {
    let s = site(json!({}));
    for headers in [
        vec![("Sec-Fetch-Mode", "cors")],
        vec![("Sec-Fetch-Mode", "no-cors")],
        vec![("X-Requested-With", "XMLHttpRequest")],
    ] {
        let r = s.get("/app/favicon.ico", &Jar::default(), &headers);
        assert_eq!(r.status, 401, "{headers:?}");
    }
    let r = s.get("/app/x", &Jar::default(), &[("Sec-Fetch-Mode", "navigate")]);
    assert_eq!(r.status, 302);
    assert_eq!(s.idp.authorize_hits(), 0, "no login was started at the IdP");
}

#[test]
fn mixed_mode_a_bad_bearer_token_is_401_not_a_redirect() {
    let key = SigningKey::rsa1();
    let s = site(json!({"use_jwks": true}));
    let r = s.get(
        "/app/x",
        &Jar::default(),
        &[("Authorization", "Bearer not-a-jwt")],
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("location").is_none());
    // A good token is served without a session.
    let claims = json!({"iss": s.idp.issuer(), "sub": "u", "aud": CLIENT_ID,
        "exp": common::jwt::now() + 300, "iat": common::jwt::now()});
    let good = format!("Bearer {}", key.mint(&claims));
    assert_eq!(
        s.get("/app/x", &Jar::default(), &[("Authorization", &good)])
            .status,
        200
    );
    // Without a token, the login flow.
    assert_eq!(s.get("/app/x", &Jar::default(), &[]).status, 302);
}

#[test]
fn an_expired_access_token_is_refreshed_once_even_when_requests_race() {
    let s = site_with(json!({}), json!({"workers": 1}), |_| {});
    s.idp.set_expires_in(1);
    let jar = s.logged_in("/app/x");
    thread::sleep(Duration::from_millis(2200));
    let before = s.idp.refreshes();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let jar = jar.clone();
            let port = s.proxy.port;
            thread::spawn(move || {
                let cookie = jar.header();
                Client::connect(port).request(
                    "GET",
                    "/app/x",
                    &[("Host", "app.test"), ("Cookie", &cookie)],
                    b"",
                )
            })
        })
        .collect();
    let answers: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            r.header_all("set-cookie")
                .iter()
                .any(|c| c.starts_with("session=")),
            "the renewed session rides on the answer"
        );
        let token = r.echo().header("x-access-token").unwrap().to_string();
        assert!(s.idp.access_token_is_live(&token), "a fresh token upstream");
    }
    assert_eq!(s.idp.refreshes() - before, 1, "one refresh for the session");
}

#[test]
fn a_failed_refresh_is_unauthenticated() {
    let s = site(json!({}));
    s.idp.set_expires_in(1);
    let jar = s.logged_in("/app/x");
    s.idp.forget_tokens();
    thread::sleep(Duration::from_millis(2200));
    let r = s.get("/app/x", &jar, &[]);
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(r
        .header("location")
        .unwrap()
        .starts_with(&s.idp.authorize_url()));
    assert_eq!(s.up.requests(), 0);
}

#[test]
fn logout_clears_the_session_and_goes_through_end_session() {
    let s = site(json!({"post_logout_redirect_uri": "/open/bye", "revoke_tokens_on_logout": true}));
    let mut jar = s.logged_in("/app/x");
    let r = s.get("/app/logout", &jar, &[]);
    assert_eq!(r.status, 302, "{}", r.text());
    let location = r.header("location").unwrap();
    let (endpoint, query) = location.split_once('?').unwrap();
    assert_eq!(endpoint, s.idp.end_session_url());
    let q = Params::parse(query);
    assert!(q
        .get("id_token_hint")
        .is_some_and(|t| t.split('.').count() == 3));
    assert_eq!(
        q.get("post_logout_redirect_uri"),
        Some(&*format!("{}://app.test/open/bye", tls::scheme()))
    );
    jar.take(&r);
    assert!(
        jar.0.is_empty(),
        "every session chunk cleared: {:?}",
        jar.names()
    );
    assert_eq!(
        s.idp.revocations().len(),
        2,
        "refresh and access token revoked"
    );
    assert_eq!(
        s.get("/app/x", &jar, &[]).status,
        302,
        "a login is needed again"
    );
}

#[test]
fn logout_without_end_session_falls_back() {
    let no_end_session =
        |idp: &FakeIdp| idp.set_discovery_field("end_session_endpoint", Value::Null);
    let s = site_with(
        json!({"post_logout_redirect_uri": "https://elsewhere.test/bye"}),
        json!({}),
        no_end_session,
    );
    let jar = s.logged_in("/app/x");
    let r = s.get("/app/logout", &jar, &[]);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://elsewhere.test/bye"));
    let plain = site_with(json!({}), json!({}), no_end_session);
    let r = plain.get("/app/logout", &Jar::default(), &[]);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Logged out"));
}

#[test]
fn the_generated_secret_serves_every_worker_and_survives_a_restart() {
    let idp = FakeIdp::start_with_key(SigningKey::rsa1());
    let up = Upstream::start("A");
    let dir = TempDir::new();
    // No session.secret: the generated one.
    let plugin = login_plugin(&idp);
    let up_addr = up.addr();
    let cfg = || {
        let mut app = json!({"id": "app", "uri": "/app/*",
            "upstream": {"type": "roundrobin", "nodes": {up_addr.clone(): 1}}});
        app["plugins"] = json!({"openid-connect": plugin});
        let mut c = base_config(vec![app]);
        c["workers"] = json!(2);
        c["data_dir"] = json!(dir.path().join("data").to_string_lossy());
        c
    };
    let proxy = Proxy::start(cfg());
    let s = Site { idp, up, proxy };
    let jar = s.logged_in("/app/x");
    let secret = dir.path().join("data/session_secret");
    let meta = std::fs::metadata(&secret).expect("secret written");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    for _ in 0..8 {
        assert_eq!(s.get("/app/x", &jar, &[]).status, 200);
    }
    let Site { idp, up, proxy } = s;
    drop(proxy);
    let proxy = Proxy::start(cfg());
    let s = Site { idp, up, proxy };
    assert_eq!(s.get("/app/x", &jar, &[]).status, 200, "after a restart");
}
