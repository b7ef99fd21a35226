//! The counters behind `/metrics`: one block per worker, written only by that worker's thread,
//! read by the status thread's scrape. A worker never writes a cache line another core writes,
//! so counting costs the request path no cross-core traffic; a scrape adds the blocks up.
//!
//! Single-writer counters are relaxed atomics updated by a load and a store (no locked
//! read-modify-write): only the owning thread writes them, and a reader on another thread sees
//! each value whole, at worst a few increments late.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::error::AuthKind;

/// A counter (or gauge) written by one thread only.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n`. Only the owning thread may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Add one. Only the owning thread may call this.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Take one off a gauge. Only the owning thread may call this.
    #[inline]
    pub fn dec(&self) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(1), Relaxed);
    }

    /// Set a gauge. Only the owning thread may call this.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    /// The current value (any thread).
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A histogram of `N` finite buckets (bounds given by the caller, in the unit observed) plus
/// `+Inf`, written by one thread. Buckets hold their own counts, not cumulative ones, so an
/// observation touches one bucket; the scrape accumulates. The count is the buckets' sum, so
/// a scrape never shows a count that disagrees with its buckets.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    buckets: [Counter; N],
    over: Counter,
    sum: Counter,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| Counter::default()),
            over: Counter::default(),
            sum: Counter::default(),
        }
    }
}

impl<const N: usize> Histogram<N> {
    /// Record `v` (same unit as `bounds`). Only the owning thread may call this.
    #[inline]
    pub fn observe(&self, bounds: &[u64; N], v: u64) {
        // `le` is inclusive: the first bound not below `v`. Scanned from the bottom rather than
        // bisected: a proxy's latencies sit in the lowest buckets, where this takes one or two
        // comparisons against a bisection's four, and a slow request has time to spare.
        let i = bounds.iter().position(|&b| v <= b).unwrap_or(N);
        match self.buckets.get(i) {
            Some(b) => b.inc(),
            None => self.over.inc(),
        }
        self.sum.add(v);
    }

    /// Add this histogram's counts into `into`: `N` buckets then `+Inf`, non-cumulative.
    pub fn add_to(&self, into: &mut HistogramSum) {
        if into.buckets.len() < N + 1 {
            into.buckets.resize(N + 1, 0);
        }
        for (i, b) in self.buckets.iter().enumerate() {
            into.buckets[i] += b.get();
        }
        into.buckets[N] += self.over.get();
        into.sum += self.sum.get();
    }
}

/// Histograms added up across blocks, as the scrape renders them.
#[derive(Debug, Default, Clone)]
pub struct HistogramSum {
    /// Per-bucket counts (the last is `+Inf`), not cumulative.
    pub buckets: Vec<u64>,
    /// Sum of observations, in the unit observed.
    pub sum: u64,
}

/// A counter shared by threads (control plane: rare events, several writers).
#[derive(Debug, Default)]
pub struct SharedCounter(AtomicU64);

impl SharedCounter {
    /// Add one (any thread).
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// APISIX's `prometheus` plugin latency buckets, in milliseconds.
pub const LATENCY_BUCKETS_MS: [u64; 15] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000,
];
/// The same bounds in microseconds, the unit request latencies are observed in.
pub const LATENCY_BOUNDS_US: [u64; 15] = {
    let mut b = [0; 15];
    let mut i = 0;
    while i < 15 {
        b[i] = LATENCY_BUCKETS_MS[i] * 1000;
        i += 1;
    }
    b
};
/// IdP call duration bounds, in microseconds (rendered in seconds).
pub const IDP_BOUNDS_US: [u64; 11] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

/// A request latency histogram.
pub type Latency = Histogram<15>;
/// An IdP call duration histogram.
pub type IdpDuration = Histogram<11>;

/// How `openid-connect` authenticated (or tried to) a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A JWT bearer token checked with keys.
    Jwt,
    /// A bearer token checked by introspection.
    Introspection,
    /// The browser login flow's session cookie.
    Session,
}

impl AuthMethod {
    /// Every method, in counter order.
    pub const ALL: [AuthMethod; 3] = [
        AuthMethod::Jwt,
        AuthMethod::Introspection,
        AuthMethod::Session,
    ];

