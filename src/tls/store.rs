//! The certificate store: names to certificates, compiled once per change and read by every
//! core's handshakes through one `ArcSwap`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::SslSpec;

/// Every signature scheme rustls knows: for asking whether a name has any certificate at all.
pub const ANY_SCHEME: &[rustls::SignatureScheme] = &[
    rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
    rustls::SignatureScheme::ECDSA_NISTP384_SHA384,
    rustls::SignatureScheme::ED25519,
    rustls::SignatureScheme::RSA_PSS_SHA256,
    rustls::SignatureScheme::RSA_PKCS1_SHA256,
];

/// Certificates by server name, ready for handshakes.
#[derive(Default)]
pub struct CertStore {
    /// Exact names (`a.example.com`) to their certificates (one per key type).
    exact: HashMap<Box<str>, Vec<Arc<CertifiedKey>>>,
    /// Wildcards by the part after `*.` (`example.com` for `*.example.com`).
    wildcard: HashMap<Box<str>, Vec<Arc<CertifiedKey>>>,
    /// The name whose certificate answers a handshake with no or an unknown SNI.
    fallback_sni: Option<Box<str>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("fallback_sni", &self.fallback_sni)
            .finish()
    }
}

impl CertStore {
    /// Index `ssls` by name. Two objects naming the same name add up (an RSA and an ECDSA
    /// certificate, say); the first one given wins among keys of one type.
    pub fn compile(ssls: &[SslSpec], fallback_sni: Option<&str>) -> CertStore {
        let mut store = CertStore {
            fallback_sni: fallback_sni.map(|s| normalize(s).into()),
            ..CertStore::default()
        };
        for ssl in ssls {
            for sni in &ssl.snis {
                let name = normalize(sni);
                let (map, key) = match name.strip_prefix("*.") {
                    Some(rest) => (&mut store.wildcard, rest.to_string()),
                    None => (&mut store.exact, name),
                };
                map.entry(key.into())
                    .or_default()
                    .extend(ssl.keys.iter().cloned());
            }
        }
        store
    }

    /// How many names (exact and wildcard) have a certificate.
    pub fn names(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// The certificates for `name`: exact, then the wildcard one label up.
    fn lookup(&self, name: &str) -> Option<&[Arc<CertifiedKey>]> {
        if let Some(found) = self.exact.get(name) {
            return Some(found);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).map(Vec::as_slice)
    }

    /// The certificate for a client hello: by its SNI (exact, one-label wildcard), else by
    /// `fallback_sni`; among those, the first whose key signs with a scheme the client offers
    /// (so an RSA-only client gets the RSA certificate). `None` refuses the handshake.
    pub fn choose(
        &self,
        sni: Option<&str>,
        schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let found = sni
            .and_then(|s| {
                // rustls hands over SNI as sent; names compare case-insensitively.
                if s.bytes().any(|b| b.is_ascii_uppercase()) || s.ends_with('.') {
                    self.lookup(&normalize(s))
                } else {
                    self.lookup(s)
                }
            })
            .or_else(|| self.fallback_sni.as_deref().and_then(|f| self.lookup(f)))?;
        found
            .iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .cloned()
    }
}

fn normalize(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    match lower.strip_suffix('.') {
        Some(s) => s.to_string(),
        None => lower,
    }
}

/// The live certificate store, shared by every core's TLS config. The control plane (config
/// reload, Admin API) replaces it whole; handshakes in flight keep the store they started with.
#[derive(Debug, Default)]
pub struct Certs(ArcSwap<CertStore>);

impl Certs {
    /// A handle starting with `store`.
    pub fn new(store: CertStore) -> Certs {
        Certs(ArcSwap::from_pointee(store))
    }

    /// Make `store` the one new handshakes use; open connections are untouched.
    pub fn publish(&self, store: CertStore) {
        self.0.store(Arc::new(store));
    }

    /// Compile `ssls` (every SSL object now in force, from the config file and the Admin API
    /// together) with `fallback_sni`, and publish the result.
    pub fn publish_ssls(&self, ssls: &[SslSpec], fallback_sni: Option<&str>) {
        self.publish(CertStore::compile(ssls, fallback_sni));
    }

    /// The store in force now.
    pub fn current(&self) -> Arc<CertStore> {
        self.0.load_full()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0
            .load()
            .choose(hello.server_name(), hello.signature_schemes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::SignatureScheme as S;

    fn spec(id: &str, snis: &[&str], alg: &'static rcgen::SignatureAlgorithm) -> SslSpec {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let names: Vec<String> = snis.iter().map(|s| s.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names.clone())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        SslSpec {
            id: id.into(),
            snis: names,
            keys: vec![super::super::parse_pair(&cert.pem(), &key.serialize_pem()).unwrap()],
        }
    }

    const ALL: &[S] = &[
        S::ECDSA_NISTP256_SHA256,
        S::RSA_PSS_SHA256,
        S::RSA_PKCS1_SHA256,
    ];

    #[test]
    fn exact_then_one_label_wildcard_then_fallback_then_nothing() {
        let exact = spec("1", &["a.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let wild = spec("2", &["*.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let fb = spec("3", &["fallback.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let ssls = [exact.clone(), wild.clone(), fb.clone()];
        let same = |a: &Option<Arc<CertifiedKey>>, b: &SslSpec| {
            Arc::ptr_eq(a.as_ref().expect("a certificate"), &b.keys[0])
        };
        let store = CertStore::compile(&ssls, None);
        assert!(same(&store.choose(Some("a.example.com"), ALL), &exact));
        assert!(same(&store.choose(Some("A.Example.COM."), ALL), &exact));
        assert!(same(&store.choose(Some("b.example.com"), ALL), &wild));
        // One label only.
        assert!(store.choose(Some("x.b.example.com"), ALL).is_none());
        assert!(store.choose(Some("example.com"), ALL).is_none());
        assert!(store.choose(None, ALL).is_none());
        let store = CertStore::compile(&ssls, Some("fallback.test"));
        assert!(same(&store.choose(Some("x.b.example.com"), ALL), &fb));
        assert!(same(&store.choose(None, ALL), &fb));
        assert!(same(&store.choose(Some("b.example.com"), ALL), &wild));
    }

    #[test]
    fn the_key_type_follows_what_the_client_can_verify() {
        let ec = spec("ec", &["both.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let rsa = spec("rsa", &["both.test"], &rcgen::PKCS_RSA_SHA256);
        let store = CertStore::compile(&[ec.clone(), rsa.clone()], None);
        let got = store.choose(Some("both.test"), ALL).unwrap();
        assert!(Arc::ptr_eq(&got, &ec.keys[0]));
        let got = store
            .choose(Some("both.test"), &[S::RSA_PSS_SHA256, S::RSA_PKCS1_SHA256])
            .unwrap();
        assert!(Arc::ptr_eq(&got, &rsa.keys[0]));
        assert!(store.choose(Some("both.test"), &[S::ED25519]).is_none());
    }

    #[test]
    fn publishing_replaces_the_store_whole() {
        let certs = Certs::default();
        assert_eq!(certs.current().names(), 0);
        certs.publish_ssls(
            &[spec(
                "1",
                &["a.test", "*.b.test"],
                &rcgen::PKCS_ECDSA_P256_SHA256,
            )],
            None,
        );
        assert_eq!(certs.current().names(), 2);
    }
}
