//! The control plane: signals, config reloads, Admin API changes and upstream DNS refresh.
//! Nothing here runs on a worker; changes reach the workers as new route-table snapshots, all
//! through [`Control::publish`].
//!
//! What the table is built from: the config file's routes and upstreams, overlaid by the Admin
//! API's objects (an Admin object replaces a file object with the same id). A change is checked
//! against the whole result before anything is written or published, so a change that does not
//! fit changes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::config::route::{check_route, check_upstream_object, id_of, UpstreamObject};
use crate::config::ssl::check_ssl;
use crate::config::store::{Kind, Objects, Store, Stored};
use crate::config::{self, Config, ConfigError, RouteSpec, Upstreams};
use crate::etcd::{Etcd, EtcdError, SyncEvent};
use crate::metrics::{self, ConfigSource};
use crate::plugins::PluginEnv;
use crate::router::RouteTable;
use crate::server::Shared;
use crate::tls::SslSpec;

/// Why an Admin API change was refused; each maps to one answer in `admin`.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The object does not check; every problem, with its field path.
    #[error("{}", join(.0))]
    Invalid(Vec<ConfigError>),
    /// No such object.
    #[error("{kind} `{id}` not found", kind = .0.singular(), id = .1)]
    NotFound(Kind, String),
    /// An upstream routes still name.
    #[error("can not delete this upstream, route {} is still using it now", .0.join(", "))]
    InUse(Vec<String>),
    /// An object only the config file has.
    #[error("{kind} `{id}` comes from the config file; change it there", kind = .0.singular(), id = .1)]
    FromFile(Kind, String),
    /// The store could not make the change durable; nothing was applied.
    #[error("the change could not be saved, nothing changed: {0}")]
    Storage(String),
}

fn join(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// An object as the Admin API answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Its id.
    pub id: String,
    /// Its value, with `create_time`/`update_time` when it came through the Admin API.
    pub value: Value,
}

/// What the table is built from, with the Admin API's objects both as stored and checked.
struct State {
    /// Bumped by every publish, so that a DNS refresh computed meanwhile is not published over
    /// a newer table.
    generation: u64,
    file_routes: Vec<RouteSpec>,
    file_upstreams: Upstreams,
    stored: Objects,
    admin_routes: BTreeMap<String, RouteSpec>,
    admin_upstreams: Upstreams,
    /// The file's SSL objects in force, and its `tls.fallback_sni`.
    file_ssls: Vec<SslSpec>,
    fallback_sni: Option<String>,
    /// The Admin API's SSL objects, with whether each is enabled (`status`).
    admin_ssls: BTreeMap<String, (SslSpec, bool)>,
    /// Under etcd: every object key as etcd holds it, the last revision applied, and the keys
    /// whose value is not in effect with why (logged once per revision and reason).
    etcd: EtcdMirror,
}

/// etcd's objects as last read, whatever they hold; what is in effect is derived from them.
#[derive(Default)]
struct EtcdMirror {
    raw: BTreeMap<(Kind, String), (Vec<u8>, i64)>,
    revision: i64,
    synced: bool,
    skipped: BTreeMap<(Kind, String), (i64, String)>,
}

