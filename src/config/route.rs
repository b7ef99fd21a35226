//! Routes in APISIX's own JSON shape, checked into [`RouteSpec`]s.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::error::{deserialize_at, ranged, seconds, section, ConfigError};
pub use crate::http::h1::{valid_header_value, valid_token};
use crate::plugins::{self, Plugins};
pub use crate::upstream::{PassHost, Scheme, Timeouts};

/// APISIX route options that Portcullis does not implement; named so the error says so plainly
/// instead of calling them unknown (ignoring them would change what the route lets through).
const UNSUPPORTED_ROUTE_OPTIONS: &[&str] = &[
    "vars",
    "filter_func",
    "remote_addr",
    "remote_addrs",
    "service_id",
    "plugin_config_id",
    "script",
];

/// A route as written (APISIX field names).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    uris: Option<Vec<String>>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    hosts: Option<Vec<String>>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    status: Option<i64>,
    // Nested objects stay raw here and are checked on their own, so that one wrong value in
    // them does not hide the problems elsewhere in the route.
    #[serde(default)]
    plugins: Option<Value>,
    #[serde(default)]
    upstream: Option<Value>,
    #[serde(default)]
    upstream_id: Option<Value>,
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(default)]
    enable_websocket: Option<bool>,
    // Descriptive fields APISIX keeps: type-checked, carried in `source`, never interpreted.
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    desc: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    #[allow(dead_code)]
    create_time: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    update_time: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamConfig {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    nodes: Value,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    pass_host: Option<String>,
    #[serde(default)]
    upstream_host: Option<String>,
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(default)]
    retries: Option<i64>,
    #[serde(default)]
    keepalive_pool: Option<Value>,
    #[serde(default)]
    tls: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    desc: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutConfig {
    connect: f64,
    send: f64,
    read: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepalivePoolConfig {
    #[serde(default)]
    size: Option<i64>,
    #[serde(default)]
    idle_timeout: Option<f64>,
    #[serde(default)]
    requests: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamTlsConfig {
    #[serde(default)]
    verify: bool,
}

/// HTTP methods a route can be narrowed to, as bits.
pub const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

/// The bit of a method name in a route's method set, if it is one we route on.
pub fn method_bit(name: &[u8]) -> Option<u16> {
    METHODS
        .iter()
        .position(|m| m.as_bytes() == name)
        .map(|i| 1 << i)
}

/// Read an upstream scheme.
fn parse_scheme(s: &str, path: &str, errors: &mut Vec<ConfigError>) -> Scheme {
    match s {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => {
            errors.push(ConfigError::new(
                path,
                format!("unsupported scheme `{other}`"),
                "http, https",
            ));
            Scheme::Http
        }
    }
}

/// A host a route is narrowed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `example.com`, lowercased.
    Exact(String),
    /// `*.example.com`, kept as `.example.com`, lowercased.
    Suffix(String),
}

impl HostPattern {
    /// The pattern as a `hosts` entry writes it (lowercased): `a.test`, `*.example.com`.
    pub fn text(&self) -> String {
        match self {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Suffix(s) => format!("*{s}"),
        }
    }

    /// Whether a lowercased host (without port) matches.
    pub fn matches(&self, host: &[u8]) -> bool {
        match self {
            HostPattern::Exact(h) => h.as_bytes() == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_bytes()),
        }
    }
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Host name or IP literal.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Share of requests, relative to the other nodes.
    pub weight: u32,
}

/// A route's upstream, checked.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    /// Servers with their weights.
    pub nodes: Vec<NodeSpec>,
    /// Plain or TLS.
    pub scheme: Scheme,
    /// Host header policy.
    pub pass_host: PassHost,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Further nodes tried when connecting fails.
    pub retries: u32,
    /// Override of the per-core idle pool size for this upstream.
    pub keepalive_size: Option<usize>,
    /// Override of the idle timeout.
    pub keepalive_idle: Option<Duration>,
    /// Override of the requests per connection.
    pub keepalive_requests: Option<u64>,
    /// Verify the upstream's certificate (off by default, as in APISIX and nginx).
    pub tls_verify: bool,
}

