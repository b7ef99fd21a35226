//! The etcd client: one background thread with a tokio runtime and reqwest, speaking etcd's v3
//! API through its HTTP/JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, a streamed `/v3/watch`), as
//! APISIX's own client does. Nothing here runs on a worker: the control plane calls it through a
//! channel and gets the prefix's contents and changes as [`SyncEvent`]s.
//!
//! Keys and values travel base64-encoded and revisions as decimal strings (proto3's JSON
//! mapping); a field at its zero value is left out of an answer, so every field is optional here.
//! Requests go to the first reachable member of `etcd.host`, moving on to the next on failure.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::EtcdSettings;

/// First wait before reconnecting; doubled on each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts while etcd is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Keys read per range request during a full read (all at one revision).
const PAGE: u64 = 500;
/// A watch this long without a message gets its member probed.
const QUIET_PROBE: Duration = Duration::from_secs(10);
/// Largest watch message buffered while incomplete; a bigger one is a broken stream.
const MAX_MESSAGE: usize = 64 << 20;

/// One key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for a deletion).
    pub value: Vec<u8>,
    /// Revision of its last change.
    pub mod_revision: i64,
}

/// One change seen by the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The key after the change (value empty when deleted).
    pub kv: Kv,
    /// Whether the key was deleted.
    pub deleted: bool,
}

/// What the sync loop hands the control plane, in order.
#[derive(Debug)]
pub enum SyncEvent {
    /// Every key under the prefix at `revision`: replaces whatever was known before (the
    /// first read, and again after a compaction made the watch lose its place).
    Snapshot {
        /// The store's revision the read was made at.
        revision: i64,
        /// Every key under the prefix.
        kvs: Vec<Kv>,
    },
    /// Changes since the previous event, in revision order.
    Changes {
        /// The revision of the last change.
        revision: i64,
        /// The changes.
        events: Vec<Event>,
    },
}

/// Why an etcd request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// No member of `etcd.host` answered.
    #[error("etcd unreachable ({0})")]
    Unreachable(String),
    /// A member answered with an error.
    #[error("etcd refused the request: HTTP {0}: {1}")]
    Refused(u16, String),
    /// A member answered something that is not the gateway's JSON.
    #[error("etcd answered something unreadable: {0}")]
    Invalid(String),
    /// The revision asked for was compacted away.
    #[error("etcd compacted revision {0}")]
    Compacted(i64),
    /// The etcd thread is gone.
    #[error("the etcd thread stopped")]
    Stopped,
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether the comparison held and the write was made.
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
}

type Reply<T> = oneshot::Sender<Result<T, EtcdError>>;

enum Call {
    Get(Vec<u8>, Reply<Option<Kv>>),
    PutIf(Vec<u8>, Vec<u8>, i64, Reply<TxnOutcome>),
    DeleteIf(Vec<u8>, i64, Reply<TxnOutcome>),
    CreateOrGet(Vec<u8>, Vec<u8>, Reply<Vec<u8>>),
    Sync(Vec<u8>, std::sync::mpsc::Sender<SyncEvent>),
}

/// A handle on the etcd thread; cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    tx: mpsc::UnboundedSender<Call>,
    reachable: Arc<AtomicBool>,
    synced: Arc<AtomicBool>,
    prefix: String,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Etcd")
    }
}

impl Etcd {
    /// Start the etcd thread for `settings`. Nothing is requested until a call is made.
    pub fn start(settings: &EtcdSettings) -> std::io::Result<Etcd> {
        let (tx, rx) = mpsc::unbounded_channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let reachable = Arc::new(AtomicBool::new(false));
        let client = Arc::new(Client::new(settings, reachable.clone()));
        std::thread::Builder::new()
            .name("etcd".into())
            .spawn(move || rt.block_on(serve(rx, client)))?;
        Ok(Etcd {
            tx,
            reachable,
            synced: Arc::new(AtomicBool::new(false)),
            prefix: settings.prefix.clone(),
        })
    }