impl State {
    /// Upstream objects in effect.
    fn upstreams(&self) -> Upstreams {
        let mut all = self.file_upstreams.clone();
        all.extend(
            self.admin_upstreams
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        all
    }

    /// SSL objects in force: the file's, an Admin object replacing one with the same id, then
    /// the Admin API's others; disabled ones left out.
    fn ssls(&self) -> Vec<SslSpec> {
        let mut out: Vec<SslSpec> = self
            .file_ssls
            .iter()
            .filter(|s| !self.admin_ssls.contains_key(&s.id))
            .cloned()
            .collect();
        out.extend(
            self.admin_ssls
                .values()
                .filter(|(_, enabled)| *enabled)
                .map(|(s, _)| s.clone()),
        );
        out
    }

    /// Routes in effect: the file's in file order (an Admin object with the same id in its
    /// place), then the Admin API's other routes by id.
    fn routes(&self) -> Vec<RouteSpec> {
        let mut out: Vec<RouteSpec> = self
            .file_routes
            .iter()
            .map(|r| self.admin_routes.get(&r.id).unwrap_or(r).clone())
            .collect();
        out.extend(
            self.admin_routes
                .values()
                .filter(|r| !self.file_routes.iter().any(|f| f.id == r.id))
                .cloned(),
        );
        out
    }
}

/// What the control plane keeps to rebuild the route table.
pub struct Control {
    config_path: PathBuf,
    config: Arc<Config>,
    state: Mutex<State>,
    store: Result<Store, String>,
    shared: Arc<Shared>,
    plugins: PluginEnv,
    /// Under `config_provider: etcd`: where objects live and Admin API changes go.
    etcd: Option<Etcd>,
    /// Signalled whenever an etcd revision is applied, for a writer waiting to see its change.
    applied: Condvar,
}

/// Signals the process handles; blocked in every thread and taken by [`Control::wait_for_stop`].
fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Block the handled signals in this thread and every thread it starts afterwards.
pub fn block_signals() {
    let set = handled_signals();
    // SAFETY: valid set; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Control {
    /// The control plane for a running config: reads the Admin API's stored objects (those
    /// that no longer check are logged and left out) and publishes the first route table.
    pub fn new(
        config_path: PathBuf,
        config: Arc<Config>,
        shared: Arc<Shared>,
        plugins: PluginEnv,
        etcd: Option<Etcd>,
    ) -> Arc<Control> {
        // Under etcd the objects are etcd's: the file store is neither read nor written.
        let store = match &etcd {
            Some(_) => Err("config_provider is etcd".to_string()),
            None => Store::open(&config.data_dir).map_err(|e| e.to_string()),
        };
        let stored = match &store {
            _ if etcd.is_some() => Objects::new(),
            Ok(s) => s.load().unwrap_or_else(|e| {
                tracing::error!("Admin API objects not read: {e}");
                Objects::new()
            }),
            Err(e) => {
                tracing::error!("Admin API store unusable, changes cannot be saved: {e}");
                Objects::new()
            }
        };
        let mut state = State {
            generation: 0,
            file_routes: config.routes.clone(),
            file_upstreams: config.upstreams.clone(),
            stored: Objects::new(),
            admin_routes: BTreeMap::new(),
            admin_upstreams: Upstreams::new(),
            file_ssls: config.tls.ssls.clone(),
            fallback_sni: config.tls.fallback_sni.clone(),
            admin_ssls: BTreeMap::new(),
            etcd: EtcdMirror::default(),
        };
        // Upstreams first: routes are checked against them.
        for kind in [Kind::Ssls, Kind::Upstreams, Kind::Routes] {
            for (id, obj) in stored.get(&kind).into_iter().flatten() {
                match checked(&state, kind, id, &obj.value) {
                    Ok(c) => insert_checked(&mut state, kind, id, c, obj.clone()),
                    Err(e) => tracing::error!("stored {} `{id}` left out: {e}", kind.singular()),
                }
            }
        }
        let control = Arc::new(Control {
            config_path,
            config,
            state: Mutex::new(state),
            store,
            shared,
            plugins,
            etcd,
            applied: Condvar::new(),
        });
        {
            let mut state = control.lock();
            control.publish(&mut state, true);
            if !state.admin_ssls.is_empty() {
                control.publish_certs(&state);
            }
        }
        control
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Compile the table for `state` and hand it to every core. `reuse`: take routes whose text
    /// is unchanged from the running table as compiled (a DNS refresh passes false to resolve
    /// names again). Plugins are kept by config either way (`PluginEnv::openid_connect`).
    fn publish(&self, state: &mut State, reuse: bool) {
        let running = self.shared.routes.load_full();
        let table = RouteTable::compile(
            &state.routes(),
            &state.upstreams(),
            &self.config.per_core,
            &self.plugins,
            reuse.then_some(&*running),
        );
        state.generation += 1;
        self.shared.routes.store(Arc::new(table));
    }

    /// Hand the SSL objects in force to new handshakes; open connections keep theirs.
    fn publish_certs(&self, state: &State) {
        self.shared
            .certs
            .publish_ssls(&state.ssls(), state.fallback_sni.as_deref());
    }

    /// Block until SIGTERM or SIGINT; reload the config file on SIGHUP meanwhile.
    pub fn wait_for_stop(&self) {
        let set = handled_signals();
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: valid set and out-pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            match sig {
                libc::SIGHUP => self.reload(),
                _ => {
                    tracing::info!(
                        signal = sig,
                        "stopping: no new connections, finishing in-flight requests"
                    );
                    return;
                }
            }
        }
    }

    /// Re-read the config file and apply its routes and upstreams; a bad file, or one that
    /// leaves an Admin API route without its upstream, changes nothing.
    fn reload(&self) {
        let new = match config::load_file(&self.config_path) {
            Ok(new) => new,
            Err(errors) => {
                metrics::config_changed(ConfigSource::File, false);
                tracing::error!("reload refused, the running config stays:\n{errors}");
                return;
            }
        };
        // Workers copy these at start (limits, trusted addresses, caches, pools, the runtime
        // itself), so a reload can only say so. Compared with what runs, not with the previous
        // file: a second reload still names a change not yet applied.
        for field in self.config.settings.changed(&new.settings) {
            tracing::warn!("config reload: \"{field}\" changed but applies only at restart");
        }
        let mut state = self.lock();
        let mut upstreams = new.upstreams.clone();
        upstreams.extend(
            state
                .admin_upstreams
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let orphans: Vec<String> = state
            .admin_routes
            .values()
            .filter_map(|r| {
                let id = r.upstream.id()?;
                (!upstreams.contains_key(id))
                    .then(|| format!("Admin API route `{}` names upstream `{id}`", r.id))
            })
            .collect();
        if !orphans.is_empty() {
            metrics::config_changed(ConfigSource::File, false);
            tracing::error!(
                "reload refused, the running config stays: the file no longer has upstreams that {}",
                orphans.join("; ")
            );
            return;
        }
        state.file_routes = new.routes;
        state.file_upstreams = new.upstreams;
        self.publish(&mut state, true);
        metrics::config_changed(ConfigSource::File, true);
        tracing::info!(
            routes = self.shared.routes.load().routes.len(),
            "routes reloaded"
        );
        // New handshakes take the new certificates (the Admin API's over the file's); open
        // connections keep theirs.
        state.file_ssls = new.tls.ssls;
        state.fallback_sni = new.tls.fallback_sni;
        self.publish_certs(&state);
        tracing::info!(
            names = self.shared.certs.current().names(),
            "certificates reloaded"
        );
    }

    /// Re-resolve upstream host names every `interval`, publishing a new table when an address
    /// changed. Runs on its own thread: name lookups block.
    pub fn spawn_dns_refresher(self: &Arc<Self>) {
        let this = Arc::clone(self);
        let interval: Duration = self.config.dns_refresh_interval;
        let spawned = std::thread::Builder::new()
            .name("dns".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                if this
                    .shared
                    .stopping
                    .load(std::sync::atomic::Ordering::Acquire)
                {
                    return;
                }
                if !this.shared.routes.load().has_dns_names {
                    continue;
                }
                let (generation, routes, upstreams) = {
                    let s = this.lock();
                    (s.generation, s.routes(), s.upstreams())
                };
                // Resolving blocks, so it happens unlocked; a change meanwhile makes this table
                // stale, and publishing it would undo the change.
                let table = RouteTable::compile(
                    &routes,
                    &upstreams,
                    &this.config.per_core,
                    &this.plugins,
                    None,
                );
                let mut state = this.lock();
                if state.generation == generation
                    && table.addresses() != this.shared.routes.load().addresses()
                {
                    tracing::info!("upstream addresses changed; new route table published");
                    state.generation += 1;
                    this.shared.routes.store(Arc::new(table));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the DNS refresh thread; names stay as first resolved");
        }
    }

    /// One object in effect.
    pub fn get(&self, kind: Kind, id: &str) -> Result<Answer, ChangeError> {
        let state = self.lock();
        answers(&state, kind)
            .into_iter()
            .find(|a| a.id == id)
            .ok_or_else(|| ChangeError::NotFound(kind, id.to_string()))
    }

    /// Every object of a kind in effect, by id.
    pub fn list(&self, kind: Kind) -> Vec<Answer> {
        answers(&self.lock(), kind)
    }

    /// Create or replace an object (PUT, POST): checked against everything else in effect,
    /// saved, then published. `Ok(true)` when it was created.
    pub fn put(&self, kind: Kind, id: &str, body: Value) -> Result<(Answer, bool), ChangeError> {
        admin_counted(self.put_uncounted(kind, id, body))
    }

    fn put_uncounted(
        &self,
        kind: Kind,
        id: &str,
        mut body: Value,
    ) -> Result<(Answer, bool), ChangeError> {
        if let Some(etcd) = &self.etcd {
            return self.write_etcd(etcd, kind, id, Write::Put(body));
        }
        let mut state = self.lock();
        if let Value::Object(m) = &mut body {
            // Bookkeeping a client may send back as it read it; ours is kept apart.
            m.remove("create_time");
            m.remove("update_time");
            if !m.contains_key("id") {
                m.insert("id".into(), Value::String(id.to_string()));
            }
        }
        let c = checked(&state, kind, id, &body)?;
        let now = unix_now();
        let previous = state.stored.get(&kind).and_then(|m| m.get(id));
        let created = previous.is_none();
        let stored = Stored {
            value: body,
            create_time: previous.map_or(now, |p| p.create_time),
            update_time: now,
        };
        self.save(|s| s.put(kind, id, &stored))?;
        let answer = Answer {
            id: id.to_string(),
            value: visible(kind, stored.answer()),
        };
        insert_checked(&mut state, kind, id, c, stored);
        self.apply(&mut state, kind);
        Ok((answer, created))
    }

    /// Apply a JSON merge patch (RFC 7396) to an Admin API object, as [`Control::put`] would.
    pub fn patch(&self, kind: Kind, id: &str, patch: Value) -> Result<Answer, ChangeError> {
        admin_counted(self.patch_uncounted(kind, id, patch))
    }

    fn patch_uncounted(&self, kind: Kind, id: &str, patch: Value) -> Result<Answer, ChangeError> {
        if let Some(etcd) = &self.etcd {
            return self
                .write_etcd(etcd, kind, id, Write::Patch(patch))
                .map(|(a, _)| a);
        }
        let base = {
            let state = self.lock();
            match state.stored.get(&kind).and_then(|m| m.get(id)) {
                Some(s) => s.value.clone(),
                None if is_file_object(&state, kind, id) => {
                    return Err(ChangeError::FromFile(kind, id.to_string()))
                }
                None => return Err(ChangeError::NotFound(kind, id.to_string())),
            }
        };
        let mut merged = base;
        merge_patch(&mut merged, patch);
        // A concurrent change between the read and this write is a race two clients can only
        // settle by ordering their own requests; the last write wins, as in APISIX.
        self.put_uncounted(kind, id, merged).map(|(a, _)| a)
    }

    /// Delete an Admin API object. An upstream a route still names is refused.
    pub fn delete(&self, kind: Kind, id: &str) -> Result<(), ChangeError> {
        admin_counted(self.delete_uncounted(kind, id))
    }

    fn delete_uncounted(&self, kind: Kind, id: &str) -> Result<(), ChangeError> {
        if let Some(etcd) = &self.etcd {
            return self.delete_etcd(etcd, kind, id);
        }
        let mut state = self.lock();
        if !state.stored.get(&kind).is_some_and(|m| m.contains_key(id)) {
            return Err(if is_file_object(&state, kind, id) {
                ChangeError::FromFile(kind, id.to_string())
            } else {
                ChangeError::NotFound(kind, id.to_string())
            });
        }
        check_unused(&state, kind, id)?;
        self.save(|s| s.delete(kind, id))?;
        if let Some(m) = state.stored.get_mut(&kind) {
            m.remove(id);
        }
        match kind {
            Kind::Routes => {
                state.admin_routes.remove(id);
            }
            Kind::Upstreams => {
                state.admin_upstreams.remove(id);
            }
            Kind::Ssls => {
                state.admin_ssls.remove(id);
            }
        }
        self.apply(&mut state, kind);
        Ok(())
    }

    /// A new id for POST: 20 digits, like APISIX's, unused by any object of the kind.
    pub fn new_id(&self, kind: Kind) -> String {
        let state = self.lock();
        let taken = |id: &str| answers(&state, kind).iter().any(|a| a.id == id);
        let mut n = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        loop {
            let id = format!("{n:020}");
            if !taken(&id) {
                return id;
            }
            n += 1;
        }
    }

    /// Publish what a change of `kind` affects.
    fn apply(&self, state: &mut State, kind: Kind) {
        match kind {
            Kind::Ssls => self.publish_certs(state),
            Kind::Routes | Kind::Upstreams => self.publish(state, true),
        }
    }

    fn save(&self, write: impl FnOnce(&Store) -> std::io::Result<()>) -> Result<(), ChangeError> {
        match &self.store {
            Ok(s) => write(s).map_err(|e| ChangeError::Storage(e.to_string())),
            Err(e) => Err(ChangeError::Storage(e.clone())),
        }
    }
}

/// How often an Admin API write retries its transaction when another writer changed the key
/// between its read and its write.
const MAX_TXN_ATTEMPTS: usize = 16;
/// How long an Admin API write waits to see its change applied from the watch.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// An Admin API write to etcd.
enum Write {
    /// Replace (or create) with this body.
    Put(Value),
    /// Merge this patch into the object as etcd holds it now.
    Patch(Value),
}

fn storage(e: EtcdError) -> ChangeError {
    ChangeError::Storage(format!("etcd: {e}"))
}

/// An object value as etcd holds it, its bookkeeping times taken out (APISIX keeps them in the
/// value; absent ones read as 0).
fn stored_of(bytes: &[u8]) -> Result<Stored, ChangeError> {
    let mut value = config::json::parse_strict(bytes).map_err(|e| {
        ChangeError::Invalid(vec![ConfigError::plain(".", format!("not JSON: {e}"))])
    })?;
    let Value::Object(m) = &mut value else {
        return Err(ChangeError::Invalid(vec![ConfigError::plain(
            ".",
            "the value must be a JSON object",
        )]));
    };
    let time = |v: Option<Value>| v.and_then(|v| v.as_i64()).unwrap_or(0);
    let create_time = time(m.remove("create_time"));
    let update_time = time(m.remove("update_time"));
    Ok(Stored {
        value,
        create_time,
        update_time,
    })
}

/// `<prefix>/<kind>/<id>` as a kind and an id; other keys under the prefix (APISIX's other
/// objects, ours) are not objects of ours.
fn object_key(prefix: &str, key: &[u8]) -> Option<(Kind, String)> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let (kind, id) = rest.split_once('/')?;
    let kind = Kind::ALL.into_iter().find(|k| k.name() == kind)?;
    (!id.is_empty()).then(|| (kind, id.to_string()))
}

impl Control {
    /// Under `config_provider: etcd`: keep the objects in effect in step with etcd, from a
    /// thread of its own (a full read, then the watch). Nothing to do otherwise.
    pub fn start_etcd_sync(self: &Arc<Self>) -> std::io::Result<()> {
        let Some(etcd) = &self.etcd else {
            return Ok(());
        };
        let (tx, rx) = std::sync::mpsc::channel();
        etcd.sync(tx).map_err(std::io::Error::other)?;
        let this = Arc::clone(self);
        std::thread::Builder::new()
            .name("etcd-apply".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut state = this.lock();
                    let mut changed = Vec::new();
                    this.mirror(&mut state, first, &mut changed);
                    // Whatever else arrived meanwhile goes into the same table.
                    while let Ok(more) = rx.try_recv() {
                        this.mirror(&mut state, more, &mut changed);
                    }
                    this.apply_etcd(&mut state, &changed);
                    drop(state);
                    this.applied.notify_all();
                }
            })?;
        Ok(())
    }

