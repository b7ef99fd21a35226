//! HTTP/1.1 message heads and body framing, parsed in place.
//!
//! Heads are parsed by `httparse` into byte ranges of the connection's read buffer, so a request
//! costs no allocation: header slots live on the stack during the parse and the results are
//! offsets into a reused vector. Chunked bodies are scanned, not decoded, so they can be
//! forwarded byte for byte; the scanner is strict (CRLF only, bounded sizes), because a framing
//! disagreement between us and the upstream is how requests get smuggled.

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::error::ProxyError;

/// Largest `limits.max_headers`; the parser keeps that many header slots on the stack.
pub const MAX_HEADERS_CEILING: usize = 1000;

/// A span of the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// Start offset.
    pub start: u32,
    /// End offset (exclusive).
    pub end: u32,
}

impl Span {
    /// The span of `s` inside the buffer starting at `base`; `s` must point into it (httparse
    /// hands back a static "" for some empty values, which is mapped to an empty span).
    fn of(base: *const u8, s: &[u8]) -> Span {
        let Some(start) = (s.as_ptr() as usize)
            .checked_sub(base as usize)
            .filter(|_| !s.is_empty())
        else {
            return Span::default();
        };
        Span {
            start: start as u32,
            end: (start + s.len()) as u32,
        }
    }

