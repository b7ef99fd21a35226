//! Hardening of the `openid-connect` plugin against the real binary and a fake IdP
//! (`common::fake_idp`):
//!
//! * `claim_validator` and `required_scopes` hold for introspection answers as they do for JWT
//!   claims, on every request, also when the answer comes from a cache shared with laxer routes;
//! * `check` refuses an option that cannot apply in a route's mode;
//! * IdP answers are read up to 1 MiB and no further (discovery, JWKS, introspection);
//! * the per-core token caches are bounded in bytes (`per_core.token_cache_bytes`).
//!
//! One worker per proxy; `/open/*` has no plugin.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::auth::*;
use common::fake_idp::{FakeIdp, Fault, INTROSPECTION_PATH, JWKS_PATH};
use common::jwt::{claims, jwks, now, unique, with, SigningKey};
use common::*;
use serde_json::{json, Value};

const REALM: &str = "hard";
const CLIENT_ID: &str = "portcullis";
const CLIENT_SECRET: &str = "hardening-s3cret";
/// Extra time allowed past an IdP `timeout` for the proxy to answer.
const MARGIN: Duration = Duration::from_millis(1500);
/// What a failed fetch may have pushed into socket buffers beyond the 1 MiB cap (loopback
/// send and receive buffers grow to a few MiB each); an uncapped read takes 256 MiB.
const PER_FETCH_SLACK: u64 = 16 << 20;

// ---------------------------------------------------------------------------------------------
// The introspection endpoint, answering per token
// ---------------------------------------------------------------------------------------------

/// The fake IdP's introspection handler: each token gets what [`Answers::set`] gave it, any
/// other `{"active": false}`.
#[derive(Clone)]
struct Answers(Arc<Mutex<HashMap<String, Value>>>);

impl Answers {
    fn install(idp: &FakeIdp) -> Answers {
        let answers = Answers(Arc::default());
        let map = answers.0.clone();
        idp.on(INTROSPECTION_PATH, move |req| {
            let token = req.form_value("token").unwrap_or_default();
            let answer = map.lock().unwrap().get(&token).cloned();
            common::fake_idp::IdpResponse::json(
                200,
                &answer.unwrap_or_else(|| json!({"active": false})),
            )
        });
        answers
    }

    fn set(&self, token: &str, answer: Value) {
        self.0.lock().unwrap().insert(token.to_string(), answer);
    }

    /// A fresh token whose answer is [`active`] with `changes`.
    fn token(&self, changes: Value) -> String {
        let t = unique("opaque").replace('-', "_");
        self.set(&t, active(changes));
        t
    }
}

/// An RFC 7662 "active" answer (scope `read`, `exp` in five minutes, no `iss` or `aud`) with
/// `changes` applied (a `null` value removes a member).
fn active(changes: Value) -> Value {
    let t = now();
    let base = json!({
        "active": true,
        "client_id": "some-client",
        "sub": "alice",
        "scope": "read",
        "token_type": "Bearer",
        "iat": t,
        "exp": t + 300,
    });
    with(&base, changes)
}

// ---------------------------------------------------------------------------------------------
// Setup and assertions
// ---------------------------------------------------------------------------------------------

/// Introspection plugin options for `idp` (bearer only, its `/introspect`) with `extra`.
fn introspection(idp: &FakeIdp, extra: Value) -> Value {
    let base = json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "discovery": idp.discovery_url(),
        "bearer_only": true,
        "introspection_endpoint": idp.introspection_url(),
        "realm": REALM,
    });
    with(&base, extra)
}

/// JWKS plugin options for `idp` (bearer only) with `extra`.
fn jwks_plugin(idp: &FakeIdp, extra: Value) -> Value {
    let base = json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "discovery": idp.discovery_url(),
        "bearer_only": true,
        "use_jwks": true,
        "realm": REALM,
    });
    with(&base, extra)
}

/// A one-worker proxy with one introspection route per `(id, uri, extra)`.
fn start_introspection_routes(
    idp: &FakeIdp,
    up: &Upstream,
    routes: &[(&str, &str, Value)],
) -> Proxy {
    let routes = routes
        .iter()
        .map(|(id, uri, extra)| oidc_route(id, uri, up, introspection(idp, extra.clone())))
        .collect();
    start_routes(routes, up)
}

