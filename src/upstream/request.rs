//! The request head sent upstream: the client's head minus hop-by-hop and untrusted forwarding
//! headers, plus Host per `pass_host`, `X-Forwarded-*`, what the route's plugins change
//! ([`Edits`]) and framing.

use super::{Node, PassHost};
use crate::http::h1::{
    named_in_connection, write_header as header, BodyKind, HeaderIdx, HeaderKind, RequestHead,
};

/// What the route's plugins change in the heads this layer writes. Each method is one request
/// phase's contribution, so forwarding never needs to know which plugins a route has.
pub trait Edits {
    /// A replacement for the request's path (the client's query is kept unless it has one).
    fn uri(&self) -> Option<&[u8]> {
        None
    }
    /// A replacement Host, over `pass_host`.
    fn host(&self) -> Option<&[u8]> {
        None
    }
    /// Whether a header named `name` (any case) of kind `kind` is left out: the client's, or
    /// one the proxy would add itself (`X-Forwarded-*`, `X-Real-IP`).
    fn drops(&self, _name: &[u8], _kind: HeaderKind) -> bool {
        false
    }
    /// Write headers that follow the client's; `buf` and `headers` are the request head's.
    fn append_upstream(&self, _buf: &[u8], _headers: &[HeaderIdx], _out: &mut Vec<u8>) {}
    /// Write headers added to the client's response head.
    fn append_response(&self, _out: &mut Vec<u8>) {}
}

/// No changes: a route without plugins.
pub struct NoEdits;

impl Edits for NoEdits {}

/// What the proxy knows about the client connection that shapes forwarding headers.
pub struct ClientFacts<'a> {
    /// The peer's IP as text.
    pub peer_ip: &'a str,
    /// Whether the peer's own forwarding headers are believed.
    pub trusted: bool,
    /// The normalised path, when it differs from the one sent (it is what the route matched).
    pub path: Option<&'a [u8]>,
    /// Whether the client connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// The client's `Upgrade` value, when the request is a protocol upgrade the route lets
    /// through (WebSocket); otherwise `Upgrade` is dropped as hop-by-hop.
    pub upgrade: Option<&'a [u8]>,
}

