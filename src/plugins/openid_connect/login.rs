//! The relying-party half of `openid-connect` (SPEC 2.5): a browser without a token is sent to
//! the identity provider, comes back to the callback with a code, and leaves with an encrypted
//! session cookie; later requests are served from the cookie, an expired access token is
//! refreshed, and `logout_path` ends it all.
//!
//! Each login attempt keeps its state, nonce, PKCE verifier and original URL in a short-lived
//! cookie of its own, named after its state, so two tabs logging in at once both succeed.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

use super::session::{
    clear_cookie_values, is_chunk_of, read_chunked, read_session, set_cookie_values, CookieAttrs,
    Session, SessionKey,
};
use super::{now, CoreState, OidcPlugin};
use crate::error::{AuthError, AuthKind, ProxyError};
use crate::http::form;
use crate::http::h1::header_values;
use crate::http::reply::Reply;
use crate::idp::{ClientAuth, Grant, IdpError, TokenAnswer, TokenRequest};
use crate::jose::jwt::{self, MissingIssuer};
use crate::metrics::LoginStep;
use crate::plugins::{Ctx, Request};

/// The default callback path suffix (APISIX >= 3.8): the protected path plus this.
pub const CALLBACK_SUFFIX: &str = "/.apisix/redirect";
/// How long a login attempt may take, from the redirect to the callback.
const ATTEMPT_TTL: u64 = 600;
/// Restarts after a lost state before the callback answers 400.
const MAX_RESTARTS: u32 = 3;

/// What one login attempt needs back at the callback.
#[derive(serde::Serialize, serde::Deserialize)]
struct Attempt {
    state: String,
    nonce: Option<String>,
    verifier: Option<String>,
    /// Where the browser goes after the login: a path (and query) on this site, never more.
    original: String,
    redirect_uri: String,
    started: f64,
}

/// The cookie of the attempt whose state is `state`.
fn attempt_cookie(base: &str, state: &str) -> String {
    let short = &state[..state.len().min(16)];
    format!("{base}_login_{short}")
}

fn restarts_cookie(base: &str) -> String {
    format!("{base}_restarts")
}

/// Whether cookie `name` is one of this route's own (session chunks, login attempts,
/// restart count): those never reach the upstream.
pub fn is_ours(name: &[u8], base: &str) -> bool {
    if is_chunk_of(name, base) {
        return true;
    }
    name.strip_prefix(base.as_bytes())
        .is_some_and(|rest| rest.starts_with(b"_login_") || rest == b"_restarts")
}

fn random_b64(rng: &SystemRandom, n: usize) -> Result<String, ProxyError> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes[..n])
        .map_err(|_| ProxyError::LoginUnavailable("no randomness available".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(&bytes[..n]))
}

/// The request's `Cookie` header values.
fn cookie_values<'a>(req: &'a Request<'a>) -> impl Iterator<Item = &'a [u8]> + Clone + 'a {
    header_values(req.buf, req.headers, b"cookie")
}

fn header_value<'a>(req: &'a Request<'a>, name: &'a str) -> Option<&'a [u8]> {
    header_values(req.buf, req.headers, name.as_bytes()).next()
}

/// SPEC 2.5: what a browser marks as not a navigation gets a 401, never a login redirect, so
/// background fetches (XHR, `fetch`, a favicon after logout) never start a login.
fn is_background(req: &Request<'_>) -> bool {
    let fetch_mode = header_value(req, "sec-fetch-mode");
    fetch_mode.is_some_and(|m| !m.eq_ignore_ascii_case(b"navigate"))
        || header_value(req, "x-requested-with")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"XMLHttpRequest"))
}

/// `scheme://host` of this request as the browser sees it: forwarding headers count only
/// from trusted peers.
fn origin(req: &Request<'_>) -> Result<String, ProxyError> {
    let mut scheme = if req.tls { "https" } else { "http" };
    let mut host = req.head.host.map(|h| h.get(req.buf));
    if req.trusted {
        if let Some(p) = header_value(req, "x-forwarded-proto") {
            let p = p.split(|&b| b == b',').next().unwrap_or(p).trim_ascii();
            if p.eq_ignore_ascii_case(b"https") {
                scheme = "https";
            } else if p.eq_ignore_ascii_case(b"http") {
                scheme = "http";
            }
        }
        if let Some(h) = header_value(req, "x-forwarded-host") {
            let h = h.split(|&b| b == b',').next().unwrap_or(h).trim_ascii();
            if !h.is_empty() && h.iter().all(|&b| b.is_ascii_graphic()) {
                host = Some(h);
            }
        }
    }
    let host = host
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or(ProxyError::BadRequest("a login needs a Host"))?;
    Ok(format!("{scheme}://{host}"))
}