    /// Record what etcd now holds; `changed` collects the object keys touched.
    fn mirror(&self, state: &mut State, event: SyncEvent, changed: &mut Vec<(Kind, String)>) {
        let Some(etcd) = &self.etcd else { return };
        let prefix = etcd.prefix();
        match event {
            SyncEvent::Snapshot { revision, kvs } => {
                let mut raw = BTreeMap::new();
                for kv in kvs {
                    if let Some(k) = object_key(prefix, &kv.key) {
                        raw.insert(k, (kv.value, kv.mod_revision));
                    }
                }
                for k in raw.keys().chain(state.etcd.raw.keys()) {
                    if raw.get(k) != state.etcd.raw.get(k) {
                        changed.push(k.clone());
                    }
                }
                state.etcd.raw = raw;
                state.etcd.revision = revision;
                if !state.etcd.synced {
                    state.etcd.synced = true;
                    tracing::info!(
                        revision,
                        keys = state.etcd.raw.len(),
                        "etcd: first full read"
                    );
                }
            }
            SyncEvent::Changes { revision, events } => {
                for e in events {
                    let Some(k) = object_key(prefix, &e.kv.key) else {
                        continue;
                    };
                    if e.deleted {
                        state.etcd.raw.remove(&k);
                    } else {
                        state
                            .etcd
                            .raw
                            .insert(k.clone(), (e.kv.value, e.kv.mod_revision));
                    }
                    changed.push(k);
                }
                state.etcd.revision = state.etcd.revision.max(revision);
            }
        }
    }

