//! The `openid-connect` plugin on the request path: find the bearer token, validate it (cache,
//! then ready keys), and say which identity headers go upstream.

pub mod cache;
pub mod config;
pub mod jwt;
pub mod keys;

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::error::ProxyError;
use crate::idp::{Idp, Provider};
use crate::server::h1::{HeaderIdx, HeaderKind, Span};
use crate::server::worker::Worker;
use cache::{token_key, Verified};
use config::{OidcConfig, UnauthAction};
use jwt::TokenError;
use keys::KeySet;

/// How long a token without `exp` stays cached.
const NO_EXP_TTL: f64 = 300.0;

/// The plugin as compiled into a route.
#[derive(Debug, Clone)]
pub struct OidcPlugin {
    /// The checked options.
    pub cfg: OidcConfig,
    /// Distinguishes this configuration in the per-core caches, so that a changed route never
    /// reuses what an older configuration accepted.
    pub instance: u64,
    /// The identity provider.
    pub provider: Arc<Provider>,
    idp: Idp,
    /// The configured `public_key`, as a key set.
    pinned: Option<Arc<KeySet>>,
    /// `Bearer realm="…"`, the challenge for requests without a token.
    challenge: Arc<str>,
}

impl OidcPlugin {
    /// Compile a checked configuration (control plane).
    pub fn new(cfg: OidcConfig, idp: &Idp) -> OidcPlugin {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let provider = idp.provider(&cfg);
        let pinned = cfg
            .public_key
            .clone()
            .map(|k| Arc::new(KeySet::pinned_to(k)));
        let challenge = format!("Bearer realm=\"{}\"", quoted(&cfg.realm)).into();
        OidcPlugin {
            instance: NEXT.fetch_add(1, Ordering::Relaxed),
            provider,
            idp: idp.clone(),
            pinned,
            challenge,
            cfg,
        }
    }
}

fn quoted(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .collect()
}

/// Why authentication failed, with what the answer must carry.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token (401 with a bare challenge).
    #[error("no bearer token")]
    Missing {
        /// The challenge.
        challenge: Arc<str>,
    },
    /// `Authorization` that is not `<scheme> <credentials>` (400).
    #[error("malformed Authorization header")]
    MalformedHeader,
    /// A refused token (401, or 403 for scope/audience).
    #[error("invalid token: {reason}")]
    Invalid {
        /// The realm, for the challenge.
        realm: Arc<str>,
        /// Why.
        reason: TokenError,
    },
}

impl AuthError {
    /// `(status, WWW-Authenticate, JSON body)` for this failure.
    pub fn answer(&self) -> (u16, Option<String>, String) {
        match self {
            AuthError::Missing { challenge } => (
                401,
                Some(challenge.to_string()),
                r#"{"error_msg":"401 Unauthorized"}"#.into(),
            ),
            AuthError::MalformedHeader => (
                400,
                None,
                r#"{"error_msg":"400 Bad Request: malformed Authorization header"}"#.into(),
            ),
            AuthError::Invalid { reason, .. } if reason.is_forbidden() => (
                403,
                None,
                serde_json::json!({ "error": reason.to_string() }).to_string(),
            ),
            AuthError::Invalid { realm, reason } => {
                let why = quoted(&reason.to_string());
                (
                    401,
                    Some(format!("Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{why}\"")),
                    serde_json::json!({ "error": "invalid_token", "error_description": why }).to_string(),
                )
            }
        }
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

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Authenticate a request. `Ok(None)`: let it through without identity (`unauth_action: pass`).
pub async fn authenticate(
    p: &OidcPlugin,
    w: &Worker,
    buf: &[u8],
    headers: &[HeaderIdx],
) -> Result<Option<Identity>, ProxyError> {
    let cfg = &p.cfg;
    let token = if cfg.takes_bearer() {
        bearer_token(buf, headers)?
    } else {
        None
    };
    let Some(token) = token else {
        return match (cfg.bearer_only, cfg.unauth_action) {
            (false, UnauthAction::Pass) => Ok(None),
            _ => Err(AuthError::Missing {
                challenge: p.challenge.clone(),
            }
            .into()),
        };
    };
    let raw = token.get(buf);
    let now = now();
    let key = token_key(p.instance, raw);
    let cached = w
        .tokens
        .borrow_mut()
        .get(&key, now)
        .map(|v| v.userinfo.clone());
    let userinfo = match cached {
        Some(u) => u,
        None => {
            let v = validate(p, raw, now)
                .await
                .map_err(|reason| AuthError::Invalid {
                    realm: Arc::from(cfg.realm.as_str()),
                    reason,
                })?;
            let u = v.userinfo.clone();
            w.tokens.borrow_mut().insert(key, v);
            u
        }
    };
    Ok(Some(Identity {
        token,
        userinfo: cfg.set_userinfo_header.then_some(userinfo),
        set_access_token: cfg.set_access_token_header,
        in_authorization: cfg.access_token_in_authorization_header,
    }))
}

/// The token in `Authorization: Bearer <token>`; `None` when there is no bearer credential.
fn bearer_token(buf: &[u8], headers: &[HeaderIdx]) -> Result<Option<Span>, ProxyError> {
    let Some(h) = headers.iter().find(|h| h.kind == HeaderKind::Authorization) else {
        return Ok(None);
    };
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

/// Full validation of a token not in the cache.
async fn validate(p: &OidcPlugin, token: &[u8], now: f64) -> Result<Verified, TokenError> {
    let cfg = &p.cfg;
    let parsed = jwt::parse(token, cfg.token_signing_alg_values_expected.as_deref())?;
    let first = match &p.pinned {
        Some(keys) => jwt::verify_signature(&parsed, keys),
        None => jwt::verify_signature(&parsed, &p.provider.state.load().keys),
    };
    match first {
        Err(TokenError::UnknownKid) if p.pinned.is_none() => {
            // Maybe the IdP rotated its keys: one shared, rate-limited refresh, then look again.
            let rx = p.idp.refresh_keys(&p.provider);
            let _ = monoio::time::timeout(cfg.timeout, rx).await;
            let state = p.provider.state.load_full();
            match jwt::verify_signature(&parsed, &state.keys) {
                Err(TokenError::UnknownKid) if state.keys.is_empty() => {
                    return Err(TokenError::NoKeys(
                        state
                            .problem
                            .clone()
                            .unwrap_or_else(|| "the JWKS is empty".into()),
                    ))
                }
                r => r?,
            }
        }
        r => r?,
    }
    let claims: jwt::Claims =
        serde_json::from_slice(&parsed.payload).map_err(|_| TokenError::Malformed)?;
    let state = p.provider.state.load();
    let issuer = match (&state.discovery, &state.problem) {
        (Some(d), _) => Ok(d.issuer.as_str()),
        (None, Some(problem)) => Err(problem.as_str()),
        (None, None) => Err("discovery has not answered yet"),
    };
    jwt::check_claims(&claims, cfg, issuer, now)?;
    let expires_at = claims.exp.unwrap_or(now + NO_EXP_TTL);
    Ok(Verified {
        expires_at,
        userinfo: STANDARD.encode(&parsed.payload).into(),
    })
}
