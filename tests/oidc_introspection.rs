//! `openid-connect` token introspection (RFC 7662; SPEC §2.2–2.6) against the real binary, with a
//! fake identity provider (`common::fake_idp`, its `/introspect` answered by a handler the test
//! controls and counts) and with the real `oidc-provider` (`common::real_idp`, opaque
//! `client_credentials` tokens: it refuses to introspect JWT access tokens).
//!
//! Routes: `/*` (or named prefixes) carry the plugin with `bearer_only: true` and neither
//! `public_key` nor `use_jwks`, so tokens are checked by introspection; `/open/*` has no plugin
//! (to show the worker keeps serving while the IdP is slow or failing). One worker unless stated.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::auth::*;
use common::fake_idp::{FakeIdp, Fault, IdpRequest, IdpResponse, INTROSPECTION_PATH};
use common::jwt::{b64_std, now, unique, with};
use common::real_idp::RealIdp;
use common::*;
use serde_json::{json, Value};

const REALM: &str = "intro";
const CLIENT_ID: &str = "portcullis";
const CLIENT_SECRET: &str = "intro-s3cret-value";
/// Extra time allowed past an IdP `timeout` for the proxy to answer.
const MARGIN: Duration = Duration::from_millis(1500);
/// How long a request to a route without the plugin may take while introspection is pending.
const OPEN_ROUTE_BOUND: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// The introspection endpoint the tests control
// ---------------------------------------------------------------------------------------------

type Answerer = Arc<dyn Fn(&IdpRequest) -> IdpResponse + Send + Sync>;

/// The fake IdP's introspection handler: what it answers can be changed while the proxy runs;
/// the IdP counts the calls (`FakeIdp::hits`).
#[derive(Clone)]
struct Introspection {
    current: Arc<Mutex<Answerer>>,
}

impl Introspection {
    /// Installs the handler on `path` of `idp`, answering "active" (scope `read write`, `exp`
    /// five minutes after each call).
    fn install_at(idp: &FakeIdp, path: &str) -> Introspection {
        let current: Arc<Mutex<Answerer>> = Arc::new(Mutex::new(Arc::new(|_: &IdpRequest| {
            IdpResponse::json(200, &active_json("read write", Some(300)))
        })));
        let c = current.clone();
        idp.on(path, move |req| {
            let f = c.lock().unwrap().clone();
            f(req)
        });
        Introspection { current }
    }

    fn install(idp: &FakeIdp) -> Introspection {
        Introspection::install_at(idp, INTROSPECTION_PATH)
    }

    fn answer_with(&self, f: impl Fn(&IdpRequest) -> IdpResponse + Send + Sync + 'static) {
        *self.current.lock().unwrap() = Arc::new(f);
    }

    /// `active: true` with `scope`, and `exp` = (time of the call) + `exp_in` seconds if given.
    fn active(&self, scope: &'static str, exp_in: Option<i64>) {
        self.answer_with(move |_| IdpResponse::json(200, &active_json(scope, exp_in)));
    }

    fn inactive(&self) {
        self.answer_with(|_| IdpResponse::json(200, &json!({"active": false})));
    }

    /// Always answers exactly these bytes as `200 application/json`.
    fn raw(&self, body: &[u8]) {
        let body = body.to_vec();
        self.answer_with(move |_| IdpResponse {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.clone(),
        });
    }
}

/// An RFC 7662 "active" answer.
fn active_json(scope: &str, exp_in: Option<i64>) -> Value {
    let t = now();
    let mut v = json!({
        "active": true,
        "client_id": "some-client",
        "sub": "alice",
        "username": "alice",
        "token_type": "Bearer",
        "scope": scope,
        "iat": t,
    });
    if let Some(d) = exp_in {
        v["exp"] = json!(t + d);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------------

/// The plugin options for `idp` (bearer only, introspection at `idp`'s `/introspect`, realm
/// "intro") with `extra` merged in (a `null` value removes an option).
fn plugin(idp: &FakeIdp, extra: Value) -> Value {
    let base = json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "discovery": idp.discovery_url(),
        "bearer_only": true,
        "introspection_endpoint": idp.introspection_url(),
        "realm": REALM,
    });
    with(&base, extra)
}

/// A one-worker proxy with `/*` protected by `plugin(idp, extra)`, and `/open/*` unprotected.
fn start(idp: &FakeIdp, up: &Upstream, extra: Value) -> Proxy {
    start_routes(vec![oidc_route("1", "/*", up, plugin(idp, extra))], up)
}

/// Fake IdP with an introspection handler (answering "active"), an upstream, and a one-worker
/// proxy protecting `/*` with `extra` options.
fn setup(extra: Value) -> (FakeIdp, Introspection, Upstream, Proxy) {
    let idp = FakeIdp::start();
    let intro = Introspection::install(&idp);
    let up = Upstream::start("up");
    let proxy = start(&idp, &up, extra);
    (idp, intro, up, proxy)
}

