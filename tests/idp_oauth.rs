//! The fake IdP's login flow (`tests/common/fake_idp.rs`), driven with a plain HTTP client: it
//! must refuse what a real IdP refuses (wrong PKCE verifier, replayed code, wrong client
//! secret, unknown refresh or access token), or the proxy's login tests prove nothing. The last
//! tests run the proxy's own IdP client (`portcullis::idp`) against it.

mod common;

use std::time::{Duration, Instant};

use portcullis::idp::{
    AuthMethod, ClientAuth, Discovery, Endpoint, Grant, Idp, IdpError, TokenRequest,
};
use portcullis::jose::{jwt, keys::parse_jwks};
use serde_json::{json, Value};

use common::fake_idp::{
    s256, url_encode, ClientAuthUsed, FakeIdp, Fault, IdTokenFault, CLIENT_ID, CLIENT_SECRET,
    DISCOVERY_PATH, END_SESSION_PATH, REVOCATION_PATH, TOKEN_PATH, USERINFO_PATH,
};
use common::jwt::{b64_std, now, payload, SigningKey};
use common::{Client, Response};

const REDIRECT_URI: &str = "http://127.0.0.1:9080/app/.apisix/redirect";
/// A PKCE verifier (43 characters, RFC 7636 §4.1).
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

fn idp() -> FakeIdp {
    FakeIdp::start_with_key(SigningKey::rsa1())
}

/// The authorization URL a relying party would send the browser to; `extra` adds parameters
/// or replaces the standard ones.
fn authorize_url(idp: &FakeIdp, extra: &[(&str, &str)]) -> String {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "openid profile"),
        ("state", "st-1"),
        ("nonce", "n-1"),
    ];
    for (k, v) in extra {
        match params.iter_mut().find(|(name, _)| name == k) {
            Some(p) => p.1 = v,
            None => params.push((k, v)),
        }
    }
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", url_encode(v)))
        .collect();
    format!("{}?{}", idp.authorize_url(), q.join("&"))
}

/// A code bound to the PKCE challenge of [`VERIFIER`].
fn pkce_code(idp: &FakeIdp) -> String {
    let challenge = s256(VERIFIER);
    let a = idp.login_code(&authorize_url(
        idp,
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    ));
    a.code().expect("a code").to_string()
}

/// POSTs `form` to `path`, with `basic` credentials when given.
fn post(idp: &FakeIdp, path: &str, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Response {
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{k}={}", url_encode(v)))
        .collect();
    let auth = basic.map(|(id, secret)| {
        format!(
            "Basic {}",
            b64_std(format!("{}:{}", url_encode(id), url_encode(secret)).as_bytes())
        )
    });
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    Client::connect(idp.port).request("POST", path, &headers, body.join("&").as_bytes())
}

/// Exchanges `code` with Basic auth and `verifier`.
fn exchange(idp: &FakeIdp, code: &str, verifier: Option<&str>) -> Response {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT_URI),
    ];
    if let Some(v) = verifier {
        form.push(("code_verifier", v));
    }
    post(idp, TOKEN_PATH, &form, Some((CLIENT_ID, CLIENT_SECRET)))
}

fn refresh(idp: &FakeIdp, refresh_token: &str) -> Response {
    post(
        idp,
        TOKEN_PATH,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ],
        None,
    )
}

fn userinfo(idp: &FakeIdp, token: &str) -> Response {
    let auth = format!("Bearer {token}");
    Client::connect(idp.port).request("GET", USERINFO_PATH, &[("Authorization", &auth)], b"")
}

/// Asserts an OAuth error answer with `status` and `error`.
fn assert_oauth_error(r: &Response, status: u16, error: &str) {
    let body = r.assert_json_error(status);
    assert_eq!(body["error"], error, "{body}");
}

