//! The data plane's one error type, and the one place it becomes an HTTP answer.

use std::io;

use std::sync::Arc;

use crate::http::reply::{quoted_safe, Reply};
use crate::jose::jwt::TokenError;

/// Why a request could not be proxied normally.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client sent something that is not valid HTTP/1.1.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request line and headers exceed `limits.max_header_bytes`.
    #[error("request header too large")]
    HeaderTooLarge,
    /// More header lines than `limits.max_headers`.
    #[error("too many request headers")]
    TooManyHeaders,
    /// The body exceeds `limits.max_body_bytes`.
    #[error("request body too large")]
    BodyTooLarge,
    /// No route matches.
    #[error("no route matches")]
    NoRoute,
    /// Every node the balancer offered refused or could not be reached.
    #[error("upstream connect failed: {0}")]
    UpstreamConnect(io::Error),
    /// The upstream host name has no address (yet).
    #[error("upstream host name not resolved")]
    UpstreamUnresolved,
    /// The TLS handshake with the upstream failed.
    #[error("upstream TLS handshake failed: {0}")]
    UpstreamTls(io::Error),
    /// Connect, send or read toward the upstream ran past its timeout.
    #[error("upstream {0} timed out")]
    UpstreamTimeout(&'static str),
    /// The upstream answered something that is not a valid HTTP/1.1 response.
    #[error("upstream sent an invalid response: {0}")]
    UpstreamBadResponse(&'static str),
    /// The upstream connection failed or closed early.
    #[error("upstream connection failed: {0}")]
    UpstreamIo(io::Error),
    /// Authentication refused the request.
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// The browser login cannot go on: the identity provider is unreachable, slow or answers
    /// nonsense (503), with a reason that holds no secret.
    #[error("login unavailable: {0}")]
    LoginUnavailable(String),
    /// The browser login did not succeed (401), with a reason a person can read.
    #[error("login failed: {why}")]
    LoginFailed {
        /// The outcome, for metrics.
        kind: AuthKind,
        /// Why, without tokens or secrets.
        why: String,
    },
    /// A login callback kept arriving with a lost or unknown state (400).
    #[error("login state lost")]
    LoginStateLost,
    /// The client connection failed, closed or stalled; nothing can be answered.
    #[error("client connection: {0}")]
    ClientIo(io::Error),
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
    /// The outcome metrics and logs label this failure by.
    pub fn kind(&self) -> AuthKind {
        match self {
            AuthError::Missing { .. } => AuthKind::NoToken,
            AuthError::MalformedHeader => AuthKind::Malformed,
            AuthError::Invalid { reason, .. } => AuthError::kind_of(reason),
        }
    }

    /// The outcome a refused token counts as.
    pub fn kind_of(reason: &TokenError) -> AuthKind {
        match reason {
            TokenError::Malformed | TokenError::Critical => AuthKind::Malformed,
            TokenError::AlgNone
            | TokenError::AlgHmac
            | TokenError::AlgNotAccepted
            | TokenError::BadSignature => AuthKind::BadSignature,
            TokenError::UnknownKid => AuthKind::UnknownKid,
            TokenError::Expired => AuthKind::Expired,
            TokenError::NotYetValid | TokenError::IssuedInFuture => AuthKind::NotYetValid,
            TokenError::WrongIssuer | TokenError::IssuerUnknown(_) => AuthKind::BadIssuer,
            TokenError::AudienceMissing | TokenError::AudienceMismatch => AuthKind::BadAudience,
            TokenError::ScopeMissing => AuthKind::InsufficientScope,
            TokenError::Inactive => AuthKind::Inactive,
            TokenError::NoKeys(_) | TokenError::IdpFailed(_) => AuthKind::IdpError,
        }
    }

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
                let why = quoted_safe(&reason.to_string());
                (
                    401,
                    Some(format!("Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{why}\"")),
                    serde_json::json!({ "error": "invalid_token", "error_description": why }).to_string(),
                )
            }
        }
    }
}

/// A stable, bounded name for what went wrong: what logs and metrics label by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Not valid HTTP/1.1, or a target, Host or body framing the proxy refuses.
    BadRequest,
    /// Request head over the limits (bytes or lines), trailers included.
    HeaderTooLarge,
    /// Request body over the cap.
    BodyTooLarge,
    /// No route matches.
    NoRoute,
    /// No upstream node could be connected to.
    UpstreamConnect,
    /// An upstream name has no address.
    UpstreamUnresolved,
    /// The upstream TLS handshake failed.
    UpstreamTls,
    /// An upstream connect, send or read timed out.
    UpstreamTimeout,
    /// The upstream's answer is not valid HTTP/1.1.
    UpstreamBadResponse,
    /// The upstream connection failed.
    UpstreamIo,
    /// The client connection failed or stalled.
    ClientIo,
    /// Authentication refused the request, for this reason.
    Auth(AuthKind),
}

/// Why authentication refused a request: SPEC 1.6's fixed set of outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthKind {
    /// No credential where one is required.
    NoToken,
    /// A credential that is not a well-formed token, or an unusable `Authorization` header.
    Malformed,
    /// Past `exp`.
    Expired,
    /// Before `nbf` or `iat`.
    NotYetValid,
    /// Signature or algorithm refused.
    BadSignature,
    /// No key with the token's key id.
    UnknownKid,
    /// Issuer not accepted (or not checkable).
    BadIssuer,
    /// Audience missing or not ours.
    BadAudience,
    /// A required scope is missing.
    InsufficientScope,
    /// Introspection says the token is not active.
    Inactive,
    /// The identity provider could not answer.
    IdpError,
}

