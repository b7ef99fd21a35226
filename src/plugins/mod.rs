//! Route plugins, in APISIX's names. Only plugins Portcullis implements are accepted: a plugin
//! that was silently ignored could leave a route open that its author believed closed.

pub mod openid_connect;
pub mod proxy_rewrite;
pub mod redirect;

use serde_json::Value;

use crate::config::error::ConfigError;
use crate::error::ProxyError;
use crate::http::h1::{HeaderIdx, HeaderKind};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use crate::http::h1::RequestHead;
use crate::http::reply::Reply;
use crate::idp::Idp;
use crate::upstream::request::Edits;
use openid_connect::session::Session;
use openid_connect::{config::OidcConfig, Identity, OidcPlugin};
pub use proxy_rewrite::ProxyRewrite;
use redirect::{Redirect, RedirectConfig};

/// Plugin names this build accepts.
pub const KNOWN: &[&str] = &["openid-connect", "proxy-rewrite", "redirect"];

/// The checked plugins of one route.
#[derive(Debug, Clone, Default)]
pub struct Plugins {
    /// `proxy-rewrite`, when configured.
    pub proxy_rewrite: Option<ProxyRewrite>,
    /// `openid-connect`, when configured.
    pub openid_connect: Option<OidcConfig>,
    /// `openid-connect`'s config as written, canonical JSON: what the compiled plugin (and with
    /// it its caches, keys and provider) is known by across route tables.
    pub openid_connect_text: Box<str>,
    /// `redirect`, when configured.
    pub redirect: Option<RedirectConfig>,
}

/// Check a route's `plugins` map; errors carry `plugins.<name>…` paths.
pub fn check(map: serde_json::Map<String, Value>, errors: &mut Vec<ConfigError>) -> Plugins {
    let mut plugins = Plugins::default();
    for (name, conf) in map {
        let path = format!("plugins.{name}");
        match name.as_str() {
            "proxy-rewrite" => plugins.proxy_rewrite = proxy_rewrite::check(conf, &path, errors),
            "redirect" => plugins.redirect = redirect::check(conf, &path, errors),
            "openid-connect" => {
                // serde_json's maps are sorted, so equal configs give equal text.
                plugins.openid_connect_text =
                    serde_json::to_string(&conf).unwrap_or_default().into();
                plugins.openid_connect = openid_connect::config::check(conf, &path, errors)
            }
            other => errors.push(ConfigError::new(
                path,
                format!("unknown plugin `{other}`"),
                KNOWN.join(", "),
            )),
        }
    }
    plugins
}

/// A plugin compiled into a route. Routes keep theirs sorted by APISIX priority, and every
/// phase is a `match` over this enum: no boxed futures or trait objects on the request path.
// A route holds a handful of plugins read on every request; inline variants keep them in one
// allocation, and their size costs nothing that matters. `openid-connect` is behind an `Arc`
// because route tables share it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Plugin {
    /// `openid-connect` (priority 2599); shared by every route and table compiled from the same
    /// config.
    OpenIdConnect(Arc<OidcPlugin>),
    /// `proxy-rewrite` (priority 1008).
    ProxyRewrite(ProxyRewrite),
    /// `redirect` (priority 900; its `http_to_https` answers before authentication).
    Redirect(Redirect),
}

impl Plugin {
    /// APISIX's priority: higher runs first within a phase.
    pub fn priority(&self) -> u32 {
        match self {
            Plugin::OpenIdConnect(_) => 2599,
            Plugin::ProxyRewrite(_) => 1008,
            Plugin::Redirect(_) => 900,
        }
    }
}

/// What compiling plugins needs from the process (control plane): the IdP thread and the
/// node-wide session secret, generated once into `data_dir` and read by every later compile.
pub struct PluginEnv {
    /// The IdP thread.
    pub idp: Idp,
    /// The first `tls.listen` port, for `redirect`'s `Location` (none: 443).
    pub https_port: Option<u16>,
    data_dir: PathBuf,
    /// Under etcd, the session secret is the fleet's, kept in etcd.
    pub etcd: Option<crate::etcd::Etcd>,
    secret: Mutex<Option<Arc<[u8]>>>,
    /// Compiled `openid-connect` plugins by config text, while some route table holds them.
    oidc: Mutex<HashMap<Box<str>, Weak<OidcPlugin>>>,
}

impl PluginEnv {
    /// An environment whose generated secrets live in `data_dir`.
    pub fn new(idp: Idp, data_dir: PathBuf) -> PluginEnv {
        PluginEnv {
            idp,
            https_port: None,
            data_dir,
            etcd: None,
            secret: Mutex::new(None),
            oidc: Mutex::default(),
        }
    }

