//! The route table: an immutable snapshot, compiled on the control plane and read without locks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use crate::config::route::{HostPattern, RouteSpec, RouteUpstream, UpstreamSpec, Upstreams};
use crate::config::PerCore;
use crate::plugins::{self, Plugin, PluginEnv};
use crate::upstream::{tls, Node, Scheme, Upstream};

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route id, for logs.
    pub id: Arc<str>,
    methods: u16,
    hosts: Vec<HostPattern>,
    priority: i64,
    /// Where requests go.
    pub upstream: Upstream,
    /// Plugins, compiled, in priority order.
    pub plugins: Box<[Plugin]>,
    /// Whose balancer position this route advances: its own (`r/<id>`), or its upstream
    /// object's (`u/<id>`), shared by every route naming that object, as in APISIX.
    pub balancer_key: Arc<str>,
    /// The route and its upstream object as written, canonical JSON: a new table reuses a route
    /// compiled from the same text instead of compiling (and resolving) it again.
    fingerprint: Box<str>,
    /// Whether WebSocket upgrades are forwarded (`enable_websocket`).
    pub websocket: bool,
    /// `uri`/`uris` as written, in order: what a match's `uri` index names (`matched_uri`).
    pub uris: Box<[Arc<str>]>,
    /// `host`/`hosts` as written (lowercased), in order (`matched_host`).
    pub host_patterns: Box<[Arc<str>]>,
}

/// A route a request matched, with which of its patterns matched.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    /// The route's index in the table.
    pub idx: usize,
    /// The route.
    pub route: &'a Route,
    /// Index of the `uri` pattern that matched, in [`Route::uris`].
    pub uri: usize,
    /// Index of the host pattern that matched, in [`Route::host_patterns`]; `None` when the
    /// route names no host.
    pub host: Option<usize>,
}

/// The route table snapshot workers match against.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Routes, indexed by the lists below.
    pub routes: Vec<Route>,
    /// Routes by exact path and by prefix, each with the index of the pattern it came from.
    /// foldhash (seeded per process) instead of SipHash: a lookup hashes the request's path once
    /// per prefix length, and clients only look up; keys are inserted from configuration.
    exact: HashMap<Box<[u8]>, Vec<(u32, u16)>, foldhash::fast::RandomState>,
    prefixes: HashMap<Box<[u8]>, Vec<(u32, u16)>, foldhash::fast::RandomState>,
    /// The distinct lengths of `prefixes`, longest first: a lookup tries one hash probe per
    /// length instead of testing every prefix, so a thousand routes cost what a few do.
    prefix_lens: Vec<usize>,
    /// Whether any node is a DNS name, so the table must be rebuilt when names resolve anew.
    pub has_dns_names: bool,
}

impl RouteTable {
    /// Build a table from checked routes and the upstream objects they name, resolving node
    /// host names (blocking: control plane only). A route whose text and upstream object are as
    /// in `previous` is taken from it as compiled, names as resolved then: pass `None` to resolve
    /// everything again.
    pub fn compile(
        specs: &[RouteSpec],
        upstreams: &Upstreams,
        per_core: &PerCore,
        env: &PluginEnv,
        previous: Option<&RouteTable>,
    ) -> RouteTable {
        let mut table = RouteTable::default();
        let before: HashMap<&str, &Route> = previous
            .map(|t| t.routes.iter().map(|r| (&*r.id, r)).collect())
            .unwrap_or_default();
        for spec in specs.iter().filter(|s| s.enabled) {
            let (upstream, balancer_key, object_source) = match &spec.upstream {
                RouteUpstream::Inline(u) => (u, format!("r/{}", spec.id), None),
                RouteUpstream::Id(id) => match upstreams.get(id) {
                    Some(o) => (&o.spec, format!("u/{id}"), Some(&o.source)),
                    None => {
                        // The control plane checks references before it compiles; this is a
                        // last line, not a path a request can take.
                        tracing::error!(route = %spec.id, upstream = %id, "route names a missing upstream; left out");
                        continue;
                    }
                },
            };
            let fingerprint = serde_json::to_string(&(&spec.source, object_source))
                .unwrap_or_default()
                .into_boxed_str();
            let route = match before.get(spec.id.as_str()) {
                Some(old) if old.fingerprint == fingerprint => (*old).clone(),
                _ => {
                    let mut route = compile_route(spec, upstream, per_core, env);
                    route.balancer_key = balancer_key.into();
                    route.fingerprint = fingerprint;
                    route
                }
            };
            table.has_dns_names |= route
                .upstream
                .nodes
                .iter()
                .any(|n| n.host.parse::<IpAddr>().is_err());
            let idx = table.routes.len() as u32;
            table.routes.push(route);
            for (n, uri) in spec.uris.iter().enumerate() {
                let entry = (idx, u16::try_from(n).unwrap_or(u16::MAX));
                match uri.strip_suffix('*') {
                    Some(prefix) => table
                        .prefixes
                        .entry(prefix.as_bytes().into())
                        .or_default()
                        .push(entry),
                    None => table
                        .exact
                        .entry(uri.as_bytes().into())
                        .or_default()
                        .push(entry),
                }
            }
        }
        let routes = &table.routes;
        // Host-specific routes first, then higher priority, then the order written.
        let order = |list: &mut Vec<(u32, u16)>| {
            list.sort_by_key(|&(i, _)| {
                let r = &routes[i as usize];
                (r.hosts.is_empty(), std::cmp::Reverse(r.priority), i)
            })
        };
        table.exact.values_mut().for_each(order);
        table.prefixes.values_mut().for_each(order);
        table.prefix_lens = table.prefixes.keys().map(|p| p.len()).collect();
        table.prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
        table.prefix_lens.dedup();
        table
    }

