//! Bearer-token costs: RS256 verification with the ready (parsed once) key against ring's
//! per-call key and a `jsonwebtoken` decode (the baselines), the cache-hit path, and the whole
//! per-request auth step on a miss.

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::http::h1::parse_request;
use portcullis::idp::Idp;
use portcullis::jose::jwt;
use portcullis::jose::keys::{parse_public_key_pem, KeySet};
use portcullis::plugins::openid_connect::cache::TokenCache;
use portcullis::plugins::openid_connect::{self as oidc, Lookup, OidcPlugin};
use portcullis::plugins::PluginEnv;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};

const ISSUER: &str = "https://idp.example";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("test fixture")
}

fn sign(key: &RsaKeyPair, sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#);
    let claims = serde_json::json!({"iss": ISSUER, "sub": sub, "aud": "api", "exp": exp, "iat": exp - 3600,
        "scope": "openid read write", "email": "someone@example.com"});
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn plugin(pem: &str) -> OidcPlugin {
    let conf = serde_json::json!({
        "client_id": "bench", "client_secret": "secret",
        // Nothing listens there: the IdP thread's fetch fails fast and is not needed.
        "discovery": "http://127.0.0.1:9/.well-known/openid-configuration",
        "bearer_only": true, "public_key": pem,
        "claim_validator": {"issuer": {"valid_issuers": [ISSUER]}}
    });
    let mut errors = Vec::new();
    let cfg =
        oidc::config::check(conf, "bench", &mut errors).expect("bench plugin config is valid");
    OidcPlugin::new(
        cfg,
        &PluginEnv::new(
            Idp::start().expect("IdP thread starts"),
            std::env::temp_dir(),
        ),
    )
}

fn verify(c: &mut Criterion) {
    let key = RsaKeyPair::from_pkcs8(&fixture("rsa1.pk8.der")).unwrap();
    let pem = String::from_utf8(fixture("rsa1.pub.pem")).unwrap();
    let token = sign(&key, "user-1");
    let keys = KeySet::pinned_to(parse_public_key_pem(&pem).unwrap());
    let mut g = c.benchmark_group("rs256_verify");
    g.bench_function("ready_key", |b| {
        b.iter(|| {
            let parsed = jwt::parse(black_box(token.as_bytes()), Some("RS256")).unwrap();
            jwt::verify_signature(&parsed, &keys).unwrap();
        })
    });
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let parts: ring::rsa::PublicKeyComponents<Vec<u8>> = key.public().into();
    let (n, e) = (parts.n, parts.e);
    g.bench_function("ring_key_per_call", |b| {
        b.iter(|| {
            ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                    black_box(input.as_bytes()),
                    &sig,
                )
                .unwrap()
        })
    });
    let decoding = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[ISSUER]);
    validation.validate_aud = false;
    g.bench_function("jsonwebtoken_decode_baseline", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &decoding, &validation)
                .unwrap()
        })
    });
    g.finish();
}

fn auth_step(c: &mut Criterion) {
    let key = RsaKeyPair::from_pkcs8(&fixture("rsa1.pk8.der")).unwrap();
    let pem = String::from_utf8(fixture("rsa1.pub.pem")).unwrap();
    let p = plugin(&pem);
    let token = sign(&key, "user-1");
    let req = format!("GET /api HTTP/1.1\r\nHost: api.example\r\nAuthorization: Bearer {token}\r\nAccept: */*\r\n\r\n");
    let mut headers = Vec::new();
    parse_request(&mut req.clone().into_bytes(), 100, &mut headers)
        .unwrap()
        .unwrap();

    let mut g = c.benchmark_group("auth_step");
    let mut cache = TokenCache::new(100_000, 64 << 20);
    // Warm the cache once through the miss path.
    if let Lookup::Miss {
        key: Some(key),
        now,
        ..
    } = oidc::lookup(&p, &mut cache, req.as_bytes(), &headers).unwrap()
    {
        cache.insert(
            key,
            oidc::verify_now(&p, token.as_bytes(), now).unwrap(),
            now,
        );
    }
    g.bench_function("cache_hit", |b| {
        b.iter(|| {
            match oidc::lookup(&p, &mut cache, black_box(req.as_bytes()), &headers).unwrap() {
                Lookup::Cached(id) => id,
                _ => panic!("expected a cache hit"),
            }
        })
    });
    let mut no_cache = TokenCache::new(0, 0);
    // With the cache off no digest is taken: a new token with the cache on adds one SHA-256
    // of the token and an insert to this.
    g.bench_function("miss_verify_rs256_cache_off", |b| {
        b.iter(|| {
            match oidc::lookup(&p, &mut no_cache, black_box(req.as_bytes()), &headers).unwrap() {
                Lookup::Miss { now, token, .. } => {
                    oidc::verify_now(&p, token.get(req.as_bytes()), now).unwrap()
                }
                _ => panic!("expected a miss"),
            }
        })
    });
    g.finish();
}

criterion_group!(benches, verify, auth_step);
criterion_main!(benches);