    /// The compiled `openid-connect` plugin for a config: the one compiled before from the same
    /// text while any route still holds it, so that a new route table (an Admin API change, a
    /// reload, a DNS refresh) keeps its verified tokens, key sets and provider; else a new one.
    pub fn openid_connect(&self, text: &str, cfg: &OidcConfig) -> Arc<OidcPlugin> {
        let mut map = self.oidc.lock().unwrap_or_else(|e| e.into_inner());
        // One without a usable session key is compiled again: the node secret may be readable
        // now.
        if let Some(p) = map.get(text).and_then(Weak::upgrade) {
            if !p.login || p.session_key.is_ok() {
                return p;
            }
        }
        let p = Arc::new(OidcPlugin::new(cfg.clone(), self));
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(text.into(), Arc::downgrade(&p));
        p
    }

    /// The node-wide session secret, created on first need. A failure is retried at the next
    /// compile: a later reload may find `data_dir` writable.
    pub fn node_secret(&self) -> Result<Arc<[u8]>, String> {
        let mut held = self.secret.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = &*held {
            return Ok(s.clone());
        }
        let secret: Arc<[u8]> = match &self.etcd {
            Some(etcd) => etcd_secret(etcd)?.into(),
            None => openid_connect::session::load_or_create_secret(&self.data_dir)
                .map_err(|e| {
                    format!(
                        "the session secret in {} is not usable: {e}",
                        self.data_dir.display()
                    )
                })?
                .into(),
        };
        *held = Some(secret.clone());
        Ok(secret)
    }
}

/// The fleet's session secret: `<prefix>/portcullis/session_secret` in etcd (base64 of
/// [`SECRET_LEN`](openid_connect::session::SECRET_LEN) random bytes), created by whichever node
/// needs it first with a create-if-absent transaction, so every node seals and opens the same
/// cookies.
fn etcd_secret(etcd: &crate::etcd::Etcd) -> Result<Vec<u8>, String> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let b64 = base64::engine::general_purpose::STANDARD;
    let len = openid_connect::session::SECRET_LEN;
    let key = format!("{}/portcullis/session_secret", etcd.prefix());
    let mut fresh = vec![0u8; len];
    ring::rand::SystemRandom::new()
        .fill(&mut fresh)
        .map_err(|_| "the system RNG failed".to_string())?;
    let held = etcd
        .create_or_get(&key, b64.encode(&fresh).into_bytes())
        .map_err(|e| format!("the session secret at {key} in etcd is not usable: {e}"))?;
    match b64.decode(held.trim_ascii()) {
        Ok(secret) if secret.len() == len => Ok(secret),
        _ => Err(format!(
            "the session secret at {key} in etcd is not base64 of {len} bytes; delete it to have a new one made"
        )),
    }
}

/// Compile a route's checked plugins, in priority order (control plane).
pub fn compile(checked: &Plugins, env: &PluginEnv) -> Box<[Plugin]> {
    let mut list = Vec::new();
    if let Some(c) = &checked.openid_connect {
        list.push(Plugin::OpenIdConnect(
            env.openid_connect(&checked.openid_connect_text, c),
        ));
    }
    if let Some(r) = &checked.proxy_rewrite {
        list.push(Plugin::ProxyRewrite(r.clone()));
    }
    if let Some(r) = &checked.redirect {
        list.push(Plugin::Redirect(Redirect::new(r, env.https_port)));
    }
    list.sort_by_key(|p| std::cmp::Reverse(p.priority()));
    list.into_boxed_slice()
}

/// What each plugin keeps on one core.
pub struct CoreState {
    /// `openid-connect`'s caches.
    pub oidc: openid_connect::CoreState,
}

impl CoreState {
    /// Fresh state; the token caches hold at most `cache_entries` entries and `cache_bytes`
    /// bytes each (`per_core` settings).
    pub fn new(cache_entries: usize, cache_bytes: usize) -> CoreState {
        CoreState {
            oidc: openid_connect::CoreState::new(cache_entries, cache_bytes),
        }
    }

    /// Report cache counts to this core's metrics block.
    pub fn count_into(&self, m: &crate::metrics::CoreMetrics) {
        self.oidc.count_into(m);
    }

    /// Housekeeping: drop up to `budget` expired entries per cache.
    pub fn sweep(&self, now: f64, budget: usize) {
        self.oidc.sweep(now, budget);
    }
}

