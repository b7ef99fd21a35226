//! The Admin API against the real binary: APISIX-shaped CRUD for routes and upstreams, the key,
//! validation, durability (restart, `kill -9` mid-burst), live apply on every worker over open
//! keep-alive connections, and state kept across changes (the IdP's introspection calls are
//! counted).

mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::auth::oidc_route;
use common::fake_idp::{FakeIdp, IdpResponse, INTROSPECTION_PATH};
use common::*;
use serde_json::{json, Value};

const KEY: &str = "admin-key-for-the-tests-0123";
const SIGTERM: i32 = 15;

/// A proxy config with the Admin API on a free port under `KEY`, and `data_dir` when given.
fn config(routes: Vec<Value>, data: Option<&TempDir>) -> (Value, u16) {
    let admin_port = free_port();
    let mut cfg = base_config(routes);
    cfg["admin"] = json!({ "listen": format!("127.0.0.1:{admin_port}"), "key": KEY });
    if let Some(d) = data {
        cfg["data_dir"] = json!(d.path().join("data").to_string_lossy());
    }
    (cfg, admin_port)
}

/// A running proxy and its Admin API port.
struct Node {
    proxy: Proxy,
    admin: u16,
}

fn start(routes: Vec<Value>, data: Option<&TempDir>) -> Node {
    let (cfg, admin) = config(routes, data);
    start_cfg(cfg, admin)
}

