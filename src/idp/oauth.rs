//! The login flow's IdP calls: the token endpoint (code exchange, RFC 6749 §4.1.3; refresh,
//! §6), userinfo (OpenID Connect Core §5.3) and revocation (RFC 7009). Forms, client
//! authentication and answer checks are plain functions, so they are tested without a server;
//! the calls themselves run on the IdP thread.

use std::time::Duration;

use super::{form_encode, read_capped, send_failure, AuthMethod, Clients, Endpoint, IdpError};

/// Longest `error_description` kept from an IdP, in characters: enough to explain, too short
/// to carry a document.
const MAX_DESCRIPTION: usize = 120;
/// Longest `error` code kept; RFC 6749 codes are a few words.
const MAX_CODE: usize = 64;
/// Runs of token-like characters at least this long are taken for a token or secret the IdP
/// echoed (a JWT, an opaque token, a code) and are redacted from descriptions.
const TOKEN_LIKE_RUN: usize = 24;
/// What replaces a secret in a description.
const REDACTED: &str = "[redacted]";

/// Client authentication at the token and revocation endpoints.
#[derive(Clone)]
pub struct ClientAuth {
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// Where the credentials go.
    pub method: AuthMethod,
}

impl std::fmt::Debug for ClientAuth {
    // Debug output reaches logs: the secret never does.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("client_id", &self.client_id)
            .field("client_secret", &REDACTED)
            .field("method", &self.method)
            .finish()
    }
}

/// What a token request asks for.
#[derive(Clone)]
pub enum Grant {
    /// Exchange an authorization code (RFC 6749 §4.1.3), with its PKCE verifier (RFC 7636).
    Code {
        /// The code from the callback.
        code: String,
        /// The `redirect_uri` the authorization request named, byte for byte.
        redirect_uri: String,
        /// The PKCE verifier, when the authorization request had a challenge.
        code_verifier: Option<String>,
    },
    /// Get a fresh access token (RFC 6749 §6).
    Refresh {
        /// The refresh token.
        refresh_token: String,
    },
}

impl std::fmt::Debug for Grant {
    // Codes, verifiers and refresh tokens are credentials: Debug (logs) names only their kind.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grant::Code {
                redirect_uri,
                code_verifier,
                ..
            } => f
                .debug_struct("Code")
                .field("code", &REDACTED)
                .field("redirect_uri", redirect_uri)
                .field("code_verifier", &code_verifier.as_ref().map(|_| REDACTED))
                .finish(),
            Grant::Refresh { .. } => f
                .debug_struct("Refresh")
                .field("refresh_token", &REDACTED)
                .finish(),
        }
    }
}

/// One call to the token endpoint.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Token endpoint URL.
    pub endpoint: String,
    /// How the client authenticates.
    pub client: ClientAuth,
    /// What is asked for.
    pub grant: Grant,
    /// Verify the endpoint's certificate.
    pub ssl_verify: bool,
    /// Call timeout, from connecting to the last byte of the answer.
    pub timeout: Duration,
}

/// A successful token answer (RFC 6749 §5.1).
#[derive(Clone)]
pub struct TokenAnswer {
    /// The access token (non-empty).
    pub access_token: String,
    /// `token_type` as sent; always Bearer (any case), as nothing else is accepted.
    pub token_type: String,
    /// Seconds the access token lives, when given (finite, not negative).
    pub expires_in: Option<f64>,
    /// A refresh token, when given (never empty).
    pub refresh_token: Option<String>,
    /// The raw id token, when given (never empty); its checks are the caller's.
    pub id_token: Option<String>,
}

impl std::fmt::Debug for TokenAnswer {
    // Tokens are credentials: Debug (logs) says which came, not what they are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("access_token", &REDACTED)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| REDACTED),
            )
            .field("id_token", &self.id_token.as_ref().map(|_| REDACTED))
            .finish()
    }
}

/// An OAuth error answer (RFC 6749 §5.2, RFC 6750 §3): the IdP understood the request and
/// refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// The HTTP status it came with.
    pub status: u16,
    /// The `error` code (`invalid_grant`, `invalid_client`, …), checked to be RFC 6749's
    /// character set and short.
    pub code: String,
    /// `error_description`, cut short, restricted to printable ASCII without `"` and `\`,
    /// and with what we sent and anything token-like redacted.
    pub description: Option<String>,
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.description {
            Some(d) => write!(f, "{} ({d})", self.code),
            None => f.write_str(&self.code),
        }
    }
}

/// A form body and the `Authorization` header that goes with it, if any.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PostForm {
    /// `application/x-www-form-urlencoded` body.
    pub body: String,
    /// `Authorization` header value (client_secret_basic).
    pub authorization: Option<String>,
}

/// `fields` as a form, with the client's credentials where `method` puts them.
pub(super) fn authenticated_form(
    fields: &[(&str, &str)],
    client_id: &str,
    client_secret: &str,
    method: AuthMethod,
) -> PostForm {
    let mut body = String::new();
    let mut add = |k: &str, v: &str| {
        if !body.is_empty() {
            body.push('&');
        }
        body.push_str(k);
        body.push('=');
        body.push_str(&form_encode(v));
    };
    for (k, v) in fields {
        add(k, v);
    }
    let authorization = match method {
        AuthMethod::ClientSecretBasic => {
            // RFC 6749 §2.3.1: both parts are form-encoded before Basic encoding, so a `:` in
            // the id cannot shift the split.
            use base64::Engine;
            let pair = format!("{}:{}", form_encode(client_id), form_encode(client_secret));
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
        }
        AuthMethod::ClientSecretPost => {
            add("client_id", client_id);
            add("client_secret", client_secret);
            None
        }
    };
    PostForm {
        body,
        authorization,
    }
}