#[test]
fn discovery_advertises_the_login_endpoints() {
    let idp = idp();
    let r = Client::connect(idp.port).get(DISCOVERY_PATH);
    assert_eq!(r.status, 200);
    let d: Discovery = serde_json::from_slice(&r.body).expect("a discovery document");
    let base = idp.base_url();
    assert_eq!(d.issuer, base);
    assert_eq!(d.authorization_endpoint, Some(format!("{base}/authorize")));
    assert_eq!(d.token_endpoint, Some(format!("{base}/token")));
    assert_eq!(d.userinfo_endpoint, Some(format!("{base}/userinfo")));
    assert_eq!(d.end_session_endpoint, Some(format!("{base}/end_session")));
    assert_eq!(d.revocation_endpoint, Some(format!("{base}/revoke")));
    assert_eq!(d.jwks_uri, Some(idp.jwks_url()));
    assert_eq!(d.introspection_endpoint, Some(idp.introspection_url()));
}

#[test]
fn authorize_sends_a_fresh_code_back_with_state_and_issuer() {
    let idp = idp();
    let url = authorize_url(&idp, &[("prompt", "consent")]);
    let a = idp.login_code(&url);
    assert_eq!(a.redirect_uri(), REDIRECT_URI);
    assert_eq!(
        a.target(),
        format!(
            "/app/.apisix/redirect?{}",
            a.location.split_once('?').unwrap().1
        )
    );
    assert_eq!(a.state(), Some("st-1"));
    assert_eq!(a.iss(), Some(idp.issuer().as_str()));
    let code = a.code().expect("a code").to_string();
    assert!(code.len() >= 32, "{code}");
    assert_ne!(
        idp.login_code(&url).code(),
        Some(code.as_str()),
        "codes are fresh"
    );
    let last = idp.last_authorize().unwrap();
    assert_eq!(last.get("prompt"), Some("consent"));
    assert_eq!(last.get("nonce"), Some("n-1"));
    assert_eq!(idp.authorizations().len(), 2);
    assert_eq!(idp.authorize_hits(), 2);

    // Refusals a relying party must cope with come back to its redirect URI.
    idp.set_authorize_error(Some("access_denied"));
    let a = idp.login_code(&url);
    assert_eq!(
        (a.error(), a.code(), a.state()),
        (Some("access_denied"), None, Some("st-1"))
    );
    idp.set_authorize_error(None);
    let plain = idp.login_code(&authorize_url(&idp, &[("code_challenge", VERIFIER)]));
    assert_eq!(
        plain.error(),
        Some("invalid_request"),
        "plain PKCE is refused"
    );
    let no_openid = idp.login_code(&authorize_url(&idp, &[("scope", "profile")]));
    assert_eq!(no_openid.error(), Some("invalid_request"));

    // An unknown client gets no redirect at all.
    let bad = authorize_url(&idp, &[("client_id", "intruder")]);
    let r = Client::connect(idp.port).get(bad.strip_prefix(&idp.base_url()).unwrap());
    assert_oauth_error(&r, 400, "invalid_client");
}

#[test]
fn pkce_is_checked_and_codes_are_single_use() {
    let idp = idp();
    let code = pkce_code(&idp);
    assert_oauth_error(&exchange(&idp, &code, None), 400, "invalid_grant");
    let wrong = "x".repeat(43);
    assert_oauth_error(&exchange(&idp, &code, Some(&wrong)), 400, "invalid_grant");
    // Refused attempts do not burn the code.
    let r = exchange(&idp, &code, Some(VERIFIER));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let answer = r.json();
    let access = answer["access_token"].as_str().unwrap().to_string();
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 300);
    assert!(answer["refresh_token"].is_string() && answer["id_token"].is_string());
    assert!(idp.access_token_is_live(&access));

    // A replay is refused, and revokes what the code gave (RFC 6749 §4.1.2).
    assert_oauth_error(&exchange(&idp, &code, Some(VERIFIER)), 400, "invalid_grant");
    assert!(!idp.access_token_is_live(&access));
    assert_eq!(userinfo(&idp, &access).status, 401);
    assert_oauth_error(
        &exchange(&idp, "never-issued", Some(VERIFIER)),
        400,
        "invalid_grant",
    );

    // A verifier for a code without a challenge is refused too; a code without PKCE works.
    let plain = idp
        .login_code(&authorize_url(&idp, &[]))
        .code()
        .unwrap()
        .to_string();
    assert_oauth_error(
        &exchange(&idp, &plain, Some(VERIFIER)),
        400,
        "invalid_grant",
    );
    assert_eq!(exchange(&idp, &plain, None).status, 200);

    // The redirect URI must be the authorization request's, byte for byte.
    let code = pkce_code(&idp);
    let r = post(
        &idp,
        TOKEN_PATH,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &format!("{REDIRECT_URI}/")),
            ("code_verifier", VERIFIER),
        ],
        Some((CLIENT_ID, CLIENT_SECRET)),
    );
    assert_oauth_error(&r, 400, "invalid_grant");

    let calls = idp.token_calls();
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [400u16, 400, 200, 400, 400, 400, 200, 400]
    );
    assert_eq!(calls[2].form.get("code_verifier"), Some(VERIFIER));
    assert_eq!(calls[0].error.as_deref(), Some("invalid_grant"));
    assert_eq!(
        calls[2].answer.as_ref().unwrap()["access_token"],
        access.as_str()
    );
}

