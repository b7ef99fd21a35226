//! The `openid-connect` plugin options: every option of APISIX 2.14's table plus the later ones
//! SPEC §2.1 adopts, with APISIX's defaults. Unknown options are rejected.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::config::error::{deserialize_at, ConfigError};
pub use crate::idp::AuthMethod;
use crate::idp::FetchSettings;
use crate::jose::jwt::{AudienceRule, ClaimRules};
use crate::jose::keys::{parse_public_key_pem, VerifyKey, ALG_NAMES};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    client_id: String,
    client_secret: String,
    discovery: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    bearer_only: bool,
    #[serde(default)]
    logout_path: Option<String>,
    #[serde(default)]
    post_logout_redirect_uri: Option<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    ssl_verify: bool,
    #[serde(default)]
    introspection_endpoint: Option<String>,
    #[serde(default)]
    introspection_endpoint_auth_method: Option<String>,
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    use_jwks: bool,
    #[serde(default)]
    token_signing_alg_values_expected: Option<String>,
    #[serde(default)]
    set_access_token_header: Option<bool>,
    #[serde(default)]
    access_token_in_authorization_header: bool,
    #[serde(default)]
    set_id_token_header: Option<bool>,
    #[serde(default)]
    set_userinfo_header: Option<bool>,
    #[serde(default)]
    set_refresh_token_header: bool,
    #[serde(default)]
    session: Option<RawSession>,
    #[serde(default)]
    unauth_action: Option<String>,
    #[serde(default)]
    use_pkce: bool,
    #[serde(default)]
    use_nonce: Option<bool>,
    #[serde(default)]
    required_scopes: Option<Vec<String>>,
    #[serde(default)]
    claim_validator: Option<RawClaimValidator>,
    #[serde(default)]
    renew_access_token_on_expiry: Option<bool>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    revoke_tokens_on_logout: bool,
    #[serde(default)]
    iat_slack: Option<f64>,
    #[serde(default)]
    jwk_expires_in: Option<f64>,
    #[serde(default)]
    introspection_interval: Option<f64>,
    #[serde(default)]
    introspection_negative_ttl: Option<f64>,
    #[serde(default)]
    authorization_params: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    cookie_name: Option<String>,
    #[serde(default)]
    cookie_path: Option<String>,
    #[serde(default)]
    cookie_same_site: Option<String>,
    #[serde(default)]
    idling_timeout: Option<f64>,
    #[serde(default)]
    rolling_timeout: Option<f64>,
    #[serde(default)]
    absolute_timeout: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimValidator {
    #[serde(default)]
    issuer: Option<RawIssuer>,
    #[serde(default)]
    audience: Option<RawAudience>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    #[serde(default)]
    valid_issuers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudience {
    #[serde(default)]
    claim: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    match_with_client_id: bool,
}

/// What happens to a request without a token when the login flow is not wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnauthAction {
    /// Start the login flow.
    Auth,
    /// Answer 401.
    Deny,
    /// Proxy without identity headers.
    Pass,
}

/// Session cookie settings (used by the login flow).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Encryption secret; `None` means the node-wide generated one.
    pub secret: Option<String>,
    /// Cookie name.
    pub cookie_name: String,
    /// Cookie path.
    pub cookie_path: String,
    /// SameSite attribute.
    pub cookie_same_site: String,
    /// Idle lifetime.
    pub idling_timeout: Duration,
    /// Lifetime before the session must be renewed.
    pub rolling_timeout: Duration,
    /// Absolute lifetime.
    pub absolute_timeout: Duration,
}