/// The form fields of a grant.
fn grant_fields(grant: &Grant) -> Vec<(&'static str, &str)> {
    match grant {
        Grant::Code {
            code,
            redirect_uri,
            code_verifier,
        } => {
            let mut f = vec![
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", redirect_uri.as_str()),
            ];
            if let Some(v) = code_verifier {
                f.push(("code_verifier", v.as_str()));
            }
            f
        }
        Grant::Refresh { refresh_token } => vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
        ],
    }
}

/// The token request's form (and Basic header).
pub(super) fn token_form(req: &TokenRequest) -> PostForm {
    authenticated_form(
        &grant_fields(&req.grant),
        &req.client.client_id,
        &req.client.client_secret,
        req.client.method,
    )
}

/// What the token request sent that must never come back in a description.
fn token_secrets(req: &TokenRequest) -> Vec<&str> {
    let mut s = vec![req.client.client_secret.as_str()];
    match &req.grant {
        Grant::Code {
            code,
            code_verifier,
            ..
        } => {
            s.push(code);
            s.extend(code_verifier.as_deref());
        }
        Grant::Refresh { refresh_token } => s.push(refresh_token),
    }
    s
}

/// A 2xx token answer's body, checked against RFC 6749 §5.1.
pub(super) fn parse_token_answer(body: &[u8]) -> Result<TokenAnswer, IdpError> {
    const EP: Endpoint = Endpoint::Token;
    let invalid = |why: &str| IdpError::Invalid(EP, why.to_string());
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| invalid("token answer is not JSON"))?;
    let obj = json
        .as_object()
        .ok_or_else(|| invalid("token answer is not a JSON object"))?;
    // Optional string fields: absent or null is None, empty counts as absent (nothing can be
    // done with an empty token), anything else is a broken answer.
    let optional = |name: &str| -> Result<Option<String>, IdpError> {
        match obj.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(&format!("token answer's `{name}` is not a string"))),
        }
    };
    let access_token = match obj.get("access_token") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(serde_json::Value::String(_)) => {
            return Err(invalid("token answer's `access_token` is empty"))
        }
        Some(_) => return Err(invalid("token answer's `access_token` is not a string")),
        None => return Err(invalid("token answer has no `access_token`")),
    };
    let token_type = match obj.get("token_type") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid("token answer's `token_type` is not a string")),
        None => return Err(invalid("token answer has no `token_type`")),
    };
    // The token is sent as a bearer token (userinfo, upstream); one bound to a proof (DPoP,
    // MAC) would be refused there or, worse, be replayable.
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(invalid("token answer's `token_type` is not Bearer"));
    }
    let expires_in = match obj.get("expires_in") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        // Some IdPs (older Azure AD, Facebook) send the number as a string.
        Some(serde_json::Value::String(s)) => Some(
            s.trim()
                .parse::<f64>()
                .map_err(|_| invalid("token answer's `expires_in` is not a number"))?,
        ),
        Some(_) => return Err(invalid("token answer's `expires_in` is not a number")),
    };
    if expires_in.is_some_and(|e| !e.is_finite() || e < 0.0) {
        return Err(invalid(
            "token answer's `expires_in` is not a number of seconds",
        ));
    }
    Ok(TokenAnswer {
        access_token,
        token_type,
        expires_in,
        refresh_token: optional("refresh_token")?,
        id_token: optional("id_token")?,
    })
}

/// A userinfo answer's body, checked to be a JSON object. `content_type` tells a signed
/// (`application/jwt`) answer apart, which is not supported.
pub(super) fn check_userinfo(content_type: Option<&str>, body: &[u8]) -> Result<(), IdpError> {
    const EP: Endpoint = Endpoint::Userinfo;
    if content_type.is_some_and(|c| {
        c.trim_start()
            .get(..15)
            .is_some_and(|p| p.eq_ignore_ascii_case("application/jwt"))
    }) {
        return Err(IdpError::Invalid(
            EP,
            "userinfo answer is a JWT (application/jwt), which is not supported".into(),
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| IdpError::Invalid(EP, "userinfo answer is not JSON".into()))?;
    if !json.is_object() {
        return Err(IdpError::Invalid(
            EP,
            "userinfo answer is not a JSON object".into(),
        ));
    }
    Ok(())
}

/// RFC 6749 §5.2's characters for `error` and `error_description`: printable ASCII without
/// `"` and `\` (so the text can go into a quoted header parameter as is).
fn rfc6749_char(c: char) -> bool {
    matches!(c, '\x20'..='\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e')
}

/// An `error` code fit to be repeated: short and in RFC 6749's characters, else nothing.
fn safe_code(raw: &str) -> Option<String> {
    let ok = !raw.is_empty() && raw.len() <= MAX_CODE && raw.chars().all(rfc6749_char);
    ok.then(|| raw.to_string())
}

/// Whether `c` can be part of a token, a code or a secret as IdPs make them (base64, base64url,
/// JWT dots, hex).
fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=')
}

/// A description fit to be repeated: what we sent redacted, anything token-like redacted,
/// other characters restricted to RFC 6749's, cut to [`MAX_DESCRIPTION`]. Empty → None.
fn safe_description(raw: &str, secrets: &[&str]) -> Option<String> {
    let mut text = raw.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(s, REDACTED);
    }
    // Redact long token-like runs: an IdP may echo a token we never saw (another session's,
    // or ours re-encoded).
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= TOKEN_LIKE_RUN {
            out.push_str(REDACTED);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if token_char(c) {
            run.push(c);
            continue;
        }
        flush(&mut run, &mut out);
        match c {
            '"' => out.push('\''),
            '\\' => out.push('/'),
            '\t' | '\r' | '\n' => out.push(' '),
            c if rfc6749_char(c) => out.push(c),
            _ => out.push('?'),
        }
    }
    flush(&mut run, &mut out);
    let trimmed = out.trim();
    if trimmed.is_empty() {
        return None;
    }
    // All ASCII now, so byte slicing is on char boundaries.
    Some(if trimmed.len() > MAX_DESCRIPTION {
        format!("{}...", trimmed[..MAX_DESCRIPTION].trim_end())
    } else {
        trimmed.to_string()
    })
}