#[test]
fn client_authentication_is_checked_and_its_method_recorded() {
    let idp = idp();
    idp.add_client("other", "p@ss:word");
    let form = |code: &str| {
        vec![
            ("grant_type".to_string(), "authorization_code".to_string()),
            ("code".into(), code.to_string()),
            ("redirect_uri".into(), REDIRECT_URI.into()),
            ("code_verifier".into(), VERIFIER.into()),
        ]
    };
    let send = |code: &str, extra: &[(&str, &str)], basic: Option<(&str, &str)>| {
        let f = form(code);
        let mut pairs: Vec<(&str, &str)> =
            f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        pairs.extend_from_slice(extra);
        post(&idp, TOKEN_PATH, &pairs, basic)
    };
    let code = pkce_code(&idp);

    let r = send(&code, &[], Some((CLIENT_ID, "wrong")));
    assert_oauth_error(&r, 401, "invalid_client");
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    let r = send(
        &code,
        &[("client_id", CLIENT_ID), ("client_secret", "wrong")],
        None,
    );
    assert_oauth_error(&r, 401, "invalid_client");
    assert_oauth_error(&send(&code, &[], None), 401, "invalid_client");
    assert_oauth_error(
        &send(&code, &[("client_id", CLIENT_ID)], None),
        401,
        "invalid_client",
    );
    let both = send(
        &code,
        &[("client_id", CLIENT_ID), ("client_secret", CLIENT_SECRET)],
        Some((CLIENT_ID, CLIENT_SECRET)),
    );
    assert_oauth_error(&both, 400, "invalid_request");
    // The code was issued to `portcullis`: another client cannot use it.
    assert_oauth_error(
        &send(&code, &[], Some(("other", "p@ss:word"))),
        400,
        "invalid_grant",
    );
    assert_eq!(
        send(
            &code,
            &[("client_id", CLIENT_ID), ("client_secret", CLIENT_SECRET)],
            None
        )
        .status,
        200
    );
    let code = pkce_code(&idp);
    assert_eq!(
        send(&code, &[], Some((CLIENT_ID, CLIENT_SECRET))).status,
        200
    );

    let used: Vec<(ClientAuthUsed, Option<String>, u16)> = idp
        .token_calls()
        .into_iter()
        .map(|c| (c.auth, c.client_id, c.status))
        .collect();
    let id = |s: &str| Some(s.to_string());
    assert_eq!(
        used,
        [
            (ClientAuthUsed::Basic, id(CLIENT_ID), 401),
            (ClientAuthUsed::Post, id(CLIENT_ID), 401),
            (ClientAuthUsed::None, None, 401),
            (ClientAuthUsed::None, None, 401),
            (ClientAuthUsed::Both, None, 400),
            (ClientAuthUsed::Basic, id("other"), 400),
            (ClientAuthUsed::Post, id(CLIENT_ID), 200),
            (ClientAuthUsed::Basic, id(CLIENT_ID), 200),
        ]
    );
}