    /// The method as a label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::Introspection => "introspection",
            AuthMethod::Session => "session",
        }
    }
}

/// A step of the browser login flow that answers the request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginStep {
    /// A request without a session sent to the IdP's authorization endpoint.
    Redirect,
    /// The IdP's redirect back with a code (or an error).
    Callback,
    /// The logout path.
    Logout,
}

impl LoginStep {
    /// Every step, in counter order.
    pub const ALL: [LoginStep; 3] = [LoginStep::Redirect, LoginStep::Callback, LoginStep::Logout];

    /// The step as a label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginStep::Redirect => "redirect",
            LoginStep::Callback => "callback",
            LoginStep::Logout => "logout",
        }
    }
}

/// Refusal reasons in counter order (after `ok`, which is index 0).
pub const AUTH_KINDS: [AuthKind; 11] = [
    AuthKind::NoToken,
    AuthKind::Malformed,
    AuthKind::Expired,
    AuthKind::NotYetValid,
    AuthKind::BadSignature,
    AuthKind::UnknownKid,
    AuthKind::BadIssuer,
    AuthKind::BadAudience,
    AuthKind::InsufficientScope,
    AuthKind::Inactive,
    AuthKind::IdpError,
];

/// Outcomes counted per method: `ok`, then each of [`AUTH_KINDS`].
pub const AUTH_OUTCOMES: usize = AUTH_KINDS.len() + 1;

/// An authentication outcome's counter index: `None` is `ok`.
fn outcome_index(refused: Option<AuthKind>) -> usize {
    refused.map_or(0, |k| k as usize + 1)
}

/// The label of outcome index `i`.
pub fn outcome_label(i: usize) -> &'static str {
    match i {
        0 => "ok",
        i => AUTH_KINDS[i - 1].as_str(),
    }
}

/// Counts keyed by a small label tuple (a status code, the matched patterns and a node address), in a fixed table
/// the owning thread fills: a slot's key is written before its tag is published (release), so
/// a reader that sees the tag (acquire) sees the key. Keys past the table's size are counted in
/// `overflow`, so the label set stays bounded whatever the traffic.
#[derive(Debug)]
pub struct Keyed<const N: usize> {
    slots: [KeyedSlot; N],
    /// Counts whose key found no free slot.
    pub overflow: Counter,
}

#[derive(Debug, Default)]
struct KeyedSlot {
    /// 0: free; else `code | 1 << 16 (node present) | 1 << 17 (published) | uri code << 18 |
    /// host code << 25`.
    tag: AtomicU32,
    ip: [AtomicU64; 2],
    count: Counter,
}

const TAG_NODE: u32 = 1 << 16;
const TAG_USED: u32 = 1 << 17;
const TAG_URI_SHIFT: u32 = 18;
const TAG_HOST_SHIFT: u32 = 25;

/// Which of a route's patterns a request matched, as codes of its [`RouteStats`] block
/// (0: none or unknown; `n`: the block's pattern `n - 1`). Seven bits each, in the slot's tag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Matched {
    /// The `uri` pattern's code.
    pub uri: u8,
    /// The `host` pattern's code.
    pub host: u8,
}

/// Most pattern codes a block hands out of each kind; later patterns count unlabelled.
pub const MAX_PATTERN_CODES: usize = 127;

impl<const N: usize> Default for Keyed<N> {
    fn default() -> Self {
        Keyed {
            slots: std::array::from_fn(|_| KeyedSlot::default()),
            overflow: Counter::default(),
        }
    }
}

/// One key of a [`Keyed`] table as the scrape reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// The status code (0 where the table counts no code).
    pub code: u16,
    /// The route patterns the request matched.
    pub matched: Matched,
    /// The node's address, as an IPv6 (IPv4-mapped) number.
    pub node: Option<u128>,
}

impl Key {
    /// The node label value: the address, or empty.
    pub fn node_label(&self) -> String {
        match self.node {
            None => String::new(),
            Some(n) => {
                let v6 = std::net::Ipv6Addr::from(n);
                match v6.to_ipv4_mapped() {
                    Some(v4) => v4.to_string(),
                    None => v6.to_string(),
                }
            }
        }
    }
}

