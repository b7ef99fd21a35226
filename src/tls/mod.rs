//! TLS termination for client connections: certificates parsed once per change, chosen by SNI,
//! and one server config (with its session-ticket keys) shared by every core.
//!
//! This layer knows rustls and PEM, nothing of routes or config files: the config loader and
//! the Admin API both hand it checked [`SslSpec`]s and publish the result through
//! [`Certs::publish`].

pub mod certs;
pub mod store;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;
use rustls::ServerConfig;

pub use certs::{parse_pair, SslSpec};
pub use store::{CertStore, Certs};

/// TLS protocol versions a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    /// TLS 1.2.
    pub tls12: bool,
    /// TLS 1.3.
    pub tls13: bool,
}

impl Default for Protocols {
    fn default() -> Self {
        Protocols {
            tls12: true,
            tls13: true,
        }
    }
}

/// The crypto provider for terminated TLS: ring, the one the upstream client already uses, so
/// the binary carries one implementation of each primitive.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Why the TLS server config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// rustls refused the settings (a protocol set the provider cannot do, no ticket keys).
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The one server config every core accepts with. Certificates are not in it: the resolver
/// reads the current [`CertStore`] from `certs` at each handshake, so a certificate change
/// keeps the ticket keys, and a ticket issued on one core resumes on any other.
pub fn server_config(
    protocols: Protocols,
    certs: Arc<Certs>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if protocols.tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if protocols.tls12 {
        versions.push(&rustls::version::TLS12);
    }
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resumption is by ticket only: a server-side session cache would be a lock shared by the
    // cores (or a per-core cache that misses on every other core).
    config.session_storage = Arc::new(NoServerSessionStorage {});
    // A rotating key pair (a new key every 6 hours, tickets accepted for 12): the same keys
    // on every core, as they live in this one config.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.send_tls13_tickets = 2;
    Ok(Arc::new(config))
}