impl ErrorKind {
    /// The kind as a label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::HeaderTooLarge => "header_too_large",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::UpstreamConnect => "upstream_connect",
            ErrorKind::UpstreamUnresolved => "upstream_unresolved",
            ErrorKind::UpstreamTls => "upstream_tls",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamBadResponse => "upstream_bad_response",
            ErrorKind::UpstreamIo => "upstream_io",
            ErrorKind::ClientIo => "client_io",
            ErrorKind::Auth(a) => a.as_str(),
        }
    }
}

impl AuthKind {
    /// The outcome as a label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::NoToken => "no_token",
            AuthKind::Malformed => "malformed",
            AuthKind::Expired => "expired",
            AuthKind::NotYetValid => "not_yet_valid",
            AuthKind::BadSignature => "bad_signature",
            AuthKind::UnknownKid => "unknown_kid",
            AuthKind::BadIssuer => "bad_issuer",
            AuthKind::BadAudience => "bad_audience",
            AuthKind::InsufficientScope => "insufficient_scope",
            AuthKind::Inactive => "inactive",
            AuthKind::IdpError => "idp_error",
        }
    }
}

impl ProxyError {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProxyError::BadRequest(_) => ErrorKind::BadRequest,
            ProxyError::HeaderTooLarge | ProxyError::TooManyHeaders => ErrorKind::HeaderTooLarge,
            ProxyError::BodyTooLarge => ErrorKind::BodyTooLarge,
            ProxyError::NoRoute => ErrorKind::NoRoute,
            ProxyError::UpstreamConnect(_) => ErrorKind::UpstreamConnect,
            ProxyError::UpstreamUnresolved => ErrorKind::UpstreamUnresolved,
            ProxyError::UpstreamTls(_) => ErrorKind::UpstreamTls,
            ProxyError::UpstreamTimeout(_) => ErrorKind::UpstreamTimeout,
            ProxyError::UpstreamBadResponse(_) => ErrorKind::UpstreamBadResponse,
            ProxyError::UpstreamIo(_) => ErrorKind::UpstreamIo,
            ProxyError::ClientIo(_) => ErrorKind::ClientIo,
            ProxyError::Auth(e) => ErrorKind::Auth(e.kind()),
            ProxyError::LoginUnavailable(_) => ErrorKind::Auth(AuthKind::IdpError),
            ProxyError::LoginFailed { kind, .. } => ErrorKind::Auth(*kind),
            ProxyError::LoginStateLost => ErrorKind::Auth(AuthKind::Malformed),
        }
    }

    /// The answer this error gets, or `None` when the client is gone and only closing is left.
    pub fn response(&self) -> Option<Reply> {
        let r = |status, body: &'static str| Some(Reply::json(status, body));
        match self {
            ProxyError::BadRequest(_) => r(400, r#"{"error_msg":"400 Bad Request"}"#),
            ProxyError::HeaderTooLarge => r(
                431,
                r#"{"error_msg":"431 Request Header Fields Too Large"}"#,
            ),
            ProxyError::TooManyHeaders => r(431, r#"{"error_msg":"431 too many request headers"}"#),
            ProxyError::BodyTooLarge => r(413, r#"{"error_msg":"413 Request Entity Too Large"}"#),
            ProxyError::NoRoute => r(404, r#"{"error_msg":"404 Route Not Found"}"#),
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamUnresolved
            | ProxyError::UpstreamTls(_) => r(
                502,
                r#"{"error_msg":"502 Bad Gateway: upstream unreachable"}"#,
            ),
            ProxyError::UpstreamBadResponse(_) | ProxyError::UpstreamIo(_) => r(
                502,
                r#"{"error_msg":"502 Bad Gateway: invalid upstream response"}"#,
            ),
            ProxyError::UpstreamTimeout(_) => r(504, r#"{"error_msg":"504 Gateway Timeout"}"#),
            ProxyError::ClientIo(_) => None,
            ProxyError::LoginUnavailable(why) => Some(
                Reply::json(
                    503,
                    serde_json::json!({
                        "error_msg": format!("503 Service Unavailable: the sign-in cannot go on: {why}")
                    })
                    .to_string(),
                )
                .with_header("Cache-Control", "no-store"),
            ),
            ProxyError::LoginFailed { why, .. } => Some(
                Reply::json(
                    401,
                    serde_json::json!({ "error": "login_failed", "error_description": why })
                        .to_string(),
                )
                .with_header("Cache-Control", "no-store"),
            ),
            ProxyError::LoginStateLost => Some(
                Reply::json(
                    400,
                    r#"{"error_msg":"The sign-in could not be completed: it was started too long ago, or in another browser, several times in a row. Close this tab and open the site again."}"#,
                )
                .with_header("Cache-Control", "no-store"),
            ),
            ProxyError::Auth(e) => {
                let (status, challenge, body) = e.answer();
                let reply = Reply::json(status, body);
                Some(match challenge {
                    Some(c) => reply.with_header("WWW-Authenticate", c),
                    None => reply,
                })
            }
        }
    }

    /// What the access log says went wrong: the precise reason where there is one, else the
    /// kind.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(why)
            | ProxyError::UpstreamTimeout(why)
            | ProxyError::UpstreamBadResponse(why) => why,
            other => other.kind().as_str(),
        }
    }
}