/// The served key set, parsed by the proxy's own code.
fn served_keys(idp: &FakeIdp) -> portcullis::jose::keys::KeySet {
    let r = Client::connect(idp.port).get("/jwks");
    parse_jwks(&r.body).expect("a JWKS").0
}

/// Whether `token` verifies against `idp`'s key set.
fn verifies(idp: &FakeIdp, token: &str) -> Result<(), String> {
    let p = jwt::parse(token.as_bytes(), Some("RS256")).map_err(|e| e.to_string())?;
    jwt::verify_signature(&p, &served_keys(idp)).map_err(|e| e.to_string())
}

/// A fresh login's id token.
fn fresh_id_token(idp: &FakeIdp) -> String {
    let code = pkce_code(idp);
    let r = exchange(idp, &code, Some(VERIFIER));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id_token"].as_str().unwrap().to_string()
}

#[test]
fn id_tokens_are_signed_with_the_served_key_and_can_be_spoiled() {
    let idp = idp();
    let t = fresh_id_token(&idp);
    verifies(&idp, &t).expect("the id token verifies against the JWKS");
    let c = payload(&t);
    assert_eq!(c["iss"], idp.issuer());
    assert_eq!(c["aud"], CLIENT_ID);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["nonce"], "n-1");
    assert!(c.get("azp").is_none());
    let exp = c["exp"].as_i64().unwrap();
    assert!(exp > now() && c["iat"].as_i64().unwrap() <= now());

    idp.set_azp(Some(CLIENT_ID));
    idp.set_id_token_claims(json!({"acr": "gold", "auth_time": null}));
    let c = payload(&fresh_id_token(&idp));
    assert_eq!(
        (c["azp"].as_str(), c["acr"].as_str()),
        (Some(CLIENT_ID), Some("gold"))
    );
    assert!(c.get("auth_time").is_none());
    idp.set_azp(None);
    idp.set_id_token_claims(json!({}));

    let spoiled = |fault: IdTokenFault| {
        idp.set_id_token_fault(fault);
        let t = fresh_id_token(&idp);
        idp.set_id_token_fault(IdTokenFault::None);
        (verifies(&idp, &t), payload(&t))
    };
    let (v, _) = spoiled(IdTokenFault::BadSignature);
    assert!(v.is_err(), "a flipped signature verifies");
    let (v, _) = spoiled(IdTokenFault::UnknownKey);
    assert!(v.is_err(), "an unknown key verifies");
    let (v, c) = spoiled(IdTokenFault::WrongNonce);
    assert!(v.is_ok() && c["nonce"] != "n-1" && c["nonce"].is_string());
    let (v, c) = spoiled(IdTokenFault::MissingNonce);
    assert!(v.is_ok() && c.get("nonce").is_none());
    let (v, c) = spoiled(IdTokenFault::WrongAudience);
    assert!(v.is_ok() && c["aud"] != CLIENT_ID);
    let (v, c) = spoiled(IdTokenFault::WrongIssuer);
    assert!(v.is_ok() && c["iss"] != idp.issuer().as_str());
    let (v, c) = spoiled(IdTokenFault::Expired);
    assert!(v.is_ok() && c["exp"].as_i64().unwrap() < now() - 60);

    // A rotated key signs from then on, and the served set follows.
    idp.rotate_signing_key(SigningKey::rsa2());
    let t = fresh_id_token(&idp);
    assert_eq!(
        jwt::parse(t.as_bytes(), None)
            .ok()
            .and_then(|p| p.kid)
            .as_deref(),
        Some("rsa2")
    );
    verifies(&idp, &t).unwrap();
}

