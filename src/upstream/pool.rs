//! Upstream connections and the per-core keep-alive pool.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;

/// A connection to an upstream, plain or TLS.
pub enum UpstreamStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

impl UpstreamStream {
    /// Read into `buf`'s spare capacity.
    pub async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            UpstreamStream::Plain(s) => s.read(buf).await,
            UpstreamStream::Tls(s) => s.read(buf).await,
        }
    }

    /// Write all of `buf`.
    pub async fn write_all<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            UpstreamStream::Plain(s) => s.write_all(buf).await,
            UpstreamStream::Tls(s) => s.write_all(buf).await,
        }
    }
}

/// An upstream connection with its history.
pub struct UpstreamConn {
    /// The stream.
    pub stream: UpstreamStream,
    /// Requests sent on it so far.
    pub requests: u64,
    /// TLS server name it was opened with (a pooled TLS connection is reused only for the same).
    pub tls_name: Option<std::sync::Arc<str>>,
    /// Whether its TLS certificate was verified (a plain connection counts as not verified).
    pub tls_verified: bool,
    /// The TCP socket underneath, for liveness peeks (valid as long as `stream` lives).
    pub fd: std::os::fd::RawFd,
}

struct Idle {
    conn: UpstreamConn,
    expires: Instant,
}

/// Idle upstream connections of one core, keyed by address and TLS-ness.
///
/// Hashed with foldhash, not SipHash: every proxied request takes and puts back a connection,
/// and SipHash over a `SocketAddr`'s several small writes cost ~270 instructions each time
/// (`perf/instructions.sh`), 3 % of a request's user-space work. The keys are configured
/// upstream addresses, not client input, so there is no flooding to defend against.
#[derive(Default)]
pub struct Pool {
    idle: HashMap<(SocketAddr, bool), VecDeque<Idle>, foldhash::fast::RandomState>,
}

impl Pool {
    /// An idle connection to `addr` that has not expired, most recently used first.
    /// A TLS connection is reused only for the same server name and certificate policy.
    pub fn take(
        &mut self,
        addr: SocketAddr,
        tls_name: Option<&str>,
        verified: bool,
    ) -> Option<UpstreamConn> {
        let list = self.idle.get_mut(&(addr, tls_name.is_some()))?;
        let now = Instant::now();
        while let Some(idle) = list.pop_back() {
            // Older entries sit at the front, so one expired entry means the rest are too.
            if now >= idle.expires {
                list.clear();
                return None;
            }
            if idle.conn.tls_name.as_deref() == tls_name && idle.conn.tls_verified == verified {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Keep `conn` for reuse for `idle_for`, dropping the oldest when more than `max` are idle.
    pub fn put(&mut self, addr: SocketAddr, conn: UpstreamConn, max: usize, idle_for: Duration) {
        if max == 0 {
            return;
        }
        let list = self
            .idle
            .entry((addr, conn.tls_name.is_some()))
            .or_default();
        if list.len() >= max {
            list.pop_front();
        }
        list.push_back(Idle {
            conn,
            expires: Instant::now() + idle_for,
        });
    }

    /// Close expired idle connections (the worker's housekeeping calls this).
    pub fn sweep(&mut self) {
        let now = Instant::now();
        self.idle.retain(|_, list| {
            list.retain(|i| now < i.expires);
            !list.is_empty()
        });
    }

    /// Close every idle connection.
    pub fn clear(&mut self) {
        self.idle.clear();
    }
}
