//! The `openid-connect` plugin on the request path: find the bearer token, validate it (cache,
//! then ready keys), and say which identity headers go upstream.

pub mod cache;
pub mod config;
pub mod introspect;
pub mod login;
pub mod session;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::error::{AuthError, ProxyError};
use crate::http::h1::{header_values, write_header as header, HeaderIdx, HeaderKind, Span};
use crate::http::reply::quoted_safe;
use crate::http::reply::Reply;
use crate::idp::{Idp, Provider, ProviderState};
use crate::jose::jwt::{self, MissingIssuer, TokenError};
use crate::jose::keys::KeySet;
use crate::metrics::AuthMethod;
use crate::plugins::{Ctx, PluginEnv, Request};
use cache::{token_key, TokenCache, TokenKey, Verified};
use config::{OidcConfig, UnauthAction};
use session::{strip_cookies, SessionCache, SessionKey};

/// Opened sessions kept per core: each holds a user's tokens, so fewer than verified tokens.
const SESSION_CACHE_ENTRIES: usize = 10_000;

/// How long a token without `exp` stays cached.
const NO_EXP_TTL: f64 = 300.0;

/// The plugin as compiled into a route.
#[derive(Debug, Clone)]
pub struct OidcPlugin {
    /// The checked options.
    pub cfg: OidcConfig,
    /// Distinguishes this configuration in the per-core caches, so that a changed route never
    /// reuses what an older configuration accepted. One per compiled plugin, and a plugin is
    /// compiled once per distinct config (`PluginEnv::openid_connect`), so an unchanged config
    /// keeps its cache entries across route tables.
    pub instance: u64,
    /// The identity provider.
    pub provider: Arc<Provider>,
    idp: Idp,
    /// The configured `public_key`, as a key set.
    pinned: Option<Arc<KeySet>>,
    /// `Bearer realm="…"`, the challenge for requests without a token.
    challenge: Arc<str>,
    realm: Arc<str>,
    /// Tokens are checked by introspection (no `public_key`, no `use_jwks`).
    pub introspects: bool,
    /// Introspection answers are shared by every route asking the same endpoint as the same
    /// client, so their cache keys are namespaced by that pair, not by route.
    pub introspection_namespace: u64,
    /// The route runs the browser login flow (not `bearer_only`).
    pub login: bool,
    /// The key its session cookies are sealed with, or why there is none (then a login answers
    /// 503 saying so).
    pub session_key: Result<Arc<SessionKey>, Arc<str>>,
    /// The path callbacks arrive at, when `redirect_uri` is configured.
    callback_path: Option<Box<str>>,
}

impl OidcPlugin {
    /// Compile a checked configuration (control plane).
    pub fn new(cfg: OidcConfig, env: &PluginEnv) -> OidcPlugin {
        let idp = &env.idp;
        let login = !cfg.bearer_only;
        let session_key = match (&cfg.session.secret, login) {
            (_, false) => Err(Arc::from("no login flow on this route")),
            (Some(secret), true) => Ok(Arc::new(SessionKey::from_secret(secret.as_bytes()))),
            (None, true) => env
                .node_secret()
                .map(|s| Arc::new(SessionKey::from_secret(&s)))
                .map_err(Arc::from),
        };
        static NEXT: AtomicU64 = AtomicU64::new(1);
        // With a pinned key and listed issuers (or an explicit introspection endpoint and listed
        // issuers), tokens need nothing from discovery, so the IdP is not polled for this route.
        // Without listed issuers, discovery's issuer is what a token's (or an introspection
        // answer's) `iss` is compared with.
        let needs_discovery = login
            || match (&cfg.public_key, cfg.use_jwks) {
                (Some(_), _) => cfg.valid_issuers.is_empty(),
                (None, true) => true,
                (None, false) => {
                    cfg.introspection_endpoint.is_none() || cfg.valid_issuers.is_empty()
                }
            };
        let provider = idp.provider(&cfg.fetch_settings(), needs_discovery);
        let pinned = cfg
            .public_key
            .clone()
            .map(|k| Arc::new(KeySet::pinned_to(k)));
        let challenge = format!("Bearer realm=\"{}\"", quoted_safe(&cfg.realm)).into();
        let realm = quoted_safe(&cfg.realm).into();
        let introspects = cfg.takes_bearer() && cfg.public_key.is_none() && !cfg.use_jwks;
        let introspection_namespace = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            // The caching policy is part of the namespace: a route never sees an answer kept
            // longer than its own rules allow. So is the audience claim an answer is read with
            // (a cached answer keeps only that claim); the rest of `claim_validator` is checked
            // per route on every request, so routes differing only there share answers.
            (
                cfg.introspection_endpoint
                    .as_deref()
                    .unwrap_or(&cfg.discovery),
                &cfg.client_id,
                &cfg.client_secret,
                cfg.ssl_verify,
                cfg.introspection_interval,
                cfg.introspection_negative_ttl,
                audience_claim(&cfg),
            )
                .hash(&mut h);
            h.finish()
        };
        OidcPlugin {
            instance: NEXT.fetch_add(1, Ordering::Relaxed),
            provider,
            idp: idp.clone(),
            pinned,
            challenge,
            realm,
            introspects,
            introspection_namespace,
            login,
            session_key,
            callback_path: cfg.redirect_uri.as_deref().map(login::callback_path),
            cfg,
        }
    }
}