    /// The bytes of `buf` this span covers.
    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    /// Whether the span is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// Headers the proxy treats specially, recognised once at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    /// `Host`.
    Host,
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Connection`.
    Connection,
    /// Other hop-by-hop headers: `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`.
    HopByHop,
    /// `Expect`.
    Expect,
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// `X-Forwarded-Proto`.
    XForwardedProto,
    /// `X-Forwarded-Host`.
    XForwardedHost,
    /// `Forwarded`.
    Forwarded,
    /// Any other `X-Forwarded-*` (Port, Prefix, …) and `True-Client-IP`: believed only from
    /// trusted peers.
    XForwardedOther,
    /// `X-Real-IP`: believed only from trusted peers, else set to the peer.
    XRealIp,
    /// `Authorization`.
    Authorization,
    /// A special header's name spelled with `_` for `-` (`X_Userinfo`): CGI-style upstreams read
    /// both spellings as one variable, so such a header is never forwarded.
    Alias,
    /// `X-Access-Token`, `X-ID-Token`, `X-Userinfo`, `X-Refresh-Token`: identity claims only the
    /// proxy may make on routes that authenticate.
    Identity,
    /// Anything else.
    Other,
}

fn kind_of(name: &[u8]) -> HeaderKind {
    let kind = kind_exact(name);
    if kind == HeaderKind::Other && name.contains(&b'_') && name.len() <= 32 {
        let mut dashed = [0u8; 32];
        for (d, &s) in dashed.iter_mut().zip(name) {
            *d = if s == b'_' { b'-' } else { s };
        }
        if kind_exact(&dashed[..name.len()]) != HeaderKind::Other {
            return HeaderKind::Alias;
        }
    }
    kind
}

fn kind_exact(name: &[u8]) -> HeaderKind {
    let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        2 if eq("te") => HeaderKind::HopByHop,
        4 if eq("host") => HeaderKind::Host,
        6 if eq("expect") => HeaderKind::Expect,
        7 if eq("upgrade") => HeaderKind::HopByHop,
        7 if eq("trailer") => HeaderKind::HopByHop,
        9 if eq("forwarded") => HeaderKind::Forwarded,
        9 if eq("x-real-ip") => HeaderKind::XRealIp,
        10 if eq("connection") => HeaderKind::Connection,
        10 if eq("keep-alive") => HeaderKind::HopByHop,
        10 if eq("x-userinfo") || eq("x-id-token") => HeaderKind::Identity,
        13 if eq("authorization") => HeaderKind::Authorization,
        14 if eq("x-access-token") => HeaderKind::Identity,
        14 if eq("true-client-ip") => HeaderKind::XForwardedOther,
        15 if eq("x-refresh-token") => HeaderKind::Identity,
        14 if eq("content-length") => HeaderKind::ContentLength,
        15 if eq("x-forwarded-for") => HeaderKind::XForwardedFor,
        16 if eq("proxy-connection") => HeaderKind::HopByHop,
        16 if eq("x-forwarded-host") => HeaderKind::XForwardedHost,
        17 if eq("transfer-encoding") => HeaderKind::TransferEncoding,
        17 if eq("x-forwarded-proto") => HeaderKind::XForwardedProto,
        n if n > 12 && name[..12].eq_ignore_ascii_case(b"x-forwarded-") => {
            HeaderKind::XForwardedOther
        }
        _ => HeaderKind::Other,
    }
}

/// One header as spans of the read buffer.
#[derive(Debug, Clone, Copy)]
pub struct HeaderIdx {
    /// Name span.
    pub name: Span,
    /// Value span.
    pub value: Span,
    /// What the proxy makes of it.
    pub kind: HeaderKind,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

/// Connection-level facts gathered from `Connection` and friends.
#[derive(Debug, Clone, Copy, Default)]
struct ConnFlags {
    close: bool,
    keep_alive: bool,
    /// `Connection` names other headers, which are then hop-by-hop too.
    names_others: bool,
}

fn scan_connection(value: &[u8], flags: &mut ConnFlags) {
    for token in value.split(|&b| b == b',') {
        let t = token.trim_ascii();
        if t.eq_ignore_ascii_case(b"close") {
            flags.close = true;
        } else if t.eq_ignore_ascii_case(b"keep-alive") {
            flags.keep_alive = true;
        } else if !t.is_empty() {
            flags.names_others = true;
        }
    }
}

/// Whether header `name` is listed in any `Connection` header (so must not be forwarded).
pub fn named_in_connection(buf: &[u8], headers: &[HeaderIdx], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.kind == HeaderKind::Connection)
        .any(|h| {
            h.value
                .get(buf)
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
        })
}

fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add((d - b'0') as u64)
    })
}

/// Body framing from Content-Length / Transfer-Encoding headers, per RFC 9112 §6.
fn framing(buf: &[u8], headers: &[HeaderIdx]) -> Result<Option<BodyKind>, &'static str> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    for h in headers {
        match h.kind {
            HeaderKind::ContentLength => {
                // A list of equal values is tolerated; anything else is a smuggling attempt.
                for part in h.value.get(buf).split(|&b| b == b',') {
                    let n =
                        parse_content_length(part.trim_ascii()).ok_or("invalid Content-Length")?;
                    if length.is_some_and(|l| l != n) {
                        return Err("conflicting Content-Length headers");
                    }
                    length = Some(n);
                }
            }
            HeaderKind::TransferEncoding => {
                for coding in h.value.get(buf).split(|&b| b == b',') {
                    let c = coding.trim_ascii();
                    if c.is_empty() {
                        continue;
                    }
                    if chunked {
                        return Err("chunked must be the last transfer coding");
                    }
                    te_seen = true;
                    // Other codings (gzip, …) are refused rather than passed on: the body is
                    // relayed as plain chunked, which would silently drop them.
                    if !c.eq_ignore_ascii_case(b"chunked") {
                        return Err("unsupported Transfer-Encoding");
                    }
                    chunked = true;
                }
            }
            _ => {}
        }
    }
    if te_seen {
        if !chunked {
            return Err("unsupported Transfer-Encoding");
        }
        if length.is_some() {
            return Err("both Transfer-Encoding and Content-Length");
        }
        return Ok(Some(BodyKind::Chunked));
    }
    Ok(length.map(BodyKind::Length))
}

/// A parsed request head; spans refer to the buffer passed to [`parse_request`].
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Bytes taken by the request line and headers, including the final CRLF.
    pub head_len: usize,
    /// Method.
    pub method: Span,
    /// Request target in origin form (path and query), as sent.
    pub target: Span,
    /// The path part of the target (without the query); empty only for an absolute-form target
    /// without a path, which means `/`.
    pub path: Span,
    /// The query, including its `?`, or empty.
    pub query: Span,
    /// HTTP/1.0 (otherwise 1.1).
    pub http10: bool,
    /// The authority the request is for (`Host`, or that of an absolute-form target), in normal
    /// form: lower-case, without a trailing dot, with its port if one was given.
    pub host: Option<Span>,
    /// The host name of [`RequestHead::host`] without the port: what routes match.
    pub host_name: Span,
    /// Body framing.
    pub body: BodyKind,
    /// Whether the client wants the connection kept open.
    pub keep_alive: bool,
    /// `Expect: 100-continue` from an HTTP/1.1 client (1.0 clients never get a 100).
    pub expect_continue: bool,
    /// `Connection` lists header names, which must then be dropped too.
    pub connection_names_others: bool,
    /// HEAD request (its response has no body).
    pub is_head: bool,
}

/// Longest host name (RFC 1035, without the trailing dot).
const MAX_HOST_NAME: usize = 253;
/// Longest label of a host name.
const MAX_LABEL: usize = 63;

/// Check an authority (`Host` value or the authority of an absolute-form target) and put it in
/// normal form in place: lower-case, one trailing dot of the name dropped, an empty port dropped.
/// Returns the spans of the whole normal authority and of the host name alone.
///
/// Routes and upstreams must agree on which host a request is for, so anything an upstream
/// could read differently from us (a doubled port, an empty label, a stray character) is
/// refused instead of being matched loosely.
fn normalize_authority(buf: &mut [u8], at: Span) -> Result<(Span, Span), ProxyError> {
    let bad = |why| Err(ProxyError::BadRequest(why));
    let start = at.start as usize;
    let raw = &mut buf[start..at.end as usize];
    if raw.is_empty() {
        return bad("empty Host");
    }
    let name_end = if raw[0] == b'[' {
        let Some(close) = raw.iter().position(|&b| b == b']') else {
            return bad("invalid Host: unclosed IPv6 literal");
        };
        let literal = &mut raw[1..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return bad("invalid Host: bad IPv6 literal");
        }
        literal.make_ascii_lowercase();
        let text = std::str::from_utf8(literal).unwrap_or("");
        if text.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("invalid Host: bad IPv6 literal");
        }
        close + 1
    } else {
        raw.iter().position(|&b| b == b':').unwrap_or(raw.len())
    };
    let port = &raw[name_end..];
    let port_digits = match port.split_first() {
        None => &port[..0],
        Some((b':', digits)) => digits,
        Some(_) => return bad("invalid Host: junk after the IPv6 literal"),
    };
    let port_len = port_digits.len();
    if port_digits.len() > 5
        || !port_digits.iter().all(u8::is_ascii_digit)
        || port_digits
            .iter()
            .fold(0u32, |n, &d| n * 10 + (d - b'0') as u32)
            > 65535
    {
        return bad("invalid Host: the port is not a decimal port number");
    }
    let mut name_len = name_end;
    if raw[0] != b'[' {
        let mut name = &mut raw[..name_end];
        if name.last() == Some(&b'.') {
            name_len -= 1;
            name = &mut name[..name_len];
        }
        if name.is_empty() || name.len() > MAX_HOST_NAME {
            return bad("invalid Host: the name is empty or longer than 253 bytes");
        }
        for label in name.split(|&b| b == b'.') {
            if label.is_empty() || label.len() > MAX_LABEL {
                return bad("invalid Host: a label is empty or longer than 63 bytes");
            }
            if !label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad("invalid Host: not a host name or IP literal");
            }
        }
        name.make_ascii_lowercase();
    }
    // Close the gap a dropped dot leaves, so the normal authority stays one span.
    let mut len = name_len;
    if port_len > 0 {
        raw.copy_within(name_end..name_end + 1 + port_len, name_len);
        len += 1 + port_len;
    }
    let start = start as u32;
    Ok((
        Span {
            start,
            end: start + len as u32,
        },
        Span {
            start,
            end: start + name_len as u32,
        },
    ))
}

/// Bytes allowed unescaped in a request path: RFC 3986 `pchar` and `/`, plus `[ ] | ^`, which
/// browsers send as they are, and `\`, which path normalisation refuses with its own reason.
const PATH_BYTES: [bool; 256] = byte_set(b"-._~!$&'()*+,;=:@/%[]|^\\");
/// Bytes allowed unescaped in a query: the path's, `?`, and the ones browsers leave unescaped
/// there (`` ` { } ``).
const QUERY_BYTES: [bool; 256] = byte_set(b"-._~!$&'()*+,;=:@/%[]|^\\?`{}");