/// A node address as a [`Key`] node.
pub fn node_key(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        std::net::IpAddr::V6(v6) => u128::from(v6),
    }
}

impl<const N: usize> Keyed<N> {
    /// Add one under `(code, matched, node)`. Only the owning thread may call this.
    #[inline]
    pub fn inc(&self, code: u16, matched: Matched, node: Option<u128>) {
        let tag = TAG_USED
            | code as u32
            | if node.is_some() { TAG_NODE } else { 0 }
            | u32::from(matched.uri & 0x7f) << TAG_URI_SHIFT
            | u32::from(matched.host & 0x7f) << TAG_HOST_SHIFT;
        let ip = node.unwrap_or(0);
        let (hi, lo) = ((ip >> 64) as u64, ip as u64);
        for s in &self.slots {
            let t = s.tag.load(Relaxed);
            if t == 0 {
                s.ip[0].store(hi, Relaxed);
                s.ip[1].store(lo, Relaxed);
                s.count.set(1);
                s.tag.store(tag, std::sync::atomic::Ordering::Release);
                return;
            }
            if t == tag && s.ip[0].load(Relaxed) == hi && s.ip[1].load(Relaxed) == lo {
                s.count.inc();
                return;
            }
        }
        self.overflow.inc();
    }

    /// Every published key with its count.
    pub fn each(&self, mut f: impl FnMut(Key, u64)) {
        for s in &self.slots {
            let t = s.tag.load(std::sync::atomic::Ordering::Acquire);
            if t == 0 {
                break;
            }
            let ip = (u128::from(s.ip[0].load(Relaxed)) << 64) | u128::from(s.ip[1].load(Relaxed));
            let key = Key {
                code: (t & 0xffff) as u16,
                matched: Matched {
                    uri: (t >> TAG_URI_SHIFT & 0x7f) as u8,
                    host: (t >> TAG_HOST_SHIFT & 0x7f) as u8,
                },
                node: (t & TAG_NODE != 0).then_some(ip),
            };
            f(key, s.count.get());
        }
    }
}

/// Latency kinds, in APISIX's `type` label values.
pub const LATENCY_TYPES: [&str; 3] = ["request", "upstream", "apisix"];

/// What one core counted for one route (or, with an empty id, for requests no route took).
/// Aligned so that two blocks never share a cache line.
#[repr(align(128))]
#[derive(Debug)]
pub struct RouteStats {
    /// The route id (the `route` label).
    pub id: Arc<str>,
    /// Answers by status code and upstream node.
    pub status: Keyed<16>,
    /// Latency in microseconds, by [`LATENCY_TYPES`].
    pub latency: [Latency; 3],
    /// Request bytes received (head and body).
    pub ingress: Counter,
    /// Response bytes sent.
    pub egress: Counter,
    /// Authentication outcomes by [`AuthMethod::ALL`] and outcome index.
    pub auth: [[Counter; AUTH_OUTCOMES]; 3],
    /// Failed connects by upstream node.
    pub connect_errors: Keyed<8>,
    /// Login-flow steps by [`LoginStep::ALL`] and outcome index.
    pub login: [[Counter; AUTH_OUTCOMES]; 3],
    /// The `uri` and `host` patterns [`Matched`] codes name, appended as routes with this id
    /// are compiled: a route changed to other patterns keeps its counts, and each count keeps
    /// the pattern it was made under. Locked when a core first serves a table's route, and by
    /// a scrape.
    patterns: Mutex<Patterns>,
}

/// The patterns a block's codes stand for, in code order (code `n` is entry `n - 1`).
#[derive(Debug, Default, Clone)]
pub struct Patterns {
    /// `uri` patterns as written (`/api/*`).
    pub uris: Vec<Arc<str>>,
    /// `host` patterns (`*.example.com`).
    pub hosts: Vec<Arc<str>>,
}

impl Patterns {
    /// The label value of a code: the pattern, or empty for none.
    pub fn label(list: &[Arc<str>], code: u8) -> &str {
        code.checked_sub(1)
            .and_then(|i| list.get(usize::from(i)))
            .map_or("", |p| p)
    }
}