/// The callback URI for a request to `path`: the configured one (made absolute), else the path
/// plus [`CALLBACK_SUFFIX`].
fn redirect_uri(p: &OidcPlugin, req: &Request<'_>, path: &[u8]) -> Result<String, ProxyError> {
    match p.cfg.redirect_uri.as_deref() {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => Ok(u.to_string()),
        Some(u) => Ok(format!("{}{u}", origin(req)?)),
        None => {
            let path = std::str::from_utf8(path).map_err(|_| ProxyError::BadRequest("path"))?;
            let base = path.strip_suffix('/').unwrap_or(path);
            Ok(format!("{}{base}{CALLBACK_SUFFIX}", origin(req)?))
        }
    }
}

/// The path of a configured `redirect_uri` (absolute or relative), without its query: what
/// callbacks arrive at. Compiled once per route.
pub fn callback_path(redirect_uri: &str) -> Box<str> {
    let path = match redirect_uri.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => redirect_uri,
    };
    path.split('?').next().unwrap_or(path).into()
}

/// Whether `path` is this route's callback.
fn is_callback(p: &OidcPlugin, path: &[u8]) -> bool {
    match p.callback_path.as_deref() {
        Some(configured) => path == configured.as_bytes(),
        None => path.ends_with(CALLBACK_SUFFIX.as_bytes()),
    }
}

fn attrs<'a>(p: &'a OidcPlugin, req: &Request<'_>, max_age: Option<u64>) -> CookieAttrs<'a> {
    CookieAttrs {
        path: &p.cfg.session.cookie_path,
        same_site: &p.cfg.session.cookie_same_site,
        secure: req.tls,
        max_age,
    }
}

fn key(p: &OidcPlugin) -> Result<&SessionKey, ProxyError> {
    match &p.session_key {
        Ok(k) => Ok(k),
        Err(why) => Err(ProxyError::LoginUnavailable(why.to_string())),
    }
}

fn unavailable(e: impl std::fmt::Display) -> ProxyError {
    ProxyError::LoginUnavailable(e.to_string())
}

fn failed(kind: AuthKind, why: impl Into<String>) -> ProxyError {
    ProxyError::LoginFailed {
        kind,
        why: why.into(),
    }
}

/// The login flow's part of the access phase. `Ok(Some)` answers the request here (a redirect,
/// the callback, logout); `Ok(None)` lets it through, with the session in `ctx` when there is
/// one.
pub async fn access(
    p: &OidcPlugin,
    st: &CoreState,
    req: &Request<'_>,
    ctx: &mut Ctx,
) -> Result<Option<Reply>, ProxyError> {
    let now = now();
    if req.path == p.cfg.logout_path.as_bytes() {
        ctx.login_step = Some(LoginStep::Logout);
        return logout(p, st, req).await.map(Some);
    }
    if is_callback(p, req.path) {
        ctx.login_step = Some(LoginStep::Callback);
        return callback(p, st, req, now).await.map(Some);
    }
    let base = &p.cfg.session.cookie_name;
    let found = read_session(cookie_values(req), base, |n| is_ours(n, base));
    ctx.cookies_only_ours = !found.foreign;
    let old_chunks = found.chunks;
    if let Some(sealed) = &found.value {
        if let Some(session) = current_session(p, st, sealed, old_chunks, now, ctx).await? {
            ctx.session = Some(session);
            return Ok(None);
        }
    }
    match p.cfg.unauth_action {
        super::config::UnauthAction::Pass => return Ok(None),
        super::config::UnauthAction::Deny => return Err(p.missing()),
        super::config::UnauthAction::Auth if is_background(req) => return Err(p.missing()),
        super::config::UnauthAction::Auth => {}
    }
    ctx.login_step = Some(LoginStep::Redirect);
    start_login(p, req, now, old_chunks, None).await.map(Some)
}

