//! A fake OpenID Connect identity provider: a real HTTP/1.1 server on 127.0.0.1 (std::net and
//! one thread per connection), controlled from the test while the proxy runs.
//!
//! Built-in endpoints:
//! * `GET /.well-known/openid-configuration`: the discovery document, `issuer` = the base URL
//!   (`http://127.0.0.1:PORT`), endpoints below it; fields can be overridden
//!   ([`FakeIdp::set_discovery_field`]).
//! * `GET /jwks`: the current key set ([`FakeIdp::set_jwks`]), with
//!   `Cache-Control: max-age=N` when set ([`FakeIdp::set_jwks_max_age`]).
//!
//! The login flow (authorization code with PKCE), like `oidc-provider` does it, for the client
//! [`CLIENT_ID`]/[`CLIENT_SECRET`] (more with [`FakeIdp::add_client`]):
//! * `GET /authorize`: records the parameters ([`FakeIdp::authorizations`]) and answers 302 to
//!   `redirect_uri?code=…&state=…&iss=…` (or `error=…` when [`FakeIdp::set_authorize_error`]).
//!   [`FakeIdp::login_code`] performs this step for a test.
//! * `POST /token`: checks the client's authentication (Basic or form; which one is recorded
//!   in [`FakeIdp::token_calls`]), the code (single use; a replay also revokes what it gave),
//!   `redirect_uri` and PKCE S256, or a refresh token; answers an opaque access token, a
//!   refresh token ([`FakeIdp::set_refresh_tokens`]) and an RS256 id token signed with the
//!   signing key ([`FakeIdp::start_with_key`], [`FakeIdp::set_signing_key`]), which can be
//!   spoiled on purpose ([`IdTokenFault`]).
//! * `GET /userinfo` with a bearer token it issued (not expired, not revoked): the user's
//!   claims ([`FakeIdp::set_user`]); otherwise 401 `invalid_token`.
//! * `POST /revoke` (RFC 7009) and `GET /end_session`: recorded ([`FakeIdp::revocations`],
//!   [`FakeIdp::end_sessions`]).
//!
//! Any path can be given a handler ([`FakeIdp::on`]) that answers from the recorded
//! [`IdpRequest`] (method, path, headers, body, with form and Basic-auth helpers), e.g. the
//! introspection endpoint. Every request is recorded ([`FakeIdp::requests`]) and counted per path
//! ([`FakeIdp::hits`]), whatever it was answered.
//!
//! Faults: for all paths or one path, answer with a status ([`Fault::Status`]), a body that is
//! not JSON ([`Fault::NotJson`]), bytes that are not HTTP ([`Fault::NotHttp`]), or close without
//! answering ([`Fault::Drop`]); answer a body that never ends ([`Fault::Endless`]) or one that
//! announces a huge length and trickles ([`Fault::Announced`]), counting what was sent
//! ([`FakeIdp::streamed`]); delay answers ([`FakeIdp::set_delay`]); or go down entirely
//! (listener closed, connections refused and open ones reset: [`FakeIdp::go_down`]) and come
//! back on the same port ([`FakeIdp::come_up`]).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::jwt::{b64url, flip_signature_bit, now, with, SigningKey};
use super::{wake_acceptor, Client, Conns};

pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/jwks";
pub const INTROSPECTION_PATH: &str = "/introspect";
pub const AUTHORIZE_PATH: &str = "/authorize";
pub const TOKEN_PATH: &str = "/token";
pub const USERINFO_PATH: &str = "/userinfo";
pub const END_SESSION_PATH: &str = "/end_session";
pub const REVOCATION_PATH: &str = "/revoke";

/// The client registered from the start.
pub const CLIENT_ID: &str = "portcullis";
/// Its secret.
pub const CLIENT_SECRET: &str = "secret";
/// Seconds an issued access token lives unless [`FakeIdp::set_expires_in`] says otherwise.
pub const DEFAULT_EXPIRES_IN: u64 = 300;
/// Seconds an issued id token lives.
pub const ID_TOKEN_LIFETIME: i64 = 600;

/// How the IdP misbehaves on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// Answer with this status and a small JSON error body.
    Status(u16),
    /// Answer 200 `application/json` with a body that is not JSON.
    NotJson,
    /// Write bytes that are not an HTTP response, then close.
    NotHttp,
    /// Read the request, then close the connection without answering.
    Drop,
    /// Answer 200 `application/json`, chunked, with a body that starts like JSON
    /// (`{"active":true,"keys":[],"pad":"xxx…`) and never ends, sent as fast as the client
    /// reads. Stops at [`ENDLESS_LIMIT`] (closing without the last chunk), so a client that
    /// reads it all fails its test rather than the machine.
    Endless,
    /// Answer 200 `application/json` with `Content-Length: N`, then trickle the body (1 KiB
    /// every 50 ms) until the client leaves or the IdP stops.
    Announced(u64),
}

/// How the id tokens the fake issues are spoiled (for tests of the relying party's checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdTokenFault {
    /// A valid id token.
    None,
    /// One bit of the signature flipped.
    BadSignature,
    /// Signed with RSA key 2 under a kid the JWKS does not have (`not-in-jwks`).
    UnknownKey,
    /// `nonce` is not the one of the authorization request.
    WrongNonce,
    /// No `nonce` claim.
    MissingNonce,
    /// `aud` is another client.
    WrongAudience,
    /// `iss` is another issuer.
    WrongIssuer,
    /// `exp` (and `iat`) in the past.
    Expired,
}

/// Query or form parameters, in the order sent, percent-decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// Parses `a=1&b=x%20y`.
    pub fn parse(encoded: &str) -> Params {
        Params(parse_urlencoded(encoded))
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// How a token or revocation request authenticated its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuthUsed {
    /// `Authorization: Basic` (client_secret_basic).
    Basic,
    /// `client_id` and `client_secret` in the form (client_secret_post).
    Post,
    /// Both at once (refused: RFC 6749 §2.3 allows one method per request).
    Both,
    /// No credentials.
    None,
}