#[test]
fn refresh_tokens_give_new_access_tokens_and_unknown_ones_are_refused() {
    let idp = idp();
    let code = pkce_code(&idp);
    let first = exchange(&idp, &code, Some(VERIFIER)).json();
    let rt = first["refresh_token"].as_str().unwrap().to_string();

    // Without rotation the old refresh token keeps working and none is sent.
    let r = refresh(&idp, &rt);
    assert_eq!(r.status, 200, "{}", r.text());
    let second = r.json();
    assert_ne!(second["access_token"], first["access_token"]);
    assert!(second.get("refresh_token").is_none());
    assert!(second["id_token"].is_string());
    assert_eq!(
        payload(second["id_token"].as_str().unwrap())["nonce"],
        "n-1"
    );
    assert!(idp.access_token_is_live(second["access_token"].as_str().unwrap()));
    assert_eq!(refresh(&idp, &rt).status, 200);

    // With rotation the answer carries a new one and the old one is spent.
    idp.set_rotate_refresh_tokens(true);
    let third = refresh(&idp, &rt).json();
    let rt2 = third["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt2, rt);
    assert_oauth_error(&refresh(&idp, &rt), 400, "invalid_grant");
    assert_eq!(refresh(&idp, &rt2).status, 200);
    assert_oauth_error(&refresh(&idp, "never-issued"), 400, "invalid_grant");
    assert_eq!(idp.refreshes(), 6);

    // Without refresh tokens a login gives none.
    idp.set_refresh_tokens(false);
    let code = pkce_code(&idp);
    assert!(exchange(&idp, &code, Some(VERIFIER))
        .json()
        .get("refresh_token")
        .is_none());
    idp.set_expires_in(42);
    let code = pkce_code(&idp);
    assert_eq!(
        exchange(&idp, &code, Some(VERIFIER)).json()["expires_in"],
        42
    );
    assert_eq!(
        idp.token_calls()
            .iter()
            .filter(|c| c.grant_type() == Some("refresh_token"))
            .count(),
        6
    );
}

#[test]
fn userinfo_answers_only_for_live_tokens_it_issued() {
    let idp = idp();
    let code = pkce_code(&idp);
    let at = exchange(&idp, &code, Some(VERIFIER)).json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = userinfo(&idp, &at);
    assert_eq!(r.status, 200);
    let u = r.json();
    assert_eq!(
        (u["sub"].as_str(), u["email"].as_str()),
        (Some("alice"), Some("alice@example.com"))
    );
    assert_eq!(u["name"], "Alice Example");

    idp.set_userinfo_claims(json!({"sub": "mallory", "groups": ["admin"]}));
    let u = userinfo(&idp, &at).json();
    assert_eq!(
        (u["sub"].as_str(), u["groups"][0].as_str()),
        (Some("mallory"), Some("admin"))
    );
    idp.set_userinfo_claims(json!({}));

    let r = userinfo(&idp, "never-issued");
    assert_oauth_error(&r, 401, "invalid_token");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));
    let r = Client::connect(idp.port).get(USERINFO_PATH);
    assert_eq!(r.status, 401);

    // Expired tokens are refused like unknown ones.
    idp.set_expires_in(0);
    let code = pkce_code(&idp);
    let short = exchange(&idp, &code, Some(VERIFIER)).json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(userinfo(&idp, &short).status, 401);
    idp.forget_tokens();
    assert_eq!(userinfo(&idp, &at).status, 401);
    assert_eq!(idp.userinfo_hits(), 6);
}

