//! Forward one request to an upstream and relay its answer, streaming bodies both ways.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use super::balancer::Wrr;
use super::pool::Pool;
use super::pool::{UpstreamConn, UpstreamStream};
use super::request::{itoa_u64, write_request_head, ClientFacts, Edits};
use super::tls;
use super::{Node, Upstream};
use crate::error::ProxyError;
use crate::http::conn::{read_append, ClientStream, Conn, STREAM_CHUNK};
use crate::http::h1::{
    header_values, named_in_connection, parse_response, BodyKind, ChunkError, ChunkedScanner,
    HeaderIdx, HeaderKind, RequestHead, ResponseHead,
};
use crate::http::Limits;
use crate::metrics::{node_key, Keyed, Matched};

/// Request bodies up to this size that arrived with the head are sent in the same write, and
/// such a request can be replayed on a fresh connection when a pooled one turns out dead.
const INLINE_BODY: usize = 64 * 1024;

/// How a forwarded request ended, for the access log and the connection loop.
pub struct Outcome {
    /// Status sent to the client.
    pub status: u16,
    /// Bytes written to the client.
    pub bytes: u64,
    /// Whether the client connection stays open.
    pub keep_alive: bool,
    /// The upstream address used.
    pub upstream: Option<SocketAddr>,
    /// Why the answer was cut short, if it was (the client got a partial response).
    pub error: Option<&'static str>,
    /// After a 101 to a WebSocket upgrade: the upstream connection, now the other end of a
    /// byte tunnel the caller relays (see [`super::tunnel`]).
    pub tunnel: Option<UpstreamConn>,
    /// From picking a node to the end of the upstream's answer.
    pub upstream_time: Duration,
}

fn timed_out(what: &'static str) -> ProxyError {
    ProxyError::UpstreamTimeout(what)
}

/// A request body's framing error: malformed is a 400, trailers past the head limits a 431.
fn request_chunk_error(e: ChunkError) -> ProxyError {
    match e {
        ChunkError::Malformed(why) => ProxyError::BadRequest(why),
        ChunkError::TrailersTooLarge => ProxyError::HeaderTooLarge,
    }
}

fn response_chunk_error(e: ChunkError) -> ProxyError {
    match e {
        ChunkError::Malformed(why) => ProxyError::UpstreamBadResponse(why),
        ChunkError::TrailersTooLarge => {
            ProxyError::UpstreamBadResponse("response trailers over the head limits")
        }
    }
}

/// RFC 9110 §9.2.2's idempotent methods: only these are sent again after a pooled connection
/// failed, as the upstream may have acted on the first copy. Methods are case-sensitive.
fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// What forwarding needs from the worker it runs on.
pub struct Env<'a> {
    /// Request limits and timeouts.
    pub limits: &'a Limits,
    /// This core's idle upstream connections.
    pub pool: &'a RefCell<Pool>,
    /// Whether the client connection may stay open after this answer (the worker is not
    /// draining and the connection is under its request budget).
    pub client_may_stay: bool,
    /// Whether the route forwards WebSocket upgrades (`enable_websocket`).
    pub websocket: bool,
    /// Where failed connects are counted by node, when metrics are on.
    pub connect_errors: Option<&'a Keyed<8>>,
}

/// The `Upgrade` value of a WebSocket handshake: a bodiless HTTP/1.1 GET with `Upgrade:
/// websocket`, `upgrade` named in `Connection`.
fn websocket_upgrade<'b>(
    buf: &'b [u8],
    head: &RequestHead,
    headers: &'b [HeaderIdx],
) -> Option<&'b [u8]> {
    if head.http10 || head.body != BodyKind::None || head.method.get(buf) != b"GET" {
        return None;
    }
    let value = header_values(buf, headers, b"upgrade").next()?;
    let websocket = value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"));
    (websocket && named_in_connection(buf, headers, b"upgrade")).then_some(value)
}

