//! The identity-provider client: one background thread with a tokio runtime and reqwest, the only
//! place that talks to IdPs. It fetches discovery documents and JWKS, refreshes them, and
//! publishes each provider's state as an immutable snapshot every core reads through `ArcSwap`.
//! Workers reach it through a channel and await answers without blocking their event loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::jose::keys::{parse_jwks, KeySet};
use crate::metrics::{IdpDuration, IDP_BOUNDS_US};

mod oauth;

pub use oauth::{ClientAuth, Grant, OAuthError, TokenAnswer, TokenRequest};

/// Unknown-kid refreshes of one provider happen at most this often, whatever the traffic.
pub const KID_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest wait between scheduled refreshes, whatever Cache-Control says.
const MIN_REFRESH: Duration = Duration::from_secs(5);
/// Longest retry wait while the IdP is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Largest IdP answer read; the rest is never read, so a hostile IdP cannot make this thread
/// hold more than this per call.
const MAX_BODY: usize = 1 << 20;
/// `MAX_BODY` in words, for failure descriptions.
const MAX_BODY_TEXT: &str = "1 MiB";

/// Which IdP endpoint a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The discovery document.
    Discovery,
    /// The key set.
    Jwks,
    /// Token introspection (RFC 7662).
    Introspection,
    /// The token endpoint (code exchange and refresh).
    Token,
    /// The userinfo endpoint.
    Userinfo,
    /// Token revocation (RFC 7009).
    Revocation,
}

impl Endpoint {
    /// Every endpoint, in counter order.
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Discovery,
        Endpoint::Jwks,
        Endpoint::Introspection,
        Endpoint::Token,
        Endpoint::Userinfo,
        Endpoint::Revocation,
    ];

    /// The endpoint as a metrics label value.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Discovery => "discovery",
            Endpoint::Jwks => "jwks",
            Endpoint::Introspection => "introspection",
            Endpoint::Token => "token",
            Endpoint::Userinfo => "userinfo",
            Endpoint::Revocation => "revocation",
        }
    }

    /// The endpoint's name in failure descriptions.
    fn name(self) -> &'static str {
        match self {
            Endpoint::Discovery => "discovery",
            Endpoint::Jwks => "JWKS",
            Endpoint::Introspection => "introspection endpoint",
            Endpoint::Token => "token endpoint",
            Endpoint::Userinfo => "userinfo endpoint",
            Endpoint::Revocation => "revocation endpoint",
        }
    }

    /// Its answer's name in failure descriptions.
    fn answer(self) -> &'static str {
        match self {
            Endpoint::Discovery => "discovery answer",
            Endpoint::Jwks => "JWKS answer",
            Endpoint::Introspection => "introspection answer",
            Endpoint::Token => "token answer",
            Endpoint::Userinfo => "userinfo answer",
            Endpoint::Revocation => "revocation answer",
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an IdP call gave no usable answer. The `Display` text is fit for an
/// `error_description`: it names the endpoint and the problem, never a token or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdpError {
    /// No complete answer within `timeout`.
    #[error("{0} timed out")]
    TimedOut(Endpoint),
    /// The connection could not be made.
    #[error("{0} unreachable")]
    Unreachable(Endpoint),
    /// Connected, but what came back was not an HTTP answer (garbage, or a close).
    #[error("{0} closed the connection without a valid HTTP answer")]
    NotHttp(Endpoint),
    /// A status other than 2xx.
    #[error("{0} answered HTTP {1}")]
    Status(Endpoint, u16),
    /// The body ended before its announced end.
    #[error("{} was cut off", .0.answer())]
    CutOff(Endpoint),
    /// The body (announced or as read so far) is over [`MAX_BODY`].
    #[error("{} larger than {MAX_BODY_TEXT}", .0.answer())]
    TooLarge(Endpoint),
    /// A complete answer that is not what the endpoint must answer (the text says how).
    #[error("{1}")]
    Invalid(Endpoint, String),
    /// The endpoint refused the request with an OAuth error (RFC 6749 §5.2, RFC 6750 §3).
    #[error("{0} refused the request: {1}")]
    OAuth(Endpoint, OAuthError),
    /// The request could not be made at all (a malformed URL, or a value no header can carry).
    #[error("{0} request could not be built (malformed URL or header value)")]
    Unsendable(Endpoint),
}

