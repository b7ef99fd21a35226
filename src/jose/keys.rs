//! Verification keys, parsed once (from JWKS or PEM) into the form their verifier needs.
//!
//! RSA keys are held as aws-lc-rs `ParsedPublicKey`s: ring 0.17 has no reusable RSA public key
//! and rebuilds the Montgomery form of the modulus on every verification (~22 µs per RS256
//! token here, against ~15.5 µs with the parsed key). EC and Ed25519 keys stay with ring, whose
//! per-call point decoding is a small part of those verifications.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::signature::{self as lc, ParsedPublicKey, RsaPublicKeyComponents};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;

/// JWS algorithms Portcullis verifies. HMAC and `none` are deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

/// Algorithm names accepted in `token_signing_alg_values_expected`.
pub const ALG_NAMES: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl Alg {
    /// The algorithm named in a JWS header.
    pub fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" => Alg::EdDSA,
            _ => return None,
        })
    }
}

/// A public key ready to verify with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyKey {
    /// RSA modulus and exponent, big-endian without leading zeros, and the parsed key.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
        /// The key parsed once per RSA algorithm.
        ready: RsaReady,
    },
    /// P-256 uncompressed point.
    P256(Vec<u8>),
    /// P-384 uncompressed point.
    P384(Vec<u8>),
    /// Ed25519 public key.
    Ed25519(Vec<u8>),
}

impl VerifyKey {
    /// Whether this key can verify `alg` at all (an `alg` that does not fit the key is refused
    /// before any crypto, which is what rules out algorithm confusion).
    pub fn fits(&self, alg: Alg) -> bool {
        matches!(
            (self, alg),
            (
                VerifyKey::Rsa { .. },
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
            ) | (VerifyKey::P256(_), Alg::ES256)
                | (VerifyKey::P384(_), Alg::ES384)
                | (VerifyKey::Ed25519(_), Alg::EdDSA)
        )
    }

    /// Check `sig` over `msg`.
    pub fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        match (self, alg) {
            (VerifyKey::Rsa { ready, .. }, _) => ready
                .for_alg(alg)
                .is_some_and(|key| key.verify_sig(msg, sig).is_ok()),
            (VerifyKey::P256(p), Alg::ES256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p)
                    .verify(msg, sig)
                    .is_ok()
            }
            (VerifyKey::P384(p), Alg::ES384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p)
                    .verify(msg, sig)
                    .is_ok()
            }
            (VerifyKey::Ed25519(k), Alg::EdDSA) => UnparsedPublicKey::new(&signature::ED25519, k)
                .verify(msg, sig)
                .is_ok(),
            _ => false,
        }
    }
}

/// The RSA algorithms, in the order `RsaReady` holds their parsed keys.
const RSA_ALGS: [(Alg, &lc::RsaParameters); 6] = [
    (Alg::RS256, &lc::RSA_PKCS1_2048_8192_SHA256),
    (Alg::RS384, &lc::RSA_PKCS1_2048_8192_SHA384),
    (Alg::RS512, &lc::RSA_PKCS1_2048_8192_SHA512),
    (Alg::PS256, &lc::RSA_PSS_2048_8192_SHA256),
    (Alg::PS384, &lc::RSA_PSS_2048_8192_SHA384),
    (Alg::PS512, &lc::RSA_PSS_2048_8192_SHA512),
];

/// One RSA key parsed for each RSA algorithm: aws-lc-rs binds a parsed key to its padding
/// and digest, and parsing at verification time is the cost this exists to avoid.
#[derive(Clone)]
pub struct RsaReady(Box<[ParsedPublicKey; 6]>);

impl RsaReady {
    fn new(n: &[u8], e: &[u8]) -> Result<RsaReady, String> {
        let parts = RsaPublicKeyComponents { n, e };
        let parse = |i: usize| {
            parts
                .to_parsed_public_key(RSA_ALGS[i].1)
                .map_err(|err| format!("RSA key rejected: {err}"))
        };
        Ok(RsaReady(Box::new([
            parse(0)?,
            parse(1)?,
            parse(2)?,
            parse(3)?,
            parse(4)?,
            parse(5)?,
        ])))
    }

