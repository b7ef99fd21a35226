//! Configuration: serde types in the names the operator writes, validated into a ready model.
//!
//! Loading never stops at the first problem: every field that is wrong is reported as
//! `<field path>: <what is wrong> (allowed: …)`, the same text the Admin API will answer with.

pub mod error;
pub mod json;
pub mod route;
pub mod ssl;
pub mod store;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::http::h1::MAX_HEADERS_CEILING;
pub use crate::http::Limits;
use serde::{Deserialize, Serialize};

use error::join_path;
pub use error::{deserialize_at, ranged, seconds, section, ConfigError, ConfigErrors};
pub use route::{RouteConfig, RouteSpec, Upstreams};

/// Which I/O driver the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DriverChoice {
    /// io_uring where the kernel allows it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring or fail.
    IoUring,
    /// The readiness (epoll) driver.
    Epoll,
}

/// io_uring setup flags; measured here, the defaults cost ~60 % more CPU per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UringFlags {
    /// IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG.
    #[default]
    CoopTaskrun,
    /// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN.
    DeferTaskrun,
    /// The kernel's defaults.
    None,
}

/// `listen` accepts one address or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

// Always a list, so that `listen: a` and `listen: [a]` compare equal across a reload.
impl Serialize for OneOrMany {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OneOrMany::One(one) => std::slice::from_ref(one).serialize(s),
            OneOrMany::Many(many) => many.serialize(s),
        }
    }
}

/// `workers: auto` or a count.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
enum WorkersValue {
    Count(i64),
    Word(String),
}

/// The document as read, defaults filled in. Serialising it (routes aside) gives the
/// [`Settings`] a reload compares, so a section added here is compared without more code.
#[derive(Debug, Serialize)]
struct RawConfig {
    listen: OneOrMany,
    workers: WorkersValue,
    cpu_affinity: bool,
    #[serde(serialize_with = "path_text")]
    data_dir: PathBuf,
    admin: RawAdmin,
    trusted_addresses: Vec<String>,
    runtime: RawRuntime,
    limits: RawLimits,
    per_core: RawPerCore,
    log: RawLog,
    access_log: RawAccessLog,
    status: RawStatus,
    dns: RawDns,
    tls: RawTls,
    config_provider: ConfigProvider,
    etcd: RawEtcd,
    // Routes and upstreams are what a reload applies; they are compared by the router, not here.
    #[serde(skip)]
    routes: Vec<serde_json::Value>,
    #[serde(skip)]
    upstreams: Vec<serde_json::Value>,
    // Certificates are applied live by a reload, like routes.
    #[serde(skip)]
    ssls: Vec<serde_json::Value>,
}

// A data_dir that is not UTF-8 still compares, instead of failing the whole comparison.
fn path_text<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: OneOrMany::One("0.0.0.0:9080".into()),
            workers: WorkersValue::Word("auto".into()),
            cpu_affinity: true,
            data_dir: PathBuf::from("data"),
            admin: RawAdmin::default(),
            trusted_addresses: Vec::new(),
            runtime: RawRuntime::default(),
            limits: RawLimits::default(),
            per_core: RawPerCore::default(),
            log: RawLog::default(),
            access_log: RawAccessLog::default(),
            status: RawStatus::default(),
            dns: RawDns::default(),
            tls: RawTls::default(),
            config_provider: ConfigProvider::Yaml,
            etcd: RawEtcd::default(),
            routes: Vec::new(),
            upstreams: Vec::new(),
            ssls: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    enabled: bool,
    listen: String,
    key: Option<String>,
    max_body_bytes: i64,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9180".into(),
            key: None,
            max_body_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawRuntime {
    driver: DriverChoice,
    uring_entries: u32,
    uring_flags: UringFlags,
}