/// Kinds of [`IdpError`], as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// [`IdpError::TimedOut`].
    TimedOut,
    /// [`IdpError::Unreachable`].
    Unreachable,
    /// [`IdpError::NotHttp`].
    NotHttp,
    /// [`IdpError::Status`].
    Status,
    /// [`IdpError::CutOff`].
    CutOff,
    /// [`IdpError::TooLarge`].
    TooLarge,
    /// [`IdpError::Invalid`].
    Invalid,
    /// [`IdpError::OAuth`].
    OAuth,
    /// [`IdpError::Unsendable`].
    Unsendable,
}

impl Failure {
    /// Every kind, in counter order.
    pub const ALL: [Failure; 9] = [
        Failure::TimedOut,
        Failure::Unreachable,
        Failure::NotHttp,
        Failure::Status,
        Failure::CutOff,
        Failure::TooLarge,
        Failure::Invalid,
        Failure::OAuth,
        Failure::Unsendable,
    ];
}

impl Failure {
    /// The kind as a metrics outcome label.
    pub fn label(self) -> &'static str {
        match self {
            Failure::TimedOut => "timed_out",
            Failure::Unreachable => "unreachable",
            Failure::NotHttp => "not_http",
            Failure::Status => "bad_status",
            Failure::CutOff => "cut_off",
            Failure::TooLarge => "too_large",
            Failure::Invalid => "invalid",
            Failure::OAuth => "oauth_error",
            Failure::Unsendable => "unsendable",
        }
    }
}

/// Why a JWKS refresh ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshReason {
    /// The provider's schedule (start, Cache-Control, `jwk_expires_in`, retries).
    Schedule,
    /// A token named a key id not in the set (or the issuer was not known yet).
    UnknownKid,
}

impl RefreshReason {
    /// Every reason, in counter order.
    pub const ALL: [RefreshReason; 2] = [RefreshReason::Schedule, RefreshReason::UnknownKid];

    /// The reason as a metrics label value.
    pub fn label(self) -> &'static str {
        match self {
            RefreshReason::Schedule => "schedule",
            RefreshReason::UnknownKid => "unknown_kid",
        }
    }
}

impl IdpError {
    /// The endpoint and kind of this failure.
    pub fn kind(&self) -> (Endpoint, Failure) {
        match *self {
            IdpError::OAuth(e, _) => (e, Failure::OAuth),
            IdpError::Unsendable(e) => (e, Failure::Unsendable),
            IdpError::TimedOut(e) => (e, Failure::TimedOut),
            IdpError::Unreachable(e) => (e, Failure::Unreachable),
            IdpError::NotHttp(e) => (e, Failure::NotHttp),
            IdpError::Status(e, _) => (e, Failure::Status),
            IdpError::CutOff(e) => (e, Failure::CutOff),
            IdpError::TooLarge(e) => (e, Failure::TooLarge),
            IdpError::Invalid(e, _) => (e, Failure::Invalid),
        }
    }
}

/// IdP calls by endpoint and outcome (success, or failure by kind), their durations, and JWKS
/// refreshes by reason, counted by the IdP thread for whoever reports them (metrics, logs);
/// relaxed atomics, as nothing is ordered by them. The IdP thread is the only writer of the
/// histograms (its runtime runs every call on that one thread).
#[derive(Debug, Default)]
pub struct IdpStats {
    failures: [[AtomicU64; Failure::ALL.len()]; Endpoint::ALL.len()],
    successes: [AtomicU64; Endpoint::ALL.len()],
    /// Call durations per endpoint, in microseconds (bounds: [`IDP_BOUNDS_US`]).
    pub durations: [IdpDuration; Endpoint::ALL.len()],
    refreshes: [AtomicU64; RefreshReason::ALL.len()],
}

impl IdpStats {
    /// Failed calls to `endpoint` of kind `kind` so far.
    pub fn failures(&self, endpoint: Endpoint, kind: Failure) -> u64 {
        self.failures[endpoint as usize][kind as usize].load(Ordering::Relaxed)
    }

    /// Calls to `endpoint` that gave a usable answer so far.
    pub fn successes(&self, endpoint: Endpoint) -> u64 {
        self.successes[endpoint as usize].load(Ordering::Relaxed)
    }

    /// JWKS refreshes run for `reason` so far.
    pub fn refreshes(&self, reason: RefreshReason) -> u64 {
        self.refreshes[reason as usize].load(Ordering::Relaxed)
    }

