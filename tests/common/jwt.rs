//! Token minting for the OpenID Connect tests: base64, JWS signing with `ring`, JWKs and PEM
//! public keys.
//!
//! * [`SigningKey`] signs JWTs with RS256 (the two RSA keys in `tests/fixtures/`), ES256, ES384
//!   or EdDSA (Ed25519, keys generated per run), and describes itself as a JWK, as a PEM
//!   `SubjectPublicKeyInfo` and (RSA key 1) as a self-signed certificate.
//! * [`jwks`], [`unsigned_token`], [`hs256_token`] build key sets and the malicious tokens.
//! * [`b64url`], [`b64_std`] and their decoders wrap the `base64` crate (canonical encodings
//!   only; the standard decoder requires padding).
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// base64
// ---------------------------------------------------------------------------------------------

/// base64url without padding (RFC 7515 §2).
pub fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Decodes unpadded base64url; `None` when it is not canonical base64url.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn b64_std(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Decodes standard, padded base64 strictly (wrong length, missing padding or URL-safe
/// characters give `None`).
pub fn b64_std_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

// ---------------------------------------------------------------------------------------------
// Time and claims
// ---------------------------------------------------------------------------------------------

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A string unique within this test process (for `jti`, random `kid`s, ...).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Claims of a valid access token from `issuer` for the client `portcullis`: `sub`, `aud`,
/// `iat`, `exp` (10 minutes), `scope`, and a unique `jti` so no two tokens are equal.
pub fn claims(issuer: &str) -> Value {
    let t = now();
    json!({
        "iss": issuer,
        "sub": "alice",
        "aud": "portcullis",
        "iat": t,
        "exp": t + 600,
        "scope": "openid profile read",
        "preferred_username": "alice",
        "jti": unique("jti"),
    })
}

/// `base` with the fields of `changes` set (a `null` value removes the field).
pub fn with(base: &Value, changes: Value) -> Value {
    let mut out = base.clone();
    let obj = out.as_object_mut().expect("claims are an object");
    for (k, v) in changes.as_object().expect("changes are an object") {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// `b64url(header).b64url(claims)`: the JWS signing input.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// An unsecured JWT (`alg: none`, empty signature): `header.claims.`
pub fn unsigned_token(claims: &Value) -> String {
    format!(
        "{}.",
        signing_input(&json!({"alg": "none", "typ": "JWT"}), claims)
    )
}

/// A JWT with `header` (should say `alg: HS256`) signed with HMAC-SHA256 under `secret`.
pub fn hs256_token(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}

/// The three dot-separated parts of a compact JWS.
pub fn parts(token: &str) -> Vec<&str> {
    token.split('.').collect()
}

/// The decoded claims of a compact JWS.
pub fn payload(token: &str) -> Value {
    let p = parts(token);
    let raw = b64url_decode(p[1]).expect("payload is base64url");
    serde_json::from_slice(&raw).expect("payload is JSON")
}

/// The token with one bit of its signature flipped (in the middle of the signature, so the
/// base64url stays canonical).
pub fn flip_signature_bit(token: &str) -> String {
    let p = parts(token);
    let mut sig = b64url_decode(p[2]).expect("signature is base64url");
    let mid = sig.len() / 2;
    sig[mid] ^= 0x01;
    format!("{}.{}.{}", p[0], p[1], b64url(&sig))
}

/// The token with its payload replaced by `claims` and the original signature kept.
pub fn replace_payload(token: &str, claims: &Value) -> String {
    let p = parts(token);
    format!(
        "{}.{}.{}",
        p[0],
        b64url(claims.to_string().as_bytes()),
        p[2]
    )
}

// ---------------------------------------------------------------------------------------------
// PEM
// ---------------------------------------------------------------------------------------------

/// Wraps DER bytes as PEM with `label` (64-column lines).
pub fn pem(label: &str, der: &[u8]) -> String {
    let b = b64_std(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside a PEM text (first block).
pub fn pem_to_der(pem_text: &str) -> Vec<u8> {
    let b: String = pem_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    b64_std_decode(&b).expect("PEM body is base64")
}

/// RSA key 1 (PKCS#8 DER), its SPKI public key and a self-signed certificate for it.
pub const RSA1_PKCS8: &[u8] = include_bytes!("../fixtures/rsa1.pk8.der");
pub const RSA1_PUBLIC_PEM: &str = include_str!("../fixtures/rsa1.pub.pem");
pub const RSA1_CERT_PEM: &str = include_str!("../fixtures/rsa1.cert.pem");
/// RSA key 2 (PKCS#8 DER) and its SPKI public key.
pub const RSA2_PKCS8: &[u8] = include_bytes!("../fixtures/rsa2.pk8.der");
pub const RSA2_PUBLIC_PEM: &str = include_str!("../fixtures/rsa2.pub.pem");

// DER prefixes of SubjectPublicKeyInfo for the fixed-size key types (algorithm identifier and
// the BIT STRING header); the raw public key follows.
const SPKI_P256_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const SPKI_P384_PREFIX: &[u8] = &[
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];
const SPKI_ED25519_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

// ---------------------------------------------------------------------------------------------
// Signing keys
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
enum Key {
    Rsa {
        pair: Arc<RsaKeyPair>,
        public_pem: &'static str,
    },
    Es256(Arc<EcdsaKeyPair>),
    Es384(Arc<EcdsaKeyPair>),
    Ed25519(Arc<Ed25519KeyPair>),
}

/// A private key that signs JWTs, with its key id.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    key: Key,
}

impl SigningKey {
    fn rsa(pkcs8: &[u8], public_pem: &'static str, kid: &str) -> SigningKey {
        let pair = RsaKeyPair::from_pkcs8(pkcs8).expect("RSA fixture is a PKCS#8 key");
        SigningKey {
            kid: kid.to_string(),
            key: Key::Rsa {
                pair: Arc::new(pair),
                public_pem,
            },
        }
    }

    /// RSA-2048 key 1 from the fixtures, RS256, `kid` "rsa1".
    pub fn rsa1() -> SigningKey {
        SigningKey::rsa(RSA1_PKCS8, RSA1_PUBLIC_PEM, "rsa1")
    }

    /// RSA-2048 key 2 from the fixtures, RS256, `kid` "rsa2".
    pub fn rsa2() -> SigningKey {
        SigningKey::rsa(RSA2_PKCS8, RSA2_PUBLIC_PEM, "rsa2")
    }

    /// A fresh P-256 key (ES256).
    pub fn es256(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).expect("P-256 key");
        SigningKey {
            kid: kid.to_string(),
            key: Key::Es256(Arc::new(pair)),
        }
    }

    /// A fresh P-384 key (ES384).
    pub fn es384(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P384_SHA384_FIXED_SIGNING;
        let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate P-384 key");
        let pair = EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).expect("P-384 key");
        SigningKey {
            kid: kid.to_string(),
            key: Key::Es384(Arc::new(pair)),
        }
    }

    /// A fresh Ed25519 key (EdDSA).
    pub fn ed25519(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate Ed25519 key");
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("Ed25519 key");
        SigningKey {
            kid: kid.to_string(),
            key: Key::Ed25519(Arc::new(pair)),
        }
    }

    /// The same private key under another key id.
    pub fn with_kid(&self, kid: &str) -> SigningKey {
        SigningKey {
            kid: kid.to_string(),
            key: self.key.clone(),
        }
    }

    /// The JWS `alg` this key signs with.
    pub fn alg(&self) -> &'static str {
        match self.key {
            Key::Rsa { .. } => "RS256",
            Key::Es256(_) => "ES256",
            Key::Es384(_) => "ES384",
            Key::Ed25519(_) => "EdDSA",
        }
    }

    /// `{"alg", "typ": "JWT", "kid"}`.
    pub fn header(&self) -> Value {
        json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid})
    }

    /// Signs `input` (JWS signature bytes: PKCS#1 v1.5, fixed-size r||s, or Ed25519).
    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.key {
            Key::Rsa { pair, .. } => {
                let mut sig = vec![0u8; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, input, &mut sig)
                    .expect("RSA signing");
                sig
            }
            Key::Es256(pair) | Key::Es384(pair) => pair
                .sign(&rng, input)
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
            Key::Ed25519(pair) => pair.sign(input).as_ref().to_vec(),
        }
    }

    /// A compact JWS of `claims` with this key's standard header.
    pub fn mint(&self, claims: &Value) -> String {
        self.mint_with_header(&self.header(), claims)
    }

    /// A compact JWS of `claims` with an arbitrary `header`, signed with this key.
    pub fn mint_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", b64url(&sig))
    }

    /// The public key as a JWK (with `kid`, `alg` and `use: sig`).
    pub fn jwk(&self) -> Value {
        match &self.key {
            Key::Rsa { pair, .. } => {
                let c: signature::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
                json!({
                    "kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                    "n": b64url(&c.n), "e": b64url(&c.e),
                })
            }
            Key::Es256(pair) | Key::Es384(pair) => {
                let point = pair.public_key().as_ref();
                assert_eq!(point[0], 0x04, "uncompressed EC point");
                let half = (point.len() - 1) / 2;
                let crv = if half == 32 { "P-256" } else { "P-384" };
                json!({
                    "kty": "EC", "kid": self.kid, "use": "sig", "alg": self.alg(), "crv": crv,
                    "x": b64url(&point[1..1 + half]), "y": b64url(&point[1 + half..]),
                })
            }
            Key::Ed25519(pair) => json!({
                "kty": "OKP", "kid": self.kid, "use": "sig", "alg": "EdDSA", "crv": "Ed25519",
                "x": b64url(pair.public_key().as_ref()),
            }),
        }
    }

    /// The public key as a PEM `SubjectPublicKeyInfo` ("PUBLIC KEY").
    pub fn public_pem(&self) -> String {
        match &self.key {
            Key::Rsa { public_pem, .. } => public_pem.to_string(),
            Key::Es256(pair) => pem(
                "PUBLIC KEY",
                &[SPKI_P256_PREFIX, pair.public_key().as_ref()].concat(),
            ),
            Key::Es384(pair) => pem(
                "PUBLIC KEY",
                &[SPKI_P384_PREFIX, pair.public_key().as_ref()].concat(),
            ),
            Key::Ed25519(pair) => pem(
                "PUBLIC KEY",
                &[SPKI_ED25519_PREFIX, pair.public_key().as_ref()].concat(),
            ),
        }
    }

    /// The DER `SubjectPublicKeyInfo`.
    pub fn public_der(&self) -> Vec<u8> {
        pem_to_der(&self.public_pem())
    }
}

/// `{"keys": [jwk, ...]}`
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}