fn start_cfg(cfg: Value, admin: u16) -> Node {
    let proxy = Proxy::start(cfg);
    wait_for_port(admin);
    Node { proxy, admin }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !can_connect(port) {
        assert!(
            Instant::now() < deadline,
            "admin port {port} never listened"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

impl Node {
    /// One Admin API request with the right key.
    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        self.admin_with(method, path, Some(KEY), body.map(|b| b.to_string()))
    }

    fn admin_with(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<String>,
    ) -> Response {
        let mut c = Client::connect(self.admin);
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(k) = key {
            headers.push(("X-API-KEY", k));
        }
        let body = body.unwrap_or_default();
        c.request(method, path, &headers, body.as_bytes())
    }

    fn get(&self, path: &str) -> Response {
        self.proxy.get(path)
    }
}

fn upstream_obj(up: &Upstream) -> Value {
    json!({ "type": "roundrobin", "nodes": { up.addr(): 1 } })
}

fn route_to(uri: &str, up: &Upstream) -> Value {
    json!({ "uri": uri, "upstream": upstream_obj(up) })
}

#[test]
fn routes_and_upstreams_crud_in_apisix_shapes() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let n = start(vec![], None);

    // Upstream object, then a route naming it.
    let r = n.admin("PUT", "/apisix/admin/upstreams/u1", Some(upstream_obj(&a)));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["key"], "/apisix/upstreams/u1");
    assert_eq!(r.json()["value"]["id"], "u1");
    let r = n.admin(
        "PUT",
        "/apisix/admin/routes/1",
        Some(json!({"uri": "/one", "upstream_id": "u1"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["key"], "/apisix/routes/1");
    assert_eq!(v["value"]["uri"], "/one");
    let created = v["value"]["create_time"].as_i64().expect("create_time");
    assert!(v["value"]["update_time"].as_i64().is_some(), "{v}");
    assert_eq!(n.get("/one").upstream_id(), Some("a"));

    // GET one and all.
    let one = n.admin("GET", "/apisix/admin/routes/1", None);
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["value"]["upstream_id"], "u1");
    let all = n.admin("GET", "/apisix/admin/routes", None).json();
    assert_eq!(all["total"], 1, "{all}");
    assert_eq!(all["list"][0]["key"], "/apisix/routes/1");
    let ups = n.admin("GET", "/apisix/admin/upstreams", None).json();
    assert_eq!(ups["total"], 1, "{ups}");

    // PUT again: 200, create_time kept.
    let r = n.admin(
        "PUT",
        "/apisix/admin/routes/1",
        Some(json!({"uri": "/one", "upstream_id": "u1", "name": "renamed"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"]["create_time"].as_i64(), Some(created));

    // PATCH (JSON merge): the upstream object moves the route's traffic; the route's uri too.
    let r = n.admin(
        "PATCH",
        "/apisix/admin/upstreams/u1",
        Some(json!({"nodes": {a.addr(): null, b.addr(): 1}})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(n.get("/one").upstream_id(), Some("b"));
    let r = n.admin(
        "PATCH",
        "/apisix/admin/routes/1",
        Some(json!({"uri": "/uno", "name": null})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["value"].get("name").is_none(), "{}", r.text());
    assert_eq!(n.get("/uno").upstream_id(), Some("b"));
    n.get("/one").assert_json_error(404);

    // POST: a generated id.
    let r = n.admin(
        "POST",
        "/apisix/admin/routes",
        Some(route_to("/posted", &a)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["value"]["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 20, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_digit()), "{id}");
    assert_eq!(r.json()["key"], format!("/apisix/routes/{id}"));
    assert_eq!(n.get("/posted").upstream_id(), Some("a"));
    let r = n.admin("POST", "/apisix/admin/upstreams", Some(upstream_obj(&a)));
    assert_eq!(r.status, 201, "{}", r.text());

    // DELETE, then 404s.
    let r = n.admin("DELETE", &format!("/apisix/admin/routes/{id}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["key"], format!("/apisix/routes/{id}"));
    n.get("/posted").assert_json_error(404);
    let r = n.admin("GET", &format!("/apisix/admin/routes/{id}"), None);
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"message": "Key not found"}));
    assert_eq!(
        n.admin("DELETE", &format!("/apisix/admin/routes/{id}"), None)
            .status,
        404
    );
}

#[test]
fn a_missing_or_wrong_key_is_401_and_changes_nothing() {
    let a = Upstream::start("a");
    let n = start(vec![], None);
    let body = Some(route_to("/x", &a).to_string());
    for key in [None, Some("wrong"), Some(""), Some(&KEY[..KEY.len() - 1])] {
        let r = n.admin_with("PUT", "/apisix/admin/routes/1", key, body.clone());
        assert_eq!(r.status, 401, "key {key:?}: {}", r.text());
        assert_eq!(r.json()["error_msg"], "failed to check token");
        let r = n.admin_with("GET", "/apisix/admin/routes", key, None);
        assert_eq!(r.status, 401);
    }
    n.get("/x").assert_json_error(404);
    assert_eq!(
        n.admin("GET", "/apisix/admin/routes", None).json()["total"],
        0
    );
    // An existing route survives a DELETE with a wrong key.
    assert_eq!(
        n.admin("PUT", "/apisix/admin/routes/1", Some(route_to("/x", &a)))
            .status,
        201
    );
    let r = n.admin_with("DELETE", "/apisix/admin/routes/1", Some("wrong"), None);
    assert_eq!(r.status, 401);
    assert_eq!(n.get("/x").upstream_id(), Some("a"));
}

#[test]
fn each_class_of_invalid_body_is_a_400_naming_its_field() {
    let a = Upstream::start("a");
    let n = start(vec![], None);
    let node = a.addr();
    let cases: Vec<(&str, String, &str)> = vec![
        ("routes/1", "{\"uri\": ".into(), "invalid request body"),
        ("routes/1", "[1, 2]".into(), "must be a JSON object"),
        (
            "routes/1",
            format!(r#"{{"uri": "/a", "uri": "/b", "upstream": {{"nodes": {{"{node}": 1}}}}}}"#),
            "duplicate key \\\"uri\\\"",
        ),
        (
            "routes/1",
            json!({"uri": "/a", "bogus": 1, "upstream": {"nodes": {node.clone(): 1}}}).to_string(),
            "bogus: unknown option `bogus`",
        ),
        (
            "routes/1",
            json!({"uri": "/a", "plugins": {"openid-connect": {"client_id": "x"}}, "upstream": {"nodes": {node.clone(): 1}}}).to_string(),
            "plugins.openid-connect.client_secret",
        ),
        (
            "routes/1",
            json!({"uri": "/a", "plugins": {"limit-count": {}}, "upstream": {"nodes": {node.clone(): 1}}}).to_string(),
            "plugins.limit-count: unknown plugin",
        ),
        (
            "routes/1",
            json!({"uri": "/a", "upstream": {"nodes": {"nope": 1}}}).to_string(),
            "upstream.nodes.nope",
        ),
        (
            "routes/1",
            json!({"uri": "/a", "upstream_id": "missing"}).to_string(),
            "upstream_id: no upstream has id `missing`",
        ),
        (
            "routes/1",
            json!({"id": "2", "uri": "/a", "upstream": {"nodes": {node.clone(): 1}}}).to_string(),
            "id: `2` differs from the id in the path",
        ),
        (
            "routes/1",
            json!({"upstream": {"nodes": {node.clone(): 1}}}).to_string(),
            "uri: is required",
        ),
        (
            "upstreams/u",
            json!({"nodes": {node.clone(): 1}, "type": "chash"}).to_string(),
            "type: unsupported balancer `chash`",
        ),
        (
            "upstreams/u",
            json!({"nodes": {node.clone(): 1}, "timeout": {"connect": -1, "send": 1, "read": 1}}).to_string(),
            "timeout.connect",
        ),
    ];
    for (path, body, expect) in cases {
        let r = n.admin_with(
            "PUT",
            &format!("/apisix/admin/{path}"),
            Some(KEY),
            Some(body.clone()),
        );
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let text = r.text();
        assert!(
            text.contains(expect),
            "{body}: expected {expect:?} in {text}"
        );
        assert!(r.json()["error_msg"].is_string(), "{text}");
    }
    assert_eq!(
        n.admin("GET", "/apisix/admin/routes", None).json()["total"],
        0
    );
    assert_eq!(
        n.admin("GET", "/apisix/admin/upstreams", None).json()["total"],
        0
    );
}

#[test]
fn a_body_over_the_limit_is_413() {
    let (mut cfg, admin) = config(vec![], None);
    cfg["admin"]["max_body_bytes"] = json!(2048);
    let n = start_cfg(cfg, admin);
    let big =
        json!({"uri": "/a", "desc": "x".repeat(4096), "upstream": {"nodes": {"127.0.0.1:1": 1}}});
    let r = n.admin("PUT", "/apisix/admin/routes/1", Some(big));
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("admin.max_body_bytes"), "{}", r.text());
    assert_eq!(n.admin("GET", "/apisix/admin/routes/1", None).status, 404);
}

#[test]
fn a_rejected_update_keeps_the_old_route() {
    let a = Upstream::start("a");
    let n = start(vec![], None);
    assert_eq!(
        n.admin("PUT", "/apisix/admin/routes/1", Some(route_to("/keep", &a)))
            .status,
        201
    );
    let r = n.admin(
        "PUT",
        "/apisix/admin/routes/1",
        Some(json!({"uri": "/keep", "upstream": {"nodes": {a.addr(): 1}, "pass_host": "bogus"}})),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("upstream.pass_host"), "{}", r.text());
    let r = n.admin(
        "PATCH",
        "/apisix/admin/routes/1",
        Some(json!({"uri": "no-slash"})),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(n.get("/keep").upstream_id(), Some("a"));
    let v = n.admin("GET", "/apisix/admin/routes/1", None).json();
    assert_eq!(v["value"]["uri"], "/keep", "{v}");
    assert!(v["value"]["upstream"].get("pass_host").is_none(), "{v}");
}

#[test]
fn a_change_is_live_on_every_worker_over_open_keepalive_connections() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let (mut cfg, admin) = config(vec![route("1", "/live", &[&a])], None);
    cfg["workers"] = json!(2);
    let n = start_cfg(cfg, admin);
    // Sixteen connections: the kernel spreads them over both workers' listeners (all on one
    // is a 1 in 32768 chance).
    let mut clients: Vec<Client> = (0..16).map(|_| Client::connect(n.proxy.port)).collect();
    for c in &mut clients {
        assert_eq!(c.get("/live").upstream_id(), Some("a"));
    }
    let started = Instant::now();
    let r = n.admin("PUT", "/apisix/admin/routes/1", Some(route_to("/live", &b)));
    assert_eq!(r.status, 201, "{}", r.text());
    for (i, c) in clients.iter_mut().enumerate() {
        let moved = eventually(Duration::from_secs(1), || {
            c.get("/live").upstream_id() == Some("b")
        });
        assert!(moved, "connection {i} still on the old route after 1 s");
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // The same connections, still open, see a new route too.
    assert_eq!(
        n.admin("PUT", "/apisix/admin/routes/2", Some(route_to("/new", &a)))
            .status,
        201
    );
    for c in &mut clients {
        assert!(eventually(Duration::from_secs(1), || c.get("/new").status == 200));
    }
    assert!(a.conns() > 0 && b.conns() > 0);
}

#[test]
fn changes_persist_across_a_restart() {
    let a = Upstream::start("a");
    let data = TempDir::new();
    let created = {
        let n = start(vec![], Some(&data));
        assert_eq!(
            n.admin("PUT", "/apisix/admin/upstreams/u", Some(upstream_obj(&a)))
                .status,
            201
        );
        let r = n.admin(
            "PUT",
            "/apisix/admin/routes/r",
            Some(json!({"uri": "/kept", "upstream_id": "u"})),
        );
        assert_eq!(r.status, 201);
        assert_eq!(
            n.admin(
                "PUT",
                "/apisix/admin/routes/gone",
                Some(route_to("/gone", &a))
            )
            .status,
            201
        );
        assert_eq!(
            n.admin("DELETE", "/apisix/admin/routes/gone", None).status,
            200
        );
        n.proxy.signal(SIGTERM);
        r.json()["value"]["create_time"].as_i64().unwrap()
    };
    let n = start(vec![], Some(&data));
    assert_eq!(n.get("/kept").upstream_id(), Some("a"));
    n.get("/gone").assert_json_error(404);
    let v = n.admin("GET", "/apisix/admin/routes/r", None).json();
    assert_eq!(v["value"]["create_time"].as_i64(), Some(created), "{v}");
    assert_eq!(
        n.admin("GET", "/apisix/admin/routes", None).json()["total"],
        1
    );
}

#[test]
fn kill_9_during_a_burst_of_puts_loses_no_acknowledged_route() {
    let a = Upstream::start("a");
    let data = TempDir::new();
    let n = start(vec![], Some(&data));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let admin = n.admin;
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let acked = acked.clone();
            let node = a.addr();
            thread::spawn(move || {
                for i in 0..10_000 {
                    let id = format!("w{w}-{i}");
                    let body =
                        json!({"uri": format!("/{id}"), "upstream": {"nodes": {node.clone(): 1}}});
                    let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", admin)) else {
                        return;
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut c = Client::from_stream(stream);
                    let req = Client::build(
                        "PUT",
                        &format!("/apisix/admin/routes/{id}"),
                        &[("X-API-KEY", KEY)],
                        body.to_string().as_bytes(),
                    );
                    if c.try_write(&req).is_err() {
                        return;
                    }
                    match c.try_read_response("PUT") {
                        Ok(r) if r.status == 201 => acked.lock().unwrap().push(id),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(10), || acked
        .lock()
        .unwrap()
        .len()
        >= 60));
    n.proxy.signal(9);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    drop(n);
    let n = start(vec![], Some(&data));
    let all = n.admin("GET", "/apisix/admin/routes", None).json();
    let ids: std::collections::HashSet<String> = all["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"]["id"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged routes lost: {lost:?}",
        lost.len()
    );
    assert!(acked.len() >= 60);
    // No temp file survives the start; every route the API lists is served.
    let dir = data.path().join("data/admin/routes");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let first = &acked[0];
    assert_eq!(n.get(&format!("/{first}")).upstream_id(), Some("a"));
}

#[test]
fn deleting_an_upstream_a_route_uses_is_400() {
    let a = Upstream::start("a");
    let n = start(vec![], None);
    assert_eq!(
        n.admin("PUT", "/apisix/admin/upstreams/u", Some(upstream_obj(&a)))
            .status,
        201
    );
    for id in ["r1", "r2"] {
        let r = n.admin(
            "PUT",
            &format!("/apisix/admin/routes/{id}"),
            Some(json!({"uri": format!("/{id}"), "upstream_id": "u"})),
        );
        assert_eq!(r.status, 201);
    }
    let r = n.admin("DELETE", "/apisix/admin/upstreams/u", None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("r1") && r.text().contains("r2"),
        "{}",
        r.text()
    );
    assert_eq!(n.get("/r1").upstream_id(), Some("a"));
    assert_eq!(
        n.admin("DELETE", "/apisix/admin/routes/r1", None).status,
        200
    );
    assert_eq!(
        n.admin("DELETE", "/apisix/admin/routes/r2", None).status,
        200
    );
    assert_eq!(
        n.admin("DELETE", "/apisix/admin/upstreams/u", None).status,
        200
    );
}

#[test]
fn admin_objects_replace_file_objects_with_the_same_id() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let n = start(vec![route("1", "/f", &[&a]), route("2", "/g", &[&a])], None);
    assert_eq!(n.get("/f").upstream_id(), Some("a"));
    assert_eq!(
        n.admin("GET", "/apisix/admin/routes", None).json()["total"],
        2
    );
    let r = n.admin("PUT", "/apisix/admin/routes/1", Some(route_to("/f", &b)));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(n.get("/f").upstream_id(), Some("b"));
    // Deleting the Admin object brings the file's back; a file-only object cannot be deleted.
    assert_eq!(
        n.admin("DELETE", "/apisix/admin/routes/1", None).status,
        200
    );
    assert_eq!(n.get("/f").upstream_id(), Some("a"));
    let r = n.admin("DELETE", "/apisix/admin/routes/2", None);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("config file"), "{}", r.text());
    assert_eq!(n.get("/g").upstream_id(), Some("a"));
}

#[test]
fn the_data_port_never_serves_the_admin_api() {
    let a = Upstream::start("a");
    let n = start(vec![route("all", "/*", &[&a])], None);
    assert_eq!(n.get("/anything").upstream_id(), Some("a"));
    let before = a.requests();
    for path in [
        "/apisix/admin",
        "/apisix/admin/routes",
        "/apisix/admin/routes/1",
    ] {
        let mut c = n.proxy.client();
        let r = c.request("GET", path, &[("X-API-KEY", KEY)], b"");
        r.assert_json_error(404);
        assert_eq!(a.requests(), before, "{path} reached the upstream");
    }
    assert_eq!(n.get("/apisix/administrator").upstream_id(), Some("a"));
}

#[test]
fn a_generated_key_is_printed_once_and_kept_private() {
    let data = TempDir::new();
    let admin = free_port();
    let mut cfg = base_config(vec![]);
    cfg["admin"] = json!({ "listen": format!("127.0.0.1:{admin}") });
    cfg["data_dir"] = json!(data.path().join("data").to_string_lossy());
    let first = start_cfg(cfg.clone(), admin);
    let key_file = data.path().join("data/admin.key");
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(key.len() >= 32, "{key}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        first.proxy.output().contains(&key),
        "{}",
        first.proxy.output()
    );
    let r = first.admin_with("GET", "/apisix/admin/routes", Some(&key), None);
    assert_eq!(r.status, 200, "{}", r.text());
    drop(first);
    let admin = free_port();
    cfg["admin"] = json!({ "listen": format!("127.0.0.1:{admin}") });
    let second = start_cfg(cfg, admin);
    assert!(
        eventually(Duration::from_secs(5), || second
            .proxy
            .output()
            .contains("admin.key")),
        "{}",
        second.proxy.output()
    );
    assert!(
        !second.proxy.output().contains(&key),
        "the key was printed again"
    );
    assert_eq!(
        second
            .admin_with("GET", "/apisix/admin/routes", Some(&key), None)
            .status,
        200
    );
}

#[test]
fn check_covers_upstreams_and_upstream_id() {
    let (ok, out) = check_config(
        "upstreams:\n  - {id: u1, nodes: {\"127.0.0.1:1\": 1}}\nroutes:\n  - {uri: /a, upstream_id: u1}\n",
    );
    assert!(ok, "{out}");
    let (ok, out) = check_config(
        "upstreams:\n  - {id: u1, nodes: {\"nope\": 1}}\n  - {nodes: {\"127.0.0.1:1\": 1}}\nroutes:\n  - {uri: /a, upstream_id: u2}\n  - {uri: /b, upstream_id: u1, upstream: {nodes: {\"127.0.0.1:1\": 1}}}\n",
    );
    assert!(!ok, "{out}");
    line_with(&out, "upstreams[0].nodes.nope");
    line_with(&out, "upstreams[1].id: is required");
    let l = line_with(&out, "routes[0].upstream_id");
    assert!(l.contains("no upstream has id `u2`"), "{l}");
    line_with(&out, "routes[1].upstream_id: give either");
}

/// Introspection answers "active" for any token; the IdP counts the calls.
fn introspecting_idp() -> FakeIdp {
    let idp = FakeIdp::start();
    idp.on(INTROSPECTION_PATH, |_| {
        IdpResponse::json(
            200,
            &json!({"active": true, "sub": "alice", "scope": "read", "exp": jwt_now() + 300}),
        )
    });
    idp
}

fn jwt_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn token_caches_survive_other_changes_a_reload_and_an_unchanged_plugin() {
    let idp = introspecting_idp();
    let a = Upstream::start("a");
    let plugin = json!({
        "client_id": "c", "client_secret": "s", "discovery": idp.discovery_url(),
        "bearer_only": true, "introspection_endpoint": idp.introspection_url(),
    });
    let route_a = oidc_route("A", "/a/*", &a, plugin.clone());
    let n = start(vec![route_a.clone()], None);
    let call = |n: &Node| {
        let mut c = n.proxy.client();
        c.request(
            "GET",
            "/a/x",
            &[("Authorization", "Bearer opaque-token-1")],
            b"",
        )
    };
    assert_eq!(call(&n).status, 200);
    assert_eq!(idp.introspections(), 1);
    assert_eq!(call(&n).status, 200);
    assert_eq!(idp.introspections(), 1);

    // Another route changes: A keeps its cache.
    assert_eq!(
        n.admin("PUT", "/apisix/admin/routes/B", Some(route_to("/b", &a)))
            .status,
        201
    );
    assert_eq!(call(&n).status, 200);
    assert_eq!(
        idp.introspections(),
        1,
        "a PUT to route B emptied route A's cache"
    );

    // A reload of the unchanged file.
    n.proxy.signal(1);
    assert!(eventually(Duration::from_secs(5), || n
        .proxy
        .log()
        .contains("routes reloaded")));
    assert_eq!(call(&n).status, 200);
    assert_eq!(idp.introspections(), 1, "a SIGHUP emptied route A's cache");

    // A itself PUT again, with the same plugin config and another upstream setting.
    let mut same = route_a.clone();
    same["upstream"]["retries"] = json!(0);
    same.as_object_mut().unwrap().remove("id");
    assert_eq!(
        n.admin("PUT", "/apisix/admin/routes/A", Some(same)).status,
        201
    );
    assert_eq!(call(&n).status, 200);
    assert_eq!(
        idp.introspections(),
        1,
        "re-PUT of A with the same plugin emptied its cache"
    );

    // A changed plugin config gets a fresh verdict.
    let mut changed = route_a;
    changed["plugins"]["openid-connect"]["introspection_interval"] = json!(77);
    changed.as_object_mut().unwrap().remove("id");
    assert_eq!(
        n.admin("PUT", "/apisix/admin/routes/A", Some(changed))
            .status,
        200
    );
    assert_eq!(call(&n).status, 200);
    assert_eq!(
        idp.introspections(),
        2,
        "a changed plugin reused the old verdict"
    );
}
