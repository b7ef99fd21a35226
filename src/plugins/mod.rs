//! Route plugins, in APISIX's names. Only plugins Portcullis implements are accepted: a plugin
//! that was silently ignored could leave a route open that its author believed closed.

pub mod openid_connect;
pub mod proxy_rewrite;

use serde_json::Value;

use crate::config::error::ConfigError;
use crate::error::ProxyError;
use crate::http::h1::{HeaderIdx, HeaderKind};
use crate::idp::Idp;
use crate::upstream::request::Edits;
use openid_connect::{config::OidcConfig, Identity, OidcPlugin};
pub use proxy_rewrite::ProxyRewrite;

/// Plugin names this build accepts.
pub const KNOWN: &[&str] = &["openid-connect", "proxy-rewrite"];

/// The checked plugins of one route.
#[derive(Debug, Clone, Default)]
pub struct Plugins {
    /// `proxy-rewrite`, when configured.
    pub proxy_rewrite: Option<ProxyRewrite>,
    /// `openid-connect`, when configured.
    pub openid_connect: Option<OidcConfig>,
}

/// Check a route's `plugins` map; errors carry `plugins.<name>…` paths.
pub fn check(map: serde_json::Map<String, Value>, errors: &mut Vec<ConfigError>) -> Plugins {
    let mut plugins = Plugins::default();
    for (name, conf) in map {
        let path = format!("plugins.{name}");
        match name.as_str() {
            "proxy-rewrite" => plugins.proxy_rewrite = proxy_rewrite::check(conf, &path, errors),
            "openid-connect" => {
                plugins.openid_connect = openid_connect::config::check(conf, &path, errors).filter(|c| {
                    // Refused rather than served unauthenticated: these modes arrive in later work.
                    let missing = if !c.takes_bearer() {
                        Some("the login flow (bearer_only: false without a token validator) is not available yet; use bearer_only with use_jwks or public_key")
                    } else {
                        None
                    };
                    if let Some(why) = missing {
                        errors.push(ConfigError::plain(&path, why));
                    }
                    missing.is_none()
                })
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
// allocation, and their size costs nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Plugin {
    /// `openid-connect` (priority 2599).
    OpenIdConnect(OidcPlugin),
    /// `proxy-rewrite` (priority 1008).
    ProxyRewrite(ProxyRewrite),
}

impl Plugin {
    /// APISIX's priority: higher runs first within a phase.
    pub fn priority(&self) -> u32 {
        match self {
            Plugin::OpenIdConnect(_) => 2599,
            Plugin::ProxyRewrite(_) => 1008,
        }
    }
}

/// Compile a route's checked plugins, in priority order (control plane).
pub fn compile(checked: &Plugins, idp: &Idp) -> Box<[Plugin]> {
    let mut list = Vec::new();
    if let Some(c) = &checked.openid_connect {
        list.push(Plugin::OpenIdConnect(OidcPlugin::new(c.clone(), idp)));
    }
    if let Some(r) = &checked.proxy_rewrite {
        list.push(Plugin::ProxyRewrite(r.clone()));
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

    /// Housekeeping: drop up to `budget` expired entries per cache.
    pub fn sweep(&self, now: f64, budget: usize) {
        self.oidc.sweep(now, budget);
    }
}

/// One request's context: what a phase hands the phases after it.
#[derive(Debug, Default)]
pub struct Ctx {
    /// The identity `openid-connect` established, for the upstream head.
    pub identity: Option<Identity>,
}

/// The request as the phases see it: its head's buffer and header spans.
pub struct Request<'a> {
    /// The buffer the head was parsed from.
    pub buf: &'a [u8],
    /// The head's header spans.
    pub headers: &'a [HeaderIdx],
}

/// Authenticate phase: each plugin may refuse the request (an error, answered in one place)
/// or establish what later phases need.
pub async fn access(
    plugins: &[Plugin],
    state: &CoreState,
    req: &Request<'_>,
    ctx: &mut Ctx,
) -> Result<(), ProxyError> {
    for p in plugins {
        match p {
            Plugin::OpenIdConnect(o) => {
                ctx.identity =
                    openid_connect::authenticate(o, &state.oidc, req.buf, req.headers).await?;
            }
            Plugin::ProxyRewrite(_) => {}
        }
    }
    Ok(())
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
            Plugin::OpenIdConnect(_) => self.ctx.identity.as_ref().is_some_and(|i| i.drops(kind)),
            Plugin::ProxyRewrite(r) => r.drops(name),
        })
    }

    fn append_upstream(&self, buf: &[u8], out: &mut Vec<u8>) {
        for p in self.plugins {
            match p {
                Plugin::OpenIdConnect(_) => {
                    if let Some(i) = &self.ctx.identity {
                        i.append(buf, out);
                    }
                }
                Plugin::ProxyRewrite(r) => r.append(out),
            }
        }
    }
}
