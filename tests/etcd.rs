//! `config_provider: etcd` against a real etcd (Debian's etcd-server 3.4, started per test on
//! loopback): APISIX-written JSON read and watched, several nodes, Admin API writes through
//! transactions, etcd going away and coming back, compaction, bad values, etcd authentication,
//! and a session made on one node opened by another.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::etcd::EtcdServer;
use common::fake_idp::{FakeIdp, IdpResponse, CLIENT_ID, CLIENT_SECRET, INTROSPECTION_PATH};
use common::jwt::SigningKey;
use common::login::{browse, login, login_plugin, Jar};
use common::*;
use serde_json::{json, Value};

const KEY: &str = "admin-key-for-the-etcd-tests-0123";
/// What the issue asks of every node after a change in etcd.
const LIVE_WITHIN: Duration = Duration::from_secs(1);

/// A Portcullis node whose config comes from etcd.
struct Node {
    proxy: Proxy,
    admin: u16,
}

fn node(hosts: &[String]) -> Node {
    node_with(hosts, json!({}))
}

/// A node on `hosts` with `etcd` settings merged over the defaults; not waiting for its first
/// sync (see [`Node::wait_synced`]).
fn node_with(hosts: &[String], etcd: Value) -> Node {
    node_top(hosts, etcd, json!({}))
}

/// As [`node_with`], with `top` level settings added to the config.
fn node_top(hosts: &[String], etcd: Value, top: Value) -> Node {
    let admin = free_port();
    let mut cfg = base_config(vec![]);
    for (k, v) in top.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    cfg["workers"] = json!(2);
    cfg["admin"] = json!({ "listen": format!("127.0.0.1:{admin}"), "key": KEY });
    cfg["config_provider"] = json!("etcd");
    let mut e = json!({ "host": hosts, "prefix": "/apisix", "timeout": 3 });
    for (k, v) in etcd.as_object().unwrap() {
        e[k] = v.clone();
    }
    cfg["etcd"] = e;
    let proxy = Proxy::start(cfg);
    let deadline = Instant::now() + READY_TIMEOUT;
    while !can_connect(admin) {
        assert!(Instant::now() < deadline, "admin never listened");
        thread::sleep(Duration::from_millis(20));
    }
    Node { proxy, admin }
}

impl Node {
    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        Client::connect(self.admin).request(
            method,
            path,
            &[("Content-Type", "application/json"), ("X-API-KEY", KEY)],
            body.as_bytes(),
        )
    }

    fn get(&self, path: &str) -> Response {
        Client::connect(self.proxy.port).request("GET", path, &[], b"")
    }

    /// The upstream that served `path`, or the status when nothing did.
    fn served_by(&self, path: &str) -> Result<String, u16> {
        let r = self.get(path);
        match r.upstream_id() {
            Some(id) if r.status == 200 => Ok(id.to_string()),
            _ => Err(r.status),
        }
    }

    fn wait_synced(&self) {
        let ok = eventually(Duration::from_secs(10), || {
            self.proxy.status_get("/readyz").status == 200
        });
        assert!(ok, "never ready:\n{}", self.proxy.log());
    }

    /// `apisix_etcd_reachable`, read from /metrics.
    fn reachable(&self) -> Option<f64> {
        let text = self.proxy.status_get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix("apisix_etcd_reachable "))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Poll until `f` holds, for at most `within`; the time it took, or a panic naming `what`.