const fn byte_set(extra: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut b = 0;
    while b < 256 {
        set[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        set[extra[i] as usize] = true;
        i += 1;
    }
    set
}

/// Check the origin-form part of a target (RFC 9112 §3.2.1, RFC 3986 §3.3–3.4). A `#` never
/// belongs in a request: upstreams cut the target there, so `/admin#x` would be routed as
/// itself and served as `/admin`.
fn check_target(path: &[u8], query: &[u8]) -> Result<(), ProxyError> {
    if path.iter().chain(query).any(|&b| b == b'#') {
        return Err(ProxyError::BadRequest("`#` in the request target"));
    }
    if !path.iter().all(|&b| PATH_BYTES[b as usize]) {
        return Err(ProxyError::BadRequest("invalid byte in the request path"));
    }
    if !query.iter().all(|&b| QUERY_BYTES[b as usize]) {
        return Err(ProxyError::BadRequest("invalid byte in the query"));
    }
    Ok(())
}

/// Parse a request head from `buf`. `Ok(None)` means more bytes are needed. The authority is
/// put in normal form in place (see [`RequestHead::host`]).
pub fn parse_request(
    buf: &mut [u8],
    max_headers: usize,
    out: &mut Vec<HeaderIdx>,
) -> Result<Option<RequestHead>, ProxyError> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS_CEILING];
    let slots = &mut slots[..max_headers.min(MAX_HEADERS_CEILING)];
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, slots) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(ProxyError::TooManyHeaders),
        Err(_) => return Err(ProxyError::BadRequest("malformed request head")),
    };
    let head_len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let base = buf.as_ptr();
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(ProxyError::BadRequest("malformed request line"));
    };
    out.clear();
    let mut flags = ConnFlags::default();
    let mut host = None;
    let mut host_header = usize::MAX;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let kind = kind_of(h.name.as_bytes());
        let value = Span::of(base, h.value);
        match kind {
            HeaderKind::Connection => scan_connection(h.value, &mut flags),
            HeaderKind::Host => {
                if host.is_some() {
                    return Err(ProxyError::BadRequest("more than one Host header"));
                }
                host = Some(value);
                host_header = out.len();
            }
            HeaderKind::Expect => expect_continue = h.value.eq_ignore_ascii_case(b"100-continue"),
            _ => {}
        }
        out.push(HeaderIdx {
            name: Span::of(base, h.name.as_bytes()),
            value,
            kind,
        });
    }
    let http10 = version == 0;
    if !http10 && host.is_none() {
        return Err(ProxyError::BadRequest("HTTP/1.1 request without Host"));
    }
    let is_head = method == "HEAD";
    let is_options = method == "OPTIONS";
    let method = Span::of(base, method.as_bytes());
    let target = Span::of(base, target.as_bytes());
    let body = framing(buf, out)
        .map_err(ProxyError::BadRequest)?
        .unwrap_or(BodyKind::None);
    if http10 && body == BodyKind::Chunked {
        return Err(ProxyError::BadRequest(
            "chunked body in an HTTP/1.0 request",
        ));
    }
    let mut origin = target;
    let t = target.get(buf);
    if t.first() != Some(&b'/') {
        // Absolute form (RFC 9112 §3.2.2): the authority replaces Host.
        let lower_scheme = t.len() > 8
            && (t[..7].eq_ignore_ascii_case(b"http://")
                || t[..8].eq_ignore_ascii_case(b"https://"));
        if !lower_scheme {
            if t == b"*" && is_options {
                return Err(ProxyError::BadRequest("OPTIONS * is not proxied"));
            }
            return Err(ProxyError::BadRequest("request target is not a path"));
        }
        let after = if t[4] == b':' { 7 } else { 8 };
        let rest = &t[after..];
        let auth_end = rest
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(rest.len());
        if auth_end == 0 {
            return Err(ProxyError::BadRequest("absolute target without authority"));
        }
        if rest[..auth_end].contains(&b'@') {
            // RFC 9110 §4.2.4: userinfo in an http(s) URI is treated as an error.
            return Err(ProxyError::BadRequest("userinfo in the request target"));
        }
        host_header = usize::MAX;
        let authority_start = target.start + after as u32;
        host = Some(Span {
            start: authority_start,
            end: authority_start + auth_end as u32,
        });
        origin.start = authority_start + auth_end as u32;
    }
    let o = origin.get(buf);
    let qpos = o.iter().position(|&b| b == b'?').unwrap_or(o.len());
    let path = Span {
        start: origin.start,
        end: origin.start + qpos as u32,
    };
    let query = Span {
        start: path.end,
        end: origin.end,
    };
    check_target(path.get(buf), query.get(buf))?;
    let (host, host_name) = match host {
        Some(h) => {
            let (authority, name) = normalize_authority(buf, h)?;
            // The header now reads as its normal form, never the shifted bytes past it.
            if let Some(header) = out.get_mut(host_header) {
                header.value = authority;
            }
            (Some(authority), name)
        }
        None => (None, Span::default()),
    };
    let keep_alive = if http10 {
        flags.keep_alive && !flags.close
    } else {
        !flags.close
    };
    Ok(Some(RequestHead {
        head_len,
        method,
        target: origin,
        path,
        query,
        http10,
        host,
        host_name,
        body,
        keep_alive,
        expect_continue: expect_continue && body != BodyKind::None && !http10,
        connection_names_others: flags.names_others,
        is_head,
    }))
}