/// A checked route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The route id.
    pub id: String,
    /// Paths: exact, or a prefix when ending in `*`.
    pub uris: Vec<String>,
    /// Allowed methods as bits of [`METHODS`]; 0 means any.
    pub methods: u16,
    /// Hosts; empty means any.
    pub hosts: Vec<HostPattern>,
    /// Higher wins among routes for the same path.
    pub priority: i64,
    /// `status: 0` disables a route without deleting it.
    pub enabled: bool,
    /// Where requests go.
    pub upstream: RouteUpstream,
    /// The route's own `timeout`, which wins over its upstream's.
    pub timeout: Option<Timeouts>,
    /// The plugins, checked.
    pub plugins: Plugins,
    /// `enable_websocket`: an `Upgrade: websocket` request is forwarded as one and, after the
    /// upstream's 101, bytes are relayed both ways.
    pub websocket: bool,
    /// The route exactly as written, for answering reads of it.
    pub source: Value,
}

/// Where a route sends requests: its own upstream, or an upstream object by id.
#[derive(Debug, Clone)]
pub enum RouteUpstream {
    /// `upstream: {…}` in the route.
    Inline(UpstreamSpec),
    /// `upstream_id`: an object of the `upstreams` list or the Admin API.
    Id(String),
}

impl RouteUpstream {
    /// The upstream object id this route depends on, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            RouteUpstream::Inline(_) => None,
            RouteUpstream::Id(id) => Some(id),
        }
    }
}

/// An upstream object (APISIX `/upstreams/{id}`), checked.
#[derive(Debug, Clone)]
pub struct UpstreamObject {
    /// Its id, which routes name in `upstream_id`.
    pub id: String,
    /// What it says.
    pub spec: UpstreamSpec,
    /// The object exactly as written, for answering reads of it.
    pub source: Value,
}

/// Upstream objects by id.
pub type Upstreams = std::collections::BTreeMap<String, UpstreamObject>;

/// Check every upstream object in a list; problems are collected with `upstreams[i]` paths.
pub fn check_upstreams(values: Vec<Value>, errors: &mut Vec<ConfigError>) -> Upstreams {
    let mut out = Upstreams::new();
    for (i, v) in values.into_iter().enumerate() {
        let prefix = format!("upstreams[{i}]");
        let mut found = Vec::new();
        match check_upstream_object(v, None, &mut found) {
            Some(u) if out.contains_key(&u.id) => found.push(ConfigError::plain(
                "id",
                format!("`{}` is used by an earlier upstream", u.id),
            )),
            Some(u) => {
                out.insert(u.id.clone(), u);
            }
            None => {}
        }
        errors.extend(found.into_iter().map(|e| e.under(&prefix)));
    }
    out
}

/// Check one upstream object; errors carry paths relative to it. `id`: the id it is stored
/// under (the Admin API's path), which a body's own `id` must agree with; else the body must
/// carry one.
pub fn check_upstream_object(
    value: Value,
    id: Option<&str>,
    errors: &mut Vec<ConfigError>,
) -> Option<UpstreamObject> {
    let Value::Object(mut map) = value else {
        errors.push(ConfigError::plain("", "an upstream must be an object"));
        return None;
    };
    let source = Value::Object(map.clone());
    let written = map.remove("id");
    // Bookkeeping APISIX writes into stored objects; not options.
    map.remove("create_time");
    map.remove("update_time");
    let id = match (written.as_ref().map(id_of), id) {
        (Some(Ok(w)), Some(path)) if w != path => {
            errors.push(ConfigError::plain(
                "id",
                format!("`{w}` differs from the id in the path, `{path}`"),
            ));
            return None;
        }
        (Some(Ok(w)), _) => w,
        (Some(Err(e)), _) => {
            errors.push(e);
            return None;
        }
        (None, Some(path)) => path.to_string(),
        (None, None) => {
            errors.push(ConfigError::new("id", "is required", ID_CHARS));
            return None;
        }
    };
    let spec = check_upstream(Value::Object(map), None, errors)?;
    Some(UpstreamObject { id, spec, source })
}