/// The session in `sealed`, if it is ours and still valid; refreshed when its access token
/// expired and the route renews them, re-sealed when its idle or rolling clock needs a push
/// (the new cookie goes out with the response).
async fn current_session(
    p: &OidcPlugin,
    st: &CoreState,
    sealed: &[u8],
    old_chunks: usize,
    now: f64,
    ctx: &mut Ctx,
) -> Result<Option<Rc<Session>>, ProxyError> {
    let base = &p.cfg.session.cookie_name;
    let Ok(key) = &p.session_key else {
        return Ok(None);
    };
    let cached = st.sessions.borrow_mut().get(base, sealed);
    let session = match cached {
        Some(s) => s,
        None => {
            // A tampered, garbled or old-key cookie is simply no session: a fresh login.
            let Some(s) = Session::open(key, base, sealed) else {
                return Ok(None);
            };
            let s = Rc::new(s);
            st.sessions.borrow_mut().insert(base, sealed, s.clone());
            s
        }
    };
    let cfg = &p.cfg.session;
    if session.expired(
        now,
        cfg.idling_timeout,
        cfg.rolling_timeout,
        cfg.absolute_timeout,
    ) {
        return Ok(None);
    }
    // `expires_in` was counted on our own clock, so no skew allowance applies.
    let access_expired = session.access_expires_at.is_some_and(|exp| now >= exp);
    if access_expired {
        if !p.cfg.renew_access_token_on_expiry || session.refresh_token.is_none() {
            return Ok(None);
        }
        return match refresh(p, st, sealed, &session, now).await {
            Some((renewed, cookie)) => {
                ctx.set_cookies =
                    set_cookie_values(base, &cookie, &cookie_attrs(p, ctx), old_chunks);
                Ok(Some(renewed))
            }
            // A failed refresh is no session: the request is unauthenticated.
            None => Ok(None),
        };
    }
    if needs_push(&session, now, cfg.idling_timeout, cfg.rolling_timeout) {
        let mut pushed = (*session).clone();
        pushed.last_seen = now;
        pushed.renewed_at = now;
        let cookie = pushed.seal(key, base);
        let pushed = Rc::new(pushed);
        st.sessions
            .borrow_mut()
            .insert(base, cookie.as_bytes(), pushed.clone());
        ctx.set_cookies = set_cookie_values(base, &cookie, &cookie_attrs(p, ctx), old_chunks);
        return Ok(Some(pushed));
    }
    Ok(Some(session))
}

/// Session cookies set outside the request's own view (refresh, push) use the secure flag
/// of the connection the context was made for.
fn cookie_attrs<'a>(p: &'a OidcPlugin, ctx: &Ctx) -> CookieAttrs<'a> {
    CookieAttrs {
        path: &p.cfg.session.cookie_path,
        same_site: &p.cfg.session.cookie_same_site,
        secure: ctx.tls,
        max_age: None,
    }
}

/// Re-seal a session only when its idle or rolling clock is a quarter gone: sealing on every
/// request would cost an encryption each time and defeat the per-core cache.
fn needs_push(s: &Session, now: f64, idle: Duration, rolling: Duration) -> bool {
    let quarter = |d: Duration| d.as_secs_f64() / 4.0;
    (!idle.is_zero() && now - s.last_seen > quarter(idle))
        || (!rolling.is_zero() && now - s.renewed_at > quarter(rolling))
}

/// Refresh one session's access token; concurrent requests of the same session on this core
/// wait for the one refresh in flight, and requests that still carry the old cookie shortly
/// after reuse its outcome. Returns the new session and its sealed cookie.
async fn refresh(
    p: &OidcPlugin,
    st: &CoreState,
    sealed: &[u8],
    session: &Session,
    now: f64,
) -> Option<(Rc<Session>, String)> {
    let id: [u8; 32] = digest(&SHA256, sealed).as_ref().try_into().ok()?;
    let known = st
        .refreshes
        .borrow()
        .get(&id)
        .filter(|(started, _)| now - *started < REFRESH_MEMO_SECS)
        .map(|(_, rx)| rx.clone());
    if let Some(mut rx) = known {
        let done = rx.wait_for(Option::is_some).await.ok()?;
        return done.clone().flatten();
    }
    let (tx, rx) = tokio::sync::watch::channel(None);
    {
        let mut flights = st.refreshes.borrow_mut();
        if flights.len() >= MAX_REFRESH_MEMO {
            flights.retain(|_, (started, _)| now - *started < REFRESH_MEMO_SECS);
        }
        flights.insert(id, (now, rx));
    }
    let result = refresh_now(p, st, session, now).await;
    let _ = tx.send(Some(result.clone()));
    result
}