impl Default for RawRuntime {
    fn default() -> Self {
        Self {
            driver: DriverChoice::Auto,
            uring_entries: 1024,
            uring_flags: UringFlags::CoopTaskrun,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_header_bytes: i64,
    max_headers: i64,
    max_response_header_bytes: i64,
    max_response_headers: i64,
    header_read_timeout: f64,
    body_read_timeout: f64,
    send_timeout: f64,
    keepalive_timeout: f64,
    keepalive_requests: i64,
    max_body_bytes: i64,
    max_connections: i64,
    shutdown_timeout: f64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_response_header_bytes: 64 * 1024,
            max_response_headers: 500,
            header_read_timeout: 10.0,
            body_read_timeout: 60.0,
            send_timeout: 60.0,
            keepalive_timeout: 75.0,
            keepalive_requests: 10_000,
            max_body_bytes: 0,
            max_connections: 100_000,
            shutdown_timeout: 30.0,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawPerCore {
    token_cache_entries: i64,
    token_cache_bytes: i64,
    upstream_keepalive: i64,
    upstream_keepalive_timeout: f64,
    upstream_keepalive_requests: i64,
}

impl Default for RawPerCore {
    fn default() -> Self {
        Self {
            token_cache_entries: 100_000,
            token_cache_bytes: 64 << 20,
            upstream_keepalive: 64,
            upstream_keepalive_timeout: 60.0,
            upstream_keepalive_requests: 1000,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    access: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        Self { access: true }
    }
}

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One space-separated line per request.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawAccessLog {
    format: AccessLogFormat,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawStatus {
    listen: String,
    metrics: bool,
}

impl Default for RawStatus {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9091".into(),
            metrics: true,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawDns {
    refresh_interval: f64,
}

impl Default for RawDns {
    fn default() -> Self {
        Self {
            refresh_interval: 30.0,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    listen: OneOrMany,
    // Applied live with the certificates, so a reload does not call it a restart-only change.
    #[serde(skip_serializing)]
    fallback_sni: Option<String>,
    protocols: Vec<String>,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            listen: OneOrMany::Many(Vec::new()),
            fallback_sni: None,
            protocols: vec!["TLSv1.2".into(), "TLSv1.3".into()],
        }
    }
}

/// Where routes, upstreams and SSL objects come from besides the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConfigProvider {
    /// The config file, plus the Admin API's store in `data_dir`.
    #[default]
    Yaml,
    /// etcd, in APISIX's layout; the Admin API writes there.
    Etcd,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawEtcd {
    host: Vec<String>,
    prefix: String,
    timeout: f64,
    user: Option<String>,
    password: Option<String>,
}

impl Default for RawEtcd {
    fn default() -> Self {
        Self {
            host: vec!["http://127.0.0.1:2379".into()],
            prefix: "/apisix".into(),
            timeout: 30.0,
            user: None,
            password: None,
        }
    }
}

/// How to reach etcd (`etcd` section), checked.
#[derive(Clone)]
pub struct EtcdSettings {
    /// Base URLs of the cluster's members (`http://host:port`), tried in turn.
    pub hosts: Vec<String>,
    /// Key prefix without a trailing `/` (`/apisix`).
    pub prefix: String,
    /// Bound on one request (a watch is not bounded: it streams).
    pub timeout: Duration,
    /// User and password for etcd's authentication, when configured.
    pub user: Option<(String, String)>,
}

// The password stays out of Debug prints.
impl fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("hosts", &self.hosts)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

fn check_etcd(raw: RawEtcd, errors: &mut Vec<ConfigError>) -> EtcdSettings {
    if raw.host.is_empty() {
        errors.push(ConfigError::new(
            "etcd.host",
            "is empty",
            "a list of URLs, e.g. [http://127.0.0.1:2379]",
        ));
    }
    let mut hosts = Vec::new();
    for (i, h) in raw.host.iter().enumerate() {
        let h = h.trim().trim_end_matches('/');
        let ok = (h.starts_with("http://") || h.starts_with("https://"))
            && reqwest::Url::parse(h).is_ok_and(|u| u.host_str().is_some() && u.path() == "/");
        if ok {
            hosts.push(h.to_string());
        } else {
            errors.push(ConfigError::new(
                format!("etcd.host[{i}]"),
                format!("`{h}` is not an etcd URL"),
                "http://host:port or https://host:port, without a path",
            ));
        }
    }
    let prefix = raw.prefix.trim_end_matches('/').to_string();
    if !prefix.starts_with('/') {
        errors.push(ConfigError::new(
            "etcd.prefix",
            format!("`{}` does not start with `/`", raw.prefix),
            "a key prefix such as /apisix",
        ));
    }
    let timeout = seconds(raw.timeout, "etcd.timeout", errors);
    let user = match (raw.user, raw.password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (Some(_), None) => {
            errors.push(ConfigError::new(
                "etcd.password",
                "is missing while etcd.user is set",
                "both user and password, or neither",
            ));
            None
        }
        (None, Some(_)) => {
            errors.push(ConfigError::new(
                "etcd.user",
                "is missing while etcd.password is set",
                "both user and password, or neither",
            ));
            None
        }
    };
    EtcdSettings {
        hosts,
        prefix,
        timeout,
        user,
    }
}

/// TLS termination settings (`tls` section) and the certificates (`ssls`).
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// HTTPS addresses; none: no TLS listener.
    pub listen: Vec<SocketAddr>,
    /// The name whose certificate answers a handshake with no or an unknown SNI.
    pub fallback_sni: Option<String>,
    /// Protocol versions spoken.
    pub protocols: crate::tls::Protocols,
    /// The SSL objects in force (enabled ones), keys parsed.
    pub ssls: Vec<crate::tls::SslSpec>,
}

impl TlsSettings {
    /// The certificate store these settings describe.
    pub fn cert_store(&self) -> crate::tls::CertStore {
        crate::tls::CertStore::compile(&self.ssls, self.fallback_sni.as_deref())
    }
}

fn check_tls(
    raw: RawTls,
    ssls: Vec<serde_json::Value>,
    errors: &mut Vec<ConfigError>,
) -> TlsSettings {
    let listen = raw
        .listen
        .into_vec()
        .iter()
        .enumerate()
        .filter_map(|(i, s)| parse_addr(s, &format!("tls.listen[{i}]"), errors))
        .collect();
    let mut protocols = crate::tls::Protocols {
        tls12: false,
        tls13: false,
    };
    for (i, p) in raw.protocols.iter().enumerate() {
        match p.as_str() {
            "TLSv1.2" => protocols.tls12 = true,
            "TLSv1.3" => protocols.tls13 = true,
            other => errors.push(ConfigError::new(
                format!("tls.protocols[{i}]"),
                format!("`{other}` is not a protocol Portcullis speaks"),
                "TLSv1.2, TLSv1.3",
            )),
        }
    }
    if raw.protocols.is_empty() {
        errors.push(ConfigError::new(
            "tls.protocols",
            "is empty",
            "TLSv1.2, TLSv1.3, either or both",
        ));
    }
    let ssls = ssl::check_ssls(ssls, errors);
    let fallback_sni = raw.fallback_sni.map(|f| f.trim().to_ascii_lowercase());
    if let Some(f) = &fallback_sni {
        let store = crate::tls::CertStore::compile(&ssls, None);
        if store
            .choose(Some(f), crate::tls::store::ANY_SCHEME)
            .is_none()
        {
            errors.push(ConfigError::new(
                "tls.fallback_sni",
                format!("no SSL object in `ssls` has a certificate for `{f}`"),
                "a name listed in the snis of an SSL object",
            ));
        }
    }
    TlsSettings {
        listen,
        fallback_sni,
        protocols,
        ssls,
    }
}

/// Per-core tuning: each worker keeps its own copy of these resources.
#[derive(Debug, Clone)]
pub struct PerCore {
    /// Verified bearer tokens cached (and introspection answers, each cache its own).
    pub token_cache_entries: usize,
    /// Bytes each of those caches may hold (claims, userinfo, bookkeeping).
    pub token_cache_bytes: usize,
    /// Idle keep-alive connections kept per upstream address.
    pub upstream_keepalive: usize,
    /// How long an idle upstream connection is kept.
    pub upstream_keepalive_timeout: Duration,
    /// Requests sent on one upstream connection before it is retired.
    pub upstream_keepalive_requests: u64,
}

/// Worker runtime settings.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The I/O driver.
    pub driver: DriverChoice,
    /// io_uring submission queue size.
    pub uring_entries: u32,
    /// io_uring setup flags.
    pub uring_flags: UringFlags,
}

/// An address or network whose forwarding headers are believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `10.0.0.0/8`, `::1` or `192.168.1.7`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr: ip, prefix })
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Every setting outside `routes` as it takes effect (defaults filled in), keyed by field path
/// (`limits.max_header_bytes`); a reload compares them with the running ones.
#[derive(Clone, Default, PartialEq)]
pub struct Settings(BTreeMap<String, serde_json::Value>);

impl Settings {
    fn of(raw: &RawConfig) -> Settings {
        let mut map = BTreeMap::new();
        // Cannot fail: every field is plain data with string keys (data_dir goes through
        // path_text). The unit test `settings_cover_every_section` catches a field that breaks it.
        if let Ok(v) = serde_json::to_value(raw) {
            flatten("", v, &mut map);
        }
        Settings(map)
    }

    /// Field paths whose value differs between `self` and `other`, in path order.
    pub fn changed<'a>(&'a self, other: &'a Settings) -> Vec<&'a str> {
        let mut paths: Vec<&str> = self
            .0
            .iter()
            .filter(|(k, v)| other.0.get(*k) != Some(*v))
            .map(|(k, _)| k.as_str())
            .chain(
                other
                    .0
                    .keys()
                    .filter(|k| !self.0.contains_key(*k))
                    .map(String::as_str),
            )
            .collect();
        paths.sort_unstable();
        paths
    }
}

// Names only: the values include `admin.key`, and a Debug print must not show it.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Sections become dotted paths; lists stay whole, since an entry has no name of its own.
fn flatten(prefix: &str, v: serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                flatten(&join_path(prefix, &k), v, out);
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf);
        }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data-plane listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Worker thread count.
    pub workers: usize,
    /// Pin worker i to core i.
    pub cpu_affinity: bool,
    /// Where persistent state lives.
    pub data_dir: PathBuf,
    /// Whether the Admin API listens at all.
    pub admin_enabled: bool,
    /// Admin API address.
    pub admin_listen: SocketAddr,
    /// Admin API key, when configured.
    pub admin_key: Option<String>,
    /// Largest Admin API request body.
    pub admin_max_body_bytes: usize,
    /// Peers whose forwarding headers are believed.
    pub trusted_addresses: Vec<Cidr>,
    /// Worker runtime settings.
    pub runtime: Runtime,
    /// Request limits.
    pub limits: Limits,
    /// Per-core tuning.
    pub per_core: PerCore,
    /// Whether each request is logged.
    pub access_log: bool,
    /// How access-log lines are written.
    pub access_log_format: AccessLogFormat,
    /// The status listener's address (metrics, health, readiness).
    pub status_listen: SocketAddr,
    /// Whether workers count requests for `/metrics` (off: nothing is counted).
    pub metrics: bool,
    /// How often upstream host names are resolved again.
    pub dns_refresh_interval: Duration,
    /// Routes as written, checked; compiled into a table by the router.
    pub routes: Vec<RouteSpec>,
    /// Upstream objects routes name by `upstream_id`.
    pub upstreams: Upstreams,
    /// TLS termination and certificates.
    pub tls: TlsSettings,
    /// Where routes, upstreams and SSL objects come from.
    pub config_provider: ConfigProvider,
    /// How to reach etcd; used under `config_provider: etcd`.
    pub etcd: EtcdSettings,
    /// Every other setting by field path, for a reload to tell which ones changed.
    pub settings: Settings,
}

/// Read and validate a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::plain(
            path.display().to_string(),
            format!("cannot read: {e}"),
        )])
    })?;
    parse_yaml(&text)
}

