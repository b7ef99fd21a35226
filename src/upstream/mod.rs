//! Forwarding to upstreams: balancing, per-core connection pools, TLS, streaming. This layer
//! sees an upstream and a request head, never a route or a plugin: what routes and plugins
//! change in the forwarded request reaches it through [`request::Edits`].

pub mod balancer;
pub mod forward;
pub mod pool;
pub mod request;
pub mod tls;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Upstream URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
}

/// Which Host header the upstream sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassHost {
    /// The client's Host.
    Pass,
    /// The chosen node's `host:port`.
    Node,
    /// A fixed value.
    Rewrite(String),
}

/// Connect, send and read timeouts toward an upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// TCP (and TLS) connection setup.
    pub connect: Duration,
    /// Between two successful writes.
    pub send: Duration,
    /// Between two successful reads.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        // APISIX's (and nginx's) defaults.
        Timeouts {
            connect: Duration::from_secs(60),
            send: Duration::from_secs(60),
            read: Duration::from_secs(60),
        }
    }
}

/// One upstream server with its resolved address.
#[derive(Debug, Clone)]
pub struct Node {
    /// The address to connect to; `None` while the name does not resolve.
    pub addr: Option<SocketAddr>,
    /// `host:port` as written, the Host sent with `pass_host: node`.
    pub host_port: Arc<str>,
    /// The host as written, for TLS server names.
    pub host: Arc<str>,
    /// Relative share of requests.
    pub weight: u32,
}

/// A compiled upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Servers.
    pub nodes: Vec<Node>,
    /// TLS client settings when the scheme (after `proxy-rewrite`) is https.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Whether those settings verify the certificate.
    pub tls_verify: bool,
    /// Host header policy.
    pub pass_host: PassHost,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Further nodes to try when connecting fails.
    pub retries: u32,
    /// Idle connections kept per address on each core.
    pub keepalive_size: usize,
    /// How long idle connections are kept.
    pub keepalive_idle: std::time::Duration,
    /// Requests per upstream connection.
    pub keepalive_requests: u64,
}
