//! Route plugins, in APISIX's names. Only plugins Portcullis implements are accepted: a plugin
//! that was silently ignored could leave a route open that its author believed closed.

pub mod proxy_rewrite;

use serde_json::Value;

use crate::config::ConfigError;
pub use proxy_rewrite::ProxyRewrite;

/// Plugin names this build accepts.
pub const KNOWN: &[&str] = &["proxy-rewrite"];

/// The checked plugins of one route.
#[derive(Debug, Clone, Default)]
pub struct Plugins {
    /// `proxy-rewrite`, when configured.
    pub proxy_rewrite: Option<ProxyRewrite>,
}

/// Check a route's `plugins` map; errors carry `plugins.<name>…` paths.
pub fn check(map: serde_json::Map<String, Value>, errors: &mut Vec<ConfigError>) -> Plugins {
    let mut plugins = Plugins::default();
    for (name, conf) in map {
        let path = format!("plugins.{name}");
        match name.as_str() {
            "proxy-rewrite" => plugins.proxy_rewrite = proxy_rewrite::check(conf, &path, errors),
            "openid-connect" => errors.push(ConfigError::plain(
                path,
                "is not available in this build yet; the route is refused rather than served unauthenticated",
            )),
            other => errors.push(ConfigError::new(path, format!("unknown plugin `{other}`"), KNOWN.join(", "))),
        }
    }
    plugins
}
