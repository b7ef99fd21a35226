//! Bearer-token validation by the `openid-connect` plugin against a REAL identity provider:
//! `oidc-provider` (OpenID-certified) run by node from `tests/idp` (see `common::real_idp`).
//! Its client_credentials tokens for the resource `urn:portcullis:api` are RS256 JWTs with
//! header `typ: at+jwt` (RFC 9068), checked here through the discovered JWKS and through a
//! configured PEM public key.

mod common;

use common::real_idp::*;
use common::*;
use serde_json::{json, Value};

/// A route `/*` to `up` with the `openid-connect` plugin: client `portcullis`, the IdP's
/// discovery URL, bearer only, plus `extra` options.
fn oidc_route(idp: &RealIdp, up: &Upstream, extra: Value) -> Value {
    let mut plugin = json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "discovery": idp.discovery_url(),
        "bearer_only": true,
    });
    for (k, v) in extra.as_object().expect("extra options are an object") {
        plugin[k] = v.clone();
    }
    json!({
        "id": "1",
        "uri": "/*",
        "plugins": { "openid-connect": plugin },
        "upstream": { "type": "roundrobin", "nodes": nodes(&[(up, 1)]) }
    })
}

fn start_proxy(idp: &RealIdp, up: &Upstream, extra: Value) -> Proxy {
    Proxy::start(base_config(vec![oidc_route(idp, up, extra)]))
}

/// Starts the IdP, an upstream and a proxy with the options `extra(&idp)`.
fn setup(extra: impl FnOnce(&RealIdp) -> Value) -> (RealIdp, Upstream, Proxy) {
    let idp = RealIdp::start();
    let up = Upstream::start("A");
    let p = start_proxy(&idp, &up, extra(&idp));
    (idp, up, p)
}

fn get_with_token(p: &Proxy, token: &str, extra_headers: &[(&str, &str)]) -> Response {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend_from_slice(extra_headers);
    p.client().request("GET", "/api/things", &headers, b"")
}

/// `aud` may be a string or an array of strings.
fn aud_contains(claims: &Value, aud: &str) -> bool {
    match &claims["aud"] {
        Value::String(s) => s == aud,
        Value::Array(a) => a.iter().any(|v| v == aud),
        _ => false,
    }
}

/// Checks what the upstream got for an accepted IdP JWT: the raw token as `X-Access-Token`
/// and the token's claims, base64-encoded JSON, as the only `X-Userinfo`.
fn assert_identity_headers(idp: &RealIdp, p: &Proxy, r: &Response, token: &str) {
    assert_eq!(
        r.status,
        200,
        "a valid IdP token was refused: {} {:?} headers {:?} body {:?}\nproxy log:\n{}",
        r.status,
        r.reason,
        r.headers,
        r.text(),
        p.log()
    );
    let echo = r.echo();
    assert_eq!(
        echo.header_all("x-access-token"),
        vec![token],
        "X-Access-Token upstream"
    );
    let userinfo = echo.header_all("x-userinfo");
    assert_eq!(
        userinfo.len(),
        1,
        "exactly one X-Userinfo upstream (a client-sent one must be dropped), got {userinfo:?}"
    );
    let decoded = b64_decode(userinfo[0])
        .unwrap_or_else(|e| panic!("X-Userinfo is not standard base64 ({e}): {:?}", userinfo[0]));
    let info: Value = serde_json::from_slice(&decoded).unwrap_or_else(|e| {
        panic!(
            "X-Userinfo is not base64 of JSON ({e}): {:?}",
            String::from_utf8_lossy(&decoded)
        )
    });
    assert_eq!(
        info["iss"],
        json!(idp.issuer()),
        "iss in X-Userinfo: {info}"
    );
    assert!(
        aud_contains(&info, API_RESOURCE),
        "aud in X-Userinfo: {info}"
    );
    assert_eq!(
        info["scope"],
        json!("read write"),
        "scope in X-Userinfo: {info}"
    );
    assert_eq!(
        info["client_id"],
        json!(CLIENT_ID),
        "client_id in X-Userinfo: {info}"
    );
    let (_, claims) = jwt_parts(token);
    assert_eq!(
        info, claims,
        "X-Userinfo should be exactly the token's claims"
    );
}

/// Decodes the PEM body (base64 between the armour lines).
fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    b64_decode(&b64).expect("PEM body is base64")
}

