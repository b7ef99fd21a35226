//! Browser login through the proxy (SPEC §2.5): Debian's chromium, driven by playwright-core
//! (`tests/browser/login.mjs`, run through `common/browser.rs`), against the real IdP
//! (`oidc-provider`, `common/real_idp.rs`), with the echo upstream showing what the proxy sent.
//!
//! The first two tests prove the harness itself on this machine, without the proxy: chromium
//! starts, resolves only loopback, fills the provider's login and consent forms, follows its
//! redirects to a registered redirect URI, confirms its end_session page, and reports what it
//! saw; and the script fails loudly on an unexpected page.
//!
//! The IdP's issuer is `http://localhost:<port>` and the proxy is `127.0.0.1:<port>`, so the
//! browser keeps their cookies apart. The proxy's exact redirect URI and post-logout URI are
//! registered with the IdP's client, so the proxy's port is picked before either starts.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use browser::{query_param, starts_with_re, BrowserRun, Cookie};
use common::real_idp::*;
use common::*;
use serde_json::{json, Value};

/// A tiny HTTP listener on 127.0.0.1 standing in for a relying party's callback: records every
/// request target and answers `200 callback received`.
struct Callback {
    port: u16,
    targets: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Callback {
    fn start() -> Callback {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind callback listener");
        let port = listener.local_addr().unwrap().port();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (Arc::clone(&targets), Arc::clone(&stop));
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    Callback::serve(stream, &t);
                }
            }
        });
        Callback {
            port,
            targets,
            stop,
        }
    }

    fn serve(stream: TcpStream, targets: &Mutex<Vec<String>>) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        if let Some(target) = line.split(' ').nth(1) {
            targets.lock().unwrap().push(target.to_string());
        }
        loop {
            let mut h = String::new();
            match reader.read_line(&mut h) {
                Ok(0) | Err(_) => break,
                Ok(_) if h == "\r\n" || h == "\n" => break,
                Ok(_) => {}
            }
        }
        let body = "callback received";
        let _ = (&stream).write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// `aud` may be a string or an array of strings.
fn aud_contains(claims: &Value, aud: &str) -> bool {
    match &claims["aud"] {
        Value::String(s) => s == aud,
        Value::Array(a) => a.iter().any(|v| v == aud),
        _ => false,
    }
}

