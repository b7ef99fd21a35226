//! TLS for the harness: certificates made with rcgen, a client stream that speaks TLS to the
//! proxy's `tls.listen`, and the scheme switch that runs a test file over HTTPS.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use serde_json::{json, Value};

/// Set to `https` to run a test file's proxy clients over TLS (tests/run.sh does, for the core
/// suites): [`super::Proxy::start`] then adds a TLS listener and `Proxy::client` speaks TLS.
pub const SCHEME_ENV: &str = "PORTCULLIS_TEST_SCHEME";

/// Whether this run drives the proxy over HTTPS.
pub fn https_mode() -> bool {
    match std::env::var(SCHEME_ENV).as_deref() {
        Ok("https") => true,
        Ok("http") | Err(_) => false,
        Ok(other) => panic!("{SCHEME_ENV}={other}: want http or https"),
    }
}

/// `http` or `https`: what the proxy reports upstream as the client's scheme in this run.
pub fn scheme() -> &'static str {
    if https_mode() {
        "https"
    } else {
        "http"
    }
}

/// A certificate and its key, as PEM text, plus the leaf's DER to compare with what a
/// handshake presented.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
    pub der: Vec<u8>,
}

/// Which key a generated certificate has.
#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    EcdsaP256,
    Rsa2048,
}

/// A self-signed certificate for `names`.
pub fn cert_for(names: &[&str], kind: KeyKind) -> Pem {
    let alg = match kind {
        KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyKind::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
    };
    let key = rcgen::KeyPair::generate_for(alg).expect("generate key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("certificate params");
    let cert = params.self_signed(&key).expect("self-sign");
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// The certificate the HTTPS mode of the core suites serves (for `localhost`), made once.
pub fn harness_cert() -> &'static Pem {
    static CERT: OnceLock<Pem> = OnceLock::new();
    CERT.get_or_init(|| cert_for(&["localhost", "test.local"], KeyKind::EcdsaP256))
}

/// An SSL object for the config's `ssls`.
pub fn ssl(id: &str, snis: &[&str], pem: &Pem) -> Value {
    json!({"id": id, "snis": snis, "cert": pem.cert, "key": pem.key})
}

/// Accepts any certificate: the tests check which one was presented by comparing DER.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that trusts any certificate and offers ALPN http/1.1.
pub fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(c)
        })
        .clone()
}

/// A client socket: plain, or TLS over it. Derefs to the TCP socket for socket options.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// Connect to 127.0.0.1:`port` and complete a TLS handshake sending `sni` (`None`: no SNI).
    pub fn connect_tls(port: u16, sni: Option<&str>) -> io::Result<Stream> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let tcp = TcpStream::connect_timeout(&addr, super::IO_TIMEOUT)?;
        tcp.set_read_timeout(Some(super::IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(super::IO_TIMEOUT))?;
        let name = match sni {
            Some(n) => ServerName::try_from(n.to_string()).expect("a DNS name"),
            // An IP literal makes rustls send no SNI.
            None => ServerName::from(std::net::IpAddr::from([127, 0, 0, 1])),
        };
        let conn = ClientConnection::new(client_config(), name).map_err(io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(Stream::Tls(Box::new(s)))
    }

    /// The certificate the server presented (TLS only).
    pub fn peer_leaf(&self) -> Option<Vec<u8>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl Deref for Stream {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            // A peer that closes without close_notify ends the stream like a TCP close here,
            // as the tests read "closed" either way.
            Stream::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}
