//! `openid-connect` bearer-token validation (SPEC §2.1–2.4, §2.6) against the real binary and a
//! fake identity provider (`common::fake_idp`), with tokens minted by `common::jwt`.
//!
//! Every test starts its own IdP, upstream echo server and one-worker proxy. Routes: `/*` carries
//! the plugin under test, `/open/*` has no plugin (to show the proxy keeps serving while the IdP
//! misbehaves).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::auth::*;
use common::fake_idp::{FakeIdp, Fault, IdpResponse, DISCOVERY_PATH, JWKS_PATH};
use common::jwt::*;
use common::*;
use serde_json::{json, Value};

const REALM: &str = "master";
const CLIENT_ID: &str = "portcullis";
/// Extra time allowed past an IdP `timeout` for the proxy to answer.
const MARGIN: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------------

/// The plugin options for `idp` (JWKS, bearer only, realm "master") with `extra` merged in
/// (a `null` value removes an option).
fn plugin(idp: &FakeIdp, extra: Value) -> Value {
    let base = json!({
        "client_id": CLIENT_ID,
        "client_secret": "secret",
        "discovery": idp.discovery_url(),
        "bearer_only": true,
        "use_jwks": true,
        "realm": REALM,
    });
    with(&base, extra)
}

/// A proxy with `/*` protected by `plugin(idp, extra)`, and `/open/*` unprotected.
fn start(idp: &FakeIdp, up: &Upstream, extra: Value) -> Proxy {
    start_routes(vec![oidc_route("1", "/*", up, plugin(idp, extra))], up)
}

/// IdP serving `keys`, an upstream, and a proxy protecting `/*` with `extra` options.
fn setup(keys: &[&SigningKey], extra: Value) -> (FakeIdp, Upstream, Proxy) {
    setup_routes(keys, vec![("/*", extra)])
}

/// IdP serving `keys`, an upstream, and a proxy with one route per `(uri, extra)` (ids "1",
/// "2", ...) protected by `plugin(idp, extra)`, plus the unprotected `/open/*`.
fn setup_routes(keys: &[&SigningKey], routes: Vec<(&str, Value)>) -> (FakeIdp, Upstream, Proxy) {
    let idp = FakeIdp::start_with_jwks(jwks(keys));
    let up = Upstream::start("up");
    let routes = routes
        .into_iter()
        .enumerate()
        .map(|(i, (uri, extra))| oidc_route(&(i + 1).to_string(), uri, &up, plugin(&idp, extra)))
        .collect();
    let proxy = start_routes(routes, &up);
    (idp, up, proxy)
}

// ---------------------------------------------------------------------------------------------
// Requests and assertions
// ---------------------------------------------------------------------------------------------

