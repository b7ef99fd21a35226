//! Shared harness for Portcullis's integration tests.
//!
//! * [`Proxy`] starts the real `portcullis` binary with a config written into a temporary
//!   directory, waits until it accepts connections and kills it on drop.
//! * [`Upstream`] is a real HTTP/1.1 server (plain or TLS) that echoes what it received as JSON
//!   and has a few special paths (`/bytes/N`, `/chunked/N`, `/sleep/MS`, `/close`, ...).
//! * [`Client`] is a minimal HTTP/1.1 client over one TCP connection that can send raw bytes.
//!
//! Everything listens on 127.0.0.1 only, and every wait is bounded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod auth;
pub mod etcd;
pub mod fake_idp;
pub mod jwt;
pub mod leaks;
pub mod login;
pub mod metrics;
pub mod real_idp;
pub mod tls;

/// Timeout applied to every socket read and write in the tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a proxy may take to start accepting connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

// ---------------------------------------------------------------------------------------------
// Temporary directories and ports
// ---------------------------------------------------------------------------------------------

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-it-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            nanos
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory and returns the full path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn can_connect(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Hashing and the deterministic body pattern
// ---------------------------------------------------------------------------------------------

const PATTERN_PERIOD: usize = 251;

/// A buffer holding the test pattern (`byte i = i % 251`), long enough to slice any 64 KiB
/// window starting at any offset.
pub struct Pattern {
    buf: Vec<u8>,
}

impl Pattern {
    pub const BLOCK: usize = 64 * 1024;

    pub fn new() -> Pattern {
        let len = Self::BLOCK + PATTERN_PERIOD;
        Pattern {
            buf: (0..len).map(|i| (i % PATTERN_PERIOD) as u8).collect(),
        }
    }

    /// The pattern bytes at absolute offset `off`, `n <= BLOCK` of them.
    pub fn slice(&self, off: u64, n: usize) -> &[u8] {
        assert!(n <= Self::BLOCK);
        let start = (off % PATTERN_PERIOD as u64) as usize;
        &self.buf[start..start + n]
    }

    /// Calls `f` with successive slices that together form the first `total` pattern bytes.
    /// Slice sizes come from `sizes` (cycled); each is capped at `BLOCK`.
    pub fn for_each_chunk(
        &self,
        total: u64,
        sizes: &[usize],
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut off = 0u64;
        let mut i = 0usize;
        while off < total {
            let want = sizes[i % sizes.len()].clamp(1, Self::BLOCK);
            i += 1;
            let n = want.min((total - off) as usize);
            f(self.slice(off, n))?;
            off += n as u64;
        }
        Ok(())
    }
}

impl Default for Pattern {
    fn default() -> Self {
        Pattern::new()
    }
}

/// The first `n` bytes of the pattern as a vector (for small bodies).
pub fn pattern_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % PATTERN_PERIOD) as u8).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (hex) of the first `n` pattern bytes.
pub fn pattern_sha256(n: u64) -> String {
    let p = Pattern::new();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    p.for_each_chunk(n, &[Pattern::BLOCK], |c| {
        ctx.update(c);
        Ok(())
    })
    .unwrap();
    hex(ctx.finish().as_ref())
}