    /// The route for a request, by path, host name (in the parser's normal form: lower-case,
    /// no port, no trailing dot) and method bit (0 = other).
    pub fn find(&self, path: &[u8], host: Option<&[u8]>, method: u16) -> Option<Found<'_>> {
        let host = host.unwrap_or_default();
        let fits = |&(i, uri): &(u32, u16)| {
            let route = &self.routes[i as usize];
            if route.methods != 0 && route.methods & method == 0 {
                return None;
            }
            let host = match route.hosts.is_empty() {
                true => None,
                false => Some(route.hosts.iter().position(|p| p.matches(host))?),
            };
            Some(Found {
                idx: i as usize,
                route,
                uri: usize::from(uri),
                host,
            })
        };
        if let Some(found) = self.exact.get(path).and_then(|l| l.iter().find_map(fits)) {
            return Some(found);
        }
        for &len in self.prefix_lens.iter().filter(|&&len| len <= path.len()) {
            if let Some(found) = self
                .prefixes
                .get(&path[..len])
                .and_then(|l| l.iter().find_map(fits))
            {
                return Some(found);
            }
        }
        None
    }

    /// Node addresses in order, to tell whether a re-resolution changed anything.
    pub fn addresses(&self) -> Vec<Option<SocketAddr>> {
        self.routes
            .iter()
            .flat_map(|r| r.upstream.nodes.iter().map(|n| n.addr))
            .collect()
    }
}