/// An object id as written: a string of the allowed characters, or a non-negative integer.
pub fn id_of(v: &Value) -> Result<String, ConfigError> {
    match v {
        Value::String(s) if valid_id(s) => Ok(s.clone()),
        Value::Number(n) if n.is_u64() => Ok(n.to_string()),
        other => Err(ConfigError::new(
            "id",
            format!("{other} is not a valid id"),
            ID_CHARS,
        )),
    }
}

/// An object's `status` (routes, SSL objects): absent or 1 is enabled, 0 disabled. Another
/// value is an error, and the object counts as enabled so the rest of it is still checked.
pub fn enabled(status: Option<i64>, errors: &mut Vec<ConfigError>) -> bool {
    match status {
        None | Some(1) => true,
        Some(0) => false,
        Some(s) => {
            errors.push(ConfigError::new(
                "status",
                format!("{s} is not a status"),
                "0 (disabled), 1 (enabled)",
            ));
            true
        }
    }
}

/// Every route's `upstream_id` names an upstream object.
pub fn check_references(routes: &[RouteSpec], upstreams: &Upstreams) -> Vec<ConfigError> {
    routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let id = r.upstream.id()?;
            (!upstreams.contains_key(id)).then(|| {
                ConfigError::new(
                    format!("routes[{i}].upstream_id"),
                    format!("no upstream has id `{id}`"),
                    known_ids(upstreams),
                )
            })
        })
        .collect()
}