#[test]
fn revocations_and_logouts_are_recorded() {
    let idp = idp();
    let code = pkce_code(&idp);
    let t = exchange(&idp, &code, Some(VERIFIER)).json();
    let (at, rt) = (
        t["access_token"].as_str().unwrap(),
        t["refresh_token"].as_str().unwrap(),
    );

    let r = post(
        &idp,
        REVOCATION_PATH,
        &[("token", rt), ("token_type_hint", "refresh_token")],
        Some((CLIENT_ID, CLIENT_SECRET)),
    );
    assert_eq!(r.status, 200);
    // Revoking the refresh token revoked the grant, access token included.
    assert_eq!(userinfo(&idp, at).status, 401);
    assert_oauth_error(&refresh(&idp, rt), 400, "invalid_grant");
    let r = post(
        &idp,
        REVOCATION_PATH,
        &[
            ("token", "never-issued"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ],
        None,
    );
    assert_eq!(r.status, 200);
    let r = post(
        &idp,
        REVOCATION_PATH,
        &[("token", at)],
        Some((CLIENT_ID, "wrong")),
    );
    assert_oauth_error(&r, 401, "invalid_client");
    let revs = idp.revocations();
    assert_eq!(revs.len(), 2);
    assert_eq!(
        (revs[0].hint.as_deref(), revs[0].auth, revs[0].known),
        (Some("refresh_token"), ClientAuthUsed::Basic, true)
    );
    assert_eq!((revs[1].auth, revs[1].known), (ClientAuthUsed::Post, false));
    assert_eq!(
        idp.revoked(),
        vec![rt.to_string(), "never-issued".to_string()]
    );

    let mut c = Client::connect(idp.port);
    let back = url_encode("http://127.0.0.1:9080/bye");
    let r = c.get(&format!(
        "{END_SESSION_PATH}?id_token_hint=h.p.s&post_logout_redirect_uri={back}&state=s9"
    ));
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("http://127.0.0.1:9080/bye?state=s9")
    );
    let r = c.get(END_SESSION_PATH);
    assert_eq!((r.status, r.text().as_str()), (200, "Logged out"));
    let ends = idp.end_sessions();
    assert_eq!(ends.len(), 2);
    assert_eq!(ends[0].get("id_token_hint"), Some("h.p.s"));
    assert_eq!(
        ends[0].get("post_logout_redirect_uri"),
        Some("http://127.0.0.1:9080/bye")
    );
}

#[test]
fn faults_apply_to_the_login_endpoints() {
    let idp = idp();
    let code = pkce_code(&idp);
    idp.set_path_behaviour(TOKEN_PATH, Fault::Status(500), Duration::ZERO);
    assert_eq!(exchange(&idp, &code, Some(VERIFIER)).status, 500);
    idp.set_path_behaviour(TOKEN_PATH, Fault::NotJson, Duration::ZERO);
    let r = exchange(&idp, &code, Some(VERIFIER));
    assert!(r.status == 200 && serde_json::from_slice::<Value>(&r.body).is_err());
    idp.set_path_behaviour(TOKEN_PATH, Fault::None, Duration::from_millis(400));
    let started = Instant::now();
    assert_eq!(
        exchange(&idp, &code, Some(VERIFIER)).status,
        200,
        "the code survived the faults"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(idp.token_hits(), 3);
    assert_eq!(
        idp.token_calls().len(),
        1,
        "faulted requests are not answered by the endpoint"
    );
}

// --- the proxy's IdP client against the fake -----------------------------------------------

fn client(method: AuthMethod) -> ClientAuth {
    ClientAuth {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        method,
    }
}

/// Waits (bounded) for an IdP thread answer.
fn wait<T: Send + 'static>(rx: tokio::sync::oneshot::Receiver<T>) -> T {
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(rx.blocking_recv());
    });
    done.recv_timeout(Duration::from_secs(20))
        .expect("the IdP thread answered in time")
        .expect("the IdP thread kept the reply channel")
}