    /// The configured key prefix, without a trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the last request to etcd (or the running watch) reached a member.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Whether the control plane has applied a first full read.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Record that the control plane applied a full read (readiness).
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Call) -> Result<T, EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| EtcdError::Stopped)?;
        rx.blocking_recv().map_err(|_| EtcdError::Stopped)?
    }

    /// One key, if present. Blocks the calling thread (never call it on a worker).
    pub fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        self.call(|r| Call::Get(key.as_bytes().to_vec(), r))
    }

    /// Write `value` under `key` if the key's mod revision is `mod_revision` (0: the key must
    /// not exist). Blocks.
    pub fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        mod_revision: i64,
    ) -> Result<TxnOutcome, EtcdError> {
        self.call(|r| Call::PutIf(key.as_bytes().to_vec(), value, mod_revision, r))
    }

    /// Delete `key` if its mod revision is `mod_revision`. Blocks.
    pub fn delete_if(&self, key: &str, mod_revision: i64) -> Result<TxnOutcome, EtcdError> {
        self.call(|r| Call::DeleteIf(key.as_bytes().to_vec(), mod_revision, r))
    }

    /// Write `value` under `key` unless the key exists; either way, the value now there. Every
    /// node racing to create it gets the one value that won. Blocks.
    pub fn create_or_get(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, EtcdError> {
        self.call(|r| Call::CreateOrGet(key.as_bytes().to_vec(), value, r))
    }

    /// Keep `sink` in step with every key under `<prefix>/`: a full read, then a watch from
    /// its revision; reconnects with backoff, resyncs after a compaction, forever (until the
    /// receiver is dropped).
    pub fn sync(&self, sink: std::sync::mpsc::Sender<SyncEvent>) -> Result<(), EtcdError> {
        let dir = format!("{}/", self.prefix).into_bytes();
        self.tx
            .send(Call::Sync(dir, sink))
            .map_err(|_| EtcdError::Stopped)
    }
}

async fn serve(mut rx: mpsc::UnboundedReceiver<Call>, client: Arc<Client>) {
    while let Some(call) = rx.recv().await {
        let c = client.clone();
        tokio::spawn(async move {
            match call {
                Call::Get(key, reply) => {
                    let _ = reply.send(c.get(&key).await);
                }
                Call::PutIf(key, value, rev, reply) => {
                    let _ = reply.send(c.put_if(&key, &value, rev).await);
                }
                Call::DeleteIf(key, rev, reply) => {
                    let _ = reply.send(c.delete_if(&key, rev).await);
                }
                Call::CreateOrGet(key, value, reply) => {
                    let _ = reply.send(c.create_or_get(&key, &value).await);
                }
                Call::Sync(dir, sink) => c.sync_loop(&dir, sink).await,
            }
        });
    }
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte below
/// 0xff incremented (`/apisix/` → `/apisix0`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// An int64 as proto3 JSON writes it (a string), or a number; absent is 0.
fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn bytes_of(v: Option<&Value>) -> Result<Vec<u8>, EtcdError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64
            .decode(s)
            .map_err(|e| EtcdError::Invalid(format!("a key or value is not base64: {e}"))),
        Some(_) => Err(EtcdError::Invalid("a key or value is not a string".into())),
    }
}

fn kv_of(v: &Value) -> Result<Kv, EtcdError> {
    Ok(Kv {
        key: bytes_of(v.get("key"))?,
        value: bytes_of(v.get("value"))?,
        mod_revision: int(v.get("mod_revision")),
    })
}

fn revision_of(answer: &Value) -> i64 {
    int(answer.get("header").and_then(|h| h.get("revision")))
}

struct Client {
    http: reqwest::Client,
    hosts: Vec<String>,
    timeout: Duration,
    user: Option<(String, String)>,
    /// The member requests go to first: the last one that answered.
    current: AtomicUsize,
    token: Mutex<Option<String>>,
    reachable: Arc<AtomicBool>,
}

