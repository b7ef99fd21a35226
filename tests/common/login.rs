//! The browser login flow (relying party) driven by a plain HTTP client that plays the browser,
//! shared by `tests/oidc_login.rs` and `tests/etcd.rs`: a cookie [`Jar`], the plugin settings of
//! a login route ([`login_plugin`]), requests with the jar's cookies ([`browse`]) and the whole
//! login ([`login`]).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::fake_idp::{FakeIdp, CLIENT_ID, CLIENT_SECRET};
use super::{Proxy, Response};

/// A browser's cookie jar for one site: what `Set-Cookie` left, minus what it expired.
#[derive(Default, Clone)]
pub struct Jar(pub BTreeMap<String, String>);

impl Jar {
    /// Keep the cookies `r` sets; drop those it expires (`Max-Age=0`).
    pub fn take(&mut self, r: &Response) {
        for line in r.header_all("set-cookie") {
            let (pair, attrs) = line.split_once(';').unwrap_or((line, ""));
            let (name, value) = pair.split_once('=').expect("cookie has a value");
            let expired = attrs
                .split(';')
                .any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            if expired {
                self.0.remove(name.trim());
            } else {
                self.0.insert(name.trim().to_string(), value.to_string());
            }
        }
    }

    /// The `Cookie` header a browser would send; empty for an empty jar.
    pub fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The cookie names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// `openid-connect` settings of a route that runs the login flow against `idp`, with no
/// session secret of its own (the node's generated one).
pub fn login_plugin(idp: &FakeIdp) -> Value {
    json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "discovery": idp.discovery_url(),
        "bearer_only": false,
        "scope": "openid profile",
        "timeout": 2,
    })
}

/// GET `path` from `proxy` as the browser holding `jar` (`Host: app.test`), with `extra`
/// headers; over HTTPS in HTTPS mode (see [`Proxy::client`]).
pub fn browse(proxy: &Proxy, path: &str, jar: &Jar, extra: &[(&str, &str)]) -> Response {
    let cookie = jar.header();
    let mut headers: Vec<(&str, &str)> = vec![("Host", "app.test")];
    if !cookie.is_empty() {
        headers.push(("Cookie", &cookie));
    }
    headers.extend_from_slice(extra);
    proxy.client().request("GET", path, &headers, b"")
}

/// Start a login at `path`: the 302 to the IdP, with the attempt cookie in `jar`.
pub fn start_login(proxy: &Proxy, path: &str, jar: &mut Jar) -> Response {
    let r = browse(proxy, path, jar, &[]);
    assert_eq!(
        r.status,
        302,
        "{path}: {:?} {}\n{}",
        r.headers,
        r.text(),
        proxy.log()
    );
    jar.take(&r);
    r
}

/// The whole login at `path`, as a browser would do it: the redirect, the IdP's `/authorize`,
/// the callback; the cookies of each step in `jar`. Returns the callback's answer.
pub fn login(proxy: &Proxy, idp: &FakeIdp, path: &str, jar: &mut Jar) -> Response {
    let r = start_login(proxy, path, jar);
    let at_idp = idp.login_code(r.header("location").unwrap());
    assert!(at_idp.code().is_some(), "{}", at_idp.location);
    let cb = browse(proxy, &at_idp.target(), jar, &[]);
    jar.take(&cb);
    cb
}