/// Sends valid tokens until one is accepted (bounded), so tests that are not about start-up
/// do not depend on when the proxy loads the keys.
fn warm_up(proxy: &Proxy, idp: &FakeIdp, key: &SigningKey) {
    let mut last = None;
    let ok = eventually(Duration::from_secs(5), || {
        let r = bearer(proxy, &key.mint(&claims(&idp.issuer())));
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    assert!(
        ok,
        "a valid {} token was not accepted within 5 s; last answer {:?}\nproxy log:\n{}",
        key.alg(),
        last.map(|r| (r.status, r.headers.clone(), r.text())),
        proxy.log()
    );
}

/// Waits (bounded) for the proxy's start-up JWKS fetch, so that a first request racing it does
/// not spend the proxy's unknown-kid refresh budget before a test that counts refreshes.
fn wait_for_startup_fetch(idp: &FakeIdp) {
    assert!(
        eventually(Duration::from_secs(5), || idp.jwks_fetches() >= 1),
        "the proxy did not fetch the JWKS within 5 s of starting"
    );
    thread::sleep(Duration::from_millis(100));
}

/// Asserts a 401 `invalid_token` answer for `token` in `realm`; returns `error_description`.
fn assert_invalid_token_in(r: &Response, token: &str, realm: &str) -> String {
    let desc = assert_invalid_token_answer(r, realm);
    assert_no_token_leak(r, token);
    desc
}

fn assert_invalid_token(r: &Response, token: &str) -> String {
    assert_invalid_token_in(r, token, REALM)
}

/// Asserts a 403 JSON `{"error": "<why>"}` answer; returns the reason.
fn assert_forbidden(r: &Response, token: &str) -> String {
    let why = assert_forbidden_answer(r);
    assert_no_token_leak(r, token);
    why
}

/// The upstream echo of an accepted request, with the identity headers checked against `token`:
/// `X-Access-Token` is the raw token and `X-Userinfo` the standard base64 of its claims.
fn assert_accepted(r: &Response, token: &str) -> Echo {
    let echo = accepted_echo(r, token);
    assert_eq!(
        userinfo(&echo),
        payload(token),
        "X-Userinfo should carry the token's claims"
    );
    echo
}

// ---------------------------------------------------------------------------------------------
// The test helpers themselves (no proxy involved)
// ---------------------------------------------------------------------------------------------

#[test]
fn helpers_mint_verifiable_tokens_and_the_fake_idp_serves_them() {
    use ring::signature::{self as sig, UnparsedPublicKey};

    // base64 round trips and strictness.
    for n in 0..20usize {
        let data: Vec<u8> = (0..n as u8).map(|b| b.wrapping_mul(37)).collect();
        assert_eq!(b64url_decode(&b64url(&data)).unwrap(), data);
        assert_eq!(b64_std_decode(&b64_std(&data)).unwrap(), data);
    }
    assert_eq!(b64_std(b"any carnal pleas"), "YW55IGNhcm5hbCBwbGVhcw==");
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    assert!(
        b64_std_decode("YW55IGNhcm5hbCBwbGVhcw").is_none(),
        "padding is required"
    );

    // Every key's tokens verify with its JWK, with ring's own verifiers.
    let keys = [
        SigningKey::rsa1(),
        SigningKey::rsa2(),
        SigningKey::es256("e1"),
        SigningKey::es384("e2"),
        SigningKey::ed25519("d1"),
    ];
    for k in &keys {
        let t = k.mint(&json!({"sub": "x"}));
        let p = parts(&t);
        let msg = format!("{}.{}", p[0], p[1]);
        let s = b64url_decode(p[2]).unwrap();
        let jwk = k.jwk();
        let field = |f: &str| b64url_decode(jwk[f].as_str().unwrap()).unwrap();
        let ok = match k.alg() {
            "RS256" => sig::RsaPublicKeyComponents {
                n: field("n"),
                e: field("e"),
            }
            .verify(&sig::RSA_PKCS1_2048_8192_SHA256, msg.as_bytes(), &s)
            .is_ok(),
            alg => {
                let (algo, point): (&dyn sig::VerificationAlgorithm, Vec<u8>) = match alg {
                    "ES256" => (
                        &sig::ECDSA_P256_SHA256_FIXED,
                        [&[4u8][..], &field("x"), &field("y")].concat(),
                    ),
                    "ES384" => (
                        &sig::ECDSA_P384_SHA384_FIXED,
                        [&[4u8][..], &field("x"), &field("y")].concat(),
                    ),
                    _ => (&sig::ED25519, field("x")),
                };
                UnparsedPublicKey::new(algo, point)
                    .verify(msg.as_bytes(), &s)
                    .is_ok()
            }
        };
        assert!(ok, "{} token does not verify with its JWK {jwk}", k.alg());
        let bad = flip_signature_bit(&t);
        assert_ne!(bad, t);
        assert!(k.public_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
    }
    // The RSA JWKs agree with the fixture PEMs (the SPKI ends with the RSAPublicKey).
    let der = pem_to_der(RSA1_PUBLIC_PEM);
    let n = b64url_decode(SigningKey::rsa1().jwk()["n"].as_str().unwrap()).unwrap();
    assert!(der.windows(n.len()).any(|w| w == n.as_slice()));

    // The fake IdP over real HTTP.
    let k = SigningKey::rsa1();
    let idp = FakeIdp::start_with_jwks(jwks(&[&k]));
    idp.set_jwks_max_age(Some(300));
    let mut c = Client::connect(idp.port);
    let r = c.get(DISCOVERY_PATH);
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["issuer"], json!(idp.base_url()));
    assert_eq!(doc["jwks_uri"], json!(idp.jwks_url()));
    let r = c.get(JWKS_PATH);
    assert_eq!(r.json(), jwks(&[&k]));
    assert_eq!(r.header("cache-control"), Some("max-age=300"));
    assert_eq!((idp.discovery_fetches(), idp.jwks_fetches()), (1, 1));
    idp.on("/introspect", |req| {
        IdpResponse::json(
            200,
            &json!({"active": true, "form": req.form_value("token"), "basic": req.basic_auth()}),
        )
    });
    let r = c.request(
        "POST",
        "/introspect",
        &[
            (
                "Authorization",
                &format!("Basic {}", b64_std(b"portcullis:s%3Acret")),
            ),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"token=a%2Bb+c&x=1",
    );
    assert_eq!(
        r.json(),
        json!({"active": true, "form": "a+b c", "basic": ["portcullis", "s:cret"]})
    );
    assert_eq!(idp.requests_to("/introspect").len(), 1);
    idp.set_path_behaviour(JWKS_PATH, Fault::Status(503), Duration::ZERO);
    assert_eq!(c.get(JWKS_PATH).status, 503);
    idp.set_fault(Fault::NotJson);
    let r = c.get(DISCOVERY_PATH);
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    idp.heal();
    idp.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(c.get(JWKS_PATH).status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    idp.heal();
    idp.go_down();
    assert!(!can_connect(idp.port));
    idp.come_up();
    assert_eq!(Client::connect(idp.port).get(JWKS_PATH).status, 200);
    idp.set_fault(Fault::Drop);
    let mut c = Client::connect(idp.port);
    c.write(b"GET /jwks HTTP/1.1\r\nHost: idp\r\n\r\n");
    assert!(
        c.try_read_response("GET").is_err(),
        "Fault::Drop answers nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Missing or malformed Authorization
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_token_gets_401_with_the_realm() {
    let key = SigningKey::rsa1();
    let (_idp, up, proxy) = setup_routes(
        &[&key],
        vec![
            ("/*", json!({})),
            ("/default-realm/*", json!({"realm": null})),
        ],
    );

    let r = proxy.get("/api/resource");
    assert_eq!(r.status, 401, "no token: {:?} {:?}", r.headers, r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"master\""),
        "headers {:?}",
        r.headers
    );
    assert_short_json(&r);

    let r = proxy.get("/default-realm/x");
    assert_eq!(r.status, 401, "no token: {:?} {:?}", r.headers, r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"apisix\""),
        "the default realm is \"apisix\"; headers {:?}",
        r.headers
    );
    assert_eq!(up.requests(), 0, "nothing may reach the upstream");

    // An invalid token on the default-realm route names that realm too.
    let bad = "abc.def.ghi";
    let r = bearer_at(&proxy, "/default-realm/x", bad);
    assert_invalid_token_in(&r, bad, "apisix");
}

#[test]
fn malformed_authorization_gets_400() {
    let key = SigningKey::rsa1();
    let (_idp, up, proxy) = setup(&[&key], json!({}));
    for value in ["foo", "Bearer", "Bearer "] {
        let r = get_with(proxy.port, "/api/resource", &[("Authorization", value)]);
        assert_eq!(
            r.status,
            400,
            "Authorization: {value:?} should get 400; headers {:?} body {:?}",
            r.headers,
            r.text()
        );
        assert_short_json(&r);
    }
    assert_eq!(up.requests(), 0, "nothing may reach the upstream");
}

// ---------------------------------------------------------------------------------------------
// Accepted tokens and the headers sent upstream
// ---------------------------------------------------------------------------------------------

#[test]
fn first_request_after_start_is_accepted() {
    // No warm-up: the first token must not fail because the keys are still being fetched.
    let key = SigningKey::rsa1();
    let (idp, _up, proxy) = setup(&[&key], json!({}));
    let token = key.mint(&claims(&idp.issuer()));
    let r = bearer(&proxy, &token);
    assert_accepted(&r, &token);
}

#[test]
fn valid_rs256_token_is_proxied_with_identity_headers() {
    let key = SigningKey::rsa1();
    let (idp, _up, proxy) = setup(&[&key], json!({}));
    warm_up(&proxy, &idp, &key);

    let c = with(
        &claims(&idp.issuer()),
        json!({"email": "alice@example.com", "groups": ["a", "b"], "name": "Ålice \"Q\" Ü"}),
    );
    let token = key.mint(&c);
    let r = bearer(&proxy, &token);
    let echo = assert_accepted(&r, &token);
    let raw = echo.header("x-userinfo").unwrap();
    assert!(
        raw.len() % 4 == 0 && !raw.contains('-') && !raw.contains('_'),
        "X-Userinfo should be standard base64 with padding: {raw:?}"
    );
    assert_eq!(userinfo(&echo), c);
    assert!(!echo.has("x-id-token"), "no id token in bearer mode");
    assert!(
        !echo.has("x-refresh-token"),
        "no refresh token in bearer mode"
    );

    // The scheme is case-insensitive (RFC 7235 §2.1).
    let token = key.mint(&claims(&idp.issuer()));
    let auth = format!("bearer {token}");
    let r = get_with(proxy.port, "/api/resource", &[("Authorization", &auth)]);
    assert_accepted(&r, &token);
}

#[test]
fn access_token_can_go_upstream_in_the_authorization_header() {
    let key = SigningKey::rsa1();
    let (idp, _up, proxy) = setup(
        &[&key],
        json!({"access_token_in_authorization_header": true}),
    );
    warm_up(&proxy, &idp, &key);
    let token = key.mint(&claims(&idp.issuer()));
    let r = bearer(&proxy, &token);
    let echo = r.echo();
    assert_eq!(
        echo.header_all("authorization"),
        vec![format!("Bearer {token}").as_str()],
        "upstream Authorization"
    );
    assert!(
        !echo.has("x-access-token"),
        "with access_token_in_authorization_header the token goes in Authorization only: {:?}",
        echo.headers
    );
    assert_eq!(userinfo(&echo), payload(&token));
}

#[test]
fn identity_headers_can_be_turned_off() {
    let key = SigningKey::rsa1();
    let (idp, _up, proxy) = setup(
        &[&key],
        json!({"set_access_token_header": false, "set_userinfo_header": false}),
    );
    warm_up(&proxy, &idp, &key);
    let token = key.mint(&claims(&idp.issuer()));
    let r = bearer(&proxy, &token);
    let echo = r.echo();
    assert!(!echo.has("x-access-token"), "{:?}", echo.headers);
    assert!(!echo.has("x-userinfo"), "{:?}", echo.headers);
}

#[test]
fn client_cannot_spoof_identity_headers() {
    let key = SigningKey::rsa1();
    let (idp, _up, proxy) = setup_routes(
        &[&key],
        vec![
            ("/*", json!({})),
            (
                "/quiet/*",
                json!({"set_access_token_header": false, "set_userinfo_header": false}),
            ),
        ],
    );
    warm_up(&proxy, &idp, &key);
    let fake_info = b64_std(br#"{"sub":"admin","groups":["root"]}"#);

    for path in ["/api/resource", "/quiet/resource"] {
        let token = key.mint(&claims(&idp.issuer()));
        let auth = format!("Bearer {token}");
        let r = get_with(
            proxy.port,
            path,
            &[
                ("Authorization", &auth),
                ("X-Access-Token", "spoofed-access"),
                ("x-id-token", "spoofed-id"),
                ("X-USERINFO", &fake_info),
                ("X-Refresh-Token", "spoofed-refresh"),
                ("X-Userinfo", "c3Bvb2ZlZA=="),
            ],
        );
        let echo = r.echo();
        assert_no_spoofed_identity(&echo, &fake_info, path);
        if path == "/api/resource" {
            assert_accepted(&r, &token);
        } else {
            let seen = format!("{:?}", echo.headers);
            assert!(!echo.has("x-access-token"), "{path}: {seen}");
            assert!(!echo.has("x-userinfo"), "{path}: {seen}");
        }
    }
}

#[test]
fn es256_es384_and_eddsa_tokens_are_accepted_from_the_jwks() {
    let rsa = SigningKey::rsa1();
    let es256 = SigningKey::es256("ec-256");
    let es384 = SigningKey::es384("ec-384");
    let ed = SigningKey::ed25519("ed-1");
    let (idp, _up, proxy) = setup(&[&rsa, &es256, &es384, &ed], json!({}));
    warm_up(&proxy, &idp, &rsa);
    for key in [&es256, &es384, &ed, &rsa] {
        let token = key.mint(&claims(&idp.issuer()));
        let r = bearer(&proxy, &token);
        assert_eq!(
            r.status,
            200,
            "{} token: {:?} {:?}",
            key.alg(),
            r.headers,
            r.text()
        );
        assert_accepted(&r, &token);
        // The same key under the wrong algorithm family fails.
        let forged = key.mint_with_header(
            &json!({"alg": if key.alg() == "RS256" { "ES256" } else { "RS256" }, "kid": key.kid}),
            &claims(&idp.issuer()),
        );
        assert_invalid_token(&bearer(&proxy, &forged), &forged);
    }
}

#[test]
fn public_key_as_spki_pem_or_certificate_validates_rs256() {
    let key = SigningKey::rsa1();
    let other = SigningKey::rsa2().with_kid("rsa1");
    // The IdP's JWKS is empty: only the configured public key can validate.
    let (idp, _up, proxy) = setup_routes(
        &[],
        vec![
            (
                "/*",
                json!({"use_jwks": null, "public_key": RSA1_PUBLIC_PEM}),
            ),
            (
                "/cert/*",
                json!({"use_jwks": null, "public_key": RSA1_CERT_PEM, "token_signing_alg_values_expected": "RS256"}),
            ),
        ],
    );
    warm_up(&proxy, &idp, &key);
    for path in ["/api/x", "/cert/x"] {
        let token = key.mint(&claims(&idp.issuer()));
        let r = bearer_at(&proxy, path, &token);
        assert_eq!(r.status, 200, "{path}: {:?} {:?}", r.headers, r.text());
        assert_accepted(&r, &token);
        // A token without kid is fine with a configured key.
        let token = key.mint_with_header(&json!({"alg": "RS256"}), &claims(&idp.issuer()));
        assert_accepted(&bearer_at(&proxy, path, &token), &token);
        // Signed by another key (claiming the same kid): rejected.
        let token = other.mint(&claims(&idp.issuer()));
        let d = assert_invalid_token(&bearer_at(&proxy, path, &token), &token);
        assert_mentions(&d, &["signature", "verif"], path);
    }
}

#[test]
fn public_key_pem_for_ec_and_ed25519() {
    let es = SigningKey::es256("ec");
    let ed = SigningKey::ed25519("ed");
    let (idp, _up, proxy) = setup_routes(
        &[],
        vec![
            (
                "/ec/*",
                json!({"use_jwks": null, "public_key": es.public_pem()}),
            ),
            (
                "/ed/*",
                json!({"use_jwks": null, "public_key": ed.public_pem()}),
            ),
        ],
    );
    let mut last = None;
    let ok = eventually(Duration::from_secs(5), || {
        let t = es.mint(&claims(&idp.issuer()));
        let r = bearer_at(&proxy, "/ec/x", &t);
        let ok = r.status == 200;
        last = Some((r.status, r.text()));
        ok
    });
    assert!(ok, "ES256 with an EC public_key: last {last:?}");
    let t = ed.mint(&claims(&idp.issuer()));
    assert_accepted(&bearer_at(&proxy, "/ed/x", &t), &t);
    // Crossed over: each key is rejected on the other's route.
    let t = ed.mint(&claims(&idp.issuer()));
    assert_invalid_token(&bearer_at(&proxy, "/ec/x", &t), &t);
    let t = es.mint(&claims(&idp.issuer()));
    assert_invalid_token(&bearer_at(&proxy, "/ed/x", &t), &t);
}

// ---------------------------------------------------------------------------------------------
// Forged and malformed tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_signature_is_rejected() {
    let key = SigningKey::rsa1();
    let (idp, up, proxy) = setup(&[&key], json!({}));
    warm_up(&proxy, &idp, &key);
    let before = up.requests();
    let token = flip_signature_bit(&key.mint(&claims(&idp.issuer())));
    let d = assert_invalid_token(&bearer(&proxy, &token), &token);
    assert_mentions(&d, &["signature", "verif"], "bad signature");
    // A signature of the right length but all zeros.
    let good = key.mint(&claims(&idp.issuer()));
    let p = parts(&good);
    let zeros = format!("{}.{}.{}", p[0], p[1], b64url(&[0u8; 256]));
    assert_invalid_token(&bearer(&proxy, &zeros), &zeros);
    // An empty signature.
    let empty = format!("{}.{}.", p[0], p[1]);
    assert_invalid_token(&bearer(&proxy, &empty), &empty);
    assert_eq!(up.requests(), before, "nothing may reach the upstream");
}

#[test]
fn tampered_payload_is_rejected() {
    let key = SigningKey::rsa1();
    let (idp, up, proxy) = setup(&[&key], json!({}));
    warm_up(&proxy, &idp, &key);
    let before = up.requests();
    let c = claims(&idp.issuer());
    let token = key.mint(&c);
    let tampered = replace_payload(
        &token,
        &with(&c, json!({"sub": "admin", "scope": "openid admin"})),
    );
    let d = assert_invalid_token(&bearer(&proxy, &tampered), &tampered);
    assert_mentions(&d, &["signature", "verif"], "tampered payload");
    // Tampered header (kid changed) with the original signature.
    let p = parts(&token);
    let hdr = b64url(
        json!({"alg": "RS256", "typ": "JWT", "kid": "rsa1", "x": 1})
            .to_string()
            .as_bytes(),
    );
    let tampered = format!("{hdr}.{}.{}", p[1], p[2]);
    assert_invalid_token(&bearer(&proxy, &tampered), &tampered);
    assert_eq!(up.requests(), before, "nothing may reach the upstream");
}

#[test]
fn not_a_jwt_is_rejected() {
    let key = SigningKey::rsa1();
    let (idp, up, proxy) = setup(&[&key], json!({}));
    warm_up(&proxy, &idp, &key);
    let before = up.requests();
    let good = key.mint(&claims(&idp.issuer()));
    let p = parts(&good);
    let cases = [
        "not-a-jwt".to_string(),
        "abc.def.ghi".to_string(),
        "a.b".to_string(),
        format!("{}.{}", p[0], p[1]),
        format!("{good}.{}", p[2]),
        format!("{}.{}.{}", b64url(b"not json"), p[1], p[2]),
        format!("{}.{}.{}", p[0], b64url(b"[1,2,3]"), p[2]),
        format!("{}.{}.{}", p[0], "!!!", p[2]),
        format!("{}.{}.{}", b64url(b"\"RS256\""), p[1], p[2]),
        "..".to_string(),
    ];
    for t in &cases {
        assert_invalid_token(&bearer(&proxy, t), t);
    }
    assert_eq!(up.requests(), before, "nothing may reach the upstream");
}

#[test]
fn alg_none_is_rejected() {
    let key = SigningKey::rsa1();
    let (idp, up, proxy) = setup(&[&key], json!({}));
    warm_up(&proxy, &idp, &key);
    let before = up.requests();
    let c = claims(&idp.issuer());
    let signed = key.mint(&c);
    let mut cases = vec![unsigned_token(&c)];
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = json!({"alg": alg, "typ": "JWT", "kid": "rsa1"});
        cases.push(format!("{}.", signing_input(&h, &c)));
        // With the real signature appended.
        cases.push(format!("{}.{}", signing_input(&h, &c), parts(&signed)[2]));
    }
    for t in &cases {
        let d = assert_invalid_token(&bearer(&proxy, t), t);
        assert_mentions(&d, &["alg", "signature", "unsigned", "none"], t);
    }
    assert_eq!(up.requests(), before, "nothing may reach the upstream");
}

#[test]
fn hs256_signed_with_the_public_key_is_rejected() {
    // Algorithm confusion: an attacker who knows the RSA public key signs HS256 with it.
    let key = SigningKey::rsa1();
    let (idp, up, proxy) = setup_routes(
        &[&key],
        vec![
            ("/*", json!({})),
            (
                "/pk/*",
                json!({"use_jwks": null, "public_key": RSA1_PUBLIC_PEM}),
            ),
        ],
    );
    warm_up(&proxy, &idp, &key);
    let before = up.requests();
    let jwk = key.jwk();
    let n = b64url_decode(jwk["n"].as_str().unwrap()).unwrap();
    let secrets: Vec<Vec<u8>> = vec![
        RSA1_PUBLIC_PEM.as_bytes().to_vec(),
        RSA1_PUBLIC_PEM.trim_end().as_bytes().to_vec(),
        key.public_der(),
        n,
        jwk.to_string().into_bytes(),
    ];
    for path in ["/api/x", "/pk/x"] {
        for secret in &secrets {
            for header in [
                json!({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}),
                json!({"alg": "HS256", "typ": "JWT"}),
            ] {
                let t = hs256_token(secret, &header, &claims(&idp.issuer()));
                let d = assert_invalid_token(&bearer_at(&proxy, path, &t), &t);
                assert_mentions(&d, &["alg", "signature", "hs256", "hmac", "key"], path);
            }
        }
    }
    assert_eq!(up.requests(), before, "nothing may reach the upstream");
}

#[test]
fn wrong_or_unsupported_alg_is_rejected() {
    let key = SigningKey::rsa1();
    let (idp, up, proxy) = setup(&[&key], json!({}));
    warm_up(&proxy, &idp, &key);
    let before = up.requests();
    let c = claims(&idp.issuer());
    let cases = vec![
        // Unknown algorithm names.
        key.mint_with_header(&json!({"alg": "XX999", "kid": "rsa1"}), &c),
        key.mint_with_header(&json!({"alg": "", "kid": "rsa1"}), &c),
        key.mint_with_header(&json!({"alg": 256, "kid": "rsa1"}), &c),
        key.mint_with_header(&json!({"kid": "rsa1"}), &c),
        // RSA signature announced as another algorithm of the family or another family.
        key.mint_with_header(&json!({"alg": "RS512", "kid": "rsa1"}), &c),
        key.mint_with_header(&json!({"alg": "PS256", "kid": "rsa1"}), &c),
        key.mint_with_header(&json!({"alg": "ES256", "kid": "rsa1"}), &c),
        key.mint_with_header(&json!({"alg": "EdDSA", "kid": "rsa1"}), &c),
        // Symmetric algorithms have no key in a JWKS of public keys.
        hs256_token(b"secret", &json!({"alg": "HS256", "kid": "rsa1"}), &c),
        hs256_token(b"secret", &json!({"alg": "HS256"}), &c),
    ];
    for t in &cases {
        assert_invalid_token(&bearer(&proxy, t), t);
    }
    assert_eq!(up.requests(), before, "nothing may reach the upstream");
}

#[test]
fn alg_outside_token_signing_alg_values_expected_is_rejected() {
    let rsa = SigningKey::rsa1();
    let es = SigningKey::es256("ec-1");
    let (idp, _up, proxy) = setup(
        &[&rsa, &es],
        json!({"token_signing_alg_values_expected": "RS256"}),
    );
    warm_up(&proxy, &idp, &rsa);
    let t = es.mint(&claims(&idp.issuer()));
    let d = assert_invalid_token(&bearer(&proxy, &t), &t);
    assert_mentions(&d, &["alg", "ES256"], "ES256 when RS256 is expected");
    let t = rsa.mint(&claims(&idp.issuer()));
    assert_accepted(&bearer(&proxy, &t), &t);
}

// ---------------------------------------------------------------------------------------------
// Time and issuer claims
// ---------------------------------------------------------------------------------------------

#[test]
fn expired_token_is_rejected() {
    let key = SigningKey::rsa1();
    let (idp, up, proxy) = setup(&[&key], json!({}));
    warm_up(&proxy, &idp, &key);
    let before = up.requests();
    let t0 = now();
    // Beyond the default clock-skew leeway (120 s).
    let c = with(
        &claims(&idp.issuer()),
        json!({"iat": t0 - 3600, "exp": t0 - 600}),
    );
    let t = key.mint(&c);
    let d = assert_invalid_token(&bearer(&proxy, &t), &t);
    assert_mentions(&d, &["exp"], "expired token");
    // `exp` that is not a number is not "valid forever".
    let t = key.mint(&with(&claims(&idp.issuer()), json!({"exp": "tomorrow"})));
    assert_invalid_token(&bearer(&proxy, &t), &t);
    assert_eq!(up.requests(), before, "nothing may reach the upstream");
}

#[test]
fn not_yet_valid_token_is_rejected() {
    let key = SigningKey::rsa1();
    let (idp, up, proxy) = setup(&[&key], json!({}));
    warm_up(&proxy, &idp, &key);
    let before = up.requests();
    let c = with(&claims(&idp.issuer()), json!({"nbf": now() + 600}));
    let t = key.mint(&c);
    let d = assert_invalid_token(&bearer(&proxy, &t), &t);
    assert_mentions(&d, &["nbf", "not yet", "before"], "nbf in the future");
    assert_eq!(up.requests(), before, "nothing may reach the upstream");
}

#[test]
fn iat_slack_is_the_clock_skew_leeway() {
    let key = SigningKey::rsa1();
    let (idp, _up, proxy) = setup_routes(
        &[&key],
        vec![
            ("/*", json!({"iat_slack": 120})),
            ("/strict/*", json!({"iat_slack": 0})),
        ],
    );
    warm_up(&proxy, &idp, &key);
    let t0 = now();
    let skewed_exp = key.mint(&with(&claims(&idp.issuer()), json!({"exp": t0 - 30})));
    let skewed_nbf = key.mint(&with(&claims(&idp.issuer()), json!({"nbf": t0 + 30})));
    for t in [&skewed_exp, &skewed_nbf] {
        assert_accepted(&bearer_at(&proxy, "/lenient/x", t), t);
        assert_invalid_token(&bearer_at(&proxy, "/strict/x", t), t);
    }
}

#[test]
fn wrong_or_missing_issuer_is_rejected() {
    let key = SigningKey::rsa1();
    let (idp, up, proxy) = setup(&[&key], json!({}));
    warm_up(&proxy, &idp, &key);
    let before = up.requests();
    let issuer = idp.issuer();
    for iss in [
        json!("https://evil.example"),
        json!(format!("{issuer}/")),
        json!(issuer.to_uppercase()),
        Value::Null,
    ] {
        let t = key.mint(&with(&claims(&issuer), json!({ "iss": iss.clone() })));
        let d = assert_invalid_token(&bearer(&proxy, &t), &t);
        assert_mentions(&d, &["iss"], &format!("iss {iss}"));
    }
    // An issuer that is not a string (may be reported as a malformed token).
    let t = key.mint(&with(&claims(&issuer), json!({ "iss": [issuer] })));
    assert_invalid_token(&bearer(&proxy, &t), &t);
    assert_eq!(up.requests(), before, "nothing may reach the upstream");
}

#[test]
fn valid_issuers_replace_the_discovery_issuer() {
    let key = SigningKey::rsa1();
    let (idp, _up, proxy) = setup(
        &[&key],
        json!({"claim_validator": {"issuer": {"valid_issuers": ["https://a.example", "https://b.example"]}}}),
    );
    let mut last = None;
    let ok = eventually(Duration::from_secs(5), || {
        let t = key.mint(&with(
            &claims(&idp.issuer()),
            json!({"iss": "https://b.example"}),
        ));
        let r = bearer(&proxy, &t);
        let ok = r.status == 200;
        last = Some((r.status, r.header("www-authenticate").map(str::to_string)));
        ok
    });
    assert!(
        ok,
        "a token from a listed issuer was not accepted: {last:?}"
    );
    let t = key.mint(&with(
        &claims(&idp.issuer()),
        json!({"iss": "https://a.example"}),
    ));
    assert_accepted(&bearer(&proxy, &t), &t);
    let t = key.mint(&claims(&idp.issuer()));
    let d = assert_invalid_token(&bearer(&proxy, &t), &t);
    assert_mentions(&d, &["iss"], "discovery issuer not in valid_issuers");
}

// ---------------------------------------------------------------------------------------------
// Scopes and audience (403)
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_required_scope_gets_403() {
    let key = SigningKey::rsa1();
    let (idp, up, proxy) = setup(&[&key], json!({"required_scopes": ["read"]}));
    warm_up(&proxy, &idp, &key);
    let base = claims(&idp.issuer());
    let before = up.requests();
    for c in [
        with(&base, json!({"scope": "openid profile"})),
        with(&base, json!({"scope": "openid readonly write"})),
        with(&base, json!({"scope": ""})),
        with(&base, json!({"scope": null})),
        with(&base, json!({"scope": null, "scp": ["write", "reader"]})),
    ] {
        let t = key.mint(&c);
        let why = assert_forbidden(&bearer(&proxy, &t), &t);
        assert_mentions(&why, &["scope"], &format!("claims {c}"));
    }
    assert_eq!(up.requests(), before, "nothing may reach the upstream");
    for c in [
        with(&base, json!({"scope": "read"})),
        with(&base, json!({"scope": "openid read write"})),
        with(&base, json!({"scope": null, "scp": ["write", "read"]})),
    ] {
        let t = key.mint(&c);
        assert_accepted(&bearer(&proxy, &t), &t);
    }
}

#[test]
fn missing_or_wrong_audience_gets_403() {
    let key = SigningKey::rsa1();
    let (idp, up, proxy) = setup(
        &[&key],
        json!({"claim_validator": {"audience": {"claim": "aud", "required": true, "match_with_client_id": true}}}),
    );
    warm_up(&proxy, &idp, &key);
    let base = claims(&idp.issuer());
    let before = up.requests();
    for aud in [
        Value::Null,
        json!("someone-else"),
        json!(["a", "b"]),
        json!("portcullis-evil"),
        json!([]),
    ] {
        let t = key.mint(&with(&base, json!({ "aud": aud.clone() })));
        let why = assert_forbidden(&bearer(&proxy, &t), &t);
        assert_mentions(&why, &["aud"], &format!("aud {aud}"));
    }
    assert_eq!(up.requests(), before, "nothing may reach the upstream");
    for aud in [json!("portcullis"), json!(["other", "portcullis"])] {
        let t = key.mint(&with(&base, json!({ "aud": aud })));
        assert_accepted(&bearer(&proxy, &t), &t);
    }
}

// ---------------------------------------------------------------------------------------------
// Key rotation and unknown key ids
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_kid_is_rejected() {
    let key = SigningKey::rsa1();
    let (idp, up, proxy) = setup(&[&key], json!({}));
    warm_up(&proxy, &idp, &key);
    let before = up.requests();
    let t = SigningKey::rsa2().mint(&claims(&idp.issuer()));
    let d = assert_invalid_token(&bearer(&proxy, &t), &t);
    assert_mentions(&d, &["kid", "key"], "unknown kid");
    assert_eq!(up.requests(), before, "nothing may reach the upstream");
}

#[test]
fn rotated_key_triggers_exactly_one_jwks_refresh() {
    let k1 = SigningKey::rsa1();
    let k2 = SigningKey::rsa2();
    let (idp, _up, proxy) = setup(&[&k1], json!({}));
    wait_for_startup_fetch(&idp);
    warm_up(&proxy, &idp, &k1);
    let base = idp.jwks_fetches();
    assert!(base >= 1, "the JWKS was never fetched");

    idp.set_jwks(jwks(&[&k1, &k2]));
    let t = k2.mint(&claims(&idp.issuer()));
    let r = bearer(&proxy, &t);
    assert_eq!(
        r.status,
        200,
        "token signed by the newly published key: {:?} {:?}",
        r.headers,
        r.text()
    );
    assert_accepted(&r, &t);
    assert_eq!(
        idp.jwks_fetches(),
        base + 1,
        "an unknown kid should cause exactly one JWKS refresh"
    );
    // Both keys now work without further fetches.
    for k in [&k2, &k1, &k2] {
        let t = k.mint(&claims(&idp.issuer()));
        assert_accepted(&bearer(&proxy, &t), &t);
    }
    assert_eq!(idp.jwks_fetches(), base + 1, "known kids need no refresh");
}

#[test]
fn flood_of_unknown_kids_causes_a_bounded_number_of_jwks_fetches() {
    let k1 = SigningKey::rsa1();
    let (idp, up, proxy) = setup(&[&k1], json!({}));
    wait_for_startup_fetch(&idp);
    warm_up(&proxy, &idp, &k1);
    let base = idp.jwks_fetches();
    let before = up.requests();
    let attacker = SigningKey::rsa2();
    let issuer = idp.issuer();
    let port = proxy.port;
    let start = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let attacker = attacker.clone();
            let issuer = issuer.clone();
            thread::spawn(move || {
                let mut bad = Vec::new();
                for _ in 0..50 {
                    let t = attacker
                        .with_kid(&unique("random-kid"))
                        .mint(&claims(&issuer));
                    let auth = format!("Bearer {t}");
                    let r = get_with(port, "/api/resource", &[("Authorization", &auth)]);
                    if r.status != 401 {
                        bad.push((r.status, r.text()));
                    }
                }
                bad
            })
        })
        .collect();
    let bad: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("flood thread"))
        .collect();
    assert!(
        bad.is_empty(),
        "tokens with unknown kids not rejected with 401: {bad:?}"
    );
    let extra = idp.jwks_fetches() - base;
    assert!(
        extra <= 2,
        "200 tokens with random kids caused {extra} JWKS fetches (at most 2 expected)"
    );
    assert_eq!(up.requests(), before, "nothing may reach the upstream");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the flood took {:?}",
        start.elapsed()
    );
    // Valid tokens still work.
    let t = k1.mint(&claims(&issuer));
    assert_accepted(&bearer(&proxy, &t), &t);
}

