//! Token introspection (RFC 7662): a per-core cache of answers, and one IdP call per token at a
//! time on each core however many requests carry it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::size_of;
use std::rc::Rc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tokio::sync::Notify;

use super::cache::{rc_str_bytes, CacheEntry, TokenCache, TokenKey};
use super::OidcPlugin;
use crate::idp::{IntrospectAnswer, IntrospectRequest};
use crate::jose::jwt::{self, Claims, MissingIssuer, TokenError};

/// What this core remembers of an introspection answer.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// `active: true`; shared, so a cache hit costs a reference count, not a copy.
    Active(Rc<Active>),
    /// `active: false` (kept briefly, so a flood of bad tokens is not a flood of IdP calls).
    Inactive {
        /// Unix time the entry dies.
        expires_at: f64,
    },
}

/// An active answer: what it says about the token, and what it sends upstream.
#[derive(Debug)]
pub struct Active {
    /// Unix time the entry dies.
    pub expires_at: f64,
    /// `X-Userinfo`: base64 of the introspection JSON.
    pub userinfo: Rc<str>,
    /// The claims every route sharing this answer checks on each request (issuer, audience,
    /// scopes, times), read as a JWT's are.
    pub claims: Claims,
}

impl CacheEntry for Verdict {
    fn expires_at(&self) -> f64 {
        match self {
            Verdict::Active(a) => a.expires_at,
            Verdict::Inactive { expires_at } => *expires_at,
        }
    }
    fn heap_bytes(&self) -> usize {
        match self {
            // The Rc's box (counts and `Active`), the userinfo text, the claims' contents.
            Verdict::Active(a) => {
                2 * size_of::<usize>()
                    + size_of::<Active>()
                    + rc_str_bytes(&a.userinfo)
                    + a.claims.heap_bytes()
            }
            Verdict::Inactive { .. } => 0,
        }
    }
}

/// One IdP call in progress on this core, which later requests for the same token wait for.
#[derive(Default)]
pub struct Flight {
    done: Notify,
    result: RefCell<Option<Result<Verdict, String>>>,
}

/// This core's introspection state.
pub struct Introspections {
    /// Answers by (endpoint, client, token) digest.
    pub cache: TokenCache<Verdict>,
    inflight: HashMap<TokenKey, Rc<Flight>>,
}

impl Introspections {
    /// State holding at most `capacity` answers and `max_bytes` bytes of them.
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Introspections {
            cache: TokenCache::new(capacity, max_bytes),
            inflight: HashMap::new(),
        }
    }
}

/// How long an answer may be cached, per the plugin's rules; `None`: not at all.
pub fn ttl(p: &OidcPlugin, answer: &IntrospectAnswer, now: f64) -> Option<f64> {
    let cfg = &p.cfg;
    if !answer.active {
        let neg = cfg.introspection_negative_ttl.as_secs_f64();
        return (neg > 0.0).then_some(now + neg);
    }
    let interval = cfg.introspection_interval.as_secs_f64();
    match (answer.exp, interval > 0.0) {
        (Some(exp), true) => Some(exp.min(now + interval)),
        (Some(exp), false) => Some(exp),
        (None, true) => Some(now + interval),
        (None, false) => None,
    }
}

/// Check a cached or fresh verdict against this route's rules, on every request: the answer is
/// shared by every route asking the same endpoint as the same client, and each has its own
/// `claim_validator` and `required_scopes`. `issuer` is the discovery issuer, or why it is not
/// known.
pub fn judge(
    p: &OidcPlugin,
    v: &Verdict,
    issuer: Result<&str, &str>,
    now: f64,
) -> Result<Rc<str>, TokenError> {
    match v {
        Verdict::Inactive { .. } => Err(TokenError::Inactive),
        Verdict::Active(a) => {
            jwt::check_claims(
                &a.claims,
                &p.cfg.claim_rules(),
                issuer,
                now,
                MissingIssuer::Accepted,
            )?;
            Ok(a.userinfo.clone())
        }
    }
}