/// A streaming SHA-256 with a byte count.
pub struct Hasher {
    ctx: ring::digest::Context,
    pub len: u64,
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher {
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
        self.len += data.len() as u64;
    }
    pub fn finish(self) -> (u64, String) {
        (self.len, hex(self.ctx.finish().as_ref()))
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Config helpers
// ---------------------------------------------------------------------------------------------

/// `extra` merged into `base`, objects key by key at every depth; anything else replaced.
pub fn merge(base: &mut Value, extra: &Value) {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            match (b.get_mut(k), v) {
                (Some(bv @ Value::Object(_)), Value::Object(_)) => merge(bv, v),
                _ => {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

/// Renders a JSON value as block-style YAML (strings and keys double-quoted, which YAML reads
/// exactly as JSON does).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => yaml_map(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => yaml_seq(a, 0, &mut out),
        other => {
            out.push_str(&yaml_scalar(other));
            out.push('\n');
        }
    }
    out
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::String(s) => serde_json::to_string(s).unwrap(),
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

fn yaml_map(m: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&serde_json::to_string(k).unwrap());
        out.push(':');
        if is_block(v) {
            out.push('\n');
            match v {
                Value::Object(inner) => yaml_map(inner, indent + 2, out),
                Value::Array(items) => yaml_seq(items, indent + 2, out),
                _ => unreachable!(),
            }
        } else {
            out.push(' ');
            out.push_str(&yaml_scalar(v));
            out.push('\n');
        }
    }
}

fn yaml_seq(items: &[Value], indent: usize, out: &mut String) {
    for item in items {
        if is_block(item) {
            // Render the item one level deeper, then turn its first indentation into "- ".
            let mut inner = String::new();
            match item {
                Value::Object(m) => yaml_map(m, indent + 2, &mut inner),
                Value::Array(a) => yaml_seq(a, indent + 2, &mut inner),
                _ => unreachable!(),
            }
            out.push_str(&" ".repeat(indent));
            out.push_str("- ");
            out.push_str(&inner[indent + 2..]);
        } else {
            out.push_str(&" ".repeat(indent));
            out.push_str("- ");
            out.push_str(&yaml_scalar(item));
            out.push('\n');
        }
    }
}

/// `{"127.0.0.1:PORT": weight, ...}`
pub fn nodes(ups: &[(&Upstream, u32)]) -> Value {
    let mut m = serde_json::Map::new();
    for (u, w) in ups {
        m.insert(u.addr(), json!(w));
    }
    Value::Object(m)
}

/// A route with `uri` to the given upstream servers (weight 1 each), plain HTTP.
pub fn route(id: &str, uri: &str, ups: &[&Upstream]) -> Value {
    let weighted: Vec<(&Upstream, u32)> = ups.iter().map(|u| (*u, 1)).collect();
    json!({
        "id": id,
        "uri": uri,
        "upstream": { "type": "roundrobin", "nodes": nodes(&weighted) }
    })
}

/// `yaml` with a `status` section listening on a port the system picks (see
/// [`Proxy::status_port`]), unless it has one: the default port would be shared by every proxy
/// the tests run at once.
pub fn with_status_listener(yaml: &str) -> String {
    if yaml
        .lines()
        .any(|l| l.starts_with("status:") || l.starts_with("\"status\":"))
    {
        return yaml.to_string();
    }
    let sep = if yaml.is_empty() || yaml.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    format!("{yaml}{sep}status:\n  listen: 127.0.0.1:0\n")
}

/// The base config used by most tests: one worker, no pinning, access log on.
/// `listen` and `data_dir` are filled in by [`Proxy::start`] when absent.
pub fn base_config(routes: Vec<Value>) -> Value {
    json!({
        "workers": 1,
        "cpu_affinity": false,
        "log": { "access": true },
        "routes": routes,
    })
}

// ---------------------------------------------------------------------------------------------
// The proxy process
// ---------------------------------------------------------------------------------------------

/// A running `portcullis` process. Killed (SIGKILL) on drop if still running.
pub struct Proxy {
    pub child: Child,
    /// The first listen port.
    pub port: u16,
    /// All listen ports.
    pub ports: Vec<u16>,
    /// The HTTPS port [`Proxy::client`] uses, in HTTPS mode.
    pub tls_port: Option<u16>,
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub stderr_path: PathBuf,
    pub stdout_path: PathBuf,
    exited: Option<ExitStatus>,
}

/// Whether a YAML config text has a top-level `admin` key (plain or quoted, as `to_yaml` writes).
fn has_admin_section(yaml: &str) -> bool {
    yaml.lines()
        .any(|l| l.starts_with("admin:") || l.starts_with("\"admin\":"))
}

fn listen_ports(cfg: &Value) -> Vec<u16> {
    let parse = |s: &str| -> u16 {
        s.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("cannot read a port from listen address {s:?}"))
    };
    match cfg.get("listen") {
        Some(Value::String(s)) => vec![parse(s)],
        Some(Value::Array(a)) => a.iter().map(|v| parse(v.as_str().unwrap())).collect(),
        _ => vec![],
    }
}

impl Proxy {
    /// Starts the proxy with `cfg` (a JSON value rendered as YAML) and waits until every listen
    /// port accepts connections. Picks a free port when `listen` is absent and puts `data_dir`
    /// into the temp dir when absent. Panics with the proxy's stderr on failure.
    pub fn start(cfg: Value) -> Proxy {
        let auto_listen = cfg.get("listen").is_none();
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let mut cfg = cfg.clone();
            if auto_listen {
                cfg["listen"] = json!(format!("127.0.0.1:{}", free_port()));
            }
            let dir = TempDir::new();
            if cfg.get("data_dir").is_none() {
                cfg["data_dir"] = json!(dir.path().join("data").to_string_lossy());
            }
            let mut ports = listen_ports(&cfg);
            // HTTPS mode: the same config with a TLS listener beside, which clients then use.
            let tls_port = (tls::https_mode() && cfg.get("tls").is_none()).then(|| {
                let port = free_port();
                cfg["tls"] = json!({"listen": [format!("127.0.0.1:{port}")]});
                let pem = tls::harness_cert();
                cfg["ssls"] = json!([tls::ssl("harness", &["localhost"], pem)]);
                ports.push(port);
                port
            });
            let yaml = to_yaml(&cfg);
            let mut p = Proxy::spawn_in(dir, &yaml, &[], ports);
            p.tls_port = tls_port;
            match p.wait_ready() {
                Ok(()) => return p,
                Err(e) => {
                    last_err = e;
                    // A port picked by free_port() may have been taken in between: retry.
                    if !(auto_listen && last_err.to_lowercase().contains("in use")) {
                        break;
                    }
                }
            }
        }
        panic!("{last_err}");
    }

