//! JWS compact tokens: split, check the header, verify with a ready key, check the claims.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use std::mem::size_of;
use std::time::Duration;

use super::keys::{Alg, KeySet, VerifyKey};

/// Why a token was refused. The `Display` text is the `error_description` clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, or a header/payload that is not JSON.
    #[error("token is not a well-formed JWT")]
    Malformed,
    /// `alg: none`.
    #[error("unsigned tokens (alg none) are not accepted")]
    AlgNone,
    /// HS256 and friends: a shared secret is never accepted for these keys.
    #[error("HMAC-signed tokens are not accepted")]
    AlgHmac,
    /// An algorithm we do not verify, or one other than the configured one.
    #[error("signing algorithm not accepted")]
    AlgNotAccepted,
    /// A `crit` header parameter we do not understand (RFC 7515 §4.1.11).
    #[error("token has critical header parameters")]
    Critical,
    /// No key with this id.
    #[error("unknown key id")]
    UnknownKid,
    /// The keys are not available (IdP never answered).
    #[error("no verification keys available: {0}")]
    NoKeys(String),
    /// Signature did not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// `exp` is past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `iss` is not accepted.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// The issuer cannot be checked because discovery has not answered yet.
    #[error("issuer cannot be checked: {0}")]
    IssuerUnknown(String),
    /// Audience claim missing (403).
    #[error("audience claim missing")]
    AudienceMissing,
    /// Audience does not include the client (403).
    #[error("audience does not match")]
    AudienceMismatch,
    /// A required scope is missing (403).
    #[error("required scope missing")]
    ScopeMissing,
    /// Introspection answered `active: false`.
    #[error("token is not active")]
    Inactive,
    /// The IdP could not give an answer (unreachable, timed out, answered garbage).
    #[error("introspection failed: {0}")]
    IdpFailed(String),
}

impl TokenError {
    /// Whether this is a 403 (authenticated but not allowed) rather than a 401.
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            TokenError::AudienceMissing | TokenError::AudienceMismatch | TokenError::ScopeMissing
        )
    }
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A token split into its parts, with the header checked but nothing verified yet.
pub struct Parsed<'t> {
    /// The signed bytes: `header.payload`.
    pub signing_input: &'t [u8],
    /// Decoded signature.
    pub signature: Vec<u8>,
    /// Decoded payload (the claims JSON).
    pub payload: Vec<u8>,
    /// Algorithm.
    pub alg: Alg,
    /// Key id, if any.
    pub kid: Option<String>,
}

/// Split and decode a compact JWS and check its header.
pub fn parse<'t>(token: &'t [u8], expected_alg: Option<&str>) -> Result<Parsed<'t>, TokenError> {
    let mut dots = token
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'.')
        .map(|(i, _)| i);
    let (Some(d1), Some(d2), None) = (dots.next(), dots.next(), dots.next()) else {
        return Err(TokenError::Malformed);
    };
    let decode = |s: &[u8]| URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed);
    let header_bytes = decode(&token[..d1])?;
    let header: Header<'_> =
        serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Malformed)?;
    if header.crit.is_some() {
        return Err(TokenError::Critical);
    }
    let alg_name: &str = &header.alg;
    if alg_name.eq_ignore_ascii_case("none") {
        return Err(TokenError::AlgNone);
    }
    if alg_name.starts_with("HS") {
        return Err(TokenError::AlgHmac);
    }
    let alg = Alg::parse(alg_name).ok_or(TokenError::AlgNotAccepted)?;
    if expected_alg.is_some_and(|e| e != alg_name) {
        return Err(TokenError::AlgNotAccepted);
    }
    Ok(Parsed {
        signing_input: &token[..d2],
        signature: decode(&token[d2 + 1..])?,
        payload: decode(&token[d1 + 1..d2])?,
        alg,
        kid: header.kid.map(|k| k.into_owned()),
    })
}

