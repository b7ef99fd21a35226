//! Requests to and checks of routes that carry the `openid-connect` plugin, shared by the
//! bearer-token (`tests/oidc_bearer.rs`) and introspection (`tests/oidc_introspection.rs`) tests.
//!
//! * Routes and proxies: [`oidc_route`], [`start_routes`] (the given routes plus the
//!   unprotected `/open/*`).
//! * Requests: [`get_with`], [`bearer`], [`bearer_at`], and [`bearer_while_open_is_served`]
//!   for a token the IdP cannot answer for yet.
//! * Answers: [`parse_challenge`] and the `WWW-Authenticate` of a 401 `invalid_token`
//!   ([`assert_invalid_token_answer`]), the JSON body of a 403 ([`assert_forbidden_answer`]),
//!   short JSON error bodies, leak checks over [`whole`] answers, and the identity headers the
//!   upstream saw ([`accepted_echo`], [`userinfo`]).

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::jwt::b64_std_decode;
use super::{base_config, route, Client, Echo, Proxy, Response, Upstream};

// ---------------------------------------------------------------------------------------------
// Routes and requests
// ---------------------------------------------------------------------------------------------

/// A route `uri` to `up` with the plugin configured by `plugin_cfg`.
pub fn oidc_route(id: &str, uri: &str, up: &Upstream, plugin_cfg: Value) -> Value {
    let mut r = route(id, uri, &[up]);
    r["plugins"] = json!({ "openid-connect": plugin_cfg });
    r
}

/// A proxy (`workers` workers) with `routes` plus the unprotected `/open/*`.
pub fn start_routes_on(workers: u32, mut routes: Vec<Value>, up: &Upstream) -> Proxy {
    routes.push(route("open", "/open/*", &[up]));
    let mut cfg = base_config(routes);
    cfg["workers"] = json!(workers);
    Proxy::start(cfg)
}

/// A one-worker proxy with `routes` plus the unprotected `/open/*`.
pub fn start_routes(routes: Vec<Value>, up: &Upstream) -> Proxy {
    start_routes_on(1, routes, up)
}

/// GET `path` on a fresh connection with `headers`.
pub fn get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    Client::connect(port).request("GET", path, headers, b"")
}

/// GET `path` with `Authorization: Bearer <token>`.
pub fn bearer_at(proxy: &Proxy, path: &str, token: &str) -> Response {
    let auth = format!("Bearer {token}");
    get_with(proxy.port, path, &[("Authorization", &auth)])
}

/// GET /api/resource with `Authorization: Bearer <token>`.
pub fn bearer(proxy: &Proxy, token: &str) -> Response {
    bearer_at(proxy, "/api/resource", token)
}

/// Sends `token` to /api/resource from another thread while the IdP cannot answer for it, and
/// meanwhile checks that `/open/` is served promptly (200 within `open_bound`, five times) by
/// the same worker while `what`. Returns how long the token's answer took, and the answer.
pub fn bearer_while_open_is_served(
    proxy: &Proxy,
    token: &str,
    open_bound: Duration,
    what: &str,
) -> (Duration, Response) {
    let port = proxy.port;
    let t2 = token.to_string();
    let pending = thread::spawn(move || {
        let started = Instant::now();
        let auth = format!("Bearer {t2}");
        let r = get_with(port, "/api/resource", &[("Authorization", &auth)]);
        (started.elapsed(), r)
    });
    // Meanwhile other routes are served promptly.
    thread::sleep(Duration::from_millis(100));
    for _ in 0..5 {
        let started = Instant::now();
        let r = proxy.get("/open/ping");
        assert_eq!(r.status, 200, "/open/ while {what}: {:?}", r.text());
        assert!(
            started.elapsed() < open_bound,
            "/open/ took {:?} while {what}",
            started.elapsed()
        );
    }
    pending.join().expect("bearer request thread")
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

/// Everything the client received (status line parts, headers, body) as one string.
pub fn whole(r: &Response) -> String {
    let mut s = format!("{} {}\n", r.status, r.reason);
    for (n, v) in &r.headers {
        s.push_str(&format!("{n}: {v}\n"));
    }
    s.push_str(&r.text());
    s
}

/// Asserts no part of the answer carries `secret_text` (a token or a client secret).
pub fn assert_no_leak(r: &Response, secret_text: &str) {
    let all = whole(r);
    assert!(
        !all.contains(secret_text),
        "the answer contains {secret_text:?}:\n{all}"
    );
}

/// Asserts no part of the answer carries the JWT `token`, nor its signature or payload part
/// (when 16 characters or longer).
pub fn assert_no_token_leak(r: &Response, token: &str) {
    let all = whole(r);
    assert!(
        !all.contains(token),
        "the answer contains the token:\n{all}"
    );
    for part in token.split('.').skip(1) {
        if part.len() >= 16 {
            assert!(
                !all.contains(part),
                "the answer contains a part of the token ({part}):\n{all}"
            );
        }
    }
}

/// Splits `Bearer a="x", b="y"` into the scheme and its parameters.
pub fn parse_challenge(v: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() || chars.next().is_none() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(e) = chars.next() {
                            val.push(e);
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        params.push((key.trim().to_string(), val));
    }
    (scheme.to_string(), params)
}

/// The value of challenge parameter `name` (case-insensitive).
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Asserts a short JSON error body.
pub fn assert_short_json(r: &Response) -> Value {
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.to_ascii_lowercase().starts_with("application/json"),
        "Content-Type of a {} answer should be application/json, got {ct:?}; body {:?}",
        r.status,
        r.text()
    );
    assert!(
        r.body.len() <= 1024,
        "error body should be short, got {} bytes: {:?}",
        r.body.len(),
        r.text()
    );
    r.json()
}