/// The claim holding the audience: the configured one, else `aud` (read even without an
/// audience rule, so that routes with and without one can share introspection answers).
fn audience_claim(cfg: &OidcConfig) -> &str {
    cfg.audience
        .as_ref()
        .map_or("aud", |rule| rule.claim.as_str())
}

impl OidcPlugin {
    /// The claim holding the audience for this route's rules.
    pub fn audience_claim(&self) -> &str {
        audience_claim(&self.cfg)
    }
}

/// The discovery issuer tokens are compared with, or why it is not known.
fn discovery_issuer(state: &ProviderState) -> Result<&str, &str> {
    match (&state.discovery, &state.problem) {
        (Some(d), _) => Ok(d.issuer.as_str()),
        (None, Some(problem)) => Err(problem.as_str()),
        (None, None) => Err("discovery has not answered yet"),
    }
}

/// The identity a request carries upstream.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The raw access token, as a span of the request buffer.
    pub token: Span,
    /// `X-Userinfo` value.
    pub userinfo: Option<Rc<str>>,
    /// Send the token upstream.
    pub set_access_token: bool,
    /// ... as `Authorization: Bearer` instead of `X-Access-Token`.
    pub in_authorization: bool,
}

impl Identity {
    /// Upstream head: whether a client header of `kind` gives way to the identity's own (the
    /// client's `Authorization` when the token travels in it).
    pub fn drops(&self, kind: HeaderKind) -> bool {
        kind == HeaderKind::Authorization && self.set_access_token && self.in_authorization
    }

    /// Upstream head: the identity headers (SPEC 2.4); `buf` holds the request the token is in.
    pub fn append(&self, buf: &[u8], out: &mut Vec<u8>) {
        let token = self.token.get(buf);
        if self.set_access_token && self.in_authorization {
            out.extend_from_slice(b"Authorization: Bearer ");
            out.extend_from_slice(token);
            out.extend_from_slice(b"\r\n");
        } else if self.set_access_token {
            header(out, b"X-Access-Token", token);
        }
        if let Some(u) = &self.userinfo {
            header(out, b"X-Userinfo", u.as_bytes());
        }
    }
}

/// The access phase: a bearer token when the route takes one and the request has one (it
/// takes precedence, and an invalid one is refused, never redirected), else the login flow on
/// routes that are not `bearer_only`.
pub async fn access(
    p: &OidcPlugin,
    st: &CoreState,
    req: &Request<'_>,
    ctx: &mut Ctx,
) -> Result<Option<Reply>, ProxyError> {
    ctx.tls = req.tls;
    ctx.auth_method = Some(if p.introspects {
        AuthMethod::Introspection
    } else {
        AuthMethod::Jwt
    });
    // Found once: it picks the branch, and the bearer branch authenticates with it.
    let token = route_bearer(p, req.buf, req.headers)?;
    if p.login && token.is_none() {
        ctx.auth_method = Some(AuthMethod::Session);
        return login::access(p, st, req, ctx).await;
    }
    ctx.identity = authenticate(p, st, req.buf, token).await?;
    Ok(None)
}

impl OidcPlugin {
    /// Upstream head: whether a client header gives way to what this plugin sends.
    pub fn drops(&self, ctx: &Ctx, name: &[u8], kind: HeaderKind) -> bool {
        let in_authorization =
            self.cfg.set_access_token_header && self.cfg.access_token_in_authorization_header;
        match kind {
            HeaderKind::Authorization => {
                ctx.identity.as_ref().is_some_and(|i| i.drops(kind))
                    || (ctx.session.is_some() && in_authorization)
            }
            // Our cookies are taken out of the Cookie header, which is written anew.
            HeaderKind::Other => self.login && name.eq_ignore_ascii_case(b"cookie"),
            _ => false,
        }
    }