/// Forward `head` (parsed at `conn.pos`) to `up`, with the route's plugins' `edits`; on `Err`
/// nothing was sent to the client.
pub async fn forward<S: ClientStream, E: Edits>(
    conn: &mut Conn<S>,
    w: &Env<'_>,
    head: &RequestHead,
    up: &Upstream,
    balancer: &RefCell<Wrr>,
    edits: &E,
    normalized_path: bool,
) -> Result<Outcome, ProxyError> {
    let t = up.timeouts;
    let body_start = conn.pos + head.head_len;
    let avail = conn.rbuf.len() - body_start;
    // Trailer fields share the head's limits with the head before them.
    let mut scanner = ChunkedScanner::new(
        w.limits.max_header_bytes.saturating_sub(head.head_len),
        w.limits.max_headers.saturating_sub(conn.headers.len()),
    );
    // `in_buf` body bytes arrived with the head; the first `in_raw` of them are sent as they are.
    let (in_buf, in_raw, complete) = match head.body {
        BodyKind::None | BodyKind::UntilClose => (0, 0, true),
        BodyKind::Length(n) => {
            let k = (avail as u64).min(n) as usize;
            (k, k, k as u64 == n)
        }
        BodyKind::Chunked => {
            let s = scanner
                .scan(&conn.rbuf[body_start..], |_| {})
                .map_err(request_chunk_error)?;
            check_body_cap(w, &scanner)?;
            (s.consumed, s.raw, scanner.is_done())
        }
    };
    let replayable = complete && in_buf <= INLINE_BODY;
    let idempotent = is_idempotent(head.method.get(&conn.rbuf[conn.pos..]));
    let started = Instant::now();

    let (node, addr, mut upc, mut reused) = match acquire(w, up, balancer, replayable).await {
        Ok(a) => a,
        Err(e) => {
            // The whole request is in hand: mark it read, so the client keeps its connection.
            if replayable {
                conn.pos = body_start + in_buf;
                conn.body_consumed = true;
            }
            return Err(e);
        }
    };
    let upgrade = if w.websocket {
        websocket_upgrade(&conn.rbuf[conn.pos..], head, &conn.headers)
    } else {
        None
    };
    let facts = ClientFacts {
        peer_ip: &conn.peer_ip,
        trusted: conn.trusted,
        path: normalized_path.then_some(&conn.norm_path[..]),
        tls: conn.tls,
        upgrade,
    };
    let upgrading = upgrade.is_some();
    write_request_head(
        &mut conn.wbuf,
        &conn.rbuf[conn.pos..],
        head,
        &conn.headers,
        &up.pass_host,
        node,
        &facts,
        edits,
    );
    if replayable {
        conn.wbuf
            .extend_from_slice(&conn.rbuf[body_start..body_start + in_raw]);
        conn.wbuf.extend_from_slice(scanner.trailers());
        conn.pos = body_start + in_buf;
        // The request is read whole: an upstream failure from here on leaves the client's
        // stream in step, so it keeps its connection.
        conn.body_consumed = true;
    }

    let resp = loop {
        let attempt = async {
            send_wbuf(&mut upc, &mut conn.wbuf, t.send).await?;
            if !replayable {
                stream_request_body(
                    conn,
                    w,
                    &mut upc,
                    head,
                    body_start,
                    (in_buf, in_raw),
                    &mut scanner,
                    t.send,
                )
                .await?;
            }
            read_response_head(&mut upc, conn, w.limits, head.is_head, upgrading, t.read).await
        };
        match attempt.await {
            Ok(resp) => break resp,
            // A pooled connection the upstream closed meanwhile: the request never reached it.
            Err(ProxyError::UpstreamIo(e)) if reused && replayable && idempotent => {
                tracing::debug!(%addr, error = %e, "pooled upstream connection was dead; retrying on a new one");
                upc = connect(addr, node, up)
                    .await
                    .inspect_err(|_| count_connect_error(w, addr))?;
                reused = false;
            }
            Err(e) => return Err(e),
        }
    };
    let mut progress = Progress::default();
    if resp.status == 101 {
        // Only an upgrade request reads a 101 as final (read_response_head).
        let sent = switch_protocols(
            conn,
            head,
            &resp,
            edits,
            w.limits.send_timeout,
            &mut progress,
        )
        .await;
        return Ok(Outcome {
            status: 101,
            bytes: progress.bytes,
            keep_alive: false,
            upstream: Some(addr),
            error: sent.as_ref().err().map(ProxyError::label),
            tunnel: sent.is_ok().then_some(upc),
            upstream_time: started.elapsed(),
        });
    }
    let client_keep = head.keep_alive
        && resp.body != BodyKind::UntilClose
        && !(resp.body == BodyKind::Chunked && head.http10)
        && w.client_may_stay;
    let relayed = relay_response(
        conn,
        w,
        head,
        &resp,
        &mut upc,
        t.read,
        (client_keep, edits),
        &mut progress,
    )
    .await;
    let mut outcome = Outcome {
        status: resp.status,
        bytes: progress.bytes,
        keep_alive: client_keep,
        upstream: Some(addr),
        error: None,
        tunnel: None,
        upstream_time: started.elapsed(),
    };
    match relayed {
        Ok(upstream_clean) => {
            upc.requests += 1;
            if upstream_clean && resp.keep_alive && upc.requests < up.keepalive_requests {
                w.pool
                    .borrow_mut()
                    .put(addr, upc, up.keepalive_size, up.keepalive_idle);
            }
            Ok(outcome)
        }
        Err(e) if progress.head_sent => {
            outcome.keep_alive = false;
            outcome.error = Some(e.label());
            Ok(outcome)
        }
        Err(e) => Err(e),
    }
}