/// Asserts a 401 `invalid_token` answer in `realm` (challenge and short JSON body); returns
/// `error_description`. What must not leak into it is for the caller to check.
pub fn assert_invalid_token_answer(r: &Response, realm: &str) -> String {
    assert_eq!(
        r.status,
        401,
        "token should be rejected with 401; headers {:?} body {:?}",
        r.headers,
        r.text()
    );
    let www = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("401 without WWW-Authenticate: {:?}", r.headers));
    let prefix = format!("Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"");
    assert!(
        www.starts_with(&prefix),
        "WWW-Authenticate should start with {prefix:?}, got {www:?}"
    );
    let (scheme, params) = parse_challenge(www);
    assert_eq!(scheme, "Bearer");
    assert_eq!(param(&params, "realm"), Some(realm), "{www}");
    assert_eq!(param(&params, "error"), Some("invalid_token"), "{www}");
    let desc = param(&params, "error_description")
        .unwrap_or_else(|| panic!("no error_description in {www:?}"))
        .to_string();
    assert!(!desc.trim().is_empty(), "empty error_description: {www:?}");
    assert_short_json(r);
    desc
}

/// Asserts a 403 JSON `{"error": "<why>"}` answer; returns the reason. What must not leak into
/// it is for the caller to check.
pub fn assert_forbidden_answer(r: &Response) -> String {
    assert_eq!(
        r.status,
        403,
        "expected 403; headers {:?} body {:?}",
        r.headers,
        r.text()
    );
    let v = assert_short_json(r);
    let why = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("403 body should be {{\"error\": \"<why>\"}}, got {v}"))
        .to_string();
    assert!(!why.trim().is_empty(), "403 with an empty reason: {v}");
    why
}

/// Asserts `text` mentions one of `words` (case-insensitive).
pub fn assert_mentions(text: &str, words: &[&str], what: &str) {
    let l = text.to_ascii_lowercase();
    assert!(
        words.iter().any(|w| l.contains(&w.to_ascii_lowercase())),
        "{what}: {text:?} should mention one of {words:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// What the upstream saw
// ---------------------------------------------------------------------------------------------

/// The upstream echo of a proxied request, which must carry exactly the raw `token` in
/// `X-Access-Token`.
pub fn accepted_echo(r: &Response, token: &str) -> Echo {
    let echo = r.echo();
    assert_eq!(
        echo.header_all("x-access-token"),
        vec![token],
        "upstream should see exactly the raw token in X-Access-Token"
    );
    echo
}

/// Asserts none of the identity headers a client sent reached the upstream: no value with
/// "spoofed" in it, nor the client's `X-Userinfo` values (`spoofed_info` and `c3Bvb2ZlZA==`),
/// and no `X-ID-Token` or `X-Refresh-Token` at all. `what` names the case.
pub fn assert_no_spoofed_identity(echo: &Echo, spoofed_info: &str, what: &str) {
    let seen = format!("{:?}", echo.headers);
    assert!(
        !seen.contains("spoofed") && !seen.contains(spoofed_info) && !seen.contains("c3Bvb2ZlZA"),
        "{what}: a client-sent identity header reached the upstream: {seen}"
    );
    assert!(!echo.has("x-id-token"), "{what}: {seen}");
    assert!(!echo.has("x-refresh-token"), "{what}: {seen}");
}

/// The single `X-Userinfo` the upstream saw, decoded (strict standard base64 with padding).
pub fn userinfo_bytes(echo: &Echo) -> Vec<u8> {
    let all = echo.header_all("x-userinfo");
    assert_eq!(
        all.len(),
        1,
        "upstream should see exactly one X-Userinfo: {:?}",
        echo.headers
    );
    b64_std_decode(all[0])
        .unwrap_or_else(|| panic!("X-Userinfo is not standard padded base64: {:?}", all[0]))
}

/// The decoded `X-Userinfo` the upstream saw, as JSON.
pub fn userinfo(echo: &Echo) -> Value {
    let raw = userinfo_bytes(echo);
    serde_json::from_slice(&raw).unwrap_or_else(|e| {
        panic!(
            "X-Userinfo is not base64 of JSON ({e}): {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}
