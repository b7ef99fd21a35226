//! Forwarding to upstreams: balancing, per-core connection pools, TLS, streaming.

pub mod balancer;
pub mod forward;
pub mod pool;
pub mod request;
pub mod tls;
