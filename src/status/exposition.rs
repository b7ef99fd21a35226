//! The Prometheus text exposition (format 0.0.4): every worker's block added up, with
//! APISIX's `prometheus` plugin names and labels for the request metrics, so its dashboards
//! and alerts work unchanged, and `portcullis_*` for the rest.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::idp::{Endpoint, Failure, Idp, RefreshReason};
use crate::metrics::{
    outcome_label, AuthMethod, ConfigSource, HistogramSum, Key, LoginStep, Patterns, Registry,
    AUTH_OUTCOMES, CACHE_NAMES, CONFIG_CHANGES, CONN_STATES, IDP_BOUNDS_US, LATENCY_BUCKETS_MS,
    LATENCY_TYPES,
};

/// A label value, escaped as the text format requires.
fn esc(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// What one route's blocks add up to, across cores.
#[derive(Default)]
struct RouteSum {
    /// By code (`None`: past the table), `matched_uri`, `matched_host` and node.
    status: BTreeMap<(Option<u16>, String, String, String), u64>,
    latency: [HistogramSum; 3],
    ingress: u64,
    egress: u64,
    auth: [[u64; AUTH_OUTCOMES]; 3],
    login: [[u64; AUTH_OUTCOMES]; 3],
    connect_errors: BTreeMap<String, u64>,
}

/// Render every metric.
/// `etcd_reachable`: `Some` under `config_provider: etcd`, giving `apisix_etcd_reachable`.
pub fn render(
    registry: &Registry,
    idp: &Idp,
    hostname: &str,
    etcd_reachable: Option<bool>,
) -> String {
    let cores = registry.cores();
    let mut routes: BTreeMap<String, RouteSum> = BTreeMap::new();
    let (mut accepted, mut handled, mut active, mut requests) = (0, 0, 0, 0);
    let mut states = [0u64; 3];
    let mut caches = [[0u64; 4]; CACHE_NAMES.len()];
    for core in &cores {
        accepted += core.accepted.get();
        handled += core.handled.get();
        active += core.active.get();
        requests += core.requests.get();
        for (i, s) in core.states.iter().enumerate() {
            states[i] += s.get();
        }
        for (i, c) in core.caches.iter().enumerate() {
            caches[i][0] += c.hits.get();
            caches[i][1] += c.misses.get();
            caches[i][2] += c.evictions.get();
            caches[i][3] += c.entries.get();
        }
        for r in core.routes() {
            let sum = routes.entry(r.id.to_string()).or_default();
            let patterns = r.patterns();
            r.status.each(|k: Key, n| {
                let uri = Patterns::label(&patterns.uris, k.matched.uri).to_string();
                let host = Patterns::label(&patterns.hosts, k.matched.host).to_string();
                *sum.status
                    .entry((Some(k.code), uri, host, k.node_label()))
                    .or_default() += n;
            });
            let over = r.status.overflow.get();
            if over > 0 {
                *sum.status
                    .entry((None, String::new(), String::new(), String::new()))
                    .or_default() += over;
            }
            for (i, h) in r.latency.iter().enumerate() {
                h.add_to(&mut sum.latency[i]);
            }
            sum.ingress += r.ingress.get();
            sum.egress += r.egress.get();
            for (m, row) in r.auth.iter().enumerate() {
                for (o, c) in row.iter().enumerate() {
                    sum.auth[m][o] += c.get();
                }
            }
            for (step, row) in r.login.iter().enumerate() {
                for (o, c) in row.iter().enumerate() {
                    sum.login[step][o] += c.get();
                }
            }
            r.connect_errors.each(|k, n| {
                *sum.connect_errors.entry(k.node_label()).or_default() += n;
            });
            let over = r.connect_errors.overflow.get();
            if over > 0 {
                *sum.connect_errors.entry("other".into()).or_default() += over;
            }
        }
    }

    let mut out = String::with_capacity(16 * 1024);
    family(&mut out, "apisix_node_info", "gauge", "Info of APISIX node");
    let _ = writeln!(out, "apisix_node_info{{hostname=\"{}\"}} 1", esc(hostname));
    if let Some(up) = etcd_reachable {
        family(
            &mut out,
            "apisix_etcd_reachable",
            "gauge",
            "Config server etcd reachable from APISIX, 0 is unreachable",
        );
        let _ = writeln!(out, "apisix_etcd_reachable {}", u8::from(up));
    }

    family(
        &mut out,
        "apisix_nginx_http_current_connections",
        "gauge",
        "Number of HTTP connections",
    );
    for (state, v) in [
        ("accepted", accepted),
        ("active", active),
        ("handled", handled),
        ("total", requests),
        (CONN_STATES[0], states[0]),
        (CONN_STATES[1], states[1]),
        (CONN_STATES[2], states[2]),
    ] {
        let _ = writeln!(
            out,
            "apisix_nginx_http_current_connections{{state=\"{state}\"}} {v}"
        );
    }
    family(
        &mut out,
        "apisix_http_requests_total",
        "gauge",
        "The total number of client requests since APISIX started",
    );
    let _ = writeln!(out, "apisix_http_requests_total {requests}");

    family(
        &mut out,
        "apisix_http_status",
        "counter",
        "HTTP status codes per service in APISIX",
    );
    for (route, s) in &routes {
        for ((code, uri, host, node), n) in &s.status {
            let code = code.map_or("other".to_string(), |c| c.to_string());
            let _ = writeln!(
                out,
                "apisix_http_status{{code=\"{code}\",route=\"{}\",matched_uri=\"{}\",matched_host=\"{}\",service=\"\",consumer=\"\",node=\"{}\"}} {n}",
                esc(route),
                esc(uri),
                esc(host),
                esc(node)
            );
        }
    }

    family(
        &mut out,
        "apisix_http_latency",
        "histogram",
        "HTTP request latency in milliseconds per service in APISIX",
    );
    for (route, s) in &routes {
        for (t, h) in s.latency.iter().enumerate() {
            let labels = format!(
                "type=\"{}\",route=\"{}\",service=\"\",consumer=\"\",node=\"\"",
                LATENCY_TYPES[t],
                esc(route)
            );
            histogram(
                &mut out,
                "apisix_http_latency",
                &labels,
                h,
                &LATENCY_BUCKETS_MS.map(|b| b.to_string()),
                1000.0,
            );
        }
    }

    family(
        &mut out,
        "apisix_bandwidth",
        "counter",
        "Total bandwidth in bytes consumed per service in APISIX",
    );
    for (route, s) in &routes {
        for (t, v) in [("egress", s.egress), ("ingress", s.ingress)] {
            let _ = writeln!(
                out,
                "apisix_bandwidth{{type=\"{t}\",route=\"{}\",service=\"\",consumer=\"\",node=\"\"}} {v}",
                esc(route)
            );
        }
    }

    family(
        &mut out,
        "portcullis_auth_total",
        "counter",
        "Authentication verdicts by route, method and outcome",
    );
    for (route, s) in &routes {
        for (m, row) in s.auth.iter().enumerate() {
            // A method a route never used stays out, instead of a dozen zero series.
            if row.iter().all(|&n| n == 0) {
                continue;
            }
            for (o, n) in row.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "portcullis_auth_total{{route=\"{}\",method=\"{}\",outcome=\"{}\"}} {n}",
                    esc(route),
                    AuthMethod::ALL[m].as_str(),
                    outcome_label(o)
                );
            }
        }
    }

    family(
        &mut out,
        "portcullis_login_total",
        "counter",
        "Browser login-flow steps (redirect to the IdP, callback, logout) by route and outcome",
    );
    for (route, s) in &routes {
        for (step, row) in s.login.iter().enumerate() {
            if row.iter().all(|&n| n == 0) {
                continue;
            }
            for (o, n) in row.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "portcullis_login_total{{route=\"{}\",step=\"{}\",outcome=\"{}\"}} {n}",
                    esc(route),
                    LoginStep::ALL[step].as_str(),
                    outcome_label(o)
                );
            }
        }
    }

    for (i, (name, help)) in [
        (
            "portcullis_token_cache_hits_total",
            "Token cache lookups answered from the cache",
        ),
        (
            "portcullis_token_cache_misses_total",
            "Token cache lookups that found nothing alive",
        ),
        (
            "portcullis_token_cache_evictions_total",
            "Live token cache entries dropped to stay within the entry or byte bound",
        ),
        (
            "portcullis_token_cache_entries",
            "Entries held in the token caches",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        family(
            &mut out,
            name,
            if i == 3 { "gauge" } else { "counter" },
            help,
        );
        for (c, cache) in CACHE_NAMES.iter().enumerate() {
            let _ = writeln!(out, "{name}{{cache=\"{cache}\"}} {}", caches[c][i]);
        }
    }

    let stats = idp.stats();
    family(
        &mut out,
        "portcullis_idp_requests_total",
        "counter",
        "Identity provider calls by endpoint and outcome",
    );
    for e in Endpoint::ALL {
        let _ = writeln!(
            out,
            "portcullis_idp_requests_total{{endpoint=\"{}\",outcome=\"ok\"}} {}",
            e.label(),
            stats.successes(e)
        );
        for f in Failure::ALL {
            let _ = writeln!(
                out,
                "portcullis_idp_requests_total{{endpoint=\"{}\",outcome=\"{}\"}} {}",
                e.label(),
                f.label(),
                stats.failures(e, f)
            );
        }
    }
    family(
        &mut out,
        "portcullis_idp_request_duration_seconds",
        "histogram",
        "Identity provider call durations in seconds",
    );
    let idp_bounds = IDP_BOUNDS_US.map(|b| format!("{}", b as f64 / 1e6));
    for e in Endpoint::ALL {
        let mut h = HistogramSum::default();
        stats.durations[e as usize].add_to(&mut h);
        let labels = format!("endpoint=\"{}\"", e.label());
        histogram(
            &mut out,
            "portcullis_idp_request_duration_seconds",
            &labels,
            &h,
            &idp_bounds,
            1e6,
        );
    }
    family(
        &mut out,
        "portcullis_jwks_refresh_total",
        "counter",
        "JWKS refreshes by reason",
    );
    for r in RefreshReason::ALL {
        let _ = writeln!(
            out,
            "portcullis_jwks_refresh_total{{reason=\"{}\"}} {}",
            r.label(),
            stats.refreshes(r)
        );
    }

    family(
        &mut out,
        "portcullis_upstream_connect_errors_total",
        "counter",
        "Failed upstream connects by route and node",
    );
    for (route, s) in &routes {
        for (node, n) in &s.connect_errors {
            let _ = writeln!(
                out,
                "portcullis_upstream_connect_errors_total{{route=\"{}\",node=\"{}\"}} {n}",
                esc(route),
                esc(node)
            );
        }
    }

    family(
        &mut out,
        "portcullis_config_changes_total",
        "counter",
        "Configuration changes by source and outcome",
    );
    for src in ConfigSource::ALL {
        for (o, outcome) in ["applied", "rejected"].iter().enumerate() {
            let _ = writeln!(
                out,
                "portcullis_config_changes_total{{source=\"{}\",outcome=\"{outcome}\"}} {}",
                src.as_str(),
                CONFIG_CHANGES[src as usize][o].get()
            );
        }
    }
    out
}

/// One histogram's series: cumulative buckets, `+Inf`, sum (observed unit / `scale`), count.
fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    h: &HistogramSum,
    bounds: &[String],
    scale: f64,
) {
    let mut cumulative = 0u64;
    for (i, le) in bounds.iter().enumerate() {
        cumulative += h.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    cumulative += h.buckets.get(bounds.len()).copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum as f64 / scale);
    let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
}
