//! The command line and config validation: `--version`, `check`, and running with a bad config.

mod common;

use std::time::{Duration, Instant};

use common::*;

const RUN_LIMIT: Duration = Duration::from_secs(10);

fn check_fails(yaml: &str) -> String {
    let (ok, out) = check_config(yaml);
    assert!(
        !ok,
        "`check` accepted a bad config:\n{yaml}\noutput:\n{out}"
    );
    assert!(!out.trim().is_empty(), "`check` failed without saying why");
    out
}

/// A config with one route `/x` to 127.0.0.1:1980: `route_extra` (route fields, indented 4) goes
/// before its `upstream`, `upstream_extra` (upstream fields, indented 6) after its `nodes`.
fn one_route(route_extra: &str, upstream_extra: &str) -> String {
    format!(
        "\nroutes:\n  - id: \"1\"\n    uri: /x\n{route_extra}    upstream:\n      nodes: {{ \"127.0.0.1:1980\": 1 }}\n{upstream_extra}"
    )
}

/// Asserts the output line that mentions `needle` also gives the field path `path`.
fn assert_line_gives_path(out: &str, needle: &str, path: &str) {
    let l = line_with(out, needle);
    assert!(
        l.contains(path),
        "the line mentioning {needle:?} should give the field path {path}: {l}"
    );
}

/// Runs `portcullis <args>` in `dir`; returns whether it succeeded, and its output.
fn run_check(args: &[&str], dir: &TempDir) -> (bool, String) {
    let (st, out) = run_bin(args, dir.path(), RUN_LIMIT);
    (st.expect("check finished").success(), out)
}

const GOOD: &str = r#"
listen: 127.0.0.1:19080
workers: 2
cpu_affinity: false
data_dir: {DATA}
trusted_addresses: ["10.0.0.0/8", "127.0.0.1", "::1"]
runtime:
  driver: auto
limits:
  max_header_bytes: 32768
  max_headers: 100
  header_read_timeout: 0.5
  keepalive_timeout: 75
  max_body_bytes: 0
  shutdown_timeout: 30
per_core:
  upstream_keepalive: 64
  upstream_keepalive_timeout: 60
log:
  access: true
routes:
  - id: "1"
    uri: /get
    methods: [GET, HEAD]
    host: example.com
    priority: 0
    plugins:
      proxy-rewrite:
        scheme: https
        uri: /x
        host: h.example
        headers:
          X-Add: v
          X-Remove: ""
    upstream:
      type: roundrobin
      nodes:
        "127.0.0.1:1980": 1
        "127.0.0.2:1980": 3
      scheme: http
      pass_host: pass
      timeout: { connect: 6, send: 6, read: 6 }
  - id: "2"
    uris: ["/api/*", "/v2/*"]
    hosts: [a.example, b.example]
    upstream:
      type: roundrobin
      nodes:
        - { host: 127.0.0.1, port: 1981, weight: 1 }
        - { host: localhost, port: 1982, weight: 2 }
      scheme: https
      tls: { verify: true }
      pass_host: rewrite
      upstream_host: backend.internal
  - id: "3"
    uri: /node
    upstream:
      nodes: { "127.0.0.1:1983": 1 }
      pass_host: node
"#;