/// How long the outcome of a refresh answers requests still carrying the old cookie.
const REFRESH_MEMO_SECS: f64 = 60.0;
/// Refresh outcomes remembered per core before old ones are pruned.
const MAX_REFRESH_MEMO: usize = 1024;

async fn refresh_now(
    p: &OidcPlugin,
    st: &CoreState,
    session: &Session,
    now: f64,
) -> Option<(Rc<Session>, String)> {
    let key = p.session_key.as_ref().ok()?;
    let endpoint = p
        .provider
        .state
        .load()
        .discovery
        .as_ref()?
        .token_endpoint
        .clone()?;
    let answer = exchange(
        p,
        endpoint,
        Grant::Refresh {
            refresh_token: session.refresh_token.clone()?,
        },
    )
    .await
    .map_err(|e| tracing::info!(reason = %e, "session refresh failed"))
    .ok()?;
    let mut renewed = session.clone();
    renewed.access_token = answer.access_token;
    renewed.access_expires_at = answer.expires_in.map(|s| now + s);
    if let Some(rt) = answer.refresh_token {
        renewed.refresh_token = Some(rt);
    }
    if let Some(id_token) = answer.id_token {
        // A refreshed id token is taken only when it checks out; the old claims stay otherwise.
        if let Ok(claims) = check_id_token(p, &id_token, None, now).await {
            renewed.id_token = id_token;
            renewed.id_claims = claims;
        }
    }
    renewed.last_seen = now;
    renewed.renewed_at = now;
    let cookie = renewed.seal(key, &p.cfg.session.cookie_name);
    let renewed = Rc::new(renewed);
    st.sessions.borrow_mut().insert(
        &p.cfg.session.cookie_name,
        cookie.as_bytes(),
        renewed.clone(),
    );
    Some((renewed, cookie))
}

/// Call the token endpoint with this route's client credentials.
async fn exchange(p: &OidcPlugin, endpoint: String, grant: Grant) -> Result<TokenAnswer, IdpError> {
    let rx = p.idp.token(TokenRequest {
        endpoint,
        client: client_auth(p),
        grant,
        ssl_verify: p.cfg.ssl_verify,
        timeout: p.cfg.timeout,
    });
    await_idp(p, rx).await
}

fn client_auth(p: &OidcPlugin) -> ClientAuth {
    ClientAuth {
        client_id: p.cfg.client_id.clone(),
        client_secret: p.cfg.client_secret.clone(),
        method: p.cfg.token_endpoint_auth_method,
    }
}

/// Wait for an IdP-thread answer, bounded here too: the thread enforces `timeout`, but a
/// worker must never wait on it unbounded.
async fn await_idp<T>(
    p: &OidcPlugin,
    rx: tokio::sync::oneshot::Receiver<Result<T, IdpError>>,
) -> Result<T, IdpError> {
    let guard = p.cfg.timeout + Duration::from_secs(1);
    match monoio::time::timeout(guard, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(IdpError::Invalid(
            crate::idp::Endpoint::Token,
            "the IdP thread is gone".into(),
        )),
        Err(_) => Err(IdpError::TimedOut(crate::idp::Endpoint::Token)),
    }
}

/// The discovery document, waiting once for a first fetch.
async fn discovery(p: &OidcPlugin) -> Result<Arc<crate::idp::Discovery>, ProxyError> {
    if let Some(d) = &p.provider.state.load().discovery {
        return Ok(d.clone());
    }
    let rx = p.idp.refresh_keys(&p.provider);
    let _ = monoio::time::timeout(p.cfg.timeout, rx).await;
    let state = p.provider.state.load();
    match (&state.discovery, &state.problem) {
        (Some(d), _) => Ok(d.clone()),
        (None, Some(problem)) => Err(unavailable(format!("discovery failed: {problem}"))),
        (None, None) => Err(unavailable("discovery has not answered yet")),
    }
}