// ---------------------------------------------------------------------------------------------
// IdP outages
// ---------------------------------------------------------------------------------------------

#[test]
fn known_keys_keep_working_while_the_idp_is_down() {
    let k1 = SigningKey::rsa1();
    let es = SigningKey::es256("ec-1");
    let (idp, _up, proxy) = setup(&[&k1, &es], json!({"timeout": 1}));
    warm_up(&proxy, &idp, &k1);

    idp.go_down();
    assert!(
        !can_connect(idp.port),
        "the fake IdP should refuse connections"
    );
    for k in [&k1, &es, &k1] {
        let t = k.mint(&claims(&idp.issuer()));
        assert_accepted(&bearer(&proxy, &t), &t);
    }
    // An unknown kid while the IdP is down: 401, quickly.
    let t = SigningKey::rsa2().mint(&claims(&idp.issuer()));
    let started = Instant::now();
    let r = bearer(&proxy, &t);
    assert_invalid_token(&r, &t);
    assert!(
        started.elapsed() < Duration::from_secs(1) + MARGIN,
        "unknown kid with the IdP down took {:?}",
        started.elapsed()
    );
    // Known keys still work after that failed refresh.
    let t = k1.mint(&claims(&idp.issuer()));
    assert_accepted(&bearer(&proxy, &t), &t);

    // Back up, but answering 500 and garbage: the last good keys keep serving.
    idp.come_up();
    for fault in [
        Fault::Status(500),
        Fault::NotJson,
        Fault::NotHttp,
        Fault::Drop,
    ] {
        idp.set_fault(fault);
        let t = SigningKey::rsa2()
            .with_kid(&unique("kid"))
            .mint(&claims(&idp.issuer()));
        assert_invalid_token(&bearer(&proxy, &t), &t);
        for k in [&es, &k1] {
            let t = k.mint(&claims(&idp.issuer()));
            let r = bearer(&proxy, &t);
            assert_eq!(
                r.status,
                200,
                "IdP fault {fault:?}: {:?} {:?}",
                r.headers,
                r.text()
            );
            assert_accepted(&r, &t);
        }
    }
}

