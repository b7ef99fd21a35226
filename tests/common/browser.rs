//! A real browser for the login-flow tests: Debian's `chromium`, driven by `playwright-core`
//! from `node tests/browser/login.mjs` (see that file for the scenario format).
//!
//! [`run`] hands the script a scenario (JSON on stdin), waits (bounded) and parses the result:
//! where each step landed, its redirect chain, page text and body, and the cookies the browser
//! holds. A failed step panics with the script's reason. `/usr/bin/chromium` and
//! `tests/browser/node_modules` must be installed (`bash tests/run.sh` does it); when they are
//! missing this panics rather than skipping.
//!
//! Not declared in `common/mod.rs`: a test file that uses it declares it next to `mod common;`
//! as `#[path = "common/browser.rs"] mod browser;`.
//!
//! Runs are serialised within one test binary: a 2-core machine runs one chromium at a time
//! far more predictably than several.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::Echo;

/// The browser binary (Debian's package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Default bound of the whole scenario when it names none (`total_timeout_ms`).
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(45);
/// Extra time the script gets past its own bound before it is killed.
const KILL_GRACE: Duration = Duration::from_secs(10);

const INSTALL_HINT: &str = "run `bash tests/run.sh`, which installs them (apt chromium, then \
                            `npm ci` in tests/browser)";

static ONE_BROWSER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The node project directory `tests/browser`.
pub fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("browser")
}

/// Panics with an install hint when chromium, node or playwright-core is missing.
pub fn check_installed() {
    if !Path::new(CHROMIUM).is_file() {
        panic!("the browser tests need {CHROMIUM} (Debian's `chromium`) and it is missing: {INSTALL_HINT}");
    }
    let pkg = browser_dir()
        .join("node_modules")
        .join("playwright-core")
        .join("package.json");
    if !pkg.is_file() {
        panic!(
            "the browser tests need {} and it is missing: {INSTALL_HINT}",
            pkg.display()
        );
    }
}

/// A cookie as the browser holds it.
#[derive(Debug, Clone, Deserialize)]
pub struct Cookie {
    pub name: String,
    pub domain: String,
    pub path: String,
    pub value: String,
    pub value_len: usize,
    pub http_only: bool,
    pub secure: bool,
    /// `Strict`, `Lax` or `None`.
    pub same_site: String,
    /// Seconds since the epoch; `-1` for a session cookie.
    pub expires: f64,
}

/// One hop of a main-frame redirect chain.
#[derive(Debug, Clone, Deserialize)]
pub struct Hop {
    pub url: String,
    pub status: Option<u16>,
    /// The `Location` header of a redirect.
    pub location: Option<String>,
}

/// A request the page made during a step (documents, sub-resources, fetches).
#[derive(Debug, Clone, Deserialize)]
pub struct PageRequest {
    pub method: String,
    pub url: String,
    pub status: Option<u16>,
    /// Playwright's resource type: `document`, `fetch`, `image`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The network error of a failed request.
    pub error: Option<String>,
}

/// Where one scenario step landed.
#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    pub i: usize,
    /// The step's action (`goto`, `login`, `consent`, `logout`, `click`, `fetch`).
    #[serde(rename = "do")]
    pub action: String,
    /// The URL the page shows after the step (for `fetch`: the answer's URL).
    pub url: String,
    /// Status of the landing document (for `fetch`: of the answer; 0 for a redirect).
    pub status: Option<u16>,
    /// `login`, `consent`, `logout` (the provider's forms), `idp_error` or `other`.
    pub page: String,
    pub title: Option<String>,
    /// The page's visible text.
    pub text: Option<String>,
    /// The landing document's bytes as text (the raw JSON of an upstream echo).
    pub body: Option<String>,
    /// The redirect chain that led to the landing document, first request first.
    pub chain: Vec<Hop>,
    pub requests: Vec<PageRequest>,
    /// Every cookie the browser holds after the step.
    pub cookies: Vec<Cookie>,
    pub ms: u64,
}

impl Step {
    /// The landing document as an upstream echo. Panics (with the step) when it is not one.
    pub fn echo(&self) -> Echo {
        let body = self
            .body
            .as_deref()
            .unwrap_or_else(|| panic!("step {} has no document body: {self:#?}", self.i));
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| {
            panic!(
                "step {} landed on {} ({:?}) whose body is not an upstream echo ({e}): {body:?}",
                self.i, self.url, self.status
            )
        });
        Echo::from_json(&v)
    }

    /// The first hop of the chain whose URL starts with `prefix`.
    pub fn hop(&self, prefix: &str) -> Option<&Hop> {
        self.chain.iter().find(|h| h.url.starts_with(prefix))
    }

    /// Like [`Step::hop`], panicking with the chain when there is none.
    pub fn expect_hop(&self, prefix: &str) -> &Hop {
        self.hop(prefix).unwrap_or_else(|| {
            panic!(
                "step {} ({}): no hop to {prefix}… in the redirect chain {:#?}",
                self.i, self.action, self.chain
            )
        })
    }

    /// The cookies held for `domain` after this step.
    pub fn cookies_for(&self, domain: &str) -> Vec<&Cookie> {
        self.cookies.iter().filter(|c| c.domain == domain).collect()
    }
}

