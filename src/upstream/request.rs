//! The request head sent upstream: the client's head minus hop-by-hop and untrusted forwarding
//! headers, plus Host per `pass_host`, `X-Forwarded-*`, `proxy-rewrite` changes and framing.

use crate::config::route::PassHost;
use crate::oidc::Identity;
use crate::router::{Node, Route};
use crate::server::h1::{named_in_connection, BodyKind, HeaderIdx, HeaderKind, RequestHead};

/// What the proxy knows about the client connection that shapes forwarding headers.
pub struct ClientFacts<'a> {
    /// The peer's IP as text.
    pub peer_ip: &'a str,
    /// Whether the peer's own forwarding headers are believed.
    pub trusted: bool,
    /// The identity authentication established, if the route authenticates.
    pub identity: Option<&'a Identity>,
    /// The normalised path, when it differs from the one sent (it is what the route matched).
    pub path: Option<&'a [u8]>,
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Write the upstream request head for `head` (parsed from `buf`) into `out`.
pub fn write_request_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &RequestHead,
    headers: &[HeaderIdx],
    route: &Route,
    node: &Node,
    client: &ClientFacts<'_>,
) {
    out.clear();
    let rewrite = route.rewrite.as_ref();
    out.extend_from_slice(head.method.get(buf));
    out.push(b' ');
    match rewrite.and_then(|r| r.uri.as_deref()) {
        Some(uri) => {
            out.extend_from_slice(uri.as_bytes());
            if !uri.contains('?') {
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
    let host: &[u8] = match (
        rewrite.and_then(|r| r.host.as_deref()),
        &route.upstream.pass_host,
    ) {
        (Some(h), _) => h.as_bytes(),
        (None, PassHost::Pass) => client_host.unwrap_or(node.host_port.as_bytes()),
        (None, PassHost::Node) => node.host_port.as_bytes(),
        (None, PassHost::Rewrite(h)) => h.as_bytes(),
    };
    header(out, b"Host", host);

    // proxy-rewrite's `set` and `remove` win over the client's headers and over the ones the
    // proxy would add itself (its `set` values are written below).
    let rewritten = |name: &[u8]| rewrite.is_some_and(|r| r.drops_ignoring_case(name));
    let mut xff_start = None;
    let mut saw_proto = false;
    let mut saw_fwd_host = false;
    let mut saw_real_ip = false;
    for h in headers {
        let name = h.name.get(buf);
        let value = h.value.get(buf);
        if rewritten(name) {
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
            HeaderKind::Authorization
                if client
                    .identity
                    .is_some_and(|i| i.set_access_token && i.in_authorization) =>
            {
                continue
            }
            HeaderKind::Authorization => {}
            HeaderKind::Other => {
                if head.connection_names_others && named_in_connection(buf, headers, name) {
                    continue;
                }
            }
        }
        header(out, name, value);
    }
    if xff_start.is_none() && !rewritten(b"x-forwarded-for") {
        header(out, b"X-Forwarded-For", client.peer_ip.as_bytes());
    }
    if !saw_real_ip && !rewritten(b"x-real-ip") {
        header(out, b"X-Real-IP", client.peer_ip.as_bytes());
    }
    if !saw_proto && !rewritten(b"x-forwarded-proto") {
        header(out, b"X-Forwarded-Proto", b"http");
    }
    if !saw_fwd_host && !rewritten(b"x-forwarded-host") {
        if let Some(h) = client_host {
            header(out, b"X-Forwarded-Host", h);
        }
    }
    if let Some(id) = client.identity {
        let token = id.token.get(buf);
        if id.set_access_token && id.in_authorization {
            out.extend_from_slice(b"Authorization: Bearer ");
            out.extend_from_slice(token);
            out.extend_from_slice(b"\r\n");
        } else if id.set_access_token {
            header(out, b"X-Access-Token", token);
        }
        if let Some(u) = &id.userinfo {
            header(out, b"X-Userinfo", u.as_bytes());
        }
    }
    if let Some(r) = rewrite {
        for (n, v) in r.set.iter().chain(&r.add) {
            header(out, n.as_bytes(), v.as_bytes());
        }
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
    use crate::config::route::check_route;
    use crate::router::RouteTable;
    use crate::server::h1::parse_request;
    use serde_json::json;

    fn forwarded(route: serde_json::Value, req: &str, trusted: bool) -> String {
        let mut errors = Vec::new();
        let spec = check_route(route, "1", &mut errors).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let per_core = crate::config::parse_yaml("").unwrap().per_core;
        let table = RouteTable::compile(&[spec], &per_core, &crate::idp::Idp::start().unwrap());
        let route = &table.routes[0];
        let mut hs = Vec::new();
        let head = parse_request(&mut req.as_bytes().to_vec(), 100, &mut hs)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let facts = ClientFacts {
            peer_ip: "10.0.0.9",
            trusted,
            identity: None,
            path: None,
        };
        write_request_head(
            &mut out,
            req.as_bytes(),
            &head,
            &hs,
            route,
            &route.upstream.nodes[0],
            &facts,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hop_by_hop_and_untrusted_forwarding_headers_are_dropped() {
        let out = forwarded(
            json!({"uri": "/*", "upstream": {"nodes": {"127.0.0.1:8080": 1}}}),
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
            json!({"uri": "/*", "upstream": {"nodes": {"127.0.0.1:8080": 1}}}),
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
    fn pass_host_and_proxy_rewrite() {
        let out = forwarded(
            json!({"uri": "/*", "upstream": {"nodes": {"127.0.0.1:8080": 1}, "pass_host": "node"}}),
            "GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n",
            false,
        );
        assert!(
            out.starts_with("GET /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"),
            "{out}"
        );
        let out = forwarded(
            json!({"uri": "/*", "plugins": {"proxy-rewrite": {"uri": "/new", "host": "h.test", "headers": {"X-A": "1", "X-Gone": ""}}},
                   "upstream": {"nodes": {"127.0.0.1:8080": 1}, "pass_host": "rewrite", "upstream_host": "ignored"}}),
            "GET /x?k=v HTTP/1.1\r\nHost: a.test\r\nX-Gone: 1\r\nx-a: old\r\n\r\n",
            false,
        );
        assert!(
            out.starts_with("GET /new?k=v HTTP/1.1\r\nHost: h.test\r\n"),
            "{out}"
        );
        assert!(
            out.contains("X-A: 1\r\n") || out.contains("x-a: 1\r\n"),
            "{out}"
        );
        assert!(!out.contains("old") && !out.contains("X-Gone"), "{out}");
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
