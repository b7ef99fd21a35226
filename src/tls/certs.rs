//! Certificates and keys from PEM text, parsed and checked once per change.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// One APISIX SSL object, checked: the names it answers for and its certificate chains with
/// their keys (one per key type; an RSA and an ECDSA certificate may share the names).
#[derive(Debug, Clone)]
pub struct SslSpec {
    /// The object's id.
    pub id: String,
    /// Server names, lower case, without a trailing dot; `*.example.com` for one label.
    pub snis: Vec<String>,
    /// Chains with their keys, in the order given.
    pub keys: Vec<Arc<CertifiedKey>>,
}

/// Parse a PEM chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or
/// Ed25519), and check that the key belongs to the leaf. The error says what is wrong in words
/// an operator can act on.
pub fn parse_pair(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cert: not a PEM certificate chain ({e})"))?;
    if chain.is_empty() {
        return Err("cert: no PEM CERTIFICATE block found".into());
    }
    // The leaf must parse as X.509, or every handshake would fail later instead of now.
    webpki_parse(&chain[0])?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("key: not a PEM private key ({e})"))?;
    let signing = super::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| {
            format!(
                "key: unusable private key ({e}); RSA, ECDSA P-256/P-384 or Ed25519 are accepted"
            )
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err("key: does not belong to the first certificate of cert".into())
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(e) => Err(format!("cert: the first certificate is not usable ({e})")),
    }
}

fn webpki_parse(leaf: &CertificateDer<'_>) -> Result<(), String> {
    rustls::server::ParsedCertificate::try_from(leaf)
        .map(|_| ())
        .map_err(|e| format!("cert: the first certificate is not valid X.509 ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn ecdsa_and_rsa_pairs_parse() {
        let (c, k) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(parse_pair(&c, &k).is_ok());
        let (c, k) = pair(&rcgen::PKCS_ED25519);
        assert!(parse_pair(&c, &k).is_ok());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (c, _) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, k) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let e = parse_pair(&c, &k).unwrap_err();
        assert!(e.contains("does not belong"), "{e}");
    }

    #[test]
    fn garbage_is_named() {
        let (c, k) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(parse_pair("hello", &k).unwrap_err().starts_with("cert:"));
        assert!(parse_pair(&c, "hello").unwrap_err().starts_with("key:"));
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(parse_pair(broken, &k).unwrap_err().starts_with("cert:"));
    }
}