fn compile_route(spec: &RouteSpec, u: &UpstreamSpec, per_core: &PerCore, env: &PluginEnv) -> Route {
    let scheme = spec
        .plugins
        .proxy_rewrite
        .as_ref()
        .and_then(|r| r.scheme)
        .unwrap_or(u.scheme);
    let nodes = u
        .nodes
        .iter()
        .map(|n| {
            let addr = match n.host.parse::<IpAddr>() {
                Ok(ip) => Some(SocketAddr::new(ip, n.port)),
                Err(_) => resolve(&n.host, n.port),
            };
            let host_port = if n.host.contains(':') {
                format!("[{}]:{}", n.host, n.port)
            } else {
                format!("{}:{}", n.host, n.port)
            };
            Node {
                addr,
                host_port: host_port.into(),
                host: n.host.as_str().into(),
                weight: n.weight,
            }
        })
        .collect();
    Route {
        id: spec.id.as_str().into(),
        methods: spec.methods,
        hosts: spec.hosts.clone(),
        priority: spec.priority,
        upstream: Upstream {
            nodes,
            tls: (scheme == Scheme::Https).then(|| tls::client_config(u.tls_verify)),
            tls_verify: u.tls_verify,
            pass_host: u.pass_host.clone(),
            timeouts: spec.timeout.unwrap_or(u.timeouts),
            retries: u.retries,
            keepalive_size: u.keepalive_size.unwrap_or(per_core.upstream_keepalive),
            keepalive_idle: u
                .keepalive_idle
                .unwrap_or(per_core.upstream_keepalive_timeout),
            keepalive_requests: u
                .keepalive_requests
                .unwrap_or(per_core.upstream_keepalive_requests),
        },
        plugins: plugins::compile(&spec.plugins, env),
        balancer_key: Arc::from(""),
        fingerprint: Box::default(),
        websocket: spec.websocket,
        uris: spec.uris.iter().map(|u| Arc::from(u.as_str())).collect(),
        host_patterns: spec.hosts.iter().map(|h| Arc::from(h.text())).collect(),
    }
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => {
            let all: Vec<SocketAddr> = addrs.by_ref().collect();
            // Prefer IPv4: `localhost` often lists ::1 first while servers listen on 127.0.0.1.
            all.iter().find(|a| a.is_ipv4()).or(all.first()).copied()
        }
        Err(e) => {
            tracing::warn!(host, port, error = %e, "upstream host name does not resolve; requests to it get 502 until it does");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::route::check_route;
    use serde_json::json;

    fn table(routes: serde_json::Value) -> RouteTable {
        let mut errors = Vec::new();
        let specs: Vec<RouteSpec> = routes
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, r)| check_route(r.clone(), &i.to_string(), &mut errors).unwrap())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        let per_core = crate::config::parse_yaml("").unwrap().per_core;
        RouteTable::compile(
            &specs,
            &Upstreams::new(),
            &per_core,
            &PluginEnv::new(crate::idp::Idp::start().unwrap(), std::env::temp_dir()),
            None,
        )
    }

    fn id<'a>(t: &'a RouteTable, path: &str, host: Option<&str>, method: &str) -> Option<&'a str> {
        let bit = crate::config::route::method_bit(method.as_bytes()).unwrap_or(0);
        t.find(path.as_bytes(), host.map(str::as_bytes), bit)
            .map(|f| &*f.route.id)
    }

    /// The patterns a request matched, as `matched_uri` and `matched_host` label them.
    fn matched(t: &RouteTable, path: &str, host: Option<&str>) -> Option<(String, String)> {
        let f = t.find(path.as_bytes(), host.map(str::as_bytes), 0)?;
        Some((
            f.route.uris[f.uri].to_string(),
            f.host
                .map_or(String::new(), |h| f.route.host_patterns[h].to_string()),
        ))
    }

    #[test]
    fn a_match_names_the_patterns_that_matched() {
        let up = json!({"nodes": {"127.0.0.1:1": 1}});
        let t = table(json!([
            {"id": "multi", "uris": ["/a", "/b/*", "/c"], "hosts": ["x.test", "*.Example.com"], "upstream": up},
            {"id": "plain", "uri": "/p/*", "upstream": up},
        ]));
        let m = |p, h| matched(&t, p, h);
        assert_eq!(
            m("/a", Some("x.test")),
            Some(("/a".into(), "x.test".into()))
        );
        assert_eq!(
            m("/b/deep/er", Some("www.example.com")),
            Some(("/b/*".into(), "*.example.com".into()))
        );
        assert_eq!(
            m("/c", Some("x.test")),
            Some(("/c".into(), "x.test".into()))
        );
        assert_eq!(m("/p/1", None), Some(("/p/*".into(), String::new())));
        assert_eq!(m("/a", Some("y.test")), None);
    }

    #[test]
    fn exact_beats_prefix_and_longer_prefix_wins() {
        let up = json!({"nodes": {"127.0.0.1:1": 1}});
        let t = table(json!([
            {"id": "all", "uri": "/*", "upstream": up},
            {"id": "api", "uri": "/api/*", "upstream": up},
            {"id": "api-v2", "uri": "/api/v2/*", "upstream": up},
            {"id": "exact", "uri": "/api/v2/health", "upstream": up},
            {"id": "post", "uri": "/form", "methods": ["POST"], "upstream": up},
            {"id": "hosted", "uris": ["/h", "/h2"], "hosts": ["*.example.com", "a.test"], "upstream": up},
            {"id": "prio-low", "uri": "/p", "priority": 1, "upstream": up},
            {"id": "prio-high", "uri": "/p", "priority": 5, "upstream": up},
        ]));
        assert_eq!(id(&t, "/api/v2/health", None, "GET"), Some("exact"));
        assert_eq!(id(&t, "/api/v2/x", None, "GET"), Some("api-v2"));
        assert_eq!(id(&t, "/api/x", None, "GET"), Some("api"));
        assert_eq!(id(&t, "/other", None, "GET"), Some("all"));
        assert_eq!(id(&t, "/form", None, "POST"), Some("post"));
        assert_eq!(id(&t, "/form", None, "GET"), Some("all"));
        assert_eq!(id(&t, "/h", Some("www.example.com"), "GET"), Some("hosted"));
        assert_eq!(id(&t, "/h2", Some("a.test"), "GET"), Some("hosted"));
        assert_eq!(id(&t, "/h", Some("example.com"), "GET"), Some("all"));
        assert_eq!(id(&t, "/p", None, "GET"), Some("prio-high"));
    }

    #[test]
    fn no_match_without_catch_all() {
        let t = table(json!([{"uri": "/only", "upstream": {"nodes": {"127.0.0.1:1": 1}}}]));
        assert_eq!(id(&t, "/other", None, "GET"), None);
        assert_eq!(id(&t, "/onlyx", None, "GET"), None);
    }
}