    /// Derive the objects in effect from etcd's, and publish. A value that does not check is
    /// logged (once per revision and reason) and left out; the version in effect before, if it
    /// still checks, keeps serving, so a bad write takes nothing down that was up.
    fn apply_etcd(&self, state: &mut State, changed: &[(Kind, String)]) {
        // Keys that are not objects of ours (the session secret, APISIX's others) changed.
        if changed.is_empty() && self.etcd.as_ref().is_some_and(Etcd::synced) {
            return;
        }
        let prefix = self.etcd.as_ref().map_or("", |e| e.prefix()).to_string();
        let old_stored = std::mem::take(&mut state.stored);
        state.admin_routes.clear();
        state.admin_upstreams.clear();
        state.admin_ssls.clear();
        let raw = std::mem::take(&mut state.etcd.raw);
        let mut skipped = BTreeMap::new();
        // Upstreams before routes: routes are checked against them.
        for kind in [Kind::Ssls, Kind::Upstreams, Kind::Routes] {
            for ((_, id), (bytes, rev)) in raw
                .range((kind, String::new())..)
                .take_while(|((k, _), _)| *k == kind)
            {
                let attempt = stored_of(bytes)
                    .and_then(|s| checked(state, kind, id, &s.value).map(|c| (c, s)));
                let why = match attempt {
                    Ok((c, s)) => {
                        insert_checked(state, kind, id, c, s);
                        continue;
                    }
                    Err(e) => e.to_string(),
                };
                let kept = old_stored
                    .get(&kind)
                    .and_then(|m| m.get(id))
                    .and_then(|prev| {
                        Some((checked(state, kind, id, &prev.value).ok()?, prev.clone()))
                    });
                let key = (kind, id.clone());
                let entry = (*rev, why);
                if state.etcd.skipped.get(&key) != Some(&entry) {
                    tracing::error!(
                        key = %format!("{prefix}/{}/{id}", kind.name()),
                        revision = rev,
                        "etcd value skipped{}: {}",
                        if kept.is_some() { ", its last valid version keeps serving" } else { "" },
                        entry.1
                    );
                }
                skipped.insert(key, entry);
                if let Some((c, prev)) = kept {
                    insert_checked(state, kind, id, c, prev);
                }
            }
        }
        state.etcd.raw = raw;
        for k in changed {
            metrics::config_changed(ConfigSource::Etcd, !skipped.contains_key(k));
        }
        state.etcd.skipped = skipped;
        self.publish(state, true);
        if state.stored.get(&Kind::Ssls) != old_stored.get(&Kind::Ssls) {
            self.publish_certs(state);
        }
        if let Some(etcd) = &self.etcd {
            etcd.set_synced();
        }
    }