/// Starts the IdP with `fault`/`delay` on every path before the proxy starts, and checks a
/// bearer token gets a 401 naming the IdP problem within `timeout` + margin while `/open/` is
/// served. Returns the error description.
fn startup_failure(fault: Fault, delay: Duration, down: bool, timeout: u64) -> String {
    let key = SigningKey::rsa1();
    let idp = FakeIdp::start_with_jwks(jwks(&[&key]));
    idp.set_fault(fault);
    idp.set_delay(delay);
    if down {
        idp.go_down();
    }
    let up = Upstream::start("up");
    let proxy = start(&idp, &up, json!({"timeout": timeout}));

    let token = key.mint(&claims(&idp.issuer()));
    let (elapsed, r) = bearer_while_open_is_served(
        &proxy,
        &token,
        Duration::from_millis(1000),
        "the IdP misbehaves",
    );
    let d = assert_invalid_token(&r, &token);
    assert!(
        elapsed < Duration::from_secs(timeout) + MARGIN,
        "401 took {elapsed:?} with timeout {timeout} s"
    );
    assert_mentions(
        &d,
        &[
            "idp",
            "identity provider",
            "provider",
            "discovery",
            "openid-configuration",
            "jwks",
            "key set",
        ],
        "error_description should name the IdP problem",
    );
    d
}