/// Verify `p`'s signature: with the configured key, else the key its `kid` names, else any
/// key that fits the algorithm.
pub fn verify_signature(p: &Parsed<'_>, keys: &KeySet) -> Result<(), TokenError> {
    let verify = |k: &VerifyKey| {
        if !k.fits(p.alg) {
            return Err(TokenError::AlgNotAccepted);
        }
        k.verify(p.alg, p.signing_input, &p.signature)
            .then_some(())
            .ok_or(TokenError::BadSignature)
    };
    if let Some(k) = keys.pinned() {
        return verify(k);
    }
    match &p.kid {
        Some(kid) => verify(keys.get(kid).ok_or(TokenError::UnknownKid)?),
        None => {
            let mut fitting = keys.all.iter().filter(|k| k.fits(p.alg)).peekable();
            if fitting.peek().is_none() {
                return Err(if keys.all.is_empty() {
                    TokenError::UnknownKid
                } else {
                    TokenError::AlgNotAccepted
                });
            }
            fitting
                .any(|k| verify(k).is_ok())
                .then_some(())
                .ok_or(TokenError::BadSignature)
        }
    }
}

/// The claims the proxy acts on.
#[derive(Debug, Default)]
pub struct Claims {
    /// Expiry (seconds since the epoch).
    pub exp: Option<f64>,
    /// Not before.
    pub nbf: Option<f64>,
    /// Issued at.
    pub iat: Option<f64>,
    /// Issuer.
    pub iss: Option<String>,
    /// Space-separated scopes.
    pub scope: Option<serde_json::Value>,
    /// Scopes as a list (some IdPs).
    pub scp: Option<serde_json::Value>,
    /// The claim the audience rule names (`claim_validator.audience.claim`), when there is one.
    pub audience: Option<serde_json::Value>,
}

impl Claims {
    /// Heap bytes these claims hold (for the caches' byte budgets).
    pub fn heap_bytes(&self) -> usize {
        let value = |v: &Option<serde_json::Value>| v.as_ref().map_or(0, json_heap_bytes);
        self.iss.as_ref().map_or(0, String::capacity)
            + value(&self.scope)
            + value(&self.scp)
            + value(&self.audience)
    }

    /// Parse a payload, keeping the claim named `audience_claim` too. Other claims are skipped
    /// without being built, and a claim this reads that appears twice makes the token malformed
    /// (parsers that keep the first and the last would disagree about it).
    pub fn parse(payload: &[u8], audience_claim: Option<&str>) -> Result<Claims, TokenError> {
        let mut de = serde_json::Deserializer::from_slice(payload);
        let claims = ClaimsSeed(audience_claim)
            .deserialize(&mut de)
            .and_then(|c| de.end().map(|()| c));
        claims.map_err(|_| TokenError::Malformed)
    }
}

/// The claims `Claims` reads, as bits of a "seen" mask.
#[derive(Clone, Copy)]
enum Field {
    Exp = 1,
    Nbf = 2,
    Iat = 4,
    Iss = 8,
    Scope = 16,
    Scp = 32,
    Other = 0,
}

/// A claim name: which field it is, and whether it is the audience claim.
struct FieldSeed<'a>(Option<&'a str>);

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = (Field, bool);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldSeed<'_> {
    type Value = (Field, bool);
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a claim name")
    }
    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        let field = match name {
            "exp" => Field::Exp,
            "nbf" => Field::Nbf,
            "iat" => Field::Iat,
            "iss" => Field::Iss,
            "scope" => Field::Scope,
            "scp" => Field::Scp,
            _ => Field::Other,
        };
        Ok((field, self.0 == Some(name)))
    }
}