fn assert_invalid(r: &Response, token: &str) -> String {
    let d = assert_invalid_token_answer(r, REALM);
    assert_no_leak(r, token);
    assert_no_leak(r, CLIENT_SECRET);
    d
}

fn assert_forbidden(r: &Response, token: &str) -> String {
    let why = assert_forbidden_answer(r);
    assert_no_leak(r, token);
    why
}

fn assert_ok(r: &Response, token: &str) {
    assert_eq!(
        r.status,
        200,
        "token should be accepted; headers {:?} body {:?}",
        r.headers,
        r.text()
    );
    accepted_echo(r, token);
}

/// Sends `token` to `path`; asserts the refusal never reached the upstream.
fn refused(proxy: &Proxy, up: &Upstream, path: &str, token: &str) -> Response {
    let before = up.requests();
    let r = bearer_at(proxy, path, token);
    assert_ne!(r.status, 200, "{path}: should be refused: {:?}", r.text());
    assert_eq!(
        up.requests(),
        before,
        "{path}: a refused request reached the upstream"
    );
    r
}

// ---------------------------------------------------------------------------------------------
// claim_validator and required_scopes for introspection answers
// ---------------------------------------------------------------------------------------------

#[test]
fn an_active_answer_for_another_audience_gets_403_and_never_reaches_the_upstream() {
    let idp = FakeIdp::start();
    let answers = Answers::install(&idp);
    let up = Upstream::start("up");
    let proxy = start_introspection_routes(
        &idp,
        &up,
        &[
            (
                "aud",
                "/aud/*",
                json!({"claim_validator": {"audience": {"required": true, "match_with_client_id": true}}}),
            ),
            (
                "res",
                "/res/*",
                json!({"claim_validator": {"audience": {"claim": "resource", "required": true}}}),
            ),
        ],
    );
    // The case: active, but issued to another client of the same IdP.
    for aud in [
        json!("other-client"),
        json!(["a", "b"]),
        json!("portcullis-evil"),
        json!([]),
        Value::Null,
    ] {
        let t = answers.token(json!({ "aud": aud.clone() }));
        let r = refused(&proxy, &up, "/aud/x", &t);
        let why = assert_forbidden(&r, &t);
        assert_mentions(&why, &["aud"], &format!("aud {aud}"));
    }
    for aud in [json!("portcullis"), json!(["other", "portcullis"])] {
        let t = answers.token(json!({ "aud": aud.clone() }));
        assert_ok(&bearer_at(&proxy, "/aud/x", &t), &t);
    }
    // A named audience claim: required means present.
    let t = answers.token(json!({"aud": "portcullis"}));
    let why = assert_forbidden(&refused(&proxy, &up, "/res/x", &t), &t);
    assert_mentions(&why, &["aud"], "resource claim missing");
    let t = answers.token(json!({"resource": "urn:api"}));
    assert_ok(&bearer_at(&proxy, "/res/x", &t), &t);
}

#[test]
fn an_active_answer_from_another_issuer_gets_401() {
    let idp = FakeIdp::start();
    let answers = Answers::install(&idp);
    let up = Upstream::start("up");
    let proxy = start_introspection_routes(
        &idp,
        &up,
        &[
            ("default", "/default/*", json!({})),
            (
                "listed",
                "/listed/*",
                json!({"claim_validator": {"issuer": {"valid_issuers": ["https://a.example"]}}}),
            ),
        ],
    );
    let issuer = idp.issuer();
    // Default rule: an answer naming an issuer must name discovery's.
    for iss in [
        json!("https://evil.example"),
        json!(format!("{issuer}/")),
        json!(issuer.to_uppercase()),
    ] {
        let t = answers.token(json!({ "iss": iss.clone() }));
        let d = assert_invalid(&refused(&proxy, &up, "/default/x", &t), &t);
        assert_mentions(&d, &["iss"], &format!("iss {iss}"));
    }
    let t = answers.token(json!({ "iss": &issuer }));
    assert_ok(&bearer_at(&proxy, "/default/x", &t), &t);
    // RFC 7662 makes `iss` optional: the endpoint speaks for its own issuer.
    let t = answers.token(json!({}));
    assert_ok(&bearer_at(&proxy, "/default/x", &t), &t);

    // Listed issuers replace discovery's, and then an answer must name one.
    let t = answers.token(json!({"iss": "https://a.example"}));
    assert_ok(&bearer_at(&proxy, "/listed/x", &t), &t);
    for changes in [json!({ "iss": &issuer }), json!({})] {
        let t = answers.token(changes.clone());
        let d = assert_invalid(&refused(&proxy, &up, "/listed/x", &t), &t);
        assert_mentions(&d, &["iss"], &format!("{changes}"));
    }
}