/// A fresh opaque token (RFC 6750 `b64token` characters).
fn token() -> String {
    unique("opaque").replace('-', "_")
}

// ---------------------------------------------------------------------------------------------
// Requests and assertions
// ---------------------------------------------------------------------------------------------

/// Asserts a 401 `invalid_token` answer for `token` in `realm`; returns `error_description`.
fn assert_invalid_token_in(r: &Response, token: &str, realm: &str) -> String {
    let desc = assert_invalid_token_answer(r, realm);
    assert_no_leak(r, token);
    assert_no_leak(r, CLIENT_SECRET);
    desc
}

fn assert_invalid_token(r: &Response, token: &str) -> String {
    assert_invalid_token_in(r, token, REALM)
}

/// Asserts the exact `active: false` answer.
fn assert_not_active(r: &Response, token: &str) {
    let d = assert_invalid_token(r, token);
    assert_eq!(d, "token is not active", "error_description");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", \
                 error_description=\"token is not active\""
            )
            .as_str()
        )
    );
}

/// Asserts a 401 whose description says introspection failed; returns the description.
fn assert_introspection_failed(r: &Response, token: &str) -> String {
    let d = assert_invalid_token(r, token);
    assert!(
        d.starts_with("introspection failed: ") && d.len() > "introspection failed: ".len(),
        "error_description should start with \"introspection failed: \" and name the problem, \
         got {d:?}"
    );
    d
}

/// Asserts a 403 JSON `{"error": "<why>"}` answer; returns the reason.
fn assert_forbidden(r: &Response, token: &str) -> String {
    let why = assert_forbidden_answer(r);
    assert_no_leak(r, token);
    why
}

/// Asserts the request was proxied with `X-Access-Token: <token>`; returns the upstream echo.
fn assert_accepted(r: &Response, token: &str) -> Echo {
    assert_eq!(
        r.status,
        200,
        "token should be accepted; headers {:?} body {:?}",
        r.headers,
        r.text()
    );
    accepted_echo(r, token)
}

/// Sleeps until `at` (no-op when it has passed).
fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        thread::sleep(at - now);
    }
}

// ---------------------------------------------------------------------------------------------
// Accepted and rejected tokens; what goes upstream
// ---------------------------------------------------------------------------------------------

