//! The byte tunnel after a protocol switch (WebSocket): both directions relayed at once, each
//! through one buffer that is read into and written out again as it is (owned-buffer io_uring
//! operations, no copy in between), so no message is ever held whole.

use std::cell::Cell;
use std::future::Future;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split, Splitable};

use super::pool::{UpstreamConn, UpstreamStream};
use crate::http::conn::STREAM_CHUNK;

/// How long the half-close (FIN, or TLS close_notify) toward the side still open may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed (or failed) first.
    Client,
    /// The upstream closed (or failed) first.
    Upstream,
    /// Nothing moved either way for the idle limit.
    Idle,
    /// The worker is stopping.
    Stopping,
}

/// Bytes relayed each way, and why the tunnel ended.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    /// Client to upstream.
    pub up: u64,
    /// Upstream to client.
    pub down: u64,
    /// Why it ended.
    pub end: End,
}

/// Relay between `client` and `upstream` until either side closes, nothing moves for `idle`,
/// or `stop` completes. `early`: client bytes that arrived behind the upgrade request, sent
/// upstream first.
pub async fn relay<C, F>(
    client: C,
    early: Vec<u8>,
    upstream: UpstreamConn,
    idle: Duration,
    stop: F,
) -> Relayed
where
    C: AsyncReadRent + AsyncWriteRent + Split,
    F: Future<Output = ()>,
{
    match upstream.stream {
        UpstreamStream::Plain(s) => relay_pair(client, early, s, idle, stop).await,
        UpstreamStream::Tls(s) => relay_pair(client, early, *s, idle, stop).await,
    }
}

async fn relay_pair<C, U, F>(
    client: C,
    early: Vec<u8>,
    upstream: U,
    idle: Duration,
    stop: F,
) -> Relayed
where
    C: AsyncReadRent + AsyncWriteRent + Split,
    U: AsyncReadRent + AsyncWriteRent + Split,
    F: Future<Output = ()>,
{
    let (mut client_r, mut client_w) = client.into_split();
    let (mut up_r, mut up_w) = upstream.into_split();
    let last = Cell::new(Instant::now());
    let (up_bytes, down_bytes) = (Cell::new(0u64), Cell::new(0u64));
    if !early.is_empty() {
        let n = early.len() as u64;
        let (res, _) = up_w.write_all(early).await;
        if res.is_err() {
            return Relayed {
                up: 0,
                down: 0,
                end: End::Upstream,
            };
        }
        up_bytes.set(n);
    }
    let to_upstream = copy(&mut client_r, &mut up_w, &last, &up_bytes);
    let to_client = copy(&mut up_r, &mut client_w, &last, &down_bytes);
    let watchdog = async {
        loop {
            let due = last.get() + idle;
            if Instant::now() >= due {
                return;
            }
            monoio::time::sleep_until(due.into()).await;
        }
    };
    let end = monoio::select! {
        _ = to_upstream => End::Client,
        _ = to_client => End::Upstream,
        _ = watchdog => End::Idle,
        _ = stop => End::Stopping,
    };
    // Whichever side is still open learns that the other one left.
    let _ = monoio::time::timeout(SHUTDOWN_TIMEOUT, async {
        let _ = client_w.shutdown().await;
        let _ = up_w.shutdown().await;
    })
    .await;
    Relayed {
        up: up_bytes.get(),
        down: down_bytes.get(),
        end,
    }
}

/// Copy `from` to `to` until `from` ends or either fails, one buffer in flight at a time (the
/// next read waits for the write: back-pressure reaches the sender).
async fn copy<R: AsyncReadRent, W: AsyncWriteRent>(
    from: &mut R,
    to: &mut W,
    last: &Cell<Instant>,
    bytes: &Cell<u64>,
) {
    let mut buf = Vec::with_capacity(STREAM_CHUNK);
    loop {
        buf.clear();
        let (res, b) = from.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                last.set(Instant::now());
                bytes.set(bytes.get() + n as u64);
            }
        }
        let (res, b) = to.write_all(buf).await;
        buf = b;
        if res.is_err() {
            return;
        }
        last.set(Instant::now());
    }
}
