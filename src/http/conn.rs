//! One client connection's socket and buffers, reused across its requests.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split};
use monoio::net::TcpStream;

use super::h1::HeaderIdx;
use crate::error::ProxyError;

/// Initial size of a connection's read buffers; they grow for large heads and bodies.
pub const READ_CHUNK: usize = 8 * 1024;
/// Read size used while streaming bodies.
pub const STREAM_CHUNK: usize = 64 * 1024;

/// What a client connection runs over: a TCP socket, or TLS over one. Code on the request path
/// is generic over it, so the plain path compiles to direct socket calls. `Split`: a WebSocket
/// tunnel reads and writes it at once.
pub trait ClientStream: AsyncReadRent + AsyncWriteRent + Split {}

impl<S: AsyncReadRent + AsyncWriteRent + Split> ClientStream for S {}

/// The state one client connection keeps across its requests.
pub struct Conn<S = TcpStream> {
    /// The client socket (or the TLS session over it).
    pub stream: S,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// When the first request head must be complete: the header timeout counts from accept,
    /// so a TLS handshake spends from the same budget.
    pub first_deadline: std::time::Instant,
    /// Client address.
    pub peer: SocketAddr,
    /// Client IP as text, for `X-Forwarded-For`.
    pub peer_ip: String,
    /// Whether the client's forwarding headers are believed.
    pub trusted: bool,
    /// Bytes read from the client; `rbuf[pos..]` is not consumed yet.
    pub rbuf: Vec<u8>,
    /// Start of unconsumed client bytes.
    pub pos: usize,
    /// Heads being written (upstream request, client response).
    pub wbuf: Vec<u8>,
    /// Bytes read from the upstream.
    pub ubuf: Vec<u8>,
    /// Request header spans, reused.
    pub headers: Vec<HeaderIdx>,
    /// Response header spans, reused.
    pub resp_headers: Vec<HeaderIdx>,
    /// The current request's path in normal form, when it differs from what was sent.
    pub norm_path: Vec<u8>,
    /// `"METHOD /path HTTP/1.x"` of the current request, for the access log.
    pub request_line: Vec<u8>,
    /// Requests answered so far.
    pub served: u64,
    /// Whether the current request's body has been read completely.
    pub body_consumed: bool,
}

impl<S: ClientStream> Conn<S> {
    /// Drop consumed bytes from the front of the read buffer.
    pub fn compact(&mut self) {
        if self.pos > 0 {
            self.rbuf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Write `wbuf` to the client within `timeout`.
    pub async fn write_wbuf(&mut self, timeout: Duration) -> Result<(), ProxyError> {
        let buf = std::mem::take(&mut self.wbuf);
        match monoio::time::timeout(timeout, self.stream.write_all(buf)).await {
            Ok((res, buf)) => {
                self.wbuf = buf;
                res.map(|_| ()).map_err(ProxyError::ClientIo)
            }
            Err(_) => Err(ProxyError::ClientIo(io::ErrorKind::TimedOut.into())),
        }
    }
}

/// Read into the spare capacity of `buf`, after its current contents. (monoio's `Vec` reads
/// start at offset 0; a slice from `len` appends.) The caller makes sure there is spare room.
pub async fn read_append<S: AsyncReadRent>(
    stream: &mut S,
    buf: Vec<u8>,
) -> (io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    let (res, slice) = stream.read(buf.slice_mut(len..)).await;
    (res, slice.into_inner())
}