#[test]
fn active_token_is_proxied_with_the_introspection_answer_byte_for_byte() {
    let (idp, intro, _up, proxy) = setup(json!({}));
    // Odd spacing, key order, escapes and number forms: a re-serialisation would change them.
    let exp = now() + 300;
    let body = format!(
        "{{ \"sub\" : \"alice\",\"active\":true ,\"scope\":\"read write\",\"exp\":{exp},\
         \"name\":\"Zo\\u00eb \\\"Z\\\" \u{263a}\",\"ratio\":1.50,\"big\":1e3,\
         \"ext\":{{\"b\":2,\"a\":[1, 2 ,3]}} }}"
    );
    serde_json::from_str::<Value>(&body).expect("the test's answer is JSON");
    intro.raw(body.as_bytes());

    let t = token();
    let auth = format!("Bearer {t}");
    let spoofed_info = b64_std(br#"{"active":true,"sub":"admin","groups":["root"]}"#);
    let r = get_with(
        proxy.port,
        "/api/resource",
        &[
            ("Authorization", &auth),
            ("X-Userinfo", &spoofed_info),
            ("X-Access-Token", "spoofed-access"),
            ("X-ID-Token", "spoofed-id"),
            ("X-Refresh-Token", "spoofed-refresh"),
            ("x-userinfo", "c3Bvb2ZlZA=="),
        ],
    );
    let echo = assert_accepted(&r, &t);
    assert_no_spoofed_identity(&echo, &spoofed_info, "active token");
    assert_eq!(
        echo.header_all("x-userinfo"),
        vec![b64_std(body.as_bytes()).as_str()],
        "X-Userinfo should be the standard base64 of the introspection answer exactly as sent"
    );
    assert_eq!(userinfo_bytes(&echo), body.as_bytes());
    assert_eq!(idp.introspections(), 1);

    // From the cache, the same bytes.
    let r = bearer(&proxy, &t);
    let echo = assert_accepted(&r, &t);
    assert_eq!(userinfo_bytes(&echo), body.as_bytes());
    assert_eq!(
        idp.introspections(),
        1,
        "the second request should use the cached answer"
    );
}

#[test]
fn introspection_request_is_a_form_post_with_the_token_and_hint() {
    let (idp, _intro, _up, proxy) = setup(json!({}));
    // `+`, `/` and `=` must survive form encoding.
    let t = format!("{}+a/b==", token());
    let r = bearer(&proxy, &t);
    assert_accepted(&r, &t);
    let reqs = idp.requests_to(INTROSPECTION_PATH);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    let ct = req.header("content-type").unwrap_or("");
    assert!(
        ct.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded"),
        "Content-Type {ct:?}"
    );
    assert_eq!(req.form_value("token").as_deref(), Some(t.as_str()));
    assert_eq!(
        req.form_value("token_type_hint").as_deref(),
        Some("access_token")
    );
    let form = req.form();
    assert_eq!(
        form.iter().filter(|(k, _)| k == "token").count(),
        1,
        "one token parameter: {form:?}"
    );
}

#[test]
fn client_secret_basic_sends_the_credentials_in_the_authorization_header() {
    let idp = FakeIdp::start();
    Introspection::install(&idp);
    let up = Upstream::start("up");
    // Characters that must be form-encoded before Basic encoding (RFC 6749 §2.3.1).
    let id = "app:one two";
    let secret = "s3cr:t/+&=%é";
    let creds = json!({"client_id": id, "client_secret": secret});
    let proxy = start_routes(
        vec![
            oidc_route("default", "/default/*", &up, plugin(&idp, creds.clone())),
            oidc_route(
                "basic",
                "/basic/*",
                &up,
                plugin(
                    &idp,
                    with(
                        &creds,
                        json!({"introspection_endpoint_auth_method": "client_secret_basic"}),
                    ),
                ),
            ),
        ],
        &up,
    );
    for path in ["/default/x", "/basic/x"] {
        let before = idp.requests_to(INTROSPECTION_PATH).len();
        let t = token();
        assert_accepted(&bearer_at(&proxy, path, &t), &t);
        let reqs = idp.requests_to(INTROSPECTION_PATH);
        assert_eq!(reqs.len(), before + 1, "{path}: one introspection call");
        let req = reqs.last().unwrap();
        let auth = req.header("authorization").unwrap_or("");
        assert!(
            auth.starts_with("Basic "),
            "{path}: Authorization should be Basic, got {auth:?}"
        );
        assert_eq!(
            req.basic_auth(),
            Some((id.to_string(), secret.to_string())),
            "{path}: Basic credentials (form-encoded parts) in {auth:?}"
        );
        let form = req.form();
        assert!(
            !form
                .iter()
                .any(|(k, _)| k == "client_id" || k == "client_secret"),
            "{path}: no credentials in the body with client_secret_basic: {form:?}"
        );
        assert!(
            !String::from_utf8_lossy(&req.body).contains("s3cr"),
            "{path}: the secret is in the body: {:?}",
            String::from_utf8_lossy(&req.body)
        );
        assert_eq!(req.form_value("token").as_deref(), Some(t.as_str()));
    }
}

#[test]
fn client_secret_post_sends_the_credentials_in_the_body() {
    let id = "app:one two";
    let secret = "s3cr:t/+&=%é";
    let (idp, _intro, _up, proxy) = setup(json!({
        "client_id": id,
        "client_secret": secret,
        "introspection_endpoint_auth_method": "client_secret_post",
    }));
    let t = token();
    assert_accepted(&bearer(&proxy, &t), &t);
    let reqs = idp.requests_to(INTROSPECTION_PATH);
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(
        req.header("authorization"),
        None,
        "no Authorization header with client_secret_post: {:?}",
        req.headers
    );
    assert_eq!(req.form_value("client_id").as_deref(), Some(id));
    assert_eq!(req.form_value("client_secret").as_deref(), Some(secret));
    assert_eq!(req.form_value("token").as_deref(), Some(t.as_str()));
    assert_eq!(
        req.form_value("token_type_hint").as_deref(),
        Some("access_token")
    );
}

#[test]
fn inactive_token_gets_401_token_is_not_active() {
    let (idp, intro, _up, proxy) = setup(json!({}));
    intro.inactive();
    let t = token();
    assert_not_active(&bearer(&proxy, &t), &t);
    assert_eq!(idp.introspections(), 1);
}

#[test]
fn missing_token_gets_401_with_the_realm_and_no_idp_call() {
    let (idp, _intro, _up, proxy) = setup(json!({}));
    let r = proxy.get("/api/resource");
    assert_eq!(r.status, 401, "{:?}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Bearer realm=\"{REALM}\"").as_str())
    );
    thread::sleep(Duration::from_millis(100));
    assert_eq!(idp.introspections(), 0);
}

#[test]
fn missing_required_scope_gets_403() {
    let idp = FakeIdp::start();
    let intro = Introspection::install(&idp);
    let up = Upstream::start("up");
    let proxy = start_routes(
        vec![
            oidc_route(
                "read",
                "/read/*",
                &up,
                plugin(&idp, json!({"required_scopes": ["read"]})),
            ),
            oidc_route(
                "admin",
                "/admin/*",
                &up,
                plugin(&idp, json!({"required_scopes": ["read", "admin"]})),
            ),
        ],
        &up,
    );
    intro.active("read write", Some(300));
    let t = token();
    for round in 0..2 {
        // The second round comes from the cache: the scope is still checked per route.
        assert_accepted(&bearer_at(&proxy, "/read/x", &t), &t);
        let why = assert_forbidden(&bearer_at(&proxy, "/admin/x", &t), &t);
        assert_mentions(&why, &["scope"], &format!("round {round}: missing admin"));
    }
    assert_eq!(idp.introspections(), 1);

    // `readonly` is not `read`; no `scope` at all satisfies nothing.
    intro.active("readonly writer", Some(300));
    let t2 = token();
    assert_forbidden(&bearer_at(&proxy, "/read/x", &t2), &t2);
    intro.answer_with(|_| IdpResponse::json(200, &json!({"active": true, "sub": "bob"})));
    let t3 = token();
    let why = assert_forbidden(&bearer_at(&proxy, "/read/x", &t3), &t3);
    assert_mentions(&why, &["scope"], "no scope member");
}