/// Answer with a redirect to the authorization endpoint, starting a new attempt.
async fn start_login(
    p: &OidcPlugin,
    req: &Request<'_>,
    now: f64,
    old_chunks: usize,
    restarts: Option<(u32, String)>,
) -> Result<Reply, ProxyError> {
    let key = key(p)?;
    let d = discovery(p).await?;
    let Some(auth_endpoint) = d.authorization_endpoint.as_deref() else {
        return Err(unavailable(
            "the discovery document names no authorization_endpoint",
        ));
    };
    let rng = SystemRandom::new();
    let state = random_b64(&rng, 32)?;
    let nonce = if p.cfg.use_nonce {
        Some(random_b64(&rng, 32)?)
    } else {
        None
    };
    let verifier = if p.cfg.use_pkce {
        Some(random_b64(&rng, 32)?)
    } else {
        None
    };
    let (original, callback_for) = match restarts {
        Some((_, ref original)) => (original.clone(), original.clone()),
        None => {
            let query = std::str::from_utf8(req.head.query.get(req.buf)).unwrap_or("");
            let path = std::str::from_utf8(req.path).unwrap_or("/");
            (format!("{path}{query}"), path.to_string())
        }
    };
    let callback_path = callback_for.split('?').next().unwrap_or("/").as_bytes();
    let redirect = redirect_uri(p, req, callback_path)?;
    let challenge = verifier
        .as_ref()
        .map(|v| URL_SAFE_NO_PAD.encode(digest(&SHA256, v.as_bytes())));
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", &p.cfg.client_id),
        ("scope", &p.cfg.scope),
        ("redirect_uri", &redirect),
        ("state", &state),
    ];
    if let Some(n) = &nonce {
        params.push(("nonce", n));
    }
    if let Some(c) = &challenge {
        params.push(("code_challenge", c));
        params.push(("code_challenge_method", "S256"));
    }
    for (k, v) in &p.cfg.authorization_params {
        params.push((k, v));
    }
    let location = form::url_with_query(auth_endpoint, params);
    let attempt = Attempt {
        state: state.clone(),
        nonce,
        verifier,
        original,
        redirect_uri: redirect,
        started: now,
    };
    let plain = serde_json::to_vec(&attempt).map_err(unavailable)?;
    let base = &p.cfg.session.cookie_name;
    let name = attempt_cookie(base, &state);
    let mut reply = Reply {
        status: 302,
        headers: Vec::with_capacity(6),
        body: std::borrow::Cow::Borrowed(b""),
    }
    .with_header("Location", location)
    .with_header("Cache-Control", "no-store");
    let login_attrs = CookieAttrs {
        path: "/",
        same_site: "Lax",
        secure: req.tls,
        max_age: Some(ATTEMPT_TTL),
    };
    for v in set_cookie_values(&name, &key.seal(name.as_bytes(), &plain), &login_attrs, 0) {
        reply = reply.with_header("Set-Cookie", v);
    }
    if let Some((n, _)) = restarts {
        let restart_attrs = CookieAttrs {
            max_age: Some(ATTEMPT_TTL),
            ..login_attrs
        };
        for v in set_cookie_values(&restarts_cookie(base), &n.to_string(), &restart_attrs, 0) {
            reply = reply.with_header("Set-Cookie", v);
        }
    }
    if old_chunks > 0 {
        for v in clear_cookie_values(base, &attrs(p, req, None), old_chunks) {
            reply = reply.with_header("Set-Cookie", v);
        }
    }
    Ok(reply)
}

