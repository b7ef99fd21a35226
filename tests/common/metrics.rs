//! The status listener from the tests' side: its port (read from the proxy's start line),
//! requests to it, and `/metrics` parsed by Python's `prometheus_client` parser
//! (`tests/python/parse_metrics.py`, installed by `tests/run.sh` into `tests/python/.venv`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{eventually, Client, Proxy, Response};

/// The Python that has `prometheus_client`: `PORTCULLIS_TEST_PYTHON`, else the venv
/// `tests/run.sh` makes.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_TEST_PYTHON") {
        return p.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/.venv/bin/python3")
}

impl Proxy {
    /// The status listener's port, from the `status=ADDR` of the start line (waits for it).
    pub fn status_port(&self) -> u16 {
        let mut port = None;
        let found = eventually(Duration::from_secs(10), || {
            port = self.stderr().split_whitespace().find_map(|w| {
                w.strip_prefix("status=")
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok())
            });
            port.is_some()
        });
        assert!(found, "no status=ADDR in the start line:\n{}", self.log());
        port.unwrap_or_default()
    }

    /// `method path` on the status listener.
    pub fn status_request(&self, method: &str, path: &str) -> Response {
        Client::connect(self.status_port()).request(method, path, &[], b"")
    }

    /// GET `path` on the status listener.
    pub fn status_get(&self, path: &str) -> Response {
        self.status_request("GET", path)
    }

    /// GET /metrics once every client connection has closed, so every request the test sent
    /// has been counted (a worker counts a request right after its answer is written, which
    /// can be after the client has read it).
    pub fn scrape_settled(&self) -> Metrics {
        let mut m = self.scrape();
        let settled = eventually(Duration::from_secs(5), || {
            m = self.scrape();
            m.get(
                "apisix_nginx_http_current_connections",
                &[("state", "active")],
            ) == 0.0
        });
        assert!(settled, "connections stayed open:\n{}", m.text);
        m
    }

    /// GET /metrics, parsed.
    pub fn scrape(&self) -> Metrics {
        let r = self.status_get("/metrics");
        assert_eq!(r.status, 200, "/metrics: {}\n{}", r.text(), self.log());
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
            "{:?}",
            r.headers
        );
        Metrics::parse(&r.text())
    }
}

/// One sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Series name (with `_bucket`, `_sum`, `_count` for histograms).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A series (`name`, a subset of its labels) and by how much it should have moved.
pub type Moved<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// A parsed exposition.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Every sample.
    pub samples: Vec<Sample>,
    /// Every family: (name, type, help).
    pub families: Vec<(String, String, String)>,
    /// The text as served.
    pub text: String,
}

impl Metrics {
    /// Parse `text` with `prometheus_client`; panics with the parser's error when it refuses.
    pub fn parse(text: &str) -> Metrics {
        let py = python();
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/parse_metrics.py");
        let mut child = Command::new(&py)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): run tests/run.sh, which installs tests/python/requirements.txt \
                     into tests/python/.venv, or set PORTCULLIS_TEST_PYTHON",
                    py.display()
                )
            });
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "prometheus_client refused the exposition: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut samples = Vec::new();
        let mut families = Vec::new();
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            if let Some(f) = v.get("families") {
                for f in f.as_array().unwrap() {
                    families.push((
                        f["name"].as_str().unwrap().to_string(),
                        f["type"].as_str().unwrap().to_string(),
                        f["help"].as_str().unwrap().to_string(),
                    ));
                }
                continue;
            }
            let labels = v["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            samples.push(Sample {
                name: v["name"].as_str().unwrap().to_string(),
                labels,
                value: v["value"].as_f64().unwrap(),
            });
        }
        Metrics {
            samples,
            families,
            text: text.to_string(),
        }
    }

    /// The sum of the samples named `name` whose labels include all of `labels` (0 if none).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// How far [`get`](Metrics::get) moved from `before` to this scrape.
    pub fn since(&self, before: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels) - before.get(name, labels)
    }

    /// Each `(name, labels, by)` moved by exactly `by` from `before` to this scrape; panics
    /// listing every one that did not, with this exposition.
    pub fn assert_moved(&self, before: &Metrics, expected: &[Moved<'_>]) {
        let wrong: Vec<String> = expected
            .iter()
            .filter_map(|&(name, labels, by)| {
                let moved = self.since(before, name, labels);
                (moved != by).then(|| format!("{name} {labels:?}: moved by {moved}, not {by}"))
            })
            .collect();
        assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), self.text);
    }

    /// `portcullis_config_changes_total` of `source` (`file`, `admin`, `etcd`) and `outcome`
    /// (`applied`, `rejected`).
    pub fn config_changes(&self, source: &str, outcome: &str) -> f64 {
        self.get(
            "portcullis_config_changes_total",
            &[("source", source), ("outcome", outcome)],
        )
    }

    /// The changes of `source` applied and rejected from `before` to this scrape.
    pub fn config_changes_since(&self, before: &Metrics, source: &str) -> (f64, f64) {
        let moved =
            |outcome| self.config_changes(source, outcome) - before.config_changes(source, outcome);
        (moved("applied"), moved("rejected"))
    }

    /// The samples named `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}
