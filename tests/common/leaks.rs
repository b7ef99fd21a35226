//! The suite-wide log check (SPEC §1.6: no log line holds a token, a cookie value, a secret or a
//! query string). While tests run, the harness writes down every credential it hands the proxy
//! (bearer tokens and other `Authorization` credentials, cookie values, query values, secrets in
//! config files) and keeps every proxy's stderr and stdout; after the whole suite,
//! `tests/python/log_leaks.py` (run by `tests/run.sh`) looks for each of them in each log.
//!
//! Files live under `<target>/tmp/leak-check/`: `secrets/<pid>.txt` (one value per line) and
//! `logs/<pid>-<n>.log`.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Values shorter than this are not recorded: short ones (`x`, `secret`) occur in logs by
/// chance, and no real credential is that short.
const MIN_LEN: usize = 16;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("leak-check")
}

static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Write `value` down as a secret no log may hold.
pub fn record(value: &str) {
    let value = value.trim().trim_matches('"');
    if value.len() < MIN_LEN || value.contains('\n') {
        return;
    }
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen
        .get_or_insert_with(HashSet::new)
        .insert(value.to_string())
    {
        return;
    }
    let dir = dir().join("secrets");
    let _ = fs::create_dir_all(&dir);
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{}.txt", std::process::id())))
    {
        let _ = writeln!(f, "{value}");
    }
}

/// Record the credentials a request carries: the `Authorization` credential, each cookie
/// value, and each query value.
pub fn record_request(path: &str, headers: &[(&str, &str)]) {
    if let Some((_, query)) = path.split_once('?') {
        for pair in query.split('&') {
            if let Some((_, v)) = pair.split_once('=') {
                record(v);
            }
        }
    }
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("authorization") {
            record(value.split_once(' ').map_or(*value, |(_, cred)| cred));
        } else if name.eq_ignore_ascii_case("cookie") {
            for c in value.split(';') {
                if let Some((_, v)) = c.split_once('=') {
                    record(v);
                }
            }
        }
    }
}

/// Record the secrets a config file names (`client_secret`, session `secret`, admin `key`).
pub fn record_config(yaml: &str) {
    for line in yaml.lines() {
        let l = line.trim_start().trim_start_matches("- ");
        for key in ["client_secret", "secret", "key"] {
            for quoted in [format!("{key}:"), format!("\"{key}\":")] {
                if let Some(v) = l.strip_prefix(&quoted) {
                    record(v);
                }
            }
        }
    }
}

static LOGS: AtomicUsize = AtomicUsize::new(0);

/// Keep a copy of a proxy's log files for the check after the suite.
pub fn keep_logs(files: &[&Path]) {
    let dir = dir().join("logs");
    let _ = fs::create_dir_all(&dir);
    let n = LOGS.fetch_add(1, Ordering::Relaxed);
    let mut all = Vec::new();
    for f in files {
        all.extend(fs::read(f).unwrap_or_default());
    }
    let _ = fs::write(dir.join(format!("{}-{n}.log", std::process::id())), all);
}