    fn refreshed(&self, reason: RefreshReason) {
        self.refreshes[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Record how long a call to `endpoint` took (IdP thread only).
    fn took(&self, endpoint: Endpoint, started: Instant) {
        self.durations[endpoint as usize]
            .observe(&IDP_BOUNDS_US, started.elapsed().as_micros() as u64);
    }

    /// Count a usable answer from `endpoint`.
    fn success(&self, endpoint: Endpoint) {
        self.successes[endpoint as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Count `e`, and hand it back.
    fn count(&self, e: IdpError) -> IdpError {
        let (endpoint, kind) = e.kind();
        self.failures[endpoint as usize][kind as usize].fetch_add(1, Ordering::Relaxed);
        e
    }
}

/// The discovery document fields Portcullis uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    /// The issuer identifier tokens must carry.
    pub issuer: String,
    /// JWKS location.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Login endpoint.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// Code exchange endpoint.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// Userinfo endpoint.
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    /// Token introspection endpoint.
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    /// Logout endpoint.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    /// Token revocation endpoint (RFC 7009).
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
}

/// What is known about a provider right now.
#[derive(Debug, Default)]
pub struct ProviderState {
    /// The discovery document, once fetched.
    pub discovery: Option<Arc<Discovery>>,
    /// The JWKS keys, once fetched (the last good set while the IdP fails).
    pub keys: Arc<KeySet>,
    /// Why the state is incomplete or stale, in words fit for an `error_description`.
    pub problem: Option<String>,
}

#[derive(Default)]
struct KidRefresh {
    waiters: Option<Vec<oneshot::Sender<()>>>,
    last: Option<Instant>,
}

/// One identity provider (one discovery URL), shared by every route and core that uses it.
pub struct Provider {
    /// Discovery URL.
    pub discovery_url: String,
    /// Verify the IdP's certificate.
    pub ssl_verify: bool,
    timeout: Duration,
    jwk_expires_in: Duration,
    /// The current snapshot.
    pub state: ArcSwap<ProviderState>,
    // Touched only by the IdP thread; a Mutex only to be shareable.
    kid_refresh: Mutex<KidRefresh>,
    /// Whether the IdP thread keeps this provider fresh.
    watched: AtomicBool,
    /// Set once discovery and JWKS (when discovery names one) have both loaded.
    loaded: AtomicBool,
}

/// A provider the process waits for before it is ready: which, which fetch, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// The discovery URL, without its query.
    pub provider: String,
    /// `discovery` or `jwks`.
    pub fetch: &'static str,
    /// Why it has not loaded yet.
    pub error: String,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("discovery_url", &self.discovery_url)
            .finish_non_exhaustive()
    }
}

enum Command {
    Watch(Arc<Provider>),
    RefreshKeys(Arc<Provider>, oneshot::Sender<()>),
    Introspect(
        IntrospectRequest,
        oneshot::Sender<Result<IntrospectAnswer, IdpError>>,
    ),
    Token(TokenRequest, oneshot::Sender<Result<TokenAnswer, IdpError>>),
    Userinfo(UserinfoCall, oneshot::Sender<Result<Vec<u8>, IdpError>>),
    Revoke(RevokeCall, oneshot::Sender<Result<(), IdpError>>),
}

/// A userinfo call as queued for the IdP thread.
struct UserinfoCall {
    endpoint: String,
    access_token: String,
    ssl_verify: bool,
    timeout: Duration,
}

/// A revocation call as queued for the IdP thread.
struct RevokeCall {
    endpoint: String,
    client: ClientAuth,
    token: String,
    hint: &'static str,
    ssl_verify: bool,
    timeout: Duration,
}

/// How a client authenticates to the IdP's token, introspection and revocation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// HTTP Basic with client id and secret.
    ClientSecretBasic,
    /// Client id and secret in the form body.
    ClientSecretPost,
}

/// One RFC 7662 introspection call.
#[derive(Debug, Clone)]
pub struct IntrospectRequest {
    /// Endpoint URL.
    pub endpoint: String,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// Where the credentials go.
    pub method: AuthMethod,
    /// The token asked about.
    pub token: String,
    /// Call timeout.
    pub timeout: Duration,
    /// Verify the endpoint's certificate.
    pub ssl_verify: bool,
}

/// An introspection answer, checked to be a JSON object with a boolean `active`.
#[derive(Debug, Clone)]
pub struct IntrospectAnswer {
    /// Whether the token is active.
    pub active: bool,
    /// `exp`, when given.
    pub exp: Option<f64>,
    /// The JSON as received (for `X-Userinfo`, and the claims the routes check).
    pub body: Vec<u8>,
}