    fn for_alg(&self, alg: Alg) -> Option<&ParsedPublicKey> {
        let i = RSA_ALGS.iter().position(|(a, _)| *a == alg)?;
        self.0.get(i)
    }
}

impl std::fmt::Debug for RsaReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaReady")
    }
}

/// Equal when `n` and `e` are, which `VerifyKey`'s own comparison already checks.
impl PartialEq for RsaReady {
    fn eq(&self, _: &RsaReady) -> bool {
        true
    }
}

impl Eq for RsaReady {}

/// An RSA key from its modulus and exponent (big-endian, leading zeros allowed).
fn rsa_key(n: Vec<u8>, e: Vec<u8>) -> Result<VerifyKey, String> {
    let (n, e) = (strip_zeros(n), strip_zeros(e));
    if n.len() < 256 {
        return Err(format!(
            "RSA key of {} bits is too small (at least 2048)",
            n.len() * 8
        ));
    }
    // Verification refuses larger ones; saying so here names the key instead of failing every
    // token it signs.
    if n.len() > 1024 {
        return Err(format!(
            "RSA key of {} bits is too large (at most 8192)",
            n.len() * 8
        ));
    }
    // The exponent rules ring applies: odd, at least 3, at most 33 bits.
    let e_value = (e.len() <= 5).then(|| e.iter().fold(0u64, |v, &b| v << 8 | u64::from(b)));
    if !e_value.is_some_and(|v| v >= 3 && v % 2 == 1 && v < 1 << 33) {
        return Err("RSA exponent must be odd, at least 3 and at most 33 bits".into());
    }
    let ready = RsaReady::new(&n, &e)?;
    Ok(VerifyKey::Rsa { n, e, ready })
}

/// The keys of one issuer, found by `kid` in one lookup.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// Every key, for tokens without a `kid`.
    pub all: Vec<Arc<VerifyKey>>,
    /// A configured `public_key`: it verifies every token, whatever `kid` it names.
    pinned: bool,
}

impl KeySet {
    /// The key with this id.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyKey>> {
        self.by_kid.get(kid)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// A set of one configured key (`public_key`).
    pub fn pinned_to(key: VerifyKey) -> KeySet {
        KeySet {
            by_kid: HashMap::new(),
            all: vec![Arc::new(key)],
            pinned: true,
        }
    }

    /// The configured key, when this set is one.
    pub fn pinned(&self) -> Option<&Arc<VerifyKey>> {
        self.all.first().filter(|_| self.pinned)
    }
}

#[derive(Debug, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    x5c: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

fn b64url(s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("bad base64url: {e}"))
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let z = v.iter().take_while(|&&b| b == 0).count();
    v.drain(..z);
    v
}