// ---------------------------------------------------------------------------------------------
// The endpoint from discovery
// ---------------------------------------------------------------------------------------------

#[test]
fn the_discovered_introspection_endpoint_is_used_when_none_is_configured() {
    let idp = FakeIdp::start();
    let path = "/oauth2/introspect-from-discovery";
    idp.set_discovery_field(
        "introspection_endpoint",
        json!(format!("{}{path}", idp.base_url())),
    );
    let intro = Introspection::install_at(&idp, path);
    intro.active("read", Some(300));
    let up = Upstream::start("up");
    let proxy = start(&idp, &up, json!({"introspection_endpoint": null}));
    let t = token();
    let r = bearer(&proxy, &t);
    let echo = assert_accepted(&r, &t);
    assert_eq!(userinfo(&echo)["active"], json!(true));
    assert_eq!(idp.hits(path), 1, "the discovered endpoint should be asked");
    assert_eq!(
        idp.introspections(),
        0,
        "{INTROSPECTION_PATH} was not announced"
    );
    assert_eq!(
        idp.requests_to(path)[0].basic_auth(),
        Some((CLIENT_ID.to_string(), CLIENT_SECRET.to_string()))
    );
}

#[test]
fn discovery_without_an_introspection_endpoint_gets_401_naming_the_problem() {
    let idp = FakeIdp::start();
    idp.set_discovery_field("introspection_endpoint", Value::Null);
    Introspection::install(&idp);
    let up = Upstream::start("up");
    let proxy = start(
        &idp,
        &up,
        json!({"introspection_endpoint": null, "timeout": 2}),
    );
    let t = token();
    let started = Instant::now();
    let d = assert_introspection_failed(&bearer(&proxy, &t), &t);
    assert!(started.elapsed() < Duration::from_secs(2) + MARGIN);
    assert_mentions(
        &d,
        &["introspection endpoint", "introspection_endpoint"],
        "no endpoint",
    );
    assert_eq!(idp.introspections(), 0);
}

// ---------------------------------------------------------------------------------------------
// IdP failures
// ---------------------------------------------------------------------------------------------

/// With `prepare` applied to the IdP before the proxy starts (`timeout` seconds), a bearer token
/// gets a 401 saying introspection failed within `timeout` + margin while `/open/` keeps being
/// served promptly by the same (only) worker. Returns the IdP, the proxy, the token and the
/// description.
fn failure(
    prepare: impl FnOnce(&FakeIdp, &Introspection),
    timeout: u64,
) -> (FakeIdp, Introspection, Upstream, Proxy, String, String) {
    let idp = FakeIdp::start();
    let intro = Introspection::install(&idp);
    prepare(&idp, &intro);
    let up = Upstream::start("up");
    let proxy = start(&idp, &up, json!({"timeout": timeout}));
    let t = token();
    let (elapsed, r) = bearer_while_open_is_served(
        &proxy,
        &t,
        OPEN_ROUTE_BOUND,
        "introspection was pending or failing",
    );
    let d = assert_introspection_failed(&r, &t);
    assert!(
        elapsed < Duration::from_secs(timeout) + MARGIN,
        "401 took {elapsed:?} with timeout {timeout} s"
    );
    (idp, intro, up, proxy, t, d)
}

#[test]
fn endpoint_answering_500_gets_401_and_the_failure_is_not_cached() {
    let (idp, _intro, _up, proxy, t, d) = failure(
        |idp, _| idp.set_path_behaviour(INTROSPECTION_PATH, Fault::Status(500), Duration::ZERO),
        1,
    );
    assert_mentions(&d, &["500"], "introspection answering 500");
    assert!(idp.introspections() >= 1);
    // A failure is not an answer: once the IdP recovers the same token is accepted at once.
    idp.heal();
    assert_accepted(&bearer(&proxy, &t), &t);
}

#[test]
fn endpoint_answering_non_json_gets_401() {
    let (_idp, _intro, _up, _proxy, _t, d) = failure(
        |idp, _| idp.set_path_behaviour(INTROSPECTION_PATH, Fault::NotJson, Duration::ZERO),
        1,
    );
    assert_mentions(
        &d,
        &["json", "parse", "malformed", "garbage"],
        "not-JSON answer",
    );
}