/// Introspect `token` (not in the cache): join this core's call for it, or make one.
pub async fn introspect(
    p: &OidcPlugin,
    state: &RefCell<Introspections>,
    token: &[u8],
    key: TokenKey,
    now: f64,
) -> Result<Verdict, TokenError> {
    let existing = state.borrow().inflight.get(&key).cloned();
    if let Some(flight) = existing {
        let notified = flight.done.notified();
        if flight.result.borrow().is_none() {
            let _ =
                monoio::time::timeout(p.cfg.timeout + Duration::from_millis(500), notified).await;
        }
        return match flight.result.borrow().as_ref() {
            Some(Ok(v)) => Ok(v.clone()),
            Some(Err(e)) => Err(TokenError::IdpFailed(e.clone())),
            None => Err(TokenError::IdpFailed("introspection timed out".into())),
        };
    }
    let flight = Rc::new(Flight::default());
    state.borrow_mut().inflight.insert(key, flight.clone());
    let result = call(p, token, now).await;
    if let Ok((verdict, Some(_))) = &result {
        state.borrow_mut().cache.insert(key, verdict.clone(), now);
    }
    let result = result.map(|(v, _)| v);
    *flight.result.borrow_mut() = Some(result.clone());
    flight.done.notify_waiters();
    state.borrow_mut().inflight.remove(&key);
    result.map_err(TokenError::IdpFailed)
}

