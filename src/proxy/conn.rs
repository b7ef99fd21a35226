//! One client connection: read a head, route it, forward it, answer; repeat while kept alive.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::Core;
use crate::access_log::{AccessLog, Entry};
use crate::config::route::method_bit;
use crate::error::{AuthKind, ErrorKind, ProxyError};
use crate::http::conn::{read_append, ClientStream, Conn, READ_CHUNK};
use crate::http::h1::{parse_request, BodyKind, RequestHead};
use crate::http::path;
use crate::http::reply::Reply;
use crate::metrics::{node_key, AuthMethod, CoreMetrics, LoginStep, Matched, RouteStats};
use crate::plugins::{self, Ctx, Heads};
use crate::router::{Found, Route};
use crate::upstream::forward::{forward, Env};
use crate::upstream::pool::UpstreamConn;
use crate::upstream::tunnel;

/// Serve one accepted plain-HTTP connection until it closes.
pub async fn serve(stream: TcpStream, peer: SocketAddr, w: Rc<Core>) {
    let _ = stream.set_nodelay(true);
    let first_deadline = Instant::now() + w.limits.header_read_timeout;
    serve_stream(stream, false, first_deadline, peer, w).await
}

/// Serve one connection over `stream` (plain, or a TLS session after its handshake) until it
/// closes. `first_deadline`: when the first request head must be in, counted from accept.
pub async fn serve_stream<S: ClientStream>(
    stream: S,
    tls: bool,
    first_deadline: Instant,
    peer: SocketAddr,
    w: Rc<Core>,
) {
    let mut conn = Conn {
        stream,
        tls,
        first_deadline,
        peer,
        peer_ip: peer.ip().to_canonical().to_string(),
        trusted: w.trusted.iter().any(|c| c.contains(peer.ip())),
        rbuf: Vec::with_capacity(READ_CHUNK),
        pos: 0,
        wbuf: Vec::with_capacity(1024),
        ubuf: Vec::with_capacity(READ_CHUNK),
        headers: Vec::with_capacity(32),
        resp_headers: Vec::with_capacity(32),
        norm_path: Vec::new(),
        request_line: Vec::new(),
        served: 0,
        body_consumed: false,
    };
    let mut state = StateGauge {
        metrics: w.metrics.as_deref(),
        now: None,
    };
    loop {
        // A head already (partly) buffered is being read; an empty buffer waits for one.
        state.set(Some(if conn.pos < conn.rbuf.len() {
            READING
        } else {
            WAITING
        }));
        let head = match read_head(&mut conn, &w).await {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(e) => {
                conn.request_line.clear();
                conn.request_line.push(b'-');
                let rec = Rec::unrouted(&w, Instant::now(), 0);
                answer_error(&mut conn, &w, &rec, &e, false).await;
                break;
            }
        };
        state.set(Some(WRITING));
        let mut tunnel = None;
        let keep_alive = handle(&mut conn, &w, &head, &mut tunnel).await;
        conn.served += 1;
        if let Some((upstream, idle)) = tunnel {
            // A WebSocket upgrade the upstream accepted: the connection is a byte tunnel now.
            let early = conn.rbuf.split_off(conn.pos);
            let relayed =
                tunnel::relay(conn.stream, early, upstream, idle, w.shutdown.wait()).await;
            tracing::debug!(peer = %conn.peer, up = relayed.up, down = relayed.down, end = ?relayed.end, "tunnel closed");
            return;
        }
        if !keep_alive || w.shutdown.started() {
            break;
        }
    }
    if conn.tls {
        // close_notify, so the client can tell the end of an answer from a cut connection
        // (curl and OpenSSL report the latter as an error). Bounded: the peer may not read.
        let _ = monoio::time::timeout(
            CLOSE_NOTIFY_TIMEOUT,
            monoio::io::AsyncWriteRent::shutdown(&mut conn.stream),
        )
        .await;
    }
}

/// How long a TLS connection's close_notify may take to leave.
const CLOSE_NOTIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

const READING: usize = 0;
const WRITING: usize = 1;
const WAITING: usize = 2;

/// The connection's state in its core's gauges (`metrics::CONN_STATES`), left on drop.
struct StateGauge<'a> {
    metrics: Option<&'a CoreMetrics>,
    now: Option<usize>,
}

impl StateGauge<'_> {
    fn set(&mut self, next: Option<usize>) {
        if let Some(m) = self.metrics {
            if let Some(old) = self.now {
                m.states[old].dec();
            }
            if let Some(new) = next {
                m.states[new].inc();
            }
        }
        self.now = next;
    }
}

impl Drop for StateGauge<'_> {
    fn drop(&mut self) {
        self.set(None);
    }
}