/// A compiled route's patterns as codes of its block, by the route's own indexes.
#[derive(Debug, Default)]
pub struct PatternCodes {
    uris: Box<[u8]>,
    hosts: Box<[u8]>,
}

impl PatternCodes {
    /// The codes of the route's `uri` pattern `uri` and host pattern `host` (`None`: the route
    /// names no host).
    #[inline]
    pub fn matched(&self, uri: usize, host: Option<usize>) -> Matched {
        Matched {
            uri: self.uris.get(uri).copied().unwrap_or(0),
            host: host.and_then(|h| self.hosts.get(h)).copied().unwrap_or(0),
        }
    }
}

impl RouteStats {
    /// Codes for a route's patterns, registering those this block has not seen.
    pub fn codes(&self, uris: &[Arc<str>], hosts: &[Arc<str>]) -> PatternCodes {
        let mut p = self.patterns.lock().unwrap_or_else(|e| e.into_inner());
        let code = |list: &mut Vec<Arc<str>>, pattern: &Arc<str>| -> u8 {
            let i = match list.iter().position(|q| q == pattern) {
                Some(i) => i,
                None if list.len() < MAX_PATTERN_CODES => {
                    list.push(pattern.clone());
                    list.len() - 1
                }
                None => return 0,
            };
            (i + 1) as u8
        };
        PatternCodes {
            uris: uris.iter().map(|u| code(&mut p.uris, u)).collect(),
            hosts: hosts.iter().map(|h| code(&mut p.hosts, h)).collect(),
        }
    }

    /// The patterns this block's codes stand for.
    pub fn patterns(&self) -> Patterns {
        self.patterns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn new(id: Arc<str>) -> RouteStats {
        RouteStats {
            id,
            patterns: Mutex::default(),
            status: Keyed::default(),
            latency: Default::default(),
            ingress: Counter::default(),
            egress: Counter::default(),
            auth: std::array::from_fn(|_| std::array::from_fn(|_| Counter::default())),
            connect_errors: Keyed::default(),
            login: std::array::from_fn(|_| std::array::from_fn(|_| Counter::default())),
        }
    }

    /// Count a login-flow step's outcome (`None`: it went on as it should).
    #[inline]
    pub fn login(&self, step: LoginStep, refused: Option<AuthKind>) {
        self.login[step as usize][outcome_index(refused)].inc();
    }

    /// Count an authentication outcome (`None`: accepted).
    #[inline]
    pub fn auth(&self, method: AuthMethod, refused: Option<AuthKind>) {
        self.auth[method as usize][outcome_index(refused)].inc();
    }
}

/// Connection states in nginx's names, as `apisix_nginx_http_current_connections` labels them:
/// reading a request head, handling a request (forwarding, writing the answer), idle between
/// requests.
pub const CONN_STATES: [&str; 3] = ["reading", "writing", "waiting"];

/// Which per-core cache a [`CacheStats`] counts: verified JWTs, introspection answers, opened
/// login sessions.
pub const CACHE_NAMES: [&str; 3] = ["jwt", "introspection", "session"];

/// One per-core cache's counters.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: Counter,
    /// Lookups that found nothing alive.
    pub misses: Counter,
    /// Live entries dropped to make room (the entry or byte bound).
    pub evictions: Counter,
    /// Entries held (a gauge).
    pub entries: Counter,
}

/// What one worker counts. Only that worker's thread writes it.
#[repr(align(128))]
#[derive(Debug)]
pub struct CoreMetrics {
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections handled (accepted and served, not dropped at the connection limit).
    pub handled: Counter,
    /// Open client connections (a gauge).
    pub active: Counter,
    /// Open client connections by [`CONN_STATES`] (gauges).
    pub states: [Counter; 3],
    /// Requests answered.
    pub requests: Counter,
    /// The caches, by [`CACHE_NAMES`].
    pub caches: [Arc<CacheStats>; 3],
    /// Requests no route took (bad requests, no match).
    pub unrouted: Arc<RouteStats>,
    /// Per-route blocks by id, created by this worker the first time it serves a route id;
    /// locked only then, when the worker takes a new table, and by a scrape. A map, since a
    /// new table makes every route look its block up again.
    routes: Mutex<HashMap<Arc<str>, Arc<RouteStats>>>,
}