/// The ids of `upstreams`, for an error's allowed values.
pub fn known_ids(upstreams: &Upstreams) -> String {
    if upstreams.is_empty() {
        "the id of an upstream object; there are none".into()
    } else {
        upstreams.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Check every route in a list; problems are collected with `routes[i]` paths.
pub fn check_routes(values: Vec<Value>, errors: &mut Vec<ConfigError>) -> Vec<RouteSpec> {
    let mut ids = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        let prefix = format!("routes[{i}]");
        let fallback_id = (i + 1).to_string();
        let mut route_errors = Vec::new();
        if let Some(route) = check_route(v, &fallback_id, &mut route_errors) {
            if !ids.insert(route.id.clone()) {
                route_errors.push(ConfigError::plain(
                    "id",
                    format!("`{}` is used by an earlier route", route.id),
                ));
            }
            out.push(route);
        }
        errors.extend(route_errors.into_iter().map(|e| e.under(&prefix)));
    }
    out
}

/// Check one route document; errors carry paths relative to the route.
pub fn check_route(
    value: Value,
    fallback_id: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<RouteSpec> {
    if let Value::Object(map) = &value {
        for key in UNSUPPORTED_ROUTE_OPTIONS {
            if map.contains_key(*key) {
                errors.push(ConfigError::plain(
                    *key,
                    "is an APISIX option Portcullis does not support",
                ));
            }
        }
        if !errors.is_empty() {
            return None;
        }
    } else {
        errors.push(ConfigError::plain("", "a route must be an object"));
        return None;
    }
    let source = value.clone();
    let raw: RouteConfig = match deserialize_at(value, "") {
        Ok(r) => r,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let id = match raw.id.as_ref().map(id_of) {
        None => fallback_id.to_string(),
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            errors.push(e);
            fallback_id.to_string()
        }
    };
    let uris = match (raw.uri, raw.uris) {
        (Some(u), None) => vec![u],
        (None, Some(us)) if !us.is_empty() => us,
        (Some(_), Some(_)) => {
            errors.push(ConfigError::plain(
                "uris",
                "give either `uri` or `uris`, not both",
            ));
            Vec::new()
        }
        _ => {
            errors.push(ConfigError::new(
                "uri",
                "is required",
                "a path such as /get, or a prefix such as /api/*",
            ));
            Vec::new()
        }
    };
    for (i, u) in uris.iter().enumerate() {
        let star = u.find('*');
        if !u.starts_with('/')
            || star.is_some_and(|p| p != u.len() - 1)
            || u.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            errors.push(ConfigError::new(
                format!("uris[{i}]"),
                format!("`{u}` is not a route path"),
                "a path starting with /, optionally ending in * for a prefix",
            ));
        }
    }
    let mut methods = 0u16;
    for (i, m) in raw.methods.iter().flatten().enumerate() {
        match method_bit(m.as_bytes()) {
            Some(bit) => methods |= bit,
            None => errors.push(ConfigError::new(
                format!("methods[{i}]"),
                format!("unknown method `{m}`"),
                METHODS.join(", "),
            )),
        }
    }
    let host_list = match (raw.host, raw.hosts) {
        (Some(h), None) => vec![h],
        (None, Some(hs)) => hs,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => {
            errors.push(ConfigError::plain(
                "hosts",
                "give either `host` or `hosts`, not both",
            ));
            Vec::new()
        }
    };
    let hosts = host_list
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            // The parser drops a trailing dot from request hosts; patterns match that form.
            let lower = h.to_ascii_lowercase();
            let lower = lower.strip_suffix('.').map(str::to_owned).unwrap_or(lower);
            let ok_chars = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            };
            if let Some(rest) = lower.strip_prefix("*.") {
                if ok_chars(rest) {
                    return Some(HostPattern::Suffix(format!(".{rest}")));
                }
            } else if ok_chars(&lower) {
                return Some(HostPattern::Exact(lower));
            }
            errors.push(ConfigError::new(
                format!("hosts[{i}]"),
                format!("`{h}` is not a host name"),
                "a DNS name, or *.name for its subdomains",
            ));
            None
        })
        .collect();
    let enabled = enabled(raw.status, errors);
    let plugins = match raw.plugins {
        None => Plugins::default(),
        Some(Value::Object(map)) => plugins::check(map, errors),
        Some(_) => {
            errors.push(ConfigError::new(
                "plugins",
                "must be a map",
                "{\"plugin-name\": {…}}",
            ));
            Plugins::default()
        }
    };
    let route_timeout = section::<TimeoutConfig>(raw.timeout, "timeout", errors)
        .map(|t| timeouts(&t, "timeout", errors));
    let upstream = match (raw.upstream, raw.upstream_id) {
        (Some(u), None) => {
            let mut found = Vec::new();
            let spec = check_upstream(u, route_timeout, &mut found);
            errors.extend(found.into_iter().map(|e| e.under("upstream")));
            RouteUpstream::Inline(spec?)
        }
        (None, Some(id)) => match id_of(&id) {
            Ok(id) => RouteUpstream::Id(id),
            Err(_) => {
                errors.push(ConfigError::new(
                    "upstream_id",
                    format!("{id} is not a valid id"),
                    ID_CHARS,
                ));
                return None;
            }
        },
        (Some(_), Some(_)) => {
            errors.push(ConfigError::plain(
                "upstream_id",
                "give either `upstream` or `upstream_id`, not both",
            ));
            return None;
        }
        (None, None) => {
            errors.push(ConfigError::new(
                "upstream",
                "is required",
                "an upstream object, or upstream_id naming one",
            ));
            return None;
        }
    };
    Some(RouteSpec {
        id,
        uris,
        methods,
        hosts,
        priority: raw.priority.unwrap_or(0),
        enabled,
        upstream,
        timeout: route_timeout,
        plugins,
        websocket: raw.enable_websocket == Some(true),
        source,
    })
}

/// What an object id may be made of.
const ID_CHARS: &str = "1 to 64 of A-Z a-z 0-9 - _ .";

fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn timeouts(t: &TimeoutConfig, path: &str, errors: &mut Vec<ConfigError>) -> Timeouts {
    Timeouts {
        connect: seconds(t.connect, &format!("{path}.connect"), errors),
        send: seconds(t.send, &format!("{path}.send"), errors),
        read: seconds(t.read, &format!("{path}.read"), errors),
    }
}