#[test]
fn a_cached_answer_is_judged_again_by_every_route_sharing_it() {
    let idp = FakeIdp::start();
    let answers = Answers::install(&idp);
    let up = Upstream::start("up");
    // One endpoint, one client: one cache namespace for all four routes.
    let proxy = start_introspection_routes(
        &idp,
        &up,
        &[
            ("lax", "/lax/*", json!({})),
            (
                "aud",
                "/aud/*",
                json!({"claim_validator": {"audience": {"match_with_client_id": true}}}),
            ),
            (
                "iss",
                "/iss/*",
                json!({"claim_validator": {"issuer": {"valid_issuers": ["https://a.example"]}}}),
            ),
            ("scope", "/scope/*", json!({"required_scopes": ["admin"]})),
        ],
    );
    let issuer = idp.issuer();
    let t = answers.token(json!({"aud": "other-client", "iss": issuer, "scope": "read"}));
    assert_ok(&bearer_at(&proxy, "/lax/x", &t), &t);
    assert_eq!(idp.introspections(), 1);
    // Cache hits, each judged by its own route.
    let why = assert_forbidden(&refused(&proxy, &up, "/aud/x", &t), &t);
    assert_mentions(&why, &["aud"], "cached answer, audience rule");
    let d = assert_invalid(&refused(&proxy, &up, "/iss/x", &t), &t);
    assert_mentions(&d, &["iss"], "cached answer, listed issuers");
    let why = assert_forbidden(&refused(&proxy, &up, "/scope/x", &t), &t);
    assert_mentions(&why, &["scope"], "cached answer, required scope");
    assert_ok(&bearer_at(&proxy, "/lax/x", &t), &t);
    assert_eq!(
        idp.introspections(),
        1,
        "the routes share one cached answer: the refusals above came from cache hits"
    );

    // The other way round: a refusal is not remembered as the token's verdict.
    let t = answers.token(json!({"aud": ["x", CLIENT_ID], "scope": "read admin"}));
    let d = assert_invalid(&refused(&proxy, &up, "/iss/x", &t), &t);
    assert_mentions(&d, &["iss"], "fresh answer without iss, listed issuers");
    for path in ["/aud/x", "/scope/x", "/lax/x"] {
        assert_ok(&bearer_at(&proxy, path, &t), &t);
    }
    assert_eq!(idp.introspections(), 2);
}

#[test]
fn scopes_given_as_a_list_count_for_introspected_tokens() {
    let idp = FakeIdp::start();
    let answers = Answers::install(&idp);
    let up = Upstream::start("up");
    let proxy = start_introspection_routes(
        &idp,
        &up,
        &[("1", "/*", json!({"required_scopes": ["read", "write"]}))],
    );
    for ok in [
        json!({"scope": "write read"}),
        json!({"scope": ["read", "write"]}),
        json!({"scope": null, "scp": ["write", "read"]}),
    ] {
        let t = answers.token(ok.clone());
        let r = bearer_at(&proxy, "/x", &t);
        assert_eq!(r.status, 200, "{ok}: {:?}", r.text());
    }
    for missing in [json!({"scope": "read"}), json!({"scope": ["readwrite"]})] {
        let t = answers.token(missing.clone());
        let why = assert_forbidden(&refused(&proxy, &up, "/x", &t), &t);
        assert_mentions(&why, &["scope"], &format!("{missing}"));
    }
}