impl CoreMetrics {
    fn new() -> CoreMetrics {
        CoreMetrics {
            accepted: Counter::default(),
            handled: Counter::default(),
            active: Counter::default(),
            states: Default::default(),
            requests: Counter::default(),
            caches: Default::default(),
            unrouted: Arc::new(RouteStats::new(Arc::from(""))),
            routes: Mutex::default(),
        }
    }

    /// This core's block for route `id`, created on first use. Counts stay with the id across
    /// reloads, so a changed route keeps counting where it was.
    pub fn route(&self, id: &Arc<str>) -> Arc<RouteStats> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(id.clone())
            .or_insert_with(|| Arc::new(RouteStats::new(id.clone())))
            .clone()
    }

    /// Drop the blocks of route ids `live` says are gone, so that ids which come and go (Admin
    /// API POSTs, etcd churn) do not pile up blocks until a restart; a deleted route's series
    /// leave `/metrics` with it, and an id created again starts from zero.
    pub fn retain_routes(&self, live: impl Fn(&str) -> bool) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.retain(|id, _| live(id));
    }

    /// Every route block this core has, the unrouted one first.
    pub fn routes(&self) -> Vec<Arc<RouteStats>> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        std::iter::once(self.unrouted.clone())
            .chain(routes.values().cloned())
            .collect()
    }
}

/// The process's metrics: every worker's block, found by the scrape.
#[derive(Debug)]
pub struct Registry {
    enabled: bool,
    cores: Mutex<Vec<Arc<CoreMetrics>>>,
}

impl Registry {
    /// A registry; with `enabled` false workers get no block and count nothing.
    pub fn new(enabled: bool) -> Registry {
        Registry {
            enabled,
            cores: Mutex::new(Vec::new()),
        }
    }

    /// Whether workers count.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A new worker's block, or `None` when metrics are off.
    pub fn new_core(&self) -> Option<Arc<CoreMetrics>> {
        if !self.enabled {
            return None;
        }
        let core = Arc::new(CoreMetrics::new());
        self.cores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(core.clone());
        Some(core)
    }

    /// Every worker's block.
    pub fn cores(&self) -> Vec<Arc<CoreMetrics>> {
        self.cores.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Where a configuration change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// The config file, re-read on SIGHUP.
    File,
    /// The Admin API.
    Admin,
    /// etcd.
    Etcd,
}

impl ConfigSource {
    /// Every source, in counter order.
    pub const ALL: [ConfigSource; 3] =
        [ConfigSource::File, ConfigSource::Admin, ConfigSource::Etcd];

    /// The source as a label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSource::File => "file",
            ConfigSource::Admin => "admin",
            ConfigSource::Etcd => "etcd",
        }
    }
}

/// Configuration changes by source and outcome (`[source][0]` applied, `[1]` rejected). The
/// control plane counts here from whichever thread applies a change.
pub static CONFIG_CHANGES: [[SharedCounter; 2]; 3] = [
    [
        SharedCounter(AtomicU64::new(0)),
        SharedCounter(AtomicU64::new(0)),
    ],
    [
        SharedCounter(AtomicU64::new(0)),
        SharedCounter(AtomicU64::new(0)),
    ],
    [
        SharedCounter(AtomicU64::new(0)),
        SharedCounter(AtomicU64::new(0)),
    ],
];