/// A parsed response head; spans refer to the buffer passed to [`parse_response`].
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Bytes taken by the status line and headers.
    pub head_len: usize,
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: Span,
    /// Body framing (already accounting for HEAD and status codes without a body).
    pub body: BodyKind,
    /// Whether the upstream keeps the connection open after this response.
    pub keep_alive: bool,
    /// `Connection` lists header names, which must then be dropped too.
    pub connection_names_others: bool,
}

/// Parse a response head to a request (`is_head` if it was HEAD). `Ok(None)` means more bytes.
pub fn parse_response(
    buf: &[u8],
    max_headers: usize,
    is_head: bool,
    out: &mut Vec<HeaderIdx>,
) -> Result<Option<ResponseHead>, ProxyError> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS_CEILING];
    let slots = &mut slots[..max_headers.min(MAX_HEADERS_CEILING)];
    let mut resp = httparse::Response::new(&mut []);
    let status = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, slots)
    {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ProxyError::UpstreamBadResponse("too many headers"))
        }
        Err(_) => return Err(ProxyError::UpstreamBadResponse("malformed response head")),
    };
    let head_len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let base = buf.as_ptr();
    let (Some(code), Some(version)) = (resp.code, resp.version) else {
        return Err(ProxyError::UpstreamBadResponse("malformed status line"));
    };
    // httparse takes any three digits; anything outside RFC 9110's classes is not an answer
    // (and a code under 100 must not be taken for an interim one).
    if !(100..=599).contains(&code) {
        return Err(ProxyError::UpstreamBadResponse("status code out of range"));
    }
    out.clear();
    let mut flags = ConnFlags::default();
    for h in resp.headers.iter() {
        let kind = kind_of(h.name.as_bytes());
        if kind == HeaderKind::Connection {
            scan_connection(h.value, &mut flags);
        }
        out.push(HeaderIdx {
            name: Span::of(base, h.name.as_bytes()),
            value: Span::of(base, h.value),
            kind,
        });
    }
    let framed = framing(buf, out).map_err(ProxyError::UpstreamBadResponse)?;
    let body = if is_head || (100..200).contains(&code) || code == 204 || code == 304 {
        BodyKind::None
    } else {
        framed.unwrap_or(BodyKind::UntilClose)
    };
    let keep_alive = if version == 0 {
        flags.keep_alive && !flags.close
    } else {
        !flags.close
    };
    Ok(Some(ResponseHead {
        head_len,
        status: code,
        reason: Span::of(base, resp.reason.unwrap_or("").as_bytes()),
        body,
        keep_alive: keep_alive && body != BodyKind::UntilClose,
        connection_names_others: flags.names_others,
    }))
}