impl Client {
    fn new(settings: &EtcdSettings, reachable: Arc<AtomicBool>) -> Client {
        let tls = (*crate::upstream::tls::client_config(true)).clone();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot build the etcd HTTP client with our TLS settings");
                reqwest::Client::new()
            });
        Client {
            http,
            hosts: settings.hosts.clone(),
            timeout: settings.timeout,
            user: settings.user.clone(),
            current: AtomicUsize::new(0),
            token: Mutex::new(None),
            reachable,
        }
    }

    fn token(&self) -> Option<String> {
        self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Get a fresh token from `host` when a user is configured.
    async fn authenticate(&self, host: &str) -> Result<(), EtcdError> {
        let Some((user, password)) = &self.user else {
            return Ok(());
        };
        let body = json!({ "name": user, "password": password });
        let answer = self
            .send(host, "/v3/auth/authenticate", &body, None, true)
            .await?;
        let token = answer
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| EtcdError::Invalid("authenticate answered no token".into()))?;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.to_string());
        Ok(())
    }

    async fn send(
        &self,
        host: &str,
        path: &str,
        body: &Value,
        token: Option<&str>,
        bounded: bool,
    ) -> Result<Value, EtcdError> {
        let mut req = self
            .http
            .post(format!("{host}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if bounded {
            req = req.timeout(self.timeout);
        }
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| EtcdError::Unreachable(format!("{host}: {}", describe(&e))))?;
        let status = resp.status().as_u16();
        let text = resp
            .bytes()
            .await
            .map_err(|e| EtcdError::Unreachable(format!("{host}: {}", describe(&e))))?;
        let answer: Value = serde_json::from_slice(&text)
            .map_err(|e| EtcdError::Invalid(format!("{host}{path}: {e}")))?;
        if status != 200 {
            return Err(refusal(status, &answer));
        }
        Ok(answer)
    }

    /// POST `body` to `path` on the current member, then the others; re-authenticates once
    /// when the token is refused (tokens expire).
    async fn post(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let n = self.hosts.len().max(1);
        let start = self.current.load(Ordering::Relaxed);
        let mut last = EtcdError::Unreachable("no etcd.host".into());
        for i in 0..n {
            let idx = (start + i) % n;
            let Some(host) = self.hosts.get(idx) else {
                break;
            };
            let mut reauthed = false;
            loop {
                if self.user.is_some() && self.token().is_none() {
                    match self.authenticate(host).await {
                        Ok(()) => reauthed = true,
                        Err(e @ EtcdError::Unreachable(_)) => {
                            last = e;
                            break;
                        }
                        // Wrong credentials: every member would say the same.
                        Err(e) => {
                            self.reachable.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                }
                match self
                    .send(host, path, body, self.token().as_deref(), true)
                    .await
                {
                    Ok(v) => {
                        self.current.store(idx, Ordering::Relaxed);
                        self.reachable.store(true, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(EtcdError::Refused(401, _)) if self.user.is_some() && !reauthed => {
                        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                    Err(e @ EtcdError::Unreachable(_)) => {
                        last = e;
                        break;
                    }
                    // The member answered: another would answer the same.
                    Err(e) => {
                        self.reachable.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
        }
        self.reachable.store(false, Ordering::Relaxed);
        Err(last)
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Kv>, EtcdError> {
        let answer = self
            .post("/v3/kv/range", &json!({ "key": b64(key) }))
            .await?;
        match answer.get("kvs").and_then(Value::as_array) {
            Some(kvs) => kvs.first().map(kv_of).transpose(),
            None => Ok(None),
        }
    }

    async fn txn(&self, body: Value) -> Result<(bool, Value), EtcdError> {
        let answer = self.post("/v3/kv/txn", &body).await?;
        let ok = answer
            .get("succeeded")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok((ok, answer))
    }

    async fn put_if(&self, key: &[u8], value: &[u8], rev: i64) -> Result<TxnOutcome, EtcdError> {
        let (succeeded, answer) = self
            .txn(json!({
                "compare": [{ "key": b64(key), "target": "MOD", "result": "EQUAL",
                              "mod_revision": rev.to_string() }],
                "success": [{ "request_put": { "key": b64(key), "value": b64(value) } }],
            }))
            .await?;
        Ok(TxnOutcome {
            succeeded,
            revision: revision_of(&answer),
        })
    }

    async fn delete_if(&self, key: &[u8], rev: i64) -> Result<TxnOutcome, EtcdError> {
        let (succeeded, answer) = self
            .txn(json!({
                "compare": [{ "key": b64(key), "target": "MOD", "result": "EQUAL",
                              "mod_revision": rev.to_string() }],
                "success": [{ "request_delete_range": { "key": b64(key) } }],
            }))
            .await?;
        Ok(TxnOutcome {
            succeeded,
            revision: revision_of(&answer),
        })
    }

    async fn create_or_get(&self, key: &[u8], value: &[u8]) -> Result<Vec<u8>, EtcdError> {
        let (created, answer) = self
            .txn(json!({
                "compare": [{ "key": b64(key), "target": "VERSION", "result": "EQUAL",
                              "version": "0" }],
                "success": [{ "request_put": { "key": b64(key), "value": b64(value) } }],
                "failure": [{ "request_range": { "key": b64(key) } }],
            }))
            .await?;
        if created {
            return Ok(value.to_vec());
        }
        let kv = answer
            .pointer("/responses/0/response_range/kvs/0")
            .ok_or_else(|| EtcdError::Invalid("the key vanished during its creation".into()))?;
        Ok(kv_of(kv)?.value)
    }

    /// Every key under `dir`, page by page at one revision.
    async fn read_all(&self, dir: &[u8]) -> Result<(i64, Vec<Kv>), EtcdError> {
        let end = prefix_end(dir);
        let mut from = dir.to_vec();
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let mut body = json!({
                "key": b64(&from), "range_end": b64(&end), "limit": PAGE.to_string(),
            });
            if revision != 0 {
                body["revision"] = json!(revision.to_string());
            }
            let answer = self.post("/v3/kv/range", &body).await?;
            if revision == 0 {
                revision = revision_of(&answer);
            }
            let kvs = answer.get("kvs").and_then(Value::as_array);
            for kv in kvs.into_iter().flatten() {
                out.push(kv_of(kv)?);
            }
            let more = answer.get("more").and_then(Value::as_bool).unwrap_or(false);
            match out.last() {
                Some(last) if more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => return Ok((revision, out)),
            }
        }
    }

    /// The sync loop: read everything, watch from there; on a lost stream resume where it
    /// stopped, on a compaction read everything again.
    async fn sync_loop(&self, dir: &[u8], sink: std::sync::mpsc::Sender<SyncEvent>) {
        let mut backoff = MIN_BACKOFF;
        let mut revision: Option<i64> = None;
        loop {
            let rev = match revision {
                Some(r) => r,
                None => match self.read_all(dir).await {
                    Ok((rev, kvs)) => {
                        if sink
                            .send(SyncEvent::Snapshot { revision: rev, kvs })
                            .is_err()
                        {
                            return;
                        }
                        rev
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "etcd: full read failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            match self.watch(dir, rev + 1, &sink, &mut backoff).await {
                Watched::Compacted(at) => {
                    tracing::warn!(
                        compacted = at,
                        watched_from = rev + 1,
                        "etcd: the watch's revision was compacted; reading everything again"
                    );
                    revision = None;
                }
                Watched::Lost(last, why) => {
                    revision = Some(last);
                    self.reachable.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %why, retry_in = ?backoff, "etcd: watch lost; the last applied config keeps serving");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    // The next member, in case this one is the one that is gone.
                    let n = self.hosts.len().max(1);
                    let cur = self.current.load(Ordering::Relaxed);
                    self.current.store((cur + 1) % n, Ordering::Relaxed);
                }
                Watched::SinkGone => return,
            }
        }
    }

    /// Watch `dir` from `start`, forwarding changes until the stream ends.
    async fn watch(
        &self,
        dir: &[u8],
        start: i64,
        sink: &std::sync::mpsc::Sender<SyncEvent>,
        backoff: &mut Duration,
    ) -> Watched {
        let mut last = start - 1;
        let n = self.hosts.len().max(1);
        let idx = self.current.load(Ordering::Relaxed) % n;
        let Some(host) = self.hosts.get(idx) else {
            return Watched::Lost(last, "no etcd.host".into());
        };
        if self.user.is_some() {
            // A fresh token: the stream is authorised once, when it is created.
            if let Err(e) = self.authenticate(host).await {
                return Watched::Lost(last, e.to_string());
            }
        }
        let body = json!({ "create_request": {
            "key": b64(dir), "range_end": b64(&prefix_end(dir)),
            "start_revision": start.to_string(),
        }});
        let mut req = self
            .http
            .post(format!("{host}/v3/watch"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = self.token() {
            req = req.header("authorization", t);
        }
        let mut resp = match req.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                return Watched::Lost(last, format!("{host}: watch answered HTTP {}", r.status()))
            }
            Err(e) => return Watched::Lost(last, format!("{host}: {}", describe(&e))),
        };
        let mut buf: Vec<u8> = Vec::new();
        loop {
            // A quiet stream may be a member that vanished without closing the connection: ask
            // it something small; an answer means all is well and nothing changed.
            let next = match tokio::time::timeout(QUIET_PROBE, resp.chunk()).await {
                Ok(next) => next,
                Err(_) => {
                    let probe = json!({ "key": b64(dir), "count_only": true, "limit": "1" });
                    if let Err(e) = self
                        .send(host, "/v3/kv/range", &probe, self.token().as_deref(), true)
                        .await
                    {
                        if matches!(e, EtcdError::Unreachable(_)) {
                            return Watched::Lost(
                                last,
                                format!("{host}: no answer to a probe of a quiet watch: {e}"),
                            );
                        }
                    }
                    continue;
                }
            };
            let chunk = match next {
                Ok(Some(c)) => c,
                Ok(None) => return Watched::Lost(last, format!("{host}: the watch stream ended")),
                Err(e) => return Watched::Lost(last, format!("{host}: {}", describe(&e))),
            };
            buf.extend_from_slice(&chunk);
            // The gateway writes one JSON object per message; take every complete one.
            let mut stream = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
            let mut consumed = 0;
            let mut messages = Vec::new();
            loop {
                match stream.next() {
                    Some(Ok(v)) => {
                        consumed = stream.byte_offset();
                        messages.push(v);
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        return Watched::Lost(
                            last,
                            format!("{host}: unreadable watch message: {e}"),
                        )
                    }
                    None => break,
                }
            }
            buf.drain(..consumed);
            if buf.len() > MAX_MESSAGE {
                return Watched::Lost(last, format!("{host}: a watch message over 64 MiB"));
            }
            for m in messages {
                let Some(result) = m.get("result") else {
                    let why = m
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("an error")
                        .to_string();
                    return Watched::Lost(last, format!("{host}: watch: {why}"));
                };
                let compacted = int(result.get("compact_revision"));
                if compacted > 0 {
                    return Watched::Compacted(compacted);
                }
                if result.get("canceled").and_then(Value::as_bool) == Some(true) {
                    let why = result
                        .get("cancel_reason")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                        .to_string();
                    return Watched::Lost(last, format!("{host}: watch canceled: {why}"));
                }
                if result.get("created").and_then(Value::as_bool) == Some(true) {
                    self.reachable.store(true, Ordering::Relaxed);
                    self.current.store(idx, Ordering::Relaxed);
                    *backoff = MIN_BACKOFF;
                    tracing::info!(host = %host, from = start, "etcd: watching");
                }
                let Some(events) = result.get("events").and_then(Value::as_array) else {
                    continue;
                };
                let mut out = Vec::with_capacity(events.len());
                for e in events {
                    let kv = match e.get("kv").map(kv_of) {
                        Some(Ok(kv)) => kv,
                        Some(Err(err)) => {
                            return Watched::Lost(last, format!("{host}: watch event: {err}"))
                        }
                        None => continue,
                    };
                    last = last.max(kv.mod_revision);
                    out.push(Event {
                        deleted: e.get("type").and_then(Value::as_str) == Some("DELETE"),
                        kv,
                    });
                }
                if out.is_empty() {
                    continue;
                }
                if sink
                    .send(SyncEvent::Changes {
                        revision: last,
                        events: out,
                    })
                    .is_err()
                {
                    return Watched::SinkGone;
                }
            }
        }
    }
}

enum Watched {
    /// The stream ended or broke after applying up to this revision.
    Lost(i64, String),
    /// The revision asked for was compacted.
    Compacted(i64),
    /// Nobody listens any more.
    SinkGone,
}

/// A reqwest error in words, with its cause (reqwest's own text hides it).
fn describe(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The gateway's error answer (`{"error":…,"code":…,"message":…}`) as an error.
fn refusal(status: u16, answer: &Value) -> EtcdError {
    let message = answer
        .get("message")
        .or_else(|| answer.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if message.contains("compacted") {
        return EtcdError::Compacted(0);
    }
    EtcdError::Refused(status, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/apisix/"), b"/apisix0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn proto3_json_fields_are_optional() {
        let kv = kv_of(&json!({"key": "L2FwaXNpeC9yb3V0ZXMvMQ==", "mod_revision": "7"})).unwrap();
        assert_eq!(kv.key, b"/apisix/routes/1");
        assert!(kv.value.is_empty());
        assert_eq!(kv.mod_revision, 7);
        assert_eq!(int(Some(&json!(12))), 12);
        assert_eq!(int(None), 0);
        assert!(kv_of(&json!({"key": "not base64!"})).is_err());
    }
}