#[test]
fn version_flag() {
    let dir = TempDir::new();
    let (st, out) = run_bin(&["--version"], dir.path(), RUN_LIMIT);
    let st = st.expect("--version finished");
    assert!(st.success(), "--version exit {st}: {out}");
    assert!(
        out.contains(env!("CARGO_PKG_VERSION")),
        "--version should print {}: {out}",
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn help_flag_mentions_check() {
    let dir = TempDir::new();
    let (st, out) = run_bin(&["--help"], dir.path(), RUN_LIMIT);
    assert!(st.expect("--help finished").success(), "--help: {out}");
    assert!(
        out.contains("check"),
        "--help should mention the check command: {out}"
    );
}

#[test]
fn check_accepts_a_full_valid_config() {
    let (ok, out) = check_config(GOOD);
    assert!(ok, "valid config rejected:\n{out}");
}

#[test]
fn check_accepts_a_minimal_config_and_workers_auto() {
    let (ok, out) = check_config("listen: 127.0.0.1:19081\nworkers: auto\n");
    assert!(ok, "minimal config rejected:\n{out}");
    let (ok, out) =
        check_config("listen: [\"127.0.0.1:19081\", \"127.0.0.1:19082\"]\nroutes: []\n");
    assert!(ok, "listen list rejected:\n{out}");
}

#[test]
fn check_accepts_the_shipped_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/config.yaml");
    assert!(
        std::path::Path::new(path).exists(),
        "conf/config.yaml is not shipped"
    );
    let dir = TempDir::new();
    let (ok, out) = run_check(&["check", "-c", path], &dir);
    assert!(ok, "shipped conf/config.yaml rejected:\n{out}");
}

#[test]
fn check_uses_conf_config_yaml_by_default() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.path().join("conf")).unwrap();
    dir.write("conf/config.yaml", "listen: 127.0.0.1:19083\nroutes: []\n");
    let (ok, out) = run_check(&["check"], &dir);
    assert!(ok, "default path: {out}");
    dir.write(
        "conf/config.yaml",
        "listen: 127.0.0.1:19083\nworkers: many\n",
    );
    let (ok, out) = run_check(&["check"], &dir);
    assert!(!ok, "default path was not read: {out}");
    line_with(&out, "workers");
}

#[test]
fn check_rejects_a_missing_file() {
    let dir = TempDir::new();
    let missing = dir.path().join("nope.yaml");
    let (ok, out) = run_check(&["check", "-c", missing.to_str().unwrap()], &dir);
    assert!(!ok, "missing file accepted: {out}");
    assert!(
        out.contains("nope.yaml"),
        "message should name the file: {out}"
    );
}

#[test]
fn check_rejects_yaml_syntax_errors() {
    let out = check_fails("listen: [127.0.0.1:9080\nroutes:\n  - id: 1\n   uri: /x\n");
    assert!(
        !out.contains("panicked"),
        "a syntax error must not panic: {out}"
    );
}

#[test]
fn check_reports_a_bad_node_address() {
    let out = check_fails(
        r#"
routes:
  - id: "1"
    uri: /x
    upstream:
      type: roundrobin
      nodes: { "127.0.0.1:99999": 1 }
"#,
    );
    line_with(&out, "routes[0].upstream.nodes");
}

#[test]
fn check_rejects_an_unknown_plugin_by_name() {
    let out = check_fails(&one_route("    plugins:\n      key-auth: {}\n", ""));
    assert_line_gives_path(&out, "key-auth", "routes[0].plugins");
}

#[test]
fn check_rejects_unknown_keys() {
    let out = check_fails("listn: 127.0.0.1:9080\n");
    line_with(&out, "listn");
    let out = check_fails("limits:\n  max_header_byte: 100\n");
    assert_line_gives_path(&out, "max_header_byte", "limits");
    let out = check_fails(&one_route("", "      retriez: 3\n"));
    assert_line_gives_path(&out, "retriez", "routes[0].upstream");
}

#[test]
fn check_rejects_wrong_types() {
    let out = check_fails("limits:\n  max_header_bytes: lots\n");
    line_with(&out, "limits.max_header_bytes");
    let out = check_fails("limits:\n  max_header_bytes: -5\n");
    line_with(&out, "limits.max_header_bytes");
    let out = check_fails("workers: many\n");
    let l = line_with(&out, "workers");
    assert!(
        l.contains("auto"),
        "workers message should list auto as allowed: {l}"
    );
    let out = check_fails("cpu_affinity: sometimes\n");
    line_with(&out, "cpu_affinity");
    let out = check_fails("limits:\n  header_read_timeout: soon\n");
    line_with(&out, "limits.header_read_timeout");
}