/// Where a [`ChunkedScanner`] is inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// The framing or a trailer field is malformed.
    Malformed(&'static str),
    /// The trailer section is over what is left of the head limits.
    TrailersTooLarge,
}

/// How much of one buffer a [`ChunkedScanner::scan`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes that belong to the body (all of the buffer unless the body ends in it).
    pub consumed: usize,
    /// Leading bytes to pass on as they are. Once trailer fields begin they are held back (see
    /// [`ChunkedScanner::trailers`]), so this stops short of `consumed`.
    pub raw: usize,
}

/// Finds where a chunked body ends, without changing it, and vets its trailer fields.
///
/// Trailer fields get the checks header fields get, and only ordinary fields are passed on:
/// framing, hop-by-hop, forwarding and identity names (which a lenient upstream could merge
/// into its headers) are dropped. Trailers are rare, so the scanner only allocates for them.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: ChunkState,
    size: u64,
    digits: u8,
    remaining: u64,
    data_total: u64,
    ext_total: u64,
    line_len: usize,
    trailer_budget: usize,
    trailer_lines_left: usize,
    /// Kept trailer lines (each with its CRLF), then the line being read.
    trailers: Vec<u8>,
    line_start: usize,
    has_trailers: bool,
}

/// Longest chunk extension we accept.
const MAX_CHUNK_EXT: usize = 4096;

impl ChunkedScanner {
    /// A scanner at the start of a body whose trailer section may take `max_bytes` bytes in
    /// `max_lines` lines (what the head left of the head limits).
    pub fn new(max_bytes: usize, max_lines: usize) -> Self {
        ChunkedScanner {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            remaining: 0,
            data_total: 0,
            ext_total: 0,
            line_len: 0,
            trailer_budget: max_bytes,
            trailer_lines_left: max_lines,
            trailers: Vec::new(),
            line_start: 0,
            has_trailers: false,
        }
    }

    /// Whether the terminating chunk and trailers have been seen.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Payload bytes seen so far (framing excluded).
    pub fn data_total(&self) -> u64 {
        self.data_total
    }

    /// What the body cap counts: payload plus chunk extensions, so extensions cannot carry
    /// an unbounded body past it.
    pub fn capped_total(&self) -> u64 {
        self.data_total + self.ext_total
    }

    /// Once [`is_done`](Self::is_done): the trailer section to send after the raw bytes (the
    /// kept fields and the final CRLF), or nothing when the body had no trailer fields (the raw
    /// bytes then end with the final CRLF).
    pub fn trailers(&self) -> &[u8] {
        if self.has_trailers && self.is_done() {
            &self.trailers
        } else {
            &[]
        }
    }

    fn trailer_byte(&mut self) -> Result<(), ChunkError> {
        if self.trailer_budget == 0 {
            return Err(ChunkError::TrailersTooLarge);
        }
        self.trailer_budget -= 1;
        Ok(())
    }