/// The OAuth error in a JSON body (`{"error": "...", "error_description": "..."}`), if it is one.
fn error_from_json(status: u16, body: &[u8], secrets: &[&str]) -> Option<OAuthError> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = safe_code(json.get("error")?.as_str()?)?;
    let description = json
        .get("error_description")
        .and_then(|d| d.as_str())
        .and_then(|d| safe_description(d, secrets));
    Some(OAuthError {
        status,
        code,
        description,
    })
}

/// The auth-params of a `WWW-Authenticate: Bearer …` challenge (RFC 6750 §3), as (name, value);
/// quoted values unquoted. Only the first challenge is read.
fn challenge_params(header: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let Some((scheme, mut rest)) = header.trim().split_once(' ') else {
        return params;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return params;
    }
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((name, after)) = rest.split_once('=') else {
            return params;
        };
        let name = name.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            // An unterminated quote ends the header: keep what was read.
            (value, end.map_or("", |e| &quoted[e..]))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((name, value));
        rest = next;
    }
}

/// The OAuth error in a `WWW-Authenticate` challenge (userinfo refuses that way), if any.
fn error_from_challenge(status: u16, header: &str, secrets: &[&str]) -> Option<OAuthError> {
    let params = challenge_params(header);
    let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let code = safe_code(get("error")?)?;
    Some(OAuthError {
        status,
        code,
        description: get("error_description").and_then(|d| safe_description(d, secrets)),
    })
}

/// A request's answer: the body of a 2xx (with its Content-Type), else the error it makes.
/// 4xx bodies are read (capped) for an OAuth error; other statuses are just their status.
async fn send(
    builder: reqwest::RequestBuilder,
    endpoint: Endpoint,
    secrets: &[&str],
) -> Result<(Option<String>, Vec<u8>), IdpError> {
    let resp = builder
        .send()
        .await
        .map_err(|e| send_failure(endpoint, &e))?;
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if status.is_success() {
        let body = read_capped(resp, endpoint).await?;
        // Some IdPs answer errors with 200 (GitHub does).
        if let Some(e) = error_from_json(status.as_u16(), &body, secrets) {
            return Err(IdpError::OAuth(endpoint, e));
        }
        return Ok((content_type, body));
    }
    if !status.is_client_error() {
        return Err(IdpError::Status(endpoint, status.as_u16()));
    }
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = read_capped(resp, endpoint).await?;
    let refused = error_from_json(status.as_u16(), &body, secrets)
        .or_else(|| challenge.and_then(|c| error_from_challenge(status.as_u16(), &c, secrets)));
    Err(match refused {
        Some(e) => IdpError::OAuth(endpoint, e),
        None => IdpError::Status(endpoint, status.as_u16()),
    })
}

/// A form POST to `url` with the usual headers.
pub(super) fn post(
    client: &reqwest::Client,
    url: &str,
    form: PostForm,
    timeout: Duration,
) -> reqwest::RequestBuilder {
    let mut b = client
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Accept", "application/json")
        .timeout(timeout);
    if let Some(a) = form.authorization {
        b = b.header("Authorization", a);
    }
    b.body(form.body)
}

/// Make a call, count its outcome and time, and hand the outcome back.
pub(super) async fn counted<T>(
    clients: &Clients,
    endpoint: Endpoint,
    call: impl std::future::Future<Output = Result<T, IdpError>>,
) -> Result<T, IdpError> {
    let started = std::time::Instant::now();
    let r = call.await;
    clients.stats.took(endpoint, started);
    match r {
        Ok(v) => {
            clients.stats.success(endpoint);
            Ok(v)
        }
        Err(e) => Err(clients.stats.count(e)),
    }
}

/// The token call (code exchange or refresh).
pub(super) async fn token(clients: &Clients, req: &TokenRequest) -> Result<TokenAnswer, IdpError> {
    const EP: Endpoint = Endpoint::Token;
    let fetched = async {
        let builder = post(
            clients.for_ssl(req.ssl_verify),
            &req.endpoint,
            token_form(req),
            req.timeout,
        );
        let (_, body) = send(builder, EP, &token_secrets(req)).await?;
        parse_token_answer(&body)
    };
    counted(clients, EP, fetched).await
}

/// The userinfo call: the JSON object's bytes.
pub(super) async fn userinfo(
    clients: &Clients,
    endpoint: &str,
    access_token: &str,
    ssl_verify: bool,
    timeout: Duration,
) -> Result<Vec<u8>, IdpError> {
    const EP: Endpoint = Endpoint::Userinfo;
    let fetched = async {
        let builder = clients
            .for_ssl(ssl_verify)
            .get(endpoint)
            .header("Authorization", format!("Bearer {access_token}"))
            .header("Accept", "application/json")
            .timeout(timeout);
        let (content_type, body) = send(builder, EP, &[access_token]).await?;
        check_userinfo(content_type.as_deref(), &body)?;
        Ok(body)
    };
    counted(clients, EP, fetched).await
}