/// Write the upstream request head for `head` (parsed from `buf`) into `out`.
#[allow(clippy::too_many_arguments)]
pub fn write_request_head<E: Edits>(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &RequestHead,
    headers: &[HeaderIdx],
    pass_host: &PassHost,
    node: &Node,
    client: &ClientFacts<'_>,
    edits: &E,
) {
    out.clear();
    out.extend_from_slice(head.method.get(buf));
    out.push(b' ');
    match edits.uri() {
        Some(uri) => {
            out.extend_from_slice(uri);
            if !uri.contains(&b'?') {
                out.extend_from_slice(head.query.get(buf));
            }
        }
        None => match client.path {
            Some(path) => {
                out.extend_from_slice(path);
                out.extend_from_slice(head.query.get(buf));
            }
            None => out.extend_from_slice(head.target.get(buf)),
        },
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let client_host = head.host.map(|h| h.get(buf));
    let host: &[u8] = match (edits.host(), pass_host) {
        (Some(h), _) => h,
        (None, PassHost::Pass) => client_host.unwrap_or(node.host_port.as_bytes()),
        (None, PassHost::Node) => node.host_port.as_bytes(),
        (None, PassHost::Rewrite(h)) => h.as_bytes(),
    };
    header(out, b"Host", host);

    let mut xff_start = None;
    let mut saw_proto = false;
    let mut saw_fwd_host = false;
    let mut saw_real_ip = false;
    for h in headers {
        let name = h.name.get(buf);
        let value = h.value.get(buf);
        if edits.drops(name, h.kind) {
            continue;
        }
        match h.kind {
            HeaderKind::Host
            | HeaderKind::ContentLength
            | HeaderKind::TransferEncoding
            | HeaderKind::Connection
            | HeaderKind::HopByHop
            | HeaderKind::Expect => continue,
            HeaderKind::XForwardedFor => {
                if client.trusted {
                    // Several X-Forwarded-For lines are one list; join them into ours.
                    match xff_start {
                        None => xff_start = Some(out.len()),
                        Some(_) => continue,
                    }
                    out.extend_from_slice(b"X-Forwarded-For: ");
                    let mut first = true;
                    for v in headers
                        .iter()
                        .filter(|x| x.kind == HeaderKind::XForwardedFor)
                    {
                        if !first {
                            out.extend_from_slice(b", ");
                        }
                        first = false;
                        out.extend_from_slice(v.value.get(buf));
                    }
                    out.extend_from_slice(b", ");
                    out.extend_from_slice(client.peer_ip.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                continue;
            }
            HeaderKind::XForwardedProto
            | HeaderKind::XForwardedHost
            | HeaderKind::Forwarded
            | HeaderKind::XForwardedOther
            | HeaderKind::XRealIp => {
                if !client.trusted {
                    continue;
                }
                saw_real_ip |= h.kind == HeaderKind::XRealIp;
                saw_proto |= h.kind == HeaderKind::XForwardedProto;
                saw_fwd_host |= h.kind == HeaderKind::XForwardedHost;
            }
            // Identity claims only the proxy may make, on every route.
            HeaderKind::Identity | HeaderKind::Alias => continue,
            HeaderKind::Authorization => {}
            HeaderKind::Other => {
                if head.connection_names_others && named_in_connection(buf, headers, name) {
                    continue;
                }
            }
        }
        header(out, name, value);
    }
    if xff_start.is_none() && !edits.drops(b"x-forwarded-for", HeaderKind::XForwardedFor) {
        header(out, b"X-Forwarded-For", client.peer_ip.as_bytes());
    }
    if !saw_real_ip && !edits.drops(b"x-real-ip", HeaderKind::XRealIp) {
        header(out, b"X-Real-IP", client.peer_ip.as_bytes());
    }
    if !saw_proto && !edits.drops(b"x-forwarded-proto", HeaderKind::XForwardedProto) {
        let proto: &[u8] = if client.tls { b"https" } else { b"http" };
        header(out, b"X-Forwarded-Proto", proto);
    }
    if !saw_fwd_host && !edits.drops(b"x-forwarded-host", HeaderKind::XForwardedHost) {
        if let Some(h) = client_host {
            header(out, b"X-Forwarded-Host", h);
        }
    }
    edits.append_upstream(buf, headers, out);
    if let Some(protocol) = client.upgrade {
        out.extend_from_slice(b"Connection: Upgrade\r\n");
        header(out, b"Upgrade", protocol);
    }
    match head.body {
        BodyKind::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa_u64(n, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyKind::None | BodyKind::UntilClose => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Format `n` in decimal without going through `fmt`.
pub fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1::parse_request;

    /// The head written for `req` to node 127.0.0.1:8080 under `pass_host` and `edits`.
    pub(crate) fn forwarded_with<E: Edits>(
        req: &str,
        trusted: bool,
        pass_host: &PassHost,
        edits: &E,
    ) -> String {
        let node = Node {
            addr: None,
            host_port: "127.0.0.1:8080".into(),
            host: "127.0.0.1".into(),
            weight: 1,
        };
        let mut buf = req.as_bytes().to_vec();
        let mut hs = Vec::new();
        let head = parse_request(&mut buf, 100, &mut hs).unwrap().unwrap();
        let mut out = Vec::new();
        let facts = ClientFacts {
            peer_ip: "10.0.0.9",
            trusted,
            tls: false,
            upgrade: None,
            path: None,
        };
        write_request_head(&mut out, &buf, &head, &hs, pass_host, &node, &facts, edits);
        String::from_utf8(out).unwrap()
    }

    fn forwarded(req: &str, trusted: bool) -> String {
        forwarded_with(req, trusted, &PassHost::Pass, &NoEdits)
    }

    #[test]
    fn hop_by_hop_and_untrusted_forwarding_headers_are_dropped() {
        let out = forwarded(
            "POST /p?q=1 HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX_Userinfo: forged\r\nContent-Length: 3\r\nUser-Agent: t\r\n\r\nabc",
            false,
        );
        assert_eq!(
            out,
            "POST /p?q=1 HTTP/1.1\r\nHost: a.test\r\nUser-Agent: t\r\nX-Forwarded-For: 10.0.0.9\r\nX-Real-IP: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a.test\r\nContent-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn trusted_peers_keep_their_forwarding_headers() {
        let out = forwarded(
            "GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n",
            true,
        );
        assert!(
            out.contains("X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\n"),
            "{out}"
        );
        assert!(
            out.contains("X-Forwarded-Proto: https\r\n")
                && !out.contains("X-Forwarded-Proto: http\r\n"),
            "{out}"
        );
        assert_eq!(out.matches("X-Forwarded-For").count(), 1, "{out}");
    }

    #[test]
    fn pass_host_modes() {
        let req = "GET /x HTTP/1.1\r\nHost: A.test.\r\n\r\n";
        let host = |pass_host| {
            let out = forwarded_with(req, false, &pass_host, &NoEdits);
            out.lines().nth(1).unwrap().to_string()
        };
        assert_eq!(host(PassHost::Pass), "Host: a.test");
        assert_eq!(host(PassHost::Node), "Host: 127.0.0.1:8080");
        assert_eq!(host(PassHost::Rewrite("r.test".into())), "Host: r.test");
    }

    #[test]
    fn edits_replace_target_and_host_drop_and_add_headers() {
        struct Test;
        impl Edits for Test {
            fn uri(&self) -> Option<&[u8]> {
                Some(b"/new")
            }
            fn host(&self) -> Option<&[u8]> {
                Some(b"h.test")
            }
            fn drops(&self, name: &[u8], _kind: HeaderKind) -> bool {
                name.eq_ignore_ascii_case(b"x-gone") || name.eq_ignore_ascii_case(b"x-real-ip")
            }
            fn append_upstream(&self, _buf: &[u8], _headers: &[HeaderIdx], out: &mut Vec<u8>) {
                crate::http::h1::write_header(out, b"X-A", b"1");
            }
        }
        let out = forwarded_with(
            "GET /x?k=v HTTP/1.1\r\nHost: a.test\r\nX-Gone: 1\r\n\r\n",
            false,
            &PassHost::Node,
            &Test,
        );
        assert_eq!(
            out,
            "GET /new?k=v HTTP/1.1\r\nHost: h.test\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a.test\r\nX-A: 1\r\n\r\n"
        );
    }

    #[test]
    fn itoa() {
        assert_eq!(itoa_u64(0, &mut [0; 20]), b"0");
        assert_eq!(
            itoa_u64(u64::MAX, &mut [0; 20]),
            u64::MAX.to_string().as_bytes()
        );
    }
}