/// A checked `openid-connect` configuration.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
    /// Discovery document URL.
    pub discovery: String,
    /// Scope requested at login.
    pub scope: String,
    /// Realm in `WWW-Authenticate`.
    pub realm: String,
    /// Only bearer tokens; never the login flow.
    pub bearer_only: bool,
    /// Logout path.
    pub logout_path: String,
    /// Where to send the browser after logout.
    pub post_logout_redirect_uri: Option<String>,
    /// Login callback URI.
    pub redirect_uri: Option<String>,
    /// Timeout of every IdP call.
    pub timeout: Duration,
    /// Verify the IdP's TLS certificate.
    pub ssl_verify: bool,
    /// Introspection endpoint (else from discovery).
    pub introspection_endpoint: Option<String>,
    /// Introspection client authentication.
    pub introspection_endpoint_auth_method: AuthMethod,
    /// A configured verification key.
    pub public_key: Option<VerifyKey>,
    /// Verify with the IdP's JWKS.
    pub use_jwks: bool,
    /// The only accepted signing algorithm, when set.
    pub token_signing_alg_values_expected: Option<String>,
    /// Send the access token upstream.
    pub set_access_token_header: bool,
    /// ... in `Authorization: Bearer` rather than `X-Access-Token`.
    pub access_token_in_authorization_header: bool,
    /// Send `X-ID-Token`.
    pub set_id_token_header: bool,
    /// Send `X-Userinfo`.
    pub set_userinfo_header: bool,
    /// Send `X-Refresh-Token`.
    pub set_refresh_token_header: bool,
    /// Session cookie settings.
    pub session: SessionConfig,
    /// Without a token: login, 401, or pass.
    pub unauth_action: UnauthAction,
    /// PKCE in the login flow.
    pub use_pkce: bool,
    /// Nonce in the login flow.
    pub use_nonce: bool,
    /// Scopes every token must carry.
    pub required_scopes: Vec<String>,
    /// Accepted issuers (else the discovery issuer).
    pub valid_issuers: Vec<String>,
    /// Audience checks.
    pub audience: Option<AudienceRule>,
    /// Refresh an expired access token in the login flow.
    pub renew_access_token_on_expiry: bool,
    /// How the login flow authenticates at the token and revocation endpoints.
    pub token_endpoint_auth_method: AuthMethod,
    /// Revoke the session's tokens at the IdP on logout.
    pub revoke_tokens_on_logout: bool,
    /// Clock-skew leeway for `exp`/`nbf`/`iat`.
    pub iat_slack: Duration,
    /// How long fetched JWKS are trusted before refetching.
    pub jwk_expires_in: Duration,
    /// Cap on how long an introspection answer is cached; zero means "until exp".
    pub introspection_interval: Duration,
    /// How long an inactive introspection answer is cached.
    pub introspection_negative_ttl: Duration,
    /// Extra authorization request parameters.
    pub authorization_params: Vec<(String, String)>,
}

impl OidcConfig {
    /// How this route's identity provider is fetched: routes share a provider only when these
    /// are equal.
    pub fn fetch_settings(&self) -> FetchSettings {
        FetchSettings {
            discovery: self.discovery.clone(),
            ssl_verify: self.ssl_verify,
            timeout: self.timeout,
            jwk_expires_in: self.jwk_expires_in,
        }
    }

    /// The claim rules tokens of this route must meet, in any mode.
    pub fn claim_rules(&self) -> ClaimRules<'_> {
        ClaimRules {
            client_id: &self.client_id,
            iat_slack: self.iat_slack,
            valid_issuers: &self.valid_issuers,
            audience: self.audience.as_ref(),
            required_scopes: &self.required_scopes,
        }
    }

    /// Whether a bearer token is looked for (SPEC §2.2).
    pub fn takes_bearer(&self) -> bool {
        self.bearer_only
            || self.introspection_endpoint.is_some()
            || self.public_key.is_some()
            || self.use_jwks
    }
}

fn is_url(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://"))
        && s.len() > 8
        && !s.bytes().any(|b| b <= b' ')
}

fn secs(
    v: Option<f64>,
    default: f64,
    min: f64,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    let v = v.unwrap_or(default);
    if v.is_finite() && v >= min && v < 1e9 {
        Duration::from_secs_f64(v)
    } else {
        errors.push(ConfigError::new(
            path,
            format!("{v} is out of range"),
            format!("seconds, at least {min}"),
        ));
        Duration::from_secs_f64(default)
    }
}