/// How a provider is fetched: routes share a provider (its discovery, keys and refreshes)
/// only when all of these are equal, so none runs with another route's timeout or key lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FetchSettings {
    /// The discovery document's URL.
    pub discovery: String,
    /// Verify the IdP's certificate.
    pub ssl_verify: bool,
    /// Per-call timeout.
    pub timeout: Duration,
    /// How long fetched keys are trusted before a refresh.
    pub jwk_expires_in: Duration,
}

/// Providers by their key.
type Providers = HashMap<FetchSettings, Arc<Provider>>;

/// The handle workers and the control plane use to reach the IdP thread.
#[derive(Clone)]
pub struct Idp {
    tx: mpsc::UnboundedSender<Command>,
    providers: Arc<Mutex<Providers>>,
    stats: Arc<IdpStats>,
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Idp")
    }
}

impl Idp {
    /// Start the IdP thread.
    pub fn start() -> std::io::Result<Idp> {
        let (tx, rx) = mpsc::unbounded_channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let providers: Arc<Mutex<Providers>> = Arc::default();
        let registry = providers.clone();
        let stats = Arc::new(IdpStats::default());
        let clients = Clients::new(stats.clone());
        std::thread::Builder::new()
            .name("idp".into())
            .spawn(move || rt.block_on(serve(rx, registry, clients)))?;
        Ok(Idp {
            tx,
            providers,
            stats,
        })
    }

    /// What the IdP thread counted of its failed calls.
    pub fn stats(&self) -> &IdpStats {
        &self.stats
    }

    /// The provider for `fetch` settings, created on first use; its discovery and keys are
    /// fetched and kept fresh once some route `needs_discovery`.
    pub fn provider(&self, fetch: &FetchSettings, needs_discovery: bool) -> Arc<Provider> {
        let mut map = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        let p = map
            .entry(fetch.clone())
            .or_insert_with(|| {
                Arc::new(Provider {
                    discovery_url: fetch.discovery.clone(),
                    ssl_verify: fetch.ssl_verify,
                    timeout: fetch.timeout,
                    jwk_expires_in: fetch.jwk_expires_in,
                    state: ArcSwap::from_pointee(ProviderState {
                        problem: Some("identity provider discovery has not answered yet".into()),
                        ..ProviderState::default()
                    }),
                    kid_refresh: Mutex::default(),
                    watched: AtomicBool::new(false),
                    loaded: AtomicBool::new(false),
                })
            })
            .clone();
        if needs_discovery && !p.watched.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Command::Watch(p.clone()));
        }
        p
    }

    /// The providers in use whose discovery or keys have not loaded once yet (empty: ready).
    pub fn not_ready(&self) -> Vec<NotReady> {
        let map = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        let mut waiting: Vec<NotReady> = map
            .values()
            // Held by more than the registry and its watch task: some route uses it.
            .filter(|p| p.watched.load(Ordering::Acquire) && Arc::strong_count(p) > 2)
            .filter(|p| !p.loaded.load(Ordering::Acquire))
            .map(|p| {
                let state = p.state.load();
                let url = &p.discovery_url;
                NotReady {
                    provider: url.split(['?', '#']).next().unwrap_or(url).to_string(),
                    fetch: if state.discovery.is_some() {
                        "jwks"
                    } else {
                        "discovery"
                    },
                    error: state
                        .problem
                        .clone()
                        .unwrap_or_else(|| "not fetched yet".into()),
                }
            })
            .collect();
        waiting.sort_by(|a, b| a.provider.cmp(&b.provider));
        waiting
    }

    /// Introspect a token; the receiver gets the answer or why there is none.
    pub fn introspect(
        &self,
        req: IntrospectRequest,
    ) -> oneshot::Receiver<Result<IntrospectAnswer, IdpError>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Introspect(req, tx));
        rx
    }

    /// Call the token endpoint (code exchange or refresh); the receiver gets the checked answer
    /// or why there is none (an OAuth refusal is [`IdpError::OAuth`]).
    pub fn token(&self, req: TokenRequest) -> oneshot::Receiver<Result<TokenAnswer, IdpError>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Token(req, tx));
        rx
    }

    /// GET (Authorization: Bearer) the userinfo endpoint; Ok is the JSON object's bytes.
    pub fn userinfo(
        &self,
        endpoint: String,
        access_token: String,
        ssl_verify: bool,
        timeout: Duration,
    ) -> oneshot::Receiver<Result<Vec<u8>, IdpError>> {
        let (tx, rx) = oneshot::channel();
        let call = UserinfoCall {
            endpoint,
            access_token,
            ssl_verify,
            timeout,
        };
        let _ = self.tx.send(Command::Userinfo(call, tx));
        rx
    }

    /// RFC 7009 revocation of `token` (`hint`: `access_token` or `refresh_token`); Ok(()) on
    /// 200 (any 2xx).
    pub fn revoke(
        &self,
        endpoint: String,
        client: ClientAuth,
        token: String,
        hint: &'static str,
        ssl_verify: bool,
        timeout: Duration,
    ) -> oneshot::Receiver<Result<(), IdpError>> {
        let (tx, rx) = oneshot::channel();
        let call = RevokeCall {
            endpoint,
            client,
            token,
            hint,
            ssl_verify,
            timeout,
        };
        let _ = self.tx.send(Command::Revoke(call, tx));
        rx
    }

    /// Ask for a JWKS refresh because a token named an unknown key. Refreshes are shared by
    /// every caller and rate-limited; the receiver resolves when the keys are as fresh as they
    /// will get (at once when a refresh was done recently).
    pub fn refresh_keys(&self, p: &Arc<Provider>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::RefreshKeys(p.clone(), tx));
        rx
    }
}