    /// Upstream head: identity headers (SPEC 2.4) and the Cookie header without our cookies.
    pub fn append_upstream(&self, ctx: &Ctx, buf: &[u8], headers: &[HeaderIdx], out: &mut Vec<u8>) {
        if let Some(i) = &ctx.identity {
            i.append(buf, out);
        }
        if let Some(s) = &ctx.session {
            let cfg = &self.cfg;
            if cfg.set_access_token_header && cfg.access_token_in_authorization_header {
                out.extend_from_slice(b"Authorization: Bearer ");
                out.extend_from_slice(s.access_token.as_bytes());
                out.extend_from_slice(b"\r\n");
            } else if cfg.set_access_token_header {
                header(out, b"X-Access-Token", s.access_token.as_bytes());
            }
            if cfg.set_id_token_header {
                header(out, b"X-ID-Token", s.id_token_header().as_bytes());
            }
            if let Some(u) = cfg
                .set_userinfo_header
                .then(|| s.userinfo_header())
                .flatten()
            {
                header(out, b"X-Userinfo", u.as_bytes());
            }
            if let (true, Some(rt)) = (cfg.set_refresh_token_header, &s.refresh_token) {
                header(out, b"X-Refresh-Token", rt.as_bytes());
            }
        }
        if self.login && !ctx.cookies_only_ours {
            let start = out.len();
            out.extend_from_slice(b"Cookie: ");
            let cookies = header_values(buf, headers, b"cookie");
            let base = &self.cfg.session.cookie_name;
            if strip_cookies(cookies, |n| login::is_ours(n, base), out) {
                out.extend_from_slice(b"\r\n");
            } else {
                out.truncate(start);
            }
        }
    }

    fn missing(&self) -> ProxyError {
        AuthError::Missing {
            challenge: self.challenge.clone(),
        }
        .into()
    }
}

fn now() -> f64 {
    crate::clock::unix_now()
}

/// The synchronous first step of authentication.
pub enum Lookup {
    /// No token, and the route lets such requests through without identity.
    Pass,
    /// A token this core verified before and whose verdict still holds.
    Cached(Identity),
    /// A token to validate.
    Miss {
        /// Where the token is.
        token: Span,
        /// Its cache key; none when the cache is disabled, which then costs no digest.
        key: Option<TokenKey>,
        /// The time it is judged at.
        now: f64,
    },
}

impl OidcPlugin {
    fn identity(&self, token: Span, userinfo: Rc<str>) -> Identity {
        Identity {
            token,
            userinfo: self.cfg.set_userinfo_header.then_some(userinfo),
            set_access_token: self.cfg.set_access_token_header,
            in_authorization: self.cfg.access_token_in_authorization_header,
        }
    }

    fn invalid(&self, reason: TokenError) -> ProxyError {
        AuthError::Invalid {
            realm: self.realm.clone(),
            reason,
        }
        .into()
    }
}

/// The request's bearer token when the route takes one; `Ok(None)` when it has none or the
/// route takes none.
fn route_bearer(
    p: &OidcPlugin,
    buf: &[u8],
    headers: &[HeaderIdx],
) -> Result<Option<Span>, ProxyError> {
    if p.cfg.takes_bearer() {
        bearer_token(buf, headers)
    } else {
        Ok(None)
    }
}

/// The [`route_bearer`] token. `Ok(None)`: there is none and the route lets such requests
/// through without identity; a missing token the route does not allow is an error.
fn token_or_unauth(p: &OidcPlugin, token: Option<Span>) -> Result<Option<Span>, ProxyError> {
    let cfg = &p.cfg;
    match (token, cfg.bearer_only, cfg.unauth_action) {
        (Some(t), _, _) => Ok(Some(t)),
        (None, false, UnauthAction::Pass) => Ok(None),
        (None, _, _) => Err(AuthError::Missing {
            challenge: p.challenge.clone(),
        }
        .into()),
    }
}

/// Find the token and answer from the cache when possible: the whole JWT hot path, no await.
pub fn lookup(
    p: &OidcPlugin,
    cache: &mut TokenCache,
    buf: &[u8],
    headers: &[HeaderIdx],
) -> Result<Lookup, ProxyError> {
    lookup_token(p, cache, buf, route_bearer(p, buf, headers)?)
}