/// Validate a YAML config document. A key given twice in one mapping is an error: YAML
/// libraries keep one of the two silently, and a lost `plugins:` would lose authentication.
pub fn parse_yaml(text: &str) -> Result<Config, ConfigErrors> {
    let (doc, mut errors) = if text.trim().is_empty() {
        (serde_json::Value::Object(Default::default()), Vec::new())
    } else {
        yaml::parse(text).map_err(|e| {
            ConfigErrors(vec![ConfigError::plain(".", format!("invalid YAML: {e}"))])
        })?
    };
    if !doc.is_object() {
        return Err(ConfigErrors(vec![ConfigError::plain(
            ".",
            "the document must be a mapping of options",
        )]));
    }
    let raw = raw_sections(doc, &mut errors);
    let config = validate(raw, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Top-level keys, in the order the reference documents them.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "workers",
    "cpu_affinity",
    "data_dir",
    "admin",
    "trusted_addresses",
    "runtime",
    "limits",
    "per_core",
    "log",
    "access_log",
    "status",
    "dns",
    "tls",
    "ssls",
    "routes",
    "upstreams",
    "config_provider",
    "etcd",
];

/// Each top-level key is read on its own, so one wrong value does not hide the others' problems.
fn raw_sections(doc: serde_json::Value, errors: &mut Vec<ConfigError>) -> RawConfig {
    let serde_json::Value::Object(mut map) = doc else {
        return RawConfig::default();
    };
    for key in map.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            errors.push(ConfigError::new(
                key.as_str(),
                format!("unknown option `{key}`"),
                TOP_LEVEL_KEYS.join(", "),
            ));
        }
    }
    let mut raw = RawConfig::default();
    macro_rules! take {
        ($($field:ident),*) => {$(
            // `key:` with no value in YAML means "the default".
            let value = map.remove(stringify!($field)).filter(|v| !v.is_null());
            if let Some(v) = section(value, stringify!($field), errors) {
                raw.$field = v;
            }
        )*};
    }
    take!(
        listen,
        workers,
        cpu_affinity,
        data_dir,
        admin,
        trusted_addresses,
        runtime,
        limits,
        per_core,
        log,
        access_log,
        status,
        dns,
        tls,
        ssls,
        routes,
        upstreams,
        config_provider,
        etcd
    );
    raw
}