#[test]
fn check_lists_allowed_values() {
    let out = check_fails("runtime:\n  driver: turbo\n");
    let l = line_with(&out, "runtime.driver");
    assert!(
        l.contains("(allowed:"),
        "format `<path>: <what> (allowed: …)`: {l}"
    );
    for v in ["auto", "io_uring", "epoll"] {
        assert!(l.contains(v), "allowed list should name {v}: {l}");
    }
    let out = check_fails(&one_route("", "      pass_host: sideways\n"));
    let l = line_with(&out, "routes[0].upstream.pass_host");
    for v in ["pass", "node", "rewrite"] {
        assert!(l.contains(v), "allowed list should name {v}: {l}");
    }
}

#[test]
fn check_requires_upstream_host_for_pass_host_rewrite() {
    let out = check_fails(&one_route("", "      pass_host: rewrite\n"));
    assert_line_gives_path(&out, "upstream_host", "routes[0].upstream");
}

#[test]
fn check_rejects_bad_addresses() {
    let out = check_fails("listen: not-an-address\n");
    line_with(&out, "listen");
    let out = check_fails("trusted_addresses: [\"10.0.0.0/99\"]\n");
    line_with(&out, "trusted_addresses");
    let out = check_fails("trusted_addresses: [\"example.com\"]\n");
    line_with(&out, "trusted_addresses");
}

#[test]
fn check_rejects_a_route_without_upstream_or_uri() {
    let out = check_fails("routes:\n  - id: \"1\"\n    uri: /x\n");
    let l = line_with(&out, "routes[0]");
    assert!(
        l.contains("upstream"),
        "missing upstream should be named: {l}"
    );
    let out = check_fails(
        "routes:\n  - id: \"1\"\n    upstream:\n      nodes: { \"127.0.0.1:1980\": 1 }\n",
    );
    let l = line_with(&out, "routes[0]");
    assert!(l.contains("uri"), "missing uri/uris should be named: {l}");
}

#[test]
fn check_rejects_an_invalid_method() {
    let out = check_fails(&one_route("    methods: [GET, FETCH]\n", ""));
    assert_line_gives_path(&out, "FETCH", "routes[0].methods");
}

#[test]
fn check_reports_every_problem() {
    let out = check_fails(
        r#"
workers: many
limits:
  max_header_bytes: lots
runtime:
  driver: turbo
routes:
  - id: "1"
    uri: /ok
    upstream:
      nodes: { "127.0.0.1:1980": 1 }
  - id: "2"
    uri: /x
    plugins:
      key-auth: {}
    upstream:
      nodes: { "127.0.0.1:99999": 1 }
      timeout: { connect: 6, send: 6, read: soon }
"#,
    );
    for path in [
        "workers",
        "limits.max_header_bytes",
        "runtime.driver",
        "routes[1].plugins",
        "routes[1].upstream.nodes",
        "routes[1].upstream.timeout.read",
    ] {
        line_with(&out, path);
    }
    line_with(&out, "key-auth");
    assert!(
        !out.contains("routes[0]"),
        "the valid route must not be reported: {out}"
    );
}

#[test]
fn run_with_bad_config_exits_nonzero_and_does_not_listen() {
    let port = free_port();
    let yaml = format!(
        r#"
listen: 127.0.0.1:{port}
workers: 1
cpu_affinity: false
data_dir: {{DATA}}
routes:
  - id: "1"
    uri: /x
    plugins:
      key-auth: {{}}
    upstream:
      nodes: {{ "127.0.0.1:1980": 1 }}
"#
    );
    let out = refused_at_start(&yaml, port);
    let l = line_with(&out, "key-auth");
    assert!(
        l.contains("routes[0].plugins"),
        "same message as check: {l}"
    );
}