#[test]
fn answer_without_a_boolean_active_gets_401() {
    let (idp, intro, _up, proxy, _t, d) = failure(
        |_, intro| {
            intro.answer_with(|_| IdpResponse::json(200, &json!({"sub": "alice", "scope": "read"})))
        },
        1,
    );
    assert_mentions(&d, &["active"], "answer without active");
    // `"active": "true"`, a number, or JSON that is not an object are no better.
    for answer in [
        json!({"active": "true", "sub": "alice"}),
        json!({"active": 1}),
        json!([{"active": true}]),
        json!(true),
    ] {
        let a = answer.clone();
        intro.answer_with(move |_| IdpResponse::json(200, &a));
        let t = token();
        let before = idp.introspections();
        let d = assert_introspection_failed(&bearer(&proxy, &t), &t);
        assert_eq!(idp.introspections(), before + 1);
        assert_mentions(&d, &["active", "object"], &format!("answer {answer}"));
    }
}

#[test]
fn slow_endpoint_gets_401_within_the_timeout_while_other_routes_are_served() {
    let (idp, _intro, _up, _proxy, _t, d) = failure(
        |idp, _| idp.set_path_behaviour(INTROSPECTION_PATH, Fault::None, Duration::from_secs(5)),
        1,
    );
    assert_eq!(idp.introspections(), 1, "the slow endpoint was asked once");
    assert_mentions(&d, &["time", "slow"], "slow introspection");
}

#[test]
fn unreachable_endpoint_gets_401() {
    let (_idp, _intro, _up, _proxy, _t, d) = failure(|idp, _| idp.go_down(), 1);
    assert_mentions(
        &d,
        &["unreachable", "connect", "refused", "down"],
        "unreachable introspection endpoint",
    );
}

/// Descriptions that blame the network, wrong for an endpoint that did accept the connection.
const NOT_UNREACHABLE: [&str; 3] = ["unreachable", "refused", "down"];

#[test]
fn endpoint_answering_non_http_gets_a_precise_401() {
    // The endpoint is reachable here, so "unreachable" would send an operator the wrong way.
    let (_idp, _intro, _up, _proxy, _t, d) = failure(
        |idp, _| idp.set_path_behaviour(INTROSPECTION_PATH, Fault::NotHttp, Duration::ZERO),
        1,
    );
    assert!(
        !NOT_UNREACHABLE.iter().any(|w| d.contains(w)),
        "an endpoint answering bytes that are not HTTP is not unreachable: {d:?}"
    );
    assert_mentions(
        &d,
        &[
            "http",
            "malformed",
            "invalid",
            "garbage",
            "protocol",
            "answer",
            "response",
        ],
        "non-HTTP answer",
    );
}

#[test]
fn endpoint_closing_without_an_answer_gets_a_precise_401() {
    let (_idp, _intro, _up, _proxy, _t, d) = failure(
        |idp, _| idp.set_path_behaviour(INTROSPECTION_PATH, Fault::Drop, Duration::ZERO),
        1,
    );
    assert!(
        !NOT_UNREACHABLE.iter().any(|w| d.contains(w)),
        "an endpoint closing the connection without answering is not unreachable: {d:?}"
    );
    assert_mentions(
        &d,
        &[
            "closed",
            "reset",
            "no answer",
            "without",
            "incomplete",
            "cut",
        ],
        "connection closed without an answer",
    );
}

// ---------------------------------------------------------------------------------------------
// Caching and coalescing
// ---------------------------------------------------------------------------------------------

#[test]
fn a_thousand_requests_with_one_token_cost_at_most_one_call_per_worker() {
    let idp = FakeIdp::start();
    Introspection::install(&idp);
    let up = Upstream::start("up");
    let proxy = start_routes_on(
        2,
        vec![oidc_route("1", "/*", &up, plugin(&idp, json!({})))],
        &up,
    );
    let t = token();
    let port = proxy.port;
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let t = t.clone();
            thread::spawn(move || {
                let auth = format!("Bearer {t}");
                let mut c = Client::connect(port);
                for j in 0..50 {
                    let r = c.request("GET", "/api/resource", &[("Authorization", &auth)], b"");
                    assert_eq!(r.status, 200, "connection {i} request {j}: {:?}", r.text());
                    if j == 0 || j == 49 {
                        assert_accepted(&r, &t);
                    }
                }
            })
        })
        .collect();
    for th in threads {
        th.join().expect("client thread");
    }
    let calls = idp.introspections();
    assert!(
        (1..=2).contains(&calls),
        "1,000 requests with one token on 2 workers made {calls} introspection calls"
    );
}