    /// Wait (bounded) until the watch has applied `revision`, so that a writer reads its own
    /// change back from this node.
    fn wait_applied(&self, revision: i64) {
        let state = self.lock();
        let waited = self
            .applied
            .wait_timeout_while(state, APPLY_WAIT, |s| s.etcd.revision < revision);
        if waited.is_ok_and(|(_, t)| t.timed_out()) {
            tracing::warn!(
                revision,
                "etcd: a change written here was not seen from the watch within {APPLY_WAIT:?}"
            );
        }
    }

    /// An Admin API PUT or PATCH under etcd: read the key, build the new value, write it only
    /// if nobody changed the key since (compare on its mod revision), else start over from
    /// what is there now. Every node (this one included) applies it from the watch.
    fn write_etcd(
        &self,
        etcd: &Etcd,
        kind: Kind,
        id: &str,
        write: Write,
    ) -> Result<(Answer, bool), ChangeError> {
        let key = format!("{}/{}/{id}", etcd.prefix(), kind.name());
        // Ids name keys: the route id grammar for every kind, before anything is read.
        if let Err(e) = id_of(&Value::String(id.to_string())) {
            return Err(ChangeError::Invalid(vec![e]));
        }
        for _ in 0..MAX_TXN_ATTEMPTS {
            let current = etcd.get(&key).map_err(storage)?;
            let previous = current.as_ref().map(|kv| stored_of(&kv.value));
            let mut body = match &write {
                Write::Put(b) => b.clone(),
                Write::Patch(p) => {
                    let mut base = match &previous {
                        Some(Ok(s)) => s.value.clone(),
                        // Garbage is there: a merge onto it would be a guess.
                        Some(Err(e)) => {
                            return Err(ChangeError::Invalid(vec![ConfigError::plain(
                                ".",
                                format!("{key} in etcd does not read ({e}); PUT a whole object"),
                            )]))
                        }
                        None if is_file_object(&self.lock(), kind, id) => {
                            return Err(ChangeError::FromFile(kind, id.to_string()))
                        }
                        None => return Err(ChangeError::NotFound(kind, id.to_string())),
                    };
                    merge_patch(&mut base, p.clone());
                    base
                }
            };
            if let Value::Object(m) = &mut body {
                m.remove("create_time");
                m.remove("update_time");
                if !m.contains_key("id") {
                    m.insert("id".into(), Value::String(id.to_string()));
                }
            }
            checked(&self.lock(), kind, id, &body)?;
            let now = unix_now();
            let create_time = match &previous {
                Some(Ok(s)) if s.create_time > 0 => s.create_time,
                _ => now,
            };
            let stored = Stored {
                value: body,
                create_time,
                update_time: now,
            };
            let text = serde_json::to_vec(&stored.answer()).unwrap_or_default();
            let expected = current.as_ref().map_or(0, |kv| kv.mod_revision);
            let out = etcd.put_if(&key, text, expected).map_err(storage)?;
            if out.succeeded {
                self.wait_applied(out.revision);
                return Ok((
                    Answer {
                        id: id.to_string(),
                        value: visible(kind, stored.answer()),
                    },
                    current.is_none(),
                ));
            }
        }
        Err(ChangeError::Storage(format!(
            "{key} kept changing under concurrent writers; try again"
        )))
    }