fn within(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn upstream_json(id: &str, up: &Upstream) -> String {
    // As an APISIX 3 Admin API stores it: the body as sent, `id`, and its two times.
    json!({
        "id": id, "type": "roundrobin", "scheme": "http", "pass_host": "pass",
        "nodes": { up.addr(): 1 }, "timeout": {"connect": 6, "send": 6, "read": 6},
        "create_time": 1_700_000_000, "update_time": 1_700_000_000,
    })
    .to_string()
}

fn route_json(id: &str, uri: &str, upstream_id: &str) -> String {
    json!({
        "id": id, "uri": uri, "upstream_id": upstream_id, "status": 1, "priority": 0,
        "create_time": 1_700_000_000, "update_time": 1_700_000_001,
    })
    .to_string()
}

/// A URL nothing listens on: a member that is down.
fn dead_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

#[test]
fn apisix_json_written_with_etcdctl_serves_on_every_node_with_updates_and_deletes() {
    let etcd = EtcdServer::start();
    let (a, b) = (Upstream::start("A"), Upstream::start("B"));
    let idp = FakeIdp::start();
    etcd.put("/apisix/upstreams/ua", &upstream_json("ua", &a));
    etcd.put("/apisix/upstreams/ub", &upstream_json("ub", &b));
    etcd.put("/apisix/routes/open", &route_json("open", "/open/*", "ua"));
    // A protected route exactly as APISIX 3 writes one: upstream_id and openid-connect.
    let protected = json!({
        "id": "api", "uri": "/api/*", "methods": ["GET", "POST"], "upstream_id": "ub",
        "plugins": { "openid-connect": {
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "discovery": idp.discovery_url(), "bearer_only": true, "scope": "openid",
            "realm": "apisix", "timeout": 3,
        }},
        "create_time": 1_700_000_000, "update_time": 1_700_000_000,
    });
    etcd.put("/apisix/routes/api", &protected.to_string());
    // Keys of APISIX's other objects are none of Portcullis's business.
    etcd.put("/apisix/plugin_metadata/x", r#"{"id":"x"}"#);
    etcd.put("/apisix/routes", "init_dir");
    // The first member listed is down: each node fails over to the next.
    let hosts = [dead_url(), etcd.url()];
    let nodes = [node(&hosts), node(&hosts)];
    for n in &nodes {
        n.wait_synced();
        assert_eq!(n.served_by("/open/x"), Ok("A".into()), "{}", n.proxy.log());
        let r = n.get("/api/x");
        assert_eq!(r.status, 401, "the openid-connect plugin is in force");
        assert_eq!(
            n.admin("GET", "/apisix/admin/routes/api", None).json()["value"]["update_time"],
            1_700_000_000
        );
    }
    assert_eq!(b.requests(), 0);

    // An update: the same uri to the other upstream, and a new route.
    etcd.put("/apisix/routes/open", &route_json("open", "/open/*", "ub"));
    etcd.put("/apisix/routes/new", &route_json("new", "/new", "ua"));
    for n in &nodes {
        within("update live", LIVE_WITHIN, || {
            n.served_by("/open/x") == Ok("B".into()) && n.served_by("/new") == Ok("A".into())
        });
    }
    // A delete.
    etcd.del("/apisix/routes/new");
    for n in &nodes {
        within("delete live", LIVE_WITHIN, || {
            n.served_by("/new") == Err(404)
        });
        assert_eq!(n.served_by("/open/x"), Ok("B".into()));
    }
    // Counted as etcd changes.
    let m = nodes[0].proxy.scrape();
    assert!(m.config_changes("etcd", "applied") >= 6.0, "{}", m.text);
    assert_eq!(m.get("apisix_etcd_reachable", &[]), 1.0);
}

#[test]
fn a_put_on_one_node_is_live_on_the_others_within_a_second() {
    let etcd = EtcdServer::start();
    let up = Upstream::start("U");
    let hosts = [etcd.url()];
    let nodes = [node(&hosts), node(&hosts), node(&hosts)];
    for n in &nodes {
        n.wait_synced();
    }
    let r = nodes[0].admin(
        "PUT",
        "/apisix/admin/upstreams/u1",
        Some(json!({ "type": "roundrobin", "nodes": { up.addr(): 1 } })),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    for round in 0..3 {
        let uri = format!("/r{round}");
        let r = nodes[0].admin(
            "PUT",
            &format!("/apisix/admin/routes/r{round}"),
            Some(json!({ "uri": uri, "upstream_id": "u1" })),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        // The writer answers once it applied its own change from the watch.
        assert_eq!(nodes[0].served_by(&uri), Ok("U".into()));
        for n in &nodes[1..] {
            let took = within("PUT on A live on B and C", LIVE_WITHIN, || {
                n.served_by(&uri) == Ok("U".into())
            });
            eprintln!("round {round}: live after {took:?}");
        }
    }
    // Stored as APISIX stores it: the object with its id and two times.
    let stored: Value = serde_json::from_str(&etcd.get("/apisix/routes/r0").unwrap()).unwrap();
    assert_eq!(stored["uri"], "/r0");
    assert_eq!(stored["id"], "r0");
    assert!(
        stored["create_time"].as_i64().unwrap() > 1_700_000_000,
        "{stored}"
    );
    assert!(stored["update_time"].is_i64(), "{stored}");
    // Every node answers it through its Admin API.
    let r = nodes[2].admin("GET", "/apisix/admin/routes/r0", None);
    assert_eq!(r.json()["value"]["create_time"], stored["create_time"]);
    // A delete on C is gone from A.
    let r = nodes[2].admin("DELETE", "/apisix/admin/routes/r1", None);
    assert_eq!(r.status, 200, "{}", r.text());
    within("DELETE on C gone on A", LIVE_WITHIN, || {
        nodes[0].served_by("/r1") == Err(404)
    });
    // A still-referenced upstream cannot be deleted, whichever node is asked.
    let r = nodes[1].admin("DELETE", "/apisix/admin/upstreams/u1", None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(etcd.get("/apisix/upstreams/u1").is_some());
}

#[test]
fn two_nodes_writing_the_same_id_concurrently_lose_nothing() {
    let etcd = EtcdServer::start();
    let up = Upstream::start("U");
    let hosts = [etcd.url()];
    let (a, b) = (node(&hosts), node(&hosts));
    a.wait_synced();
    b.wait_synced();
    let r = a.admin(
        "PUT",
        "/apisix/admin/upstreams/u",
        Some(json!({ "type": "roundrobin", "nodes": { up.addr(): 1 } })),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    within("upstream on B", Duration::from_secs(5), || {
        b.admin("GET", "/apisix/admin/upstreams/u", None).status == 200
    });

    // Creations racing on one id: both acknowledged, exactly one as the creation.
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(2));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        thread::scope(|s| {
            for (i, n) in [&a, &b].into_iter().enumerate() {
                let (barrier, statuses) = (barrier.clone(), statuses.clone());
                s.spawn(move || {
                    barrier.wait();
                    let r = n.admin(
                        "PUT",
                        &format!("/apisix/admin/routes/race{round}"),
                        Some(json!({ "uri": format!("/race{round}"), "upstream_id": "u", "desc": format!("node{i}") })),
                    );
                    statuses.lock().unwrap().push(r.status);
                });
            }
        });
        let mut st = statuses.lock().unwrap().clone();
        st.sort();
        assert_eq!(
            st,
            [200, 201],
            "round {round}: one creation, one replacement"
        );
    }

    // Patches racing on one object: every field each node set is there in the end.
    let r = a.admin(
        "PUT",
        "/apisix/admin/routes/shared",
        Some(json!({ "uri": "/shared", "upstream_id": "u", "labels": {} })),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    within("shared on B", Duration::from_secs(5), || {
        b.served_by("/shared").is_ok()
    });
    let barrier = Arc::new(Barrier::new(2));
    thread::scope(|s| {
        for (name, n) in [("a", &a), ("b", &b)] {
            let barrier = barrier.clone();
            s.spawn(move || {
                barrier.wait();
                for i in 0..12 {
                    let r = n.admin(
                        "PATCH",
                        "/apisix/admin/routes/shared",
                        Some(json!({ "labels": { format!("{name}{i}"): "set" } })),
                    );
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            });
        }
    });
    let stored: Value = serde_json::from_str(&etcd.get("/apisix/routes/shared").unwrap()).unwrap();
    let labels = stored["labels"].as_object().unwrap();
    let missing: Vec<String> = ["a", "b"]
        .iter()
        .flat_map(|n| (0..12).map(move |i| format!("{n}{i}")))
        .filter(|k| !labels.contains_key(k))
        .collect();
    assert!(missing.is_empty(), "lost patches {missing:?} in {stored}");
    // Both nodes converge on the same object.
    within("both nodes agree", Duration::from_secs(2), || {
        a.admin("GET", "/apisix/admin/routes/shared", None).json()["value"]
            == b.admin("GET", "/apisix/admin/routes/shared", None).json()["value"]
    });
}

#[test]
fn etcd_stopped_keeps_serving_and_changes_arrive_after_its_restart() {
    let mut etcd = EtcdServer::start();
    let up = Upstream::start("U");
    etcd.put("/apisix/upstreams/u", &upstream_json("u", &up));
    etcd.put("/apisix/routes/a", &route_json("a", "/a", "u"));
    let mut n = node(&[etcd.url()]);
    n.wait_synced();
    assert_eq!(n.served_by("/a"), Ok("U".into()));
    assert_eq!(n.reachable(), Some(1.0));

    etcd.stop();
    within("apisix_etcd_reachable 0", Duration::from_secs(5), || {
        n.reachable() == Some(0.0)
    });
    // Traffic carries on with the last config: every request answered by the upstream.
    let mut c = Client::connect(n.proxy.port);
    for i in 0..200 {
        let r = c.get("/a");
        assert_eq!(
            r.status,
            200,
            "request {i} while etcd is down: {}",
            r.text()
        );
    }
    assert_eq!(
        n.proxy.status_get("/readyz").status,
        200,
        "synced once: still ready"
    );
    // A change cannot be made now, and says why.
    let r = n.admin(
        "PUT",
        "/apisix/admin/routes/b",
        Some(json!({"uri": "/b", "upstream_id": "u"})),
    );
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("etcd"), "{}", r.text());
    assert!(n.proxy.try_exit_status().is_none(), "the node runs on");

    etcd.restart();
    // Made before the node is back on its watch: it must still arrive.
    etcd.put("/apisix/routes/b", &route_json("b", "/b", "u"));
    etcd.del("/apisix/routes/a");
    within(
        "changes made while away arrive",
        Duration::from_secs(8),
        || n.served_by("/b") == Ok("U".into()) && n.served_by("/a") == Err(404),
    );
    within("apisix_etcd_reachable 1", Duration::from_secs(5), || {
        n.reachable() == Some(1.0)
    });
    // And the Admin API writes again.
    let r = n.admin(
        "PUT",
        "/apisix/admin/routes/c",
        Some(json!({"uri": "/c", "upstream_id": "u"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(n.served_by("/c"), Ok("U".into()));
}

/// A TCP relay to etcd the test can cut: the node's only way to etcd, so that etcd can move
/// on (and compact) while the node is away.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, cs) = (open.clone(), conns.clone());
        thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                if !o.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                cs.lock().unwrap().push(inbound.try_clone().unwrap());
                cs.lock().unwrap().push(outbound.try_clone().unwrap());
                for (mut from, mut to) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, open, conns }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_compaction_past_the_watch_revision_resyncs() {
    let etcd = EtcdServer::start();
    let (u, v) = (Upstream::start("U"), Upstream::start("V"));
    etcd.put("/apisix/upstreams/u", &upstream_json("u", &u));
    etcd.put("/apisix/routes/keep", &route_json("keep", "/keep", "u"));
    etcd.put("/apisix/routes/gone", &route_json("gone", "/gone", "u"));
    let relay = Relay::start(etcd.port);
    let n = node(&[format!("http://127.0.0.1:{}", relay.port)]);
    n.wait_synced();
    assert_eq!(n.served_by("/gone"), Ok("U".into()));

    relay.cut();
    within("the node sees etcd gone", Duration::from_secs(5), || {
        n.reachable() == Some(0.0)
    });
    // Meanwhile: changes, then their history compacted away.
    etcd.put("/apisix/upstreams/v", &upstream_json("v", &v));
    etcd.put("/apisix/routes/keep", &route_json("keep", "/keep", "v"));
    etcd.del("/apisix/routes/gone");
    etcd.put("/apisix/routes/added", &route_json("added", "/added", "v"));
    etcd.compact(etcd.revision());
    relay.restore();

    within(
        "resynced after the compaction",
        Duration::from_secs(8),
        || {
            n.served_by("/keep") == Ok("V".into())
                && n.served_by("/added") == Ok("V".into())
                && n.served_by("/gone") == Err(404)
        },
    );
    assert!(n.proxy.log().contains("compacted"), "{}", n.proxy.log());
    // The watch goes on from the fresh read.
    etcd.put("/apisix/routes/later", &route_json("later", "/later", "u"));
    within("watching again", LIVE_WITHIN, || {
        n.served_by("/later") == Ok("U".into())
    });
}

#[test]
fn garbage_and_invalid_values_are_skipped_and_logged_while_the_rest_serves() {
    let etcd = EtcdServer::start();
    let up = Upstream::start("U");
    etcd.put("/apisix/upstreams/u", &upstream_json("u", &up));
    etcd.put("/apisix/routes/good", &route_json("good", "/good", "u"));
    etcd.put("/apisix/routes/garbage", "{\"uri\": \"/garbage\", not json");
    etcd.put(
        "/apisix/routes/invalid",
        &json!({"id": "invalid", "uri": "/invalid", "upstream_id": "u", "plugins": {"limit-count": {"count": 1}}}).to_string(),
    );
    etcd.put(
        "/apisix/routes/dup",
        r#"{"uri": "/dup", "uri": "/other", "upstream_id": "u"}"#,
    );
    etcd.put(
        "/apisix/routes/orphan",
        &route_json("orphan", "/orphan", "nope"),
    );
    let mut n = node(&[etcd.url()]);
    n.wait_synced();
    assert_eq!(n.served_by("/good"), Ok("U".into()));
    for path in ["/garbage", "/invalid", "/dup", "/other", "/orphan"] {
        assert_eq!(n.served_by(path), Err(404), "{path}");
    }
    let log = n.proxy.log();
    for (key, field) in [
        ("/apisix/routes/garbage", "not JSON"),
        ("/apisix/routes/invalid", "plugins.limit-count"),
        ("/apisix/routes/dup", "duplicate"),
        ("/apisix/routes/orphan", "upstream_id"),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no log line names {key}:\n{log}"));
        assert!(line.contains(field), "{line}");
    }

    // Through the watch: a bad new version of a serving route leaves the last good one up.
    etcd.put("/apisix/routes/good", "garbage");
    etcd.put("/apisix/routes/fresh", &route_json("fresh", "/fresh", "u"));
    within(
        "the good key of the same batch applies",
        LIVE_WITHIN,
        || n.served_by("/fresh") == Ok("U".into()),
    );
    assert_eq!(
        n.served_by("/good"),
        Ok("U".into()),
        "last valid version serves"
    );
    within("logged", Duration::from_secs(2), || {
        n.proxy
            .log()
            .contains("its last valid version keeps serving")
    });
    // Fixed again: applies.
    etcd.put("/apisix/routes/good", &route_json("good", "/good2", "u"));
    within("fixed", LIVE_WITHIN, || {
        n.served_by("/good2") == Ok("U".into())
    });
    assert!(n.proxy.try_exit_status().is_none());
    let m = n.proxy.scrape();
    assert!(m.config_changes("etcd", "rejected") >= 5.0, "{}", m.text);
}

#[test]
fn file_routes_are_refused_under_etcd() {
    let (ok, out) = check_config(
        "config_provider: etcd\netcd:\n  host: [\"http://127.0.0.1:2379\"]\nroutes:\n  - {uri: /x, upstream: {nodes: {\"127.0.0.1:1\": 1}}}\n",
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("routes: has 1 route(s), but config_provider is etcd"),
        "{out}"
    );
    let (ok, out) = check_config(
        "config_provider: etcd\netcd:\n  host: [\"ftp://x\"]\n  prefix: apisix\n  user: root\n",
    );
    assert!(!ok, "{out}");
    for needle in ["etcd.host[0]", "etcd.prefix", "etcd.password"] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let (ok, out) = check_config("config_provider: consul\n");
    assert!(!ok && out.contains("config_provider"), "{out}");
}

#[test]
fn readiness_waits_for_the_first_sync_and_etcd_authentication_works() {
    // etcd not there yet: the node runs, is not ready, says why.
    let port = free_port();
    let n = node_with(
        &[format!("http://127.0.0.1:{port}")],
        json!({"user": "root", "password": "etcd-root-pass-42"}),
    );
    let r = n.proxy.status_get("/readyz");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("etcd"), "{}", r.text());
    assert_eq!(n.reachable(), Some(0.0));

    // etcd appears, with authentication on.
    let etcd = EtcdServer::start_on(port);
    etcd.ctl(&["user", "add", "root:etcd-root-pass-42"]);
    etcd.ctl(&["auth", "enable"]);
    let up = Upstream::start("U");
    let auth = ["--user", "root:etcd-root-pass-42"];
    let put = |k: &str, v: &str| etcd.ctl(&[auth[0], auth[1], "put", k, "--", v]);
    put("/apisix/upstreams/u", &upstream_json("u", &up));
    put("/apisix/routes/a", &route_json("a", "/a", "u"));
    n.wait_synced();
    // Read in full, or from the watch when the node got in before the writes.
    within("served with etcd auth on", Duration::from_secs(5), || {
        n.served_by("/a") == Ok("U".into())
    });
    // Writes carry the token too.
    let r = n.admin(
        "PUT",
        "/apisix/admin/routes/b",
        Some(json!({"uri": "/b", "upstream_id": "u"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(n.served_by("/b"), Ok("U".into()));

    // A wrong password is never ready and says so in its log.
    let wrong = node_with(
        &[etcd.url()],
        json!({"user": "root", "password": "not-the-password"}),
    );
    thread::sleep(Duration::from_millis(500));
    assert_eq!(wrong.proxy.status_get("/readyz").status, 503);
    within("the refusal is logged", Duration::from_secs(5), || {
        wrong.proxy.log().contains("authentication failed")
    });
}

#[test]
fn a_session_made_on_one_node_is_opened_by_another() {
    let etcd = EtcdServer::start();
    let idp = FakeIdp::start_with_key(SigningKey::rsa1());
    let up = Upstream::start("U");
    etcd.put("/apisix/upstreams/u", &upstream_json("u", &up));
    // No session.secret: the fleet's generated one, kept in etcd.
    let app = json!({
        "id": "app", "uri": "/app/*", "upstream_id": "u",
        "plugins": { "openid-connect": login_plugin(&idp) },
    });
    etcd.put("/apisix/routes/app", &app.to_string());
    let hosts = [etcd.url()];
    let (a, b) = (node(&hosts), node(&hosts));
    a.wait_synced();
    b.wait_synced();

    let mut jar = Jar::default();
    let cb = login(&a.proxy, &idp, "/app/page", &mut jar);
    assert_eq!(cb.status, 302, "{}", cb.text());
    assert!(jar.0.contains_key("session"), "{:?}", jar.names());
    // Node A serves it, and so does node B, which never saw the login.
    assert_eq!(browse(&a.proxy, "/app/page", &jar, &[]).status, 200);
    let r = browse(&b.proxy, "/app/page", &jar, &[]);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), b.proxy.log());
    assert_eq!(r.upstream_id(), Some("U"));
    // One secret, in etcd, not in either data dir.
    let secret = etcd
        .get("/apisix/portcullis/session_secret")
        .expect("the secret in etcd");
    assert_eq!(secret.len(), 44, "base64 of 32 bytes");
    for n in [&a, &b] {
        assert!(!n.proxy.dir.path().join("data/session_secret").exists());
    }
}

#[test]
fn an_etcd_change_leaves_every_other_route_its_caches() {
    let etcd = EtcdServer::start();
    let idp = FakeIdp::start();
    idp.on(INTROSPECTION_PATH, |_| {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 300;
        IdpResponse::json(200, &json!({"active": true, "sub": "alice", "exp": exp}))
    });
    let up = Upstream::start("U");
    etcd.put("/apisix/upstreams/u", &upstream_json("u", &up));
    let a = json!({
        "id": "a", "uri": "/a/*", "upstream_id": "u",
        "plugins": { "openid-connect": {
            "client_id": "c", "client_secret": "s", "discovery": idp.discovery_url(),
            "bearer_only": true, "introspection_endpoint": idp.introspection_url(),
        }},
    });
    etcd.put("/apisix/routes/a", &a.to_string());
    let n = node(&[etcd.url()]);
    n.wait_synced();
    // One keep-alive connection: one worker, whose cache is watched.
    let mut c = Client::connect(n.proxy.port);
    let mut call = || {
        c.request(
            "GET",
            "/a/x",
            &[("Authorization", "Bearer opaque-token-1")],
            b"",
        )
        .status
    };
    assert_eq!(call(), 200);
    assert_eq!(call(), 200);
    assert_eq!(idp.introspections(), 1);

    // Another route appears.
    etcd.put("/apisix/routes/b", &route_json("b", "/b", "u"));
    within("b live", LIVE_WITHIN, || {
        n.served_by("/b") == Ok("U".into())
    });
    assert_eq!(call(), 200);
    assert_eq!(
        idp.introspections(),
        1,
        "a change to route b emptied route a's cache"
    );

    // A's upstream object changes, its plugin config does not.
    let mut changed: Value = serde_json::from_str(&upstream_json("u", &up)).unwrap();
    changed["timeout"]["read"] = json!(7);
    etcd.put("/apisix/upstreams/u", &changed.to_string());
    within("upstream change applied", LIVE_WITHIN, || {
        n.admin("GET", "/apisix/admin/upstreams/u", None).json()["value"]["timeout"]["read"] == 7
    });
    assert_eq!(call(), 200);
    assert_eq!(
        idp.introspections(),
        1,
        "an upstream change emptied the unchanged plugin's cache"
    );
}

#[test]
fn ssl_objects_from_etcd_serve_new_handshakes() {
    let etcd = EtcdServer::start();
    let tls_port = free_port();
    let n = node_top(
        &[etcd.url()],
        json!({}),
        json!({"tls": {"listen": [format!("127.0.0.1:{tls_port}")]}}),
    );
    n.wait_synced();
    assert!(
        tls::Stream::connect_tls(tls_port, Some("etcd.test")).is_err(),
        "no certificate yet"
    );
    let pem = tls::cert_for(&["etcd.test"], tls::KeyKind::EcdsaP256);
    let mut obj = tls::ssl("1", &["etcd.test"], &pem);
    obj["create_time"] = json!(1_700_000_000);
    obj["update_time"] = json!(1_700_000_000);
    etcd.put("/apisix/ssls/1", &obj.to_string());
    let mut leaf = None;
    within("the certificate from etcd serves", LIVE_WITHIN, || {
        leaf = tls::Stream::connect_tls(tls_port, Some("etcd.test"))
            .ok()
            .and_then(|s| s.peer_leaf());
        leaf.is_some()
    });
    assert_eq!(leaf, Some(pem.der.clone()));
    // Its private key is never answered.
    let r = n.admin("GET", "/apisix/admin/ssls/1", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["value"].get("key").is_none(), "{}", r.text());
    // Deleted from etcd: refused again.
    etcd.del("/apisix/ssls/1");
    within("the certificate is gone", LIVE_WITHIN, || {
        tls::Stream::connect_tls(tls_port, Some("etcd.test")).is_err()
    });
}