#[test]
fn an_answer_with_a_mistyped_claim_gets_a_precise_401() {
    let idp = FakeIdp::start();
    let answers = Answers::install(&idp);
    let up = Upstream::start("up");
    let proxy = start_introspection_routes(&idp, &up, &[("1", "/*", json!({}))]);
    for bad in [json!({"iss": 42}), json!({"exp": "tomorrow"})] {
        let t = answers.token(bad.clone());
        let d = assert_invalid(&refused(&proxy, &up, "/x", &t), &t);
        assert!(
            d.starts_with("introspection failed: introspection answer"),
            "{bad}: {d:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// `check` refuses options that cannot apply in a route's mode
// ---------------------------------------------------------------------------------------------

/// A config with one route whose `openid-connect` options are `opts` (YAML, indented 8).
fn plugin_yaml(opts: &str) -> String {
    format!(
        "data_dir: {{DATA}}\nroutes:\n  - id: \"1\"\n    uri: /*\n    plugins:\n      openid-connect:\n{opts}    upstream:\n      nodes: {{ \"127.0.0.1:1980\": 1 }}\n"
    )
}

#[test]
fn check_refuses_an_expected_algorithm_on_an_introspection_route() {
    let common = "        client_id: portcullis\n        client_secret: secret\n        discovery: http://127.0.0.1:1/.well-known/openid-configuration\n        bearer_only: true\n";
    let intro = "        introspection_endpoint: http://127.0.0.1:1/introspect\n";
    let claims_opts = "        required_scopes: [read]\n        iat_slack: 30\n        claim_validator:\n          issuer: { valid_issuers: [\"https://a.example\"] }\n          audience: { claim: aud, required: true, match_with_client_id: true }\n";

    let (ok, out) = check_config(&plugin_yaml(&format!(
        "{common}{intro}        token_signing_alg_values_expected: RS256\n"
    )));
    assert!(
        !ok,
        "accepted an algorithm no introspected token is checked against:\n{out}"
    );
    let l = line_with(
        &out,
        "routes[0].plugins.openid-connect.token_signing_alg_values_expected: ",
    );
    assert!(
        l.contains("introspection") && l.contains("(allowed: "),
        "{l}"
    );

    // The claim checks all apply to introspection answers, so they are accepted there...
    let (ok, out) = check_config(&plugin_yaml(&format!("{common}{intro}{claims_opts}")));
    assert!(ok, "refused claim checks on an introspection route:\n{out}");
    // ... and an expected algorithm where JWTs are read.
    let (ok, out) = check_config(&plugin_yaml(&format!(
        "{common}{intro}        use_jwks: true\n        token_signing_alg_values_expected: RS256\n{claims_opts}"
    )));
    assert!(ok, "refused an expected algorithm on a JWKS route:\n{out}");
}

// ---------------------------------------------------------------------------------------------
// IdP answers are read up to 1 MiB
// ---------------------------------------------------------------------------------------------

/// A token signed by `key`, issued by `idp`.
fn mint_for(idp: &FakeIdp, key: &SigningKey) -> String {
    key.mint(&claims(&idp.issuer()))
}

#[test]
fn an_endless_jwks_is_cut_at_1_mib_and_memory_stays_bounded() {
    let key = SigningKey::rsa1();
    let idp = FakeIdp::start_with_jwks(jwks(&[&key]));
    idp.set_path_behaviour(JWKS_PATH, Fault::Endless, Duration::ZERO);
    let up = Upstream::start("up");
    let proxy = start_routes(
        vec![oidc_route(
            "1",
            "/*",
            &up,
            jwks_plugin(&idp, json!({"timeout": 2})),
        )],
        &up,
    );
    let rss_before = proxy.peak_rss();
    let t = mint_for(&idp, &key);
    let started = Instant::now();
    let r = bearer_at(&proxy, "/x", &t);
    let d = assert_invalid(&r, &t);
    assert!(
        started.elapsed() < Duration::from_secs(2) + MARGIN,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        d, "no verification keys available: JWKS answer larger than 1 MiB",
        "the description names the problem"
    );
    // The background refresh keeps trying (1 s, 2 s backoff): each try is cut at the cap.
    assert!(eventually(Duration::from_secs(5), || idp.jwks_fetches() >= 3));
    let fetches = idp.jwks_fetches() as u64 + 1;
    let streamed = idp.streamed();
    assert!(
        streamed < fetches * PER_FETCH_SLACK,
        "{fetches} JWKS fetches made the IdP stream {streamed} bytes"
    );
    let grown = proxy.peak_rss().saturating_sub(rss_before);
    assert!(
        grown < 48 << 20,
        "the proxy's peak RSS grew by {grown} bytes"
    );
    // Other routes are served meanwhile.
    assert_eq!(proxy.get("/open/x").status, 200);
}

#[test]
fn a_jwks_announcing_a_huge_length_is_refused_without_reading_it() {
    let key = SigningKey::rsa1();
    let idp = FakeIdp::start_with_jwks(jwks(&[&key]));
    // 10 GB announced, trickled: reading it (or waiting for it) would take the whole timeout.
    idp.set_path_behaviour(JWKS_PATH, Fault::Announced(10_000_000_000), Duration::ZERO);
    let up = Upstream::start("up");
    let proxy = start_routes(
        vec![oidc_route(
            "1",
            "/*",
            &up,
            jwks_plugin(&idp, json!({"timeout": 5})),
        )],
        &up,
    );
    assert!(eventually(Duration::from_secs(5), || idp.jwks_fetches() >= 1));
    let t = mint_for(&idp, &key);
    let started = Instant::now();
    let d = assert_invalid(&bearer_at(&proxy, "/x", &t), &t);
    assert_eq!(
        d,
        "no verification keys available: JWKS answer larger than 1 MiB"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused on the announced length, not after the 5 s timeout: {:?}",
        started.elapsed()
    );
}

#[test]
fn an_endless_or_oversized_introspection_answer_gets_a_precise_401() {
    let idp = FakeIdp::start();
    let answers = Answers::install(&idp);
    idp.set_path_behaviour(INTROSPECTION_PATH, Fault::Endless, Duration::ZERO);
    let up = Upstream::start("up");
    let proxy = start_introspection_routes(&idp, &up, &[("1", "/*", json!({"timeout": 2}))]);
    let rss_before = proxy.peak_rss();
    let t = answers.token(json!({}));
    for round in 1..=3 {
        let started = Instant::now();
        let d = assert_invalid(&refused(&proxy, &up, "/x", &t), &t);
        assert_eq!(
            d, "introspection failed: introspection answer larger than 1 MiB",
            "round {round}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2) + MARGIN,
            "{:?}",
            started.elapsed()
        );
        // A failure is not cached: every request asks again, and each answer is cut.
        assert_eq!(idp.introspections(), round);
    }
    let streamed = idp.streamed();
    assert!(
        streamed < 3 * PER_FETCH_SLACK,
        "3 calls streamed {streamed} bytes"
    );
    let grown = proxy.peak_rss().saturating_sub(rss_before);
    assert!(
        grown < 48 << 20,
        "the proxy's peak RSS grew by {grown} bytes"
    );

    idp.set_path_behaviour(
        INTROSPECTION_PATH,
        Fault::Announced(5_000_000),
        Duration::ZERO,
    );
    let started = Instant::now();
    let d = assert_invalid(&refused(&proxy, &up, "/x", &t), &t);
    assert_eq!(
        d,
        "introspection failed: introspection answer larger than 1 MiB"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    idp.heal();
    assert_ok(&bearer_at(&proxy, "/x", &t), &t);
}

// ---------------------------------------------------------------------------------------------
// Token caches bounded in bytes
// ---------------------------------------------------------------------------------------------

/// About `n` bytes of claims: a `groups` list, as directories with many groups produce.
fn groups(n: usize) -> Value {
    let one = "cn=some-directory-group-name,ou=groups,dc=example,dc=com";
    json!(vec![one; n / (one.len() + 3)])
}

#[test]
fn jwts_with_big_claims_keep_the_token_cache_within_its_bytes() {
    let key = SigningKey::ed25519("ed");
    let up = Upstream::start("up");
    let plugin = json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "discovery": "http://127.0.0.1:1/.well-known/openid-configuration",
        "bearer_only": true,
        "public_key": key.public_pem(),
        "claim_validator": {"issuer": {"valid_issuers": ["https://idp.example"]}},
        // The claims go upstream once, in X-Userinfo; the token itself need not.
        "set_access_token_header": false,
    });
    let mut cfg = base_config(vec![oidc_route("1", "/*", &up, plugin)]);
    cfg["per_core"] = json!({"token_cache_bytes": 8 << 20});
    cfg["limits"] = json!({"max_header_bytes": 65536});
    cfg["log"] = json!({"access": false});
    let proxy = Proxy::start(cfg);

    let base = with(
        &claims("https://idp.example"),
        json!({"groups": groups(27_000)}),
    );
    let mint = || key.mint(&with(&base, json!({"jti": unique("jti")})));
    let mut c = proxy.client();
    let mut send = |t: &str| {
        let auth = format!("Bearer {t}");
        let r = c.request("GET", "/x", &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 200, "{:?}", r.text());
    };
    // Warm-up: buffers, allocator arenas, a first share of the cache.
    for _ in 0..50 {
        send(&mint());
    }
    let rss_before = proxy.peak_rss();
    // Unbounded, 2,500 tokens would keep ~90 MB of claims; the budget is 8 MiB.
    for _ in 0..2500 {
        send(&mint());
    }
    let grown = proxy.peak_rss().saturating_sub(rss_before);
    assert!(
        grown < 40 << 20,
        "2,500 tokens with 27 KB of claims grew the peak RSS by {grown} bytes"
    );
}

#[test]
fn big_introspection_answers_keep_the_cache_within_its_bytes() {
    let idp = FakeIdp::start();
    let answers = Answers::install(&idp);
    let up = Upstream::start("up");
    let mut cfg = base_config(vec![oidc_route(
        "1",
        "/*",
        &up,
        introspection(&idp, json!({"set_access_token_header": false})),
    )]);
    cfg["per_core"] = json!({"token_cache_bytes": 4 << 20});
    cfg["log"] = json!({"access": false});
    let proxy = Proxy::start(cfg);

    let big = json!({"groups": groups(27_000)});
    let mut c = proxy.client();
    let mut send = |t: &str| {
        let auth = format!("Bearer {t}");
        let r = c.request("GET", "/x", &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 200, "{:?}", r.text());
    };
    let first = answers.token(big.clone());
    send(&first);
    for _ in 0..30 {
        send(&answers.token(big.clone()));
    }
    let rss_before = proxy.peak_rss();
    let mut last = String::new();
    for _ in 0..1500 {
        last = answers.token(big.clone());
        send(&last);
    }
    let grown = proxy.peak_rss().saturating_sub(rss_before);
    assert!(
        grown < 32 << 20,
        "1,500 answers of 27 KB grew the peak RSS by {grown} bytes"
    );
    // The youngest answer is still cached; the oldest was evicted for bytes, not entries
    // (the entry bound is 100,000).
    let calls = idp.introspections();
    send(&last);
    assert_eq!(
        idp.introspections(),
        calls,
        "the latest answer should be a cache hit"
    );
    send(&first);
    assert_eq!(
        idp.introspections(),
        calls + 1,
        "the first answer should have been evicted to stay within 4 MiB"
    );
}

#[test]
fn check_validates_the_cache_byte_budget() {
    let (ok, out) = check_config("data_dir: {DATA}\nper_core:\n  token_cache_bytes: -1\n");
    assert!(!ok, "{out}");
    let l = line_with(&out, "per_core.token_cache_bytes: ");
    assert!(l.contains("(allowed: 0 to "), "{l}");
    let (ok, out) = check_config("data_dir: {DATA}\nper_core:\n  token_cache_bytes: 1048576\n");
    assert!(ok, "{out}");
}
