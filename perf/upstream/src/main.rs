//! The benchmark upstream: answers every `GET` with `200` and the body `hello world\n`,
//! keep-alive, pipelining allowed.
//!
//! It exists so that the upstream does not cap a proxy's row. The upstream shares the load core
//! with wrk, and nginx as upstream parses every header line byte by byte: with the 2-3 KB heads
//! of the bearer-token targets that made the load core, not the proxy, the limit. This server
//! only finds where each head ends (SIMD search), checks the method, and answers from one
//! static buffer, with io_uring batching its reads and writes.
//!
//!     perf-upstream 127.0.0.1:PORT
//!
//! Anything but a bodiless `GET` gets `400` and the connection is closed: the benchmark never
//! sends one, so such a request means the setup is wrong, and it must not be counted as a 200.

use std::net::SocketAddr;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

/// The answer, with the headers a typical upstream sends (nginx's `return 200` sends these
/// plus `Date`), so that proxies parse and forward a head of the usual size.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nServer: perf-upstream\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n";
const BAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
/// A head longer than this is refused (nginx's default large buffer is 8 KB).
const MAX_HEAD: usize = 64 * 1024;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = match (args.next().map(|a| a.parse()), args.next()) {
        (Some(Ok(addr)), None) => addr,
        _ => {
            eprintln!("usage: perf-upstream 127.0.0.1:PORT");
            std::process::exit(2);
        }
    };
    if !addr.ip().is_loopback() {
        eprintln!("perf-upstream: listens on loopback only (got {addr})");
        std::process::exit(2);
    }
    let mut uring = io_uring::IoUring::builder();
    uring.setup_coop_taskrun().setup_taskrun_flag();
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(4096)
        .uring_builder(uring)
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("perf-upstream: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("perf-upstream: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        eprintln!("perf-upstream: listening on {addr}");
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    monoio::spawn(serve(stream));
                }
                Err(e) => eprintln!("perf-upstream: accept failed: {e}"),
            }
        }
    });
}

/// Answer the requests of one connection until the peer closes it or sends something else.
async fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(OK.len() * 8);
    let finder = memchr::memmem::Finder::new(b"\r\n\r\n");
    // Where the next head starts, and how far it is known to have no end yet.
    let mut start = 0;
    let mut scanned = 0;
    loop {
        if buf.len() == buf.capacity() {
            if start > 0 {
                // Completed heads make room for the rest of this one.
                buf.drain(..start);
                scanned -= start;
                start = 0;
            } else {
                buf.reserve(buf.capacity());
            }
        }
        let len = buf.len();
        let (res, slice) = stream.read(buf.slice_mut(len..)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut bad = false;
        while let Some(end) = finder.find(&buf[scanned..]) {
            let head_end = scanned + end + 4;
            let head = &buf[start..head_end];
            if head.len() > MAX_HEAD || !head.starts_with(b"GET ") || has_body(head) {
                bad = true;
                break;
            }
            out.extend_from_slice(OK);
            start = head_end;
            scanned = head_end;
        }
        if !bad {
            // A head's end may straddle two reads: look again from 3 bytes back.
            scanned = buf.len().saturating_sub(3).max(start);
            bad = buf.len() - start > MAX_HEAD;
        }
        if start == buf.len() {
            buf.clear();
            start = 0;
            scanned = 0;
        }
        if bad {
            out.extend_from_slice(BAD);
        }
        if !out.is_empty() {
            let (res, o) = stream.write_all(out).await;
            out = o;
            out.clear();
            if res.is_err() || bad {
                return;
            }
        }
    }
}

/// Whether a head announces a body (any `Content-Length` or `Transfer-Encoding`): this server
/// does not read bodies, and no benchmark request has one.
fn has_body(head: &[u8]) -> bool {
    memchr::memmem::find_iter(head, b"\r\n").any(|i| {
        let line = &head[i + 2..];
        let named = |name: &[u8]| {
            line.get(..name.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(name))
        };
        named(b"content-length:") || named(b"transfer-encoding:")
    })
}