/// Flips one character in the middle of the payload segment (to another base64url character).
fn flip_payload_char(token: &str) -> String {
    let dot1 = token.find('.').unwrap();
    let dot2 = token.rfind('.').unwrap();
    let i = dot1 + 1 + (dot2 - dot1 - 1) / 2;
    let mut bytes = token.as_bytes().to_vec();
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// The token with its payload replaced by `claims` (same header, original signature).
fn with_claims(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        b64url_encode(claims.to_string().as_bytes()),
        parts[2]
    )
}

/// With a proxy configured by `extra`, the token `token_of(&idp)` is refused with a complete
/// bearer error ([`assert_invalid_token`]).
fn assert_refused(extra: Value, token_of: impl FnOnce(&RealIdp) -> String, what: &str) {
    let (idp, up, p) = setup(|_| extra);
    let token = token_of(&idp);
    let r = get_with_token(&p, &token, &[]);
    assert_invalid_token(&p, &up, &r, what);
}

fn assert_invalid_token(p: &Proxy, up: &Upstream, r: &Response, what: &str) {
    assert_eq!(
        r.status,
        401,
        "{what}: expected 401, got {} headers {:?} body {:?}\nproxy log:\n{}",
        r.status,
        r.headers,
        r.text(),
        p.log()
    );
    let www = r.header("www-authenticate").unwrap_or_else(|| {
        panic!(
            "{what}: 401 without WWW-Authenticate; headers {:?}",
            r.headers
        )
    });
    eprintln!("{what}: {} WWW-Authenticate: {www}", r.status);
    assert!(
        www.starts_with("Bearer ") && www.contains(r#"realm="apisix""#),
        "{what}: WWW-Authenticate {www:?}"
    );
    assert!(
        www.contains(r#"error="invalid_token""#),
        "{what}: WWW-Authenticate {www:?} lacks error=\"invalid_token\""
    );
    assert!(
        www.contains("error_description="),
        "{what}: WWW-Authenticate {www:?} lacks error_description"
    );
    r.assert_json_error(401);
    assert_eq!(up.requests(), 0, "{what}: the upstream must not be reached");
}

// ---------------------------------------------------------------------------------------------
// The IdP itself (no proxy): guards the fixture the other tests rely on.
// ---------------------------------------------------------------------------------------------

#[test]
fn the_idp_issues_at_jwt_tokens_signed_by_the_committed_key_and_opaque_tokens() {
    let idp = RealIdp::start();

    // Discovery names the issuer byte for byte and localhost endpoints.
    let r = idp.request("GET", "/.well-known/openid-configuration", &[], b"");
    assert_eq!(r.status, 200, "discovery: {:?}", r.text());
    let disc = r.json();
    assert_eq!(disc["issuer"], json!(idp.issuer()));
    assert_eq!(disc["jwks_uri"], json!(idp.jwks_uri()));
    assert_eq!(disc["token_endpoint"], json!(idp.token_endpoint()));
    assert_eq!(
        disc["introspection_endpoint"],
        json!(idp.introspection_endpoint())
    );

    let token = idp.client_credentials_jwt("read write");
    let (header, claims) = jwt_parts(&token);
    eprintln!("JWT header: {header}\nJWT claims: {claims}");
    assert_eq!(header["alg"], json!("RS256"));
    assert_eq!(header["typ"], json!("at+jwt"));
    assert_eq!(claims["iss"], json!(idp.issuer()));
    assert!(aud_contains(&claims, API_RESOURCE), "{claims}");
    assert_eq!(claims["scope"], json!("read write"));
    assert_eq!(claims["client_id"], json!(CLIENT_ID));
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 600, "tokens live 10 minutes");

    // The signature verifies with the JWKS key named by `kid`, and public.pem is that key.
    let r = idp.request("GET", "/jwks", &[], b"");
    assert_eq!(r.status, 200);
    let jwks = r.json();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap_or_else(|| panic!("kid {} not in {jwks}", header["kid"]));
    let n = b64url_decode(key["n"].as_str().unwrap()).unwrap();
    let e = b64url_decode(key["e"].as_str().unwrap()).unwrap();
    let dot2 = token.rfind('.').unwrap();
    let sig = b64url_decode(&token[dot2 + 1..]).unwrap();
    ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &token.as_bytes()[..dot2],
            &sig,
        )
        .expect("the JWT verifies with the JWKS key");
    let der = pem_der(&idp.public_key_pem());
    assert!(
        der.windows(n.len()).any(|w| w == n.as_slice()),
        "tests/idp/public.pem is not the IdP's signing key"
    );

    // Without a resource: an opaque token, active at the introspection endpoint.
    let opaque = idp.client_credentials_opaque("read");
    let info = idp.introspect(&opaque);
    eprintln!("introspection of an opaque token: {info}");
    assert_eq!(info["active"], json!(true));
    assert_eq!(info["scope"], json!("read"));
    assert_eq!(info["client_id"], json!(CLIENT_ID));

    // A wrong client secret is refused.
    let form = form_encode(&[("grant_type", "client_credentials")]);
    let r = idp.request(
        "POST",
        "/token",
        &[
            (
                "Authorization",
                &format!("Basic {}", b64_encode(b"portcullis:wrong")),
            ),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        form.as_bytes(),
    );
    assert_eq!(r.status, 401, "{:?}", r.text());
    assert_eq!(r.json()["error"], json!("invalid_client"));
}

// ---------------------------------------------------------------------------------------------
// Accepted tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn idp_jwt_is_accepted_through_the_discovered_jwks() {
    let (idp, _up, p) = setup(
        |_| json!({ "use_jwks": true, "claim_validator": { "audience": { "required": true } } }),
    );
    let token = idp.client_credentials_jwt("read write");
    // A client-sent identity header is a forgery: only the proxy's own may reach the upstream.
    let forged = b64_encode(br#"{"sub":"admin","scope":"admin"}"#);
    let r = get_with_token(&p, &token, &[("X-Userinfo", &forged)]);
    assert_identity_headers(&idp, &p, &r, &token);

    // Again on the same token (now possibly from a cache): same answer.
    let r = get_with_token(&p, &token, &[]);
    assert_identity_headers(&idp, &p, &r, &token);
}

#[test]
fn idp_jwt_is_accepted_through_the_configured_public_key() {
    let (idp, _up, p) = setup(|idp| {
        json!({
            "public_key": idp.public_key_pem(),
            "claim_validator": { "audience": { "required": true } }
        })
    });
    let token = idp.client_credentials_jwt("read write");
    let r = get_with_token(&p, &token, &[]);
    assert_identity_headers(&idp, &p, &r, &token);
}

#[test]
fn idp_jwt_right_after_start_waits_for_a_slow_discovery_instead_of_being_refused() {
    // Discovery and JWKS take 700 ms each to answer (well inside the default 3 s `timeout`).
    // A valid token presented while they are in flight must wait for them, not be refused:
    // lua-resty-openidc, behind APISIX, fetches discovery on the request path too.
    let delay = std::time::Duration::from_millis(700);
    let idp = RealIdp::start_opts(&IdpOptions {
        metadata_delay: Some(delay),
        ..IdpOptions::default()
    });
    let token = idp.client_credentials_jwt("read write");
    let mut refused = Vec::new();
    for (name, extra) in [
        ("public_key", json!({ "public_key": idp.public_key_pem() })),
        ("use_jwks", json!({ "use_jwks": true })),
    ] {
        let up = Upstream::start("A");
        let p = start_proxy(&idp, &up, extra);
        let started = std::time::Instant::now();
        let r = get_with_token(&p, &token, &[]);
        let took = started.elapsed();
        if r.status == 200 {
            assert_identity_headers(&idp, &p, &r, &token);
        } else {
            refused.push(format!(
                "{name}: answered {} after {took:?}, WWW-Authenticate {:?}, body {:?}",
                r.status,
                r.header("www-authenticate"),
                r.text()
            ));
        }
    }
    assert!(
        refused.is_empty(),
        "a valid token sent while discovery/JWKS are in flight was refused:\n{}",
        refused.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Refused tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn tampered_idp_jwt_is_refused_with_invalid_token() {
    let idp = RealIdp::start();
    let up = Upstream::start("A");
    for (name, extra) in [
        ("use_jwks", json!({ "use_jwks": true })),
        ("public_key", json!({ "public_key": idp.public_key_pem() })),
    ] {
        let p = start_proxy(&idp, &up, extra);
        let token = idp.client_credentials_jwt("read write");
        // The genuine token first, so a refusal below is about the tampering.
        let r = get_with_token(&p, &token, &[]);
        assert_eq!(
            r.status,
            200,
            "{name}: genuine token refused: {:?}\n{}",
            r.text(),
            p.log()
        );
        let before = up.requests();

        let flipped = flip_payload_char(&token);
        assert_ne!(flipped, token);
        let r = get_with_token(&p, &flipped, &[]);
        assert_eq!(
            up.requests(),
            before,
            "{name}: a flipped token reached the upstream"
        );
        assert_eq!(
            r.status,
            401,
            "{name}: a token with a flipped payload character: {} {:?} {:?}\n{}",
            r.status,
            r.headers,
            r.text(),
            p.log()
        );
        let www = r.header("www-authenticate").unwrap_or("");
        assert!(
            www.contains(r#"error="invalid_token""#),
            "{name}: flipped payload: WWW-Authenticate {www:?}"
        );
        assert!(
            !r.text().contains(&flipped),
            "{name}: the answer echoes the token"
        );

        // A meaningful forgery: the same signature over claims granting `admin`.
        let (_, mut claims) = jwt_parts(&token);
        claims["scope"] = json!("read write admin");
        let forged = with_claims(&token, &claims);
        let r = get_with_token(&p, &forged, &[]);
        assert_eq!(
            up.requests(),
            before,
            "{name}: a forged token reached the upstream"
        );
        assert_eq!(r.status, 401, "{name}: forged scope: {:?}", r.text());
        let www = r.header("www-authenticate").unwrap_or("");
        assert!(
            www.contains(r#"error="invalid_token""#),
            "{name}: forged scope: WWW-Authenticate {www:?}"
        );
    }
}

#[test]
fn tampered_idp_jwt_answer_is_a_complete_bearer_error() {
    assert_refused(
        json!({ "use_jwks": true }),
        |idp| flip_payload_char(&idp.client_credentials_jwt("read write")),
        "flipped payload",
    );
}

#[test]
fn opaque_idp_token_is_not_a_jwt_for_jwks_validation() {
    assert_refused(
        json!({ "use_jwks": true }),
        |idp| idp.client_credentials_opaque("read write"),
        "opaque token with use_jwks",
    );
}

#[test]
fn idp_jwt_from_an_issuer_not_listed_is_refused() {
    assert_refused(
        json!({
            "use_jwks": true,
            "claim_validator": { "issuer": { "valid_issuers": ["http://other-idp.example"] } }
        }),
        |idp| idp.client_credentials_jwt("read write"),
        "issuer not in valid_issuers",
    );
}

#[test]
fn no_token_is_refused_with_a_bearer_challenge() {
    let (_idp, up, p) = setup(|_| json!({ "use_jwks": true }));
    let r = p.get("/api/things");
    assert_eq!(
        r.status,
        401,
        "no token, bearer only: {} {:?} {:?}\n{}",
        r.status,
        r.headers,
        r.text(),
        p.log()
    );
    assert_eq!(
        r.header_all("www-authenticate"),
        vec![r#"Bearer realm="apisix""#],
        "WWW-Authenticate"
    );
    assert!(
        r.header("location").is_none(),
        "bearer only never redirects"
    );
    assert_eq!(up.requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// Scopes and audience (403)
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_required_scope_is_forbidden() {
    let idp = RealIdp::start();
    let up = Upstream::start("A");
    let token = idp.client_credentials_jwt("read write");

    let p = start_proxy(
        &idp,
        &up,
        json!({ "use_jwks": true, "required_scopes": ["admin"] }),
    );
    let r = get_with_token(&p, &token, &[]);
    let body = r.assert_json_error(403);
    assert!(
        body["error"].as_str().is_some_and(|s| !s.is_empty()),
        "403 body should be {{\"error\":\"<why>\"}}, got {body}"
    );
    assert!(!r.text().contains(&token), "the answer echoes the token");
    assert_eq!(
        up.requests(),
        0,
        "a token lacking the scope reached the upstream"
    );
    drop(p);

    // The same token passes when the scopes it has are required.
    let p = start_proxy(
        &idp,
        &up,
        json!({ "use_jwks": true, "required_scopes": ["read", "write"] }),
    );
    let r = get_with_token(&p, &token, &[]);
    assert_identity_headers(&idp, &p, &r, &token);

    // And a token that does carry `admin` passes the first route's check.
    let admin = idp.client_credentials_jwt("read write admin");
    let p = start_proxy(
        &idp,
        &up,
        json!({ "use_jwks": true, "required_scopes": ["admin"] }),
    );
    let r = get_with_token(&p, &admin, &[]);
    assert_eq!(
        r.status,
        200,
        "token with admin: {:?}\n{}",
        r.text(),
        p.log()
    );
}

#[test]
fn audience_not_matching_the_client_id_is_forbidden() {
    // The IdP's JWTs name the resource as audience, not the client id.
    let (idp, up, p) = setup(|_| {
        json!({
            "use_jwks": true,
            "claim_validator": { "audience": { "required": true, "match_with_client_id": true } }
        })
    });
    let token = idp.client_credentials_jwt("read write");
    let r = get_with_token(&p, &token, &[]);
    r.assert_json_error(403);
    assert_eq!(
        up.requests(),
        0,
        "a token for another audience reached the upstream"
    );
}