async fn serve(
    mut rx: mpsc::UnboundedReceiver<Command>,
    registry: Arc<Mutex<Providers>>,
    clients: Clients,
) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Watch(p) => {
                tokio::spawn(watch(clients.clone(), p, registry.clone()));
            }
            Command::Introspect(req, reply) => {
                let clients = clients.clone();
                tokio::spawn(async move {
                    let _ = reply.send(introspect(&clients, &req).await);
                });
            }
            Command::Token(req, reply) => {
                let clients = clients.clone();
                tokio::spawn(async move {
                    let _ = reply.send(oauth::token(&clients, &req).await);
                });
            }
            Command::Userinfo(c, reply) => {
                let clients = clients.clone();
                tokio::spawn(async move {
                    let r = oauth::userinfo(
                        &clients,
                        &c.endpoint,
                        &c.access_token,
                        c.ssl_verify,
                        c.timeout,
                    )
                    .await;
                    let _ = reply.send(r);
                });
            }
            Command::Revoke(c, reply) => {
                let clients = clients.clone();
                tokio::spawn(async move {
                    let r = oauth::revoke(
                        &clients,
                        &c.endpoint,
                        &c.client,
                        &c.token,
                        c.hint,
                        c.ssl_verify,
                        c.timeout,
                    )
                    .await;
                    let _ = reply.send(r);
                });
            }
            Command::RefreshKeys(p, reply) => {
                let mut kr = p.kid_refresh.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(waiters) = kr.waiters.as_mut() {
                    waiters.push(reply);
                } else if kr
                    .last
                    .is_some_and(|t| t.elapsed() < KID_REFRESH_MIN_INTERVAL)
                {
                    let _ = reply.send(());
                } else {
                    kr.waiters = Some(vec![reply]);
                    kr.last = Some(Instant::now());
                    drop(kr);
                    let clients = clients.clone();
                    clients.stats.refreshed(RefreshReason::UnknownKid);
                    tokio::spawn(async move {
                        if let Err(e) = refresh(&clients, &p).await {
                            tracing::warn!(discovery = %p.discovery_url, error = %e, "JWKS refresh for an unknown key id failed");
                        }
                        let waiters = p
                            .kid_refresh
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .waiters
                            .take();
                        for w in waiters.into_iter().flatten() {
                            let _ = w.send(());
                        }
                    });
                }
            }
        }
    }
}

/// HTTP clients, one per certificate policy; each reuses its connections. With them, the
/// counters every failed call is counted in.
#[derive(Clone)]
struct Clients {
    verifying: reqwest::Client,
    trusting: reqwest::Client,
    stats: Arc<IdpStats>,
}

