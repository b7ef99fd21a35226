//! A real OpenID Connect provider for the tests: the OpenID-certified `oidc-provider` npm
//! package, run by `node tests/idp/server.mjs` (see that file for its configuration).
//!
//! [`RealIdp::start`] spawns it on a free port of 127.0.0.1 with the issuer
//! `http://localhost:<port>`, waits (bounded) for its `READY <port>` line and kills it on drop.
//! Node and `tests/idp/node_modules` must be installed (`bash tests/run.sh` does it); when they
//! are missing this panics rather than skipping.
//!
//! Token requests go over a raw HTTP/1.1 connection ([`super::Client`]) to 127.0.0.1 with
//! `Host: localhost:<port>`, so the provider answers exactly as it would for the issuer's host.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::alphabet;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD,
};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde_json::Value;

use super::Client;

/// The client registered at the IdP.
pub const CLIENT_ID: &str = "portcullis";
pub const CLIENT_SECRET: &str = "secret";
/// The resource indicator for which the IdP issues RS256 JWT access tokens (`aud` = this).
pub const API_RESOURCE: &str = "urn:portcullis:api";
/// How long the IdP may take to print `READY <port>`.
pub const IDP_READY_TIMEOUT: Duration = Duration::from_secs(15);

const INSTALL_HINT: &str = "run `bash tests/run.sh`, which installs them (apt nodejs/npm, then \
                            `npm ci` in tests/idp)";

/// The node project directory `tests/idp`.
pub fn idp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("idp")
}

/// How to start the IdP; `Default` is what [`RealIdp::start`] uses.
#[derive(Debug, Clone, Default)]
pub struct IdpOptions {
    /// Redirect URIs of client `portcullis` (matched exactly); empty: the IdP's default
    /// `http://127.0.0.1/.apisix/redirect`.
    pub redirect_uris: Vec<String>,
    /// Post-logout redirect URIs of client `portcullis` (matched exactly).
    pub post_logout_redirect_uris: Vec<String>,
    /// Delay before the IdP answers discovery and JWKS requests (a slow IdP).
    pub metadata_delay: Option<Duration>,
    /// Log every request the IdP serves to its stderr ([`RealIdp::stderr`]).
    pub debug: bool,
}

/// A running `oidc-provider`. Killed on drop.
pub struct RealIdp {
    child: Child,
    /// Kept open: the IdP exits by itself when it closes (i.e. when the test process dies).
    _stdin: Option<ChildStdin>,
    port: u16,
    stderr: Arc<Mutex<String>>,
    /// Started with [`IdpOptions::debug`]: every request is logged, so it can be counted.
    debug: bool,
}

/// One request the IdP served, from its debug log (`[idp] GET /me -> 200 (3 ms)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpRequest {
    pub method: String,
    /// The request target as received (path and query).
    pub target: String,
    pub status: u16,
}

impl IdpRequest {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// How long [`RealIdp::sync_log`] waits for its marker request to show up in the log.
const LOG_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

impl RealIdp {
    /// Starts the IdP with the default redirect URI (`http://127.0.0.1/.apisix/redirect`).
    pub fn start() -> RealIdp {
        RealIdp::start_with(&[], &[])
    }

    /// Starts the IdP with client `portcullis` allowed these (exactly matched) redirect URIs
    /// and post-logout redirect URIs; an empty list keeps the IdP's default.
    pub fn start_with(redirect_uris: &[&str], post_logout_redirect_uris: &[&str]) -> RealIdp {
        RealIdp::start_opts(&IdpOptions {
            redirect_uris: redirect_uris.iter().map(|s| s.to_string()).collect(),
            post_logout_redirect_uris: post_logout_redirect_uris
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..IdpOptions::default()
        })
    }