fn jwk_key(jwk: &Jwk) -> Result<VerifyKey, String> {
    let need = |v: &Option<String>, name: &str| {
        v.as_deref()
            .ok_or_else(|| format!("missing `{name}`"))
            .and_then(b64url)
    };
    match jwk.kty.as_str() {
        "RSA" => {
            if let (Some(_), Some(_)) = (&jwk.n, &jwk.e) {
                rsa_key(need(&jwk.n, "n")?, need(&jwk.e, "e")?)
            } else if let Some(cert) = jwk.x5c.as_ref().and_then(|c| c.first()) {
                let der = STANDARD.decode(cert).map_err(|e| format!("bad x5c: {e}"))?;
                key_from_certificate(&der)
            } else {
                Err("RSA key without n/e or x5c".into())
            }
        }
        "EC" => {
            let (x, y) = (need(&jwk.x, "x")?, need(&jwk.y, "y")?);
            let (len, p384) = match jwk.crv.as_deref() {
                Some("P-256") => (32, false),
                Some("P-384") => (48, true),
                other => return Err(format!("unsupported curve {other:?}")),
            };
            if x.len() != len || y.len() != len {
                return Err("EC coordinates have the wrong length".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Ok(if p384 {
                VerifyKey::P384(point)
            } else {
                VerifyKey::P256(point)
            })
        }
        "OKP" if jwk.crv.as_deref() == Some("Ed25519") => {
            let x = need(&jwk.x, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 key has the wrong length".into());
            }
            Ok(VerifyKey::Ed25519(x))
        }
        other => Err(format!("unsupported key type {other}")),
    }
}

/// Parse a JWKS document. Keys that cannot verify signatures (other uses, unknown types) are
/// skipped with a reason each; the document itself must be well-formed.
pub fn parse_jwks(body: &[u8]) -> Result<(KeySet, Vec<String>), String> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
    let mut ks = KeySet::default();
    let mut skipped = Vec::new();
    for (i, v) in set.keys.into_iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(v) {
            Ok(j) => j,
            Err(e) => {
                skipped.push(format!("key {i}: {e}"));
                continue;
            }
        };
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        match jwk_key(&jwk) {
            Ok(key) => {
                let key = Arc::new(key);
                if let Some(kid) = jwk.kid {
                    ks.by_kid.insert(kid, key.clone());
                }
                ks.all.push(key);
            }
            Err(e) => skipped.push(format!(
                "key {}: {e}",
                jwk.kid.as_deref().unwrap_or("(no kid)")
            )),
        }
    }
    Ok((ks, skipped))
}

/// Parse a `public_key` option: a PEM public key (SPKI, or PKCS#1 RSA) or a PEM certificate.
/// Whitespace inside the base64 body is ignored, as APISIX users paste keys on one line.
pub fn parse_public_key_pem(pem: &str) -> Result<VerifyKey, String> {
    let pem = pem.trim();
    let begin = pem
        .find("-----BEGIN ")
        .ok_or("not a PEM block (no -----BEGIN line)")?;
    let rest = &pem[begin + 11..];
    let label_end = rest.find("-----").ok_or("malformed PEM header")?;
    let label = &rest[..label_end];
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    let body = rest.get(body_start..).ok_or("malformed PEM header")?;
    let end = body
        .find(&end_marker)
        .ok_or_else(|| format!("missing {end_marker}"))?;
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD
        .decode(b64)
        .map_err(|e| format!("bad base64 in PEM: {e}"))?;
    match label {
        "PUBLIC KEY" => key_from_spki(&der),
        "RSA PUBLIC KEY" => rsa_from_pkcs1(&der),
        "CERTIFICATE" => key_from_certificate(&der),
        other => Err(format!("unsupported PEM type `{other}`")),
    }
}

/// A minimal DER reader: enough for SubjectPublicKeyInfo and the path to it in a certificate.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// Next TLV: (tag, contents).
    fn next(&mut self) -> Result<(u8, &'a [u8]), String> {
        let d = self.0;
        if d.len() < 2 {
            return Err("truncated DER".into());
        }
        let tag = d[0];
        let (len, hdr) = match d[1] {
            l if l < 0x80 => (l as usize, 2),
            0x81 if d.len() >= 3 => (d[2] as usize, 3),
            0x82 if d.len() >= 4 => (((d[2] as usize) << 8) | d[3] as usize, 4),
            0x83 if d.len() >= 5 => (
                ((d[2] as usize) << 16) | ((d[3] as usize) << 8) | d[4] as usize,
                5,
            ),
            _ => return Err("unsupported DER length".into()),
        };
        if d.len() < hdr + len {
            return Err("truncated DER".into());
        }
        self.0 = &d[hdr + len..];
        Ok((tag, &d[hdr..hdr + len]))
    }

    fn expect(&mut self, tag: u8) -> Result<&'a [u8], String> {
        match self.next()? {
            (t, c) if t == tag => Ok(c),
            (t, _) => Err(format!("unexpected DER tag {t:#x}, wanted {tag:#x}")),
        }
    }
}

const SEQUENCE: u8 = 0x30;
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

fn rsa_from_pkcs1(der: &[u8]) -> Result<VerifyKey, String> {
    let mut seq = Der(Der(der).expect(SEQUENCE)?);
    let n = seq.expect(0x02)?.to_vec();
    let e = seq.expect(0x02)?.to_vec();
    rsa_key(n, e)
}