impl Clients {
    fn new(stats: Arc<IdpStats>) -> Clients {
        let build = |verify: bool| {
            let tls = (*crate::upstream::tls::client_config(verify)).clone();
            reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .pool_idle_timeout(Duration::from_secs(90))
                // A redirect would resend a token request (with a client_secret_post secret)
                // to wherever it points: IdP endpoints answer where they were asked.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot build the IdP HTTP client with our TLS settings");
                    reqwest::Client::new()
                })
        };
        Clients {
            verifying: build(true),
            trusting: build(false),
            stats,
        }
    }

    fn for_provider(&self, p: &Provider) -> &reqwest::Client {
        self.for_ssl(p.ssl_verify)
    }

    /// The client for a call that does (or does not) verify certificates.
    fn for_ssl(&self, ssl_verify: bool) -> &reqwest::Client {
        if ssl_verify {
            &self.verifying
        } else {
            &self.trusting
        }
    }
}

/// The failure of a request that got no answer head.
fn send_failure(endpoint: Endpoint, e: &reqwest::Error) -> IdpError {
    if e.is_timeout() {
        IdpError::TimedOut(endpoint)
    } else if e.is_connect() {
        IdpError::Unreachable(endpoint)
    } else if e.is_builder() {
        IdpError::Unsendable(endpoint)
    } else {
        // Connected, but what came back was not an HTTP answer (garbage, or a close).
        IdpError::NotHttp(endpoint)
    }
}

/// A 2xx answer's head, or why there is none.
async fn answer_head(
    request: reqwest::RequestBuilder,
    endpoint: Endpoint,
) -> Result<reqwest::Response, IdpError> {
    let resp = request
        .send()
        .await
        .map_err(|e| send_failure(endpoint, &e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(IdpError::Status(endpoint, status.as_u16()));
    }
    Ok(resp)
}

/// Read an answer's body chunk by chunk and stop at [`MAX_BODY`]: reading it whole first would
/// let an IdP that sends fast (or announces a huge length) make this thread hold gigabytes
/// within one `timeout`. What is beyond the cap is never read; dropping the answer closes its
/// connection.
async fn read_capped(mut resp: reqwest::Response, endpoint: Endpoint) -> Result<Vec<u8>, IdpError> {
    let announced = resp.content_length();
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(IdpError::TooLarge(endpoint));
    }
    // Sized for what was announced (now known to be within the cap), else grown as it comes.
    let mut body = Vec::with_capacity(announced.map_or(0, |n| n as usize));
    loop {
        let chunk = resp.chunk().await.map_err(|e| {
            if e.is_timeout() {
                IdpError::TimedOut(endpoint)
            } else {
                IdpError::CutOff(endpoint)
            }
        })?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if chunk.len() > MAX_BODY - body.len() {
            return Err(IdpError::TooLarge(endpoint));
        }
        body.extend_from_slice(&chunk);
    }
}