/// Starts the proxy on `yaml` (listening on `port`, `{DATA}` replaced) and asserts it exits
/// non-zero without ever accepting a connection; returns its output.
fn refused_at_start(yaml: &str, port: u16) -> String {
    let dir = TempDir::new();
    let data = dir.path().join("data");
    let yaml = yaml.replace("{DATA}", &data.to_string_lossy());
    let mut p = Proxy::spawn_in(dir, &yaml, &[], vec![port]);
    let deadline = Instant::now() + RUN_LIMIT;
    let mut listened = false;
    let status = loop {
        if let Some(st) = p.try_exit_status() {
            break Some(st);
        }
        if can_connect(port) {
            listened = true;
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = p.output();
    let status = status.unwrap_or_else(|| {
        panic!("proxy with a bad config still running after {RUN_LIMIT:?}; output:\n{out}")
    });
    assert!(
        !status.success(),
        "bad config: exit {status}; output:\n{out}"
    );
    assert!(!listened, "the proxy listened although its config is bad");
    assert!(!can_connect(port));
    out
}

#[test]
fn every_problem_line_follows_the_spec_format() {
    // `<field path>: <what is wrong> (allowed: …)`
    let route = |extra: &str| one_route("", extra);
    let cases = [
        (
            "limits:\n  max_header_bytes: lots\n".to_string(),
            "limits.max_header_bytes",
        ),
        (
            "limits:\n  header_read_timeout: soon\n".to_string(),
            "limits.header_read_timeout",
        ),
        ("workers: many\n".to_string(), "workers"),
        ("runtime:\n  driver: turbo\n".to_string(), "runtime.driver"),
        ("log:\n  access: maybe\n".to_string(), "log.access"),
        ("listn: 1\n".to_string(), "listn"),
        (
            route("      pass_host: sideways\n"),
            "routes[0].upstream.pass_host",
        ),
        (route("      scheme: gopher\n"), "routes[0].upstream.scheme"),
    ];
    let mut bad = Vec::new();
    for (yaml, path) in cases {
        let out = check_fails(&yaml);
        let l = line_with(&out, path);
        if !(l.starts_with(path) && l.contains(": ") && l.contains("(allowed: ")) {
            bad.push(l.to_string());
        }
    }
    assert!(
        bad.is_empty(),
        "problem lines should read `<field path>: <what is wrong> (allowed: …)`; these do not:\n{}",
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Duplicate keys: YAML libraries keep one of the two silently, so a second `plugins:` would
// drop a route's authentication. Every duplicate is an error naming the key and its mapping.
// ---------------------------------------------------------------------------------------------

const ONCE: &str = "(allowed: each key once in a mapping)";

/// A route with `openid-connect` options `oidc_extra` (indented 8) after its client_id, then
/// `route_extra` (indented 4) after its plugins, then an upstream with `nodes` (indented 6).
fn oidc_route_yaml(oidc_extra: &str, route_extra: &str, nodes: &str) -> String {
    format!(
        r#"
data_dir: {{DATA}}
routes:
  - id: "1"
    uri: /api/*
    plugins:
      openid-connect:
        client_id: portcullis
{oidc_extra}        client_secret: secret
        discovery: http://127.0.0.1:1/.well-known/openid-configuration
        bearer_only: true
        use_jwks: true
{route_extra}    upstream:
      type: roundrobin
      nodes:
{nodes}"#
    )
}

const ONE_NODE: &str = "        \"127.0.0.1:1980\": 1\n";

/// Asserts `check` fails with a line `<path>: duplicate key "<key>" (allowed: …)`.
fn assert_duplicate_reported(out: &str, path: &str, key: &str) {
    let want = format!("{path}: duplicate key \"{key}\" {ONCE}");
    assert!(
        out.lines().any(|l| l.trim() == want),
        "expected the line {want:?}; output:\n{out}"
    );
}

#[test]
fn check_accepts_the_duplicate_test_base_config() {
    // The cases below differ from this one only by their duplicate.
    let (ok, out) = check_config(&oidc_route_yaml("", "", ONE_NODE));
    assert!(ok, "base config rejected:\n{out}");
}

#[test]
fn check_rejects_a_duplicate_top_level_key() {
    let out = check_fails("listen: 127.0.0.1:19084\nworkers: 1\nlisten: 127.0.0.1:19085\n");
    assert_duplicate_reported(&out, ".", "listen");
}

#[test]
fn check_rejects_a_second_plugins_in_a_route() {
    let out = check_fails(&oidc_route_yaml("", "    plugins: {}\n", ONE_NODE));
    assert_duplicate_reported(&out, "routes[0]", "plugins");
}

#[test]
fn check_rejects_a_plugin_named_twice() {
    let second = "      openid-connect: { client_id: x, client_secret: y, discovery: http://127.0.0.1:1/d, bearer_only: false }\n";
    let yaml = oidc_route_yaml("", "", ONE_NODE).replace(
        "        use_jwks: true\n",
        &format!("        use_jwks: true\n{second}"),
    );
    let out = check_fails(&yaml);
    assert_duplicate_reported(&out, "routes[0].plugins", "openid-connect");
}

#[test]
fn check_rejects_a_duplicate_openid_connect_option() {
    let out = check_fails(&oidc_route_yaml(
        "        bearer_only: false\n",
        "",
        ONE_NODE,
    ));
    assert_duplicate_reported(&out, "routes[0].plugins.openid-connect", "bearer_only");
}

#[test]
fn check_rejects_a_node_given_twice() {
    let nodes = "        \"127.0.0.1:1980\": 1\n        \"127.0.0.1:1980\": 100\n";
    let out = check_fails(&oidc_route_yaml("", "", nodes));
    assert_duplicate_reported(&out, "routes[0].upstream.nodes", "127.0.0.1:1980");
}

#[test]
fn check_rejects_a_duplicate_inside_a_list_of_mappings() {
    let nodes = "        - { host: 127.0.0.1, port: 1980, weight: 1, host: 10.9.9.9 }\n";
    let out = check_fails(&oidc_route_yaml("", "", nodes));
    assert_duplicate_reported(&out, "routes[0].upstream.nodes[0]", "host");
}

#[test]
fn check_reports_every_duplicate_and_every_other_problem() {
    let yaml = format!(
        "workers: 1\nworkers: 2\nlimits:\n  max_headers: 10\n  max_headers: 20\n  max_header_bytes: lots\n{}",
        oidc_route_yaml(
            "        client_id: other\n",
            "    plugins: {}\n    uri: /other\n",
            "        \"127.0.0.1:1980\": 1\n        \"127.0.0.1:1980\": 1\n",
        )
    );
    let out = check_fails(&yaml);
    assert_duplicate_reported(&out, ".", "workers");
    assert_duplicate_reported(&out, "limits", "max_headers");
    assert_duplicate_reported(&out, "routes[0].plugins.openid-connect", "client_id");
    assert_duplicate_reported(&out, "routes[0]", "plugins");
    assert_duplicate_reported(&out, "routes[0]", "uri");
    assert_duplicate_reported(&out, "routes[0].upstream.nodes", "127.0.0.1:1980");
    // Problems that are not duplicates are still reported beside them.
    line_with(&out, "limits.max_header_bytes");
    let dups = out.lines().filter(|l| l.contains("duplicate key")).count();
    assert_eq!(dups, 6, "one line per duplicated key:\n{out}");
}

#[test]
fn check_accepts_anchors_and_aliases() {
    // Top-level keys are a closed set, so the anchor sits on the first route.
    let yaml = r#"
routes:
  - id: "1"
    uri: /a
    upstream: &up
      type: roundrobin
      nodes: { "127.0.0.1:1980": 1, "127.0.0.1:1981": 1 }
  - id: "2"
    uri: /b
    upstream: *up
"#;
    let (ok, out) = check_config(yaml);
    assert!(
        ok,
        "an alias (same keys in two places) is not a duplicate:\n{out}"
    );
}

#[test]
fn run_with_a_duplicate_key_exits_nonzero_and_does_not_listen() {
    let port = free_port();
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nworkers: 1\ncpu_affinity: false\n{}",
        oidc_route_yaml("", "    plugins: {}\n", ONE_NODE)
    );
    let out = refused_at_start(&yaml, port);
    assert_duplicate_reported(&out, "routes[0]", "plugins");
}