#[test]
fn concurrent_first_requests_share_one_call() {
    let (idp, _intro, _up, proxy) = setup(json!({}));
    idp.set_path_behaviour(INTROSPECTION_PATH, Fault::None, Duration::from_millis(300));
    let t = token();
    let n = 50;
    let barrier = Arc::new(Barrier::new(n));
    let port = proxy.port;
    let started = Instant::now();
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (t, barrier) = (t.clone(), barrier.clone());
            thread::spawn(move || {
                let mut c = Client::connect(port);
                let req = Client::build(
                    "GET",
                    "/api/resource",
                    &[("Authorization", &format!("Bearer {t}"))],
                    b"",
                );
                barrier.wait();
                c.write(&req);
                c.read_response()
            })
        })
        .collect();
    for th in threads {
        let r = th.join().expect("client thread");
        assert_accepted(&r, &t);
    }
    assert_eq!(
        idp.introspections(),
        1,
        "{n} concurrent first requests with one token should share one introspection call"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn inactive_answers_are_cached_so_a_flood_is_one_call() {
    let (idp, intro, _up, proxy) = setup(json!({}));
    intro.inactive();
    let t = token();
    let auth = format!("Bearer {t}");
    let mut c = proxy.client();
    for _ in 0..100 {
        let r = c.request("GET", "/api/resource", &[("Authorization", &auth)], b"");
        assert_not_active(&r, &t);
    }
    assert_eq!(
        idp.introspections(),
        1,
        "an inactive answer should be cached (default introspection_negative_ttl 5 s)"
    );
}

#[test]
fn an_active_answer_is_cached_until_its_exp() {
    let (idp, intro, _up, proxy) = setup(json!({}));
    intro.active("read", Some(2));
    let t = token();
    let exp = now() + 2;
    assert_accepted(&bearer(&proxy, &t), &t);
    assert_accepted(&bearer(&proxy, &t), &t);
    assert_accepted(&bearer(&proxy, &t), &t);
    assert_eq!(idp.introspections(), 1, "cached until exp");
    // Past exp the IdP is asked again (its answer may have changed).
    let deadline = Instant::now() + Duration::from_secs(5);
    while now() <= exp + 1 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    intro.inactive();
    assert_not_active(&bearer(&proxy, &t), &t);
    assert_eq!(idp.introspections(), 2);
}

#[test]
fn an_answer_without_exp_is_not_cached_without_an_interval() {
    let (idp, intro, _up, proxy) = setup(json!({}));
    intro.active("read", None);
    let t = token();
    let auth = format!("Bearer {t}");
    let mut c = proxy.client();
    for i in 1..=5 {
        let r = c.request("GET", "/api/resource", &[("Authorization", &auth)], b"");
        assert_accepted(&r, &t);
        assert_eq!(
            idp.introspections(),
            i,
            "an answer without exp must be checked again on every request"
        );
    }
}

#[test]
fn an_answer_without_exp_is_cached_for_the_interval() {
    let (idp, intro, _up, proxy) = setup(json!({"introspection_interval": 1}));
    intro.active("read", None);
    let t = token();
    let first = Instant::now();
    for _ in 0..5 {
        assert_accepted(&bearer(&proxy, &t), &t);
    }
    if first.elapsed() < Duration::from_millis(800) {
        assert_eq!(idp.introspections(), 1, "cached for introspection_interval");
    }
    sleep_until(first + Duration::from_millis(1300));
    assert_accepted(&bearer(&proxy, &t), &t);
    assert!(idp.introspections() >= 2, "asked again after the interval");
}

#[test]
fn a_revoked_token_is_refused_once_the_interval_has_passed() {
    let (idp, intro, _up, proxy) = setup(json!({"introspection_interval": 1}));
    intro.active("read", Some(300));
    let t = token();
    let first = Instant::now();
    assert_accepted(&bearer(&proxy, &t), &t);
    assert_eq!(idp.introspections(), 1);
    // Revoked at the IdP; the cached answer still serves within the interval.
    intro.inactive();
    let r = bearer(&proxy, &t);
    if first.elapsed() < Duration::from_millis(800) {
        assert_accepted(&r, &t);
        assert_eq!(idp.introspections(), 1, "cached within the interval");
    }
    sleep_until(first + Duration::from_millis(1300));
    assert_not_active(&bearer(&proxy, &t), &t);
    assert_eq!(idp.introspections(), 2);
}

#[test]
fn an_inactive_answer_is_forgotten_after_the_negative_ttl() {
    let (idp, intro, _up, proxy) = setup(json!({"introspection_negative_ttl": 1}));
    intro.inactive();
    let t = token();
    let first = Instant::now();
    assert_not_active(&bearer(&proxy, &t), &t);
    assert_eq!(idp.introspections(), 1);
    intro.active("read", Some(300));
    let r = bearer(&proxy, &t);
    if first.elapsed() < Duration::from_millis(800) {
        assert_not_active(&r, &t);
        assert_eq!(
            idp.introspections(),
            1,
            "the inactive answer is cached for 1 s"
        );
    }
    sleep_until(first + Duration::from_millis(1300));
    assert_accepted(&bearer(&proxy, &t), &t);
    assert_eq!(idp.introspections(), 2);
}

#[test]
fn a_routes_interval_holds_when_another_route_shares_the_endpoint() {
    // Two routes ask the same endpoint as the same client: `/lax/` caches answers until `exp`,
    // `/strict/` wants them at most 1 s old. An answer cached for `/lax/` must not let a token
    // revoked since through `/strict/`.
    let idp = FakeIdp::start();
    let intro = Introspection::install(&idp);
    let up = Upstream::start("up");
    let proxy = start_routes(
        vec![
            oidc_route("lax", "/lax/*", &up, plugin(&idp, json!({}))),
            oidc_route(
                "strict",
                "/strict/*",
                &up,
                plugin(&idp, json!({"introspection_interval": 1})),
            ),
        ],
        &up,
    );
    intro.active("read", Some(300));
    let t = token();
    let first = Instant::now();
    assert_accepted(&bearer_at(&proxy, "/lax/x", &t), &t);
    intro.inactive();
    sleep_until(first + Duration::from_millis(1300));
    let r = bearer_at(&proxy, "/strict/x", &t);
    assert_eq!(
        r.status,
        401,
        "/strict/ (introspection_interval 1) accepted a token on an answer {:?} old, revoked \
         since; introspection calls: {}",
        first.elapsed(),
        idp.introspections()
    );
    assert_not_active(&r, &t);
}

#[test]
fn a_client_leaving_during_introspection_does_not_break_the_token() {
    let (idp, _intro, _up, proxy) = setup(json!({"timeout": 2}));
    idp.set_path_behaviour(INTROSPECTION_PATH, Fault::None, Duration::from_millis(500));
    let t = token();
    // The first client asks and leaves while the call is pending.
    {
        let mut c = proxy.client();
        c.write(&Client::build(
            "GET",
            "/api/resource",
            &[("Authorization", &format!("Bearer {t}"))],
            b"",
        ));
        thread::sleep(Duration::from_millis(100));
    }
    // Others with the same token still get an answer, and the token keeps working.
    let started = Instant::now();
    assert_accepted(&bearer(&proxy, &t), &t);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    idp.heal();
    thread::sleep(Duration::from_millis(200));
    assert_accepted(&bearer(&proxy, &t), &t);
    assert!(idp.introspections() <= 2, "{}", idp.introspections());
}

#[test]
fn introspection_calls_reuse_connections() {
    let (idp, intro, _up, proxy) = setup(json!({}));
    intro.active("read", None); // not cached: every request asks the IdP
    let t = token();
    for _ in 0..20 {
        assert_accepted(&bearer(&proxy, &t), &t);
    }
    assert_eq!(idp.introspections(), 20);
    // Discovery and JWKS may have their own connection; 20 calls must not mean 20 connections.
    assert!(
        idp.conns() <= 3,
        "20 sequential introspection calls opened {} connections to the IdP",
        idp.conns()
    );
}

// ---------------------------------------------------------------------------------------------
// The real IdP (oidc-provider)
// ---------------------------------------------------------------------------------------------

/// A route `uri` to `up` with the plugin for the real IdP (client `portcullis`, its discovery,
/// bearer only, introspection) plus `extra`.
fn real_route(idp: &RealIdp, id: &str, uri: &str, up: &Upstream, extra: Value) -> Value {
    let base = json!({
        "client_id": common::real_idp::CLIENT_ID,
        "client_secret": common::real_idp::CLIENT_SECRET,
        "discovery": idp.discovery_url(),
        "bearer_only": true,
        "realm": REALM,
        "timeout": 3,
    });
    oidc_route(id, uri, up, with(&base, extra))
}

/// Checks an opaque token accepted through introspection: X-Userinfo is the IdP's answer.
fn assert_real_accepted(idp: &RealIdp, proxy: &Proxy, r: &Response, token: &str) {
    assert_eq!(
        r.status,
        200,
        "an opaque IdP token was refused: {} headers {:?} body {:?}\nproxy log:\n{}",
        r.status,
        r.headers,
        r.text(),
        proxy.log()
    );
    let echo = assert_accepted(r, token);
    let info = userinfo(&echo);
    assert_eq!(info["active"], json!(true), "X-Userinfo: {info}");
    assert_eq!(
        info["client_id"],
        json!(common::real_idp::CLIENT_ID),
        "X-Userinfo: {info}"
    );
    assert_eq!(info["iss"], json!(idp.issuer()), "X-Userinfo: {info}");
    let direct = idp.introspect(token);
    assert_eq!(
        info, direct,
        "X-Userinfo should be the IdP's introspection answer"
    );
}

#[test]
fn real_idp_opaque_tokens_are_accepted_by_introspection() {
    let idp = RealIdp::start();
    let up = Upstream::start("up");
    let proxy = start_routes(
        vec![
            // No introspection_endpoint: the discovery document's.
            real_route(&idp, "disc", "/disc/*", &up, json!({})),
            real_route(
                &idp,
                "conf",
                "/conf/*",
                &up,
                json!({"introspection_endpoint": idp.introspection_endpoint()}),
            ),
            real_route(
                &idp,
                "post",
                "/post/*",
                &up,
                json!({
                    "introspection_endpoint": idp.introspection_endpoint(),
                    "introspection_endpoint_auth_method": "client_secret_post",
                }),
            ),
        ],
        &up,
    );
    for path in ["/disc/x", "/conf/x", "/post/x"] {
        let t = idp.client_credentials_opaque("read");
        let r = bearer_at(&proxy, path, &t);
        assert_real_accepted(&idp, &proxy, &r, &t);
        // Again, from the cache.
        assert_real_accepted(&idp, &proxy, &bearer_at(&proxy, path, &t), &t);
        // Not a token the IdP issued.
        let garbage = format!("{}x", token());
        assert_not_active(&bearer_at(&proxy, path, &garbage), &garbage);
    }
}

#[test]
fn real_idp_required_scopes_and_a_wrong_client_secret() {
    let idp = RealIdp::start();
    let up = Upstream::start("up");
    let proxy = start_routes(
        vec![
            real_route(
                &idp,
                "read",
                "/read/*",
                &up,
                json!({"required_scopes": ["read"]}),
            ),
            real_route(
                &idp,
                "admin",
                "/admin/*",
                &up,
                json!({"required_scopes": ["admin"]}),
            ),
            real_route(
                &idp,
                "wrong",
                "/wrong/*",
                &up,
                json!({"client_secret": "not-the-secret"}),
            ),
        ],
        &up,
    );
    let t = idp.client_credentials_opaque("read");
    assert_real_accepted(&idp, &proxy, &bearer_at(&proxy, "/read/x", &t), &t);
    let why = assert_forbidden(&bearer_at(&proxy, "/admin/x", &t), &t);
    assert_mentions(&why, &["scope"], "missing admin scope");

    // oidc-provider answers 401 invalid_client to a wrong secret.
    let t = idp.client_credentials_opaque("read");
    let started = Instant::now();
    let r = bearer_at(&proxy, "/wrong/x", &t);
    let d = assert_introspection_failed(&r, &t);
    assert_mentions(&d, &["401"], "wrong client secret");
    assert_no_leak(&r, "not-the-secret");
    assert!(started.elapsed() < Duration::from_secs(3) + MARGIN);
}

#[test]
fn real_idp_introspection_answers_are_held_to_claim_validator() {
    let idp = RealIdp::start();
    let up = Upstream::start("up");
    let issuers = |list: Value| json!({"claim_validator": {"issuer": {"valid_issuers": list}}});
    let audience = |rule: Value| json!({"claim_validator": {"audience": rule}});
    let proxy = start_routes(
        vec![
            real_route(
                &idp,
                "listed",
                "/listed/*",
                &up,
                issuers(json!([idp.issuer()])),
            ),
            real_route(
                &idp,
                "other",
                "/other/*",
                &up,
                issuers(json!(["https://other.example"])),
            ),
            real_route(
                &idp,
                "client",
                "/client/*",
                &up,
                audience(json!({"claim": "client_id", "match_with_client_id": true})),
            ),
            real_route(
                &idp,
                "aud",
                "/aud/*",
                &up,
                audience(json!({"required": true})),
            ),
        ],
        &up,
    );
    let t = idp.client_credentials_opaque("read");
    let answer = idp.introspect(&t);
    assert_eq!(
        answer["aud"],
        Value::Null,
        "an opaque token issued without a resource has no audience: {answer}"
    );
    assert_real_accepted(&idp, &proxy, &bearer_at(&proxy, "/listed/x", &t), &t);
    assert_real_accepted(&idp, &proxy, &bearer_at(&proxy, "/client/x", &t), &t);
    let before = up.requests();
    let d = assert_invalid_token(&bearer_at(&proxy, "/other/x", &t), &t);
    assert_mentions(&d, &["iss"], "issuer not listed");
    let why = assert_forbidden(&bearer_at(&proxy, "/aud/x", &t), &t);
    assert_mentions(&why, &["aud"], "no audience in the answer");
    assert_eq!(
        up.requests(),
        before,
        "nothing refused may reach the upstream"
    );
}

/// Guards the test helpers themselves: the handler answers what it was told.
#[test]
fn helper_introspection_handler_answers_as_told() {
    let idp = FakeIdp::start();
    let intro = Introspection::install(&idp);
    let flip = Arc::new(AtomicBool::new(true));
    let f = flip.clone();
    intro.answer_with(move |req| {
        IdpResponse::json(
            200,
            &json!({"active": f.load(Ordering::SeqCst), "token": req.form_value("token")}),
        )
    });
    let mut c = Client::connect(idp.port);
    let post = |c: &mut Client| {
        c.request(
            "POST",
            INTROSPECTION_PATH,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"token=a%2Bb",
        )
        .json()
    };
    assert_eq!(post(&mut c), json!({"active": true, "token": "a+b"}));
    flip.store(false, Ordering::SeqCst);
    assert_eq!(post(&mut c), json!({"active": false, "token": "a+b"}));
    intro.raw(b"{ \"active\" : true }");
    let r = c.request("POST", INTROSPECTION_PATH, &[], b"token=x");
    assert_eq!(r.body, b"{ \"active\" : true }");
    assert_eq!(idp.introspections(), 3);
}