struct ClaimsSeed<'a>(Option<&'a str>);

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_> {
    type Value = Claims;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Claims, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimsSeed<'_> {
    type Value = Claims;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of claims")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
        let mut c = Claims::default();
        let mut seen = 0u8;
        while let Some((field, is_audience)) = map.next_key_seed(FieldSeed(self.0))? {
            let bit = field as u8;
            if seen & bit != 0 || (is_audience && c.audience.is_some()) {
                return Err(de::Error::custom("duplicate claim"));
            }
            seen |= bit;
            if is_audience {
                // Named twice (say `claim: exp`): read once, then serve both uses.
                let v: serde_json::Value = map.next_value()?;
                if !matches!(field, Field::Other) {
                    set_field(&mut c, field, v.clone()).map_err(de::Error::custom)?;
                }
                c.audience = Some(v);
                continue;
            }
            match field {
                Field::Exp => c.exp = map.next_value()?,
                Field::Nbf => c.nbf = map.next_value()?,
                Field::Iat => c.iat = map.next_value()?,
                Field::Iss => c.iss = map.next_value()?,
                Field::Scope => c.scope = map.next_value()?,
                Field::Scp => c.scp = map.next_value()?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(c)
    }
}

fn set_field(c: &mut Claims, field: Field, v: serde_json::Value) -> serde_json::Result<()> {
    match field {
        Field::Exp => c.exp = serde_json::from_value(v)?,
        Field::Nbf => c.nbf = serde_json::from_value(v)?,
        Field::Iat => c.iat = serde_json::from_value(v)?,
        Field::Iss => c.iss = serde_json::from_value(v)?,
        Field::Scope => c.scope = Some(v),
        Field::Scp => c.scp = Some(v),
        Field::Other => {}
    }
    Ok(())
}

fn has_scope(claims: &Claims, want: &str) -> bool {
    let in_value = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.split(' ').any(|s| s == want),
        serde_json::Value::Array(a) => a.iter().any(|s| s.as_str() == Some(want)),
        _ => false,
    };
    claims.scope.as_ref().is_some_and(in_value) || claims.scp.as_ref().is_some_and(in_value)
}

/// Audience checks (`claim_validator.audience`).
#[derive(Debug, Clone)]
pub struct AudienceRule {
    /// Claim holding the audience (default `aud`).
    pub claim: String,
    /// The claim must be present.
    pub required: bool,
    /// The claim must contain `client_id`.
    pub match_with_client_id: bool,
}

/// The rules a route applies to what a token says, borrowed from its plugin config.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRules<'a> {
    /// The client the route authenticates for (the audience `match_with_client_id` wants).
    pub client_id: &'a str,
    /// Clock skew allowed for `exp`, `nbf` and `iat`.
    pub iat_slack: Duration,
    /// Accepted issuers; empty means the discovery issuer.
    pub valid_issuers: &'a [String],
    /// The audience rule, if any.
    pub audience: Option<&'a AudienceRule>,
    /// Scopes every token must carry.
    pub required_scopes: &'a [String],
}

/// What a token without `iss` means when no `valid_issuers` are listed (with a list, such a
/// token is refused in every mode: the operator asked for the issuer to be checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingIssuer {
    /// Refused: a JWT must say who issued it.
    Refused,
    /// Accepted: an introspection endpoint answers for its own issuer, and RFC 7662 makes
    /// `iss` optional in its answers.
    Accepted,
}