/// A request to the token endpoint, as the fake saw and answered it.
#[derive(Clone, Debug)]
pub struct TokenCall {
    /// How the client authenticated.
    pub auth: ClientAuthUsed,
    /// The client id it authenticated as (from Basic or the form).
    pub client_id: Option<String>,
    /// The form as sent (with `client_secret` when posted).
    pub form: Params,
    /// The answer's status.
    pub status: u16,
    /// The answer's `error`, when refused.
    pub error: Option<String>,
    /// The answer's JSON when it succeeded (tokens included).
    pub answer: Option<Value>,
}

impl TokenCall {
    /// `grant_type` as sent.
    pub fn grant_type(&self) -> Option<&str> {
        self.form.get("grant_type")
    }
}

/// A revocation the fake received.
#[derive(Clone, Debug)]
pub struct Revocation {
    /// The token.
    pub token: String,
    /// `token_type_hint`, when sent.
    pub hint: Option<String>,
    /// How the client authenticated.
    pub auth: ClientAuthUsed,
    /// Whether the token was one the fake issued and still honoured.
    pub known: bool,
}

/// Where `/authorize` sent the browser.
#[derive(Clone, Debug)]
pub struct Authorized {
    /// The `Location` of the 302.
    pub location: String,
    /// Its query parameters.
    pub params: Params,
}

impl Authorized {
    /// The authorization code.
    pub fn code(&self) -> Option<&str> {
        self.params.get("code")
    }

    /// `state`, echoed.
    pub fn state(&self) -> Option<&str> {
        self.params.get("state")
    }

    /// `iss` (RFC 9207).
    pub fn iss(&self) -> Option<&str> {
        self.params.get("iss")
    }

    /// `error`, when the login was refused.
    pub fn error(&self) -> Option<&str> {
        self.params.get("error")
    }

    /// The `Location` without the query: the `redirect_uri` it went back to.
    pub fn redirect_uri(&self) -> &str {
        self.location.split('?').next().unwrap_or("")
    }

    /// The `Location` as a request target (path and query), for sending it to the proxy.
    pub fn target(&self) -> String {
        let after_scheme = self
            .location
            .split_once("://")
            .map_or(self.location.as_str(), |(_, r)| r);
        match after_scheme.find('/') {
            Some(i) => after_scheme[i..].to_string(),
            None => "/".into(),
        }
    }
}

/// Where a [`Fault::Endless`] body stops.
pub const ENDLESS_LIMIT: u64 = 256 << 20;

/// A request the IdP received.
#[derive(Clone, Debug)]
pub struct IdpRequest {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// The path without the query.
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Number of the connection it came on (0-based, in accept order).
    pub conn: usize,
}