    /// Spawns the binary with `-c <dir>/config.yaml` plus `extra_args` (placed before `-c`),
    /// stderr and stdout captured to files in `dir`. Does not wait for anything.
    pub fn spawn_in(
        dir: TempDir,
        config_yaml: &str,
        extra_args: &[&str],
        ports: Vec<u16>,
    ) -> Proxy {
        leaks::record_config(config_yaml);
        // The Admin API listens on 127.0.0.1:9180 by default; tests run in parallel, so each
        // proxy gets a free port of its own unless the test chose one.
        let config_yaml = if has_admin_section(config_yaml) {
            config_yaml.to_string()
        } else {
            format!(
                "{config_yaml}\nadmin:\n  listen: 127.0.0.1:{}\n",
                free_port()
            )
        };
        let config_path = dir.write("config.yaml", &with_status_listener(&config_yaml));
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
        let child = Command::new(bin())
            .args(extra_args)
            .arg("-c")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(fs::File::create(&stdout_path).unwrap()))
            .stderr(Stdio::from(fs::File::create(&stderr_path).unwrap()))
            .spawn()
            .expect("spawn portcullis");
        Proxy {
            child,
            port: ports.first().copied().unwrap_or(0),
            ports,
            tls_port: None,
            dir,
            config_path,
            stderr_path,
            stdout_path,
            exited: None,
        }
    }

    /// Starts a proxy from literal YAML text, with `{PORT}` replaced by a free port and
    /// `{DATA}` by a data dir inside the temp dir. Waits until it listens.
    pub fn start_yaml(yaml: &str) -> Proxy {
        let port = free_port();
        let dir = TempDir::new();
        let data = dir.path().join("data");
        let text = yaml
            .replace("{PORT}", &port.to_string())
            .replace("{DATA}", &data.to_string_lossy());
        let mut p = Proxy::spawn_in(dir, &text, &[], vec![port]);
        if let Err(e) = p.wait_ready() {
            panic!("{e}");
        }
        p
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until all ports accept connections; fails early when the process exits.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = self.try_exit_status() {
                return Err(format!(
                    "portcullis exited before listening ({st}); config:\n{}\nstderr:\n{}\nstdout:\n{}",
                    self.config_text(),
                    self.stderr(),
                    self.stdout()
                ));
            }
            if !self.ports.is_empty() && self.ports.iter().all(|p| can_connect(*p)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "portcullis did not listen on {:?} within {:?}; config:\n{}\nstderr:\n{}",
                    self.ports,
                    READY_TIMEOUT,
                    self.config_text(),
                    self.stderr()
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Rewrites the config file with `text`, keeping the Admin API port the harness chose at
    /// start unless `text` has an `admin:` section of its own (a reload would otherwise see it
    /// change).
    pub fn rewrite_config(&self, text: &str) {
        let current = self.config_text();
        let text = match current.find("\nadmin:\n") {
            Some(i) if !has_admin_section(text) => {
                format!("{text}{}", &current[i..])
            }
            _ => text.to_string(),
        };
        // The status section the harness added at start stays too.
        fs::write(&self.config_path, with_status_listener(&text)).expect("write the config file");
    }

    pub fn config_text(&self) -> String {
        fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    /// Everything the proxy wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stdout_path).unwrap_or_default()).into_owned()
    }

    /// stdout and stderr together (for messages that may go to either).
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    /// The last ~4000 characters of stderr, for assertion messages.
    pub fn log(&self) -> String {
        let s = self.stderr();
        let n = s.chars().count();
        if n > 4000 {
            let tail: String = s.chars().skip(n - 4000).collect();
            format!("[...]{tail}")
        } else {
            s
        }
    }

    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Polls for the process to exit, up to `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.try_exit_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on the pid of a child we own and have not reaped.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Peak resident set size (`VmHWM`) of the proxy, in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM line");
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("VmHWM value");
        kb * 1024
    }

    /// A new client connection: to the HTTPS port in HTTPS mode (see [`tls::SCHEME_ENV`]),
    /// else to the first listen port.
    pub fn client(&self) -> Client {
        match self.tls_port {
            Some(port) => Client::connect_tls(port, Some("localhost")),
            None => Client::connect(self.port),
        }
    }

    /// One GET on a fresh connection.
    pub fn get(&self, path: &str) -> Response {
        self.client().request("GET", path, &[], b"")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        leaks::keep_logs(&[&self.stderr_path, &self.stdout_path]);
    }
}

/// Runs the binary to completion (bounded by `within`) with `args`; returns (status, stdout+stderr).
/// The process is killed if it does not exit in time, and the status is then `None`.
pub fn run_bin(args: &[&str], cwd: &Path, within: Duration) -> (Option<ExitStatus>, String) {
    let out_path = cwd.join(format!(
        "run-{}.out",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let err_path = out_path.with_extension("err");
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(fs::File::create(&err_path).unwrap()))
        .spawn()
        .expect("spawn portcullis");
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&fs::read(&out_path).unwrap_or_default()),
        String::from_utf8_lossy(&fs::read(&err_path).unwrap_or_default())
    );
    (status, out)
}

/// How long `portcullis check` may take.
pub const CHECK_LIMIT: Duration = Duration::from_secs(10);

/// Writes `yaml` into a temp dir (with `{DATA}` replaced by a data dir there) and runs
/// `portcullis check -c <file>`; returns whether it passed, and its output.
pub fn check_config(yaml: &str) -> (bool, String) {
    let dir = TempDir::new();
    let data = dir.path().join("data");
    let path = dir.write(
        "config.yaml",
        &yaml.replace("{DATA}", &data.to_string_lossy()),
    );
    let (st, out) = run_bin(
        &["check", "-c", path.to_str().unwrap()],
        dir.path(),
        CHECK_LIMIT,
    );
    let st = st.unwrap_or_else(|| {
        panic!("`portcullis check` did not finish in {CHECK_LIMIT:?}; output:\n{out}")
    });
    (st.success(), out)
}

/// The output line that mentions `needle`, or a panic showing the whole output.
pub fn line_with<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no output line mentions {needle:?}; output:\n{out}"))
}

// ---------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------

/// The first value of header `name` (case-insensitive) among `headers`.
fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of header `name` (case-insensitive) among `headers`, in order.
fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The upstream echo carried in the body. Panics (with the response) when it is not one.
    pub fn echo(&self) -> Echo {
        assert_eq!(
            self.status,
            200,
            "expected an upstream echo (200), got {} {:?} headers {:?} body {:?}",
            self.status,
            self.reason,
            self.headers,
            self.text()
        );
        Echo::from_json(&self.json())
    }

    /// The id of the upstream server that answered (from `X-Upstream-Id`).
    pub fn upstream_id(&self) -> Option<&str> {
        self.header("x-upstream-id")
    }

    /// Asserts this is an error answer with `status` and a JSON body; returns the JSON.
    pub fn assert_json_error(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "status; headers {:?} body {:?}",
            self.headers,
            self.text()
        );
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.to_ascii_lowercase().starts_with("application/json"),
            "Content-Type of a {status} answer should be application/json, got {ct:?}"
        );
        self.json()
    }
}

/// The head of a response, before the body is read.
#[derive(Debug, Clone)]
pub struct Head {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    fn is_chunked(&self) -> bool {
        self.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase()
                    .split(',')
                    .any(|t| t.trim() == "chunked")
        })
    }

    fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .map(|v| v.trim().parse().expect("numeric Content-Length"))
    }
}

/// A client connection with its own read buffer (so pipelined answers can be read one by one).
pub struct Client {
    pub stream: tls::Stream,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        Client::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        Client::from_any(tls::Stream::Plain(stream))
    }

    /// A client over TLS to 127.0.0.1:`port`, sending `sni`.
    pub fn connect_tls(port: u16, sni: Option<&str>) -> Client {
        let s = tls::Stream::connect_tls(port, sni)
            .unwrap_or_else(|e| panic!("TLS to 127.0.0.1:{port} (SNI {sni:?}): {e}"));
        Client::from_any(s)
    }

    fn from_any(stream: tls::Stream) -> Client {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: vec![0; 64 * 1024],
            pos: 0,
            len: 0,
        }
    }

    pub fn write(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("write to proxy");
    }

    pub fn try_write(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data)
    }

    /// Builds a request head. Adds `Host: test.local` unless `headers` has a Host, and a
    /// Content-Length for a non-empty body (or POST/PUT) unless `headers` frame the body.
    pub fn build(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        leaks::record_request(path, headers);
        let mut out = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            out.push_str("Host: test.local\r\n");
        }
        for (n, v) in headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        let framed = headers.iter().any(|(n, _)| {
            n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
        });
        if !framed && (!body.is_empty() || method == "POST" || method == "PUT") {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Sends one request and reads its answer (panics on I/O errors).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let req = Client::build(method, path, headers, body);
        self.write(&req);
        self.read_response_for(method)
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn read_response(&mut self) -> Response {
        self.read_response_for("GET")
    }

    pub fn read_response_for(&mut self, method: &str) -> Response {
        self.try_read_response(method)
            .unwrap_or_else(|e| panic!("reading a response from the proxy: {e}"))
    }

    /// Reads one final response (skipping 1xx interim answers) and its body.
    pub fn try_read_response(&mut self, method: &str) -> io::Result<Response> {
        let head = self.read_final_head()?;
        let mut body = Vec::new();
        self.read_body(&head, method, |c| body.extend_from_slice(c))?;
        Ok(Response {
            version: head.version,
            status: head.status,
            reason: head.reason,
            headers: head.headers,
            body,
        })
    }

    /// Reads heads until one is not an interim (1xx other than 101) answer.
    pub fn read_final_head(&mut self) -> io::Result<Head> {
        loop {
            let h = self.read_head()?;
            if (100..200).contains(&h.status) && h.status != 101 {
                continue;
            }
            return Ok(h);
        }
    }

    fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
        }
        if self.len == self.buf.len() {
            // Compact.
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.len == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.len..])?;
        self.len += n;
        Ok(n)
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf[self.pos..self.len]
                .iter()
                .position(|&b| b == b'\n')
            {
                let line = &self.buf[self.pos..self.pos + i];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let s = String::from_utf8_lossy(line).into_owned();
                self.pos += i + 1;
                return Ok(s);
            }
            if self.len - self.pos > 1024 * 1024 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed while reading a line (had {:?})",
                        String::from_utf8_lossy(&self.buf[self.pos..self.len])
                    ),
                ));
            }
        }
    }

    /// Reads a status line and headers.
    pub fn read_head(&mut self) -> io::Result<Head> {
        let status_line = self.read_line()?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
        if !version.starts_with("HTTP/1.") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            ));
        }
        let reason = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad header {line:?}"))
            })?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        Ok(Head {
            version,
            status,
            reason,
            headers,
        })
    }

    /// Reads the body that belongs to `head` (answer to `method`), passing it to `sink`.
    pub fn read_body(
        &mut self,
        head: &Head,
        method: &str,
        mut sink: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        if method == "HEAD" || head.status == 204 || head.status == 304 || head.status < 200 {
            return Ok(());
        }
        if head.is_chunked() {
            loop {
                let line = self.read_line()?;
                let size_str = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size_str, 16).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size {line:?}"),
                    )
                })?;
                if size == 0 {
                    // Trailers until an empty line.
                    while !self.read_line()?.is_empty() {}
                    return Ok(());
                }
                self.read_exact_to(size, &mut sink)?;
                let crlf = self.read_line()?;
                if !crlf.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "chunk not followed by CRLF",
                    ));
                }
            }
        } else if let Some(n) = head.content_length() {
            self.read_exact_to(n, &mut sink)
        } else {
            // Close-delimited.
            loop {
                if self.pos < self.len {
                    sink(&self.buf[self.pos..self.len]);
                    self.pos = self.len;
                }
                if self.fill()? == 0 {
                    return Ok(());
                }
            }
        }
    }

    fn read_exact_to(&mut self, mut n: u64, sink: &mut impl FnMut(&[u8])) -> io::Result<()> {
        while n > 0 {
            if self.pos == self.len && self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed with {n} body bytes missing"),
                ));
            }
            let take = ((self.len - self.pos) as u64).min(n) as usize;
            sink(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            n -= take as u64;
        }
        Ok(())
    }

    /// Reads until the peer closes (EOF or reset), up to `within`.
    /// Ok((elapsed, bytes read)) when it closed, Err(bytes read) on timeout.
    pub fn wait_closed(&mut self, within: Duration) -> Result<(Duration, Vec<u8>), Vec<u8>> {
        let start = Instant::now();
        let deadline = start + within;
        let mut data: Vec<u8> = self.buf[self.pos..self.len].to_vec();
        self.pos = self.len;
        let mut tmp = [0u8; 4096];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(data);
            }
            let left = (deadline - now).max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut tmp) {
                Ok(0) => return Ok((start.elapsed(), data)),
                Ok(n) => data.extend_from_slice(&tmp[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Ok((start.elapsed(), data)),
            }
        }
    }

    /// Asserts the proxy closes the connection (without sending anything more) within `within`.
    pub fn assert_closed(&mut self, within: Duration, what: &str) {
        match self.wait_closed(within) {
            Ok((_, data)) => assert!(
                data.is_empty(),
                "{what}: unexpected bytes before close: {:?}",
                String::from_utf8_lossy(&data)
            ),
            Err(data) => panic!(
                "{what}: connection still open after {within:?} (read {:?})",
                String::from_utf8_lossy(&data)
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connections of the test servers (the upstream here, the fake IdP)
// ---------------------------------------------------------------------------------------------

/// The connections a test server accepted: counted, and kept as clones (by accept number) so
/// they can be shut down for real, when served or when the server stops.
struct Conns {
    accepted: AtomicUsize,
    open: Mutex<HashMap<usize, TcpStream>>,
}

impl Conns {
    fn new() -> Conns {
        Conns {
            accepted: AtomicUsize::new(0),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts `stream` and keeps a clone of it; returns its accept number (0-based).
    fn add(&self, stream: &TcpStream) -> usize {
        let n = self.accepted.fetch_add(1, Ordering::SeqCst);
        if let Ok(c) = stream.try_clone() {
            self.open.lock().unwrap().insert(n, c);
        }
        n
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Shuts connection `n` down: the clone kept here would otherwise hold it open.
    fn close(&self, n: usize) {
        if let Some(c) = self.open.lock().unwrap().remove(&n) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Shuts down every connection still open.
    fn close_all(&self) {
        for (_, s) in self.open.lock().unwrap().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Connects to 127.0.0.1:`port` (within `timeout`) to wake a server's blocking accept.
fn wake_acceptor(port: u16, timeout: Duration) {
    let _ = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout);
}

// ---------------------------------------------------------------------------------------------
// Upstream echo server
// ---------------------------------------------------------------------------------------------

/// What the upstream received, as echoed in its JSON body.
#[derive(Debug, Clone)]
pub struct Echo {
    pub id: String,
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: String,
}

impl Echo {
    pub fn from_json(v: &Value) -> Echo {
        let s = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_else(|| panic!("echo has no {k}: {v}"))
                .to_string()
        };
        let headers = v["headers"]
            .as_array()
            .unwrap_or_else(|| panic!("echo has no headers: {v}"))
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap().to_string(),
                )
            })
            .collect();
        Echo {
            id: s("id"),
            method: s("method"),
            path: s("path"),
            version: s("version"),
            headers,
            body_len: v["body_len"].as_u64().expect("body_len"),
            body_sha256: s("body_sha256"),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

struct UpstreamState {
    id: String,
    /// Shut down when the server drops.
    conns: Conns,
    requests: AtomicUsize,
    stop: AtomicBool,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// A real HTTP/1.1 upstream server on 127.0.0.1 (plain or TLS).
///
/// Every answer carries `X-Upstream-Id: <id>`. Paths (any segment pair, so they also work
/// below a prefix, e.g. `/dl/bytes/10`):
/// * `/bytes/N`: N pattern bytes with Content-Length;
/// * `/chunked/N`: N pattern bytes, chunked with varied chunk sizes;
/// * `/sleep/MS`: wait MS milliseconds (after reading the body), then echo;
/// * `/close`: echo with `Connection: close`, then close;
/// * `/garbage`: answer with bytes that are not HTTP and close;
/// * `/late-bytes`: answer `ok`, then 100 ms later send an unrequested answer on the idle
///   connection;
/// * `/truncate/N`: promise N bytes (Content-Length), send N/2, close;
/// * `/truncchunked/N`: chunked, about N/2 bytes, close without the last chunk;
/// * `/hop`: echo plus hop-by-hop response headers (`Connection: X-Hop-Resp`, `X-Hop-Resp`,
///   `Keep-Alive`, `Proxy-Connection`, `Upgrade`, `Trailer`) and `X-End-To-End: kept`;
/// * anything else: the echo, a JSON object (see [`Echo`]).
pub struct Upstream {
    pub port: u16,
    /// The self-signed certificate of a TLS upstream.
    pub cert: Option<rustls::pki_types::CertificateDer<'static>>,
    state: Arc<UpstreamState>,
}

impl Upstream {
    pub fn start(id: &str) -> Upstream {
        Upstream::start_inner(id, None)
    }

    /// A TLS upstream with a fresh self-signed certificate for localhost/127.0.0.1.
    pub fn start_tls(id: &str) -> Upstream {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("rcgen self-signed cert");
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()),
        );
        let cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("rustls server config");
        let mut u = Upstream::start_inner(id, Some(Arc::new(cfg)));
        u.cert = Some(cert);
        u
    }

    fn start_inner(id: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(UpstreamState {
            id: id.to_string(),
            conns: Conns::new(),
            requests: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            tls,
        });
        let st = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let n = st.conns.add(&stream);
                let st2 = st.clone();
                thread::spawn(move || {
                    serve_connection(stream, &st2);
                    st2.conns.close(n);
                });
            }
        });
        Upstream {
            port,
            cert: None,
            state,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Connections accepted so far.
    pub fn conns(&self) -> usize {
        self.state.conns.accepted()
    }

    /// Request heads received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        wake_acceptor(self.port, Duration::from_millis(200));
        self.state.conns.close_all();
    }
}

fn serve_connection(stream: TcpStream, st: &UpstreamState) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    if st.stop.load(Ordering::SeqCst) {
        return;
    }
    match st.tls.clone() {
        Some(cfg) => {
            let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                return;
            };
            let mut io = ServerIo::new(rustls::StreamOwned::new(conn, stream));
            if serve_http(&mut io, st).is_ok() {
                io.s.conn.send_close_notify();
                let _ = io.s.flush();
            }
        }
        None => {
            let _ = serve_http(&mut ServerIo::new(stream), st);
        }
    }
}

/// Buffered reader/writer over any byte stream (plain TCP or TLS).
struct ServerIo<S: Read + Write> {
    s: S,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl<S: Read + Write> ServerIo<S> {
    fn new(s: S) -> Self {
        ServerIo {
            s,
            buf: vec![0; 64 * 1024],
            pos: 0,
            len: 0,
        }
    }

    fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
        } else if self.len == self.buf.len() {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.len == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.s.read(&mut self.buf[self.len..])?;
        self.len += n;
        Ok(n)
    }

    /// Reads a line; Ok(None) on a clean EOF before any byte of it.
    fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = self.buf[self.pos..self.len]
                .iter()
                .position(|&b| b == b'\n')
            {
                let mut line = self.buf[self.pos..self.pos + i].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.pos += i + 1;
                return Ok(Some(line));
            }
            if self.len - self.pos > 1024 * 1024 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            let had = self.len - self.pos;
            if self.fill()? == 0 {
                return if had == 0 {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    fn read_exact_to(&mut self, mut n: u64, h: &mut Hasher) -> io::Result<()> {
        while n > 0 {
            if self.pos == self.len && self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = ((self.len - self.pos) as u64).min(n) as usize;
            h.update(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            n -= take as u64;
        }
        Ok(())
    }
}

fn bad_request<S: Read + Write>(io: &mut ServerIo<S>, why: &str) -> io::Result<()> {
    let body = format!("upstream test server: bad request: {why}");
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    io.s.write_all(resp.as_bytes())?;
    io.s.flush()
}

/// Finds `/<name>/<number>` among the path segments.
fn path_number(path: &str, name: &str) -> Option<u64> {
    let p = path.split('?').next().unwrap_or("");
    let segs: Vec<&str> = p.split('/').collect();
    segs.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
}

fn path_has(path: &str, name: &str) -> bool {
    path.split('?')
        .next()
        .unwrap_or("")
        .split('/')
        .any(|s| s == name)
}

fn serve_http<S: Read + Write>(io: &mut ServerIo<S>, st: &UpstreamState) -> io::Result<()> {
    let pattern = Pattern::new();
    loop {
        // Request line (skip stray empty lines between requests, as RFC 9112 allows).
        let line = loop {
            match io.read_line()? {
                None => return Ok(()),
                Some(l) if l.is_empty() => continue,
                Some(l) => break l,
            }
        };
        let line = String::from_utf8_lossy(&line).into_owned();
        let parts: Vec<&str> = line.split(' ').collect();
        if parts.len() != 3 {
            return bad_request(io, "request line");
        }
        let (method, path, version) = (
            parts[0].to_string(),
            parts[1].to_string(),
            parts[2].to_string(),
        );
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let Some(l) = io.read_line()? else {
                return Ok(());
            };
            if l.is_empty() {
                break;
            }
            let l = String::from_utf8_lossy(&l).into_owned();
            let Some((n, v)) = l.split_once(':') else {
                return bad_request(io, "header line");
            };
            headers.push((n.to_string(), v.trim().to_string()));
        }
        st.requests.fetch_add(1, Ordering::SeqCst);
        let get = |name: &str| header_value(&headers, name).map(str::to_string);
        let chunked = headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        });
        // Body.
        let mut h = Hasher::new();
        if chunked {
            loop {
                let Some(l) = io.read_line()? else {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                };
                let l = String::from_utf8_lossy(&l).into_owned();
                let size = match u64::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16) {
                    Ok(s) => s,
                    Err(_) => return bad_request(io, "chunk size"),
                };
                if size == 0 {
                    while let Some(t) = io.read_line()? {
                        if t.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                io.read_exact_to(size, &mut h)?;
                match io.read_line()? {
                    Some(l) if l.is_empty() => {}
                    _ => return bad_request(io, "chunk end"),
                }
            }
        } else if let Some(cl) = get("content-length") {
            let Ok(n) = cl.parse::<u64>() else {
                return bad_request(io, "content-length");
            };
            io.read_exact_to(n, &mut h)?;
        }
        let (body_len, body_sha) = h.finish();

        let conn_hdr = get("connection").unwrap_or_default().to_ascii_lowercase();
        let mut close = conn_hdr.contains("close")
            || (version == "HTTP/1.0" && !conn_hdr.contains("keep-alive"));

        if let Some(ms) = path_number(&path, "sleep") {
            thread::sleep(Duration::from_millis(ms));
        }

        let id_hdr = format!("X-Upstream-Id: {}\r\n", st.id);
        let conn_line = if close { "Connection: close\r\n" } else { "" };

        if path_has(&path, "garbage") {
            io.s.write_all(b"THIS IS NOT HTTP\r\n\r\n")?;
            io.s.flush()?;
            return Ok(());
        }
        if path_has(&path, "late-bytes") {
            // A misbehaving keep-alive upstream: a complete answer, then, while the connection
            // sits idle, the start of an answer nobody asked for.
            io.s.write_all(
                format!("HTTP/1.1 200 OK\r\n{id_hdr}Content-Length: 2\r\n\r\nok").as_bytes(),
            )?;
            io.s.flush()?;
            thread::sleep(Duration::from_millis(100));
            io.s.write_all(
                b"HTTP/1.1 200 OK\r\nX-Upstream-Id: STALE\r\nContent-Length: 5\r\n\r\nstale",
            )?;
            io.s.flush()?;
            return Ok(());
        }
        if let Some(n) = path_number(&path, "truncate") {
            // Promise n bytes, send half, then close.
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{id_hdr}Content-Length: {n}\r\n\r\n"
            );
            io.s.write_all(head.as_bytes())?;
            let s = &mut io.s;
            pattern.for_each_chunk(n / 2, &[Pattern::BLOCK], |c| s.write_all(c))?;
            io.s.flush()?;
            return Ok(());
        }
        if let Some(n) = path_number(&path, "truncchunked") {
            // A chunked answer that stops (connection closed) after about half of n bytes,
            // without the last chunk.
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{id_hdr}Transfer-Encoding: chunked\r\n\r\n"
            );
            io.s.write_all(head.as_bytes())?;
            let s = &mut io.s;
            pattern.for_each_chunk(n / 2, &[4096], |c| {
                s.write_all(format!("{:x}\r\n", c.len()).as_bytes())?;
                s.write_all(c)?;
                s.write_all(b"\r\n")
            })?;
            io.s.flush()?;
            return Ok(());
        }
        if let Some(n) = path_number(&path, "bytes") {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{id_hdr}{conn_line}Content-Length: {n}\r\n\r\n"
            );
            io.s.write_all(head.as_bytes())?;
            if method != "HEAD" {
                let s = &mut io.s;
                pattern.for_each_chunk(n, &[Pattern::BLOCK], |c| s.write_all(c))?;
            }
            io.s.flush()?;
        } else if let Some(n) = path_number(&path, "chunked") {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{id_hdr}{conn_line}Transfer-Encoding: chunked\r\n\r\n"
            );
            io.s.write_all(head.as_bytes())?;
            let s = &mut io.s;
            pattern.for_each_chunk(n, &[1, 7, 100, 4096, 65536, 12345, 65000], |c| {
                s.write_all(format!("{:x}\r\n", c.len()).as_bytes())?;
                s.write_all(c)?;
                s.write_all(b"\r\n")
            })?;
            io.s.write_all(b"0\r\n\r\n")?;
            io.s.flush()?;
        } else {
            if path_has(&path, "close") {
                close = true;
            }
            let echo = json!({
                "id": st.id,
                "method": method,
                "path": path,
                "version": version,
                "headers": headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
                "body_len": body_len,
                "body_sha256": body_sha,
            });
            let body = serde_json::to_vec(&echo).unwrap();
            let conn_line = if close { "Connection: close\r\n" } else { "" };
            let hop = if path_has(&path, "hop") {
                "Connection: X-Hop-Resp\r\nX-Hop-Resp: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: foo/1\r\nX-End-To-End: kept\r\n"
            } else {
                ""
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{id_hdr}{conn_line}{hop}Content-Length: {}\r\n\r\n",
                body.len()
            );
            let mut out = head.into_bytes();
            if method != "HEAD" {
                out.extend_from_slice(&body);
            }
            io.s.write_all(&out)?;
            io.s.flush()?;
        }
        if close {
            return Ok(());
        }
    }
}

/// Sends `n` requests for `path` on one keep-alive connection and returns the upstream ids.
pub fn ids_over_one_connection(port: u16, path: &str, n: usize) -> Vec<String> {
    let mut c = Client::connect(port);
    (0..n)
        .map(|_| {
            let r = c.get(path);
            assert_eq!(r.status, 200, "body {:?}", r.text());
            r.upstream_id().expect("X-Upstream-Id").to_string()
        })
        .collect()
}

/// Counts occurrences of `id` in `ids`.
pub fn count(ids: &[String], id: &str) -> usize {
    ids.iter().filter(|x| x.as_str() == id).count()
}

/// Polls `f` every 50 ms until it returns true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