    /// An Admin API DELETE under etcd, compare-and-delete like [`Control::write_etcd`].
    fn delete_etcd(&self, etcd: &Etcd, kind: Kind, id: &str) -> Result<(), ChangeError> {
        let key = format!("{}/{}/{id}", etcd.prefix(), kind.name());
        for _ in 0..MAX_TXN_ATTEMPTS {
            let Some(current) = etcd.get(&key).map_err(storage)? else {
                let state = self.lock();
                return Err(if is_file_object(&state, kind, id) {
                    ChangeError::FromFile(kind, id.to_string())
                } else {
                    ChangeError::NotFound(kind, id.to_string())
                });
            };
            check_unused(&self.lock(), kind, id)?;
            let out = etcd
                .delete_if(&key, current.mod_revision)
                .map_err(storage)?;
            if out.succeeded {
                self.wait_applied(out.revision);
                return Ok(());
            }
        }
        Err(ChangeError::Storage(format!(
            "{key} kept changing under concurrent writers; try again"
        )))
    }
}

/// Refuse to delete an upstream some route in effect still names (unless the file has one of
/// the same id, which then takes its place).
fn check_unused(state: &State, kind: Kind, id: &str) -> Result<(), ChangeError> {
    if kind == Kind::Upstreams && !state.file_upstreams.contains_key(id) {
        let users: Vec<String> = state
            .routes()
            .iter()
            .filter(|r| r.upstream.id() == Some(id))
            .map(|r| r.id.clone())
            .collect();
        if !users.is_empty() {
            return Err(ChangeError::InUse(users));
        }
    }
    Ok(())
}

