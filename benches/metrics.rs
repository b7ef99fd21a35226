//! What counting one request for `/metrics` costs on the worker: the same calls the connection
//! loop makes per request (connection-state gauges, status by node, three latency histograms,
//! bandwidth, the auth outcome, the request counter), on one core's own block, plus the one
//! clock read metrics add (the upstream's time; the request's own start and end are read for
//! the access log anyway). Compare with the ~16 µs of CPU a whole no-auth request costs
//! (perf/RESULTS.md) to see the share.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::metrics::{node_key, AuthMethod, Registry, LATENCY_BOUNDS_US};

fn count_one_request(c: &mut Criterion) {
    let registry = Registry::new(true);
    let core = registry.new_core().expect("metrics on");
    let route = core.route(&Arc::from("1"));
    let codes = route.codes(&[Arc::from("/api/*")], &[]);
    let node = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let mut g = c.benchmark_group("metrics");
    g.bench_function("count_one_request", |b| {
        let started = Instant::now();
        b.iter(|| {
            // reading → writing → waiting, as the connection loop moves a keep-alive request.
            core.states[0].inc();
            core.states[0].dec();
            core.states[1].inc();
            let up = started.elapsed().as_micros() as u64 % 1000 + black_box(300);
            core.states[1].dec();
            core.states[2].inc();
            let total = up + black_box(400);
            let matched = codes.matched(black_box(0), None);
            route
                .status
                .inc(black_box(200), matched, Some(node_key(node)));
            route.ingress.add(black_box(120));
            route.egress.add(black_box(180));
            route.latency[0].observe(&LATENCY_BOUNDS_US, total);
            route.latency[1].observe(&LATENCY_BOUNDS_US, up);
            route.latency[2].observe(&LATENCY_BOUNDS_US, total - up);
            route.auth(AuthMethod::ALL[0], None);
            core.requests.inc();
            core.states[2].dec();
        })
    });
    g.finish();
}

criterion_group!(benches, count_one_request);
criterion_main!(benches);