    /// Vet the trailer line just completed (CRLF included at the end of `trailers`), and drop
    /// it unless it is an ordinary field.
    fn end_trailer_line(&mut self) -> Result<(), ChunkError> {
        let bad = |why| Err(ChunkError::Malformed(why));
        if self.trailer_lines_left == 0 {
            return Err(ChunkError::TrailersTooLarge);
        }
        self.trailer_lines_left -= 1;
        let line = &self.trailers[self.line_start..self.trailers.len() - 2];
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return bad("trailer field without a colon");
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
            return bad("invalid trailer field name");
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return bad("invalid trailer field value");
        }
        if kind_of(name) != HeaderKind::Other {
            self.trailers.truncate(self.line_start);
        }
        self.line_start = self.trailers.len();
        Ok(())
    }

    /// Scan `buf`. `on_data` receives the ranges of `buf` that are payload, for de-chunking.
    pub fn scan(
        &mut self,
        buf: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<Scanned, ChunkError> {
        let bad = |why| Err(ChunkError::Malformed(why));
        let mut i = 0;
        let mut trailers_from = None;
        while i < buf.len() && self.state != ChunkState::Done {
            let b = buf[i];
            match self.state {
                ChunkState::Size => {
                    let digit = match b {
                        b'0'..=b'9' => Some(b - b'0'),
                        b'a'..=b'f' => Some(b - b'a' + 10),
                        b'A'..=b'F' => Some(b - b'A' + 10),
                        _ => None,
                    };
                    match digit {
                        Some(d) => {
                            if self.digits == 15 {
                                return bad("chunk size too large");
                            }
                            self.size = self.size * 16 + d as u64;
                            self.digits += 1;
                        }
                        None if self.digits == 0 => return bad("invalid chunk size"),
                        None if b == b';' => {
                            self.state = ChunkState::Ext;
                            self.line_len = 0;
                            self.ext_total += 1;
                        }
                        None if b == b'\r' => self.state = ChunkState::SizeLf,
                        None => return bad("invalid chunk size"),
                    }
                    i += 1;
                }
                ChunkState::Ext => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return bad("invalid chunk extension");
                    } else {
                        self.ext_total += 1;
                    }
                    self.line_len += 1;
                    if self.line_len > MAX_CHUNK_EXT {
                        return bad("chunk extension too long");
                    }
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return bad("chunk size line not ended by CRLF");
                    }
                    i += 1;
                    if self.size == 0 {
                        self.state = ChunkState::TrailerStart;
                    } else {
                        self.remaining = self.size;
                        self.state = ChunkState::Data;
                    }
                    self.size = 0;
                    self.digits = 0;
                }
                ChunkState::Data => {
                    let n = ((buf.len() - i) as u64).min(self.remaining) as usize;
                    on_data(i..i + n);
                    i += n;
                    self.remaining -= n as u64;
                    self.data_total += n as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return bad("chunk data not followed by CRLF");
                    }
                    self.state = ChunkState::DataLf;
                    i += 1;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return bad("chunk data not followed by CRLF");
                    }
                    self.state = ChunkState::Size;
                    i += 1;
                }
                ChunkState::TrailerStart => {
                    if b == b'\r' {
                        self.state = ChunkState::FinalLf;
                        i += 1;
                        continue;
                    }
                    self.trailer_byte()?;
                    if b == b' ' || b == b'\t' {
                        // A continuation line (obs-fold) is refused in heads too.
                        return bad("folded trailer field");
                    } else {
                        if !self.has_trailers {
                            self.has_trailers = true;
                            trailers_from = Some(i);
                        }
                        self.state = ChunkState::TrailerLine;
                        self.trailers.push(b);
                    }
                    i += 1;
                }
                ChunkState::TrailerLine => {
                    self.trailer_byte()?;
                    match b {
                        b'\r' => self.state = ChunkState::TrailerLf,
                        b'\n' => return bad("trailer line not ended by CRLF"),
                        0 => return bad("invalid trailer field value"),
                        _ => {}
                    }
                    self.trailers.push(b);
                    i += 1;
                }
                ChunkState::TrailerLf => {
                    self.trailer_byte()?;
                    if b != b'\n' {
                        return bad("trailer line not ended by CRLF");
                    }
                    self.trailers.push(b);
                    self.end_trailer_line()?;
                    self.state = ChunkState::TrailerStart;
                    i += 1;
                }
                ChunkState::FinalLf => {
                    if b != b'\n' {
                        return bad("chunked body not ended by CRLF");
                    }
                    if self.has_trailers {
                        self.trailers.extend_from_slice(b"\r\n");
                    }
                    self.state = ChunkState::Done;
                    i += 1;
                }
                ChunkState::Done => unreachable!("loop condition excludes Done"),
            }
        }
        let raw = match (self.has_trailers, trailers_from) {
            (false, _) => i,
            (true, Some(from)) => from,
            (true, None) => 0,
        };
        Ok(Scanned { consumed: i, raw })
    }
}

/// Write one header line.
pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The values of every header named `name` (any case), in order.
pub fn header_values<'a>(
    buf: &'a [u8],
    headers: &'a [HeaderIdx],
    name: &'a [u8],
) -> impl Iterator<Item = &'a [u8]> + Clone + 'a {
    headers
        .iter()
        .filter(move |h| h.name.get(buf).eq_ignore_ascii_case(name))
        .map(move |h| h.value.get(buf))
}