    /// Starts the IdP with `opts`.
    pub fn start_opts(opts: &IdpOptions) -> RealIdp {
        let dir = idp_dir();
        check_installed(&dir);
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("server.mjs"))
            .arg("0")
            .current_dir(&dir)
            .env("IDP_EXIT_WITH_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !opts.redirect_uris.is_empty() {
            cmd.env("IDP_REDIRECT_URIS", opts.redirect_uris.join(","));
        }
        if !opts.post_logout_redirect_uris.is_empty() {
            cmd.env(
                "IDP_POST_LOGOUT_REDIRECT_URIS",
                opts.post_logout_redirect_uris.join(","),
            );
        }
        if let Some(d) = opts.metadata_delay {
            cmd.env("IDP_METADATA_DELAY_MS", d.as_millis().to_string());
        }
        if opts.debug {
            cmd.env("IDP_DEBUG", "1");
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` ({e}); {INSTALL_HINT}"));

        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let mut pipe = child.stderr.take().unwrap();
            let sink = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let (tx, rx) = mpsc::channel::<Result<u16, String>>();
        {
            let out = child.stdout.take().unwrap();
            thread::spawn(move || {
                let mut lines = BufReader::new(out).lines();
                let mut seen = String::new();
                let mut ready = false;
                for line in lines.by_ref() {
                    let Ok(line) = line else { break };
                    if let Some(p) = line.strip_prefix("READY ") {
                        let _ = tx.send(
                            p.trim()
                                .parse()
                                .map_err(|e| format!("bad READY line {line:?}: {e}")),
                        );
                        ready = true;
                        break;
                    }
                    seen.push_str(&line);
                    seen.push('\n');
                }
                if !ready {
                    let _ = tx.send(Err(format!("stdout closed before READY; stdout: {seen:?}")));
                }
                // Keep draining so the IdP never blocks on a full pipe.
                for _ in lines {}
            });
        }
        let stdin = child.stdin.take();
        let deadline = Instant::now() + IDP_READY_TIMEOUT;
        let port = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(port)) => break port,
                Ok(Err(e)) => {
                    thread::sleep(Duration::from_millis(200)); // let stderr arrive
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "the test IdP did not start: {e}; stderr:\n{}",
                        stderr.lock().unwrap()
                    );
                }
                Err(_) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        thread::sleep(Duration::from_millis(200));
                        panic!(
                            "the test IdP exited before READY ({st}); stderr:\n{}",
                            stderr.lock().unwrap()
                        );
                    }
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "the test IdP printed no READY line within {IDP_READY_TIMEOUT:?}; \
                             stderr:\n{}",
                            stderr.lock().unwrap()
                        );
                    }
                }
            }
        };
        RealIdp {
            child,
            _stdin: stdin,
            port,
            stderr,
            debug: opts.debug,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://localhost:<port>`, byte for byte the `iss` of its tokens.
    pub fn issuer(&self) -> String {
        format!("http://localhost:{}", self.port)
    }

    /// `<issuer>/.well-known/openid-configuration`. The endpoints in the document are built
    /// from the `Host` the document was fetched with, so through this URL they all name
    /// `localhost:<port>`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer())
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer())
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    pub fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer())
    }

    /// The SPKI PEM of the IdP's fixed RS256 signing key (`tests/idp/public.pem`).
    pub fn public_key_pem(&self) -> String {
        let p = idp_dir().join("public.pem");
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// Everything the IdP wrote to stderr so far (warnings, `[idp]` lines).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `<issuer>/auth`: the discovery's `authorization_endpoint`.
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/auth", self.issuer())
    }

    /// `<issuer>/me`: the discovery's `userinfo_endpoint`.
    pub fn userinfo_endpoint(&self) -> String {
        format!("{}/me", self.issuer())
    }

    /// `<issuer>/session/end`: the discovery's `end_session_endpoint`.
    pub fn end_session_endpoint(&self) -> String {
        format!("{}/session/end", self.issuer())
    }

    /// Every request the IdP has served so far, in order, without [`RealIdp::sync_log`]'s own
    /// markers. Needs [`IdpOptions::debug`] (panics otherwise, so a count can never read zero
    /// because nothing was logged). Call [`RealIdp::sync_log`] first to be sure that every
    /// request answered so far is in.
    pub fn requests(&self) -> Vec<IdpRequest> {
        assert!(
            self.debug,
            "RealIdp::requests needs the IdP started with IdpOptions {{ debug: true, .. }}"
        );
        let log = self.stderr();
        log.lines()
            .filter_map(parse_request_line)
            .filter(|r| !r.target.contains(SYNC_MARKER))
            .collect()
    }

    /// How many requests with `method` to `path` (query ignored) the IdP has served so far.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path() == path)
            .count()
    }

    /// Token, userinfo and introspection requests so far: what a login costs at the IdP, and
    /// what a request served from a session must not cause. Call [`RealIdp::sync_log`] first.
    pub fn backchannel_calls(&self) -> Vec<IdpRequest> {
        self.requests()
            .into_iter()
            .filter(|r| matches!(r.path(), "/token" | "/me" | "/token/introspection"))
            .collect()
    }

    /// Makes sure the log holds every request the IdP answered before this call: sends a marker
    /// request and waits (bounded) until the stderr reader has seen it. The IdP writes each
    /// line before it sends the answer, and its stderr is one ordered pipe.
    pub fn sync_log(&self) {
        assert!(
            self.debug,
            "RealIdp::sync_log needs the IdP started with IdpOptions {{ debug: true, .. }}"
        );
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("{SYNC_MARKER}={}-{n}", std::process::id());
        let r = self.request(
            "GET",
            &format!("/.well-known/openid-configuration?{marker}"),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "IdP log marker request: {:?}", r.text());
        let deadline = Instant::now() + LOG_SYNC_TIMEOUT;
        while !self.stderr().contains(&marker) {
            assert!(
                Instant::now() < deadline,
                "the IdP's log marker {marker} did not show up within {LOG_SYNC_TIMEOUT:?}; \
                 stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// A raw request to the IdP (`Host: localhost:<port>`, `Connection: close`).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> super::Response {
        let host = format!("localhost:{}", self.port);
        let mut all: Vec<(&str, &str)> = vec![("Host", &host), ("Connection", "close")];
        all.extend_from_slice(headers);
        Client::connect(self.port).request(method, path, &all, body)
    }

    /// POSTs `form` to `path` as client `portcullis` (`client_secret_basic`), with `headers`
    /// after `Authorization` and `Content-Type`.
    fn client_post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> super::Response {
        let auth = format!(
            "Basic {}",
            b64_encode(format!("{CLIENT_ID}:{CLIENT_SECRET}").as_bytes())
        );
        let body = form_encode(form);
        let mut all: Vec<(&str, &str)> = vec![
            ("Authorization", &auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        all.extend_from_slice(headers);
        self.request("POST", path, &all, body.as_bytes())
    }

    /// POSTs `form` to the token endpoint with `client_secret_basic`; returns status and JSON.
    pub fn token_request(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self.client_post("/token", form, &[("Accept", "application/json")]);
        let v = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!(
                "token endpoint answered {} with a non-JSON body ({e}): {:?}",
                r.status,
                r.text()
            )
        });
        (r.status, v)
    }

    fn access_token(&self, form: &[(&str, &str)]) -> String {
        let (status, v) = self.token_request(form);
        assert_eq!(status, 200, "token request {form:?} failed: {v}");
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {v}"))
            .to_string()
    }

    /// An RS256 JWT access token (`typ: at+jwt`, `aud: urn:portcullis:api`) for client
    /// `portcullis`, from a `client_credentials` grant naming the API resource. `scope` is a
    /// space-separated subset of `read write admin` (empty: no `scope` claim).
    pub fn client_credentials_jwt(&self, scope: &str) -> String {
        let t = self.client_credentials(scope, Some(API_RESOURCE));
        assert_eq!(t.split('.').count(), 3, "expected a JWT, got {t:?}");
        t
    }

    /// An opaque access token from a `client_credentials` grant without a resource; only the
    /// introspection endpoint can tell what it is.
    pub fn client_credentials_opaque(&self, scope: &str) -> String {
        let t = self.client_credentials(scope, None);
        assert!(!t.contains('.'), "expected an opaque token, got {t:?}");
        t
    }

    /// An access token from a `client_credentials` grant with `scope` (empty: none) and
    /// `resource`.
    fn client_credentials(&self, scope: &str, resource: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        self.access_token(&form)
    }

    /// Asks the IdP's introspection endpoint about `token` (client `portcullis`).
    pub fn introspect(&self, token: &str) -> Value {
        let r = self.client_post("/token/introspection", &[("token", token)], &[]);
        assert_eq!(r.status, 200, "introspection: {:?}", r.text());
        r.json()
    }
}

impl Drop for RealIdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The query key of [`RealIdp::sync_log`]'s marker requests.
const SYNC_MARKER: &str = "portcullis-log-sync";

/// Parses one debug line of `server.mjs`: `[idp] METHOD TARGET -> STATUS (N ms)`.
fn parse_request_line(line: &str) -> Option<IdpRequest> {
    let rest = line.strip_prefix("[idp] ")?;
    let (method, rest) = rest.split_once(' ')?;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let (target, rest) = rest.rsplit_once(" -> ")?;
    let status = rest.split(' ').next()?.parse().ok()?;
    Some(IdpRequest {
        method: method.to_string(),
        target: target.to_string(),
        status,
    })
}

fn check_installed(dir: &std::path::Path) {
    let node_ok = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !node_ok {
        panic!("the real-IdP tests need `node` (Node.js 20+) on PATH and it is missing: {INSTALL_HINT}");
    }
    let pkg = dir.join("node_modules").join("oidc-provider");
    if !pkg.join("package.json").is_file() {
        panic!(
            "the real-IdP tests need {} and it is missing: {INSTALL_HINT}",
            pkg.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding helpers
// ---------------------------------------------------------------------------------------------

/// How the decoders read base64: padding optional (but whole when present), bits past the last
/// byte ignored.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

fn decode_lenient(engine: &GeneralPurpose, text: &str) -> Result<Vec<u8>, String> {
    if text.ends_with('=') && text.len() % 4 != 0 {
        return Err(format!("bad base64 padding in {text:?}"));
    }
    engine
        .decode(text)
        .map_err(|e| format!("bad base64 {text:?}: {e}"))
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn b64_encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Standard base64 (RFC 4648 §4), padding optional.
pub fn b64_decode(text: &str) -> Result<Vec<u8>, String> {
    decode_lenient(&STD_LENIENT, text)
}

/// base64url without padding (RFC 4648 §5, as in JWTs).
pub fn b64url_encode(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// base64url (RFC 4648 §5), padding optional.
pub fn b64url_decode(text: &str) -> Result<Vec<u8>, String> {
    decode_lenient(&URL_LENIENT, text)
}

/// The decoded header and claims of a compact JWS (the signature is not checked).
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token:?}");
    let json = |s: &str| -> Value {
        let bytes = b64url_decode(s).unwrap_or_else(|e| panic!("JWT segment {s:?}: {e}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWT segment {s:?}: {e}"))
    };
    (json(parts[0]), json(parts[1]))
}

/// `application/x-www-form-urlencoded` body from pairs.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
