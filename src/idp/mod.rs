//! The identity-provider client: one background thread with a tokio runtime and reqwest, the only
//! place that talks to IdPs. It fetches discovery documents and JWKS, refreshes them, and
//! publishes each provider's state as an immutable snapshot every core reads through `ArcSwap`.
//! Workers reach it through a channel and await answers without blocking their event loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::oidc::config::{AuthMethod, OidcConfig};
use crate::oidc::keys::{parse_jwks, KeySet};

/// Unknown-kid refreshes of one provider happen at most this often, whatever the traffic.
pub const KID_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest wait between scheduled refreshes, whatever Cache-Control says.
const MIN_REFRESH: Duration = Duration::from_secs(5);
/// Longest retry wait while the IdP is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Largest IdP answer read.
const MAX_BODY: usize = 1 << 20;

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
        oneshot::Sender<Result<IntrospectAnswer, String>>,
    ),
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

/// What makes two routes' providers one: the discovery URL and every setting that shapes how
/// it is fetched (ssl_verify, timeout, jwk_expires_in), so no route runs on another's settings.
type ProviderKey = (String, bool, Duration, Duration);

/// Providers by their key.
type Providers = HashMap<ProviderKey, Arc<Provider>>;

/// The handle workers and the control plane use to reach the IdP thread.
#[derive(Clone)]
pub struct Idp {
    tx: mpsc::UnboundedSender<Command>,
    providers: Arc<Mutex<Providers>>,
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
        std::thread::Builder::new()
            .name("idp".into())
            .spawn(move || rt.block_on(serve(rx, registry)))?;
        Ok(Idp { tx, providers })
    }

    /// The provider for a plugin config, created on first use; its discovery and keys are
    /// fetched and kept fresh once some route `needs_discovery`.
    pub fn provider(&self, cfg: &OidcConfig, needs_discovery: bool) -> Arc<Provider> {
        let mut map = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        let p = map
            .entry((
                cfg.discovery.clone(),
                cfg.ssl_verify,
                cfg.timeout,
                cfg.jwk_expires_in,
            ))
            .or_insert_with(|| {
                Arc::new(Provider {
                    discovery_url: cfg.discovery.clone(),
                    ssl_verify: cfg.ssl_verify,
                    timeout: cfg.timeout,
                    jwk_expires_in: cfg.jwk_expires_in,
                    state: ArcSwap::from_pointee(ProviderState {
                        problem: Some("identity provider discovery has not answered yet".into()),
                        ..ProviderState::default()
                    }),
                    kid_refresh: Mutex::default(),
                    watched: AtomicBool::new(false),
                })
            })
            .clone();
        if needs_discovery && !p.watched.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Command::Watch(p.clone()));
        }
        p
    }

    /// Introspect a token; the receiver gets the answer or why there is none.
    pub fn introspect(
        &self,
        req: IntrospectRequest,
    ) -> oneshot::Receiver<Result<IntrospectAnswer, String>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Introspect(req, tx));
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

async fn serve(mut rx: mpsc::UnboundedReceiver<Command>, registry: Arc<Mutex<Providers>>) {
    let clients = Clients::new();
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

/// HTTP clients, one per certificate policy; each reuses its connections.
#[derive(Clone)]
struct Clients {
    verifying: reqwest::Client,
    trusting: reqwest::Client,
}

impl Clients {
    fn new() -> Clients {
        let build = |verify: bool| {
            let tls = (*crate::upstream::tls::client_config(verify)).clone();
            reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .pool_idle_timeout(Duration::from_secs(90))
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
        }
    }

    fn for_provider(&self, p: &Provider) -> &reqwest::Client {
        if p.ssl_verify {
            &self.verifying
        } else {
            &self.trusting
        }
    }
}

/// Words for a failed request, fit for an `error_description`.
fn send_failure(what: &str, e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("{what} timed out")
    } else if e.is_connect() {
        format!("{what} unreachable")
    } else {
        // Connected, but what came back was not an HTTP answer (garbage, or a close).
        format!("{what} closed the connection without a valid HTTP answer")
    }
}

/// GET a JSON document; returns the body and the Cache-Control max-age, if any.
async fn get(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    what: &str,
) -> Result<(Vec<u8>, Option<Duration>), String> {
    let resp = client
        .get(url)
        .header("Accept", "application/json")
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| send_failure(what, &e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("{what} answered HTTP {}", status.as_u16()));
    }
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
    let body = resp
        .bytes()
        .await
        .map_err(|_| format!("{what} answer was cut off"))?;
    if body.len() > MAX_BODY {
        return Err(format!("{what} answer is too large"));
    }
    Ok((body.to_vec(), max_age))
}