/// [`lookup`] with the [`route_bearer`] token already found.
fn lookup_token(
    p: &OidcPlugin,
    cache: &mut TokenCache,
    buf: &[u8],
    token: Option<Span>,
) -> Result<Lookup, ProxyError> {
    let Some(token) = token_or_unauth(p, token)? else {
        return Ok(Lookup::Pass);
    };
    let now = now();
    let key = cache
        .enabled()
        .then(|| token_key(p.instance, token.get(buf)));
    if let Some(v) = key.as_ref().and_then(|k| cache.get(k, now)) {
        return Ok(Lookup::Cached(p.identity(token, v.userinfo.clone())));
    }
    Ok(Lookup::Miss { token, key, now })
}

/// What `openid-connect` keeps on each core: verified tokens, introspection answers and the
/// introspection calls in flight. Plain cells: a core never shares them.
pub struct CoreState {
    /// Verified bearer tokens.
    pub tokens: RefCell<TokenCache>,
    /// Introspection answers and calls in flight.
    pub introspections: RefCell<introspect::Introspections>,
    /// Opened login sessions, by cookie: a known cookie is not decrypted again.
    pub sessions: RefCell<SessionCache>,
    /// Session refreshes in flight.
    pub refreshes: RefCell<login::Refreshes>,
}

impl CoreState {
    /// Empty caches bounded by `entries` and `bytes` each.
    pub fn new(entries: usize, bytes: usize) -> CoreState {
        CoreState {
            tokens: RefCell::new(TokenCache::new(entries, bytes)),
            introspections: RefCell::new(introspect::Introspections::new(entries, bytes)),
            sessions: RefCell::new(SessionCache::with_max_bytes(
                SESSION_CACHE_ENTRIES.min(entries),
                bytes,
            )),
            refreshes: RefCell::default(),
        }
    }

    /// Report the token caches' hits, misses, evictions and entries to this core's metrics.
    pub fn count_into(&self, m: &crate::metrics::CoreMetrics) {
        self.tokens.borrow_mut().count_into(m.caches[0].clone());
        self.introspections
            .borrow_mut()
            .cache
            .count_into(m.caches[1].clone());
        self.sessions.borrow_mut().count_into(m.caches[2].clone());
    }

    /// Drop up to `budget` expired entries from each cache.
    pub fn sweep(&self, now: f64, budget: usize) {
        self.tokens.borrow_mut().sweep(now, budget);
        self.introspections.borrow_mut().cache.sweep(now, budget);
    }
}

/// Authenticate a request by its [`route_bearer`] token. `Ok(None)`: let it through without
/// identity (`unauth_action: pass`).
pub async fn authenticate(
    p: &OidcPlugin,
    st: &CoreState,
    buf: &[u8],
    token: Option<Span>,
) -> Result<Option<Identity>, ProxyError> {
    if p.introspects {
        return authenticate_by_introspection(p, st, buf, token).await;
    }
    // Bound first: the cache borrow must end before any await.
    let step = lookup_token(p, &mut st.tokens.borrow_mut(), buf, token)?;
    match step {
        Lookup::Pass => Ok(None),
        Lookup::Cached(identity) => Ok(Some(identity)),
        Lookup::Miss { token, key, now } => {
            let verified = validate(p, token.get(buf), now)
                .await
                .map_err(|reason| p.invalid(reason))?;
            let identity = p.identity(token, verified.userinfo.clone());
            if let Some(key) = key {
                st.tokens.borrow_mut().insert(key, verified, now);
            }
            Ok(Some(identity))
        }
    }
}