/// One request's context: what a phase hands the phases after it.
#[derive(Debug, Default)]
pub struct Ctx {
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// The bearer-token identity `openid-connect` established, for the upstream head.
    pub identity: Option<Identity>,
    /// The login session `openid-connect` established, for the upstream head.
    pub session: Option<std::rc::Rc<Session>>,
    /// `Set-Cookie` values for the client's response (a refreshed or renewed session).
    pub set_cookies: Vec<String>,
    /// How `openid-connect` judged the request, for the log and the metrics.
    pub auth_method: Option<crate::metrics::AuthMethod>,
    /// The login-flow step that answered the request, for the metrics.
    pub login_step: Option<crate::metrics::LoginStep>,
    /// The login flow found only its own cookies in the request (or none), so no Cookie header
    /// goes upstream; when false (or never looked at) the header is rewritten without ours.
    pub cookies_only_ours: bool,
}

/// The request as the phases see it.
pub struct Request<'a> {
    /// The buffer the head was parsed from.
    pub buf: &'a [u8],
    /// The head's header spans.
    pub headers: &'a [HeaderIdx],
    /// The parsed head.
    pub head: &'a RequestHead,
    /// The path the route matched, in normal form.
    pub path: &'a [u8],
    /// Whether the peer's forwarding headers are believed.
    pub trusted: bool,
    /// Whether the client connection is TLS.
    pub tls: bool,
}

/// Before-authentication phase: plugins that answer a request without looking at who sent it
/// (`redirect`'s `http_to_https`), so that nothing is asked of a client about to be sent away.
fn before_auth(plugins: &[Plugin], req: &Request<'_>) -> Result<Option<Reply>, ProxyError> {
    for p in plugins {
        if let Plugin::Redirect(r) = p {
            if let Some(reply) = r.before_auth(req)? {
                return Ok(Some(reply));
            }
        }
    }
    Ok(None)
}

/// The before-authentication phase, then the authenticate phase: each plugin may refuse the
/// request (an error, answered in one place), answer it itself (`Ok(Some)`: an HTTPS redirect,
/// a login redirect, the login callback, logout), or establish what later phases need.
pub async fn access(
    plugins: &[Plugin],
    state: &CoreState,
    req: &Request<'_>,
    ctx: &mut Ctx,
) -> Result<Option<Reply>, ProxyError> {
    if let Some(reply) = before_auth(plugins, req)? {
        return Ok(Some(reply));
    }
    for p in plugins {
        match p {
            Plugin::OpenIdConnect(o) => {
                if let Some(reply) = openid_connect::access(o, &state.oidc, req, ctx).await? {
                    return Ok(Some(reply));
                }
            }
            Plugin::ProxyRewrite(_) | Plugin::Redirect(_) => {}
        }
    }
    Ok(None)
}

/// The upstream-head and response-head phases of one request's plugins.
pub struct Heads<'a> {
    /// The route's plugins.
    pub plugins: &'a [Plugin],
    /// What earlier phases established.
    pub ctx: &'a Ctx,
}

impl Heads<'_> {
    fn rewrite(&self) -> Option<&ProxyRewrite> {
        self.plugins.iter().find_map(|p| match p {
            Plugin::ProxyRewrite(r) => Some(r),
            _ => None,
        })
    }
}

impl Edits for Heads<'_> {
    fn uri(&self) -> Option<&[u8]> {
        self.rewrite().and_then(ProxyRewrite::uri)
    }

    fn host(&self) -> Option<&[u8]> {
        self.rewrite().and_then(ProxyRewrite::host)
    }

    fn drops(&self, name: &[u8], kind: HeaderKind) -> bool {
        self.plugins.iter().any(|p| match p {
            Plugin::OpenIdConnect(o) => o.drops(self.ctx, name, kind),
            Plugin::ProxyRewrite(r) => r.drops(name),
            Plugin::Redirect(_) => false,
        })
    }

    fn append_upstream(&self, buf: &[u8], headers: &[HeaderIdx], out: &mut Vec<u8>) {
        for p in self.plugins {
            match p {
                Plugin::OpenIdConnect(o) => o.append_upstream(self.ctx, buf, headers, out),
                Plugin::ProxyRewrite(r) => r.append(out),
                Plugin::Redirect(_) => {}
            }
        }
    }

    fn append_response(&self, out: &mut Vec<u8>) {
        for v in &self.ctx.set_cookies {
            crate::http::h1::write_header(out, b"Set-Cookie", v.as_bytes());
        }
    }
}
