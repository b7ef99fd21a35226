//! HTTP/1 at the bottom of the stack: the codec and its limits, connection buffers, request
//! paths in normal form. Nothing here knows about routes, plugins or upstreams.

pub mod conn;
pub mod form;
pub mod h1;
pub mod path;
pub mod reply;

use std::time::Duration;

/// Request limits and timeouts applied by every worker.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request line plus headers, in bytes; over it → 431.
    pub max_header_bytes: usize,
    /// Header lines; over it → 431.
    pub max_headers: usize,
    /// Upstream status line plus headers, in bytes (with its trailers); over it → 502.
    pub max_response_header_bytes: usize,
    /// Upstream header lines (with its trailer lines); over it → 502.
    pub max_response_headers: usize,
    /// Time for a client to send a whole request head once it started (and for the first one).
    pub header_read_timeout: Duration,
    /// Longest wait between two reads of a request body.
    pub body_read_timeout: Duration,
    /// Longest wait for a client to accept response bytes.
    pub send_timeout: Duration,
    /// Idle time allowed between two requests on one connection.
    pub keepalive_timeout: Duration,
    /// Requests served on one client connection before it is closed.
    pub keepalive_requests: u64,
    /// Largest request body; `None` means no cap.
    pub max_body_bytes: Option<u64>,
    /// Open client connections per worker before new ones are closed at once.
    pub max_connections: usize,
    /// How long a graceful stop waits for in-flight requests.
    pub shutdown_timeout: Duration,
}