/// One introspection call through the IdP thread; the verdict and how long it may be cached.
async fn call(p: &OidcPlugin, token: &[u8], now: f64) -> Result<(Verdict, Option<f64>), String> {
    let cfg = &p.cfg;
    let endpoint = match cfg.introspection_endpoint.clone() {
        Some(e) => e,
        None => {
            if p.provider.state.load().discovery.is_none() {
                let _ = monoio::time::timeout(cfg.timeout, p.idp.refresh_keys(&p.provider)).await;
            }
            let state = p.provider.state.load();
            match (&state.discovery, &state.problem) {
                (Some(d), _) => d
                    .introspection_endpoint
                    .clone()
                    .ok_or("the IdP announces no introspection endpoint")?,
                (None, Some(problem)) => return Err(problem.clone()),
                (None, None) => return Err("discovery has not answered yet".into()),
            }
        }
    };
    let req = IntrospectRequest {
        endpoint,
        client_id: cfg.client_id.clone(),
        client_secret: cfg.client_secret.clone(),
        method: cfg.introspection_endpoint_auth_method,
        token: String::from_utf8_lossy(token).into_owned(),
        timeout: cfg.timeout,
        ssl_verify: cfg.ssl_verify,
    };
    let rx = p.idp.introspect(req);
    let answer = match monoio::time::timeout(cfg.timeout + Duration::from_millis(500), rx).await {
        Err(_) | Ok(Err(_)) => return Err("introspection timed out".into()),
        Ok(Ok(a)) => a.map_err(|e| e.to_string())?,
    };
    let until = ttl(p, &answer, now);
    let verdict = if answer.active {
        // Read once per answer, with the claim the namespace's routes name as their audience.
        let claims = Claims::parse(&answer.body, Some(p.audience_claim()))
            .map_err(|_| "introspection answer has a duplicate or mistyped claim".to_string())?;
        Verdict::Active(Rc::new(Active {
            expires_at: until.unwrap_or(now),
            userinfo: STANDARD.encode(&answer.body).into(),
            claims,
        }))
    } else {
        Verdict::Inactive {
            expires_at: until.unwrap_or(now),
        }
    };
    Ok((verdict, until))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idp::Idp;

    fn plugin(extra: serde_json::Value) -> OidcPlugin {
        let mut conf = serde_json::json!({"client_id": "c", "client_secret": "s", "bearer_only": true,
            "discovery": "http://127.0.0.1:9/.well-known/openid-configuration", "introspection_endpoint": "http://127.0.0.1:9/i"});
        conf.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let cfg =
            crate::plugins::openid_connect::config::check(conf, "p", &mut Vec::new()).unwrap();
        OidcPlugin::new(
            cfg,
            &crate::plugins::PluginEnv::new(Idp::start().unwrap(), std::env::temp_dir()),
        )
    }

    fn answer(active: bool, exp: Option<f64>) -> IntrospectAnswer {
        IntrospectAnswer {
            active,
            exp,
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn caching_rules() {
        let p = plugin(serde_json::json!({}));
        assert_eq!(ttl(&p, &answer(true, Some(1100.0)), 1000.0), Some(1100.0));
        assert_eq!(ttl(&p, &answer(true, None), 1000.0), None);
        assert_eq!(ttl(&p, &answer(false, None), 1000.0), Some(1005.0));
        let p = plugin(
            serde_json::json!({"introspection_interval": 30, "introspection_negative_ttl": 0}),
        );
        assert_eq!(ttl(&p, &answer(true, Some(1100.0)), 1000.0), Some(1030.0));
        assert_eq!(ttl(&p, &answer(true, None), 1000.0), Some(1030.0));
        assert_eq!(ttl(&p, &answer(false, None), 1000.0), None);
    }

    /// An active verdict for the answer `body`, read as `call` reads it for `p`.
    fn active(p: &OidcPlugin, body: serde_json::Value) -> Verdict {
        let body = body.to_string();
        Verdict::Active(Rc::new(Active {
            expires_at: f64::MAX,
            userinfo: STANDARD.encode(&body).into(),
            claims: Claims::parse(body.as_bytes(), Some(p.audience_claim())).unwrap(),
        }))
    }

    const ISS: Result<&str, &str> = Ok("https://idp");

    #[test]
    fn scopes_are_checked_on_every_use() {
        let p = plugin(serde_json::json!({"required_scopes": ["read", "write"]}));
        let v = |scope: serde_json::Value| active(&p, serde_json::json!({"scope": scope}));
        assert!(judge(&p, &v("read write admin".into()), ISS, 0.0).is_ok());
        assert!(judge(&p, &v(serde_json::json!(["write", "read"])), ISS, 0.0).is_ok());
        assert_eq!(
            judge(&p, &v("read".into()), ISS, 0.0),
            Err(TokenError::ScopeMissing)
        );
        assert_eq!(
            judge(&p, &Verdict::Inactive { expires_at: 0.0 }, ISS, 0.0),
            Err(TokenError::Inactive)
        );
    }

    #[test]
    fn audience_and_issuer_rules_apply_to_answers() {
        let p = plugin(serde_json::json!({"claim_validator": {
            "audience": {"required": true, "match_with_client_id": true}}}));
        let judged = |body: serde_json::Value| judge(&p, &active(&p, body), ISS, 0.0);
        assert!(judged(serde_json::json!({"aud": "c"})).is_ok());
        assert!(judged(serde_json::json!({"aud": ["x", "c"], "iss": "https://idp"})).is_ok());
        assert_eq!(
            judged(serde_json::json!({"aud": "other"})),
            Err(TokenError::AudienceMismatch)
        );
        assert_eq!(
            judged(serde_json::json!({"client_id": "c"})),
            Err(TokenError::AudienceMissing)
        );
        assert_eq!(
            judged(serde_json::json!({"aud": "c", "iss": "https://evil"})),
            Err(TokenError::WrongIssuer)
        );
        // An answer that names no issuer speaks for the endpoint's own...
        assert!(judge(
            &p,
            &active(&p, serde_json::json!({"aud": "c"})),
            Err("down"),
            0.0
        )
        .is_ok());
        // ... but one that names one needs the discovery issuer to compare with.
        assert!(matches!(
            judge(
                &p,
                &active(&p, serde_json::json!({"aud": "c", "iss": "https://idp"})),
                Err("down"),
                0.0
            ),
            Err(TokenError::IssuerUnknown(_))
        ));

        let p = plugin(serde_json::json!({"claim_validator": {
            "issuer": {"valid_issuers": ["https://a", "https://b"]}}}));
        let judged = |body: serde_json::Value| judge(&p, &active(&p, body), Err("unused"), 0.0);
        assert!(judged(serde_json::json!({"iss": "https://b"})).is_ok());
        assert_eq!(
            judged(serde_json::json!({"iss": "https://idp"})),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(judged(serde_json::json!({})), Err(TokenError::WrongIssuer));
    }

    #[test]
    fn an_answer_is_charged_for_what_it_holds() {
        let p = plugin(serde_json::json!({}));
        let small = active(&p, serde_json::json!({"aud": "c"}));
        let big = active(
            &p,
            serde_json::json!({"aud": vec!["a-long-audience-name"; 1000]}),
        );
        assert!(big.heap_bytes() > small.heap_bytes() + 4 * 20_000 / 3 + 20_000);
    }
}
