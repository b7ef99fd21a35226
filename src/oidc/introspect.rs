//! Token introspection (RFC 7662): a per-core cache of answers, and one IdP call per token at a
//! time on each core however many requests carry it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tokio::sync::Notify;

use super::cache::{Expiring, TokenCache, TokenKey};
use super::jwt::TokenError;
use super::OidcPlugin;
use crate::idp::{IntrospectAnswer, IntrospectRequest};

/// What this core remembers of an introspection answer.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// `active: true`.
    Active {
        /// Unix time the entry dies.
        expires_at: f64,
        /// `X-Userinfo`: base64 of the introspection JSON.
        userinfo: Rc<str>,
        /// The `scope` member, space separated.
        scope: Rc<str>,
    },
    /// `active: false` (kept briefly, so a flood of bad tokens is not a flood of IdP calls).
    Inactive {
        /// Unix time the entry dies.
        expires_at: f64,
    },
}

impl Expiring for Verdict {
    fn expires_at(&self) -> f64 {
        match self {
            Verdict::Active { expires_at, .. } | Verdict::Inactive { expires_at } => *expires_at,
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
    /// State holding at most `capacity` answers.
    pub fn new(capacity: usize) -> Self {
        Introspections {
            cache: TokenCache::new(capacity),
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

/// Check a cached or fresh verdict against the plugin's rules.
pub fn judge(p: &OidcPlugin, v: &Verdict) -> Result<Rc<str>, TokenError> {
    match v {
        Verdict::Inactive { .. } => Err(TokenError::Inactive),
        Verdict::Active {
            userinfo, scope, ..
        } => {
            if p.cfg
                .required_scopes
                .iter()
                .any(|want| !scope.split(' ').any(|s| s == want))
            {
                return Err(TokenError::ScopeMissing);
            }
            Ok(userinfo.clone())
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
        Ok(Ok(a)) => a?,
    };
    let until = ttl(p, &answer, now);
    let verdict = if answer.active {
        Verdict::Active {
            expires_at: until.unwrap_or(now),
            userinfo: STANDARD.encode(&answer.body).into(),
            scope: answer.scope.unwrap_or_default().into(),
        }
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
        let cfg = crate::oidc::config::check(conf, "p", &mut Vec::new()).unwrap();
        OidcPlugin::new(cfg, &Idp::start().unwrap())
    }

    fn answer(active: bool, exp: Option<f64>) -> IntrospectAnswer {
        IntrospectAnswer {
            active,
            exp,
            scope: None,
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

    #[test]
    fn scopes_are_checked_on_every_use() {
        let p = plugin(serde_json::json!({"required_scopes": ["read", "write"]}));
        let v = |scope: &str| Verdict::Active {
            expires_at: 0.0,
            userinfo: "e30=".into(),
            scope: scope.into(),
        };
        assert!(judge(&p, &v("read write admin")).is_ok());
        assert_eq!(judge(&p, &v("read")), Err(TokenError::ScopeMissing));
        assert_eq!(
            judge(&p, &Verdict::Inactive { expires_at: 0.0 }),
            Err(TokenError::Inactive)
        );
    }
}