/// The callback: check the attempt, exchange the code, check the id token, fetch userinfo,
/// seal the session, and send the browser back where it started.
async fn callback(
    p: &OidcPlugin,
    st: &CoreState,
    req: &Request<'_>,
    now: f64,
) -> Result<Reply, ProxyError> {
    let _ = st;
    let query = req.head.query.get(req.buf);
    if let Some(error) = form::param(query, "error") {
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return Err(failed(
            AuthKind::Inactive,
            format!("the identity provider refused the sign-in ({error})"),
        ));
    }
    let key = key(p)?;
    let base = &p.cfg.session.cookie_name;
    let state = form::param(query, "state").unwrap_or_default();
    let attempt = (!state.is_empty())
        .then(|| {
            let name = attempt_cookie(base, &state);
            let (sealed, _) = read_chunked(cookie_values(req), &name)?;
            let plain = key.open(name.as_bytes(), sealed.as_bytes())?;
            serde_json::from_slice::<Attempt>(&plain).ok()
        })
        .flatten()
        .filter(|a| a.state == state && now - a.started <= ATTEMPT_TTL as f64);
    let Some(attempt) = attempt else {
        return restart(p, req, now).await;
    };
    let Some(code) = form::param(query, "code").filter(|c| !c.is_empty()) else {
        return restart(p, req, now).await;
    };
    let d = discovery(p).await?;
    // RFC 9207: an `iss` on the callback must be the provider we sent the browser to.
    if let Some(iss) = form::param(query, "iss") {
        if iss != d.issuer && !p.cfg.valid_issuers.contains(&iss) {
            return Err(failed(
                AuthKind::BadIssuer,
                "the callback came from another identity provider",
            ));
        }
    }
    let Some(token_endpoint) = d.token_endpoint.clone() else {
        return Err(unavailable(
            "the discovery document names no token_endpoint",
        ));
    };
    let answer = exchange(
        p,
        token_endpoint,
        Grant::Code {
            code,
            redirect_uri: attempt.redirect_uri.clone(),
            code_verifier: attempt.verifier.clone(),
        },
    )
    .await
    .map_err(|e| match e {
        IdpError::OAuth(..) => failed(
            AuthKind::Inactive,
            format!("the identity provider did not accept the sign-in: {e}"),
        ),
        other => unavailable(other),
    })?;
    let Some(id_token) = answer.id_token.clone() else {
        return Err(unavailable(
            "the token endpoint answered without an id_token",
        ));
    };
    let id_claims = check_id_token(p, &id_token, attempt.nonce.as_deref(), now).await?;
    let userinfo = match d.userinfo_endpoint.clone() {
        Some(endpoint) if p.cfg.set_userinfo_header => {
            let rx = p.idp.userinfo(
                endpoint,
                answer.access_token.clone(),
                p.cfg.ssl_verify,
                p.cfg.timeout,
            );
            let body = await_idp(p, rx).await.map_err(unavailable)?;
            // OIDC Core 5.3.2: userinfo about another subject must not be used.
            let sub = |json: &[u8]| {
                serde_json::from_slice::<Value>(json)
                    .ok()
                    .and_then(|v| v.get("sub").and_then(Value::as_str).map(str::to_owned))
            };
            if sub(&body).is_none() || sub(&body) != sub(id_claims.as_bytes()) {
                return Err(failed(
                    AuthKind::Malformed,
                    "userinfo is about another subject than the id token",
                ));
            }
            Some(String::from_utf8(body).map_err(|_| unavailable("userinfo is not UTF-8"))?)
        }
        _ => None,
    };
    let session = Session {
        access_token: answer.access_token,
        access_expires_at: answer.expires_in.map(|s| now + s),
        refresh_token: answer.refresh_token,
        id_token,
        id_claims,
        userinfo,
        created_at: now,
        last_seen: now,
        renewed_at: now,
        headers: Default::default(),
    };
    let cookie = session.seal(key, base);
    let old_chunks = read_chunked(cookie_values(req), base).map_or(0, |(_, n)| n);
    let mut reply = Reply {
        status: 302,
        headers: Vec::with_capacity(8),
        body: std::borrow::Cow::Borrowed(b""),
    }
    .with_header("Location", attempt.original)
    .with_header("Cache-Control", "no-store");
    for v in set_cookie_values(base, &cookie, &attrs(p, req, None), old_chunks) {
        reply = reply.with_header("Set-Cookie", v);
    }
    let done = CookieAttrs {
        path: "/",
        same_site: "Lax",
        secure: req.tls,
        max_age: None,
    };
    for v in clear_cookie_values(&attempt_cookie(base, &state), &done, 1) {
        reply = reply.with_header("Set-Cookie", v);
    }
    if read_chunked(cookie_values(req), &restarts_cookie(base)).is_some() {
        for v in clear_cookie_values(&restarts_cookie(base), &done, 1) {
            reply = reply.with_header("Set-Cookie", v);
        }
    }
    Ok(reply)
}

/// A callback without a usable attempt (stale, unknown, from another browser): start over,
/// at most [`MAX_RESTARTS`] times in a row, then say so.
async fn restart(p: &OidcPlugin, req: &Request<'_>, now: f64) -> Result<Reply, ProxyError> {
    let base = &p.cfg.session.cookie_name;
    let done: u32 = read_chunked(cookie_values(req), &restarts_cookie(base))
        .and_then(|(v, _)| v.parse().ok())
        .unwrap_or(0);
    if done >= MAX_RESTARTS {
        return Err(ProxyError::LoginStateLost);
    }
    // Back to where the callback hangs from: the configured redirect URI's site root, or the
    // protected path the default callback was derived from.
    let original = match p.cfg.redirect_uri {
        Some(_) => "/".to_string(),
        None => {
            let path = std::str::from_utf8(req.path).unwrap_or("/");
            let base = path.strip_suffix(CALLBACK_SUFFIX).unwrap_or("/");
            if base.is_empty() { "/" } else { base }.to_string()
        }
    };
    start_login(p, req, now, 0, Some((done + 1, original))).await
}