fn parse_addr(s: &str, path: &str, errors: &mut Vec<ConfigError>) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(ConfigError::new(
                path,
                format!("`{s}` is not an address"),
                "IP:port, e.g. 0.0.0.0:9080 or [::]:9080",
            ));
            None
        }
    }
}

fn validate(raw: RawConfig, errors: &mut Vec<ConfigError>) -> Config {
    let settings = Settings::of(&raw);
    let listen_list = raw.listen.into_vec();
    if listen_list.is_empty() {
        errors.push(ConfigError::new(
            "listen",
            "no address given",
            "IP:port, or a list of them",
        ));
    }
    let listen: Vec<SocketAddr> = listen_list
        .iter()
        .enumerate()
        .filter_map(|(i, s)| parse_addr(s, &format!("listen[{i}]"), errors))
        .collect();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let workers = match raw.workers {
        WorkersValue::Word(w) if w == "auto" => cores,
        WorkersValue::Count(n) => ranged(n, 1, 1024, "workers", errors) as usize,
        WorkersValue::Word(w) => {
            errors.push(ConfigError::new(
                "workers",
                format!("`{w}` is not a worker count"),
                "auto, or 1 to 1024",
            ));
            1
        }
    };
    let admin_listen = parse_addr(&raw.admin.listen, "admin.listen", errors)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9180)));
    if let Some(key) = &raw.admin.key {
        if key.len() < 16 {
            errors.push(ConfigError::new(
                "admin.key",
                "is too short to be a secret",
                "at least 16 characters",
            ));
        }
    }
    let trusted_addresses = raw
        .trusted_addresses
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let c = Cidr::parse(s);
            if c.is_none() {
                errors.push(ConfigError::new(
                    format!("trusted_addresses[{i}]"),
                    format!("`{s}` is not an address or network"),
                    "IP or CIDR, e.g. 10.0.0.0/8",
                ));
            }
            c
        })
        .collect();
    let l = &raw.limits;
    let limits = Limits {
        max_header_bytes: ranged(
            l.max_header_bytes,
            1024,
            1 << 20,
            "limits.max_header_bytes",
            errors,
        ) as usize,
        max_headers: ranged(
            l.max_headers,
            1,
            MAX_HEADERS_CEILING as i64,
            "limits.max_headers",
            errors,
        ) as usize,
        max_response_header_bytes: ranged(
            l.max_response_header_bytes,
            1024,
            1024 * 1024,
            "limits.max_response_header_bytes",
            errors,
        ) as usize,
        max_response_headers: ranged(
            l.max_response_headers,
            1,
            MAX_HEADERS_CEILING as i64,
            "limits.max_response_headers",
            errors,
        ) as usize,
        header_read_timeout: seconds(l.header_read_timeout, "limits.header_read_timeout", errors),
        body_read_timeout: seconds(l.body_read_timeout, "limits.body_read_timeout", errors),
        send_timeout: seconds(l.send_timeout, "limits.send_timeout", errors),
        keepalive_timeout: seconds(l.keepalive_timeout, "limits.keepalive_timeout", errors),
        keepalive_requests: ranged(
            l.keepalive_requests,
            1,
            i64::MAX,
            "limits.keepalive_requests",
            errors,
        ) as u64,
        max_body_bytes: match ranged(
            l.max_body_bytes,
            0,
            i64::MAX,
            "limits.max_body_bytes",
            errors,
        ) {
            0 => None,
            n => Some(n as u64),
        },
        max_connections: ranged(
            l.max_connections,
            1,
            10_000_000,
            "limits.max_connections",
            errors,
        ) as usize,
        shutdown_timeout: seconds(l.shutdown_timeout, "limits.shutdown_timeout", errors),
    };
    let p = &raw.per_core;
    let per_core = PerCore {
        token_cache_entries: ranged(
            p.token_cache_entries,
            0,
            10_000_000,
            "per_core.token_cache_entries",
            errors,
        ) as usize,
        token_cache_bytes: ranged(
            p.token_cache_bytes,
            0,
            1 << 40,
            "per_core.token_cache_bytes",
            errors,
        ) as usize,
        upstream_keepalive: ranged(
            p.upstream_keepalive,
            0,
            100_000,
            "per_core.upstream_keepalive",
            errors,
        ) as usize,
        upstream_keepalive_timeout: seconds(
            p.upstream_keepalive_timeout,
            "per_core.upstream_keepalive_timeout",
            errors,
        ),
        upstream_keepalive_requests: ranged(
            p.upstream_keepalive_requests,
            1,
            i64::MAX,
            "per_core.upstream_keepalive_requests",
            errors,
        ) as u64,
    };
    let runtime = Runtime {
        driver: raw.runtime.driver,
        uring_entries: ranged(
            raw.runtime.uring_entries as i64,
            64,
            32768,
            "runtime.uring_entries",
            errors,
        ) as u32,
        uring_flags: raw.runtime.uring_flags,
    };
    let status_listen = parse_addr(&raw.status.listen, "status.listen", errors)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9091)));
    let dns_refresh_interval = seconds(raw.dns.refresh_interval, "dns.refresh_interval", errors);
    let routes = route::check_routes(raw.routes, errors);
    let upstreams = route::check_upstreams(raw.upstreams, errors);
    errors.extend(route::check_references(&routes, &upstreams));
    let admin_max_body_bytes = ranged(
        raw.admin.max_body_bytes,
        1024,
        64 << 20,
        "admin.max_body_bytes",
        errors,
    ) as usize;
    let tls = check_tls(raw.tls, raw.ssls, errors);
    let etcd = check_etcd(raw.etcd, errors);
    if raw.config_provider == ConfigProvider::Etcd && !routes.is_empty() {
        errors.push(ConfigError::new(
            "routes",
            format!(
                "has {} route(s), but config_provider is etcd: routes live in etcd under {}/routes, one source of truth for every node",
                routes.len(),
                etcd.prefix
            ),
            "an empty or absent routes list under config_provider: etcd",
        ));
    }
    Config {
        listen,
        workers,
        cpu_affinity: raw.cpu_affinity,
        data_dir: raw.data_dir,
        admin_enabled: raw.admin.enabled,
        admin_listen,
        admin_key: raw.admin.key,
        admin_max_body_bytes,
        trusted_addresses,
        runtime,
        limits,
        per_core,
        access_log: raw.log.access,
        access_log_format: raw.access_log.format,
        status_listen,
        metrics: raw.status.metrics,
        dns_refresh_interval,
        routes,
        upstreams,
        tls,
        config_provider: raw.config_provider,
        etcd,
        settings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_gives_defaults() {
        let c = parse_yaml("").unwrap();
        assert_eq!(c.listen, vec!["0.0.0.0:9080".parse().unwrap()]);
        assert_eq!(c.limits.max_header_bytes, 32768);
        assert!(c.cpu_affinity);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let err = parse_yaml("workers: lots\nlimits: {max_header_bytes: 5, header_read_timeout: -1}\ntrusted_addresses: [nope]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("workers: `lots` is not a worker count (allowed: auto, or 1 to 1024)"),
            "{err}"
        );
        assert!(
            err.contains("limits.max_header_bytes: 5 is out of range (allowed: 1024 to 1048576)"),
            "{err}"
        );
        assert!(err.contains("limits.header_read_timeout"), "{err}");
        assert!(err.contains("trusted_addresses[0]"), "{err}");
    }

    #[test]
    fn unknown_option_names_the_allowed_ones() {
        let err = parse_yaml("limits: {max_header_byte: 5}")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("limits.max_header_byte: unknown option `max_header_byte` (allowed: max_header_bytes,"), "{err}");
    }

    #[test]
    fn duplicate_keys_are_reported_beside_the_other_problems() {
        let err = parse_yaml(
            "workers: 1\nworkers: 2\nlimits: {max_headers: 0, max_headers: 5}\nlisten: nowhere\n",
        )
        .unwrap_err()
        .to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines.contains(&".: duplicate key \"workers\" (allowed: each key once in a mapping)"),
            "{err}"
        );
        assert!(
            lines.contains(
                &"limits: duplicate key \"max_headers\" (allowed: each key once in a mapping)"
            ),
            "{err}"
        );
        assert!(
            err.contains("listen[0]: `nowhere` is not an address"),
            "{err}"
        );
    }

    #[test]
    fn settings_cover_every_section() {
        let s = parse_yaml("").unwrap().settings;
        for path in [
            "listen",
            "workers",
            "cpu_affinity",
            "data_dir",
            "admin.listen",
            "admin.key",
            "trusted_addresses",
            "runtime.driver",
            "limits.max_header_bytes",
            "per_core.token_cache_entries",
            "log.access",
            "access_log.format",
            "status.listen",
            "status.metrics",
            "dns.refresh_interval",
        ] {
            assert!(s.0.contains_key(path), "{path} missing from {s:?}");
        }
        assert!(!s.0.keys().any(|k| k.starts_with("routes")), "{s:?}");
    }

    #[test]
    fn settings_name_each_changed_field_and_nothing_else() {
        let old = parse_yaml("listen: 127.0.0.1:9080\nlimits: {max_header_bytes: 32768}\n")
            .unwrap()
            .settings;
        // The same values written differently, and a route added: nothing to report.
        let same = parse_yaml("listen: [127.0.0.1:9080]\nroutes: [{uri: /x, upstream: {nodes: {\"127.0.0.1:1\": 1}}}]\n")
            .unwrap()
            .settings;
        assert!(old.changed(&same).is_empty(), "{:?}", old.changed(&same));
        let new = parse_yaml("listen: 127.0.0.1:9080\nlimits: {max_header_bytes: 4096}\ntrusted_addresses: [10.0.0.0/8]\nadmin: {key: a-new-key-of-16-chars}\n")
            .unwrap()
            .settings;
        assert_eq!(
            old.changed(&new),
            ["admin.key", "limits.max_header_bytes", "trusted_addresses"]
        );
        assert!(!format!("{new:?}").contains("a-new-key"), "{new:?}");
    }

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4/33").is_none());
    }
}