/// A header value may not contain control characters other than tab.
pub fn valid_header_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// An HTTP token (header names).
pub fn valid_token(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(is_token_byte)
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Option<RequestHead>, ProxyError> {
        parse(s).map(|(h, _)| h)
    }

    /// The parse result and the buffer after in-place normalisation.
    fn parse(s: &str) -> Result<(Option<RequestHead>, Vec<u8>), ProxyError> {
        let mut h = Vec::new();
        let mut buf = s.as_bytes().to_vec();
        let head = parse_request(&mut buf, 100, &mut h)?;
        Ok((head, buf))
    }

    fn host_of(host: &str) -> Result<(String, String), ProxyError> {
        let (h, buf) = parse(&format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"))?;
        let h = h.unwrap();
        let text = |s: Span| String::from_utf8(s.get(&buf).to_vec()).unwrap();
        Ok((text(h.host.unwrap()), text(h.host_name)))
    }

    #[test]
    fn hosts_are_normalised_once_in_the_parser() {
        for (sent, authority, name) in [
            ("Example.com", "example.com", "example.com"),
            (
                "SECURE.example.com.",
                "secure.example.com",
                "secure.example.com",
            ),
            (
                "secure.example.com.:8080",
                "secure.example.com:8080",
                "secure.example.com",
            ),
            ("a_b.example:80", "a_b.example:80", "a_b.example"),
            ("h:", "h", "h"),
            ("10.0.0.1:81", "10.0.0.1:81", "10.0.0.1"),
            ("[::1]", "[::1]", "[::1]"),
            ("[FE80::A]:443", "[fe80::a]:443", "[fe80::a]"),
        ] {
            let (a, n) = host_of(sent).unwrap();
            assert_eq!((a.as_str(), n.as_str()), (authority, name), "{sent}");
        }
        let long_label = "a".repeat(64);
        let long_name = format!("{}.com", ["abcdefghi"; 26].join("."));
        for bad in [
            "host:80:80",
            "host:8o",
            "host:123456",
            "host:65536",
            "a..b",
            ".a",
            "a b",
            "a,b",
            "a/b",
            "a@b",
            "[::1",
            "[::g]",
            "[::1]x",
            "[]",
            "..",
            ".",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(
                matches!(host_of(bad), Err(ProxyError::BadRequest(_))),
                "{bad:?} was accepted"
            );
        }
        // 253 bytes: the longest name.
        assert!(host_of(&format!("{}.com", ["abcdefghi"; 25].join("."))).is_ok());
        assert!(matches!(
            req("GET / HTTP/1.1\r\nHost:\r\n\r\n"),
            Err(ProxyError::BadRequest(_))
        ));
    }

    #[test]
    fn request_targets_follow_the_uri_grammar() {
        for bad in [
            "/admin#x",
            "/admin?x#y",
            "/a\"b",
            "/a<b",
            "/a{b",
            "/a`b",
            "/a\x7fb",
            "/caf\u{e9}",
            "http://h#x/p",
            "http://user@h/p",
            "http://user:pw@h/p",
        ] {
            let r = req(&format!("GET {bad} HTTP/1.1\r\nHost: h\r\n\r\n"));
            assert!(
                matches!(r, Err(ProxyError::BadRequest(_))),
                "{bad:?} was accepted"
            );
        }
        for good in [
            "/a/b;c=d/e:f@g!$&'()*+,=~._-",
            "/a[1]|x^y",
            "/p?q=a[]&r={x}|`y`^z/?k",
            "/%2e%41",
        ] {
            let r = req(&format!("GET {good} HTTP/1.1\r\nHost: h\r\n\r\n"));
            assert!(matches!(r, Ok(Some(_))), "{good:?}: {r:?}");
        }
        // An absolute-form target with an empty path means `/` (path empty, query kept).
        let (h, buf) = parse("GET http://H.example.?q=1 HTTP/1.1\r\nHost: other\r\n\r\n").unwrap();
        let h = h.unwrap();
        assert!(h.path.get(&buf).is_empty());
        assert_eq!(h.query.get(&buf), b"?q=1");
        assert_eq!(h.host.unwrap().get(&buf), b"h.example");
    }

    #[test]
    fn http10_clients_never_expect_continue() {
        let h = req("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.expect_continue);
        let h =
            req("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.expect_continue);
    }

    #[test]
    fn simple_get() {
        let s = "GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com\r\nConnection: keep-alive\r\n\r\nNEXT";
        let h = req(s).unwrap().unwrap();
        assert_eq!(h.head_len, s.len() - 4);
        assert_eq!(h.path.get(s.as_bytes()), b"/a/b");
        assert_eq!(h.query.get(s.as_bytes()), b"?x=1");
        let (_, buf) = parse(s).unwrap();
        assert_eq!(h.host.unwrap().get(&buf), b"example.com");
        assert!(h.keep_alive && !h.http10);
        assert_eq!(h.body, BodyKind::None);
    }

    #[test]
    fn partial_and_errors() {
        assert!(req("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert!(matches!(
            req("GET / HTTP/1.1\r\n\r\n"),
            Err(ProxyError::BadRequest(_))
        ));
        assert!(matches!(
            req("GARBAGE\r\n\r\n"),
            Err(ProxyError::BadRequest(_))
        ));
        assert!(matches!(
            req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(ProxyError::BadRequest(_))
        ));
        assert!(matches!(req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"), Err(ProxyError::BadRequest(_))));
        assert!(matches!(
            req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(ProxyError::BadRequest(_))
        ));
        assert!(matches!(
            req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"),
            Err(ProxyError::BadRequest(_))
        ));
        let mut h = Vec::new();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X: y\r\n".repeat(10));
        assert!(matches!(
            parse_request(&mut many.into_bytes(), 5, &mut h),
            Err(ProxyError::TooManyHeaders)
        ));
    }

    #[test]
    fn absolute_form_and_http10() {
        let s = "GET http://h.example:81/p?q HTTP/1.0\r\n\r\n";
        let h = req(s).unwrap().unwrap();
        assert_eq!(h.host.unwrap().get(s.as_bytes()), b"h.example:81");
        assert_eq!(h.target.get(s.as_bytes()), b"/p?q");
        assert!(h.http10 && !h.keep_alive);
        let h = req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
    }

    #[test]
    fn response_framing() {
        let mut h = Vec::new();
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            100,
            false,
            &mut h,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, BodyKind::Length(5));
        assert!(r.keep_alive);
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            100,
            true,
            &mut h,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, BodyKind::None);
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", 100, false, &mut h)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, BodyKind::UntilClose);
        assert!(!r.keep_alive);
        let r = parse_response(b"HTTP/1.0 304 Not Modified\r\n\r\n", 100, false, &mut h)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, BodyKind::None);
        assert!(!r.keep_alive);
        // No reason phrase: httparse's empty string does not point into the buffer.
        let r = parse_response(
            b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
            100,
            false,
            &mut h,
        )
        .unwrap()
        .unwrap();
        assert!(r.reason.is_empty());
        assert_eq!(r.body, BodyKind::Length(2));
    }

    /// Scan `body` in two pieces split at `split`; returns the bytes passed on and the payload.
    fn scan_split(
        s: &mut ChunkedScanner,
        body: &[u8],
        split: usize,
    ) -> Result<(Vec<u8>, Vec<u8>, usize), ChunkError> {
        let (mut out, mut data, mut consumed) = (Vec::new(), Vec::new(), 0);
        for part in [&body[..split], &body[split..]] {
            if s.is_done() {
                break;
            }
            let r = s.scan(part, |r| data.extend_from_slice(&part[r]))?;
            out.extend_from_slice(&part[..r.raw]);
            consumed += r.consumed;
        }
        out.extend_from_slice(s.trailers());
        Ok((out, data, consumed))
    }

    #[test]
    fn chunked_scanner_finds_the_end_across_splits() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\n\r\nNEXT";
        for split in 0..=body.len() - 4 {
            let mut s = ChunkedScanner::new(1024, 10);
            let (out, data, consumed) = scan_split(&mut s, body, split).unwrap();
            assert!(s.is_done());
            assert_eq!(consumed, body.len() - 4);
            assert_eq!(out, &body[..body.len() - 4]);
            assert_eq!(data, b"hello0123456789abcdef");
            assert_eq!(s.data_total(), 21);
            assert_eq!(s.capped_total(), 21 + 6);
        }
    }

    #[test]
    fn trailers_are_vetted_and_only_ordinary_fields_pass() {
        let body = b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-Userinfo: forged\r\nx_access_token: f\r\nTransfer-Encoding: chunked\r\nConnection: close\r\nHost: evil\r\nContent-Length: 9\r\nAuthorization: Bearer x\r\nX-Forwarded-For: 6.6.6.6\r\nEtag: \"e\"\r\n\r\nNEXT";
        for split in 0..=body.len() - 4 {
            let mut s = ChunkedScanner::new(1024, 20);
            let (out, _, consumed) = scan_split(&mut s, body, split).unwrap();
            assert_eq!(consumed, body.len() - 4);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "3\r\nabc\r\n0\r\nX-Checksum: 1\r\nEtag: \"e\"\r\n\r\n",
                "split at {split}"
            );
        }
        for bad in [
            &b"0\r\nNoColon\r\n\r\n"[..],
            b"0\r\nX-A: 1\r\n folded\r\n\r\n",
            b"0\r\n\tX: 1\r\n\r\n",
            b"0\r\nX A: 1\r\n\r\n",
            b"0\r\n: v\r\n\r\n",
            b"0\r\nX-A: a\x00b\r\n\r\n",
            b"0\r\nX-A: a\x01b\r\n\r\n",
            b"0\r\nX-A: 1\n\r\n",
        ] {
            let r = ChunkedScanner::new(1024, 10).scan(bad, |_| {});
            assert!(
                matches!(r, Err(ChunkError::Malformed(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn trailers_count_against_the_head_limits() {
        let body = b"0\r\nX-A: 1\r\nX-B: 2\r\n\r\n";
        assert!(ChunkedScanner::new(16, 2).scan(body, |_| {}).is_ok());
        assert_eq!(
            ChunkedScanner::new(15, 2).scan(body, |_| {}),
            Err(ChunkError::TrailersTooLarge)
        );
        assert_eq!(
            ChunkedScanner::new(1024, 1).scan(body, |_| {}),
            Err(ChunkError::TrailersTooLarge)
        );
        // No trailers need no budget at all.
        assert!(ChunkedScanner::new(0, 0)
            .scan(b"0\r\n\r\n", |_| {})
            .is_ok_and(|r| r.raw == 5));
        // Many small lines stop at the budget, however they arrive.
        let mut s = ChunkedScanner::new(32 * 1024, 100);
        assert!(s.scan(b"0\r\n", |_| {}).is_ok());
        let line = b"X-Pad: 0123456789\r\n";
        let mut refused = false;
        for _ in 0..10_000 {
            if s.scan(line, |_| {}).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }

    #[test]
    fn chunk_extensions_count_against_the_body_cap() {
        let mut s = ChunkedScanner::new(0, 0);
        let chunk = format!("1;{}\r\nx\r\n", "e".repeat(4000));
        for _ in 0..10 {
            s.scan(chunk.as_bytes(), |_| {}).unwrap();
        }
        assert_eq!(s.data_total(), 10);
        assert_eq!(s.capped_total(), 10 + 10 * 4001);
    }

    #[test]
    fn chunked_scanner_is_strict() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"x\r\n",
            b"5\r\nhelloX",
            b"1234567890abcdef0\r\n",
            b"0\r\n\r\r",
        ] {
            assert!(
                ChunkedScanner::new(1024, 10).scan(bad, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn status_codes_outside_the_classes_are_refused() {
        let mut h = Vec::new();
        for code in ["000", "099", "600", "999"] {
            let head = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            assert!(
                matches!(
                    parse_response(head.as_bytes(), 100, false, &mut h),
                    Err(ProxyError::UpstreamBadResponse(_))
                ),
                "{code}"
            );
        }
        assert!(parse_response(b"HTTP/1.1 599 X\r\n\r\n", 100, false, &mut h).is_ok());
    }
}