/// Check an id token (OIDC Core 3.1.3.7): signature with the provider's keys, `iss`, `aud`
/// (and `azp` with several audiences), `exp`, `iat`, and the attempt's `nonce`. Returns its
/// claims as JSON text.
async fn check_id_token(
    p: &OidcPlugin,
    token: &str,
    nonce: Option<&str>,
    now: f64,
) -> Result<String, ProxyError> {
    let bad = |kind, why: &str| failed(kind, format!("invalid id token: {why}"));
    let parsed =
        jwt::parse(token.as_bytes(), None).map_err(|e| bad(AuthKind::Malformed, &e.to_string()))?;
    let verify = || {
        let state = p.provider.state.load();
        jwt::verify_signature(&parsed, p.pinned.as_deref().unwrap_or(&state.keys))
    };
    match verify() {
        Ok(()) => {}
        Err(jwt::TokenError::UnknownKid) if p.pinned.is_none() => {
            let rx = p.idp.refresh_keys(&p.provider);
            let _ = monoio::time::timeout(p.cfg.timeout, rx).await;
            verify().map_err(|e| bad(AuthError::kind_of(&e), &e.to_string()))?;
        }
        Err(e) => return Err(bad(AuthError::kind_of(&e), &e.to_string())),
    }
    let claims: Value = serde_json::from_slice(&parsed.payload)
        .map_err(|_| bad(AuthKind::Malformed, "claims are not JSON"))?;
    let state = p.provider.state.load();
    let issuer = state.discovery.as_ref().map(|d| d.issuer.as_str());
    let iss = claims.get("iss").and_then(Value::as_str);
    let iss_ok = if p.cfg.valid_issuers.is_empty() {
        iss.is_some() && iss == issuer
    } else {
        iss.is_some_and(|i| p.cfg.valid_issuers.iter().any(|v| v == i))
    };
    if !iss_ok {
        return Err(bad(
            AuthKind::BadIssuer,
            "issuer is not the identity provider",
        ));
    }
    let client = p.cfg.client_id.as_str();
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&client) {
        return Err(bad(
            AuthKind::BadAudience,
            "audience does not name this client",
        ));
    }
    let azp = claims.get("azp").and_then(Value::as_str);
    if (audiences.len() > 1 || azp.is_some()) && azp != Some(client) {
        return Err(bad(
            AuthKind::BadAudience,
            "authorized party is not this client",
        ));
    }
    let slack = p.cfg.iat_slack.as_secs_f64();
    match claims.get("exp").and_then(Value::as_f64) {
        Some(exp) if now <= exp + slack => {}
        Some(_) => return Err(bad(AuthKind::Expired, "expired")),
        None => return Err(bad(AuthKind::Malformed, "no exp")),
    }
    match claims.get("iat").and_then(Value::as_f64) {
        Some(iat) if iat <= now + slack => {}
        Some(_) => return Err(bad(AuthKind::NotYetValid, "issued in the future")),
        None => return Err(bad(AuthKind::Malformed, "no iat")),
    }
    if let Some(want) = nonce {
        if claims.get("nonce").and_then(Value::as_str) != Some(want) {
            return Err(bad(
                AuthKind::BadSignature,
                "nonce does not match the login attempt",
            ));
        }
    }
    // The route's own claim rules (issuers, audience rule, scopes) hold for sessions too.
    let audience_claim = p.audience_claim();
    let rules = jwt::Claims::parse(&parsed.payload, Some(audience_claim))
        .map_err(|e| bad(AuthKind::Malformed, &e.to_string()))?;
    let discovery_issuer = issuer.ok_or("discovery has not answered yet");
    jwt::check_claims(
        &rules,
        &p.cfg.claim_rules(),
        discovery_issuer,
        now,
        MissingIssuer::Refused,
    )
    .map_err(|e| bad(AuthError::kind_of(&e), &e.to_string()))?;
    String::from_utf8(parsed.payload.to_vec())
        .map_err(|_| bad(AuthKind::Malformed, "claims are not UTF-8"))
}

