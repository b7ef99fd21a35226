//! In-process costs on the request path: head parsing, route lookup, upstream head building.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis::config::{self, route::method_bit};
use portcullis::http::h1::{parse_request, ChunkedScanner};
use portcullis::plugins::{Ctx, Heads};
use portcullis::router::RouteTable;
use portcullis::upstream::request::{write_request_head, ClientFacts};

const BROWSER_GET: &[u8] = b"GET /api/v1/orders/12345?expand=items HTTP/1.1\r\nHost: shop.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.9\r\n\
Accept-Encoding: gzip, deflate, br\r\nCookie: session=abcdef0123456789; theme=dark\r\nConnection: keep-alive\r\n\r\n";

const WRK_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9080\r\n\r\n";

fn table(n: usize) -> RouteTable {
    let mut yaml = String::from("routes:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - {{id: \"r{i}\", uri: \"/svc{i}/*\", upstream: {{nodes: {{\"127.0.0.1:{}\": 1}}}}}}\n",
            1000 + i
        ));
        yaml.push_str(&format!("  - {{id: \"e{i}\", uri: \"/exact/{i}\", methods: [GET], upstream: {{nodes: {{\"127.0.0.1:1\": 1}}}}}}\n"));
    }
    yaml.push_str("  - {id: api, uri: \"/api/v1/*\", host: shop.example.com, upstream: {nodes: {\"127.0.0.1:1980\": 1}}}\n");
    let c = config::parse_yaml(&yaml).expect("bench config is valid");
    RouteTable::compile(
        &c.routes,
        &c.upstreams,
        &c.per_core,
        &portcullis::plugins::PluginEnv::new(
            portcullis::idp::Idp::start().expect("IdP thread starts"),
            std::env::temp_dir(),
        ),
        None,
    )
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_request");
    let mut headers = Vec::with_capacity(32);
    for (name, req) in [("wrk_get", WRK_GET), ("browser_get", BROWSER_GET)] {
        g.throughput(Throughput::Bytes(req.len() as u64));
        // Parsing normalises the host in place; a normal host stays as it is, so one copy
        // serves every iteration.
        let mut buf = req.to_vec();
        g.bench_function(name, |b| {
            b.iter(|| {
                parse_request(black_box(&mut buf), 100, &mut headers)
                    .unwrap()
                    .unwrap()
                    .head_len
            })
        });
    }
    g.finish();
    let body: Vec<u8> = (0..64)
        .flat_map(|_| {
            b"400\r\n"
                .iter()
                .copied()
                .chain([b'x'; 1024])
                .chain(*b"\r\n")
        })
        .chain(*b"0\r\n\r\n")
        .collect();
    let mut g = c.benchmark_group("chunked_scan");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("64x1KiB", |b| {
        b.iter(|| {
            ChunkedScanner::new(32 * 1024, 100)
                .scan(black_box(&body), |_| {})
                .unwrap()
        })
    });
    g.finish();
}

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    for n in [1usize, 100, 1000] {
        let t = table(n);
        let get = method_bit(b"GET").unwrap();
        g.bench_function(format!("{n}_prefix_routes_host_match"), |b| {
            b.iter(|| {
                t.find(
                    black_box(b"/api/v1/orders/12345"),
                    Some(black_box(b"shop.example.com")),
                    get,
                )
                .map(|f| f.idx)
            })
        });
        g.bench_function(format!("{n}_exact"), |b| {
            b.iter(|| t.find(black_box(b"/exact/0"), None, get).map(|f| f.idx))
        });
    }
    g.finish();
}

fn upstream_head(c: &mut Criterion) {
    let t = table(1);
    let mut headers = Vec::with_capacity(32);
    let mut browser_get = BROWSER_GET.to_vec();
    let head = parse_request(&mut browser_get, 100, &mut headers)
        .unwrap()
        .unwrap();
    let get = method_bit(b"GET").unwrap();
    let route = t
        .find(
            head.path.get(&browser_get),
            Some(head.host_name.get(&browser_get)),
            get,
        )
        .unwrap()
        .route;
    let facts = ClientFacts {
        peer_ip: "192.0.2.10",
        trusted: false,
        path: None,
        tls: false,
        upgrade: None,
    };
    let ctx = Ctx::default();
    let edits = Heads {
        plugins: &route.plugins,
        ctx: &ctx,
    };
    let mut out = Vec::with_capacity(1024);
    c.bench_function("write_request_head/browser_get", |b| {
        b.iter(|| {
            write_request_head(
                &mut out,
                &browser_get,
                &head,
                &headers,
                &route.upstream.pass_host,
                &route.upstream.nodes[0],
                &facts,
                &edits,
            );
            out.len()
        })
    });
}

criterion_group!(benches, parse, route, upstream_head);
criterion_main!(benches);