/// What a whole scenario did.
#[derive(Debug, Clone, Deserialize)]
pub struct BrowserRun {
    pub ok: bool,
    pub error: Option<String>,
    pub browser_version: Option<String>,
    /// Time to start chromium.
    pub launch_ms: Option<u64>,
    /// Time of the whole script run, launch included.
    pub total_ms: Option<u64>,
    pub steps: Vec<Step>,
    /// Every cookie the browser holds at the end.
    pub cookies: Vec<Cookie>,
    /// The script's stderr.
    #[serde(skip)]
    pub stderr: String,
}

impl BrowserRun {
    /// The last step. Panics when no step ran.
    pub fn last(&self) -> &Step {
        self.steps.last().expect("the scenario ran no step")
    }

    /// The cookies held for `domain` at the end.
    pub fn cookies_for(&self, domain: &str) -> Vec<&Cookie> {
        self.cookies.iter().filter(|c| c.domain == domain).collect()
    }

    /// The cookie `name` held for `domain` at the end.
    pub fn cookie(&self, domain: &str, name: &str) -> Option<&Cookie> {
        self.cookies
            .iter()
            .find(|c| c.domain == domain && c.name == name)
    }
}

/// Runs `scenario` (see `tests/browser/login.mjs`) and returns its result; panics with the
/// script's reason, stderr and partial result when a step or check fails.
pub fn run(scenario: &Value) -> BrowserRun {
    match try_run(scenario) {
        Ok(r) => r,
        Err(failed) => panic!("{}", failed.report()),
    }
}

/// A scenario that did not pass.
#[derive(Debug)]
pub struct Failed {
    /// The script's reason (first line names the step).
    pub error: String,
    /// The script's exit status (`None`: killed after its bound).
    pub exit_code: Option<i32>,
    pub stderr: String,
    /// Whatever steps completed.
    pub partial: Option<Box<BrowserRun>>,
}

impl Failed {
    pub fn report(&self) -> String {
        let steps = self
            .partial
            .as_ref()
            .map(|r| {
                r.steps
                    .iter()
                    .map(|s| {
                        format!(
                            "  step {} {}: {:?} {} (page {}), {} ms",
                            s.i, s.action, s.status, s.url, s.page, s.ms
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        format!(
            "browser scenario failed (exit {:?}): {}\nsteps done:\n{steps}\nscript stderr:\n{}",
            self.exit_code, self.error, self.stderr
        )
    }
}

/// Runs `scenario`; `Err` when the script reports a failure, exits non-zero or overruns.
/// Panics only when the browser is not installed or node cannot be run at all.
pub fn try_run(scenario: &Value) -> Result<BrowserRun, Failed> {
    check_installed();
    let mut scenario = scenario.clone();
    if scenario.get("chromium").is_none() {
        scenario["chromium"] = json!(CHROMIUM);
    }
    let total = match scenario.get("total_timeout_ms").and_then(Value::as_u64) {
        Some(ms) => Duration::from_millis(ms),
        None => {
            scenario["total_timeout_ms"] = json!(DEFAULT_TOTAL_TIMEOUT.as_millis() as u64);
            DEFAULT_TOTAL_TIMEOUT
        }
    };
    let input = serde_json::to_vec(&scenario).unwrap();

    let _one = ONE_BROWSER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = browser_dir();
    let mut child = Command::new("node")
        .arg(dir.join("login.mjs"))
        .arg("-")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}); {INSTALL_HINT}"));
    let mut stdin = child.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
        // Dropping stdin closes it: the script reads to EOF.
    });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));

    let deadline = Instant::now() + total + KILL_GRACE;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for node") {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();

    let parsed: Option<BrowserRun> = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .map(|mut r: BrowserRun| {
            r.stderr = stderr.clone();
            r
        });
    let exit_code = status.and_then(|s| s.code());
    let parsed = parsed.map(Box::new);
    match (status, parsed) {
        (Some(st), Some(r)) if st.success() && r.ok => Ok(*r),
        (None, partial) => Err(Failed {
            error: format!(
                "the browser script did not finish within {:?} and was killed",
                total + KILL_GRACE
            ),
            exit_code,
            stderr,
            partial,
        }),
        (Some(_), partial) => Err(Failed {
            error: partial
                .as_ref()
                .and_then(|r| r.error.clone())
                .unwrap_or_else(|| format!("the script printed no result; stdout: {stdout:?}")),
            exit_code,
            stderr,
            partial,
        }),
    }
}

/// `(name, value)` pairs of a URL's query, percent-decoded (`+` as a space).
pub fn query_params(url: &str) -> Vec<(String, String)> {
    let query = match url.split_once('?') {
        Some((_, q)) => q.split('#').next().unwrap_or(""),
        None => return Vec::new(),
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The value of query parameter `name` of `url`; panics when it is absent.
pub fn query_param(url: &str, name: &str) -> String {
    query_params(url)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no query parameter {name:?} in {url}"))
}

/// Decodes `%XX` escapes and `+` (form encoding); invalid escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi * 16 + lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A regex (JS syntax) matching URLs that start with `prefix` literally.
pub fn starts_with_re(prefix: &str) -> String {
    let mut re = String::from("^");
    for c in prefix.chars() {
        if "\\^$.|?*+()[]{}/".contains(c) {
            re.push('\\');
        }
        re.push(c);
    }
    re
}