/// Fetch discovery and JWKS once and publish what worked. Returns the JWKS max-age.
async fn refresh(clients: &Clients, p: &Provider) -> Result<Option<Duration>, String> {
    let client = clients.for_provider(p);
    let old = p.state.load_full();
    let discovery = match get(client, &p.discovery_url, p.timeout, "discovery")
        .await
        .and_then(|(body, _)| {
            serde_json::from_slice::<Discovery>(&body).map_err(|_| {
                "discovery answered something that is not a discovery document".to_string()
            })
        }) {
        Ok(d) => Arc::new(d),
        Err(e) => {
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
        return Ok(None);
    };
    let fetched = get(client, &jwks_uri, p.timeout, "JWKS")
        .await
        .and_then(|(body, max_age)| parse_jwks(&body).map(|(ks, skipped)| (ks, skipped, max_age)));
    match fetched {
        Ok((keys, skipped, max_age)) => {
            for s in skipped {
                tracing::warn!(discovery = %p.discovery_url, "JWKS key skipped: {s}");
            }
            tracing::debug!(discovery = %p.discovery_url, keys = keys.len(), "keys refreshed");
            p.state.store(Arc::new(ProviderState {
                discovery: Some(discovery),
                keys: Arc::new(keys),
                problem: None,
            }));
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
) -> Result<IntrospectAnswer, String> {
    let client = if req.ssl_verify {
        &clients.verifying
    } else {
        &clients.trusting
    };
    let mut body = format!(
        "token={}&token_type_hint=access_token",
        form_encode(&req.token)
    );
    let mut builder = client
        .post(&req.endpoint)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Accept", "application/json")
        .timeout(req.timeout);
    match req.method {
        AuthMethod::ClientSecretBasic => {
            // RFC 6749 §2.3.1: both parts are form-encoded before Basic encoding.
            use base64::Engine;
            let pair = format!(
                "{}:{}",
                form_encode(&req.client_id),
                form_encode(&req.client_secret)
            );
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            builder = builder.header("Authorization", format!("Basic {basic}"));
        }
        AuthMethod::ClientSecretPost => {
            body.push_str(&format!(
                "&client_id={}&client_secret={}",
                form_encode(&req.client_id),
                form_encode(&req.client_secret)
            ));
        }
    }
    let resp = builder
        .body(body)
        .send()
        .await
        .map_err(|e| send_failure("introspection endpoint", &e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!(
            "introspection endpoint answered HTTP {}",
            status.as_u16()
        ));
    }
    let bytes = resp.bytes().await.map_err(|e| {
        if e.is_timeout() {
            "introspection timed out".to_string()
        } else {
            "introspection answer was cut off".to_string()
        }
    })?;
    if bytes.len() > MAX_BODY {
        return Err("introspection answer is too large".into());
    }
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| "introspection answer is not JSON".to_string())?;
    let active = json
        .get("active")
        .and_then(|a| a.as_bool())
        .ok_or("introspection answer has no boolean `active`")?;
    Ok(IntrospectAnswer {
        active,
        exp: json.get("exp").and_then(|e| e.as_f64()),
        body: bytes.to_vec(),
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

    fn cfg(extra: serde_json::Value) -> OidcConfig {
        let mut conf = serde_json::json!({
            "client_id": "c", "client_secret": "s", "bearer_only": true,
            "discovery": "http://127.0.0.1:9/.well-known/openid-configuration",
        });
        if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let mut errors = Vec::new();
        crate::oidc::config::check(conf, "t", &mut errors).expect("valid config")
    }

    #[test]
    fn routes_share_a_provider_only_with_the_same_fetch_settings() {
        let idp = Idp::start().unwrap();
        let base = idp.provider(&cfg(serde_json::json!({})), false);
        let same = idp.provider(&cfg(serde_json::json!({})), false);
        assert!(Arc::ptr_eq(&base, &same));
        for other in [
            serde_json::json!({"timeout": 9}),
            serde_json::json!({"jwk_expires_in": 60}),
            serde_json::json!({"ssl_verify": true}),
        ] {
            let p = idp.provider(&cfg(other.clone()), false);
            assert!(!Arc::ptr_eq(&base, &p), "{other} must not share");
        }
        let slow = idp.provider(&cfg(serde_json::json!({"timeout": 9})), false);
        assert_eq!(slow.timeout, Duration::from_secs(9));
    }
}