fn check_body_cap(w: &Env<'_>, scanner: &ChunkedScanner) -> Result<(), ProxyError> {
    match w.limits.max_body_bytes {
        Some(max) if scanner.capped_total() > max => Err(ProxyError::BodyTooLarge),
        _ => Ok(()),
    }
}

/// Pick a node and a connection to it: a pooled one when the request allows, else a new one,
/// moving on to other nodes (up to `retries`) when connecting fails.
async fn acquire<'u>(
    w: &Env<'_>,
    up: &'u Upstream,
    balancer: &RefCell<Wrr>,
    may_pool: bool,
) -> Result<(&'u Node, SocketAddr, UpstreamConn, bool), ProxyError> {
    let tries = 1 + up.retries.min(up.nodes.len().saturating_sub(1) as u32);
    let mut last = ProxyError::UpstreamUnresolved;
    for _ in 0..tries {
        let node = &up.nodes[balancer
            .borrow_mut()
            .next(up.nodes.iter().map(|n| n.weight))];
        let Some(addr) = node.addr else { continue };
        if may_pool {
            let tls_name = up.tls.as_ref().map(|_| &*node.host);
            let verified = up.tls.is_some() && up.tls_verify;
            let pooled = w.pool.borrow_mut().take(addr, tls_name, verified);
            // Only a connection seen open and silent right now is reused: bytes an upstream sent
            // while idle must never be read as the next client's response.
            if let Some(c) = pooled.filter(still_open) {
                return Ok((node, addr, c, true));
            }
        }
        match connect(addr, node, up).await {
            Ok(c) => return Ok((node, addr, c, false)),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "upstream connect failed");
                count_connect_error(w, addr);
                last = e;
            }
        }
    }
    Err(last)
}

fn count_connect_error(w: &Env<'_>, addr: SocketAddr) {
    if let Some(k) = w.connect_errors {
        k.inc(0, Matched::default(), Some(node_key(addr.ip())));
    }
}

