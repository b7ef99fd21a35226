#!/usr/bin/env bash
# The whole test suite: installs what the tests need when it is missing, then runs everything.
# Nothing is skipped: a dependency that cannot be installed fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive besides the Rust toolchain, as "command:package": node runs the
# real identity provider (tests/idp) and the browser driver (tests/browser); chromium is the
# browser of the login-flow tests, launched as /usr/bin/chromium (tests/common/browser.rs);
# openssl (s_client), curl and python3 are the TLS tests' real clients (tests/tls.rs), and python3
# runs the WebSocket client and the metrics parser (tests/python); etcd and etcdctl are the
# config store of tests/etcd.rs (each test starts its own etcd on loopback ports).
need_apt=()
for pair in node:nodejs npm:npm openssl:openssl curl:curl python3:python3 etcd:etcd-server etcdctl:etcd-client; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# python3 -m venv needs ensurepip, which Debian ships apart.
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  echo "== installing python3-venv"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
for bin in etcd etcdctl; do
  if ! command -v "$bin" >/dev/null 2>&1; then
    echo "tests/etcd.rs needs \`$bin\` (Debian's etcd-server and etcd-client), and it is missing" >&2
    exit 1
  fi
done
if ! /usr/bin/chromium --version >/dev/null 2>&1; then
  echo "the browser tests need Debian's chromium at /usr/bin/chromium, and it does not run" >&2
  exit 1
fi

# The real identity provider of the OpenID Connect tests (tests/idp: node running oidc-provider 9)
# needs Node.js >= 20. Debian 12's apt has 18, so then a newer one comes from the npm registry's
# `node` package (its binary ships inside the registry package).
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "== Node.js $(node --version 2>/dev/null) is too old for tests/idp: npm install -g node@22"
  npm install -g --no-audit --no-fund node@22
  hash -r
  node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$node_major" -lt 20 ]; then
    echo "tests/idp needs Node.js >= 20; \`node\` is still $(node --version) ($(command -v node))" >&2
    exit 1
  fi
fi
# Its packages, pinned by tests/idp/package-lock.json: (re)installed when missing or older than it.
if [ ! -f tests/idp/node_modules/.package-lock.json ] \
  || [ tests/idp/package-lock.json -nt tests/idp/node_modules/.package-lock.json ]; then
  echo "== npm ci in tests/idp"
  (cd tests/idp && npm ci --no-audit --no-fund)
  touch tests/idp/node_modules/.package-lock.json
fi
# The browser driver (tests/browser: playwright-core, pinned by its package-lock.json; it downloads
# no browser and drives the chromium above), installed the same way.
if [ ! -f tests/browser/node_modules/.package-lock.json ] \
  || [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  echo "== npm ci in tests/browser"
  (cd tests/browser && npm ci --no-audit --no-fund)
  touch tests/browser/node_modules/.package-lock.json
fi

# Python packages (tests/python/requirements.txt, pinned with hashes) in a venv of their own:
# tests/status.rs parses /metrics with prometheus_client's parser, and tests/websocket.rs drives
# websockets. Reinstalled when the file is newer than the venv.
venv=tests/python/.venv
if [ ! -x "$venv/bin/python3" ] || [ tests/python/requirements.txt -nt "$venv/.installed" ]; then
  echo "== python venv in $venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    echo "== installing python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --require-hashes \
    --only-binary :all: -r tests/python/requirements.txt
  touch "$venv/.installed"
fi
"$venv/bin/python3" -c 'import prometheus_client, websockets' || {
  echo "prometheus_client or websockets is not importable from $venv" >&2
  exit 1
}

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets"
cargo clippy --all-targets --quiet -- -D warnings
echo "== benches in test mode (each benchmark runs once)"
cargo test --benches
# The integration tests write down every credential they hand the proxy and keep every proxy's
# logs here (tests/common/leaks.rs); after them, no log may hold any of those credentials.
leak_dir="${CARGO_TARGET_DIR:-target}/tmp/leak-check"
rm -rf "$leak_dir"
echo "== cargo test (unit, and integration against the real binary)"
cargo test --lib --bins --tests
echo "== the core suites again, every client over HTTPS (tls.listen beside listen)"
PORTCULLIS_TEST_SCHEME=https cargo test --test proxy_core --test forwarding --test oidc_login
echo "== no token, cookie value, secret or query value in any proxy log of the run"
python3 tests/python/log_leaks.py "$leak_dir"