fn check_upstream(
    value: Value,
    route_timeout: Option<Timeouts>,
    errors: &mut Vec<ConfigError>,
) -> Option<UpstreamSpec> {
    let u: UpstreamConfig = match deserialize_at(value, "") {
        Ok(u) => u,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    match u.kind.as_deref() {
        None | Some("roundrobin") => {}
        Some(other) => errors.push(ConfigError::new(
            "type",
            format!("unsupported balancer `{other}`"),
            "roundrobin",
        )),
    }
    let nodes = check_nodes(&u.nodes, errors);
    let scheme = parse_scheme(u.scheme.as_deref().unwrap_or("http"), "scheme", errors);
    let pass_host = match (u.pass_host.as_deref().unwrap_or("pass"), u.upstream_host) {
        ("pass", _) => PassHost::Pass,
        ("node", _) => PassHost::Node,
        ("rewrite", Some(h)) if valid_header_value(&h) && !h.is_empty() => PassHost::Rewrite(h),
        ("rewrite", _) => {
            errors.push(ConfigError::plain(
                "upstream_host",
                "is required when pass_host is rewrite",
            ));
            PassHost::Pass
        }
        (other, _) => {
            errors.push(ConfigError::new(
                "pass_host",
                format!("unknown value `{other}`"),
                "pass, node, rewrite",
            ));
            PassHost::Pass
        }
    };
    let upstream_timeout = section::<TimeoutConfig>(u.timeout, "timeout", errors)
        .map(|t| timeouts(&t, "timeout", errors));
    let timeouts = route_timeout.or(upstream_timeout).unwrap_or_default();
    let retries = match u.retries {
        None => nodes.len().saturating_sub(1) as u32,
        Some(r) => ranged(r, 0, 100, "retries", errors) as u32,
    };
    let kp = section::<KeepalivePoolConfig>(u.keepalive_pool, "keepalive_pool", errors);
    let kp = kp.as_ref();
    let tls = section::<UpstreamTlsConfig>(u.tls, "tls", errors);
    Some(UpstreamSpec {
        nodes,
        scheme,
        pass_host,
        timeouts,
        retries,
        keepalive_size: kp
            .and_then(|k| k.size)
            .map(|s| ranged(s, 0, 100_000, "keepalive_pool.size", errors) as usize),
        keepalive_idle: kp
            .and_then(|k| k.idle_timeout)
            .map(|s| seconds(s, "keepalive_pool.idle_timeout", errors)),
        keepalive_requests: kp
            .and_then(|k| k.requests)
            .map(|r| ranged(r, 1, i64::MAX, "keepalive_pool.requests", errors) as u64),
        tls_verify: tls.is_some_and(|t| t.verify),
    })
}

fn check_nodes(v: &Value, errors: &mut Vec<ConfigError>) -> Vec<NodeSpec> {
    const ALLOWED: &str = "{\"host:port\": weight} or [{\"host\": …, \"port\": …, \"weight\": …}]";
    let path = "nodes";
    let mut nodes = Vec::new();
    let weight_of = |w: &Value, p: &str, errors: &mut Vec<ConfigError>| match w.as_i64() {
        Some(w) => ranged(w, 0, 1_000_000, p, errors) as u32,
        None => {
            errors.push(ConfigError::new(
                p,
                format!("{w} is not a weight"),
                "0 to 1000000",
            ));
            0
        }
    };
    match v {
        Value::Object(map) => {
            for (addr, w) in map {
                let p = format!("{path}.{addr}");
                let weight = weight_of(w, &p, errors);
                match split_host_port(addr) {
                    Some((host, port)) => nodes.push(NodeSpec { host, port, weight }),
                    None => errors.push(ConfigError::new(
                        p,
                        format!("`{addr}` is not host:port"),
                        "host:port, e.g. 127.0.0.1:1980",
                    )),
                }
            }
        }
        Value::Array(list) => {
            for (i, n) in list.iter().enumerate() {
                let p = format!("{path}[{i}]");
                let host = n.get("host").and_then(Value::as_str);
                let port = n
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok());
                let extra = n.as_object().and_then(|o| {
                    o.keys().find(|k| {
                        !["host", "port", "weight", "priority", "metadata"].contains(&k.as_str())
                    })
                });
                if let Some(k) = extra {
                    errors.push(ConfigError::new(
                        format!("{p}.{k}"),
                        format!("unknown option `{k}`"),
                        "host, port, weight",
                    ));
                }
                let weight = n
                    .get("weight")
                    .map(|w| weight_of(w, &format!("{p}.weight"), errors))
                    .unwrap_or(1);
                match (host, port) {
                    (Some(h), Some(port)) if valid_host(h) => nodes.push(NodeSpec {
                        host: h.trim_matches(['[', ']']).to_string(),
                        port,
                        weight,
                    }),
                    _ => errors.push(ConfigError::new(
                        p,
                        "a node needs a host and a port",
                        ALLOWED,
                    )),
                }
            }
        }
        _ => errors.push(ConfigError::new(path, "must be a map or a list", ALLOWED)),
    }
    if nodes.is_empty() && matches!(v, Value::Object(_) | Value::Array(_)) && errors.is_empty() {
        errors.push(ConfigError::new(path, "no nodes", ALLOWED));
    } else if !nodes.is_empty() && nodes.iter().all(|n| n.weight == 0) {
        errors.push(ConfigError::new(
            path,
            "every node has weight 0",
            "at least one weight above 0",
        ));
    }
    nodes
}