/// Whether a pooled connection is still open, without blocking (one `recv` peek on the TCP
/// socket; for TLS a pending close_notify shows as readable bytes, which also rules it out).
fn still_open(c: &UpstreamConn) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a valid local buffer on a socket `c` owns.
    let n = unsafe {
        libc::recv(
            c.fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && matches!(io::Error::last_os_error().kind(), io::ErrorKind::WouldBlock)
}

/// Open a new connection to `addr` (TLS when the upstream is https).
async fn connect(addr: SocketAddr, node: &Node, up: &Upstream) -> Result<UpstreamConn, ProxyError> {
    let stream =
        match monoio::time::timeout(up.timeouts.connect, TcpStream::connect_addr(addr)).await {
            Err(_) => return Err(timed_out("connect")),
            Ok(Err(e)) => return Err(ProxyError::UpstreamConnect(e)),
            Ok(Ok(s)) => s,
        };
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let Some(config) = &up.tls else {
        return Ok(UpstreamConn {
            stream: UpstreamStream::Plain(stream),
            requests: 0,
            tls_name: None,
            tls_verified: false,
            fd,
        });
    };
    let name = tls::server_name(&node.host).ok_or_else(|| {
        ProxyError::UpstreamTls(io::Error::new(
            io::ErrorKind::InvalidInput,
            "host is not a valid TLS server name",
        ))
    })?;
    let connector = monoio_rustls::TlsConnector::from(config.clone());
    match monoio::time::timeout(up.timeouts.connect, connector.connect(name, stream)).await {
        Err(_) => Err(timed_out("TLS handshake")),
        Ok(Err(e)) => Err(ProxyError::UpstreamTls(e.into())),
        Ok(Ok(s)) => Ok(UpstreamConn {
            stream: UpstreamStream::Tls(Box::new(s)),
            requests: 0,
            tls_name: Some(node.host.clone()),
            tls_verified: up.tls_verify,
            fd,
        }),
    }
}

async fn send_wbuf(
    upc: &mut UpstreamConn,
    wbuf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), ProxyError> {
    let buf = std::mem::take(wbuf);
    match monoio::time::timeout(timeout, upc.stream.write_all(buf)).await {
        Ok((res, buf)) => {
            *wbuf = buf;
            res.map(|_| ()).map_err(ProxyError::UpstreamIo)
        }
        Err(_) => Err(timed_out("send")),
    }
}

/// Send `rbuf[range]` upstream without copying it.
async fn send_range(
    upc: &mut UpstreamConn,
    rbuf: &mut Vec<u8>,
    range: std::ops::Range<usize>,
    timeout: Duration,
) -> Result<(), ProxyError> {
    let buf = std::mem::take(rbuf);
    match monoio::time::timeout(timeout, upc.stream.write_all(buf.slice(range))).await {
        Ok((res, slice)) => {
            *rbuf = slice.into_inner();
            res.map(|_| ()).map_err(ProxyError::UpstreamIo)
        }
        Err(_) => Err(timed_out("send")),
    }
}

/// Stream the rest of a request body that did not arrive with its head; `(in_buf, in_raw)`:
/// the body bytes that came with the head, and how many of them go out as they are.
#[allow(clippy::too_many_arguments)]
async fn stream_request_body<S: ClientStream>(
    conn: &mut Conn<S>,
    w: &Env<'_>,
    upc: &mut UpstreamConn,
    head: &RequestHead,
    body_start: usize,
    (in_buf, in_raw): (usize, usize),
    scanner: &mut ChunkedScanner,
    send_timeout: Duration,
) -> Result<(), ProxyError> {
    if in_raw > 0 {
        send_range(
            upc,
            &mut conn.rbuf,
            body_start..body_start + in_raw,
            send_timeout,
        )
        .await?;
    }
    conn.pos = body_start + in_buf;
    let mut remaining = match head.body {
        BodyKind::Length(n) => n - in_buf as u64,
        _ => 0,
    };
    let done = |remaining: u64, scanner: &ChunkedScanner| match head.body {
        BodyKind::Chunked => scanner.is_done(),
        _ => remaining == 0,
    };
    if done(remaining, scanner) {
        send_trailers(conn, upc, scanner, send_timeout).await?;
        conn.body_consumed = true;
        return Ok(());
    }
    if head.expect_continue {
        conn.wbuf.clear();
        conn.wbuf
            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        conn.write_wbuf(w.limits.send_timeout).await?;
    }
    while !done(remaining, scanner) {
        conn.compact();
        if conn.rbuf.capacity() - conn.rbuf.len() < STREAM_CHUNK / 2 {
            conn.rbuf.reserve(STREAM_CHUNK);
        }
        let buf = std::mem::take(&mut conn.rbuf);
        let read = read_append(&mut conn.stream, buf);
        let n = match monoio::time::timeout(w.limits.body_read_timeout, read).await {
            Err(_) => return Err(ProxyError::ClientIo(io::ErrorKind::TimedOut.into())),
            Ok((res, buf)) => {
                conn.rbuf = buf;
                res.map_err(ProxyError::ClientIo)?
            }
        };
        if n == 0 {
            return Err(ProxyError::ClientIo(io::ErrorKind::UnexpectedEof.into()));
        }
        let (k, raw) = match head.body {
            BodyKind::Chunked => {
                let s = scanner
                    .scan(&conn.rbuf, |_| {})
                    .map_err(request_chunk_error)?;
                check_body_cap(w, scanner)?;
                (s.consumed, s.raw)
            }
            _ => {
                let k = (conn.rbuf.len() as u64).min(remaining);
                remaining -= k;
                (k as usize, k as usize)
            }
        };
        if raw > 0 {
            send_range(upc, &mut conn.rbuf, 0..raw, send_timeout).await?;
        }
        conn.pos = k;
    }
    send_trailers(conn, upc, scanner, send_timeout).await?;
    conn.body_consumed = true;
    Ok(())
}

/// Send the vetted trailer section a finished chunked body held back, if it had one.
async fn send_trailers<S: ClientStream>(
    conn: &mut Conn<S>,
    upc: &mut UpstreamConn,
    scanner: &ChunkedScanner,
    send_timeout: Duration,
) -> Result<(), ProxyError> {
    if scanner.trailers().is_empty() {
        return Ok(());
    }
    conn.wbuf.clear();
    conn.wbuf.extend_from_slice(scanner.trailers());
    send_wbuf(upc, &mut conn.wbuf, send_timeout).await
}

/// Read the upstream's response head into `conn.ubuf`, skipping interim (1xx) responses.
async fn read_response_head<S: ClientStream>(
    upc: &mut UpstreamConn,
    conn: &mut Conn<S>,
    limits: &Limits,
    is_head: bool,
    upgrade: bool,
    timeout: Duration,
) -> Result<ResponseHead, ProxyError> {
    let max_bytes = limits.max_response_header_bytes;
    let mut interim = 0;
    conn.ubuf.clear();
    loop {
        if !conn.ubuf.is_empty() {
            let parsed = parse_response(
                &conn.ubuf,
                limits.max_response_headers,
                is_head,
                &mut conn.resp_headers,
            )?;
            match parsed {
                Some(h) if h.head_len > max_bytes => {
                    return Err(ProxyError::UpstreamBadResponse("response head too large"))
                }
                Some(h) if h.status == 101 && upgrade => return Ok(h),
                Some(h) if h.status == 101 => {
                    return Err(ProxyError::UpstreamBadResponse(
                        "unexpected protocol switch",
                    ))
                }
                Some(h) if h.status < 200 => {
                    // Interim heads share the limit, so endless 1xx answers end too.
                    interim += h.head_len;
                    if interim > max_bytes {
                        return Err(ProxyError::UpstreamBadResponse(
                            "too many interim responses",
                        ));
                    }
                    conn.ubuf.drain(..h.head_len);
                    continue;
                }
                Some(h) => return Ok(h),
                None if conn.ubuf.len() >= max_bytes => {
                    return Err(ProxyError::UpstreamBadResponse("response head too large"))
                }
                None => {}
            }
        }
        if conn.ubuf.capacity() - conn.ubuf.len() < 1024 {
            conn.ubuf.reserve(conn.ubuf.capacity().max(4096));
        }
        let had = conn.ubuf.len();
        let buf = std::mem::take(&mut conn.ubuf);
        match monoio::time::timeout(timeout, upc.stream.read(buf.slice_mut(had..))).await {
            Err(_) => return Err(timed_out("read")),
            Ok((res, slice)) => {
                conn.ubuf = slice.into_inner();
                match res {
                    Ok(0) if had == 0 => {
                        return Err(ProxyError::UpstreamIo(io::ErrorKind::UnexpectedEof.into()))
                    }
                    Ok(0) => {
                        return Err(ProxyError::UpstreamBadResponse(
                            "connection closed inside the response head",
                        ))
                    }
                    Ok(_) => {}
                    Err(e) if had == 0 => return Err(ProxyError::UpstreamIo(e)),
                    Err(_) => {
                        return Err(ProxyError::UpstreamBadResponse(
                            "connection failed inside the response head",
                        ))
                    }
                }
            }
        }
    }
}

/// What has reached the client so far.
#[derive(Default)]
struct Progress {
    head_sent: bool,
    bytes: u64,
}

fn write_response_head<S: ClientStream, E: Edits>(
    conn: &mut Conn<S>,
    head: &RequestHead,
    resp: &ResponseHead,
    client_keep: bool,
    edits: &E,
) {
    let out = &mut conn.wbuf;
    let buf = &conn.ubuf;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa_u64(resp.status as u64, &mut [0u8; 20]));
    out.push(b' ');
    out.extend_from_slice(resp.reason.get(buf));
    out.extend_from_slice(b"\r\n");
    for h in &conn.resp_headers {
        let name = h.name.get(buf);
        match h.kind {
            HeaderKind::Connection | HeaderKind::HopByHop | HeaderKind::TransferEncoding => {
                continue
            }
            HeaderKind::Other
                if resp.connection_names_others
                    && named_in_connection(buf, &conn.resp_headers, name) =>
            {
                continue
            }
            _ => {}
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(buf));
        out.extend_from_slice(b"\r\n");
    }
    if resp.body == BodyKind::Chunked && !head.http10 {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    edits.append_response(out);
    if !client_keep {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if head.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Answer the client's upgrade with the upstream's 101 (its `Upgrade` protocol restored, as
/// the hop-by-hop filter drops it), followed by whatever the upstream sent after it.
async fn switch_protocols<S: ClientStream, E: Edits>(
    conn: &mut Conn<S>,
    head: &RequestHead,
    resp: &ResponseHead,
    edits: &E,
    send_timeout: Duration,
    progress: &mut Progress,
) -> Result<(), ProxyError> {
    write_response_head(conn, head, resp, true, edits);
    let out = &mut conn.wbuf;
    out.truncate(out.len() - 2);
    out.extend_from_slice(b"Connection: Upgrade\r\n");
    let protocol = header_values(&conn.ubuf, &conn.resp_headers, b"upgrade")
        .next()
        .unwrap_or(b"websocket");
    crate::http::h1::write_header(out, b"Upgrade", protocol);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&conn.ubuf[resp.head_len..]);
    write_client(conn, send_timeout, progress).await
}

async fn write_client<S: ClientStream>(
    conn: &mut Conn<S>,
    send_timeout: Duration,
    progress: &mut Progress,
) -> Result<(), ProxyError> {
    let n = conn.wbuf.len() as u64;
    conn.write_wbuf(send_timeout).await?;
    progress.head_sent = true;
    progress.bytes += n;
    Ok(())
}

async fn read_upstream<S: ClientStream>(
    upc: &mut UpstreamConn,
    conn: &mut Conn<S>,
    timeout: Duration,
) -> Result<usize, ProxyError> {
    conn.ubuf.clear();
    if conn.ubuf.capacity() < STREAM_CHUNK {
        conn.ubuf.reserve(STREAM_CHUNK);
    }
    let buf = std::mem::take(&mut conn.ubuf);
    match monoio::time::timeout(timeout, upc.stream.read(buf)).await {
        Err(_) => Err(timed_out("read")),
        Ok((res, buf)) => {
            conn.ubuf = buf;
            res.map_err(ProxyError::UpstreamIo)
        }
    }
}

async fn send_ubuf_range<S: ClientStream>(
    conn: &mut Conn<S>,
    k: usize,
    send_timeout: Duration,
    progress: &mut Progress,
) -> Result<(), ProxyError> {
    let buf = std::mem::take(&mut conn.ubuf);
    match monoio::time::timeout(send_timeout, conn.stream.write_all(buf.slice(0..k))).await {
        Ok((res, slice)) => {
            conn.ubuf = slice.into_inner();
            res.map_err(ProxyError::ClientIo)?;
            progress.bytes += k as u64;
            Ok(())
        }
        Err(_) => Err(ProxyError::ClientIo(io::ErrorKind::TimedOut.into())),
    }
}

/// Relay the response whose head is in `conn.ubuf`. Returns whether the upstream connection
/// ended exactly at the end of the response (and so may be reused).
#[allow(clippy::too_many_arguments)]
async fn relay_response<S: ClientStream, E: Edits>(
    conn: &mut Conn<S>,
    w: &Env<'_>,
    head: &RequestHead,
    resp: &ResponseHead,
    upc: &mut UpstreamConn,
    read_timeout: Duration,
    (client_keep, edits): (bool, &E),
    progress: &mut Progress,
) -> Result<bool, ProxyError> {
    let send_timeout = w.limits.send_timeout;
    write_response_head(conn, head, resp, client_keep, edits);
    let body_at = resp.head_len;
    let avail = conn.ubuf.len() - body_at;
    match resp.body {
        BodyKind::None => {
            write_client(conn, send_timeout, progress).await?;
            Ok(avail == 0)
        }
        BodyKind::Length(n) => {
            let k = (avail as u64).min(n) as usize;
            conn.wbuf
                .extend_from_slice(&conn.ubuf[body_at..body_at + k]);
            write_client(conn, send_timeout, progress).await?;
            let mut clean = avail as u64 <= n;
            let mut remaining = n - k as u64;
            while remaining > 0 {
                let got = read_upstream(upc, conn, read_timeout).await?;
                if got == 0 {
                    return Err(ProxyError::UpstreamBadResponse(
                        "connection closed inside the body",
                    ));
                }
                let k = (got as u64).min(remaining) as usize;
                clean = got == k;
                remaining -= k as u64;
                send_ubuf_range(conn, k, send_timeout, progress).await?;
            }
            Ok(clean)
        }
        BodyKind::Chunked => {
            let dechunk = head.http10;
            let limits = &w.limits;
            let mut scanner = ChunkedScanner::new(
                limits
                    .max_response_header_bytes
                    .saturating_sub(resp.head_len),
                limits
                    .max_response_headers
                    .saturating_sub(conn.resp_headers.len()),
            );
            let (wbuf, ubuf) = (&mut conn.wbuf, &conn.ubuf[body_at..]);
            let s = scanner
                .scan(ubuf, |r| {
                    if dechunk {
                        wbuf.extend_from_slice(&ubuf[r])
                    }
                })
                .map_err(response_chunk_error)?;
            if !dechunk {
                wbuf.extend_from_slice(&ubuf[..s.raw]);
                wbuf.extend_from_slice(scanner.trailers());
            }
            write_client(conn, send_timeout, progress).await?;
            let mut clean = s.consumed == avail;
            while !scanner.is_done() {
                let got = read_upstream(upc, conn, read_timeout).await?;
                if got == 0 {
                    return Err(ProxyError::UpstreamBadResponse(
                        "connection closed inside the body",
                    ));
                }
                if dechunk {
                    let (wbuf, ubuf) = (&mut conn.wbuf, &conn.ubuf);
                    wbuf.clear();
                    let s = scanner
                        .scan(ubuf, |r| wbuf.extend_from_slice(&ubuf[r]))
                        .map_err(response_chunk_error)?;
                    clean = s.consumed == got;
                    write_client(conn, send_timeout, progress).await?;
                } else {
                    let s = scanner
                        .scan(&conn.ubuf, |_| {})
                        .map_err(response_chunk_error)?;
                    clean = s.consumed == got;
                    if s.raw > 0 {
                        send_ubuf_range(conn, s.raw, send_timeout, progress).await?;
                    }
                    if !scanner.trailers().is_empty() {
                        conn.wbuf.clear();
                        conn.wbuf.extend_from_slice(scanner.trailers());
                        write_client(conn, send_timeout, progress).await?;
                    }
                }
            }
            Ok(clean)
        }
        BodyKind::UntilClose => {
            conn.wbuf.extend_from_slice(&conn.ubuf[body_at..]);
            write_client(conn, send_timeout, progress).await?;
            loop {
                let got = read_upstream(upc, conn, read_timeout).await?;
                if got == 0 {
                    return Ok(false);
                }
                send_ubuf_range(conn, got, send_timeout, progress).await?;
            }
        }
    }
}
