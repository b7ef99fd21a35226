//! The data plane's one error type, and the one place it becomes an HTTP answer.

use std::borrow::Cow;
use std::io;

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
    Auth(#[from] crate::oidc::AuthError),
    /// The client connection failed, closed or stalled; nothing can be answered.
    #[error("client connection: {0}")]
    ClientIo(io::Error),
}

/// An HTTP error answer: status, reason phrase, JSON body.
pub struct ErrorResponse {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: &'static str,
    /// A short JSON body.
    pub body: Cow<'static, str>,
    /// `WWW-Authenticate` challenge, for 401s.
    pub challenge: Option<String>,
}

impl ProxyError {
    /// The answer this error gets, or `None` when the client is gone and only closing is left.
    pub fn response(&self) -> Option<ErrorResponse> {
        let r = |status, reason, body: &'static str| {
            Some(ErrorResponse {
                status,
                reason,
                body: Cow::Borrowed(body),
                challenge: None,
            })
        };
        match self {
            ProxyError::BadRequest(_) => {
                r(400, "Bad Request", r#"{"error_msg":"400 Bad Request"}"#)
            }
            ProxyError::HeaderTooLarge => r(
                431,
                "Request Header Fields Too Large",
                r#"{"error_msg":"431 Request Header Fields Too Large"}"#,
            ),
            ProxyError::TooManyHeaders => r(
                431,
                "Request Header Fields Too Large",
                r#"{"error_msg":"431 too many request headers"}"#,
            ),
            ProxyError::BodyTooLarge => r(
                413,
                "Payload Too Large",
                r#"{"error_msg":"413 Request Entity Too Large"}"#,
            ),
            ProxyError::NoRoute => r(404, "Not Found", r#"{"error_msg":"404 Route Not Found"}"#),
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamUnresolved
            | ProxyError::UpstreamTls(_) => r(
                502,
                "Bad Gateway",
                r#"{"error_msg":"502 Bad Gateway: upstream unreachable"}"#,
            ),
            ProxyError::UpstreamBadResponse(_) | ProxyError::UpstreamIo(_) => r(
                502,
                "Bad Gateway",
                r#"{"error_msg":"502 Bad Gateway: invalid upstream response"}"#,
            ),
            ProxyError::UpstreamTimeout(_) => r(
                504,
                "Gateway Timeout",
                r#"{"error_msg":"504 Gateway Timeout"}"#,
            ),
            ProxyError::ClientIo(_) => None,
            ProxyError::Auth(e) => {
                let (status, challenge, body) = e.answer();
                let reason = match status {
                    400 => "Bad Request",
                    401 => "Unauthorized",
                    _ => "Forbidden",
                };
                Some(ErrorResponse {
                    status,
                    reason,
                    body: Cow::Owned(body),
                    challenge,
                })
            }
        }
    }

    /// A short label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(why) => why,
            ProxyError::HeaderTooLarge => "header_too_large",
            ProxyError::TooManyHeaders => "too_many_headers",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::NoRoute => "no_route",
            ProxyError::UpstreamConnect(_) => "upstream_connect",
            ProxyError::UpstreamUnresolved => "upstream_unresolved",
            ProxyError::UpstreamTls(_) => "upstream_tls",
            ProxyError::UpstreamTimeout(what) => what,
            ProxyError::UpstreamBadResponse(why) => why,
            ProxyError::UpstreamIo(_) => "upstream_io",
            ProxyError::ClientIo(_) => "client_io",
            ProxyError::Auth(crate::oidc::AuthError::Missing { .. }) => "no_token",
            ProxyError::Auth(crate::oidc::AuthError::MalformedHeader) => "bad_authorization",
            ProxyError::Auth(crate::oidc::AuthError::Invalid { .. }) => "invalid_token",
        }
    }
}

/// Write an error answer into `out`.
pub fn write_error_response(out: &mut Vec<u8>, e: &ErrorResponse, close: bool) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nServer: portcullis\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        e.status,
        e.reason,
        e.body.len(),
    );
    if let Some(c) = &e.challenge {
        let _ = write!(out, "WWW-Authenticate: {c}\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(e.body.as_bytes());
}
