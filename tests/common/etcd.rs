//! A private etcd (Debian's `etcd-server` 3.4) on free loopback ports with a temp data dir, and
//! `etcdctl` (`etcd-client`) to write into it as an operator or an APISIX Admin API would.
//! tests/run.sh installs both when missing; a missing binary fails the test, never skips it.

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, Client, TempDir};

/// How long etcd may take to answer after a start.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running etcd member; killed on drop.
pub struct EtcdServer {
    child: Option<Child>,
    /// Client port on 127.0.0.1.
    pub port: u16,
    peer: u16,
    dir: TempDir,
}

fn require(bin: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = format!("{dir}/{bin}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("`{bin}` is not installed: tests/run.sh installs Debian's etcd-server and etcd-client");
}

impl EtcdServer {
    /// A fresh member, answering.
    pub fn start() -> EtcdServer {
        let mut last = String::new();
        for _ in 0..3 {
            let mut e = EtcdServer {
                child: None,
                port: free_port(),
                peer: free_port(),
                dir: TempDir::new(),
            };
            e.spawn();
            match e.wait_ready() {
                Ok(()) => return e,
                Err(err) => last = err,
            }
        }
        panic!("etcd did not start: {last}");
    }

    /// A member on `port` (one a client was told about before it existed).
    pub fn start_on(port: u16) -> EtcdServer {
        let mut e = EtcdServer {
            child: None,
            port,
            peer: free_port(),
            dir: TempDir::new(),
        };
        e.spawn();
        e.wait_ready()
            .unwrap_or_else(|err| panic!("etcd did not start: {err}"));
        e
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(require("etcd"))
            .args(["--name", "n1", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("n1={peer}")])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("etcd exited ({st}):\n{}", self.log()));
            }
            if self.revision_now().is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd not answering on {}:\n{}",
                    self.port,
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// etcd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn revision_now(&self) -> Option<i64> {
        if !super::can_connect(self.port) {
            return None;
        }
        let mut c = Client::connect(self.port);
        let body = json!({"key": "AA=="}).to_string();
        c.try_write(&Client::build("POST", "/v3/kv/range", &[], body.as_bytes()))
            .ok()?;
        let r = c.try_read_response("POST").ok()?;
        if r.status != 200 {
            return None;
        }
        r.json()
            .pointer("/header/revision")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.revision_now().expect("etcd answers")
    }

    /// Run `etcdctl` against this member; panics with its output when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(require("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url()))
            .args(args)
            .output()
            .expect("run etcdctl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// `etcdctl put key value`.
    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key, "--", value]);
    }

    /// `etcdctl del key`.
    pub fn del(&self, key: &str) {
        self.ctl(&["del", key]);
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", key, "--print-value-only"]);
        let v = out.strip_suffix('\n').unwrap_or(&out);
        (!out.is_empty()).then(|| v.to_string())
    }

    /// Compact the history up to `revision`.
    pub fn compact(&self, revision: i64) {
        self.ctl(&["compaction", &revision.to_string(), "--physical"]);
    }

    /// Stop the member (SIGTERM, then wait); its data stays for [`EtcdServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the stopped member again, on the same ports with the same data.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready()
            .unwrap_or_else(|e| panic!("etcd did not restart: {e}"));
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