async fn authenticate_by_introspection(
    p: &OidcPlugin,
    st: &CoreState,
    buf: &[u8],
    token: Option<Span>,
) -> Result<Option<Identity>, ProxyError> {
    let Some(token) = token_or_unauth(p, token)? else {
        return Ok(None);
    };
    let raw = token.get(buf);
    let now = now();
    let key = token_key(p.introspection_namespace, raw);
    // A clone of a cached verdict is a reference count: no allocation on a hit.
    let cached = st.introspections.borrow_mut().cache.get(&key, now).cloned();
    let verdict = match cached {
        Some(v) => v,
        None => introspect::introspect(p, &st.introspections, raw, key, now)
            .await
            .map_err(|r| p.invalid(r))?,
    };
    // Judged on every request, cached or not: the answer is shared by routes whose rules differ.
    let judged = |verdict: &introspect::Verdict| {
        let state = p.provider.state.load();
        introspect::judge(p, verdict, discovery_issuer(&state), now)
    };
    let userinfo = match judged(&verdict) {
        // An answer naming its issuer before discovery has answered: wait once for it, as a
        // JWT does.
        Err(TokenError::IssuerUnknown(_)) if p.provider.state.load().discovery.is_none() => {
            let _ = monoio::time::timeout(p.cfg.timeout, p.idp.refresh_keys(&p.provider)).await;
            judged(&verdict)
        }
        r => r,
    };
    Ok(Some(p.identity(token, userinfo.map_err(|r| p.invalid(r))?)))
}

/// The token in `Authorization: Bearer <token>`; `None` when there is no bearer credential.
fn bearer_token(buf: &[u8], headers: &[HeaderIdx]) -> Result<Option<Span>, ProxyError> {
    let mut auth = headers
        .iter()
        .filter(|h| h.kind == HeaderKind::Authorization);
    let Some(h) = auth.next() else {
        return Ok(None);
    };
    // Only one credential is judged, so only one may be sent: a second could reach the
    // upstream unchecked.
    if auth.next().is_some() {
        return Err(AuthError::MalformedHeader.into());
    }
    let value = h.value.get(buf);
    let Some(sp) = value.iter().position(|&b| b == b' ') else {
        return Err(AuthError::MalformedHeader.into());
    };
    if !value[..sp].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let rest = &value[sp + 1..];
    let lead = rest.iter().take_while(|&&b| b == b' ').count();
    let token = rest[lead..].trim_ascii_end();
    if token.is_empty() {
        return Err(AuthError::MalformedHeader.into());
    }
    let start = h.value.start + (sp + 1 + lead) as u32;
    Ok(Some(Span {
        start,
        end: start + token.len() as u32,
    }))
}

/// Full validation of a token not in the cache. When the token names a key we do not know (the
/// IdP may have rotated its keys), or the issuer cannot be checked because discovery has not
/// answered yet, wait once for a shared refresh (bounded by `timeout`) and look again.
async fn validate(p: &OidcPlugin, token: &[u8], now: f64) -> Result<Verified, TokenError> {
    let first = verify_now(p, token, now);
    let wait = match &first {
        Err(TokenError::UnknownKid) => p.pinned.is_none(),
        Err(TokenError::IssuerUnknown(_)) => p.provider.state.load().discovery.is_none(),
        _ => false,
    };
    match first {
        Err(_) if wait => {
            let rx = p.idp.refresh_keys(&p.provider);
            let _ = monoio::time::timeout(p.cfg.timeout, rx).await;
            match verify_now(p, token, now) {
                Err(TokenError::UnknownKid) => {
                    let state = p.provider.state.load();
                    Err(match (&state.problem, state.keys.is_empty()) {
                        (Some(problem), true) => TokenError::NoKeys(problem.clone()),
                        _ => TokenError::UnknownKid,
                    })
                }
                r => r,
            }
        }
        r => r,
    }
}

/// Validate `token` with the keys at hand: signature, then claims.
pub fn verify_now(p: &OidcPlugin, token: &[u8], now: f64) -> Result<Verified, TokenError> {
    let cfg = &p.cfg;
    let parsed = jwt::parse(token, cfg.token_signing_alg_values_expected.as_deref())?;
    let state = p.provider.state.load();
    jwt::verify_signature(&parsed, p.pinned.as_deref().unwrap_or(&state.keys))?;
    let audience_claim = cfg.audience.as_ref().map(|rule| rule.claim.as_str());
    let claims = jwt::Claims::parse(&parsed.payload, audience_claim)?;
    jwt::check_claims(
        &claims,
        &cfg.claim_rules(),
        discovery_issuer(&state),
        now,
        MissingIssuer::Refused,
    )?;
    Ok(Verified {
        // Accepted until exp + iat_slack, so cached as long: a token in that window would
        // otherwise be verified afresh on every request.
        expires_at: claims
            .exp
            .map_or(now + NO_EXP_TTL, |exp| exp + cfg.iat_slack.as_secs_f64()),
        userinfo: if cfg.set_userinfo_header {
            STANDARD.encode(&parsed.payload).into()
        } else {
            Rc::from("")
        },
    })
}