/// Check time, issuer, audience and scopes: the rules every mode applies to what a token
/// says, whether its claims come from a verified JWT or an introspection answer. `issuer` is
/// the discovery issuer when known, else why it is not.
pub fn check_claims(
    c: &Claims,
    cfg: &ClaimRules<'_>,
    issuer: Result<&str, &str>,
    now: f64,
    missing_issuer: MissingIssuer,
) -> Result<(), TokenError> {
    let slack = cfg.iat_slack.as_secs_f64();
    if let Some(exp) = c.exp {
        if now > exp + slack {
            return Err(TokenError::Expired);
        }
    }
    if let Some(nbf) = c.nbf {
        if nbf > now + slack {
            return Err(TokenError::NotYetValid);
        }
    }
    if let Some(iat) = c.iat {
        if iat > now + slack {
            return Err(TokenError::IssuedInFuture);
        }
    }
    let iss = c.iss.as_deref();
    if !cfg.valid_issuers.is_empty() {
        if !iss.is_some_and(|i| cfg.valid_issuers.iter().any(|v| v == i)) {
            return Err(TokenError::WrongIssuer);
        }
    } else if iss.is_some() || missing_issuer == MissingIssuer::Refused {
        match issuer {
            Ok(expected) if iss == Some(expected) => {}
            Ok(_) => return Err(TokenError::WrongIssuer),
            Err(why) => return Err(TokenError::IssuerUnknown(why.to_string())),
        }
    }
    if let Some(rule) = cfg.audience {
        match c.audience.as_ref() {
            None | Some(serde_json::Value::Null) if rule.required || rule.match_with_client_id => {
                return Err(TokenError::AudienceMissing)
            }
            Some(v) if rule.match_with_client_id => {
                let matches = match v {
                    serde_json::Value::String(s) => s == cfg.client_id,
                    serde_json::Value::Array(a) => {
                        a.iter().any(|x| x.as_str() == Some(cfg.client_id))
                    }
                    _ => false,
                };
                if !matches {
                    return Err(TokenError::AudienceMismatch);
                }
            }
            _ => {}
        }
    }
    if cfg.required_scopes.iter().any(|s| !has_scope(c, s)) {
        return Err(TokenError::ScopeMissing);
    }
    Ok(())
}

/// Heap bytes of a parsed JSON value. Object members are counted with the node overhead of
/// serde_json's BTreeMap, approximately: close enough to bound memory, never zero per member.
pub fn json_heap_bytes(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => s.capacity(),
        Value::Array(a) => {
            a.capacity() * size_of::<Value>() + a.iter().map(json_heap_bytes).sum::<usize>()
        }
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                k.capacity()
                    + size_of::<String>()
                    + size_of::<Value>()
                    + 2 * size_of::<usize>()
                    + json_heap_bytes(v)
            })
            .sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_keep_the_named_audience_claim_and_skip_the_rest() {
        let payload = br#"{"sub":"u","exp":10,"nbf":1.5,"iss":"https://i","scope":"a b",
            "tenant_aud":["x","y"],"nested":{"aud":"no"},"aud":"api"}"#;
        let c = Claims::parse(payload, Some("tenant_aud")).unwrap();
        assert_eq!((c.exp, c.nbf, c.iat), (Some(10.0), Some(1.5), None));
        assert_eq!(c.iss.as_deref(), Some("https://i"));
        assert_eq!(c.scope, Some(serde_json::json!("a b")));
        assert_eq!(c.audience, Some(serde_json::json!(["x", "y"])));
        assert_eq!(Claims::parse(payload, None).unwrap().audience, None);
    }

    #[test]
    fn a_claim_that_is_also_the_audience_serves_both() {
        let c = Claims::parse(br#"{"iss":"https://i"}"#, Some("iss")).unwrap();
        assert_eq!(c.iss.as_deref(), Some("https://i"));
        assert_eq!(c.audience, Some(serde_json::json!("https://i")));
    }

    #[test]
    fn escaped_claim_names_are_the_claims_they_spell() {
        let c = Claims::parse(br#"{"\u0065xp":7}"#, None).unwrap();
        assert_eq!(c.exp, Some(7.0));
    }

    #[test]
    fn duplicate_or_mistyped_claims_make_the_token_malformed() {
        for payload in [
            &br#"{"exp":1,"exp":2}"#[..],
            br#"{"exp":1,"\u0065xp":2}"#,
            br#"{"aud":"a","aud":"b"}"#,
            br#"{"exp":"tomorrow"}"#,
            br#"{"iss":5}"#,
            br#"["exp",1]"#,
            br#"{"exp":1} trailing"#,
        ] {
            assert_eq!(
                Claims::parse(payload, Some("aud")).unwrap_err(),
                TokenError::Malformed,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn json_values_are_charged_for_their_contents() {
        let small = serde_json::json!("a");
        let large = serde_json::json!({"groups": vec!["some-group-name"; 1000]});
        assert!(json_heap_bytes(&large) > 1000 * "some-group-name".len());
        assert!(json_heap_bytes(&small) < 16);
    }
}