/// An authorization request of client `portcullis` for `redirect_uri`, with PKCE S256.
fn authorization_url(
    idp: &RealIdp,
    redirect_uri: &str,
    state: &str,
    nonce: &str,
    verifier: &str,
) -> String {
    let challenge =
        b64url_encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
    format!(
        "{}?{}",
        idp.authorization_endpoint(),
        form_encode(&[
            ("client_id", CLIENT_ID),
            ("response_type", "code"),
            ("scope", "openid profile email"),
            ("redirect_uri", redirect_uri),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
    )
}

/// Chromium goes through the provider's login and consent forms to a registered redirect URI
/// (a local listener), and the code it brings is exchanged for tokens (PKCE) that carry the
/// nonce and give userinfo. A second browser logs in again, confirms the end_session page
/// (with the `id_token_hint` of the first login), lands on the registered post-logout URI, and
/// is then asked for a login again.
///
/// (Confirming end_session revokes the session's grants: a code not yet exchanged is refused
/// afterwards, hence the exchange between the two runs.)
#[test]
fn browser_drives_the_idp_login_pages() {
    let cb = Callback::start();
    let redirect_uri = cb.url("/cb");
    let bye = cb.url("/bye");
    let idp = RealIdp::start_opts(&IdpOptions {
        redirect_uris: vec![redirect_uri.clone()],
        post_logout_redirect_uris: vec![bye.clone()],
        debug: true,
        ..IdpOptions::default()
    });
    let issuer = idp.issuer();

    // The endpoint helpers name what discovery publishes.
    let disc = idp
        .request("GET", "/.well-known/openid-configuration", &[], b"")
        .json();
    assert_eq!(disc["issuer"], json!(issuer), "discovery: {disc}");
    assert_eq!(
        disc["authorization_endpoint"],
        json!(idp.authorization_endpoint())
    );
    assert_eq!(disc["userinfo_endpoint"], json!(idp.userinfo_endpoint()));
    assert_eq!(
        disc["end_session_endpoint"],
        json!(idp.end_session_endpoint())
    );
    assert_eq!(disc["token_endpoint"], json!(idp.token_endpoint()));

    let verifier = "harness-verifier-0123456789-abcdefghijklmnopqrstuvwxyz";
    let (state, nonce) = ("harness-state-1", "harness-nonce-1");
    let auth = authorization_url(&idp, &redirect_uri, state, nonce, verifier);
    let interaction = starts_with_re(&format!("{issuer}/interaction/"));
    let login_steps = |auth: &str| {
        json!([
            {"do": "goto", "url": auth, "expect_url_re": interaction, "expect_page": "login",
             "expect_status": 200},
            {"do": "login", "login": "alice", "password": "any", "expect_url_re": interaction,
             "expect_page": "consent"},
            {"do": "consent", "expect_url_re": starts_with_re(&format!("{redirect_uri}?code=")),
             "expect_status": 200, "expect_text": "callback received"},
        ])
    };

    let run = browser::run(&json!({"timeout_ms": 15000, "steps": login_steps(&auth)}));
    eprintln!(
        "chromium {:?}: launch {:?} ms, whole run {:?} ms, steps {:?}",
        run.browser_version,
        run.launch_ms,
        run.total_ms,
        run.steps.iter().map(|s| s.ms).collect::<Vec<_>>()
    );

    // The redirect chain of the first step: the authorization request, then the login page.
    let first = &run.steps[0];
    assert_eq!(
        first.chain.first().map(|h| h.url.as_str()),
        Some(auth.as_str())
    );
    assert_eq!(
        first.chain.len(),
        2,
        "auth -> interaction: {:#?}",
        first.chain
    );

    // The callback got the code, our state and the issuer (RFC 9207), and the browser shows it.
    let targets = cb.targets();
    let callbacks: Vec<&String> = targets.iter().filter(|t| t.starts_with("/cb?")).collect();
    assert_eq!(callbacks.len(), 1, "callback requests: {targets:?}");
    let cb_url = cb.url(callbacks[0]);
    assert_eq!(run.steps[2].url, cb_url);
    assert_eq!(query_param(&cb_url, "state"), state);
    assert_eq!(query_param(&cb_url, "iss"), issuer);
    let code = query_param(&cb_url, "code");
    assert!(!code.is_empty(), "empty code in {cb_url}");

    // The provider's cookies stay with its host name, away from 127.0.0.1 (where the proxy
    // lives).
    assert!(
        run.cookies_for("localhost")
            .iter()
            .any(|c| c.name == "_session"),
        "no IdP session cookie after the login: {:#?}",
        run.cookies
    );
    assert!(
        run.cookies_for("127.0.0.1").is_empty(),
        "cookies for 127.0.0.1: {:#?}",
        run.cookies_for("127.0.0.1")
    );

    // The code is good for tokens with our nonce (PKCE verifier), and the opaque access token
    // for userinfo.
    idp.sync_log();
    assert_eq!(idp.backchannel_calls(), vec![], "no token call yet");
    let (status, tokens) = idp.token_request(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", &redirect_uri),
        ("code_verifier", verifier),
    ]);
    assert_eq!(status, 200, "code exchange: {tokens}");
    let id_token = tokens["id_token"].as_str().expect("id_token");
    let (_, claims) = jwt_parts(id_token);
    assert_eq!(claims["iss"], json!(issuer), "{claims}");
    assert!(aud_contains(&claims, CLIENT_ID), "{claims}");
    assert_eq!(claims["sub"], json!("alice"), "{claims}");
    assert_eq!(claims["nonce"], json!(nonce), "{claims}");
    let access = tokens["access_token"].as_str().expect("access_token");
    assert!(
        !access.contains('.'),
        "expected an opaque access token: {access}"
    );
    let bearer = format!("Bearer {access}");
    let me = idp.request("GET", "/me", &[("Authorization", &bearer)], b"");
    assert_eq!(me.status, 200, "userinfo: {:?}", me.text());
    let info = me.json();
    assert_eq!(info["sub"], json!("alice"), "{info}");
    assert_eq!(info["email"], json!("alice@example.test"), "{info}");

    // The request log counts exactly what was asked.
    idp.sync_log();
    assert_eq!(idp.count("POST", "/token"), 1, "{:?}", idp.requests());
    assert_eq!(idp.count("GET", "/me"), 1, "{:?}", idp.requests());
    assert_eq!(idp.backchannel_calls().len(), 2, "{:?}", idp.requests());

    // Log in again in a fresh browser, then end the session as a relying party does.
    let end_session = format!(
        "{}?{}",
        idp.end_session_endpoint(),
        form_encode(&[
            ("id_token_hint", id_token),
            ("post_logout_redirect_uri", &bye)
        ])
    );
    let again = authorization_url(
        &idp,
        &redirect_uri,
        "harness-state-2",
        "harness-nonce-2",
        verifier,
    );
    let mut steps = login_steps(&again);
    let more = json!([
        {"do": "goto", "url": end_session, "expect_url_re": starts_with_re(&idp.end_session_endpoint()),
         "expect_page": "logout"},
        {"do": "logout", "expect_url": bye, "expect_status": 200, "expect_text": "callback received"},
        {"do": "goto", "url": again, "expect_url_re": interaction, "expect_page": "login"},
    ]);
    steps
        .as_array_mut()
        .unwrap()
        .extend(more.as_array().unwrap().iter().cloned());
    let run = browser::run(&json!({"timeout_ms": 15000, "steps": steps}));
    eprintln!(
        "second run: launch {:?} ms, whole run {:?} ms, steps {:?}",
        run.launch_ms,
        run.total_ms,
        run.steps.iter().map(|s| s.ms).collect::<Vec<_>>()
    );
    assert!(
        cb.targets().iter().any(|t| t == "/bye"),
        "the post-logout redirect never reached the listener: {:?}",
        cb.targets()
    );
    let logout = &run.steps[4];
    assert_eq!(
        logout.chain.iter().map(|h| h.status).collect::<Vec<_>>(),
        vec![Some(303), Some(200)],
        "confirm -> post-logout URI: {:#?}",
        logout.chain
    );
    assert!(
        run.steps[3]
            .cookies_for("localhost")
            .iter()
            .any(|c| c.name == "_session")
            && !logout.cookies.iter().any(|c| c.name == "_session"),
        "the IdP session cookie should go with the logout: before {:#?} after {:#?}",
        run.steps[3].cookies,
        logout.cookies
    );
}

/// The script stops at the first unexpected page, says which step and what it found, and exits
/// non-zero (so every browser test can fail).
#[test]
fn browser_script_fails_on_an_unexpected_page() {
    let cb = Callback::start();
    let redirect_uri = cb.url("/cb");
    let idp = RealIdp::start_with(&[&redirect_uri], &[]);
    let auth = authorization_url(
        &idp,
        &redirect_uri,
        "s",
        "n",
        "verifier-verifier-verifier-verifier-verifier",
    );
    let failed = browser::try_run(&json!({
        "timeout_ms": 15000,
        "steps": [
            {"do": "goto", "url": auth, "expect_page": "consent"},
            {"do": "consent"},
        ]
    }))
    .expect_err("a login page where consent was expected must fail the scenario");
    assert_eq!(failed.exit_code, Some(1), "{}", failed.report());
    assert!(
        failed.error.starts_with("step 0 (goto ")
            && failed
                .error
                .contains("page should be of kind \"consent\", is \"login\""),
        "{}",
        failed.report()
    );
    assert!(
        failed.stderr.contains("unexpected page"),
        "{}",
        failed.report()
    );
    let partial = failed.partial.expect("the partial result");
    assert_eq!(partial.steps.len(), 1, "the second step must not run");
    assert_eq!(partial.steps[0].page, "login");

    // A step whose form is not on the page says so before touching anything.
    let failed = browser::try_run(&json!({
        "timeout_ms": 15000,
        "steps": [{"do": "goto", "url": auth}, {"do": "consent"}]
    }))
    .expect_err("consent on the login page must fail");
    assert!(
        failed.error.starts_with("step 1 (consent)")
            && failed
                .error
                .contains("expected the provider's consent page"),
        "{}",
        failed.report()
    );
}

// ---------------------------------------------------------------------------------------------
// The login flow through the proxy
// ---------------------------------------------------------------------------------------------

/// A configured `session.secret` (32 characters).
const SECRET: &str = "0123456789abcdef0123456789abcdef";
const APP_PATH: &str = "/app/page?x=1&y=two";

/// The IdP, the echo upstream and the proxy: route `/app/*` with `openid-connect` (browser
/// flow) and an unprotected `/bye` (the post-logout landing page), both to the upstream.
struct Rp {
    idp: RealIdp,
    _up: Upstream,
    proxy: Option<Proxy>,
    port: u16,
    cfg: Value,
    /// Holds the proxy's `data_dir`, which outlives the proxy processes (restarts).
    home: TempDir,
}

impl Rp {
    /// `workers` workers; `secret`: `session.secret`, or none (the generated one in data_dir).
    fn start(workers: u32, secret: Option<&str>) -> Rp {
        let port = free_port();
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        let idp = RealIdp::start_opts(&IdpOptions {
            redirect_uris: vec![url("/app/.apisix/redirect")],
            post_logout_redirect_uris: vec![url("/bye")],
            debug: true,
            ..IdpOptions::default()
        });
        let up = Upstream::start("A");
        let mut plugin = json!({
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "discovery": idp.discovery_url(),
            "bearer_only": false,
            "scope": "openid profile email",
            "redirect_uri": url("/app/.apisix/redirect"),
            "logout_path": "/app/logout",
            "post_logout_redirect_uri": url("/bye"),
            "use_pkce": true,
        });
        if let Some(secret) = secret {
            plugin["session"] = json!({ "secret": secret });
        }
        let home = TempDir::new();
        let upstream = json!({ "type": "roundrobin", "nodes": nodes(&[(&up, 1)]) });
        let mut cfg = base_config(vec![
            json!({
                "id": "app",
                "uri": "/app/*",
                "plugins": { "openid-connect": plugin },
                "upstream": upstream,
            }),
            json!({ "id": "bye", "uri": "/bye", "upstream": upstream }),
        ]);
        cfg["workers"] = json!(workers);
        cfg["listen"] = json!(format!("127.0.0.1:{port}"));
        cfg["data_dir"] = json!(home.path().join("data").to_string_lossy());
        let proxy = Some(Proxy::start(cfg.clone()));
        Rp {
            idp,
            _up: up,
            proxy,
            port,
            cfg,
            home,
        }
    }

    fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("the proxy is running")
    }

    /// Stops the proxy (SIGTERM, as a restart does) and starts it again on the same port with
    /// `data_dir` (None: the same).
    ///
    /// Not SIGKILL: the listening sockets of a killed proxy outlive it for a moment (its
    /// io_uring instances are torn down asynchronously), and a start at that moment is refused
    /// with "address already in use".
    fn restart(&mut self, data_dir: Option<&str>) {
        let mut old = self.proxy.take().expect("the proxy is running");
        old.signal(libc::SIGTERM);
        assert!(
            old.wait_exit(std::time::Duration::from_secs(10)).is_some(),
            "the proxy did not stop on SIGTERM within 10 s; log:\n{}",
            old.log()
        );
        drop(old);
        let mut cfg = self.cfg.clone();
        if let Some(d) = data_dir {
            cfg["data_dir"] = json!(d);
        }
        self.proxy = Some(Proxy::start(cfg));
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn redirect_uri(&self) -> String {
        self.url("/app/.apisix/redirect")
    }

    /// Goto `start` → the IdP's login form → consent → back on `start`, proxied.
    fn login_steps(&self, start: &str, user: &str) -> Vec<Value> {
        let interaction = starts_with_re(&format!("{}/interaction/", self.idp.issuer()));
        vec![
            json!({"do": "goto", "url": start, "expect_url_re": interaction, "expect_page": "login"}),
            json!({"do": "login", "login": user, "password": "any-password",
                   "expect_url_re": interaction, "expect_page": "consent"}),
            json!({"do": "consent", "expect_url": start, "expect_status": 200}),
        ]
    }

    /// One GET of `path` on a fresh connection, as a browser navigation carrying `cookie`.
    fn navigate(&self, path: &str, cookie: &str) -> Response {
        let host = format!("127.0.0.1:{}", self.port);
        let mut headers = vec![
            ("Host", host.as_str()),
            ("Accept", "text/html"),
            ("Sec-Fetch-Mode", "navigate"),
            ("Connection", "close"),
        ];
        if !cookie.is_empty() {
            headers.push(("Cookie", cookie));
        }
        let port = self.port;
        std::panic::catch_unwind(|| Client::connect(port).request("GET", path, &headers, b""))
            .unwrap_or_else(|_| {
                panic!(
                    "GET {path} (a navigation with cookie {cookie:?}) failed, see above; \
                     proxy log:\n{}",
                    self.log()
                )
            })
    }

    /// Panics unless `r` is the redirect that starts a login at the IdP.
    fn assert_login_redirect(&self, r: &Response, what: &str) {
        let location = r.header("location").unwrap_or("");
        assert!(
            r.status == 302
                && location.starts_with(&format!("{}?", self.idp.authorization_endpoint())),
            "{what}: expected a 302 to the IdP's authorization endpoint, got {} {location:?} {:?}\n\
             proxy log:\n{}",
            r.status,
            r.text(),
            self.proxy().log()
        );
    }

    fn log(&self) -> String {
        self.proxy.as_ref().map(|p| p.log()).unwrap_or_default()
    }
}

/// The proxy's own cookies: `session` and its chunks `session_2`, … (and any other
/// `session_…` helper cookie).
fn is_session_cookie(name: &str) -> bool {
    name == "session" || name.starts_with("session_")
}

/// The session cookies the browser holds for 127.0.0.1.
fn session_cookies(run: &BrowserRun) -> Vec<&Cookie> {
    run.cookies_for("127.0.0.1")
        .into_iter()
        .filter(|c| is_session_cookie(&c.name))
        .collect()
}

/// `name=value; …` of `cookies`, as a browser sends them.
fn cookie_header(cookies: &[&Cookie]) -> String {
    cookies
        .iter()
        .map(|c| format!("{}={}", c.name, c.value))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Cookie names in `Cookie` header values.
fn cookie_names(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.split('=').next())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Base64 (standard, or URL-safe) of JSON → the JSON.
fn b64_json(what: &str, text: &str) -> Value {
    let bytes = b64_decode(text)
        .or_else(|_| b64url_decode(text))
        .unwrap_or_else(|e| panic!("{what} is not base64 ({e}): {text:?}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{what} is not base64 of JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// The only value of header `name` the upstream saw.
fn only<'a>(echo: &'a Echo, name: &str) -> &'a str {
    let all = echo.header_all(name);
    assert_eq!(
        all.len(),
        1,
        "exactly one {name} upstream: {:?}",
        echo.headers
    );
    all[0]
}

/// a. A navigation without a session goes through the IdP's login and consent forms and lands
/// on the original URL (query included), proxied with the identity headers; the upstream gets
/// the browser's other cookies but not the proxy's.
#[test]
fn login_through_the_idp_lands_on_the_original_url_with_identity_headers() {
    let rp = Rp::start(1, Some(SECRET));
    let start = rp.url(APP_PATH);
    let run = browser::run(&json!({
        "cookies": [{"name": "keep", "value": "me", "url": rp.url("/")}],
        "steps": rp.login_steps(&start, "alice"),
    }));
    eprintln!(
        "login: launch {:?} ms, whole run {:?} ms, steps {:?}",
        run.launch_ms,
        run.total_ms,
        run.steps.iter().map(|s| s.ms).collect::<Vec<_>>()
    );

    // The first navigation: 302 to the authorization endpoint with the request SPEC §2.5 names.
    let first = &run.steps[0].chain[0];
    assert_eq!(first.url, start, "{:#?}", run.steps[0].chain);
    assert_eq!(first.status, Some(302), "{first:?}");
    let auth = first.location.clone().unwrap_or_default();
    assert!(
        auth.starts_with(&format!("{}?", rp.idp.authorization_endpoint())),
        "the login should start at the IdP's authorization endpoint: {auth}"
    );
    assert_eq!(query_param(&auth, "response_type"), "code", "{auth}");
    assert_eq!(query_param(&auth, "client_id"), CLIENT_ID, "{auth}");
    assert_eq!(
        query_param(&auth, "redirect_uri"),
        rp.redirect_uri(),
        "{auth}"
    );
    let scope = query_param(&auth, "scope");
    assert!(scope.split(' ').any(|s| s == "openid"), "scope {scope:?}");
    assert_eq!(
        query_param(&auth, "code_challenge_method"),
        "S256",
        "{auth}"
    );
    assert!(!query_param(&auth, "code_challenge").is_empty(), "{auth}");
    let state = query_param(&auth, "state");
    let nonce = query_param(&auth, "nonce");
    assert!(!state.is_empty() && !nonce.is_empty(), "{auth}");

    // The callback: our state back, a code, then 302 to the original URL.
    let done = &run.steps[2];
    let callback = done.expect_hop(&format!("{}?", rp.redirect_uri()));
    assert_eq!(query_param(&callback.url, "state"), state);
    assert!(!query_param(&callback.url, "code").is_empty());
    assert_eq!(callback.status, Some(302), "{callback:?}");
    let back = callback.location.as_deref().unwrap_or("");
    assert!(
        back == start || back == APP_PATH,
        "the callback should send the browser back to {start}, sent it to {back:?}"
    );

    // Landed on the original URL, proxied.
    assert_eq!(done.url, start);
    let echo = done.echo();
    assert_eq!(
        echo.path, APP_PATH,
        "the upstream got the original path and query"
    );
    let access = only(&echo, "x-access-token");
    assert!(!access.is_empty());
    let id = b64_json("X-ID-Token", only(&echo, "x-id-token"));
    assert_eq!(id["iss"], json!(rp.idp.issuer()), "X-ID-Token: {id}");
    assert!(aud_contains(&id, CLIENT_ID), "X-ID-Token: {id}");
    assert_eq!(id["sub"], json!("alice"), "X-ID-Token: {id}");
    assert_eq!(id["nonce"], json!(nonce), "X-ID-Token: {id}");
    let info = b64_json("X-Userinfo", only(&echo, "x-userinfo"));
    assert_eq!(info["sub"], json!("alice"), "X-Userinfo: {info}");
    assert_eq!(
        info["email"],
        json!("alice@example.test"),
        "X-Userinfo: {info}"
    );
    let sent = cookie_names(&echo.header_all("cookie"));
    assert!(
        sent.iter().any(|n| n == "keep"),
        "the browser's own cookie must reach the upstream: {sent:?}"
    );
    assert!(
        !sent.iter().any(|n| is_session_cookie(n)),
        "the proxy's session cookies must not reach the upstream: {sent:?}"
    );

    // The session cookie as the browser holds it.
    let ours = session_cookies(&run);
    let session = ours
        .iter()
        .find(|c| c.name == "session")
        .unwrap_or_else(|| panic!("no `session` cookie for 127.0.0.1: {:#?}", run.cookies));
    assert!(session.http_only, "{session:?}");
    assert_eq!(session.same_site, "Lax", "{session:?}");
    assert_eq!(session.path, "/", "{session:?}");
    assert!(!session.secure, "Secure only on HTTPS: {session:?}");
    for c in &ours {
        assert!(
            !c.value.contains(access),
            "cookie {} carries the access token in clear",
            c.name
        );
    }
    let on_proxy: Vec<&str> = run
        .cookies_for("127.0.0.1")
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        !on_proxy.iter().any(|n| n.starts_with('_')),
        "IdP cookies ended up on the proxy's host: {on_proxy:?}"
    );
}

/// b. With the session, revisits are served without any IdP call: neither in the same
/// browser, nor in a fresh browser that only has the session cookies.
#[test]
fn a_revisit_with_the_session_makes_no_idp_call() {
    let rp = Rp::start(1, Some(SECRET));
    let start = rp.url(APP_PATH);
    let other = rp.url("/app/other");
    let mut steps = rp.login_steps(&start, "bob");
    steps.push(json!({"do": "goto", "url": start, "expect_url": start, "expect_status": 200}));
    steps.push(json!({"do": "goto", "url": other, "expect_url": other, "expect_status": 200}));
    let run = browser::run(&json!({ "steps": steps }));
    for s in &run.steps[3..] {
        assert_eq!(
            s.chain.len(),
            1,
            "a revisit with the session must be served without redirects: {:#?}",
            s.chain
        );
        assert_eq!(
            s.echo().header("x-access-token").map(|t| t.is_empty()),
            Some(false)
        );
    }
    let token = run.steps[2]
        .echo()
        .header("x-access-token")
        .unwrap()
        .to_string();

    // One login: one code exchange, one userinfo fetch; the revisits added nothing.
    rp.idp.sync_log();
    let after_login = rp.idp.backchannel_calls();
    let count = |path: &str| after_login.iter().filter(|r| r.path() == path).count();
    assert_eq!(
        (count("/token"), count("/me"), count("/token/introspection")),
        (1, 1, 0),
        "IdP calls of one login plus two revisits: {after_login:?}"
    );

    // A fresh browser holding only the session cookies.
    let cookies: Vec<Value> = session_cookies(&run)
        .iter()
        .map(|c| json!({"name": c.name, "value": c.value, "url": rp.url("/")}))
        .collect();
    assert!(
        !cookies.is_empty(),
        "no session cookies: {:#?}",
        run.cookies
    );
    let again = browser::run(&json!({
        "cookies": cookies,
        "steps": [{"do": "goto", "url": start, "expect_url": start, "expect_status": 200}],
    }));
    let step = &again.steps[0];
    assert_eq!(step.chain.len(), 1, "redirected: {:#?}", step.chain);
    assert_eq!(step.echo().header("x-access-token"), Some(token.as_str()));
    rp.idp.sync_log();
    assert_eq!(
        rp.idp.backchannel_calls(),
        after_login,
        "a revisit from a second browser called the IdP"
    );
}

/// c. A session made on one worker is good on every worker (2 workers, fresh connections),
/// and after a restart with the same data_dir (generated secret, no `session.secret`); a
/// garbled cookie, no cookie, or another data_dir mean a fresh login.
#[test]
fn the_session_holds_on_every_worker_and_across_a_restart() {
    let mut rp = Rp::start(2, None);
    let start = rp.url(APP_PATH);
    let run = browser::run(&json!({ "steps": rp.login_steps(&start, "carol") }));
    let token = run.steps[2]
        .echo()
        .header("x-access-token")
        .expect("X-Access-Token")
        .to_string();
    let ours = session_cookies(&run);
    assert!(!ours.is_empty(), "no session cookies: {:#?}", run.cookies);
    let cookie = cookie_header(&ours);

    // 16 fresh connections: with 2 workers the kernel spreads them over both (all 16 on the
    // worker that made the session has odds 2^-16).
    let all_served = |rp: &Rp, when: &str| {
        for i in 0..16 {
            let r = rp.navigate(APP_PATH, &cookie);
            assert_eq!(
                r.status,
                200,
                "{when}: request {i} with the session got {} {:?} {:?}\nproxy log:\n{}",
                r.status,
                r.header("location"),
                r.text(),
                rp.log()
            );
            assert_eq!(
                r.echo().header("x-access-token"),
                Some(token.as_str()),
                "{when}: request {i}"
            );
        }
    };
    all_served(&rp, "2 workers");

    rp.assert_login_redirect(&rp.navigate(APP_PATH, ""), "no cookie");
    let mut garbled: Vec<Cookie> = ours.iter().map(|c| (*c).clone()).collect();
    let v = &mut garbled[0].value;
    let mid = v.len() / 2;
    let flipped = if &v[mid..mid + 1] == "A" { "B" } else { "A" };
    v.replace_range(mid..mid + 1, flipped);
    let garbled_header = cookie_header(&garbled.iter().collect::<Vec<_>>());
    rp.assert_login_redirect(&rp.navigate(APP_PATH, &garbled_header), "garbled cookie");

    rp.restart(None);
    all_served(&rp, "after a restart with the same data_dir");

    let other = rp.home.path().join("other-data");
    rp.restart(Some(&other.to_string_lossy()));
    rp.assert_login_redirect(
        &rp.navigate(APP_PATH, &cookie),
        "a proxy with another data_dir (another generated secret)",
    );
}

/// d. `logout_path` clears the session and goes to the IdP's end_session (id_token_hint,
/// post_logout_redirect_uri); after its confirmation the browser lands on the post-logout
/// page, a background fetch gets 401 (no login for non-navigations), and the next navigation
/// needs a login again.
#[test]
fn logout_ends_the_session_and_the_next_visit_logs_in_again() {
    let rp = Rp::start(1, Some(SECRET));
    let start = rp.url(APP_PATH);
    let logout = rp.url("/app/logout");
    let bye = rp.url("/bye");
    let mut steps = rp.login_steps(&start, "dave");
    steps.extend([
        json!({"do": "goto", "url": logout,
               "expect_url_re": starts_with_re(&rp.idp.end_session_endpoint()),
               "expect_page": "logout"}),
        json!({"do": "logout", "expect_url": bye, "expect_status": 200}),
        json!({"do": "fetch", "url": rp.url("/app/api"), "expect_status": 401}),
        json!({"do": "goto", "url": start,
               "expect_url_re": starts_with_re(&format!("{}/interaction/", rp.idp.issuer())),
               "expect_page": "login"}),
    ]);
    let run = browser::run(&json!({ "steps": steps }));
    eprintln!(
        "login + logout: whole run {:?} ms, steps {:?}",
        run.total_ms,
        run.steps.iter().map(|s| s.ms).collect::<Vec<_>>()
    );

    // The logout redirect: end_session with the id token and the post-logout URI.
    let hop = &run.steps[3].chain[0];
    assert_eq!(hop.url, logout);
    assert_eq!(hop.status, Some(302), "{hop:?}");
    let to = hop.location.clone().unwrap_or_default();
    assert!(
        to.starts_with(&format!("{}?", rp.idp.end_session_endpoint())),
        "logout should go to the IdP's end_session_endpoint: {to}"
    );
    assert_eq!(query_param(&to, "post_logout_redirect_uri"), bye, "{to}");
    let (_, claims) = jwt_parts(&query_param(&to, "id_token_hint"));
    assert_eq!(claims["sub"], json!("dave"), "id_token_hint: {claims}");
    assert!(aud_contains(&claims, CLIENT_ID), "id_token_hint: {claims}");
    assert!(
        !run.steps[3]
            .cookies_for("127.0.0.1")
            .iter()
            .any(|c| is_session_cookie(&c.name)),
        "the session cookies should be cleared by the logout answer: {:#?}",
        run.steps[3].cookies
    );

    // Landed on the post-logout page, proxied without a session.
    let echo = run.steps[4].echo();
    assert_eq!(echo.path, "/bye");
    assert!(!echo.has("x-access-token"), "{:?}", echo.headers);

    // The next navigation starts a login (the IdP shows its form: its session is over too).
    let hop = &run.steps[6].chain[0];
    assert_eq!((hop.url.as_str(), hop.status), (start.as_str(), Some(302)));
    rp.idp.sync_log();
    assert_eq!(rp.idp.count("POST", "/session/end/confirm"), 1);
}