/// GET a JSON document; returns the body and the Cache-Control max-age, if any.
async fn get(
    clients: &Clients,
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    endpoint: Endpoint,
) -> Result<(Vec<u8>, Option<Duration>), IdpError> {
    let started = Instant::now();
    let fetched = async {
        let request = client
            .get(url)
            .header("Accept", "application/json")
            .timeout(timeout);
        let resp = answer_head(request, endpoint).await?;
        let max_age = resp
            .headers()
            .get_all("cache-control")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|d| {
                d.trim()
                    .strip_prefix("max-age=")
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .map(Duration::from_secs);
        Ok((read_capped(resp, endpoint).await?, max_age))
    };
    // Successes are counted by the caller, once the body is found usable.
    let r = fetched.await.map_err(|e| clients.stats.count(e));
    clients.stats.took(endpoint, started);
    r
}

/// Fetch discovery and JWKS once and publish what worked. Returns the JWKS max-age.
async fn refresh(clients: &Clients, p: &Provider) -> Result<Option<Duration>, String> {
    let client = clients.for_provider(p);
    let old = p.state.load_full();
    let discovery = match get(
        clients,
        client,
        &p.discovery_url,
        p.timeout,
        Endpoint::Discovery,
    )
    .await
    .and_then(|(body, _)| {
        serde_json::from_slice::<Discovery>(&body).map_err(|_| {
            clients.stats.count(IdpError::Invalid(
                Endpoint::Discovery,
                "discovery answered something that is not a discovery document".into(),
            ))
        })
    }) {
        Ok(d) => {
            clients.stats.success(Endpoint::Discovery);
            Arc::new(d)
        }
        Err(e) => {
            let e = e.to_string();
            publish_problem(p, &old, &e);
            return Err(e);
        }
    };
    let Some(jwks_uri) = discovery.jwks_uri.clone() else {
        p.state.store(Arc::new(ProviderState {
            discovery: Some(discovery),
            keys: old.keys.clone(),
            problem: Some("discovery document has no jwks_uri".into()),
        }));
        // Nothing more to load: introspection-only providers need no keys.
        p.loaded.store(true, Ordering::Release);
        return Ok(None);
    };
    let fetched = get(clients, client, &jwks_uri, p.timeout, Endpoint::Jwks)
        .await
        .and_then(|(body, max_age)| {
            parse_jwks(&body)
                .map(|(ks, skipped)| (ks, skipped, max_age))
                .map_err(|e| clients.stats.count(IdpError::Invalid(Endpoint::Jwks, e)))
        })
        .map_err(|e| e.to_string());
    match fetched {
        Ok((keys, skipped, max_age)) => {
            clients.stats.success(Endpoint::Jwks);
            for s in skipped {
                tracing::warn!(discovery = %p.discovery_url, "JWKS key skipped: {s}");
            }
            tracing::debug!(discovery = %p.discovery_url, keys = keys.len(), "keys refreshed");
            p.state.store(Arc::new(ProviderState {
                discovery: Some(discovery),
                keys: Arc::new(keys),
                problem: None,
            }));
            p.loaded.store(true, Ordering::Release);
            Ok(max_age)
        }
        Err(e) => {
            p.state.store(Arc::new(ProviderState {
                discovery: Some(discovery),
                keys: old.keys.clone(),
                problem: Some(e.clone()),
            }));
            Err(e)
        }
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn introspect(
    clients: &Clients,
    req: &IntrospectRequest,
) -> Result<IntrospectAnswer, IdpError> {
    oauth::counted(
        clients,
        Endpoint::Introspection,
        introspect_uncounted(clients, req),
    )
    .await
}

async fn introspect_uncounted(
    clients: &Clients,
    req: &IntrospectRequest,
) -> Result<IntrospectAnswer, IdpError> {
    const EP: Endpoint = Endpoint::Introspection;
    let form = oauth::authenticated_form(
        &[("token", &req.token), ("token_type_hint", "access_token")],
        &req.client_id,
        &req.client_secret,
        req.method,
    );
    let builder = oauth::post(
        clients.for_ssl(req.ssl_verify),
        &req.endpoint,
        form,
        req.timeout,
    );
    let resp = answer_head(builder, EP).await?;
    let bytes = read_capped(resp, EP).await?;
    let invalid = |why: &str| IdpError::Invalid(EP, why.to_string());
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| invalid("introspection answer is not JSON"))?;
    let active = json
        .get("active")
        .and_then(|a| a.as_bool())
        .ok_or_else(|| invalid("introspection answer has no boolean `active`"))?;
    Ok(IntrospectAnswer {
        active,
        exp: json.get("exp").and_then(|e| e.as_f64()),
        body: bytes,
    })
}

fn publish_problem(p: &Provider, old: &ProviderState, problem: &str) {
    p.state.store(Arc::new(ProviderState {
        discovery: old.discovery.clone(),
        keys: old.keys.clone(),
        problem: Some(problem.to_string()),
    }));
}

/// Keep a provider fresh: refresh at start, then per Cache-Control / `jwk_expires_in`, backing
/// off while the IdP fails (the last good state keeps serving meanwhile).
async fn watch(clients: Clients, p: Arc<Provider>, registry: Arc<Mutex<Providers>>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        {
            // Held only by the registry and this task: no route uses the provider any more
            // (a reload dropped it), so stop polling its IdP. Checked under the registry lock,
            // which is also what hands providers to new routes.
            let mut map = registry.lock().unwrap_or_else(|e| e.into_inner());
            if Arc::strong_count(&p) <= 2 {
                map.retain(|_, q| !Arc::ptr_eq(q, &p));
                tracing::info!(discovery = %p.discovery_url, "identity provider no longer used; stopped refreshing it");
                return;
            }
        }
        // Requests that need fresh keys meanwhile join this refresh instead of starting one
        // (and do not spend the unknown-kid allowance).
        {
            let mut kr = p.kid_refresh.lock().unwrap_or_else(|e| e.into_inner());
            kr.waiters.get_or_insert_with(Vec::new);
        }
        clients.stats.refreshed(RefreshReason::Schedule);
        let result = refresh(&clients, &p).await;
        let waiters = p
            .kid_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiters
            .take();
        for w in waiters.into_iter().flatten() {
            let _ = w.send(());
        }
        let wait = match result {
            Ok(max_age) => {
                backoff = Duration::from_secs(1);
                max_age
                    .unwrap_or(p.jwk_expires_in)
                    .min(p.jwk_expires_in)
                    .max(MIN_REFRESH)
            }
            Err(e) => {
                tracing::warn!(discovery = %p.discovery_url, error = %e, retry_in = ?backoff, "identity provider refresh failed");
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch() -> FetchSettings {
        FetchSettings {
            discovery: "http://127.0.0.1:9/.well-known/openid-configuration".into(),
            ssl_verify: false,
            timeout: Duration::from_secs(3),
            jwk_expires_in: Duration::from_secs(86400),
        }
    }

    #[test]
    fn routes_share_a_provider_only_with_the_same_fetch_settings() {
        let idp = Idp::start().unwrap();
        let base = idp.provider(&fetch(), false);
        let same = idp.provider(&fetch(), false);
        assert!(Arc::ptr_eq(&base, &same));
        let others = [
            FetchSettings {
                timeout: Duration::from_secs(9),
                ..fetch()
            },
            FetchSettings {
                jwk_expires_in: Duration::from_secs(60),
                ..fetch()
            },
            FetchSettings {
                ssl_verify: true,
                ..fetch()
            },
        ];
        for other in others {
            let p = idp.provider(&other, false);
            assert!(!Arc::ptr_eq(&base, &p), "{other:?} must not share");
        }
        let slow = idp.provider(
            &FetchSettings {
                timeout: Duration::from_secs(9),
                ..fetch()
            },
            false,
        );
        assert_eq!(slow.timeout, Duration::from_secs(9));
    }

    /// A server for `read_capped`: `/endless` streams a chunked JSON-looking body (up to a
    /// bound, so a broken reader fails the test rather than the machine), `/announced` sends a
    /// head announcing 10 GB and then stalls, `/small` answers `{}`. Counts the body bytes
    /// it managed to send.
    fn hostile_server() -> (u16, Arc<AtomicU64>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let sent = counter.clone();
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    if head.contains(" /endless ") {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"keys\":[],\"x\":\"\r\n");
                        let chunk = [b'x'; 65536];
                        while sent.load(Ordering::Relaxed) < 256 << 20 {
                            let framed = [&b"10000\r\n"[..], &chunk, b"\r\n"].concat();
                            if conn.write_all(&framed).is_err() {
                                break;
                            }
                            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        }
                    } else if head.contains(" /announced ") {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{");
                        std::thread::sleep(Duration::from_secs(5));
                    } else {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
                    }
                });
            }
        });
        (port, sent)
    }

    #[test]
    fn answers_are_read_up_to_the_cap_and_no_further() {
        let (port, sent) = hostile_server();
        let stats = Arc::new(IdpStats::default());
        let clients = Clients::new(stats.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        let timeout = Duration::from_secs(10);
        rt.block_on(async {
            let started = Instant::now();
            let e = get(
                &clients,
                &clients.trusting,
                &url("/endless"),
                timeout,
                Endpoint::Jwks,
            )
            .await
            .unwrap_err();
            assert_eq!(e, IdpError::TooLarge(Endpoint::Jwks));
            assert_eq!(e.to_string(), "JWKS answer larger than 1 MiB");
            let e = get(
                &clients,
                &clients.trusting,
                &url("/announced"),
                timeout,
                Endpoint::Discovery,
            )
            .await
            .unwrap_err();
            assert_eq!(e.to_string(), "discovery answer larger than 1 MiB");
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "refused at once, not after reading or waiting: {:?}",
                started.elapsed()
            );
            let (body, _) = get(
                &clients,
                &clients.trusting,
                &url("/small"),
                timeout,
                Endpoint::Jwks,
            )
            .await
            .unwrap();
            assert_eq!(body, b"{}");
        });
        // The endless answer's connection was closed at the cap: what the server got into the
        // socket is the cap plus kernel buffers, far from its 256 MiB.
        std::thread::sleep(Duration::from_millis(300));
        let streamed = sent.load(Ordering::Relaxed);
        assert!(streamed < 48 << 20, "the server streamed {streamed} bytes");
        assert_eq!(stats.failures(Endpoint::Jwks, Failure::TooLarge), 1);
        assert_eq!(stats.failures(Endpoint::Discovery, Failure::TooLarge), 1);
        assert_eq!(stats.failures(Endpoint::Jwks, Failure::CutOff), 0);
    }
}