fn valid_host(h: &str) -> bool {
    let h = h.trim_matches(['[', ']']);
    !h.is_empty()
        && (h.parse::<std::net::IpAddr>().is_ok()
            || h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'))
}

/// Split `host:port`, `[v6]:port`; the port is required.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        s.rsplit_once(':')?
    };
    let port = port.parse::<u16>().ok()?;
    (valid_host(host) && port != 0).then(|| (host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> (Option<RouteSpec>, Vec<String>) {
        let mut errors = Vec::new();
        let r = check_route(v, "1", &mut errors);
        (r, errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn apisix_shape_is_accepted() {
        let (r, e) = check(
            json!({"id": "7", "uri": "/api/*", "methods": ["GET", "POST"], "host": "*.Example.com",
            "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 2, "[::1]:1981": 1},
                          "timeout": {"connect": 1, "send": 2, "read": 0.5}}}),
        );
        assert!(e.is_empty(), "{e:?}");
        let r = r.unwrap();
        assert_eq!(r.id, "7");
        assert_eq!(r.hosts, vec![HostPattern::Suffix(".example.com".into())]);
        let RouteUpstream::Inline(u) = &r.upstream else {
            panic!("inline upstream expected");
        };
        assert_eq!(u.nodes.len(), 2);
        assert_eq!(u.timeouts.read, Duration::from_millis(500));
        assert_eq!(u.retries, 1);
    }

    #[test]
    fn node_list_shape() {
        let (r, e) = check(
            json!({"uri": "/", "upstream": {"nodes": [{"host": "localhost", "port": 80, "weight": 3}]}}),
        );
        assert!(e.is_empty(), "{e:?}");
        let Some(RouteUpstream::Inline(u)) = r.map(|r| r.upstream) else {
            panic!("inline upstream expected");
        };
        assert_eq!(
            u.nodes[0],
            NodeSpec {
                host: "localhost".into(),
                port: 80,
                weight: 3
            }
        );
    }

    #[test]
    fn problems_name_their_fields() {
        let (_, e) = check(
            json!({"uri": "x", "methods": ["FETCH"], "upstream": {"type": "chash", "nodes": {"nope": 1}, "pass_host": "rewrite"}}),
        );
        let all = e.join("\n");
        assert!(all.contains("uris[0]: `x` is not a route path"), "{all}");
        assert!(all.contains("methods[0]: unknown method `FETCH`"), "{all}");
        assert!(
            all.contains("upstream.type: unsupported balancer `chash` (allowed: roundrobin)"),
            "{all}"
        );
        assert!(
            all.contains("upstream.nodes.nope: `nope` is not host:port"),
            "{all}"
        );
        assert!(
            all.contains("upstream.upstream_host: is required when pass_host is rewrite"),
            "{all}"
        );
    }

    #[test]
    fn unsupported_and_unknown_options() {
        let (_, e) = check(json!({"uri": "/", "vars": [], "upstream": {"nodes": {"a:1": 1}}}));
        assert_eq!(
            e,
            vec!["vars: is an APISIX option Portcullis does not support"]
        );
        let (_, e) = check(json!({"uri": "/", "bogus": 1, "upstream": {"nodes": {"a:1": 1}}}));
        assert!(
            e[0].starts_with("bogus: unknown option `bogus` (allowed: id, uri,"),
            "{e:?}"
        );
    }
}