impl IdpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::header_value(&self.headers, name)
    }

    /// The query string (after `?`), or "".
    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    /// The body as `application/x-www-form-urlencoded` pairs, percent-decoded.
    pub fn form(&self) -> Vec<(String, String)> {
        parse_urlencoded(&String::from_utf8_lossy(&self.body))
    }

    /// The first form field `name`.
    pub fn form_value(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The (user, password) of an `Authorization: Basic` header (both percent-decoded, as
    /// RFC 6749 §2.3.1 form-encodes client credentials before Basic encoding).
    pub fn basic_auth(&self) -> Option<(String, String)> {
        let v = self.header("authorization")?;
        let (scheme, b64) = v.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = super::jwt::b64_std_decode(b64.trim())?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((percent_decode(u), percent_decode(p)))
    }
}

/// An answer from a handler.
#[derive(Clone, Debug)]
pub struct IdpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl IdpResponse {
    pub fn json(status: u16, body: &Value) -> IdpResponse {
        IdpResponse {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    pub fn text(status: u16, body: &str) -> IdpResponse {
        IdpResponse {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> IdpResponse {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A handler for one path.
pub type Handler = Arc<dyn Fn(&IdpRequest) -> IdpResponse + Send + Sync>;

#[derive(Clone, Copy, Debug)]
struct Behaviour {
    fault: Fault,
    delay: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            fault: Fault::None,
            delay: Duration::ZERO,
        }
    }
}

struct Controls {
    jwks: Value,
    jwks_max_age: Option<u64>,
    discovery_overrides: serde_json::Map<String, Value>,
    all: Behaviour,
    per_path: HashMap<String, Behaviour>,
    handlers: HashMap<String, Handler>,
}

/// What an authorization code (and the tokens issued from it) stand for.
#[derive(Debug)]
struct GrantInfo {
    /// Ties the tokens of one login together, so a replayed code or a revoked refresh token
    /// revokes them all.
    id: u64,
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    code_challenge: Option<String>,
    scope: String,
}

/// An access token the fake issued.
struct Access {
    grant: Arc<GrantInfo>,
    expires_at: Instant,
}

/// The login flow's settings and state.
struct Login {
    clients: HashMap<String, String>,
    signing_key: SigningKey,
    authorize_error: Option<String>,
    expires_in: u64,
    issue_refresh: bool,
    rotate_refresh: bool,
    id_token_fault: IdTokenFault,
    azp: Option<String>,
    id_token_changes: Value,
    user: Value,
    userinfo_changes: Value,
    next_grant: u64,
    codes: HashMap<String, Arc<GrantInfo>>,
    /// Codes already exchanged, with the grant they were for.
    used_codes: HashMap<String, u64>,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Arc<GrantInfo>>,
    authorizations: Vec<Params>,
    token_calls: Vec<TokenCall>,
    revocations: Vec<Revocation>,
    end_sessions: Vec<Params>,
    refreshes: usize,
}

impl Login {
    fn new(signing_key: SigningKey) -> Login {
        Login {
            clients: HashMap::from([(CLIENT_ID.to_string(), CLIENT_SECRET.to_string())]),
            signing_key,
            authorize_error: None,
            expires_in: DEFAULT_EXPIRES_IN,
            issue_refresh: true,
            rotate_refresh: false,
            id_token_fault: IdTokenFault::None,
            azp: None,
            id_token_changes: json!({}),
            user: default_user(),
            userinfo_changes: json!({}),
            next_grant: 0,
            codes: HashMap::new(),
            used_codes: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            authorizations: Vec::new(),
            token_calls: Vec::new(),
            revocations: Vec::new(),
            end_sessions: Vec::new(),
            refreshes: 0,
        }
    }

    /// Every token of grant `id` stops working.
    fn revoke_grant(&mut self, id: u64) {
        self.access.retain(|_, a| a.grant.id != id);
        self.refresh.retain(|_, g| g.id != id);
    }
}

/// The user every login signs in as, unless [`FakeIdp::set_user`] says otherwise.
pub fn default_user() -> Value {
    json!({
        "sub": "alice",
        "name": "Alice Example",
        "preferred_username": "alice",
        "email": "alice@example.com",
        "email_verified": true,
    })
}

struct Shared {
    port: u16,
    controls: Mutex<Controls>,
    login: Mutex<Login>,
    log: Mutex<Vec<IdpRequest>>,
    hits: Mutex<HashMap<String, usize>>,
    /// Body bytes written by the streaming faults.
    streamed: AtomicU64,
    conns: Conns,
    /// Bumped by go_down/drop: connections and acceptors of older generations stop.
    generation: AtomicUsize,
    down: AtomicBool,
    stop: AtomicBool,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

/// The fake identity provider. Stops (and resets its connections) on drop.
pub struct FakeIdp {
    pub port: u16,
    shared: Arc<Shared>,
}

impl FakeIdp {
    /// Starts on a free port with an empty key set.
    pub fn start() -> FakeIdp {
        FakeIdp::start_with_jwks(json!({"keys": []}))
    }

    /// Starts on a free port serving `jwks` (a `{"keys": [...]}` document). Id tokens are
    /// signed with RSA key 1 ([`SigningKey::rsa1`]), which `jwks` may or may not hold.
    pub fn start_with_jwks(jwks: Value) -> FakeIdp {
        FakeIdp::start_inner(jwks, SigningKey::rsa1())
    }

    /// Starts on a free port serving a key set of `key` alone, and signing id tokens with it:
    /// ready for a login.
    pub fn start_with_key(key: SigningKey) -> FakeIdp {
        FakeIdp::start_inner(super::jwt::jwks(&[&key]), key)
    }

    fn start_inner(jwks: Value, signing_key: SigningKey) -> FakeIdp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake IdP");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            port,
            controls: Mutex::new(Controls {
                jwks,
                jwks_max_age: None,
                discovery_overrides: serde_json::Map::new(),
                all: Behaviour::default(),
                per_path: HashMap::new(),
                handlers: HashMap::new(),
            }),
            login: Mutex::new(Login::new(signing_key)),
            log: Mutex::new(Vec::new()),
            hits: Mutex::new(HashMap::new()),
            streamed: AtomicU64::new(0),
            conns: Conns::new(),
            generation: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            acceptor: Mutex::new(None),
        });
        spawn_acceptor(&shared, listener);
        FakeIdp { port, shared }
    }

    /// `http://127.0.0.1:PORT`, also the `issuer`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The issuer the discovery document announces (the base URL unless overridden).
    pub fn issuer(&self) -> String {
        self.discovery_document()["issuer"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn discovery_url(&self) -> String {
        format!("{}{DISCOVERY_PATH}", self.base_url())
    }

    pub fn jwks_url(&self) -> String {
        format!("{}{JWKS_PATH}", self.base_url())
    }

    pub fn introspection_url(&self) -> String {
        format!("{}{INTROSPECTION_PATH}", self.base_url())
    }

    pub fn authorize_url(&self) -> String {
        format!("{}{AUTHORIZE_PATH}", self.base_url())
    }

    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.base_url())
    }

    pub fn userinfo_url(&self) -> String {
        format!("{}{USERINFO_PATH}", self.base_url())
    }

    pub fn end_session_url(&self) -> String {
        format!("{}{END_SESSION_PATH}", self.base_url())
    }

    pub fn revocation_url(&self) -> String {
        format!("{}{REVOCATION_PATH}", self.base_url())
    }

    /// The discovery document as currently served.
    pub fn discovery_document(&self) -> Value {
        discovery_document(&self.shared)
    }

    // --- controls ------------------------------------------------------------------------

    /// Replaces the key set served at `/jwks` (key rotation).
    pub fn set_jwks(&self, jwks: Value) {
        self.shared.controls.lock().unwrap().jwks = jwks;
    }

    /// `Cache-Control: max-age=N` on `/jwks` answers (`None`: no such header).
    pub fn set_jwks_max_age(&self, max_age: Option<u64>) {
        self.shared.controls.lock().unwrap().jwks_max_age = max_age;
    }

    /// Sets (or with `Value::Null` removes) a field of the discovery document.
    pub fn set_discovery_field(&self, key: &str, value: Value) {
        self.shared
            .controls
            .lock()
            .unwrap()
            .discovery_overrides
            .insert(key.to_string(), value);
    }

    /// Answers `path` (without query) with `handler`, replacing the built-in answer.
    pub fn on(
        &self,
        path: &str,
        handler: impl Fn(&IdpRequest) -> IdpResponse + Send + Sync + 'static,
    ) {
        self.shared
            .controls
            .lock()
            .unwrap()
            .handlers
            .insert(path.to_string(), Arc::new(handler));
    }

    // --- login flow controls --------------------------------------------------------------

    /// Registers another client (or changes a client's secret).
    pub fn add_client(&self, client_id: &str, secret: &str) {
        self.login()
            .clients
            .insert(client_id.to_string(), secret.to_string());
    }

    /// The key id tokens are signed with from now on (the JWKS is the test's to match:
    /// [`set_jwks`](Self::set_jwks)).
    pub fn set_signing_key(&self, key: SigningKey) {
        self.login().signing_key = key;
    }

    /// The signing key and a key set of it alone (key rotation in one step).
    pub fn rotate_signing_key(&self, key: SigningKey) {
        self.set_jwks(super::jwt::jwks(&[&key]));
        self.set_signing_key(key);
    }

    /// `/authorize` answers `error=<code>` (e.g. `access_denied`) instead of a code; `None`
    /// restores codes.
    pub fn set_authorize_error(&self, error: Option<&str>) {
        self.login().authorize_error = error.map(str::to_string);
    }

    /// `expires_in` of issued access tokens (also how long userinfo honours them).
    pub fn set_expires_in(&self, seconds: u64) {
        self.login().expires_in = seconds;
    }

    /// Whether token answers carry a refresh token (on by default).
    pub fn set_refresh_tokens(&self, issue: bool) {
        self.login().issue_refresh = issue;
    }

    /// Whether a refresh answers a new refresh token and retires the old one (off by default:
    /// the old one keeps working and none is sent).
    pub fn set_rotate_refresh_tokens(&self, rotate: bool) {
        self.login().rotate_refresh = rotate;
    }

    /// How id tokens are spoiled from now on ([`IdTokenFault::None`]: valid ones).
    pub fn set_id_token_fault(&self, fault: IdTokenFault) {
        self.login().id_token_fault = fault;
    }

    /// `azp` in id tokens (`None`: no `azp`, the default).
    pub fn set_azp(&self, azp: Option<&str>) {
        self.login().azp = azp.map(str::to_string);
    }

    /// Claims set in (or, with `null`, removed from) every id token issued from now on, after
    /// the standard ones and the fault.
    pub fn set_id_token_claims(&self, changes: Value) {
        self.login().id_token_changes = changes;
    }

    /// The user logins sign in as: userinfo's answer and, by its `sub`, the id token's.
    pub fn set_user(&self, user: Value) {
        self.login().user = user;
    }

    /// Claims set in (or, with `null`, removed from) userinfo answers only (e.g. another
    /// `sub` than the id token's).
    pub fn set_userinfo_claims(&self, changes: Value) {
        self.login().userinfo_changes = changes;
    }

    /// Every access and refresh token issued so far stops working (as after an IdP-side
    /// logout or restart).
    pub fn forget_tokens(&self) {
        let mut l = self.login();
        l.access.clear();
        l.refresh.clear();
    }

    fn login(&self) -> std::sync::MutexGuard<'_, Login> {
        self.shared.login.lock().unwrap()
    }

    /// The fault for every path without a per-path one.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.controls.lock().unwrap().all.fault = fault;
    }

    /// The delay before answering on every path without a per-path one.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.controls.lock().unwrap().all.delay = delay;
    }

    /// Fault and delay for one path (overrides the all-paths setting for it).
    pub fn set_path_behaviour(&self, path: &str, fault: Fault, delay: Duration) {
        self.shared
            .controls
            .lock()
            .unwrap()
            .per_path
            .insert(path.to_string(), Behaviour { fault, delay });
    }

    /// Clears every fault and delay (the key set, handlers and overrides stay).
    pub fn heal(&self) {
        let mut c = self.shared.controls.lock().unwrap();
        c.all = Behaviour::default();
        c.per_path.clear();
    }

    /// Closes the listener (new connections are refused) and resets the open connections.
    /// Returns when the listening socket is closed.
    pub fn go_down(&self) {
        stop_serving(&self.shared);
        self.shared.down.store(true, Ordering::SeqCst);
    }

    /// Listens again on the same port after [`go_down`](Self::go_down).
    pub fn come_up(&self) {
        if !self.shared.down.load(Ordering::SeqCst) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("fake IdP cannot listen again on {}: {e}", self.port),
            }
        };
        self.shared.down.store(false, Ordering::SeqCst);
        spawn_acceptor(&self.shared, listener);
    }

    pub fn is_down(&self) -> bool {
        self.shared.down.load(Ordering::SeqCst)
    }

    // --- observations --------------------------------------------------------------------

    /// Requests received for `path` (without query), however they were answered.
    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.hits(DISCOVERY_PATH)
    }

    pub fn jwks_fetches(&self) -> usize {
        self.hits(JWKS_PATH)
    }

    pub fn introspections(&self) -> usize {
        self.hits(INTROSPECTION_PATH)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<IdpRequest> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The requests received for `path`.
    pub fn requests_to(&self, path: &str) -> Vec<IdpRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// The parameters of every `/authorize` request, in order.
    pub fn authorizations(&self) -> Vec<Params> {
        self.login().authorizations.clone()
    }

    /// The parameters of the last `/authorize` request.
    pub fn last_authorize(&self) -> Option<Params> {
        self.login().authorizations.last().cloned()
    }

    /// Every token endpoint request the built-in endpoint answered, in order.
    pub fn token_calls(&self) -> Vec<TokenCall> {
        self.login().token_calls.clone()
    }

    /// The last token endpoint request the built-in endpoint answered.
    pub fn last_token_call(&self) -> Option<TokenCall> {
        self.login().token_calls.last().cloned()
    }

    /// Token requests with `grant_type=refresh_token`, answered or refused.
    pub fn refreshes(&self) -> usize {
        self.login().refreshes
    }

    /// Requests to `/token` however answered (faults included).
    pub fn token_hits(&self) -> usize {
        self.hits(TOKEN_PATH)
    }

    /// Requests to `/userinfo` however answered.
    pub fn userinfo_hits(&self) -> usize {
        self.hits(USERINFO_PATH)
    }

    /// Requests to `/authorize` however answered.
    pub fn authorize_hits(&self) -> usize {
        self.hits(AUTHORIZE_PATH)
    }

    /// Every revocation received, in order.
    pub fn revocations(&self) -> Vec<Revocation> {
        self.login().revocations.clone()
    }

    /// The tokens revoked so far (every revocation request's `token`).
    pub fn revoked(&self) -> Vec<String> {
        self.login()
            .revocations
            .iter()
            .map(|r| r.token.clone())
            .collect()
    }

    /// The query of every `/end_session` request, in order.
    pub fn end_sessions(&self) -> Vec<Params> {
        self.login().end_sessions.clone()
    }

    /// Whether `token` is an access token the fake issued that userinfo honours now.
    pub fn access_token_is_live(&self, token: &str) -> bool {
        self.login()
            .access
            .get(token)
            .is_some_and(|a| a.expires_at > Instant::now())
    }

    /// Performs the `/authorize` step a browser would: GETs `authorize_url` (which must be on
    /// this IdP, e.g. the proxy's redirect `Location`) and returns where the 302 points.
    /// Panics on any other answer.
    pub fn login_code(&self, authorize_url: &str) -> Authorized {
        let base = self.base_url();
        let target = authorize_url
            .strip_prefix(&base)
            .unwrap_or_else(|| panic!("{authorize_url} is not on the fake IdP ({base})"));
        let r = Client::connect(self.port).request(
            "GET",
            target,
            &[("Host", &format!("127.0.0.1:{}", self.port))],
            b"",
        );
        assert_eq!(
            r.status,
            302,
            "/authorize answered {} {:?}",
            r.status,
            r.text()
        );
        let location = r
            .header("location")
            .expect("a 302 from /authorize has a Location")
            .to_string();
        let query = location.split_once('?').map_or("", |(_, q)| q);
        Authorized {
            params: Params::parse(query),
            location,
        }
    }

    /// Connections accepted so far.
    pub fn conns(&self) -> usize {
        self.shared.conns.accepted()
    }

    /// Body bytes the streaming faults ([`Fault::Endless`], [`Fault::Announced`]) managed to
    /// write, on every path together: what a client read, plus what socket buffers took.
    pub fn streamed(&self) -> u64 {
        self.shared.streamed.load(Ordering::SeqCst)
    }
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        stop_serving(&self.shared);
    }
}