/// Count a configuration change from `source`: applied, or rejected as invalid.
pub fn config_changed(source: ConfigSource, applied: bool) {
    CONFIG_CHANGES[source as usize][usize::from(!applied)].inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_indexes_follow_the_kinds() {
        for (i, k) in AUTH_KINDS.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}");
            assert_eq!(outcome_label(outcome_index(Some(*k))), k.as_str());
        }
        assert_eq!(outcome_label(outcome_index(None)), "ok");
        for (i, m) in AuthMethod::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i);
        }
        for (i, s) in LoginStep::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
    }

    #[test]
    fn histogram_buckets_are_inclusive_and_count_overflow() {
        let h = Latency::default();
        for v in [0, 1000, 1001, 60_000_000, 60_000_001] {
            h.observe(&LATENCY_BOUNDS_US, v);
        }
        let mut s = HistogramSum::default();
        h.add_to(&mut s);
        assert_eq!(s.buckets.len(), 16);
        assert_eq!(s.buckets[0], 2, "0 and exactly 1 ms are <= 1 ms");
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[14], 1);
        assert_eq!(s.buckets[15], 1, "+Inf");
        assert_eq!(s.sum, 1000 + 1001 + 60_000_000 + 60_000_001);
    }

    #[test]
    fn keyed_counts_by_key_and_overflows_past_its_size() {
        let k = Keyed::<2>::default();
        let a = node_key("10.0.0.1".parse().unwrap());
        let m = Matched { uri: 1, host: 127 };
        k.inc(200, m, Some(a));
        k.inc(200, m, Some(a));
        k.inc(200, Matched::default(), None);
        k.inc(404, m, None);
        let mut seen = Vec::new();
        k.each(|key, n| seen.push((key, n)));
        assert_eq!(
            seen,
            [
                (
                    Key {
                        code: 200,
                        matched: m,
                        node: Some(a)
                    },
                    2
                ),
                (
                    Key {
                        code: 200,
                        matched: Matched::default(),
                        node: None
                    },
                    1
                )
            ]
        );
        assert_eq!(seen[0].0.node_label(), "10.0.0.1");
        assert_eq!(k.overflow.get(), 1);
    }

    #[test]
    fn pattern_codes_keep_their_pattern_across_changes_of_the_route() {
        let r = RouteStats::new("r1".into());
        let a: Arc<str> = "/a".into();
        let b: Arc<str> = "/b/*".into();
        let h: Arc<str> = "*.example.com".into();
        let first = r.codes(&[a.clone(), b.clone()], std::slice::from_ref(&h));
        assert_eq!(first.matched(1, Some(0)), Matched { uri: 2, host: 1 });
        assert_eq!(first.matched(0, None), Matched { uri: 1, host: 0 });
        // The route changed to other patterns: old codes still name the old ones.
        let c: Arc<str> = "/c".into();
        let second = r.codes(&[c.clone(), a.clone()], &[]);
        assert_eq!(second.matched(0, None), Matched { uri: 3, host: 0 });
        assert_eq!(second.matched(1, None), Matched { uri: 1, host: 0 });
        // An index the route does not have is unlabelled, never a panic.
        assert_eq!(second.matched(9, Some(9)), Matched::default());
        let p = r.patterns();
        assert_eq!(Patterns::label(&p.uris, 2), "/b/*");
        assert_eq!(Patterns::label(&p.uris, 3), "/c");
        assert_eq!(Patterns::label(&p.hosts, 1), "*.example.com");
        assert_eq!(Patterns::label(&p.uris, 0), "");
        assert_eq!(Patterns::label(&p.uris, 99), "");
        // Past the code space, patterns count unlabelled.
        let many: Vec<Arc<str>> = (0..200).map(|i| Arc::from(format!("/{i}"))).collect();
        let codes = r.codes(&many, &[]);
        assert_eq!(codes.matched(199, None).uri, 0);
        assert_eq!(r.patterns().uris.len(), MAX_PATTERN_CODES);
    }

    #[test]
    fn blocks_of_deleted_routes_are_dropped() {
        let c = CoreMetrics::new();
        let (one, two): (Arc<str>, Arc<str>) = ("1".into(), "2".into());
        c.route(&one).ingress.add(5);
        c.route(&two).ingress.add(7);
        c.retain_routes(|id| id == "2");
        let ids: Vec<String> = c.routes().iter().map(|r| r.id.to_string()).collect();
        assert_eq!(ids, ["", "2"]);
        assert_eq!(c.route(&two).ingress.get(), 7);
        assert_eq!(c.route(&one).ingress.get(), 0);
    }

    #[test]
    fn a_disabled_registry_hands_out_no_blocks() {
        assert!(Registry::new(false).new_core().is_none());
        let r = Registry::new(true);
        let c = r.new_core().unwrap();
        let id: Arc<str> = Arc::from("7");
        assert!(Arc::ptr_eq(&c.route(&id), &c.route(&id)));
        assert_eq!(c.routes().len(), 2);
        assert_eq!(r.cores().len(), 1);
    }
}