fn key_from_spki(der: &[u8]) -> Result<VerifyKey, String> {
    let mut spki = Der(Der(der).expect(SEQUENCE)?);
    let mut alg = Der(spki.expect(SEQUENCE)?);
    let oid = alg.expect(0x06)?;
    let bits = spki.expect(0x03)?;
    let key = bits
        .split_first()
        .filter(|(unused, _)| **unused == 0)
        .map(|(_, k)| k)
        .ok_or("malformed key bits")?;
    if oid == OID_RSA {
        rsa_from_pkcs1(key)
    } else if oid == OID_EC {
        let curve = alg.expect(0x06)?;
        match (curve, key.len()) {
            (c, 65) if c == OID_P256 => Ok(VerifyKey::P256(key.to_vec())),
            (c, 97) if c == OID_P384 => Ok(VerifyKey::P384(key.to_vec())),
            _ => Err("unsupported EC curve or point format (P-256/P-384 uncompressed only)".into()),
        }
    } else if oid == OID_ED25519 && key.len() == 32 {
        Ok(VerifyKey::Ed25519(key.to_vec()))
    } else {
        Err("unsupported public key algorithm (RSA, EC P-256/P-384, Ed25519)".into())
    }
}

fn key_from_certificate(der: &[u8]) -> Result<VerifyKey, String> {
    let mut cert = Der(Der(der).expect(SEQUENCE)?);
    let mut tbs = Der(cert.expect(SEQUENCE)?);
    let (mut tag, _) = tbs.next()?;
    if tag == 0xa0 {
        // [0] EXPLICIT version; the serial number follows.
        tag = tbs.next()?.0;
    }
    if tag != 0x02 {
        return Err("malformed certificate (serial number)".into());
    }
    tbs.expect(SEQUENCE)?; // signature algorithm
    tbs.expect(SEQUENCE)?; // issuer
    tbs.expect(SEQUENCE)?; // validity
    tbs.expect(SEQUENCE)?; // subject
    let before = tbs.0;
    let spki = tbs.expect(SEQUENCE)?;
    let whole = &before[..before.len() - tbs.0.len()];
    debug_assert!(whole.ends_with(spki));
    key_from_spki(whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rsa_algorithm_verifies_with_its_own_parsed_key_only() {
        let fixture = |name: &str| {
            std::fs::read(format!(
                "{}/tests/fixtures/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let pair = signature::RsaKeyPair::from_pkcs8(&fixture("rsa1.pk8.der")).unwrap();
        let pem = String::from_utf8(fixture("rsa1.pub.pem")).unwrap();
        let key = parse_public_key_pem(&pem).unwrap();
        let signers: [(Alg, &'static dyn signature::RsaEncoding); 6] = [
            (Alg::RS256, &signature::RSA_PKCS1_SHA256),
            (Alg::RS384, &signature::RSA_PKCS1_SHA384),
            (Alg::RS512, &signature::RSA_PKCS1_SHA512),
            (Alg::PS256, &signature::RSA_PSS_SHA256),
            (Alg::PS384, &signature::RSA_PSS_SHA384),
            (Alg::PS512, &signature::RSA_PSS_SHA512),
        ];
        let rng = ring::rand::SystemRandom::new();
        for (alg, encoding) in signers {
            let mut sig = vec![0; pair.public().modulus_len()];
            pair.sign(encoding, &rng, b"header.payload", &mut sig)
                .unwrap();
            for (other, _) in signers {
                assert_eq!(
                    key.verify(other, b"header.payload", &sig),
                    other == alg,
                    "signed {alg:?}, verified as {other:?}"
                );
            }
            assert!(!key.verify(alg, b"header.payloaD", &sig));
            assert!(!key.verify(Alg::ES256, b"header.payload", &sig));
        }
    }

    #[test]
    fn rsa_keys_of_a_wrong_size_or_exponent_are_skipped_with_the_reason() {
        let b64 = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let modulus = |len: usize| {
            let mut n = vec![0xd5; len];
            n[len - 1] = 0x01;
            b64(&n)
        };
        let jwks = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "small", "n": modulus(128), "e": "AQAB"},
            {"kty": "RSA", "kid": "large", "n": modulus(1025), "e": "AQAB"},
            {"kty": "RSA", "kid": "even-e", "n": modulus(256), "e": b64(&[0x01, 0x00, 0x00])},
            {"kty": "RSA", "kid": "good", "n": modulus(256), "e": "AQAB"},
        ]});
        let (set, skipped) = parse_jwks(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 1, "{skipped:?}");
        assert!(set.get("good").is_some());
        assert!(
            skipped[0].contains("small: RSA key of 1024 bits is too small"),
            "{skipped:?}"
        );
        assert!(
            skipped[1].contains("large: RSA key of 8200 bits is too large"),
            "{skipped:?}"
        );
        assert!(
            skipped[2].starts_with("key even-e: RSA exponent must be odd"),
            "{skipped:?}"
        );
    }

    // A P-256 key pair made at test time, so the test needs no fixture.
    fn ec_pair() -> (ring::signature::EcdsaKeyPair, Vec<u8>) {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let pubkey = kp.public_key().as_ref().to_vec();
        (kp, pubkey)
    }

    #[test]
    fn jwks_ec_key_verifies_and_refuses_other_algs() {
        let (kp, point) = ec_pair();
        let jwks = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "k1", "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}
        ]});
        let (ks, skipped) = parse_jwks(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(ks.len(), 1);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        let key = ks.get("k1").unwrap();
        let sig = kp.sign(&ring::rand::SystemRandom::new(), b"msg").unwrap();
        assert!(key.fits(Alg::ES256) && !key.fits(Alg::RS256) && !key.fits(Alg::ES384));
        assert!(key.verify(Alg::ES256, b"msg", sig.as_ref()));
        assert!(!key.verify(Alg::ES256, b"msh", sig.as_ref()));
    }

    #[test]
    fn spki_pem_with_spaces_like_apisix_examples() {
        let (_, point) = ec_pair();
        // SPKI for P-256: fixed prefix + point.
        let mut der = vec![0x30, 0x59, 0x30, 0x13, 0x06, 0x07];
        der.extend_from_slice(OID_EC);
        der.extend_from_slice(&[0x06, 0x08]);
        der.extend_from_slice(OID_P256);
        der.extend_from_slice(&[0x03, 0x42, 0x00]);
        der.extend_from_slice(&point);
        let b64 = STANDARD.encode(&der);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----        {}  {}        -----END PUBLIC KEY-----",
            &b64[..20],
            &b64[20..]
        );
        assert_eq!(parse_public_key_pem(&pem).unwrap(), VerifyKey::P256(point));
        assert!(parse_public_key_pem("not a key").is_err());
        assert!(parse_public_key_pem("-----BEGIN PUBLIC KEY-----END PUBLIC KEY-----").is_err());
        assert!(parse_public_key_pem("-----BEGIN PUBLIC KEY-----").is_err());
        assert!(
            parse_public_key_pem("-----BEGIN PUBLIC KEY-----AAAA-----END PUBLIC KEY-----").is_err()
        );
    }

    #[test]
    fn x5c_certificate_and_spki_give_the_same_rsa_key() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
        let cert_pem = std::fs::read_to_string(format!("{dir}rsa1.cert.pem")).unwrap();
        let spki_pem = std::fs::read_to_string(format!("{dir}rsa1.pub.pem")).unwrap();
        let from_spki = parse_public_key_pem(&spki_pem).unwrap();
        assert_eq!(parse_public_key_pem(&cert_pem).unwrap(), from_spki);
        let body: String = cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let jwks = serde_json::json!({"keys": [{"kty": "RSA", "kid": "c", "x5c": [body]}]});
        let (ks, skipped) = parse_jwks(jwks.to_string().as_bytes()).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(**ks.get("c").unwrap(), from_spki);
        assert!(matches!(from_spki, VerifyKey::Rsa { ref n, .. } if n.len() == 256));
    }
}