#[test]
fn idp_answering_garbage_at_startup_gives_401_naming_the_problem() {
    let d = startup_failure(Fault::NotJson, Duration::ZERO, false, 3);
    assert_mentions(
        &d,
        &[
            "json",
            "parse",
            "invalid",
            "malformed",
            "decode",
            "garbage",
            "not a",
        ],
        "not-JSON discovery",
    );
}

#[test]
fn idp_answering_500_at_startup_gives_401_naming_the_problem() {
    let d = startup_failure(Fault::Status(500), Duration::ZERO, false, 3);
    assert_mentions(&d, &["500"], "discovery answering 500");
}

#[test]
fn slow_idp_at_startup_gives_401_within_the_timeout() {
    // An IdP call blocking the worker would hold `/open/` up for about 2 s.
    let d = startup_failure(Fault::None, Duration::from_secs(5), false, 2);
    // Either the IdP call timed out, or it had not answered when the request gave up waiting.
    assert_mentions(&d, &["time", "slow", "answer"], "slow discovery");
}

#[test]
fn unreachable_idp_at_startup_gives_401_naming_the_problem() {
    let d = startup_failure(Fault::None, Duration::ZERO, true, 1);
    assert_mentions(
        &d,
        &["connect", "refused", "unreachable", "down"],
        "unreachable IdP",
    );
}