/// Route and forward one request, answer errors, log it; returns whether to keep the connection.
/// `tunnel` receives the upstream connection (and the idle limit) of an accepted WebSocket
/// upgrade, which the caller then relays.
async fn handle<S: ClientStream>(
    conn: &mut Conn<S>,
    w: &Core,
    head: &RequestHead,
    tunnel: &mut Option<(UpstreamConn, Duration)>,
) -> bool {
    let started = Instant::now();
    let buf = &conn.rbuf[conn.pos..];
    // The head's bytes may be overwritten while a body streams, so the log keeps its own copy.
    if w.log.borrow().enabled() {
        AccessLog::request_line(
            &mut conn.request_line,
            head.method.get(buf),
            head.path.get(buf),
            head.http10,
        );
    }
    // Answers before routing never read a body.
    let unrouted = Rec::unrouted(w, started, head.head_len as u64);
    if let (BodyKind::Length(n), Some(max)) = (head.body, w.limits.max_body_bytes) {
        if n > max {
            return answer_error(conn, w, &unrouted, &ProxyError::BodyTooLarge, false).await;
        }
    }
    let normalized = match path::normalize(head.path.get(buf), &mut conn.norm_path) {
        Ok(n) => n,
        Err(e) => return answer_error(conn, w, &unrouted, &e, false).await,
    };
    let buf = &conn.rbuf[conn.pos..];
    let routes = w.routes();
    let method = head.method.get(buf);
    let match_path: &[u8] = if normalized {
        &conn.norm_path
    } else {
        head.path.get(buf)
    };
    // The Admin API has its own listener; no route on the data port can expose that path.
    let found = (!is_admin_path(match_path))
        .then(|| {
            routes.table.find(
                match_path,
                head.host.map(|_| head.host_name.get(buf)),
                method_bit(method).unwrap_or(0),
            )
        })
        .flatten();
    let Some(Found {
        idx,
        route,
        uri,
        host,
    }) = found
    else {
        // Without a body the request is fully read, so the connection can stay open.
        let keep = head.body == BodyKind::None && head.keep_alive && !head.http10;
        conn.pos += head.head_len;
        return answer_error(conn, w, &unrouted, &ProxyError::NoRoute, keep).await;
    };
    conn.body_consumed = false;
    let stats = w.metrics.as_deref().map(|m| routes.stats(idx, m));
    let mut rec = Rec {
        route: Some(route),
        stats: stats.map(|(block, _)| block),
        matched: stats.map_or(Matched::default(), |(_, codes)| codes.matched(uri, host)),
        auth: None,
        login: None,
        head_len: head.head_len as u64,
        body_len: match head.body {
            BodyKind::Length(n) => n,
            _ => 0,
        },
        started,
    };
    let mut ctx = Ctx::default();
    if !route.plugins.is_empty() {
        let req = plugins::Request {
            buf: &conn.rbuf[conn.pos..],
            headers: &conn.headers,
            head,
            path: if normalized {
                &conn.norm_path
            } else {
                head.path.get(&conn.rbuf[conn.pos..])
            },
            trusted: conn.trusted,
            tls: conn.tls,
        };
        let decided = plugins::access(&route.plugins, &w.plugins, &req, &mut ctx).await;
        rec.auth = judged(&route.id, &decided, &ctx);
        rec.login = ctx.login_step.and_then(|step| match &decided {
            Ok(_) => Some((step, None)),
            Err(e) => match e.kind() {
                ErrorKind::Auth(k) => Some((step, Some(k))),
                _ => None,
            },
        });
        if !matches!(decided, Ok(None)) {
            // Answered before any body byte was read: only a bodiless request leaves the
            // client's stream in step.
            let keep = head.body == BodyKind::None && head.keep_alive && !head.http10;
            conn.pos += head.head_len;
            return match decided {
                Ok(Some(reply)) => answer(conn, w, &rec, &reply, None, keep).await,
                Err(e) => answer_error(conn, w, &rec, &e, keep).await,
                Ok(None) => unreachable!("matched above"),
            };
        }
    }
    let env = Env {
        limits: &w.limits,
        pool: &w.pool,
        client_may_stay: conn.served + 1 < w.limits.keepalive_requests && !w.shutdown.started(),
        websocket: route.websocket,
        connect_errors: rec.stats.map(|s| &s.connect_errors),
    };
    let edits = Heads {
        plugins: &route.plugins,
        ctx: &ctx,
    };
    match forward(
        conn,
        &env,
        head,
        &route.upstream,
        &routes.balancers[idx],
        &edits,
        normalized,
    )
    .await
    {
        Ok(o) => {
            let upstream = Upstreamed {
                addr: o.upstream,
                time: Some(o.upstream_time),
            };
            finish(conn, w, &rec, o.status, o.bytes, upstream, o.error);
            if let Some(upstream) = o.tunnel {
                *tunnel = Some((upstream, route.upstream.timeouts.read));
            }
            o.keep_alive
        }
        Err(e) => {
            // An upstream failure after the whole request was read leaves the client's stream
            // in step, so the client keeps its connection (as with nginx).
            let keep = conn.body_consumed && head.keep_alive && !head.http10;
            answer_error(conn, w, &rec, &e, keep).await
        }
    }
}