fn discovery_document(shared: &Shared) -> Value {
    let base = format!("http://127.0.0.1:{}", shared.port);
    let mut doc = json!({
        "issuer": base,
        "jwks_uri": format!("{base}{JWKS_PATH}"),
        "authorization_endpoint": format!("{base}{AUTHORIZE_PATH}"),
        "token_endpoint": format!("{base}{TOKEN_PATH}"),
        "introspection_endpoint": format!("{base}{INTROSPECTION_PATH}"),
        "userinfo_endpoint": format!("{base}{USERINFO_PATH}"),
        "end_session_endpoint": format!("{base}{END_SESSION_PATH}"),
        "revocation_endpoint": format!("{base}{REVOCATION_PATH}"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "ES384", "EdDSA"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "authorization_response_iss_parameter_supported": true,
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    });
    let c = shared.controls.lock().unwrap();
    let obj = doc.as_object_mut().unwrap();
    for (k, v) in &c.discovery_overrides {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    doc
}

/// Ends the current generation: the acceptor drops its listener, open connections are reset.
fn stop_serving(shared: &Arc<Shared>) {
    shared.generation.fetch_add(1, Ordering::SeqCst);
    let handle = shared.acceptor.lock().unwrap().take();
    if let Some(h) = handle {
        // Wake the blocking accept so the thread sees the new generation and drops the listener.
        wake_acceptor(shared.port, Duration::from_millis(500));
        let _ = h.join();
    }
    shared.conns.close_all();
}

fn spawn_acceptor(shared: &Arc<Shared>, listener: TcpListener) {
    let generation = shared.generation.load(Ordering::SeqCst);
    let st = shared.clone();
    let handle = thread::spawn(move || {
        for conn in listener.incoming() {
            if st.stop.load(Ordering::SeqCst) || st.generation.load(Ordering::SeqCst) != generation
            {
                break;
            }
            let Ok(stream) = conn else { continue };
            let n = st.conns.add(&stream);
            let st2 = st.clone();
            thread::spawn(move || {
                let _ = serve(stream, n, generation, &st2);
                st2.conns.close(n);
            });
        }
        // The listener is dropped here: new connections are refused from now on.
    });
    *shared.acceptor.lock().unwrap() = Some(handle);
}

fn live(st: &Shared, generation: usize) -> bool {
    !st.stop.load(Ordering::SeqCst) && st.generation.load(Ordering::SeqCst) == generation
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        405 => "Method Not Allowed",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn read_request(r: &mut BufReader<TcpStream>, conn: usize) -> io::Result<Option<IdpRequest>> {
    let mut line = String::new();
    // Skip empty lines between requests.
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut it = line.split_whitespace();
    let method = it.next().unwrap_or("").to_string();
    let target = it.next().unwrap_or("").to_string();
    let version = it.next().unwrap_or("HTTP/1.1").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |name: &str| super::header_value(&headers, name).map(str::to_string);
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
            if size == 0 {
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = String::new();
            r.read_line(&mut crlf)?;
        }
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "content-length"))?;
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(Some(IdpRequest {
        method,
        target,
        path,
        version,
        headers,
        body,
        conn,
    }))
}

fn serve(stream: TcpStream, conn: usize, generation: usize, st: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let Some(req) = read_request(&mut r, conn)? else {
            return Ok(());
        };
        if !live(st, generation) {
            return Ok(());
        }
        *st.hits.lock().unwrap().entry(req.path.clone()).or_insert(0) += 1;
        st.log.lock().unwrap().push(req.clone());

        let (behaviour, handler, jwks, max_age) = {
            let c = st.controls.lock().unwrap();
            (
                c.per_path.get(&req.path).copied().unwrap_or(c.all),
                c.handlers.get(&req.path).cloned(),
                c.jwks.clone(),
                c.jwks_max_age,
            )
        };
        // Delay in small steps so a stopped IdP does not answer late.
        let until = Instant::now() + behaviour.delay;
        while Instant::now() < until {
            if !live(st, generation) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
        }
        if !live(st, generation) {
            return Ok(());
        }
        let conn_hdr = req.header("connection").unwrap_or("").to_ascii_lowercase();
        let close = conn_hdr.contains("close")
            || (req.version == "HTTP/1.0" && !conn_hdr.contains("keep-alive"));
        let resp = match behaviour.fault {
            Fault::Drop => return Ok(()),
            Fault::Endless => return stream_endless(&mut w, st, generation),
            Fault::Announced(n) => return trickle_announced(&mut w, n, st, generation),
            Fault::NotHttp => {
                w.write_all(b"SSH-2.0-not-an-http-server\r\n\x00\x01\x02garbage\r\n\r\n")?;
                w.flush()?;
                return Ok(());
            }
            Fault::Status(code) => IdpResponse::json(
                code,
                &json!({"error": "server_error", "error_description": "fake IdP fault"}),
            ),
            Fault::NotJson => IdpResponse {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: b"<html><body>Gateway says hello {{{ this is not JSON".to_vec(),
            },
            Fault::None => match handler {
                Some(h) => h(&req),
                None => match (req.method.as_str(), req.path.as_str()) {
                    ("GET", DISCOVERY_PATH) => IdpResponse::json(200, &discovery_document(st)),
                    ("GET", JWKS_PATH) => {
                        let r = IdpResponse::json(200, &jwks);
                        match max_age {
                            Some(n) => r.with_header("Cache-Control", &format!("max-age={n}")),
                            None => r,
                        }
                    }
                    (_, AUTHORIZE_PATH) => authorize(st, &req),
                    (_, TOKEN_PATH) => token(st, &req),
                    (_, USERINFO_PATH) => userinfo(st, &req),
                    (_, REVOCATION_PATH) => revoke(st, &req),
                    (_, END_SESSION_PATH) => end_session(st, &req),
                    _ => IdpResponse::json(404, &json!({"error": "not_found"})),
                },
            },
        };
        let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
        for (n, v) in &resp.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if req.method != "HEAD" {
            out.extend_from_slice(&resp.body);
        }
        w.write_all(&out)?;
        w.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// [`Fault::Endless`]: a chunked body that goes on until the client leaves or the limit.
fn stream_endless(w: &mut TcpStream, st: &Shared, generation: usize) -> io::Result<()> {
    let prefix = br#"{"active":true,"keys":[],"pad":""#;
    let mut out =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    out.extend_from_slice(format!("{:x}\r\n", prefix.len()).as_bytes());
    out.extend_from_slice(prefix);
    out.extend_from_slice(b"\r\n");
    w.write_all(&out)?;
    let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
    chunk.extend(std::iter::repeat_n(b'x', 64 * 1024));
    chunk.extend_from_slice(b"\r\n");
    let mut sent = 0u64;
    while sent < ENDLESS_LIMIT && live(st, generation) {
        // A client that stopped reading closed the connection: the write fails and this ends.
        w.write_all(&chunk)?;
        sent += 64 * 1024;
        st.streamed.fetch_add(64 * 1024, Ordering::SeqCst);
    }
    Ok(())
}

/// [`Fault::Announced`]: a huge `Content-Length`, then a slow trickle of the body.
fn trickle_announced(w: &mut TcpStream, n: u64, st: &Shared, generation: usize) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n{{\"pad\":\""
    );
    w.write_all(head.as_bytes())?;
    let piece = [b'x'; 1024];
    let mut sent = 8u64;
    while sent + 1024 <= n && live(st, generation) {
        w.write_all(&piece)?;
        sent += 1024;
        st.streamed.fetch_add(1024, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

// --- the login flow's endpoints ---------------------------------------------------------------

/// The issuer the discovery document names now.
fn issuer(st: &Shared) -> String {
    discovery_document(st)["issuer"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// An OAuth error answer (RFC 6749 §5.2).
fn oauth_error(status: u16, error: &str, description: &str) -> IdpResponse {
    IdpResponse::json(
        status,
        &json!({"error": error, "error_description": description}),
    )
    .with_header("Cache-Control", "no-store")
}

/// 32 random bytes, base64url: codes and opaque tokens, like oidc-provider's.
fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system randomness");
    b64url(&b)
}

/// The PKCE S256 challenge of `verifier` (RFC 7636 §4.2).
pub fn s256(verifier: &str) -> String {
    b64url(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref())
}

/// Percent-encoding of a query value (RFC 3986 unreserved characters kept).
pub fn url_encode(s: &str) -> String {
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

/// `base` with `params` added to its query.
fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let mut out = base.to_string();
    let mut sep = if base.contains('?') { '&' } else { '?' };
    for (k, v) in params {
        out.push(sep);
        out.push_str(&format!("{k}={}", url_encode(v)));
        sep = '&';
    }
    out
}

/// A 302 to `location`.
fn found(location: &str) -> IdpResponse {
    IdpResponse::text(302, "").with_header("Location", location)
}

/// How the request authenticated its client, and the (id, secret) it presented.
fn client_auth(req: &IdpRequest, form: &Params) -> (ClientAuthUsed, Option<(String, String)>) {
    let basic = req.basic_auth();
    let posted = form.get("client_secret").map(|secret| {
        (
            form.get("client_id").unwrap_or("").to_string(),
            secret.to_string(),
        )
    });
    match (basic, posted) {
        (Some(_), Some(_)) => (ClientAuthUsed::Both, None),
        (Some(b), None) => (ClientAuthUsed::Basic, Some(b)),
        (None, Some(p)) => (ClientAuthUsed::Post, Some(p)),
        (None, None) => (ClientAuthUsed::None, None),
    }
}

/// The client id the credentials authenticate, or the refusal.
fn check_client(
    l: &Login,
    auth: ClientAuthUsed,
    creds: &Option<(String, String)>,
) -> Result<String, IdpResponse> {
    let refused = |why: &str| {
        let r = oauth_error(401, "invalid_client", why);
        if auth == ClientAuthUsed::Basic {
            r.with_header("WWW-Authenticate", "Basic realm=\"fake-idp\"")
        } else {
            r
        }
    };
    match (auth, creds) {
        (ClientAuthUsed::Both, _) => Err(oauth_error(
            400,
            "invalid_request",
            "client authentication must only be provided using one mechanism",
        )),
        (_, None) => Err(refused("no client authentication mechanism provided")),
        (_, Some((id, secret))) => match l.clients.get(id) {
            Some(s) if s == secret => Ok(id.clone()),
            Some(_) => Err(refused("invalid secret provided")),
            None => Err(refused("client not found")),
        },
    }
}

/// A 302 back to the relying party: `redirect_uri` with `params`, `state` and `iss`.
fn back_to(
    redirect_uri: &str,
    state: Option<&str>,
    iss: &str,
    params: &[(&str, &str)],
) -> IdpResponse {
    let mut all = params.to_vec();
    if let Some(s) = state {
        all.push(("state", s));
    }
    all.push(("iss", iss));
    found(&with_query(redirect_uri, &all))
}

/// `GET /authorize`: a code for the redirect URI, at once (no login page).
fn authorize(st: &Shared, req: &IdpRequest) -> IdpResponse {
    if req.method != "GET" {
        return oauth_error(405, "invalid_request", "use GET");
    }
    let q = Params::parse(req.query());
    let iss = issuer(st);
    let mut l = st.login.lock().unwrap();
    l.authorizations.push(q.clone());
    // Until the client and its redirect URI are known, errors cannot be sent back to it.
    let Some(client_id) = q.get("client_id").filter(|c| l.clients.contains_key(*c)) else {
        return oauth_error(400, "invalid_client", "unknown client_id");
    };
    let Some(redirect_uri) = q
        .get("redirect_uri")
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
    else {
        return oauth_error(
            400,
            "invalid_redirect_uri",
            "redirect_uri missing or not absolute",
        );
    };
    let state = q.get("state");
    let back = |params: &[(&str, &str)]| back_to(redirect_uri, state, &iss, params);
    if let Some(e) = &l.authorize_error {
        return back(&[
            ("error", e.as_str()),
            ("error_description", "the fake IdP refused this login"),
        ]);
    }
    if q.get("response_type") != Some("code") {
        return back(&[("error", "unsupported_response_type")]);
    }
    let scope = q.get("scope").unwrap_or("");
    if !scope.split(' ').any(|s| s == "openid") {
        return back(&[
            ("error", "invalid_request"),
            ("error_description", "openid scope must be requested"),
        ]);
    }
    let challenge = q.get("code_challenge");
    match (challenge, q.get("code_challenge_method")) {
        (None, None) => {}
        (Some(c), Some("S256"))
            if (43..=128).contains(&c.len())
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) => {}
        (Some(_), Some("S256")) => {
            return back(&[
                ("error", "invalid_request"),
                ("error_description", "code_challenge is malformed"),
            ])
        }
        _ => {
            return back(&[
                ("error", "invalid_request"),
                (
                    "error_description",
                    "only S256 code_challenge_method is supported",
                ),
            ])
        }
    }
    l.next_grant += 1;
    let grant = GrantInfo {
        id: l.next_grant,
        client_id: client_id.to_string(),
        redirect_uri: redirect_uri.to_string(),
        nonce: q.get("nonce").map(str::to_string),
        code_challenge: challenge.map(str::to_string),
        scope: scope.to_string(),
    };
    let code = random_token();
    l.codes.insert(code.clone(), Arc::new(grant));
    back(&[("code", &code)])
}

/// An id token for `grant`, spoiled as the current [`IdTokenFault`] says.
fn id_token(l: &Login, iss: &str, grant: &GrantInfo) -> String {
    let t = now();
    let mut c = json!({
        "iss": iss,
        "sub": l.user["sub"],
        "aud": grant.client_id,
        "iat": t,
        "exp": t + ID_TOKEN_LIFETIME,
        "auth_time": t,
    });
    if let Some(n) = &grant.nonce {
        c["nonce"] = json!(n);
    }
    if let Some(azp) = &l.azp {
        c["azp"] = json!(azp);
    }
    let mut key = l.signing_key.clone();
    match l.id_token_fault {
        IdTokenFault::None | IdTokenFault::BadSignature => {}
        IdTokenFault::UnknownKey => key = SigningKey::rsa2().with_kid("not-in-jwks"),
        IdTokenFault::WrongNonce => c["nonce"] = json!("not-the-nonce-of-this-login"),
        IdTokenFault::MissingNonce => c = with(&c, json!({"nonce": null})),
        IdTokenFault::WrongAudience => c["aud"] = json!("another-client"),
        IdTokenFault::WrongIssuer => c["iss"] = json!("http://evil.example"),
        IdTokenFault::Expired => {
            // Well past any clock-skew allowance.
            c["iat"] = json!(t - 2 * ID_TOKEN_LIFETIME);
            c["exp"] = json!(t - ID_TOKEN_LIFETIME);
            c["auth_time"] = json!(t - 2 * ID_TOKEN_LIFETIME);
        }
    }
    let c = with(&c, l.id_token_changes.clone());
    let token = key.mint(&c);
    if l.id_token_fault == IdTokenFault::BadSignature {
        flip_signature_bit(&token)
    } else {
        token
    }
}

/// Tokens for `grant`: an access token always, an id token, and a refresh token when
/// `refresh` (the one to answer, if any).
fn issue(l: &mut Login, iss: &str, grant: &Arc<GrantInfo>, refresh: Option<String>) -> Value {
    let access_token = random_token();
    l.access.insert(
        access_token.clone(),
        Access {
            grant: grant.clone(),
            expires_at: Instant::now() + Duration::from_secs(l.expires_in),
        },
    );
    let mut answer = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": l.expires_in,
        "id_token": id_token(l, iss, grant),
        "scope": grant.scope,
    });
    if let Some(rt) = refresh {
        l.refresh.insert(rt.clone(), grant.clone());
        answer["refresh_token"] = json!(rt);
    }
    answer
}

/// The token endpoint's answer to a client already authenticated as `client_id`.
fn grant_tokens(
    l: &mut Login,
    iss: &str,
    client_id: &str,
    form: &Params,
) -> Result<Value, IdpResponse> {
    let invalid_grant = |why: &str| Err(oauth_error(400, "invalid_grant", why));
    match form.get("grant_type") {
        Some("authorization_code") => {
            let Some(code) = form.get("code") else {
                return Err(oauth_error(
                    400,
                    "invalid_request",
                    "missing required parameter 'code'",
                ));
            };
            if let Some(&id) = l.used_codes.get(code) {
                // RFC 6749 §4.1.2: a replayed code revokes what it gave.
                l.revoke_grant(id);
                return invalid_grant("authorization code already used");
            }
            let Some(grant) = l.codes.get(code).cloned() else {
                return invalid_grant("authorization code not found");
            };
            if grant.client_id != client_id {
                return invalid_grant("authorization code client mismatch");
            }
            if form.get("redirect_uri") != Some(grant.redirect_uri.as_str()) {
                return invalid_grant("authorization code redirect_uri mismatch");
            }
            match (&grant.code_challenge, form.get("code_verifier")) {
                (None, None) => {}
                (Some(c), Some(v)) if s256(v) == *c => {}
                (Some(_), Some(_)) => return invalid_grant("PKCE verification failed"),
                (Some(_), None) => {
                    return invalid_grant("PKCE verification failed (no code_verifier)")
                }
                (None, Some(_)) => {
                    return invalid_grant("code_verifier sent for a code without code_challenge")
                }
            }
            // Used up only when exchanged, so a refused attempt does not burn it.
            l.codes.remove(code);
            l.used_codes.insert(code.to_string(), grant.id);
            let refresh = l.issue_refresh.then(random_token);
            Ok(issue(l, iss, &grant, refresh))
        }
        Some("refresh_token") => {
            let Some(rt) = form.get("refresh_token") else {
                return Err(oauth_error(
                    400,
                    "invalid_request",
                    "missing required parameter 'refresh_token'",
                ));
            };
            let Some(grant) = l.refresh.get(rt).cloned() else {
                return invalid_grant("refresh token not found");
            };
            if grant.client_id != client_id {
                return invalid_grant("refresh token client mismatch");
            }
            let refresh = if l.rotate_refresh {
                l.refresh.remove(rt);
                Some(random_token())
            } else {
                None
            };
            Ok(issue(l, iss, &grant, refresh))
        }
        _ => Err(oauth_error(
            400,
            "unsupported_grant_type",
            "unsupported grant_type requested",
        )),
    }
}

/// `POST /token`: code exchange and refresh.
fn token(st: &Shared, req: &IdpRequest) -> IdpResponse {
    let form = Params(req.form());
    let iss = issuer(st);
    let mut l = st.login.lock().unwrap();
    let (auth, creds) = client_auth(req, &form);
    if form.get("grant_type") == Some("refresh_token") {
        l.refreshes += 1;
    }
    let result = if req.method != "POST" {
        Err(oauth_error(405, "invalid_request", "use POST"))
    } else {
        check_client(&l, auth, &creds)
            .and_then(|client_id| grant_tokens(&mut l, &iss, &client_id, &form))
    };
    let resp = match &result {
        Ok(answer) => IdpResponse::json(200, answer)
            .with_header("Cache-Control", "no-store")
            .with_header("Pragma", "no-cache"),
        Err(r) => r.clone(),
    };
    let error = result.as_ref().err().and_then(|r| {
        serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
    });
    l.token_calls.push(TokenCall {
        auth,
        client_id: creds.map(|(id, _)| id),
        form,
        status: resp.status,
        error,
        answer: result.ok(),
    });
    resp
}

/// `GET /userinfo` with a bearer token the fake issued.
fn userinfo(st: &Shared, req: &IdpRequest) -> IdpResponse {
    let token = req
        .header("authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let l = st.login.lock().unwrap();
    let live = token
        .as_ref()
        .and_then(|t| l.access.get(t))
        .is_some_and(|a| a.expires_at > Instant::now());
    if !live {
        let challenge = if token.is_some() {
            "Bearer realm=\"fake-idp\", error=\"invalid_token\", error_description=\"invalid token provided\""
        } else {
            "Bearer realm=\"fake-idp\""
        };
        return oauth_error(401, "invalid_token", "invalid token provided")
            .with_header("WWW-Authenticate", challenge);
    }
    IdpResponse::json(200, &with(&l.user, l.userinfo_changes.clone()))
}

/// `POST /revoke` (RFC 7009).
fn revoke(st: &Shared, req: &IdpRequest) -> IdpResponse {
    if req.method != "POST" {
        return oauth_error(405, "invalid_request", "use POST");
    }
    let form = Params(req.form());
    let mut l = st.login.lock().unwrap();
    let (auth, creds) = client_auth(req, &form);
    if let Err(r) = check_client(&l, auth, &creds) {
        return r;
    }
    let Some(token) = form.get("token") else {
        return oauth_error(400, "invalid_request", "missing required parameter 'token'");
    };
    let known = if let Some(grant) = l.refresh.get(token).cloned() {
        // As oidc-provider: revoking a refresh token revokes the whole grant.
        l.revoke_grant(grant.id);
        true
    } else {
        l.access.remove(token).is_some()
    };
    l.revocations.push(Revocation {
        token: token.to_string(),
        hint: form.get("token_type_hint").map(str::to_string),
        auth,
        known,
    });
    IdpResponse::text(200, "")
}

/// `GET /end_session`: recorded; 302 to `post_logout_redirect_uri` when given.
fn end_session(st: &Shared, req: &IdpRequest) -> IdpResponse {
    let q = if req.method == "POST" {
        Params(req.form())
    } else {
        Params::parse(req.query())
    };
    st.login.lock().unwrap().end_sessions.push(q.clone());
    match q.get("post_logout_redirect_uri") {
        Some(uri) => {
            let state: Vec<(&str, &str)> =
                q.get("state").map(|s| ("state", s)).into_iter().collect();
            found(&with_query(uri, &state))
        }
        None => IdpResponse::text(200, "Logged out"),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=x%20y` → [("a","1"), ("b","x y")]
pub fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}