/// Check an `openid-connect` configuration at `path`.
pub fn check(conf: Value, path: &str, errors: &mut Vec<ConfigError>) -> Option<OidcConfig> {
    let raw: RawOidc = match deserialize_at(conf, path) {
        Ok(r) => r,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let p = |f: &str| format!("{path}.{f}");
    let before = errors.len();
    for (name, v) in [
        ("client_id", &raw.client_id),
        ("client_secret", &raw.client_secret),
    ] {
        if v.is_empty() {
            errors.push(ConfigError::plain(p(name), "must not be empty"));
        }
    }
    if !is_url(&raw.discovery) {
        errors.push(ConfigError::new(
            p("discovery"),
            format!("`{}` is not a URL", raw.discovery),
            "an http:// or https:// URL",
        ));
    }
    if let Some(u) = &raw.introspection_endpoint {
        if !is_url(u) {
            errors.push(ConfigError::new(
                p("introspection_endpoint"),
                format!("`{u}` is not a URL"),
                "an http:// or https:// URL",
            ));
        }
    }
    let auth_method = |field: &str, value: Option<&str>, errors: &mut Vec<ConfigError>| match value
    {
        None | Some("client_secret_basic") => AuthMethod::ClientSecretBasic,
        Some("client_secret_post") => AuthMethod::ClientSecretPost,
        Some(other) => {
            errors.push(ConfigError::new(
                p(field),
                format!("unsupported method `{other}`"),
                "client_secret_basic, client_secret_post",
            ));
            AuthMethod::ClientSecretBasic
        }
    };
    let introspection_endpoint_auth_method = auth_method(
        "introspection_endpoint_auth_method",
        raw.introspection_endpoint_auth_method.as_deref(),
        errors,
    );
    let token_endpoint_auth_method = auth_method(
        "token_endpoint_auth_method",
        raw.token_endpoint_auth_method.as_deref(),
        errors,
    );
    let public_key = raw
        .public_key
        .as_deref()
        .and_then(|pem| match parse_public_key_pem(pem) {
            Ok(k) => Some(k),
            Err(e) => {
                errors.push(ConfigError::new(
                    p("public_key"),
                    e,
                    "a PEM public key (RSA, EC P-256/P-384, Ed25519) or certificate",
                ));
                None
            }
        });
    if let Some(alg) = &raw.token_signing_alg_values_expected {
        if !ALG_NAMES.contains(&alg.as_str()) {
            errors.push(ConfigError::new(
                p("token_signing_alg_values_expected"),
                format!("unsupported algorithm `{alg}`"),
                ALG_NAMES.join(", "),
            ));
        }
    }
    let unauth_action = match raw.unauth_action.as_deref() {
        None | Some("auth") => UnauthAction::Auth,
        Some("deny") => UnauthAction::Deny,
        Some("pass") => UnauthAction::Pass,
        Some(other) => {
            errors.push(ConfigError::new(
                p("unauth_action"),
                format!("unknown value `{other}`"),
                "auth, deny, pass",
            ));
            UnauthAction::Auth
        }
    };
    // Refused rather than ignored: an operator who names an algorithm believes it is enforced.
    // Tokens only introspected are never parsed as JWTs; only the login flow's ID token (a
    // route that may log in) or a JWT validator could use it.
    let introspected_only = raw.public_key.is_none()
        && !raw.use_jwks
        && (raw.bearer_only || raw.introspection_endpoint.is_some());
    let may_log_in = !raw.bearer_only && unauth_action == UnauthAction::Auth;
    if raw.token_signing_alg_values_expected.is_some() && introspected_only && !may_log_in {
        errors.push(ConfigError::new(
            p("token_signing_alg_values_expected"),
            "does not apply to tokens checked by introspection, which are never read as JWTs",
            "with public_key or use_jwks, or with bearer_only: false and unauth_action: auth (the login flow's ID token)",
        ));
    }
    let timeout = match raw.timeout {
        None => Duration::from_secs(3),
        Some(t) if (1.0..=3600.0).contains(&t) => Duration::from_secs_f64(t),
        Some(t) => {
            errors.push(ConfigError::new(
                p("timeout"),
                format!("{t} is out of range"),
                "1 to 3600 seconds",
            ));
            Duration::from_secs(3)
        }
    };
    let session = match raw.session {
        None => default_session(),
        Some(s) => {
            let sp = |f: &str| format!("{path}.session.{f}");
            if let Some(secret) = &s.secret {
                if secret.len() < 16 {
                    errors.push(ConfigError::new(
                        sp("secret"),
                        "is too short",
                        "at least 16 characters",
                    ));
                }
            }
            let same_site = s.cookie_same_site.clone().unwrap_or_else(|| "Lax".into());
            if !["Strict", "Lax", "None"].contains(&same_site.as_str()) {
                errors.push(ConfigError::new(
                    sp("cookie_same_site"),
                    format!("unknown value `{same_site}`"),
                    "Strict, Lax, None",
                ));
            }
            let name = s.cookie_name.clone().unwrap_or_else(|| "session".into());
            if !crate::http::h1::valid_token(&name) {
                errors.push(ConfigError::new(
                    sp("cookie_name"),
                    format!("`{name}` is not a cookie name"),
                    "letters, digits, - and _",
                ));
            }
            let cookie_path = s.cookie_path.unwrap_or_else(|| "/".into());
            if !cookie_path.starts_with('/')
                || cookie_path.contains(';')
                || !crate::http::h1::valid_header_value(&cookie_path)
            {
                errors.push(ConfigError::new(
                    sp("cookie_path"),
                    format!("`{cookie_path}` is not a cookie path"),
                    "a path starting with /, without ;",
                ));
            }
            SessionConfig {
                secret: s.secret,
                cookie_name: name,
                cookie_path,
                cookie_same_site: same_site,
                idling_timeout: secs(s.idling_timeout, 900.0, 1.0, &sp("idling_timeout"), errors),
                rolling_timeout: secs(
                    s.rolling_timeout,
                    3600.0,
                    1.0,
                    &sp("rolling_timeout"),
                    errors,
                ),
                absolute_timeout: secs(
                    s.absolute_timeout,
                    86400.0,
                    1.0,
                    &sp("absolute_timeout"),
                    errors,
                ),
            }
        }
    };
    let (valid_issuers, audience) = match raw.claim_validator {
        None => (Vec::new(), None),
        Some(cv) => (
            cv.issuer.map(|i| i.valid_issuers).unwrap_or_default(),
            cv.audience.map(|a| AudienceRule {
                claim: a.claim.unwrap_or_else(|| "aud".into()),
                required: a.required,
                match_with_client_id: a.match_with_client_id,
            }),
        ),
    };
    let mut authorization_params = Vec::new();
    for (k, v) in raw.authorization_params.unwrap_or_default() {
        match v {
            Value::String(s) => authorization_params.push((k, s)),
            Value::Number(n) => authorization_params.push((k, n.to_string())),
            Value::Bool(b) => authorization_params.push((k, b.to_string())),
            _ => errors.push(ConfigError::new(
                format!("{path}.authorization_params.{k}"),
                "is not a parameter value",
                "a string, number or boolean",
            )),
        }
    }
    let config = OidcConfig {
        client_id: raw.client_id,
        client_secret: raw.client_secret,
        discovery: raw.discovery,
        scope: raw.scope.unwrap_or_else(|| "openid".into()),
        realm: raw.realm.unwrap_or_else(|| "apisix".into()),
        bearer_only: raw.bearer_only,
        logout_path: raw.logout_path.unwrap_or_else(|| "/logout".into()),
        post_logout_redirect_uri: raw.post_logout_redirect_uri,
        redirect_uri: raw.redirect_uri,
        timeout,
        ssl_verify: raw.ssl_verify,
        introspection_endpoint: raw.introspection_endpoint,
        introspection_endpoint_auth_method,
        public_key,
        use_jwks: raw.use_jwks,
        token_signing_alg_values_expected: raw.token_signing_alg_values_expected,
        set_access_token_header: raw.set_access_token_header.unwrap_or(true),
        access_token_in_authorization_header: raw.access_token_in_authorization_header,
        set_id_token_header: raw.set_id_token_header.unwrap_or(true),
        set_userinfo_header: raw.set_userinfo_header.unwrap_or(true),
        set_refresh_token_header: raw.set_refresh_token_header,
        session,
        unauth_action,
        use_pkce: raw.use_pkce,
        use_nonce: raw.use_nonce.unwrap_or(true),
        required_scopes: raw.required_scopes.unwrap_or_default(),
        valid_issuers,
        audience,
        renew_access_token_on_expiry: raw.renew_access_token_on_expiry.unwrap_or(true),
        token_endpoint_auth_method,
        revoke_tokens_on_logout: raw.revoke_tokens_on_logout,
        iat_slack: secs(raw.iat_slack, 120.0, 0.0, &p("iat_slack"), errors),
        jwk_expires_in: secs(
            raw.jwk_expires_in,
            86400.0,
            1.0,
            &p("jwk_expires_in"),
            errors,
        ),
        introspection_interval: secs(
            raw.introspection_interval,
            0.0,
            0.0,
            &p("introspection_interval"),
            errors,
        ),
        introspection_negative_ttl: secs(
            raw.introspection_negative_ttl,
            5.0,
            0.0,
            &p("introspection_negative_ttl"),
            errors,
        ),
        authorization_params,
    };
    (errors.len() == before).then_some(config)
}

fn default_session() -> SessionConfig {
    SessionConfig {
        secret: None,
        cookie_name: "session".into(),
        cookie_path: "/".into(),
        cookie_same_site: "Lax".into(),
        idling_timeout: Duration::from_secs(900),
        rolling_timeout: Duration::from_secs(3600),
        absolute_timeout: Duration::from_secs(86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errs(v: Value) -> Vec<String> {
        let mut e = Vec::new();
        check(v, "plugins.openid-connect", &mut e);
        e.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn defaults_follow_the_reference() {
        let mut e = Vec::new();
        let c = check(json!({"client_id": "a", "client_secret": "b", "discovery": "http://idp/.well-known/openid-configuration"}), "p", &mut e).unwrap();
        assert_eq!(
            (c.scope.as_str(), c.realm.as_str(), c.logout_path.as_str()),
            ("openid", "apisix", "/logout")
        );
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert!(
            c.set_access_token_header && !c.access_token_in_authorization_header && c.use_nonce
        );
        assert_eq!(c.iat_slack, Duration::from_secs(120));
        assert!(!c.takes_bearer());
    }

    #[test]
    fn an_expected_algorithm_is_refused_where_no_jwt_is_read() {
        let base = json!({"client_id": "a", "client_secret": "b", "discovery": "http://idp/d",
            "token_signing_alg_values_expected": "RS256"});
        let with = |extra: Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            errs(v)
        };
        for introspected in [
            json!({"bearer_only": true}),
            json!({"bearer_only": true, "introspection_endpoint": "http://idp/i"}),
            json!({"introspection_endpoint": "http://idp/i", "unauth_action": "deny"}),
        ] {
            let e = with(introspected.clone());
            assert_eq!(e.len(), 1, "{introspected}: {e:?}");
            assert!(
                e[0].starts_with("plugins.openid-connect.token_signing_alg_values_expected: does not apply to tokens checked by introspection")
                    && e[0].contains("(allowed: with public_key or use_jwks"),
                "{e:?}"
            );
        }
        for applies in [
            json!({"bearer_only": true, "use_jwks": true}),
            json!({"bearer_only": true, "introspection_endpoint": "http://idp/i", "use_jwks": true}),
            json!({"introspection_endpoint": "http://idp/i"}),
        ] {
            assert_eq!(with(applies.clone()), Vec::<String>::new(), "{applies}");
        }
    }

    #[test]
    fn problems_are_named() {
        let e = errs(json!({"client_secret": "b", "discovery": "http://x/y"}));
        assert_eq!(e, vec!["plugins.openid-connect.client_id: is required"]);
        let e = errs(
            json!({"client_id": "a", "client_secret": "b", "discovery": "idp", "public_key": "junk",
            "token_signing_alg_values_expected": "HS256", "unauth_action": "maybe", "bogus": 1}),
        );
        assert!(
            e[0].starts_with("plugins.openid-connect.bogus: unknown option `bogus`"),
            "{e:?}"
        );
        let e = errs(
            json!({"client_id": "a", "client_secret": "b", "discovery": "idp", "public_key": "junk",
            "token_signing_alg_values_expected": "HS256", "unauth_action": "maybe", "session": {"secret": "short"}}),
        );
        let all = e.join("\n");
        for f in [
            "discovery",
            "public_key",
            "token_signing_alg_values_expected",
            "unauth_action",
            "session.secret",
        ] {
            assert!(
                all.contains(&format!("plugins.openid-connect.{f}:")),
                "{f}: {all}"
            );
        }
    }
}