#[test]
fn tokens_are_accepted_once_the_idp_recovers() {
    let key = SigningKey::rsa1();
    let idp = FakeIdp::start_with_jwks(jwks(&[&key]));
    idp.set_fault(Fault::Status(500));
    let up = Upstream::start("up");
    let proxy = start(&idp, &up, json!({"timeout": 1}));
    let t = key.mint(&claims(&idp.issuer()));
    assert_invalid_token(&bearer(&proxy, &t), &t);

    idp.heal();
    let mut last = None;
    let ok = eventually(Duration::from_secs(10), || {
        let r = bearer(&proxy, &key.mint(&claims(&idp.issuer())));
        let ok = r.status == 200;
        last = Some((r.status, r.header("www-authenticate").map(str::to_string)));
        ok
    });
    assert!(
        ok,
        "valid tokens still rejected 10 s after the IdP recovered; last {last:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Caching
// ---------------------------------------------------------------------------------------------

#[test]
fn the_same_token_works_many_times() {
    let key = SigningKey::rsa1();
    let (idp, _up, proxy) = setup(&[&key], json!({}));
    wait_for_startup_fetch(&idp);
    warm_up(&proxy, &idp, &key);
    // Let any IdP call the warm-up raced with finish before counting.
    thread::sleep(Duration::from_millis(200));
    let (disc, jwks_n) = (idp.discovery_fetches(), idp.jwks_fetches());
    let t = key.mint(&claims(&idp.issuer()));
    let auth = format!("Bearer {t}");
    let mut c = proxy.client();
    for i in 0..100 {
        let r = c.request("GET", "/api/resource", &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 200, "request {i}: {:?}", r.text());
        if i % 25 == 0 {
            assert_accepted(&r, &t);
        }
    }
    assert_eq!(
        (idp.discovery_fetches(), idp.jwks_fetches()),
        (disc, jwks_n),
        "validating a known token must not call the IdP"
    );
}

#[test]
fn a_token_accepted_on_one_route_is_checked_again_on_another() {
    // The verified-token cache must not let a token through a route whose rules it fails.
    let key = SigningKey::rsa1();
    let (idp, _up, proxy) = setup_routes(
        &[&key],
        vec![
            ("/*", json!({})),
            ("/admin/*", json!({"required_scopes": ["admin"]})),
            (
                "/pinned/*",
                json!({"use_jwks": null, "public_key": RSA2_PUBLIC_PEM}),
            ),
            ("/other-realm/*", json!({"realm": "other", "iat_slack": 0})),
        ],
    );
    warm_up(&proxy, &idp, &key);
    let t = key.mint(&with(&claims(&idp.issuer()), json!({"exp": now() - 60})));
    // Within the default leeway on `/*`, expired with no leeway on `/other-realm/`.
    let t_fresh = key.mint(&claims(&idp.issuer()));
    for _ in 0..2 {
        assert_accepted(&bearer_at(&proxy, "/api/x", &t_fresh), &t_fresh);
        let why = assert_forbidden(&bearer_at(&proxy, "/admin/x", &t_fresh), &t_fresh);
        assert_mentions(&why, &["scope"], "admin scope");
        assert_invalid_token(&bearer_at(&proxy, "/pinned/x", &t_fresh), &t_fresh);
        assert_accepted(&bearer_at(&proxy, "/api/x", &t), &t);
        assert_invalid_token_in(&bearer_at(&proxy, "/other-realm/x", &t), &t, "other");
    }
}

#[test]
fn a_cached_token_is_rejected_once_it_expires() {
    let key = SigningKey::rsa1();
    let (idp, _up, proxy) = setup(&[&key], json!({"iat_slack": 0}));
    warm_up(&proxy, &idp, &key);
    let exp = now() + 2;
    let t = key.mint(&with(&claims(&idp.issuer()), json!({"exp": exp})));
    assert_accepted(&bearer(&proxy, &t), &t);
    assert_accepted(&bearer(&proxy, &t), &t);
    // Wait until the clock is past exp.
    let deadline = Instant::now() + Duration::from_secs(4);
    while now() <= exp && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(200));
    assert!(now() > exp);
    let d = assert_invalid_token(&bearer(&proxy, &t), &t);
    assert_mentions(&d, &["exp"], "expired cached token");
}

// ---------------------------------------------------------------------------------------------
// Config validation
// ---------------------------------------------------------------------------------------------

/// A config with one route whose `openid-connect` options are `opts` (YAML, indented 8).
fn plugin_yaml(opts: &str) -> String {
    format!(
        "data_dir: {{DATA}}\nroutes:\n  - id: \"1\"\n    uri: /*\n    plugins:\n      openid-connect:\n{opts}    upstream:\n      nodes: {{ \"127.0.0.1:1980\": 1 }}\n"
    )
}

fn indent(pem_text: &str) -> String {
    pem_text
        .lines()
        .map(|l| format!("          {l}\n"))
        .collect()
}

#[test]
fn check_accepts_a_full_bearer_config() {
    let opts = format!(
        r#"        client_id: portcullis
        client_secret: secret
        discovery: http://127.0.0.1:1/.well-known/openid-configuration
        bearer_only: true
        realm: master
        token_signing_alg_values_expected: RS256
        claim_validator:
          issuer:
            valid_issuers: ["https://a.example"]
          audience:
            claim: aud
            required: true
            match_with_client_id: true
        required_scopes: [read, write]
        iat_slack: 120
        access_token_in_authorization_header: false
        set_access_token_header: true
        set_userinfo_header: true
        timeout: 3
        public_key: |
{}"#,
        indent(RSA1_CERT_PEM)
    );
    let (ok, out) = check_config(&plugin_yaml(&opts));
    assert!(
        ok,
        "`check` rejected a valid bearer config:\n{opts}\noutput:\n{out}"
    );
    let opts = "        client_id: portcullis\n        client_secret: secret\n        discovery: http://127.0.0.1:1/.well-known/openid-configuration\n        bearer_only: true\n        use_jwks: true\n";
    let (ok, out) = check_config(&plugin_yaml(opts));
    assert!(ok, "`check` rejected a JWKS bearer config:\noutput:\n{out}");
    let opts = format!(
        "        client_id: portcullis\n        client_secret: secret\n        discovery: http://127.0.0.1:1/.well-known/openid-configuration\n        bearer_only: true\n        public_key: |\n{}",
        indent(RSA1_PUBLIC_PEM)
    );
    let (ok, out) = check_config(&plugin_yaml(&opts));
    assert!(ok, "`check` rejected an SPKI public_key:\noutput:\n{out}");
}

#[test]
fn check_rejects_bad_plugin_configs_with_the_field_path() {
    const P: &str = "routes[0].plugins.openid-connect";
    let common = "        client_secret: secret\n        discovery: http://127.0.0.1:1/.well-known/openid-configuration\n        bearer_only: true\n";
    // Missing client_id.
    let (ok, out) = check_config(&plugin_yaml(&format!("{common}        use_jwks: true\n")));
    assert!(!ok, "accepted a plugin config without client_id:\n{out}");
    line_with(&out, &format!("{P}.client_id"));

    // Unknown option.
    let (ok, out) = check_config(&plugin_yaml(&format!(
        "        client_id: portcullis\n{common}        use_jwks: true\n        bearer_onyl: true\n"
    )));
    assert!(!ok, "accepted an unknown option:\n{out}");
    let l = line_with(&out, "bearer_onyl");
    assert!(
        l.contains(P),
        "unknown option line should give the path {P}: {l}"
    );

    // Malformed public keys.
    for bad in [
        "not a key".to_string(),
        "-----BEGIN PUBLIC KEY-----\nnot base64 at all!!\n-----END PUBLIC KEY-----\n".to_string(),
        pem("PUBLIC KEY", b"\x30\x03\x02\x01\x01"),
        RSA1_PUBLIC_PEM.replace("-----END PUBLIC KEY-----", ""),
    ] {
        let (ok, out) = check_config(&plugin_yaml(&format!(
            "        client_id: portcullis\n{common}        public_key: |\n{}",
            indent(&bad)
        )));
        assert!(!ok, "accepted a malformed public_key {bad:?}:\n{out}");
        line_with(&out, &format!("{P}.public_key"));
    }
}

#[test]
fn a_second_authorization_header_is_refused_not_forwarded() {
    let key = SigningKey::rsa1();
    let (idp, up, proxy) = setup(&[&key], json!({}));
    let token = key.mint(&claims(&idp.issuer()));
    let forged = unsigned_token(&claims(&idp.issuer()));
    let valid = format!("Bearer {token}");
    let second = format!("Bearer {forged}");
    let r = get_with(
        proxy.port,
        "/api/resource",
        &[("Authorization", &valid), ("Authorization", &second)],
    );
    assert_eq!(r.status, 400, "{:?}", r.text());
    assert_short_json(&r);
    assert_eq!(up.requests(), 0, "nothing may reach the upstream");
}