/// The revocation form: the token, its hint, and the client's credentials.
pub(super) fn revocation_form(client: &ClientAuth, token: &str, hint: &str) -> PostForm {
    authenticated_form(
        &[("token", token), ("token_type_hint", hint)],
        &client.client_id,
        &client.client_secret,
        client.method,
    )
}

/// The revocation call; any 2xx is success (RFC 7009 §2.2 says 200; some IdPs answer 204).
pub(super) async fn revoke(
    clients: &Clients,
    endpoint: &str,
    client: &ClientAuth,
    token: &str,
    hint: &str,
    ssl_verify: bool,
    timeout: Duration,
) -> Result<(), IdpError> {
    const EP: Endpoint = Endpoint::Revocation;
    let fetched = async {
        let form = revocation_form(client, token, hint);
        let builder = post(clients.for_ssl(ssl_verify), endpoint, form, timeout);
        // The body was read (up to the cap), so the connection goes back to the pool.
        send(builder, EP, &[token, client.client_secret.as_str()]).await?;
        Ok(())
    };
    counted(clients, EP, fetched).await
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use base64::Engine;

    use super::*;
    use crate::idp::{Failure, Idp};

    fn basic_client() -> ClientAuth {
        ClientAuth {
            client_id: "my:client".into(),
            client_secret: "s3cr&t p%ss".into(),
            method: AuthMethod::ClientSecretBasic,
        }
    }

    fn post_client() -> ClientAuth {
        ClientAuth {
            method: AuthMethod::ClientSecretPost,
            ..basic_client()
        }
    }

    fn code_request(endpoint: &str, client: ClientAuth) -> TokenRequest {
        TokenRequest {
            endpoint: endpoint.into(),
            client,
            grant: Grant::Code {
                code: "the-code/1+2".into(),
                redirect_uri: "https://app.example/cb?x=1".into(),
                code_verifier: Some("verifier-verifier-verifier-verifier-verifier".into()),
            },
            ssl_verify: false,
            timeout: Duration::from_secs(5),
        }
    }

    fn refresh_request(endpoint: &str) -> TokenRequest {
        TokenRequest {
            endpoint: endpoint.into(),
            client: post_client(),
            grant: Grant::Refresh {
                refresh_token: "rt-1".into(),
            },
            ssl_verify: false,
            timeout: Duration::from_secs(5),
        }
    }

    // --- forms and client authentication -------------------------------------------------

    #[test]
    fn basic_auth_form_encodes_both_parts_and_keeps_them_out_of_the_body() {
        let f = token_form(&code_request("http://x/token", basic_client()));
        assert_eq!(
            f.body,
            "grant_type=authorization_code&code=the-code%2F1%2B2\
             &redirect_uri=https%3A%2F%2Fapp.example%2Fcb%3Fx%3D1\
             &code_verifier=verifier-verifier-verifier-verifier-verifier"
        );
        let auth = f.authorization.expect("Basic header");
        let b64 = auth.strip_prefix("Basic ").expect("Basic scheme");
        let pair = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        // RFC 6749 §2.3.1: the `:` in the id is encoded, so the first `:` splits id and secret.
        assert_eq!(pair, b"my%3Aclient:s3cr%26t+p%25ss");
    }

    #[test]
    fn post_auth_puts_the_credentials_in_the_form() {
        let mut req = code_request("http://x/token", post_client());
        req.grant = Grant::Code {
            code: "c".into(),
            redirect_uri: "https://app/cb".into(),
            code_verifier: None,
        };
        let f = token_form(&req);
        assert_eq!(f.authorization, None);
        assert_eq!(
            f.body,
            "grant_type=authorization_code&code=c&redirect_uri=https%3A%2F%2Fapp%2Fcb\
             &client_id=my%3Aclient&client_secret=s3cr%26t+p%25ss"
        );
        let f = token_form(&refresh_request("http://x/token"));
        assert_eq!(
            f.body,
            "grant_type=refresh_token&refresh_token=rt-1\
             &client_id=my%3Aclient&client_secret=s3cr%26t+p%25ss"
        );
        let f = revocation_form(&post_client(), "tok en", "refresh_token");
        assert_eq!(
            f.body,
            "token=tok+en&token_type_hint=refresh_token\
             &client_id=my%3Aclient&client_secret=s3cr%26t+p%25ss"
        );
        let f = revocation_form(&basic_client(), "t", "access_token");
        assert_eq!(f.body, "token=t&token_type_hint=access_token");
        assert!(f.authorization.is_some());
    }

    #[test]
    fn debug_output_never_shows_credentials() {
        let req = code_request("http://x/token", basic_client());
        let answer = TokenAnswer {
            access_token: "AT-secret".into(),
            token_type: "Bearer".into(),
            expires_in: Some(60.0),
            refresh_token: Some("RT-secret".into()),
            id_token: Some("IDT-secret".into()),
        };
        let text = format!(
            "{req:?} {:?} {answer:?}",
            Grant::Refresh {
                refresh_token: "RT-secret".into()
            }
        );
        for secret in [
            "s3cr",
            "the-code",
            "verifier-verifier",
            "AT-secret",
            "RT-secret",
            "IDT-secret",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("my:client") && text.contains("https://app.example/cb"));
    }

    // --- token answers --------------------------------------------------------------------

    fn invalid(why: &str) -> IdpError {
        IdpError::Invalid(Endpoint::Token, why.into())
    }

    #[test]
    fn a_full_token_answer_is_read() {
        let a = parse_token_answer(
            br#"{"access_token":"at","token_type":"bearer","expires_in":300,
                "refresh_token":"rt","id_token":"a.b.c","scope":"openid"}"#,
        )
        .unwrap();
        assert_eq!(a.access_token, "at");
        assert_eq!(a.token_type, "bearer");
        assert_eq!(a.expires_in, Some(300.0));
        assert_eq!(a.refresh_token.as_deref(), Some("rt"));
        assert_eq!(a.id_token.as_deref(), Some("a.b.c"));
        let a = parse_token_answer(
            br#"{"access_token":"at","token_type":"Bearer","expires_in":"3600","refresh_token":"","id_token":null}"#,
        )
        .unwrap();
        assert_eq!(a.expires_in, Some(3600.0));
        assert_eq!(a.refresh_token, None);
        assert_eq!(a.id_token, None);
        let a = parse_token_answer(br#"{"access_token":"at","token_type":"Bearer"}"#).unwrap();
        assert_eq!(a.expires_in, None);
    }

    #[test]
    fn broken_token_answers_say_precisely_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"<html>oops</html>", "token answer is not JSON"),
            (b"", "token answer is not JSON"),
            (br#"{"access_token":"at""#, "token answer is not JSON"),
            (br#"["access_token"]"#, "token answer is not a JSON object"),
            (br#""at""#, "token answer is not a JSON object"),
            (
                br#"{"token_type":"Bearer"}"#,
                "token answer has no `access_token`",
            ),
            (
                br#"{"access_token":42,"token_type":"Bearer"}"#,
                "token answer's `access_token` is not a string",
            ),
            (
                br#"{"access_token":"","token_type":"Bearer"}"#,
                "token answer's `access_token` is empty",
            ),
            (
                br#"{"access_token":"at"}"#,
                "token answer has no `token_type`",
            ),
            (
                br#"{"access_token":"at","token_type":["Bearer"]}"#,
                "token answer's `token_type` is not a string",
            ),
            (
                br#"{"access_token":"at","token_type":"DPoP"}"#,
                "token answer's `token_type` is not Bearer",
            ),
            (
                br#"{"access_token":"at","token_type":"Bearer","expires_in":"soon"}"#,
                "token answer's `expires_in` is not a number",
            ),
            (
                br#"{"access_token":"at","token_type":"Bearer","expires_in":true}"#,
                "token answer's `expires_in` is not a number",
            ),
            (
                br#"{"access_token":"at","token_type":"Bearer","expires_in":-5}"#,
                "token answer's `expires_in` is not a number of seconds",
            ),
            (
                br#"{"access_token":"at","token_type":"Bearer","expires_in":"inf"}"#,
                "token answer's `expires_in` is not a number of seconds",
            ),
            (
                br#"{"access_token":"at","token_type":"Bearer","refresh_token":7}"#,
                "token answer's `refresh_token` is not a string",
            ),
            (
                br#"{"access_token":"at","token_type":"Bearer","id_token":{"a":1}}"#,
                "token answer's `id_token` is not a string",
            ),
        ];
        for (body, why) in cases {
            let got = parse_token_answer(body).unwrap_err();
            assert_eq!(got, invalid(why), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn userinfo_must_be_a_json_object() {
        assert!(check_userinfo(Some("application/json"), br#"{"sub":"a"}"#).is_ok());
        assert!(check_userinfo(None, br#"{}"#).is_ok());
        let why = |ct: Option<&str>, b: &[u8]| match check_userinfo(ct, b) {
            Err(IdpError::Invalid(Endpoint::Userinfo, why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(why(None, b"[1]"), "userinfo answer is not a JSON object");
        assert_eq!(why(None, b"{nope"), "userinfo answer is not JSON");
        assert_eq!(
            why(Some("Application/JWT; charset=utf-8"), b"a.b.c"),
            "userinfo answer is a JWT (application/jwt), which is not supported"
        );
    }

    // --- error answers --------------------------------------------------------------------

    #[test]
    fn oauth_errors_are_read_with_a_safe_description() {
        let e = error_from_json(
            400,
            br#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
            &[],
        )
        .unwrap();
        assert_eq!(
            e,
            OAuthError {
                status: 400,
                code: "invalid_grant".into(),
                description: Some("grant request is invalid".into()),
            }
        );
        assert_eq!(e.to_string(), "invalid_grant (grant request is invalid)");
        let e = error_from_json(401, br#"{"error":"invalid_client"}"#, &[]).unwrap();
        assert_eq!(e.description, None);
        assert_eq!(
            IdpError::OAuth(Endpoint::Token, e).to_string(),
            "token endpoint refused the request: invalid_client"
        );

        // What we sent is redacted, even when short; so is anything token-like.
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
        let body = serde_json::json!({
            "error": "invalid_grant",
            "error_description": format!("code abc123 unknown; secret s3cr&t p%ss; token {jwt}\n\"quoted\" back\\slash é"),
        });
        let e =
            error_from_json(400, body.to_string().as_bytes(), &["abc123", "s3cr&t p%ss"]).unwrap();
        let d = e.description.unwrap();
        assert_eq!(
            d,
            "code [redacted] unknown; secret [redacted]; token [redacted] 'quoted' back/slash ?"
        );

        // Long descriptions are cut.
        let long = "word ".repeat(100);
        let body = serde_json::json!({"error": "server_error", "error_description": long});
        let d = error_from_json(400, body.to_string().as_bytes(), &[])
            .unwrap()
            .description
            .unwrap();
        assert!(d.len() <= MAX_DESCRIPTION + 3 && d.ends_with("..."), "{d}");

        // Not an OAuth error: the caller falls back to the status.
        for body in [
            &b"<html>400</html>"[..],
            br#"{"message":"bad"}"#,
            br#"{"error":42}"#,
            br#"{"error":""}"#,
            br#"{"error":"has \"quote\""}"#,
            br#"{"error":"caf\u00e9"}"#,
            br#"[{"error":"invalid_grant"}]"#,
        ] {
            assert_eq!(error_from_json(400, body, &[]), None, "{body:?}");
        }
        let long_code = format!(r#"{{"error":"{}"}}"#, "x".repeat(MAX_CODE + 1));
        assert_eq!(error_from_json(400, long_code.as_bytes(), &[]), None);
    }

    #[test]
    fn bearer_challenges_are_read_for_their_error() {
        let h = r#"Bearer realm="example", error="invalid_token", error_description="The access token expired \"now\"""#;
        assert_eq!(
            challenge_params(h),
            vec![
                ("realm".to_string(), "example".to_string()),
                ("error".into(), "invalid_token".into()),
                (
                    "error_description".into(),
                    "The access token expired \"now\"".into()
                ),
            ]
        );
        let e = error_from_challenge(401, h, &[]).unwrap();
        assert_eq!(e.code, "invalid_token");
        assert_eq!(
            e.description.as_deref(),
            Some("The access token expired 'now'")
        );
        assert_eq!(
            challenge_params("Bearer error=insufficient_scope,scope=\"openid"),
            vec![
                ("error".to_string(), "insufficient_scope".to_string()),
                ("scope".into(), "openid".into()),
            ]
        );
        assert_eq!(error_from_challenge(401, r#"Bearer realm="x""#, &[]), None);
        assert_eq!(error_from_challenge(401, r#"Basic error="x""#, &[]), None);
        assert_eq!(error_from_challenge(401, "Bearer", &[]), None);
        assert_eq!(error_from_challenge(401, "", &[]), None);
    }

    // --- calls against a local server ----------------------------------------------------

    /// A request the test server received.
    #[derive(Debug, Clone)]
    struct Seen {
        head: String,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<String> {
            self.head.lines().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        }
    }

    /// What the test server does with a request.
    enum Reply {
        /// Write these bytes (a whole answer) and keep the connection.
        Bytes(Vec<u8>),
        /// Wait, then write.
        Late(Duration, Vec<u8>),
        /// Stream a chunked body without end (bounded, so a broken reader fails the test).
        Endless,
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
        for (n, v) in headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(body);
        Reply::Bytes(out.into_bytes())
    }

    fn json(status: u16, body: &str) -> Reply {
        answer(status, &[("Content-Type", "application/json")], body)
    }

    struct Server {
        port: u16,
        seen: Arc<Mutex<Vec<Seen>>>,
        conns: Arc<AtomicUsize>,
    }

    impl Server {
        fn url(&self, path: &str) -> String {
            format!("http://127.0.0.1:{}{path}", self.port)
        }
        fn https_url(&self, path: &str) -> String {
            format!("https://127.0.0.1:{}{path}", self.port)
        }
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    /// Serve keep-alive HTTP/1.1 on 127.0.0.1:0 (over TLS with a self-signed certificate when
    /// `tls`), answering each request with `reply`.
    fn server(tls: bool, reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let conns: Arc<AtomicUsize> = Arc::default();
        let reply = Arc::new(reply);
        let tls = tls.then(tls_config);
        let (s, c) = (seen.clone(), conns.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (s, reply, tls) = (s.clone(), reply.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    Some(cfg) => {
                        let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                            return;
                        };
                        serve_conn(rustls::StreamOwned::new(conn, stream), &s, &*reply)
                    }
                    None => serve_conn(stream, &s, &*reply),
                });
            }
        });
        Server { port, seen, conns }
    }

    fn tls_config() -> Arc<rustls::ServerConfig> {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        Arc::new(cfg)
    }

    fn serve_conn<S: Read + Write>(
        mut s: S,
        seen: &Mutex<Vec<Seen>>,
        reply: &(dyn Fn(&Seen) -> Reply + Send + Sync),
    ) {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            buf.clear();
            while !buf.ends_with(b"\r\n\r\n") {
                match s.read(&mut byte) {
                    Ok(1) => buf.push(byte[0]),
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(&buf).into_owned();
            let mut req = Seen {
                head,
                body: String::new(),
            };
            let len: usize = req
                .header("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            if s.read_exact(&mut body).is_err() {
                return;
            }
            req.body = String::from_utf8_lossy(&body).into_owned();
            seen.lock().unwrap().push(req.clone());
            match reply(&req) {
                Reply::Bytes(b) => {
                    if s.write_all(&b).and_then(|_| s.flush()).is_err() {
                        return;
                    }
                }
                Reply::Late(d, b) => {
                    std::thread::sleep(d);
                    let _ = s.write_all(&b);
                    return;
                }
                Reply::Endless => {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"access_token\":\r\n");
                    let chunk = [&b"10000\r\n"[..], &[b'x'; 65536], b"\r\n"].concat();
                    for _ in 0..4096 {
                        if s.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Wait for a call's answer (bounded, so a lost reply fails the test).
    fn wait<T: Send + 'static>(rx: tokio::sync::oneshot::Receiver<T>) -> T {
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(rx.blocking_recv());
        });
        done.recv_timeout(Duration::from_secs(20))
            .expect("the IdP thread answered in time")
            .expect("the IdP thread kept the reply channel")
    }

    const GOOD: &str = r#"{"access_token":"AT1","token_type":"Bearer","expires_in":300,"refresh_token":"RT1","id_token":"h.p.s"}"#;

    #[test]
    fn a_code_is_exchanged_with_basic_auth_over_one_reused_connection() {
        let srv = server(false, |_| json(200, GOOD));
        let idp = Idp::start().unwrap();
        for _ in 0..2 {
            let a = wait(idp.token(code_request(&srv.url("/token"), basic_client()))).unwrap();
            assert_eq!(a.access_token, "AT1");
            assert_eq!(a.refresh_token.as_deref(), Some("RT1"));
            assert_eq!(a.id_token.as_deref(), Some("h.p.s"));
            assert_eq!(a.expires_in, Some(300.0));
        }
        let seen = srv.seen();
        assert_eq!(seen.len(), 2);
        let r = &seen[0];
        assert!(r.head.starts_with("POST /token HTTP/1.1\r\n"), "{}", r.head);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(r.header("accept").as_deref(), Some("application/json"));
        let expected = token_form(&code_request("", basic_client()));
        assert_eq!(r.header("authorization"), expected.authorization);
        assert_eq!(r.body, expected.body);
        assert_eq!(
            srv.conns.load(Ordering::SeqCst),
            1,
            "the connection is reused"
        );
        assert_eq!(idp.stats().successes(Endpoint::Token), 2);
    }

    #[test]
    fn a_refresh_uses_post_auth() {
        let srv = server(false, |_| {
            json(200, r#"{"access_token":"AT2","token_type":"Bearer"}"#)
        });
        let idp = Idp::start().unwrap();
        let a = wait(idp.token(refresh_request(&srv.url("/token")))).unwrap();
        assert_eq!(a.access_token, "AT2");
        assert_eq!(a.refresh_token, None);
        let r = &srv.seen()[0];
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.body, token_form(&refresh_request("")).body);
    }

    #[test]
    fn token_endpoint_failures_are_typed_and_counted() {
        let srv = server(false, |r| {
            let path = r.head.split(' ').nth(1).unwrap_or("").to_string();
            match path.as_str() {
                "/grant" => json(
                    400,
                    r#"{"error":"invalid_grant","error_description":"code the-code/1+2 was used"}"#,
                ),
                "/client" => answer(
                    401,
                    &[("WWW-Authenticate", "Basic")],
                    r#"{"error":"invalid_client"}"#,
                ),
                "/html400" => answer(400, &[], "<html>nope</html>"),
                "/500" => json(500, r#"{"error":"server_error"}"#),
                "/garbage" => json(200, "{{{ not json"),
                "/no-token" => json(200, r#"{"token_type":"Bearer"}"#),
                "/error200" => json(200, r#"{"error":"bad_verification_code"}"#),
                "/slow" => Reply::Late(Duration::from_secs(5), GOOD.as_bytes().to_vec()),
                "/endless" => Reply::Endless,
                _ => json(404, "{}"),
            }
        });
        let idp = Idp::start().unwrap();
        let call = |path: &str, timeout: Duration| {
            let mut req = code_request(&srv.url(path), basic_client());
            req.timeout = timeout;
            wait(idp.token(req)).unwrap_err()
        };
        let t = Duration::from_secs(5);
        let e = call("/grant", t);
        assert_eq!(
            e,
            IdpError::OAuth(
                Endpoint::Token,
                OAuthError {
                    status: 400,
                    code: "invalid_grant".into(),
                    description: Some("code [redacted] was used".into()),
                }
            )
        );
        assert_eq!(
            e.to_string(),
            "token endpoint refused the request: invalid_grant (code [redacted] was used)"
        );
        assert!(
            matches!(call("/client", t), IdpError::OAuth(_, OAuthError { status: 401, ref code, .. }) if code == "invalid_client")
        );
        assert_eq!(call("/html400", t), IdpError::Status(Endpoint::Token, 400));
        assert_eq!(call("/500", t), IdpError::Status(Endpoint::Token, 500));
        assert_eq!(call("/garbage", t), invalid("token answer is not JSON"));
        assert_eq!(
            call("/no-token", t),
            invalid("token answer has no `access_token`")
        );
        assert!(matches!(
            call("/error200", t),
            IdpError::OAuth(_, OAuthError { status: 200, .. })
        ));
        let started = Instant::now();
        assert_eq!(
            call("/slow", Duration::from_millis(300)),
            IdpError::TimedOut(Endpoint::Token)
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(call("/endless", t), IdpError::TooLarge(Endpoint::Token));
        assert_eq!(call("/nowhere", t), IdpError::Status(Endpoint::Token, 404));
        let dead = format!("http://127.0.0.1:{}/token", closed_port());
        let mut req = code_request(&dead, basic_client());
        req.timeout = t;
        assert_eq!(
            wait(idp.token(req)).unwrap_err(),
            IdpError::Unreachable(Endpoint::Token)
        );
        let mut req = code_request("not a url", basic_client());
        req.timeout = t;
        assert_eq!(
            wait(idp.token(req)).unwrap_err(),
            IdpError::Unsendable(Endpoint::Token)
        );

        let s = idp.stats();
        assert_eq!(s.failures(Endpoint::Token, Failure::OAuth), 3);
        assert_eq!(s.failures(Endpoint::Token, Failure::Status), 3);
        assert_eq!(s.failures(Endpoint::Token, Failure::Invalid), 2);
        assert_eq!(s.failures(Endpoint::Token, Failure::TimedOut), 1);
        assert_eq!(s.failures(Endpoint::Token, Failure::TooLarge), 1);
        assert_eq!(s.failures(Endpoint::Token, Failure::Unreachable), 1);
        assert_eq!(s.failures(Endpoint::Token, Failure::Unsendable), 1);
        assert_eq!(s.successes(Endpoint::Token), 0);
        assert_eq!(s.failures(Endpoint::Introspection, Failure::Status), 0);
    }

    fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn userinfo_sends_the_bearer_token_and_returns_the_object() {
        let srv = server(false, |r| match r.header("authorization").as_deref() {
            Some("Bearer AT1") => json(200, r#"{"sub":"alice","email":"a@x"}"#),
            Some("Bearer array") => json(200, "[]"),
            Some("Bearer jwt") => answer(200, &[("Content-Type", "application/jwt")], "a.b.c"),
            _ => answer(
                401,
                &[(
                    "WWW-Authenticate",
                    r#"Bearer error="invalid_token", error_description="token AT-unknown-unknown-unknown-x is unknown""#,
                )],
                "",
            ),
        });
        let idp = Idp::start().unwrap();
        let call = |token: &str| {
            wait(idp.userinfo(
                srv.url("/userinfo"),
                token.into(),
                false,
                Duration::from_secs(5),
            ))
        };
        assert_eq!(call("AT1").unwrap(), br#"{"sub":"alice","email":"a@x"}"#);
        let r = &srv.seen()[0];
        assert!(r.head.starts_with("GET /userinfo HTTP/1.1\r\n"));
        assert_eq!(r.header("accept").as_deref(), Some("application/json"));
        let e = call("AT-unknown-unknown-unknown-x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "userinfo endpoint refused the request: invalid_token (token [redacted] is unknown)"
        );
        assert_eq!(
            call("array").unwrap_err(),
            IdpError::Invalid(
                Endpoint::Userinfo,
                "userinfo answer is not a JSON object".into()
            )
        );
        assert!(matches!(
            call("jwt").unwrap_err(),
            IdpError::Invalid(Endpoint::Userinfo, _)
        ));
        // A token no header can carry is refused before anything is sent.
        assert_eq!(
            call("bad\r\nX-Injected: 1").unwrap_err(),
            IdpError::Unsendable(Endpoint::Userinfo)
        );
        assert_eq!(srv.seen().len(), 4);
        assert_eq!(idp.stats().successes(Endpoint::Userinfo), 1);
        assert_eq!(
            idp.stats().failures(Endpoint::Userinfo, Failure::Invalid),
            2
        );
    }

    #[test]
    fn revocation_posts_the_token_and_its_hint() {
        let srv = server(false, |r| {
            if r.body.contains("token=gone") {
                json(400, r#"{"error":"unsupported_token_type"}"#)
            } else if r.body.contains("token=busy") {
                answer(503, &[("Retry-After", "1")], "")
            } else {
                answer(200, &[], "")
            }
        });
        let idp = Idp::start().unwrap();
        let call = |token: &str, client: ClientAuth| {
            wait(idp.revoke(
                srv.url("/revoke"),
                client,
                token.into(),
                "refresh_token",
                false,
                Duration::from_secs(5),
            ))
        };
        call("RT1", basic_client()).unwrap();
        let r = &srv.seen()[0];
        assert!(r.head.starts_with("POST /revoke HTTP/1.1\r\n"));
        assert_eq!(r.body, "token=RT1&token_type_hint=refresh_token");
        assert_eq!(r.header("authorization"), basic_authorization());
        call("RT2", post_client()).unwrap();
        assert_eq!(
            srv.seen()[1].body,
            revocation_form(&post_client(), "RT2", "refresh_token").body
        );
        assert!(matches!(
            call("gone", post_client()).unwrap_err(),
            IdpError::OAuth(Endpoint::Revocation, OAuthError { ref code, .. }) if code == "unsupported_token_type"
        ));
        assert_eq!(
            call("busy", post_client()).unwrap_err(),
            IdpError::Status(Endpoint::Revocation, 503)
        );
        assert_eq!(idp.stats().successes(Endpoint::Revocation), 2);
        assert_eq!(
            srv.conns.load(Ordering::SeqCst),
            1,
            "the connection is reused"
        );
    }

    fn basic_authorization() -> Option<String> {
        authenticated_form(
            &[],
            "my:client",
            "s3cr&t p%ss",
            AuthMethod::ClientSecretBasic,
        )
        .authorization
    }

    #[test]
    fn ssl_verify_decides_whether_a_self_signed_idp_is_trusted() {
        let srv = server(true, |_| json(200, GOOD));
        let idp = Idp::start().unwrap();
        let mut req = code_request(&srv.https_url("/token"), basic_client());
        req.ssl_verify = true;
        assert_eq!(
            wait(idp.token(req.clone())).unwrap_err(),
            IdpError::Unreachable(Endpoint::Token)
        );
        req.ssl_verify = false;
        assert_eq!(wait(idp.token(req)).unwrap().access_token, "AT1");
        let userinfo = |verify: bool| {
            wait(idp.userinfo(
                srv.https_url("/userinfo"),
                "AT1".into(),
                verify,
                Duration::from_secs(5),
            ))
        };
        assert_eq!(
            userinfo(true).unwrap_err(),
            IdpError::Unreachable(Endpoint::Userinfo)
        );
        // Trusting, it is reached (this server's answer is a JSON object).
        userinfo(false).unwrap();
        let revoke = |verify: bool| {
            wait(idp.revoke(
                srv.https_url("/revoke"),
                post_client(),
                "t".into(),
                "access_token",
                verify,
                Duration::from_secs(5),
            ))
        };
        assert_eq!(
            revoke(true).unwrap_err(),
            IdpError::Unreachable(Endpoint::Revocation)
        );
        revoke(false).unwrap();
    }
}
