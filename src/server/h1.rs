//! HTTP/1.1 message heads and body framing, parsed in place.
//!
//! Heads are parsed by `httparse` into byte ranges of the connection's read buffer, so a request
//! costs no allocation: header slots live on the stack during the parse and the results are
//! offsets into a reused vector. Chunked bodies are scanned, not decoded, so they can be
//! forwarded byte for byte; the scanner is strict (CRLF only, bounded sizes), because a framing
//! disagreement between us and the upstream is how requests get smuggled.

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::config::MAX_HEADERS_CEILING;
use crate::error::ProxyError;

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
    /// Request target as sent.
    pub target: Span,
    /// The path part of the target (origin form, without the query).
    pub path: Span,
    /// The query, including its `?`, or empty.
    pub query: Span,
    /// HTTP/1.0 (otherwise 1.1).
    pub http10: bool,
    /// `Host` value (or the authority of an absolute-form target).
    pub host: Option<Span>,
    /// Body framing.
    pub body: BodyKind,
    /// Whether the client wants the connection kept open.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `Connection` lists header names, which must then be dropped too.
    pub connection_names_others: bool,
    /// HEAD request (its response has no body).
    pub is_head: bool,
}

/// Parse a request head from `buf`. `Ok(None)` means more bytes are needed.
pub fn parse_request(
    buf: &[u8],
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
    let body = framing(buf, out)
        .map_err(ProxyError::BadRequest)?
        .unwrap_or(BodyKind::None);
    if http10 && body == BodyKind::Chunked {
        return Err(ProxyError::BadRequest(
            "chunked body in an HTTP/1.0 request",
        ));
    }
    let mut origin = Span::of(base, target.as_bytes());
    let t = target.as_bytes();
    if t.first() != Some(&b'/') {
        // Absolute form (RFC 9112 §3.2.2): the authority replaces Host.
        let lower_scheme = t.len() > 8
            && (t[..7].eq_ignore_ascii_case(b"http://")
                || t[..8].eq_ignore_ascii_case(b"https://"));
        if !lower_scheme {
            if t == b"*" && method == "OPTIONS" {
                return Err(ProxyError::BadRequest("OPTIONS * is not proxied"));
            }
            return Err(ProxyError::BadRequest("request target is not a path"));
        }
        let after = if t[4] == b':' { 7 } else { 8 };
        let rest = &t[after..];
        let auth_end = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        if auth_end == 0 {
            return Err(ProxyError::BadRequest("absolute target without authority"));
        }
        host = Some(Span::of(base, &rest[..auth_end]));
        origin = Span::of(base, &rest[auth_end..]);
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
    let keep_alive = if http10 {
        flags.keep_alive && !flags.close
    } else {
        !flags.close
    };
    Ok(Some(RequestHead {
        head_len,
        method: Span::of(base, method.as_bytes()),
        target: origin,
        path,
        query,
        http10,
        host,
        body,
        keep_alive,
        expect_continue: expect_continue && body != BodyKind::None,
        connection_names_others: flags.names_others,
        is_head: method == "HEAD",
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

/// Finds where a chunked body ends, without changing it.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: ChunkState,
    size: u64,
    digits: u8,
    remaining: u64,
    data_total: u64,
    line_len: usize,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

/// Longest chunk extension or trailer line we accept.
const MAX_CHUNK_LINE: usize = 4096;

impl ChunkedScanner {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        ChunkedScanner {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            remaining: 0,
            data_total: 0,
            line_len: 0,
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

    /// Scan `buf`; returns how many bytes belong to the body (all of `buf` unless it ends).
    /// `on_data` receives the ranges of `buf` that are payload, for de-chunking.
    pub fn scan(
        &mut self,
        buf: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<usize, &'static str> {
        let mut i = 0;
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
                                return Err("chunk size too large");
                            }
                            self.size = self.size * 16 + d as u64;
                            self.digits += 1;
                        }
                        None if self.digits == 0 => return Err("invalid chunk size"),
                        None if b == b';' => {
                            self.state = ChunkState::Ext;
                            self.line_len = 0;
                        }
                        None if b == b'\r' => self.state = ChunkState::SizeLf,
                        None => return Err("invalid chunk size"),
                    }
                    i += 1;
                }
                ChunkState::Ext => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err("invalid chunk extension");
                    }
                    self.line_len += 1;
                    if self.line_len > MAX_CHUNK_LINE {
                        return Err("chunk extension too long");
                    }
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err("chunk size line not ended by CRLF");
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
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = ChunkState::DataLf;
                    i += 1;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = ChunkState::Size;
                    i += 1;
                }
                ChunkState::TrailerStart => {
                    if b == b'\r' {
                        self.state = ChunkState::FinalLf;
                    } else {
                        self.state = ChunkState::TrailerLine;
                        self.line_len = 0;
                        continue;
                    }
                    i += 1;
                }
                ChunkState::TrailerLine => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    } else if b == b'\n' {
                        return Err("trailer line not ended by CRLF");
                    }
                    self.line_len += 1;
                    if self.line_len > MAX_CHUNK_LINE {
                        return Err("trailer line too long");
                    }
                    i += 1;
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err("trailer line not ended by CRLF");
                    }
                    self.state = ChunkState::TrailerStart;
                    i += 1;
                }
                ChunkState::FinalLf => {
                    if b != b'\n' {
                        return Err("chunked body not ended by CRLF");
                    }
                    self.state = ChunkState::Done;
                    i += 1;
                }
                ChunkState::Done => unreachable!("loop condition excludes Done"),
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Option<RequestHead>, ProxyError> {
        let mut h = Vec::new();
        parse_request(s.as_bytes(), 100, &mut h)
    }

    #[test]
    fn simple_get() {
        let s = "GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com\r\nConnection: keep-alive\r\n\r\nNEXT";
        let h = req(s).unwrap().unwrap();
        assert_eq!(h.head_len, s.len() - 4);
        assert_eq!(h.path.get(s.as_bytes()), b"/a/b");
        assert_eq!(h.query.get(s.as_bytes()), b"?x=1");
        assert_eq!(h.host.unwrap().get(s.as_bytes()), b"Example.com");
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
            parse_request(many.as_bytes(), 5, &mut h),
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

    #[test]
    fn chunked_scanner_finds_the_end_across_splits() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for split in 0..=body.len() - 4 {
            let mut s = ChunkedScanner::new();
            let mut data = Vec::new();
            let a = s
                .scan(&body[..split], |r| data.extend_from_slice(&body[r]))
                .unwrap();
            assert_eq!(a, split);
            let b = s
                .scan(&body[split..], |r| {
                    data.extend_from_slice(&body[split..][r])
                })
                .unwrap();
            assert!(s.is_done());
            assert_eq!(split + b, body.len() - 4);
            assert_eq!(data, b"hello0123456789abcdef");
            assert_eq!(s.data_total(), 21);
        }
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
                ChunkedScanner::new().scan(bad, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