/// Logout: clear the session everywhere it lives, revoke its tokens when asked, and send the
/// browser to the provider's end-session endpoint (or the configured page).
async fn logout(p: &OidcPlugin, st: &CoreState, req: &Request<'_>) -> Result<Reply, ProxyError> {
    let base = &p.cfg.session.cookie_name;
    let found = read_chunked(cookie_values(req), base);
    let chunks = found.as_ref().map_or(1, |(_, n)| (*n).max(1));
    let session = match (&found, &p.session_key) {
        (Some((sealed, _)), Ok(key)) => st
            .sessions
            .borrow_mut()
            .get(base, sealed.as_bytes())
            .or_else(|| Session::open(key, base, sealed.as_bytes()).map(Rc::new)),
        _ => None,
    };
    let state = p.provider.state.load();
    let d = state.discovery.clone();
    if let (Some(s), true) = (&session, p.cfg.revoke_tokens_on_logout) {
        if let Some(endpoint) = d.as_ref().and_then(|d| d.revocation_endpoint.clone()) {
            let mut tokens = vec![(s.access_token.clone(), "access_token")];
            if let Some(rt) = &s.refresh_token {
                tokens.insert(0, (rt.clone(), "refresh_token"));
            }
            for (token, hint) in tokens {
                let rx = p.idp.revoke(
                    endpoint.clone(),
                    client_auth(p),
                    token,
                    hint,
                    p.cfg.ssl_verify,
                    p.cfg.timeout,
                );
                if let Err(e) = await_idp(p, rx).await {
                    tracing::info!(reason = %e, hint, "token revocation at logout failed");
                }
            }
        }
    }
    let post_logout = match p.cfg.post_logout_redirect_uri.as_deref() {
        Some(u) if u.starts_with('/') => Some(format!("{}{u}", origin(req)?)),
        Some(u) => Some(u.to_string()),
        None => None,
    };
    let end_session = d.as_ref().and_then(|d| d.end_session_endpoint.clone());
    let mut reply = match (end_session, &post_logout) {
        (Some(endpoint), _) => {
            let mut params: Vec<(&str, &str)> = Vec::new();
            if let Some(s) = &session {
                params.push(("id_token_hint", &s.id_token));
            }
            if let Some(u) = &post_logout {
                params.push(("post_logout_redirect_uri", u));
                // oidc-provider honours the redirect only when the request names the client.
                params.push(("client_id", &p.cfg.client_id));
            }
            Reply {
                status: 302,
                headers: Vec::new(),
                body: std::borrow::Cow::Borrowed(b""),
            }
            .with_header("Location", form::url_with_query(&endpoint, params))
        }
        (None, Some(u)) => Reply {
            status: 302,
            headers: Vec::new(),
            body: std::borrow::Cow::Borrowed(b""),
        }
        .with_header("Location", u.clone()),
        (None, None) => Reply {
            status: 200,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: std::borrow::Cow::Borrowed(b"Logged out\n"),
        },
    };
    reply = reply.with_header("Cache-Control", "no-store");
    for v in clear_cookie_values(base, &attrs(p, req, None), chunks) {
        reply = reply.with_header("Set-Cookie", v);
    }
    Ok(reply)
}

/// Per-core refreshes by session cookie, with when they started: later requests of the session
/// wait on the first, or take its outcome.
pub type Refreshes = HashMap<[u8; 32], (f64, RefreshOutcome)>;

/// Resolves to the refreshed session and cookie, or `None` when the refresh failed.
pub type RefreshOutcome = tokio::sync::watch::Receiver<Option<Option<(Rc<Session>, String)>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_cookies_are_recognised_by_name() {
        for name in [
            "session",
            "session_2",
            "session_login_abc",
            "session_restarts",
        ] {
            assert!(is_ours(name.as_bytes(), "session"), "{name}");
        }
        for name in [
            "sessions",
            "session_x",
            "other",
            "session_loginx",
            "Session",
        ] {
            assert!(!is_ours(name.as_bytes(), "session"), "{name}");
        }
    }

    #[test]
    fn callback_paths_of_configured_redirect_uris() {
        assert_eq!(&*callback_path("https://app.test/cb?x=1"), "/cb");
        assert_eq!(&*callback_path("https://app.test"), "/");
        assert_eq!(&*callback_path("/a/callback"), "/a/callback");
    }

    #[test]
    fn restarts_go_back_to_the_protected_path() {
        assert_eq!(
            attempt_cookie("s", "abcdefghijklmnopqrstuvwxyz"),
            "s_login_abcdefghijklmnop"
        );
        assert_eq!(restarts_cookie("s"), "s_restarts");
    }
}