/// What the log and the metrics record about a request besides its answer.
struct Rec<'a> {
    route: Option<&'a Route>,
    /// The route's metrics block on this core (the unrouted one before a route matched).
    stats: Option<&'a RouteStats>,
    /// Which of the route's patterns it matched, as codes of `stats`.
    matched: Matched,
    /// How authentication judged it: the method, and `None` (accepted) or the refusal.
    auth: Option<(AuthMethod, Option<AuthKind>)>,
    /// The login-flow step that answered it, and how it went.
    login: Option<(LoginStep, Option<AuthKind>)>,
    head_len: u64,
    /// The announced body length, counted as received once the body was read whole.
    body_len: u64,
    started: Instant,
}

impl<'a> Rec<'a> {
    fn unrouted(w: &'a Core, started: Instant, head_len: u64) -> Rec<'a> {
        Rec {
            route: None,
            stats: w.metrics.as_deref().map(|m| &*m.unrouted),
            matched: Matched::default(),
            auth: None,
            login: None,
            head_len,
            body_len: 0,
            started,
        }
    }
}

/// The upstream side of an answer, when there was one.
#[derive(Default)]
struct Upstreamed {
    addr: Option<SocketAddr>,
    time: Option<std::time::Duration>,
}

/// The authentication verdict of the access phase, when a plugin judged the request: accepted
/// (an identity or a session), passed without one (`no_token`), or refused for a reason. The
/// login flow's own steps (the redirect to the IdP, the callback, logout) are answers, not
/// verdicts, and are not counted. A refusal is logged here, once, with its reason kind.
fn judged(
    route: &str,
    decided: &Result<Option<Reply>, ProxyError>,
    ctx: &Ctx,
) -> Option<(AuthMethod, Option<AuthKind>)> {
    let method = ctx.auth_method?;
    let outcome = match decided {
        Ok(Some(_)) => return None,
        Ok(None) if ctx.identity.is_some() || ctx.session.is_some() => None,
        Ok(None) => Some(AuthKind::NoToken),
        Err(e) => match e.kind() {
            ErrorKind::Auth(k) => {
                tracing::info!(
                    route,
                    method = method.as_str(),
                    reason = k.as_str(),
                    "authentication refused"
                );
                Some(k)
            }
            _ => return None,
        },
    };
    Some((method, outcome))
}

/// Answer an error (when the client can still be answered) and log it. Returns whether the
/// connection stays open: only when `keep` says the request was read completely, and the
/// answer went out.
async fn answer_error<S: ClientStream>(
    conn: &mut Conn<S>,
    w: &Core,
    rec: &Rec<'_>,
    e: &ProxyError,
    keep: bool,
) -> bool {
    match e.response() {
        Some(reply) => answer(conn, w, rec, &reply, Some(e.label()), keep).await,
        None => {
            finish(conn, w, rec, 0, 0, Upstreamed::default(), Some(e.label()));
            false
        }
    }
}

/// Write a locally made answer and log it; returns whether the connection stays open.
async fn answer<S: ClientStream>(
    conn: &mut Conn<S>,
    w: &Core,
    rec: &Rec<'_>,
    reply: &Reply,
    error: Option<&'static str>,
    keep: bool,
) -> bool {
    let keep = keep && !w.shutdown.started();
    conn.wbuf.clear();
    reply.write(&mut conn.wbuf, !keep);
    let written = conn.wbuf.len() as u64;
    let answered = conn.write_wbuf(w.limits.send_timeout).await.is_ok();
    let bytes = if answered { written } else { 0 };
    finish(
        conn,
        w,
        rec,
        reply.status,
        bytes,
        Upstreamed::default(),
        error,
    );
    keep && answered
}

/// Count and log one answered (or abandoned) request.
fn finish<S>(
    conn: &Conn<S>,
    w: &Core,
    rec: &Rec<'_>,
    status: u16,
    bytes: u64,
    upstream: Upstreamed,
    error: Option<&'static str>,
) {
    let elapsed = rec.started.elapsed();
    // Request bytes received: the head, and a body of announced length once read whole.
    let bytes_in = rec.head_len + if conn.body_consumed { rec.body_len } else { 0 };
    if let Some(s) = rec.stats {
        count(s, rec, status, (bytes_in, bytes), &upstream, elapsed);
        if let Some(m) = &w.metrics {
            m.requests.inc();
        }
    }
    w.log.borrow_mut().record(&Entry {
        peer: conn.peer,
        request_line: &conn.request_line,
        status,
        bytes,
        bytes_in,
        elapsed,
        route: rec.route.map(|r| &*r.id),
        upstream: upstream.addr,
        upstream_time: upstream.time,
        auth: rec.auth.map(|(m, k)| (m, k.map_or("ok", AuthKind::as_str))),
        error,
    });
}

/// The request's counts in its route's block (this core's own).
fn count(
    s: &RouteStats,
    rec: &Rec<'_>,
    status: u16,
    (bytes_in, bytes): (u64, u64),
    upstream: &Upstreamed,
    elapsed: std::time::Duration,
) {
    use crate::metrics::LATENCY_BOUNDS_US as B;
    s.status
        .inc(status, rec.matched, upstream.addr.map(|a| node_key(a.ip())));
    s.ingress.add(bytes_in);
    s.egress.add(bytes);
    let total = elapsed.as_micros() as u64;
    s.latency[0].observe(&B, total);
    // APISIX's `apisix` latency is the request's time less the upstream's.
    let up = upstream.time.map_or(0, |t| t.as_micros() as u64);
    if upstream.time.is_some() {
        s.latency[1].observe(&B, up);
    }
    s.latency[2].observe(&B, total.saturating_sub(up));
    if let Some((method, refused)) = rec.auth {
        s.auth(method, refused);
    }
    if let Some((step, refused)) = rec.login {
        s.login(step, refused);
    }
}

/// Read until a whole request head is buffered. `Ok(None)`: the client closed cleanly, stayed
/// idle past the keep-alive timeout, or the worker is draining.
async fn read_head<S: ClientStream>(
    conn: &mut Conn<S>,
    w: &Core,
) -> Result<Option<RequestHead>, ProxyError> {
    let limits = &w.limits;
    let mut deadline: Option<Instant> = None;
    loop {
        if conn.pos < conn.rbuf.len() {
            let parsed = parse_request(
                &mut conn.rbuf[conn.pos..],
                limits.max_headers,
                &mut conn.headers,
            );
            if let Some(head) = parsed? {
                if head.head_len > limits.max_header_bytes {
                    return Err(ProxyError::HeaderTooLarge);
                }
                return Ok(Some(head));
            }
            if conn.rbuf.len() - conn.pos >= limits.max_header_bytes {
                return Err(ProxyError::HeaderTooLarge);
            }
            deadline.get_or_insert_with(|| {
                if conn.served == 0 {
                    conn.first_deadline
                } else {
                    Instant::now() + limits.header_read_timeout
                }
            });
        }
        conn.compact();
        if conn.rbuf.capacity() == conn.rbuf.len() {
            conn.rbuf.reserve(conn.rbuf.len().max(READ_CHUNK));
        }
        let idle = conn.rbuf.is_empty();
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None if conn.served == 0 => conn
                .first_deadline
                .saturating_duration_since(Instant::now()),
            None => limits.keepalive_timeout,
        };
        let buf = std::mem::take(&mut conn.rbuf);
        let read = monoio::time::timeout(wait, read_append(&mut conn.stream, buf));
        let result = if idle {
            monoio::select! {
                r = read => Some(r),
                _ = w.shutdown.wait() => None,
            }
        } else {
            Some(read.await)
        };
        match result {
            None => return Ok(None),
            Some(Err(_elapsed)) if idle => return Ok(None),
            // A client too slow to send its head is cut off without an answer (slowloris).
            Some(Err(_elapsed)) => {
                return Err(ProxyError::ClientIo(io::ErrorKind::TimedOut.into()))
            }
            Some(Ok((res, buf))) => {
                conn.rbuf = buf;
                match res {
                    Ok(0) if conn.rbuf.is_empty() => return Ok(None),
                    Ok(0) => return Err(ProxyError::ClientIo(io::ErrorKind::UnexpectedEof.into())),
                    Ok(_) => {}
                    Err(e) => return Err(ProxyError::ClientIo(e)),
                }
            }
        }
    }
}

/// `/apisix/admin` or anything under it.
fn is_admin_path(path: &[u8]) -> bool {
    const ADMIN: &[u8] = b"/apisix/admin";
    path.strip_prefix(ADMIN)
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
}