#[test]
fn the_idp_client_logs_in_refreshes_and_revokes_against_the_fake() {
    let idp = idp();
    let client_idp = Idp::start().unwrap();
    let t = Duration::from_secs(5);
    let code_request = |code: &str, method: AuthMethod| TokenRequest {
        endpoint: idp.token_url(),
        client: client(method),
        grant: Grant::Code {
            code: code.into(),
            redirect_uri: REDIRECT_URI.into(),
            code_verifier: Some(VERIFIER.into()),
        },
        ssl_verify: true,
        timeout: t,
    };

    let code = pkce_code(&idp);
    let a = wait(client_idp.token(code_request(&code, AuthMethod::ClientSecretBasic))).unwrap();
    assert_eq!(idp.last_token_call().unwrap().auth, ClientAuthUsed::Basic);
    assert_eq!(a.expires_in, Some(300.0));
    verifies(&idp, a.id_token.as_deref().unwrap()).unwrap();
    let body =
        wait(client_idp.userinfo(idp.userinfo_url(), a.access_token.clone(), true, t)).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["sub"],
        "alice"
    );

    // A replayed code is an OAuth refusal, with the code itself kept out of the description.
    let e = wait(client_idp.token(code_request(&code, AuthMethod::ClientSecretPost))).unwrap_err();
    assert!(
        matches!(&e, IdpError::OAuth(Endpoint::Token, o) if o.code == "invalid_grant" && o.status == 400),
        "{e:?}"
    );
    assert!(!e.to_string().contains(&code), "{e}");
    assert_eq!(idp.last_token_call().unwrap().auth, ClientAuthUsed::Post);
    let e =
        wait(client_idp.userinfo(idp.userinfo_url(), a.access_token.clone(), true, t)).unwrap_err();
    assert!(
        matches!(&e, IdpError::OAuth(Endpoint::Userinfo, o) if o.code == "invalid_token"),
        "{e:?}"
    );

    let code = pkce_code(&idp);
    let a = wait(client_idp.token(code_request(&code, AuthMethod::ClientSecretPost))).unwrap();
    let rt = a.refresh_token.clone().unwrap();
    let refresh_request = |rt: &str| TokenRequest {
        endpoint: idp.token_url(),
        client: client(AuthMethod::ClientSecretBasic),
        grant: Grant::Refresh {
            refresh_token: rt.into(),
        },
        ssl_verify: false,
        timeout: t,
    };
    let b = wait(client_idp.token(refresh_request(&rt))).unwrap();
    assert_ne!(b.access_token, a.access_token);
    assert_eq!(b.refresh_token, None);
    assert_eq!(idp.refreshes(), 1);
    wait(client_idp.revoke(
        idp.revocation_url(),
        client(AuthMethod::ClientSecretPost),
        rt.clone(),
        "refresh_token",
        true,
        t,
    ))
    .unwrap();
    assert_eq!(idp.revoked(), vec![rt.clone()]);
    let e = wait(client_idp.token(refresh_request(&rt))).unwrap_err();
    assert!(
        matches!(&e, IdpError::OAuth(_, o) if o.code == "invalid_grant"),
        "{e:?}"
    );
    let wrong = ClientAuth {
        client_secret: "wrong".into(),
        ..client(AuthMethod::ClientSecretBasic)
    };
    let e = wait(client_idp.revoke(
        idp.revocation_url(),
        wrong,
        "x".into(),
        "access_token",
        true,
        t,
    ))
    .unwrap_err();
    assert!(
        matches!(&e, IdpError::OAuth(Endpoint::Revocation, o) if o.code == "invalid_client" && o.status == 401),
        "{e:?}"
    );

    // Faults at the token endpoint become the typed failures a login answers 503 for.
    let code = pkce_code(&idp);
    idp.set_path_behaviour(TOKEN_PATH, Fault::Status(500), Duration::ZERO);
    let e = wait(client_idp.token(code_request(&code, AuthMethod::ClientSecretBasic))).unwrap_err();
    assert_eq!(e, IdpError::Status(Endpoint::Token, 500));
    idp.set_path_behaviour(TOKEN_PATH, Fault::NotJson, Duration::ZERO);
    let e = wait(client_idp.token(code_request(&code, AuthMethod::ClientSecretBasic))).unwrap_err();
    assert_eq!(
        e,
        IdpError::Invalid(Endpoint::Token, "token answer is not JSON".into())
    );
    idp.set_path_behaviour(TOKEN_PATH, Fault::None, Duration::from_secs(3));
    let mut slow = code_request(&code, AuthMethod::ClientSecretBasic);
    slow.timeout = Duration::from_millis(300);
    let started = Instant::now();
    assert_eq!(
        wait(client_idp.token(slow)).unwrap_err(),
        IdpError::TimedOut(Endpoint::Token)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    idp.heal();
    // The slow request was still answered by the IdP, so the code may be spent: a new login.
    let code = pkce_code(&idp);
    wait(client_idp.token(code_request(&code, AuthMethod::ClientSecretBasic))).unwrap();

    let stats = client_idp.stats();
    assert_eq!(stats.successes(Endpoint::Token), 4);
    assert_eq!(stats.successes(Endpoint::Userinfo), 1);
    assert_eq!(stats.successes(Endpoint::Revocation), 1);
    assert_eq!(
        stats.failures(Endpoint::Token, portcullis::idp::Failure::OAuth),
        2
    );
}