/// An object checked, in the form the table (or the certificate store) is built from.
enum Checked {
    Route(Box<RouteSpec>),
    Upstream(UpstreamObject),
    Ssl(SslSpec, bool),
}

/// Check an object as it would stand with everything else in `state`.
fn checked(state: &State, kind: Kind, id: &str, body: &Value) -> Result<Checked, ChangeError> {
    let mut errors = Vec::new();
    // Ids name files in the store: the route id grammar for every kind.
    if let Err(e) = id_of(&Value::String(id.to_string())) {
        return Err(ChangeError::Invalid(vec![e]));
    }
    if let Some(written) = body.get("id") {
        match id_of(written) {
            Ok(w) if w != id => errors.push(ConfigError::plain(
                "id",
                format!("`{w}` differs from the id in the path, `{id}`"),
            )),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        if !errors.is_empty() {
            return Err(ChangeError::Invalid(errors));
        }
    }
    let out = match kind {
        Kind::Routes => {
            let route = check_route(body.clone(), id, &mut errors);
            if let Some(up) = route.as_ref().and_then(|r| r.upstream.id()) {
                let known = state.upstreams();
                if !known.contains_key(up) {
                    errors.push(ConfigError::new(
                        "upstream_id",
                        format!("no upstream has id `{up}`"),
                        config::route::known_ids(&known),
                    ));
                }
            }
            route.map(|r| Checked::Route(Box::new(r)))
        }
        Kind::Upstreams => {
            check_upstream_object(body.clone(), Some(id), &mut errors).map(Checked::Upstream)
        }
        Kind::Ssls => check_ssl(body.clone(), id, &mut errors).map(|(s, on)| Checked::Ssl(s, on)),
    };
    match out {
        Some(c) if errors.is_empty() => Ok(c),
        _ => Err(ChangeError::Invalid(errors)),
    }
}

fn insert_checked(state: &mut State, kind: Kind, id: &str, c: Checked, stored: Stored) {
    match c {
        Checked::Route(r) => {
            state.admin_routes.insert(id.to_string(), *r);
        }
        Checked::Upstream(u) => {
            state.admin_upstreams.insert(id.to_string(), u);
        }
        Checked::Ssl(s, enabled) => {
            state.admin_ssls.insert(id.to_string(), (s, enabled));
        }
    }
    state
        .stored
        .entry(kind)
        .or_default()
        .insert(id.to_string(), stored);
}

fn is_file_object(state: &State, kind: Kind, id: &str) -> bool {
    match kind {
        Kind::Routes => state.file_routes.iter().any(|r| r.id == id),
        Kind::Upstreams => state.file_upstreams.contains_key(id),
        Kind::Ssls => state.file_ssls.iter().any(|s| s.id == id),
    }
}

/// Every object of a kind in effect, as answered: Admin objects as stored (with their times),
/// file objects as written. An SSL object's private keys are never answered.
fn answers(state: &State, kind: Kind) -> Vec<Answer> {
    let stored = state.stored.get(&kind);
    let admin = |id: &str| {
        stored.and_then(|m| m.get(id)).map(|s| Answer {
            id: id.to_string(),
            value: visible(kind, s.answer()),
        })
    };
    let mut out: BTreeMap<String, Answer> = BTreeMap::new();
    match kind {
        Kind::Routes => {
            for r in &state.file_routes {
                out.insert(
                    r.id.clone(),
                    Answer {
                        id: r.id.clone(),
                        value: r.source.clone(),
                    },
                );
            }
        }
        Kind::Upstreams => {
            for (id, u) in &state.file_upstreams {
                out.insert(
                    id.clone(),
                    Answer {
                        id: id.clone(),
                        value: u.source.clone(),
                    },
                );
            }
        }
        // The file's certificates are in the file; the answer names them without any PEM.
        Kind::Ssls => {
            for s in &state.file_ssls {
                out.insert(
                    s.id.clone(),
                    Answer {
                        id: s.id.clone(),
                        value: serde_json::json!({ "id": s.id, "snis": s.snis }),
                    },
                );
            }
        }
    }
    for id in stored.into_iter().flat_map(|m| m.keys()) {
        if let Some(a) = admin(id) {
            out.insert(id.clone(), a);
        }
    }
    out.into_values().collect()
}

/// Count an Admin API write (PUT, POST, PATCH, DELETE) as a config change, applied or
/// rejected, and hand its result back.
fn admin_counted<T>(r: Result<T, ChangeError>) -> Result<T, ChangeError> {
    metrics::config_changed(ConfigSource::Admin, r.is_ok());
    r
}

/// An object as it may be answered: an SSL object's private keys never leave the node.
fn visible(kind: Kind, mut value: Value) -> Value {
    if let (Kind::Ssls, Value::Object(m)) = (kind, &mut value) {
        m.remove("key");
        m.remove("keys");
    }
    value
}

/// RFC 7396: objects merge key by key, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        merge_patch(t.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut v = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut v,
            json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            v,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
        let mut v = json!({"a": 1});
        merge_patch(&mut v, json!("whole"));
        assert_eq!(v, json!("whole"));
    }
}
